//! `vedetta bench stage`: what the trigger stage adds to the processor's CPU, at a given
//! event rate, over the same records with and without it.
//!
//! The live pipeline bench measures the whole program, but on two cores its HTTP server
//! and generator share the machine with the processor, the processor's CPU seconds move by
//! ±15 % between two runs of the same build, and one process cannot drive more than about
//! 50,000 events/s of live traffic here. The issue's bar ("100 triggers at 100,000
//! events/s add ≤ 10 % to the processor's CPU") needs a steadier figure at that rate:
//!
//! 1. The generator's live traffic (the `--live` bench's: returning users, event time
//!    advancing at `--rate` events a second of event time, ad spend included) for
//!    `--seconds` of event time, judged by intake into log records, all up front.
//! 2. On one thread, the processor's loop over them in reads of `--batch` records: the
//!    pipeline processes every record; after each read the KPI deltas and the dormant
//!    memories are taken (what the commit writes), snapshot copies are made into the
//!    previous one's memory as the processor makes them (10 s after the last, or 30 times
//!    what the last one cost if longer, with event time standing for the clock: a server
//!    keeping up sees both advance together), and — in the pass with triggers — the stage
//!    runs after every record, its deltas and staged outputs are taken after each read and
//!    its copy is made with the pipeline's. The copies are encoded on the same thread, as
//!    the snapshot thread would, to know their cost.
//! 4. Reported: the loop's CPU without the snapshot work (a measured half-minute holds
//!    none, one or two copies, by chance of where the rule puts them), the copies' mean
//!    cost apart, and the loop with the copies spread as the rule spaces them.
//! 3. Passes alternate (`--rounds` of each), each on a fresh pipeline; the figures are the
//!    thread's CPU time (`/proc/thread-self/stat`, 10 ms ticks) and its wall time.
//!
//! Left out of both passes: reading and decoding the log, the store's commits, and the
//! snapshot encodings on their own threads. They are real processor costs (the commit and
//! encoding are larger with triggers: the stage's outputs and section), so the ratio
//! printed is of the pipeline's own work, a smaller denominator than the processor's: it
//! overstates the share rather than hiding it.

use crate::config::{Overrides, load_from};
use anyhow::Context;
use std::time::Instant;
use vedetta_core::act::stage::{StageCopy, TriggerStage};
use vedetta_core::intake::{BodyFormat, IntakeContext, IntakeLimits, judge_events, judge_spend};
use vedetta_core::pipeline::{Pipeline, SnapshotCopy};
use vedetta_core::privacy::{PseudonymKey, Pseudonymizer};
use vedetta_core::record::LogRecord;
use vedetta_synth::{SynthRecord, to_ndjson_line};

#[derive(Debug, clap::Args)]
pub struct StageBenchArgs {
    /// The configuration whose triggers and pipeline settings to run (e.g. the file
    /// `scripts/trigger_bench_config.sh` writes).
    #[arg(long)]
    pub(super) config: std::path::PathBuf,
    #[command(flatten)]
    pub(super) traffic: Traffic,
    /// Passes of each kind, alternating.
    #[arg(long, default_value_t = 2)]
    pub(super) rounds: usize,
    /// Print the result as JSON.
    #[arg(long)]
    pub(super) json: bool,
}

/// Event time the traffic starts at (a fixed instant: the records, and so the work, are the
/// same for every run of one build).
const START_MS: i64 = 1_764_928_800_000; // 2025-12-05T10:00:00Z
/// The processor's snapshot interval (its default), here in event time.
const SNAPSHOT_EVERY_MS: i64 = 10_000;
/// A snapshot is made at most once per this many times what the last one cost (the
/// processor's rule).
const SNAPSHOT_COST_FACTOR: f64 = 30.0;
/// The most events a second `--rate` may ask for (the records are held in memory).
const MAX_RATE: f64 = 1_000_000.0;
/// Events per second of event time one generator is asked for (see [`records`]).
const RATE_PER_GENERATOR: f64 = 40_000.0;
/// The most seconds of event time `--fill`, `--seconds` and `--warmup` may each ask for.
const MAX_SECONDS: u64 = 86_400;
/// The most records a read may take.
const MAX_BATCH: usize = 1_000_000;
/// The most records a run may hold.
const MAX_RECORDS: u64 = 30_000_000;

