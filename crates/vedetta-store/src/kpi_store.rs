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

use crate::reopen::{ReopeningDatabase, Unavailable, is_out_of_space};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;
use vedetta_core::pipeline::kpi::KpiCounters;
use vedetta_core::pipeline::windows::Granularity;

const KPIS: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("kpis");
const SPEND: TableDefinition<'_, &[u8], i64> = TableDefinition::new("spend");
const META: TableDefinition<'_, &str, i64> = TableDefinition::new("meta");
const SNAPSHOT: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("snapshot");

const PROCESSED_OFFSET: &str = "processed_offset";
const WATERMARK: &str = "watermark";
const SNAPSHOT_OFFSET: &str = "snapshot_offset";
const SEP: u8 = 0x1f;

/// Errors of the KPI store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The device is full; nothing of the failed commit was stored.
    #[error("the KPI store's disk is full: {0}")]
    StorageFull(String),
    /// Another I/O error, or redb's latch after one: retryable after
    /// [`KpiStore::recover_storage`].
    #[error("KPI store I/O error: {0}")]
    Io(String),
    /// The store is being reopened after a storage failure.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// Anything else the engine reports: not retryable.
    #[error("KPI store error: {0}")]
    Storage(String),
    #[error("a stored row does not decode: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether the same operation may succeed later without a change to the program or its
    /// files (after [`KpiStore::recover_storage`]).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::StorageFull(_) | StoreError::Io(_) | StoreError::Unavailable(_)
        )
    }

    /// Whether the device is out of space.
    pub fn is_storage_full(&self) -> bool {
        matches!(self, StoreError::StorageFull(_))
    }
}

impl<E: Into<redb::Error>> From<E> for StoreError {
    fn from(error: E) -> Self {
        match error.into() {
            redb::Error::Io(io) if is_out_of_space(&io) => StoreError::StorageFull(io.to_string()),
            redb::Error::Io(io) => StoreError::Io(io.to_string()),
            error @ (redb::Error::PreviousIo | redb::Error::DatabaseClosed) => {
                StoreError::Io(error.to_string())
            }
            other => StoreError::Storage(other.to_string()),
        }
    }
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
    pub spend: Vec<(SpendRowKey, i64)>,
    /// Offset of the next log record to process after this commit.
    pub processed_offset: u64,
    pub watermark: Option<i64>,
    /// The pipeline state as of `processed_offset`, when a snapshot is due.
    pub snapshot: Option<Vec<u8>>,
    /// Fsync this commit (and every non-durable one before it).
    pub durable: bool,
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
    db: ReopeningDatabase,
}

fn encode_row_key(key: &RowKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + key.channel.len() + key.campaign.len() + 16);
    out.push(key.granularity.code());
    out.extend_from_slice(&(key.window_start as u64).to_be_bytes());
    for (i, part) in [&key.channel, &key.campaign, &key.device, &key.region]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            out.push(SEP);
        }
        out.extend_from_slice(part.as_bytes());
    }
    out
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

fn encode_spend_key(key: &SpendRowKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + key.channel.len() + key.campaign.len());
    out.push(key.granularity.code());
    out.extend_from_slice(&(key.window_start as u64).to_be_bytes());
    out.extend_from_slice(key.channel.as_bytes());
    out.push(SEP);
    out.extend_from_slice(key.campaign.as_bytes());
    out
}

/// A key's window start and its dimension values, borrowed.
fn split_key(bytes: &[u8]) -> Result<(i64, Vec<&str>), StoreError> {
    let corrupt = || StoreError::Corrupt(format!("key of {} bytes", bytes.len()));
    if bytes.len() < 9 || Granularity::from_code(bytes[0]).is_none() {
        return Err(corrupt());
    }
    let mut start = [0u8; 8];
    start.copy_from_slice(&bytes[1..9]);
    let parts = bytes[9..]
        .split(|&b| b == SEP)
        .map(|part| std::str::from_utf8(part).map_err(|_| corrupt()))
        .collect::<Result<_, _>>()?;
    Ok((u64::from_be_bytes(start) as i64, parts))
}

