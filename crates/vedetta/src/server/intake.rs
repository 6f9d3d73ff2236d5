//! `POST /v1/events` and `POST /v1/costs`.
//!
//! The handler is the adapter around `vedetta_core::intake`: it reads the body within the
//! size, memory and time bounds, undoes `gzip`, hands the bytes to the pure judge, and
//! submits the accepted records to the group-commit writer. It answers only after the writer
//! reports the records fsynced: a 200 means durable.
//!
//! Memory for bodies is reserved from the shared budget as bytes arrive (and as gzip
//! inflates), never for what a client merely declares: a slow or stalled upload holds only
//! what it has sent, and cannot starve the fast ones.
//!
//! Statuses: 200 when at least one record was accepted; 400 when none was (or the body
//! could not be split into events); 408 when the body stalls or trickles; 413 over the byte
//! or event limit; 415 for a content type or encoding it cannot read; 503 with
//! `Retry-After` over a backpressure bound.

use super::{ApiError, AppState};
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;
use vedetta_core::intake::{self, BodyFormat, IntakeContext, Judged};
use vedetta_core::record::encode_batch;
use vedetta_core::time::EventTime;
use vedetta_store::{AppendError, EncodedBatch};

/// Which intake endpoint a request came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Endpoint {
    Events,
    Costs,
}

/// The verdict on a request: how many records were stored, and why the others were not.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IntakeResponse {
    pub accepted: usize,
    pub rejected: Vec<RejectedItem>,
    /// The log offset just past this request's records: once `/v1/status` shows
    /// `processed_offset` at or beyond it, they are counted in `/v1/kpis`.
    pub end_offset: u64,
}

/// One refused record.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RejectedItem {
    /// Position in the request: array index, or 0-based line number for NDJSON.
    pub index: usize,
    pub error: String,
}

/// Funnel events: one JSON object, a JSON array, or NDJSON; gzip accepted.
#[utoipa::path(
    post,
    path = "/v1/events",
    request_body(
        content((Object = "application/json"), (String = "application/x-ndjson")),
        description = "One event object (docs/events.md), an array of them, or one per line",
    ),
    responses(
        (status = 200, description = "At least one event stored (fsynced)", body = IntakeResponse),
        (status = 400, description = "No event stored; each refusal says why", body = IntakeResponse),
        (status = 401, description = "Missing or wrong API key", body = super::openapi::ErrorBody),
        (status = 408, description = "The body stalled or arrived too slowly", body = super::openapi::ErrorBody),
        (status = 413, description = "Body over the byte or event limit", body = super::openapi::ErrorBody),
        (status = 415, description = "Unknown Content-Type or Content-Encoding", body = super::openapi::ErrorBody),
        (status = 503, description = "Over a backpressure bound; see Retry-After", body = super::openapi::ErrorBody),
    )
)]
pub async fn post_events(
    State(state): State<Arc<AppState>>,
    uri: axum::http::Uri,
    peer: Option<axum::Extension<super::listener::PeerAddress>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if let Some(site) = super::auth::query_value(uri.query().unwrap_or(""), "site") {
        let peer = peer.map(|axum::Extension(p)| p.0);
        return super::site_intake::post_site_events(&state, &site, &uri, peer, &headers, body)
            .await;
    }
    respond(
        &state,
        accept(&state, &headers, body, Endpoint::Events, None).await,
    )
}

/// Ad spend records, same rules as events.
#[utoipa::path(
    post,
    path = "/v1/costs",
    request_body(
        content((Object = "application/json"), (String = "application/x-ndjson")),
        description = "Spend records: {ts, channel, campaign, amount, currency, source}",
    ),
    responses(
        (status = 200, description = "At least one record stored (fsynced)", body = IntakeResponse),
        (status = 400, description = "No record stored", body = IntakeResponse),
        (status = 401, description = "Missing or wrong API key", body = super::openapi::ErrorBody),
        (status = 408, description = "The body stalled or arrived too slowly", body = super::openapi::ErrorBody),
        (status = 413, description = "Body over the byte or record limit", body = super::openapi::ErrorBody),
        (status = 415, description = "Unknown Content-Type or Content-Encoding", body = super::openapi::ErrorBody),
        (status = 503, description = "Over a backpressure bound; see Retry-After", body = super::openapi::ErrorBody),
    )
)]
pub async fn post_costs(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    respond(
        &state,
        accept(&state, &headers, body, Endpoint::Costs, None).await,
    )
}

