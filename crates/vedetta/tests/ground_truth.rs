//! The end-to-end answer key: a generated stream — out of order, with exact retries,
//! double-fires, fast checkouts, sessions delivered after the allowed lateness, events
//! without a channel, spend — goes through the real server over HTTP, and `/v1/kpis` must
//! equal the independent batch computation (`vedetta_synth::truth`) exactly: every window,
//! every (channel, campaign, device, region) group, every counter, money to the micro-unit,
//! at 1m, 1h and 1d.
//!
//! The server geolocates with a GeoIP database built from the generator's IP plan; the
//! truth takes the same plan as a table, and the generator's intended channels and device
//! classes, so neither side's parsers are checked against themselves.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use support::{Server, client, get_json, wait_processed};
use vedetta_synth::truth::{self, IpRegion, Truth, TruthConfig};
use vedetta_synth::{Arrival, Generator, SynthConfig, SynthRecord, to_ndjson_line};

/// (window start, channel, campaign, device, region)
type RowKey = (i64, String, String, String, String);
/// (events by type, sessions, converting sessions, conversions, revenue µ, flagged, duplicates, late)
type RowValue = (BTreeMap<String, i64>, i64, i64, i64, i64, i64, i64, i64);

fn ms(text: &str) -> i64 {
    text.parse::<jiff::Timestamp>().unwrap().as_millisecond()
}

fn micros(value: &serde_json::Value) -> i64 {
    (value.as_f64().unwrap() * 1e6).round() as i64
}

fn truth_rows(truth: &Truth, granularity: &str) -> BTreeMap<RowKey, RowValue> {
    truth
        .rows
        .iter()
        .filter(|r| r.granularity == granularity)
        .map(|r| {
            (
                (
                    r.window_start_ms,
                    r.channel.clone(),
                    r.campaign.clone(),
                    r.device.clone(),
                    r.region.clone(),
                ),
                (
                    r.events
                        .iter()
                        .map(|(k, v)| (k.clone(), *v as i64))
                        .collect(),
                    r.sessions as i64,
                    r.converting_sessions as i64,
                    r.conversions as i64,
                    r.revenue_micros,
                    r.flagged as i64,
                    r.duplicates as i64,
                    r.late as i64,
                ),
            )
        })
        .collect()
}

fn api_rows(answer: &serde_json::Value) -> BTreeMap<RowKey, RowValue> {
    let text = |row: &serde_json::Value, name: &str| row[name].as_str().unwrap().to_string();
    let int = |row: &serde_json::Value, name: &str| row[name].as_i64().unwrap();
    answer["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                (
                    ms(row["window_start"].as_str().unwrap()),
                    text(row, "channel"),
                    text(row, "campaign"),
                    text(row, "device"),
                    text(row, "region"),
                ),
                (
                    row["events"]
                        .as_object()
                        .unwrap()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_i64().unwrap()))
                        .collect(),
                    int(row, "sessions"),
                    int(row, "converting_sessions"),
                    int(row, "conversions"),
                    micros(&row["revenue"]),
                    int(row, "flagged"),
                    int(row, "duplicates"),
                    int(row, "late"),
                ),
            )
        })
        .collect()
}

fn assert_same<K: Ord + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
    what: &str,
    expected: &BTreeMap<K, V>,
    actual: &BTreeMap<K, V>,
) {
    let mut problems = Vec::new();
    for (key, value) in expected {
        match actual.get(key) {
            None => problems.push(format!("missing {key:?} = {value:?}")),
            Some(got) if got != value => {
                problems.push(format!("{key:?}: expected {value:?}, got {got:?}"))
            }
            Some(_) => {}
        }
    }
    for (key, value) in actual {
        if !expected.contains_key(key) {
            problems.push(format!("unexpected {key:?} = {value:?}"));
        }
    }
    assert!(
        problems.is_empty(),
        "{what}: {} differences in {} expected rows, first ones:\n{}",
        problems.len(),
        expected.len(),
        problems[..problems.len().min(8)].join("\n")
    );
}

