//! The outbox sender: a tokio task that drains the durable outbox into the destinations.
//!
//! - **At least once.** An entry leaves the queue only after its destination answered
//!   `Ok` (or it was dead-lettered). A crash between the send and that commit sends it
//!   again after the restart, with the same id, so idempotent receivers see it once.
//! - **One at a time per destination, in order**, spaced by [`Destination::min_interval`]
//!   (Slack: one message per second). A destination's failing head holds up its own queue
//!   only; other destinations go on.
//! - **Backoff**: exponential from `base_backoff`, doubled per failed attempt up to
//!   `max_backoff` (alerts: 10 minutes) or `max_push_backoff` for an entry carrying a
//!   trigger push (30 s, the push's own promise: after an hour-long outage the receiver
//!   gets its backlog within half a minute of coming back, not up to ten), with jitter
//!   (the delay is drawn in [½ d, d]) so restarted senders do not beat in step. Only a
//!   queue's head is retried, so a failing receiver sees one request per backoff. A
//!   receiver's own delay (`Retry-After`) is honoured as given, up to `max_retry_after`
//!   (one shorter than `base_backoff` counts as none).
//! - **Dead letters**: a [`DeliveryError::Refused`] at once; a retryable failure once the
//!   entry has waited longer than `max_age` (a week by default: a day-long outage loses
//!   nothing). An entry naming no configured destination, or whose bytes do not decode,
//!   is dead-lettered too, kept for a person to read and retry.
//! - **Wake-ups**: [`SenderHandle::wake`] after an enqueue commit, a delivery finishing,
//!   the next entry or destination coming due, or `poll_interval` at the latest.

use super::destination::{DeliveryError, Destination};
use crate::telemetry::{Exposition, LatencyHistogram};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use vedetta_store::outbox::{Outbox, OutboxEntry, OutboxError, PushReceipt};

/// How the sender retries and times out.
#[derive(Clone, Debug)]
pub struct SenderConfig {
    /// The delay after a first failure; doubled per further failure.
    pub base_backoff: Duration,
    /// The longest backoff between two attempts of one entry.
    pub max_backoff: Duration,
    /// The longest backoff between two attempts of an entry carrying a trigger push
    /// (pushes promise delivery every interval, 30 s by default).
    pub max_push_backoff: Duration,
    /// The longest `Retry-After` honoured (a receiver asking for more gets this).
    pub max_retry_after: Duration,
    /// How long one delivery call may take before it counts as a retryable failure.
    pub call_timeout: Duration,
    /// How long an entry is retried before it goes to the dead-letter list.
    pub max_age: Duration,
    /// The longest sleep without a wake-up (a safety net: enqueues wake the sender).
    pub poll_interval: Duration,
}

impl Default for SenderConfig {
    fn default() -> Self {
        SenderConfig {
            base_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(600),
            max_push_backoff: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(3_600),
            call_timeout: Duration::from_secs(30),
            max_age: Duration::from_secs(7 * 24 * 3_600),
            poll_interval: Duration::from_secs(30),
        }
    }
}

/// The outcome of one delivery attempt, as counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    Delivered,
    /// A retryable failure: it will be tried again.
    Retry,
    /// The call timed out (retried).
    Timeout,
    /// The receiver refused it: dead-lettered.
    Refused,
    /// Retried longer than `max_age`: dead-lettered.
    Expired,
    /// No such destination is configured, or the entry does not decode: dead-lettered.
    Undeliverable,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Retry => "retry",
            Outcome::Timeout => "timeout",
            Outcome::Refused => "refused",
            Outcome::Expired => "expired",
            Outcome::Undeliverable => "undeliverable",
        }
    }
}

/// Latency buckets of a notification, created → delivered (seconds).
const LATENCY_BOUNDS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3_600.0,
];

