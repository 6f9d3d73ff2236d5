//! Vedetta's fuzz targets, as plain functions over bytes.
//!
//! Each target takes arbitrary bytes, drives one parser or codec that meets hostile input,
//! and **asserts the invariant it promises**, not only that it does not panic: a decoded
//! key encodes back to the same bytes, accepted + rejected = the events in the body, a
//! gzip body never inflates past its limit. A broken invariant is a panic, which is what a
//! fuzzer reports.
//!
//! Two harnesses call the same functions:
//! - `fuzz/` (cargo-fuzz, nightly): `cargo +nightly fuzz run <target>` explores new inputs;
//! - `tests/corpus.rs` (stable, part of `cargo test --workspace`): replays every committed
//!   corpus file and every regression in `fuzz/artifacts/`, in seconds.
//!
//! See `docs/fuzzing.md` for what each target checks and the results of the runs.

pub mod batch;
pub mod config;
pub mod gzip;
pub mod intake;
pub mod kpi_key;
pub mod query;
pub mod snapshot;
pub mod trigger_stage;

/// A fuzz target: takes any bytes, panics when an invariant breaks.
pub type Target = fn(&[u8]);

/// Every target by its cargo-fuzz name (`fuzz/fuzz_targets/<name>.rs`, `fuzz/corpus/<name>/`).
pub const TARGETS: [(&str, Target); 8] = [
    ("intake", intake::fuzz_intake),
    ("gzip", gzip::fuzz_gzip),
    ("kpi_query", query::fuzz_kpi_query),
    ("config", config::fuzz_config),
    ("log_batch", batch::fuzz_log_batch),
    ("snapshot", snapshot::fuzz_snapshot),
    ("kpi_key", kpi_key::fuzz_kpi_key),
    ("trigger_stage", trigger_stage::fuzz_trigger_stage),
];

/// Splits the first byte off as a selector (which format, which endpoint…), so one target
/// covers several modes and the fuzzer can switch between them with a one-byte mutation.
pub(crate) fn selector(data: &[u8]) -> (u8, &[u8]) {
    match data.split_first() {
        Some((&first, rest)) => (first, rest),
        None => (0, data),
    }
}
