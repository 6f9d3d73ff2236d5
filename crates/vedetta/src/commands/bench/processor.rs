//! `vedetta bench processor`: the processor's CPU at a given event rate, without and with a
//! trigger set: the figure the Act issue's bar names ("100 triggers at 100,000 events/s add
//! ≤ 10 % to the processor's CPU").
//!
//! `vedetta bench stage` measures the pipeline's own loop over records in memory: a
//! steady figure, but of a smaller denominator than the processor (no log reads, no
//! commits, no snapshots). This bench runs the processor itself, as the server starts it
//! ([`crate::processor::start`]), over a real event log and KPI store in a temporary
//! directory:
//!
//! 1. The same generated traffic as `bench stage` (three generators' live traffic, spend
//!    included, judged by intake into log records), encoded into log batches of `--batch`
//!    records up front: intake's work, not the processor's. `--traffic-file` keeps them
//!    for later runs (generating 100,000 events/s for two minutes takes minutes).
//! 2. Each pass opens a fresh log and store, appends the fill (`--fill` seconds of event
//!    time) at once, starts the processor with the configuration's pipeline settings and
//!    either no triggers (as a server with none) or the configuration's set, and waits
//!    until it has committed the fill. Snapshots come by records, not by time: one in
//!    the middle of the fill, one in the middle of the measured traffic, at the same
//!    records in every pass (a snapshot's copy is seconds of the processor thread at
//!    millions of users; by the server's timed rule it fell inside the measured part or
//!    not by chance).
//! 3. Measured: the next `--seconds` of traffic appended from this thread at the traffic's
//!    own rate (a second of event time a second, so snapshots and minutes come as in a
//!    server), with the processor woken at each append as intake wakes it; then the wait
//!    until it has committed the last record.
//! 4. Reported per pass: the CPU of the processor's threads (the process's CPU, ended
//!    snapshot threads included, less this appending thread's), the processor thread's
//!    alone, and how far it lagged at the end. Passes alternate, `--rounds` of each, the
//!    kind that goes first alternating too (rounds drift: a machine's page cache fills with
//!    each pass's log and store), so an even number of rounds puts each kind first as often.
//! 5. Each pass runs in a process of its own (this binary started again on the appends,
//!    written once to a file and read a batch at a time: the fill is appended to the pass's
//!    log as it is read, and only the measured traffic is held), as a server runs with its
//!    one trigger set from its start.
//!    Passes run one after another in one process left the heap of each to the next:
//!    the last round's pass without triggers, run after a pass that had held millions of
//!    users, was the fastest of its kind in every 3-round run (42–45 s against 47–56 s).
//!    `--same-process` runs them the old way. A pass's process ends once it has printed
//!    its figures: stopping the processor (its final snapshot: tens of seconds at 100,000
//!    events/s) is no part of them.
//! 6. Reported besides the means: each round's ratio (its two passes ran back to back, so
//!    the host's load, which drifts between rounds, mostly cancels) and their median.
//!    Passes of one kind spread by a quarter between rounds on a shared host, so a tenth's
//!    difference wants many rounds (`--rounds`, up to 20), and a run reports its rounds'
//!    mean ratio with a 95 % interval. `--rounds-file` keeps every round in a file and
//!    pools the rounds of the same binary, configuration and traffic across runs
//!    (`bench/rounds.rs`): the interval of dozens of rounds, not one run's.
//!
//! 7. `--interleave S` pairs the passes closer than a round: both passes' processes make
//!    their fills side by side, then run the measured traffic in slices of S seconds in
//!    turn, the other process idle (blocked on its input, its threads idle), the kind that
//!    goes first alternating slice by slice. Each slice is paced as a whole pass is and
//!    measured until the processor's threads are idle again (so a snapshot started in a
//!    slice is counted in it, and never runs beside the other pass's slice); a pass's
//!    figures are its slices' sums. Passes of one kind run minutes apart moved by up to a
//!    third between rounds on this host (the host's other tenants come and go over
//!    minutes), so whole passes back to back paired them loosely. What slices cost both
//!    kinds alike: each starts with caches the other process has emptied. What they
//!    cost the pass holding more: two passes' processes are resident at once (20.5 GB
//!    used at a round's peak at 100,000 events/s, against 11.7 GB for one pass), so the
//!    kernel reclaims memory directly more often, and that falls on the process asking
//!    for fresh memory (docs/benchmarks.md, "Interleaved passes"). `--control` runs both
//!    passes without triggers (an A/A run: the protocol's own spread, and any bias of
//!    its order; not the reclaim's, which needs two kinds).
//!
//! The log's appends (fsyncs and all) are this thread's and left out; the processor's reads
//! of the log, its pipeline and trigger stage, its commits (KPI deltas, the stage's
//! outputs and state) and its snapshots (copy and encoding) are in.

use super::rounds;
use super::stage::{Traffic, judged_records};
use crate::config::{Overrides, load_from};
use crate::processor::{LogNotifier, ProcessorLinks, ProcessorOptions, SnapshotSchedule};
use anyhow::Context;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use vedetta_core::act::stage::TriggerSet;
use vedetta_core::record::LogRecord;
use vedetta_core::record::encode_batch;
use vedetta_core::time::Clock;
use vedetta_store::{EncodedBatch, EventLog, KpiStore};

#[derive(Debug, clap::Args)]
pub struct ProcessorBenchArgs {
    /// The same flags as `bench stage`'s (the configuration, the traffic, the rounds).
    #[command(flatten)]
    pub(super) bench: super::stage::StageBenchArgs,
    /// Run every pass in this process (each runs in a fresh one by default).
    #[arg(long)]
    pub(super) same_process: bool,
    /// Keep the generated traffic in this file: read from it when it exists (written by an
    /// earlier run with the same traffic flags; other flags are refused), written to it
    /// otherwise. Generating 100,000 events/s takes minutes; the passes are what is timed.
    #[arg(long, conflicts_with = "same_process")]
    pub(super) traffic_file: Option<std::path::PathBuf>,
    /// Append each round, as it ends, to this file (JSON lines), and pool in the summary
    /// every round it holds of the same binary, configuration and traffic (see
    /// `bench/rounds.rs`): a bar of a tenth wants more rounds than one run makes.
    #[arg(long, conflicts_with_all = ["pass_appends", "write_traffic"])]
    pub(super) rounds_file: Option<std::path::PathBuf>,
    /// Interleave each round's two passes in slices of this many seconds of traffic: both
    /// passes' processes make their fills side by side, then run their slices in turn (the
    /// other one idle), the kind that goes first alternating slice by slice, so that what
    /// the host does over minutes falls on both passes alike (see the module docs).
    #[arg(
        long,
        conflicts_with = "same_process",
        value_parser = clap::value_parser!(u64).range(1..=rounds::MAX_INTERLEAVE_SECONDS)
    )]
    pub(super) interleave: Option<u64>,
    /// A control run: both passes of every round without triggers (an A/A run), to
    /// measure the protocol's own spread and bias.
    #[arg(long)]
    pub(super) control: bool,
    /// Internal: run one pass over the appends this file holds (written by the bench
    /// itself), with the configuration's triggers or none, and print its figures as JSON.
    #[arg(long, hide = true, requires = "pass_triggers")]
    pub(super) pass_appends: Option<std::path::PathBuf>,
    #[arg(long, hide = true)]
    pub(super) pass_triggers: Option<bool>,
    /// Internal: with `--pass-appends`, the measured traffic in slices of this many
    /// seconds, each run when a line `next` comes on standard input (`--interleave`).
    #[arg(
        long,
        hide = true,
        requires = "pass_appends",
        value_parser = clap::value_parser!(u64).range(1..=rounds::MAX_INTERLEAVE_SECONDS)
    )]
    pub(super) pass_slice_seconds: Option<u64>,
    /// Internal: generate the traffic, write it to this file and exit.
    #[arg(long, hide = true, conflicts_with_all = ["pass_appends", "traffic_file"])]
    pub(super) write_traffic: Option<std::path::PathBuf>,
}

