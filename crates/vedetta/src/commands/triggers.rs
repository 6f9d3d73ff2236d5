//! `vedetta triggers check FILE` and `vedetta triggers backtest --from --to`.
//!
//! `check` validates a triggers file against the configuration's destinations, naming the
//! trigger and the key of every mistake. `backtest` replays the stored log through the
//! trigger engine exactly as the server's consumer does (events in log order, each minute
//! judged on the stored 1-minute KPIs once the watermark passes it) and reports whom each
//! trigger would have sent between `--from` and `--to`. It sends nothing and writes nothing.

use crate::config::{self, Overrides};
use anyhow::Context;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use vedetta_core::act::engine::{ActState, Engine, Output};
use vedetta_core::act::push::SegmentSignal;
use vedetta_core::act::triggers::TriggerKind;
use vedetta_core::record::LogRecord;
use vedetta_core::time::EventTime;
use vedetta_core::watch::evaluate::group_totals;
use vedetta_store::{EventLog, KpiStore};

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
    let triggers = config.triggers.load().map_err(|e| anyhow::anyhow!(e))?;
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
    let busy = |path: &std::path::Path| {
        format!(
            "cannot open {} (stop the server, or backtest on a copy of the data directory)",
            path.display()
        )
    };
    let store_path = config.data_dir.join("kpis.redb");
    let (store, _) = KpiStore::open(&store_path).with_context(|| busy(&store_path))?;
    let log_path = config.data_dir.join("log.redb");
    let (log, _) = EventLog::open(&log_path, config.ingest.quarantine_capacity)
        .with_context(|| busy(&log_path))?;
    let rules = &config.pipeline.rules;
    let longest = triggers
        .iter()
        .filter_map(|t| match &t.kind {
            TriggerKind::SegmentCpa { rule, .. } => Some(rule.over_ms),
            _ => None,
        })
        .max();
    let mut engine = Engine::new(
        triggers.clone(),
        rules.conversion_types.clone(),
        ActState::default(),
    )
    .with_enrichment(rules.enrich.clone());
    let minute = 60_000;
    let mut reports: BTreeMap<String, Report> = triggers
        .iter()
        .map(|t| (t.name.clone(), Report::default()))
        .collect();
    let mut record = |outputs: &mut Vec<Output>, engine: &Engine| {
        for o in outputs.drain(..) {
            if o.at_ms < from || o.at_ms >= to {
                continue;
            }
            let Some(t) = engine.triggers().get(o.trigger) else {
                continue;
            };
            let Some(r) = reports.get_mut(&t.name) else {
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
    let mut outputs = Vec::new();
    let mut max_ts: Option<i64> = None;
    let mut judged_through = from.div_euclid(minute) * minute;
    let mut judge_until =
        |engine: &mut Engine, outputs: &mut Vec<Output>, watermark: i64| -> anyhow::Result<()> {
            let last_end = watermark.min(to).div_euclid(minute) * minute;
            while judged_through < last_end {
                let m = judged_through + minute;
                match longest {
                    Some(over) => {
                        let data = crate::watch::evaluation::read_window(&store, m - over, m)?;
                        engine.judge_minute(m, &mut |rule| group_totals(rule, m, &data), outputs);
                    }
                    None => engine.judge_minute(m, &mut |_| Default::default(), outputs),
                }
                judged_through = m;
            }
            engine.advance(watermark, outputs);
            Ok(())
        };
    let mut offset = log.start_offset();
    let end = log.end_offset();
    let mut records = 0u64;
    while offset < end {
        let batch = log.read(offset, 10_000)?;
        let Some(last) = batch.last().map(|(o, _)| *o) else {
            break;
        };
        for (_, r) in &batch {
            if let LogRecord::Event(event) = r {
                engine.observe(event, &mut outputs);
                max_ts = Some(max_ts.map_or(event.ts.0, |m| m.max(event.ts.0)));
                records += 1;
            }
        }
        if let Some(w) = max_ts.map(|m| m - rules.out_of_orderness_ms) {
            judge_until(&mut engine, &mut outputs, w)?;
        }
        record(&mut outputs, &engine);
        offset = last + 1;
    }
    // The end of the stored history: every minute up to `to` that the log reached.
    if let Some(w) = max_ts {
        judge_until(&mut engine, &mut outputs, w)?;
        record(&mut outputs, &engine);
    }
    let withheld = engine.state().withheld.clone();
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
