//! The durable outbox of notifications (issue 10), and its dead-letter list.
//!
//! A notification is enqueued **inside the caller's write transaction** ([`enqueue`]), so
//! the alert-state change that causes it and the notification commit together: after a
//! crash either both are there or neither is. The sender then reads the queue through an
//! [`Outbox`] over the same database, delivers, and removes, reschedules or dead-letters
//! each entry, one small commit per outcome. The tables live in whatever
//! [`ReopeningDatabase`] the caller opens (the watch store keeps alert state beside them);
//! [`Outbox::open`] gives a file of its own.
//!
//! Order: entries of one destination are delivered in enqueue order, one at a time. The
//! head of a destination's queue blocks the ones behind it until it is delivered, refused
//! or expired, so a receiver never sees a resolved notice before its firing one. Other
//! destinations are not held up.
//!
//! Tables (keys are typed tuples, never joined strings):
//! - `outbox_entries`: `seq → [ENTRY_FORMAT][postcard EntryMeta][Notification::encode]`;
//! - `outbox_queue`: `(destination, seq) → ()`, the per-destination FIFO index;
//! - `outbox_dead`: `seq → [DEAD_FORMAT][postcard DeadMeta][notification bytes]`; the
//!   notification's bytes are kept as they were, so even an entry this build cannot decode
//!   is kept for a person (or a newer build) to read;
//! - `outbox_meta`: `"next_seq" → u64`.
//!
//! An entry carrying a trigger push is settled with a [`PushReceipt`]: the trigger store's
//! firing outcomes and delivery numbers change in the same commit as the entry
//! (`trigger_store::record_settlement`).

use crate::error::{EngineFailure, io_is_storage_full};
use crate::reopen::{ReopeningDatabase, Unavailable};
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use vedetta_core::watch::notification::{Notification, NotificationFormatError};

const ENTRIES: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("outbox_entries");
const QUEUE: TableDefinition<'_, (&str, u64), ()> = TableDefinition::new("outbox_queue");
const DEAD: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("outbox_dead");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("outbox_meta");
const NEXT_SEQ: &str = "next_seq";

/// Format of a queued entry's value.
pub const ENTRY_FORMAT: u8 = 1;
/// Format of a dead letter's value.
pub const DEAD_FORMAT: u8 = 1;

/// The longest error text kept with an entry: receivers' answers are not ours to store
/// whole.
const MAX_ERROR_CHARS: usize = 1_000;

/// Page cache of a standalone outbox file: a queue is small.
const CACHE_BYTES: usize = 8 << 20;

/// Errors of the outbox, by what a caller can do about them.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The operating system refused a read, write or sync.
    #[error("outbox I/O error: {0}")]
    Io(#[source] std::io::Error),
    /// The file or a value is not what this store wrote, or a newer build wrote it.
    #[error("the outbox is corrupt: {0}")]
    Corrupt(String),
    /// Another process holds the file.
    #[error("the outbox is open in another process")]
    AlreadyOpen,
    /// redb's `PreviousIo`: an earlier I/O failure left the handle unusable until the file
    /// is reopened (the outbox reopens it after the failed call).
    #[error("the outbox must be reopened after an earlier I/O error")]
    NeedsReopen,
    /// Anything else from the engine: misuse or a bug.
    #[error("outbox error: {0}")]
    Engine(String),
    /// The file is being reopened after a storage failure, or could not be yet.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

impl OutboxError {
    /// Whether the disk failed (an I/O error, redb's latch after one, a reopen not done
    /// yet): the call changed nothing, and the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            OutboxError::Io(_) | OutboxError::NeedsReopen | OutboxError::Unavailable(_)
        )
    }

    /// Whether the disk or a quota is full: the answer to a client is 507.
    pub fn is_storage_full(&self) -> bool {
        matches!(self, OutboxError::Io(error) if io_is_storage_full(error))
    }
}

