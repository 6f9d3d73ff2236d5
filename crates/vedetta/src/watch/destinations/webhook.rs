//! A generic webhook: a JSON `POST` with an `Idempotency-Key` header (the notification
//! id), optionally authorised by OAuth2 client credentials.
//!
//! Body: the notification as JSON (`format = "notification"`, the default), or a JSON
//! template (`format = "template"`): a JSON document whose strings may name variables as
//! `{{name}}`. A string that is exactly one variable becomes that variable's JSON value
//! (an object stays an object); elsewhere a variable is replaced by its text. Values are
//! inserted into the parsed document, never spliced into JSON text, so no value can break
//! out of its string. Variables: `id`, `destination`, `status`, `created_ms`,
//! `dashboard_url`, `count`, `rule`, `severity`, `summary`, `text`, `link`, `notices`,
//! `notification`. With `format = "seed"` (issue 12) the webhook takes trigger pushes
//! only, and the body is the push's seed payload ([`Push::seed_json`]); its pushes are
//! batched every `interval` (default 30 s) by the trigger consumer, one request per
//! trigger and segment. `dry_run = true` logs what would be sent (trigger, segment, count)
//! and sends nothing.
//!
//! [`Push::seed_json`]: vedetta_core::act::push::Push::seed_json
//!
//! OAuth2: the token is fetched from `token_url` with the client-credentials grant,
//! cached, and refreshed before `expires_in` runs out. A 401 from the webhook refreshes it
//! once and retries once, within the same attempt.

use super::text::{self, Lang};
use super::{
    DeliveryError, Destination, Secret, check_timeout, check_url, classify, key_error,
    transport_error,
};
use crate::watch::destination::Delivery;
use crate::watch::oauth2::{OAuth2Client, TokenVault};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use vedetta_core::watch::notification::Notification;

/// What the body of a webhook call is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// The notification as JSON, as stored in the outbox.
    #[default]
    Notification,
    /// The `template` key, filled in.
    Template,
    /// Trigger pushes in the issue-12 payload (`{"events": [...], "trigger", "segmento"}`).
    Seed,
}

pub use crate::watch::oauth2::{ClientAuth, OAuth2Config};

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub name: String,
    pub url: Secret,
    #[serde(default)]
    pub format: WebhookFormat,
    /// A JSON document with `{{variable}}` strings (with `format = "template"`).
    pub template: Option<String>,
    pub oauth2: Option<OAuth2Config>,
    /// The language of `summary`, `text` and such in a template.
    #[serde(default)]
    pub lang: Lang,
    #[serde(default = "super::default_timeout_seconds")]
    pub timeout_seconds: u64,
    /// With `format = "seed"`: how often the pending pushes go out (a span, default 30s).
    pub interval: Option<String>,
    /// Log what would be sent, send nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// The default push interval of a seed webhook.
pub const DEFAULT_PUSH_INTERVAL: Duration = Duration::from_secs(30);

impl WebhookConfig {
    /// How often pushes go to this webhook; `None` when it does not take pushes.
    pub fn push_interval(&self) -> anyhow::Result<Option<Duration>> {
        if self.format != WebhookFormat::Seed {
            if self.interval.is_some() {
                return Err(key_error(
                    &self.name,
                    "interval",
                    "is used only with format = \"seed\"",
                ));
            }
            return Ok(None);
        }
        let Some(text) = &self.interval else {
            return Ok(Some(DEFAULT_PUSH_INTERVAL));
        };
        match vedetta_core::watch::rules::parse_span(text) {
            Some(ms) if (1_000..=3_600_000).contains(&ms) => {
                Ok(Some(Duration::from_millis(ms as u64)))
            }
            _ => Err(key_error(
                &self.name,
                "interval",
                format!("{text:?} must be a span from 1s to 1h (as \"30s\")"),
            )),
        }
    }
}

const VARIABLES: &[&str] = &[
    "id",
    "destination",
    "status",
    "created_ms",
    "dashboard_url",
    "count",
    "rule",
    "severity",
    "summary",
    "text",
    "link",
    "notices",
    "notification",
];

