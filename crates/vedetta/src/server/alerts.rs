//! The alerting API: rules in force, alerts (firing, pending, recent history), silences.

use super::AppState;
use super::error::ApiError;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use vedetta_core::time::EventTime;
use vedetta_core::watch::dispatch::{Matcher, Silence};
use vedetta_core::watch::evaluate::Phase;
use vedetta_core::watch::rules::{Rule, RuleKind};

/// Most silences kept at once.
pub const MAX_SILENCES: usize = 1_000;
const MATCHER_NAMES: [&str; 7] = [
    "rule",
    "alertname",
    "severity",
    "channel",
    "campaign",
    "device",
    "region",
];

fn time(ms: i64) -> Value {
    if ms == i64::MIN {
        Value::Null
    } else {
        Value::String(EventTime(ms).to_rfc3339())
    }
}

fn span(ms: i64) -> String {
    match ms {
        0 => "0s".into(),
        ms if ms % 86_400_000 == 0 => format!("{}d", ms / 86_400_000),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms => format!("{}s", ms / 1000),
    }
}

fn rule_json(rule: &Rule) -> Value {
    let (expr, resolve) = match &rule.kind {
        RuleKind::Threshold {
            fire_text, resolve, ..
        } => (
            Value::String(fire_text.clone()),
            resolve
                .as_ref()
                .map_or(Value::Null, |(_, t)| Value::String(t.clone())),
        ),
        RuleKind::Absence { .. } | RuleKind::Anomaly { .. } => {
            (Value::String(rule.condition_text()), Value::Null)
        }
    };
    json!({
        "name": rule.name,
        "kind": rule.kind_name(),
        "expr": expr,
        "resolve_expr": resolve,
        "over": span(rule.over_ms),
        "group_by": rule.group_by.iter().map(|d| d.name()).collect::<Vec<_>>(),
        "where": rule.filter.iter().map(|(d, v)| (d.name().to_string(), Value::String(v.clone()))).collect::<serde_json::Map<_, _>>(),
        "for": span(rule.for_ms),
        "keep_firing_for": span(rule.keep_firing_for_ms),
        "min_conversions": rule.min_conversions,
        "min_sessions": rule.min_sessions,
        "severity": rule.severity.as_str(),
        "notify": rule.notify,
        "group_wait": span(rule.timing.group_wait_ms),
        "group_interval": span(rule.timing.group_interval_ms),
        "repeat_interval": span(rule.timing.repeat_interval_ms),
    })
}

/// The rules in force, where they come from, and why the last reload failed (if it did).
#[utoipa::path(
    get,
    path = "/v1/rules",
    responses((status = 200, description = "rules (as checked, with defaults filled in), \
        inhibitions, rules_file, loaded_at, reload_error", body = Object))
)]
pub async fn get_rules(State(state): State<Arc<AppState>>) -> Json<Value> {
    let status = &state.watch_status;
    let rules = status
        .rules
        .read()
        .map(|r| r.clone())
        .unwrap_or_else(|e| e.into_inner().clone());
    let reload_error = status
        .reload_error
        .lock()
        .map(|e| e.clone())
        .unwrap_or_else(|e| e.into_inner().clone());
    Json(json!({
        "rules": rules.rules.iter().map(rule_json).collect::<Vec<_>>(),
        "inhibit": rules.inhibitions.iter().map(|i| json!({"source": i.source, "targets": i.targets})).collect::<Vec<_>>(),
        "rules_file": state.config.alerts.rules_file.as_ref().map(|p| p.display().to_string()),
        "loaded_at": time(status.rules_loaded_at_ms.load(Ordering::Relaxed)),
        "reload_error": reload_error,
    }))
}

