//! What an alert tells the world: the contract between the rule evaluator, the durable
//! outbox and every destination (Slack, e-mail, Alertmanager, webhooks).
//!
//! The evaluator turns a state change of a (rule, group) into an [`AlertNotice`]; grouping
//! gathers notices for one destination into a [`Notification`], which is written to the
//! outbox in the same store commit as the state change, then delivered at least once. Its
//! `id` is the idempotency key: the same notification keeps the same id across retries and
//! restarts, so a receiver that remembers ids sees each one once.
//!
//! Stored in the outbox as a version byte and JSON ([`Notification::encode`]); a person
//! reading the dead-letter list reads JSON too.

use serde::{Deserialize, Serialize};

/// The outbox format of a [`Notification`] this build writes and reads.
pub const NOTIFICATION_FORMAT: u8 = 1;

/// Whether an alert is firing or has resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

/// How loud an alert is.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    #[default]
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// What a number is, for formatting it (`1.234,56 €` in it-IT, `12.5 %`, `3`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Money in the reporting currency.
    Money,
    /// A ratio in [0, 1], shown as a percentage.
    Ratio,
    /// A count.
    Count,
    /// A duration in seconds.
    Seconds,
}

/// The breakdown that contributes most to an anomaly's deviation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Contributor {
    /// `channel`, `campaign`, `device` or `region`.
    pub dimension: String,
    pub value: String,
    /// Its part of the deviation (observed − expected of the whole), in [0, 1] when it
    /// moves the same way as the whole.
    pub share: f64,
    /// Its own observed and expected values.
    pub observed: f64,
    pub expected: f64,
}

/// One (rule, group) that started firing or resolved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertNotice {
    pub rule: String,
    /// `threshold`, `absence` or `anomaly`.
    pub kind: String,
    pub severity: Severity,
    /// The group's dimension values, in the rule's `group_by` order (empty: the whole).
    pub group: Vec<(String, String)>,
    pub status: AlertStatus,
    /// One line a person reads first (`CPA 23,40 € over 20 € in the last 10 minutes`).
    pub summary: String,
    /// The rule's condition as written (`cpa > 20`).
    pub expr: String,
    /// What was measured (`cpa`, `duplicates / events`).
    pub metric: String,
    pub unit: Unit,
    /// The measured value at the transition (`None`: no data, as in an absence).
    pub value: Option<f64>,
    /// The threshold it was compared with (threshold rules).
    pub threshold: Option<f64>,
    /// The expected band (anomaly rules): low, high.
    pub expected: Option<(f64, f64)>,
    pub contributor: Option<Contributor>,
    /// The evaluated window, epoch milliseconds, `[start, end)`.
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    /// When the alert started firing (event time of the window end that fired it).
    pub started_ms: i64,
    /// When it resolved.
    pub resolved_ms: Option<i64>,
    /// Path and query of the dashboard's drill-down for this group and window
    /// (`/?channel=social&campaign=saldi&from=…&to=…`), relative to the dashboard's URL.
    pub drilldown: String,
}

/// One message to one destination: one or more notices grouped as Alertmanager groups
/// them (same rule and destination, within `group_wait` / `group_interval`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Idempotency key: stable across retries and restarts.
    pub id: String,
    /// The destination's configured name.
    pub destination: String,
    /// `firing` if any notice is firing.
    pub status: AlertStatus,
    pub notices: Vec<AlertNotice>,
    /// Wall-clock time it was created (epoch milliseconds).
    pub created_ms: i64,
    /// The dashboard's absolute base URL (`server.public_url`), for links.
    pub dashboard_url: String,
    /// A trigger's push (issue 12) instead of alert notices: only destinations that take
    /// pushes are given one. Absent from alert notifications, and from entries stored
    /// before triggers existed (they read as `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<crate::act::push::Push>,
}

/// Why stored bytes are not a notification.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum NotificationFormatError {
    #[error("an outbox entry of format {found}; this build reads format {NOTIFICATION_FORMAT}")]
    Version { found: u8 },
    #[error("an empty outbox entry")]
    Empty,
    #[error("an outbox entry does not decode: {0}")]
    Body(String),
}

impl Notification {
    /// `[format u8][JSON]`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![NOTIFICATION_FORMAT];
        // Plain data with string keys: serializing into a Vec cannot fail.
        if let Ok(json) = serde_json::to_vec(self) {
            out.extend_from_slice(&json);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, NotificationFormatError> {
        match bytes.split_first() {
            None => Err(NotificationFormatError::Empty),
            Some((&NOTIFICATION_FORMAT, body)) => serde_json::from_slice(body)
                .map_err(|e| NotificationFormatError::Body(e.to_string())),
            Some((&found, _)) => Err(NotificationFormatError::Version { found }),
        }
    }

    /// The dashboard link of a notice: base URL and the notice's drill-down path.
    pub fn link(&self, notice: &AlertNotice) -> String {
        format!(
            "{}{}",
            self.dashboard_url.trim_end_matches('/'),
            notice.drilldown
        )
    }
}

impl Notification {
    /// A notification as the CPA rule of the docs sends it: for documentation, `vedetta`'s
    /// destination tests and the demo inbox.
    pub fn example() -> Notification {
        Notification {
            id: "n-0123456789abcdef".into(),
            destination: "slack-marketing".into(),
            status: AlertStatus::Firing,
            notices: vec![AlertNotice {
                rule: "cpa_high".into(),
                kind: "threshold".into(),
                severity: Severity::Warning,
                group: vec![
                    ("channel".into(), "paid_search".into()),
                    ("campaign".into(), "brand".into()),
                ],
                status: AlertStatus::Firing,
                summary: "CPA 23,40 € over 20 € in the last 10 minutes".into(),
                expr: "cpa > 20".into(),
                metric: "cpa".into(),
                unit: Unit::Money,
                value: Some(23.4),
                threshold: Some(20.0),
                expected: None,
                contributor: None,
                window_start_ms: 1_712_318_400_000,
                window_end_ms: 1_712_319_000_000,
                started_ms: 1_712_319_000_000,
                resolved_ms: None,
                drilldown: "/?channel=paid_search&campaign=brand".into(),
            }],
            created_ms: 1_712_319_001_000,
            dashboard_url: "http://127.0.0.1:8080/".into(),
            push: None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn notifications_round_trip_and_other_formats_are_refused() {
        let n = Notification::example();
        assert_eq!(Notification::decode(&n.encode()).unwrap(), n);
        let mut future = n.encode();
        future[0] = 2;
        assert_eq!(
            Notification::decode(&future).unwrap_err(),
            NotificationFormatError::Version { found: 2 }
        );
        assert_eq!(
            Notification::decode(&[]).unwrap_err(),
            NotificationFormatError::Empty
        );
        assert!(Notification::decode(&[1, b'{']).is_err());
        assert_eq!(
            n.link(&n.notices[0]),
            "http://127.0.0.1:8080/?channel=paid_search&campaign=brand"
        );
    }
}
