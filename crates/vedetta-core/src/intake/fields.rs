//! Interpreting one raw field value, with an error a person can act on.
//!
//! Each parser takes the field's wire name and its raw JSON text and returns either the
//! typed value or a [`FieldError`] that says what was expected and what came instead.
//! Values are echoed back only shortened and JSON-escaped, so a hostile 1 MiB string or a
//! control character never ends up verbatim in a response or a log line.

use super::{FieldError, IntakeContext};
use crate::record::Consent;
use crate::time::EventTime;
use serde_json::value::RawValue;
use std::net::IpAddr;

/// The JSON kind of a raw value, from its first byte.
pub(crate) fn json_kind(raw: &RawValue) -> &'static str {
    json_kind_of_bytes(raw.get().as_bytes())
}

pub(crate) fn json_kind_of_bytes(bytes: &[u8]) -> &'static str {
    match bytes.first() {
        Some(b'"') => "a string",
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        Some(b'-' | b'0'..=b'9') => "a number",
        _ => "something that is not JSON",
    }
}

/// A value as shown in an error: its kind and a short, escaped excerpt.
pub(crate) fn describe(raw: &RawValue) -> String {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'{') => "an object".into(),
        Some(b'[') => "an array".into(),
        _ if text.len() <= 48 => text.into(),
        _ => format!("{}… ({} bytes)", cut_at_char_boundary(text, 40), text.len()),
    }
}

/// A string for an error message: JSON-quoted and shortened to `max_chars`.
pub(crate) fn quote_for_message(text: &str, max_chars: usize) -> String {
    let quoted = serde_json::Value::String(text.chars().take(max_chars).collect()).to_string();
    if text.chars().nth(max_chars).is_some() {
        format!("{quoted}…")
    } else {
        quoted
    }
}

