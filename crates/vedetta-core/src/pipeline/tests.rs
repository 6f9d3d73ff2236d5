//! Single-stage tests of the pipeline: hand-computed scenarios for every rule of
//! `docs/semantics.md`, and properties over arrival orders.

#![allow(clippy::unwrap_used, clippy::expect_used)]
// Scenarios build records inline and hand them over; borrowing would only add noise.
#![allow(clippy::needless_pass_by_value)]

use super::*;
use crate::record::UserPseudonym;
use crate::time::EventTime;
use kpi::KpiCounters;
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap};

const T0: i64 = 1_712_318_400_000; // 2024-04-05T12:00:00Z (14:00 in Rome)
const MIN: i64 = 60_000;
const SEC: i64 = 1_000;

/// Final KPIs by (granularity, window start, channel, campaign, device, region).
type Kpis = BTreeMap<(Granularity, i64, String, String, String, String), KpiCounters>;
type Spend = BTreeMap<(Granularity, i64, String, String), i128>;

struct Run {
    pipeline: Pipeline,
    kpis: Kpis,
    spend: Spend,
    offset: u64,
    /// When set, plays the processor's store for attribution memories: dormant memories
    /// are moved here every `every` records and recalled from here, as the processor does
    /// at snapshots and before batches.
    store: Option<(HashMap<UserPseudonym, attribution::Memories>, u64)>,
}

impl Run {
    fn new() -> Self {
        Self::with(PipelineConfig::default())
    }

    fn with(config: PipelineConfig) -> Self {
        Self {
            pipeline: Pipeline::new(config, None),
            kpis: Kpis::new(),
            spend: Spend::new(),
            offset: 0,
            store: None,
        }
    }

    /// Memories go to a store every `every` records (a snapshot's cadence).
    fn with_store(mut self, every: u64) -> Self {
        self.store = Some((HashMap::new(), every.max(1)));
        self
    }

    fn feed(&mut self, record: LogRecord) {
        if let (Some((store, _)), LogRecord::Event(e)) = (&self.store, &record)
            && self.pipeline.needs_recall(&e.user)
        {
            let found = store.get(&e.user).map(|m| (e.user, m.clone()));
            self.pipeline.recall_memories(found);
        }
        self.pipeline.process(self.offset, &record);
        if let Some((store, every)) = &mut self.store
            && self.offset.is_multiple_of(*every)
        {
            store.extend(self.pipeline.take_dormant());
            if let Some(before) = self.pipeline.memory_horizon() {
                store.retain(|_, m| m.latest.start >= before);
            }
        }
        self.offset += 1;
        self.drain();
    }

    fn drain(&mut self) {
        let deltas = self.pipeline.take_deltas();
        for (key, change) in deltas.rows {
            let d = self.pipeline.dims(key.dims).unwrap().clone();
            let row = self
                .kpis
                .entry((
                    key.granularity,
                    key.window_start,
                    d.channel,
                    d.campaign,
                    d.device,
                    d.region,
                ))
                .or_default();
            row.add(&change);
        }
        for (key, change) in deltas.spend_micros {
            let d = self.pipeline.dims(key.channel_campaign).unwrap().clone();
            *self
                .spend
                .entry((key.granularity, key.window_start, d.channel, d.campaign))
                .or_default() += change.micros;
        }
        self.kpis.retain(|_, c| !c.is_zero());
        self.spend.retain(|_, m| *m != 0);
    }

    /// Sum of one counter over all rows of a granularity.
    fn total<T: std::iter::Sum<T>>(
        &self,
        granularity: Granularity,
        counter: impl Fn(&KpiCounters) -> T,
    ) -> T {
        self.kpis
            .iter()
            .filter(|(k, _)| k.0 == granularity)
            .map(|(_, c)| counter(c))
            .sum()
    }

    fn rows(&self, granularity: Granularity) -> Vec<(i64, String, KpiCounters)> {
        self.kpis
            .iter()
            .filter(|(k, _)| k.0 == granularity)
            .map(|(k, c)| (k.1, k.2.clone(), c.clone()))
            .collect()
    }
}

fn user(n: u8) -> UserPseudonym {
    UserPseudonym([n; 16])
}

fn event(user_n: u8, kind: EventKind, ts: i64) -> StoredEvent {
    StoredEvent {
        channel: Some("social".into()),
        campaign: Some("saldi".into()),
        device: Some("mobile".into()),
        region: Some("Lombardia".into()),
        ..StoredEvent::bare(user(user_n), kind, EventTime(ts))
    }
}

