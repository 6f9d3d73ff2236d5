//! Anomaly rules in the evaluator: one seasonal model per rule, one series per group and
//! per breakdown part, learnt from stored hourly (or daily) KPI rows.
//!
//! At the end of each closed period (a local hour, or day), the rule's groups are checked
//! against the band their series expects, then the period is learnt. A series starts from
//! history: the first time a rule is judged (at start, after a reload that changed it),
//! the last five weeks of hours (or days) are read and learnt, so a restart does not wait
//! weeks to judge again. Missed periods (the server was down) are learnt from history
//! before the next check. Nothing here is persisted: it is all derived from stored KPIs.
//!
//! Every anomaly names the breakdown value (channel, campaign, device or region, among the
//! dimensions the rule does not group by) whose own deviation from its own expectation
//! carries most of the group's ([`anomaly::top_sum_contributor`],
//! [`anomaly::top_ratio_contributor`]).

use super::anomaly::{
    self, AnomalyConfig, AnomalyModel, Granularity, RatioPart, SeriesState, SumPart,
};
use super::evaluate::{
    GroupTotals, History, Judged, WindowData, WindowGranularity, totals_between,
};
use super::expr::{Metric, Values};
use super::rules::{Dimension, Rule};
use crate::pipeline::windows::WindowCalendar;
use std::collections::HashMap;

/// Periods learnt from history when a series starts: five weeks of hours, or of days.
const WARM_PERIODS: i64 = 5 * 7;

/// The anomaly state of every anomaly rule.
#[derive(Debug)]
pub struct AnomalySeries {
    calendar: WindowCalendar,
    rules: HashMap<String, RuleSeries>,
}

impl Default for AnomalySeries {
    fn default() -> Self {
        let zone = jiff::tz::TimeZone::get("Europe/Rome").unwrap_or(jiff::tz::TimeZone::UTC);
        Self {
            calendar: WindowCalendar::new(zone),
            rules: HashMap::new(),
        }
    }
}

impl Clone for AnomalySeries {
    fn clone(&self) -> Self {
        // Derived state: a clone relearns from history.
        Self::default()
    }
}

#[derive(Debug)]
struct RuleSeries {
    config: AnomalyConfig,
    model: AnomalyModel,
    /// Periods before this are learnt.
    learnt_until: i64,
    groups: HashMap<Vec<String>, SeriesState>,
    parts: HashMap<(Vec<String>, Dimension, String), SeriesState>,
}

type Parts = HashMap<(Vec<String>, Dimension, String), GroupTotals>;

fn window_granularity(g: Granularity) -> WindowGranularity {
    match g {
        Granularity::Hourly => WindowGranularity::Hour,
        Granularity::Daily => WindowGranularity::Day,
    }
}

/// The value a series learns for a group's totals: a count with no rows is zero; a ratio
/// without its denominator is unknown.
fn observed(metric: Metric, totals: Option<&GroupTotals>) -> Option<f64> {
    match totals {
        Some(t) => t.value(metric),
        None if metric.unit() == super::notification::Unit::Count => Some(0.0),
        None => None,
    }
}

/// Whether a metric adds up over parts.
fn additive(metric: Metric) -> bool {
    !matches!(metric, Metric::Cpa | Metric::Aov | Metric::ConversionRate)
}

/// A ratio metric's numerator and denominator.
fn ratio_terms(metric: Metric, t: &GroupTotals) -> Option<(f64, f64)> {
    let c = &t.counters;
    match metric {
        Metric::Cpa => Some((t.value(Metric::Spend)?, c.conversions as f64)),
        Metric::Aov => Some((c.revenue_micros as f64 / 1e6, c.conversions as f64)),
        Metric::ConversionRate => Some((c.converting_sessions as f64, c.sessions as f64)),
        _ => None,
    }
}

