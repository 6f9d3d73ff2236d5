//! The truth's attribution and same-order rules on tiny logs whose answers are worked out by
//! hand from `docs/semantics.md` ("Duplicates", "Sessions", "Attribution", "KPIs of a row").
//! Each test says which rule it pins; the numbers in the comments are the hand computation.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use vedetta_synth::truth::{self, AttributionModel, Granularity, Truth, TruthConfig, TruthRow};
use vedetta_synth::{
    Arrival, ArrivalKind, Channel, DeviceClass, EventId, EventType, GroundTruth, OrderId,
    SynthEvent, SynthRecord, SynthSpend, Timestamp, TsFormat, Udid, UdidStyle, user_agents,
};

/// 2024-04-05T12:00:00Z.
const NOON: i64 = 1_712_318_400_000;
const SECOND: i64 = 1_000;
const MINUTE: i64 = 60_000;
const DAY: i64 = 86_400_000;
const LOOKBACK: i64 = 30 * DAY;

use AttributionModel::{FirstTouch, LastNonDirect, Session};

fn user_agent_of(device: DeviceClass) -> &'static str {
    user_agents()
        .iter()
        .find(|spec| spec.device == device)
        .unwrap()
        .user_agent
}

/// An untagged event (no channel, campaign, UTM, click id or referrer): its own touch is
/// direct. Desktop, Lombardia.
fn untagged(user: u64, event_type: EventType, ts: i64, id: u64) -> SynthEvent {
    SynthEvent {
        udid: Udid {
            key: user,
            style: UdidStyle::Cookie,
        },
        event_type,
        ts: Timestamp {
            epoch_ms: ts,
            format: TsFormat::Rfc3339Utc,
        },
        event_id: EventId(id),
        value: None,
        currency: None,
        order_id: None,
        channel: None,
        campaign: None,
        utm_source: None,
        utm_medium: None,
        utm_campaign: None,
        gclid: None,
        fbclid: None,
        user_agent: Some(user_agent_of(DeviceClass::Desktop)),
        ip: None,
        region: Some("Lombardia"),
        page: None,
        referrer: None,
        product_id: None,
        consent: None,
        properties: None,
        italian_field_names: false,
    }
}

/// A landing page view that names its channel and campaign.
fn landing(user: u64, ts: i64, id: u64, channel: Channel, campaign: &'static str) -> SynthEvent {
    SynthEvent {
        channel: Some(channel),
        campaign: Some(campaign),
        utm_campaign: Some(campaign),
        ..untagged(user, EventType::PageView, ts, id)
    }
}

fn visit(user: u64, ts: i64, id: u64) -> SynthEvent {
    untagged(user, EventType::PageView, ts, id)
}

fn purchase(user: u64, ts: i64, id: u64, order: u64, euros: f64) -> SynthEvent {
    SynthEvent {
        value: Some(euros),
        currency: Some("EUR"),
        order_id: Some(OrderId(order)),
        ..untagged(user, EventType::Purchase, ts, id)
    }
}

fn log(records: impl IntoIterator<Item = SynthRecord>) -> Vec<Arrival> {
    records
        .into_iter()
        .enumerate()
        .map(|(index, record)| Arrival {
            arrival_ms: index as i64,
            record,
            truth: GroundTruth {
                kind: ArrivalKind::Original,
                late: false,
                fast_checkout: false,
                session: None,
                channel: None,
            },
        })
        .collect()
}

fn events(events: impl IntoIterator<Item = SynthEvent>) -> Vec<Arrival> {
    log(events.into_iter().map(SynthRecord::Event))
}

fn compute(model: AttributionModel, log: &[Arrival]) -> Truth {
    truth::compute(
        log,
        &TruthConfig {
            attribution: model,
            attribution_lookback_ms: LOOKBACK,
            ..TruthConfig::default()
        },
    )
}

/// The 1m rows whose window contains `ts`.
fn minute_rows(truth: &Truth, ts: i64) -> Vec<&TruthRow> {
    truth
        .rows
        .iter()
        .filter(|row| {
            row.granularity == Granularity::Minute.as_str()
                && (row.window_start_ms..row.window_end_ms).contains(&ts)
        })
        .collect()
}