pub(super) fn respond(state: &AppState, result: Result<IntakeResponse, ApiError>) -> Response {
    match result {
        Ok(response) => {
            let status = if response.accepted > 0 {
                StatusCode::OK
            } else {
                state.counters.count_refusal(400);
                StatusCode::BAD_REQUEST
            };
            (status, Json(response)).into_response()
        }
        Err(error) => {
            match &error {
                ApiError::Busy { .. } => {
                    crate::telemetry::IntakeCounters::add(&state.counters.requests_throttled, 1)
                }
                other => state.counters.count_refusal(other.status().as_u16()),
            }
            error.into_response()
        }
    }
}

/// What a browser request with a site key brings to intake (`site_intake`).
pub(super) struct BrowserRequest<'a> {
    pub context: vedetta_core::intake::browser::BrowserContext<'a>,
    pub max_body_bytes: usize,
    pub max_events_per_request: usize,
}

pub(super) async fn accept(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    endpoint: Endpoint,
    browser: Option<&BrowserRequest<'_>>,
) -> Result<IntakeResponse, ApiError> {
    let format = body_format(headers)?;
    let max_body = browser.map_or(state.config.ingest.max_body_bytes, |b| b.max_body_bytes);
    // Memory for this body is reserved as it arrives; when the budget is spent, the client
    // is asked to come back rather than the server growing without bound. The reservation
    // is held until the answer (the records it became are in memory until then).
    let mut reservation = BodyBudget::new(&state.body_budget);
    let bytes = read_body(state, headers, body, max_body, &mut reservation).await?;
    judge_and_store(state, &bytes, format, endpoint, browser).await
}

/// Reads a request body within `max_body` bytes, the memory budget and the pace bounds,
/// and undoes `gzip`.
pub(super) async fn read_body(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    max_body: usize,
    reservation: &mut BodyBudget<'_>,
) -> Result<Vec<u8>, ApiError> {
    let gzip = content_encoding_is_gzip(headers)?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(length) = declared
        && length > max_body
    {
        return Err(too_large(length, max_body));
    }
    let pace = BodyPace {
        stall: state.config.ingest.body_timeout,
        min_bytes_per_second: state.config.ingest.min_body_rate_bytes_per_second,
    };
    let raw = read_limited(body, max_body, pace, reservation).await?;
    if gzip {
        gunzip_limited(&raw, max_body, reservation)
    } else {
        Ok(raw)
    }
}