/// One pass's figures.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub(super) struct Pass {
    /// CPU of the processor's threads (snapshot threads included) over the measured part.
    pub cpu_s: f64,
    /// CPU of the processor thread alone, and the part of it in the kernel (page faults of
    /// fresh memory, mostly; the log's reads and the store's writes).
    pub processor_thread_s: f64,
    pub processor_thread_system_s: f64,
    /// CPU of the threads alive at the pass's start and end other than the processor
    /// thread and the one appending (the trigger router's, the store's), and of those that
    /// started or ended in between (the snapshot threads: one a snapshot): `cpu_s` split.
    pub other_threads_s: f64,
    pub passing_threads_s: f64,
    /// From the first measured append to the commit of the last record.
    pub wall_s: f64,
    /// From the last append to its commit.
    pub lag_s: f64,
    pub staged_users: u64,
    /// The offset of the last snapshot committed by the end (see [`snapshot_schedule`]).
    pub snapshot_offset: u64,
}

impl Pass {
    /// This pass's figures and a `later` slice's of the same pass together: CPU and wall
    /// time summed, the lag the longer, the users and snapshot the later slice's.
    pub(super) fn then(self, later: Pass) -> Pass {
        Pass {
            cpu_s: self.cpu_s + later.cpu_s,
            processor_thread_s: self.processor_thread_s + later.processor_thread_s,
            processor_thread_system_s: self.processor_thread_system_s
                + later.processor_thread_system_s,
            other_threads_s: self.other_threads_s + later.other_threads_s,
            passing_threads_s: self.passing_threads_s + later.passing_threads_s,
            wall_s: self.wall_s + later.wall_s,
            lag_s: self.lag_s.max(later.lag_s),
            staged_users: later.staged_users,
            snapshot_offset: later.snapshot_offset,
        }
    }
}

impl std::fmt::Display for Pass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "processor threads CPU {:.2} s (the processor thread {:.2} s, {:.2} s of it in the \
             kernel; snapshot threads {:.2} s; others {:.2} s) over {:.1} s, caught up {:.2} s \
             after the last append; last snapshot at record {}",
            self.cpu_s,
            self.processor_thread_s,
            self.processor_thread_system_s,
            self.passing_threads_s,
            self.other_threads_s,
            self.wall_s,
            self.lag_s,
            self.snapshot_offset
        )
    }
}

/// Most rounds a run makes: passes of one kind here spread by a quarter between rounds
/// (the host's other tenants share the L3 cache and the memory bus), so a tenth's
/// difference takes more rounds than `bench stage`'s ten.
const MAX_ROUNDS: usize = 20;