fn range_bounds(granularity: Granularity, from: i64, to: i64) -> (Vec<u8>, Vec<u8>) {
    let mut low = vec![granularity.code()];
    low.extend_from_slice(&(from.max(0) as u64).to_be_bytes());
    let mut high = vec![granularity.code()];
    high.extend_from_slice(&(to.max(0) as u64).to_be_bytes());
    (low, high)
}

impl KpiStore {
    /// Opens (or creates) the store and reads where processing stands.
    pub fn open(path: &Path) -> Result<(Self, Progress), StoreError> {
        let db = ReopeningDatabase::open(path, 128 << 20)?;
        db.with(|db| {
            let txn = db.begin_write()?;
            txn.open_table(KPIS)?;
            txn.open_table(SPEND)?;
            txn.open_table(META)?;
            txn.open_table(SNAPSHOT)?;
            txn.commit()?;
            Ok::<_, StoreError>(())
        })?;
        let store = Self { db };
        let progress = store.progress()?;
        Ok((store, progress))
    }

    /// After a storage failure: closes and reopens the file (redb refuses every operation
    /// after a failed write until then). The store is then at its last durable commit; the
    /// processor rebuilds its state from there. Fails while the file cannot be opened yet.
    pub fn recover_storage(&self) -> Result<(), StoreError> {
        self.db.reopen()?;
        Ok(())
    }

    /// Where processing stands.
    pub fn progress(&self) -> Result<Progress, StoreError> {
        self.db.with(Self::progress_in)
    }

    fn progress_in(db: &Database) -> Result<Progress, StoreError> {
        let txn = db.begin_read()?;
        let meta = txn.open_table(META)?;
        let get = |key: &str| -> Result<Option<i64>, StoreError> {
            Ok(meta.get(key)?.map(|v| v.value()))
        };
        let processed_offset = get(PROCESSED_OFFSET)?.unwrap_or(0) as u64;
        let watermark = get(WATERMARK)?;
        let snapshot = match get(SNAPSHOT_OFFSET)? {
            Some(offset) => {
                let table = txn.open_table(SNAPSHOT)?;
                table
                    .get(0)?
                    .map(|bytes| (offset as u64, bytes.value().to_vec()))
            }
            None => None,
        };
        Ok(Progress {
            processed_offset,
            watermark,
            snapshot,
        })
    }

    /// Applies one commit atomically: row changes, spend changes, offset, snapshot.
    pub fn commit(&self, commit: &Commit) -> Result<(), StoreError> {
        self.db.with(|db| Self::commit_in(db, commit))
    }

    fn commit_in(db: &Database, commit: &Commit) -> Result<(), StoreError> {
        let mut txn = db.begin_write()?;
        txn.set_durability(if commit.durable {
            redb::Durability::Immediate
        } else {
            redb::Durability::None
        })?;
        {
            let mut rows = txn.open_table(KPIS)?;
            for (key, change) in &commit.rows {
                let key = encode_row_key(key);
                let mut counters = match rows.get(key.as_slice())? {
                    Some(bytes) => postcard::from_bytes::<KpiCounters>(bytes.value())
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    None => KpiCounters::default(),
                };
                counters.add(change);
                if counters.is_zero() {
                    rows.remove(key.as_slice())?;
                } else {
                    let bytes = postcard::to_allocvec(&counters)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    rows.insert(key.as_slice(), bytes.as_slice())?;
                }
            }
            let mut spend = txn.open_table(SPEND)?;
            for (key, micros) in &commit.spend {
                let key = encode_spend_key(key);
                let total = spend.get(key.as_slice())?.map_or(0, |v| v.value()) + micros;
                if total == 0 {
                    spend.remove(key.as_slice())?;
                } else {
                    spend.insert(key.as_slice(), total)?;
                }
            }
            let mut meta = txn.open_table(META)?;
            meta.insert(PROCESSED_OFFSET, commit.processed_offset as i64)?;
            match commit.watermark {
                Some(w) => meta.insert(WATERMARK, w)?,
                None => meta.remove(WATERMARK)?,
            };
            if let Some(snapshot) = &commit.snapshot {
                let mut table = txn.open_table(SNAPSHOT)?;
                table.insert(0, snapshot.as_slice())?;
                meta.insert(SNAPSHOT_OFFSET, commit.processed_offset as i64)?;
            }
        }
        txn.commit()?;
        Ok(())
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
        let guard = self.db.read_guard()?;
        let txn = guard.begin_read()?;
        let table = txn.open_table(KPIS)?;
        let (low, high) = range_bounds(granularity, from, to);
        for entry in table.range(low.as_slice()..high.as_slice())? {
            let (key, value) = entry?;
            let counters = postcard::from_bytes::<KpiCounters>(value.value())
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let key = key.value();
            let (window_start, parts) = split_key(key)?;
            let [channel, campaign, device, region] = parts[..] else {
                return Err(StoreError::Corrupt(format!(
                    "row key with {} parts",
                    parts.len()
                )));
            };
            visit(
                &RowView {
                    window_start,
                    channel,
                    campaign,
                    device,
                    region,
                },
                &counters,
            );
        }
        Ok(())
    }

