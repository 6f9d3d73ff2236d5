//! The truth: Vedetta's KPIs computed from a whole synthetic log at once, by the plainest
//! algorithm that follows `docs/semantics.md`. It is the answer key of the end-to-end test.
//!
//! `vedetta gen --truth FILE` writes [`compute`]'s [`Truth`] next to the traffic; the
//! end-to-end test sends that traffic to a server (out of order, with duplicates and late
//! events) and requires `/v1/kpis` to equal the truth exactly, for every window and group, at
//! `1m`, `1h` and `1d`.
//!
//! # Why it is deliberately simple
//!
//! Such a test is worth something only if the two sides can be wrong independently. So this
//! module shares nothing with the streaming pipeline (`vedetta-core::pipeline`) — no code, no
//! parsers, no data structures — and uses none of its techniques. The pipeline works
//! incrementally: it keeps state per open window, closes windows as the watermark passes,
//! retracts a session when an out-of-order event merges it with another, corrects a purchase
//! when its registration arrives late. The truth does none of that. It sees the whole log, so
//! each rule of the spec becomes one pass over a `Vec`:
//!
//! 1. **Read the log in order**, noting for each funnel event the watermark it was processed
//!    under (highest `ts` of the funnel events before it, minus the out-of-orderness).
//! 2. **Judge duplicates in log order**: exact (same `event_id`, `|Δts| <` 24 h), then near
//!    (same user and type, `|Δts| <` 100 ms), then same order (a purchase with the `order_id`
//!    of an accepted purchase of any user, `|Δts| <` 7 days), each time against the events
//!    accepted so far.
//! 3. **Flag** every accepted checkout and purchase that follows an accepted registration of
//!    the same user by less than 5 s, whatever the arrival order.
//! 4. **Sessionize**: per user, sort the accepted events by `ts` (ties: log order) and cut
//!    where the gap is 30 minutes or more. A session's acquisition is the touch of its earliest
//!    non-direct event, else of its first event.
//! 5. **Attribute**: per user, walk the sessions in order of start and credit each one under
//!    the model (`last_non_direct`: a direct session takes the latest earlier non-direct
//!    session's acquisition within the lookback; `session`: its own; `first_touch`: the
//!    earliest non-direct session, itself included, started within the lookback before it).
//!    Each session looks over the whole list: no per-user record.
//! 6. **Count** every accepted event and every session under its session's attributed channel
//!    and campaign and its first event's device and region, every duplicate under its own
//!    dimensions; sort.
//! 7. **Refund**: per order, the accepted refunds naming it (exact duplicates dropped in
//!    step 2, never near ones), whenever they arrived. If the order's accepted purchase is
//!    clean and within the refund horizon of each refund, every refund counts once in the
//!    purchase's rows (its `ts`, the dimensions it counts under), and the money they ask,
//!    capped at the purchase's value, moves from `revenue` to `refunded`. Otherwise they
//!    change nothing.
//!
//! Clarity comes before speed, with plain `HashMap`s and linear scans; a million records still
//! take about two seconds in release (see `one_million_events_timing` in `tests/truth.rs`).
//!
//! # When it is exact
//!
//! The truth holds all the data; the pipeline may forget a user's state (sessions, flags, near
//! duplicates) once no event on time for its minute can need it (semantics.md, "What the
//! pipeline keeps"). An event later than the allowed lateness then meets only what is still
//! held (for attribution, the user's record of the latest non-direct acquisition, or the
//! `first_touch` runs), and the two may legitimately differ on sessions, flags, near
//! duplicates and the attribution of that user's later sessions. The truth does not apply
//! the pipeline's cap of 32 `first_touch` runs per user (a bot's; the pipeline counts it in
//! `first_touch_capped`). So the truth is the answer key of a log in which no event is late
//! (the `late` total of its `1m` rows is zero) and no user hits that cap. Generated traffic qualifies (no event arrives more than about ten minutes
//! behind; the default lateness is fifteen); a test that shortens the lateness to exercise `late`
//! should compare only what cannot depend on forgotten state.
//!
//! # Dimensions and money
//!
//! Dimensions come from what the generator knows, not from parsing (see `dimensions`): the
//! channel is the event's `channel`; else, if the event carries `utm_source`, `utm_medium`, a
//! click id or a referrer, the channel the generator chose them for (its session's, from the
//! ground truth); else `direct`. The device is the class each catalog user agent was chosen for; the region is
//! the catalog code of the `region` field, else the GeoIP table's region for the `ip`
//! ([`TruthConfig::geoip`], which the test also gives the server), else `unknown`. The user is
//! the `udid` string (the server's keyed pseudonym is a bijection of it). Money is rounded to
//! integer micro-euros once per value, then only added.
//!
//! # Readings of the spec
//!
//! Where `docs/semantics.md` leaves room, the truth reads it as follows:
//!
//! - Every record of the log is an accepted intake record: whatever the test sends must pass
//!   intake validation, or the truth and the server see different logs.
//! - The exact-duplicate horizon is a distance in event time between the two `ts` (as
//!   semantics.md says), not how long ago the first copy was *seen* (EVENTS.md's wording).
//!   Both duplicate rules have unbounded memory: an event is compared with every accepted event
//!   before it in the log, however long ago it arrived. `event_id` is global, not per user.
//! - A near duplicate is judged against accepted events only: in `a`, `a+99 ms`, `a+198 ms`
//!   the second is dropped and the third is accepted (198 ms from the accepted `a`).
//! - A flag needs `0 ≤ t − r < 5 s`: a checkout at the same millisecond as the registration is
//!   flagged, one a millisecond before it is not. Only the default rule (`registration` →
//!   `checkout`/`purchase`) is known to the truth.
//! - Flagged events are still accepted: they count in `events`, belong to sessions and can be
//!   late; they are not conversions and add no revenue. Only `purchase` converts.
//! - Revenue counts a purchase's `value` when its currency is absent or `EUR` (any case); any
//!   other currency adds 0 (the default configuration has no exchange rates). A spend record in
//!   another currency is left out (its amount is unknown, not 0).
//! - A session is counted once per granularity, in the window of its first event (by `ts`, ties
//!   by log order), under its attributed channel and campaign and its first event's device and
//!   region; `converting_sessions` counts it there if any of its events, wherever they fall, is
//!   a clean conversion.
//! - Order ids are compared as sent, trimmed; an empty one counts as absent. Only a `purchase`
//!   is a conversion type, so only purchases are judged by their order (flagged ones too: they
//!   are accepted purchases). The horizon is a distance between the two `ts`, like the
//!   exact-duplicate horizon.
//! - A direct session's acquisition keeps its first event's campaign (`direct` with a
//!   `campaign` field is a direct touch with that campaign).
//! - Spend: a (window, channel, campaign) with records has a spend, 0 if they sum to zero;
//!   without records its spend is unknown (`null` in the API), which the truth file says by
//!   leaving it out of `spend` ([`Truth::by_channel_and_campaign`] makes it `None`).
//! - `late` is decided when the event is processed, against the watermark of the events before
//!   it (not including itself): late for `g` iff `watermark ≥ end of its g-window + lateness`.
//!   Before the first funnel event the watermark is −∞. Spend moves no watermark and is never
//!   late or deduplicated: every spend record adds.
//! - Campaign: `campaign`, else `utm_campaign`, else `(none)`, each trimmed, an empty string
//!   counting as absent. Spend rows use the spend record's channel and campaign the same way.
//! - Region: a `region` value the catalog does not know (not an Italian region name or code)
//!   counts as absent, so the IP decides. The truth knows the catalog's Italian names and the
//!   codes, in any case; the English names the contract also accepts are never generated.
//! - Device: a user agent not in the catalog is `unknown` to the truth (the generator only sends
//!   catalog ones); no user agent (server-side purchases) is `unknown`.
//! - Rows: one per (granularity, window, channel, campaign, device, region) with any non-zero
//!   count, sorted in that order with granularities `1m`, `1h`, `1d`. Spend rows likewise by
//!   (granularity, window, channel, campaign).