/// What the sender counts, for `/metrics`.
#[derive(Debug)]
pub struct SenderMetrics {
    /// Attempts by (destination, outcome).
    attempts: Mutex<BTreeMap<(String, Outcome), u64>>,
    /// Created → delivered, per notification delivered.
    pub latency: LatencyHistogram,
    /// The queue as last read by the sender.
    depth: AtomicU64,
    /// -1 when empty.
    oldest_enqueued_ms: AtomicI64,
    dead: AtomicU64,
    /// Storage errors the sender met (it retries them).
    pub store_errors: AtomicU64,
}

impl Default for SenderMetrics {
    fn default() -> Self {
        SenderMetrics {
            attempts: Mutex::new(BTreeMap::new()),
            latency: LatencyHistogram::new(LATENCY_BOUNDS),
            depth: AtomicU64::new(0),
            oldest_enqueued_ms: AtomicI64::new(-1),
            dead: AtomicU64::new(0),
            store_errors: AtomicU64::new(0),
        }
    }
}

impl SenderMetrics {
    fn count(&self, destination: &str, outcome: Outcome) {
        if let Ok(mut map) = self.attempts.lock() {
            *map.entry((destination.to_owned(), outcome)).or_default() += 1;
        }
    }

    /// Attempts of `destination` that ended in `outcome`.
    pub fn attempts(&self, destination: &str, outcome: Outcome) -> u64 {
        self.attempts
            .lock()
            .map(|m| {
                m.get(&(destination.to_owned(), outcome))
                    .copied()
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    }

    /// Queue depth as last read.
    pub fn depth(&self) -> u64 {
        self.depth.load(Ordering::Relaxed)
    }

    /// Dead letters as last read.
    pub fn dead(&self) -> u64 {
        self.dead.load(Ordering::Relaxed)
    }

    /// The age of the oldest queued entry at `now_ms` (0 when the queue is empty).
    pub fn oldest_age_seconds(&self, now_ms: i64) -> f64 {
        match self.oldest_enqueued_ms.load(Ordering::Relaxed) {
            -1 => 0.0,
            t => (now_ms.saturating_sub(t)).max(0) as f64 / 1_000.0,
        }
    }

    /// Writes `vedetta_outbox_*` and `vedetta_notifications_*` families. Each family has
    /// one label set: `vedetta_outbox_depth` and `vedetta_outbox_oldest_age_seconds` are the
    /// whole outbox (one unlabelled sample each); `per_destination` gives
    /// `vedetta_outbox_destination_depth{destination}` and
    /// `vedetta_outbox_destination_oldest_age_seconds{destination}`, one sample per
    /// destination queue (a sum over them is the whole outbox, unless a depth was capped).
    pub fn expose(
        &self,
        out: &mut Exposition,
        now_ms: i64,
        per_destination: &[vedetta_store::outbox::DestinationStats],
    ) {
        out.family(
            "vedetta_notification_attempts_total",
            "counter",
            "Delivery attempts by destination and outcome (delivered, retry, timeout, refused, expired, undeliverable).",
        );
        if let Ok(map) = self.attempts.lock() {
            for ((destination, outcome), n) in map.iter() {
                out.sample(
                    "vedetta_notification_attempts_total",
                    &[("destination", destination), ("outcome", outcome.as_str())],
                    *n as f64,
                );
            }
        }
        out.family(
            "vedetta_outbox_depth",
            "gauge",
            "Notifications waiting in the whole outbox.",
        );
        out.sample("vedetta_outbox_depth", &[], self.depth() as f64);
        out.family(
            "vedetta_outbox_oldest_age_seconds",
            "gauge",
            "Age of the oldest notification waiting in the whole outbox (0 when empty).",
        );
        out.sample(
            "vedetta_outbox_oldest_age_seconds",
            &[],
            self.oldest_age_seconds(now_ms),
        );
        out.family(
            "vedetta_outbox_destination_depth",
            "gauge",
            "Notifications waiting for one destination (counted up to 100,000).",
        );
        for d in per_destination {
            out.sample(
                "vedetta_outbox_destination_depth",
                &[("destination", d.destination.as_str())],
                d.depth as f64,
            );
        }
        out.family(
            "vedetta_outbox_destination_oldest_age_seconds",
            "gauge",
            "Age of the oldest notification waiting for one destination (its queue's head).",
        );
        for d in per_destination {
            out.sample(
                "vedetta_outbox_destination_oldest_age_seconds",
                &[("destination", d.destination.as_str())],
                now_ms.saturating_sub(d.oldest_enqueued_ms).max(0) as f64 / 1_000.0,
            );
        }
        out.family(
            "vedetta_outbox_dead_letters",
            "gauge",
            "Notifications in the dead-letter list (GET /v1/outbox/dead).",
        );
        out.sample("vedetta_outbox_dead_letters", &[], self.dead() as f64);
        out.family(
            "vedetta_notification_latency_seconds",
            "histogram",
            "From a notification's creation to its delivery.",
        );
        self.latency
            .expose(out, "vedetta_notification_latency_seconds", &[]);
    }
}

/// What the rest of the server holds of a running sender.
#[derive(Clone, Debug)]
pub struct SenderHandle {
    notify: Arc<Notify>,
    pub metrics: Arc<SenderMetrics>,
}

impl SenderHandle {
    /// A handle with no sender behind it: what is enqueued waits in the outbox for the
    /// next start of a server that runs one (a server built outside an async runtime, as
    /// some tools and tests build it, runs none).
    pub fn idle() -> Self {
        Self {
            notify: Arc::new(Notify::new()),
            metrics: Arc::new(SenderMetrics::default()),
        }
    }

    /// Tells the sender something was enqueued (call after the commit).
    pub fn wake(&self) {
        self.notify.notify_one();
    }
}

/// The delay before the next attempt after `attempts` failed ones (≥ 1): exponential,
/// capped, jittered into [½ d, d]; or the receiver's `after`, capped. An `after` shorter
/// than `base_backoff` (`Retry-After: 0`) counts as none: honoured, it retried the head at
/// once, forever.
pub fn backoff(
    config: &SenderConfig,
    attempts: u32,
    after: Option<Duration>,
    random: u64,
) -> Duration {
    if let Some(after) = after.filter(|a| *a >= config.base_backoff) {
        return after.min(config.max_retry_after);
    }
    let exponent = attempts.saturating_sub(1).min(30);
    let full = config
        .base_backoff
        .saturating_mul(1u32 << exponent)
        .min(config.max_backoff);
    let half = full / 2;
    let span = (full - half).as_millis() as u64;
    half + Duration::from_millis(if span == 0 { 0 } else { random % (span + 1) })
}

fn random_u64() -> u64 {
    // Jitter only: a failure of the OS generator leaves the delay at its lower bound.
    getrandom::u64().unwrap_or(0)
}

/// Wall-clock milliseconds since the epoch, from the server's one clock adapter: outbox
/// times (enqueue, next attempt, dead) are wall-clock, to survive restarts.
pub fn wall_ms() -> i64 {
    use vedetta_core::time::Clock;
    crate::clock::SystemClock.now_ms()
}

struct Finished {
    destination: String,
    entry: OutboxEntry,
    result: Result<(), DeliveryError>,
    timed_out: bool,
    /// The destination is a dry run (a push "delivered" was logged, not sent).
    dry_run: bool,
}

/// The receipt of `entry` when it carries a trigger push, or may (its bytes do not
/// decode): the trigger store records the outcome in the same commit as the outbox.
fn receipt(entry: &OutboxEntry, now_ms: i64, dry_run: bool) -> Option<PushReceipt<'_>> {
    let trigger = match &entry.notification {
        Ok(notification) => Some(notification.push.as_ref()?.trigger.as_str()),
        // It may have carried a push: its firings are settled by the entry's seq.
        Err(_) => None,
    };
    Some(PushReceipt {
        trigger,
        now_ms,
        dry_run,
    })
}

/// Starts the sender on the current tokio runtime. It runs until `shutdown` completes;
/// deliveries in flight then are abandoned and go again after the restart.
pub fn start(
    outbox: Outbox,
    destinations: Vec<Arc<dyn Destination>>,
    config: SenderConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> (SenderHandle, JoinHandle<()>) {
    let handle = SenderHandle {
        notify: Arc::new(Notify::new()),
        metrics: Arc::new(SenderMetrics::default()),
    };
    let task = tokio::spawn(run(outbox, destinations, config, handle.clone(), shutdown));
    (handle, task)
}

async fn blocking<T: Send + 'static>(
    outbox: &Outbox,
    f: impl FnOnce(&Outbox) -> Result<T, OutboxError> + Send + 'static,
) -> Result<T, OutboxError> {
    let outbox = outbox.clone();
    tokio::task::spawn_blocking(move || f(&outbox))
        .await
        .unwrap_or_else(|e| Err(OutboxError::Engine(format!("outbox task: {e}"))))
}

async fn run(
    outbox: Outbox,
    destinations: Vec<Arc<dyn Destination>>,
    config: SenderConfig,
    handle: SenderHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let by_name: HashMap<String, Arc<dyn Destination>> = destinations
        .into_iter()
        .map(|d| (d.name().to_owned(), d))
        .collect();
    let mut busy: HashSet<String> = HashSet::new();
    // A destination's next message may not start before this (its min_interval).
    let mut not_before: HashMap<String, Instant> = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Finished>();
    // Deliveries in flight, aborted when the sender stops (dropped with this set), so a
    // sender started again on the same outbox never races an orphaned call.
    let mut inflight = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let metrics = handle.metrics.clone();

    loop {
        while inflight.try_join_next().is_some() {}
        // Apply finished deliveries first: their outcome decides the next head.
        while let Ok(finished) = done_rx.try_recv() {
            busy.remove(&finished.destination);
            if let Some(d) = by_name.get(&finished.destination) {
                not_before.insert(
                    finished.destination.clone(),
                    Instant::now() + d.min_interval(),
                );
            }
            settle(&outbox, &config, &metrics, finished).await;
        }

        let now_ms = wall_ms();
        let mut sleep = config.poll_interval;
        match blocking(&outbox, |o| Ok((o.heads()?, o.stats()?))).await {
            Ok((heads, stats)) => {
                metrics.depth.store(stats.depth, Ordering::Relaxed);
                metrics
                    .oldest_enqueued_ms
                    .store(stats.oldest_enqueued_ms.unwrap_or(-1), Ordering::Relaxed);
                metrics.dead.store(stats.dead, Ordering::Relaxed);
                for entry in heads {
                    if busy.contains(&entry.destination) {
                        continue;
                    }
                    if entry.next_attempt_ms > now_ms {
                        let wait = Duration::from_millis((entry.next_attempt_ms - now_ms) as u64);
                        sleep = sleep.min(wait);
                        continue;
                    }
                    if let Some(at) = not_before.get(&entry.destination) {
                        let now = Instant::now();
                        if *at > now {
                            sleep = sleep.min(*at - now);
                            continue;
                        }
                    }
                    let Some(destination) = by_name.get(&entry.destination).cloned() else {
                        let reason =
                            format!("no destination named {:?} is configured", entry.destination);
                        give_up(
                            &outbox,
                            &metrics,
                            &entry,
                            entry.attempts,
                            Outcome::Undeliverable,
                            &reason,
                        )
                        .await;
                        sleep = Duration::ZERO;
                        continue;
                    };
                    if let Err(e) = &entry.notification {
                        let reason = format!("the stored notification does not decode: {e}");
                        give_up(
                            &outbox,
                            &metrics,
                            &entry,
                            entry.attempts,
                            Outcome::Undeliverable,
                            &reason,
                        )
                        .await;
                        sleep = Duration::ZERO;
                        continue;
                    }
                    busy.insert(entry.destination.clone());
                    let dry_run = destination.dry_run();
                    let tx = done_tx.clone();
                    let timeout = config.call_timeout;
                    inflight.spawn(async move {
                        let (result, timed_out) = match &entry.notification {
                            Ok(n) => {
                                match tokio::time::timeout(timeout, destination.deliver(n)).await {
                                    Ok(result) => (result, false),
                                    Err(_) => (
                                        Err(DeliveryError::Retry {
                                            after: None,
                                            reason: format!("no answer within {timeout:?}"),
                                        }),
                                        true,
                                    ),
                                }
                            }
                            Err(_) => (Ok(()), false),
                        };
                        let _ = tx.send(Finished {
                            destination: entry.destination.clone(),
                            entry,
                            result,
                            timed_out,
                            dry_run,
                        });
                    });
                }
            }
            Err(e) => {
                metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "the outbox sender could not read the outbox; retrying");
                sleep = sleep.min(Duration::from_secs(1));
            }
        }

        tokio::select! {
            _ = &mut shutdown => return,
            _ = handle.notify.notified() => {}
            Some(finished) = done_rx.recv() => {
                busy.remove(&finished.destination);
                if let Some(d) = by_name.get(&finished.destination) {
                    not_before.insert(finished.destination.clone(), Instant::now() + d.min_interval());
                }
                settle(&outbox, &config, &metrics, finished).await;
            }
            _ = tokio::time::sleep(sleep) => {}
        }
    }
}

