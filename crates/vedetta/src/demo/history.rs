//! Loading the demo's history through the server's own front door.
//!
//! The history's arrivals are posted in arrival order, one request at a time, in chunks
//! of [`CHUNK_ARRIVALS`]: the log then holds them in exactly the order the generator made
//! them, so the watermark moves through the history as it would have in real time, and
//! no event is late that the generator did not deliver late itself. (Live traffic is held
//! back until the history is stored: see `demo::run`.)
//!
//! Spend: the generator reports spend per campaign and minute, which for a month is more
//! records than the funnel events of a small shop. The history sends it per campaign and
//! hour instead, as ad platforms' hourly reports do: the same money in every hour and day
//! (summed in cents, exactly), at the hour's first minute. Live spend stays per minute.
//!
//! Resuming: the marker is written after each acknowledged request, with the log's end
//! offset. A request in flight when the server stopped was stored or not; at the next start
//! the log's end offset says which, so it is neither lost nor stored twice (a re-post would
//! be deduplicated for events, but would add a second copy of its spend and count its
//! events as duplicates).

use super::marker::Marker;
use super::progress::Progress;
use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use vedetta_synth::{
    Channel, SynthConfig, SynthRecord, SynthSpend, Timestamp, TsFormat, to_ndjson_line,
};

/// Arrivals per chunk: one events request and one costs request.
pub const CHUNK_ARRIVALS: usize = 5_000;

/// The generator configuration of a marker's history.
pub fn config(marker: &Marker) -> SynthConfig {
    let mut config = vedetta_synth::demo::history_config(marker.seed, marker.history_end_ms);
    config.sessions_per_minute *= marker.history_scale;
    config
}

/// Posts one NDJSON body, retrying while the server is busy or unreachable; the log's end
/// offset after it, and how many records were accepted and refused.
#[derive(Debug)]
pub struct Posted {
    pub end_offset: u64,
    pub accepted: u64,
    pub refused: u64,
}

pub async fn post(
    client: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    body: Vec<u8>,
) -> anyhow::Result<Posted> {
    let body = axum::body::Bytes::from(body);
    let mut delay = Duration::from_millis(100);
    for attempt in 1..=30 {
        let mut request = client
            .post(url)
            .header("content-type", "application/x-ndjson")
            .body(body.clone());
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let failure = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let text = response.text().await.unwrap_or_default();
                if status == 200 || status == 400 {
                    let value: serde_json::Value = serde_json::from_str(&text)
                        .with_context(|| format!("{url}: HTTP {status}, unreadable answer"))?;
                    let Some(end_offset) = value["end_offset"].as_u64() else {
                        anyhow::bail!("{url}: HTTP {status}: {text}");
                    };
                    return Ok(Posted {
                        end_offset,
                        accepted: value["accepted"].as_u64().unwrap_or(0),
                        refused: value["rejected"].as_array().map_or(0, |r| r.len() as u64),
                    });
                }
                if status != 503 && status != 429 && status != 507 {
                    anyhow::bail!("{url}: HTTP {status}: {text}");
                }
                format!("HTTP {status}")
            }
            Err(error) => error.to_string(),
        };
        tracing::debug!(attempt, %failure, "demo: history request retried");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    anyhow::bail!("{url}: the server did not take the history after 30 attempts")
}

/// The server's log end offset (`/v1/status`).
pub async fn log_end_offset(
    client: &reqwest::Client,
    base: &str,
    key: Option<&str>,
) -> anyhow::Result<u64> {
    let mut request = client.get(format!("{base}/v1/status"));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let text = request.send().await?.error_for_status()?.text().await?;
    let status: serde_json::Value = serde_json::from_str(&text)?;
    status["log_end_offset"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("/v1/status has no log_end_offset"))
}

