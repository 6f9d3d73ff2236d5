//! Evaluating rules minute by minute, in event time, and the alert lifecycle.
//!
//! The adapter calls [`Evaluator::evaluate_minute`] once for each minute whose end the
//! watermark has passed (`W ≥ end`), in order, with the 1-minute KPI rows of the window the
//! rules need. Nothing waits for the allowed lateness: a minute is judged on what is known
//! when the watermark passes it, and a later correction to it never re-fires a resolved
//! alert (the next minutes' windows see the corrected data, as they should).
//!
//! Per (rule, group), the lifecycle is Prometheus' and Alertmanager's:
//!
//! ```text
//!             condition holds                     held for `for`
//!  inactive ───────────────────► pending ─────────────────────────► firing
//!     ▲                            │ condition fails                  │ recovered (resolve_expr, or
//!     └────────────────────────────┘                                  │ the condition failing, or no
//!     ▲                                                               │ data) for `keep_firing_for`
//!     └──────────────────────────────── resolved ◄────────────────────┘
//! ```
//!
//! A group with no rows in the window, or below the volume guards (`min_conversions`,
//! `min_sessions`), is not judged: its condition does not hold (an empty window is not a
//! zero), and a firing alert for it counts as recovered, so nothing stays stuck firing on
//! data that stopped.

use super::expr::{Metric, Values};
use super::notification::{AlertNotice, AlertStatus, Unit};
use super::rules::{Dimension, Rule, RuleKind};
use crate::pipeline::kpi::{KpiCounters, SpendCounters};
pub use crate::pipeline::windows::Granularity as WindowGranularity;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

const MINUTE: i64 = 60_000;

/// One 1-minute KPI row.
#[derive(Clone, Debug, PartialEq)]
pub struct MinuteRow {
    pub window_start: i64,
    /// Channel, campaign, device, region.
    pub dims: [String; 4],
    pub counters: KpiCounters,
}

/// One 1-minute spend row.
#[derive(Clone, Debug, PartialEq)]
pub struct SpendMinute {
    pub window_start: i64,
    pub channel: String,
    pub campaign: String,
    pub spend: SpendCounters,
}

/// The 1-minute data of a span of minutes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WindowData {
    pub rows: Vec<MinuteRow>,
    pub spend: Vec<SpendMinute>,
}

/// System-wide values at evaluation time (for `lag_events`, `e2e_latency`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SystemValues {
    pub lag_events: Option<f64>,
    pub e2e_latency_seconds: Option<f64>,
}

/// A group's sums over a window.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GroupTotals {
    pub counters: KpiCounters,
    /// `None`: no spend record (or a grouping spend does not have).
    pub spend: Option<SpendCounters>,
    pub system: SystemValues,
}

impl Values for GroupTotals {
    fn value(&self, metric: Metric) -> Option<f64> {
        let c = &self.counters;
        let money = |micros: i128| micros as f64 / 1e6;
        let ratio = |a: f64, b: i64| (b != 0).then(|| a / b as f64);
        let spend = self
            .spend
            .filter(|s| s.records > 0)
            .map(|s| money(s.micros));
        Some(match metric {
            Metric::Events => c.total_events() as f64,
            Metric::EventType(i) => *c.events.get(i)? as f64,
            Metric::Sessions => c.sessions as f64,
            Metric::ConvertingSessions => c.converting_sessions as f64,
            Metric::Conversions => c.conversions as f64,
            Metric::Revenue => money(c.revenue_micros),
            Metric::Spend => spend?,
            Metric::Cpa => ratio(spend?, c.conversions)?,
            Metric::Aov => ratio(money(c.revenue_micros), c.conversions)?,
            Metric::ConversionRate => ratio(c.converting_sessions as f64, c.sessions)?,
            Metric::Flagged => c.flagged as f64,
            Metric::Duplicates => c.duplicates as f64,
            Metric::Late => c.late as f64,
            Metric::LagEvents => self.system.lag_events?,
            Metric::E2eLatency => self.system.e2e_latency_seconds?,
        })
    }
}

/// Where a rule is in its lifecycle for one group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Pending,
    Firing,
}

