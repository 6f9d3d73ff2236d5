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
    if !shopify::ORDER_TOPICS.contains(&topic.as_str()) {
        crate::sources::shopify::ShopifyCounters::add(&counters.ignored_topic);
        return (
            StatusCode::OK,
            Json(serde_json::json!({
                "accepted": 0,
                "ignored": format!(
                    "topic {:?} is not one Vedetta maps (orders/create, orders/paid)",
                    topic.chars().take(64).collect::<String>()
                ),
            })),
        )
            .into_response();
    }
    let mapped = serde_json::from_slice::<serde_json::Value>(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("the webhook body is not JSON: {e}")))
        .and_then(|order| {
            shopify::order_event(&order, text("x-shopify-webhook-id"))
                .map_err(|e| ApiError::BadRequest(format!("shopify order.{e}")))
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