/// Waits until the trigger consumer has read the log up to `offset` (`/v1/triggers`), so
/// that triggers put in force then judge live traffic only; gives up after `patience` (the
/// triggers then go in force anyway, and the consumer's backlog may push about history).
pub async fn wait_triggers_consumed(
    client: &reqwest::Client,
    base: &str,
    key: Option<&str>,
    offset: u64,
    patience: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let mut request = client.get(format!("{base}/v1/triggers"));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let text = request.send().await?.error_for_status()?.text().await?;
        let answer: serde_json::Value = serde_json::from_str(&text)?;
        let consumed = answer["consumed_offset"].as_u64().unwrap_or(0);
        if consumed >= offset {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("the trigger consumer read up to {consumed} of {offset}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Spend per (channel, campaign, source, currency) and hour: a record for an hour is
/// complete once a record of a later hour of the same key arrives (the generator reports
/// each key's minutes in order), and at the end of the history.
#[derive(Debug, Default)]
struct HourlySpend {
    open: BTreeMap<(Channel, &'static str, &'static str, &'static str), (i64, i64)>,
}

const HOUR_MS: i64 = 3_600_000;

impl HourlySpend {
    fn record(
        key: (Channel, &'static str, &'static str, &'static str),
        hour: i64,
        cents: i64,
    ) -> SynthRecord {
        let (channel, campaign, source, currency) = key;
        SynthRecord::Spend(SynthSpend {
            ts: Timestamp {
                epoch_ms: hour,
                format: TsFormat::EpochMillis,
            },
            channel,
            campaign,
            amount: cents as f64 / 100.0,
            currency,
            source,
        })
    }

    /// Adds a minute's spend; the hour it completes, if any.
    fn add(&mut self, spend: &SynthSpend) -> Option<SynthRecord> {
        let key = (spend.channel, spend.campaign, spend.source, spend.currency);
        let hour = spend.ts.epoch_ms.div_euclid(HOUR_MS) * HOUR_MS;
        let cents = (spend.amount * 100.0).round() as i64;
        match self.open.get_mut(&key) {
            Some((open_hour, sum)) if *open_hour == hour => {
                *sum = sum.saturating_add(cents);
                None
            }
            Some(open) => {
                let (done_hour, done_cents) = std::mem::replace(open, (hour, cents));
                Some(Self::record(key, done_hour, done_cents))
            }
            None => {
                self.open.insert(key, (hour, cents));
                None
            }
        }
    }

    fn drain(&mut self) -> Vec<SynthRecord> {
        std::mem::take(&mut self.open)
            .into_iter()
            .map(|(key, (hour, cents))| Self::record(key, hour, cents))
            .collect()
    }
}

/// The next chunk after `arrivals_done`: its events and its spend, as NDJSON, the number of
/// arrivals it holds, and the event time reached (for the progress).
struct Chunk {
    events: Vec<u8>,
    costs: Vec<u8>,
    arrivals: u64,
    reached_ms: i64,
}

fn next_chunk(
    generator: &mut std::iter::Peekable<vedetta_synth::Generator>,
    spend: &mut HourlySpend,
    end_ms: i64,
) -> Option<Chunk> {
    let mut chunk = Chunk {
        events: Vec::new(),
        costs: Vec::new(),
        arrivals: 0,
        reached_ms: i64::MIN,
    };
    while chunk.arrivals < CHUNK_ARRIVALS as u64 {
        let Some(arrival) = generator.next_if(|a| a.arrival_ms < end_ms) else {
            break;
        };
        match &arrival.record {
            SynthRecord::Event(_) => to_ndjson_line(&arrival.record, &mut chunk.events),
            SynthRecord::Spend(minute) => {
                if let Some(hour) = spend.add(minute) {
                    to_ndjson_line(&hour, &mut chunk.costs);
                }
            }
        }
        chunk.arrivals += 1;
        chunk.reached_ms = arrival.arrival_ms;
    }
    if chunk.arrivals == 0 {
        return None;
    }
    if generator.peek().is_none_or(|a| a.arrival_ms >= end_ms) {
        // The last chunk: the hours still open end with the history.
        for hour in spend.drain() {
            to_ndjson_line(&hour, &mut chunk.costs);
        }
    }
    Some(chunk)
}

/// Which request of the current chunk was in flight, and stored, when the last run stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InFlight {
    /// None was stored unacknowledged: the log ends where the marker last saw it.
    Nothing,
    /// The chunk's events request.
    Events,
    /// The chunk's costs request: the chunk is complete.
    Costs,
}

/// The log grew past the marker's offset while nothing but the history load writes: the
/// request in flight was stored. It was the events request unless that was acknowledged
/// already (or the chunk has no events).
fn in_flight(marker: &Marker, logged: u64, chunk_has_events: bool) -> InFlight {
    if logged <= marker.log_end_offset {
        InFlight::Nothing
    } else if !marker.chunk_events_done && chunk_has_events {
        InFlight::Events
    } else {
        InFlight::Costs
    }
}

/// Loads (the rest of) the history, updating `marker` on disk and `progress` as it goes.
pub async fn load(
    marker: &mut Marker,
    data_dir: &Path,
    base: &str,
    key: Option<&str>,
    progress: &Progress,
    crash_after_request: Option<u64>,
) -> anyhow::Result<()> {
    // Fault injection for tests: the process dies the moment its n-th request is stored
    // and acknowledged, before the marker records it, as a crash at the worst moment.
    let mut acknowledged = 0u64;
    let mut crash_point = || {
        acknowledged += 1;
        if crash_after_request == Some(acknowledged) {
            eprintln!("demo: DEMO_CRASH_AFTER_REQUEST={acknowledged}: aborting");
            std::process::abort();
        }
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    let config = config(marker);
    let start_ms = config.start_ms;
    let span_ms = (marker.history_end_ms - start_ms).max(1) as f64;
    let mut generator = crate::commands::generate::synth(config)?.peekable();
    // Skip what is stored (the generator is deterministic: the same arrivals come again),
    // rebuilding the open hours of spend as they were.
    // (A scaled history needs no scaled spend: the demo's spend follows its clicks.)
    let mut spend = HourlySpend::default();
    for _ in 0..marker.arrivals_done {
        match generator.next() {
            Some(arrival) => {
                if let SynthRecord::Spend(minute) = &arrival.record {
                    spend.add(minute);
                }
            }
            None => break,
        }
    }
    // The request in flight when the last run stopped: stored if the log grew past the
    // offset the marker last saw (nothing else writes while the history loads).
    let logged = log_end_offset(&client, base, key).await?;
    let mut pending = next_chunk(&mut generator, &mut spend, marker.history_end_ms);
    if let Some(chunk) = &pending {
        let stored = in_flight(marker, logged, !chunk.events.is_empty());
        match stored {
            InFlight::Nothing => {}
            InFlight::Events => marker.chunk_events_done = true,
            InFlight::Costs => {
                marker.arrivals_done += chunk.arrivals;
                marker.chunk_events_done = false;
                pending = next_chunk(&mut generator, &mut spend, marker.history_end_ms);
            }
        }
        if stored != InFlight::Nothing {
            tracing::info!(request = ?stored, "demo: the request in flight at the last stop was stored");
            marker.log_end_offset = logged;
            marker.save(data_dir)?;
        }
    }
    if marker.arrivals_done > 0 {
        tracing::info!(
            arrivals_done = marker.arrivals_done,
            "demo: resuming the history load"
        );
    }
    let bar = ProgressBar::new(1000);
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("demo history {bar:40} {percent:>3}% {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut logged_tenth = -1;
    let on_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    while let Some(chunk) = pending {
        if !marker.chunk_events_done && !chunk.events.is_empty() {
            let posted = post(&client, &format!("{base}/v1/events"), key, chunk.events).await?;
            crash_point();
            marker.accepted += posted.accepted;
            marker.refused += posted.refused;
            marker.chunk_events_done = true;
            marker.log_end_offset = posted.end_offset;
            marker.save(data_dir)?;
        }
        if !chunk.costs.is_empty() {
            let posted = post(&client, &format!("{base}/v1/costs"), key, chunk.costs).await?;
            crash_point();
            marker.accepted += posted.accepted;
            marker.refused += posted.refused;
            marker.log_end_offset = posted.end_offset;
        }
        marker.arrivals_done += chunk.arrivals;
        marker.chunk_events_done = false;
        marker.save(data_dir)?;

        let fraction = ((chunk.reached_ms - start_ms) as f64 / span_ms).clamp(0.0, 1.0);
        bar.set_position((fraction * 1000.0) as u64);
        bar.set_message(format!("{} records", marker.accepted));
        progress.update(|s| {
            s.progress = fraction;
            s.history_records = marker.accepted;
        });
        let tenth = (fraction * 10.0) as i32;
        // On a terminal the bar says it; in a log file, a line every tenth.
        if tenth > logged_tenth && !on_terminal {
            logged_tenth = tenth;
            tracing::info!(
                percent = tenth * 10,
                records = marker.accepted,
                "demo: loading the history"
            );
        }
        pending = next_chunk(&mut generator, &mut spend, marker.history_end_ms);
    }
    bar.finish_and_clear();
    if marker.refused > 0 {
        tracing::warn!(
            refused = marker.refused,
            "demo: the server refused some history records (see /v1/rejected)"
        );
    }
    marker.complete = true;
    marker.save(data_dir)?;
    progress.update(|s| {
        s.progress = 1.0;
        s.history_records = marker.accepted;
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn the_request_in_flight_is_told_by_the_log_end_offset() {
        let mut marker = Marker::new(1, 0, 1.0);
        marker.log_end_offset = 10_000;
        // The log ends where the marker saw it: nothing in flight was stored.
        assert_eq!(in_flight(&marker, 10_000, true), InFlight::Nothing);
        // It grew: the events request was stored, or, with none to send, the costs.
        assert_eq!(in_flight(&marker, 14_990, true), InFlight::Events);
        assert_eq!(in_flight(&marker, 10_012, false), InFlight::Costs);
        // The events were acknowledged: what grew the log is the costs request.
        marker.chunk_events_done = true;
        assert_eq!(in_flight(&marker, 10_012, true), InFlight::Costs);
        assert_eq!(in_flight(&marker, 10_000, true), InFlight::Nothing);
    }

    fn minute(channel: Channel, campaign: &'static str, ts_ms: i64, amount: f64) -> SynthSpend {
        SynthSpend {
            ts: Timestamp {
                epoch_ms: ts_ms,
                format: TsFormat::EpochMillis,
            },
            channel,
            campaign,
            amount,
            currency: "EUR",
            source: "google_ads",
        }
    }

    fn amount_and_ts(record: &SynthRecord) -> (f64, i64) {
        match record {
            SynthRecord::Spend(s) => (s.amount, s.ts.epoch_ms),
            SynthRecord::Event(_) => panic!("not spend"),
        }
    }

    #[test]
    fn spend_is_summed_per_campaign_and_hour_to_the_cent() {
        let mut hourly = HourlySpend::default();
        let hour = 1_700_000_000_000 / HOUR_MS * HOUR_MS;
        assert!(
            hourly
                .add(&minute(Channel::PaidSearch, "a", hour, 0.10))
                .is_none()
        );
        assert!(
            hourly
                .add(&minute(Channel::PaidSearch, "a", hour + 60_000, 0.20))
                .is_none()
        );
        assert!(
            hourly
                .add(&minute(Channel::Social, "b", hour + 60_000, 1.00))
                .is_none()
        );
        // The next hour of the same campaign closes its previous one: 0.30 exactly.
        let closed = hourly
            .add(&minute(Channel::PaidSearch, "a", hour + HOUR_MS, 0.05))
            .unwrap();
        assert_eq!(amount_and_ts(&closed), (0.3, hour));
        let rest: Vec<_> = hourly.drain().iter().map(amount_and_ts).collect();
        assert_eq!(rest.len(), 2);
        assert!(rest.contains(&(0.05, hour + HOUR_MS)));
        assert!(rest.contains(&(1.0, hour)));
        assert!(hourly.drain().is_empty());
    }
}
