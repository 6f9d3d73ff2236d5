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