/// The generated traffic a bench runs over (see [`records`]): the flags `bench stage` and
/// `bench processor` share.
#[derive(Debug, Clone, Copy, clap::Args)]
pub(super) struct Traffic {
    /// Events per second of event time.
    #[arg(long, default_value_t = 100_000.0)]
    pub rate: f64,
    /// Seconds of event time generated before the fill and left out: the generator starts
    /// with no session under way, and its rate ramps up over them.
    #[arg(long, default_value_t = 240)]
    pub warmup: u64,
    /// Seconds of event time processed, untimed, before the measured ones in every pass:
    /// the state filled as in a running server, not growing from nothing while measured.
    #[arg(long, default_value_t = 30)]
    pub fill: u64,
    /// Seconds of event time measured.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Events per intake request judged, so records per log batch; `bench stage` also
    /// reads this many records at a time (the processor reads what was appended since).
    #[arg(long, default_value_t = 1_000)]
    pub batch: usize,
}

impl Traffic {
    /// The same flags (the rate bit for bit).
    pub(super) fn same_as(&self, other: &Traffic) -> bool {
        let key = |t: &Traffic| (t.rate.to_bits(), t.warmup, t.fill, t.seconds, t.batch);
        key(self) == key(other)
    }

    /// Refuses, by flag, what the bench cannot hold or pace.
    pub(super) fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.rate.is_finite() && self.rate > 0.0 && self.rate <= MAX_RATE,
            "--rate must be above 0 and at most {MAX_RATE}, got {}",
            self.rate
        );
        anyhow::ensure!(
            (1..=MAX_BATCH).contains(&self.batch),
            "--batch must be between 1 and {MAX_BATCH}, got {}",
            self.batch
        );
        anyhow::ensure!(
            self.fill <= MAX_SECONDS && self.seconds <= MAX_SECONDS && self.warmup <= MAX_SECONDS,
            "--fill, --seconds and --warmup must each be at most {MAX_SECONDS}"
        );
        anyhow::ensure!(
            self.rate * (self.fill as f64 + self.seconds as f64) <= MAX_RECORDS as f64,
            "--rate × (--fill + --seconds) must be at most {MAX_RECORDS} records"
        );
        Ok(())
    }
}