/// Where the accepted events of the minute of `ts` are counted: (channel, campaign) of its one
/// row with events.
fn credited(truth: &Truth, ts: i64) -> (String, String) {
    let rows: Vec<&TruthRow> = minute_rows(truth, ts)
        .into_iter()
        .filter(|row| row.events.values().sum::<u64>() > 0)
        .collect();
    assert_eq!(rows.len(), 1, "one row with events at {ts}: {rows:?}");
    (rows[0].channel.clone(), rows[0].campaign.clone())
}

fn pair(channel: &str, campaign: &str) -> (String, String) {
    (channel.to_owned(), campaign.to_owned())
}

fn direct() -> (String, String) {
    pair("direct", "(none)")
}

// ---- session acquisition ------------------------------------------------------------------

#[test]
fn a_sessions_events_and_its_conversion_count_under_the_landing_touch() {
    // Landing from paid search; the cart and the purchase after it carry nothing.
    let t = NOON + 10 * SECOND;
    let log = events([
        landing(1, t, 1, Channel::PaidSearch, "brand"),
        untagged(1, EventType::AddToCart, t + 2 * MINUTE, 2),
        purchase(1, t + 5 * MINUTE, 3, 1, 40.0),
    ]);
    for model in AttributionModel::ALL {
        let truth = compute(model, &log);
        for ts in [t, t + 2 * MINUTE, t + 5 * MINUTE] {
            assert_eq!(
                credited(&truth, ts),
                pair("paid_search", "brand"),
                "{model:?}"
            );
        }
        let hour: Vec<&TruthRow> = truth
            .rows
            .iter()
            .filter(|r| r.granularity == "1h")
            .collect();
        assert_eq!(
            hour.len(),
            1,
            "{model:?}: one row holds the session and its events"
        );
        assert_eq!(
            (
                hour[0].sessions,
                hour[0].converting_sessions,
                hour[0].conversions
            ),
            (1, 1, 1)
        );
        assert_eq!(hour[0].revenue_micros, 40_000_000);
    }
}

#[test]
fn the_earliest_non_direct_event_acquires_the_session_and_the_first_gives_device_and_region() {
    // An untagged first hit on a tablet in Toscana, then a social landing and an e-mail one.
    let t = NOON + 10 * SECOND;
    let first = SynthEvent {
        user_agent: Some(user_agent_of(DeviceClass::Tablet)),
        region: Some("Toscana"),
        ..visit(1, t, 1)
    };
    let truth = compute(
        Session,
        &events([
            landing(1, t + 3 * MINUTE, 3, Channel::Email, "newsletter"),
            first,
            landing(1, t + MINUTE, 2, Channel::Social, "saldi"),
        ]),
    );
    for ts in [t, t + MINUTE, t + 3 * MINUTE] {
        let rows: Vec<&TruthRow> = minute_rows(&truth, ts);
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (
                rows[0].channel.as_str(),
                rows[0].campaign.as_str(),
                rows[0].device.as_str(),
                rows[0].region.as_str()
            ),
            ("social", "saldi", "tablet", "IT-52")
        );
    }
    assert_eq!(minute_rows(&truth, t)[0].sessions, 1);
}

#[test]
fn a_late_landing_event_turns_a_direct_session_into_a_paid_one() {
    let t = NOON + 10 * SECOND;
    let later = [
        visit(1, t + MINUTE, 2),
        purchase(1, t + 3 * MINUTE, 3, 1, 25.0),
    ];
    let without = compute(LastNonDirect, &events(later.clone()));
    assert_eq!(credited(&without, t + 3 * MINUTE), direct());
    // The landing arrives last, 10 s earlier in event time than everything else.
    let mut with = later.to_vec();
    with.push(landing(1, t, 1, Channel::PaidSearch, "brand"));
    let truth = compute(LastNonDirect, &events(with));
    assert_eq!(
        credited(&truth, t + 3 * MINUTE),
        pair("paid_search", "brand")
    );
    let session_minute = &minute_rows(&truth, t)[0];
    assert_eq!(
        (session_minute.sessions, session_minute.converting_sessions),
        (1, 1)
    );
    assert_eq!(minute_rows(&truth, t + MINUTE)[0].sessions, 0);
}