/// The longest template, in bytes.
const MAX_TEMPLATE_BYTES: usize = 64 * 1024;

impl WebhookConfig {
    pub(super) fn validate(&self) -> anyhow::Result<(Option<Value>, Duration)> {
        let name = &self.name;
        check_url(name, "url", self.url.expose())?;
        let template = match (self.format, &self.template) {
            (WebhookFormat::Template, None) => {
                return Err(key_error(
                    name,
                    "template",
                    "is required with format = \"template\"",
                ));
            }
            (WebhookFormat::Notification, Some(_)) => {
                return Err(key_error(
                    name,
                    "template",
                    "is used only with format = \"template\"",
                ));
            }
            (WebhookFormat::Template, Some(t)) => {
                if t.len() > MAX_TEMPLATE_BYTES {
                    return Err(key_error(name, "template", "is longer than 64 KiB"));
                }
                let value: Value = serde_json::from_str(t)
                    .map_err(|e| key_error(name, "template", format!("not JSON: {e}")))?;
                let mut unknown = Vec::new();
                visit_strings(&value, &mut |s| {
                    for var in variables_in(s) {
                        if !VARIABLES.contains(&var) {
                            unknown.push(var.to_owned());
                        }
                    }
                });
                if let Some(var) = unknown.first() {
                    return Err(key_error(
                        name,
                        "template",
                        format!(
                            "unknown variable {{{{{var}}}}}; known: {}",
                            VARIABLES.join(", ")
                        ),
                    ));
                }
                Some(value)
            }
            (WebhookFormat::Notification | WebhookFormat::Seed, None) => None,
            (WebhookFormat::Seed, Some(_)) => {
                return Err(key_error(
                    name,
                    "template",
                    "is used only with format = \"template\"",
                ));
            }
        };
        self.push_interval()?;
        if let Some(o) = &self.oauth2 {
            o.validate(name)?;
        }
        Ok((template, check_timeout(name, self.timeout_seconds)?))
    }
}

fn visit_strings(value: &Value, f: &mut impl FnMut(&str)) {
    match value {
        Value::String(s) => f(s),
        Value::Array(items) => items.iter().for_each(|v| visit_strings(v, f)),
        Value::Object(map) => map.iter().for_each(|(k, v)| {
            f(k);
            visit_strings(v, f);
        }),
        _ => {}
    }
}

/// The `{{name}}` variables of a string.
fn variables_in(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        out.push(after[..end].trim());
        rest = &after[end + 2..];
    }
    out
}

