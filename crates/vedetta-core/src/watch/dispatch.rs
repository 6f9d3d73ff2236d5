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
use std::collections::BTreeMap;

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
}

/// Every (rule, destination) group.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Dispatcher {
    #[serde(with = "pairs")]
    pub groups: BTreeMap<(String, String), DispatchGroup>,
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
            let group = self
                .groups
                .entry((rule.name.clone(), destination.clone()))
                .or_default();
            match notice.status {
                AlertStatus::Firing => {
                    group.firing.insert(notice.group.clone(), notice.clone());
                }
                AlertStatus::Resolved => {
                    // A resolution of an alert that was never announced (silenced or
                    // inhibited when it fired) would be noise.
                    if group.firing.remove(&notice.group).is_none()
                        && !group.pending.iter().any(|p| p.group == notice.group)
                    {
                        continue;
                    }
                }
            }
            // A newer notice of the same alert replaces a pending one.
            group.pending.retain(|p| p.group != notice.group);
            group.pending.push(notice.clone());
            group.first_pending_ms.get_or_insert(now_ms);
        }
    }

    /// Notifications due at `now_ms`, by the timing of each group's rule. Groups of rules
    /// that are gone are dropped with what they held.
    pub fn due(&mut self, rules: &[Rule], now_ms: i64, dashboard_url: &str) -> Vec<Notification> {
        let timing: BTreeMap<&str, &Rule> = rules.iter().map(|r| (r.name.as_str(), r)).collect();
        self.groups
            .retain(|(rule, _), _| timing.contains_key(rule.as_str()));
        let mut out = Vec::new();
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
                std::mem::take(&mut group.pending)
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

    /// The earliest wall-clock time a group may become due (for the adapter's timer).
    pub fn next_due_ms(&self, rules: &[Rule]) -> Option<i64> {
        let timing: BTreeMap<&str, &Rule> = rules.iter().map(|r| (r.name.as_str(), r)).collect();
        self.groups
            .iter()
            .filter_map(|((rule, _), group)| {
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
