//! The live dashboard: static assets compiled into the binary, so it works with no CDN, no
//! internet and no files next to the binary. The page itself talks to `/v1/kpis`,
//! `/v1/status` and `/v1/stream` like any other client; its banner of firing alerts and the
//! alerts page (`/alerts`) to `/v1/alerts`, `/v1/rules` and `/v1/silences`.
//!
//! `docs/semantics.md` is served too (`/docs/semantics.md`): the dashboard's attribution
//! note links to it, and a link must work where the dashboard works (offline, behind a
//! firewall) and describe the build that computed the numbers, not the newest one.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

const INDEX_HTML: &str = include_str!("../../assets/dashboard/index.html");
const APP_JS: &str = include_str!("../../assets/dashboard/app.js");
const KPI_DELTA_JS: &str = include_str!("../../assets/dashboard/kpi-delta.js");
const VIEW_JS: &str = include_str!("../../assets/dashboard/view.js");
const ALERTS_HTML: &str = include_str!("../../assets/dashboard/alerts.html");
const ALERTS_JS: &str = include_str!("../../assets/dashboard/alerts.js");
const ALERTS_SHARED_JS: &str = include_str!("../../assets/dashboard/alerts-shared.js");
const ALERTS_BANNER_JS: &str = include_str!("../../assets/dashboard/alerts-banner.js");
const TRIGGERS_HTML: &str = include_str!("../../assets/dashboard/triggers.html");
const TRIGGERS_JS: &str = include_str!("../../assets/dashboard/triggers.js");
const STYLE_CSS: &str = include_str!("../../assets/dashboard/style.css");
/// What every number means, from the repository's docs (the one copy there is).
const SEMANTICS_MD: &str = include_str!("../../../../docs/semantics.md");

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Assets change with the binary; a revalidation is cheap and never serves a stale page.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// A page: it loads only its own scripts and styles and talks only to this server (alert
/// names and campaign names it shows are client text; no inline script could run).
fn page(body: &'static str) -> Response {
    let mut response = asset(body, "text/html; charset=utf-8");
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
             connect-src 'self'; frame-ancestors 'none'",
        ),
    );
    response
}

pub async fn index() -> Response {
    page(INDEX_HTML)
}

/// Firing and pending alerts, silences and the history.
pub async fn alerts_page() -> Response {
    page(ALERTS_HTML)
}

/// Per trigger its firings and users sent, per destination its outbox queue.
pub async fn triggers_page() -> Response {
    page(TRIGGERS_HTML)
}

pub async fn triggers_js() -> Response {
    asset(TRIGGERS_JS, "text/javascript; charset=utf-8")
}

pub async fn view_js() -> Response {
    asset(VIEW_JS, "text/javascript; charset=utf-8")
}

pub async fn alerts_js() -> Response {
    asset(ALERTS_JS, "text/javascript; charset=utf-8")
}

pub async fn alerts_shared_js() -> Response {
    asset(ALERTS_SHARED_JS, "text/javascript; charset=utf-8")
}

pub async fn alerts_banner_js() -> Response {
    asset(ALERTS_BANNER_JS, "text/javascript; charset=utf-8")
}

pub async fn app_js() -> Response {
    asset(APP_JS, "text/javascript; charset=utf-8")
}

pub async fn kpi_delta_js() -> Response {
    asset(KPI_DELTA_JS, "text/javascript; charset=utf-8")
}

pub async fn style_css() -> Response {
    asset(STYLE_CSS, "text/css; charset=utf-8")
}

/// `docs/semantics.md` as plain text: every browser shows `text/plain` inline, where
/// `text/markdown` may be offered as a download instead. Public, like the dashboard's
/// assets: it holds no data.
pub async fn semantics_md() -> Response {
    asset(SEMANTICS_MD, "text/plain; charset=utf-8")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::test_support::server;
    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};

    /// The `src="/assets/…"` and `href="/assets/…"` a page loads.
    fn assets_of(page: &str) -> Vec<String> {
        let mut found = Vec::new();
        for marker in ["src=\"/assets/", "href=\"/assets/"] {
            for (at, _) in page.match_indices(marker) {
                let start = at + marker.len() - "/assets/".len();
                let end = start + page[start..].find('"').unwrap();
                found.push(page[start..end].to_string());
            }
        }
        found
    }

    /// Every page is served with its CSP, and every script and stylesheet it names is
    /// served: a page that names an asset the router does not serve is a blank page.
    #[tokio::test]
    async fn the_dashboard_and_the_alerts_page_are_served_with_every_asset_they_load() {
        let s = server();
        // `/?…` is the form of an alert's drill-down link: the same page.
        for path in [
            "/",
            "/alerts",
            "/triggers",
            "/?channel=social&campaign=saldi%2C%20inverno&from=2026-11-25T14%3A00%3A00Z&to=2026-11-25T14%3A10%3A00Z",
        ] {
            let (status, headers, body) = s
                .call(Request::get(path).body(Body::empty()).unwrap())
                .await;
            assert_eq!(status, StatusCode::OK, "{path}");
            let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
            assert!(csp.contains("script-src 'self';"), "{path}: {csp}");
            let page = body.as_str().unwrap().to_string();
            let assets = assets_of(&page);
            assert!(assets.len() >= 3, "{path}: {assets:?}");
            for asset in assets {
                let (status, headers, _) = s
                    .call(Request::get(&asset).body(Body::empty()).unwrap())
                    .await;
                assert_eq!(status, StatusCode::OK, "{path} loads {asset}");
                let kind = headers[header::CONTENT_TYPE].to_str().unwrap();
                let expected = if asset.ends_with(".css") {
                    "text/css"
                } else {
                    "text/javascript"
                };
                assert!(kind.starts_with(expected), "{asset}: {kind}");
            }
        }
        let (_, _, alerts) = s
            .call(Request::get("/alerts").body(Body::empty()).unwrap())
            .await;
        let alerts = alerts.as_str().unwrap();
        assert!(alerts.contains("/assets/alerts.js") && alerts.contains("id=\"silence-form\""));
        let (_, _, index) = s.call(Request::get("/").body(Body::empty()).unwrap()).await;
        assert!(index.as_str().unwrap().contains("href=\"/triggers\""));
    }
}
