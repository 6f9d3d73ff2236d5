//! `GET /v1/kpis`: windowed KPIs, grouped and filtered by dimension.
//!
//! `?granularity=1m|1h|1d&from=RFC3339&to=RFC3339&group_by=channel,device&channel=social`
//!
//! Rows are the windows whose start lies in `[from, to)`, summed over the dimensions not
//! grouped by; ratios are computed from the sums, `null` when the denominator is zero.
//! Spend has only channel and campaign: when the query groups or filters by device or
//! region, `spend` and `cpa` are `null`. They are `null` too for a row (or the totals) that
//! no spend record contributes to: unknown spend is not zero spend; records that sum to 0
//! are a spend of `0` (see `docs/semantics.md`, "KPIs of a row").
//!
//! Every answer names the attribution model and lookback its numbers were computed under
//! (`attribution`), from the pipeline's configuration.

use super::{ApiError, AppState};
use axum::Json;
use axum::extract::{Query, State};
use serde::Serialize;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use vedetta_core::enrich::Region;
use vedetta_core::pipeline::AttributionModel;
use vedetta_core::pipeline::kpi::{KpiCounters, SpendCounters};
use vedetta_core::pipeline::windows::{Granularity, WindowCalendar};
use vedetta_core::time::EventTime;

/// A dimension a query can group or filter by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dimension {
    Channel,
    Campaign,
    Device,
    Region,
}

impl Dimension {
    pub const ALL: [Dimension; 4] = [
        Dimension::Channel,
        Dimension::Campaign,
        Dimension::Device,
        Dimension::Region,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Dimension::Channel => "channel",
            Dimension::Campaign => "campaign",
            Dimension::Device => "device",
            Dimension::Region => "region",
        }
    }

    pub fn parse(text: &str) -> Option<Dimension> {
        Dimension::ALL.into_iter().find(|d| d.name() == text)
    }

    fn has_spend(self) -> bool {
        matches!(self, Dimension::Channel | Dimension::Campaign)
    }
}

/// Longest query string the query endpoints read (`/v1/kpis`, `/v1/stream`): a view of a
/// few hundred campaigns by name fits; past it the answer is 414. (A whole request target
/// over 64 KiB never reaches a handler: the HTTP layer answers 414 itself.)
pub const MAX_QUERY_BYTES: usize = 32 * 1024;
/// Most values one filter may list (`campaign=a,b,…`): every stored row is compared with
/// each, so the cost of a scan is bounded by it.
pub const MAX_FILTER_VALUES: usize = 1_000;
/// Most rows one answer may hold (windows × groups). Past it the query is refused with a
/// 400 saying how to narrow it: the rows are built in memory, then as JSON (about 0.5 KB
/// each), and `granularity=1m` over a long range grouped by every dimension would be every
/// stored row. 100,000 covers a month by day or two days by hour for a few thousand
/// campaigns; `rollup=range` gives one row per group whatever the range.
pub const MAX_ANSWER_ROWS: usize = 100_000;
/// The earliest and latest instants a `from`/`to` can name: 0000-01-01T00:00:00Z and
/// 9999-12-30T00:00:00Z, inside what jiff (and so `EventTime`) can show. Times beyond them
/// (an epoch millisecond count near `i64::MIN`, the last day of year 9999) are taken as the
/// bound: no window lies outside it (intake takes nothing before 2000 or in the future), so
/// the answer is the same, and arithmetic on them cannot overflow.
pub const TIME_MIN_MS: i64 = -62_167_219_200_000;
pub const TIME_MAX_MS: i64 = 253_402_128_000_000;
/// The device values a filter may name (the dimension's values, `docs/semantics.md`).
pub const DEVICE_VALUES: [&str; 5] = ["mobile", "tablet", "desktop", "other", "unknown"];
/// The parameters of `/v1/kpis` (and of a `/v1/stream` view).
pub const PARAMETERS: [&str; 10] = [
    "granularity",
    "from",
    "to",
    "last",
    "group_by",
    "rollup",
    "channel",
    "campaign",
    "device",
    "region",
];

