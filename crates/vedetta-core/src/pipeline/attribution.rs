//! Attribution: which touch a session's events are counted under (docs/semantics.md,
//! "Attribution").
//!
//! A user's held events form sessions ([`sessions`]); each session has an *acquisition*,
//! the touch of its earliest non-direct event, else of its first event. The model then
//! gives each session its *attributed* touch ([`attribute`]), walking the sessions in order
//! of start with one running record: under `last_non_direct` the latest non-direct
//! acquisition, under `first_touch` the latest anchor. That same record is all that dropped
//! sessions leave behind for later ones ([`Memory`], [`fold`]): folding the dropped sessions
//! into it gives exactly the running record the held sessions would have seen, so dropping
//! final sessions never changes an attribution.
//!
//! Everything here is a pure function of the entries, the memory and the model, so the
//! result does not depend on the order the events arrived in.

use super::AttributionModel;
use super::kpi::DimsId;
use super::user::EventEntry;
use serde::{Deserialize, Serialize};

/// A dimension id that names no tuple: "no touch" in a [`Memory`], "not yet counted" in an
/// [`EventEntry`].
pub const NO_DIMS: DimsId = DimsId::MAX;

/// What a user's dropped sessions leave for later ones: the acquisition (a dimension id
/// whose channel and campaign are the touch) and the start of the session it came from.
/// Under `last_non_direct` it is the latest non-direct acquisition; under `first_touch`
/// the latest anchor; under `session` nothing. 12 bytes (16 with alignment).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    pub start: i64,
    pub touch: DimsId,
}

impl Memory {
    pub const NONE: Memory = Memory {
        start: i64::MIN,
        touch: NO_DIMS,
    };

    pub fn is_none(&self) -> bool {
        self.touch == NO_DIMS
    }
}

impl Default for Memory {
    fn default() -> Self {
        Memory::NONE
    }
}

/// One session of a user's held events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// Index of its first entry.
    pub first: usize,
    /// One past its last entry.
    pub end: usize,
    pub start_ts: i64,
    /// The touch of its earliest non-direct event, else of its first event.
    pub acquisition: DimsId,
    pub non_direct: bool,
    pub converting: bool,
    /// Filled by [`attribute`].
    pub attributed: DimsId,
}

/// Cuts entries (sorted by time) into sessions, appending them to `out`.
pub fn sessions(entries: &[EventEntry], gap_ms: i64, out: &mut Vec<Span>) {
    let mut i = 0;
    while i < entries.len() {
        let first = i;
        let mut acquisition = None;
        let mut converting = false;
        loop {
            let entry = &entries[i];
            if acquisition.is_none() && entry.touch_is_non_direct() {
                acquisition = Some(entry.dims);
            }
            converting |= entry.is_clean_conversion();
            i += 1;
            if i == entries.len() || entries[i].ts - entry.ts >= gap_ms {
                break;
            }
        }
        out.push(Span {
            first,
            end: i,
            start_ts: entries[first].ts,
            acquisition: acquisition.unwrap_or(entries[first].dims),
            non_direct: acquisition.is_some(),
            converting,
            attributed: NO_DIMS,
        });
    }
}

/// The running record of the model, advanced over sessions in order of start.
///
/// The memory of dropped sessions joins the walk at its own start: normally before every
/// held session, but an event later than the allowed lateness can start a held session
/// before it, and that session must not see a record from its future.
#[derive(Clone, Copy, Debug)]
struct Running {
    model: AttributionModel,
    lookback_ms: i64,
    record: Memory,
    /// The memory, until the walk reaches its start.
    pending: Memory,
}

impl Running {
    fn new(model: AttributionModel, lookback_ms: i64, memory: Memory) -> Self {
        Self {
            model,
            lookback_ms,
            record: Memory::NONE,
            pending: memory,
        }
    }

    /// Takes the pending memory in once the walk is past its start: it is the latest
    /// record there (it was, when its sessions were dropped), anchor or not.
    fn reach(&mut self, ts: i64) {
        if !self.pending.is_none() && self.pending.start < ts {
            if self.record.is_none() || self.record.start < self.pending.start {
                self.record = self.pending;
            }
            self.pending = Memory::NONE;
        }
    }

    /// Takes one session into account, returning its attributed touch.
    fn step(&mut self, span: &Span) -> DimsId {
        self.reach(span.start_ts);
        let own = Memory {
            start: span.start_ts,
            touch: span.acquisition,
        };
        let since = span.start_ts.saturating_sub(self.record.start);
        match self.model {
            AttributionModel::Session => span.acquisition,
            AttributionModel::LastNonDirect => {
                if span.non_direct {
                    self.record = own;
                    span.acquisition
                } else if !self.record.is_none() && since <= self.lookback_ms {
                    self.record.touch
                } else {
                    span.acquisition
                }
            }
            AttributionModel::FirstTouch => {
                if span.non_direct && (self.record.is_none() || since > self.lookback_ms) {
                    self.record = own;
                    return span.acquisition;
                }
                if !self.record.is_none() && since <= self.lookback_ms {
                    self.record.touch
                } else {
                    span.acquisition
                }
            }
        }
    }

    /// The record after every session walked, the memory included.
    fn finish(mut self) -> Memory {
        self.reach(i64::MAX);
        self.record
    }
}

/// Sets each session's attributed touch, given what dropped sessions left.
pub fn attribute(spans: &mut [Span], memory: Memory, model: AttributionModel, lookback_ms: i64) {
    let mut running = Running::new(model, lookback_ms, memory);
    for span in spans {
        span.attributed = running.step(span);
    }
}

/// The memory after the given sessions are dropped: the running record past them.
pub fn fold(spans: &[Span], memory: Memory, model: AttributionModel, lookback_ms: i64) -> Memory {
    if model == AttributionModel::Session {
        return Memory::NONE;
    }
    let mut running = Running::new(model, lookback_ms, memory);
    for span in spans {
        running.step(span);
    }
    running.finish()
}

/// Whether a memory can still matter to a session starting at or after `earliest_start`:
/// both models ignore a record more than the lookback before a session's start.
pub fn still_relevant(memory: Memory, earliest_start: i64, lookback_ms: i64) -> bool {
    !memory.is_none() && earliest_start.saturating_sub(memory.start) <= lookback_ms
}
