//! The settings that shape the pipeline's state and numbers, as a record the store keeps.
//!
//! Per-user state, interned dimension ids and every stored KPI were computed under some
//! [`PipelineConfig`]. Restarting under another one (a lower `max_campaigns`, another time
//! zone, a new rule) would continue that state under rules it was not built with: ids
//! re-interned differently, sessions cut at another gap, windows in another zone. So the
//! store records these settings beside the state, and the processor compares them at start.
//!
//! The record is text, one `name = value` line per setting, values as JSON, sorted by name
//! ([`StateSettings::describe`]); its fingerprint is the XXH3-64 of that text. A person can
//! read what a store was built with, and a mismatch can say which setting changed.
//!
//! Adding a setting later (an attribution model, a lookback) must not invalidate every store
//! built before it existed: a setting missing from a stored record is taken to have had
//! its default value ([`StateSettings::changes_since`]), so only a non-default value asks
//! for a replay.

use super::PipelineConfig;
use super::dims::MAX_CHANNELS;
use std::collections::BTreeMap;
use std::fmt;

/// The state-shaping settings of a configuration, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateSettings {
    /// Setting name → its value as JSON text.
    values: BTreeMap<String, String>,
}

/// One setting that differs between the stored record and the current configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettingChange {
    pub name: String,
    /// As recorded in the store (the default, when the record predates the setting).
    pub stored: String,
    /// In the current configuration (`(none)` when this build no longer has it).
    pub current: String,
}

impl fmt::Display for SettingChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} → {}", self.name, self.stored, self.current)
    }
}

fn json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    // Serializing plain data (numbers, strings, vectors and maps with string keys) into a
    // String cannot fail; the fallback keeps this total anyway.
    serde_json::to_string(value).unwrap_or_else(|e| format!("\"unserializable: {e}\""))
}

impl PipelineConfig {
    /// The settings that change what the pipeline holds or computes. Cache sizes are left
    /// out: they change speed, not numbers.
    pub fn state_settings(&self) -> StateSettings {
        let rates: BTreeMap<&str, f64> = self
            .currency_rates
            .iter()
            .map(|(code, rate)| (code.as_str(), *rate))
            .collect();
        let zone = self
            .time_zone
            .iana_name()
            .map_or_else(|| format!("{:?}", self.time_zone), str::to_string);
        let mut settings = StateSettings::default();
        settings.set("out_of_orderness_ms", json(&self.out_of_orderness_ms));
        settings.set("allowed_lateness_ms", json(&self.allowed_lateness_ms));
        settings.set("session_gap_ms", json(&self.session_gap_ms));
        settings.set("near_duplicate_ms", json(&self.near_duplicate_ms));
        settings.set("dedup_horizon_ms", json(&self.dedup_horizon_ms));
        settings.set("order_dedup_horizon_ms", json(&self.order_dedup_horizon_ms));
        settings.set("refund_horizon_ms", json(&self.refund_horizon_ms));
        settings.set("attribution", json(&self.attribution));
        // Only under `first_touch`, so that stores of the other models are unaffected.
        if self.attribution == super::AttributionModel::FirstTouch {
            settings.set("first_touch_rule", json(FIRST_TOUCH_RULE));
        }
        settings.set(
            "attribution_lookback_ms",
            json(&self.attribution_lookback_ms),
        );
        settings.set("sequence_rules", json(&self.sequence_rules));
        settings.set("conversion_types", json(&self.conversion_types));
        settings.set("time_zone", json(&zone));
        settings.set("reporting_currency", json(&self.reporting_currency));
        settings.set("currency_rates", json(&rates));
        settings.set("internal_hosts", json(&self.enrich.internal_hosts));
        settings.set("max_campaigns", json(&self.max_campaigns));
        settings.set("max_channels", json(&MAX_CHANNELS));
        settings.set("max_custom_types", json(&self.max_custom_types));
        settings.set("max_events_per_user", json(&self.max_events_per_user));
        settings
    }
}

/// Which reading of `first_touch` the pipeline implements: the earliest non-direct session
/// within the lookback (issue 9). Stores built before it recorded no rule and held the
/// lapsing first-click anchor (`"lapsing_anchor"`): under `first_touch` they differ, so
/// the settings check asks for `vedetta replay`.
pub const FIRST_TOUCH_RULE: &str = "earliest_in_lookback";

impl PipelineConfig {
    /// What a record that lacks a setting was computed under: today's defaults, except
    /// where the setting's arrival changed the numbers. Stores built before attribution
    /// counted every event under its own touch (`"event"`) and had no order dedup (`0`):
    /// continuing them under the new rules would mix two contracts in one history, so
    /// they ask for `vedetta replay`.
    pub fn settings_of_older_records() -> StateSettings {
        let mut settings = Self::default().state_settings();
        settings.set("attribution", json("event"));
        settings.set("order_dedup_horizon_ms", json(&0));
        settings.set("first_touch_rule", json("lapsing_anchor"));
        settings
    }
}

