//! The generator: sessions and spend in event time, delivered in arrival order.
//!
//! Sessions start as a Poisson process in event time. Each one is planned whole (see
//! `session`), then every event is given an arrival time: its event time plus a jitter of up to
//! `max_disorder_ms`, or 1–10 minutes for the late ones; some are sent a second time (exact
//! retry or double-fire), and some purchases again for the same order (a reloaded thank-you
//! page, the shop's webhook). Arrivals wait in a min-heap until nothing not yet generated could
//! arrive earlier; since every future record has an event time, and so an arrival time, at or
//! after the next session start, that instant is the release frontier. The buffer (a timing
//! wheel, `arrival_queue`: a heap's sifting was two thirds of generating at 100,000 events/s)
//! thus holds
//! what arrives within the next few minutes of event time (a session's later steps, plus the
//! rare late events, up to ten minutes), whatever the total length of the run: about a
//! thousand records at 120 sessions per minute, growing in proportion to the rate.
//!
//! Four independent random streams drive sessions, delivery (delays, duplicates), spend and
//! order re-sends, so changing `duplicate_share`, `late_share`, `max_disorder_ms`,
//! `order_resend_share` or `spend` leaves the logical
//! events — their ids, times and values — exactly as they were. A test can therefore compare
//! a clean run with a messy one and expect the same KPIs.

use crate::arrival_queue::ArrivalQueue;
use crate::catalog::{CampaignSpec, paid_campaigns};
use crate::config::{ConfigError, SynthConfig};
use crate::demo::{self, DemoShape};
use crate::population::Population;
use crate::record::{
    Channel, EventType, SynthEvent, SynthRecord, SynthSpend, Timestamp, TsFormat, UdidStyle,
};
use crate::rhythm::{self, LocalTime, MAX_INTENSITY};
use crate::rng::{Rng, SplitMix64, mix64};
use crate::session::{DemoSession, Ids, PlannedEvent, SessionStart, plan_session};

/// What a record is, in the generator's ground truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArrivalKind {
    /// The first sending of a logical event.
    Original,
    /// The same event sent again: identical JSON, same `event_id`, 0.1–5 s after the original
    /// arrived. The contract counts it as an exact duplicate.
    ExactRetry,
    /// The tag fired twice: same user and type, a new `event_id`, `ts` 1–99 ms after the
    /// original's. The contract counts it as a near duplicate.
    DoubleFire,
    /// A purchase sent again for the same order: a new `event_id`, the same `order_id`, `ts`
    /// seconds to minutes after the original's (a reloaded thank-you page, or the shop's
    /// webhook under another user id). The contract counts it as a same-order duplicate.
    OrderResend,
    /// A refund of an earlier purchase's order (`SynthConfig::refund_share`): the shop's
    /// webhook, minutes to days after the order. Its own `event_id`; a retry of it is an
    /// `ExactRetry`.
    Refund,
    /// An ad spend record.
    Spend,
}

/// Facts about an arrival that its JSON does not say, for tests and summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroundTruth {
    pub kind: ArrivalKind,
    /// The original was delayed 1–10 minutes (copies of it inherit the flag, as they follow it).
    pub late: bool,
    /// A checkout or purchase less than 5 s after a registration of the same user: the contract
    /// flags it `fast_checkout` and keeps it out of conversions and revenue.
    pub fast_checkout: bool,
    /// The generated session the event belongs to, numbered from 0 in start order; `None` for
    /// spend. A sessionizer following EVENTS.md must find exactly these sessions.
    pub session: Option<u64>,
    /// The channel of the event's own fields, as the server must derive it: its `channel`;
    /// else, when it carries its session's landing `utm_*`, click ids or referrer, the channel
    /// its session came from; else `direct` (under realistic tagging, every event after the
    /// landing, and typed-in visits). For spend, its channel.
    pub channel: Option<Channel>,
}

/// One record as it reaches the server.
#[derive(Debug, Clone, PartialEq)]
pub struct Arrival {
    /// When the record reaches the server, epoch ms. Non-decreasing along the iterator.
    pub arrival_ms: i64,
    pub record: SynthRecord,
    pub truth: GroundTruth,
}

