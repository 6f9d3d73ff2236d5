//! The pipeline bench's workload, one definition for `benches/pipeline.rs`,
//! `benches/act.rs` and `examples/pipeline_digest.rs` (each includes this file by
//! `#[path]`), so that the three measure and check the same records.

// Each includer uses a part of it.
#![allow(dead_code)]

use vedetta_core::LogRecord;
use vedetta_core::intake::{BodyFormat, IntakeContext, IntakeLimits, judge_events, judge_spend};
use vedetta_core::privacy::{PseudonymKey, Pseudonymizer};
use vedetta_synth::{DEFAULT_START_MS, Generator, SynthConfig, SynthRecord, to_ndjson_line};

/// Records per run: about two and a half hours of event time at the rate below, so that users'
/// state is evicted and every window granularity closes along the way.
pub const RECORDS: usize = 500_000;
/// Records processed between two `take_deltas` (the processor commits after each read).
pub const DELTAS_EVERY: usize = 10_000;
/// Intake's clock while judging the records (after every event time).
pub const NOW: i64 = 4_102_444_800_000;

/// The generator's traffic as the log holds it, in arrival order.
pub fn records() -> Vec<LogRecord> {
    let config = SynthConfig {
        // 23:15 in Rome: the run crosses midnight, so day windows close and see late events.
        start_ms: DEFAULT_START_MS + 9 * 3_600_000 + 15 * 60_000,
        sessions_per_minute: 1_000.0,
        users: 200_000,
        ..SynthConfig::default()
    };
    let pseudonymizer = Pseudonymizer::new(PseudonymKey::from_bytes(1, &[7; 32]).unwrap(), vec![]);
    let limits = IntakeLimits {
        max_events_per_request: DELTAS_EVERY,
        ..IntakeLimits::default()
    };
    let ctx = IntakeContext {
        now_ms: NOW,
        pseudonymizer: &pseudonymizer,
        limits: &limits,
    };
    let mut records = Vec::with_capacity(RECORDS);
    // Consecutive records of one kind are judged together, in arrival order.
    let mut body = Vec::new();
    let mut lines = 0;
    let mut spend_body = false;
    let mut flush = |body: &mut Vec<u8>, lines: &mut usize, spend: bool| {
        if *lines == 0 {
            return;
        }
        let judge = if spend { judge_spend } else { judge_events };
        let judged = judge(body, BodyFormat::Ndjson, &ctx).unwrap();
        assert!(judged.rejected.is_empty(), "{:?}", judged.rejected.first());
        records.extend(judged.records);
        body.clear();
        *lines = 0;
    };
    for arrival in Generator::new(config).expect("valid config").take(RECORDS) {
        let spend = matches!(arrival.record, SynthRecord::Spend(_));
        if spend != spend_body || lines == DELTAS_EVERY {
            flush(&mut body, &mut lines, spend_body);
            spend_body = spend;
        }
        to_ndjson_line(&arrival.record, &mut body);
        lines += 1;
    }
    flush(&mut body, &mut lines, spend_body);
    assert_eq!(records.len(), RECORDS);
    records
}
