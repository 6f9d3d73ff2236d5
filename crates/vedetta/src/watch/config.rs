//! The `[alerts]` section: rules (inline or in `alerts.rules_file`), destinations,
//! notification timing, inhibitions and where links point.
//!
//! ```toml
//! [alerts]
//! rules_file = "rules.toml"        # optional; reloaded on change and on SIGHUP
//! public_url = "https://vedetta.example.it"   # dashboard links in messages
//! group_wait = "30s"               # defaults for every rule
//! group_interval = "5m"
//! repeat_interval = "4h"
//! max_catch_up = "1h"              # minutes older than this behind the watermark are not judged
//!
//! [[alerts.inhibit]]
//! source = "intake_lag"            # while it fires...
//! targets = ["*"]                  # ...these rules are muted
//!
//! [[alerts.rules]]                 # see vedetta_core::watch::rules
//! …
//!
//! [[alerts.destinations]]          # see watch::destinations
//! name = "slack-marketing"
//! kind = "slack"
//! url = "https://hooks.slack.com/services/…"
//! ```
//!
//! A rules file has the same shape (`[[alerts.rules]]`, `[[alerts.inhibit]]`), so a rule
//! moves between the two unchanged; destinations (with their secrets) stay in the main
//! configuration.

use serde::Deserialize;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use vedetta_core::watch::dispatch::Inhibition;
use vedetta_core::watch::rules::{self, RawRule, Rule, Timing};

/// `[alerts]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAlerts {
    pub rules_file: Option<PathBuf>,
    #[serde(default)]
    pub rules: Vec<RawRule>,
    #[serde(default)]
    pub inhibit: Vec<RawInhibit>,
    /// Where notifications go (see `watch::destinations`).
    #[serde(default)]
    pub destinations: Vec<super::destinations::DestinationConfig>,
    pub public_url: Option<String>,
    pub group_wait: Option<String>,
    pub group_interval: Option<String>,
    pub repeat_interval: Option<String>,
    pub max_catch_up: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInhibit {
    pub source: String,
    #[serde(default)]
    pub targets: Vec<String>,
}

/// A rules file: `[[alerts.rules]]` and `[[alerts.inhibit]]` only.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    #[serde(default)]
    pub alerts: RulesFileAlerts,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFileAlerts {
    #[serde(default)]
    pub rules: Vec<RawRule>,
    #[serde(default)]
    pub inhibit: Vec<RawInhibit>,
}

/// The checked `[alerts]` section.
#[derive(Debug, Clone, Default)]
pub struct AlertsConfig {
    pub rules_file: Option<PathBuf>,
    /// Rules written in the main configuration.
    pub inline_rules: Vec<RawRule>,
    pub inline_inhibit: Vec<RawInhibit>,
    pub destinations: Vec<super::destinations::DestinationConfig>,
    pub destination_names: BTreeSet<String>,
    pub public_url: String,
    pub timing: Timing,
    pub max_catch_up_ms: i64,
}

/// What is in force: checked rules and inhibitions.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    pub inhibitions: Vec<Inhibition>,
}

fn span(key: &str, value: Option<&str>, default: i64) -> Result<i64, (String, String)> {
    match value {
        None => Ok(default),
        Some(text) => match rules::parse_span(text) {
            Some(ms) if ms <= rules::MAX_SPAN_MS => Ok(ms),
            _ => Err((
                key.to_string(),
                format!("{text:?} is not a span of at most 7d, like \"30s\" or \"5m\""),
            )),
        },
    }
}

impl AlertsConfig {
    /// Checks the section; errors are (key, message). `listen` gives the default link base.
    pub fn from_raw(raw: RawAlerts, listen: &str) -> Result<Self, (String, String)> {
        let defaults = Timing::default();
        let timing = Timing {
            group_wait_ms: span(
                "alerts.group_wait",
                raw.group_wait.as_deref(),
                defaults.group_wait_ms,
            )?,
            group_interval_ms: span(
                "alerts.group_interval",
                raw.group_interval.as_deref(),
                defaults.group_interval_ms,
            )?,
            repeat_interval_ms: span(
                "alerts.repeat_interval",
                raw.repeat_interval.as_deref(),
                defaults.repeat_interval_ms,
            )?,
        };
        // As a rule's own: 0 would send a firing alert again at every step.
        if timing.repeat_interval_ms == 0 {
            return Err((
                "alerts.repeat_interval".to_string(),
                "must be longer than 0".to_string(),
            ));
        }
        let max_catch_up_ms = span(
            "alerts.max_catch_up",
            raw.max_catch_up.as_deref(),
            3_600_000,
        )?;
        let mut destination_names = BTreeSet::new();
        for (i, destination) in raw.destinations.iter().enumerate() {
            destination
                .validate()
                .map_err(|e| (format!("alerts.destinations[{i}]"), format!("{e:#}")))?;
            let name = destination.name();
            if !destination_names.insert(name.to_string()) {
                return Err((
                    format!("alerts.destinations[{i}].name"),
                    format!("another destination is named {name:?}"),
                ));
            }
        }
        let public_url = match raw.public_url {
            Some(url) if url.starts_with("http://") || url.starts_with("https://") => url,
            Some(url) => {
                return Err((
                    "alerts.public_url".into(),
                    format!("{url:?} is not an http(s) URL"),
                ));
            }
            None => format!("http://{listen}"),
        };
        let config = Self {
            rules_file: raw.rules_file,
            inline_rules: raw.rules,
            inline_inhibit: raw.inhibit,
            destinations: raw.destinations,
            destination_names,
            public_url,
            timing,
            max_catch_up_ms,
        };
        // The inline rules are checked now: a bad main configuration does not start.
        config
            .rule_set(&RulesFileAlerts::default())
            .map_err(|e| ("alerts.rules".to_string(), e))?;
        Ok(config)
    }