impl<E: Into<redb::Error>> From<E> for OutboxError {
    fn from(error: E) -> Self {
        match EngineFailure::from(error.into()) {
            EngineFailure::Io(e) => OutboxError::Io(e),
            EngineFailure::Corrupt(m) => OutboxError::Corrupt(m),
            EngineFailure::AlreadyOpen => OutboxError::AlreadyOpen,
            EngineFailure::NeedsReopen => OutboxError::NeedsReopen,
            EngineFailure::Other(m) => OutboxError::Engine(m),
        }
    }
}

/// Delivery bookkeeping of a queued entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct EntryMeta {
    attempts: u32,
    enqueued_ms: i64,
    next_attempt_ms: i64,
    last_error: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct DeadMeta {
    attempts: u32,
    enqueued_ms: i64,
    dead_ms: i64,
    error: String,
    destination: String,
}

/// What the sender tells the outbox of a trigger push it settles (issue 12), or of an
/// entry whose bytes do not decode (it may carry a push: its firings are settled by the
/// entry's seq all the same).
#[derive(Clone, Copy, Debug)]
pub struct PushReceipt<'a> {
    /// The push's trigger (`None`: the entry does not decode; no delivery numbers then).
    pub trigger: Option<&'a str>,
    /// Wall-clock time of the settlement (epoch ms).
    pub now_ms: i64,
    /// The destination is a dry run: "delivered" means logged, not sent.
    pub dry_run: bool,
}

fn settle_push(
    txn: &WriteTransaction,
    destination: &str,
    seq: u64,
    push: Option<PushReceipt<'_>>,
    settled: crate::trigger_store::Settled<'_>,
) -> Result<(), OutboxError> {
    if let Some(p) = push {
        crate::trigger_store::record_settlement(
            txn,
            destination,
            seq,
            p.trigger,
            p.now_ms,
            settled,
        )?;
    }
    Ok(())
}

/// A queued notification, as the sender sees it.
#[derive(Clone, Debug)]
pub struct OutboxEntry {
    /// The entry's place in the queue (unique in this database, never reused).
    pub seq: u64,
    pub destination: String,
    /// The notification, or why its stored bytes do not decode (the sender dead-letters
    /// such an entry, bytes kept).
    pub notification: Result<Notification, NotificationFormatError>,
    /// Failed attempts so far.
    pub attempts: u32,
    /// When it entered the queue (again, for a retried dead letter): epoch milliseconds.
    pub enqueued_ms: i64,
    /// Not to be attempted before this time.
    pub next_attempt_ms: i64,
    pub last_error: Option<String>,
}

/// A notification the sender gave up on.
#[derive(Clone, Debug, Serialize)]
pub struct DeadLetter {
    /// Its id in the dead-letter list (what a retry names).
    pub seq: u64,
    pub destination: String,
    pub attempts: u32,
    pub enqueued_ms: i64,
    pub dead_ms: i64,
    /// The last error, or why it was given up.
    pub error: String,
    /// The notification; `None` when its bytes do not decode in this build (they are kept).
    pub notification: Option<Notification>,
}

/// Size of the queue, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OutboxStats {
    /// Entries waiting for delivery.
    pub depth: u64,
    /// When the oldest waiting entry was enqueued.
    pub oldest_enqueued_ms: Option<i64>,
    /// Entries in the dead-letter list.
    pub dead: u64,
}

/// One destination's queue, for `/v1/triggers`, the dashboard and `/metrics`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DestinationStats {
    pub destination: String,
    /// Entries waiting for this destination (at most the cap `destination_stats` was given).
    pub depth: u64,
    /// True when the count stopped at the cap: there are at least `depth` entries.
    pub depth_capped: bool,
    /// When the oldest waiting entry (the queue's head) was enqueued.
    pub oldest_enqueued_ms: i64,
    /// Failed attempts of the head so far, and its last error.
    pub head_attempts: u32,
    pub head_last_error: Option<String>,
}

fn truncate_error(error: &str) -> String {
    match error.char_indices().nth(MAX_ERROR_CHARS) {
        Some((cut, _)) => format!("{}…", &error[..cut]),
        None => error.to_owned(),
    }
}

fn encode_entry(meta: &EntryMeta, notification: &[u8]) -> Result<Vec<u8>, OutboxError> {
    let mut out = vec![ENTRY_FORMAT];
    out.extend(
        postcard::to_allocvec(meta).map_err(|e| OutboxError::Engine(format!("encode: {e}")))?,
    );
    out.extend_from_slice(notification);
    Ok(out)
}

