//! End-to-end properties of the generated traffic, checked the way a consumer sees it — through
//! the NDJSON lines — with the ground truth each arrival carries as the answer key.
//!
//! Most tests share one run of 200k records with the default configuration (generated once);
//! tests that need other settings make their own.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::OnceLock;

use serde_json::Value;
use vedetta_synth::{
    Arrival, ArrivalKind, Channel, DeviceClass, EventType, Generator, SynthConfig, SynthRecord,
    SynthStats, Tagging, paid_campaigns, regions, to_ndjson_line, user_agents,
};

const RECORDS: usize = 200_000;

struct Run {
    config: SynthConfig,
    arrivals: Vec<Arrival>,
    lines: Vec<String>,
    json: Vec<Value>,
    stats: SynthStats,
}

impl Run {
    fn new(config: SynthConfig, records: usize) -> Self {
        let mut generator = Generator::new(config.clone()).unwrap();
        let arrivals: Vec<Arrival> = generator.by_ref().take(records).collect();
        let mut lines = Vec::with_capacity(records);
        let mut json = Vec::with_capacity(records);
        let mut buffer = Vec::new();
        for arrival in &arrivals {
            buffer.clear();
            to_ndjson_line(&arrival.record, &mut buffer);
            let line = String::from_utf8(buffer.clone()).unwrap();
            assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
            json.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")));
            lines.push(line);
        }
        Self {
            config,
            arrivals,
            lines,
            json,
            stats: generator.stats(),
        }
    }

    fn rows(&self) -> impl Iterator<Item = (&Arrival, &str, &Value)> {
        self.arrivals
            .iter()
            .zip(&self.lines)
            .zip(&self.json)
            .map(|((a, l), j)| (a, l.as_str(), j))
    }

    fn originals(&self) -> impl Iterator<Item = (&Arrival, &str, &Value)> {
        self.rows()
            .filter(|(a, _, _)| a.truth.kind == ArrivalKind::Original)
    }
}

fn default_run() -> &'static Run {
    static RUN: OnceLock<Run> = OnceLock::new();
    RUN.get_or_init(|| Run::new(SynthConfig::default(), RECORDS))
}

fn ndjson(config: &SynthConfig, records: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for arrival in Generator::new(config.clone()).unwrap().take(records) {
        to_ndjson_line(&arrival.record, &mut out);
    }
    out
}

/// Field names of the event contract, English and Italian.
const EVENT_FIELDS: [&str; 26] = [
    "udid",
    "UDID",
    "type",
    "tipo",
    "ts",
    "tempo",
    "event_id",
    "value",
    "valore",
    "currency",
    "order_id",
    "channel",
    "campaign",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "gclid",
    "fbclid",
    "user_agent",
    "ip",
    "region",
    "page",
    "referrer",
    "product_id",
    "consent",
    "properties",
];
const SPEND_FIELDS: [&str; 6] = ["ts", "channel", "campaign", "amount", "currency", "source"];

/// Reads a field under its English or Italian name, refusing objects that carry both.
fn field<'a>(object: &'a Value, english: &str, italian: &str) -> Option<&'a Value> {
    match (object.get(english), object.get(italian)) {
        (Some(_), Some(_)) => panic!("both `{english}` and `{italian}` in {object}"),
        (english, italian) => english.or(italian),
    }
}