/// The decoded parameters of a query string, each given at most once. A repeated parameter
/// is refused rather than silently resolved (which one would win?), and so is a query
/// string longer than [`MAX_QUERY_BYTES`].
pub fn query_params(uri: &axum::http::Uri) -> Result<HashMap<String, String>, ApiError> {
    let query = uri.query().unwrap_or_default();
    if query.len() > MAX_QUERY_BYTES {
        return Err(ApiError::UriTooLong(format!(
            "query string of {} bytes exceeds the limit of {MAX_QUERY_BYTES} bytes",
            query.len()
        )));
    }
    let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map_err(|e| ApiError::BadRequest(format!("query string: {}", e.body_text())))?;
    let mut params = HashMap::with_capacity(pairs.len());
    for (name, value) in pairs {
        match params.entry(name) {
            Entry::Occupied(entry) => {
                return Err(ApiError::BadRequest(format!(
                    "{}: given more than once; give each parameter once (lists are \
                     comma-separated, e.g. group_by=channel,device)",
                    shown_name(entry.key())
                )));
            }
            Entry::Vacant(entry) => {
                entry.insert(value);
            }
        }
    }
    Ok(params)
}

/// A parameter name as an error message shows it: as is when it is a plain word, else
/// quoted, escaped and shortened (it came from the client).
pub fn shown_name(name: &str) -> String {
    if !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        name.to_string()
    } else {
        shown_value(name)
    }
}

