//! Per-user state: the user's recent accepted events, from which sessions, sequence flags
//! and near-duplicates are all derived.
//!
//! Keeping events (32 bytes each) rather than sessions makes out-of-order arrival simple
//! and exact: an event is inserted at its place in event time, and only the session around
//! it is recomputed. Before the insertion that neighbourhood held at most two sessions (the
//! one ending before the event and the one starting after it); after it, exactly one (they
//! may merge through the new event). The caller retracts the old ones and adds the new one.
//!
//! Events are dropped once their session is final — no event within the allowed lateness
//! can join it — so state is bounded by the users active within the lateness.

use super::kpi::DimsId;
use serde::{Deserialize, Serialize};

/// An event type as a small id: built-ins first (0..6), then custom types.
pub type KindId = u16;

/// One accepted event, as the user's state keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventEntry {
    pub ts: i64,
    /// Log offset: breaks ties in event time by arrival.
    pub order: u64,
    /// Value in micro-units of the reporting currency (conversions only).
    pub value_micros: i64,
    pub dims: DimsId,
    pub kind: KindId,
    /// Flagged by a sequence rule.
    pub flagged: bool,
    /// Of a conversion type.
    pub conversion: bool,
}

impl EventEntry {
    /// A conversion that counts: of a conversion type and not flagged.
    pub fn is_clean_conversion(&self) -> bool {
        self.conversion && !self.flagged
    }

    fn sort_key(&self) -> (i64, u64) {
        (self.ts, self.order)
    }
}

/// What a session contributes to the KPIs: where it is counted and whether it converts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionView {
    pub first_ts: i64,
    pub first_order: u64,
    pub first_dims: DimsId,
    pub converting: bool,
}

/// The sessions a new event touches: none, one or two, without a heap allocation (this runs
/// for every accepted event). Reads as a slice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TouchedSessions {
    sessions: [SessionView; 2],
    len: usize,
}

impl std::ops::Deref for TouchedSessions {
    type Target = [SessionView];

    fn deref(&self) -> &[SessionView] {
        &self.sessions[..self.len]
    }
}

/// The events of one user still needed, sorted by (ts, order).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserState {
    pub entries: Vec<EventEntry>,
    /// Watermark at which all of this user's sessions are final.
    pub due: i64,
}

impl UserState {
    /// Where an entry with this (ts, order) goes.
    pub fn position(&self, ts: i64, order: u64) -> usize {
        self.entries.partition_point(|e| e.sort_key() < (ts, order))
    }

    /// Whether an accepted event of `kind` lies less than `window_ms` from `ts`.
    pub fn has_near(&self, kind: KindId, ts: i64, window_ms: i64) -> bool {
        let from = self.entries.partition_point(|e| e.ts <= ts - window_ms);
        self.entries[from..]
            .iter()
            .take_while(|e| e.ts < ts + window_ms)
            .any(|e| e.kind == kind)
    }

    /// The session containing the entry at `index`.
    pub fn session_at(&self, index: usize, gap_ms: i64) -> SessionView {
        let entries = &self.entries;
        let mut start = index;
        while start > 0 && entries[start].ts - entries[start - 1].ts < gap_ms {
            start -= 1;
        }
        let mut end = index;
        while end + 1 < entries.len() && entries[end + 1].ts - entries[end].ts < gap_ms {
            end += 1;
        }
        let first = &entries[start];
        SessionView {
            first_ts: first.ts,
            first_order: first.order,
            first_dims: first.dims,
            converting: entries[start..=end]
                .iter()
                .any(EventEntry::is_clean_conversion),
        }
    }

    /// The sessions a new event at `index` (not yet inserted) will touch: the one ending
    /// just before it and the one starting just after it, if within the gap.
    pub fn sessions_around(&self, index: usize, ts: i64, gap_ms: i64) -> TouchedSessions {
        let before = (index > 0 && ts - self.entries[index - 1].ts < gap_ms)
            .then(|| self.session_at(index - 1, gap_ms));
        let after = (index < self.entries.len() && self.entries[index].ts - ts < gap_ms)
            .then(|| self.session_at(index, gap_ms))
            .filter(|after| before.as_ref() != Some(after));
        // Built whole rather than pushed into: cheaper on this per-event path.
        let (sessions, len) = match (before, after) {
            (Some(first), Some(second)) => ([first, second], 2),
            (Some(only), None) | (None, Some(only)) => ([only, only], 1),
            (None, None) => return TouchedSessions::default(),
        };
        TouchedSessions { sessions, len }
    }

    /// Drops events whose sessions are final: sessions whose last event is at least one gap
    /// before `horizon` (the oldest event time still within the allowed lateness).
    /// Returns whether the user has no events left.
    pub fn drop_final_sessions(&mut self, horizon: i64, gap_ms: i64) -> bool {
        let entries = &self.entries;
        let Some(last) = entries.last() else {
            return true;
        };
        if last.ts <= horizon - gap_ms {
            self.entries.clear();
            return true;
        }
        // The latest session boundary whose earlier side is final.
        let mut cut = 0;
        for i in 1..entries.len() {
            if entries[i - 1].ts > horizon - gap_ms {
                break;
            }
            if entries[i].ts - entries[i - 1].ts >= gap_ms {
                cut = i;
            }
        }
        if cut > 0 {
            self.entries.drain(..cut);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GAP: i64 = 1_800_000;

    fn entry(ts: i64, order: u64, kind: KindId) -> EventEntry {
        EventEntry {
            ts,
            order,
            value_micros: 0,
            dims: order as DimsId,
            kind,
            flagged: false,
            conversion: false,
        }
    }

    fn user(ts: &[i64]) -> UserState {
        UserState {
            entries: ts
                .iter()
                .enumerate()
                .map(|(i, &t)| entry(t, i as u64, 0))
                .collect(),
            due: 0,
        }
    }

    #[test]
    fn sessions_split_at_the_gap() {
        let u = user(&[0, 1_000, GAP + 1_000, GAP + 2_000]);
        assert_eq!(u.session_at(1, GAP).first_ts, 0);
        assert_eq!(u.session_at(2, GAP).first_ts, GAP + 1_000);
    }

    #[test]
    fn an_event_in_the_gap_touches_both_neighbours() {
        let u = user(&[0, 2 * GAP - 2]);
        let touched = u.sessions_around(1, GAP - 1, GAP);
        assert_eq!(touched.len(), 2);
        // Exactly one gap away is not within the gap.
        let u = user(&[0, 2 * GAP]);
        assert!(u.sessions_around(1, GAP, GAP).is_empty());
        let alone = u.sessions_around(1, GAP / 2 - 1, GAP);
        assert_eq!(alone.len(), 1);
    }

    #[test]
    fn near_duplicates_look_both_ways_in_event_time() {
        let u = user(&[1_000]);
        assert!(u.has_near(0, 1_099, 100));
        assert!(u.has_near(0, 901, 100));
        assert!(!u.has_near(0, 1_100, 100));
        assert!(!u.has_near(0, 900, 100));
        assert!(!u.has_near(1, 1_000, 100));
    }

    #[test]
    fn only_final_sessions_are_dropped() {
        let mut u = user(&[0, 1_000, 3 * GAP, 3 * GAP + 1]);
        assert!(!u.drop_final_sessions(2 * GAP, GAP));
        assert_eq!(u.entries.len(), 2);
        assert!(u.drop_final_sessions(5 * GAP, GAP));
        assert!(u.entries.is_empty());
    }
}
