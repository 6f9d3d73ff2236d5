//! Triggers (issue 12): their TOML shape, validation, and the checked form the engine runs.
//!
//! ```toml
//! [[triggers]]
//! name = "cpa_alto"
//! kind = "segment_cpa"           # segment_cpa | abandoned_cart | tag | conversion_feed
//! group_by = ["channel", "campaign"]
//! threshold = 20                 # EUR: fires while the segment's CPA is above it
//! over = "10m"                   # sliding window on 1-minute KPI data
//! min_conversions = 2            # volume guard
//! segment_label = "costi > 20€"  # goes into "segmento"
//! cooldown = "24h"               # a user is sent by this trigger at most once per cooldown
//! notify = ["crm-push"]
//! ```
//!
//! Other kinds: `abandoned_cart` (`after = "30m"`: an add to cart with no purchase within
//! that much event time), `tag` (`tag = "VIP"`, `on = "purchase_over"` with `min_value`, or
//! `on = "first_purchase"`), `conversion_feed` (every clean conversion).
//!
//! A `segment_cpa` trigger's CPA is the alert rules' CPA: it is checked into a watch
//! [`Rule`] (`cpa > threshold`, same window, same volume guard), so the segment's CPA is its
//! own attributed clean conversions against its spend, as `docs/semantics.md` defines them.
//! Spend carries only channel and campaign, so a CPA segment cannot be grouped by device or
//! region (the rule checker refuses it, as it does for alert rules).
//!
//! Errors name the trigger and the key: `trigger "cpa_alto": over: "10x" is not a span`.

use crate::watch::rules::{self, RawRule, Rule, Timing, parse_span};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Most triggers in one set.
pub const MAX_TRIGGERS: usize = 1_000;
/// Longest trigger name, label or tag.
pub const MAX_NAME_LEN: usize = 128;
/// The longest cooldown or cart delay: a month.
pub const MAX_SPAN_MS: i64 = 31 * 86_400_000;
/// The default cooldown: a user is sent by one trigger at most once a day.
pub const DEFAULT_COOLDOWN_MS: i64 = 86_400_000;

/// A trigger as written in TOML. Serialized (as a recorded trigger set,
/// [`crate::act::stage::TriggerSet::encode`]) in the TOML's shape: keys left out are left
/// out.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrigger {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub group_by: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub over: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_conversions: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segment_label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<String>,
    /// abandoned_cart: how long an add to cart waits for a purchase (event time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// tag: the tag sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// tag: `purchase_over` or `first_purchase`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on: Option<String>,
    /// tag with `on = "purchase_over"`: the least purchase value (reporting currency).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_value: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<String>,
}

/// When a `tag` trigger tags a user.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "on")]
pub enum TagWhen {
    /// A clean purchase worth more than `min_value`.
    PurchaseOver { min_value: f64 },
    /// The user's first clean purchase this state has seen.
    FirstPurchase,
}

/// What a trigger selects.
#[derive(Clone, Debug, PartialEq)]
pub enum TriggerKind {
    SegmentCpa {
        /// The CPA condition as an alert rule: window, grouping and volume guard.
        rule: Box<Rule>,
        threshold: f64,
        label: Option<String>,
    },
    AbandonedCart {
        after_ms: i64,
    },
    Tag {
        tag: String,
        when: TagWhen,
    },
    ConversionFeed,
}

/// A checked trigger.
#[derive(Clone, Debug, PartialEq)]
pub struct Trigger {
    pub name: String,
    pub kind: TriggerKind,
    pub cooldown_ms: i64,
    /// Destination names (each one takes pushes).
    pub notify: Vec<String>,
    /// `segment_label`, for every kind (what goes into `segmento`).
    pub label: Option<String>,
}

