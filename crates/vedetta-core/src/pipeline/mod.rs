//! The streaming pipeline: log records in, KPI deltas out.
//!
//! ```text
//! record ─► watermark ─► enrich ─► dedup (exact, near) ─► sequence flags ─► sessions ─► deltas
//!   spend ─────────────────────────────────────────────────────────────────────────► deltas
//! ```
//!
//! [`Pipeline::process`] takes one log record at a time, in log order, and accumulates the
//! changes it causes to the stored KPIs; the processor adapter takes them with
//! [`Pipeline::take_deltas`] and commits them together with the offset. The pipeline is pure
//! and deterministic: its output depends only on its configuration and the records, so a
//! replay of the log gives the same numbers, to the micro-unit. `docs/semantics.md` defines
//! every number; this module implements it.

pub mod attribution;
pub mod dedup;
pub mod dims;
pub mod footprint;
pub mod hash;
pub mod kpi;
pub mod refunds;
pub mod settings;
pub mod snapshot;
pub mod user;
pub mod windows;

use crate::encoding::WriteError;
use crate::enrich::{EnrichConfig, Enricher, RegionLookup};
use crate::record::{EventKind, LogRecord, SpendRecord, StoredEvent, UserPseudonym};
use attribution::{EarlierRuns, Memories, Memory, NO_DIMS, Span};
use dedup::{ExactDedup, fingerprint};
use dims::{DimsTable, NO_CAMPAIGN};
use hash::FastHashMap;
use kpi::{DimsId, KpiCounters, KpiDeltas, KpiKey, MinuteRows, SpendKey, to_micros};
use refunds::{EntryKey, FinalOrder, OrderKey, Pending, RefundBook, RefundTally};
use serde::{Deserialize, Serialize};
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use user::{EventEntry, KindId, KindSet, SpareLists, UserState, bits};
use windows::{Granularity, WindowCalendar};

/// "B less than `within_ms` after A, for the same user → flag B with `reason`".
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SequenceRule {
    pub reason: String,
    pub after: Vec<EventKind>,
    pub then: Vec<EventKind>,
    pub within_ms: i64,
}

impl SequenceRule {
    /// The default rule: a checkout or purchase less than 5 s after a registration.
    pub fn fast_checkout() -> Self {
        Self {
            reason: "fast_checkout".into(),
            after: vec![EventKind::Registration],
            then: vec![EventKind::Checkout, EventKind::Purchase],
            within_ms: 5_000,
        }
    }
}

/// How a session's conversions are credited across sessions (docs/semantics.md,
/// "Attribution").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttributionModel {
    /// A direct session takes the latest earlier non-direct acquisition within the lookback.
    #[default]
    LastNonDirect,
    /// Every session keeps its own acquisition.
    Session,
    /// Every session takes the user's earliest non-direct acquisition within the lookback.
    FirstTouch,
}

impl AttributionModel {
    pub const ALL: [AttributionModel; 3] = [
        AttributionModel::LastNonDirect,
        AttributionModel::Session,
        AttributionModel::FirstTouch,
    ];

    /// The configuration and API name.
    pub fn as_str(self) -> &'static str {
        match self {
            AttributionModel::LastNonDirect => "last_non_direct",
            AttributionModel::Session => "session",
            AttributionModel::FirstTouch => "first_touch",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == name)
    }
}

/// Everything that changes what the pipeline computes. Changing it and replaying the log
/// recomputes every KPI under the new rules.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    pub out_of_orderness_ms: i64,
    pub allowed_lateness_ms: i64,
    pub session_gap_ms: i64,
    pub near_duplicate_ms: i64,
    pub dedup_horizon_ms: i64,
    /// Conversions with the same `order_id` less than this apart are one conversion.
    pub order_dedup_horizon_ms: i64,
    /// How long (event time) an order's place is kept for its refunds; 0: refunds are
    /// never matched (docs/semantics.md, "Refunds").
    pub refund_horizon_ms: i64,
    pub attribution: AttributionModel,
    /// How far back a session may take an earlier session's acquisition.
    pub attribution_lookback_ms: i64,
    pub sequence_rules: Vec<SequenceRule>,
    pub conversion_types: Vec<EventKind>,
    pub time_zone: jiff::tz::TimeZone,
    pub reporting_currency: String,
    /// Units of the reporting currency per unit of another currency.
    pub currency_rates: HashMap<String, f64>,
    pub enrich: EnrichConfig,
    /// Distinct campaign names kept before new ones count as `(other)`.
    pub max_campaigns: usize,
    /// Distinct custom event types kept before new ones count as `other`.
    pub max_custom_types: usize,
    /// Events kept per user; past it the oldest are dropped (a bot with one endless
    /// session must not grow without bound).
    pub max_events_per_user: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            out_of_orderness_ms: 5_000,
            allowed_lateness_ms: 15 * 60_000,
            session_gap_ms: 30 * 60_000,
            near_duplicate_ms: 100,
            dedup_horizon_ms: 24 * 3_600_000,
            order_dedup_horizon_ms: 7 * 86_400_000,
            // EU consumers may withdraw for 14 days after delivery, and a return takes some
            // weeks more to be refunded: 60 days covers nearly every refund.
            refund_horizon_ms: 60 * 86_400_000,
            attribution: AttributionModel::LastNonDirect,
            attribution_lookback_ms: 30 * 86_400_000,
            sequence_rules: vec![SequenceRule::fast_checkout()],
            conversion_types: vec![EventKind::Purchase],
            time_zone: jiff::tz::TimeZone::get("Europe/Rome").unwrap_or(jiff::tz::TimeZone::UTC),
            reporting_currency: "EUR".into(),
            currency_rates: HashMap::new(),
            enrich: EnrichConfig::default(),
            max_campaigns: 10_000,
            max_custom_types: 256,
            max_events_per_user: 10_000,
        }
    }
}

/// Outcome counters: telemetry and test oracles at once.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineCounters {
    pub events: u64,
    pub accepted: u64,
    pub exact_duplicates: u64,
    pub near_duplicates: u64,
    /// Conversions repeating an accepted conversion's `order_id`.
    pub order_duplicates: u64,
    pub flagged: u64,
    /// Late events per granularity (1m, 1h, 1d).
    pub late: [u64; 3],
    pub spend_records: u64,
    /// Values and spend amounts in a currency without a configured rate (a value counts
    /// as 0 revenue; a spend record is left out).
    pub unpriced_values: u64,
    /// Per-user state cut short by `max_events_per_user`.
    pub truncated_users: u64,
    /// `first_touch` runs not kept because the user already had
    /// [`attribution::MAX_FIRST_TOUCH_RUNS`] within the lookback (snapshot format 3).
    pub first_touch_capped: u64,
    /// Accepted refunds (not duplicates), matched or not.
    pub refunds: u64,
    /// Refunds that found their order's counted conversion (now or after waiting for it).
    pub refunds_matched: u64,
    /// Refunds whose order never came within the allowed lateness, or was older than the
    /// refund horizon: they changed no KPI.
    pub refunds_unmatched: u64,
    /// Refunds of an order whose conversion did not count (flagged): no KPI changed.
    pub refunds_uncounted: u64,
    /// Micro-units refunds asked beyond their order's value (clamped away).
    pub refund_excess_micros: u64,
}

/// Everything the pipeline remembers, serializable for snapshots.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct PipelineState {
    /// Highest event time seen (the watermark is this minus the out-of-orderness).
    pub max_event_ts: Option<i64>,
    pub dedup: ExactDedup,
    /// Order ids of accepted conversions, over the order dedup horizon.
    pub orders: ExactDedup,
    pub users: FastHashMap<UserPseudonym, UserState>,
    /// Memories of users whose sessions were all dropped since the adapter last took them
    /// ([`Pipeline::take_dormant`]) into the store.
    pub dormant: FastHashMap<UserPseudonym, Memory>,
    /// Minute bucket of watermark → users to look at for eviction then.
    pub expiry: BTreeMap<i64, Vec<UserPseudonym>>,
    pub dims: Vec<dims::Dims>,
    pub custom_kinds: Vec<String>,
    pub counters: PipelineCounters,
    /// Offset of the next record to process.
    pub next_offset: u64,
    /// Snapshot format 3 (issue 9, literal `first_touch`): the earlier runs of users whose
    /// `first_touch` memory holds more than one (oldest first; the latest is the memory in
    /// `users` or `dormant`). Empty under the other models.
    pub earlier_runs: FastHashMap<UserPseudonym, EarlierRuns>,
    /// Orders remembered for refunds, and refunds waiting for their order. Added in
    /// snapshot format 3 (issue 13, refunds); last, so a format-2 body reads with it empty.
    pub refunds: RefundBook,
}

