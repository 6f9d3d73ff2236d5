//! The KPI store: aggregated rows, the pipeline's snapshot and the consumed log offset, in
//! one redb file.
//!
//! Exactly once rests on one rule: **a commit holds the KPI changes of a range of log
//! records together with the offset after that range.** After a crash the store is at its
//! last durable commit; the processor restores the pipeline from the snapshot (taken at
//! some offset `S` at or before the committed offset `C`), replays `S..C` to rebuild state
//! while discarding the changes (they are already in the store), and continues from `C`.
//! Nothing is lost, nothing is counted twice.
//!
//! Commits between snapshots may be made with `durable = false`: redb makes them visible to
//! readers at once but writes them to disk only with the next durable commit. A crash loses
//! them as a unit, offset included, and they are recomputed from the log.
//!
//! Row keys sort by granularity, then window start, then dimensions, so a query for a time
//! range is one range scan.

mod format;
mod keys;
mod memories;
mod migrate;
mod snapshot_file;
mod staged;

pub use format::{
    ROW_FORMAT, ROW_FORMAT_V1, RowV1, RowV2, SPEND_FORMAT, SPEND_FORMAT_V1, STORE_FORMAT,
    decode_row_value, decode_spend_value, encode_row_value, encode_spend_value,
};
pub use keys::{
    KeyError, decode_row_key, decode_row_view, decode_spend_key, encode_row_key, encode_spend_key,
};
pub use memories::MEMORY_FORMAT;
pub use migrate::MigrationReport;
pub use snapshot_file::{
    PendingSnapshotFile, SNAPSHOT_POINTER_FORMAT, SnapshotFile, SnapshotFileWriter,
};

use crate::error::{EngineFailure, io_is_storage_full};
use crate::reopen::{ReopeningDatabase, Unavailable};
use redb::{ReadableDatabase, ReadableTable, TableDefinition, TableHandle};
use std::path::Path;
use vedetta_core::pipeline::attribution::Memories;
use vedetta_core::pipeline::kpi::{KpiCounters, SpendCounters};
use vedetta_core::pipeline::settings::{SettingChange, StateSettings};
use vedetta_core::pipeline::windows::Granularity;
use vedetta_core::record::UserPseudonym;

/// Page cache of the KPI store.
const CACHE_BYTES: usize = 128 << 20;

const KPIS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("kpis");
const SPEND: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("spend");
const META: TableDefinition<'_, &str, i64> = TableDefinition::new("meta");
const SNAPSHOT: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("snapshot");
/// The settings the state was built under (`vedetta_core::pipeline::settings`).
const CONFIG: TableDefinition<'_, &str, &str> = TableDefinition::new("config");

const PROCESSED_OFFSET: &str = "processed_offset";
const WATERMARK: &str = "watermark";
const SNAPSHOT_OFFSET: &str = "snapshot_offset";
const FORMAT_VERSION: &str = "format_version";
const SETTINGS: &str = "settings";
const FINGERPRINT: &str = "fingerprint";

/// Errors of the KPI store, by what a caller can do about them.
///
/// - [`StoreError::is_retryable`]: the call changed nothing and the same call may succeed
///   later (redb commits are atomic: a failed commit left the store at the previous one).
/// - [`StoreError::needs_reopen`]: the handle is unusable until the file is reopened.
/// - [`StoreError::is_storage_full`]: the disk or a quota is full; retrying helps once space
///   is freed.
/// - Everything else (corruption, a format or configuration this build must not read, a
///   bug) needs a person: retrying cannot help.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The operating system refused a read, write or sync; the kind and OS error are kept.
    #[error("KPI store I/O error: {0}")]
    Io(#[source] std::io::Error),
    /// redb's `PreviousIo`: an earlier I/O failure left this handle unusable.
    #[error("the KPI store must be reopened after an earlier I/O error")]
    NeedsReopen,
    /// The file, a key or a value is not what this store wrote.
    #[error("the KPI store is corrupt: {0}")]
    Corrupt(String),
    /// Stored bytes of a format version this build does not read.
    #[error(
        "{what} has format version {found}; this build reads version {supported} \
         (a newer build wrote it: run that build, or `vedetta replay` with this one)"
    )]
    Version {
        what: &'static str,
        found: i64,
        supported: i64,
    },
    /// The state was built under other settings than the current ones.
    #[error(
        "the KPI store was built under other pipeline settings: {}; run `vedetta replay` \
         to rebuild the state and the KPIs under the current ones",
        .changes.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    ConfigMismatch { changes: Vec<SettingChange> },
    /// Another process holds the file.
    #[error("the KPI store is open in another process")]
    AlreadyOpen,
    /// A key that cannot be encoded or does not decode.
    #[error("a KPI store key: {0}")]
    Key(#[from] KeyError),
    /// Anything else from the engine: misuse or a bug, not a condition of the disk.
    #[error("KPI store error: {0}")]
    Engine(String),
    /// The store is being reopened after a storage failure, or could not be yet.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

impl StoreError {
    /// Whether the failed call changed nothing and may succeed if made again later, on the
    /// same handle: I/O errors (a full disk included). Never true for corruption, a format
    /// or settings mismatch, or [`Self::NeedsReopen`].
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Io(_) | StoreError::Unavailable(_))
    }

    /// Whether the store is only temporarily unable to answer: an I/O failure, a handle
    /// waiting for [`KpiStore::recover_storage`], a reopen in progress. A reader answers
    /// "try again shortly"; the processor recovers.
    pub fn is_temporary(&self) -> bool {
        self.is_retryable() || self.needs_reopen()
    }

    /// Whether the handle must be dropped and the file reopened before anything else can
    /// succeed (redb refuses every call after some I/O failures until then).
    pub fn needs_reopen(&self) -> bool {
        matches!(self, StoreError::NeedsReopen)
    }

    /// Whether the disk or a quota is full (`ENOSPC`, `EDQUOT`, `StorageFull`,
    /// `QuotaExceeded`): the answer to a client is 507, and a retry succeeds once space is
    /// freed.
    pub fn is_storage_full(&self) -> bool {
        matches!(self, StoreError::Io(error) if io_is_storage_full(error))
    }
}

