//! `vedetta bench alerts`: how long from the event that moves the watermark past a minute
//! to the Slack request of the alert that minute fires (issue 10: p99 ≤ 1 s with `for = 0`
//! and no group wait).
//!
//! A server in this process with one rule (`conversions > 0` per channel over one minute,
//! `for = 0`, `group_wait = 0s`, `group_interval = 0s`) and a Slack destination pointing at
//! a local stand-in that timestamps each request. Each iteration posts, in one request, a
//! purchase on a fresh channel in minute *m* and an event at *m* + 65 s (past the
//! out-of-orderness: the watermark passes the end of *m*); the latency is from that
//! request's acknowledgement to the Slack request naming the channel. The stand-in's
//! one-message-a-second pacing is respected by waiting 1.1 s between iterations, so the
//! figure is the path's own, not the rate limit's.

use super::LocalServer;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct AlertsBenchArgs {
    /// Alerts to fire (one a minute of event time, one every 1.1 s of wall time).
    #[arg(long, default_value_t = 100)]
    iterations: usize,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &AlertsBenchArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("bench-alerts")
        .build()?;
    let (slack_url, mut received) = runtime.block_on(slack_stand_in())?;
    let config = format!(
        r#"
[alerts]
group_wait = "0s"
group_interval = "0s"

[[alerts.rules]]
name = "conversions_seen"
expr = "conversions > 0"
over = "1m"
group_by = ["channel"]
notify = ["slack"]

[[alerts.destinations]]
name = "slack"
kind = "slack"
url = "{slack_url}"
"#
    );
    let local = LocalServer::start_with_config(&config)?;
    let base = format!("http://{}", local.address);
    let key = std::env::var("VEDETTA_API_KEY").ok();
    let iterations = args.iterations.max(1);
    let now = crate::watch::sender::wall_ms();
    let first_minute = (now / 60_000 - iterations as i64 - 5) * 60_000;
    let latencies = runtime.block_on(async {
        let client = reqwest::Client::new();
        let mut latencies = Vec::with_capacity(iterations);
        for i in 0..iterations {
            let minute = first_minute + i as i64 * 60_000;
            let channel = format!("bench-{i}");
            let body = json!([
                {"udid": format!("u{i}"), "type": "purchase", "ts": minute + 1_000, "value": 10.0, "channel": channel},
                {"udid": "ticker", "type": "page_view", "ts": minute + 65_000, "event_id": format!("tick-{i}")}
            ]);
            let request = super::with_key(
                client
                    .post(format!("{base}/v1/events"))
                    .header("content-type", "application/json")
                    .body(body.to_string()),
                key.as_deref(),
            );
            let response = request.send().await?;
            let acknowledged = Instant::now();
            anyhow::ensure!(response.status().is_success(), "intake answered {}", response.status());
            let deadline = acknowledged + Duration::from_secs(10);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let Ok(Some((at, message))) = tokio::time::timeout(left, received.recv()).await else {
                    anyhow::bail!("no Slack message named {channel} within 10 s");
                };
                if message.to_string().contains(&channel) {
                    latencies.push(at.saturating_duration_since(acknowledged));
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(1_100)).await;
        }
        Ok::<_, anyhow::Error>(latencies)
    })?;
    drop(local);
    let mut ms: Vec<f64> = latencies.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let q = |p: f64| ms[((ms.len() as f64 * p).ceil() as usize).clamp(1, ms.len()) - 1];
    let report = json!({
        "alerts": ms.len(),
        "p50_ms": q(0.5), "p90_ms": q(0.9), "p99_ms": q(0.99), "max_ms": q(1.0),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "alerts: watermark-moving event acknowledged → Slack request: p50 {:.0}  p90 {:.0}  p99 {:.0}  max {:.0} ms (n = {})",
            q(0.5),
            q(0.9),
            q(0.99),
            q(1.0),
            ms.len()
        );
    }
    Ok(())
}

/// A Slack incoming webhook stand-in: answers `ok` and reports each request's time and body.
async fn slack_stand_in() -> anyhow::Result<(
    String,
    tokio::sync::mpsc::UnboundedReceiver<(Instant, Value)>,
)> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/services/bench",
        axum::routing::post(move |body: axum::body::Bytes| {
            let at = Instant::now();
            let tx = tx.clone();
            async move {
                let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let _ = tx.send((at, value));
                "ok"
            }
        }),
    );
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = socket.local_addr()?;
    tokio::spawn(async move { axum::serve(socket, app).await });
    Ok((format!("http://{address}/services/bench"), rx))
}
