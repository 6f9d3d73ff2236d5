//! Triggers end to end (issue 12): a real server, a segment driven over CPA 20 € within
//! 10 minutes, and a real local HTTP receiver behind a `format = "seed"` webhook.
//!
//! - The receiver gets exactly the users with intent in the segment who did not convert,
//!   each once, each with the product it last looked at; users without marketing consent
//!   never arrive; users of other segments never arrive; the segment's firing signal and
//!   then its recovery signal arrive.
//! - SIGKILLs during pushes lose nothing and an idempotent receiver (one that remembers
//!   `Idempotency-Key`s) sees every user once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::push_receiver::{Receiver, start_receiver};
use support::{KEY, Server, SplitMix, client, env_number, get_json, post_all_accepted};

const MINUTE: i64 = 60_000;

fn pseudonym(udid: &str) -> String {
    vedetta_core::privacy::PseudonymKey::from_hex(1, KEY)
        .unwrap()
        .pseudonym(udid)
        .to_hex()
}

fn config(dir: &std::path::Path, url: &str) -> std::path::PathBuf {
    let path = dir.join("vedetta.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[[triggers]]
name = "cpa_alto"
kind = "segment_cpa"
group_by = ["channel", "campaign"]
threshold = 20                 # EUR
over = "10m"
min_conversions = 2
segment_label = "costi > 20€"
notify = ["crm-push"]

[[alerts.destinations]]
name = "crm-push"
kind = "webhook"
format = "seed"
interval = "1s"
url = "{url}"
timeout_seconds = 2
"#
        ),
    )
    .unwrap();
    path
}

fn event(udid: &str, kind: &str, ts: i64, campaign: &str, extra: &Value) -> Value {
    let mut e = json!({
        "udid": udid, "type": kind, "ts": ts,
        "channel": "social", "campaign": campaign,
        "consent": {"marketing": true},
    });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            e.as_object_mut().unwrap().remove(k);
        } else {
            e[k] = v.clone();
        }
    }
    e
}

/// One segment's story, starting at `start` (a whole minute), in campaign `campaign`:
/// users with intent in minutes 0 and 1 (some without consent, one in another segment),
/// 100 € of spend and two purchases in minute 1 (CPA 50 €, so the segment fires at the end
/// of minute 1, with every intent already in), and a visit that moves the watermark past
/// `start + 5m`. Returns the traffic, the spend, and the users who must arrive (pseudonym
/// → product).
fn firing_story(
    start: i64,
    campaign: &str,
    rng: &mut SplitMix,
) -> (Vec<Value>, Vec<Value>, BTreeMap<String, String>) {
    let mut events = Vec::new();
    let mut expected = BTreeMap::new();
    let at = |m: i64, s: i64| start + m * MINUTE + s * 1_000;
    // Two buyers: they convert (the CPA's denominator) and are not selected.
    for b in 0..2 {
        let udid = format!("{campaign}-buyer-{b}");
        events.push(event(
            &udid,
            "page_view",
            at(1, b),
            campaign,
            &json!({"product_id": "borsa"}),
        ));
        events.push(event(
            &udid,
            "purchase",
            at(1, 30 + b),
            campaign,
            &json!({"value": 40.0, "order_id": format!("{udid}-o")}),
        ));
    }
    // Users with intent and consent: each goes once, with its last product.
    let intent_users = 3 + rng.next() % 4;
    for i in 0..intent_users {
        let udid = format!("{campaign}-intent-{i}");
        let first = format!("p-{i}-a");
        let last = format!("p-{i}-b");
        events.push(event(
            &udid,
            "page_view",
            at(0, i as i64),
            campaign,
            &json!({"product_id": first}),
        ));
        let kind = if i % 2 == 0 {
            "add_to_cart"
        } else {
            "page_view"
        };
        events.push(event(
            &udid,
            kind,
            at(1, i as i64),
            campaign,
            &json!({"product_id": last}),
        ));
        expected.insert(pseudonym(&udid), last);
    }
    // No marketing consent (absent, or refused): counted, never sent.
    events.push(event(
        &format!("{campaign}-noconsent-0"),
        "page_view",
        at(1, 40),
        campaign,
        &json!({"product_id": "x", "consent": null}),
    ));
    events.push(event(
        &format!("{campaign}-noconsent-1"),
        "page_view",
        at(1, 41),
        campaign,
        &json!({"product_id": "x", "consent": {"marketing": false}}),
    ));
    // Another segment (email): not selected.
    let mut other = event(
        &format!("{campaign}-email-0"),
        "page_view",
        at(1, 42),
        campaign,
        &json!({"product_id": "y"}),
    );
    other["channel"] = json!("email");
    events.push(other);
    // The watermark passes start + 5m.
    events.push(event(
        &format!("{campaign}-mover"),
        "page_view",
        at(5, 10),
        "quiet",
        &json!({"channel": "organic"}),
    ));
    let spend =
        vec![json!({"ts": at(1, 0), "channel": "social", "campaign": campaign, "amount": 100.0})];
    (events, spend, expected)
}