impl<E: Into<redb::Error>> From<E> for StoreError {
    fn from(error: E) -> Self {
        match EngineFailure::from(error.into()) {
            EngineFailure::Io(error) => StoreError::Io(error),
            EngineFailure::NeedsReopen => StoreError::NeedsReopen,
            EngineFailure::Corrupt(message) => StoreError::Corrupt(message),
            EngineFailure::AlreadyOpen => StoreError::AlreadyOpen,
            EngineFailure::Other(message) => StoreError::Engine(message),
        }
    }
}

/// What checking the settings found (see [`KpiStore::check_settings`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingsCheck {
    /// The store had no record (new, or written before records existed): the current
    /// settings are now recorded.
    Recorded,
    /// The record matches.
    Same,
    /// Settings were added since the record, each at its default: the record is updated.
    Extended,
}

/// A row's identity, by name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowKey {
    pub granularity: Granularity,
    pub window_start: i64,
    pub channel: String,
    pub campaign: String,
    pub device: String,
    pub region: String,
}

/// A spend row's identity: spend has only channel and campaign.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpendRowKey {
    pub granularity: Granularity,
    pub window_start: i64,
    pub channel: String,
    pub campaign: String,
}

/// What one commit writes.
#[derive(Debug, Default)]
pub struct Commit {
    pub rows: Vec<(RowKey, KpiCounters)>,
    /// Spend changes: micro-units and the number of records.
    pub spend: Vec<(SpendRowKey, SpendCounters)>,
    /// Offset of the next log record to process after this commit.
    pub processed_offset: u64,
    pub watermark: Option<i64>,
    /// The pipeline state as of `processed_offset`, when a snapshot is due.
    pub snapshot: Option<Vec<u8>>,
    /// Or a snapshot already written to its file ([`KpiStore::write_snapshot_file`]),
    /// made the store's snapshot by this commit: one encoded off the processor's thread,
    /// of the offset its state was copied at, which rides on a later commit. Recovery
    /// restores it and replays the log from its offset (the log is kept from there). Its
    /// offset is never past `processed_offset`; at most one of the two is set.
    pub snapshot_file: Option<SnapshotFile>,
    /// Fsync this commit (and every non-durable one before it).
    pub durable: bool,
    /// Attribution memories of users the pipeline dropped: only in a commit with a
    /// snapshot, taken before it (see `memories`).
    pub memories: Vec<(UserPseudonym, Memories)>,
    /// Memories that started before this are dropped.
    pub memories_before: Option<i64>,
    /// The trigger stage's outputs decided by this commit's records, by seq (ascending,
    /// from the stored next seq on): see `staged`.
    pub outputs: Vec<(u64, Vec<u8>)>,
    /// The seq the stage's next output takes (when it is past the last staged one).
    pub next_output_seq: Option<u64>,
    /// A trigger set that took effect at this offset (the batch's first), encoded.
    pub trigger_set: Option<(u64, Vec<u8>)>,
    /// Staged outputs below this seq were routed (the router's durable cursor): deleted.
    pub delete_outputs_below: Option<u64>,
}

/// What the store holds about progress, read at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    pub processed_offset: u64,
    pub watermark: Option<i64>,
    /// The latest snapshot and the offset it was taken at.
    pub snapshot: Option<(u64, Vec<u8>)>,
}

/// The KPI store over a redb file. Reads run concurrently with the processor's commits.
#[derive(Debug)]
pub struct KpiStore {
    /// Reopened after an I/O failure (see [`KpiStore::recover_storage`]).
    db: ReopeningDatabase,
    migration: Option<MigrationReport>,
}

/// A stored row's identity, borrowed from its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowView<'a> {
    pub window_start: i64,
    pub channel: &'a str,
    pub campaign: &'a str,
    pub device: &'a str,
    pub region: &'a str,
}

impl RowView<'_> {
    pub fn to_key(&self, granularity: Granularity) -> RowKey {
        RowKey {
            granularity,
            window_start: self.window_start,
            channel: self.channel.to_string(),
            campaign: self.campaign.to_string(),
            device: self.device.to_string(),
            region: self.region.to_string(),
        }
    }
}

/// The key range of a granularity's windows starting in `[from, to)`.
fn range_bounds(granularity: Granularity, from: i64, to: i64) -> ([u8; 9], [u8; 9]) {
    (
        keys::prefix(granularity, from),
        keys::prefix(granularity, to),
    )
}

/// A meta entry holding an offset: an `i64` by redb's table type, never negative.
fn offset_from_meta(key: &str, value: i64) -> Result<u64, StoreError> {
    u64::try_from(value)
        .map_err(|_| StoreError::Corrupt(format!("meta entry {key} is negative ({value})")))
}

fn offset_to_meta(offset: u64) -> Result<i64, StoreError> {
    i64::try_from(offset).map_err(|_| StoreError::Engine(format!("offset {offset} past i64")))
}

