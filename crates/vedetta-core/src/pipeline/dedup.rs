//! Exact deduplication by `event_id` over the dedup horizon.
//!
//! An event is an exact duplicate when an accepted event with the same `event_id` has a
//! `ts` less than the horizon (24 h) away. Keeping every id for a day is the largest piece
//! of pipeline state, so ids are kept as 128-bit XXH3 fingerprints (collision odds are
//! negligible: ~10⁻²⁰ for a billion ids) with their event time, and dropped once the
//! watermark has moved so far that no event within the allowed lateness could match them.
//! Memory is therefore bounded by the traffic of one horizon plus the lateness.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Fingerprint of an `event_id`.
pub fn fingerprint(event_id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(event_id.as_bytes())
}

/// Accepted event ids by fingerprint, with expiry by event time.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ExactDedup {
    /// Fingerprint → event time of the accepted event.
    seen: HashMap<u128, i64>,
    /// Hour bucket of event time → fingerprints, for expiry.
    by_hour: BTreeMap<i64, Vec<u128>>,
}

const HOUR: i64 = 3_600_000;

impl ExactDedup {
    /// Whether `fingerprint` belongs to an accepted event less than `horizon_ms` from `ts`.
    pub fn is_duplicate(&self, fingerprint: u128, ts: i64, horizon_ms: i64) -> bool {
        self.seen
            .get(&fingerprint)
            .is_some_and(|&seen_ts| (seen_ts - ts).abs() < horizon_ms)
    }

    /// Remembers an accepted event's id. A later accepted event with the same id (one more
    /// than a horizon away) replaces it.
    pub fn remember(&mut self, fingerprint: u128, ts: i64) {
        self.seen.insert(fingerprint, ts);
        self.by_hour
            .entry(ts.div_euclid(HOUR))
            .or_default()
            .push(fingerprint);
    }

    /// Forgets ids whose event time is before `oldest_useful_ts` (events that old can no
    /// longer be matched by an event within the allowed lateness).
    pub fn expire(&mut self, oldest_useful_ts: i64) {
        let keep_from_hour = oldest_useful_ts.div_euclid(HOUR);
        while let Some(entry) = self.by_hour.first_entry() {
            if *entry.key() >= keep_from_hour {
                break;
            }
            let (_, fingerprints) = entry.remove_entry();
            for fp in fingerprints {
                // Only remove if not re-remembered with a newer time.
                if self
                    .seen
                    .get(&fp)
                    .is_some_and(|&ts| ts.div_euclid(HOUR) < keep_from_hour)
                {
                    self.seen.remove(&fp);
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Estimated heap bytes held (see [`super::footprint`]).
    pub fn heap_bytes(&self) -> usize {
        super::footprint::hash_map(&self.seen) + super::footprint::btree_of_vecs(&self.by_hour)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_within_the_horizon_only() {
        let mut d = ExactDedup::default();
        let fp = fingerprint("e-1");
        d.remember(fp, 1_000);
        assert!(d.is_duplicate(fp, 1_000, 86_400_000));
        assert!(d.is_duplicate(fp, 1_000 + 86_399_999, 86_400_000));
        assert!(!d.is_duplicate(fp, 1_000 + 86_400_000, 86_400_000));
        assert!(!d.is_duplicate(fingerprint("e-2"), 1_000, 86_400_000));
    }

    #[test]
    fn expiry_forgets_old_ids_only() {
        let mut d = ExactDedup::default();
        d.remember(fingerprint("old"), 0);
        d.remember(fingerprint("new"), 10 * HOUR);
        d.expire(5 * HOUR);
        assert_eq!(d.len(), 1);
        assert!(d.is_duplicate(fingerprint("new"), 10 * HOUR, HOUR));
    }
}