/// Counters of what the iterator has yielded so far (except `sessions_*`, counted when a
/// session is planned, which is before its events are yielded).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SynthStats {
    /// Every record yielded.
    pub records: u64,
    /// Original (logical) events yielded, duplicates excluded.
    pub events: u64,
    /// Original events by type, indexed by `EventType as usize`; see [`SynthStats::events_of`].
    pub events_by_type: [u64; 6],
    pub exact_duplicates: u64,
    pub near_duplicates: u64,
    /// Purchases re-sent for an order already sent.
    pub order_duplicates: u64,
    /// Refunds (originals, not their retries), and the money they ask, in euro cents.
    pub refunds: u64,
    pub refund_cents: u64,
    /// Original events delayed 1–10 minutes.
    pub late_events: u64,
    /// Original checkouts and purchases flagged `fast_checkout`.
    pub fast_checkout_events: u64,
    /// Original purchases not flagged: the contract's conversions.
    pub clean_purchases: u64,
    /// Sum of their values, in euro cents.
    pub clean_revenue_cents: u64,
    pub spend_records: u64,
    pub spend_cents: u64,
    pub sessions_started: u64,
    /// Session starts dropped because every user drawn was still inside their previous session
    /// (only with a population far too small for the rate).
    pub sessions_skipped: u64,
    /// Sessions delivered whole after more than the allowed lateness.
    pub late_sessions: u64,
}

impl SynthStats {
    pub fn events_of(&self, event_type: EventType) -> u64 {
        self.events_by_type[event_type as usize]
    }

    /// Exact retries, double-fires and order re-sends.
    pub fn duplicates(&self) -> u64 {
        self.exact_duplicates + self.near_duplicates + self.order_duplicates
    }
}

/// The reorder buffer's wheel spans 2^20 ms (17.5 minutes): a session's steps and late events
/// fall within it; refunds and sessions delivered half an hour late wait in its far heap.
const PENDING_SPAN_BITS: u32 = 20;

/// The synthetic traffic source: an endless iterator of [`Arrival`]s in arrival order.
#[derive(Debug)]
pub struct Generator {
    config: SynthConfig,
    session_rng: Rng,
    delivery_rng: Rng,
    spend_rng: Rng,
    /// Decides order re-sends; its own stream, so that the share leaves everything else as is.
    order_rng: Rng,
    /// Decides refunds; its own stream, likewise.
    refund_rng: Rng,
    population: Population,
    ids: Ids,
    /// Event time of the next session start, in microseconds so that high rates do not round
    /// every gap to the same millisecond.
    next_session_us: i64,
    mean_session_gap_us: f64,
    next_spend_minute_ms: i64,
    /// Slots by arrival, equal arrivals in generation order; a slot points into `slots`, so
    /// the queue moves ids instead of whole records.
    pending: ArrivalQueue,
    slots: Vec<Option<Arrival>>,
    free_slots: Vec<u32>,
    /// Reused buffer for one session's plan.
    plan: Vec<PlannedEvent>,
    stats: SynthStats,
    /// The demo's state, when the config has a demo shape.
    demo: Option<DemoState>,
}

/// What the demo shape needs while generating: the thinning stream and the cost of the
/// current spend period, per spending campaign.
#[derive(Debug)]
struct DemoState {
    shape: DemoShape,
    /// Decides which candidate session starts the rhythm keeps; its own stream.
    rhythm_rng: Rng,
    /// `demo::spend_campaigns()`, in order.
    campaigns: Vec<&'static CampaignSpec>,
    /// Cost accrued in the current spend period, in hundredths of a cent, per campaign.
    cost: Vec<u64>,
}

