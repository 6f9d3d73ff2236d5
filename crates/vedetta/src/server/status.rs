//! `GET /v1/status` and `GET /v1/rejected`.

use super::{ApiError, AppState};
use crate::telemetry::{IntakeCounters, RecentLatency};
use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use vedetta_core::time::EventTime;

/// Offsets, counters, lag and disk use.
#[utoipa::path(
    get,
    path = "/v1/status",
    responses((status = 200, description = "log_end_offset, processed_offset, lag_events, watermark, \
        intake and pipeline counters, disk_bytes; demo: null, or the demo's phase (loading, live, failed) \
        and history progress (0 to 1)", body = Object))
)]
pub async fn get_status(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(status_json(&state))
}

/// The status document (also pushed by `/v1/stream`).
pub fn status_json(state: &AppState) -> Value {
    let log = state.log.stats();
    let c = &state.counters;
    let writer = state.writer.counters();
    let processor = &state.processor;
    let processed = processor.processed_offset.load(Ordering::Acquire);
    let now_ms = state.clock.now_ms();
    let recent_ms = |q: f64| {
        state
            .timings
            .end_to_end_recent
            .quantile(now_ms, q)
            .map(|s| (s * 1e6).round() / 1e3)
    };
    let pipeline = processor
        .counters
        .lock()
        .map(|c| serde_json::to_value(&*c).unwrap_or_default())
        .unwrap_or_default();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "log_start_offset": log.start_offset,
        "log_end_offset": log.end_offset,
        "log_pending_records": state.writer.pending_records(),
        "log_commits": writer.commits.load(Ordering::Relaxed),
        "disk_bytes": log.disk_bytes,
        "events_accepted": IntakeCounters::get(&c.events_accepted),
        "events_rejected": IntakeCounters::get(&c.events_rejected),
        "costs_accepted": IntakeCounters::get(&c.costs_accepted),
        "costs_rejected": IntakeCounters::get(&c.costs_rejected),
        "rejected_by_field": c.rejected_by_field(),
        "requests_refused_by_status": c.requests_refused(),
        "requests_throttled": IntakeCounters::get(&c.requests_throttled),
        "processed_offset": processed,
        "lag_events": log.end_offset.saturating_sub(processed),
        "watermark": processor.watermark().map(|w| EventTime(w).to_rfc3339()),
        "processor_commits": processor.commits.load(Ordering::Relaxed),
        "snapshot_offset": processor.snapshot_offset.load(Ordering::Acquire),
        "processor_recovering": processor.recovering.load(Ordering::Relaxed),
        "processor_error": processor.last_error.lock().ok().and_then(|e| e.clone()),
        // Failures survived: each failed batch was redone from the snapshot and the log.
        "processor_commit_failures": processor.commit_failures.load(Ordering::Relaxed),
        "processor_storage_full_failures": processor.storage_full_failures.load(Ordering::Relaxed),
        "processor_recoveries": processor.recoveries.load(Ordering::Relaxed),
        "log_commit_failures": writer.failures.load(Ordering::Relaxed),
        "log_storage_full_failures": writer.storage_full_failures.load(Ordering::Relaxed),
        "log_reopens": state.log.reopens(),
        "active_users": processor.active_users.load(Ordering::Relaxed),
        "remembered_event_ids": processor.remembered_event_ids.load(Ordering::Relaxed),
        "remembered_orders": processor.remembered_orders.load(Ordering::Relaxed),
        "attribution_memories": processor.stored_memories.load(Ordering::Relaxed),
        "attribution_memories_pending": processor.dormant_users.load(Ordering::Relaxed),
        "pipeline": pipeline,
        "stream_clients": state.stream_clients.load(Ordering::Relaxed),
        // `serve --demo`: its phase and the history's load progress; null otherwise.
        "demo": crate::demo::progress::status_json(),
        "latency_ms": {
            // Acknowledged → counted in /v1/kpis, over the last five minutes (null when
            // nothing was processed in them); interpolated within histogram buckets.
            "p50": recent_ms(0.5),
            "p99": recent_ms(0.99),
            "window_seconds": RecentLatency::WINDOW_MS / 1000,
        },
    })
}

/// The quarantine, newest first: `?limit=N` (default 100, at most 1000; more is a 400).
#[utoipa::path(
    get,
    path = "/v1/rejected",
    params(("limit" = Option<usize>, Query, description = "most entries, default 100, at most 1000")),
    responses((status = 200, description = "total_kept and the refused records with their reasons, \
        personal fields redacted", body = Object))
)]
pub async fn get_rejected(
    State(state): State<Arc<AppState>>,
    uri: axum::http::Uri,
) -> Result<Json<Value>, ApiError> {
    let mut params = super::kpis::query_params(&uri)?;
    let limit = super::kpis::number_param(&mut params, "limit", 100, 1000)? as usize;
    super::kpis::refuse_unknown_params(&params, "limit")?;
    let log = state.log.clone();
    let entries = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        let total = log.quarantine_len().map_err(ApiError::from_log)?;
        let entries = log.quarantine(limit).map_err(ApiError::from_log)?;
        Ok((total, entries))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))??;
    let (total, entries) = entries;
    let rejected: Vec<Value> = entries
        .into_iter()
        .map(|e| serde_json::from_str(&e.json).unwrap_or(Value::String(e.json)))
        .collect();
    Ok(Json(json!({ "total_kept": total, "rejected": rejected })))
}