mod attribution;
mod dimensions;
mod windows;

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::generator::Arrival;
use crate::record::{EventType, SynthRecord};
use crate::rfc3339::format_rfc3339_ms;

use attribution::{Session, Touch, attribute, sessionize};
use dimensions::{DimensionTables, Dims};

pub use attribution::AttributionModel;
pub use dimensions::IpRegion;
pub use windows::{Granularity, Window};

/// The pipeline settings the truth must share with the server it checks. The defaults are the
/// contract's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruthConfig {
    /// Subtracted from the highest event time seen to give the watermark.
    pub out_of_orderness_ms: i64,
    /// A window closes when the watermark reaches its end plus this.
    pub allowed_lateness_ms: i64,
    /// A gap of this much event time or more between two events of a user starts a new session.
    pub session_gap_ms: i64,
    /// Same user, same type, `ts` less than this apart: a near duplicate.
    pub near_duplicate_ms: i64,
    /// Same `event_id`, `ts` less than this apart: an exact duplicate.
    pub dedup_horizon_ms: i64,
    /// A checkout or purchase less than this after a registration of its user is flagged.
    pub fast_checkout_ms: i64,
    /// A purchase with the `order_id` of an accepted purchase whose `ts` is less than this
    /// away is a duplicate (`pipeline.order_dedup_horizon`).
    pub order_dedup_horizon_ms: i64,
    /// `pipeline.attribution`.
    pub attribution: AttributionModel,
    /// `pipeline.attribution_lookback`.
    pub attribution_lookback_ms: i64,
    /// `pipeline.refund_horizon`: a refund more than this (event time) from its order's
    /// purchase does not find it.
    pub refund_horizon_ms: i64,
    /// The GeoIP database the server is given, as the table it was written from (for the
    /// catalog database: `geoip::catalog_region_networks`, with each region's ISO code). Empty:
    /// no address has a region.
    pub geoip: Vec<IpRegion>,
}