pub fn run(full: &ProcessorBenchArgs) -> anyhow::Result<()> {
    let args = &full.bench;
    let traffic = args.traffic;
    traffic.check()?;
    anyhow::ensure!(
        (1..=MAX_ROUNDS).contains(&args.rounds),
        "--rounds must be 1 to {MAX_ROUNDS}"
    );
    let config = load_from(Some(&args.config), &[], &Overrides::default())?;
    let set = config
        .triggers
        .load_set()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if let (Some(path), Some(with)) = (&full.pass_appends, full.pass_triggers) {
        let set = if with { set } else { TriggerSet::empty() };
        let pass_log = PassLog::open()?;
        let mut group = Vec::with_capacity(FILL_GROUP);
        let (header, measured) = read_appends_with(path, |_, batch| {
            group.push(batch);
            if group.len() == FILL_GROUP {
                pass_log.append_fill(&group)?;
                group.clear();
            }
            Ok(())
        })?;
        pass_log.append_fill(&group)?;
        let schedule = snapshot_schedule(&measured);
        let started = StartedPass::start(&config, set, pass_log, schedule)?;
        match full.pass_slice_seconds {
            None => {
                let pass = started.measure(&measured, header.rate, false)?;
                println!("{}", serde_json::to_string(&pass)?);
            }
            Some(seconds) => {
                let (input, output) = (std::io::stdin().lock(), std::io::stdout().lock());
                run_slices(&started, &measured, (header.rate, seconds), input, output)?;
            }
        }
        // Measured: what stopping would add (the final snapshot, tens of seconds at this
        // scale, and freeing the state) is no part of the figures, so this process ends
        // here. Its directory goes first, once the processor's threads are done with it
        // (an idle processor may have started a snapshot; the log and store files are
        // only unlinked).
        use std::io::Write;
        std::io::stdout().flush()?;
        started.processor.stop_without_final_commit();
        started.dir.close()?;
        std::process::exit(0);
    }
    if let Some(path) = &full.write_traffic {
        // A child's work (see below): generate and write under a name of its own, renamed
        // when whole, so a run cut short leaves no kept file that a later run would read.
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        write_appends(partial.as_ref(), &appends(&traffic)?)?;
        std::fs::rename(&partial, path)
            .with_context(|| format!("renaming the traffic to {}", path.display()))?;
        return Ok(());
    }
    let dir = tempfile::tempdir().context("a temporary directory")?;
    let kept = full.traffic_file.as_ref().filter(|path| path.exists());
    let file = (full.traffic_file.clone()).unwrap_or_else(|| dir.path().join("appends"));
    let announce = |what: &str| {
        eprintln!(
            "{what} {} s of live traffic at {} events/s …",
            args.traffic.fill + args.traffic.seconds,
            args.traffic.rate
        )
    };
    // The traffic is generated and written by a process of its own, and the passes read
    // it in theirs: this one holds only the header (the allocator keeps what a process
    // freed until it allocates again, and two processes holding gigabytes of traffic
    // besides a pass's state ran the machine out of memory).
    let (header, batches) = match kept {
        Some(path) => {
            announce(&format!("reading from {} the", path.display()));
            let header = read_appends_header(path)?;
            anyhow::ensure!(
                header.traffic.same_as(&traffic),
                "{} holds other traffic ({:?}); these flags ask for {:?}",
                path.display(),
                header.traffic,
                traffic
            );
            (header, Vec::new())
        }
        None if full.same_process => {
            announce("generating");
            let Appends { header, batches } = appends(&traffic)?;
            (header, batches)
        }
        None => {
            announce("generating");
            write_traffic_in_child(full, &file)?;
            (read_appends_header(&file)?, Vec::new())
        }
    };
    let AppendsHeader {
        count,
        fill_batches,
        fill_records,
        measured,
        rate,
        traffic: _,
    } = header;
    eprintln!(
        "{} records in {count} batches ({fill_records} of fill, {measured} measured at {rate:.0} \
         a second); {} triggers",
        fill_records + measured,
        set.triggers.len()
    );
    // Taken before the first pass: a rounds file that names another setup's rounds is
    // fine (they are counted out), one that does not read is refused now, not after an
    // hour of passes.
    let setup = match &full.rounds_file {
        Some(path) => {
            let protocol = rounds::Protocol {
                same_process: full.same_process,
                interleave_seconds: full.interleave,
                control: full.control,
            };
            let setup = rounds::Setup::of_this_run(&args.config, &traffic, protocol)?;
            if path.exists() {
                rounds::read_matching(path, &setup)?;
            }
            Some((path, setup))
        }
        None => None,
    };
    let empty = TriggerSet::empty();
    let mut alone = Vec::new();
    let mut with = Vec::new();
    let run_one = |with: bool| -> anyhow::Result<Pass> {
        if full.same_process {
            let set = if with { set.clone() } else { empty.clone() };
            return run_pass(&config, set, &batches, fill_batches, rate);
        }
        pass_in_child(full, (&file, dir.path()), with)
    };
    // The second kind of pass: the trigger set, or in a control run none again.
    let second = if full.control {
        "no triggers (control)".to_string()
    } else {
        format!("{} triggers", set.triggers.len())
    };
    // Each pass's figures as it ends (in a round's order), or an interleaved round's two
    // once both end.
    let report = |round: usize, second_kind: bool, pass: &Pass| {
        if second_kind {
            eprintln!(
                "round {round}, {second}: {pass}; {} users held by the stage",
                pass.staged_users
            );
        } else {
            eprintln!("round {round}, no triggers: {pass}");
        }
    };
    for round in 0..args.rounds {
        let (a, w) = match full.interleave {
            Some(seconds) => {
                let (a, w) = interleaved_round(full, (&file, dir.path()), round, seconds)?;
                report(round, false, &a);
                report(round, true, &w);
                (a, w)
            }
            None => {
                let order = if round % 2 == 0 {
                    [false, true]
                } else {
                    [true, false]
                };
                let (mut a, mut w) = (None, None);
                for second_kind in order {
                    let pass = run_one(second_kind && !full.control)?;
                    report(round, second_kind, &pass);
                    *(if second_kind { &mut w } else { &mut a }) = Some(pass);
                }
                (
                    a.context("the pass without triggers")?,
                    w.context("the second pass")?,
                )
            }
        };
        alone.push(a);
        with.push(w);
        if let (Some((path, setup)), Some(a), Some(w)) = (&setup, alone.last(), with.last()) {
            rounds::append(path, &rounds::Round::new(setup, round, *a, *w))?;
        }
    }
    let mean = |passes: &[Pass], f: fn(&Pass) -> f64| {
        passes.iter().map(f).sum::<f64>() / passes.len().max(1) as f64
    };
    let added = |a: f64, w: f64| (w - a) / a.max(1e-9) * 100.0;
    let (cpu_alone, cpu_with) = (mean(&alone, |p| p.cpu_s), mean(&with, |p| p.cpu_s));
    let (thread_alone, thread_with) = (
        mean(&alone, |p| p.processor_thread_s),
        mean(&with, |p| p.processor_thread_s),
    );
    // Each round's two passes ran back to back: their ratio leaves out what drifts between
    // rounds (the host's load), which the means of all passes of a kind keep.
    let this_run = rounds::Ratios::of(alone.iter().zip(&with));
    let by_round = &this_run.thread;
    let median = median(by_round);
    let pooled = match &setup {
        Some((path, setup)) => {
            let (kept, others) = rounds::read_matching(path, setup)?;
            let ratios = rounds::Ratios::of(kept.iter().map(|r| (&r.alone, &r.with)));
            Some((path, ratios, others))
        }
        None => None,
    };
    let each = |passes: &[Pass], f: fn(&Pass) -> f64| passes.iter().map(f).collect::<Vec<_>>();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "records": measured,
                "fill_records": fill_records,
                "rate": rate,
                "seconds": args.traffic.seconds,
                "triggers": set.triggers.len(),
                "interleave_seconds": full.interleave,
                "control": full.control,
                "cpu_s_alone": each(&alone, |p| p.cpu_s),
                "cpu_s_with": each(&with, |p| p.cpu_s),
                "processor_thread_s_alone": each(&alone, |p| p.processor_thread_s),
                "processor_thread_s_with": each(&with, |p| p.processor_thread_s),
                "processor_thread_system_s_alone": each(&alone, |p| p.processor_thread_system_s),
                "processor_thread_system_s_with": each(&with, |p| p.processor_thread_system_s),
                "lag_s_alone": each(&alone, |p| p.lag_s),
                "lag_s_with": each(&with, |p| p.lag_s),
                "cpu_added_percent": added(cpu_alone, cpu_with),
                "processor_thread_added_percent": added(thread_alone, thread_with),
                "passing_threads_s_alone": each(&alone, |p| p.passing_threads_s),
                "passing_threads_s_with": each(&with, |p| p.passing_threads_s),
                "other_threads_s_alone": each(&alone, |p| p.other_threads_s),
                "other_threads_s_with": each(&with, |p| p.other_threads_s),
                "processor_thread_added_percent_by_round": by_round,
                "processor_thread_added_percent_median": median,
                "this_run": this_run.json(),
                "pooled": pooled.as_ref().map(|(path, ratios, others)| serde_json::json!({
                    "rounds_file": path,
                    "rounds_of_other_setups": others,
                    "intervals": ratios.json(),
                })),
            })
        );
    } else {
        println!(
            "processor: {measured} records over {} s at {rate:.0} events/s (after \
             {fill_records} of fill), no triggers vs {second}{}",
            args.traffic.seconds,
            full.interleave
                .map(|s| format!(", the passes interleaved by {s} s"))
                .unwrap_or_default()
        );
        println!(
            "  processor threads CPU s (mean of {}): no triggers {cpu_alone:.2}, with \
             {cpu_with:.2}: {:+.1} %",
            args.rounds,
            added(cpu_alone, cpu_with)
        );
        println!(
            "  the processor thread alone: {thread_alone:.2} vs {thread_with:.2}: {:+.1} %",
            added(thread_alone, thread_with)
        );
        println!(
            "  snapshot threads: {:.2} vs {:.2}; others: {:.2} vs {:.2}",
            mean(&alone, |p| p.passing_threads_s),
            mean(&with, |p| p.passing_threads_s),
            mean(&alone, |p| p.other_threads_s),
            mean(&with, |p| p.other_threads_s),
        );
        let rounds: Vec<String> = by_round.iter().map(|p| format!("{p:+.1}")).collect();
        println!(
            "  the processor thread, each round's pair: {} %; median {median:+.1} %",
            rounds.join(", ")
        );
        println!("  each round's pair, this run's mean:");
        for line in this_run.lines() {
            println!("    {line}");
        }
        if let Some((path, ratios, others)) = &pooled {
            println!(
                "  pooled, every round of this binary, configuration and traffic in {} \
                 ({others} of other setups left out):",
                path.display()
            );
            for line in ratios.lines() {
                println!("    {line}");
            }
        }
    }
    Ok(())
}

/// The middle value (the mean of the middle two for an even count; 0 for none).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The traffic as log batches, each with the index of its first record.
#[derive(Debug)]
struct Appends {
    header: AppendsHeader,
    batches: Vec<(usize, EncodedBatch)>,
}