    /// The inline rules and a rules file's, checked together (names are unique across both).
    pub fn rule_set(&self, file: &RulesFileAlerts) -> Result<RuleSet, String> {
        let raw: Vec<RawRule> = self
            .inline_rules
            .iter()
            .chain(&file.rules)
            .cloned()
            .collect();
        let rules = rules::check_rules(&raw, &self.destination_names, self.timing)
            .map_err(|e| e.to_string())?;
        let names: BTreeSet<&str> = rules.iter().map(|r| r.name.as_str()).collect();
        let mut inhibitions = Vec::new();
        for inhibit in self.inline_inhibit.iter().chain(&file.inhibit) {
            if !names.contains(inhibit.source.as_str()) {
                return Err(format!(
                    "inhibit: source {:?} is not a rule",
                    inhibit.source
                ));
            }
            if let Some(t) = inhibit
                .targets
                .iter()
                .find(|t| *t != "*" && !names.contains(t.as_str()))
            {
                return Err(format!("inhibit: target {t:?} is not a rule"));
            }
            inhibitions.push(Inhibition {
                source: inhibit.source.clone(),
                targets: if inhibit.targets.is_empty() {
                    vec!["*".into()]
                } else {
                    inhibit.targets.clone()
                },
            });
        }
        Ok(RuleSet { rules, inhibitions })
    }

    /// Reads and checks the rules file (if any) with the inline rules.
    pub fn load_rules(&self) -> Result<RuleSet, String> {
        match &self.rules_file {
            None => self.rule_set(&RulesFileAlerts::default()),
            Some(path) => self.rule_set(&read_rules_file(path)?.alerts),
        }
    }
}

/// The demo's alert configuration as written (`demo-alerts.toml`).
pub const DEMO_ALERTS: &str = include_str!("demo-alerts.toml");

/// The configuration of `serve --demo` when none is given: a few rules (a tracking glitch
/// the demo injects, CPA, an absence, an anomaly) notifying the server's inbox.
pub fn demo_alerts(listen: &str) -> Result<AlertsConfig, String> {
    #[derive(Deserialize)]
    struct Demo {
        alerts: RawAlerts,
    }
    let demo: Demo = toml::from_str(DEMO_ALERTS).map_err(|e| e.to_string())?;
    AlertsConfig::from_raw(demo.alerts, listen)
        .map_err(|(key, message)| format!("{key}: {message}"))
}

/// Parses a rules file; errors name the file and, from TOML, the line and key.
pub fn read_rules_file(path: &Path) -> Result<RulesFile, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read rules file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        format!(
            "rules file {}: {}{e}",
            path.display(),
            failing_rule(&text).unwrap_or_default()
        )
    })
}

