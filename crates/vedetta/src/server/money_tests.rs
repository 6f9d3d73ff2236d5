//! Money totals past `i64` micro-units answer exactly, as the store holds them (issue 8).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use vedetta_core::pipeline::kpi::{KpiCounters, SpendCounters};
use vedetta_core::pipeline::windows::Granularity;
use vedetta_store::{Commit, RowKey, SpendRowKey};

const HOUR: i64 = 3_600_000;

/// Issue 8: revenue wrapped past `i64::MAX` micro-units (8,776,627,963,145.23 € for
/// `1e300 + 9e12 + 9e12`). Each stored row holds one purchase of `i64::MAX` micro-units
/// (the most a record can carry); the totals sum six of them.
#[tokio::test]
async fn kpi_totals_past_i64_max_micro_units_are_answered_exactly() {
    let server = super::test_support::server();
    let (router, state) = (server.router.clone(), server.state.clone());
    let mut commit = Commit {
        processed_offset: 0,
        durable: true,
        ..Commit::default()
    };
    for hour in 1..=3 {
        for channel in ["email", "social"] {
            commit.rows.push((
                RowKey {
                    granularity: Granularity::Hour,
                    window_start: hour * HOUR,
                    channel: channel.into(),
                    campaign: "x".into(),
                    device: "mobile".into(),
                    region: "IT-25".into(),
                },
                KpiCounters {
                    conversions: 1,
                    revenue_micros: i128::from(i64::MAX),
                    ..KpiCounters::default()
                },
            ));
            commit.spend.push((
                SpendRowKey {
                    granularity: Granularity::Hour,
                    window_start: hour * HOUR,
                    channel: channel.into(),
                    campaign: "x".into(),
                },
                SpendCounters::record(i64::MAX),
            ));
        }
    }
    state.kpi_store.commit(&commit).unwrap();

    let uri = format!(
        "/v1/kpis?granularity=1h&from=0&to={}&group_by=channel",
        10 * HOUR
    );
    let response = router
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    // i64::MAX micro-units = 9,223,372,036,854.775807 units (nearest double).
    let one = 9_223_372_036_854.775_f64;
    let close = |value: &Value, expected: f64| {
        let value = value.as_f64().unwrap();
        assert!(
            (value - expected).abs() <= expected * 1e-15,
            "{value} is not {expected}"
        );
    };
    assert_eq!(body["rows"].as_array().unwrap().len(), 6, "{body}");
    close(&body["totals"]["revenue"], 6.0 * one);
    close(&body["totals"]["spend"], 6.0 * one);
    close(&body["totals"]["aov"], one);
    close(&body["totals"]["cpa"], one);
    assert_eq!(body["totals"]["conversions"], 6);
}