impl Default for TruthConfig {
    fn default() -> Self {
        Self {
            out_of_orderness_ms: 5_000,
            allowed_lateness_ms: 900_000,
            session_gap_ms: 1_800_000,
            near_duplicate_ms: 100,
            dedup_horizon_ms: 86_400_000,
            fast_checkout_ms: 5_000,
            order_dedup_horizon_ms: 7 * 86_400_000,
            attribution: AttributionModel::LastNonDirect,
            attribution_lookback_ms: 30 * 86_400_000,
            refund_horizon_ms: 60 * 86_400_000,
            geoip: Vec::new(),
        }
    }
}

/// The expected KPIs: every non-empty row of funnel counts and of spend. This is the
/// `--truth FILE` format (serde_json).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Truth {
    pub rows: Vec<TruthRow>,
    pub spend: Vec<TruthSpendRow>,
}

/// The counts of one (granularity, window, channel, campaign, device, region). Ratios are not
/// here: they follow from the counts of whatever grouping a query asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TruthRow {
    /// `1m`, `1h` or `1d`.
    pub granularity: String,
    /// `window_start_ms` in RFC 3339 (UTC), for people reading the file.
    pub window_start: String,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub channel: String,
    pub campaign: String,
    pub device: String,
    pub region: String,
    /// Accepted events by canonical type name; types with no events are left out.
    pub events: BTreeMap<String, u64>,
    pub sessions: u64,
    pub converting_sessions: u64,
    pub conversions: u64,
    pub revenue_micros: i64,
    pub flagged: u64,
    pub duplicates: u64,
    pub late: u64,
    /// Refunds of this row's clean purchases (issue 13). Absent in truth files written
    /// before refunds: 0.
    #[serde(default)]
    pub refunds: u64,
    /// What they gave back, micro-euros (already taken off `revenue_micros`).
    #[serde(default)]
    pub refunded_micros: i64,
}

