//! `vedetta bench push`: how long a trigger push takes to leave, from its batch's first
//! event to the receiver, at the push interval (issue 12: ≤ 31 s p99 at 30 s).
//!
//! It starts a receiver on a free port and a server in this process (fsync on) with a seed
//! webhook to it (`interval`, default 30 s) and `--triggers` conversion-feed triggers, each
//! of which sends every clean conversion: one request per trigger per interval. Then for
//! `--seconds` it posts `--rate` purchases per second, each a new consenting user, stamped
//! with the wall clock. For every request the receiver records its arrival minus the
//! earliest `tempo` in it (the batch's first event, whose event time is when it was sent),
//! and the benchmark prints the percentiles over all requests.

use super::{LocalServer, summarize};
use crate::clock::SystemClock;
use anyhow::Context;
use hdrhistogram::Histogram;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use vedetta_core::time::Clock;

#[derive(Debug, clap::Args)]
pub struct PushBenchArgs {
    /// How long to send purchases.
    #[arg(long, default_value_t = 300)]
    seconds: u64,
    /// Purchases per second.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Conversion-feed triggers (each one request per interval).
    #[arg(long, default_value_t = 10)]
    triggers: usize,
    /// The push interval.
    #[arg(long, default_value = "30s")]
    interval: String,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

type Latencies = Arc<Mutex<Histogram<u64>>>;

pub fn run(args: &PushBenchArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("bench-push")
        .build()?;
    let latencies: Latencies = Arc::new(Mutex::new(Histogram::new_with_bounds(1, 3_600_000, 3)?));
    let events_received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    // The receiver first: the server's config names its port.
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let port = listener.local_addr()?.port();
    {
        let latencies = latencies.clone();
        let received = events_received.clone();
        let app = axum::Router::new().route(
            "/push",
            axum::routing::post(move |body: axum::body::Bytes| {
                let latencies = latencies.clone();
                let received = received.clone();
                async move {
                    let now = SystemClock.now_ms();
                    if let Ok(push) = serde_json::from_slice::<serde_json::Value>(&body) {
                        let events = push["events"].as_array().cloned().unwrap_or_default();
                        received
                            .fetch_add(events.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        let first = events
                            .iter()
                            .filter_map(|e| e["tempo"].as_str())
                            .filter_map(|t| t.parse::<jiff::Timestamp>().ok())
                            .map(|t| t.as_millisecond())
                            .min();
                        if let Some(first) = first
                            && let Ok(mut h) = latencies.lock()
                        {
                            let _ = h.record((now - first).max(1) as u64);
                        }
                    }
                    axum::http::StatusCode::OK
                }
            }),
        );
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
    }
    let mut config = format!(
        "[[alerts.destinations]]\nname = \"crm-push\"\nkind = \"webhook\"\nformat = \"seed\"\n\
         interval = {:?}\nurl = \"http://127.0.0.1:{port}/push\"\n",
        args.interval
    );
    for i in 0..args.triggers {
        config.push_str(&format!(
            "\n[[triggers]]\nname = \"feed_{i}\"\nkind = \"conversion_feed\"\nnotify = [\"crm-push\"]\n"
        ));
    }
    let server = LocalServer::start_with_config(&config).context("the benchmark's server")?;
    let base = format!("http://{}", server.address);
    let sent = runtime.block_on(send(args, &base))?;
    // Let the last interval's pushes leave.
    let interval_ms = vedetta_core::watch::rules::parse_span(&args.interval).unwrap_or(30_000);
    std::thread::sleep(Duration::from_millis(interval_ms as u64 * 2 + 65_000));
    drop(server);
    let h = latencies
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let report = json!({
        "seconds": args.seconds,
        "purchases_sent": sent,
        "triggers": args.triggers,
        "interval": args.interval,
        "push_requests": h.len(),
        "events_received": events_received.load(std::sync::atomic::Ordering::Relaxed),
        "first_event_to_receiver_ms": summarize_ms(&h),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let l = &report["first_event_to_receiver_ms"];
        println!(
            "push: {} requests ({} events) for {} purchases over {} s, {} triggers, interval {}",
            report["push_requests"],
            report["events_received"],
            sent,
            args.seconds,
            args.triggers,
            args.interval
        );
        println!(
            "batch's first event → receiver, s: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
            l["p50"].as_f64().unwrap_or(0.0) / 1000.0,
            l["p90"].as_f64().unwrap_or(0.0) / 1000.0,
            l["p99"].as_f64().unwrap_or(0.0) / 1000.0,
            l["max"].as_f64().unwrap_or(0.0) / 1000.0,
        );
    }
    Ok(())
}

/// Percentiles of a histogram of milliseconds (`summarize` reads microseconds).
fn summarize_ms(h: &Histogram<u64>) -> serde_json::Value {
    let mut v = summarize(h);
    for key in ["p50", "p90", "p99", "max"] {
        v[key] = json!(v[key].as_f64().unwrap_or(0.0) * 1000.0);
    }
    v
}

async fn send(args: &PushBenchArgs, base: &str) -> anyhow::Result<u64> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let run = SystemClock.now_ms();
    let period = Duration::from_secs_f64(1.0 / args.rate.max(0.1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let until = tokio::time::Instant::now() + Duration::from_secs(args.seconds);
    let mut n = 0u64;
    while tokio::time::Instant::now() < until {
        tick.tick().await;
        n += 1;
        let event = json!({
            "udid": format!("push-{run}-{n}"),
            "type": "purchase",
            "ts": SystemClock.now_ms(),
            "event_id": format!("push-{run}-{n}"),
            "value": 49.9,
            "currency": "EUR",
            "order_id": format!("push-{run}-{n}"),
            "consent": {"analytics": true, "marketing": true},
        });
        let response = client
            .post(format!("{base}/v1/events"))
            .header("content-type", "application/json")
            .body(event.to_string())
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "intake answered {}",
            response.status()
        );
    }
    Ok(n)
}
