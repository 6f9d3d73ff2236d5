//! Mailchimp Marketing API: members upserted, tags written and read back, member events.
//!
//! ```toml
//! [[alerts.destinations]]
//! name = "mc"
//! kind = "mailchimp"
//! list_id = "a1b2c3d4e5"
//! api_key_env = "MAILCHIMP_API_KEY"    # or api_key = "…-us6"; or oauth2 = { … } + base_url
//! status_if_new = "pending"            # pending (double opt-in, default) | subscribed | transactional
//! merge_fields = { product = "PRODUCT", offer = "OFFER" }   # Vedetta field → merge tag
//! ```
//!
//! Auth: an API key, sent as HTTP Basic (any user name, the key as password), whose
//! suffix after the last `-` is the data centre (`…-us6` → `https://us6.api.mailchimp.com/3.0`);
//! or an OAuth2 bearer token (`watch::oauth2`), with `base_url` giving the account's API
//! root (OAuth2 tokens do not carry the data centre). `base_url` may also point the key at
//! a proxy.
//!
//! Per user with an e-mail, where `hash` is the MD5 of the lower-cased address:
//! 1. `PUT /lists/{list}/members/{hash}` `{"email_address", "status_if_new", "merge_fields"}`
//!    creates or updates the member (an existing member's status is left alone);
//! 2. `POST /lists/{list}/members/{hash}/tags` `{"tags": [{"name", "status": "active"}]}`;
//!    Mailchimp answers 204 even to some tag writes it drops, so the tags are **read back**
//!    (`GET …/tags`, 100 names a page until the written ones are seen) and a missing one
//!    refuses the push, naming the tag;
//! 3. `POST /lists/{list}/members/{hash}/events` `{"name", "properties", "occurred_at"}`
//!    for each event (properties carry `vedetta_batch`, the batch id, to tell a repeat).
//!
//! With more than `batch_threshold` (50) users, steps 1 to 3 go as one batch operation
//! (`POST /batches`), polled (`GET /batches/{id}`) until `finished`; errored operations
//! make the push a retry (everything in it is idempotent but events). Tags are read back
//! after it.

use super::{Secret, check_timeout, check_url, classify, key_error, transport_error};
use crate::watch::crm::{self, CrmBatch, CrmDestination, CrmUser};
use crate::watch::destination::{Delivery, DeliveryError, Destination};
use crate::watch::oauth2::{OAuth2Client, OAuth2Config, TokenVault};
use md5::Digest;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use vedetta_core::watch::notification::Notification;

/// A new member's status (an existing member keeps theirs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusIfNew {
    /// Double opt-in: Mailchimp mails a confirmation first.
    #[default]
    Pending,
    Subscribed,
    Transactional,
}