/// Eight cheap conversions (CPA 100 / 10 = 10 €) in minute 6, and a visit that moves the
/// watermark past start + 7m: the segment recovers.
fn recovery_story(start: i64, campaign: &str) -> Vec<Value> {
    let mut events: Vec<Value> = (0..8)
        .map(|r| {
            event(
                &format!("{campaign}-late-buyer-{r}"),
                "purchase",
                start + 6 * MINUTE + r * 1_000,
                campaign,
                &json!({"value": 5.0, "order_id": format!("{campaign}-late-{r}")}),
            )
        })
        .collect();
    events.push(event(
        &format!("{campaign}-mover-2"),
        "page_view",
        start + 7 * MINUTE + 10_000,
        "quiet",
        &json!({"channel": "organic"}),
    ));
    events
}

/// What the receiver accepted: users by pseudonym (with products and the keys they came
/// under), and signals in order.
#[derive(Debug, Default)]
struct Received {
    users: BTreeMap<String, Vec<(String, String)>>,
    signals: Vec<(String, String)>,
}

fn received(receiver: &Receiver) -> Received {
    let mut out = Received::default();
    let mut keys_seen = BTreeSet::new();
    for s in receiver.seen.lock().unwrap().iter().filter(|s| s.accepted) {
        // An idempotent receiver acts on a key once.
        if !keys_seen.insert(s.key.clone()) {
            continue;
        }
        assert_eq!(s.body["trigger"], "cpa_alto", "{}", s.body);
        assert_eq!(s.body["segmento"], "costi > 20€", "{}", s.body);
        if let Some(signal) = s.body["segnale"].as_str() {
            out.signals.push((signal.to_owned(), s.key.clone()));
        }
        for e in s.body["events"].as_array().unwrap() {
            assert!(
                e["tempo"].as_str().unwrap().ends_with('Z')
                    && e["tempo"].as_str().unwrap().len() == 24,
                "tempo with milliseconds: {e}"
            );
            assert!(
                ["visualizzazione", "carrello"].contains(&e["tipo"].as_str().unwrap()),
                "{e}"
            );
            out.users
                .entry(e["UDID"].as_str().unwrap().to_owned())
                .or_default()
                .push((
                    e["product_id"].as_str().unwrap_or("(none)").to_owned(),
                    s.key.clone(),
                ));
        }
    }
    out
}

