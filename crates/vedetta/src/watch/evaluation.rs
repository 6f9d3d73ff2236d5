//! The evaluation task: judges the rules as the watermark passes each minute, and commits
//! what changed — alert state, history, notifications — to the alert store in one step.
//!
//! One thread, a loop:
//!
//! ```text
//! watermark W ─► every minute end m ≤ W not yet judged (at most `max_catch_up` behind)
//!   ─► read the 1-minute KPI rows of [m − longest window, m) from the KPI store
//!   ─► Evaluator::evaluate_minute ─► notices ─► silences, inhibitions ─► Dispatcher
//!   ─► one commit: state + history + due notifications into the outbox
//! ```
//!
//! It watches the watermark (an atomic read every 5 ms): a minute is judged within
//! milliseconds of the commit that passes its end. Between minutes, the dispatcher's wall-clock timers (group wait,
//! interval, repeat) are checked on the same tick. The rules file is reloaded when its
//! modification time changes or on SIGHUP; a file that does not check keeps the old rules
//! running, and the error (naming the rule and the key) is logged and shown at `/v1/rules`.

use super::config::{AlertsConfig, RuleSet};
use crate::processor::ProcessorStatus;
use anyhow::Context;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};
use vedetta_core::pipeline::windows::Granularity;
use vedetta_core::time::Clock;
use vedetta_core::watch::evaluate::{
    ActiveAlert, AlertKey, Evaluator, History, MinuteRow, SpendMinute, SystemValues, WindowData,
    group_totals, measured_value,
};
use vedetta_core::watch::notification::AlertStatus;
use vedetta_core::watch::rules::Rule;
use vedetta_store::{EventLog, HistoryEntry, KpiStore, WatchState, WatchStore};

const MINUTE: i64 = 60_000;

/// Puts a notification in the outbox, inside the alert store's transaction.
pub type EnqueueFn = vedetta_store::watch_store::Enqueue<'static>;
const WEEK: i64 = 7 * 86_400_000;

/// What the API and `/metrics` read of the evaluation.
#[derive(Debug, Default)]
pub struct WatchStatus {
    pub rules: RwLock<Arc<RuleSet>>,
    pub rules_loaded_at_ms: AtomicI64,
    /// Why the last reload failed (the old rules stay in force), until one succeeds.
    pub reload_error: Mutex<Option<String>>,
    /// Pending and firing alerts after the last commit.
    pub alerts: RwLock<Vec<(AlertKey, ActiveAlert)>>,
    /// End of the last minute judged (epoch ms; `i64::MIN` before the first).
    pub evaluated_through_ms: AtomicI64,
    pub minutes_evaluated: AtomicU64,
    pub minutes_skipped: AtomicU64,
    pub notifications_created: AtomicU64,
    /// Microseconds the last minute took to judge (reading included).
    pub last_minute_micros: AtomicU64,
    pub failures: AtomicU64,
    /// Set by SIGHUP: reload the rules file.
    pub reload: AtomicBool,
    /// Woken after a commit that put notifications in the outbox.
    pub enqueued: Arc<tokio::sync::Notify>,
}

/// The running task.
pub struct Watch {
    pub status: Arc<WatchStatus>,
    pub store: Arc<WatchStore>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

impl Watch {
    /// Stops the task after the step in progress.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What the task reads from the rest of the server.
pub struct Sources {
    pub kpi_store: Arc<KpiStore>,
    pub processor: Arc<ProcessorStatus>,
    pub log: Arc<EventLog>,
    pub clock: Arc<dyn Clock>,
    /// Seconds from intake to KPIs, p99 of the last minutes.
    pub e2e_latency: Box<dyn Fn(i64) -> Option<f64> + Send>,
    /// The pipeline's allowed lateness: a judged minute is final this long after.
    pub allowed_lateness_ms: i64,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources").finish_non_exhaustive()
    }
}

/// Opens `watch.redb` in the data directory and starts the task.
pub fn start(
    config: AlertsConfig,
    data_dir: &std::path::Path,
    sources: Sources,
    enqueue: Box<EnqueueFn>,
) -> anyhow::Result<Watch> {
    let path = data_dir.join("watch.redb");
    let (store, state) = WatchStore::open(&path)
        .with_context(|| format!("cannot open the alert store {}", path.display()))?;
    let store = Arc::new(store);
    let rules = config
        .load_rules()
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("the alert rules")?;
    let status = Arc::new(WatchStatus::default());
    status.evaluated_through_ms.store(
        state.evaluated_through_ms.unwrap_or(i64::MIN),
        Ordering::Relaxed,
    );
    *status.alerts.write().unwrap_or_else(|e| e.into_inner()) = state.alerts.clone();
    status
        .rules_loaded_at_ms
        .store(sources.clock.now_ms(), Ordering::Relaxed);
    let stop = Arc::new(AtomicBool::new(false));
    let mut task = Task {
        evaluator: Evaluator::new(rules.rules.clone(), state.alerts.iter().cloned()),
        state,
        rules: Arc::new(rules),
        rules_modified: modified(config.rules_file.as_ref()),
        config,
        store: store.clone(),
        status: status.clone(),
        sources,
        enqueue,
        system_judged_at: i64::MIN,
    };
    *status.rules.write().unwrap_or_else(|e| e.into_inner()) = task.rules.clone();
    let thread = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("watch".into())
            .spawn(move || task.run(&stop))?
    };
    Ok(Watch {
        status,
        store,
        stop,
        thread: Some(thread),
    })
}

