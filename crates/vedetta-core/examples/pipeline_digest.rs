//! A digest of everything the pipeline emits on the `pipeline` bench's workload.
//!
//! `cargo run --release -p vedetta-core --example pipeline_digest`
//!
//! For work on the pipeline's speed: a change that must not change any number is checked by
//! running this before and after it and comparing the lines. It feeds the bench's 500,000
//! generated records (the same generator settings, intake judging, GeoIP enrichment and
//! delta cadence as `benches/pipeline.rs`) under each attribution model, and prints per
//! model a SHA-256 of every delta row taken (by granularity, window and dimension names,
//! sorted within each take, so that neither hash-map order nor dimension ids matter), of
//! every spend row, and of the final counters, with the number of rows.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::sync::Arc;
use vedetta_core::enrich::{EnrichConfig, MmdbRegionLookup, RegionLookup};
use vedetta_core::pipeline::{AttributionModel, Pipeline, PipelineConfig};
use vedetta_synth::geoip::catalog_region_mmdb;

#[path = "../benches/support/workload.rs"]
mod workload;
use workload::{DELTAS_EVERY, records};

fn main() {
    let records = records();
    let regions: Arc<dyn RegionLookup> =
        Arc::new(MmdbRegionLookup::from_bytes(catalog_region_mmdb()).unwrap());
    for model in AttributionModel::ALL {
        let config = PipelineConfig {
            enrich: EnrichConfig {
                internal_hosts: vec!["www.bottega.example".into()],
                ..EnrichConfig::default()
            },
            attribution: model,
            ..PipelineConfig::default()
        };
        let mut pipeline = Pipeline::new(config, Some(Arc::clone(&regions)));
        let mut digest = Sha256::new();
        let (mut rows, mut spend_rows) = (0, 0);
        for (chunk_index, chunk) in records.chunks(DELTAS_EVERY).enumerate() {
            let base = (chunk_index * DELTAS_EVERY) as u64;
            for (i, record) in chunk.iter().enumerate() {
                pipeline.process(base + i as u64, record);
            }
            let deltas = pipeline.take_deltas();
            let mut lines: Vec<String> = Vec::with_capacity(deltas.rows.len());
            for (key, counters) in &deltas.rows {
                let dims = pipeline.dims(key.dims).unwrap();
                lines.push(format!(
                    "{} {} {:?} {:?}",
                    key.granularity.as_str(),
                    key.window_start,
                    dims,
                    counters
                ));
            }
            for (key, spend) in &deltas.spend_micros {
                let dims = pipeline.dims(key.channel_campaign).unwrap();
                lines.push(format!(
                    "spend {} {} {:?} {:?}",
                    key.granularity.as_str(),
                    key.window_start,
                    dims,
                    spend
                ));
            }
            rows += deltas.rows.len();
            spend_rows += deltas.spend_micros.len();
            lines.sort_unstable();
            let mut take = format!("take {chunk_index}\n");
            for line in lines {
                writeln!(take, "{line}").unwrap();
            }
            digest.update(take.as_bytes());
        }
        let end = format!(
            "{:?} users {} event ids {} orders {} dormant {}",
            pipeline.counters(),
            pipeline.active_users(),
            pipeline.remembered_event_ids(),
            pipeline.remembered_orders(),
            pipeline.dormant_users(),
        );
        digest.update(end.as_bytes());
        let hex: String = digest
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        println!(
            "{:<16} {hex}  ({rows} rows, {spend_rows} spend rows)",
            model.as_str()
        );
    }
}
