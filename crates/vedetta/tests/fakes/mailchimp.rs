//! A fake Mailchimp Marketing API (`/3.0`) enforcing the contract Vedetta relies on:
//! - HTTP Basic with the API key as password (any user name), else 401;
//! - `PUT /lists/{list}/members/{hash}`: the list must exist (404), `hash` must be the MD5
//!   of the lower-cased `email_address` (400 otherwise), `status_if_new` is required for
//!   a new member; an address on the `fake_addresses` list is 400 with the address echoed
//!   in the answer, as Mailchimp does ("… looks fake or invalid");
//! - `POST …/members/{hash}/tags`: 404 for an unknown member; answers **204 even for a tag
//!   it drops** (a name over 100 characters, or on `dropped_tags`): only a read-back shows it;
//!   tags are the audience's and case-insensitive: a name that differs from one of the
//!   audience's only in case is that tag, and reads back as the audience spells it;
//! - `GET …/members/{hash}/tags`: the member's tags a page at a time, as Mailchimp pages
//!   (`count` 10 by default and at most 1,000; `offset`), with `total_items`;
//! - `POST …/members/{hash}/events`: name of 2 to 30 of `[A-Za-z0-9_-]`, else 400; 204;
//! - `POST /batches`: runs the operations (their `body` is a JSON string) and answers a
//!   batch id; `GET /batches/{id}` says `started` once, then `finished` with counts.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use md5::Digest;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
pub struct Member {
    pub email: String,
    pub status: String,
    pub merge_fields: BTreeMap<String, String>,
    pub tags: BTreeSet<String>,
    /// (name, properties).
    pub events: Vec<(String, Value)>,
}

#[derive(Debug, Default)]
pub struct McState {
    /// (list, hash) → member.
    pub members: BTreeMap<(String, String), Member>,
    /// (method, path, status) of every direct request.
    pub log: Vec<(String, String, u16)>,
    /// Operations run inside batches.
    pub batch_operations: usize,
    /// batch id → (operations, errored, polls).
    pub batches: BTreeMap<String, (usize, usize, u32)>,
    pub dropped_tags: BTreeSet<String>,
    pub fake_addresses: BTreeSet<String>,
}

pub struct FakeMailchimp {
    pub api_key: String,
    pub list: String,
    pub state: Mutex<McState>,
    /// When set, `Authorization: Bearer` tokens this server issued are accepted too (an
    /// OAuth2 app's access).
    pub oauth2: Mutex<Option<Arc<super::oauth2::FakeAuth>>>,
}

