//! `cargo +nightly fuzz run gzip`: see `vedetta_fuzz::gzip::fuzz_gzip` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vedetta_fuzz::gzip::fuzz_gzip(data));
