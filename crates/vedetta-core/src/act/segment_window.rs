//! The 1-minute KPI rows that `segment_cpa` triggers are judged on, kept from the
//! pipeline's own deltas instead of read from the KPI store (issue 12, stage 2 of
//! `docs/triggers.md`, "The next shape").
//!
//! ```text
//! for each record:  Pipeline::process ─► SegmentWindow::after_record: has the watermark
//!                                        reached the next minute end? (one compare)
//!                                          └─ yes: take the deltas so far, add their 1m rows,
//!                                             judge every minute end passed, drop old minutes
//! end of the batch: SegmentWindow::take_batch_deltas ─► the batch's deltas, whole ─► KPI store
//! ```
//!
//! **The promise.** A minute end `m` is judged right after the record after which the
//! pipeline's watermark first reaches `m`, on the deltas of every record up to and including
//! that one. [`SegmentWindow::group_totals`] then gives, for a segment trigger's rule, what
//! [`group_totals`] gives over the KPI store's rows at that point (the store holding exactly
//! those records' deltas). So the totals a minute is judged on are a function of the record
//! sequence and the trigger set, whatever the batch boundaries; a late event that arrives
//! after `m` was judged changes the windows judged after it, never the judged one. (The
//! trigger consumer reads the store when its thread gets to it: late events can already
//! be in, or not yet.)
//!
//! **The processor keeps committing every delta.** The deltas taken at a minute's end are
//! kept here and merged, in order, with the rest of the batch's by
//! [`SegmentWindow::take_batch_deltas`], which replaces `Pipeline::take_deltas` at the end
//! of each batch (and of each batch replayed from a snapshot, so that the window is rebuilt
//! with the pipeline): the store receives the same sums as before.
//!
//! **What is kept.** Segment triggers group by channel and campaign only (spend has no
//! other dimension; the rule checker refuses device and region for a CPA), so rows are
//! summed over device and region into one cell per (minute, channel, campaign), names
//! interned. Only the minutes of the longest segment window are kept: after minute end `t`
//! is judged, the minutes that start before `t + 1m − longest` are dropped, and **a late
//! delta for a minute already dropped is ignored** (counted: [`SegmentWindow::ignored`]):
//! no later judgement would read it. Deltas for a minute further than the out-of-orderness
//! plus a day ahead of the last minute judged (spend dated in the future: events cannot be
//! that far ahead of the watermark) are ignored too, and counted: when that minute comes,
//! its window lacks that spend, which the store has. Memory is then bounded by (longest
//! window + out-of-orderness + a day) × (channel, campaign) pairs per minute, and the name
//! tables by the pipeline's own bounds on channels and campaigns (they only grow, as its
//! table does). Name ids follow the order deltas were taken in, so two runs with other
//! batch boundaries hold equal windows under other ids: the totals, by name, are equal.
//!
//! A cell whose rows sum to zero counts as no row (the store drops a row that sums to
//! zero; rows of one pair that cancel each other across devices or regions would be
//! negative rows, which the pipeline never leaves: a retraction takes back what it added to
//! the same row). Custom event names come sorted by name in the totals: the store's scan
//! order decides theirs, and they do not enter a CPA.
//!
//! **Trigger sets.** With no segment trigger nothing is kept and nothing is taken early; a
//! minute end is still reported (only the latest one when several passed at once, as the
//! consumer does). A set whose longest window is longer than the minutes kept judges the
//! first minutes on a shorter span of data (until the window fills), and a set that adds
//! the first segment trigger starts from an empty window: the store still has the older
//! rows the consumer would have read. Applying a trigger set at a record position is stage 3.
//!
//! **State.** [`SegmentWindowState`] is a plain value, encoded as `[format][postcard]`
//! ([`SEGMENT_WINDOW_FORMAT`]), to be stored in the processor's snapshot: it is complete
//! between batches (after `take_batch_deltas`), when the processor snapshots.
//!
//! [`group_totals`]: crate::watch::evaluate::group_totals

