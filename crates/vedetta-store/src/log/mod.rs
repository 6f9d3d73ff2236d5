//! The durable event log.
//!
//! Contract:
//! - **Offsets count records.** The first record ever appended has offset 0; `end_offset`
//!   is the number of records appended so far, and never goes back, not even when retention
//!   deletes old records.
//! - **Appended means fsynced.** [`EventLog::append_group`] returns only after the records
//!   are on disk; a crash after it returns loses nothing, a crash before it leaves no trace
//!   of the group (redb commits are atomic).
//! - **Checksummed.** Every stored batch carries a CRC-32. At open, the tail is verified
//!   and a batch that fails its check is removed (a torn tail), never decoded, never a panic.
//!   A bad batch found later by a reader is reported as an error naming its offset.
//! - **Readable from any offset** still retained, in order, by any number of readers while
//!   one writer appends.
//!
//! Layout: table `batches` maps the first offset of a batch to its encoded bytes (see
//! `vedetta_core::record`); table `meta` holds the next offset; table `quarantine` holds
//! the most recent rejected events with their reasons, capped.

mod writer;

pub use writer::{
    AppendError, AppendFailure, AppendOutcome, GroupCommitWriter, Stored, WriterConfig,
    WriterCounters,
};

use crate::error::{EngineFailure, io_is_storage_full};
use crate::reopen::{ReopeningDatabase, Unavailable};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use vedetta_core::record::{self, BatchError, LogRecord};

const BATCHES: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("batches");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const QUARANTINE: TableDefinition<'_, u64, &str> = TableDefinition::new("quarantine");
const NEXT_OFFSET: &str = "next_offset";
const NEXT_QUARANTINE: &str = "next_quarantine";

/// What can go wrong with the log. Every variant means the log could not do what was
/// asked; none of them means data that was acknowledged is gone. The engine's error kind
/// is kept (see [`LogError::is_retryable`], [`LogError::is_storage_full`]).
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The operating system refused a read, write or sync; the kind and OS error are kept.
    #[error("log I/O error: {0}")]
    Io(#[source] std::io::Error),
    /// redb's `PreviousIo`: an earlier I/O failure left this handle unusable.
    #[error("the log must be reopened after an earlier I/O error")]
    NeedsReopen,
    /// Another process holds the file.
    #[error("the log is open in another process")]
    AlreadyOpen,
    /// The engine found its file damaged.
    #[error("the log file is corrupt: {0}")]
    Engine(String),
    #[error("batch at offset {offset} is corrupt: {source}")]
    Corrupt { offset: u64, source: BatchError },
    /// A batch of a format this build does not read (a newer build wrote it). Never
    /// repaired away: the log refuses to open rather than drop it.
    #[error("batch at offset {offset}: {source}; run the build that wrote it")]
    Version { offset: u64, source: BatchError },
    #[error("offset {requested} is no longer retained (log starts at {start})")]
    Retained { requested: u64, start: u64 },
    /// Anything else from the engine: misuse or a bug, not a condition of the disk.
    #[error("log storage error: {0}")]
    Storage(String),
    /// The log is being reopened after a storage failure, or could not be yet.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

impl LogError {
    /// Whether the failed call changed nothing and may succeed if made again later, on the
    /// same handle: I/O errors (a full disk included). A failed append wrote nothing
    /// (redb commits are atomic), so nothing was acknowledged.
    pub fn is_retryable(&self) -> bool {
        matches!(self, LogError::Io(_) | LogError::Unavailable(_))
    }

    /// Whether the log is only temporarily unable to answer: an I/O failure, a handle
    /// waiting for [`EventLog::recover_storage`], a reopen in progress.
    pub fn is_temporary(&self) -> bool {
        self.is_retryable() || self.needs_reopen()
    }

    /// Whether the handle must be dropped and the file reopened before anything else can
    /// succeed.
    pub fn needs_reopen(&self) -> bool {
        matches!(self, LogError::NeedsReopen)
    }

    /// Whether the disk or a quota is full (`ENOSPC`, `EDQUOT`, `StorageFull`,
    /// `QuotaExceeded`): the answer to a client is 507 (or 503 with `Retry-After`), and a
    /// retry succeeds once space is freed.
    pub fn is_storage_full(&self) -> bool {
        matches!(self, LogError::Io(error) if io_is_storage_full(error))
    }
}

impl LogError {
    /// A batch that does not read: of another format version, or damaged.
    fn batch(offset: u64, source: BatchError) -> Self {
        match source {
            BatchError::UnknownFormat(_) => LogError::Version { offset, source },
            source => LogError::Corrupt { offset, source },
        }
    }
}

impl<E: Into<redb::Error>> From<E> for LogError {
    fn from(error: E) -> Self {
        match EngineFailure::from(error.into()) {
            EngineFailure::Io(error) => LogError::Io(error),
            EngineFailure::NeedsReopen => LogError::NeedsReopen,
            EngineFailure::Corrupt(message) => LogError::Engine(message),
            EngineFailure::AlreadyOpen => LogError::AlreadyOpen,
            EngineFailure::Other(message) => LogError::Storage(message),
        }
    }
}

/// A batch ready to append: its encoded bytes and how many records it holds.
#[derive(Debug, Clone)]
pub struct EncodedBatch {
    pub bytes: Vec<u8>,
    pub count: u32,
}

/// A rejected event kept for inspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantineEntry {
    /// Position in the quarantine, increasing.
    pub id: u64,
    /// The entry as JSON: reason, index, time, redacted event.
    pub json: String,
}

