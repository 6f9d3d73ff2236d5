//! The processor: the adapter that feeds the pure pipeline from the log and commits its
//! changes to the KPI store, exactly once.
//!
//! One thread, a loop of micro-batches:
//!
//! ```text
//! wait for new records ─► read up to N from the log ─► pipeline.process each
//!   ─► one store commit: KPI changes + the offset after the batch (+ a snapshot, when due)
//! ```
//!
//! Commits are visible to queries at once. Most are not fsynced (`durable = false`); every
//! `durable_interval` one is, and every `snapshot_interval` one also carries a snapshot of
//! the pipeline state. After a crash the store is at its last durable commit; recovery
//! restores the snapshot and replays the log from the snapshot's offset to the committed
//! offset with the changes discarded (they are in the store already), then carries on. The
//! log is the source of truth; the store is a consistent, exactly-once view of a prefix of it.

use crate::clock::SystemClock;
use crate::telemetry::StageTimings;
use anyhow::Context;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vedetta_core::enrich::RegionLookup;
use vedetta_core::pipeline::{Pipeline, PipelineConfig, PipelineCounters, snapshot};
use vedetta_core::record::{LogRecord, UserPseudonym};
use vedetta_core::time::Clock;
use vedetta_store::{Commit, EventLog, KpiStore, RowKey, SpendRowKey, StoreError};

/// Wakes the processor when the log grows.
#[derive(Debug, Default)]
pub struct LogNotifier {
    end: Mutex<u64>,
    grown: Condvar,
}

impl LogNotifier {
    /// Called by the log writer after each commit.
    pub fn appended(&self, end_offset: u64) {
        if let Ok(mut end) = self.end.lock() {
            *end = end_offset;
        }
        self.grown.notify_all();
    }

    /// Waits until the log end passes `offset`, or the timeout.
    fn wait_past(&self, offset: u64, timeout: Duration) {
        if let Ok(end) = self.end.lock() {
            let _ = self
                .grown
                .wait_timeout_while(end, timeout, |end| *end <= offset);
        }
    }
}

/// Tuning of the processor loop.
#[derive(Debug, Clone, Copy)]
pub struct ProcessorOptions {
    /// Most records per micro-batch.
    pub max_batch_records: usize,
    /// How often a commit is fsynced.
    pub durable_interval: Duration,
    /// How often a commit carries a snapshot of the pipeline state, at least. A snapshot
    /// costs time in proportion to the state; the processor waits at least 30 times as long
    /// as the last one took, so snapshots never take more than a few percent of its time.
    pub snapshot_interval: Duration,
}

impl Default for ProcessorOptions {
    fn default() -> Self {
        Self {
            max_batch_records: 20_000,
            durable_interval: Duration::from_secs(1),
            snapshot_interval: Duration::from_secs(10),
        }
    }
}

/// What the processor reports, read by `/v1/status` and `/metrics`.
#[derive(Debug, Default)]
pub struct ProcessorStatus {
    pub processed_offset: AtomicU64,
    /// Watermark in epoch ms; `i64::MIN` before the first event.
    pub watermark: AtomicI64,
    /// Offset of the latest snapshot (retention keeps the log from there).
    pub snapshot_offset: AtomicU64,
    pub commits: AtomicU64,
    pub active_users: AtomicU64,
    pub remembered_event_ids: AtomicU64,
    /// Order ids held for order dedup.
    pub remembered_orders: AtomicU64,
    /// Attribution memories of dropped users waiting for the next snapshot.
    pub dormant_users: AtomicU64,
    /// Attribution memories in the store (updated with each snapshot).
    pub stored_memories: AtomicU64,
    pub recovering: AtomicBool,
    pub counters: Mutex<PipelineCounters>,
    /// The error that stops processing now, if any; cleared once a batch commits again.
    pub last_error: Mutex<Option<String>>,
    /// Batches whose commit failed (each one recovered from: nothing lost, nothing twice).
    pub commit_failures: AtomicU64,
    /// Commits that failed because the store's disk was full.
    pub storage_full_failures: AtomicU64,
    /// Times the processor rebuilt its state from the snapshot and the log after a failure.
    pub recoveries: AtomicU64,
    /// Wakes readers waiting for a commit (the live stream).
    pub committed: tokio::sync::Notify,
    /// Batch, commit and end-to-end timings.
    pub timings: Arc<StageTimings>,
}

