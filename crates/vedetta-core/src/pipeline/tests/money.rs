//! Money sums that cannot wrap (issue 8).

use super::*;

/// Issue 8: a purchase of `1e300` saturated to `i64::MAX` micro-units and the next
/// purchases wrapped the day's revenue around (8,776,627,963,145.23 € for
/// `1e300 + 9e12 + 9e12`); a debug build panicked instead, at every restart.
#[test]
fn revenue_past_i64_max_micro_units_is_exact() {
    let mut run = Run::new();
    let values = [1e300, 9e12, 9e12, 9e12];
    for (n, value) in values.into_iter().enumerate() {
        // One user each: no sequence rule flags them, every one counts.
        let mut purchase = event(n as u8 + 1, EventKind::Purchase, T0 + n as i64 * SEC);
        purchase.value = Some(value);
        run.feed(LogRecord::Event(with_id(purchase, &format!("p{n}"))));
    }
    // One record saturates at i64::MAX micro-units; 9e12 units are 9e18 micro-units,
    // exactly representable in f64. The sum is past i64::MAX after the second purchase.
    let expected = i128::from(i64::MAX) + 3 * 9_000_000_000_000_000_000_i128;
    assert!(expected > i128::from(i64::MAX) * 3);
    for g in Granularity::ALL {
        assert_eq!(run.total(g, |c| c.revenue_micros), expected, "{g:?}");
        assert_eq!(run.total(g, |c| c.conversions), 4, "{g:?}");
    }
}

#[test]
fn spend_past_i64_max_micro_units_is_exact() {
    let mut run = Run::new();
    for n in 0..3 {
        run.feed(LogRecord::Spend(SpendRecord {
            ts: EventTime(T0 + n * SEC),
            channel: "social".into(),
            campaign: Some("saldi".into()),
            amount: 9e12,
            currency: None,
            source: None,
        }));
    }
    let total: i128 = run
        .spend
        .iter()
        .filter(|(k, _)| k.0 == Granularity::Day)
        .map(|(_, m)| *m)
        .sum();
    assert_eq!(total, 27_000_000_000_000_000_000);
}

/// Issue 9, "unknown spend is not zero spend": every spend record counts one record in
/// each granularity's row, so a record of 0 leaves a row (a known 0) where no record
/// leaves none (unknown).
#[test]
fn spend_deltas_count_records_and_a_record_of_zero_is_kept() {
    let mut pipeline = Pipeline::new(PipelineConfig::default(), None);
    let spend = |offset: u64, campaign: &str, amount: f64| {
        (
            offset,
            LogRecord::Spend(SpendRecord {
                ts: EventTime(T0 + offset as i64 * SEC),
                channel: "paid_search".into(),
                campaign: Some(campaign.into()),
                amount,
                currency: None,
                source: None,
            }),
        )
    };
    for (offset, record) in [
        spend(0, "zero", 0.0),
        spend(1, "two", 1.5),
        spend(2, "two", 2.25),
    ] {
        pipeline.process(offset, &record);
    }
    let deltas = pipeline.take_deltas();
    let mut by_campaign: BTreeMap<(Granularity, String), kpi::SpendCounters> = BTreeMap::new();
    for (key, change) in &deltas.spend_micros {
        let d = pipeline.dims(key.channel_campaign).unwrap();
        by_campaign.insert((key.granularity, d.campaign.clone()), *change);
    }
    for g in Granularity::ALL {
        assert_eq!(
            by_campaign[&(g, "zero".to_string())],
            kpi::SpendCounters {
                micros: 0,
                records: 1
            },
            "{g:?}"
        );
        assert_eq!(
            by_campaign[&(g, "two".to_string())],
            kpi::SpendCounters {
                micros: 3_750_000,
                records: 2
            },
            "{g:?}"
        );
    }
    assert_eq!(by_campaign.len(), 6, "two campaigns in three granularities");
}
