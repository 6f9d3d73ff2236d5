//! Configuration: a raw shape parsed from TOML, environment and flags, then validated into
//! typed settings that the rest of the program trusts.
//!
//! Sources, lowest precedence first: built-in defaults, the TOML file (`--config`), `VEDETTA_*`
//! environment variables, command-line flags. Every key of the file can be set from the
//! environment: a top-level key `data_dir` is `VEDETTA_DATA_DIR`, a key `max_body_bytes` in
//! table `[ingest]` is `VEDETTA_INGEST__MAX_BODY_BYTES` (two underscores between table and
//! key). Values are read as TOML values when they parse as one (`10485760`, `true`,
//! `["a","b"]`), else as strings.
//!
//! Errors name the key and where it came from (the file and line, or the variable), so
//! `vedetta config check` can point at the mistake.

use anyhow::{Context, bail};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Environment variables with this prefix are configuration.
pub const ENV_PREFIX: &str = "VEDETTA_";
/// Variables with the prefix that are not configuration keys.
const ENV_NOT_CONFIG: &[&str] = &["VEDETTA_LOG"];

/// The file's shape. Unknown keys are errors: a typo must not silently do nothing.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
    #[serde(default)]
    pub ingest: RawIngest,
    #[serde(default)]
    pub privacy: RawPrivacy,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub pipeline: RawPipeline,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub alerts: crate::watch::config::RawAlerts,
    /// `[[sites]]`: public site keys for the browser tracker.
    pub sites: Option<Vec<crate::sources::sites::RawSite>>,
    /// `[sources.*]`: webhook sources (Shopify).
    #[serde(default)]
    pub sources: crate::sources::RawSources,

    /// Triggers (issue 12), inline.
    #[serde(default)]
    pub triggers: Vec<vedetta_core::act::triggers::RawTrigger>,
    /// A file of `[[triggers]]`, reloaded on change and on SIGHUP.
    pub triggers_file: Option<PathBuf>,
}

