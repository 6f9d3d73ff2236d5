//! ActiveCampaign (API v3): contacts synced by e-mail, tags added, custom fields set.
//!
//! ```toml
//! [[alerts.destinations]]
//! name = "ac"
//! kind = "activecampaign"
//! base_url = "https://youraccount.api-us1.com"   # the account's API URL
//! api_token_env = "AC_API_TOKEN"                  # or api_token = "…"
//! fields = { product = "12", offer = "13" }       # Vedetta field → AC custom field id
//! ```
//!
//! Per user with an e-mail (see [`crate::watch::crm`]):
//! 1. `POST /api/3/contact/sync` `{"contact": {"email", "fieldValues": [{"field", "value"}]}}`
//!    creates or updates the contact by e-mail and sets the mapped custom fields (a field
//!    the user has but the configuration does not map is not sent);
//! 2. each tag's id is looked up once (`GET /api/3/tags?search=`, the name case aside, as
//!    ActiveCampaign compares tags; page by page) or created (`POST /api/3/tags`), then
//!    cached (and looked up afresh once when linking a cached id is refused: the tag was
//!    deleted since);
//! 3. `POST /api/3/contactTags` `{"contactTag": {"contact", "tag"}}` adds it.
//!
//! Every request carries the `Api-Token` header. At most `requests_per_second` (5, the
//! API's limit per account) requests leave per **account** (base URL), shared by every
//! destination on that account (at the lowest rate among them); a 429 holds the whole
//! account for its `Retry-After` and the push is retried by the sender then (every step is
//! idempotent).

use super::{Secret, check_timeout, check_url, classify, key_error, transport_error};
use crate::watch::crm::{self, CrmBatch, CrmDestination, CrmUser};
use crate::watch::destination::{Delivery, DeliveryError, Destination};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::time::Instant;
use vedetta_core::watch::notification::Notification;

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActiveCampaignConfig {
    pub name: String,
    /// `https://<account>.api-us1.com` (no `/api/3`).
    pub base_url: String,
    pub api_token: Option<Secret>,
    /// The environment variable holding the token (instead of `api_token`).
    pub api_token_env: Option<String>,
    /// Vedetta field name → ActiveCampaign custom field id.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    #[serde(default = "default_rate")]
    pub requests_per_second: u32,
    #[serde(default = "super::default_timeout_seconds")]
    pub timeout_seconds: u64,
}

fn default_rate() -> u32 {
    5
}

/// The most users in one push: 20 users are about 40 to 60 requests, 8 to 12 s at 5/s,
/// inside the sender's 30 s call timeout.
const MAX_USERS_PER_PUSH: usize = 20;

impl ActiveCampaignConfig {
    pub(super) fn validate(&self) -> anyhow::Result<(reqwest::Url, Secret, Duration)> {
        let name = &self.name;
        let base = check_url(name, "base_url", &self.base_url)?;
        if base.query().is_some() || base.fragment().is_some() {
            return Err(key_error(name, "base_url", "has no query or fragment"));
        }
        let token = super::resolve_secret(
            name,
            "api_token",
            self.api_token.as_ref(),
            self.api_token_env.as_deref(),
        )?;
        if !(1..=5).contains(&self.requests_per_second) {
            return Err(key_error(
                name,
                "requests_per_second",
                "must be 1 to 5 (ActiveCampaign allows 5 per account)",
            ));
        }
        if self.fields.len() > crm::MAX_FIELDS {
            return Err(key_error(name, "fields", "at most 20 fields"));
        }
        for (field, id) in &self.fields {
            if id.is_empty() || id.len() > 12 || !id.chars().all(|c| c.is_ascii_digit()) {
                return Err(key_error(
                    name,
                    "fields",
                    format!("{field:?}: an ActiveCampaign field id is a number, like \"12\""),
                ));
            }
        }
        Ok((base, token, check_timeout(name, self.timeout_seconds)?))
    }
}

/// Paces the requests to one account; shared by every destination on it. A sliding
/// window: a request leaves only when fewer than the account's rate left in the last
/// second, plus a margin for the jitter between our send and their count.
///
/// The rate is the account's, so the lowest `requests_per_second` of the destinations on
/// it, while they exist ([`PacerLease`]): a destination set lower (to leave room for
/// another integration on the account) is not outpaced by one set higher.
#[derive(Debug)]
struct Pacer {
    /// Each live destination's rate, by its lease.
    rates: Mutex<BTreeMap<u64, u32>>,
    state: tokio::sync::Mutex<PacerState>,
}

