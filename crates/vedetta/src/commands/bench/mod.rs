//! `vedetta bench`: benchmarks that drive the real program over HTTP.
//!
//! `bench intake` starts a server (in this process, on its own runtime and a temporary
//! data directory, fsync on) unless `--url` names one, then for `--seconds`:
//! - `--connections` clients post NDJSON batches of `--batch` events made by the
//!   generator, as fast as the server takes them;
//! - one prober posts single-event requests at `--probe-rate` per second and records their
//!   latency: what a tag manager's one-event call sees under that load.
//!
//! It prints events/s and latency percentiles (batch requests and single-event probes).

use crate::clock::SystemClock;
use crate::config::{Overrides, load_from};
use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use vedetta_core::time::Clock;
use vedetta_synth::{SynthConfig, SynthRecord, to_ndjson_line};

mod alerts;
mod pipeline;
mod processor;
mod push;
mod rounds;
mod stage;
mod tracker;
mod webhooks;

#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Durable HTTP intake throughput and latency.
    Intake(IntakeBenchArgs),
    /// The whole system: intake → pipeline → KPIs queryable; throughput and end-to-end
    /// latency (acknowledged → visible in /v1/kpis).
    Pipeline(pipeline::PipelineBenchArgs),
    /// Alert latency: from the event that moves the watermark past a minute to the Slack
    /// request of the alert it fires.
    Alerts(alerts::AlertsBenchArgs),
    /// Browser intake as the tracker makes it: one event per `text/plain` request with a
    /// site key, from many connections.
    Tracker(tracker::TrackerBenchArgs),
    /// Trigger pushes: from a batch's first event to the receiver, at the push interval.
    Push(push::PushBenchArgs),
    /// What the trigger stage adds to the processor's CPU: the same generated records at
    /// `--rate` events a second of event time, processed with and without it on one thread.
    Stage(stage::StageBenchArgs),
    /// What a trigger set adds to the processor's CPU: the processor itself over a real log
    /// and store, traffic appended at `--rate` events a second, without and with the set.
    Processor(processor::ProcessorBenchArgs),
    /// What the rounds `bench processor --rounds-file` kept say together, setup by setup:
    /// each ratio's mean over the rounds with its 95 % interval.
    Rounds(rounds::RoundsArgs),
    /// Shopify and mapped (ERP/middleware) webhooks at a fixed rate each: latency
    /// percentiles of durable answers.
    Webhooks(webhooks::WebhooksBenchArgs),
}

#[derive(Debug, clap::Args)]
pub struct IntakeBenchArgs {
    /// Server to drive; default: start one in this process.
    #[arg(long)]
    url: Option<String>,
    #[arg(long, env = "VEDETTA_API_KEY")]
    key: Option<String>,
    /// How long to drive the load.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Events per batch request.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Concurrent batch clients.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Single-event probe requests per second.
    #[arg(long, default_value_t = 50.0)]
    probe_rate: f64,
    /// Distinct bodies to cycle through (generated up front).
    #[arg(long, default_value_t = 200)]
    bodies: usize,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Intake(args) => intake(&args),
        BenchCommand::Pipeline(args) => pipeline::run(&args),
        BenchCommand::Alerts(args) => alerts::run(&args),
        BenchCommand::Tracker(args) => tracker::run(&args),
        BenchCommand::Push(args) => push::run(&args),
        BenchCommand::Stage(args) => stage::run(&args),
        BenchCommand::Processor(args) => processor::run(&args),
        BenchCommand::Rounds(args) => rounds::run(&args),
        BenchCommand::Webhooks(args) => webhooks::run(&args),
    }
}

/// The name and the CPU seconds (user + system) in a `/proc/…/stat` line: `pid (comm)
/// state ppid …`, the name possibly holding spaces and parentheses, utime and stime the
/// 14th and 15th fields in clock ticks of 1/100 s (`USER_HZ`).
fn stat_cpu_seconds(stat: &str) -> Option<(&str, f64)> {
    stat_times(stat).map(|(name, user, system)| (name, user + system))
}

/// The name, and the user and system CPU seconds apart, in a `/proc/…/stat` line (see
/// [`stat_cpu_seconds`]).
fn stat_times(stat: &str) -> Option<(&str, f64, f64)> {
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    let name = stat.get(open + 1..close)?;
    // After the name: state is field 3, utime field 14, stime field 15.
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    Some((name, ticks(11)? as f64 / 100.0, ticks(12)? as f64 / 100.0))
}