impl ProcessorStatus {
    pub fn watermark(&self) -> Option<i64> {
        let w = self.watermark.load(Ordering::Acquire);
        (w != i64::MIN).then_some(w)
    }
}

/// A running processor; stopping it commits durably with a snapshot.
#[derive(Debug)]
pub struct ProcessorHandle {
    pub status: Arc<ProcessorStatus>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ProcessorHandle {
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

impl Drop for ProcessorHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Starts the processor thread.
pub fn start(
    log: Arc<EventLog>,
    store: Arc<KpiStore>,
    config: PipelineConfig,
    regions: Option<Arc<dyn RegionLookup>>,
    notifier: Arc<LogNotifier>,
    options: ProcessorOptions,
    timings: Arc<StageTimings>,
) -> anyhow::Result<ProcessorHandle> {
    let status = Arc::new(ProcessorStatus {
        timings,
        watermark: AtomicI64::new(i64::MIN),
        // Until recovery has run, the numbers in the store may lag the log.
        recovering: AtomicBool::new(true),
        ..ProcessorStatus::default()
    });
    // Before the thread: a store built under other settings stops the server from
    // starting, with the changes and what to run, instead of answering from it.
    check_settings(&store, &config)?;
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (status, stop) = (status.clone(), stop.clone());
        std::thread::Builder::new()
            .name("processor".into())
            .spawn(move || {
                let mut processor = match Processor::recover(
                    log, store, config, regions, options, &status,
                ) {
                    Ok(p) => p,
                    Err(error) => {
                        tracing::error!(error = %format!("{error:#}"), "processor could not start");
                        set_error(&status, &error);
                        return;
                    }
                };
                processor.run(&notifier, &stop, &status);
            })?
    };
    Ok(ProcessorHandle {
        status,
        stop,
        thread: Some(thread),
    })
}

/// Compares the settings the store's state was built under with `config`'s; records them
/// when the store has none (new, or written before records existed). A mismatch is an
/// error naming each changed setting, old → new, and saying to run `vedetta replay`.
fn check_settings(store: &KpiStore, config: &PipelineConfig) -> anyhow::Result<()> {
    let defaults = PipelineConfig::settings_of_older_records();
    match store.check_settings(&config.state_settings(), &defaults)? {
        vedetta_store::SettingsCheck::Same => {}
        check => tracing::info!(?check, "recorded the pipeline settings of the state"),
    }
    Ok(())
}

/// Reads from the store the attribution memories of the users in these records whom the
/// pipeline does not hold (users idle for longer than the allowed lateness), for it to
/// recall when they return.
fn recall_memories<'a>(
    pipeline: &mut Pipeline,
    store: &KpiStore,
    records: impl Iterator<Item = &'a LogRecord>,
) -> anyhow::Result<()> {
    let mut users: Vec<UserPseudonym> = records
        .filter_map(|record| match record {
            LogRecord::Event(event) if pipeline.needs_recall(&event.user) => Some(event.user),
            _ => None,
        })
        .collect();
    if users.is_empty() {
        return Ok(());
    }
    users.sort_unstable();
    users.dedup();
    let memories = store
        .read_memories(&users)
        .context("reading the attribution memories of returning users")?;
    pipeline.recall_memories(memories);
    Ok(())
}

fn set_error(status: &ProcessorStatus, error: &anyhow::Error) {
    if let Ok(mut last) = status.last_error.lock() {
        *last = Some(format!("{error:#}"));
    }
}

fn clear_error(status: &ProcessorStatus) {
    if let Ok(mut last) = status.last_error.lock() {
        last.take();
    }
}