/// The state of one (rule, group) that is pending or firing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActiveAlert {
    pub phase: Phase,
    /// Minute end at which the condition started to hold (pending since).
    pub since_ms: i64,
    /// Minute end at which it fired.
    pub fired_ms: Option<i64>,
    /// Minute end since which it has been recovering (firing only).
    pub recovering_since_ms: Option<i64>,
    /// The measured value at the last evaluation.
    pub value: Option<f64>,
    pub last_evaluated_ms: i64,
}

/// A (rule, group): the group is the values of the rule's `group_by`, in order.
pub type AlertKey = (String, Vec<String>);

/// Stored history the evaluator asks for (the adapter reads the KPI store; a backtest the
/// same store; tests give what they need).
pub trait History {
    /// Absence rules: the rule's metric in the same window of the week, as usual (the median
    /// of `weeks` weeks), per group.
    fn usual(&mut self, rule: &Rule, minute_end: i64, weeks: i64) -> HashMap<Vec<String>, f64>;

    /// Anomaly rules: the stored rows of an hourly or daily granularity whose windows start
    /// in `[from, to)` (rows carry their window start).
    fn periods(&mut self, granularity: WindowGranularity, from: i64, to: i64) -> WindowData;
}

/// No history: absence and anomaly rules never have enough to fire.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHistory;

impl History for NoHistory {
    fn usual(&mut self, _: &Rule, _: i64, _: i64) -> HashMap<Vec<String>, f64> {
        HashMap::new()
    }

    fn periods(&mut self, _: WindowGranularity, _: i64, _: i64) -> WindowData {
        WindowData::default()
    }
}

/// What one evaluated minute changed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MinuteOutcome {
    pub minute_end_ms: i64,
    /// Alerts that fired or resolved, as notices.
    pub notices: Vec<AlertNotice>,
    /// Keys that became pending (for history).
    pub pending: Vec<AlertKey>,
    /// Rules × groups judged.
    pub evaluations: usize,
}

/// The rules and the state of their alerts. Pure: the adapter persists
/// [`Self::alert_list`].
#[derive(Clone, Debug, Default)]
pub struct Evaluator {
    rules: Vec<Rule>,
    /// Rule name → group → alert: a rule's alerts are found without scanning the others'.
    alerts: BTreeMap<String, BTreeMap<Vec<String>, ActiveAlert>>,
    /// The seasonal models of anomaly rules, learnt from stored history.
    anomalies: super::evaluate_anomaly::AnomalySeries,
}

/// How a rule groups, filters and windows the data: rules that share it share the sums.
type Shape = (Vec<Dimension>, Vec<(Dimension, String)>, i64);

impl Evaluator {
    pub fn new(
        rules: Vec<Rule>,
        alerts: impl IntoIterator<Item = (AlertKey, ActiveAlert)>,
    ) -> Self {
        let mut by_rule: BTreeMap<String, BTreeMap<Vec<String>, ActiveAlert>> = BTreeMap::new();
        for ((rule, group), alert) in alerts {
            by_rule.entry(rule).or_default().insert(group, alert);
        }
        Self {
            rules,
            alerts: by_rule,
            anomalies: super::evaluate_anomaly::AnomalySeries::default(),
        }
    }

    /// Every pending or firing alert, in order.
    pub fn alert_list(&self) -> Vec<(AlertKey, ActiveAlert)> {
        self.alerts
            .iter()
            .flat_map(|(rule, groups)| {
                groups
                    .iter()
                    .map(move |(group, alert)| ((rule.clone(), group.clone()), alert.clone()))
            })
            .collect()
    }

