//! The HTTP server: a thin layer over intake and the log.
//!
//! Routes:
//! - `POST /v1/events`, `POST /v1/costs`: intake ([`intake`]).
//! - `GET /v1/kpis`: windowed KPIs by channel, campaign, device, region ([`kpis`]).
//! - `GET /v1/status`: log and processing offsets, watermark, lag, counters, disk use.
//! - `GET /v1/rejected`: the quarantine of refused events, newest first.
//! - `OPTIONS /v1/events?site=KEY`: the CORS preflight of the browser tracker; a `POST` with
//!   a public site key instead of a server key is a browser's ([`site_intake`]).
//! - `GET /v1/tracker.js`: the browser tracker, no authentication.
//! - `POST /v1/sources/shopify`: Shopify's order webhooks, authenticated by their HMAC.
//! - `POST /v1/sources/{name}`: mapped ERP/middleware webhooks (`[sources.NAME]`).
//! - `GET /healthz`: liveness, no authentication.
//! - `GET /`: the live dashboard (assets embedded; no authentication for the page itself,
//!   its API calls carry the key).
//! - `GET /metrics`: Prometheus exposition.
//! - `GET /v1/stream`: live KPIs over server-sent events.
//!
//! Every `/v1` route requires `Authorization: Bearer <key>` when keys are configured;
//! without keys the server only listens on loopback (see `Config::check_exposure`).
//!
//! Connections are served by our own accept loop ([`listener`]): a cap on connections
//! (503 past it), and timeouts on request heads, idle keep-alive and unread responses;
//! intake times out stalled bodies.
//!
//! Shutdown is ordered: end the live streams, stop accepting connections, let in-flight
//! requests finish until `server.shutdown_deadline_seconds`, drop what is still open (stalled
//! uploads, unread streams), then the log writer commits what is queued and the processor
//! writes its snapshot. Nothing acknowledged is lost, nothing queued is dropped.

mod alerts;
mod auth;
mod dashboard;
mod error;
mod intake;
pub mod kpis;
mod listener;
mod metrics;
mod openapi;
mod site_intake;
mod status;
mod stream;
mod webhooks;

mod triggers;

pub use error::ApiError;

use crate::clock::SystemClock;
use crate::config::Config;
use crate::processor::{self, LogNotifier, ProcessorHandle, ProcessorOptions, ProcessorStatus};
use crate::telemetry::IntakeCounters;
use anyhow::Context;
use axum::Router;
use axum::routing::{get, post};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;
use vedetta_core::intake::IntakeLimits;
use vedetta_core::pipeline::windows::WindowCalendar;
use vedetta_core::privacy::Pseudonymizer;
use vedetta_core::time::Clock;
use vedetta_store::{EventLog, GroupCommitWriter, KpiStore, WriterConfig};

/// Everything a request handler may touch.
pub struct AppState {
    pub config: Config,
    pub log: Arc<EventLog>,
    pub writer: GroupCommitWriter,
    pub pseudonymizer: Pseudonymizer,
    /// Seals identity and stored secrets (`privacy.encryption_key`; docs/crm.md).
    pub crypto: Arc<crate::crypto::Crypto>,
    /// Where rotated OAuth2 refresh tokens are kept (CRM destinations are built with it).
    pub token_vault: Arc<crate::watch::oauth2::TokenVault>,
    /// Marketing consent and sealed identity (`email`, `crm_id`) per pseudonym.
    pub identity_store: Arc<vedetta_store::IdentityStore>,
    /// Users of trigger pushes to CRM destinations: sent and withheld.
    pub crm_push_counters: Arc<crate::watch::destinations::crm_push::CrmPushCounters>,
    pub limits: IntakeLimits,
    pub clock: Arc<dyn Clock>,
    /// Budget of body bytes being read or parsed at once, in KiB permits.
    pub body_budget: Semaphore,
    pub counters: IntakeCounters,
    pub started: Instant,
    pub kpi_store: Arc<KpiStore>,
    /// Window arithmetic for answers (window ends of stored rows).
    pub calendar: WindowCalendar,
    pub processor: Arc<ProcessorStatus>,
    /// The views watched over `/v1/stream` and their shared frames.
    pub stream_hub: stream::StreamHub,
    /// Clients connected to `/v1/stream`.
    pub stream_clients: std::sync::atomic::AtomicU64,
    pub timings: Arc<crate::telemetry::StageTimings>,
    pub query_counters: crate::telemetry::QueryCounters,
    /// The processor thread, stopped at shutdown after the writer.
    processor_handle: std::sync::Mutex<Option<ProcessorHandle>>,
    /// Alert evaluation: its status, its store, and the task (stopped at shutdown).
    pub watch_status: Arc<crate::watch::evaluation::WatchStatus>,
    /// The outbox the evaluation writes and the sender drains.
    pub outbox: vedetta_store::outbox::Outbox,
    /// What `inbox` destinations received.
    pub inbox: vedetta_store::inbox::Inbox,
    pub sender: crate::watch::sender::SenderHandle,
    /// Tells the sender to stop (at shutdown), and its task.
    sender_stop: Arc<tokio::sync::Notify>,
    sender_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    pub watch_store: Arc<vedetta_store::WatchStore>,
    /// Public site keys of the browser tracker, and their per-address rates.
    pub sites: crate::sources::sites::Sites,
    /// Deliveries of webhook sources, for `/metrics`.
    pub source_counters: SourceCounters,
    /// Mapped webhook sources with their compiled mappings (`POST /v1/sources/{name}`).
    pub mapped_sources: crate::sources::mapped::MappedSources,
    watch_handle: std::sync::Mutex<Option<crate::watch::evaluation::Watch>>,
    /// Triggers (issue 12): the consumer's status, its store, and the thread.
    pub act_status: Arc<crate::act::ActStatus>,
    pub trigger_store: vedetta_store::trigger_store::TriggerStore,
    act_handle: std::sync::Mutex<Option<crate::act::Act>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("listen", &self.config.listen)
            .finish_non_exhaustive()
    }
}