impl Generator {
    /// Validates `config` and prepares the first session; nothing is generated until iterated.
    pub fn new(config: SynthConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut seeds = SplitMix64::new(mix64(config.seed));
        let start_minute_ms = config.start_ms.div_euclid(60_000) * 60_000;
        let session_rng = Rng::seeded(seeds.next_u64());
        let delivery_rng = Rng::seeded(seeds.next_u64());
        let spend_rng = Rng::seeded(seeds.next_u64());
        let order_rng = Rng::seeded(seeds.next_u64());
        let demo = config.demo.map(|shape| {
            let campaigns = demo::spend_campaigns();
            DemoState {
                rhythm_rng: Rng::seeded(seeds.next_u64()),
                cost: vec![0; campaigns.len()],
                campaigns,
                shape,
            }
        });
        // Drawn after every older stream, so that each of those keeps its seed.
        let refund_rng = Rng::seeded(seeds.next_u64());
        let (population, ids, candidate_rate) = match &demo {
            None => (
                Population::new(config.seed, config.users),
                Ids::new(config.seed),
                config.sessions_per_minute,
            ),
            Some(state) => (
                Population::with_shape(state.shape.population_seed, config.users, true),
                // Order numbers from the start minute: distinct for history, live and every
                // restart of live (fewer than 100 000 orders per minute of event time).
                Ids::with_order_base(
                    config.seed,
                    start_minute_ms.div_euclid(60_000).max(0) as u64 * 100_000,
                ),
                if state.shape.rhythm {
                    config.sessions_per_minute * MAX_INTENSITY
                } else {
                    config.sessions_per_minute
                },
            ),
        };
        Ok(Self {
            session_rng,
            delivery_rng,
            spend_rng,
            order_rng,
            refund_rng,
            population,
            ids,
            next_session_us: config.start_ms.saturating_mul(1_000),
            mean_session_gap_us: 60_000_000.0 / candidate_rate,
            next_spend_minute_ms: start_minute_ms,
            pending: ArrivalQueue::new(PENDING_SPAN_BITS, config.start_ms),
            slots: Vec::new(),
            free_slots: Vec::new(),
            plan: Vec::new(),
            stats: SynthStats::default(),
            demo,
            config,
        })
    }

    pub fn config(&self) -> &SynthConfig {
        &self.config
    }

    /// What has been yielded so far.
    pub fn stats(&self) -> SynthStats {
        self.stats
    }

    /// Records generated but not yet yielded (the reorder buffer's size).
    pub fn buffered(&self) -> usize {
        self.pending.len()
    }

    /// The next record to arrive. Never ends.
    pub fn next_arrival(&mut self) -> Arrival {
        loop {
            // Nothing generated from now on can arrive before this instant.
            let frontier_ms = self.next_session_us.div_euclid(1_000);
            if let Some(every) = self.demo.as_ref().map(|d| d.shape.spend_every_ms) {
                // A period is billed once it is over: its clicks are all known.
                while self.config.spend && self.next_spend_minute_ms + every <= frontier_ms {
                    self.schedule_demo_spend(every);
                }
            } else if self.config.spend {
                while self.next_spend_minute_ms <= frontier_ms {
                    self.schedule_spend_minute();
                }
            }
            let releasable = self.pending.peek().filter(|&at_ms| at_ms <= frontier_ms);
            if let Some((_, slot)) = releasable.and_then(|_| self.pending.pop()) {
                self.free_slots.push(slot);
                if let Some(arrival) = self.slots[slot as usize].take() {
                    self.count(&arrival);
                    return arrival;
                }
                continue;
            }
            if self.keeps_candidate(frontier_ms) {
                self.start_session(frontier_ms);
            }
            let gap = self.mean_session_gap_us * self.session_rng.exponential();
            self.next_session_us = self.next_session_us.saturating_add(gap.round() as i64);
        }
    }

    /// Thinning: with a demo rhythm, a candidate start is kept with probability
    /// `intensity / MAX_INTENSITY`.
    fn keeps_candidate(&mut self, start_ms: i64) -> bool {
        match &mut self.demo {
            Some(state) if state.shape.rhythm => {
                let intensity = rhythm::intensity(start_ms, state.shape.promotion_day)
                    .max(state.shape.rhythm_floor.min(MAX_INTENSITY));
                let keep = intensity / MAX_INTENSITY;
                state.rhythm_rng.chance(keep)
            }
            _ => true,
        }
    }

