//! Enrichment cost per event: channel, campaign, device (user agent) and region (field or
//! GeoIP), on the generator's traffic as intake stores it.
//!
//! `cargo bench -p vedetta-core --bench enrich`. 10,000 generated events are judged by
//! intake once; each iteration enriches all of them with a warm enricher (the steady state:
//! a shop's user agents and visitors' networks repeat), and one variant starts cold to show
//! what the memos save.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use divan::{Bencher, black_box, counter::ItemsCount};
use std::sync::Arc;
use vedetta_core::enrich::{EnrichConfig, Enricher, MmdbRegionLookup, RegionLookup};
use vedetta_core::intake::{BodyFormat, IntakeContext, IntakeLimits, judge_events};
use vedetta_core::privacy::{PseudonymKey, Pseudonymizer};
use vedetta_core::{LogRecord, StoredEvent};
use vedetta_synth::geoip::catalog_region_mmdb;
use vedetta_synth::{Generator, SynthConfig, SynthRecord, to_ndjson_line};

const EVENTS: usize = 10_000;

fn main() {
    divan::main();
}

fn events() -> Vec<StoredEvent> {
    let mut body = Vec::new();
    for arrival in Generator::new(SynthConfig::default())
        .expect("valid config")
        .filter(|a| matches!(a.record, SynthRecord::Event(_)))
        .take(EVENTS)
    {
        to_ndjson_line(&arrival.record, &mut body);
    }
    let pseudonymizer = Pseudonymizer::new(PseudonymKey::from_bytes(1, &[7; 32]).unwrap(), vec![]);
    let limits = IntakeLimits {
        max_events_per_request: EVENTS,
        ..IntakeLimits::default()
    };
    let ctx = IntakeContext {
        now_ms: 4_102_444_800_000,
        pseudonymizer: &pseudonymizer,
        limits: &limits,
    };
    let judged = judge_events(&body, BodyFormat::Ndjson, &ctx).unwrap();
    assert_eq!(
        judged.records.len(),
        EVENTS,
        "{:?}",
        judged.rejected.first()
    );
    judged
        .records
        .into_iter()
        .filter_map(|record| match record {
            LogRecord::Event(event) => Some(event),
            LogRecord::Spend(_) => None,
        })
        .collect()
}

fn enricher() -> Enricher {
    let lookup: Arc<dyn RegionLookup> =
        Arc::new(MmdbRegionLookup::from_bytes(catalog_region_mmdb()).unwrap());
    let config = EnrichConfig {
        internal_hosts: vec!["www.bottega.example".into()],
        ..EnrichConfig::default()
    };
    Enricher::new(config, Some(lookup))
}

/// Sums something from every result so that nothing is optimized away.
fn enrich_all(enricher: &mut Enricher, events: &[StoredEvent]) -> usize {
    let mut sum = 0;
    for event in events {
        let enrichment = enricher.enrich(black_box(event));
        sum += enrichment.channel.len()
            + enrichment.campaign.len()
            + enrichment.device as usize
            + enrichment.region.code().len()
            + enrichment.os.len();
    }
    sum
}

#[divan::bench]
fn enrich_warm(bencher: Bencher<'_, '_>) {
    let events = events();
    let mut enricher = enricher();
    enrich_all(&mut enricher, &events);
    bencher
        .counter(ItemsCount::new(EVENTS))
        .bench_local(|| enrich_all(&mut enricher, &events));
}

#[divan::bench]
fn enrich_without_network_memo(bencher: Bencher<'_, '_>) {
    let events = events();
    let lookup: Arc<dyn RegionLookup> =
        Arc::new(MmdbRegionLookup::from_bytes(catalog_region_mmdb()).unwrap());
    let config = EnrichConfig {
        region_cache_capacity: 0,
        ..EnrichConfig::default()
    };
    let mut enricher = Enricher::new(config, Some(lookup));
    enrich_all(&mut enricher, &events);
    bencher
        .counter(ItemsCount::new(EVENTS))
        .bench_local(|| enrich_all(&mut enricher, &events));
}

#[divan::bench(sample_count = 10)]
fn enrich_cold(bencher: Bencher<'_, '_>) {
    let events = events();
    bencher
        .counter(ItemsCount::new(EVENTS))
        .with_inputs(enricher)
        .bench_local_values(|mut enricher| enrich_all(&mut enricher, &events));
}
