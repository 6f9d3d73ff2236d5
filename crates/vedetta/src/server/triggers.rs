//! `GET /v1/triggers` and `GET /v1/triggers/firings` (issue 12): the triggers in force,
//! what each has done, the consumer's progress, and the firing history.

use super::AppState;
use super::error::ApiError;
use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use vedetta_core::act::triggers::{TagWhen, Trigger, TriggerKind};
use vedetta_core::time::EventTime;

fn time(ms: i64) -> Value {
    if ms == i64::MIN {
        Value::Null
    } else {
        Value::String(EventTime(ms).to_rfc3339())
    }
}

fn span(ms: i64) -> String {
    if ms % 86_400_000 == 0 {
        format!("{}d", ms / 86_400_000)
    } else if ms % 3_600_000 == 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}s", ms / 1_000)
    }
}

fn trigger_json(t: &Trigger) -> Value {
    let mut v = json!({
        "name": t.name,
        "kind": t.kind_name(),
        "cooldown": span(t.cooldown_ms),
        "notify": t.notify,
        "segment_label": t.label,
    });
    match &t.kind {
        TriggerKind::SegmentCpa {
            rule, threshold, ..
        } => {
            v["group_by"] = json!(rule.group_by.iter().map(|d| d.name()).collect::<Vec<_>>());
            v["threshold"] = json!(threshold);
            v["over"] = json!(span(rule.over_ms));
            v["min_conversions"] = json!(rule.min_conversions);
        }
        TriggerKind::AbandonedCart { after_ms } => v["after"] = json!(span(*after_ms)),
        TriggerKind::Tag { tag, when } => {
            v["tag"] = json!(tag);
            match when {
                TagWhen::PurchaseOver { min_value } => {
                    v["on"] = json!("purchase_over");
                    v["min_value"] = json!(min_value);
                }
                TagWhen::FirstPurchase => v["on"] = json!("first_purchase"),
            }
        }
        TriggerKind::ConversionFeed => {}
    }
    v
}

/// Outbox entries counted per destination, at most: beyond, the depth is a lower bound
/// (`depth_capped`). Bounds the cost of a scrape and of a dashboard refresh.
pub const DEPTH_CAP: u64 = 100_000;
/// Firings read for the last-hour and last-day counts, at most (`firing_counts_capped`).
pub const FIRING_COUNT_CAP: usize = 100_000;
const HOUR_MS: i64 = 3_600_000;

/// Every destination's outbox queue at `now_ms`: the configured destinations (empty ones
/// too) and any other name still queued, in name order.
pub fn outbox_by_destination(state: &AppState, now_ms: i64) -> anyhow::Result<Vec<Value>> {
    let stats = state.outbox.destination_stats(DEPTH_CAP)?;
    let mut names: std::collections::BTreeSet<&str> = state
        .config
        .alerts
        .destinations
        .iter()
        .map(|d| d.name())
        .collect();
    names.extend(stats.iter().map(|d| d.destination.as_str()));
    Ok(names
        .into_iter()
        .map(|name| match stats.iter().find(|d| d.destination == name) {
            Some(d) => json!({
                "destination": name,
                "depth": d.depth,
                "depth_capped": d.depth_capped,
                "oldest_age_seconds": (now_ms.saturating_sub(d.oldest_enqueued_ms)).max(0) as f64 / 1_000.0,
                "head_attempts": d.head_attempts,
                "head_last_error": d.head_last_error,
            }),
            None => json!({
                "destination": name,
                "depth": 0,
                "depth_capped": false,
                "oldest_age_seconds": 0.0,
                "head_attempts": 0,
                "head_last_error": null,
            }),
        })
        .collect())
}

