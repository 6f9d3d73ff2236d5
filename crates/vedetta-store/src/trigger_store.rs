//! The trigger store (issue 12): the trigger engine's state, the log offset it consumed,
//! the pushes waiting for their destination's next batch, and the firing history, in the
//! alert store's database beside the outbox.
//!
//! Exactly once inside: [`TriggerStore::commit_step`] writes the engine state, the consumed
//! offset, the new pending pushes and the firings in one transaction; after a crash the
//! consumer restarts from the stored state and offset, so an event is neither applied twice
//! nor lost. [`TriggerStore::flush`] moves a destination's pending pushes into the outbox,
//! removing them in the same transaction, so a push is queued exactly once; the outbox then
//! delivers it at least once, under an id fixed at that commit (idempotent receivers see it
//! once).
//!
//! Tables (keys are typed tuples, never joined strings):
//! - `act_meta`: `"state" → ActState::encode`, `"offset" → [FORMAT][u64 LE]`,
//!   `"batch" → [FORMAT][u64 LE]` (the last batch number given to a flush);
//! - `act_pending`: `(destination, seq) → [FORMAT][JSON Push]`;
//! - `act_firings`: `(at_ms, seq) → [FORMAT][JSON Firing]`, at most [`MAX_FIRINGS`];
//! - `act_pending_seq`: `"next" → u64`.

use crate::outbox;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use vedetta_core::act::push::Push;
use vedetta_core::watch::notification::Notification;

const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("act_meta");
const PENDING: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("act_pending");
const FIRINGS: TableDefinition<'_, (i64, u64), &[u8]> = TableDefinition::new("act_firings");
const SEQ: TableDefinition<'_, &str, u64> = TableDefinition::new("act_pending_seq");

/// The format byte of every value this module writes (the state has its own).
pub const TRIGGER_FORMAT: u8 = 1;
/// Firings kept; the oldest go first.
pub const MAX_FIRINGS: u64 = 100_000;

/// One thing a trigger did: a user selected (sent or withheld), or a segment signal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Firing {
    pub trigger: String,
    /// `user` or `signal`.
    pub what: String,
    /// The user's pseudonym (hex), for `user`.
    pub user: Option<String>,
    /// The segment's dimension values.
    pub group: Vec<(String, String)>,
    /// `firing` / `recovered` for a signal.
    pub signal: Option<String>,
    /// Event time it was decided at (epoch ms).
    pub at_ms: i64,
    /// Wall-clock time it was committed.
    pub wall_ms: i64,
    pub destinations: Vec<String>,
}

/// Firings per trigger in the last hour and day (`TriggerStore::firing_counts`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FiringCounts {
    pub per_trigger: std::collections::BTreeMap<String, HourDay>,
    /// The count stopped at its cap: the numbers are lower bounds.
    pub capped: bool,
}

/// Firings in the last hour and in the last day.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HourDay {
    pub hour: u64,
    pub day: u64,
}

