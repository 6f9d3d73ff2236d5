//! `GET /v1/stream`: live KPIs over server-sent events.
//!
//! A client subscribes to one view — the same parameters as `/v1/kpis`, usually with
//! `last=` — and receives `event: kpis` (the `/v1/kpis` answer) and `event: status` (the
//! `/v1/status` answer) on connect and then whenever processing has advanced, at most once
//! per 0.7 s, checked every 0.1 s: a change is on screen within about a second. On a quiet
//! server it still pushes every 30 s, so a `last=` view keeps sliding with the clock.
//!
//! The query cost does not grow with the audience: a view's answer is computed at most once
//! per quarter second and shared by every client watching it (a per-view lock makes the
//! others wait for the first one's answer instead of computing it again). What still grows
//! with the audience is writing the answers to the sockets. Clients never poll;
//! `EventSource` reconnects by itself after the `retry` delay.

use super::kpis::{KpiQuery, run_query};
use super::{ApiError, AppState};
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// How often a connection looks for progress.
const CHECK_EVERY: Duration = Duration::from_millis(100);
/// The least time between two pushes to one client.
const MIN_PUSH_GAP: Duration = Duration::from_millis(700);
/// An answer younger than this serves every client of the view, even if processing has
/// moved on since: under steady intake the offset changes many times a second, and one
/// query per view per quarter second is what keeps the cost independent of the audience.
/// With the push gap above, a change still reaches the screen within about a second.
const SHARE_FOR: Duration = Duration::from_millis(250);
/// The most time between two pushes, data or not.
const MAX_PUSH_GAP: Duration = Duration::from_secs(30);

/// Answers shared between the clients of a view.
#[derive(Debug, Default)]
pub struct StreamCache {
    views: std::sync::Mutex<HashMap<String, Arc<Mutex<Option<CachedAnswer>>>>>,
}

#[derive(Debug)]
struct CachedAnswer {
    processed_offset: u64,
    computed: Instant,
    json: Arc<str>,
}

impl StreamCache {
    fn slot(&self, key: &str) -> Arc<Mutex<Option<CachedAnswer>>> {
        let mut views = self.views.lock().unwrap_or_else(|e| e.into_inner());
        // Views nobody has watched for a minute are dropped; the map stays as small as the
        // audience. (A slot not in use right now still holds the view's last answer.)
        views.retain(|_, slot| {
            Arc::strong_count(slot) > 1
                || slot
                    .try_lock()
                    .map(|answer| {
                        answer
                            .as_ref()
                            .is_some_and(|a| a.computed.elapsed() < Duration::from_secs(60))
                    })
                    .unwrap_or(true)
        });
        views.entry(key.to_string()).or_default().clone()
    }
}

/// The `/v1/kpis` answer of a view as of now, computed once per processed offset.
async fn view_answer(
    state: &Arc<AppState>,
    key: &str,
    params: &HashMap<String, String>,
) -> Result<Arc<str>, ApiError> {
    let processed = state.processor.processed_offset.load(Ordering::Acquire);
    let slot = state.stream_cache.slot(key);
    let mut cached = slot.lock().await;
    if let Some(answer) = cached.as_ref() {
        let age = answer.computed.elapsed();
        // Unchanged data is reused for a while (`last=` windows still slide with the
        // clock); changed data after a quarter of a second.
        let unchanged = answer.processed_offset == processed && age < MAX_PUSH_GAP / 2;
        if unchanged || age < SHARE_FOR {
            return Ok(answer.json.clone());
        }
    }
    let query = KpiQuery::parse(params, state.clock.now_ms())?;
    let state_for_query = state.clone();
    let response = tokio::task::spawn_blocking(move || run_query(&state_for_query, &query))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    let json: Arc<str> = serde_json::to_string(&response)
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .into();
    *cached = Some(CachedAnswer {
        processed_offset: processed,
        computed: Instant::now(),
        json: json.clone(),
    });
    Ok(json)
}

/// Live KPIs of one view.
#[utoipa::path(
    get,
    path = "/v1/stream",
    params(
        ("granularity" = Option<String>, Query, description = "1m, 1h or 1d"),
        ("last" = Option<String>, Query, description = "a span ending now, e.g. 60m, 24h, 30d"),
        ("group_by" = Option<String>, Query, description = "as in /v1/kpis"),
        ("access_token" = Option<String>, Query, description = "API key, for EventSource"),
    ),
    responses((status = 200, description = "text/event-stream of `kpis` and `status` events",
               content_type = "text/event-stream", body = String))
)]
pub async fn get_stream(
    State(state): State<Arc<AppState>>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>>, ApiError> {
    // Refuse a bad view now, with a 400, rather than inside the stream.
    KpiQuery::parse(&params, state.clock.now_ms())?;
    let mut sorted: Vec<_> = params
        .iter()
        .filter(|(k, _)| k.as_str() != "access_token")
        .collect();
    sorted.sort();
    let key = sorted
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    state.stream_clients.fetch_add(1, Ordering::Relaxed);
    let guard = ClientGuard(state.clone());
    let stream = futures_util::stream::unfold(
        (state, params, key, None::<u64>, None::<Instant>, guard),
        |(state, params, key, mut sent_offset, mut sent_at, guard)| async move {
            loop {
                let processed = state.processor.processed_offset.load(Ordering::Acquire);
                let due = sent_at.is_none_or(|at| at.elapsed() >= MIN_PUSH_GAP);
                let stale = sent_at.is_some_and(|at| at.elapsed() >= MAX_PUSH_GAP);
                if due && (sent_offset != Some(processed) || stale) {
                    let kpis = match view_answer(&state, &key, &params).await {
                        Ok(json) => Event::default().event("kpis").data(json.as_ref()),
                        Err(error) => Event::default()
                            .event("error")
                            .data(serde_json::json!({ "error": error.to_string() }).to_string()),
                    };
                    let status = Event::default()
                        .event("status")
                        .data(super::status::status_json(&state).to_string());
                    sent_offset = Some(processed);
                    sent_at = Some(Instant::now());
                    let events = vec![
                        Ok(Event::default().retry(Duration::from_secs(3))),
                        Ok(kpis),
                        Ok(status),
                    ];
                    return Some((
                        futures_util::stream::iter(events),
                        (state, params, key, sent_offset, sent_at, guard),
                    ));
                }
                tokio::time::sleep(CHECK_EVERY).await;
            }
        },
    );
    use futures_util::StreamExt;
    Ok(Sse::new(stream.flatten()).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(15))
            .text("keep-alive"),
    ))
}

/// Counts a client out when its stream is dropped (the client went away).
struct ClientGuard(Arc<AppState>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.stream_clients.fetch_sub(1, Ordering::Relaxed);
    }
}
