//! `GET /v1/openapi.json`: the API description, generated from the handlers and the response
//! types themselves (utoipa), so it cannot drift from what the server answers. The tests
//! check real answers against it.

use super::AppState;
use super::intake::{IntakeResponse, RejectedItem};
use super::kpis::{AttributionInfo, KpiResponse, KpiRow, KpiValues};
use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use std::sync::Arc;
use utoipa::OpenApi;
use vedetta_core::intake::IntakeLimits;
use vedetta_core::pipeline::AttributionModel;

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
        super::alerts::get_rules,
        super::alerts::get_alerts,
        super::alerts::post_silence,
        super::alerts::delete_silence,
        super::alerts::get_dead_letters,
        super::alerts::retry_dead_letter,
        super::alerts::get_inbox,
        super::triggers::get_triggers,
        super::triggers::get_firings,
        super::healthz,
    ),
    components(schemas(
        IntakeResponse,
        RejectedItem,
        KpiResponse,
        KpiRow,
        KpiValues,
        AttributionInfo,
        super::alerts::NewSilence,
        super::alerts::NewMatcher,
        ErrorBody
    )),
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

/// Rust's `char::is_whitespace`, as a regular-expression class: what intake trims.
const WS: &str = r"\t\n\u000B\f\r \u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000";

/// Control characters, which intake refuses inside a string (surrounding white space, tabs
/// and newlines included, is trimmed first).
const CONTROLS: &str = r"\u0000-\u001F\u007F";

/// A string intake trims and then takes at most `max` characters of; empty (or only
/// whitespace) counts as absent. No control characters inside.
fn trimmed_text(max: usize, nullable: bool, description: &str) -> Value {
    let inner = max.saturating_sub(2);
    let pattern = format!(
        "^[{WS}]*([^{WS}{CONTROLS}]([^{CONTROLS}]{{0,{inner}}}[^{WS}{CONTROLS}])?)?[{WS}]*$"
    );
    json!({
        "type": if nullable { json!(["string", "null"]) } else { json!("string") },
        "pattern": pattern,
        "description": description,
    })
}

/// A required string with at least one non-whitespace character, at most `max` characters
/// after trimming.
fn required_text(max: usize, description: &str) -> Value {
    let inner = max.saturating_sub(2);
    json!({
        "type": "string",
        "pattern": format!(
            "^[{WS}]*[^{WS}{CONTROLS}]([^{CONTROLS}]{{0,{inner}}}[^{WS}{CONTROLS}])?[{WS}]*$"
        ),
        "description": description,
    })
}

/// A channel or campaign: text that does not spell a built-in bucket name (`(none)`,
/// `(other)`, in any case, with any surrounding white space).
fn dimension_text(text: &Value) -> Value {
    let spelled: Vec<String> = vedetta_core::intake::RESERVED_DIMENSION_VALUES
        .iter()
        .map(|name| {
            name.chars()
                .map(|c| match c {
                    '(' | ')' => format!("\\{c}"),
                    c if c.is_ascii_alphabetic() => {
                        format!("[{}{}]", c.to_ascii_lowercase(), c.to_ascii_uppercase())
                    }
                    c => c.to_string(),
                })
                .collect()
        })
        .collect();
    json!({
        "allOf": [text, {"not": {
            "type": "string",
            "pattern": format!("^[{WS}]*({})[{WS}]*$", spelled.join("|")),
        }}],
        "description": "a name; (none) and (other) are the names of built-in buckets and refused",
    })
}

/// A money amount: at most `ingest.max_amount` in the reporting currency (amounts in
/// other currencies are converted first, so the bound in their unit may differ).
fn money(max_amount: f64, nullable: bool, currency: &str) -> Value {
    json!({
        "type": if nullable { json!(["number", "null"]) } else { json!("number") },
        "minimum": 0,
        "maximum": max_amount,
        "description": format!(
            "money, at most ingest.max_amount ({max_amount} {currency}) per record after \
             conversion to the reporting currency"
        ),
    })
}