/// [`PipelineState`] by reference, field for field in the same order: postcard writes a
/// reference, or a slice, exactly as the owned value or `Vec`, and `users` as any map of
/// the same entries.
#[derive(Serialize)]
struct BorrowedState<'a, Users: Serialize> {
    max_event_ts: Option<i64>,
    dedup: &'a ExactDedup,
    orders: &'a ExactDedup,
    users: &'a Users,
    dormant: &'a FastHashMap<UserPseudonym, Memory>,
    expiry: &'a BTreeMap<i64, Vec<UserPseudonym>>,
    dims: &'a [dims::Dims],
    custom_kinds: &'a [String],
    counters: &'a PipelineCounters,
    next_offset: u64,
    earlier_runs: &'a FastHashMap<UserPseudonym, EarlierRuns>,
    refunds: &'a RefundBook,
}

/// A copy of the pipeline state taken for a snapshot ([`Pipeline::snapshot_copy`]).
#[derive(Debug, Default)]
pub struct SnapshotCopy {
    /// Everything but the users (`users` is empty; `dims` and `custom_kinds` are filled).
    state: PipelineState,
    users: FlatUsers,
}

/// Empties `list` to be filled with `needed` entries: keeps its memory unless that is more
/// than twice what it needs (a copy held for reuse stays within twice the state's size) or
/// less than it needs. A list too small is let go before the new one is made: grown in
/// place, its old entries would be copied into the new memory by the allocator (which
/// does not know the list was emptied), a copy of the whole last snapshot's list for
/// nothing (at 100,000 events/s, a state grown since the last snapshot: 128 `perf`
/// samples of the processor's thread under the pipeline's and the trigger stage's
/// `refill`s in one snapshot's copy, about half of them that copy, stop 39).
pub(crate) fn refill<T>(list: &mut Vec<T>, needed: usize) {
    list.clear();
    if list.capacity() > needed.saturating_mul(2) || list.capacity() < needed {
        *list = Vec::new();
    }
    list.reserve(needed);
}

/// The users of a state, flat: each user with their due time, memory and number of
/// events, and all their events one user after the other.
#[derive(Debug, Default)]
struct FlatUsers {
    users: Vec<(UserPseudonym, i64, Memory, usize)>,
    entries: Vec<EventEntry>,
}

impl Serialize for FlatUsers {
    /// As the map of [`UserState`]s they were copied from.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        /// [`UserState`] by reference, field for field.
        #[derive(Serialize)]
        struct HeldUser<'a> {
            entries: &'a [EventEntry],
            due: i64,
            memory: Memory,
        }
        let mut map = serializer.serialize_map(Some(self.users.len()))?;
        let mut rest = self.entries.as_slice();
        for (user, due, memory, len) in &self.users {
            let (entries, after) = rest.split_at(*len);
            rest = after;
            map.serialize_entry(
                user,
                &HeldUser {
                    entries,
                    due: *due,
                    memory: *memory,
                },
            )?;
        }
        map.end()
    }
}

impl SnapshotCopy {
    /// The snapshot's bytes: those [`Pipeline::encode_snapshot`] gave when the copy was
    /// taken.
    pub fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        let state = &self.state;
        encode_borrowed(
            state,
            &self.users,
            &state.dims,
            &state.custom_kinds,
            Vec::new(),
        )
    }

    /// Writes the bytes [`Self::encode`] gives to `out`, as they are encoded: a snapshot
    /// of a gigabyte and more is never held whole. Encoded into a vector instead, it grew
    /// in the middle of the encoding whenever the state had grown since the last one (the
    /// vector was sized from it): the allocator copied everything encoded so far into
    /// fresh pages the kernel zeroed, ~1.6 s of the snapshot thread at 1.5 GB, with the
    /// old and the new vector held at once (`perf`, stop 43).
    pub fn encode_to<W: std::io::Write>(&self, out: &mut W) -> Result<(), WriteError> {
        let state = &self.state;
        out.write_all(&snapshot::header())?;
        crate::encoding::write(
            &borrowed(state, &self.users, &state.dims, &state.custom_kinds),
            out,
        )
    }
}

/// The snapshot body of `state` with these users, dimension tuples and custom kinds (the
/// live pipeline keeps the last two beside its state, a copy inside it).
fn borrowed<'a, Users: Serialize>(
    state: &'a PipelineState,
    users: &'a Users,
    dims: &'a [dims::Dims],
    custom_kinds: &'a [String],
) -> BorrowedState<'a, Users> {
    BorrowedState {
        max_event_ts: state.max_event_ts,
        dedup: &state.dedup,
        orders: &state.orders,
        users,
        dormant: &state.dormant,
        expiry: &state.expiry,
        dims,
        custom_kinds,
        counters: &state.counters,
        next_offset: state.next_offset,
        earlier_runs: &state.earlier_runs,
        refunds: &state.refunds,
    }
}

/// The snapshot bytes of `state` (see [`borrowed`]), in `out` (empty; its capacity is
/// kept).
fn encode_borrowed<Users: Serialize>(
    state: &PipelineState,
    users: &Users,
    dims: &[dims::Dims],
    custom_kinds: &[String],
    mut out: Vec<u8>,
) -> Result<Vec<u8>, postcard::Error> {
    out.clear();
    out.extend_from_slice(&snapshot::header());
    crate::encoding::append(&borrowed(state, users, dims, custom_kinds), &mut out)?;
    Ok(out)
}

/// The streaming pipeline. See the module docs.
pub struct Pipeline {
    config: PipelineConfig,
    enricher: Enricher,
    calendar: WindowCalendar,
    dims: DimsTable,
    custom_kinds: Vec<String>,
    custom_kind_ids: FastHashMap<String, KindId>,
    state: PipelineState,
    deltas: KpiDeltas,
    /// Most contributions, by minute until the deltas are taken (see [`MinuteRows`]).
    minutes: MinuteRows,
    /// Kind ids of the conversion types and of each rule's sides, resolved once.
    conversion_kinds: KindSet,
    rules: Vec<(KindSet, KindSet, i64)>,
    /// Memories the adapter read from the store for this batch's returning users
    /// ([`Pipeline::recall_memories`]); cleared with every [`Pipeline::take_deltas`].
    recalled: FastHashMap<UserPseudonym, Memories>,
    /// Scratch list of one user's sessions.
    spans: Vec<Span>,
    /// The horizon hour of the last sweep of `dormant`.
    dormant_swept_hour: Option<i64>,
    /// Blocks of short event lists, handed from dropped users and grown lists to new ones.
    spare_lists: SpareLists,
    /// No key of `state.expiry` is below this minute (`i64::MIN`: not known yet): most
    /// records find nobody due without looking into the map.
    first_due_minute: i64,
    /// What the last record processed was judged (`None` after a spend record).
    last_verdict: Option<EventVerdict>,
    /// The stage hint of the last accepted event's user ([`Self::last_stage_hint`]).
    last_stage_hint: u32,
    /// The users let go of by the last record's processing that carried a stage hint, with
    /// it ([`Self::let_go_hints`]).
    let_go_hints: Vec<(UserPseudonym, u32)>,
}

/// What the pipeline made of one event, for the stages after it (the trigger stage): so
/// that they count exactly what the KPIs count, without deciding it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventVerdict {
    /// A duplicate (by event id, by user, type and time, or by order id): counted nowhere.
    Duplicate,
    /// A refund: it takes value from its order, it is no event of a user.
    Refund,
    Accepted {
        /// Flagged by a sequence rule (when it was processed: a rule's earlier event
        /// arriving later flags it afterwards).
        flagged: bool,
        /// The dimension tuple its contribution is counted under (its session's touch under
        /// the attribution model, with the event's device and region), as the KPI rows
        /// name it (folded where the bounds fold).
        counted: DimsId,
    },
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("users", &self.state.users.len())
            .field("next_offset", &self.state.next_offset)
            .finish_non_exhaustive()
    }
}

