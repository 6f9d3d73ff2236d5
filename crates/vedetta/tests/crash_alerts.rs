//! At least once, and once to an idempotent receiver, across crashes: a real server judges
//! a rule that fires for every channel that converts in a minute and resolves the minute
//! after, and delivers through a `webhook` destination to a receiver in this test that is
//! slow, answers 503 (with and without `Retry-After`) and sometimes past the destination's
//! timeout, so deliveries are in flight and retried. The server is SIGKILLed at random
//! points (fixed seed) and restarted on the same data directory, many times over. At the
//! end, after a clean run drains the outbox:
//!
//! - every firing and every resolution the traffic must have produced reached the receiver
//!   (at least once), and nothing else did;
//! - each of them was carried under exactly one idempotency key (so a receiver that
//!   remembers keys acts on each once), and every request under one key carried the same
//!   body;
//! - the dead-letter list is empty and the outbox drained.
//!
//! Rounds default to 12 (`CRASH_ALERTS_ROUNDS`); every third kill waits until a request is
//! at the receiver, the others come at random points. Kill points and the receiver's moods
//! come from a fixed seed (`CRASH_ALERTS_SEED`). These knobs must not start with
//! `VEDETTA_`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{Server, SplitMix, client, env_number, get_json};

const MINUTE: i64 = 60_000;

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
struct Seen {
    key: Option<String>,
    body: String,
    /// The receiver accepted it (answered, or was about to answer, 200).
    accepted: bool,
}

/// An idempotent webhook receiver with moods.
struct Receiver {
    rng: Mutex<SplitMix>,
    seen: Mutex<Vec<Seen>>,
    /// Bad answers (503, or too slow) given per key: at most two, so that backoff stays
    /// within seconds and the test within its time.
    bad: Mutex<HashMap<String, u32>>,
    in_flight: AtomicU64,
}

/// Decrements the in-flight count however the handler ends (also when it is dropped
/// because the server at the other end was killed).
struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

enum Mood {
    Ok(Duration),
    /// 503, with `Retry-After: 1` or without (the sender's own backoff).
    Unavailable {
        retry_after: bool,
    },
    /// Accepted, but answered after the destination's 1 s timeout: the sender does not
    /// learn of it and sends again under the same key.
    TooSlow,
}

async fn receive(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: String) -> Response {
    r.in_flight.fetch_add(1, Ordering::SeqCst);
    let _guard = InFlight(&r.in_flight);
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mood = {
        let mut rng = r.rng.lock().unwrap();
        let mut bad = r.bad.lock().unwrap();
        let count = bad.entry(key.clone().unwrap_or_default()).or_default();
        let roll = rng.next() % 100;
        let mood = if *count < 2 && roll < 15 {
            Mood::Unavailable {
                retry_after: roll % 2 == 0,
            }
        } else if *count < 2 && roll < 22 {
            Mood::TooSlow
        } else {
            Mood::Ok(Duration::from_millis(rng.next() % 700))
        };
        if !matches!(mood, Mood::Ok(_)) {
            *count += 1;
        }
        mood
    };
    r.seen.lock().unwrap().push(Seen {
        key,
        body,
        accepted: !matches!(mood, Mood::Unavailable { .. }),
    });
    match mood {
        Mood::Ok(delay) => {
            tokio::time::sleep(delay).await;
            StatusCode::OK.into_response()
        }
        Mood::TooSlow => {
            tokio::time::sleep(Duration::from_millis(1_600)).await;
            StatusCode::OK.into_response()
        }
        Mood::Unavailable { retry_after: true } => (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "1")],
            "busy",
        )
            .into_response(),
        Mood::Unavailable { retry_after: false } => {
            (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response()
        }
    }
}

/// Starts the receiver on its own runtime (the test drives the server with a blocking
/// client). Returns its URL.
fn start_receiver(runtime: &tokio::runtime::Runtime, receiver: Arc<Receiver>) -> String {
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let address = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(receiver);
    runtime.spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}/hook")
}

