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
//!
//! A snapshot does not stop the loop: at offset O the state is copied (with the dropped
//! users' memories taken out of it, see [`SnapshotInFlight`]) and the copy is encoded, and
//! written to its file beside the store, on a thread of its own while batches go on; the
//! first commit after that, at some offset P ≥ O, makes it "the snapshot at O" (a pointer
//! to the file) and writes those memories. Until then the
//! store's snapshot, and the log retention that keeps the log from it, stay at the previous
//! one. Only a stop (and the end of `vedetta replay`) encodes on this thread, to leave a
//! snapshot at the last offset.

use crate::act::ActStatus;
use crate::act::stage::StageRunner;
use crate::clock::SystemClock;
use crate::telemetry::StageTimings;
use anyhow::Context;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{self, TryRecvError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use vedetta_core::act::stage::{READ_AHEAD, StageCopy};
use vedetta_core::enrich::RegionLookup;
use vedetta_core::pipeline::attribution::Memories;
use vedetta_core::pipeline::hash::FastHashMap;
use vedetta_core::pipeline::{Pipeline, PipelineConfig, PipelineCounters, SnapshotCopy, snapshot};
use vedetta_core::record::{LogRecord, UserPseudonym};
use vedetta_core::time::Clock;
use vedetta_store::{
    Commit, EventLog, KpiStore, RowKey, SnapshotFile, SnapshotFileWriter, SpendRowKey, StoreError,
};

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
    /// costs time in proportion to the state (the copy on the processor's thread, the
    /// encoding on another); the processor waits at least 30 times as long as the last one
    /// took in all, so snapshots never take more than a few percent of the machine.
    pub snapshot_interval: Duration,
    /// When a snapshot is due: by time (a server's) or by records (a bench's).
    pub snapshot_schedule: SnapshotSchedule,
}

impl Default for ProcessorOptions {
    fn default() -> Self {
        Self {
            max_batch_records: 20_000,
            durable_interval: Duration::from_secs(1),
            snapshot_interval: Duration::from_secs(10),
            snapshot_schedule: SnapshotSchedule::Timed,
        }
    }
}

/// When the processor starts a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotSchedule {
    /// A server's: once `snapshot_interval` has passed and at least 30 times what the last
    /// snapshot cost.
    Timed,
    /// Once this many records were processed past the last snapshot's offset, whatever the
    /// time. For `vedetta bench processor`, whose passes with triggers and without must
    /// snapshot at the same records: a snapshot's copy takes the processor's thread ~3 s
    /// at 4 million users, and where the timed rule puts it depends on how long each
    /// earlier snapshot took, so inside or outside a pass's measured 90 s by chance.
    EveryRecords(std::num::NonZeroU64),
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
    /// Attribution memories of dropped users waiting for the next snapshot (or for the one
    /// being encoded) to reach the store.
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
    stop: Arc<StopRequest>,
    thread: Option<JoinHandle<()>>,
}

/// How the processor thread is asked to end.
#[derive(Debug)]
struct StopRequest {
    requested: AtomicBool,
    /// Whether it commits with a snapshot before it ends (all but a benchmark's pass).
    final_commit: AtomicBool,
}