const BUILT_IN_KINDS: usize = 6;
const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;
/// Users' event lists grow by exactly one entry up to this length, by doubling after.
const EXACT_GROWTH_UP_TO: usize = SpareLists::SHORT;

/// The id of a built-in funnel type (`None` for a refund or a custom type).
#[inline(always)]
fn built_in_kind_id(kind: &EventKind) -> Option<KindId> {
    Some(match kind {
        EventKind::PageView => 0,
        EventKind::AddToCart => 1,
        EventKind::Registration => 2,
        EventKind::Checkout => 3,
        EventKind::Purchase => 4,
        EventKind::Lead => 5,
        EventKind::Refund | EventKind::Custom(_) => return None,
    })
}

impl Pipeline {
    pub fn new(config: PipelineConfig, regions: Option<Arc<dyn RegionLookup>>) -> Self {
        Self::restore(config, regions, PipelineState::default())
    }

    /// A pipeline continuing from a snapshot.
    pub fn restore(
        config: PipelineConfig,
        regions: Option<Arc<dyn RegionLookup>>,
        mut state: PipelineState,
    ) -> Self {
        let dims = DimsTable::restore(config.max_campaigns, std::mem::take(&mut state.dims));
        let custom_kinds = std::mem::take(&mut state.custom_kinds);
        let custom_kind_ids = custom_kinds
            .iter()
            .enumerate()
            .map(|(i, name)| (name.clone(), (BUILT_IN_KINDS + i) as KindId))
            .collect();
        let mut pipeline = Self {
            enricher: Enricher::new(config.enrich.clone(), regions),
            calendar: WindowCalendar::new(config.time_zone.clone()),
            dims,
            custom_kinds,
            custom_kind_ids,
            state,
            deltas: KpiDeltas::default(),
            minutes: MinuteRows::default(),
            conversion_kinds: KindSet::default(),
            rules: Vec::new(),
            recalled: FastHashMap::default(),
            spans: Vec::new(),
            dormant_swept_hour: None,
            spare_lists: SpareLists::default(),
            first_due_minute: i64::MIN,
            last_verdict: None,
            last_stage_hint: 0,
            let_go_hints: Vec::new(),
            config,
        };
        pipeline.conversion_kinds = pipeline
            .config
            .conversion_types
            .clone()
            .iter()
            .map(|k| pipeline.kind_id(k))
            .collect();
        let rules = pipeline.config.sequence_rules.clone();
        pipeline.rules = rules
            .iter()
            .map(|rule| {
                let after = rule.after.iter().map(|k| pipeline.kind_id(k)).collect();
                let then = rule.then.iter().map(|k| pipeline.kind_id(k)).collect();
                (after, then, rule.within_ms)
            })
            .collect();
        pipeline
    }

    /// The state to snapshot (a copy of what is needed to continue exactly from here).
    pub fn snapshot(&self) -> PipelineState {
        let mut state = self.state.clone();
        state.dims = self.dims.tuples().to_vec();
        state.custom_kinds = self.custom_kinds.clone();
        state
    }

    /// [`Self::snapshot`] in the snapshot format ([`snapshot`]: a versioned header, then
    /// postcard), encoded straight from the live state: the same bytes without copying the
    /// state first (a day of remembered event ids is most of it, and the copy was most of a
    /// snapshot's cost).
    pub fn encode_snapshot(&self) -> Result<Vec<u8>, postcard::Error> {
        let state = &self.state;
        encode_borrowed(
            state,
            &state.users,
            self.dims.tuples(),
            &self.custom_kinds,
            Vec::new(),
        )
    }

    /// A copy of the state to encode elsewhere ([`SnapshotCopy::encode`]: the bytes of
    /// [`Self::encode_snapshot`] at this point), so that the pipeline can carry on
    /// meanwhile. The users are copied flat, into one list of users and one of all their
    /// events: cloning the map allocated a list per user, most of the copy's cost with a
    /// million users held.
    pub fn snapshot_copy(&self) -> SnapshotCopy {
        self.snapshot_copy_reusing(None)
    }

    /// [`Self::snapshot_copy`] into the memory of an earlier copy, `spare`, once its
    /// encoding is done: its lists and tables are refilled in place. A copy allocated
    /// afresh touches fresh pages, and the kernel's zeroing of them was half of a copy's
    /// time with a million users held; a reused one touches none while the state does not
    /// outgrow it. (A list more than twice what it needs is given back.)
    pub fn snapshot_copy_reusing(&self, spare: Option<SnapshotCopy>) -> SnapshotCopy {
        let state = &self.state;
        let SnapshotCopy {
            state: mut copy,
            mut users,
        } = spare.unwrap_or_default();
        let entries = state.users.values().map(|u| u.entries.len()).sum();
        refill(&mut users.users, state.users.len());
        refill(&mut users.entries, entries);
        for (user, held) in &state.users {
            users
                .users
                .push((*user, held.due, held.memory, held.entries.len()));
            users.entries.extend_from_slice(&held.entries);
        }
        // `clone_from` keeps a table's memory when its size is the same (hash maps) or
        // reuses what it can (lists).
        copy.max_event_ts = state.max_event_ts;
        copy.dedup.clone_from(&state.dedup);
        copy.orders.clone_from(&state.orders);
        copy.users = FastHashMap::default();
        copy.dormant.clone_from(&state.dormant);
        copy.expiry.clone_from(&state.expiry);
        copy.dims.clear();
        copy.dims.extend_from_slice(self.dims.tuples());
        copy.custom_kinds.clone_from(&self.custom_kinds);
        copy.counters.clone_from(&state.counters);
        copy.next_offset = state.next_offset;
        copy.earlier_runs.clone_from(&state.earlier_runs);
        copy.refunds.clone_from(&state.refunds);
        SnapshotCopy { state: copy, users }
    }

    pub fn config(&self) -> &PipelineConfig {
        &self.config
    }

    pub fn counters(&self) -> &PipelineCounters {
        &self.state.counters
    }

    /// Offset of the next record the pipeline expects.
    pub fn next_offset(&self) -> u64 {
        self.state.next_offset
    }

    /// The current watermark (highest event time minus the out-of-orderness).
    pub fn watermark(&self) -> Option<i64> {
        self.state
            .max_event_ts
            .map(|ts| ts - self.config.out_of_orderness_ms)
    }

    /// Users with state held.
    pub fn active_users(&self) -> usize {
        self.state.users.len()
    }

    /// Event ids held for exact dedup.
    pub fn remembered_event_ids(&self) -> usize {
        self.state.dedup.len()
    }

    /// Estimated memory of the state, per part (see [`footprint`]).
    pub fn state_footprint(&self) -> footprint::StateFootprint {
        let users = &self.state.users;
        footprint::StateFootprint {
            users: users.len(),
            user_map_bytes: footprint::hash_map(users),
            user_events_bytes: users.values().map(|u| footprint::vec(&u.entries)).sum(),
            expiry_bytes: footprint::btree_of_vecs(&self.state.expiry),
            event_ids: self.state.dedup.len(),
            dedup_bytes: self.state.dedup.heap_bytes(),
            orders: self.state.orders.len(),
            order_bytes: self.state.orders.heap_bytes(),
            dormant_users: self.state.dormant.len(),
            dormant_bytes: footprint::hash_map(&self.state.dormant),
            earlier_runs_users: self.state.earlier_runs.len(),
            earlier_runs_bytes: footprint::hash_map(&self.state.earlier_runs)
                + self
                    .state
                    .earlier_runs
                    .values()
                    .map(EarlierRuns::heap_bytes)
                    .sum::<usize>(),
            refund_orders: self.state.refunds.orders.len() + self.state.refunds.held_orders.len(),
            refund_bytes: self.state.refunds.heap_bytes(),
        }
    }

    /// The interned dimensions of an id (for the store to write rows by name).
    pub fn dims(&self, id: DimsId) -> Option<&dims::Dims> {
        self.dims.get(id)
    }

    pub fn calendar(&self) -> &WindowCalendar {
        &self.calendar
    }

