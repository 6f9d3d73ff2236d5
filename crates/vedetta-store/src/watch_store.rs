//! The alert store (`watch.redb`): the state of every pending and firing alert, the
//! dispatcher's groups, how far evaluation has gone, the alert history and the silences.
//!
//! The evaluator commits one minute at a time: the new state, the history of what changed
//! and the notifications it produced go in **one** transaction (the outbox lives in this
//! same file), so a crash can never leave a state change without its notification or a
//! notification without its state change. After a restart the evaluator continues from
//! `evaluated_through_ms` with exactly the alerts it had: every resolved notice still goes
//! out, and nothing stays stuck as firing.
//!
//! Layout (every value starts with a format byte):
//!
//! ```text
//! watch_state:   "state" → [1][JSON WatchState]
//! alert_history: [minute end, sign-flipped u64 BE][sequence u32 BE] → [1][JSON HistoryEntry]
//! silences:      silence id (UTF-8) → [1][JSON Silence]
//! ```

use crate::error::io_is_storage_full;
use crate::reopen::{ReopeningDatabase, Unavailable, is_storage_failure};
use redb::{
    ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use vedetta_core::watch::dispatch::{Dispatcher, Silence};
use vedetta_core::watch::evaluate::{ActiveAlert, AlertKey};
use vedetta_core::watch::notification::Notification;

const STATE: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("watch_state");
const HISTORY: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("alert_history");
const SILENCES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("silences");

/// The format byte of every value this module writes.
pub const WATCH_FORMAT: u8 = 1;
/// History entries kept; the oldest go first.
pub const MAX_HISTORY: u64 = 100_000;

/// What the evaluator keeps between minutes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WatchState {
    /// The end of the last minute evaluated (epoch ms).
    pub evaluated_through_ms: Option<i64>,
    /// Pending and firing alerts.
    pub alerts: Vec<(AlertKey, ActiveAlert)>,
    pub dispatcher: Dispatcher,
}

/// One thing that happened to an alert.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The minute end it was decided at (event time).
    pub at_ms: i64,
    /// When it was decided (wall clock).
    pub wall_ms: i64,
    pub rule: String,
    pub group: Vec<(String, String)>,
    /// `pending`, `firing`, `resolved`; with `silenced` or `inhibited` when not sent.
    pub event: String,
    pub value: Option<f64>,
    pub summary: String,
}

/// Puts a notification in the outbox within the caller's transaction.
pub type Enqueue<'a> =
    dyn Fn(&WriteTransaction, &Notification) -> Result<(), String> + Send + Sync + 'a;

/// Why the alert store failed.
#[derive(Debug, thiserror::Error)]
pub enum WatchStoreError {
    #[error("alert store: {0}")]
    Engine(#[from] redb::Error),
    #[error("the alert store is corrupt: {0}")]
    Corrupt(String),
    #[error("the outbox: {0}")]
    Outbox(String),
    #[error("a value does not encode: {0}")]
    Encode(String),
    /// `watch.redb` is being reopened after a storage failure, or could not be yet.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

impl WatchStoreError {
    /// Whether the disk failed (an I/O error, redb's latch after one, a reopen not done
    /// yet): the call changed nothing, and the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            WatchStoreError::Engine(error) => is_storage_failure(error),
            WatchStoreError::Unavailable(_) => true,
            _ => false,
        }
    }

    /// Whether the disk or a quota is full: the answer to a client is 507.
    pub fn is_storage_full(&self) -> bool {
        matches!(self, WatchStoreError::Engine(redb::Error::Io(error)) if io_is_storage_full(error))
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for WatchStoreError {
            fn from(e: $t) -> Self {
                WatchStoreError::Engine(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

type StoreError = WatchStoreError;

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![WATCH_FORMAT];
    // It can fail (a map whose keys are not strings): the step fails rather than store
    // a value that will not read back.
    serde_json::to_writer(&mut out, value).map_err(|e| StoreError::Encode(e.to_string()))?;
    Ok(out)
}

fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&WATCH_FORMAT, body)) => serde_json::from_slice(body)
            .map_err(|e| StoreError::Corrupt(format!("{what} does not decode: {e}"))),
        Some((&found, _)) => Err(StoreError::Corrupt(format!(
            "{what} has format {found}; this build reads format {WATCH_FORMAT}"
        ))),
        None => Err(StoreError::Corrupt(format!("{what} is empty"))),
    }
}

