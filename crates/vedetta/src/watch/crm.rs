//! Pushing users to a CRM: the batch a trigger hands over, and the trait every CRM
//! destination (ActiveCampaign, Mailchimp) implements.
//!
//! **Entry point for the trigger wiring**: build the CRM destinations once with
//! [`super::destinations::build_crm_all`] (name → `Arc<dyn CrmDestination>`; pass the
//! server's `AppState::token_vault`, so rotated OAuth2 tokens persist), then for each
//! due batch call [`CrmDestination::push`] with a [`CrmBatch`] of at most
//! [`CrmDestination::max_batch_users`] users, from the outbox sender (one attempt per call,
//! the same [`DeliveryError`] contract as [`super::destination::Destination`]). A batch
//! carries identity, so on disk (an outbox entry) it is stored sealed: [`CrmBatch::seal`]
//! and [`CrmBatch::open`].
//!
//! Only users with marketing consent belong in a batch, and a user without an `email` is
//! skipped by every CRM here, since a CRM keys its contacts by e-mail. Identity (`email`, `crm_id`) never appears in errors,
//! logs or `Debug` output: errors name the user's pseudonym, and receivers' answers are
//! scrubbed of the batch's e-mail addresses before they are kept ([`scrub`]).
//!
//! Idempotency: every write is an upsert or a set operation (contact sync, member `PUT`,
//! tag add), so a batch delivered twice (a crash between the push and the outbox's "sent")
//! leaves the CRM as once. Mailchimp member events are the exception (its API has no
//! idempotency key): their `properties` carry the batch id as `vedetta_batch` so the
//! receiver can tell a repeat.

use super::destination::{Delivery, DeliveryError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// The most users in one batch, whatever the destination.
pub const MAX_BATCH_USERS: usize = 1_000;
/// Bounds of a user's tags, fields and events, and of each string.
pub const MAX_TAGS: usize = 20;
pub const MAX_FIELDS: usize = 20;
pub const MAX_EVENTS: usize = 20;
pub const MAX_STRING_CHARS: usize = 255;

/// One user to push: the pseudonym always, identity only with marketing consent.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct CrmUser {
    /// The user's pseudonym (hex): what errors and logs name.
    pub pseudonym: String,
    /// With marketing consent only; the CRM's key for the contact.
    pub email: Option<String>,
    /// The CRM's own id of the user, when the events carried one.
    pub crm_id: Option<String>,
    /// Tags to add (`vip`, `customer`, `cart_abandoned`).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Field values by Vedetta's name (`product`, `offer`, `cart_value`); each destination
    /// maps the names it is configured for onto its own fields.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// Events to record on the contact (Mailchimp member events).
    #[serde(default)]
    pub events: Vec<CrmEvent>,
}

impl std::fmt::Debug for CrmUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrmUser")
            .field("pseudonym", &self.pseudonym)
            .field("email", &self.email.as_ref().map(|_| "<set>"))
            .field("crm_id", &self.crm_id.as_ref().map(|_| "<set>"))
            .field("tags", &self.tags)
            .field("fields", &self.fields.keys().collect::<Vec<_>>())
            .field("events", &self.events.len())
            .finish()
    }
}

/// An event on a contact: a name and flat string properties.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CrmEvent {
    /// `acquisto`, `carrello_abbandonato`: letters, digits, `_` and `-`, 2 to 30 chars.
    pub name: String,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Event time, epoch milliseconds.
    pub time_ms: i64,
}

/// What one trigger firing sends to one CRM destination.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CrmBatch {
    /// Stable across retries and restarts (the outbox entry's id).
    pub id: String,
    /// The trigger that selected these users.
    pub trigger: String,
    pub users: Vec<CrmUser>,
}

/// Why a batch is not well-formed: names the field and the user's pseudonym.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct BatchError {
    pub field: String,
    pub message: String,
}

fn bad(field: String, message: impl Into<String>) -> BatchError {
    BatchError {
        field,
        message: message.into(),
    }
}

fn check_string(field: &str, value: &str) -> Result<(), BatchError> {
    if value.chars().count() > MAX_STRING_CHARS || value.chars().any(char::is_control) {
        return Err(bad(
            field.to_owned(),
            format!("at most {MAX_STRING_CHARS} characters, no control characters"),
        ));
    }
    Ok(())
}

