//! `kind = "inbox"`: keeps notifications in the server's own inbox (`/inbox`,
//! `GET /v1/inbox`) instead of sending them anywhere: what the demo uses, and a way to try
//! rules before wiring Slack or e-mail. It takes trigger pushes too (every
//! [`PUSH_INTERVAL`]), kept as they would have been sent.

use super::super::destination::{Delivery, DeliveryError, Destination};
use serde::Deserialize;
use vedetta_core::watch::notification::Notification;
use vedetta_store::inbox::Inbox;

/// How often trigger pushes are batched to an inbox.
pub const PUSH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboxConfig {
    pub name: String,
}

/// The destination over the store's inbox.
#[derive(Debug)]
pub struct InboxDestination {
    name: String,
    inbox: Inbox,
}

impl InboxDestination {
    pub fn new(config: &InboxConfig, inbox: Inbox) -> Self {
        Self {
            name: config.name.clone(),
            inbox,
        }
    }
}

impl Destination for InboxDestination {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "inbox"
    }

    fn takes_pushes(&self) -> bool {
        true
    }

    fn deliver<'a>(&'a self, notification: &'a Notification) -> Delivery<'a> {
        Box::pin(async move {
            let inbox = self.inbox.clone();
            let notification = notification.clone();
            let now = crate::watch::sender::wall_ms();
            tokio::task::spawn_blocking(move || inbox.put(&notification, now))
                .await
                .map_err(|e| DeliveryError::Retry {
                    after: None,
                    reason: format!("inbox task: {e}"),
                })?
                .map_err(|e| DeliveryError::Retry {
                    after: None,
                    reason: e.to_string(),
                })
        })
    }
}