/// Seals the identities of accepted events and applies them to the identity store
/// (marketing consent decides what is kept), durably. A failure is a 503 that says a resend
/// is safe. Nothing here logs an identity: errors name the store, never the values.
async fn store_identities(
    state: &AppState,
    identities: Vec<intake::IdentityClaim>,
) -> Result<(), ApiError> {
    if identities.is_empty() {
        return Ok(());
    }
    let crypto = state.crypto.clone();
    let store = state.identity_store.clone();
    let result = tokio::task::spawn_blocking(move || {
        let mut writes = Vec::with_capacity(identities.len());
        for claim in identities {
            let pseudonym = claim.user.to_hex();
            let seal = |field, value: Option<String>| {
                value
                    .map(|v| crypto.seal_identity(field, &pseudonym, &v))
                    .transpose()
            };
            writes.push(vedetta_store::IdentityWrite {
                user: claim.user.0,
                ts_ms: claim.ts.0,
                marketing: claim.marketing,
                email: seal(crate::crypto::IdentityField::Email, claim.email)
                    .map_err(|e| format!("sealing: {e}"))?,
                crm_id: seal(crate::crypto::IdentityField::CrmId, claim.crm_id)
                    .map_err(|e| format!("sealing: {e}"))?,
            });
        }
        store.apply(&writes).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    match result {
        Ok(outcome) => {
            let c = &state.counters;
            crate::telemetry::IntakeCounters::add(&c.identities_stored, outcome.stored);
            crate::telemetry::IntakeCounters::add(
                &c.identities_dropped_no_consent,
                outcome.dropped_no_consent,
            );
            crate::telemetry::IntakeCounters::add(&c.identities_deleted, outcome.deleted);
            tracing::debug!(
                stored = outcome.stored,
                dropped_no_consent = outcome.dropped_no_consent,
                deleted = outcome.deleted,
                "identity claims applied"
            );
            Ok(())
        }
        Err(reason) => {
            tracing::warn!(%reason, "identity store write failed; request refused");
            Err(ApiError::Busy {
                message: "the identity store could not be written; nothing of this request \
                          was stored, resending it is safe (a resent event is recognised as \
                          a duplicate)"
                    .into(),
                retry_after_s: 5,
            })
        }
    }
}

/// An event that says nothing about marketing consent takes the user's stored decision
/// (given by a consent event, or an earlier event), so the trigger engine, which reads
/// consent from the log, sees a consent event's "yes" or "no" too. Explicit consent on the
/// event is left as sent.
async fn stamp_stored_consent(
    state: &AppState,
    records: &mut [vedetta_core::record::LogRecord],
) -> Result<(), ApiError> {
    use vedetta_core::record::LogRecord;
    let silent: Vec<usize> = records
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match r {
            LogRecord::Event(e) if e.consent.marketing.is_none() => Some(i),
            _ => None,
        })
        .collect();
    if silent.is_empty() {
        return Ok(());
    }
    let users: Vec<[u8; 16]> = silent
        .iter()
        .filter_map(|&i| match &records[i] {
            LogRecord::Event(e) => Some(e.user.0),
            LogRecord::Spend(_) => None,
        })
        .collect();
    let store = state.identity_store.clone();
    let decisions = tokio::task::spawn_blocking(move || store.decisions(&users))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()))
        .map_err(|reason| {
            tracing::warn!(%reason, "identity store read failed; request refused");
            ApiError::Busy {
                message: "the identity store could not be read; nothing of this request was \
                          stored, resending it is safe (a resent event is recognised as a \
                          duplicate)"
                    .into(),
                retry_after_s: 5,
            }
        })?;
    for (&i, decision) in silent.iter().zip(decisions) {
        if let (LogRecord::Event(e), Some(marketing)) = (&mut records[i], decision) {
            e.consent.marketing = Some(marketing);
        }
    }
    Ok(())
}

