//! Attribution: which touch a session's events are counted under (docs/semantics.md,
//! "Attribution").
//!
//! A user's held events form sessions ([`sessions`]); each session has an *acquisition*,
//! the touch of its earliest non-direct event, else of its first event. The model then
//! gives each session its *attributed* touch ([`attribute`]).
//!
//! What dropped sessions leave for later ones ([`fold`]) depends on the model:
//! - `last_non_direct`: one record ([`Memory`]), the latest non-direct acquisition and its
//!   start; walking the held sessions with it as the running record gives exactly what
//!   the dropped sessions would have given.
//! - `first_touch`: a session takes the user's *earliest* non-direct session in the
//!   lookback before it, so one record is not enough: a user who clicked A, then B, then
//!   returns after A lapsed takes B. Dropped sessions leave a list of *runs*: consecutive
//!   non-direct sessions with the same touch are one entry holding the latest start of the
//!   run (for a session *S*, the answer is the touch of the first entry whose start is at
//!   least `start(S) − L`: an earlier session of that run may be older than that, but the
//!   run's latest is not, and they share the touch). Entries more than the lookback before
//!   a later dropped session's start can matter to no session still to come and are
//!   dropped; at most [`MAX_FIRST_TOUCH_RUNS`] are kept. The latest entry is the user's
//!   [`Memory`]; the earlier ones, when there are any, are kept beside it.
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

/// Runs of non-direct sessions kept per user under `first_touch` (docs/semantics.md,
/// "Attribution", rule 5). A shopper switches channel a few times a month; a user past
/// this many switches within the lookback is a bot. The run that would exceed it is not
/// kept (the earliest runs are the ones first touch answers with), and
/// `PipelineCounters::first_touch_capped` counts it.
pub const MAX_FIRST_TOUCH_RUNS: usize = 32;

/// What a user's dropped sessions leave for later ones: the acquisition (a dimension id
/// whose channel and campaign are the touch) and the start of the session it came from.
/// Under `last_non_direct` it is the latest non-direct acquisition; under `first_touch`
/// the latest run (see the module docs); under `session` nothing. 12 bytes (16 with
/// alignment).
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

/// A user's whole memory, as the store keeps it and the adapter passes it: the latest
/// record and, under `first_touch` only, the earlier runs, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Memories {
    pub earlier: Vec<Memory>,
    pub latest: Memory,
}

impl Memories {
    /// One record and no earlier runs (`last_non_direct`, or a single run).
    pub fn one(latest: Memory) -> Self {
        Self {
            earlier: Vec::new(),
            latest,
        }
    }
}

/// The earlier `first_touch` runs of one user, as the pipeline holds them (oldest first,
/// never empty): one inline, the common case of a user who switched channel once, and more
/// in a boxed slice. 24 bytes beside the user's key in `PipelineState::earlier_runs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EarlierRuns {
    One(Memory),
    Many(Box<[Memory]>),
}

impl EarlierRuns {
    /// `None` for no runs.
    pub fn from_vec(runs: Vec<Memory>) -> Option<Self> {
        match runs.len() {
            0 => None,
            1 => Some(EarlierRuns::One(runs[0])),
            _ => Some(EarlierRuns::Many(runs.into_boxed_slice())),
        }
    }

    pub fn as_slice(&self) -> &[Memory] {
        match self {
            EarlierRuns::One(run) => std::slice::from_ref(run),
            EarlierRuns::Many(runs) => runs,
        }
    }

    pub fn into_vec(self) -> Vec<Memory> {
        match self {
            EarlierRuns::One(run) => vec![run],
            EarlierRuns::Many(runs) => runs.into_vec(),
        }
    }

    /// Drops the runs that started before `before`; `None` when none is left.
    pub fn pruned(self, before: i64) -> Option<Self> {
        if self.as_slice().first().is_some_and(|r| r.start >= before) {
            return Some(self);
        }
        let mut runs = self.into_vec();
        prune_runs(&mut runs, before);
        Self::from_vec(runs)
    }

