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

/// The triggers in force, with what each has done since the start, and the consumer's
/// progress.
#[utoipa::path(
    get,
    path = "/v1/triggers",
    responses((status = 200, description = "triggers (as checked, with counters), triggers_file, \
        loaded_at, reload_error, consumed_offset, judged_through, users, user_bytes, pending, \
        failures, last_error", body = Object))
)]
pub async fn get_triggers(State(state): State<Arc<AppState>>) -> Json<Value> {
    let s = &state.act_status;
    let triggers = s
        .triggers
        .read()
        .map(|t| t.clone())
        .unwrap_or_else(|e| e.into_inner().clone());
    let counters = s
        .counters
        .lock()
        .map(|c| c.clone())
        .unwrap_or_else(|e| e.into_inner().clone());
    let list: Vec<Value> = triggers
        .iter()
        .map(|t| {
            let mut v = trigger_json(t);
            let c = counters.get(&t.name).cloned().unwrap_or_default();
            v["users_sent"] = json!(c.users_sent);
            v["signals"] = json!(c.signals);
            v["withheld_no_consent"] = json!(c.withheld);
            v
        })
        .collect();
    let text = |m: &std::sync::Mutex<Option<String>>| {
        m.lock()
            .map(|e| e.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    };
    Json(json!({
        "triggers": list,
        "triggers_file": state.config.triggers.file.as_ref().map(|p| p.display().to_string()),
        "loaded_at": time(s.loaded_at_ms.load(Ordering::Relaxed)),
        "reload_error": text(&s.reload_error),
        "consumed_offset": s.consumed_offset.load(Ordering::Relaxed),
        "judged_through": time(s.judged_through_ms.load(Ordering::Relaxed)),
        "users": s.users.load(Ordering::Relaxed),
        "user_bytes": s.user_bytes.load(Ordering::Relaxed),
        "pending": s.pending.load(Ordering::Relaxed),
        "failures": s.failures.load(Ordering::Relaxed),
        "last_error": text(&s.last_error),
    }))
}

/// The firing history, newest first: each user selected and each segment signal, with the
/// destinations it went to.
#[utoipa::path(
    get,
    path = "/v1/triggers/firings",
    params(("limit" = Option<usize>, Query, description = "firings, default 100, at most 1000")),
    responses((status = 200, description = "firings: trigger, what (user or signal), user \
        (pseudonym), group, signal, at, recorded_at, destinations", body = Object),
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
            })
        })
        .collect();
    Ok(Json(json!({ "firings": list })))
}
