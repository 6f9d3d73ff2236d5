//! `vedetta replay`: rebuilds every KPI and the pipeline state from the log.
//!
//! For when the rules changed (a new sequence rule, another time zone, a GeoIP database):
//! the store is cleared and the log is processed again from its first retained record with
//! the current configuration. The server must be stopped (both files are opened
//! exclusively). Windows older than the log's retention cannot be rebuilt and are gone
//! after a replay; `log.retention_days` bounds how far back a replay reaches.

use crate::config::{self, Overrides};
use crate::processor::{Processor, ProcessorOptions, ProcessorStatus};
use anyhow::Context;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use vedetta_store::{EventLog, KpiStore};

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

pub fn run(args: &ReplayArgs) -> anyhow::Result<()> {
    let config = config::load(
        args.config.as_deref(),
        &Overrides {
            data_dir: args.data_dir.clone(),
            listen: None,
        },
    )?;
    let log_path = config.data_dir.join("log.redb");
    let (log, _) =
        EventLog::open(&log_path, config.ingest.quarantine_capacity).with_context(|| {
            format!(
                "cannot open {} (is the server still running?)",
                log_path.display()
            )
        })?;
    let store_path = config.data_dir.join("kpis.redb");
    let (store, _) = KpiStore::open(&store_path).with_context(|| {
        format!(
            "cannot open {} (is the server still running?)",
            store_path.display()
        )
    })?;
    store.clear()?;
    let log = Arc::new(log);
    let regions = crate::geoip::load(config.pipeline.geoip_database.as_deref())?;
    let status = ProcessorStatus::default();
    // (Timings are collected but not shown: replay reports its own throughput.)
    let started = Instant::now();
    let mut processor = Processor::recover(
        log.clone(),
        Arc::new(store),
        config.pipeline.rules.clone(),
        regions,
        ProcessorOptions::default(),
        &status,
    )?;
    processor.catch_up(&status)?;
    let records = log.end_offset() - log.start_offset();
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "replayed {records} records (offsets {}..{}) in {seconds:.1} s ({:.0} records/s)",
        log.start_offset(),
        log.end_offset(),
        records as f64 / seconds.max(1e-9)
    );
    Ok(())
}
