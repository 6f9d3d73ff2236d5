//! Exact deduplication by `event_id` over the dedup horizon.
//!
//! An event is an exact duplicate when an accepted event with the same `event_id` has a
//! `ts` less than the horizon (24 h) away. Keeping every id for a day is the largest piece
//! of pipeline state, so ids are kept as 128-bit XXH3 fingerprints (collision odds are
//! negligible: ~10⁻²⁰ for a billion ids) with their event time, and dropped once the
//! watermark has moved so far that no event within the allowed lateness could match them.
//! Memory is therefore bounded by the traffic of one horizon plus the lateness.
//!
//! The map is the whole structure: an entry is a 16-byte fingerprint and an 8-byte time
//! (24 bytes, plus a control byte and the table's spare room: about 35 bytes an id). Expiry
//! sweeps it once per hour of watermark, which costs a pass over memory that is read in
//! order rather than a second index of every id.

use super::hash::FastHashMap;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeMap;
use std::collections::hash_map::Entry;

/// Fingerprint of an `event_id`.
pub fn fingerprint(event_id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(event_id.as_bytes())
}

/// A fingerprint as two words: 8-byte aligned, so a map entry with its time is 24 bytes
/// where a `u128` key (16-byte aligned) would make it 32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Key([u64; 2]);

// Word by word (`write_u64`), not as a 16-byte slice: the map rehashes every id each time
// it grows, and the byte path of the hasher is not always inlined there (docs/benchmarks.md,
// "Refunds": it was not once refunds added hashed keys of their own).
impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.0[0]);
        state.write_u64(self.0[1]);
    }
}

impl From<u128> for Key {
    fn from(fingerprint: u128) -> Self {
        Key([fingerprint as u64, (fingerprint >> 64) as u64])
    }
}

impl From<Key> for u128 {
    fn from(key: Key) -> Self {
        u128::from(key.0[0]) | u128::from(key.0[1]) << 64
    }
}

/// Accepted event ids by fingerprint, with expiry by event time.
#[derive(Debug, Default, Deserialize)]
#[serde(from = "DedupSnapshot")]
pub struct ExactDedup {
    /// Fingerprint → event time of the accepted event.
    seen: FastHashMap<Key, i64>,
    /// Ids with event time before this hour (`ts / 1 h`) are gone: the limit of the last
    /// sweep.
    swept_before_hour: Option<i64>,
}

impl Clone for ExactDedup {
    fn clone(&self) -> Self {
        Self {
            seen: self.seen.clone(),
            swept_before_hour: self.swept_before_hour,
        }
    }

    /// Into this table's memory when it has the source's size (the snapshot copy's reuse:
    /// the derived `clone_from` would allocate afresh).
    fn clone_from(&mut self, source: &Self) {
        self.seen.clone_from(&source.seen);
        self.swept_before_hour = source.swept_before_hour;
    }
}

/// The snapshot form, as the first version kept ids in memory: by fingerprint, and by hour
/// of event time for expiry. Snapshots of that version still restore (the hour index is no
/// longer needed and is written empty).
#[derive(Deserialize)]
struct DedupSnapshot {
    seen: FastHashMap<u128, i64>,
    #[allow(dead_code)] // read to keep the format; expiry sweeps `seen` instead
    by_hour: BTreeMap<i64, Vec<u128>>,
}

impl From<DedupSnapshot> for ExactDedup {
    fn from(snapshot: DedupSnapshot) -> Self {
        Self {
            seen: snapshot
                .seen
                .into_iter()
                .map(|(fp, ts)| (Key::from(fp), ts))
                .collect(),
            swept_before_hour: None,
        }
    }
}

impl Serialize for ExactDedup {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        /// The map with its keys as `u128`, streamed rather than copied.
        struct Seen<'a>(&'a FastHashMap<Key, i64>);
        impl Serialize for Seen<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_map(self.0.iter().map(|(key, ts)| (u128::from(*key), *ts)))
            }
        }
        let mut snapshot = serializer.serialize_struct("DedupSnapshot", 2)?;
        snapshot.serialize_field("seen", &Seen(&self.seen))?;
        snapshot.serialize_field("by_hour", &BTreeMap::<i64, Vec<u128>>::new())?;
        snapshot.end()
    }
}

const HOUR: i64 = 3_600_000;

/// One id's place in [`ExactDedup`]: [`ExactDedup::is_duplicate`] and
/// [`ExactDedup::remember`] with a single lookup.
#[derive(Debug)]
pub struct IdSlot<'a> {
    entry: Entry<'a, Key, i64>,
    swept_before_hour: Option<i64>,
}

impl IdSlot<'_> {
    /// Whether the id belongs to an accepted event less than `horizon_ms` from `ts`.
    pub fn is_duplicate(&self, ts: i64, horizon_ms: i64) -> bool {
        match &self.entry {
            Entry::Occupied(seen) => (seen.get() - ts).abs() < horizon_ms,
            Entry::Vacant(_) => false,
        }
    }

    /// Remembers the id for an accepted event at `ts` (replacing an older memory of it).
    pub fn remember(self, ts: i64) {
        if self
            .swept_before_hour
            .is_some_and(|hour| ts.div_euclid(HOUR) < hour)
        {
            // Already past the expiry limit: remembering it would only have it forgotten at
            // the next sweep, together with whatever it replaced.
            if let Entry::Occupied(seen) = self.entry {
                seen.remove();
            }
            return;
        }
        match self.entry {
            Entry::Occupied(mut seen) => {
                seen.insert(ts);
            }
            Entry::Vacant(slot) => {
                slot.insert(ts);
            }
        }
    }
}

