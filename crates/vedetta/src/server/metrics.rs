//! `GET /metrics`: Prometheus text exposition.
//!
//! - KPIs of the current day (the `1d` window in the configured time zone) as gauges per
//!   channel and device: `vedetta_kpi_*`. Cardinality is bounded by
//!   `metrics.max_kpi_series`, the most channels with series of their own (the channels
//!   with the most sessions today; the rest are summed under `channel="(other)"`); devices
//!   are a handful. Spend, which has no device, is per channel only, on the same channels.
//! - Intake counters: records accepted and rejected, rejections by field, refused and
//!   throttled requests.
//! - Pipeline counters: events, duplicates (exact, near), flagged, late (per granularity);
//!   offsets, lag, watermark, users held in state.
//! - Latency histograms per stage, and end to end (acknowledged → counted).
//!
//! Behind the API key like the rest of the API when keys are configured (revenue per channel
//! is business data): give Prometheus the key with `authorization: { credentials: … }` in
//! its scrape config (see `deploy/prometheus/prometheus.yml`).

use super::kpis::{Dimension, KpiQuery, KpiResponse, run_query};
use super::{ApiError, AppState};
use crate::telemetry::{Exposition, IntakeCounters, METRICS_SCRAPE_ERRORS_TOTAL};
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use vedetta_core::pipeline::windows::Granularity;

pub async fn get_metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let text = tokio::task::spawn_blocking(move || render(&state))
        .await
        .unwrap_or_else(|e| format!("# metrics failed: {e}\n"));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

/// Alert states per rule, and how evaluation keeps up.
fn alerts(state: &AppState, out: &mut Exposition) {
    use vedetta_core::watch::evaluate::Phase;
    let w = &state.watch_status;
    let rules = w
        .rules
        .read()
        .map(|r| r.clone())
        .unwrap_or_else(|e| e.into_inner().clone());
    let alerts = w
        .alerts
        .read()
        .map(|a| a.clone())
        .unwrap_or_else(|e| e.into_inner().clone());
    out.family(
        "vedetta_alerts",
        "gauge",
        "Alerts (rule × group) pending or firing, by rule; every rule in force has both series.",
    );
    for rule in &rules.rules {
        for (phase, name) in [(Phase::Firing, "firing"), (Phase::Pending, "pending")] {
            let n = alerts
                .iter()
                .filter(|((r, _), a)| *r == rule.name && a.phase == phase)
                .count();
            out.sample(
                "vedetta_alerts",
                &[("state", name), ("rule", rule.name.as_str())],
                n as f64,
            );
        }
    }
    let counters = [
        (
            "vedetta_alert_minutes_evaluated_total",
            "Minutes of event time judged against the alert rules.",
            w.minutes_evaluated.load(Ordering::Relaxed),
        ),
        (
            "vedetta_alert_minutes_skipped_total",
            "Minutes not judged because they were further behind the watermark than alerts.max_catch_up.",
            w.minutes_skipped.load(Ordering::Relaxed),
        ),
        (
            "vedetta_alert_evaluation_failures_total",
            "Evaluation steps that failed (retried from the stored state).",
            w.failures.load(Ordering::Relaxed),
        ),
        (
            "vedetta_notifications_created_total",
            "Notifications written to the outbox.",
            w.notifications_created.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, value) in counters {
        out.family(name, "counter", help);
        out.sample(name, &[], value as f64);
    }
    out.family(
        "vedetta_alert_evaluation_seconds",
        "gauge",
        "How long the last minute took to judge, reading the KPI store included.",
    );
    out.sample(
        "vedetta_alert_evaluation_seconds",
        &[],
        w.last_minute_micros.load(Ordering::Relaxed) as f64 / 1e6,
    );
    // Per destination queue: bounded by DEPTH_CAP entries counted per destination. A store
    // that cannot be read leaves out the labelled samples (the totals stay) and says so.
    let per_destination = match state.outbox.destination_stats(super::triggers::DEPTH_CAP) {
        Ok(stats) => stats,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the outbox's destination queues for /metrics");
            Vec::new()
        }
    };
    state
        .sender
        .metrics
        .expose(out, state.clock.now_ms(), &per_destination);
    let through = w.evaluated_through_ms.load(Ordering::Acquire);
    if let (Some(watermark), true) = (state.processor.watermark(), through != i64::MIN) {
        out.family(
            "vedetta_alert_evaluation_lag_seconds",
            "gauge",
            "Event time between the watermark and the end of the last minute judged.",
        );
        out.sample(
            "vedetta_alert_evaluation_lag_seconds",
            &[],
            (watermark - through).max(0) as f64 / 1e3,
        );
    }
}

