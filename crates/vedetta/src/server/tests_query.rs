//! The query side tested as values (issue 8, points 5, 6 and 10): `last=` covers the span
//! it names, every time parameter is bounded, unknown filter values and oversized queries
//! get a 4xx naming what is wrong, `/metrics` counts the scrapes whose query failed, and
//! the server answers normally after each.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::kpis::{
    KpiQuery, MAX_ANSWER_ROWS, MAX_FILTER_VALUES, MAX_QUERY_BYTES, TIME_MAX_MS, TIME_MIN_MS,
};
use super::*;
use crate::config::{Overrides, load_from};
use axum::http::StatusCode;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use vedetta_core::pipeline::windows::WindowCalendar;

use super::test_support::{TestServer, server};

impl TestServer {
    async fn post_events(&self, body: String) {
        let (status, answer) = self.post("application/x-ndjson", body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
    }

    /// Healthy after bad input: liveness answers and a plain query still works.
    async fn assert_query_healthy(&self) {
        assert_eq!(self.get("/healthz").await.0, StatusCode::OK);
        let (status, body) = self.get("/v1/kpis?granularity=1h&last=2h").await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}

fn error_of(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_default()
}

fn params(query: &[(&str, &str)]) -> HashMap<String, String> {
    query
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn rome() -> WindowCalendar {
    WindowCalendar::new(jiff::tz::TimeZone::get("Europe/Rome").unwrap())
}

fn ms(text: &str) -> i64 {
    text.parse::<jiff::Timestamp>().unwrap().as_millisecond()
}

// ------------------------------------------------------------------ last= (point 10)

#[test]
fn last_60m_by_hour_keeps_the_session_30_minutes_ago() {
    // The bug: at 10:10, `last=60m&granularity=1h` started at 09:10 and so left out the
    // 09:00 window, where the session of 09:40 is.
    let now = ms("2026-11-25T10:10:00Z");
    let query = KpiQuery::parse(
        &params(&[("granularity", "1h"), ("last", "60m")]),
        now,
        &rome(),
    )
    .unwrap();
    assert_eq!(
        query.from,
        ms("2026-11-25T09:00:00Z"),
        "the partial first hour"
    );
    assert_eq!(query.to, ms("2026-11-25T11:00:00Z"), "the current hour");
}

#[test]
fn last_covers_every_window_that_overlaps_the_span() {
    let calendar = rome();
    let parse = |granularity: &str, last: &str, now: &str| {
        let q = KpiQuery::parse(
            &params(&[("granularity", granularity), ("last", last)]),
            ms(now),
            &calendar,
        )
        .unwrap();
        (q.from, q.to)
    };
    // 24 hours at 14:25: from 14:00 yesterday (overlapped from 14:25) to the end of the
    // current hour: 25 windows, the first and the last partial.
    assert_eq!(
        parse("1h", "24h", "2026-11-25T14:25:00Z"),
        (ms("2026-11-24T14:00:00Z"), ms("2026-11-25T15:00:00Z"))
    );
    // On a window boundary the window ending at now − span does not overlap the span.
    assert_eq!(
        parse("1m", "60m", "2026-11-25T14:00:00Z"),
        (ms("2026-11-25T13:00:00Z"), ms("2026-11-25T14:01:00Z"))
    );
    // Days are calendar days of the time zone: 23:30 in Rome on 25 November is 22:30 UTC;
    // seven days back is 18 November, whose day starts at 23:00 UTC on the 17th.
    assert_eq!(
        parse("1d", "7d", "2026-11-25T22:30:00Z"),
        (ms("2026-11-17T23:00:00Z"), ms("2026-11-25T23:00:00Z"))
    );
    // The defaults are a span too: 1m without a range is `last=60m`.
    let default = KpiQuery::parse(
        &params(&[("granularity", "1m")]),
        ms("2026-11-25T14:25:30Z"),
        &calendar,
    )
    .unwrap();
    assert_eq!(
        (default.from, default.to),
        parse("1m", "60m", "2026-11-25T14:25:30Z")
    );
}

#[tokio::test]
async fn last_60m_by_hour_counts_an_event_from_30_minutes_ago() {
    let s = server();
    let now = crate::clock::SystemClock.now_ms();
    let ts = now - 30 * 60_000;
    s.post_events(format!(
        r#"{{"udid":"half-hour","type":"page_view","ts":{ts},"channel":"email"}}"#
    ))
    .await;
    s.processed().await;
    let (status, body) = s.get("/v1/kpis?granularity=1h&last=60m").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["totals"]["sessions"], 1, "{body}");
    assert_eq!(body["totals"]["events"]["page_view"], 1);
}

// ------------------------------------------------------- bounded times (points 5, 6)

#[tokio::test]
async fn from_and_to_at_their_extremes_are_a_400_naming_them_or_an_answer() {
    let s = server();
    let extremes = [
        i64::MIN.to_string(),
        i64::MAX.to_string(),
        (i64::MIN + 1).to_string(),
        (i64::MAX - 1).to_string(),
        "0".into(),
        "-1".into(),
        "99999999999999999999999".into(),
        "0000-01-01T00:00:00Z".into(),
        "0000-01-01T00:00:00+23:59".into(),
        "9999-12-31T23:59:59.999Z".into(),
        "9999-12-31T23:59:59-23:59".into(),
        "-009999-01-02T01:59:59Z".into(),
    ];
    for endpoint in ["/v1/kpis", "/v1/stream"] {
        for value in &extremes {
            for granularity in ["1m", "1h", "1d"] {
                for query in [
                    format!("from={value}"),
                    format!("to={value}"),
                    format!("from={value}&to={value}"),
                    format!("from={}&to={value}", i64::MIN),
                    format!("from={value}&to={}", i64::MAX),
                ] {
                    let uri = format!("{endpoint}?granularity={granularity}&{query}");
                    let (status, body) = s.get(&uri).await;
                    match status {
                        StatusCode::OK => {}
                        StatusCode::BAD_REQUEST => {
                            let error = error_of(&body);
                            assert!(
                                error.starts_with("from:") || error.starts_with("to:"),
                                "{uri}: {body}"
                            );
                        }
                        other => panic!("{uri}: {other} {body}"),
                    }
                }
            }
        }
    }
    // The whole supported range at once is an ordinary answer, with the bounds shown.
    let (status, body) = s
        .get(&format!(
            "/v1/kpis?granularity=1d&from={}&to={}&rollup=range",
            i64::MIN,
            i64::MAX
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["from"],
        vedetta_core::time::EventTime(TIME_MIN_MS).to_rfc3339()
    );
    assert_eq!(
        body["to"],
        vedetta_core::time::EventTime(TIME_MAX_MS).to_rfc3339()
    );
    s.assert_query_healthy().await;
}

#[tokio::test]
async fn spans_past_every_bound_saturate_instead_of_overflowing() {
    let s = server();
    for last in [
        "9223372036854775807d",
        "99999999999999999999999999999999h",
        "1s",
        "0001m",
    ] {
        for granularity in ["1m", "1h", "1d"] {
            let uri = format!("/v1/kpis?granularity={granularity}&last={last}");
            let (status, body) = s.get(&uri).await;
            assert_eq!(status, StatusCode::OK, "{uri}: {body}");
        }
    }
    for last in ["0m", "000h", "m", "-5m", "5w", "5%20m", ""] {
        let (status, body) = s.get(&format!("/v1/kpis?last={last}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{last}: {body}");
        assert!(error_of(&body).starts_with("last:"), "{body}");
    }
    s.assert_query_healthy().await;
}

// ------------------------------------------------------- filter values (point 10)

#[tokio::test]
async fn an_unknown_filter_value_is_a_400_naming_the_parameter_and_the_value() {
    let s = server();
    for (uri, parameter, value) in [
        ("/v1/kpis?region=foo", "region", "\"foo\""),
        (
            "/v1/kpis?region=Lombardia,Atlantide",
            "region",
            "\"Atlantide\"",
        ),
        ("/v1/kpis?device=smartphone", "device", "\"smartphone\""),
        ("/v1/kpis?device=", "device", "\"\""),
        ("/v1/kpis?granularity=5m", "granularity", "\"5m\""),
        ("/v1/kpis?granularity=", "granularity", "\"\""),
        ("/v1/kpis?group_by=browser", "group_by", "\"browser\""),
        ("/v1/kpis?group_by=channel,,device", "group_by", "\"\""),
        ("/v1/kpis?rollup=week", "rollup", "\"week\""),
        ("/v1/stream?region=foo", "region", "\"foo\""),
        ("/v1/stream?device=smartphone", "device", "\"smartphone\""),
    ] {
        let (status, body) = s.get(uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        let error = error_of(&body);
        assert!(
            error.starts_with(&format!("{parameter}:")),
            "{uri}: {error}"
        );
        assert!(error.contains(value), "{uri}: {error}");
    }
    // A control character in a value or a name is shown escaped, never raw.
    let (status, body) = s.get("/v1/kpis?region=a%1Fb").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).contains(r#""a\u{1f}b""#), "{body}");
    let (status, body) = s.get("/v1/kpis?col%0Aour=red").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        error_of(&body).starts_with(r#""col\nour": unknown parameter"#),
        "{body}"
    );

    // Known values in any case, region names and codes, and "unknown", are accepted.
    for uri in [
        "/v1/kpis?device=Mobile,tablet,desktop,other,unknown",
        "/v1/kpis?region=Lombardia,IT-62,aosta%20valley,unknown",
        "/v1/kpis?group_by=channel,device,channel",
        "/v1/kpis?group_by=",
    ] {
        let (status, body) = s.get(uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
    }
    // Channels and campaigns are free text: an unknown one answers empty, not 400.
    let now = crate::clock::SystemClock.now_ms();
    s.post_events(format!(
        r#"{{"udid":"u","type":"page_view","ts":{now},"channel":"email","campaign":"saldi"}}"#
    ))
    .await;
    s.processed().await;
    for uri in [
        "/v1/kpis?granularity=1m&channel=nessuno",
        "/v1/kpis?granularity=1m&campaign=nessuna",
    ] {
        let (status, body) = s.get(uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {body}");
        assert_eq!(body["rows"], Value::Array(vec![]), "{uri}");
        assert_eq!(body["totals"]["sessions"], 0, "{uri}");
    }
    let (_, body) = s.get("/v1/kpis?granularity=1m&campaign=saldi").await;
    assert_eq!(body["totals"]["sessions"], 1, "{body}");
    s.assert_query_healthy().await;
}

// --------------------------------------------------------- oversized queries (point 6)

#[tokio::test]
async fn group_by_repeated_1000_times_is_a_400() {
    let s = server();
    let query = vec!["group_by=channel"; 1000].join("&");
    for endpoint in ["/v1/kpis", "/v1/stream"] {
        let (status, body) = s.get(&format!("{endpoint}?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(
            error_of(&body).starts_with("group_by: given more than once"),
            "{body}"
        );
    }
    // Twice is already refused: which one would win is not for the server to guess.
    let (status, _) = s.get("/v1/kpis?channel=a&channel=b").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    s.assert_query_healthy().await;
}

#[tokio::test]
async fn a_filter_list_of_10000_values_is_a_400_saying_the_limit() {
    let s = server();
    // Short values, so that the list fits the query-string limit and meets this one.
    let values: Vec<String> = (0..10_000).map(|i| (i % 10).to_string()).collect();
    let (status, body) = s
        .get(&format!("/v1/kpis?campaign={}", values.join(",")))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        error_of(&body),
        format!("campaign: 10000 values; at most {MAX_FILTER_VALUES} are accepted")
    );
    // At the limit it is an ordinary (empty) answer.
    let (status, body) = s
        .get(&format!(
            "/v1/kpis?campaign={}",
            values[..MAX_FILTER_VALUES].join(",")
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    s.assert_query_healthy().await;
}

/// The bug: nothing bounded the rows of an answer. `granularity=1m` over the whole
/// supported range, grouped by every dimension, built every stored minute row in memory
/// and then as JSON (a month of traffic is millions): one GET could take the server's
/// memory. Past [`MAX_ANSWER_ROWS`] the answer is a 400 saying how to narrow it, and the
/// same rows rolled up over the range still answer.
#[tokio::test]
async fn an_answer_of_more_rows_than_the_limit_is_a_400_saying_how_to_narrow_it() {
    use vedetta_core::pipeline::kpi::KpiCounters;
    use vedetta_core::pipeline::windows::Granularity;
    use vedetta_store::{Commit, RowKey};
    let s = server();
    let rows = (0..=MAX_ANSWER_ROWS as i64)
        .map(|i| {
            (
                RowKey {
                    granularity: Granularity::Minute,
                    window_start: 60_000 * (i / 100),
                    channel: "social".into(),
                    campaign: format!("c{}", i % 100),
                    device: "mobile".into(),
                    region: "IT-25".into(),
                },
                KpiCounters {
                    sessions: 1,
                    ..KpiCounters::default()
                },
            )
        })
        .collect();
    s.state
        .kpi_store
        .commit(&Commit {
            rows,
            durable: true,
            ..Commit::default()
        })
        .unwrap();
    let all = format!("from={TIME_MIN_MS}&to={TIME_MAX_MS}&granularity=1m&group_by=campaign");
    let (status, body) = s.get(&format!("/v1/kpis?{all}")).await;
    // (Not the body in the message: before the fix it was 30 MB.)
    assert_eq!(status, StatusCode::BAD_REQUEST, "{}", error_of(&body));
    let error = error_of(&body);
    assert!(
        error.contains(&MAX_ANSWER_ROWS.to_string()) && error.contains("rollup=range"),
        "{error}"
    );
    // The same data, one row per campaign: within the bound, every session counted.
    let (status, body) = s.get(&format!("/v1/kpis?{all}&rollup=range")).await;
    assert_eq!(status, StatusCode::OK, "{}", error_of(&body));
    assert_eq!(body["rows"].as_array().unwrap().len(), 100);
    assert_eq!(body["totals"]["sessions"], MAX_ANSWER_ROWS as i64 + 1);
}

#[tokio::test]
async fn a_query_string_over_the_limit_is_a_414_saying_the_limit() {
    let s = server();
    let long = "x".repeat(MAX_QUERY_BYTES);
    for uri in [
        format!("/v1/kpis?campaign={long}"),
        format!("/v1/stream?campaign={long}"),
        format!("/v1/kpis?{long}=1"),
    ] {
        let (status, body) = s.get(&uri).await;
        assert_eq!(status, StatusCode::URI_TOO_LONG, "{body}");
        assert!(
            error_of(&body).ends_with(&format!("exceeds the limit of {MAX_QUERY_BYTES} bytes")),
            "{body}"
        );
    }
    s.assert_query_healthy().await;
}

/// A 1 MB query string cannot even be a request value (`http::Uri` holds less than 64 KiB),
/// so it is tried on a real socket: the HTTP layer answers it with a 4xx, and the server
/// goes on answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_mb_query_string_on_a_socket_is_a_4xx_and_the_server_stays_up() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let env = vec![
        (
            "VEDETTA_DATA_DIR".to_string(),
            dir.path().display().to_string(),
        ),
        ("VEDETTA_LISTEN".to_string(), "127.0.0.1:0".to_string()),
    ];
    let config = load_from(None, &env, &Overrides::default()).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(serve(
        config,
        async move {
            let _ = stop_rx.await;
        },
        move |addr| {
            let _ = addr_tx.send(addr);
        },
    ));
    let addr = addr_rx.await.unwrap();
    let exchange = |target: String| async move {
        let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {target} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        // The server may answer and close before it has read the whole request.
        let _ = socket.write_all(request.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            socket.read_to_end(&mut answer),
        )
        .await
        .expect("an answer within 10 s");
        String::from_utf8_lossy(&answer).into_owned()
    };
    let answer = exchange(format!("/v1/kpis?campaign={}", "x".repeat(1 << 20))).await;
    let status: u16 = answer
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {answer:.200}"));
    assert!(
        (400..500).contains(&status),
        "a 1 MB query string got {status}"
    );
    let answer = exchange("/healthz".into()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let answer = exchange("/v1/kpis?last=1h".into()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}

// ------------------------------------------------------------------ /metrics (point 5)

#[tokio::test]
async fn a_failed_metrics_query_is_logged_counted_and_exposed() {
    let s = server();
    let scrape_errors = || {
        s.state
            .query_counters
            .metrics_scrape_errors
            .load(Ordering::Relaxed)
    };
    let (status, text) = s.get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let text = text.as_str().unwrap().to_string();
    assert!(
        text.contains("vedetta_metrics_scrape_errors_total 0"),
        "{text}"
    );
    assert!(text.contains("# TYPE vedetta_kpi_sessions gauge"));
    assert_eq!(scrape_errors(), 0);

    // The same gauges with a query that fails, as a broken store would.
    let mut out = crate::telemetry::Exposition::default();
    super::metrics::kpi_gauges(&s.state, &mut out, |_| {
        Err(ApiError::Internal("disk on fire".into()))
    });
    let partial = out.into_string();
    assert!(!partial.contains("vedetta_kpi_"), "{partial}");
    assert_eq!(scrape_errors(), 1);
    let (_, text) = s.get("/metrics").await;
    assert!(
        text.as_str()
            .unwrap()
            .contains("vedetta_metrics_scrape_errors_total 1"),
        "{text}"
    );
}

#[test]
fn the_time_bounds_are_inside_what_event_time_can_show() {
    for bound in [TIME_MIN_MS, TIME_MAX_MS] {
        assert!(jiff::Timestamp::from_millisecond(bound).is_ok());
    }
    assert_eq!(
        vedetta_core::time::EventTime(TIME_MIN_MS).to_rfc3339(),
        "0000-01-01T00:00:00.000Z"
    );
    assert_eq!(
        vedetta_core::time::EventTime(TIME_MAX_MS).to_rfc3339(),
        "9999-12-30T00:00:00.000Z"
    );
}

#[test]
fn an_event_schema_names_every_field_intake_reads() {
    let limits = vedetta_core::intake::IntakeLimits::default();
    let doc = super::openapi::document(0, &limits, 10_000);
    let schemas = &doc["components"]["schemas"];
    for (schema, fields) in [
        ("EventInput", vedetta_core::intake::EVENT_FIELD_NAMES),
        ("SpendInput", vedetta_core::intake::SPEND_FIELD_NAMES),
    ] {
        let described: Vec<&String> = schemas[schema]["properties"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        let mut read: Vec<&str> = fields.to_vec();
        read.sort_unstable();
        let mut described: Vec<&str> = described.iter().map(|s| s.as_str()).collect();
        described.sort_unstable();
        assert_eq!(described, read, "{schema}");
    }
    assert_eq!(
        schemas["EventInput"]["required"],
        serde_json::json!(["udid", "type", "ts"])
    );
    // A row's KPI fields are numbers, not strings (the Schemathesis finding).
    assert_eq!(
        schemas["KpiRow"]["properties"]["sessions"]["type"],
        "integer"
    );
    assert_eq!(schemas["KpiRow"]["additionalProperties"], false);
}