/// An event time as the schema gives it: epoch milliseconds between 2000-01-01 and the
/// future tolerance ahead of `now_ms` (when the document was asked for). RFC 3339 strings
/// are accepted too (description): their range cannot be stated in JSON Schema.
fn event_time(now_ms: i64, limits: &IntakeLimits) -> Value {
    json!({
        "type": "integer",
        "minimum": limits.earliest_ts_ms,
        "maximum": now_ms.saturating_add(limits.future_tolerance_ms),
        "description": "Epoch milliseconds (an RFC 3339 timestamp with an offset is accepted too), \
            from 2000-01-01 to ingest.future_tolerance_seconds ahead of the server clock",
    })
}

/// The request schemas of intake, from the contract (docs/events.md) and the limits of
/// `vedetta_core::intake`; `an_event_schema_names_every_field_intake_reads` keeps the
/// field list in step with the code.
fn intake_schemas(now_ms: i64, limits: &IntakeLimits) -> (Value, Value) {
    let text = |d: &str| trimmed_text(limits.max_text_chars, true, d);
    let id = |d: &str| trimmed_text(limits.max_id_chars, true, d);
    let currency = json!({
        "type": ["string", "null"],
        "pattern": format!("^[{WS}]*([A-Za-z]{{3}})?[{WS}]*$"),
        "description": "ISO 4217 code; default pipeline.reporting_currency",
    });
    let mut udid = required_text(
        limits.max_id_chars,
        "the user's id (pseudonymized at intake)",
    );
    udid["maxLength"] = json!(limits.max_id_chars);
    let event = json!({
        "type": "object",
        "description": "A funnel event (docs/events.md). Italian aliases (UDID, tipo, tempo, valore) \
            are accepted in place of udid, type, ts, value; an unknown field is refused.",
        "required": ["udid", "type", "ts"],
        "additionalProperties": false,
        "properties": {
            "udid": udid,
            "type": required_text(64, "funnel step: page_view, add_to_cart, registration, checkout, purchase, lead, consent (a marketing decision, not counted), or custom"),
            "ts": event_time(now_ms, limits),
            "event_id": id("the client's id for idempotent retries"),
            "value": money(limits.money.max_amount, true, &limits.money.reporting_currency),
            "currency": currency,
            "order_id": id("the shop's order id"),
            "channel": dimension_text(&text("social, paid_search, email, …; derived when absent")),
            "campaign": dimension_text(&text("campaign name")),
            "utm_source": text("attribution"),
            "utm_medium": text("attribution"),
            "utm_campaign": dimension_text(&text("attribution")),
            "utm_content": text("attribution"),
            "utm_term": text("attribution"),
            "gclid": text("attribution"),
            "fbclid": text("attribution"),
            "user_agent": text("device class source"),
            "device": text("overrides the user agent's device class"),
            "ip": {"anyOf": [
                {"type": "string", "format": "ipv4"},
                {"type": "string", "format": "ipv6"},
                {"type": "null"}
            ], "description": "region source; truncated before storage"},
            "region": text("Italian region, name or ISO 3166-2:IT code"),
            "page": text("session fact"),
            "referrer": text("session fact"),
            "product_id": id("session fact"),
            "consent": {"anyOf": [
                {"type": ["boolean", "null"]},
                {"type": "object", "properties": {
                    "analytics": {"type": ["boolean", "null"]},
                    "marketing": {"type": ["boolean", "null"]}
                }}
            ]},
            "email": {"type": ["string", "null"], "maxLength": 254, "description":
                "the user's e-mail address: kept sealed, only with marketing consent, never in \
                 the event log (docs/events.md, Identity and consent)"},
            "crm_id": {"anyOf": [
                {"type": "string", "maxLength": 128},
                {"type": "integer", "minimum": 0},
                {"type": "null"}
            ], "description": "the user's id in the CRM; as email"},
            "properties": {"type": ["object", "null"], "description": format!(
                "anything else, kept as sent: at most {} bytes, {} levels deep",
                limits.max_properties_bytes, limits.max_properties_depth)},
        }
    });
    let spend = json!({
        "type": "object",
        "description": "Ad spend, attributed to the minute that contains ts (docs/events.md).",
        "required": ["ts", "channel", "amount"],
        "additionalProperties": false,
        "properties": {
            "ts": event_time(now_ms, limits),
            "channel": dimension_text(&required_text(limits.max_text_chars, "the channel spent on")),
            "campaign": dimension_text(&text("campaign name")),
            "amount": money(limits.money.max_amount, false, &limits.money.reporting_currency),
            "currency": currency,
            "source": text("google_ads, meta, …"),
        }
    });
    (event, spend)
}

