//! `vedetta serve --demo`: a month of history on first start, then live traffic, a GeoIP
//! database of the generator's regions and example alert rules (issue 11).
//!
//! ```text
//! prepare (before the server starts): data dir, <data>/demo-geoip.mmdb, alert rules file,
//!                                     a real listen port, the marker <data>/demo.json
//! run (once it listens):  history ──► marker complete ──► alert rules in force
//!                                                      └► live traffic + glitches
//! ```
//!
//! The traffic's shape is `vedetta_synth::demo`'s; this module delivers it. The history goes
//! through the real intake (HTTP to the server itself), in arrival order, so the pipeline
//! sees it as it would have in real time. Live traffic and the glitches are held back until
//! the history is stored (see [`live`]), and the alert rules are put in force only then:
//! judged over the whole month as it streams in, they would fire dozens of alerts about
//! weeks-old minutes.
//!
//! Hidden knobs for tests (environment): `DEMO_END_MS` (event time the history ends at,
//! default now), `DEMO_HISTORY_SCALE` (fraction of the history's volume, default 1),
//! `DEMO_GLITCH_FIRST_S` and `DEMO_GLITCH_EVERY_S` (default 120 and 300), and
//! `DEMO_CRASH_AFTER_REQUEST` (abort once the n-th history request is stored, before the
//! marker records it).

pub mod history;
pub mod live;
pub mod marker;
pub mod progress;

use anyhow::Context;
use marker::Marker;
use progress::{DemoStatus, Phase, Progress};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vedetta_core::time::{Clock, EventTime};

use crate::clock::SystemClock;
use crate::config::Config;

/// The default seed: every new demo shows the same month.
pub const DEFAULT_SEED: u64 = 11;

/// Most live events per second the demo sends.
pub const MAX_RATE: f64 = 10_000.0;

/// File of the demo's alert rules in the data directory: empty while the history loads.
pub const RULES_FILE: &str = "demo-rules.toml";

/// File of the generator's GeoIP database in the data directory.
pub const GEOIP_FILE: &str = "demo-geoip.mmdb";

/// `alerts.max_catch_up` of the demo's alert configuration.
pub const DEMO_MAX_CATCH_UP_MS: i64 = 2 * 60_000;

/// How much live traffic the demo sends (`--rate`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LiveRate {
    /// `auto`: the history's level and rhythm carried on past its end
    /// (`vedetta_synth::demo::live_config_following_history`), so the charts' last hour and
    /// "vs previous period" compare like with like.
    FollowHistory,
    /// Constant events per second; 0 sends no live traffic.
    Fixed(f64),
}

impl std::str::FromStr for LiveRate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("auto") {
            return Ok(LiveRate::FollowHistory);
        }
        match text.parse::<f64>() {
            Ok(rate) if rate.is_finite() && (0.0..=MAX_RATE).contains(&rate) => {
                Ok(LiveRate::Fixed(rate))
            }
            _ => Err(format!(
                "{text:?} is not `auto` or a number of events per second between 0 and {MAX_RATE}"
            )),
        }
    }
}

impl LiveRate {
    /// Events per second at `t_ms` for a live part starting at `start_ms`.
    pub fn at(self, start_ms: i64, t_ms: i64) -> f64 {
        match self {
            LiveRate::FollowHistory => {
                vedetta_synth::demo::live_events_per_second_following_history(start_ms, t_ms)
            }
            LiveRate::Fixed(rate) => rate,
        }
    }
}

/// What `serve --demo` was asked for.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub seed: u64,
    /// Live traffic.
    pub rate: LiveRate,
    /// Event time the history ends at (a new demo only; default now).
    pub history_end_ms: Option<i64>,
    pub history_scale: f64,
    pub glitches: live::GlitchTiming,
    /// Tests only: abort once this many history requests are stored, before the marker
    /// records the last (`DEMO_CRASH_AFTER_REQUEST`).
    pub crash_after_request: Option<u64>,
}

fn env_number<T: std::str::FromStr>(name: &str) -> anyhow::Result<Option<T>> {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| anyhow::anyhow!("{name}: {text:?} is not a number")),
        Err(_) => Ok(None),
    }
}

