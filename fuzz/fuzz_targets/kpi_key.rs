//! `cargo +nightly fuzz run kpi_key`: see `vedetta_fuzz::kpi_key::fuzz_kpi_key` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vedetta_fuzz::kpi_key::fuzz_kpi_key(data));