fn variable(notification: &Notification, lang: Lang, name: &str) -> Value {
    let first = notification.notices.first();
    match name {
        "id" => json!(notification.id),
        "destination" => json!(notification.destination),
        "status" => serde_json::to_value(notification.status).unwrap_or(Value::Null),
        "created_ms" => json!(notification.created_ms),
        "dashboard_url" => json!(notification.dashboard_url),
        "count" => json!(notification.notices.len()),
        "rule" => json!(first.map(|n| n.rule.as_str()).unwrap_or_default()),
        "severity" => json!(
            notification
                .notices
                .iter()
                .map(|n| n.severity)
                .max()
                .unwrap_or_default()
                .as_str()
        ),
        "summary" => json!(
            notification
                .notices
                .iter()
                .map(|n| n.summary.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        ),
        "text" => json!(
            notification
                .notices
                .iter()
                .map(|n| text::describe(notification, n, lang).plain())
                .collect::<Vec<_>>()
                .join("\n\n")
        ),
        "link" => json!(first.map(|n| notification.link(n)).unwrap_or_default()),
        "notices" => serde_json::to_value(&notification.notices).unwrap_or(Value::Null),
        "notification" => serde_json::to_value(notification).unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

fn fill(template: &Value, notification: &Notification, lang: Lang) -> Value {
    match template {
        Value::String(s) => {
            let vars = variables_in(s);
            if vars.len() == 1 && s.trim() == format!("{{{{{}}}}}", vars[0]) {
                return variable(notification, lang, vars[0]);
            }
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(start) = rest.find("{{") {
                let after = &rest[start + 2..];
                let Some(end) = after.find("}}") else { break };
                out.push_str(&rest[..start]);
                match variable(notification, lang, after[..end].trim()) {
                    Value::String(v) => out.push_str(&v),
                    other => out.push_str(&other.to_string()),
                }
                rest = &after[end + 2..];
            }
            out.push_str(rest);
            Value::String(out)
        }
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| fill(v, notification, lang)).collect())
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), fill(v, notification, lang)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The body of a call for `notification`.
pub fn body(template: Option<&Value>, notification: &Notification, lang: Lang) -> Value {
    match template {
        Some(t) => fill(t, notification, lang),
        None => serde_json::to_value(notification).unwrap_or(Value::Null),
    }
}

#[derive(Debug)]
pub struct Webhook {
    name: String,
    url: Secret,
    template: Option<Value>,
    lang: Lang,
    oauth2: Option<OAuth2Client>,
    client: reqwest::Client,
    seed: bool,
    dry_run: bool,
}

impl Webhook {
    pub fn new(config: &WebhookConfig) -> anyhow::Result<Webhook> {
        Webhook::with_vault(config, None)
    }

    /// With `vault`, rotated OAuth2 refresh tokens are persisted (see `watch::oauth2`).
    pub fn with_vault(
        config: &WebhookConfig,
        vault: Option<Arc<TokenVault>>,
    ) -> anyhow::Result<Webhook> {
        let (template, timeout) = config.validate()?;
        Ok(Webhook {
            name: config.name.clone(),
            url: config.url.clone(),
            template,
            lang: config.lang,
            oauth2: config
                .oauth2
                .clone()
                .map(|oauth2| OAuth2Client::new(&config.name, oauth2, vault)),
            client: super::http_client(timeout)?,
            seed: config.format == WebhookFormat::Seed,
            dry_run: config.dry_run,
        })
    }

    fn request(&self, body: &[u8], id: &str, token: Option<&Secret>) -> reqwest::RequestBuilder {
        let mut request = self
            .client
            .post(self.url.expose())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", id)
            .body(body.to_vec());
        if let Some(token) = token {
            request = request.bearer_auth(token.expose());
        }
        request
    }

    async fn call(
        &self,
        body: &[u8],
        id: &str,
        token: Option<&Secret>,
    ) -> Result<reqwest::Response, DeliveryError> {
        self.request(body, id, token)
            .send()
            .await
            .map_err(|e| transport_error("webhook", e))
    }
}

impl Destination for Webhook {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "webhook"
    }

    fn takes_pushes(&self) -> bool {
        self.seed
    }

    fn dry_run(&self) -> bool {
        self.dry_run
    }

    fn deliver<'a>(&'a self, notification: &'a Notification) -> Delivery<'a> {
        Box::pin(async move {
            let body = if self.seed {
                let Some(push) = &notification.push else {
                    return Err(DeliveryError::Refused {
                        reason: "a seed webhook takes trigger pushes only".into(),
                    });
                };
                push.seed_json().to_string()
            } else {
                body(self.template.as_ref(), notification, self.lang).to_string()
            };
            if self.dry_run {
                let push = notification.push.as_ref();
                tracing::info!(
                    destination = %self.name,
                    trigger = push.map(|p| p.trigger.as_str()).unwrap_or(""),
                    segment = push.and_then(|p| p.segment.as_deref()).unwrap_or(""),
                    users = push.map_or(0, |p| p.events.len()),
                    bytes = body.len(),
                    "dry run: not sent"
                );
                return Ok(());
            }
            let body = body.as_bytes();
            let Some(oauth2) = &self.oauth2 else {
                let response = self.call(body, &notification.id, None).await?;
                return classify("webhook", response).await.map(drop);
            };
            let response = oauth2
                .send(&self.client, "webhook", |token| {
                    self.request(body, &notification.id, Some(token))
                })
                .await?;
            match classify("webhook", response).await {
                Ok(_) => Ok(()),
                // The receiver's answer may echo the bearer token it was shown.
                Err(e) => Err(oauth2.scrub_error(e).await),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn templates_insert_values_without_breaking_the_json() {
        let mut n = Notification::example();
        n.notices[0].summary = "\"}, {\"evil\": true".into();
        let t: Value = serde_json::from_str(
            r#"{"text": "{{ rule }}: {{summary}} ({{count}})", "alert": "{{notification}}", "id": "{{id}}"}"#,
        )
        .unwrap();
        let b = body(Some(&t), &n, Lang::En);
        assert_eq!(b["text"], "cpa_high: \"}, {\"evil\": true (1)");
        assert_eq!(b["alert"]["id"], "n-0123456789abcdef");
        assert_eq!(b["id"], "n-0123456789abcdef");
        assert_eq!(b.as_object().unwrap().len(), 3);
        // The default body is the notification itself.
        let plain = body(None, &n, Lang::En);
        assert_eq!(serde_json::from_value::<Notification>(plain).unwrap(), n);
    }

    #[test]
    fn unknown_template_variables_are_named() {
        let config = WebhookConfig {
            name: "w".into(),
            url: Secret("http://127.0.0.1/x".into()),
            format: WebhookFormat::Template,
            template: Some(r#"{"a": "{{nope}}"}"#.into()),
            oauth2: None,
            lang: Lang::En,
            timeout_seconds: 5,
            interval: None,
            dry_run: false,
        };
        let e = config.validate().unwrap_err().to_string();
        assert!(e.contains(".template") && e.contains("{{nope}}"), "{e}");
    }

    fn seed(dry_run: bool) -> Webhook {
        Webhook::new(&WebhookConfig {
            name: "crm-push".into(),
            // Nothing listens there: a call would fail.
            url: Secret("http://127.0.0.1:9/push".into()),
            format: WebhookFormat::Seed,
            template: None,
            oauth2: None,
            lang: Lang::En,
            timeout_seconds: 1,
            interval: Some("5s".into()),
            dry_run,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn a_seed_webhook_takes_pushes_only_and_a_dry_run_sends_nothing() {
        let live = seed(false);
        assert!(live.takes_pushes());
        // An alert notification is not a push: refused, never retried.
        let refused = live.deliver(&Notification::example()).await.unwrap_err();
        assert!(
            matches!(refused, DeliveryError::Refused { .. }),
            "{refused}"
        );
        let push = Notification {
            push: Some(vedetta_core::act::push::Push {
                trigger: "cpa_alto".into(),
                kind: "segment_cpa".into(),
                segment: Some("costi > 20€".into()),
                group: vec![],
                signal: None,
                events: vec![],
            }),
            ..Notification::example()
        };
        // Live, the unreachable receiver is a retryable failure; in a dry run, delivered.
        assert!(matches!(
            live.deliver(&push).await,
            Err(DeliveryError::Retry { .. })
        ));
        assert_eq!(seed(true).deliver(&push).await, Ok(()));
    }

    #[test]
    fn a_push_interval_is_a_span_from_a_second_to_an_hour_and_only_for_seed() {
        let mut c = WebhookConfig {
            name: "w".into(),
            url: Secret("http://127.0.0.1/x".into()),
            format: WebhookFormat::Seed,
            template: None,
            oauth2: None,
            lang: Lang::En,
            timeout_seconds: 5,
            interval: None,
            dry_run: false,
        };
        assert_eq!(c.push_interval().unwrap(), Some(DEFAULT_PUSH_INTERVAL));
        c.interval = Some("2h".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("alerts.destinations[\"w\"].interval"), "{e}");
        c.format = WebhookFormat::Notification;
        c.interval = Some("30s".into());
        assert!(c.validate().unwrap_err().to_string().contains(".interval"));
        c.interval = None;
        assert_eq!(c.push_interval().unwrap(), None);
    }
}
