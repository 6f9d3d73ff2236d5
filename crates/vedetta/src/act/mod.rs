//! Act (issue 12): the trigger consumer, a thread between the durable log and the outbox.
//!
//! ```text
//! log [consumed offset, processor's committed offset) ─► Engine::observe (log order)
//! watermark passes minute end m ─► KPI rows of [m − over, m) ─► Engine::judge_minute
//! Engine::advance(watermark)  (abandoned carts, pruning)
//!   ─► one commit: engine state + consumed offset + pending pushes + firings
//! every destination's `interval` ─► one commit: its pending pushes → outbox notifications
//!                                   (one per trigger and segment), then the sender
//! ```
//!
//! It reads only what the processor has committed, so the KPIs a segment's CPA is read
//! from already hold the events it observed. Restarted, it resumes from the stored state
//! and offset: nothing observed twice, nothing skipped. The trigger set is reloaded when
//! the triggers file changes or on SIGHUP; a set that does not check keeps the old one in
//! force, and the error (naming the trigger and the key) is logged and shown at
//! `/v1/triggers`.

pub mod config;

use crate::processor::ProcessorStatus;
use anyhow::Context;
use config::TriggersConfig;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};
use vedetta_core::EventKind;
use vedetta_core::act::engine::{ActState, Engine, Output, StoredState};
use vedetta_core::act::push::{Push, SegmentSignal};
use vedetta_core::act::triggers::{Trigger, TriggerKind};
use vedetta_core::enrich::EnrichConfig;
use vedetta_core::record::LogRecord;
use vedetta_core::time::Clock;
use vedetta_core::watch::dispatch::notification_id;
use vedetta_core::watch::evaluate::group_totals;
use vedetta_core::watch::notification::{AlertStatus, Notification};
use vedetta_store::trigger_store::{
    DestinationOutcome, Firing, OutcomeState, Resume, TriggerStore,
};
use vedetta_store::{EventLog, KpiStore};

const MINUTE: i64 = 60_000;
/// Log records read per step.
const READ_BATCH: usize = 10_000;
/// The most users in one request; more go in the next request of the same batch.
pub const MAX_EVENTS_PER_PUSH: usize = 500;
/// Minutes judged per step when catching up (the rest in the next steps).
const MINUTES_PER_STEP: usize = 60;
/// The least time between two commits of the consumer: what the steps in between changed
/// (users, offset, pushes, firings) goes in one transaction, so a user active in several
/// reads is written once and a busy consumer does not pay a durable commit per read. A
/// crash replays from the last commit, exactly.
const COMMIT_EVERY: Duration = Duration::from_millis(250);
/// How often the approximate bytes of the users' facts are summed (a walk over all users).
const USER_BYTES_EVERY: Duration = Duration::from_secs(5);

/// What one trigger did, for `/v1/triggers`, the dashboard and `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TriggerCounters {
    /// Users selected and queued for sending.
    pub users_sent: u64,
    /// Segment signals (firing and recovered).
    pub signals: u64,
    /// Users selected but not sent for lack of marketing consent.
    pub withheld: u64,
}

/// What the API and `/metrics` read of the consumer.
#[derive(Debug, Default)]
pub struct ActStatus {
    pub triggers: RwLock<Arc<Vec<Trigger>>>,
    pub loaded_at_ms: AtomicI64,
    /// Why the last reload failed (the old triggers stay in force), until one succeeds.
    pub reload_error: Mutex<Option<String>>,
    /// Set by SIGHUP: reload the triggers file.
    pub reload: AtomicBool,
    /// The next log offset the consumer reads.
    pub consumed_offset: AtomicU64,
    /// End of the last minute judged (`i64::MIN` before the first).
    pub judged_through_ms: AtomicI64,
    pub users: AtomicU64,
    pub user_bytes: AtomicU64,
    /// Texts (channel, campaign, product, kind) the engine's bounded table holds.
    pub texts: AtomicU64,
    /// Texts met while the table was full, kept as "no text" (since the state began).
    pub texts_not_kept: AtomicU64,
    pub counters: Mutex<BTreeMap<String, TriggerCounters>>,
    /// Steps that failed (each retried from the store).
    pub failures: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// Pushes waiting for their destination's next batch.
    pub pending: AtomicU64,
    /// Notifications queued by flushes.
    pub notifications_queued: AtomicU64,
    /// Woken after a flush put notifications in the outbox.
    pub enqueued: Arc<tokio::sync::Notify>,
}

