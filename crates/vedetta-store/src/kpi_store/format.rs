//! The value formats of the KPI store, by version.
//!
//! | what | format 1 (current) | format 0 (before issue 8) |
//! |---|---|---|
//! | store | `meta.format_version = 1` | no `format_version` entry |
//! | KPI row value | `[2u8]` + postcard [`RowV2`] (refunds, issue 13); `[1u8]` + postcard [`RowV1`] (revenue `i128`) is still read | bare postcard, revenue `i64` |
//! | spend value | `[2u8]` + `i128` micro-units + `i64` records, big-endian (25 bytes); `[1u8]` + `i128` micro-units (17 bytes) is still read | a redb `i64` |
//! | snapshot | `vedetta_core::pipeline::snapshot` header + postcard | bare postcard |
//!
//! Spend values are versioned on their own, like rows: version 2 (issue 9) adds the number
//! of spend records, which tells a spend of 0 (records summing to zero) from no spend at
//! all. A version-1 value is read as one record: it was only ever written for a row that
//! had spend records (a row whose money summed to 0 was deleted), so "at least one" is
//! what it knows, and all the API needs (`null` or not). It is rewritten as version 2 when
//! the row next changes; no migration pass.
//!
//! Each stored struct is a frozen copy of the counters as they were when its version was
//! written, converted to and from the core's [`KpiCounters`] here. Adding a counter to
//! the core does not change what old bytes mean: it is a new `RowV2` with a new version
//! byte, a conversion from `RowV1` that sets the new counter to 0, and no migration (rows
//! are upgraded as they are rewritten). `tests.rs` shows such a step on the old fixture.

use super::StoreError;
use serde::{Deserialize, Serialize};
use vedetta_core::pipeline::kpi::{KpiCounters, SpendCounters};

/// The store format this build writes (`meta.format_version`).
pub const STORE_FORMAT: i64 = 1;
/// The version byte of a KPI row value this build writes.
pub const ROW_FORMAT: u8 = 2;
/// The version byte of a KPI row before refunds (issue 13): still read, refunds 0.
pub const ROW_FORMAT_V1: u8 = 1;
/// The version byte of a spend value this build writes: micro-units and records.
pub const SPEND_FORMAT: u8 = 2;
const SPEND_VALUE_LEN: usize = 1 + 16 + 8;
/// The version byte of the spend value before issue 9: micro-units only.
pub const SPEND_FORMAT_V1: u8 = 1;
const SPEND_VALUE_V1_LEN: usize = 1 + 16;

/// A KPI row as format 1 stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowV1 {
    pub events: [i64; 6],
    pub custom_events: Vec<(String, i64)>,
    pub sessions: i64,
    pub converting_sessions: i64,
    pub conversions: i64,
    pub revenue_micros: i128,
    pub flagged: i64,
    pub duplicates: i64,
    pub late: i64,
}

/// A KPI row as version 2 stores it: [`RowV1`], then the refunds (issue 13).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowV2 {
    pub events: [i64; 6],
    pub custom_events: Vec<(String, i64)>,
    pub sessions: i64,
    pub converting_sessions: i64,
    pub conversions: i64,
    pub revenue_micros: i128,
    pub flagged: i64,
    pub duplicates: i64,
    pub late: i64,
    pub refunds: i64,
    pub refunded_micros: i128,
}

/// [`RowV2`] by reference, field for field: postcard writes a slice as it writes a `Vec`,
/// so rows are encoded without cloning their custom event names.
#[derive(Serialize)]
struct RowV2Ref<'a> {
    events: &'a [i64; 6],
    custom_events: &'a [(String, i64)],
    sessions: i64,
    converting_sessions: i64,
    conversions: i64,
    revenue_micros: i128,
    flagged: i64,
    duplicates: i64,
    late: i64,
    refunds: i64,
    refunded_micros: i128,
}

/// A KPI row as format 0 stored it (the core's counters before issue 8, revenue `i64`).
/// Read only by the migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowV0 {
    pub events: [i64; 6],
    pub custom_events: Vec<(String, i64)>,
    pub sessions: i64,
    pub converting_sessions: i64,
    pub conversions: i64,
    pub revenue_micros: i64,
    pub flagged: i64,
    pub duplicates: i64,
    pub late: i64,
}

impl From<RowV0> for RowV1 {
    fn from(v0: RowV0) -> Self {
        Self {
            events: v0.events,
            custom_events: v0.custom_events,
            sessions: v0.sessions,
            converting_sessions: v0.converting_sessions,
            conversions: v0.conversions,
            revenue_micros: i128::from(v0.revenue_micros),
            flagged: v0.flagged,
            duplicates: v0.duplicates,
            late: v0.late,
        }
    }
}

