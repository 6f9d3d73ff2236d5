//! KPI counters and the deltas the pipeline emits.
//!
//! The pipeline never holds "the KPIs": it emits *changes* to them, keyed by granularity,
//! window and dimensions, which the store adds to what it has. A retraction (a purchase
//! flagged by a late registration, a session that moved to an earlier window) is a negative
//! change. Every counter is an integer, money included (micro-units), so the sum of changes
//! is exact whatever their order, and a replay reproduces the stored numbers to the unit.
//!
//! Money sums are `i128` micro-units. One record's amount is at most `i64::MAX` micro-units
//! (`to_micros` saturates, and intake bounds it far lower), so a sum of `i128` cannot wrap
//! before 2^64 such records: no order of purchases, however large, can turn a total around.

use super::hash::FastHashMap;
use serde::{Deserialize, Serialize};
use std::collections::hash_map::Entry;
use std::hash::{Hash, Hasher};

use super::windows::{Granularity, Window, WindowCalendar};

/// The built-in event types, in the order of `KpiCounters::events`.
pub const BUILT_IN_TYPES: [&str; 6] = [
    "page_view",
    "add_to_cart",
    "registration",
    "checkout",
    "purchase",
    "lead",
];

/// Counters of one row (or one change to a row). Ratios are derived when read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KpiCounters {
    /// Accepted events by built-in type (see [`BUILT_IN_TYPES`]).
    pub events: [i64; 6],
    /// Accepted events of custom types, by name.
    pub custom_events: Vec<(String, i64)>,
    pub sessions: i64,
    pub converting_sessions: i64,
    pub conversions: i64,
    /// Revenue in micro-units of the reporting currency, net of refunds. `i128`: a sum
    /// that cannot wrap.
    pub revenue_micros: i128,
    pub flagged: i64,
    pub duplicates: i64,
    pub late: i64,
    /// Refunds of this row's clean conversions (docs/semantics.md, "Refunds").
    pub refunds: i64,
    /// What they gave back, in micro-units (already taken off `revenue_micros`).
    pub refunded_micros: i128,
}

impl KpiCounters {
    /// Adds another set of counters (or a change) to this one.
    pub fn add(&mut self, other: &KpiCounters) {
        for (mine, theirs) in self.events.iter_mut().zip(other.events) {
            *mine += theirs;
        }
        for (name, count) in &other.custom_events {
            self.add_custom(name, *count);
        }
        self.sessions += other.sessions;
        self.converting_sessions += other.converting_sessions;
        self.conversions += other.conversions;
        self.revenue_micros += other.revenue_micros;
        self.flagged += other.flagged;
        self.duplicates += other.duplicates;
        self.late += other.late;
        self.refunds += other.refunds;
        self.refunded_micros += other.refunded_micros;
    }

    /// Adds counters read from the store to this sum (query totals, rule windows): like
    /// [`Self::add`], but a sum that would pass a bound stays at it. A real count is far
    /// below `i64::MAX`, so only corrupt stored rows get there; a pinned number then shows
    /// it, where overflow would panic (debug) or turn the total negative (release).
    ///
    /// Not for the pipeline's own deltas: they are changes of counted events and cannot
    /// overflow, and [`Self::add`] is on its hot path.
    pub fn add_saturating(&mut self, other: &KpiCounters) {
        for (mine, theirs) in self.events.iter_mut().zip(other.events) {
            *mine = mine.saturating_add(theirs);
        }
        for (name, count) in &other.custom_events {
            match self.custom_events.iter_mut().find(|(n, _)| n == name) {
                Some((_, existing)) => *existing = existing.saturating_add(*count),
                None => self.custom_events.push((name.clone(), *count)),
            }
        }
        self.custom_events.retain(|(_, c)| *c != 0);
        self.sessions = self.sessions.saturating_add(other.sessions);
        self.converting_sessions = self
            .converting_sessions
            .saturating_add(other.converting_sessions);
        self.conversions = self.conversions.saturating_add(other.conversions);
        self.revenue_micros = self.revenue_micros.saturating_add(other.revenue_micros);
        self.flagged = self.flagged.saturating_add(other.flagged);
        self.duplicates = self.duplicates.saturating_add(other.duplicates);
        self.late = self.late.saturating_add(other.late);
        self.refunds = self.refunds.saturating_add(other.refunds);
        self.refunded_micros = self.refunded_micros.saturating_add(other.refunded_micros);
    }

