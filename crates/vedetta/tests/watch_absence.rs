//! An absence rule end to end, on history the server stored itself: three weeks of a
//! half-hour in which paid search converts every minute and e-mail every five minutes, then
//! the same half-hour this week with no conversion at all.
//!
//! - `paid_search` usually has 15 conversions in a 15-minute window and has none: the rule
//!   fires, as soon as the window's usual level (the median of the same window in the last
//!   four weeks) reaches `usually_at_least`, and resolves when conversions come back;
//! - `email` usually has 3, below `usually_at_least`: silence there is normal, nothing fires;
//! - `social` never converts: nothing fires.
//!
//! Everything goes through the real server: intake, pipeline, the KPI store the usual level
//! is read from, the evaluator following the watermark, the outbox and an `inbox`
//! destination read back over HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::Value;
use std::time::{Duration, Instant};
use support::{Server, client, get_json};

const MINUTE: i64 = 60_000;
const WEEK: i64 = 7 * 24 * 60 * MINUTE;

/// A visit from `channel` at `ts`; with `order`, it converts a second later.
fn visit(out: &mut String, user: &str, channel: &str, ts: i64, order: Option<&str>) {
    out.push_str(
        &serde_json::json!({"udid": user, "type": "page_view", "ts": ts, "channel": channel})
            .to_string(),
    );
    out.push('\n');
    if let Some(order) = order {
        out.push_str(
            &serde_json::json!({
                "udid": user, "type": "purchase", "ts": ts + 1_000,
                "value": 80.0, "order_id": order,
            })
            .to_string(),
        );
        out.push('\n');
    }
}

/// Minute `start`'s traffic, six seconds in so that it also moves the watermark (max ts −
/// 5 s) past the previous minute's end.
fn minute(start: i64, search_converts: bool, email_converts: bool) -> String {
    let ts = start + 6_000;
    let mut body = String::new();
    let tag = start / MINUTE;
    let search_order = format!("S-{tag}");
    let email_order = format!("E-{tag}");
    visit(
        &mut body,
        &format!("s{tag}"),
        "paid_search",
        ts,
        search_converts.then_some(search_order.as_str()),
    );
    visit(
        &mut body,
        &format!("e{tag}"),
        "email",
        ts,
        email_converts.then_some(email_order.as_str()),
    );
    visit(&mut body, &format!("f{tag}"), "social", ts, None);
    body
}

fn post(http: &reqwest::blocking::Client, server: &Server, body: String) {
    let response = http
        .post(server.url("/v1/events"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .unwrap();
    let status = response.status();
    assert_eq!(status, 200, "POST /v1/events: {}", response.text().unwrap());
}

/// Every (status, channel) the inbox received for the rule, oldest first.
fn inbox_notices(http: &reqwest::blocking::Client, server: &Server) -> Vec<(String, String)> {
    let inbox = get_json(http, &server.url("/v1/inbox?limit=1000"));
    let mut notices = Vec::new();
    for entry in inbox["inbox"].as_array().unwrap().iter().rev() {
        for notice in entry["notification"]["notices"].as_array().unwrap() {
            assert_eq!(notice["rule"], "conversions_stopped", "{notice}");
            let group = notice["group"].as_array().unwrap();
            assert_eq!(group.len(), 1, "{notice}");
            assert_eq!(group[0][0], "channel", "{notice}");
            notices.push((
                notice["status"].as_str().unwrap().to_owned(),
                group[0][1].as_str().unwrap().to_owned(),
            ));
        }
    }
    notices
}

/// Waits until the evaluator has judged the minute ending at `end`.
fn wait_evaluated(http: &reqwest::blocking::Client, server: &Server, end: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let alerts = get_json(http, &server.url("/v1/alerts"));
        // The API writes UTC with milliseconds, fixed width: text order is time order.
        let through = alerts["evaluated_through"].as_str();
        if through.is_some_and(|t| t >= rfc3339(end).as_str()) {
            return alerts;
        }
        assert!(
            Instant::now() < deadline,
            "not evaluated through {end}: {alerts}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Epoch milliseconds as the API writes them (`2026-12-03T21:05:00.000Z`).
fn rfc3339(ms: i64) -> String {
    vedetta_core::time::EventTime(ms).to_rfc3339()
}

#[test]
fn an_absence_rule_fires_only_where_conversions_usually_come_and_resolves_when_they_return() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("vedetta.toml");
    std::fs::write(
        &config,
        r#"
[alerts]
group_wait = "0s"
group_interval = "0s"

[[alerts.rules]]
name = "conversions_stopped"
kind = "absence"
metric = "conversions"
over = "15m"
usually_at_least = 5
group_by = ["channel"]
notify = ["inbox"]

[[alerts.destinations]]
name = "inbox"
kind = "inbox"
"#,
    )
    .unwrap();
    let server = Server::start_with_config_file(&data, &config, &[]);
    let http = client();

    // This week's half-hour starts an hour ago; the same half-hour 3, 2 and 1 weeks back.
    let this_week = (support::now_ms() / MINUTE - 60) * MINUTE;
    for weeks_back in [3, 2, 1] {
        let start = this_week - weeks_back * WEEK;
        for m in 0..30 {
            post(&http, &server, minute(start + m * MINUTE, true, m % 5 == 0));
        }
    }
    // This week: visits, no conversion, for 20 minutes; then paid search converts again.
    for m in 0..20 {
        post(&http, &server, minute(this_week + m * MINUTE, false, false));
    }
    let silent_end = this_week + 20 * MINUTE;
    wait_evaluated(&http, &server, silent_end - MINUTE);
    let during = inbox_notices(&http, &server);
    assert_eq!(
        during,
        vec![("firing".to_owned(), "paid_search".to_owned())],
        "only paid search, which usually converts, is missing conversions"
    );
    let alerts = get_json(&http, &server.url("/v1/alerts"));
    let firing = alerts["firing"].as_array().unwrap();
    assert_eq!(firing.len(), 1, "{alerts}");
    // The usual level grows by one a minute as the window slides into the half-hour the
    // earlier weeks converted in (median of 1, 2, 3 weeks' data and an empty fourth): it
    // reaches 5 with the window ending five minutes in.
    assert_eq!(
        firing[0]["fired_at"].as_str(),
        Some(rfc3339(this_week + 5 * MINUTE).as_str()),
        "{alerts}"
    );

    for m in 20..23 {
        post(&http, &server, minute(this_week + m * MINUTE, true, false));
    }
    wait_evaluated(&http, &server, this_week + 22 * MINUTE);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let notices = inbox_notices(&http, &server);
        if notices.len() >= 2 {
            assert_eq!(
                notices,
                vec![
                    ("firing".to_owned(), "paid_search".to_owned()),
                    ("resolved".to_owned(), "paid_search".to_owned()),
                ]
            );
            break;
        }
        assert!(Instant::now() < deadline, "no resolution: {notices:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    server.stop();
}