/// A destination's share in its account's pacer: its rate counts while it lives.
#[derive(Debug)]
struct PacerLease {
    pacer: Arc<Pacer>,
    id: u64,
}

impl std::ops::Deref for PacerLease {
    type Target = Pacer;
    fn deref(&self) -> &Pacer {
        &self.pacer
    }
}

impl Drop for PacerLease {
    fn drop(&mut self) {
        self.pacer.rates().remove(&self.id);
    }
}

#[derive(Debug, Default)]
struct PacerState {
    /// When the last `per_second` requests left (their slots).
    sent: std::collections::VecDeque<Instant>,
    /// No request before this (a 429's `Retry-After`).
    held_until: Option<Instant>,
}

/// Tags per page of a tag search (ActiveCampaign's most), and the most pages read.
const TAG_PAGE: usize = 100;
const MAX_TAG_PAGES: usize = 10;

/// Slack between our window and the receiver's (connection set-up, scheduling).
const WINDOW_MARGIN: Duration = Duration::from_millis(100);

impl Pacer {
    fn rates(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, u32>> {
        self.rates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Requests a second to the account: the lowest rate of its destinations.
    fn per_second(&self) -> usize {
        self.rates()
            .values()
            .min()
            .map_or(1, |r| (*r).max(1) as usize)
    }

    /// Waits for this request's slot.
    async fn wait(&self) {
        let per_second = self.per_second();
        let slot = {
            let mut state = self.state.lock().await;
            let mut slot = Instant::now().max(state.held_until.unwrap_or_else(Instant::now));
            // More slots than the rate when it was lowered since: the request must wait for
            // the one `per_second` back, so every older one goes.
            while state.sent.len() >= per_second {
                let Some(oldest) = state.sent.pop_front() else {
                    break;
                };
                slot = slot.max(oldest + Duration::from_secs(1) + WINDOW_MARGIN);
            }
            state.sent.push_back(slot);
            slot
        };
        tokio::time::sleep_until(slot).await;
    }

    /// Holds every request to the account until `until` (after a 429).
    async fn hold(&self, until: Instant) {
        let mut state = self.state.lock().await;
        state.held_until = Some(state.held_until.map_or(until, |h| h.max(until)));
    }
}

/// A lease on the pacer of an account, by its origin (`scheme://host:port`), at this rate.
fn pacer(base: &reqwest::Url, per_second: u32) -> PacerLease {
    static PACERS: OnceLock<Mutex<HashMap<String, Arc<Pacer>>>> = OnceLock::new();
    static LEASES: AtomicU64 = AtomicU64::new(0);
    let origin = base.origin().ascii_serialization();
    let pacer = PACERS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .entry(origin)
        .or_insert_with(|| {
            Arc::new(Pacer {
                rates: Mutex::new(BTreeMap::new()),
                state: tokio::sync::Mutex::new(PacerState::default()),
            })
        })
        .clone();
    let id = LEASES.fetch_add(1, Ordering::Relaxed);
    pacer.rates().insert(id, per_second);
    PacerLease { pacer, id }
}

#[derive(Debug)]
pub struct ActiveCampaign {
    name: String,
    base: reqwest::Url,
    token: Secret,
    fields: BTreeMap<String, String>,
    pacer: PacerLease,
    /// Tag name → id, learned once.
    tag_ids: tokio::sync::Mutex<HashMap<String, String>>,
    client: reqwest::Client,
}

fn decode_error(what: &str, e: impl std::fmt::Display) -> DeliveryError {
    DeliveryError::Retry {
        after: None,
        reason: format!("{what}: the answer does not decode: {e}"),
    }
}

impl ActiveCampaign {
    pub fn new(config: &ActiveCampaignConfig) -> anyhow::Result<ActiveCampaign> {
        let (base, token, timeout) = config.validate()?;
        Ok(ActiveCampaign {
            name: config.name.clone(),
            pacer: pacer(&base, config.requests_per_second),
            base,
            token,
            fields: config.fields.clone(),
            tag_ids: tokio::sync::Mutex::new(HashMap::new()),
            client: super::http_client(timeout)?,
        })
    }

    /// `<base>/api/3/<segments…>`, each segment escaped.
    fn url(&self, segments: &[&str]) -> reqwest::Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(["api", "3"]).extend(segments);
        }
        url
    }

