//! Telemetry defined in one place: every counter the program keeps, named once.
//!
//! The counters are plain atomics, read by `/v1/status` (and by `/metrics` once it exists),
//! and asserted on by tests: an outcome counter is both a metric and a test oracle.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of the intake stage.
#[derive(Debug, Default)]
pub struct IntakeCounters {
    pub events_accepted: AtomicU64,
    pub events_rejected: AtomicU64,
    pub costs_accepted: AtomicU64,
    pub costs_rejected: AtomicU64,
    /// Requests refused whole (400, 413, 415, 401), by status code.
    pub requests_refused: Mutex<BTreeMap<u16, u64>>,
    /// Requests answered 503 because a backpressure bound was reached.
    pub requests_throttled: AtomicU64,
    /// Rejected records by the field at fault (`(syntax)` when the JSON was malformed).
    pub rejected_by_field: Mutex<BTreeMap<&'static str, u64>>,
    /// Identities (`email`/`crm_id`) kept: the user has marketing consent.
    pub identities_stored: AtomicU64,
    /// Identities dropped because the user has no marketing consent.
    pub identities_dropped_no_consent: AtomicU64,
    /// Stored identities deleted because marketing consent was withdrawn.
    pub identities_deleted: AtomicU64,
}

impl IntakeCounters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn count_refusal(&self, status: u16) {
        if let Ok(mut map) = self.requests_refused.lock() {
            *map.entry(status).or_default() += 1;
        }
    }

    pub fn count_rejected_fields(&self, fields: impl Iterator<Item = Option<&'static str>>) {
        if let Ok(mut map) = self.rejected_by_field.lock() {
            for field in fields {
                *map.entry(field.unwrap_or("(syntax)")).or_default() += 1;
            }
        }
    }

    pub fn rejected_by_field(&self) -> BTreeMap<&'static str, u64> {
        self.rejected_by_field
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    pub fn requests_refused(&self) -> BTreeMap<u16, u64> {
        self.requests_refused
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }
}

/// Counters of the read side of the API.
#[derive(Debug, Default)]
pub struct QueryCounters {
    /// `/metrics` scrapes whose KPI query failed: that scrape carried no `vedetta_kpi_*`
    /// gauges (Prometheus then shows a gap, which this counter explains). Exposed as
    /// [`METRICS_SCRAPE_ERRORS_TOTAL`].
    pub metrics_scrape_errors: AtomicU64,
}

/// The exposition name of [`QueryCounters::metrics_scrape_errors`].
pub const METRICS_SCRAPE_ERRORS_TOTAL: &str = "vedetta_metrics_scrape_errors_total";

/// A latency histogram with fixed buckets, lock-free, in the Prometheus shape (cumulative
/// counts per upper bound, a sum and a count).
#[derive(Debug)]
pub struct LatencyHistogram {
    /// Upper bounds in seconds, ascending.
    bounds: &'static [f64],
    /// Observations at or below each bound (not cumulative; summed when exposed).
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// Bounds for latencies from sub-millisecond to tens of seconds.
pub const LATENCY_BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

impl LatencyHistogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records `n` observations of `seconds`.
    pub fn observe_n(&self, seconds: f64, n: u64) {
        let index = self
            .bounds
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(self.bounds.len());
        self.buckets[index].fetch_add(n, Ordering::Relaxed);
        self.count.fetch_add(n, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((seconds.max(0.0) * 1e6) as u64 * n, Ordering::Relaxed);
    }

    pub fn observe(&self, seconds: f64) {
        self.observe_n(seconds, 1);
    }

    /// Appends the exposition of this histogram under `name` with extra `labels`.
    pub fn expose(&self, out: &mut Exposition, name: &str, labels: &[(&str, &str)]) {
        let mut cumulative = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let bound = self
                .bounds
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
            let mut with_le: Vec<(&str, &str)> = labels.to_vec();
            with_le.push(("le", &bound));
            out.sample(&format!("{name}_bucket"), &with_le, cumulative as f64);
        }
        out.sample(
            &format!("{name}_sum"),
            labels,
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        );
        out.sample(
            &format!("{name}_count"),
            labels,
            self.count.load(Ordering::Relaxed) as f64,
        );
    }
}