/// A plausible e-mail address: one `@`, something on each side, a dot in the domain, no
/// spaces. (The CRM is the judge of the rest; this keeps garbage out of URLs and hashes.)
pub fn plausible_email(email: &str) -> bool {
    vedetta_core::intake::email_problem(email).is_none()
}

impl CrmBatch {
    /// Checks every bound; the error names the user (by pseudonym) and the field.
    pub fn validate(&self) -> Result<(), BatchError> {
        check_string("batch.id", &self.id)?;
        check_string("batch.trigger", &self.trigger)?;
        if self.users.len() > MAX_BATCH_USERS {
            return Err(bad(
                "batch.users".into(),
                format!("at most {MAX_BATCH_USERS} users in a batch"),
            ));
        }
        for user in &self.users {
            let at = |f: &str| format!("users[{:?}].{f}", user.pseudonym);
            check_string("users[].pseudonym", &user.pseudonym)?;
            if let Some(email) = &user.email
                && !plausible_email(email)
            {
                return Err(bad(at("email"), "not an e-mail address"));
            }
            if let Some(id) = &user.crm_id {
                check_string(&at("crm_id"), id)?;
            }
            if user.tags.len() > MAX_TAGS
                || user.fields.len() > MAX_FIELDS
                || user.events.len() > MAX_EVENTS
            {
                return Err(bad(
                    at("tags"),
                    format!("at most {MAX_TAGS} tags, {MAX_FIELDS} fields and {MAX_EVENTS} events"),
                ));
            }
            for tag in &user.tags {
                check_string(&at("tags"), tag)?;
                if tag.trim().is_empty() {
                    return Err(bad(at("tags"), "a tag is not blank"));
                }
            }
            for (name, value) in &user.fields {
                check_string(&at("fields"), name)?;
                check_string(&at("fields"), value)?;
            }
            for event in &user.events {
                let name_ok = (2..=30).contains(&event.name.len())
                    && event
                        .name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
                if !name_ok {
                    return Err(bad(
                        at("events.name"),
                        "2 to 30 letters, digits, '_' or '-'",
                    ));
                }
                for (k, v) in &event.properties {
                    check_string(&at("events.properties"), k)?;
                    check_string(&at("events.properties"), v)?;
                }
            }
        }
        Ok(())
    }

    /// The users a CRM can take: those with an e-mail (marketing consent).
    pub fn reachable(&self) -> impl Iterator<Item = (&CrmUser, &str)> {
        self.users
            .iter()
            .filter_map(|u| u.email.as_deref().map(|e| (u, e)))
    }

    /// Replaces this batch's e-mail addresses (in any case, see [`scrub`]) in `text` with
    /// `<email>`.
    pub fn scrub(&self, text: &str) -> String {
        scrub(text, self.users.iter().filter_map(|u| u.email.as_deref()))
    }
}

/// Version of a stored batch (`[format][sealed JSON]`).
pub const CRM_BATCH_FORMAT: u8 = 1;
const BATCH_CONTEXT: &str = "crm_batch";

/// Why stored bytes are not a batch.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoredBatchError {
    #[error("a stored CRM batch of format {0}; this build reads format {CRM_BATCH_FORMAT}")]
    Format(u8),
    #[error("an empty stored CRM batch")]
    Empty,
    #[error("a stored CRM batch does not open: {0}")]
    Sealed(#[from] crate::crypto::CryptoError),
    #[error("a stored CRM batch does not decode: {0}")]
    Body(String),
}

