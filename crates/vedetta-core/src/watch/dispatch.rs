//! From alert notices to notifications: grouping as Alertmanager does it, silences and
//! inhibition.
//!
//! Notices of one rule to one destination form a *group*. A new group waits `group_wait`
//! for more notices before its first message (alerts that fire together arrive together);
//! a group already notified sends changes at most every `group_interval`; a group still
//! firing is repeated every `repeat_interval`. These are wall-clock timers, unlike rule
//! evaluation: they pace people's inboxes, not the data. Times are handed in, so the
//! dispatcher is pure and its state ([`Dispatcher`]) is stored beside the alert state, in
//! the same commit as the notifications it produces.
//!
//! A silenced notice (a [`Silence`] matches its labels) or an inhibited one (an alert of an
//! inhibiting rule is firing, e.g. intake lag mutes KPI alerts) is not sent; it is still in
//! the alert's history.

use super::notification::{AlertNotice, AlertStatus, Notification};
use super::rules::Rule;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// One group's pending notices and timers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DispatchGroup {
    /// Notices not yet sent, in order.
    pub pending: Vec<AlertNotice>,
    /// When the oldest pending notice arrived (wall clock, ms).
    pub first_pending_ms: Option<i64>,
    /// When the group last produced a notification.
    pub last_sent_ms: Option<i64>,
    /// The group's firing alerts, by group labels, for repeats.
    #[serde(with = "pairs")]
    pub firing: BTreeMap<Vec<(String, String)>, AlertNotice>,
    /// Notifications produced so far: part of each one's idempotency key.
    pub sequence: u64,
    /// Where each alert's notice is in `pending`, by its group labels (public only so that
    /// a group can be written `DispatchGroup { …, ..Default::default() }` elsewhere).
    #[serde(skip)]
    pub pending_at: PendingIndex,
}

/// The position of each pending notice, by its alert's group labels: a cache, not state.
/// It is not stored, and is rebuilt whenever it does not cover `pending` (a group read
/// back from the store), so it compares equal whatever it holds. Without it each notice
/// scanned the pending ones for the one it replaces: quadratic when thousands of alerts of
/// a rule fire in the same minute.
#[derive(Clone, Debug, Default)]
pub struct PendingIndex(HashMap<Vec<(String, String)>, usize>);

impl PartialEq for PendingIndex {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl DispatchGroup {
    /// The index of `pending`, rebuilt if it does not cover it.
    fn pending_index(&mut self) -> &mut HashMap<Vec<(String, String)>, usize> {
        if self.pending_at.0.len() != self.pending.len() {
            self.pending_at.0 = (self.pending.iter().enumerate())
                .map(|(i, notice)| (notice.group.clone(), i))
                .collect();
        }
        &mut self.pending_at.0
    }

    /// Takes the pending notices (and empties their index).
    fn take_pending(&mut self) -> Vec<AlertNotice> {
        self.pending_at.0.clear();
        std::mem::take(&mut self.pending)
    }
}

/// Every (rule, destination) group.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Dispatcher {
    #[serde(with = "pairs")]
    pub groups: BTreeMap<(String, String), DispatchGroup>,
    /// The last sequence of each group retired (its rule removed, or no longer notifying
    /// the destination): a group made again carries on from it, so that its notifications
    /// do not take the ids (idempotency keys) of the old ones. Absent from states written
    /// before it (read as empty).
    #[serde(default, with = "pairs")]
    pub retired: BTreeMap<(String, String), u64>,
}

/// Maps whose keys are not strings, stored as a list of `[key, value]` pairs: a JSON
/// object's keys must be strings, and serde_json refuses to write such a map at all.
mod pairs {
    use serde::de::{Error, IgnoredAny, MapAccess, SeqAccess, Visitor};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;
    use std::marker::PhantomData;

    pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(
        map: &BTreeMap<K, V>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(map.iter())
    }