fn render(state: &AppState) -> String {
    let mut out = Exposition::default();
    kpi_gauges(state, &mut out, |query| run_query(state, query));
    out.family(
        METRICS_SCRAPE_ERRORS_TOTAL,
        "counter",
        "Scrapes whose KPI query failed: they carried no vedetta_kpi_* gauges (see the log).",
    );
    out.sample(
        METRICS_SCRAPE_ERRORS_TOTAL,
        &[],
        state
            .query_counters
            .metrics_scrape_errors
            .load(Ordering::Relaxed) as f64,
    );
    intake(state, &mut out);
    pipeline(state, &mut out);
    alerts(state, &mut out);
    state.act_status.expose(&mut out);
    trigger_deliveries(state, &mut out);
    let t = &state.timings;
    out.family(
        "vedetta_stage_duration_seconds",
        "histogram",
        "Time spent per stage: intake requests, processor micro-batches, KPI store commits.",
    );
    t.intake_request.expose(
        &mut out,
        "vedetta_stage_duration_seconds",
        &[("stage", "intake_request")],
    );
    t.processor_batch.expose(
        &mut out,
        "vedetta_stage_duration_seconds",
        &[("stage", "processor_batch")],
    );
    t.store_commit.expose(
        &mut out,
        "vedetta_stage_duration_seconds",
        &[("stage", "store_commit")],
    );
    out.family(
        "vedetta_end_to_end_latency_seconds",
        "histogram",
        "From a record's acknowledgement to its KPIs being queryable, per record.",
    );
    t.end_to_end
        .expose(&mut out, "vedetta_end_to_end_latency_seconds", &[]);
    out.family(
        "vedetta_stream_clients",
        "gauge",
        "Clients connected to /v1/stream.",
    );
    out.sample(
        "vedetta_stream_clients",
        &[],
        state.stream_clients.load(Ordering::Relaxed) as f64,
    );
    out.into_string()
}

