//! What `/v1/status` (field `demo`) and the dashboard's loading line show of the demo.
//!
//! One demo per process: `serve --demo` registers its progress here, and the status
//! document reads it. A server without the demo has none, and its status says `null`.

use serde::Serialize;
use std::sync::{Arc, Mutex, OnceLock};

/// Where the demo is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Loading the history; live traffic is held back until it is stored.
    Loading,
    /// History stored; live traffic flows (if `--rate` is above 0).
    Live,
    /// The history load failed (see `error`); nothing live is sent, so that a restart can
    /// finish the history without it becoming late.
    Failed,
}

/// The `demo` field of `/v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DemoStatus {
    pub phase: Phase,
    /// Share of the history's event time stored, 0 to 1.
    pub progress: f64,
    /// History records the server accepted so far.
    pub history_records: u64,
    pub history_start: String,
    pub history_end: String,
    pub seed: u64,
    /// Live events per second (0: none).
    pub rate: f64,
    pub error: Option<String>,
}

#[derive(Debug)]
pub struct Progress {
    status: Mutex<DemoStatus>,
}

static CURRENT: OnceLock<Arc<Progress>> = OnceLock::new();

impl Progress {
    /// Registers the process's demo; a second registration keeps the first.
    pub fn register(initial: DemoStatus) -> Arc<Progress> {
        CURRENT
            .get_or_init(|| {
                Arc::new(Progress {
                    status: Mutex::new(initial),
                })
            })
            .clone()
    }

    pub fn update(&self, change: impl FnOnce(&mut DemoStatus)) {
        change(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub fn get(&self) -> DemoStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The `demo` field of the status document: `null` without a demo.
pub fn status_json() -> serde_json::Value {
    CURRENT
        .get()
        .and_then(|p| serde_json::to_value(p.get()).ok())
        .unwrap_or(serde_json::Value::Null)
}