use super::triggers::{Trigger, TriggerKind};
use crate::pipeline::Pipeline;
use crate::pipeline::hash::FastHashMap;
use crate::pipeline::kpi::{DimsId, KpiCounters, KpiDeltas, SpendCounters};
use crate::pipeline::windows::Granularity;
use crate::watch::evaluate::GroupTotals;
use crate::watch::rules::{Dimension, Rule};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

#[cfg(test)]
mod tests;

/// The format of an encoded [`SegmentWindowState`].
pub const SEGMENT_WINDOW_FORMAT: u8 = 1;

const MINUTE: i64 = 60_000;
const DAY: i64 = 86_400_000;

/// An interned channel or campaign name, or a (channel, campaign) pair.
type NameId = u32;
type PairId = u32;
/// A pipeline dims id not yet mapped to its pair.
const UNMAPPED: PairId = PairId::MAX;
/// No value in this position of a group key.
const NO_VALUE: NameId = NameId::MAX;

/// One (minute, channel, campaign): its KPI rows summed over device and region, and its
/// spend.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// `None`: no KPI row (or rows that summed to zero).
    pub counters: Option<KpiCounters>,
    /// Spend as (micro-units, records); `None`: no spend row.
    pub spend: Option<(i128, i64)>,
}

/// Everything the window keeps: a plain value for the processor's snapshot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SegmentWindowState {
    /// The end of the last minute judged.
    pub judged_through_ms: Option<i64>,
    /// Channel names by id.
    pub channels: Vec<String>,
    /// Campaign names by id.
    pub campaigns: Vec<String>,
    /// (channel id, campaign id) by pair id.
    pub pairs: Vec<(NameId, NameId)>,
    /// Minute start → pair id → cell.
    pub minutes: BTreeMap<i64, BTreeMap<PairId, Cell>>,
}

/// Delta rows the window ignored (see the module docs), since it was made or restored:
/// telemetry, not state (a row counts once per take, so the counts depend on batches).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ignored {
    /// For a minute that had already left the window.
    pub behind: u64,
    /// For a minute too far ahead.
    pub ahead: u64,
}

/// Why a window cannot be made or restored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SegmentWindowError {
    #[error(
        "trigger {trigger:?} groups or filters by {dimension}: segment windows keep channel and campaign only"
    )]
    Dimension {
        trigger: String,
        dimension: &'static str,
    },
    #[error(
        "segment window state of format {found}; this build reads format {SEGMENT_WINDOW_FORMAT}"
    )]
    Version { found: u8 },
    #[error("empty segment window state")]
    Empty,
    #[error("segment window state does not decode: {0}")]
    Body(String),
    #[error(
        "segment window state refers to a name or pair it does not hold, or its judged time is not a minute's end"
    )]
    Inconsistent,
    #[error("the segment window holds deltas of a batch in progress: encode it between batches")]
    MidBatch,
}

/// See the module docs.
#[derive(Debug)]
pub struct SegmentWindow {
    state: SegmentWindowState,
    /// The longest window of the segment triggers in force; `None`: there is none.
    longest_ms: Option<i64>,
    /// How far ahead of the last minute judged a delta is still kept.
    ahead_ms: i64,
    /// The watermark at which the next minute end is due (`i64::MIN`: the first one).
    next_due_ms: i64,
    /// Deltas taken within the current batch, for `take_batch_deltas`.
    early: KpiDeltas,
    ignored: Ignored,
    /// Derived from the state (not stored): names and pairs to ids.
    channel_ids: FastHashMap<String, NameId>,
    campaign_ids: FastHashMap<String, NameId>,
    pair_ids: FastHashMap<(NameId, NameId), PairId>,
    /// Derived: the pipeline's dims id → pair id ([`UNMAPPED`] until first seen). Valid for
    /// the one pipeline this window follows (restored from the same snapshot).
    pair_of_dims: Vec<PairId>,
}

impl SegmentWindow {
    /// An empty window for `triggers`, following a pipeline with this out-of-orderness.
    pub fn new(triggers: &[Trigger], out_of_orderness_ms: i64) -> Result<Self, SegmentWindowError> {
        Self::restore(triggers, out_of_orderness_ms, SegmentWindowState::default())
    }

