//! Trigger engine cost (issue 12): 100 triggers over the pipeline bench's traffic, one core.
//!
//! `cargo bench -p vedetta-core --bench act`. The same 500,000 generated records as
//! `benches/pipeline.rs` (judged once by intake, as the log holds them) are fed to the
//! trigger engine with 100 triggers: 25 `segment_cpa` (by channel, by campaign, by both,
//! thresholds spread so that some segments fire), 25 `abandoned_cart`, 25 `tag`, 25
//! `conversion_feed`. After every read of 10,000 records the consumer's step is run as the
//! server runs it: the minutes the watermark passed are judged (on KPI totals made up once
//! from the traffic, half of the segments over their threshold) and `advance` is called.
//! `pipeline_alone` runs the pipeline on the same records in the same process, so the two
//! per-event costs compare on one machine under one load.
//!
//! It also prints the engine's bytes per user at the end of the run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use divan::{Bencher, black_box, counter::ItemsCount};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use vedetta_core::EventKind;
use vedetta_core::LogRecord;
use vedetta_core::act::engine::{ActState, Engine, TEXT_ROWS};
use vedetta_core::act::segment_window::SegmentWindow;
use vedetta_core::act::stage::{StagedOutput, TriggerSet, TriggerStage};
use vedetta_core::act::triggers::{RawTrigger, Trigger, check_triggers};
use vedetta_core::enrich::{EnrichConfig, MmdbRegionLookup, RegionLookup, campaign_of, channel_of};
use vedetta_core::pipeline::kpi::{KpiCounters, SpendCounters};
use vedetta_core::pipeline::{Pipeline, PipelineConfig};
use vedetta_core::watch::evaluate::GroupTotals;
use vedetta_core::watch::rules::{Dimension, Rule};
use vedetta_synth::geoip::catalog_region_mmdb;

#[path = "support/workload.rs"]
mod workload;
use workload::{DELTAS_EVERY, records};

fn main() {
    divan::main();
}

fn triggers() -> Vec<Trigger> {
    let mut raw = Vec::new();
    let push = |name: String, kind: &str| RawTrigger {
        name: Some(name),
        kind: Some(kind.into()),
        notify: vec!["push".into()],
        ..RawTrigger::default()
    };
    for i in 0..25 {
        let mut t = push(format!("cpa_{i}"), "segment_cpa");
        t.group_by = match i % 3 {
            0 => vec!["channel".into()],
            1 => vec!["campaign".into()],
            _ => vec!["channel".into(), "campaign".into()],
        };
        t.threshold = Some(5.0 + i as f64);
        t.over = Some(format!("{}m", 5 + i % 10));
        t.min_conversions = Some(1);
        raw.push(t);
        let mut t = push(format!("cart_{i}"), "abandoned_cart");
        t.after = Some(format!("{}m", 20 + i));
        raw.push(t);
        let mut t = push(format!("tag_{i}"), "tag");
        t.tag = Some(format!("tag-{i}"));
        if i % 2 == 0 {
            t.on = Some("purchase_over".into());
            t.min_value = Some(50.0 + i as f64 * 10.0);
        } else {
            t.on = Some("first_purchase".into());
        }
        raw.push(t);
        raw.push(push(format!("feed_{i}"), "conversion_feed"));
    }
    let d: BTreeSet<String> = ["push".to_string()].into();
    check_triggers(&raw, &d, &d).unwrap()
}

/// A realistic set of 100 (what an agency configures): 88 `segment_cpa` on the
/// campaigns' CPA (two thirds by channel and campaign, a third by campaign; thresholds
/// 25–112 €, so that 5 of them fire, on half of the segments; windows 10–60 minutes, a
/// volume guard of 2), 4 `abandoned_cart` (30 minutes
/// to a day), 4 `tag` (VIP over 100 and 250 €, first purchase, repeat buyers over 50 €)
/// and 4 `conversion_feed` (the CRM, the e-mail tool, two webhooks).
fn mix_triggers() -> Vec<Trigger> {
    check(&mix_raw())
}

fn check(raw: &[RawTrigger]) -> Vec<Trigger> {
    let d: BTreeSet<String> = ["push".to_string()].into();
    check_triggers(raw, &d, &d).unwrap()
}

