//! A CRM destination (ActiveCampaign, Mailchimp) fed by trigger pushes (issue 12, part 3).
//!
//! The outbox holds the push as the trigger engine made it: pseudonyms, never identity.
//! At delivery the push's users are looked up in the identity store
//! ([`crate::identity::crm_users`]): users without marketing consent or without a stored
//! identity are withheld (counted in the log line, never named by identity), the others
//! go as [`CrmUser`](crate::watch::crm::CrmUser)s with the trigger's tag and the event's
//! product and cart, in batches of at most [`CrmDestination::max_batch_users`]. Every CRM
//! write is an upsert or a set operation, so a retried delivery leaves the CRM as once.

use crate::crypto::Crypto;
use crate::identity::{Selected, crm_users};
use crate::watch::crm::{CrmBatch, CrmDestination, MAX_STRING_CHARS};
use crate::watch::destination::{Delivery, DeliveryError, Destination};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use vedetta_core::act::push::Push;
use vedetta_core::watch::notification::Notification;
use vedetta_store::IdentityStore;

/// How often trigger pushes go to a CRM destination (issue 12: every 30 seconds).
pub const CRM_PUSH_INTERVAL: Duration = Duration::from_secs(30);

/// Users of pushes delivered to CRM destinations, since start: sent, and withheld by
/// reason, counted once per delivered push (a push retried five times counts its users
/// once); delivery attempts are counted apart. Numbers only: no identity or pseudonym is
/// ever a label.
#[derive(Debug, Default)]
pub struct CrmPushCounters {
    pub sent: AtomicU64,
    pub withheld_no_consent: AtomicU64,
    pub withheld_no_identity: AtomicU64,
    pub withheld_unreadable: AtomicU64,
    /// Delivery attempts of CRM pushes that succeeded / failed (retried or not).
    pub attempts_delivered: AtomicU64,
    pub attempts_failed: AtomicU64,
}

impl CrmPushCounters {
    /// `(result, count)` of delivery attempts, for the exposition.
    pub fn attempts(&self) -> [(&'static str, u64); 2] {
        [
            ("delivered", self.attempts_delivered.load(Ordering::Relaxed)),
            ("failed", self.attempts_failed.load(Ordering::Relaxed)),
        ]
    }

    /// `(outcome, count)` for the exposition.
    pub fn snapshot(&self) -> [(&'static str, u64); 4] {
        [
            ("sent", self.sent.load(Ordering::Relaxed)),
            (
                "no_consent",
                self.withheld_no_consent.load(Ordering::Relaxed),
            ),
            (
                "no_identity",
                self.withheld_no_identity.load(Ordering::Relaxed),
            ),
            (
                "unreadable",
                self.withheld_unreadable.load(Ordering::Relaxed),
            ),
        ]
    }
}

/// A CRM destination that takes trigger pushes.
pub struct CrmPushes {
    crm: Arc<dyn CrmDestination>,
    identities: Arc<IdentityStore>,
    crypto: Arc<Crypto>,
    counters: Arc<CrmPushCounters>,
}

impl std::fmt::Debug for CrmPushes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrmPushes")
            .field("name", &self.crm.name())
            .field("kind", &self.crm.kind())
            .finish()
    }
}

impl CrmPushes {
    pub fn new(
        crm: Arc<dyn CrmDestination>,
        identities: Arc<IdentityStore>,
        crypto: Arc<Crypto>,
        counters: Arc<CrmPushCounters>,
    ) -> Self {
        Self {
            crm,
            identities,
            crypto,
            counters,
        }
    }
}

/// The users of a push, one entry per user (the latest event wins), with what the trigger
/// says about them: its `tag`, the `product_id` to offer, an abandoned cart's products and
/// value.
pub fn selected_users(push: &Push) -> Vec<Selected> {
    let mut by_user: BTreeMap<&str, usize> = BTreeMap::new();
    let mut out: Vec<Selected> = Vec::new();
    for event in &push.events {
        let mut tags = Vec::new();
        if let Some(tag) = &event.tag {
            tags.push(tag.clone());
        }
        let mut fields = BTreeMap::new();
        if let Some(product) = &event.product_id {
            fields.insert("product".to_string(), product.clone());
        }
        if !event.product_ids.is_empty() {
            fields.insert("products".to_string(), products(&event.product_ids));
        }
        if let Some(value) = event.cart_value {
            fields.insert("cart_value".to_string(), format!("{value:.2}"));
        }
        let selected = Selected {
            pseudonym: event.user.clone(),
            tags,
            fields,
            events: Vec::new(),
        };
        match by_user.get(event.user.as_str()) {
            Some(&at) => {
                let earlier = &mut out[at];
                for tag in selected.tags {
                    if !earlier.tags.contains(&tag) {
                        earlier.tags.push(tag);
                    }
                }
                earlier.fields.extend(selected.fields);
            }
            None => {
                by_user.insert(&event.user, out.len());
                out.push(selected);
            }
        }
    }
    out
}