pub fn run(args: &StageBenchArgs) -> anyhow::Result<()> {
    args.traffic.check()?;
    let config = load_from(Some(&args.config), &[], &Overrides::default())?;
    let set = config
        .triggers
        .load_set()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let rules = config.pipeline.rules.clone();
    let regions = crate::geoip::load(config.pipeline.geoip_database.as_deref())?;
    eprintln!(
        "generating {} s of live traffic at {} events/s …",
        args.traffic.seconds, args.traffic.rate
    );
    let started = Instant::now();
    let (records, measured_from) = records(&args.traffic)?;
    eprintln!(
        "{} records ({:.0} a second of event time) in {:.1} s; {} triggers",
        records.len(),
        records.len() as f64 / (args.traffic.fill + args.traffic.seconds).max(1) as f64,
        started.elapsed().as_secs_f64(),
        set.triggers.len()
    );
    let make_stage =
        || TriggerStage::beside(set.clone(), &rules).map_err(|e| anyhow::anyhow!("{e}"));
    let mut alone = Vec::new();
    let mut with = Vec::new();
    let mut outputs = 0;
    let mut users = 0;
    for round in 0..args.rounds {
        let pipeline = Pipeline::new(rules.clone(), regions.clone());
        let pass = run_pass(pipeline, None, &records, measured_from, args.traffic.batch)?;
        eprintln!("round {round}, pipeline alone: {pass}");
        alone.push(pass);
        let pipeline = Pipeline::new(rules.clone(), regions.clone());
        let pass = run_pass(
            pipeline,
            Some(make_stage()?),
            &records,
            measured_from,
            args.traffic.batch,
        )?;
        eprintln!("round {round}, with the trigger stage: {pass}");
        outputs = pass.outputs;
        users = pass.stage_users;
        with.push(pass);
    }
    let mean = |passes: &[Pass], f: fn(&Pass) -> f64| {
        passes.iter().map(f).sum::<f64>() / passes.len().max(1) as f64
    };
    let (cpu_alone, cpu_with) = (mean(&alone, |p| p.cpu_s), mean(&with, |p| p.cpu_s));
    let (wall_alone, wall_with) = (mean(&alone, |p| p.wall_s), mean(&with, |p| p.wall_s));
    let seconds = args.traffic.seconds;
    let spread = |passes: &[Pass]| {
        passes.iter().map(|p| p.with_copies(seconds)).sum::<f64>() / passes.len().max(1) as f64
    };
    let (copies_alone, copies_with) = (spread(&alone), spread(&with));
    let added = |a: f64, w: f64| (w - a) / a.max(1e-9) * 100.0;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "records": records.len() - measured_from,
                "fill_records": measured_from,
                "rate": args.traffic.rate,
                "seconds": args.traffic.seconds,
                "triggers": set.triggers.len(),
                "outputs": outputs,
                "stage_users": users,
                "cpu_s_alone": alone.iter().map(|p| p.cpu_s).collect::<Vec<_>>(),
                "cpu_s_with": with.iter().map(|p| p.cpu_s).collect::<Vec<_>>(),
                "wall_s_alone": alone.iter().map(|p| p.wall_s).collect::<Vec<_>>(),
                "wall_s_with": with.iter().map(|p| p.wall_s).collect::<Vec<_>>(),
                "copy_s_alone": alone.iter().map(|p| p.copy_s).collect::<Vec<_>>(),
                "copy_s_with": with.iter().map(|p| p.copy_s).collect::<Vec<_>>(),
                "encode_s_alone": alone.iter().map(|p| p.encode_s).collect::<Vec<_>>(),
                "encode_s_with": with.iter().map(|p| p.encode_s).collect::<Vec<_>>(),
                "cpu_with_copies_added_percent": added(copies_alone, copies_with),
                "cpu_added_percent": added(cpu_alone, cpu_with),
                "wall_added_percent": added(wall_alone, wall_with),
            })
        );
    } else {
        println!(
            "trigger stage: {} triggers over {} records ({} s of event time at {} events/s, after \
             {measured_from} records of fill): {outputs} outputs staged, {users} users held at \
             the end",
            set.triggers.len(),
            records.len() - measured_from,
            args.traffic.seconds,
            args.traffic.rate
        );
        println!(
            "  loop CPU s (mean of {}; copies and encodings out): pipeline alone {cpu_alone:.2}, \
             with the stage {cpu_with:.2}: {:+.1} %",
            args.rounds,
            added(cpu_alone, cpu_with)
        );
        println!(
            "  wall s: alone {wall_alone:.2}, with {wall_with:.2}: {:+.1} %",
            added(wall_alone, wall_with)
        );
        println!(
            "  with the snapshot copies spread as the processor spaces them (10 s, or 30 × \
             copy + encoding): alone {copies_alone:.2}, with {copies_with:.2}: {:+.1} %",
            added(copies_alone, copies_with)
        );
    }
    Ok(())
}

/// The generator's live traffic, judged into log records (see [`judged_records`]), all in
/// memory; and how many of them arrived in the fill (before the measured seconds).
pub(super) fn records(args: &Traffic) -> anyhow::Result<(Vec<LogRecord>, usize)> {
    let mut records =
        Vec::with_capacity((args.rate * (args.fill + args.seconds) as f64) as usize + 1_000);
    let fill_records = judged_records(args, |judged| {
        records.extend(judged);
        Ok(())
    })?;
    Ok((records, fill_records))
}

