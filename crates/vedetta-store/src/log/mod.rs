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

use crate::reopen::{ReopeningDatabase, Unavailable, is_out_of_space};
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
/// asked; none of them means data that was acknowledged is gone.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The device is full. Nothing of the failed operation was stored; the log reopens
    /// itself ([`EventLog::recover_storage`]) and works again once space is freed.
    #[error("the log's disk is full: {0}")]
    StorageFull(String),
    /// Another I/O error, or redb's latch after one (`PreviousIo`): retryable after
    /// [`EventLog::recover_storage`].
    #[error("log storage I/O error: {0}")]
    Io(String),
    /// The database is being reopened after a storage failure.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// Anything else the storage engine reports (a bug or a damaged file): not retryable.
    #[error("log storage error: {0}")]
    Storage(String),
    #[error("batch at offset {offset} is corrupt: {source}")]
    Corrupt { offset: u64, source: BatchError },
    #[error("offset {requested} is no longer retained (log starts at {start})")]
    Retained { requested: u64, start: u64 },
}

impl LogError {
    /// Whether the same operation may succeed later without anyone changing the program or
    /// its files: a full disk, an I/O error, a reopen in progress.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            LogError::StorageFull(_) | LogError::Io(_) | LogError::Unavailable(_)
        )
    }

    /// Whether the device is out of space.
    pub fn is_storage_full(&self) -> bool {
        matches!(self, LogError::StorageFull(_))
    }
}

impl<E: Into<redb::Error>> From<E> for LogError {
    fn from(error: E) -> Self {
        match error.into() {
            redb::Error::Io(io) if is_out_of_space(&io) => LogError::StorageFull(io.to_string()),
            redb::Error::Io(io) => LogError::Io(io.to_string()),
            error @ (redb::Error::PreviousIo | redb::Error::DatabaseClosed) => {
                LogError::Io(error.to_string())
            }
            other => LogError::Storage(other.to_string()),
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
        let txn = db.with(|db| db.begin_write().map_err(LogError::from))?;
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

    /// After a storage failure: closes and reopens the file (redb refuses every operation
    /// after a failed write until then) and reads the end offset back from it. What was
    /// acknowledged is in the file; what failed left no trace. Returns an error while the
    /// file cannot be opened yet (a full disk may block redb's repair); call again later.
    pub fn recover_storage(&self) -> Result<(), LogError> {
        self.db.reopen()?;
        let stored_end = self.db.with(|db| {
            let txn = db.begin_read()?;
            let meta = txn.open_table(META)?;
            Ok::<_, LogError>(meta.get(NEXT_OFFSET)?.map_or(0, |v| v.value()))
        })?;
        // Offsets never go back: a failed commit never moved the end, so this is a check.
        self.end_offset.fetch_max(stored_end, Ordering::AcqRel);
        Ok(())
    }

    /// Reopens the file if it is failed (redb's latch after an I/O error, or a reopen that
    /// did not succeed yet), for readers that must not wait for the writer's next commit to
    /// do it. A healthy log is left alone.
    pub fn recover_storage_if_failed(&self) -> Result<(), LogError> {
        let probe = self.db.with(|db| {
            let txn = db.begin_read()?;
            txn.open_table(META)?;
            Ok::<_, LogError>(())
        });
        match probe {
            Err(error) if error.is_retryable() => self.recover_storage(),
            other => other,
        }
    }

    /// How many times the log was reopened after a storage failure.
    pub fn reopens(&self) -> u64 {
        self.db.reopens()
    }

    /// Appends batches (and quarantine entries) in one transaction with one fsync.
    /// Returns the offset range of each batch, in order.
    pub fn append_group(
        &self,
        batches: &[&EncodedBatch],
        quarantine: &[&str],
    ) -> Result<Vec<Range<u64>>, LogError> {
        self.db
            .with(|db| self.append_group_in(db, batches, quarantine))
    }

    fn append_group_in(
        &self,
        db: &redb::Database,
        batches: &[&EncodedBatch],
        quarantine: &[&str],
    ) -> Result<Vec<Range<u64>>, LogError> {
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
        let start = self.start_offset.load(Ordering::Acquire);
        if from < start {
            return Err(LogError::Retained {
                requested: from,
                start,
            });
        }
        self.db.with(|db| Self::read_from(db, from, max_records))
    }

    fn read_from(
        db: &redb::Database,
        from: u64,
        max_records: usize,
    ) -> Result<Vec<(u64, i64, LogRecord)>, LogError> {
        let txn = db.begin_read()?;
        let table = txn.open_table(BATCHES)?;
        let mut out = Vec::new();
        // The batch containing `from` starts at the greatest key ≤ from.
        let first_key = table
            .range(..=from)?
            .next_back()
            .transpose()?
            .map_or(from, |(key, _)| key.value());
        for entry in table.range(first_key..)? {
            let (key, value) = entry?;
            let offset = key.value();
            let (header, records) = record::decode_batch(value.value())
                .map_err(|source| LogError::Corrupt { offset, source })?;
            for (i, record) in records.into_iter().enumerate() {
                let at = offset + i as u64;
                if at >= from {
                    out.push((at, header.appended_at_ms, record));
                }
            }
            if out.len() >= max_records {
                out.truncate(max_records);
                break;
            }
        }
        Ok(out)
    }

    /// Deletes whole batches appended before `cutoff_ms` whose records all lie below
    /// `keep_from_offset` (what the pipeline has not yet committed is never deleted).
    /// Returns the number of records deleted.
    pub fn apply_retention(&self, cutoff_ms: i64, keep_from_offset: u64) -> Result<u64, LogError> {
        self.db
            .with(|db| self.apply_retention_in(db, cutoff_ms, keep_from_offset))
    }

    fn apply_retention_in(
        &self,
        db: &redb::Database,
        cutoff_ms: i64,
        keep_from_offset: u64,
    ) -> Result<u64, LogError> {
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
                    .map_err(|source| LogError::Corrupt { offset, source })?;
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
        self.db.with(|db| Self::trim_quarantine_in(db, expired))
    }

    fn trim_quarantine_in(
        db: &redb::Database,
        expired: impl Fn(&str) -> bool,
    ) -> Result<u64, LogError> {
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
        self.db.with(|db| Self::quarantine_in(db, limit))
    }

    fn quarantine_in(db: &redb::Database, limit: usize) -> Result<Vec<QuarantineEntry>, LogError> {
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
        self.db.with(|db| {
            let txn = db.begin_read()?;
            Ok(txn.open_table(QUARANTINE)?.len()?)
        })
    }
}

#[cfg(test)]
mod tests;