/// Totals by the rule's groups and by (group, other dimension, value) parts.
fn period_totals(
    rule: &Rule,
    from: i64,
    to: i64,
    data: &WindowData,
) -> (HashMap<Vec<String>, GroupTotals>, Parts) {
    let groups = totals_between(rule, from, to, data);
    let mut parts: Parts = HashMap::new();
    let others: Vec<Dimension> = Dimension::ALL
        .into_iter()
        .filter(|d| !rule.group_by.contains(d) && !rule.filter.iter().any(|(f, _)| f == d))
        .collect();
    let index = |d: Dimension| match d {
        Dimension::Channel => 0,
        Dimension::Campaign => 1,
        Dimension::Device => 2,
        Dimension::Region => 3,
    };
    for row in &data.rows {
        if row.window_start < from || row.window_start >= to {
            continue;
        }
        if !rule.filter.iter().all(|(d, v)| row.dims[index(*d)] == *v) {
            continue;
        }
        let group: Vec<String> = rule
            .group_by
            .iter()
            .map(|d| row.dims[index(*d)].clone())
            .collect();
        for &d in &others {
            parts
                .entry((group.clone(), d, row.dims[index(d)].clone()))
                .or_default()
                .counters
                .add_saturating(&row.counters);
        }
    }
    if rule
        .group_by
        .iter()
        .all(|d| matches!(d, Dimension::Channel | Dimension::Campaign))
    {
        for row in &data.spend {
            if row.window_start < from || row.window_start >= to {
                continue;
            }
            let value = |d: Dimension| match d {
                Dimension::Channel => row.channel.clone(),
                _ => row.campaign.clone(),
            };
            if !rule.filter.iter().all(|(d, v)| value(*d) == *v) {
                continue;
            }
            let group: Vec<String> = rule.group_by.iter().map(|d| value(*d)).collect();
            for &d in others
                .iter()
                .filter(|d| matches!(d, Dimension::Channel | Dimension::Campaign))
            {
                let spend = parts
                    .entry((group.clone(), d, value(d)))
                    .or_default()
                    .spend
                    .get_or_insert_with(Default::default);
                spend.add_saturating(row.spend);
            }
        }
    }
    (groups, parts)
}

impl RuleSeries {
    /// Learns one closed period (after it was checked, if it was).
    fn learn(
        &mut self,
        metric: Metric,
        start: i64,
        groups: &HashMap<Vec<String>, GroupTotals>,
        parts: &Parts,
    ) {
        for group in groups.keys() {
            if !self.groups.contains_key(group) {
                self.groups.insert(group.clone(), self.model.new_series());
            }
        }
        for key in parts.keys() {
            if !self.parts.contains_key(key) {
                self.parts.insert(key.clone(), self.model.new_series());
            }
        }
        // A period is never learnt twice; a refused update (out of order) teaches nothing.
        for (group, state) in &mut self.groups {
            let _ = self
                .model
                .update(state, start, observed(metric, groups.get(group)));
        }
        for (key, state) in &mut self.parts {
            let _ = self
                .model
                .update(state, start, observed(metric, parts.get(key)));
        }
    }
}

