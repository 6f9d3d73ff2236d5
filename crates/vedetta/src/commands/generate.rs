//! `vedetta gen`: realistic synthetic traffic, deterministic from `--seed`.
//!
//! Two modes:
//! - files: `--out events.ndjson` (and spend into `--costs-out`), event times ending about
//!   now unless `--start` is given;
//! - live: `--url http://…` streams to a server at `--rate` events per second, in real
//!   time, out of order and with duplicates as real traffic has them.
//!
//! `serve --demo` (module `demo`) delivers `vedetta_synth::demo`'s traffic the same way.

use anyhow::Context;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;
use vedetta_core::time::{Clock, EventTime};
use vedetta_synth::{Generator, SynthConfig, SynthRecord, Tagging, to_ndjson_line};

use crate::clock::SystemClock;

#[derive(Debug, clap::Args)]
pub struct GenArgs {
    /// Seed: the same seed gives byte-identical output.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of funnel events to write (spend records come on top).
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Events file (NDJSON); `-` for standard output.
    #[arg(long, default_value = "events.ndjson")]
    out: PathBuf,
    /// Spend records file (NDJSON). Default: next to --out, named costs.ndjson.
    #[arg(long)]
    costs_out: Option<PathBuf>,
    /// Event time of the first session (RFC 3339). Default: chosen so that the last event
    /// is about now.
    #[arg(long)]
    start: Option<String>,
    /// Size of the user population.
    #[arg(long, default_value_t = 50_000)]
    users: u64,
    /// New sessions per minute of event time.
    #[arg(long, default_value_t = 600.0)]
    sessions_per_minute: f64,
    /// Stream live to this server instead of writing files.
    #[arg(long)]
    url: Option<String>,
    /// Live mode: events per second.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Live mode: stop after this many seconds (default: run until interrupted).
    #[arg(long)]
    duration_seconds: Option<u64>,
    /// API key for live mode.
    #[arg(long, env = "VEDETTA_API_KEY")]
    key: Option<String>,
    /// Also write the expected KPIs (JSON), computed by the independent batch implementation
    /// (`vedetta_synth::truth`). They hold for a server that receives the events in file
    /// order (`vedetta send --concurrency 1`), geolocates with `--geoip-out`'s database and
    /// attributes as `--attribution` and `--attribution-lookback` say.
    #[arg(long)]
    truth: Option<PathBuf>,
    /// Write a GeoIP database (MaxMind format) that places the generator's IP addresses in
    /// their Italian regions; point `pipeline.geoip_database` at it.
    #[arg(long)]
    geoip_out: Option<PathBuf>,
    /// Where the attribution fields go: `realistic` (UTM parameters, click ids, referrer and
    /// channel on a session's landing event only; a third of returns typed in) or
    /// `every-event` (every event carries its session's, as before).
    #[arg(long, value_enum, default_value_t = TaggingArg::Realistic)]
    tagging: TaggingArg,
    /// The attribution model the truth follows: set it to the server's
    /// `pipeline.attribution`.
    #[arg(long, value_enum, default_value_t = AttributionArg::LastNonDirect)]
    attribution: AttributionArg,
    /// The truth's attribution lookback, a span like `30d` (as `pipeline.attribution_lookback`).
    #[arg(long, default_value = "30d")]
    attribution_lookback: String,
    /// The truth's same-order horizon, a span like `7d` (as `pipeline.order_dedup_horizon`).
    #[arg(long, default_value = "7d")]
    order_dedup_horizon: String,
    /// Share of orders refunded (0 to 1): refunds minutes to days after their order, some
    /// partial, some over the order's value (docs/semantics.md, "Refunds"). Default 0.
    #[arg(long, default_value_t = 0.0)]
    refund_share: f64,
    /// The truth's refund horizon, a span like `60d` (as `pipeline.refund_horizon`).
    #[arg(long, default_value = "60d")]
    refund_horizon: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TaggingArg {
    Realistic,
    EveryEvent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum AttributionArg {
    #[value(name = "last_non_direct")]
    LastNonDirect,
    #[value(name = "session")]
    Session,
    #[value(name = "first_touch")]
    FirstTouch,
}

/// The truth's settings from the flags, spans read as the server reads its configuration.
fn truth_settings(args: &GenArgs) -> anyhow::Result<vedetta_synth::truth::TruthConfig> {
    use vedetta_synth::truth::{AttributionModel, IpRegion, TruthConfig};
    let span = |flag: &str, text: &str, zero_ok: bool| -> anyhow::Result<i64> {
        crate::config::span_ms(flag, Some(text), zero_ok)
            .map_err(|e| anyhow::anyhow!("{}: {}", e.key, e.message))?
            .ok_or_else(|| anyhow::anyhow!("{flag}: missing"))
    };
    let geoip = vedetta_synth::geoip::catalog_region_networks()
        .into_iter()
        .map(|(network, prefix_len, region)| IpRegion {
            network,
            prefix_len,
            region: region.iso_code.to_string(),
        })
        .collect();
    Ok(TruthConfig {
        geoip,
        attribution: match args.attribution {
            AttributionArg::LastNonDirect => AttributionModel::LastNonDirect,
            AttributionArg::Session => AttributionModel::Session,
            AttributionArg::FirstTouch => AttributionModel::FirstTouch,
        },
        attribution_lookback_ms: span("--attribution-lookback", &args.attribution_lookback, false)?,
        order_dedup_horizon_ms: span("--order-dedup-horizon", &args.order_dedup_horizon, true)?,
        refund_horizon_ms: span("--refund-horizon", &args.refund_horizon, true)?,
        ..TruthConfig::default()
    })
}

pub fn run(args: &GenArgs) -> anyhow::Result<()> {
    if let Some(url) = args.url.clone() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let config = live_config(args.seed, args.users, args.rate, SystemClock.now_ms())?;
        let deadline = args.duration_seconds.map(Duration::from_secs);
        return runtime.block_on(stream_live(url, config, args.key.clone(), deadline));
    }
    write_files(args)
}

fn write_files(args: &GenArgs) -> anyhow::Result<()> {
    // Checked before generating anything: a bad span should not cost a long run.
    let truth_config = truth_settings(args)?;
    let mut config = SynthConfig {
        seed: args.seed,
        users: args.users,
        sessions_per_minute: args.sessions_per_minute,
        tagging: match args.tagging {
            TaggingArg::Realistic => Tagging::Realistic,
            TaggingArg::EveryEvent => Tagging::EveryEvent,
        },
        refund_share: args.refund_share,
        ..SynthConfig::default()
    };
    config.start_ms = match &args.start {
        Some(text) => text
            .parse::<jiff::Timestamp>()
            .with_context(|| format!("--start {text:?} is not an RFC 3339 timestamp"))?
            .as_millisecond(),
        None => {
            // A dry run measures how much event time the events span, so that the real run
            // can end about now (intake refuses events more than 5 minutes ahead).
            let span = event_time_span(&config, args.events)?;
            SystemClock.now_ms() - span - 60_000
        }
    };
    let costs_path = args.costs_out.clone().unwrap_or_else(|| {
        args.out
            .parent()
            .unwrap_or_else(|| std::path::Path::new("."))
            .join("costs.ndjson")
    });
    let mut events_out: Box<dyn Write> = if args.out.as_os_str() == "-" {
        Box::new(std::io::BufWriter::new(std::io::stdout().lock()))
    } else {
        Box::new(std::io::BufWriter::new(
            std::fs::File::create(&args.out)
                .with_context(|| format!("cannot create {}", args.out.display()))?,
        ))
    };
    let mut costs_out = std::io::BufWriter::new(
        std::fs::File::create(&costs_path)
            .with_context(|| format!("cannot create {}", costs_path.display()))?,
    );
    let mut line = Vec::with_capacity(512);
    let (mut events, mut costs) = (0u64, 0u64);
    let mut generator = synth(config.clone())?;
    // Kept only when the truth is wanted: it is computed over the whole stream at the end.
    let (mut logged_events, mut logged_spend) = (Vec::new(), Vec::new());
    while events < args.events {
        let Some(arrival) = generator.next() else {
            break;
        };
        line.clear();
        to_ndjson_line(&arrival.record, &mut line);
        let is_event = matches!(arrival.record, SynthRecord::Event(_));
        if is_event {
            events_out.write_all(&line)?;
            events += 1;
        } else {
            costs_out.write_all(&line)?;
            costs += 1;
        }
        if args.truth.is_some() {
            if is_event {
                logged_events.push(arrival);
            } else {
                logged_spend.push(arrival);
            }
        }
    }
    events_out.flush()?;
    costs_out.flush()?;
    if let Some(path) = &args.geoip_out {
        std::fs::write(path, vedetta_synth::geoip::catalog_region_mmdb())
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote the GeoIP database to {}", path.display());
    }
    if let Some(path) = &args.truth {
        write_truth(path, &logged_events, &logged_spend, &truth_config)?;
    }
    eprintln!(
        "wrote {events} events to {} and {costs} spend records to {} (event time from {}, seed {})",
        args.out.display(),
        costs_path.display(),
        EventTime(config.start_ms),
        args.seed
    );
    Ok(())
}

/// Computes the expected KPIs with the independent batch implementation and writes them.
fn write_truth(
    path: &std::path::Path,
    events: &[vedetta_synth::Arrival],
    spend: &[vedetta_synth::Arrival],
    config: &vedetta_synth::truth::TruthConfig,
) -> anyhow::Result<()> {
    // The server logs the events file first, then the costs file.
    let truth = vedetta_synth::truth::compute(events.iter().chain(spend), config);
    let file = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?,
    );
    serde_json::to_writer(file, &truth)?;
    eprintln!(
        "wrote the expected KPIs ({} rows, {} spend rows) to {}",
        truth.rows.len(),
        truth.spend.len(),
        path.display()
    );
    Ok(())
}

