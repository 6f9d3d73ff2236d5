//! Refunds: what the pipeline remembers of orders so that a refund lowers the revenue
//! where its order's conversion counted (docs/semantics.md, "Refunds").
//!
//! A refund names its order by `order_id`. The order's conversion counts in the rows of its
//! own `ts` under its session's attributed dimensions, and while the order's user is held
//! that place can still move (re-attribution, a late registration flagging it). So an order
//! is remembered in one of two ways, by the fingerprint of its id:
//!
//! - **held** ([`RefundBook::held_orders`]): its conversion is an entry of a held user, found by
//!   (user, `ts`, type) — unique among a user's accepted events, since near-duplicate
//!   detection keeps two of one type at least 100 ms apart. Refunds of a held order are a
//!   [`RefundTally`] attached to that entry ([`RefundBook::tallies`]): the entry's
//!   contribution is its value *net* of the tally, plus the tally in `refunds`/`refunded`,
//!   so the existing retract/add machinery moves the refunds with the conversion.
//! - **final** ([`FinalOrder`]): once the user's entries are dropped the place
//!   cannot change; what a later refund needs is the window time, the dimensions and the
//!   value left to refund: 24 bytes, plus the 16-byte key.
//!
//! A refund whose order is not known yet waits ([`RefundBook::pending`]) until the order
//! arrives or the refund's `ts` falls out of the allowed lateness; then it is counted as
//! unmatched and changes no KPI. Final orders are kept for `pipeline.refund_horizon`
//! (60 days by default) of event time.

use super::hash::FastHashMap;
use super::kpi::DimsId;
use crate::record::UserPseudonym;
use serde::{Deserialize, Serialize};
use std::hash::{Hash, Hasher};

/// A 128-bit fingerprint of an order id, as two words (8-byte aligned, as in dedup).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderKey(pub [u64; 2]);

// Hashed word by word (`write_u64`), not as a byte slice: no new callers of the hasher's
// byte path, whose inlining into the pipeline's hot maps is worth keeping (measured:
// docs/benchmarks.md, "Refunds").
impl Hash for OrderKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0[0]);
        state.write_u64(self.0[1]);
    }
}

impl From<u128> for OrderKey {
    fn from(fingerprint: u128) -> Self {
        OrderKey([fingerprint as u64, (fingerprint >> 64) as u64])
    }
}

/// A held conversion entry: its user, `ts` and type id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryKey {
    pub user: UserPseudonym,
    pub ts: i64,
    pub kind: u16,
}

impl Hash for EntryKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let (mut a, mut b) = ([0; 8], [0; 8]);
        a.copy_from_slice(&self.user.0[..8]);
        b.copy_from_slice(&self.user.0[8..]);
        state.write_u64(u64::from_le_bytes(a));
        state.write_u64(u64::from_le_bytes(b));
        state.write_u64((self.ts as u64) ^ u64::from(self.kind) << 48);
    }
}

/// An order whose conversion's place is final: what a later refund needs. 24 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalOrder {
    /// The conversion's `ts` (its windows).
    pub ts: i64,
    /// Its value not refunded yet, in micro-units.
    pub remaining_micros: i64,
    /// The dimensions it counted under; `NO_DIMS` when it did not count (flagged).
    pub dims: DimsId,
}

/// Refunds taken together: how many, and the money they ask back (before clamping to the
/// order's value).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundTally {
    pub count: i64,
    pub micros: i64,
}

impl RefundTally {
    pub fn add(&mut self, other: RefundTally) {
        self.count += other.count;
        self.micros = self.micros.saturating_add(other.micros);
    }

    /// The part of the tally an order of `value` micro-units can give back.
    pub fn applied(&self, value: i64) -> i64 {
        self.micros.min(value.max(0))
    }
}

/// Refunds waiting for their order: the tally and the latest refund's `ts`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub tally: RefundTally,
    pub latest_ts: i64,
}

/// Everything the pipeline keeps for refunds. One field of the snapshot (format 3).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RefundBook {
    /// Orders with a final place, by the fingerprint of their id, for the refund horizon.
    pub orders: FastHashMap<OrderKey, FinalOrder>,
    /// Orders whose conversion is a held entry.
    pub held_orders: FastHashMap<OrderKey, EntryKey>,
    /// The same, the other way: to make an order final when its entry is dropped.
    pub held_entries: FastHashMap<EntryKey, OrderKey>,
    /// Refunds of held orders, by entry. Usually empty: most refunds come after the
    /// order's user is dropped.
    pub tallies: FastHashMap<EntryKey, RefundTally>,
    /// Refunds whose order has not arrived.
    pub pending: FastHashMap<OrderKey, Pending>,
}

impl RefundBook {
    /// Estimated heap bytes (see [`super::footprint`]).
    pub fn heap_bytes(&self) -> usize {
        super::footprint::hash_map(&self.orders)
            + super::footprint::hash_map(&self.held_orders)
            + super::footprint::hash_map(&self.held_entries)
            + super::footprint::hash_map(&self.tallies)
            + super::footprint::hash_map(&self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_final_order_is_24_bytes_and_its_key_16() {
        // The figure behind docs/benchmarks.md "Refunds": bytes per remembered order.
        assert_eq!(std::mem::size_of::<OrderKey>(), 16);
        assert_eq!(std::mem::size_of::<FinalOrder>(), 24);
    }

    /// docs/benchmarks.md "Refunds": a shop with 10,000 orders a day keeps 600,000 final
    /// orders over the 60-day horizon. Prints the estimate; bounds it.
    #[test]
    fn sixty_days_of_a_shop_with_10_000_orders_a_day_fit_in_memory() {
        let mut book = RefundBook::default();
        for i in 0..600_000_u64 {
            // Fingerprints are uniform; times, values and dimensions as a shop's are.
            let key = OrderKey::from(super::super::dedup::fingerprint(&i.to_string()));
            let order = FinalOrder {
                ts: 1_764_800_000_000 + i as i64 * 8_640,
                remaining_micros: 89_500_000,
                dims: (i % 500) as DimsId,
            };
            book.orders.insert(key, order);
        }
        let bytes = book.heap_bytes();
        let per_order = bytes as f64 / 600_000.0;
        let encoded = postcard::to_allocvec(&book).map_or(0, |b| b.len());
        eprintln!(
            "600,000 final orders: {bytes} bytes, {per_order:.1} bytes per order (entry {} \
             bytes); {encoded} bytes in a snapshot",
            std::mem::size_of::<(OrderKey, FinalOrder)>()
        );
        // 40-byte entries plus a control byte, in a power-of-two table at most 7/8 full.
        assert_eq!(std::mem::size_of::<(OrderKey, FinalOrder)>(), 40);
        assert!(per_order < 80.0, "{per_order}");
    }

    #[test]
    fn a_tally_gives_back_at_most_the_value() {
        let tally = RefundTally {
            count: 2,
            micros: 150,
        };
        assert_eq!(tally.applied(100), 100);
        assert_eq!(tally.applied(200), 150);
        assert_eq!(tally.applied(-5), 0);
    }
}