/// Deliveries of webhook sources, by source.
#[derive(Debug, Default)]
pub struct SourceCounters {
    pub shopify: crate::sources::shopify::ShopifyCounters,
}

/// Opens the data directory and builds the state and the router.
pub fn build(config: Config) -> anyhow::Result<(Router, Arc<AppState>)> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let pseudonymizer = crate::secrets::load_pseudonymizer(&config.privacy, &config.data_dir)?;
    let log_path = config.data_dir.join("log.redb");
    let (log, report) = EventLog::open(&log_path, config.ingest.quarantine_capacity)
        .with_context(|| format!("cannot open the event log {}", log_path.display()))?;
    if report.torn_batches_removed > 0 {
        tracing::warn!(
            batches = report.torn_batches_removed,
            "removed corrupt batches at the log tail"
        );
    }
    let log = Arc::new(log);
    tracing::info!(
        end_offset = log.end_offset(),
        path = %log_path.display(),
        "event log open"
    );
    let store_path = config.data_dir.join("kpis.redb");
    let kpi_store = KpiStore::open(&store_path)
        .with_context(|| format!("cannot open the KPI store {}", store_path.display()))?;
    if let Some(migration) = kpi_store.migration() {
        tracing::warn!(
            from_format = migration.from_format,
            to_format = migration.to_format,
            rows = migration.rows,
            spend_rows = migration.spend_rows,
            snapshot = migration.snapshot,
            path = %store_path.display(),
            "migrated the KPI store to the current format"
        );
    }
    let kpi_store = Arc::new(kpi_store);
    let notifier = Arc::new(LogNotifier::default());
    let writer = {
        let notifier = notifier.clone();
        GroupCommitWriter::spawn(
            log.clone(),
            WriterConfig {
                max_pending_records: config.ingest.max_pending_records,
                ..WriterConfig::default()
            },
            move |end| notifier.appended(end),
        )?
    };
    let regions = crate::geoip::load(config.pipeline.geoip_database.as_deref())?;
    let timings = Arc::new(crate::telemetry::StageTimings::default());
    // The trigger set, checked before anything runs: the processor's trigger stage runs it.
    let act_status = crate::act::ActStatus::load(&config.triggers, &SystemClock)?;
    let processor = processor::start(
        log.clone(),
        kpi_store.clone(),
        config.pipeline.rules.clone(),
        regions,
        ProcessorOptions {
            snapshot_interval: std::time::Duration::from_secs(
                config.pipeline.snapshot_interval_seconds,
            ),
            ..ProcessorOptions::default()
        },
        processor::ProcessorLinks {
            notifier,
            timings: timings.clone(),
            triggers: Some(act_status.clone()),
        },
    )?;
    let watch = {
        let timings = timings.clone();
        crate::watch::evaluation::start(
            config.alerts.clone(),
            &config.data_dir,
            crate::watch::evaluation::Sources {
                kpi_store: kpi_store.clone(),
                processor: processor.status.clone(),
                log: log.clone(),
                clock: Arc::new(SystemClock),
                e2e_latency: Box::new(move |now| timings.end_to_end_recent.quantile(now, 0.99)),
                allowed_lateness_ms: config.pipeline.rules.allowed_lateness_ms,
            },
            Box::new(|txn, notification| {
                vedetta_store::outbox::enqueue(txn, notification, notification.created_ms)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }),
        )?
    };
    // The sender drains the outbox that shares the alert store's file.
    let outbox = vedetta_store::outbox::Outbox::new(watch.store.database().clone())
        .context("opening the outbox")?;
    let inbox = vedetta_store::inbox::Inbox::new(watch.store.database().clone())
        .context("opening the inbox")?;
    // Identity and stored secrets are sealed with this key (`crate::crypto`).
    let crypto = Arc::new(crate::crypto::load(
        config.privacy.encryption_key.as_deref(),
        &config.privacy.previous_encryption_keys,
        &config.data_dir,
    )?);
    let token_vault = Arc::new(crate::watch::oauth2::TokenVault::open(
        &config.data_dir,
        crypto.clone(),
    )?);
    let identity_store = Arc::new(
        vedetta_store::IdentityStore::open(&config.data_dir.join("identity.redb"))
            .context("opening the identity store (identity.redb)")?,
    );
    let mut destinations = crate::watch::destinations::build_all_in(
        &config.alerts.destinations,
        Some(&inbox),
        Some(&token_vault),
    )?;
    // CRM destinations take trigger pushes, looking their users up in the identity store.
    let crm_push_counters =
        Arc::new(crate::watch::destinations::crm_push::CrmPushCounters::default());
    let crms =
        crate::watch::destinations::build_crm_all(&config.alerts.destinations, Some(&token_vault))?;
    for destination in &mut destinations {
        if let Some(crm) = crms.get(destination.name()) {
            *destination = Arc::new(crate::watch::destinations::crm_push::CrmPushes::new(
                crm.clone(),
                identity_store.clone(),
                crypto.clone(),
                crm_push_counters.clone(),
            ));
        }
    }
    // Triggers: the router of what the processor's trigger stage staged; its pushes share
    // the outbox's file.
    let act = crate::act::start(
        config.triggers.clone(),
        act_status,
        vedetta_store::trigger_store::TriggerStore::new(watch.store.database().clone())
            .context("opening the trigger store")?,
        crate::act::Sources {
            kpi_store: kpi_store.clone(),
            clock: Arc::new(SystemClock),
            dashboard_url: config.alerts.public_url.clone(),
        },
    )?;
    let sender_stop = Arc::new(tokio::sync::Notify::new());
    let (sender, sender_task) = if tokio::runtime::Handle::try_current().is_ok() {
        let stop = sender_stop.clone();
        let (sender, task) = crate::watch::sender::start(
            outbox.clone(),
            destinations,
            crate::watch::sender::SenderConfig::default(),
            async move { stop.notified().await },
        );
        // Each evaluation commit that enqueued something wakes the sender at once.
        let enqueued = watch.status.enqueued.clone();
        let waker = sender.clone();
        tokio::spawn(async move {
            loop {
                enqueued.notified().await;
                waker.wake();
            }
        });
        // So does each trigger flush.
        let pushed = act.status.enqueued.clone();
        let waker = sender.clone();
        tokio::spawn(async move {
            loop {
                pushed.notified().await;
                waker.wake();
            }
        });
        (sender, Some(task))
    } else {
        tracing::warn!("built outside an async runtime: notifications wait in the outbox");
        (crate::watch::sender::SenderHandle::idle(), None)
    };
    let limits = IntakeLimits {
        max_events_per_request: config.ingest.max_events_per_request,
        future_tolerance_ms: config.ingest.future_tolerance_ms,
        money: vedetta_core::intake::MoneyBound {
            max_amount: config.ingest.max_amount,
            reporting_currency: config.pipeline.rules.reporting_currency.clone(),
            currency_rates: config.pipeline.rules.currency_rates.clone(),
        },
        ..IntakeLimits::default()
    };
    let mapped_sources = crate::sources::mapped::MappedSources::load(&config.sources.mapped)?;
    let state = Arc::new(AppState {
        crypto,
        token_vault: token_vault.clone(),
        identity_store,
        crm_push_counters,
        body_budget: Semaphore::new(config.ingest.max_inflight_body_bytes / 1024),
        calendar: WindowCalendar::new(config.pipeline.rules.time_zone.clone()),
        kpi_store,
        processor: processor.status.clone(),
        stream_hub: stream::StreamHub::default(),
        stream_clients: std::sync::atomic::AtomicU64::new(0),
        timings,
        query_counters: Default::default(),
        processor_handle: std::sync::Mutex::new(Some(processor)),
        watch_status: watch.status.clone(),
        outbox,
        inbox,
        sender,
        sender_stop,
        sender_task: std::sync::Mutex::new(sender_task),
        watch_store: watch.store.clone(),
        watch_handle: std::sync::Mutex::new(Some(watch)),
        sites: crate::sources::sites::Sites::new(config.sites.clone()),
        source_counters: SourceCounters::default(),
        mapped_sources,

        act_status: act.status.clone(),
        trigger_store: act.store.clone(),
        act_handle: std::sync::Mutex::new(Some(act)),
        config,
        log,
        writer,
        pseudonymizer,
        limits,
        clock: Arc::new(SystemClock),
        counters: IntakeCounters::default(),
        started: Instant::now(),
    });
    Ok((router(state.clone()), state))
}

