//! A push destination that answers 500 for a long time (issue 12, "Bad answers"): a real
//! server, a real local receiver behind a `format = "seed"` webhook, a `conversion_feed`
//! trigger, and purchases flowing before, through and after the outage.
//!
//! After the receiver comes back, every purchase arrives, each user's purchases in the
//! order they were made, none twice at an idempotent receiver (one that acts on an
//! `Idempotency-Key` once), nothing dead-lettered; while it is down, the sender retries the
//! head of the queue at least every 30 s (the push backoff cap), so the backlog starts
//! draining within half a minute of the recovery.
//!
//! Knobs (environment; defaults keep the test under two minutes for CI):
//! - `ACT_OUTAGE_SECONDS` (45): how long the receiver answers 500. The one-hour run is
//!   `ACT_OUTAGE_SECONDS=3600` (command and figures in docs/benchmarks.md, "Triggers").
//! - `ACT_OUTAGE_RATE` (4): purchases per second, throughout.
//! - `ACT_OUTAGE_USERS` (40): users the purchases are spread over.
//! - `ACT_OUTAGE_SEED`: the traffic's random seed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::push_receiver::{Receiver, start_receiver};
use support::{KEY, Server, SplitMix, client, env_number, get_json, post_all_accepted};

/// The push backoff cap the sender promises (`SenderConfig::max_push_backoff`).
const MAX_PUSH_BACKOFF: Duration = Duration::from_secs(30);

fn pseudonym(udid: &str) -> String {
    vedetta_core::privacy::PseudonymKey::from_hex(1, KEY)
        .unwrap()
        .pseudonym(udid)
        .to_hex()
}

/// What an idempotent receiver acted on: per user (pseudonym), the purchase numbers in
/// arrival order, and the key each came under.
fn acted_on(receiver: &Receiver) -> BTreeMap<String, Vec<(u64, String)>> {
    let mut keys = BTreeSet::new();
    let mut users: BTreeMap<String, Vec<(u64, String)>> = BTreeMap::new();
    for s in receiver.seen.lock().unwrap().iter().filter(|s| s.accepted) {
        if !keys.insert(s.key.clone()) {
            continue;
        }
        assert_eq!(s.body["trigger"], "feed", "{}", s.body);
        for e in s.body["events"].as_array().unwrap() {
            assert_eq!(e["tipo"], "acquisto", "{e}");
            // product_id is "n-<purchase number>"; valore is the same number.
            let n: u64 = e["product_id"]
                .as_str()
                .and_then(|p| p.strip_prefix("n-"))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("a purchase number in {e}"));
            assert_eq!(e["valore"].as_f64(), Some(n as f64), "{e}");
            users
                .entry(e["UDID"].as_str().unwrap().to_owned())
                .or_default()
                .push((n, s.key.clone()));
        }
    }
    users
}

fn count(users: &BTreeMap<String, Vec<(u64, String)>>) -> usize {
    users.values().map(Vec::len).sum()
}

/// Posts one purchase per user in `who`, each its next number, at event time `ts`.
fn purchase(
    http: &reqwest::blocking::Client,
    server: &Server,
    who: &[usize],
    next: &mut [u64],
    ts: i64,
) {
    let events: Vec<Value> = who
        .iter()
        .map(|&u| {
            next[u] += 1;
            let n = next[u];
            json!({
                "udid": format!("outage-user-{u}"), "type": "purchase", "ts": ts,
                "value": n as f64, "order_id": format!("outage-{u}-{n}"),
                "product_id": format!("n-{n}"),
                "channel": "email", "campaign": "newsletter",
                "consent": {"marketing": true},
            })
        })
        .collect();
    post_all_accepted(http, server, "/v1/events", &events);
}

#[test]
fn a_push_receiver_down_for_a_long_outage_gets_every_purchase_afterwards_in_order_per_user_once() {
    let started = Instant::now();
    let outage = Duration::from_secs(env_number("ACT_OUTAGE_SECONDS", 45).max(1));
    let rate = env_number("ACT_OUTAGE_RATE", 4).clamp(1, 1_000);
    let users = env_number("ACT_OUTAGE_USERS", 40).clamp(1, 100_000) as usize;
    let mut rng = SplitMix(env_number("ACT_OUTAGE_SEED", 20_261_204));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let receiver = Arc::new(Receiver::default());
    let url = start_receiver(&runtime, receiver.clone());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vedetta.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[triggers]]
name = "feed"
kind = "conversion_feed"
notify = ["crm-push"]