    /// Whether the adapter should look for this user's memory in the store before a batch
    /// with the user's events: the user has no state here and may have been dropped before
    /// the store last took the dormant memories.
    pub fn needs_recall(&self, user: &UserPseudonym) -> bool {
        self.config.attribution != AttributionModel::Session
            && !self.state.users.contains_key(user)
            && !self.state.dormant.contains_key(user)
            && !self.recalled.contains_key(user)
    }

    /// Memories read from the store for the next records (see [`Self::needs_recall`]).
    /// The store must hold exactly what [`Self::take_dormant`] gave it up to the snapshot
    /// this pipeline continues from: then the numbers do not depend on batch boundaries.
    pub fn recall_memories(
        &mut self,
        memories: impl IntoIterator<Item = (UserPseudonym, Memories)>,
    ) {
        for (user, memory) in memories {
            if self.needs_recall(&user) {
                self.recalled.insert(user, memory);
            }
        }
    }

    /// Takes the memories of users with no state left, for the store to keep. Take them
    /// only in the commit that also stores a snapshot taken after this call: the store's
    /// memories and the snapshot must describe the same offset.
    pub fn take_dormant(&mut self) -> Vec<(UserPseudonym, Memories)> {
        let earlier_runs = &mut self.state.earlier_runs;
        self.state
            .dormant
            .drain()
            .map(|(user, latest)| {
                let earlier = earlier_runs.remove(&user);
                let earlier = earlier.map(EarlierRuns::into_vec).unwrap_or_default();
                (user, Memories { earlier, latest })
            })
            .collect()
    }

    /// Memories that started before this can no longer matter to any session (the store
    /// may drop them).
    pub fn memory_horizon(&self) -> Option<i64> {
        self.watermark().map(|w| {
            self.horizon(w)
                .saturating_sub(self.config.attribution_lookback_ms)
        })
    }

    /// Users whose memory waits in the pipeline for the store.
    pub fn dormant_users(&self) -> usize {
        self.state.dormant.len()
    }

    /// Order ids held for order dedup.
    pub fn remembered_orders(&self) -> usize {
        self.state.orders.len()
    }

    /// Takes the changes accumulated since the last call.
    pub fn take_deltas(&mut self) -> KpiDeltas {
        self.recalled.clear();
        self.minutes.fold_into(&mut self.deltas, &mut self.calendar);
        // The next batch will likely touch as many rows: sizing for them up front saves
        // growing the map through every power of two again.
        let next = KpiDeltas::with_capacity(self.deltas.rows.len(), self.deltas.spend_micros.len());
        let mut deltas = std::mem::replace(&mut self.deltas, next);
        deltas.compact();
        deltas
    }

    /// Takes the changes accumulated since the last take in the middle of a batch (for the
    /// segment window, `act::segment_window`, at a minute's end): as [`Self::take_deltas`],
    /// but the memories recalled for the batch stay for its remaining records. The batch's
    /// later changes, taken at its end, add to these with [`KpiDeltas::merge`].
    pub fn take_deltas_within_batch(&mut self) -> KpiDeltas {
        self.minutes.fold_into(&mut self.deltas, &mut self.calendar);
        let next = KpiDeltas::with_capacity(self.deltas.rows.len(), self.deltas.spend_micros.len());
        let mut deltas = std::mem::replace(&mut self.deltas, next);
        deltas.compact();
        deltas
    }

    /// Processes the record at `offset`. Records must come in log order, each once.
    pub fn process(&mut self, offset: u64, record: &LogRecord) {
        self.let_go_hints.clear();
        self.last_verdict = match record {
            LogRecord::Event(event) => Some(self.process_event(event)),
            LogRecord::Spend(spend) => {
                self.process_spend(spend);
                None
            }
        };
        self.state.next_offset = offset + 1;
    }

    /// What the last record processed was judged (`None` for spend, or before any record).
    #[inline]
    pub fn last_verdict(&self) -> Option<EventVerdict> {
        self.last_verdict
    }

    /// The hint a later stage left on the user of the last accepted event (0 when none:
    /// the user is new to the pipeline, or the stage never left one). Meaningful only
    /// after [`EventVerdict::Accepted`].
    #[inline]
    pub fn last_stage_hint(&self) -> u32 {
        self.last_stage_hint
    }

    /// The hint a later stage left on `user` while the pipeline holds it (0 otherwise), for
    /// a stage that reads its own state ahead of the events
    /// ([`crate::act::stage::TriggerStage::read_ahead`]).
    #[inline]
    pub fn stage_hint_of(&self, user: &UserPseudonym) -> u32 {
        self.state.users.get(user).map_or(0, |held| held.stage_hint)
    }

    /// Leaves `hint` on `user` while the pipeline holds it; whether it does. Called right
    /// after the user's event, whose processing just touched its entry.
    #[inline]
    pub fn set_stage_hint(&mut self, user: &UserPseudonym, hint: u32) -> bool {
        match self.state.users.get_mut(user) {
            Some(held) => {
                held.stage_hint = hint;
                true
            }
            None => false,
        }
    }

    /// The users the last record's processing let go of (their sessions final) that
    /// carried a stage hint, each with its hint: a stage that finds its users by their
    /// hints must now find these another way. Emptied by the next [`Self::process`].
    #[inline]
    pub fn let_go_hints(&self) -> &[(UserPseudonym, u32)] {
        &self.let_go_hints
    }

    /// The dimension tuple of an id of this pipeline (as [`EventVerdict::Accepted`] gives).
    pub fn dims_of(&self, id: DimsId) -> Option<&dims::Dims> {
        self.dims.get(id)
    }

    /// The id of an event type: built-ins inline, custom types by name (out of line).
    #[inline]
    fn kind_id(&mut self, kind: &EventKind) -> KindId {
        built_in_kind_id(kind).unwrap_or_else(|| self.other_kind_id(kind))
    }

    #[inline(never)]
    fn other_kind_id(&mut self, kind: &EventKind) -> KindId {
        match kind {
            EventKind::Custom(name) => {
                if let Some(&id) = self.custom_kind_ids.get(name.as_ref()) {
                    return id;
                }
                let name: &str = if self.custom_kinds.len() >= self.config.max_custom_types {
                    "other"
                } else {
                    name
                };
                if let Some(&id) = self.custom_kind_ids.get(name) {
                    return id;
                }
                let id = (BUILT_IN_KINDS + self.custom_kinds.len()) as KindId;
                self.custom_kinds.push(name.to_string());
                self.custom_kind_ids.insert(name.to_string(), id);
                id
            }
            // Refunds never enter a user's events; a configuration naming them (as a
            // conversion type or in a sequence rule) gets an id no event has.
            _ => built_in_kind_id(kind).unwrap_or(KindId::MAX),
        }
    }

    /// An event's value in micro-units of the reporting currency: 0 in a currency without
    /// a rate (counted; the conversion still counts).
    fn money_micros(&mut self, amount: f64, currency: Option<&str>) -> i64 {
        self.priced_micros(amount, currency).unwrap_or(0)
    }

    /// `amount` in micro-units of the reporting currency, `None` (and counted in
    /// `unpriced_values`) in a currency without a configured rate.
    fn priced_micros(&mut self, amount: f64, currency: Option<&str>) -> Option<i64> {
        match currency {
            None => Some(to_micros(amount)),
            Some(code) if code == self.config.reporting_currency => Some(to_micros(amount)),
            Some(code) => match self.config.currency_rates.get(code) {
                Some(rate) => Some(to_micros(amount * rate)),
                None => {
                    self.state.counters.unpriced_values += 1;
                    None
                }
            },
        }
    }

    fn process_spend(&mut self, spend: &SpendRecord) {
        self.state.counters.spend_records += 1;
        let channel = crate::enrich::normalize_channel(&spend.channel);
        let campaign = spend.campaign.as_deref().unwrap_or(NO_CAMPAIGN);
        let pair = self.dims.intern(&channel, campaign, "", "");
        // One record, whatever its amount: a record of 0 makes the row's spend a known 0.
        // A record in a currency without a rate makes nothing known: its amount is not
        // known in the reporting currency, and a known 0 would read as a CPA of 0 (a CPA
        // rule or trigger could never fire). It is counted in `unpriced_values`.
        let Some(micros) = self.priced_micros(spend.amount, spend.currency.as_deref()) else {
            return;
        };
        let record = kpi::SpendCounters::record(micros);
        for granularity in Granularity::ALL {
            let window = self.calendar.window(granularity, spend.ts.0);
            self.deltas.add_spend(
                SpendKey {
                    granularity,
                    window_start: window.start,
                    channel_campaign: pair,
                },
                record,
            );
        }
    }

