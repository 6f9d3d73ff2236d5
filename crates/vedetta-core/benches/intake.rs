//! Intake judging throughput: JSON → validated, pseudonymized, encoded log batch.
//!
//! `cargo bench -p vedetta-core --bench intake`. Bodies are NDJSON batches of 1,000
//! events made by the synthetic generator, the shape `vedetta bench intake` posts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use divan::{Bencher, black_box, counter::ItemsCount};
use vedetta_core::intake::{BodyFormat, IntakeContext, IntakeLimits, judge_events};
use vedetta_core::privacy::{PseudonymKey, Pseudonymizer};
use vedetta_core::record::encode_batch;
use vedetta_synth::{Generator, SynthConfig, SynthRecord, to_ndjson_line};

const NOW: i64 = 1_764_000_000_000;
const BATCH: usize = 1000;

fn main() {
    divan::main();
}

fn body() -> Vec<u8> {
    let config = SynthConfig {
        start_ms: NOW - 3_600_000,
        sessions_per_minute: 20_000.0,
        users: 2_000_000,
        ..SynthConfig::default()
    };
    let mut body = Vec::new();
    for arrival in Generator::new(config)
        .expect("valid config")
        .filter(|a| matches!(a.record, SynthRecord::Event(_)))
        .take(BATCH)
    {
        to_ndjson_line(&arrival.record, &mut body);
    }
    body
}

fn pseudonymizer() -> Pseudonymizer {
    Pseudonymizer::new(PseudonymKey::from_bytes(1, &[7; 32]).unwrap(), vec![])
}

fn context<'a>(pseudonymizer: &'a Pseudonymizer, limits: &'a IntakeLimits) -> IntakeContext<'a> {
    IntakeContext {
        now_ms: NOW,
        pseudonymizer,
        limits,
    }
}

#[divan::bench]
fn judge_ndjson_batch(bencher: Bencher<'_, '_>) {
    let body = body();
    let (pseudonymizer, limits) = (pseudonymizer(), IntakeLimits::default());
    let ctx = context(&pseudonymizer, &limits);
    let judged = judge_events(&body, BodyFormat::Ndjson, &ctx).unwrap();
    assert_eq!(judged.records.len(), BATCH, "{:?}", judged.rejected.first());
    bencher
        .counter(ItemsCount::new(BATCH))
        .bench(|| judge_events(black_box(&body), BodyFormat::Ndjson, &ctx).unwrap());
}

#[divan::bench]
fn judge_and_encode_ndjson_batch(bencher: Bencher<'_, '_>) {
    let body = body();
    let (pseudonymizer, limits) = (pseudonymizer(), IntakeLimits::default());
    let ctx = context(&pseudonymizer, &limits);
    bencher.counter(ItemsCount::new(BATCH)).bench(|| {
        let judged = judge_events(black_box(&body), BodyFormat::Ndjson, &ctx).unwrap();
        encode_batch(&judged.records, NOW, 1)
    });
}