impl ActStatus {
    /// Writes the `vedetta_trigger_*` families: per trigger, users sent, signals and users
    /// withheld (no consent); the consumer's progress, state size and failures.
    pub fn expose(&self, out: &mut crate::telemetry::Exposition) {
        let triggers = self
            .triggers
            .read()
            .map(|t| t.clone())
            .unwrap_or_else(|e| e.into_inner().clone());
        let counters = self
            .counters
            .lock()
            .map(|c| c.clone())
            .unwrap_or_else(|e| e.into_inner().clone());
        type Family = (&'static str, &'static str, fn(&TriggerCounters) -> u64);
        let families: [Family; 3] = [
            (
                "vedetta_trigger_users_sent_total",
                "Users a trigger selected and queued for its destinations (since start).",
                |c| c.users_sent,
            ),
            (
                "vedetta_trigger_signals_total",
                "Segment signals (firing and recovered) of segment_cpa triggers (since start).",
                |c| c.signals,
            ),
            (
                "vedetta_trigger_withheld_total",
                "Users a trigger selected but did not send for lack of marketing consent.",
                |c| c.withheld,
            ),
        ];
        for (name, help, value) in families {
            out.family(name, "counter", help);
            for t in triggers.iter() {
                let c = counters.get(&t.name).cloned().unwrap_or_default();
                out.sample(name, &[("trigger", t.name.as_str())], value(&c) as f64);
            }
        }
        let gauges = [
            (
                "vedetta_trigger_users",
                "Users whose facts the trigger engine keeps.",
                self.users.load(Ordering::Relaxed),
            ),
            (
                "vedetta_trigger_user_bytes",
                "Approximate bytes of the trigger engine's per-user facts.",
                self.user_bytes.load(Ordering::Relaxed),
            ),
            (
                "vedetta_trigger_texts",
                "Texts (channel, campaign, product id, kind) in the trigger engine's bounded table.",
                self.texts.load(Ordering::Relaxed),
            ),
            (
                "vedetta_trigger_texts_not_kept",
                "Texts met while the engine's text table was full, kept as no text (a push \
                 without its product id, an intent in no segment); since the state began.",
                self.texts_not_kept.load(Ordering::Relaxed),
            ),
            (
                "vedetta_trigger_pending_pushes",
                "Pushes waiting for their destination's next batch.",
                self.pending.load(Ordering::Relaxed),
            ),
            (
                "vedetta_trigger_consumed_offset",
                "The next log offset the trigger consumer reads.",
                self.consumed_offset.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in gauges {
            out.family(name, "gauge", help);
            out.sample(name, &[], value as f64);
        }
        out.family(
            "vedetta_trigger_failures_total",
            "counter",
            "Trigger consumer steps that failed (each retried from the store).",
        );
        out.sample(
            "vedetta_trigger_failures_total",
            &[],
            self.failures.load(Ordering::Relaxed) as f64,
        );
    }
}

/// What the consumer reads from the rest of the server.
pub struct Sources {
    pub kpi_store: Arc<KpiStore>,
    pub processor: Arc<ProcessorStatus>,
    pub log: Arc<EventLog>,
    pub clock: Arc<dyn Clock>,
    pub conversion_types: Vec<EventKind>,
    pub enrich: EnrichConfig,
    /// `server.public_url`, carried by notifications.
    pub dashboard_url: String,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources").finish_non_exhaustive()
    }
}

/// SIGHUP asks the consumer to reload its triggers file.
pub async fn reload_on_sighup(status: Arc<ActStatus>) {
    #[cfg(unix)]
    {
        let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hangup.recv().await.is_some() {
            status.reload.store(true, Ordering::Release);
        }
    }
    #[cfg(not(unix))]
    std::future::pending::<()>().await;
}

/// The running consumer.
pub struct Act {
    pub status: Arc<ActStatus>,
    pub store: TriggerStore,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Act {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Act").finish_non_exhaustive()
    }
}

impl Act {
    /// Stops after the step in progress (what is committed stays; the rest is redone).
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

impl Drop for Act {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts the consumer over `store` (in the alert store's database, beside the outbox).
pub fn start(config: TriggersConfig, store: TriggerStore, sources: Sources) -> anyhow::Result<Act> {
    let triggers = config
        .load()
        .map_err(|e| anyhow::anyhow!("the triggers: {e}"))?;
    let resume = store.resume().context("reading the trigger store")?;
    let StoredState { state, legacy } =
        stored_state(&resume).context("the stored trigger state")?;
    let status = Arc::new(ActStatus::default());
    status
        .consumed_offset
        .store(resume.offset, Ordering::Relaxed);
    status.judged_through_ms.store(
        state.judged_through_ms.unwrap_or(i64::MIN),
        Ordering::Relaxed,
    );
    *status.triggers.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(triggers.clone());
    status
        .loaded_at_ms
        .store(sources.clock.now_ms(), Ordering::Relaxed);
    let mut engine = Engine::new(triggers, sources.conversion_types.clone(), state)
        .with_enrichment(sources.enrich.clone());
    if legacy {
        engine.mark_all_changed(); // rewritten as rows at the first commit
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut task = Task {
        modified: modified(config.file.as_ref()),
        config,
        engine,
        offset: resume.offset,
        store: store.clone(),
        status: status.clone(),
        sources,
        last_flush: BTreeMap::new(),
        uncommitted: Uncommitted::new(legacy),
        user_bytes_at: None,
    };
    let thread = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("act".into())
            .spawn(move || task.run(&stop))?
    };
    Ok(Act {
        status,
        store,
        stop,
        thread: Some(thread),
    })
}

/// The engine state of `resume` (empty when nothing was ever committed).
fn stored_state(resume: &Resume) -> anyhow::Result<StoredState> {
    let Some(globals) = &resume.state else {
        return Ok(StoredState {
            state: ActState::default(),
            legacy: false,
        });
    };
    let rows = (resume.users.iter()).map(|(pseudonym, row)| (*pseudonym, row.as_slice()));
    Ok(ActState::decode_stored(globals, rows)?)
}

fn modified(path: Option<&PathBuf>) -> Option<SystemTime> {
    std::fs::metadata(path?).and_then(|m| m.modified()).ok()
}

struct Task {
    config: TriggersConfig,
    modified: Option<SystemTime>,
    engine: Engine,
    offset: u64,
    store: TriggerStore,
    status: Arc<ActStatus>,
    sources: Sources,
    /// When each destination's pending pushes last went to the outbox.
    last_flush: BTreeMap<String, Instant>,
    /// What the steps since the last commit decided.
    uncommitted: Uncommitted,
    /// When the users' bytes were last summed.
    user_bytes_at: Option<Instant>,
}

/// The steps' work not yet committed ([`COMMIT_EVERY`]).
struct Uncommitted {
    /// Whether anything changed (offset, minutes judged, state, outputs).
    changed: bool,
    outputs: Vec<Output>,
    since: Instant,
}

impl Uncommitted {
    fn new(changed: bool) -> Self {
        Self {
            changed,
            outputs: Vec::new(),
            since: Instant::now(),
        }
    }
}

impl Task {
    fn run(&mut self, stop: &AtomicBool) {
        let mut pause = Duration::from_millis(20);
        // After a failed step the engine in memory may be ahead of the store: no step runs
        // until it is restored (the store may still be reopening after a full disk; a step
        // from the engine in memory would skip what the failed one lost).
        let mut stale = false;
        while !stop.load(Ordering::Acquire) {
            if stale {
                stale = !self.try_restore();
                if stale {
                    pause = (pause * 2).min(Duration::from_secs(10));
                    std::thread::sleep(pause);
                    continue;
                }
            }
            self.maybe_reload();
            let outcome = self.step().and_then(|busy| Ok(busy | self.flush_due()?));
            match outcome {
                Ok(busy) => {
                    pause = Duration::from_millis(20);
                    if busy {
                        continue;
                    }
                }
                Err(error) => {
                    self.status.failures.fetch_add(1, Ordering::Relaxed);
                    let text = format!("{error:#}");
                    tracing::error!(error = %text, "trigger step failed; retrying from the store");
                    *self
                        .status
                        .last_error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some(text);
                    // The store holds the last good step: start again from it.
                    stale = !self.try_restore();
                    pause = (pause * 2).min(Duration::from_secs(10));
                }
            }
            std::thread::sleep(pause);
        }
    }

    /// [`Self::restore`], logging a failure; whether it succeeded.
    fn try_restore(&mut self) -> bool {
        match self.restore() {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "the trigger store cannot be read");
                false
            }
        }
    }

