//! A fake OAuth2 authorisation server and a protected, idempotent receiver.
//!
//! The contract enforced, as real servers do:
//! - the client authenticates with HTTP Basic (`client_id:client_secret`), else 401
//!   `invalid_client`;
//! - `grant_type=client_credentials` issues an access token;
//! - `grant_type=refresh_token` needs the **current** refresh token: it issues an access
//!   token and a new refresh token and invalidates the old one; an old or unknown refresh
//!   token is 400 `invalid_grant` (rotation with reuse detection, no grace);
//! - access tokens expire after `lifetime`; the receiver answers 401 to an expired,
//!   revoked or unknown token;
//! - the receiver is idempotent by `Idempotency-Key`: a repeated key is answered 200 and
//!   not recorded again (duplicates are counted).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct AuthState {
    /// access token → issued at.
    pub access: HashMap<String, Instant>,
    /// The one valid refresh token.
    pub current_refresh: Option<String>,
    /// Every refresh token ever issued, in order.
    pub refresh_issued: Vec<String>,
    pub issued: u64,
    /// Token endpoint answers, by status.
    pub token_statuses: Vec<u16>,
    /// Receiver answers, by status.
    pub push_statuses: Vec<u16>,
    /// Idempotency keys received, in order, first time only.
    pub received: Vec<(String, String)>,
    pub duplicates: u64,
}

pub struct FakeAuth {
    pub client_id: String,
    pub client_secret: String,
    pub lifetime: Mutex<Duration>,
    pub state: Mutex<AuthState>,
    /// How long an accepted push is held before its answer (to kill a client mid-push).
    pub push_delay: Mutex<Duration>,
    /// Pushes accepted and not yet answered.
    pub in_flight: std::sync::atomic::AtomicU64,
}

impl FakeAuth {
    pub fn new(client_id: &str, client_secret: &str, initial_refresh: Option<&str>) -> Arc<Self> {
        let state = AuthState {
            current_refresh: initial_refresh.map(str::to_owned),
            ..AuthState::default()
        };
        Arc::new(FakeAuth {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            lifetime: Mutex::new(Duration::from_secs(3600)),
            state: Mutex::new(state),
            push_delay: Mutex::new(Duration::ZERO),
            in_flight: std::sync::atomic::AtomicU64::new(0),
        })
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/oauth/token", post(token))
            .route("/vedetta/push", post(push))
            .with_state(self.clone())
    }

    /// Revokes every access token (the next protected call gets a 401).
    pub fn revoke_access(&self) {
        self.state.lock().unwrap().access.clear();
    }

    /// Whether `token` is a live access token (for other fakes that trust this server).
    pub fn valid_access(&self, token: &str) -> bool {
        let lifetime = *self.lifetime.lock().unwrap();
        let state = self.state.lock().unwrap();
        state
            .access
            .get(token)
            .is_some_and(|at| at.elapsed() < lifetime)
    }

    pub fn current_refresh(&self) -> Option<String> {
        self.state.lock().unwrap().current_refresh.clone()
    }
}

fn form(body: &str) -> HashMap<String, String> {
    body.split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((decode(k), decode(v)))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let h = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(h, 16).unwrap());
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

fn basic(id: &str, secret: &str) -> String {
    use base64_lite::encode;
    format!("Basic {}", encode(format!("{id}:{secret}").as_bytes()))
}

/// A tiny standard base64 encoder (the tests need nothing more).
mod base64_lite {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    pub fn encode(input: &[u8]) -> String {
        let mut out = String::new();
        for chunk in input.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

fn oauth_error(status: StatusCode, error: &str) -> Response {
    (
        status,
        [("content-type", "application/json")],
        format!("{{\"error\":\"{error}\"}}"),
    )
        .into_response()
}

async fn token(State(auth): State<Arc<FakeAuth>>, headers: HeaderMap, body: String) -> Response {
    let response = token_answer(&auth, &headers, &body);
    auth.state
        .lock()
        .unwrap()
        .token_statuses
        .push(response.status().as_u16());
    response
}

fn token_answer(auth: &FakeAuth, headers: &HeaderMap, body: &str) -> Response {
    let given = headers.get("authorization").and_then(|v| v.to_str().ok());
    if given != Some(basic(&auth.client_id, &auth.client_secret).as_str()) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    let form = form(body);
    let lifetime = *auth.lifetime.lock().unwrap();
    let mut state = auth.state.lock().unwrap();
    let rotate = match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => false,
        Some("refresh_token") => {
            let given = form.get("refresh_token");
            if given.is_none() || given != state.current_refresh.as_ref() {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            }
            true
        }
        _ => return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
    };
    state.issued += 1;
    let access = format!("at-{}", state.issued);
    state.access.insert(access.clone(), Instant::now());
    let mut answer = serde_json::json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": lifetime.as_secs(),
    });
    if rotate {
        let next = format!("rt-{}", state.issued);
        state.current_refresh = Some(next.clone());
        state.refresh_issued.push(next.clone());
        answer["refresh_token"] = serde_json::Value::String(next);
    }
    axum::Json(answer).into_response()
}

/// Decrements the in-flight count however the handler ends (also when it is dropped
/// because the client at the other end was killed).
struct InFlight<'a>(&'a std::sync::atomic::AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn push(State(auth): State<Arc<FakeAuth>>, headers: HeaderMap, body: String) -> Response {
    let response = push_answer(&auth, &headers, body);
    if response.status() == StatusCode::OK {
        auth.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let _guard = InFlight(&auth.in_flight);
        let delay = *auth.push_delay.lock().unwrap();
        tokio::time::sleep(delay).await;
    }
    response
}

fn push_answer(auth: &FakeAuth, headers: &HeaderMap, body: String) -> Response {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let lifetime = *auth.lifetime.lock().unwrap();
    let mut state = auth.state.lock().unwrap();
    let valid = bearer
        .as_ref()
        .and_then(|t| state.access.get(t))
        .is_some_and(|at| at.elapsed() < lifetime);
    if !valid {
        state.push_statuses.push(401);
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_token");
    }
    let Some(key) = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        state.push_statuses.push(400);
        return (StatusCode::BAD_REQUEST, "Idempotency-Key is required").into_response();
    };
    if state.received.iter().any(|(k, _)| *k == key) {
        state.duplicates += 1;
    } else {
        state.received.push((key, body));
    }
    state.push_statuses.push(200);
    StatusCode::OK.into_response()
}

/// Serves `router` on a free loopback port; returns `http://127.0.0.1:port`.
pub async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}
