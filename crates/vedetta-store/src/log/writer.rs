//! Group commit: many concurrent appends, one transaction and one fsync.
//!
//! Intake requests hand their encoded batch to one writer thread and wait for a completion
//! callback. The thread takes everything queued since its last commit, writes it in one
//! transaction and fsyncs once, then completes every request of the group. Under load, the
//! fsync cost is shared by all the requests that arrived during the previous one; with a
//! single client it is an ordinary synchronous commit.
//!
//! Memory stays bounded: the queue holds at most `max_pending_records` records. A request
//! that would exceed it is refused at once with [`AppendError::Backpressure`] (HTTP 503
//! with `Retry-After`), instead of waiting in an unbounded line.
//!
//! Contract of the completion callback: called exactly once per accepted submission, from
//! the writer thread, after the commit succeeded (`Ok(range)`) or failed
//! (`Err(AppendFailure)`). On failure nothing of the group was stored, so the client may
//! safely retry.
//!
//! A failed commit does not stop the writer. redb refuses every write after an I/O failure
//! until the file is reopened, so the writer reopens it ([`EventLog::recover_storage`])
//! before its next commit, and keeps trying with each new group: once space is freed on a
//! full disk, intake resumes by itself, no restart needed. Meanwhile every request is
//! answered at once with the reason (a full disk is told apart), never left waiting. A
//! commit that reports an error is checked against the reopened file before it is called
//! failed (see `settle_failed_append`).

use super::{EncodedBatch, EventLog};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;

/// The result handed to a completion callback.
pub type AppendOutcome = Result<Range<u64>, AppendFailure>;

/// Why a group's commit failed, and what is known of what it left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendFailure {
    pub reason: String,
    /// The disk is full: retrying helps once someone frees space (HTTP 507).
    pub storage_full: bool,
    pub stored: Stored,
}

/// Whether a failed group reached the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Checked after reopening the file: nothing of the group is in the log.
    No,
    /// The file could not be reopened to check. Resending is still safe for events: an
    /// exact resend is a duplicate by its `event_id`, or by user, type and time.
    Unknown,
}

type Completion = Box<dyn FnOnce(AppendOutcome) + Send>;

struct Request {
    batch: EncodedBatch,
    quarantine: Vec<String>,
    done: Completion,
}

/// Bounds of the writer.
#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    /// Most records queued but not yet committed, across all requests.
    pub max_pending_records: usize,
    /// Most records written in one transaction; the rest wait for the next one.
    pub max_group_records: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            max_pending_records: 500_000,
            max_group_records: 100_000,
        }
    }
}

/// Why a submission was not queued.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AppendError {
    #[error("the log is over its backpressure bound ({pending} records waiting); retry shortly")]
    Backpressure { pending: usize },
    #[error("the log writer has stopped")]
    Closed,
}

/// Counters for telemetry.
#[derive(Debug, Default)]
pub struct WriterCounters {
    /// Transactions committed (each one fsync).
    pub commits: AtomicU64,
    /// Requests completed successfully.
    pub requests: AtomicU64,
    /// Commits that failed.
    pub failures: AtomicU64,
    /// Commits that failed because the disk was full.
    pub storage_full_failures: AtomicU64,
}

/// Handle to the writer thread. Dropping it (or [`GroupCommitWriter::shutdown`]) lets the
/// thread commit what is queued and stop.
#[derive(Debug)]
pub struct GroupCommitWriter {
    queue: Option<SyncSender<Request>>,
    pending: Arc<AtomicUsize>,
    config: WriterConfig,
    counters: Arc<WriterCounters>,
    thread: Option<JoinHandle<()>>,
}

impl GroupCommitWriter {
    /// Starts the writer thread. `on_commit` is called after every successful commit with
    /// the new end offset (to wake readers).
    pub fn spawn(
        log: Arc<EventLog>,
        config: WriterConfig,
        on_commit: impl Fn(u64) + Send + 'static,
    ) -> std::io::Result<Self> {
        // The channel's own bound is a backstop; the record budget below is the real one.
        let (queue, requests) = mpsc::sync_channel(4096);
        let pending = Arc::new(AtomicUsize::new(0));
        let counters = Arc::new(WriterCounters::default());
        let thread = {
            let (pending, counters) = (pending.clone(), counters.clone());
            std::thread::Builder::new()
                .name("log-writer".into())
                .spawn(move || run(&log, &requests, config, &pending, &counters, on_commit))?
        };
        Ok(Self {
            queue: Some(queue),
            pending,
            config,
            counters,
            thread: Some(thread),
        })
    }