fn decode_entry(bytes: &[u8]) -> Result<(EntryMeta, &[u8]), OutboxError> {
    match bytes.split_first() {
        Some((&ENTRY_FORMAT, rest)) => postcard::take_from_bytes::<EntryMeta>(rest)
            .map_err(|e| OutboxError::Corrupt(format!("an outbox entry: {e}"))),
        Some((&found, _)) => Err(OutboxError::Corrupt(format!(
            "an outbox entry of format {found}; this build reads format {ENTRY_FORMAT}"
        ))),
        None => Err(OutboxError::Corrupt("an empty outbox entry".into())),
    }
}

fn encode_dead(meta: &DeadMeta, notification: &[u8]) -> Result<Vec<u8>, OutboxError> {
    let mut out = vec![DEAD_FORMAT];
    out.extend(
        postcard::to_allocvec(meta).map_err(|e| OutboxError::Engine(format!("encode: {e}")))?,
    );
    out.extend_from_slice(notification);
    Ok(out)
}

fn decode_dead(bytes: &[u8]) -> Result<(DeadMeta, &[u8]), OutboxError> {
    match bytes.split_first() {
        Some((&DEAD_FORMAT, rest)) => postcard::take_from_bytes::<DeadMeta>(rest)
            .map_err(|e| OutboxError::Corrupt(format!("a dead letter: {e}"))),
        Some((&found, _)) => Err(OutboxError::Corrupt(format!(
            "a dead letter of format {found}; this build reads format {DEAD_FORMAT}"
        ))),
        None => Err(OutboxError::Corrupt("an empty dead letter".into())),
    }
}

/// Creates the outbox tables if they are missing (enqueue and [`Outbox::new`] do it too).
pub fn create_tables(txn: &WriteTransaction) -> Result<(), OutboxError> {
    txn.open_table(ENTRIES)?;
    txn.open_table(QUEUE)?;
    txn.open_table(DEAD)?;
    txn.open_table(META)?;
    Ok(())
}

fn next_seq(txn: &WriteTransaction) -> Result<u64, OutboxError> {
    let mut meta = txn.open_table(META)?;
    let seq = meta.get(NEXT_SEQ)?.map(|v| v.value()).unwrap_or(1);
    meta.insert(NEXT_SEQ, seq.saturating_add(1))?;
    Ok(seq)
}

fn insert_entry(
    txn: &WriteTransaction,
    destination: &str,
    notification: &[u8],
    now_ms: i64,
) -> Result<u64, OutboxError> {
    let seq = next_seq(txn)?;
    let meta = EntryMeta {
        attempts: 0,
        enqueued_ms: now_ms,
        next_attempt_ms: now_ms,
        last_error: None,
    };
    txn.open_table(ENTRIES)?
        .insert(seq, encode_entry(&meta, notification)?.as_slice())?;
    txn.open_table(QUEUE)?.insert((destination, seq), ())?;
    Ok(seq)
}

/// Queues `notification` for its destination inside the caller's transaction: it is in
/// the outbox exactly when that transaction commits. Returns its sequence number. Wake the
/// sender after the commit ([`Outbox`]'s users hold a `Notify` for that).
pub fn enqueue(
    txn: &WriteTransaction,
    notification: &Notification,
    now_ms: i64,
) -> Result<u64, OutboxError> {
    insert_entry(
        txn,
        &notification.destination,
        &notification.encode(),
        now_ms,
    )
}

/// The outbox over a redb database (shared with the caller's other tables, or its own).
#[derive(Clone, Debug)]
pub struct Outbox {
    /// Reopened after a failed write (redb latches I/O failures until then).
    db: Arc<ReopeningDatabase>,
}

impl Outbox {
    /// Opens (or creates) a standalone outbox file.
    pub fn open(path: &Path) -> Result<Outbox, OutboxError> {
        let db = ReopeningDatabase::open(path, CACHE_BYTES)?;
        Outbox::new(Arc::new(db))
    }

