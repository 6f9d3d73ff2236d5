//! Refunds (issue 13): a refund lowers the revenue of its order's rows, wherever and
//! whenever it arrives (docs/semantics.md, "Refunds").

use super::*;

const DAY: i64 = 86_400_000;

fn order(user_n: u8, ts: i64, value: f64, order_id: &str) -> StoredEvent {
    let mut e = purchase(user_n, ts, value);
    e.order_id = Some(order_id.into());
    e.event_id = Some(format!("order-{order_id}-{ts}"));
    e
}

/// A refund as the Shopify source sends it: its own pseudonymous user, direct, no device.
fn refund(ts: i64, value: f64, order_id: &str, refund_id: &str) -> StoredEvent {
    let mut e = event(200, EventKind::Refund, ts);
    e.channel = None;
    e.campaign = None;
    e.device = None;
    e.region = None;
    e.value = Some(value);
    e.order_id = Some(order_id.into());
    e.event_id = Some(refund_id.into());
    e
}

/// Moves the watermark on by events of another user at `ts`: two, since state expires
/// by the watermark before each record.
fn tick(run: &mut Run, ts: i64) {
    run.feed(LogRecord::Event(event(99, EventKind::PageView, ts)));
    run.feed(LogRecord::Event(event(99, EventKind::AddToCart, ts + SEC)));
}

fn feed_all(run: &mut Run, events: impl IntoIterator<Item = StoredEvent>) {
    for e in events {
        run.feed(LogRecord::Event(e));
    }
}

/// Revenue, conversions, refunds and refunded of the `social` rows of a granularity.
fn social(run: &Run, g: Granularity) -> (i128, i64, i64, i128) {
    let rows = run.rows(g);
    let social = rows.iter().filter(|(_, channel, _)| channel == "social");
    social.fold((0, 0, 0, 0), |acc, (_, _, c)| {
        (
            acc.0 + c.revenue_micros,
            acc.1 + c.conversions,
            acc.2 + c.refunds,
            acc.3 + c.refunded_micros,
        )
    })
}

#[test]
fn an_order_followed_by_its_refund_nets_out_exactly() {
    let mut run = Run::new();
    feed_all(
        &mut run,
        [
            order(1, T0, 89.5, "1001"),
            refund(T0 + MIN, 89.5, "1001", "r-1"),
        ],
    );
    for g in Granularity::ALL {
        // The conversion still counts; its revenue is gone, and the refund says why.
        assert_eq!(social(&run, g), (0, 1, 1, 89_500_000), "{g:?}");
        // A refund is not an event of the funnel: no session, no type count.
        assert_eq!(run.total(g, |c| c.sessions), 1);
        assert_eq!(run.total(g, |c| c.events.iter().sum::<i64>()), 1);
    }
    assert_eq!(run.pipeline.counters().refunds, 1);
    assert_eq!(run.pipeline.counters().accepted, 1);
}

#[test]
fn a_refund_counts_in_the_orders_window_and_dimensions_days_later() {
    let mut run = Run::new();
    run.feed(LogRecord::Event(order(1, T0, 100.0, "1001")));
    // Two days later the order's user is long dropped: its place is final.
    tick(&mut run, T0 + 2 * DAY);
    assert_eq!(
        run.pipeline.active_users(),
        1,
        "only the ticking user is held"
    );
    run.feed(LogRecord::Event(refund(T0 + 2 * DAY, 30.0, "1001", "r-1")));
    for g in Granularity::ALL {
        assert_eq!(social(&run, g), (70_000_000, 1, 1, 30_000_000), "{g:?}");
    }
    // In the order's own day, not the refund's.
    let day = T0 - 14 * HOUR; // midnight in Rome (UTC+2 in April)
    let rows = run.rows(Day);
    let (start, _, row) = rows.iter().find(|(_, ch, _)| ch == "social").unwrap();
    assert_eq!(*start, day);
    assert_eq!(row.refunded_micros, 30_000_000);
}

#[test]
fn partial_refunds_sum_up_and_the_excess_is_clamped_and_counted() {
    for late in [false, true] {
        let mut run = Run::new();
        run.feed(LogRecord::Event(order(1, T0, 100.0, "1001")));
        let at = if late { T0 + 2 * DAY } else { T0 + MIN };
        if late {
            tick(&mut run, at);
        }
        feed_all(
            &mut run,
            [
                refund(at, 30.0, "1001", "r-1"),
                refund(at, 45.25, "1001", "r-2"),
                // More than is left (24.75): clamped, the rest counted apart.
                refund(at + SEC, 40.0, "1001", "r-3"),
            ],
        );
        for g in Granularity::ALL {
            assert_eq!(social(&run, g), (0, 1, 3, 100_000_000), "late {late} {g:?}");
        }
        assert_eq!(run.pipeline.counters().refund_excess_micros, 15_250_000);
    }
}