fn with_id(mut e: StoredEvent, id: &str) -> StoredEvent {
    e.event_id = Some(id.into());
    e
}

fn purchase(user_n: u8, ts: i64, value: f64) -> StoredEvent {
    let mut e = event(user_n, EventKind::Purchase, ts);
    e.value = Some(value);
    e
}

fn on_channel(mut e: StoredEvent, channel: &str) -> StoredEvent {
    e.channel = Some(channel.into());
    e
}

use Granularity::{Day, Hour, Minute};

#[test]
fn a_simple_funnel_counts_everything_once_at_every_granularity() {
    let mut run = Run::new();
    run.feed(LogRecord::Event(event(1, EventKind::PageView, T0)));
    run.feed(LogRecord::Event(event(
        1,
        EventKind::AddToCart,
        T0 + 10 * SEC,
    )));
    run.feed(LogRecord::Event(purchase(1, T0 + 30 * SEC, 49.9)));
    for g in Granularity::ALL {
        let rows = run.rows(g);
        assert_eq!(rows.len(), 1, "{g:?}");
        let c = &rows[0].2;
        assert_eq!(c.events, [1, 1, 0, 0, 1, 0]);
        assert_eq!(
            (
                c.sessions,
                c.converting_sessions,
                c.conversions,
                c.revenue_micros
            ),
            (1, 1, 1, 49_900_000)
        );
        assert_eq!(rows[0].1, "social");
    }
    let day = &run.rows(Day)[0];
    assert_eq!(
        day.0, 1_712_268_000_000,
        "Rome midnight of 5 April (22:00 UTC on the 4th)"
    );
}

#[test]
fn exact_retries_are_duplicates_not_events() {
    let mut run = Run::new();
    let e = with_id(event(1, EventKind::PageView, T0), "e-1");
    run.feed(LogRecord::Event(e.clone()));
    run.feed(LogRecord::Event(e.clone()));
    // Same id from another user, far in event time (beyond 24 h): a new event.
    let mut later = e;
    later.ts = EventTime(T0 + 25 * 3_600_000);
    run.feed(LogRecord::Event(later));
    assert_eq!(run.total(Minute, |c| c.events[0]), 2);
    assert_eq!(run.total(Minute, |c| c.duplicates), 1);
    assert_eq!(run.pipeline.counters().exact_duplicates, 1);
}

#[test]
fn near_duplicates_are_less_than_100_ms_apart_same_user_same_type() {
    let mut run = Run::new();
    run.feed(LogRecord::Event(event(1, EventKind::PageView, T0)));
    run.feed(LogRecord::Event(event(1, EventKind::PageView, T0 + 99))); // dup
    run.feed(LogRecord::Event(event(1, EventKind::PageView, T0 - 99))); // dup, earlier
    run.feed(LogRecord::Event(event(1, EventKind::PageView, T0 + 100))); // not
    run.feed(LogRecord::Event(event(1, EventKind::AddToCart, T0 + 1))); // other type
    run.feed(LogRecord::Event(event(2, EventKind::PageView, T0 + 1))); // other user
    assert_eq!(run.total(Minute, |c| c.events.iter().sum::<i64>()), 4);
    assert_eq!(run.total(Minute, |c| c.duplicates), 2);
    assert_eq!(run.pipeline.counters().near_duplicates, 2);
}

#[test]
fn a_registration_arriving_after_its_purchase_still_flags_it() {
    let mut run = Run::new();
    run.feed(LogRecord::Event(event(1, EventKind::PageView, T0)));
    run.feed(LogRecord::Event(purchase(1, T0 + 4 * SEC, 20.0)));
    assert_eq!(run.total(Minute, |c| c.conversions), 1);
    assert_eq!(run.total(Minute, |c| c.converting_sessions), 1);
    // The registration happened 3.9 s before the purchase, but arrives now.
    run.feed(LogRecord::Event(event(
        1,
        EventKind::Registration,
        T0 + 100,
    )));
    for g in Granularity::ALL {
        assert_eq!(run.total(g, |c| c.conversions), 0, "{g:?}");
        assert_eq!(run.total(g, |c| c.revenue_micros), 0);
        assert_eq!(run.total(g, |c| c.flagged), 1);
        assert_eq!(run.total(g, |c| c.converting_sessions), 0);
        assert_eq!(run.total(g, |c| c.sessions), 1);
    }
}

