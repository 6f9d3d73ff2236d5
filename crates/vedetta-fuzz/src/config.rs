//! Target `config`: the configuration parser (`crates/vedetta/src/config.rs`), TOML text →
//! raw shape → validated settings, with environment overrides.
//!
//! The input is TOML text, optionally followed by a NUL byte and environment lines
//! `NAME=value` (each read as `VEDETTA_NAME`). Checked:
//! - `vedetta config check` (the file alone) and `vedetta serve` (file, empty environment)
//!   accept the same files, and read them the same way;
//! - a validated configuration keeps its promises: every count and size positive, the
//!   body budget at least one body, money bound in (0, 10¹²], every duration non-negative
//!   and bounded (so no time arithmetic on it can overflow);
//! - its state-shaping settings, the record the KPI store keeps, read back to themselves.

use vedetta::config::{self, Config, Overrides, check_text, load_text};
use vedetta_core::pipeline::settings::StateSettings;

/// Past a century, a duration is a mistake; below it, `event time ± duration` cannot
/// overflow an `i64` of milliseconds for any time intake accepts.
const CENTURY_MS: i64 = 100 * 366 * 86_400_000;

pub fn fuzz_config(data: &[u8]) {
    let (text, env) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return; // a config file is read as UTF-8 text first
    };
    let env: Vec<(String, String)> = String::from_utf8_lossy(env)
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (format!("{}{name}", config::ENV_PREFIX), value.to_string()))
        .collect();

    let checked = check_text(text, "fuzz.toml");
    let served = load_text(text, "fuzz.toml", &[], &Overrides::default());
    match (&checked, &served) {
        (Ok(a), Ok(b)) => {
            check_config(a);
            assert_eq!(
                describe(a),
                describe(b),
                "check and serve read the file differently"
            );
        }
        (Err(_), Err(_)) => {}
        (a, b) => panic!(
            "`config check` and `serve` disagree on a file: {:?} vs {:?}",
            a.as_ref().map(|_| "ok"),
            b.as_ref().map(|_| "ok")
        ),
    }
    if !env.is_empty()
        && let Ok(config) = load_text(text, "fuzz.toml", &env, &Overrides::default())
    {
        check_config(&config);
    }
}

/// What a configuration decides, in a form that compares (`Config` holds a `HashMap`).
fn describe(config: &Config) -> String {
    format!(
        "{:?} {:?} {:?} {:?} {:?} {:?} {:?} {}",
        config.data_dir,
        config.listen,
        config.ingest,
        config.privacy,
        config.log,
        config.metrics,
        (
            &config.pipeline.geoip_database,
            config.pipeline.snapshot_interval_seconds
        ),
        config.pipeline.rules.state_settings().describe()
    )
}

fn check_config(config: &Config) {
    let ingest = &config.ingest;
    for (key, value) in [
        ("max_body_bytes", ingest.max_body_bytes),
        ("max_events_per_request", ingest.max_events_per_request),
        ("max_pending_records", ingest.max_pending_records),
        ("max_inflight_body_bytes", ingest.max_inflight_body_bytes),
        ("max_kpi_series", config.metrics.max_kpi_series),
        ("max_campaigns", config.pipeline.rules.max_campaigns),
    ] {
        assert!(value > 0, "{key} = 0 accepted");
    }
    assert!(ingest.quarantine_capacity > 0);
    // Retention subtracts days from now in milliseconds: bounded, it cannot wrap.
    for days in [ingest.quarantine_days, config.log.retention_days] {
        assert!(
            (1..=config::MAX_RETENTION_DAYS).contains(&days),
            "{days} days"
        );
    }
    assert!(ingest.max_inflight_body_bytes >= ingest.max_body_bytes);
    assert!(ingest.max_amount > 0.0 && ingest.max_amount <= 1e12);
    assert!(
        !ingest.api_keys.iter().any(|k| k.len() < 16),
        "a short API key"
    );
    let rules = &config.pipeline.rules;
    for (key, ms, positive) in [
        ("future_tolerance", ingest.future_tolerance_ms, false),
        ("out_of_orderness", rules.out_of_orderness_ms, false),
        ("allowed_lateness", rules.allowed_lateness_ms, false),
        ("session_gap", rules.session_gap_ms, true),
        ("near_duplicate", rules.near_duplicate_ms, false),
        ("dedup_horizon", rules.dedup_horizon_ms, true),
    ] {
        let least = i64::from(positive);
        assert!(
            (least..=CENTURY_MS).contains(&ms),
            "{key} validated to {ms} ms"
        );
    }
    for rule in &rules.sequence_rules {
        assert!(
            (1..=CENTURY_MS).contains(&rule.within_ms),
            "within_ms {}",
            rule.within_ms
        );
    }
    assert!(config.pipeline.snapshot_interval_seconds > 0);
    let settings = rules.state_settings();
    assert_eq!(
        StateSettings::parse(&settings.describe()),
        settings,
        "the settings record does not read back"
    );
}