#[test]
fn a_session_merge_changes_the_acquisition_of_the_later_part() {
    // Social at t, a direct purchase 40 minutes later: two sessions. A page view at t + 20 min
    // joins them (gaps of 20 and 20 minutes), and under `session` the purchase moves to social.
    let t = NOON + 10 * SECOND;
    let apart = [
        landing(1, t, 1, Channel::Social, "saldi"),
        purchase(1, t + 40 * MINUTE, 2, 1, 30.0),
    ];
    let truth = compute(Session, &events(apart.clone()));
    assert_eq!(credited(&truth, t + 40 * MINUTE), direct());
    assert_eq!(minute_rows(&truth, t + 40 * MINUTE)[0].sessions, 1);

    let mut merged = apart.to_vec();
    merged.push(visit(1, t + 20 * MINUTE, 3));
    let truth = compute(Session, &events(merged));
    assert_eq!(credited(&truth, t + 40 * MINUTE), pair("social", "saldi"));
    assert_eq!(minute_rows(&truth, t + 40 * MINUTE)[0].sessions, 0);
    let first = &minute_rows(&truth, t)[0];
    assert_eq!((first.sessions, first.converting_sessions), (1, 1));
}

// ---- across sessions ----------------------------------------------------------------------

/// A paid session, then a direct return with a purchase `after` later.
fn paid_then_direct_return(after: i64) -> Vec<Arrival> {
    events([
        landing(1, NOON, 1, Channel::PaidSearch, "brand"),
        visit(1, NOON + after, 2),
        purchase(1, NOON + after + MINUTE, 3, 1, 50.0),
    ])
}

#[test]
fn a_direct_return_within_the_lookback_inherits_and_one_just_past_it_does_not() {
    // Exactly the lookback after the paid session's start: within (0 < Δ ≤ L).
    let within = paid_then_direct_return(LOOKBACK);
    let past = paid_then_direct_return(LOOKBACK + 1);
    let purchase_at = |after: i64| NOON + after + MINUTE;
    for (model, expected_within) in [
        (LastNonDirect, pair("paid_search", "brand")),
        (FirstTouch, pair("paid_search", "brand")),
        (Session, direct()),
    ] {
        let truth = compute(model, &within);
        assert_eq!(
            credited(&truth, purchase_at(LOOKBACK)),
            expected_within,
            "{model:?}"
        );
        // The return's session count goes with its events.
        let row = &minute_rows(&truth, NOON + LOOKBACK)[0];
        assert_eq!(
            (row.channel.as_str(), row.sessions),
            (expected_within.0.as_str(), 1)
        );
        let truth = compute(model, &past);
        assert_eq!(
            credited(&truth, purchase_at(LOOKBACK + 1)),
            direct(),
            "{model:?}"
        );
    }
}

#[test]
fn inheritance_does_not_chain_through_an_inheriting_direct_session() {
    // Paid at day 0, direct at day 10 (inherits paid), direct at day 35: the only non-direct
    // session is 35 days back, past the lookback, so the last one stays direct even though the
    // day-10 session (credited to paid) is within it.
    let truth = compute(
        LastNonDirect,
        &events([
            landing(1, NOON, 1, Channel::PaidSearch, "brand"),
            visit(1, NOON + 10 * DAY, 2),
            visit(1, NOON + 35 * DAY, 3),
        ]),
    );
    assert_eq!(
        credited(&truth, NOON + 10 * DAY),
        pair("paid_search", "brand")
    );
    assert_eq!(credited(&truth, NOON + 35 * DAY), direct());
}