impl DemoOptions {
    /// The options from the flags and the hidden environment knobs, checked.
    pub fn new(seed: u64, rate: LiveRate) -> anyhow::Result<Self> {
        let history_scale = env_number::<f64>("DEMO_HISTORY_SCALE")?.unwrap_or(1.0);
        if !(history_scale > 0.0 && history_scale <= 1.0) {
            anyhow::bail!("DEMO_HISTORY_SCALE: {history_scale} is not in (0, 1]");
        }
        let history_end_ms = env_number::<i64>("DEMO_END_MS")?;
        let now = SystemClock.now_ms();
        if let Some(end) = history_end_ms
            && !(vedetta_synth::demo::HISTORY_DAYS * 86_400_000..=now).contains(&end)
        {
            anyhow::bail!("DEMO_END_MS: {end} is not an epoch millisecond time before now");
        }
        let seconds = |name: &str, default: u64| -> anyhow::Result<Duration> {
            let value = env_number::<u64>(name)?.unwrap_or(default);
            if value > 86_400 {
                anyhow::bail!("{name}: {value} is more than a day");
            }
            Ok(Duration::from_secs(value))
        };
        Ok(Self {
            seed,
            rate,
            history_end_ms,
            history_scale,
            glitches: live::GlitchTiming {
                first: seconds("DEMO_GLITCH_FIRST_S", 120)?,
                every: seconds("DEMO_GLITCH_EVERY_S", 300)?.max(Duration::from_secs(1)),
            },
            crash_after_request: env_number::<u64>("DEMO_CRASH_AFTER_REQUEST")?,
        })
    }
}

/// The demo, prepared before the server starts; [`run`] it once the server listens.
#[derive(Debug)]
pub struct Demo {
    options: DemoOptions,
    data_dir: PathBuf,
    marker: Marker,
    /// The demo's rules file, when the demo brought the alert rules.
    rules_file: Option<PathBuf>,
    /// The demo's triggers file, when the demo brought the triggers.
    triggers_file: Option<PathBuf>,
}

/// The demo's alert rules as a rules file (`[[alerts.rules]]` only).
fn demo_rules_text() -> anyhow::Result<String> {
    let demo: toml::Table = toml::from_str(crate::watch::config::DEMO_ALERTS)?;
    let rules = demo
        .get("alerts")
        .and_then(|a| a.get("rules"))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("the demo's alert rules are missing"))?;
    let mut alerts = toml::Table::new();
    alerts.insert("rules".into(), rules);
    let mut file = toml::Table::new();
    file.insert("alerts".into(), toml::Value::Table(alerts));
    Ok(format!(
        "# The alert rules of `vedetta serve --demo`, put in force once its history is loaded.\n{}",
        toml::to_string(&file)?
    ))
}

const RULES_WHILE_LOADING: &str =
    "# The demo's alert rules arrive here once its history is loaded.\n";

/// The demo's triggers (`demo-triggers.toml`), pushing to the inbox.
const DEMO_TRIGGERS: &str = include_str!("demo-triggers.toml");
const TRIGGERS_FILE: &str = "demo-triggers.toml";
const TRIGGERS_WHILE_LOADING: &str =
    "# The demo's triggers arrive here once its history is loaded.\n";