    fn process_event(&mut self, event: &StoredEvent) -> EventVerdict {
        let ts = event.ts.0;
        self.state.counters.events += 1;
        // The watermark before this record decides lateness; then the record moves it.
        let watermark = self.watermark();
        self.state.max_event_ts = Some(self.state.max_event_ts.map_or(ts, |m| m.max(ts)));

        let enrichment = self.enricher.enrich(event);
        let dims = self.dims.intern_event(
            &enrichment.channel,
            enrichment.campaign,
            enrichment.device,
            enrichment.region,
        );
        let refund = event.kind == EventKind::Refund;
        let kind = self.kind_id(&event.kind);
        let conversion = !refund && self.conversion_kinds.contains(kind);

        // Dedup: exact by event_id, then near by (user, type, ts), then by order id.
        let id_slot = event
            .event_id
            .as_deref()
            .map(|id| self.state.dedup.slot(fingerprint(id)));
        let exact = id_slot
            .as_ref()
            .is_some_and(|slot| slot.is_duplicate(ts, self.config.dedup_horizon_ms));
        // A refund belongs to no user's events (two partial refunds of one order may well
        // come in the same 100 ms): only its `event_id` dedups it.
        let near = !exact
            && !refund
            && self
                .state
                .users
                .get(&event.user)
                .is_some_and(|u| u.has_near(kind, ts, self.config.near_duplicate_ms));
        let order = match (&event.order_id, conversion) {
            (Some(order_id), true) if self.config.order_dedup_horizon_ms > 0 => {
                Some(fingerprint(order_id))
            }
            _ => None,
        };
        let same_order = !exact
            && !near
            && order.is_some_and(|fp| {
                self.state
                    .orders
                    .is_duplicate(fp, ts, self.config.order_dedup_horizon_ms)
            });
        if exact || near || same_order {
            if exact {
                self.state.counters.exact_duplicates += 1;
            } else if near {
                self.state.counters.near_duplicates += 1;
            } else {
                self.state.counters.order_duplicates += 1;
            }
            // A duplicate belongs to no session: it counts under its own dimensions.
            for granularity in Granularity::ALL {
                let window = self.calendar.window(granularity, ts);
                self.deltas
                    .row(KpiKey {
                        granularity,
                        window_start: window.start,
                        dims,
                    })
                    .duplicates += 1;
            }
            self.expire(watermark);
            return EventVerdict::Duplicate;
        }
        if let Some(slot) = id_slot {
            slot.remember(ts);
        }
        if let Some(fp) = order {
            self.state.orders.remember(fp, ts);
        }
        if refund {
            self.process_refund(event, watermark);
            self.expire(watermark);
            return EventVerdict::Refund;
        }
        self.state.counters.accepted += 1;

        let value_micros = match (conversion, event.value) {
            (true, Some(value)) => self.money_micros(value, event.currency.as_deref()),
            _ => 0,
        };
        let mut entry_bits = 0;
        if conversion {
            entry_bits |= bits::CONVERSION;
        }
        if !self.dims.is_direct(dims) {
            entry_bits |= bits::NON_DIRECT;
        }
        if let Some(w) = watermark {
            let lateness = self.config.allowed_lateness_ms;
            for (i, granularity) in Granularity::ALL.into_iter().enumerate() {
                let window = self.calendar.window(granularity, ts);
                if w >= window.end + lateness {
                    self.state.counters.late[i] += 1;
                    entry_bits |= bits::LATE << i;
                }
            }
        }
        let entry = EventEntry::new(ts, value_micros, dims, kind, entry_bits);
        if conversion
            && self.config.refund_horizon_ms > 0
            && let Some(order_id) = &event.order_id
        {
            let key = EntryKey {
                user: event.user,
                ts,
                kind,
            };
            self.hold_order(order_id, key, value_micros, watermark);
        }
        let (flagged, counted) = self.accept(event.user, entry, watermark);
        self.expire(watermark);
        EventVerdict::Accepted {
            flagged,
            counted: if counted == NO_DIMS { dims } else { counted },
        }
    }

    /// Remembers an accepted conversion's order as held by its entry, and gives it the
    /// refunds that came before it (docs/semantics.md, "Refunds").
    #[inline(never)] // rare: per order or refund, kept out of the per-event path
    fn hold_order(
        &mut self,
        order_id: &str,
        key: EntryKey,
        value_micros: i64,
        watermark: Option<i64>,
    ) {
        let order = OrderKey::from(fingerprint(order_id));
        let book = &mut self.state.refunds;
        if book.held_entries.contains_key(&key) {
            // Two conversions of one user, type and `ts` (possible only with
            // `near_duplicate_ms = 0`): the second's refunds stay unmatched.
            return;
        }
        // A newer conversion of the same order id (order dedup is 7 days, or off) takes
        // its place; refunds already counted stay with the older one.
        book.orders.remove(&order);
        if let Some(older) = book.held_orders.insert(order, key) {
            book.held_entries.remove(&older);
        }
        book.held_entries.insert(key, order);
        if let Some(pending) = book.pending.remove(&order) {
            let horizon = watermark.map(|w| self.horizon(w));
            if horizon.is_some_and(|h| pending.latest_ts < h) {
                // It could no longer wait (whether or not the sweep has come by yet).
                self.state.counters.refunds_unmatched += pending.tally.count as u64;
            } else {
                let book = &mut self.state.refunds;
                let excess = pending.tally.micros - pending.tally.applied(value_micros);
                self.state.counters.refund_excess_micros += excess as u64;
                self.state.counters.refunds_matched += pending.tally.count as u64;
                book.tallies.insert(key, pending.tally);
            }
        }
    }

    /// An accepted refund: taken off its order's revenue where the order counts, held for
    /// its order, or given up.
    #[inline(never)] // rare: per order or refund, kept out of the per-event path
    fn process_refund(&mut self, event: &StoredEvent, watermark: Option<i64>) {
        self.state.counters.refunds += 1;
        let ts = event.ts.0;
        let micros = match event.value {
            Some(value) => self.money_micros(value, event.currency.as_deref()).max(0),
            None => 0,
        };
        let refund = RefundTally { count: 1, micros };
        let Some(order_id) = event
            .order_id
            .as_deref()
            .filter(|_| self.config.refund_horizon_ms > 0)
        else {
            self.state.counters.refunds_unmatched += 1;
            return;
        };
        let order = OrderKey::from(fingerprint(order_id));
        let horizon = watermark.map(|w| self.horizon(w));
        if let Some(&key) = self.state.refunds.held_orders.get(&order) {
            self.refund_held(key, refund);
            return;
        }
        let oldest_kept = horizon.map(|h| h.saturating_sub(self.config.refund_horizon_ms));
        match self.state.refunds.orders.get_mut(&order) {
            Some(final_order) if oldest_kept.is_none_or(|o| final_order.ts >= o) => {
                // What is left is kept for a flagged order too, so that the excess does
                // not depend on whether its refunds came while it was held.
                let applied = refund.applied(final_order.remaining_micros);
                final_order.remaining_micros -= applied;
                self.state.counters.refund_excess_micros += (micros - applied) as u64;
                if final_order.dims == NO_DIMS {
                    self.state.counters.refunds_uncounted += 1;
                    return;
                }
                self.state.counters.refunds_matched += 1;
                let (order_ts, dims) = (final_order.ts, final_order.dims);
                for granularity in Granularity::ALL {
                    let window = self.calendar.window(granularity, order_ts);
                    let row = self.deltas.row(KpiKey {
                        granularity,
                        window_start: window.start,
                        dims,
                    });
                    row.refunds += 1;
                    row.refunded_micros += i128::from(applied);
                    row.revenue_micros -= i128::from(applied);
                }
            }
            _ => {
                // The order has not come (yet): the refund waits for it.
                let pending = self.state.refunds.pending.entry(order).or_insert(Pending {
                    tally: RefundTally::default(),
                    latest_ts: ts,
                });
                pending.tally.add(refund);
                pending.latest_ts = pending.latest_ts.max(ts);
            }
        }
    }

