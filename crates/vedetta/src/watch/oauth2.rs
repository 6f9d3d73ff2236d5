//! OAuth2 for destinations: client credentials, and refresh tokens that rotate.
//!
//! ```toml
//! oauth2 = { token_url = "https://crm.example.it/oauth/token", client_id = "vedetta",
//!            client_secret = "…", refresh_token = "…", scope = "push" }
//! ```
//!
//! Without `refresh_token` the client-credentials grant is used. With it, the
//! refresh-token grant: every refresh may answer a new refresh token and invalidate the old
//! one (rotation), so the **current** refresh token is state that must survive a crash:
//!
//! - it is persisted **as soon as the token endpoint's answer arrives**, before the access
//!   token is used or anything else happens: sealed ([`crate::crypto`], context
//!   `["oauth2.refresh_token", destination]`), written to a temporary file, fsync'd,
//!   renamed over `<data_dir>/oauth2/<hex of the destination name>.token` and the directory
//!   fsync'd. A crash after that point restarts with the new token; a crash before it
//!   (the answer was on the wire) is the one window no client can close: the token
//!   endpoint's reuse grace, if it has one, covers it;
//! - on start the persisted token wins over the configured one, as long as it descends from
//!   the configured one: the file records a fingerprint of the `refresh_token` it started
//!   from, so configuring a new refresh token (after re-authorising) takes effect;
//! - if the write fails, the new token is kept in memory (the old one is dead at the
//!   endpoint), the call fails as a retry, and the write is tried again before any use.
//!
//! Access tokens are cached and refreshed a tenth of their life (at most a minute) before
//! they expire. [`OAuth2Client::send`] calls the protected resource, and after a 401
//! refreshes once and retries once. One lock per destination serialises refreshes, so two
//! concurrent calls never spend the same refresh token twice.

use super::destination::DeliveryError;
use super::destinations::{Secret, classify, transport_error};
use crate::crypto::Crypto;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How the client authenticates to the token endpoint (RFC 6749 §2.3.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// HTTP Basic with the client id and secret (the RFC's default).
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Post,
}

/// `oauth2 = { … }` of a destination.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Config {
    pub token_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    /// The initial refresh token; rotated ones are persisted (see the module docs).
    pub refresh_token: Option<Secret>,
    pub scope: Option<String>,
    pub audience: Option<String>,
    #[serde(default)]
    pub client_auth: ClientAuth,
}

impl OAuth2Config {
    /// Checks the keys; `name` is the destination's, for the error.
    pub fn validate(&self, name: &str) -> anyhow::Result<()> {
        super::destinations::check_url(name, "oauth2.token_url", &self.token_url)?;
        if self.client_id.is_empty() {
            return Err(super::destinations::key_error(
                name,
                "oauth2.client_id",
                "must not be empty",
            ));
        }
        if self
            .refresh_token
            .as_ref()
            .is_some_and(|t| t.expose().is_empty() || t.expose().len() > MAX_TOKEN_BYTES)
        {
            return Err(super::destinations::key_error(
                name,
                "oauth2.refresh_token",
                format!("must be 1 to {MAX_TOKEN_BYTES} bytes"),
            ));
        }
        Ok(())
    }
}

/// The longest token accepted from configuration or from a token endpoint.
const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Bounds of a token's announced lifetime (a hostile or broken endpoint may say 0 or 10¹⁸).
const MAX_TOKEN_LIFETIME: u64 = 86_400;
/// Without `expires_in`, a token is used this long.
const DEFAULT_TOKEN_LIFETIME: u64 = 300;
/// Version of a token file (`[format][sealed JSON]`).
pub const TOKEN_FILE_FORMAT: u8 = 1;
const TOKEN_CONTEXT: &str = "oauth2.refresh_token";

/// When to refresh a token that lives `lifetime`: a tenth of its life (at most a minute)
/// before it expires, so a call never carries a token about to die on the way.
pub fn refresh_after(lifetime: Duration) -> Duration {
    lifetime - (lifetime / 10).min(Duration::from_secs(60))
}

/// Where rotated refresh tokens are kept: `<data_dir>/oauth2/`, sealed.
#[derive(Debug)]
pub struct TokenVault {
    dir: PathBuf,
    crypto: Arc<Crypto>,
}

