#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::privacy::{PseudonymKey, Pseudonymizer};
use crate::record::{EventKind, StoredEvent};

const NOW: i64 = 1_764_000_000_000; // 2025-11-24T16:00:00Z

fn pseudonymizer() -> Pseudonymizer {
    Pseudonymizer::new(PseudonymKey::from_bytes(1, &[42; 32]).unwrap(), vec![])
}

fn judge_with(body: &str, format: BodyFormat, limits: &IntakeLimits) -> Result<Judged, BodyError> {
    let p = pseudonymizer();
    let ctx = IntakeContext {
        now_ms: NOW,
        pseudonymizer: &p,
        limits,
    };
    judge_events(body.as_bytes(), format, &ctx)
}

fn judge(body: &str, format: BodyFormat) -> Result<Judged, BodyError> {
    judge_with(body, format, &IntakeLimits::default())
}

fn only_error(body: &str) -> String {
    let judged = judge(body, BodyFormat::Json).unwrap();
    assert!(judged.records.is_empty(), "unexpectedly accepted: {body}");
    assert_eq!(judged.rejected.len(), 1);
    judged.rejected[0].error.clone()
}

fn event(judged: &Judged, i: usize) -> &StoredEvent {
    match &judged.records[i] {
        LogRecord::Event(e) => e,
        other => panic!("not an event: {other:?}"),
    }
}

const GOOD: &str =
    r#"{"udid":"u1","type":"purchase","ts":"2025-11-24T15:59:00.123Z","value":19.9}"#;

