//! Mapped webhooks: a declarative mapping from another system's JSON (an ERP's sales order
//! as a middleware such as Dell Boomi posts it) to events in our wire form.
//!
//! A mapping names, per event field, where its value comes from and how it is converted:
//!
//! ```toml
//! items = "/d/results"               # optional: the array of rows (RFC 6901 pointer)
//! [fields.order_id]
//! pointer = "/SalesOrder"            # RFC 6901, relative to the row
//! [fields.type]
//! pointer = "/SalesOrderType"
//! map = { ZPUR = "purchase", ZLEA = "lead" }
//! [fields.ts]
//! pointer = "/CreationDate"
//! time = "sap"                        # /Date(1712327000000)/, /Date(1712327000000+0200)/
//! [fields.value]
//! pointer = "/TotalNetAmount"
//! convert = "number"
//! decimal_comma = true                # "1.234,56" → 1234.56
//! [fields.currency]
//! constant = "EUR"
//! ```
//!
//! Each rule is applied in a fixed order: take the value (`pointer`, `from = "body"` for the
//! envelope around the rows, or `constant`; `default` when it is missing or null), look it
//! up in `map`, read it as a time (`time` / `time_format`, `zone`), then `convert` it. Every
//! error names the field and the pointer: `field value (pointer /NetValue): expected a
//! number, got "abc"`. Rows are mapped one by one, so a bad row costs only itself; the
//! events then go through the normal intake (`crate::intake`) like any other.
//!
//! Pure: time zones come from jiff's bundled database, resolved when the mapping is
//! compiled.

use jiff::Timestamp;
use jiff::tz::{Offset, TimeZone};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Most rows one request may carry, unless the mapping sets fewer.
pub const MAX_ROWS: usize = 10_000;
/// Most rules in a mapping.
const MAX_RULES: usize = 64;
/// Most entries in one value map.
const MAX_MAP_ENTRIES: usize = 10_000;
/// Longest text a rule reads (a value longer than this is refused, not cut).
const MAX_TEXT: usize = 4096;

/// The event fields a rule may fill (docs/events.md); `properties.NAME` and
/// `consent.analytics` / `consent.marketing` too.
pub const EVENT_FIELDS: &[&str] = &[
    "udid",
    "type",
    "ts",
    "event_id",
    "value",
    "currency",
    "order_id",
    "channel",
    "campaign",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_content",
    "utm_term",
    "gclid",
    "fbclid",
    "user_agent",
    "device",
    "ip",
    "region",
    "page",
    "referrer",
    "product_id",
];

/// A mapping as written (TOML).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMapping {
    /// Pointer to the array of rows; absent: the body is one row. `""` is the body itself.
    pub items: Option<String>,
    /// Most rows per request (at most [`MAX_ROWS`]).
    pub max_rows: Option<usize>,
    /// Rules by event field.
    pub fields: BTreeMap<String, RawRule>,
}

/// One field's rule as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub pointer: Option<String>,
    /// `row` (default) or `body`: what `pointer` is relative to.
    pub from: Option<String>,
    pub constant: Option<Value>,
    /// Used when the pointer finds nothing or null.
    pub default: Option<Value>,
    /// A missing value leaves the field out instead of failing the row.
    #[serde(default)]
    pub optional: bool,
    /// Source value (as text) → value.
    pub map: Option<BTreeMap<String, Value>>,
    /// `sap`, `compact` (`%Y%m%d%H%M%S`), `epoch_ms`, `epoch_s`, `rfc3339`.
    pub time: Option<String>,
    /// A strftime pattern (jiff's `strtime`), instead of `time`.
    pub time_format: Option<String>,
    /// IANA zone for times written without an offset (`compact`, `time_format`).
    pub zone: Option<String>,
    /// `number` or `string`.
    pub convert: Option<String>,
    /// For `convert = "number"`: `1.234,56` means 1234.56.
    #[serde(default)]
    pub decimal_comma: bool,
}

/// A mapping that failed to compile: the rule (`fields.ts.zone`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct CompileError {
    pub key: String,
    pub message: String,
}

