//! The router tested as a value: every bad input of the intake issue gets a clear answer,
//! and the server stays healthy after each.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::Value;
use std::io::Write;
use tower::ServiceExt;
use vedetta_core::record::LogRecord;

use super::test_support::{TestServer, server, server_with};

fn now_ms_text() -> String {
    crate::clock::SystemClock.now_ms().to_string()
}

fn good_event(n: usize) -> String {
    format!(
        r#"{{"udid":"user-{n}","type":"page_view","ts":{},"event_id":"e-{n}","page":"/p/{n}"}}"#,
        now_ms_text()
    )
}

impl TestServer {
    async fn assert_healthy(&self) {
        let request = Request::get("/healthz").body(Body::empty()).unwrap();
        assert_eq!(self.call(request).await.0, StatusCode::OK);
        // And still accepting: a good event after the bad input goes through.
        let (status, body) = self.post("application/json", good_event(999_999)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    fn logged_event_ids(&self) -> Vec<String> {
        self.state
            .log
            .read(0, usize::MAX)
            .unwrap()
            .into_iter()
            .filter_map(|(_, r)| match r {
                LogRecord::Event(e) => e.event_id,
                LogRecord::Spend(_) => None,
            })
            .collect()
    }
}

fn first_error(body: &Value) -> String {
    body["rejected"][0]["error"]
        .as_str()
        .or_else(|| body["error"].as_str())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test]
async fn accepted_events_are_in_the_log_when_the_response_arrives() {
    let s = server();
    let body = format!("[{},{}]", good_event(1), good_event(2));
    let (status, response) = s.post("application/json", body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(response["accepted"], 2);
    assert_eq!(response["rejected"], Value::Array(vec![]));
    assert_eq!(s.logged_event_ids(), vec!["e-1", "e-2"]);
    let status = s.status().await;
    assert_eq!(status["log_end_offset"], 2);
    assert_eq!(status["events_accepted"], 2);
}

#[tokio::test]
async fn ndjson_mixing_valid_and_invalid_lines_stores_the_valid_ones() {
    let s = server();
    let body = [
        good_event(1),
        "{\"udid\":\"x\",\"type\":\"lead\",\"ts\":\"ieri\"}".into(),
        "not json at all".into(),
        good_event(2),
        "{\"udid\":\"y\",\"type\":\"lead\",\"ts\":1}".into(),
    ]
    .join("\n");
    let (status, response) = s.post("application/x-ndjson", body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(response["accepted"], 2);
    let indices: Vec<u64> = response["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indices, vec![1, 2, 4]);
    assert_eq!(
        response["rejected"][0]["error"],
        r#"events[1].ts: expected RFC 3339 timestamp or epoch milliseconds, got "ieri""#
    );
    assert_eq!(s.logged_event_ids(), vec!["e-1", "e-2"]);
    let status = s.status().await;
    assert_eq!(status["events_accepted"], 2);
    assert_eq!(status["events_rejected"], 3);
    assert_eq!(status["rejected_by_field"]["ts"], 2);
    assert_eq!(status["rejected_by_field"]["(syntax)"], 1);
    // The quarantine keeps them with their reasons, newest first, udid pseudonymized.
    let (code, _, quarantine) = s
        .call(Request::get("/v1/rejected").body(Body::empty()).unwrap())
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(quarantine["total_kept"], 3);
    let newest = &quarantine["rejected"][0];
    assert_eq!(newest["index"], 4);
    assert!(
        newest["error"]
            .as_str()
            .unwrap()
            .starts_with("events[4].ts:")
    );
    assert!(
        newest["event"]["udid"]
            .as_str()
            .unwrap()
            .starts_with("pseudonym:")
    );
}

#[tokio::test]
async fn malformed_json_is_a_400_naming_the_problem() {
    let s = server();
    let truncated = format!("[{}", good_event(1));
    let trailing = format!("[{}] garbage", good_event(1));
    let mut invalid_utf8 = good_event(1).into_bytes();
    let at = invalid_utf8.len() - 3;
    invalid_utf8.splice(at..at, [0xff, 0xfe]);
    for (name, body) in [
        ("truncated", truncated.into_bytes()),
        ("trailing garbage", trailing.into_bytes()),
        ("invalid utf-8", invalid_utf8),
        (
            "NaN",
            br#"{"udid":"u","type":"lead","ts":1,"value":NaN}"#.to_vec(),
        ),
        (
            "Infinity",
            br#"[{"udid":"u","type":"lead","ts":1,"value":Infinity}]"#.to_vec(),
        ),
    ] {
        let (status, response) = s.post("application/json", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{name}: {response}");
        assert!(
            first_error(&response).contains("not valid JSON")
                || first_error(&response).contains("invalid JSON"),
            "{name}: {response}"
        );
    }
    s.assert_healthy().await;
}

#[tokio::test]
async fn wrong_types_and_missing_fields_name_the_field() {
    let s = server();
    let ts = now_ms_text();
    for (body, expected) in [
        (
            format!(r#"{{"udid":"u","type":"purchase","ts":{ts},"value":"12,50"}}"#),
            r#"events[0].value: expected a number ≥ 0, got "12,50""#,
        ),
        (
            format!(r#"{{"udid":"u","type":"purchase","ts":{ts},"value":-5}}"#),
            "events[0].value: must be ≥ 0, got -5",
        ),
        (
            format!(r#"{{"udid":"u","type":"purchase","ts":{ts},"value":1e400}}"#),
            "events[0].value: number 1e400 is out of range",
        ),
        (
            format!(r#"{{"type":"purchase","ts":{ts}}}"#),
            "events[0].udid: missing required field",
        ),
        (
            r#"{"udid":"u","type":"lead","ts":"2099-01-01T00:00:00Z"}"#.to_string(),
            "events[0].ts: 2099-01-01T00:00:00.000Z is more than 5 minutes in the future",
        ),
        (
            format!(r#"{{"udid":"u","udid":"v","type":"lead","ts":{ts}}}"#),
            "events[0].udid: appears more than once in the object",
        ),
    ] {
        let (status, response) = s.post("application/json", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(first_error(&response).starts_with(expected), "{response}");
    }
    s.assert_healthy().await;
}

#[tokio::test]
async fn empty_bodies_and_empty_arrays_are_400() {
    let s = server();
    let (status, response) = s.post("application/json", "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        first_error(&response).starts_with("empty body"),
        "{response}"
    );
    let (status, response) = s.post("application/json", "[]").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(first_error(&response), "the JSON array holds no events");
    s.assert_healthy().await;
}

#[tokio::test]
async fn size_limits_are_413() {
    let s = server_with(&[("VEDETTA_INGEST__MAX_BODY_BYTES", "2000000")]);
    // 100,000 small events fit in the byte limit but not in the per-request event limit.
    let small = r#"{"udid":"u","type":"lead","ts":1}"#;
    let many = vec![small; 100_000].join("\n");
    assert!(many.len() < 4_000_000);
    let s_big = server_with(&[("VEDETTA_INGEST__MAX_BODY_BYTES", "5000000")]);
    let (status, response) = s_big.post("application/x-ndjson", many).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{response}");
    assert!(
        first_error(&response).contains("at most 10000"),
        "{response}"
    );
    // Over the byte limit.
    let (status, response) = s.post("application/json", vec![b' '; 2_000_001]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(first_error(&response).contains("exceeds the limit of 2000000 bytes"));
    s.assert_healthy().await;
    s_big.assert_healthy().await;
}

#[tokio::test]
async fn hostile_fields_are_refused_cheaply() {
    let s = server();
    let ts = now_ms_text();
    let huge = format!(
        r#"{{"udid":"u","type":"lead","ts":{ts},"page":"{}"}}"#,
        "a".repeat(1 << 20)
    );
    let (status, response) = s.post("application/json", huge).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        first_error(&response),
        "events[0].page: string of 1048576 characters exceeds the limit of 2048"
    );
    let deep = format!(
        r#"{{"udid":"u","type":"lead","ts":{ts},"properties":{{"a":{}{}}}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let (status, response) = s.post("application/json", deep).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        first_error(&response).starts_with("events[0].properties:"),
        "{response}"
    );
    s.assert_healthy().await;
}

#[tokio::test]
async fn unknown_content_types_and_encodings_are_415() {
    let s = server();
    let (status, response) = s
        .post("application/x-www-form-urlencoded", good_event(1))
        .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(first_error(&response).contains("application/x-ndjson"));
    let request = Request::post("/v1/events")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_ENCODING, "br")
        .body(Body::from(good_event(1)))
        .unwrap();
    assert_eq!(s.call(request).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    s.assert_healthy().await;
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test]
async fn gzip_is_accepted_and_a_gzip_bomb_is_413() {
    let s = server();
    let body = gzip(format!("{}\n{}", good_event(1), good_event(2)).as_bytes());
    let request = Request::post("/v1/events")
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(header::CONTENT_ENCODING, "gzip")
        .body(Body::from(body))
        .unwrap();
    let (status, _, response) = s.call(request).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    assert_eq!(response["accepted"], 2);

    // 1 GiB of zeros compresses to about 1 MiB; it must be cut off at the limit.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..1024 {
        encoder.write_all(&zeros).unwrap();
    }
    let bomb = encoder.finish().unwrap();
    assert!(bomb.len() < 2 << 20);
    let request = Request::post("/v1/events")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_ENCODING, "gzip")
        .body(Body::from(bomb))
        .unwrap();
    let (status, _, response) = s.call(request).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{response}");
    assert!(first_error(&response).contains("inflates past the limit"));
    let request = Request::post("/v1/events")
        .header(header::CONTENT_ENCODING, "gzip")
        .body(Body::from("not gzip"))
        .unwrap();
    assert_eq!(s.call(request).await.0, StatusCode::BAD_REQUEST);
    s.assert_healthy().await;
}

#[tokio::test]
async fn keys_are_required_when_configured() {
    let key = "0123456789abcdef0123";
    let s = server_with(&[("VEDETTA_INGEST__API_KEYS", key)]);
    let request = |auth: Option<&str>| {
        let mut builder =
            Request::post("/v1/events").header(header::CONTENT_TYPE, "application/json");
        if let Some(auth) = auth {
            builder = builder.header(header::AUTHORIZATION, auth);
        }
        builder.body(Body::from(good_event(1))).unwrap()
    };
    assert_eq!(s.call(request(None)).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        s.call(request(Some("Bearer wrong-key-wrong-key"))).await.0,
        StatusCode::UNAUTHORIZED
    );
    let status_request = Request::get("/v1/status").body(Body::empty()).unwrap();
    assert_eq!(s.call(status_request).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        s.call(request(Some(&format!("Bearer {key}")))).await.0,
        StatusCode::OK
    );
    let health = Request::get("/healthz").body(Body::empty()).unwrap();
    assert_eq!(s.call(health).await.0, StatusCode::OK);
}

#[tokio::test]
async fn over_the_memory_bound_is_503_with_retry_after() {
    let s = server();
    // Take the whole in-flight body budget, as slow concurrent uploads would.
    let all = s.state.body_budget.available_permits() as u32;
    let held = s.state.body_budget.try_acquire_many(all).unwrap();
    let request = Request::post("/v1/events")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(good_event(1)))
        .unwrap();
    let (status, headers, response) = s.call(request).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{response}");
    assert_eq!(headers[header::RETRY_AFTER], "1");
    drop(held);
    s.assert_healthy().await;
    assert_eq!(s.status().await["requests_throttled"], 1);
}

#[tokio::test]
async fn costs_are_taken_like_events() {
    let s = server();
    let ts = now_ms_text();
    let body = format!(
        r#"[{{"ts":{ts},"channel":"paid_search","campaign":"saldi","amount":3.5}},{{"ts":{ts},"amount":1}}]"#
    );
    let request = Request::post("/v1/costs")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap();
    let (status, _, response) = s.call(request).await;
    assert_eq!(status, StatusCode::OK, "{response}");
    assert_eq!(response["accepted"], 1);
    assert_eq!(
        response["rejected"][0]["error"],
        "costs[1].channel: missing required field"
    );
    assert_eq!(s.status().await["costs_accepted"], 1);
}

#[tokio::test]
async fn kpis_follow_the_contract_ratios_spend_and_grouping() {
    let s = server();
    let now = crate::clock::SystemClock.now_ms();
    let minute = now - now.rem_euclid(60_000) - 120_000;
    let events = [
        format!(
            r#"{{"udid":"a","type":"page_view","ts":{minute},"channel":"paid_search","campaign":"saldi","device":"mobile","region":"Lombardia"}}"#
        ),
        format!(
            r#"{{"udid":"a","type":"purchase","ts":{},"value":30,"channel":"paid_search","campaign":"saldi","device":"mobile","region":"Lombardia"}}"#,
            minute + 1000
        ),
        format!(
            r#"{{"udid":"b","type":"page_view","ts":{},"channel":"paid_search","campaign":"saldi","device":"desktop","region":"IT-62"}}"#,
            minute + 2000
        ),
    ];
    let (status, body) = s.post("application/x-ndjson", events.join("\n")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let request = Request::post("/v1/costs")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(format!(
            r#"{{"ts":{minute},"channel":"paid_search","campaign":"saldi","amount":12}}"#
        )))
        .unwrap();
    assert_eq!(s.call(request).await.0, StatusCode::OK);
    s.processed().await;

    let (status, by_channel) = s.get("/v1/kpis?granularity=1m&group_by=channel").await;
    assert_eq!(status, StatusCode::OK, "{by_channel}");
    assert_eq!(by_channel["time_zone"], "Europe/Rome");
    let row = &by_channel["rows"][0];
    assert_eq!(row["channel"], "paid_search");
    assert_eq!(row["sessions"], 2);
    assert_eq!(row["converting_sessions"], 1);
    assert_eq!(row["conversion_rate"], 0.5);
    assert_eq!(row["conversions"], 1);
    assert_eq!(row["revenue"], 30.0);
    assert_eq!(row["aov"], 30.0);
    assert_eq!(row["spend"], 12.0);
    assert_eq!(row["cpa"], 12.0);
    assert_eq!(row["events"]["page_view"], 2);
    assert_eq!(by_channel["totals"]["sessions"], 2);

    // One row per group for the whole range, on request.
    let (_, rolled) = s
        .get("/v1/kpis?granularity=1m&last=60m&group_by=channel&rollup=range")
        .await;
    assert_eq!(rolled["rows"].as_array().unwrap().len(), 1, "{rolled}");
    assert_eq!(rolled["rows"][0]["window_start"], rolled["from"]);
    assert_eq!(rolled["rows"][0]["window_end"], rolled["to"]);
    assert_eq!(rolled["rows"][0]["sessions"], 2);
    assert_eq!(rolled["rows"][0]["spend"], 12.0);

    // Spend is not defined per device: null, and so is CPA.
    let (_, by_device) = s
        .get("/v1/kpis?granularity=1m&group_by=device&channel=paid_search")
        .await;
    let desktop = by_device["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["device"] == "desktop")
        .unwrap();
    assert_eq!(desktop["spend"], Value::Null);
    assert_eq!(desktop["cpa"], Value::Null);
    // A zero denominator gives null, not 0 or infinity.
    assert_eq!(desktop["aov"], Value::Null);
    assert_eq!(desktop["conversion_rate"], 0.0);

    // Regions filter by name or code and come back with their names.
    let (_, lombardy) = s
        .get("/v1/kpis?granularity=1h&group_by=region&region=lombardia")
        .await;
    assert_eq!(lombardy["rows"].as_array().unwrap().len(), 1, "{lombardy}");
    assert_eq!(lombardy["rows"][0]["region"], "IT-25");
    assert_eq!(lombardy["rows"][0]["region_name"], "Lombardia");

    for (uri, expected) in [
        (
            "/v1/kpis?granularity=5m",
            "granularity: expected 1m, 1h or 1d",
        ),
        (
            "/v1/kpis?group_by=browser",
            "group_by: unknown dimension \"browser\"",
        ),
        ("/v1/kpis?colour=red", "colour: unknown parameter"),
        ("/v1/kpis?from=ieri", "from: expected an RFC 3339 timestamp"),
        (
            "/v1/kpis?from=2025-01-02T00:00:00Z&to=2025-01-01T00:00:00Z",
            "from: must be before to",
        ),
    ] {
        let (status, body) = s.get(uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        assert!(
            body["error"].as_str().unwrap().starts_with(expected),
            "{uri}: {body}"
        );
    }
    let status = s.status().await;
    assert_eq!(status["lag_events"], 0);
    assert!(status["watermark"].is_string());
}

#[tokio::test]
async fn openapi_describes_what_the_server_answers() {
    let s = server();
    let (status, spec) = s.get("/v1/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        "/v1/events",
        "/v1/costs",
        "/v1/kpis",
        "/v1/status",
        "/v1/rejected",
        "/healthz",
    ] {
        assert!(
            spec["paths"][path].is_object(),
            "{path} missing from the spec"
        );
    }
    // Every field of a real answer is described by its schema.
    let schemas = &spec["components"]["schemas"];
    let properties = |name: &str| -> Vec<String> {
        schemas[name]["properties"]
            .as_object()
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    };
    let (_, intake) = s.post("application/json", good_event(1)).await;
    for key in intake.as_object().unwrap().keys() {
        assert!(
            properties("IntakeResponse").contains(key),
            "IntakeResponse lacks {key}"
        );
    }
    s.processed().await;
    let (_, kpis) = s.get("/v1/kpis?granularity=1m").await;
    for key in kpis.as_object().unwrap().keys() {
        assert!(
            properties("KpiResponse").contains(key),
            "KpiResponse lacks {key}"
        );
    }
    let row = kpis["rows"][0].as_object().unwrap();
    let row_schema = serde_json::to_string(&schemas["KpiRow"]).unwrap();
    for key in row.keys() {
        assert!(
            row_schema.contains(&format!("\"{key}\"")) || properties("KpiValues").contains(key),
            "KpiRow lacks {key}"
        );
    }
}

/// Reads a live stream until `until` appears in what arrived (or the stream ends), for at
/// most five seconds; returns the text.
async fn read_stream(body: &mut Body, mut text: String, until: &str) -> String {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while !text.contains(until) {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    text.push_str(&String::from_utf8_lossy(&data));
                }
            }
            Ok(_) => break,
            Err(_) => panic!("no {until:?} within 5 s; got {text:?}"),
        }
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_shares_frames_sends_deltas_and_ends_at_shutdown() {
    let s = server();
    let open = |query: &str| {
        let router = s.router.clone();
        let request = Request::get(format!("/v1/stream?{query}"))
            .body(Body::empty())
            .unwrap();
        async move { router.oneshot(request).await.unwrap() }
    };
    let (status, _, answer) = s
        .call(
            Request::get("/v1/stream?granularity=1m&deltas=maybe")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        answer["error"].as_str().unwrap().starts_with("deltas:"),
        "{answer}"
    );

    let view = "granularity=1m&last=10m&group_by=channel";
    let first = open(&format!("{view}&deltas=true")).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut first = first.into_body();
    let text = read_stream(&mut first, String::new(), "event: status").await;
    assert!(
        text.starts_with("retry: 3000\n\nid: 1\nevent: kpis\ndata: {"),
        "{text:?}"
    );
    // A second client of the same view (parameters in another order, a key, deltas off, no
    // status events) gets the same frame, not a new computation.
    let second = open("group_by=channel&last=10m&access_token=x&granularity=1m&status=false").await;
    let mut second = second.into_body();
    let text = read_stream(&mut second, String::new(), "}\n\n").await;
    assert!(
        text.starts_with("retry: 3000\n\nid: 1\nevent: kpis\n"),
        "{text:?}"
    );

    // A change: the first client gets a delta with the new row, the second the whole answer.
    s.post("application/json", good_event(1)).await;
    s.processed().await;
    let text = read_stream(&mut first, String::new(), "event: kpis-delta").await;
    let text = read_stream(&mut first, text, "event: status").await;
    let data = text
        .lines()
        .skip_while(|l| *l != "event: kpis-delta")
        .nth(1)
        .and_then(|l| l.strip_prefix("data: "))
        .unwrap();
    let delta: Value = serde_json::from_str(data).unwrap();
    assert_eq!(delta["base"], 1, "{delta}");
    assert_eq!(delta["upsert"].as_array().unwrap().len(), 1, "{delta}");
    assert_eq!(delta["upsert"][0]["events"]["page_view"], 1, "{delta}");
    assert_eq!(delta["remove"], serde_json::json!([]));
    let text = read_stream(&mut second, String::new(), "}\n\n").await;
    assert!(text.starts_with("id: 2\nevent: kpis\n"), "{text:?}");
    assert!(!text.contains("event: status"), "{text:?}");
    assert_eq!(s.status().await["stream_clients"], 2);

    // `&` and `=` inside a value make another view, not this one: the campaign named
    // "x&channel=email" has no events, the campaign "x" in channel "email" has one.
    let tricky = open("granularity=1m&last=10m&campaign=x%26channel%3Demail").await;
    let mut tricky = tricky.into_body();
    read_stream(&mut tricky, String::new(), "event: status").await;
    let plain = "{\"udid\":\"p\",\"type\":\"page_view\",\"ts\":NOW,\"channel\":\"email\",\"campaign\":\"x\"}"
        .replace("NOW", &now_ms_text());
    s.post("application/json", plain).await;
    s.processed().await;
    let honest = open("granularity=1m&last=10m&campaign=x&channel=email").await;
    let mut honest = honest.into_body();
    let text = read_stream(&mut honest, String::new(), "event: status").await;
    assert!(text.contains("\"page_view\":1"), "{text:?}");
    let text = read_stream(&mut tricky, String::new(), "event: status").await;
    assert!(text.contains("\"rows\":[]"), "{text:?}");
    drop((tricky, honest));

    // Shutdown ends every stream (an open dashboard must not hold up a graceful stop) and
    // refuses new ones.
    let ticker = s.state.stream_hub.close();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(5), first.collect()).await;
    assert!(ended.is_ok_and(|r| r.is_ok()), "the stream did not end");
    if let Some(ticker) = ticker {
        tokio::time::timeout(std::time::Duration::from_secs(5), ticker)
            .await
            .expect("the ticker did not stop")
            .unwrap();
    }
    let (status, headers, _) = s
        .call(
            Request::get(format!("/v1/stream?{view}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key(header::RETRY_AFTER));
}

#[tokio::test]
async fn refused_events_leave_the_quarantine_after_its_days() {
    let s = server_with(&[("VEDETTA_INGEST__QUARANTINE_DAYS", "7")]);
    let (status, _) = s
        .post(
            "application/x-ndjson",
            format!(
                "{}\n{{\"udid\":\"u\",\"type\":\"page_view\",\"ts\":\"ieri\"}}",
                good_event(1)
            ),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, rejected) = s.get("/v1/rejected").await;
    assert_eq!(rejected["total_kept"], 1, "{rejected}");
    let now = crate::clock::SystemClock.now_ms();
    let day = 86_400_000;
    assert_eq!(
        apply_retention(&s.state, 30, now + 6 * day).unwrap(),
        (0, 0)
    );
    assert_eq!(s.get("/v1/rejected").await.1["total_kept"], 1);
    // Eight days on: the refusal is gone, the accepted event (30 days) is not.
    assert_eq!(
        apply_retention(&s.state, 30, now + 8 * day).unwrap(),
        (0, 1)
    );
    assert_eq!(s.get("/v1/rejected").await.1["total_kept"], 0);
    assert_eq!(s.status().await["log_end_offset"], 1);
    assert_eq!(s.state.log.read(0, 10).unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_live_views_are_bounded_but_clients_of_a_view_are_not() {
    let s = server();
    let open = |minutes: usize| {
        let router = s.router.clone();
        let request = Request::get(format!("/v1/stream?granularity=1m&last={minutes}m"))
            .body(Body::empty())
            .unwrap();
        async move { router.oneshot(request).await.unwrap() }
    };
    let mut held = Vec::new();
    for minutes in 1..=stream::MAX_VIEWS {
        let response = open(minutes).await;
        assert_eq!(response.status(), StatusCode::OK, "view {minutes}");
        held.push(response);
    }
    let refused = open(stream::MAX_VIEWS + 1).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = refused.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("too many distinct live views"));
    // Another client of a watched view is welcome.
    assert_eq!(open(1).await.status(), StatusCode::OK);
    // Once a view's clients are gone, its place is free again.
    held.truncate(stream::MAX_VIEWS - 1);
    assert_eq!(open(stream::MAX_VIEWS + 1).await.status(), StatusCode::OK);
}
