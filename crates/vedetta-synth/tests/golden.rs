//! Existing generator configurations must keep producing byte-identical output when the
//! generator learns new tricks (the demo's rhythm, spend and shares, issue 11). The hashes
//! below were taken from the generator before the demo shape existed; a change to them means
//! every recorded benchmark, truth file and replayed log of those configurations changed.

use vedetta_synth::{ArrivalKind, Generator, SynthConfig, SynthRecord, Tagging, to_ndjson_line};

/// FNV-1a over the NDJSON of the first `records` arrivals, with their arrival times.
fn output_hash(config: SynthConfig, records: usize) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut line = Vec::new();
    let generator = Generator::new(config).expect("valid config");
    for arrival in generator.take(records) {
        line.clear();
        to_ndjson_line(&arrival.record, &mut line);
        line.extend_from_slice(&arrival.arrival_ms.to_le_bytes());
        for byte in &line {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

#[test]
fn existing_configurations_produce_the_same_bytes_as_before_the_demo_shape() {
    let cases = [
        ("default", SynthConfig::default()),
        (
            "every_event_tagging",
            SynthConfig {
                seed: 42,
                tagging: Tagging::EveryEvent,
                order_resend_share: 0.0,
                ..SynthConfig::default()
            },
        ),
        (
            "slow_messy",
            SynthConfig {
                seed: 9,
                users: 5_000,
                sessions_per_minute: 3.0,
                duplicate_share: 0.2,
                late_share: 0.05,
                late_session_share: 0.05,
                order_resend_share: 0.3,
                ..SynthConfig::default()
            },
        ),
    ];
    let got: Vec<(&str, u64)> = cases
        .into_iter()
        .map(|(name, config)| (name, output_hash(config, 40_000)))
        .collect();
    let expected = [
        ("default", 0xd2b8_04f3_3304_8434),
        ("every_event_tagging", 0x788a_9bce_669b_6751),
        ("slow_messy", 0x2d22_5710_c5eb_7f39),
    ];
    assert_eq!(got, expected);
}

/// Refunds (issue 13) come from their own random stream: turning them on adds refunds and
/// their retries, and leaves every other record, and its arrival, exactly as it was.
#[test]
fn refunds_leave_every_other_record_as_it_was() {
    let with = |refund_share: f64| SynthConfig {
        seed: 9,
        refund_share,
        ..SynthConfig::default()
    };
    let plain: Vec<_> = Generator::new(with(0.0))
        .expect("valid config")
        .take(20_000)
        .collect();
    let refunded: Vec<_> = Generator::new(with(0.5))
        .expect("valid config")
        .take(25_000)
        .collect();
    let is_refund = |a: &vedetta_synth::Arrival| match &a.record {
        SynthRecord::Event(e) => e.event_type == vedetta_synth::EventType::Refund,
        SynthRecord::Spend(_) => false,
    };
    let refunds = refunded.iter().filter(|a| is_refund(a)).count();
    assert!(refunds > 20, "{refunds} refunds");
    assert!(
        refunded
            .iter()
            .filter(|a| is_refund(a))
            .all(|a| matches!(a.truth.kind, ArrivalKind::Refund | ArrivalKind::ExactRetry))
    );
    let others: Vec<_> = refunded.into_iter().filter(|a| !is_refund(a)).collect();
    assert!(others.len() >= plain.len());
    assert_eq!(&others[..plain.len()], &plain[..]);
}
