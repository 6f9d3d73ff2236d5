//! `vedetta send`: posts NDJSON files to a Vedetta server in batches.
//!
//! Retries what a retry can fix (429, 503 with its `Retry-After`, connection errors) with
//! exponential backoff; never retries what it cannot (a 400 is the server's verdict on the
//! events, counted in the summary with its reasons). Ends with a summary of accepted and
//! rejected records and the most common reasons, and exits non-zero if any batch could not
//! be delivered.

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// NDJSON files, one record per line (with --costs, also `.csv` ad-platform exports).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Server base URL.
    #[arg(long, env = "VEDETTA_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The files hold ad spend records (posted to /v1/costs): NDJSON, or `.csv` exports of
    /// Google Ads and Meta Ads Manager (Italian or English), read row by row.
    #[arg(long)]
    costs: bool,
    /// The time zone of the days in CSV spend exports: a day's spend goes to its first minute.
    #[arg(long, default_value = "Europe/Rome")]
    zone: String,
    /// Records per request.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// API key (sent as `Authorization: Bearer`).
    #[arg(long, env = "VEDETTA_API_KEY")]
    key: Option<String>,
    /// Attempts per batch before giving up on it.
    #[arg(long, default_value_t = 8)]
    max_attempts: u32,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// What happened to all the batches.
#[derive(Debug, Default)]
pub struct Summary {
    pub accepted: u64,
    pub rejected: u64,
    pub failed_batches: u64,
    pub failed_records: u64,
    pub retries: u64,
    /// Rejection reasons with the record index removed, by count.
    pub reasons: BTreeMap<String, u64>,
}

pub fn run(args: &SendArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let summary = runtime.block_on(send_files(args))?;
    println!(
        "accepted {}  rejected {}  failed {} (in {} batches)  retries {}",
        summary.accepted,
        summary.rejected,
        summary.failed_records,
        summary.failed_batches,
        summary.retries
    );
    let mut reasons: Vec<_> = summary.reasons.iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(a.1));
    for (reason, count) in reasons.iter().take(10) {
        println!("  {count:>8} × {reason}");
    }
    if summary.failed_batches > 0 {
        bail!(
            "{} records in {} batches were not delivered",
            summary.failed_records,
            summary.failed_batches
        );
    }
    Ok(())
}