/// Judges a body of events (or spend records), stores what is accepted and answers once it
/// is durable. Sources that map another payload to events (Shopify, mapped webhooks) call
/// this with the mapped body.
pub(super) async fn judge_and_store(
    state: &AppState,
    bytes: &[u8],
    format: BodyFormat,
    endpoint: Endpoint,
    browser: Option<&BrowserRequest<'_>>,
) -> Result<IntakeResponse, ApiError> {
    let now_ms = state.clock.now_ms();
    let browser_limits;
    let limits = match browser {
        Some(b) => {
            browser_limits = vedetta_core::intake::IntakeLimits {
                max_events_per_request: b.max_events_per_request,
                ..state.limits.clone()
            };
            &browser_limits
        }
        None => &state.limits,
    };
    let ctx = IntakeContext {
        now_ms,
        pseudonymizer: &state.pseudonymizer,
        limits,
    };
    let judged = match (endpoint, browser) {
        (Endpoint::Events, Some(b)) => {
            intake::judge_browser_events(bytes, format, &ctx, &b.context)
        }
        (Endpoint::Events, None) => intake::judge_events(bytes, format, &ctx),
        (Endpoint::Costs, _) => intake::judge_spend(bytes, format, &ctx),
    }
    .map_err(|e| {
        if e.is_too_large() {
            ApiError::PayloadTooLarge(e.to_string())
        } else {
            ApiError::BadRequest(e.to_string())
        }
    })?;
    let accepted = judged.accepted();
    let Judged {
        records,
        rejected,
        identities,
        ..
    } = judged;
    // Identity first: it is durable before the events are, so a failure here leaves
    // nothing stored and the client's resend is safe; a log failure after it leaves
    // identities whose resend rewrites the same decisions.
    store_identities(state, identities).await?;
    let mut records = records;
    stamp_stored_consent(state, &mut records).await?;

    let counters = &state.counters;
    let (accepted_counter, rejected_counter) = match endpoint {
        Endpoint::Events => (&counters.events_accepted, &counters.events_rejected),
        Endpoint::Costs => (&counters.costs_accepted, &counters.costs_rejected),
    };
    let label = match endpoint {
        Endpoint::Events => "events",
        Endpoint::Costs => "costs",
    };
    // `received_at` is what the quarantine's expiry reads (`quarantined_at_ms`).
    let quarantine: Vec<String> = rejected
        .iter()
        .map(|r| {
            serde_json::json!({
                "received_at": EventTime(now_ms).to_rfc3339(),
                "endpoint": label,
                "index": r.index,
                "error": r.error,
                "event": r.redacted.as_deref().and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok()),
            })
            .to_string()
        })
        .collect();
    let batch = EncodedBatch {
        count: records.len() as u32,
        bytes: if records.is_empty() {
            Vec::new()
        } else {
            encode_batch(&records, now_ms, state.pseudonymizer.current().id)
        },
    };
    drop(records);

    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    state
        .writer
        .submit(batch, quarantine, move |outcome| {
            let _ = done_tx.send(outcome);
        })
        .map_err(|e| match e {
            AppendError::Backpressure { .. } => ApiError::Busy {
                message: e.to_string(),
                retry_after_s: 1,
            },
            AppendError::Closed => ApiError::Busy {
                message: "the server is shutting down; retry shortly".into(),
                retry_after_s: 2,
            },
        })?;
    let end_offset = match done_rx.await {
        Ok(Ok(range)) => range.end,
        Ok(Err(failure)) => {
            // Nothing of the request was stored: say so, and when to come back.
            tracing::warn!(reason = %failure.reason, "log commit failed; request refused");
            if failure.stored == vedetta_store::Stored::Unknown {
                return Err(ApiError::Busy {
                    message: "the event log failed while storing this request and could not \
                              confirm what it kept; resending it is safe (a resent event is \
                              recognised as a duplicate)"
                        .into(),
                    retry_after_s: 30,
                });
            }
            return Err(if failure.storage_full {
                ApiError::InsufficientStorage {
                    message: "the event log's disk is full; nothing of this request was \
                              stored, retry later"
                        .into(),
                    retry_after_s: 30,
                }
            } else {
                ApiError::Busy {
                    message: "the event log could not be written; nothing of this request \
                              was stored, retry shortly"
                        .into(),
                    retry_after_s: 5,
                }
            });
        }
        Err(_) => return Err(ApiError::Internal("log writer dropped the request".into())),
    };

    crate::telemetry::IntakeCounters::add(accepted_counter, accepted as u64);
    crate::telemetry::IntakeCounters::add(rejected_counter, rejected.len() as u64);
    counters.count_rejected_fields(rejected.iter().map(|r| r.field));
    Ok(IntakeResponse {
        accepted,
        end_offset,
        rejected: rejected
            .into_iter()
            .map(|r| RejectedItem {
                index: r.index,
                error: r.error,
            })
            .collect(),
    })
}

/// JSON or NDJSON from `Content-Type`. A missing type is read as JSON.
fn body_format(headers: &HeaderMap) -> Result<BodyFormat, ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(BodyFormat::Json);
    };
    let text = value.to_str().unwrap_or("");
    let media = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        // `text/plain` is what `navigator.sendBeacon` sends for a string body (and what a
        // cross-origin `fetch` may send without a preflight): read as JSON.
        "application/json" | "text/json" | "text/plain" => Ok(BodyFormat::Json),
        "application/x-ndjson"
        | "application/ndjson"
        | "application/jsonl"
        | "application/x-jsonlines"
        | "application/jsonlines" => Ok(BodyFormat::Ndjson),
        _ => Err(ApiError::UnsupportedMediaType(format!(
            "unsupported Content-Type {:?}: send application/json (one event or an array) \
             or application/x-ndjson (one event per line)",
            text.chars().take(100).collect::<String>()
        ))),
    }
}