/// Firing and pending alerts, the recent history (newest first) and the active silences.
#[utoipa::path(
    get,
    path = "/v1/alerts",
    params(("limit" = Option<usize>, Query, description = "history entries, default 100, at most 1000")),
    responses((status = 200, description = "evaluated_through, firing, pending, history, silences", body = Object))
)]
pub async fn get_alerts(
    State(state): State<Arc<AppState>>,
    uri: axum::http::Uri,
) -> Result<Json<Value>, ApiError> {
    let mut params = super::kpis::query_params(&uri)?;
    let limit = super::kpis::number_param(&mut params, "limit", 100, 1000)? as usize;
    super::kpis::refuse_unknown_params(&params, "limit")?;
    let status = state.watch_status.clone();
    let rules = status
        .rules
        .read()
        .map(|r| r.clone())
        .unwrap_or_else(|e| e.into_inner().clone());
    let alerts = status
        .alerts
        .read()
        .map(|a| a.clone())
        .unwrap_or_else(|e| e.into_inner().clone());
    let store = state.watch_store.clone();
    let now = state.clock.now_ms();
    let (history, silences) = tokio::task::spawn_blocking(move || {
        Ok::<_, vedetta_store::WatchStoreError>((store.history(limit)?, store.silences()?))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
    .map_err(ApiError::from_watch_store)?;
    let (mut firing, mut pending) = (Vec::new(), Vec::new());
    for ((rule_name, group), alert) in &alerts {
        let rule = rules.rules.iter().find(|r| r.name == *rule_name);
        let labels: serde_json::Map<String, Value> = rule
            .map(|r| {
                r.group_by
                    .iter()
                    .zip(group)
                    .map(|(d, v)| (d.name().to_string(), Value::String(v.clone())))
                    .collect()
            })
            .unwrap_or_default();
        let entry = json!({
            "rule": rule_name,
            "group": labels,
            "severity": rule.map(|r| r.severity.as_str()),
            "since": time(alert.since_ms),
            "fired_at": alert.fired_ms.map_or(Value::Null, time),
            "recovering_since": alert.recovering_since_ms.map_or(Value::Null, time),
            "value": alert.value,
            "expr": rule.map(Rule::condition_text),
        });
        match alert.phase {
            Phase::Firing => firing.push(entry),
            Phase::Pending => pending.push(entry),
        }
    }
    Ok(Json(json!({
        "evaluated_through": time(status.evaluated_through_ms.load(Ordering::Acquire)),
        "firing": firing,
        "pending": pending,
        "history": history.iter().map(|h| json!({
            "at": time(h.at_ms),
            "decided_at": time(h.wall_ms),
            "rule": h.rule,
            "group": h.group.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect::<serde_json::Map<_, _>>(),
            "event": h.event,
            "value": h.value,
            "summary": h.summary,
        })).collect::<Vec<_>>(),
        "silences": silences.iter().filter(|s| s.ends_ms > now).map(silence_json).collect::<Vec<_>>(),
    })))
}

fn silence_json(s: &Silence) -> Value {
    json!({
        "id": s.id,
        "matchers": s.matchers.iter().map(|m| json!({"name": m.name, "value": m.value})).collect::<Vec<_>>(),
        "starts_at": time(s.starts_ms),
        "ends_at": time(s.ends_ms),
        "created_by": s.created_by,
        "comment": s.comment,
    })
}

/// A silence to create.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSilence {
    /// Labels the muted alerts must all have: `rule`, `severity`, `channel`, `campaign`,
    /// `device` or `region`, each with an exact value. One to ten.
    pub matchers: Vec<NewMatcher>,
    /// How long from now, a span like `2h` (one minute to 90 days).
    pub duration: String,
    #[serde(default)]
    pub comment: String,
    #[serde(default)]
    pub created_by: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMatcher {
    pub name: String,
    pub value: String,
}

fn text_field(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(format!(
            "{field}: at most {max} characters, no control characters"
        )));
    }
    Ok(())
}

