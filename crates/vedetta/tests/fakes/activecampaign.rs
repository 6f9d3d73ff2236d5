//! A fake ActiveCampaign account (API v3) enforcing the contract Vedetta relies on:
//! - every request carries `Api-Token: <token>`, else 403;
//! - at most 5 requests in any second (the documented per-account limit), else 429 with
//!   `Retry-After: 1`; a test may also force 429s (`force_429`);
//! - `POST /api/3/contact/sync` creates or updates a contact by e-mail (case-insensitive)
//!   and sets `fieldValues` (unknown field ids are 422);
//! - tag names are case-insensitive, as ActiveCampaign documents ("Tags should be treated
//!   as case-insensitive", Create a tag, API v3): `GET /api/3/tags?search=` matches names by
//!   substring ignoring case, like the real search, a page at a time (`limit`, 20 by default
//!   and at most 100; `offset`); `POST /api/3/tags` creates one (a name that differs from
//!   an existing one only in case is a duplicate: 422);
//! - `POST /api/3/contactTags` links an existing contact and tag (unknown ones are 422;
//!   a repeat answers the existing link).

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct Contact {
    pub id: u64,
    pub email: String,
    /// field id → value.
    pub fields: BTreeMap<String, String>,
    /// tag ids.
    pub tags: BTreeSet<u64>,
}

#[derive(Debug, Default)]
pub struct AcState {
    pub contacts: Vec<Contact>,
    /// id → name.
    pub tags: BTreeMap<u64, String>,
    next_id: u64,
    /// (when, method, path, status) of every request.
    pub log: Vec<(Instant, String, String, u16)>,
    pub force_429: u32,
}

pub struct FakeActiveCampaign {
    pub token: String,
    pub field_ids: BTreeSet<String>,
    pub state: Mutex<AcState>,
}

impl FakeActiveCampaign {
    pub fn new(token: &str, field_ids: &[&str]) -> Arc<Self> {
        Arc::new(FakeActiveCampaign {
            token: token.into(),
            field_ids: field_ids.iter().map(|s| (*s).to_owned()).collect(),
            state: Mutex::new(AcState::default()),
        })
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new().fallback(handle).with_state(self.clone())
    }

