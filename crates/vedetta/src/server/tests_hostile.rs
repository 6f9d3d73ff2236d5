//! Hostile intake over HTTP (issue 8, point 6), tested with the router as a value: each
//! hostile event travels in a body with good ones, is refused alone with its field named or
//! counted correctly, the good ones are counted exactly once, and the server answers
//! normally afterwards — queries over the windows the hostile events aimed at included.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use axum::http::StatusCode;
use serde_json::Value;

use super::test_support::{TestServer, server};

impl TestServer {
    async fn post_ndjson(&self, lines: &[String]) -> (StatusCode, Value) {
        self.post("application/x-ndjson", lines.join("\n")).await
    }

    /// Every event of the day so far, at 1m by every dimension: the query a hostile
    /// dimension value used to break.
    async fn kpis(&self) -> Value {
        let (status, body) = self
            .get("/v1/kpis?granularity=1m&last=1d&group_by=channel,campaign,device,region")
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }
}

fn now_ms() -> i64 {
    crate::clock::SystemClock.now_ms()
}

/// One event line with a raw JSON fragment spliced in (escapes stay as written).
fn event(n: usize, extra: &str) -> String {
    format!(
        r#"{{"udid":"hostile-{n}","type":"purchase","ts":{},"event_id":"h-{n}"{extra}}}"#,
        now_ms() - 60_000
    )
}

#[tokio::test]
async fn hostile_events_are_refused_alone_and_the_rest_is_counted_exactly() {
    let s = server();
    let long_campaign = "x".repeat(10_000);
    // (line, the field its refusal must name, or None when it must be accepted)
    let cases: Vec<(String, Option<&str>)> = vec![
        // Control characters, U+001F (the old key separator) first, in dimension fields and
        // in others.
        (event(0, r#","campaign":"a\u001fb""#), Some("campaign")),
        (event(1, r#","channel":"so\u001fcial""#), Some("channel")),
        (
            event(2, r#","utm_campaign":"\u0000""#),
            Some("utm_campaign"),
        ),
        (event(3, r#","page":"/a\u007fb""#), Some("page")),
        (event(4, r#","region":"Lazio\n1""#), Some("region")),
        (event(5, r#","device":"mob\u0007ile""#), Some("device")),
        // Lone surrogates in escapes.
        (event(6, r#","campaign":"\ud800""#), Some("campaign")),
        (event(7, r#","order_id":"x\udc00""#), Some("order_id")),
        // A 10,000-character campaign.
        (
            event(8, &format!(r#","campaign":"{long_campaign}""#)),
            Some("campaign"),
        ),
        // Money at the edges: refused above the bound, exact below it.
        (event(9, r#","value":1e300"#), Some("value")),
        (event(10, r#","value":-0"#), None),
        (event(11, r#","value":1e-300"#), None),
        (event(12, r#","value":0.0000001"#), None),
        (event(13, r#","value":10000000"#), None),
        // Event times at the ends of i64 milliseconds.
        (
            format!(r#"{{"udid":"u","type":"lead","ts":{}}}"#, i64::MAX),
            Some("ts"),
        ),
        (
            format!(r#"{{"udid":"u","type":"lead","ts":{}}}"#, i64::MIN),
            Some("ts"),
        ),
        // Built-in bucket names.
        (event(16, r#","campaign":"(none)""#), Some("campaign")),
        // Right-to-left marks and markup are data: kept.
        (event(17, r#","campaign":"\u202esaldi\u200f <b>""#), None),
    ];
    let lines: Vec<String> = cases.iter().map(|(line, _)| line.clone()).collect();
    let (status, answer) = s.post_ndjson(&lines).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let rejected = answer["rejected"].as_array().unwrap();
    let expected_refusals: Vec<(usize, &str)> = cases
        .iter()
        .enumerate()
        .filter_map(|(i, (_, field))| field.map(|f| (i, f)))
        .collect();
    assert_eq!(rejected.len(), expected_refusals.len(), "{answer}");
    for (refusal, (index, field)) in rejected.iter().zip(&expected_refusals) {
        assert_eq!(refusal["index"], *index, "{refusal}");
        let error = refusal["error"].as_str().unwrap();
        assert!(
            error.starts_with(&format!("events[{index}].{field}: ")),
            "case {index}: {error}"
        );
        assert!(error.len() < 400, "an error must not echo a huge value");
    }
    let accepted = cases.len() - expected_refusals.len();
    assert_eq!(answer["accepted"], accepted, "{answer}");

    // Counted exactly: five purchases, whose revenue is the 10,000,000 one (the tiny values
    // round to zero micro-units, -0 is 0).
    s.processed().await;
    let kpis = s.kpis().await;
    assert_eq!(kpis["totals"]["conversions"], accepted, "{kpis}");
    assert_eq!(kpis["totals"]["revenue"], 10_000_000.0, "{kpis}");
    let campaigns: Vec<&str> = kpis["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["campaign"].as_str().unwrap())
        .collect();
    assert!(
        campaigns.contains(&"\u{202e}saldi\u{200f} <b>"),
        "{campaigns:?}"
    );

    // Healthy afterwards: liveness, a good event, and the same query.
    assert_eq!(s.get("/healthz").await.0, StatusCode::OK);
    let (status, answer) = s.post_ndjson(&[event(100, "")]).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    s.processed().await;
    assert_eq!(s.kpis().await["totals"]["conversions"], accepted + 1);
}

#[tokio::test]
async fn a_body_of_only_hostile_events_is_a_400_and_stores_nothing() {
    let s = server();
    let (status, answer) = s
        .post_ndjson(&[
            event(0, r#","campaign":"\u001f""#),
            event(1, r#","value":1e300"#),
        ])
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["accepted"], 0);
    let (_, status) = s.get("/v1/status").await;
    assert_eq!(status["log_end_offset"], 0, "{status}");
}
