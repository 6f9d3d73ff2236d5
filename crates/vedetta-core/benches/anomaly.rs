//! The anomaly model's cost: one closed hour learnt (check, then update) for 10,000 hourly
//! series, the budget being one second of CPU. The series are warmed with three weeks
//! of generated hours first, so checks run the whole path (history long enough, scale known).
//!
//! `cargo bench -p vedetta-core --bench anomaly`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use divan::{Bencher, black_box, counter::ItemsCount};
use jiff::tz::TimeZone;
use vedetta_core::watch::anomaly::{AnomalyConfig, AnomalyModel, Granularity, SeriesKind};

const SERIES: usize = 10_000;
const HOUR: i64 = 3_600_000;

fn main() {
    divan::main();
}

fn value(series: usize, hour: i64) -> f64 {
    // Deterministic, seasonal-ish and different per series; the cost does not depend on it.
    let h = (hour % 24) as f64;
    let base = 5.0 + (series % 50) as f64;
    (base * (1.0 + (h / 24.0 * std::f64::consts::TAU).sin() * 0.5)
        + ((series as i64 * 7 + hour) % 5) as f64)
        .round()
}

#[divan::bench(args = [SeriesKind::Count, SeriesKind::Ratio])]
fn check_and_update_10k_series_one_hour(bencher: Bencher<'_, '_>, kind: SeriesKind) {
    let model = AnomalyModel::new(
        AnomalyConfig::new(Granularity::Hourly, kind),
        TimeZone::get("Europe/Rome").unwrap(),
    )
    .unwrap();
    let start: i64 = "2024-03-04T00:00:00+01:00"
        .parse::<jiff::Timestamp>()
        .unwrap()
        .as_millisecond();
    let warm_hours = 21 * 24;
    let mut states: Vec<_> = (0..SERIES).map(|_| model.new_series()).collect();
    for (i, state) in states.iter_mut().enumerate() {
        for h in 0..warm_hours {
            model
                .update(state, start + h * HOUR, Some(value(i, h) / 100.0))
                .unwrap();
        }
    }
    let mut hour = warm_hours;
    bencher
        .counter(ItemsCount::new(SERIES))
        .bench_local(move || {
            let ts = start + hour * HOUR;
            let mut anomalies = 0;
            for (i, state) in states.iter_mut().enumerate() {
                let v = Some(value(i, hour) / 100.0);
                if model.check(state, ts, v).unwrap().is_some() {
                    anomalies += 1;
                }
                model.update(state, ts, v).unwrap();
            }
            hour += 1;
            black_box(anomalies)
        });
}
