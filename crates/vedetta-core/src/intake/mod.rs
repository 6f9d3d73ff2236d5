//! Intake: from a request body to validated, pseudonymized log records.
//!
//! Every source (HTTP, webhooks, Kafka) hands its bytes to [`judge_events`] or
//! [`judge_spend`]. The body may be one JSON object, a JSON array, or NDJSON. Each event is
//! judged alone: a bad one is refused with an error that names its index, its field and
//! what was wrong (`events[3].ts: expected RFC 3339 timestamp or epoch milliseconds, got
//! "ieri"`), and never takes the good ones down with it.
//!
//! Only a body that cannot be split into events at all (an empty body, a JSON array that is
//! not valid JSON, too many events) is refused whole, with a [`BodyError`].
//!
//! The output is already pseudonymized: the `udid` is replaced by its keyed pseudonym and
//! the IP address truncated, so nothing personal reaches the log in clear.

pub mod browser;
mod event;
mod fields;
pub mod gzip;
mod object;
mod spend;

pub use event::{CONSENT_EVENT_TYPE, EVENT_FIELD_NAMES};
pub use fields::{RESERVED_DIMENSION_VALUES, email_problem};
pub use spend::SPEND_FIELD_NAMES;

use crate::privacy::Pseudonymizer;
use crate::record::{LogRecord, UserPseudonym};
use crate::time::EventTime;
use object::{FieldTable, RawObject};
use serde_json::value::RawValue;

/// How a body lays out its events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFormat {
    /// One JSON object or a JSON array of objects.
    Json,
    /// One JSON object per line; blank lines are ignored.
    Ndjson,
}

/// Bounds that keep one hostile event from costing more than a fair share.
#[derive(Clone, Debug)]
pub struct IntakeLimits {
    /// Most events in one request; more is refused whole (clients should split).
    pub max_events_per_request: usize,
    /// Longest `udid`, `event_id` (characters), per EVENTS.md.
    pub max_id_chars: usize,
    /// Longest free-text field (page, referrer, user agent, attribution), in characters.
    pub max_text_chars: usize,
    /// Largest `properties` object, as JSON text, in bytes.
    pub max_properties_bytes: usize,
    /// Deepest nesting inside `properties`.
    pub max_properties_depth: usize,
    /// How far in the future (server clock) an event time may be, in milliseconds.
    pub future_tolerance_ms: i64,
    /// Earliest event time accepted, epoch ms. Anything before is almost surely a unit
    /// mistake (epoch seconds sent as milliseconds).
    pub earliest_ts_ms: i64,
    /// The largest money amount one record may carry.
    pub money: MoneyBound,
}

/// The largest `value` or `amount` one record may carry, in the reporting currency, and the
/// rates that convert other currencies into it. One record above it is a unit mistake or an
/// attack (a `value` of `1e300` would otherwise saturate every sum it enters); it is refused
/// with the limit named. Amounts in a currency without a rate are bounded by their face
/// value: the pipeline counts them as 0, but they must not carry an absurd number either.
#[derive(Clone, Debug)]
pub struct MoneyBound {
    /// In units of `reporting_currency` (`ingest.max_amount`).
    pub max_amount: f64,
    pub reporting_currency: String,
    /// Units of the reporting currency per unit of another currency.
    pub currency_rates: std::collections::HashMap<String, f64>,
}

impl Default for MoneyBound {
    fn default() -> Self {
        Self {
            max_amount: 10_000_000.0,
            reporting_currency: "EUR".into(),
            currency_rates: Default::default(),
        }
    }
}

impl Default for IntakeLimits {
    fn default() -> Self {
        Self {
            max_events_per_request: 10_000,
            max_id_chars: 128,
            max_text_chars: 2048,
            max_properties_bytes: 16 * 1024,
            max_properties_depth: 32,
            future_tolerance_ms: 5 * 60 * 1000,
            earliest_ts_ms: 946_684_800_000, // 2000-01-01T00:00:00Z
            money: MoneyBound::default(),
        }
    }
}

/// What intake needs from the outside world, handed in so that judging stays pure.
#[derive(Clone, Copy, Debug)]
pub struct IntakeContext<'a> {
    /// Server wall-clock time, epoch ms (for the future-timestamp check).
    pub now_ms: i64,
    pub pseudonymizer: &'a Pseudonymizer,
    pub limits: &'a IntakeLimits,
}