fn content_encoding_is_gzip(headers: &HeaderMap) -> Result<bool, ApiError> {
    match headers.get(header::CONTENT_ENCODING) {
        None => Ok(false),
        Some(value) => match value
            .to_str()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
            .as_str()
        {
            "gzip" | "x-gzip" => Ok(true),
            "identity" | "" => Ok(false),
            other => Err(ApiError::UnsupportedMediaType(format!(
                "unsupported Content-Encoding {:?}: send gzip or no encoding",
                other.chars().take(40).collect::<String>()
            ))),
        },
    }
}

fn too_large(length: usize, limit: usize) -> ApiError {
    ApiError::PayloadTooLarge(format!(
        "body of {length} bytes exceeds the limit of {limit} bytes; split the batch"
    ))
}

/// This request's share of the budget of body bytes in memory (`AppState::body_budget`,
/// in KiB permits), grown as bytes arrive and given back when dropped.
pub(super) struct BodyBudget<'a> {
    budget: &'a Semaphore,
    held: Option<SemaphorePermit<'a>>,
    bytes: usize,
}

impl<'a> BodyBudget<'a> {
    pub(super) fn new(budget: &'a Semaphore) -> Self {
        Self {
            budget,
            held: None,
            bytes: 0,
        }
    }

    /// Reserves `more` bytes; 503 when the budget is spent.
    fn reserve(&mut self, more: usize) -> Result<(), ApiError> {
        self.bytes = self.bytes.saturating_add(more);
        let held = self.held.as_ref().map_or(0, SemaphorePermit::num_permits);
        let needed = self.bytes.div_ceil(1024).saturating_sub(held);
        if needed == 0 {
            return Ok(());
        }
        let busy = || ApiError::Busy {
            message: "too many request bodies in flight; retry shortly".into(),
            retry_after_s: 1,
        };
        let permit = self
            .budget
            .try_acquire_many(u32::try_from(needed).map_err(|_| busy())?)
            .map_err(|_| busy())?;
        match &mut self.held {
            Some(held) => held.merge(permit),
            None => self.held = Some(permit),
        }
        Ok(())
    }
}

/// How fast a body must arrive.
#[derive(Debug, Clone, Copy)]
struct BodyPace {
    /// The longest wait for the next bytes.
    stall: Duration,
    /// The average rate the body must keep up once `stall` has passed since its start.
    min_bytes_per_second: u64,
}

impl BodyPace {
    /// When the next bytes must have arrived, given the body's start and its bytes so far:
    /// within `stall` of now, and soon enough to keep the minimum average rate.
    fn next_deadline(&self, started: Instant, received: usize, now: Instant) -> Instant {
        let by_stall = now + self.stall;
        let earned =
            Duration::try_from_secs_f64(received as f64 / self.min_bytes_per_second as f64)
                .unwrap_or(Duration::MAX);
        match started
            .checked_add(self.stall)
            .and_then(|t| t.checked_add(earned))
        {
            Some(by_rate) => by_rate.min(by_stall),
            None => by_stall,
        }
    }
}

