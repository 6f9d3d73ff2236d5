//! `kind = "inbox"`: keeps notifications in the server's own inbox (`/inbox`,
//! `GET /v1/inbox`) instead of sending them anywhere: what the demo uses, and a way to try
//! rules before wiring Slack or e-mail.

use super::super::destination::{Delivery, DeliveryError, Destination};
use serde::Deserialize;
use vedetta_core::watch::notification::Notification;
use vedetta_store::inbox::Inbox;

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