    /// A window continuing from `state` (taken between batches, with the pipeline's
    /// snapshot at the same offset).
    pub fn restore(
        triggers: &[Trigger],
        out_of_orderness_ms: i64,
        state: SegmentWindowState,
    ) -> Result<Self, SegmentWindowError> {
        let names = |list: &[String]| -> FastHashMap<String, NameId> {
            list.iter()
                .enumerate()
                .map(|(id, name)| (name.clone(), id as NameId))
                .collect()
        };
        let channel_ids = names(&state.channels);
        let campaign_ids = names(&state.campaigns);
        let pair_ids: FastHashMap<(NameId, NameId), PairId> = state
            .pairs
            .iter()
            .enumerate()
            .map(|(id, pair)| (*pair, id as PairId))
            .collect();
        // A minute's end far from the integers' edges (the next minute end and a window's
        // start are computed from it).
        let judged_fits = state
            .judged_through_ms
            .is_none_or(|t| t.rem_euclid(MINUTE) == 0 && t.unsigned_abs() <= (i64::MAX / 4) as u64);
        let consistent = judged_fits
            && channel_ids.len() == state.channels.len()
            && campaign_ids.len() == state.campaigns.len()
            && pair_ids.len() == state.pairs.len()
            && state.pairs.iter().all(|(channel, campaign)| {
                (*channel as usize) < state.channels.len()
                    && (*campaign as usize) < state.campaigns.len()
            })
            && state
                .minutes
                .values()
                .all(|cells| cells.keys().all(|p| (*p as usize) < state.pairs.len()));
        if !consistent {
            return Err(SegmentWindowError::Inconsistent);
        }
        let mut window = Self {
            next_due_ms: state.judged_through_ms.map_or(i64::MIN, |t| t + MINUTE),
            state,
            longest_ms: None,
            ahead_ms: out_of_orderness_ms.max(0) + DAY,
            early: KpiDeltas::default(),
            ignored: Ignored::default(),
            channel_ids,
            campaign_ids,
            pair_ids,
            pair_of_dims: Vec::new(),
        };
        window.set_triggers(triggers)?;
        Ok(window)
    }

    /// Takes a new trigger set (a reload). Refused, with the window unchanged, when a
    /// segment trigger groups or filters by device or region.
    pub fn set_triggers(&mut self, triggers: &[Trigger]) -> Result<(), SegmentWindowError> {
        let mut longest = None;
        for trigger in triggers {
            let TriggerKind::SegmentCpa { rule, .. } = &trigger.kind else {
                continue;
            };
            let dimensions = rule
                .group_by
                .iter()
                .chain(rule.filter.iter().map(|(d, _)| d));
            if let Some(d) = dimensions
                .into_iter()
                .find(|d| !matches!(d, Dimension::Channel | Dimension::Campaign))
            {
                return Err(SegmentWindowError::Dimension {
                    trigger: trigger.name.clone(),
                    dimension: d.name(),
                });
            }
            longest = longest.max(Some(rule.over_ms));
        }
        self.longest_ms = longest;
        if longest.is_none() {
            self.state.minutes.clear();
        }
        Ok(())
    }

    /// Call after every `Pipeline::process`, with that pipeline. When the watermark has
    /// reached the next minute end, the deltas so far enter the window and `judge` is
    /// called for every minute end passed, in order, with that minute's totals (judge the
    /// segment triggers there: [`MinuteTotals::of`]). Otherwise it is one compare.
    #[inline]
    pub fn after_record<F: FnMut(&mut MinuteTotals<'_>)>(
        &mut self,
        pipeline: &mut Pipeline,
        mut judge: F,
    ) {
        if let Some(watermark) = pipeline.watermark()
            && watermark >= self.next_due_ms
        {
            self.minutes_passed(pipeline, watermark, &mut judge);
        }
    }