/// [`mix_triggers`] as written.
fn mix_raw() -> Vec<RawTrigger> {
    let mut raw = Vec::new();
    let push = |name: String, kind: &str| RawTrigger {
        name: Some(name),
        kind: Some(kind.into()),
        notify: vec!["push".into()],
        ..RawTrigger::default()
    };
    for i in 0..88 {
        let mut t = push(format!("cpa_{i}"), "segment_cpa");
        t.group_by = if i % 3 == 2 {
            vec!["campaign".into()]
        } else {
            vec!["channel".into(), "campaign".into()]
        };
        t.threshold = Some(25.0 + i as f64);
        t.over = Some(format!("{}m", [10, 15, 30, 60][i % 4]));
        t.min_conversions = Some(2);
        raw.push(t);
    }
    for (i, after) in ["30m", "1h", "4h", "24h"].into_iter().enumerate() {
        let mut t = push(format!("cart_{i}"), "abandoned_cart");
        t.after = Some(after.into());
        raw.push(t);
    }
    for (i, (on, min)) in [
        ("purchase_over", Some(100.0)),
        ("purchase_over", Some(250.0)),
        ("first_purchase", None),
        ("purchase_over", Some(50.0)),
    ]
    .into_iter()
    .enumerate()
    {
        let mut t = push(format!("tag_{i}"), "tag");
        t.tag = Some(format!("tag-{i}"));
        t.on = Some(on.into());
        t.min_value = min;
        raw.push(t);
    }
    for i in 0..4 {
        raw.push(push(format!("feed_{i}"), "conversion_feed"));
    }
    raw
}

/// Made-up window totals for every (channel, campaign) of the traffic: CPA 30 € for half
/// of them, 3 € for the others.
fn totals_of(records: &[LogRecord]) -> Vec<([String; 2], GroupTotals)> {
    let mut pairs = BTreeSet::new();
    for r in records {
        if let LogRecord::Event(e) = r {
            pairs.insert([channel_of(e, &[]).into_owned(), campaign_of(e).to_owned()]);
        }
    }
    pairs
        .into_iter()
        .enumerate()
        .map(|(i, pair)| {
            let conversions = 10;
            let spend = if i % 2 == 0 { 300 } else { 30 };
            let totals = GroupTotals {
                counters: KpiCounters {
                    conversions,
                    sessions: 20,
                    ..KpiCounters::default()
                },
                spend: Some(SpendCounters {
                    micros: spend * 1_000_000,
                    records: 1,
                }),
                ..GroupTotals::default()
            };
            (pair, totals)
        })
        .collect()
}

fn group(rule: &Rule, totals: &[([String; 2], GroupTotals)]) -> HashMap<Vec<String>, GroupTotals> {
    let mut out: HashMap<Vec<String>, GroupTotals> = HashMap::new();
    for (pair, t) in totals {
        let key: Vec<String> = rule
            .group_by
            .iter()
            .map(|d| match d {
                Dimension::Channel => pair[0].clone(),
                _ => pair[1].clone(),
            })
            .collect();
        let entry = out.entry(key).or_default();
        entry.counters.add(&t.counters);
        let spend = entry.spend.get_or_insert_with(SpendCounters::default);
        if let Some(s) = t.spend {
            spend.micros += s.micros;
            spend.records += s.records;
        }
    }
    out
}

/// Folds `outputs` into `digest` (apart, so that instruction counts can leave it out).
#[inline(never)]
fn fold_digest(digest: &mut u64, outputs: &[vedetta_core::act::engine::Output]) {
    for output in outputs {
        let text = format!("{output:?}");
        *digest = xxhash_rust::xxh3::xxh3_64_with_seed(text.as_bytes(), *digest);
    }
}

/// The consumer's work over `records`: observe, then per read judge the minutes passed and
/// advance. Returns the outputs' count; with `digest`, folds every output (its `Debug`
/// text, in order) into it, so two builds can be shown to decide the same.
fn run_engine(
    engine: &mut Engine,
    records: &[LogRecord],
    totals: Option<&HashMap<String, HashMap<Vec<String>, GroupTotals>>>,
    mut digest: Option<&mut u64>,
) -> Run {
    let mut outputs = Vec::new();
    let mut run = Run::default();
    let mut max_ts = i64::MIN;
    let mut judged: Option<i64> = None;
    for chunk in records.chunks(DELTAS_EVERY) {
        for record in chunk {
            if let LogRecord::Event(e) = black_box(record) {
                max_ts = max_ts.max(e.ts.0);
                engine.observe(e, &mut outputs);
            }
        }
        let watermark = max_ts - 5_000;
        let last_end = watermark.div_euclid(60_000) * 60_000;
        let mut m = judged.map_or(last_end, |j| j + 60_000);
        while let Some(totals) = totals.filter(|_| m <= last_end) {
            engine.judge_minute(
                m,
                &mut |rule| totals.get(&rule.name).cloned().unwrap_or_default(),
                &mut outputs,
            );
            judged = Some(m);
            m += 60_000;
        }
        engine.advance(watermark, &mut outputs);
        // The consumer stores what the step changed with its offset.
        let changes = engine.take_changes().expect("the state encodes");
        run.steps += 1;
        run.globals_bytes += changes.globals.len();
        for (key, row) in &changes.users {
            let bytes = row.as_ref().map_or(0, Vec::len);
            if *key >= TEXT_ROWS {
                run.text_rows += 1;
                run.text_bytes += bytes;
            } else {
                run.rows += 1;
                run.row_bytes += bytes;
            }
        }
        black_box(changes);
        run.outputs += outputs.len();
        if let Some(digest) = digest.as_deref_mut() {
            fold_digest(digest, &outputs);
        }
        outputs.clear();
    }
    run
}

