//! A bounded memo for enrichment lookups that are pure but not free (user-agent parsing, GeoIP).
//!
//! Real traffic repeats itself: a shop sees a few hundred distinct user agents a day and each
//! visitor's network many times in a session, so remembering answers turns a microsecond parse
//! into a hash lookup. The keys come from clients, though, so the memo must stay bounded
//! whatever they send.
//!
//! Eviction is by generations, the simplest scheme that keeps what is hot: new answers go into
//! the *young* map; when it is full it becomes the *old* map and the previous old map is
//! dropped. A hit in the old map moves the entry back to the young one. An entry used at least
//! once per generation therefore stays forever, a one-off is forgotten after two generations,
//! and there is no per-entry bookkeeping (no recency list, no timestamps). Each map holds at
//! most half the capacity, so the whole memo never exceeds it.

use crate::pipeline::hash::FastHashMap;
use std::borrow::Borrow;
use std::hash::Hash;

/// A memo of at most `capacity` entries, evicting by generations (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct GenerationalCache<K, V> {
    young: FastHashMap<K, V>,
    old: FastHashMap<K, V>,
    /// Entries per generation: half the capacity, rounded down. Zero disables the memo.
    generation_capacity: usize,
}

impl<K: Hash + Eq, V: Copy> GenerationalCache<K, V> {
    /// A memo holding at most `capacity` entries; a capacity below 2 remembers nothing.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            young: FastHashMap::default(),
            old: FastHashMap::default(),
            generation_capacity: capacity / 2,
        }
    }

    /// The remembered value for `key`, if any.
    pub(crate) fn get<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(value) = self.young.get(key) {
            return Some(*value);
        }
        // Still in use: move it to the young generation so that it survives the next turn.
        let (key, value) = self.old.remove_entry(key)?;
        self.insert(key, value);
        Some(value)
    }

    /// Remembers `value` for `key`, starting a new generation if the young one is full.
    pub(crate) fn insert(&mut self, key: K, value: V) {
        if self.generation_capacity == 0 {
            return;
        }
        if self.young.len() >= self.generation_capacity {
            // The young map becomes the old one; the old one's allocation is reused.
            std::mem::swap(&mut self.young, &mut self.old);
            self.young.clear();
        }
        self.young.insert(key, value);
    }

    /// Entries remembered now.
    pub(crate) fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    pub(crate) fn clear(&mut self) {
        self.young.clear();
        self.old.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_holds_more_than_its_capacity() {
        for capacity in [0, 1, 2, 3, 10, 101] {
            let mut cache = GenerationalCache::new(capacity);
            for key in 0..1_000u32 {
                cache.insert(key, key * 2);
                assert!(
                    cache.len() <= capacity,
                    "capacity {capacity}: {}",
                    cache.len()
                );
            }
        }
    }

    #[test]
    fn hot_entries_survive_generations_and_one_offs_are_forgotten() {
        let mut cache = GenerationalCache::new(10);
        cache.insert("hot".to_string(), 1);
        for one_off in 0..100 {
            cache.insert(format!("one-off {one_off}"), 0);
            // Used more often than once per generation (5 entries): never evicted.
            assert_eq!(cache.get("hot"), Some(1), "after {one_off}");
        }
        assert_eq!(cache.get("one-off 0"), None);
        assert_eq!(cache.get("one-off 99"), Some(0));
    }

    #[test]
    fn a_capacity_below_two_remembers_nothing() {
        let mut cache = GenerationalCache::new(1);
        cache.insert(1, 1);
        assert_eq!(cache.get(&1), None);
        assert_eq!(cache.len(), 0);
    }
}