/// `stored + change`, counter by counter, as [`KpiCounters::add`] sums them (custom event
/// counts merged by name, zero counts dropped); `None` when a sum leaves its type.
fn checked_row_sum(mut stored: KpiCounters, change: &KpiCounters) -> Option<KpiCounters> {
    // Every field named: a counter added to the core fails to compile here until summed.
    let KpiCounters {
        events,
        custom_events,
        sessions,
        converting_sessions,
        conversions,
        revenue_micros,
        flagged,
        duplicates,
        late,
        refunds,
        refunded_micros,
    } = change;
    for (mine, theirs) in stored.events.iter_mut().zip(events) {
        *mine = mine.checked_add(*theirs)?;
    }
    for (name, count) in custom_events {
        match stored.custom_events.iter_mut().find(|(n, _)| n == name) {
            Some((_, existing)) => *existing = existing.checked_add(*count)?,
            None => stored.custom_events.push((name.clone(), *count)),
        }
    }
    stored.custom_events.retain(|(_, count)| *count != 0);
    for (mine, theirs) in [
        (&mut stored.sessions, sessions),
        (&mut stored.converting_sessions, converting_sessions),
        (&mut stored.conversions, conversions),
        (&mut stored.flagged, flagged),
        (&mut stored.duplicates, duplicates),
        (&mut stored.late, late),
        (&mut stored.refunds, refunds),
    ] {
        *mine = mine.checked_add(*theirs)?;
    }
    stored.revenue_micros = stored.revenue_micros.checked_add(*revenue_micros)?;
    stored.refunded_micros = stored.refunded_micros.checked_add(*refunded_micros)?;
    Some(stored)
}