/// Ad spend of one (granularity, window, channel, campaign).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TruthSpendRow {
    pub granularity: String,
    pub window_start: String,
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub channel: String,
    pub campaign: String,
    pub spend_micros: i64,
}

/// The KPIs of one (granularity, window, channel, campaign), summed over device and region:
/// what `/v1/kpis?group_by=channel,campaign` answers, spend included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruthChannelRow {
    pub granularity: String,
    pub window_start_ms: i64,
    pub channel: String,
    pub campaign: String,
    pub events: BTreeMap<String, u64>,
    pub sessions: u64,
    pub converting_sessions: u64,
    pub conversions: u64,
    pub revenue_micros: i64,
    pub flagged: u64,
    pub duplicates: u64,
    pub late: u64,
    pub refunds: u64,
    pub refunded_micros: i64,
    /// `None` when no spend record has this window, channel and campaign: unknown spend, not
    /// zero (organic, direct, e-mail and referral have none to know of).
    pub spend_micros: Option<i64>,
}

impl Truth {
    /// The rows grouped by channel and campaign (every row with a count or a spend record),
    /// sorted by granularity (`1m`, `1h`, `1d`), window, channel, campaign.
    pub fn by_channel_and_campaign(&self) -> Vec<TruthChannelRow> {
        let order = |granularity: &str| {
            Granularity::ALL
                .iter()
                .position(|g| g.as_str() == granularity)
        };
        let mut groups: BTreeMap<(Option<usize>, i64, String, String), TruthChannelRow> =
            BTreeMap::new();
        for row in &self.rows {
            let key = (
                order(&row.granularity),
                row.window_start_ms,
                row.channel.clone(),
                row.campaign.clone(),
            );
            let sum = groups.entry(key).or_insert_with(|| {
                empty_channel_row(
                    &row.granularity,
                    row.window_start_ms,
                    &row.channel,
                    &row.campaign,
                )
            });
            for (event_type, count) in &row.events {
                *sum.events.entry(event_type.clone()).or_default() += count;
            }
            sum.sessions += row.sessions;
            sum.converting_sessions += row.converting_sessions;
            sum.conversions += row.conversions;
            sum.revenue_micros += row.revenue_micros;
            sum.flagged += row.flagged;
            sum.duplicates += row.duplicates;
            sum.late += row.late;
            sum.refunds += row.refunds;
            sum.refunded_micros += row.refunded_micros;
        }
        for spend in &self.spend {
            let key = (
                order(&spend.granularity),
                spend.window_start_ms,
                spend.channel.clone(),
                spend.campaign.clone(),
            );
            let sum = groups.entry(key).or_insert_with(|| {
                empty_channel_row(
                    &spend.granularity,
                    spend.window_start_ms,
                    &spend.channel,
                    &spend.campaign,
                )
            });
            *sum.spend_micros.get_or_insert(0) += spend.spend_micros;
        }
        groups.into_values().collect()
    }
}

fn empty_channel_row(
    granularity: &str,
    window_start_ms: i64,
    channel: &str,
    campaign: &str,
) -> TruthChannelRow {
    TruthChannelRow {
        granularity: granularity.to_owned(),
        window_start_ms,
        channel: channel.to_owned(),
        campaign: campaign.to_owned(),
        events: BTreeMap::new(),
        sessions: 0,
        converting_sessions: 0,
        conversions: 0,
        revenue_micros: 0,
        flagged: 0,
        duplicates: 0,
        late: 0,
        refunds: 0,
        refunded_micros: 0,
        spend_micros: None,
    }
}