/// The parameters of `/v1/kpis` (and, with the per-client ones, of `/v1/stream`), with the
/// exact values the parser takes (`kpis::KpiQuery::parse`).
fn query_parameters(stream: bool) -> Value {
    let dimension = "(channel|campaign|device|region)";
    let devices = super::kpis::DEVICE_VALUES.join("|");
    let mut regions: Vec<&str> = vedetta_core::enrich::Region::all()
        .map(vedetta_core::enrich::Region::code)
        .collect();
    regions.push("unknown");
    let regions = regions.join("|");
    let instant = json!({"anyOf": [
        {"type": "integer", "format": "int64"},
        {"type": "string", "format": "date-time"}
    ]});
    let parameter = |name: &str, schema: Value, description: &str| json!({"name": name, "in": "query", "required": false, "schema": schema, "description": description});
    let mut list = vec![
        parameter(
            "granularity",
            json!({"type": "string", "enum": ["1m", "1h", "1d"]}),
            "window size; default 1h",
        ),
        parameter(
            "from",
            instant.clone(),
            "epoch ms or RFC 3339: windows starting at or after; clamped to years 0000–9999; before `to`",
        ),
        parameter(
            "to",
            instant,
            "epoch ms or RFC 3339: windows starting before",
        ),
        parameter(
            "last",
            json!({"type": "string", "pattern": "^[0-9]*[1-9][0-9]*[smhd]$"}),
            "instead of from/to: every window overlapping [now − span, now], e.g. 60m, 24h, 30d",
        ),
        parameter(
            "group_by",
            json!({"type": "string", "pattern": format!("^({dimension}(,{dimension})*)?$")}),
            "comma-separated dimensions",
        ),
        parameter(
            "channel",
            json!({"type": "string"}),
            "filter: comma-separated values (at most 1000); `\\,` is a comma inside a value, `\\\\` a backslash",
        ),
        parameter(
            "campaign",
            json!({"type": "string"}),
            "filter: comma-separated values (at most 1000); `\\,` is a comma inside a value, `\\\\` a backslash",
        ),
        parameter(
            "device",
            json!({"type": "string", "pattern": format!("^({devices})(,({devices}))*$")}),
            "filter: device classes (any case)",
        ),
        parameter(
            "region",
            json!({"type": "string", "pattern": format!("^({regions})(,({regions}))*$")}),
            "filter: ISO 3166-2:IT codes or unknown; region names in Italian or English are accepted too",
        ),
        parameter(
            "rollup",
            json!({"type": "string", "enum": ["window", "range"]}),
            "window (default): a row per window; range: a row per group for the whole range",
        ),
    ];
    if stream {
        let flag = json!({"type": "string", "enum": ["true", "false", "1", "0"]});
        list.push(parameter(
            "deltas",
            flag.clone(),
            "after the first answer, send kpis-delta events",
        ));
        list.push(parameter(
            "status",
            flag,
            "send status events (default true)",
        ));
        list.push(parameter(
            "access_token",
            json!({"type": "string"}),
            "API key, for EventSource (which cannot send headers)",
        ));
    }
    Value::Array(list)
}