/// Latencies of the last few minutes, for people: `/v1/status` and the dashboard show how
/// fresh the numbers are now, not since the server started (a bulk load an hour ago must
/// not colour today's p99). Prometheus gets the cumulative [`LatencyHistogram`] and takes
/// rates itself.
///
/// A ring of [`RecentLatency::SLOTS`] histograms of [`RecentLatency::SLOT_MS`] each; an
/// observation goes to the slot of its time, which is cleared when the ring comes round.
#[derive(Debug)]
pub struct RecentLatency {
    bounds: &'static [f64],
    slots: Mutex<Vec<RecentSlot>>,
}

#[derive(Debug, Clone, Default)]
struct RecentSlot {
    /// `now_ms / SLOT_MS` of the observations held; a slot of another period is stale.
    period: i64,
    counts: Vec<u64>,
}

impl RecentLatency {
    pub const SLOT_MS: i64 = 10_000;
    pub const SLOTS: usize = 30;
    /// The span the quantiles cover.
    pub const WINDOW_MS: i64 = Self::SLOT_MS * Self::SLOTS as i64;

    pub fn new(bounds: &'static [f64]) -> Self {
        let slot = RecentSlot {
            period: i64::MIN,
            counts: vec![0; bounds.len() + 1],
        };
        Self {
            bounds,
            slots: Mutex::new(vec![slot; Self::SLOTS]),
        }
    }

    /// Records `n` observations of `seconds`, made at `now_ms`.
    pub fn observe_n(&self, now_ms: i64, seconds: f64, n: u64) {
        let index = self
            .bounds
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(self.bounds.len());
        let period = now_ms.div_euclid(Self::SLOT_MS);
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = &mut slots[period.rem_euclid(Self::SLOTS as i64) as usize];
        if slot.period != period {
            slot.period = period;
            slot.counts.iter_mut().for_each(|c| *c = 0);
        }
        slot.counts[index] += n;
    }

    /// A quantile of the observations of the last [`Self::WINDOW_MS`] before `now_ms`, in
    /// seconds, interpolated linearly within its bucket (as Prometheus'
    /// `histogram_quantile`); past the last bound, that bound. `None` without observations.
    pub fn quantile(&self, now_ms: i64, q: f64) -> Option<f64> {
        let newest = now_ms.div_euclid(Self::SLOT_MS);
        let mut counts = vec![0u64; self.bounds.len() + 1];
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        for slot in slots
            .iter()
            .filter(|s| s.period > newest - Self::SLOTS as i64)
        {
            for (total, n) in counts.iter_mut().zip(&slot.counts) {
                *total += n;
            }
        }
        drop(slots);
        let count: u64 = counts.iter().sum();
        if count == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * count as f64;
        let mut below = 0u64;
        for (i, &n) in counts.iter().enumerate() {
            if n > 0 && (below + n) as f64 >= rank {
                let Some(&upper) = self.bounds.get(i) else {
                    return self.bounds.last().copied();
                };
                let lower = if i == 0 { 0.0 } else { self.bounds[i - 1] };
                let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
                return Some(lower + (upper - lower) * within);
            }
            below += n;
        }
        self.bounds.last().copied()
    }
}

/// Stage timings and end-to-end latency, shared by the server and the processor.
#[derive(Debug)]
pub struct StageTimings {
    /// A whole intake request, from the first byte read to the answer.
    pub intake_request: LatencyHistogram,
    /// Reading, processing and committing one processor micro-batch.
    pub processor_batch: LatencyHistogram,
    /// The KPI store commit of a micro-batch.
    pub store_commit: LatencyHistogram,
    /// From a record's acknowledgement (log commit) to its KPI commit: what a dashboard
    /// waits for. One observation per record.
    pub end_to_end: LatencyHistogram,
    /// The same, over the last five minutes only (`/v1/status`, the dashboard).
    pub end_to_end_recent: RecentLatency,
}

