//! The trigger store (issue 12): the trigger router's cursor over the outputs the
//! processor's trigger stage staged in the KPI store, the pushes waiting for their
//! destination's next batch, and the firing history, in the alert store's database beside
//! the outbox.
//!
//! Exactly once inside: [`TriggerStore::commit_route`] writes the new pending pushes, their
//! firings and the router's cursor (the next staged output seq to route) in one
//! transaction; after a crash the router goes on from its cursor, so a staged output is
//! neither routed twice nor lost (the processor deletes staged outputs only below the
//! cursor once committed here). [`TriggerStore::flush`] moves a destination's pending pushes into the outbox,
//! removing them in the same transaction, so a push is queued exactly once; the outbox then
//! delivers it at least once, under an id fixed at that commit (idempotent receivers see it
//! once).
//!
//! Tables (keys are typed tuples, never joined strings):
//! - `act_meta`: `"routed" → [FORMAT][u64 LE]` (the router's cursor), `"batch" →
//!   [FORMAT][u64 LE]` (the last batch number given to a flush); and, in a store written
//!   before the engine ran in the processor, `"state"` (the consumer's engine globals) and
//!   `"offset"` (its log offset), dropped at the first start of the router
//!   ([`TriggerStore::drop_consumer_state`]);
//! - `act_users`: the consumer's per-user and per-text rows, in such an older store only
//!   (dropped with its state: they described its own log offset, not the processor's
//!   snapshot, and cannot be joined to it exactly);
//! - `act_pending`: `(destination, seq) → [FORMAT][JSON Push]`;
//! - `act_firings`: `(at_ms, seq) → [FIRING_FORMAT][JSON Firing]`, at most [`MAX_FIRINGS`]
//!   (format 1, written before outcomes were kept, reads with every outcome `unknown`);
//! - `act_pending_seq`: `"next" → u64`;
//! - `act_pending_firing`: `(destination, pending seq) → (at_ms, seq)`: the firing a pending
//!   push carries (written with both by [`TriggerStore::commit_route`], taken by the flush);
//! - `act_outbox_firings`: `outbox seq → [FORMAT][JSON [(at_ms, seq)]]`: the firings an
//!   outbox entry carries (written by the flush that enqueues it, read when the sender
//!   settles it, moved when a dead letter is retried);
//! - `act_delivery`: `(trigger, destination) → [FORMAT][JSON DeliveryStats]`: deliveries,
//!   failed attempts, dead letters and the last error of a trigger's pushes, at most
//!   [`MAX_DELIVERY_ROWS`] rows.
//!
//! Firing outcomes: a firing's outcome at each destination goes `pending` (selected,
//! waiting for the destination's batch) → `queued` (in the outbox, under the request id
//! its receiver sees) → `delivered`, `dry_run` or `dead` (with the error). Each change
//! commits with the change that causes it (the step, the flush, the sender's settlement
//! in [`crate::outbox`]), so the record is exact across crashes and restarts.

use crate::outbox;
use crate::reopen::{ReopeningDatabase, Unavailable, is_storage_failure};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use vedetta_core::act::push::Push;
use vedetta_core::watch::notification::Notification;

const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("act_meta");
const PENDING: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("act_pending");
const FIRINGS: TableDefinition<'_, (i64, u64), &[u8]> = TableDefinition::new("act_firings");
const SEQ: TableDefinition<'_, &str, u64> = TableDefinition::new("act_pending_seq");
const PENDING_FIRING: TableDefinition<'_, (&str, u64), (i64, u64)> =
    TableDefinition::new("act_pending_firing");
const OUTBOX_FIRINGS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("act_outbox_firings");
const DELIVERY: TableDefinition<'_, (&str, &str), &[u8]> = TableDefinition::new("act_delivery");
const USERS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("act_users");

/// The format byte of every value this module writes (the state and firings have their
/// own).
pub const TRIGGER_FORMAT: u8 = 1;
/// The format byte of a firing: 2 adds `outcomes` (format 1 reads as outcome `unknown`).
pub const FIRING_FORMAT: u8 = 2;
/// Firings kept; the oldest go first.
pub const MAX_FIRINGS: u64 = 100_000;
/// (trigger, destination) delivery rows kept, at most: names come from trigger sets over
/// time; beyond, a new pair is not counted (its firings' outcomes still are).
pub const MAX_DELIVERY_ROWS: u64 = 10_000;
/// Characters of a kept error, at most.
const MAX_ERROR_CHARS: usize = 500;

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
    /// Its outcome at each destination (format 2; empty in a format-1 record, read as
    /// `unknown` at each destination by [`Firing::outcome_at`]).
    #[serde(default)]
    pub outcomes: Vec<DestinationOutcome>,
}