fn modified(path: Option<&PathBuf>) -> Option<SystemTime> {
    std::fs::metadata(path?).and_then(|m| m.modified()).ok()
}

struct Task {
    config: AlertsConfig,
    rules: Arc<RuleSet>,
    rules_modified: Option<SystemTime>,
    evaluator: Evaluator,
    state: WatchState,
    store: Arc<WatchStore>,
    status: Arc<WatchStatus>,
    sources: Sources,
    enqueue: Box<EnqueueFn>,
    /// The wall-clock minute the system rules were last judged at.
    system_judged_at: i64,
}

impl Task {
    fn run(&mut self, stop: &AtomicBool) {
        let mut pause = Duration::from_millis(100);
        // After a failed step the state in memory may be ahead of the store's: nothing is
        // evaluated until it is read back (the store may still be reopening after a full
        // disk; a step from the state in memory would skip what the failed one lost).
        let mut stale = false;
        while !stop.load(Ordering::Acquire) {
            if stale {
                stale = !self.reload_state();
            }
            if !stale {
                self.maybe_reload();
                match self.step() {
                    Ok(()) => {
                        pause = Duration::from_millis(100);
                        self.wait_for_work(pause, stop);
                        continue;
                    }
                    Err(error) => {
                        self.status.failures.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(error = %format!("{error:#}"), "alert evaluation failed; retrying");
                        stale = !self.reload_state();
                    }
                }
            }
            pause = (pause * 2).min(Duration::from_secs(10));
            std::thread::sleep(pause);
        }
    }

    /// Reads the state back from the store, which is where it was before a failed step;
    /// whether it could.
    fn reload_state(&mut self) -> bool {
        match self.store.state() {
            Ok(state) => {
                self.evaluator =
                    Evaluator::new(self.rules.rules.clone(), state.alerts.iter().cloned());
                self.state = state;
                true
            }
            Err(error) => {
                tracing::warn!(%error, "the alert state could not be read back; retrying");
                false
            }
        }
    }