/// Today's KPIs per (channel, device), bounded. `run` answers a query (the store; a test
/// passes one that fails). When a query fails the gauges are left out of this scrape, and
/// the failure is logged and counted rather than hidden.
pub(super) fn kpi_gauges(
    state: &AppState,
    out: &mut Exposition,
    run: impl Fn(&KpiQuery) -> Result<KpiResponse, ApiError>,
) {
    let failed = |error: ApiError| {
        state
            .query_counters
            .metrics_scrape_errors
            .fetch_add(1, Ordering::Relaxed);
        let detail = match &error {
            ApiError::Internal(detail) => detail.clone(),
            other => other.to_string(),
        };
        tracing::error!(%detail, "/metrics: the KPI query failed; this scrape has no KPI gauges");
    };
    let now = state.clock.now_ms();
    let mut calendar = state.calendar.clone();
    let today = calendar.window(Granularity::Day, now);
    let query = |group_by: Vec<Dimension>| KpiQuery {
        granularity: Granularity::Day,
        from: today.start,
        to: today.start + 1,
        group_by,
        filters: BTreeMap::new(),
        rollup_range: true,
    };
    let rows = match run(&query(vec![Dimension::Channel, Dimension::Device])) {
        Ok(rows) => rows,
        Err(error) => return failed(error),
    };
    // The channels with the most sessions keep their own series (every device of them);
    // the others are summed under `(other)`. Spend uses the same channels, so a channel's
    // conversions and spend are always in the same series.
    let max_channels = state.config.metrics.max_kpi_series;
    let mut sessions_by_channel: HashMap<&str, i64> = HashMap::new();
    for row in &rows.rows {
        let channel = row.dimensions.get("channel").map_or("", String::as_str);
        *sessions_by_channel.entry(channel).or_default() += row.values.sessions;
    }
    let mut ranked: Vec<(&str, i64)> = sessions_by_channel.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let kept: std::collections::HashSet<String> = ranked
        .iter()
        .take(max_channels)
        .map(|(c, _)| (*c).to_string())
        .collect();
    let series_channel = |channel: &str| -> String {
        if kept.contains(channel) {
            channel.to_string()
        } else {
            "(other)".to_string()
        }
    };
    let mut series: BTreeMap<(String, String), [f64; 10]> = BTreeMap::new();
    for row in &rows.rows {
        let channel = row.dimensions.get("channel").cloned().unwrap_or_default();
        let device = row.dimensions.get("device").cloned().unwrap_or_default();
        let key = (series_channel(&channel), device);
        let v = &row.values;
        let entry = series.entry(key).or_default();
        for (slot, value) in entry.iter_mut().zip([
            v.sessions as f64,
            v.converting_sessions as f64,
            v.conversions as f64,
            v.revenue,
            v.flagged as f64,
            v.duplicates as f64,
            v.late as f64,
            v.events
                .values()
                .fold(0i64, |sum, n| sum.saturating_add(*n)) as f64,
            v.refunds as f64,
            v.refunded,
        ]) {
            *slot += value;
        }
    }
    let names = [
        ("vedetta_kpi_sessions", "Sessions started today."),
        (
            "vedetta_kpi_converting_sessions",
            "Sessions started today with a clean conversion.",
        ),
        ("vedetta_kpi_conversions", "Clean conversions today."),
        (
            "vedetta_kpi_revenue",
            "Revenue of today's clean conversions, reporting currency.",
        ),
        (
            "vedetta_kpi_flagged",
            "Events flagged by sequence rules today.",
        ),
        ("vedetta_kpi_duplicates", "Duplicate events dropped today."),
        (
            "vedetta_kpi_late",
            "Events that arrived after their day window had closed.",
        ),
        ("vedetta_kpi_events", "Accepted events today."),
        (
            "vedetta_kpi_refunds",
            "Refunds of today's clean conversions (counted in the order's day).",
        ),
        (
            "vedetta_kpi_refunded",
            "Money refunded on today's clean conversions, reporting currency.",
        ),
    ];
    for (i, (name, help)) in names.iter().enumerate() {
        out.family(name, "gauge", help);
        for ((channel, device), values) in &series {
            out.sample(name, &[("channel", channel), ("device", device)], values[i]);
        }
    }
    // Spend has no device: per channel, bounded the same way.
    let spend = match run(&query(vec![Dimension::Channel])) {
        Ok(spend) => spend,
        Err(error) => return failed(error),
    };
    {
        out.family(
            "vedetta_kpi_spend",
            "gauge",
            "Ad spend today, reporting currency, per channel.",
        );
        // A channel with no spend records today has no spend series (rather than a 0):
        // unknown spend is not zero spend, and Grafana's CPA for it is then empty too.
        let mut by_channel: HashMap<String, f64> = HashMap::new();
        for row in &spend.rows {
            let Some(amount) = row.values.spend else {
                continue;
            };
            let channel = row.dimensions.get("channel").cloned().unwrap_or_default();
            *by_channel.entry(series_channel(&channel)).or_default() += amount;
        }
        let mut channels: Vec<_> = by_channel.into_iter().collect();
        channels.sort_by(|a, b| a.0.cmp(&b.0));
        for (channel, spend) in channels {
            out.sample("vedetta_kpi_spend", &[("channel", &channel)], spend);
        }
    }
}