/// A client's value in an error message: quoted with control characters escaped, at most
/// 64 characters.
pub fn shown_value(value: &str) -> String {
    let cut: String = value.chars().take(64).collect();
    if cut.len() < value.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

/// A validated query.
#[derive(Debug, Clone)]
pub struct KpiQuery {
    pub granularity: Granularity,
    /// Rows are the windows starting in `[from, to)`; both within
    /// [`TIME_MIN_MS`]..=[`TIME_MAX_MS`].
    pub from: i64,
    pub to: i64,
    pub group_by: Vec<Dimension>,
    /// Accepted values per filtered dimension.
    pub filters: BTreeMap<Dimension, Vec<String>>,
    /// `rollup=range`: one row per group for the whole range instead of one per window.
    pub rollup_range: bool,
}

impl KpiQuery {
    /// Parses query parameters, naming the one that is wrong.
    ///
    /// The range: `last=SPAN` is every window that overlaps `[now − SPAN, now]`, so the
    /// first window may start before `now − SPAN` and the last is the current one, still
    /// filling: the answer covers the whole span it names. `from`/`to` are instants:
    /// the windows that start in `[from, to)`; `from` must be before `to`. A missing `to` is
    /// the end of the current window; a missing `from` is the default span before `to`.
    /// Without any of them, the default span (1m: 60m, 1h: 48h, 1d: 31d) ending now.
    pub fn parse(
        params: &HashMap<String, String>,
        now_ms: i64,
        calendar: &WindowCalendar,
    ) -> Result<Self, ApiError> {
        let bad = |message: String| ApiError::BadRequest(message);
        for name in params.keys() {
            if !PARAMETERS.contains(&name.as_str()) && name != "access_token" {
                return Err(bad(format!(
                    "{}: unknown parameter; use {}",
                    shown_name(name),
                    PARAMETERS.join(", ")
                )));
            }
        }
        let granularity = match params.get("granularity") {
            None => Granularity::Hour,
            Some(text) => Granularity::parse(text).ok_or_else(|| {
                bad(format!(
                    "granularity: expected 1m, 1h or 1d, got {}",
                    shown_value(text)
                ))
            })?,
        };
        let time = |name: &str| -> Result<Option<i64>, ApiError> {
            params
                .get(name)
                .map(|text| {
                    parse_instant(text).ok_or_else(|| {
                        bad(format!(
                            "{name}: expected an RFC 3339 timestamp or epoch milliseconds, got {}",
                            shown_value(text)
                        ))
                    })
                })
                .transpose()
        };
        let last = params
            .get("last")
            .map(|text| {
                parse_span(text).ok_or_else(|| {
                    bad(format!(
                        "last: expected a span such as 90s, 60m, 24h or 30d, got {}",
                        shown_value(text)
                    ))
                })
            })
            .transpose()?;
        if last.is_some() && (params.contains_key("from") || params.contains_key("to")) {
            return Err(bad("last: give either last or from/to, not both".into()));
        }
        let default_span = match granularity {
            Granularity::Minute => 3_600_000,
            Granularity::Hour => 48 * 3_600_000,
            Granularity::Day => 31 * 86_400_000,
        };
        let mut calendar = calendar.clone();
        let mut window_of =
            |ms: i64| calendar.window(granularity, ms.clamp(TIME_MIN_MS, TIME_MAX_MS));
        let (from, to) = match (time("from")?, time("to")?) {
            (None, None) => {
                let span = last.unwrap_or(default_span);
                let current = window_of(now_ms);
                let first = window_of(now_ms.saturating_sub(span));
                (first.start, current.end)
            }
            (from, to) => {
                let to = to.unwrap_or_else(|| window_of(now_ms).end);
                let from = from.unwrap_or_else(|| window_of(to.saturating_sub(default_span)).start);
                (from, to)
            }
        };
        let (from, to) = (
            from.clamp(TIME_MIN_MS, TIME_MAX_MS),
            to.clamp(TIME_MIN_MS, TIME_MAX_MS),
        );
        if from >= to {
            return Err(bad("from: must be before to".into()));
        }
        let mut group_by = Vec::new();
        if let Some(list) = params.get("group_by").filter(|list| !list.is_empty()) {
            for name in list.split(',') {
                let dimension = Dimension::parse(name).ok_or_else(|| {
                    bad(format!(
                        "group_by: unknown dimension {}; use channel, campaign, device, region \
                         (comma-separated)",
                        shown_value(name)
                    ))
                })?;
                if !group_by.contains(&dimension) {
                    group_by.push(dimension);
                }
            }
        }
        let mut filters = BTreeMap::new();
        for dimension in Dimension::ALL {
            let Some(list) = params.get(dimension.name()) else {
                continue;
            };
            let values = split_filter_values(list);
            if values.len() > MAX_FILTER_VALUES {
                return Err(bad(format!(
                    "{}: {} values; at most {MAX_FILTER_VALUES} are accepted",
                    dimension.name(),
                    values.len()
                )));
            }
            let values = values
                .iter()
                .map(|v| {
                    let value = normalize_filter(dimension, v.trim());
                    check_filter_value(dimension, &value, v)?;
                    Ok(value)
                })
                .collect::<Result<Vec<_>, ApiError>>()?;
            filters.insert(dimension, values);
        }
        let rollup_range = match params.get("rollup").map(String::as_str) {
            None | Some("window") => false,
            Some("range") => true,
            Some(other) => {
                return Err(bad(format!(
                    "rollup: expected window (one row per window) or range (one row per \
                     group for the whole range), got {}",
                    shown_value(other)
                )));
            }
        };
        Ok(Self {
            granularity,
            from,
            to,
            group_by,
            filters,
            rollup_range,
        })
    }

    /// Where a stored row goes in the answer: its window (or the range, when rolled up) and
    /// the values of the grouped dimensions; `None` when the filters exclude it.
    fn slot<'v>(
        &self,
        window_start: i64,
        value_of: impl Fn(Dimension) -> &'v str,
    ) -> Option<(i64, Vec<String>)> {
        let accepted = self
            .filters
            .iter()
            .all(|(d, values)| values.iter().any(|v| v == value_of(*d)));
        accepted.then(|| {
            let window = if self.rollup_range {
                self.from
            } else {
                window_start
            };
            let group = self
                .group_by
                .iter()
                .map(|d| value_of(*d).to_string())
                .collect();
            (window, group)
        })
    }

    /// Whether spend is defined for this query (only channel and campaign involved).
    pub fn spend_defined(&self) -> bool {
        self.group_by.iter().all(|d| d.has_spend()) && self.filters.keys().all(|d| d.has_spend())
    }
}