impl StatusIfNew {
    fn as_str(self) -> &'static str {
        match self {
            StatusIfNew::Pending => "pending",
            StatusIfNew::Subscribed => "subscribed",
            StatusIfNew::Transactional => "transactional",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailchimpConfig {
    pub name: String,
    pub list_id: String,
    pub api_key: Option<Secret>,
    /// The environment variable holding the API key (instead of `api_key`).
    pub api_key_env: Option<String>,
    pub oauth2: Option<OAuth2Config>,
    /// The API root (`https://us6.api.mailchimp.com/3.0`): required with `oauth2`, else
    /// derived from the API key's data centre.
    pub base_url: Option<String>,
    #[serde(default)]
    pub status_if_new: StatusIfNew,
    /// Vedetta field name → Mailchimp merge tag.
    #[serde(default)]
    pub merge_fields: BTreeMap<String, String>,
    #[serde(default = "default_batch_threshold")]
    pub batch_threshold: usize,
    #[serde(default = "super::default_timeout_seconds")]
    pub timeout_seconds: u64,
}

fn default_batch_threshold() -> usize {
    50
}

/// The most users in one push (one batch operation).
const MAX_USERS_PER_PUSH: usize = 500;
/// How often a batch operation's status is polled.
const BATCH_POLL: Duration = Duration::from_millis(500);
/// How long a batch operation is waited for, within one push.
const BATCH_WAIT: Duration = Duration::from_secs(25);

/// The user name of HTTP Basic auth with an API key (Mailchimp reads only the password).
const BASIC_USER: &str = "vedetta";

/// How a request is authorised.
#[derive(Debug)]
enum Auth {
    Key(Secret),
    OAuth2(Box<OAuth2Client>),
}

/// The data centre of an API key: its suffix after the last `-` (`…-us6` → `us6`).
pub fn data_centre(api_key: &str) -> Option<&str> {
    let (_, dc) = api_key.rsplit_once('-')?;
    (!dc.is_empty() && dc.len() <= 8 && dc.chars().all(|c| c.is_ascii_alphanumeric())).then_some(dc)
}

/// What of an API key a receiver's answer may echo (a proxy at `base_url`, an endpoint that
/// repeats its request): the key, its part before the data-centre suffix, and the HTTP Basic
/// credentials that carry it. Longest first, since the part is in the key.
fn key_forms(key: &Secret) -> Vec<Secret> {
    let key = key.expose();
    if key.is_empty() {
        return Vec::new();
    }
    let mut forms = vec![
        Secret(base64(format!("{BASIC_USER}:{key}").as_bytes())),
        Secret(key.to_owned()),
    ];
    // Not a short stem: replacing it everywhere would garble the message (real keys hold 32
    // hex digits before the suffix).
    if let Some(dc) = data_centre(key)
        && let Some(stem) = key.strip_suffix(dc).and_then(|k| k.strip_suffix('-'))
        && stem.len() >= 8
    {
        forms.push(Secret(stem.to_owned()));
    }
    forms
}

/// Standard base64 with padding (RFC 4648 §4), as HTTP Basic credentials are written.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let group = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(
                    ALPHABET[((group >> (18 - 6 * i)) & 63) as usize],
                ));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The member id: the MD5 of the lower-cased e-mail, in hex.
pub fn member_hash(email: &str) -> String {
    crate::crypto::hex(&md5::Md5::digest(email.to_lowercase().as_bytes()))
}

impl MailchimpConfig {
    pub(super) fn validate(&self) -> anyhow::Result<(reqwest::Url, Option<Secret>, Duration)> {
        let name = &self.name;
        if self.list_id.is_empty()
            || self.list_id.len() > 32
            || !self.list_id.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Err(key_error(
                name,
                "list_id",
                "a Mailchimp audience id: 1 to 32 letters and digits",
            ));
        }
        let key = match (&self.oauth2, &self.api_key, &self.api_key_env) {
            (Some(o), None, None) => {
                o.validate(name)?;
                None
            }
            (Some(_), _, _) => {
                return Err(key_error(
                    name,
                    "oauth2",
                    "use an API key or OAuth2, not both",
                ));
            }
            (None, key, env) => Some(super::resolve_secret(
                name,
                "api_key",
                key.as_ref(),
                env.as_deref(),
            )?),
        };
        let base = match (&self.base_url, &key) {
            (Some(url), _) => check_url(name, "base_url", url)?,
            (None, Some(key)) => {
                let dc = data_centre(key.expose()).ok_or_else(|| {
                    key_error(
                        name,
                        "api_key",
                        "does not end in a data centre like \"-us6\"",
                    )
                })?;
                check_url(
                    name,
                    "api_key",
                    &format!("https://{dc}.api.mailchimp.com/3.0"),
                )?
            }
            (None, None) => {
                return Err(key_error(
                    name,
                    "base_url",
                    "is required with oauth2 (like \"https://us6.api.mailchimp.com/3.0\")",
                ));
            }
        };
        for (field, tag) in &self.merge_fields {
            if tag.is_empty()
                || tag.len() > 10
                || !tag
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            {
                return Err(key_error(
                    name,
                    "merge_fields",
                    format!("{field:?}: a merge tag is 1 to 10 of A-Z, 0-9 and _"),
                ));
            }
        }
        if !(1..=MAX_USERS_PER_PUSH).contains(&self.batch_threshold) {
            return Err(key_error(name, "batch_threshold", "must be 1 to 500"));
        }
        Ok((base, key, check_timeout(name, self.timeout_seconds)?))
    }
}

