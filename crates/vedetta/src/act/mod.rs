//! Act (issue 12): triggers. The engine runs in the processor, as its trigger stage
//! ([`stage`]); this module loads the trigger set, routes what the stage decided into
//! pending pushes and firings, and sends each destination's pushes every `interval`.
//!
//! ```text
//! processor: record ─► Pipeline::process ─► TriggerStage::after_record ─► staged outputs
//!            ─► one KPI store commit: KPI changes + offset + outputs by seq (+ the set)
//! act thread (the router): staged outputs [cursor, durably staged) ─► one trigger store
//!            commit: pending pushes + firings + cursor ─► the processor deletes them later
//! every destination's `interval` ─► one commit: its pending pushes → outbox notifications
//!                                   (one per trigger and segment), then the sender
//! ```
//!
//! The stage decides from the record sequence alone, so a segment's minute is judged on
//! the KPIs of exactly the records before it, whatever the batches, and a replay after a
//! crash decides the same outputs under the same seqs. The router's cursor makes routing
//! exactly once across the two databases. The trigger set is reloaded here when the
//! triggers file changes or on SIGHUP; a set that does not check keeps the old one in
//! force, and the error (naming the trigger and the key) is logged and shown at
//! `/v1/triggers`. A set that checks goes in force in the processor at its next batch, and
//! is recorded there with that offset.

pub mod config;
pub mod stage;

use anyhow::Context;
use config::TriggersConfig;
use stage::LoadedSet;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};
use vedetta_core::act::push::Push;
use vedetta_core::act::push::SegmentSignal;
use vedetta_core::act::stage::{StagedOutput, TriggerSet};
use vedetta_core::act::triggers::Trigger;
use vedetta_core::time::Clock;
use vedetta_core::watch::dispatch::notification_id;
use vedetta_core::watch::notification::{AlertStatus, Notification};
use vedetta_store::KpiStore;
use vedetta_store::trigger_store::{DestinationOutcome, Firing, OutcomeState, TriggerStore};

/// Staged outputs routed per step.
const READ_BATCH: usize = 10_000;
/// The most users in one request; more go in the next request of the same batch.
pub const MAX_EVENTS_PER_PUSH: usize = 500;

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

/// What the processor's trigger stage, the router, the API and `/metrics` share.
#[derive(Debug)]
pub struct ActStatus {
    pub triggers: RwLock<Arc<Vec<Trigger>>>,
    /// The set loaded last, for the processor's stage, and a generation bumped at each load.
    pub set: RwLock<LoadedSet>,
    pub set_generation: AtomicU64,
    pub loaded_at_ms: AtomicI64,
    /// Why the last reload failed (the old triggers stay in force), until one succeeds.
    pub reload_error: Mutex<Option<String>>,
    /// Set by SIGHUP: reload the triggers file.
    pub reload: AtomicBool,
    /// The processor's last durable commit: (its offset, the next output seq). The router
    /// routes the outputs below that seq.
    pub staged: Mutex<(u64, u64)>,
    /// The router's durable cursor: the staged outputs below it are routed (the processor
    /// deletes them).
    pub routed_seq: AtomicU64,
    /// The log offset up to which every output is routed.
    pub consumed_offset: AtomicU64,
    /// End of the last minute judged (`i64::MIN` before the first).
    pub judged_through_ms: AtomicI64,
    pub users: AtomicU64,
    pub user_bytes: AtomicU64,
    /// Texts (channel, campaign, product, kind) the engine's bounded table holds.
    pub texts: AtomicU64,
    /// Texts met while the table was full, kept as "no text" (since the state began).
    pub texts_not_kept: AtomicU64,
    /// Users the stage let go for its bound on users held, since the processor started.
    pub users_evicted: AtomicU64,
    /// Selections withheld for lack of consent, by trigger (the stage's, since its state
    /// began).
    pub withheld: Mutex<BTreeMap<String, u64>>,
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
    /// The status with `set` loaded (at `now_ms`).
    pub fn new(set: TriggerSet, now_ms: i64) -> Self {
        Self {
            triggers: RwLock::new(Arc::new(set.triggers.clone())),
            set: RwLock::new(LoadedSet::new(set)),
            set_generation: AtomicU64::new(1),
            loaded_at_ms: AtomicI64::new(now_ms),
            reload_error: Mutex::new(None),
            reload: AtomicBool::new(false),
            staged: Mutex::new((0, 0)),
            routed_seq: AtomicU64::new(0),
            consumed_offset: AtomicU64::new(0),
            judged_through_ms: AtomicI64::new(i64::MIN),
            users: AtomicU64::new(0),
            user_bytes: AtomicU64::new(0),
            texts: AtomicU64::new(0),
            texts_not_kept: AtomicU64::new(0),
            users_evicted: AtomicU64::new(0),
            withheld: Mutex::new(BTreeMap::new()),
            counters: Mutex::new(BTreeMap::new()),
            failures: AtomicU64::new(0),
            last_error: Mutex::new(None),
            pending: AtomicU64::new(0),
            notifications_queued: AtomicU64::new(0),
            enqueued: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Loads the configured trigger set (refused with the trigger and key named).
    pub fn load(config: &TriggersConfig, clock: &dyn Clock) -> anyhow::Result<Arc<Self>> {
        let set = config
            .load_set()
            .map_err(|e| anyhow::anyhow!("the triggers: {e}"))?;
        Ok(Arc::new(Self::new(set, clock.now_ms())))
    }

    /// Puts a newly loaded set in force: for the API at once, for the processor at its
    /// next batch.
    pub(crate) fn put_in_force(&self, set: TriggerSet, now_ms: i64) {
        *self.triggers.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set.triggers.clone());
        *self.set.write().unwrap_or_else(|e| e.into_inner()) = LoadedSet::new(set);
        self.set_generation.fetch_add(1, Ordering::AcqRel);
        self.loaded_at_ms.store(now_ms, Ordering::Relaxed);
    }

    /// Writes the `vedetta_trigger_*` families: per trigger, users sent, signals and users
    /// withheld (no consent); the consumer's progress, state size and failures.
    pub fn expose(&self, out: &mut crate::telemetry::Exposition) {
        let triggers = self
            .triggers
            .read()
            .map(|t| t.clone())
            .unwrap_or_else(|e| e.into_inner().clone());
        let counters = self.counters();
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
                "vedetta_trigger_users_evicted",
                "Users with only an intent let go (oldest minutes first) because the trigger \
                 engine held more than its bound of 4 million; since the stage was built (the \
                 processor's start or recovery).",
                self.users_evicted.load(Ordering::Relaxed),
            ),
            (
                "vedetta_trigger_pending_pushes",
                "Pushes waiting for their destination's next batch.",
                self.pending.load(Ordering::Relaxed),
            ),
            (
                "vedetta_trigger_consumed_offset",
                "The log offset up to which the trigger stage's outputs are routed.",
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
            "Trigger router steps that failed (each retried from the store).",
        );
        out.sample(
            "vedetta_trigger_failures_total",
            &[],
            self.failures.load(Ordering::Relaxed) as f64,
        );
    }

