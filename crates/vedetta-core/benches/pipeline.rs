//! Pipeline core throughput: log records in, KPI deltas out, one core.
//!
//! `cargo bench -p vedetta-core --bench pipeline`. The synthetic generator makes realistic
//! traffic (duplicates, out-of-order and late events, late sessions, fast checkouts, ad
//! spend); intake judges it once, exactly as the server does, so the pipeline sees the
//! `LogRecord`s the log would hold. Each iteration feeds every record to a fresh
//! [`Pipeline`] (with GeoIP enrichment) and takes the deltas every 10,000 records, as the
//! processor does after each read: dedup, flags, enrichment, sessions, every window and
//! state expiry are all on the measured path.
//!
//! The processor also decodes each log batch before processing it; `decode_log_batches`
//! measures that step alone and `decode_and_process` the two together. `snapshot_*` encode
//! the state left by a run, as the processor's periodic snapshot does.
//!
//! `PIPELINE_BENCH_ATTRIBUTION=first_touch` (or `session`) runs the same workload under
//! another attribution model (default: `last_non_direct`, the configuration default).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use divan::{Bencher, black_box, counter::ItemsCount};
use std::sync::Arc;
use vedetta_core::LogRecord;
use vedetta_core::enrich::{EnrichConfig, MmdbRegionLookup, RegionLookup};
use vedetta_core::pipeline::{AttributionModel, Pipeline, PipelineConfig};
use vedetta_core::record::{decode_batch, encode_batch};
use vedetta_synth::geoip::catalog_region_mmdb;

/// Records per log batch (one intake request, as `vedetta bench intake` posts).
const BATCH: usize = 1_000;

#[path = "support/workload.rs"]
mod workload;
use workload::{DELTAS_EVERY, NOW, RECORDS, records};

fn main() {
    divan::main();
}

fn regions() -> Arc<dyn RegionLookup> {
    Arc::new(MmdbRegionLookup::from_bytes(catalog_region_mmdb()).unwrap())
}

fn pipeline(regions: &Arc<dyn RegionLookup>) -> Pipeline {
    let config = PipelineConfig {
        enrich: EnrichConfig {
            internal_hosts: vec!["www.bottega.example".into()],
            ..EnrichConfig::default()
        },
        attribution: attribution_model(),
        ..PipelineConfig::default()
    };
    Pipeline::new(config, Some(Arc::clone(regions)))
}

/// The model to bench under, from `PIPELINE_BENCH_ATTRIBUTION` (a name of
/// `pipeline.attribution`); unset: the default.
fn attribution_model() -> AttributionModel {
    match std::env::var("PIPELINE_BENCH_ATTRIBUTION") {
        Ok(name) => AttributionModel::from_name(&name)
            .unwrap_or_else(|| panic!("PIPELINE_BENCH_ATTRIBUTION={name:?} names no model")),
        Err(_) => AttributionModel::default(),
    }
}

/// Feeds `records` from `first_offset` on, taking the deltas every `DELTAS_EVERY` records;
/// returns the number of delta rows so that nothing is optimized away.
fn process_all(pipeline: &mut Pipeline, first_offset: u64, records: &[LogRecord]) -> usize {
    let mut rows = 0;
    for (chunk_index, chunk) in records.chunks(DELTAS_EVERY).enumerate() {
        let base = first_offset + (chunk_index * DELTAS_EVERY) as u64;
        for (i, record) in chunk.iter().enumerate() {
            pipeline.process(base + i as u64, black_box(record));
        }
        rows += pipeline.take_deltas().rows.len();
    }
    rows
}

#[divan::bench(sample_count = 10, sample_size = 1)]
fn process_records(bencher: Bencher<'_, '_>) {
    let records = records();
    let regions = regions();
    // One untimed run to check the traffic exercises every rule.
    let mut check = pipeline(&regions);
    process_all(&mut check, 0, &records);
    let counters = check.counters();
    let event_times = records.iter().filter_map(|record| match record {
        LogRecord::Event(event) => Some(event.ts.0),
        LogRecord::Spend(_) => None,
    });
    let (first, last) = event_times.fold((i64::MAX, i64::MIN), |(lo, hi), ts| {
        (lo.min(ts), hi.max(ts))
    });
    eprintln!(
        "workload: {} records over {} minutes of event time, {:?}; at the end {} users and {} event ids held",
        records.len(),
        (last - first) / 60_000,
        counters,
        check.active_users(),
        check.remembered_event_ids(),
    );
    assert!(counters.exact_duplicates > 0 && counters.near_duplicates > 0);
    assert!(counters.flagged > 0 && counters.late.iter().all(|&n| n > 0));
    assert!(counters.spend_records > 0);
    drop(check);
    bencher
        .counter(ItemsCount::new(records.len()))
        .with_inputs(|| pipeline(&regions))
        .bench_local_values(|mut pipeline| {
            process_all(&mut pipeline, 0, &records);
            pipeline
        });
}

/// The log's batches, as intake writes them (one per request of `BATCH` records).
fn batches(records: &[LogRecord]) -> Vec<Vec<u8>> {
    records
        .chunks(BATCH)
        .map(|chunk| encode_batch(chunk, NOW, 1))
        .collect()
}

#[divan::bench(sample_count = 10, sample_size = 1)]
fn decode_log_batches(bencher: Bencher<'_, '_>) {
    let batches = batches(&records());
    bencher.counter(ItemsCount::new(RECORDS)).bench_local(|| {
        let mut decoded = 0;
        for batch in &batches {
            let (_, records) = decode_batch(black_box(batch)).unwrap();
            decoded += records.len();
        }
        decoded
    });
}

#[divan::bench(sample_count = 10, sample_size = 1)]
fn decode_and_process(bencher: Bencher<'_, '_>) {
    let batches = batches(&records());
    let regions = regions();
    bencher
        .counter(ItemsCount::new(RECORDS))
        .with_inputs(|| pipeline(&regions))
        .bench_local_values(|mut pipeline| {
            let mut offset = 0u64;
            // One read of the processor: `DELTAS_EVERY` records, then the deltas.
            for read in batches.chunks(DELTAS_EVERY / BATCH) {
                for batch in read {
                    let (_, records) = decode_batch(batch).unwrap();
                    for record in &records {
                        pipeline.process(offset, record);
                        offset += 1;
                    }
                }
                black_box(pipeline.take_deltas());
            }
            pipeline
        });
}

/// A pipeline after the whole run: the state a snapshot writes (users, remembered event ids,
/// expiry buckets, dimensions).
fn state_after_run() -> Pipeline {
    let regions = regions();
    let mut pipeline = pipeline(&regions);
    process_all(&mut pipeline, 0, &records());
    eprintln!(
        "snapshot of {} users and {} event ids: {} bytes",
        pipeline.active_users(),
        pipeline.remembered_event_ids(),
        pipeline.encode_snapshot().unwrap().len()
    );
    pipeline
}

/// A snapshot as the processor wrote it before: copy the state, then encode the copy.
#[divan::bench(sample_count = 10, sample_size = 1)]
fn snapshot_copy_then_encode(bencher: Bencher<'_, '_>) {
    let pipeline = state_after_run();
    bencher.bench_local(|| postcard::to_allocvec(&black_box(&pipeline).snapshot()).unwrap());
}

/// A snapshot as the processor writes it: encoded from the live state.
#[divan::bench(sample_count = 10, sample_size = 1)]
fn snapshot_encode_in_place(bencher: Bencher<'_, '_>) {
    let pipeline = state_after_run();
    bencher.bench_local(|| black_box(&pipeline).encode_snapshot().unwrap());
}