    /// The outbox in `db`, whose other tables are the caller's; creates its tables.
    pub fn new(db: Arc<ReopeningDatabase>) -> Result<Outbox, OutboxError> {
        db.with(|db| -> Result<(), OutboxError> {
            let txn = db.begin_write()?;
            create_tables(&txn)?;
            txn.commit()?;
            Ok(())
        })?;
        Ok(Outbox { db })
    }

    /// The database, to open write transactions that [`enqueue`] into.
    pub fn database(&self) -> &Arc<ReopeningDatabase> {
        &self.db
    }

    /// Runs `operation` on the file, reopening it after a storage failure.
    fn run<T>(
        &self,
        operation: impl FnOnce(&Database) -> Result<T, OutboxError>,
    ) -> Result<T, OutboxError> {
        self.db.with_recovery(OutboxError::is_retryable, operation)
    }

    /// Enqueues one notification in a transaction of its own.
    pub fn enqueue(&self, notification: &Notification, now_ms: i64) -> Result<u64, OutboxError> {
        self.run(|db| {
            let txn = db.begin_write()?;
            let seq = enqueue(&txn, notification, now_ms)?;
            txn.commit()?;
            Ok(seq)
        })
    }

    /// The head of every destination's queue (the entry to deliver next to it), due or not,
    /// in destination order. The sender delivers the due ones and sleeps until the
    /// earliest other.
    pub fn heads(&self) -> Result<Vec<OutboxEntry>, OutboxError> {
        self.run(|db| {
            let txn = db.begin_read()?;
            let queue = txn.open_table(QUEUE)?;
            let entries = txn.open_table(ENTRIES)?;
            let mut heads = Vec::new();
            let mut first = queue.first()?.map(|(k, _)| {
                let (d, s) = k.value();
                (d.to_owned(), s)
            });
            while let Some((destination, seq)) = first.take() {
                let bytes = entries.get(seq)?.ok_or_else(|| {
                    OutboxError::Corrupt(format!("queued entry {seq} has no value"))
                })?;
                let (meta, body) = decode_entry(bytes.value())?;
                heads.push(OutboxEntry {
                    seq,
                    destination: destination.clone(),
                    notification: Notification::decode(body),
                    attempts: meta.attempts,
                    enqueued_ms: meta.enqueued_ms,
                    next_attempt_ms: meta.next_attempt_ms,
                    last_error: meta.last_error,
                });
                // Skip to the next destination: everything after (destination, u64::MAX).
                let mut rest = queue.range((destination.as_str(), u64::MAX)..)?;
                first = match rest.next().transpose()? {
                    Some((k, _)) if k.value().0 == destination => rest.next().transpose()?,
                    other => other,
                }
                .map(|(k, _)| {
                    let (d, s) = k.value();
                    (d.to_owned(), s)
                });
            }
            Ok(heads)
        })
    }

    /// The heads of the queues that are due at `now_ms`, in destination order.
    pub fn due(&self, now_ms: i64) -> Result<Vec<OutboxEntry>, OutboxError> {
        let mut heads = self.heads()?;
        heads.retain(|e| e.next_attempt_ms <= now_ms);
        Ok(heads)
    }

    /// Every queued entry of `destination`, in delivery order (for an inbox page or a test).
    pub fn queued(&self, destination: &str, limit: usize) -> Result<Vec<OutboxEntry>, OutboxError> {
        self.run(|db| {
            let txn = db.begin_read()?;
            let queue = txn.open_table(QUEUE)?;
            let entries = txn.open_table(ENTRIES)?;
            let mut out = Vec::new();
            for item in queue.range((destination, 0)..=(destination, u64::MAX))? {
                if out.len() >= limit {
                    break;
                }
                let (key, _) = item?;
                let seq = key.value().1;
                let Some(bytes) = entries.get(seq)? else {
                    continue;
                };
                let (meta, body) = decode_entry(bytes.value())?;
                out.push(OutboxEntry {
                    seq,
                    destination: destination.to_owned(),
                    notification: Notification::decode(body),
                    attempts: meta.attempts,
                    enqueued_ms: meta.enqueued_ms,
                    next_attempt_ms: meta.next_attempt_ms,
                    last_error: meta.last_error,
                });
            }
            Ok(out)
        })
    }