/// Computes the KPIs of `log`: the records in the order the server receives them (the order
/// of a [`crate::Generator`]'s arrivals). Only the records and `GroundTruth::channel` are read;
/// the other ground-truth labels (duplicate, late, fast checkout, session) are what the truth
/// must find by itself, so tests can compare them.
pub fn compute<'a>(log: impl IntoIterator<Item = &'a Arrival>, config: &TruthConfig) -> Truth {
    let tables = DimensionTables::new(&config.geoip);

    let (events, spends) = read_log(log, config, &tables);
    let accepted = judge_duplicates(&events, config);
    let flagged = flag_fast_checkouts(&events, &accepted, config);
    // A refund is no step of the funnel: it belongs to no session.
    let in_funnel: Vec<bool> = events
        .iter()
        .zip(&accepted)
        .map(|(event, &accepted)| accepted && event.event_type != EventType::Refund)
        .collect();
    let mut users = sessionize(&events, &in_funnel, &flagged, config.session_gap_ms);
    for sessions in &mut users {
        attribute(sessions, config.attribution, config.attribution_lookback_ms);
    }

    // Where each accepted event counts: its session's attributed touch, and the device and
    // region of the session's first event.
    let mut counted_under: Vec<Option<Dims<'_>>> = vec![None; events.len()];
    for session in users.iter().flatten() {
        let dims = session_dims(&events, session);
        for &index in &session.events {
            counted_under[index] = Some(dims);
        }
    }

    // Count everything into rows.
    let mut rows: HashMap<RowKey<'_>, Counts> = HashMap::new();
    for (index, event) in events.iter().enumerate() {
        if accepted[index] && event.event_type == EventType::Refund {
            continue; // in no session: counted with its order, below
        }
        for granularity in Granularity::ALL {
            let window = granularity.window(event.ts);
            let Some(dims) = counted_under[index].filter(|_| accepted[index]) else {
                // A duplicate belongs to no session: its own dimensions.
                let key = RowKey::new(granularity, window, event.dims);
                rows.entry(key).or_default().duplicates += 1;
                continue;
            };
            let counts = rows
                .entry(RowKey::new(granularity, window, dims))
                .or_default();
            counts.events[event.event_type as usize] += 1;
            if flagged[index] {
                counts.flagged += 1;
            } else if event.event_type == EventType::Purchase {
                counts.conversions += 1;
                counts.revenue_micros += event.value_micros;
            }
            let closed_at = window.end_ms.saturating_add(config.allowed_lateness_ms);
            if event
                .watermark
                .is_some_and(|watermark| watermark >= closed_at)
            {
                counts.late += 1;
            }
        }
    }
    count_refunds(
        &events,
        &accepted,
        &flagged,
        &counted_under,
        config,
        &mut rows,
    );
    for session in users.iter().flatten() {
        let dims = session_dims(&events, session);
        for granularity in Granularity::ALL {
            let window = granularity.window(session.start);
            let counts = rows
                .entry(RowKey::new(granularity, window, dims))
                .or_default();
            counts.sessions += 1;
            counts.converting_sessions += u64::from(session.converting);
        }
    }

    let mut spend_rows: HashMap<(Granularity, i64, &str, &str), i64> = HashMap::new();
    for spend in &spends {
        for granularity in Granularity::ALL {
            let window = granularity.window(spend.ts);
            let key = (granularity, window.start_ms, spend.channel, spend.campaign);
            *spend_rows.entry(key).or_default() += spend.amount_micros;
        }
    }

    Truth {
        rows: into_truth_rows(rows),
        spend: into_spend_rows(spend_rows),
    }
}

