//! `POST /v1/events` and `POST /v1/costs`.
//!
//! The handler is the adapter around `vedetta_core::intake`: it reads the body within the
//! size and memory bounds, undoes `gzip`, hands the bytes to the pure judge, and submits the
//! accepted records to the group-commit writer. It answers only after the writer reports
//! the records fsynced: a 200 means durable.
//!
//! Statuses: 200 when at least one record was accepted; 400 when none was (or the body
//! could not be split into events); 413 over the byte or event limit; 415 for a content type
//! or encoding it cannot read; 503 with `Retry-After` over a backpressure bound.

use super::{ApiError, AppState};
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use serde::Serialize;
use std::sync::Arc;
use vedetta_core::intake::{self, BodyFormat, IntakeContext, Judged};
use vedetta_core::record::encode_batch;
use vedetta_core::time::EventTime;
use vedetta_store::{AppendError, EncodedBatch};

/// Which intake endpoint a request came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
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
        (status = 413, description = "Body over the byte or event limit", body = super::openapi::ErrorBody),
        (status = 415, description = "Unknown Content-Type or Content-Encoding", body = super::openapi::ErrorBody),
        (status = 503, description = "Over a backpressure bound; see Retry-After", body = super::openapi::ErrorBody),
    )
)]
pub async fn post_events(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    respond(
        &state,
        accept(&state, &headers, body, Endpoint::Events).await,
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
        accept(&state, &headers, body, Endpoint::Costs).await,
    )
}

fn respond(state: &AppState, result: Result<IntakeResponse, ApiError>) -> Response {
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

async fn accept(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    endpoint: Endpoint,
) -> Result<IntakeResponse, ApiError> {
    let format = body_format(headers)?;
    let gzip = content_encoding_is_gzip(headers)?;
    let max_body = state.config.ingest.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(length) = declared
        && length > max_body
    {
        return Err(too_large(length, max_body));
    }
    // Reserve memory for this body before reading it; when the budget is spent, the
    // client is asked to come back rather than the server growing without bound.
    let permits = (declared.unwrap_or(max_body).min(max_body) / 1024).max(1) as u32;
    let _reservation = state
        .body_budget
        .try_acquire_many(permits)
        .map_err(|_| ApiError::Busy {
            message: "too many request bodies in flight; retry shortly".into(),
            retry_after_s: 1,
        })?;
    let raw = read_limited(body, max_body).await?;
    let bytes = if gzip {
        // Bounded: a gzip bomb costs at most `max_body` bytes (`vedetta_core::intake::gzip`).
        intake::gzip::gunzip_limited(&raw, max_body).map_err(|e| {
            if e.is_too_large() {
                ApiError::PayloadTooLarge(e.to_string())
            } else {
                ApiError::BadRequest(e.to_string())
            }
        })?
    } else {
        raw
    };

    let now_ms = state.clock.now_ms();
    let ctx = IntakeContext {
        now_ms,
        pseudonymizer: &state.pseudonymizer,
        limits: &state.limits,
    };
    let judged = match endpoint {
        Endpoint::Events => intake::judge_events(&bytes, format, &ctx),
        Endpoint::Costs => intake::judge_spend(&bytes, format, &ctx),
    }
    .map_err(|e| {
        if e.is_too_large() {
            ApiError::PayloadTooLarge(e.to_string())
        } else {
            ApiError::BadRequest(e.to_string())
        }
    })?;
    drop(bytes);
    let Judged { records, rejected } = judged;

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
    let accepted = records.len();
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
        "application/json" | "text/json" => Ok(BodyFormat::Json),
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

/// Reads the body, refusing it as soon as it passes `limit` bytes.
async fn read_limited(mut body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| ApiError::BadRequest(format!("could not read the body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(too_large(out.len() + data.len(), limit));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
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
