//! The hash function of the pipeline's maps: fast on the short keys it hashes, seeded.
//!
//! Every record costs a dozen hash-map lookups (its user, its event id, its dimensions, its
//! user agent and network in the enrichment memos, three to nine KPI rows), so the hash
//! function is a visible share of the pipeline's time. The standard library's SipHash
//! spends about 20 ns on a 16-byte key; this one, a folded multiply per 8 bytes (the
//! construction of `foldhash` and `wyhash`), a few.
//!
//! It is not a cryptographic hash, but it is seeded: every map gets a random seed from the
//! standard library's per-process randomness, so a client cannot pick event ids, user
//! agents or campaign names that collide in our tables without knowing the seed (the
//! "minimal DoS resistance" of `foldhash`, what the keys here need: the ones clients shape
//! directly are strings and event-id fingerprints; user pseudonyms are keyed MACs already).
//! Nothing the pipeline computes depends on the hash: only how fast maps answer.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};

/// A `HashMap` with the pipeline's hash function.
pub type FastHashMap<K, V> = HashMap<K, V, FastHashState>;

/// Builds seeded [`FastHasher`]s; each instance has its own random seed.
#[derive(Clone, Copy, Debug)]
pub struct FastHashState {
    seed: u64,
}

impl Default for FastHashState {
    fn default() -> Self {
        // Std's `RandomState` holds per-process random keys, advanced for each instance.
        Self {
            seed: RandomState::new().hash_one(0x5EED_u64) | 1,
        }
    }
}

impl BuildHasher for FastHashState {
    type Hasher = FastHasher;

    fn build_hasher(&self) -> FastHasher {
        FastHasher {
            accumulator: self.seed,
            seed: self.seed,
        }
    }
}

/// The hasher itself: see the module docs.
#[derive(Clone, Copy, Debug)]
pub struct FastHasher {
    accumulator: u64,
    seed: u64,
}

/// Constants with well-mixed bits (the fractional parts of π, e and √2).
const ARBITRARY_1: u64 = 0x243F_6A88_85A3_08D3;
const ARBITRARY_2: u64 = 0xB7E1_5162_8AED_2A6B;
const ARBITRARY_3: u64 = 0x6A09_E667_F3BC_C908;