/// What an appends file says of its batches.
#[derive(Debug, Clone, Copy)]
struct AppendsHeader {
    /// Batches in the file.
    count: usize,
    /// Batches (and records) of the fill.
    fill_batches: usize,
    fill_records: usize,
    measured: usize,
    /// Measured records a second: the traffic's own rate (a second of event time a second).
    rate: f64,
    /// The flags the traffic was generated with.
    traffic: Traffic,
}

/// The traffic in log batches of `batch` records, encoded as they are judged (only the
/// encoded batches are held: about a fifth of the memory of the records).
fn appends(traffic: &Traffic) -> anyhow::Result<Appends> {
    let appended_at = crate::clock::SystemClock.now_ms();
    let mut batches: Vec<(usize, EncodedBatch)> = Vec::new();
    let mut total = 0usize;
    let mut encode = |chunk: &[LogRecord], batches: &mut Vec<(usize, EncodedBatch)>| {
        let count = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
        let bytes = encode_batch(chunk, appended_at, 1);
        batches.push((total, EncodedBatch { bytes, count }));
        total += chunk.len();
    };
    let mut pending: Vec<LogRecord> = Vec::with_capacity(traffic.batch.saturating_mul(2));
    let fill_records = judged_records(traffic, |judged| {
        pending.extend(judged);
        while pending.len() >= traffic.batch {
            encode(&pending[..traffic.batch], &mut batches);
            pending.drain(..traffic.batch);
        }
        Ok(())
    })?;
    if !pending.is_empty() {
        encode(&pending, &mut batches);
    }
    let measured = total - fill_records;
    let fill_batches = batches
        .iter()
        .take_while(|(at, _)| *at < fill_records)
        .count();
    Ok(Appends {
        header: AppendsHeader {
            count: batches.len(),
            fill_batches,
            fill_records,
            measured,
            rate: measured as f64 / traffic.seconds.max(1) as f64,
            traffic: *traffic,
        },
        batches,
    })
}

/// Tag of the appends file's format (written and read by this bench only).
const APPENDS_FORMAT: &[u8; 8] = b"vdtapnd2";

/// Writes the appends for the passes' processes.
fn write_appends(path: &std::path::Path, appends: &Appends) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let header = &appends.header;
    anyhow::ensure!(
        header.count == appends.batches.len(),
        "a header of other batches"
    );
    out.write_all(APPENDS_FORMAT)?;
    for n in [
        header.count,
        header.fill_batches,
        header.fill_records,
        header.measured,
    ] {
        out.write_all(&(n as u64).to_le_bytes())?;
    }
    out.write_all(&header.rate.to_le_bytes())?;
    let traffic = &header.traffic;
    out.write_all(&traffic.rate.to_le_bytes())?;
    for n in [
        traffic.warmup,
        traffic.fill,
        traffic.seconds,
        traffic.batch as u64,
    ] {
        out.write_all(&n.to_le_bytes())?;
    }
    for (at, batch) in &appends.batches {
        out.write_all(&(*at as u64).to_le_bytes())?;
        out.write_all(&batch.count.to_le_bytes())?;
        out.write_all(&(batch.bytes.len() as u64).to_le_bytes())?;
        out.write_all(&batch.bytes)?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(())
}

/// Reads only the header of what [`write_appends`] wrote.
fn read_appends_header(path: &std::path::Path) -> anyhow::Result<AppendsHeader> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("reading the header of {}", path.display()))?;
    parse_header(&mut StreamBytes(file))
}

fn parse_header(file: &mut StreamBytes<impl std::io::Read>) -> anyhow::Result<AppendsHeader> {
    anyhow::ensure!(
        file.take(APPENDS_FORMAT.len())? == APPENDS_FORMAT,
        "not an appends file of this build"
    );
    let count = file.usize()?;
    let fill_batches = file.usize()?;
    let fill_records = file.usize()?;
    let measured = file.usize()?;
    let rate = f64::from_bits(file.u64()?);
    let traffic = Traffic {
        rate: f64::from_bits(file.u64()?),
        warmup: file.u64()?,
        fill: file.u64()?,
        seconds: file.u64()?,
        batch: file.usize()?,
    };
    anyhow::ensure!(
        fill_batches <= count && rate.is_finite() && rate > 0.0 && traffic.check().is_ok(),
        "the appends file's header does not hold"
    );
    Ok(AppendsHeader {
        count,
        fill_batches,
        fill_records,
        measured,
        rate,
        traffic,
    })
}

/// What [`write_appends`] wrote, read whole (the tests' check of the format).
#[cfg(test)]
fn read_appends(path: &std::path::Path) -> anyhow::Result<Appends> {
    let mut batches = Vec::new();
    let (header, measured) = read_appends_with(path, |at, batch| {
        batches.push((at, batch));
        Ok(())
    })?;
    batches.extend(measured);
    Ok(Appends { header, batches })
}

/// Reads what [`write_appends`] wrote a batch at a time: each batch of the fill goes to
/// `fill` as it is read (a pass appends it to its log there and then), and the measured
/// batches are given back; a file cut short, running on or not of this format is an error
/// (made after the fill is appended: the pass then fails). A pass's process so holds the
/// measured traffic alone: read whole, a 270-s file at 100,000 events/s was 7.7 GB, held
/// twice while it was split into batches, beside a pass's ~13 GB of state on a 24 GB
/// machine. Reading batch by batch was tried once before (stop 34, `3fa81ada`) and went
/// back to the whole read so that figures stayed comparable with earlier ones: the
/// processor thread's kernel time rose as much with either read in the same hours (this
/// host's balloon hands freed memory back to the hypervisor). Stop 40 measured both reads
/// again (+6.7 % whole, +10.4 % and +4.3 % batch by batch, docs/benchmarks.md): not told
/// apart either, so the read that needs half the memory stays.
fn read_appends_with(
    path: &std::path::Path,
    mut fill: impl FnMut(usize, EncodedBatch) -> anyhow::Result<()>,
) -> anyhow::Result<(AppendsHeader, Vec<(usize, EncodedBatch)>)> {
    use std::io::Read;
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut file = StreamBytes(std::io::BufReader::with_capacity(1 << 20, file));
    let header = parse_header(&mut file)?;
    let AppendsHeader {
        count,
        fill_batches,
        fill_records,
        measured,
        ..
    } = header;
    let mut kept = Vec::with_capacity(count.saturating_sub(fill_batches).min(1 << 20));
    // Each batch starts where the one before ends (the pacing subtracts these indices).
    let mut next_at = 0usize;
    let mut fill_end = None;
    for index in 0..count {
        let at = file.usize()?;
        anyhow::ensure!(at == next_at, "the appends file's batches are out of order");
        let records = u32::from_le_bytes((file.take(4)?).try_into().unwrap_or([0; 4]));
        next_at = at.saturating_add(records as usize);
        let len = file.usize()?;
        let batch = EncodedBatch {
            bytes: file.take(len)?,
            count: records,
        };
        if index < fill_batches {
            fill(at, batch)?;
        } else {
            fill_end.get_or_insert(at);
            kept.push((at, batch));
        }
    }
    anyhow::ensure!(
        file.0.read(&mut [0])? == 0,
        "the appends file runs on past its batches"
    );
    // (The fill may end inside the first batch measured.)
    let fill_end = fill_end.unwrap_or(next_at);
    anyhow::ensure!(
        fill_records <= fill_end && fill_records.checked_add(measured) == Some(next_at),
        "the appends file's header does not hold"
    );
    Ok((header, kept))
}