impl From<RowV1> for KpiCounters {
    /// A row written before refunds existed had none.
    fn from(v1: RowV1) -> Self {
        Self {
            events: v1.events,
            custom_events: v1.custom_events,
            sessions: v1.sessions,
            converting_sessions: v1.converting_sessions,
            conversions: v1.conversions,
            revenue_micros: v1.revenue_micros,
            flagged: v1.flagged,
            duplicates: v1.duplicates,
            late: v1.late,
            refunds: 0,
            refunded_micros: 0,
        }
    }
}

impl From<RowV2> for KpiCounters {
    fn from(v2: RowV2) -> Self {
        Self {
            events: v2.events,
            custom_events: v2.custom_events,
            sessions: v2.sessions,
            converting_sessions: v2.converting_sessions,
            conversions: v2.conversions,
            revenue_micros: v2.revenue_micros,
            flagged: v2.flagged,
            duplicates: v2.duplicates,
            late: v2.late,
            refunds: v2.refunds,
            refunded_micros: v2.refunded_micros,
        }
    }
}

fn encode_error(what: &str, error: &postcard::Error) -> StoreError {
    StoreError::Engine(format!("encoding {what}: {error}"))
}

/// A KPI row value in the current format.
pub fn encode_row_value(c: &KpiCounters) -> Result<Vec<u8>, StoreError> {
    let row = RowV2Ref {
        events: &c.events,
        custom_events: &c.custom_events,
        sessions: c.sessions,
        converting_sessions: c.converting_sessions,
        conversions: c.conversions,
        revenue_micros: c.revenue_micros,
        flagged: c.flagged,
        duplicates: c.duplicates,
        late: c.late,
        refunds: c.refunds,
        refunded_micros: c.refunded_micros,
    };
    postcard::to_extend(&row, vec![ROW_FORMAT]).map_err(|e| encode_error("a KPI row", &e))
}

/// Decodes the whole of `bytes` as a `T`, or says why not.
pub(super) fn postcard_exact<'a, T: Deserialize<'a>>(
    what: &str,
    bytes: &'a [u8],
) -> Result<T, StoreError> {
    let (value, rest) = postcard::take_from_bytes::<T>(bytes)
        .map_err(|e| StoreError::Corrupt(format!("{what} does not decode: {e}")))?;
    if !rest.is_empty() {
        return Err(StoreError::Corrupt(format!(
            "{what} has {} bytes left over",
            rest.len()
        )));
    }
    Ok(value)
}

/// A KPI row value back, whatever version this build reads. Any bytes give an answer,
/// never a panic.
pub fn decode_row_value(bytes: &[u8]) -> Result<KpiCounters, StoreError> {
    match bytes.split_first() {
        None => Err(StoreError::Corrupt("an empty KPI row value".into())),
        Some((&ROW_FORMAT, body)) => Ok(postcard_exact::<RowV2>("a KPI row", body)?.into()),
        Some((&ROW_FORMAT_V1, body)) => Ok(postcard_exact::<RowV1>("a KPI row", body)?.into()),
        Some((&found, _)) => Err(StoreError::Version {
            what: "a KPI row",
            found: i64::from(found),
            supported: i64::from(ROW_FORMAT),
        }),
    }
}

/// A spend value in the current format: micro-units, then the number of records.
pub fn encode_spend_value(spend: SpendCounters) -> [u8; SPEND_VALUE_LEN] {
    let mut out = [0; SPEND_VALUE_LEN];
    out[0] = SPEND_FORMAT;
    out[1..17].copy_from_slice(&spend.micros.to_be_bytes());
    out[17..].copy_from_slice(&spend.records.to_be_bytes());
    out
}

/// A spend value back, whatever version this build reads (a version-1 value is one
/// record). Any bytes give an answer, never a panic.
pub fn decode_spend_value(bytes: &[u8]) -> Result<SpendCounters, StoreError> {
    let wrong_length = || StoreError::Corrupt(format!("a spend value of {} bytes", bytes.len()));
    match bytes.split_first() {
        None => Err(StoreError::Corrupt("an empty spend value".into())),
        Some((&SPEND_FORMAT, body)) => {
            if bytes.len() != SPEND_VALUE_LEN {
                return Err(wrong_length());
            }
            let (micros, records) = body.split_at(16);
            Ok(SpendCounters {
                micros: i128::from_be_bytes(micros.try_into().map_err(|_| wrong_length())?),
                records: i64::from_be_bytes(records.try_into().map_err(|_| wrong_length())?),
            })
        }
        Some((&SPEND_FORMAT_V1, body)) => {
            if bytes.len() != SPEND_VALUE_V1_LEN {
                return Err(wrong_length());
            }
            Ok(SpendCounters {
                micros: i128::from_be_bytes(body.try_into().map_err(|_| wrong_length())?),
                records: 1,
            })
        }
        Some((&found, _)) => Err(StoreError::Version {
            what: "a spend value",
            found: i64::from(found),
            supported: i64::from(SPEND_FORMAT),
        }),
    }
}