    /// Every accepted event, built-in and custom types together, saturating like
    /// [`Self::add_saturating`].
    pub fn total_events(&self) -> i64 {
        self.events
            .iter()
            .chain(self.custom_events.iter().map(|(_, c)| c))
            .fold(0i64, |sum, c| sum.saturating_add(*c))
    }

    pub fn add_custom(&mut self, name: &str, count: i64) {
        match self.custom_events.iter_mut().find(|(n, _)| n == name) {
            Some((_, existing)) => *existing += count,
            None => self.custom_events.push((name.to_string(), count)),
        }
        self.custom_events.retain(|(_, c)| *c != 0);
    }

    /// Whether every counter is zero (such a row is not stored or returned).
    pub fn is_zero(&self) -> bool {
        self.events.iter().all(|&c| c == 0)
            && self.custom_events.iter().all(|(_, c)| *c == 0)
            && self.sessions == 0
            && self.converting_sessions == 0
            && self.conversions == 0
            && self.revenue_micros == 0
            && self.flagged == 0
            && self.duplicates == 0
            && self.late == 0
            && self.refunds == 0
            && self.refunded_micros == 0
    }

    /// Events by canonical type name, zero counts left out.
    pub fn events_by_type(&self) -> impl Iterator<Item = (&str, i64)> {
        BUILT_IN_TYPES
            .iter()
            .copied()
            .zip(self.events)
            .chain(self.custom_events.iter().map(|(n, c)| (n.as_str(), *c)))
            .filter(|(_, c)| *c != 0)
    }
}

/// The dimensions of a row, as interned by the pipeline.
pub type DimsId = u32;

/// The key of a KPI row as the pipeline knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KpiKey {
    pub granularity: Granularity,
    pub window_start: i64,
    pub dims: DimsId,
}

/// The key of a spend row: spend has only channel and campaign (interned together).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SpendKey {
    pub granularity: Granularity,
    pub window_start: i64,
    pub channel_campaign: DimsId,
}

// Rows are looked up several times per event: two words to hash instead of three.
impl Hash for KpiKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_i64(self.window_start);
        state.write_u64(u64::from(self.dims) << 2 | u64::from(self.granularity.code()));
    }
}

impl Hash for SpendKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_i64(self.window_start);
        state.write_u64(u64::from(self.channel_campaign) << 2 | u64::from(self.granularity.code()));
    }
}

/// A spend row, or a change to one: the money and the number of spend records behind it.
///
/// The count is what tells unknown spend from zero spend: a row with no records has no
/// spend to report (`null` in the API), while records that sum to 0 are a spend of 0
/// (`docs/semantics.md`, "Unknown spend is not zero spend").
///
/// Not a stored format: the KPI store writes its own, versioned (`vedetta-store`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpendCounters {
    /// Micro-units of the reporting currency (`i128`, like revenue: sums cannot wrap).
    pub micros: i128,
    /// Spend records counted.
    pub records: i64,
}

impl SpendCounters {
    /// One spend record of this amount.
    pub fn record(micros: i64) -> Self {
        Self {
            micros: i128::from(micros),
            records: 1,
        }
    }

    pub fn add(&mut self, other: SpendCounters) {
        self.micros += other.micros;
        self.records += other.records;
    }

    /// Adds spend read from the store to this sum, staying at a bound rather than passing
    /// it (see [`KpiCounters::add_saturating`]).
    pub fn add_saturating(&mut self, other: SpendCounters) {
        self.micros = self.micros.saturating_add(other.micros);
        self.records = self.records.saturating_add(other.records);
    }

    /// Whether this is no spend at all (no records, no money): such a row is not stored.
    /// A row of records summing to 0 is not zero in this sense.
    pub fn is_zero(&self) -> bool {
        self.micros == 0 && self.records == 0
    }
}

/// Changes accumulated since the last time they were taken.
#[derive(Debug, Default, Clone)]
pub struct KpiDeltas {
    pub rows: FastHashMap<KpiKey, KpiCounters>,
    /// Spend changes: micro-units and records. (The name predates the record count; it is
    /// kept while the pipeline's event side is being rewritten, to keep that merge small.)
    pub spend_micros: FastHashMap<SpendKey, SpendCounters>,
}

impl KpiDeltas {
    /// Empty, with room for this many rows and spend rows.
    pub fn with_capacity(rows: usize, spend_rows: usize) -> Self {
        let mut deltas = Self::default();
        deltas.rows.reserve(rows);
        deltas.spend_micros.reserve(spend_rows);
        deltas
    }