/// An appends file read in order, from its start (see [`read_appends_with`]).
struct StreamBytes<R>(R);

impl<R: std::io::Read> StreamBytes<R> {
    /// The next `n` bytes. (Read as they come: a length the file does not hold is refused
    /// when the file ends, not allocated up front.)
    fn take(&mut self, n: usize) -> anyhow::Result<Vec<u8>> {
        use std::io::Read;
        let mut bytes = Vec::with_capacity(n.min(1 << 24));
        (&mut self.0).take(n as u64).read_to_end(&mut bytes)?;
        anyhow::ensure!(bytes.len() == n, "the appends file is cut short");
        Ok(bytes)
    }

    fn u64(&mut self) -> anyhow::Result<u64> {
        let bytes = self.take(8)?;
        Ok(u64::from_le_bytes(bytes.try_into().unwrap_or([0; 8])))
    }

    fn usize(&mut self) -> anyhow::Result<usize> {
        Ok(usize::try_from(self.u64()?)?)
    }
}

/// Generates the traffic into `file` in a fresh process of this binary (see [`run`]).
fn write_traffic_in_child(args: &ProcessorBenchArgs, file: &std::path::Path) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("the path of this binary")?;
    let traffic = &args.bench.traffic;
    let status = std::process::Command::new(exe)
        .args(["bench", "processor", "--config"])
        .arg(&args.bench.config)
        .args(["--rate", &traffic.rate.to_string()])
        .args(["--warmup", &traffic.warmup.to_string()])
        .args(["--fill", &traffic.fill.to_string()])
        .args(["--seconds", &traffic.seconds.to_string()])
        .args(["--batch", &traffic.batch.to_string()])
        .arg("--write-traffic")
        .arg(file)
        .status()
        .context("starting the traffic's process")?;
    anyhow::ensure!(status.success(), "the traffic's process failed ({status})");
    Ok(())
}

/// A pass's process's files: the traffic it reads, and the directory its log and store go
/// under (this run's own temporary directory).
type PassFiles<'a> = (&'a std::path::Path, &'a std::path::Path);

/// This binary started again on `appends` for one pass (see the module), its temporary
/// directory made under `scratch`: a pass's process ended from here (its round cut short
/// by the other's error, a full disk say) leaves its directory behind, and this run's
/// removes it with the rest (such leftovers, gigabytes each, once filled the disk).
fn pass_command(
    args: &ProcessorBenchArgs,
    (appends, scratch): PassFiles<'_>,
    with_triggers: bool,
) -> anyhow::Result<std::process::Command> {
    let exe = std::env::current_exe().context("the path of this binary")?;
    let mut command = std::process::Command::new(exe);
    command
        .env("TMPDIR", scratch)
        .args(["bench", "processor", "--config"])
        .arg(&args.bench.config)
        .arg("--pass-appends")
        .arg(appends)
        .arg("--pass-triggers")
        .arg(with_triggers.to_string());
    Ok(command)
}

