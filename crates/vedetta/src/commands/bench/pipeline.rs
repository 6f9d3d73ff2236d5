//! `vedetta bench pipeline`: the whole system, intake → pipeline → KPIs queryable.
//!
//! Starts a server (in this process, temporary data directory) unless `--url` names one.
//! Clients post generated NDJSON batches, either as fast as the server takes them (the
//! default: throughput) or at a fixed `--rate` (latency at that load). Each cycle through
//! the pre-generated bodies gets fresh user ids and event ids, so every event is new to the
//! pipeline: no cycle is dropped as duplicates.
//!
//! Meanwhile a prober sends single events with a unique campaign and, from the moment the
//! server acknowledges each one, waits until it is counted in `GET /v1/kpis`: the end-to-end
//! latency a dashboard user sees. It polls the cheap `/v1/status` until `processed_offset`
//! passes the probe's `end_offset` (a commit is visible to queries the moment it is made),
//! then confirms with one `/v1/kpis` query for the probe's campaign; a probe not found there
//! counts as not seen.
//!
//! Throughput is reported twice: what intake accepted during the run, and what was
//! processed and queryable from start to the moment the pipeline caught up.
//!
//! The cycled bodies keep their event times, so event time stands still: no watermark
//! passes a minute, no user goes idle, and every user of the run stays in the state (the
//! worst case for memory, and no trigger judges a minute). `--live` (with `--rate`) sends
//! instead what the generator makes at that rate from now on, as `vedetta gen --rate`
//! does: event time follows the clock, users return, sessions end, minutes close. A
//! thread generates the bodies a few batches ahead of the pacer.

use super::{LocalServer, make_bodies, summarize};
use crate::clock::SystemClock;
use hdrhistogram::Histogram;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, Semaphore};
use vedetta_core::time::Clock;

#[derive(Debug, clap::Args)]
pub struct PipelineBenchArgs {
    /// Server to drive; default: start one in this process.
    #[arg(long)]
    url: Option<String>,
    #[arg(long, env = "VEDETTA_API_KEY")]
    key: Option<String>,
    /// How long to send.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Events per second to send; default: as fast as the server takes them.
    #[arg(long)]
    rate: Option<f64>,
    /// Events per batch request.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Concurrent batch requests.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Distinct bodies generated up front (cycled with fresh ids).
    #[arg(long, default_value_t = 100)]
    bodies: usize,
    /// End-to-end latency probes per second.
    #[arg(long, default_value_t = 20.0)]
    probe_rate: f64,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// A configuration file for the server started in this process (to measure, say,
    /// the pipeline with alert rules loaded).
    #[arg(long, conflicts_with = "url")]
    config: Option<std::path::PathBuf>,
    /// Send live traffic (event time following the clock, returning users) generated at
    /// `--rate`, instead of cycling pre-generated bodies whose event times stand still.
    #[arg(long, requires = "rate")]
    live: bool,
}

/// Where the request bodies come from.
enum Bodies {
    /// Pre-generated bodies, cycled with fresh user and event ids ([`body_for`]).
    Cycled(Vec<String>),
    /// Bodies generated as they are sent, by a thread a few batches ahead.
    Live(Mutex<tokio::sync::mpsc::Receiver<String>>),
}

impl Bodies {
    async fn next(&self, n: u64) -> Option<String> {
        match self {
            Bodies::Cycled(templates) => Some(body_for(templates, n)),
            Bodies::Live(receiver) => receiver.lock().await.recv().await,
        }
    }
}

/// Starts the thread generating live bodies of `batch` events at about `rate` events a
/// second from now; it ends when the receiver is dropped.
fn live_bodies(rate: f64, batch: usize) -> anyhow::Result<Bodies> {
    use vedetta_synth::{SynthRecord, to_ndjson_line};
    let config = crate::commands::generate::live_config(7, 2_000_000, rate, SystemClock.now_ms())?;
    let mut events = crate::commands::generate::synth(config)?
        .filter(|a| matches!(a.record, SynthRecord::Event(_)));
    let (sender, receiver) = tokio::sync::mpsc::channel(8);
    std::thread::Builder::new()
        .name("bench-live-gen".into())
        .spawn(move || {
            loop {
                let mut body = Vec::with_capacity(batch * 360);
                for arrival in events.by_ref().take(batch) {
                    to_ndjson_line(&arrival.record, &mut body);
                }
                let body = String::from_utf8(body).unwrap_or_default();
                if body.is_empty() || sender.blocking_send(body).is_err() {
                    return;
                }
            }
        })?;
    Ok(Bodies::Live(Mutex::new(receiver)))
}