/// The generator's live traffic, judged into log records in requests of `batch` events
/// (spend in requests of its own), handed to `sink` request by request in arrival order.
/// One generator makes at most a million sessions a minute (about 47,000 events/s): a
/// higher rate is the traffic of several, each with its own seed (so its own users) and an
/// equal share of the rate, merged in arrival order. Gives how many records arrived in the
/// fill (before the measured seconds).
pub(super) fn judged_records(
    args: &Traffic,
    mut sink: impl FnMut(Vec<LogRecord>) -> anyhow::Result<()>,
) -> anyhow::Result<usize> {
    let (seconds, batch, rate) = (args.fill + args.seconds, args.batch, args.rate);
    let warmup_ms = (args.warmup.min(86_400) as i64) * 1_000;
    let fill_end_ms = START_MS + (args.fill.min(86_400) as i64) * 1_000;
    let mut fill_records = 0;
    let shares = (rate / RATE_PER_GENERATOR).ceil().max(1.0) as u64;
    let mut generators = (0..shares)
        .map(|i| {
            let config = crate::commands::generate::live_config(
                7 + i,
                2_000_000,
                rate / shares as f64,
                START_MS - warmup_ms,
            )?;
            Ok(crate::commands::generate::synth(config)?.peekable())
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let merged = std::iter::from_fn(move || {
        let next = (generators.iter_mut())
            .filter_map(|g| Some((g.peek()?.arrival_ms, g)))
            .min_by_key(|(at, _)| *at)?;
        next.1.next()
    });
    let end_ms = START_MS + (seconds as i64).saturating_mul(1_000);
    let pseudonymizer = Pseudonymizer::new(
        PseudonymKey::from_bytes(1, &[7; 32]).map_err(|e| anyhow::anyhow!("{e}"))?,
        vec![],
    );
    let limits = IntakeLimits {
        max_events_per_request: batch.max(1_000),
        ..IntakeLimits::default()
    };
    let ctx = IntakeContext {
        // After every event time: nothing is refused as from the future.
        now_ms: end_ms + 86_400_000,
        pseudonymizer: &pseudonymizer,
        limits: &limits,
    };
    let mut body = Vec::new();
    let (mut lines, mut spend_body) = (0, false);
    let mut flush = |body: &mut Vec<u8>, lines: &mut usize, spend: bool| -> anyhow::Result<()> {
        if *lines == 0 {
            return Ok(());
        }
        let judge = if spend { judge_spend } else { judge_events };
        let judged = judge(body, BodyFormat::Ndjson, &ctx)
            .map_err(|e| anyhow::anyhow!("the generator's body was refused: {e:?}"))?;
        if let Some(rejected) = judged.rejected.first() {
            anyhow::bail!("the generator's record was refused: {rejected:?}");
        }
        sink(judged.records)?;
        body.clear();
        *lines = 0;
        Ok(())
    };
    let measured = merged
        .skip_while(|a| a.arrival_ms < START_MS)
        .take_while(|a| a.arrival_ms < end_ms);
    for arrival in measured {
        if arrival.arrival_ms < fill_end_ms {
            fill_records += 1;
        }
        let spend = matches!(arrival.record, SynthRecord::Spend(_));
        if spend != spend_body || lines == batch {
            flush(&mut body, &mut lines, spend_body)?;
            spend_body = spend;
        }
        to_ndjson_line(&arrival.record, &mut body);
        lines += 1;
    }
    flush(&mut body, &mut lines, spend_body)?;
    Ok(fill_records)
}

/// One pass's figures.
#[derive(Debug, Clone, Copy)]
struct Pass {
    /// The loop over the measured records, snapshot copies and encodings left out.
    cpu_s: f64,
    wall_s: f64,
    outputs: u64,
    stage_users: usize,
    /// Snapshot copies over the whole pass (fill included), and their mean costs.
    snapshots: u32,
    copy_s: f64,
    encode_s: f64,
}

impl Pass {
    /// The snapshot copies' CPU a second, on the processor's thread, under the processor's
    /// rule (one copy per 10 s, or per 30 times what the last copy and encoding cost).
    fn copies_per_second(&self) -> f64 {
        if self.snapshots == 0 {
            return 0.0;
        }
        let interval_s = (SNAPSHOT_EVERY_MS as f64 / 1e3)
            .max(SNAPSHOT_COST_FACTOR * (self.copy_s + self.encode_s));
        self.copy_s / interval_s
    }

    /// The loop's CPU with the copies spread over the measured seconds.
    fn with_copies(&self, seconds: u64) -> f64 {
        self.cpu_s + self.copies_per_second() * seconds as f64
    }
}

impl std::fmt::Display for Pass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "loop CPU {:.2} s (wall {:.2} s); {} snapshot copies of {:.3} s each (encoding \
             {:.3} s, not counted)",
            self.cpu_s, self.wall_s, self.snapshots, self.copy_s, self.encode_s
        )?;
        if self.stage_users > 0 {
            write!(
                f,
                "; {} outputs staged, {} users held",
                self.outputs, self.stage_users
            )?;
        }
        Ok(())
    }
}

