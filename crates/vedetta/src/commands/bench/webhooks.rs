//! `vedetta bench webhooks`: Shopify and mapped (ERP/middleware) webhooks at a fixed rate.
//!
//! It starts a server in this process (fsync on) with `[sources.shopify]` and a mapped
//! source `bench_sap` (HMAC in hex, the SAP sales order mapping of docs/sources.md inline),
//! unless `--url` names a server configured with the same secrets. Then, for `--seconds`,
//! it sends `--rate` requests per second to each of the two endpoints at once, open loop:
//! every request leaves at its scheduled time whatever the earlier ones are doing, and its
//! latency counts from that scheduled time (so a stalled server cannot hide its queue).
//! Each request is one order, signed, a new order id each time; each answer comes after
//! the durable write. It prints, per source, the requests answered 200 and the latency
//! percentiles.

use super::summarize;
use crate::clock::SystemClock;
use hdrhistogram::Histogram;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use vedetta_core::time::Clock;

const SHOPIFY_SECRET: &str = "shpss_bench_secret";
const SAP_SECRET: &str = "bench-sap-secret-0123456789";

#[derive(Debug, clap::Args)]
pub struct WebhooksBenchArgs {
    /// Server to drive; default: start one in this process.
    #[arg(long)]
    url: Option<String>,
    /// How long to drive the load.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Requests per second to each of the two endpoints.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// The configuration the benchmark's server needs (also for a server given by `--url`).
pub fn config_text() -> String {
    format!(
        r#"
[sources.shopify]
secrets = ["{SHOPIFY_SECRET}"]

[sources.bench_sap]
auth = "hmac"
secrets = ["{SAP_SECRET}"]
hmac_header = "X-Boomi-Signature"

[sources.bench_sap.mapping]
items = "/SalesOrders"
[sources.bench_sap.mapping.fields.udid]
pointer = "/SoldToParty"
[sources.bench_sap.mapping.fields.type]
pointer = "/SalesOrderType"
map = {{ ZPUR = "purchase", ZLEA = "lead" }}
[sources.bench_sap.mapping.fields.ts]
pointer = "/CreationDateTime"
time = "sap"
[sources.bench_sap.mapping.fields.order_id]
pointer = "/SalesOrder"
convert = "string"
[sources.bench_sap.mapping.fields.value]
pointer = "/NetValue"
convert = "number"
decimal_comma = true
[sources.bench_sap.mapping.fields.currency]
pointer = "/header/TransactionCurrency"
from = "body"
[sources.bench_sap.mapping.fields."properties.changed_at"]
pointer = "/ChangedAt"
time = "compact"
zone = "Europe/Rome"
"#
    )
}

pub fn run(args: &WebhooksBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rate > 0.0 && args.rate <= 20_000.0,
        "--rate must be in (0, 20000]"
    );
    let (_local, base) = match args.url.as_deref() {
        Some(url) => (None, url.trim_end_matches('/').to_string()),
        None => {
            let server = super::LocalServer::start_with_config(&config_text())?;
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
        for source in ["shopify", "mapped"] {
            let r = &report[source];
            let h = &r["latency_ms"];
            println!(
                "{source} webhooks: {} requests at {:.0}/s over {:.1} s, {} answered 200, {} failed; \
                 latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
                r["sent"],
                args.rate,
                report["seconds"].as_f64().unwrap_or(0.0),
                r["ok"],
                r["failed"],
                h["p50"].as_f64().unwrap_or(0.0),
                h["p90"].as_f64().unwrap_or(0.0),
                h["p99"].as_f64().unwrap_or(0.0),
                h["max"].as_f64().unwrap_or(0.0),
            );
        }
    }
    Ok(())
}

fn hmac(secret: &str, body: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(chunk.get(1).copied().unwrap_or(0)) << 8)
            | u32::from(chunk.get(2).copied().unwrap_or(0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// One request: its URL, headers and body.
fn request(source: &str, n: u64, now_ms: i64) -> (String, Vec<(&'static str, String)>, Vec<u8>) {
    if source == "shopify" {
        let at = jiff::Timestamp::from_millisecond(now_ms)
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
            .to_string();
        let body = json!({
            "id": 1_000_000 + n,
            "name": format!("#B{n}"),
            "total_price": format!("{}.{:02}", 20 + n % 180, n % 100),
            "currency": "EUR",
            "created_at": at,
            "buyer_accepts_marketing": n.is_multiple_of(2),
            "customer": {"id": 5_000 + n % 997},
            "landing_site": "/saldi?utm_source=google&utm_medium=cpc&utm_campaign=bench_shopify",
            "line_items": [{"product_id": n % 50}],
        })
        .to_string()
        .into_bytes();
        let headers = vec![
            ("x-shopify-topic", "orders/create".to_string()),
            ("x-shopify-webhook-id", format!("bench-{n}")),
            (
                "x-shopify-hmac-sha256",
                base64(&hmac(SHOPIFY_SECRET, &body)),
            ),
        ];
        ("/v1/sources/shopify".into(), headers, body)
    } else {
        let body = json!({
            "boomi": {"process": "SAP_SalesOrder_to_Vedetta", "executionId": format!("bench-{n}")},
            "header": {"SalesOrganization": "IT01", "TransactionCurrency": "EUR"},
            "SalesOrders": [{
                "SalesOrder": 4_500_000_000_u64 + n,
                "SalesOrderType": "ZPUR",
                "SoldToParty": format!("00100{:05}", n % 997),
                "CreationDateTime": format!("/Date({now_ms}+0200)/"),
                "ChangedAt": "20240405142305",
                "NetValue": format!("{}.{:03},{:02}", 1 + n % 9, n % 1000, n % 100),
            }],
        })
        .to_string()
        .into_bytes();
        let headers = vec![(
            "x-boomi-signature",
            crate::crypto::hex(&hmac(SAP_SECRET, &body)),
        )];
        ("/v1/sources/bench_sap".into(), headers, body)
    }
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
}

async fn drive(args: &WebhooksBenchArgs, base: &str) -> anyhow::Result<serde_json::Value> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .timeout(Duration::from_secs(30))
        .build()?;
    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let mut senders = tokio::task::JoinSet::new();
    for source in ["shopify", "mapped"] {
        let client = client.clone();
        let base = base.to_string();
        senders.spawn(async move {
            let tally = Arc::new(Tally::default());
            let latency = Arc::new(Mutex::new(
                Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)
                    .unwrap_or_else(|_| unreachable!("valid bounds")),
            ));
            let mut requests = tokio::task::JoinSet::new();
            let mut next = Instant::now();
            let mut n = 0u64;
            while next < until {
                tokio::time::sleep_until(next.into()).await;
                let scheduled = next;
                next += interval;
                n += 1;
                let (path, headers, body) = request(source, n, SystemClock.now_ms());
                let mut builder = client
                    .post(format!("{base}{path}"))
                    .header("content-type", "application/json")
                    .body(body);
                for (name, value) in headers {
                    builder = builder.header(name, value);
                }
                let (tally, latency) = (tally.clone(), latency.clone());
                tally.sent.fetch_add(1, Ordering::Relaxed);
                requests.spawn(async move {
                    let answered = match builder.send().await {
                        Ok(response) => {
                            let ok = response.status().is_success();
                            let _ = response.bytes().await;
                            ok
                        }
                        Err(_) => false,
                    };
                    if answered {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                        let micros = (scheduled.elapsed().as_micros() as u64).max(1);
                        let _ = latency.lock().await.record(micros);
                    } else {
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                    }
                });
                // Reap finished requests so the set stays small.
                while requests.try_join_next().is_some() {}
            }
            while requests.join_next().await.is_some() {}
            let latency = latency.lock().await;
            (
                source,
                json!({
                    "sent": tally.sent.load(Ordering::Relaxed),
                    "ok": tally.ok.load(Ordering::Relaxed),
                    "failed": tally.failed.load(Ordering::Relaxed),
                    "latency_ms": summarize(&latency),
                }),
            )
        });
    }
    let mut report = json!({ "rate_per_source": args.rate });
    while let Some(joined) = senders.join_next().await {
        let (source, result) = joined?;
        report[source] = result;
    }
    report["seconds"] = json!(started.elapsed().as_secs_f64());
    Ok(report)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn the_benchmarks_configuration_and_bodies_are_valid() {
        let config: toml::Table = toml::from_str(&config_text()).unwrap();
        let raw: crate::sources::RawSources = config["sources"].clone().try_into().unwrap();
        let sources = crate::sources::SourcesConfig::from_raw(raw).unwrap();
        let mapping = sources.mapped["bench_sap"].load_mapping().unwrap();
        let (_, _, body) = request("mapped", 7, 1_712_327_000_000);
        let rows = mapping
            .map_body(&serde_json::from_slice(&body).unwrap())
            .unwrap();
        let event = rows[0].as_ref().unwrap();
        assert_eq!(event["value"], json!(8007.07));
        assert_eq!(event["order_id"], "4500000007");
    }
}