/// Why one field of one row could not be mapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct FieldError {
    /// The rule's field (`value`, `properties.plant`).
    pub field: String,
    /// The pointer it read, if any.
    pub pointer: Option<String>,
    pub message: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.pointer {
            Some(p) => write!(
                f,
                "field {} (pointer {}): {}",
                self.field,
                if p.is_empty() { "\"\"" } else { p },
                self.message
            ),
            None => write!(f, "field {}: {}", self.field, self.message),
        }
    }
}

/// Why a body as a whole could not be mapped (no row was mapped).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(pub String);

#[derive(Debug, Clone)]
enum Source {
    Row(String),
    Body(String),
    Constant(Value),
}

#[derive(Debug, Clone)]
enum TimeFormat {
    Sap,
    EpochMs,
    EpochS,
    Rfc3339,
    Pattern { pattern: String, has_offset: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Convert {
    Number { decimal_comma: bool },
    Text,
}

#[derive(Debug, Clone)]
enum Target {
    Field(String),
    Property(String),
    Consent(String),
}

#[derive(Debug, Clone)]
struct Rule {
    name: String,
    target: Target,
    source: Source,
    default: Option<Value>,
    optional: bool,
    map: Option<BTreeMap<String, Value>>,
    time: Option<(TimeFormat, Option<TimeZone>)>,
    convert: Option<Convert>,
}

/// A compiled mapping.
#[derive(Debug, Clone)]
pub struct Mapping {
    items: Option<String>,
    max_rows: usize,
    rules: Vec<Rule>,
}

fn compile_error(key: String, message: impl Into<String>) -> CompileError {
    CompileError {
        key,
        message: message.into(),
    }
}

fn check_pointer(key: &str, pointer: &str) -> Result<(), CompileError> {
    if !(pointer.is_empty() || pointer.starts_with('/')) || pointer.len() > 512 {
        return Err(compile_error(
            key.to_string(),
            format!("{pointer:?} is not a JSON pointer (RFC 6901: \"\" or \"/a/0/b\")"),
        ));
    }
    // `~` must be followed by 0 or 1.
    let bytes = pointer.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'~' && !matches!(bytes.get(i + 1), Some(b'0' | b'1')) {
            return Err(compile_error(
                key.to_string(),
                format!("{pointer:?}: `~` must be written `~0`, `/` inside a name `~1`"),
            ));
        }
    }
    Ok(())
}

impl Mapping {
    pub fn compile(raw: RawMapping) -> Result<Self, CompileError> {
        if let Some(items) = &raw.items {
            check_pointer("items", items)?;
        }
        let max_rows = raw.max_rows.unwrap_or(1000);
        if max_rows == 0 || max_rows > MAX_ROWS {
            return Err(compile_error(
                "max_rows".into(),
                format!("must be 1 to {MAX_ROWS}"),
            ));
        }
        if raw.fields.len() > MAX_RULES {
            return Err(compile_error(
                "fields".into(),
                format!("at most {MAX_RULES} rules"),
            ));
        }
        for required in ["udid", "type", "ts"] {
            if !raw.fields.contains_key(required) {
                return Err(compile_error(
                    format!("fields.{required}"),
                    "missing: every event needs udid, type and ts (a pointer or a constant)",
                ));
            }
        }
        let mut rules = Vec::with_capacity(raw.fields.len());
        for (name, rule) in raw.fields {
            rules.push(compile_rule(name, rule)?);
        }
        Ok(Self {
            items: raw.items,
            max_rows,
            rules,
        })
    }

    /// Most rows per request.
    pub fn max_rows(&self) -> usize {
        self.max_rows
    }