/// The processor's loop over `records` (see the module docs), on this thread, timed from
/// the record at `measured_from`.
fn run_pass(
    mut pipeline: Pipeline,
    mut stage: Option<TriggerStage>,
    records: &[LogRecord],
    measured_from: usize,
    batch: usize,
) -> anyhow::Result<Pass> {
    // Each pass runs on a thread of its own, so the thread's CPU time is the pass's.
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("bench-stage".into())
            .spawn_scoped(scope, move || {
                let mut cpu = thread_cpu_seconds();
                let mut started = Instant::now();
                let mut outputs = 0u64;
                let mut snapshots = 0u32;
                let (mut copies_s, mut encodes_s) = (0.0, 0.0);
                // Snapshot work in the measured part, taken out of the loop's figures.
                let (mut not_counted_cpu, mut not_counted_wall) = (0.0, 0.0);
                let mut next_snapshot: Option<i64> = None;
                let mut spare: Option<(SnapshotCopy, Option<StageCopy>)> = None;
                for (read, chunk) in records.chunks(batch).enumerate() {
                    let base = (read * batch) as u64;
                    if base as usize <= measured_from && measured_from < base as usize + batch {
                        // The fill is done: from here the loop is measured.
                        (cpu, started) = (thread_cpu_seconds(), Instant::now());
                        outputs = 0;
                        (not_counted_cpu, not_counted_wall) = (0.0, 0.0);
                    }
                    for (i, record) in chunk.iter().enumerate() {
                        pipeline.process(base + i as u64, record);
                        if let Some(stage) = &mut stage {
                            stage.after_record(&mut pipeline, record);
                        }
                    }
                    let deltas = match &mut stage {
                        Some(stage) => {
                            outputs += stage.take_staged().len() as u64;
                            stage.take_batch_deltas(&mut pipeline)
                        }
                        None => pipeline.take_deltas(),
                    };
                    std::hint::black_box(deltas);
                    std::hint::black_box(pipeline.take_dormant());
                    let Some(watermark) = pipeline.watermark() else {
                        continue;
                    };
                    let due = *next_snapshot.get_or_insert(watermark + SNAPSHOT_EVERY_MS);
                    if watermark >= due {
                        snapshots += 1;
                        let (copying, copying_cpu) = (Instant::now(), thread_cpu_seconds());
                        let (pipeline_spare, stage_spare) = match spare.take() {
                            Some((p, s)) => (Some(p), s),
                            None => (None, None),
                        };
                        let copy = pipeline.snapshot_copy_reusing(pipeline_spare);
                        let stage_copy = stage.as_ref().map(|s| s.copy_reusing(stage_spare));
                        let copy_s = copying.elapsed().as_secs_f64();
                        // The snapshot thread's part, timed for the next interval.
                        let encoding = Instant::now();
                        let mut bytes = copy.encode().map_err(|e| anyhow::anyhow!("{e}"))?;
                        if let Some(stage_copy) = &stage_copy {
                            stage_copy
                                .encode_section(&mut bytes)
                                .map_err(|e| anyhow::anyhow!("{e}"))?;
                        }
                        drop(std::hint::black_box(bytes));
                        let encode_s = encoding.elapsed().as_secs_f64();
                        copies_s += copy_s;
                        encodes_s += encode_s;
                        not_counted_cpu += thread_cpu_seconds() - copying_cpu;
                        not_counted_wall += copying.elapsed().as_secs_f64();
                        let cost_ms = ((copy_s + encode_s) * SNAPSHOT_COST_FACTOR * 1e3) as i64;
                        next_snapshot = Some(watermark + SNAPSHOT_EVERY_MS.max(cost_ms));
                        // (The processor hands the copies to a thread that encodes them and
                        // gives their memory back for the next.)
                        spare = Some((copy, stage_copy));
                    }
                }
                let wall_s = started.elapsed().as_secs_f64() - not_counted_wall;
                let cpu_s = thread_cpu_seconds() - cpu - not_counted_cpu;
                let stage_users = stage.as_ref().map_or(0, |s| s.stats().users);
                // (Dropping the state, after the figures, is not the loop's work.)
                let per_copy = |total: f64| total / f64::from(snapshots.max(1));
                Ok(Pass {
                    cpu_s,
                    wall_s,
                    outputs,
                    stage_users,
                    snapshots,
                    copy_s: per_copy(copies_s),
                    encode_s: per_copy(encodes_s),
                })
            })
            .context("starting the bench thread")?
            .join()
            .map_err(|_| anyhow::anyhow!("the bench thread panicked"))?
    })
}