fn history_key(at_ms: i64, sequence: u32) -> [u8; 12] {
    let mut key = [0; 12];
    key[..8].copy_from_slice(&((at_ms as u64) ^ (1 << 63)).to_be_bytes());
    key[8..].copy_from_slice(&sequence.to_be_bytes());
    key
}

/// The number of a history entry within its minute, from its key.
fn history_sequence(key: &[u8]) -> Result<u32, StoreError> {
    key.get(8..12)
        .and_then(|bytes| <[u8; 4]>::try_from(bytes).ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt(format!("a history key of {} bytes", key.len())))
}

/// The alert store.
#[derive(Debug)]
pub struct WatchStore {
    /// Shared with the outbox, the inbox and the trigger store (same file); reopened after
    /// a failed write (redb latches I/O failures until then), so a full disk clears by
    /// itself once space is back.
    db: Arc<ReopeningDatabase>,
}

/// redb's page cache for `watch.redb` (redb's default, what the file always had).
const CACHE_BYTES: usize = 1 << 30;

impl WatchStore {
    /// Opens (or creates) the store and reads the evaluator's state.
    pub fn open(path: &Path) -> Result<(Self, WatchState), StoreError> {
        let db = ReopeningDatabase::open(path, CACHE_BYTES)?;
        db.with(|db| -> Result<(), StoreError> {
            let txn = db.begin_write()?;
            txn.open_table(STATE)?;
            txn.open_table(HISTORY)?;
            txn.open_table(SILENCES)?;
            txn.commit()?;
            Ok(())
        })?;
        let store = Self { db: Arc::new(db) };
        let state = store.state()?;
        Ok((store, state))
    }

    /// The database, for the outbox that shares the file.
    pub fn database(&self) -> &Arc<ReopeningDatabase> {
        &self.db
    }

    /// Runs `operation` on the file, reopening it after a storage failure.
    fn run<T>(
        &self,
        operation: impl FnOnce(&redb::Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.db.with_recovery(StoreError::is_retryable, operation)
    }

    pub fn state(&self) -> Result<WatchState, StoreError> {
        self.run(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(STATE)?;
            match table.get("state")? {
                Some(bytes) => decode("the alert state", bytes.value()),
                None => Ok(WatchState::default()),
            }
        })
    }

    /// One evaluation step: state, history and notifications, atomically.
    pub fn commit(
        &self,
        state: &WatchState,
        history: &[HistoryEntry],
        notifications: &[Notification],
        enqueue: &Enqueue<'_>,
    ) -> Result<(), StoreError> {
        self.run(|db| {
            let mut txn = db.begin_write()?;
            // An alert is for people: losing the last second of it to a power cut would
            // send a notification twice or not at all, so every step is durable.
            txn.set_durability(redb::Durability::Immediate)?;
            {
                let mut table = txn.open_table(STATE)?;
                table.insert("state", encode(state)?.as_slice())?;
                let mut log = txn.open_table(HISTORY)?;
                // The next number of each minute written in this step. Entries of one minute
                // are numbered after the last one there (not after their count: numbers may
                // have gaps, and the oldest minute may have lost some to the bound below).
                let mut next: HashMap<i64, u32> = HashMap::new();
                let full = || StoreError::Corrupt("a minute's history numbers are used up".into());
                for entry in history {
                    let sequence = match next.get(&entry.at_ms) {
                        Some(&sequence) => sequence,
                        None => {
                            let base = history_key(entry.at_ms, 0);
                            let end = history_key(entry.at_ms, u32::MAX);
                            match log.range(base.as_slice()..=end.as_slice())?.next_back() {
                                None => 0,
                                Some(last) => {
                                    let (key, _) = last?;
                                    history_sequence(key.value())?
                                        .checked_add(1)
                                        .ok_or_else(full)?
                                }
                            }
                        }
                    };
                    let key = history_key(entry.at_ms, sequence);
                    log.insert(key.as_slice(), encode(entry)?.as_slice())?;
                    next.insert(entry.at_ms, sequence.checked_add(1).ok_or_else(full)?);
                }
                let excess = log.len()?.saturating_sub(MAX_HISTORY);
                if excess > 0 {
                    let old: Vec<Vec<u8>> = log
                        .iter()?
                        .take(excess as usize)
                        .map(|e| e.map(|(k, _)| k.value().to_vec()))
                        .collect::<Result<_, _>>()?;
                    for key in old {
                        log.remove(key.as_slice())?;
                    }
                }
            }
            for notification in notifications {
                enqueue(&txn, notification).map_err(WatchStoreError::Outbox)?;
            }
            txn.commit()?;
            Ok(())
        })
    }