/// A cart's product ids as one field value: comma-separated, the latest ones that fit in
/// a CRM string ([`MAX_STRING_CHARS`]), whole ids only. Joined whole, a full cart of long
/// ids overflowed it and the batch was refused for every user in it.
fn products(ids: &[String]) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut chars = 0;
    for id in ids.iter().rev() {
        let more = id.chars().count() + usize::from(!kept.is_empty());
        if chars + more > MAX_STRING_CHARS {
            break;
        }
        chars += more;
        kept.push(id);
    }
    kept.reverse();
    kept.join(",")
}

impl Destination for CrmPushes {
    fn name(&self) -> &str {
        self.crm.name()
    }

    fn kind(&self) -> &'static str {
        self.crm.kind()
    }

    fn min_interval(&self) -> Duration {
        self.crm.min_interval()
    }

    fn takes_pushes(&self) -> bool {
        true
    }

    fn deliver<'a>(&'a self, notification: &'a Notification) -> Delivery<'a> {
        Box::pin(async move {
            let Some(push) = &notification.push else {
                return Err(crate::watch::crm::not_for_alerts(self.crm.kind()));
            };
            let selected = selected_users(push);
            let (mut users, mut withheld) = crm_users(&self.identities, &self.crypto, selected)
                .map_err(|e| DeliveryError::Retry {
                    after: Some(Duration::from_secs(5)),
                    reason: format!("the identity store: {e}"),
                })?;
            // These CRMs key contacts by e-mail: a user with a CRM id only is not sent, and
            // is counted withheld for want of an identity they can use, not `sent`.
            let before = users.len();
            users.retain(|u| u.email.is_some());
            withheld.no_identity += (before - users.len()) as u64;
            tracing::debug!(
                destination = self.crm.name(),
                trigger = %push.trigger,
                sent = users.len(),
                withheld_no_consent = withheld.no_consent,
                withheld_no_identity = withheld.no_identity,
                withheld_unreadable = withheld.unreadable,
                "trigger push to a CRM"
            );
            let c = &self.counters;
            let per_batch = self.crm.max_batch_users().max(1);
            let mut refused = Vec::new();
            for (index, chunk) in users.chunks(per_batch).enumerate() {
                // The outbox id is stable across retries; the chunk index keeps the ids of
                // one push's batches apart (Mailchimp member events carry it).
                let id = if index == 0 {
                    notification.id.clone()
                } else {
                    format!("{}#{index}", notification.id)
                };
                let batch = CrmBatch {
                    id,
                    trigger: push.trigger.clone(),
                    users: chunk.to_vec(),
                };
                // A refused batch (users the CRM refuses) does not keep the next batches
                // from it; a retry stops here.
                match self.crm.push(&batch).await {
                    Ok(()) => {}
                    Err(DeliveryError::Refused { reason }) => refused.push(reason),
                    Err(e) => {
                        c.attempts_failed.fetch_add(1, Ordering::Relaxed);
                        return Err(e);
                    }
                }
            }
            if let Err(e) = crate::watch::crm::refused_users(refused) {
                c.attempts_failed.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
            // Counted once, when the whole push is delivered: retries do not inflate them.
            c.attempts_delivered.fetch_add(1, Ordering::Relaxed);
            c.sent.fetch_add(users.len() as u64, Ordering::Relaxed);
            c.withheld_no_consent
                .fetch_add(withheld.no_consent, Ordering::Relaxed);
            c.withheld_no_identity
                .fetch_add(withheld.no_identity, Ordering::Relaxed);
            c.withheld_unreadable
                .fetch_add(withheld.unreadable, Ordering::Relaxed);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use vedetta_core::act::push::PushEvent;

    fn event(user: &str, product: Option<&str>, tag: Option<&str>) -> PushEvent {
        PushEvent {
            user: user.into(),
            kind: "page_view".into(),
            value: None,
            at_ms: 1,
            product_id: product.map(Into::into),
            product_ids: vec![],
            cart_value: None,
            tag: tag.map(Into::into),
        }
    }

    #[test]
    fn a_push_becomes_one_entry_per_user_with_tag_product_and_cart() {
        let mut cart = event("bb", None, None);
        cart.product_ids = vec!["P-1".into(), "P-2".into()];
        cart.cart_value = Some(89.5);
        let push = Push {
            trigger: "t".into(),
            kind: "tag".into(),
            segment: None,
            group: vec![],
            signal: None,
            events: vec![
                event("aa", Some("P-7"), Some("vip")),
                cart,
                event("aa", Some("P-8"), Some("customer")),
            ],
        };
        let users = selected_users(&push);
        assert_eq!(users.len(), 2);
        assert_eq!(users[0].pseudonym, "aa");
        assert_eq!(users[0].tags, ["vip", "customer"]);
        assert_eq!(
            users[0].fields["product"], "P-8",
            "the latest event's product"
        );
        assert_eq!(users[1].fields["products"], "P-1,P-2");
        assert_eq!(users[1].fields["cart_value"], "89.50");
    }

    /// A consenting user with a CRM id and no e-mail: ActiveCampaign and Mailchimp key
    /// contacts by e-mail and skip them, yet the push counted them `sent`, so the users
    /// that never left were neither sent nor withheld by the numbers.
    #[test]
    fn a_user_without_an_email_is_not_counted_sent() {
        use crate::crypto::IdentityField;
        use vedetta_store::IdentityWrite;
        struct Accepting;
        impl CrmDestination for Accepting {
            fn name(&self) -> &str {
                "crm"
            }
            fn kind(&self) -> &'static str {
                "activecampaign"
            }
            fn max_batch_users(&self) -> usize {
                20
            }
            fn push<'a>(&'a self, _batch: &'a CrmBatch) -> Delivery<'a> {
                Box::pin(async { Ok(()) })
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let store = IdentityStore::open(&dir.path().join("identity.redb")).unwrap();
        let crypto = Crypto::from_hex(&"ab".repeat(32), &[]).unwrap();
        let (with_email, crm_only) = ([1u8; 16], [2u8; 16]);
        let hex = |u: [u8; 16]| crate::crypto::hex(&u);
        store
            .apply(&[
                IdentityWrite {
                    user: with_email,
                    ts_ms: 1,
                    marketing: Some(true),
                    email: Some(
                        crypto
                            .seal_identity(IdentityField::Email, &hex(with_email), "a@example.it")
                            .unwrap(),
                    ),
                    crm_id: None,
                },
                IdentityWrite {
                    user: crm_only,
                    ts_ms: 1,
                    marketing: Some(true),
                    email: None,
                    crm_id: Some(
                        crypto
                            .seal_identity(IdentityField::CrmId, &hex(crm_only), "42")
                            .unwrap(),
                    ),
                },
            ])
            .unwrap();
        let counters = Arc::new(CrmPushCounters::default());
        let pushes = CrmPushes::new(
            Arc::new(Accepting),
            Arc::new(store),
            Arc::new(crypto),
            counters.clone(),
        );
        let mut n = Notification::example();
        n.push = Some(Push {
            trigger: "t".into(),
            kind: "tag".into(),
            segment: None,
            group: vec![],
            signal: None,
            events: vec![
                event(&hex(with_email), None, Some("vip")),
                event(&hex(crm_only), None, Some("vip")),
            ],
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(pushes.deliver(&n)).unwrap();
        assert_eq!(counters.sent.load(Ordering::Relaxed), 1);
        assert_eq!(counters.withheld_no_identity.load(Ordering::Relaxed), 1);
    }

    /// A full cart (16 lines) of long product ids (Shopify's are like
    /// `gid://shopify/ProductVariant/44812345678901`) joined into `products` passed the
    /// 255 characters a CRM field may hold, so `CrmBatch::validate` refused the whole batch:
    /// every user in it dead-lettered for one user's cart.
    #[test]
    fn a_full_cart_of_long_product_ids_still_makes_a_valid_batch() {
        let mut cart = event(&"ab".repeat(16), None, None);
        cart.product_ids = (0..16)
            .map(|i| format!("gid://shopify/ProductVariant/448123456789{i:02}"))
            .collect();
        let push = Push {
            trigger: "t".into(),
            kind: "abandoned_cart".into(),
            segment: None,
            group: vec![],
            signal: None,
            events: vec![cart],
        };
        let selected = selected_users(&push).remove(0);
        let products = selected.fields["products"].clone();
        let batch = CrmBatch {
            id: "b".into(),
            trigger: "t".into(),
            users: vec![crate::watch::crm::CrmUser {
                pseudonym: selected.pseudonym,
                email: Some("a@example.it".into()),
                crm_id: None,
                tags: selected.tags,
                fields: selected.fields,
                events: selected.events,
            }],
        };
        batch.validate().unwrap();
        // Whole ids only, the cart's latest last.
        assert!(products.ends_with("gid://shopify/ProductVariant/44812345678915"));
        assert!(products.split(',').all(|id| id.len() == 43), "{products}");
        assert_eq!(
            products.split(',').count(),
            5,
            "as many as fit in 255 characters"
        );
    }
}
