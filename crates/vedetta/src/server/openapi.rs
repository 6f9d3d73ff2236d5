//! `GET /v1/openapi.json`: the API description, generated from the handlers and the response
//! types themselves (utoipa), so it cannot drift from what the server answers. The tests
//! check real answers against it.

use super::intake::{IntakeResponse, RejectedItem};
use super::kpis::{KpiResponse, KpiRow, KpiValues};
use axum::Json;
use utoipa::OpenApi;

/// The error body of every 4xx and 5xx answer.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong; for 4xx, what to fix.
    pub error: String,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Vedetta",
        description = "Real-time conversion monitor: intake of funnel events and ad spend, \
                       windowed KPIs. Semantics: docs/semantics.md.",
    ),
    paths(
        super::intake::post_events,
        super::intake::post_costs,
        super::kpis::get_kpis,
        super::stream::get_stream,
        super::status::get_status,
        super::status::get_rejected,
        super::healthz,
    ),
    components(schemas(IntakeResponse, RejectedItem, KpiResponse, KpiRow, KpiValues, ErrorBody)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub async fn get_openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
