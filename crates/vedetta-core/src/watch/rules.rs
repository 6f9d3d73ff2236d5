//! Alert rules: their TOML shape, validation, and the checked form the evaluator runs.
//!
//! ```toml
//! [[alerts.rules]]
//! name = "cpa_high"
//! expr = "cpa > 20"            # a condition over the KPIs of /v1/kpis (see `expr`)
//! resolve_expr = "cpa < 17"    # optional: recovery apart from firing (no flapping)
//! over = "10m"                 # sliding window on 1-minute data
//! group_by = ["channel", "campaign"]
//! where = { channel = "paid_search" }   # optional filter
//! for = "2m"                   # must hold this long before it fires
//! keep_firing_for = "5m"       # must have recovered this long before it resolves
//! min_conversions = 3          # volume guards: below them the group is not judged
//! min_sessions = 0
//! severity = "warning"         # info, warning, critical
//! notify = ["slack-marketing", "mail-team"]
//! ```
//!
//! Validation names the rule and the key (`rule "cpa_high": for: "2x" is not a span`) and
//! refuses what would make a rule silently wrong: unknown KPIs, spend-based conditions
//! grouped by device or region (spend has neither), system metrics with a `group_by`,
//! unknown destinations, duplicate names, unbounded numbers.

use super::expr::{self, Cond, Metric};
use super::notification::Severity;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

/// The longest window, `for` or `keep_firing_for` a rule may set: a week of minutes is
/// what a sliding window over 1-minute data can sensibly mean.
pub const MAX_SPAN_MS: i64 = 7 * 86_400_000;
/// Most rules in one set.
pub const MAX_RULES: usize = 10_000;
/// Longest rule or destination name.
pub const MAX_NAME_LEN: usize = 128;

/// A dimension rules can group and filter by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dimension {
    Channel,
    Campaign,
    Device,
    Region,
}

impl Dimension {
    pub const ALL: [Dimension; 4] = [
        Dimension::Channel,
        Dimension::Campaign,
        Dimension::Device,
        Dimension::Region,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Dimension::Channel => "channel",
            Dimension::Campaign => "campaign",
            Dimension::Device => "device",
            Dimension::Region => "region",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.name() == name)
    }
}

/// A rule as written in TOML.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: Option<String>,
    /// `threshold` (default), `absence` or `anomaly`.
    pub kind: Option<String>,
    pub expr: Option<String>,
    pub resolve_expr: Option<String>,
    pub over: Option<String>,
    #[serde(default)]
    pub group_by: Vec<String>,
    #[serde(rename = "where", default)]
    pub filter: BTreeMap<String, String>,
    #[serde(rename = "for")]
    pub for_: Option<String>,
    pub keep_firing_for: Option<String>,
    pub min_conversions: Option<u64>,
    pub min_sessions: Option<u64>,
    pub severity: Option<String>,
    #[serde(default)]
    pub notify: Vec<String>,
    /// Absence: the KPI that must not stop (default `conversions`).
    pub metric: Option<String>,
    /// Absence: only for groups whose same hour of the week usually has at least this
    /// many (over the window), over the last `usual_weeks` weeks.
    pub usually_at_least: Option<f64>,
    pub usual_weeks: Option<u64>,
    pub group_wait: Option<String>,
    pub group_interval: Option<String>,
    pub repeat_interval: Option<String>,
    /// Anomaly: `1h` (hourly series, weekly season by hour) or `1d` (daily).
    pub granularity: Option<String>,
    /// Anomaly: the band's half-width in robust deviations (1–20; smaller finds more).
    pub sensitivity: Option<f64>,
    /// Anomaly: history a series needs before it is judged, a span (`14d`).
    pub min_history: Option<String>,
    /// Anomaly: `up`, `down` or `both`.
    pub direction: Option<String>,
}

