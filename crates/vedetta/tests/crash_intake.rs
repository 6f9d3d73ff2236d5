//! Crash safety of intake: SIGKILL the server at random points during heavy intake, many
//! times over, and check that every event that got a 200 is in the log and that the log
//! always reopens.
//!
//! Rounds default to 24; `CRASH_TEST_ROUNDS` changes it. The kill points are drawn from
//! a fixed seed (`CRASH_TEST_SEED`) so a failure can be replayed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{BIN, Server, SplitMix, env_number, now_ms};

fn batch_body(prefix: &str, size: usize, now_ms: i64) -> (String, Vec<String>) {
    let mut body = String::new();
    let mut ids = Vec::with_capacity(size);
    for i in 0..size {
        let id = format!("{prefix}-{i}");
        body.push_str(&format!(
            r#"{{"udid":"user-{i}","type":"page_view","ts":{now_ms},"event_id":"{id}","page":"/p"}}"#
        ));
        body.push('\n');
        ids.push(id);
    }
    (body, ids)
}

#[test]
fn sigkill_during_heavy_intake_loses_no_acknowledged_event() {
    let rounds = env_number("CRASH_TEST_ROUNDS", 24);
    let seed = env_number("CRASH_TEST_SEED", 20_261_125);
    let mut rng = SplitMix(seed);
    let dir = tempfile::tempdir().unwrap();
    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut kills_during_intake = 0;

    for round in 0..rounds {
        let server = Server::start(dir.path(), &[]);
        let acknowledged_before_round = acknowledged.lock().unwrap().len();
        let endpoint = server.url("/v1/events");
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..4)
            .map(|c| {
                let (client, endpoint, stop, acknowledged) = (
                    client.clone(),
                    endpoint.clone(),
                    stop.clone(),
                    acknowledged.clone(),
                );
                runtime.spawn(async move {
                    let mut sequence = 0;
                    while !stop.load(Ordering::Relaxed) {
                        sequence += 1;
                        let now_ms = now_ms();
                        let (body, ids) =
                            batch_body(&format!("r{round}-c{c}-b{sequence}"), 250, now_ms);
                        let response = client
                            .post(&endpoint)
                            .header("content-type", "application/x-ndjson")
                            .body(body)
                            .send()
                            .await;
                        let Ok(response) = response else { break };
                        if response.status() != 200 {
                            continue;
                        }
                        let Ok(text) = response.text().await else {
                            break;
                        };
                        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
                        assert_eq!(value["accepted"], 250, "{value}");
                        acknowledged.lock().unwrap().extend(ids);
                    }
                })
            })
            .collect();
        let delay = Duration::from_millis(150 + rng.next() % 1350);
        std::thread::sleep(delay);
        let before_kill = acknowledged.lock().unwrap().len();
        server.kill();
        stop.store(true, Ordering::Relaxed);
        for handle in clients {
            let _ = runtime.block_on(handle);
        }
        // The kill landed during intake if this round's clients had been acknowledged.
        if before_kill > acknowledged_before_round {
            kills_during_intake += 1;
        }
    }

    // Reopen once more: the log must open, and hold every acknowledged event.
    Server::start(dir.path(), &[]).kill();
    let dump = Command::new(BIN)
        .args(["log", "dump", "--data-dir"])
        .arg(dir.path())
        .output()
        .expect("run vedetta log dump");
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let mut stored = HashSet::new();
    let mut offsets = Vec::new();
    for line in dump.stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let record: serde_json::Value = serde_json::from_slice(line).unwrap();
        offsets.push(record["offset"].as_u64().unwrap());
        stored.insert(record["event_id"].as_str().unwrap().to_string());
    }
    let acknowledged = acknowledged.lock().unwrap();
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|id| !stored.contains(*id))
        .take(5)
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged events missing after {rounds} SIGKILLs, e.g. {lost:?}",
        acknowledged
            .iter()
            .filter(|id| !stored.contains(*id))
            .count()
    );
    assert!(
        acknowledged.len() > 10_000,
        "the load was too light to mean anything: {} events acknowledged",
        acknowledged.len()
    );
    let expected: Vec<u64> = (0..offsets.len() as u64).collect();
    assert_eq!(offsets, expected, "offsets are dense and ordered");
    assert!(
        kills_during_intake >= rounds / 2,
        "most kills should land during intake ({kills_during_intake} of {rounds})"
    );
    eprintln!(
        "{rounds} SIGKILLs: {} events acknowledged, {} stored, none lost",
        acknowledged.len(),
        stored.len()
    );
}
