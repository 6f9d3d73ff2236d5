//! `vedetta rules check FILE` and `vedetta rules backtest`.
//!
//! `check` validates a rules file against the configuration's destinations, naming the rule
//! and the key of every mistake. `backtest` replays stored 1-minute KPI history through a
//! rule set, minute by minute exactly as the server evaluates it, and reports what would
//! have fired, per rule and group (count, first, last). It sends nothing.

use crate::config::{self, Overrides};
use crate::watch::config::{RuleSet, RulesFileAlerts, read_rules_file};
use crate::watch::evaluation::{StoreHistory, read_window};
use anyhow::Context;
use std::collections::BTreeMap;
use std::path::PathBuf;
use vedetta_core::time::EventTime;
use vedetta_core::watch::evaluate::Evaluator;
use vedetta_core::watch::notification::AlertStatus;
use vedetta_store::KpiStore;

#[derive(Debug, clap::Subcommand)]
pub enum RulesCommand {
    /// Validate a rules file (with the configuration's destinations and inline rules).
    Check {
        file: PathBuf,
        /// The main configuration (for its destinations); default: VEDETTA_* only.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Replay stored KPI history through the rules; report what would have fired.
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
    /// A rules file to test instead of the configured one (inline rules still count).
    #[arg(long)]
    rules: Option<PathBuf>,
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(command: RulesCommand) -> anyhow::Result<()> {
    match command {
        RulesCommand::Check { file, config } => {
            let config = config::load(config.as_deref(), &Overrides::default())?;
            let rules = read_rules_file(&file).map_err(|e| anyhow::anyhow!(e))?;
            let set = config
                .alerts
                .rule_set(&rules.alerts)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            println!(
                "{}: ok ({} rules, {} inhibitions)",
                file.display(),
                set.rules.len(),
                set.inhibitions.len()
            );
            Ok(())
        }
        RulesCommand::Backtest(args) => backtest(&args),
    }
}

/// What one (rule, group) would have done.
#[derive(Debug, Default, serde::Serialize)]
struct Fired {
    count: u64,
    first: String,
    last: String,
    resolved: u64,
}

fn backtest(args: &BacktestArgs) -> anyhow::Result<()> {
    let config = config::load(
        args.config.as_deref(),
        &Overrides {
            data_dir: args.data_dir.clone(),
            listen: None,
        },
    )?;
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
    let set: RuleSet = match &args.rules {
        Some(path) => config.alerts.rule_set(
            &read_rules_file(path)
                .map_err(|e| anyhow::anyhow!(e))?
                .alerts,
        ),
        None => match &config.alerts.rules_file {
            Some(_) => config.alerts.load_rules(),
            None => config.alerts.rule_set(&RulesFileAlerts::default()),
        },
    }
    .map_err(|e| anyhow::anyhow!(e))?;
    let store_path = config.data_dir.join("kpis.redb");
    let store = KpiStore::open(&store_path).with_context(|| {
        format!(
            "cannot open {} (stop the server, or backtest on a copy of the data directory)",
            store_path.display()
        )
    })?;
    let minute = 60_000;
    let mut evaluator = Evaluator::new(set.rules.clone(), BTreeMap::new());
    let window = evaluator.max_window_ms();
    let mut fired: BTreeMap<(String, Vec<(String, String)>), Fired> = BTreeMap::new();
    let mut end = (from / minute + 1) * minute;
    let started = std::time::Instant::now();
    let mut minutes = 0u64;
    while end <= to {
        let data = read_window(&store, end - window, end)?;
        let mut history = StoreHistory::new(&store);
        let outcome = evaluator.evaluate_minute(end, &data, &mut history);
        if let Some(e) = history.error {
            return Err(e.context("reading history for absence or anomaly rules"));
        }
        for notice in outcome.notices {
            let entry = fired
                .entry((notice.rule.clone(), notice.group.clone()))
                .or_default();
            let at = EventTime(end).to_rfc3339();
            match notice.status {
                AlertStatus::Firing => {
                    if entry.count == 0 {
                        entry.first = at.clone();
                    }
                    entry.count += 1;
                    entry.last = at;
                }
                AlertStatus::Resolved => entry.resolved += 1,
            }
        }
        minutes += 1;
        end += minute;
    }
    if args.json {
        let report: Vec<serde_json::Value> = fired
            .iter()
            .map(|((rule, group), f)| {
                serde_json::json!({
                    "rule": rule,
                    "group": group.iter().cloned().collect::<BTreeMap<_, _>>(),
                    "fired": f.count, "first": f.first, "last": f.last, "resolved": f.resolved,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} rules over {minutes} minutes ({:.1} s); system rules (lag_events, \
             e2e_latency) have no history and are not judged",
            set.rules.len(),
            started.elapsed().as_secs_f64()
        );
        if fired.is_empty() {
            println!("nothing would have fired");
        }
        for ((rule, group), f) in &fired {
            let group: Vec<String> = group.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
            println!(
                "{rule} {{{}}}: fired {} times, first {}, last {}, resolved {}",
                group.join(", "),
                f.count,
                f.first,
                f.last,
                f.resolved
            );
        }
    }
    Ok(())
}
