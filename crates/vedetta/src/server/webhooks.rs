//! Webhook sources: `POST /v1/sources/shopify` (see `crate::sources::shopify`).

use super::intake::{self, BodyBudget, Endpoint};
use super::{ApiError, AppState};
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use vedetta_core::intake::BodyFormat;
use vedetta_core::sources::shopify;

/// Largest webhook body read. Shopify's order payloads are a few to a few hundred KB.
const MAX_WEBHOOK_BYTES: usize = 2 << 20;

pub async fn post_shopify(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(source) = state.config.sources.shopify.as_ref() else {
        return ApiError::NotFound(
            "no Shopify source is configured: add [sources.shopify] secrets = [\"…\"]".into(),
        )
        .into_response();
    };
    let counters = &state.source_counters.shopify;
    let mut reservation = BodyBudget::new(&state.body_budget);
    let max = MAX_WEBHOOK_BYTES.min(state.config.ingest.max_body_bytes);
    let bytes = match intake::read_body(&state, &headers, body, max, &mut reservation).await {
        Ok(bytes) => bytes,
        Err(error) => return intake::respond(&state, Err(error)),
    };
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let signed = text("x-shopify-hmac-sha256").is_some_and(|s| source.verify(&bytes, s));
    if !signed {
        crate::sources::shopify::ShopifyCounters::add(&counters.bad_signature);
        state.counters.count_refusal(401);
        return (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({
                "error": "X-Shopify-Hmac-Sha256 is missing or does not match the body under \
                          any configured secret ([sources.shopify] secrets); nothing was stored"
            })),
        )
            .into_response();
    }
    let topic = text("x-shopify-topic")
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let refund = topic == shopify::REFUND_TOPIC;
    if !refund && !shopify::ORDER_TOPICS.contains(&topic.as_str()) {
        crate::sources::shopify::ShopifyCounters::add(&counters.ignored_topic);
        return (
            StatusCode::OK,
            Json(serde_json::json!({
                "accepted": 0,
                "ignored": format!(
                    "topic {:?} is not one Vedetta maps (orders/create, orders/paid, refunds/create)",
                    topic.chars().take(64).collect::<String>()
                ),
            })),
        )
            .into_response();
    }
    let mapped = serde_json::from_slice::<serde_json::Value>(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("the webhook body is not JSON: {e}")))
        .and_then(|body| {
            if refund {
                shopify::refund_event(&body)
                    .map_err(|e| ApiError::BadRequest(format!("shopify refund.{e}")))
            } else {
                shopify::order_event(&body, text("x-shopify-webhook-id"))
                    .map_err(|e| ApiError::BadRequest(format!("shopify order.{e}")))
            }
        });
    let event = match mapped {
        Ok(event) => event,
        Err(error) => {
            crate::sources::shopify::ShopifyCounters::add(&counters.unmappable);
            return intake::respond(&state, Err(error));
        }
    };
    drop(bytes);
    let event = serde_json::to_vec(&event).unwrap_or_default();
    let result =
        intake::judge_and_store(&state, &event, BodyFormat::Json, Endpoint::Events, None).await;
    if result.as_ref().is_ok_and(|r| r.accepted > 0) {
        crate::sources::shopify::ShopifyCounters::add(&counters.stored);
    }
    intake::respond(&state, result)
}

/// Most rejected rows listed in one answer (the count is always complete).
const MAX_LISTED_REJECTIONS: usize = 1000;

