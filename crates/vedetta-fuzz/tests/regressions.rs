//! Regression tests for what the fuzz targets found in the configuration parser, named for
//! the bug. (Findings in the core have theirs beside the code: `vedetta-core`'s
//! `intake::tests_fuzz` and `pipeline::snapshot` tests.) The crashing inputs themselves
//! are in `fuzz/artifacts/<target>/`, replayed by `tests/corpus.rs`.

use vedetta::config::{MAX_DURATION_MS, MAX_RETENTION_DAYS, Overrides, check_text, load_text};

fn refusal(text: &str) -> String {
    match check_text(text, "vedetta.toml") {
        Ok(config) => panic!("accepted: {text}\n{config:?}"),
        Err(error) => error.to_string(),
    }
}

/// `future_tolerance_seconds` was cast to `i64` and multiplied unchecked: `i64::MAX`
/// wrapped to a negative tolerance, which refused every event as "in the future" (and
/// overflowed in a debug build). Every duration key now has a ten-year bound.
#[test]
fn config_durations_past_ten_years_are_refused_not_wrapped() {
    for (table, key) in [
        ("ingest", "future_tolerance_seconds"),
        ("pipeline", "out_of_orderness_ms"),
        ("pipeline", "allowed_lateness_seconds"),
        ("pipeline", "session_gap_minutes"),
        ("pipeline", "near_duplicate_ms"),
        ("pipeline", "dedup_horizon_hours"),
    ] {
        for value in ["9223372036854775807", "315360000001"] {
            let message = refusal(&format!("[{table}]\n{key} = {value}\n"));
            assert!(
                message.contains(&format!(
                    "vedetta.toml:2: {table}.{key}: {value} is too long"
                )),
                "{message}"
            );
        }
    }
    let rule = "[[pipeline.sequence_rules]]\nreason = \"r\"\nafter = [\"a\"]\nthen = [\"b\"]\n\
                within_ms = 9223372036854775807\n";
    assert!(refusal(rule).contains("within_ms: 9223372036854775807 is too long"));
    // Up to the bound is fine, in every unit.
    let config = check_text(
        "[ingest]\nfuture_tolerance_seconds = 315360000\n[pipeline]\nsession_gap_minutes = 5256000\n",
        "vedetta.toml",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.ingest.future_tolerance_ms, MAX_DURATION_MS);
    assert_eq!(config.pipeline.rules.session_gap_ms, MAX_DURATION_MS);
    // The environment goes through the same check.
    let env = [(
        "VEDETTA_PIPELINE__OUT_OF_ORDERNESS_MS".to_string(),
        "9223372036854775807".to_string(),
    )];
    let error = load_text("", "(no file)", &env, &Overrides::default())
        .expect_err("a wrapped out-of-orderness from the environment");
    assert!(
        error.to_string().contains("pipeline.out_of_orderness_ms"),
        "{error}"
    );
}

/// `log.retention_days` was multiplied into milliseconds unchecked: a huge value wrapped the
/// retention cutoff into the future, and the hourly retention would have deleted the log.
#[test]
fn retention_days_past_a_century_are_refused() {
    for key in ["[log]\nretention_days", "[ingest]\nquarantine_days"] {
        let message = refusal(&format!("{key} = 106751991167301\n"));
        assert!(message.contains("is too long; at most 36500"), "{message}");
        let fits = check_text(&format!("{key} = {MAX_RETENTION_DAYS}\n"), "vedetta.toml");
        assert!(fits.is_ok(), "{fits:?}");
    }
}
