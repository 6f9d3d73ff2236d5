//! Browser intake: site keys, CORS, `text/plain`, the tracker script.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::test_support::{TestServer, server_with_file};
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use vedetta_core::record::LogRecord;
use vedetta_core::time::Clock;

const SITES: &str = r#"
[ingest]
api_keys = ["server-secret-key-0123456789"]

[[sites]]
key = "pub_shop_it"
origins = ["https://www.shop.it", "http://localhost:8081"]
burst = 5
rate_per_second = 1
"#;

fn now() -> i64 {
    crate::clock::SystemClock.now_ms()
}

fn beacon(origin: Option<&str>, body: String) -> Request<Body> {
    let mut request = Request::post(format!("/v1/events?site=pub_shop_it&st={}", now()))
        .header(header::CONTENT_TYPE, "text/plain;charset=UTF-8")
        .header(
            header::USER_AGENT,
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X)",
        );
    if let Some(origin) = origin {
        request = request.header(header::ORIGIN, origin);
    }
    request.body(Body::from(body)).unwrap()
}

fn page_view(udid: Option<&str>) -> String {
    let id = udid
        .map(|u| format!(r#""udid":"{u}","#))
        .unwrap_or_default();
    format!(
        r#"[{{{id}"type":"page_view","ts":{},"event_id":"{}","page":"https://www.shop.it/","utm_source":"google","utm_medium":"cpc","utm_campaign":"brand"}}]"#,
        now(),
        now()
    )
}

fn events(s: &TestServer) -> Vec<vedetta_core::record::StoredEvent> {
    s.state
        .log
        .read(0, 1000)
        .unwrap()
        .into_iter()
        .filter_map(|(_, r)| match r {
            LogRecord::Event(e) => Some(e),
            LogRecord::Spend(_) => None,
        })
        .collect()
}

#[tokio::test]
async fn the_preflight_is_answered_for_the_sites_origins_only() {
    let s = server_with_file(SITES, &[]);
    let preflight = |origin: &str, uri: &str| {
        Request::options(uri)
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "content-type")
            .body(Body::empty())
            .unwrap()
    };
    let (status, headers, _) = s
        .call(preflight(
            "https://www.shop.it",
            "/v1/events?site=pub_shop_it",
        ))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://www.shop.it"
    );
    assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_METHODS], "POST");
    assert!(
        headers[header::ACCESS_CONTROL_ALLOW_HEADERS]
            .to_str()
            .unwrap()
            .contains("content-type")
    );
    assert_eq!(headers[header::VARY], "Origin");

    for (origin, uri, why) in [
        (
            "https://evil.example",
            "/v1/events?site=pub_shop_it",
            "not allowed",
        ),
        (
            "https://www.shop.it",
            "/v1/events?site=pub_unknown",
            "unknown site key",
        ),
        ("https://www.shop.it", "/v1/events", "need a site key"),
    ] {
        let (status, headers, body) = s.call(preflight(origin, uri)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{origin} {uri}");
        assert!(headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        assert!(body["error"].as_str().unwrap().contains(why), "{body}");
    }
}

#[tokio::test]
async fn a_beacon_from_an_allowed_origin_is_stored_without_a_server_key() {
    let s = server_with_file(SITES, &[]);
    let (status, headers, body) = s
        .call(beacon(Some("https://www.shop.it"), page_view(None)))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["accepted"], 1);
    assert_eq!(
        headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://www.shop.it"
    );
    // With a stored id and consent, the id is the page's.
    let (status, _, _) = s
        .call(beacon(
            Some("http://localhost:8081"),
            page_view(Some("v-1")),
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    let stored = events(&s);
    assert_eq!(stored.len(), 2);
    // Cookieless: the server's daily id, consent refused for every purpose.
    assert_eq!(stored[0].consent.analytics, Some(false));
    assert_eq!(stored[0].consent.marketing, Some(false));
    assert_ne!(stored[0].user, s.state.pseudonymizer.pseudonym("v-1"));
    assert_eq!(
        stored[0].user_agent.as_deref(),
        Some("Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X)")
    );
    assert_eq!(stored[1].user, s.state.pseudonymizer.pseudonym("v-1"));
    assert_eq!(stored[0].utm_campaign.as_deref(), Some("brand"));
}

#[tokio::test]
async fn a_site_key_writes_events_only_and_only_from_its_origins() {
    let s = server_with_file(SITES, &[]);
    let before = s.state.log.end_offset();
    // Another origin, no origin at all, a forged `null`: refused before the body is read.
    for origin in [Some("https://evil.example"), None, Some("null")] {
        let (status, headers, body) = s.call(beacon(origin, page_view(None))).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{origin:?}: {body}");
        assert!(headers.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    }
    // A Referer of the site stands in for a missing Origin (same-origin GET-less pages).
    let request = Request::post("/v1/events?site=pub_shop_it")
        .header(header::CONTENT_TYPE, "text/plain")
        .header(header::REFERER, "https://www.shop.it/cart?step=2")
        .body(Body::from(page_view(None)))
        .unwrap();
    assert_eq!(s.call(request).await.0, StatusCode::OK);
    // Spend and reads need the server key, site key or not.
    let request = Request::post("/v1/costs?site=pub_shop_it")
        .header(header::ORIGIN, "https://www.shop.it")
        .body(Body::from("{}"))
        .unwrap();
    assert_eq!(s.call(request).await.0, StatusCode::UNAUTHORIZED);
    let request = Request::get("/v1/kpis?site=pub_shop_it")
        .header(header::ORIGIN, "https://www.shop.it")
        .body(Body::empty())
        .unwrap();
    assert_eq!(s.call(request).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(s.state.log.end_offset(), before + 1);
}

#[tokio::test]
async fn a_huge_tracker_body_is_413_and_the_rate_is_kept_per_address() {
    let s = server_with_file(SITES, &[]);
    let huge = format!(
        r#"[{{"type":"page_view","ts":{},"page":"{}"}}]"#,
        now(),
        "x".repeat(2 << 20)
    );
    let (status, headers, body) = s.call(beacon(Some("https://www.shop.it"), huge)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    // The page can read why.
    assert_eq!(
        headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://www.shop.it"
    );
    // Burst 5 at 1/s: the 413 took one; four more pass, then 429 with Retry-After.
    for _ in 0..4 {
        let (status, _, body) = s
            .call(beacon(Some("https://www.shop.it"), page_view(None)))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, headers, body) = s
        .call(beacon(Some("https://www.shop.it"), page_view(None)))
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(headers[header::RETRY_AFTER], "1");
    assert!(body["error"].as_str().unwrap().contains("rate"), "{body}");
    assert_eq!(events(&s).len(), 4);
}

#[tokio::test]
async fn the_tracker_is_small_cacheable_and_public() {
    let s = server_with_file(SITES, &[]);
    let request = Request::get("/v1/tracker.js")
        .header(header::ACCEPT_ENCODING, "gzip, br")
        .body(Body::empty())
        .unwrap();
    let response = tower::ServiceExt::oneshot(s.router.clone(), request)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(headers[header::CONTENT_ENCODING], "gzip");
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert!(
        bytes.len() <= 3 * 1024,
        "tracker is {} bytes gzipped",
        bytes.len()
    );
    assert_eq!(bytes.len(), crate::sources::tracker::gzip_len());
    let etag = headers[header::ETAG].to_str().unwrap().to_string();
    assert!(etag.starts_with('"') && etag.len() > 10, "{etag}");
    let request = Request::get("/v1/tracker.js")
        .header(header::IF_NONE_MATCH, &etag)
        .body(Body::empty())
        .unwrap();
    let (status, headers, _) = s.call(request).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert_eq!(headers[header::ETAG], etag.as_str());
    // Without gzip: the plain script, with the same validator.
    let (status, headers, body) = s
        .call(Request::get("/v1/tracker.js").body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.get(header::CONTENT_ENCODING).is_none());
    assert!(body.as_str().unwrap().contains("sendBeacon"));
}
