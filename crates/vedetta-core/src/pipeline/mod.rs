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

pub mod dedup;
pub mod dims;
pub mod footprint;
pub mod hash;
pub mod kpi;
pub mod settings;
pub mod snapshot;
pub mod user;
pub mod windows;

use crate::enrich::{EnrichConfig, Enricher, RegionLookup};
use crate::record::{EventKind, LogRecord, SpendRecord, StoredEvent, UserPseudonym};
use dedup::{ExactDedup, fingerprint};
use dims::{DimsTable, NO_CAMPAIGN};
use hash::FastHashMap;
use kpi::{DimsId, KpiCounters, KpiDeltas, KpiKey, SpendKey, to_micros};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use user::{EventEntry, KindId, SessionView, UserState};
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
    /// The first non-direct acquisition holds for the lookback, like a first-click cookie.
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
    pub flagged: u64,
    /// Late events per granularity (1m, 1h, 1d).
    pub late: [u64; 3],
    pub spend_records: u64,
    /// Values in a currency without a configured rate (counted as 0 revenue).
    pub unpriced_values: u64,
    /// Per-user state cut short by `max_events_per_user`.
    pub truncated_users: u64,
}

/// Everything the pipeline remembers, serializable for snapshots.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct PipelineState {
    /// Highest event time seen (the watermark is this minus the out-of-orderness).
    pub max_event_ts: Option<i64>,
    pub dedup: ExactDedup,
    pub users: FastHashMap<UserPseudonym, UserState>,
    /// Minute bucket of watermark → users to look at for eviction then.
    pub expiry: BTreeMap<i64, Vec<UserPseudonym>>,
    pub dims: Vec<dims::Dims>,
    pub custom_kinds: Vec<String>,
    pub counters: PipelineCounters,
    /// Offset of the next record to process.
    pub next_offset: u64,
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
    /// Kind ids of the conversion types and of each rule's sides, resolved once.
    conversion_kinds: Vec<KindId>,
    rules: Vec<(Vec<KindId>, Vec<KindId>, i64)>,
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
/// Users' event lists grow by exactly one entry up to this length, by doubling after.
const EXACT_GROWTH_UP_TO: usize = 4;

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
            conversion_kinds: Vec::new(),
            rules: Vec::new(),
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
        /// [`PipelineState`] by reference, field for field in the same order: postcard
        /// writes a reference, or a slice, exactly as the owned value or `Vec`.
        #[derive(Serialize)]
        struct Borrowed<'a> {
            max_event_ts: Option<i64>,
            dedup: &'a ExactDedup,
            users: &'a FastHashMap<UserPseudonym, UserState>,
            expiry: &'a BTreeMap<i64, Vec<UserPseudonym>>,
            dims: &'a [dims::Dims],
            custom_kinds: &'a [String],
            counters: &'a PipelineCounters,
            next_offset: u64,
        }
        let state = &self.state;
        postcard::to_extend(
            &Borrowed {
                max_event_ts: state.max_event_ts,
                dedup: &state.dedup,
                users: &state.users,
                expiry: &state.expiry,
                dims: self.dims.tuples(),
                custom_kinds: &self.custom_kinds,
                counters: &state.counters,
                next_offset: state.next_offset,
            },
            snapshot::header().to_vec(),
        )
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
        }
    }

    /// The interned dimensions of an id (for the store to write rows by name).
    pub fn dims(&self, id: DimsId) -> Option<&dims::Dims> {
        self.dims.get(id)
    }

    pub fn calendar(&self) -> &WindowCalendar {
        &self.calendar
    }

    /// Takes the changes accumulated since the last call.
    pub fn take_deltas(&mut self) -> KpiDeltas {
        // The next batch will likely touch as many rows: sizing for them up front saves
        // growing the map through every power of two again.
        let next = KpiDeltas::with_capacity(self.deltas.rows.len(), self.deltas.spend_micros.len());
        let mut deltas = std::mem::replace(&mut self.deltas, next);
        deltas.compact();
        deltas
    }

    /// Processes the record at `offset`. Records must come in log order, each once.
    pub fn process(&mut self, offset: u64, record: &LogRecord) {
        match record {
            LogRecord::Event(event) => self.process_event(offset, event),
            LogRecord::Spend(spend) => self.process_spend(spend),
        }
        self.state.next_offset = offset + 1;
    }

    fn kind_id(&mut self, kind: &EventKind) -> KindId {
        match kind {
            EventKind::PageView => 0,
            EventKind::AddToCart => 1,
            EventKind::Registration => 2,
            EventKind::Checkout => 3,
            EventKind::Purchase => 4,
            EventKind::Lead => 5,
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
        }
    }

    fn money_micros(&mut self, amount: f64, currency: Option<&str>) -> i64 {
        match currency {
            None => to_micros(amount),
            Some(code) if code == self.config.reporting_currency => to_micros(amount),
            Some(code) => match self.config.currency_rates.get(code) {
                Some(rate) => to_micros(amount * rate),
                None => {
                    self.state.counters.unpriced_values += 1;
                    0
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
        let record =
            kpi::SpendCounters::record(self.money_micros(spend.amount, spend.currency.as_deref()));
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

    fn process_event(&mut self, offset: u64, event: &StoredEvent) {
        let ts = event.ts.0;
        self.state.counters.events += 1;
        // The watermark before this record decides lateness; then the record moves it.
        let watermark = self.watermark();
        self.state.max_event_ts = Some(self.state.max_event_ts.map_or(ts, |m| m.max(ts)));

        let enrichment = self.enricher.enrich(event);
        let dims = self.dims.intern(
            &enrichment.channel,
            enrichment.campaign,
            enrichment.device.as_str(),
            enrichment.region.code(),
        );
        let kind = self.kind_id(&event.kind);

        // Dedup: exact by event_id, then near by (user, type, ts).
        let id_slot = event
            .event_id
            .as_deref()
            .map(|id| self.state.dedup.slot(fingerprint(id)));
        let exact = id_slot
            .as_ref()
            .is_some_and(|slot| slot.is_duplicate(ts, self.config.dedup_horizon_ms));
        let near = !exact
            && self
                .state
                .users
                .get(&event.user)
                .is_some_and(|u| u.has_near(kind, ts, self.config.near_duplicate_ms));
        if exact || near {
            if exact {
                self.state.counters.exact_duplicates += 1;
            } else {
                self.state.counters.near_duplicates += 1;
            }
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
            return;
        }
        if let Some(slot) = id_slot {
            slot.remember(ts);
        }
        self.state.counters.accepted += 1;

        let conversion = self.conversion_kinds.contains(&kind);
        let value_micros = match (conversion, event.value) {
            (true, Some(value)) => self.money_micros(value, event.currency.as_deref()),
            _ => 0,
        };
        let entry = EventEntry {
            ts,
            order: offset,
            value_micros,
            dims,
            kind,
            flagged: false,
            conversion,
        };
        let custom_name = (kind as usize >= BUILT_IN_KINDS)
            .then(|| self.custom_kinds[kind as usize - BUILT_IN_KINDS].clone());
        self.accept(event.user, entry, custom_name.as_deref(), watermark);
        self.expire(watermark);
    }

    /// Inserts an accepted event into its user's state and emits every change it causes.
    fn accept(
        &mut self,
        user: UserPseudonym,
        mut entry: EventEntry,
        custom_name: Option<&str>,
        watermark: Option<i64>,
    ) {
        let gap = self.config.session_gap_ms;
        let state = self.state.users.entry(user).or_default();
        let index = state.position(entry.ts, entry.order);
        let before = state.sessions_around(index, entry.ts, gap);

        // Flags on the new event: a rule's `after` event shortly before it.
        for (after, then, within) in &self.rules {
            if then.contains(&entry.kind)
                && state.entries[..index]
                    .iter()
                    .rev()
                    .take_while(|e| entry.ts - e.ts < *within)
                    .any(|e| after.contains(&e.kind) && e.ts <= entry.ts)
            {
                entry.flagged = true;
            }
        }
        // A user's list grows one entry at a time while short: most users have a few events,
        // and the default first allocation (4 entries) leaves half of it unused for a user
        // with two. Past four it doubles as usual, so a long list still grows cheaply.
        if state.entries.len() == state.entries.capacity()
            && state.entries.len() < EXACT_GROWTH_UP_TO
        {
            state.entries.reserve_exact(1);
        }
        state.entries.insert(index, entry);

        // Flags the new event causes: rule targets shortly after it, now flagged.
        let mut newly_flagged = Vec::new();
        for (after, then, within) in &self.rules {
            if !after.contains(&entry.kind) {
                continue;
            }
            for (i, target) in state.entries.iter_mut().enumerate() {
                if i == index
                    || target.ts < entry.ts
                    || target.ts - entry.ts >= *within
                    || target.flagged
                    || !then.contains(&target.kind)
                {
                    continue;
                }
                target.flagged = true;
                newly_flagged.push(*target);
            }
        }

        let index = state.position(entry.ts, entry.order);
        let after = state.session_at(index, gap);
        let due = state.entries.last().map_or(0, |e| e.ts)
            + gap
            + self.config.allowed_lateness_ms
            + MINUTE;
        // Bucket `expiry_bucket(state.due)` already lists the user (every scheduled due time
        // is listed, and the user stays until its latest one): a due time moving within the
        // same minute needs no second entry.
        let schedule = due > state.due && expiry_bucket(due) != expiry_bucket(state.due);
        state.due = state.due.max(due);
        if state.entries.len() > self.config.max_events_per_user {
            let excess = state.entries.len() - self.config.max_events_per_user;
            state.entries.drain(..excess);
            self.state.counters.truncated_users += 1;
        }
        if schedule {
            self.state
                .expiry
                .entry(expiry_bucket(due))
                .or_default()
                .push(user);
        }

        // Event-level changes.
        self.emit_event(&entry, custom_name, 1);
        if entry.flagged {
            self.state.counters.flagged += 1;
        }
        if let Some(w) = watermark {
            let lateness = self.config.allowed_lateness_ms;
            for (i, granularity) in Granularity::ALL.into_iter().enumerate() {
                let window = self.calendar.window(granularity, entry.ts);
                if w >= window.end + lateness {
                    self.state.counters.late[i] += 1;
                    self.row(granularity, entry.ts, entry.dims).late += 1;
                }
            }
        }
        for target in newly_flagged {
            self.state.counters.flagged += 1;
            for granularity in Granularity::ALL {
                let row = self.row(granularity, target.ts, target.dims);
                row.flagged += 1;
                if target.conversion {
                    row.conversions -= 1;
                    row.revenue_micros -= i128::from(target.value_micros);
                }
            }
        }

        // Session-level changes: retract what the neighbourhood was, add what it is.
        if before.len() == 1 && before[0] == after {
            return;
        }
        for &session in before.iter() {
            self.emit_session(session, -1);
        }
        self.emit_session(after, 1);
    }

    fn row(&mut self, granularity: Granularity, ts: i64, dims: DimsId) -> &mut KpiCounters {
        let window = self.calendar.window(granularity, ts);
        self.deltas.row(KpiKey {
            granularity,
            window_start: window.start,
            dims,
        })
    }

    fn emit_event(&mut self, entry: &EventEntry, custom_name: Option<&str>, sign: i64) {
        for granularity in Granularity::ALL {
            let row = self.row(granularity, entry.ts, entry.dims);
            match custom_name {
                Some(name) => row.add_custom(name, sign),
                None => row.events[entry.kind as usize] += sign,
            }
            if entry.flagged {
                row.flagged += sign;
            } else if entry.conversion {
                row.conversions += sign;
                // In i128: `sign * value` in i64 would overflow for `i64::MIN` micro-units.
                row.revenue_micros += i128::from(sign) * i128::from(entry.value_micros);
            }
        }
    }

    fn emit_session(&mut self, session: SessionView, sign: i64) {
        for granularity in Granularity::ALL {
            let row = self.row(granularity, session.first_ts, session.first_dims);
            row.sessions += sign;
            if session.converting {
                row.converting_sessions += sign;
            }
        }
    }

    /// Drops state that no event within the allowed lateness can need any more.
    fn expire(&mut self, watermark: Option<i64>) {
        let Some(w) = watermark else { return };
        // An event on time for its minute has `ts > w - lateness - 1 min`: state older than
        // that, by the reach of each rule, can no longer be needed.
        let horizon = w - self.config.allowed_lateness_ms - MINUTE;
        self.state
            .dedup
            .expire(horizon - self.config.dedup_horizon_ms);
        let gap = self.config.session_gap_ms;
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
                    continue; // rescheduled for later by a newer event
                }
                if state.drop_final_sessions(horizon, gap) {
                    self.state.users.remove(&user);
                } else {
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
    }
}

/// The expiry bucket of a due watermark: rounded up, so that a bucket is looked at only
/// once every user in it is due.
fn expiry_bucket(due: i64) -> i64 {
    due.div_euclid(MINUTE) + i64::from(due.rem_euclid(MINUTE) != 0)
}

#[cfg(test)]
mod tests;