    fn restore(&mut self) -> anyhow::Result<()> {
        let resume = self.store.resume()?;
        let StoredState { state, legacy } = stored_state(&resume)?;
        self.engine = Engine::new(
            self.engine.triggers().to_vec(),
            self.sources.conversion_types.clone(),
            state,
        )
        .with_enrichment(self.sources.enrich.clone());
        if legacy {
            self.engine.mark_all_changed();
        }
        self.offset = resume.offset;
        self.uncommitted = Uncommitted::new(legacy);
        Ok(())
    }

    fn maybe_reload(&mut self) {
        let changed = modified(self.config.file.as_ref());
        let asked = self.status.reload.swap(false, Ordering::AcqRel);
        if !asked && changed == self.modified {
            return;
        }
        self.modified = changed;
        match self.config.load() {
            Ok(triggers) => {
                self.engine.set_triggers(triggers.clone());
                *self
                    .status
                    .triggers
                    .write()
                    .unwrap_or_else(|e| e.into_inner()) = Arc::new(triggers);
                *self
                    .status
                    .reload_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = None;
                self.status
                    .loaded_at_ms
                    .store(self.sources.clock.now_ms(), Ordering::Relaxed);
                tracing::info!(triggers = self.engine.triggers().len(), "triggers reloaded");
            }
            Err(error) => {
                tracing::error!(%error, "the triggers did not reload; the previous ones stay in force");
                *self
                    .status
                    .reload_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(error);
            }
        }
    }