/// Runs one pass in a fresh process of this binary (see the module) and reads its figures.
fn pass_in_child(
    args: &ProcessorBenchArgs,
    files: PassFiles<'_>,
    with_triggers: bool,
) -> anyhow::Result<Pass> {
    let output = pass_command(args, files, with_triggers)?
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("starting a pass's process")?;
    anyhow::ensure!(
        output.status.success(),
        "a pass's process failed ({})",
        output.status
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = (stdout.lines().rev())
        .find(|l| l.starts_with('{'))
        .context("a pass's process printed no figures")?;
    serde_json::from_str(line).context("a pass's figures")
}

/// One pass: a fresh log and store, the fill processed, the measured traffic appended at
/// `rate` records a second and processed; the processor stopped after.
fn run_pass(
    config: &crate::config::Config,
    set: TriggerSet,
    batches: &[(usize, EncodedBatch)],
    fill_batches: usize,
    rate: f64,
) -> anyhow::Result<Pass> {
    let pass_log = PassLog::open()?;
    for group in batches[..fill_batches].chunks(FILL_GROUP) {
        pass_log.append_fill(group.iter().map(|(_, b)| b))?;
    }
    let measured = &batches[fill_batches..];
    let started = StartedPass::start(config, set, pass_log, snapshot_schedule(measured))?;
    let pass = started.measure(measured, rate, false)?;
    started.processor.stop();
    Ok(pass)
}

/// One interleaved round (`--interleave`): both passes' processes make their fills side
/// by side, then run their slices of the measured traffic in turn, the other idle; the
/// kind that goes first alternates from slice to slice (and from round to round). Gives
/// each pass's slices summed: without triggers, then the second kind (with the trigger
/// set, or none again in a control run).
fn interleaved_round(
    args: &ProcessorBenchArgs,
    files: PassFiles<'_>,
    round: usize,
    seconds: u64,
) -> anyhow::Result<(Pass, Pass)> {
    let mut alone = SlicedChild::start(args, files, false, seconds)?;
    let mut second = SlicedChild::start(args, files, !args.control, seconds)?;
    let slices = alone.ready()?;
    anyhow::ensure!(
        second.ready()? == slices && slices > 0,
        "the two passes' processes cut the traffic into different slices"
    );
    let (mut a, mut w): (Option<Pass>, Option<Pass>) = (None, None);
    for slice in 0..slices {
        let order = if (slice + round).is_multiple_of(2) {
            [false, true]
        } else {
            [true, false]
        };
        for second_kind in order {
            let (child, sum) = if second_kind {
                (&mut second, &mut w)
            } else {
                (&mut alone, &mut a)
            };
            let pass = child.slice()?;
            *sum = Some(sum.map_or(pass, |before| before.then(pass)));
        }
    }
    alone.finish()?;
    second.finish()?;
    Ok((
        a.context("the pass without triggers")?,
        w.context("the second pass")?,
    ))
}

/// A pass's process that runs its measured traffic a slice at a time, when asked
/// (`--pass-slice-seconds`; see [`run_slices`] for its side of the exchange).
struct SlicedChild {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl SlicedChild {
    fn start(
        args: &ProcessorBenchArgs,
        files: PassFiles<'_>,
        with_triggers: bool,
        seconds: u64,
    ) -> anyhow::Result<Self> {
        let mut child = pass_command(args, files, with_triggers)?
            .arg("--pass-slice-seconds")
            .arg(seconds.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .context("starting a pass's process")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("a pass's standard output")?;
        Ok(Self {
            child,
            stdin,
            stdout: std::io::BufReader::new(stdout),
        })
    }

    /// The next line the process prints.
    fn line(&mut self) -> anyhow::Result<String> {
        use std::io::BufRead;
        let mut line = String::new();
        let read = self.stdout.read_line(&mut line)?;
        anyhow::ensure!(read > 0, "a pass's process ended before its last slice");
        Ok(line.trim_end().to_string())
    }

    /// Waits until the process has made its fill; gives the number of its slices.
    fn ready(&mut self) -> anyhow::Result<usize> {
        loop {
            let line = self.line()?;
            if let Some(count) = line.strip_prefix("ready ") {
                return count.parse().context("a pass's slice count");
            }
        }
    }

    /// Runs the process's next slice and reads its figures.
    fn slice(&mut self) -> anyhow::Result<Pass> {
        use std::io::Write;
        let stdin = self.stdin.as_mut().context("a pass's standard input")?;
        stdin.write_all(b"next\n")?;
        stdin.flush()?;
        loop {
            let line = self.line()?;
            if line.starts_with('{') {
                return serde_json::from_str(&line).context("a slice's figures");
            }
        }
    }

    /// Ends the process (its input closed) and checks it ended well.
    fn finish(mut self) -> anyhow::Result<()> {
        drop(self.stdin.take());
        let status = self.child.wait().context("a pass's process")?;
        anyhow::ensure!(status.success(), "a pass's process failed ({status})");
        Ok(())
    }
}

impl Drop for SlicedChild {
    /// A round cut short by an error leaves no pass's process running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A pass's process's side of `--interleave`: once its fill is made and its threads are
/// idle, prints `ready N` (its N slices), then runs one slice for each line `next` on
/// standard input and prints the slice's figures as JSON, each slice measured until the
/// processor's threads are idle again (a snapshot begun in a slice is that slice's work,
/// not done while the other pass runs). Ends at the end of its input.
fn run_slices(
    started: &StartedPass,
    measured: &[(usize, EncodedBatch)],
    (rate, seconds): (f64, u64),
    input: impl std::io::BufRead,
    mut output: impl std::io::Write,
) -> anyhow::Result<()> {
    started.wait_until_idle()?;
    let slices = slices_of(measured, rate, seconds);
    writeln!(output, "ready {}", slices.len())?;
    output.flush()?;
    let mut lines = input.lines();
    for slice in slices {
        match lines.next() {
            None => return Ok(()),
            Some(line) => anyhow::ensure!(line?.trim() == "next", "expected `next`"),
        }
        let pass = started.measure(slice, rate, true)?;
        writeln!(output, "{}", serde_json::to_string(&pass)?)?;
        output.flush()?;
    }
    // The end of the input: the caller is done with this pass.
    for line in lines {
        line?;
    }
    Ok(())
}

/// `measured` cut into slices of `seconds` of traffic each (a batch goes by its first
/// record), in order; none empty.
fn slices_of(
    measured: &[(usize, EncodedBatch)],
    rate: f64,
    seconds: u64,
) -> Vec<&[(usize, EncodedBatch)]> {
    let Some(first) = measured.first().map(|(at, _)| *at) else {
        return Vec::new();
    };
    let per_slice = (seconds as f64 * rate).max(1.0);
    let slice_of = |at: usize| ((at - first) as f64 / per_slice) as u64;
    let mut slices = Vec::new();
    let mut start = 0;
    for end in 1..=measured.len() {
        if end == measured.len() || slice_of(measured[end].0) != slice_of(measured[start].0) {
            slices.push(&measured[start..end]);
            start = end;
        }
    }
    slices
}

/// Batches of the fill appended at once.
const FILL_GROUP: usize = 64;

/// A pass's fresh log and KPI store, in a temporary directory.
struct PassLog {
    dir: tempfile::TempDir,
    log: Arc<EventLog>,
    store: Arc<KpiStore>,
}

impl PassLog {
    fn open() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("a temporary directory")?;
        let (log, _) = EventLog::open(&dir.path().join("log.redb"), 10)?;
        let store = KpiStore::open(&dir.path().join("kpis.redb"))?;
        Ok(PassLog {
            dir,
            log: Arc::new(log),
            store: Arc::new(store),
        })
    }

    /// Appends batches of the fill, before the processor starts.
    fn append_fill<'a>(
        &self,
        batches: impl IntoIterator<Item = &'a EncodedBatch>,
    ) -> anyhow::Result<()> {
        let group: Vec<&EncodedBatch> = batches.into_iter().collect();
        if !group.is_empty() {
            self.log.append_group(&group, &[])?;
        }
        Ok(())
    }
}

/// A pass's processor, started over its log and store, the fill processed.
struct StartedPass {
    processor: crate::processor::ProcessorHandle,
    dir: tempfile::TempDir,
    log: Arc<EventLog>,
    notifier: Arc<LogNotifier>,
    act: Arc<crate::act::ActStatus>,
}

impl StartedPass {
    /// Starts the processor over `pass_log` (its fill appended) with `set`, its snapshots
    /// at the records of [`snapshot_schedule`] of the whole measured traffic, and waits
    /// until it has committed the fill.
    fn start(
        config: &crate::config::Config,
        set: TriggerSet,
        pass_log: PassLog,
        schedule: SnapshotSchedule,
    ) -> anyhow::Result<Self> {
        let PassLog { dir, log, store } = pass_log;
        let notifier = Arc::new(LogNotifier::default());
        let act = Arc::new(crate::act::ActStatus::new(
            set,
            crate::clock::SystemClock.now_ms(),
        ));
        let regions = crate::geoip::load(config.pipeline.geoip_database.as_deref())?;
        let processor = crate::processor::start(
            log.clone(),
            store,
            config.pipeline.rules.clone(),
            regions,
            ProcessorOptions {
                snapshot_interval: Duration::from_secs(config.pipeline.snapshot_interval_seconds),
                snapshot_schedule: schedule,
                ..ProcessorOptions::default()
            },
            ProcessorLinks {
                notifier: notifier.clone(),
                timings: Arc::new(crate::telemetry::StageTimings::default()),
                triggers: Some(act.clone()),
            },
        )?;
        let started = Self {
            processor,
            dir,
            log,
            notifier,
            act,
        };
        started.notifier.appended(started.log.end_offset());
        started.caught_up(started.log.end_offset())?;
        Ok(started)
    }

    /// Waits until the processor has committed every record before `end`.
    fn caught_up(&self, end: u64) -> anyhow::Result<()> {
        let status = &self.processor.status;
        let started = Instant::now();
        while status.processed_offset.load(Ordering::Acquire) < end {
            if let Some(error) = status
                .last_error
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .clone()
            {
                anyhow::bail!("the processor failed: {error}");
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(1_800),
                "the processor did not catch up within 30 minutes"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    /// Waits until the processor's threads are idle: no CPU tick (10 ms) of the process
    /// but this thread's, or one, in each of three 100-ms spans in a row (a snapshot's
    /// encoding and writing go on for seconds after the processor has caught up).
    fn wait_until_idle(&self) -> anyhow::Result<()> {
        let busy = || process_cpu_seconds() - own_cpu_seconds();
        let started = Instant::now();
        let (mut quiet, mut before) = (0, busy());
        while quiet < 3 {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(600),
                "the processor's threads were not idle within 10 minutes"
            );
            std::thread::sleep(Duration::from_millis(100));
            let now = busy();
            quiet = if now - before <= 0.015 { quiet + 1 } else { 0 };
            before = now;
        }
        Ok(())
    }

    /// Appends `measured` at `rate` records a second from its first record's time, and
    /// measures until the processor has committed its last record, or with `until_idle`
    /// until its threads are idle after that ([`Self::wait_until_idle`]).
    fn measure(
        &self,
        measured: &[(usize, EncodedBatch)],
        rate: f64,
        until_idle: bool,
    ) -> anyhow::Result<Pass> {
        let (log, notifier, status) = (&self.log, &self.notifier, &self.processor.status);
        let (process0, own0) = (process_cpu_seconds(), own_cpu_seconds());
        let (thread0, system0) = processor_thread_seconds();
        let live0 = live_threads_cpu_seconds();
        let start = Instant::now();
        let first = measured.first().map_or(0, |(at, _)| *at);
        let mut next = 0;
        while next < measured.len() {
            // Every batch whose first record is due by now, in one append (as intake's group
            // commit does when requests queue up).
            let elapsed = start.elapsed().as_secs_f64();
            let due_records = (elapsed * rate) as usize;
            let mut end = next;
            while end < measured.len() && measured[end].0 - first <= due_records {
                end += 1;
            }
            if end == next {
                let wait = (measured[next].0 - first) as f64 / rate - elapsed;
                std::thread::sleep(Duration::from_secs_f64(wait.clamp(0.0005, 0.05)));
                continue;
            }
            let group: Vec<&EncodedBatch> = measured[next..end].iter().map(|(_, b)| b).collect();
            log.append_group(&group, &[])?;
            notifier.appended(log.end_offset());
            next = end;
        }
        let appended = start.elapsed();
        self.caught_up(log.end_offset())?;
        let wall = start.elapsed();
        if until_idle {
            self.wait_until_idle()?;
        }
        let cpu_s = (process_cpu_seconds() - process0) - (own_cpu_seconds() - own0);
        let processor_thread_s = processor_thread_seconds().0 - thread0;
        let own_tid = std::fs::read_link("/proc/thread-self").ok();
        let own_tid = own_tid
            .as_ref()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str());
        // Threads alive at both ends, but this one and the processor's.
        let other_threads_s: f64 = (live_threads_cpu_seconds().into_iter())
            .filter(|(tid, (name, _))| Some(tid.as_str()) != own_tid && name != "processor")
            .filter_map(|(tid, (_, end))| live0.get(&tid).map(|(_, start)| end - start))
            .sum::<f64>()
            // (An empty sum is −0.)
            + 0.0;
        Ok(Pass {
            cpu_s,
            processor_thread_s,
            processor_thread_system_s: processor_thread_seconds().1 - system0,
            other_threads_s,
            passing_threads_s: (cpu_s - processor_thread_s - other_threads_s).max(0.0),
            wall_s: wall.as_secs_f64(),
            lag_s: (wall - appended).as_secs_f64(),
            staged_users: self.act.users.load(Ordering::Relaxed),
            snapshot_offset: status.snapshot_offset.load(Ordering::Acquire),
        })
    }
}

/// Where a pass's snapshots fall: every `F/2 + M/4` records (F the fill's records, M the
/// measured ones: `measured` starts at record F), so one in the middle of the fill and one
/// in the middle of the measured traffic, at the same records with triggers and without
/// (see [`SnapshotSchedule`]). About what a server's timed rule gives at 100,000 events/s
/// and 4 million users (a snapshot every 30 times its ~3-5 s cost), but not drawn at
/// random. With no measured traffic, the timed rule.
fn snapshot_schedule(measured: &[(usize, EncodedBatch)]) -> SnapshotSchedule {
    let fill = measured.first().map_or(0, |(at, _)| *at) as u64;
    let total = measured
        .last()
        .map_or(0, |(at, batch)| *at as u64 + u64::from(batch.count));
    let measured = total.saturating_sub(fill);
    std::num::NonZeroU64::new(fill / 2 + measured / 4)
        .filter(|_| measured > 0)
        .map_or(SnapshotSchedule::Timed, SnapshotSchedule::EveryRecords)
}

/// CPU seconds (user + system) of the whole process, ended threads included.
fn process_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| super::stat_cpu_seconds(&stat).map(|(_, s)| s))
        .unwrap_or(0.0)
}

/// CPU seconds of the calling thread.
fn own_cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/thread-self/stat")
        .ok()
        .and_then(|stat| super::stat_cpu_seconds(&stat).map(|(_, s)| s))
        .unwrap_or(0.0)
}

