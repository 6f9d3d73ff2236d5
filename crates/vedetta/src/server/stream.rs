//! `GET /v1/stream`: live KPIs over server-sent events.
//!
//! A client subscribes to one view — the same parameters as `/v1/kpis`, usually with
//! `last=` — and receives `event: kpis` (the `/v1/kpis` answer) and `event: status` (the
//! `/v1/status` answer) on connect and then whenever processing has advanced, at most once
//! per 0.7 s, checked every 0.1 s: a change is on screen within about a second. On a quiet
//! server it still pushes every 30 s, so a `last=` view keeps sliding with the clock. A
//! view whose query fails gets `event: query-error` with `{"error": …}` (not `error`, which
//! is the name the browser gives its own connection failures); an internal failure (a
//! corrupt row) shows the client the generic message and is logged, once per view and
//! distinct failure.
//!
//! Two per-client options, which do not change the view:
//! - `deltas=true`: after the first whole answer, each push is `event: kpis-delta` — the
//!   header and totals, the rows that are new or changed (`upsert`) and the identities of
//!   the rows that are gone (`remove`), relative to the push before (`base`, the `id:` of
//!   that push). A 24-hour view by channel changes in its current hour only, so this sends
//!   a few KB instead of tens of KB a second per dashboard, which matters on a phone.
//! - `status=false`: no `status` events (a page needs them on one of its streams only).
//!
//! The cost does not grow with the audience but with the number of distinct views. One
//! ticker per server looks for progress; for each watched view it computes the answer once,
//! frames the SSE bytes once (whole and delta), and publishes them on the view's `watch`
//! channel. A client's task only wakes when its view has a new frame and hands the same
//! bytes to its socket: no per-client query, serialization or timer. A slow client skips
//! frames rather than buffering them (a `watch` keeps only the newest), and then gets the
//! whole answer, since a delta only follows the frame it was computed from. Clients never
//! poll; `EventSource` reconnects by itself after the `retry` delay.
//!
//! At shutdown the hub closes: every stream ends (clients reconnect to the next server) and
//! new ones get a 503, so an open dashboard never holds up a graceful stop.

use super::kpis::{KpiQuery, KpiResponse, KpiValues, run_query, shown_name, shown_value};
use super::{ApiError, AppState};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often the ticker looks for progress.
const CHECK_EVERY: Duration = Duration::from_millis(100);
/// The least time between two pushes of one view.
const MIN_PUSH_GAP: Duration = Duration::from_millis(700);
/// The most time between two pushes of one view, data or not.
const MAX_PUSH_GAP: Duration = Duration::from_secs(30);
/// A comment line after this much silence keeps proxies from closing the connection.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// The most distinct views watched at once. Each costs a query per push whatever its
/// audience, so an unbounded number (a script opening a view per `last=` value) could
/// starve processing; past it, a new view gets 503 (clients of existing views never do).
pub const MAX_VIEWS: usize = 256;
/// How many views the ticker refreshes at the same time (queries run on blocking threads;
/// more at once would only take cores from processing).
const REFRESH_CONCURRENCY: usize = 2;
/// Sent first: how long `EventSource` waits before reconnecting.
const RETRY: &[u8] = b"retry: 3000\n\n";
/// The most distinct internal failures logged per view: a view failing in ever new ways
/// (a detail naming a row) does not fill the log either.
const MAX_LOGGED_FAILURES: usize = 16;
/// The most parameters of a view a log line shows.
const VIEW_EXCERPT_PARAMS: usize = 12;

/// One push of a view: its SSE bytes, framed once and written to every client of the view.
#[derive(Debug, Clone)]
struct Frame {
    /// Numbers the view's frames; a delta applies to the answer of frame `seq - 1`.
    seq: u64,
    /// The whole answer (`event: kpis`, or `query-error`).
    full: Bytes,
    /// What changed since frame `seq - 1` (`event: kpis-delta`); `None` when there is
    /// nothing to compare with (the first answer, or one after a failed query).
    delta: Option<Bytes>,
    /// `event: status`, shared by every view pushed in the same tick.
    status: Bytes,
    processed_offset: u64,
    computed: Instant,
    /// The query failed (`full` is a `query-error` event): retried at the next push gap
    /// whether or not data arrived, and never handed to a new client.
    failed: bool,
}