    fn start_session(&mut self, start_ms: i64) {
        let Some(user) = self.population.pick_user(&mut self.session_rng, start_ms) else {
            self.stats.sessions_skipped += 1;
            return;
        };
        let profile = self.population.profile(user);
        let start = SessionStart {
            user: &profile,
            new_user: self.population.is_new(user),
            registered: self.population.is_registered(user),
            start_ms,
            fast_checkout_share: self.config.fast_checkout_share,
            tagging: self.config.tagging,
            demo: self.demo.as_ref().map(|state| DemoSession {
                promotion: state.shape.promotion_day == Some(LocalTime::of(start_ms).day),
                drift_level: demo::drift_level(state.shape.drift_from_ms, start_ms),
            }),
        };
        let mut plan = std::mem::take(&mut self.plan);
        plan.clear();
        let outcome = plan_session(&mut self.session_rng, &mut self.ids, &start, &mut plan);
        if let (Some(state), Some(campaign)) = (&mut self.demo, outcome.campaign) {
            accrue_cost(state, campaign, start_ms, &plan);
        }
        self.population
            .record_session(user, outcome.last_event_ms, outcome.registered);
        let session = self.stats.sessions_started;
        self.stats.sessions_started += 1;
        let session_delay_ms = if self.delivery_rng.chance(self.config.late_session_share) {
            self.stats.late_sessions += 1;
            self.delivery_rng.range_i64(16 * 60_000, 40 * 60_000)
        } else {
            0
        };
        for planned in plan.drain(..) {
            self.deliver(planned, session, outcome.channel, session_delay_ms);
        }
        self.plan = plan;
    }

    /// Decides when an event arrives and whether it is sent twice.
    fn deliver(
        &mut self,
        planned: PlannedEvent,
        session: u64,
        channel: Channel,
        session_delay_ms: i64,
    ) {
        let rng = &mut self.delivery_rng;
        let ts_ms = planned.event.ts.epoch_ms;
        let late = session_delay_ms > 0 || rng.chance(self.config.late_share);
        let delay_ms = if session_delay_ms > 0 {
            session_delay_ms + rng.range_i64(0, self.config.max_disorder_ms)
        } else if late {
            rng.range_i64(60_000, 600_000)
        } else {
            rng.range_i64(0, self.config.max_disorder_ms)
        };
        let arrival_ms = ts_ms + delay_ms;
        let truth = GroundTruth {
            kind: ArrivalKind::Original,
            late,
            fast_checkout: planned.fast_checkout,
            session: Some(session),
            channel: Some(own_channel(&planned.event, channel)),
        };
        if rng.chance(self.config.duplicate_share) {
            if rng.chance(0.5) {
                let retry_ms = arrival_ms + rng.range_i64(100, 5_000);
                let kind = ArrivalKind::ExactRetry;
                self.enqueue(
                    retry_ms,
                    SynthRecord::Event(planned.event.clone()),
                    GroundTruth { kind, ..truth },
                );
            } else {
                let offset_ms = rng.range_i64(1, 99);
                let fire_ms = arrival_ms + offset_ms + rng.range_i64(0, 50);
                let mut copy = planned.event.clone();
                copy.ts.epoch_ms = ts_ms + offset_ms;
                copy.event_id = self.ids.double_fire();
                let kind = ArrivalKind::DoubleFire;
                self.enqueue(
                    fire_ms,
                    SynthRecord::Event(copy),
                    GroundTruth { kind, ..truth },
                );
            }
        }
        if planned.event.order_id.is_some() {
            self.resend_order(&planned.event, arrival_ms, truth, channel);
            self.refund_order(&planned.event);
        }
        self.enqueue(arrival_ms, SynthRecord::Event(planned.event), truth);
    }

