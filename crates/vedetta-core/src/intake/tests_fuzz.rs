//! Regressions found by the `intake` fuzz target (`crates/vedetta-fuzz`); the crashing
//! inputs are kept in `fuzz/artifacts/intake/` and replayed by `cargo test`.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::privacy::{PseudonymKey, Pseudonymizer};

const GOOD: &str = r#"{"udid":"a","type":"lead","ts":1763990000000}"#;

fn judge_ndjson(body: &str) -> Judged {
    let pseudonymizer = Pseudonymizer::new(PseudonymKey::from_bytes(1, &[42; 32]).unwrap(), vec![]);
    let ctx = IntakeContext {
        now_ms: 1_764_000_000_000,
        pseudonymizer: &pseudonymizer,
        limits: &IntakeLimits::default(),
    };
    judge_events(body.as_bytes(), BodyFormat::Ndjson, &ctx).unwrap()
}

/// The judge trimmed the body before splitting it into lines, so leading blank lines were
/// not counted and a refusal named the wrong line (`events[0]` for line 2).
#[test]
fn ndjson_refusals_count_leading_blank_lines() {
    for (body, line) in [
        (format!("\n\nbad\n{GOOD}"), 2),
        (format!("\r\n \n\t\n{GOOD}\n{{\"udid\":1}}"), 4),
        ("\u{feff}\n{}".to_string(), 1),
    ] {
        let judged = judge_ndjson(&body);
        let indices: Vec<usize> = judged.rejected.iter().map(|r| r.index).collect();
        assert_eq!(indices, [line], "{body:?}");
        assert!(
            judged.rejected[0]
                .error
                .starts_with(&format!("events[{line}]")),
            "{}",
            judged.rejected[0].error
        );
    }
}
