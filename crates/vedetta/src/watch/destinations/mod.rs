//! The destinations, configured from `[[alerts.destinations]]`:
//!
//! ```toml
//! [[alerts.destinations]]
//! name = "slack-marketing"
//! kind = "slack"                 # slack | email | alertmanager | webhook | activecampaign | mailchimp
//! url = "https://hooks.slack.com/services/…"
//! lang = "it"                    # it | en (default en)
//! ```
//!
//! Each kind's keys are in its config struct ([`SlackConfig`], [`EmailConfig`],
//! [`AlertmanagerConfig`], [`WebhookConfig`]); unknown keys are refused, and every error
//! names the destination and the key.

pub mod activecampaign;
pub mod alertmanager;
pub mod crm_push;
pub mod email;
pub mod inbox;
pub mod mailchimp;
pub mod slack;
pub mod text;
pub mod webhook;

pub use activecampaign::ActiveCampaignConfig;
pub use alertmanager::AlertmanagerConfig;
pub use email::{EmailConfig, SmtpTls};
pub use inbox::InboxConfig;
pub use mailchimp::MailchimpConfig;
pub use slack::SlackConfig;
pub use text::Lang;
pub use webhook::{OAuth2Config, WebhookConfig, WebhookFormat};

use super::crm::CrmDestination;
use super::destination::{DeliveryError, Destination};
use super::oauth2::TokenVault;
use anyhow::{Context, bail};
use serde::Deserialize;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// A secret from the configuration (a webhook URL, a password, a client secret): never
/// printed by `Debug`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// One `[[alerts.destinations]]` entry.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DestinationConfig {
    Slack(SlackConfig),
    Email(EmailConfig),
    Alertmanager(AlertmanagerConfig),
    Webhook(WebhookConfig),
    /// The server's own inbox (`/inbox`): nothing leaves the server.
    Inbox(InboxConfig),
    /// ActiveCampaign API v3: takes user batches from triggers (`watch::crm`).
    #[serde(rename = "activecampaign")]
    ActiveCampaign(ActiveCampaignConfig),
    /// Mailchimp Marketing API: takes user batches from triggers (`watch::crm`).
    Mailchimp(MailchimpConfig),
}

/// The longest name of a destination, and what it may contain: it is a label in
/// `/metrics` and a key in the outbox.
const MAX_NAME_CHARS: usize = 64;

fn default_timeout_seconds() -> u64 {
    10
}

/// A configuration error, naming the destination and the key.
pub(crate) fn key_error(name: &str, key: &str, message: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("alerts.destinations[{name:?}].{key}: {message}")
}

pub(crate) fn check_timeout(name: &str, seconds: u64) -> anyhow::Result<Duration> {
    if !(1..=300).contains(&seconds) {
        return Err(key_error(
            name,
            "timeout_seconds",
            "must be between 1 and 300",
        ));
    }
    Ok(Duration::from_secs(seconds))
}

pub(crate) fn check_url(name: &str, key: &str, url: &str) -> anyhow::Result<reqwest::Url> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| key_error(name, key, format!("not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(key_error(
            name,
            key,
            "must be an http:// or https:// URL with a host",
        ));
    }
    Ok(parsed)
}

impl DestinationConfig {
    pub fn name(&self) -> &str {
        match self {
            DestinationConfig::Slack(c) => &c.name,
            DestinationConfig::Email(c) => &c.name,
            DestinationConfig::Alertmanager(c) => &c.name,
            DestinationConfig::Webhook(c) => &c.name,
            DestinationConfig::Inbox(c) => &c.name,
            DestinationConfig::ActiveCampaign(c) => &c.name,
            DestinationConfig::Mailchimp(c) => &c.name,
        }
    }