/// The routes, as a value (tests call it without a socket).
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route(
            "/v1/events",
            post(intake::post_events).options(site_intake::preflight),
        )
        .route("/v1/costs", post(intake::post_costs))
        .route("/v1/status", get(status::get_status))
        .route("/v1/kpis", get(kpis::get_kpis))
        .route("/v1/stream", get(stream::get_stream))
        .route("/metrics", get(metrics::get_metrics))
        .route("/v1/rejected", get(status::get_rejected))
        .route("/v1/rules", get(alerts::get_rules))
        .route("/v1/alerts", get(alerts::get_alerts))
        .route("/v1/silences", axum::routing::post(alerts::post_silence))
        .route(
            "/v1/silences/{id}",
            axum::routing::delete(alerts::delete_silence),
        )
        .route("/v1/outbox/dead", get(alerts::get_dead_letters))
        .route("/v1/triggers", get(triggers::get_triggers))
        .route("/v1/triggers/firings", get(triggers::get_firings))
        .route("/v1/inbox", get(alerts::get_inbox))
        .route(
            "/v1/outbox/dead/{seq}/retry",
            axum::routing::post(alerts::retry_dead_letter),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/", get(dashboard::index))
        .route("/assets/app.js", get(dashboard::app_js))
        .route("/assets/kpi-delta.js", get(dashboard::kpi_delta_js))
        .route("/assets/style.css", get(dashboard::style_css))
        .route("/alerts", get(dashboard::alerts_page))
        .route("/triggers", get(dashboard::triggers_page))
        .route("/assets/triggers.js", get(dashboard::triggers_js))
        .route("/assets/view.js", get(dashboard::view_js))
        .route("/assets/alerts.js", get(dashboard::alerts_js))
        .route("/assets/alerts-shared.js", get(dashboard::alerts_shared_js))
        .route("/assets/alerts-banner.js", get(dashboard::alerts_banner_js))
        .route("/docs/semantics.md", get(dashboard::semantics_md))
        .route("/v1/openapi.json", get(openapi::get_openapi))
        .route("/v1/tracker.js", get(crate::sources::tracker::get_tracker))
        // Signed by Shopify (HMAC), not by a bearer key.
        .route("/v1/sources/shopify", post(webhooks::post_shopify))
        // Mapped webhooks: a bearer token or an HMAC per source (`[sources.NAME]`).
        .route("/v1/sources/{name}", post(webhooks::post_mapped))
        .merge(api)
        .with_state(state)
}