fn intake(state: &AppState, out: &mut Exposition) {
    let c = &state.counters;
    out.family(
        "vedetta_intake_records_total",
        "counter",
        "Records judged at intake, by endpoint and outcome.",
    );
    for (endpoint, outcome, counter) in [
        ("events", "accepted", &c.events_accepted),
        ("events", "rejected", &c.events_rejected),
        ("costs", "accepted", &c.costs_accepted),
        ("costs", "rejected", &c.costs_rejected),
    ] {
        out.sample(
            "vedetta_intake_records_total",
            &[("endpoint", endpoint), ("outcome", outcome)],
            IntakeCounters::get(counter) as f64,
        );
    }
    out.family(
        "vedetta_intake_rejected_total",
        "counter",
        "Rejected records by the field at fault ((syntax) for malformed JSON).",
    );
    for (field, count) in c.rejected_by_field() {
        out.sample(
            "vedetta_intake_rejected_total",
            &[("field", field)],
            count as f64,
        );
    }
    out.family(
        "vedetta_intake_requests_refused_total",
        "counter",
        "Requests refused whole, by HTTP status.",
    );
    for (status, count) in c.requests_refused() {
        out.sample(
            "vedetta_intake_requests_refused_total",
            &[("status", &status.to_string())],
            count as f64,
        );
    }
    // Named once: the family and its samples (Shopify and every mapped source).
    const SOURCE_WEBHOOKS: &str = "vedetta_source_webhooks_total";
    out.family(
        SOURCE_WEBHOOKS,
        "counter",
        "Webhook deliveries of sources, by source and outcome.",
    );
    for (outcome, count) in state.source_counters.shopify.snapshot() {
        out.sample(
            SOURCE_WEBHOOKS,
            &[("source", "shopify"), ("outcome", outcome)],
            count as f64,
        );
    }
    for (source, counters) in state.mapped_sources.iter() {
        for (outcome, count) in counters.snapshot() {
            out.sample(
                SOURCE_WEBHOOKS,
                &[("source", source), ("outcome", outcome)],
                count as f64,
            );
        }
    }
    out.family(
        "vedetta_intake_requests_throttled_total",
        "counter",
        "Requests answered 503 at a backpressure bound.",
    );
    out.sample(
        "vedetta_intake_requests_throttled_total",
        &[],
        IntakeCounters::get(&c.requests_throttled) as f64,
    );
    // Counts only: no identity, no pseudonym, ever reaches a label.
    out.family(
        "vedetta_identities_total",
        "counter",
        "Identity claims (email, crm_id) at intake, by outcome: stored with marketing \
         consent, dropped without it, deleted when consent was withdrawn.",
    );
    for (outcome, counter) in [
        ("stored", &c.identities_stored),
        ("dropped_no_consent", &c.identities_dropped_no_consent),
        ("deleted", &c.identities_deleted),
    ] {
        out.sample(
            "vedetta_identities_total",
            &[("outcome", outcome)],
            IntakeCounters::get(counter) as f64,
        );
    }
    out.family(
        "vedetta_crm_push_users_total",
        "counter",
        "Users of trigger pushes delivered to CRM destinations, once per delivered push: \
         sent, or withheld (no marketing consent, no stored identity, a sealed identity \
         that does not open).",
    );
    for (outcome, count) in state.crm_push_counters.snapshot() {
        out.sample(
            "vedetta_crm_push_users_total",
            &[("outcome", outcome)],
            count as f64,
        );
    }
    out.family(
        "vedetta_crm_push_attempts_total",
        "counter",
        "Delivery attempts of trigger pushes to CRM destinations, by result (delivered, \
         failed: each retry counts).",
    );
    for (result, count) in state.crm_push_counters.attempts() {
        out.sample(
            "vedetta_crm_push_attempts_total",
            &[("result", result)],
            count as f64,
        );
    }
}