    /// Waits up to `most`, but not past the watermark crossing a minute end that is not
    /// judged yet: an atomic read every 5 ms, so a minute is judged within milliseconds
    /// of the commit that passed it (the reload check and the wall-clock timers keep the
    /// 100 ms pace).
    fn wait_for_work(&self, most: Duration, stop: &AtomicBool) {
        let deadline = Instant::now() + most;
        while Instant::now() < deadline && !stop.load(Ordering::Acquire) {
            let due = self.sources.processor.watermark().is_some_and(|w| {
                let last_end = w.div_euclid(MINUTE) * MINUTE;
                self.state.evaluated_through_ms.is_none_or(|t| last_end > t)
            });
            if due {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn maybe_reload(&mut self) {
        let changed = modified(self.config.rules_file.as_ref());
        let asked = self.status.reload.swap(false, Ordering::AcqRel);
        if !asked && changed == self.rules_modified {
            return;
        }
        self.rules_modified = changed;
        match self.config.load_rules() {
            Ok(rules) => {
                let gone = self.evaluator.set_rules(rules.rules.clone());
                self.rules = Arc::new(rules);
                *self.status.rules.write().unwrap_or_else(|e| e.into_inner()) = self.rules.clone();
                *self
                    .status
                    .reload_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = None;
                self.status
                    .rules_loaded_at_ms
                    .store(self.sources.clock.now_ms(), Ordering::Relaxed);
                tracing::info!(
                    rules = self.rules.rules.len(),
                    dropped_alerts = gone.len(),
                    "alert rules reloaded"
                );
            }
            Err(error) => {
                tracing::error!(%error, "the alert rules did not reload; the previous ones stay in force");
                *self
                    .status
                    .reload_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(error);
            }
        }
    }

    /// Judges every minute the watermark has passed, then the dispatcher's timers.
    fn step(&mut self) -> anyhow::Result<()> {
        if let Some(watermark) = self.sources.processor.watermark() {
            let last_end = watermark.div_euclid(MINUTE) * MINUTE;
            let oldest = last_end - self.config.max_catch_up_ms;
            // The first time, from as far back as a catch-up goes: the watermark may have
            // passed several minute ends before this first step (a burst of traffic, a
            // server killed before its first commit), and each of them is judged.
            let mut next = self
                .state
                .evaluated_through_ms
                .map_or(oldest, |t| t + MINUTE);
            if next < oldest {
                // Alerts about data this old would come too late to act on.
                let skipped = (oldest - next) / MINUTE;
                self.status
                    .minutes_skipped
                    .fetch_add(skipped as u64, Ordering::Relaxed);
                tracing::info!(
                    skipped,
                    "alert evaluation skips minutes older than alerts.max_catch_up"
                );
                next = oldest;
            }
            while next <= last_end {
                self.evaluate(next)?;
                next += MINUTE;
            }
        }
        let now = self.sources.clock.now_ms();
        let wall_minute = now.div_euclid(MINUTE) * MINUTE;
        if self.evaluator.has_system_rules() && self.system_judged_at < wall_minute {
            self.system_judged_at = wall_minute;
            self.evaluate_system(wall_minute)?;
        }
        if self
            .state
            .dispatcher
            .next_due_ms(&self.rules.rules)
            .is_some_and(|due| due <= now)
        {
            let notifications =
                self.state
                    .dispatcher
                    .due(&self.rules.rules, now, &self.config.public_url);
            self.commit(&[], &notifications)?;
        }
        Ok(())
    }

    fn evaluate(&mut self, minute_end: i64) -> anyhow::Result<()> {
        let started = Instant::now();
        let data = self.read_window(minute_end - self.evaluator.max_window_ms(), minute_end)?;
        let mut history = StoreHistory::new(&self.sources.kpi_store);
        let outcome = self
            .evaluator
            .evaluate_minute(minute_end, &data, &mut history);
        if let Some(e) = history.error {
            return Err(e.context("reading history for absence or anomaly rules"));
        }
        let mut history = self.record(&outcome, minute_end)?;
        let now = self.sources.clock.now_ms();
        history.extend(self.revisions(minute_end, now)?);
        let notifications =
            self.state
                .dispatcher
                .due(&self.rules.rules, now, &self.config.public_url);
        self.state.evaluated_through_ms = Some(minute_end);
        self.commit(&history, &notifications)?;
        self.status
            .minutes_evaluated
            .fetch_add(1, Ordering::Relaxed);
        self.status
            .last_minute_micros
            .store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// The pipeline's own health, now.
    fn system_values(&self) -> SystemValues {
        SystemValues {
            lag_events: Some(
                self.sources.log.end_offset().saturating_sub(
                    self.sources
                        .processor
                        .processed_offset
                        .load(Ordering::Acquire),
                ) as f64,
            ),
            e2e_latency_seconds: (self.sources.e2e_latency)(self.sources.clock.now_ms()),
        }
    }

    /// Judges the system rules at a wall-clock minute (a stalled pipeline stops the
    /// watermark, and these rules are how one hears of it).
    fn evaluate_system(&mut self, at_ms: i64) -> anyhow::Result<()> {
        let system = self.system_values();
        let outcome = self.evaluator.evaluate_system(at_ms, system);
        let history = self.record(&outcome, at_ms)?;
        let now = self.sources.clock.now_ms();
        let notifications =
            self.state
                .dispatcher
                .due(&self.rules.rules, now, &self.config.public_url);
        self.commit(&history, &notifications)
    }

    /// History entries for an outcome, and its notices through silences and inhibitions
    /// into the dispatcher.
    fn record(
        &mut self,
        outcome: &vedetta_core::watch::evaluate::MinuteOutcome,
        minute_end: i64,
    ) -> anyhow::Result<Vec<HistoryEntry>> {
        let now = self.sources.clock.now_ms();
        let silences: Vec<_> = self
            .store
            .silences()?
            .into_iter()
            .filter(|s| s.is_active(now))
            .collect();
        let firing_sources: Vec<&str> = self
            .rules
            .inhibitions
            .iter()
            .map(|i| i.source.as_str())
            .filter(|source| self.evaluator.is_firing(source))
            .collect();
        let mut history = Vec::new();
        for (rule, group) in &outcome.pending {
            let labels = self
                .rules
                .rules
                .iter()
                .find(|r| r.name == *rule)
                .map(|r| {
                    r.group_by
                        .iter()
                        .zip(group)
                        .map(|(d, v)| (d.name().to_string(), v.clone()))
                        .collect()
                })
                .unwrap_or_default();
            history.push(HistoryEntry {
                at_ms: minute_end,
                wall_ms: now,
                rule: rule.clone(),
                group: labels,
                event: "pending".into(),
                value: None,
                summary: String::new(),
            });
        }
        for notice in &outcome.notices {
            let silenced = silences.iter().any(|s| s.matches(notice));
            let inhibited = self
                .rules
                .inhibitions
                .iter()
                .any(|i| firing_sources.contains(&i.source.as_str()) && i.mutes(notice));
            let status = match notice.status {
                AlertStatus::Firing => "firing",
                AlertStatus::Resolved => "resolved",
            };
            let event = match (silenced, inhibited) {
                (true, _) => format!("{status} (silenced)"),
                (false, true) => format!("{status} (inhibited)"),
                (false, false) => status.to_string(),
            };
            history.push(HistoryEntry {
                at_ms: minute_end,
                wall_ms: now,
                rule: notice.rule.clone(),
                group: notice.group.clone(),
                event,
                value: notice.value,
                summary: notice.summary.clone(),
            });
            if silenced || inhibited {
                continue;
            }
            if let Some(rule) = self.rules.rules.iter().find(|r| r.name == notice.rule) {
                self.state.dispatcher.add(rule, notice, now);
            }
        }
        Ok(history)
    }

    /// The minute that became final with this one (no event within the allowed lateness
    /// can change it any more): where an alert fired or resolved then, its value is measured
    /// again, and a difference made by late data goes into the history. The decision stands:
    /// a correction never re-fires a resolved alert.
    fn revisions(&self, minute_end: i64, now: i64) -> anyhow::Result<Vec<HistoryEntry>> {
        let lateness = self.sources.allowed_lateness_ms.div_euclid(MINUTE) * MINUTE + MINUTE;
        let final_minute = minute_end - lateness;
        let decided: Vec<HistoryEntry> = self
            .store
            .history_at(final_minute)?
            .into_iter()
            .filter(|e| e.event.starts_with("firing") || e.event.starts_with("resolved"))
            .collect();
        let mut out = Vec::new();
        for entry in decided {
            let Some(rule) = self.rules.rules.iter().find(|r| r.name == entry.rule) else {
                continue;
            };
            if matches!(
                rule.kind,
                vedetta_core::watch::rules::RuleKind::Anomaly { .. }
            ) {
                continue; // judged on whole hours or days, from stored rows
            }
            let data = self.read_window(final_minute - rule.over_ms, final_minute)?;
            let groups = group_totals(rule, final_minute, &data);
            let group: Vec<String> = entry.group.iter().map(|(_, v)| v.clone()).collect();
            let value = measured_value(rule, groups.get(&group));
            let same = match (value, entry.value) {
                (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0),
                (None, None) => true,
                _ => false,
            };
            if same {
                continue;
            }
            let shown = |v: Option<f64>| v.map_or("no data".to_string(), |v| format!("{v}"));
            out.push(HistoryEntry {
                at_ms: final_minute,
                wall_ms: now,
                rule: entry.rule.clone(),
                group: entry.group.clone(),
                event: "revised".into(),
                value,
                summary: format!(
                    "late data changed the value judged at this minute from {} to {}; the \
                     decision ({}) stands",
                    shown(entry.value),
                    shown(value),
                    entry.event
                ),
            });
        }
        Ok(out)
    }

    fn commit(
        &mut self,
        history: &[HistoryEntry],
        notifications: &[vedetta_core::watch::notification::Notification],
    ) -> anyhow::Result<()> {
        self.state.alerts = self.evaluator.alert_list();
        self.store
            .commit(&self.state, history, notifications, &*self.enqueue)
            .context("committing the alert state")?;
        self.status.evaluated_through_ms.store(
            self.state.evaluated_through_ms.unwrap_or(i64::MIN),
            Ordering::Release,
        );
        *self
            .status
            .alerts
            .write()
            .unwrap_or_else(|e| e.into_inner()) = self.state.alerts.clone();
        if !notifications.is_empty() {
            self.status
                .notifications_created
                .fetch_add(notifications.len() as u64, Ordering::Relaxed);
            self.status.enqueued.notify_one();
        }
        Ok(())
    }

    fn read_window(&self, from: i64, to: i64) -> anyhow::Result<WindowData> {
        read_window(&self.sources.kpi_store, from, to)
    }
}

/// Stored history for absence and anomaly rules, from the KPI store. A read error is kept
/// (the evaluator gets no data for it) and fails the step after it.
#[derive(Debug)]
pub struct StoreHistory<'a> {
    store: &'a KpiStore,
    pub error: Option<anyhow::Error>,
}

impl<'a> StoreHistory<'a> {
    pub fn new(store: &'a KpiStore) -> Self {
        Self { store, error: None }
    }
}

impl History for StoreHistory<'_> {
    fn usual(&mut self, rule: &Rule, minute_end: i64, weeks: i64) -> HashMap<Vec<String>, f64> {
        usual_levels(self.store, rule, minute_end, weeks).unwrap_or_else(|e| {
            self.error = Some(e);
            HashMap::new()
        })
    }

    fn periods(&mut self, granularity: Granularity, from: i64, to: i64) -> WindowData {
        read_rows(self.store, granularity, from, to).unwrap_or_else(|e| {
            self.error = Some(e);
            WindowData::default()
        })
    }
}

/// The 1-minute rows and spend of `[from, to)`.
pub fn read_window(store: &KpiStore, from: i64, to: i64) -> anyhow::Result<WindowData> {
    read_rows(store, Granularity::Minute, from, to)
}

/// The rows and spend of one granularity whose windows start in `[from, to)`.
pub fn read_rows(
    store: &KpiStore,
    granularity: Granularity,
    from: i64,
    to: i64,
) -> anyhow::Result<WindowData> {
    let mut data = WindowData::default();
    store.scan_rows(granularity, from, to, |row, counters| {
        data.rows.push(MinuteRow {
            window_start: row.window_start,
            dims: [
                row.channel.to_string(),
                row.campaign.to_string(),
                row.device.to_string(),
                row.region.to_string(),
            ],
            counters: counters.clone(),
        });
    })?;
    for (key, spend) in store.spend(granularity, from, to)? {
        data.spend.push(SpendMinute {
            window_start: key.window_start,
            channel: key.channel,
            campaign: key.campaign,
            spend,
        });
    }
    Ok(data)
}

/// An absence rule's usual level per group: the median, over the last `weeks` weeks, of
/// its metric in the same window of the week (a week without data counts as zero).
pub fn usual_levels(
    store: &KpiStore,
    rule: &Rule,
    minute_end: i64,
    weeks: i64,
) -> anyhow::Result<HashMap<Vec<String>, f64>> {
    let vedetta_core::watch::rules::RuleKind::Absence { metric, .. } = rule.kind else {
        return Ok(HashMap::new());
    };
    let mut by_group: BTreeMap<Vec<String>, Vec<f64>> = BTreeMap::new();
    for k in 1..=weeks {
        let end = minute_end - k * WEEK;
        let data = read_window(store, end - rule.over_ms, end)?;
        for (group, totals) in group_totals(rule, end, &data) {
            use vedetta_core::watch::expr::Values;
            by_group
                .entry(group)
                .or_default()
                .push(totals.value(metric).unwrap_or(0.0));
        }
    }
    Ok(by_group
        .into_iter()
        .map(|(group, mut values)| {
            values.resize(weeks as usize, 0.0);
            values.sort_by(f64::total_cmp);
            let mid = values.len() / 2;
            let median = if values.len() % 2 == 1 {
                values[mid]
            } else {
                (values[mid - 1] + values[mid]) / 2.0
            };
            (group, median)
        })
        .collect())
}
