//! The engine's users: their facts side by side in one list of slots, found by the position
//! the pipeline keeps for them, or by pseudonym through a map for the users it does not.
//!
//! A hash map holding the facts themselves (about 200 bytes an entry) cost the processor
//! twice on live traffic with a million users held (`perf`, 2026-12-05): every growth of
//! the map moved all the facts into a freshly zeroed table, and every lookup missed the
//! cache on the table's control bytes, on the entry's key and again on its facts. A map
//! of positions beside a dense list (the next step) still cost a probe into memory no
//! cache holds for every new user, and three for every user let go (the removed user's,
//! and the one moved into its place): with 40,000 new users a second, two fifths of the
//! trigger stage's time (`perf`, 2026-12-05).
//!
//! So a user's slot never moves while it is held (a freed slot is reused by a later user),
//! and the pipeline, which looks its own users up anyway, keeps each one's position in its
//! entry (the hint, see [`super::Engine::observe_judged`]). A user the engine makes that
//! way is not in the map at all. The map holds only the users no hint finds: every user
//! when the engine judges events itself (its unit tests), the users of a restored state
//! (the pipeline's hints are not stored), and the users the pipeline let go of while the
//! engine still holds them ([`super::Engine::pipeline_let_go`]). Lists of users inside
//! the engine (its sweeps, its candidates) carry each user's position with its pseudonym
//! ([`UserRef`]).

use super::UserFacts;
use crate::pipeline::hash::FastHashMap;
use crate::record::UserPseudonym;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A user and where its facts were when it was listed: found again by [`UserTable::find`]
/// (a slot holding another user, or none, means it was let go since; a user let go and
/// made again is listed again at its new place).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserRef {
    pub user: UserPseudonym,
    pub at: u32,
}

impl UserRef {
    /// A position that holds no one: [`UserTable::find`] then looks in the map.
    pub const UNKNOWN_AT: u32 = u32::MAX;
}

/// One user's place, or a free one. Aligned on the cache line: with the facts at 112
/// bytes (two intents inline) and the pseudonym's 16 a slot is two lines exactly (unaligned
/// it spanned three half the time), and a user's event reads and writes those two.
#[derive(Clone, Debug, Default)]
#[repr(align(64))]
struct Slot(Option<(UserPseudonym, UserFacts)>);

/// Users' facts in slots (see the module's overview). Equal when they hold the same users
/// with the same facts, wherever they sit; encoded as a map in pseudonym order.
#[derive(Clone, Debug, Default)]
pub struct UserTable {
    /// Where the users no hint finds are (see the overview).
    index: FastHashMap<UserPseudonym, u32>,
    slots: Vec<Slot>,
    /// Slots freed, reused last freed first.
    free: Vec<u32>,
    len: usize,
}

impl UserTable {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Users the map finds by pseudonym alone.
    pub fn indexed(&self) -> usize {
        self.index.len()
    }

    /// The position of `user` when the map holds it (a user made for a hint is found by
    /// its hint, or [`Self::find`] with its listed position).
    #[inline]
    pub fn position(&self, user: &UserPseudonym) -> Option<usize> {
        if self.index.is_empty() {
            return None;
        }
        self.index.get(user).map(|at| *at as usize)
    }

    /// Asks the CPU to bring the place at `at` (both its cache lines) into the cache, and
    /// goes on without waiting ([`super::Engine::prefetch`]); whether there is a place at
    /// `at` (held or free). Reads and changes nothing.
    #[inline]
    pub fn prefetch(&self, at: usize) -> bool {
        self.slots.get(at).map(prefetch::<Slot>).is_some()
    }

    /// The position of the user `r` names: its listed place when it still holds it, else
    /// where the map says.
    #[inline]
    pub fn find(&self, r: &UserRef) -> Option<usize> {
        match self.slots.get(r.at as usize) {
            Some(Slot(Some((held, _)))) if *held == r.user => Some(r.at as usize),
            _ => self.position(&r.user),
        }
    }

    /// The facts of the user the map holds (see [`Self::position`]).
    #[inline]
    pub fn get(&self, user: &UserPseudonym) -> Option<&UserFacts> {
        self.position(user).map(|at| self.facts_at(at))
    }

    /// The facts of `user` wherever they are, the map's or not: a walk over every slot when
    /// the map does not hold the user (for tests and rare questions, not a hot path).
    pub fn lookup(&self, user: &UserPseudonym) -> Option<&UserFacts> {
        self.get(user).or_else(|| {
            (self.iter())
                .find(|(held, _)| *held == user)
                .map(|(_, facts)| facts)
        })
    }