    /// How often trigger pushes go to this destination; `None` when it takes none.
    pub fn push_interval(&self) -> Option<Duration> {
        match self {
            DestinationConfig::Webhook(c) => c.push_interval().ok().flatten(),
            DestinationConfig::ActiveCampaign(_) | DestinationConfig::Mailchimp(_) => {
                Some(crm_push::CRM_PUSH_INTERVAL)
            }
            // The server's own inbox keeps pushes too: the demo's triggers, and a way to try
            // triggers before wiring a CRM.
            DestinationConfig::Inbox(_) => Some(inbox::PUSH_INTERVAL),
            _ => None,
        }
    }

    /// Checks every key; the error names the destination and the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        let name = self.name();
        if name.is_empty()
            || name.chars().count() > MAX_NAME_CHARS
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            bail!(
                "alerts.destinations.name: {name:?} must be 1 to {MAX_NAME_CHARS} letters, digits, '-', '_' or '.'"
            );
        }
        match self {
            DestinationConfig::Slack(c) => c.validate().map(drop),
            DestinationConfig::Email(c) => c.validate().map(drop),
            DestinationConfig::Alertmanager(c) => c.validate().map(drop),
            DestinationConfig::Webhook(c) => c.validate().map(drop),
            DestinationConfig::Inbox(_) => Ok(()),
            // Every key, and that a named `*_env` variable is set.
            DestinationConfig::ActiveCampaign(c) => c.validate().map(drop),
            DestinationConfig::Mailchimp(c) => c.validate().map(drop),
        }
    }
}

/// Builds one destination (validates first). An inbox needs the server's store: see
/// [`build_all`].
pub fn build(config: &DestinationConfig) -> anyhow::Result<Arc<dyn Destination>> {
    build_with(config, None, None)
}

fn build_with(
    config: &DestinationConfig,
    inbox: Option<&vedetta_store::inbox::Inbox>,
    vault: Option<&Arc<TokenVault>>,
) -> anyhow::Result<Arc<dyn Destination>> {
    config.validate()?;
    Ok(match config {
        DestinationConfig::Inbox(c) => match inbox {
            Some(inbox) => Arc::new(inbox::InboxDestination::new(c, inbox.clone())),
            None => bail!(
                "alerts.destinations[{:?}]: an inbox lives in a server's alert store",
                c.name
            ),
        },
        DestinationConfig::Slack(c) => Arc::new(slack::Slack::new(c)?),
        DestinationConfig::Email(c) => Arc::new(email::Email::new(c)?),
        DestinationConfig::Alertmanager(c) => Arc::new(alertmanager::Alertmanager::new(c)?),
        DestinationConfig::Webhook(c) => Arc::new(webhook::Webhook::with_vault(c, vault.cloned())?),
        DestinationConfig::ActiveCampaign(c) => Arc::new(activecampaign::ActiveCampaign::new(c)?),
        DestinationConfig::Mailchimp(c) => Arc::new(mailchimp::Mailchimp::new(c, vault.cloned())?),
    })
}

/// Builds every destination; names must be unique. `inbox` is where `inbox` destinations
/// keep what they receive.
pub fn build_all(
    configs: &[DestinationConfig],
    inbox: Option<&vedetta_store::inbox::Inbox>,
) -> anyhow::Result<Vec<Arc<dyn Destination>>> {
    build_all_in(configs, inbox, None)
}

/// [`build_all`] with a vault where rotated OAuth2 refresh tokens are persisted (the
/// server's, under its data directory).
pub fn build_all_in(
    configs: &[DestinationConfig],
    inbox: Option<&vedetta_store::inbox::Inbox>,
    vault: Option<&Arc<TokenVault>>,
) -> anyhow::Result<Vec<Arc<dyn Destination>>> {
    let mut names = HashSet::new();
    configs
        .iter()
        .map(|c| {
            if !names.insert(c.name()) {
                bail!("alerts.destinations.name: {:?} is used twice", c.name());
            }
            build_with(c, inbox, vault).with_context(|| format!("destination {:?}", c.name()))
        })
        .collect()
}

