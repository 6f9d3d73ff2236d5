//! Target `snapshot`: the pipeline snapshot decoder
//! (`vedetta_core::pipeline::snapshot::decode_snapshot`) fed arbitrary bytes.
//!
//! Each input is tried as it is and, when it lacks one, behind a valid header, so the
//! fuzzer explores the state decoder rather than the magic bytes. Checked:
//! - bytes without the header, or with another version, are refused for that reason;
//! - a state that decodes can be restored into a pipeline, which encodes it back into a
//!   snapshot that decodes again to the same state (same offset, counters, dimensions,
//!   users), and then takes records without a panic: a snapshot that restores is one the
//!   processor can continue from.

use vedetta_core::pipeline::snapshot::{
    SNAPSHOT_FORMAT, SNAPSHOT_HEADER_LEN, SNAPSHOT_MAGIC, SnapshotError, decode_snapshot, header,
};
use vedetta_core::pipeline::{Pipeline, PipelineConfig, PipelineState};
use vedetta_core::record::LogRecord;

pub fn fuzz_snapshot(data: &[u8]) {
    check(data);
    if !data.starts_with(&header()) {
        check(&[&header()[..], data].concat());
    }
}

fn check(bytes: &[u8]) {
    let state = match decode_snapshot(bytes) {
        Ok(state) => state,
        Err(SnapshotError::NoHeader) => {
            assert!(
                bytes.len() < SNAPSHOT_HEADER_LEN || !bytes.starts_with(&SNAPSHOT_MAGIC),
                "refused a header that is there"
            );
            return;
        }
        Err(SnapshotError::Version { found }) => {
            assert_eq!(bytes[SNAPSHOT_MAGIC.len()], found);
            assert_ne!(found, SNAPSHOT_FORMAT, "refused its own version");
            return;
        }
        Err(SnapshotError::Body(_)) => return,
    };
    let summary = summarize(&state);
    let mut pipeline = Pipeline::restore(PipelineConfig::default(), None, state);
    let encoded = pipeline
        .encode_snapshot()
        .unwrap_or_else(|e| panic!("a restored state does not encode: {e}"));
    match decode_snapshot(&encoded) {
        Ok(again) => assert_eq!(summarize(&again), summary, "the state changed on restore"),
        Err(e) => panic!("a restored state's snapshot does not decode: {e}"),
    }
    for (offset, record) in (pipeline.next_offset()..).zip(records()) {
        pipeline.process(offset, &record);
    }
    let _ = pipeline.take_deltas();
}

/// The parts of a state that compare (the user map's order is the hasher's).
fn summarize(state: &PipelineState) -> String {
    let mut users: Vec<String> = state
        .users
        .iter()
        .map(|(user, data)| format!("{user:?}={data:?}"))
        .collect();
    users.sort();
    format!(
        "{} {:?} {:?} {:?} {:?} {:?} {}",
        state.next_offset,
        state.max_event_ts,
        state.counters,
        state.dims,
        state.custom_kinds,
        state.expiry,
        users.join(";")
    )
}

/// A few valid records to continue with: the intake target's seeds judged as the server
/// would, so they are records intake accepts.
pub(crate) fn records() -> Vec<LogRecord> {
    let body = br#"[
        {"udid":"fuzz-a","type":"page_view","ts":1763999000000,"channel":"social","campaign":"spring"},
        {"udid":"fuzz-a","type":"purchase","ts":1763999100000,"value":19.9,"event_id":"e1"},
        {"udid":"fuzz-b","type":"lead","ts":1763990000000,"utm_source":"google","utm_medium":"cpc"}
    ]"#;
    let pseudonymizer = crate::intake::pseudonymizer();
    let limits = crate::intake::limits();
    let ctx = vedetta_core::intake::IntakeContext {
        now_ms: crate::intake::NOW_MS,
        pseudonymizer: &pseudonymizer,
        limits: &limits,
    };
    match vedetta_core::intake::judge_events(body, vedetta_core::intake::BodyFormat::Json, &ctx) {
        Ok(judged) if judged.rejected.is_empty() => judged.records,
        other => panic!("the continuation records are refused: {other:?}"),
    }
}
