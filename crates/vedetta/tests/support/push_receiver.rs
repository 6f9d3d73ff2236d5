//! A push receiver for the trigger tests: a real HTTP server on a free port that records
//! every request (its `Idempotency-Key`, its JSON body, whether it was accepted, when) and
//! fails on demand — down (500 to everything), the first N refused (500), every request
//! rejected (422: dead-lettered at once), or slow answers — so one receiver serves the
//! end-to-end, outage, crash and dead-letter tests alike.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub key: String,
    pub body: Value,
    /// Answered 200.
    pub accepted: bool,
    pub at: Instant,
}

#[derive(Default)]
pub struct Receiver {
    pub seen: Mutex<Vec<Seen>>,
    /// While set, every request gets a 500.
    pub down: AtomicBool,
    /// Answer 500 to every request until this many have been refused.
    pub refuse_first: AtomicU64,
    /// Slow answers (ms), so that kills land during a push.
    pub delay_ms: AtomicU64,
    /// Answer 422 (the payload refused: dead-lettered at once) to every request.
    pub reject: AtomicBool,
    /// Requests being answered right now.
    pub in_flight: AtomicU64,
}

struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn receive(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: String) -> Response {
    r.in_flight.fetch_add(1, Ordering::SeqCst);
    let _guard = InFlight(&r.in_flight);
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body: Value = serde_json::from_str(&body).expect("the push is JSON");
    let record = |accepted: bool| {
        r.seen.lock().unwrap().push(Seen {
            key: key.clone(),
            body: body.clone(),
            accepted,
            at: Instant::now(),
        });
    };
    if r.reject.load(Ordering::SeqCst) {
        record(false);
        return (StatusCode::UNPROCESSABLE_ENTITY, "segmento sconosciuto").into_response();
    }
    let refused = r
        .refuse_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if refused || r.down.load(Ordering::SeqCst) {
        record(false);
        return (StatusCode::INTERNAL_SERVER_ERROR, "down for maintenance").into_response();
    }
    record(true);
    let delay = r.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    StatusCode::OK.into_response()
}

/// Serves `receiver` on a free port; answers the URL to push to.
pub fn start_receiver(runtime: &tokio::runtime::Runtime, receiver: Arc<Receiver>) -> String {
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let address = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/push", axum::routing::post(receive))
        .with_state(receiver);
    runtime.spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}/push")
}