/// What a rule watches.
#[derive(Clone, Debug, PartialEq)]
pub enum RuleKind {
    /// Fires while `fire` holds over the window; resolves when `resolve` holds (or, with
    /// none, when `fire` no longer does).
    Threshold {
        fire: Cond,
        fire_text: String,
        resolve: Option<(Cond, String)>,
    },
    /// Fires when `metric` is zero over the window for a group whose same window a week
    /// earlier (median of `usual_weeks` weeks) had at least `usually_at_least`.
    Absence {
        metric: Metric,
        usually_at_least: f64,
        usual_weeks: u32,
    },
    /// Fires for a closed hour (or day) whose `metric` lies outside the band the seasonal
    /// model expects for it (`watch::anomaly`).
    Anomaly {
        metric: Metric,
        config: super::anomaly::AnomalyConfig,
    },
}

/// Alertmanager's notification timing, per rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long a new group waits for more alerts before its first message.
    pub group_wait_ms: i64,
    /// How long between messages about changes to a group already notified.
    pub group_interval_ms: i64,
    /// How long before a still-firing group is notified again.
    pub repeat_interval_ms: i64,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            group_wait_ms: 30_000,
            group_interval_ms: 5 * 60_000,
            repeat_interval_ms: 4 * 3_600_000,
        }
    }
}

/// A checked rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    pub name: String,
    pub kind: RuleKind,
    pub group_by: Vec<Dimension>,
    pub filter: Vec<(Dimension, String)>,
    pub over_ms: i64,
    pub for_ms: i64,
    pub keep_firing_for_ms: i64,
    pub min_conversions: i64,
    pub min_sessions: i64,
    pub severity: Severity,
    pub notify: Vec<String>,
    pub timing: Timing,
}

impl Rule {
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            RuleKind::Threshold { .. } => "threshold",
            RuleKind::Absence { .. } => "absence",
            RuleKind::Anomaly { .. } => "anomaly",
        }
    }

    /// The condition as written, for notifications and `/v1/rules`.
    pub fn condition_text(&self) -> String {
        match &self.kind {
            RuleKind::Threshold { fire_text, .. } => fire_text.clone(),
            RuleKind::Absence {
                metric,
                usually_at_least,
                ..
            } => format!("{} == 0 (usually ≥ {usually_at_least})", metric.name()),
            RuleKind::Anomaly { metric, config } => format!(
                "{} outside its expected {} band ({} deviations)",
                metric.name(),
                match config.granularity {
                    super::anomaly::Granularity::Hourly => "hourly",
                    super::anomaly::Granularity::Daily => "daily",
                },
                config.deviations_in_force()
            ),
        }
    }

    /// Whether the rule reads only system metrics (evaluated without traffic groups).
    pub fn is_system(&self) -> bool {
        match &self.kind {
            RuleKind::Threshold { fire, .. } => fire.metrics().iter().all(|m| m.is_system()),
            RuleKind::Absence { .. } | RuleKind::Anomaly { .. } => false,
        }
    }
}

/// Why a rule set is refused: the rule, the key, what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("rule {rule:?}: {key}: {message}")]
pub struct RuleError {
    pub rule: String,
    pub key: String,
    pub message: String,
}

/// `90s`, `10m`, `2h`, `1d` → milliseconds; `0s` allowed where `zero_ok`.
pub fn parse_span(text: &str) -> Option<i64> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let unit_ms: i64 = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    number.parse::<i64>().ok()?.checked_mul(unit_ms)
}

/// Checks raw rules against the known destinations (names).
pub fn check_rules(
    raw: &[RawRule],
    destinations: &BTreeSet<String>,
    defaults: Timing,
) -> Result<Vec<Rule>, RuleError> {
    if raw.len() > MAX_RULES {
        return Err(RuleError {
            rule: String::new(),
            key: "alerts.rules".into(),
            message: format!("{} rules; at most {MAX_RULES}", raw.len()),
        });
    }
    let mut names = BTreeSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (index, rule) in raw.iter().enumerate() {
        let checked = check_rule(index, rule, destinations, defaults)?;
        if !names.insert(checked.name.clone()) {
            return Err(RuleError {
                rule: checked.name,
                key: "name".into(),
                message: "another rule has this name".into(),
            });
        }
        out.push(checked);
    }
    Ok(out)
}

