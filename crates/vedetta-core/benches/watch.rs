//! Rule evaluation: 1,000 rules × 100 groups judged on one minute of data.
//!
//! `cargo bench -p vedetta-core --bench watch`. The target (issue 10): ≤ 50 ms per minute
//! of data. The rules are threshold rules over five KPIs with different thresholds, in ten
//! shapes (group_by, filter and window vary), so the sums are not all shared; the data is
//! 100 channel × campaign groups, each split over four device × region rows per minute,
//! for the fifteen minutes the longest window reads, plus spend per group and minute.

#![allow(clippy::unwrap_used)]

use divan::{Bencher, black_box};
use std::collections::BTreeMap;
use vedetta_core::pipeline::kpi::{KpiCounters, SpendCounters};
use vedetta_core::watch::evaluate::{Evaluator, MinuteRow, NoHistory, SpendMinute, WindowData};
use vedetta_core::watch::rules::{RawRule, Timing, check_rules};

const T0: i64 = 1_712_318_400_000;
const MINUTE: i64 = 60_000;

fn main() {
    divan::main();
}

fn rules(varied_shapes: bool) -> Vec<RawRule> {
    let kpis = [
        "cpa > {}",
        "conversions < {}",
        "aov < {}",
        "duplicates / events > 0.0{}",
        "conversion_rate < 0.0{}",
    ];
    let shapes: [(&[&str], &str); 10] = [
        (&["channel", "campaign"], "10m"),
        (&["channel", "campaign"], "5m"),
        (&["channel", "campaign"], "15m"),
        (&["channel"], "10m"),
        (&["campaign"], "10m"),
        (&["channel"], "5m"),
        (&["campaign"], "15m"),
        (&[], "10m"),
        (&["channel", "campaign"], "1m"),
        (&["channel"], "1m"),
    ];
    (0..1000)
        .map(|i| {
            let (group_by, over) = shapes[if varied_shapes { i % shapes.len() } else { 0 }];
            RawRule {
                name: Some(format!("rule-{i}")),
                expr: Some(kpis[i % kpis.len()].replace("{}", &(1 + i % 9).to_string())),
                over: Some(over.into()),
                group_by: group_by.iter().map(|s| s.to_string()).collect(),
                for_: Some("2m".into()),
                ..RawRule::default()
            }
        })
        .collect()
}

fn data(minutes: i64) -> WindowData {
    let mut data = WindowData::default();
    for m in 0..minutes {
        for g in 0..100 {
            let channel = format!("channel-{}", g % 10);
            let campaign = format!("campaign-{g}");
            for (d, (device, region)) in [
                ("mobile", "IT-25"),
                ("desktop", "IT-62"),
                ("mobile", "IT-72"),
                ("tablet", "IT-21"),
            ]
            .into_iter()
            .enumerate()
            {
                data.rows.push(MinuteRow {
                    window_start: T0 + m * MINUTE,
                    dims: [
                        channel.clone(),
                        campaign.clone(),
                        device.into(),
                        region.into(),
                    ],
                    counters: KpiCounters {
                        events: [40, 8, 1, 3, 2, 0],
                        sessions: 12,
                        converting_sessions: 2,
                        conversions: (g + d as i64 + m) % 3,
                        revenue_micros: 80_000_000,
                        duplicates: (g % 4),
                        ..KpiCounters::default()
                    },
                });
            }
            data.spend.push(SpendMinute {
                window_start: T0 + m * MINUTE,
                channel,
                campaign,
                spend: SpendCounters {
                    micros: 12_000_000,
                    records: 1,
                },
            });
        }
    }
    data
}

/// Ten shapes of rule: 63,100 rule × group evaluations a minute.
#[divan::bench(sample_count = 20)]
fn evaluate_1000_rules_in_10_shapes(bencher: Bencher<'_, '_>) {
    run(bencher, true);
}

/// Every rule by channel and campaign over 10 minutes: 1,000 × 100 = 100,000 evaluations.
#[divan::bench(sample_count = 20)]
fn evaluate_1000_rules_100_groups(bencher: Bencher<'_, '_>) {
    run(bencher, false);
}

fn run(bencher: Bencher<'_, '_>, varied_shapes: bool) {
    let rules = check_rules(
        &rules(varied_shapes),
        &Default::default(),
        Timing::default(),
    )
    .unwrap();
    let data = data(15);
    let mut evaluator = Evaluator::new(rules, BTreeMap::new());
    // The same minute each time: every rule reads a full window, as in steady state.
    let minute_end = T0 + 15 * MINUTE;
    let mut evaluations = 0;
    bencher.bench_local(|| {
        let outcome = evaluator.evaluate_minute(minute_end, black_box(&data), &mut NoHistory);
        evaluations = outcome.evaluations;
        black_box(outcome.evaluations)
    });
    println!("{evaluations} rule × group evaluations per minute");
}
