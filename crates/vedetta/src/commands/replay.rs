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
    // Emptied whatever it held, in the current format: replay must work on a store this
    // build cannot read (an older format that cannot be migrated, other settings). The
    // settings record is cleared with it; recovery records the current settings.
    let store = KpiStore::open_empty(&store_path).with_context(|| {
        format!(
            "cannot open {} (is the server still running?)",
            store_path.display()
        )
    })?;
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
        // The trigger stage is not run: its outputs were staged by the first run. The
        // snapshot written at the end has no part of it; the server's stage starts empty
        // there (cooldowns, carts and intents afresh).
        None,
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn config_file(dir: &std::path::Path, max_campaigns: u64) -> PathBuf {
        let path = dir.join(format!("vedetta-{max_campaigns}.toml"));
        std::fs::write(
            &path,
            format!(
                "data_dir = {:?}\n[pipeline]\nmax_campaigns = {max_campaigns}\n",
                dir.join("data").display().to_string()
            ),
        )
        .unwrap();
        path
    }

    fn start(file: &std::path::Path) -> anyhow::Result<()> {
        let config = config::load_from(Some(file), &[], &Overrides::default())?;
        // Started and stopped at once: dropping the router and the state stops the
        // processor and the log writer and closes both files.
        let (router, state) = crate::server::build(config)?;
        drop(router);
        drop(state);
        Ok(())
    }

    /// Issue 8: restarting with a lower `max_campaigns` continued per-user state whose
    /// dimension ids were interned under the old bound.
    #[test]
    fn changed_settings_stop_the_server_until_a_replay_records_them() {
        let dir = tempfile::tempdir().unwrap();
        let before = config_file(dir.path(), 10_000);
        let after = config_file(dir.path(), 50);
        start(&before).unwrap();
        start(&before).expect("the same settings start again");

        let error = format!("{:#}", start(&after).unwrap_err());
        assert!(error.contains("max_campaigns: 10000 → 50"), "{error}");
        assert!(error.contains("run `vedetta replay`"), "{error}");

        run(&ReplayArgs {
            config: Some(after.clone()),
            data_dir: None,
        })
        .unwrap();
        start(&after).expect("replay recorded the new settings");
        let error = format!("{:#}", start(&before).unwrap_err());
        assert!(error.contains("max_campaigns: 50 → 10000"), "{error}");
    }
}