    #[inline(never)]
    fn minutes_passed(
        &mut self,
        pipeline: &mut Pipeline,
        watermark: i64,
        judge: &mut dyn FnMut(&mut MinuteTotals<'_>),
    ) {
        let last_end = watermark.div_euclid(MINUTE) * MINUTE;
        match self.longest_ms {
            None => judge(&mut MinuteTotals::new(self, last_end)),
            Some(_) => {
                let part = pipeline.take_deltas_within_batch();
                self.add(pipeline, &part);
                if self.early.is_empty() {
                    self.early = part;
                } else {
                    self.early.merge(part);
                }
                let mut m = self
                    .state
                    .judged_through_ms
                    .map_or(last_end, |t| t + MINUTE);
                while m <= last_end {
                    judge(&mut MinuteTotals::new(self, m));
                    m += MINUTE;
                }
            }
        }
        self.state.judged_through_ms = Some(last_end);
        self.next_due_ms = last_end + MINUTE;
        if let Some(longest) = self.longest_ms {
            // The next judgement reads from `last_end + 1m − longest` on.
            let keep_from = last_end + MINUTE - longest;
            while let Some(entry) = self.state.minutes.first_entry() {
                if *entry.key() >= keep_from {
                    break;
                }
                entry.remove();
            }
        }
    }

    /// Call at the end of every batch instead of `Pipeline::take_deltas`: the batch's
    /// deltas, whole (those taken at minute ends merged in order with the rest), for the
    /// KPI store; the rest enters the window.
    pub fn take_batch_deltas(&mut self, pipeline: &mut Pipeline) -> KpiDeltas {
        let rest = pipeline.take_deltas();
        self.add(pipeline, &rest);
        // Even with no segment trigger left (a reload within the batch), what was taken
        // early goes to the store.
        if self.early.is_empty() {
            return rest;
        }
        // The smaller into the larger, each row's sum in the order of the takes.
        let early = std::mem::take(&mut self.early);
        if early.len() >= rest.len() {
            let mut all = early;
            all.merge(rest);
            all
        } else {
            let mut all = rest;
            all.merge_earlier(early);
            all
        }
    }

    /// Adds the 1-minute rows of `deltas` (taken from `pipeline`) to the window.
    fn add(&mut self, pipeline: &Pipeline, deltas: &KpiDeltas) {
        let Some(longest) = self.longest_ms else {
            return;
        };
        let (from, until) = match self.state.judged_through_ms {
            Some(t) => (t + MINUTE - longest, t.saturating_add(self.ahead_ms)),
            None => (i64::MIN, i64::MAX),
        };
        for (key, change) in &deltas.rows {
            if key.granularity != Granularity::Minute {
                continue;
            }
            if !self.admits(key.window_start, from, until) {
                continue;
            }
            let Some(pair) = self.pair_of(pipeline, key.dims) else {
                continue;
            };
            let cell = self.cell(key.window_start, pair);
            let counters = cell.counters.get_or_insert_with(KpiCounters::default);
            counters.add(change);
            if counters.is_zero() {
                cell.counters = None;
                self.drop_if_empty(key.window_start, pair);
            } else if !counters.custom_events.is_empty() {
                counters
                    .custom_events
                    .sort_unstable_by(|a, b| a.0.cmp(&b.0));
            }
        }
        for (key, change) in &deltas.spend_micros {
            if key.granularity != Granularity::Minute {
                continue;
            }
            if !self.admits(key.window_start, from, until) {
                continue;
            }
            let Some(pair) = self.pair_of(pipeline, key.channel_campaign) else {
                continue;
            };
            let cell = self.cell(key.window_start, pair);
            let (micros, records) = cell.spend.get_or_insert((0, 0));
            *micros += change.micros;
            *records += change.records;
            if *micros == 0 && *records == 0 {
                cell.spend = None;
                self.drop_if_empty(key.window_start, pair);
            }
        }
    }

    fn admits(&mut self, minute: i64, from: i64, until: i64) -> bool {
        if minute < from {
            self.ignored.behind += 1;
            false
        } else if minute >= until {
            self.ignored.ahead += 1;
            false
        } else {
            true
        }
    }

    fn cell(&mut self, minute: i64, pair: PairId) -> &mut Cell {
        self.state
            .minutes
            .entry(minute)
            .or_default()
            .entry(pair)
            .or_default()
    }

    fn drop_if_empty(&mut self, minute: i64, pair: PairId) {
        if let Some(cells) = self.state.minutes.get_mut(&minute) {
            if cells
                .get(&pair)
                .is_some_and(|c| c.counters.is_none() && c.spend.is_none())
            {
                cells.remove(&pair);
            }
            if cells.is_empty() {
                self.state.minutes.remove(&minute);
            }
        }
    }

    /// The pair of a pipeline dims id, interning its names the first time.
    fn pair_of(&mut self, pipeline: &Pipeline, dims: DimsId) -> Option<PairId> {
        let index = dims as usize;
        if let Some(&pair) = self.pair_of_dims.get(index)
            && pair != UNMAPPED
        {
            return Some(pair);
        }
        let tuple = pipeline.dims(dims)?;
        let intern =
            |names: &mut Vec<String>, ids: &mut FastHashMap<String, NameId>, name: &str| {
                *ids.entry(name.to_owned()).or_insert_with(|| {
                    names.push(name.to_owned());
                    (names.len() - 1) as NameId
                })
            };
        let channel = intern(
            &mut self.state.channels,
            &mut self.channel_ids,
            &tuple.channel,
        );
        let campaign = intern(
            &mut self.state.campaigns,
            &mut self.campaign_ids,
            &tuple.campaign,
        );
        let pairs = &mut self.state.pairs;
        let pair = *self.pair_ids.entry((channel, campaign)).or_insert_with(|| {
            pairs.push((channel, campaign));
            (pairs.len() - 1) as PairId
        });
        if self.pair_of_dims.len() <= index {
            self.pair_of_dims.resize(index + 1, UNMAPPED);
        }
        self.pair_of_dims[index] = pair;
        Some(pair)
    }

    /// A segment trigger's rule's totals by group over `[minute_end − over, minute_end)`:
    /// what [`group_totals`] gives over the store's rows, for a minute end being judged
    /// (see the module docs). Custom event names come sorted. (When judging, ask
    /// [`MinuteTotals::of`]: rules of one shape share the sums.)
    ///
    /// [`group_totals`]: crate::watch::evaluate::group_totals
    pub fn group_totals(&self, rule: &Rule, minute_end: i64) -> HashMap<Vec<String>, GroupTotals> {
        let mut out: HashMap<Vec<String>, GroupTotals> = HashMap::new();
        // The filter's values as ids: a value never seen matches no row.
        let mut filter: Vec<(Dimension, NameId)> = Vec::with_capacity(rule.filter.len());
        for (d, value) in &rule.filter {
            let id = match d {
                Dimension::Channel => self.channel_ids.get(value),
                _ => self.campaign_ids.get(value),
            };
            match id {
                Some(id) => filter.push((*d, *id)),
                None => return out,
            }
        }
        let value = |d: Dimension, (channel, campaign): (NameId, NameId)| match d {
            Dimension::Channel => channel,
            _ => campaign,
        };
        let mut by_key: FastHashMap<[NameId; 2], GroupTotals> = FastHashMap::default();
        let from = minute_end.saturating_sub(rule.over_ms);
        for cells in self.state.minutes.range(from..minute_end).map(|(_, c)| c) {
            for (pair, cell) in cells {
                let pair = self.state.pairs[*pair as usize];
                if !filter.iter().all(|(d, id)| value(*d, pair) == *id) {
                    continue;
                }
                let mut key = [NO_VALUE; 2];
                for (slot, d) in key.iter_mut().zip(&rule.group_by) {
                    *slot = value(*d, pair);
                }
                if let Some(counters) = &cell.counters {
                    by_key.entry(key).or_default().counters.add(counters);
                }
                if let Some((micros, records)) = cell.spend {
                    let spend = by_key
                        .entry(key)
                        .or_default()
                        .spend
                        .get_or_insert_with(SpendCounters::default);
                    spend.micros += micros;
                    spend.records += records;
                }
            }
        }
        out.reserve(by_key.len());
        for (key, mut totals) in by_key {
            totals
                .counters
                .custom_events
                .sort_unstable_by(|a, b| a.0.cmp(&b.0));
            let group = rule
                .group_by
                .iter()
                .zip(key)
                .map(|(d, id)| match d {
                    Dimension::Channel => self.state.channels[id as usize].clone(),
                    _ => self.state.campaigns[id as usize].clone(),
                })
                .collect();
            out.insert(group, totals);
        }
        out
    }

    /// The state, for the processor's snapshot: complete between batches.
    pub fn state(&self) -> &SegmentWindowState {
        &self.state
    }

    /// The longest window of the segment triggers in force.
    pub fn longest_ms(&self) -> Option<i64> {
        self.longest_ms
    }

    /// Delta rows ignored so far.
    pub fn ignored(&self) -> Ignored {
        self.ignored
    }

    /// Minutes and cells held.
    pub fn held(&self) -> (usize, usize) {
        (
            self.state.minutes.len(),
            self.state.minutes.values().map(BTreeMap::len).sum(),
        )
    }

    /// `[SEGMENT_WINDOW_FORMAT][postcard]` of the state; refused within a batch (deltas
    /// taken early are not in the state yet).
    pub fn encode(&self) -> Result<Vec<u8>, SegmentWindowError> {
        if self.mid_batch() {
            return Err(SegmentWindowError::MidBatch);
        }
        Self::encode_state(&self.state)
    }

    /// Whether deltas taken within the current batch wait for
    /// [`Self::take_batch_deltas`] (the state is then not complete: not to be encoded).
    pub fn mid_batch(&self) -> bool {
        !self.early.is_empty()
    }

    /// What [`Self::encode`] writes, from a copy of the state taken between batches.
    pub fn encode_state(state: &SegmentWindowState) -> Result<Vec<u8>, SegmentWindowError> {
        let mut out = vec![SEGMENT_WINDOW_FORMAT];
        crate::encoding::append(state, &mut out)
            .map_err(|e| SegmentWindowError::Body(e.to_string()))?;
        Ok(out)
    }

    /// Decodes what [`Self::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<SegmentWindowState, SegmentWindowError> {
        match bytes.split_first() {
            None => Err(SegmentWindowError::Empty),
            Some((&SEGMENT_WINDOW_FORMAT, body)) => {
                postcard::from_bytes(body).map_err(|e| SegmentWindowError::Body(e.to_string()))
            }
            Some((&found, _)) => Err(SegmentWindowError::Version { found }),
        }
    }
}