/// Each live thread of this process by thread id: its name, and its user and system CPU
/// seconds.
fn live_threads() -> std::collections::BTreeMap<String, (String, f64, f64)> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return std::collections::BTreeMap::new();
    };
    (tasks.flatten())
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            let (name, user, system) = super::stat_times(&stat)?;
            Some((
                task.file_name().to_string_lossy().into_owned(),
                (name.to_string(), user, system),
            ))
        })
        .collect()
}

/// CPU seconds of each live thread of this process, with its name, by thread id.
fn live_threads_cpu_seconds() -> std::collections::BTreeMap<String, (String, f64)> {
    (live_threads().into_iter())
        .map(|(tid, (name, user, system))| (tid, (name, user + system)))
        .collect()
}

/// CPU seconds of the thread named `processor`, and its system seconds.
fn processor_thread_seconds() -> (f64, f64) {
    (live_threads().into_values())
        .filter(|(name, _, _)| name == "processor")
        .fold((0.0, 0.0), |(cpu, kernel), (_, user, system)| {
            (cpu + user + system, kernel + system)
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The test triggers' configuration, their set, and 3 s of traffic at 400 events/s
    /// after 4 s of fill.
    fn small_run() -> (crate::config::Config, TriggerSet, Appends) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vedetta.toml");
        std::fs::write(&path, super::super::TEST_TRIGGERS).unwrap();
        let config = load_from(Some(&path), &[], &Overrides::default()).unwrap();
        let set = config.triggers.load_set().unwrap();
        let traffic = Traffic {
            rate: 400.0,
            warmup: 120,
            fill: 4,
            seconds: 3,
            batch: 50,
        };
        (config, set, appends(&traffic).unwrap())
    }

    /// Both passes run the real processor over the same appends, paced at the traffic's
    /// rate, to the last record; only the pass with triggers holds users in its stage.
    #[test]
    fn a_pass_processes_every_appended_record_at_the_traffic_s_pace() {
        let (config, set, appends) = small_run();
        assert!(
            appends.header.fill_batches > 0 && appends.header.fill_batches < appends.batches.len()
        );
        let alone = run_pass(
            &config,
            TriggerSet::empty(),
            &appends.batches,
            appends.header.fill_batches,
            appends.header.rate,
        )
        .unwrap();
        let with = run_pass(
            &config,
            set,
            &appends.batches,
            appends.header.fill_batches,
            appends.header.rate,
        )
        .unwrap();
        for pass in [alone, with] {
            // Paced: the last batch is due at about the measured seconds (the last batch
            // starts before the end).
            assert!(pass.wall_s >= 2.0, "{pass}");
            assert!(pass.lag_s < 5.0, "{pass}");
        }
        assert_eq!(alone.staged_users, 0);
        assert!(with.staged_users > 0, "{with}");
        // Snapshots by records: the one due in the fill lands seconds after it, where the
        // configuration's timed rule (10 s) would have taken none yet.
        let fill = appends.header.fill_records as u64;
        for pass in [alone, with] {
            assert!(pass.snapshot_offset >= fill, "{pass}");
        }
    }

    /// A pass's process under `--interleave` runs its slices one `next` at a time, each
    /// paced and measured until its threads are idle; the slices together are the whole
    /// measured traffic, processed to its last record.
    #[test]
    fn an_interleaved_pass_runs_a_slice_at_each_next() {
        let (config, set, Appends { header, batches }) = small_run();
        let pass_log = PassLog::open().unwrap();
        for group in batches[..header.fill_batches].chunks(FILL_GROUP) {
            pass_log.append_fill(group.iter().map(|(_, b)| b)).unwrap();
        }
        let measured = &batches[header.fill_batches..];
        let started = StartedPass::start(&config, set, pass_log, snapshot_schedule(measured));
        let started = started.unwrap();
        let slices = slices_of(measured, header.rate, 1);
        assert_eq!(slices.len(), 3);
        let mut out = Vec::new();
        let input = "next\nnext\nnext\n".as_bytes();
        run_slices(&started, measured, (header.rate, 1), input, &mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some("ready 3"));
        let passes: Vec<Pass> = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(passes.len(), 3);
        for pass in &passes {
            // A second of traffic a slice, paced.
            assert!(pass.wall_s >= 0.5 && pass.cpu_s > 0.0, "{pass}");
        }
        let whole = passes.iter().copied().reduce(Pass::then).unwrap();
        let cpu: f64 = passes.iter().map(|p| p.cpu_s).sum();
        assert!(
            (whole.cpu_s - cpu).abs() < 1e-9 && whole.staged_users > 0,
            "{whole}"
        );
        // Every record appended and processed.
        let end = started.log.end_offset();
        assert_eq!(end as usize, header.fill_records + header.measured);
        let processed = started
            .processor
            .status
            .processed_offset
            .load(Ordering::Acquire);
        assert!(processed >= end, "{processed} of {end}");
        // Asked for no slice (the input ended at once): ready, then nothing.
        let mut out = Vec::new();
        run_slices(&started, &[], (header.rate, 1), "".as_bytes(), &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "ready 0\n");
        // A line other than `next` is refused.
        let error = run_slices(
            &started,
            measured,
            (header.rate, 1),
            "go\n".as_bytes(),
            Vec::new(),
        );
        assert!(error.unwrap_err().to_string().contains("expected `next`"));
        started.processor.stop();
    }

    #[test]
    fn slices_cut_the_traffic_by_its_time_each_batch_whole() {
        let batch = |at: usize| {
            let bytes = Vec::new();
            (at, EncodedBatch { bytes, count: 10 })
        };
        // 100 records a second, slices of 2 s: records 0-199, 200-399, 400-… after the
        // first.
        let measured: Vec<_> = [1_000, 1_050, 1_150, 1_199, 1_200, 1_390, 1_400]
            .into_iter()
            .map(batch)
            .collect();
        let firsts = |slices: Vec<&[(usize, EncodedBatch)]>| -> Vec<Vec<usize>> {
            (slices.iter())
                .map(|s| s.iter().map(|(at, _)| *at).collect())
                .collect()
        };
        assert_eq!(
            firsts(slices_of(&measured, 100.0, 2)),
            [
                vec![1_000, 1_050, 1_150, 1_199],
                vec![1_200, 1_390],
                vec![1_400]
            ]
        );
        assert!(slices_of(&[], 100.0, 2).is_empty());
        assert_eq!(firsts(slices_of(&measured, 100.0, 3_600)).len(), 1);
    }

    #[test]
    fn the_median_is_the_middle_value() {
        assert_eq!(median(&[]), 0.0);
        assert_eq!(median(&[4.9]), 4.9);
        assert_eq!(median(&[37.8, 4.9, 17.8]), 17.8);
        assert_eq!(median(&[20.0, 10.0, 40.0, 12.0]), 16.0);
    }

    #[test]
    fn bounds_are_refused_by_flag() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("vedetta.toml");
        std::fs::write(&config, super::super::TEST_TRIGGERS).unwrap();
        let args = |rate: f64, rounds: usize| ProcessorBenchArgs {
            bench: super::super::stage::StageBenchArgs {
                config: config.clone(),
                traffic: Traffic {
                    rate,
                    seconds: 10,
                    warmup: 10,
                    fill: 10,
                    batch: 100,
                },
                rounds,
                json: false,
            },
            same_process: false,
            pass_appends: None,
            traffic_file: None,
            write_traffic: None,
            pass_triggers: None,
            rounds_file: None,
            interleave: None,
            control: false,
            pass_slice_seconds: None,
        };
        let error = run(&args(f64::INFINITY, 1)).unwrap_err().to_string();
        assert!(error.contains("--rate"), "{error}");
        for rounds in [0, MAX_ROUNDS + 1] {
            let error = run(&args(100.0, rounds)).unwrap_err().to_string();
            assert!(error.contains("--rounds"), "{error}");
        }
    }

    /// The appends a pass's process reads are the ones written, batch for batch; a file
    /// cut short, run on or of another format is refused, not misread.
    #[test]
    fn appends_read_back_as_written_and_damaged_files_are_refused() {
        let traffic = Traffic {
            rate: 400.0,
            warmup: 60,
            fill: 2,
            seconds: 2,
            batch: 50,
        };
        let appends = appends(&traffic).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("appends");
        write_appends(&path, &appends).unwrap();
        let back = read_appends(&path).unwrap();
        assert_eq!(back.batches.len(), appends.batches.len());
        assert!(
            back.batches
                .iter()
                .zip(&appends.batches)
                .all(|(a, b)| a.0 == b.0 && a.1.count == b.1.count && a.1.bytes == b.1.bytes)
        );
        assert_eq!(
            (
                back.header.fill_batches,
                back.header.fill_records,
                back.header.measured
            ),
            (
                appends.header.fill_batches,
                appends.header.fill_records,
                appends.header.measured
            )
        );
        assert_eq!(back.header.rate.to_bits(), appends.header.rate.to_bits());
        assert!(back.header.traffic.same_as(&traffic));
        // A pass's process: the fill handed over batch by batch, in order, only the
        // measured batches kept.
        let mut filled = Vec::new();
        let (_, kept) = read_appends_with(&path, |at, batch| {
            filled.push((at, batch.count));
            Ok(())
        })
        .unwrap();
        let fill = appends.header.fill_batches;
        assert!(fill > 0 && fill < appends.batches.len());
        assert_eq!(
            filled,
            (appends.batches[..fill].iter())
                .map(|(at, b)| (*at, b.count))
                .collect::<Vec<_>>()
        );
        assert_eq!(kept.len(), appends.batches.len() - fill);
        assert_eq!(kept[0].0, appends.batches[fill].0);
        let bytes = std::fs::read(&path).unwrap();
        for (damaged, why) in [
            (bytes[..bytes.len() - 1].to_vec(), "cut short"),
            ([&bytes[..], &[0]].concat(), "runs on"),
            (
                [&b"vdtapnd1"[..], &bytes[8..]].concat(),
                "not an appends file",
            ),
            (
                {
                    // The second batch's first index, after the header (8 + 10 × 8 bytes)
                    // and the first batch (8 + 4 + 8 bytes and its body).
                    let first_len = appends.batches[0].1.bytes.len();
                    let at = 88 + 20 + first_len;
                    let mut moved = bytes.clone();
                    moved[at..at + 8].copy_from_slice(&0u64.to_le_bytes());
                    moved
                },
                "out of order",
            ),
        ] {
            std::fs::write(&path, damaged).unwrap();
            let error = read_appends(&path).unwrap_err().to_string();
            assert!(error.contains(why), "{error}");
        }
    }
}