/// `rule "name": ` for the first rule that does not read on its own: a TOML error names
/// the key and its line, not the rule it belongs to (a typo like `severty` would leave a
/// person hunting through the file).
fn failing_rule(text: &str) -> Option<String> {
    let document: toml::Table = toml::from_str(text).ok()?;
    let rules = document.get("alerts")?.get("rules")?.as_array()?;
    rules.iter().enumerate().find_map(|(i, rule)| {
        rule.clone().try_into::<RawRule>().err()?;
        Some(match rule.get("name").and_then(toml::Value::as_str) {
            Some(name) => format!("rule {name:?} (alerts.rules[{i}]): "),
            None => format!("alerts.rules[{i}]: "),
        })
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MAIN: &str = r#"
        public_url = "https://vedetta.example.it"

        [[rules]]
        name = "cpa_high"
        expr = "cpa > 20"
        over = "10m"
        group_by = ["channel", "campaign"]
        for = "2m"
        min_conversions = 3
        severity = "warning"
        notify = ["slack-marketing", "mail-team"]

        [[destinations]]
        name = "slack-marketing"
        kind = "slack"
        url = "https://hooks.slack.com/services/T/B/X"

        [[destinations]]
        name = "mail-team"
        kind = "email"
        host = "smtp.example.it"
        from = "vedetta@example.it"
        to = ["team@example.it"]
    "#;

    #[test]
    fn the_issue_example_loads_and_a_rules_file_adds_to_it() {
        let raw: RawAlerts = toml::from_str(MAIN).unwrap();
        let config = AlertsConfig::from_raw(raw, "127.0.0.1:8080").unwrap();
        let set = config.load_rules().unwrap();
        assert_eq!(set.rules.len(), 1);
        let file: RulesFile = toml::from_str(
            r#"
            [[alerts.rules]]
            name = "intake_lag"
            expr = "lag_events > 10000"
            [[alerts.inhibit]]
            source = "intake_lag"
            "#,
        )
        .unwrap();
        let set = config.rule_set(&file.alerts).unwrap();
        assert_eq!(set.rules.len(), 2);
        assert_eq!(set.inhibitions[0].targets, vec!["*".to_string()]);
    }

    #[test]
    fn the_demo_rules_check() {
        let demo = demo_alerts("127.0.0.1:8080").unwrap();
        let set = demo.load_rules().unwrap();
        assert_eq!(set.rules.len(), 4);
        assert_eq!(
            demo.destination_names.iter().collect::<Vec<_>>(),
            vec!["inbox"]
        );
    }

    #[test]
    fn mistakes_are_named() {
        let raw: RawAlerts = toml::from_str(&MAIN.replace("for = \"2m\"", "for = \"2x\"")).unwrap();
        let (key, message) = AlertsConfig::from_raw(raw, "x").unwrap_err();
        assert_eq!(key, "alerts.rules");
        assert!(message.starts_with("rule \"cpa_high\": for:"), "{message}");
        let raw: RawAlerts = toml::from_str(&MAIN.replace("\"mail-team\"]", "\"mail\"]")).unwrap();
        assert!(
            AlertsConfig::from_raw(raw, "x")
                .unwrap_err()
                .1
                .contains("no destination")
        );
        let typo = toml::from_str::<RulesFile>("[[alerts.rules]]\nnmae = \"x\"\n");
        assert!(typo.unwrap_err().to_string().contains("nmae"));

        let raw: RawAlerts = toml::from_str(MAIN).unwrap();
        let config = AlertsConfig::from_raw(raw, "x").unwrap();
        let bad_inhibit = RulesFileAlerts {
            rules: vec![],
            inhibit: vec![RawInhibit {
                source: "nope".into(),
                targets: vec![],
            }],
        };
        assert!(
            config
                .rule_set(&bad_inhibit)
                .unwrap_err()
                .contains("\"nope\" is not a rule")
        );
    }

    /// The bug: a rule refuses `repeat_interval = "0s"` (a firing alert would be sent again
    /// at every step, about ten times a second), but `[alerts] repeat_interval`, the default
    /// of every rule that gives none, took it.
    #[test]
    fn a_default_repeat_interval_of_zero_is_refused() {
        for zero in ["0s", "0m", "0h", "0d"] {
            let text = format!("repeat_interval = \"{zero}\"\n{MAIN}");
            let raw: RawAlerts = toml::from_str(&text).unwrap();
            let (key, message) = AlertsConfig::from_raw(raw, "x").unwrap_err();
            assert_eq!(key, "alerts.repeat_interval", "{zero}: {message}");
        }
        // Zero stays allowed where it means "at once".
        let text = format!("group_wait = \"0s\"\ngroup_interval = \"0s\"\n{MAIN}");
        let raw: RawAlerts = toml::from_str(&text).unwrap();
        let config = AlertsConfig::from_raw(raw, "x").unwrap();
        assert_eq!(config.timing.group_interval_ms, 0);
    }

    /// The bug: a typo'd key in a rules file (`severty`) was reported with its line only,
    /// not the rule it is in, where the issue asks for both.
    #[test]
    fn an_unknown_key_in_a_rules_file_names_its_rule() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.toml");
        std::fs::write(
            &path,
            "[[alerts.rules]]\nname = \"ok\"\nexpr = \"cpa > 1\"\n\
             [[alerts.rules]]\nname = \"cpa_high\"\nexpr = \"cpa > 20\"\nseverty = \"critical\"\n",
        )
        .unwrap();
        let error = read_rules_file(&path).unwrap_err();
        assert!(
            error.contains("rule \"cpa_high\" (alerts.rules[1])") && error.contains("severty"),
            "{error}"
        );
    }
}