/// One refused event.
#[derive(Clone, Debug, PartialEq)]
pub struct Rejection {
    /// Position in the request: array index, or 0-based line number for NDJSON.
    pub index: usize,
    /// `events[3].ts: expected …`: names the event, the field and what was wrong.
    pub error: String,
    /// The field at fault, if one is (`ts`), for per-reason counters.
    pub field: Option<&'static str>,
    /// The event as sent with personal fields redacted, when it was a parseable object.
    /// Kept in the quarantine for a person to inspect.
    pub redacted: Option<String>,
}

/// The verdict on a body whose events could be told apart.
#[derive(Clone, Debug, Default)]
pub struct Judged {
    /// Accepted records, in request order.
    pub records: Vec<LogRecord>,
    pub rejected: Vec<Rejection>,
    /// Identity and marketing-consent decisions of accepted events, in request order. They
    /// never enter the log (its record format is identity-free): the adapter hands them to
    /// the identity store, which keeps an identity only with marketing consent.
    pub identities: Vec<IdentityClaim>,
    /// Accepted consent events (type `consent`): they carry a decision, not a funnel
    /// step, so they have no record.
    pub consent_events: usize,
}

impl Judged {
    /// Events accepted: records plus consent events.
    pub fn accepted(&self) -> usize {
        self.records.len() + self.consent_events
    }
}

/// What one accepted event said about its user's identity: `email`, `crm_id`, and the
/// marketing decision (`consent.marketing`, or a consent event). `Debug` does not show the
/// identity, so a stray `{:?}` cannot log it.
#[derive(Clone, PartialEq, Eq)]
pub struct IdentityClaim {
    /// The event's position in the request.
    pub index: usize,
    pub user: UserPseudonym,
    /// Event time: the latest decision by event time wins.
    pub ts: EventTime,
    pub email: Option<String>,
    pub crm_id: Option<String>,
    /// `Some(false)` withdraws consent (and deletes a stored identity).
    pub marketing: Option<bool>,
}

impl std::fmt::Debug for IdentityClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityClaim")
            .field("index", &self.index)
            .field("user", &self.user)
            .field("ts", &self.ts)
            .field("email", &self.email.as_ref().map(|_| "<redacted>"))
            .field("crm_id", &self.crm_id.as_ref().map(|_| "<redacted>"))
            .field("marketing", &self.marketing)
            .finish()
    }
}

/// What building one object yields: a record for the log (none for a consent event) and
/// what it said about identity.
#[derive(Debug)]
pub(crate) struct Built {
    pub record: Option<LogRecord>,
    pub identity: Option<IdentityClaim>,
}

impl From<LogRecord> for Built {
    fn from(record: LogRecord) -> Self {
        Built {
            record: Some(record),
            identity: None,
        }
    }
}

/// A body refused whole.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    #[error("empty body: send one event object, a JSON array of events, or NDJSON")]
    Empty,
    #[error("the JSON array holds no events")]
    NoEvents,
    #[error("body is not valid JSON: {0}")]
    Malformed(String),
    #[error("body must be a JSON object or an array of objects, got {0}")]
    NotObjectOrArray(&'static str),
    #[error("{count} events in one request; at most {limit} are accepted, split the batch")]
    TooManyEvents { count: usize, limit: usize },
}

impl BodyError {
    /// Whether the refusal is about size (HTTP 413) rather than content (HTTP 400).
    pub fn is_too_large(&self) -> bool {
        matches!(self, BodyError::TooManyEvents { .. })
    }
}

/// A field-level error before it is given its `events[i].` prefix.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FieldError {
    /// The field name as the client sent it (an alias stays an alias).
    pub field: &'static str,
    pub message: String,
}

