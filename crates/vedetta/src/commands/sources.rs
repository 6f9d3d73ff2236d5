//! `vedetta sources check MAPPING.toml [BODY.json]`: compiles a mapped source's mapping
//! file (docs/sources.md, "Mapped webhooks") and, given a sample body, prints the events it
//! makes and why each refused row was refused, as the server would map them.

use std::path::PathBuf;

#[derive(Debug, clap::Subcommand)]
pub enum SourcesCommand {
    /// Check a mapping file; with a sample body, print the events it maps to.
    Check {
        /// The mapping file (TOML).
        mapping: PathBuf,
        /// A sample body (JSON) as the source posts it.
        body: Option<PathBuf>,
    },
}

pub fn run(command: SourcesCommand) -> anyhow::Result<()> {
    match command {
        SourcesCommand::Check { mapping, body } => {
            let compiled = crate::sources::mapped::load_mapping_file(&mapping)?;
            println!("{}: ok", mapping.display());
            let Some(body) = body else {
                return Ok(());
            };
            let text = std::fs::read(&body)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", body.display()))?;
            let value: serde_json::Value = serde_json::from_slice(&text)
                .map_err(|e| anyhow::anyhow!("{}: not JSON: {e}", body.display()))?;
            let rows = compiled
                .map_body(&value)
                .map_err(|e| anyhow::anyhow!("{}: {e}", body.display()))?;
            let mut refused = 0;
            for (index, row) in rows.iter().enumerate() {
                match row {
                    Ok(event) => println!("{event}"),
                    Err(error) => {
                        refused += 1;
                        eprintln!("rows[{index}]: {error}");
                    }
                }
            }
            if refused > 0 {
                anyhow::bail!("{refused} of {} rows refused by the mapping", rows.len());
            }
            Ok(())
        }
    }
}