    /// The rows of a body, each mapped alone: an event, or why not.
    pub fn map_body(&self, body: &Value) -> Result<Vec<Result<Value, FieldError>>, BodyError> {
        let rows: Vec<&Value> = match &self.items {
            None => vec![body],
            Some(pointer) => match body.pointer(pointer) {
                Some(Value::Array(rows)) => rows.iter().collect(),
                Some(other) => {
                    return Err(BodyError(format!(
                        "items (pointer {pointer:?}): expected an array of rows, got {}",
                        describe(other)
                    )));
                }
                None => {
                    return Err(BodyError(format!(
                        "items (pointer {pointer:?}): not found in the body"
                    )));
                }
            },
        };
        if rows.len() > self.max_rows {
            return Err(BodyError(format!(
                "items: {} rows, more than the {} a request may carry (max_rows); split the batch",
                rows.len(),
                self.max_rows
            )));
        }
        Ok(rows
            .into_iter()
            .map(|row| self.map_row(row, body))
            .collect())
    }

    /// One row's event in the wire form (docs/events.md).
    pub fn map_row(&self, row: &Value, body: &Value) -> Result<Value, FieldError> {
        let mut event = Map::new();
        let mut properties = Map::new();
        let mut consent = Map::new();
        for rule in &self.rules {
            let Some(value) = apply(rule, row, body)? else {
                continue;
            };
            match &rule.target {
                Target::Field(name) => {
                    event.insert(name.clone(), value);
                }
                Target::Property(name) => {
                    properties.insert(name.clone(), value);
                }
                Target::Consent(name) => {
                    consent.insert(name.clone(), value);
                }
            }
        }
        if !properties.is_empty() {
            event.insert("properties".into(), Value::Object(properties));
        }
        if !consent.is_empty() {
            event.insert("consent".into(), Value::Object(consent));
        }
        Ok(Value::Object(event))
    }
}

fn compile_rule(name: String, raw: RawRule) -> Result<Rule, CompileError> {
    let key = |part: &str| {
        if part.is_empty() {
            format!("fields.{name}")
        } else {
            format!("fields.{name}.{part}")
        }
    };
    let target = if let Some(property) = name.strip_prefix("properties.") {
        if property.is_empty()
            || property.len() > 64
            || !property
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(compile_error(
                key(""),
                "a property name is 1 to 64 letters, digits, `_` or `-`",
            ));
        }
        Target::Property(property.to_string())
    } else if let Some(purpose) = name.strip_prefix("consent.") {
        if !matches!(purpose, "analytics" | "marketing") {
            return Err(compile_error(
                key(""),
                "consent purposes are `analytics` and `marketing`",
            ));
        }
        Target::Consent(purpose.to_string())
    } else if EVENT_FIELDS.contains(&name.as_str()) {
        Target::Field(name.clone())
    } else {
        return Err(compile_error(
            key(""),
            "not an event field (docs/events.md); use `properties.NAME` for anything else",
        ));
    };
    let source = match (&raw.pointer, &raw.constant) {
        (Some(_), Some(_)) => {
            return Err(compile_error(key(""), "a pointer or a constant, not both"));
        }
        (None, None) => {
            return Err(compile_error(key(""), "needs a pointer or a constant"));
        }
        (None, Some(constant)) => {
            if raw.from.is_some() {
                return Err(compile_error(key("from"), "only with a pointer"));
            }
            Source::Constant(constant.clone())
        }
        (Some(pointer), None) => {
            check_pointer(&key("pointer"), pointer)?;
            match raw.from.as_deref() {
                None | Some("row") => Source::Row(pointer.clone()),
                Some("body") => Source::Body(pointer.clone()),
                Some(other) => {
                    return Err(compile_error(
                        key("from"),
                        format!("{other:?}: expected \"row\" or \"body\""),
                    ));
                }
            }
        }
    };
    if let Some(map) = &raw.map
        && (map.is_empty() || map.len() > MAX_MAP_ENTRIES)
    {
        return Err(compile_error(
            key("map"),
            format!("1 to {MAX_MAP_ENTRIES} entries"),
        ));
    }
    let zone = match &raw.zone {
        None => None,
        Some(zone) => Some(TimeZone::get(zone).map_err(|_| {
            compile_error(
                key("zone"),
                format!("{zone:?} is not an IANA time zone (e.g. \"Europe/Rome\")"),
            )
        })?),
    };
    let time = match (&raw.time, &raw.time_format) {
        (Some(_), Some(_)) => {
            return Err(compile_error(
                key("time"),
                "`time` or `time_format`, not both",
            ));
        }
        (None, None) => {
            if zone.is_some() {
                return Err(compile_error(
                    key("zone"),
                    "only for times (`time` or `time_format`)",
                ));
            }
            None
        }
        (Some(name), None) => Some(match name.as_str() {
            "sap" => TimeFormat::Sap,
            "epoch_ms" => TimeFormat::EpochMs,
            "epoch_s" => TimeFormat::EpochS,
            "rfc3339" => TimeFormat::Rfc3339,
            "compact" => TimeFormat::Pattern {
                pattern: "%Y%m%d%H%M%S".into(),
                has_offset: false,
            },
            other => {
                return Err(compile_error(
                    key("time"),
                    format!(
                        "{other:?}: expected sap, compact, epoch_ms, epoch_s or rfc3339 \
                         (or a pattern in time_format)"
                    ),
                ));
            }
        }),
        (None, Some(pattern)) => {
            if pattern.is_empty() || pattern.len() > 128 {
                return Err(compile_error(key("time_format"), "1 to 128 characters"));
            }
            Some(TimeFormat::Pattern {
                has_offset: pattern.contains("%z")
                    || pattern.contains("%:z")
                    || pattern.contains("%Q")
                    || pattern.contains("%s"),
                pattern: pattern.clone(),
            })
        }
    };
    if let Some(TimeFormat::Pattern {
        has_offset: false, ..
    }) = &time
        && zone.is_none()
    {
        return Err(compile_error(
            key("zone"),
            "missing: a time written without an offset needs its IANA zone (\"Europe/Rome\")",
        ));
    }
    let convert = match raw.convert.as_deref() {
        None => {
            if raw.decimal_comma {
                return Err(compile_error(
                    key("decimal_comma"),
                    "only with convert = \"number\"",
                ));
            }
            None
        }
        Some("number") => Some(Convert::Number {
            decimal_comma: raw.decimal_comma,
        }),
        Some("string") => {
            if raw.decimal_comma {
                return Err(compile_error(
                    key("decimal_comma"),
                    "only with convert = \"number\"",
                ));
            }
            Some(Convert::Text)
        }
        Some(other) => {
            return Err(compile_error(
                key("convert"),
                format!("{other:?}: expected \"number\" or \"string\""),
            ));
        }
    };
    if time.is_some() && convert.is_some() {
        return Err(compile_error(
            key("convert"),
            "a time is written as RFC 3339 already; drop `convert`",
        ));
    }
    Ok(Rule {
        name,
        target,
        source,
        default: raw.default,
        optional: raw.optional,
        map: raw.map,
        time: time.map(|t| (t, zone)),
        convert,
    })
}