    /// Whether any alert of the rule is firing.
    pub fn is_firing(&self, rule: &str) -> bool {
        self.alerts
            .get(rule)
            .is_some_and(|groups| groups.values().any(|a| a.phase == Phase::Firing))
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Replaces the rules (a reload). Alerts of rules that are gone are dropped, and those
    /// of rules kept go on (a changed threshold judges the next minute).
    pub fn set_rules(&mut self, rules: Vec<Rule>) -> Vec<AlertKey> {
        let names: std::collections::BTreeSet<&str> =
            rules.iter().map(|r| r.name.as_str()).collect();
        let gone_rules: Vec<String> = self
            .alerts
            .keys()
            .filter(|rule| !names.contains(rule.as_str()))
            .cloned()
            .collect();
        let mut gone = Vec::new();
        for rule in gone_rules {
            if let Some(groups) = self.alerts.remove(&rule) {
                gone.extend(groups.into_keys().map(|g| (rule.clone(), g)));
            }
        }
        self.rules = rules;
        gone
    }

    /// The longest window any rule reads.
    pub fn max_window_ms(&self) -> i64 {
        self.rules.iter().map(|r| r.over_ms).max().unwrap_or(MINUTE)
    }

    /// Judges every rule on the minute ending at `minute_end` (the watermark has passed
    /// it). `data` holds the 1-minute rows of at least `[minute_end − max_window, minute_end)`;
    /// `history` gives what absence and anomaly rules need of the past. Rules on system
    /// metrics are not judged here but by [`Self::evaluate_system`].
    pub fn evaluate_minute(
        &mut self,
        minute_end: i64,
        data: &WindowData,
        history: &mut dyn History,
    ) -> MinuteOutcome {
        let mut outcome = MinuteOutcome {
            minute_end_ms: minute_end,
            ..MinuteOutcome::default()
        };
        let mut sums: HashMap<Shape, HashMap<Vec<String>, GroupTotals>> = HashMap::new();
        let rules = std::mem::take(&mut self.rules);
        for rule in &rules {
            if rule.is_system() {
                continue; // judged on the wall clock: see `evaluate_system`
            }
            if let RuleKind::Anomaly { metric, config } = &rule.kind {
                let mut alerts = self.alerts.remove(&rule.name).unwrap_or_default();
                let judged = self
                    .anomalies
                    .judge_period(rule, *metric, config, minute_end, history);
                if let Some(judged) = judged {
                    let mut keys: Vec<&Vec<String>> = judged.keys().collect();
                    let gone: Vec<Vec<String>> = alerts
                        .keys()
                        .filter(|g| !judged.contains_key(*g))
                        .cloned()
                        .collect();
                    keys.sort();
                    for group in keys {
                        outcome.evaluations += 1;
                        step(
                            rule,
                            group,
                            &judged[group],
                            minute_end,
                            &mut alerts,
                            &mut outcome,
                        );
                    }
                    for group in gone {
                        outcome.evaluations += 1;
                        let recovered = Judged {
                            fires: false,
                            recovered: true,
                            value: None,
                            threshold: None,
                            unit: metric.unit(),
                            expected: None,
                            contributor: None,
                        };
                        step(
                            rule,
                            &group,
                            &recovered,
                            minute_end,
                            &mut alerts,
                            &mut outcome,
                        );
                    }
                }
                if !alerts.is_empty() {
                    self.alerts.insert(rule.name.clone(), alerts);
                }
                continue;
            }
            let shape: Shape = (rule.group_by.clone(), rule.filter.clone(), rule.over_ms);
            let groups = sums
                .entry(shape)
                .or_insert_with(|| group_totals(rule, minute_end, data));
            let usual_by_group = match &rule.kind {
                RuleKind::Absence { usual_weeks, .. } => {
                    history.usual(rule, minute_end, i64::from(*usual_weeks))
                }
                RuleKind::Threshold { .. } | RuleKind::Anomaly { .. } => HashMap::new(),
            };
            // Groups with data, and groups with an active alert (to resolve them).
            let mut alerts = self.alerts.remove(&rule.name).unwrap_or_default();
            for (group, totals) in groups.iter() {
                outcome.evaluations += 1;
                let judged = judge(rule, Some(totals), usual_by_group.get(group).copied());
                step(rule, group, &judged, minute_end, &mut alerts, &mut outcome);
            }
            let mut rest: Vec<Vec<String>> = alerts
                .keys()
                .filter(|g| !groups.contains_key(*g))
                .cloned()
                .collect();
            if let RuleKind::Absence { .. } = rule.kind {
                rest.extend(
                    usual_by_group
                        .keys()
                        .filter(|g| !groups.contains_key(*g) && !alerts.contains_key(*g))
                        .cloned(),
                );
            }
            for group in rest {
                outcome.evaluations += 1;
                let judged = judge(rule, None, usual_by_group.get(&group).copied());
                step(rule, &group, &judged, minute_end, &mut alerts, &mut outcome);
            }
            if !alerts.is_empty() {
                self.alerts.insert(rule.name.clone(), alerts);
            }
        }
        self.rules = rules;
        outcome
    }
}

impl Evaluator {
    /// Judges the rules on system metrics (`lag_events`, `e2e_latency`) at a wall-clock
    /// minute: they watch the pipeline itself, and a stalled pipeline stops the watermark
    /// that event-time rules wait for, so these must not wait for it.
    pub fn evaluate_system(&mut self, at_ms: i64, system: SystemValues) -> MinuteOutcome {
        let mut outcome = MinuteOutcome {
            minute_end_ms: at_ms,
            ..MinuteOutcome::default()
        };
        let rules = std::mem::take(&mut self.rules);
        let totals = GroupTotals {
            system,
            ..GroupTotals::default()
        };
        for rule in rules.iter().filter(|r| r.is_system()) {
            let mut alerts = self.alerts.remove(&rule.name).unwrap_or_default();
            outcome.evaluations += 1;
            let judged = judge(rule, Some(&totals), None);
            step(rule, &[], &judged, at_ms, &mut alerts, &mut outcome);
            if !alerts.is_empty() {
                self.alerts.insert(rule.name.clone(), alerts);
            }
        }
        self.rules = rules;
        outcome
    }