/// Numbers for `/v1/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogStats {
    /// First offset still retained.
    pub start_offset: u64,
    /// Number of records appended so far (= the next offset).
    pub end_offset: u64,
    /// Size of the log file on disk.
    pub disk_bytes: u64,
}

/// The append-only log over a redb file.
#[derive(Debug)]
pub struct EventLog {
    /// Reopened after an I/O failure (see [`EventLog::recover_storage`]).
    db: ReopeningDatabase,
    path: PathBuf,
    end_offset: AtomicU64,
    start_offset: AtomicU64,
    quarantine_capacity: u64,
}

/// What [`EventLog::open`] found and repaired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Batches at the tail that failed their checksum and were removed.
    pub torn_batches_removed: u64,
}

impl EventLog {
    /// Opens (or creates) the log at `path`, verifying and repairing its tail.
    pub fn open(path: &Path, quarantine_capacity: u64) -> Result<(Self, OpenReport), LogError> {
        let db = ReopeningDatabase::open(path, 64 << 20)?;
        let mut report = OpenReport::default();
        let open = db.read_guard()?;
        let txn = open.begin_write()?;
        let (start, end) = {
            let mut batches = txn.open_table(BATCHES)?;
            let mut meta = txn.open_table(META)?;
            txn.open_table(QUARANTINE)?;
            // A torn tail: remove trailing batches that fail verification. redb's atomic
            // commits make this unexpected; the checksum catches what redb cannot (media
            // corruption, a foreign writer).
            let mut tail_end = 0;
            loop {
                let last = batches
                    .last()?
                    .map(|(key, value)| (key.value(), record::verify_batch(value.value())));
                match last {
                    None => break,
                    Some((key, Ok(header))) => {
                        tail_end = key + u64::from(header.count);
                        break;
                    }
                    // Not damage: a newer build's batch. Deleting it would drop
                    // acknowledged events.
                    Some((offset, Err(source @ BatchError::UnknownFormat(_)))) => {
                        return Err(LogError::Version { offset, source });
                    }
                    Some((key, Err(_))) => {
                        batches.remove(key)?;
                        report.torn_batches_removed += 1;
                    }
                }
            }
            let stored_next = meta.get(NEXT_OFFSET)?.map_or(0, |v| v.value());
            // After removing a torn tail, the next offset goes back to the end of what is
            // intact: those offsets were never acknowledged.
            let end = if report.torn_batches_removed > 0 {
                tail_end
            } else {
                stored_next.max(tail_end)
            };
            meta.insert(NEXT_OFFSET, end)?;
            let start = batches.first()?.map_or(end, |(key, _)| key.value());
            (start, end)
        };
        txn.commit()?;
        drop(open);
        Ok((
            Self {
                db,
                path: path.to_path_buf(),
                end_offset: AtomicU64::new(end),
                start_offset: AtomicU64::new(start),
                quarantine_capacity,
            },
            report,
        ))
    }