/// An instant: integer epoch milliseconds (any `i64`, clamped to the supported range) or
/// an RFC 3339 timestamp with an offset. A timestamp jiff cannot hold (the last hours of
/// year 9999 with a negative offset) is computed by hand and clamped the same way.
fn parse_instant(text: &str) -> Option<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Some(ms.clamp(TIME_MIN_MS, TIME_MAX_MS));
    }
    if let Ok(ts) = text.parse::<jiff::Timestamp>() {
        return Some(ts.as_millisecond().clamp(TIME_MIN_MS, TIME_MAX_MS));
    }
    let pieces = jiff::fmt::temporal::Pieces::parse(text).ok()?;
    let time = pieces.time()?;
    let offset = pieces.to_numeric_offset()?;
    let days = i64::from(
        jiff::civil::date(1970, 1, 1)
            .until(pieces.date())
            .ok()?
            .get_days(),
    );
    let ms = days * 86_400_000
        + i64::from(time.hour()) * 3_600_000
        + i64::from(time.minute()) * 60_000
        + i64::from(time.second()) * 1_000
        + i64::from(time.millisecond())
        - i64::from(offset.seconds()) * 1_000;
    Some(ms.clamp(TIME_MIN_MS, TIME_MAX_MS))
}

/// `90s`, `60m`, `24h`, `30d` → milliseconds: a positive whole number and a unit. A number
/// too large for any stored window saturates (the span then reaches back to the start of
/// the supported range).
fn parse_span(text: &str) -> Option<i64> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit())?);
    if number.is_empty() || number.bytes().all(|b| b == b'0') {
        return None;
    }
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    // All digits: a parse failure can only be an overflow.
    let n: i64 = number.parse().unwrap_or(i64::MAX);
    Some(n.saturating_mul(unit_ms))
}

/// A whole-number query parameter from 0 to `max` (`default` when absent); the refusal
/// names it. Removes it from `params`, so that what is left can be refused as unknown.
pub fn number_param(
    params: &mut HashMap<String, String>,
    name: &str,
    default: u64,
    max: u64,
) -> Result<u64, ApiError> {
    match params.remove(name) {
        None => Ok(default),
        Some(text) => text
            .parse::<u64>()
            .ok()
            .filter(|n| *n <= max)
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "{name}: expected a whole number from 0 to {max}, got {}",
                    shown_value(&text)
                ))
            }),
    }
}

/// Refuses any parameter left but `access_token`, naming it and the ones this endpoint
/// takes.
pub fn refuse_unknown_params(
    params: &HashMap<String, String>,
    known: &str,
) -> Result<(), ApiError> {
    match params.keys().find(|name| *name != "access_token") {
        Some(name) => Err(ApiError::BadRequest(format!(
            "{}: unknown parameter; use {known}",
            shown_name(name)
        ))),
        None => Ok(()),
    }
}

/// Refuses a filter value that no row can have, for the dimensions whose values are a
/// closed set (device classes, regions): a typo must not look like "no data".
/// Channels and campaigns are free text: an unknown one simply matches nothing.
fn check_filter_value(dimension: Dimension, normalized: &str, sent: &str) -> Result<(), ApiError> {
    let known = match dimension {
        Dimension::Channel | Dimension::Campaign => true,
        Dimension::Device => DEVICE_VALUES.contains(&normalized),
        Dimension::Region => {
            normalized == Region::UNKNOWN.code() || Region::from_text(normalized).is_some()
        }
    };
    if known {
        return Ok(());
    }
    let hint = match dimension {
        Dimension::Device => DEVICE_VALUES.join(", "),
        _ => "an ISO 3166-2:IT code (IT-25), a region's name (Lombardia, Lombardy) or unknown"
            .to_string(),
    };
    Err(ApiError::BadRequest(format!(
        "{}: unknown value {}; use {hint}",
        dimension.name(),
        shown_value(sent)
    )))
}

/// A filter's values: separated by commas; `\,` is a comma inside a value and `\\` a
/// backslash (campaign names from ad platforms do contain commas).
fn split_filter_values(text: &str) -> Vec<String> {
    let mut values = vec![String::new()];
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(escaped @ (',' | '\\')) => push_char(&mut values, escaped),
                Some(other) => {
                    push_char(&mut values, '\\');
                    push_char(&mut values, other);
                }
                None => push_char(&mut values, '\\'),
            },
            ',' => values.push(String::new()),
            c => push_char(&mut values, c),
        }
    }
    values
}

fn push_char(values: &mut [String], c: char) {
    if let Some(last) = values.last_mut() {
        last.push(c);
    }
}

/// Filters compare with stored values: channels are lower case, regions are codes.
fn normalize_filter(dimension: Dimension, value: &str) -> String {
    match dimension {
        // The one channel spelling of events and spend (`SOCIETÀ` filters `società`).
        Dimension::Channel => vedetta_core::enrich::normalize_channel(value).into_owned(),
        Dimension::Device => value.to_ascii_lowercase(),
        Dimension::Region => {
            Region::from_text(value).map_or_else(|| value.to_string(), |r| r.code().to_string())
        }
        Dimension::Campaign => value.to_string(),
    }
}