impl Default for StageTimings {
    fn default() -> Self {
        Self {
            intake_request: LatencyHistogram::new(LATENCY_BOUNDS),
            processor_batch: LatencyHistogram::new(LATENCY_BOUNDS),
            store_commit: LatencyHistogram::new(LATENCY_BOUNDS),
            end_to_end: LatencyHistogram::new(LATENCY_BOUNDS),
            end_to_end_recent: RecentLatency::new(LATENCY_BOUNDS),
        }
    }
}

/// Prometheus text exposition (format 0.0.4), written by hand: a few lines of format
/// spare a client library whose registry model fits counters kept elsewhere poorly.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// Declares a metric family.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        use std::fmt::Write;
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    /// One sample.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        use std::fmt::Write;
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{key}=\"{}\"", escape_label(value));
            }
            self.text.push('}');
        }
        if value.is_finite() {
            let _ = writeln!(self.text, " {value}");
        } else {
            let _ = writeln!(self.text, " NaN");
        }
    }

    pub fn into_string(self) -> String {
        self.text
    }
}

/// Label values escape backslash, double quote and newline.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn histogram_exposes_cumulative_buckets() {
        let h = LatencyHistogram::new(&[0.01, 0.1, 1.0]);
        h.observe_n(0.005, 3);
        h.observe(0.05);
        h.observe(5.0);
        let mut out = Exposition::default();
        h.expose(&mut out, "x_seconds", &[("stage", "a")]);
        let text = out.into_string();
        assert!(
            text.contains("x_seconds_bucket{stage=\"a\",le=\"0.01\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{stage=\"a\",le=\"0.1\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{stage=\"a\",le=\"+Inf\"} 5\n"),
            "{text}"
        );
        assert!(text.contains("x_seconds_count{stage=\"a\"} 5\n"), "{text}");
    }

    #[test]
    fn recent_latency_forgets_what_is_older_than_its_window() {
        let h = RecentLatency::new(&[0.01, 0.1, 1.0]);
        let near = |got: Option<f64>, want: f64| {
            assert!(
                got.is_some_and(|g| (g - want).abs() < 1e-9),
                "{got:?} ≠ {want}"
            );
        };
        let t0 = 1_700_000_000_000;
        assert_eq!(h.quantile(t0, 0.5), None);
        // A bulk load: a thousand records waited 0.5–1 s.
        h.observe_n(t0, 0.9, 1000);
        near(h.quantile(t0, 0.99), 0.1 + 0.9 * 0.99);
        // Live traffic four minutes later: both are in the window.
        let t1 = t0 + 4 * 60_000;
        h.observe_n(t1, 0.004, 1000);
        assert!(h.quantile(t1, 0.99).unwrap() > 0.1);
        // Six minutes after the load, only the live traffic is left; 0.004 s lies in the
        // first bucket, so its median is interpolated between 0 and 0.01.
        let t2 = t0 + 6 * 60_000;
        near(h.quantile(t2, 0.5), 0.005);
        near(h.quantile(t2, 0.99), 0.0099);
        // Past the last bound, the last bound; once the ring comes round, old slots clear.
        h.observe_n(t2, 7.0, 1_000_000);
        near(h.quantile(t2, 0.99), 1.0);
        let t3 = t2 + RecentLatency::WINDOW_MS;
        h.observe_n(t3, 0.05, 1);
        near(h.quantile(t3, 1.0), 0.1);
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = Exposition::default();
        out.sample("m", &[("campaign", "a\"b\\c\nd")], 1.0);
        assert_eq!(out.into_string(), "m{campaign=\"a\\\"b\\\\c\\nd\"} 1\n");
    }
}