/// A server running on its own runtime in this process, stopped on drop.
struct LocalServer {
    address: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl LocalServer {
    fn start() -> anyhow::Result<Self> {
        Self::start_with_config("")
    }

    /// A server in this process with this configuration file text.
    fn start_with_config(config_text: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("vedetta.toml");
        std::fs::write(&file, config_text)?;
        // The process's VEDETTA_* settings apply (to benchmark a configuration), except
        // where the server lives.
        let mut env: Vec<(String, String)> = std::env::vars()
            .filter(|(name, _)| name.starts_with(crate::config::ENV_PREFIX))
            .filter(|(name, _)| name != "VEDETTA_DATA_DIR" && name != "VEDETTA_LISTEN")
            .collect();
        env.push((
            "VEDETTA_DATA_DIR".to_string(),
            dir.path().display().to_string(),
        ));
        env.push(("VEDETTA_LISTEN".to_string(), "127.0.0.1:0".to_string()));
        let config = load_from(Some(&file), &env, &Overrides::default())?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("bench-server")
                .build()?;
            runtime.block_on(crate::server::serve(
                config,
                async move {
                    let _ = stop_rx.await;
                },
                move |address| {
                    let _ = address_tx.send(address);
                },
            ))
        });
        let address = address_rx
            .recv_timeout(Duration::from_secs(30))
            .context("the benchmark server did not start")?;
        Ok(Self {
            address,
            stop: Some(stop_tx),
            thread: Some(thread),
            _dir: dir,
        })
    }
}