    /// The newest history entries first, at most `limit`.
    pub fn history(&self, limit: usize) -> Result<Vec<HistoryEntry>, StoreError> {
        self.run(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(HISTORY)?;
            let mut out = Vec::new();
            for entry in table.iter()?.rev().take(limit) {
                let (_, value) = entry?;
                out.push(decode("an alert history entry", value.value())?);
            }
            Ok(out)
        })
    }

    /// The entries decided at one minute end, in order.
    pub fn history_at(&self, at_ms: i64) -> Result<Vec<HistoryEntry>, StoreError> {
        self.run(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(HISTORY)?;
            let (low, high) = (history_key(at_ms, 0), history_key(at_ms, u32::MAX));
            let mut out = Vec::new();
            for entry in table.range(low.as_slice()..=high.as_slice())? {
                let (_, value) = entry?;
                out.push(decode("an alert history entry", value.value())?);
            }
            Ok(out)
        })
    }

    pub fn put_silence(&self, silence: &Silence) -> Result<(), StoreError> {
        self.run(|db| {
            let txn = db.begin_write()?;
            txn.open_table(SILENCES)?
                .insert(silence.id.as_str(), encode(silence)?.as_slice())?;
            txn.commit()?;
            Ok(())
        })
    }

    /// Adds a silence unless `max_active` silences are active at `now_ms` already (then
    /// `false`, and nothing changes). In the same transaction it deletes the silences that
    /// have ended: they mute nothing, and kept for ever they would grow the store (and
    /// every read of the silences) with each one a client makes. One transaction, so two
    /// clients adding at once cannot both pass the cap.
    pub fn add_silence(
        &self,
        silence: &Silence,
        now_ms: i64,
        max_active: usize,
    ) -> Result<bool, StoreError> {
        self.run(|db| {
            let txn = db.begin_write()?;
            let added = {
                let mut table = txn.open_table(SILENCES)?;
                let mut ended = Vec::new();
                let mut active = 0usize;
                for entry in table.iter()? {
                    let (id, value) = entry?;
                    let stored: Silence = decode("a silence", value.value())?;
                    if stored.ends_ms <= now_ms {
                        ended.push(id.value().to_string());
                    } else if stored.id != silence.id {
                        active += 1;
                    }
                }
                for id in &ended {
                    table.remove(id.as_str())?;
                }
                let fits = active < max_active;
                if fits {
                    table.insert(silence.id.as_str(), encode(silence)?.as_slice())?;
                }
                fits
            };
            txn.commit()?;
            Ok(added)
        })
    }

    /// Removes a silence; whether it existed.
    pub fn delete_silence(&self, id: &str) -> Result<bool, StoreError> {
        self.run(|db| {
            let txn = db.begin_write()?;
            let existed = txn.open_table(SILENCES)?.remove(id)?.is_some();
            txn.commit()?;
            Ok(existed)
        })
    }

    pub fn silences(&self) -> Result<Vec<Silence>, StoreError> {
        self.run(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(SILENCES)?;
            let mut out = Vec::new();
            for entry in table.iter()? {
                let (_, value) = entry?;
                out.push(decode("a silence", value.value())?);
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use vedetta_core::watch::dispatch::Matcher;
    use vedetta_core::watch::evaluate::Phase;

    #[test]
    fn state_history_and_notifications_commit_together_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("watch.redb");
        let (store, state) = WatchStore::open(&path).unwrap();
        assert_eq!(state, WatchState::default());
        let state = WatchState {
            evaluated_through_ms: Some(120_000),
            alerts: vec![(
                ("cpa_high".into(), vec!["social".into()]),
                ActiveAlert {
                    phase: Phase::Firing,
                    since_ms: 60_000,
                    fired_ms: Some(120_000),
                    recovering_since_ms: None,
                    value: Some(23.4),
                    last_evaluated_ms: 120_000,
                },
            )],
            dispatcher: Dispatcher::default(),
        };
        let entry = |event: &str| HistoryEntry {
            at_ms: 120_000,
            wall_ms: 5,
            rule: "cpa_high".into(),
            group: vec![("channel".into(), "social".into())],
            event: event.into(),
            value: Some(23.4),
            summary: "cpa_high: cpa > 20 (social)".into(),
        };
        let sent = std::sync::Mutex::new(Vec::new());
        store
            .commit(
                &state,
                &[entry("pending"), entry("firing")],
                &[Notification::example()],
                &|_, n| {
                    sent.lock().unwrap().push(n.id.clone());
                    Ok(())
                },
            )
            .unwrap();
        assert_eq!(sent.lock().unwrap().len(), 1);
        // A failing enqueue rolls the whole step back.
        let failed = store.commit(
            &WatchState::default(),
            &[entry("resolved")],
            &[Notification::example()],
            &|_, _| Err("outbox full".to_string()),
        );
        assert!(failed.is_err());
        drop(store);
        let (store, again) = WatchStore::open(&path).unwrap();
        assert_eq!(again, state);
        let history: Vec<String> = store
            .history(10)
            .unwrap()
            .into_iter()
            .map(|e| e.event)
            .collect();
        assert_eq!(
            history,
            vec!["firing", "pending"],
            "newest first, none of the failed step"
        );
    }

    /// The bug: an entry's number within its minute was the count of entries already
    /// there, but a step that wrote to two minutes (a minute's decisions, then the
    /// revisions of an earlier, now final one) numbered the second after the first,
    /// leaving a gap; a later entry at that minute got a number already taken and
    /// overwrote an entry of the history.
    #[test]
    fn history_entries_of_a_minute_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = WatchStore::open(&dir.path().join("w.redb")).unwrap();
        let entry = |at_ms: i64, event: &str| HistoryEntry {
            at_ms,
            wall_ms: 0,
            rule: "cpa_high".into(),
            group: Vec::new(),
            event: event.into(),
            value: None,
            summary: String::new(),
        };
        let state = WatchState::default();
        let commit = |entries: &[HistoryEntry]| {
            store.commit(&state, entries, &[], &|_, _| Ok(())).unwrap();
        };
        commit(&[entry(60_000, "firing")]);
        commit(&[
            entry(120_000, "pending"),
            entry(120_000, "pending"),
            entry(60_000, "revised 1"),
        ]);
        commit(&[entry(60_000, "revised 2")]);
        let at: Vec<String> = store
            .history_at(60_000)
            .unwrap()
            .into_iter()
            .map(|e| e.event)
            .collect();
        assert_eq!(at, ["firing", "revised 1", "revised 2"]);
        assert_eq!(store.history(10).unwrap().len(), 5);
    }

    /// The bug: expired silences were never deleted. The API caps the *active* ones, so a
    /// client making one-minute silences added a thousand a minute to the store for ever,
    /// and every evaluation step and `/v1/alerts` read them all.
    #[test]
    fn adding_a_silence_drops_the_expired_ones_and_caps_the_active_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = WatchStore::open(&dir.path().join("w.redb")).unwrap();
        let silence = |id: &str, ends_ms: i64| Silence {
            id: id.into(),
            matchers: vec![Matcher {
                name: "rule".into(),
                value: "cpa_high".into(),
            }],
            starts_ms: 0,
            ends_ms,
            created_by: String::new(),
            comment: String::new(),
        };
        for i in 0..50 {
            let added = store
                .add_silence(&silence(&format!("old-{i}"), 60_000), 0, 3)
                .unwrap();
            assert_eq!(added, i < 3, "silence {i}");
        }
        assert_eq!(store.silences().unwrap().len(), 3, "at most 3 active");
        // At 60 000 the three have ended: they are deleted, and the new one fits.
        assert!(
            store
                .add_silence(&silence("new", 120_000), 60_000, 3)
                .unwrap()
        );
        let ids: Vec<String> = store
            .silences()
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(ids, vec!["new".to_string()]);
        // The cap counts active silences only, and is kept.
        assert!(
            store
                .add_silence(&silence("b", 120_000), 60_000, 3)
                .unwrap()
        );
        assert!(
            store
                .add_silence(&silence("c", 120_000), 60_000, 3)
                .unwrap()
        );
        assert!(
            !store
                .add_silence(&silence("d", 120_000), 60_000, 3)
                .unwrap()
        );
        assert_eq!(store.silences().unwrap().len(), 3);
    }

    #[test]
    fn silences_are_stored_listed_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = WatchStore::open(&dir.path().join("w.redb")).unwrap();
        let s = Silence {
            id: "s-1".into(),
            matchers: vec![Matcher {
                name: "rule".into(),
                value: "cpa_high".into(),
            }],
            starts_ms: 0,
            ends_ms: 10,
            created_by: "anna".into(),
            comment: "promo day".into(),
        };
        store.put_silence(&s).unwrap();
        assert_eq!(store.silences().unwrap(), vec![s]);
        assert!(store.delete_silence("s-1").unwrap());
        assert!(!store.delete_silence("s-1").unwrap());
        assert!(store.silences().unwrap().is_empty());
    }

    /// The bug: the dispatcher's maps have tuple keys, which JSON objects cannot hold;
    /// `encode` swallowed serde_json's refusal and stored the bare format byte, so after the
    /// first notification the server could not open its alert store again ("the alert
    /// state does not decode: EOF").
    #[test]
    fn dispatcher_groups_with_tuple_keys_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("watch.redb");
        let (store, _) = WatchStore::open(&path).unwrap();
        let mut notice = Notification::example().notices[0].clone();
        notice.group = vec![("channel".into(), "social".into())];
        let mut group = vedetta_core::watch::dispatch::DispatchGroup {
            last_sent_ms: Some(5),
            sequence: 3,
            ..Default::default()
        };
        group.firing.insert(notice.group.clone(), notice.clone());
        group.pending.push(notice);
        let mut state = WatchState {
            evaluated_through_ms: Some(120_000),
            ..WatchState::default()
        };
        state
            .dispatcher
            .groups
            .insert(("cpa_high".into(), "slack".into()), group);
        store.commit(&state, &[], &[], &|_, _| Ok(())).unwrap();
        drop(store);
        let (_, again) = WatchStore::open(&path).unwrap();
        assert_eq!(again, state);
    }

    #[test]
    fn a_state_stored_before_dispatch_groups_were_pairs_still_reads() {
        // An empty dispatcher was written as an object, `{}`: the only map that could be.
        let old = br#"{"evaluated_through_ms":60000,"alerts":[],"dispatcher":{"groups":{}}}"#;
        let bytes = [&[WATCH_FORMAT][..], old].concat();
        let state: WatchState = decode("x", &bytes).unwrap();
        assert_eq!(state.evaluated_through_ms, Some(60_000));
        assert!(state.dispatcher.groups.is_empty());
    }

    #[test]
    fn storage_failures_are_told_apart() {
        let full = WatchStoreError::from(redb::StorageError::Io(
            std::io::Error::from_raw_os_error(28),
        ));
        assert!(full.is_storage_full() && full.is_retryable(), "{full:?}");
        let latched = WatchStoreError::Engine(redb::Error::PreviousIo);
        assert!(latched.is_retryable() && !latched.is_storage_full());
        assert!(WatchStoreError::Unavailable(Unavailable).is_retryable());
        assert!(!WatchStoreError::Corrupt("x".into()).is_retryable());
    }

    #[test]
    fn other_formats_are_refused() {
        assert!(decode::<WatchState>("x", &[2, b'{', b'}']).is_err());
        assert!(decode::<WatchState>("x", &[]).is_err());
        assert!(decode::<WatchState>("x", &encode(&WatchState::default()).unwrap()).is_ok());
    }
}