    /// One paced request; a 429 holds the account and answers a retry.
    async fn call(
        &self,
        what: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<Value, DeliveryError> {
        self.pacer.wait().await;
        let response = request
            .header("Api-Token", self.token.expose())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| transport_error(what, e))?;
        if response.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
            let after = super::retry_after(response.headers()).unwrap_or(Duration::from_secs(1));
            self.pacer.hold(Instant::now() + after).await;
        }
        let body = classify(what, response).await?;
        if body.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&body).map_err(|e| decode_error(what, e))
    }

    /// The id of the tag named `tag`, case aside: ActiveCampaign's tag names are
    /// case-insensitive ("Tags should be treated as case-insensitive", API v3, Create a
    /// tag), so `vip` is the account's `VIP` (creating it would be refused as a duplicate).
    /// The exact spelling wins if the account has both. The search matches substrings and
    /// answers a page at a time, so every page is read (up to [`MAX_TAG_PAGES`]): with more
    /// than a page of tags containing the name, the one sought may be on any.
    async fn find_tag(&self, tag: &str) -> Result<Option<String>, DeliveryError> {
        let folded = tag.to_lowercase();
        let mut other_case = None;
        for page in 0..MAX_TAG_PAGES {
            let mut url = self.url(&["tags"]);
            url.query_pairs_mut()
                .append_pair("search", tag)
                .append_pair("limit", &TAG_PAGE.to_string())
                .append_pair("offset", &(page * TAG_PAGE).to_string());
            let found = self
                .call("ActiveCampaign tag search", self.client.get(url))
                .await?;
            let tags = found["tags"].as_array().map_or(&[][..], Vec::as_slice);
            for t in tags {
                let (Some(name), Some(id)) = (t["tag"].as_str(), id_of(&t["id"])) else {
                    continue;
                };
                if name == tag {
                    return Ok(Some(id));
                }
                if other_case.is_none() && name.to_lowercase() == folded {
                    other_case = Some(id);
                }
            }
            if tags.len() < TAG_PAGE {
                break;
            }
        }
        Ok(other_case)
    }

    async fn tag_id(&self, tag: &str) -> Result<String, DeliveryError> {
        let mut ids = self.tag_ids.lock().await;
        if let Some(id) = ids.get(tag) {
            return Ok(id.clone());
        }
        let id = match self.find_tag(tag).await? {
            Some(id) => id,
            None => {
                let created = self
                    .call(
                        "ActiveCampaign tag create",
                        super::with_json(
                            self.client.post(self.url(&["tags"])),
                            &json!({
                                "tag": {"tag": tag, "tagType": "contact", "description": "Vedetta"}
                            }),
                        ),
                    )
                    .await;
                match created {
                    Ok(created) => id_of(&created["tag"]["id"])
                        .ok_or_else(|| decode_error("ActiveCampaign tag create", "no tag.id"))?,
                    // Created meanwhile by someone else (another destination on the
                    // account): a 422 for the duplicate name; take theirs.
                    Err(DeliveryError::Refused { reason }) => match self.find_tag(tag).await? {
                        Some(id) => id,
                        None => return Err(DeliveryError::Refused { reason }),
                    },
                    Err(e) => return Err(e),
                }
            }
        };
        ids.insert(tag.to_owned(), id.clone());
        Ok(id)
    }

    async fn push_user(&self, user: &CrmUser, email: &str) -> Result<(), DeliveryError> {
        let field_values: Vec<Value> = user
            .fields
            .iter()
            .filter_map(|(name, value)| {
                self.fields
                    .get(name)
                    .map(|id| json!({"field": id, "value": value}))
            })
            .collect();
        let synced = self
            .call(
                "ActiveCampaign contact sync",
                super::with_json(
                    self.client.post(self.url(&["contact", "sync"])),
                    &json!({"contact": {"email": email, "fieldValues": field_values}}),
                ),
            )
            .await?;
        let contact = id_of(&synced["contact"]["id"])
            .ok_or_else(|| decode_error("ActiveCampaign contact sync", "no contact.id"))?;
        for tag in &user.tags {
            let cached = self.tag_ids.lock().await.contains_key(tag);
            let tag_id = self.tag_id(tag).await?;
            match self.contact_tag(&contact, &tag_id).await {
                // A cached id may be of a tag deleted in ActiveCampaign since: look the tag
                // up afresh (re-creating it) once, rather than refuse every push naming it
                // until a restart.
                Err(DeliveryError::Refused { .. }) if cached => {
                    self.tag_ids.lock().await.remove(tag);
                    let tag_id = self.tag_id(tag).await?;
                    self.contact_tag(&contact, &tag_id).await?;
                }
                other => other?,
            }
        }
        Ok(())
    }

    async fn contact_tag(&self, contact: &str, tag_id: &str) -> Result<(), DeliveryError> {
        self.call(
            "ActiveCampaign contact tag",
            super::with_json(
                self.client.post(self.url(&["contactTags"])),
                &json!({"contactTag": {"contact": contact, "tag": tag_id}}),
            ),
        )
        .await
        .map(drop)
    }
}