    /// Observes what the processor committed, judges the minutes the watermark passed,
    /// and commits when [`COMMIT_EVERY`] passed since the last commit. Returns whether
    /// there may be more to do at once.
    fn step(&mut self) -> anyhow::Result<bool> {
        // The watermark first: the offset read after it covers every event behind it.
        let watermark = self.sources.processor.watermark();
        let committed = self
            .sources
            .processor
            .processed_offset
            .load(Ordering::Acquire);
        let mut outputs = std::mem::take(&mut self.uncommitted.outputs);
        let mut more = false;
        let start_offset = self.offset;
        if self.offset < committed && self.engine.triggers().is_empty() {
            // With no trigger in force the engine keeps nothing of an event
            // (`Engine::observe`): the records are passed over unread.
            self.offset = committed;
        } else if self.offset < committed {
            let records = self
                .sources
                .log
                .read(self.offset, READ_BATCH)
                .with_context(|| format!("reading the log from offset {}", self.offset))?;
            let mut next = self.offset;
            for (offset, record) in &records {
                if *offset >= committed {
                    break;
                }
                if let LogRecord::Event(event) = record {
                    self.engine.observe(event, &mut outputs);
                }
                next = offset + 1;
            }
            if records.is_empty() {
                // Retention removed what was not yet read: go on from the log's start.
                next = self.sources.log.start_offset().max(self.offset);
                if next == self.offset {
                    anyhow::bail!(
                        "the log has nothing at offset {} though the processor is at {committed}",
                        self.offset
                    );
                }
            }
            more = next < committed;
            self.offset = next;
        }
        let before = self.engine.state().judged_through_ms;
        // Minutes are judged only once the log is read up to the committed offset, so
        // intents and conversions behind the watermark are in.
        if let (Some(w), false) = (watermark, more) {
            let last_end = w.div_euclid(MINUTE) * MINUTE;
            let first_end = match before {
                Some(t) => t + MINUTE,
                None => last_end,
            };
            let mut judged = 0;
            let longest = self
                .engine
                .triggers()
                .iter()
                .filter_map(|t| match &t.kind {
                    TriggerKind::SegmentCpa { rule, .. } => Some(rule.over_ms),
                    _ => None,
                })
                .max();
            let mut m = first_end;
            while m <= last_end && judged < MINUTES_PER_STEP {
                match longest {
                    Some(over) => {
                        let data = crate::watch::evaluation::read_window(
                            &self.sources.kpi_store,
                            m - over,
                            m,
                        )
                        .context("reading the KPI window")?;
                        self.engine.judge_minute(
                            m,
                            &mut |rule| group_totals(rule, m, &data),
                            &mut outputs,
                        );
                    }
                    None => {
                        // No segment trigger: nothing to judge but the time, at once.
                        m = m.max(last_end);
                        self.engine
                            .judge_minute(m, &mut |_| Default::default(), &mut outputs)
                    }
                }
                judged += 1;
                m += MINUTE;
            }
            more |= m <= last_end;
            self.engine.advance(w, &mut outputs);
        }
        let after = self.engine.state().judged_through_ms;
        let u = &mut self.uncommitted;
        u.changed |= self.offset != start_offset || after != before || !outputs.is_empty();
        u.outputs = outputs;
        if !u.changed || u.since.elapsed() < COMMIT_EVERY {
            return Ok(more);
        }
        self.commit()?;
        Ok(more)
    }