/// The most events a second `--rate` may ask for, and probes a second `--probe-rate`: past
/// them a pacer's period rounds to zero (and a zero period is no schedule at all).
const MAX_RATE: f64 = 10_000_000.0;
const MAX_PROBE_RATE: f64 = 10_000.0;

/// `value` when it is a number in (0, `max`], else an error naming `flag`.
fn checked_rate(flag: &str, value: f64, max: f64) -> anyhow::Result<f64> {
    if value.is_finite() && value > 0.0 && value <= max {
        Ok(value)
    } else {
        anyhow::bail!("{flag} must be above 0 and at most {max}, got {value}")
    }
}

pub fn run(args: &PipelineBenchArgs) -> anyhow::Result<()> {
    if let Some(rate) = args.rate {
        checked_rate("--rate", rate, MAX_RATE)?;
    }
    checked_rate("--probe-rate", args.probe_rate, MAX_PROBE_RATE)?;
    let (local, base) = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            let server = LocalServer::start_with_config(&text)?;
            let base = format!("http://{}", server.address);
            (Some(server), base)
        }
        None => LocalServer::or_url(args.url.as_deref())?,
    };
    let bodies = match args.rate.filter(|_| args.live) {
        Some(rate) => {
            eprintln!(
                "generating live traffic in batches of {} events…",
                args.batch
            );
            live_bodies(rate, args.batch)?
        }
        None => {
            eprintln!(
                "generating {} bodies of {} events…",
                args.bodies, args.batch
            );
            Bodies::Cycled(
                make_bodies(args.bodies, args.batch)?
                    .into_iter()
                    .map(|b| String::from_utf8(b).unwrap_or_default())
                    .collect(),
            )
        }
    };
    eprintln!(
        "driving {base} for {} s at {}",
        args.seconds,
        args.rate
            .map_or("full speed".to_string(), |r| format!("{r:.0} events/s"))
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("bench-client")
        .build()?;
    let mut report = runtime.block_on(drive(args, &base, Arc::new(bodies)))?;
    // Before the local server stops: its threads' CPU time (the processor's, the trigger
    // consumer's `act`, …), so a run with triggers and one without compare by CPU.
    let cpu = thread_cpu_seconds();
    let process_cpu = process_cpu_seconds();
    report["cpu_seconds_by_thread"] = json!(cpu);
    drop(local);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "pipeline: {:.0} events/s intake → KPIs ({} events processed in {:.1} s; intake accepted {:.0}/s while sending)",
            report["end_to_end_events_per_second"]
                .as_f64()
                .unwrap_or(0.0),
            report["events_processed"],
            report["seconds_until_caught_up"].as_f64().unwrap_or(0.0),
            report["intake_events_per_second"].as_f64().unwrap_or(0.0),
        );
        let h = &report["visible_latency_ms"];
        println!(
            "  acknowledged → visible in /v1/kpis: p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1} ms (n = {}, {} not seen)",
            h["p50"].as_f64().unwrap_or(0.0),
            h["p90"].as_f64().unwrap_or(0.0),
            h["p99"].as_f64().unwrap_or(0.0),
            h["max"].as_f64().unwrap_or(0.0),
            h["count"],
            report["probes_not_seen"]
        );
        println!(
            "  max processing lag {} events; {} failed requests; {} batches the pacer could not send on time",
            report["max_lag_events"], report["failed_requests"], report["behind_schedule"]
        );
        if !cpu.is_empty() {
            let live: f64 = cpu.values().sum();
            let total = process_cpu.unwrap_or(live);
            let threads: Vec<String> = cpu
                .iter()
                .map(|(name, seconds)| format!("{name} {seconds:.2}"))
                .collect();
            // Threads that ended are in the process's total only: the snapshot encoder
            // (one thread per snapshot, the processor's work done off its thread) is one.
            println!(
                "  CPU seconds (user + sys) by thread: {}; threads that ended (snapshot encoders among them) {:.2}; this process {total:.2}",
                threads.join(", "),
                (total - live).max(0.0)
            );
        }
    }
    Ok(())
}

/// CPU seconds (user + system) of this process's live threads, summed by thread name,
/// from `/proc/self/task/*/stat` (Linux; empty elsewhere).
fn thread_cpu_seconds() -> std::collections::BTreeMap<String, f64> {
    let mut by_name = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return by_name;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        if let Some((name, seconds)) = super::stat_cpu_seconds(&stat) {
            *by_name.entry(name.to_string()).or_insert(0.0) += seconds;
        }
    }
    by_name
}