pub fn md5_hex(email: &str) -> String {
    md5::Md5::digest(email.to_lowercase().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl FakeMailchimp {
    pub fn new(api_key: &str, list: &str) -> Arc<Self> {
        Arc::new(FakeMailchimp {
            api_key: api_key.into(),
            list: list.into(),
            state: Mutex::new(McState::default()),
            oauth2: Mutex::new(None),
        })
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new().fallback(handle).with_state(self.clone())
    }

    pub fn count(&self, method: &str, suffix: &str) -> usize {
        let state = self.state.lock().unwrap();
        state
            .log
            .iter()
            .filter(|l| l.0 == method && l.1.ends_with(suffix))
            .count()
    }
}

fn problem(status: StatusCode, title: &str, detail: &str) -> Response {
    (
        status,
        axum::Json(json!({"type": "about:blank", "title": title, "status": status.as_u16(), "detail": detail})),
    )
        .into_response()
}

fn basic_password(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = decode_base64(encoded)?;
    let text = String::from_utf8(decoded).ok()?;
    Some(text.split_once(':')?.1.to_owned())
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c)? as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    Some(out)
}

async fn handle(
    State(mc): State<Arc<FakeMailchimp>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    let bearer_ok = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .zip(mc.oauth2.lock().unwrap().clone())
        .is_some_and(|(token, auth)| auth.valid_access(token));
    let mut state = mc.state.lock().unwrap();
    let response = if !bearer_ok && basic_password(&headers).as_deref() != Some(mc.api_key.as_str())
    {
        problem(
            StatusCode::UNAUTHORIZED,
            "API Key Invalid",
            "Your API key may be invalid.",
        )
    } else {
        let path = uri
            .path()
            .strip_prefix("/3.0")
            .unwrap_or("/not-the-api-root")
            .to_owned();
        if method == Method::POST && path == "/batches" {
            run_batch(&mc, &mut state, &body)
        } else if method == Method::GET && path.starts_with("/batches/") {
            let id = &path["/batches/".len()..];
            match state.batches.get_mut(id) {
                None => problem(StatusCode::NOT_FOUND, "Resource Not Found", "no such batch"),
                Some((total, errored, polls)) => {
                    *polls += 1;
                    let status = if *polls >= 2 { "finished" } else { "started" };
                    axum::Json(json!({
                        "id": id, "status": status, "total_operations": total,
                        "finished_operations": if status == "finished" { *total } else { 0 },
                        "errored_operations": if status == "finished" { *errored } else { 0 },
                    }))
                    .into_response()
                }
            }
        } else {
            let query = uri.query().unwrap_or_default();
            operate(&mc, &mut state, method.as_str(), &path, query, &body)
        }
    };
    let status = response.status().as_u16();
    state
        .log
        .push((method.to_string(), uri.path().to_owned(), status));
    response
}

fn run_batch(mc: &FakeMailchimp, state: &mut McState, body: &str) -> Response {
    let Ok(request) = serde_json::from_str::<Value>(body) else {
        return problem(StatusCode::BAD_REQUEST, "Invalid Resource", "not JSON");
    };
    let Some(operations) = request["operations"].as_array() else {
        return problem(
            StatusCode::BAD_REQUEST,
            "Invalid Resource",
            "operations is required",
        );
    };
    let mut errored = 0;
    for op in operations {
        let method = op["method"].as_str().unwrap_or_default();
        let path = op["path"].as_str().unwrap_or_default();
        let body = op["body"].as_str().unwrap_or_default();
        state.batch_operations += 1;
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        if !operate(mc, state, method, path, query, body)
            .status()
            .is_success()
        {
            errored += 1;
        }
    }
    let id = format!("batch{}", state.batches.len() + 1);
    state
        .batches
        .insert(id.clone(), (operations.len(), errored, 0));
    axum::Json(json!({"id": id, "status": "pending"})).into_response()
}

fn operate(
    mc: &FakeMailchimp,
    state: &mut McState,
    method: &str,
    path: &str,
    query: &str,
    body: &str,
) -> Response {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let body: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let (list, hash, rest) = match parts.as_slice() {
        ["lists", list, "members", hash, rest @ ..] => (*list, *hash, rest),
        _ => {
            return problem(
                StatusCode::NOT_FOUND,
                "Resource Not Found",
                "no such resource",
            );
        }
    };
    if list != mc.list {
        return problem(
            StatusCode::NOT_FOUND,
            "Resource Not Found",
            "The requested resource could not be found.",
        );
    }
    let key = (list.to_owned(), hash.to_owned());
    match (method, rest) {
        ("PUT", []) => {
            let Some(email) = body["email_address"].as_str() else {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "Invalid Resource",
                    "email_address is required",
                );
            };
            if state.fake_addresses.contains(email) {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "Invalid Resource",
                    &format!("{email} looks fake or invalid, please enter a real email address."),
                );
            }
            if md5_hex(email) != hash {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "Invalid Resource",
                    "The subscriber hash does not match the email address",
                );
            }
            let merge: BTreeMap<String, String> = body["merge_fields"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default();
            match state.members.get_mut(&key) {
                Some(m) => m.merge_fields.extend(merge),
                None => {
                    let status = body["status_if_new"].as_str().unwrap_or_default();
                    if ![
                        "subscribed",
                        "unsubscribed",
                        "cleaned",
                        "pending",
                        "transactional",
                    ]
                    .contains(&status)
                    {
                        return problem(
                            StatusCode::BAD_REQUEST,
                            "Invalid Resource",
                            "status_if_new is required for a new member",
                        );
                    }
                    state.members.insert(
                        key.clone(),
                        Member {
                            email: email.into(),
                            status: status.into(),
                            merge_fields: merge,
                            ..Member::default()
                        },
                    );
                }
            }
            let m = &state.members[&key];
            axum::Json(json!({"id": hash, "email_address": m.email, "status": m.status}))
                .into_response()
        }
        ("POST", ["tags"]) => {
            let dropped = state.dropped_tags.clone();
            // The audience's tags, by their lower-cased name.
            let audience: BTreeMap<String, String> = (state.members.iter())
                .filter(|((l, _), _)| l == list)
                .flat_map(|(_, m)| m.tags.iter())
                .map(|t| (t.to_lowercase(), t.clone()))
                .collect();
            let Some(m) = state.members.get_mut(&key) else {
                return problem(
                    StatusCode::NOT_FOUND,
                    "Resource Not Found",
                    "no such member",
                );
            };
            for tag in body["tags"].as_array().into_iter().flatten() {
                let name = tag["name"].as_str().unwrap_or_default();
                if name.chars().count() > 100 || dropped.contains(name) {
                    continue; // the 204 says nothing about it
                }
                let name = audience
                    .get(&name.to_lowercase())
                    .cloned()
                    .unwrap_or_else(|| name.to_owned());
                if tag["status"].as_str() == Some("inactive") {
                    m.tags.remove(&name);
                } else {
                    m.tags.insert(name);
                }
            }
            StatusCode::NO_CONTENT.into_response()
        }
        ("GET", ["tags"]) => {
            let Some(m) = state.members.get(&key) else {
                return problem(
                    StatusCode::NOT_FOUND,
                    "Resource Not Found",
                    "no such member",
                );
            };
            let param = |name: &str| -> Option<usize> {
                query
                    .split('&')
                    .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
                    .and_then(|v| v.parse().ok())
            };
            let count = param("count").unwrap_or(10).min(1000);
            let offset = param("offset").unwrap_or(0);
            let tags: Vec<Value> = m
                .tags
                .iter()
                .enumerate()
                .skip(offset)
                .take(count)
                .map(|(i, t)| {
                    json!({"id": i + 1, "name": t, "date_added": "2026-12-04T10:00:00+00:00"})
                })
                .collect();
            axum::Json(json!({"tags": tags, "total_items": m.tags.len()})).into_response()
        }
        ("POST", ["events"]) => {
            let Some(m) = state.members.get_mut(&key) else {
                return problem(
                    StatusCode::NOT_FOUND,
                    "Resource Not Found",
                    "no such member",
                );
            };
            let name = body["name"].as_str().unwrap_or_default();
            let ok = (2..=30).contains(&name.len())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !ok {
                return problem(StatusCode::BAD_REQUEST, "Invalid Resource", "event name");
            }
            m.events.push((name.to_owned(), body["properties"].clone()));
            StatusCode::NO_CONTENT.into_response()
        }
        _ => problem(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method Not Allowed",
            "not here",
        ),
    }
}