#[test]
fn fast_checkout_boundary_is_strictly_less_than_5_s() {
    let mut run = Run::new();
    run.feed(LogRecord::Event(event(1, EventKind::Registration, T0)));
    run.feed(LogRecord::Event(event(1, EventKind::Checkout, T0 + 4_999)));
    run.feed(LogRecord::Event(purchase(1, T0 + 5_000, 10.0)));
    assert_eq!(run.total(Minute, |c| c.flagged), 1, "only the checkout");
    assert_eq!(run.total(Minute, |c| c.conversions), 1);
}

#[test]
fn an_out_of_order_event_bridging_two_sessions_merges_them() {
    let mut run = Run::new();
    run.feed(LogRecord::Event(event(1, EventKind::PageView, T0)));
    run.feed(LogRecord::Event(purchase(1, T0 + 40 * MIN, 5.0)));
    assert_eq!(run.total(Hour, |c| c.sessions), 2);
    run.feed(LogRecord::Event(event(
        1,
        EventKind::PageView,
        T0 + 20 * MIN,
    )));
    for g in Granularity::ALL {
        assert_eq!(run.total(g, |c| c.sessions), 1, "{g:?}");
        assert_eq!(run.total(g, |c| c.converting_sessions), 1);
    }
    // The merged session belongs to the minute of its first event.
    let minute_sessions: Vec<_> = run
        .rows(Minute)
        .into_iter()
        .filter(|r| r.2.sessions != 0)
        .map(|r| r.0)
        .collect();
    assert_eq!(minute_sessions, vec![T0]);
}

#[test]
fn an_earlier_event_moves_the_session_to_its_window_and_channel() {
    let mut run = Run::new();
    run.feed(LogRecord::Event(on_channel(
        event(1, EventKind::PageView, T0 + 2 * MIN),
        "email",
    )));
    run.feed(LogRecord::Event(on_channel(
        event(1, EventKind::PageView, T0 + MIN),
        "paid_search",
    )));
    let sessions: Vec<_> = run
        .rows(Minute)
        .into_iter()
        .filter(|r| r.2.sessions != 0)
        .map(|r| (r.0, r.1, r.2.sessions))
        .collect();
    assert_eq!(sessions, vec![(T0 + MIN, "paid_search".to_string(), 1)]);
    // Events stay with their own channel.
    assert_eq!(run.rows(Minute).len(), 2);
}

#[test]
fn late_events_are_counted_and_marked_late_per_granularity() {
    let mut run = Run::new();
    run.feed(LogRecord::Event(event(1, EventKind::PageView, T0)));
    // Another user's event 20 minutes later moves the watermark past T0's minute + 15 min.
    run.feed(LogRecord::Event(event(
        2,
        EventKind::PageView,
        T0 + 20 * MIN + 10 * SEC,
    )));
    run.feed(LogRecord::Event(event(
        3,
        EventKind::PageView,
        T0 + 30 * SEC,
    )));
    assert_eq!(run.total(Minute, |c| c.late), 1);
    assert_eq!(run.total(Hour, |c| c.late), 0);
    assert_eq!(run.total(Day, |c| c.late), 0);
    assert_eq!(run.total(Minute, |c| c.events[0]), 3);
    assert_eq!(run.pipeline.counters().late, [1, 0, 0]);
}

#[test]
fn within_the_allowed_lateness_nothing_is_late() {
    let mut run = Run::new();
    run.feed(LogRecord::Event(event(
        2,
        EventKind::PageView,
        T0 + 15 * MIN,
    )));
    run.feed(LogRecord::Event(event(
        1,
        EventKind::PageView,
        T0 + 30 * SEC,
    )));
    assert_eq!(run.total(Minute, |c| c.late), 0);
}

#[test]
fn spend_is_joined_by_channel_and_campaign_per_window() {
    let mut run = Run::new();
    for (minute, amount) in [(0, 1.25), (0, 0.75), (1, 2.0)] {
        run.feed(LogRecord::Spend(SpendRecord {
            ts: EventTime(T0 + minute * MIN),
            channel: "Paid_Search".into(),
            campaign: Some("saldi".into()),
            amount,
            currency: None,
            source: None,
        }));
    }
    let key = |g, start| (g, start, "paid_search".to_string(), "saldi".to_string());
    assert_eq!(run.spend[&key(Minute, T0)], 2_000_000);
    assert_eq!(run.spend[&key(Minute, T0 + MIN)], 2_000_000);
    assert_eq!(run.spend[&key(Hour, T0)], 4_000_000);
}