/// Event-time span of the first `events` events of a configuration.
fn event_time_span(config: &SynthConfig, events: u64) -> anyhow::Result<i64> {
    let mut max_ts = config.start_ms;
    let mut seen = 0;
    for arrival in synth(config.clone())? {
        if let SynthRecord::Event(_) = arrival.record {
            seen += 1;
        }
        max_ts = max_ts.max(arrival.record.ts_ms());
        if seen >= events {
            break;
        }
    }
    Ok(max_ts - config.start_ms)
}

/// A configuration whose event rate is about `rate` per second, starting at `now_ms`.
pub fn live_config(seed: u64, users: u64, rate: f64, now_ms: i64) -> anyhow::Result<SynthConfig> {
    // Calibrate: count events per session over ten simulated minutes.
    let probe = SynthConfig {
        seed,
        users: 10_000,
        sessions_per_minute: 100.0,
        start_ms: 0,
        ..SynthConfig::default()
    };
    let events_in_ten_minutes = synth(probe)?
        .take_while(|a| a.arrival_ms < 10 * 60_000)
        .filter(|a| matches!(a.record, SynthRecord::Event(_)))
        .count()
        .max(1) as f64;
    let events_per_session = events_in_ten_minutes / 1000.0;
    let sessions_per_minute = (rate * 60.0 / events_per_session).max(0.1);
    Ok(SynthConfig {
        seed,
        // A user starts at most one session every 31 minutes; a population of 100× the
        // session rate keeps the generator from running short of idle users.
        users: users.max((sessions_per_minute * 100.0) as u64),
        sessions_per_minute,
        start_ms: now_ms,
        ..SynthConfig::default()
    })
}