    /// Whether any rule watches system metrics.
    pub fn has_system_rules(&self) -> bool {
        self.rules.iter().any(Rule::is_system)
    }
}

/// One (rule, group)'s lifecycle step. `alerts` are the rule's.
fn step(
    rule: &Rule,
    group: &[String],
    judged: &Judged,
    minute_end: i64,
    alerts: &mut BTreeMap<Vec<String>, ActiveAlert>,
    outcome: &mut MinuteOutcome,
) {
    match alerts.get_mut(group) {
        None => {
            if !judged.fires {
                return;
            }
            let mut alert = ActiveAlert {
                phase: Phase::Pending,
                since_ms: minute_end,
                fired_ms: None,
                recovering_since_ms: None,
                value: judged.value,
                last_evaluated_ms: minute_end,
            };
            if rule.for_ms == 0 {
                alert.phase = Phase::Firing;
                alert.fired_ms = Some(minute_end);
                outcome.notices.push(notice(
                    rule,
                    group,
                    &alert,
                    judged,
                    AlertStatus::Firing,
                    minute_end,
                ));
            } else {
                outcome.pending.push((rule.name.clone(), group.to_vec()));
            }
            alerts.insert(group.to_vec(), alert);
        }
        Some(alert) => {
            alert.last_evaluated_ms = minute_end;
            alert.value = judged.value.or(alert.value);
            match alert.phase {
                Phase::Pending if !judged.fires => {
                    alerts.remove(group);
                }
                Phase::Pending => {
                    if minute_end - alert.since_ms >= rule.for_ms {
                        alert.phase = Phase::Firing;
                        alert.fired_ms = Some(minute_end);
                        outcome.notices.push(notice(
                            rule,
                            group,
                            alert,
                            judged,
                            AlertStatus::Firing,
                            minute_end,
                        ));
                    }
                }
                Phase::Firing => {
                    if !judged.recovered {
                        alert.recovering_since_ms = None;
                        return;
                    }
                    let since = *alert.recovering_since_ms.get_or_insert(minute_end);
                    if minute_end - since >= rule.keep_firing_for_ms {
                        outcome.notices.push(notice(
                            rule,
                            group,
                            alert,
                            judged,
                            AlertStatus::Resolved,
                            minute_end,
                        ));
                        alerts.remove(group);
                    }
                }
            }
        }
    }
}

/// A group's verdict for one minute.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Judged {
    /// The firing condition holds (with data, past the volume guards).
    pub fires: bool,
    /// A firing alert may resolve: the recovery condition holds, or there is no data.
    pub recovered: bool,
    pub value: Option<f64>,
    pub threshold: Option<f64>,
    pub unit: Unit,
    /// Anomalies: the expected band, low and high.
    pub expected: Option<(f64, f64)>,
    /// Anomalies: the breakdown that moved most.
    pub contributor: Option<super::notification::Contributor>,
}