impl Frame {
    /// Whether the ticker should replace this frame now.
    fn due(&self, processed: u64) -> bool {
        let age = self.computed.elapsed();
        age >= MIN_PUSH_GAP
            && (self.failed || self.processed_offset != processed || age >= MAX_PUSH_GAP)
    }
}

/// One view (a set of query parameters) and its watchers.
#[derive(Debug)]
struct ViewFeed {
    params: HashMap<String, String>,
    frames: watch::Sender<Option<Frame>>,
    /// Held while the view's answer is computed, so that a burst of connections to a new
    /// view computes it once and the ticker never computes it twice at the same time. It
    /// guards the rows of the last published answer, which the next delta is computed from.
    computing: Arc<tokio::sync::Mutex<Option<PublishedRows>>>,
    /// The internal failures of the view's query already logged. A failed view is computed
    /// again at every push gap; logging the same failure each time would flood the log.
    logged_failures: std::sync::Mutex<Vec<String>>,
}

impl ViewFeed {
    fn new(params: HashMap<String, String>) -> ViewFeed {
        ViewFeed {
            params,
            frames: watch::Sender::new(None),
            computing: Arc::new(tokio::sync::Mutex::new(None)),
            logged_failures: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Logs an internal failure of the view's query (its clients get the generic
    /// `query-error`), once per distinct failure, with a bounded excerpt of the view. A
    /// client's mistake (a 4xx) is told in the answer and not logged.
    fn failed(&self, error: &ApiError) {
        let ApiError::Internal(detail) = error else {
            return;
        };
        let mut logged = self
            .logged_failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if logged.len() >= MAX_LOGGED_FAILURES || logged.contains(detail) {
            return;
        }
        logged.push(detail.clone());
        let last = if logged.len() == MAX_LOGGED_FAILURES {
            " (the last new failure of this view logged)"
        } else {
            ""
        };
        tracing::warn!(
            view = %view_excerpt(&self.params),
            %detail,
            "a live view's query failed; its clients get query-error until it succeeds{last}"
        );
    }
}

/// A view's parameters as a log line shows them (they came from a client): sorted, each
/// value cut to 64 characters and quoted, at most [`VIEW_EXCERPT_PARAMS`] of them.
fn view_excerpt(params: &HashMap<String, String>) -> String {
    let sorted: BTreeMap<&String, &String> = params.iter().collect();
    let mut parts: Vec<String> = sorted
        .iter()
        .take(VIEW_EXCERPT_PARAMS)
        .map(|(name, value)| format!("{}={}", shown_name(name), shown_value(value)))
        .collect();
    if sorted.len() > VIEW_EXCERPT_PARAMS {
        parts.push(format!("(and {} more)", sorted.len() - VIEW_EXCERPT_PARAMS));
    }
    parts.join(" ")
}

/// The rows of a published answer, by key, as serialized: what a delta is computed from.
#[derive(Debug, Default)]
struct PublishedRows {
    rows: HashMap<String, PublishedRow>,
}

#[derive(Debug)]
struct PublishedRow {
    json: String,
    /// What must differ for the row to count as changed: the row itself, or in a
    /// `rollup=range` answer the row without its window (the range, which slides with
    /// every push and which the client takes from the answer).
    content: String,
    /// The fields that identify the row (`window_start` and the grouped dimensions), sent
    /// in a delta's `remove` list when the row is gone.
    identity: BTreeMap<String, String>,
}

/// The views being watched, and the ticker that refreshes them.
#[derive(Debug, Default)]
pub struct StreamHub {
    inner: std::sync::Mutex<HubInner>,
}

#[derive(Debug, Default)]
struct HubInner {
    views: HashMap<String, Arc<ViewFeed>>,
    ticker: Option<JoinHandle<()>>,
    closed: bool,
}

impl StreamHub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HubInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins a client to its view (creating the view) and makes sure the ticker runs.
    fn subscribe(
        &self,
        state: &Arc<AppState>,
        key: String,
        params: HashMap<String, String>,
    ) -> Result<(Arc<ViewFeed>, watch::Receiver<Option<Frame>>), ApiError> {
        let mut inner = self.lock();
        if inner.closed {
            return Err(ApiError::Busy {
                message: "the server is shutting down".into(),
                retry_after_s: 3,
            });
        }
        if !inner.views.contains_key(&key) && inner.views.len() >= MAX_VIEWS {
            inner
                .views
                .retain(|_, view| view.frames.receiver_count() > 0);
            if inner.views.len() >= MAX_VIEWS {
                return Err(ApiError::Busy {
                    message: format!(
                        "too many distinct live views ({MAX_VIEWS}); dashboards showing the \
                         same view share it"
                    ),
                    retry_after_s: 30,
                });
            }
        }
        let view = inner
            .views
            .entry(key)
            .or_insert_with(|| Arc::new(ViewFeed::new(params)))
            .clone();
        // Subscribed under the hub's lock: the ticker drops views without receivers under
        // the same lock, so it cannot drop this one between its creation and this line.
        let receiver = view.frames.subscribe();
        if inner.ticker.as_ref().is_none_or(JoinHandle::is_finished) {
            inner.ticker = Some(tokio::spawn(tick(Arc::downgrade(state))));
        }
        Ok((view, receiver))
    }

    /// The watched views, after dropping those nobody watches; `None` once there are none
    /// (the ticker then stops, and the next client starts a new one) or the hub is closed.
    fn watched(&self) -> Option<Vec<Arc<ViewFeed>>> {
        let mut inner = self.lock();
        inner
            .views
            .retain(|_, view| view.frames.receiver_count() > 0);
        if inner.views.is_empty() || inner.closed {
            inner.ticker = None;
            return None;
        }
        Some(inner.views.values().cloned().collect())
    }

    /// Ends every stream and refuses new ones; returns the ticker so the caller can wait for
    /// it to let go of the state.
    pub fn close(&self) -> Option<JoinHandle<()>> {
        let mut inner = self.lock();
        inner.closed = true;
        // Dropping the senders ends every client's stream.
        inner.views.clear();
        inner.ticker.take()
    }
}

/// Refreshes the watched views every [`CHECK_EVERY`] until none is watched. Holds the state
/// weakly, and strongly only during a tick and a refresh, so it never keeps a stopped server
/// alive. Each refresh is a task of its own (at most [`REFRESH_CONCURRENCY`] computing at
/// once): a slow view delays only itself, and is skipped by later ticks until it is done.
async fn tick(weak: Weak<AppState>) {
    let mut interval = tokio::time::interval(CHECK_EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let permits = Arc::new(tokio::sync::Semaphore::new(REFRESH_CONCURRENCY));
    let mut refreshes = tokio::task::JoinSet::new();
    loop {
        interval.tick().await;
        while refreshes.try_join_next().is_some() {}
        let Some(state) = weak.upgrade() else {
            break;
        };
        let Some(views) = state.stream_hub.watched() else {
            break;
        };
        let processed = state.processor.processed_offset.load(Ordering::Acquire);
        // One status document per tick, shared by every view pushed in it.
        let mut status = None;
        for view in views {
            let due = view
                .frames
                .borrow()
                .as_ref()
                .is_none_or(|f| f.due(processed));
            // A view being computed (for a new client, or since an earlier tick) is skipped.
            let Some(mut published) = due
                .then(|| view.computing.clone().try_lock_owned().ok())
                .flatten()
            else {
                continue;
            };
            let status: Bytes = status
                .get_or_insert_with(|| Bytes::from(status_event(&state)))
                .clone();
            let (state, permits) = (state.clone(), permits.clone());
            refreshes.spawn(async move {
                if let Ok(_permit) = permits.acquire().await {
                    publish(&state, &view, &mut published, processed, &status).await;
                }
            });
        }
    }
    // The refreshes in flight finish first, so that none holds the state after the ticker.
    while refreshes.join_next().await.is_some() {}
}

/// Computes a view's answer, frames it (whole, and as a delta from the last one) with
/// `status`, and publishes it to the view's clients. The caller holds `view.computing`.
async fn publish(
    state: &Arc<AppState>,
    view: &ViewFeed,
    published: &mut Option<PublishedRows>,
    processed: u64,
    status: &Bytes,
) -> Frame {
    let seq = view.frames.borrow().as_ref().map_or(1, |f| f.seq + 1);
    let rollup = view.params.get("rollup").is_some_and(|r| r == "range");
    let (full, delta, failed) = match view_answer(state, &view.params).await.and_then(|answer| {
        let rows = row_keys(&answer, rollup)?;
        Ok((answer, rows))
    }) {
        Ok((answer, rows)) => {
            let full = serde_json::to_string(&answer).unwrap_or_default();
            let delta = published
                .as_ref()
                .map(|before| delta_json(&answer, &rows, before, seq));
            *published = Some(PublishedRows {
                rows: rows.into_iter().collect(),
            });
            (
                sse_event("kpis", Some(seq), &full),
                delta.map(|json| sse_event("kpis-delta", Some(seq), &json)),
                false,
            )
        }
        Err(error) => {
            view.failed(&error);
            *published = None;
            let json = serde_json::json!({ "error": error.to_string() }).to_string();
            (sse_event("query-error", None, &json), None, true)
        }
    };
    let frame = Frame {
        seq,
        full: Bytes::from(full),
        delta: delta.map(Bytes::from),
        status: status.clone(),
        processed_offset: processed,
        computed: Instant::now(),
        failed,
    };
    view.frames.send_replace(Some(frame.clone()));
    frame
}

/// Each row of an answer under its key (window and grouped dimensions; without the window
/// in a `rollup=range` answer, whose one window is the whole range and slides with it).
fn row_keys(answer: &KpiResponse, rollup: bool) -> Result<Vec<(String, PublishedRow)>, ApiError> {
    answer
        .rows
        .iter()
        .map(|row| {
            let internal = |e: serde_json::Error| ApiError::Internal(e.to_string());
            let mut identity = row.dimensions.clone();
            identity.remove("region_name");
            // A JSON array: no value, whatever it holds, can run into the next one.
            let window = if rollup {
                ""
            } else {
                row.window_start.as_str()
            };
            let key = serde_json::to_string(&(window, &identity)).map_err(internal)?;
            let json = serde_json::to_string(row).map_err(internal)?;
            let content = if rollup {
                serde_json::to_string(&(&row.dimensions, &row.values)).map_err(internal)?
            } else {
                json.clone()
            };
            identity.insert("window_start".into(), row.window_start.clone());
            Ok((
                key,
                PublishedRow {
                    json,
                    content,
                    identity,
                },
            ))
        })
        .collect()
}

/// What changed from `before` to `answer`: the answer's header and totals, the rows that
/// are new or changed (`upsert`), and the identities of the rows that are gone (`remove`).
/// Applied to the answer of frame `seq - 1` (`base`), it gives this answer.
fn delta_json(
    answer: &KpiResponse,
    rows: &[(String, PublishedRow)],
    before: &PublishedRows,
    seq: u64,
) -> String {
    // No `attribution`: it is fixed for the life of the server (another model needs a
    // restart and a replay, which ends every stream), so the base answer's still holds.
    #[derive(serde::Serialize)]
    struct Head<'a> {
        base: u64,
        granularity: &'a str,
        time_zone: &'a str,
        from: &'a str,
        to: &'a str,
        group_by: &'a [&'static str],
        totals: &'a KpiValues,
    }
    let head = Head {
        base: seq - 1,
        granularity: answer.granularity,
        time_zone: &answer.time_zone,
        from: &answer.from,
        to: &answer.to,
        group_by: &answer.group_by,
        totals: &answer.totals,
    };
    let mut out = serde_json::to_string(&head).unwrap_or_else(|_| "{".into());
    // Reopen the object to append the rows, already serialized.
    if out.ends_with('}') {
        out.pop();
    }
    out.push_str(",\"upsert\":[");
    let changed = rows.iter().filter(|(key, row)| {
        before
            .rows
            .get(key)
            .is_none_or(|old| old.content != row.content)
    });
    for (i, (_, row)) in changed.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&row.json);
    }
    out.push_str("],\"remove\":");
    let present: HashSet<&str> = rows.iter().map(|(key, _)| key.as_str()).collect();
    let gone: Vec<_> = before
        .rows
        .iter()
        .filter(|(key, _)| !present.contains(key.as_str()))
        .map(|(_, row)| &row.identity)
        .collect();
    out.push_str(&serde_json::to_string(&gone).unwrap_or_else(|_| "[]".into()));
    out.push('}');
    out
}

