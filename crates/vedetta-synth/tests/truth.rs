//! The truth checked twice: against tiny logs whose KPIs are computed here by hand, one rule of
//! `docs/semantics.md` per test, and against generated traffic, whose labels
//! (`GroundTruth`, `SynthStats`) the truth never reads but must agree with.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::Instant;

use vedetta_synth::truth::{self, Granularity, IpRegion, Truth, TruthConfig, TruthRow};
use vedetta_synth::{
    Arrival, ArrivalKind, Channel, DeviceClass, EventId, EventType, Generator, GroundTruth,
    SynthConfig, SynthEvent, SynthRecord, SynthSpend, SynthStats, Timestamp, TsFormat, Udid,
    UdidStyle, user_agents,
};

/// 2024-04-05T12:00:00Z, a Friday; Rome is at +02:00, so its day runs from 22:00 UTC.
const NOON: i64 = 1_712_318_400_000;
const SECOND: i64 = 1_000;
const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;
const DAY_START: i64 = NOON - 14 * HOUR;

const MINUTE_ROW: Granularity = Granularity::Minute;
const HOUR_ROW: Granularity = Granularity::Hour;
const DAY_ROW: Granularity = Granularity::Day;

// ---- building tiny logs -------------------------------------------------------------------

fn user_agent_of(device: DeviceClass) -> &'static str {
    user_agents()
        .iter()
        .find(|spec| spec.device == device)
        .unwrap()
        .user_agent
}

/// An event of user `user` with id `id`; direct, no campaign, desktop, Lombardia.
fn event(user: u64, event_type: EventType, ts: i64, id: u64) -> SynthEvent {
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
        channel: Some(Channel::Direct),
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

fn page_view(user: u64, ts: i64, id: u64) -> SynthEvent {
    event(user, EventType::PageView, ts, id)
}

fn purchase(user: u64, ts: i64, id: u64, euros: f64) -> SynthEvent {
    SynthEvent {
        value: Some(euros),
        currency: Some("EUR"),
        ..event(user, EventType::Purchase, ts, id)
    }
}

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

/// The records in log order, as arrivals with no ground truth beyond `channel` (`None`).
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

fn compute(log: &[Arrival]) -> Truth {
    truth::compute(log, &TruthConfig::default())
}

// ---- reading the truth --------------------------------------------------------------------

fn rows_of(truth: &Truth, granularity: Granularity) -> impl Iterator<Item = &TruthRow> {
    truth
        .rows
        .iter()
        .filter(move |row| row.granularity == granularity.as_str())
}

/// The one row of `granularity` whose window contains `ts` (with any dimensions).
fn row_at(truth: &Truth, granularity: Granularity, ts: i64) -> &TruthRow {
    let mut rows = rows_of(truth, granularity)
        .filter(|row| (row.window_start_ms..row.window_end_ms).contains(&ts));
    let row = rows
        .next()
        .unwrap_or_else(|| panic!("no {granularity:?} row at {ts}"));
    assert!(
        rows.next().is_none(),
        "several {granularity:?} rows at {ts}"
    );
    row
}

/// The row of `granularity` at `ts` with this channel.
fn row_with_channel<'t>(
    truth: &'t Truth,
    granularity: Granularity,
    ts: i64,
    channel: &str,
) -> &'t TruthRow {
    rows_of(truth, granularity)
        .find(|row| {
            (row.window_start_ms..row.window_end_ms).contains(&ts) && row.channel == channel
        })
        .unwrap_or_else(|| panic!("no {granularity:?} row at {ts} for {channel}"))
}

fn total(truth: &Truth, granularity: Granularity, count: impl Fn(&TruthRow) -> u64) -> u64 {
    rows_of(truth, granularity).map(count).sum()
}

fn events_of(row: &TruthRow, event_type: EventType) -> u64 {
    row.events.get(event_type.as_str()).copied().unwrap_or(0)
}

fn all_events(row: &TruthRow) -> u64 {
    row.events.values().sum()
}

/// The counts of a row that do not depend on how it was delivered, for compact comparisons:
/// (events, sessions, converting sessions, conversions, revenue, flagged).
fn funnel(row: &TruthRow) -> (u64, u64, u64, u64, i64, u64) {
    (
        all_events(row),
        row.sessions,
        row.converting_sessions,
        row.conversions,
        row.revenue_micros,
        row.flagged,
    )
}

// ---- duplicates ---------------------------------------------------------------------------

#[test]
fn an_exact_retry_is_dropped_and_counted_as_a_duplicate() {
    let original = page_view(1, NOON + 10 * SECOND, 7);
    let truth = compute(&events([original.clone(), original]));
    for granularity in Granularity::ALL {
        let row = row_at(&truth, granularity, NOON);
        assert_eq!(events_of(row, EventType::PageView), 1, "{granularity:?}");
        assert_eq!((row.duplicates, row.sessions, row.late), (1, 1, 0));
    }
    assert_eq!(truth.rows.len(), 3);
}