impl CrmBatch {
    /// The batch as it may rest on disk (an outbox entry): identity is sealed, so the whole
    /// batch is, under `privacy.encryption_key` (context `["crm_batch"]`).
    pub fn seal(&self, crypto: &crate::crypto::Crypto) -> Result<Vec<u8>, StoredBatchError> {
        let json = serde_json::to_vec(self).map_err(|e| StoredBatchError::Body(e.to_string()))?;
        let sealed = crypto.seal(&[BATCH_CONTEXT], &json)?;
        let mut out = Vec::with_capacity(1 + sealed.len());
        out.push(CRM_BATCH_FORMAT);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Reads what [`CrmBatch::seal`] wrote.
    pub fn open(crypto: &crate::crypto::Crypto, bytes: &[u8]) -> Result<Self, StoredBatchError> {
        match bytes.split_first() {
            None => Err(StoredBatchError::Empty),
            Some((&CRM_BATCH_FORMAT, sealed)) => {
                let json = crypto.open(&[BATCH_CONTEXT], sealed)?;
                serde_json::from_slice(&json).map_err(|e| StoredBatchError::Body(e.to_string()))
            }
            Some((&other, _)) => Err(StoredBatchError::Format(other)),
        }
    }
}

/// Replaces each of `emails` in `text` with `<email>`, whatever the case of any letter
/// (`ÄNNA@…` for `änna@…`, `STRASSE@…` for `straße@…`).
///
/// Both sides are compared folded, each character upper-cased then lower-cased: that maps
/// the case variants the standard library knows onto one form (`ß` and `SS`, the Kelvin
/// sign and `k`). A match replaces the whole characters it touches. The cost is linear in
/// the text per address: the text is folded once, then each address looked for in it.
pub fn scrub<'a>(text: &str, emails: impl Iterator<Item = &'a str>) -> String {
    // The folded text, and for each of its bytes the byte range of the character it
    // comes from (folding changes lengths: the Kelvin sign is 3 bytes, `k` one).
    let mut folded = String::with_capacity(text.len());
    let mut origin: Vec<(usize, usize)> = Vec::with_capacity(text.len());
    for (at, c) in text.char_indices() {
        folded.extend(fold(c));
        origin.resize(folded.len(), (at, at + c.len_utf8()));
    }
    let mut found: Vec<(usize, usize)> = Vec::new();
    for email in emails {
        let email: String = email.chars().flat_map(fold).collect();
        if email.is_empty() {
            continue;
        }
        for (at, _) in folded.match_indices(email.as_str()) {
            if let (Some(first), Some(last)) = (origin.get(at), origin.get(at + email.len() - 1)) {
                found.push((first.0, last.1));
            }
        }
    }
    if found.is_empty() {
        return text.to_owned();
    }
    found.sort_unstable();
    let mut out = String::with_capacity(text.len());
    // The end of what is already copied or replaced.
    let mut done = 0;
    for (start, end) in found {
        if start >= done {
            out.push_str(&text[done..start]);
            out.push_str("<email>");
            done = end;
        } else {
            // Overlaps the previous match: one `<email>` for both.
            done = done.max(end);
        }
    }
    out.push_str(&text[done..]);
    out
}

/// A character in the form [`scrub`] compares.
fn fold(c: char) -> impl Iterator<Item = char> {
    c.to_uppercase().flat_map(char::to_lowercase)
}

/// A CRM users are pushed to. The contract is [`super::destination::Destination`]'s: one
/// attempt per call, `Retry` for what may pass later (with the receiver's delay), `Refused`
/// only when the same batch can never succeed, no secrets or identity in errors.
pub trait CrmDestination: Send + Sync + 'static {
    /// The configured name.
    fn name(&self) -> &str;

    /// `activecampaign` or `mailchimp`.
    fn kind(&self) -> &'static str;

    /// The most users one [`CrmDestination::push`] takes: the caller splits larger sets,
    /// so that one call fits the sender's call timeout under the CRM's rate limit.
    fn max_batch_users(&self) -> usize;

    /// The least time between two pushes.
    fn min_interval(&self) -> Duration {
        Duration::ZERO
    }

    /// One attempt to push `batch`.
    fn push<'a>(&'a self, batch: &'a CrmBatch) -> Delivery<'a>;
}

/// The answer to an alert notification routed to a CRM: CRMs take user batches.
pub(crate) fn not_for_alerts(kind: &str) -> DeliveryError {
    DeliveryError::Refused {
        reason: format!(
            "a {kind} destination takes user batches from triggers, not alert notifications: \
             name it in a trigger's notify, not in an alert rule's"
        ),
    }
}

/// The outcome of a push in which each user was tried: the users a CRM refused do not keep
/// the others from it, and the push is refused (naming the first) only after the others
/// went. `refused` holds each refusal's reason.
pub(crate) fn refused_users(refused: Vec<String>) -> Result<(), DeliveryError> {
    let mut reasons = refused.into_iter();
    let Some(first) = reasons.next() else {
        return Ok(());
    };
    let more = reasons.count();
    Err(DeliveryError::Refused {
        reason: if more == 0 {
            first
        } else {
            format!("{first} (and {more} more refused)")
        },
    })
}