/// Readies `config` for the demo: the data directory, the GeoIP database, the alert rules
/// (unless the configuration has its own), a real listen port, and the marker.
pub fn prepare(config: &mut Config, options: DemoOptions) -> anyhow::Result<Demo> {
    let data_dir = config.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;

    // A real port, known before the server starts: the alerts' links and the log name it.
    if config.listen.port() == 0 {
        let probe = std::net::TcpListener::bind(config.listen)
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        config.listen = probe.local_addr()?;
    }

    if config.pipeline.geoip_database.is_none() {
        let path = data_dir.join(GEOIP_FILE);
        let bytes = vedetta_synth::geoip::catalog_region_mmdb();
        if std::fs::read(&path).ok().as_deref() != Some(&bytes[..]) {
            marker::write_atomically(&path, &bytes)?;
        }
        config.pipeline.geoip_database = Some(path);
    }

    let existing = Marker::load(&data_dir)?;
    let marker = match existing {
        Some(marker) => {
            if marker.seed != options.seed {
                tracing::warn!(
                    stored = marker.seed,
                    asked = options.seed,
                    "demo: this data directory holds the history of another seed; keeping it"
                );
            }
            marker
        }
        None => {
            let end = options
                .history_end_ms
                .unwrap_or_else(|| SystemClock.now_ms());
            let mut marker = Marker::new(options.seed, end, options.history_scale);
            if data_dir.join("log.redb").exists() {
                // A data directory with data of its own gets no history on top: it would
                // arrive behind that data's watermark, all of it late.
                tracing::warn!("demo: the data directory already holds data; no history is loaded");
                marker.complete = true;
                marker.skipped = true;
            }
            marker.save(&data_dir)?;
            marker
        }
    };

    let mut rules_file = None;
    if config.alerts.inline_rules.is_empty() && config.alerts.rules_file.is_none() {
        // A newcomer sees alerts too: example rules that notify the server's own inbox.
        let mut alerts = crate::watch::config::demo_alerts(&config.listen.to_string())
            .map_err(|e| anyhow::anyhow!("the demo's alert rules: {e}"))?;
        let path = data_dir.join(RULES_FILE);
        let text = if marker.complete {
            demo_rules_text()?
        } else {
            RULES_WHILE_LOADING.to_string()
        };
        marker::write_atomically(&path, text.as_bytes())?;
        alerts.inline_rules.clear();
        alerts.rules_file = Some(path.clone());
        // Minutes far behind the watermark are not judged: during the load the evaluator
        // then skips the month (no rules are in force, but judging each minute still costs
        // a commit), and live minutes are judged as they close.
        alerts.max_catch_up_ms = DEMO_MAX_CATCH_UP_MS;
        config.alerts = alerts;
        rules_file = Some(path);
    }
    let mut triggers_file = None;
    if rules_file.is_some() && config.triggers.inline.is_empty() && config.triggers.file.is_none() {
        // And a trigger push: example triggers into the same inbox, in force after the load.
        let path = data_dir.join(TRIGGERS_FILE);
        let text = if marker.complete {
            DEMO_TRIGGERS
        } else {
            TRIGGERS_WHILE_LOADING
        };
        marker::write_atomically(&path, text.as_bytes())?;
        config.triggers = crate::act::config::TriggersConfig::new(
            Vec::new(),
            Some(path.clone()),
            &config.alerts.destinations,
        );
        config
            .triggers
            .load()
            .map_err(|e| anyhow::anyhow!("the demo's triggers: {e}"))?;
        triggers_file = Some(path);
    }
    Ok(Demo {
        options,
        data_dir,
        marker,
        rules_file,
        triggers_file,
    })
}