    pub fn row(&mut self, key: KpiKey) -> &mut KpiCounters {
        self.rows.entry(key).or_default()
    }

    pub fn add_spend(&mut self, key: SpendKey, change: SpendCounters) {
        self.spend_micros.entry(key).or_default().add(change);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.spend_micros.is_empty()
    }

    /// Adds `later`, changes taken after these, to these: two takes of one batch merged in
    /// order are what one take at its end would have given (the same sums; a row whose
    /// changes cancel out is dropped, as [`Self::compact`] does; custom event names stay in
    /// the order they first came).
    pub fn merge(&mut self, later: KpiDeltas) {
        for (key, change) in later.rows {
            match self.rows.entry(key) {
                Entry::Occupied(mut row) => {
                    row.get_mut().add(&change);
                    if row.get().is_zero() {
                        row.remove();
                    }
                }
                Entry::Vacant(row) => {
                    row.insert(change);
                }
            }
        }
        for (key, change) in later.spend_micros {
            match self.spend_micros.entry(key) {
                Entry::Occupied(mut row) => {
                    row.get_mut().add(change);
                    if row.get().is_zero() {
                        row.remove();
                    }
                }
                Entry::Vacant(row) => {
                    row.insert(change);
                }
            }
        }
    }

    /// [`Self::merge`] the other way round: adds `earlier`, changes taken before these, to
    /// these, with the same result (each row's sum in the order of the takes). Merge the
    /// smaller into the larger: the cost is a lookup per row merged.
    pub fn merge_earlier(&mut self, earlier: KpiDeltas) {
        for (key, mut change) in earlier.rows {
            match self.rows.entry(key) {
                Entry::Occupied(mut row) => {
                    change.add(row.get());
                    if change.is_zero() {
                        row.remove();
                    } else {
                        *row.get_mut() = change;
                    }
                }
                Entry::Vacant(row) => {
                    row.insert(change);
                }
            }
        }
        for (key, mut change) in earlier.spend_micros {
            match self.spend_micros.entry(key) {
                Entry::Occupied(mut row) => {
                    change.add(*row.get());
                    if change.is_zero() {
                        row.remove();
                    } else {
                        *row.get_mut() = change;
                    }
                }
                Entry::Vacant(row) => {
                    row.insert(change);
                }
            }
        }
    }

    /// Rows and spend rows held.
    pub fn len(&self) -> usize {
        self.rows.len() + self.spend_micros.len()
    }

    /// Drops changes that cancelled out.
    pub fn compact(&mut self) {
        self.rows.retain(|_, counters| !counters.is_zero());
        // A spend of 0 from real records is kept: it is a known zero, not an absence.
        self.spend_micros.retain(|_, spend| !spend.is_zero());
    }
}

/// Contributions counted by minute only, and added to their hour and day rows when the
/// deltas are taken ([`MinuteRows::fold_into`]): one row lookup per contribution instead of
/// three, and three per minute row when taken (a minute row gathers about five
/// contributions in the bench). Sums are exact in any order, so the rows taken are the same.
///
/// Only contributions whose hour and day rows receive exactly what the minute row does go
/// here: built-in event types (a custom type's name list keeps the order its contributions
/// came in), not late for the hour or the day (the minute row's `late` is its own), and a
/// day that holds whole minutes (so that the minute lies in one day). The pipeline counts
/// every other contribution in all three rows at once, as before.
#[derive(Debug, Default)]
pub struct MinuteRows {
    rows: FastHashMap<KpiKey, KpiCounters>,
}

impl MinuteRows {
    /// The minute row of `window_start` (a minute) and `dims`.
    #[inline]
    pub fn row(&mut self, window_start: i64, dims: DimsId) -> &mut KpiCounters {
        self.rows
            .entry(KpiKey {
                granularity: Granularity::Minute,
                window_start,
                dims,
            })
            .or_default()
    }