/// The document, as served: what utoipa derives from the handlers and types, made exact
/// where a derive cannot be (flattened rows, the shapes of intake bodies, the SSE events,
/// the statuses every authenticated route can answer).
pub fn document(now_ms: i64, limits: &IntakeLimits, max_events: usize) -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
    let schemas = &mut doc["components"]["schemas"];
    // A row is flat: window, the grouped dimensions (strings), then the KPIs.
    let values = schemas["KpiValues"].clone();
    let mut row_properties = values["properties"].clone();
    for (name, description) in [
        ("window_start", "RFC 3339, UTC"),
        ("window_end", "RFC 3339, UTC (exclusive)"),
        ("channel", "when grouped by channel"),
        ("campaign", "when grouped by campaign"),
        ("device", "when grouped by device"),
        (
            "region",
            "when grouped by region: the code (IT-25) or unknown",
        ),
        ("region_name", "when grouped by region: the name"),
    ] {
        row_properties[name] = json!({"type": "string", "description": description});
    }
    let mut row_required = values["required"].clone();
    if let Some(list) = row_required.as_array_mut() {
        list.extend([json!("window_start"), json!("window_end")]);
    }
    schemas["KpiRow"] = json!({
        "type": "object",
        "description": "One row: a window, the values of the grouped dimensions, the KPIs.",
        "required": row_required,
        "properties": row_properties,
        "additionalProperties": false,
    });
    // What a derive cannot say: the closed set of models, and a lookback never negative.
    schemas["AttributionInfo"]["properties"]["model"]["enum"] = AttributionModel::ALL
        .iter()
        .map(|model| json!(model.as_str()))
        .collect();
    schemas["AttributionInfo"]["properties"]["lookback_days"]["minimum"] = json!(0);
    schemas["KpiDelta"] = json!({
        "type": "object",
        "description": "What changed since the push whose id is `base`: apply `remove`, then `upsert`, \
            and take the header and totals (assets/dashboard/kpi-delta.js). The base answer's \
            `attribution` still holds: it changes only with a restart, which ends the stream.",
        "required": ["base", "granularity", "time_zone", "from", "to", "group_by", "totals", "upsert", "remove"],
        "properties": {
            "base": {"type": "integer", "minimum": 0},
            "granularity": {"type": "string", "enum": ["1m", "1h", "1d"]},
            "time_zone": {"type": "string"},
            "from": {"type": "string"},
            "to": {"type": "string"},
            "group_by": {"type": "array", "items": {"type": "string"}},
            "totals": {"$ref": "#/components/schemas/KpiValues"},
            "upsert": {"type": "array", "items": {"$ref": "#/components/schemas/KpiRow"}},
            "remove": {"type": "array", "items": {"type": "object", "additionalProperties": {"type": "string"}}},
        },
        "additionalProperties": false,
    });
    let (event, spend) = intake_schemas(now_ms, limits);
    schemas["EventInput"] = event;
    schemas["SpendInput"] = spend;
    let sse = |name: &str, schema: Value| {
        json!({
            "type": "object",
            "required": ["event", "data"],
            "properties": {
                "event": {"const": name},
                "id": {"type": "string", "pattern": "^[0-9]+$"},
                "retry": {"type": "integer"},
                "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": schema},
            },
        })
    };
    schemas["StreamEvent"] = json!({
        "description": "One server-sent event (OpenAPI 3.1: the schema of a text/event-stream \
            response describes each event). `kpis`: the /v1/kpis answer; `kpis-delta` (with \
            deltas=true): what changed; `status`: the /v1/status answer; `query-error`: the \
            view's query failed, retried at the next push.",
        "oneOf": [
            sse("kpis", json!({"$ref": "#/components/schemas/KpiResponse"})),
            sse("kpis-delta", json!({"$ref": "#/components/schemas/KpiDelta"})),
            sse("status", json!({"type": "object"})),
            sse("query-error", json!({"$ref": "#/components/schemas/ErrorBody"})),
        ],
    });

    let error = |description: &str| {
        json!({"description": description,
               "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}})
    };
    let retry_after = json!({"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer", "minimum": 0}}});
    let Some(paths) = doc["paths"].as_object_mut() else {
        return doc;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (_, operation) in item.iter_mut() {
            if path.starts_with("/v1/") {
                let responses = &mut operation["responses"];
                let mut unauthorized = error("Missing or wrong API key (when keys are configured)");
                unauthorized["headers"] =
                    json!({"WWW-Authenticate": {"schema": {"type": "string"}}});
                responses["401"] = unauthorized;
            }
            if matches!(path.as_str(), "/v1/kpis" | "/v1/stream") {
                operation["parameters"] = query_parameters(path == "/v1/stream");
                let responses = &mut operation["responses"];
                responses["400"] =
                    error("A parameter is wrong, unknown or repeated; the message names it");
                responses["414"] = error("Query string over 32 KiB");
            }
            if path == "/v1/kpis" {
                let mut busy = error(
                    "The KPI store is recovering from a storage failure (a full disk); see \
                     Retry-After",
                );
                busy["headers"] = retry_after.clone();
                operation["responses"]["503"] = busy;
            }
            if path == "/v1/stream" {
                let responses = &mut operation["responses"];
                responses["200"] = json!({
                    "description": "Server-sent events: kpis (or kpis-delta), status, query-error",
                    "content": {"text/event-stream": {"schema": {"$ref": "#/components/schemas/StreamEvent"}}},
                });
                let mut busy =
                    error("Too many distinct live views, or shutting down; see Retry-After");
                busy["headers"] = retry_after.clone();
                responses["503"] = busy;
            }
            if let Some((limit_default, paging)) = match path.as_str() {
                "/v1/alerts" => Some((100, false)),
                "/v1/inbox" => Some((50, false)),
                "/v1/outbox/dead" => Some((100, true)),
                "/v1/triggers/firings" => Some((100, false)),
                _ => None,
            } {
                let mut parameters =
                    vec![json!({"name": "limit", "in": "query", "required": false,
                    "description": format!("most entries; default {limit_default}"),
                    "schema": {"type": "integer", "minimum": 0, "maximum": 1000}})];
                if paging {
                    parameters.push(json!({"name": "after", "in": "query", "required": false,
                        "description": "only entries after this seq",
                        "schema": {"type": "integer", "minimum": 0, "maximum": 9_007_199_254_740_991_i64}}));
                }
                operation["parameters"] = json!(parameters);
                operation["responses"]["400"] =
                    error("A parameter is wrong, unknown or repeated; the message names it");
            }
            if path == "/v1/silences" {
                let text = |max: usize| {
                    json!({"type": "string", "maxLength": max,
                    "pattern": "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"})
                };
                operation["requestBody"] = json!({
                    "required": true,
                    "content": {"application/json": {"schema": {
                        "type": "object",
                        "additionalProperties": false,
                        "required": ["matchers", "duration"],
                        "properties": {
                            "matchers": {"type": "array", "minItems": 1, "maxItems": 10, "items": {
                                "type": "object", "additionalProperties": false,
                                "required": ["name", "value"],
                                "properties": {
                                    "name": {"type": "string", "enum": ["rule", "alertname", "severity", "channel", "campaign", "device", "region"]},
                                    "value": text(256),
                                }}},
                            "duration": {"type": "string", "pattern": super::alerts::SILENCE_DURATION_PATTERN,
                                "description": "1m to 90d, like 2h"},
                            "comment": text(1000),
                            "created_by": text(128),
                        }}}},
                });
            }
            if path == "/v1/rejected" {
                operation["parameters"] = json!([{"name": "limit", "in": "query", "required": false,
                    "description": "most entries, newest first; default 100",
                    "schema": {"type": "integer", "minimum": 0, "maximum": 1000}}]);
                let responses = &mut operation["responses"];
                responses["400"] = error("limit is not a whole number from 0 to 1000");
                let mut busy =
                    error("The event log is recovering from a storage failure; see Retry-After");
                busy["headers"] = retry_after.clone();
                responses["503"] = busy;
            }
            if let Some(input) = match path.as_str() {
                "/v1/events" => Some("EventInput"),
                "/v1/costs" => Some("SpendInput"),
                _ => None,
            } {
                let one = json!({"$ref": format!("#/components/schemas/{input}")});
                operation["requestBody"] = json!({
                    "required": true,
                    "description": "One record, a JSON array of them, or NDJSON (one per line); \
                        gzip with Content-Encoding: gzip. Each record is judged alone.",
                    "content": {
                        "application/json": {"schema": {"oneOf": [
                            one,
                            {"type": "array", "items": one, "minItems": 1, "maxItems": max_events}
                        ]}},
                        "application/x-ndjson": {"schema": {"type": "string"}},
                    },
                });
                let responses = &mut operation["responses"];
                responses["400"] = json!({
                    "description": "Nothing stored: every record was refused (IntakeResponse, each \
                        refusal naming its field), or the body could not be split into records \
                        (ErrorBody)",
                    "content": {"application/json": {"schema": {"oneOf": [
                        {"$ref": "#/components/schemas/IntakeResponse"},
                        {"$ref": "#/components/schemas/ErrorBody"}
                    ]}}},
                });
                responses["503"]["headers"] = retry_after.clone();
                responses["507"] = json!({
                    "description": "The event log's disk is full: nothing was stored; retry \
                        after Retry-After, once space is freed",
                    "headers": retry_after.clone(),
                    "content": {"application/json": {"schema":
                        {"$ref": "#/components/schemas/ErrorBody"}}},
                });
            }
        }
    }
    doc
}

pub async fn get_openapi(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(document(
        state.clock.now_ms(),
        &state.limits,
        state.config.ingest.max_events_per_request,
    ))
}
