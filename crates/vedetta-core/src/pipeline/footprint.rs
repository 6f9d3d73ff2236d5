//! What the pipeline's state costs in memory, estimated from its data structures.
//!
//! The figure behind "≤ 300 bytes of state per active user": the operator sizes a server
//! by it, and `examples/state_memory.rs` checks it against the process's resident memory.
//! It is an estimate from capacities, not a count of what the allocator holds: a hash map
//! costs its buckets (one entry plus one control byte each, occupied or not) and a vector
//! its capacity, and every heap block is rounded up as a typical `malloc` does (an 8-byte
//! header, 16-byte granules). Per-user and per-event state are kept apart: the exact-dedup
//! memory grows with the events of the last day, not with the users active now.

use std::collections::{BTreeMap, HashMap};
use std::mem::size_of;

/// Estimated heap bytes held by each part of the pipeline's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateFootprint {
    /// Users with state held.
    pub users: usize,
    /// The user map's table (keys, per-user headers, control bytes).
    pub user_map_bytes: usize,
    /// The users' own event lists, outside the map.
    pub user_events_bytes: usize,
    /// The eviction schedule (users by due minute).
    pub expiry_bytes: usize,
    /// Event ids remembered for exact dedup.
    pub event_ids: usize,
    /// The exact-dedup map and its expiry lists: per-event state, held for the dedup
    /// horizon (24 h) whether or not the user is still active.
    pub dedup_bytes: usize,
    /// Order ids remembered for order dedup (per order, over the order horizon: 7 days).
    pub orders: usize,
    pub order_bytes: usize,
    /// Memories of users with no state left, waiting for the store to take them.
    pub dormant_users: usize,
    pub dormant_bytes: usize,
    /// Users whose `first_touch` memory holds more than one run.
    pub earlier_runs_users: usize,
    /// The earlier `first_touch` runs of those users (map and lists).
    pub earlier_runs_bytes: usize,
    /// Orders remembered for their refunds (per order, over the refund horizon: 60 days),
    /// and the refund state's maps (`super::refunds::RefundBook`).
    pub refund_orders: usize,
    pub refund_bytes: usize,
}

impl StateFootprint {
    /// Everything that grows with the active users (dedup left out).
    pub fn per_user_state_bytes(&self) -> usize {
        self.user_map_bytes + self.user_events_bytes + self.expiry_bytes + self.earlier_runs_bytes
    }

    /// Per-user state divided by the active users (0 without users).
    pub fn bytes_per_user(&self) -> f64 {
        ratio(self.per_user_state_bytes(), self.users)
    }

    /// Per-user state plus the dedup memory, divided by the active users.
    pub fn bytes_per_user_with_dedup(&self) -> f64 {
        ratio(self.per_user_state_bytes() + self.dedup_bytes, self.users)
    }
}

fn ratio(bytes: usize, users: usize) -> f64 {
    if users == 0 {
        0.0
    } else {
        bytes as f64 / users as f64
    }
}

/// A heap block of `bytes` as a typical allocator hands it out (none for zero bytes).
pub(crate) fn heap_block(bytes: usize) -> usize {
    if bytes == 0 {
        0
    } else {
        (bytes + 8).div_ceil(16).max(2) * 16
    }
}

/// The table of a `HashMap`: buckets × (entry + control byte) plus one group of control
/// bytes, from its capacity (7/8 of the buckets once past the smallest tables).
pub(crate) fn hash_map<K, V, S>(map: &HashMap<K, V, S>) -> usize {
    let capacity = map.capacity();
    if capacity == 0 {
        return 0;
    }
    let buckets = if capacity < 8 {
        (capacity + 1).next_power_of_two()
    } else {
        (capacity / 7 * 8).next_power_of_two()
    };
    heap_block(buckets * (size_of::<(K, V)>() + 1) + 16)
}

/// A `Vec`'s buffer.
pub(crate) fn vec<T>(v: &Vec<T>) -> usize {
    heap_block(v.capacity() * size_of::<T>())
}

/// A `BTreeMap` of vectors: its nodes (about 11 entries each, two-thirds full on average)
/// and each vector's buffer.
pub(crate) fn btree_of_vecs<K, T>(map: &BTreeMap<K, Vec<T>>) -> usize {
    let node = heap_block(11 * (size_of::<K>() + size_of::<Vec<T>>()) + 16);
    let nodes = map.len().div_ceil(7);
    nodes * node + map.values().map(vec).sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_like_malloc() {
        assert_eq!(heap_block(0), 0);
        assert_eq!(heap_block(1), 32);
        assert_eq!(heap_block(24), 32);
        assert_eq!(heap_block(25), 48);
        assert_eq!(heap_block(128), 144);
    }

    #[test]
    fn a_map_costs_its_buckets() {
        let mut map: HashMap<u64, u64> = HashMap::new();
        assert_eq!(hash_map(&map), 0);
        map.extend((0..1_000).map(|i| (i, i)));
        // 1,000 entries need 2,048 buckets (at most 7/8 full).
        assert_eq!(map.capacity(), 1_792);
        assert_eq!(hash_map(&map), heap_block(2_048 * 17 + 16));
    }
}