/// Whether an error chain holds a full disk.
fn is_storage_full(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<StoreError>()
            .is_some_and(StoreError::is_storage_full)
            || cause
                .downcast_ref::<vedetta_store::LogError>()
                .is_some_and(vedetta_store::LogError::is_storage_full)
    })
}

/// The loop's state.
pub struct Processor {
    log: Arc<EventLog>,
    store: Arc<KpiStore>,
    /// What the pipeline is rebuilt from after a failed commit.
    config: PipelineConfig,
    regions: Option<Arc<dyn RegionLookup>>,
    pipeline: Pipeline,
    options: ProcessorOptions,
    last_durable: Instant,
    last_snapshot: Instant,
    /// How long the last snapshot took to encode and commit.
    last_snapshot_cost: Duration,
    snapshot_offset: u64,
}

impl Processor {
    /// Restores the pipeline from the store's snapshot and replays up to the committed
    /// offset, discarding the changes already stored.
    pub fn recover(
        log: Arc<EventLog>,
        store: Arc<KpiStore>,
        config: PipelineConfig,
        regions: Option<Arc<dyn RegionLookup>>,
        options: ProcessorOptions,
        status: &ProcessorStatus,
    ) -> anyhow::Result<Self> {
        status.recovering.store(true, Ordering::Release);
        check_settings(&store, &config)?;
        let progress = store.progress()?;
        let (mut pipeline, snapshot_offset) = match &progress.snapshot {
            Some((offset, bytes)) => {
                let state = snapshot::decode_snapshot(bytes)
                    .with_context(|| format!("the pipeline snapshot at offset {offset}"))?;
                (
                    Pipeline::restore(config.clone(), regions.clone(), state),
                    *offset,
                )
            }
            None => (Pipeline::new(config.clone(), regions.clone()), 0),
        };
        let started = Instant::now();
        let mut next = pipeline
            .next_offset()
            .max(snapshot_offset)
            .max(log.start_offset());
        while next < progress.processed_offset {
            let records = log
                .read(next, options.max_batch_records)
                .with_context(|| format!("replaying the log from offset {next}"))?;
            let Some(last) = records.last().map(|(o, _)| *o) else {
                anyhow::bail!(
                    "the log ends at {next} but the store has processed up to {}",
                    progress.processed_offset
                );
            };
            recall_memories(&mut pipeline, &store, records.iter().map(|(_, r)| r))?;
            for (offset, record) in records {
                if offset >= progress.processed_offset {
                    break;
                }
                pipeline.process(offset, &record);
            }
            let _already_stored = pipeline.take_deltas();
            next = (last + 1).min(progress.processed_offset);
        }
        if progress.processed_offset > snapshot_offset {
            tracing::info!(
                from = snapshot_offset,
                to = progress.processed_offset,
                ms = started.elapsed().as_millis() as u64,
                "processor recovered state by replaying the log"
            );
        }
        status.recovering.store(false, Ordering::Release);
        if let Ok(stored) = store.stored_memories() {
            status.stored_memories.store(stored, Ordering::Relaxed);
        }
        let processor = Self {
            log,
            store,
            config,
            regions,
            pipeline,
            options,
            last_durable: Instant::now(),
            last_snapshot: Instant::now(),
            last_snapshot_cost: Duration::ZERO,
            snapshot_offset,
        };
        processor.publish(status, progress.processed_offset);
        Ok(processor)
    }

    fn run(&mut self, notifier: &LogNotifier, stop: &AtomicBool, status: &ProcessorStatus) {
        loop {
            if stop.load(Ordering::Acquire) {
                if let Err(error) = self.commit_batch(true, status) {
                    tracing::error!(error = %format!("{error:#}"), "final commit failed");
                }
                return;
            }
            let next = self.pipeline.next_offset();
            if self.log.end_offset() <= next {
                // Idle with progress since the last snapshot: take one now, so that a
                // restart replays nothing and dropped users' attribution memories reach
                // the store without waiting for more traffic.
                if self.snapshot_due() && next > self.snapshot_offset {
                    if let Err(error) = self.commit_batch(true, status) {
                        self.recover_from_failure(&error, stop, status);
                    }
                    continue;
                }
                notifier.wait_past(next, Duration::from_millis(100));
                continue;
            }
            if let Err(error) = self.step(status) {
                self.recover_from_failure(&error, stop, status);
            }
        }
    }

