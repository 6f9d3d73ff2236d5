//! Per-user state: the user's recent accepted events, from which sessions, attribution,
//! sequence flags and near-duplicates are all derived.
//!
//! Keeping events (32 bytes each) rather than sessions makes out-of-order arrival simple
//! and exact: an event is inserted at its place in event time, the user's sessions and
//! their attribution are recomputed from the list, and each entry remembers where its
//! contribution is currently counted ([`EventEntry::counted`], and whether it carries its
//! session's count). The pipeline moves exactly the contributions whose place changed, so
//! the stored KPIs always equal what the held events say, whatever the arrival order.
//!
//! Events are dropped once their session is final — no event within the allowed lateness
//! can join it — so state is bounded by the users active within the lateness. What later
//! sessions need of dropped ones is one [`Memory`] per user.

use super::attribution::{Memory, NO_DIMS};
use super::kpi::DimsId;
use serde::{Deserialize, Serialize};

/// An event type as a small id: built-ins first (0..6), then custom types.
pub type KindId = u16;

/// A set of event types, as the conversion types and the sides of sequence rules are: a
/// bit per id below 64 (the built-ins and the first custom types), a list for the others.
/// Asked several times per event; a bit test costs less than a call to search a slice.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KindSet {
    low: u64,
    others: Vec<KindId>,
}

impl KindSet {
    #[inline]
    pub fn contains(&self, kind: KindId) -> bool {
        match 1u64.checked_shl(u32::from(kind)) {
            Some(bit) => self.low & bit != 0,
            None => self.others.contains(&kind),
        }
    }

    pub fn insert(&mut self, kind: KindId) {
        match 1u64.checked_shl(u32::from(kind)) {
            Some(bit) => self.low |= bit,
            None if !self.others.contains(&kind) => self.others.push(kind),
            None => {}
        }
    }
}

impl FromIterator<KindId> for KindSet {
    fn from_iter<I: IntoIterator<Item = KindId>>(kinds: I) -> Self {
        let mut set = KindSet::default();
        for kind in kinds {
            set.insert(kind);
        }
        set
    }
}

/// Bits of [`EventEntry::bits`].
pub mod bits {
    /// Flagged by a sequence rule.
    pub const FLAGGED: u8 = 1;
    /// Of a conversion type.
    pub const CONVERSION: u8 = 1 << 1;
    /// Late for the granularity of index `g` (1m, 1h, 1d): `LATE << g`.
    pub const LATE: u8 = 1 << 2;
    /// The entry carries its session's count (it is the session's first event).
    pub const STARTS_SESSION: u8 = 1 << 5;
    /// With [`STARTS_SESSION`]: the session counted is converting.
    pub const SESSION_CONVERTING: u8 = 1 << 6;
    /// The event's own touch is not direct.
    pub const NON_DIRECT: u8 = 1 << 7;
}

/// One accepted event, as the user's state keeps it. 32 bytes: a list per user of these
/// is most of the pipeline's memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventEntry {
    pub ts: i64,
    /// Value in micro-units of the reporting currency (conversions only).
    pub value_micros: i64,
    /// The event's own dimensions: its touch, device and region.
    pub dims: DimsId,
    /// The dimensions its contribution is counted under now ([`NO_DIMS`]: not yet).
    pub counted: DimsId,
    pub kind: KindId,
    /// See [`bits`].
    pub bits: u8,
}

impl EventEntry {
    pub fn new(ts: i64, value_micros: i64, dims: DimsId, kind: KindId, bits: u8) -> Self {
        Self {
            ts,
            value_micros,
            dims,
            counted: NO_DIMS,
            kind,
            bits,
        }
    }

    pub fn has(&self, bit: u8) -> bool {
        self.bits & bit != 0
    }

    pub fn set(&mut self, bit: u8, on: bool) {
        if on {
            self.bits |= bit;
        } else {
            self.bits &= !bit;
        }
    }

    pub fn flagged(&self) -> bool {
        self.has(bits::FLAGGED)
    }

    pub fn conversion(&self) -> bool {
        self.has(bits::CONVERSION)
    }

    /// A conversion that counts: of a conversion type and not flagged.
    pub fn is_clean_conversion(&self) -> bool {
        self.conversion() && !self.flagged()
    }

    pub fn touch_is_non_direct(&self) -> bool {
        self.has(bits::NON_DIRECT)
    }
}

/// The events of one user still needed, sorted by `ts` (ties: log order, since a new event
/// goes after every held one with the same `ts`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UserState {
    pub entries: Vec<EventEntry>,
    /// Watermark at which all of this user's sessions are final.
    pub due: i64,
    /// What the user's dropped sessions left for later ones.
    pub memory: Memory,
    /// A later stage's hint about this user ([`super::Pipeline::last_stage_hint`]): opaque
    /// here, 0 for a user new to the pipeline, never stored (a restored pipeline starts
    /// with none) and no part of the state's equality. The trigger stage keeps where it
    /// holds the user, so that it does not look every event's user up in a table of
    /// millions of its own (a probe that missed the cache: most of the stage's time).
    #[serde(skip)]
    pub stage_hint: u32,
}

/// Equal when they hold the same events, due time and memory (the stage's hint is not
/// state: see [`UserState::stage_hint`]).
impl PartialEq for UserState {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries && self.due == other.due && self.memory == other.memory
    }
}

impl Eq for UserState {}