/// CPU seconds (user + system) of the whole process, threads that ended included, from
/// `/proc/self/stat` (Linux; `None` elsewhere).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    super::stat_cpu_seconds(&stat).map(|(_, seconds)| seconds)
}

/// A body with every user id and event id made unique to this cycle.
fn body_for(templates: &[String], n: u64) -> String {
    let index = (n % templates.len() as u64) as usize;
    let cycle = n / templates.len() as u64;
    let template = &templates[index];
    if cycle == 0 {
        return template.clone();
    }
    let tag = format!("c{cycle}-");
    template
        .replace("\"udid\":\"", &format!("\"udid\":\"{tag}"))
        .replace("\"UDID\":\"", &format!("\"UDID\":\"{tag}"))
        .replace("\"event_id\":\"", &format!("\"event_id\":\"{tag}"))
}

async fn status(client: &reqwest::Client, base: &str, key: Option<&str>) -> serde_json::Value {
    let request = super::with_key(client.get(format!("{base}/v1/status")), key);
    match request.send().await {
        Ok(response) => response.json_value().await,
        Err(_) => serde_json::Value::Null,
    }
}

trait JsonValue {
    async fn json_value(self) -> serde_json::Value;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self) -> serde_json::Value {
        let text = self.text().await.unwrap_or_default();
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }
}