/// An independent RFC 3339 reader (`YYYY-MM-DDTHH:MM:SS.mmm` then `Z` or `±HH:MM`), so the
/// crate's formatter is checked against other code.
fn parse_rfc3339_ms(text: &str) -> i64 {
    let b = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> i64 { text[range].parse().unwrap() };
    assert!(b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[13] == b':' && b[16] == b':');
    assert_eq!(b[19], b'.', "{text}");
    let (year, month, day) = (num(0..4), num(5..7), num(8..10));
    let (hour, minute, second, milli) = (num(11..13), num(14..16), num(17..19), num(20..23));
    assert!((1..=12).contains(&month) && (1..=31).contains(&day) && hour < 24 && minute < 60);
    let offset_minutes = match &text[23..] {
        "Z" => 0,
        offset => {
            let sign = if offset.starts_with('+') { 1 } else { -1 };
            assert_eq!(offset.len(), 6, "{text}");
            sign * (offset[1..3].parse::<i64>().unwrap() * 60
                + offset[4..6].parse::<i64>().unwrap())
        }
    };
    // Days from civil, by counting: fine for the years the generator uses.
    let is_leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let mut days = 0;
    for y in 1970..year {
        days += if is_leap(y) { 366 } else { 365 };
    }
    let month_lengths = [
        31,
        if is_leap(year) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    days += month_lengths[..(month - 1) as usize].iter().sum::<i64>() + day - 1;
    ((days * 24 + hour) * 60 + minute - offset_minutes) * 60_000 + second * 1_000 + milli
}

fn ts_ms(value: &Value) -> i64 {
    match value {
        Value::String(text) => parse_rfc3339_ms(text),
        Value::Number(n) => n.as_i64().unwrap(),
        other => panic!("bad ts {other}"),
    }
}

fn udid_and_type(json: &Value) -> (String, String) {
    let udid = field(json, "udid", "UDID")
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    let event_type = field(json, "type", "tipo").unwrap().as_str().unwrap();
    let english = match event_type {
        "visualizzazione" => "page_view",
        "carrello" => "add_to_cart",
        "registrazione" => "registration",
        "acquisto" => "purchase",
        other => other,
    };
    (udid, english.to_owned())
}

#[test]
fn same_seed_gives_identical_bytes_and_another_seed_different_ones() {
    let config = SynthConfig {
        seed: 2024,
        ..SynthConfig::default()
    };
    let first = ndjson(&config, 10_000);
    let second = ndjson(&config, 10_000);
    assert_eq!(first.iter().filter(|&&b| b == b'\n').count(), 10_000);
    assert!(first == second, "same seed must give byte-identical output");
    let other = ndjson(
        &SynthConfig {
            seed: 2025,
            ..config
        },
        10_000,
    );
    assert!(first != other);
    // Not merely shifted: the two runs share (almost) no lines.
    let lines: HashSet<&[u8]> = first.split(|&b| b == b'\n').collect();
    let shared = other
        .split(|&b| b == b'\n')
        .filter(|l| lines.contains(l))
        .count();
    assert!(shared < 100, "{shared} lines shared between seeds");
}

#[test]
fn arrivals_never_go_back_but_event_time_does() {
    let run = default_run();
    let mut out_of_order = 0;
    let mut max_ts = i64::MIN;
    for pair in run.arrivals.windows(2) {
        assert!(pair[0].arrival_ms <= pair[1].arrival_ms);
    }
    for arrival in &run.arrivals {
        assert!(
            arrival.arrival_ms >= arrival.record.ts_ms(),
            "arrives before it happens"
        );
        let ts = arrival.record.ts_ms();
        if ts < max_ts {
            out_of_order += 1;
        }
        max_ts = max_ts.max(ts);
    }
    // Jitter of up to 3 s among ~2 events per second: a good share arrives out of order.
    assert!(out_of_order > RECORDS / 20, "{out_of_order}");
    assert!(run.arrivals[0].arrival_ms >= run.config.start_ms);
}

#[test]
fn every_line_is_a_valid_contract_record_matching_the_ground_truth() {
    let run = default_run();
    let region_names: HashSet<&str> = regions()
        .iter()
        .flat_map(|r| [r.name, r.iso_code])
        .collect();
    let known_types = [
        "page_view",
        "add_to_cart",
        "registration",
        "checkout",
        "purchase",
        "lead",
    ];
    for (arrival, line, json) in run.rows() {
        let object = json
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {line}"));
        match &arrival.record {
            SynthRecord::Event(event) => {
                for key in object.keys() {
                    assert!(
                        EVENT_FIELDS.contains(&key.as_str()),
                        "unknown field {key}: {line}"
                    );
                }
                let udid = field(json, "udid", "UDID").unwrap().as_str().unwrap();
                assert!((1..=128).contains(&udid.chars().count()));
                let (_, event_type) = udid_and_type(json);
                assert!(known_types.contains(&event_type.as_str()), "{line}");
                assert_eq!(event_type, event.event_type.as_str());
                let ts = field(json, "ts", "tempo").unwrap();
                assert_eq!(ts_ms(ts), event.ts.epoch_ms, "{line}");
                let event_id = json["event_id"].as_str().unwrap();
                assert!(!event_id.is_empty() && event_id.len() <= 128);
                if let Some(value) = field(json, "value", "valore") {
                    let value = value.as_f64().unwrap();
                    assert!(value.is_finite() && value >= 0.0);
                }
                if let Some(currency) = json.get("currency") {
                    assert_eq!(currency, "EUR");
                }
                if event.event_type == EventType::Purchase {
                    let value = field(json, "value", "valore").unwrap().as_f64().unwrap();
                    assert!((9.90..=400.0).contains(&value), "{line}");
                    assert_eq!(json["currency"], "EUR");
                    assert!(json["order_id"].as_str().unwrap().starts_with("ORD-"));
                }
                if let Some(ip) = json.get("ip") {
                    ip.as_str().unwrap().parse::<IpAddr>().unwrap();
                }
                if let Some(region) = json.get("region") {
                    assert!(region_names.contains(region.as_str().unwrap()), "{line}");
                }
                match json.get("consent") {
                    None | Some(Value::Bool(_)) => {}
                    Some(Value::Object(purposes)) => {
                        assert!(
                            purposes["analytics"].is_boolean()
                                && purposes["marketing"].is_boolean()
                        );
                    }
                    Some(other) => panic!("bad consent {other}"),
                }
                for text_field in [
                    "channel",
                    "campaign",
                    "utm_source",
                    "utm_medium",
                    "utm_campaign",
                    "gclid",
                    "fbclid",
                    "user_agent",
                    "page",
                    "referrer",
                    "product_id",
                    "order_id",
                ] {
                    if let Some(v) = json.get(text_field) {
                        assert!(
                            v.as_str().is_some_and(|s| !s.is_empty()),
                            "{text_field}: {line}"
                        );
                    }
                }
                if let Some(page) = json.get("page") {
                    assert!(page.as_str().unwrap().starts_with('/'));
                }
                if let Some(properties) = json.get("properties") {
                    assert!(properties.as_object().is_some_and(|p| !p.is_empty()));
                }
            }
            SynthRecord::Spend(spend) => {
                let keys: Vec<&str> = object.keys().map(String::as_str).collect();
                assert_eq!(keys.len(), SPEND_FIELDS.len(), "{line}");
                for key in SPEND_FIELDS {
                    assert!(object.contains_key(key), "{key} missing: {line}");
                }
                assert_eq!(ts_ms(&json["ts"]), spend.ts.epoch_ms);
                assert_eq!(json["currency"], "EUR");
                assert_eq!(json["amount"].as_f64().unwrap(), spend.amount);
            }
        }
    }
}

#[test]
fn about_two_percent_of_events_are_sent_twice_half_exact_half_near() {
    let run = default_run();
    let stats = run.stats;
    let originals = stats.events as f64;
    let duplicate_share = (stats.exact_duplicates + stats.near_duplicates) as f64 / originals;
    assert!((duplicate_share - 0.02).abs() <= 0.005, "{duplicate_share}");
    let exact_share = stats.exact_duplicates as f64 / originals;
    let near_share = stats.near_duplicates as f64 / originals;
    assert!((exact_share - 0.01).abs() <= 0.003, "{exact_share}");
    assert!((near_share - 0.01).abs() <= 0.003, "{near_share}");
}

#[test]
fn exact_retries_repeat_an_earlier_line_byte_for_byte_a_few_seconds_later() {
    let run = default_run();
    let mut originals: HashMap<&str, (&str, i64)> = HashMap::new();
    let mut retries = 0;
    for (arrival, line, json) in run.rows() {
        let event_id = json.get("event_id").and_then(Value::as_str);
        match arrival.truth.kind {
            // A refund is an original of its own, with its own retries.
            ArrivalKind::Original | ArrivalKind::Refund => {
                let previous = originals.insert(event_id.unwrap(), (line, arrival.arrival_ms));
                assert!(previous.is_none(), "two logical events share an event_id");
            }
            ArrivalKind::ExactRetry => {
                let (original_line, original_arrival) = originals[event_id.unwrap()];
                assert_eq!(line, original_line);
                assert!((100..=5_000).contains(&(arrival.arrival_ms - original_arrival)));
                retries += 1;
            }
            ArrivalKind::DoubleFire | ArrivalKind::OrderResend | ArrivalKind::Spend => {}
        }
    }
    assert_eq!(retries, run.stats.exact_duplicates);
    assert!(retries > 1_000);
}

#[test]
fn double_fires_are_same_user_and_type_within_100_ms_with_a_new_event_id() {
    let run = default_run();
    let mut by_user_type: HashMap<(String, String), Vec<(i64, &Value)>> = HashMap::new();
    let mut ids = HashSet::new();
    let mut double_fires = 0;
    for (arrival, _, json) in run.rows() {
        let Some(event_id) = json.get("event_id").and_then(Value::as_str) else {
            continue;
        };
        let ts = ts_ms(field(json, "ts", "tempo").unwrap());
        match arrival.truth.kind {
            ArrivalKind::Original => {
                ids.insert(event_id);
                by_user_type
                    .entry(udid_and_type(json))
                    .or_default()
                    .push((ts, json));
            }
            ArrivalKind::DoubleFire => {
                assert!(
                    ids.insert(event_id),
                    "a double-fire must carry a new event_id"
                );
                let candidates = &by_user_type[&udid_and_type(json)];
                let (original_ts, original) = candidates
                    .iter()
                    .find(|(t, _)| (1..=99).contains(&(ts - t)))
                    .expect("an original of the same user and type less than 100 ms before");
                assert!(ts - original_ts < 100);
                // Apart from the id and the time, it is the same event.
                let strip = |v: &Value| {
                    let mut v = v.clone();
                    let object = v.as_object_mut().unwrap();
                    for key in ["event_id", "ts", "tempo"] {
                        object.remove(key);
                    }
                    v
                };
                assert_eq!(strip(json), strip(original));
                double_fires += 1;
            }
            ArrivalKind::ExactRetry
            | ArrivalKind::OrderResend
            | ArrivalKind::Refund
            | ArrivalKind::Spend => {}
        }
    }
    assert_eq!(double_fires, run.stats.near_duplicates);
    assert!(double_fires > 1_000);
}

#[test]
fn originals_never_look_like_duplicates_of_each_other() {
    // Otherwise the server would drop real events and the answer key would be wrong.
    let run = default_run();
    let mut by_user_type: HashMap<(String, String), Vec<i64>> = HashMap::new();
    for (_, _, json) in run.originals() {
        let ts = ts_ms(field(json, "ts", "tempo").unwrap());
        by_user_type
            .entry(udid_and_type(json))
            .or_default()
            .push(ts);
    }
    for times in by_user_type.values_mut() {
        times.sort_unstable();
        for pair in times.windows(2) {
            assert!(
                pair[1] - pair[0] >= 1_000,
                "same user and type {} ms apart",
                pair[1] - pair[0]
            );
        }
    }
}

#[test]
fn a_few_events_are_minutes_late_the_rest_within_the_disorder_bound() {
    let run = default_run();
    let mut late = 0;
    let mut late_sessions = std::collections::BTreeMap::<u64, Vec<i64>>::new();
    for (arrival, _, _) in run.originals() {
        let delay = arrival.arrival_ms - arrival.record.ts_ms();
        if arrival.truth.late && delay > 600_000 {
            // A session delivered whole after the allowed lateness: 16–40 min plus jitter.
            let bound = 40 * 60_000 + run.config.max_disorder_ms;
            assert!((16 * 60_000..=bound).contains(&delay), "late by {delay} ms");
            late_sessions
                .entry(arrival.truth.session.unwrap())
                .or_default()
                .push(delay);
            late += 1;
        } else if arrival.truth.late {
            assert!((60_000..=600_000).contains(&delay), "late by {delay} ms");
            late += 1;
        } else {
            assert!((0..=run.config.max_disorder_ms).contains(&delay), "{delay}");
        }
    }
    assert_eq!(late, run.stats.late_events);
    assert!(!late_sessions.is_empty(), "no session was delivered late");
    // Sessions are counted when planned; the last few may not have been delivered yet.
    assert!(late_sessions.len() as u64 <= run.stats.late_sessions);
    assert!(late_sessions.len() as u64 + 20 >= run.stats.late_sessions);
    for delays in late_sessions.values() {
        // One delay for the whole session, give or take the disorder jitter.
        let (min, max) = (delays.iter().min().unwrap(), delays.iter().max().unwrap());
        assert!(max - min <= run.config.max_disorder_ms, "{delays:?}");
    }
    // 0.2% of events one by one, plus the events of 0.3% of sessions.
    let share = late as f64 / run.stats.events as f64;
    assert!((0.003..=0.008).contains(&share), "late share {share}");
}

/// Checks the answer key against the contract's rule: a checkout or purchase is a fast checkout
/// iff a registration of the same udid precedes it by less than 5 s in event time.
fn fast_checkout_flags_follow_the_rule(run: &Run) -> u64 {
    let mut registrations: HashMap<String, Vec<i64>> = HashMap::new();
    let mut conversions = Vec::new();
    let mut last_ts = i64::MIN;
    for (arrival, _, json) in run.originals() {
        let (udid, event_type) = udid_and_type(json);
        let ts = ts_ms(field(json, "ts", "tempo").unwrap());
        last_ts = last_ts.max(ts);
        match event_type.as_str() {
            "registration" => registrations.entry(udid).or_default().push(ts),
            "checkout" | "purchase" => conversions.push((udid, ts, arrival.truth.fast_checkout)),
            _ => {}
        }
    }
    let mut flagged = 0;
    // Conversions near the end may still miss a registration that has not arrived yet.
    for (udid, ts, fast) in conversions.iter().filter(|c| c.1 < last_ts - 11 * 60_000) {
        let by_rule = registrations
            .get(udid)
            .is_some_and(|times| times.iter().any(|r| (0..5_000).contains(&(ts - r))));
        assert_eq!(*fast, by_rule, "udid {udid} at {ts}");
        flagged += u64::from(*fast);
    }
    flagged
}

#[test]
fn fast_checkouts_exist_and_are_exactly_those_the_rule_flags() {
    let run = default_run();
    assert!(fast_checkout_flags_follow_the_rule(run) > 0);
    assert!(run.stats.fast_checkout_events > 0);

    let many = Run::new(
        SynthConfig {
            seed: 5,
            fast_checkout_share: 0.5,
            ..SynthConfig::default()
        },
        100_000,
    );
    let flagged = fast_checkout_flags_follow_the_rule(&many);
    let registrations = many.stats.events_of(EventType::Registration);
    // Half the registering sessions check out (and buy) fast: two flagged events each.
    let per_registration = flagged as f64 / registrations as f64;
    assert!(
        (0.85..=1.15).contains(&per_registration),
        "{per_registration}"
    );
}

#[test]
fn every_paid_campaign_gets_one_spend_record_per_minute() {
    let run = default_run();
    let paid: HashSet<(&str, &str)> = paid_campaigns()
        .map(|c| (c.channel.as_str(), c.name))
        .collect();
    assert!(paid.len() >= 6);
    let mut per_minute: BTreeMap<i64, Vec<(String, String)>> = BTreeMap::new();
    for (arrival, _, json) in run
        .rows()
        .filter(|(a, _, _)| a.truth.kind == ArrivalKind::Spend)
    {
        let minute = ts_ms(&json["ts"]);
        assert_eq!(minute % 60_000, 0, "spend ts is the start of its minute");
        assert!((minute + 61_000..=minute + 75_000).contains(&arrival.arrival_ms));
        let amount = json["amount"].as_f64().unwrap();
        assert!((0.05..=3.0).contains(&amount), "{amount}");
        assert_eq!((amount * 100.0).round() / 100.0, amount);
        assert!(!json["source"].as_str().unwrap().is_empty());
        let key = (
            json["channel"].as_str().unwrap().to_owned(),
            json["campaign"].as_str().unwrap().to_owned(),
        );
        per_minute.entry(minute).or_default().push(key);
    }
    let last_arrival = run.arrivals.last().unwrap().arrival_ms;
    let first_minute = run.config.start_ms.div_euclid(60_000) * 60_000;
    let complete: Vec<_> = per_minute
        .iter()
        .filter(|(m, _)| **m + 75_000 < last_arrival)
        .collect();
    // Every minute from the start, none missing.
    assert_eq!(*complete[0].0, first_minute);
    assert!(complete.len() > 100);
    for (index, (minute, keys)) in complete.iter().enumerate() {
        assert_eq!(**minute, first_minute + index as i64 * 60_000);
        let distinct: HashSet<(&str, &str)> =
            keys.iter().map(|(c, n)| (c.as_str(), n.as_str())).collect();
        assert_eq!(
            keys.len(),
            paid.len(),
            "one record per paid campaign in minute {minute}"
        );
        assert_eq!(distinct, paid);
    }
}

#[test]
fn user_agents_come_from_the_pool_including_tablets() {
    let run = default_run();
    let pool: HashMap<&str, DeviceClass> = user_agents()
        .iter()
        .map(|u| (u.user_agent, u.device))
        .collect();
    let mut seen = HashSet::new();
    for (_, _, json) in run.originals() {
        if let Some(ua) = json.get("user_agent").and_then(Value::as_str) {
            assert!(pool.contains_key(ua), "{ua}");
            seen.insert(ua.to_owned());
        }
    }
    assert!(
        seen.iter().any(|ua| ua.contains("iPad; CPU OS")),
        "classic iPad UA"
    );
    assert!(seen.iter().any(|ua| ua.contains("Android")
        && pool[ua.as_str()] == DeviceClass::Tablet
        && !ua.contains("Mobile")));
    for family in ["iPhone", "Windows NT", "Macintosh", "X11; Linux", "SM-T870"] {
        assert!(seen.iter().any(|ua| ua.contains(family)), "{family}");
    }
    assert!(seen.len() >= 20, "{} distinct UAs", seen.len());
}

#[test]
fn traffic_uses_the_whole_breadth_of_the_contract() {
    let run = default_run();
    let originals: Vec<&Value> = run.originals().map(|(_, _, j)| j).collect();
    let share = |predicate: &dyn Fn(&Value) -> bool| {
        originals.iter().filter(|j| predicate(j)).count() as f64 / originals.len() as f64
    };
    let italian = share(&|j| j.get("UDID").is_some());
    assert!((0.03..=0.07).contains(&italian), "italian names {italian}");
    assert!(share(&|j| j.get("tipo").is_some_and(|t| t == "visualizzazione")) > 0.01);
    assert!(share(&|j| j.get("tipo").is_some_and(|t| t == "acquisto")) > 0.0);
    let epoch_ts = share(&|j| field(j, "ts", "tempo").unwrap().is_i64());
    assert!((0.1..=0.2).contains(&epoch_ts), "epoch ms {epoch_ts}");
    assert!(
        share(&|j| field(j, "ts", "tempo")
            .unwrap()
            .as_str()
            .is_some_and(|t| t.ends_with("+02:00")))
            > 0.0
    );
    // Landing events leave the channel to the server in 15% of sessions, and typed-in
    // returns carry none at all.
    let landings = landing_events(run);
    let landing_share = |predicate: &dyn Fn(&Value) -> bool| {
        landings.iter().filter(|j| predicate(j)).count() as f64 / landings.len() as f64
    };
    let no_channel = landing_share(&|j| {
        j.get("channel").is_none() && (j.get("referrer").is_some() || j.get("utm_medium").is_some())
    });
    assert!(
        (0.07..=0.15).contains(&no_channel),
        "channel left to the server {no_channel}"
    );
    assert!(share(&|j| j.get("channel").is_none() && j.get("utm_medium").is_some()) > 0.01);
    assert!(share(&|j| j.get("channel").is_none() && j.get("gclid").is_some()) > 0.0);
    assert!(share(&|j| j.get("fbclid").is_some()) > 0.0);
    assert!(
        share(&|j| j
            .get("region")
            .is_some_and(|r| r.as_str().unwrap().starts_with("IT-")))
            > 0.0
    );
    assert!(
        share(&|j| j
            .get("region")
            .is_some_and(|r| !r.as_str().unwrap().starts_with("IT-")))
            > 0.0
    );
    assert!(
        share(&|j| j
            .get("ip")
            .is_some_and(|ip| ip.as_str().unwrap().contains(':')))
            > 0.01
    );
    assert!(share(&|j| j["consent"]["marketing"] == false) > 0.05);
    assert!(share(&|j| j.get("consent").is_none()) > 0.02);
    assert!(share(&|j| j.get("consent").is_some_and(Value::is_boolean)) > 0.0);
    assert!(share(&|j| j.get("properties").is_some()) > 0.005);
    assert!(
        share(&|j| j.get("user_agent").is_none()) > 0.0,
        "server-side purchases"
    );
    let leads_with_value =
        share(&|j| j.get("type").is_some_and(|t| t == "lead") && j.get("value").is_some());
    assert!(leads_with_value > 0.0);
    // Every channel shows up, explicitly.
    for channel in vedetta_synth::Channel::ALL {
        assert!(
            share(&|j| j.get("channel").is_some_and(|c| c == channel.as_str())) > 0.005,
            "{channel:?}"
        );
    }
}

#[test]
fn campaign_events_name_the_campaign_twice_and_paid_channels_always_have_one() {
    let run = default_run();
    for (_, line, json) in run.originals() {
        if let Some(campaign) = json.get("campaign") {
            assert_eq!(json.get("utm_campaign"), Some(campaign), "{line}");
        }
        let paid = json
            .get("channel")
            .and_then(Value::as_str)
            .is_some_and(|c| matches!(c, "paid_search" | "display"));
        if paid {
            assert!(json.get("campaign").is_some(), "{line}");
        }
    }
}

#[test]
fn events_without_a_channel_carry_enough_to_derive_it() {
    // A reference default grouping: the hints the generator promises for each channel. The
    // server's grouping must give the same answers (it may know more sources and sites).
    fn derive(json: &Value) -> &'static str {
        let text = |key: &str| json.get(key).and_then(Value::as_str);
        let medium = text("utm_medium");
        let referrer = text("referrer").unwrap_or("");
        if json.get("gclid").is_some() || medium == Some("cpc") {
            "paid_search"
        } else if json.get("fbclid").is_some() || medium == Some("paid_social") {
            "social"
        } else if let Some(medium) = medium {
            match medium {
                "display" => "display",
                "email" => "email",
                "affiliate" => "affiliate",
                other => panic!("unexpected utm_medium {other}"),
            }
        } else if referrer.is_empty() {
            "direct"
        } else if ["google.", "bing.com", "duckduckgo.com", "search.yahoo.com"]
            .iter()
            .any(|engine| referrer.contains(engine))
        {
            "organic"
        } else if [
            "facebook.com",
            "instagram.com",
            "pinterest.",
            "t.co/",
            "linkedin.com",
        ]
        .iter()
        .any(|site| referrer.contains(site))
        {
            "social"
        } else {
            "referral"
        }
    }
    let run = default_run();
    let mut derived = HashMap::new();
    for (arrival, line, json) in run.originals() {
        let truth = arrival.truth.channel.unwrap().as_str();
        let hinted = ["utm_source", "utm_medium", "gclid", "fbclid", "referrer"]
            .iter()
            .any(|key| json.get(key).is_some());
        match json.get("channel").and_then(Value::as_str) {
            Some(explicit) => assert_eq!(explicit, truth, "{line}"),
            // An event that carries nothing (after the landing, a typed-in visit) is direct.
            None if !hinted => {
                assert_eq!(derive(json), "direct", "{line}");
                if truth == "direct" {
                    *derived.entry(truth).or_insert(0) += 1;
                }
            }
            None => {
                assert_eq!(derive(json), truth, "{line}");
                *derived.entry(truth).or_insert(0) += 1;
            }
        }
    }
    // Every channel is sometimes left to the server.
    assert_eq!(derived.len(), 8, "{derived:?}");
}

