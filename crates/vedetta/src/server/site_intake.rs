//! Events from browsers: `POST /v1/events?site=KEY` and its CORS preflight.
//!
//! The order of checks is cheapest first, and nothing of the body is read before the key,
//! the origin and the client's rate have passed:
//! 1. the site key must be declared (`[[sites]]`): else 403;
//! 2. the request's `Origin` (or, without one, its `Referer`) must be one of the site's
//!    origins: else 403 saying which origin was refused;
//! 3. the client address must be within the site's rate: else 429 with `Retry-After`;
//! 4. the body is read within the site's (small) limits and judged as a browser's events
//!    (`vedetta_core::intake::browser`): the server supplies the address, the user agent, the
//!    clock correction (`st`, the page's time at sending) and, for a cookieless page, the id.
//!
//! Every answer after step 2 carries `Access-Control-Allow-Origin` with the allowed origin
//! (never `*`), so the page's code can read why an event was refused. See
//! `crate::sources::sites` for what a site key is worth to a thief.

use super::intake::{self, BrowserRequest, Endpoint};
use super::{ApiError, AppState};
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use vedetta_core::intake::browser::{BrowserContext, anonymous_udid, clock_offset_ms};

/// How long a browser may cache a preflight's answer.
const PREFLIGHT_MAX_AGE_S: &str = "7200";

pub(super) async fn post_site_events(
    state: &AppState,
    site_key: &str,
    uri: &Uri,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let sites = &state.sites;
    let (index, site, origin) = match sites.admit(
        site_key,
        header_text(headers, header::ORIGIN),
        header_text(headers, header::REFERER),
    ) {
        Ok(admitted) => admitted,
        Err(refusal) => return refuse(state, &refusal),
    };
    let client = client_address(peer, headers, state.config.server.trusted_proxy_hops);
    let response = match sites.take(index, client, std::time::Instant::now()) {
        Err(retry_after_s) => {
            state.counters.count_refusal(429);
            ApiError::RateLimited {
                message: format!(
                    "over the site's rate of {} requests per second from one address; \
                     retry in {retry_after_s} s",
                    site.rate_per_second
                ),
                retry_after_s,
            }
            .into_response()
        }
        Ok(()) => {
            let now_ms = state.clock.now_ms();
            let user_agent = header_text(headers, header::USER_AGENT);
            let anonymous = anonymous_udid(
                state.pseudonymizer.current(),
                &site.key,
                now_ms,
                client,
                user_agent,
            );
            let sent_ms = super::auth::query_value(uri.query().unwrap_or(""), "st")
                .and_then(|s| s.parse::<i64>().ok());
            let browser = BrowserRequest {
                context: BrowserContext {
                    ip: client,
                    user_agent,
                    anonymous_udid: &anonymous,
                    clock_offset_ms: clock_offset_ms(now_ms, sent_ms),
                },
                max_body_bytes: site.max_body_bytes,
                max_events_per_request: site.max_events_per_request,
            };
            intake::respond(
                state,
                intake::accept(state, headers, body, Endpoint::Events, Some(&browser)).await,
            )
        }
    };
    allow_origin(response, &origin)
}

/// `OPTIONS /v1/events`: the CORS preflight. Answered with the allowed origin for a site
/// key and one of its origins; refused with 403 and the reason otherwise (the browser then
/// does not send the request).
pub async fn preflight(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let Some(site_key) = super::auth::query_value(uri.query().unwrap_or(""), "site") else {
        state.counters.count_refusal(403);
        return ApiError::Forbidden(
            "cross-origin requests to /v1/events need a site key: \
             /v1/events?site=KEY (see docs/sources.md); server keys are for servers"
                .into(),
        )
        .into_response();
    };
    // A preflight always carries `Origin`; `Referer` is not a substitute here.
    let Some(origin) = header_text(&headers, header::ORIGIN) else {
        return refuse(
            &state,
            &crate::sources::sites::SiteRefusal::OriginNotAllowed(None),
        );
    };
    match state.sites.admit(&site_key, Some(origin), None) {
        Err(refusal) => refuse(&state, &refusal),
        Ok((_, _, allowed)) => {
            let mut response = StatusCode::NO_CONTENT.into_response();
            let h = response.headers_mut();
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("POST"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("content-type, content-encoding"),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static(PREFLIGHT_MAX_AGE_S),
            );
            allow_origin(response, &allowed)
        }
    }
}

fn refuse(state: &AppState, refusal: &crate::sources::sites::SiteRefusal) -> Response {
    use crate::sources::sites::SiteRefusal;
    let error = match refusal {
        SiteRefusal::UnknownKey | SiteRefusal::OriginNotAllowed(_) => {
            ApiError::Forbidden(refusal.message())
        }
    };
    state.counters.count_refusal(error.status().as_u16());
    let mut response = error.into_response();
    response
        .headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Origin"));
    response
}

fn allow_origin(mut response: Response, origin: &str) -> Response {
    let h = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
    }
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    response
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The client's address: the peer's, or behind `hops` trusted proxies the `hops`-th entry
/// of `X-Forwarded-For` from the right (entries further left are the client's own claims).
pub(super) fn client_address(
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    hops: u8,
) -> Option<IpAddr> {
    if hops == 0 {
        return peer.map(|p| p.ip());
    }
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    forwarded
        .len()
        .checked_sub(usize::from(hops))
        .and_then(|i| forwarded.get(i))
        .and_then(|entry| entry.parse::<IpAddr>().ok())
        .or_else(|| peer.map(|p| p.ip()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn the_client_address_is_the_peer_or_the_trusted_proxys_entry() {
        let peer: SocketAddr = "10.0.0.9:5000".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "6.6.6.6, 93.44.10.7".parse().unwrap());
        assert_eq!(
            client_address(Some(peer), &headers, 0),
            Some("10.0.0.9".parse().unwrap())
        );
        // One proxy appended what it saw: the rightmost entry.
        assert_eq!(
            client_address(Some(peer), &headers, 1),
            Some("93.44.10.7".parse().unwrap())
        );
        assert_eq!(
            client_address(Some(peer), &headers, 2),
            Some("6.6.6.6".parse().unwrap())
        );
        // More hops than entries, or garbage: the peer.
        assert_eq!(
            client_address(Some(peer), &headers, 3),
            Some("10.0.0.9".parse().unwrap())
        );
        headers.insert("x-forwarded-for", "not an address".parse().unwrap());
        assert_eq!(
            client_address(Some(peer), &headers, 1),
            Some("10.0.0.9".parse().unwrap())
        );
    }
}