    /// Commits what the steps since the last commit did: the state's changes, the offset,
    /// the pushes and firings of their outputs, in one transaction.
    fn commit(&mut self) -> anyhow::Result<()> {
        let outputs = std::mem::take(&mut self.uncommitted.outputs);
        let now = self.sources.clock.now_ms();
        let (pending, firings) = self.route(&outputs, now);
        let changes = (self.engine.take_changes()).map_err(|e| anyhow::anyhow!("{e}"))?;
        self.store
            .commit_step(&changes, self.offset, &pending, &firings)
            .context("committing the trigger step")?;
        self.uncommitted = Uncommitted::new(false);
        self.publish(&outputs);
        Ok(())
    }

    /// The pending pushes (one per output and destination, each with the index of its
    /// firing) and firings (each `pending` at each destination) of `outputs`.
    #[allow(clippy::type_complexity)]
    fn route(&self, outputs: &[Output], now_ms: i64) -> (Vec<(String, Push, usize)>, Vec<Firing>) {
        let mut pending = Vec::new();
        let mut firings = Vec::new();
        for output in outputs {
            let Some(trigger) = self.engine.triggers().get(output.trigger) else {
                continue;
            };
            let segment = trigger.label.clone().or_else(|| {
                (!output.group.is_empty()).then(|| {
                    output
                        .group
                        .iter()
                        .map(|(_, v)| v.as_str())
                        .collect::<Vec<_>>()
                        .join(" / ")
                })
            });
            let push = Push {
                trigger: trigger.name.clone(),
                kind: trigger.kind_name().into(),
                segment,
                group: output.group.clone(),
                signal: output.signal.clone(),
                events: output.event.iter().cloned().collect(),
            };
            for destination in &trigger.notify {
                pending.push((destination.clone(), push.clone(), firings.len()));
            }
            firings.push(Firing {
                trigger: trigger.name.clone(),
                what: if output.signal.is_some() {
                    "signal"
                } else {
                    "user"
                }
                .into(),
                user: output.user.map(|u| u.to_hex()),
                group: output.group.clone(),
                signal: output.signal.as_ref().map(|s| {
                    match s.signal {
                        SegmentSignal::Firing => "firing",
                        SegmentSignal::Recovered => "recovered",
                    }
                    .to_string()
                }),
                at_ms: output.at_ms,
                wall_ms: now_ms,
                destinations: trigger.notify.clone(),
                outcomes: trigger
                    .notify
                    .iter()
                    .map(|d| DestinationOutcome {
                        destination: d.clone(),
                        state: OutcomeState::Pending,
                        at_ms: Some(now_ms),
                        request: None,
                        error: None,
                    })
                    .collect(),
            });
        }
        (pending, firings)
    }