/// The CRM destinations among `configs`, by name: what trigger pushes call
/// ([`crate::watch::crm`]). Build them once, beside [`build_all_in`], with the same vault.
pub fn build_crm_all(
    configs: &[DestinationConfig],
    vault: Option<&Arc<TokenVault>>,
) -> anyhow::Result<std::collections::BTreeMap<String, Arc<dyn CrmDestination>>> {
    let mut out = std::collections::BTreeMap::new();
    for config in configs {
        config.validate()?;
        let crm: Arc<dyn CrmDestination> = match config {
            DestinationConfig::ActiveCampaign(c) => {
                Arc::new(activecampaign::ActiveCampaign::new(c)?)
            }
            DestinationConfig::Mailchimp(c) => {
                Arc::new(mailchimp::Mailchimp::new(c, vault.cloned())?)
            }
            _ => continue,
        };
        if out.insert(config.name().to_owned(), crm).is_some() {
            bail!(
                "alerts.destinations.name: {:?} is used twice",
                config.name()
            );
        }
    }
    Ok(out)
}

/// A secret given in the configuration (`key`) or named by an environment variable
/// (`key_env`): exactly one of the two. The variable may not start with `VEDETTA_` (those
/// are configuration overrides).
pub(crate) fn resolve_secret(
    name: &str,
    key: &str,
    value: Option<&Secret>,
    env: Option<&str>,
) -> anyhow::Result<Secret> {
    match (value, env) {
        (Some(_), Some(_)) => Err(key_error(
            name,
            key,
            format!("set {key} or {key}_env, not both"),
        )),
        (Some(v), None) if !v.expose().is_empty() => Ok(v.clone()),
        (Some(_), None) => Err(key_error(name, key, "must not be empty")),
        (None, Some(var)) => {
            if var.is_empty() || var.starts_with("VEDETTA_") {
                return Err(key_error(
                    name,
                    &format!("{key}_env"),
                    "names an environment variable not starting with VEDETTA_",
                ));
            }
            match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(Secret(v)),
                _ => Err(key_error(
                    name,
                    &format!("{key}_env"),
                    format!("the environment variable {var} is not set"),
                )),
            }
        }
        (None, None) => Err(key_error(
            name,
            key,
            format!("is required (or {key}_env, naming an environment variable)"),
        )),
    }
}

/// A request with a JSON body (reqwest's `json` feature is not built).
pub(crate) fn with_json(
    request: reqwest::RequestBuilder,
    body: &serde_json::Value,
) -> reqwest::RequestBuilder {
    request
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
}

/// An HTTP client for destinations: rustls with `ring` (the one provider of the tree), no
/// redirects (a redirect must not carry a token elsewhere), its own timeout.
pub(crate) fn http_client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    // Installed by `main` already; a library user (a test) may not have: either way one
    // provider, `ring`.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("vedetta/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the HTTP client")
}

/// The longest `Retry-After` taken from a receiver (the sender's default
/// `max_retry_after`): a receiver's number is hostile input, and it is added to instants
/// (an ActiveCampaign account is held that long), which panics past `Instant`'s range.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(3_600);