    /// After a storage failure: closes and reopens the file (redb refuses every operation
    /// after a failed write until then) and reads the end offset back from it. What was
    /// acknowledged is in the file; what failed left no trace. Returns an error while the
    /// file cannot be opened yet (a full disk may block redb's repair); call again later.
    pub fn recover_storage(&self) -> Result<(), LogError> {
        self.db.reopen()?;
        let db = self.db.read_guard()?;
        let txn = db.begin_read()?;
        let stored_end = txn
            .open_table(META)?
            .get(NEXT_OFFSET)?
            .map_or(0, |v| v.value());
        // Offsets never go back. A commit that reported an error may still have reached
        // the disk; the writer checks this against the group it tried to append.
        self.end_offset.fetch_max(stored_end, Ordering::AcqRel);
        Ok(())
    }

    /// Reopens the file if it is failed (redb's latch after an I/O error, or a reopen that
    /// did not succeed yet), for readers that must not wait for the writer's next commit to
    /// do it. A healthy log is left alone.
    pub fn recover_storage_if_failed(&self) -> Result<(), LogError> {
        let probe = self.db.read_guard().map_err(LogError::from).and_then(|db| {
            let txn = db.begin_read()?;
            txn.open_table(META)?;
            Ok(())
        });
        match probe {
            Err(error) if error.is_temporary() => self.recover_storage(),
            other => other,
        }
    }

    /// How many times the log was reopened after a storage failure.
    pub fn reopens(&self) -> u64 {
        self.db.reopens()
    }

    /// The number of records appended so far.
    pub fn end_offset(&self) -> u64 {
        self.end_offset.load(Ordering::Acquire)
    }