#[derive(Debug)]
pub struct Mailchimp {
    name: String,
    base: reqwest::Url,
    list_id: String,
    auth: Auth,
    status_if_new: StatusIfNew,
    merge_fields: BTreeMap<String, String>,
    batch_threshold: usize,
    client: reqwest::Client,
    /// The API key as an error may echo it ([`key_forms`]); empty with OAuth2, whose client
    /// scrubs its own secrets.
    key_forms: Vec<Secret>,
}

/// One member's writes, as (method, path segments under the API root, body).
type Operation = (reqwest::Method, Vec<String>, Option<Value>);

/// Tag names per page of a read-back: 100 names of at most 100 characters are about 40 KB
/// at worst, inside the 64 KiB an answer is read to.
const TAG_PAGE: usize = 100;
/// The most pages read back for one member (10,000 tags).
const MAX_TAG_PAGES: usize = 100;

fn decode_error(what: &str, e: impl std::fmt::Display) -> DeliveryError {
    DeliveryError::Retry {
        after: None,
        reason: format!("{what}: the answer does not decode: {e}"),
    }
}

impl Mailchimp {
    pub fn new(config: &MailchimpConfig, vault: Option<Arc<TokenVault>>) -> anyhow::Result<Self> {
        let (base, key, timeout) = config.validate()?;
        let key_forms = key.as_ref().map(key_forms).unwrap_or_default();
        let auth = match (key, &config.oauth2) {
            (Some(key), _) => Auth::Key(key),
            (None, Some(o)) => {
                Auth::OAuth2(Box::new(OAuth2Client::new(&config.name, o.clone(), vault)))
            }
            (None, None) => anyhow::bail!("alerts.destinations[{:?}]: no auth", config.name),
        };
        Ok(Mailchimp {
            name: config.name.clone(),
            base,
            list_id: config.list_id.clone(),
            auth,
            status_if_new: config.status_if_new,
            merge_fields: config.merge_fields.clone(),
            batch_threshold: config.batch_threshold,
            client: super::http_client(timeout)?,
            key_forms,
        })
    }

    /// Keeps the API key out of an error made of a receiver's answer.
    fn scrub_key(&self, error: DeliveryError) -> DeliveryError {
        let forms: Vec<&Secret> = self.key_forms.iter().collect();
        super::scrub_secrets(error, &forms)
    }

    fn url(&self, segments: &[String]) -> reqwest::Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// `/lists/{list}/members/{hash}[/more]` as segments.
    fn member(&self, hash: &str, more: &[&str]) -> Vec<String> {
        let mut segments = vec![
            "lists".to_owned(),
            self.list_id.clone(),
            "members".to_owned(),
            hash.to_owned(),
        ];
        segments.extend(more.iter().map(|s| (*s).to_owned()));
        segments
    }

    /// The path of `segments` as the batch API wants it (`/lists/…`, relative to the root).
    fn batch_path(&self, segments: &[String]) -> String {
        let root = self.base.path().trim_end_matches('/').len();
        self.url(segments).path()[root..].to_owned()
    }

