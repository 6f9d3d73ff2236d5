//! `cargo +nightly fuzz run kpi_query`: see `vedetta_fuzz::query::fuzz_kpi_query` for what it checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vedetta_fuzz::query::fuzz_kpi_query(data));