    pub fn deserialize<'de, K, V, D>(deserializer: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        struct Pairs<K, V>(PhantomData<(K, V)>);
        impl<'de, K: Deserialize<'de> + Ord, V: Deserialize<'de>> Visitor<'de> for Pairs<K, V> {
            type Value = BTreeMap<K, V>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of [key, value] pairs")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut map = BTreeMap::new();
                while let Some((key, value)) = seq.next_element::<(K, V)>()? {
                    map.insert(key, value);
                }
                Ok(map)
            }
            /// States written before pairs hold `{}`: the only such map that could be
            /// written as an object was an empty one.
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                match map.next_key::<IgnoredAny>()? {
                    None => Ok(BTreeMap::new()),
                    Some(_) => Err(A::Error::custom(
                        "a map with keys where a list of [key, value] pairs was expected",
                    )),
                }
            }
        }
        deserializer.deserialize_any(Pairs(PhantomData))
    }
}

impl Dispatcher {
    /// Queues a notice for each of its rule's destinations.
    pub fn add(&mut self, rule: &Rule, notice: &AlertNotice, now_ms: i64) {
        for destination in &rule.notify {
            let key = (rule.name.clone(), destination.clone());
            let retired = &mut self.retired;
            let group = self
                .groups
                .entry(key)
                .or_insert_with_key(|key| DispatchGroup {
                    sequence: retired.remove(key).unwrap_or(0),
                    ..DispatchGroup::default()
                });
            let waiting = group.pending_index().get(&notice.group).copied();
            match notice.status {
                AlertStatus::Firing => {
                    group.firing.insert(notice.group.clone(), notice.clone());
                }
                AlertStatus::Resolved => {
                    // A resolution of an alert that was never announced (silenced or
                    // inhibited when it fired) would be noise.
                    if group.firing.remove(&notice.group).is_none() && waiting.is_none() {
                        continue;
                    }
                }
            }
            // A newer notice of the same alert replaces a pending one, in its place.
            match waiting {
                Some(i) => group.pending[i] = notice.clone(),
                None => {
                    let at = group.pending.len();
                    group.pending_index().insert(notice.group.clone(), at);
                    group.pending.push(notice.clone());
                }
            }
            group.first_pending_ms.get_or_insert(now_ms);
        }
    }

    /// Notifications due at `now_ms`, by the timing of each group's rule.
    ///
    /// A group whose rule is gone (removed from the rules file) or no longer notifies its
    /// destination is due at once, and for the last time: the alerts it announced are sent
    /// resolved, saying why, so that a receiver closes what it opened; then it is dropped.
    /// Alerts it had not announced yet are dropped unsaid.
    pub fn due(&mut self, rules: &[Rule], now_ms: i64, dashboard_url: &str) -> Vec<Notification> {
        let timing: BTreeMap<&str, &Rule> = rules.iter().map(|r| (r.name.as_str(), r)).collect();
        let mut out = Vec::new();
        let retired: Vec<(String, String)> = (self.groups.keys())
            .filter(|(rule, destination)| !notifies(&timing, rule, destination))
            .cloned()
            .collect();
        for key in retired {
            let Some(group) = self.groups.remove(&key) else {
                continue;
            };
            let mut sequence = group.sequence;
            if let Some(last) = retire(&key, group, &timing, now_ms, dashboard_url) {
                sequence += 1;
                out.push(last);
            }
            self.retired.insert(key, sequence);
        }
        for ((rule_name, destination), group) in &mut self.groups {
            let Some(rule) = timing.get(rule_name.as_str()) else {
                continue;
            };
            let t = rule.timing;
            let notices = if let Some(first) = group.first_pending_ms {
                let ready = match group.last_sent_ms {
                    None => now_ms - first >= t.group_wait_ms,
                    Some(last) => now_ms - last >= t.group_interval_ms,
                };
                if !ready {
                    continue;
                }
                group.first_pending_ms = None;
                group.take_pending()
            } else if !group.firing.is_empty()
                && group
                    .last_sent_ms
                    .is_some_and(|last| now_ms - last >= t.repeat_interval_ms)
            {
                group.firing.values().cloned().collect()
            } else {
                continue;
            };
            group.last_sent_ms = Some(now_ms);
            group.sequence += 1;
            let status = if notices.iter().any(|n| n.status == AlertStatus::Firing) {
                AlertStatus::Firing
            } else {
                AlertStatus::Resolved
            };
            out.push(Notification {
                id: notification_id(rule_name, destination, group.sequence),
                destination: destination.clone(),
                status,
                notices,
                created_ms: now_ms,
                dashboard_url: dashboard_url.to_string(),
                push: None,
            });
        }
        out
    }