#[test]
fn spend_on_a_non_ascii_channel_joins_its_events() {
    // Events were lower-cased by Unicode's rules and spend by ASCII's: `SOCIETÀ` spend landed
    // on `societÀ` and never met the events of `società`.
    let mut run = Run::new();
    run.feed(LogRecord::Event(on_channel(
        purchase(1, T0, 10.0),
        "SOCIETÀ",
    )));
    run.feed(LogRecord::Spend(SpendRecord {
        ts: EventTime(T0),
        channel: " Società ".into(),
        campaign: None,
        amount: 5.0,
        currency: None,
        source: None,
    }));
    assert_eq!(run.rows(Minute)[0].1, "società");
    let spend_channels: Vec<_> = run.spend.keys().map(|k| k.2.as_str()).collect();
    assert_eq!(spend_channels, ["società"; 3]);
}

#[test]
fn state_is_dropped_once_sessions_are_final_and_memory_stays_bounded() {
    let mut run = Run::new();
    // 200 users, one short session each, then time moves on by an hour and a half.
    for u in 0..200u8 {
        run.feed(LogRecord::Event(with_id(
            event(u, EventKind::PageView, T0 + i64::from(u) * SEC),
            &format!("id-{u}"),
        )));
    }
    assert_eq!(run.pipeline.active_users(), 200);
    for step in 0..200 {
        run.feed(LogRecord::Event(event(
            250,
            EventKind::PageView,
            T0 + 10 * MIN + step * 30 * SEC,
        )));
    }
    assert_eq!(
        run.pipeline.active_users(),
        1,
        "only the still-active user remains"
    );
    // Sessions and counts are unaffected by the eviction.
    assert_eq!(run.total(Day, |c| c.sessions), 201);
}

#[test]
fn a_snapshot_restores_a_pipeline_that_continues_identically() {
    let events: Vec<_> = (0..60)
        .map(|i| {
            let kind = match i % 4 {
                0 => EventKind::Registration,
                1 => EventKind::PageView,
                2 => EventKind::Checkout,
                _ => EventKind::Purchase,
            };
            let mut e = event((i % 7) as u8, kind, T0 + i * 1_700);
            e.value = Some(10.0);
            LogRecord::Event(e)
        })
        .collect();
    let mut straight = Run::new();
    for e in &events {
        straight.feed(e.clone());
    }
    let mut first = Run::new();
    for e in &events[..30] {
        first.feed(e.clone());
    }
    let snapshot = first.pipeline.snapshot();
    assert_eq!(
        first.pipeline.encode_snapshot().unwrap(),
        [
            super::snapshot::header().to_vec(),
            postcard::to_allocvec(&snapshot).unwrap()
        ]
        .concat(),
        "the snapshot encoded in place is the snapshot's encoding"
    );
    assert_eq!(
        first.pipeline.snapshot_copy().encode().unwrap(),
        first.pipeline.encode_snapshot().unwrap(),
        "a copy encoded elsewhere is the snapshot encoded in place"
    );
    let mut streamed = Vec::new();
    first
        .pipeline
        .snapshot_copy()
        .encode_to(&mut streamed)
        .unwrap();
    assert!(
        streamed == first.pipeline.encode_snapshot().unwrap(),
        "a copy written out as it is encoded is the snapshot encoded in place"
    );
    // A copy made into an earlier copy's memory, of a larger state and of a smaller one.
    let reused = straight
        .pipeline
        .snapshot_copy_reusing(Some(first.pipeline.snapshot_copy()));
    assert!(
        reused.encode().unwrap() == straight.pipeline.encode_snapshot().unwrap(),
        "a copy into a smaller copy's memory"
    );
    assert!(
        first
            .pipeline
            .snapshot_copy_reusing(Some(reused))
            .encode()
            .unwrap()
            == first.pipeline.encode_snapshot().unwrap(),
        "a copy into a larger copy's memory"
    );
    let mut resumed = Run {
        pipeline: Pipeline::restore(PipelineConfig::default(), None, snapshot),
        kpis: first.kpis.clone(),
        spend: first.spend.clone(),
        offset: 30,
        store: None,
    };
    for e in &events[30..] {
        resumed.feed(e.clone());
    }
    assert_eq!(resumed.kpis, straight.kpis);
    assert_eq!(resumed.pipeline.counters(), straight.pipeline.counters());
}