fn cut_at_char_boundary(text: &str, max_bytes: usize) -> &str {
    let mut end = max_bytes.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A JSON string, unescaped. Strings without escapes are sliced, not re-parsed: the raw
/// value was already validated as a JSON string token by the splitter.
fn unescape(field: &'static str, raw: &RawValue) -> Result<String, FieldError> {
    let text = raw.get();
    if !text.starts_with('"') {
        return Err(FieldError::new(
            field,
            format!("expected a string, got {}", describe(raw)),
        ));
    }
    let value = if text.contains('\\') {
        // Escapes may spell anything, control characters included; a lone surrogate
        // (`"\ud800"`) is not a character and fails here.
        serde_json::from_str::<String>(text)
            .map_err(|e| FieldError::new(field, format!("invalid string: {e}")))?
    } else {
        // Unescaped JSON strings cannot hold C0 controls; U+007F needs no escape, though.
        text[1..text.len() - 1].to_string()
    };
    Ok(value)
}

/// Control characters (U+0000–U+001F, U+007F) have no place in a name, an id or a URL.
/// They are refused rather than stripped: a value that carries one was built by mistake or
/// to break something downstream (a log line, a CSV export, a terminal, a key codec), and
/// the sender should hear about it.
fn refuse_control_characters(field: &'static str, value: &str) -> Result<(), FieldError> {
    // These characters are single bytes in UTF-8, and those bytes occur in no other
    // character's encoding: a byte scan finds exactly them. The scan has no early exit, so
    // it vectorizes (every string of every event passes here); the position is looked for
    // only when there is one.
    let any = value
        .bytes()
        .fold(false, |found, b| found | (b < 0x20) | (b == 0x7f));
    if !any {
        return Ok(());
    }
    match value.bytes().position(|b| b < 0x20 || b == 0x7f) {
        None => Ok(()),
        Some(at) => Err(FieldError::new(
            field,
            format!(
                "contains the control character U+{:04X} at character {}; control \
                 characters are not accepted",
                value.as_bytes()[at],
                value[..at].chars().count()
            ),
        )),
    }
}

/// Names Vedetta gives its own buckets: `(none)` for a campaign that was not sent and
/// `(other)` for names past a cardinality bound. A client value spelled the same would be
/// counted in the bucket and could not be told apart from it, so it is refused; the check
/// ignores case and surrounding space because channels are lower-cased and trimmed.
pub const RESERVED_DIMENSION_VALUES: [&str; 2] = ["(none)", "(other)"];

/// Refuses a dimension value that spells a built-in bucket name.
pub(crate) fn not_reserved(
    field: &'static str,
    value: Option<String>,
) -> Result<Option<String>, FieldError> {
    match &value {
        Some(name)
            if RESERVED_DIMENSION_VALUES
                .iter()
                .any(|reserved| name.trim().eq_ignore_ascii_case(reserved)) =>
        {
            Err(FieldError::new(
                field,
                format!(
                    "{} is the name of a built-in bucket ({}); leave the field out, or use \
                     another name",
                    quote_for_message(name, 16),
                    RESERVED_DIMENSION_VALUES.join(", ")
                ),
            ))
        }
        _ => Ok(value),
    }
}

/// Refuses an amount above the per-record bound, converted to the reporting currency when
/// a rate is known.
pub(crate) fn bounded_amount(
    field: &'static str,
    raw: &RawValue,
    amount: f64,
    currency: Option<&str>,
    bound: &super::MoneyBound,
) -> Result<(), FieldError> {
    let reporting = bound.reporting_currency.as_str();
    let (converted, rate_known) = match currency {
        None => (amount, true),
        Some(code) if code == reporting => (amount, true),
        Some(code) => match bound.currency_rates.get(code) {
            Some(rate) => (amount * rate, true),
            None => (amount, false),
        },
    };
    if converted <= bound.max_amount {
        return Ok(());
    }
    let limit = bound.max_amount;
    // The amount as sent: `1e300` is clearer than its 301 decimal digits.
    let amount = describe(raw);
    let message = match currency {
        Some(code) if code != reporting && rate_known => format!(
            "{amount} {code} is {converted:.2} {reporting}, over the limit of {limit} \
             {reporting} per record (ingest.max_amount)"
        ),
        Some(code) if code != reporting => {
            format!("{amount} {code} is over the limit of {limit} per record (ingest.max_amount)")
        }
        _ => format!(
            "{amount} is over the limit of {limit} {reporting} per record (ingest.max_amount)"
        ),
    };
    Err(FieldError::new(field, message))
}

/// A string of at most `max_chars` characters, trimmed. An empty string counts as absent,
/// since tag managers send `""` for "not set".
pub(crate) fn text(
    field: &'static str,
    raw: &RawValue,
    max_chars: usize,
) -> Result<Option<String>, FieldError> {
    if raw.get() == "null" {
        return Ok(None);
    }
    let value = unescape(field, raw)?;
    // Surrounding white space (a tab or newline from a spreadsheet cell) is trimmed, not
    // refused; what is left must be free of control characters.
    let trimmed = value.trim();
    refuse_control_characters(field, trimmed)?;
    check_length(field, trimmed, max_chars)?;
    if trimmed.is_empty() {
        Ok(None)
    } else if trimmed.len() == value.len() {
        Ok(Some(value))
    } else {
        Ok(Some(trimmed.to_string()))
    }
}

/// A required string of 1 to `max_chars` characters. The value is not echoed in errors:
/// required identifiers (the `udid`) are personal data.
pub(crate) fn required_identifier(
    field: &'static str,
    raw: &RawValue,
    max_chars: usize,
) -> Result<String, FieldError> {
    let value = unescape(field, raw).map_err(|_| {
        FieldError::new(field, format!("expected a string, got {}", json_kind(raw)))
    })?;
    if value.trim().is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    refuse_control_characters(field, &value)?;
    check_length(field, &value, max_chars)?;
    Ok(value)
}

fn check_length(field: &'static str, value: &str, max_chars: usize) -> Result<(), FieldError> {
    if value.len() > max_chars {
        let chars = value.chars().count();
        if chars > max_chars {
            return Err(FieldError::new(
                field,
                format!("string of {chars} characters exceeds the limit of {max_chars}"),
            ));
        }
    }
    Ok(())
}

/// An event time: RFC 3339 with an offset, or integer epoch milliseconds. Refused when
/// more than the configured tolerance in the future, or implausibly old.
pub(crate) fn timestamp(
    field: &'static str,
    raw: &RawValue,
    ctx: &IntakeContext<'_>,
) -> Result<EventTime, FieldError> {
    let text = raw.get();
    let expected = "expected RFC 3339 timestamp or epoch milliseconds";
    let millis = match text.as_bytes().first() {
        Some(b'"') => {
            let value = unescape(field, raw)?;
            let parsed: jiff::Timestamp = value.trim().parse().map_err(|_| {
                FieldError::new(field, format!("{expected}, got {}", describe(raw)))
            })?;
            parsed.as_millisecond()
        }
        Some(b'-' | b'0'..=b'9') => text.parse::<i64>().map_err(|_| {
            FieldError::new(
                field,
                format!("{expected} as a whole number, got {}", describe(raw)),
            )
        })?,
        _ => {
            return Err(FieldError::new(
                field,
                format!("{expected}, got {}", describe(raw)),
            ));
        }
    };
    let limits = ctx.limits;
    if millis < limits.earliest_ts_ms {
        let hint = if millis > 0 && millis < 100_000_000_000 {
            " (epoch seconds? the number must be milliseconds)"
        } else {
            ""
        };
        return Err(FieldError::new(
            field,
            format!(
                "{} is before {}{hint}",
                EventTime(millis),
                EventTime(limits.earliest_ts_ms)
            ),
        ));
    }
    if millis > ctx.now_ms.saturating_add(limits.future_tolerance_ms) {
        return Err(FieldError::new(
            field,
            format!(
                "{} is more than {} minutes in the future (server time {})",
                EventTime(millis),
                limits.future_tolerance_ms / 60_000,
                EventTime(ctx.now_ms)
            ),
        ));
    }
    Ok(EventTime(millis))
}

/// A money amount: a finite JSON number ≥ 0. `1e400` overflows f64 and is refused, not
/// turned into infinity.
pub(crate) fn amount(field: &'static str, raw: &RawValue) -> Result<Option<f64>, FieldError> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'n') => Ok(None),
        Some(b'-' | b'0'..=b'9') => {
            let value: f64 = serde_json::from_str(text).map_err(|_| {
                FieldError::new(field, format!("number {} is out of range", describe(raw)))
            })?;
            if !value.is_finite() {
                return Err(FieldError::new(
                    field,
                    format!("number {} is out of range", describe(raw)),
                ));
            }
            if value < 0.0 {
                return Err(FieldError::new(
                    field,
                    format!("must be ≥ 0, got {}", describe(raw)),
                ));
            }
            Ok(Some(value))
        }
        _ => Err(FieldError::new(
            field,
            format!("expected a number ≥ 0, got {}", describe(raw)),
        )),
    }
}