/// Pass 7: each order's accepted refunds, in the rows of its accepted purchase.
fn count_refunds<'a>(
    events: &[LoggedEvent<'a>],
    accepted: &[bool],
    flagged: &[bool],
    counted_under: &[Option<Dims<'a>>],
    config: &TruthConfig,
    rows: &mut HashMap<RowKey<'a>, Counts>,
) {
    // The accepted purchase of each order (the last in the log, should there be several
    // more than the order dedup horizon apart).
    let mut purchase_of_order: HashMap<&str, usize> = HashMap::new();
    for (index, event) in events.iter().enumerate() {
        if accepted[index]
            && event.event_type == EventType::Purchase
            && let Some(order) = event.order_id.as_deref()
        {
            purchase_of_order.insert(order, index);
        }
    }
    // Refunds by the purchase they find: how many, and the money asked.
    let mut refunds_of: BTreeMap<usize, (u64, i64)> = BTreeMap::new();
    for (index, event) in events.iter().enumerate() {
        if !accepted[index] || event.event_type != EventType::Refund {
            continue;
        }
        let Some(&purchase) = event
            .order_id
            .as_deref()
            .and_then(|order| purchase_of_order.get(order))
        else {
            continue; // unmatched
        };
        if (events[purchase].ts - event.ts).abs() > config.refund_horizon_ms {
            continue;
        }
        let sum = refunds_of.entry(purchase).or_default();
        sum.0 += 1;
        sum.1 += event.value_micros;
    }
    for (purchase, (count, asked_micros)) in refunds_of {
        let Some(dims) = counted_under[purchase].filter(|_| !flagged[purchase]) else {
            continue; // a flagged purchase counts nowhere, nor do its refunds
        };
        let given_back = asked_micros.min(events[purchase].value_micros);
        for granularity in Granularity::ALL {
            let window = granularity.window(events[purchase].ts);
            let counts = rows
                .entry(RowKey::new(granularity, window, dims))
                .or_default();
            counts.refunds += count;
            counts.refunded_micros += given_back;
            counts.revenue_micros -= given_back;
        }
    }
}

/// The dimensions a session and its events count under.
fn session_dims<'a>(events: &[LoggedEvent<'a>], session: &Session<'a>) -> Dims<'a> {
    let first = &events[session.events[0]];
    Dims {
        channel: session.attributed.channel,
        campaign: session.attributed.campaign,
        device: first.dims.device,
        region: first.dims.region,
    }
}

/// A funnel event of the log, reduced to what the KPIs need.
#[derive(Debug)]
struct LoggedEvent<'a> {
    /// Position in the log: "first" always means the lowest of these.
    offset: usize,
    ts: i64,
    user: String,
    event_type: EventType,
    event_id: String,
    /// The trimmed `order_id`, if any and not empty.
    order_id: Option<String>,
    /// The `value` in micro-euros (0 if absent or in another currency); revenue if this is a
    /// clean purchase.
    value_micros: i64,
    /// The event's own dimensions: its touch, device and region.
    dims: Dims<'a>,
    /// The watermark this event was processed under; `None` is −∞.
    watermark: Option<i64>,
}

impl<'a> LoggedEvent<'a> {
    fn touch(&self) -> Touch<'a> {
        Touch {
            channel: self.dims.channel,
            campaign: self.dims.campaign,
        }
    }
}

#[derive(Debug)]
struct LoggedSpend {
    ts: i64,
    channel: &'static str,
    campaign: &'static str,
    amount_micros: i64,
}

