//! Dead letters through the API: a notification its receiver refuses (400) is listed at
//! `GET /v1/outbox/dead` with the receiver's answer; once the receiver is fixed,
//! `POST /v1/outbox/dead/{seq}/retry` delivers it (under the same idempotency key) and it
//! leaves the list; a seq that names no dead letter is a 404.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::test_support::server_with_file;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Request, StatusCode, header};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Receiver {
    fixed: AtomicBool,
    /// Idempotency keys of the requests accepted.
    accepted: Mutex<Vec<String>>,
    refused: Mutex<u32>,
}

async fn receive(State(r): State<Arc<Receiver>>, headers: HeaderMap) -> (StatusCode, &'static str) {
    if !r.fixed.load(Ordering::SeqCst) {
        *r.refused.lock().unwrap() += 1;
        return (StatusCode::BAD_REQUEST, "unknown field: severity");
    }
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    r.accepted.lock().unwrap().push(key);
    (StatusCode::OK, "ok")
}

#[allow(clippy::disallowed_methods)] // test traffic is stamped with the wall clock
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..500 {
        if let Some(value) = f().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: not within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_notification_is_a_dead_letter_until_retried_through_the_api() {
    let receiver = Arc::new(Receiver::default());
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(receiver.clone());
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = socket.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(socket, app).await });
    let s = server_with_file(
        &format!(
            r#"
[alerts]
group_wait = "0s"

[[alerts.rules]]
name = "converted"
expr = "conversions > 0"
over = "1m"
group_by = ["channel"]
notify = ["hook"]

[[alerts.destinations]]
name = "hook"
kind = "webhook"
url = "http://{address}/hook"
"#
        ),
        &[],
    );

    let minute = (now_ms() / 60_000 - 10) * 60_000;
    let events = json!([
        {"udid": "anna", "type": "page_view", "ts": minute + 2_000, "channel": "social"},
        {"udid": "anna", "type": "purchase", "ts": minute + 3_000, "value": 40.0, "order_id": "A-1"},
        // The watermark passes the minute's end: the rule fires.
        {"udid": "bruno", "type": "page_view", "ts": minute + 66_000, "channel": "direct"}
    ]);
    let (status, _) = s.post("application/json", events.to_string()).await;
    assert_eq!(status, StatusCode::OK);

    let dead = eventually("a dead letter", async || {
        let (status, body) = s.get("/v1/outbox/dead").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let dead = body["dead"].as_array().unwrap().clone();
        (!dead.is_empty()).then_some(dead)
    })
    .await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let letter = &dead[0];
    assert_eq!(letter["destination"], "hook");
    assert_eq!(
        letter["attempts"], 1,
        "refused at once, not retried: {letter}"
    );
    let error = letter["error"].as_str().unwrap();
    assert!(
        error.contains("400") && error.contains("unknown field: severity"),
        "the receiver's answer: {error}"
    );
    assert_eq!(letter["notification"]["status"], "firing");
    assert_eq!(
        letter["notification"]["notices"][0]["group"],
        json!([["channel", "social"]])
    );
    assert!(letter["dead_at"].is_string() && letter["enqueued_at"].is_string());
    assert_eq!(*receiver.refused.lock().unwrap(), 1);
    let id = letter["notification"]["id"].as_str().unwrap().to_string();
    let seq = letter["seq"].as_u64().unwrap();

    // Paging and its bounds.
    let (status, body) = s.get(&format!("/v1/outbox/dead?after={seq}")).await;
    assert_eq!((status, &body["dead"]), (StatusCode::OK, &json!([])));
    for (query, field) in [("limit=5000", "limit"), ("after=-1", "after"), ("x=1", "x")] {
        let (status, body) = s.get(&format!("/v1/outbox/dead?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(body["error"].as_str().unwrap().contains(field), "{body}");
    }

    let retry = |seq: String| {
        Request::post(format!("/v1/outbox/dead/{seq}/retry"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::empty())
            .unwrap()
    };
    // Seqs that name no dead letter.
    for unknown in [
        (seq + 1).to_string(),
        "0".into(),
        "abc".into(),
        "99999999999999999999999".into(),
    ] {
        let (status, _, body) = s.call(retry(unknown.clone())).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{unknown}: {body}");
    }

    // The receiver is fixed: a retry delivers the same notification, under its key.
    receiver.fixed.store(true, Ordering::SeqCst);
    let (status, _, body) = s.call(retry(seq.to_string())).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert!(body["queued_as"].as_u64().unwrap() > seq, "{body}");
    eventually("the retried delivery", async || {
        (!receiver.accepted.lock().unwrap().is_empty()).then_some(())
    })
    .await;
    assert_eq!(*receiver.accepted.lock().unwrap(), vec![id]);
    let (_, body) = s.get("/v1/outbox/dead").await;
    assert_eq!(body["dead"], json!([]), "it left the dead-letter list");
    // Retried once: a second retry of the same seq finds nothing.
    assert_eq!(
        s.call(retry(seq.to_string())).await.0,
        StatusCode::NOT_FOUND
    );
    let outbox =
        vedetta_store::outbox::Outbox::new(s.state.watch_store.database().clone()).unwrap();
    eventually("the outbox drained", async || {
        (outbox.stats().unwrap().depth == 0).then_some(())
    })
    .await;
    assert_eq!(outbox.stats().unwrap().dead, 0);
}

#[tokio::test]
async fn dead_letters_with_no_outbox_traffic_are_an_empty_list() {
    let s = server_with_file("", &[]);
    let (status, body) = s.get("/v1/outbox/dead").await;
    assert_eq!((status, body), (StatusCode::OK, json!({"dead": []})));
}
