//! `[[triggers]]` and `triggers_file`: where the trigger set comes from, and how it is
//! checked against the configured destinations.
//!
//! ```toml
//! triggers_file = "triggers.toml"   # optional; reloaded on change and on SIGHUP
//!
//! [[triggers]]                      # see vedetta_core::act::triggers
//! name = "cpa_alto"
//! kind = "segment_cpa"
//! …
//! ```
//!
//! A triggers file has the same shape (`[[triggers]]` only); triggers from both are in
//! force together, names unique across them.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;
use vedetta_core::act::stage::TriggerSet;
use vedetta_core::act::triggers::{RawTrigger, Trigger, check_triggers};

/// A triggers file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggersFile {
    #[serde(default)]
    pub triggers: Vec<RawTrigger>,
}

/// The triggers' configuration, checked at load.
#[derive(Debug, Clone, Default)]
pub struct TriggersConfig {
    pub file: Option<PathBuf>,
    pub inline: Vec<RawTrigger>,
    /// Destinations that take pushes, with their push interval.
    pub push_destinations: BTreeMap<String, Duration>,
    pub all_destinations: BTreeSet<String>,
}

/// The largest triggers file read.
const MAX_FILE_BYTES: u64 = 4 << 20;

/// Reads and parses a triggers file; the error names the file (and TOML's line and key).
pub fn read_triggers_file(path: &Path) -> Result<TriggersFile, String> {
    let size = std::fs::metadata(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if size > MAX_FILE_BYTES {
        return Err(format!("{}: larger than 4 MiB", path.display()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

impl TriggersConfig {
    pub fn new(
        inline: Vec<RawTrigger>,
        file: Option<PathBuf>,
        destinations: &[crate::watch::destinations::DestinationConfig],
    ) -> Self {
        TriggersConfig {
            file,
            inline,
            push_destinations: destinations
                .iter()
                .filter_map(|d| Some((d.name().to_owned(), d.push_interval()?)))
                .collect(),
            all_destinations: destinations.iter().map(|d| d.name().to_owned()).collect(),
        }
    }

    /// Checks `raw` as the trigger set.
    pub fn check(&self, raw: &[RawTrigger]) -> Result<Vec<Trigger>, String> {
        let push: BTreeSet<String> = self.push_destinations.keys().cloned().collect();
        check_triggers(raw, &push, &self.all_destinations).map_err(|e| e.to_string())
    }

    /// The inline triggers and the file's, checked.
    pub fn load(&self) -> Result<Vec<Trigger>, String> {
        self.load_set().map(|set| set.triggers)
    }

    /// The inline triggers and the file's, checked, with their raw form (what the
    /// processor records with the offset the set takes effect at).
    pub fn load_set(&self) -> Result<TriggerSet, String> {
        let mut raw = self.inline.clone();
        if let Some(path) = &self.file {
            let file = read_triggers_file(path)?;
            raw.extend(file.triggers);
        }
        let triggers = self.check(&raw).map_err(|e| match &self.file {
            Some(path) => format!("{e} (inline triggers and {})", path.display()),
            None => e,
        })?;
        Ok(TriggerSet { raw, triggers })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The issue's example, as written, in a main configuration.
    #[test]
    fn the_issue_example_parses_as_written() {
        let text = r#"
data_dir = "/tmp/unused"

[[triggers]]
name = "cpa_alto"
kind = "segment_cpa"
group_by = ["channel", "campaign"]
threshold = 20                 # EUR
over = "10m"
min_conversions = 2
segment_label = "costi > 20€"  # goes into "segmento"
notify = ["crm-push"]

[[alerts.destinations]]
name = "crm-push"
kind = "webhook"
format = "seed"                # the payload above
interval = "30s"
url = "https://crm.example.it/vedetta/push"
oauth2 = { token_url = "https://crm.example.it/oauth/token", client_id = "vedetta", client_secret = "…", refresh_token = "…" }
"#;
        let config =
            crate::config::load_text(text, "test.toml", &[], &crate::config::Overrides::default())
                .unwrap();
        let triggers = config.triggers.load().unwrap();
        assert_eq!(triggers.len(), 1);
        assert_eq!(triggers[0].name, "cpa_alto");
        assert_eq!(
            config.triggers.push_destinations.get("crm-push"),
            Some(&Duration::from_secs(30))
        );
    }
}