/// Pass 1: the funnel events and spend records of the log, in log order, each event with the
/// watermark in force when it was processed.
fn read_log<'a, 't>(
    log: impl IntoIterator<Item = &'a Arrival>,
    config: &TruthConfig,
    tables: &DimensionTables<'t>,
) -> (Vec<LoggedEvent<'t>>, Vec<LoggedSpend>) {
    let mut events = Vec::new();
    let mut spends = Vec::new();
    let mut highest_ts: Option<i64> = None;
    for (offset, arrival) in log.into_iter().enumerate() {
        match &arrival.record {
            SynthRecord::Event(event) => {
                let ts = event.ts.epoch_ms;
                events.push(LoggedEvent {
                    offset,
                    ts,
                    user: event.udid.to_string(),
                    event_type: event.event_type,
                    event_id: event.event_id.to_string(),
                    order_id: event
                        .order_id
                        .map(|order| order.to_string().trim().to_owned())
                        .filter(|order| !order.is_empty()),
                    value_micros: if is_euro(event.currency) {
                        to_micros(event.value.unwrap_or(0.0))
                    } else {
                        0
                    },
                    dims: tables.of_event(event, arrival.truth.channel),
                    watermark: highest_ts.map(|ts| ts.saturating_sub(config.out_of_orderness_ms)),
                });
                highest_ts = highest_ts.max(Some(ts));
            }
            // A spend in another currency has no known amount: left out, not a known 0.
            SynthRecord::Spend(spend) if is_euro(Some(spend.currency)) => {
                let (channel, campaign) = DimensionTables::of_spend(spend);
                spends.push(LoggedSpend {
                    ts: spend.ts.epoch_ms,
                    channel,
                    campaign,
                    amount_micros: to_micros(spend.amount),
                });
            }
            SynthRecord::Spend(_) => {}
        }
    }
    (events, spends)
}