/// A small world of events with sessions, flags, conversions, exact duplicates and
/// near-duplicates. Which copy of a near-duplicate pair survives depends on arrival ("the
/// first to arrive wins"), so the pairs are built where the choice cannot matter: only for
/// types no rule looks at, 50 ms apart within one second, on a 7-second grid (so neither
/// the 30-minute session gap nor the 5-second flag window can fall between the copies).
fn world() -> impl Strategy<Value = Vec<StoredEvent>> {
    prop::collection::vec((0u8..4, 0usize..6, 0i64..(90 * 60 / 7), 0u8..3), 1..60).prop_map(
        |specs| {
            let kinds = [
                EventKind::PageView,
                EventKind::AddToCart,
                EventKind::Registration,
                EventKind::Checkout,
                EventKind::Purchase,
                EventKind::Lead,
            ];
            let mut events = Vec::new();
            // Two events of one user at the same instant depend on arrival by definition:
            // of one type they are near-duplicates (the first wins), and a tie in event time
            // is broken by log order when choosing a session's first event.
            let mut seen = std::collections::HashSet::new();
            for (n, (u, k, seconds, extra)) in specs.into_iter().enumerate() {
                if !seen.insert((u, seconds)) {
                    continue;
                }
                let mut e = event(u, kinds[k].clone(), T0 + seconds * 7 * SEC + 200);
                e.value = Some(f64::from(extra) * 7.5 + 0.01);
                e.event_id = Some(format!("e-{n}"));
                if extra == 1 {
                    e.channel = Some("email".into());
                }
                events.push(e.clone());
                if extra == 2 {
                    events.push(e.clone()); // exact retry
                }
                if extra == 2 && matches!(k, 0 | 1 | 5) {
                    let mut near = e;
                    near.event_id = Some(format!("e-{n}-again"));
                    near.ts = EventTime(near.ts.0 + 50); // same minute: +200..+250 ms
                    events.push(near);
                }
            }
            events
        },
    )
}

/// Arrival orders that stay within the allowed lateness: sorted by event time, then each
/// event displaced by up to `max_delay` (less than the lateness).
fn arrival(events: &[StoredEvent], delays: &[i64]) -> Vec<StoredEvent> {
    let mut keyed: Vec<(i64, usize, StoredEvent)> = events
        .iter()
        .enumerate()
        .map(|(i, e)| (e.ts.0 + delays[i % delays.len()], i, e.clone()))
        .collect();
    keyed.sort_by_key(|(at, i, _)| (*at, *i));
    keyed.into_iter().map(|(_, _, e)| e).collect()
}

fn final_kpis(events: &[StoredEvent]) -> (Kpis, PipelineCounters) {
    let mut run = Run::new();
    for e in events {
        run.feed(LogRecord::Event(e.clone()));
    }
    let mut counters = run.pipeline.counters().clone();
    // Which copy of a near-duplicate pair wins depends on order; the count does not.
    counters.truncated_users = 0;
    (run.kpis, counters)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn any_arrival_order_within_the_lateness_gives_the_same_kpis(
        events in world(),
        delays in prop::collection::vec(0i64..(10 * MIN), 1..20),
    ) {
        let in_order = arrival(&events, &[0]);
        let shuffled = arrival(&events, &delays);
        let (expected, _) = final_kpis(&in_order);
        let (actual, counters) = final_kpis(&shuffled);
        prop_assert_eq!(&actual, &expected);
        prop_assert_eq!(counters.late, [0, 0, 0]);
    }

    #[test]
    fn nothing_is_counted_twice(
        events in world(),
        delays in prop::collection::vec(0i64..(10 * MIN), 1..20),
    ) {
        let (kpis, counters) = final_kpis(&arrival(&events, &delays));
        for g in Granularity::ALL {
            let total = |f: fn(&KpiCounters) -> i64| -> i64 {
                kpis.iter().filter(|(k, _)| k.0 == g).map(|(_, c)| f(c)).sum()
            };
            // Every event is either accepted (counted once by type) or a duplicate.
            prop_assert_eq!(
                total(|c| c.events.iter().sum::<i64>()) + total(|c| c.duplicates),
                events.len() as i64
            );
            prop_assert_eq!(total(|c| c.events.iter().sum::<i64>()) as u64, counters.accepted);
            // A session is counted once; converting sessions are a subset.
            prop_assert!(total(|c| c.converting_sessions) <= total(|c| c.sessions));
            prop_assert!(total(|c| c.conversions) <= total(|c| c.events[4]));
            for (_, c) in kpis.iter().filter(|(k, _)| k.0 == g) {
                prop_assert!(c.sessions >= 0 && c.conversions >= 0 && c.revenue_micros >= 0);
            }
        }
    }
}