    /// A refund of a held order: attached to the order's entry, whose contribution is
    /// taken back and added again net of it.
    #[inline(never)] // rare: per order or refund, kept out of the per-event path
    fn refund_held(&mut self, key: EntryKey, refund: RefundTally) {
        let Self {
            state,
            deltas,
            minutes,
            calendar,
            custom_kinds,
            ..
        } = self;
        let entry = state.users.get(&key.user).and_then(|user| {
            let from = user.entries.partition_point(|e| e.ts < key.ts);
            user.entries[from..]
                .iter()
                .take_while(|e| e.ts == key.ts)
                .find(|e| e.kind == key.kind)
                .copied()
        });
        let Some(entry) = entry else {
            // Not reachable: a held order's entry is held until it is made final.
            state.counters.refunds_unmatched += 1;
            return;
        };
        state.counters.refunds_matched += 1;
        let book = &mut state.refunds;
        let before = book.tallies.get(&key).copied().unwrap_or_default();
        let mut after = before;
        after.add(refund);
        let excess = (after.micros - after.applied(entry.value_micros))
            - (before.micros - before.applied(entry.value_micros));
        state.counters.refund_excess_micros += excess as u64;
        if entry.counted != NO_DIMS {
            Rows {
                deltas,
                minutes,
                calendar,
                custom_kinds,
                tallies: &book.tallies,
                user: key.user,
            }
            .contribute(&entry, entry.counted, -1, Part::Event);
        }
        book.tallies.insert(key, after);
        if entry.counted != NO_DIMS {
            Rows {
                deltas,
                minutes,
                calendar,
                custom_kinds,
                tallies: &book.tallies,
                user: key.user,
            }
            .contribute(&entry, entry.counted, 1, Part::Event);
        }
    }

    /// The oldest event time still within the allowed lateness of watermark `w`.
    fn horizon(&self, w: i64) -> i64 {
        w - self.config.allowed_lateness_ms - MINUTE
    }

    /// Inserts an accepted event into its user's state and emits every change it causes.
    /// Holds the entry in its user's state and counts it; gives back whether it was flagged
    /// and the dimensions it is counted under.
    fn accept(
        &mut self,
        user: UserPseudonym,
        mut entry: EventEntry,
        watermark: Option<i64>,
    ) -> (bool, DimsId) {
        let gap = self.config.session_gap_ms;
        let horizon = watermark.map(|w| self.horizon(w));
        let Self {
            state,
            dims,
            deltas,
            minutes,
            calendar,
            custom_kinds,
            spans,
            config,
            rules,
            recalled,
            spare_lists,
            first_due_minute,
            ..
        } = self;
        let mut rows = Rows {
            deltas,
            minutes,
            calendar,
            custom_kinds,
            tallies: &state.refunds.tallies,
            user,
        };
        let user_state = match state.users.entry(user) {
            Entry::Occupied(held) => held.into_mut(),
            Entry::Vacant(new) => {
                let memory = recall(
                    &mut state.dormant,
                    &mut state.earlier_runs,
                    recalled,
                    &user,
                    horizon,
                    config,
                    dims,
                );
                new.insert(UserState {
                    memory,
                    ..UserState::default()
                })
            }
        };
        self.last_stage_hint = user_state.stage_hint;
        let index = user_state.position(entry.ts);

        // Flags on the new event: a rule's `after` event shortly before it.
        for (after, then, within) in rules.iter() {
            if then.contains(entry.kind)
                && user_state.entries[..index]
                    .iter()
                    .rev()
                    .take_while(|e| entry.ts - e.ts < *within)
                    .any(|e| after.contains(e.kind))
            {
                entry.set(bits::FLAGGED, true);
            }
        }
        if entry.flagged() {
            state.counters.flagged += 1;
        }
        // Flags the new event causes: rule targets shortly after it, now flagged, corrected
        // where they are counted.
        let mut flagged_others = false;
        for (after, then, within) in rules.iter() {
            if !after.contains(entry.kind) {
                continue;
            }
            for target in user_state.entries.iter_mut() {
                if target.ts < entry.ts
                    || target.ts - entry.ts >= *within
                    || target.flagged()
                    || !then.contains(target.kind)
                {
                    continue;
                }
                state.counters.flagged += 1;
                flagged_others = true;
                rows.contribute(target, target.counted, -1, Part::Event);
                target.set(bits::FLAGGED, true);
                rows.contribute(target, target.counted, 1, Part::Event);
            }
        }
        // A user's list grows one entry at a time while short: most users have a few events,
        // and the default first allocation (4 entries) leaves half of it unused for a user
        // with two. Past four it doubles as usual, so a long list still grows cheaply.
        if user_state.entries.len() == user_state.entries.capacity() {
            grow(&mut user_state.entries, spare_lists);
        }
        user_state.entries.insert(index, entry);

        let due = user_state.entries.last().map_or(0, |e| e.ts)
            + gap
            + config.allowed_lateness_ms
            + MINUTE;
        // A held user with a due time (`state.due > 0`) is listed in `expiry` at a bucket no
        // later than that of its due time, and `expire` lists it again for its due time if
        // that moved on meanwhile: only a user not listed yet needs listing here (listing it
        // at every new due time made most records push an entry, and most entries stale).
        let schedule = user_state.due <= 0
            && due > user_state.due
            && expiry_bucket(due) != expiry_bucket(user_state.due);
        user_state.due = user_state.due.max(due);
        if schedule {
            let bucket = expiry_bucket(due);
            state.expiry.entry(bucket).or_default().push(user);
            *first_due_minute = (*first_due_minute).min(bucket);
        }

        match joins_settled_session(&user_state.entries, index, gap) {
            // The common case, an event after the last one in its session that changes
            // neither the session's acquisition nor whether it converts: it counts where
            // its session does, and nothing else moves.
            Some(counted) if !flagged_others => {
                let new = &mut user_state.entries[index];
                new.counted = counted;
                rows.contribute(new, counted, 1, Part::Event);
            }
            _ => {
                let earlier = earlier_runs_of(&state.earlier_runs, &user, config);
                settle(user_state, earlier, spans, dims, &mut rows, config);
            }
        }
        let verdict = {
            let new = &user_state.entries[index];
            (new.flagged(), new.counted)
        };
        if user_state.entries.len() > config.max_events_per_user {
            let excess = user_state.entries.len() - config.max_events_per_user;
            // Rare (a bot's endless session): the dropped entries' orders become final.
            let dropped = user_state.entries[..excess].to_vec();
            let mut earlier = state
                .earlier_runs
                .remove(&user)
                .map(EarlierRuns::into_vec)
                .unwrap_or_default();
            state.counters.first_touch_capped += truncate(
                user_state,
                &mut earlier,
                excess,
                spans,
                dims,
                &mut rows,
                config,
            );
            settle(user_state, &earlier, spans, dims, &mut rows, config);
            if let Some(runs) = EarlierRuns::from_vec(earlier) {
                state.earlier_runs.insert(user, runs);
            }
            state.counters.truncated_users += 1;
            finalize_orders(&mut state.refunds, user, &dropped);
        }
        verdict
    }

