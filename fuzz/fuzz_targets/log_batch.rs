//! `cargo +nightly fuzz run log_batch`: see `vedetta_fuzz::batch::fuzz_log_batch` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vedetta_fuzz::batch::fuzz_log_batch(data));