fn check_rule(
    index: usize,
    raw: &RawRule,
    destinations: &BTreeSet<String>,
    defaults: Timing,
) -> Result<Rule, RuleError> {
    let name = raw.name.clone().unwrap_or_default();
    let label = if name.is_empty() {
        format!("#{}", index + 1)
    } else {
        name.clone()
    };
    let err = |key: &str, message: String| RuleError {
        rule: label.clone(),
        key: key.into(),
        message,
    };
    if name.is_empty() {
        return Err(err("name", "every rule needs a name".into()));
    }
    if name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(err(
            "name",
            format!("at most {MAX_NAME_LEN} bytes, no control characters"),
        ));
    }
    let span = |key: &str, value: Option<&str>, default: i64, zero_ok: bool| {
        let Some(text) = value else {
            return Ok(default);
        };
        match parse_span(text) {
            Some(ms) if ms > MAX_SPAN_MS => Err(err(key, format!("{text:?} is longer than 7d"))),
            Some(0) if !zero_ok => Err(err(key, "must be longer than 0".into())),
            Some(ms) => Ok(ms),
            None => Err(err(
                key,
                format!("{text:?} is not a span: a whole number and s, m, h or d, like \"10m\""),
            )),
        }
    };
    let over_ms = span("over", raw.over.as_deref(), 5 * 60_000, false)?;
    if over_ms % 60_000 != 0 {
        return Err(err("over", "must be whole minutes (1-minute data)".into()));
    }
    let for_ms = span("for", raw.for_.as_deref(), 0, true)?;
    let keep_firing_for_ms = span("keep_firing_for", raw.keep_firing_for.as_deref(), 0, true)?;
    let timing = Timing {
        group_wait_ms: span(
            "group_wait",
            raw.group_wait.as_deref(),
            defaults.group_wait_ms,
            true,
        )?,
        // 0 sends every change at once (Alertmanager wants more than 0; a monitor whose
        // point is seconds may not).
        group_interval_ms: span(
            "group_interval",
            raw.group_interval.as_deref(),
            defaults.group_interval_ms,
            true,
        )?,
        repeat_interval_ms: span(
            "repeat_interval",
            raw.repeat_interval.as_deref(),
            defaults.repeat_interval_ms,
            false,
        )?,
    };
    let mut group_by = Vec::new();
    for dim in &raw.group_by {
        let d = Dimension::from_name(dim).ok_or_else(|| {
            err(
                "group_by",
                format!("{dim:?} is not a dimension; one of channel, campaign, device, region"),
            )
        })?;
        if group_by.contains(&d) {
            return Err(err("group_by", format!("{dim:?} is listed twice")));
        }
        group_by.push(d);
    }
    let mut filter = Vec::new();
    for (dim, value) in &raw.filter {
        let d = Dimension::from_name(dim).ok_or_else(|| {
            err(
                "where",
                format!("{dim:?} is not a dimension; one of channel, campaign, device, region"),
            )
        })?;
        filter.push((d, value.clone()));
    }
    let severity = match raw.severity.as_deref() {
        None | Some("warning") => Severity::Warning,
        Some("info") => Severity::Info,
        Some("critical") => Severity::Critical,
        Some(other) => {
            return Err(err(
                "severity",
                format!("{other:?}; one of info, warning, critical"),
            ));
        }
    };
    for destination in &raw.notify {
        if !destinations.contains(destination) {
            return Err(err(
                "notify",
                format!("no destination is named {destination:?} in [[alerts.destinations]]"),
            ));
        }
    }
    let bounded = |key: &str, value: Option<u64>| -> Result<i64, RuleError> {
        let v = value.unwrap_or(0);
        i64::try_from(v)
            .ok()
            .filter(|v| *v <= 1_000_000_000)
            .ok_or_else(|| err(key, format!("{v} is over 1000000000")))
    };
    let min_conversions = bounded("min_conversions", raw.min_conversions)?;
    let min_sessions = bounded("min_sessions", raw.min_sessions)?;
    let spend_dims = group_by
        .iter()
        .chain(filter.iter().map(|(d, _)| d))
        .any(|d| matches!(d, Dimension::Device | Dimension::Region));

    let kind = match raw.kind.as_deref().unwrap_or("threshold") {
        "threshold" => {
            let text = raw
                .expr
                .as_deref()
                .ok_or_else(|| err("expr", "a threshold rule needs a condition".into()))?;
            let fire = expr::parse(text).map_err(|e| err("expr", e.to_string()))?;
            let resolve = match raw.resolve_expr.as_deref() {
                None => None,
                Some(text) => Some((
                    expr::parse(text).map_err(|e| err("resolve_expr", e.to_string()))?,
                    text.to_string(),
                )),
            };
            let metrics: Vec<Metric> = fire
                .metrics()
                .into_iter()
                .chain(resolve.iter().flat_map(|(c, _)| c.metrics()))
                .collect();
            if spend_dims && metrics.iter().any(|m| m.uses_spend()) {
                return Err(err(
                    "group_by",
                    "spend and cpa are known by channel and campaign only: this rule groups or \
                     filters by device or region"
                        .into(),
                ));
            }
            let system = metrics.iter().filter(|m| m.is_system()).count();
            if system > 0 && (system != metrics.len() || !group_by.is_empty() || !filter.is_empty())
            {
                return Err(err(
                    "expr",
                    "lag_events and e2e_latency describe the whole system: use them alone, \
                     without group_by or where"
                        .into(),
                ));
            }
            RuleKind::Threshold {
                fire,
                fire_text: text.to_string(),
                resolve,
            }
        }
        "absence" => {
            let metric_name = raw.metric.as_deref().unwrap_or("conversions");
            let metric = Metric::from_name(metric_name)
                .filter(|m| !m.is_system() && m.unit() == super::notification::Unit::Count)
                .ok_or_else(|| err("metric", format!("{metric_name:?} is not a count KPI")))?;
            let usually_at_least = raw.usually_at_least.unwrap_or(1.0);
            if !(usually_at_least.is_finite() && (0.0..=1e9).contains(&usually_at_least)) {
                return Err(err(
                    "usually_at_least",
                    "must be a number from 0 to 1000000000".into(),
                ));
            }
            let usual_weeks = raw.usual_weeks.unwrap_or(4);
            if !(1..=12).contains(&usual_weeks) {
                return Err(err("usual_weeks", "must be from 1 to 12".into()));
            }
            if raw.expr.is_some() {
                return Err(err("expr", "an absence rule has no condition".into()));
            }
            RuleKind::Absence {
                metric,
                usually_at_least,
                usual_weeks: usual_weeks as u32,
            }
        }
        "anomaly" => {
            use super::anomaly::{AnomalyConfig, AnomalyModel, Direction, Granularity, SeriesKind};
            let metric_name = raw.metric.as_deref().unwrap_or("conversions");
            let metric = Metric::from_name(metric_name)
                .filter(|m| !m.is_system())
                .ok_or_else(|| err("metric", format!("{metric_name:?} is not a traffic KPI")))?;
            if spend_dims && metric.uses_spend() {
                return Err(err(
                    "group_by",
                    "spend and cpa are known by channel and campaign only".into(),
                ));
            }
            let granularity = match raw.granularity.as_deref().unwrap_or("1h") {
                "1h" => Granularity::Hourly,
                "1d" => Granularity::Daily,
                other => return Err(err("granularity", format!("{other:?}; one of 1h, 1d"))),
            };
            let period_ms = match granularity {
                Granularity::Hourly => 3_600_000,
                Granularity::Daily => 86_400_000,
            };
            let min_history = match raw.min_history.as_deref() {
                None => None,
                Some(text) => {
                    let ms = parse_span(text).ok_or_else(|| {
                        err(
                            "min_history",
                            format!("{text:?} is not a span, like \"14d\""),
                        )
                    })?;
                    Some(u32::try_from(ms / period_ms).unwrap_or(u32::MAX))
                }
            };
            let direction = match raw.direction.as_deref().unwrap_or("both") {
                "up" => Direction::Up,
                "down" => Direction::Down,
                "both" => Direction::Both,
                other => {
                    return Err(err(
                        "direction",
                        format!("{other:?}; one of up, down, both"),
                    ));
                }
            };
            let config = AnomalyConfig {
                deviations: raw.sensitivity,
                min_history,
                direction,
                granularity,
                kind: if metric.unit() == super::notification::Unit::Count {
                    SeriesKind::Count
                } else {
                    SeriesKind::Ratio
                },
            };
            AnomalyModel::new(config, jiff::tz::TimeZone::UTC).map_err(|e| {
                let key = match e.field {
                    "deviations" => "sensitivity",
                    other => other,
                };
                err(key, e.reason)
            })?;
            if raw.expr.is_some() {
                return Err(err("expr", "an anomaly rule has no condition".into()));
            }
            RuleKind::Anomaly { metric, config }
        }
        other => {
            return Err(err(
                "kind",
                format!("{other:?}; one of threshold, absence, anomaly"),
            ));
        }
    };
    // An anomaly rule judges whole periods.
    let over_ms = match &kind {
        RuleKind::Anomaly { config, .. } => match config.granularity {
            super::anomaly::Granularity::Hourly => 3_600_000,
            super::anomaly::Granularity::Daily => 86_400_000,
        },
        _ => over_ms,
    };
    Ok(Rule {
        name,
        kind,
        group_by,
        filter,
        over_ms,
        for_ms,
        keep_firing_for_ms,
        min_conversions,
        min_sessions,
        severity,
        notify: raw.notify.clone(),
        timing,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn destinations() -> BTreeSet<String> {
        ["slack-marketing", "mail-team"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn cpa_high() -> RawRule {
        RawRule {
            name: Some("cpa_high".into()),
            expr: Some("cpa > 20".into()),
            over: Some("10m".into()),
            group_by: vec!["channel".into(), "campaign".into()],
            for_: Some("2m".into()),
            min_conversions: Some(3),
            severity: Some("warning".into()),
            notify: vec!["slack-marketing".into(), "mail-team".into()],
            ..RawRule::default()
        }
    }

    #[test]
    fn the_issue_rule_checks() {
        let rules = check_rules(&[cpa_high()], &destinations(), Timing::default()).unwrap();
        let r = &rules[0];
        assert_eq!(
            (r.over_ms, r.for_ms, r.min_conversions),
            (600_000, 120_000, 3)
        );
        assert_eq!(r.group_by, vec![Dimension::Channel, Dimension::Campaign]);
        assert_eq!(r.condition_text(), "cpa > 20");
    }

    #[test]
    fn errors_name_the_rule_and_the_key() {
        let check = |edit: &dyn Fn(&mut RawRule)| {
            let mut r = cpa_high();
            edit(&mut r);
            check_rules(&[r], &destinations(), Timing::default())
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            check(&|r| r.for_ = Some("2x".into())),
            "rule \"cpa_high\": for: \"2x\" is not a span: a whole number and s, m, h or d, like \"10m\""
        );
        assert!(
            check(&|r| r.expr = Some("cpaa > 20".into()))
                .starts_with("rule \"cpa_high\": expr: unknown KPI")
        );
        assert!(check(&|r| r.notify = vec!["slack".into()]).contains("notify: no destination"));
        assert!(check(&|r| r.group_by = vec!["device".into()]).contains("spend and cpa"));
        assert!(check(&|r| r.over = Some("90s".into())).contains("whole minutes"));
        assert!(check(&|r| r.over = Some("8d".into())).contains("longer than 7d"));
        assert!(check(&|r| r.severity = Some("loud".into())).contains("severity"));
        assert!(check(&|r| r.expr = Some("lag_events > 10".into())).contains("whole system"));
        assert!(check(&|r| r.name = None).contains("needs a name"));
        let twice = check_rules(
            &[cpa_high(), cpa_high()],
            &destinations(),
            Timing::default(),
        );
        assert!(twice.unwrap_err().to_string().contains("another rule"));
    }

    #[test]
    fn system_and_absence_rules_check() {
        let lag = RawRule {
            name: Some("intake_lag".into()),
            expr: Some("lag_events > 10000".into()),
            ..RawRule::default()
        };
        let quiet = RawRule {
            name: Some("conversions_stopped".into()),
            kind: Some("absence".into()),
            over: Some("30m".into()),
            usually_at_least: Some(5.0),
            group_by: vec!["channel".into()],
            ..RawRule::default()
        };
        let rules = check_rules(&[lag, quiet], &destinations(), Timing::default()).unwrap();
        assert!(rules[0].is_system());
        assert_eq!(rules[1].kind_name(), "absence");
    }
}