    /// Per trigger: users sent and signals (routed since start), users withheld (the stage's).
    pub fn counters(&self) -> BTreeMap<String, TriggerCounters> {
        let mut counters = self
            .counters
            .lock()
            .map(|c| c.clone())
            .unwrap_or_else(|e| e.into_inner().clone());
        let withheld = self
            .withheld
            .lock()
            .map(|w| w.clone())
            .unwrap_or_else(|e| e.into_inner().clone());
        for (name, n) in withheld {
            counters.entry(name).or_default().withheld = n;
        }
        counters
    }
}

/// What the router reads from the rest of the server.
pub struct Sources {
    /// Where the processor's stage staged its outputs.
    pub kpi_store: Arc<KpiStore>,
    pub clock: Arc<dyn Clock>,
    /// `server.public_url`, carried by notifications.
    pub dashboard_url: String,
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources").finish_non_exhaustive()
    }
}

/// SIGHUP asks the act thread to reload its triggers file.
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

/// The running act thread.
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

/// Starts the act thread over `store` (in the alert store's database, beside the outbox),
/// with `status` as [`ActStatus::load`] made it (shared with the processor's stage).
pub fn start(
    config: TriggersConfig,
    status: Arc<ActStatus>,
    store: TriggerStore,
    sources: Sources,
) -> anyhow::Result<Act> {
    let resume = store.resume().context("reading the trigger store")?;
    if resume.consumer_state {
        let rows = store
            .drop_consumer_state()
            .context("dropping the trigger consumer's state")?;
        tracing::warn!(
            rows,
            "the trigger engine now runs in the processor: the state of the consumer that ran \
             it before was dropped (cooldowns, carts and intents start afresh; pending pushes \
             and firings stay)"
        );
    }
    let mut cursor = resume.routed.unwrap_or(0);
    let (next, first) = (sources.kpi_store.output_seqs()).context("reading the staged outputs")?;
    if cursor > next {
        // The KPI store was made anew (deleted by hand): its seqs start again.
        let from = first.unwrap_or(next);
        tracing::warn!(
            cursor,
            from,
            "the trigger router's cursor is past the KPI store's staged outputs; routing from theirs"
        );
        cursor = from;
    }
    status.routed_seq.store(cursor, Ordering::Release);
    let stop = Arc::new(AtomicBool::new(false));
    let mut task = Task {
        modified: modified(config.file.as_ref()),
        config,
        cursor,
        store: store.clone(),
        status: status.clone(),
        sources,
        last_flush: BTreeMap::new(),
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

fn modified(path: Option<&PathBuf>) -> Option<SystemTime> {
    std::fs::metadata(path?).and_then(|m| m.modified()).ok()
}

struct Task {
    config: TriggersConfig,
    modified: Option<SystemTime>,
    /// The next staged output seq to route (as committed).
    cursor: u64,
    store: TriggerStore,
    status: Arc<ActStatus>,
    sources: Sources,
    /// When each destination's pending pushes last went to the outbox.
    last_flush: BTreeMap<String, Instant>,
}

impl Task {
    fn run(&mut self, stop: &AtomicBool) {
        let mut pause = Duration::from_millis(20);
        while !stop.load(Ordering::Acquire) {
            self.maybe_reload();
            let outcome = self.route().and_then(|busy| Ok(busy | self.flush_due()?));
            match outcome {
                Ok(busy) => {
                    pause = Duration::from_millis(20);
                    if busy {
                        continue;
                    }
                }
                Err(error) => {
                    self.failed(&error);
                    // The store holds the last routing step: go on from its cursor.
                    match self.store.resume() {
                        Ok(resume) => self.cursor = resume.routed.unwrap_or(self.cursor),
                        Err(e) => tracing::error!(error = %e, "the trigger store cannot be read"),
                    }
                    pause = (pause * 2).min(Duration::from_secs(10));
                }
            }
            std::thread::sleep(pause);
        }
    }

    fn failed(&self, error: &anyhow::Error) {
        self.status.failures.fetch_add(1, Ordering::Relaxed);
        let text = format!("{error:#}");
        tracing::error!(error = %text, "trigger step failed; retrying from the store");
        *self
            .status
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(text);
    }

    fn maybe_reload(&mut self) {
        let changed = modified(self.config.file.as_ref());
        let asked = self.status.reload.swap(false, Ordering::AcqRel);
        if !asked && changed == self.modified {
            return;
        }
        self.modified = changed;
        match self.config.load_set() {
            Ok(set) => {
                let n = set.triggers.len();
                self.status.put_in_force(set, self.sources.clock.now_ms());
                *self
                    .status
                    .reload_error
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = None;
                tracing::info!(triggers = n, "triggers reloaded");
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

    /// Routes the outputs the processor staged durably since the cursor: their pending
    /// pushes, their firings and the new cursor in one commit. Returns whether there may
    /// be more at once.
    fn route(&mut self) -> anyhow::Result<bool> {
        let (offset, staged) = *self.status.staged.lock().unwrap_or_else(|e| e.into_inner());
        if self.cursor >= staged {
            self.status.consumed_offset.store(offset, Ordering::Relaxed);
            return Ok(false);
        }
        let rows = (self.sources.kpi_store)
            .read_outputs(self.cursor, READ_BATCH)
            .context("reading the staged trigger outputs")?;
        let full = rows.len() == READ_BATCH;
        let mut next = self.cursor;
        let mut outputs = Vec::with_capacity(rows.len());
        for (seq, bytes) in rows {
            if seq >= staged {
                break;
            }
            next = seq + 1;
            match StagedOutput::decode(&bytes) {
                Ok(output) => outputs.push(output),
                // Never blocks the outputs after it: said, counted, passed over.
                Err(error) => self.failed(&anyhow::anyhow!(
                    "staged trigger output {seq} does not decode, passed over: {error}"
                )),
            }
        }
        if !full {
            // Nothing else is staged below `staged` (a replay after an upgrade decides
            // outputs it does not stage: their seqs are skipped).
            next = staged;
        }
        let now = self.sources.clock.now_ms();
        let (pending, firings) = route(&outputs, now);
        self.store
            .commit_route(next, &pending, &firings)
            .context("committing the routed trigger outputs")?;
        self.cursor = next;
        self.status.routed_seq.store(next, Ordering::Release);
        if next >= staged {
            self.status.consumed_offset.store(offset, Ordering::Relaxed);
        }
        self.count(&outputs);
        Ok(next < staged)
    }

    fn count(&self, outputs: &[StagedOutput]) {
        let mut counters = self
            .status
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for output in outputs {
            let c = counters.entry(output.trigger.clone()).or_default();
            if output.signal.is_some() {
                c.signals += 1;
            } else {
                c.users_sent += 1;
            }
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

/// The pending pushes (one per output and destination, each with the index of its
/// firing) and firings (each `pending` at each destination) of `outputs`.
#[allow(clippy::type_complexity)]
fn route(outputs: &[StagedOutput], now_ms: i64) -> (Vec<(String, Push, usize)>, Vec<Firing>) {
    let mut pending = Vec::new();
    let mut firings = Vec::new();
    for output in outputs {
        let push = output.push();
        for destination in &output.destinations {
            pending.push((destination.clone(), push.clone(), firings.len()));
        }
        firings.push(Firing {
            trigger: output.trigger.clone(),
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
            destinations: output.destinations.clone(),
            outcomes: output
                .destinations
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