/// The `duration` of a silence the API description allows (1m to 90d, in whole minutes,
/// hours or days): what a schema-valid request sends is accepted.
pub const SILENCE_DURATION_PATTERN: &str = "^(([1-9]|[1-8][0-9]|90)d|([1-9][0-9]{0,2}|1[0-9]{3}|20[0-9]{2}|21[0-5][0-9]|2160)h|([1-9][0-9]{0,4}|1[01][0-9]{4}|12[0-8][0-9]{3}|129[0-5][0-9]{2}|129600)m)$";

/// Mutes the alerts matching every matcher until the silence ends.
#[utoipa::path(
    post,
    path = "/v1/silences",
    request_body = NewSilence,
    responses(
        (status = 201, description = "the silence, with its id", body = Object),
        (status = 400, description = "a field is wrong; the message names it", body = super::openapi::ErrorBody),
        (status = 409, description = "1,000 silences are active already", body = super::openapi::ErrorBody),
        (status = 507, description = "the disk under the alert store is full; nothing was stored, retry after `Retry-After`", body = super::openapi::ErrorBody),
    )
)]
pub async fn post_silence(
    State(state): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let new: NewSilence = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the silence: {e}")))?;
    if new.matchers.is_empty() || new.matchers.len() > 10 {
        return Err(ApiError::BadRequest(
            "matchers: one to ten are needed (a silence of everything is not allowed)".into(),
        ));
    }
    for (i, m) in new.matchers.iter().enumerate() {
        if !MATCHER_NAMES.contains(&m.name.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "matchers[{i}].name: {} is not a label; one of {}",
                super::kpis::shown_value(&m.name),
                MATCHER_NAMES.join(", ")
            )));
        }
        text_field(&format!("matchers[{i}].value"), &m.value, 256)?;
    }
    text_field("comment", &new.comment, 1_000)?;
    text_field("created_by", &new.created_by, 128)?;
    let duration = vedetta_core::watch::rules::parse_span(&new.duration)
        .filter(|ms| (60_000..=90 * 86_400_000).contains(ms))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "duration: {} is not a span from 1m to 90d, like \"2h\"",
                super::kpis::shown_value(&new.duration)
            ))
        })?;
    let now = state.clock.now_ms();
    let random = RandomState::new();
    let id = format!(
        "{:016x}{:016x}",
        random.hash_one(now),
        random.hash_one(new.comment.as_str())
    );
    let silence = Silence {
        id,
        matchers: new
            .matchers
            .into_iter()
            .map(|m| Matcher {
                name: m.name,
                value: m.value,
            })
            .collect(),
        starts_ms: now,
        ends_ms: now + duration,
        created_by: new.created_by,
        comment: new.comment,
    };
    let store = state.watch_store.clone();
    let stored = silence.clone();
    // Ended silences are deleted as the new one is added, and the cap is checked in the
    // same transaction.
    tokio::task::spawn_blocking(move || store.add_silence(&stored, now, MAX_SILENCES))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(ApiError::from_watch_store)?
        .then_some(())
        .ok_or_else(|| {
            ApiError::Conflict(format!(
                "{MAX_SILENCES} silences are active; delete one first"
            ))
        })?;
    Ok((StatusCode::CREATED, Json(silence_json(&silence))))
}

/// Ends a silence now.
#[utoipa::path(
    delete,
    path = "/v1/silences/{id}",
    params(("id" = String, Path, description = "the silence's id")),
    responses(
        (status = 204, description = "deleted"),
        (status = 404, description = "no such silence", body = super::openapi::ErrorBody),
    )
)]
pub async fn delete_silence(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let store = state.watch_store.clone();
    let key = id.clone();
    let existed = tokio::task::spawn_blocking(move || store.delete_silence(&key))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(ApiError::from_watch_store)?;
    if existed {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!(
            "no silence has the id {}",
            super::kpis::shown_value(&id)
        )))
    }
}