#[test]
fn a_refund_before_its_order_waits_for_it() {
    let events = [
        order(1, T0, 60.0, "1001"),
        refund(T0 + 10 * SEC, 20.0, "1001", "r-1"),
    ];
    let mut in_order = Run::new();
    feed_all(&mut in_order, events.clone());
    let mut reversed = Run::new();
    run_reversed(&mut reversed, &events);
    assert_eq!(reversed.kpis, in_order.kpis);
    assert_eq!(social(&reversed, Hour), (40_000_000, 1, 1, 20_000_000));
    assert_eq!(reversed.pipeline.counters().refunds_unmatched, 0);
}

fn run_reversed(run: &mut Run, events: &[StoredEvent]) {
    feed_all(run, events.iter().rev().cloned());
}

#[test]
fn a_refund_whose_order_never_comes_is_unmatched_and_changes_nothing() {
    let mut run = Run::new();
    run.feed(LogRecord::Event(refund(T0, 20.0, "ghost", "r-1")));
    assert!(run.kpis.is_empty(), "{:?}", run.kpis);
    // Once the refund's time is out of the allowed lateness (and the hourly sweep came),
    // it is given up.
    tick(&mut run, T0 + 2 * HOUR);
    assert_eq!(run.pipeline.counters().refunds_unmatched, 1);
    // Its order, arriving now, finds no refund.
    run.feed(LogRecord::Event(order(1, T0 + 2 * HOUR, 50.0, "ghost")));
    assert_eq!(social(&run, Hour), (50_000_000, 1, 0, 0));
}

#[test]
fn a_pending_refund_past_the_lateness_is_not_matched_even_before_the_sweep() {
    let mut run = Run::new();
    run.feed(LogRecord::Event(refund(T0, 20.0, "1001", "r-1")));
    // 20 minutes on: past the lateness (15 min + 1 min), but no hourly sweep yet.
    tick(&mut run, T0 + 20 * MIN);
    run.feed(LogRecord::Event(order(1, T0 + 20 * MIN, 50.0, "1001")));
    assert_eq!(social(&run, Hour), (50_000_000, 1, 0, 0));
    assert_eq!(run.pipeline.counters().refunds_unmatched, 1);
}

#[test]
fn a_repeated_refund_is_an_exact_duplicate() {
    let mut run = Run::new();
    feed_all(
        &mut run,
        [
            order(1, T0, 50.0, "1001"),
            refund(T0 + MIN, 10.0, "1001", "r-1"),
            refund(T0 + MIN, 10.0, "1001", "r-1"),
        ],
    );
    assert_eq!(social(&run, Day), (40_000_000, 1, 1, 10_000_000));
    assert_eq!(run.total(Day, |c| c.duplicates), 1);
    assert_eq!(run.pipeline.counters().refunds, 1);
}

#[test]
fn a_refund_moves_with_its_order_when_the_session_is_re_attributed() {
    // The purchase arrives first in a direct session and is refunded while held; then the
    // session's earlier landing hit from email arrives: conversion, revenue and refund all
    // move to email.
    let mut run = Run::new();
    let mut direct_order = order(1, T0 + 5 * MIN, 80.0, "1001");
    direct_order.channel = None;
    direct_order.campaign = None;
    feed_all(
        &mut run,
        [direct_order, refund(T0 + 6 * MIN, 30.0, "1001", "r-1")],
    );
    let landing = on_channel(event(1, EventKind::PageView, T0), "email");
    run.feed(LogRecord::Event(landing));
    let rows = run.rows(Day);
    let email: Vec<_> = rows.iter().filter(|(_, ch, _)| ch == "email").collect();
    assert_eq!(email.len(), 1, "{rows:?}");
    let row = &email[0].2;
    assert_eq!(
        (
            row.conversions,
            row.revenue_micros,
            row.refunds,
            row.refunded_micros
        ),
        (1, 50_000_000, 1, 30_000_000)
    );
    assert_eq!(rows.len(), 1, "nothing left under direct: {rows:?}");
}

#[test]
fn a_refund_of_a_flagged_order_changes_no_kpi() {
    // Held: a registration arriving after the refunded purchase flags it; the refund
    // leaves the row with the revenue.
    let mut run = Run::new();
    feed_all(
        &mut run,
        [
            order(1, T0 + 2 * SEC, 80.0, "1001"),
            refund(T0 + MIN, 30.0, "1001", "r-1"),
            event(1, EventKind::Registration, T0),
        ],
    );
    assert_eq!(social(&run, Day), (0, 0, 0, 0));
    // Final: a refund after the user is dropped is counted apart.
    tick(&mut run, T0 + DAY);
    run.feed(LogRecord::Event(refund(T0 + DAY, 10.0, "1001", "r-2")));
    assert_eq!(social(&run, Day), (0, 0, 0, 0));
    assert_eq!(run.pipeline.counters().refunds_uncounted, 1);
}