#[test]
fn the_exact_duplicate_horizon_is_24_hours_of_event_time() {
    let truth = compute(&events([
        page_view(2, NOON, 8),
        // Same id, 1 ms inside the horizon: a duplicate, counted on the next day by its own ts.
        page_view(2, NOON + DAY - 1, 8),
        // Same id exactly 24 h away: a new event (the copy above was dropped, so it is not
        // compared with).
        page_view(2, NOON + DAY, 8),
        // The id is global: another user's purchase with it is an exact duplicate too.
        purchase(3, NOON + 5 * SECOND, 8, 10.0),
    ]));
    let today = row_at(&truth, DAY_ROW, NOON);
    assert_eq!(
        (all_events(today), today.duplicates, today.sessions),
        (1, 1, 1)
    );
    assert_eq!(today.conversions, 0);
    let tomorrow = row_at(&truth, DAY_ROW, NOON + DAY);
    assert_eq!(
        (all_events(tomorrow), tomorrow.duplicates, tomorrow.sessions),
        (1, 1, 1)
    );
    assert_eq!(row_at(&truth, MINUTE_ROW, NOON + DAY - 1).duplicates, 1);
    assert_eq!(all_events(row_at(&truth, MINUTE_ROW, NOON + DAY - 1)), 0);
}

#[test]
fn a_double_fire_under_100_ms_is_a_near_duplicate_and_100_ms_is_not() {
    let t = NOON + 20 * SECOND;
    let truth = compute(&events([
        // User 1: 99 ms apart, a duplicate.
        page_view(1, t, 10),
        page_view(1, t + 99, 11),
        // User 2: 100 ms apart, two events.
        page_view(2, t, 20),
        page_view(2, t + 100, 21),
        // User 3: the third is 99 ms after a dropped copy but 198 ms after the accepted one.
        page_view(3, t, 30),
        page_view(3, t + 99, 31),
        page_view(3, t + 198, 32),
        // User 4: another type 1 ms later is no duplicate.
        page_view(4, t, 40),
        event(4, EventType::AddToCart, t + 1, 41),
        // User 5: a copy earlier in event time is still judged against the accepted one.
        page_view(5, t, 50),
        page_view(5, t - 99, 51),
    ]));
    let row = row_at(&truth, MINUTE_ROW, t);
    assert_eq!(events_of(row, EventType::PageView), 1 + 2 + 2 + 1 + 1);
    assert_eq!(events_of(row, EventType::AddToCart), 1);
    assert_eq!((row.duplicates, row.sessions), (3, 5));
}

#[test]
fn the_first_to_arrive_wins_and_a_duplicate_counts_in_its_own_row() {
    let boundary = NOON + 5 * MINUTE;
    let later = page_view(1, boundary + 20, 1);
    // The copy that arrives second is 50 ms earlier in event time, in the previous minute, and
    // says it came from e-mail in Lazio.
    let earlier = SynthEvent {
        channel: Some(Channel::Email),
        region: Some("IT-62"),
        ..page_view(1, boundary - 30, 2)
    };
    let truth = compute(&events([later, earlier]));
    let kept = row_at(&truth, MINUTE_ROW, boundary);
    assert_eq!(
        (all_events(kept), kept.sessions, kept.duplicates),
        (1, 1, 0)
    );
    let dropped = row_at(&truth, MINUTE_ROW, boundary - 30);
    assert_eq!(
        (dropped.channel.as_str(), dropped.region.as_str()),
        ("email", "IT-62")
    );
    assert_eq!(
        (all_events(dropped), dropped.sessions, dropped.duplicates),
        (0, 0, 1)
    );
    // In the hour both are there, in two rows by dimensions.
    assert_eq!(
        row_with_channel(&truth, HOUR_ROW, NOON, "email").duplicates,
        1
    );
    assert_eq!(
        row_with_channel(&truth, HOUR_ROW, NOON, "direct").duplicates,
        0
    );
}

// ---- sequence flags -----------------------------------------------------------------------

#[test]
fn a_registration_arriving_after_the_purchase_still_flags_it() {
    let t = NOON + 5 * SECOND;
    let page = page_view(1, t, 1);
    let registration = event(1, EventType::Registration, t + 10 * SECOND, 2);
    let checkout = event(1, EventType::Checkout, t + 12 * SECOND, 3);
    let buy = purchase(1, t + 14 * SECOND, 4, 49.90);

    let without = compute(&events([page.clone(), checkout.clone(), buy.clone()]));
    let row = row_at(&without, MINUTE_ROW, t);
    assert_eq!(funnel(row), (3, 1, 1, 1, 49_900_000, 0));

    let with = compute(&events([page, checkout, buy, registration]));
    for granularity in Granularity::ALL {
        let row = row_at(&with, granularity, t);
        // Flagged events stay events and stay in the session, which no longer converts.
        assert_eq!(funnel(row), (4, 1, 0, 0, 0, 2), "{granularity:?}");
        assert_eq!(events_of(row, EventType::Purchase), 1);
        assert_eq!(events_of(row, EventType::Registration), 1);
    }
}