/// Minute `i`'s traffic: a visit from channel `ch{i}` that converts. Six seconds into the
/// minute, so that it also moves the watermark (max ts − 5 s) past the previous minute's
/// end: every minute is followed by an event more than 65 s after the previous one's.
fn minute_traffic(base: i64, i: i64) -> String {
    let start = base + i * MINUTE;
    format!(
        "{{\"udid\":\"u{i}\",\"type\":\"page_view\",\"ts\":{},\"channel\":\"ch{i}\",\"campaign\":\"c\"}}\n\
         {{\"udid\":\"u{i}\",\"type\":\"purchase\",\"ts\":{},\"value\":10.0,\"order_id\":\"O-{i}\"}}\n",
        start + 6_000,
        start + 7_000
    )
}

/// A visit that converts nothing, in minute `i`: it only moves the watermark.
fn quiet_traffic(base: i64, i: i64) -> String {
    format!(
        "{{\"udid\":\"quiet{i}\",\"type\":\"page_view\",\"ts\":{},\"channel\":\"quiet\"}}\n",
        base + i * MINUTE + 6_000
    )
}

fn post_events(http: &reqwest::blocking::Client, server: &Server, body: String) {
    let response = http
        .post(server.url("/v1/events"))
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .unwrap();
    assert_eq!(response.status(), 200, "POST /v1/events");
}