/// Splits each user's events into sessions by EVENTS.md's rule (30 minutes of event-time
/// inactivity) and checks they are exactly the generated sessions.
fn sessions_follow_the_contract_rule(run: &Run) -> usize {
    let mut by_user: HashMap<String, Vec<(i64, u64)>> = HashMap::new();
    for (arrival, _, json) in run.originals() {
        let (udid, _) = udid_and_type(json);
        let session = arrival.truth.session.unwrap();
        by_user
            .entry(udid)
            .or_default()
            .push((arrival.record.ts_ms(), session));
    }
    let mut sessions = 0;
    let mut used = HashSet::new();
    for events in by_user.values_mut() {
        events.sort_unstable();
        let mut current = events[0].1;
        assert!(used.insert(current));
        sessions += 1;
        for pair in events.windows(2) {
            let gap = pair[1].0 - pair[0].0;
            if gap > 30 * 60_000 {
                current = pair[1].1;
                assert!(used.insert(current), "a generated session was split");
                sessions += 1;
            } else {
                assert_eq!(
                    pair[1].1, current,
                    "two generated sessions merged ({gap} ms apart)"
                );
            }
        }
    }
    sessions
}

#[test]
fn sessions_found_by_the_contract_rule_are_the_generated_ones() {
    let run = default_run();
    let sessions = sessions_follow_the_contract_rule(run);
    assert!(sessions > 30_000, "{sessions}");
    // Users come back: fewer udids than sessions.
    let udids: HashSet<String> = run
        .originals()
        .map(|(_, _, j)| udid_and_type(j).0)
        .collect();
    assert!(udids.len() < sessions * 9 / 10, "{} udids", udids.len());
}

