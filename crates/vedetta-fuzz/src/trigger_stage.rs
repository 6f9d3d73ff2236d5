//! Target `trigger_stage`: the trigger stage's stored forms fed arbitrary bytes, the first
//! byte choosing which (`vedetta_core::act::stage`):
//! - `0`: the stage's section after the pipeline's snapshot (`TriggerStage::restore`), read
//!   at every start; tried as it is and, when it lacks them, behind the section's magic
//!   and each version it reads (rows by place, rows in key order), so the fuzzer explores
//!   the body;
//! - `1`: a recorded trigger set (`TriggerSet::decode`, the KPI store's `trigger_sets`);
//! - `2`: a staged output (`StagedOutput::decode`, the KPI store's `act_outputs`, read by
//!   the router).
//!
//! Checked: nothing panics; what reads is what it writes back (a section restored encodes
//! to a section that restores to the same bytes, from the live stage and from its copy;
//! a set and an output re-encode to bytes that decode equal); and a restored stage runs on
//! (records observed beside a pipeline, the outputs it stages encode and decode equal, and
//! the stage it becomes encodes a section that restores): a section that restores is one
//! the processor can continue from.

use crate::selector;
use vedetta_core::act::stage::{
    STAGE_FORMAT, STAGE_FORMAT_KEY_ORDER, STAGE_MAGIC, StagedOutput, TriggerSet, TriggerStage,
};
use vedetta_core::pipeline::{Pipeline, PipelineConfig};

pub fn fuzz_trigger_stage(data: &[u8]) {
    let (mode, body) = selector(data);
    match mode % 3 {
        0 => {
            section(body);
            if !body.starts_with(&STAGE_MAGIC) {
                for format in [STAGE_FORMAT, STAGE_FORMAT_KEY_ORDER] {
                    section(&[&STAGE_MAGIC[..], &[format], body].concat());
                }
            }
        }
        1 => trigger_set(body),
        _ => staged_output(body),
    }
}

fn restore(bytes: &[u8]) -> Option<TriggerStage> {
    let config = PipelineConfig::default();
    TriggerStage::restore(
        bytes,
        config.conversion_types.clone(),
        config.enrich.clone(),
        config.out_of_orderness_ms,
    )
    .ok()
}

fn section(bytes: &[u8]) {
    let Some(mut stage) = restore(bytes) else {
        return;
    };
    let mut encoded = Vec::new();
    stage
        .encode_section(&mut encoded)
        .unwrap_or_else(|e| panic!("a restored stage does not encode: {e}"));
    let again = restore(&encoded).expect("a restored stage's section does not restore");
    let mut twice = Vec::new();
    again.encode_section(&mut twice).expect("encodes");
    assert!(twice == encoded, "the section changed on a second restore");
    let mut copied = Vec::new();
    stage
        .copy()
        .encode_section(&mut copied)
        .expect("a restored stage's copy encodes");
    assert!(
        copied == encoded,
        "the copy encodes other bytes than the stage"
    );
    assert_eq!(again.stats(), stage.stats());

    // Runs on: the snapshot target's continuation records, beside a fresh pipeline.
    let mut pipeline = Pipeline::new(PipelineConfig::default(), None);
    for (offset, record) in (0u64..).zip(crate::snapshot::records()) {
        pipeline.process(offset, &record);
        stage.after_record(&mut pipeline, &record);
    }
    let _ = stage.take_batch_deltas(&mut pipeline);
    for (at, output) in stage.take_staged() {
        let bytes = output.encode().expect("a staged output encodes");
        let read = StagedOutput::decode(&bytes).expect("a staged output decodes");
        assert_eq!(read, output, "staged output {at} changed on a round trip");
    }
    // What it ran into restores in turn: no user held twice (the restored users are found
    // by pseudonym, the ones it made by the pipeline's hints, the ones the pipeline let go
    // of by pseudonym again), whatever the section held.
    let mut after = Vec::new();
    stage
        .encode_section(&mut after)
        .unwrap_or_else(|e| panic!("the stage does not encode after running on: {e}"));
    let ran_on = restore(&after).expect("the stage's section after running on does not restore");
    assert_eq!(ran_on.stats().users, stage.stats().users);
}

fn trigger_set(bytes: &[u8]) {
    let Ok(set) = TriggerSet::decode(bytes) else {
        return;
    };
    let encoded = set.encode();
    let again = TriggerSet::decode(&encoded).expect("an encoded set decodes");
    assert!(again.encode() == encoded, "the set changed on a round trip");
    assert_eq!(again.triggers.len(), set.triggers.len());
}

fn staged_output(bytes: &[u8]) {
    let Ok(output) = StagedOutput::decode(bytes) else {
        return;
    };
    let encoded = output.encode().expect("a decoded output encodes");
    let again = StagedOutput::decode(&encoded).expect("an encoded output decodes");
    assert_eq!(again, output, "the output changed on a round trip");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn seed(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/corpus/trigger_stage")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The seeds reach the round trips (a seed that no longer decoded would leave the
    /// target checking refusals only).
    #[test]
    fn the_seeds_decode() {
        // Sections in both formats: rows by place (written by `examples/seeds.rs`) and in
        // key order (as builds before 2026-12-07 wrote them, kept as they were).
        for (prefix, format) in [("section", STAGE_FORMAT), ("section-key-order", 1)] {
            for name in ["empty", "after-all-records"].map(|n| format!("{prefix}-{n}")) {
                let bytes = seed(&name);
                assert_eq!(bytes[0], 0, "{name}: the section's selector");
                assert_eq!(bytes[1 + STAGE_MAGIC.len()], format, "{name}: the format");
                let stage = restore(&bytes[1..]).unwrap_or_else(|| panic!("{name} restores"));
                assert_eq!(stage.set().triggers.len(), 5, "{name}");
            }
        }
        // (The key-order seed was written by an older build from other records: its
        // state is not the by-place seed's.)
        for name in [
            "section-after-all-records",
            "section-key-order-after-all-records",
        ] {
            let stage = restore(&seed(name)[1..]).unwrap();
            assert!(
                stage.stats().users > 0,
                "{name}: the records left users behind"
            );
        }
        let set = seed("set");
        assert_eq!(set[0], 1);
        assert_eq!(TriggerSet::decode(&set[1..]).unwrap().triggers.len(), 5);
        // Each output in both formats: JSON (as stored before 2026-12-06) and postcard.
        for name in ["output-user", "output-signal"] {
            let json = seed(name);
            let postcard = seed(&format!("{name}-v2"));
            for (bytes, format) in [(&json, 1), (&postcard, 2)] {
                assert_eq!(bytes[0], 2, "{name}: the output's selector");
                assert_eq!(bytes[1], format, "{name}: the output's format");
            }
            let read = |bytes: &[u8]| {
                StagedOutput::decode(&bytes[1..]).unwrap_or_else(|e| panic!("{name}: {e}"))
            };
            assert_eq!(read(&json), read(&postcard), "{name}");
        }
    }
}