/// Dead-letters `entry` after `attempts` delivery attempts in all (the one that ended it
/// included).
async fn give_up(
    outbox: &Outbox,
    metrics: &SenderMetrics,
    entry: &OutboxEntry,
    attempts: u32,
    outcome: Outcome,
    reason: &str,
) {
    metrics.count(&entry.destination, outcome);
    tracing::warn!(
        destination = %entry.destination,
        seq = entry.seq,
        reason,
        "notification moved to the dead-letter list"
    );
    let (entry, reason) = (entry.clone(), reason.to_owned());
    if let Err(e) = blocking(outbox, move |o| {
        let now = wall_ms();
        o.move_to_dead_push(
            &entry.destination,
            entry.seq,
            attempts,
            &reason,
            now,
            receipt(&entry, now, false),
        )
    })
    .await
    {
        metrics.store_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %e, "could not dead-letter a notification; it stays queued");
    }
}

async fn settle(outbox: &Outbox, config: &SenderConfig, metrics: &SenderMetrics, f: Finished) {
    let entry = f.entry;
    let now_ms = wall_ms();
    let stored = match f.result {
        Ok(()) => {
            metrics.count(&f.destination, Outcome::Delivered);
            if let Ok(n) = &entry.notification {
                let seconds = (now_ms.saturating_sub(n.created_ms)).max(0) as f64 / 1_000.0;
                metrics.latency.observe(seconds);
            }
            let (destination, dry_run) = (f.destination.clone(), f.dry_run);
            blocking(outbox, move |o| {
                o.mark_delivered_push(&destination, entry.seq, receipt(&entry, now_ms, dry_run))
                    .map(|_| ())
            })
            .await
        }
        Err(DeliveryError::Refused { reason }) => {
            // The refused attempt counts: `entry.attempts` holds the failed ones before it.
            let attempts = entry.attempts.saturating_add(1);
            give_up(outbox, metrics, &entry, attempts, Outcome::Refused, &reason).await;
            Ok(())
        }
        Err(DeliveryError::Retry { after, reason }) => {
            let attempts = entry.attempts.saturating_add(1);
            let age = Duration::from_millis(now_ms.saturating_sub(entry.enqueued_ms).max(0) as u64);
            if age >= config.max_age {
                let reason = format!(
                    "gave up after {attempts} attempts over {}: {reason}",
                    human(age)
                );
                give_up(outbox, metrics, &entry, attempts, Outcome::Expired, &reason).await;
                return;
            }
            metrics.count(
                &f.destination,
                if f.timed_out {
                    Outcome::Timeout
                } else {
                    Outcome::Retry
                },
            );
            let delay = retry_delay(config, &entry, attempts, after, random_u64());
            tracing::info!(
                destination = %f.destination,
                seq = entry.seq,
                attempts,
                delay_ms = delay.as_millis() as u64,
                reason = %reason,
                "notification delivery failed; will retry"
            );
            let next = now_ms.saturating_add(delay.as_millis() as i64);
            blocking(outbox, move |o| {
                o.reschedule_push(
                    &entry.destination,
                    entry.seq,
                    attempts,
                    next,
                    &reason,
                    receipt(&entry, now_ms, false),
                )
                .map(|_| ())
            })
            .await
        }
    };
    if let Err(e) = stored {
        // The entry stays as it was and goes again: at least once.
        metrics.store_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %e, "could not record a delivery outcome in the outbox");
    }
}