impl StateSettings {
    /// Sets a setting (for callers that shape state from outside [`PipelineConfig`]).
    pub fn set(&mut self, name: &str, json_value: String) {
        self.values.insert(name.to_string(), json_value);
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// The record as text: `name = value` lines, sorted by name.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (name, value) in &self.values {
            out.push_str(name);
            out.push_str(" = ");
            out.push_str(value);
            out.push('\n');
        }
        out
    }

    /// Reads a record written by [`Self::describe`]. Lines without ` = ` are ignored (a
    /// record is only ever compared, never trusted to configure anything).
    pub fn parse(text: &str) -> Self {
        let values = text
            .lines()
            .filter_map(|line| line.split_once(" = "))
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        Self { values }
    }

    /// XXH3-64 of [`Self::describe`], as 16 hex digits.
    pub fn fingerprint(&self) -> String {
        format!(
            "{:016x}",
            xxhash_rust::xxh3::xxh3_64(self.describe().as_bytes())
        )
    }

    /// What differs in `self` (the current settings) from a stored record. A setting the
    /// record lacks counts as having had its value in `defaults` then; a setting this build
    /// lacks is a change unless the record holds its default... which this build cannot
    /// know, so it is always reported.
    pub fn changes_since(
        &self,
        stored: &StateSettings,
        defaults: &StateSettings,
    ) -> Vec<SettingChange> {
        let mut changes = Vec::new();
        for (name, current) in &self.values {
            let before = stored.get(name).or_else(|| defaults.get(name));
            if before != Some(current.as_str()) {
                changes.push(SettingChange {
                    name: name.clone(),
                    stored: before.unwrap_or("(none)").to_string(),
                    current: current.clone(),
                });
            }
        }
        for (name, before) in &stored.values {
            if !self.values.contains_key(name) {
                changes.push(SettingChange {
                    name: name.clone(),
                    stored: before.clone(),
                    current: "(none)".to_string(),
                });
            }
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_reads_back_and_names_what_changed() {
        let defaults = PipelineConfig::default().state_settings();
        let stored = StateSettings::parse(&defaults.describe());
        assert_eq!(stored, defaults);
        assert_eq!(stored.fingerprint(), defaults.fingerprint());
        assert!(defaults.changes_since(&stored, &defaults).is_empty());

        let lower = PipelineConfig {
            max_campaigns: 500,
            time_zone: jiff::tz::TimeZone::UTC,
            ..PipelineConfig::default()
        }
        .state_settings();
        assert_ne!(lower.fingerprint(), defaults.fingerprint());
        let changes: Vec<String> = lower
            .changes_since(&stored, &defaults)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            changes,
            vec![
                "max_campaigns: 10000 → 500".to_string(),
                "time_zone: \"Europe/Rome\" → \"UTC\"".to_string(),
            ]
        );
    }

    #[test]
    fn a_store_of_the_lapsing_first_touch_asks_for_a_replay_and_others_do_not() {
        use super::super::AttributionModel;
        let defaults = PipelineConfig::settings_of_older_records();
        let under = |attribution| {
            PipelineConfig {
                attribution,
                ..PipelineConfig::default()
            }
            .state_settings()
        };
        // A record written before the rule existed: no `first_touch_rule` line.
        let before = |attribution| {
            let text = under(attribution).describe();
            let kept: String = text
                .lines()
                .filter(|line| !line.starts_with("first_touch_rule"))
                .map(|line| format!("{line}\n"))
                .collect();
            StateSettings::parse(&kept)
        };
        let first_touch = under(AttributionModel::FirstTouch);
        let changes: Vec<String> = first_touch
            .changes_since(&before(AttributionModel::FirstTouch), &defaults)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            changes,
            vec!["first_touch_rule: \"lapsing_anchor\" → \"earliest_in_lookback\"".to_string()]
        );
        for model in [AttributionModel::LastNonDirect, AttributionModel::Session] {
            assert!(
                under(model)
                    .changes_since(&before(model), &defaults)
                    .is_empty()
            );
        }
        // A store built under the new rule continues.
        let stored = StateSettings::parse(&first_touch.describe());
        assert!(first_touch.changes_since(&stored, &defaults).is_empty());
    }

    #[test]
    fn a_setting_added_later_asks_for_a_replay_only_when_not_default() {
        let old_build = PipelineConfig::default().state_settings();
        let mut defaults = old_build.clone();
        defaults.set("attribution_model", json("last_click"));
        let mut current = defaults.clone();
        assert!(current.changes_since(&old_build, &defaults).is_empty());
        current.set("attribution_model", json("first_click"));
        let changes = current.changes_since(&old_build, &defaults);
        assert_eq!(changes.len(), 1);
        assert_eq!(
            changes[0].to_string(),
            "attribution_model: \"last_click\" → \"first_click\""
        );
    }
}