async fn send_files(args: &SendArgs) -> anyhow::Result<Summary> {
    let endpoint = format!(
        "{}/v1/{}",
        args.url.trim_end_matches('/'),
        if args.costs { "costs" } else { "events" }
    );
    // CSV spend exports become spend records first; a bad row is reported with its line and
    // left out, the others are sent.
    let zone = jiff::tz::TimeZone::get(&args.zone)
        .with_context(|| format!("--zone {:?} is not an IANA time zone", args.zone))?;
    let mut inputs: Vec<Box<dyn Iterator<Item = std::io::Result<String>>>> = Vec::new();
    let mut total_lines = 0;
    let mut csv_refused: BTreeMap<String, u64> = BTreeMap::new();
    for file in &args.files {
        if args.costs && is_csv(file) {
            let export = read_csv_export(file, &zone)?;
            for (line, error) in &export.errors {
                eprintln!("{}:{line}: {error}", file.display());
                *csv_refused
                    .entry(
                        error.split(':').next().unwrap_or(error).to_string()
                            + ": bad value in the CSV export",
                    )
                    .or_default() += 1;
            }
            eprintln!(
                "{}: {} export, {} spend records, {} rows refused, {} total or blank rows skipped",
                file.display(),
                match export.platform {
                    super::costs_csv::Platform::GoogleAds => "Google Ads",
                    super::costs_csv::Platform::Meta => "Meta Ads Manager",
                },
                export.records.len(),
                export.errors.len(),
                export.skipped
            );
            total_lines += export.records.len() as u64;
            inputs.push(Box::new(
                export.records.into_iter().map(|r| Ok(r.to_string())),
            ));
        } else {
            total_lines += count_lines(std::slice::from_ref(file))?;
            let reader = std::io::BufReader::new(
                std::fs::File::open(file)
                    .with_context(|| format!("cannot open {}", file.display()))?,
            );
            inputs.push(Box::new(reader.lines()));
        }
    }
    let progress = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total_lines)
    };
    progress.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} records ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;
    let summary = Arc::new(Mutex::new(Summary::default()));
    let slots = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for mut lines in inputs {
        let mut batch = Vec::new();
        let mut lines_in_batch = 0;
        loop {
            let line = lines.next().transpose()?;
            let end = line.is_none();
            if let Some(line) = line
                && !line.trim().is_empty()
            {
                batch.extend_from_slice(line.as_bytes());
                batch.push(b'\n');
                lines_in_batch += 1;
            }
            if lines_in_batch > 0 && (lines_in_batch >= args.batch || end) {
                let permit = slots.clone().acquire_owned().await?;
                let body = std::mem::take(&mut batch);
                let records = std::mem::take(&mut lines_in_batch) as u64;
                let (client, endpoint, key, summary, progress) = (
                    client.clone(),
                    endpoint.clone(),
                    args.key.clone(),
                    summary.clone(),
                    progress.clone(),
                );
                let max_attempts = args.max_attempts;
                tasks.spawn(async move {
                    let outcome =
                        post_with_retries(&client, &endpoint, key.as_deref(), body, max_attempts)
                            .await;
                    let mut summary = summary.lock().await;
                    summary.retries += u64::from(outcome.retries);
                    match outcome.result {
                        Ok(response) => {
                            summary.accepted += response.accepted;
                            summary.rejected += response.rejected.len() as u64;
                            for error in response.rejected {
                                *summary.reasons.entry(strip_index(&error)).or_default() += 1;
                            }
                        }
                        Err(reason) => {
                            summary.failed_batches += 1;
                            summary.failed_records += records;
                            *summary.reasons.entry(reason).or_default() += records;
                        }
                    }
                    progress.inc(records);
                    drop(permit);
                });
            }
            if end {
                break;
            }
        }
    }
    while let Some(joined) = tasks.join_next().await {
        joined?;
    }
    progress.finish_and_clear();
    let mut summary = std::mem::take(&mut *summary.lock().await);
    for (reason, count) in csv_refused {
        summary.rejected += count;
        *summary.reasons.entry(reason).or_default() += count;
    }
    Ok(summary)
}

fn is_csv(file: &std::path::Path) -> bool {
    file.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
}