/// KPIs of a row or of the totals, as the API returns them. Money in the reporting currency.
#[derive(Debug, Serialize, PartialEq, utoipa::ToSchema)]
pub struct KpiValues {
    pub sessions: i64,
    pub converting_sessions: i64,
    pub conversion_rate: Option<f64>,
    pub conversions: i64,
    /// Revenue of the clean conversions, net of their refunds.
    pub revenue: f64,
    pub aov: Option<f64>,
    /// Refunds of these conversions (docs/semantics.md, "Refunds"): counted in the
    /// conversion's own window and dimensions, whenever they came.
    pub refunds: i64,
    /// What those refunds gave back (already taken off `revenue`).
    pub refunded: f64,
    /// `null` when no spend record contributes (unknown spend, as for organic or direct
    /// traffic) or when the query groups or filters by device or region (spend has
    /// neither); `0` when spend records exist and sum to zero.
    pub spend: Option<f64>,
    /// `spend / conversions`: `null` when `spend` is `null` or there are no conversions.
    pub cpa: Option<f64>,
    pub flagged: i64,
    pub duplicates: i64,
    pub late: i64,
    pub events: BTreeMap<String, i64>,
}

fn ratio(numerator: f64, denominator: i64) -> Option<f64> {
    (denominator != 0).then(|| numerator / denominator as f64)
}

/// Micro-units (an exact `i128` sum) as units of the reporting currency. JSON numbers are
/// doubles to most clients: exact to the micro-unit up to 2^53 micro-units (9 billion
/// units), within one part in 10^16 past that, and never wrapped.
fn units(micros: i128) -> f64 {
    micros as f64 / 1e6
}

impl KpiValues {
    /// `spend`: `None` when the query cannot have spend (device or region involved); else
    /// the spend rows summed, which give `null` when no record contributed.
    pub fn from_counters(c: &KpiCounters, spend: Option<SpendCounters>) -> Self {
        let revenue = units(c.revenue_micros);
        // A sum with no records (and so no money) is no spend row at all: unknown.
        let spend = spend.filter(|s| !s.is_zero()).map(|s| units(s.micros));
        Self {
            sessions: c.sessions,
            converting_sessions: c.converting_sessions,
            conversion_rate: ratio(c.converting_sessions as f64, c.sessions),
            conversions: c.conversions,
            revenue,
            aov: ratio(revenue, c.conversions),
            refunds: c.refunds,
            refunded: units(c.refunded_micros),
            spend,
            cpa: spend.and_then(|s| ratio(s, c.conversions)),
            flagged: c.flagged,
            duplicates: c.duplicates,
            late: c.late,
            events: c
                .events_by_type()
                .map(|(name, n)| (name.to_string(), n))
                .collect(),
        }
    }
}

/// One row of the answer: a window and the values of the grouped dimensions (`channel`,
/// `campaign`, `device`, `region` and `region_name`, as grouped), then the KPIs.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KpiRow {
    /// RFC 3339, UTC.
    pub window_start: String,
    /// RFC 3339, UTC (exclusive).
    pub window_end: String,
    #[serde(flatten)]
    #[schema(additional_properties)]
    pub dimensions: BTreeMap<String, String>,
    #[serde(flatten)]
    pub values: KpiValues,
}

/// The attribution model the numbers were computed under (`pipeline.attribution` and
/// `pipeline.attribution_lookback`; docs/semantics.md, "Attribution").
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct AttributionInfo {
    /// `last_non_direct`, `session` or `first_touch`.
    #[schema(example = "last_non_direct")]
    pub model: &'static str,
    /// The lookback (`pipeline.attribution_lookback`) in days: a whole number for whole
    /// days (`30`), else a fraction (`0.5` for 12 hours, `1.5` for 36): the milliseconds
    /// divided by 86 400 000, so that no lookback is rounded to a day it is not.
    #[schema(example = 30)]
    #[serde(serialize_with = "whole_or_fraction")]
    pub lookback_days: f64,
}