mod attribution_scenarios;
mod money;
mod refunds;

/// The rows of one take, by (granularity, window start, channel), summed.
fn taken(pipeline: &mut Pipeline) -> BTreeMap<(Granularity, i64, String), KpiCounters> {
    let mut rows = BTreeMap::<_, KpiCounters>::new();
    for (key, change) in pipeline.take_deltas().rows {
        let channel = pipeline.dims(key.dims).unwrap().channel.clone();
        rows.entry((key.granularity, key.window_start, channel))
            .or_default()
            .add(&change);
    }
    rows
}

#[test]
fn minute_rows_fold_into_hours_and_days_that_do_not_nest_in_each_other() {
    // Kolkata is UTC+5:30: its days start at 18:30 UTC, inside an hour window. Events
    // either side of that midnight, taken together, share their hour and not their day.
    let config = PipelineConfig {
        time_zone: jiff::tz::TimeZone::get("Asia/Kolkata").unwrap(),
        ..PipelineConfig::default()
    };
    let mut pipeline = Pipeline::new(config, None);
    let hour = 1_712_340_000_000; // 2024-04-05T18:00:00Z
    let (before, after) = (hour + 20 * MIN, hour + 40 * MIN);
    let midnight = hour + 30 * MIN; // 2024-04-06T00:00 in Kolkata
    pipeline.process(0, &LogRecord::Event(event(1, EventKind::PageView, before)));
    pipeline.process(1, &LogRecord::Event(event(2, EventKind::PageView, after)));
    let rows = taken(&mut pipeline);
    let events = |g: Granularity, start: i64| rows[&(g, start, "social".to_string())].events[0];
    assert_eq!(events(Minute, before), 1);
    assert_eq!(events(Minute, after), 1);
    assert_eq!(events(Hour, hour), 2);
    assert_eq!(events(Day, midnight - 86_400_000), 1);
    assert_eq!(events(Day, midnight), 1);
    assert_eq!(rows.len(), 5);
    assert_eq!(rows[&(Hour, hour, "social".to_string())].sessions, 2);
}

#[test]
fn taking_deltas_once_or_after_every_record_gives_the_same_rows() {
    // Minute rows are folded into hours and days when the deltas are taken: a take after
    // many records (late and custom events among them, counted directly) sums the same.
    let records: Vec<StoredEvent> = (0..60)
        .map(|i| {
            let kind = match i % 4 {
                0 => EventKind::PageView,
                1 => EventKind::AddToCart,
                2 => EventKind::Custom("wishlist".into()),
                _ => EventKind::Purchase,
            };
            let mut e = event(i % 7, kind, T0 + i64::from(i) * 7 * MIN);
            e.value = Some(10.0);
            if i % 5 == 0 {
                e.channel = Some(format!("channel-{}", i % 3));
            }
            e
        })
        .chain([event(1, EventKind::PageView, T0 - 3 * 3_600_000)]) // late for its hour
        .collect();
    let mut once = Pipeline::new(PipelineConfig::default(), None);
    let mut each = Run::new();
    for (offset, e) in records.into_iter().enumerate() {
        once.process(offset as u64, &LogRecord::Event(e.clone()));
        each.feed(LogRecord::Event(e));
    }
    let mut summed = taken(&mut once);
    summed.retain(|_, c| !c.is_zero());
    let mut expected = BTreeMap::<_, KpiCounters>::new();
    for (key, counters) in &each.kpis {
        expected
            .entry((key.0, key.1, key.2.clone()))
            .or_default()
            .add(counters);
    }
    expected.retain(|_, c| !c.is_zero());
    assert!(
        summed.values().any(|c| c.late > 0),
        "a late event was counted"
    );
    assert!(summed.values().any(|c| !c.custom_events.is_empty()));
    assert_eq!(summed, expected);
}