    /// Maybe sends a purchase again for the same order, after the original (in event time and
    /// in arrival, so the original is the one the contract keeps).
    fn resend_order(
        &mut self,
        original: &SynthEvent,
        arrival_ms: i64,
        truth: GroundTruth,
        session_channel: Channel,
    ) {
        let rng = &mut self.order_rng;
        if !rng.chance(self.config.order_resend_share) {
            return;
        }
        let mut copy = original.clone();
        copy.event_id = self.ids.double_fire();
        let after_ms = if rng.chance(0.5) {
            // The thank-you page reloaded: the same browser event, seconds later.
            rng.range_i64(2_000, 60_000)
        } else {
            // The shop's webhook: server side, no browser, no tags, and the customer under the
            // shop's id for them (another udid: any user's order counts).
            copy.udid.style = match copy.udid.style {
                UdidStyle::Cookie => UdidStyle::AppInstall,
                UdidStyle::AppInstall => UdidStyle::Cookie,
                UdidStyle::Crm => UdidStyle::Crm,
            };
            copy.user_agent = None;
            copy.ip = None;
            copy.page = None;
            copy.referrer = None;
            copy.channel = None;
            copy.campaign = None;
            copy.utm_source = None;
            copy.utm_medium = None;
            copy.utm_campaign = None;
            copy.gclid = None;
            copy.fbclid = None;
            copy.italian_field_names = false;
            copy.ts.format = TsFormat::EpochMillis;
            rng.range_i64(5_000, 600_000)
        };
        copy.ts.epoch_ms += after_ms;
        let resent_ms = arrival_ms + after_ms + rng.range_i64(0, 3_000);
        let truth = GroundTruth {
            kind: ArrivalKind::OrderResend,
            channel: Some(own_channel(&copy, session_channel)),
            ..truth
        };
        self.enqueue(resent_ms, SynthRecord::Event(copy), truth);
    }

    /// Maybe refunds an order, as the shop's `refunds/create` webhook would: no browser, no
    /// attribution, the order's `order_id`, minutes (40 %), hours (40 %) or days (20 %) after
    /// the order; a second partial refund within the hour after the first for three orders
    /// in ten; one refund in twenty asks more than the order's value; one in ten is
    /// delivered twice (the same refund id).
    fn refund_order(&mut self, order: &SynthEvent) {
        let rng = &mut self.refund_rng;
        if !rng.chance(self.config.refund_share) {
            return;
        }
        let (Some(order_id), Some(value)) = (order.order_id, order.value) else {
            return;
        };
        let value_cents = eur_to_cents(value);
        let refunds = if rng.chance(0.3) { 2 } else { 1 };
        let mut after_ms = match rng.range_u64(0, 10) {
            0..=3 => rng.range_i64(60_000, 1_800_000),
            4..=7 => rng.range_i64(3_600_000, 6 * 3_600_000),
            _ => rng.range_i64(86_400_000, 10 * 86_400_000),
        };
        for n in 0..refunds {
            let rng = &mut self.refund_rng;
            let cents = if rng.chance(0.05) {
                value_cents + rng.range_u64(1, 2_000)
            } else if refunds == 1 && rng.chance(0.5) {
                value_cents
            } else {
                value_cents * rng.range_u64(10, 60) / 100
            };
            let refund = SynthEvent {
                event_type: EventType::Refund,
                event_id: self.ids.refund(order_id, n),
                value: Some(cents as f64 / 100.0),
                ts: Timestamp {
                    epoch_ms: order.ts.epoch_ms + after_ms,
                    format: TsFormat::Rfc3339Utc,
                },
                user_agent: None,
                ip: None,
                region: None,
                page: None,
                referrer: None,
                channel: None,
                campaign: None,
                utm_source: None,
                utm_medium: None,
                utm_campaign: None,
                gclid: None,
                fbclid: None,
                consent: None,
                properties: None,
                ..order.clone()
            };
            let rng = &mut self.refund_rng;
            let arrival_ms = refund.ts.epoch_ms + rng.range_i64(0, self.config.max_disorder_ms);
            let retry_ms = rng
                .chance(0.1)
                .then(|| arrival_ms + rng.range_i64(100, 5_000));
            after_ms += rng.range_i64(60_000, 3_600_000);
            let truth = GroundTruth {
                kind: ArrivalKind::Refund,
                late: false,
                fast_checkout: false,
                session: None,
                channel: Some(Channel::Direct),
            };
            if let Some(retry_ms) = retry_ms {
                let kind = ArrivalKind::ExactRetry;
                self.enqueue(
                    retry_ms,
                    SynthRecord::Event(refund.clone()),
                    GroundTruth { kind, ..truth },
                );
            }
            self.enqueue(arrival_ms, SynthRecord::Event(refund), truth);
        }
    }