/// What a token file holds (sealed).
#[derive(Serialize, Deserialize)]
struct Persisted {
    /// Fingerprint of the configured `refresh_token` this one descends from ("" for none).
    origin: String,
    refresh_token: String,
}

fn fingerprint(token: Option<&Secret>) -> String {
    match token {
        None => String::new(),
        Some(t) => {
            let digest = ring::digest::digest(&ring::digest::SHA256, t.expose().as_bytes());
            crate::crypto::hex(&digest.as_ref()[..16])
        }
    }
}

impl TokenVault {
    /// The vault under `data_dir` (creates `oauth2/`, mode 0700).
    pub fn open(data_dir: &Path, crypto: Arc<Crypto>) -> anyhow::Result<TokenVault> {
        let dir = data_dir.join("oauth2");
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder
            .create(&dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        Ok(TokenVault { dir, crypto })
    }

    /// The file of a destination: its name hex-encoded, so no name can reach another path.
    pub fn path(&self, destination: &str) -> PathBuf {
        self.dir.join(format!(
            "{}.token",
            crate::crypto::hex(destination.as_bytes())
        ))
    }

    fn load(&self, destination: &str) -> Result<Option<Persisted>, String> {
        let path = self.path(destination);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let sealed = match bytes.split_first() {
            Some((&TOKEN_FILE_FORMAT, sealed)) => sealed,
            Some((other, _)) => {
                return Err(format!(
                    "{} is of format {other}; this build reads format {TOKEN_FILE_FORMAT}",
                    path.display()
                ));
            }
            None => return Err(format!("{} is empty", path.display())),
        };
        let plain = self
            .crypto
            .open(&[TOKEN_CONTEXT, destination], sealed)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        serde_json::from_slice(&plain)
            .map(Some)
            .map_err(|e| format!("{} does not decode: {e}", path.display()))
    }

    fn save(&self, destination: &str, persisted: &Persisted) -> Result<(), String> {
        let path = self.path(destination);
        let plain = serde_json::to_vec(persisted).map_err(|e| e.to_string())?;
        let sealed = self
            .crypto
            .seal(&[TOKEN_CONTEXT, destination], &plain)
            .map_err(|e| e.to_string())?;
        let mut bytes = Vec::with_capacity(1 + sealed.len());
        bytes.push(TOKEN_FILE_FORMAT);
        bytes.extend_from_slice(&sealed);
        crate::crypto::write_private_file(&path, &bytes, true)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

#[derive(Debug)]
struct CachedToken {
    access_token: Secret,
    refresh_at: Instant,
}

#[derive(Debug, Default)]
struct State {
    access: Option<CachedToken>,
    /// The current refresh token (rotated ones replace it).
    refresh: Option<Secret>,
    loaded: bool,
    /// `refresh` is newer than the file: write it before anything else.
    unsaved: bool,
}

/// A token endpoint's answer, read field by field: a field of an odd type must not cost the
/// others (a rotated `refresh_token` above all: the old one is dead at the endpoint).
struct TokenResponse {
    access_token: Option<String>,
    /// Seconds; `None` when absent or not a number (nor a string of one).
    expires_in: Option<u64>,
    refresh_token: Option<String>,
}

impl TokenResponse {
    fn read(body: &str) -> Result<TokenResponse, String> {
        // Each field's raw text first: serde_json refuses a number past a double's range
        // (`"expires_in": 1e400`) as it parses it, which would cost the whole answer, the
        // rotated refresh token with it; as raw text a value is only scanned.
        let fields: HashMap<String, Box<serde_json::value::RawValue>> =
            serde_json::from_str(body).map_err(|e| e.to_string())?;
        let text = |key: &str| {
            fields
                .get(key)
                .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
        };
        Ok(TokenResponse {
            access_token: text("access_token"),
            expires_in: fields.get("expires_in").and_then(|raw| seconds(raw.get())),
            refresh_token: text("refresh_token"),
        })
    }
}

/// A lifetime in seconds from its JSON text: a number, or a string of one (some endpoints
/// write `"3600"`); a negative one is 0, one past a double's range the largest (or, negative,
/// 0). `None` for anything else. The caller clamps it.
fn seconds(raw: &str) -> Option<u64> {
    match serde_json::from_str::<serde_json::Value>(raw) {
        Ok(serde_json::Value::Number(n)) => n
            .as_u64()
            .or_else(|| n.as_i64().map(|i| i.max(0) as u64))
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite())
                    .map(|f| f.max(0.0) as u64)
            }),
        Ok(serde_json::Value::String(s)) => s.trim().parse::<u64>().ok(),
        Ok(_) => None,
        // The answer parsed, so this is JSON; what serde_json refuses of JSON is a number
        // out of range (an array holding one is not a lifetime either).
        Err(_) => match raw.trim_start().as_bytes().first() {
            Some(b'-') => Some(0),
            Some(b'0'..=b'9') => Some(u64::MAX),
            _ => None,
        },
    }
}