    /// Drops state that no event within the allowed lateness can need any more.
    fn expire(&mut self, watermark: Option<i64>) {
        let Some(w) = watermark else { return };
        // An event on time for its minute has `ts > w - lateness - 1 min`: state older than
        // that, by the reach of each rule, can no longer be needed.
        let horizon = self.horizon(w);
        self.state
            .dedup
            .expire(horizon - self.config.dedup_horizon_ms);
        self.state
            .orders
            .expire(horizon - self.config.order_dedup_horizon_ms);
        let gap = self.config.session_gap_ms;
        let (model, lookback) = (self.config.attribution, self.config.attribution_lookback_ms);
        if self.dormant_swept_hour != Some(horizon.div_euclid(HOUR)) {
            self.dormant_swept_hour = Some(horizon.div_euclid(HOUR));
            self.state
                .dormant
                .retain(|_, memory| attribution::still_relevant(*memory, horizon, lookback));
            if !self.state.earlier_runs.is_empty() {
                let (users, dormant) = (&self.state.users, &self.state.dormant);
                // No session still to come starts before the horizon, nor before a held
                // user's first held event.
                self.state.earlier_runs.retain(|user, runs| {
                    let earliest = match users.get(user) {
                        Some(held) => held.entries.first().map_or(horizon, |e| e.ts.min(horizon)),
                        None if dormant.contains_key(user) => horizon,
                        None => return false,
                    };
                    let all = std::mem::replace(runs, EarlierRuns::One(Memory::NONE));
                    match all.pruned(earliest.saturating_sub(lookback)) {
                        Some(kept) => {
                            *runs = kept;
                            true
                        }
                        None => false,
                    }
                });
            }
            // Refunds: orders past the refund horizon are forgotten; refunds whose order
            // can no longer come on time are given up (matching checks the same limits,
            // so when this sweep runs changes no number).
            let book = &mut self.state.refunds;
            let oldest_order = horizon.saturating_sub(self.config.refund_horizon_ms);
            book.orders.retain(|_, order| order.ts >= oldest_order);
            let mut unmatched = 0;
            book.pending.retain(|_, pending| {
                let waits = pending.latest_ts >= horizon;
                if !waits {
                    unmatched += pending.tally.count as u64;
                }
                waits
            });
            self.state.counters.refunds_unmatched += unmatched;
        }
        if self.first_due_minute.saturating_mul(MINUTE) > w {
            return; // nobody due yet
        }
        while let Some(entry) = self.state.expiry.first_entry() {
            if *entry.key() * MINUTE > w {
                break;
            }
            let (_, users) = entry.remove_entry();
            for user in users {
                let Some(state) = self.state.users.get_mut(&user) else {
                    continue;
                };
                if state.due > w {
                    // A newer event moved its due time on: listed again for then (a bucket
                    // after this watermark's, not looked at again in this loop).
                    let bucket = expiry_bucket(state.due);
                    self.state.expiry.entry(bucket).or_default().push(user);
                    continue;
                }
                let cut = state.final_prefix(horizon, gap);
                finalize_orders(&mut self.state.refunds, user, &state.entries[..cut]);
                if cut > 0 {
                    self.spans.clear();
                    attribution::sessions(&state.entries[..cut], gap, &mut self.spans);
                    let mut earlier = match model {
                        AttributionModel::FirstTouch => {
                            let runs = self.state.earlier_runs.remove(&user);
                            runs.map(EarlierRuns::into_vec).unwrap_or_default()
                        }
                        _ => Vec::new(),
                    };
                    let dims = &self.dims;
                    let (memory, capped) = attribution::fold(
                        &self.spans,
                        state.memory,
                        &mut earlier,
                        model,
                        lookback,
                        |a, b| dims.same_touch(a, b),
                    );
                    state.memory = memory;
                    self.state.counters.first_touch_capped += capped;
                    if let Some(runs) = EarlierRuns::from_vec(earlier) {
                        self.state.earlier_runs.insert(user, runs);
                    }
                }
                if cut == state.entries.len() {
                    let memory = state.memory;
                    if let Some(dropped) = self.state.users.remove(&user) {
                        if dropped.stage_hint != 0 {
                            self.let_go_hints.push((user, dropped.stage_hint));
                        }
                        self.spare_lists.give(dropped.entries);
                    }
                    if attribution::still_relevant(memory, horizon, lookback) {
                        self.state.dormant.insert(user, memory);
                    } else if model == AttributionModel::FirstTouch {
                        self.state.earlier_runs.remove(&user);
                    }
                } else {
                    state.entries.drain(..cut);
                    // Not all final (should not happen once due ≤ w): look again later.
                    let due = w + MINUTE;
                    state.due = due;
                    self.state
                        .expiry
                        .entry(expiry_bucket(due))
                        .or_default()
                        .push(user);
                }
            }
        }
        self.first_due_minute = self.state.expiry.keys().next().copied().unwrap_or(i64::MAX);
    }
}

/// The memory a returning user brings back: from users dropped since the last snapshot,
/// else from what the adapter recalled from the store (its earlier `first_touch` runs go
/// to `earlier_runs`). A record too old to matter to any session that can still start
/// counts as none, whether or not it was pruned yet, so that when pruning happens never
/// changes a number.
fn recall(
    dormant: &mut FastHashMap<UserPseudonym, Memory>,
    earlier_runs: &mut FastHashMap<UserPseudonym, EarlierRuns>,
    recalled: &mut FastHashMap<UserPseudonym, Memories>,
    user: &UserPseudonym,
    horizon: Option<i64>,
    config: &PipelineConfig,
    dims: &DimsTable,
) -> Memory {
    if config.attribution == AttributionModel::Session {
        return Memory::NONE;
    }
    let memories = match dormant.remove(user) {
        Some(latest) => Memories {
            earlier: earlier_runs
                .remove(user)
                .map(EarlierRuns::into_vec)
                .unwrap_or_default(),
            latest,
        },
        // Empty but when the adapter recalled memories for this batch: no lookup then.
        None if recalled.is_empty() => Memories::default(),
        None => recalled.remove(user).unwrap_or_default(),
    };
    let Memories {
        mut earlier,
        latest,
    } = memories;
    let lookback = config.attribution_lookback_ms;
    let relevant = match horizon {
        Some(horizon) => attribution::still_relevant(latest, horizon, lookback),
        None => !latest.is_none(),
    };
    // Ids come from this pipeline's table; a damaged record counts as none.
    let known = |m: &Memory| (m.touch as usize) < dims.len();
    if !relevant || !known(&latest) {
        return Memory::NONE;
    }
    if config.attribution == AttributionModel::FirstTouch {
        if let Some(horizon) = horizon {
            attribution::prune_runs(&mut earlier, horizon.saturating_sub(lookback));
        }
        earlier.retain(known);
        if let Some(runs) = EarlierRuns::from_vec(earlier) {
            earlier_runs.insert(*user, runs);
        }
    }
    latest
}

/// Which part of an entry's contribution to add or take back.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    /// The event itself: its type count, flag, conversion, revenue and lateness.
    Event,
    /// The session count it carries, if it starts its session.
    Session,
    Both,
}

/// Where contributions go: the deltas, by window.
struct Rows<'a> {
    deltas: &'a mut KpiDeltas,
    minutes: &'a mut MinuteRows,
    calendar: &'a mut WindowCalendar,
    custom_kinds: &'a [String],
    /// Refunds of held orders ([`RefundBook::tallies`]), and the user whose entries these
    /// rows receive: a conversion counts net of its refunds.
    tallies: &'a FastHashMap<EntryKey, RefundTally>,
    user: UserPseudonym,
}

impl Rows<'_> {
    /// Adds (`sign` 1) or takes back (`sign` −1) what an entry contributes under `dims`.
    fn contribute(&mut self, entry: &EventEntry, dims: DimsId, sign: i64, part: Part) {
        let event = part != Part::Session;
        let session = part != Part::Event && entry.has(bits::STARTS_SESSION);
        if !event && !session {
            return;
        }
        // What the entry's refunds take off its revenue (clean conversions only; the map
        // is empty but for orders refunded while their user is held).
        let refunded = match self.tallies.is_empty() || !event || !entry.is_clean_conversion() {
            true => None,
            false => self
                .tallies
                .get(&EntryKey {
                    user: self.user,
                    ts: entry.ts,
                    kind: entry.kind,
                })
                .map(|tally| (tally.count, i128::from(tally.applied(entry.value_micros)))),
        };
        // The common case: counted in the minute row alone, added to its hour and day rows
        // when the deltas are taken (see [`MinuteRows`] for when that gives the same rows).
        if usize::from(entry.kind) < BUILT_IN_KINDS
            && !entry.has(bits::LATE << 1 | bits::LATE << 2)
            && self.calendar.day_holds_whole_minutes(entry.ts)
        {
            let minute = self.calendar.window(Granularity::Minute, entry.ts);
            let row = self.minutes.row(minute.start, dims);
            add_to_row(row, entry, sign, event, session, refunded, bits::LATE, &[]);
            return;
        }
        for (i, granularity) in Granularity::ALL.into_iter().enumerate() {
            let window = self.calendar.window(granularity, entry.ts);
            let row = self.deltas.row(KpiKey {
                granularity,
                window_start: window.start,
                dims,
            });
            let late = bits::LATE << i;
            add_to_row(
                row,
                entry,
                sign,
                event,
                session,
                refunded,
                late,
                self.custom_kinds,
            );
        }
    }
}