/// How connections are held and let go (see `server::listener`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub header_timeout_seconds: Option<u64>,
    pub idle_timeout_seconds: Option<u64>,
    pub max_connections: Option<u64>,
    pub shutdown_deadline_seconds: Option<u64>,
    pub trusted_proxy_hops: Option<u8>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub max_kpi_series: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIngest {
    pub api_keys: Option<StringList>,
    pub max_body_bytes: Option<u64>,
    pub max_events_per_request: Option<u64>,
    pub max_pending_records: Option<u64>,
    pub max_inflight_body_bytes: Option<u64>,
    pub future_tolerance_seconds: Option<u64>,
    pub quarantine_capacity: Option<u64>,
    pub quarantine_days: Option<u64>,
    pub max_amount: Option<f64>,
    pub body_timeout_seconds: Option<u64>,
    pub min_body_rate_bytes_per_second: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrivacy {
    pub pseudonym_key: Option<String>,
    pub pseudonym_key_id: Option<u8>,
    pub previous_pseudonym_keys: Option<StringList>,
    /// AES-256-GCM key for identity and tokens at rest (`crate::crypto`).
    pub encryption_key: Option<String>,
    pub previous_encryption_keys: Option<StringList>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub retention_days: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPipeline {
    pub out_of_orderness_ms: Option<u64>,
    pub allowed_lateness_seconds: Option<u64>,
    pub session_gap_minutes: Option<u64>,
    pub near_duplicate_ms: Option<u64>,
    pub dedup_horizon_hours: Option<u64>,
    /// `last_non_direct` (default), `session` or `first_touch`.
    pub attribution: Option<String>,
    /// A span such as `30d` (default) or `12h`.
    pub attribution_lookback: Option<String>,
    /// A span such as `7d` (default); `0s` turns order dedup off.
    pub order_dedup_horizon: Option<String>,
    /// How long an order's place is kept for its refunds: a span such as `60d` (default);
    /// `0s` leaves every refund unmatched.
    pub refund_horizon: Option<String>,
    pub time_zone: Option<String>,
    pub reporting_currency: Option<String>,
    pub currency_rates: Option<std::collections::BTreeMap<String, f64>>,
    pub conversion_types: Option<StringList>,
    pub sequence_rules: Option<Vec<RawSequenceRule>>,
    pub internal_hosts: Option<StringList>,
    pub geoip_database: Option<PathBuf>,
    pub snapshot_interval_seconds: Option<u64>,
    pub max_campaigns: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSequenceRule {
    pub reason: String,
    pub after: Vec<String>,
    pub then: Vec<String>,
    pub within_ms: u64,
}

/// A list given as a TOML array, or as one comma-separated string (handy in environment
/// variables).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StringList {
    List(Vec<String>),
    Joined(String),
}

impl StringList {
    fn into_vec(self) -> Vec<String> {
        match self {
            StringList::List(items) => items,
            StringList::Joined(text) => text
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
        }
    }
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub ingest: IngestConfig,
    pub privacy: PrivacyConfig,
    pub log: LogConfig,
    pub pipeline: PipelineSettings,
    pub metrics: MetricsConfig,
    pub server: ServerConfig,
    pub alerts: crate::watch::config::AlertsConfig,
    pub sites: Vec<crate::sources::sites::Site>,
    pub sources: crate::sources::SourcesConfig,

    pub triggers: crate::act::config::TriggersConfig,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// A request head must be complete this long after the connect, or after its first byte
    /// on a kept-alive connection.
    pub header_timeout: std::time::Duration,
    /// A kept-alive connection with no request, or a client reading none of its response,
    /// is dropped after this long.
    pub idle_timeout: std::time::Duration,
    /// Most connections served at once (503 past it); `None`: derived from the open-file
    /// limit at start.
    pub max_connections: Option<usize>,
    /// After SIGTERM, open requests may finish until this deadline; then they are dropped.
    pub shutdown_deadline: std::time::Duration,
    /// Reverse proxies in front of the server that append to `X-Forwarded-For`: the
    /// client's address is the entry this many from the right. 0: the connection's peer.
    pub trusted_proxy_hops: u8,
}

#[derive(Debug, Clone)]
pub struct MetricsConfig {
    /// Most channels with KPI gauges of their own on /metrics; the rest are `(other)`.
    pub max_kpi_series: usize,
}

#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// Bearer keys accepted on the API. Empty: no authentication, loopback only.
    pub api_keys: Vec<String>,
    pub max_body_bytes: usize,
    pub max_events_per_request: usize,
    pub max_pending_records: usize,
    /// Budget of request bodies being read or parsed at once, across all requests.
    pub max_inflight_body_bytes: usize,
    pub future_tolerance_ms: i64,
    pub quarantine_capacity: u64,
    /// Refused events are deleted from the quarantine after this many days (their redacted
    /// copies may still hold free text such as a page URL).
    pub quarantine_days: u64,
    /// The largest `value` or `amount` of one record, in the reporting currency.
    pub max_amount: f64,
    /// A request body that sends nothing for this long is cut with 408.
    pub body_timeout: std::time::Duration,
    /// After the first `body_timeout`, a body must have arrived at this average rate at
    /// least (408 otherwise): a trickle cannot hold a connection for ever.
    pub min_body_rate_bytes_per_second: u64,
}

#[derive(Clone)]
pub struct PrivacyConfig {
    /// Hex key; `None` means: use (or create) `pseudonym.key` in the data directory.
    pub pseudonym_key: Option<String>,
    pub pseudonym_key_id: u8,
    pub previous_pseudonym_keys: Vec<String>,
    /// Hex key; `None` means: use (or create) `encryption.key` in the data directory.
    pub encryption_key: Option<String>,
    pub previous_encryption_keys: Vec<String>,
}

impl std::fmt::Debug for PrivacyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivacyConfig")
            .field(
                "pseudonym_key",
                &self.pseudonym_key.as_ref().map(|_| "<set>"),
            )
            .field("pseudonym_key_id", &self.pseudonym_key_id)
            .field(
                "previous_pseudonym_keys",
                &self.previous_pseudonym_keys.len(),
            )
            .field(
                "encryption_key",
                &self.encryption_key.as_ref().map(|_| "<set>"),
            )
            .field(
                "previous_encryption_keys",
                &self.previous_encryption_keys.len(),
            )
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub retention_days: u64,
}

/// The pipeline's rules plus where its inputs come from.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    pub rules: vedetta_core::pipeline::PipelineConfig,
    /// A MaxMind-format city database for IP → region.
    pub geoip_database: Option<PathBuf>,
    pub snapshot_interval_seconds: u64,
}

/// Flags that override configuration keys.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<String>,
}

/// Loads configuration from an optional file, the process environment and flags.
pub fn load(file: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Config> {
    let env: Vec<(String, String)> = std::env::vars()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX))
        .collect();
    load_from(file, &env, overrides)
}