    /// One spend record per paid campaign for the minute `next_spend_minute_ms`, reported a few
    /// seconds after the minute ends.
    fn schedule_spend_minute(&mut self) {
        let minute_ms = self.next_spend_minute_ms;
        self.next_spend_minute_ms += 60_000;
        for campaign in paid_campaigns() {
            let rng = &mut self.spend_rng;
            let cents =
                (campaign.spend_cents_per_minute * rng.range_u64(60, 140) / 100).clamp(5, 300);
            let format = if rng.chance(0.1) {
                TsFormat::EpochMillis
            } else {
                TsFormat::Rfc3339Utc
            };
            let arrival_ms = minute_ms + 60_000 + rng.range_i64(1_000, 15_000);
            let spend = SynthSpend {
                ts: Timestamp {
                    epoch_ms: minute_ms,
                    format,
                },
                channel: campaign.channel,
                campaign: campaign.name,
                amount: cents as f64 / 100.0,
                currency: "EUR",
                source: campaign.spend_source,
            };
            let truth = GroundTruth {
                kind: ArrivalKind::Spend,
                late: false,
                fast_checkout: false,
                session: None,
                channel: Some(campaign.channel),
            };
            self.enqueue(arrival_ms, SynthRecord::Spend(spend), truth);
        }
    }

    /// The demo's spend for the period starting at `next_spend_minute_ms`: per spending
    /// campaign, its clicks at their cost per click (or the affiliate commission), ±15%,
    /// reported a few seconds after the period ends. The promotion's campaign reports only
    /// on its day.
    fn schedule_demo_spend(&mut self, every_ms: i64) {
        let period_ms = self.next_spend_minute_ms;
        self.next_spend_minute_ms += every_ms;
        let Some(state) = self.demo.as_mut() else {
            return;
        };
        let promotion_day = state.shape.promotion_day;
        let mut records = Vec::with_capacity(state.campaigns.len());
        for (campaign, cost) in state.campaigns.iter().zip(state.cost.iter_mut()) {
            let accrued = std::mem::take(cost);
            if campaign.name == demo::PROMOTION_CAMPAIGN
                && promotion_day != Some(LocalTime::of(period_ms).day)
                && accrued == 0
            {
                continue;
            }
            let rng = &mut self.spend_rng;
            // Hundredths of a cent → cents, with the platform's ±15% (bid changes, rounding
            // of reports).
            let cents = (accrued * rng.range_u64(85, 115)).div_ceil(10_000);
            let format = if rng.chance(0.1) {
                TsFormat::EpochMillis
            } else {
                TsFormat::Rfc3339Utc
            };
            let arrival_ms = period_ms + every_ms + rng.range_i64(1_000, 15_000);
            records.push((
                arrival_ms,
                SynthSpend {
                    ts: Timestamp {
                        epoch_ms: period_ms,
                        format,
                    },
                    channel: campaign.channel,
                    campaign: campaign.name,
                    amount: cents as f64 / 100.0,
                    currency: "EUR",
                    source: campaign.spend_source,
                },
            ));
        }
        for (arrival_ms, spend) in records {
            let truth = GroundTruth {
                kind: ArrivalKind::Spend,
                late: false,
                fast_checkout: false,
                session: None,
                channel: Some(spend.channel),
            };
            self.enqueue(arrival_ms, SynthRecord::Spend(spend), truth);
        }
    }