fn judge(rule: &Rule, totals: Option<&GroupTotals>, usual: Option<f64>) -> Judged {
    let guarded = totals.filter(|t| {
        t.counters.conversions >= rule.min_conversions && t.counters.sessions >= rule.min_sessions
    });
    match &rule.kind {
        RuleKind::Threshold { fire, resolve, .. } => {
            let (measured, threshold) = fire.headline();
            let unit = fire.unit();
            let Some(t) = guarded else {
                return Judged {
                    fires: false,
                    recovered: true,
                    value: None,
                    threshold,
                    unit,
                    expected: None,
                    contributor: None,
                };
            };
            let fires = fire.holds(t);
            let recovered = match resolve {
                Some((cond, _)) => cond.holds(t) || fire.eval(t).is_none(),
                None => !fires,
            };
            Judged {
                fires,
                recovered,
                value: measured.eval(t),
                threshold,
                unit,
                expected: None,
                contributor: None,
            }
        }
        RuleKind::Absence {
            metric,
            usually_at_least,
            ..
        } => {
            // Absence judges missing data: no rows is a zero here, by definition, but only
            // for a group that usually has enough.
            let now = totals.and_then(|t| t.value(*metric)).unwrap_or(0.0);
            let usual_enough = usual.is_some_and(|u| u >= *usually_at_least);
            Judged {
                fires: usual_enough && now == 0.0,
                recovered: now > 0.0 || !usual_enough,
                value: Some(now),
                threshold: usual,
                unit: Unit::Count,
                expected: None,
                contributor: None,
            }
        }
        // Judged per closed period, not per minute (see `evaluate_minute`).
        RuleKind::Anomaly { metric, .. } => Judged {
            fires: false,
            recovered: true,
            value: None,
            threshold: None,
            unit: metric.unit(),
            expected: None,
            contributor: None,
        },
    }
}

/// What a rule measures for a group's totals: a threshold rule's headline (`cpa` of
/// `cpa > 20`), an absence rule's metric. For revisions: the adapter re-measures a judged
/// minute once late data can no longer change it, and notes a changed value in the history.
pub fn measured_value(rule: &Rule, totals: Option<&GroupTotals>) -> Option<f64> {
    let totals = totals?;
    match &rule.kind {
        RuleKind::Threshold { fire, .. } => fire.headline().0.eval(totals),
        RuleKind::Absence { metric, .. } | RuleKind::Anomaly { metric, .. } => {
            totals.value(*metric)
        }
    }
}

/// Sums the rows of a rule's window by its groups.
pub fn group_totals(
    rule: &Rule,
    minute_end: i64,
    data: &WindowData,
) -> HashMap<Vec<String>, GroupTotals> {
    totals_between(rule, minute_end - rule.over_ms, minute_end, data)
}

/// Sums the rows whose window starts in `[from, to)` by the rule's groups.
pub fn totals_between(
    rule: &Rule,
    from: i64,
    minute_end: i64,
    data: &WindowData,
) -> HashMap<Vec<String>, GroupTotals> {
    let index = |d: Dimension| match d {
        Dimension::Channel => 0,
        Dimension::Campaign => 1,
        Dimension::Device => 2,
        Dimension::Region => 3,
    };
    let mut out: HashMap<Vec<String>, GroupTotals> = HashMap::new();
    for row in &data.rows {
        if row.window_start < from || row.window_start >= minute_end {
            continue;
        }
        if !rule.filter.iter().all(|(d, v)| row.dims[index(*d)] == *v) {
            continue;
        }
        let key: Vec<String> = rule
            .group_by
            .iter()
            .map(|d| row.dims[index(*d)].clone())
            .collect();
        out.entry(key)
            .or_default()
            .counters
            .add_saturating(&row.counters);
    }
    let spend_known = rule
        .group_by
        .iter()
        .chain(rule.filter.iter().map(|(d, _)| d))
        .all(|d| matches!(d, Dimension::Channel | Dimension::Campaign));
    if spend_known {
        for row in &data.spend {
            if row.window_start < from || row.window_start >= minute_end {
                continue;
            }
            let value = |d: Dimension| match d {
                Dimension::Channel => row.channel.as_str(),
                _ => row.campaign.as_str(),
            };
            if !rule.filter.iter().all(|(d, v)| value(*d) == v) {
                continue;
            }
            let key: Vec<String> = rule
                .group_by
                .iter()
                .map(|d| value(*d).to_string())
                .collect();
            // Spend without events in the window is still a group (CPA with no
            // conversions is unknown, and a spend rule sees it).
            let spend = out
                .entry(key)
                .or_default()
                .spend
                .get_or_insert_with(SpendCounters::default);
            spend.add_saturating(row.spend);
        }
    }
    out
}