#[test]
fn the_fast_checkout_rule_is_zero_to_under_five_seconds_after_an_accepted_registration() {
    let t = NOON + 5 * SECOND;
    let truth = compute(&events([
        // User 1: checkout 4 999 ms after (flagged), purchase 5 000 ms after (clean).
        event(1, EventType::Registration, t, 10),
        event(1, EventType::Checkout, t + 4_999, 11),
        purchase(1, t + 5_000, 12, 20.0),
        // User 2: purchase in the same millisecond (flagged).
        event(2, EventType::Registration, t, 20),
        purchase(2, t, 21, 30.0),
        // User 3: purchase 1 ms before the registration (clean).
        event(3, EventType::Registration, t + 1, 30),
        purchase(3, t, 31, 40.0),
        // User 4: the registration 4 970 ms before the purchase is a dropped double-fire; the
        // accepted one is 5 020 ms before (clean).
        event(4, EventType::Registration, t, 40),
        event(4, EventType::Registration, t + 50, 41),
        purchase(4, t + 5_020, 42, 50.0),
        // User 5: another user's registration flags nothing.
        purchase(5, t + 1_000, 51, 60.0),
    ]));
    let row = row_at(&truth, MINUTE_ROW, t);
    assert_eq!(row.flagged, 2);
    assert_eq!(row.conversions, 4);
    assert_eq!(row.revenue_micros, (20 + 40 + 50 + 60) * 1_000_000);
    assert_eq!((row.sessions, row.converting_sessions), (5, 4));
    assert_eq!(row.duplicates, 1);
}

// ---- sessions -----------------------------------------------------------------------------

#[test]
fn an_out_of_order_event_merges_two_sessions() {
    let a = page_view(1, NOON + 10 * SECOND, 1);
    let b = page_view(1, NOON + 20 * MINUTE, 2);
    let c = purchase(1, NOON + 40 * MINUTE, 3, 15.0);

    let apart = compute(&events([a.clone(), c.clone()]));
    assert_eq!(row_at(&apart, MINUTE_ROW, NOON).sessions, 1);
    assert_eq!(row_at(&apart, MINUTE_ROW, NOON).converting_sessions, 0);
    assert_eq!(row_at(&apart, MINUTE_ROW, NOON + 40 * MINUTE).sessions, 1);
    assert_eq!(
        row_at(&apart, MINUTE_ROW, NOON + 40 * MINUTE).converting_sessions,
        1
    );
    assert_eq!(
        (
            row_at(&apart, HOUR_ROW, NOON).sessions,
            row_at(&apart, DAY_ROW, NOON).sessions
        ),
        (2, 2)
    );

    let merged = compute(&events([a, c, b]));
    let first = row_at(&merged, MINUTE_ROW, NOON);
    assert_eq!((first.sessions, first.converting_sessions), (1, 1));
    let last = row_at(&merged, MINUTE_ROW, NOON + 40 * MINUTE);
    assert_eq!((last.sessions, last.conversions), (0, 1));
    for granularity in [HOUR_ROW, DAY_ROW] {
        let row = row_at(&merged, granularity, NOON);
        assert_eq!((row.sessions, row.converting_sessions), (1, 1));
    }
}

#[test]
fn a_gap_of_exactly_30_minutes_starts_a_new_session() {
    let truth = compute(&events([
        page_view(1, NOON, 1),
        page_view(1, NOON + 30 * MINUTE, 2),
        page_view(2, NOON, 3),
        page_view(2, NOON + 30 * MINUTE - 1, 4),
    ]));
    assert_eq!(row_at(&truth, HOUR_ROW, NOON).sessions, 3);
    assert_eq!(row_at(&truth, MINUTE_ROW, NOON).sessions, 2);
    assert_eq!(row_at(&truth, MINUTE_ROW, NOON + 30 * MINUTE).sessions, 1);
}

#[test]
fn an_earlier_event_arriving_late_becomes_the_first_and_moves_the_session() {
    let landing = SynthEvent {
        channel: Some(Channel::Email),
        campaign: Some("newsletter_settimanale"),
        user_agent: Some(user_agent_of(DeviceClass::Tablet)),
        region: Some("Toscana"),
        ..page_view(1, NOON + 10 * SECOND, 1)
    };
    let next = SynthEvent {
        channel: Some(Channel::Social),
        ..page_view(1, NOON + 10 * MINUTE, 2)
    };

    let before = compute(&events([next.clone()]));
    assert_eq!(row_at(&before, MINUTE_ROW, NOON + 10 * MINUTE).sessions, 1);

    let after = compute(&events([next, landing]));
    let moved = row_at(&after, MINUTE_ROW, NOON);
    assert_eq!(
        (
            moved.channel.as_str(),
            moved.campaign.as_str(),
            moved.device.as_str(),
            moved.region.as_str()
        ),
        ("email", "newsletter_settimanale", "tablet", "IT-52")
    );
    assert_eq!((moved.sessions, all_events(moved)), (1, 1));
    // The later event stays in its minute but counts under the session: its earliest
    // non-direct touch (e-mail), and its first event's device and region.
    let left = row_at(&after, MINUTE_ROW, NOON + 10 * MINUTE);
    assert_eq!(
        (
            left.channel.as_str(),
            left.device.as_str(),
            left.region.as_str()
        ),
        ("email", "tablet", "IT-52")
    );
    assert_eq!((left.sessions, all_events(left)), (0, 1));
    // In the hour the session and both its events share one row.
    let hour = row_at(&after, HOUR_ROW, NOON);
    assert_eq!(hour.channel, "email");
    assert_eq!((hour.sessions, all_events(hour)), (1, 2));
}