fn apply(rule: &Rule, row: &Value, body: &Value) -> Result<Option<Value>, FieldError> {
    let pointer = match &rule.source {
        Source::Row(p) | Source::Body(p) => Some(p.clone()),
        Source::Constant(_) => None,
    };
    let fail = |message: String| FieldError {
        field: rule.name.clone(),
        pointer: pointer.clone(),
        message,
    };
    let found = match &rule.source {
        Source::Row(p) => row.pointer(p).filter(|v| !v.is_null()).cloned(),
        Source::Body(p) => body.pointer(p).filter(|v| !v.is_null()).cloned(),
        Source::Constant(c) => Some(c.clone()),
    };
    let mut value = match (found, &rule.default) {
        (Some(v), _) => v,
        (None, Some(default)) => default.clone(),
        (None, None) if rule.optional => return Ok(None),
        (None, None) => return Err(fail("missing (or null)".into())),
    };
    if let Value::String(s) = &value
        && s.len() > MAX_TEXT
    {
        return Err(fail(format!("longer than {MAX_TEXT} bytes")));
    }
    if let Some(map) = &rule.map {
        let text = match &value {
            Value::String(s) => s.trim().to_string(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => {
                return Err(fail(format!(
                    "expected a text or a number to look up in the map, got {}",
                    describe(other)
                )));
            }
        };
        value = match map.get(&text) {
            Some(mapped) => mapped.clone(),
            None => {
                let known: Vec<&str> = map.keys().take(8).map(String::as_str).collect();
                return Err(fail(format!(
                    "{} is not in the map (known: {}{})",
                    short(&Value::String(text)),
                    known.join(", "),
                    if map.len() > 8 { ", …" } else { "" }
                )));
            }
        };
    }
    if let Some((format, zone)) = &rule.time {
        let ts = parse_time(&value, format, zone.as_ref()).map_err(fail)?;
        return Ok(Some(Value::String(ts.to_string())));
    }
    match rule.convert {
        None => {
            if matches!(value, Value::Array(_) | Value::Object(_))
                && !matches!(rule.target, Target::Property(_))
            {
                return Err(fail(format!(
                    "expected a text, number or boolean, got {}",
                    describe(&value)
                )));
            }
            Ok(Some(value))
        }
        Some(Convert::Text) => match &value {
            Value::String(_) => Ok(Some(value)),
            Value::Number(n) => Ok(Some(Value::String(n.to_string()))),
            other => Err(fail(format!(
                "expected a text or a number, got {}",
                describe(other)
            ))),
        },
        Some(Convert::Number { decimal_comma }) => match &value {
            Value::Number(_) => Ok(Some(value)),
            Value::String(s) => parse_number(s, decimal_comma).map(Some).ok_or_else(|| {
                fail(format!(
                    "expected a number, got {} (written {})",
                    short(&value),
                    if decimal_comma {
                        "\"1.234,56\" with decimal_comma"
                    } else {
                        "\"1234.56\""
                    }
                ))
            }),
            other => Err(fail(format!("expected a number, got {}", describe(other)))),
        },
    }
}

/// A decimal written as text: `1234.56`, `-3`, or with `decimal_comma` `1.234,56` (points
/// group thousands, in groups of three) and `1234,56`. Anything else is refused.
pub fn parse_number(text: &str, decimal_comma: bool) -> Option<Value> {
    let text = text.trim();
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (point, group) = if decimal_comma {
        (',', '.')
    } else {
        ('.', ',')
    };
    let (whole, fraction) = match digits.split_once(point) {
        Some((w, f)) => (w, Some(f)),
        None => (digits, None),
    };
    // Thousands groups: "1.234.567" (decimal comma) or "1,234,567".
    let whole_digits: String = if whole.contains(group) {
        let groups: Vec<&str> = whole.split(group).collect();
        let first = groups[0];
        if first.is_empty() || first.len() > 3 || groups[1..].iter().any(|g| g.len() != 3) {
            return None;
        }
        groups.concat()
    } else {
        whole.to_string()
    };
    if whole_digits.is_empty()
        || whole_digits.len() > 15
        || !whole_digits.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    if let Some(f) = fraction
        && (f.is_empty() || f.len() > 9 || !f.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    let normal = format!(
        "{}{}{}",
        if negative { "-" } else { "" },
        whole_digits,
        fraction.map(|f| format!(".{f}")).unwrap_or_default()
    );
    serde_json::from_str(&normal).ok()
}

fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => {
            let s = s.trim();
            (!s.is_empty() && s.len() <= 20)
                .then(|| s.parse().ok())
                .flatten()
        }
        _ => None,
    }
}