fn notice(
    rule: &Rule,
    group: &[String],
    alert: &ActiveAlert,
    judged: &Judged,
    status: AlertStatus,
    minute_end: i64,
) -> AlertNotice {
    let labels: Vec<(String, String)> = rule
        .group_by
        .iter()
        .zip(group)
        .map(|(d, v)| (d.name().to_string(), v.clone()))
        .collect();
    let value = judged.value.or(alert.value);
    let measured = match &rule.kind {
        RuleKind::Threshold { fire, .. } => fire.headline().0.to_string(),
        RuleKind::Absence { metric, .. } | RuleKind::Anomaly { metric, .. } => {
            metric.name().to_string()
        }
    };
    let window_start = minute_end - rule.over_ms;
    let scope = if labels.is_empty() {
        "all traffic".to_string()
    } else {
        labels
            .iter()
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let summary = match status {
        AlertStatus::Firing => format!("{}: {} ({scope})", rule.name, rule.condition_text()),
        AlertStatus::Resolved => format!("{} resolved ({scope})", rule.name),
    };
    let mut query: Vec<(String, String)> = labels.clone();
    query.push((
        "from".into(),
        crate::time::EventTime(window_start).to_rfc3339(),
    ));
    query.push(("to".into(), crate::time::EventTime(minute_end).to_rfc3339()));
    AlertNotice {
        rule: rule.name.clone(),
        kind: rule.kind_name().to_string(),
        severity: rule.severity,
        group: labels,
        status,
        summary,
        expr: rule.condition_text(),
        metric: measured,
        unit: judged.unit,
        value,
        threshold: judged.threshold,
        expected: judged.expected,
        contributor: judged.contributor.clone(),
        window_start_ms: window_start,
        window_end_ms: minute_end,
        started_ms: alert.fired_ms.unwrap_or(minute_end),
        resolved_ms: (status == AlertStatus::Resolved).then_some(minute_end),
        drilldown: format!("/?{}", encode_query(&query)),
    }
}

/// `a=b&c=d`, each part percent-encoded: campaign names are client text.
fn encode_query(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", percent(k), percent(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn percent(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::watch::rules::{RawRule, Timing, check_rules};

    const T0: i64 = 1_712_318_400_000;

    fn rule(edit: impl Fn(&mut RawRule)) -> Rule {
        let mut raw = RawRule {
            name: Some("cpa_high".into()),
            expr: Some("cpa > 20".into()),
            over: Some("10m".into()),
            group_by: vec!["channel".into(), "campaign".into()],
            ..RawRule::default()
        };
        edit(&mut raw);
        check_rules(&[raw], &Default::default(), Timing::default())
            .unwrap()
            .remove(0)
    }

    /// A minute with `conversions` on paid_search/brand and `spend` euros of spend.
    fn minute(start: i64, conversions: i64, spend: f64) -> WindowData {
        WindowData {
            rows: vec![MinuteRow {
                window_start: start,
                dims: [
                    "paid_search".into(),
                    "brand".into(),
                    "mobile".into(),
                    "IT-25".into(),
                ],
                counters: KpiCounters {
                    conversions,
                    sessions: 10,
                    ..KpiCounters::default()
                },
            }],
            spend: vec![SpendMinute {
                window_start: start,
                channel: "paid_search".into(),
                campaign: "brand".into(),
                spend: SpendCounters {
                    micros: (spend * 1e6) as i128,
                    records: 1,
                },
            }],
        }
    }

    /// Runs minutes of (conversions, spend) through one rule; returns the statuses sent.
    fn run(rule: Rule, minutes: &[(i64, f64)]) -> Vec<(usize, AlertStatus)> {
        let mut evaluator = Evaluator::new(vec![rule], BTreeMap::new());
        let mut history = WindowData::default();
        let mut out = Vec::new();
        for (i, (conversions, spend)) in minutes.iter().enumerate() {
            let start = T0 + i as i64 * MINUTE;
            let m = minute(start, *conversions, *spend);
            history.rows.extend(m.rows);
            history.spend.extend(m.spend);
            let outcome = evaluator.evaluate_minute(start + MINUTE, &history, &mut NoHistory);
            out.extend(outcome.notices.iter().map(|n| (i, n.status)));
        }
        out
    }

    /// Stored rows are summed as read: two corrupt ones near `i64::MAX` must not panic
    /// (debug) or wrap to a negative total (release), in the rows or the spend.
    #[test]
    fn corrupt_stored_counts_near_the_limit_saturate_instead_of_overflowing() {
        let r = rule(|raw| raw.expr = Some("events > 1".into()));
        let mut data = minute(T0, i64::MAX - 1, 1.0);
        data.rows[0].counters.events[0] = i64::MAX - 1;
        data.rows[0].counters.custom_events = vec![("signup".into(), i64::MAX - 1)];
        data.rows[0].counters.revenue_micros = i128::MAX - 1;
        data.spend[0].spend.records = i64::MAX - 1;
        data.spend[0].spend.micros = i128::MAX - 1;
        data.rows.push(data.rows[0].clone());
        data.spend.push(data.spend[0].clone());
        let totals = group_totals(&r, T0 + MINUTE, &data);
        let t = &totals[&vec!["paid_search".to_string(), "brand".to_string()]];
        assert_eq!(t.counters.conversions, i64::MAX);
        assert_eq!(t.counters.events[0], i64::MAX);
        assert_eq!(t.counters.custom_events, vec![("signup".into(), i64::MAX)]);
        assert_eq!(t.counters.revenue_micros, i128::MAX);
        let spend = t.spend.unwrap();
        assert_eq!((spend.records, spend.micros), (i64::MAX, i128::MAX));
        // Every event type at the limit: their sum stays at the limit too.
        assert_eq!(t.value(Metric::Events), Some(i64::MAX as f64));
    }

    #[test]
    fn system_rules_are_judged_on_the_wall_clock_not_with_traffic() {
        let lag = rule(|r| {
            r.name = Some("intake_lag".into());
            r.expr = Some("lag_events > 1000".into());
            r.group_by = vec![];
        });
        // A traffic rule of the same shape must not see the system's values, nor they its.
        let few = rule(|r| {
            r.name = Some("few".into());
            r.expr = Some("events > 1000".into());
            r.group_by = vec![];
        });
        let mut evaluator = Evaluator::new(vec![lag, few], BTreeMap::new());
        let busy = SystemValues {
            lag_events: Some(5_000.0),
            e2e_latency_seconds: None,
        };
        let minute = evaluator.evaluate_minute(T0 + MINUTE, &minute(T0, 1, 30.0), &mut NoHistory);
        assert!(minute.notices.is_empty(), "{:?}", minute.notices);
        let wall = evaluator.evaluate_system(T0 + 5 * MINUTE, busy);
        assert_eq!(wall.notices.len(), 1);
        assert_eq!(wall.notices[0].rule, "intake_lag");
        assert!(evaluator.is_firing("intake_lag"));
        let calm = evaluator.evaluate_system(
            T0 + 6 * MINUTE,
            SystemValues {
                lag_events: Some(0.0),
                e2e_latency_seconds: None,
            },
        );
        assert_eq!(calm.notices[0].status, AlertStatus::Resolved);
    }

    #[test]
    fn fires_after_for_and_resolves_once() {
        // One-minute window: CPA per minute is spend / conversions.
        let r = rule(|r| {
            r.over = Some("1m".into());
            r.for_ = Some("2m".into());
        });
        let cpa_30 = (1, 30.0);
        let cpa_10 = (1, 10.0);
        let sent = run(r, &[cpa_10, cpa_30, cpa_30, cpa_30, cpa_30, cpa_10, cpa_10]);
        assert_eq!(
            sent,
            vec![(3, AlertStatus::Firing), (5, AlertStatus::Resolved)]
        );
    }

    #[test]
    fn a_pending_alert_that_stops_holding_never_fires() {
        let r = rule(|r| {
            r.over = Some("1m".into());
            r.for_ = Some("2m".into());
        });
        assert!(run(r, &[(1, 30.0), (1, 30.0), (1, 10.0), (1, 30.0)]).is_empty());
    }

    #[test]
    fn a_resolve_expr_and_keep_firing_for_stop_flapping() {
        let r = rule(|r| {
            r.over = Some("1m".into());
            r.resolve_expr = Some("cpa < 17".into());
            r.keep_firing_for = Some("2m".into());
        });
        // 25 fires; 18 is not below 17: still firing; 16 three minutes running resolves
        // after keep_firing_for (recovering at 3, 4; resolved at 5).
        let sent = run(
            r,
            &[
                (1, 25.0),
                (1, 18.0),
                (1, 21.0),
                (1, 16.0),
                (1, 16.0),
                (1, 16.0),
            ],
        );
        assert_eq!(
            sent,
            vec![(0, AlertStatus::Firing), (5, AlertStatus::Resolved)]
        );
    }

    #[test]
    fn the_window_slides_and_the_volume_guard_holds_judgement() {
        // Ten-minute window: CPA over the window. Spend 30 per minute with 1 conversion
        // every minute is CPA 30; min_conversions 3 waits for three minutes of data.
        let r = rule(|r| r.min_conversions = Some(3));
        let sent = run(r, &[(1, 30.0), (1, 30.0), (1, 30.0)]);
        assert_eq!(sent, vec![(2, AlertStatus::Firing)]);
    }

    #[test]
    fn no_data_is_not_a_zero_and_resolves_what_fired() {
        let r = rule(|r| r.over = Some("1m".into()));
        let mut evaluator = Evaluator::new(vec![r], BTreeMap::new());
        let m = minute(T0, 1, 30.0);
        let fired = evaluator.evaluate_minute(T0 + MINUTE, &m, &mut NoHistory);
        assert_eq!(fired.notices.len(), 1);
        // The next minute has no rows at all: the alert resolves instead of staying stuck,
        // and a rule like `conversions < 1` would not fire on it either.
        let empty = WindowData::default();
        let next = evaluator.evaluate_minute(T0 + 2 * MINUTE, &empty, &mut NoHistory);
        assert_eq!(next.notices[0].status, AlertStatus::Resolved);
        let low = rule(|r| {
            r.name = Some("few".into());
            r.expr = Some("conversions < 1".into());
        });
        let mut evaluator = Evaluator::new(vec![low], BTreeMap::new());
        let quiet = evaluator.evaluate_minute(T0 + 2 * MINUTE, &empty, &mut NoHistory);
        assert!(quiet.notices.is_empty());
    }

    #[test]
    fn a_notice_carries_the_numbers_and_a_drilldown_that_cannot_be_forged() {
        let r = rule(|r| r.over = Some("1m".into()));
        let mut evaluator = Evaluator::new(vec![r], BTreeMap::new());
        let mut m = minute(T0, 1, 30.0);
        m.rows[0].dims[1] = "brand&to=0#x".into();
        m.spend[0].campaign = "brand&to=0#x".into();
        let outcome = evaluator.evaluate_minute(T0 + MINUTE, &m, &mut NoHistory);
        let n = &outcome.notices[0];
        assert_eq!(
            (n.value, n.threshold, n.unit),
            (Some(30.0), Some(20.0), Unit::Money)
        );
        assert_eq!(
            n.group,
            vec![
                ("channel".to_string(), "paid_search".to_string()),
                ("campaign".to_string(), "brand&to=0#x".to_string())
            ]
        );
        assert!(
            n.drilldown
                .starts_with("/?channel=paid_search&campaign=brand%26to%3D0%23x&from="),
            "{}",
            n.drilldown
        );
        assert_eq!((n.window_start_ms, n.window_end_ms), (T0, T0 + MINUTE));
    }

    #[test]
    fn absence_fires_only_where_conversions_usually_come() {
        let r = rule(|r| {
            r.name = Some("stopped".into());
            r.kind = Some("absence".into());
            r.expr = None;
            r.over = Some("30m".into());
            r.usually_at_least = Some(5.0);
            r.group_by = vec!["channel".into()];
        });
        let mut evaluator = Evaluator::new(vec![r], BTreeMap::new());
        struct Usual;
        impl History for Usual {
            fn usual(&mut self, _: &Rule, _: i64, _: i64) -> HashMap<Vec<String>, f64> {
                let mut m = HashMap::new();
                m.insert(vec!["paid_search".to_string()], 12.0);
                m.insert(vec!["display".to_string()], 1.0);
                m
            }
            fn periods(&mut self, _: WindowGranularity, _: i64, _: i64) -> WindowData {
                WindowData::default()
            }
        }
        let outcome = evaluator.evaluate_minute(T0, &WindowData::default(), &mut Usual);
        let fired: Vec<_> = outcome
            .notices
            .iter()
            .map(|n| n.group[0].1.clone())
            .collect();
        assert_eq!(fired, vec!["paid_search".to_string()]);
        // Conversions return: resolved.
        let back = evaluator.evaluate_minute(T0 + MINUTE, &minute(T0, 2, 0.0), &mut Usual);
        assert_eq!(back.notices[0].status, AlertStatus::Resolved);
    }
}