#[test]
fn kpis_over_http_equal_the_independent_batch_truth_at_every_granularity() {
    // About two hours of traffic ending a little before now, so intake accepts all of it.
    let now = support::now_ms();
    let config = SynthConfig {
        seed: 20_261_125,
        start_ms: now - 3 * 3_600_000,
        sessions_per_minute: 150.0,
        users: 20_000,
        ..SynthConfig::default()
    };
    let arrivals: Vec<Arrival> = Generator::new(config)
        .unwrap()
        .take_while(|a| a.arrival_ms < now - 60 * 60_000)
        .collect();
    let (events, spend): (Vec<&Arrival>, Vec<&Arrival>) = arrivals
        .iter()
        .partition(|a| matches!(a.record, SynthRecord::Event(_)));

    // The answer key, over the records in the order the server will log them.
    let geoip = vedetta_synth::geoip::catalog_region_networks()
        .into_iter()
        .map(|(network, prefix_len, region)| IpRegion {
            network,
            prefix_len,
            region: region.iso_code.to_string(),
        })
        .collect();
    let truth = truth::compute(
        events.iter().chain(&spend).copied(),
        &TruthConfig {
            geoip,
            ..TruthConfig::default()
        },
    );
    let total = |granularity: &str, f: fn(&truth::TruthRow) -> u64| -> u64 {
        truth
            .rows
            .iter()
            .filter(|r| r.granularity == granularity)
            .map(f)
            .sum()
    };
    assert!(
        total("1m", |r| r.duplicates) > 100,
        "the stream has duplicates"
    );
    assert!(
        total("1m", |r| r.flagged) > 0,
        "the stream has fast checkouts"
    );
    assert!(total("1m", |r| r.late) > 0, "the stream has late events");
    assert!(total("1m", |r| r.conversions) > 100, "the stream converts");

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with_regions(dir.path());
    let http = client();
    let send = |path: &str, records: &[&Arrival]| {
        for chunk in records.chunks(1000) {
            let mut body = Vec::new();
            for arrival in chunk {
                to_ndjson_line(&arrival.record, &mut body);
            }
            let response = http
                .post(server.url(path))
                .header("content-type", "application/x-ndjson")
                .body(body)
                .send()
                .unwrap();
            let status = response.status();
            let answer: serde_json::Value =
                serde_json::from_str(&response.text().unwrap()).unwrap();
            assert_eq!(status, 200, "{answer}");
            assert_eq!(answer["accepted"], chunk.len(), "{answer}");
        }
    };
    // One request at a time: the log order is the generator's arrival order.
    send("/v1/events", &events);
    send("/v1/costs", &spend);
    let status = wait_processed(&http, &server);
    assert_eq!(status["log_end_offset"], arrivals.len());

    let range = "from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z";
    for granularity in ["1m", "1h", "1d"] {
        let answer = get_json(
            &http,
            &server.url(&format!(
                "/v1/kpis?granularity={granularity}&{range}&group_by=channel,campaign,device,region"
            )),
        );
        assert_same(
            &format!("{granularity} rows"),
            &truth_rows(&truth, granularity),
            &api_rows(&answer),
        );
        let spend_answer = get_json(
            &http,
            &server.url(&format!(
                "/v1/kpis?granularity={granularity}&{range}&group_by=channel,campaign"
            )),
        );
        let actual: BTreeMap<(i64, String, String), i64> = spend_answer["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                (
                    (
                        ms(row["window_start"].as_str().unwrap()),
                        row["channel"].as_str().unwrap().to_string(),
                        row["campaign"].as_str().unwrap().to_string(),
                    ),
                    micros(&row["spend"]),
                )
            })
            .filter(|(_, spend)| *spend != 0)
            .collect();
        let expected: BTreeMap<(i64, String, String), i64> = truth
            .spend
            .iter()
            .filter(|r| r.granularity == granularity)
            .map(|r| {
                (
                    (r.window_start_ms, r.channel.clone(), r.campaign.clone()),
                    r.spend_micros,
                )
            })
            .collect();
        assert_same(&format!("{granularity} spend"), &expected, &actual);
    }
    eprintln!(
        "{} records, {} truth rows: /v1/kpis equals the truth at 1m, 1h and 1d",
        arrivals.len(),
        truth.rows.len()
    );
    server.stop();
}