impl UserState {
    /// Where a new entry with this `ts` goes: after every held entry with `ts` ≤ it.
    pub fn position(&self, ts: i64) -> usize {
        self.entries.partition_point(|e| e.ts <= ts)
    }

    /// Whether an accepted event of `kind` lies less than `window_ms` from `ts`.
    pub fn has_near(&self, kind: KindId, ts: i64, window_ms: i64) -> bool {
        let from = self.entries.partition_point(|e| e.ts <= ts - window_ms);
        self.entries[from..]
            .iter()
            .take_while(|e| e.ts < ts + window_ms)
            .any(|e| e.kind == kind)
    }

    /// How many leading entries belong to final sessions: sessions whose last event is at
    /// least one gap before `horizon` (the oldest event time still within the allowed
    /// lateness). Always a session boundary.
    pub fn final_prefix(&self, horizon: i64, gap_ms: i64) -> usize {
        let entries = &self.entries;
        let Some(last) = entries.last() else {
            return 0;
        };
        if last.ts <= horizon - gap_ms {
            return entries.len();
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
        cut
    }
}

/// Short event lists freed by dropped users and by growth, kept for the next users who need
/// one of that capacity.
///
/// A short list grows one entry at a time (a user's first few events), each time into a new
/// block, and is freed when its user is dropped: a few hundred thousand `malloc` and `free`
/// calls an hour of traffic, for blocks of the same four sizes. Handing the blocks on costs
/// a push and a pop. What is kept is bounded ([`SpareLists::KEPT_PER_CAPACITY`] per
/// capacity, about 330 KB at most) and changes no number: only where lists live.
#[derive(Debug, Default)]
pub struct SpareLists {
    /// Index `c - 1`: empty lists of capacity exactly `c`.
    by_capacity: [Vec<Vec<EventEntry>>; SpareLists::SHORT],
}

impl SpareLists {
    /// Lists of capacity 1 to this are kept (the pipeline's exact growth: past it lists
    /// double).
    pub const SHORT: usize = 4;
    pub const KEPT_PER_CAPACITY: usize = 1_024;

    /// An empty list of exactly `capacity` entries.
    pub fn take(&mut self, capacity: usize) -> Vec<EventEntry> {
        match self.by_capacity.get_mut(capacity.wrapping_sub(1)) {
            Some(spares) => spares.pop().unwrap_or_else(|| Vec::with_capacity(capacity)),
            None => Vec::with_capacity(capacity),
        }
    }

    /// Keeps `list`'s block for a later [`Self::take`] (or frees it: too long, or enough
    /// kept).
    pub fn give(&mut self, mut list: Vec<EventEntry>) {
        if let Some(spares) = self.by_capacity.get_mut(list.capacity().wrapping_sub(1))
            && spares.len() < Self::KEPT_PER_CAPACITY
        {
            list.clear();
            spares.push(list);
        }
    }

    /// Lists kept now.
    pub fn len(&self) -> usize {
        self.by_capacity.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GAP: i64 = 1_800_000;

    fn user(ts: &[i64]) -> UserState {
        UserState {
            entries: ts
                .iter()
                .enumerate()
                .map(|(i, &t)| EventEntry::new(t, 0, i as DimsId, 0, 0))
                .collect(),
            due: 0,
            memory: Memory::NONE,
            stage_hint: 0,
        }
    }

    #[test]
    fn spare_lists_come_back_empty_with_their_exact_capacity_and_stay_bounded() {
        let mut spares = SpareLists::default();
        for capacity in 0..=6 {
            let mut list = spares.take(capacity);
            assert!(list.is_empty() && list.capacity() >= capacity);
            list.extend(user(&[0; 6][..capacity]).entries);
            spares.give(list);
        }
        assert_eq!(
            spares.len(),
            SpareLists::SHORT,
            "capacities 1 to 4 kept, not 0, 5, 6"
        );
        for capacity in 1..=SpareLists::SHORT {
            let list = spares.take(capacity);
            assert!(list.is_empty());
            assert_eq!(list.capacity(), capacity);
        }
        assert!(spares.is_empty());
        for _ in 0..2 * SpareLists::KEPT_PER_CAPACITY {
            spares.give(Vec::with_capacity(2));
        }
        assert_eq!(spares.len(), SpareLists::KEPT_PER_CAPACITY);
    }

    #[test]
    fn a_kind_set_holds_exactly_its_kinds() {
        let kinds = [0, 4, 5, 63, 64, 65, 300, KindId::MAX];
        let set: KindSet = kinds.into_iter().collect();
        for kind in 0..=KindId::MAX {
            assert_eq!(set.contains(kind), kinds.contains(&kind), "{kind}");
        }
        assert!(!KindSet::default().contains(0));
    }

    #[test]
    fn an_entry_is_32_bytes() {
        assert_eq!(std::mem::size_of::<EventEntry>(), 32);
    }

    #[test]
    fn a_new_event_goes_after_held_ones_of_the_same_time() {
        let u = user(&[0, 1_000, 1_000, 2_000]);
        assert_eq!(u.position(1_000), 3);
        assert_eq!(u.position(999), 1);
        assert_eq!(u.position(5_000), 4);
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
    fn only_final_sessions_are_in_the_final_prefix() {
        let u = user(&[0, 1_000, 3 * GAP, 3 * GAP + 1]);
        assert_eq!(u.final_prefix(2 * GAP, GAP), 2);
        assert_eq!(u.final_prefix(5 * GAP, GAP), 4);
        assert_eq!(u.final_prefix(GAP, GAP), 0);
    }
}