    /// Heap bytes outside the map's entry.
    pub fn heap_bytes(&self) -> usize {
        match self {
            EarlierRuns::One(_) => 0,
            EarlierRuns::Many(runs) => {
                super::footprint::heap_block(std::mem::size_of_val::<[Memory]>(runs))
            }
        }
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

/// The running record of `last_non_direct` (and `session`), advanced over sessions in
/// order of start.
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
    /// record there (it was, when its sessions were dropped).
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
            // Never walked with a single record: see [`attribute_first_touch`].
            AttributionModel::FirstTouch => span.acquisition,
        }
    }

    /// The record after every session walked, the memory included.
    fn finish(mut self) -> Memory {
        self.reach(i64::MAX);
        self.record
    }
}

/// Sets each session's attributed touch, given what dropped sessions left: `memory` and,
/// under `first_touch`, the `earlier` runs before it (oldest first).
pub fn attribute(
    spans: &mut [Span],
    memory: Memory,
    earlier: &[Memory],
    model: AttributionModel,
    lookback_ms: i64,
) {
    if model == AttributionModel::FirstTouch {
        return attribute_first_touch(spans, memory, earlier, lookback_ms);
    }
    let mut running = Running::new(model, lookback_ms, memory);
    for span in spans {
        span.attributed = running.step(span);
    }
}

/// `first_touch`: each session *S* takes the acquisition of the earliest non-direct
/// session *P* with `0 ≤ start(S) − start(P) ≤ L`, among the dropped runs and the held
/// sessions; with none, its own. Two cursors, one per list, move forward only (`start(S) −
/// L` grows along the walk), so this is one pass.
fn attribute_first_touch(spans: &mut [Span], memory: Memory, earlier: &[Memory], lookback_ms: i64) {
    let latest = (!memory.is_none()).then_some(memory);
    let runs = earlier.len() + usize::from(latest.is_some());
    let run = |i: usize| earlier.get(i).copied().or(latest).unwrap_or(Memory::NONE);
    let (mut m, mut h) = (0, 0);
    for i in 0..spans.len() {
        let start = spans[i].start_ts;
        let from = start.saturating_sub(lookback_ms);
        while m < runs && run(m).start < from {
            m += 1;
        }
        while h <= i && (!spans[h].non_direct || spans[h].start_ts < from) {
            h += 1;
        }
        // A run joins the walk at its own start: normally before every held session, but
        // an event later than the allowed lateness can start a held session before it.
        let dropped = (m < runs && run(m).start <= start).then(|| run(m));
        let held = (h <= i).then(|| (spans[h].start_ts, spans[h].acquisition));
        spans[i].attributed = match (dropped, held) {
            (Some(r), Some((held_start, _))) if r.start <= held_start => r.touch,
            (_, Some((_, touch))) => touch,
            (Some(r), None) => r.touch,
            (None, None) => spans[i].acquisition,
        };
    }
}

/// The memory after the given sessions are dropped: the running record past them. Under
/// `first_touch`, `earlier` holds the runs before the memory and is updated too; the
/// count of runs the cap refused is returned with it.
pub fn fold(
    spans: &[Span],
    memory: Memory,
    earlier: &mut Vec<Memory>,
    model: AttributionModel,
    lookback_ms: i64,
    same_touch: impl Fn(DimsId, DimsId) -> bool,
) -> (Memory, u64) {
    match model {
        AttributionModel::Session => {
            earlier.clear();
            (Memory::NONE, 0)
        }
        AttributionModel::LastNonDirect => {
            earlier.clear();
            let mut running = Running::new(model, lookback_ms, memory);
            for span in spans {
                running.step(span);
            }
            (running.finish(), 0)
        }
        AttributionModel::FirstTouch => {
            if !spans.iter().any(|s| s.non_direct) {
                return (memory, 0);
            }
            if !memory.is_none() {
                earlier.push(memory);
            }
            let mut capped = 0;
            for span in spans.iter().filter(|s| s.non_direct) {
                let own = Memory {
                    start: span.start_ts,
                    touch: span.acquisition,
                };
                capped += u64::from(!push_run(earlier, own, lookback_ms, &same_touch));
            }
            let latest = earlier.pop().unwrap_or(Memory::NONE);
            (latest, capped)
        }
    }
}

