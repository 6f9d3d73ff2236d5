//! Last non-direct attribution across days and restarts, through the real server: a user's
//! paid click is remembered after the pipeline drops the user (in the KPI store, written
//! with a snapshot), survives a SIGKILL, and credits the purchase of a direct return two
//! days later. A replay of the same log gives the same rows; a store built under one model
//! refuses to continue under another, and `vedetta replay` rebuilds it under the new one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use std::time::{Duration, Instant};
use support::{BIN, KEY, Server, client, get_json, now_ms, start_replayed_copy, wait_processed};

const ENV: &[(&str, &str)] = &[("VEDETTA_PIPELINE__SNAPSHOT_INTERVAL_SECONDS", "1")];
const DAY: i64 = 86_400_000;

fn post(client: &reqwest::blocking::Client, server: &Server, events: &[serde_json::Value]) {
    let body: Vec<u8> = events
        .iter()
        .flat_map(|e| {
            let mut line = serde_json::to_vec(e).unwrap();
            line.push(b'\n');
            line
        })
        .collect();
    let response = client
        .post(server.url("/v1/events"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .unwrap();
    assert!(
        response.status().is_success(),
        "{}",
        response.text().unwrap()
    );
}

fn conversions_by_channel(
    client: &reqwest::blocking::Client,
    server: &Server,
) -> Vec<(String, i64)> {
    let answer = get_json(
        client,
        &server.url(
            "/v1/kpis?granularity=1d&from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z\
             &group_by=channel",
        ),
    );
    let mut out: Vec<(String, i64)> = answer["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|row| {
            let conversions = row["conversions"].as_i64().unwrap_or(0);
            (conversions > 0).then(|| (row["channel"].as_str().unwrap().to_string(), conversions))
        })
        .collect();
    out.sort();
    out
}

fn metric(client: &reqwest::blocking::Client, server: &Server, name: &str) -> f64 {
    let text = client
        .get(server.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics"))
}

#[test]
fn a_paid_click_credits_a_direct_return_days_later_across_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let client = client();
    let t0 = now_ms() - 3 * DAY;
    let event = |udid: &str, kind: &str, ts: i64| serde_json::json!({"udid": udid, "type": kind, "ts": ts, "event_id": format!("{udid}-{kind}-{ts}")});

    let server = Server::start(&data, ENV);
    let mut landing = event("anna", "page_view", t0);
    landing["utm_source"] = "google".into();
    landing["utm_medium"] = "cpc".into();
    landing["utm_campaign"] = "brand".into();
    post(&client, &server, &[landing]);
    // A day later for someone else: anna's session is final and she is dropped.
    post(&client, &server, &[event("bruno", "page_view", t0 + DAY)]);
    post(
        &client,
        &server,
        &[event("bruno", "add_to_cart", t0 + DAY + 1_000)],
    );
    wait_processed(&client, &server);
    // Her memory reaches the store with the next snapshot.
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&client, &server, "vedetta_attribution_memories") < 1.0 {
        assert!(Instant::now() < deadline, "no memory was stored");
        std::thread::sleep(Duration::from_millis(100));
    }
    server.kill();

    let server = Server::start(&data, ENV);
    let mut purchase = event("anna", "purchase", t0 + 2 * DAY);
    purchase["value"] = 89.5.into();
    purchase["order_id"] = "A-1001".into();
    let mut webhook_copy = event("anna-shop", "purchase", t0 + 2 * DAY + 20_000);
    webhook_copy["value"] = 89.5.into();
    webhook_copy["order_id"] = "A-1001".into();
    post(
        &client,
        &server,
        &[
            event("anna", "page_view", t0 + 2 * DAY - 60_000),
            purchase,
            webhook_copy,
        ],
    );
    wait_processed(&client, &server);
    assert_eq!(
        conversions_by_channel(&client, &server),
        vec![("paid_search".to_string(), 1)],
        "the direct return is credited to the paid click two days earlier, once"
    );
    assert_eq!(
        metric(
            &client,
            &server,
            "vedetta_pipeline_duplicates_total{kind=\"order\"}"
        ),
        1.0
    );
    let status = get_json(&client, &server.url("/v1/status"));
    assert_eq!(status["pipeline"]["order_duplicates"], 1, "{status}");
    server.stop();

    let copy = dir.path().join("copy");
    let replayed = start_replayed_copy(&data, &copy, ENV);
    assert_eq!(
        conversions_by_channel(&client, &replayed),
        vec![("paid_search".to_string(), 1)]
    );
    replayed.stop();

    // Another model: the store refuses to continue under it, and `vedetta replay`
    // rebuilds the history under it.
    let session_model = [("VEDETTA_PIPELINE__ATTRIBUTION", "session")];
    let refused = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("VEDETTA_PRIVACY__PSEUDONYM_KEY", KEY)
        .env(session_model[0].0, session_model[0].1)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("attribution") && stderr.contains("vedetta replay"),
        "{stderr}"
    );
    let replay = Command::new(BIN)
        .args(["replay", "--data-dir"])
        .arg(&data)
        .env("VEDETTA_PRIVACY__PSEUDONYM_KEY", KEY)
        .env(session_model[0].0, session_model[0].1)
        .output()
        .unwrap();
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let server = Server::start(&data, &session_model);
    assert_eq!(
        conversions_by_channel(&client, &server),
        vec![("direct".to_string(), 1)],
        "without inheritance the typed-in return is direct"
    );
    let answer = get_json(&client, &server.url("/v1/kpis?granularity=1d&last=30d"));
    assert_eq!(
        answer["attribution"],
        serde_json::json!({"model": "session", "lookback_days": 30})
    );
    server.stop();
}