/// An ISO 4217 currency code: three letters, stored upper case.
pub(crate) fn currency(field: &'static str, raw: &RawValue) -> Result<Option<String>, FieldError> {
    let Some(code) = text(field, raw, 16)? else {
        return Ok(None);
    };
    if code.len() == 3 && code.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(Some(code.to_ascii_uppercase()))
    } else {
        Err(FieldError::new(
            field,
            format!(
                "expected an ISO 4217 code such as \"EUR\", got {}",
                describe(raw)
            ),
        ))
    }
}

/// An IPv4 or IPv6 address. The value is not echoed: it is personal data.
pub(crate) fn ip(field: &'static str, raw: &RawValue) -> Result<Option<IpAddr>, FieldError> {
    let Some(value) = text(field, raw, 64).map_err(|_| {
        FieldError::new(
            field,
            format!(
                "expected an IPv4 or IPv6 address string, got {}",
                json_kind(raw)
            ),
        )
    })?
    else {
        return Ok(None);
    };
    value
        .parse()
        .map(Some)
        .map_err(|_| FieldError::new(field, "not a valid IPv4 or IPv6 address"))
}

/// Longest e-mail address (RFC 5321's path limit).
pub const MAX_EMAIL_CHARS: usize = 254;
/// Longest `crm_id`.
pub const MAX_CRM_ID_CHARS: usize = 128;

/// An e-mail address: at most 254 characters, exactly one `@` with something on both
/// sides, no space or control character. The value is never echoed: it is personal data.
pub(crate) fn email(field: &'static str, raw: &RawValue) -> Result<Option<String>, FieldError> {
    if !raw.get().starts_with('"') && raw.get() != "null" {
        return Err(FieldError::new(
            field,
            format!("expected a string, got {}", json_kind(raw)),
        ));
    }
    let Some(value) = text(field, raw, MAX_EMAIL_CHARS)? else {
        return Ok(None);
    };
    match email_problem(&value) {
        Some(problem) => Err(FieldError::new(field, problem)),
        None => Ok(Some(value)),
    }
}

/// What is wrong with an e-mail address, if anything: the one check intake and the CRM
/// destinations share (an address intake keeps is one a CRM takes). It never quotes the
/// address.
pub fn email_problem(value: &str) -> Option<&'static str> {
    if value.chars().count() > MAX_EMAIL_CHARS {
        return Some("an e-mail address has at most 254 characters");
    }
    if value.bytes().filter(|&b| b == b'@').count() != 1 {
        return Some("an e-mail address has exactly one `@`");
    }
    let (local, domain) = value.split_once('@').unwrap_or_default();
    if local.is_empty() || domain.is_empty() {
        return Some("an e-mail address needs a name before the `@` and a domain after it");
    }
    if !domain.contains('.') || domain.starts_with('.') || domain.ends_with('.') {
        return Some("an e-mail address's domain has a dot inside it, like example.it");
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("an e-mail address has no white space or control characters in it");
    }
    None
}