/// Why the trigger store failed.
#[derive(Debug, thiserror::Error)]
pub enum TriggerStoreError {
    #[error("trigger store: {0}")]
    Engine(#[from] redb::Error),
    #[error("the trigger store is corrupt: {0}")]
    Corrupt(String),
    #[error("the outbox: {0}")]
    Outbox(#[from] outbox::OutboxError),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for TriggerStoreError {
            fn from(e: $t) -> Self {
                TriggerStoreError::Engine(e.into())
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

fn encode_json<T: Serialize>(value: &T) -> Result<Vec<u8>, TriggerStoreError> {
    let mut out = vec![TRIGGER_FORMAT];
    serde_json::to_writer(&mut out, value)
        .map_err(|e| TriggerStoreError::Corrupt(format!("a value does not encode: {e}")))?;
    Ok(out)
}

fn decode_json<T: for<'de> Deserialize<'de>>(
    what: &str,
    bytes: &[u8],
) -> Result<T, TriggerStoreError> {
    match bytes.split_first() {
        Some((&TRIGGER_FORMAT, body)) => serde_json::from_slice(body)
            .map_err(|e| TriggerStoreError::Corrupt(format!("{what} does not decode: {e}"))),
        Some((&found, _)) => Err(TriggerStoreError::Corrupt(format!(
            "{what} has format {found}; this build reads format {TRIGGER_FORMAT}"
        ))),
        None => Err(TriggerStoreError::Corrupt(format!("{what} is empty"))),
    }
}

fn encode_u64(value: u64) -> [u8; 9] {
    let mut out = [TRIGGER_FORMAT; 9];
    out[1..].copy_from_slice(&value.to_le_bytes());
    out
}

fn decode_u64(what: &str, bytes: &[u8]) -> Result<u64, TriggerStoreError> {
    match bytes {
        [TRIGGER_FORMAT, rest @ ..] if rest.len() == 8 => {
            let mut le = [0; 8];
            le.copy_from_slice(rest);
            Ok(u64::from_le_bytes(le))
        }
        _ => Err(TriggerStoreError::Corrupt(format!(
            "{what} is not a format-{TRIGGER_FORMAT} number"
        ))),
    }
}

/// What the consumer restarts from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resume {
    /// `ActState::encode` bytes, when a step was ever committed.
    pub state: Option<Vec<u8>>,
    /// The next log offset to read.
    pub offset: u64,
}

/// The trigger store over the alert store's database.
#[derive(Clone, Debug)]
pub struct TriggerStore {
    db: Arc<Database>,
}

impl TriggerStore {
    /// Opens the tables in `db` (the alert store's, where the outbox is), creating them.
    pub fn new(db: Arc<Database>) -> Result<Self, TriggerStoreError> {
        let txn = db.begin_write()?;
        txn.open_table(META)?;
        txn.open_table(PENDING)?;
        txn.open_table(FIRINGS)?;
        txn.open_table(SEQ)?;
        outbox::create_tables(&txn)?;
        txn.commit()?;
        Ok(Self { db })
    }

    pub fn resume(&self) -> Result<Resume, TriggerStoreError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(META)?;
        let state = meta.get("state")?.map(|v| v.value().to_vec());
        let offset = match meta.get("offset")? {
            Some(v) => decode_u64("the consumed offset", v.value())?,
            None => 0,
        };
        Ok(Resume { state, offset })
    }

    /// One consumer step: state, offset, new pending pushes (by destination) and firings,
    /// in one durable transaction.
    pub fn commit_step(
        &self,
        state: &[u8],
        offset: u64,
        pending: &[(String, Push)],
        firings: &[Firing],
    ) -> Result<(), TriggerStoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        {
            let mut meta = txn.open_table(META)?;
            meta.insert("state", state)?;
            meta.insert("offset", encode_u64(offset).as_slice())?;
            let mut seq_table = txn.open_table(SEQ)?;
            let mut seq = seq_table.get("next")?.map(|v| v.value()).unwrap_or(1);
            let mut table = txn.open_table(PENDING)?;
            for (destination, push) in pending {
                table.insert((destination.as_str(), seq), encode_json(push)?.as_slice())?;
                seq += 1;
            }
            let mut log = txn.open_table(FIRINGS)?;
            for firing in firings {
                log.insert((firing.at_ms, seq), encode_json(firing)?.as_slice())?;
                seq += 1;
            }
            seq_table.insert("next", seq)?;
            let excess = log.len()?.saturating_sub(MAX_FIRINGS);
            for _ in 0..excess {
                log.pop_first()?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Pushes waiting for `destination`, in the order they were selected.
    pub fn pending(&self, destination: &str) -> Result<Vec<(u64, Push)>, TriggerStoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PENDING)?;
        let mut out = Vec::new();
        for item in table.range((destination, 0)..=(destination, u64::MAX))? {
            let (key, value) = item?;
            out.push((key.value().1, decode_json("a pending push", value.value())?));
        }
        Ok(out)
    }

    /// Pending pushes of every destination.
    pub fn pending_count(&self) -> Result<u64, TriggerStoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(PENDING)?.len()?)
    }