impl Firing {
    /// The outcome at each destination, `unknown` where the record has none (format 1).
    pub fn outcome_at(&self) -> Vec<DestinationOutcome> {
        self.destinations
            .iter()
            .map(|d| {
                self.outcomes
                    .iter()
                    .find(|o| &o.destination == d)
                    .cloned()
                    .unwrap_or_else(|| DestinationOutcome {
                        destination: d.clone(),
                        state: OutcomeState::Unknown,
                        at_ms: None,
                        request: None,
                        error: None,
                    })
            })
            .collect()
    }
}

/// Where a firing stands at one destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeState {
    /// Selected; waiting for the destination's next batch.
    Pending,
    /// In the outbox (being delivered, or retried after failures).
    Queued,
    /// The receiver took it.
    Delivered,
    /// The destination is a dry run: logged, not sent.
    DryRun,
    /// Dead-lettered (refused, expired or undeliverable); `error` says why.
    Dead,
    /// Recorded before outcomes were kept (format 1).
    Unknown,
}

/// A firing's outcome at one destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationOutcome {
    pub destination: String,
    pub state: OutcomeState,
    /// Wall-clock time of the last change (epoch ms).
    pub at_ms: Option<i64>,
    /// The id of the request that carries it (its `Idempotency-Key`), once queued.
    #[serde(default)]
    pub request: Option<String>,
    /// Why it is dead.
    #[serde(default)]
    pub error: Option<String>,
}

/// Delivery numbers of one trigger's pushes at one destination, kept across restarts.
/// Deliveries and attempts are apart: a push retried 5 times then delivered is 5 failed
/// attempts and 1 delivery.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryStats {
    /// Requests the receiver took (dry runs included).
    pub delivered: u64,
    /// Failed attempts (retried or not).
    pub failed_attempts: u64,
    /// Requests dead-lettered.
    pub dead: u64,
    pub last_error: Option<String>,
    /// Wall-clock time of the last error (epoch ms).
    pub last_error_ms: Option<i64>,
}

