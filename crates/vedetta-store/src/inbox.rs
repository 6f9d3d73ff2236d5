//! The local inbox: notifications delivered to an `inbox` destination, kept in the alert
//! store's file so a person (the demo's newcomer, a team trying rules before wiring Slack)
//! can read what would have been sent. The newest [`MAX_INBOX`] are kept.
//!
//! ```text
//! inbox: seq u64 → [format u8 = 1][delivered_ms i64 LE][notification: its outbox form]
//! ```

use crate::reopen::ReopeningDatabase;
use crate::watch_store::WatchStoreError;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::sync::Arc;
use vedetta_core::watch::notification::Notification;

const INBOX: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("inbox");
/// The format byte of an inbox entry.
pub const INBOX_FORMAT: u8 = 1;
/// Entries kept; the oldest go first.
pub const MAX_INBOX: u64 = 1_000;

/// The inbox over a database (the alert store's).
#[derive(Clone, Debug)]
pub struct Inbox {
    db: Arc<ReopeningDatabase>,
}

impl Inbox {
    pub fn new(db: Arc<ReopeningDatabase>) -> Result<Self, WatchStoreError> {
        db.with(|db| -> Result<(), WatchStoreError> {
            let txn = db.begin_write()?;
            txn.open_table(INBOX)?;
            txn.commit()?;
            Ok(())
        })?;
        Ok(Self { db })
    }

    /// Runs `operation` on the file, reopening it after a storage failure.
    fn run<T>(
        &self,
        operation: impl FnOnce(&Database) -> Result<T, WatchStoreError>,
    ) -> Result<T, WatchStoreError> {
        self.db
            .with_recovery(WatchStoreError::is_retryable, operation)
    }

    /// Keeps a delivered notification. The same id twice (a redelivery after a crash) is
    /// kept once.
    pub fn put(
        &self,
        notification: &Notification,
        delivered_ms: i64,
    ) -> Result<(), WatchStoreError> {
        self.run(|db| {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(INBOX)?;
                for entry in table.iter()?.rev().take(100) {
                    let (_, value) = entry?;
                    if let Ok((_, n)) = decode(value.value())
                        && n.id == notification.id
                    {
                        return Ok(());
                    }
                }
                let seq = table.last()?.map_or(0, |(k, _)| k.value() + 1);
                let mut bytes = vec![INBOX_FORMAT];
                bytes.extend_from_slice(&delivered_ms.to_le_bytes());
                bytes.extend_from_slice(&notification.encode());
                table.insert(seq, bytes.as_slice())?;
                while table.len()? > MAX_INBOX {
                    let Some((oldest, _)) = table.pop_first()? else {
                        break;
                    };
                    drop(oldest);
                }
            }
            txn.commit()?;
            Ok(())
        })
    }

    /// The newest first: (delivered at, notification).
    pub fn list(&self, limit: usize) -> Result<Vec<(i64, Notification)>, WatchStoreError> {
        self.run(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(INBOX)?;
            let mut out = Vec::new();
            for entry in table.iter()?.rev().take(limit) {
                let (_, value) = entry?;
                out.push(decode(value.value())?);
            }
            Ok(out)
        })
    }
}

fn decode(bytes: &[u8]) -> Result<(i64, Notification), WatchStoreError> {
    match bytes.split_first() {
        Some((&INBOX_FORMAT, rest)) if rest.len() >= 8 => {
            let mut at = [0; 8];
            at.copy_from_slice(&rest[..8]);
            let notification = Notification::decode(&rest[8..])
                .map_err(|e| WatchStoreError::Corrupt(format!("an inbox entry: {e}")))?;
            Ok((i64::from_le_bytes(at), notification))
        }
        Some((&found, _)) => Err(WatchStoreError::Corrupt(format!(
            "an inbox entry of format {found}; this build reads format {INBOX_FORMAT}"
        ))),
        None => Err(WatchStoreError::Corrupt("an empty inbox entry".into())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn entries_are_kept_once_newest_first_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(ReopeningDatabase::open(&dir.path().join("i.redb"), 1 << 20).unwrap());
        let inbox = Inbox::new(db).unwrap();
        let mut n = Notification::example();
        inbox.put(&n, 1).unwrap();
        inbox.put(&n, 2).unwrap();
        n.id = "other".into();
        inbox.put(&n, 3).unwrap();
        let listed: Vec<i64> = inbox.list(10).unwrap().iter().map(|(at, _)| *at).collect();
        assert_eq!(listed, vec![3, 1], "newest first, a redelivery kept once");
        for i in 0..MAX_INBOX + 5 {
            n.id = format!("n{i}");
            inbox.put(&n, 10 + i as i64).unwrap();
        }
        assert_eq!(inbox.list(usize::MAX).unwrap().len() as u64, MAX_INBOX);
        assert!(decode(&[2, 0]).is_err());
    }
}
