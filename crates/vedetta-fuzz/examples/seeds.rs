//! Writes the seeds that only code can make into `fuzz/corpus/`: log batches from
//! `encode_batch`, snapshots of a pipeline that processed real events, and encoded KPI keys
//! and values. `cargo run -p vedetta-fuzz --example seeds` (from the repository root).
//! The text seeds (events, query strings, configuration) are files written by hand.

use std::path::Path;
use vedetta_core::intake::{BodyFormat, IntakeContext, judge_events, judge_spend};
use vedetta_core::pipeline::kpi::{KpiCounters, SpendCounters};
use vedetta_core::pipeline::windows::Granularity;
use vedetta_core::pipeline::{Pipeline, PipelineConfig};
use vedetta_core::record::{LogRecord, encode_batch};
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