    /// The most requests the fake saw in any one-second window.
    pub fn peak_per_second(&self) -> usize {
        let state = self.state.lock().unwrap();
        let times: Vec<Instant> = state.log.iter().map(|(t, ..)| *t).collect();
        times
            .iter()
            .map(|start| {
                times
                    .iter()
                    .filter(|t| **t >= *start && t.duration_since(*start) < Duration::from_secs(1))
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    pub fn statuses(&self) -> Vec<u16> {
        self.state.lock().unwrap().log.iter().map(|l| l.3).collect()
    }

    pub fn count(&self, method: &str, path: &str) -> usize {
        let state = self.state.lock().unwrap();
        state
            .log
            .iter()
            .filter(|l| l.1 == method && l.2 == path)
            .count()
    }
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

async fn handle(
    State(ac): State<Arc<FakeActiveCampaign>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    let now = Instant::now();
    let mut state = ac.state.lock().unwrap();
    let recent = state
        .log
        .iter()
        .filter(|l| now.duration_since(l.0) < Duration::from_secs(1))
        .count();
    let response = if headers.get("api-token").and_then(|v| v.to_str().ok()) != Some(&ac.token) {
        answer(StatusCode::FORBIDDEN, json!({"message": "Forbidden"}))
    } else if state.force_429 > 0 {
        state.force_429 -= 1;
        (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "2")],
            "slow down",
        )
            .into_response()
    } else if recent >= 5 {
        (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            "slow down",
        )
            .into_response()
    } else {
        route(&ac, &mut state, &method, &uri, &body)
    };
    let status = response.status().as_u16();
    state
        .log
        .push((now, method.to_string(), uri.path().to_owned(), status));
    response
}

fn route(
    ac: &FakeActiveCampaign,
    state: &mut AcState,
    method: &Method,
    uri: &Uri,
    body: &str,
) -> Response {
    let body: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    match (method.as_str(), uri.path()) {
        ("POST", "/api/3/contact/sync") => {
            let Some(email) = body["contact"]["email"].as_str() else {
                return answer(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({"errors": [{"title": "Email is required"}]}),
                );
            };
            let mut fields = BTreeMap::new();
            for fv in body["contact"]["fieldValues"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let id = fv["field"].as_str().unwrap_or_default().to_owned();
                if !ac.field_ids.contains(&id) {
                    return answer(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        json!({"errors": [{"title": "Field not found"}]}),
                    );
                }
                fields.insert(id, fv["value"].as_str().unwrap_or_default().to_owned());
            }
            let lower = email.to_lowercase();
            let (id, created) = match state
                .contacts
                .iter_mut()
                .find(|c| c.email.to_lowercase() == lower)
            {
                Some(c) => {
                    c.fields.extend(fields);
                    (c.id, false)
                }
                None => {
                    state.next_id += 1;
                    let id = state.next_id;
                    state.contacts.push(Contact {
                        id,
                        email: email.into(),
                        fields,
                        tags: BTreeSet::new(),
                    });
                    (id, true)
                }
            };
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            answer(
                status,
                json!({"contact": {"id": id.to_string(), "email": email}}),
            )
        }
        ("GET", "/api/3/tags") => {
            let search = uri
                .query()
                .unwrap_or_default()
                .split('&')
                .find_map(|p| p.strip_prefix("search="))
                .map(|s| s.replace('+', " "))
                .map(|s| percent_decode(&s))
                .unwrap_or_default();
            // Paged like the real list: `limit` 20 by default, at most 100; `offset`.
            let param = |name: &str| -> Option<usize> {
                uri.query()
                    .unwrap_or_default()
                    .split('&')
                    .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
                    .and_then(|v| v.parse().ok())
            };
            let limit = param("limit").unwrap_or(20).min(100);
            let offset = param("offset").unwrap_or(0);
            let matching: Vec<Value> = state
                .tags
                .iter()
                .filter(|(_, name)| name.to_lowercase().contains(&search.to_lowercase()))
                .map(|(id, name)| json!({"id": id.to_string(), "tag": name, "tagType": "contact"}))
                .collect();
            let total = matching.len();
            let tags: Vec<Value> = matching.into_iter().skip(offset).take(limit).collect();
            answer(
                StatusCode::OK,
                json!({"tags": tags, "meta": {"total": total.to_string()}}),
            )
        }
        ("POST", "/api/3/tags") => {
            let Some(name) = body["tag"]["tag"].as_str() else {
                return answer(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({"errors": [{"title": "tag is required"}]}),
                );
            };
            if state
                .tags
                .values()
                .any(|t| t.to_lowercase() == name.to_lowercase())
            {
                return answer(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({"errors": [{"title": "duplicate tag"}]}),
                );
            }
            state.next_id += 1;
            let id = state.next_id;
            state.tags.insert(id, name.into());
            answer(
                StatusCode::CREATED,
                json!({"tag": {"id": id.to_string(), "tag": name}}),
            )
        }
        ("POST", "/api/3/contactTags") => {
            let contact: Option<u64> = body["contactTag"]["contact"]
                .as_str()
                .and_then(|s| s.parse().ok());
            let tag: Option<u64> = body["contactTag"]["tag"]
                .as_str()
                .and_then(|s| s.parse().ok());
            let (Some(contact), Some(tag)) = (contact, tag) else {
                return answer(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({"errors": [{"title": "contact and tag are required"}]}),
                );
            };
            if !state.tags.contains_key(&tag) {
                return answer(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({"errors": [{"title": "no such tag"}]}),
                );
            }
            let Some(c) = state.contacts.iter_mut().find(|c| c.id == contact) else {
                return answer(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({"errors": [{"title": "no such contact"}]}),
                );
            };
            c.tags.insert(tag);
            answer(
                StatusCode::CREATED,
                json!({"contactTag": {"contact": contact.to_string(), "tag": tag.to_string()}}),
            )
        }
        _ => answer(StatusCode::NOT_FOUND, json!({"message": "No Result found"})),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            out.push(
                u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap(), 16).unwrap(),
            );
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}