    async fn call(
        &self,
        what: &str,
        method: reqwest::Method,
        url: reqwest::Url,
        body: Option<&Value>,
    ) -> Result<Value, DeliveryError> {
        let build = |auth: Option<&Secret>| {
            let mut request = self
                .client
                .request(method.clone(), url.clone())
                .header(reqwest::header::ACCEPT, "application/json");
            if let Some(body) = body {
                request = super::with_json(request, body);
            }
            match (auth, &self.auth) {
                (Some(token), _) => request.bearer_auth(token.expose()),
                (None, Auth::Key(key)) => request.basic_auth(BASIC_USER, Some(key.expose())),
                (None, Auth::OAuth2(_)) => request,
            }
        };
        let response = match &self.auth {
            Auth::Key(_) => build(None)
                .send()
                .await
                .map_err(|e| transport_error(what, e))?,
            Auth::OAuth2(oauth2) => {
                oauth2
                    .send(&self.client, what, |token| build(Some(token)))
                    .await?
            }
        };
        let body = match (classify(what, response).await, &self.auth) {
            (Ok(body), _) => body,
            // The answer may echo the bearer token it was shown.
            (Err(e), Auth::OAuth2(oauth2)) => return Err(oauth2.scrub_error(e).await),
            (Err(e), Auth::Key(_)) => return Err(e),
        };
        if body.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&body).map_err(|e| decode_error(what, e))
    }

    /// The writes for one user, in order: member upsert, tags, events.
    fn operations(&self, batch: &CrmBatch, user: &CrmUser, email: &str) -> Vec<Operation> {
        let hash = member_hash(email);
        let merge: serde_json::Map<String, Value> = user
            .fields
            .iter()
            .filter_map(|(name, value)| {
                self.merge_fields
                    .get(name)
                    .map(|tag| (tag.clone(), Value::String(value.clone())))
            })
            .collect();
        let mut ops = vec![(
            reqwest::Method::PUT,
            self.member(&hash, &[]),
            Some(json!({
                "email_address": email,
                "status_if_new": self.status_if_new.as_str(),
                "merge_fields": merge,
            })),
        )];
        if !user.tags.is_empty() {
            let tags: Vec<Value> = user
                .tags
                .iter()
                .map(|t| json!({"name": t, "status": "active"}))
                .collect();
            ops.push((
                reqwest::Method::POST,
                self.member(&hash, &["tags"]),
                Some(json!({ "tags": tags })),
            ));
        }
        for event in &user.events {
            let mut properties: serde_json::Map<String, Value> = event
                .properties
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            properties.insert("vedetta_batch".into(), Value::String(batch.id.clone()));
            let mut body = json!({"name": event.name, "properties": properties});
            if let Ok(at) = jiff::Timestamp::from_millisecond(event.time_ms) {
                body["occurred_at"] = Value::String(at.to_string());
            }
            ops.push((
                reqwest::Method::POST,
                self.member(&hash, &["events"]),
                Some(body),
            ));
        }
        ops
    }

    /// Reads a member's tags back; a written tag that is not there refuses the push.
    ///
    /// A page at a time ([`TAG_PAGE`] names, nothing else asked of each): a member may hold
    /// any number of tags, and an answer is read only up to 64 KiB (a cut one does not
    /// decode). Reading stops once every written tag is seen, or at the member's last tag.
    /// Names are compared case aside: an audience's tags are case-insensitive, and a tag
    /// written `vip` where the audience has `VIP` is that tag, read back as `VIP`.
    async fn confirm_tags(&self, user: &CrmUser, email: &str) -> Result<(), DeliveryError> {
        let mut unseen: BTreeMap<String, &str> = (user.tags.iter())
            .map(|t| (t.to_lowercase(), t.as_str()))
            .collect();
        let mut offset = 0;
        for _ in 0..MAX_TAG_PAGES {
            if unseen.is_empty() {
                return Ok(());
            }
            let mut url = self.url(&self.member(&member_hash(email), &["tags"]));
            url.query_pairs_mut()
                .append_pair("fields", "tags.name,total_items")
                .append_pair("count", &TAG_PAGE.to_string())
                .append_pair("offset", &offset.to_string());
            let answer = self
                .call("Mailchimp tag read-back", reqwest::Method::GET, url, None)
                .await?;
            let page = answer["tags"].as_array().map_or(&[][..], Vec::as_slice);
            for name in page.iter().filter_map(|t| t["name"].as_str()) {
                unseen.remove(&name.to_lowercase());
            }
            offset += page.len();
            let total = answer["total_items"].as_u64().unwrap_or(0);
            if page.len() < TAG_PAGE || offset as u64 >= total {
                break;
            }
        }
        let Some((_, missing)) = unseen.first_key_value() else {
            return Ok(());
        };
        let reason = if offset >= TAG_PAGE * MAX_TAG_PAGES {
            format!(
                "Mailchimp accepted tag {missing:?} (204) but it is not among the member's \
                 first {offset} tags, all that are read back: it cannot be confirmed"
            )
        } else {
            format!(
                "Mailchimp accepted tag {missing:?} (204) but did not store it: a tag name it \
                 refuses; fix the trigger's tag"
            )
        };
        Err(DeliveryError::Refused { reason })
    }

    async fn push_one_by_one(&self, batch: &CrmBatch) -> Result<(), DeliveryError> {
        let mut refused = Vec::new();
        for (user, email) in batch.reachable() {
            let run = async {
                for (method, segments, body) in self.operations(batch, user, email) {
                    self.call("Mailchimp", method, self.url(&segments), body.as_ref())
                        .await?;
                }
                self.confirm_tags(user, email).await
            };
            // A refused user does not keep the others from Mailchimp; a retry stops here
            // (the whole batch goes again, and every write but events is idempotent).
            match run
                .await
                .map_err(|e| super::activecampaign::with_user(e, &user.pseudonym))
            {
                Ok(()) => {}
                Err(DeliveryError::Refused { reason }) => refused.push(reason),
                Err(retry) => return Err(retry),
            }
        }
        crm::refused_users(refused)
    }

    async fn push_as_batch_operation(&self, batch: &CrmBatch) -> Result<(), DeliveryError> {
        let mut operations = Vec::new();
        for (i, (user, email)) in batch.reachable().enumerate() {
            for (j, (method, segments, body)) in
                self.operations(batch, user, email).into_iter().enumerate()
            {
                let mut op = json!({
                    "method": method.as_str(),
                    "path": self.batch_path(&segments),
                    "operation_id": format!("{i}.{j}"),
                });
                if let Some(body) = body {
                    op["body"] = Value::String(body.to_string());
                }
                operations.push(op);
            }
        }
        let started = self
            .call(
                "Mailchimp batch",
                reqwest::Method::POST,
                self.url(&["batches".to_owned()]),
                Some(&json!({ "operations": operations })),
            )
            .await?;
        let id = started["id"]
            .as_str()
            .filter(|id| !id.is_empty() && id.len() <= 64)
            .ok_or_else(|| decode_error("Mailchimp batch", "no id"))?
            .to_owned();
        let deadline = tokio::time::Instant::now() + BATCH_WAIT;
        let status = loop {
            let status = self
                .call(
                    "Mailchimp batch status",
                    reqwest::Method::GET,
                    self.url(&["batches".to_owned(), id.clone()]),
                    None,
                )
                .await?;
            if status["status"].as_str() == Some("finished") {
                break status;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(DeliveryError::Retry {
                    after: None,
                    reason: format!("Mailchimp batch {id} did not finish in {BATCH_WAIT:?}"),
                });
            }
            tokio::time::sleep(BATCH_POLL).await;
        };
        // Not a whole number (or missing) is not "none failed": the batch is not known good.
        let errored = status["errored_operations"].as_u64().ok_or_else(|| {
            decode_error(
                &format!("Mailchimp batch {id} status"),
                "no whole errored_operations",
            )
        })?;
        if errored > 0 {
            return Err(DeliveryError::Retry {
                after: None,
                reason: format!(
                    "Mailchimp batch {id}: {errored} of {} operations failed (their answers are \
                     in the batch's response_body_url)",
                    operations.len()
                ),
            });
        }
        for (user, email) in batch.reachable() {
            self.confirm_tags(user, email)
                .await
                .map_err(|e| super::activecampaign::with_user(e, &user.pseudonym))?;
        }
        Ok(())
    }
}