/// `Retry-After` in seconds, at most [`MAX_RETRY_AFTER`] (the HTTP-date form is rare from
/// webhooks; it counts as none).
pub(crate) fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(|seconds| Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

/// The longest part of a receiver's error body kept in an error, in characters.
const MAX_BODY_EXCERPT: usize = text::MAX_FIELD_CHARS;

/// The head of a receiver's body kept in an error. A longer body is cut at white space,
/// never inside a word: an e-mail address has no white space, so it is kept whole (and the
/// CRM destinations scrub it, [`crate::watch::crm::scrub`]) or dropped whole, never left as
/// a fragment the scrub cannot recognise.
fn excerpt(body: &str) -> String {
    let body = body.trim();
    let Some((cut, next)) = body.char_indices().nth(MAX_BODY_EXCERPT) else {
        return body.to_owned();
    };
    let head = &body[..cut];
    let kept = if next.is_whitespace() {
        head
    } else {
        head.rfind(char::is_whitespace).map_or("", |at| &head[..at])
    };
    format!("{}…", kept.trim_end())
}

/// Reads a response and maps its status by the contract: 2xx delivered; 408, 425, 429 and
/// 5xx retry (with `Retry-After`); other 4xx refused.
pub(crate) async fn classify(
    what: &str,
    response: reqwest::Response,
) -> Result<String, DeliveryError> {
    let status = response.status();
    let after = retry_after(response.headers());
    // Bounded read: a receiver's body is not ours to hold whole.
    let body = read_bounded(response, 64 * 1024).await;
    if status.is_success() {
        return Ok(body);
    }
    let reason = format!("{what} answered {status}: {}", excerpt(&body));
    if status.is_server_error() || matches!(status.as_u16(), 408 | 425 | 429) {
        Err(DeliveryError::Retry { after, reason })
    } else {
        Err(DeliveryError::Refused { reason })
    }
}

async fn read_bounded(mut response: reqwest::Response, limit: usize) -> String {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = limit.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() >= limit {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Replaces each of `secrets` in an error's text with `<secret>`: for an error made of a
/// receiver's answer, which may echo what it was sent (a proxy, an echoing endpoint). A
/// secret under 8 characters is left alone: no real key is that short, and replacing it
/// everywhere would garble the message.
pub(crate) fn scrub_secrets(error: DeliveryError, secrets: &[&Secret]) -> DeliveryError {
    let texts: Vec<&str> = (secrets.iter())
        .map(|s| s.expose())
        .filter(|s| s.len() >= 8)
        .collect();
    scrub_texts(error, &texts)
}

/// `error` with every occurrence of each non-empty text of `secrets` replaced by
/// `<secret>`.
pub(crate) fn scrub_texts(error: DeliveryError, secrets: &[&str]) -> DeliveryError {
    let scrub = |mut text: String| {
        for secret in secrets.iter().filter(|s| !s.is_empty()) {
            text = text.replace(secret, "<secret>");
        }
        text
    };
    match error {
        DeliveryError::Retry { after, reason } => DeliveryError::Retry {
            after,
            reason: scrub(reason),
        },
        DeliveryError::Refused { reason } => DeliveryError::Refused {
            reason: scrub(reason),
        },
    }
}

/// A transport failure (refused connection, timeout, TLS): retry. The URL is left out of
/// the message, since webhook URLs carry secrets.
pub(crate) fn transport_error(what: &str, error: reqwest::Error) -> DeliveryError {
    DeliveryError::Retry {
        after: None,
        reason: format!("{what}: {}", error.without_url()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Deserialize)]
    struct Alerts {
        destinations: Vec<DestinationConfig>,
    }

    fn parse(toml_text: &str) -> anyhow::Result<Vec<DestinationConfig>> {
        Ok(toml::from_str::<Alerts>(toml_text)?.destinations)
    }

    #[test]
    fn every_kind_parses_and_builds() {
        let configs = parse(
            r#"
            [[destinations]]
            name = "slack-marketing"
            kind = "slack"
            url = "https://hooks.slack.com/services/T/B/x"
            lang = "it"

            [[destinations]]
            name = "mail-team"
            kind = "email"
            host = "smtp.example.com"
            tls = "starttls"
            username = "u"
            password = "p"
            from = "Vedetta <vedetta@example.com>"
            to = ["team@example.com"]
            lang = "it"

            [[destinations]]
            name = "am"
            kind = "alertmanager"
            url = "http://127.0.0.1:9093"

            [[destinations]]
            name = "hook"
            kind = "webhook"
            url = "https://example.com/hook"
            oauth2 = { token_url = "https://example.com/token", client_id = "c", client_secret = "s" }
            "#,
        )
        .unwrap();
        assert_eq!(configs.len(), 4);
        let built = build_all(&configs, None).unwrap();
        let kinds: Vec<_> = built
            .iter()
            .map(|d| (d.name().to_owned(), d.kind()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("slack-marketing".to_owned(), "slack"),
                ("mail-team".to_owned(), "email"),
                ("am".to_owned(), "alertmanager"),
                ("hook".to_owned(), "webhook")
            ]
        );
        assert_eq!(built[0].min_interval(), Duration::from_secs(1));
        // Secrets stay out of Debug.
        let debug = format!("{configs:?}");
        assert!(
            !debug.contains("hooks.slack.com") && !debug.contains("\"p\""),
            "{debug}"
        );
    }

    #[test]
    fn an_excerpt_is_cut_at_white_space_only() {
        assert_eq!(excerpt("  short body \n"), "short body");
        let word = "w".repeat(MAX_BODY_EXCERPT - 5);
        // The word the cut falls in goes whole.
        let body = format!("{word} anna@example.it trails");
        assert_eq!(excerpt(&body), format!("{word}…"));
        // A cut that falls on white space keeps the word before it.
        let exact = format!("{} tail", "v".repeat(MAX_BODY_EXCERPT));
        assert_eq!(
            excerpt(&exact),
            format!("{}…", "v".repeat(MAX_BODY_EXCERPT))
        );
        // No white space at all: nothing of it.
        assert_eq!(excerpt(&"z".repeat(MAX_BODY_EXCERPT + 1)), "…");
    }

    #[test]
    fn a_receivers_retry_after_is_bounded() {
        let with = |value: &str| {
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(reqwest::header::RETRY_AFTER, value.parse().unwrap());
            retry_after(&headers)
        };
        assert_eq!(with("120"), Some(Duration::from_secs(120)));
        assert_eq!(with("18446744073709551615"), Some(MAX_RETRY_AFTER));
        assert_eq!(with("99999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(with("-1"), None);
        assert_eq!(with("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn errors_name_the_destination_and_the_key() {
        let err = |t: &str| {
            let configs = match parse(t) {
                Ok(c) => c,
                Err(e) => return e.to_string(),
            };
            build_all(&configs, None)
                .map(drop)
                .unwrap_err()
                .root_cause()
                .to_string()
        };
        let unknown = err(
            "[[destinations]]\nname = \"s\"\nkind = \"slack\"\nurl = \"https://h/x\"\nchannel = \"#x\"\n",
        );
        assert!(unknown.contains("unknown field `channel`"), "{unknown}");
        let kind = err("[[destinations]]\nname = \"s\"\nkind = \"pager\"\n");
        assert!(kind.contains("pager"), "{kind}");
        let url = err("[[destinations]]\nname = \"s\"\nkind = \"slack\"\nurl = \"ftp://h/x\"\n");
        assert!(url.contains("alerts.destinations[\"s\"].url"), "{url}");
        let port = err(
            "[[destinations]]\nname = \"m\"\nkind = \"email\"\nhost = \"h\"\nport = 0\nfrom = \"a@b.c\"\nto = [\"d@e.f\"]\n",
        );
        assert!(port.contains(".port"), "{port}");
        let to = err(
            "[[destinations]]\nname = \"m\"\nkind = \"email\"\nhost = \"h\"\nfrom = \"a@b.c\"\nto = [\"not an address\"]\n",
        );
        assert!(to.contains(".to"), "{to}");
        let name =
            err("[[destinations]]\nname = \"a b\"\nkind = \"alertmanager\"\nurl = \"http://h\"\n");
        assert!(name.contains("alerts.destinations.name"), "{name}");
        let twice = err(
            "[[destinations]]\nname = \"a\"\nkind = \"alertmanager\"\nurl = \"http://h\"\n[[destinations]]\nname = \"a\"\nkind = \"alertmanager\"\nurl = \"http://h\"\n",
        );
        assert!(twice.contains("used twice"), "{twice}");
        let template = err(
            "[[destinations]]\nname = \"w\"\nkind = \"webhook\"\nurl = \"http://h\"\nformat = \"template\"\n",
        );
        assert!(template.contains(".template"), "{template}");
        let timeout = err(
            "[[destinations]]\nname = \"w\"\nkind = \"webhook\"\nurl = \"http://h\"\ntimeout_seconds = 100000\n",
        );
        assert!(timeout.contains(".timeout_seconds"), "{timeout}");
    }
}
