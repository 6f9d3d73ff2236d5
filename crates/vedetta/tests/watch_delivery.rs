//! The outbox sender and the HTTP destinations against fakes that enforce the real
//! contracts: a Slack-like incoming webhook (429 with `Retry-After`, 5xx, timeouts, payload
//! limits), an OAuth2 token endpoint with expiring tokens and a protected webhook that
//! answers 401 on a stale token, an idempotent receiver whose first answer is lost. And the
//! durable outbox: nothing lost across a restart, dead letters and their retry.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vedetta::watch::destination::{Delivery, DeliveryError, Destination};
use vedetta::watch::destinations::{self, DestinationConfig};
use vedetta::watch::sender::{self, Outcome, SenderConfig, SenderHandle};
use vedetta_core::watch::notification::{AlertStatus, Notification};
use vedetta_store::outbox::Outbox;

fn note(id: &str, destination: &str) -> Notification {
    let mut n = Notification::example();
    n.id = id.into();
    n.destination = destination.into();
    n.created_ms = sender::wall_ms();
    n
}

fn fast() -> SenderConfig {
    SenderConfig {
        base_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(400),
        call_timeout: Duration::from_millis(500),
        poll_interval: Duration::from_millis(200),
        ..SenderConfig::default()
    }
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn start(
    outbox: &Outbox,
    destinations: Vec<Arc<dyn Destination>>,
    config: SenderConfig,
) -> (
    SenderHandle,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (handle, task) = sender::start(outbox.clone(), destinations, config, async move {
        let _ = stopped.await;
    });
    (handle, stop, task)
}

/// A destination answering from a script, recording when each attempt came.
#[derive(Debug)]
struct Scripted {
    name: String,
    answers: Mutex<VecDeque<Result<(), DeliveryError>>>,
    seen: Mutex<Vec<(String, Instant)>>,
}

impl Scripted {
    fn new(name: &str, answers: Vec<Result<(), DeliveryError>>) -> Arc<Scripted> {
        Arc::new(Scripted {
            name: name.into(),
            answers: Mutex::new(answers.into()),
            seen: Mutex::new(Vec::new()),
        })
    }
    fn seen(&self) -> Vec<(String, Instant)> {
        self.seen.lock().unwrap().clone()
    }
}

impl Destination for Scripted {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "webhook"
    }
    fn deliver<'a>(&'a self, n: &'a Notification) -> Delivery<'a> {
        Box::pin(async move {
            self.seen
                .lock()
                .unwrap()
                .push((n.id.clone(), Instant::now()));
            self.answers.lock().unwrap().pop_front().unwrap_or(Ok(()))
        })
    }
}