    /// Adds every minute row to its minute, hour and day rows in `deltas`, and empties
    /// itself (keeping its room for the next batch).
    pub fn fold_into(&mut self, deltas: &mut KpiDeltas, calendar: &mut WindowCalendar) {
        // The minutes come in hash order: remember the few days they fall in, so that the
        // calendar's time-zone lookup runs once per day, not at every change of day.
        let mut days: Vec<Window> = Vec::new();
        for (minute, mut counters) in self.rows.drain() {
            let start = minute.window_start;
            let day = match days.iter().find(|d| d.start <= start && start < d.end) {
                Some(day) => *day,
                None => {
                    let day = calendar.window(Granularity::Day, start);
                    days.push(day);
                    day
                }
            };
            // Hours and days get no lateness from here (see the type's docs).
            let late = std::mem::take(&mut counters.late);
            for (granularity, window_start) in [
                (Granularity::Hour, start.div_euclid(HOUR) * HOUR),
                (Granularity::Day, day.start),
            ] {
                deltas
                    .row(KpiKey {
                        granularity,
                        window_start,
                        dims: minute.dims,
                    })
                    .add(&counters);
            }
            counters.late = late;
            match deltas.rows.entry(minute) {
                Entry::Occupied(mut row) => row.get_mut().add(&counters),
                Entry::Vacant(row) => {
                    row.insert(counters);
                }
            }
        }
    }
}

const HOUR: i64 = 3_600_000;

/// Rounds a money amount to integer micro-units, once, where it enters the pipeline.
pub fn to_micros(amount: f64) -> i64 {
    (amount * 1_000_000.0).round() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SpendKey {
        SpendKey {
            granularity: Granularity::Hour,
            window_start: 0,
            channel_campaign: 1,
        }
    }

    fn minute(window_start: i64, dims: DimsId) -> KpiKey {
        KpiKey {
            granularity: Granularity::Minute,
            window_start,
            dims,
        }
    }

    fn counters(sessions: i64, custom: &[(&str, i64)]) -> KpiCounters {
        KpiCounters {
            sessions,
            custom_events: custom.iter().map(|(n, c)| (n.to_string(), *c)).collect(),
            ..KpiCounters::default()
        }
    }

    #[test]
    fn merging_two_takes_gives_what_one_take_gives() {
        // One take over both spans: the changes summed in order, then compacted.
        let changes: [(KpiKey, KpiCounters); 5] = [
            (minute(0, 1), counters(1, &[("quiz", 1)])),
            (minute(0, 2), counters(1, &[])),
            (minute(60_000, 1), counters(2, &[])),
            // After the split: one row cancels out, one gains a second custom name.
            (minute(0, 2), counters(-1, &[])),
            (minute(0, 1), counters(0, &[("poll", 2)])),
        ];
        let spends = [
            (key(), SpendCounters::record(5)),
            (key(), SpendCounters::record(-5)),
        ];
        let mut once = KpiDeltas::default();
        for (k, c) in &changes {
            once.row(*k).add(c);
        }
        for (k, c) in spends {
            once.add_spend(k, c);
        }
        once.compact();
        let (first, second) = changes.split_at(3);
        let take = |rows: &[(KpiKey, KpiCounters)], spend: &[(SpendKey, SpendCounters)]| {
            let mut d = KpiDeltas::default();
            for (k, c) in rows {
                d.row(*k).add(c);
            }
            for (k, c) in spend {
                d.add_spend(*k, *c);
            }
            d.compact();
            d
        };
        let mut merged = take(first, &spends[..1]);
        merged.merge(take(second, &spends[1..]));
        assert_eq!(merged.rows, once.rows);
        assert_eq!(merged.spend_micros, once.spend_micros);
        let mut merged_the_other_way = take(second, &spends[1..]);
        merged_the_other_way.merge_earlier(take(first, &spends[..1]));
        assert_eq!(merged_the_other_way.rows, once.rows);
        assert_eq!(merged_the_other_way.spend_micros, once.spend_micros);
        // The cancelled row and spend are gone; the custom names keep their first order.
        assert_eq!(merged.rows.len(), 2);
        assert_eq!(
            merged.rows[&minute(0, 1)].custom_events,
            vec![("quiz".to_string(), 1), ("poll".to_string(), 2)]
        );
        // Spend records of 0 total money still count: two records, 0 micros, kept.
        assert_eq!(
            merged.spend_micros.get(&key()),
            Some(&SpendCounters {
                micros: 0,
                records: 2
            })
        );
    }

    #[test]
    fn a_spend_change_of_zero_money_survives_compaction_when_it_has_records() {
        let mut deltas = KpiDeltas::default();
        deltas.add_spend(key(), SpendCounters::record(0));
        deltas.compact();
        assert_eq!(
            deltas.spend_micros.get(&key()),
            Some(&SpendCounters {
                micros: 0,
                records: 1
            })
        );
        // Changes that cancel out entirely (money and records) are dropped.
        deltas.add_spend(
            key(),
            SpendCounters {
                micros: 0,
                records: -1,
            },
        );
        deltas.compact();
        assert!(deltas.is_empty());
    }
}
