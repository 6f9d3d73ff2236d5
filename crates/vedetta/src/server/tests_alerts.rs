//! The alerting path through the router: a rule fires on posted traffic as soon as the
//! watermark passes the minute, the alert, its history and its notification are stored
//! together, and silences are created and deleted through the API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::test_support::server_with_file;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};

const CONFIG: &str = r#"
[alerts]
group_wait = "0s"

[[alerts.rules]]
name = "cpa_high"
expr = "cpa > 20"
resolve_expr = "cpa < 17"
over = "1m"
group_by = ["channel"]
severity = "critical"
notify = ["hook"]

[[alerts.destinations]]
name = "hook"
kind = "webhook"
url = "http://127.0.0.1:9/never-called-in-this-test"
"#;

#[allow(clippy::disallowed_methods)] // test traffic is stamped with the wall clock
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn post_json(
    s: &super::test_support::TestServer,
    path: &str,
    body: Value,
) -> (StatusCode, Value) {
    let request = Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let (status, _, value) = s.call(request).await;
    (status, value)
}

/// Asks `uri` until `done` holds of the answer (at most about 6 s); the last answer.
async fn poll(
    s: &super::test_support::TestServer,
    uri: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let mut answer = Value::Null;
    for _ in 0..300 {
        answer = s.get(uri).await.1;
        if done(&answer) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    answer
}

fn firing(alerts: &Value) -> bool {
    alerts["firing"].as_array().is_some_and(|f| !f.is_empty())
}

/// 30 € of spend on social/saldi in `minute`: one purchase there is CPA 30.
async fn post_spend(s: &super::test_support::TestServer, minute: i64) {
    let (status, _) = post_json(
        s,
        "/v1/costs",
        json!({"ts": minute + 1_000, "channel": "social", "campaign": "saldi", "amount": 30.0}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_rule_fires_when_the_watermark_passes_the_minute_with_history_and_outbox() {
    let s = server_with_file(CONFIG, &[]);
    let minute = (now_ms() / 60_000 - 10) * 60_000;
    post_spend(&s, minute).await;
    let (status, _) = post_json(
        &s,
        "/v1/events",
        json!([
            {"udid": "anna", "type": "page_view", "ts": minute + 2_000, "channel": "social", "campaign": "saldi"},
            {"udid": "anna", "type": "purchase", "ts": minute + 3_000, "value": 40.0, "order_id": "A-1"},
            // A minute and more later: the watermark passes the first minute's end.
            {"udid": "bruno", "type": "page_view", "ts": minute + 66_000, "channel": "direct"}
        ]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    s.processed().await;

    let alerts = poll(&s, "/v1/alerts", firing).await;
    let firing = &alerts["firing"][0];
    assert_eq!(firing["rule"], "cpa_high", "{alerts}");
    assert_eq!(firing["group"], json!({"channel": "social"}));
    assert_eq!(firing["value"], 30.0);
    assert_eq!(firing["severity"], "critical");
    assert_eq!(alerts["history"][0]["event"], "firing");
    assert!(alerts["pending"].as_array().unwrap().is_empty());

    // The notification was stored with the state change, for the sender to deliver.
    let outbox = vedetta_store::outbox::Outbox::new(s.state.watch_store.database().clone())
        .unwrap()
        .stats()
        .unwrap();
    assert_eq!(outbox.depth, 1);

    let (status, rules) = s.get("/v1/rules").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(rules["rules"][0]["name"], "cpa_high");
    assert_eq!(rules["rules"][0]["resolve_expr"], "cpa < 17");
    assert_eq!(rules["rules"][0]["for"], "0s");
    assert_eq!(rules["rules"][0]["repeat_interval"], "4h");
    assert_eq!(rules["reload_error"], Value::Null);
}

#[tokio::test]
async fn silences_are_created_listed_and_deleted_and_bad_ones_are_named() {
    let s = server_with_file(CONFIG, &[]);
    let (status, created) = post_json(
        &s,
        "/v1/silences",
        json!({"matchers": [{"name": "rule", "value": "cpa_high"}], "duration": "2h",
               "comment": "promo day", "created_by": "anna"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(
        s.get("/v1/alerts").await.1["silences"][0]["id"],
        id.as_str()
    );

    for (body, field) in [
        (json!({"matchers": [], "duration": "2h"}), "matchers"),
        (
            json!({"matchers": [{"name": "bogus", "value": "x"}], "duration": "2h"}),
            "matchers[0].name",
        ),
        (
            json!({"matchers": [{"name": "rule", "value": "x"}], "duration": "forever"}),
            "duration",
        ),
        (
            json!({"matchers": [{"name": "rule", "value": "x\u{1}"}], "duration": "2h"}),
            "matchers[0].value",
        ),
        (
            json!({"matchers": [{"name": "rule", "value": "x"}], "duration": "2h", "extra": 1}),
            "extra",
        ),
    ] {
        let (status, answer) = post_json(&s, "/v1/silences", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            answer["error"].as_str().unwrap().contains(field),
            "{field}: {answer}"
        );
    }

    let delete = |id: String| {
        Request::delete(format!("/v1/silences/{id}"))
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(s.call(delete(id.clone())).await.0, StatusCode::NO_CONTENT);
    assert_eq!(s.call(delete(id)).await.0, StatusCode::NOT_FOUND);
    assert!(
        s.get("/v1/alerts").await.1["silences"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

/// A Slack incoming webhook stand-in: records each message body and answers `ok`.
async fn fake_slack() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<(std::time::Instant, Value)>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/services/T/B/X",
        axum::routing::post(move |body: axum::body::Bytes| {
            let tx = tx.clone();
            async move {
                let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let _ = tx.send((std::time::Instant::now(), value));
                "ok"
            }
        }),
    );
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = socket.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(socket, app).await });
    (format!("http://{address}/services/T/B/X"), rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_firing_and_a_resolution_reach_slack_within_a_second_of_the_watermark() {
    let (url, mut messages) = fake_slack().await;
    let config = format!(
        r#"
[alerts]
group_wait = "0s"
group_interval = "1s"

[[alerts.rules]]
name = "cpa_high"
expr = "cpa > 20"
over = "1m"
group_by = ["channel"]
notify = ["slack"]

[[alerts.destinations]]
name = "slack"
kind = "slack"
url = "{url}"
"#
    );
    let s = server_with_file(&config, &[]);
    let minute = (now_ms() / 60_000 - 10) * 60_000;
    post_spend(&s, minute).await;
    post_json(
        &s,
        "/v1/events",
        json!([
            {"udid": "anna", "type": "page_view", "ts": minute + 2_000, "channel": "social", "campaign": "saldi"},
            {"udid": "anna", "type": "purchase", "ts": minute + 3_000, "value": 40.0}
        ]),
    )
    .await;
    s.processed().await;
    // The watermark passes the minute's end when this is processed.
    let sent_at = std::time::Instant::now();
    post_json(
        &s,
        "/v1/events",
        json!([{"udid": "bruno", "type": "page_view", "ts": minute + 66_000, "channel": "direct"}]),
    )
    .await;
    let (received_at, firing) =
        tokio::time::timeout(std::time::Duration::from_secs(10), messages.recv())
            .await
            .expect("no Slack message within 10 s")
            .unwrap();
    assert!(
        received_at - sent_at < std::time::Duration::from_secs(1),
        "{:?} from the watermark-moving event to Slack",
        received_at - sent_at
    );
    let text = firing.to_string();
    assert!(
        text.contains("cpa_high") && text.contains("social"),
        "{text}"
    );
    assert!(
        firing["blocks"].is_array() && firing["text"].is_string(),
        "Block Kit with a text fallback: {text}"
    );
    // A minute later without data: resolved, and Slack hears it.
    post_json(
        &s,
        "/v1/events",
        json!([{"udid": "bruno", "type": "page_view", "ts": minute + 126_000, "channel": "direct"}]),
    )
    .await;
    let (_, resolved) = tokio::time::timeout(std::time::Duration::from_secs(10), messages.recv())
        .await
        .expect("no resolution within 10 s")
        .unwrap();
    assert!(
        resolved.to_string().to_lowercase().contains("resolved"),
        "{resolved}"
    );
    let (_, metrics) = s.get("/metrics").await;
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    assert!(
        metrics.contains("vedetta_alerts{state=\"firing\",rule=\"cpa_high\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("vedetta_notification_attempts_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn late_data_for_a_judged_minute_is_noted_in_the_history_without_refiring() {
    let s = server_with_file(CONFIG, &[]);
    let minute = (now_ms() / 60_000 - 30) * 60_000;
    post_spend(&s, minute).await;
    post_json(
        &s,
        "/v1/events",
        json!([
            {"udid": "anna", "type": "page_view", "ts": minute + 2_000, "channel": "social"},
            {"udid": "anna", "type": "purchase", "ts": minute + 3_000, "value": 40.0},
            {"udid": "bruno", "type": "page_view", "ts": minute + 66_000, "channel": "direct"}
        ]),
    )
    .await;
    s.processed().await;
    poll(&s, "/v1/alerts", firing).await;
    // Within the allowed lateness, a second purchase for the judged minute: CPA 15.
    post_json(
        &s,
        "/v1/events",
        json!([
            {"udid": "carla", "type": "page_view", "ts": minute + 4_000, "channel": "social"},
            {"udid": "carla", "type": "purchase", "ts": minute + 5_000, "value": 40.0},
            // Then time passes: the judged minute becomes final.
            {"udid": "bruno", "type": "page_view", "ts": minute + 18 * 60_000, "channel": "direct"}
        ]),
    )
    .await;
    s.processed().await;
    let alerts = poll(&s, "/v1/alerts?limit=50", |a| {
        a["history"]
            .as_array()
            .is_some_and(|h| h.iter().any(|h| h["event"] == "revised"))
    })
    .await;
    let history = alerts["history"].as_array().unwrap();
    let events: Vec<&str> = history
        .iter()
        .filter(|h| h["group"]["channel"] == "social")
        .map(|h| h["event"].as_str().unwrap())
        .collect();
    // By minute, newest first: the resolution (next minute, no data), then at the judged
    // minute the revision (decided later) and the firing.
    assert_eq!(events, vec!["resolved", "revised", "firing"], "{alerts}");
    let revised = history.iter().find(|h| h["event"] == "revised").unwrap();
    assert_eq!(revised["value"], 15.0);
    assert!(
        revised["summary"]
            .as_str()
            .unwrap()
            .contains("from 30 to 15"),
        "{revised}"
    );
}

/// The bug: the first evaluation ever started at the watermark's last minute, so minutes
/// the watermark had passed before the task's first step (a burst of traffic, or a server
/// killed before its first commit) were never judged, and their alerts never fired.
#[tokio::test]
async fn minutes_the_watermark_passed_before_the_first_evaluation_are_judged() {
    let s = server_with_file(CONFIG, &[]);
    let minute = (now_ms() / 60_000 - 10) * 60_000;
    post_spend(&s, minute).await;
    // One request: the minute that fires, then traffic three minutes on, so that the
    // watermark passes four minute ends before the evaluation first sees it.
    let (status, _) = post_json(
        &s,
        "/v1/events",
        json!([
            {"udid": "anna", "type": "page_view", "ts": minute + 2_000, "channel": "social", "campaign": "saldi"},
            {"udid": "anna", "type": "purchase", "ts": minute + 3_000, "value": 40.0, "order_id": "A-1"},
            {"udid": "bruno", "type": "page_view", "ts": minute + 246_000, "channel": "direct"}
        ]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    s.processed().await;
    let mut history = Value::Null;
    for _ in 0..300 {
        let alerts = s.get("/v1/alerts").await.1;
        if alerts["evaluated_through"]
            == json!(vedetta_core::time::EventTime(minute + 240_000).to_rfc3339())
        {
            history = alerts["history"].clone();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let events: Vec<(&str, &str)> = history
        .as_array()
        .expect("evaluated through the last minute end the watermark passed")
        .iter()
        .map(|h| {
            (
                h["event"].as_str().unwrap(),
                h["group"]["channel"].as_str().unwrap(),
            )
        })
        .collect();
    // Newest first: it fired on the first minute and resolved on the next.
    assert_eq!(events, [("resolved", "social"), ("firing", "social")]);
}

/// System rules watch the pipeline itself: judged on the wall clock, with no traffic and
/// no watermark at all; while one fires, its inhibition mutes the KPI rules' notices.
#[tokio::test]
async fn an_intake_lag_rule_fires_without_a_watermark_and_inhibits_kpi_alerts() {
    let config = format!(
        "{CONFIG}\n{}",
        r#"
[[alerts.rules]]
name = "intake_lag"
expr = "lag_events >= 0"
severity = "critical"
notify = ["hook"]

[[alerts.inhibit]]
source = "intake_lag"
targets = ["cpa_high"]
"#
    );
    let s = server_with_file(&config, &[]);
    let alerts = poll(&s, "/v1/alerts", firing).await;
    assert_eq!(alerts["firing"][0]["rule"], "intake_lag", "{alerts}");
    assert_eq!(
        alerts["evaluated_through"],
        Value::Null,
        "no traffic, no watermark"
    );

    // A CPA alert while the lag alert fires: judged and in the history, not notified.
    let minute = (now_ms() / 60_000 - 10) * 60_000;
    post_spend(&s, minute).await;
    post_json(
        &s,
        "/v1/events",
        json!([
            {"udid": "anna", "type": "page_view", "ts": minute + 2_000, "channel": "social"},
            {"udid": "anna", "type": "purchase", "ts": minute + 3_000, "value": 40.0},
            {"udid": "bruno", "type": "page_view", "ts": minute + 66_000, "channel": "direct"}
        ]),
    )
    .await;
    s.processed().await;
    let mut events = Vec::new();
    for _ in 0..300 {
        let history = s.get("/v1/alerts").await.1["history"].clone();
        events = history
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["rule"] == "cpa_high")
            .map(|h| h["event"].as_str().unwrap().to_string())
            .collect();
        if !events.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        events.contains(&"firing (inhibited)".to_string()),
        "{events:?}"
    );
    let outbox = s.state.outbox.stats().unwrap();
    let queued: Vec<String> = s
        .state
        .outbox
        .queued("hook", 100)
        .unwrap()
        .iter()
        .filter_map(|e| e.notification.as_ref().ok())
        .flat_map(|n| n.notices.iter().map(|notice| notice.rule.clone()))
        .collect();
    assert!(queued.iter().any(|r| r == "intake_lag"), "{queued:?}");
    assert!(
        !queued.iter().any(|r| r == "cpa_high"),
        "an inhibited alert is not sent: {queued:?} ({outbox:?})"
    );
}