/// `POST /v1/sources/{name}`: a mapped webhook (see `crate::sources::mapped`).
///
/// The body is authenticated, read as JSON (serde_json's nesting limit of 128 applies),
/// mapped row by row, and the mapped events are judged and stored like any other. The
/// answer lists the refused rows by their index in the batch (`rows[3]: …`), whether the
/// mapping or intake refused them; the good rows are stored either way (200 if any was).
pub async fn post_mapped(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(name): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(source) = state.mapped_sources.get(&name) else {
        let known: Vec<&str> = state.mapped_sources.names().collect();
        return ApiError::NotFound(format!(
            "no source {:?} is configured (configured: {}); add a [sources.NAME] table",
            name.chars().take(64).collect::<String>(),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ))
        .into_response();
    };
    use crate::sources::mapped::MappedCounters;
    let counters = &source.counters;
    let mut reservation = BodyBudget::new(&state.body_budget);
    let max = MAX_WEBHOOK_BYTES.min(state.config.ingest.max_body_bytes);
    let bytes = match intake::read_body(&state, &headers, body, max, &mut reservation).await {
        Ok(bytes) => bytes,
        Err(error) => return intake::respond(&state, Err(error)),
    };
    if !source.settings.authenticate(&headers, &bytes) {
        MappedCounters::add(&counters.bad_auth, 1);
        state.counters.count_refusal(401);
        let how = match &source.settings.auth {
            crate::sources::mapped::Auth::Bearer => {
                "Authorization: Bearer is missing or is not one of the source's secrets".to_string()
            }
            crate::sources::mapped::Auth::Hmac { header, .. } => format!(
                "{header} is missing or does not match the body under any of the source's secrets"
            ),
        };
        return (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({
                "error": format!("{how} ([sources.{name}] secrets); nothing was stored")
            })),
        )
            .into_response();
    }
    let mapped = serde_json::from_slice::<serde_json::Value>(&bytes)
        .map_err(|e| format!("the webhook body is not JSON: {e}"))
        .and_then(|body| {
            source
                .mapping
                .map_body(&body)
                .map_err(|e| format!("mapping {name}: {e}"))
        });
    drop(bytes);
    let rows = match mapped {
        Ok(rows) => rows,
        Err(message) => {
            MappedCounters::add(&counters.unmappable, 1);
            return intake::respond(&state, Err(ApiError::BadRequest(message)));
        }
    };
    let total = rows.len();
    let mut good = Vec::with_capacity(total);
    let mut good_rows = Vec::with_capacity(total);
    let mut rejected: Vec<(usize, String)> = Vec::new();
    for (index, row) in rows.into_iter().enumerate() {
        match row {
            Ok(mut event) => {
                if let Some(properties) = event
                    .as_object_mut()
                    .map(|e| {
                        e.entry("properties")
                            .or_insert_with(|| serde_json::json!({}))
                    })
                    .and_then(serde_json::Value::as_object_mut)
                {
                    properties
                        .entry("source")
                        .or_insert_with(|| serde_json::Value::String(name.clone()));
                }
                good.push(event);
                good_rows.push(index);
            }
            Err(error) => rejected.push((index, format!("rows[{index}]: {error}"))),
        }
    }
    let mut accepted = 0;
    let mut end_offset = None;
    if !good.is_empty() {
        let events = serde_json::to_vec(&good).unwrap_or_default();
        drop(good);
        let judged =
            intake::judge_and_store(&state, &events, BodyFormat::Json, Endpoint::Events, None)
                .await;
        match judged {
            Ok(response) => {
                accepted = response.accepted;
                end_offset = Some(response.end_offset);
                for item in response.rejected {
                    let row = good_rows.get(item.index).copied().unwrap_or(item.index);
                    // `events[2].ts: …` → `rows[5]: field ts: …` (the row's index in the batch).
                    let detail = match item.error.split_once("].") {
                        Some((_, rest)) => format!("field {rest}"),
                        None => item
                            .error
                            .split_once("]: ")
                            .map_or(item.error.clone(), |(_, rest)| rest.to_string()),
                    };
                    rejected.push((row, format!("rows[{row}]: {detail}")));
                }
            }
            Err(error) => return intake::respond(&state, Err(error)),
        }
    }
    rejected.sort_by_key(|(index, _)| *index);
    MappedCounters::add(&counters.rejected_rows, rejected.len() as u64);
    let status = if accepted > 0 {
        MappedCounters::add(&counters.stored, 1);
        StatusCode::OK
    } else {
        state.counters.count_refusal(400);
        StatusCode::BAD_REQUEST
    };
    let count = rejected.len();
    let listed: Vec<serde_json::Value> = rejected
        .into_iter()
        .take(MAX_LISTED_REJECTIONS)
        .map(|(index, error)| serde_json::json!({ "index": index, "error": error }))
        .collect();
    (
        status,
        Json(serde_json::json!({
            "rows": total,
            "accepted": accepted,
            "rejected_count": count,
            "rejected": listed,
            "end_offset": end_offset,
        })),
    )
        .into_response()
}