// ---- lateness -----------------------------------------------------------------------------

/// Event `late_one` (at 12:00:20) is processed after an event at `push_to`; 12:30 after an event
/// at `push_hour_to`.
fn lateness_log(push_to: i64, push_hour_to: i64, spend_first: bool) -> Vec<Arrival> {
    let mut records = vec![
        SynthRecord::Event(page_view(1, NOON + 10 * SECOND, 1)),
        // Right after the first: the watermark is far behind.
        SynthRecord::Event(page_view(2, NOON + 30 * SECOND, 2)),
        SynthRecord::Event(page_view(3, push_to, 3)),
    ];
    if spend_first {
        // Spend never moves the watermark, whatever its time.
        records.push(spend(NOON + 3 * HOUR, Channel::Social, "saldi", 1.0));
    }
    records.extend([
        SynthRecord::Event(page_view(4, NOON + 20 * SECOND, 4)),
        // A double-fire of the late event: a duplicate, never late.
        SynthRecord::Event(page_view(4, NOON + 20 * SECOND + 50, 5)),
        SynthRecord::Event(page_view(5, push_hour_to, 6)),
        SynthRecord::Event(page_view(6, NOON + 30 * MINUTE, 7)),
    ]);
    log(records)
}

#[test]
fn late_is_per_granularity_and_starts_when_the_watermark_reaches_end_plus_15_minutes() {
    // The watermark is the highest ts before minus 5 s: 12:16:05 makes it 12:16 = the end of
    // 12:00's minute + 15 min. 13:15:05 does the same for 12:00's hour.
    let minute_closed = NOON + 16 * MINUTE + 5 * SECOND;
    let hour_closed = NOON + HOUR + 15 * MINUTE + 5 * SECOND;
    let truth = compute(&lateness_log(minute_closed, hour_closed, false));

    let minute = row_at(&truth, MINUTE_ROW, NOON);
    assert_eq!(
        (all_events(minute), minute.duplicates, minute.late),
        (3, 1, 1)
    );
    let half_past = row_at(&truth, MINUTE_ROW, NOON + 30 * MINUTE);
    assert_eq!((all_events(half_past), half_past.late), (1, 1));
    let hour = row_at(&truth, HOUR_ROW, NOON);
    assert_eq!((all_events(hour), hour.duplicates, hour.late), (5, 1, 1));
    let day = row_at(&truth, DAY_ROW, NOON);
    assert_eq!((all_events(day), day.duplicates, day.late), (6, 1, 0));
    // Late events are counted in every KPI of their window.
    assert_eq!(minute.sessions, 3);

    // One millisecond earlier and neither window is closed yet (12:30's minute still is).
    for spend_first in [false, true] {
        // A spend record three hours ahead in between changes nothing: spend moves no
        // watermark.
        let truth = compute(&lateness_log(
            minute_closed - 1,
            hour_closed - 1,
            spend_first,
        ));
        assert_eq!(row_at(&truth, MINUTE_ROW, NOON).late, 0);
        assert_eq!(row_at(&truth, MINUTE_ROW, NOON + 30 * MINUTE).late, 1);
        assert_eq!(total(&truth, HOUR_ROW, |row| row.late), 0);
        assert_eq!(truth.spend.len(), if spend_first { 3 } else { 0 });
    }
}

#[test]
fn lateness_and_out_of_orderness_are_configurable() {
    let config = TruthConfig {
        out_of_orderness_ms: 0,
        allowed_lateness_ms: 0,
        ..TruthConfig::default()
    };
    let log = events([
        page_view(1, NOON + MINUTE, 1),
        page_view(2, NOON + 59_999, 2),
    ]);
    let truth = truth::compute(&log, &config);
    assert_eq!(row_at(&truth, MINUTE_ROW, NOON).late, 1);
    assert_eq!(row_at(&truth, HOUR_ROW, NOON).late, 0);
}

// ---- spend --------------------------------------------------------------------------------