/// `30` for whole days, as the answer documents, not `30.0`.
fn whole_or_fraction<S: serde::Serializer>(days: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    if days.fract() == 0.0 && days.abs() < 9.0e15 {
        serializer.serialize_i64(*days as i64)
    } else {
        serializer.serialize_f64(*days)
    }
}

impl AttributionInfo {
    pub fn new(model: AttributionModel, lookback_ms: i64) -> Self {
        Self {
            model: model.as_str(),
            lookback_days: lookback_ms as f64 / 86_400_000.0,
        }
    }
}

/// The answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KpiResponse {
    pub granularity: &'static str,
    /// The time zone of the day windows (`pipeline.time_zone`), e.g. `Europe/Rome`.
    pub time_zone: String,
    /// How conversions were credited to channels and campaigns.
    pub attribution: AttributionInfo,
    pub from: String,
    pub to: String,
    pub group_by: Vec<&'static str>,
    pub rows: Vec<KpiRow>,
    pub totals: KpiValues,
}

#[derive(Default)]
struct Group {
    counters: KpiCounters,
    /// The spend rows of the group summed: an `i128` sum of money (rows of a long range
    /// cannot wrap it) and the records behind it (none: spend unknown).
    spend: SpendCounters,
}

/// Whether a slot may be gathered: it is a group already, or a new one within
/// [`MAX_ANSWER_ROWS`]. Past the bound, `too_many` is set and nothing more is gathered.
fn admit(
    groups: &BTreeMap<(i64, Vec<String>), Group>,
    slot: &(i64, Vec<String>),
    too_many: &mut bool,
) -> bool {
    if !*too_many && groups.len() >= MAX_ANSWER_ROWS && !groups.contains_key(slot) {
        *too_many = true;
    }
    !*too_many
}

/// Runs a query against the store.
pub fn run_query(state: &AppState, query: &KpiQuery) -> Result<KpiResponse, ApiError> {
    let store = &state.kpi_store;
    let internal = ApiError::from_store;
    let mut groups: BTreeMap<(i64, Vec<String>), Group> = BTreeMap::new();
    let mut totals = Group::default();
    // Set when the answer would pass MAX_ANSWER_ROWS: nothing more is gathered.
    let mut too_many = false;
    // Rows are aggregated as they are read: memory follows the groups of the answer, not
    // the rows scanned (a month at 1m holds millions), and the groups are bounded.
    store
        .scan_rows(query.granularity, query.from, query.to, |row, counters| {
            let value_of = |d: Dimension| -> &str {
                match d {
                    Dimension::Channel => row.channel,
                    Dimension::Campaign => row.campaign,
                    Dimension::Device => row.device,
                    Dimension::Region => row.region,
                }
            };
            if let Some(slot) = query.slot(row.window_start, value_of)
                && admit(&groups, &slot, &mut too_many)
            {
                // Stored rows: a corrupt one saturates the sums, it cannot wrap them.
                groups
                    .entry(slot)
                    .or_default()
                    .counters
                    .add_saturating(counters);
                totals.counters.add_saturating(counters);
            }
        })
        .map_err(internal)?;
    let spend_defined = query.spend_defined();
    if spend_defined {
        store
            .scan_spend(
                query.granularity,
                query.from,
                query.to,
                |window_start, channel, campaign, spend| {
                    let value_of = |d: Dimension| -> &str {
                        match d {
                            Dimension::Channel => channel,
                            _ => campaign,
                        }
                    };
                    if let Some(slot) = query.slot(window_start, value_of)
                        && admit(&groups, &slot, &mut too_many)
                    {
                        groups.entry(slot).or_default().spend.add_saturating(spend);
                        totals.spend.add_saturating(spend);
                    }
                },
            )
            .map_err(internal)?;
    }
    if too_many {
        return Err(ApiError::BadRequest(format!(
            "the answer would hold more than {MAX_ANSWER_ROWS} rows; narrow from/to (or last), \
             use a coarser granularity, group_by fewer dimensions, filter, or give \
             rollup=range (one row per group for the whole range)"
        )));
    }
    let calendar = state.calendar.clone();
    let rows = groups
        .into_iter()
        // A group with spend records and no events is a row: its spend is known, even 0.
        .filter(|(_, g)| !g.counters.is_zero() || !g.spend.is_zero())
        .map(|((window_start, values), group)| {
            let mut dimensions = BTreeMap::new();
            for (d, value) in query.group_by.iter().zip(values) {
                if *d == Dimension::Region
                    && let Some(region) = Region::from_text(&value)
                {
                    dimensions.insert("region_name".to_string(), region.name().to_string());
                }
                dimensions.insert(d.name().to_string(), value);
            }
            KpiRow {
                window_start: EventTime(window_start).to_rfc3339(),
                window_end: EventTime(if query.rollup_range {
                    query.to
                } else {
                    calendar.end_of(query.granularity, window_start)
                })
                .to_rfc3339(),
                dimensions,
                values: KpiValues::from_counters(
                    &group.counters,
                    spend_defined.then_some(group.spend),
                ),
            }
        })
        .collect();
    let rules = &state.config.pipeline.rules;
    let zone = &rules.time_zone;
    Ok(KpiResponse {
        granularity: query.granularity.as_str(),
        time_zone: zone
            .iana_name()
            .map_or_else(|| format!("{zone:?}"), str::to_string),
        attribution: AttributionInfo::new(rules.attribution, rules.attribution_lookback_ms),
        from: EventTime(query.from).to_rfc3339(),
        to: EventTime(query.to).to_rfc3339(),
        group_by: query.group_by.iter().map(|d| d.name()).collect(),
        rows,
        totals: KpiValues::from_counters(&totals.counters, spend_defined.then_some(totals.spend)),
    })
}