/// Liveness: answers while the server runs. No authentication.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "ok")), security(()))]
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Serves until `shutdown` resolves, then shuts down in order.
pub async fn serve(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(std::net::SocketAddr),
) -> anyhow::Result<()> {
    config.check_exposure()?;
    let listen = config.listen;
    let retention_days = config.log.retention_days;
    let open_files = listener::raise_open_file_limit();
    let limits = listener::ConnectionLimits {
        max_connections: config
            .server
            .max_connections
            .unwrap_or_else(|| listener::default_max_connections(open_files)),
        header_timeout: config.server.header_timeout,
        idle_timeout: config.server.idle_timeout,
    };
    let shutdown_deadline = config.server.shutdown_deadline;
    let (router, state) = build(config)?;
    let socket = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let local = socket.local_addr()?;
    tracing::info!(
        max_connections = limits.max_connections,
        header_timeout_s = limits.header_timeout.as_secs(),
        idle_timeout_s = limits.idle_timeout.as_secs(),
        "connection limits"
    );
    tracing::info!(address = %local, "listening");
    on_listening(local);
    let retention = tokio::spawn(retention_loop(state.clone(), retention_days));
    let reload = tokio::spawn(reload_on_sighup(state.watch_status.clone()));
    let reload_triggers = tokio::spawn(crate::act::reload_on_sighup(state.act_status.clone()));
    // Live streams never end by themselves: close them first, or an open dashboard would
    // hold up the graceful shutdown until the deadline.
    let hub_owner = Arc::downgrade(&state);
    let shutdown = async move {
        shutdown.await;
        let deadline = tokio::time::Instant::now() + shutdown_deadline;
        tracing::info!(
            deadline_s = shutdown_deadline.as_secs(),
            "shutting down: closing live streams, then connections"
        );
        let ticker = hub_owner
            .upgrade()
            .and_then(|state| state.stream_hub.close());
        if let Some(ticker) = ticker {
            let _ = tokio::time::timeout_at(deadline, ticker).await;
        }
        deadline
    };
    let report = listener::run(socket, router, limits, shutdown).await;
    tracing::info!(
        finished = report.finished,
        dropped = report.dropped,
        "connections closed"
    );
    retention.abort();
    let _ = retention.await;
    reload.abort();
    let _ = reload.await;
    reload_triggers.abort();
    let _ = reload_triggers.await;
    // Every handler has finished. First the writer commits what is queued, then the
    // processor commits what it has processed, with a snapshot.
    let processor = state
        .processor_handle
        .lock()
        .ok()
        .and_then(|mut h| h.take());
    let watch = state.watch_handle.lock().ok().and_then(|mut h| h.take());
    let act = state.act_handle.lock().ok().and_then(|mut h| h.take());
    let sender_task = state.sender_task.lock().ok().and_then(|mut h| h.take());
    state.sender_stop.notify_one();
    match Arc::try_unwrap(state) {
        Ok(state) => state.writer.shutdown(),
        Err(_) => tracing::warn!("state still shared at shutdown; the writer stops on drop"),
    }
    if let Some(processor) = processor {
        processor.stop();
    }
    if let Some(act) = act {
        act.stop();
    }
    if let Some(watch) = watch {
        watch.stop();
    }
    // The sender stops between deliveries (what is not acknowledged stays in the outbox
    // and goes after the next start).
    if let Some(task) = sender_task {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// SIGHUP asks the alert evaluation to reload its rules file.
async fn reload_on_sighup(watch: Arc<crate::watch::evaluation::WatchStatus>) {
    #[cfg(unix)]
    {
        let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the alert rules");
            watch
                .reload
                .store(true, std::sync::atomic::Ordering::Release);
        }
    }
    #[cfg(not(unix))]
    std::future::pending::<()>().await;
}

/// Applies the retention hourly (and once at start).
async fn retention_loop(state: Arc<AppState>, retention_days: u64) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
    loop {
        tick.tick().await;
        let state = state.clone();
        let result = tokio::task::spawn_blocking(move || {
            apply_retention(&state, retention_days, state.clock.now_ms())
        })
        .await;
        match result {
            Ok(Ok((0, 0))) => {}
            Ok(Ok((records, refused))) => {
                tracing::info!(
                    records,
                    refused,
                    "retention deleted old log records and refused events"
                )
            }
            Ok(Err(e)) => tracing::error!(error = %e, "retention failed"),
            Err(e) => tracing::error!(error = %e, "retention task failed"),
        }
    }
}

