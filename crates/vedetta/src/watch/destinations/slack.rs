//! Slack incoming webhooks: Block Kit with a text fallback.
//!
//! Slack's limits: a message's `text` is best kept within 4,000 characters, a message has
//! at most 50 blocks, a section's text at most 3,000 characters, a header's 150. A group
//! too large for them is summarised: the first notices in full, then one block counting
//! the rest by status, with the dashboard link. Nothing is cut mid-notice. One message per
//! second per webhook (Slack's rate limit); a 429 is retried after its `Retry-After`.

use super::text::{self, Lang, NoticeText, escape};
use super::{
    DeliveryError, Destination, Secret, check_timeout, check_url, classify, transport_error,
};
use crate::watch::destination::Delivery;
use serde::Deserialize;
use serde_json::{Value, json};
use std::time::Duration;
use vedetta_core::watch::notification::{AlertStatus, Notification};

/// Slack's documented limits, as this sender keeps under them.
pub const MAX_TEXT_CHARS: usize = 4_000;
pub const MAX_BLOCKS: usize = 50;
pub const MAX_SECTION_CHARS: usize = 3_000;
pub const MAX_HEADER_CHARS: usize = 150;

/// The budget this sender fills, with a margin under Slack's limits for the summary line.
const TEXT_BUDGET: usize = 3_500;
const BLOCK_TEXT_BUDGET: usize = 3_500;

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    pub name: String,
    /// The incoming webhook's URL (a secret).
    pub url: Secret,
    #[serde(default)]
    pub lang: Lang,
    #[serde(default = "super::default_timeout_seconds")]
    pub timeout_seconds: u64,
}

impl SlackConfig {
    pub(super) fn validate(&self) -> anyhow::Result<Duration> {
        check_url(&self.name, "url", self.url.expose())?;
        check_timeout(&self.name, self.timeout_seconds)
    }
}

#[derive(Debug)]
pub struct Slack {
    name: String,
    url: Secret,
    lang: Lang,
    client: reqwest::Client,
}

impl Slack {
    pub fn new(config: &SlackConfig) -> anyhow::Result<Slack> {
        let timeout = config.validate()?;
        Ok(Slack {
            name: config.name.clone(),
            url: config.url.clone(),
            lang: config.lang,
            client: super::http_client(timeout)?,
        })
    }
}

fn section(notice: &NoticeText) -> String {
    let mut lines = vec![format!("*{}*", escape(&notice.headline))];
    for line in [&notice.group, &notice.summary, &notice.measure] {
        if !line.is_empty() {
            lines.push(escape(line));
        }
    }
    if let Some(c) = &notice.contributor {
        lines.push(escape(c));
    }
    lines.push(escape(&notice.window));
    // A link's URL is escaped too: `&` in a query string is `&amp;` in mrkdwn.
    lines.push(format!("<{}|Drill-down>", escape(&notice.link)));
    lines.join("\n")
}

/// The Slack message of a notification: `{"text": fallback, "blocks": [...]}` within
/// Slack's limits.
pub fn payload(notification: &Notification, lang: Lang) -> Value {
    let title = text::title(notification, lang);
    let header: String = title.chars().take(MAX_HEADER_CHARS).collect();
    let mut blocks = vec![json!({
        "type": "header",
        "text": {"type": "plain_text", "text": header, "emoji": true}
    })];
    let mut fallback = title;
    let mut block_chars = 0;
    let mut shown = 0;
    for notice in &notification.notices {
        let described = text::describe(notification, notice, lang);
        let body = section(&described);
        let plain = described.plain();
        // Room for this notice, the summary block and its line.
        if blocks.len() + 2 > MAX_BLOCKS
            || block_chars + body.chars().count() > BLOCK_TEXT_BUDGET
            || fallback.chars().count() + 2 + plain.chars().count() > TEXT_BUDGET
        {
            break;
        }
        block_chars += body.chars().count();
        fallback.push_str("\n\n");
        fallback.push_str(&plain);
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": body}}));
        shown += 1;
    }
    let rest = &notification.notices[shown..];
    if !rest.is_empty() {
        let firing = rest
            .iter()
            .filter(|n| n.status == AlertStatus::Firing)
            .count();
        let resolved = rest.len() - firing;
        let dashboard = notification.dashboard_url.trim_end_matches('/');
        let summary = match lang {
            Lang::It => format!(
                "…e altri {} gruppi ({firing} attivi, {resolved} risolti): vedi la dashboard",
                rest.len()
            ),
            Lang::En => format!(
                "…and {} more groups ({firing} firing, {resolved} resolved): see the dashboard",
                rest.len()
            ),
        };
        fallback.push_str(&format!("\n\n{summary} {dashboard}/"));
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": format!("{} <{}/|Dashboard>", escape(&summary), escape(dashboard))}
        }));
    }
    json!({"text": fallback, "blocks": blocks})
}

impl Destination for Slack {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "slack"
    }

    fn min_interval(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn deliver<'a>(&'a self, notification: &'a Notification) -> Delivery<'a> {
        Box::pin(async move {
            let body = serde_json::to_vec(&payload(notification, self.lang)).map_err(|e| {
                DeliveryError::Refused {
                    reason: format!("the Slack message does not serialize: {e}"),
                }
            })?;
            let response = self
                .client
                .post(self.url.expose())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body)
                .send()
                .await
                .map_err(|e| transport_error("Slack webhook", e))?;
            classify("Slack webhook", response).await.map(drop)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_group_is_summarised_within_slacks_limits() {
        let mut n = Notification::example();
        let one = n.notices[0].clone();
        n.notices = (0..500)
            .map(|i| {
                let mut x = one.clone();
                x.group[1].1 = format!("campaign-{i}-{}", "z".repeat(i % 300));
                if i % 3 == 0 {
                    x.status = AlertStatus::Resolved;
                }
                x
            })
            .collect();
        let p = payload(&n, Lang::En);
        let text = p["text"].as_str().unwrap_or_default();
        let blocks = p["blocks"].as_array().cloned().unwrap_or_default();
        assert!(text.chars().count() <= MAX_TEXT_CHARS);
        assert!(blocks.len() <= MAX_BLOCKS);
        for b in &blocks {
            let t = b["text"]["text"].as_str().unwrap_or_default();
            assert!(t.chars().count() <= MAX_SECTION_CHARS);
        }
        let last = blocks
            .last()
            .map(|b| b["text"]["text"].to_string())
            .unwrap_or_default();
        assert!(last.contains("more groups"), "{last}");
        // Every notice shown is whole: its link is there.
        let shown = blocks.len() - 2;
        assert!(shown >= 1);
        assert_eq!(
            text.matches("http://127.0.0.1:8080/?channel").count(),
            shown
        );
        assert!(text.contains(&format!("…and {} more groups", 500 - shown)));
    }

    #[test]
    fn one_notice_carries_everything_escaped() {
        let mut n = Notification::example();
        n.notices[0].group[1].1 = "<!channel> & co".into();
        let p = payload(&n, Lang::It);
        let section = p["blocks"][1]["text"]["text"].as_str().unwrap_or_default();
        assert!(section.contains("&lt;!channel&gt; &amp; co"), "{section}");
        assert!(section.contains("cpa 23,40 €, soglia 20,00 €"), "{section}");
        assert!(section.contains(
            "<http://127.0.0.1:8080/?channel=paid_search&amp;campaign=brand|Drill-down>"
        ));
        assert_eq!(p["blocks"].as_array().map(Vec::len), Some(2));
    }
}
