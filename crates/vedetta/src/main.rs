//! `vedetta`: the real-time conversion monitor in one binary.
//!
//! A thin shell: parses the command line, loads configuration, and hands over to the
//! server or to one of the tools (`gen`, `send`, `bench`, `config check`, `log dump`).

use vedetta::{commands, config, server};

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// mimalloc, not the system's glibc allocator: the processor allocates and frees the
/// strings of thousands of decoded records a step, and with the trigger stage holding
/// millions of users glibc's bins turned that into the largest cost of the processor
/// (docs/benchmarks.md, "The allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "vedetta", version, about = "Real-time conversion monitor")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: HTTP intake into the durable log.
    Serve(ServeArgs),
    /// Generate realistic synthetic traffic into NDJSON files, or stream it to a server.
    Gen(commands::generate::GenArgs),
    /// Post NDJSON files of events (or, with --costs, spend records or Google Ads / Meta CSV
    /// exports) to a server.
    Send(commands::send::SendArgs),
    /// Benchmarks that drive the real program.
    #[command(subcommand)]
    Bench(commands::bench::BenchCommand),
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Rebuild all KPIs and pipeline state from the log (after a rule change).
    Replay(commands::replay::ReplayArgs),
    /// Alert rules: check a rules file, or backtest rules on stored history.
    #[command(subcommand)]
    Rules(commands::rules::RulesCommand),
    /// Triggers: check a triggers file, or backtest triggers on the stored log.
    #[command(subcommand)]
    Triggers(commands::triggers::TriggersCommand),
    /// Inspect the event log (the server must be stopped: the log is opened exclusively).
    #[command(subcommand)]
    Log(commands::log::LogCommand),
    /// Mapped webhook sources: check a mapping file against a sample body.
    #[command(subcommand)]
    Sources(commands::sources::SourcesCommand),
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file; every key can also be set as VEDETTA_* (see README).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (overrides `data_dir`, VEDETTA_DATA_DIR).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Listen address (overrides `listen`, VEDETTA_LISTEN).
    #[arg(long)]
    listen: Option<String>,
    /// A demo: on an empty data directory, first a month of generated history, then live
    /// traffic, example alert rules and their inbox (continues where it left off).
    #[arg(long)]
    demo: bool,
    /// Live traffic of the demo: `auto` continues the history at its level and rhythm
    /// (about 0.25 to 0.9 events per second), a number is constant events per second (0:
    /// history only).
    #[arg(long, visible_alias = "demo-rate", default_value = "auto")]
    rate: vedetta::demo::LiveRate,
    /// Seed of the demo's traffic (a new demo directory only).
    #[arg(long, default_value_t = vedetta::demo::DEFAULT_SEED)]
    demo_seed: u64,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file; names the bad key and its line.
    Check { file: PathBuf },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The demo's terminal shows its progress bar, not the alert evaluator skipping the
    // month of history minute by minute (`VEDETTA_LOG` still says otherwise).
    let demo = matches!(&cli.command, Command::Serve(args) if args.demo);
    init_tracing(if demo {
        "info,vedetta::watch::evaluation=warn"
    } else {
        "info"
    });
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // One TLS provider for the whole process (ring: no C build of aws-lc).
    let _ = rustls::crypto::ring::default_provider().install_default();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Gen(args) => commands::generate::run(&args),
        Command::Send(args) => commands::send::run(&args),
        Command::Bench(command) => commands::bench::run(command),
        Command::Config(ConfigCommand::Check { file }) => {
            let config = config::check_file(&file)?;
            // Mapping files of mapped sources are read when the server starts: check them too.
            for source in config.sources.mapped.values() {
                source.load_mapping()?;
            }
            println!(
                "{}: ok (listen {}, data_dir {})",
                file.display(),
                config.listen,
                config.data_dir.display()
            );
            Ok(())
        }
        Command::Log(command) => commands::log::run(command),
        Command::Replay(args) => commands::replay::run(&args),
        Command::Rules(command) => commands::rules::run(command),
        Command::Sources(command) => commands::sources::run(command),

        Command::Triggers(command) => commands::triggers::run(command),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let overrides = config::Overrides {
        data_dir: args.data_dir,
        listen: args.listen,
    };
    let mut config = config::load(args.config.as_deref(), &overrides)?;
    let demo = if args.demo {
        let options = vedetta::demo::DemoOptions::new(args.demo_seed, args.rate)?;
        Some(vedetta::demo::prepare(&mut config, options)?)
    } else {
        None
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("vedetta")
        .build()?;
    let api_key = config.ingest.api_keys.first().cloned();
    runtime.block_on(async move {
        server::serve(config, shutdown_signal(), move |address| {
            if let Some(demo) = demo {
                tokio::spawn(vedetta::demo::run(demo, address, api_key));
            }
        })
        .await
    })
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown requested");
}

fn init_tracing(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VEDETTA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