/// Deletes log records older than `retention_days` (but never what the pipeline still needs
/// to recover) and quarantined refusals older than `ingest.quarantine_days`. Returns how
/// many of each were deleted.
fn apply_retention(
    state: &AppState,
    retention_days: u64,
    now_ms: i64,
) -> Result<(u64, u64), vedetta_store::LogError> {
    // Days are bounded by the config (≤ 36,500); saturating all the same, so a cutoff can
    // never wrap into the future and delete everything.
    let days_ms = |days: u64| {
        i64::try_from(days)
            .unwrap_or(i64::MAX)
            .saturating_mul(86_400_000)
    };
    let cutoff = now_ms.saturating_sub(days_ms(retention_days));
    // Records after the latest snapshot are needed to recover the pipeline.
    let keep_from = state
        .processor
        .snapshot_offset
        .load(std::sync::atomic::Ordering::Acquire);
    let records = state.log.apply_retention(cutoff, keep_from)?;
    let quarantine_cutoff = now_ms.saturating_sub(days_ms(state.config.ingest.quarantine_days));
    // An entry whose time cannot be read is older than this code: it goes too.
    let refused = state.log.trim_quarantine(|json| {
        intake::quarantined_at_ms(json).is_none_or(|at| at < quarantine_cutoff)
    })?;
    Ok((records, refused))
}

#[cfg(test)]
mod money_tests;
#[cfg(test)]
mod spend_null_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_alerts;
#[cfg(test)]
mod tests_hostile;
#[cfg(test)]
mod tests_outbox;
#[cfg(test)]
mod tests_query;
#[cfg(test)]
mod tests_sites;