fn wait_for(what: &str, seconds: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {seconds} s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_segment_over_cpa_sends_its_intent_users_once_with_their_product_then_recovers() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let receiver = Arc::new(Receiver::default());
    let url = start_receiver(&runtime, receiver.clone());
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &url);
    let server = Server::start_with_config_file(&dir.path().join("data"), &config, &[]);
    let http = client();
    let start = (support::now_ms() / MINUTE - 60) * MINUTE;
    let mut rng = SplitMix(12);
    let (events, spend, expected) = firing_story(start, "saldi", &mut rng);
    post_all_accepted(&http, &server, "/v1/costs", &spend);
    post_all_accepted(&http, &server, "/v1/events", &events);

    wait_for("the firing signal and its users", 60, || {
        let r = received(&receiver);
        r.signals.len() == 1 && r.users.len() >= expected.len()
    });
    post_all_accepted(
        &http,
        &server,
        "/v1/events",
        &recovery_story(start, "saldi"),
    );
    wait_for("the recovery signal", 60, || {
        received(&receiver).signals.len() == 2
    });
    // Let anything unexpected arrive before judging.
    std::thread::sleep(Duration::from_secs(2));
    let triggers = get_json(&http, &server.url("/v1/triggers"));
    let firings = get_json(&http, &server.url("/v1/triggers/firings?limit=1000"));
    let metrics = http
        .get(server.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    server.stop();
    let sample = |name: &str| -> Option<f64> {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
    };
    assert_eq!(
        sample("vedetta_trigger_users_sent_total{trigger=\"cpa_alto\"}"),
        Some(expected.len() as f64),
        "{metrics}"
    );
    assert_eq!(
        sample("vedetta_trigger_withheld_total{trigger=\"cpa_alto\"}"),
        Some(2.0)
    );
    // The engine's text table holds the segment's channel and campaign and the products
    // looked at, and had room for every one of them.
    let texts = sample("vedetta_trigger_texts").unwrap_or(0.0);
    assert!(texts >= 3.0, "{metrics}");
    assert_eq!(sample("vedetta_trigger_texts_not_kept"), Some(0.0));

    let r = received(&receiver);
    let signals: Vec<&str> = r.signals.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(signals, ["attivo", "rientrato"]);
    let got: BTreeMap<String, String> = r
        .users
        .iter()
        .map(|(user, sends)| {
            assert_eq!(
                sends.len(),
                1,
                "{user} arrived {} times: {sends:?}",
                sends.len()
            );
            (user.clone(), sends[0].0.clone())
        })
        .collect();
    assert_eq!(
        got, expected,
        "exactly the intent users with consent, each with its last product"
    );
    // Each firing's outcome: delivered, under the request id the receiver saw it in.
    for f in firings["firings"].as_array().unwrap() {
        let outcomes = f["outcomes"].as_array().unwrap();
        assert_eq!(outcomes.len(), 1, "{f}");
        let o = &outcomes[0];
        assert_eq!(o["destination"], "crm-push", "{f}");
        assert_eq!(o["state"], "delivered", "{f}");
        assert!(o["at"].is_string() && o["error"].is_null(), "{f}");
        match f["what"].as_str().unwrap() {
            "user" => {
                let key = &r.users[f["user"].as_str().unwrap()][0].1;
                assert_eq!(o["request"], json!(key), "{f}");
            }
            _ => {
                let signal = if f["signal"] == "firing" {
                    "attivo"
                } else {
                    "rientrato"
                };
                let (_, key) = r.signals.iter().find(|(s, _)| s == signal).unwrap();
                assert_eq!(o["request"], json!(key), "{f}");
            }
        }
    }
    let t = &triggers["triggers"][0];
    assert_eq!(t["name"], "cpa_alto");
    assert_eq!(t["users_sent"], expected.len() as u64, "{triggers}");
    assert_eq!(t["signals"], 2, "{triggers}");
    assert_eq!(t["withheld_no_consent"], 2, "{triggers}");
    let listed = firings["firings"].as_array().unwrap();
    assert_eq!(listed.len(), expected.len() + 2, "{firings}");
    // Every firing of this story is within the day (event time, an hour ago at most); the
    // receiver took everything, so the destination's queue is empty.
    assert_eq!(t["firings_last_day"], listed.len() as u64, "{triggers}");
    assert!(t["firings_last_hour"].as_u64().unwrap() <= listed.len() as u64);
    assert_eq!(triggers["firing_counts_capped"], false);
    let queue = &triggers["destinations"][0];
    assert_eq!(queue["destination"], "crm-push", "{triggers}");
    assert_eq!(queue["depth"], 0, "{triggers}");
    // The backtest over the stored log selects the same users, and sends nothing.
    let before = receiver.seen.lock().unwrap().len();
    let iso = |ms: i64| vedetta_core::time::EventTime(ms).to_rfc3339();
    let output = std::process::Command::new(support::BIN)
        .args(["triggers", "backtest", "--json", "--from"])
        .arg(iso(start))
        .arg("--to")
        .arg(iso(start + 60 * MINUTE))
        .arg("--config")
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("VEDETTA_PRIVACY__PSEUDONYM_KEY", KEY)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(&text).unwrap();
    let backtested: BTreeMap<String, String> = report[0]["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["user"].as_str().unwrap().to_owned(),
                u["product_or_tag"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(backtested, expected, "{report}");
    assert_eq!(report[0]["signals_firing"], 1, "{report}");
    assert_eq!(report[0]["signals_recovered"], 1, "{report}");
    assert_eq!(report[0]["withheld_no_consent"], 2, "{report}");
    assert_eq!(
        receiver.seen.lock().unwrap().len(),
        before,
        "the backtest sent nothing"
    );
    eprintln!(
        "{} users with their products, a firing and a recovery signal; 2 users without consent \
         withheld; the backtest agrees",
        expected.len()
    );
}

#[test]
fn a_receiver_down_for_a_while_gets_everything_afterwards_in_order() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let receiver = Arc::new(Receiver::default());
    // Down for the first 6 attempts: with the sender's backoff from 1 s, doubling, that is
    // about a minute of 500s.
    receiver.refuse_first.store(6, Ordering::SeqCst);
    let url = start_receiver(&runtime, receiver.clone());
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &url);
    let server = Server::start_with_config_file(&dir.path().join("data"), &config, &[]);
    let http = client();
    let start = (support::now_ms() / MINUTE - 60) * MINUTE;
    let (events, spend, expected) = firing_story(start, "saldi", &mut SplitMix(3));
    post_all_accepted(&http, &server, "/v1/costs", &spend);
    post_all_accepted(&http, &server, "/v1/events", &events);
    // The recovery comes while the receiver is still down: it must arrive after the firing.
    std::thread::sleep(Duration::from_secs(2));
    post_all_accepted(
        &http,
        &server,
        "/v1/events",
        &recovery_story(start, "saldi"),
    );
    wait_for("everything after the outage", 110, || {
        let r = received(&receiver);
        r.signals.len() == 2 && r.users.len() >= expected.len()
    });
    // Let the last settlement commit before reading.
    std::thread::sleep(Duration::from_millis(500));
    let metrics = http
        .get(server.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    // The failures and outcomes are stored: a restart keeps them.
    server.stop();
    let server = Server::start_with_config_file(&dir.path().join("data"), &config, &[]);
    let triggers = get_json(&http, &server.url("/v1/triggers"));
    let firings = get_json(&http, &server.url("/v1/triggers/firings?limit=1000"));
    let restarted_metrics = http
        .get(server.url("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    server.stop();
    // Each refused request was one failed attempt of a cpa_alto push; deliveries are
    // counted apart (one per request taken, however often it was tried).
    let requests_taken = {
        let seen = receiver.seen.lock().unwrap();
        seen.iter()
            .filter(|s| s.accepted)
            .map(|s| s.key.clone())
            .collect::<BTreeSet<_>>()
            .len() as u64
    };
    let t = &triggers["triggers"][0];
    assert_eq!(t["delivery_failures"], 6, "{triggers}");
    assert!(t["last_delivery_error"].is_string(), "{triggers}");
    let d = &t["deliveries"][0];
    assert_eq!(d["destination"], "crm-push", "{triggers}");
    assert_eq!(d["failed_attempts"], 6, "{triggers}");
    assert_eq!(d["delivered"], requests_taken, "{triggers}");
    assert_eq!(d["dead"], 0, "{triggers}");
    assert!(
        d["last_error"].as_str().unwrap().contains("500"),
        "{triggers}"
    );
    for text in [&metrics, &restarted_metrics] {
        for line in [
            "vedetta_trigger_delivery_failures_total{trigger=\"cpa_alto\",destination=\"crm-push\"} 6\n".to_string(),
            format!("vedetta_trigger_deliveries_total{{trigger=\"cpa_alto\",destination=\"crm-push\"}} {requests_taken}\n"),
            "vedetta_trigger_dead_letters_total{trigger=\"cpa_alto\",destination=\"crm-push\"} 0\n".to_string(),
        ] {
            assert!(text.contains(&line), "{line} not in {text}");
        }
    }
    let listed = firings["firings"].as_array().unwrap();
    assert_eq!(listed.len(), expected.len() + 2, "{firings}");
    for f in listed {
        assert_eq!(f["outcomes"][0]["state"], "delivered", "{f}");
    }
    let seen = receiver.seen.lock().unwrap();
    assert!(
        seen.iter().filter(|s| !s.accepted).count() == 6,
        "the outage was exercised"
    );
    drop(seen);
    let r = received(&receiver);
    let signals: Vec<&str> = r.signals.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(signals, ["attivo", "rientrato"], "in order");
    assert_eq!(
        r.users.keys().cloned().collect::<BTreeSet<_>>(),
        expected.keys().cloned().collect::<BTreeSet<_>>()
    );
}

#[test]
fn a_receiver_refusing_the_push_leaves_each_firing_dead_with_the_reason() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let receiver = Arc::new(Receiver::default());
    receiver.reject.store(true, Ordering::SeqCst);
    let url = start_receiver(&runtime, receiver.clone());
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &url);
    let server = Server::start_with_config_file(&dir.path().join("data"), &config, &[]);
    let http = client();
    let start = (support::now_ms() / MINUTE - 60) * MINUTE;
    let (events, spend, expected) = firing_story(start, "saldi", &mut SplitMix(5));
    post_all_accepted(&http, &server, "/v1/costs", &spend);
    post_all_accepted(&http, &server, "/v1/events", &events);
    let settled = |f: &Value| {
        f["outcomes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["state"] == "dead")
    };
    let mut firings = Value::Null;
    wait_for("every firing dead-lettered", 60, || {
        firings = get_json(&http, &server.url("/v1/triggers/firings?limit=1000"));
        let listed = firings["firings"].as_array().unwrap();
        listed.len() == expected.len() + 1 && listed.iter().all(settled)
    });
    let dead = get_json(&http, &server.url("/v1/outbox/dead"));
    let triggers = get_json(&http, &server.url("/v1/triggers"));
    server.stop();
    let refused: BTreeSet<String> = receiver
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.key.clone())
        .collect();
    let dead_ids: BTreeSet<String> = dead["dead"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["notification"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(dead_ids, refused, "each refused request is one dead letter");
    for f in firings["firings"].as_array().unwrap() {
        let o = &f["outcomes"][0];
        assert_eq!(o["destination"], "crm-push", "{f}");
        let request = o["request"].as_str().unwrap();
        assert!(dead_ids.contains(request), "{f} names a dead letter");
        let error = o["error"].as_str().unwrap();
        assert!(
            error.contains("422") && error.contains("segmento sconosciuto"),
            "{f}"
        );
    }
    let d = &triggers["triggers"][0]["deliveries"][0];
    assert_eq!(d["dead"], dead_ids.len() as u64, "{triggers}");
    assert_eq!(d["failed_attempts"], dead_ids.len() as u64, "{triggers}");
    assert_eq!(d["delivered"], 0, "{triggers}");
}

#[test]
fn a_dry_run_destination_records_each_firing_dry_run_and_sends_nothing() {
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
notify = ["crm-try"]

[[alerts.destinations]]
name = "crm-try"
kind = "webhook"
format = "seed"
interval = "1s"
dry_run = true
url = "{url}"
"#
        ),
    )
    .unwrap();
    let server = Server::start_with_config_file(&dir.path().join("data"), &config, &[]);
    let http = client();
    let now = support::now_ms();
    let purchases: Vec<Value> = (0..3)
        .map(|i| {
            event(
                &format!("dry-{i}"),
                "purchase",
                now - 1_000 + i,
                "saldi",
                &json!({"value": 10.0, "order_id": format!("dry-o-{i}")}),
            )
        })
        .collect();
    post_all_accepted(&http, &server, "/v1/events", &purchases);
    let mut firings = Value::Null;
    wait_for("three firings recorded dry_run", 60, || {
        firings = get_json(&http, &server.url("/v1/triggers/firings?limit=100"));
        let listed = firings["firings"].as_array().unwrap();
        listed.len() == 3
            && listed
                .iter()
                .all(|f| f["outcomes"][0]["state"] == "dry_run")
    });
    let triggers = get_json(&http, &server.url("/v1/triggers"));
    server.stop();
    assert!(
        receiver.seen.lock().unwrap().is_empty(),
        "a dry run sends nothing"
    );
    for f in firings["firings"].as_array().unwrap() {
        let o = &f["outcomes"][0];
        assert_eq!(o["destination"], "crm-try", "{f}");
        assert!(o["request"].is_string() && o["error"].is_null(), "{f}");
    }
    let d = &triggers["triggers"][0]["deliveries"][0];
    assert!(d["delivered"].as_u64().unwrap() >= 1, "{triggers}");
    assert_eq!(d["failed_attempts"], 0, "{triggers}");
}

#[test]
fn sigkill_during_pushes_loses_no_user_and_an_idempotent_receiver_gets_each_once() {
    let started = Instant::now();
    let rounds = env_number("CRASH_TRIGGERS_ROUNDS", 6);
    let mut rng = SplitMix(env_number("CRASH_TRIGGERS_SEED", 20_261_204));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let receiver = Arc::new(Receiver::default());
    // Slow answers: a kill often lands while a push is at the receiver.
    receiver.delay_ms.store(400, Ordering::SeqCst);
    let url = start_receiver(&runtime, receiver.clone());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = config(dir.path(), &url);
    let http = client();
    // Each round is a new campaign whose segment fires: 10 minutes apart in event time.
    let base = (support::now_ms() / MINUTE - 24 * 60) * MINUTE;
    let mut expected = BTreeMap::new();
    let (mut kills, mut in_push) = (0, 0);
    for round in 0..rounds {
        let server = Server::start_with_config_file(&data, &config, &[]);
        let start = base + round as i64 * 10 * MINUTE;
        let (events, spend, users) = firing_story(start, &format!("c{round}"), &mut rng);
        expected.extend(users);
        post_all_accepted(&http, &server, "/v1/costs", &spend);
        post_all_accepted(&http, &server, "/v1/events", &events);
        if round % 2 == 1 {
            let until = Instant::now() + Duration::from_secs(5);
            while receiver.in_flight.load(Ordering::SeqCst) == 0 && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
        } else {
            std::thread::sleep(Duration::from_millis(rng.next() % 2_500));
        }
        if receiver.in_flight.load(Ordering::SeqCst) > 0 {
            in_push += 1;
        }
        server.kill();
        kills += 1;
    }
    let server = Server::start_with_config_file(&data, &config, &[]);
    wait_for("every user after the crashes", 90, || {
        received(&receiver).users.len() >= expected.len()
    });
    // The firing outcomes are exact across the kills: each delivered, none left queued.
    let mut firings = Value::Null;
    wait_for("every firing recorded delivered", 60, || {
        firings = get_json(&http, &server.url("/v1/triggers/firings?limit=1000"));
        firings["firings"].as_array().unwrap().iter().all(|f| {
            f["outcomes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|o| o["state"] == "delivered")
        })
    });
    std::thread::sleep(Duration::from_secs(2));
    server.stop();

    let r = received(&receiver);
    for (user, sends) in &r.users {
        assert_eq!(
            sends.len(),
            1,
            "{user} acted on {} times: {sends:?}",
            sends.len()
        );
    }
    let got: BTreeMap<String, String> = r
        .users
        .iter()
        .map(|(u, s)| (u.clone(), s[0].0.clone()))
        .collect();
    assert_eq!(got, expected);
    // Each user's firing names the request the receiver acted on it in.
    let user_firings: Vec<&Value> = firings["firings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["what"] == "user")
        .collect();
    assert_eq!(user_firings.len(), expected.len(), "{firings}");
    for f in user_firings {
        let key = &r.users[f["user"].as_str().unwrap()][0].1;
        assert_eq!(f["outcomes"][0]["request"], json!(key), "{f}");
    }
    // Every request under one key carried the same body.
    let mut bodies: BTreeMap<String, &Value> = BTreeMap::new();
    let seen = receiver.seen.lock().unwrap();
    for s in seen.iter() {
        if let Some(previous) = bodies.insert(s.key.clone(), &s.body) {
            assert_eq!(previous, &s.body, "key {} with two bodies", s.key);
        }
    }
    assert!(rounds < 2 || in_push > 0, "no kill landed during a push");
    eprintln!(
        "{kills} SIGKILLs ({in_push} during a push): {} users each acted on once, {} requests \
         under {} keys; {:.1} s",
        expected.len(),
        seen.len(),
        bodies.len(),
        started.elapsed().as_secs_f64()
    );
}