/// What one run of [`run_engine`] made and stored.
#[derive(Default)]
struct Run {
    outputs: usize,
    /// Consumer steps (reads of [`DELTAS_EVERY`] records).
    steps: usize,
    /// User rows written (or removed) over the steps, and their bytes.
    rows: usize,
    row_bytes: usize,
    /// Text rows written (or removed) over the steps, and their bytes.
    text_rows: usize,
    text_bytes: usize,
    /// Bytes of the globals written over the steps.
    globals_bytes: usize,
}

fn engine() -> Engine {
    engine_of(triggers())
}

fn engine_of(triggers: Vec<Trigger>) -> Engine {
    Engine::new(triggers, vec![EventKind::Purchase], ActState::default())
        .with_enrichment(enrichment())
}

/// The shop's own host, as the generated traffic's referrers name it.
fn enrichment() -> EnrichConfig {
    EnrichConfig {
        internal_hosts: vec!["www.bottega.example".into()],
        ..EnrichConfig::default()
    }
}

fn pipeline_config() -> PipelineConfig {
    PipelineConfig {
        enrich: enrichment(),
        ..PipelineConfig::default()
    }
}

/// The window totals of every segment trigger, grouped once (the server reads them from
/// the KPI store once per minute, not per event).
fn grouped(
    records: &[LogRecord],
    triggers: &[Trigger],
) -> HashMap<String, HashMap<Vec<String>, GroupTotals>> {
    let totals = totals_of(records);
    triggers
        .iter()
        .filter_map(|t| match &t.kind {
            vedetta_core::act::triggers::TriggerKind::SegmentCpa { rule, .. } => {
                Some((t.name.clone(), group(rule, &totals)))
            }
            _ => None,
        })
        .collect()
}

/// The per-event path alone: observe every record (100 triggers: tags and the feed act on
/// each conversion, intents and carts are kept) and advance after each read.
#[divan::bench(sample_count = 10, sample_size = 1)]
fn observe_100_triggers(bencher: Bencher<'_, '_>) {
    let records = records();
    bencher
        .counter(ItemsCount::new(records.len()))
        .with_inputs(engine)
        .bench_local_values(|mut engine| {
            run_engine(&mut engine, &records, None, None);
            engine
        });
}

/// The whole consumer step: observe, and judge every minute the watermark passes (25
/// segment triggers, half of their segments over the threshold, users selected).
#[divan::bench(sample_count = 10, sample_size = 1)]
fn observe_and_judge_100_triggers(bencher: Bencher<'_, '_>) {
    let records = records();
    observe_and_judge(bencher, &records, "100 triggers", triggers);
}

/// The whole consumer step, with a realistic set of 100 triggers ([`mix_triggers`]):
/// most of them segment triggers, a few carts, tags and feeds.
#[divan::bench(sample_count = 10, sample_size = 1)]
fn observe_and_judge_realistic_mix(bencher: Bencher<'_, '_>) {
    let records = records();
    observe_and_judge(bencher, &records, "realistic mix", mix_triggers);
}

