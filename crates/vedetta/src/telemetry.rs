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

    /// An upper estimate of a quantile (the bound of the bucket it falls in), in seconds.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let count = self.count.load(Ordering::Relaxed);
        if count == 0 {
            return None;
        }
        let target = (q * count as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            seen += bucket.load(Ordering::Relaxed);
            if seen >= target {
                return Some(self.bounds.get(i).copied().unwrap_or(f64::INFINITY));
            }
        }
        None
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
}

impl Default for StageTimings {
    fn default() -> Self {
        Self {
            intake_request: LatencyHistogram::new(LATENCY_BOUNDS),
            processor_batch: LatencyHistogram::new(LATENCY_BOUNDS),
            store_commit: LatencyHistogram::new(LATENCY_BOUNDS),
            end_to_end: LatencyHistogram::new(LATENCY_BOUNDS),
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
    fn histogram_exposes_cumulative_buckets_and_quantiles() {
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
        assert_eq!(h.quantile(0.5), Some(0.01));
        assert_eq!(h.quantile(0.8), Some(0.1));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = Exposition::default();
        out.sample("m", &[("campaign", "a\"b\\c\nd")], 1.0);
        assert_eq!(out.into_string(), "m{campaign=\"a\\\"b\\\\c\\nd\"} 1\n");
    }
}