/// Pass 2: `accepted[i]` is false when event `i` is a duplicate. Judged in log order, each
/// event against the events accepted before it.
fn judge_duplicates(events: &[LoggedEvent<'_>], config: &TruthConfig) -> Vec<bool> {
    let mut accepted = Vec::with_capacity(events.len());
    let mut accepted_ts_by_id: HashMap<&str, Vec<i64>> = HashMap::new();
    let mut accepted_ts_by_user_and_type: HashMap<(&str, EventType), Vec<i64>> = HashMap::new();
    let mut accepted_conversion_ts_by_order: HashMap<&str, Vec<i64>> = HashMap::new();
    for event in events {
        let within = |earlier: Option<&Vec<i64>>, distance_ms: i64| {
            earlier.is_some_and(|all| all.iter().any(|&ts| (ts - event.ts).abs() < distance_ms))
        };
        let user_and_type = (event.user.as_str(), event.event_type);
        let exact = within(
            accepted_ts_by_id.get(event.event_id.as_str()),
            config.dedup_horizon_ms,
        );
        // Refunds are judged by `event_id` only (two refunds of an order may come together).
        let near = !exact
            && event.event_type != EventType::Refund
            && within(
                accepted_ts_by_user_and_type.get(&user_and_type),
                config.near_duplicate_ms,
            );
        // Only `purchase` is a conversion type (the default `pipeline.conversion_types`).
        let order = event
            .order_id
            .as_deref()
            .filter(|_| event.event_type == EventType::Purchase);
        let same_order = !exact
            && !near
            && order.is_some_and(|order| {
                within(
                    accepted_conversion_ts_by_order.get(order),
                    config.order_dedup_horizon_ms,
                )
            });
        let is_accepted = !exact && !near && !same_order;
        if is_accepted {
            if let Some(order) = order {
                accepted_conversion_ts_by_order
                    .entry(order)
                    .or_default()
                    .push(event.ts);
            }
            accepted_ts_by_id
                .entry(event.event_id.as_str())
                .or_default()
                .push(event.ts);
            accepted_ts_by_user_and_type
                .entry(user_and_type)
                .or_default()
                .push(event.ts);
        }
        accepted.push(is_accepted);
    }
    accepted
}

/// Pass 3: `flagged[i]` is true when event `i` is an accepted checkout or purchase at `t` and
/// its user has an accepted registration at `r` with `0 ≤ t − r < fast_checkout_ms`.
fn flag_fast_checkouts(
    events: &[LoggedEvent<'_>],
    accepted: &[bool],
    config: &TruthConfig,
) -> Vec<bool> {
    let mut registrations: HashMap<&str, Vec<i64>> = HashMap::new();
    for (event, &accepted) in events.iter().zip(accepted) {
        if accepted && event.event_type == EventType::Registration {
            registrations
                .entry(event.user.as_str())
                .or_default()
                .push(event.ts);
        }
    }
    events
        .iter()
        .zip(accepted)
        .map(|(event, &accepted)| {
            let flaggable = matches!(event.event_type, EventType::Checkout | EventType::Purchase);
            accepted
                && flaggable
                && registrations.get(event.user.as_str()).is_some_and(|all| {
                    all.iter()
                        .any(|&r| (0..config.fast_checkout_ms).contains(&(event.ts - r)))
                })
        })
        .collect()
}

/// A row's identity; `Ord` is the order of the truth's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct RowKey<'a> {
    granularity: Granularity,
    window_start_ms: i64,
    dims: Dims<'a>,
}

impl<'a> RowKey<'a> {
    fn new(granularity: Granularity, window: Window, dims: Dims<'a>) -> Self {
        Self {
            granularity,
            window_start_ms: window.start_ms,
            dims,
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    /// Indexed by `EventType as usize`.
    events: [u64; 6],
    sessions: u64,
    converting_sessions: u64,
    conversions: u64,
    revenue_micros: i64,
    flagged: u64,
    duplicates: u64,
    late: u64,
    refunds: u64,
    refunded_micros: i64,
}

impl Counts {
    fn is_zero(&self) -> bool {
        self.events.iter().all(|&n| n == 0)
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
}

fn into_truth_rows(rows: HashMap<RowKey<'_>, Counts>) -> Vec<TruthRow> {
    let mut rows: Vec<(RowKey<'_>, Counts)> = rows
        .into_iter()
        .filter(|(_, counts)| !counts.is_zero())
        .collect();
    rows.sort_unstable_by_key(|(key, _)| *key);
    rows.into_iter()
        .map(|(key, counts)| TruthRow {
            granularity: key.granularity.as_str().to_owned(),
            window_start: format_rfc3339_ms(key.window_start_ms, 0).to_string(),
            window_start_ms: key.window_start_ms,
            window_end_ms: key.granularity.window(key.window_start_ms).end_ms,
            channel: key.dims.channel.to_owned(),
            campaign: key.dims.campaign.to_owned(),
            device: key.dims.device.to_owned(),
            region: key.dims.region.to_owned(),
            events: EventType::ALL
                .into_iter()
                .filter(|&event_type| counts.events[event_type as usize] > 0)
                .map(|event_type| {
                    let count = counts.events[event_type as usize];
                    (event_type.as_str().to_owned(), count)
                })
                .collect(),
            sessions: counts.sessions,
            converting_sessions: counts.converting_sessions,
            conversions: counts.conversions,
            revenue_micros: counts.revenue_micros,
            flagged: counts.flagged,
            duplicates: counts.duplicates,
            late: counts.late,
            refunds: counts.refunds,
            refunded_micros: counts.refunded_micros,
        })
        .collect()
}

fn into_spend_rows(rows: HashMap<(Granularity, i64, &str, &str), i64>) -> Vec<TruthSpendRow> {
    // A row with records that sum to zero stays: its spend is 0, not unknown.
    let mut rows: Vec<_> = rows.into_iter().collect();
    rows.sort_unstable_by_key(|&(key, _)| key);
    rows.into_iter()
        .map(
            |((granularity, window_start_ms, channel, campaign), spend_micros)| TruthSpendRow {
                granularity: granularity.as_str().to_owned(),
                window_start: format_rfc3339_ms(window_start_ms, 0).to_string(),
                window_start_ms,
                window_end_ms: granularity.window(window_start_ms).end_ms,
                channel: channel.to_owned(),
                campaign: campaign.to_owned(),
                spend_micros,
            },
        )
        .collect()
}

/// The reporting currency is EUR; an absent currency means it.
fn is_euro(currency: Option<&str>) -> bool {
    currency.is_none_or(|code| code.trim().eq_ignore_ascii_case("EUR"))
}

/// Euros to integer micro-euros, rounded once.
fn to_micros(euros: f64) -> i64 {
    (euros * 1e6).round() as i64
}