fn observe_and_judge(
    bencher: Bencher<'_, '_>,
    records: &[LogRecord],
    what: &str,
    set: fn() -> Vec<Trigger>,
) {
    let totals = grouped(records, &set());
    // One untimed run: what the triggers did, and the state left per user.
    let mut check = engine_of(set());
    let mut digest = 0;
    let run = run_engine(&mut check, records, Some(&totals), Some(&mut digest));
    let outputs = run.outputs;
    let users = check.users().max(1);
    eprintln!(
        "{what}: {outputs} outputs (digest {digest:016x}), {} users held at the end, \
         {} bytes per user (approximate, with the {} texts they refer to), {} withheld \
         without consent",
        check.users(),
        check.user_bytes() / users,
        check.state().texts.len(),
        check.state().withheld.values().sum::<u64>()
    );
    assert!(outputs > 0);
    // The adapter stores, with every step, the globals and the rows of the users changed.
    let stored = run.row_bytes + run.text_bytes + run.globals_bytes;
    eprintln!(
        "{what}: {} steps stored {} user rows of {} bytes ({} a row), {} text rows of {} \
         bytes, globals of {} bytes: {} bytes ({} bytes a step)",
        run.steps,
        run.rows,
        run.row_bytes,
        run.row_bytes / run.rows.max(1),
        run.text_rows,
        run.text_bytes,
        run.globals_bytes,
        stored,
        stored / run.steps.max(1)
    );
    bencher
        .counter(ItemsCount::new(records.len()))
        .with_inputs(|| engine_of(set()))
        .bench_local_values(|mut engine| {
            run_engine(&mut engine, records, Some(&totals), None);
            engine
        });
}

fn regions() -> Arc<dyn RegionLookup> {
    Arc::new(MmdbRegionLookup::from_bytes(catalog_region_mmdb()).unwrap())
}

#[divan::bench(sample_count = 10, sample_size = 1)]
fn pipeline_alone(bencher: Bencher<'_, '_>) {
    let records = records();
    let regions = regions();
    let config = pipeline_config();
    bencher
        .counter(ItemsCount::new(records.len()))
        .with_inputs(|| Pipeline::new(config.clone(), Some(Arc::clone(&regions))))
        .bench_local_values(|mut pipeline| {
            run_pipeline_alone(&mut pipeline, &records);
            pipeline
        });
}

/// The processor's loop: every record, the deltas taken after each read of
/// [`DELTAS_EVERY`]. (Its own function, for `callgrind --toggle-collect`.)
#[inline(never)]
fn run_pipeline_alone(pipeline: &mut Pipeline, records: &[LogRecord]) {
    for (chunk_index, chunk) in records.chunks(DELTAS_EVERY).enumerate() {
        let base = (chunk_index * DELTAS_EVERY) as u64;
        for (i, record) in chunk.iter().enumerate() {
            pipeline.process(base + i as u64, black_box(record));
        }
        black_box(pipeline.take_deltas());
    }
}

/// The processor's loop with a [`SegmentWindow`] fed (stage 2 of "The next shape"): after
/// every record its minute check, at a minute's end the deltas so far taken into it, at
/// every read's end the batch's deltas taken through it. With `totals`, every segment
/// trigger's window totals are made at every minute end judged (what `judge_minute` would
/// read); without, nothing is judged. Returns the minutes judged.
#[inline(never)]
fn run_pipeline_with_window(
    pipeline: &mut Pipeline,
    window: &mut SegmentWindow,
    rules: &[&Rule],
    records: &[LogRecord],
    totals: bool,
) -> usize {
    let mut minutes = 0;
    for (chunk_index, chunk) in records.chunks(DELTAS_EVERY).enumerate() {
        let base = (chunk_index * DELTAS_EVERY) as u64;
        for (i, record) in chunk.iter().enumerate() {
            pipeline.process(base + i as u64, black_box(record));
            window.after_record(pipeline, |t| {
                minutes += 1;
                if totals {
                    for rule in rules {
                        black_box(t.of(rule));
                    }
                }
            });
        }
        black_box(window.take_batch_deltas(pipeline));
    }
    minutes
}

fn segment_rules(triggers: &[Trigger]) -> Vec<&Rule> {
    triggers
        .iter()
        .filter_map(|t| match &t.kind {
            vedetta_core::act::triggers::TriggerKind::SegmentCpa { rule, .. } => Some(&**rule),
            _ => None,
        })
        .collect()
}

fn pipeline_with_window(bencher: Bencher<'_, '_>, totals: bool) {
    let records = records();
    let regions = regions();
    let config = pipeline_config();
    let triggers = mix_triggers();
    let rules = segment_rules(&triggers);
    let window =
        || SegmentWindow::new(&triggers, config.out_of_orderness_ms).expect("segment triggers");
    bencher
        .counter(ItemsCount::new(records.len()))
        .with_inputs(|| {
            (
                Pipeline::new(config.clone(), Some(Arc::clone(&regions))),
                window(),
            )
        })
        .bench_local_values(|(mut pipeline, mut window)| {
            let minutes =
                run_pipeline_with_window(&mut pipeline, &mut window, &rules, &records, totals);
            (pipeline, window, minutes)
        });
}