#[test]
fn a_user_is_listed_for_expiry_once_and_dropped_when_its_last_session_is_final() {
    // Ten events two minutes apart move the user's due time ten times: one listing, moved
    // on when it comes early, and the user dropped at the same watermark as ever.
    let mut run = Run::new();
    for i in 0..10 {
        run.feed(LogRecord::Event(event(
            1,
            EventKind::PageView,
            T0 + i * 2 * MIN,
        )));
    }
    let listings = |run: &Run| {
        run.pipeline
            .snapshot()
            .expiry
            .values()
            .map(Vec::len)
            .sum::<usize>()
    };
    assert_eq!(listings(&run), 1);
    let config = PipelineConfig::default();
    let last = T0 + 18 * MIN;
    let due = last + config.session_gap_ms + config.allowed_lateness_ms + MIN;
    // Other users' events move the watermark (a record expires state by the watermark
    // before it): past the first due time, to just before the last one, then to it.
    let at_watermark = |n: u8, w: i64| {
        LogRecord::Event(event(
            n,
            EventKind::PageView,
            w + config.out_of_orderness_ms,
        ))
    };
    run.feed(at_watermark(2, due - 10 * MIN));
    run.feed(at_watermark(3, due - 1));
    assert!(run.pipeline.state.users.contains_key(&user(1)));
    let snapshot = run.pipeline.snapshot();
    let listed = snapshot
        .expiry
        .values()
        .flatten()
        .filter(|u| **u == user(1));
    assert_eq!(listed.count(), 1, "listed again for its due time, once");
    run.feed(at_watermark(2, due - 1));
    assert!(run.pipeline.state.users.contains_key(&user(1)));
    run.feed(at_watermark(3, due));
    run.feed(at_watermark(2, due));
    assert!(!run.pipeline.state.users.contains_key(&user(1)));
    assert_eq!(run.total(Day, |c| c.sessions), 3);
}

/// A later stage's hint stays on a held user and comes back with the user's next event;
/// it is not state: a snapshot does not carry it and equality does not see it.
#[test]
fn a_stage_hint_stays_with_a_held_user_and_is_not_state() {
    let t0 = 1_700_000_040_000;
    let mut pipeline = Pipeline::new(PipelineConfig::default(), None);
    let record = LogRecord::Event(event(1, EventKind::PageView, t0));
    pipeline.process(0, &record);
    assert_eq!(pipeline.last_stage_hint(), 0, "a user new to the pipeline");
    let unhinted = pipeline.encode_snapshot().unwrap();
    pipeline.set_stage_hint(&user(1), 42);
    pipeline.set_stage_hint(&user(9), 7); // not held: nothing
    assert_eq!(
        pipeline.encode_snapshot().unwrap(),
        unhinted,
        "not in the snapshot"
    );
    let stored = snapshot::decode_snapshot(&pipeline.encode_snapshot().unwrap()).unwrap();
    let mut restored = Pipeline::restore(PipelineConfig::default(), None, stored);
    let record = LogRecord::Event(event(1, EventKind::AddToCart, t0 + 1_000));
    pipeline.process(1, &record);
    assert_eq!(pipeline.last_stage_hint(), 42);
    // A pipeline restored from its snapshot has no hints, and decides the same.
    restored.process(1, &record);
    assert_eq!(restored.last_stage_hint(), 0);
    assert_eq!(
        restored.encode_snapshot().unwrap(),
        pipeline.encode_snapshot().unwrap()
    );
    let held = &pipeline.snapshot().users[&user(1)];
    let mut hinted = held.clone();
    hinted.stage_hint = 5;
    assert_eq!(&hinted, held, "equality does not see the hint");
}

/// A copy's list is emptied with room for what it will hold, keeps its memory when that
/// fits (within twice the need), and is made anew when it is too small or too large.
#[test]
fn refill_keeps_memory_that_fits_and_makes_anew_what_does_not() {
    let mut list: Vec<u64> = Vec::with_capacity(100);
    list.extend(0..100);
    let kept = list.as_ptr();
    refill(&mut list, 80);
    assert!(list.is_empty());
    assert_eq!((list.as_ptr(), list.capacity()), (kept, 100));

    // Too small: made anew with room for the need, nothing of the old entries kept.
    list.extend(0..80);
    refill(&mut list, 1_000);
    assert!(list.is_empty());
    assert!(list.capacity() >= 1_000);
    assert!(list.capacity() < 2_000);

    // Too large: let go down to the need.
    refill(&mut list, 10);
    assert!(list.is_empty());
    assert!((10..=20).contains(&list.capacity()));
}