    /// Removes a delivered entry. Returns whether it was there.
    pub fn mark_delivered(&self, destination: &str, seq: u64) -> Result<bool, OutboxError> {
        self.mark_delivered_push(destination, seq, None)
    }

    /// [`Outbox::mark_delivered`], recording a push's outcome in the same commit.
    pub fn mark_delivered_push(
        &self,
        destination: &str,
        seq: u64,
        push: Option<PushReceipt<'_>>,
    ) -> Result<bool, OutboxError> {
        self.run(|db| {
            let txn = db.begin_write()?;
            let removed = txn.open_table(ENTRIES)?.remove(seq)?.is_some();
            txn.open_table(QUEUE)?.remove((destination, seq))?;
            if removed {
                let dry_run = push.is_some_and(|p| p.dry_run);
                settle_push(
                    &txn,
                    destination,
                    seq,
                    push,
                    crate::trigger_store::Settled::Delivered { dry_run },
                )?;
            }
            txn.commit()?;
            Ok(removed)
        })
    }

    /// Records a failed attempt: the count of attempts and when to try next.
    pub fn reschedule(
        &self,
        seq: u64,
        attempts: u32,
        next_attempt_ms: i64,
        error: &str,
    ) -> Result<bool, OutboxError> {
        self.reschedule_push("", seq, attempts, next_attempt_ms, error, None)
    }

    /// [`Outbox::reschedule`] of an entry to `destination`, counting a push's failed
    /// attempt in the same commit.
    pub fn reschedule_push(
        &self,
        destination: &str,
        seq: u64,
        attempts: u32,
        next_attempt_ms: i64,
        error: &str,
        push: Option<PushReceipt<'_>>,
    ) -> Result<bool, OutboxError> {
        self.run(|db| {
            let txn = db.begin_write()?;
            let found = {
                let mut entries = txn.open_table(ENTRIES)?;
                let updated = match entries.get(seq)? {
                    Some(bytes) => {
                        let (mut meta, body) = decode_entry(bytes.value())?;
                        meta.attempts = attempts;
                        meta.next_attempt_ms = next_attempt_ms;
                        meta.last_error = Some(truncate_error(error));
                        Some(encode_entry(&meta, body)?)
                    }
                    None => None,
                };
                match updated {
                    Some(value) => {
                        entries.insert(seq, value.as_slice())?;
                        true
                    }
                    None => false,
                }
            };
            if found {
                settle_push(
                    &txn,
                    destination,
                    seq,
                    push,
                    crate::trigger_store::Settled::Retry { error },
                )?;
            }
            txn.commit()?;
            Ok(found)
        })
    }

    /// Moves an entry to the dead-letter list with the error that ended it.
    pub fn move_to_dead(
        &self,
        destination: &str,
        seq: u64,
        attempts: u32,
        error: &str,
        now_ms: i64,
    ) -> Result<bool, OutboxError> {
        self.move_to_dead_push(destination, seq, attempts, error, now_ms, None)
    }

    /// [`Outbox::move_to_dead`], recording a push's outcome in the same commit.
    pub fn move_to_dead_push(
        &self,
        destination: &str,
        seq: u64,
        attempts: u32,
        error: &str,
        now_ms: i64,
        push: Option<PushReceipt<'_>>,
    ) -> Result<bool, OutboxError> {
        self.run(|db| {
            let txn = db.begin_write()?;
            let found = {
                let mut entries = txn.open_table(ENTRIES)?;
                let removed = entries.remove(seq)?;
                match removed {
                    Some(bytes) => {
                        let (meta, body) = decode_entry(bytes.value())?;
                        let dead = DeadMeta {
                            attempts,
                            enqueued_ms: meta.enqueued_ms,
                            dead_ms: now_ms,
                            error: truncate_error(error),
                            destination: destination.to_owned(),
                        };
                        let value = encode_dead(&dead, body)?;
                        drop(bytes);
                        txn.open_table(DEAD)?.insert(seq, value.as_slice())?;
                        true
                    }
                    None => false,
                }
            };
            txn.open_table(QUEUE)?.remove((destination, seq))?;
            if found {
                settle_push(
                    &txn,
                    destination,
                    seq,
                    push,
                    crate::trigger_store::Settled::Dead { error },
                )?;
            }
            txn.commit()?;
            Ok(found)
        })
    }