#[test]
fn a_tiny_population_still_keeps_each_users_sessions_apart() {
    let run = Run::new(
        SynthConfig {
            seed: 8,
            users: 200,
            sessions_per_minute: 5.0,
            ..SynthConfig::default()
        },
        20_000,
    );
    assert!(
        run.stats.sessions_skipped > 0,
        "the population is too small for the rate"
    );
    let sessions = sessions_follow_the_contract_rule(&run);
    assert!(sessions > 1_000);
    let udids: HashSet<String> = run
        .originals()
        .map(|(_, _, j)| udid_and_type(j).0)
        .collect();
    assert!(udids.len() <= 200);
}

#[test]
fn stats_agree_with_the_stream() {
    let run = default_run();
    let mut expected = SynthStats {
        sessions_started: run.stats.sessions_started,
        sessions_skipped: run.stats.sessions_skipped,
        ..SynthStats::default()
    };
    for (arrival, _, json) in run.rows() {
        expected.records += 1;
        match arrival.truth.kind {
            ArrivalKind::Original => {
                expected.events += 1;
                let (_, event_type) = udid_and_type(json);
                let index = EventType::ALL
                    .iter()
                    .position(|t| t.as_str() == event_type)
                    .unwrap();
                expected.events_by_type[index] += 1;
                expected.late_events += u64::from(arrival.truth.late);
                if arrival.truth.fast_checkout {
                    expected.fast_checkout_events += 1;
                } else if event_type == "purchase" {
                    expected.clean_purchases += 1;
                    let value = field(json, "value", "valore").unwrap().as_f64().unwrap();
                    expected.clean_revenue_cents += (value * 100.0).round() as u64;
                }
            }
            ArrivalKind::ExactRetry => expected.exact_duplicates += 1,
            ArrivalKind::DoubleFire => expected.near_duplicates += 1,
            ArrivalKind::OrderResend => expected.order_duplicates += 1,
            ArrivalKind::Refund => {
                expected.refunds += 1;
                let value = field(json, "value", "valore").unwrap().as_f64().unwrap();
                expected.refund_cents += (value * 100.0).round() as u64;
            }
            ArrivalKind::Spend => {
                expected.spend_records += 1;
                expected.spend_cents += (json["amount"].as_f64().unwrap() * 100.0).round() as u64;
            }
        }
    }
    expected.late_sessions = run.stats.late_sessions; // counted when planned, checked elsewhere
    assert_eq!(run.stats, expected);
    assert!(run.stats.clean_purchases > 500);
}

