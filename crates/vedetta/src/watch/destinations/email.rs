//! E-mail over SMTP (lettre on tokio, rustls with `ring`): STARTTLS, implicit TLS or plain
//! (for a local relay or test server), optional authentication, a text and an HTML part, in
//! Italian or English. The `Message-ID` is derived from the notification id, so a resend
//! after a crash is recognisably the same message.

use super::text::{self, Lang, escape};
use super::{DeliveryError, Destination, Secret, check_timeout, key_error};
use crate::watch::destination::Delivery;
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;
use std::time::Duration;
use vedetta_core::watch::notification::Notification;

/// How the connection to the SMTP server is secured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS, required (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// No TLS at all: only for a relay on the same host or a test server.
    None,
}

/// The most recipients of one destination.
const MAX_RECIPIENTS: usize = 50;

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    pub name: String,
    pub host: String,
    /// Default: 587 for STARTTLS, 465 for implicit TLS, 25 for none.
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: SmtpTls,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// `Vedetta <vedetta@example.com>`.
    pub from: String,
    pub to: Vec<String>,
    #[serde(default)]
    pub lang: Lang,
    #[serde(default = "default_prefix")]
    pub subject_prefix: String,
    #[serde(default = "super::default_timeout_seconds")]
    pub timeout_seconds: u64,
}

fn default_prefix() -> String {
    "[Vedetta]".into()
}

struct Checked {
    from: Mailbox,
    to: Vec<Mailbox>,
    port: u16,
    timeout: Duration,
}

impl EmailConfig {
    fn check(&self) -> anyhow::Result<Checked> {
        let name = &self.name;
        if self.host.trim().is_empty() || self.host.len() > 253 {
            return Err(key_error(name, "host", "must be a host name or address"));
        }
        let port = match (self.port, self.tls) {
            (Some(0), _) => return Err(key_error(name, "port", "must be between 1 and 65535")),
            (Some(p), _) => p,
            (None, SmtpTls::Starttls) => 587,
            (None, SmtpTls::Implicit) => 465,
            (None, SmtpTls::None) => 25,
        };
        if self.username.is_some() != self.password.is_some() {
            return Err(key_error(
                name,
                "password",
                "username and password go together",
            ));
        }
        let from = self
            .from
            .parse::<Mailbox>()
            .map_err(|e| key_error(name, "from", format!("not an e-mail address: {e}")))?;
        if self.to.is_empty() || self.to.len() > MAX_RECIPIENTS {
            return Err(key_error(
                name,
                "to",
                format!("must list 1 to {MAX_RECIPIENTS} addresses"),
            ));
        }
        let to = self
            .to
            .iter()
            .map(|t| {
                t.parse::<Mailbox>().map_err(|e| {
                    key_error(name, "to", format!("{t:?} is not an e-mail address: {e}"))
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        if self.subject_prefix.chars().count() > 64 || self.subject_prefix.contains(['\r', '\n']) {
            return Err(key_error(
                name,
                "subject_prefix",
                "must be one line of at most 64 characters",
            ));
        }
        let timeout = check_timeout(name, self.timeout_seconds)?;
        Ok(Checked {
            from,
            to,
            port,
            timeout,
        })
    }

    pub(super) fn validate(&self) -> anyhow::Result<()> {
        self.check().map(drop)
    }
}

pub struct Email {
    name: String,
    from: Mailbox,
    to: Vec<Mailbox>,
    lang: Lang,
    subject_prefix: String,
    /// The bound of one whole SMTP exchange: lettre's own timeout covers single reads and
    /// writes on some paths only, and a server that never answers must not hold the sender.
    timeout: Duration,
    transport: AsyncSmtpTransport<Tokio1Executor>,
}

impl std::fmt::Debug for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Email")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Email {
    pub fn new(config: &EmailConfig) -> anyhow::Result<Email> {
        let checked = config.check()?;
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tls = match config.tls {
            SmtpTls::None => Tls::None,
            SmtpTls::Starttls | SmtpTls::Implicit => {
                let params = TlsParameters::new(config.host.clone())
                    .map_err(|e| key_error(&config.name, "tls", e))?;
                if config.tls == SmtpTls::Starttls {
                    Tls::Required(params)
                } else {
                    Tls::Wrapper(params)
                }
            }
        };
        let mut builder =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(config.host.clone())
                .port(checked.port)
                .tls(tls)
                .timeout(Some(checked.timeout));
        if let (Some(user), Some(password)) = (&config.username, &config.password) {
            builder =
                builder.credentials(Credentials::new(user.clone(), password.expose().to_owned()));
        }
        Ok(Email {
            name: config.name.clone(),
            from: checked.from,
            to: checked.to,
            lang: config.lang,
            subject_prefix: config.subject_prefix.clone(),
            timeout: checked.timeout,
            transport: builder.build(),
        })
    }

    /// The message of `notification` (public for the demo inbox and tests).
    pub fn message(&self, notification: &Notification) -> Result<Message, DeliveryError> {
        let (subject, plain, html) = render(notification, self.lang, &self.subject_prefix);
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(subject)
            .message_id(Some(message_id(&notification.id)));
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        builder
            .multipart(MultiPart::alternative_plain_html(plain, html))
            .map_err(|e| DeliveryError::Refused {
                reason: format!("the e-mail cannot be built: {e}"),
            })
    }
}

/// `<id@vedetta>`, with any character outside `[A-Za-z0-9._-]` hex-escaped: the id is
/// ours, but a header is no place to trust that.
pub fn message_id(id: &str) -> String {
    let mut local = String::new();
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            local.push(b as char);
        } else {
            local.push_str(&format!("={b:02X}"));
        }
    }
    format!("<{local}@vedetta>")
}

/// Subject, text part and HTML part.
pub fn render(notification: &Notification, lang: Lang, prefix: &str) -> (String, String, String) {
    let subject = format!("{prefix} {}", text::title(notification, lang))
        .replace(['\r', '\n'], " ")
        .trim()
        .to_owned();
    let described: Vec<_> = notification
        .notices
        .iter()
        .map(|n| text::describe(notification, n, lang))
        .collect();
    let plain = described
        .iter()
        .map(text::NoticeText::plain)
        .collect::<Vec<_>>()
        .join("\n\n");
    let mut html = String::from("<!doctype html><html><body style=\"font-family:sans-serif\">");
    html.push_str(&format!(
        "<h2>{}</h2>",
        escape(&text::title(notification, lang))
    ));
    let link_label = match lang {
        Lang::It => "Apri il dettaglio",
        Lang::En => "Open the drill-down",
    };
    for d in &described {
        html.push_str("<div style=\"margin:1em 0\">");
        html.push_str(&format!("<p><strong>{}</strong><br>", escape(&d.headline)));
        for line in [&d.group, &d.summary, &d.measure] {
            if !line.is_empty() {
                html.push_str(&format!("{}<br>", escape(line)));
            }
        }
        if let Some(c) = &d.contributor {
            html.push_str(&format!("{}<br>", escape(c)));
        }
        html.push_str(&format!(
            "{}<br><a href=\"{}\">{link_label}</a></p></div>",
            escape(&d.window),
            escape(&d.link)
        ));
    }
    html.push_str("</body></html>");
    (subject, plain, html)
}

impl Destination for Email {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "email"
    }

