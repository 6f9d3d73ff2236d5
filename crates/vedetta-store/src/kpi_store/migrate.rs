//! Opening a store of any format this build knows, upgrading it to the current one.
//!
//! A store without `meta.format_version` was written before formats were versioned
//! (format 0, see `format.rs`). It is rewritten into format 1 in **one** write transaction,
//! so a crash during the migration leaves the old store as it was, and the next start
//! migrates again. A store of a newer format than this build knows is refused: reading it
//! would misread it.

use super::format::{self, RowV0, STORE_FORMAT};
use super::keys::{encode_row_key, encode_spend_key};
use super::{CONFIG, FORMAT_VERSION, KPIS, META, RowKey, SNAPSHOT, SPEND, SpendRowKey, StoreError};
use redb::{
    Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle, WriteTransaction,
};
use vedetta_core::pipeline::snapshot;
use vedetta_core::pipeline::windows::Granularity;

/// Format 0's spend table: `i64` values under 0x1f-joined keys.
/// The snapshot format whose body format-0 stores kept without a header.
const SNAPSHOT_FORMAT_0_BODY: u8 = 1;
const SPEND_V0: TableDefinition<'_, &[u8], i64> = TableDefinition::new("spend");
/// Format 0's key separator.
const SEP_V0: u8 = 0x1f;

/// What opening the store did to its format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    pub from_format: i64,
    pub to_format: i64,
    pub rows: u64,
    pub spend_rows: u64,
    pub snapshot: bool,
}

/// Brings the store to the current format; `Some` when it had to be rewritten.
pub(super) fn open_current(db: &Database) -> Result<Option<MigrationReport>, StoreError> {
    let (has_meta, version) = {
        let txn = db.begin_read()?;
        let has_meta = txn.list_tables()?.any(|t| t.name() == META.name());
        let version = if has_meta {
            let meta = txn.open_table(META)?;
            meta.get(FORMAT_VERSION)?.map(|v| v.value())
        } else {
            None
        };
        (has_meta, version)
    };
    match (has_meta, version) {
        (false, _) => {
            create_current(db)?;
            Ok(None)
        }
        (true, None) => migrate_v0(db).map(Some),
        (true, Some(STORE_FORMAT)) => Ok(None),
        (true, Some(found)) => Err(StoreError::Version {
            what: "the KPI store",
            found,
            supported: STORE_FORMAT,
        }),
    }
}

/// Creates the tables of the current format in an empty file.
fn create_current(db: &Database) -> Result<(), StoreError> {
    let txn = db.begin_write()?;
    create_tables(&txn)?;
    txn.commit()?;
    Ok(())
}

/// Creates the tables of the current format (those missing) and records the format.
pub(super) fn create_tables(txn: &WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(KPIS)?;
    txn.open_table(SPEND)?;
    txn.open_table(SNAPSHOT)?;
    txn.open_table(CONFIG)?;
    txn.open_table(META)?.insert(FORMAT_VERSION, STORE_FORMAT)?;
    Ok(())
}

/// Splits a format-0 key into window start and exactly `N` parts. A key with more parts
/// held U+001F in a dimension: format 0 cannot say where its parts end.
fn split_v0<const N: usize>(bytes: &[u8]) -> Result<(Granularity, i64, [String; N]), StoreError> {
    let replay = "format 0 cannot say where its dimensions end; run `vedetta replay` to \
                  rebuild the KPI store from the log";
    let corrupt = |why: String| StoreError::Corrupt(format!("a format-0 key {why}: {replay}"));
    if bytes.len() < 9 {
        return Err(corrupt(format!("of {} bytes", bytes.len())));
    }
    let granularity = Granularity::from_code(bytes[0])
        .ok_or_else(|| corrupt(format!("with granularity {}", bytes[0])))?;
    let mut start = [0u8; 8];
    start.copy_from_slice(&bytes[1..9]);
    let parts: Vec<&[u8]> = bytes[9..].split(|&b| b == SEP_V0).collect();
    if parts.len() != N {
        return Err(corrupt(format!(
            "with {} parts instead of {N} (a dimension held U+001F)",
            parts.len()
        )));
    }
    let mut out: [String; N] = std::array::from_fn(|_| String::new());
    for (slot, part) in out.iter_mut().zip(parts) {
        *slot = String::from_utf8(part.to_vec())
            .map_err(|_| corrupt("that is not UTF-8".to_string()))?;
    }
    Ok((granularity, u64::from_be_bytes(start) as i64, out))
}

fn migrate_v0(db: &Database) -> Result<MigrationReport, StoreError> {
    let mut report = MigrationReport {
        from_format: 0,
        to_format: STORE_FORMAT,
        rows: 0,
        spend_rows: 0,
        snapshot: false,
    };
    let txn = db.begin_write()?;
    let mut rows = Vec::new();
    for entry in txn.open_table(KPIS)?.iter()? {
        let (key, value) = entry?;
        let (granularity, window_start, [channel, campaign, device, region]) =
            split_v0::<4>(key.value())?;
        let counters = format::postcard_exact::<RowV0>("a format-0 KPI row", value.value())?;
        let key = RowKey {
            granularity,
            window_start,
            channel,
            campaign,
            device,
            region,
        };
        let counters: format::RowV1 = counters.into();
        rows.push((
            encode_row_key(&key)?,
            format::encode_row_value(&counters.into())?,
        ));
    }
    let mut spend = Vec::new();
    for entry in txn.open_table(SPEND_V0)?.iter()? {
        let (key, value) = entry?;
        let (granularity, window_start, [channel, campaign]) = split_v0::<2>(key.value())?;
        let key = SpendRowKey {
            granularity,
            window_start,
            channel,
            campaign,
        };
        spend.push((
            encode_spend_key(&key)?,
            format::encode_spend_value(i128::from(value.value())),
        ));
    }
    txn.delete_table(KPIS)?;
    txn.delete_table(SPEND_V0)?;
    {
        let mut table = txn.open_table(KPIS)?;
        for (key, value) in &rows {
            table.insert(key.as_slice(), value.as_slice())?;
        }
        let mut table = txn.open_table(SPEND)?;
        for (key, value) in &spend {
            table.insert(key.as_slice(), value.as_slice())?;
        }
        report.rows = rows.len() as u64;
        report.spend_rows = spend.len() as u64;

        // Format 0's snapshot is snapshot format 1's body without the header. This build
        // reads snapshot format 2 (attribution), so it keeps the old one as it was, headed:
        // the settings check then asks for `vedetta replay`, which rebuilds it.
        let mut table = txn.open_table(SNAPSHOT)?;
        let old = table.get(0)?.map(|v| v.value().to_vec());
        if let Some(body) = old {
            let mut bytes = snapshot::SNAPSHOT_MAGIC.to_vec();
            bytes.push(SNAPSHOT_FORMAT_0_BODY);
            bytes.extend_from_slice(&body);
            table.insert(0, bytes.as_slice())?;
            report.snapshot = true;
        }
    }
    create_tables(&txn)?;
    txn.commit()?;
    Ok(report)
}
