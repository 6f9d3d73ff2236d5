//! `vedetta log dump`: prints log records as NDJSON, pseudonymized as stored.
//!
//! For inspection and for the crash tests, which compare what the server acknowledged with
//! what the log holds after a SIGKILL.

use anyhow::Context;
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use vedetta_core::record::LogRecord;
use vedetta_store::EventLog;

#[derive(Debug, clap::Subcommand)]
pub enum LogCommand {
    /// Print records from an offset as NDJSON: `{"offset":…, "kind":"event"|"spend", …}`.
    Dump {
        #[arg(long, env = "VEDETTA_DATA_DIR", default_value = "vedetta-data")]
        data_dir: PathBuf,
        /// First offset to print.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Most records to print.
        #[arg(long)]
        limit: Option<u64>,
    },
    /// Print the log's offsets and size.
    Stat {
        #[arg(long, env = "VEDETTA_DATA_DIR", default_value = "vedetta-data")]
        data_dir: PathBuf,
    },
}

pub fn run(command: LogCommand) -> anyhow::Result<()> {
    match command {
        LogCommand::Dump {
            data_dir,
            from,
            limit,
        } => dump(&data_dir, from, limit.unwrap_or(u64::MAX)),
        LogCommand::Stat { data_dir } => {
            let log = open(&data_dir)?;
            let stats = log.stats();
            println!(
                "{}",
                json!({
                    "log_start_offset": stats.start_offset,
                    "log_end_offset": stats.end_offset,
                    "disk_bytes": stats.disk_bytes,
                })
            );
            Ok(())
        }
    }
}

fn open(data_dir: &std::path::Path) -> anyhow::Result<EventLog> {
    let path = data_dir.join("log.redb");
    if !path.exists() {
        anyhow::bail!("no event log at {}", path.display());
    }
    let (log, report) =
        EventLog::open(&path, 10_000).with_context(|| format!("cannot open {}", path.display()))?;
    if report.torn_batches_removed > 0 {
        eprintln!(
            "removed {} corrupt batches at the log tail",
            report.torn_batches_removed
        );
    }
    Ok(log)
}

fn dump(data_dir: &std::path::Path, from: u64, limit: u64) -> anyhow::Result<()> {
    let log = open(data_dir)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut next = from.max(log.stats().start_offset);
    let mut printed = 0u64;
    while printed < limit {
        let records = log.read(next, 10_000)?;
        let Some(last) = records.last() else { break };
        next = last.0 + 1;
        for (offset, record) in records {
            if printed == limit {
                break;
            }
            let line = match record {
                LogRecord::Event(e) => json!({
                    "offset": offset,
                    "kind": "event",
                    "user": e.user.to_hex(),
                    "type": e.kind.as_str(),
                    "ts": e.ts.to_rfc3339(),
                    "event_id": e.event_id,
                    "value": e.value,
                    "currency": e.currency,
                    "channel": e.channel,
                    "campaign": e.campaign,
                    "ip_network": e.ip_network.map(|ip| ip.to_string()),
                    "region": e.region,
                    "page": e.page,
                    "utm_campaign": e.utm_campaign,
                    "consent": {"analytics": e.consent.analytics, "marketing": e.consent.marketing},
                }),
                LogRecord::Spend(s) => json!({
                    "offset": offset,
                    "kind": "spend",
                    "ts": s.ts.to_rfc3339(),
                    "channel": s.channel,
                    "campaign": s.campaign,
                    "amount": s.amount,
                    "currency": s.currency,
                    "source": s.source,
                }),
            };
            writeln!(out, "{line}")?;
            printed += 1;
        }
    }
    out.flush()?;
    Ok(())
}