/// Keeps identity and secrets out of a delivery error's text.
pub(crate) fn scrub_error(batch: &CrmBatch, error: DeliveryError) -> DeliveryError {
    match error {
        DeliveryError::Retry { after, reason } => DeliveryError::Retry {
            after,
            reason: batch.scrub(&reason),
        },
        DeliveryError::Refused { reason } => DeliveryError::Refused {
            reason: batch.scrub(&reason),
        },
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    pub(crate) fn user(p: &str, email: Option<&str>) -> CrmUser {
        CrmUser {
            pseudonym: p.into(),
            email: email.map(str::to_owned),
            crm_id: None,
            tags: vec!["vip".into()],
            fields: BTreeMap::from([("product".into(), "sku-1".into())]),
            events: vec![],
        }
    }

    #[test]
    fn identity_stays_out_of_debug_and_errors() {
        let batch = CrmBatch {
            id: "b1".into(),
            trigger: "t".into(),
            users: vec![user("u1", Some("Anna@Example.it")), user("u2", None)],
        };
        assert!(!format!("{batch:?}").contains("Anna"));
        assert_eq!(
            batch.scrub("member anna@example.IT exists; ANNA@EXAMPLE.IT again"),
            "member <email> exists; <email> again"
        );
        assert_eq!(batch.reachable().count(), 1);
        batch.validate().unwrap();
    }

    /// The scrub compared case ASCII-only: a receiver echoing an address with a non-ASCII
    /// letter in another case (`ÄNNA@…` for `änna@…`) kept it in the error, hence in logs,
    /// `/v1/triggers` and the dead-letter list.
    #[test]
    fn addresses_are_scrubbed_whatever_the_case_of_any_letter() {
        let emails = [
            "änna@café.it",
            "straße@example.de",
            "kelvin@x.it",
            "bob@x.it",
        ];
        for (echoed, scrubbed) in [
            ("ÄNNA@CAFÉ.IT is taken", "<email> is taken"),
            ("Änna@Café.It, änna@café.it", "<email>, <email>"),
            ("STRASSE@EXAMPLE.DE bounced", "<email> bounced"),
            ("Straße@Example.DE bounced", "<email> bounced"),
            // The Kelvin sign (3 bytes) lower-cases to `k` (1 byte): offsets must follow.
            ("\u{212A}ELVIN@X.IT and BOB@X.IT", "<email> and <email>"),
            ("İ BOB@X.IT İ", "İ <email> İ"),
            ("nobody here", "nobody here"),
        ] {
            assert_eq!(scrub(echoed, emails.into_iter()), scrubbed, "{echoed}");
        }
    }

    #[test]
    fn stored_batches_are_sealed_and_versioned() {
        let crypto = crate::crypto::Crypto::from_hex(&"ab".repeat(32), &[]).unwrap();
        let batch = CrmBatch {
            id: "b1".into(),
            trigger: "t".into(),
            users: vec![user("u1", Some("anna@example.it"))],
        };
        let stored = batch.seal(&crypto).unwrap();
        assert_eq!(stored[0], CRM_BATCH_FORMAT);
        assert!(!stored.windows(4).any(|w| w == b"anna"));
        assert_eq!(CrmBatch::open(&crypto, &stored).unwrap(), batch);
        let mut future = stored.clone();
        future[0] = 9;
        assert_eq!(
            CrmBatch::open(&crypto, &future),
            Err(StoredBatchError::Format(9))
        );
        let other = crate::crypto::Crypto::from_hex(&"cd".repeat(32), &[]).unwrap();
        assert!(matches!(
            CrmBatch::open(&other, &stored),
            Err(StoredBatchError::Sealed(_))
        ));
    }

    #[test]
    fn bad_batches_name_the_user_and_the_field() {
        let mut batch = CrmBatch {
            id: "b1".into(),
            trigger: "t".into(),
            users: vec![user("u1", Some("not-an-address"))],
        };
        let e = batch.validate().unwrap_err();
        assert_eq!(e.field, "users[\"u1\"].email");
        batch.users[0].email = Some("a@b.it".into());
        batch.users[0].tags = vec!["x\ny".into()];
        assert!(batch.validate().unwrap_err().field.ends_with(".tags"));
        batch.users[0].tags = vec![];
        batch.users[0].events = vec![CrmEvent {
            name: "a b".into(),
            properties: BTreeMap::new(),
            time_ms: 0,
        }];
        assert!(
            batch
                .validate()
                .unwrap_err()
                .field
                .ends_with(".events.name")
        );
    }
}