    /// Queues a batch (and quarantine entries) for the next group commit.
    pub fn submit(
        &self,
        batch: EncodedBatch,
        quarantine: Vec<String>,
        done: impl FnOnce(AppendOutcome) + Send + 'static,
    ) -> Result<(), AppendError> {
        let queue = self.queue.as_ref().ok_or(AppendError::Closed)?;
        let count = batch.count as usize;
        let before = self.pending.fetch_add(count, Ordering::AcqRel);
        if before > 0 && before + count > self.config.max_pending_records {
            self.pending.fetch_sub(count, Ordering::AcqRel);
            return Err(AppendError::Backpressure { pending: before });
        }
        let request = Request {
            batch,
            quarantine,
            done: Box::new(done),
        };
        queue.try_send(request).map_err(|error| {
            self.pending.fetch_sub(count, Ordering::AcqRel);
            match error {
                TrySendError::Full(_) => AppendError::Backpressure { pending: before },
                TrySendError::Disconnected(_) => AppendError::Closed,
            }
        })
    }

    /// Records queued and not yet committed.
    pub fn pending_records(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    pub fn counters(&self) -> &WriterCounters {
        &self.counters
    }

    /// Commits what is queued, then stops the thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for GroupCommitWriter {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(
    log: &EventLog,
    requests: &Receiver<Request>,
    config: WriterConfig,
    pending: &AtomicUsize,
    counters: &WriterCounters,
    on_commit: impl Fn(u64),
) {
    let mut needs_reopen = false;
    // Blocks for the first request of a group; ends when every sender is gone and the
    // queue is drained.
    while let Ok(first) = requests.recv() {
        let mut group_records = first.batch.count as usize;
        let mut group = vec![first];
        while group_records < config.max_group_records {
            match requests.try_recv() {
                Ok(request) => {
                    group_records += request.batch.count as usize;
                    group.push(request);
                }
                Err(_) => break,
            }
        }
        let batches: Vec<&EncodedBatch> = group.iter().map(|r| &r.batch).collect();
        let quarantine: Vec<&str> = group
            .iter()
            .flat_map(|r| r.quarantine.iter().map(String::as_str))
            .collect();
        let group_start = log.end_offset();
        let result = if needs_reopen {
            log.recover_storage().and_then(|()| {
                needs_reopen = false;
                log.append_group(&batches, &quarantine)
            })
        } else {
            log.append_group(&batches, &quarantine)
        };
        let result = match result {
            Ok(ranges) => Ok(ranges),
            Err(error) => {
                let (settled, reopened) = settle_failed_append(log, &error, group_start, &batches);
                needs_reopen = !reopened;
                settled
            }
        };
        pending.fetch_sub(group_records, Ordering::AcqRel);
        match result {
            Ok(ranges) => {
                counters.commits.fetch_add(1, Ordering::Relaxed);
                counters
                    .requests
                    .fetch_add(group.len() as u64, Ordering::Relaxed);
                on_commit(log.end_offset());
                for (request, range) in group.into_iter().zip(ranges) {
                    (request.done)(Ok(range));
                }
            }
            Err(failure) => {
                counters.failures.fetch_add(1, Ordering::Relaxed);
                if failure.storage_full {
                    counters
                        .storage_full_failures
                        .fetch_add(1, Ordering::Relaxed);
                }
                for request in group {
                    (request.done)(Err(failure.clone()));
                }
            }
        }
    }
}

/// Finds out what a failed commit left behind. redb can report an error after the commit
/// reached the disk (a failure in a later step), so "failed" must not be taken to mean
/// "not stored": that would refuse a request whose events are in the log, and the client's
/// retry would store them twice. The file is reopened (redb refuses everything after an I/O
/// error until then) and its end offset read back: at the group's end, the group is stored
/// and its requests succeed; at the group's start, nothing of it is. When the file cannot
/// be reopened within about two seconds, the outcome is unknown and said to be.
///
/// Returns the settled result and whether the file was reopened.
fn settle_failed_append(
    log: &EventLog,
    error: &super::LogError,
    group_start: u64,
    batches: &[&EncodedBatch],
) -> (Result<Vec<Range<u64>>, AppendFailure>, bool) {
    let storage_full = error.is_storage_full();
    let mut pause = std::time::Duration::from_millis(50);
    for _ in 0..6 {
        if log.recover_storage().is_ok() {
            let stored_end = log.end_offset();
            let ranges = ranges_from(group_start, batches);
            let group_end = ranges.last().map_or(group_start, |r| r.end);
            let settled = if stored_end == group_end && group_end > group_start {
                Ok(ranges)
            } else {
                Err(AppendFailure {
                    reason: error.to_string(),
                    storage_full,
                    stored: Stored::No,
                })
            };
            return (settled, true);
        }
        std::thread::sleep(pause);
        pause *= 2;
    }
    let failure = AppendFailure {
        reason: format!("{error}; the log could not be reopened to check what was stored"),
        storage_full,
        stored: Stored::Unknown,
    };
    (Err(failure), false)
}

/// The offset range of each batch of a group appended at `start`, in order (what
/// [`EventLog::append_group`] returns when it succeeds).
fn ranges_from(start: u64, batches: &[&EncodedBatch]) -> Vec<Range<u64>> {
    let mut next = start;
    batches
        .iter()
        .map(|batch| {
            let range = next..next + u64::from(batch.count);
            next = range.end;
            range
        })
        .collect()
}