impl FieldError {
    pub(crate) fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// Judges a body of funnel events.
pub fn judge_events(
    body: &[u8],
    format: BodyFormat,
    ctx: &IntakeContext<'_>,
) -> Result<Judged, BodyError> {
    judge(body, format, ctx, "events", &event::TABLE, |object, ctx| {
        event::build(object, ctx, None)
    })
}

/// Judges a body of funnel events sent by a browser (the tracker): as [`judge_events`],
/// with what the server knows about the request filling in what a page cannot know
/// ([`browser::BrowserContext`]).
pub fn judge_browser_events(
    body: &[u8],
    format: BodyFormat,
    ctx: &IntakeContext<'_>,
    browser: &browser::BrowserContext<'_>,
) -> Result<Judged, BodyError> {
    judge(body, format, ctx, "events", &event::TABLE, |object, ctx| {
        event::build(object, ctx, Some(browser))
    })
}

/// Judges a body of ad spend records.
pub fn judge_spend(
    body: &[u8],
    format: BodyFormat,
    ctx: &IntakeContext<'_>,
) -> Result<Judged, BodyError> {
    judge(body, format, ctx, "costs", &spend::TABLE, |object, ctx| {
        spend::build(object, ctx).map(Built::from)
    })
}

/// The UTF-8 encoding of U+FEFF, which some tools write at the start of a file.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

fn judge(
    body: &[u8],
    format: BodyFormat,
    ctx: &IntakeContext<'_>,
    label: &str,
    table: &FieldTable,
    build: impl Fn(&RawObject<'_>, &IntakeContext<'_>) -> Result<Built, FieldError>,
) -> Result<Judged, BodyError> {
    // Windows tools (Notepad, PowerShell's `Out-File`, Excel's CSV/JSON exports) start UTF-8
    // files with a byte-order mark; it is not JSON, but it is not the client's mistake either.
    let body = body.strip_prefix(UTF8_BOM).unwrap_or(body);
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() {
        return Err(BodyError::Empty);
    }
    let mut judged = Judged::default();
    let mut judge_one = |index: usize, parsed: Result<RawObject<'_>, String>| match parsed {
        Err(message) => judged.rejected.push(Rejection {
            index,
            error: format!("{label}[{index}]: {message}"),
            field: None,
            redacted: None,
        }),
        Ok(object) => match object
            .problem(table)
            .map_or_else(|| build(&object, ctx), Err)
        {
            Ok(built) => {
                match built.record {
                    Some(record) => judged.records.push(record),
                    None => judged.consent_events += 1,
                }
                if let Some(mut identity) = built.identity {
                    identity.index = index;
                    judged.identities.push(identity);
                }
            }
            Err(e) => judged.rejected.push(Rejection {
                index,
                error: format!("{label}[{index}].{}: {}", e.field, e.message),
                field: Some(e.field),
                redacted: Some(object.redacted(table, ctx.pseudonymizer)),
            }),
        },
    };
    let limit = ctx.limits.max_events_per_request;
    match format {
        BodyFormat::Ndjson => {
            // Split the body as sent, not the trimmed one: `index` is the line number, and
            // trimming first dropped the leading blank lines from the count (a fuzz find).
            let lines = body.split(|&b| b == b'\n');
            let count = lines.clone().filter(|l| !l.trim_ascii().is_empty()).count();
            if count > limit {
                return Err(BodyError::TooManyEvents { count, limit });
            }
            for (index, line) in lines.enumerate() {
                let line = line.trim_ascii();
                if !line.is_empty() {
                    judge_one(index, RawObject::parse_slice(line, table));
                }
            }
        }
        BodyFormat::Json if trimmed[0] == b'[' => {
            let items: Vec<&RawValue> =
                serde_json::from_slice(trimmed).map_err(|e| BodyError::Malformed(e.to_string()))?;
            if items.is_empty() {
                return Err(BodyError::NoEvents);
            }
            if items.len() > limit {
                return Err(BodyError::TooManyEvents {
                    count: items.len(),
                    limit,
                });
            }
            for (index, item) in items.iter().enumerate() {
                judge_one(index, RawObject::parse_str(item.get(), table));
            }
        }
        BodyFormat::Json if trimmed[0] == b'{' => {
            // A single object: a syntax error here is the whole body's, so it is a body
            // error rather than a rejection of event 0.
            let object = RawObject::parse_slice(trimmed, table).map_err(BodyError::Malformed)?;
            judge_one(0, Ok(object));
        }
        BodyFormat::Json => {
            return Err(BodyError::NotObjectOrArray(fields::json_kind_of_bytes(
                trimmed,
            )));
        }
    }
    Ok(judged)
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_fuzz;