impl LocalServer {
    /// The server to drive: the one at `url`, or a new one in this process (kept alive by
    /// the returned handle).
    fn or_url(url: Option<&str>) -> anyhow::Result<(Option<LocalServer>, String)> {
        Ok(match url {
            Some(url) => (None, url.trim_end_matches('/').to_string()),
            None => {
                let server = LocalServer::start()?;
                let base = format!("http://{}", server.address);
                (Some(server), base)
            }
        })
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn intake(args: &IntakeBenchArgs) -> anyhow::Result<()> {
    let (local, base) = LocalServer::or_url(args.url.as_deref())?;
    eprintln!(
        "generating {} bodies of {} events…",
        args.bodies, args.batch
    );
    let bodies = Arc::new(make_bodies(args.bodies, args.batch)?);
    let event_bytes: usize = bodies.iter().map(Vec::len).sum();
    eprintln!(
        "average event size {} bytes; driving {base} for {} s with {} connections",
        event_bytes / (args.bodies * args.batch).max(1),
        args.seconds,
        args.connections
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("bench-client")
        .build()?;
    let report = runtime.block_on(drive(args, &base, bodies))?;
    drop(local);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "intake: {:.0} events/s sustained over {:.1} s ({} events in {} batch requests, {} failed)",
            report["events_per_second"].as_f64().unwrap_or(0.0),
            report["seconds"].as_f64().unwrap_or(0.0),
            report["events_accepted"],
            report["batch_requests"],
            report["failed_requests"]
        );
        for name in ["batch_latency_ms", "probe_latency_ms"] {
            let h = &report[name];
            println!(
                "{name:>18}: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}  (n = {})",
                h["p50"].as_f64().unwrap_or(0.0),
                h["p90"].as_f64().unwrap_or(0.0),
                h["p99"].as_f64().unwrap_or(0.0),
                h["max"].as_f64().unwrap_or(0.0),
                h["count"]
            );
        }
    }
    Ok(())
}

/// NDJSON bodies of generated events, starting three minutes ago: recent enough that
/// nothing is late when live probes move the watermark to now.
fn make_bodies(count: usize, batch: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    let config = SynthConfig {
        seed: 7,
        start_ms: SystemClock.now_ms() - 3 * 60_000,
        sessions_per_minute: 20_000.0,
        users: 2_000_000,
        ..SynthConfig::default()
    };
    let mut events =
        super::generate::synth(config)?.filter(|a| matches!(a.record, SynthRecord::Event(_)));
    Ok((0..count)
        .map(|_| {
            let mut body = Vec::with_capacity(batch * 360);
            for arrival in events.by_ref().take(batch) {
                to_ndjson_line(&arrival.record, &mut body);
            }
            body
        })
        .collect())
}

/// A request carrying the API key, when there is one.
/// A POST of `body` to `url`, as `content_type`, with the key when there is one.
fn post(
    client: &reqwest::Client,
    url: &str,
    content_type: &'static str,
    body: impl Into<reqwest::Body>,
    key: Option<&str>,
) -> reqwest::RequestBuilder {
    with_key(
        client
            .post(url)
            .header("content-type", content_type)
            .body(body),
        key,
    )
}

fn with_key(request: reqwest::RequestBuilder, key: Option<&str>) -> reqwest::RequestBuilder {
    match key {
        Some(key) => request.bearer_auth(key),
        None => request,
    }
}

fn summarize(h: &Histogram<u64>) -> serde_json::Value {
    let ms = |v: u64| v as f64 / 1000.0;
    json!({
        "count": h.len(),
        "p50": ms(h.value_at_quantile(0.50)),
        "p90": ms(h.value_at_quantile(0.90)),
        "p99": ms(h.value_at_quantile(0.99)),
        "max": ms(h.max()),
    })
}

async fn drive(
    args: &IntakeBenchArgs,
    base: &str,
    bodies: Arc<Vec<Vec<u8>>>,
) -> anyhow::Result<serde_json::Value> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections + 2)
        .timeout(Duration::from_secs(30))
        .build()?;
    let endpoint = format!("{base}/v1/events");
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let batch_requests = Arc::new(AtomicU64::new(0));
    let new_histogram = || Histogram::<u64>::new_with_bounds(1, 120_000_000, 3);
    let batch_latency = Arc::new(Mutex::new(new_histogram()?));
    let probe_latency = Arc::new(Mutex::new(new_histogram()?));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for connection in 0..args.connections {
        let (client, endpoint, key, bodies) = (
            client.clone(),
            endpoint.clone(),
            args.key.clone(),
            bodies.clone(),
        );
        let (stop, accepted, failed, requests, latency) = (
            stop.clone(),
            accepted.clone(),
            failed.clone(),
            batch_requests.clone(),
            batch_latency.clone(),
        );
        tasks.spawn(async move {
            let mut next = connection;
            while !stop.load(Ordering::Relaxed) {
                let body = bodies[next % bodies.len()].clone();
                next += 1;
                let sent = Instant::now();
                let request = post(
                    &client,
                    &endpoint,
                    "application/x-ndjson",
                    body,
                    key.as_deref(),
                );
                match request.send().await {
                    Ok(response) if response.status().is_success() => {
                        let text = response.text().await.unwrap_or_default();
                        let elapsed = sent.elapsed().as_micros() as u64;
                        let n = serde_json::from_str::<serde_json::Value>(&text)
                            .ok()
                            .and_then(|v| v["accepted"].as_u64())
                            .unwrap_or(0);
                        accepted.fetch_add(n, Ordering::Relaxed);
                        requests.fetch_add(1, Ordering::Relaxed);
                        let _ = latency.lock().await.record(elapsed.max(1));
                    }
                    Ok(response) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        if response.status().as_u16() == 503 {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    // The prober: one fresh event per request, at a steady rate.
    {
        let (client, endpoint, key, stop, latency, failed) = (
            client.clone(),
            endpoint.clone(),
            args.key.clone(),
            stop.clone(),
            probe_latency.clone(),
            failed.clone(),
        );
        let period = Duration::from_secs_f64(1.0 / args.probe_rate.max(0.1));
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                n += 1;
                let body = format!(
                    r#"{{"udid":"probe-{n}","type":"page_view","ts":{},"event_id":"probe-{n}","page":"/"}}"#,
                    SystemClock.now_ms()
                );
                let sent = Instant::now();
                let request = post(&client, &endpoint, "application/json", body, key.as_deref());
                match request.send().await {
                    Ok(response) if response.status().is_success() => {
                        let _ = response.bytes().await;
                        let elapsed = sent.elapsed().as_micros() as u64;
                        let _ = latency.lock().await.record(elapsed.max(1));
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let accepted_at_stop = accepted.load(Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    let batch = batch_latency.lock().await;
    let probe = probe_latency.lock().await;
    Ok(json!({
        "seconds": seconds,
        "events_accepted": accepted_at_stop,
        "events_per_second": accepted_at_stop as f64 / seconds,
        "batch_requests": batch_requests.load(Ordering::Relaxed),
        "failed_requests": failed.load(Ordering::Relaxed),
        "batch_size": args.batch,
        "connections": args.connections,
        "batch_latency_ms": summarize(&batch),
        "probe_latency_ms": summarize(&probe),
    }))
}

/// A small trigger set (a segment trigger and a feed, a dry-run push destination) for the
/// benches' tests.
#[cfg(test)]
const TEST_TRIGGERS: &str = r#"
[[triggers]]
name = "cpa"
kind = "segment_cpa"
group_by = ["channel"]
threshold = 1
over = "10m"
min_conversions = 1
notify = ["push"]

[[triggers]]
name = "feed"
kind = "conversion_feed"
notify = ["push"]

[[alerts.destinations]]
name = "push"
kind = "webhook"
format = "seed"
interval = "30s"
dry_run = true
url = "http://127.0.0.1:9/push"
"#;