/// The full 128-bit product folded to 64 bits: every input bit reaches every output bit.
#[inline(always)]
fn folded_multiply(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

impl FastHasher {
    #[inline(always)]
    fn mix_pair(&mut self, a: u64, b: u64) {
        self.accumulator = folded_multiply(self.accumulator ^ a, self.seed ^ ARBITRARY_3 ^ b);
    }
}

/// The little-endian `u64` at `at` (the caller checks the bounds).
#[inline]
fn word(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

#[inline]
fn half_word(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

impl Hasher for FastHasher {
    #[inline]
    fn write_u64(&mut self, word: u64) {
        self.accumulator = folded_multiply(self.accumulator ^ word, self.seed ^ ARBITRARY_1);
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        // Sixteen bytes per multiply: user agents and dimension keys are 40–200 bytes.
        let mut rest = bytes;
        while rest.len() > 16 {
            let (a, b) = (word(rest, 0), word(rest, 8));
            self.mix_pair(a, b);
            rest = &rest[16..];
        }
        // The last 1..=16 bytes as two words that may overlap; the length keeps apart inputs
        // that would read the same words ("ab" and "ab\0").
        let length = (bytes.len() as u64).rotate_right(8);
        let (a, b) = match rest.len() {
            8..=16 => (word(rest, 0), word(rest, rest.len() - 8)),
            4..=7 => (
                u64::from(half_word(rest, 0)),
                u64::from(half_word(rest, rest.len() - 4)),
            ),
            1..=3 => (
                u64::from(rest[0]) | u64::from(rest[rest.len() / 2]) << 8,
                u64::from(rest[rest.len() - 1]),
            ),
            _ => (0, 0),
        };
        self.mix_pair(a, b ^ length);
    }

    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    #[inline]
    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    #[inline]
    fn write_u128(&mut self, n: u128) {
        self.write_u64(n as u64);
        self.write_u64((n >> 64) as u64);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    #[inline]
    fn write_i64(&mut self, n: i64) {
        self.write_u64(n as u64);
    }

    #[inline]
    fn write_isize(&mut self, n: isize) {
        self.write_u64(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        folded_multiply(self.accumulator, self.seed ^ ARBITRARY_2)
    }
}

/// A cheap, unseeded digest of a string: its length and at most four words sampled from it
/// (not the first, which many keys share: `Mozilla/5.0 (`), multiplied. For the
/// direct-mapped fronts of memos (user agents, dimension tuples), whose hits are checked by
/// comparing the whole key: a collision there costs one miss, so they need neither a seed
/// nor a pass over every byte. Never for a hash map: clients can make any number of strings
/// share a sample, and a map would walk them all.
// Always inline: a few instructions per call, three calls per event, and out of line (as
// the compiler chose once the tuple's touch was sampled apart) the call cost a third more.
#[inline(always)]
pub(crate) fn sampled(bytes: &[u8]) -> u64 {
    let n = bytes.len();
    let sample = match n {
        8.. => {
            let last = n - 8;
            word(bytes, last / 4)
                ^ word(bytes, last / 2).rotate_left(16)
                ^ word(bytes, last / 4 * 3).rotate_left(32)
                ^ word(bytes, last).rotate_left(48)
        }
        4..=7 => u64::from(half_word(bytes, 0)) | u64::from(half_word(bytes, n - 4)) << 32,
        1..=3 => u64::from(bytes[0]) | u64::from(bytes[n / 2]) << 8 | u64::from(bytes[n - 1]) << 16,
        0 => 0,
    };
    (sample ^ (n as u64).rotate_right(8)).wrapping_mul(ARBITRARY_1)
}

/// Whether two byte strings are equal, without a `memcmp` call for short ones (the parts of
/// a dimension tuple are a few bytes: the call cost more than the comparison).
#[inline]
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    // Two loads that may overlap cover every byte of a string up to twice their width.
    match n {
        8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        4..=7 => half_word(a, 0) == half_word(b, 0) && half_word(a, n - 4) == half_word(b, n - 4),
        1..=3 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        0 => true,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn equal_keys_hash_equal_and_near_keys_apart() {
        let state = FastHashState::default();
        assert_eq!(state.hash_one("social"), state.hash_one("social"));
        let mut seen = HashSet::new();
        for text in [
            "",
            "a",
            "ab",
            "ab\0",
            "ba",
            "abc",
            "abcd",
            "abcdefgh",
            "abcdefgh\0",
            "abcdefghi",
            "abcdefghijklmnop",
            "abcdefghijklmnopq",
            "abcdefghijklmnop\0",
            "bacdefghijklmnopq",
        ] {
            assert!(seen.insert(state.hash_one(text)), "{text:?}");
        }
        // Sequential integers spread over the low bits (the bucket index) and the top 7
        // (hashbrown's control byte).
        let hashes: Vec<u64> = (0..4_096u64).map(|n| state.hash_one(n)).collect();
        let low: HashSet<u64> = hashes.iter().map(|h| h & 0xfff).collect();
        let top: HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert!(low.len() > 2_400, "{}", low.len());
        assert_eq!(top.len(), 128);
    }

    #[test]
    fn same_bytes_is_equality() {
        let texts: Vec<String> = (0..40)
            .flat_map(|n| {
                let base = "abcdefghijklmnopqrstuvwxyz0123456789ABCD"[..n].to_string();
                // The same length, one byte changed at each end and in the middle.
                let mut variants = vec![base.clone()];
                for at in [0, n / 2, n.saturating_sub(1)] {
                    if n > 0 {
                        let mut bytes = base.clone().into_bytes();
                        bytes[at] = b'_';
                        variants.push(String::from_utf8_lossy(&bytes).into_owned());
                    }
                }
                variants
            })
            .collect();
        for a in &texts {
            for b in &texts {
                assert_eq!(
                    same_bytes(a.as_bytes(), b.as_bytes()),
                    a == b,
                    "{a:?} {b:?}"
                );
            }
        }
    }

    #[test]
    fn every_map_has_its_own_seed() {
        let (a, b) = (FastHashState::default(), FastHashState::default());
        assert_ne!(a.hash_one(42u64), b.hash_one(42u64));
    }
}