impl AnomalySeries {
    /// At a period end: each group's verdict for the period that just closed. `None` when
    /// `minute_end` closes no period of the rule's granularity.
    pub(crate) fn judge_period(
        &mut self,
        rule: &Rule,
        metric: Metric,
        config: &AnomalyConfig,
        minute_end: i64,
        history: &mut dyn History,
    ) -> Option<HashMap<Vec<String>, Judged>> {
        let granularity = window_granularity(config.granularity);
        let period = self.calendar.window(granularity, minute_end - 1);
        if period.end != minute_end {
            return None;
        }
        let start = period.start;
        let stale = self
            .rules
            .get(&rule.name)
            .is_none_or(|series| series.config != *config);
        if stale {
            let model = AnomalyModel::new(
                *config,
                jiff::tz::TimeZone::get("Europe/Rome").unwrap_or(jiff::tz::TimeZone::UTC),
            )
            .ok()?;
            let warm_from = {
                let mut t = start;
                for _ in 0..WARM_PERIODS
                    * if granularity == WindowGranularity::Hour {
                        24
                    } else {
                        1
                    }
                {
                    t = self.calendar.window(granularity, t - 1).start;
                }
                t
            };
            self.rules.insert(
                rule.name.clone(),
                RuleSeries {
                    config: *config,
                    model,
                    learnt_until: warm_from,
                    groups: HashMap::new(),
                    parts: HashMap::new(),
                },
            );
        }
        // Learn what is missing before this period, from history, in order.
        let learnt_until = self.rules.get(&rule.name)?.learnt_until;
        if learnt_until < start {
            let data = history.periods(granularity, learnt_until, start);
            let mut t = learnt_until;
            while t < start {
                let next = self.calendar.window(granularity, t).end;
                let (groups, parts) = period_totals(rule, t, next, &data);
                let series = self.rules.get_mut(&rule.name)?;
                series.learn(metric, t, &groups, &parts);
                t = next;
            }
        }
        let data = history.periods(granularity, start, minute_end);
        let (groups, parts) = period_totals(rule, start, minute_end, &data);
        let series = self.rules.get_mut(&rule.name)?;
        let mut verdicts = HashMap::new();
        let mut keys: Vec<Vec<String>> = series.groups.keys().cloned().collect();
        keys.extend(
            groups
                .keys()
                .filter(|g| !series.groups.contains_key(*g))
                .cloned(),
        );
        for group in keys {
            let totals = groups.get(&group);
            let value = observed(metric, totals);
            let guarded = totals.is_some_and(|t| {
                t.counters.conversions >= rule.min_conversions
                    && t.counters.sessions >= rule.min_sessions
            });
            let anomaly = match (series.groups.get(&group), guarded) {
                (Some(state), true) => series.model.check(state, start, value).ok().flatten(),
                _ => None,
            };
            let contributor = anomaly.as_ref().and_then(|a| {
                // A dimension with one value in the group explains nothing: it is the
                // whole group again.
                let mut values_per_dim: HashMap<Dimension, usize> = HashMap::new();
                for (_, dim, _) in parts.keys().filter(|(g, _, _)| *g == group) {
                    *values_per_dim.entry(*dim).or_default() += 1;
                }
                let mut sum_parts = Vec::new();
                let mut ratio_parts = Vec::new();
                for ((_, dim, v), part) in parts
                    .iter()
                    .filter(|((g, d, _), _)| *g == group && values_per_dim.get(d) > Some(&1))
                {
                    let expected = series
                        .parts
                        .get(&(group.clone(), *dim, v.clone()))
                        .and_then(|s| series.model.expected(s, start).ok().flatten())
                        .map(|band| band.expected);
                    let Some(expected) = expected else { continue };
                    if additive(metric) {
                        if let Some(observed) = observed(metric, Some(part)) {
                            sum_parts.push((dim.name(), v.as_str(), observed, expected));
                        }
                    } else if let Some((numerator, denominator)) = ratio_terms(metric, part) {
                        ratio_parts.push((
                            dim.name(),
                            v.as_str(),
                            numerator,
                            denominator,
                            expected,
                        ));
                    }
                }
                if additive(metric) {
                    let parts: Vec<SumPart<'_>> = sum_parts
                        .iter()
                        .map(|(dimension, value, observed, expected)| SumPart {
                            dimension,
                            value,
                            observed: *observed,
                            expected: *expected,
                        })
                        .collect();
                    anomaly::top_sum_contributor(a.observed, a.expected, &parts)
                } else {
                    let denominator = totals
                        .and_then(|t| ratio_terms(metric, t))
                        .map_or(0.0, |(_, d)| d);
                    let parts: Vec<RatioPart<'_>> = ratio_parts
                        .iter()
                        .map(
                            |(dimension, value, numerator, denominator, expected)| RatioPart {
                                dimension,
                                value,
                                numerator: *numerator,
                                denominator: *denominator,
                                expected_ratio: *expected,
                            },
                        )
                        .collect();
                    anomaly::top_ratio_contributor(a.observed, a.expected, denominator, &parts)
                }
            });
            verdicts.insert(
                group,
                Judged {
                    fires: anomaly.is_some(),
                    recovered: anomaly.is_none(),
                    value,
                    threshold: None,
                    unit: metric.unit(),
                    expected: anomaly.as_ref().map(|a| (a.low, a.high)),
                    contributor,
                },
            );
        }
        series.learn(metric, start, &groups, &parts);
        series.learnt_until = minute_end;
        Some(verdicts)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::pipeline::kpi::KpiCounters;
    use crate::watch::evaluate::{Evaluator, MinuteRow};
    use crate::watch::notification::AlertStatus;
    use crate::watch::rules::{RawRule, Timing, check_rules};

    const HOUR: i64 = 3_600_000;
    /// A Monday 00:00 in Rome (2024-04-08T00:00+02:00).
    const MONDAY: i64 = 1_712_527_200_000;

    /// Hourly conversions with a daily rhythm, per channel; `spike` adds to social at one hour.
    struct Hours {
        spike_at: i64,
        spike: i64,
    }

    impl Hours {
        fn conversions(&self, start: i64, channel: usize) -> i64 {
            let hour = (start - MONDAY).rem_euclid(24 * HOUR) / HOUR;
            let base = if (9..22).contains(&hour) { 40 } else { 8 };
            // Deterministic wiggle, not noise-free (the model needs a scale).
            let wiggle = (start / HOUR * 7 + channel as i64 * 3) % 5;
            let extra = if start == self.spike_at && channel == 1 {
                self.spike
            } else {
                0
            };
            base + wiggle + extra
        }
    }

    impl History for Hours {
        fn usual(&mut self, _: &Rule, _: i64, _: i64) -> HashMap<Vec<String>, f64> {
            HashMap::new()
        }

        fn periods(&mut self, granularity: WindowGranularity, from: i64, to: i64) -> WindowData {
            assert_eq!(granularity, WindowGranularity::Hour);
            let mut data = WindowData::default();
            let mut t = from;
            while t < to {
                for (i, channel) in ["email", "social"].iter().enumerate() {
                    data.rows.push(MinuteRow {
                        window_start: t,
                        dims: [
                            channel.to_string(),
                            "(none)".into(),
                            "mobile".into(),
                            "IT-25".into(),
                        ],
                        counters: KpiCounters {
                            conversions: self.conversions(t, i),
                            sessions: 200,
                            ..KpiCounters::default()
                        },
                    });
                }
                t += HOUR;
            }
            data
        }
    }

    #[test]
    fn a_spike_in_one_channel_fires_the_whole_and_names_the_channel_then_resolves() {
        let rule = check_rules(
            &[RawRule {
                name: Some("conversions_anomaly".into()),
                kind: Some("anomaly".into()),
                metric: Some("conversions".into()),
                granularity: Some("1h".into()),
                ..RawRule::default()
            }],
            &Default::default(),
            Timing::default(),
        )
        .unwrap();
        let mut evaluator = Evaluator::new(rule, std::collections::BTreeMap::new());
        // Five weeks and a bit of history; the spike is at 15:00 on the last day.
        let spike_at = MONDAY + 35 * 24 * HOUR + 15 * HOUR;
        let mut history = Hours {
            spike_at,
            spike: 150,
        };
        let empty = WindowData::default();
        let mut fired = Vec::new();
        for hour_end in [spike_at - HOUR + HOUR, spike_at + HOUR, spike_at + 2 * HOUR] {
            // A minute that closes no hour judges nothing.
            let quiet = evaluator.evaluate_minute(hour_end - 60_000, &empty, &mut history);
            assert_eq!(quiet.evaluations, 0);
            let outcome = evaluator.evaluate_minute(hour_end, &empty, &mut history);
            fired.extend(outcome.notices);
        }
        assert_eq!(fired.len(), 2, "{fired:#?}");
        let (up, down) = (&fired[0], &fired[1]);
        assert_eq!(up.status, AlertStatus::Firing);
        assert_eq!(up.window_end_ms, spike_at + HOUR);
        let (low, high) = up.expected.unwrap();
        assert!(up.value.unwrap() > high && low < high, "{up:?}");
        let who = up.contributor.as_ref().unwrap();
        assert_eq!(
            (who.dimension.as_str(), who.value.as_str()),
            ("channel", "social")
        );
        assert!(who.share > 0.9, "{who:?}");
        assert_eq!(down.status, AlertStatus::Resolved);
    }
}