    /// The earliest wall-clock time a group may become due (for the adapter's timer); a
    /// group to retire (see [`Self::due`]) is due already (`i64::MIN`).
    pub fn next_due_ms(&self, rules: &[Rule]) -> Option<i64> {
        let timing: BTreeMap<&str, &Rule> = rules.iter().map(|r| (r.name.as_str(), r)).collect();
        self.groups
            .iter()
            .filter_map(|((rule, destination), group)| {
                if !notifies(&timing, rule, destination) {
                    return Some(i64::MIN);
                }
                let t = timing.get(rule.as_str())?.timing;
                match (group.first_pending_ms, group.last_sent_ms) {
                    (Some(first), None) => Some(first + t.group_wait_ms),
                    (Some(_), Some(last)) => Some(last + t.group_interval_ms),
                    (None, Some(last)) if !group.firing.is_empty() => {
                        Some(last + t.repeat_interval_ms)
                    }
                    _ => None,
                }
            })
            .min()
    }
}

/// Whether the rule named `rule` is loaded and notifies `destination`.
fn notifies(rules: &BTreeMap<&str, &Rule>, rule: &str, destination: &str) -> bool {
    rules
        .get(rule)
        .is_some_and(|r| r.notify.iter().any(|d| d == destination))
}

/// The last notification of a group whose rule is gone or no longer notifies its
/// destination: its pending resolutions, and a resolution of every alert it announced as
/// firing (a firing notice still pending was never announced). `None`: nothing to say.
fn retire(
    (rule, destination): &(String, String),
    mut group: DispatchGroup,
    rules: &BTreeMap<&str, &Rule>,
    now_ms: i64,
    dashboard_url: &str,
) -> Option<Notification> {
    let pending = group.take_pending();
    let unannounced: std::collections::HashSet<&Vec<(String, String)>> = (pending.iter())
        .filter(|n| n.status == AlertStatus::Firing)
        .map(|n| &n.group)
        .collect();
    let why = if rules.contains_key(rule.as_str()) {
        format!("the rule no longer notifies {destination}")
    } else {
        "the rule was removed".to_string()
    };
    let mut notices: Vec<AlertNotice> = (pending.iter())
        .filter(|n| n.status == AlertStatus::Resolved)
        .cloned()
        .collect();
    for (labels, fired) in &group.firing {
        if unannounced.contains(labels) {
            continue;
        }
        let scope = if labels.is_empty() {
            "all traffic".to_string()
        } else {
            let values: Vec<&str> = labels.iter().map(|(_, v)| v.as_str()).collect();
            values.join(" / ")
        };
        let mut notice = fired.clone();
        notice.status = AlertStatus::Resolved;
        notice.resolved_ms = Some(now_ms);
        notice.summary = format!("{rule} resolved: {why} ({scope})");
        notices.push(notice);
    }
    if notices.is_empty() {
        return None;
    }
    let sequence = group.sequence + 1;
    Some(Notification {
        id: notification_id(rule, destination, sequence),
        destination: destination.clone(),
        status: AlertStatus::Resolved,
        notices,
        created_ms: now_ms,
        dashboard_url: dashboard_url.to_string(),
        push: None,
    })
}

/// A stable id from (rule, destination, sequence): length-prefixed parts, hashed.
pub fn notification_id(rule: &str, destination: &str, sequence: u64) -> String {
    let mut bytes = Vec::with_capacity(rule.len() + destination.len() + 24);
    for part in [rule.as_bytes(), destination.as_bytes()] {
        bytes.extend_from_slice(&(part.len() as u64).to_le_bytes());
        bytes.extend_from_slice(part);
    }
    bytes.extend_from_slice(&sequence.to_le_bytes());
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&bytes))
}