    /// After a failed batch: the pipeline's state has moved past what the store holds (its
    /// changes were taken for the commit that failed), so it is rebuilt the way a restart
    /// rebuilds it — reopen the store (redb refuses every write after an I/O failure until
    /// then), restore the snapshot, replay the log to the committed offset — and the batch
    /// is processed again. Nothing is lost and nothing counted twice, whatever failed and
    /// however often. Tries again with growing pauses (up to 30 s) until it works or the
    /// processor is stopped; the error stays in `/v1/status` meanwhile.
    fn recover_from_failure(
        &mut self,
        error: &anyhow::Error,
        stop: &AtomicBool,
        status: &ProcessorStatus,
    ) {
        status.commit_failures.fetch_add(1, Ordering::Relaxed);
        if is_storage_full(error) {
            status.storage_full_failures.fetch_add(1, Ordering::Relaxed);
        }
        tracing::error!(error = %format!("{error:#}"), "a processor batch failed; recovering");
        set_error(status, error);
        let mut pause = Duration::from_millis(250);
        while !stop.load(Ordering::Acquire) {
            std::thread::sleep(pause);
            match self.rebuild(status) {
                Ok(()) => {
                    status.recoveries.fetch_add(1, Ordering::Relaxed);
                    tracing::info!("processor recovered from the failed batch");
                    return;
                }
                Err(error) => {
                    if is_storage_full(&error) {
                        status.storage_full_failures.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::warn!(error = %format!("{error:#}"), "processor recovery failed; retrying");
                    set_error(status, &error);
                    pause = (pause * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Reopens the store and rebuilds the pipeline from its snapshot and the log.
    fn rebuild(&mut self, status: &ProcessorStatus) -> anyhow::Result<()> {
        self.store
            .recover_storage()
            .context("reopening the KPI store")?;
        // The log shares the disk: its writer may have failed too, and with no new request
        // it would not reopen the file before the replay below needs it.
        self.log
            .recover_storage_if_failed()
            .context("reopening the event log")?;
        let rebuilt = Self::recover(
            self.log.clone(),
            self.store.clone(),
            self.config.clone(),
            self.regions.clone(),
            self.options,
            status,
        )?;
        *self = rebuilt;
        Ok(())
    }

    /// One micro-batch: read, process, commit.
    pub fn step(&mut self, status: &ProcessorStatus) -> anyhow::Result<()> {
        let started = Instant::now();
        // A fresh pipeline over a log whose head was deleted by retention starts at its head.
        let next = self.pipeline.next_offset().max(self.log.start_offset());
        let records = self.log.read_timed(next, self.options.max_batch_records)?;
        recall_memories(
            &mut self.pipeline,
            &self.store,
            records.iter().map(|(_, _, r)| r),
        )?;
        // Records of one log batch share their append time: count them per time.
        let mut appended: Vec<(i64, u64)> = Vec::new();
        for (offset, appended_at, record) in &records {
            self.pipeline.process(*offset, record);
            match appended.last_mut() {
                Some((at, n)) if at == appended_at => *n += 1,
                _ => appended.push((*appended_at, 1)),
            }
        }
        let snapshot_due = self.snapshot_due();
        self.commit_batch(snapshot_due, status)?;
        let timings = &status.timings;
        let now = SystemClock.now_ms();
        for (appended_at, n) in appended {
            let seconds = (now - appended_at).max(0) as f64 / 1000.0;
            timings.end_to_end.observe_n(seconds, n);
            timings.end_to_end_recent.observe_n(now, seconds, n);
        }
        timings
            .processor_batch
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Whether the next commit should carry a snapshot: the interval has passed, and at
    /// least 30 times what the last snapshot cost (so snapshots stay a few percent of the
    /// processor's time however large the state grows).
    fn snapshot_due(&self) -> bool {
        self.last_snapshot.elapsed()
            >= self
                .options
                .snapshot_interval
                .max(self.last_snapshot_cost * 30)
    }

    /// Commits the pending changes with the current offset.
    fn commit_batch(&mut self, snapshot: bool, status: &ProcessorStatus) -> anyhow::Result<()> {
        let started = Instant::now();
        let deltas = self.pipeline.take_deltas();
        let durable = snapshot || self.last_durable.elapsed() >= self.options.durable_interval;
        let mut commit = Commit {
            processed_offset: self.pipeline.next_offset(),
            watermark: self.pipeline.watermark(),
            durable,
            ..Commit::default()
        };
        for (key, change) in deltas.rows {
            let dims = self
                .pipeline
                .dims(key.dims)
                .context("a change refers to unknown dimensions")?;
            commit.rows.push((
                RowKey {
                    granularity: key.granularity,
                    window_start: key.window_start,
                    channel: dims.channel.clone(),
                    campaign: dims.campaign.clone(),
                    device: dims.device.clone(),
                    region: dims.region.clone(),
                },
                change,
            ));
        }
        for (key, micros) in deltas.spend_micros {
            let dims = self
                .pipeline
                .dims(key.channel_campaign)
                .context("a spend change refers to unknown dimensions")?;
            commit.spend.push((
                SpendRowKey {
                    granularity: key.granularity,
                    window_start: key.window_start,
                    channel: dims.channel.clone(),
                    campaign: dims.campaign.clone(),
                },
                micros,
            ));
        }
        if snapshot {
            // The dropped users' memories go to the store with the snapshot taken after
            // them, never between snapshots: a replay from a snapshot must read the store
            // as the first run read it.
            commit.memories = self.pipeline.take_dormant();
            commit.memories_before = self.pipeline.memory_horizon();
            commit.snapshot = Some(
                self.pipeline
                    .encode_snapshot()
                    .context("encoding the pipeline snapshot")?,
            );
        }
        let commit_started = Instant::now();
        self.store.commit(&commit)?;
        status
            .timings
            .store_commit
            .observe(commit_started.elapsed().as_secs_f64());
        if durable {
            self.last_durable = Instant::now();
        }
        if snapshot {
            // Telemetry only: a failed count leaves the last one shown.
            if let Ok(stored) = self.store.stored_memories() {
                status.stored_memories.store(stored, Ordering::Relaxed);
            }
            self.last_snapshot = Instant::now();
            self.last_snapshot_cost = started.elapsed();
            self.snapshot_offset = commit.processed_offset;
        }
        status.commits.fetch_add(1, Ordering::Relaxed);
        clear_error(status);
        self.publish(status, commit.processed_offset);
        Ok(())
    }

    fn publish(&self, status: &ProcessorStatus, processed_offset: u64) {
        status
            .processed_offset
            .store(processed_offset, Ordering::Release);
        status.watermark.store(
            self.pipeline.watermark().unwrap_or(i64::MIN),
            Ordering::Release,
        );
        status
            .snapshot_offset
            .store(self.snapshot_offset, Ordering::Release);
        status
            .active_users
            .store(self.pipeline.active_users() as u64, Ordering::Relaxed);
        status.remembered_event_ids.store(
            self.pipeline.remembered_event_ids() as u64,
            Ordering::Relaxed,
        );
        status
            .remembered_orders
            .store(self.pipeline.remembered_orders() as u64, Ordering::Relaxed);
        status
            .dormant_users
            .store(self.pipeline.dormant_users() as u64, Ordering::Relaxed);
        if let Ok(mut counters) = status.counters.lock() {
            *counters = self.pipeline.counters().clone();
        }
        status.committed.notify_waiters();
    }

    /// Processes everything in the log now, committing as it goes (for `vedetta replay`).
    pub fn catch_up(&mut self, status: &ProcessorStatus) -> anyhow::Result<()> {
        while self.pipeline.next_offset() < self.log.end_offset() {
            self.step(status)?;
        }
        self.commit_batch(true, status)
    }
}