impl Trigger {
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            TriggerKind::SegmentCpa { .. } => "segment_cpa",
            TriggerKind::AbandonedCart { .. } => "abandoned_cart",
            TriggerKind::Tag { .. } => "tag",
            TriggerKind::ConversionFeed => "conversion_feed",
        }
    }

    /// The window intent is looked for in (segment_cpa), or how long per-user facts are
    /// needed: what bounds the engine's per-user state in time.
    pub fn horizon_ms(&self) -> i64 {
        match &self.kind {
            TriggerKind::SegmentCpa { rule, .. } => rule.over_ms,
            TriggerKind::AbandonedCart { after_ms } => *after_ms,
            TriggerKind::Tag { .. } | TriggerKind::ConversionFeed => 0,
        }
    }
}

/// Why a trigger set is refused: the trigger, the key, what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("trigger {trigger:?}: {key}: {message}")]
pub struct TriggerError {
    pub trigger: String,
    pub key: String,
    pub message: String,
}

/// Checks raw triggers. `push_destinations` are the configured destinations that take
/// pushes; `all_destinations` every configured one (to say which exists but cannot).
pub fn check_triggers(
    raw: &[RawTrigger],
    push_destinations: &BTreeSet<String>,
    all_destinations: &BTreeSet<String>,
) -> Result<Vec<Trigger>, TriggerError> {
    if raw.len() > MAX_TRIGGERS {
        return Err(TriggerError {
            trigger: String::new(),
            key: "triggers".into(),
            message: format!("{} triggers; at most {MAX_TRIGGERS}", raw.len()),
        });
    }
    let mut names = BTreeSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (index, trigger) in raw.iter().enumerate() {
        let checked = check_trigger(index, trigger, push_destinations, all_destinations)?;
        if !names.insert(checked.name.clone()) {
            return Err(TriggerError {
                trigger: checked.name,
                key: "name".into(),
                message: "another trigger has this name".into(),
            });
        }
        out.push(checked);
    }
    Ok(out)
}

fn check_text(value: &str) -> bool {
    !value.is_empty() && value.len() <= MAX_NAME_LEN && !value.chars().any(char::is_control)
}