[[alerts.destinations]]
name = "crm-push"
kind = "webhook"
format = "seed"
interval = "2s"
url = "{url}"
timeout_seconds = 5
"#
        ),
    )
    .unwrap();
    let server = Server::start_with_config_file(&dir.path().join("data"), &config, &[]);
    let http = client();
    let mut next = vec![0u64; users];

    // Traffic: every 250 ms, rate / 4 purchases (at least one), each by a random user; a
    // user buys at most once per tick, so its purchases are 250 ms apart in event time
    // (never a near-duplicate).
    let per_tick = (rate as usize).div_ceil(4).min(users);
    let mut traffic = |until: Instant, next: &mut Vec<u64>| {
        while Instant::now() < until {
            let tick = Instant::now();
            let mut who = BTreeSet::new();
            while who.len() < per_tick {
                who.insert((rng.next() % users as u64) as usize);
            }
            let who: Vec<usize> = who.into_iter().collect();
            purchase(&http, &server, &who, next, support::now_ms());
            std::thread::sleep(Duration::from_millis(250).saturating_sub(tick.elapsed()));
        }
    };

    // Up for a while: pushes flow.
    traffic(Instant::now() + Duration::from_secs(6), &mut next);
    wait_for("the first pushes before the outage", 60, || {
        count(&acted_on(&receiver)) > 0
    });
    // Down: traffic goes on, everything queues.
    receiver.down.store(true, Ordering::SeqCst);
    let down_at = Instant::now();
    let mut progress = Instant::now();
    while down_at.elapsed() < outage {
        let step = (down_at + outage).min(Instant::now() + Duration::from_secs(60));
        traffic(step, &mut next);
        if progress.elapsed() >= Duration::from_secs(300) {
            progress = Instant::now();
            eprintln!(
                "{:.0} s into the outage: {} purchases posted, {} requests refused",
                down_at.elapsed().as_secs_f64(),
                next.iter().sum::<u64>(),
                receiver
                    .seen
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|s| !s.accepted)
                    .count()
            );
        }
    }
    let posted_in_outage = next.iter().sum::<u64>();
    receiver.down.store(false, Ordering::SeqCst);
    let up_at = Instant::now();
    // Back: traffic goes on for a little while, then stops.
    traffic(Instant::now() + Duration::from_secs(8), &mut next);
    let posted: u64 = next.iter().sum();
    // Everything made before the recovery arrives within the push backoff (the next retry
    // of the queue's head), then the backlog drains; generous for a busy CI machine.
    let drain_bound = MAX_PUSH_BACKOFF.as_secs() + 240;
    let mut backlog_in = None;
    wait_for("every purchase after the outage", drain_bound, || {
        let got = count(&acted_on(&receiver)) as u64;
        if backlog_in.is_none() && got >= posted_in_outage {
            backlog_in = Some(up_at.elapsed());
        }
        got >= posted
    });
    let everything_in = up_at.elapsed();
    // Let anything unexpected (a second copy) arrive before judging.
    std::thread::sleep(Duration::from_secs(3));
    let dead = get_json(&http, &server.url("/v1/outbox/dead"));
    let triggers = get_json(&http, &server.url("/v1/triggers"));
    server.stop();

    let acted = acted_on(&receiver);
    let seen = receiver.seen.lock().unwrap().clone();
    // Every purchase once (an idempotent receiver acts on each key once; a purchase under
    // two keys would be acted on twice), each user's in the order made, none missing.
    for (u, &made) in next.iter().enumerate() {
        let user = pseudonym(&format!("outage-user-{u}"));
        let numbers: Vec<u64> = acted
            .get(&user)
            .map(|v| v.iter().map(|(n, _)| *n).collect())
            .unwrap_or_default();
        assert_eq!(
            numbers,
            (1..=made).collect::<Vec<_>>(),
            "user {u}: every purchase once, in order"
        );
    }
    assert_eq!(count(&acted) as u64, posted);
    // Every request under one key carried the same body.
    let mut bodies: BTreeMap<&str, &Value> = BTreeMap::new();
    for s in &seen {
        if let Some(previous) = bodies.insert(&s.key, &s.body) {
            assert_eq!(previous, &s.body, "key {} with two bodies", s.key);
        }
    }
    assert_eq!(dead["dead"], json!([]), "nothing dead-lettered: {dead}");
    assert_eq!(triggers["destinations"][0]["depth"], 0, "{triggers}");
    // The outage was exercised, and the head was retried at least every 30 s (plus the
    // delivery's own time) throughout it.
    let refused: Vec<Instant> = seen.iter().filter(|s| !s.accepted).map(|s| s.at).collect();
    assert!(!refused.is_empty(), "no request met the outage");
    let mut gaps: Vec<Duration> = refused.windows(2).map(|w| w[1] - w[0]).collect();
    gaps.push(up_at.saturating_duration_since(*refused.last().unwrap()));
    let widest = gaps.iter().max().copied().unwrap_or_default();
    assert!(
        widest <= MAX_PUSH_BACKOFF + Duration::from_secs(10),
        "a retry gap of {widest:?} during the outage"
    );
    let first_after = seen
        .iter()
        .filter(|s| s.accepted && s.at >= up_at)
        .map(|s| s.at - up_at)
        .min()
        .unwrap();
    // The next retry of the queue's head after the recovery came within the push backoff.
    assert!(
        first_after <= MAX_PUSH_BACKOFF + Duration::from_secs(10),
        "the first delivery after the recovery took {first_after:?}"
    );
    let backlog_in = backlog_in.unwrap_or(everything_in);
    eprintln!(
        "outage {} s at {rate}/s over {users} users: {posted} purchases ({posted_in_outage} \
         before the recovery) in {} requests under {} keys, {} refused (widest retry gap \
         {:.1} s); after the recovery, first delivery in {:.1} s, the outage's backlog in \
         {:.1} s, everything in {:.1} s; each user's purchases in order, once; 0 dead letters; \
         {:.0} s in all",
        outage.as_secs(),
        seen.len(),
        bodies.len(),
        refused.len(),
        widest.as_secs_f64(),
        first_after.as_secs_f64(),
        backlog_in.as_secs_f64(),
        everything_in.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

fn wait_for(what: &str, seconds: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {seconds} s");
        std::thread::sleep(Duration::from_millis(200));
    }
}