#[test]
fn delivery_settings_do_not_change_the_logical_events() {
    // The same seed with and without duplicates, order re-sends, lateness, disorder and spend:
    // the logical events are byte-identical, so a clean run is the answer key for a messy one.
    let messy = SynthConfig::default();
    let mut clean = messy.clone();
    clean.duplicate_share = 0.0;
    clean.late_share = 0.0;
    clean.late_session_share = 0.0;
    clean.max_disorder_ms = 0;
    clean.spend = false;
    clean.order_resend_share = 0.0;
    let logical = |config: SynthConfig| {
        let mut lines: Vec<(u64, String)> = Generator::new(config)
            .unwrap()
            .take(60_000)
            .filter(|a| a.truth.kind == ArrivalKind::Original && a.truth.session.unwrap() < 5_000)
            .map(|a| {
                let mut out = Vec::new();
                to_ndjson_line(&a.record, &mut out);
                (a.truth.session.unwrap(), String::from_utf8(out).unwrap())
            })
            .collect();
        lines.sort();
        lines
    };
    let from_clean = logical(clean.clone());
    assert!(from_clean.len() > 10_000);
    assert_eq!(from_clean, logical(messy));
    // And a clean run is clean.
    let stats = {
        let mut generator = Generator::new(clean).unwrap();
        generator.by_ref().take(50_000).for_each(drop);
        generator.stats()
    };
    assert_eq!(
        (stats.duplicates(), stats.late_events, stats.spend_records),
        (0, 0, 0)
    );
}