fn check_trigger(
    index: usize,
    raw: &RawTrigger,
    push_destinations: &BTreeSet<String>,
    all_destinations: &BTreeSet<String>,
) -> Result<Trigger, TriggerError> {
    let name = raw.name.clone().unwrap_or_default();
    let label = if name.is_empty() {
        format!("#{}", index + 1)
    } else {
        name.clone()
    };
    let err = |key: &str, message: String| TriggerError {
        trigger: label.clone(),
        key: key.into(),
        message,
    };
    if !check_text(&name) {
        return Err(err(
            "name",
            format!("1 to {MAX_NAME_LEN} bytes, no control characters"),
        ));
    }
    let span = |key: &str, value: Option<&str>, default: i64| -> Result<i64, TriggerError> {
        let Some(text) = value else {
            return Ok(default);
        };
        match parse_span(text) {
            Some(ms) if ms > 0 && ms <= MAX_SPAN_MS => Ok(ms),
            Some(_) => Err(err(
                key,
                format!("{text:?} must be above 0 and at most 31d"),
            )),
            None => Err(err(
                key,
                format!("{text:?} is not a span (a number and s, m, h or d)"),
            )),
        }
    };
    let unused = |key: &str, present: bool, kind: &str| -> Result<(), TriggerError> {
        if present {
            Err(err(key, format!("is not a key of kind {kind:?}")))
        } else {
            Ok(())
        }
    };
    let cooldown_ms = span("cooldown", raw.cooldown.as_deref(), DEFAULT_COOLDOWN_MS)?;
    if let Some(l) = &raw.segment_label
        && !check_text(l)
    {
        return Err(err(
            "segment_label",
            format!("1 to {MAX_NAME_LEN} bytes, no control characters"),
        ));
    }
    if raw.notify.is_empty() {
        return Err(err("notify", "names no destination".into()));
    }
    for (i, d) in raw.notify.iter().enumerate() {
        if raw.notify[..i].contains(d) {
            return Err(err("notify", format!("{d:?} is named twice")));
        }
        if !push_destinations.contains(d) {
            let why = if all_destinations.contains(d) {
                "does not take pushes (a webhook with format = \"seed\" does)"
            } else {
                "is not a configured destination"
            };
            return Err(err("notify", format!("{d:?} {why}")));
        }
    }
    let kind_text = raw.kind.as_deref().unwrap_or("");
    let kind = match kind_text {
        "segment_cpa" => {
            unused("after", raw.after.is_some(), kind_text)?;
            unused("tag", raw.tag.is_some(), kind_text)?;
            unused("on", raw.on.is_some(), kind_text)?;
            unused("min_value", raw.min_value.is_some(), kind_text)?;
            let threshold = raw
                .threshold
                .ok_or_else(|| err("threshold", "is required (the CPA in EUR)".into()))?;
            if !(threshold.is_finite() && threshold > 0.0 && threshold <= 1e9) {
                return Err(err(
                    "threshold",
                    format!("{threshold} must be above 0 and at most 1e9"),
                ));
            }
            if raw.over.is_none() {
                return Err(err("over", "is required (a span, as \"10m\")".into()));
            }
            let rule = RawRule {
                name: Some(name.clone()),
                expr: Some(format!("cpa > {threshold}")),
                over: raw.over.clone(),
                group_by: raw.group_by.clone(),
                min_conversions: raw.min_conversions,
                ..RawRule::default()
            };
            let mut checked = rules::check_rules(&[rule], &BTreeSet::new(), Timing::default())
                .map_err(|e| err(&e.key, e.message))?;
            let rule = checked
                .pop()
                .ok_or_else(|| err("kind", "the CPA rule did not check".into()))?;
            TriggerKind::SegmentCpa {
                rule: Box::new(rule),
                threshold,
                label: raw.segment_label.clone(),
            }
        }
        "abandoned_cart" | "tag" | "conversion_feed" => {
            for (key, present) in [
                ("group_by", !raw.group_by.is_empty()),
                ("threshold", raw.threshold.is_some()),
                ("over", raw.over.is_some()),
                ("min_conversions", raw.min_conversions.is_some()),
            ] {
                unused(key, present, kind_text)?;
            }
            match kind_text {
                "abandoned_cart" => {
                    unused("tag", raw.tag.is_some(), kind_text)?;
                    unused("on", raw.on.is_some(), kind_text)?;
                    unused("min_value", raw.min_value.is_some(), kind_text)?;
                    if raw.after.is_none() {
                        return Err(err("after", "is required (a span, as \"30m\")".into()));
                    }
                    TriggerKind::AbandonedCart {
                        after_ms: span("after", raw.after.as_deref(), 0)?,
                    }
                }
                "tag" => {
                    unused("after", raw.after.is_some(), kind_text)?;
                    let tag = raw
                        .tag
                        .clone()
                        .ok_or_else(|| err("tag", "is required".into()))?;
                    // Not blank either: a CRM refuses a blank tag, at every delivery.
                    if !check_text(&tag) || tag.trim().is_empty() {
                        return Err(err(
                            "tag",
                            format!("1 to {MAX_NAME_LEN} bytes, not blank, no control characters"),
                        ));
                    }
                    let when = match raw.on.as_deref() {
                        Some("purchase_over") => {
                            let min_value = raw.min_value.ok_or_else(|| {
                                err(
                                    "min_value",
                                    "is required with on = \"purchase_over\"".into(),
                                )
                            })?;
                            if !(min_value.is_finite() && (0.0..=1e9).contains(&min_value)) {
                                return Err(err(
                                    "min_value",
                                    format!("{min_value} must be between 0 and 1e9"),
                                ));
                            }
                            TagWhen::PurchaseOver { min_value }
                        }
                        Some("first_purchase") => {
                            unused("min_value", raw.min_value.is_some(), "first_purchase")?;
                            TagWhen::FirstPurchase
                        }
                        Some(other) => {
                            return Err(err(
                                "on",
                                format!("{other:?}: expected purchase_over or first_purchase"),
                            ));
                        }
                        None => {
                            return Err(err(
                                "on",
                                "is required (purchase_over or first_purchase)".into(),
                            ));
                        }
                    };
                    TriggerKind::Tag { tag, when }
                }
                _ => {
                    unused("after", raw.after.is_some(), kind_text)?;
                    unused("tag", raw.tag.is_some(), kind_text)?;
                    unused("on", raw.on.is_some(), kind_text)?;
                    unused("min_value", raw.min_value.is_some(), kind_text)?;
                    TriggerKind::ConversionFeed
                }
            }
        }
        "" => return Err(err("kind", "is required".into())),
        other => {
            return Err(err(
                "kind",
                format!("{other:?}: expected segment_cpa, abandoned_cart, tag or conversion_feed"),
            ));
        }
    };
    Ok(Trigger {
        name,
        kind,
        cooldown_ms,
        notify: raw.notify.clone(),
        label: raw.segment_label.clone(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Deserialize)]
    struct File {
        triggers: Vec<RawTrigger>,
    }

    fn check(text: &str) -> Result<Vec<Trigger>, TriggerError> {
        let file: File = toml::from_str(text).unwrap();
        let push: BTreeSet<String> = ["crm-push".to_string()].into();
        let all: BTreeSet<String> = ["crm-push".to_string(), "slack".to_string()].into();
        check_triggers(&file.triggers, &push, &all)
    }

    #[test]
    fn the_issue_example_checks_into_a_cpa_rule() {
        let t = check(
            r#"
            [[triggers]]
            name = "cpa_alto"
            kind = "segment_cpa"
            group_by = ["channel", "campaign"]
            threshold = 20                 # EUR
            over = "10m"
            min_conversions = 2
            segment_label = "costi > 20€"  # goes into "segmento"
            notify = ["crm-push"]
            "#,
        )
        .unwrap();
        let TriggerKind::SegmentCpa {
            rule,
            threshold,
            label,
        } = &t[0].kind
        else {
            panic!("{t:?}")
        };
        assert_eq!(rule.over_ms, 600_000);
        assert_eq!(rule.min_conversions, 2);
        assert_eq!(rule.condition_text(), "cpa > 20");
        assert_eq!(*threshold, 20.0);
        assert_eq!(label.as_deref(), Some("costi > 20€"));
        assert_eq!(t[0].cooldown_ms, DEFAULT_COOLDOWN_MS);
    }

    #[test]
    fn every_kind_checks() {
        let t = check(
            r#"
            [[triggers]]
            name = "carrello"
            kind = "abandoned_cart"
            after = "30m"
            notify = ["crm-push"]
            [[triggers]]
            name = "vip"
            kind = "tag"
            tag = "VIP"
            on = "purchase_over"
            min_value = 200
            cooldown = "7d"
            notify = ["crm-push"]
            [[triggers]]
            name = "cliente"
            kind = "tag"
            tag = "customer"
            on = "first_purchase"
            notify = ["crm-push"]
            [[triggers]]
            name = "feed"
            kind = "conversion_feed"
            notify = ["crm-push"]
            "#,
        )
        .unwrap();
        let kinds: Vec<_> = t.iter().map(|t| t.kind_name()).collect();
        assert_eq!(kinds, ["abandoned_cart", "tag", "tag", "conversion_feed"]);
        assert_eq!(t[1].cooldown_ms, 7 * 86_400_000);
    }

    #[test]
    fn errors_name_the_trigger_and_the_key() {
        let cases = [
            (
                "name = \"a\"\nkind = \"segment_cpa\"\nthreshold = 20\nover = \"10x\"\nnotify = [\"crm-push\"]",
                "trigger \"a\": over:",
            ),
            (
                "name = \"a\"\nkind = \"segment_cpa\"\nthreshold = -1\nover = \"10m\"\nnotify = [\"crm-push\"]",
                "trigger \"a\": threshold:",
            ),
            (
                "name = \"a\"\nkind = \"segment_cpa\"\nthreshold = 20\nover = \"10m\"\ngroup_by = [\"device\"]\nnotify = [\"crm-push\"]",
                "trigger \"a\": group_by:",
            ),
            (
                "name = \"a\"\nkind = \"segment_cpa\"\nthreshold = 20\nover = \"10m\"\nnotify = [\"slack\"]",
                "does not take pushes",
            ),
            (
                "name = \"a\"\nkind = \"segment_cpa\"\nthreshold = 20\nover = \"10m\"\nnotify = [\"nope\"]",
                "not a configured destination",
            ),
            (
                "name = \"a\"\nkind = \"abandoned_cart\"\nnotify = [\"crm-push\"]",
                "trigger \"a\": after:",
            ),
            (
                "name = \"a\"\nkind = \"abandoned_cart\"\nafter = \"30m\"\nthreshold = 3\nnotify = [\"crm-push\"]",
                "trigger \"a\": threshold: is not a key",
            ),
            (
                "name = \"a\"\nkind = \"tag\"\ntag = \"VIP\"\non = \"birthday\"\nnotify = [\"crm-push\"]",
                "trigger \"a\": on:",
            ),
            (
                "name = \"a\"\nkind = \"tag\"\ntag = \"VIP\"\non = \"purchase_over\"\nnotify = [\"crm-push\"]",
                "trigger \"a\": min_value:",
            ),
            (
                "name = \"a\"\nkind = \"pager\"\nnotify = [\"crm-push\"]",
                "trigger \"a\": kind:",
            ),
            (
                "kind = \"conversion_feed\"\nnotify = [\"crm-push\"]",
                "trigger \"#1\": name:",
            ),
            (
                "name = \"a\"\nkind = \"conversion_feed\"\ncooldown = \"0s\"\nnotify = [\"crm-push\"]",
                "trigger \"a\": cooldown:",
            ),
        ];
        for (body, expected) in cases {
            let error = check(&format!("[[triggers]]\n{body}\n"))
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{body}\n→ {error}");
        }
        let twice = check(
            "[[triggers]]\nname = \"a\"\nkind = \"conversion_feed\"\nnotify = [\"crm-push\"]\n[[triggers]]\nname = \"a\"\nkind = \"conversion_feed\"\nnotify = [\"crm-push\"]\n",
        )
        .unwrap_err();
        assert_eq!(twice.key, "name");
    }

    /// A destination named twice in `notify` queued every push to it twice (one pending
    /// push per name, each its own outbox entry): a seed webhook received each user twice,
    /// and the delivery numbers counted double.
    #[test]
    fn a_destination_named_twice_in_notify_is_refused() {
        let error = check(
            "[[triggers]]\nname = \"a\"\nkind = \"conversion_feed\"\nnotify = [\"crm-push\", \"crm-push\"]\n",
        )
        .unwrap_err();
        assert_eq!(error.key, "notify");
        assert!(error.message.contains("twice"), "{error}");
    }

    /// A blank tag passed the check (not empty, no control characters), and every push of
    /// the trigger to a CRM was then refused at delivery (a CRM batch has no blank tag):
    /// dead letters for a value the load could have named.
    #[test]
    fn a_blank_tag_is_refused_at_load() {
        let error = check(
            "[[triggers]]\nname = \"a\"\nkind = \"tag\"\ntag = \"   \"\non = \"first_purchase\"\nnotify = [\"crm-push\"]\n",
        )
        .unwrap_err();
        assert_eq!(error.key, "tag");
    }
}
