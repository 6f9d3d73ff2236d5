#![allow(clippy::unwrap_used)]
use super::*;

const HOUR: i64 = 3_600_000;

fn rome() -> TimeZone {
    TimeZone::get("Europe/Rome").unwrap()
}

fn ms(text: &str) -> i64 {
    text.parse::<jiff::Timestamp>().unwrap().as_millisecond()
}

fn hourly(kind: SeriesKind) -> AnomalyModel {
    AnomalyModel::new(AnomalyConfig::new(Granularity::Hourly, kind), rome()).unwrap()
}

/// A smooth noiseless-ish count with a daily and a weekly cycle (deterministic wiggle).
fn count_at(start_ms: i64) -> f64 {
    let local = rome().to_datetime(jiff::Timestamp::from_millisecond(start_ms).unwrap());
    let hour = f64::from(local.hour());
    let weekend = local.weekday().to_monday_zero_offset() >= 5;
    let daily = 20.0 + 15.0 * ((hour - 14.0) / 24.0 * std::f64::consts::TAU).cos();
    let wiggle = ((start_ms / HOUR) % 7) as f64 - 3.0;
    (daily * if weekend { 0.6 } else { 1.0 } + wiggle).round()
}

#[test]
fn config_errors_name_the_field() {
    let mut config = AnomalyConfig::new(Granularity::Hourly, SeriesKind::Count);
    config.deviations = Some(f64::NAN);
    assert_eq!(
        AnomalyModel::new(config, rome()).unwrap_err().field,
        "deviations"
    );
    config.deviations = Some(0.5);
    assert_eq!(
        AnomalyModel::new(config, rome()).unwrap_err().field,
        "deviations"
    );
    config.deviations = Some(3.0);
    config.min_history = Some(24);
    let err = AnomalyModel::new(config, rome()).unwrap_err();
    assert_eq!(err.field, "min_history");
    assert!(
        err.to_string()
            .starts_with("anomaly.min_history: 24 is not in [192, 8784]")
    );
    config.min_history = Some(10);
    config.granularity = Granularity::Daily;
    assert!(AnomalyModel::new(config, rome()).is_ok());
    assert_eq!(
        AnomalyConfig::new(Granularity::Daily, SeriesKind::Ratio).min_history_periods(),
        14
    );
    let parsed: Result<AnomalyConfig, _> =
        serde_json::from_str(r#"{"granularity":"hourly","sensitivity":3}"#);
    assert!(parsed.is_err(), "unknown keys are refused");
}

#[test]
fn periods_must_start_on_a_local_boundary_and_come_in_order() {
    let model = hourly(SeriesKind::Count);
    let mut state = model.new_series();
    let t0 = ms("2024-03-04T00:00:00+01:00");
    assert_eq!(
        model.update(&mut state, t0 + 60_000, Some(1.0)),
        Err(SeriesError::NotAligned {
            start_ms: t0 + 60_000,
            granularity: Granularity::Hourly
        })
    );
    model.update(&mut state, t0, Some(1.0)).unwrap();
    assert_eq!(
        model.update(&mut state, t0, Some(1.0)),
        Err(SeriesError::NotAfterLast { start_ms: t0 })
    );
    assert_eq!(
        model.update(&mut state, t0 + HOUR, Some(-1.0)),
        Err(SeriesError::BadValue { value: -1.0 })
    );
    assert!(
        model
            .update(&mut state, t0 + HOUR, Some(f64::INFINITY))
            .is_err()
    );
    assert_eq!(
        state.observed_periods(),
        1,
        "refused updates change nothing"
    );
    // A daily model wants local midnights: 23:00 UTC in winter is midnight in Rome.
    let daily = AnomalyModel::new(
        AnomalyConfig::new(Granularity::Daily, SeriesKind::Count),
        rome(),
    )
    .unwrap();
    let mut day_state = daily.new_series();
    assert!(daily.update(&mut day_state, t0, Some(3.0)).is_ok());
    assert!(matches!(
        daily.update(&mut day_state, ms("2024-03-05T00:00:00Z"), Some(3.0)),
        Err(SeriesError::NotAligned { .. })
    ));
    assert!(matches!(
        model.update(&mut day_state, t0 + HOUR, Some(1.0)),
        Err(SeriesError::Mismatch { .. })
    ));
}

#[test]
fn dst_days_use_local_hours_of_the_week() {
    let model = hourly(SeriesKind::Count);
    // 2024-03-31 02:00 does not exist in Rome: 01:00 UTC is 03:00 local (CEST).
    let slot = model.slot(ms("2024-03-31T01:00:00Z")).unwrap();
    assert_eq!(slot.season, 6 * 24 + 3, "Sunday 03:00");
    // 2024-10-27: 02:00 local happens twice; both are Sunday 02:00.
    let first = model.slot(ms("2024-10-27T00:00:00Z")).unwrap();
    let second = model.slot(ms("2024-10-27T01:00:00Z")).unwrap();
    assert_eq!((first.season, second.season), (6 * 24 + 2, 6 * 24 + 2));
    assert!(second.period > first.period, "and they stay in order");
    let daily = AnomalyModel::new(
        AnomalyConfig::new(Granularity::Daily, SeriesKind::Count),
        rome(),
    )
    .unwrap();
    let mut state = daily.new_series();
    // The 25-hour day and the one after it.
    daily
        .update(&mut state, ms("2024-10-27T00:00:00+02:00"), Some(5.0))
        .unwrap();
    daily
        .update(&mut state, ms("2024-10-28T00:00:00+01:00"), Some(5.0))
        .unwrap();
}

#[test]
fn nothing_is_checked_before_the_minimum_history() {
    let model = hourly(SeriesKind::Count);
    let mut state = model.new_series();
    let t0 = ms("2024-03-04T00:00:00+01:00");
    let mut t = t0;
    while state.observed_periods() < model.config().min_history_periods() {
        assert_eq!(model.check(&state, t, Some(10_000.0)).unwrap(), None);
        model.update(&mut state, t, Some(count_at(t))).unwrap();
        t += HOUR;
    }
    assert!(model.check(&state, t, Some(10_000.0)).unwrap().is_some());
}

#[test]
fn a_spike_and_a_drop_fire_in_their_direction_and_normal_hours_do_not() {
    let mut config = AnomalyConfig::new(Granularity::Hourly, SeriesKind::Count);
    config.direction = Direction::Up;
    let up = AnomalyModel::new(config, rome()).unwrap();
    let both = hourly(SeriesKind::Count);
    let mut state = both.new_series();
    let mut t = ms("2024-03-04T00:00:00+01:00");
    let mut false_alarms = 0;
    for _ in 0..(21 * 24) {
        if both.check(&state, t, Some(count_at(t))).unwrap().is_some() {
            false_alarms += 1;
        }
        both.update(&mut state, t, Some(count_at(t))).unwrap();
        t += HOUR;
    }
    assert_eq!(false_alarms, 0);
    let usual = count_at(t);
    let band = both.expected(&state, t).unwrap().unwrap();
    assert!(band.low < usual && usual < band.high, "{band:?} {usual}");
    assert!((band.expected - usual).abs() < 4.0, "{band:?} {usual}");

    let spike = both.check(&state, t, Some(usual * 4.0)).unwrap().unwrap();
    assert_eq!(spike.direction, Direction::Up);
    assert!(spike.score > DEFAULT_COUNT_DEVIATIONS);
    assert_eq!(spike.observed, usual * 4.0);
    assert!(spike.high < usual * 4.0);
    let drop = both.check(&state, t, Some(0.0)).unwrap().unwrap();
    assert_eq!(drop.direction, Direction::Down);
    assert!(up.check(&state, t, Some(0.0)).unwrap().is_none());
    assert!(up.check(&state, t, Some(usual * 4.0)).unwrap().is_some());
}

#[test]
fn one_spike_does_not_widen_the_band_for_long() {
    let model = hourly(SeriesKind::Count);
    let mut state = model.new_series();
    let mut t = ms("2024-03-04T00:00:00+01:00");
    for _ in 0..(21 * 24) {
        model.update(&mut state, t, Some(count_at(t))).unwrap();
        t += HOUR;
    }
    let before = model.expected(&state, t + 7 * 24 * HOUR).unwrap().unwrap();
    model
        .update(&mut state, t, Some(count_at(t) * 20.0))
        .unwrap();
    let after = model.expected(&state, t + 7 * 24 * HOUR).unwrap().unwrap();
    // Clamped: the same hour next week expects at most a few percent more.
    assert!(
        after.expected < before.expected * 1.15,
        "{before:?} {after:?}"
    );
    assert!(after.high < before.high * 1.3, "{before:?} {after:?}");
}

#[test]
fn undefined_ratios_teach_nothing_and_check_nothing() {
    let model = hourly(SeriesKind::Ratio);
    let mut state = model.new_series();
    let mut t = ms("2024-03-04T00:00:00+01:00");
    for i in 0..(20 * 24) {
        let value = if i % 5 == 0 {
            None
        } else {
            Some(0.02 + 0.0005 * f64::from(i % 11))
        };
        model.update(&mut state, t, value).unwrap();
        t += HOUR;
    }
    assert_eq!(state.observed_periods(), 20 * 24 * 4 / 5);
    assert_eq!(model.check(&state, t, None).unwrap(), None);
    let band = model.expected(&state, t).unwrap().unwrap();
    assert!(
        band.low >= 0.0 && band.low < 0.02 && band.high > 0.025,
        "{band:?}"
    );
    assert!(model.check(&state, t, Some(0.2)).unwrap().is_some());
}

#[test]
fn series_states_round_trip_and_other_formats_are_refused() {
    let model = hourly(SeriesKind::Count);
    let mut state = model.new_series();
    let mut t = ms("2024-03-04T00:00:00+01:00");
    for _ in 0..300 {
        model.update(&mut state, t, Some(count_at(t))).unwrap();
        t += HOUR;
    }
    let bytes = state.encode();
    assert!(bytes.len() < 1_200, "{} bytes", bytes.len());
    assert_eq!(SeriesState::decode(&bytes).unwrap(), state);
    let mut future = bytes.clone();
    future[0] = 2;
    assert_eq!(
        SeriesState::decode(&future).unwrap_err(),
        StateFormatError::Version { found: 2 }
    );
    assert_eq!(
        SeriesState::decode(&[]).unwrap_err(),
        StateFormatError::Empty
    );
    assert!(SeriesState::decode(&bytes[..bytes.len() / 2]).is_err());
    let mut short = state.clone();
    short.seasonal.pop();
    assert_eq!(
        SeriesState::decode(&short.encode()).unwrap_err(),
        StateFormatError::Inconsistent("slot counts")
    );
}

#[test]
fn the_contributor_is_the_part_that_moved_most_the_same_way() {
    let parts = [
        SumPart {
            dimension: "channel",
            value: "social",
            observed: 10.0,
            expected: 40.0,
        },
        SumPart {
            dimension: "channel",
            value: "search",
            observed: 52.0,
            expected: 50.0,
        },
        SumPart {
            dimension: "device",
            value: "mobile",
            observed: 30.0,
            expected: 55.0,
        },
        SumPart {
            dimension: "device",
            value: "desktop",
            observed: 32.0,
            expected: 35.0,
        },
    ];
    let top = top_sum_contributor(62.0, 90.0, &parts).unwrap();
    assert_eq!(
        (top.dimension.as_str(), top.value.as_str()),
        ("channel", "social")
    );
    assert!((top.share - 30.0 / 28.0).abs() < 1e-12);
    assert_eq!((top.observed, top.expected), (10.0, 40.0));
    assert_eq!(top_sum_contributor(90.0, 90.0, &parts), None);
    // Only parts that moved up: nothing explains a fall.
    assert_eq!(top_sum_contributor(62.0, 90.0, &parts[1..2]), None);
    assert_eq!(top_sum_contributor(f64::NAN, 90.0, &parts), None);
}

#[test]
fn the_ratio_contributor_weighs_parts_by_their_volume() {
    // CPA: spend / conversions. Social's CPA doubled on a large volume; display's tripled on
    // a tiny one. Social explains the rise.
    let parts = [
        RatioPart {
            dimension: "channel",
            value: "social",
            numerator: 800.0,
            denominator: 20.0,
            expected_ratio: 20.0,
        },
        RatioPart {
            dimension: "channel",
            value: "display",
            numerator: 60.0,
            denominator: 1.0,
            expected_ratio: 20.0,
        },
        RatioPart {
            dimension: "channel",
            value: "search",
            numerator: 380.0,
            denominator: 19.0,
            expected_ratio: 20.0,
        },
        RatioPart {
            dimension: "region",
            value: "none",
            numerator: 0.0,
            denominator: 0.0,
            expected_ratio: 20.0,
        },
    ];
    let whole = 1240.0 / 40.0;
    let top = top_ratio_contributor(whole, 20.0, 40.0, &parts).unwrap();
    assert_eq!(top.value, "social");
    assert_eq!((top.observed, top.expected), (40.0, 20.0));
    // (800 − 20·20) / 40 = 10 of the 11 points of rise.
    assert!((top.share - 10.0 / 11.0).abs() < 1e-12, "{}", top.share);
    assert_eq!(top_ratio_contributor(whole, 20.0, 0.0, &parts), None);
}
