//! Target `intake`: the intake judge (`vedetta_core::intake::judge_events` /
//! `judge_spend`) on arbitrary bytes, as JSON or NDJSON (its line splitter included).
//!
//! The first byte picks the format (bit 0: JSON or NDJSON) and the endpoint (bit 1: events
//! or costs); the rest is the body. Checked:
//! - **accepted + rejected = the events in the body**, counted here independently (the
//!   non-blank lines of NDJSON, the elements of a JSON array, one for an object); a body
//!   refused whole is refused for a reason that holds (too many events: more than the limit);
//! - each refusal names its event: `events[i]…`/`costs[i]…`, `i` in request order, and for
//!   NDJSON `i` is the 0-based line number of a non-blank line (what the README promises);
//! - every accepted record keeps the promises of intake: no control character in any string,
//!   no built-in bucket name as a channel or campaign, money finite and within the bound, a
//!   time inside the accepted range;
//! - a leading UTF-8 byte-order mark changes nothing;
//! - what is accepted survives the log and the pipeline: the records encode into a batch that
//!   decodes to the same records, and the pipeline processes them without a panic and
//!   counts each once.

use serde::de::IgnoredAny;
use vedetta_core::enrich::{NO_CAMPAIGN, campaign_of, normalize_channel};
use vedetta_core::intake::{
    self, BodyError, BodyFormat, IntakeContext, IntakeLimits, Judged, RESERVED_DIMENSION_VALUES,
};
use vedetta_core::pipeline::{Pipeline, PipelineConfig};
use vedetta_core::privacy::{PseudonymKey, Pseudonymizer};
use vedetta_core::record::{LogRecord, decode_batch, encode_batch};

/// The server's clock in the target: 2025-11-24T16:00:00Z.
pub const NOW_MS: i64 = 1_764_000_000_000;
/// Small enough that the fuzzer reaches "too many events" with short inputs.
pub const MAX_EVENTS: usize = 64;
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

pub fn limits() -> IntakeLimits {
    IntakeLimits {
        max_events_per_request: MAX_EVENTS,
        ..IntakeLimits::default()
    }
}

pub fn pseudonymizer() -> Pseudonymizer {
    match PseudonymKey::from_bytes(1, &[42; 32]) {
        Ok(key) => Pseudonymizer::new(key, Vec::new()),
        Err(e) => panic!("a 32-byte key is valid: {e}"),
    }
}

pub fn fuzz_intake(data: &[u8]) {
    let (mode, body) = crate::selector(data);
    let format = if mode & 1 == 0 {
        BodyFormat::Json
    } else {
        BodyFormat::Ndjson
    };
    let spend = mode & 2 != 0;
    let pseudonymizer = pseudonymizer();
    let limits = limits();
    let ctx = IntakeContext {
        now_ms: NOW_MS,
        pseudonymizer: &pseudonymizer,
        limits: &limits,
    };
    let judge = |body: &[u8]| {
        if spend {
            intake::judge_spend(body, format, &ctx)
        } else {
            intake::judge_events(body, format, &ctx)
        }
    };
    let verdict = judge(body);

    // A leading byte-order mark changes nothing.
    if !body.starts_with(UTF8_BOM) {
        let with_bom = [UTF8_BOM, body].concat();
        assert_same_verdict(&verdict, &judge(&with_bom));
    }

    let content = body.strip_prefix(UTF8_BOM).unwrap_or(body);
    let judged = match verdict {
        Ok(judged) => judged,
        Err(error) => {
            check_body_error(&error, content, format);
            return;
        }
    };
    let label = if spend { "costs" } else { "events" };
    let events = count_events(content, format)
        .unwrap_or_else(|| panic!("judged, but the body does not split into events"));
    assert_eq!(
        judged.accepted() + judged.rejected.len(),
        events,
        "accepted + rejected != events in the body"
    );
    check_rejections(&judged, content, format, label);
    for record in &judged.records {
        check_record(record, &limits);
    }
    check_downstream(&judged.records);
}