    /// Whether the table holds `user` (see [`Self::lookup`]).
    pub fn contains_key(&self, user: &UserPseudonym) -> bool {
        self.lookup(user).is_some()
    }

    /// The facts at `at` when they are `user`'s.
    #[inline]
    pub fn at_mut(&mut self, at: usize, user: &UserPseudonym) -> Option<&mut UserFacts> {
        match self.slots.get_mut(at) {
            Some(Slot(Some((held, facts)))) if held == user => Some(facts),
            _ => None,
        }
    }

    /// The facts at position `at`, which holds a user (as [`Self::position`],
    /// [`Self::find`] or [`Self::add`] gave it, with no removal of it since).
    #[inline]
    pub fn facts_at(&self, at: usize) -> &UserFacts {
        match &self.slots[at] {
            Slot(Some((_, facts))) => facts,
            Slot(None) => panic!("a freed slot read as a user's"),
        }
    }

    /// As [`Self::facts_at`], to change.
    #[inline]
    pub fn facts_at_mut(&mut self, at: usize) -> &mut UserFacts {
        match &mut self.slots[at] {
            Slot(Some((_, facts))) => facts,
            Slot(None) => panic!("a freed slot read as a user's"),
        }
    }

    /// The pseudonym held at `at`, when one is.
    #[inline]
    pub fn user_at(&self, at: usize) -> Option<&UserPseudonym> {
        self.slots.get(at)?.0.as_ref().map(|(user, _)| user)
    }

    /// Adds a user the table does not hold (the caller has looked), in the map when
    /// `indexed`; gives back its position.
    #[inline]
    pub fn add(&mut self, user: UserPseudonym, facts: UserFacts, indexed: bool) -> usize {
        let at = match self.free.pop() {
            Some(at) => {
                self.slots[at as usize] = Slot(Some((user, facts)));
                // The next new user's place, asked for now: a place is read before it is
                // written (to drop what it held), and free places lie anywhere (the misses
                // on them were two thirds of this function, `perf`, stop 38). New users come
                // tens of microseconds apart, ample time for the line to arrive.
                if let Some(&next) = self.free.last() {
                    self.prefetch(next as usize);
                }
                at as usize
            }
            None => {
                self.slots.push(Slot(Some((user, facts))));
                self.slots.len() - 1
            }
        };
        self.len += 1;
        if indexed {
            self.index.insert(user, position(at));
        }
        at
    }

    /// Puts the user at `at` in the map (one no hint will find any more).
    pub fn index_at(&mut self, at: usize) {
        if let Some(Slot(Some((user, _)))) = self.slots.get(at) {
            self.index.insert(*user, position(at));
        }
    }

    /// Adds or replaces the user's facts, in the map; gives back the facts replaced. For a
    /// table whose users are all in the map (one being decoded, or filled by this alone): a
    /// user not in it is taken for a new one.
    pub fn insert(&mut self, user: UserPseudonym, facts: UserFacts) -> Option<UserFacts> {
        match self.position(&user) {
            Some(at) => Some(std::mem::replace(self.facts_at_mut(at), facts)),
            None => {
                self.add(user, facts, true);
                None
            }
        }
    }

    /// The position of `user`, the map's or not (see [`Self::lookup`]).
    #[cfg(test)]
    fn lookup_position(&self, user: &UserPseudonym) -> Option<usize> {
        self.position(user).or_else(|| {
            (self.slots.iter())
                .position(|slot| slot.0.as_ref().is_some_and(|(held, _)| held == user))
        })
    }

    /// Lets go of the user at `at`; gives back its pseudonym and facts.
    pub fn remove_at(&mut self, at: usize) -> Option<(UserPseudonym, UserFacts)> {
        let (user, facts) = self.slots.get_mut(at)?.0.take()?;
        self.free.push(position(at));
        self.len -= 1;
        if !self.index.is_empty()
            && let std::collections::hash_map::Entry::Occupied(entry) = self.index.entry(user)
            && *entry.get() as usize == at
        {
            entry.remove();
        }
        if self.len == 0 {
            // Nothing held: the slots' memory goes too.
            self.slots = Vec::new();
            self.free = Vec::new();
        }
        Some((user, facts))
    }

    /// Lets go of `user` (see [`Self::lookup`]; the engine lets go by position).
    #[cfg(test)]
    pub fn remove(&mut self, user: &UserPseudonym) -> Option<UserFacts> {
        let at = self.lookup_position(user)?;
        self.remove_at(at).map(|(_, facts)| facts)
    }

