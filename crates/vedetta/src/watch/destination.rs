//! The one trait every destination implements, and its contract.
//!
//! A destination turns a [`Notification`] into one request to the outside world (a Slack
//! message, an e-mail, alerts posted to Alertmanager, a webhook call) and says how it went.
//! The outbox sender (`super::sender`) owns everything around that call: it delivers each
//! notification at least once, one at a time per destination and in enqueue order, retries
//! with exponential backoff and jitter, spaces messages to one destination by
//! [`Destination::min_interval`], times each call out, and moves a notification it cannot
//! deliver to the dead-letter list. So a destination:
//!
//! - makes **one attempt** per call and never retries, sleeps or queues by itself;
//! - is **idempotent at the receiver** where the receiver allows it: it sends
//!   [`Notification::id`] (as an `Idempotency-Key` header, Alertmanager's alert identity,
//!   a `Message-ID`), since a crash between the send and the outbox's "sent" loses that
//!   knowledge and the same notification goes again;
//! - answers [`DeliveryError::Retry`] for anything that may pass later (timeouts, refused
//!   connections, 5xx, 408, 429, an expired token that could not be refreshed), with the
//!   receiver's own delay when it gave one (`Retry-After`): a rate limit is never fatal;
//! - answers [`DeliveryError::Refused`] only when the receiver rejected the message itself
//!   and the same bytes can never succeed (a 400 naming the payload, a 404 webhook URL, a
//!   550 recipient): it goes to the dead-letter list at once, where a person can read it and
//!   retry it after fixing the configuration;
//! - never panics, never logs secrets (tokens, passwords, webhook URLs' secret parts), and
//!   bounds every wait by a timeout of its own (the sender also times calls out).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use vedetta_core::watch::notification::Notification;

/// The future a delivery returns.
pub type Delivery<'a> = Pin<Box<dyn Future<Output = Result<(), DeliveryError>> + Send + 'a>>;

/// Why a delivery did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// It may pass later; `after` is the receiver's requested delay, when it gave one.
    #[error("retry{}: {reason}", after.map(|a| format!(" after {a:?}")).unwrap_or_default())]
    Retry {
        after: Option<Duration>,
        reason: String,
    },
    /// The receiver rejected this message; the same bytes can never succeed.
    #[error("refused: {reason}")]
    Refused { reason: String },
}

/// A place notifications go. See the module docs for the contract.
pub trait Destination: Send + Sync + 'static {
    /// The configured name (`slack-marketing`).
    fn name(&self) -> &str;

    /// `slack`, `email`, `alertmanager` or `webhook`.
    fn kind(&self) -> &'static str;

    /// The least time between two messages to this destination (Slack's incoming webhooks:
    /// one per second).
    fn min_interval(&self) -> Duration {
        Duration::ZERO
    }

    /// Whether it takes trigger pushes (issue 12: `Notification::push`); a destination that
    /// does not is never named by a trigger.
    fn takes_pushes(&self) -> bool {
        false
    }

    /// Whether it is a dry run: a delivery logs what it would send and sends nothing (a
    /// push's firings are then recorded `dry_run`, not `delivered`).
    fn dry_run(&self) -> bool {
        false
    }

    /// One attempt to deliver `notification`.
    fn deliver<'a>(&'a self, notification: &'a Notification) -> Delivery<'a>;
}