#[test]
fn last_non_direct_takes_the_latest_and_first_touch_the_first() {
    let log = events([
        landing(1, NOON, 1, Channel::Email, "newsletter"),
        landing(1, NOON + DAY, 2, Channel::Social, "saldi"),
        purchase(1, NOON + 2 * DAY, 3, 1, 20.0),
    ]);
    let purchase_at = NOON + 2 * DAY;
    assert_eq!(
        credited(&compute(LastNonDirect, &log), purchase_at),
        pair("social", "saldi")
    );
    assert_eq!(
        credited(&compute(FirstTouch, &log), purchase_at),
        pair("email", "newsletter")
    );
    assert_eq!(credited(&compute(Session, &log), purchase_at), direct());
    // First touch also re-credits the social session itself: the e-mail is earlier.
    assert_eq!(
        credited(&compute(FirstTouch, &log), NOON + DAY),
        pair("email", "newsletter")
    );
    assert_eq!(
        credited(&compute(LastNonDirect, &log), NOON + DAY),
        pair("social", "saldi")
    );
}

#[test]
fn first_touch_takes_the_earliest_click_within_the_lookback_of_each_session() {
    // E-mail at day 0, social at day 20 (20 ≤ 30 days after the e-mail), a direct visit at
    // day 35, paid search at day 40, a direct visit at day 45. Each session looks at the
    // non-direct sessions that started in [its start − 30 days, its start]:
    // - day 20: e-mail (day 0) and social (day 20): the earliest is the e-mail;
    // - day 35: [day 5, day 35] holds social only (the e-mail lapsed): social. (A first-click
    //   cookie would have lost the e-mail at day 30 and kept nothing: direct.)
    // - day 40: [day 10, day 40] holds social and paid search: social;
    // - day 45: [day 15, day 45]: social still (day 20), not the newer paid search.
    let log = events([
        landing(1, NOON, 1, Channel::Email, "newsletter"),
        landing(1, NOON + 20 * DAY, 2, Channel::Social, "saldi"),
        visit(1, NOON + 35 * DAY, 3),
        landing(1, NOON + 40 * DAY, 4, Channel::PaidSearch, "brand"),
        visit(1, NOON + 45 * DAY, 5),
        visit(1, NOON + 51 * DAY, 6),
    ]);
    let truth = compute(FirstTouch, &log);
    assert_eq!(
        credited(&truth, NOON + 20 * DAY),
        pair("email", "newsletter")
    );
    assert_eq!(credited(&truth, NOON + 35 * DAY), pair("social", "saldi"));
    assert_eq!(credited(&truth, NOON + 40 * DAY), pair("social", "saldi"));
    assert_eq!(credited(&truth, NOON + 45 * DAY), pair("social", "saldi"));
    // Day 51: [day 21, day 51] holds paid search only.
    assert_eq!(
        credited(&truth, NOON + 51 * DAY),
        pair("paid_search", "brand")
    );
    // Last non-direct reads the same log otherwise.
    let truth = compute(LastNonDirect, &log);
    assert_eq!(credited(&truth, NOON + 35 * DAY), pair("social", "saldi"));
    assert_eq!(
        credited(&truth, NOON + 45 * DAY),
        pair("paid_search", "brand")
    );
}

#[test]
fn first_touch_sees_every_session_of_a_repeated_click() {
    // E-mail at day 0, social at day 10, e-mail again at day 20, direct at day 35 and 45.
    // Day 35: [day 5, day 35] holds social (10) and e-mail (20): social, the earliest.
    // Day 45: [day 15, day 45] holds the second e-mail only: e-mail, although the first
    // e-mail session lapsed long ago.
    let log = events([
        landing(1, NOON, 1, Channel::Email, "newsletter"),
        landing(1, NOON + 10 * DAY, 2, Channel::Social, "saldi"),
        landing(1, NOON + 20 * DAY, 3, Channel::Email, "newsletter"),
        visit(1, NOON + 35 * DAY, 4),
        visit(1, NOON + 45 * DAY, 5),
    ]);
    let truth = compute(FirstTouch, &log);
    assert_eq!(
        credited(&truth, NOON + 20 * DAY),
        pair("email", "newsletter")
    );
    assert_eq!(credited(&truth, NOON + 35 * DAY), pair("social", "saldi"));
    assert_eq!(
        credited(&truth, NOON + 45 * DAY),
        pair("email", "newsletter")
    );
}