/// A CRM's own id for the user: a string (or a whole number) of at most 128 characters,
/// without white space or control characters. Never echoed.
pub(crate) fn crm_id(field: &'static str, raw: &RawValue) -> Result<Option<String>, FieldError> {
    let text_value = raw.get();
    let value = match text_value.as_bytes().first() {
        Some(b'0'..=b'9') => match text_value.parse::<u64>() {
            Ok(n) => n.to_string(),
            Err(_) => {
                return Err(FieldError::new(
                    field,
                    "expected a string or a whole number ≥ 0",
                ));
            }
        },
        Some(b'"' | b'n') => match text(field, raw, MAX_CRM_ID_CHARS)? {
            Some(value) => value,
            None => return Ok(None),
        },
        _ => {
            return Err(FieldError::new(
                field,
                format!(
                    "expected a string or a whole number, got {}",
                    json_kind(raw)
                ),
            ));
        }
    };
    if value.chars().any(char::is_whitespace) {
        return Err(FieldError::new(
            field,
            "an identifier has no white space in it",
        ));
    }
    Ok(Some(value))
}

/// `consent`: `true`/`false` for every purpose, or an object of purposes to booleans.
/// Purposes other than `analytics` and `marketing` are accepted and ignored.
pub(crate) fn consent(field: &'static str, raw: &RawValue) -> Result<Consent, FieldError> {
    match raw.get() {
        "null" => Ok(Consent::default()),
        "true" => Ok(Consent {
            analytics: Some(true),
            marketing: Some(true),
        }),
        "false" => Ok(Consent {
            analytics: Some(false),
            marketing: Some(false),
        }),
        text if text.starts_with('{') => {
            let purposes: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(text)
                    .map_err(|e| FieldError::new(field, format!("invalid object: {e}")))?;
            let mut consent = Consent::default();
            for (purpose, value) in &purposes {
                let slot = match purpose.as_str() {
                    "analytics" => &mut consent.analytics,
                    "marketing" => &mut consent.marketing,
                    _ => continue,
                };
                match value {
                    serde_json::Value::Bool(given) => *slot = Some(*given),
                    serde_json::Value::Null => {}
                    other => {
                        return Err(FieldError::new(
                            field,
                            format!(
                                "purpose {} must be true or false, got {other}",
                                quote_for_message(purpose, 32)
                            ),
                        ));
                    }
                }
            }
            Ok(consent)
        }
        _ => Err(FieldError::new(
            field,
            format!(
                "expected true, false or an object such as {{\"marketing\": true}}, got {}",
                describe(raw)
            ),
        )),
    }
}

/// `properties`: any JSON object within the size and depth limits, kept as sent.
pub(crate) fn properties(
    field: &'static str,
    raw: &RawValue,
    ctx: &IntakeContext<'_>,
) -> Result<Option<String>, FieldError> {
    let text = raw.get();
    if text == "null" {
        return Ok(None);
    }
    if !text.starts_with('{') {
        return Err(FieldError::new(
            field,
            format!("expected an object, got {}", json_kind(raw)),
        ));
    }
    let limits = ctx.limits;
    if text.len() > limits.max_properties_bytes {
        return Err(FieldError::new(
            field,
            format!(
                "object of {} bytes exceeds the limit of {} bytes",
                text.len(),
                limits.max_properties_bytes
            ),
        ));
    }
    let depth = nesting_depth(text);
    if depth > limits.max_properties_depth {
        return Err(FieldError::new(
            field,
            format!(
                "nested {depth} levels deep; at most {} are accepted",
                limits.max_properties_depth
            ),
        ));
    }
    Ok(Some(text.to_string()))
}

/// Deepest nesting of objects and arrays in valid JSON text, counting brackets outside
/// strings. Linear and allocation-free, so a 10,000-deep value costs no recursion.
fn nesting_depth(json: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for byte in json.bytes() {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_depth_ignores_brackets_in_strings() {
        assert_eq!(nesting_depth(r#"{"a":"{{[[","b":{"c":[1]}}"#), 3);
        assert_eq!(nesting_depth(r#"{"a":"\"{"}"#), 1);
    }

    #[test]
    fn quotes_and_shortens_hostile_strings() {
        assert_eq!(quote_for_message("a\u{0}b", 10), r#""a\u0000b""#);
        assert_eq!(quote_for_message(&"x".repeat(100), 3), "\"xxx\"…");
    }
}
