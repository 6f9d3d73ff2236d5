//! `cargo +nightly fuzz run config`: see `vedetta_fuzz::config::fuzz_config` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vedetta_fuzz::config::fuzz_config(data));