#[test]
fn a_late_non_direct_session_re_credits_a_later_purchase() {
    let return_visit = [
        visit(1, NOON + DAY, 2),
        purchase(1, NOON + DAY + MINUTE, 3, 1, 60.0),
    ];
    let truth = compute(LastNonDirect, &events(return_visit.clone()));
    assert_eq!(credited(&truth, NOON + DAY + MINUTE), direct());
    // The affiliate session of the day before is logged after the return.
    let mut log = return_visit.to_vec();
    log.push(landing(1, NOON, 1, Channel::Affiliate, "trovaprezzi"));
    let truth = compute(LastNonDirect, &events(log));
    assert_eq!(
        credited(&truth, NOON + DAY + MINUTE),
        pair("affiliate", "trovaprezzi")
    );
    let row = &minute_rows(&truth, NOON + DAY + MINUTE)[0];
    assert_eq!((row.conversions, row.revenue_micros), (1, 60_000_000));
}

#[test]
fn the_arrival_order_of_a_log_without_duplicates_changes_nothing_but_late() {
    // Every rotation of a small log of two users across three sessions gives the same rows.
    let base = vec![
        landing(1, NOON, 1, Channel::Social, "saldi"),
        visit(1, NOON + 2 * MINUTE, 2),
        visit(1, NOON + 50 * MINUTE, 3),
        purchase(1, NOON + 52 * MINUTE, 4, 1, 10.0),
        visit(2, NOON + MINUTE, 5),
        landing(2, NOON + 3 * MINUTE, 6, Channel::Email, "newsletter"),
    ];
    // `late` depends on the order (the watermark), by definition: left out.
    let without_late = |mut truth: Truth| {
        for row in &mut truth.rows {
            row.late = 0;
        }
        truth
    };
    for model in AttributionModel::ALL {
        let expected = without_late(compute(model, &events(base.clone())));
        for shift in 1..base.len() {
            let mut rotated = base.clone();
            rotated.rotate_left(shift);
            let truth = without_late(compute(model, &events(rotated)));
            assert_eq!(truth, expected, "{model:?} {shift}");
        }
    }
}

// ---- duplicates ---------------------------------------------------------------------------

#[test]
fn a_duplicate_landing_counts_under_its_own_touch_and_joins_no_session() {
    let t = NOON + 10 * SECOND;
    let paid = landing(1, t, 1, Channel::PaidSearch, "brand");
    let double_fire = SynthEvent {
        event_id: EventId(9),
        ts: Timestamp {
            epoch_ms: t + 50,
            ..paid.ts
        },
        ..paid
    };
    // The user's first event is an untagged hit 5 s before the landing; the landing then
    // arrives twice, and fires once more 50 ms later. Acquisition is still paid.
    let truth = compute(
        Session,
        &events([visit(1, t - 5 * SECOND, 2), paid.clone(), paid, double_fire]),
    );
    let rows = minute_rows(&truth, t);
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].channel.as_str(), rows[0].campaign.as_str()),
        ("paid_search", "brand")
    );
    assert_eq!(rows[0].events.values().sum::<u64>(), 2);
    assert_eq!((rows[0].duplicates, rows[0].sessions), (2, 1));
}

