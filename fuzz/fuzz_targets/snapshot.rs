//! `cargo +nightly fuzz run snapshot`: see `vedetta_fuzz::snapshot::fuzz_snapshot` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vedetta_fuzz::snapshot::fuzz_snapshot(data));