    /// Visits the spend rows of a granularity whose window starts in `[from, to)`:
    /// (window start, channel, campaign, micro-units).
    pub fn scan_spend(
        &self,
        granularity: Granularity,
        from: i64,
        to: i64,
        mut visit: impl FnMut(i64, &str, &str, i64),
    ) -> Result<(), StoreError> {
        let guard = self.db.read_guard()?;
        let txn = guard.begin_read()?;
        let table = txn.open_table(SPEND)?;
        let (low, high) = range_bounds(granularity, from, to);
        for entry in table.range(low.as_slice()..high.as_slice())? {
            let (key, value) = entry?;
            let key = key.value();
            let (window_start, parts) = split_key(key)?;
            let [channel, campaign] = parts[..] else {
                return Err(StoreError::Corrupt(format!(
                    "spend key with {} parts",
                    parts.len()
                )));
            };
            visit(window_start, channel, campaign, value.value());
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

    /// Spend rows of a granularity whose window starts in `[from, to)`, in micro-units.
    pub fn spend(
        &self,
        granularity: Granularity,
        from: i64,
        to: i64,
    ) -> Result<Vec<(SpendRowKey, i64)>, StoreError> {
        let mut out = Vec::new();
        self.scan_spend(
            granularity,
            from,
            to,
            |window_start, channel, campaign, micros| {
                out.push((
                    SpendRowKey {
                        granularity,
                        window_start,
                        channel: channel.to_string(),
                        campaign: campaign.to_string(),
                    },
                    micros,
                ));
            },
        )?;
        Ok(out)
    }

    /// Deletes every row, the snapshot and the progress (before a replay).
    pub fn clear(&self) -> Result<(), StoreError> {
        let guard = self.db.read_guard()?;
        let txn = guard.begin_write()?;
        txn.delete_table(KPIS)?;
        txn.delete_table(SPEND)?;
        txn.delete_table(META)?;
        txn.delete_table(SNAPSHOT)?;
        txn.open_table(KPIS)?;
        txn.open_table(SPEND)?;
        txn.open_table(META)?;
        txn.open_table(SNAPSHOT)?;
        txn.commit()?;
        Ok(())
    }
}

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

    #[test]
    fn commits_add_up_and_zero_rows_disappear() {
        let dir = tempfile::tempdir().unwrap();
        let (store, progress) = KpiStore::open(&dir.path().join("kpi.redb")).unwrap();
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
                    1_500_000,
                )],
                processed_offset: 9,
                watermark: Some(55),
                snapshot: Some(vec![1, 2, 3]),
                durable: true,
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
            1_500_000
        );
        drop(store);
        let (_, progress) = KpiStore::open(&dir.path().join("kpi.redb")).unwrap();
        assert_eq!(progress.processed_offset, 10);
        assert_eq!(progress.watermark, None);
        assert_eq!(progress.snapshot, Some((9, vec![1, 2, 3])));
    }
}