/// The delay before the next attempt of `entry` after `attempts` failed ones: [`backoff`],
/// capped at `max_push_backoff` when the entry carries a trigger push.
fn retry_delay(
    config: &SenderConfig,
    entry: &OutboxEntry,
    attempts: u32,
    after: Option<Duration>,
    random: u64,
) -> Duration {
    if matches!(&entry.notification, Ok(n) if n.push.is_some()) {
        let config = SenderConfig {
            max_backoff: config.max_backoff.min(config.max_push_backoff),
            ..config.clone()
        };
        backoff(&config, attempts, after, random)
    } else {
        backoff(config, attempts, after, random)
    }
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 86_400 {
        format!("{:.1} days", s as f64 / 86_400.0)
    } else if s >= 3_600 {
        format!("{:.1} hours", s as f64 / 3_600.0)
    } else {
        format!("{s} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::BTreeSet;

    #[test]
    #[allow(clippy::unwrap_used)]
    fn metrics_are_exposed_by_destination_and_outcome() {
        let m = SenderMetrics::default();
        m.count("slack-marketing", Outcome::Delivered);
        m.count("slack-marketing", Outcome::Retry);
        m.count("slack-marketing", Outcome::Retry);
        m.latency.observe(0.3);
        m.depth.store(4, Ordering::Relaxed);
        m.oldest_enqueued_ms.store(1_000, Ordering::Relaxed);
        let mut out = Exposition::default();
        let queue = vedetta_store::outbox::DestinationStats {
            destination: "slack-marketing".into(),
            depth: 3,
            depth_capped: false,
            oldest_enqueued_ms: 31_000,
            head_attempts: 2,
            head_last_error: Some("HTTP 500".into()),
        };
        m.expose(&mut out, 61_000, &[queue]);
        let text = out.into_string();
        for line in [
            "vedetta_outbox_destination_depth{destination=\"slack-marketing\"} 3",
            "vedetta_outbox_destination_oldest_age_seconds{destination=\"slack-marketing\"} 30",
            "vedetta_notification_attempts_total{destination=\"slack-marketing\",outcome=\"retry\"} 2",
            "vedetta_notification_attempts_total{destination=\"slack-marketing\",outcome=\"delivered\"} 1",
            "vedetta_outbox_depth 4",
            "vedetta_outbox_oldest_age_seconds 60",
            "vedetta_outbox_dead_letters 0",
            "vedetta_notification_latency_seconds_count 1",
        ] {
            assert!(text.contains(line), "{line:?} not in\n{text}");
        }
        // No family mixes label sets (a sum over a family never counts a total twice).
        let mut labels: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, _) = line.rsplit_once(' ').unwrap();
            let (name, names) = match series.split_once('{') {
                Some((name, rest)) => (
                    name,
                    rest.trim_end_matches('}')
                        .split(',')
                        .map(|kv| kv.split('=').next().unwrap().to_owned())
                        .filter(|k| k != "le")
                        .collect::<Vec<_>>()
                        .join(","),
                ),
                None => (series, String::new()),
            };
            let family = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_sum")
                .trim_end_matches("_count");
            labels.entry(family).or_default().insert(names);
        }
        for (family, sets) in &labels {
            assert_eq!(sets.len(), 1, "{family} mixes label sets {sets:?}");
        }
        assert!(labels.contains_key("vedetta_outbox_destination_depth"));
    }

    #[test]
    fn a_push_is_retried_at_least_every_30_s_an_alert_every_10_minutes() {
        let c = SenderConfig::default();
        let entry = |push: bool| {
            let mut n = vedetta_core::watch::notification::Notification::example();
            if push {
                n.push = Some(vedetta_core::act::push::Push {
                    trigger: "feed".into(),
                    kind: "conversion_feed".into(),
                    segment: None,
                    group: vec![],
                    signal: None,
                    events: vec![],
                });
            }
            OutboxEntry {
                seq: 1,
                destination: "hook".into(),
                notification: Ok(n),
                attempts: 0,
                enqueued_ms: 0,
                next_attempt_ms: 0,
                last_error: None,
            }
        };
        for attempts in [1, 5, 6, 12, 40] {
            for r in [0, 7, u64::MAX] {
                let push = retry_delay(&c, &entry(true), attempts, None, r);
                let alert = retry_delay(&c, &entry(false), attempts, None, r);
                assert!(push <= c.max_push_backoff, "{attempts}: {push:?}");
                assert_eq!(alert, backoff(&c, attempts, None, r));
            }
        }
        // After an hour of failures: a push waits 15..30 s, an alert 5..10 minutes.
        assert_eq!(
            retry_delay(&c, &entry(true), 40, None, 0),
            Duration::from_secs(15)
        );
        assert_eq!(
            retry_delay(&c, &entry(false), 40, None, 0),
            Duration::from_secs(300)
        );
        // A receiver's Retry-After is honoured as given, push or not.
        let after = Some(Duration::from_secs(120));
        assert_eq!(
            retry_delay(&c, &entry(true), 3, after, 0),
            Duration::from_secs(120)
        );
    }

    #[test]
    fn backoff_doubles_caps_jitters_and_honours_the_receiver() {
        let c = SenderConfig::default();
        assert_eq!(backoff(&c, 1, None, 0), Duration::from_millis(500));
        assert_eq!(
            backoff(&c, 1, None, u64::MAX),
            Duration::from_millis(500 + (u64::MAX % 501))
        );
        for attempts in 1..40 {
            for r in [0, 7, 1 << 40, u64::MAX] {
                let d = backoff(&c, attempts, None, r);
                let full = (c.base_backoff * 2u32.pow(attempts.min(20) - 1)).min(c.max_backoff);
                assert!(d >= full / 2 && d <= full, "{attempts}: {d:?}");
            }
        }
        assert_eq!(backoff(&c, 40, None, 0), c.max_backoff / 2);
        assert_eq!(
            backoff(&c, 1, Some(Duration::from_secs(7)), 0),
            Duration::from_secs(7)
        );
        assert_eq!(
            backoff(&c, 1, Some(Duration::from_secs(1 << 40)), 0),
            c.max_retry_after
        );
    }

    /// `Retry-After: 0` on every answer (a misconfigured proxy's 503) made the delay zero:
    /// the head was retried at once, forever (a week, `max_age`), each attempt a request
    /// and an outbox commit. A delay shorter than `base_backoff` is no delay given.
    #[test]
    fn a_retry_after_of_zero_does_not_retry_in_a_tight_loop() {
        let c = SenderConfig::default();
        for attempts in [1, 5, 20] {
            for r in [0, u64::MAX] {
                let zero = backoff(&c, attempts, Some(Duration::ZERO), r);
                assert_eq!(zero, backoff(&c, attempts, None, r), "{attempts}");
                assert!(zero >= c.base_backoff / 2, "{attempts}: {zero:?}");
            }
        }
        let short = backoff(&c, 8, Some(Duration::from_millis(10)), 0);
        assert_eq!(short, backoff(&c, 8, None, 0));
        // From base_backoff up, the receiver's delay is honoured as given.
        assert_eq!(backoff(&c, 8, Some(c.base_backoff), 0), c.base_backoff);
    }
}