#[test]
fn the_reorder_buffer_stays_bounded() {
    let mut generator = Generator::new(SynthConfig::default()).unwrap();
    let mut most = 0;
    for _ in 0..1_000_000 {
        generator.next_arrival();
        most = most.max(generator.buffered());
    }
    // 120 sessions a minute, ~3.5 events each, held for their offset in the session plus
    // delays: a few thousand records, independent of the run length.
    assert!(most < 20_000, "{most} records buffered");
}

#[test]
fn sparse_traffic_still_flows_and_spend_fills_the_quiet_minutes() {
    let run = Run::new(
        SynthConfig {
            seed: 3,
            sessions_per_minute: 0.2,
            ..SynthConfig::default()
        },
        20_000,
    );
    for pair in run.arrivals.windows(2) {
        assert!(pair[0].arrival_ms <= pair[1].arrival_ms);
    }
    let spend_minutes: HashSet<i64> = run
        .arrivals
        .iter()
        .filter(|a| a.truth.kind == ArrivalKind::Spend)
        .map(|a| a.record.ts_ms())
        .collect();
    let span_minutes = (run.arrivals.last().unwrap().arrival_ms - run.config.start_ms) / 60_000;
    assert!(spend_minutes.len() as i64 >= span_minutes - 2);
    assert!(run.stats.events > 100);
}