#[test]
fn orders_are_forgotten_after_the_refund_horizon() {
    let mut run = Run::new();
    run.feed(LogRecord::Event(order(1, T0, 50.0, "1001")));
    tick(&mut run, T0 + 61 * DAY);
    run.feed(LogRecord::Event(refund(T0 + 61 * DAY, 10.0, "1001", "r-1")));
    tick(&mut run, T0 + 62 * DAY);
    assert_eq!(social(&run, Day), (50_000_000, 1, 0, 0));
    assert_eq!(run.pipeline.counters().refunds_unmatched, 1);
    assert!(run.pipeline.snapshot().refunds.orders.is_empty());
}

#[test]
fn a_refund_in_another_currency_is_converted_like_a_purchase() {
    let mut config = PipelineConfig::default();
    config.currency_rates.insert("USD".into(), 0.5);
    let mut run = Run::with(config);
    let mut r = refund(T0 + MIN, 20.0, "1001", "r-1");
    r.currency = Some("USD".into());
    feed_all(&mut run, [order(1, T0, 50.0, "1001"), r]);
    assert_eq!(social(&run, Day), (40_000_000, 1, 1, 10_000_000));
}

#[test]
fn refund_state_survives_a_snapshot() {
    let events = [
        order(1, T0, 50.0, "1001"),
        refund(T0 + MIN, 10.0, "1001", "r-1"),
        refund(T0 + MIN, 5.0, "1002", "r-2"),
        order(2, T0 + 2 * MIN, 40.0, "1002"),
        refund(T0 + 3 * MIN, 1.0, "1001", "r-3"),
    ];
    let mut straight = Run::new();
    feed_all(&mut straight, events.clone());
    let mut first = Run::new();
    feed_all(&mut first, events[..3].iter().cloned());
    let bytes = first.pipeline.encode_snapshot().unwrap();
    assert_eq!(bytes[4], 3, "format 3");
    let state = super::super::snapshot::decode_snapshot(&bytes).unwrap();
    assert_eq!(state.refunds.pending.len(), 1);
    assert_eq!(state.refunds.tallies.len(), 1);
    let mut resumed = Run {
        pipeline: Pipeline::restore(PipelineConfig::default(), None, state),
        kpis: first.kpis.clone(),
        spend: first.spend.clone(),
        offset: 3,
        store: None,
    };
    feed_all(&mut resumed, events[3..].iter().cloned());
    assert_eq!(resumed.kpis, straight.kpis);
    assert_eq!(resumed.pipeline.counters(), straight.pipeline.counters());
}

/// Orders of a few users with refunds, some before their order in event time, some
/// days later.
fn shop() -> impl Strategy<Value = Vec<StoredEvent>> {
    prop::collection::vec((0u8..4, 0i64..600, 1u32..200, 0u8..4, 0i64..3), 1..12).prop_map(
        |specs| {
            let mut events = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for (n, (u, seconds, value, refunds, when)) in specs.into_iter().enumerate() {
                if !seen.insert((u, seconds)) {
                    continue;
                }
                let ts = T0 + seconds * 7 * SEC + 200;
                let order_id = format!("o-{n}");
                let mut o = order(u, ts, f64::from(value), &order_id);
                if n % 3 == 0 {
                    o.channel = Some("email".into());
                }
                events.push(o);
                for r in 0..refunds {
                    // Before the order, minutes after it, or an hour after.
                    let at = ts + [-SEC, 3 * MIN, HOUR][when as usize] + i64::from(r) * SEC;
                    let amount = f64::from(value) * 0.4;
                    events.push(refund(at, amount, &order_id, &format!("r-{n}-{r}")));
                }
                if n % 4 == 1 {
                    // A registration shortly before: flags the order.
                    events.push(event(u, EventKind::Registration, ts - SEC));
                }
            }
            events
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn refunds_give_the_same_kpis_in_any_arrival_order_within_the_lateness(
        events in shop(),
        delays in prop::collection::vec(0i64..(10 * MIN), 1..20),
    ) {
        let (expected, before) = final_kpis(&arrival(&events, &[0]));
        let (actual, after) = final_kpis(&arrival(&events, &delays));
        prop_assert_eq!(&actual, &expected);
        prop_assert_eq!(before.refund_excess_micros, after.refund_excess_micros);
        prop_assert_eq!(before.refunds, after.refunds);
        for c in expected.values() {
            prop_assert!(c.revenue_micros >= 0 && c.refunded_micros >= 0 && c.refunds >= 0);
        }
    }
}