impl KpiStore {
    /// Opens (or creates) the store. A store written by an older format is migrated
    /// first ([`Self::migration`] says what was done); a newer one is refused with
    /// [`StoreError::Version`], and so is one whose snapshot file is missing or of
    /// another length (a server then does not start). Where processing stands is
    /// [`Self::progress`]'s, read by the processor when it starts: it reads the snapshot
    /// file whole (over a gigabyte at millions of users) and checks its hash, so opening
    /// does not read it too.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = ReopeningDatabase::open(path, CACHE_BYTES)?;
        let migration = db.with(migrate::open_current)?;
        db.with(staged::move_single_outputs)?;
        let store = Self { db, migration };
        store.check_snapshot_present()?;
        Ok(store)
    }

    /// What [`Self::progress`] would refuse of the snapshot's file without reading it.
    fn check_snapshot_present(&self) -> Result<(), StoreError> {
        let db = self.db.read_guard()?;
        let txn = db.begin_read()?;
        if txn.open_table(META)?.get(SNAPSHOT_OFFSET)?.is_none() {
            return Ok(());
        }
        match txn.open_table(SNAPSHOT)?.get(0)? {
            Some(value) => snapshot_file::check_present(self.db.path(), value.value()),
            None => Ok(()),
        }
    }

    /// Opens (or creates) the store empty, in the current format, whatever it held: the
    /// start of `vedetta replay`, which must work on a store this build cannot migrate.
    pub fn open_empty(path: &Path) -> Result<Self, StoreError> {
        let store = Self {
            db: ReopeningDatabase::open(path, CACHE_BYTES)?,
            migration: None,
        };
        store.clear()?;
        Ok(store)
    }

    /// After a storage failure: closes and reopens the file (redb refuses every operation
    /// after a failed write until then). The store is then at its last durable commit; the
    /// processor rebuilds its state from there. Fails while the file cannot be opened yet.
    pub fn recover_storage(&self) -> Result<(), StoreError> {
        self.db.reopen()?;
        Ok(())
    }

    /// The migration [`Self::open`] ran, if it had to.
    pub fn migration(&self) -> Option<&MigrationReport> {
        self.migration.as_ref()
    }

    /// Where processing stands.
    pub fn progress(&self) -> Result<Progress, StoreError> {
        let db = self.db.read_guard()?;
        let txn = db.begin_read()?;
        let meta = txn.open_table(META)?;
        let get = |key: &str| -> Result<Option<i64>, StoreError> {
            Ok(meta.get(key)?.map(|v| v.value()))
        };
        let processed_offset = match get(PROCESSED_OFFSET)? {
            Some(v) => offset_from_meta(PROCESSED_OFFSET, v)?,
            None => 0,
        };
        let watermark = get(WATERMARK)?;
        let snapshot = match get(SNAPSHOT_OFFSET)? {
            Some(offset) => {
                let offset = offset_from_meta(SNAPSHOT_OFFSET, offset)?;
                let table = txn.open_table(SNAPSHOT)?;
                match table.get(0)? {
                    Some(value) => Some((
                        offset,
                        snapshot_file::resolve(self.db.path(), value.value())?,
                    )),
                    None => None,
                }
            }
            None => None,
        };
        Ok(Progress {
            processed_offset,
            watermark,
            snapshot,
        })
    }

    /// The settings the state was recorded under, with their fingerprint.
    pub fn settings(&self) -> Result<Option<(String, StateSettings)>, StoreError> {
        let db = self.db.read_guard()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(CONFIG)?;
        let fingerprint = table.get(FINGERPRINT)?.map(|v| v.value().to_string());
        let settings = table
            .get(SETTINGS)?
            .map(|v| StateSettings::parse(v.value()));
        Ok(fingerprint.zip(settings))
    }

    /// Records the settings the state is built under (human-readable, with a fingerprint).
    pub fn record_settings(&self, settings: &StateSettings) -> Result<(), StoreError> {
        let db = self.db.read_guard()?;
        let txn = db.begin_write()?;
        {
            let mut table = txn.open_table(CONFIG)?;
            table.insert(SETTINGS, settings.describe().as_str())?;
            table.insert(FINGERPRINT, settings.fingerprint().as_str())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Compares the current settings with the recorded ones before the state is used.
    /// No record: records `current`. A difference: [`StoreError::ConfigMismatch`] naming
    /// each setting, old → new (a setting the record predates counts as its value in
    /// `defaults`, see `vedetta_core::pipeline::settings`).
    pub fn check_settings(
        &self,
        current: &StateSettings,
        defaults: &StateSettings,
    ) -> Result<SettingsCheck, StoreError> {
        let Some((fingerprint, stored)) = self.settings()? else {
            self.record_settings(current)?;
            return Ok(SettingsCheck::Recorded);
        };
        if fingerprint == current.fingerprint() {
            return Ok(SettingsCheck::Same);
        }
        let changes = current.changes_since(&stored, defaults);
        if !changes.is_empty() {
            return Err(StoreError::ConfigMismatch { changes });
        }
        self.record_settings(current)?;
        Ok(SettingsCheck::Extended)
    }

    /// Applies one commit atomically: row changes, spend changes, offset, snapshot.
    pub fn commit(&self, commit: &Commit) -> Result<(), StoreError> {
        let db = self.db.read_guard()?;
        let mut txn = db.begin_write()?;
        txn.set_durability(if commit.durable {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        })?;
        {
            let mut rows = txn.open_table(KPIS)?;
            for (key, change) in &commit.rows {
                let key = encode_row_key(key)?;
                let stored = match rows.get(key.as_slice())? {
                    Some(bytes) => decode_row_value(bytes.value())?,
                    None => KpiCounters::default(),
                };
                // As for spend below: real sums are far from the bounds, a corrupt stored
                // value may not be; that is an error, never a wrap (nor a panic).
                let counters = checked_row_sum(stored, change).ok_or_else(|| {
                    StoreError::Corrupt(format!("a KPI counter past its bound under key {key:?}"))
                })?;
                if counters.is_zero() {
                    rows.remove(key.as_slice())?;
                } else {
                    rows.insert(key.as_slice(), encode_row_value(&counters)?.as_slice())?;
                }
            }
            let mut spend = txn.open_table(SPEND)?;
            for (key, change) in &commit.spend {
                let key = encode_spend_key(key)?;
                let stored = match spend.get(key.as_slice())? {
                    Some(bytes) => decode_spend_value(bytes.value())?,
                    None => SpendCounters::default(),
                };
                // i128 micro-units and i64 records: sums of real records cannot reach the
                // bounds, but a corrupt stored value could; that is an error, never a wrap.
                let past = |what: &str| {
                    StoreError::Corrupt(format!("spend {what} past its bound under key {key:?}"))
                };
                let total = SpendCounters {
                    micros: stored
                        .micros
                        .checked_add(change.micros)
                        .ok_or_else(|| past("sum"))?,
                    records: stored
                        .records
                        .checked_add(change.records)
                        .ok_or_else(|| past("record count"))?,
                };
                // Records summing to 0 are a spend of 0, kept: only a row with neither
                // money nor records is no spend at all.
                if total.is_zero() {
                    spend.remove(key.as_slice())?;
                } else {
                    spend.insert(key.as_slice(), encode_spend_value(total).as_slice())?;
                }
            }
            let mut meta = txn.open_table(META)?;
            meta.insert(PROCESSED_OFFSET, offset_to_meta(commit.processed_offset)?)?;
            match commit.watermark {
                Some(w) => meta.insert(WATERMARK, w)?,
                None => meta.remove(WATERMARK)?,
            };
            if !commit.memories.is_empty() || commit.memories_before.is_some() {
                memories::write(&txn, &commit.memories, commit.memories_before)?;
            }
            let snapshot = match (&commit.snapshot, &commit.snapshot_file) {
                (Some(bytes), None) => Some((commit.processed_offset, bytes.clone())),
                (None, Some(file)) => Some((file.offset, snapshot_file::pointer(file))),
                (None, None) => None,
                (Some(_), Some(_)) => {
                    return Err(StoreError::Engine(
                        "a commit with two snapshots, inline and in a file".into(),
                    ));
                }
            };
            if let Some((offset, value)) = &snapshot {
                if *offset > commit.processed_offset {
                    // A bug upstream: recovery would skip the records in between.
                    return Err(StoreError::Engine(format!(
                        "a snapshot of offset {offset} committed with the processed offset {}",
                        commit.processed_offset
                    )));
                }
                let mut table = txn.open_table(SNAPSHOT)?;
                table.insert(0, value.as_slice())?;
                meta.insert(SNAPSHOT_OFFSET, offset_to_meta(*offset)?)?;
            }
            drop(meta);
            let staging = staged::Staging {
                outputs: &commit.outputs,
                next_seq: commit.next_output_seq,
                trigger_set: commit.trigger_set.as_ref(),
                delete_below: commit.delete_outputs_below,
                snapshot_offset: snapshot.as_ref().map(|(offset, _)| *offset),
            };
            let touches = !commit.outputs.is_empty()
                || commit.next_output_seq.is_some()
                || commit.trigger_set.is_some()
                || commit.delete_outputs_below.is_some()
                || snapshot.is_some();
            if touches {
                staged::write(&txn, &staging)?;
            }
        }
        txn.commit()?;
        // Snapshot files no durable commit points to any more (or never did).
        if commit.durable && (commit.snapshot.is_some() || commit.snapshot_file.is_some()) {
            snapshot_file::remove_others(self.db.path(), commit.snapshot_file.as_ref());
        }
        Ok(())
    }

    /// Writes a snapshot of the pipeline state at `offset` to its file beside the store,
    /// durably, for a later commit to make it the store's snapshot
    /// ([`Commit::snapshot_file`]). Runs alongside commits (it touches no table): the
    /// processor calls it from the thread that encoded the snapshot.
    pub fn write_snapshot_file(
        &self,
        offset: u64,
        bytes: &[u8],
    ) -> Result<SnapshotFile, StoreError> {
        self.snapshot_file_writer().write(offset, bytes)
    }

    /// What [`Self::write_snapshot_file`] does, for another thread, without holding the
    /// store: a thread that held it would keep the database open past the store's last
    /// user (unclosed at the end of the process, redb repairs the file at the next open).
    pub fn snapshot_file_writer(&self) -> SnapshotFileWriter {
        SnapshotFileWriter::new(self.db.path())
    }

    /// Visits the rows of a granularity whose window starts in `[from, to)`, in key order,
    /// without collecting them: a query's memory is bounded by what it keeps, not by the
    /// rows it reads.
    pub fn scan_rows(
        &self,
        granularity: Granularity,
        from: i64,
        to: i64,
        mut visit: impl FnMut(&RowView<'_>, &KpiCounters),
    ) -> Result<(), StoreError> {
        if from >= to {
            return Ok(());
        }
        let db = self.db.read_guard()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(KPIS)?;
        let (low, high) = range_bounds(granularity, from, to);
        for entry in table.range(low.as_slice()..high.as_slice())? {
            let (key, value) = entry?;
            let counters = decode_row_value(value.value())?;
            let (_, row) = decode_row_view(key.value())?;
            visit(&row, &counters);
        }
        Ok(())
    }

    /// Visits the spend rows of a granularity whose window starts in `[from, to)`:
    /// (window start, channel, campaign, micro-units and records).
    pub fn scan_spend(
        &self,
        granularity: Granularity,
        from: i64,
        to: i64,
        mut visit: impl FnMut(i64, &str, &str, SpendCounters),
    ) -> Result<(), StoreError> {
        if from >= to {
            return Ok(());
        }
        let db = self.db.read_guard()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(SPEND)?;
        let (low, high) = range_bounds(granularity, from, to);
        for entry in table.range(low.as_slice()..high.as_slice())? {
            let (key, value) = entry?;
            let spend = decode_spend_value(value.value())?;
            let key = key.value();
            let (_, window_start, [channel, campaign]) = keys::decode_parts::<2>(key)?;
            visit(window_start, channel, campaign, spend);
        }
        Ok(())
    }

    /// Rows of a granularity whose window starts in `[from, to)`, collected.
    pub fn rows(
        &self,
        granularity: Granularity,
        from: i64,
        to: i64,
    ) -> Result<Vec<(RowKey, KpiCounters)>, StoreError> {
        let mut out = Vec::new();
        self.scan_rows(granularity, from, to, |row, counters| {
            out.push((row.to_key(granularity), counters.clone()));
        })?;
        Ok(out)
    }

    /// Spend rows of a granularity whose window starts in `[from, to)`.
    pub fn spend(
        &self,
        granularity: Granularity,
        from: i64,
        to: i64,
    ) -> Result<Vec<(SpendRowKey, SpendCounters)>, StoreError> {
        let mut out = Vec::new();
        self.scan_spend(
            granularity,
            from,
            to,
            |window_start, channel, campaign, spend| {
                out.push((
                    SpendRowKey {
                        granularity,
                        window_start,
                        channel: channel.to_string(),
                        campaign: campaign.to_string(),
                    },
                    spend,
                ));
            },
        )?;
        Ok(out)
    }

    /// The stored attribution memories of these users (those that have one).
    pub fn read_memories(
        &self,
        users: &[UserPseudonym],
    ) -> Result<Vec<(UserPseudonym, Memories)>, StoreError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let db = self.db.read_guard()?;
        memories::read(&db, users)
    }

    /// Up to `limit` staged trigger outputs from seq `from` on, in seq order (`staged`).
    pub fn read_outputs(&self, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let db = self.db.read_guard()?;
        staged::read_outputs(&db, from, limit)
    }

    /// The seq the trigger stage's next output takes, and the first seq still staged.
    pub fn output_seqs(&self) -> Result<(u64, Option<u64>), StoreError> {
        let db = self.db.read_guard()?;
        staged::seqs(&db)
    }

    /// The trigger sets recorded at offsets from `from` on (a replay applies them there).
    pub fn trigger_sets_from(&self, from: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let db = self.db.read_guard()?;
        staged::trigger_sets_from(&db, from)
    }

    /// How many users have a stored attribution memory.
    pub fn stored_memories(&self) -> Result<u64, StoreError> {
        let db = self.db.read_guard()?;
        memories::count(&db)
    }

    /// Deletes every row, the snapshot, the progress and the settings record (before a
    /// replay), leaving an empty store of the current format. The trigger stage's staged
    /// outputs and next seq stay: they are routed after the replay, and seqs never go back
    /// (a store whose next seq does not read starts again from 0: the router sees its
    /// cursor ahead of the store and goes back to what is staged).
    pub fn clear(&self) -> Result<(), StoreError> {
        let next_seq = self.output_seqs().map_or(0, |(next, _)| next);
        let db = self.db.read_guard()?;
        let txn = db.begin_write()?;
        let tables: Vec<_> = txn.list_tables()?.collect();
        for table in tables {
            if [staged::OUTPUT_ROWS.name(), staged::SINGLE_OUTPUTS.name()].contains(&table.name()) {
                continue;
            }
            txn.delete_table(table)?;
        }
        migrate::create_tables(&txn)?;
        if next_seq > 0 {
            txn.open_table(META)?
                .insert(staged::NEXT_SEQ, offset_to_meta(next_seq)?)?;
        }
        txn.commit()?;
        snapshot_file::remove_others(self.db.path(), None);
        Ok(())
    }
}

#[cfg(test)]
mod format_tests;

#[cfg(test)]
mod spend_format_tests;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key(g: Granularity, start: i64, channel: &str) -> RowKey {
        RowKey {
            granularity: g,
            window_start: start,
            channel: channel.into(),
            campaign: "(none)".into(),
            device: "mobile".into(),
            region: "IT-25".into(),
        }
    }

    fn sessions(n: i64) -> KpiCounters {
        KpiCounters {
            sessions: n,
            ..KpiCounters::default()
        }
    }

    /// The bug: a row's change was added with `+=`, so a stored count near its bound
    /// (corrupt bytes; real sums are far below it) panicked the processor in a debug
    /// build and wrapped to a negative count in a release one. Spend was already checked.
    #[test]
    fn a_row_sum_past_its_bound_is_an_error_never_a_wrap() {
        let dir = tempfile::tempdir().unwrap();
        let store = KpiStore::open(&dir.path().join("kpi.redb")).unwrap();
        let k = key(Granularity::Minute, 60_000, "social");
        let mut near = sessions(i64::MAX);
        near.custom_events = vec![("signup".into(), i64::MAX)];
        store
            .commit(&Commit {
                rows: vec![(k.clone(), near.clone())],
                processed_offset: 1,
                ..Commit::default()
            })
            .unwrap();
        let mut custom = KpiCounters::default();
        custom.add_custom("signup", 1);
        for change in [sessions(1), custom] {
            let error = store
                .commit(&Commit {
                    rows: vec![(k.clone(), change)],
                    processed_offset: 2,
                    ..Commit::default()
                })
                .unwrap_err();
            assert!(matches!(error, StoreError::Corrupt(_)), "{error}");
        }
        // Nothing of the failed commits was applied.
        assert_eq!(store.progress().unwrap().processed_offset, 1);
        assert_eq!(
            store.rows(Granularity::Minute, 0, 120_000).unwrap(),
            vec![(k.clone(), near)]
        );
        // A change that stays within bounds still adds, and custom events still merge.
        let mut back = sessions(-1);
        back.add_custom("signup", -1);
        back.add_custom("quote", 2);
        store
            .commit(&Commit {
                rows: vec![(k, back)],
                processed_offset: 3,
                ..Commit::default()
            })
            .unwrap();
        let rows = store.rows(Granularity::Minute, 0, 120_000).unwrap();
        assert_eq!(rows[0].1.sessions, i64::MAX - 1);
        assert_eq!(
            rows[0].1.custom_events,
            vec![
                ("signup".to_string(), i64::MAX - 1),
                ("quote".to_string(), 2)
            ]
        );
    }

    #[test]
    fn commits_add_up_and_zero_rows_disappear() {
        let dir = tempfile::tempdir().unwrap();
        let store = KpiStore::open(&dir.path().join("kpi.redb")).unwrap();
        let progress = store.progress().unwrap();
        assert_eq!(progress, Progress::default());
        let k = key(Granularity::Minute, 60_000, "social");
        store
            .commit(&Commit {
                rows: vec![(k.clone(), sessions(2))],
                processed_offset: 5,
                ..Commit::default()
            })
            .unwrap();
        store
            .commit(&Commit {
                rows: vec![
                    (k.clone(), sessions(-1)),
                    (key(Granularity::Minute, 120_000, "email"), sessions(1)),
                ],
                spend: vec![(
                    SpendRowKey {
                        granularity: Granularity::Minute,
                        window_start: 60_000,
                        channel: "social".into(),
                        campaign: "x".into(),
                    },
                    SpendCounters::record(1_500_000),
                )],
                processed_offset: 9,
                watermark: Some(55),
                snapshot: Some(vec![1, 2, 3]),
                durable: true,
                ..Commit::default()
            })
            .unwrap();
        let rows = store.rows(Granularity::Minute, 0, 120_000).unwrap();
        assert_eq!(rows, vec![(k.clone(), sessions(1))]);
        assert_eq!(
            store.rows(Granularity::Minute, 0, 180_000).unwrap().len(),
            2
        );
        assert!(
            store
                .rows(Granularity::Hour, 0, 180_000)
                .unwrap()
                .is_empty()
        );
        store
            .commit(&Commit {
                rows: vec![(k, sessions(-1))],
                processed_offset: 10,
                durable: true,
                ..Commit::default()
            })
            .unwrap();
        assert_eq!(store.rows(Granularity::Minute, 0, 120_000).unwrap(), vec![]);
        assert_eq!(
            store.spend(Granularity::Minute, 0, 120_000).unwrap()[0].1,
            SpendCounters::record(1_500_000)
        );
        drop(store);
        let progress = KpiStore::open(&dir.path().join("kpi.redb"))
            .unwrap()
            .progress()
            .unwrap();
        assert_eq!(progress.processed_offset, 10);
        assert_eq!(progress.watermark, None);
        assert_eq!(progress.snapshot, Some((9, vec![1, 2, 3])));
    }

    fn snapshot_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.contains(".snapshot-"))
            .collect();
        names.sort();
        names
    }

    /// A snapshot encoded off the processor's thread is written to its file there, and a
    /// later commit makes it the store's snapshot of the offset it describes (not the
    /// commit's); one past the commit's is refused, files no commit names are removed, and
    /// a file changed since is an error, not a misread state.
    #[test]
    fn a_snapshot_file_describes_an_earlier_offset_than_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kpi.redb");
        let store = KpiStore::open(&path).unwrap();
        let orphan = store
            .write_snapshot_file(3, b"VDSN\x03never committed")
            .unwrap();
        let file = store
            .write_snapshot_file(12, b"VDSN\x03state at 12")
            .unwrap();
        assert_eq!(file.offset, 12);
        store
            .commit(&Commit {
                processed_offset: 20,
                snapshot_file: Some(file),
                durable: true,
                ..Commit::default()
            })
            .unwrap();
        assert_eq!(
            snapshot_files(dir.path()),
            vec![file_name(&path, &file)],
            "the file of an uncommitted one ({orphan:?}) is gone"
        );
        let ahead = store.write_snapshot_file(26, b"VDSN\x03ahead").unwrap();
        let error = store
            .commit(&Commit {
                processed_offset: 25,
                snapshot_file: Some(ahead),
                durable: true,
                ..Commit::default()
            })
            .unwrap_err();
        assert!(error.to_string().contains("offset 26"), "{error}");
        drop(store);
        let store = KpiStore::open(&path).unwrap();
        let progress = store.progress().unwrap();
        assert_eq!(progress.processed_offset, 20);
        assert_eq!(
            progress.snapshot,
            Some((12, b"VDSN\x03state at 12".to_vec()))
        );

        // An inline snapshot replaces it, and its file goes.
        store
            .commit(&Commit {
                processed_offset: 30,
                snapshot: Some(b"VDSN\x03inline".to_vec()),
                durable: true,
                ..Commit::default()
            })
            .unwrap();
        assert_eq!(snapshot_files(dir.path()), Vec::<String>::new());
        assert_eq!(
            store.progress().unwrap().snapshot,
            Some((30, b"VDSN\x03inline".to_vec()))
        );

        let file = store
            .write_snapshot_file(31, b"VDSN\x03state at 31")
            .unwrap();
        store
            .commit(&Commit {
                processed_offset: 31,
                snapshot_file: Some(file),
                durable: true,
                ..Commit::default()
            })
            .unwrap();
        std::fs::write(
            snapshot_file::path_of(&path, 31, file.hash),
            b"VDSN\x03state at 3!",
        )
        .unwrap();
        let error = store.progress().unwrap_err();
        assert!(matches!(error, StoreError::Corrupt(_)), "{error}");
    }

    fn file_name(store_path: &Path, file: &SnapshotFile) -> String {
        let path = snapshot_file::path_of(store_path, file.offset, file.hash);
        path.file_name().unwrap().to_string_lossy().into_owned()
    }

    fn files_beside_the_store(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name != "kpi.redb")
            .collect();
        names.sort();
        names
    }

    /// A writer that never finished (a crash, a process that exited while a given-up
    /// snapshot was still being written: every stop and every `vedetta replay` that ended
    /// during an encoding) leaves its temporary file, 66-140 MB for a million users. It
    /// was named `kpi.redb.tmp<n>`, outside the snapshot files' prefix, and stayed forever.
    #[test]
    fn an_unfinished_snapshot_file_goes_with_the_next_snapshot_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kpi.redb");
        let store = KpiStore::open(&path).unwrap();
        // What the writer of offset 7 had written when its process ended.
        let unfinished = snapshot_file::temporary_path(&path, 7, 0);
        std::fs::write(&unfinished, b"VDSN\x03half a sn").unwrap();
        let file = store.write_snapshot_file(9, b"VDSN\x03state at 9").unwrap();
        store
            .commit(&Commit {
                processed_offset: 9,
                snapshot_file: Some(file),
                durable: true,
                ..Commit::default()
            })
            .unwrap();
        assert_eq!(
            files_beside_the_store(dir.path()),
            vec![file_name(&path, &file)],
            "{} was left behind",
            unfinished.display()
        );
    }

    /// A write that fails (here its rename: the name is taken by a directory; on a full
    /// disk it is the write itself) leaves no partial file: on a full disk that file kept
    /// the disk full, and each later attempt left another, so the processor, whose
    /// recovery needs a snapshot commit to remove them, could never come back.
    #[test]
    fn a_failed_snapshot_write_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kpi.redb");
        let store = KpiStore::open(&path).unwrap();
        let taken =
            snapshot_file::path_of(&path, 5, xxhash_rust::xxh3::xxh3_64(b"VDSN\x03state at 5"));
        std::fs::create_dir(&taken).unwrap();
        std::fs::write(taken.join("occupied"), b"x").unwrap();
        let error = store
            .write_snapshot_file(5, b"VDSN\x03state at 5")
            .unwrap_err();
        assert!(error.to_string().contains("renaming"), "{error}");
        assert_eq!(
            files_beside_the_store(dir.path()),
            vec![taken.file_name().unwrap().to_string_lossy().into_owned()],
            "only the directory in the way"
        );
    }

    /// A snapshot written into its file as it is encoded, in pieces of any size, is the
    /// file of its bytes written at once (the same name, length and hash), and the store
    /// reads it back; one given up before it is finished (an encoding error, a full disk)
    /// leaves nothing behind.
    #[test]
    fn a_snapshot_file_written_in_pieces_is_the_one_written_whole() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kpi.redb");
        let store = KpiStore::open(&path).unwrap();
        let writer = store.snapshot_file_writer();
        // Past the writer's buffer, so that pieces reach the file before the end.
        let bytes: Vec<u8> = b"VDSN\x03"
            .iter()
            .copied()
            .chain((0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8))
            .collect();
        let mut pending = writer.begin(21).unwrap();
        for piece in bytes.chunks(7_919) {
            pending.write_all(piece).unwrap();
        }
        let given_up = writer.begin(21).unwrap();
        drop(given_up);
        let mut abandoned = writer.begin(22).unwrap();
        abandoned.write_all(&bytes).unwrap();
        drop(abandoned);
        let streamed = pending.finish().unwrap();
        assert_eq!(streamed.len, bytes.len() as u64);
        assert_eq!(
            files_beside_the_store(dir.path()),
            vec![file_name(&path, &streamed)],
            "the files given up are gone"
        );
        let whole = store.write_snapshot_file(21, &bytes).unwrap();
        assert_eq!(streamed, whole);
        store
            .commit(&Commit {
                processed_offset: 21,
                snapshot_file: Some(streamed),
                durable: true,
                ..Commit::default()
            })
            .unwrap();
        drop(store);
        let progress = KpiStore::open(&path).unwrap().progress().unwrap();
        assert!(progress.snapshot == Some((21, bytes)));
    }

    /// Two writers of one offset: a processor rebuilt after a failure starts its snapshots
    /// again from the store's, and may copy the state at an offset whose snapshot a writer
    /// it gave up is still writing (not necessarily the same bytes: the first copy was
    /// taken by a run whose batches and recalls differed). Both files had the same name, so the last rename won,
    /// whichever one the commit named: the store's snapshot was then "not the one the
    /// store committed", and the server would not start until a full `vedetta replay`.
    #[test]
    fn a_given_up_writer_of_the_same_offset_cannot_replace_the_committed_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kpi.redb");
        let store = KpiStore::open(&path).unwrap();
        let committed = store
            .write_snapshot_file(12, b"VDSN\x03the rebuilt one")
            .unwrap();
        store
            .commit(&Commit {
                processed_offset: 15,
                snapshot_file: Some(committed),
                durable: true,
                ..Commit::default()
            })
            .unwrap();
        // The writer given up before the rebuild ends last.
        let given_up = store
            .write_snapshot_file(12, b"VDSN\x03the given-up one")
            .unwrap();
        assert_ne!(given_up, committed);
        drop(store);
        let progress = KpiStore::open(&path).unwrap().progress().unwrap();
        assert_eq!(
            progress.snapshot,
            Some((12, b"VDSN\x03the rebuilt one".to_vec()))
        );
    }

    /// The first builds of 2026-12-04 wrote pointers of format 1, naming the file by its
    /// offset only: a store they left reads it still.
    #[test]
    fn a_format_1_pointer_reads_the_file_named_by_its_offset_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kpi.redb");
        let store = KpiStore::open(&path).unwrap();
        let bytes = b"VDSN\x03state at 4";
        let mut pointer = b"VDSF\x01".to_vec();
        for word in [4, bytes.len() as u64, xxhash_rust::xxh3::xxh3_64(bytes)] {
            pointer.extend_from_slice(&word.to_le_bytes());
        }
        // Stored as it was then (an inline value is stored verbatim).
        store
            .commit(&Commit {
                processed_offset: 4,
                snapshot: Some(pointer),
                durable: true,
                ..Commit::default()
            })
            .unwrap();
        std::fs::write(
            dir.path().join("kpi.redb.snapshot-00000000000000000004"),
            bytes,
        )
        .unwrap();
        drop(store);
        let progress = KpiStore::open(&path).unwrap().progress().unwrap();
        assert_eq!(progress.snapshot, Some((4, bytes.to_vec())));
    }

    /// A store at offset 6 whose snapshot (of offset 4) is in its file, closed.
    fn closed_with_a_snapshot_file(path: &Path) -> SnapshotFile {
        let store = KpiStore::open(path).unwrap();
        let file = store.write_snapshot_file(4, b"VDSN\x03state at 4").unwrap();
        store
            .commit(&Commit {
                processed_offset: 6,
                snapshot_file: Some(file),
                durable: true,
                ..Commit::default()
            })
            .unwrap();
        file
    }

    /// A store copied or restored without its snapshot file says which file it lacks and
    /// what to do, rather than only "No such file or directory".
    #[test]
    fn a_missing_snapshot_file_is_named_with_the_way_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kpi.redb");
        let file = closed_with_a_snapshot_file(&path);
        std::fs::remove_file(snapshot_file::path_of(&path, 4, file.hash)).unwrap();
        let error = KpiStore::open(&path).map(drop).unwrap_err().to_string();
        assert!(error.contains(&file_name(&path, &file)), "{error}");
        assert!(error.contains("vedetta replay"), "{error}");
    }

    /// Opening checks the snapshot's file by its length, without reading it (gigabytes at
    /// millions of users; the processor reads it when it starts, and checks its hash).
    #[test]
    fn a_snapshot_file_of_another_length_is_refused_at_open_and_another_hash_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kpi.redb");
        let file = closed_with_a_snapshot_file(&path);
        let on_disk = snapshot_file::path_of(&path, 4, file.hash);
        std::fs::write(&on_disk, b"VDSN\x03state at").unwrap();
        let error = KpiStore::open(&path).map(drop).unwrap_err().to_string();
        assert!(
            error.contains("is not the one the store committed"),
            "{error}"
        );
        std::fs::write(&on_disk, b"VDSN\x03state at 5").unwrap();
        let store = KpiStore::open(&path).unwrap();
        let error = store.progress().map(drop).unwrap_err().to_string();
        assert!(
            error.contains("is not the one the store committed"),
            "{error}"
        );
        assert!(error.contains(&file_name(&path, &file)), "{error}");
    }
}