/// Notifications the sender gave up on: refused by the receiver, expired, or for a
/// destination no longer configured. Oldest first.
#[utoipa::path(
    get,
    path = "/v1/outbox/dead",
    params(
        ("after" = Option<u64>, Query, description = "only entries after this seq (paging)"),
        ("limit" = Option<usize>, Query, description = "most entries, default 100, at most 1000"),
    ),
    responses((status = 200, description = "dead letters: seq, destination, attempts, enqueued_at, \
        dead_at, error, notification", body = Object))
)]
pub async fn get_dead_letters(
    State(state): State<Arc<AppState>>,
    uri: axum::http::Uri,
) -> Result<Json<Value>, ApiError> {
    let mut params = super::kpis::query_params(&uri)?;
    // 2^53 − 1: what every JSON client reads exactly (a seq never gets near it).
    let after = super::kpis::number_param(&mut params, "after", 0, 9_007_199_254_740_991)?;
    let limit = super::kpis::number_param(&mut params, "limit", 100, 1000)? as usize;
    super::kpis::refuse_unknown_params(&params, "after, limit")?;
    let outbox = state.outbox.clone();
    let dead = tokio::task::spawn_blocking(move || outbox.dead_letters(after, limit))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(ApiError::from_outbox)?;
    Ok(Json(json!({
        "dead": dead.iter().map(|d| json!({
            "seq": d.seq,
            "destination": d.destination,
            "attempts": d.attempts,
            "enqueued_at": time(d.enqueued_ms),
            "dead_at": time(d.dead_ms),
            "error": d.error,
            "notification": d.notification,
        })).collect::<Vec<_>>(),
    })))
}

/// Puts a dead letter back in its destination's queue, to be delivered again (after the
/// receiver or the configuration was fixed).
#[utoipa::path(
    post,
    path = "/v1/outbox/dead/{seq}/retry",
    params(("seq" = u64, Path, description = "the dead letter's seq")),
    responses(
        (status = 202, description = "queued again, with its new seq", body = Object),
        (status = 404, description = "no such dead letter", body = super::openapi::ErrorBody),
    )
)]
pub async fn retry_dead_letter(
    State(state): State<Arc<AppState>>,
    Path(seq): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let not_found = || {
        ApiError::NotFound(format!(
            "no dead letter has the seq {}",
            super::kpis::shown_value(&seq)
        ))
    };
    let number: u64 = seq.parse().map_err(|_| not_found())?;
    let outbox = state.outbox.clone();
    let now = state.clock.now_ms();
    let queued = tokio::task::spawn_blocking(move || outbox.retry_dead(number, now))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(ApiError::from_outbox)?;
    match queued {
        Some(new_seq) => {
            state.sender.wake();
            Ok((StatusCode::ACCEPTED, Json(json!({ "queued_as": new_seq }))))
        }
        None => Err(not_found()),
    }
}

/// What `inbox` destinations received, newest first (the demo's "what would have been
/// sent").
#[utoipa::path(
    get,
    path = "/v1/inbox",
    params(("limit" = Option<usize>, Query, description = "most entries, default 50, at most 1000")),
    responses((status = 200, description = "inbox: delivered_at and the notification as sent", body = Object))
)]
pub async fn get_inbox(
    State(state): State<Arc<AppState>>,
    uri: axum::http::Uri,
) -> Result<Json<Value>, ApiError> {
    let mut params = super::kpis::query_params(&uri)?;
    let limit = super::kpis::number_param(&mut params, "limit", 50, 1000)? as usize;
    super::kpis::refuse_unknown_params(&params, "limit")?;
    let inbox = state.inbox.clone();
    let entries = tokio::task::spawn_blocking(move || inbox.list(limit))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(ApiError::from_watch_store)?;
    Ok(Json(json!({
        "inbox": entries.iter().map(|(at, n)| json!({"delivered_at": time(*at), "notification": n})).collect::<Vec<_>>(),
    })))
}