/// Runs the demo against the server listening at `address`: the history (or the rest of
/// it), then the alert rules, live traffic and glitches.
pub async fn run(demo: Demo, address: SocketAddr, key: Option<String>) {
    let Demo {
        options,
        data_dir,
        mut marker,
        rules_file,
        triggers_file,
    } = demo;
    // The live part's clock starts now: what comes due while the history loads is sent
    // when it is stored.
    let live_start_ms = SystemClock.now_ms();
    let live_origin = Instant::now();
    let history = history::config(&marker);
    let progress = Progress::register(DemoStatus {
        phase: if marker.complete {
            Phase::Live
        } else {
            Phase::Loading
        },
        progress: if marker.complete { 1.0 } else { 0.0 },
        history_records: marker.accepted,
        history_start: EventTime(history.start_ms).to_rfc3339(),
        history_end: EventTime(marker.history_end_ms).to_rfc3339(),
        seed: marker.seed,
        rate: options.rate.at(live_start_ms, live_start_ms),
        error: None,
    });
    tracing::info!(
        url = %format!("http://{address}/"),
        seed = marker.seed,
        rate = ?options.rate,
        "demo: open the dashboard"
    );
    let base = format!("http://{address}");
    if !marker.complete {
        let outcome = load_history(
            &mut marker,
            &data_dir,
            &base,
            key.as_deref(),
            &progress,
            options.crash_after_request,
        )
        .await;
        if let Err(error) = outcome {
            tracing::error!(error = %format!("{error:#}"), "demo: the history load stopped; restart to continue it");
            progress.update(|s| {
                s.phase = Phase::Failed;
                s.error = Some(format!("{error:#}"));
            });
            return;
        }
    }
    if let Some(path) = &rules_file {
        let written =
            demo_rules_text().and_then(|text| marker::write_atomically(path, text.as_bytes()));
        if let Err(error) = written {
            tracing::error!(error = %format!("{error:#}"), "demo: cannot put the alert rules in force");
        }
    }
    if let Some(path) = &triggers_file {
        // Only once the trigger consumer has read the whole history: triggers in force
        // while it is still reading would push a month of abandoned carts.
        let caught_up = async {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?;
            let end = history::log_end_offset(&client, &base, key.as_deref()).await?;
            history::wait_triggers_consumed(
                &client,
                &base,
                key.as_deref(),
                end,
                Duration::from_secs(300),
            )
            .await
        };
        if let Err(error) = caught_up.await {
            tracing::warn!(error = %format!("{error:#}"), "demo: triggers put in force before the consumer caught up");
        }
        if let Err(error) = marker::write_atomically(path, DEMO_TRIGGERS.as_bytes()) {
            tracing::error!(error = %format!("{error:#}"), "demo: cannot put the triggers in force");
        }
    }
    progress.update(|s| s.phase = Phase::Live);
    if options.rate != LiveRate::Fixed(0.0) {
        let rate_now = options.rate.at(live_start_ms, SystemClock.now_ms());
        tracing::info!(events_per_second = rate_now, mode = ?options.rate, "demo: live traffic started");
        tokio::spawn(live::glitches(
            address,
            rate_now,
            options.glitches,
            key.clone(),
        ));
        if triggers_file.is_some() {
            tokio::spawn(live::first_abandoned_cart(address, key.clone()));
        }
        let seed = marker.seed;
        if let Err(error) =
            live::stream(address, seed, options.rate, live_start_ms, live_origin, key).await
        {
            tracing::error!(error = %format!("{error:#}"), "demo: live traffic stopped");
        }
    }
}

async fn load_history(
    marker: &mut Marker,
    data_dir: &Path,
    base: &str,
    key: Option<&str>,
    progress: &Progress,
    crash_after_request: Option<u64>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    tracing::info!(
        days = vedetta_synth::demo::HISTORY_DAYS,
        "demo: loading the history (the dashboard works meanwhile; live traffic follows it)"
    );
    history::load(marker, data_dir, base, key, progress, crash_after_request).await?;
    tracing::info!(
        records = marker.accepted,
        seconds = started.elapsed().as_secs_f64(),
        "demo: history loaded"
    );
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::LiveRate;

    #[test]
    fn the_demo_triggers_are_valid_and_push_to_the_demo_inbox() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(super::TRIGGERS_FILE);
        std::fs::write(&path, super::DEMO_TRIGGERS).unwrap();
        let alerts = crate::watch::config::demo_alerts("127.0.0.1:8080").unwrap();
        let config =
            crate::act::config::TriggersConfig::new(Vec::new(), Some(path), &alerts.destinations);
        let triggers = config.load().unwrap();
        assert_eq!(triggers.len(), 2);
        assert!(config.push_destinations.contains_key("inbox"));
    }

    #[test]
    fn the_live_rate_is_auto_or_a_bounded_number() {
        assert_eq!("auto".parse::<LiveRate>().unwrap(), LiveRate::FollowHistory);
        assert_eq!(
            " AUTO ".parse::<LiveRate>().unwrap(),
            LiveRate::FollowHistory
        );
        assert_eq!("4".parse::<LiveRate>().unwrap(), LiveRate::Fixed(4.0));
        assert_eq!("0".parse::<LiveRate>().unwrap(), LiveRate::Fixed(0.0));
        for bad in ["-1", "NaN", "inf", "1e9", "fast", ""] {
            let error = bad.parse::<LiveRate>().unwrap_err();
            assert!(error.contains("auto"), "{bad}: {error}");
        }
        // `auto` follows the history: a busy evening is above a quiet night.
        let start = 1_796_378_400_000; // 2026-12-04T10:00:00Z
        let evening = LiveRate::FollowHistory.at(start, start + 10 * 3_600_000);
        let night = LiveRate::FollowHistory.at(start, start + 17 * 3_600_000);
        assert!(evening > 2.0 * night, "{evening} vs {night}");
        assert!(night >= 0.24, "{night}");
        assert_eq!(LiveRate::Fixed(4.0).at(start, start), 4.0);
    }
}