/// How the sender settled an attempt at an outbox entry carrying a push.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled<'a> {
    Delivered { dry_run: bool },
    Retry { error: &'a str },
    Dead { error: &'a str },
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
    /// `watch.redb` is being reopened after a storage failure, or could not be yet.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

impl TriggerStoreError {
    /// Whether the disk failed (an I/O error, redb's latch after one, a reopen not done
    /// yet): the call changed nothing, and the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            TriggerStoreError::Engine(error) => is_storage_failure(error),
            TriggerStoreError::Outbox(error) => error.is_retryable(),
            TriggerStoreError::Unavailable(_) => true,
            TriggerStoreError::Corrupt(_) => false,
        }
    }
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

fn encode_firing(firing: &Firing) -> Result<Vec<u8>, TriggerStoreError> {
    let mut out = vec![FIRING_FORMAT];
    serde_json::to_writer(&mut out, firing)
        .map_err(|e| TriggerStoreError::Corrupt(format!("a firing does not encode: {e}")))?;
    Ok(out)
}

/// A firing of format 2, or of format 1 (no outcomes: `unknown` at each destination).
fn decode_firing(bytes: &[u8]) -> Result<Firing, TriggerStoreError> {
    match bytes.split_first() {
        Some((&(1 | FIRING_FORMAT), body)) => serde_json::from_slice(body)
            .map_err(|e| TriggerStoreError::Corrupt(format!("a firing does not decode: {e}"))),
        Some((&found, _)) => Err(TriggerStoreError::Corrupt(format!(
            "a firing has format {found}; this build reads formats 1 and {FIRING_FORMAT}"
        ))),
        None => Err(TriggerStoreError::Corrupt("a firing is empty".into())),
    }
}

fn clip(error: &str) -> String {
    error.chars().take(MAX_ERROR_CHARS).collect()
}

type FiringKey = (i64, u64);

/// Sets the outcome at `destination` of each firing in `keys` (those still kept).
/// A firing that does not decode is left as it is: the settlement it follows must commit.
fn set_outcomes(
    txn: &redb::WriteTransaction,
    keys: &[FiringKey],
    outcome: &DestinationOutcome,
) -> Result<(), redb::Error> {
    let mut table = txn.open_table(FIRINGS)?;
    for key in keys {
        let updated = match table.get(*key)? {
            Some(bytes) => match decode_firing(bytes.value()) {
                Ok(mut firing) => {
                    match firing
                        .outcomes
                        .iter_mut()
                        .find(|o| o.destination == outcome.destination)
                    {
                        Some(o) => {
                            // A delivered request is never made pending or queued again.
                            if !matches!(
                                (o.state, outcome.state),
                                (
                                    OutcomeState::Delivered | OutcomeState::DryRun,
                                    OutcomeState::Queued
                                )
                            ) {
                                let request = o.request.clone();
                                *o = outcome.clone();
                                if o.request.is_none() {
                                    o.request = request;
                                }
                            }
                        }
                        None => firing.outcomes.push(outcome.clone()),
                    }
                    encode_firing(&firing).ok()
                }
                Err(_) => None,
            },
            None => None,
        };
        if let Some(value) = updated {
            table.insert(*key, value.as_slice())?;
        }
    }
    Ok(())
}

fn encode_keys(keys: &[FiringKey]) -> Vec<u8> {
    let mut out = vec![TRIGGER_FORMAT];
    // A list of number pairs always encodes.
    let _ = serde_json::to_writer(&mut out, keys);
    out
}

fn decode_keys(bytes: &[u8]) -> Vec<FiringKey> {
    match bytes.split_first() {
        Some((&TRIGGER_FORMAT, body)) => serde_json::from_slice(body).unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// Records, inside the outbox's own transaction, how the sender settled an attempt at
/// outbox entry `seq` (to `destination`) carrying a push of `trigger`: the
/// (trigger, destination) delivery numbers, and, when the entry left the queue (delivered
/// or dead), the outcome of each firing it carries. Called by [`crate::outbox`]. With no
/// trigger (an entry whose bytes do not decode) only the firings linked to `seq` are
/// settled: they would otherwise stay `queued` for good.
pub(crate) fn record_settlement(
    txn: &redb::WriteTransaction,
    destination: &str,
    seq: u64,
    trigger: Option<&str>,
    now_ms: i64,
    settled: Settled<'_>,
) -> Result<(), redb::Error> {
    if let Some(trigger) = trigger {
        let mut table = txn.open_table(DELIVERY)?;
        let existing = table
            .get((trigger, destination))?
            .map(|v| decode_json::<DeliveryStats>("delivery numbers", v.value()));
        let room = existing.is_some() || table.len()? < MAX_DELIVERY_ROWS;
        if room {
            // Numbers that do not decode start again rather than block the settlement.
            let mut stats = existing.and_then(Result::ok).unwrap_or_default();
            match settled {
                Settled::Delivered { .. } => stats.delivered += 1,
                Settled::Retry { error } | Settled::Dead { error } => {
                    stats.failed_attempts += 1;
                    stats.last_error = Some(clip(error));
                    stats.last_error_ms = Some(now_ms);
                    if matches!(settled, Settled::Dead { .. }) {
                        stats.dead += 1;
                    }
                }
            }
            if let Ok(value) = encode_json(&stats) {
                table.insert((trigger, destination), value.as_slice())?;
            }
        }
    }
    let (state, error, keep_link) = match settled {
        Settled::Retry { .. } => return Ok(()),
        Settled::Delivered { dry_run: false } => (OutcomeState::Delivered, None, false),
        Settled::Delivered { dry_run: true } => (OutcomeState::DryRun, None, false),
        // The dead letter keeps its seq: a retry of it moves the link (`relink`).
        Settled::Dead { error } => (OutcomeState::Dead, Some(clip(error)), true),
    };
    let keys = {
        let mut links = txn.open_table(OUTBOX_FIRINGS)?;
        let keys = links.get(seq)?.map(|v| decode_keys(v.value()));
        if !keep_link && keys.is_some() {
            links.remove(seq)?;
        }
        keys.unwrap_or_default()
    };
    set_outcomes(
        txn,
        &keys,
        &DestinationOutcome {
            destination: destination.to_owned(),
            state,
            at_ms: Some(now_ms),
            request: None,
            error,
        },
    )
}

/// A dead letter `old` went back to the queue as `new`: its firings are queued again.
pub(crate) fn relink(
    txn: &redb::WriteTransaction,
    destination: &str,
    old: u64,
    new: u64,
    now_ms: i64,
) -> Result<(), redb::Error> {
    let keys = {
        let mut links = txn.open_table(OUTBOX_FIRINGS)?;
        let Some(bytes) = links.remove(old)?.map(|v| v.value().to_vec()) else {
            return Ok(());
        };
        links.insert(new, bytes.as_slice())?;
        decode_keys(&bytes)
    };
    set_outcomes(
        txn,
        &keys,
        &DestinationOutcome {
            destination: destination.to_owned(),
            state: OutcomeState::Queued,
            at_ms: Some(now_ms),
            request: None,
            error: None,
        },
    )
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

/// What the router restarts from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resume {
    /// The next staged output seq to route, once the router ever committed.
    pub routed: Option<u64>,
    /// Whether the store holds the state of the consumer that ran the engine before it ran
    /// in the processor ([`TriggerStore::drop_consumer_state`]).
    pub consumer_state: bool,
}

/// The trigger store over the alert store's database.
#[derive(Clone, Debug)]
pub struct TriggerStore {
    /// Reopened after a failed write (redb latches I/O failures until then).
    db: Arc<ReopeningDatabase>,
}

impl TriggerStore {
    /// Opens the tables in `db` (the alert store's, where the outbox is), creating them.
    pub fn new(db: Arc<ReopeningDatabase>) -> Result<Self, TriggerStoreError> {
        db.with(|db| -> Result<(), TriggerStoreError> {
            let txn = db.begin_write()?;
            txn.open_table(META)?;
            txn.open_table(PENDING)?;
            txn.open_table(FIRINGS)?;
            txn.open_table(SEQ)?;
            txn.open_table(PENDING_FIRING)?;
            txn.open_table(OUTBOX_FIRINGS)?;
            txn.open_table(DELIVERY)?;
            txn.open_table(USERS)?;
            outbox::create_tables(&txn)?;
            txn.commit()?;
            Ok(())
        })?;
        Ok(Self { db })
    }

    /// Runs `operation` on the file, reopening it after a storage failure.
    fn run<T>(
        &self,
        operation: impl FnOnce(&Database) -> Result<T, TriggerStoreError>,
    ) -> Result<T, TriggerStoreError> {
        self.db
            .with_recovery(TriggerStoreError::is_retryable, operation)
    }

    pub fn resume(&self) -> Result<Resume, TriggerStoreError> {
        self.run(|db| {
            let txn = db.begin_read()?;
            let meta = txn.open_table(META)?;
            let routed = match meta.get("routed")? {
                Some(v) => Some(decode_u64("the router's cursor", v.value())?),
                None => None,
            };
            let consumer_state = meta.get("state")?.is_some()
                || meta.get("offset")?.is_some()
                || !txn.open_table(USERS)?.is_empty()?;
            Ok(Resume {
                routed,
                consumer_state,
            })
        })
    }

    /// Drops the state of the consumer that ran the engine before it ran in the processor
    /// (its globals, its log offset, its per-user and per-text rows); pending pushes,
    /// firings and the outbox stay. Returns the rows dropped.
    pub fn drop_consumer_state(&self) -> Result<u64, TriggerStoreError> {
        self.run(|db| {
            let txn = db.begin_write()?;
            let rows = {
                let mut meta = txn.open_table(META)?;
                meta.remove("state")?;
                meta.remove("offset")?;
                let rows = txn.open_table(USERS)?.len()?;
                txn.delete_table(USERS)?;
                txn.open_table(USERS)?;
                rows
            };
            txn.commit()?;
            Ok(rows)
        })
    }

    /// One routing step: the new pending pushes (by destination, each with the index in
    /// `firings` of the firing it carries), the firings, and the router's cursor `routed`
    /// (the next staged output seq), in one durable transaction.
    pub fn commit_route(
        &self,
        routed: u64,
        pending: &[(String, Push, usize)],
        firings: &[Firing],
    ) -> Result<(), TriggerStoreError> {
        self.run(|db| {
            let mut txn = db.begin_write()?;
            txn.set_durability(redb::Durability::Immediate)?;
            {
                let mut meta = txn.open_table(META)?;
                meta.insert("routed", encode_u64(routed).as_slice())?;
                let mut seq_table = txn.open_table(SEQ)?;
                let mut seq = seq_table.get("next")?.map(|v| v.value()).unwrap_or(1);
                let mut log = txn.open_table(FIRINGS)?;
                let mut keys = Vec::with_capacity(firings.len());
                for firing in firings {
                    log.insert((firing.at_ms, seq), encode_firing(firing)?.as_slice())?;
                    keys.push((firing.at_ms, seq));
                    seq += 1;
                }
                let mut table = txn.open_table(PENDING)?;
                let mut links = txn.open_table(PENDING_FIRING)?;
                for (destination, push, firing) in pending {
                    table.insert((destination.as_str(), seq), encode_json(push)?.as_slice())?;
                    if let Some(key) = keys.get(*firing) {
                        links.insert((destination.as_str(), seq), *key)?;
                    }
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
        })
    }

    /// Pushes waiting for `destination`, in the order they were selected.
    pub fn pending(&self, destination: &str) -> Result<Vec<(u64, Push)>, TriggerStoreError> {
        self.run(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(PENDING)?;
            let mut out = Vec::new();
            for item in table.range((destination, 0)..=(destination, u64::MAX))? {
                let (key, value) = item?;
                out.push((key.value().1, decode_json("a pending push", value.value())?));
            }
            Ok(out)
        })
    }

    /// Pending pushes of every destination.
    pub fn pending_count(&self) -> Result<u64, TriggerStoreError> {
        self.run(|db| {
            let txn = db.begin_read()?;
            Ok(txn.open_table(PENDING)?.len()?)
        })
    }

    /// Moves `destination`'s pending pushes into the outbox in one transaction: `build`
    /// gets a batch number (unique, stored) and the pushes, and returns the notifications
    /// to enqueue, each with the pending seqs it carries; their firings become `queued`
    /// under the notification's id. Returns how many notifications were queued.
    pub fn flush(
        &self,
        destination: &str,
        now_ms: i64,
        build: impl FnOnce(u64, Vec<(u64, Push)>) -> Vec<(Notification, Vec<u64>)>,
    ) -> Result<usize, TriggerStoreError> {
        self.run(|db| {
            let mut txn = db.begin_write()?;
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
                let taken: Vec<u64> = items.iter().map(|(seq, _)| *seq).collect();
                for seq in &taken {
                    table.remove((destination, *seq))?;
                }
                drop(table);
                let mut meta = txn.open_table(META)?;
                let batch = match meta.get("batch")? {
                    Some(v) => decode_u64("the batch number", v.value())? + 1,
                    None => 1,
                };
                meta.insert("batch", encode_u64(batch).as_slice())?;
                drop(meta);
                let notifications = build(batch, items);
                for (n, carried) in &notifications {
                    let seq = outbox::enqueue(&txn, n, now_ms)?;
                    let mut keys = Vec::with_capacity(carried.len());
                    {
                        let mut links = txn.open_table(PENDING_FIRING)?;
                        for pending in carried {
                            if let Some(key) = links.remove((destination, *pending))? {
                                keys.push(key.value());
                            }
                        }
                    }
                    if keys.is_empty() {
                        continue;
                    }
                    txn.open_table(OUTBOX_FIRINGS)?
                        .insert(seq, encode_keys(&keys).as_slice())?;
                    set_outcomes(
                        &txn,
                        &keys,
                        &DestinationOutcome {
                            destination: destination.to_owned(),
                            state: OutcomeState::Queued,
                            at_ms: Some(now_ms),
                            request: Some(n.id.clone()),
                            error: None,
                        },
                    )?;
                }
                // A pending push no notification carried leaves no link behind.
                {
                    let mut links = txn.open_table(PENDING_FIRING)?;
                    for seq in taken {
                        links.remove((destination, seq))?;
                    }
                }
                notifications.len()
            };
            txn.commit()?;
            Ok(queued)
        })
    }

    /// Delivery numbers of each (trigger, destination), kept across restarts.
    pub fn delivery_stats(
        &self,
    ) -> Result<std::collections::BTreeMap<(String, String), DeliveryStats>, TriggerStoreError>
    {
        self.run(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(DELIVERY)?;
            let mut out = std::collections::BTreeMap::new();
            for item in table.iter()? {
                let (key, value) = item?;
                let (trigger, destination) = key.value();
                out.insert(
                    (trigger.to_owned(), destination.to_owned()),
                    decode_json("delivery numbers", value.value())?,
                );
            }
            Ok(out)
        })
    }

    /// The newest firings first, at most `limit`.
    pub fn firings(&self, limit: usize) -> Result<Vec<Firing>, TriggerStoreError> {
        self.run(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(FIRINGS)?;
            let mut out = Vec::new();
            for item in table.iter()?.rev().take(limit) {
                let (_, value) = item?;
                out.push(decode_firing(value.value())?);
            }
            Ok(out)
        })
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
        self.run(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(FIRINGS)?;
            let mut counts = FiringCounts::default();
            for (read, item) in table.range((day_from_ms, 0)..)?.rev().enumerate() {
                if read == cap {
                    counts.capped = true;
                    break;
                }
                let (key, value) = item?;
                let firing: Firing = decode_firing(value.value())?;
                let entry = counts.per_trigger.entry(firing.trigger).or_default();
                entry.day += 1;
                if key.value().0 >= hour_from_ms {
                    entry.hour += 1;
                }
            }
            Ok(counts)
        })
    }

    /// Firings decided at or after `from_ms` (event time), oldest first, at most `limit`.
    pub fn firings_since(
        &self,
        from_ms: i64,
        limit: usize,
    ) -> Result<Vec<Firing>, TriggerStoreError> {
        self.run(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(FIRINGS)?;
            let mut out = Vec::new();
            for item in table.range((from_ms, 0)..)?.take(limit) {
                let (_, value) = item?;
                out.push(decode_firing(value.value())?);
            }
            Ok(out)
        })
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
            outcomes: vec![],
        }
    }

    /// A firing of `user` pending at the destination "hook".
    fn pending_firing(user: &str, at_ms: i64) -> Firing {
        Firing {
            user: Some(user.into()),
            outcomes: vec![DestinationOutcome {
                destination: "hook".into(),
                state: OutcomeState::Pending,
                at_ms: Some(1),
                request: None,
                error: None,
            }],
            ..firing(at_ms)
        }
    }

    #[test]
    fn firing_counts_split_by_event_time_per_trigger_and_stop_at_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let db =
            Arc::new(ReopeningDatabase::open(&dir.path().join("watch.redb"), 1 << 20).unwrap());
        let store = TriggerStore::new(db).unwrap();
        let mut other = firing(5_000);
        other.trigger = "carrello".into();
        let firings = [firing(500), firing(1_500), firing(2_500), other];
        store.commit_route(1, &[], &firings).unwrap();
        let counts = store.firing_counts(1_000, 2_000, 100).unwrap();
        assert!(!counts.capped);
        assert_eq!(counts.per_trigger["cpa_alto"], HourDay { hour: 1, day: 2 });
        assert_eq!(counts.per_trigger["carrello"], HourDay { hour: 1, day: 1 });
        let capped = store.firing_counts(0, 2_000, 2).unwrap();
        assert!(capped.capped);
        assert_eq!(capped.per_trigger["carrello"], HourDay { hour: 1, day: 1 });
        assert_eq!(capped.per_trigger["cpa_alto"], HourDay { hour: 1, day: 1 });
    }

    /// A store written by the consumer that ran the engine before the processor did: its
    /// state is dropped at the router's first start, pending pushes and firings stay.
    #[test]
    fn the_consumers_state_is_dropped_and_pending_pushes_stay() {
        let dir = tempfile::tempdir().unwrap();
        let db =
            Arc::new(ReopeningDatabase::open(&dir.path().join("watch.redb"), 1 << 20).unwrap());
        let store = TriggerStore::new(db.clone()).unwrap();
        store
            .commit_route(0, &[("hook".into(), push("a"), 0)], &[firing(5)])
            .unwrap();
        db.with(|db| -> Result<(), TriggerStoreError> {
            let txn = db.begin_write().unwrap();
            {
                let mut meta = txn.open_table(META).unwrap();
                meta.insert("state", b"\x03globals".as_slice()).unwrap();
                meta.insert("offset", encode_u64(7).as_slice()).unwrap();
                let mut users = txn.open_table(USERS).unwrap();
                users.insert(1, b"\x02one".as_slice()).unwrap();
                users.insert(TEXT_ROW_KEY, b"\x01text".as_slice()).unwrap();
            }
            txn.commit().unwrap();
            Ok(())
        })
        .unwrap();
        assert!(store.resume().unwrap().consumer_state);
        assert_eq!(store.drop_consumer_state().unwrap(), 2);
        assert_eq!(
            store.resume().unwrap(),
            Resume {
                routed: Some(0),
                consumer_state: false
            }
        );
        assert_eq!(store.pending("hook").unwrap().len(), 1);
        assert_eq!(store.firings(10).unwrap().len(), 1);
    }

    /// A text row's key in the consumer's table (`TEXT_ROWS`).
    const TEXT_ROW_KEY: u64 = 1 << 63;

    #[test]
    fn a_step_and_a_flush_commit_whole_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("watch.redb");
        {
            let store =
                TriggerStore::new(Arc::new(ReopeningDatabase::open(&path, 1 << 20).unwrap()))
                    .unwrap();
            assert_eq!(store.resume().unwrap(), Resume::default());
            store
                .commit_route(
                    42,
                    &[
                        ("hook".into(), push("a"), 0),
                        ("hook".into(), push("b"), 1),
                        ("other".into(), push("c"), 1),
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
                    vec![(
                        Notification {
                            push: Some(push("a")),
                            ..bad.clone()
                        },
                        items.iter().map(|(seq, _)| *seq).collect(),
                    )]
                })
                .unwrap();
            assert_eq!(queued, 1);
            assert!(store.pending("hook").unwrap().is_empty());
            assert_eq!(store.pending("other").unwrap().len(), 1);
        }
        let db = Arc::new(ReopeningDatabase::open(&path, 1 << 20).unwrap());
        let store = TriggerStore::new(db.clone()).unwrap();
        let resume = store.resume().unwrap();
        assert_eq!(
            resume,
            Resume {
                routed: Some(42),
                consumer_state: false
            }
        );
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
            .commit_route(43, &[("hook".into(), push("d"), 0)], &[])
            .unwrap();
        assert_eq!(store.resume().unwrap().routed, Some(43));
        store
            .flush("hook", 0, |batch, _| {
                assert_eq!(batch, 2);
                Vec::new()
            })
            .unwrap();
    }

    fn outcome(store: &TriggerStore, user: &str) -> DestinationOutcome {
        let firings = store.firings(100).unwrap();
        let f = firings
            .iter()
            .find(|f| f.user.as_deref() == Some(user))
            .unwrap();
        assert_eq!(f.outcome_at().len(), 1);
        f.outcome_at()[0].clone()
    }

    #[test]
    fn firing_outcomes_follow_the_outbox_exactly_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("watch.redb");
        let pending = pending_firing;
        let (delivered_id, dead_id);
        {
            let db = Arc::new(ReopeningDatabase::open(&path, 1 << 20).unwrap());
            let store = TriggerStore::new(db.clone()).unwrap();
            let outbox = outbox::Outbox::new(db).unwrap();
            // u1 and u2 go in one request, u3 in another (another trigger).
            let mut other = push("u3");
            other.trigger = "carrello".into();
            store
                .commit_route(
                    1,
                    &[
                        ("hook".into(), push("u1"), 0),
                        ("hook".into(), push("u2"), 1),
                        ("hook".into(), other, 2),
                    ],
                    &[pending("u1", 10), pending("u2", 11), pending("u3", 12)],
                )
                .unwrap();
            assert_eq!(outcome(&store, "u1").state, OutcomeState::Pending);
            let template = Notification {
                destination: "hook".into(),
                ..Notification::example()
            };
            store
                .flush("hook", 100, |_, items| {
                    let seqs: Vec<u64> = items.iter().map(|(s, _)| *s).collect();
                    vec![
                        (
                            Notification {
                                id: "req-1".into(),
                                push: Some(push("u1")),
                                ..template.clone()
                            },
                            seqs[..2].to_vec(),
                        ),
                        (
                            Notification {
                                id: "req-2".into(),
                                push: Some(push("u3")),
                                ..template.clone()
                            },
                            seqs[2..].to_vec(),
                        ),
                    ]
                })
                .unwrap();
            let queued = outcome(&store, "u2");
            assert_eq!(queued.state, OutcomeState::Queued);
            assert_eq!(queued.request.as_deref(), Some("req-1"));
            assert_eq!(queued.at_ms, Some(100));
            let heads = outbox.queued("hook", 10).unwrap();
            let receipt = |now_ms| {
                Some(outbox::PushReceipt {
                    trigger: Some("cpa_alto"),
                    now_ms,
                    dry_run: false,
                })
            };
            // A failed attempt counts, the firings stay queued; then delivered.
            outbox
                .reschedule_push("hook", heads[0].seq, 1, 0, "HTTP 500", receipt(150))
                .unwrap();
            assert_eq!(outcome(&store, "u1").state, OutcomeState::Queued);
            assert!(
                outbox
                    .mark_delivered_push("hook", heads[0].seq, receipt(200))
                    .unwrap()
            );
            // Settling the same entry again (a crash before the sender knew) counts nothing.
            assert!(
                !outbox
                    .mark_delivered_push("hook", heads[0].seq, receipt(201))
                    .unwrap()
            );
            delivered_id = heads[0].seq;
            // The second request is refused: dead, with the reason.
            outbox
                .move_to_dead_push("hook", heads[1].seq, 1, "HTTP 422: bad", 300, receipt(300))
                .unwrap();
            dead_id = heads[1].seq;
        }
        let db = Arc::new(ReopeningDatabase::open(&path, 1 << 20).unwrap());
        let store = TriggerStore::new(db.clone()).unwrap();
        let outbox = outbox::Outbox::new(db).unwrap();
        for user in ["u1", "u2"] {
            let o = outcome(&store, user);
            assert_eq!(o.state, OutcomeState::Delivered, "{user}");
            assert_eq!(o.at_ms, Some(200));
            assert_eq!(o.request.as_deref(), Some("req-1"));
        }
        let dead = outcome(&store, "u3");
        assert_eq!(dead.state, OutcomeState::Dead);
        assert_eq!(dead.error.as_deref(), Some("HTTP 422: bad"));
        assert_eq!(dead.request.as_deref(), Some("req-2"));
        let stats = store.delivery_stats().unwrap();
        assert_eq!(
            stats[&("cpa_alto".to_string(), "hook".to_string())],
            DeliveryStats {
                delivered: 1,
                failed_attempts: 2,
                dead: 1,
                last_error: Some("HTTP 422: bad".into()),
                last_error_ms: Some(300),
            }
        );
        // A retried dead letter is queued again, then delivered (a dry run here).
        let new = outbox.retry_dead(dead_id, 400).unwrap().unwrap();
        assert_ne!(new, delivered_id);
        assert_eq!(outcome(&store, "u3").state, OutcomeState::Queued);
        outbox
            .mark_delivered_push(
                "hook",
                new,
                Some(outbox::PushReceipt {
                    trigger: Some("cpa_alto"),
                    now_ms: 500,
                    dry_run: true,
                }),
            )
            .unwrap();
        let o = outcome(&store, "u3");
        assert_eq!(
            (o.state, o.at_ms, o.error),
            (OutcomeState::DryRun, Some(500), None)
        );
    }

    #[test]
    fn an_entry_that_does_not_decode_dead_letters_its_firings_too() {
        let dir = tempfile::tempdir().unwrap();
        let db =
            Arc::new(ReopeningDatabase::open(&dir.path().join("watch.redb"), 1 << 20).unwrap());
        let store = TriggerStore::new(db.clone()).unwrap();
        let outbox = outbox::Outbox::new(db.clone()).unwrap();
        let queued_firing = pending_firing("ab", 5);
        store
            .commit_route(1, &[("hook".into(), push("ab"), 0)], &[queued_firing])
            .unwrap();
        store
            .flush("hook", 10, |_, items| {
                let notification = Notification {
                    destination: "hook".into(),
                    push: Some(push("ab")),
                    ..Notification::example()
                };
                vec![(notification, items.iter().map(|(s, _)| *s).collect())]
            })
            .unwrap();
        assert_eq!(outcome(&store, "ab").state, OutcomeState::Queued);
        // The entry's notification loses its last byte (a build that wrote it otherwise,
        // a damaged page): the sender reads it as not decoding.
        let seq = outbox.queued("hook", 1).unwrap()[0].seq;
        let entries: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("outbox_entries");
        let txn = db.read_guard().unwrap().begin_write().unwrap();
        {
            let mut table = txn.open_table(entries).unwrap();
            let mut bytes = table.get(seq).unwrap().unwrap().value().to_vec();
            bytes.pop();
            table.insert(seq, bytes.as_slice()).unwrap();
        }
        txn.commit().unwrap();
        let head = outbox.queued("hook", 1).unwrap().remove(0);
        assert!(head.notification.is_err());
        let receipt = outbox::PushReceipt {
            trigger: None,
            now_ms: 20,
            dry_run: false,
        };
        outbox
            .move_to_dead_push("hook", seq, 0, "does not decode", 20, Some(receipt))
            .unwrap();
        let dead = outcome(&store, "ab");
        assert_eq!(
            (dead.state, dead.at_ms, dead.error.as_deref()),
            (OutcomeState::Dead, Some(20), Some("does not decode"))
        );
        // No trigger named: no delivery numbers made up.
        assert!(store.delivery_stats().unwrap().is_empty());
    }

    #[test]
    fn a_format_1_firing_reads_with_its_outcomes_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let db =
            Arc::new(ReopeningDatabase::open(&dir.path().join("watch.redb"), 1 << 20).unwrap());
        let store = TriggerStore::new(db.clone()).unwrap();
        // As the previous build wrote it: format 1, no `outcomes`.
        let mut old = serde_json::to_value(firing(5)).unwrap();
        old.as_object_mut().unwrap().remove("outcomes");
        let mut bytes = vec![1u8];
        bytes.extend(serde_json::to_vec(&old).unwrap());
        let txn = db.read_guard().unwrap().begin_write().unwrap();
        txn.open_table(FIRINGS)
            .unwrap()
            .insert((5, 1), bytes.as_slice())
            .unwrap();
        txn.commit().unwrap();
        let read = store.firings(10).unwrap();
        assert_eq!(read.len(), 1);
        let outcomes = read[0].outcome_at();
        assert_eq!(outcomes.len(), 1);
        assert_eq!(outcomes[0].destination, "hook");
        assert_eq!(outcomes[0].state, OutcomeState::Unknown);
        assert!(decode_firing(&[3, b'{', b'}']).is_err());
    }

    #[test]
    fn stored_values_of_another_format_are_refused() {
        assert!(decode_u64("x", &[2, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert_eq!(decode_u64("x", &encode_u64(7)).unwrap(), 7);
        assert!(decode_json::<Firing>("x", &[9, b'{', b'}']).is_err());
    }
}