fn retry(after: Option<Duration>) -> Result<(), DeliveryError> {
    Err(DeliveryError::Retry {
        after,
        reason: "503".into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_back_off_and_honour_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(&dir.path().join("outbox.redb")).unwrap();
    let d = Scripted::new(
        "hook",
        vec![
            retry(None),
            retry(None),
            retry(Some(Duration::from_secs(1))),
            Ok(()),
        ],
    );
    let (handle, _stop, _task) = start(&outbox, vec![d.clone()], fast());
    outbox
        .enqueue(&note("a", "hook"), sender::wall_ms())
        .unwrap();
    handle.wake();
    wait_until("delivery", Duration::from_secs(10), || d.seen().len() == 4).await;
    let at: Vec<Instant> = d.seen().iter().map(|(_, t)| *t).collect();
    // Backoff: [25, 50] ms after the first failure, [50, 100] after the second.
    assert!(
        at[1] - at[0] >= Duration::from_millis(25),
        "{:?}",
        at[1] - at[0]
    );
    assert!(
        at[2] - at[1] >= Duration::from_millis(50),
        "{:?}",
        at[2] - at[1]
    );
    // The receiver's Retry-After (1 s) wins over the 100–200 ms backoff.
    assert!(
        at[3] - at[2] >= Duration::from_millis(990),
        "{:?}",
        at[3] - at[2]
    );
    wait_until("the entry to leave", Duration::from_secs(5), || {
        outbox.stats().unwrap().depth == 0
    })
    .await;
    assert_eq!(handle.metrics.attempts("hook", Outcome::Retry), 3);
    assert_eq!(handle.metrics.attempts("hook", Outcome::Delivered), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_across_a_restart_and_order_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("watch.redb");
    let down = Scripted::new("hook", (0..1_000).map(|_| retry(None)).collect());
    {
        let outbox = Outbox::open(&path).unwrap();
        let (handle, stop, task) = start(&outbox, vec![down.clone()], fast());
        for i in 0..5 {
            outbox
                .enqueue(&note(&format!("n{i}"), "hook"), sender::wall_ms())
                .unwrap();
            handle.wake();
        }
        wait_until("failed attempts", Duration::from_secs(5), || {
            down.seen().len() >= 3
        })
        .await;
        stop.send(()).unwrap();
        task.await.unwrap();
        // Only the head was tried: one at a time, in order.
        assert!(down.seen().iter().all(|(id, _)| id == "n0"));
    }
    let outbox = Outbox::open(&path).unwrap();
    assert_eq!(outbox.stats().unwrap().depth, 5);
    let up = Scripted::new("hook", vec![]);
    let (handle, _stop, _task) = start(&outbox, vec![up.clone()], fast());
    wait_until("all delivered", Duration::from_secs(10), || {
        up.seen().len() == 5
    })
    .await;
    let ids: Vec<String> = up.seen().into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, ["n0", "n1", "n2", "n3", "n4"]);
    wait_until("an empty outbox", Duration::from_secs(5), || {
        outbox.stats().unwrap().depth == 0
    })
    .await;
    assert_eq!(handle.metrics.attempts("hook", Outcome::Delivered), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_expired_and_unknown_go_to_dead_letters_and_a_retry_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(&dir.path().join("outbox.redb")).unwrap();
    let refusing = Scripted::new(
        "hook",
        vec![Err(DeliveryError::Refused {
            reason: "400 invalid_payload".into(),
        })],
    );
    let flaky = Scripted::new("flaky", vec![retry(None)]);
    let config = SenderConfig {
        max_age: Duration::ZERO,
        ..fast()
    };
    let (handle, stop, task) = start(&outbox, vec![refusing.clone(), flaky.clone()], config);
    let now = sender::wall_ms();
    outbox.enqueue(&note("refused", "hook"), now).unwrap();
    outbox.enqueue(&note("expired", "flaky"), now).unwrap();
    outbox.enqueue(&note("lost", "nowhere"), now).unwrap();
    handle.wake();
    wait_until("three dead letters", Duration::from_secs(5), || {
        outbox.stats().unwrap().dead == 3
    })
    .await;
    let dead = outbox.dead_letters(0, 10).unwrap();
    let by_id: HashMap<String, String> = dead
        .iter()
        .map(|d| (d.notification.as_ref().unwrap().id.clone(), d.error.clone()))
        .collect();
    assert!(by_id["refused"].contains("400 invalid_payload"));
    assert!(
        by_id["expired"].starts_with("gave up after 1 attempts"),
        "{}",
        by_id["expired"]
    );
    assert!(by_id["lost"].contains("no destination named \"nowhere\""));
    assert_eq!(handle.metrics.attempts("hook", Outcome::Refused), 1);
    assert_eq!(handle.metrics.attempts("flaky", Outcome::Expired), 1);
    assert_eq!(
        handle.metrics.attempts("nowhere", Outcome::Undeliverable),
        1
    );
    stop.send(()).unwrap();
    task.await.unwrap();

    // A person retries the refused one after fixing the receiver: it is delivered.
    let refused = dead.iter().find(|d| d.destination == "hook").unwrap();
    outbox
        .retry_dead(refused.seq, sender::wall_ms())
        .unwrap()
        .unwrap();
    let (_handle, _stop, _task) = start(&outbox, vec![refusing.clone()], fast());
    wait_until("the retried delivery", Duration::from_secs(5), || {
        refusing.seen().len() == 2 && outbox.stats().unwrap().depth == 0
    })
    .await;
    assert_eq!(outbox.stats().unwrap().dead, 2);
}

// ---------------------------------------------------------------------------------------
// An idempotent receiver whose first answer is lost.

#[derive(Default)]
struct Receiver {
    requests: Mutex<HashMap<String, u32>>,
    processed: Mutex<HashMap<String, u32>>,
}

async fn idempotent(State(r): State<Arc<Receiver>>, headers: HeaderMap) -> StatusCode {
    let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()) else {
        return StatusCode::BAD_REQUEST;
    };
    let key = key.to_owned();
    let first = {
        let mut requests = r.requests.lock().unwrap();
        let n = requests.entry(key.clone()).or_default();
        *n += 1;
        *n == 1
    };
    let fresh = {
        let mut processed = r.processed.lock().unwrap();
        let seen = processed.contains_key(&key);
        if !seen {
            processed.insert(key.clone(), 1);
        }
        !seen
    };
    assert!(fresh || !first);
    if first {
        // Processed, but the answer never arrives in time: the sender's call times out.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    StatusCode::OK
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_receiver_gets_each_id_once_when_the_first_answer_is_lost() {
    let receiver = Arc::new(Receiver::default());
    let base = serve(
        Router::new()
            .route("/hook", post(idempotent))
            .with_state(receiver.clone()),
    )
    .await;
    let config: DestinationConfig = toml::from_str(&format!(
        "name = \"hook\"\nkind = \"webhook\"\nurl = \"{base}/hook\"\ntimeout_seconds = 10\n"
    ))
    .unwrap();
    let hook = destinations::build(&config).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(&dir.path().join("outbox.redb")).unwrap();
    let (handle, _stop, _task) = start(&outbox, vec![hook], fast());
    for i in 0..3 {
        outbox
            .enqueue(&note(&format!("id-{i}"), "hook"), sender::wall_ms())
            .unwrap();
    }
    handle.wake();
    wait_until("delivery", Duration::from_secs(20), || {
        outbox.stats().unwrap().depth == 0
    })
    .await;
    let requests = receiver.requests.lock().unwrap().clone();
    let processed = receiver.processed.lock().unwrap().clone();
    for i in 0..3 {
        let id = format!("id-{i}");
        assert_eq!(
            requests[&id], 2,
            "{id}: the lost answer made the sender call again"
        );
        assert_eq!(processed[&id], 1, "{id}: processed once");
    }
    assert_eq!(handle.metrics.attempts("hook", Outcome::Timeout), 3);
}

// ---------------------------------------------------------------------------------------
// A Slack-like incoming webhook.

#[derive(Default)]
struct SlackFake {
    /// Answers to give before accepting: (status, Retry-After, delay).
    script: Mutex<VecDeque<(u16, Option<u64>, Duration)>>,
    accepted: Mutex<Vec<(serde_json::Value, Instant)>>,
    requests: Mutex<Vec<Instant>>,
}

/// Slack's limits, enforced like Slack: 400 with `invalid_blocks` or `msg_too_long`.
fn slack_limits(payload: &serde_json::Value) -> Result<(), &'static str> {
    let text = payload["text"].as_str().ok_or("no_text")?;
    if text.chars().count() > 4_000 {
        return Err("msg_too_long");
    }
    let blocks = payload["blocks"].as_array().ok_or("invalid_blocks")?;
    if blocks.len() > 50 {
        return Err("invalid_blocks");
    }
    for b in blocks {
        let t = b["text"]["text"].as_str().ok_or("invalid_blocks")?;
        let limit = if b["type"] == "header" { 150 } else { 3_000 };
        if t.chars().count() > limit {
            return Err("invalid_blocks");
        }
    }
    Ok(())
}

async fn slack(State(s): State<Arc<SlackFake>>, body: String) -> Response {
    s.requests.lock().unwrap().push(Instant::now());
    let next = s.script.lock().unwrap().pop_front();
    if let Some((status, retry_after, delay)) = next {
        tokio::time::sleep(delay).await;
        let status = StatusCode::from_u16(status).unwrap();
        return match retry_after {
            Some(after) => {
                (status, [("retry-after", after.to_string())], "rate_limited").into_response()
            }
            None => (status, "internal_error").into_response(),
        };
    }
    let Ok(payload) = serde_json::from_str::<serde_json::Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "invalid_payload").into_response();
    };
    if let Err(e) = slack_limits(&payload) {
        return (StatusCode::BAD_REQUEST, e).into_response();
    }
    s.accepted.lock().unwrap().push((payload, Instant::now()));
    (StatusCode::OK, "ok").into_response()
}

async fn slack_gone() -> Response {
    (StatusCode::NOT_FOUND, "no_service").into_response()
}

fn slack_config(name: &str, url: &str) -> DestinationConfig {
    toml::from_str(&format!(
        "name = \"{name}\"\nkind = \"slack\"\nurl = \"{url}\"\nlang = \"it\"\ntimeout_seconds = 5\n"
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_429_5xx_timeouts_limits_and_one_message_per_second() {
    let fake = Arc::new(SlackFake::default());
    let base = serve(
        Router::new()
            .route("/services/T/B/x", post(slack))
            .route("/services/T/B/gone", post(slack_gone))
            .with_state(fake.clone()),
    )
    .await;
    let slack_dest =
        destinations::build(&slack_config("slack", &format!("{base}/services/T/B/x"))).unwrap();

    // The fake enforces the limits: an oversized message is refused like Slack does.
    let http = reqwest::Client::new();
    let big = serde_json::json!({"text": "x".repeat(4_001), "blocks": []});
    let answer = http
        .post(format!("{base}/services/T/B/x"))
        .body(big.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    assert_eq!(answer.text().await.unwrap(), "msg_too_long");
    fake.requests.lock().unwrap().clear();

    // A 404 webhook is refused, not retried.
    let gone =
        destinations::build(&slack_config("gone", &format!("{base}/services/T/B/gone"))).unwrap();
    assert!(matches!(
        gone.deliver(&note("g", "gone")).await,
        Err(DeliveryError::Refused { reason }) if reason.contains("no_service")
    ));

    fake.script.lock().unwrap().extend([
        (429, Some(1), Duration::ZERO),
        (500, None, Duration::ZERO),
        // Slower than the sender's call timeout.
        (200, None, Duration::from_secs(2)),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(&dir.path().join("outbox.redb")).unwrap();
    let (handle, _stop, _task) = start(&outbox, vec![slack_dest], fast());
    // One huge group (summarised) and two ordinary notifications.
    let mut huge = note("huge", "slack");
    let one = huge.notices[0].clone();
    huge.notices = (0..300)
        .map(|i| {
            let mut x = one.clone();
            x.group[1].1 = format!("campagna-{i}");
            x
        })
        .collect();
    outbox.enqueue(&huge, sender::wall_ms()).unwrap();
    outbox
        .enqueue(&note("second", "slack"), sender::wall_ms())
        .unwrap();
    let mut resolved = note("third", "slack");
    resolved.status = AlertStatus::Resolved;
    resolved.notices[0].status = AlertStatus::Resolved;
    outbox.enqueue(&resolved, sender::wall_ms()).unwrap();
    handle.wake();
    wait_until("three Slack messages", Duration::from_secs(20), || {
        outbox.stats().unwrap().depth == 0
    })
    .await;

    let accepted = fake.accepted.lock().unwrap().clone();
    let requests = fake.requests.lock().unwrap().clone();
    // 429, 500, the timed-out one (accepted late, retried: at least once), then 3 more.
    assert!(accepted.len() >= 3, "{}", accepted.len());
    assert!(
        requests[1] - requests[0] >= Duration::from_millis(990),
        "Retry-After 1 s honoured"
    );
    // One message per second at most, whatever happened.
    for pair in requests.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(990),
            "{:?}",
            pair[1] - pair[0]
        );
    }
    let texts: Vec<String> = accepted
        .iter()
        .map(|(p, _)| p["text"].as_str().unwrap().to_owned())
        .collect();
    let first = &texts[texts.len() - 3];
    assert!(first.contains("ATTIVO cpa_high: 300 gruppi"), "{first}");
    assert!(first.contains("…e altri"), "{first}");
    assert!(texts[texts.len() - 1].starts_with("RISOLTO cpa_high"));
    assert!(texts[texts.len() - 2].contains("23,40 €"));
    assert_eq!(handle.metrics.attempts("slack", Outcome::Retry), 2);
    assert_eq!(handle.metrics.attempts("slack", Outcome::Timeout), 1);
    assert_eq!(handle.metrics.attempts("slack", Outcome::Delivered), 3);
}

// ---------------------------------------------------------------------------------------
// OAuth2 client credentials against a token endpoint and a protected webhook.

#[derive(Default)]
struct Idp {
    issued: Mutex<Vec<(String, Instant)>>,
    lifetime_s: u64,
    down: Mutex<bool>,
    revoked: Mutex<bool>,
    calls: Mutex<Vec<u16>>,
}

async fn token(State(idp): State<Arc<Idp>>, headers: HeaderMap, body: String) -> Response {
    if *idp.down.lock().unwrap() {
        return (StatusCode::SERVICE_UNAVAILABLE, "down").into_response();
    }
    // client_secret_basic: "c:s".
    let basic = headers.get("authorization").and_then(|v| v.to_str().ok());
    if basic != Some("Basic Yzpz") || !body.contains("grant_type=client_credentials") {
        return (StatusCode::UNAUTHORIZED, r#"{"error":"invalid_client"}"#).into_response();
    }
    let mut issued = idp.issued.lock().unwrap();
    let token = format!("t{}", issued.len() + 1);
    issued.push((token.clone(), Instant::now()));
    *idp.revoked.lock().unwrap() = false;
    axum::Json(serde_json::json!({
        "access_token": token, "token_type": "Bearer", "expires_in": idp.lifetime_s
    }))
    .into_response()
}

async fn protected(State(idp): State<Arc<Idp>>, headers: HeaderMap) -> StatusCode {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let status = {
        let issued = idp.issued.lock().unwrap();
        let valid = issued.last().is_some_and(|(t, at)| {
            Some(t) == bearer.as_ref()
                && at.elapsed() < Duration::from_secs(idp.lifetime_s)
                && !*idp.revoked.lock().unwrap()
        });
        if valid {
            StatusCode::OK
        } else {
            StatusCode::UNAUTHORIZED
        }
    };
    idp.calls.lock().unwrap().push(status.as_u16());
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_tokens_are_cached_refreshed_before_expiry_and_after_a_401() {
    let idp = Arc::new(Idp {
        lifetime_s: 2,
        ..Idp::default()
    });
    let base = serve(
        Router::new()
            .route("/token", post(token))
            .route("/hook", post(protected))
            .with_state(idp.clone()),
    )
    .await;
    let config: DestinationConfig = toml::from_str(&format!(
        "name = \"hook\"\nkind = \"webhook\"\nurl = \"{base}/hook\"\n\
         oauth2 = {{ token_url = \"{base}/token\", client_id = \"c\", client_secret = \"s\" }}\n"
    ))
    .unwrap();
    let hook = destinations::build(&config).unwrap();
    let n = note("x", "hook");
    let tokens = || idp.issued.lock().unwrap().len();

    hook.deliver(&n).await.unwrap();
    hook.deliver(&n).await.unwrap();
    assert_eq!(tokens(), 1, "the token is cached");

    // 2 s tokens are refreshed 0.2 s before they expire: no call carries a stale one.
    tokio::time::sleep(Duration::from_millis(1_850)).await;
    hook.deliver(&n).await.unwrap();
    assert_eq!(tokens(), 2);
    assert!(idp.calls.lock().unwrap().iter().all(|&s| s == 200));

    // Revoked early: the 401 refreshes once and the call is retried in the same attempt.
    *idp.revoked.lock().unwrap() = true;
    hook.deliver(&n).await.unwrap();
    assert_eq!(tokens(), 3);
    assert_eq!(
        idp.calls.lock().unwrap().as_slice(),
        [200, 200, 200, 401, 200]
    );

    // A token endpoint that is down is a retry, never a refusal.
    *idp.revoked.lock().unwrap() = true;
    *idp.down.lock().unwrap() = true;
    assert!(matches!(
        hook.deliver(&n).await,
        Err(DeliveryError::Retry { reason, .. }) if reason.contains("token endpoint")
    ));
    *idp.down.lock().unwrap() = false;
    hook.deliver(&n).await.unwrap();
}

/// The bug: a dead letter's `attempts` left out the attempt that ended it, so a
/// notification refused at its first attempt was listed with 0 attempts, and one that
/// expired with one fewer than its error said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_count_the_attempt_that_was_refused_or_expired() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = Outbox::open(&dir.path().join("outbox.redb")).unwrap();
    let refusing = Scripted::new(
        "hook",
        vec![
            retry(None),
            Err(DeliveryError::Refused {
                reason: "400".into(),
            }),
        ],
    );
    let flaky = Scripted::new("flaky", (0..100).map(|_| retry(None)).collect());
    let config = SenderConfig {
        max_age: Duration::from_millis(300),
        ..fast()
    };
    let (handle, stop, task) = start(&outbox, vec![refusing.clone(), flaky.clone()], config);
    let now = sender::wall_ms();
    outbox.enqueue(&note("refused", "hook"), now).unwrap();
    outbox.enqueue(&note("expired", "flaky"), now).unwrap();
    outbox.enqueue(&note("lost", "nowhere"), now).unwrap();
    handle.wake();
    wait_until("three dead letters", Duration::from_secs(5), || {
        outbox.stats().unwrap().dead == 3
    })
    .await;
    stop.send(()).unwrap();
    task.await.unwrap();
    let dead: HashMap<String, (u32, String)> = outbox
        .dead_letters(0, 10)
        .unwrap()
        .into_iter()
        .map(|d| (d.notification.unwrap().id, (d.attempts, d.error)))
        .collect();
    // hook: a retry, then the refusal; flaky: retried until it expired; nowhere: no
    // destination, never attempted.
    assert_eq!(refusing.seen().len(), 2);
    assert_eq!(dead["refused"].0, 2, "{dead:?}");
    let tried = flaky.seen().len();
    assert!(tried >= 2, "{tried}");
    assert_eq!(dead["expired"].0 as usize, tried, "{dead:?}");
    assert!(
        dead["expired"]
            .1
            .starts_with(&format!("gave up after {tried} attempts")),
        "{dead:?}"
    );
    assert_eq!(dead["lost"].0, 0, "{dead:?}");
}