/// Reads a Google Ads or Meta CSV export (bounded), naming the file in errors.
fn read_csv_export(
    file: &std::path::Path,
    zone: &jiff::tz::TimeZone,
) -> anyhow::Result<super::costs_csv::Export> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(file)
        .with_context(|| format!("cannot open {}", file.display()))?
        .take(super::costs_csv::MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", file.display()))?;
    if bytes.len() as u64 > super::costs_csv::MAX_FILE_BYTES {
        bail!(
            "{}: larger than {} MB; split the export",
            file.display(),
            super::costs_csv::MAX_FILE_BYTES >> 20
        );
    }
    let text =
        super::costs_csv::decode(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    super::costs_csv::read_export(&text, zone)
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
}

fn count_lines(files: &[PathBuf]) -> anyhow::Result<u64> {
    let mut total = 0;
    for file in files {
        let reader = std::io::BufReader::new(
            std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?,
        );
        total += reader.lines().count() as u64;
    }
    Ok(total)
}

/// `events[12].ts: expected …` → `ts: expected …`, so equal reasons add up.
fn strip_index(error: &str) -> String {
    match error.split_once("].") {
        Some((_, rest)) => rest.to_string(),
        None => match error.split_once("]: ") {
            Some((_, rest)) => rest.to_string(),
            None => error.to_string(),
        },
    }
}

/// The server's answer to one batch.
#[derive(Debug, Default)]
pub struct BatchResponse {
    pub accepted: u64,
    pub rejected: Vec<String>,
}

/// The outcome of posting one batch.
#[derive(Debug)]
pub struct PostOutcome {
    pub result: Result<BatchResponse, String>,
    pub retries: u32,
}

/// Posts one NDJSON body, retrying 429, 503 and connection errors with backoff.
pub async fn post_with_retries(
    client: &reqwest::Client,
    endpoint: &str,
    key: Option<&str>,
    body: Vec<u8>,
    max_attempts: u32,
) -> PostOutcome {
    let body = axum::body::Bytes::from(body);
    let mut delay = Duration::from_millis(100);
    let mut retries = 0;
    loop {
        let mut request = client
            .post(endpoint)
            .header("content-type", "application/x-ndjson")
            .body(body.clone());
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let attempt = request.send().await;
        let retry_after = match attempt {
            Ok(response) => {
                let status = response.status().as_u16();
                match status {
                    200 | 400 => {
                        let text = response.text().await.unwrap_or_default();
                        return PostOutcome {
                            result: parse_response(&text, status),
                            retries,
                        };
                    }
                    429 | 503 => response
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .map(Duration::from_secs),
                    _ => {
                        let text = response.text().await.unwrap_or_default();
                        return PostOutcome {
                            result: Err(format!("HTTP {status}: {}", error_message(&text))),
                            retries,
                        };
                    }
                }
            }
            Err(error) if error.is_connect() || error.is_timeout() || error.is_request() => None,
            Err(error) => {
                return PostOutcome {
                    result: Err(format!("request failed: {error}")),
                    retries,
                };
            }
        };
        retries += 1;
        if retries >= max_attempts {
            return PostOutcome {
                result: Err(format!("gave up after {max_attempts} attempts")),
                retries,
            };
        }
        tokio::time::sleep(retry_after.unwrap_or(delay).max(delay)).await;
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

fn parse_response(text: &str, status: u16) -> Result<BatchResponse, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|_| format!("HTTP {status}: unreadable response"))?;
    if let Some(error) = value.get("error").and_then(|e| e.as_str()) {
        return Err(format!("HTTP {status}: {error}"));
    }
    Ok(BatchResponse {
        accepted: value["accepted"].as_u64().unwrap_or(0),
        rejected: value["rejected"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|i| i["error"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

fn error_message(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
        .unwrap_or_else(|| text.chars().take(200).collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A server that answers 503 (with Retry-After) `busy` times, then accepts.
    async fn flaky_server(busy: u32) -> (String, Arc<AtomicU32>) {
        let calls = Arc::new(AtomicU32::new(0));
        let counter = calls.clone();
        let app = axum::Router::new().route(
            "/v1/events",
            axum::routing::post(move || {
                let counter = counter.clone();
                async move {
                    let n = counter.fetch_add(1, Ordering::SeqCst);
                    if n < busy {
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            [("retry-after", "0")],
                            "{\"error\":\"busy\"}",
                        )
                    } else {
                        (
                            axum::http::StatusCode::OK,
                            [("retry-after", "0")],
                            "{\"accepted\":2,\"rejected\":[],\"end_offset\":2}",
                        )
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{address}/v1/events"), calls)
    }

    #[tokio::test]
    async fn busy_answers_are_retried_until_accepted() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (endpoint, calls) = flaky_server(2).await;
        let client = reqwest::Client::new();
        let outcome = post_with_retries(&client, &endpoint, None, b"{}\n{}".to_vec(), 5).await;
        assert_eq!(outcome.retries, 2);
        assert_eq!(outcome.result.unwrap().accepted, 2);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn retries_stop_at_the_limit_and_connection_errors_are_retried() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (endpoint, _) = flaky_server(100).await;
        let client = reqwest::Client::new();
        let outcome = post_with_retries(&client, &endpoint, None, b"{}".to_vec(), 3).await;
        assert_eq!(outcome.result.unwrap_err(), "gave up after 3 attempts");
        // Nothing listens on this port: connection refused, retried, then given up.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = format!("http://{}/v1/events", closed.local_addr().unwrap());
        drop(closed);
        let outcome = post_with_retries(&client, &dead, None, b"{}".to_vec(), 2).await;
        assert_eq!(outcome.retries, 2);
        assert!(outcome.result.is_err());
    }

    #[test]
    fn reasons_add_up_without_their_index() {
        assert_eq!(
            strip_index("events[12].ts: expected RFC 3339"),
            "ts: expected RFC 3339"
        );
        assert_eq!(strip_index("events[3]: invalid JSON: x"), "invalid JSON: x");
    }
}