/// How a rule groups, filters and windows the rows: rules of one shape have the same totals.
type Shape = (Vec<Dimension>, Vec<(Dimension, String)>, i64);

/// The window's totals at one minute end being judged, made once per shape of rule (a
/// realistic set has 88 segment triggers of 8 shapes).
#[derive(Debug)]
pub struct MinuteTotals<'a> {
    window: &'a SegmentWindow,
    minute_end: i64,
    by_shape: HashMap<Shape, HashMap<Vec<String>, GroupTotals>>,
}

impl<'a> MinuteTotals<'a> {
    fn new(window: &'a SegmentWindow, minute_end: i64) -> Self {
        Self {
            window,
            minute_end,
            by_shape: HashMap::new(),
        }
    }

    /// The minute end being judged.
    pub fn minute_end(&self) -> i64 {
        self.minute_end
    }

    /// The window, as it is at this minute end.
    pub fn window(&self) -> &'a SegmentWindow {
        self.window
    }

    /// The rule's totals by group ([`SegmentWindow::group_totals`] at this minute end),
    /// made once for the rules of one shape and given to each (the engine takes them
    /// owned).
    pub fn of(&mut self, rule: &Rule) -> HashMap<Vec<String>, GroupTotals> {
        let shape: Shape = (rule.group_by.clone(), rule.filter.clone(), rule.over_ms);
        let (window, minute_end) = (self.window, self.minute_end);
        self.by_shape
            .entry(shape)
            .or_insert_with(|| window.group_totals(rule, minute_end))
            .clone()
    }
}