/// Reads the body, reserving memory as it arrives, refusing it as soon as it passes `limit`
/// bytes, and cutting it with 408 when it stalls or trickles.
async fn read_limited(
    mut body: Body,
    limit: usize,
    pace: BodyPace,
    reservation: &mut BodyBudget<'_>,
) -> Result<Vec<u8>, ApiError> {
    let started = Instant::now();
    let mut out = Vec::new();
    loop {
        let deadline = pace.next_deadline(started, out.len(), Instant::now());
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(_) => {
                return Err(ApiError::RequestTimeout(format!(
                    "the request body stopped arriving after {} bytes (more than {} s without \
                     data, or under {} bytes/s); send it whole, promptly",
                    out.len(),
                    pace.stall.as_secs(),
                    pace.min_bytes_per_second
                )));
            }
        };
        let frame =
            frame.map_err(|e| ApiError::BadRequest(format!("could not read the body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(too_large(out.len() + data.len(), limit));
            }
            reservation.reserve(data.len())?;
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// Inflates a gzip body: a bomb costs at most `limit` bytes (413 past it), reserved from the
/// budget as the output grows (503 when the budget is spent), `vedetta_core::intake::gzip`.
fn gunzip_limited(
    compressed: &[u8],
    limit: usize,
    reservation: &mut BodyBudget<'_>,
) -> Result<Vec<u8>, ApiError> {
    intake::gzip::gunzip_limited_with(compressed, limit, |grown| reservation.reserve(grown))
}

/// When a quarantine entry was refused (its `received_at`), in epoch milliseconds.
pub(super) fn quarantined_at_ms(json: &str) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Entry {
        received_at: String,
    }
    let entry: Entry = serde_json::from_str(json).ok()?;
    entry
        .received_at
        .parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

#[cfg(test)]
mod body_bound_tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::io::Write;

    #[test]
    fn the_budget_grows_with_the_bytes_and_is_given_back() {
        let budget = Semaphore::new(10);
        let mut first = BodyBudget::new(&budget);
        first.reserve(1).unwrap();
        assert_eq!(budget.available_permits(), 9);
        // Up to a whole KiB costs nothing more; past it, one permit per KiB begun.
        first.reserve(1023).unwrap();
        assert_eq!(budget.available_permits(), 9);
        first.reserve(4 * 1024).unwrap();
        assert_eq!(budget.available_permits(), 5);
        let mut second = BodyBudget::new(&budget);
        second.reserve(5 * 1024).unwrap();
        assert_eq!(budget.available_permits(), 0);
        let error = second.reserve(1).unwrap_err();
        assert!(matches!(error, ApiError::Busy { .. }), "{error:?}");
        drop(first);
        drop(second);
        assert_eq!(budget.available_permits(), 10);
    }

    #[test]
    fn a_stall_or_a_trickle_reaches_the_deadline() {
        let pace = BodyPace {
            stall: Duration::from_secs(10),
            min_bytes_per_second: 1000,
        };
        let started = Instant::now();
        // At the start: the stall timeout.
        assert_eq!(
            pace.next_deadline(started, 0, started),
            started + Duration::from_secs(10)
        );
        // A fast body: bytes earn time, and the stall timeout is the bound.
        let later = started + Duration::from_secs(5);
        assert_eq!(
            pace.next_deadline(started, 1_000_000, later),
            later + Duration::from_secs(10)
        );
        // A trickle: 2,000 bytes in 30 s earn 2 s past the grace; its time is up.
        let trickling = started + Duration::from_secs(30);
        assert_eq!(
            pace.next_deadline(started, 2_000, trickling),
            started + Duration::from_secs(12)
        );
        // An absurd count cannot overflow the clock.
        assert_eq!(
            pace.next_deadline(started, usize::MAX, later),
            later + Duration::from_secs(10)
        );
    }

    #[test]
    fn inflated_bytes_are_reserved_and_the_limit_still_holds() {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(&vec![b'a'; 600 * 1024]).unwrap();
        let compressed = encoder.finish().unwrap();
        // Enough budget: the whole inflated body is reserved.
        let budget = Semaphore::new(1000);
        let mut reservation = BodyBudget::new(&budget);
        let out = gunzip_limited(&compressed, 1 << 20, &mut reservation).unwrap();
        assert_eq!(out.len(), 600 * 1024);
        assert_eq!(budget.available_permits(), 1000 - 600);
        // Over the byte limit: 413, whatever the budget.
        let mut reservation = BodyBudget::new(&budget);
        let error = gunzip_limited(&compressed, 100 * 1024, &mut reservation).unwrap_err();
        assert!(matches!(error, ApiError::PayloadTooLarge(_)), "{error:?}");
        // Within the limit but over the budget: 503, not an unbounded allocation.
        let small = Semaphore::new(300);
        let mut reservation = BodyBudget::new(&small);
        let error = gunzip_limited(&compressed, 1 << 20, &mut reservation).unwrap_err();
        assert!(matches!(error, ApiError::Busy { .. }), "{error:?}");
    }
}