    fn publish(&mut self, outputs: &[Output]) {
        let s = &self.status;
        s.consumed_offset.store(self.offset, Ordering::Relaxed);
        let state = self.engine.state();
        s.judged_through_ms.store(
            state.judged_through_ms.unwrap_or(i64::MIN),
            Ordering::Relaxed,
        );
        s.users.store(self.engine.users() as u64, Ordering::Relaxed);
        s.texts.store(state.texts.len() as u64, Ordering::Relaxed);
        s.texts_not_kept
            .store(state.texts.not_kept(), Ordering::Relaxed);
        if (self.user_bytes_at).is_none_or(|at| at.elapsed() >= USER_BYTES_EVERY) {
            self.user_bytes_at = Some(Instant::now());
            s.user_bytes
                .store(self.engine.user_bytes() as u64, Ordering::Relaxed);
        }
        let mut counters = s.counters.lock().unwrap_or_else(|e| e.into_inner());
        for output in outputs {
            let Some(t) = self.engine.triggers().get(output.trigger) else {
                continue;
            };
            let c = counters.entry(t.name.clone()).or_default();
            if output.signal.is_some() {
                c.signals += 1;
            } else {
                c.users_sent += 1;
            }
        }
        for (name, withheld) in &state.withheld {
            counters.entry(name.clone()).or_default().withheld = *withheld;
        }
    }

    /// Moves the pending pushes of every destination whose interval passed into the
    /// outbox. Returns whether anything was queued.
    fn flush_due(&mut self) -> anyhow::Result<bool> {
        let mut queued = 0;
        let now = Instant::now();
        for (destination, interval) in &self.config.push_destinations {
            let due = self
                .last_flush
                .get(destination)
                .is_none_or(|at| now.duration_since(*at) >= *interval);
            if !due {
                continue;
            }
            let wall = self.sources.clock.now_ms();
            let dashboard_url = self.sources.dashboard_url.clone();
            let n = self
                .store
                .flush(destination, wall, |batch, items| {
                    batch_notifications(destination, batch, items, wall, &dashboard_url)
                })
                .with_context(|| format!("flushing the pushes of {destination:?}"))?;
            self.last_flush.insert(destination.clone(), now);
            queued += n;
        }
        self.status
            .pending
            .store(self.store.pending_count()?, Ordering::Relaxed);
        if queued > 0 {
            self.status
                .notifications_queued
                .fetch_add(queued as u64, Ordering::Relaxed);
            self.status.enqueued.notify_one();
        }
        Ok(false)
    }
}

/// One notification per trigger and segment (in the order pushes were selected); a second
/// signal for the same segment, or more than [`MAX_EVENTS_PER_PUSH`] users, starts another.
/// Each comes with the pending seqs it carries (its firings' link).
pub fn batch_notifications(
    destination: &str,
    batch: u64,
    items: Vec<(u64, Push)>,
    now_ms: i64,
    dashboard_url: &str,
) -> Vec<(Notification, Vec<u64>)> {
    let mut pushes: Vec<Push> = Vec::new();
    let mut carried: Vec<Vec<u64>> = Vec::new();
    // Open request per (trigger, group): its index in `pushes`.
    let mut open: BTreeMap<(String, Vec<(String, String)>), usize> = BTreeMap::new();
    for (seq, item) in items {
        let key = (item.trigger.clone(), item.group.clone());
        let reuse = open.get(&key).copied().filter(|&i| {
            // A signal opens a request of its own (the users selected after it join it):
            // a recovery never travels with users selected while the segment fired.
            item.signal.is_none()
                && pushes[i].events.len() + item.events.len() <= MAX_EVENTS_PER_PUSH
        });
        match reuse {
            Some(i) => {
                let p = &mut pushes[i];
                if item.signal.is_some() {
                    p.signal = item.signal;
                }
                p.events.extend(item.events);
                carried[i].push(seq);
            }
            None => {
                open.insert(key, pushes.len());
                pushes.push(item);
                carried.push(vec![seq]);
            }
        }
    }
    pushes
        .into_iter()
        .zip(carried)
        .enumerate()
        .map(|(index, (push, carried))| {
            (
                Notification {
                    // Fixed at the flush commit: retries and restarts resend the same id.
                    id: notification_id(
                        &push.trigger,
                        destination,
                        batch.saturating_mul(1 << 20).saturating_add(index as u64),
                    ),
                    destination: destination.to_owned(),
                    status: match push.signal.as_ref().map(|s| s.signal) {
                        Some(SegmentSignal::Recovered) => AlertStatus::Resolved,
                        _ => AlertStatus::Firing,
                    },
                    notices: Vec::new(),
                    created_ms: now_ms,
                    dashboard_url: dashboard_url.to_owned(),
                    push: Some(push),
                },
                carried,
            )
        })
        .collect()
}
