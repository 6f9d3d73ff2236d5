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
