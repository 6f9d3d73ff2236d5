//! Writes the seeds that only code can make into `fuzz/corpus/`: log batches from
//! `encode_batch`, snapshots of a pipeline that processed real events, and encoded KPI keys
//! and values. `cargo run -p vedetta-fuzz --example seeds` (from the repository root).
//! The text seeds (events, query strings, configuration) are files written by hand.

use std::path::Path;
use vedetta_core::act::push::{PushEvent, SegmentSignal, SignalNotice};
use vedetta_core::act::stage::{StagedOutput, TriggerSet, TriggerStage};
use vedetta_core::intake::{BodyFormat, IntakeContext, judge_events, judge_spend};
use vedetta_core::pipeline::kpi::{KpiCounters, SpendCounters};
use vedetta_core::pipeline::windows::Granularity;
use vedetta_core::pipeline::{Pipeline, PipelineConfig};
use vedetta_core::record::{LogRecord, UserPseudonym, encode_batch};
use vedetta_fuzz::intake::{NOW_MS, limits, pseudonymizer};
use vedetta_store::kpi_store::{
    encode_row_key, encode_row_value, encode_spend_key, encode_spend_value,
};
use vedetta_store::{RowKey, SpendRowKey};

const EVENTS: &str = include_str!("../../../fuzz/corpus/intake/events-ndjson");
const SPEND: &str = include_str!("../../../fuzz/corpus/intake/costs-ndjson");

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let write = |target: &str, name: &str, bytes: &[u8]| -> std::io::Result<()> {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), bytes)
    };

    // Records as the server stores them: the intake seeds, judged.
    let pseudonymizer = pseudonymizer();
    let limits = limits();
    let ctx = IntakeContext {
        now_ms: NOW_MS,
        pseudonymizer: &pseudonymizer,
        limits: &limits,
    };
    // The seed files start with the target's selector byte.
    let events = judge_events(&EVENTS.as_bytes()[1..], BodyFormat::Ndjson, &ctx)?;
    let spend = judge_spend(&SPEND.as_bytes()[1..], BodyFormat::Ndjson, &ctx)?;
    assert!(events.rejected.is_empty() && spend.rejected.is_empty());
    let mut records: Vec<LogRecord> = events.records;
    records.extend(spend.records);

    write(
        "log_batch",
        "events-and-spend",
        &encode_batch(&records, NOW_MS, 1),
    )?;
    write(
        "log_batch",
        "one-event",
        &encode_batch(&records[..1], NOW_MS, 2),
    )?;
    write("log_batch", "empty", &encode_batch(&[], NOW_MS, 1))?;

    // Snapshots of a pipeline that took those records: empty, midway, at the end.
    let mut pipeline = Pipeline::new(PipelineConfig::default(), None);
    write("snapshot", "empty", &pipeline.encode_snapshot()?)?;
    for (offset, record) in (0u64..).zip(&records) {
        pipeline.process(offset, record);
        if offset == 2 {
            write("snapshot", "after-3-records", &pipeline.encode_snapshot()?)?;
        }
    }
    write(
        "snapshot",
        "after-all-records",
        &pipeline.encode_snapshot()?,
    )?;

    // The trigger stage's stored forms (the first byte is the target's selector): a set
    // of every kind, the section of a stage that took the records, its staged outputs.
    let raw = r#"[
        {"name":"cpa_alto","kind":"segment_cpa","group_by":["channel","campaign"],"threshold":20.0,
         "over":"10m","min_conversions":2,"segment_label":"costi > 20€","notify":["crm-push"]},
        {"name":"carrello","kind":"abandoned_cart","after":"30m","notify":["crm-push"]},
        {"name":"vip","kind":"tag","tag":"VIP","on":"purchase_over","min_value":50.0,"notify":["crm"]},
        {"name":"cliente","kind":"tag","tag":"customer","on":"first_purchase","notify":["crm"]},
        {"name":"feed","kind":"conversion_feed","notify":["crm-push"]}
    ]"#;
    let set = TriggerSet::decode(&[&[1u8][..], raw.as_bytes()].concat())?;
    write(
        "trigger_stage",
        "set",
        &[&[1u8][..], &set.encode()].concat(),
    )?;
    let config = PipelineConfig::default();
    let mut stage = TriggerStage::new(
        set,
        config.conversion_types.clone(),
        config.enrich.clone(),
        config.out_of_orderness_ms,
    )?;
    let mut pipeline = Pipeline::new(config, None);
    let mut section = vec![0u8];
    stage.encode_section(&mut section)?;
    write("trigger_stage", "section-empty", &section)?;
    for (offset, record) in (0u64..).zip(&records) {
        pipeline.process(offset, record);
        stage.after_record(&mut pipeline, record);
    }
    let _ = stage.take_batch_deltas(&mut pipeline);
    let mut section = vec![0u8];
    stage.encode_section(&mut section)?;
    write("trigger_stage", "section-after-all-records", &section)?;
    // Staged outputs as the router reads them: a user's (with its product) and a segment's
    // signal (the seed events select no one: they carry no marketing consent).
    let user = StagedOutput {
        trigger: "cpa_alto".into(),
        kind: "segment_cpa".into(),
        segment: Some("costi > 20€".into()),
        group: vec![
            ("channel".into(), "social".into()),
            ("campaign".into(), "spring".into()),
        ],
        user: Some(UserPseudonym([7; 16])),
        event: Some(PushEvent {
            user: "07070707070707070707070707070707".into(),
            kind: "page_view".into(),
            value: None,
            at_ms: 1_763_999_000_123,
            product_id: Some("sku-1".into()),
            product_ids: vec![],
            cart_value: None,
            tag: None,
        }),
        signal: None,
        at_ms: 1_763_999_040_000,
        destinations: vec!["crm-push".into()],
    };
    let signal = StagedOutput {
        user: None,
        event: None,
        signal: Some(SignalNotice {
            signal: SegmentSignal::Recovered,
            cpa: Some(12.5),
            threshold: 20.0,
            at_ms: 1_763_999_100_000,
        }),
        ..user.clone()
    };
    write(
        "trigger_stage",
        "output-user",
        &[&[2u8][..], &user.encode()?].concat(),
    )?;
    write(
        "trigger_stage",
        "output-signal",
        &[&[2u8][..], &signal.encode()?].concat(),
    )?;

    // KPI keys and values as the store writes them.
    let row = |granularity, window_start, channel: &str, campaign: &str| RowKey {
        granularity,
        window_start,
        channel: channel.into(),
        campaign: campaign.into(),
        device: "mobile".into(),
        region: "IT-25".into(),
    };
    for (name, key) in [
        (
            "row-hour",
            row(Granularity::Hour, 1_763_996_400_000, "social", "spring"),
        ),
        (
            "row-separator-inside",
            row(Granularity::Minute, 0, "a\u{1f}b", "\u{1f}"),
        ),
        (
            "row-negative-start",
            row(Granularity::Day, -86_400_000, "", "(none)"),
        ),
    ] {
        write("kpi_key", name, &encode_row_key(&key)?)?;
    }
    let spend_key = SpendRowKey {
        granularity: Granularity::Day,
        window_start: 1_763_938_800_000,
        channel: "paid_search".into(),
        campaign: "black_friday".into(),
    };
    write("kpi_key", "spend-day", &encode_spend_key(&spend_key)?)?;
    write(
        "kpi_key",
        // `spend-value` (version 1, micro-units only) stays in the corpus as written.
        "spend-value-v2",
        &encode_spend_value(SpendCounters::record(12_500_000)),
    )?;
    let mut counters = KpiCounters {
        sessions: 3,
        conversions: 1,
        revenue_micros: 49_900_000,
        ..KpiCounters::default()
    };
    counters.add_custom("signup", 2);
    write("kpi_key", "row-value", &encode_row_value(&counters)?)?;
    Ok(())
}