/// One label a silence matches: `rule`, `severity`, or a dimension of the group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Matcher {
    pub name: String,
    pub value: String,
}

/// Mutes the notices whose labels match every matcher, from `starts_ms` to `ends_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Silence {
    pub id: String,
    pub matchers: Vec<Matcher>,
    pub starts_ms: i64,
    pub ends_ms: i64,
    pub created_by: String,
    pub comment: String,
}

impl Silence {
    pub fn is_active(&self, now_ms: i64) -> bool {
        self.starts_ms <= now_ms && now_ms < self.ends_ms
    }

    pub fn matches(&self, notice: &AlertNotice) -> bool {
        self.matchers.iter().all(|m| match m.name.as_str() {
            "rule" | "alertname" => notice.rule == m.value,
            "severity" => notice.severity.as_str() == m.value,
            name => notice
                .group
                .iter()
                .any(|(label, value)| label == name && *value == m.value),
        })
    }
}

/// While any alert of `source` fires, notices of the `targets` rules (`*`: every other
/// rule) are muted: an intake lag makes every KPI look wrong, and one alert says why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inhibition {
    pub source: String,
    pub targets: Vec<String>,
}

impl Inhibition {
    pub fn mutes(&self, notice: &AlertNotice) -> bool {
        notice.rule != self.source && self.targets.iter().any(|t| t == "*" || *t == notice.rule)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::watch::notification::Notification as N;
    use crate::watch::rules::{RawRule, Timing, check_rules};

    fn rule() -> Rule {
        let destinations = ["slack".to_string()].into_iter().collect();
        check_rules(
            &[RawRule {
                name: Some("cpa_high".into()),
                expr: Some("cpa > 20".into()),
                group_by: vec!["channel".into()],
                notify: vec!["slack".into()],
                ..RawRule::default()
            }],
            &destinations,
            Timing {
                group_wait_ms: 30_000,
                group_interval_ms: 300_000,
                repeat_interval_ms: 3_600_000,
            },
        )
        .unwrap()
        .remove(0)
    }

    fn notice(channel: &str, status: AlertStatus) -> AlertNotice {
        let mut n = N::example().notices.remove(0);
        n.group = vec![("channel".into(), channel.into())];
        n.status = status;
        n
    }

    #[test]
    fn a_new_group_waits_then_changes_wait_for_the_interval_then_repeats() {
        let r = rule();
        let rules = [r.clone()];
        let mut d = Dispatcher::default();
        d.add(&r, &notice("social", AlertStatus::Firing), 0);
        d.add(&r, &notice("email", AlertStatus::Firing), 10_000);
        assert!(d.due(&rules, 29_999, "http://x").is_empty());
        assert_eq!(d.next_due_ms(&rules), Some(30_000));
        let first = d.due(&rules, 30_000, "http://x");
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].notices.len(), 2, "grouped");
        // A resolution soon after waits for the group interval.
        d.add(&r, &notice("social", AlertStatus::Resolved), 40_000);
        assert!(d.due(&rules, 100_000, "http://x").is_empty());
        let second = d.due(&rules, 330_000, "http://x");
        assert_eq!(second[0].notices[0].status, AlertStatus::Resolved);
        assert_ne!(first[0].id, second[0].id);
        // email still fires: repeated after the repeat interval.
        assert!(d.due(&rules, 330_000 + 3_599_999, "http://x").is_empty());
        let repeat = d.due(&rules, 330_000 + 3_600_000, "http://x");
        assert_eq!(repeat[0].notices[0].group[0].1, "email");
    }

    /// Each notice scanned the group's pending notices for the one it replaces: with
    /// thousands of alerts of one rule firing in the same minute (a campaign per group),
    /// queueing them was quadratic (20,000 firing then resolving: seconds of the evaluator's
    /// thread, in debug tens). Now a notice finds its predecessor by its labels.
    #[test]
    fn thousands_of_groups_firing_at_once_queue_in_linear_time() {
        let r = rule();
        let rules = [r.clone()];
        let mut d = Dispatcher::default();
        let groups = 20_000;
        let notices: Vec<AlertNotice> = [AlertStatus::Firing, AlertStatus::Resolved]
            .into_iter()
            .flat_map(|status| (0..groups).map(move |i| (i, status)))
            .map(|(i, status)| notice(&format!("campaign-{i:05}"), status))
            .collect();
        let started = std::time::Instant::now();
        for n in &notices {
            d.add(&r, n, 0);
        }
        let took = started.elapsed();
        println!("{groups} groups fired and resolved in {took:?}");
        // Resolved before anything was sent: each resolution took its firing's place.
        let sent = d.due(&rules, 30_000, "http://x");
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].notices.len(), groups);
        assert!(
            sent[0]
                .notices
                .iter()
                .all(|n| n.status == AlertStatus::Resolved)
        );
        assert!(d.groups.values().all(|g| g.firing.is_empty()));
        // Linear work is a fraction of a second even unoptimized (0.3 s in a debug build);
        // the quadratic scan took 205 s there.
        assert!(took < std::time::Duration::from_secs(5), "{took:?}");
    }

    /// A newer notice of an alert replaces its pending one (in its place), also after the
    /// group was read back from the store (where the index of pending notices is not kept).
    #[test]
    fn a_newer_notice_replaces_the_pending_one_also_after_a_reload() {
        let r = rule();
        let rules = [r.clone()];
        let mut d = Dispatcher::default();
        d.add(&r, &notice("social", AlertStatus::Firing), 0);
        d.add(&r, &notice("email", AlertStatus::Firing), 0);
        let json = serde_json::to_string(&d).unwrap();
        let mut again: Dispatcher = serde_json::from_str(&json).unwrap();
        assert_eq!(again, d);
        again.add(&r, &notice("social", AlertStatus::Resolved), 1_000);
        let sent = again.due(&rules, 30_000, "http://x");
        let statuses: Vec<(&str, AlertStatus)> = sent[0]
            .notices
            .iter()
            .map(|n| (n.group[0].1.as_str(), n.status))
            .collect();
        assert_eq!(
            statuses,
            [
                ("social", AlertStatus::Resolved),
                ("email", AlertStatus::Firing)
            ]
        );
        // Taken: the next notice starts a new list.
        again.add(&r, &notice("email", AlertStatus::Resolved), 40_000);
        let next = again.due(&rules, 400_000, "http://x");
        assert_eq!(next[0].notices.len(), 1);
        assert_eq!(next[0].notices[0].status, AlertStatus::Resolved);
    }

    /// A rule removed from the rules file while its alerts fire: its groups were dropped
    /// with what they held, and the receivers (Slack threads, PagerDuty-like incidents)
    /// never heard the alerts end. Now each announced alert is resolved, at once, saying why.
    #[test]
    fn a_removed_rule_resolves_its_announced_alerts_at_once() {
        let r = rule();
        let rules = [r.clone()];
        let mut d = Dispatcher::default();
        d.add(&r, &notice("social", AlertStatus::Firing), 0);
        d.add(&r, &notice("email", AlertStatus::Firing), 0);
        let fired = d.due(&rules, 30_000, "http://x");
        assert_eq!(fired[0].notices.len(), 2);
        // A third fires but is not announced yet (group interval) when the rule goes.
        d.add(&r, &notice("search", AlertStatus::Firing), 40_000);
        assert!(d.next_due_ms(&[]).is_some_and(|due| due <= 50_000));
        let sent = d.due(&[], 50_000, "http://x");
        assert_eq!(sent.len(), 1, "{sent:?}");
        let n = &sent[0];
        assert_eq!(
            (n.destination.as_str(), n.status),
            ("slack", AlertStatus::Resolved)
        );
        assert_ne!(n.id, fired[0].id);
        let resolved: Vec<&str> = n.notices.iter().map(|n| n.group[0].1.as_str()).collect();
        assert_eq!(resolved, ["email", "social"], "only the announced ones");
        for notice in &n.notices {
            assert_eq!(notice.status, AlertStatus::Resolved);
            assert_eq!(notice.resolved_ms, Some(50_000));
            assert!(
                notice.summary.contains("rule was removed"),
                "{}",
                notice.summary
            );
        }
        assert!(d.groups.is_empty());
        assert_eq!(d.next_due_ms(&[]), None);
        assert!(d.due(&[], 60_000, "http://x").is_empty());
    }

    /// The same when the rule stays but no longer notifies a destination: that destination
    /// hears the end of what it was told (it was repeated there every `repeat_interval`).
    #[test]
    fn a_destination_dropped_from_a_rule_hears_its_alerts_resolved() {
        let r = rule();
        let mut d = Dispatcher::default();
        d.add(&r, &notice("social", AlertStatus::Firing), 0);
        d.due(std::slice::from_ref(&r), 30_000, "http://x");
        let mut moved = r.clone();
        moved.notify = vec!["email".into()];
        let sent = d.due(&[moved.clone()], 40_000, "http://x");
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].destination, "slack");
        assert_eq!(sent[0].notices[0].status, AlertStatus::Resolved);
        assert!(
            sent[0].notices[0]
                .summary
                .contains("no longer notifies slack"),
            "{}",
            sent[0].notices[0].summary
        );
        assert!(d.groups.is_empty());
        assert_eq!(d.next_due_ms(&[moved]), None);
    }

    /// A rule removed then added again started its groups' sequence over, so its new
    /// notifications had the ids of its old ones: a receiver that remembers ids (the
    /// idempotency contract) dropped them as repeats. The sequence now carries on.
    #[test]
    fn a_rule_added_again_does_not_reuse_the_ids_of_its_old_notifications() {
        let r = rule();
        let mut ids = std::collections::BTreeSet::new();
        let mut d = Dispatcher::default();
        for round in 0..3 {
            let t = round * 1_000_000;
            d.add(&r, &notice("social", AlertStatus::Firing), t);
            for n in d.due(std::slice::from_ref(&r), t + 30_000, "http://x") {
                assert!(ids.insert(n.id), "round {round}: an id again");
            }
            for n in d.due(&[], t + 40_000, "http://x") {
                assert!(ids.insert(n.id), "round {round}: an id again");
            }
            // Read back from the store between rounds, as after a restart.
            d = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        }
        assert_eq!(ids.len(), 6);
    }

    #[test]
    fn ids_are_stable_and_cannot_collide_through_names() {
        assert_eq!(notification_id("a", "b", 1), notification_id("a", "b", 1));
        assert_ne!(notification_id("a", "b", 1), notification_id("a", "b", 2));
        assert_ne!(notification_id("ab", "c", 1), notification_id("a", "bc", 1));
    }

    #[test]
    fn a_resolution_of_an_unannounced_alert_is_not_sent() {
        let r = rule();
        let mut d = Dispatcher::default();
        d.add(&r, &notice("social", AlertStatus::Resolved), 0);
        assert!(d.due(&[r], 1_000_000, "http://x").is_empty());
    }

    #[test]
    fn silences_match_labels_and_inhibitions_mute_other_rules() {
        let s = Silence {
            id: "s1".into(),
            matchers: vec![
                Matcher {
                    name: "rule".into(),
                    value: "cpa_high".into(),
                },
                Matcher {
                    name: "channel".into(),
                    value: "social".into(),
                },
            ],
            starts_ms: 0,
            ends_ms: 100,
            created_by: "anna".into(),
            comment: "known".into(),
        };
        assert!(s.matches(&notice("social", AlertStatus::Firing)));
        assert!(!s.matches(&notice("email", AlertStatus::Firing)));
        assert!(s.is_active(99) && !s.is_active(100));
        let lag = Inhibition {
            source: "intake_lag".into(),
            targets: vec!["*".into()],
        };
        assert!(lag.mutes(&notice("social", AlertStatus::Firing)));
        let mut own = notice("x", AlertStatus::Firing);
        own.rule = "intake_lag".into();
        assert!(!lag.mutes(&own));
    }
}
