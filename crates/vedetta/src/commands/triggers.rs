//! `vedetta triggers check FILE` and `vedetta triggers backtest --from --to`.
//!
//! `check` validates a triggers file against the configuration's destinations, naming the
//! trigger and the key of every mistake. `backtest` replays the stored log through the
//! pipeline and the trigger stage exactly as the server's processor runs them (every
//! record in log order from the log's first, the engine taking the pipeline's verdicts,
//! each minute judged on the window's totals of the replayed pipeline's own KPI deltas
//! once the watermark passes it) and reports whom each trigger would have sent between
//! `--from` and `--to`. It sends nothing and writes nothing; it reads the log only.

use crate::config::{self, Overrides};
use anyhow::Context;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use vedetta_core::act::push::SegmentSignal;
use vedetta_core::act::stage::{StagedOutput, TriggerStage};
use vedetta_core::pipeline::Pipeline;
use vedetta_core::record::LogRecord;
use vedetta_core::time::EventTime;
use vedetta_store::EventLog;

#[derive(Debug, clap::Subcommand)]
pub enum TriggersCommand {
    /// Validate a triggers file (with the configuration's destinations and inline triggers).
    Check {
        file: PathBuf,
        /// The main configuration (for its destinations); default: VEDETTA_* only.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Replay the stored log through the triggers; report whom each would have sent.
    Backtest(BacktestArgs),
}

#[derive(Debug, clap::Args)]
pub struct BacktestArgs {
    /// Start (RFC 3339).
    #[arg(long)]
    from: String,
    /// End (RFC 3339), exclusive.
    #[arg(long)]
    to: String,
    /// A triggers file to test instead of the configured one (inline triggers still count).
    #[arg(long)]
    triggers: Option<PathBuf>,
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(command: TriggersCommand) -> anyhow::Result<()> {
    match command {
        TriggersCommand::Check { file, config } => {
            let config = config::load(config.as_deref(), &Overrides::default())?;
            let raw =
                crate::act::config::read_triggers_file(&file).map_err(|e| anyhow::anyhow!(e))?;
            let mut all = config.triggers.inline.clone();
            all.extend(raw.triggers);
            let triggers = config
                .triggers
                .check(&all)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            println!("{}: ok ({} triggers)", file.display(), triggers.len());
            Ok(())
        }
        TriggersCommand::Backtest(args) => backtest(&args),
    }
}

/// What one trigger would have done.
#[derive(Debug, Default, serde::Serialize)]
struct Report {
    /// Users it would have sent, each with the product (or tag) it would have carried.
    users: BTreeMap<String, Option<String>>,
    selections: u64,
    signals_firing: u64,
    signals_recovered: u64,
    first: Option<String>,
    last: Option<String>,
}

fn backtest(args: &BacktestArgs) -> anyhow::Result<()> {
    let mut config = config::load(
        args.config.as_deref(),
        &Overrides {
            data_dir: args.data_dir.clone(),
            listen: None,
        },
    )?;
    if let Some(file) = &args.triggers {
        config.triggers.file = Some(file.clone());
    }
    let set = config.triggers.load_set().map_err(|e| anyhow::anyhow!(e))?;
    let triggers = set.triggers.clone();
    let parse = |what: &str, text: &str| -> anyhow::Result<i64> {
        let ts: jiff::Timestamp = text
            .parse()
            .with_context(|| format!("--{what}: {text:?} is not an RFC 3339 time"))?;
        Ok(ts.as_millisecond())
    };
    let (from, to) = (parse("from", &args.from)?, parse("to", &args.to)?);
    anyhow::ensure!(from < to, "--from must be before --to");
    anyhow::ensure!(
        to - from <= 92 * 86_400_000,
        "at most 92 days at a time (a minute-by-minute replay)"
    );
    let log_path = config.data_dir.join("log.redb");
    let (log, _) =
        EventLog::open(&log_path, config.ingest.quarantine_capacity).with_context(|| {
            format!(
                "cannot open {} (stop the server, or backtest on a copy of the data directory)",
                log_path.display()
            )
        })?;
    let rules = &config.pipeline.rules;
    let regions = crate::geoip::load(config.pipeline.geoip_database.as_deref())?;
    let mut pipeline = Pipeline::new(rules.clone(), regions);
    let mut stage = TriggerStage::beside(set, rules).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut reports: BTreeMap<String, Report> = triggers
        .iter()
        .map(|t| (t.name.clone(), Report::default()))
        .collect();
    let mut record = |staged: Vec<(u64, StagedOutput)>| {
        for (_, o) in staged {
            if o.at_ms < from || o.at_ms >= to {
                continue;
            }
            let Some(r) = reports.get_mut(&o.trigger) else {
                continue;
            };
            let at = EventTime(o.at_ms).to_rfc3339();
            r.first.get_or_insert_with(|| at.clone());
            r.last = Some(at);
            match (&o.signal, &o.event) {
                (Some(s), _) => match s.signal {
                    SegmentSignal::Firing => r.signals_firing += 1,
                    SegmentSignal::Recovered => r.signals_recovered += 1,
                },
                (None, Some(e)) => {
                    r.selections += 1;
                    r.users
                        .insert(e.user.clone(), e.product_id.clone().or(e.tag.clone()));
                }
                (None, None) => {}
            }
        }
    };
    let mut offset = log.start_offset();
    let end = log.end_offset();
    let mut records = 0u64;
    while offset < end {
        let batch = log.read(offset, 10_000)?;
        let Some(last) = batch.last().map(|(o, _)| *o) else {
            break;
        };
        for (o, r) in &batch {
            pipeline.process(*o, r);
            stage.after_record(&mut pipeline, r);
            records += u64::from(matches!(r, LogRecord::Event(_)));
        }
        // (The deltas go nowhere: the window keeps what it judges on.)
        drop(stage.take_batch_deltas(&mut pipeline));
        record(stage.take_staged());
        offset = last + 1;
    }
    let withheld = stage.engine().state().withheld.clone();
    if args.json {
        let report: Vec<serde_json::Value> = reports
            .iter()
            .map(|(name, r)| {
                serde_json::json!({
                    "trigger": name,
                    "users": r.users.iter().map(|(u, p)| serde_json::json!({"user": u, "product_or_tag": p})).collect::<Vec<_>>(),
                    "selections": r.selections,
                    "signals_firing": r.signals_firing,
                    "signals_recovered": r.signals_recovered,
                    "withheld_no_consent": withheld.get(name).copied().unwrap_or(0),
                    "first": r.first, "last": r.last,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} triggers over {records} stored events; nothing was sent",
            triggers.len()
        );
        for (name, r) in &reports {
            let users: BTreeSet<&String> = r.users.keys().collect();
            println!(
                "{name}: {} users ({} selections), {} segment signals fired, {} recovered, {} withheld without consent{}",
                users.len(),
                r.selections,
                r.signals_firing,
                r.signals_recovered,
                withheld.get(name).copied().unwrap_or(0),
                match (&r.first, &r.last) {
                    (Some(f), Some(l)) => format!(", first {f}, last {l}"),
                    _ => String::new(),
                }
            );
            for (user, what) in &r.users {
                println!("  {user} {}", what.as_deref().unwrap_or(""));
            }
        }
    }
    Ok(())
}