    /// The dead-letter list, oldest first, at most `limit` entries from `after` (exclusive).
    pub fn dead_letters(&self, after: u64, limit: usize) -> Result<Vec<DeadLetter>, OutboxError> {
        self.run(|db| {
            let txn = db.begin_read()?;
            let dead = txn.open_table(DEAD)?;
            let mut out = Vec::new();
            for item in dead.range(after.saturating_add(1)..)? {
                if out.len() >= limit {
                    break;
                }
                let (seq, bytes) = item?;
                let (meta, body) = decode_dead(bytes.value())?;
                out.push(DeadLetter {
                    seq: seq.value(),
                    destination: meta.destination,
                    attempts: meta.attempts,
                    enqueued_ms: meta.enqueued_ms,
                    dead_ms: meta.dead_ms,
                    error: meta.error,
                    notification: Notification::decode(body).ok(),
                });
            }
            Ok(out)
        })
    }

    /// Puts a dead letter back at the end of its destination's queue, due now, with a
    /// fresh attempt count. Returns its new sequence number, or `None` if there is no dead
    /// letter `seq`.
    pub fn retry_dead(&self, seq: u64, now_ms: i64) -> Result<Option<u64>, OutboxError> {
        self.run(|db| {
            let txn = db.begin_write()?;
            let new_seq = {
                let mut dead = txn.open_table(DEAD)?;
                let removed = dead.remove(seq)?;
                match removed {
                    Some(bytes) => {
                        let (meta, body) = decode_dead(bytes.value())?;
                        let body = body.to_vec();
                        drop(bytes);
                        let new = insert_entry(&txn, &meta.destination, &body, now_ms)?;
                        // The firings it carries (a trigger push) are queued again.
                        crate::trigger_store::relink(&txn, &meta.destination, seq, new, now_ms)?;
                        Some(new)
                    }
                    None => None,
                }
            };
            txn.commit()?;
            Ok(new_seq)
        })
    }

    /// Every non-empty destination queue: its depth (counted up to `cap` keys each, so the
    /// cost is bounded by destinations x cap), and its head's age, attempts and last error.
    /// The head is the oldest entry: a queue is FIFO by sequence number, and sequence
    /// numbers grow with enqueue time.
    pub fn destination_stats(&self, cap: u64) -> Result<Vec<DestinationStats>, OutboxError> {
        let heads = self.heads()?;
        self.run(|db| {
            let txn = db.begin_read()?;
            let queue = txn.open_table(QUEUE)?;
            let mut out = Vec::with_capacity(heads.len());
            for head in heads {
                let mut depth = 0u64;
                let mut depth_capped = false;
                let range = (head.destination.as_str(), 0)..=(head.destination.as_str(), u64::MAX);
                for item in queue.range(range)? {
                    item?;
                    if depth == cap {
                        depth_capped = true;
                        break;
                    }
                    depth += 1;
                }
                out.push(DestinationStats {
                    destination: head.destination,
                    depth,
                    depth_capped,
                    oldest_enqueued_ms: head.enqueued_ms,
                    head_attempts: head.attempts,
                    head_last_error: head.last_error,
                });
            }
            Ok(out)
        })
    }

