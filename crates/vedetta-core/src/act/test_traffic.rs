//! Generated traffic as the log holds it, for the trigger modules' tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::LogRecord;
use crate::intake::{BodyFormat, IntakeContext, IntakeLimits, judge_events, judge_spend};
use crate::privacy::{PseudonymKey, Pseudonymizer};
use vedetta_synth::{DEFAULT_START_MS, Generator, SynthConfig, to_ndjson_line};

/// `records` records of generated traffic (2,000 users, 40 sessions a minute; duplicates,
/// late and out-of-order events, spend every minute, 78 % of users with marketing consent)
/// as intake judges them, in arrival order.
pub(crate) fn traffic(seed: u64, records: usize) -> Vec<LogRecord> {
    let config = SynthConfig {
        seed,
        start_ms: DEFAULT_START_MS,
        sessions_per_minute: 40.0,
        users: 2_000,
        ..SynthConfig::default()
    };
    let pseudonymizer = Pseudonymizer::new(PseudonymKey::from_bytes(1, &[7; 32]).unwrap(), vec![]);
    let limits = IntakeLimits::default();
    let ctx = IntakeContext {
        now_ms: 4_102_444_800_000,
        pseudonymizer: &pseudonymizer,
        limits: &limits,
    };
    let mut out = Vec::with_capacity(records);
    let mut line = Vec::new();
    for arrival in Generator::new(config).unwrap().take(records) {
        let spend = matches!(arrival.record, vedetta_synth::SynthRecord::Spend(_));
        line.clear();
        to_ndjson_line(&arrival.record, &mut line);
        let judge = if spend { judge_spend } else { judge_events };
        let judged = judge(&line, BodyFormat::Ndjson, &ctx).unwrap();
        assert!(judged.rejected.is_empty(), "{:?}", judged.rejected.first());
        out.extend(judged.records);
    }
    out
}