#[test]
fn bad_configs_are_refused_by_name() {
    let error = Generator::new(SynthConfig {
        duplicate_share: 2.0,
        ..SynthConfig::default()
    })
    .unwrap_err();
    assert!(error.to_string().contains("duplicate_share"));
    // A rate the population cannot sustain is refused rather than silently not delivered.
    let error = Generator::new(SynthConfig {
        users: 1_000,
        sessions_per_minute: 100.0,
        ..SynthConfig::default()
    })
    .unwrap_err();
    assert!(error.to_string().contains("at least 3100 users"), "{error}");
}

#[test]
fn output_for_a_seed_is_pinned() {
    // Golden fingerprint of the default configuration's first 2,000 lines. Files generated by
    // `vedetta gen` and golden KPI files in other crates depend on this output: when the model
    // changes on purpose, update the value and say so in the changelog; when it changes by
    // accident (a dependency, a platform, a refactor), that is a bug.
    let fingerprint = |config: &SynthConfig| {
        let bytes = ndjson(config, 2_000);
        let fnv1a = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, &byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        (bytes.len(), fnv1a)
    };
    assert_eq!(
        fingerprint(&SynthConfig::default()),
        (797_499, 12_432_559_746_173_456_771)
    );
    // Every-event tagging without order re-sends is the traffic from before realistic tagging,
    // byte for byte (this is the value pinned then).
    let before_realistic_tagging = SynthConfig {
        tagging: Tagging::EveryEvent,
        order_resend_share: 0.0,
        ..SynthConfig::default()
    };
    assert_eq!(
        fingerprint(&before_realistic_tagging),
        (929_240, 17_026_580_156_295_947_439)
    );
}

/// Each generated session's landing event: its first original by event time.
fn landing_events(run: &Run) -> Vec<&Value> {
    let mut first: HashMap<u64, (i64, &Value)> = HashMap::new();
    for (arrival, _, json) in run.originals() {
        let ts = ts_ms(field(json, "ts", "tempo").unwrap());
        let entry = first
            .entry(arrival.truth.session.unwrap())
            .or_insert((ts, json));
        if ts < entry.0 {
            *entry = (ts, json);
        }
    }
    first.into_values().map(|(_, json)| json).collect()
}

const ATTRIBUTION_FIELDS: [&str; 8] = [
    "channel",
    "campaign",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "gclid",
    "fbclid",
    "referrer",
];

fn carries_attribution(json: &Value) -> bool {
    ATTRIBUTION_FIELDS.iter().any(|key| json.get(key).is_some())
}

#[test]
fn realistic_tagging_puts_attribution_on_the_landing_event_only() {
    let run = default_run();
    // The landing event of each session, by (udid, first ts); everything else carries nothing.
    let landing_ids: HashSet<&str> = landing_events(run)
        .into_iter()
        .map(|json| json["event_id"].as_str().unwrap())
        .collect();
    let (mut tagged_landings, mut later) = (0, 0);
    for (_, line, json) in run.originals() {
        if landing_ids.contains(json["event_id"].as_str().unwrap()) {
            tagged_landings += usize::from(carries_attribution(json));
        } else {
            assert!(
                !carries_attribution(json),
                "a later event is tagged: {line}"
            );
            later += 1;
        }
    }
    assert!(later > landing_ids.len(), "{later} later events");
    assert!(tagged_landings * 2 > landing_ids.len(), "{tagged_landings}");
}

