//! API key check for `/v1` routes.

use super::{ApiError, AppState};
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// Lets the request through when no keys are configured (loopback-only mode) or when it
/// carries `Authorization: Bearer <one of the keys>`, or — for `EventSource`, which cannot
/// set headers — `?access_token=<key>` on a `GET`.
pub async fn require_key(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let keys = &state.config.ingest.api_keys;
    if keys.is_empty() || is_site_request(&request) {
        // Site-key requests are judged by the intake handler itself (origin, rate).
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .map(str::to_string)
        .or_else(|| {
            (request.method() == axum::http::Method::GET)
                .then(|| access_token(request.uri().query().unwrap_or("")))
                .flatten()
        });
    match presented {
        Some(key)
            if keys
                .iter()
                .any(|k| constant_time_eq(k.as_bytes(), key.as_bytes())) =>
        {
            next.run(request).await
        }
        _ => {
            state.counters.count_refusal(401);
            ApiError::Unauthorized.into_response()
        }
    }
}

/// A browser's request with a public site key: `POST /v1/events?site=KEY` and its CORS
/// preflight. Nothing else accepts a site key.
fn is_site_request(request: &Request) -> bool {
    request.uri().path() == "/v1/events"
        && (request.method() == axum::http::Method::OPTIONS
            || request.method() == axum::http::Method::POST
                && query_value(request.uri().query().unwrap_or(""), "site").is_some())
}

/// The credentials of an `Authorization: Bearer <token>` header. The scheme is matched in
/// any case, as RFC 9110 §11.1 says auth schemes are; the token is compared exactly.
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

/// The `access_token` query parameter, percent-decoded.
fn access_token(query: &str) -> Option<String> {
    query_value(query, "access_token")
}

/// The first value of query parameter `name`, percent-decoded (`None` when absent or not
/// UTF-8 once decoded).
pub(super) fn query_value(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let value = pair.strip_prefix(name)?.strip_prefix('=')?;
        vedetta_core::sources::percent_decode(value)
    })
}

/// Compares without an early exit, so response time does not reveal how much of a key
/// matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive_but_the_token_is_exact() {
        for header in ["Bearer k1", "bearer k1", "BEARER k1", "  bEaReR   k1  "] {
            assert_eq!(bearer_token(header), Some("k1"), "{header:?}");
        }
        assert_eq!(bearer_token("Bearer K1"), Some("K1"));
        assert_eq!(bearer_token("Basic k1"), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Bearer   "), None);
        assert_eq!(bearer_token("Bearerk1"), None);
    }
}