    /// Moves `destination`'s pending pushes into the outbox in one transaction: `build`
    /// gets a batch number (unique, stored) and the pushes, and returns the notifications
    /// to enqueue. Returns how many notifications were queued.
    pub fn flush(
        &self,
        destination: &str,
        now_ms: i64,
        build: impl FnOnce(u64, Vec<(u64, Push)>) -> Vec<Notification>,
    ) -> Result<usize, TriggerStoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        let queued = {
            let mut table = txn.open_table(PENDING)?;
            let mut items = Vec::new();
            for item in table.range((destination, 0)..=(destination, u64::MAX))? {
                let (key, value) = item?;
                items.push((key.value().1, decode_json("a pending push", value.value())?));
            }
            if items.is_empty() {
                return Ok(0);
            }
            for (seq, _) in &items {
                table.remove((destination, *seq))?;
            }
            let mut meta = txn.open_table(META)?;
            let batch = match meta.get("batch")? {
                Some(v) => decode_u64("the batch number", v.value())? + 1,
                None => 1,
            };
            meta.insert("batch", encode_u64(batch).as_slice())?;
            let notifications = build(batch, items);
            for n in &notifications {
                outbox::enqueue(&txn, n, now_ms)?;
            }
            notifications.len()
        };
        txn.commit()?;
        Ok(queued)
    }

    /// The newest firings first, at most `limit`.
    pub fn firings(&self, limit: usize) -> Result<Vec<Firing>, TriggerStoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(FIRINGS)?;
        let mut out = Vec::new();
        for item in table.iter()?.rev().take(limit) {
            let (_, value) = item?;
            out.push(decode_json("a firing", value.value())?);
        }
        Ok(out)
    }

    /// Per trigger, the firings decided (event time) at or after `day_from_ms` and, of
    /// them, at or after `hour_from_ms`. Reads at most `cap` newest firings (bounded cost
    /// per call); the flag says the count stopped there and the numbers are lower bounds.
    pub fn firing_counts(
        &self,
        day_from_ms: i64,
        hour_from_ms: i64,
        cap: usize,
    ) -> Result<FiringCounts, TriggerStoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(FIRINGS)?;
        let mut counts = FiringCounts::default();
        for (read, item) in table.range((day_from_ms, 0)..)?.rev().enumerate() {
            if read == cap {
                counts.capped = true;
                break;
            }
            let (key, value) = item?;
            let firing: Firing = decode_json("a firing", value.value())?;
            let entry = counts.per_trigger.entry(firing.trigger).or_default();
            entry.day += 1;
            if key.value().0 >= hour_from_ms {
                entry.hour += 1;
            }
        }
        Ok(counts)
    }

    /// Firings decided at or after `from_ms` (event time), oldest first, at most `limit`.
    pub fn firings_since(
        &self,
        from_ms: i64,
        limit: usize,
    ) -> Result<Vec<Firing>, TriggerStoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(FIRINGS)?;
        let mut out = Vec::new();
        for item in table.range((from_ms, 0)..)?.take(limit) {
            let (_, value) = item?;
            out.push(decode_json("a firing", value.value())?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use vedetta_core::act::push::PushEvent;

    fn push(user: &str) -> Push {
        Push {
            trigger: "cpa_alto".into(),
            kind: "segment_cpa".into(),
            segment: Some("costi > 20€".into()),
            group: vec![],
            signal: None,
            events: vec![PushEvent {
                user: user.into(),
                kind: "page_view".into(),
                value: None,
                at_ms: 1,
                product_id: Some("p".into()),
                product_ids: vec![],
                cart_value: None,
                tag: None,
            }],
        }
    }

    fn firing(at_ms: i64) -> Firing {
        Firing {
            trigger: "cpa_alto".into(),
            what: "user".into(),
            user: Some("ab".into()),
            group: vec![],
            signal: None,
            at_ms,
            wall_ms: 0,
            destinations: vec!["hook".into()],
        }
    }

    #[test]
    fn firing_counts_split_by_event_time_per_trigger_and_stop_at_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Database::create(dir.path().join("watch.redb")).unwrap());
        let store = TriggerStore::new(db).unwrap();
        let mut other = firing(5_000);
        other.trigger = "carrello".into();
        let firings = [firing(500), firing(1_500), firing(2_500), other];
        store.commit_step(b"s", 1, &[], &firings).unwrap();
        let counts = store.firing_counts(1_000, 2_000, 100).unwrap();
        assert!(!counts.capped);
        assert_eq!(counts.per_trigger["cpa_alto"], HourDay { hour: 1, day: 2 });
        assert_eq!(counts.per_trigger["carrello"], HourDay { hour: 1, day: 1 });
        let capped = store.firing_counts(0, 2_000, 2).unwrap();
        assert!(capped.capped);
        assert_eq!(capped.per_trigger["carrello"], HourDay { hour: 1, day: 1 });
        assert_eq!(capped.per_trigger["cpa_alto"], HourDay { hour: 1, day: 1 });
    }

    #[test]
    fn a_step_and_a_flush_commit_whole_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("watch.redb");
        {
            let store = TriggerStore::new(Arc::new(Database::create(&path).unwrap())).unwrap();
            assert_eq!(store.resume().unwrap(), Resume::default());
            store
                .commit_step(
                    b"\x01state",
                    42,
                    &[
                        ("hook".into(), push("a")),
                        ("hook".into(), push("b")),
                        ("other".into(), push("c")),
                    ],
                    &[firing(5), firing(7)],
                )
                .unwrap();
            assert_eq!(store.pending("hook").unwrap().len(), 2);
            let mut bad = Notification::example();
            bad.destination = "hook".into();
            let queued = store
                .flush("hook", 0, |batch, items| {
                    assert_eq!(batch, 1);
                    assert_eq!(items.len(), 2);
                    vec![Notification {
                        push: Some(push("a")),
                        ..bad.clone()
                    }]
                })
                .unwrap();
            assert_eq!(queued, 1);
            assert!(store.pending("hook").unwrap().is_empty());
            assert_eq!(store.pending("other").unwrap().len(), 1);
        }
        let db = Arc::new(Database::create(&path).unwrap());
        let store = TriggerStore::new(db.clone()).unwrap();
        let resume = store.resume().unwrap();
        assert_eq!(resume.state.as_deref(), Some(&b"\x01state"[..]));
        assert_eq!(resume.offset, 42);
        let firings: Vec<i64> = store.firings(10).unwrap().iter().map(|f| f.at_ms).collect();
        assert_eq!(firings, [7, 5]);
        assert_eq!(store.firings_since(6, 10).unwrap().len(), 1);
        let outbox = outbox::Outbox::new(db).unwrap();
        let queued = outbox.queued("hook", 10).unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!(
            queued[0].notification.as_ref().unwrap().push,
            Some(push("a"))
        );
        // The next flush gets the next batch number.
        store
            .commit_step(b"\x01s", 43, &[("hook".into(), push("d"))], &[])
            .unwrap();
        store
            .flush("hook", 0, |batch, _| {
                assert_eq!(batch, 2);
                Vec::new()
            })
            .unwrap();
    }

    #[test]
    fn stored_values_of_another_format_are_refused() {
        assert!(decode_u64("x", &[2, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert_eq!(decode_u64("x", &encode_u64(7)).unwrap(), 7);
        assert!(decode_json::<Firing>("x", &[9, b'{', b'}']).is_err());
    }
}