impl ExactDedup {
    /// The event times remembered (for checking a restored snapshot).
    pub fn remembered_times(&self) -> impl Iterator<Item = i64> + '_ {
        self.seen.values().copied()
    }

    /// Whether `fingerprint` belongs to an accepted event less than `horizon_ms` from `ts`.
    pub fn is_duplicate(&self, fingerprint: u128, ts: i64, horizon_ms: i64) -> bool {
        self.seen
            .get(&Key::from(fingerprint))
            .is_some_and(|&seen_ts| (seen_ts - ts).abs() < horizon_ms)
    }

    /// Remembers an accepted event's id. A later accepted event with the same id (one more
    /// than a horizon away) replaces it.
    pub fn remember(&mut self, fingerprint: u128, ts: i64) {
        self.slot(fingerprint).remember(ts);
    }

    /// The place of one id, looked up once to judge an event and then remember it.
    pub fn slot(&mut self, fingerprint: u128) -> IdSlot<'_> {
        IdSlot {
            entry: self.seen.entry(Key::from(fingerprint)),
            swept_before_hour: self.swept_before_hour,
        }
    }

    /// Forgets ids whose event time is in an hour before that of `oldest_useful_ts` (events
    /// that old can no longer be matched by an event within the allowed lateness).
    ///
    /// Called twice per event and nearly always with nothing to do: that check is inline,
    /// the sweep is not.
    #[inline]
    pub fn expire(&mut self, oldest_useful_ts: i64) {
        // `hour >= oldest_useful_ts / 1 h` without the division: within the swept hour.
        if let Some(hour) = self.swept_before_hour
            && oldest_useful_ts < hour.saturating_add(1).saturating_mul(HOUR)
        {
            return;
        }
        self.sweep(oldest_useful_ts);
    }

    #[inline(never)]
    fn sweep(&mut self, oldest_useful_ts: i64) {
        let keep_from_hour = oldest_useful_ts.div_euclid(HOUR);
        if self
            .swept_before_hour
            .is_some_and(|hour| hour >= keep_from_hour)
        {
            return;
        }
        self.seen
            .retain(|_, ts| ts.div_euclid(HOUR) >= keep_from_hour);
        self.swept_before_hour = Some(keep_from_hour);
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Estimated heap bytes held (see [`super::footprint`]).
    pub fn heap_bytes(&self) -> usize {
        super::footprint::hash_map(&self.seen)
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
    fn snapshots_read_the_first_format_and_round_trip() {
        // The first version's shape: ids with their time, and the same ids by hour.
        #[derive(Serialize)]
        struct FirstVersion {
            seen: std::collections::HashMap<u128, i64>,
            by_hour: BTreeMap<i64, Vec<u128>>,
        }
        let (a, b) = (fingerprint("e-1"), fingerprint("e-2"));
        let first = FirstVersion {
            seen: [(a, 10 * HOUR), (b, 11 * HOUR)].into(),
            by_hour: [(10, vec![a]), (11, vec![b])].into(),
        };
        let bytes = postcard::to_allocvec(&first).expect("encodes");
        let restored: ExactDedup = postcard::from_bytes(&bytes).expect("decodes");
        assert_eq!(restored.len(), 2);
        assert!(restored.is_duplicate(a, 10 * HOUR, HOUR));
        let bytes = postcard::to_allocvec(&restored).expect("encodes");
        let mut again: ExactDedup = postcard::from_bytes(&bytes).expect("decodes");
        assert!(again.is_duplicate(b, 11 * HOUR, HOUR));
        again.expire(11 * HOUR);
        assert_eq!(again.len(), 1);
    }

    #[test]
    fn an_id_remembered_behind_the_sweep_is_forgotten_at_once() {
        let mut d = ExactDedup::default();
        let fp = fingerprint("e-1");
        d.remember(fp, 30 * HOUR);
        d.expire(10 * HOUR);
        // Accepted again (more than a horizon earlier), but already past the limit: as if
        // remembered and swept, which forgets the newer time too.
        d.remember(fp, 5 * HOUR);
        assert!(d.is_empty());
    }

    #[test]
    fn the_inline_check_sweeps_exactly_when_the_hour_moves_on() {
        // Around hour boundaries, before the epoch and at the ends of the range: a sweep
        // happens exactly when the limit's hour is past the last swept one.
        let limits = [
            i64::MIN,
            i64::MIN + 1,
            -HOUR - 1,
            -HOUR,
            -1,
            0,
            1,
            HOUR - 1,
            HOUR,
            5 * HOUR + 17,
            i64::MAX - HOUR,
            i64::MAX - 1,
            i64::MAX,
        ];
        for &first in &limits {
            for &then in &limits {
                let mut d = ExactDedup::default();
                d.expire(first);
                // An id at the start of the first limit's hour (kept by that sweep) shows
                // whether the second one swept.
                let inside = first.div_euclid(HOUR).saturating_mul(HOUR);
                d.remember(fingerprint("probe"), inside);
                assert_eq!(d.len(), 1, "first {first}");
                d.expire(then);
                let forgotten = inside.div_euclid(HOUR) < then.div_euclid(HOUR);
                assert_eq!(d.is_empty(), forgotten, "first {first}, then {then}");
                assert_eq!(
                    d.swept_before_hour,
                    Some(first.div_euclid(HOUR).max(then.div_euclid(HOUR))),
                    "first {first}, then {then}"
                );
            }
        }
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