#[test]
fn one_order_is_one_conversion_whoever_sends_it_within_seven_days() {
    let t = NOON + 10 * SECOND;
    let tracker = purchase(1, t, 1, 42, 80.0);
    let reload = purchase(1, t + 20 * SECOND, 2, 42, 80.0);
    // The shop's webhook knows the customer under another id, and no browser.
    let webhook = SynthEvent {
        udid: Udid {
            key: 1,
            style: UdidStyle::Crm,
        },
        user_agent: None,
        ..purchase(1, t + 2 * MINUTE, 3, 42, 80.0)
    };
    // Redelivered 40 minutes later: were it accepted it would start a second session.
    let redelivered = SynthEvent {
        event_id: EventId(4),
        ts: Timestamp {
            epoch_ms: t + 40 * MINUTE,
            ..webhook.ts
        },
        ..webhook
    };
    // 7 days less a millisecond: still the same order; exactly 7 days: a new conversion.
    let week = 7 * DAY;
    let almost_a_week = purchase(1, t + week - 1, 5, 42, 80.0);
    let a_week = purchase(1, t + week, 6, 42, 80.0);
    // A checkout with the order id is not a conversion type: not judged by its order.
    let checkout = SynthEvent {
        order_id: Some(OrderId(42)),
        ..untagged(1, EventType::Checkout, t + 30 * SECOND, 7)
    };
    let truth = compute(
        LastNonDirect,
        &events([
            tracker,
            reload,
            webhook,
            checkout,
            redelivered,
            almost_a_week,
            a_week,
        ]),
    );
    let day = |ts: i64| -> Vec<&TruthRow> {
        truth
            .rows
            .iter()
            .filter(|r| r.granularity == "1d" && (r.window_start_ms..r.window_end_ms).contains(&ts))
            .collect()
    };
    let today = day(t);
    let conversions: u64 = today.iter().map(|r| r.conversions).sum();
    let duplicates: u64 = today.iter().map(|r| r.duplicates).sum();
    let sessions: u64 = today.iter().map(|r| r.sessions).sum();
    let checkouts: u64 = today
        .iter()
        .map(|r| r.events.get("checkout").copied().unwrap_or(0))
        .sum();
    assert_eq!((conversions, duplicates, sessions, checkouts), (1, 3, 1, 1));
    // The webhook copies count under their own dimensions: direct, no user agent.
    let webhook_row = today.iter().find(|r| r.device == "unknown").unwrap();
    assert_eq!(
        (webhook_row.duplicates, webhook_row.channel.as_str()),
        (2, "direct")
    );
    // t + 7 d − 1 ms is a duplicate of the first; t + 7 d is 7 d from the first accepted (not
    // less) and 1 ms from a duplicate, which is no accepted event to compare with: a
    // conversion. Both are in the same Rome day.
    let next_week = day(t + week);
    let conversions: u64 = next_week.iter().map(|r| r.conversions).sum();
    let duplicates: u64 = next_week.iter().map(|r| r.duplicates).sum();
    assert_eq!((conversions, duplicates), (1, 1));
}

// ---- spend --------------------------------------------------------------------------------

fn spend(ts: i64, channel: Channel, campaign: &'static str, euros: f64) -> SynthRecord {
    SynthRecord::Spend(SynthSpend {
        ts: Timestamp {
            epoch_ms: ts,
            format: TsFormat::Rfc3339Utc,
        },
        channel,
        campaign,
        amount: euros,
        currency: "EUR",
        source: "google_ads",
    })
}

#[test]
fn spend_is_null_without_records_and_zero_when_records_sum_to_zero() {
    let t = NOON + 10 * SECOND;
    let truth = compute(
        LastNonDirect,
        &log([
            SynthRecord::Event(landing(1, t, 1, Channel::PaidSearch, "brand")),
            SynthRecord::Event(purchase(1, t + 10 * SECOND, 2, 1, 30.0)),
            SynthRecord::Event(landing(2, t, 3, Channel::Organic, "(none)")),
            SynthRecord::Event(purchase(2, t + 10 * SECOND, 4, 2, 20.0)),
            spend(t, Channel::PaidSearch, "brand", 6.0),
            spend(t, Channel::Display, "retargeting", 0.0),
        ]),
    );
    let minute: Vec<_> = truth
        .by_channel_and_campaign()
        .into_iter()
        .filter(|row| row.granularity == "1m")
        .map(|row| (row.channel, row.campaign, row.conversions, row.spend_micros))
        .collect();
    assert_eq!(
        minute,
        [
            ("display".into(), "retargeting".into(), 0, Some(0)),
            ("organic".into(), "(none)".into(), 1, None),
            ("paid_search".into(), "brand".into(), 1, Some(6_000_000)),
        ]
    );
}