fn assert_same_verdict(a: &Result<Judged, BodyError>, b: &Result<Judged, BodyError>) {
    match (a, b) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.records, b.records, "a BOM changed the accepted records");
            assert_eq!(a.rejected, b.rejected, "a BOM changed the refusals");
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "a BOM changed the body error"),
        (a, b) => panic!("a BOM changed the verdict: {a:?} vs {b:?}"),
    }
}

/// Non-blank lines, array elements, or one object: the events a body holds, counted without
/// the judge's code. `None` when a JSON body does not parse as one.
fn count_events(content: &[u8], format: BodyFormat) -> Option<usize> {
    match format {
        BodyFormat::Ndjson => Some(event_lines(content).count()),
        BodyFormat::Json => match content.trim_ascii().first() {
            Some(b'[') => serde_json::from_slice::<Vec<IgnoredAny>>(content.trim_ascii())
                .ok()
                .map(|items| items.len()),
            Some(b'{') => Some(1),
            _ => None,
        },
    }
}

/// The 0-based numbers of the non-blank lines of an NDJSON body.
fn event_lines(content: &[u8]) -> impl Iterator<Item = usize> + '_ {
    content
        .split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.trim_ascii().is_empty())
        .map(|(number, _)| number)
}

fn check_body_error(error: &BodyError, content: &[u8], format: BodyFormat) {
    match error {
        BodyError::TooManyEvents { count, limit } => {
            assert_eq!(*limit, MAX_EVENTS);
            assert!(count > limit, "refused {count} events as more than {limit}");
            assert_eq!(Some(*count), count_events(content, format), "miscounted");
        }
        BodyError::Empty => assert!(content.trim_ascii().is_empty(), "non-empty body: empty"),
        BodyError::NoEvents => assert_eq!(count_events(content, format), Some(0)),
        BodyError::Malformed(_) | BodyError::NotObjectOrArray(_) => {
            assert_eq!(format, BodyFormat::Json, "NDJSON is judged line by line");
        }
    }
}

fn check_rejections(judged: &Judged, content: &[u8], format: BodyFormat, label: &str) {
    let lines: Vec<usize> = match format {
        BodyFormat::Ndjson => event_lines(content).collect(),
        BodyFormat::Json => Vec::new(),
    };
    let mut previous = None;
    for rejection in &judged.rejected {
        let index = rejection.index;
        assert!(
            previous.is_none_or(|p| p < index),
            "refusals out of order or repeated: {previous:?} then {index}"
        );
        previous = Some(index);
        let prefix = format!("{label}[{index}]");
        assert!(
            rejection.error.starts_with(&prefix),
            "refusal {index} does not name its event: {:?}",
            rejection.error
        );
        if let Some(field) = rejection.field {
            assert!(
                rejection.error.starts_with(&format!("{prefix}.{field}: ")),
                "refusal names {field} but says {:?}",
                rejection.error
            );
        }
        match format {
            BodyFormat::Ndjson => assert!(
                lines.binary_search(&index).is_ok(),
                "NDJSON refusal {index} is not the number of a non-blank line ({lines:?})"
            ),
            BodyFormat::Json => assert!(index < judged.accepted() + judged.rejected.len()),
        }
    }
}

fn check_text(field: &str, value: &str) {
    assert!(
        !value
            .chars()
            .any(|c| matches!(c, '\u{0}'..='\u{1f}' | '\u{7f}')),
        "accepted a control character in {field}: {value:?}"
    );
}

fn check_dimension(field: &str, value: &str) {
    let shown = normalize_channel(value);
    assert!(
        !RESERVED_DIMENSION_VALUES.contains(&shown.as_ref()),
        "accepted a built-in bucket name as {field}: {value:?}"
    );
}