#[test]
fn accepts_a_full_event_and_pseudonymizes_it() {
    let body = r#"{"udid":"user-42","type":"purchase","ts":"2025-11-24T15:59:00.123+01:00",
        "event_id":"e-1","value":49.5,"currency":"eur","order_id":"A-7","channel":"social",
        "campaign":"saldi","utm_source":"facebook","user_agent":"Mozilla/5.0 (iPhone)",
        "ip":"93.44.12.201","region":"Lombardia","page":"/checkout",
        "consent":{"analytics":true,"marketing":false,"other":true},"properties":{"coupon":"X"}}"#;
    let judged = judge(body, BodyFormat::Json).unwrap();
    assert!(judged.rejected.is_empty(), "{:?}", judged.rejected);
    let e = event(&judged, 0);
    assert_eq!(e.user, pseudonymizer().pseudonym("user-42"));
    assert_eq!(e.kind, EventKind::Purchase);
    assert_eq!(e.ts.0, 1_763_996_340_123);
    assert_eq!(e.value, Some(49.5));
    assert_eq!(e.currency.as_deref(), Some("EUR"));
    assert_eq!(e.ip_network.unwrap().to_string(), "93.44.12.0");
    assert_eq!(e.consent.analytics, Some(true));
    assert_eq!(e.consent.marketing, Some(false));
    assert_eq!(e.properties.as_deref(), Some(r#"{"coupon":"X"}"#));
    // The clear udid appears nowhere in the stored record.
    assert!(!format!("{e:?}").contains("user-42"));
}

#[test]
fn accepts_italian_aliases_and_epoch_millis() {
    let body = r#"{"UDID":"u","tipo":"acquisto","tempo":1763996340123,"valore":10}"#;
    let judged = judge(body, BodyFormat::Json).unwrap();
    let e = event(&judged, 0);
    assert_eq!(e.kind, EventKind::Purchase);
    assert_eq!(e.ts.0, 1_763_996_340_123);
    assert_eq!(e.value, Some(10.0));
}

#[test]
fn names_the_field_and_the_bad_value() {
    assert_eq!(
        only_error(r#"{"udid":"u","type":"lead","ts":"ieri"}"#),
        r#"events[0].ts: expected RFC 3339 timestamp or epoch milliseconds, got "ieri""#
    );
    assert_eq!(
        only_error(r#"{"udid":"u","type":"lead","tempo":"ieri"}"#),
        r#"events[0].tempo: expected RFC 3339 timestamp or epoch milliseconds, got "ieri""#
    );
    assert_eq!(
        only_error(r#"{"udid":"u","type":"lead","ts":1763996340123,"value":"12.5"}"#),
        r#"events[0].value: expected a number ≥ 0, got "12.5""#
    );
    assert_eq!(
        only_error(r#"{"udid":"u","type":"lead","ts":1763996340123,"value":-1}"#),
        "events[0].value: must be ≥ 0, got -1"
    );
    assert_eq!(
        only_error(r#"{"udid":"u","type":"lead","ts":1763996340123,"value":1e400}"#),
        "events[0].value: number 1e400 is out of range"
    );
    assert_eq!(
        only_error(r#"{"type":"lead","ts":1763996340123}"#),
        "events[0].udid: missing required field"
    );
    assert_eq!(
        only_error(r#"{"udid":"u","type":"lead"}"#),
        "events[0].ts: missing required field"
    );
    assert_eq!(
        only_error(r#"{"udid":7,"type":"lead","ts":1763996340123}"#),
        "events[0].udid: expected a string, got a number"
    );
}

#[test]
fn refuses_future_and_implausibly_old_timestamps() {
    let future = only_error(r#"{"udid":"u","type":"lead","ts":"2030-01-01T00:00:00Z"}"#);
    assert!(
        future.starts_with(
            "events[0].ts: 2030-01-01T00:00:00.000Z is more than 5 minutes in the future"
        ),
        "{future}"
    );
    // Four minutes ahead is within tolerance (clients' clocks drift).
    let near = format!(r#"{{"udid":"u","type":"lead","ts":{}}}"#, NOW + 240_000);
    assert_eq!(judge(&near, BodyFormat::Json).unwrap().records.len(), 1);
    let seconds = only_error(r#"{"udid":"u","type":"lead","ts":1763996340}"#);
    assert!(seconds.contains("epoch seconds?"), "{seconds}");
    let fraction = only_error(r#"{"udid":"u","type":"lead","ts":1763996340.5}"#);
    assert!(fraction.contains("whole number"), "{fraction}");
}

#[test]
fn duplicate_keys_and_alias_collisions_are_refused() {
    assert_eq!(
        only_error(r#"{"udid":"a","udid":"b","type":"lead","ts":1763996340123}"#),
        "events[0].udid: appears more than once in the object"
    );
    assert_eq!(
        only_error(r#"{"udid":"a","UDID":"b","type":"lead","ts":1763996340123}"#),
        "events[0].UDID: appears more than once (`UDID` is an alias of `udid`)"
    );
}

#[test]
fn unknown_fields_are_refused_with_a_pointer_to_properties() {
    let error = only_error(r#"{"udid":"a","type":"lead","ts":1763996340123,"chanel":"x"}"#);
    assert_eq!(
        error,
        r#"events[0].(unknown): unknown field "chanel"; custom data goes under `properties`"#
    );
}

#[test]
fn a_bad_event_never_takes_good_ones_down() {
    let body = format!("[{GOOD},{{\"udid\":\"u\"}},{GOOD},42]");
    let judged = judge(&body, BodyFormat::Json).unwrap();
    assert_eq!(judged.records.len(), 2);
    let errors: Vec<_> = judged
        .rejected
        .iter()
        .map(|r| (r.index, r.error.as_str()))
        .collect();
    assert_eq!(
        errors,
        vec![
            (1, "events[1].type: missing required field"),
            (
                3,
                "events[3]: invalid JSON: invalid type: integer `42`, expected a JSON object at line 1 column 2"
            ),
        ]
    );
}

#[test]
fn ndjson_lines_are_judged_alone_even_when_malformed() {
    let body = format!("{GOOD}\n{{\"udid\": truncated\n\n{GOOD}\r\n\u{0}garbage\n{GOOD}");
    let judged = judge(&body, BodyFormat::Ndjson).unwrap();
    assert_eq!(judged.records.len(), 3);
    let indices: Vec<_> = judged.rejected.iter().map(|r| r.index).collect();
    assert_eq!(indices, vec![1, 4], "index is the 0-based line number");
    assert!(
        judged.rejected[0]
            .error
            .starts_with("events[1]: invalid JSON")
    );
}

#[test]
fn whole_body_errors() {
    assert_eq!(judge("", BodyFormat::Json).unwrap_err(), BodyError::Empty);
    assert_eq!(
        judge(" \n ", BodyFormat::Ndjson).unwrap_err(),
        BodyError::Empty
    );
    assert_eq!(
        judge("[]", BodyFormat::Json).unwrap_err(),
        BodyError::NoEvents
    );
    assert_eq!(
        judge("42", BodyFormat::Json).unwrap_err(),
        BodyError::NotObjectOrArray("a number")
    );
    for malformed in [
        format!("[{GOOD}"),              // truncated
        format!("[{GOOD}] trailing"),    // trailing garbage
        format!("{GOOD} {GOOD}"),        // two objects under application/json
        "[{\"udid\": NaN}]".to_string(), // not JSON
        "[{\"value\": Infinity}]".to_string(),
    ] {
        assert!(
            matches!(
                judge(&malformed, BodyFormat::Json),
                Err(BodyError::Malformed(_))
            ),
            "{malformed}"
        );
    }
}

#[test]
fn invalid_utf8_is_refused_not_mangled() {
    let mut body = br#"{"udid":"u","type":"lead","ts":1763996340123,"page":"/"#.to_vec();
    body.extend_from_slice(&[0xff, 0xfe]);
    body.extend_from_slice(br#""}"#);
    let p = pseudonymizer();
    let limits = IntakeLimits::default();
    let ctx = IntakeContext {
        now_ms: NOW,
        pseudonymizer: &p,
        limits: &limits,
    };
    let err = judge_events(&body, BodyFormat::Json, &ctx).unwrap_err();
    assert!(
        matches!(err, BodyError::Malformed(ref m) if m.contains("unicode")),
        "{err}"
    );
    let judged = judge_events(&body, BodyFormat::Ndjson, &ctx).unwrap();
    assert_eq!(judged.rejected.len(), 1);
}

#[test]
fn too_many_events_is_a_size_error() {
    let limits = IntakeLimits {
        max_events_per_request: 3,
        ..IntakeLimits::default()
    };
    let body = [GOOD; 4].join("\n");
    let err = judge_with(&body, BodyFormat::Ndjson, &limits).unwrap_err();
    assert!(err.is_too_large());
    assert_eq!(
        err.to_string(),
        "4 events in one request; at most 3 are accepted, split the batch"
    );
}

#[test]
fn huge_strings_and_deep_properties_are_refused_cheaply() {
    let huge = "x".repeat(1 << 20);
    let error = only_error(&format!(
        r#"{{"udid":"u","type":"lead","ts":1763996340123,"page":"{huge}"}}"#
    ));
    assert_eq!(
        error,
        "events[0].page: string of 1048576 characters exceeds the limit of 2048"
    );
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let error = only_error(&format!(
        r#"{{"udid":"u","type":"lead","ts":1763996340123,"properties":{{"a":{deep}}}}}"#
    ));
    assert!(
        error.starts_with("events[0].properties: object of 20006 bytes exceeds"),
        "{error}"
    );
    let deep_but_small = format!("{}{}", "[".repeat(100), "]".repeat(100));
    let error = only_error(&format!(
        r#"{{"udid":"u","type":"lead","ts":1763996340123,"properties":{{"a":{deep_but_small}}}}}"#
    ));
    assert_eq!(
        error,
        "events[0].properties: nested 101 levels deep; at most 32 are accepted"
    );
}

#[test]
fn errors_never_echo_personal_fields() {
    let error = only_error(r#"{"udid":"mario.rossi@example.it","type":"lead","ts":"x"}"#);
    assert!(!error.contains("mario"), "{error}");
    let error = only_error(r#"{"udid":"u","type":"lead","ts":1763996340123,"ip":"10.1.2.3.4"}"#);
    assert!(!error.contains("10.1.2"), "{error}");
    let judged = judge(
        r#"{"udid":"mario.rossi@example.it","ip":"93.1.2.3","type":"lead","ts":"x"}"#,
        BodyFormat::Json,
    )
    .unwrap();
    let redacted = judged.rejected[0].redacted.clone().unwrap();
    assert!(!redacted.contains("mario"), "{redacted}");
    assert!(!redacted.contains("93.1.2.3"), "{redacted}");
    assert!(redacted.contains("pseudonym:"), "{redacted}");
}

#[test]
fn hostile_strings_are_kept_exactly_or_refused_never_mangled() {
    // Markup, quotes, emoji and right-to-left marks are data: kept as sent.
    let body = r#"{"udid":"u","type":"lead","ts":1763996340123,"page":"/<script>\"'\ud83d\ude00","campaign":"\u202eevil\u200f"}"#;
    let judged = judge(body, BodyFormat::Json).unwrap();
    let e = event(&judged, 0);
    assert_eq!(e.page.as_deref(), Some("/<script>\"'😀"));
    assert_eq!(e.campaign.as_deref(), Some("\u{202e}evil\u{200f}"));
}

#[test]
fn control_characters_are_refused_in_every_string_field() {
    // U+001F once joined the dimensions of a KPI row key: one such campaign broke every
    // query over its window. Every string field refuses C0 controls and DEL, naming itself.
    let strings = [
        "udid",
        "type",
        "event_id",
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
        "region",
        "page",
        "referrer",
        "product_id",
    ];
    for field in strings {
        for control in ["\\u001f", "\\u0000", "\\n", "\\u007f", "\u{7f}"] {
            let mut object =
                serde_json::json!({"udid": "u", "type": "lead", "ts": 1763996340123i64});
            object[field] = serde_json::Value::String("x".into());
            let text = object.to_string().replace(
                &format!("\"{field}\":\"x\""),
                &format!("\"{field}\":\"a{control}b\""),
            );
            let error = only_error(&text);
            assert!(
                error.starts_with(&format!(
                    "events[0].{field}: contains the control character U+00"
                )),
                "{field} with {control}: {error}"
            );
        }
    }
    // Surrounding white space, tabs and newlines included, is trimmed rather than refused.
    let judged = judge(
        r#"{"udid":"u","type":"lead","ts":1763996340123,"campaign":"\tsaldi\n"}"#,
        BodyFormat::Json,
    )
    .unwrap();
    assert_eq!(event(&judged, 0).campaign.as_deref(), Some("saldi"));
}

#[test]
fn lone_surrogates_are_refused_naming_the_field() {
    let error =
        only_error(r#"{"udid":"u","type":"lead","ts":1763996340123,"campaign":"a\ud800b"}"#);
    assert!(
        error.starts_with("events[0].campaign: invalid string"),
        "{error}"
    );
    let error = only_error(r#"{"udid":"\udc00","type":"lead","ts":1763996340123}"#);
    assert!(
        error.starts_with("events[0].udid: expected a string"),
        "{error}"
    );
}

#[test]
fn built_in_bucket_names_are_refused_as_client_values() {
    for (field, value) in [
        ("campaign", "(none)"),
        ("campaign", "(other)"),
        ("utm_campaign", "(None)"),
        ("channel", "(OTHER)"),
        ("channel", " (other) "),
    ] {
        let body =
            format!(r#"{{"udid":"u","type":"lead","ts":1763996340123,"{field}":"{value}"}}"#);
        let error = only_error(&body);
        assert!(
            error.starts_with(&format!("events[0].{field}: ")) && error.contains("built-in bucket"),
            "{field}={value}: {error}"
        );
    }
    // A name that merely contains one is fine.
    let judged = judge(
        r#"{"udid":"u","type":"lead","ts":1763996340123,"campaign":"saldi (none)"}"#,
        BodyFormat::Json,
    )
    .unwrap();
    assert_eq!(judged.records.len(), 1);
}

#[test]
fn a_leading_byte_order_mark_is_accepted() {
    for format in [BodyFormat::Json, BodyFormat::Ndjson] {
        let body = format!("\u{feff}{GOOD}");
        let judged = judge(&body, format).unwrap();
        assert_eq!(judged.records.len(), 1, "{format:?}: {:?}", judged.rejected);
    }
    let array = format!("\u{feff}[{GOOD},{GOOD}]");
    assert_eq!(judge(&array, BodyFormat::Json).unwrap().records.len(), 2);
}

#[test]
fn money_is_bounded_per_record() {
    // 1e300 was accepted, saturated to i64::MAX micro-units and wrapped the day's revenue.
    let error = only_error(r#"{"udid":"u","type":"purchase","ts":1763996340123,"value":1e300}"#);
    assert_eq!(
        error,
        "events[0].value: 1e300 is over the limit of 10000000 EUR per record (ingest.max_amount)"
    );
    let at_limit = judge(
        r#"[{"udid":"u","type":"purchase","ts":1763996340123,"value":10000000},
            {"udid":"u","type":"purchase","ts":1763996340123,"valore":-0},
            {"udid":"u","type":"purchase","ts":1763996340123,"value":1e-300},
            {"udid":"u","type":"purchase","ts":1763996340123,"value":0.0000001}]"#,
        BodyFormat::Json,
    )
    .unwrap();
    assert!(at_limit.rejected.is_empty(), "{:?}", at_limit.rejected);
    let values: Vec<_> = (0..4).map(|i| event(&at_limit, i).value).collect();
    assert_eq!(values, [Some(1e7), Some(0.0), Some(1e-300), Some(1e-7)]);

    // Converted amounts are bounded in the reporting currency.
    let mut limits = IntakeLimits::default();
    limits.money.currency_rates.insert("USD".into(), 0.92);
    limits.money.currency_rates.insert("JPY".into(), 0.006);
    let judged = judge_with(
        r#"[{"udid":"u","type":"purchase","ts":1763996340123,"value":10800000,"currency":"USD"},
            {"udid":"u","type":"purchase","ts":1763996340123,"value":1000000000,"currency":"JPY"},
            {"udid":"u","type":"purchase","ts":1763996340123,"value":20000000,"currency":"XYZ"}]"#,
        BodyFormat::Json,
        &limits,
    )
    .unwrap();
    assert_eq!(judged.records.len(), 2, "{:?}", judged.rejected);
    assert_eq!(
        judged.rejected[0].error,
        "events[2].value: 20000000 XYZ is over the limit of 10000000 per record (ingest.max_amount)"
    );
    let error = judge_with(
        r#"{"udid":"u","type":"purchase","ts":1763996340123,"value":2000000000,"currency":"JPY"}"#,
        BodyFormat::Json,
        &limits,
    )
    .unwrap()
    .rejected[0]
        .error
        .clone();
    assert_eq!(
        error,
        "events[0].value: 2000000000 JPY is 12000000.00 EUR, over the limit of 10000000 EUR per record (ingest.max_amount)"
    );
}

#[test]
fn spend_records_are_judged_the_same_way() {
    let p = pseudonymizer();
    let limits = IntakeLimits::default();
    let ctx = IntakeContext {
        now_ms: NOW,
        pseudonymizer: &p,
        limits: &limits,
    };
    let body = r#"[{"ts":"2025-11-24T15:00:00Z","channel":"paid_search","campaign":"saldi","amount":12.5,"currency":"EUR","source":"google_ads"},
                  {"ts":"2025-11-24T15:00:00Z","channel":"paid_search","amount":-3},
                  {"ts":"2025-11-24T15:00:00Z","channel":"paid_search","amount":1e300},
                  {"ts":"2025-11-24T15:00:00Z","channel":"(other)","amount":1},
                  {"ts":"2025-11-24T15:00:00Z","channel":"x","campaign":"a\u001fb","amount":1}]"#;
    let judged = judge_spend(body.as_bytes(), BodyFormat::Json, &ctx).unwrap();
    assert_eq!(judged.records.len(), 1);
    let errors: Vec<_> = judged.rejected.iter().map(|r| r.error.as_str()).collect();
    assert_eq!(errors[0], "costs[1].amount: must be ≥ 0, got -3");
    assert_eq!(
        errors[1],
        "costs[2].amount: 1e300 is over the limit of 10000000 EUR per record (ingest.max_amount)"
    );
    assert!(
        errors[2].starts_with("costs[3].channel: \"(other)\" is the name of a built-in bucket"),
        "{}",
        errors[2]
    );
    assert!(
        errors[3].starts_with("costs[4].campaign: contains the control character U+001F"),
        "{}",
        errors[3]
    );
}

fn judge_browser(body: &str, browser: &browser::BrowserContext<'_>) -> Judged {
    let p = pseudonymizer();
    let limits = IntakeLimits::default();
    let ctx = IntakeContext {
        now_ms: NOW,
        pseudonymizer: &p,
        limits: &limits,
    };
    judge_browser_events(body.as_bytes(), BodyFormat::Json, &ctx, browser).unwrap()
}

#[test]
fn a_browser_request_supplies_address_agent_and_clock_the_page_cannot_know() {
    let browser = browser::BrowserContext {
        ip: Some("93.44.10.77".parse().unwrap()),
        user_agent: Some("Mozilla/5.0 (iPhone)"),
        anonymous_udid: "anon:00",
        // The page's clock is ten minutes behind the server's.
        clock_offset_ms: 600_000,
    };
    // A ts ten minutes "in the past" by the page's clock is now by the server's; a ts the
    // page thinks is 4 minutes ahead would be 14 minutes in the future uncorrected.
    let page_now = NOW - 600_000;
    let body = format!(
        r#"[{{"udid":"u1","type":"page_view","ts":{page_now},"ip":"1.2.3.4","user_agent":"forged"}},
            {{"udid":"u1","type":"page_view","ts":{}}}]"#,
        page_now + 240_000
    );
    let judged = judge_browser(&body, &browser);
    assert!(judged.rejected.is_empty(), "{:?}", judged.rejected);
    let first = event(&judged, 0);
    assert_eq!(first.ts.0, NOW);
    assert_eq!(event(&judged, 1).ts.0, NOW + 240_000);
    assert_eq!(first.ip_network, Some("93.44.10.0".parse().unwrap()));
    assert_eq!(first.user_agent.as_deref(), Some("Mozilla/5.0 (iPhone)"));
    assert_eq!(first.user, pseudonymizer().pseudonym("u1"));
    // A sent consent is kept when the page stores an id.
    assert_eq!(first.consent.analytics, None);
}

#[test]
fn a_cookieless_browser_event_gets_the_anonymous_id_and_refused_consent() {
    let browser = browser::BrowserContext {
        ip: None,
        user_agent: None,
        anonymous_udid: "anon:abc",
        clock_offset_ms: 0,
    };
    let body = format!(
        r#"{{"type":"page_view","ts":{NOW},"consent":{{"analytics":true,"marketing":true}}}}"#
    );
    let judged = judge_browser(&body, &browser);
    let e = event(&judged, 0);
    assert_eq!(e.user, pseudonymizer().pseudonym("anon:abc"));
    assert_eq!(e.consent.analytics, Some(false));
    assert_eq!(e.consent.marketing, Some(false));
    assert_eq!(e.ip_network, None);
    // Outside the browser path a missing udid is still an error naming the field.
    let plain = judge(
        &format!(r#"{{"type":"page_view","ts":{NOW}}}"#),
        BodyFormat::Json,
    )
    .unwrap();
    assert_eq!(plain.rejected.len(), 1);
    assert!(
        plain.rejected[0]
            .error
            .contains("udid: missing required field"),
        "{:?}",
        plain.rejected
    );
}

// --- Identity (`email`, `crm_id`) and consent events (issue 12) ---

#[test]
fn identity_is_returned_apart_and_never_in_the_record() {
    let body = r#"{"udid":"u1","type":"purchase","ts":"2025-11-24T15:59:00Z","value":10,
        "email":"Anna.Rossi@example.it","crm_id":"AC-991","consent":{"marketing":true}}"#;
    let judged = judge(body, BodyFormat::Json).unwrap();
    assert!(judged.rejected.is_empty(), "{:?}", judged.rejected);
    assert_eq!(judged.accepted(), 1);
    let record = format!("{:?}", judged.records[0]);
    assert!(!record.contains("Anna"), "{record}");
    assert!(!record.contains("AC-991"), "{record}");
    let encoded = crate::record::encode_batch(&judged.records, NOW, 1);
    assert!(
        !encoded.windows(4).any(|w| w == b"Anna" || w == b"AC-9"),
        "identity reached the log encoding"
    );
    assert_eq!(judged.identities.len(), 1);
    let claim = &judged.identities[0];
    assert_eq!(claim.user, pseudonymizer().pseudonym("u1"));
    assert_eq!(claim.email.as_deref(), Some("Anna.Rossi@example.it"));
    assert_eq!(claim.crm_id.as_deref(), Some("AC-991"));
    assert_eq!(claim.marketing, Some(true));
    assert_eq!(claim.ts.0, 1_763_999_940_000);
    let debug = format!("{claim:?}");
    assert!(
        !debug.contains("Anna") && !debug.contains("AC-991"),
        "{debug}"
    );
}

#[test]
fn identity_without_a_consent_field_is_still_returned_for_the_store_to_decide() {
    let body = format!(
        "[{GOOD},{}]",
        r#"{"udid":"u2","type":"page_view","ts":"2025-11-24T15:59:00Z","crm_id":4711}"#
    );
    let judged = judge(&body, BodyFormat::Json).unwrap();
    assert_eq!(judged.records.len(), 2);
    // GOOD carries neither identity nor a marketing decision: no claim for it.
    assert_eq!(judged.identities.len(), 1);
    assert_eq!(judged.identities[0].index, 1);
    assert_eq!(judged.identities[0].crm_id.as_deref(), Some("4711"));
    assert_eq!(judged.identities[0].marketing, None);
}

#[test]
fn malformed_identity_is_refused_naming_the_field_without_echoing_it() {
    let base = r#""udid":"u1","type":"lead","ts":"2025-11-24T15:59:00Z""#;
    let cases = [
        (
            r#""email":"anna.example.it""#,
            "events[0].email: an e-mail address has exactly one `@`",
        ),
        (
            r#""email":"a@b@example.it""#,
            "events[0].email: an e-mail address has exactly one `@`",
        ),
        (
            r#""email":"anna@localhost""#,
            "events[0].email: an e-mail address's domain has a dot inside it, like example.it",
        ),
        (
            r#""email":"@example.it""#,
            "events[0].email: an e-mail address needs a name before the `@` and a domain after it",
        ),
        (
            r#""email":"an na@example.it""#,
            "events[0].email: an e-mail address has no white space or control characters in it",
        ),
        (
            r#""email":42"#,
            "events[0].email: expected a string, got a number",
        ),
        (
            r#""crm_id":"ab cd""#,
            "events[0].crm_id: an identifier has no white space in it",
        ),
        (
            r#""crm_id":-3"#,
            "events[0].crm_id: expected a string or a whole number, got a number",
        ),
        (
            r#""crm_id":{"a":1}"#,
            "events[0].crm_id: expected a string or a whole number, got an object",
        ),
    ];
    for (field, expected) in cases {
        let error = only_error(&format!("{{{base},{field}}}"));
        assert_eq!(error, expected, "for {field}");
    }
    let long_email = format!("{}@example.it", "a".repeat(250));
    let error = only_error(&format!(r#"{{{base},"email":"{long_email}"}}"#));
    assert_eq!(
        error,
        "events[0].email: string of 261 characters exceeds the limit of 254"
    );
    let error = only_error(&format!(r#"{{{base},"crm_id":"{}"}}"#, "x".repeat(129)));
    assert_eq!(
        error,
        "events[0].crm_id: string of 129 characters exceeds the limit of 128"
    );
    let error = only_error(&format!(r#"{{{base},"email":"anna\u0007@example.it"}}"#));
    assert!(
        error.starts_with("events[0].email: contains the control character U+0007"),
        "{error}"
    );
}

#[test]
fn a_rejected_event_has_its_identity_redacted_in_the_quarantine() {
    let body =
        r#"{"udid":"u1","type":"lead","ts":"ieri","email":"anna@example.it","crm_id":"AC-991"}"#;
    let judged = judge(body, BodyFormat::Json).unwrap();
    assert_eq!(judged.rejected.len(), 1);
    assert!(judged.identities.is_empty());
    let redacted = judged.rejected[0].redacted.clone().unwrap();
    assert!(!redacted.contains("anna"), "{redacted}");
    assert!(!redacted.contains("AC-991"), "{redacted}");
    assert!(redacted.contains(r#""email":"<redacted>""#), "{redacted}");
    assert!(redacted.contains(r#""crm_id":"<redacted>""#), "{redacted}");
}

#[test]
fn a_consent_event_yields_a_decision_and_no_record() {
    let body = r#"[{"udid":"u1","type":"consent","ts":"2025-11-24T15:59:00Z","consent":{"marketing":false}},
        {"udid":"u2","type":"Consent","ts":"2025-11-24T15:59:00Z","consent":true,"email":"b@example.it"}]"#;
    let judged = judge(body, BodyFormat::Json).unwrap();
    assert!(judged.rejected.is_empty(), "{:?}", judged.rejected);
    assert!(judged.records.is_empty(), "a consent event reached the log");
    assert_eq!(judged.consent_events, 2);
    assert_eq!(judged.accepted(), 2);
    assert_eq!(judged.identities[0].marketing, Some(false));
    assert_eq!(judged.identities[1].marketing, Some(true));
    assert_eq!(judged.identities[1].email.as_deref(), Some("b@example.it"));
}

#[test]
fn a_consent_event_without_a_marketing_decision_is_refused() {
    let error = only_error(
        r#"{"udid":"u1","type":"consent","ts":"2025-11-24T15:59:00Z","consent":{"analytics":true}}"#,
    );
    assert!(
        error.starts_with("events[0].consent: a consent event must say the marketing decision"),
        "{error}"
    );
}

#[test]
fn a_refund_needs_its_order_and_its_amount() {
    let body =
        r#"{"udid":"u","tipo":"rimborso","ts":1763996340123,"order_id":" 1001 ","valore":12.5}"#;
    let judged = judge(body, BodyFormat::Json).unwrap();
    let refund = event(&judged, 0);
    assert_eq!(refund.kind, EventKind::Refund);
    assert_eq!(refund.order_id.as_deref(), Some("1001"));
    assert_eq!(refund.value, Some(12.5));
    let error = only_error(r#"{"udid":"u","type":"refund","ts":1763996340123,"value":3}"#);
    assert!(error.contains("order_id: a refund must name"), "{error}");
    let error = only_error(r#"{"udid":"u","type":"refund","ts":1763996340123,"order_id":"1"}"#);
    assert!(error.contains("value: a refund must say"), "{error}");
    let error =
        only_error(r#"{"udid":"u","type":"refund","ts":1763996340123,"order_id":"1","value":-3}"#);
    assert!(error.contains("value"), "{error}");
}