/// The (status, channel) notices a notification body carries.
fn notices(body: &Value) -> Vec<(String, String)> {
    body["notices"]
        .as_array()
        .unwrap_or_else(|| panic!("a notification without notices: {body}"))
        .iter()
        .map(|n| {
            assert_eq!(n["rule"], "converted", "{n}");
            let group = n["group"].as_array().unwrap();
            assert_eq!(group.len(), 1, "{n}");
            assert_eq!(group[0][0], "channel", "{n}");
            (
                n["status"].as_str().unwrap().to_string(),
                group[0][1].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn sigkill_during_delivery_loses_no_notification_and_an_idempotent_receiver_gets_none_twice() {
    let started = Instant::now();
    let rounds = env_number("CRASH_ALERTS_ROUNDS", 12);
    let seed = env_number("CRASH_ALERTS_SEED", 20_261_010);
    let mut rng = SplitMix(seed);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let receiver = Arc::new(Receiver {
        rng: Mutex::new(SplitMix(seed ^ 0x5eed)),
        seen: Mutex::new(Vec::new()),
        bad: Mutex::new(HashMap::new()),
        in_flight: AtomicU64::new(0),
    });
    let url = start_receiver(&runtime, receiver.clone());

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("vedetta.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[alerts]
group_wait = "0s"
group_interval = "0s"

[[alerts.rules]]
name = "converted"
expr = "conversions > 0"
over = "1m"
group_by = ["channel"]
for = "0s"
notify = ["hook"]

[[alerts.destinations]]
name = "hook"
kind = "webhook"
url = "{url}"
timeout_seconds = 1
"#
        ),
    )
    .unwrap();

    // Event time: whole minutes, two hours back, so that every minute sent is in the past.
    let base = (support::now_ms() / MINUTE - 120) * MINUTE;
    let http = client();
    let mut minutes = 0_i64;
    let (mut kills, mut kills_in_delivery) = (0, 0);
    for round in 0..rounds {
        let server = Server::start_with_config_file(&data, &config, &[]);
        for _ in 0..1 + rng.next() % 3 {
            post_events(&http, &server, minute_traffic(base, minutes));
            minutes += 1;
        }
        if round % 3 == 2 {
            // Every third kill waits for a request to be at the receiver, and lands while
            // it is there.
            let until = Instant::now() + Duration::from_secs(3);
            while receiver.in_flight.load(Ordering::SeqCst) == 0 && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
        } else {
            // The others land in processing, evaluation, or a delivery (slow, or retried).
            std::thread::sleep(Duration::from_millis(rng.next() % 2_500));
        }
        if receiver.in_flight.load(Ordering::SeqCst) > 0 {
            kills_in_delivery += 1;
        }
        server.kill();
        kills += 1;
    }

    // A clean run: two quiet minutes move the watermark past the last firing and its
    // resolution, then the outbox drains.
    let server = Server::start_with_config_file(&data, &config, &[]);
    post_events(&http, &server, quiet_traffic(base, minutes));
    post_events(&http, &server, quiet_traffic(base, minutes + 1));
    let expected: BTreeSet<(String, String)> = (0..minutes)
        .flat_map(|i| ["firing", "resolved"].map(|status| (status.to_string(), format!("ch{i}"))))
        .collect();
    let accepted_notices = || -> BTreeSet<(String, String)> {
        receiver
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.accepted)
            .flat_map(|s| notices(&serde_json::from_str(&s.body).unwrap()))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let metrics = http
            .get(server.url("/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap();
        let drained = metric(&metrics, "vedetta_outbox_depth") == Some(0.0);
        if drained && accepted_notices().is_superset(&expected) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not delivered within 90 s: missing {:?}; outbox depth {:?}",
            expected.difference(&accepted_notices()).collect::<Vec<_>>(),
            metric(&metrics, "vedetta_outbox_depth")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Deliveries answered too slowly are retried: let them finish before reading.
    std::thread::sleep(Duration::from_secs(2));
    let dead = get_json(&http, &server.url("/v1/outbox/dead"));
    let alerts = get_json(&http, &server.url("/v1/alerts?limit=1000"));
    server.stop();

    let seen = receiver.seen.lock().unwrap().clone();
    // Every request under one key carries the same body, and the key is the body's id.
    let mut by_key: BTreeMap<String, Vec<&Seen>> = BTreeMap::new();
    for s in &seen {
        let key = s
            .key
            .clone()
            .unwrap_or_else(|| panic!("a request without Idempotency-Key: {}", s.body));
        let body: Value = serde_json::from_str(&s.body).unwrap();
        assert_eq!(body["id"], key.as_str(), "the key is the notification's id");
        by_key.entry(key).or_default().push(s);
    }
    for (key, requests) in &by_key {
        assert!(
            requests.iter().all(|s| s.body == requests[0].body),
            "key {key} came with different bodies: {:?}",
            requests.iter().map(|s| &s.body).collect::<Vec<_>>()
        );
        assert!(
            requests.iter().any(|s| s.accepted),
            "key {key} was never accepted"
        );
    }
    // Each firing and resolution went under exactly one key: an idempotent receiver acts
    // on each once. And the keys carry exactly what the traffic must have produced.
    let mut key_of: BTreeMap<(String, String), &String> = BTreeMap::new();
    for (key, requests) in &by_key {
        let body: Value = serde_json::from_str(&requests[0].body).unwrap();
        for notice in notices(&body) {
            if let Some(other) = key_of.insert(notice.clone(), key) {
                panic!("{notice:?} was sent under two keys, {other} and {key}");
            }
        }
    }
    let delivered: BTreeSet<(String, String)> = key_of.keys().cloned().collect();
    assert_eq!(
        delivered,
        expected,
        "delivered vs expected: missing {:?}, unexpected {:?}",
        expected.difference(&delivered).collect::<Vec<_>>(),
        delivered.difference(&expected).collect::<Vec<_>>()
    );
    assert_eq!(accepted_notices(), expected);
    assert_eq!(dead["dead"], serde_json::json!([]), "dead letters: {dead}");
    // The store's history agrees: each alert fired once and resolved once, none firing.
    let history = alerts["history"].as_array().unwrap();
    for status in ["firing", "resolved"] {
        let channels: Vec<&str> = history
            .iter()
            .filter(|h| h["event"] == status)
            .map(|h| h["group"]["channel"].as_str().unwrap())
            .collect();
        let distinct: BTreeSet<&str> = channels.iter().copied().collect();
        assert_eq!(
            (channels.len(), distinct.len()),
            (minutes as usize, minutes as usize),
            "{status} in the history: {channels:?}"
        );
    }
    assert_eq!(alerts["firing"], serde_json::json!([]), "{alerts}");

    let redelivered = by_key.values().filter(|r| r.len() > 1).count();
    let accepted_twice = by_key
        .values()
        .filter(|r| r.iter().filter(|s| s.accepted).count() > 1)
        .count();
    assert!(
        rounds < 3 || kills_in_delivery > 0,
        "no kill landed while a delivery was in flight"
    );
    eprintln!(
        "{kills} SIGKILLs ({kills_in_delivery} with a delivery in flight), {minutes} alerts: \
         {} firings and resolutions under {} keys, {} requests, {redelivered} keys sent more than once, \
         {accepted_twice} accepted more than once (same body); none lost, none under two \
         keys, no dead letters; {:.1} s",
        expected.len(),
        by_key.len(),
        seen.len(),
        started.elapsed().as_secs_f64()
    );
}