/// A generator, with a configuration error made an `anyhow` error.
pub fn synth(config: SynthConfig) -> anyhow::Result<Generator> {
    Generator::new(config).map_err(|e| anyhow::anyhow!("generator configuration: {e}"))
}

/// Streams a generator to a server in real time until the deadline (or forever).
pub async fn stream_live(
    url: String,
    config: SynthConfig,
    key: Option<String>,
    deadline: Option<Duration>,
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let base = url.trim_end_matches('/').to_string();
    let started = std::time::Instant::now();
    let origin_ms = config.start_ms;
    let mut generator = synth(config)?.peekable();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let (mut events, mut costs) = (Vec::new(), Vec::new());
    loop {
        tick.tick().await;
        if deadline.is_some_and(|d| started.elapsed() >= d) {
            return Ok(());
        }
        let now_sim = origin_ms + started.elapsed().as_millis() as i64;
        while let Some(arrival) = generator.next_if(|a| a.arrival_ms <= now_sim) {
            let target = match arrival.record {
                SynthRecord::Event(_) => &mut events,
                SynthRecord::Spend(_) => &mut costs,
            };
            to_ndjson_line(&arrival.record, target);
        }
        for (body, path) in [(&mut events, "events"), (&mut costs, "costs")] {
            if body.is_empty() {
                continue;
            }
            let outcome = super::send::post_with_retries(
                &client,
                &format!("{base}/v1/{path}"),
                key.as_deref(),
                std::mem::take(body),
                5,
            )
            .await;
            if let Err(reason) = outcome.result {
                tracing::warn!(%reason, "live generator could not deliver a batch");
            }
        }
    }
}