    fn enqueue(&mut self, arrival_ms: i64, record: SynthRecord, truth: GroundTruth) {
        let arrival = Arrival {
            arrival_ms,
            record,
            truth,
        };
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(arrival);
                slot
            }
            None => {
                self.slots.push(Some(arrival));
                (self.slots.len() - 1) as u32
            }
        };
        self.pending.push(arrival_ms, slot);
    }

    fn count(&mut self, arrival: &Arrival) {
        let stats = &mut self.stats;
        stats.records += 1;
        match (arrival.truth.kind, &arrival.record) {
            (ArrivalKind::Original, SynthRecord::Event(event)) => {
                stats.events += 1;
                stats.events_by_type[event.event_type as usize] += 1;
                stats.late_events += u64::from(arrival.truth.late);
                if arrival.truth.fast_checkout {
                    stats.fast_checkout_events += 1;
                } else if event.event_type == EventType::Purchase {
                    stats.clean_purchases += 1;
                    stats.clean_revenue_cents += eur_to_cents(event.value.unwrap_or(0.0));
                }
            }
            (ArrivalKind::ExactRetry, _) => stats.exact_duplicates += 1,
            (ArrivalKind::DoubleFire, _) => stats.near_duplicates += 1,
            (ArrivalKind::OrderResend, _) => stats.order_duplicates += 1,
            (ArrivalKind::Refund, record) => {
                stats.refunds += 1;
                if let SynthRecord::Event(event) = record {
                    stats.refund_cents += eur_to_cents(event.value.unwrap_or(0.0));
                }
            }
            (ArrivalKind::Spend, SynthRecord::Spend(spend)) => {
                stats.spend_records += 1;
                stats.spend_cents += eur_to_cents(spend.amount);
            }
            // The generator never pairs these kinds with the other record type.
            (ArrivalKind::Original, SynthRecord::Spend(_))
            | (ArrivalKind::Spend, SynthRecord::Event(_)) => {}
        }
    }
}

/// Adds what a demo session landing from `campaign` costs: its click (at the drifted price for
/// the drifting campaign), or the affiliate's commission on its clean orders.
fn accrue_cost(
    state: &mut DemoState,
    campaign: &'static CampaignSpec,
    start_ms: i64,
    plan: &[PlannedEvent],
) {
    let Some(index) = state
        .campaigns
        .iter()
        .position(|c| std::ptr::eq(*c, campaign))
    else {
        return;
    };
    let hundredths = if campaign.channel == Channel::Affiliate {
        let revenue_cents: u64 = plan
            .iter()
            .filter(|p| p.event.event_type == EventType::Purchase && !p.fast_checkout)
            .map(|p| eur_to_cents(p.event.value.unwrap_or(0.0)))
            .sum();
        revenue_cents * demo::AFFILIATE_COMMISSION_PERCENT
    } else {
        let mut factor = 1.0;
        if demo::is_drifting(campaign) {
            let level = demo::drift_level(state.shape.drift_from_ms, start_ms);
            factor += (demo::DRIFT_CPC_FACTOR - 1.0) * level;
        }
        (demo::cost_per_click_cents(campaign) as f64 * 100.0 * factor).round() as u64
    };
    if let Some(cost) = state.cost.get_mut(index) {
        *cost = cost.saturating_add(hundredths);
    }
}

/// The channel an event's own fields say (see `GroundTruth::channel`); the generator chose
/// its session's landing hints so that the default channel grouping finds `session_channel`.
fn own_channel(event: &SynthEvent, session_channel: Channel) -> Channel {
    let carries_landing_hints = event.utm_source.is_some()
        || event.utm_medium.is_some()
        || event.gclid.is_some()
        || event.fbclid.is_some()
        || event.referrer.is_some();
    match event.channel {
        Some(channel) => channel,
        None if carries_landing_hints => session_channel,
        None => Channel::Direct,
    }
}

/// Back to cents: the values were built from whole cents, so rounding recovers them exactly.
fn eur_to_cents(eur: f64) -> u64 {
    (eur * 100.0).round() as u64
}

impl Iterator for Generator {
    type Item = Arrival;

    fn next(&mut self) -> Option<Arrival> {
        Some(self.next_arrival())
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::MAX, None)
    }
}