/// `pipeline_alone` with a segment window fed for the realistic mix's 88 segment
/// triggers (longest window 60 minutes), nothing judged: the cost of feeding it.
#[divan::bench(sample_count = 10, sample_size = 1)]
fn pipeline_feeding_segment_window(bencher: Bencher<'_, '_>) {
    pipeline_with_window(bencher, false);
}

/// As `pipeline_feeding_segment_window`, and at every minute end the window totals of
/// each of the 88 segment triggers (`MinuteTotals::of`: made once per shape, cloned for
/// each trigger, as the engine would take them).
#[divan::bench(sample_count = 10, sample_size = 1)]
fn pipeline_feeding_segment_window_and_totals(bencher: Bencher<'_, '_>) {
    pipeline_with_window(bencher, true);
}

/// The processor's loop with the trigger stage (issue 12, stage 3), as it will run: after
/// every record `TriggerStage::after_record` (observe, the window's minute check and the
/// judging of each minute end on its totals, advance), at every read's end the batch's
/// deltas through the stage and its staged outputs taken. Returns the outputs staged.
#[inline(never)]
fn run_pipeline_with_stage(
    pipeline: &mut Pipeline,
    stage: &mut TriggerStage,
    records: &[LogRecord],
    mut digest: Option<&mut u64>,
) -> usize {
    let mut outputs = 0;
    for (chunk_index, chunk) in records.chunks(DELTAS_EVERY).enumerate() {
        let base = (chunk_index * DELTAS_EVERY) as u64;
        for (i, record) in chunk.iter().enumerate() {
            pipeline.process(base + i as u64, black_box(record));
            stage.after_record(pipeline, record);
        }
        black_box(stage.take_batch_deltas(pipeline));
        let staged = stage.take_staged();
        outputs += staged.len();
        if let Some(digest) = digest.as_deref_mut() {
            fold_staged_digest(digest, &staged);
        }
        black_box(staged);
    }
    outputs
}

/// Folds `staged` into `digest` (apart, so that instruction counts can leave it out).
#[inline(never)]
fn fold_staged_digest(digest: &mut u64, staged: &[(u64, StagedOutput)]) {
    for output in staged {
        let text = format!("{output:?}");
        *digest = xxhash_rust::xxh3::xxh3_64_with_seed(text.as_bytes(), *digest);
    }
}

fn stage_of_mix() -> TriggerStage {
    let raw = mix_raw();
    let triggers = check(&raw);
    let config = pipeline_config();
    TriggerStage::new(
        TriggerSet { raw, triggers },
        vec![EventKind::Purchase],
        config.enrich.clone(),
        config.out_of_orderness_ms,
    )
    .expect("the realistic mix checks")
}

/// `pipeline_alone` with the trigger stage running the realistic mix ([`mix_triggers`])
/// on the window's own totals. An untimed run first prints what it staged and what a
/// snapshot of the stage's state costs (the copy on the processor's thread, the section's
/// encoding and its size).
#[divan::bench(sample_count = 10, sample_size = 1)]
fn pipeline_with_stage_realistic_mix(bencher: Bencher<'_, '_>) {
    let records = records();
    let regions = regions();
    let config = pipeline_config();
    let mut pipeline = Pipeline::new(config.clone(), Some(Arc::clone(&regions)));
    let mut stage = stage_of_mix();
    let mut digest = 0;
    let outputs = run_pipeline_with_stage(&mut pipeline, &mut stage, &records, Some(&mut digest));
    let started = std::time::Instant::now();
    let copy = stage.copy();
    let copied = started.elapsed();
    let started = std::time::Instant::now();
    let mut section = Vec::new();
    copy.encode_section(&mut section).expect("between batches");
    let encoded = started.elapsed();
    let started = std::time::Instant::now();
    let mut live = Vec::new();
    stage.encode_section(&mut live).expect("between batches");
    let encoded_live = started.elapsed();
    assert_eq!(live, section);
    let stats = stage.stats();
    eprintln!(
        "stage, realistic mix: {outputs} outputs staged (digest {digest:016x}), {} users, \
         {} texts; snapshot section {} bytes: copy {copied:?}, its encoding {encoded:?} \
         (from the live stage {encoded_live:?})",
        stats.users,
        stats.texts,
        section.len()
    );
    assert!(outputs > 0);
    bencher
        .counter(ItemsCount::new(records.len()))
        .with_inputs(|| {
            (
                Pipeline::new(config.clone(), Some(Arc::clone(&regions))),
                stage_of_mix(),
            )
        })
        .bench_local_values(|(mut pipeline, mut stage)| {
            run_pipeline_with_stage(&mut pipeline, &mut stage, &records, None);
            (pipeline, stage)
        });
}