    /// The first offset still retained.
    pub fn start_offset(&self) -> u64 {
        self.start_offset.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> LogStats {
        LogStats {
            start_offset: self.start_offset.load(Ordering::Acquire),
            end_offset: self.end_offset(),
            disk_bytes: std::fs::metadata(&self.path).map_or(0, |m| m.len()),
        }
    }

    /// Appends batches (and quarantine entries) in one transaction with one fsync.
    /// Returns the offset range of each batch, in order.
    pub fn append_group(
        &self,
        batches: &[&EncodedBatch],
        quarantine: &[&str],
    ) -> Result<Vec<Range<u64>>, LogError> {
        let db = self.db.read_guard()?;
        let txn = db.begin_write()?;
        let mut ranges = Vec::with_capacity(batches.len());
        let mut next = self.end_offset();
        {
            let mut table = txn.open_table(BATCHES)?;
            for batch in batches {
                // An empty batch (a request whose events were all rejected) gets the
                // empty range at the current end, so callers can zip ranges with requests.
                if batch.count > 0 {
                    table.insert(next, batch.bytes.as_slice())?;
                }
                ranges.push(next..next + u64::from(batch.count));
                next += u64::from(batch.count);
            }
            let mut meta = txn.open_table(META)?;
            meta.insert(NEXT_OFFSET, next)?;
            if !quarantine.is_empty() {
                let mut kept = txn.open_table(QUARANTINE)?;
                let mut id = meta.get(NEXT_QUARANTINE)?.map_or(0, |v| v.value());
                for entry in quarantine {
                    kept.insert(id, *entry)?;
                    id += 1;
                }
                meta.insert(NEXT_QUARANTINE, id)?;
                let oldest_kept = id.saturating_sub(self.quarantine_capacity);
                kept.retain_in(..oldest_kept, |_, _| false)?;
            }
        }
        txn.commit()?;
        self.end_offset.store(next, Ordering::Release);
        Ok(ranges)
    }

    /// Reads up to `max_records` records starting at `from`, with their offsets.
    /// Fewer are returned at the end of the log.
    pub fn read(&self, from: u64, max_records: usize) -> Result<Vec<(u64, LogRecord)>, LogError> {
        Ok(self
            .read_timed(from, max_records)?
            .into_iter()
            .map(|(offset, _, record)| (offset, record))
            .collect())
    }

    /// Like [`EventLog::read`], with the time each record was appended (epoch ms): the start
    /// of its end-to-end latency.
    pub fn read_timed(
        &self,
        from: u64,
        max_records: usize,
    ) -> Result<Vec<(u64, i64, LogRecord)>, LogError> {
        let mut out = Vec::new();
        self.read_timed_into(from, max_records, &mut out)?;
        Ok(out)
    }

    /// Like [`EventLog::read_timed`], into `out` (cleared first): a reader that keeps its
    /// list between reads allocates it once, not a list of megabytes grown by doubling per
    /// read (see [`record::decode_batch_each`] for why large allocations cost). On an error
    /// `out` holds an unspecified part of what was read.
    pub fn read_timed_into(
        &self,
        from: u64,
        max_records: usize,
        out: &mut Vec<(u64, i64, LogRecord)>,
    ) -> Result<(), LogError> {
        out.clear();
        let start = self.start_offset.load(Ordering::Acquire);
        if from < start {
            return Err(LogError::Retained {
                requested: from,
                start,
            });
        }
        let db = self.db.read_guard()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(BATCHES)?;
        // The batch containing `from` starts at the greatest key ≤ from.
        let first_key = table
            .range(..=from)?
            .next_back()
            .transpose()?
            .map_or(from, |(key, _)| key.value());
        for entry in table.range(first_key..)? {
            let (key, value) = entry?;
            let offset = key.value();
            record::decode_batch_each(value.value(), |header, i, record| {
                let at = offset + u64::from(i);
                if at >= from && out.len() < max_records {
                    out.push((at, header.appended_at_ms, record));
                }
            })
            .map_err(|source| LogError::batch(offset, source))?;
            if out.len() >= max_records {
                break;
            }
        }
        Ok(())
    }

    /// Deletes whole batches appended before `cutoff_ms` whose records all lie below
    /// `keep_from_offset` (what the pipeline has not yet committed is never deleted).
    /// Returns the number of records deleted.
    pub fn apply_retention(&self, cutoff_ms: i64, keep_from_offset: u64) -> Result<u64, LogError> {
        let db = self.db.read_guard()?;
        let txn = db.begin_write()?;
        let mut deleted = 0;
        let mut new_start = None;
        {
            let mut table = txn.open_table(BATCHES)?;
            let mut doomed = Vec::new();
            for entry in table.iter()? {
                let (key, value) = entry?;
                let offset = key.value();
                let header = record::decode_header(value.value())
                    .map_err(|source| LogError::batch(offset, source))?;
                let batch_end = offset + u64::from(header.count);
                if header.appended_at_ms >= cutoff_ms || batch_end > keep_from_offset {
                    new_start = Some(offset);
                    break;
                }
                doomed.push(offset);
                deleted += u64::from(header.count);
            }
            for offset in doomed {
                table.remove(offset)?;
            }
        }
        txn.commit()?;
        let start = new_start.unwrap_or_else(|| self.end_offset());
        self.start_offset.store(start, Ordering::Release);
        Ok(deleted)
    }

    /// Deletes quarantine entries from the oldest on, as long as `expired` says so; stops at
    /// the first entry it keeps (entries are in the order they arrived). Returns how many
    /// were deleted.
    pub fn trim_quarantine(&self, expired: impl Fn(&str) -> bool) -> Result<u64, LogError> {
        let db = self.db.read_guard()?;
        let txn = db.begin_write()?;
        let mut doomed = Vec::new();
        {
            let mut table = txn.open_table(QUARANTINE)?;
            for entry in table.iter()? {
                let (id, json) = entry?;
                if !expired(json.value()) {
                    break;
                }
                doomed.push(id.value());
            }
            for id in &doomed {
                table.remove(*id)?;
            }
        }
        txn.commit()?;
        Ok(doomed.len() as u64)
    }

    /// The most recent quarantine entries, newest first.
    pub fn quarantine(&self, limit: usize) -> Result<Vec<QuarantineEntry>, LogError> {
        let db = self.db.read_guard()?;
        let txn = db.begin_read()?;
        let table = txn.open_table(QUARANTINE)?;
        let mut out = Vec::new();
        for entry in table.iter()?.rev().take(limit) {
            let (id, json) = entry?;
            out.push(QuarantineEntry {
                id: id.value(),
                json: json.value().to_string(),
            });
        }
        Ok(out)
    }

    /// How many entries the quarantine holds.
    pub fn quarantine_len(&self) -> Result<u64, LogError> {
        let db = self.db.read_guard()?;
        let txn = db.begin_read()?;
        Ok(txn.open_table(QUARANTINE)?.len()?)
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod version_tests;