/// Adds a dropped non-direct session to a list of runs (oldest first). Runs more than the
/// lookback before it go first: no session still to come can take them. Returns false
/// when the cap refused it.
fn push_run(
    runs: &mut Vec<Memory>,
    own: Memory,
    lookback_ms: i64,
    same_touch: &impl Fn(DimsId, DimsId) -> bool,
) -> bool {
    prune_runs(runs, own.start.saturating_sub(lookback_ms));
    let at = runs.partition_point(|r| r.start <= own.start);
    if at == runs.len()
        && let Some(last) = runs.last_mut()
        && same_touch(last.touch, own.touch)
    {
        last.start = own.start;
        return true;
    }
    if runs.len() >= MAX_FIRST_TOUCH_RUNS {
        return false;
    }
    // Not at the end only after an event later than the allowed lateness: it is kept at
    // its place in time, as it is.
    runs.insert(at, own);
    true
}

/// Drops the runs that started before `before` (they are sorted by start).
pub fn prune_runs(runs: &mut Vec<Memory>, before: i64) {
    let stale = runs.partition_point(|r| r.start < before);
    runs.drain(..stale);
}

/// Whether a memory can still matter to a session starting at or after `earliest_start`:
/// every model ignores a record more than the lookback before a session's start (under
/// `first_touch`, the latest run is the memory: when it cannot matter, no run can).
pub fn still_relevant(memory: Memory, earliest_start: i64, lookback_ms: i64) -> bool {
    !memory.is_none() && earliest_start.saturating_sub(memory.start) <= lookback_ms
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_memory_stays_16_bytes_and_earlier_runs_24() {
        assert_eq!(std::mem::size_of::<Memory>(), 16);
        assert_eq!(std::mem::size_of::<EarlierRuns>(), 24);
    }

    #[test]
    fn earlier_runs_keep_one_inline_and_prune_from_the_oldest() {
        let at = |start| Memory { start, touch: 1 };
        assert_eq!(EarlierRuns::from_vec(Vec::new()), None);
        let one = EarlierRuns::from_vec(vec![at(5)]).unwrap();
        assert_eq!((one.heap_bytes(), one.as_slice()), (0, &[at(5)][..]));
        let many = EarlierRuns::from_vec(vec![at(1), at(3), at(5)]).unwrap();
        assert!(many.heap_bytes() > 0);
        assert_eq!(many.clone().pruned(1), Some(many.clone()));
        assert_eq!(many.clone().pruned(4), Some(EarlierRuns::One(at(5))));
        assert_eq!(many.pruned(6), None);
    }

    #[test]
    fn a_run_continues_on_the_same_touch_and_stale_runs_go_first() {
        let same = |a: DimsId, b: DimsId| a % 10 == b % 10; // ids 1 and 11: one touch
        let mut runs = vec![Memory { start: 0, touch: 1 }];
        assert!(push_run(
            &mut runs,
            Memory {
                start: 5,
                touch: 11
            },
            100,
            &same
        ));
        assert_eq!(runs, vec![Memory { start: 5, touch: 1 }]);
        assert!(push_run(
            &mut runs,
            Memory {
                start: 50,
                touch: 2
            },
            100,
            &same
        ));
        // 5 is more than 100 before 120: gone.
        assert!(push_run(
            &mut runs,
            Memory {
                start: 120,
                touch: 3
            },
            100,
            &same
        ));
        assert_eq!(
            runs,
            vec![
                Memory {
                    start: 50,
                    touch: 2
                },
                Memory {
                    start: 120,
                    touch: 3
                }
            ]
        );
    }
}