impl ProcessorHandle {
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// Ends the processor thread without its final commit, as a crash after the last
    /// commit would (a restart replays from there), once a snapshot being written has
    /// been written: when this returns, none of the processor's threads touches its files.
    /// For a benchmark's pass, whose final snapshot (seconds at millions of users) is no
    /// part of its figures and whose directory goes next.
    pub fn stop_without_final_commit(mut self) {
        self.stop.final_commit.store(false, Ordering::Release);
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.requested.store(true, Ordering::Release);
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

/// What the processor thread shares with the rest of the server, beside its log and store:
/// whom it tells about commits, where it reports its stage timings, and the trigger set
/// in force (none in tools that replay without triggers).
pub struct ProcessorLinks {
    pub notifier: Arc<LogNotifier>,
    pub timings: Arc<StageTimings>,
    pub triggers: Option<Arc<ActStatus>>,
}

/// Starts the processor thread.
pub fn start(
    log: Arc<EventLog>,
    store: Arc<KpiStore>,
    config: PipelineConfig,
    regions: Option<Arc<dyn RegionLookup>>,
    options: ProcessorOptions,
    links: ProcessorLinks,
) -> anyhow::Result<ProcessorHandle> {
    let ProcessorLinks {
        notifier,
        timings,
        triggers,
    } = links;
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
    let stop = Arc::new(StopRequest {
        requested: AtomicBool::new(false),
        final_commit: AtomicBool::new(true),
    });
    let thread = {
        let (status, stop) = (status.clone(), stop.clone());
        std::thread::Builder::new()
            .name("processor".into())
            .spawn(move || {
                let mut processor = match Processor::recover(
                    log, store, config, regions, options, &status, triggers,
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
/// recall when they return. `pending` holds memories on their way to the store with a
/// snapshot still being encoded: they are what the store will hold as of that snapshot,
/// so they are read before it, as if already written (see [`SnapshotInFlight`]).
fn recall_memories<'a>(
    pipeline: &mut Pipeline,
    store: &KpiStore,
    pending: Option<&FastHashMap<UserPseudonym, Memories>>,
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
    let mut found = Vec::new();
    if let Some(pending) = pending {
        users.retain(|user| match pending.get(user) {
            Some(memories) => {
                found.push((*user, memories.clone()));
                false
            }
            None => true,
        });
    }
    let stored = store
        .read_memories(&users)
        .context("reading the attribution memories of returning users")?;
    pipeline.recall_memories(found.into_iter().chain(stored));
    Ok(())
}

/// What a commit does about snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SnapshotStep {
    /// Nothing new; a snapshot whose encoding has ended rides on this commit.
    Carry,
    /// As [`Self::Carry`], then copy the state at this commit's offset and encode the copy
    /// on the snapshot thread.
    Start,
    /// Encode the state here and commit it with this commit, durably (a stop, the end of
    /// a replay): the store is left with a snapshot at its processed offset. One still
    /// being encoded is given up; its memories go with this one.
    Now,
}

/// A snapshot being encoded on its own thread, and what must reach the store with it.
///
/// The dropped users' memories go to the store in the commit of the snapshot taken after
/// them, never between snapshots: a replay from a snapshot must read the store as the
/// first run read it. So the memories are taken out of the state when it is copied at
/// `offset` (the copy holds none) and kept here until the commit that carries the
/// snapshot writes them. Meanwhile a returning user's memory is read from here before
/// the store: exactly what the store reads after that commit (these replace older ones
/// there; the memories it would prune by `memories_before` count as none anyway). After a
/// crash before that commit, recovery restores the previous snapshot and the replay keeps
/// these users in the pipeline's own memory instead, which recalls the same memories.
struct SnapshotInFlight {
    /// The log offset the state was copied at: what the snapshot describes.
    offset: u64,
    memories: FastHashMap<UserPseudonym, Memories>,
    memories_before: Option<i64>,
    /// How long copying the state took on the processor's thread, and the trigger
    /// stage's part of it.
    copy_took: Duration,
    stage_copy_took: Duration,
    encoded: mpsc::Receiver<EncodedSnapshot>,
    /// Set once the encoding has ended.
    done: Option<EncodedSnapshot>,
}

/// What the snapshot thread hands back: the snapshot written to its file, and the copies
/// it was encoded from, for the next snapshot to copy into.
struct EncodedSnapshot {
    file: anyhow::Result<SnapshotFile>,
    encode_took: Duration,
    write_took: Duration,
    spent: Option<SpentCopies>,
}

/// The copies of a snapshot whose encoding is done: the next copy is made into their
/// memory ([`Pipeline::snapshot_copy_reusing`]), so that a copy does not make the kernel
/// find and zero fresh pages on the processor's thread (half of a copy's time with a
/// million users held, measured: `docs/benchmarks.md`). They are held between snapshots:
/// memory for one copy, which a snapshot needs at its peak anyway.
struct SpentCopies {
    pipeline: SnapshotCopy,
    stage: Option<StageCopy>,
}

impl SnapshotInFlight {
    /// Copies the pipeline's state (taking the dormant memories out of it first) and
    /// starts encoding the copy on a new thread, which writes it to its file beside the
    /// store (the commit that makes it the store's snapshot then writes a pointer only).
    fn start(
        pipeline: &mut Pipeline,
        stage: Option<&StageRunner>,
        writer: SnapshotFileWriter,
        spare: Option<SpentCopies>,
    ) -> Self {
        let copy_started = Instant::now();
        let memories: FastHashMap<UserPseudonym, Memories> =
            pipeline.take_dormant().into_iter().collect();
        let memories_before = pipeline.memory_horizon();
        let (spare_pipeline, spare_stage) = match spare {
            Some(spare) => (Some(spare.pipeline), spare.stage),
            None => (None, None),
        };
        let state = pipeline.snapshot_copy_reusing(spare_pipeline);
        let stage_copy_started = Instant::now();
        let stage: Option<StageCopy> = stage.map(|stage| stage.copy(spare_stage));
        let stage_copy_took = stage_copy_started.elapsed();
        let copy_took = copy_started.elapsed();
        let offset = pipeline.next_offset();
        let (sender, encoded) = mpsc::sync_channel(1);
        let spawned = std::thread::Builder::new()
            .name("snapshot".into())
            .spawn(move || {
                // Written into its file as it is encoded, never held whole (see
                // `SnapshotCopy::encode_to`); the encoding's time includes handing the
                // bytes to the kernel, the write's is the flush, fsync and rename.
                let started = Instant::now();
                let encoded = writer
                    .begin(offset)
                    .context("writing the pipeline snapshot's file")
                    .and_then(|mut file| {
                        state
                            .encode_to(&mut file)
                            .context("encoding the pipeline snapshot into its file")?;
                        // The trigger stage's part follows the pipeline's.
                        if let Some(stage) = &stage {
                            stage
                                .encode_section_to(&mut file)
                                .context("encoding the trigger stage's snapshot into its file")?;
                        }
                        Ok(file)
                    });
                let encode_took = started.elapsed();
                let written = Instant::now();
                let file = encoded.and_then(|file| {
                    file.finish()
                        .context("writing the pipeline snapshot's file")
                });
                // Given up (a stop, a failure) when the receiver is gone: nothing to do
                // (a file no commit points to is removed after the next snapshot's).
                let _ = sender.send(EncodedSnapshot {
                    file,
                    encode_took,
                    write_took: written.elapsed(),
                    spent: Some(SpentCopies {
                        pipeline: state,
                        stage,
                    }),
                });
            });
        let done = match spawned {
            Ok(_) => None,
            // The commit that would carry it fails instead, and the processor rebuilds its
            // state from the store and the log, with these memories back in it.
            Err(error) => Some(EncodedSnapshot {
                file: Err(anyhow::Error::new(error).context("starting the snapshot thread")),
                encode_took: Duration::ZERO,
                write_took: Duration::ZERO,
                spent: None,
            }),
        };
        Self {
            offset,
            memories,
            memories_before,
            copy_took,
            stage_copy_took,
            encoded,
            done,
        }
    }

    /// Whether the encoding has ended (a thread that ended without an answer counts, as a
    /// failure).
    fn finished(&mut self) -> bool {
        if self.done.is_none() {
            match self.encoded.try_recv() {
                Ok(encoded) => self.done = Some(encoded),
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => {
                    self.done = Some(EncodedSnapshot {
                        file: Err(anyhow::anyhow!(
                            "the snapshot thread ended without a snapshot"
                        )),
                        encode_took: Duration::ZERO,
                        write_took: Duration::ZERO,
                        spent: None,
                    });
                }
            }
        }
        self.done.is_some()
    }
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
    /// Whether a commit since the last durable one was not fsynced: an idle processor
    /// makes it durable once `durable_interval` passed (the trigger router routes only
    /// what is durable, so its outputs would wait for the next traffic).
    undurable: bool,
    last_snapshot: Instant,
    /// How long the last snapshot took: copy, encoding and commit.
    last_snapshot_cost: Duration,
    /// The offset of the store's snapshot.
    snapshot_offset: u64,
    /// A snapshot being encoded off this thread, not in the store yet.
    snapshot_in_flight: Option<SnapshotInFlight>,
    /// The last snapshot's copies, for the next to copy into.
    spare_copies: Option<SpentCopies>,
    /// The trigger stage (`None`: triggers are not run, as in `vedetta replay`).
    triggers: Option<StageRunner>,
    /// What the trigger stage is rebuilt from after a failed commit.
    trigger_status: Option<Arc<ActStatus>>,
    /// The list a step reads records into, kept empty between steps for its memory.
    read_buffer: Vec<(u64, i64, LogRecord)>,
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
        trigger_status: Option<Arc<ActStatus>>,
    ) -> anyhow::Result<Self> {
        status.recovering.store(true, Ordering::Release);
        check_settings(&store, &config)?;
        let progress = store.progress()?;
        let (mut pipeline, snapshot_offset, section) = match &progress.snapshot {
            Some((offset, bytes)) => {
                let (state, rest) = snapshot::decode_snapshot_parts(bytes)
                    .with_context(|| format!("the pipeline snapshot at offset {offset}"))?;
                (
                    Pipeline::restore(config.clone(), regions.clone(), state),
                    *offset,
                    (!rest.is_empty()).then_some(rest),
                )
            }
            None => (Pipeline::new(config.clone(), regions.clone()), 0, None),
        };
        let mut replaying = match &trigger_status {
            Some(triggers) => Some(StageRunner::recover(
                triggers.clone(),
                &config,
                &store,
                section,
                snapshot_offset,
            )?),
            // Without triggers (`vedetta replay`) the stage's part is not read; the snapshot
            // this run writes has none, and the stage starts empty at its offset.
            None => None,
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
            recall_memories(&mut pipeline, &store, None, records.iter().map(|(_, r)| r))?;
            for (offset, record) in records {
                if offset >= progress.processed_offset {
                    break;
                }
                if let Some(stage) = &mut replaying {
                    stage.before(offset)?;
                }
                pipeline.process(offset, &record);
                if let Some(stage) = &mut replaying {
                    stage.after_record(&mut pipeline, &record);
                }
            }
            match &mut replaying {
                Some(stage) => stage.end_batch(&mut pipeline),
                None => {
                    let _already_stored = pipeline.take_deltas();
                }
            }
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
            undurable: false,
            last_snapshot: Instant::now(),
            last_snapshot_cost: Duration::ZERO,
            snapshot_offset,
            snapshot_in_flight: None,
            spare_copies: None,
            triggers: replaying
                .map(|stage| stage.finish(progress.processed_offset))
                .transpose()?,
            trigger_status,
            read_buffer: Vec::new(),
        };
        processor.publish(status, progress.processed_offset);
        Ok(processor)
    }

    fn run(&mut self, notifier: &LogNotifier, stop: &StopRequest, status: &ProcessorStatus) {
        loop {
            if stop.requested.load(Ordering::Acquire) {
                if !stop.final_commit.load(Ordering::Acquire) {
                    // Its thread ends (sending what it wrote, or dropping its sender).
                    if let Some(in_flight) = self.snapshot_in_flight.take() {
                        let _ = in_flight.encoded.recv();
                    }
                    return;
                }
                if let Err(error) = self.commit_batch(SnapshotStep::Now, status) {
                    tracing::error!(error = %format!("{error:#}"), "final commit failed");
                }
                return;
            }
            let next = self.pipeline.next_offset();
            if self.log.end_offset() <= next {
                // Idle with progress since the last snapshot: take one now, so that a
                // restart replays nothing and dropped users' attribution memories reach
                // the store without waiting for more traffic. One that finished encoding
                // is committed without waiting for more traffic either, and so is a
                // commit that is not durable yet.
                let start = self.snapshot_due() && next > self.snapshot_offset;
                let finished = self
                    .snapshot_in_flight
                    .as_mut()
                    .is_some_and(SnapshotInFlight::finished);
                let sync =
                    self.undurable && self.last_durable.elapsed() >= self.options.durable_interval;
                if start || finished || sync {
                    let step = if start {
                        SnapshotStep::Start
                    } else {
                        SnapshotStep::Carry
                    };
                    if let Err(error) = self.commit_batch(step, status) {
                        self.recover_from_failure(&error, &stop.requested, status);
                    }
                    continue;
                }
                notifier.wait_past(next, Duration::from_millis(100));
                continue;
            }
            if let Err(error) = self.step(status) {
                self.recover_from_failure(&error, &stop.requested, status);
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
            self.trigger_status.clone(),
        )?;
        *self = rebuilt;
        Ok(())
    }

    /// One micro-batch: read, process, commit (starting a snapshot when one is due).
    pub fn step(&mut self, status: &ProcessorStatus) -> anyhow::Result<()> {
        let snapshot = if self.snapshot_due() {
            SnapshotStep::Start
        } else {
            SnapshotStep::Carry
        };
        self.step_with(snapshot, status)
    }

    fn step_with(
        &mut self,
        snapshot: SnapshotStep,
        status: &ProcessorStatus,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        // A fresh pipeline over a log whose head was deleted by retention starts at its head.
        let next = self.pipeline.next_offset().max(self.log.start_offset());
        // The list of the last read, emptied: its memory kept (see `read_timed_into`).
        let mut records = std::mem::take(&mut self.read_buffer);
        (self.log).read_timed_into(next, self.options.max_batch_records, &mut records)?;
        recall_memories(
            &mut self.pipeline,
            &self.store,
            self.snapshot_in_flight.as_ref().map(|s| &s.memories),
            records.iter().map(|(_, _, r)| r),
        )?;
        if let Some(stage) = &mut self.triggers {
            stage.batch_start(next);
        }
        // Records of one log batch share their append time: count them per time.
        let mut appended: Vec<(i64, u64)> = Vec::new();
        for (i, (offset, appended_at, record)) in records.iter().enumerate() {
            // Each group's places are asked for as the group before it begins (the first
            // two groups' at the batch's start): asked for as their own group began, a
            // group's first events came right after their places were asked for.
            if let Some(stage) = &self.triggers
                && i % READ_AHEAD == 0
            {
                let groups: &[usize] = if i == 0 {
                    &[0, READ_AHEAD]
                } else {
                    &[i + READ_AHEAD]
                };
                for &from in groups {
                    let group = records.get(from..).unwrap_or_default();
                    (stage.stage).read_ahead(&self.pipeline, group.iter().map(|(_, _, r)| r));
                }
            }
            self.pipeline.process(*offset, record);
            if let Some(stage) = &mut self.triggers {
                stage.after_record(&mut self.pipeline, record);
            }
            match appended.last_mut() {
                Some((at, n)) if at == appended_at => *n += 1,
                _ => appended.push((*appended_at, 1)),
            }
        }
        records.clear();
        self.read_buffer = records;
        self.commit_batch(snapshot, status)?;
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

    /// Whether a snapshot should start after the next commit: none is being encoded, the
    /// interval has passed, and at least 30 times what the last snapshot cost (so snapshots
    /// stay a few percent of the machine's time however large the state grows).
    fn snapshot_due(&self) -> bool {
        self.snapshot_in_flight.is_none()
            && match self.options.snapshot_schedule {
                SnapshotSchedule::Timed => {
                    self.last_snapshot.elapsed()
                        >= (self.options.snapshot_interval).max(self.last_snapshot_cost * 30)
                }
                SnapshotSchedule::EveryRecords(records) => {
                    self.pipeline.next_offset()
                        >= self.snapshot_offset.saturating_add(records.get())
                }
            }
    }

    /// Commits the pending changes with the current offset, and what `snapshot` says.
    fn commit_batch(
        &mut self,
        snapshot: SnapshotStep,
        status: &ProcessorStatus,
    ) -> anyhow::Result<()> {
        let mut staged = Commit::default();
        let deltas = match &mut self.triggers {
            Some(stage) => stage.fill_commit(&mut self.pipeline, &mut staged)?,
            None => self.pipeline.take_deltas(),
        };
        // A snapshot whose encoding has ended rides on this commit (one encoded here
        // instead replaces it).
        let landing = match snapshot {
            SnapshotStep::Now => None,
            SnapshotStep::Carry | SnapshotStep::Start => {
                let finished = self
                    .snapshot_in_flight
                    .as_mut()
                    .is_some_and(SnapshotInFlight::finished);
                if finished {
                    self.snapshot_in_flight.take()
                } else {
                    None
                }
            }
        };
        let durable = snapshot == SnapshotStep::Now
            || landing.is_some()
            || staged.durable
            || self.last_durable.elapsed() >= self.options.durable_interval;
        let mut commit = Commit {
            processed_offset: self.pipeline.next_offset(),
            watermark: self.pipeline.watermark(),
            durable,
            ..staged
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
        for (key, change) in deltas.spend_micros {
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
                change,
            ));
        }
        // What the snapshot cost before the commit (copy, encoding, writing its file), for
        // the log line and the wait before the next one.
        let mut snapshot_work = None;
        if snapshot == SnapshotStep::Now {
            // The dropped users' memories go to the store with the snapshot taken after
            // them, never between snapshots: a replay from a snapshot must read the store
            // as the first run read it. Those of a snapshot given up go too, first (the
            // newer ones replace them).
            let encode_started = Instant::now();
            let mut memories = self
                .snapshot_in_flight
                .take()
                .map(|given_up| given_up.memories)
                .unwrap_or_default();
            memories.extend(self.pipeline.take_dormant());
            commit.memories = memories.into_iter().collect();
            commit.memories_before = self.pipeline.memory_horizon();
            let mut bytes = self
                .pipeline
                .encode_snapshot()
                .context("encoding the pipeline snapshot")?;
            if let Some(stage) = &self.triggers {
                stage
                    .encode_section(&mut bytes)
                    .context("encoding the trigger stage's snapshot")?;
            }
            commit.snapshot = Some(bytes);
            let bytes = commit.snapshot.as_ref().map_or(0, Vec::len) as u64;
            snapshot_work = Some((
                self.pipeline.next_offset(),
                bytes,
                [
                    Duration::ZERO,
                    Duration::ZERO,
                    encode_started.elapsed(),
                    Duration::ZERO,
                ],
            ));
        } else if let Some(landing) = landing {
            let Some(mut encoded) = landing.done else {
                anyhow::bail!("a snapshot committed before its encoding ended");
            };
            self.spare_copies = encoded.spent.take();
            let file = encoded.file?;
            if file.offset != landing.offset {
                anyhow::bail!(
                    "the snapshot copied at offset {} was written as that of {}",
                    landing.offset,
                    file.offset
                );
            }
            commit.snapshot_file = Some(file);
            commit.memories = landing.memories.into_iter().collect();
            commit.memories_before = landing.memories_before;
            snapshot_work = Some((
                file.offset,
                file.len,
                [
                    landing.copy_took,
                    landing.stage_copy_took,
                    encoded.encode_took,
                    encoded.write_took,
                ],
            ));
        }
        let commit_started = Instant::now();
        self.store.commit(&commit)?;
        let commit_took = commit_started.elapsed();
        status
            .timings
            .store_commit
            .observe(commit_took.as_secs_f64());
        if durable {
            self.last_durable = Instant::now();
        }
        self.undurable = !durable;
        if let Some(stage) = &mut self.triggers {
            stage.committed(&commit);
        }
        if let Some((offset, bytes, [copy_took, stage_copy_took, encode_took, write_took])) =
            snapshot_work
        {
            // Telemetry only: a failed count leaves the last one shown.
            if let Ok(stored) = self.store.stored_memories() {
                status.stored_memories.store(stored, Ordering::Relaxed);
            }
            if snapshot == SnapshotStep::Now {
                self.last_snapshot = Instant::now();
            }
            self.last_snapshot_cost = copy_took + encode_took + write_took + commit_took;
            self.snapshot_offset = offset;
            tracing::info!(
                offset,
                committed_at = commit.processed_offset,
                bytes,
                memories = commit.memories.len(),
                copy_ms = copy_took.as_millis() as u64,
                stage_copy_ms = stage_copy_took.as_millis() as u64,
                encode_ms = encode_took.as_millis() as u64,
                write_ms = write_took.as_millis() as u64,
                commit_ms = commit_took.as_millis() as u64,
                on_processor_thread = snapshot == SnapshotStep::Now,
                "pipeline snapshot committed"
            );
        }
        if snapshot == SnapshotStep::Start && self.snapshot_in_flight.is_none() {
            // After the commit: the copy describes exactly the offset just committed.
            self.last_snapshot = Instant::now();
            self.snapshot_in_flight = Some(SnapshotInFlight::start(
                &mut self.pipeline,
                self.triggers.as_ref(),
                self.store.snapshot_file_writer(),
                self.spare_copies.take(),
            ));
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
        let in_flight = self
            .snapshot_in_flight
            .as_ref()
            .map_or(0, |s| s.memories.len());
        status.dormant_users.store(
            (self.pipeline.dormant_users() + in_flight) as u64,
            Ordering::Relaxed,
        );
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
        self.commit_batch(SnapshotStep::Now, status)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use vedetta_core::pipeline::windows::Granularity;
    use vedetta_core::record::{EventKind, StoredEvent, encode_batch};
    use vedetta_core::time::EventTime;
    use vedetta_store::{EncodedBatch, RowKey};

    const T0: i64 = 1_712_318_400_000; // 2024-04-05T12:00:00Z
    const DAY: i64 = 86_400_000;
    const RETURNING: u8 = 20;

    fn hit(user: u8, kind: EventKind, ts: i64, channel: Option<&str>) -> LogRecord {
        let purchase = kind == EventKind::Purchase;
        LogRecord::Event(StoredEvent {
            value: purchase.then_some(25.0),
            order_id: purchase.then(|| format!("o-{user}-{ts}")),
            channel: channel.map(String::from),
            campaign: channel.map(|_| "news".to_string()),
            device: Some("mobile".into()),
            region: Some("Lombardia".into()),
            ..StoredEvent::bare(UserPseudonym([user; 16]), kind, EventTime(ts))
        })
    }

    /// Another user's events a long way on: everyone else's sessions become final and
    /// their users are dropped, their memories kept as dormant.
    fn pass_time(to: i64) -> Vec<LogRecord> {
        vec![
            hit(99, EventKind::PageView, to, None),
            hit(99, EventKind::AddToCart, to + 1, None),
        ]
    }

    /// Three parts of traffic. `landed`: users land from email, then are dropped; at its end
    /// the dormant memories are many. `returned`: they come back direct and buy (their
    /// purchases are credited to email through those memories). `later`: time moves on.
    fn traffic() -> [Vec<LogRecord>; 3] {
        let mut landed: Vec<LogRecord> = (1..=RETURNING)
            .map(|u| hit(u, EventKind::PageView, T0 + i64::from(u), Some("email")))
            .collect();
        landed.extend(pass_time(T0 + DAY));
        let mut returned = Vec::new();
        for u in 1..=RETURNING {
            let at = T0 + 2 * DAY + i64::from(u) * 1_000;
            returned.push(hit(u, EventKind::PageView, at, None));
            returned.push(hit(u, EventKind::Purchase, at + 500, None));
        }
        let mut later = pass_time(T0 + 3 * DAY);
        later.push(hit(
            RETURNING + 1,
            EventKind::Purchase,
            T0 + 3 * DAY + 9,
            None,
        ));
        later.extend(pass_time(T0 + 4 * DAY));
        [landed, returned, later]
    }

    struct Setup {
        _dir: tempfile::TempDir,
        log: Arc<EventLog>,
        store: Arc<KpiStore>,
        status: ProcessorStatus,
    }

    impl Setup {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let (log, _) = EventLog::open(&dir.path().join("log.redb"), 10).unwrap();
            let store = KpiStore::open(&dir.path().join("kpis.redb")).unwrap();
            Self {
                _dir: dir,
                log: Arc::new(log),
                store: Arc::new(store),
                status: ProcessorStatus::default(),
            }
        }

        fn append(&self, records: &[LogRecord]) {
            let batch = EncodedBatch {
                bytes: encode_batch(records, T0, 0),
                count: records.len() as u32,
            };
            self.log.append_group(&[&batch], &[]).unwrap();
        }

        /// A processor as a (re)start makes it: from the store's snapshot and the log.
        /// Snapshots start only when a test asks.
        fn processor(&self) -> Processor {
            self.processor_with(ProcessorOptions {
                max_batch_records: 1_000,
                durable_interval: Duration::from_secs(1),
                snapshot_interval: Duration::from_secs(3_600),
                snapshot_schedule: SnapshotSchedule::Timed,
            })
        }

        fn processor_with(&self, options: ProcessorOptions) -> Processor {
            Processor::recover(
                self.log.clone(),
                self.store.clone(),
                PipelineConfig::default(),
                None,
                options,
                &self.status,
                None,
            )
            .unwrap()
        }

        fn step(&self, processor: &mut Processor, snapshot: SnapshotStep) {
            processor.step_with(snapshot, &self.status).unwrap();
        }

        fn rows(&self) -> Vec<(RowKey, vedetta_core::pipeline::kpi::KpiCounters)> {
            [Granularity::Minute, Granularity::Hour, Granularity::Day]
                .into_iter()
                .flat_map(|g| self.store.rows(g, T0 - DAY, T0 + 10 * DAY).unwrap())
                .collect()
        }

        fn email_conversions(&self) -> i64 {
            self.store
                .rows(Granularity::Day, T0 - DAY, T0 + 10 * DAY)
                .unwrap()
                .iter()
                .filter(|(key, _)| key.channel == "email")
                .map(|(_, counters)| counters.conversions)
                .sum()
        }
    }

    /// The same log processed without a snapshot or a restart.
    fn uninterrupted() -> Setup {
        let setup = Setup::new();
        for part in traffic() {
            setup.append(&part);
        }
        let mut processor = setup.processor();
        processor.catch_up(&setup.status).unwrap();
        setup
    }

    /// The encoding of a snapshot in flight, held back from the processor until a test
    /// releases it (however fast the thread is).
    struct HeldEncoding {
        thread: mpsc::Receiver<EncodedSnapshot>,
        processor: mpsc::SyncSender<EncodedSnapshot>,
    }

    impl HeldEncoding {
        fn release(self) {
            let encoded = self.thread.recv().unwrap();
            assert!(encoded.file.is_ok());
            self.processor.send(encoded).unwrap();
        }
    }

    /// Up to the snapshot copied at the end of `landed` and the returning users' batch
    /// (processed while it is encoded: they are recalled from the memories it carries).
    fn through_a_snapshot_in_flight(setup: &Setup) -> (Processor, HeldEncoding) {
        let [landed, returned, _] = traffic();
        let mut processor = setup.processor();
        setup.append(&landed);
        setup.step(&mut processor, SnapshotStep::Start);
        let in_flight = processor.snapshot_in_flight.as_mut().expect("started");
        let (sender, receiver) = mpsc::sync_channel(1);
        let held = HeldEncoding {
            thread: std::mem::replace(&mut in_flight.encoded, receiver),
            processor: sender,
        };
        assert_eq!(in_flight.offset, landed.len() as u64);
        assert_eq!(
            in_flight.memories.len(),
            usize::from(RETURNING),
            "the dropped users' memories went with the copy"
        );
        assert_eq!(processor.pipeline.dormant_users(), 0);
        setup.append(&returned);
        setup.step(&mut processor, SnapshotStep::Carry);
        assert!(processor.snapshot_in_flight.is_some(), "still encoding");
        assert_eq!(setup.store.progress().unwrap().snapshot, None);
        assert_eq!(
            setup.status.dormant_users.load(Ordering::Relaxed),
            u64::from(RETURNING),
            "the memories still wait for the store"
        );
        (processor, held)
    }

    /// Stage 6 of issue 12: a snapshot encoded off the processor's thread, committed with
    /// a later batch as the snapshot of the offset it was copied at, then a crash: the
    /// restart restores it, replays the log from its offset (reading the memories committed
    /// with it), and ends with the KPIs of a run with no snapshot and no crash.
    #[test]
    fn a_snapshot_encoded_off_thread_then_a_crash_gives_the_uninterrupted_kpis() {
        let straight = uninterrupted();
        assert_eq!(
            straight.email_conversions(),
            i64::from(RETURNING),
            "direct returns credited to email: the memories were used"
        );

        let setup = Setup::new();
        let [landed, returned, later] = traffic();
        let (mut processor, held) = through_a_snapshot_in_flight(&setup);
        held.release();
        // The next commit carries it, whatever it holds.
        setup.append(&later[..2]);
        setup.step(&mut processor, SnapshotStep::Carry);
        assert!(processor.snapshot_in_flight.is_none(), "committed");
        let progress = setup.store.progress().unwrap();
        let processed = (landed.len() + returned.len() + 2) as u64;
        assert_eq!(progress.processed_offset, processed);
        assert_eq!(
            progress.snapshot.as_ref().map(|(offset, _)| *offset),
            Some(landed.len() as u64),
            "the snapshot of the offset it was copied at"
        );
        assert_eq!(setup.store.stored_memories().unwrap(), u64::from(RETURNING));
        assert_eq!(setup.status.snapshot_offset.load(Ordering::Acquire), 22);

        // Crash: the state goes without a final commit; a restart replays 22..processed.
        drop(processor);
        let mut processor = setup.processor();
        assert_eq!(processor.pipeline.next_offset(), processed);
        assert_eq!(processor.snapshot_offset, landed.len() as u64);
        setup.append(&later[2..]);
        processor.catch_up(&setup.status).unwrap();
        assert_eq!(setup.email_conversions(), i64::from(RETURNING));
        assert_eq!(setup.rows(), straight.rows());
    }

    /// Snapshots by records (the bench's schedule): each starts after the first batch that
    /// begins at least that many records past the last snapshot's offset, whatever the
    /// time (the interval here is an hour), so a run over the same log snapshots at the
    /// same records however fast it goes.
    #[test]
    fn snapshots_every_so_many_records_start_at_the_same_records_whatever_the_time() {
        let setup = Setup::new();
        let records: Vec<LogRecord> = (0..130u8)
            .map(|u| hit(u, EventKind::PageView, T0 + i64::from(u), Some("email")))
            .collect();
        setup.append(&records);
        let mut processor = setup.processor_with(ProcessorOptions {
            max_batch_records: 10,
            durable_interval: Duration::from_secs(3_600),
            snapshot_interval: Duration::from_secs(3_600),
            snapshot_schedule: SnapshotSchedule::EveryRecords(25.try_into().unwrap()),
        });
        let mut started = Vec::new();
        while processor.pipeline.next_offset() < setup.log.end_offset() {
            processor.step(&setup.status).unwrap();
            if let Some(in_flight) = processor.snapshot_in_flight.as_mut() {
                if started.last() != Some(&in_flight.offset) {
                    started.push(in_flight.offset);
                }
                // Let the encoding end, so the next commit lands it.
                while !in_flight.finished() {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        // Due from 25 (seen by the batch that begins at 30), 40 + 25 (at 70), 80 + 25.
        assert_eq!(started, [40, 80, 120]);
        assert_eq!(processor.snapshot_offset, 120, "landed with the last batch");
    }

    /// A crash while the snapshot is still being encoded: the store's snapshot is the one
    /// before (none here), and the replay keeps the dropped users in the pipeline's own
    /// memory, which recalls what the first run read from the snapshot in flight.
    #[test]
    fn a_crash_before_the_snapshot_in_flight_is_committed_replays_from_the_one_before() {
        let straight = uninterrupted();
        let setup = Setup::new();
        let [landed, returned, later] = traffic();
        let (processor, _held) = through_a_snapshot_in_flight(&setup);
        drop(processor);
        let progress = setup.store.progress().unwrap();
        assert_eq!(
            progress.processed_offset,
            (landed.len() + returned.len()) as u64
        );
        assert_eq!(progress.snapshot, None);
        assert_eq!(setup.store.stored_memories().unwrap(), 0);
        let mut processor = setup.processor();
        assert_eq!(processor.snapshot_offset, 0);
        assert_eq!(processor.pipeline.next_offset(), progress.processed_offset);
        setup.append(&later);
        processor.catch_up(&setup.status).unwrap();
        assert_eq!(setup.rows(), straight.rows());
        assert_eq!(setup.email_conversions(), i64::from(RETURNING));
    }

    /// A stop while a snapshot is encoded gives it up and commits one of the last offset
    /// here, with its memories and the newer ones.
    #[test]
    fn a_stop_during_an_encoding_commits_a_snapshot_of_the_last_offset() {
        let setup = Setup::new();
        let [landed, returned, later] = traffic();
        let (mut processor, _held) = through_a_snapshot_in_flight(&setup);
        setup.append(&later);
        setup.step(&mut processor, SnapshotStep::Carry);
        processor
            .commit_batch(SnapshotStep::Now, &setup.status)
            .unwrap();
        assert!(processor.snapshot_in_flight.is_none());
        let end = (landed.len() + returned.len() + later.len()) as u64;
        let progress = setup.store.progress().unwrap();
        assert_eq!(progress.processed_offset, end);
        assert_eq!(progress.snapshot.map(|(offset, _)| offset), Some(end));
        // The returning users, dropped again by the later traffic, still remember email.
        assert_eq!(setup.store.stored_memories().unwrap(), u64::from(RETURNING));
    }

    /// One e-mail page view at `T0` from each of `n` users, whose pseudonyms differ from
    /// those of other calls with another `fill` byte.
    fn page_views_of_users(n: u32, fill: u8) -> Vec<LogRecord> {
        (0..n)
            .map(|n| {
                let mut id = [fill; 16];
                id[..4].copy_from_slice(&n.to_le_bytes());
                LogRecord::Event(StoredEvent {
                    channel: Some("email".into()),
                    ..StoredEvent::bare(UserPseudonym(id), EventKind::PageView, EventTime(T0))
                })
            })
            .collect()
    }

    /// The snapshot thread held the store (an `Arc<KpiStore>`, for its path): after a stop
    /// during an encoding the process could end with the redb file still open, unclosed,
    /// and redb repairs such a file (a walk of all of it) at the next start; in a process
    /// that goes on, the store could not be opened again until the thread ended.
    #[test]
    fn the_snapshot_thread_does_not_hold_the_store_open() {
        let setup = Setup::new();
        let users = page_views_of_users(30_000, 7);
        setup.append(&users);
        let mut processor = setup.processor();
        while processor.pipeline.next_offset() < setup.log.end_offset() {
            setup.step(&mut processor, SnapshotStep::Carry);
        }
        let held = Arc::strong_count(&setup.store);
        processor
            .commit_batch(SnapshotStep::Start, &setup.status)
            .unwrap();
        assert!(processor.snapshot_in_flight.is_some(), "encoding");
        assert_eq!(
            Arc::strong_count(&setup.store),
            held,
            "the snapshot thread holds the store"
        );
    }

    /// A benchmark's pass ends its processor without a final commit and removes the
    /// directory right after: an idle processor starts a snapshot once it has caught up,
    /// and its thread wrote the file into a directory being removed (`Directory not empty`
    /// in CI). When `stop_without_final_commit` returns, that thread is done with its
    /// file: the directory holds what it will hold, and is removed whole.
    #[test]
    fn a_stop_without_final_commit_leaves_no_writer_in_the_directory() {
        // Enough users for the snapshot to be encoded still when the stop comes.
        let users = page_views_of_users(100_000, 9);
        let setup = Setup::new();
        setup.append(&users);
        let notifier = Arc::new(LogNotifier::default());
        let handle = start(
            setup.log.clone(),
            setup.store.clone(),
            PipelineConfig::default(),
            None,
            ProcessorOptions {
                max_batch_records: 200_000,
                snapshot_schedule: SnapshotSchedule::EveryRecords(1_000.try_into().unwrap()),
                ..ProcessorOptions::default()
            },
            ProcessorLinks {
                notifier: notifier.clone(),
                timings: Arc::new(StageTimings::default()),
                triggers: None,
            },
        )
        .unwrap();
        notifier.appended(setup.log.end_offset());
        let deadline = Instant::now() + Duration::from_secs(120);
        while handle.status.processed_offset.load(Ordering::Acquire) < users.len() as u64 {
            assert!(Instant::now() < deadline, "the processor never caught up");
            std::thread::sleep(Duration::from_millis(1));
        }
        handle.stop_without_final_commit();
        let listing = || {
            let mut names: Vec<_> = std::fs::read_dir(setup._dir.path())
                .unwrap()
                .map(|entry| entry.unwrap().file_name())
                .collect();
            names.sort();
            names
        };
        let stopped = listing();
        std::thread::sleep(Duration::from_secs(2));
        assert_eq!(listing(), stopped, "a thread of the processor still writes");
        let progress = setup.store.progress().unwrap();
        assert_eq!(progress.processed_offset, users.len() as u64);
        let Setup { _dir: dir, .. } = setup;
        dir.close().unwrap();
    }

    /// Users back direct, days on, a second time.
    fn returning_again(at: i64) -> Vec<LogRecord> {
        let mut records = Vec::new();
        for u in 1..=RETURNING {
            let at = at + i64::from(u) * 1_000;
            records.push(hit(u, EventKind::PageView, at, None));
            records.push(hit(u, EventKind::Purchase, at + 500, None));
        }
        records.extend(pass_time(at + 2 * DAY));
        records
    }

    /// The memories rule with a user dropped twice: recalled from the snapshot in flight,
    /// dropped again (dormant in the state) before that snapshot lands, a crash after it
    /// lands and before the next one, and a second return after the restart. The restart
    /// reads what the landed snapshot wrote (the older memory) while the first run held
    /// the newer one in its state: the KPIs must still be those of an uninterrupted run.
    #[test]
    fn a_user_dropped_twice_around_a_snapshot_in_flight_and_a_crash_counts_as_uninterrupted() {
        let [landed, returned, later] = traffic();
        let again = returning_again(T0 + 6 * DAY);
        let straight = Setup::new();
        for part in [&landed, &returned, &later, &again] {
            straight.append(part);
        }
        straight.processor().catch_up(&straight.status).unwrap();
        assert_eq!(
            straight.email_conversions(),
            2 * i64::from(RETURNING),
            "both returns credited to email"
        );

        let setup = Setup::new();
        let (mut processor, held) = through_a_snapshot_in_flight(&setup);
        // Dropped again while the snapshot is still encoded.
        setup.append(&later);
        setup.step(&mut processor, SnapshotStep::Carry);
        assert_eq!(processor.pipeline.dormant_users(), usize::from(RETURNING));
        held.release();
        setup.append(&again[..2]);
        setup.step(&mut processor, SnapshotStep::Carry);
        assert!(processor.snapshot_in_flight.is_none(), "landed");
        assert_eq!(
            setup.store.progress().unwrap().snapshot.map(|(o, _)| o),
            Some(landed.len() as u64)
        );
        // Crash before the next snapshot; the restart replays from the landed one.
        drop(processor);
        let mut processor = setup.processor();
        setup.append(&again[2..]);
        processor.catch_up(&setup.status).unwrap();
        assert_eq!(setup.email_conversions(), 2 * i64::from(RETURNING));
        assert_eq!(setup.rows(), straight.rows());
    }

    /// Users who may be sent (marketing consent), the traffic of [`traffic`].
    fn consenting(records: Vec<LogRecord>) -> Vec<LogRecord> {
        records
            .into_iter()
            .map(|record| match record {
                LogRecord::Event(mut event) => {
                    event.consent.marketing = Some(true);
                    LogRecord::Event(event)
                }
                other => other,
            })
            .collect()
    }

    fn trigger_set(toml: &str) -> vedetta_core::act::stage::TriggerSet {
        let file: crate::act::config::TriggersFile = toml::from_str(toml).unwrap();
        let push: std::collections::BTreeSet<String> = ["hook".to_string()].into();
        let triggers =
            vedetta_core::act::triggers::check_triggers(&file.triggers, &push, &push).unwrap();
        vedetta_core::act::stage::TriggerSet {
            raw: file.triggers,
            triggers,
        }
    }

    const FEED: &str = r#"
        [[triggers]]
        name = "feed"
        kind = "conversion_feed"
        notify = ["hook"]
    "#;

    /// The set put in force before the third part: a VIP tag too.
    const FEED_AND_VIP: &str = r#"
        [[triggers]]
        name = "feed"
        kind = "conversion_feed"
        notify = ["hook"]

        [[triggers]]
        name = "vip"
        kind = "tag"
        tag = "vip"
        on = "purchase_over"
        min_value = 10
        notify = ["hook"]
    "#;

    fn staged(setup: &Setup) -> Vec<(u64, vedetta_core::act::stage::StagedOutput)> {
        (setup.store.read_outputs(0, usize::MAX).unwrap().into_iter())
            .map(|(seq, bytes)| {
                let output = vedetta_core::act::stage::StagedOutput::decode(&bytes).unwrap();
                (seq, output)
            })
            .collect()
    }

    /// The trigger stage in the processor: a run with a snapshot, a crash after a set
    /// change and a restart stages exactly the outputs (same seqs, same bytes) of a run
    /// straight through; the replay after the crash stages nothing twice.
    #[test]
    fn a_crash_after_a_trigger_set_change_stages_the_uninterrupted_outputs() {
        let [landed, returned, later] = traffic().map(consenting);
        // After the crash: purchases of returning users (first VIP tags), and one more of
        // the user tagged VIP in `later`, within the tag's cooldown (no second tag, as long
        // as the replay put the recorded set in force where it first was).
        let after = consenting(
            (1..=5)
                .chain([RETURNING + 1])
                .map(|u| {
                    hit(
                        u,
                        EventKind::Purchase,
                        T0 + 3 * DAY + 3_600_000 + i64::from(u),
                        None,
                    )
                })
                .collect(),
        );
        let with_triggers = |setup: &Setup, status: &Arc<ActStatus>| {
            Processor::recover(
                setup.log.clone(),
                setup.store.clone(),
                PipelineConfig::default(),
                None,
                ProcessorOptions {
                    max_batch_records: 7,
                    durable_interval: Duration::from_secs(3_600),
                    snapshot_interval: Duration::from_secs(3_600),
                    snapshot_schedule: SnapshotSchedule::Timed,
                },
                &setup.status,
                Some(status.clone()),
            )
            .unwrap()
        };

        let straight = Setup::new();
        let status = Arc::new(ActStatus::new(trigger_set(FEED), 0));
        let mut processor = with_triggers(&straight, &status);
        straight.append(&landed);
        straight.append(&returned);
        processor.catch_up(&straight.status).unwrap();
        status.put_in_force(trigger_set(FEED_AND_VIP), 0);
        straight.append(&later);
        processor.catch_up(&straight.status).unwrap();
        straight.append(&after);
        processor.catch_up(&straight.status).unwrap();
        let expected = staged(&straight);
        let decoded: Vec<&vedetta_core::act::stage::StagedOutput> =
            expected.iter().map(|(_, output)| output).collect();
        assert!(
            decoded.iter().filter(|o| o.trigger == "feed").count() > usize::from(RETURNING),
            "{decoded:?}"
        );
        let vip: Vec<Option<UserPseudonym>> = (decoded.iter())
            .filter(|o| o.trigger == "vip")
            .map(|o| o.user)
            .collect();
        assert_eq!(vip.len(), 6, "{decoded:?}");
        assert_eq!(
            vip.iter()
                .filter(|u| **u == Some(UserPseudonym([RETURNING + 1; 16])))
                .count(),
            1
        );
        let seqs: Vec<u64> = expected.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, (0..expected.len() as u64).collect::<Vec<_>>());

        let setup = Setup::new();
        let status = Arc::new(ActStatus::new(trigger_set(FEED), 0));
        let mut processor = with_triggers(&setup, &status);
        setup.append(&landed);
        setup.step(&mut processor, SnapshotStep::Now);
        setup.append(&returned);
        processor.catch_up(&setup.status).unwrap();
        status.put_in_force(trigger_set(FEED_AND_VIP), 0);
        setup.append(&later);
        // Part of the last part, then a crash: the restart replays from the snapshot
        // taken after `returned` (catch_up's), through the recorded set change.
        setup.step(&mut processor, SnapshotStep::Carry);
        drop(processor);
        let mut processor = with_triggers(&setup, &status);
        setup.append(&after);
        processor.catch_up(&setup.status).unwrap();
        assert_eq!(staged(&setup), expected);
        assert_eq!(setup.store.output_seqs().unwrap().0, expected.len() as u64);
    }
}
