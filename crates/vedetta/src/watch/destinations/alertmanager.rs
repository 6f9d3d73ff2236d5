//! Alertmanager: `POST /api/v2/alerts`, one alert per notice, so teams that route alerts
//! through Alertmanager keep doing so.
//!
//! Labels: `alertname` = the rule, `severity`, and the group's dimensions (an alert's
//! identity in Alertmanager is its label set, so a resend is the same alert). Annotations:
//! `summary`, `description` (value, threshold or band, window), `link` and the
//! notification id. `startsAt` is when it started firing; a resolved notice sends `endsAt`
//! = its resolution time. A firing notice sends `endsAt` = delivery time + `firing_ttl`:
//! Alertmanager resolves an alert it does not hear about again by then, and Vedetta does
//! not repeat firing alerts the way Prometheus does, so the TTL is long (a day by default;
//! `repeat_interval` refreshes it, and the resolved notice ends it at once).

use super::text::{self, Lang};
use super::{Destination, check_timeout, check_url, classify, key_error, transport_error};
use crate::watch::destination::Delivery;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::time::Duration;
use vedetta_core::watch::notification::{AlertStatus, Notification};

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerConfig {
    pub name: String,
    /// Alertmanager's base URL (`http://alertmanager:9093`).
    pub url: String,
    /// How long a firing alert stays firing in Alertmanager without news (seconds).
    #[serde(default = "default_ttl")]
    pub firing_ttl_seconds: u64,
    #[serde(default)]
    pub lang: Lang,
    #[serde(default = "super::default_timeout_seconds")]
    pub timeout_seconds: u64,
}

fn default_ttl() -> u64 {
    24 * 3_600
}

impl AlertmanagerConfig {
    pub(super) fn validate(&self) -> anyhow::Result<(reqwest::Url, Duration)> {
        let base = check_url(&self.name, "url", &self.url)?;
        if !(60..=30 * 86_400).contains(&self.firing_ttl_seconds) {
            return Err(key_error(
                &self.name,
                "firing_ttl_seconds",
                "must be between 60 and 2592000",
            ));
        }
        let timeout = check_timeout(&self.name, self.timeout_seconds)?;
        let endpoint = base
            .join(&format!(
                "{}/api/v2/alerts",
                base.path().trim_end_matches('/')
            ))
            .map_err(|e| key_error(&self.name, "url", e))?;
        Ok((endpoint, timeout))
    }
}

#[derive(Debug)]
pub struct Alertmanager {
    name: String,
    endpoint: reqwest::Url,
    ttl: Duration,
    lang: Lang,
    client: reqwest::Client,
}

impl Alertmanager {
    pub fn new(config: &AlertmanagerConfig) -> anyhow::Result<Alertmanager> {
        let (endpoint, timeout) = config.validate()?;
        Ok(Alertmanager {
            name: config.name.clone(),
            endpoint,
            ttl: Duration::from_secs(config.firing_ttl_seconds),
            lang: config.lang,
            client: super::http_client(timeout)?,
        })
    }
}

fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// A label name as Prometheus allows it (`[a-zA-Z_][a-zA-Z0-9_]*`): other characters
/// become `_`. Group dimensions are ours (`channel`, `campaign`…), but the rule file is
/// not trusted to keep them so.
fn label_name(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// The alerts posted for `notification`, at delivery time `now_ms`.
pub fn alerts(notification: &Notification, lang: Lang, ttl: Duration, now_ms: i64) -> Value {
    let alerts: Vec<Value> = notification
        .notices
        .iter()
        .map(|notice| {
            let d = text::describe(notification, notice, lang);
            let mut labels = Map::new();
            for (k, v) in &notice.group {
                let k = label_name(k);
                if !matches!(k.as_str(), "alertname" | "severity") {
                    labels.insert(k, Value::String(v.clone()));
                }
            }
            labels.insert("alertname".into(), Value::String(notice.rule.clone()));
            labels.insert(
                "severity".into(),
                Value::String(notice.severity.as_str().into()),
            );
            let mut description = vec![d.measure.clone()];
            description.extend(d.contributor.clone());
            description.push(d.window.clone());
            let ends = match (notice.status, notice.resolved_ms) {
                (AlertStatus::Resolved, Some(resolved)) => resolved,
                // A resolved notice without a time ends now.
                (AlertStatus::Resolved, None) => now_ms,
                (AlertStatus::Firing, _) => now_ms.saturating_add(ttl.as_millis() as i64),
            };
            json!({
                "labels": labels,
                "annotations": {
                    "summary": d.summary,
                    "description": description.join("\n"),
                    "link": d.link,
                    "vedetta_notification": notification.id,
                },
                "startsAt": rfc3339(notice.started_ms),
                "endsAt": rfc3339(ends),
                "generatorURL": d.link,
            })
        })
        .collect();
    Value::Array(alerts)
}

impl Destination for Alertmanager {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "alertmanager"
    }

    fn deliver<'a>(&'a self, notification: &'a Notification) -> Delivery<'a> {
        Box::pin(async move {
            let now_ms = crate::watch::sender::wall_ms();
            let body = alerts(notification, self.lang, self.ttl, now_ms);
            let response = self
                .client
                .post(self.endpoint.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string())
                .send()
                .await
                .map_err(|e| transport_error("Alertmanager", e))?;
            classify("Alertmanager", response).await.map(drop)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_carry_labels_annotations_and_times() {
        let mut n = Notification::example();
        n.notices[0]
            .group
            .push(("device-type".into(), "mobile".into()));
        let a = alerts(&n, Lang::En, Duration::from_secs(3_600), 1_712_319_002_000);
        let alert = &a[0];
        assert_eq!(alert["labels"]["alertname"], "cpa_high");
        assert_eq!(alert["labels"]["severity"], "warning");
        assert_eq!(alert["labels"]["campaign"], "brand");
        assert_eq!(alert["labels"]["device_type"], "mobile");
        assert_eq!(alert["startsAt"], "2024-04-05T12:10:00Z");
        assert_eq!(alert["endsAt"], "2024-04-05T13:10:02Z");
        assert!(
            alert["annotations"]["description"]
                .as_str()
                .unwrap_or_default()
                .contains("threshold €20.00")
        );

        n.notices[0].status = AlertStatus::Resolved;
        n.notices[0].resolved_ms = Some(1_712_319_600_000);
        let a = alerts(&n, Lang::En, Duration::from_secs(3_600), 1_712_319_700_000);
        assert_eq!(a[0]["endsAt"], "2024-04-05T12:20:00Z");
        assert_eq!(label_name("1x"), "_1x");
    }
}