fn parse_time(
    value: &Value,
    format: &TimeFormat,
    zone: Option<&TimeZone>,
) -> Result<Timestamp, String> {
    let got = || short(value);
    match format {
        TimeFormat::Sap => {
            let text = value
                .as_str()
                .ok_or_else(|| format!("expected a SAP date \"/Date(ms)/\", got {}", got()))?;
            parse_sap_date(text)
                .map(|(ts, _)| ts)
                .ok_or_else(|| format!("expected a SAP date \"/Date(1712327000000)/\" or \"/Date(1712327000000+0200)/\", got {}", got()))
        }
        TimeFormat::EpochMs => integer(value)
            .and_then(|ms| Timestamp::from_millisecond(ms).ok())
            .ok_or_else(|| format!("expected epoch milliseconds, got {}", got())),
        TimeFormat::EpochS => integer(value)
            .and_then(|s| Timestamp::from_second(s).ok())
            .ok_or_else(|| format!("expected epoch seconds, got {}", got())),
        TimeFormat::Rfc3339 => value
            .as_str()
            .and_then(|s| s.trim().parse::<Timestamp>().ok())
            .ok_or_else(|| {
                format!(
                    "expected an RFC 3339 time with its offset (\"2024-04-05T14:23:05+02:00\"), got {}",
                    got()
                )
            }),
        TimeFormat::Pattern {
            pattern,
            has_offset,
        } => {
            // SAP sometimes sends 20240405142305 as a number.
            let text = match value {
                Value::String(s) => s.trim().to_string(),
                Value::Number(n) => n.to_string(),
                _ => String::new(),
            };
            let bad = || format!("expected a time like {pattern:?}, got {}", got());
            let parsed = jiff::fmt::strtime::parse(pattern, &text).map_err(|_| bad())?;
            if *has_offset {
                parsed.to_timestamp().map_err(|_| bad())
            } else {
                let civil = parsed.to_datetime().map_err(|_| bad())?;
                let zone = zone.ok_or_else(bad)?;
                // A time in a daylight-saving gap or fold resolves as jiff's "compatible"
                // (the later instant in a gap, the earlier in a fold), as RFC 5545 does.
                zone.to_ambiguous_zoned_datetime(civil)
                    .compatible()
                    .map(|z| z.timestamp())
                    .map_err(|_| bad())
            }
        }
    }
}