/// Ids come as strings (`"12"`) or, from some endpoints, numbers.
fn id_of(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() && s.len() <= 20 => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl CrmDestination for ActiveCampaign {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "activecampaign"
    }

    fn max_batch_users(&self) -> usize {
        MAX_USERS_PER_PUSH
    }

    fn push<'a>(&'a self, batch: &'a CrmBatch) -> Delivery<'a> {
        Box::pin(async move {
            batch.validate().map_err(|e| DeliveryError::Refused {
                reason: format!("the batch is malformed: {e}"),
            })?;
            if batch.reachable().count() > MAX_USERS_PER_PUSH {
                return Err(DeliveryError::Refused {
                    reason: format!(
                        "an ActiveCampaign push takes at most {MAX_USERS_PER_PUSH} users"
                    ),
                });
            }
            // A refused user does not keep the others from ActiveCampaign; a retry stops
            // here (the whole batch goes again: every step is idempotent).
            let mut refused = Vec::new();
            for (user, email) in batch.reachable() {
                match self.push_user(user, email).await.map_err(|e| {
                    let e = super::scrub_secrets(e, &[&self.token]);
                    crm::scrub_error(batch, with_user(e, &user.pseudonym))
                }) {
                    Ok(()) => {}
                    Err(DeliveryError::Refused { reason }) => refused.push(reason),
                    Err(retry) => return Err(retry),
                }
            }
            crm::refused_users(refused)
        })
    }
}

/// Names the user (by pseudonym) in an error.
pub(crate) fn with_user(error: DeliveryError, pseudonym: &str) -> DeliveryError {
    match error {
        DeliveryError::Retry { after, reason } => DeliveryError::Retry {
            after,
            reason: format!("user {pseudonym}: {reason}"),
        },
        DeliveryError::Refused { reason } => DeliveryError::Refused {
            reason: format!("user {pseudonym}: {reason}"),
        },
    }
}

impl Destination for ActiveCampaign {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "activecampaign"
    }

    fn deliver<'a>(&'a self, _notification: &'a Notification) -> Delivery<'a> {
        Box::pin(async move { Err(crm::not_for_alerts("activecampaign")) })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn config(extra: &str) -> anyhow::Result<ActiveCampaignConfig> {
        Ok(toml::from_str(&format!(
            "name = \"ac\"\nbase_url = \"https://acct.api-us1.com\"\n{extra}"
        ))?)
    }

    #[test]
    fn the_token_comes_from_the_config_or_the_environment_and_fields_are_ids() {
        let c = config("api_token = \"t\"\nfields = { product = \"12\" }").unwrap();
        let (base, token, _) = c.validate().unwrap();
        assert_eq!(token.expose(), "t");
        let ac = ActiveCampaign::new(&c).unwrap();
        assert_eq!(
            ac.url(&["contact", "sync"]).as_str(),
            "https://acct.api-us1.com/api/3/contact/sync"
        );
        // A hostile segment stays one segment.
        assert_eq!(
            ac.url(&["tags", "../x?y"]).as_str(),
            "https://acct.api-us1.com/api/3/tags/..%2Fx%3Fy"
        );
        assert_eq!(base.host_str(), Some("acct.api-us1.com"));
        let none = config("").unwrap().validate().unwrap_err().to_string();
        assert!(none.contains(".api_token"), "{none}");
        let field = config("api_token = \"t\"\nfields = { product = \"x\" }")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(field.contains(".fields"), "{field}");
        let rate = config("api_token = \"t\"\nrequests_per_second = 50")
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(rate.contains(".requests_per_second"), "{rate}");
    }
}