fn pipeline(state: &AppState, out: &mut Exposition) {
    let log = state.log.stats();
    let p = &state.processor;
    let processed = p.processed_offset.load(Ordering::Acquire);
    let gauges = [
        (
            "vedetta_log_end_offset",
            "Records appended to the log so far.",
            log.end_offset as f64,
        ),
        (
            "vedetta_log_disk_bytes",
            "Size of the log file.",
            log.disk_bytes as f64,
        ),
        (
            "vedetta_processed_offset",
            "Records processed and committed to the KPIs.",
            processed as f64,
        ),
        (
            "vedetta_lag_events",
            "Records in the log not yet in the KPIs.",
            log.end_offset.saturating_sub(processed) as f64,
        ),
        (
            "vedetta_active_users",
            "Users whose sessions the pipeline holds in memory.",
            p.active_users.load(Ordering::Relaxed) as f64,
        ),
        (
            "vedetta_remembered_orders",
            "Order ids of accepted conversions held for order dedup (7 days by default).",
            p.remembered_orders.load(Ordering::Relaxed) as f64,
        ),
        (
            "vedetta_attribution_memories",
            "Users idle past the lateness whose last source is kept for attribution, in the store.",
            p.stored_memories.load(Ordering::Relaxed) as f64,
        ),
        (
            "vedetta_attribution_memories_pending",
            "Attribution memories of dropped users held in memory until the next snapshot.",
            p.dormant_users.load(Ordering::Relaxed) as f64,
        ),
    ];
    for (name, help, value) in gauges {
        out.family(name, "gauge", help);
        out.sample(name, &[], value);
    }
    let writer = state.writer.counters();
    let failures = [
        (
            "vedetta_processor_commit_failures_total",
            "Processor batches whose store commit failed (each redone from the snapshot and the log).",
            p.commit_failures.load(Ordering::Relaxed),
        ),
        (
            "vedetta_processor_storage_full_failures_total",
            "Processor commits or recoveries that failed on a full disk.",
            p.storage_full_failures.load(Ordering::Relaxed),
        ),
        (
            "vedetta_log_commit_failures_total",
            "Log group commits that failed (their requests were refused, nothing stored).",
            writer.failures.load(Ordering::Relaxed),
        ),
        (
            "vedetta_log_storage_full_failures_total",
            "Log group commits that failed on a full disk (answered 507).",
            writer.storage_full_failures.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, value) in failures {
        out.family(name, "counter", help);
        out.sample(name, &[], value as f64);
    }
    let failing = p.last_error.lock().map_or(true, |e| e.is_some());
    out.family(
        "vedetta_processor_failing",
        "gauge",
        "1 while the processor is stopped by an error (see /v1/status processor_error), else 0.",
    );
    out.sample(
        "vedetta_processor_failing",
        &[],
        f64::from(u8::from(failing)),
    );
    if let Some(watermark) = p.watermark() {
        out.family(
            "vedetta_watermark_seconds",
            "gauge",
            "The pipeline's watermark, epoch seconds.",
        );
        out.sample("vedetta_watermark_seconds", &[], watermark as f64 / 1000.0);
    }
    let Ok(counters) = p.counters.lock().map(|c| c.clone()) else {
        return;
    };
    out.family(
        "vedetta_pipeline_events_total",
        "counter",
        "Funnel events processed.",
    );
    out.sample("vedetta_pipeline_events_total", &[], counters.events as f64);
    out.family(
        "vedetta_pipeline_duplicates_total",
        "counter",
        "Events dropped as duplicates: exact (event_id), near (same user and type < 100 ms) or order (a conversion repeating an order_id).",
    );
    out.sample(
        "vedetta_pipeline_duplicates_total",
        &[("kind", "exact")],
        counters.exact_duplicates as f64,
    );
    out.sample(
        "vedetta_pipeline_duplicates_total",
        &[("kind", "near")],
        counters.near_duplicates as f64,
    );
    out.sample(
        "vedetta_pipeline_duplicates_total",
        &[("kind", "order")],
        counters.order_duplicates as f64,
    );
    out.family(
        "vedetta_pipeline_flagged_total",
        "counter",
        "Events flagged by sequence rules.",
    );
    out.sample(
        "vedetta_pipeline_flagged_total",
        &[],
        counters.flagged as f64,
    );
    out.family(
        "vedetta_pipeline_late_total",
        "counter",
        "Events that arrived after their window closed, per granularity.",
    );
    for (granularity, late) in Granularity::ALL.iter().zip(counters.late) {
        out.sample(
            "vedetta_pipeline_late_total",
            &[("granularity", granularity.as_str())],
            late as f64,
        );
    }
    out.family(
        "vedetta_pipeline_refunds_total",
        "counter",
        "Refunds processed, by outcome: matched (taken off their order's revenue), waiting (for their order), unmatched (the order never came: no KPI changed), uncounted (the order was flagged: no KPI changed).",
    );
    let waiting = counters.refunds.saturating_sub(
        counters.refunds_matched + counters.refunds_unmatched + counters.refunds_uncounted,
    );
    for (outcome, n) in [
        ("matched", counters.refunds_matched),
        ("waiting", waiting),
        ("unmatched", counters.refunds_unmatched),
        ("uncounted", counters.refunds_uncounted),
    ] {
        out.sample(
            "vedetta_pipeline_refunds_total",
            &[("outcome", outcome)],
            n as f64,
        );
    }
    out.family(
        "vedetta_pipeline_refund_excess_total",
        "counter",
        "Money refunds asked beyond their order's remaining value (clamped away), reporting currency.",
    );
    out.sample(
        "vedetta_pipeline_refund_excess_total",
        &[],
        counters.refund_excess_micros as f64 / 1e6,
    );
    out.family(
        "vedetta_pipeline_spend_records_total",
        "counter",
        "Spend records processed.",
    );
    out.sample(
        "vedetta_pipeline_spend_records_total",
        &[],
        counters.spend_records as f64,
    );
    out.family(
        "vedetta_pipeline_unpriced_values_total",
        "counter",
        "Event values and spend amounts in a currency without a rate in pipeline.currency_rates: a value counts as 0 revenue, a spend record is left out.",
    );
    out.sample(
        "vedetta_pipeline_unpriced_values_total",
        &[],
        counters.unpriced_values as f64,
    );
}

/// Per trigger in force and destination it notifies: delivered requests, failed delivery
/// attempts and dead letters of its pushes, as stored by the trigger store (kept across
/// restarts; deliveries and attempts apart, so retries never inflate deliveries).
fn trigger_deliveries(state: &AppState, out: &mut Exposition) {
    let stats = match state.trigger_store.delivery_stats() {
        Ok(stats) => stats,
        Err(e) => {
            tracing::warn!(error = %e, "the trigger delivery numbers could not be read");
            return;
        }
    };
    let triggers = state
        .act_status
        .triggers
        .read()
        .map(|t| t.clone())
        .unwrap_or_else(|e| e.into_inner().clone());
    type Family = (
        &'static str,
        &'static str,
        fn(&vedetta_store::trigger_store::DeliveryStats) -> u64,
    );
    let families: [Family; 3] = [
        (
            "vedetta_trigger_deliveries_total",
            "Requests of a trigger's pushes a destination took (dry runs included), kept across restarts.",
            |s| s.delivered,
        ),
        (
            "vedetta_trigger_delivery_failures_total",
            "Failed delivery attempts of a trigger's pushes at a destination (each retry counts), kept across restarts.",
            |s| s.failed_attempts,
        ),
        (
            "vedetta_trigger_dead_letters_total",
            "Requests of a trigger's pushes a destination dead-lettered, kept across restarts.",
            |s| s.dead,
        ),
    ];
    for (name, help, value) in families {
        out.family(name, "counter", help);
        for t in triggers.iter() {
            for d in &t.notify {
                let n = stats.get(&(t.name.clone(), d.clone())).map_or(0, value);
                out.sample(
                    name,
                    &[("trigger", t.name.as_str()), ("destination", d.as_str())],
                    n as f64,
                );
            }
        }
    }
}