    /// Every user with its position, in slot order.
    pub fn iter_at(&self) -> impl Iterator<Item = (usize, &UserPseudonym, &UserFacts)> + Clone {
        (self.slots.iter().enumerate())
            .filter_map(|(at, slot)| slot.0.as_ref().map(|(user, facts)| (at, user, facts)))
    }

    /// Every user with its position, in slot order, to change.
    pub fn iter_at_mut(&mut self) -> impl Iterator<Item = (usize, &UserPseudonym, &mut UserFacts)> {
        (self.slots.iter_mut().enumerate())
            .filter_map(|(at, slot)| slot.0.as_mut().map(|(user, facts)| (at, &*user, facts)))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&UserPseudonym, &UserFacts)> + Clone {
        self.slots
            .iter()
            .filter_map(|slot| slot.0.as_ref().map(|(user, facts)| (user, facts)))
    }

    pub fn keys(&self) -> impl Iterator<Item = &UserPseudonym> + Clone {
        self.iter().map(|(user, _)| user)
    }

    pub fn values(&self) -> impl Iterator<Item = &UserFacts> + Clone {
        self.iter().map(|(_, facts)| facts)
    }
}

/// Asks the CPU for the cache lines of `value` (at most two) without waiting for them.
///
/// A read that waits (what the read-ahead did before, safe Rust having no prefetch) holds
/// up the core once a few of them are in flight: the reads of the next events' places cost
/// a sixth of the trigger stage's samples as stalls (`perf`, stop 33: 137 of 847). A
/// prefetch instruction retires at once, so the reads overlap with the work between.
#[inline]
#[allow(unsafe_code)]
pub(super) fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let first = std::ptr::from_ref(value).cast::<i8>();
        // SAFETY: a prefetch is a hint to the cache: it reads nothing the program sees and
        // never faults, whatever the address. Both lie inside `value` or just past it (a
        // slot is two cache lines, see `a_slot_is_two_cache_lines`).
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(first);
            if std::mem::size_of::<T>() > 64 {
                _mm_prefetch::<_MM_HINT_T0>(first.wrapping_add(64));
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// A position in the list: the table holds fewer than 2³² users (a user's facts are tens of
/// bytes at least, so 2³² of them would not fit in memory).
fn position(at: usize) -> u32 {
    u32::try_from(at).expect("fewer than 2^32 users held")
}

impl PartialEq for UserTable {
    fn eq(&self, other: &Self) -> bool {
        let sorted = |table: &UserTable| {
            let mut all: Vec<(UserPseudonym, usize)> =
                table.iter_at().map(|(at, user, _)| (*user, at)).collect();
            all.sort_unstable();
            all
        };
        self.len() == other.len()
            && (sorted(self).into_iter().zip(sorted(other)))
                .all(|((a, at), (b, bt))| a == b && self.facts_at(at) == other.facts_at(bt))
    }
}

/// Like a map's: panics when the table does not hold the user (see [`UserTable::lookup`]).
impl std::ops::Index<&UserPseudonym> for UserTable {
    type Output = UserFacts;

    fn index(&self, user: &UserPseudonym) -> &UserFacts {
        self.lookup(user).expect("a user the table holds")
    }
}

impl Serialize for UserTable {
    /// A map in pseudonym order, so equal tables encode to equal bytes (the bytes of the
    /// `BTreeMap` of state format 1).
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut entries: Vec<(&UserPseudonym, &UserFacts)> = self.iter().collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        serializer.collect_map(entries)
    }
}

