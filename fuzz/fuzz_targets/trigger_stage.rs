//! `cargo +nightly fuzz run trigger_stage`: see `vedetta_fuzz::trigger_stage::fuzz_trigger_stage` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vedetta_fuzz::trigger_stage::fuzz_trigger_stage(data));