/// The triggers in force, with what each has done since the start and in the last hour and
/// day, the consumer's progress, and each destination's outbox queue.
#[utoipa::path(
    get,
    path = "/v1/triggers",
    responses((status = 200, description = "triggers (as checked, with counters: users_sent, \
        signals, withheld_no_consent, firings_last_hour, firings_last_day by event time, \
        delivery_failures and last_delivery_error of its pushes, summed over its \
        destinations and kept across restarts, and deliveries: per destination, delivered, \
        failed_attempts, dead, last_error, last_error_at), \
        firing_counts_capped, triggers_file, loaded_at, reload_error, consumed_offset, \
        judged_through, users, user_bytes, users_evicted, pending, failures, last_error, and destinations \
        (each: destination, depth, depth_capped, oldest_age_seconds, head_attempts, \
        head_last_error)", body = Object),
        (status = 500, description = "the store could not be read", body = super::openapi::ErrorBody))
)]
pub async fn get_triggers(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let now_ms = state.clock.now_ms();
    let read = state.clone();
    let (firing_counts, destinations, deliveries) = tokio::task::spawn_blocking(move || {
        let counts = read.trigger_store.firing_counts(
            now_ms.saturating_sub(24 * HOUR_MS),
            now_ms.saturating_sub(HOUR_MS),
            FIRING_COUNT_CAP,
        )?;
        let deliveries = read.trigger_store.delivery_stats()?;
        anyhow::Ok((counts, outbox_by_destination(&read, now_ms)?, deliveries))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let s = &state.act_status;
    let triggers = s
        .triggers
        .read()
        .map(|t| t.clone())
        .unwrap_or_else(|e| e.into_inner().clone());
    let counters = s.counters();
    let list: Vec<Value> = triggers
        .iter()
        .map(|t| {
            let mut v = trigger_json(t);
            let c = counters.get(&t.name).cloned().unwrap_or_default();
            v["users_sent"] = json!(c.users_sent);
            v["signals"] = json!(c.signals);
            v["withheld_no_consent"] = json!(c.withheld);
            let fired = firing_counts
                .per_trigger
                .get(&t.name)
                .copied()
                .unwrap_or_default();
            v["firings_last_hour"] = json!(fired.hour);
            v["firings_last_day"] = json!(fired.day);
            // Per destination it notifies (kept across restarts), and summed.
            let mut failures = 0;
            let mut last: Option<(i64, String)> = None;
            let per_destination: Vec<Value> = t
                .notify
                .iter()
                .map(|d| {
                    let s = deliveries
                        .get(&(t.name.clone(), d.clone()))
                        .cloned()
                        .unwrap_or_default();
                    failures += s.failed_attempts;
                    match (s.last_error_ms, &s.last_error) {
                        (Some(at), Some(error)) if last.as_ref().is_none_or(|(t, _)| at >= *t) => {
                            last = Some((at, error.clone()));
                        }
                        _ => {}
                    }
                    json!({
                        "destination": d,
                        "delivered": s.delivered,
                        "failed_attempts": s.failed_attempts,
                        "dead": s.dead,
                        "last_error": s.last_error,
                        "last_error_at": s.last_error_ms.map(time),
                    })
                })
                .collect();
            v["delivery_failures"] = json!(failures);
            v["last_delivery_error"] = json!(last.map(|(_, e)| e));
            v["deliveries"] = json!(per_destination);
            v
        })
        .collect();
    let text = |m: &std::sync::Mutex<Option<String>>| {
        m.lock()
            .map(|e| e.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    };
    Ok(Json(json!({
        "triggers": list,
        "firing_counts_capped": firing_counts.capped,
        "destinations": destinations,
        "triggers_file": state.config.triggers.file.as_ref().map(|p| p.display().to_string()),
        "loaded_at": time(s.loaded_at_ms.load(Ordering::Relaxed)),
        "reload_error": text(&s.reload_error),
        "consumed_offset": s.consumed_offset.load(Ordering::Relaxed),
        "judged_through": time(s.judged_through_ms.load(Ordering::Relaxed)),
        "users": s.users.load(Ordering::Relaxed),
        "user_bytes": s.user_bytes.load(Ordering::Relaxed),
        "users_evicted": s.users_evicted.load(Ordering::Relaxed),
        "pending": s.pending.load(Ordering::Relaxed),
        "failures": s.failures.load(Ordering::Relaxed),
        "last_error": text(&s.last_error),
    })))
}

/// The firing history, newest first: each user selected and each segment signal, with the
/// destinations it went to.
#[utoipa::path(
    get,
    path = "/v1/triggers/firings",
    params(("limit" = Option<usize>, Query, description = "firings, default 100, at most 1000")),
    responses((status = 200, description = "firings: trigger, what (user or signal), user \
        (pseudonym), group, signal, at, recorded_at, destinations, outcomes (per destination: \
        state pending, queued, delivered, dry_run, dead or unknown; at; request, the id the \
        receiver sees as Idempotency-Key; error)", body = Object),
        (status = 400, description = "a bad parameter", body = super::openapi::ErrorBody))
)]
pub async fn get_firings(
    State(state): State<Arc<AppState>>,
    uri: axum::http::Uri,
) -> Result<Json<Value>, ApiError> {
    let mut params = super::kpis::query_params(&uri)?;
    let limit = super::kpis::number_param(&mut params, "limit", 100, 1000)? as usize;
    super::kpis::refuse_unknown_params(&params, "limit")?;
    let store = state.trigger_store.clone();
    let firings = tokio::task::spawn_blocking(move || store.firings(limit))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let list: Vec<Value> = firings
        .iter()
        .map(|f| {
            json!({
                "trigger": f.trigger,
                "what": f.what,
                "user": f.user,
                "group": f.group.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<serde_json::Map<_, _>>(),
                "signal": f.signal,
                "at": time(f.at_ms),
                "recorded_at": time(f.wall_ms),
                "destinations": f.destinations,
                "outcomes": f.outcome_at().iter().map(|o| json!({
                    "destination": o.destination,
                    "state": o.state,
                    "at": o.at_ms.map(time),
                    "request": o.request,
                    "error": o.error,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(Json(json!({ "firings": list })))
}