/// CPU seconds (user + system) of the calling thread, from `/proc/thread-self/stat`
/// (Linux; 0 elsewhere).
fn thread_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/thread-self/stat") else {
        return 0.0;
    };
    super::stat_cpu_seconds(&stat).map_or(0.0, |(_, seconds)| seconds)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn args(dir: &std::path::Path) -> StageBenchArgs {
        let config = dir.join("vedetta.toml");
        std::fs::write(&config, super::super::TEST_TRIGGERS).unwrap();
        StageBenchArgs {
            config,
            traffic: Traffic {
                rate: 500.0,
                seconds: 20,
                warmup: 120,
                fill: 10,
                batch: 100,
            },
            rounds: 1,
            json: false,
        }
    }

    /// The passes run the loop over every record after the fill, the stage's pass stages
    /// what the triggers decide, and the traffic is the same on every run.
    #[test]
    fn the_passes_measure_the_same_records_with_and_without_the_stage() {
        let dir = tempfile::tempdir().unwrap();
        let args = args(dir.path());
        let (again, again_from) = super::records(&args.traffic).unwrap();
        let (records, measured_from) = super::records(&args.traffic).unwrap();
        assert!(records == again && measured_from == again_from);
        // About 500 a second over 30 s, a third of them in the fill.
        assert!(
            (8_000..25_000).contains(&records.len()),
            "{}",
            records.len()
        );
        let share = measured_from as f64 / records.len() as f64;
        assert!((0.2..0.5).contains(&share), "{share}");

        let config = load_from(Some(&args.config), &[], &Overrides::default()).unwrap();
        let rules = config.pipeline.rules.clone();
        let stage = TriggerStage::beside(config.triggers.load_set().unwrap(), &rules).unwrap();
        let alone = run_pass(
            Pipeline::new(rules.clone(), None),
            None,
            &records,
            measured_from,
            args.traffic.batch,
        )
        .unwrap();
        let with = run_pass(
            Pipeline::new(rules, None),
            Some(stage),
            &records,
            measured_from,
            args.traffic.batch,
        )
        .unwrap();
        assert_eq!((alone.outputs, alone.stage_users), (0, 0));
        assert!(
            with.outputs > 0,
            "the conversion feed sends every conversion"
        );
        assert!(with.stage_users > 0);
        // Every 10 s of event time over the 30 (a small state costs little).
        assert!((2..=3).contains(&alone.snapshots), "{}", alone.snapshots);
        assert_eq!(alone.snapshots, with.snapshots);
        assert!(with.copy_s > 0.0 && with.copies_per_second() > 0.0);
        assert!(with.with_copies(20) > with.cpu_s);
    }

    #[test]
    fn a_stat_line_gives_its_name_and_cpu_seconds() {
        let stat = "1234 (bench (stage) x) S 1 1 1 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 1 0";
        assert_eq!(
            crate::commands::bench::stat_cpu_seconds(stat),
            Some(("bench (stage) x", 4.0))
        );
        assert_eq!(crate::commands::bench::stat_cpu_seconds("1234 (cut"), None);
        assert_eq!(crate::commands::bench::stat_cpu_seconds("1 (x) S 1"), None);
        assert!(thread_cpu_seconds() >= 0.0);
    }

    #[test]
    fn rates_and_sizes_past_the_bounds_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (rate, seconds) in [(0.0, 10), (f64::NAN, 10), (2e6, 10), (1e6, 40)] {
            let mut args = args(dir.path());
            (args.traffic.rate, args.traffic.seconds) = (rate, seconds);
            let error = run(&args).unwrap_err().to_string();
            assert!(error.contains("--rate"), "{error}");
        }
        // A fill past the bound, and counts that would wrap if added as integers.
        for (fill, seconds) in [
            (40, 10),
            (86_400, 86_400),
            (u64::MAX, 10),
            (u64::MAX, u64::MAX),
        ] {
            let mut args = args(dir.path());
            (args.traffic.rate, args.traffic.fill, args.traffic.seconds) = (1e6, fill, seconds);
            let error = run(&args).unwrap_err().to_string();
            assert!(error.contains("--fill"), "{error}");
        }
        for batch in [0, usize::MAX] {
            let mut args = args(dir.path());
            args.traffic.batch = batch;
            let error = run(&args).unwrap_err().to_string();
            assert!(error.contains("--batch"), "{error}");
        }
    }
}
