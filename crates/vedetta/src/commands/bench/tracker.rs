//! `vedetta bench tracker`: browser intake as the tracker makes it: one event per request,
//! `text/plain` with a site key and an `Origin`, from many connections at once.
//!
//! It starts a server in this process (fsync on) with one site whose per-address rate is
//! lifted (every client here is 127.0.0.1; a real site's visitors each have their own
//! bucket), unless `--url` names a server, which must then declare `--site` for
//! `--origin`. It prints requests/s (each one durable when answered) and latency
//! percentiles.

use super::{LocalServer, summarize};
use crate::clock::SystemClock;
use hdrhistogram::Histogram;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use vedetta_core::time::Clock;

#[derive(Debug, clap::Args)]
pub struct TrackerBenchArgs {
    /// Server to drive; default: start one in this process.
    #[arg(long)]
    url: Option<String>,
    /// The site key (declared with `--origin` among its origins when `--url` is given).
    #[arg(long, default_value = "pub_bench")]
    site: String,
    #[arg(long, default_value = "https://www.shop.example")]
    origin: String,
    /// How long to drive the load.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Concurrent connections, each sending one request at a time.
    #[arg(long, default_value_t = 128)]
    connections: usize,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &TrackerBenchArgs) -> anyhow::Result<()> {
    let config = format!(
        "[[sites]]\nkey = {:?}\norigins = [{:?}]\nrate_per_second = 1000000\nburst = 1000000\n",
        args.site, args.origin
    );
    let (_local, base) = match args.url.as_deref() {
        Some(url) => (None, url.trim_end_matches('/').to_string()),
        None => {
            let server = LocalServer::start_with_config(&config)?;
            let base = format!("http://{}", server.address);
            (Some(server), base)
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("bench-client")
        .build()?;
    let report = runtime.block_on(drive(args, &base))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let h = &report["latency_ms"];
        println!(
            "tracker intake: {:.0} requests/s (one event each, durable) over {:.1} s with {} connections; {} failed",
            report["requests_per_second"].as_f64().unwrap_or(0.0),
            report["seconds"].as_f64().unwrap_or(0.0),
            report["connections"],
            report["failed_requests"],
        );
        println!(
            "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}  (n = {})",
            h["p50"].as_f64().unwrap_or(0.0),
            h["p90"].as_f64().unwrap_or(0.0),
            h["p99"].as_f64().unwrap_or(0.0),
            h["max"].as_f64().unwrap_or(0.0),
            h["count"]
        );
    }
    Ok(())
}

async fn drive(args: &TrackerBenchArgs, base: &str) -> anyhow::Result<serde_json::Value> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections + 2)
        .timeout(Duration::from_secs(30))
        .build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let latency = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1,
        120_000_000,
        3,
    )?));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for connection in 0..args.connections {
        let (client, stop, ok, failed, latency) = (
            client.clone(),
            stop.clone(),
            ok.clone(),
            failed.clone(),
            latency.clone(),
        );
        let origin = args.origin.clone();
        let url = format!("{base}/v1/events?site={}", args.site);
        tasks.spawn(async move {
            let mut n = 0u64;
            let mut local = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)
                .unwrap_or_else(|_| unreachable!("valid bounds"));
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let now = SystemClock.now_ms();
                let body = format!(
                    r#"[{{"udid":"v-{connection}","type":"page_view","ts":{now},"event_id":"t-{connection}-{n}","page":"https://www.shop.example/p/{n}"}}]"#
                );
                let sent = Instant::now();
                let request = client
                    .post(format!("{url}&st={now}"))
                    .header("content-type", "text/plain;charset=UTF-8")
                    .header("origin", &origin)
                    .header("user-agent", "Mozilla/5.0 (bench)")
                    .body(body);
                match request.send().await {
                    Ok(response) if response.status().is_success() => {
                        let _ = response.bytes().await;
                        ok.fetch_add(1, Ordering::Relaxed);
                        let _ = local.record((sent.elapsed().as_micros() as u64).max(1));
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
            let _ = latency.lock().await.add(&local);
        });
    }
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let done = ok.load(Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    let latency = latency.lock().await;
    Ok(json!({
        "seconds": seconds,
        "requests": done,
        "requests_per_second": done as f64 / seconds,
        "failed_requests": failed.load(Ordering::Relaxed),
        "connections": args.connections,
        "latency_ms": summarize(&latency),
    }))
}