    /// Queue depth, the oldest entry's enqueue time and the dead-letter count.
    pub fn stats(&self) -> Result<OutboxStats, OutboxError> {
        self.run(|db| {
            let txn = db.begin_read()?;
            let entries = txn.open_table(ENTRIES)?;
            let dead = txn.open_table(DEAD)?;
            // Sequence numbers grow with enqueue time (a retried dead letter is enqueued anew),
            // so the first entry is the oldest.
            let oldest_enqueued_ms = match entries.first()? {
                Some((_, bytes)) => Some(decode_entry(bytes.value())?.0.enqueued_ms),
                None => None,
            };
            Ok(OutboxStats {
                depth: entries.len()?,
                oldest_enqueued_ms,
                dead: dead.len()?,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use vedetta_core::watch::notification::AlertStatus;

    fn note(id: &str, destination: &str) -> Notification {
        let mut n = Notification::example();
        n.id = id.into();
        n.destination = destination.into();
        n
    }

    fn ids(entries: &[OutboxEntry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| e.notification.as_ref().unwrap().id.clone())
            .collect()
    }

    #[test]
    fn destination_stats_count_each_queue_up_to_the_cap_and_age_its_head() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&dir.path().join("o.redb")).unwrap();
        assert!(outbox.destination_stats(10).unwrap().is_empty());
        outbox.enqueue(&note("a1", "a"), 1_000).unwrap();
        outbox.enqueue(&note("b1", "b"), 2_000).unwrap();
        outbox.enqueue(&note("a2", "a"), 3_000).unwrap();
        outbox.enqueue(&note("a3", "a"), 4_000).unwrap();
        let head = outbox.heads().unwrap()[0].clone();
        outbox.reschedule(head.seq, 1, 9_000, "HTTP 500").unwrap();
        let stats = outbox.destination_stats(10).unwrap();
        assert_eq!(stats.len(), 2);
        assert_eq!(
            (
                stats[0].destination.as_str(),
                stats[0].depth,
                stats[0].depth_capped
            ),
            ("a", 3, false)
        );
        assert_eq!(stats[0].oldest_enqueued_ms, 1_000);
        assert_eq!(stats[0].head_attempts, 1);
        assert_eq!(stats[0].head_last_error.as_deref(), Some("HTTP 500"));
        assert_eq!((stats[1].destination.as_str(), stats[1].depth), ("b", 1));
        assert_eq!(stats[1].oldest_enqueued_ms, 2_000);
        let capped = outbox.destination_stats(2).unwrap();
        assert_eq!((capped[0].depth, capped[0].depth_capped), (2, true));
        assert_eq!((capped[1].depth, capped[1].depth_capped), (1, false));
    }

    #[test]
    fn enqueue_commits_with_the_callers_transaction_and_only_then() {
        let dir = tempfile::tempdir().unwrap();
        let db =
            Arc::new(ReopeningDatabase::open(&dir.path().join("watch.redb"), 1 << 20).unwrap());
        let outbox = Outbox::new(db.clone()).unwrap();
        let state: TableDefinition<'_, &str, u64> = TableDefinition::new("alert_state");

        // An aborted transaction leaves neither the state nor the notification.
        let txn = db.read_guard().unwrap().begin_write().unwrap();
        txn.open_table(state)
            .unwrap()
            .insert("cpa_high", 1)
            .unwrap();
        enqueue(&txn, &note("a", "slack"), 1_000).unwrap();
        txn.abort().unwrap();
        assert_eq!(outbox.stats().unwrap().depth, 0);

        let txn = db.read_guard().unwrap().begin_write().unwrap();
        txn.open_table(state)
            .unwrap()
            .insert("cpa_high", 1)
            .unwrap();
        enqueue(&txn, &note("a", "slack"), 1_000).unwrap();
        txn.commit().unwrap();
        let stats = outbox.stats().unwrap();
        assert_eq!(stats.depth, 1);
        assert_eq!(stats.oldest_enqueued_ms, Some(1_000));
        let heads = outbox.due(1_000).unwrap();
        assert_eq!(ids(&heads), ["a"]);
        assert_eq!(
            heads[0].notification.as_ref().unwrap().status,
            AlertStatus::Firing
        );
    }

    #[test]
    fn each_destination_is_a_fifo_and_one_blocked_head_holds_up_only_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&dir.path().join("o.redb")).unwrap();
        // Destination names that would collide if keys were joined strings.
        for (id, d) in [
            ("1", "a"),
            ("2", "a\u{0}b"),
            ("3", "a"),
            ("4", "b"),
            ("5", "a\u{0}b"),
        ] {
            outbox.enqueue(&note(id, d), 10).unwrap();
        }
        assert_eq!(ids(&outbox.heads().unwrap()), ["1", "2", "4"]);
        let a_head = &outbox.heads().unwrap()[0];
        outbox
            .reschedule(a_head.seq, 1, 500, "503 from the receiver")
            .unwrap();
        // "a" waits until 500; the others are due.
        assert_eq!(ids(&outbox.due(100).unwrap()), ["2", "4"]);
        let heads = outbox.heads().unwrap();
        assert_eq!(heads[0].attempts, 1);
        assert_eq!(
            heads[0].last_error.as_deref(),
            Some("503 from the receiver")
        );
        assert_eq!(ids(&outbox.due(500).unwrap()), ["1", "2", "4"]);
        assert!(outbox.mark_delivered("a", heads[0].seq).unwrap());
        assert_eq!(ids(&outbox.due(500).unwrap()), ["3", "2", "4"]);
        assert_eq!(ids(&outbox.queued("a\u{0}b", 10).unwrap()), ["2", "5"]);
        assert_eq!(outbox.stats().unwrap().depth, 4);
    }

    #[test]
    fn dead_letters_keep_the_notification_and_a_retry_requeues_it_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.redb");
        let outbox = Outbox::open(&path).unwrap();
        outbox.enqueue(&note("x", "hook"), 10).unwrap();
        outbox.enqueue(&note("y", "hook"), 20).unwrap();
        let head = outbox.due(20).unwrap().remove(0);
        let long = "e".repeat(5_000);
        assert!(outbox.move_to_dead("hook", head.seq, 3, &long, 30).unwrap());
        assert_eq!(ids(&outbox.due(30).unwrap()), ["y"]);
        drop(outbox);

        // Reopened: nothing lost.
        let outbox = Outbox::open(&path).unwrap();
        let dead = outbox.dead_letters(0, 10).unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].notification.as_ref().unwrap().id, "x");
        assert_eq!((dead[0].attempts, dead[0].dead_ms), (3, 30));
        assert!(dead[0].error.chars().count() <= MAX_ERROR_CHARS + 1);
        assert_eq!(outbox.stats().unwrap().dead, 1);

        let new_seq = outbox.retry_dead(dead[0].seq, 40).unwrap().unwrap();
        assert!(new_seq > dead[0].seq);
        assert_eq!(outbox.retry_dead(dead[0].seq, 40).unwrap(), None);
        assert_eq!(ids(&outbox.queued("hook", 10).unwrap()), ["y", "x"]);
        let x = &outbox.queued("hook", 10).unwrap()[1];
        assert_eq!((x.attempts, x.enqueued_ms), (0, 40));
        assert_eq!(outbox.stats().unwrap().dead, 0);
    }

    #[test]
    fn undecodable_notifications_are_handed_over_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(&dir.path().join("o.redb")).unwrap();
        let txn = outbox
            .database()
            .read_guard()
            .unwrap()
            .begin_write()
            .unwrap();
        insert_entry(&txn, "slack", &[9, b'{'], 5).unwrap();
        txn.commit().unwrap();
        let head = outbox.due(5).unwrap().remove(0);
        assert_eq!(
            head.notification.unwrap_err(),
            NotificationFormatError::Version { found: 9 }
        );
        outbox
            .move_to_dead("slack", head.seq, 0, "undecodable", 6)
            .unwrap();
        let dead = outbox.dead_letters(0, 10).unwrap();
        assert!(dead[0].notification.is_none());
        // The bytes are kept: a retry requeues them as they were.
        outbox.retry_dead(dead[0].seq, 7).unwrap().unwrap();
        assert!(outbox.due(7).unwrap()[0].notification.is_err());
    }

    #[test]
    fn stored_values_of_another_format_are_refused() {
        let meta = EntryMeta {
            attempts: 0,
            enqueued_ms: 0,
            next_attempt_ms: 0,
            last_error: None,
        };
        let mut bytes = encode_entry(&meta, b"x").unwrap();
        assert!(decode_entry(&bytes).is_ok());
        bytes[0] = 2;
        assert!(
            matches!(decode_entry(&bytes), Err(OutboxError::Corrupt(m)) if m.contains("format 2"))
        );
        assert!(decode_entry(&[]).is_err());
        assert!(decode_dead(&[7]).is_err());
    }
}