/// Loads configuration with an explicit environment (for tests).
pub fn load_from(
    file: Option<&Path>,
    env: &[(String, String)],
    overrides: &Overrides,
) -> anyhow::Result<Config> {
    let (text, origin) = match file {
        Some(path) => (
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?,
            path.display().to_string(),
        ),
        None => (String::new(), "(no file)".to_string()),
    };
    load_text(&text, &origin, env, overrides)
}

/// [`load_from`] on a file's text, named `origin` in errors: pure, no file to read (the
/// config fuzz target calls it). `env` names must start with [`ENV_PREFIX`].
pub fn load_text(
    text: &str,
    origin: &str,
    env: &[(String, String)],
    overrides: &Overrides,
) -> anyhow::Result<Config> {
    let mut table: toml::Table =
        toml::from_str(text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
    for (name, value) in env {
        apply_env(&mut table, name, value)?;
    }
    if let Some(dir) = &overrides.data_dir {
        table.insert(
            "data_dir".into(),
            toml::Value::String(dir.display().to_string()),
        );
    }
    if let Some(listen) = &overrides.listen {
        table.insert("listen".into(), toml::Value::String(listen.clone()));
    }
    let raw: RawConfig = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| anyhow::anyhow!("{origin}: {}", e.message()))?;
    validate(raw).map_err(|e| match find_key_line(text, &e.key) {
        Some(line) => anyhow::anyhow!("{origin}:{line}: {}: {}", e.key, e.message),
        None => anyhow::anyhow!("{}: {}", e.key, e.message),
    })
}

/// Checks a file on its own (no environment), naming the bad key and line.
pub fn check_file(path: &Path) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    check_text(&text, &path.display().to_string())
}