async fn drive(
    args: &PipelineBenchArgs,
    base: &str,
    bodies: Arc<Bodies>,
) -> anyhow::Result<serde_json::Value> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections + 8)
        .timeout(Duration::from_secs(30))
        .build()?;
    let key = args.key.clone();
    let start_status = status(&client, base, key.as_deref()).await;
    let start_offset = start_status["processed_offset"].as_u64().unwrap_or(0);
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let behind = Arc::new(AtomicU64::new(0));
    let next_body = Arc::new(AtomicU64::new(0));
    let slots = Arc::new(Semaphore::new(args.connections.max(1)));
    let started = Instant::now();
    let endpoint = format!("{base}/v1/events");

    let post = {
        let (client, endpoint, key, accepted, failed, bodies, next_body) = (
            client.clone(),
            endpoint.clone(),
            key.clone(),
            accepted.clone(),
            failed.clone(),
            bodies.clone(),
            next_body.clone(),
        );
        move || {
            let (client, endpoint, key, accepted, failed, bodies, next_body) = (
                client.clone(),
                endpoint.clone(),
                key.clone(),
                accepted.clone(),
                failed.clone(),
                bodies.clone(),
                next_body.clone(),
            );
            async move {
                let n = next_body.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.next(n).await else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let request = super::post(
                    &client,
                    &endpoint,
                    "application/x-ndjson",
                    body,
                    key.as_deref(),
                );
                match request.send().await {
                    Ok(response) if response.status().is_success() => {
                        let value = response.json_value().await;
                        accepted
                            .fetch_add(value["accepted"].as_u64().unwrap_or(0), Ordering::Relaxed);
                    }
                    Ok(response) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        if response.status().as_u16() == 503 {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    };

    let mut tasks = tokio::task::JoinSet::new();
    match args.rate {
        None => {
            for _ in 0..args.connections {
                let (post, stop) = (post.clone(), stop.clone());
                tasks.spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        post().await;
                    }
                });
            }
        }
        Some(rate) => {
            let (post, stop, slots, behind) =
                (post.clone(), stop.clone(), slots.clone(), behind.clone());
            let period = Duration::from_secs_f64(args.batch as f64 / rate.max(1.0));
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let mut sends = tokio::task::JoinSet::new();
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    match slots.clone().try_acquire_owned() {
                        Ok(permit) => {
                            let post = post.clone();
                            sends.spawn(async move {
                                post().await;
                                drop(permit);
                            });
                        }
                        Err(_) => {
                            behind.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    while sends.try_join_next().is_some() {}
                }
                while sends.join_next().await.is_some() {}
            });
        }
    }

    // Probes: a fresh event with a unique campaign, then poll /v1/kpis until it counts.
    let latency = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let not_seen = Arc::new(AtomicU64::new(0));
    {
        let (client, base, key, stop, latency, not_seen) = (
            client.clone(),
            base.to_string(),
            key.clone(),
            stop.clone(),
            latency.clone(),
            not_seen.clone(),
        );
        let period = Duration::from_secs_f64(1.0 / args.probe_rate.max(0.1));
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(period);
            let mut probes = tokio::task::JoinSet::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                n += 1;
                let (client, base, key, latency, not_seen) = (
                    client.clone(),
                    base.clone(),
                    key.clone(),
                    latency.clone(),
                    not_seen.clone(),
                );
                probes.spawn(async move {
                    if let Some(micros) = probe(&client, &base, key.as_deref(), n).await {
                        let _ = latency.lock().await.record(micros.max(1));
                    } else {
                        not_seen.fetch_add(1, Ordering::Relaxed);
                    }
                });
                while probes.try_join_next().is_some() {}
            }
            while probes.join_next().await.is_some() {}
        });
    }

    // Watch the lag while sending.
    let max_lag = Arc::new(AtomicU64::new(0));
    {
        let (client, base, key, stop, max_lag) = (
            client.clone(),
            base.to_string(),
            key.clone(),
            stop.clone(),
            max_lag.clone(),
        );
        tasks.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let s = status(&client, &base, key.as_deref()).await;
                max_lag.fetch_max(s["lag_events"].as_u64().unwrap_or(0), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }

    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let sent_for = started.elapsed().as_secs_f64();
    let accepted_total = accepted.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    // Processed and queryable: wait until the pipeline has committed everything.
    let (processed, caught_up) = loop {
        let s = status(&client, base, key.as_deref()).await;
        let end = s["log_end_offset"].as_u64().unwrap_or(0);
        let processed = s["processed_offset"].as_u64().unwrap_or(0);
        if processed >= end && end > 0 {
            break (processed - start_offset, started.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let latency = latency.lock().await;
    Ok(json!({
        "rate_target": args.rate,
        "seconds_sending": sent_for,
        "seconds_until_caught_up": caught_up,
        "events_accepted": accepted_total,
        "events_processed": processed,
        "intake_events_per_second": accepted_total as f64 / sent_for,
        "end_to_end_events_per_second": processed as f64 / caught_up,
        "visible_latency_ms": summarize(&latency),
        "probes_not_seen": not_seen.load(Ordering::Relaxed),
        "max_lag_events": max_lag.load(Ordering::Relaxed),
        "failed_requests": failed.load(Ordering::Relaxed),
        "behind_schedule": behind.load(Ordering::Relaxed),
        "batch_size": args.batch,
        "connections": args.connections,
    }))
}

/// Sends one probe event and returns the microseconds from its acknowledgement until
/// `/v1/kpis` counts it (None if not seen within 30 s).
async fn probe(client: &reqwest::Client, base: &str, key: Option<&str>, n: u64) -> Option<u64> {
    let now = SystemClock.now_ms();
    let campaign = format!("bench-probe-{n}-{now}");
    let body = format!(
        r#"{{"udid":"probe-{n}","type":"page_view","ts":{now},"event_id":"{campaign}","channel":"direct","campaign":"{campaign}"}}"#
    );
    let request = super::post(
        client,
        &format!("{base}/v1/events"),
        "application/json",
        body,
        key,
    );
    let response = request.send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    let acknowledged = Instant::now();
    let end_offset = response.json_value().await["end_offset"].as_u64()?;
    let authorized = |request| super::with_key(request, key);
    while acknowledged.elapsed() < Duration::from_secs(30) {
        let status = match authorized(client.get(format!("{base}/v1/status")))
            .send()
            .await
        {
            Ok(response) => response.json_value().await,
            Err(_) => serde_json::Value::Null,
        };
        if status["processed_offset"]
            .as_u64()
            .is_some_and(|p| p >= end_offset)
        {
            let query = format!(
                "{base}/v1/kpis?granularity=1m&from={}&to={}&campaign={campaign}",
                now - 120_000,
                now + 120_000
            );
            let answer = authorized(client.get(&query))
                .send()
                .await
                .ok()?
                .json_value()
                .await;
            // Measured after the query that shows it: what a dashboard would wait.
            let elapsed = acknowledged.elapsed().as_micros() as u64;
            return (answer["totals"]["events"]["page_view"].as_i64() == Some(1))
                .then_some(elapsed);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rates_outside_what_a_pacer_can_keep_are_refused_by_name() {
        for bad in [0.0, -5.0, f64::NAN, f64::INFINITY, 1e300] {
            let error = checked_rate("--rate", bad, MAX_RATE)
                .unwrap_err()
                .to_string();
            assert!(error.starts_with("--rate must be above 0"), "{error}");
        }
        assert_eq!(
            checked_rate("--rate", 25_000.0, MAX_RATE).ok(),
            Some(25_000.0)
        );
        assert_eq!(
            checked_rate("--rate", MAX_RATE, MAX_RATE).ok(),
            Some(MAX_RATE)
        );
    }
}