/// Windowed KPIs, grouped and filtered by dimension (semantics: docs/semantics.md).
#[utoipa::path(
    get,
    path = "/v1/kpis",
    params(
        ("granularity" = Option<String>, Query, description = "1m, 1h (default) or 1d"),
        ("from" = Option<String>, Query, description = "RFC 3339 or epoch ms; windows starting at or after"),
        ("last" = Option<String>, Query, description = "instead of from/to: a span ending now, e.g. 60m, 24h, 30d"),
        ("to" = Option<String>, Query, description = "RFC 3339 or epoch ms; windows starting before"),
        ("group_by" = Option<String>, Query, description = "comma-separated: channel, campaign, device, region"),
        ("channel" = Option<String>, Query, description = "filter: comma-separated values; `\\,` is a comma inside a value, `\\\\` a backslash"),
        ("campaign" = Option<String>, Query, description = "filter: comma-separated values; `\\,` is a comma inside a value, `\\\\` a backslash"),
        ("device" = Option<String>, Query, description = "filter: mobile, tablet, desktop, other, unknown"),
        ("region" = Option<String>, Query, description = "filter: ISO 3166-2:IT codes or names"),
        ("rollup" = Option<String>, Query, description = "window (default): a row per window; range: a row per group for the whole range"),
    ),
    responses(
        (status = 200, description = "Rows and totals, and the attribution model they were computed under. `spend` and `cpa` are null where no spend record contributes (unknown spend is not zero spend) and in queries grouped or filtered by device or region", body = KpiResponse),
        (status = 400, description = "A parameter is wrong; the message names it", body = super::openapi::ErrorBody),
    )
)]
pub async fn get_kpis(
    State(state): State<Arc<AppState>>,
    uri: axum::http::Uri,
) -> Result<Json<KpiResponse>, ApiError> {
    let params = query_params(&uri)?;
    let query = KpiQuery::parse(&params, state.clock.now_ms(), &state.calendar)?;
    let response = tokio::task::spawn_blocking(move || run_query(&state, &query))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok(Json(response))
}

#[cfg(test)]
mod tests {
    use super::split_filter_values;

    #[test]
    fn filter_values_split_on_commas_unless_escaped() {
        assert_eq!(split_filter_values("email"), ["email"]);
        assert_eq!(split_filter_values("email,social"), ["email", "social"]);
        assert_eq!(
            split_filter_values(r"Saldi\, inverno,Natale"),
            ["Saldi, inverno", "Natale"]
        );
        assert_eq!(split_filter_values(r"a\\,b"), [r"a\", "b"]);
        // A backslash before anything else, or at the end, is itself.
        assert_eq!(split_filter_values(r"50\%\"), [r"50\%\"]);
        assert_eq!(split_filter_values(""), [""]);
    }
}