/// The `/v1/kpis` answer of a view as of now.
async fn view_answer(
    state: &Arc<AppState>,
    params: &HashMap<String, String>,
) -> Result<KpiResponse, ApiError> {
    let query = KpiQuery::parse(params, state.clock.now_ms(), &state.calendar)?;
    let state = state.clone();
    tokio::task::spawn_blocking(move || run_query(&state, &query))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
}

fn status_event(state: &AppState) -> Vec<u8> {
    sse_event(
        "status",
        None,
        &super::status::status_json(state).to_string(),
    )
}

/// One SSE event; every line of `data` becomes a `data:` line (compact JSON has none, but
/// the framing must not depend on it).
fn sse_event(name: &str, id: Option<u64>, data: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + name.len() + 40);
    if let Some(id) = id {
        out.extend_from_slice(format!("id: {id}\n").as_bytes());
    }
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
    for line in data.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.trim_end_matches('\r').as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

/// Live KPIs of one view.
#[utoipa::path(
    get,
    path = "/v1/stream",
    params(
        ("granularity" = Option<String>, Query, description = "1m, 1h or 1d"),
        ("last" = Option<String>, Query, description = "a span ending now, e.g. 60m, 24h, 30d"),
        ("group_by" = Option<String>, Query, description = "as in /v1/kpis"),
        ("deltas" = Option<bool>, Query, description = "after the first answer, send `kpis-delta` \
            events (what changed) instead of whole `kpis` answers"),
        ("status" = Option<bool>, Query, description = "send `status` events (default true)"),
        ("access_token" = Option<String>, Query, description = "API key, for EventSource"),
    ),
    responses((status = 200, description = "text/event-stream of `kpis`, `status` and \
               `query-error` events", content_type = "text/event-stream", body = String))
)]
pub async fn get_stream(
    State(state): State<Arc<AppState>>,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    let mut params = super::kpis::query_params(&uri)?;
    params.remove("access_token");
    // Per client, not part of the view: whether it takes `kpis-delta` events, and whether
    // it wants `status` events (a page needs them on one of its streams only).
    let deltas = flag(&mut params, "deltas", false)?;
    let with_status = flag(&mut params, "status", true)?;
    // Refuse a bad view now, with a 400, rather than inside the stream.
    KpiQuery::parse(&params, state.clock.now_ms(), &state.calendar)?;
    // The decoded parameters, sorted, as JSON: `&` or `=` inside a value cannot make two
    // views one.
    let sorted: BTreeMap<&String, &String> = params.iter().collect();
    let key = serde_json::to_string(&sorted).map_err(|e| ApiError::Internal(e.to_string()))?;
    let (view, mut frames) = state.stream_hub.subscribe(&state, key, params)?;
    let first = first_frame(&state, &view, &mut frames).await;
    state.stream_clients.fetch_add(1, Ordering::Relaxed);
    let guard = ClientGuard(state.clone());
    let push = move |kpis: Bytes, frame: &Frame| {
        let mut chunks = vec![kpis];
        if with_status {
            chunks.push(frame.status.clone());
        }
        futures_util::stream::iter(chunks)
    };
    let opening = futures_util::stream::iter([Bytes::from_static(RETRY)])
        .chain(push(first.full.clone(), &first));
    let client = (frames, first.seq, guard);
    let updates =
        futures_util::stream::unfold(client, move |(mut frames, sent, guard)| async move {
            let (chunks, sent) = match tokio::time::timeout(KEEP_ALIVE, frames.changed()).await {
                Ok(Ok(())) => {
                    let frame = frames.borrow_and_update().clone()?;
                    // A delta only follows the frame it was computed from; a client that
                    // skipped a frame (slow, or it arrived while connecting) gets the whole.
                    let kpis = match &frame.delta {
                        Some(delta) if deltas && frame.seq == sent + 1 => delta.clone(),
                        _ => frame.full.clone(),
                    };
                    (push(kpis, &frame), frame.seq)
                }
                // The hub closed: the server is stopping.
                Ok(Err(_)) => return None,
                Err(_) => (
                    futures_util::stream::iter(vec![Bytes::from_static(b": keep-alive\n\n")]),
                    sent,
                ),
            };
            Some((chunks, (frames, sent, guard)))
        });
    let body = opening
        .chain(updates.flatten())
        .map(Ok::<_, std::convert::Infallible>);
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Reverse proxies such as nginx must not buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// A per-client `true`/`false` parameter, taken out of the view's parameters.
fn flag(params: &mut HashMap<String, String>, name: &str, default: bool) -> Result<bool, ApiError> {
    match params.remove(name).as_deref() {
        None => Ok(default),
        Some("true") | Some("1") => Ok(true),
        Some("false") | Some("0") => Ok(false),
        Some(other) => Err(ApiError::BadRequest(format!(
            "{name}: expected true or false, got {}",
            shown_value(other)
        ))),
    }
}

/// The frame a new client starts with: the view's current one if it is recent (the ticker
/// keeps watched views fresh), else computed now, once for a burst of new clients.
async fn first_frame(
    state: &Arc<AppState>,
    view: &ViewFeed,
    frames: &mut watch::Receiver<Option<Frame>>,
) -> Frame {
    let recent = |frames: &mut watch::Receiver<Option<Frame>>| {
        frames
            .borrow_and_update()
            .as_ref()
            .filter(|f| !f.failed && f.computed.elapsed() < MAX_PUSH_GAP)
            .cloned()
    };
    if let Some(frame) = recent(frames) {
        return frame;
    }
    let mut published = view.computing.lock().await;
    if let Some(frame) = recent(frames) {
        return frame;
    }
    let processed = state.processor.processed_offset.load(Ordering::Acquire);
    let status = Bytes::from(status_event(state));
    let frame = publish(state, view, &mut published, processed, &status).await;
    frames.borrow_and_update();
    frame
}

/// Counts a client out when its stream is dropped (the client went away).
struct ClientGuard(Arc<AppState>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.stream_clients.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::super::kpis::KpiRow;
    use super::*;
    use serde_json::{Value, json};
    use vedetta_core::pipeline::kpi::KpiCounters;

    fn values(conversions: i64) -> KpiValues {
        let counters = KpiCounters {
            conversions,
            ..KpiCounters::default()
        };
        KpiValues::from_counters(&counters, None)
    }

    fn row(window_start: &str, channel: &str, conversions: i64) -> KpiRow {
        KpiRow {
            window_start: window_start.into(),
            window_end: format!("{window_start}+1m"),
            dimensions: BTreeMap::from([("channel".to_string(), channel.to_string())]),
            values: values(conversions),
        }
    }

    fn answer(rows: Vec<KpiRow>) -> KpiResponse {
        let total = rows.iter().map(|r| r.values.conversions).sum();
        KpiResponse {
            granularity: "1m",
            time_zone: "Europe/Rome".into(),
            attribution: super::super::kpis::AttributionInfo::new(
                vedetta_core::pipeline::AttributionModel::LastNonDirect,
                30 * 86_400_000,
            ),
            from: "F".into(),
            to: "T".into(),
            group_by: vec!["channel"],
            rows,
            totals: values(total),
        }
    }

    #[test]
    fn a_delta_has_the_changed_and_new_rows_and_the_identities_of_the_gone_ones() {
        let before = answer(vec![
            row("w1", "email", 1),
            row("w1", "search", 2),
            row("w2", "email", 3),
        ]);
        let before = PublishedRows {
            rows: row_keys(&before, false).unwrap().into_iter().collect(),
        };
        let now = answer(vec![
            row("w2", "email", 3),
            row("w2", "search", 1),
            row("w3", "email", 4),
        ]);
        let rows = row_keys(&now, false).unwrap();
        let delta: Value = serde_json::from_str(&delta_json(&now, &rows, &before, 8)).unwrap();
        assert_eq!(delta["base"], 7);
        assert_eq!(delta["totals"]["conversions"], 8);
        assert_eq!(delta["from"], "F");
        let upserted: Vec<_> = delta["upsert"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["window_start"].clone(),
                    r["channel"].clone(),
                    r["conversions"].clone(),
                )
            })
            .collect();
        assert_eq!(
            upserted,
            vec![
                (json!("w2"), json!("search"), json!(1)),
                (json!("w3"), json!("email"), json!(4))
            ],
            "the unchanged row (w2, email) is not sent"
        );
        let mut removed: Vec<_> = delta["remove"].as_array().unwrap().clone();
        removed.sort_by_key(|r| r["channel"].as_str().unwrap_or_default().to_string());
        assert_eq!(
            removed,
            vec![
                json!({"window_start": "w1", "channel": "email"}),
                json!({"window_start": "w1", "channel": "search"})
            ]
        );
    }

    #[test]
    fn a_rollup_row_is_unchanged_when_only_its_range_slides() {
        let mut before = answer(vec![row("F0", "email", 1), row("F0", "search", 5)]);
        for r in &mut before.rows {
            r.window_end = "T0".into();
        }
        let before = PublishedRows {
            rows: row_keys(&before, true).unwrap().into_iter().collect(),
        };
        let now = answer(vec![row("F1", "email", 2), row("F1", "search", 5)]);
        let delta: Value = serde_json::from_str(&delta_json(
            &now,
            &row_keys(&now, true).unwrap(),
            &before,
            2,
        ))
        .unwrap();
        let upserted: Vec<_> = delta["upsert"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["channel"].clone())
            .collect();
        assert_eq!(
            upserted,
            [json!("email")],
            "search only moved with the range"
        );
        assert_eq!(delta["remove"], json!([]), "a moved range is not a removal");
    }

    #[test]
    fn row_keys_cannot_run_into_each_other() {
        let grouped = |campaign: &str, channel: &str| KpiRow {
            window_start: "w1".into(),
            window_end: "w2".into(),
            dimensions: BTreeMap::from([
                ("campaign".to_string(), campaign.to_string()),
                ("channel".to_string(), channel.to_string()),
            ]),
            values: values(1),
        };
        let mut two = answer(vec![grouped("a\u{1f}b", "c"), grouped("a", "b\u{1f}c")]);
        two.group_by = vec!["campaign", "channel"];
        let keys: HashSet<String> = row_keys(&two, false)
            .unwrap()
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        assert_eq!(keys.len(), 2);
    }

    #[test]
    fn a_failed_frame_is_retried_at_the_next_push_gap_even_without_new_data() {
        let frame = |failed: bool, age: Duration| Frame {
            seq: 1,
            full: Bytes::new(),
            delta: None,
            status: Bytes::new(),
            processed_offset: 10,
            computed: Instant::now() - age,
            failed,
        };
        let gap = MIN_PUSH_GAP + Duration::from_millis(50);
        assert!(frame(true, gap).due(10));
        assert!(!frame(false, gap).due(10), "same data, not stale");
        assert!(frame(false, gap).due(11));
        assert!(!frame(true, Duration::ZERO).due(11), "never before the gap");
    }

    /// A client's value in the `deltas`/`status` flag came back whole in the 400 (a 60 KB
    /// value, 60 KB of error), where every other error cuts a client's value to 64 characters.
    #[test]
    fn a_bad_flag_value_is_cut_in_the_error_like_any_client_value() {
        let mut params = HashMap::from([("deltas".to_string(), "y".repeat(10_000))]);
        let error = flag(&mut params, "deltas", false).unwrap_err().to_string();
        assert!(
            error.starts_with("deltas: expected true or false, got \""),
            "{error}"
        );
        assert!(error.ends_with('…'), "{} characters", error.chars().count());
        assert!(
            error.chars().count() < 120,
            "{} characters",
            error.chars().count()
        );
        let mut params = HashMap::from([("status".to_string(), "nope".to_string())]);
        assert_eq!(
            flag(&mut params, "status", true).unwrap_err().to_string(),
            "status: expected true or false, got \"nope\""
        );
    }

    /// A live view whose query failed inside (a corrupt row) sent its clients the generic
    /// `query-error` and logged nothing: the failure left no trace on the server. It is
    /// logged now, once per view and distinct error (a failed view is retried at every
    /// push gap, which would flood the log), with a bounded excerpt of the view.
    #[test]
    fn an_internal_failure_of_a_live_view_is_logged_once_per_distinct_error() {
        let view = ViewFeed::new(HashMap::from([
            ("granularity".to_string(), "1m".to_string()),
            (
                "campaign".to_string(),
                format!("spring{}", "z".repeat(5_000)),
            ),
        ]));
        let corrupt = ApiError::Internal("a KPI row does not decode: unexpected end".into());
        let other = ApiError::Internal("a spend value of 3 bytes".into());
        let log = crate::server::test_support::logged(|| {
            for _ in 0..5 {
                view.failed(&corrupt);
            }
            view.failed(&other);
            view.failed(&corrupt);
            view.failed(&other);
            // The client's own mistakes are its answer's business, not the server log's.
            view.failed(&ApiError::BadRequest("last: bad span".into()));
        });
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 2, "{log}");
        assert!(lines[0].contains("WARN"), "{log}");
        assert!(lines[0].contains("a KPI row does not decode"), "{log}");
        assert!(lines[1].contains("a spend value of 3 bytes"), "{log}");
        for line in &lines {
            assert!(line.contains("granularity=\"1m\""), "{line}");
            assert!(line.contains("campaign=\"springzzz"), "{line}");
            assert!(
                line.len() < 600,
                "the view's values are cut: {} bytes",
                line.len()
            );
        }
    }

    #[test]
    fn events_are_framed_line_by_line() {
        assert_eq!(
            sse_event("kpis", Some(3), "{\"a\":1}"),
            b"id: 3\nevent: kpis\ndata: {\"a\":1}\n\n"
        );
        // A payload with line breaks still frames as one event.
        assert_eq!(
            sse_event("status", None, "one\r\ntwo\nthree"),
            b"event: status\ndata: one\ndata: two\ndata: three\n\n"
        );
    }
}