    fn deliver<'a>(&'a self, notification: &'a Notification) -> Delivery<'a> {
        Box::pin(async move {
            let message = self.message(notification)?;
            let sent = tokio::time::timeout(self.timeout, self.transport.send(message)).await;
            let Ok(sent) = sent else {
                return Err(DeliveryError::Retry {
                    after: None,
                    reason: format!("SMTP: no answer within {:?}", self.timeout),
                });
            };
            match sent {
                Ok(_) => Ok(()),
                // 5xx: the server refused this message (a recipient, the size, the
                // credentials); the same message would be refused again.
                Err(e) if e.is_permanent() => Err(DeliveryError::Refused {
                    reason: format!("SMTP: {e}"),
                }),
                Err(e) => Err(DeliveryError::Retry {
                    after: None,
                    reason: format!("SMTP: {e}"),
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_stable_and_header_safe() {
        assert_eq!(message_id("n-0123abc"), "<n-0123abc@vedetta>");
        assert_eq!(message_id("a b>\r\n"), "<a=20b=3E=0D=0A@vedetta>");
    }

    #[test]
    fn the_italian_mail_carries_the_numbers_in_italian_format() {
        let n = Notification::example();
        let (subject, plain, html) = render(&n, Lang::It, "[Vedetta]");
        assert_eq!(
            subject,
            "[Vedetta] ATTIVO cpa_high: channel=paid_search, campaign=brand"
        );
        assert!(
            plain.contains("23,40 €") && plain.contains("soglia 20,00 €"),
            "{plain}"
        );
        assert!(
            html.contains("href=\"http://127.0.0.1:8080/?channel=paid_search&amp;campaign=brand\"")
        );
    }
}