#[test]
fn spend_is_summed_per_window_channel_and_campaign() {
    let truth = compute(&log([
        spend(NOON, Channel::Social, "primavera_estate_2024", 1.25),
        spend(
            NOON + 30 * SECOND,
            Channel::Social,
            "primavera_estate_2024",
            0.10,
        ),
        spend(
            NOON + MINUTE,
            Channel::Social,
            "primavera_estate_2024",
            0.20,
        ),
        spend(NOON, Channel::PaidSearch, "black_friday_2024", 2.00),
        spend(NOON + 2 * HOUR, Channel::Display, "black_friday_2024", 0.05),
        spend(NOON, Channel::Display, " ", 0.30),
    ]));
    assert!(truth.rows.is_empty(), "spend makes no funnel rows");
    let rows: Vec<(&str, i64, &str, &str, i64)> = truth
        .spend
        .iter()
        .map(|row| {
            (
                row.granularity.as_str(),
                row.window_start_ms,
                row.channel.as_str(),
                row.campaign.as_str(),
                row.spend_micros,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("1m", NOON, "display", "(none)", 300_000),
            ("1m", NOON, "paid_search", "black_friday_2024", 2_000_000),
            ("1m", NOON, "social", "primavera_estate_2024", 1_350_000),
            (
                "1m",
                NOON + MINUTE,
                "social",
                "primavera_estate_2024",
                200_000
            ),
            (
                "1m",
                NOON + 2 * HOUR,
                "display",
                "black_friday_2024",
                50_000
            ),
            ("1h", NOON, "display", "(none)", 300_000),
            ("1h", NOON, "paid_search", "black_friday_2024", 2_000_000),
            ("1h", NOON, "social", "primavera_estate_2024", 1_550_000),
            (
                "1h",
                NOON + 2 * HOUR,
                "display",
                "black_friday_2024",
                50_000
            ),
            ("1d", DAY_START, "display", "(none)", 300_000),
            ("1d", DAY_START, "display", "black_friday_2024", 50_000),
            (
                "1d",
                DAY_START,
                "paid_search",
                "black_friday_2024",
                2_000_000
            ),
            (
                "1d",
                DAY_START,
                "social",
                "primavera_estate_2024",
                1_550_000
            ),
        ]
    );
    assert_eq!(truth.spend[0].window_end_ms, NOON + MINUTE);
    assert_eq!(truth.spend[12].window_end_ms, DAY_START + DAY);
    assert_eq!(truth.spend[12].window_start, "2024-04-04T22:00:00.000Z");
}

// ---- windows ------------------------------------------------------------------------------

#[test]
fn day_rows_follow_rome_including_the_23_hour_day() {
    let march_31_2024_2200z = 1_711_922_400_000; // 00:00 on 1 April in Rome (summer time)
    let march_30_2024_2300z = march_31_2024_2200z - 23 * HOUR; // 00:00 on 31 March (winter)
    let truth = compute(&events([
        page_view(1, march_30_2024_2300z - 1, 1),
        page_view(2, march_30_2024_2300z, 2),
        page_view(3, march_31_2024_2200z - 1, 3),
        page_view(4, march_31_2024_2200z, 4),
    ]));
    let days: Vec<(&str, i64, i64, u64)> = rows_of(&truth, DAY_ROW)
        .map(|row| {
            (
                row.window_start.as_str(),
                row.window_start_ms,
                (row.window_end_ms - row.window_start_ms) / HOUR,
                all_events(row),
            )
        })
        .collect();
    assert_eq!(
        days,
        [
            ("2024-03-29T23:00:00.000Z", march_30_2024_2300z - DAY, 24, 1),
            ("2024-03-30T23:00:00.000Z", march_30_2024_2300z, 23, 2),
            ("2024-03-31T22:00:00.000Z", march_31_2024_2200z, 24, 1),
        ]
    );
    // Hours stay UTC hours: four of them.
    assert_eq!(rows_of(&truth, HOUR_ROW).count(), 4);

    let october_27_2024_1200z = 1_730_030_400_000;
    let truth = compute(&events([page_view(1, october_27_2024_1200z, 1)]));
    let day = row_at(&truth, DAY_ROW, october_27_2024_1200z);
    assert_eq!(day.window_start, "2024-10-26T22:00:00.000Z");
    assert_eq!(day.window_end_ms - day.window_start_ms, 25 * HOUR);
}

// ---- dimensions and money -----------------------------------------------------------------

#[test]
fn dimensions_come_from_what_the_generator_knows() {
    let ip = |text: &str| Some(text.parse::<IpAddr>().unwrap());
    let config = TruthConfig {
        geoip: vec![
            IpRegion {
                network: "79.0.0.0".parse().unwrap(),
                prefix_len: 10,
                region: "IT-82".into(),
            },
            IpRegion {
                network: "2001:b07::".parse().unwrap(),
                prefix_len: 32,
                region: "Piemonte".into(),
            },
        ],
        ..TruthConfig::default()
    };
    let t = NOON + SECOND;
    let mut arrivals = events([
        // The channel left to the server: the one its `utm_medium` was chosen for (set below).
        // Without such a field the event would be direct, whatever its session's channel.
        SynthEvent {
            channel: None,
            utm_medium: Some("email"),
            utm_campaign: Some("newsletter_settimanale"),
            user_agent: Some(user_agent_of(DeviceClass::Mobile)),
            region: Some("IT-62"),
            ..page_view(1, t, 1)
        },
        // No channel and no ground truth: direct.
        SynthEvent {
            channel: None,
            campaign: Some(" saldi "),
            utm_campaign: Some("ignored"),
            user_agent: None,
            region: Some("Valle d'Aosta"),
            ..page_view(2, t, 2)
        },
        // Region from the IP (truncated and matched); an unknown name falls back to it.
        SynthEvent {
            region: None,
            ip: ip("79.18.120.72"),
            ..page_view(3, t, 3)
        },
        SynthEvent {
            region: Some("Baviera"),
            ip: ip("2001:b07:6462:1:2:3:4:5"),
            ..page_view(4, t, 4)
        },
        SynthEvent {
            region: None,
            ip: ip("151.16.1.1"),
            user_agent: Some("curl/8.0"),
            ..page_view(5, t, 5)
        },
    ]);
    arrivals[0].truth.channel = Some(Channel::Email);
    let truth = truth::compute(&arrivals, &config);
    let dimensions: BTreeSet<(&str, &str, &str, &str)> = rows_of(&truth, MINUTE_ROW)
        .map(|row| {
            (
                row.channel.as_str(),
                row.campaign.as_str(),
                row.device.as_str(),
                row.region.as_str(),
            )
        })
        .collect();
    let expected: BTreeSet<(&str, &str, &str, &str)> = [
        ("email", "newsletter_settimanale", "mobile", "IT-62"),
        ("direct", "saldi", "unknown", "IT-23"),
        ("direct", "(none)", "desktop", "IT-82"),
        ("direct", "(none)", "desktop", "IT-21"),
        ("direct", "(none)", "unknown", "unknown"),
    ]
    .into_iter()
    .collect();
    assert_eq!(dimensions, expected);
}

#[test]
fn revenue_is_integer_micro_euros_of_clean_euro_purchases() {
    let t = NOON + SECOND;
    let truth = compute(&events([
        purchase(1, t, 1, 0.1),
        purchase(2, t, 2, 0.2),
        purchase(3, t, 3, 0.3),
        purchase(4, t, 4, 19.99),
        // No currency means EUR; no value adds nothing; another currency adds nothing.
        SynthEvent {
            currency: None,
            ..purchase(5, t, 5, 1.005_000_4)
        },
        SynthEvent {
            value: None,
            ..purchase(6, t, 6, 0.0)
        },
        SynthEvent {
            currency: Some("USD"),
            ..purchase(7, t, 7, 100.0)
        },
        // A lead's value is not revenue.
        SynthEvent {
            value: Some(25.0),
            ..event(8, EventType::Lead, t, 8)
        },
    ]));
    let row = row_at(&truth, MINUTE_ROW, t);
    assert_eq!(row.conversions, 7);
    assert_eq!(
        row.revenue_micros,
        100_000 + 200_000 + 300_000 + 19_990_000 + 1_005_000
    );
    assert_eq!((row.sessions, row.converting_sessions), (8, 7));
}

#[test]
fn the_truth_file_is_json_that_reads_back() {
    let truth = compute(&log([
        SynthRecord::Event(page_view(1, NOON, 1)),
        SynthRecord::Event(page_view(1, NOON + 50, 2)),
        spend(NOON, Channel::Social, "saldi_tiktok_2024", 0.7),
    ]));
    let text = serde_json::to_string_pretty(&truth).unwrap();
    let back: Truth = serde_json::from_str(&text).unwrap();
    assert_eq!(back, truth);
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let row = &json["rows"][0];
    assert_eq!(row["granularity"], "1m");
    assert_eq!(row["window_start"], "2024-04-05T12:00:00.000Z");
    assert_eq!(row["events"], serde_json::json!({"page_view": 1}));
    assert_eq!(row["duplicates"], 1);
    assert_eq!(json["spend"][2]["spend_micros"], 700_000);
}

// ---- generated traffic --------------------------------------------------------------------

fn generate(config: &SynthConfig, records: usize) -> (Vec<Arrival>, SynthStats) {
    let mut generator = Generator::new(config.clone()).unwrap();
    let arrivals = generator.by_ref().take(records).collect();
    (arrivals, generator.stats())
}

/// Sessions per (granularity, window start) according to the generator's session labels.
fn labelled_sessions(arrivals: &[Arrival]) -> BTreeMap<(Granularity, i64), (u64, u64)> {
    // Per label: (ts, offset) of its first original, and whether it holds a clean purchase.
    let mut sessions: HashMap<u64, ((i64, usize), bool)> = HashMap::new();
    for (offset, arrival) in arrivals.iter().enumerate() {
        let (ArrivalKind::Original, SynthRecord::Event(event), Some(label)) =
            (arrival.truth.kind, &arrival.record, arrival.truth.session)
        else {
            continue;
        };
        let clean_purchase =
            event.event_type == EventType::Purchase && !arrival.truth.fast_checkout;
        let first = (event.ts.epoch_ms, offset);
        let entry = sessions.entry(label).or_insert((first, false));
        entry.0 = entry.0.min(first);
        entry.1 |= clean_purchase;
    }
    let mut per_window = BTreeMap::new();
    for ((ts, _), converting) in sessions.into_values() {
        for granularity in Granularity::ALL {
            let counts: &mut (u64, u64) = per_window
                .entry((granularity, granularity.window(ts).start_ms))
                .or_default();
            counts.0 += 1;
            counts.1 += u64::from(converting);
        }
    }
    per_window
}

#[test]
fn on_generated_traffic_the_truth_agrees_with_the_generators_labels() {
    let (arrivals, stats) = generate(&SynthConfig::default(), 150_000);
    let truth = compute(&arrivals);

    for granularity in Granularity::ALL {
        let g = granularity;
        for event_type in EventType::ALL {
            let found = total(&truth, g, |row| events_of(row, event_type));
            assert_eq!(found, stats.events_of(event_type), "{g:?} {event_type:?}");
        }
        assert_eq!(total(&truth, g, all_events), stats.events, "{g:?}");
        assert_eq!(total(&truth, g, |row| row.duplicates), stats.duplicates());
        assert_eq!(
            total(&truth, g, |row| row.flagged),
            stats.fast_checkout_events
        );
        assert_eq!(
            total(&truth, g, |row| row.conversions),
            stats.clean_purchases
        );
        let revenue: i64 = rows_of(&truth, g).map(|row| row.revenue_micros).sum();
        assert_eq!(revenue, stats.clean_revenue_cents as i64 * 10_000, "{g:?}");
        let spend: i64 = truth
            .spend
            .iter()
            .filter(|row| row.granularity == g.as_str())
            .map(|row| row.spend_micros)
            .sum();
        assert_eq!(spend, stats.spend_cents as i64 * 10_000, "{g:?}");
        // Single events arrive at most ten minutes late, within the 15 minutes of allowed
        // lateness; only the sessions delivered 16–40 minutes late can be late.
        let late = total(&truth, g, |row| row.late);
        assert!(late <= stats.late_events, "{g:?}: {late}");
        if g == Granularity::Minute {
            assert!(late > 0, "no late events in the 1m rows");
        }
    }
    assert!(stats.duplicates() > 0 && stats.fast_checkout_events > 0 && stats.late_events > 0);

    // The sessions found are the generated ones, window by window.
    let mut found: BTreeMap<(Granularity, i64), (u64, u64)> = BTreeMap::new();
    for row in &truth.rows {
        let granularity = Granularity::ALL
            .into_iter()
            .find(|g| g.as_str() == row.granularity)
            .unwrap();
        let counts = found.entry((granularity, row.window_start_ms)).or_default();
        counts.0 += row.sessions;
        counts.1 += row.converting_sessions;
    }
    found.retain(|_, counts| counts.0 > 0);
    assert_eq!(found, labelled_sessions(&arrivals));

    // Rows are sorted, unique and never empty.
    let order = |row: &TruthRow| {
        let g = Granularity::ALL
            .into_iter()
            .position(|g| g.as_str() == row.granularity)
            .unwrap();
        (
            g,
            row.window_start_ms,
            row.channel.clone(),
            row.campaign.clone(),
            row.device.clone(),
            row.region.clone(),
        )
    };
    for pair in truth.rows.windows(2) {
        assert!(order(&pair[0]) < order(&pair[1]), "{:?}", order(&pair[1]));
    }
    assert!(
        truth
            .rows
            .iter()
            .all(|row| all_events(row) + row.sessions + row.duplicates > 0)
    );
}

#[test]
fn with_no_allowed_lateness_only_minutes_late_events_are_late_finest_windows_most() {
    let synth = SynthConfig {
        late_share: 0.02,
        ..SynthConfig::default()
    };
    let (arrivals, stats) = generate(&synth, 60_000);
    let config = TruthConfig {
        allowed_lateness_ms: 0,
        ..TruthConfig::default()
    };
    let truth = truth::compute(&arrivals, &config);
    let late: Vec<u64> = Granularity::ALL
        .into_iter()
        .map(|g| total(&truth, g, |row| row.late))
        .collect();
    // Normal disorder (3 s) stays inside the 5 s of out-of-orderness.
    assert!(
        late[0] > 0 && late[0] <= stats.late_events,
        "{late:?} {stats:?}"
    );
    // A minute ends no later than its hour, an hour no later than its day.
    assert!(late[0] >= late[1] && late[1] >= late[2], "{late:?}");
}

/// The records whose event time is before `cutoff_ms`, from a run long enough that all of them
/// have arrived, in arrival order.
fn records_before(config: &SynthConfig, cutoff_ms: i64) -> Vec<Arrival> {
    Generator::new(config.clone())
        .unwrap()
        .take_while(|arrival| arrival.arrival_ms < cutoff_ms + 42 * MINUTE)
        .filter(|arrival| arrival.record.ts_ms() < cutoff_ms)
        .collect()
}

#[test]
fn disorder_duplicates_and_late_arrivals_change_only_duplicates_and_late() {
    let clean = SynthConfig {
        duplicate_share: 0.0,
        late_share: 0.0,
        late_session_share: 0.0,
        max_disorder_ms: 0,
        order_resend_share: 0.0,
        ..SynthConfig::default()
    };
    let messy = SynthConfig {
        duplicate_share: 0.2,
        order_resend_share: 0.3,
        late_share: 0.1,
        late_session_share: 0.01,
        max_disorder_ms: 59_000,
        ..clean
    };
    let cutoff = clean.start_ms + 75 * MINUTE;
    let clean_log = records_before(&clean, cutoff);
    let messy_log = records_before(&messy, cutoff);
    assert!(messy_log.len() > clean_log.len() + clean_log.len() / 20);
    let clean_truth = compute(&clean_log);
    let messy_truth = compute(&messy_log);

    let funnel_rows = |truth: &Truth| -> Vec<(String, i64, String, String, String, String, _)> {
        truth
            .rows
            .iter()
            .filter(|row| all_events(row) + row.sessions > 0)
            .map(|row| {
                (
                    row.granularity.clone(),
                    row.window_start_ms,
                    row.channel.clone(),
                    row.campaign.clone(),
                    row.device.clone(),
                    row.region.clone(),
                    (funnel(row), row.events.clone()),
                )
            })
            .collect()
    };
    assert_eq!(funnel_rows(&messy_truth), funnel_rows(&clean_truth));
    assert_eq!(messy_truth.spend, clean_truth.spend);
    assert_eq!(total(&clean_truth, MINUTE_ROW, |row| row.duplicates), 0);
    assert!(total(&messy_truth, MINUTE_ROW, |row| row.duplicates) > 1_000);
}

/// `cargo test --release -p vedetta-synth --test truth -- --ignored --nocapture`
#[test]
#[ignore = "a timing run: a million records, meant for release builds"]
fn one_million_events_timing() {
    let started = Instant::now();
    let (arrivals, stats) = generate(&SynthConfig::default(), 1_000_000);
    let generated = started.elapsed();
    let started = Instant::now();
    let truth = compute(&arrivals);
    let computed = started.elapsed();
    let started = Instant::now();
    let json = serde_json::to_vec(&truth).unwrap();
    let serialized = started.elapsed();
    println!(
        "{} records ({} events): generated in {generated:.2?}, truth computed in \
         {computed:.2?} ({} rows, {} spend rows), serialized in {serialized:.2?} ({} MB)",
        stats.records,
        stats.events + stats.duplicates(),
        truth.rows.len(),
        truth.spend.len(),
        json.len() / 1_000_000,
    );
    assert_eq!(total(&truth, DAY_ROW, all_events), stats.events);
    assert!(computed.as_secs() < 60);
}

// ---- refunds (issue 13) -------------------------------------------------------------------

fn order(user: u64, ts: i64, id: u64, euros: f64, order: u64) -> SynthEvent {
    SynthEvent {
        order_id: Some(vedetta_synth::OrderId(order)),
        ..purchase(user, ts, id, euros)
    }
}

/// A refund of `order` as the shop sends it: no browser, no attribution, another udid.
fn refund(ts: i64, id: u64, euros: f64, order: u64) -> SynthEvent {
    SynthEvent {
        event_type: EventType::Refund,
        channel: None,
        user_agent: None,
        region: None,
        value: Some(euros),
        currency: Some("EUR"),
        order_id: Some(vedetta_synth::OrderId(order)),
        ..event(900, EventType::Refund, ts, id)
    }
}

#[test]
fn refunds_net_out_of_their_orders_revenue_in_the_orders_own_rows() {
    let t = NOON + 5 * SECOND;
    let truth = compute(&events([
        // Order 1 refunded in full an hour later: revenue 0, in the order's minute.
        order(1, t, 10, 89.5, 1),
        refund(t + HOUR, 11, 89.5, 1),
        // Order 2: its refund arrives first; two partial refunds, the second retried.
        refund(t + 2 * MINUTE, 20, 30.0, 2),
        order(2, t + SECOND, 21, 100.0, 2),
        refund(t + 3 * MINUTE, 22, 45.25, 2),
        refund(t + 3 * MINUTE, 22, 45.25, 2),
        // Order 3: asked more than its value: capped.
        order(3, t + 2 * SECOND, 30, 10.0, 3),
        refund(t + DAY, 31, 15.0, 3),
        // A refund of an order that never comes changes nothing.
        refund(t, 40, 5.0, 4),
    ]));
    let minute = row_at(&truth, MINUTE_ROW, t);
    assert_eq!(minute.conversions, 3);
    assert_eq!(minute.refunds, 4);
    assert_eq!(
        minute.refunded_micros,
        (89_500_000 + 75_250_000 + 10_000_000)
    );
    assert_eq!(minute.revenue_micros, 24_750_000);
    // Refunds are no funnel events: only the purchases (and the repeated refund, a
    // duplicate) are counted in the refunds' own minutes.
    let events: u64 = rows_of(&truth, MINUTE_ROW)
        .flat_map(|r| r.events.values())
        .sum();
    assert_eq!(events, 3);
    let duplicates: u64 = rows_of(&truth, MINUTE_ROW).map(|r| r.duplicates).sum();
    assert_eq!(duplicates, 1);
    // The day: the purchases' row, and the repeated refund's duplicate under its own
    // dimensions (no device, no region).
    let day: Vec<_> = rows_of(&truth, DAY_ROW).collect();
    assert_eq!(day.len(), 2);
    let refunds: u64 = day.iter().map(|r| r.refunds).sum();
    let revenue: i64 = day.iter().map(|r| r.revenue_micros).sum();
    assert_eq!((refunds, revenue), (4, 24_750_000));
}

#[test]
fn a_refund_of_a_flagged_purchase_changes_nothing() {
    let t = NOON + 5 * SECOND;
    let truth = compute(&events([
        event(1, EventType::Registration, t, 10),
        order(1, t + SECOND, 11, 50.0, 1),
        refund(t + MINUTE, 12, 20.0, 1),
    ]));
    let row = row_at(&truth, MINUTE_ROW, t);
    assert_eq!(
        (row.flagged, row.conversions, row.revenue_micros),
        (1, 0, 0)
    );
    assert_eq!((row.refunds, row.refunded_micros), (0, 0));
}
