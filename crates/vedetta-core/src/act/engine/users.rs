//! The engine's users: their facts side by side in one list, found by pseudonym through a
//! small map of positions.
//!
//! A hash map holding the facts themselves (about 200 bytes an entry) cost the processor
//! twice on live traffic with a million users held (`perf`, 2026-12-05): every growth of
//! the map moved all the facts into a freshly zeroed table (the largest single cost of the
//! trigger stage while users accumulate), and every lookup missed the cache on the table's
//! control bytes, on the entry's key and again on its facts. Here the map's entries are 20
//! bytes (a million of them fit the last-level cache), its growth moves only those, and
//! the list grows by reallocation (for large lists a remap of pages, not a copy). Iterating
//! the users (the snapshot copy, the size report, a reload's rebuild) walks one list.
//!
//! Removal swaps the last user into the freed place, so the list stays dense; no position
//! leaves this module.

use super::UserFacts;
use crate::pipeline::hash::FastHashMap;
use crate::record::UserPseudonym;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Users' facts by pseudonym (see the module's overview). Equal when they hold the same
/// users with the same facts, whatever the order they were added in; encoded as a map in
/// pseudonym order.
#[derive(Clone, Debug, Default)]
pub struct UserTable {
    /// Where each user's facts are in `facts`.
    positions: FastHashMap<UserPseudonym, u32>,
    facts: Vec<(UserPseudonym, UserFacts)>,
}

impl UserTable {
    pub fn len(&self) -> usize {
        self.facts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.facts.is_empty()
    }

    pub fn contains_key(&self, user: &UserPseudonym) -> bool {
        self.positions.contains_key(user)
    }

    #[inline]
    pub fn get(&self, user: &UserPseudonym) -> Option<&UserFacts> {
        let at = *self.positions.get(user)?;
        Some(&self.facts[at as usize].1)
    }

    #[inline]
    pub fn get_mut(&mut self, user: &UserPseudonym) -> Option<&mut UserFacts> {
        let at = *self.positions.get(user)?;
        Some(&mut self.facts[at as usize].1)
    }

    /// The user's facts, made by `new` when the table does not hold the user; and whether
    /// they were.
    #[inline]
    pub fn get_or_insert_with(
        &mut self,
        user: UserPseudonym,
        new: impl FnOnce() -> UserFacts,
    ) -> (&mut UserFacts, bool) {
        let next = self.facts.len();
        match self.positions.entry(user) {
            std::collections::hash_map::Entry::Occupied(at) => {
                (&mut self.facts[*at.get() as usize].1, false)
            }
            std::collections::hash_map::Entry::Vacant(vacant) => {
                vacant.insert(position(next));
                self.facts.push((user, new()));
                (&mut self.facts[next].1, true)
            }
        }
    }

    /// Where `user`'s facts are, when held.
    #[inline]
    pub fn position(&self, user: &UserPseudonym) -> Option<usize> {
        self.positions.get(user).map(|at| *at as usize)
    }

    /// The facts at `at` when they are `user`'s (a position may be stale: removal moves the
    /// last user into the freed place).
    #[inline]
    pub fn at_mut(&mut self, at: usize, user: &UserPseudonym) -> Option<&mut UserFacts> {
        match self.facts.get_mut(at) {
            Some((held, facts)) if held == user => Some(facts),
            _ => None,
        }
    }

    /// The facts at position `at` (as [`Self::position`] or
    /// [`Self::position_or_insert_with`] gave it, with no removal since).
    #[inline]
    pub fn facts_at_mut(&mut self, at: usize) -> &mut UserFacts {
        &mut self.facts[at].1
    }

    /// The position of the user's facts, made by `new` when the table does not hold the
    /// user; and whether they were.
    #[inline]
    pub fn position_or_insert_with(
        &mut self,
        user: UserPseudonym,
        new: impl FnOnce() -> UserFacts,
    ) -> (usize, bool) {
        let next = self.facts.len();
        match self.positions.entry(user) {
            std::collections::hash_map::Entry::Occupied(at) => (*at.get() as usize, false),
            std::collections::hash_map::Entry::Vacant(vacant) => {
                vacant.insert(position(next));
                self.facts.push((user, new()));
                (next, true)
            }
        }
    }

    /// Adds or replaces the user's facts; gives back the facts replaced.
    pub fn insert(&mut self, user: UserPseudonym, facts: UserFacts) -> Option<UserFacts> {
        match self.positions.get(&user) {
            Some(&at) => Some(std::mem::replace(&mut self.facts[at as usize].1, facts)),
            None => {
                self.positions.insert(user, position(self.facts.len()));
                self.facts.push((user, facts));
                None
            }
        }
    }

    pub fn remove(&mut self, user: &UserPseudonym) -> Option<UserFacts> {
        let at = self.positions.remove(user)? as usize;
        let (_, facts) = self.facts.swap_remove(at);
        if let Some((moved, _)) = self.facts.get(at) {
            // The last user took the freed place.
            self.positions.insert(*moved, position(at));
        }
        Some(facts)
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&UserPseudonym, &UserFacts)> + Clone {
        self.facts.iter().map(|(user, facts)| (user, facts))
    }

    pub fn keys(&self) -> impl ExactSizeIterator<Item = &UserPseudonym> + Clone {
        self.facts.iter().map(|(user, _)| user)
    }

    pub fn values(&self) -> impl ExactSizeIterator<Item = &UserFacts> + Clone {
        self.facts.iter().map(|(_, facts)| facts)
    }

    pub fn values_mut(&mut self) -> impl ExactSizeIterator<Item = &mut UserFacts> {
        self.facts.iter_mut().map(|(_, facts)| facts)
    }

    /// Bytes the table itself takes (the facts' lists are counted by
    /// [`UserFacts::approximate_bytes`]).
    pub fn table_bytes(&self) -> usize {
        self.positions.capacity() * (std::mem::size_of::<(UserPseudonym, u32)>() + 1)
            + self.facts.capacity() * std::mem::size_of::<(UserPseudonym, UserFacts)>()
    }
}

/// A position in the list: the table holds fewer than 2³² users (a user's facts are tens of
/// bytes at least, so 2³² of them would not fit in memory).
fn position(at: usize) -> u32 {
    u32::try_from(at).expect("fewer than 2^32 users held")
}

impl PartialEq for UserTable {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len()
            && self
                .iter()
                .all(|(user, facts)| other.get(user) == Some(facts))
    }
}

/// Like a map's: panics when the table does not hold the user.
impl std::ops::Index<&UserPseudonym> for UserTable {
    type Output = UserFacts;

    fn index(&self, user: &UserPseudonym) -> &UserFacts {
        self.get(user).expect("a user the table holds")
    }
}

impl<'a> IntoIterator for &'a UserTable {
    type Item = (&'a UserPseudonym, &'a UserFacts);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (UserPseudonym, UserFacts)>,
        fn(&'a (UserPseudonym, UserFacts)) -> (&'a UserPseudonym, &'a UserFacts),
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.facts.iter().map(|(user, facts)| (user, facts))
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
        let (found, new) = table.get_or_insert_with(user(5), || facts(50));
        assert!(new);
        assert_eq!(found.last_seen_ms, 50);
        let (found, new) = table.get_or_insert_with(user(5), || facts(51));
        assert!(!new);
        assert_eq!(found.last_seen_ms, 50);
        assert_eq!(table.len(), 8);
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
