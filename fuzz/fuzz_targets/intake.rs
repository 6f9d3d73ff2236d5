//! `cargo +nightly fuzz run intake`: see `vedetta_fuzz::intake::fuzz_intake` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vedetta_fuzz::intake::fuzz_intake(data));