#[test]
fn a_third_of_returning_sessions_are_typed_in_and_others_come_back_another_way() {
    let run = default_run();
    // Sessions in start order per user, with their label channel and landing event.
    // (The label of a landing event is its session's channel: it carries the session's hints,
    // or nothing when the session is direct.)
    let mut sessions: BTreeMap<u64, (i64, String, Channel, bool)> = BTreeMap::new();
    for (arrival, _, json) in run.originals() {
        let ts = ts_ms(field(json, "ts", "tempo").unwrap());
        let (udid, _) = udid_and_type(json);
        let label = arrival.truth.session.unwrap();
        let entry = sessions.entry(label).or_insert((
            ts,
            udid,
            arrival.truth.channel.unwrap(),
            carries_attribution(json),
        ));
        if ts < entry.0 {
            entry.0 = ts;
            entry.2 = arrival.truth.channel.unwrap();
            entry.3 = carries_attribution(json);
        }
    }
    let mut by_user: HashMap<String, Vec<(i64, Channel, bool)>> = HashMap::new();
    for (start, udid, channel, tagged) in sessions.into_values() {
        by_user
            .entry(udid)
            .or_default()
            .push((start, channel, tagged));
    }
    let (mut returning, mut typed_in, mut switched) = (0, 0, 0);
    for visits in by_user.values_mut() {
        visits.sort_unstable_by_key(|v| v.0);
        for pair in visits.windows(2) {
            let (previous, this) = (pair[0], pair[1]);
            returning += 1;
            if !this.2 && this.1 == Channel::Direct {
                typed_in += 1;
            } else if this.1 != previous.1 {
                switched += 1;
            }
        }
    }
    assert!(returning > 2_000, "{returning} returning sessions");
    let typed_in_share = typed_in as f64 / returning as f64;
    // A third typed in, plus the few direct sessions left to the server.
    assert!((0.3..=0.4).contains(&typed_in_share), "{typed_in_share}");
    let switched_share = switched as f64 / returning as f64;
    assert!(switched_share > 0.3, "{switched_share}");
}

#[test]
fn some_orders_are_sent_again_reloaded_or_by_webhook_with_a_new_event_id() {
    let run = default_run();
    let mut purchases: HashMap<&str, (i64, i64, &Value)> = HashMap::new();
    let (mut reloads, mut webhooks) = (0, 0);
    let mut ids = HashSet::new();
    for (arrival, line, json) in run.rows() {
        let Some(event_id) = json.get("event_id").and_then(Value::as_str) else {
            continue;
        };
        let ts = ts_ms(field(json, "ts", "tempo").unwrap());
        match arrival.truth.kind {
            ArrivalKind::Original => {
                ids.insert(event_id);
                if let Some(order) = json.get("order_id").and_then(Value::as_str) {
                    let previous = purchases.insert(order, (ts, arrival.arrival_ms, json));
                    assert!(previous.is_none(), "two purchases share an order: {line}");
                }
            }
            ArrivalKind::OrderResend => {
                assert!(ids.insert(event_id), "a re-send has a new event_id: {line}");
                let order = json["order_id"].as_str().unwrap();
                let &(original_ts, original_arrival, original) = purchases
                    .get(order)
                    .expect("the original purchase arrived before");
                assert!(arrival.arrival_ms > original_arrival, "{line}");
                assert_eq!(udid_and_type(json).1, "purchase");
                assert_eq!(
                    field(json, "value", "valore"),
                    field(original, "value", "valore")
                );
                if json.get("user_agent").is_some() {
                    assert!((2_000..=60_000).contains(&(ts - original_ts)), "{line}");
                    assert_eq!(udid_and_type(json), udid_and_type(original));
                    reloads += 1;
                } else {
                    assert!((5_000..=600_000).contains(&(ts - original_ts)), "{line}");
                    assert!(!carries_attribution(json), "{line}");
                    webhooks += 1;
                }
            }
            ArrivalKind::ExactRetry
            | ArrivalKind::DoubleFire
            | ArrivalKind::Refund
            | ArrivalKind::Spend => {}
        }
    }
    assert_eq!(reloads + webhooks, run.stats.order_duplicates);
    assert!(reloads > 10 && webhooks > 10, "{reloads} {webhooks}");
    let share = run.stats.order_duplicates as f64 / purchases.len() as f64;
    assert!((0.03..=0.07).contains(&share), "{share}");
}

#[test]
fn output_at_a_high_rate_is_pinned() {
    // Golden fingerprint of 300,000 arrivals at about 10,000 events/s with refunds (which
    // arrive minutes to days after their order): the reorder buffer then holds hundreds of
    // thousands of records, spread over minutes and days, so this pins the order in which the
    // buffer releases them (arrival time, then generation order), not only what is generated.
    let config = SynthConfig {
        seed: 11,
        users: 2_000_000,
        sessions_per_minute: 60_000.0,
        refund_share: 0.05,
        late_session_share: 0.01,
        late_share: 0.01,
        ..SynthConfig::default()
    };
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    let mut bytes = 0;
    let mut line = Vec::new();
    for arrival in Generator::new(config).unwrap().take(300_000) {
        line.clear();
        line.extend_from_slice(&arrival.arrival_ms.to_le_bytes());
        to_ndjson_line(&arrival.record, &mut line);
        bytes += line.len();
        hash = line.iter().fold(hash, |hash, &byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    }
    assert_eq!((bytes, hash), (128_602_321, 659_726_524_748_633_348));
}