fn check_money(field: &str, amount: f64, limits: &IntakeLimits) {
    assert!(
        amount.is_finite() && amount.abs() <= limits.money.max_amount,
        "accepted {field} = {amount}, past the bound of {}",
        limits.money.max_amount
    );
}

fn check_time(ts: i64, limits: &IntakeLimits) {
    assert!(
        (limits.earliest_ts_ms..=NOW_MS + limits.future_tolerance_ms).contains(&ts),
        "accepted a time outside the accepted range: {ts}"
    );
}

fn check_record(record: &LogRecord, limits: &IntakeLimits) {
    match record {
        LogRecord::Event(event) => {
            check_time(event.ts.0, limits);
            if let Some(value) = event.value {
                check_money("value", value, limits);
            }
            let texts = [
                ("event_id", &event.event_id),
                ("currency", &event.currency),
                ("order_id", &event.order_id),
                ("channel", &event.channel),
                ("campaign", &event.campaign),
                ("utm_source", &event.utm_source),
                ("utm_medium", &event.utm_medium),
                ("utm_campaign", &event.utm_campaign),
                ("utm_content", &event.utm_content),
                ("utm_term", &event.utm_term),
                ("gclid", &event.gclid),
                ("fbclid", &event.fbclid),
                ("user_agent", &event.user_agent),
                ("device", &event.device),
                ("region", &event.region),
                ("page", &event.page),
                ("referrer", &event.referrer),
                ("product_id", &event.product_id),
            ];
            for (field, value) in texts {
                if let Some(value) = value {
                    check_text(field, value);
                }
            }
            if let Some(channel) = &event.channel {
                check_dimension("channel", channel);
            }
            // The campaign dimension (campaign, else utm_campaign) is the built-in `(none)`
            // only when the event names no campaign at all.
            let campaign = campaign_of(event);
            if campaign == NO_CAMPAIGN || RESERVED_DIMENSION_VALUES.contains(&campaign) {
                let named =
                    |field: &Option<String>| field.as_deref().is_some_and(|v| !v.trim().is_empty());
                assert!(
                    !named(&event.campaign) && !named(&event.utm_campaign),
                    "a campaign the client named reads as the built-in {campaign:?}"
                );
            }
        }
        LogRecord::Spend(spend) => {
            check_time(spend.ts.0, limits);
            check_money("amount", spend.amount, limits);
            check_text("channel", &spend.channel);
            check_dimension("channel", &spend.channel);
            for (field, value) in [
                ("campaign", &spend.campaign),
                ("currency", &spend.currency),
                ("source", &spend.source),
            ] {
                if let Some(value) = value {
                    check_text(field, value);
                }
            }
            if let Some(campaign) = &spend.campaign {
                check_dimension("campaign", campaign);
            }
        }
    }
}

/// The accepted records go through the log's batch codec and the pipeline unharmed.
fn check_downstream(records: &[LogRecord]) {
    if records.is_empty() {
        return;
    }
    let batch = encode_batch(records, NOW_MS, 1);
    match decode_batch(&batch) {
        Ok((header, decoded)) => {
            assert_eq!(header.count as usize, records.len());
            assert_eq!(decoded, records, "the log changed accepted records");
        }
        Err(e) => panic!("a batch of accepted records does not decode: {e}"),
    }
    let mut pipeline = Pipeline::new(PipelineConfig::default(), None);
    for (offset, record) in (0u64..).zip(records) {
        pipeline.process(offset, record);
    }
    let deltas = pipeline.take_deltas();
    let events = records
        .iter()
        .filter(|r| matches!(r, LogRecord::Event(_)))
        .count() as u64;
    let counters = pipeline.counters();
    assert_eq!(counters.events, events, "the pipeline miscounted events");
    assert_eq!(
        counters.spend_records,
        records.len() as u64 - events,
        "the pipeline miscounted spend records"
    );
    assert!(
        events == 0 || !deltas.rows.is_empty(),
        "events were processed but no KPI row changed"
    );
}