/// Adds (`sign` 1) or takes back (`sign` −1) an entry's contribution to one row: its event
/// part if `event`, its session count if `session`; `late_bit` is the entry's lateness bit
/// for the row's granularity.
#[allow(clippy::too_many_arguments)] // the parts of one contribution, kept inline
#[inline(always)]
fn add_to_row(
    row: &mut KpiCounters,
    entry: &EventEntry,
    sign: i64,
    event: bool,
    session: bool,
    refunded: Option<(i64, i128)>,
    late_bit: u8,
    custom_kinds: &[String],
) {
    if event {
        match custom_kinds.get(usize::from(entry.kind).wrapping_sub(BUILT_IN_KINDS)) {
            Some(name) if usize::from(entry.kind) >= BUILT_IN_KINDS => row.add_custom(name, sign),
            _ => row.events[usize::from(entry.kind).min(BUILT_IN_KINDS - 1)] += sign,
        }
        if entry.flagged() {
            row.flagged += sign;
        } else if entry.conversion() {
            row.conversions += sign;
            // In i128: `sign * value` in i64 would overflow for `i64::MIN` micro-units.
            row.revenue_micros += i128::from(sign) * i128::from(entry.value_micros);
            if let Some((count, micros)) = refunded {
                row.refunds += sign * count;
                row.refunded_micros += i128::from(sign) * micros;
                row.revenue_micros -= i128::from(sign) * micros;
            }
        }
        if entry.has(late_bit) {
            row.late += sign;
        }
    }
    if session {
        row.sessions += sign;
        if entry.has(bits::SESSION_CONVERTING) {
            row.converting_sessions += sign;
        }
    }
}

/// Where the entry just inserted at `index` counts, when [`settle`] would move nothing but
/// add it there: it is the user's latest event, less than a gap after the one before it
/// (so it joins that session and no later session exists), not a clean conversion (the
/// session's converting state stays), and either direct or preceded in its session by a
/// non-direct event (the acquisition stays). `None` when [`settle`] must decide.
fn joins_settled_session(entries: &[EventEntry], index: usize, gap_ms: i64) -> Option<DimsId> {
    if index == 0 || index + 1 != entries.len() {
        return None;
    }
    let (new, prev) = (&entries[index], &entries[index - 1]);
    if new.ts - prev.ts >= gap_ms || new.is_clean_conversion() || prev.counted == NO_DIMS {
        return None;
    }
    if new.touch_is_non_direct() {
        let mut i = index - 1;
        while !entries[i].touch_is_non_direct() {
            if i == 0 || entries[i].ts - entries[i - 1].ts >= gap_ms {
                return None; // the new event would become the acquisition
            }
            i -= 1;
        }
    }
    Some(prev.counted)
}

/// Brings every held entry of a user to where its session says it counts: recomputes the
/// sessions and their attribution, and moves exactly the contributions whose place or
/// session count changed (a new entry is added).
fn settle(
    user: &mut UserState,
    earlier: &[Memory],
    spans: &mut Vec<Span>,
    dims: &mut DimsTable,
    rows: &mut Rows<'_>,
    config: &PipelineConfig,
) {
    spans.clear();
    attribution::sessions(&user.entries, config.session_gap_ms, spans);
    attribution::attribute(
        spans,
        user.memory,
        earlier,
        config.attribution,
        config.attribution_lookback_ms,
    );
    const SESSION_BITS: u8 = bits::STARTS_SESSION | bits::SESSION_CONVERTING;
    for span in spans.iter() {
        let target = dims.attributed(span.attributed, user.entries[span.first].dims);
        for i in span.first..span.end {
            let entry = &mut user.entries[i];
            let mut wanted = entry.bits & !SESSION_BITS;
            if i == span.first {
                wanted |= bits::STARTS_SESSION;
                if span.converting {
                    wanted |= bits::SESSION_CONVERTING;
                }
            }
            if entry.counted == target && entry.bits == wanted {
                continue;
            }
            if entry.counted == NO_DIMS {
                entry.bits = wanted;
                entry.counted = target;
                rows.contribute(entry, target, 1, Part::Both);
            } else if entry.counted == target {
                rows.contribute(entry, target, -1, Part::Session);
                entry.bits = wanted;
                rows.contribute(entry, target, 1, Part::Session);
            } else {
                rows.contribute(entry, entry.counted, -1, Part::Both);
                entry.bits = wanted;
                entry.counted = target;
                rows.contribute(entry, target, 1, Part::Both);
            }
        }
    }
}

/// The earlier `first_touch` runs of a user (none under the other models).
fn earlier_runs_of<'a>(
    earlier_runs: &'a FastHashMap<UserPseudonym, EarlierRuns>,
    user: &UserPseudonym,
    config: &PipelineConfig,
) -> &'a [Memory] {
    if config.attribution != AttributionModel::FirstTouch || earlier_runs.is_empty() {
        return &[];
    }
    earlier_runs.get(user).map_or(&[], EarlierRuns::as_slice)
}

/// Makes final the orders among a user's dropped entries: their place can no longer move,
/// and what a later refund needs of it is kept ([`FinalOrder`]).
#[inline(never)] // per dropped user, not per event: kept out of the per-event path
fn finalize_orders(book: &mut RefundBook, user: UserPseudonym, dropped: &[EventEntry]) {
    if book.held_entries.is_empty() {
        return;
    }
    for entry in dropped.iter().filter(|e| e.conversion()) {
        let key = EntryKey {
            user,
            ts: entry.ts,
            kind: entry.kind,
        };
        let Some(order) = book.held_entries.remove(&key) else {
            continue;
        };
        book.held_orders.remove(&order);
        let tally = book.tallies.remove(&key).unwrap_or_default();
        let counted = entry.is_clean_conversion() && entry.counted != NO_DIMS;
        book.orders.insert(
            order,
            FinalOrder {
                ts: entry.ts,
                remaining_micros: entry.value_micros - tally.applied(entry.value_micros),
                dims: if counted { entry.counted } else { NO_DIMS },
            },
        );
    }
}

/// Drops a user's `excess` oldest entries (a bot with one endless session must not grow
/// without bound). Their contributions stay counted; whole sessions dropped fold into the
/// memory; a session cut in two gives its session count back, and the next [`settle`]
/// counts it once on its new first entry. Returns the `first_touch` runs the cap refused.
fn truncate(
    user: &mut UserState,
    earlier: &mut Vec<Memory>,
    excess: usize,
    spans: &mut Vec<Span>,
    dims: &DimsTable,
    rows: &mut Rows<'_>,
    config: &PipelineConfig,
) -> u64 {
    spans.clear();
    attribution::sessions(&user.entries, config.session_gap_ms, spans);
    let whole = spans.iter().take_while(|s| s.end <= excess).count();
    let (memory, capped) = attribution::fold(
        &spans[..whole],
        user.memory,
        earlier,
        config.attribution,
        config.attribution_lookback_ms,
        |a, b| dims.same_touch(a, b),
    );
    user.memory = memory;
    if let Some(cut) = spans.get(whole).filter(|s| s.first < excess) {
        let first = user.entries[cut.first];
        rows.contribute(&first, first.counted, -1, Part::Session);
    }
    user.entries.drain(..excess);
    capped
}

/// Makes room in a full list by moving it to a larger block: one entry larger while short
/// (up to [`EXACT_GROWTH_UP_TO`]), twice as large after, as `Vec` itself would grow it. The
/// new block is a spare one if there is, the old one becomes a spare; no `realloc`: a
/// list's block can seldom grow in place, and glibc's `realloc` then costs about three
/// times what its `malloc` and `free` fast paths do.
fn grow(entries: &mut Vec<EventEntry>, spares: &mut SpareLists) {
    let len = entries.len();
    let capacity = if len < EXACT_GROWTH_UP_TO {
        len + 1
    } else {
        2 * len
    };
    let mut grown = spares.take(capacity);
    grown.extend_from_slice(entries);
    spares.give(std::mem::replace(entries, grown));
}

/// The expiry bucket of a due watermark: rounded up, so that a bucket is looked at only
/// once every user in it is due.
fn expiry_bucket(due: i64) -> i64 {
    due.div_euclid(MINUTE) + i64::from(due.rem_euclid(MINUTE) != 0)
}

#[cfg(test)]
mod tests;