/// When [`OAuth2Client::fetch`] goes to the token endpoint.
#[derive(Clone, Copy)]
enum Fresh<'a> {
    /// When there is no token or it is due for refresh.
    IfDue,
    /// Always.
    Always,
    /// Also when the cached token is this one (refused with a 401); not when another call
    /// has replaced it meanwhile, so that concurrent 401s cost one refresh.
    Replacing(&'a Secret),
}

/// One destination's OAuth2 client: its token cache, its refresh token, its lock.
#[derive(Debug)]
pub struct OAuth2Client {
    destination: String,
    config: OAuth2Config,
    vault: Option<Arc<TokenVault>>,
    state: tokio::sync::Mutex<State>,
    refreshes: std::sync::atomic::AtomicU64,
}

fn retry(reason: impl Into<String>) -> DeliveryError {
    DeliveryError::Retry {
        after: None,
        reason: reason.into(),
    }
}

impl OAuth2Client {
    /// Without a vault, rotated refresh tokens live in memory only (tools and tests).
    pub fn new(
        destination: &str,
        config: OAuth2Config,
        vault: Option<Arc<TokenVault>>,
    ) -> OAuth2Client {
        OAuth2Client {
            destination: destination.to_owned(),
            config,
            vault,
            state: tokio::sync::Mutex::new(State::default()),
            refreshes: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// How many tokens were fetched from the token endpoint.
    pub fn refreshes(&self) -> u64 {
        self.refreshes.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn save(&self, state: &mut State) -> Result<(), DeliveryError> {
        if let (Some(vault), Some(refresh)) = (&self.vault, &state.refresh) {
            vault
                .save(
                    &self.destination,
                    &Persisted {
                        origin: fingerprint(self.config.refresh_token.as_ref()),
                        refresh_token: refresh.expose().to_owned(),
                    },
                )
                .map_err(|e| {
                    tracing::error!(destination = %self.destination, error = %e,
                        "cannot persist the rotated OAuth2 refresh token; will try again before any use");
                    retry(format!("cannot persist the rotated OAuth2 refresh token: {e}"))
                })?;
        }
        state.unsaved = false;
        Ok(())
    }

    fn load(&self, state: &mut State) -> Result<(), DeliveryError> {
        if state.loaded {
            return Ok(());
        }
        let configured = self.config.refresh_token.clone();
        state.refresh = configured.clone();
        if let Some(vault) = &self.vault
            && let Some(persisted) = vault.load(&self.destination).map_err(|e| {
                retry(format!(
                    "the persisted OAuth2 refresh token cannot be read ({e}); fix or remove the file and set oauth2.refresh_token"
                ))
            })?
        {
            if persisted.origin == fingerprint(configured.as_ref()) {
                state.refresh = Some(Secret(persisted.refresh_token));
            } else {
                tracing::info!(destination = %self.destination,
                    "oauth2.refresh_token changed in the configuration: it replaces the persisted one");
            }
        }
        state.loaded = true;
        Ok(())
    }

    /// The access token: cached, or fetched when `force`d, absent or about to expire.
    pub async fn token(
        &self,
        client: &reqwest::Client,
        force: bool,
    ) -> Result<Secret, DeliveryError> {
        self.fetch(client, if force { Fresh::Always } else { Fresh::IfDue })
            .await
    }

    async fn fetch(
        &self,
        client: &reqwest::Client,
        fresh: Fresh<'_>,
    ) -> Result<Secret, DeliveryError> {
        let mut state = self.state.lock().await;
        self.load(&mut state)?;
        if state.unsaved {
            self.save(&mut state)?;
        }
        if let Some(t) = state.access.as_ref()
            && Instant::now() < t.refresh_at
        {
            let usable = match fresh {
                Fresh::IfDue => true,
                Fresh::Always => false,
                // Another call refreshed since this one was refused: use its token.
                Fresh::Replacing(refused) => t.access_token.expose() != refused.expose(),
            };
            if usable {
                return Ok(t.access_token.clone());
            }
        }
        state.access = None;
        let c = &self.config;
        let refresh = state.refresh.clone();
        let mut form: Vec<(&str, &str)> = match &refresh {
            Some(r) => vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", r.expose()),
            ],
            None => vec![("grant_type", "client_credentials")],
        };
        if let Some(scope) = &c.scope {
            form.push(("scope", scope));
        }
        if let Some(audience) = &c.audience {
            form.push(("audience", audience));
        }
        let mut request = client.post(&c.token_url);
        match c.client_auth {
            ClientAuth::Basic => {
                request = request.basic_auth(&c.client_id, Some(c.client_secret.expose()));
            }
            ClientAuth::Post => {
                form.push(("client_id", &c.client_id));
                form.push(("client_secret", c.client_secret.expose()));
            }
        }
        let asked = Instant::now();
        let response = request
            .form(&form)
            .send()
            .await
            .map_err(|e| transport_error("OAuth2 token endpoint", e))?;
        // Whatever the token endpoint answers, the message may pass once the endpoint or its
        // configuration is fixed: retry, never refuse the message for it.
        let body = classify("OAuth2 token endpoint", response)
            .await
            .map_err(|e| match e {
                DeliveryError::Refused { reason } | DeliveryError::Retry { reason, .. } => {
                    let hint = if reason.contains("invalid_grant") && refresh.is_some() {
                        " (the refresh token was rejected: re-authorise and set oauth2.refresh_token)"
                    } else {
                        ""
                    };
                    // The endpoint's answer may echo what it was sent: keep the secrets out.
                    let mut reason = reason;
                    for secret in [refresh.as_ref(), Some(&c.client_secret)].into_iter().flatten() {
                        if !secret.expose().is_empty() {
                            reason = reason.replace(secret.expose(), "<secret>");
                        }
                    }
                    retry(format!("{reason}{hint}"))
                }
            })?;
        let token = TokenResponse::read(&body).map_err(|e| {
            retry(format!(
                "the OAuth2 token endpoint's answer does not decode: {e}"
            ))
        })?;
        self.refreshes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The rotated refresh token first, whatever else the answer holds: the old one is
        // dead at the endpoint now.
        if let Some(new_refresh) = token.refresh_token
            && Some(new_refresh.as_str()) != refresh.as_ref().map(Secret::expose)
        {
            if new_refresh.is_empty() || new_refresh.len() > MAX_TOKEN_BYTES {
                return Err(retry(
                    "the OAuth2 token endpoint answered an empty or oversized refresh token",
                ));
            }
            // The new one is the only truth, in memory first (it cannot go back), then on
            // disk before any use.
            state.refresh = Some(Secret(new_refresh));
            state.unsaved = true;
            self.save(&mut state)?;
        }
        let access_token = token
            .access_token
            .filter(|t| !t.is_empty() && t.len() <= MAX_TOKEN_BYTES)
            .ok_or_else(|| {
                retry(
                    "the OAuth2 token endpoint answered no, an empty or an oversized access token",
                )
            })?;
        let lifetime = Duration::from_secs(
            token
                .expires_in
                .unwrap_or(DEFAULT_TOKEN_LIFETIME)
                .clamp(1, MAX_TOKEN_LIFETIME),
        );
        let access = Secret(access_token);
        state.access = Some(CachedToken {
            access_token: access.clone(),
            refresh_at: asked + refresh_after(lifetime),
        });
        Ok(access)
    }

    /// Keeps this client's secrets (the cached access token, the refresh token, the client
    /// secret) out of an error made of a receiver's answer, which may echo what it was
    /// shown.
    pub async fn scrub_error(&self, error: DeliveryError) -> DeliveryError {
        let state = self.state.lock().await;
        let secrets: Vec<&str> = [
            state.access.as_ref().map(|a| a.access_token.expose()),
            state.refresh.as_ref().map(Secret::expose),
            self.config.refresh_token.as_ref().map(Secret::expose),
            Some(self.config.client_secret.expose()),
        ]
        .into_iter()
        .flatten()
        .collect();
        crate::watch::destinations::scrub_texts(error, &secrets)
    }

    /// Forgets the cached access token (the next call fetches one).
    pub async fn invalidate(&self) {
        self.state.lock().await.access = None;
    }

    /// Sends the request `build` makes with a bearer token; after a 401, refreshes the
    /// token once and sends once more. A second 401 is a retry (the token was refused
    /// fresh: a configuration or clock problem on their side, worth another try later).
    pub async fn send(
        &self,
        client: &reqwest::Client,
        what: &str,
        build: impl Fn(&Secret) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, DeliveryError> {
        let token = self.token(client, false).await?;
        let response = build(&token)
            .send()
            .await
            .map_err(|e| transport_error(what, e))?;
        if response.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let token = self.fetch(client, Fresh::Replacing(&token)).await?;
        let response = build(&token)
            .send()
            .await
            .map_err(|e| transport_error(what, e))?;
        if response.status() == reqwest::StatusCode::UNAUTHORIZED {
            self.invalidate().await;
            return Err(retry(format!(
                "{what} refused a freshly fetched OAuth2 token (401)"
            )));
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tokens_are_refreshed_before_they_expire() {
        assert_eq!(
            refresh_after(Duration::from_secs(3_600)),
            Duration::from_secs(3_540)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(10)),
            Duration::from_secs(9)
        );
    }

    /// `"expires_in": 1e400` is no JSON number serde_json takes (out of a double's range),
    /// so the whole answer failed to decode, the rotated refresh token with it. Now an
    /// out-of-range number is read as the largest (or, negative, the smallest) lifetime,
    /// which the caller clamps, and the rest of the answer is kept.
    #[test]
    fn an_out_of_range_lifetime_does_not_cost_the_rest_of_the_answer() {
        for (expires_in, read) in [
            ("1e400", Some(u64::MAX)),
            ("1E+400", Some(u64::MAX)),
            ("-1e400", Some(0)),
            ("1e-400", Some(0)),
            ("3600", Some(3_600)),
            ("3600.9", Some(3_600)),
            ("-5", Some(0)),
            ("\"60\"", Some(60)),
            ("null", None),
            ("[1e400]", None),
        ] {
            let body = format!(
                r#"{{"access_token":"at","expires_in":{expires_in},"refresh_token":"rt-2"}}"#
            );
            let token = TokenResponse::read(&body).unwrap();
            assert_eq!(token.expires_in, read, "{body}");
            assert_eq!(token.refresh_token.as_deref(), Some("rt-2"), "{body}");
            assert_eq!(token.access_token.as_deref(), Some("at"), "{body}");
        }
        // A repeated key counts once, the last time, as before.
        let token = TokenResponse::read(r#"{"refresh_token":"a","refresh_token":"b"}"#).unwrap();
        assert_eq!(token.refresh_token.as_deref(), Some("b"));
        assert!(TokenResponse::read("[1]").is_err());
        assert!(TokenResponse::read(r#"{"refresh_token":"a""#).is_err());
    }

    #[test]
    fn token_files_are_sealed_per_destination_and_names_cannot_escape() {
        let dir = tempfile::tempdir().unwrap();
        let crypto = Arc::new(crate::crypto::load(None, &[], dir.path()).unwrap());
        let vault = TokenVault::open(dir.path(), crypto).unwrap();
        let evil = "../../etc/passwd";
        assert_eq!(
            vault.path(evil).parent().unwrap(),
            dir.path().join("oauth2")
        );
        let p = Persisted {
            origin: "o".into(),
            refresh_token: "rt-secret".into(),
        };
        vault.save("a", &p).unwrap();
        let bytes = std::fs::read(vault.path("a")).unwrap();
        assert!(!bytes.windows(9).any(|w| w == b"rt-secret"));
        assert_eq!(vault.load("a").unwrap().unwrap().refresh_token, "rt-secret");
        // Moved to another destination's file: does not open.
        std::fs::copy(vault.path("a"), vault.path("b")).unwrap();
        assert!(
            vault
                .load("b")
                .is_err_and(|e| e.contains("another context"))
        );
        assert!(vault.load("c").unwrap().is_none());
    }
}