/// [`check_file`] on a file's text, named `origin` in errors (pure: the config fuzz target
/// calls it).
pub fn check_text(text: &str, origin: &str) -> anyhow::Result<Config> {
    // Parsing the text straight into the raw shape keeps toml's line/column in errors.
    let raw: RawConfig = toml::from_str(text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
    validate(raw).map_err(|e| match find_key_line(text, &e.key) {
        Some(line) => anyhow::anyhow!("{origin}:{line}: {}: {}", e.key, e.message),
        None => anyhow::anyhow!("{origin}: {}: {}", e.key, e.message),
    })
}

fn apply_env(table: &mut toml::Table, name: &str, value: &str) -> anyhow::Result<()> {
    if ENV_NOT_CONFIG.contains(&name) {
        return Ok(());
    }
    let Some(key) = name.strip_prefix(ENV_PREFIX) else {
        bail!("environment variable {name}: not a configuration key");
    };
    let path: Vec<String> = key.split("__").map(str::to_ascii_lowercase).collect();
    if path.iter().any(String::is_empty) {
        bail!("environment variable {name}: not a configuration key");
    }
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let (last, parents) = path.split_last().context("empty key")?;
    let mut current = table;
    for part in parents {
        current = current
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .with_context(|| format!("environment variable {name}: {part} is not a table"))?;
    }
    current.insert(last.clone(), parsed);
    Ok(())
}

/// A validation error: the dotted key and what is wrong with it.
#[derive(Debug)]
pub struct KeyError {
    pub key: String,
    pub message: String,
}

fn bad(key: &str, message: impl Into<String>) -> KeyError {
    KeyError {
        key: key.into(),
        message: message.into(),
    }
}

/// `ingest.max_amount`: positive, and at most 10¹² so that one record's micro-units fit an
/// `i64` with room to spare (sums are wider still).
fn max_amount(value: Option<f64>) -> Result<f64, KeyError> {
    const CEILING: f64 = 1e12;
    match value {
        None => Ok(10_000_000.0),
        Some(v) if v.is_finite() && v > 0.0 && v <= CEILING => Ok(v),
        Some(v) => Err(bad(
            "ingest.max_amount",
            format!("must be a number above 0 and at most {CEILING:e}, got {v}"),
        )),
    }
}

/// The longest duration any key may set: ten years. Durations are added to and taken from
/// event times in `i64` milliseconds; unbounded, `future_tolerance_seconds =
/// 9223372036854775807` wrapped to a negative tolerance (a fuzz find) and a large
/// `session_gap_minutes` overflowed. Ten years is past any sensible setting and far from
/// overflow.
pub const MAX_DURATION_MS: i64 = 3650 * 86_400_000;

/// A duration key given in `unit_ms` units, in milliseconds: at most [`MAX_DURATION_MS`],
/// and above 0 when `positive`.
fn duration_ms(
    key: &str,
    value: Option<u64>,
    unit_ms: i64,
    positive: bool,
) -> Result<Option<i64>, KeyError> {
    let Some(value) = value else {
        return Ok(None);
    };
    if positive && value == 0 {
        return Err(bad(key, "must be greater than 0"));
    }
    i64::try_from(value)
        .ok()
        .and_then(|v| v.checked_mul(unit_ms))
        .filter(|ms| *ms <= MAX_DURATION_MS)
        .map(Some)
        .ok_or_else(|| {
            bad(
                key,
                format!(
                    "{value} is too long; at most {} (ten years)",
                    MAX_DURATION_MS / unit_ms
                ),
            )
        })
}

/// A span key (`90s`, `45m`, `12h`, `30d`) in milliseconds: a whole number and one unit, at
/// most [`MAX_DURATION_MS`]; zero only when `zero_ok`.
pub(crate) fn span_ms(
    key: &str,
    value: Option<&str>,
    zero_ok: bool,
) -> Result<Option<i64>, KeyError> {
    let Some(text) = value else {
        return Ok(None);
    };
    let form = || {
        bad(
            key,
            format!("{text:?} is not a span: a whole number and a unit (s, m, h, d), like \"30d\""),
        )
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(form)?;
    let (number, unit) = text.split_at(split);
    let unit_ms: i64 = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(form()),
    };
    let n: i64 = number.parse().map_err(|_| form())?;
    if n == 0 && !zero_ok {
        return Err(bad(key, "must be greater than 0"));
    }
    n.checked_mul(unit_ms)
        .filter(|ms| *ms <= MAX_DURATION_MS)
        .map(Some)
        .ok_or_else(|| {
            bad(
                key,
                format!("{text} is too long; at most 3650d (ten years)"),
            )
        })
}

/// The most days `log.retention_days` and `ingest.quarantine_days` may keep: a century.
/// Retention computes `now − days` in milliseconds; unbounded, a huge value wrapped to a
/// cutoff in the future, and retention would have deleted the whole log.
pub const MAX_RETENTION_DAYS: u64 = 36_500;

fn retention_days(key: &str, value: Option<u64>, default: u64) -> Result<u64, KeyError> {
    match value {
        None => Ok(default),
        Some(0) => Err(bad(key, "must be greater than 0")),
        Some(days) if days > MAX_RETENTION_DAYS => Err(bad(
            key,
            format!("{days} days is too long; at most {MAX_RETENTION_DAYS} (a century)"),
        )),
        Some(days) => Ok(days),
    }
}

/// Turns the raw shape into settings, refusing what cannot work.
pub fn validate(raw: RawConfig) -> Result<Config, KeyError> {
    let listen_text = raw.listen.unwrap_or_else(|| "127.0.0.1:8080".into());
    let listen: SocketAddr = listen_text.parse().map_err(|_| {
        bad(
            "listen",
            format!("expected ADDRESS:PORT such as 127.0.0.1:8080, got {listen_text:?}"),
        )
    })?;
    let ingest = raw.ingest;
    let api_keys = ingest
        .api_keys
        .map(StringList::into_vec)
        .unwrap_or_default();
    if let Some(short) = api_keys.iter().find(|k| k.len() < 16) {
        return Err(bad(
            "ingest.api_keys",
            format!(
                "keys must be at least 16 characters; one has {} (use e.g. `openssl rand -hex 24`)",
                short.len()
            ),
        ));
    }
    let positive = |key: &str, value: Option<u64>, default: u64| -> Result<u64, KeyError> {
        match value {
            Some(0) => Err(bad(key, "must be greater than 0")),
            Some(v) => Ok(v),
            None => Ok(default),
        }
    };
    let max_body_bytes = positive("ingest.max_body_bytes", ingest.max_body_bytes, 10 << 20)?;
    let max_inflight = positive(
        "ingest.max_inflight_body_bytes",
        ingest.max_inflight_body_bytes,
        256 << 20,
    )?;
    if max_inflight < max_body_bytes {
        return Err(bad(
            "ingest.max_inflight_body_bytes",
            format!("must be at least ingest.max_body_bytes ({max_body_bytes})"),
        ));
    }
    // Time settings in whole seconds, at most a day: a larger one is a typo, and would
    // overflow the clock arithmetic it feeds.
    let seconds =
        |key: &str, value: Option<u64>, default: u64| -> Result<std::time::Duration, KeyError> {
            match value {
                Some(0) => Err(bad(key, "must be greater than 0")),
                Some(v) if v > 86_400 => Err(bad(key, "must be at most 86400 (a day)")),
                Some(v) => Ok(std::time::Duration::from_secs(v)),
                None => Ok(std::time::Duration::from_secs(default)),
            }
        };
    let body_timeout = seconds(
        "ingest.body_timeout_seconds",
        ingest.body_timeout_seconds,
        30,
    )?;
    let min_body_rate = positive(
        "ingest.min_body_rate_bytes_per_second",
        ingest.min_body_rate_bytes_per_second,
        1024,
    )?;
    let server = raw.server;
    let max_connections = match server.max_connections {
        Some(0) => return Err(bad("server.max_connections", "must be greater than 0")),
        Some(v) if v > 10_000_000 => {
            return Err(bad("server.max_connections", "must be at most 10000000"));
        }
        other => other.map(|v| v as usize),
    };
    let server = ServerConfig {
        header_timeout: seconds(
            "server.header_timeout_seconds",
            server.header_timeout_seconds,
            10,
        )?,
        idle_timeout: seconds(
            "server.idle_timeout_seconds",
            server.idle_timeout_seconds,
            60,
        )?,
        max_connections,
        shutdown_deadline: seconds(
            "server.shutdown_deadline_seconds",
            server.shutdown_deadline_seconds,
            10,
        )?,
        trusted_proxy_hops: match server.trusted_proxy_hops {
            Some(h) if h > 16 => {
                return Err(bad("server.trusted_proxy_hops", "must be at most 16"));
            }
            h => h.unwrap_or(0),
        },
    };
    let privacy = raw.privacy;
    if let Some(key) = &privacy.pseudonym_key
        && let Err(e) = vedetta_core::privacy::PseudonymKey::from_hex(0, key)
    {
        return Err(bad("privacy.pseudonym_key", e.to_string()));
    }
    let previous = privacy
        .previous_pseudonym_keys
        .map(StringList::into_vec)
        .unwrap_or_default();
    for key in &previous {
        if let Err(e) = vedetta_core::privacy::PseudonymKey::from_hex(0, key) {
            return Err(bad("privacy.previous_pseudonym_keys", e.to_string()));
        }
    }
    if let Some(key) = &privacy.encryption_key
        && let Err(e) = crate::crypto::check_key_hex(key)
    {
        return Err(bad("privacy.encryption_key", e.to_string()));
    }
    let previous_encryption = privacy
        .previous_encryption_keys
        .map(StringList::into_vec)
        .unwrap_or_default();
    for key in &previous_encryption {
        if let Err(e) = crate::crypto::check_key_hex(key) {
            return Err(bad("privacy.previous_encryption_keys", e.to_string()));
        }
    }
    let sites = crate::sources::sites::validate(raw.sites.unwrap_or_default())
        .map_err(|(key, message)| bad(&key, message))?;
    let sources = crate::sources::SourcesConfig::from_raw(raw.sources)
        .map_err(|(key, message)| bad(&key, message))?;
    let alerts = crate::watch::config::AlertsConfig::from_raw(raw.alerts, &listen.to_string())
        .map_err(|(key, message)| bad(&key, message))?;
    let triggers = crate::act::config::TriggersConfig::new(
        raw.triggers,
        raw.triggers_file,
        &alerts.destinations,
    );
    if !triggers.inline.is_empty() {
        triggers
            .check(&triggers.inline)
            .map_err(|message| bad("triggers", message))?;
    }
    Ok(Config {
        data_dir: raw
            .data_dir
            .unwrap_or_else(|| PathBuf::from("vedetta-data")),
        listen,
        ingest: IngestConfig {
            api_keys,
            max_body_bytes: max_body_bytes as usize,
            max_events_per_request: positive(
                "ingest.max_events_per_request",
                ingest.max_events_per_request,
                10_000,
            )? as usize,
            max_pending_records: positive(
                "ingest.max_pending_records",
                ingest.max_pending_records,
                500_000,
            )? as usize,
            max_inflight_body_bytes: max_inflight as usize,
            future_tolerance_ms: duration_ms(
                "ingest.future_tolerance_seconds",
                ingest.future_tolerance_seconds,
                1000,
                false,
            )?
            .unwrap_or(300_000),
            quarantine_capacity: positive(
                "ingest.quarantine_capacity",
                ingest.quarantine_capacity,
                10_000,
            )?,
            quarantine_days: retention_days("ingest.quarantine_days", ingest.quarantine_days, 7)?,
            max_amount: max_amount(ingest.max_amount)?,
            body_timeout,
            min_body_rate_bytes_per_second: min_body_rate,
        },
        privacy: PrivacyConfig {
            pseudonym_key: privacy.pseudonym_key,
            pseudonym_key_id: privacy.pseudonym_key_id.unwrap_or(1),
            previous_pseudonym_keys: previous,
            encryption_key: privacy.encryption_key,
            previous_encryption_keys: previous_encryption,
        },
        log: LogConfig {
            retention_days: retention_days("log.retention_days", raw.log.retention_days, 30)?,
        },
        pipeline: validate_pipeline(raw.pipeline)?,
        metrics: MetricsConfig {
            max_kpi_series: positive("metrics.max_kpi_series", raw.metrics.max_kpi_series, 50)?
                as usize,
        },
        server,
        alerts,
        sites,
        sources,

        triggers,
    })
}

fn validate_pipeline(raw: RawPipeline) -> Result<PipelineSettings, KeyError> {
    use vedetta_core::EventKind;
    use vedetta_core::pipeline::{AttributionModel, PipelineConfig, SequenceRule};
    let defaults = PipelineConfig::default();
    let nonzero = |key: &str, value: Option<u64>| -> Result<Option<u64>, KeyError> {
        match value {
            Some(0) => Err(bad(key, "must be greater than 0")),
            other => Ok(other),
        }
    };
    let time_zone = match &raw.time_zone {
        None => defaults.time_zone.clone(),
        Some(name) => jiff::tz::TimeZone::get(name).map_err(|_| {
            bad(
                "pipeline.time_zone",
                format!("unknown time zone {name:?}; use an IANA name such as Europe/Rome"),
            )
        })?,
    };
    let currency = |key: &str, code: &str| -> Result<String, KeyError> {
        if code.len() == 3 && code.bytes().all(|b| b.is_ascii_alphabetic()) {
            Ok(code.to_ascii_uppercase())
        } else {
            Err(bad(
                key,
                format!("expected an ISO 4217 code such as EUR, got {code:?}"),
            ))
        }
    };
    let reporting_currency = match &raw.reporting_currency {
        Some(code) => currency("pipeline.reporting_currency", code)?,
        None => defaults.reporting_currency.clone(),
    };
    let mut currency_rates = std::collections::HashMap::new();
    for (code, rate) in raw.currency_rates.unwrap_or_default() {
        let code = currency("pipeline.currency_rates", &code)?;
        if !(rate.is_finite() && rate > 0.0) {
            return Err(bad(
                "pipeline.currency_rates",
                format!("rate of {code} must be a positive number"),
            ));
        }
        currency_rates.insert(code, rate);
    }
    let kinds = |key: &str, names: Vec<String>| -> Result<Vec<EventKind>, KeyError> {
        if names.is_empty() {
            return Err(bad(key, "must name at least one event type"));
        }
        let kinds: Vec<EventKind> = names
            .iter()
            .map(|n| EventKind::from_wire(n.trim()))
            .collect();
        if kinds.contains(&EventKind::Refund) {
            // A refund is not a funnel step: it lowers its order's revenue instead.
            return Err(bad(
                key,
                "`refund` cannot be a conversion type or in a sequence rule (docs/semantics.md, \"Refunds\")",
            ));
        }
        Ok(kinds)
    };
    let conversion_types = match raw.conversion_types {
        Some(list) => kinds("pipeline.conversion_types", list.into_vec())?,
        None => defaults.conversion_types.clone(),
    };
    let sequence_rules = match raw.sequence_rules {
        None => defaults.sequence_rules.clone(),
        Some(rules) => rules
            .into_iter()
            .map(|rule| {
                let within_ms = duration_ms(
                    "pipeline.sequence_rules.within_ms",
                    Some(rule.within_ms),
                    1,
                    true,
                )?
                .unwrap_or(1);
                Ok(SequenceRule {
                    reason: rule.reason,
                    after: kinds("pipeline.sequence_rules", rule.after)?,
                    then: kinds("pipeline.sequence_rules", rule.then)?,
                    within_ms,
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let internal_hosts = raw
        .internal_hosts
        .map(StringList::into_vec)
        .unwrap_or_default()
        .into_iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    let rules = PipelineConfig {
        out_of_orderness_ms: duration_ms(
            "pipeline.out_of_orderness_ms",
            raw.out_of_orderness_ms,
            1,
            false,
        )?
        .unwrap_or(defaults.out_of_orderness_ms),
        allowed_lateness_ms: duration_ms(
            "pipeline.allowed_lateness_seconds",
            raw.allowed_lateness_seconds,
            1000,
            false,
        )?
        .unwrap_or(defaults.allowed_lateness_ms),
        session_gap_ms: duration_ms(
            "pipeline.session_gap_minutes",
            raw.session_gap_minutes,
            60_000,
            true,
        )?
        .unwrap_or(defaults.session_gap_ms),
        near_duplicate_ms: duration_ms(
            "pipeline.near_duplicate_ms",
            raw.near_duplicate_ms,
            1,
            false,
        )?
        .unwrap_or(defaults.near_duplicate_ms),
        dedup_horizon_ms: duration_ms(
            "pipeline.dedup_horizon_hours",
            raw.dedup_horizon_hours,
            3_600_000,
            true,
        )?
        .unwrap_or(defaults.dedup_horizon_ms),
        order_dedup_horizon_ms: span_ms(
            "pipeline.order_dedup_horizon",
            raw.order_dedup_horizon.as_deref(),
            true,
        )?
        .unwrap_or(defaults.order_dedup_horizon_ms),
        refund_horizon_ms: span_ms(
            "pipeline.refund_horizon",
            raw.refund_horizon.as_deref(),
            true,
        )?
        .unwrap_or(defaults.refund_horizon_ms),
        attribution: match raw.attribution.as_deref() {
            None => defaults.attribution,
            Some(name) => AttributionModel::from_name(name).ok_or_else(|| {
                bad(
                    "pipeline.attribution",
                    format!(
                        "{name:?} is not a model; one of \"last_non_direct\", \"session\", \"first_touch\""
                    ),
                )
            })?,
        },
        attribution_lookback_ms: span_ms(
            "pipeline.attribution_lookback",
            raw.attribution_lookback.as_deref(),
            false,
        )?
        .unwrap_or(defaults.attribution_lookback_ms),
        sequence_rules,
        conversion_types,
        time_zone,
        reporting_currency,
        currency_rates,
        enrich: vedetta_core::enrich::EnrichConfig {
            internal_hosts,
            ..defaults.enrich.clone()
        },
        max_campaigns: nonzero("pipeline.max_campaigns", raw.max_campaigns)?
            .map_or(defaults.max_campaigns, |v| v as usize),
        ..defaults
    };
    Ok(PipelineSettings {
        rules,
        geoip_database: raw.geoip_database,
        snapshot_interval_seconds: nonzero(
            "pipeline.snapshot_interval_seconds",
            raw.snapshot_interval_seconds,
        )?
        .unwrap_or(10),
    })
}

impl Config {
    /// Refuses a configuration that would expose an unauthenticated API to the network.
    pub fn check_exposure(&self) -> anyhow::Result<()> {
        if self.ingest.api_keys.is_empty() && !self.listen.ip().is_loopback() {
            bail!(
                "refusing to listen on {} without API keys: anyone who can reach it could \
                 write events and read data. Set ingest.api_keys (or VEDETTA_INGEST__API_KEYS), \
                 or listen on 127.0.0.1",
                self.listen
            );
        }
        Ok(())
    }
}

/// The 1-based line where a dotted key (`ingest.max_body_bytes`) is set in TOML text.
fn find_key_line(text: &str, dotted: &str) -> Option<usize> {
    let (table, key) = match dotted.rsplit_once('.') {
        Some((table, key)) => (table, key),
        None => ("", dotted),
    };
    let mut current_table = String::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current_table = header.trim().to_string();
            continue;
        }
        if let Some((name, _)) = line.split_once('=')
            && name.trim() == key
            && current_table == table
        {
            return Some(number + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_need_no_file() {
        let config = load_from(None, &[], &Overrides::default()).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.data_dir, PathBuf::from("vedetta-data"));
        assert_eq!(config.ingest.max_body_bytes, 10 << 20);
        assert!(config.ingest.api_keys.is_empty());
    }

    #[test]
    fn precedence_is_file_then_environment_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("v.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\ndata_dir = \"/a\"\n[ingest]\nmax_body_bytes = 1000\n",
        )
        .unwrap();
        let environment = env(&[
            ("VEDETTA_DATA_DIR", "/b"),
            ("VEDETTA_INGEST__MAX_BODY_BYTES", "2000"),
            (
                "VEDETTA_INGEST__API_KEYS",
                "aaaaaaaaaaaaaaaa,bbbbbbbbbbbbbbbb",
            ),
            ("VEDETTA_LOG", "debug"),
        ]);
        let flags = Overrides {
            data_dir: Some("/c".into()),
            listen: None,
        };
        let config = load_from(Some(&file), &environment, &flags).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(config.data_dir, PathBuf::from("/c"));
        assert_eq!(config.ingest.max_body_bytes, 2000);
        assert_eq!(config.ingest.api_keys.len(), 2);
    }

    #[test]
    fn errors_name_the_key_and_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("v.toml");
        std::fs::write(&file, "# comment\n[ingest]\nmax_body_bytes = 0\n").unwrap();
        let err = check_file(&file).unwrap_err().to_string();
        assert!(
            err.ends_with("v.toml:3: ingest.max_body_bytes: must be greater than 0"),
            "{err}"
        );
        std::fs::write(&file, "[ingest]\nmax_body_byte = 5\n").unwrap();
        let err = check_file(&file).unwrap_err().to_string();
        assert!(
            err.contains("line 2") && err.contains("max_body_byte"),
            "{err}"
        );
        let err = load_from(
            None,
            &env(&[("VEDETTA_LISTEN", "nowhere")]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("listen: expected ADDRESS:PORT"), "{err}");
        let err = load_from(None, &env(&[("VEDETTA_NOPE", "1")]), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn the_encryption_key_comes_from_the_environment_and_bad_ones_are_named() {
        let key = "ab".repeat(32);
        let config = load_from(
            None,
            &env(&[("VEDETTA_PRIVACY__ENCRYPTION_KEY", &key)]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(config.privacy.encryption_key.as_deref(), Some(key.as_str()));
        assert!(!format!("{:?}", config.privacy).contains(&key));
        let err = load_from(
            None,
            &env(&[("VEDETTA_PRIVACY__ENCRYPTION_KEY", "abcd")]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("privacy.encryption_key:"), "{err}");
        assert!(!err.contains("abcd"), "the key is not echoed: {err}");
    }

    #[test]
    fn connection_settings_have_defaults_and_bounds() {
        let config = load_from(None, &[], &Overrides::default()).unwrap();
        assert_eq!(config.server.header_timeout.as_secs(), 10);
        assert_eq!(config.server.idle_timeout.as_secs(), 60);
        assert_eq!(config.server.shutdown_deadline.as_secs(), 10);
        assert_eq!(config.server.max_connections, None);
        assert_eq!(config.ingest.body_timeout.as_secs(), 30);
        assert_eq!(config.ingest.min_body_rate_bytes_per_second, 1024);
        let set = load_from(
            None,
            &env(&[
                ("VEDETTA_SERVER__MAX_CONNECTIONS", "300"),
                ("VEDETTA_SERVER__IDLE_TIMEOUT_SECONDS", "2"),
                ("VEDETTA_INGEST__BODY_TIMEOUT_SECONDS", "3"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(set.server.max_connections, Some(300));
        assert_eq!(set.server.idle_timeout.as_secs(), 2);
        assert_eq!(set.ingest.body_timeout.as_secs(), 3);
        for (name, value, message) in [
            (
                "VEDETTA_SERVER__HEADER_TIMEOUT_SECONDS",
                "0",
                "server.header_timeout_seconds: must be greater than 0",
            ),
            (
                "VEDETTA_SERVER__SHUTDOWN_DEADLINE_SECONDS",
                "86401",
                "server.shutdown_deadline_seconds: must be at most 86400",
            ),
            (
                "VEDETTA_SERVER__MAX_CONNECTIONS",
                "0",
                "server.max_connections: must be greater than 0",
            ),
            (
                "VEDETTA_INGEST__MIN_BODY_RATE_BYTES_PER_SECOND",
                "0",
                "ingest.min_body_rate_bytes_per_second: must be greater than 0",
            ),
        ] {
            let err = load_from(None, &env(&[(name, value)]), &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(message), "{name}={value}: {err}");
        }
    }

    #[test]
    fn no_keys_means_loopback_only() {
        let open = load_from(
            None,
            &env(&[("VEDETTA_LISTEN", "0.0.0.0:8080")]),
            &Overrides::default(),
        )
        .unwrap();
        let err = open.check_exposure().unwrap_err().to_string();
        assert!(err.contains("without API keys"), "{err}");
        let keyed = load_from(
            None,
            &env(&[
                ("VEDETTA_LISTEN", "0.0.0.0:8080"),
                ("VEDETTA_INGEST__API_KEYS", "0123456789abcdef0123"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert!(keyed.check_exposure().is_ok());
    }
}