/// SAP's (Microsoft's JSON) date: `/Date(1712327000000)/`, or `/Date(1712327000000+0200)/`
/// with the writer's offset. The number is milliseconds since the epoch in UTC either way;
/// the offset says where it was written and is returned beside it.
pub fn parse_sap_date(text: &str) -> Option<(Timestamp, Option<Offset>)> {
    let inner = text.trim().strip_prefix("/Date(")?.strip_suffix(")/")?;
    let split = inner
        .char_indices()
        .skip(1)
        .find(|(_, c)| *c == '+' || *c == '-')
        .map(|(i, _)| i);
    let (ms, offset) = match split {
        Some(i) => (&inner[..i], Some(&inner[i..])),
        None => (inner, None),
    };
    if ms.is_empty() || ms.len() > 16 {
        return None;
    }
    let ms: i64 = ms.parse().ok()?;
    let ts = Timestamp::from_millisecond(ms).ok()?;
    let offset = match offset {
        None => None,
        Some(o) => {
            let (sign, digits) = o.split_at(1);
            if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let hours: i32 = digits[..2].parse().ok()?;
            let minutes: i32 = digits[2..].parse().ok()?;
            if hours > 18 || minutes > 59 {
                return None;
            }
            let seconds = (hours * 3600 + minutes * 60) * if sign == "-" { -1 } else { 1 };
            Some(Offset::from_seconds(seconds).ok()?)
        }
    };
    Some((ts, offset))
}

/// The SAP date text of an instant, with the offset it was written at (for round-trips
/// and examples).
pub fn format_sap_date(ts: Timestamp, offset: Option<Offset>) -> String {
    match offset {
        None => format!("/Date({})/", ts.as_millisecond()),
        Some(o) => {
            let seconds = o.seconds();
            let sign = if seconds < 0 { '-' } else { '+' };
            let minutes = seconds.abs() / 60;
            format!(
                "/Date({}{sign}{:02}{:02})/",
                ts.as_millisecond(),
                minutes / 60,
                minutes % 60
            )
        }
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(_) => format!("a boolean ({value})"),
        Value::Number(_) => format!("a number ({value})"),
        Value::String(_) => format!("a text ({})", short(value)),
        Value::Array(a) => format!("an array of {}", a.len()),
        Value::Object(_) => "an object".into(),
    }
}

fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 40 {
        format!("{}…", text.chars().take(40).collect::<String>())
    } else {
        text
    }
}

#[cfg(test)]
mod tests;