impl<'de> Deserialize<'de> for UserTable {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = UserTable;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of users to their facts")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UserTable, A::Error> {
                let mut table = UserTable::default();
                while let Some((user, facts)) = map.next_entry::<UserPseudonym, UserFacts>()? {
                    if table.insert(user, facts).is_some() {
                        return Err(serde::de::Error::custom("a user listed twice"));
                    }
                }
                Ok(table)
            }
        }
        deserializer.deserialize_map(Entries)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn user(n: u8) -> UserPseudonym {
        UserPseudonym([n; 16])
    }

    fn facts(seen: i64) -> UserFacts {
        UserFacts {
            last_seen_ms: seen,
            ..UserFacts::default()
        }
    }

    /// A user's event reaches its slot at random among millions: two cache lines, not three
    /// or four (docs/triggers.md, "After stage 5", step 7).
    #[test]
    fn a_slot_is_two_cache_lines() {
        assert!(std::mem::size_of::<UserFacts>() <= 112);
        assert_eq!(std::mem::size_of::<super::super::Intent>(), 24);
        assert_eq!(std::mem::size_of::<Slot>(), 128);
        assert_eq!(std::mem::align_of::<Slot>(), 64);
    }

    #[test]
    fn removal_keeps_every_other_user_findable() {
        let mut table = UserTable::default();
        for n in 0..10 {
            table.insert(user(n), facts(i64::from(n)));
        }
        // First, middle and last positions.
        for n in [0, 5, 9] {
            assert_eq!(table.remove(&user(n)), Some(facts(i64::from(n))));
            assert_eq!(table.remove(&user(n)), None);
        }
        assert_eq!(table.len(), 7);
        for n in (0..10).filter(|n| ![0, 5, 9].contains(n)) {
            assert_eq!(table.get(&user(n)), Some(&facts(i64::from(n))), "user {n}");
        }
        assert_eq!(table.insert(user(5), facts(50)), None);
        assert_eq!(table.insert(user(5), facts(51)), Some(facts(50)));
        assert_eq!(table.len(), 8);
    }

    /// Prefetching takes any place, held, freed or past the end, and changes nothing.
    #[test]
    fn places_prefetched_may_be_held_freed_or_none() {
        let mut table = UserTable::default();
        for n in 0..4 {
            table.insert(user(n), facts(i64::from(n)));
        }
        table.remove(&user(1));
        table.remove(&user(2));
        let before = table.clone();
        // Held and freed places are places; none past the end.
        assert_eq!([table.prefetch(3), table.prefetch(1)], [true; 2]);
        assert_eq!([table.prefetch(4), table.prefetch(usize::MAX)], [false; 2]);
        assert_eq!(table, before);
        assert_eq!(
            table.add(user(9), facts(9), true),
            2,
            "the last freed is taken first"
        );
    }

    #[test]
    fn users_made_for_a_hint_are_found_by_their_place_not_the_map() {
        let mut table = UserTable::default();
        let a = table.add(user(1), facts(1), false);
        let b = table.add(user(2), facts(2), true);
        assert_eq!(table.position(&user(1)), None, "not in the map");
        assert_eq!(table.position(&user(2)), Some(b));
        let listed = UserRef {
            user: user(1),
            at: position(a),
        };
        assert_eq!(table.find(&listed), Some(a));
        assert_eq!(table.lookup(&user(1)), Some(&facts(1)));
        // Let go, its slot reused by another user: the listing no longer finds it.
        assert_eq!(table.remove_at(a), Some((user(1), facts(1))));
        let c = table.add(user(3), facts(3), false);
        assert_eq!(c, a, "the freed slot is reused");
        assert_eq!(table.find(&listed), None);
        // Put in the map (the pipeline let go of it): found by pseudonym alone.
        table.index_at(c);
        assert_eq!(table.get(&user(3)), Some(&facts(3)));
        assert_eq!(table.remove(&user(3)), Some(facts(3)));
        assert_eq!(table.indexed(), 1);
        assert_eq!(table.len(), 1);
        assert_eq!(table.remove(&user(2)), Some(facts(2)));
        assert!(table.is_empty() && table.indexed() == 0);
    }

    #[test]
    fn equal_tables_encode_alike_whatever_their_order() {
        let mut a = UserTable::default();
        let mut b = UserTable::default();
        for n in 0..20 {
            a.insert(user(n), facts(i64::from(n)));
            b.insert(user(19 - n), facts(i64::from(19 - n)));
        }
        a.remove(&user(3));
        b.remove(&user(3));
        assert!(a == b);
        let (bytes_a, bytes_b) = (
            postcard::to_allocvec(&a).unwrap(),
            postcard::to_allocvec(&b).unwrap(),
        );
        assert!(bytes_a == bytes_b);
        let back: UserTable = postcard::from_bytes(&bytes_a).unwrap();
        assert!(back == a);
        b.insert(user(4), facts(99));
        assert!(a != b);
    }

    #[test]
    fn a_user_listed_twice_is_refused() {
        let entries = vec![(user(1), facts(1)), (user(1), facts(2))];
        let bytes = postcard::to_allocvec(&entries).unwrap();
        // A list of pairs has the bytes of a map of them (a length, then key and value).
        assert!(postcard::from_bytes::<UserTable>(&bytes).is_err());
    }
}