impl CrmDestination for Mailchimp {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "mailchimp"
    }

    fn max_batch_users(&self) -> usize {
        MAX_USERS_PER_PUSH
    }

    fn push<'a>(&'a self, batch: &'a CrmBatch) -> Delivery<'a> {
        Box::pin(async move {
            batch.validate().map_err(|e| DeliveryError::Refused {
                reason: format!("the batch is malformed: {e}"),
            })?;
            let reachable = batch.reachable().count();
            let result = if reachable > MAX_USERS_PER_PUSH {
                Err(DeliveryError::Refused {
                    reason: format!("a Mailchimp push takes at most {MAX_USERS_PER_PUSH} users"),
                })
            } else if reachable > self.batch_threshold {
                self.push_as_batch_operation(batch).await
            } else {
                self.push_one_by_one(batch).await
            };
            result.map_err(|e| self.scrub_key(crm::scrub_error(batch, e)))
        })
    }
}

impl Destination for Mailchimp {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "mailchimp"
    }

    fn deliver<'a>(&'a self, _notification: &'a Notification) -> Delivery<'a> {
        Box::pin(async move { Err(crm::not_for_alerts("mailchimp")) })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn member_ids_are_the_md5_of_the_lower_cased_email() {
        // Mailchimp's documented example: md5("urist.mcvankab@freddiesjokes.com").
        assert_eq!(
            member_hash("Urist.McVankab@FreddiesJokes.com"),
            "62eeb292278cc15f5817cb78f7790b08"
        );
    }

    #[test]
    fn basic_credentials_are_the_base64_of_user_and_key() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        let forms = key_forms(&Secret("0123456789abcdef-us6".into()));
        let forms: Vec<&str> = forms.iter().map(Secret::expose).collect();
        assert_eq!(
            crate::sources::shopify::decode_base64(forms[0]).unwrap(),
            b"vedetta:0123456789abcdef-us6"
        );
        assert_eq!(forms[1..], ["0123456789abcdef-us6", "0123456789abcdef"]);
        // A short part before the suffix is not replaced everywhere.
        assert_eq!(key_forms(&Secret("k-us21".into())).len(), 2);
    }

    #[test]
    fn the_data_centre_comes_from_the_key_suffix() {
        assert_eq!(data_centre("0123456789abcdef-us6"), Some("us6"));
        assert_eq!(data_centre("nodc"), None);
        assert_eq!(data_centre("x-us6.evil.com/"), None);
        let c: MailchimpConfig =
            toml::from_str("name = \"mc\"\nlist_id = \"abc123\"\napi_key = \"k-us21\"").unwrap();
        let mc = Mailchimp::new(&c, None).unwrap();
        assert_eq!(
            mc.url(&mc.member("h", &["tags"])).as_str(),
            "https://us21.api.mailchimp.com/3.0/lists/abc123/members/h/tags"
        );
        assert_eq!(
            mc.batch_path(&mc.member("h", &[])),
            "/lists/abc123/members/h"
        );
        let bad: MailchimpConfig =
            toml::from_str("name = \"mc\"\nlist_id = \"../x\"\napi_key = \"k-us21\"").unwrap();
        assert!(
            Mailchimp::new(&bad, None)
                .unwrap_err()
                .to_string()
                .contains(".list_id")
        );
        let no_dc: MailchimpConfig =
            toml::from_str("name = \"mc\"\nlist_id = \"a\"\napi_key = \"k\"").unwrap();
        assert!(
            Mailchimp::new(&no_dc, None)
                .unwrap_err()
                .to_string()
                .contains(".api_key")
        );
    }
}
