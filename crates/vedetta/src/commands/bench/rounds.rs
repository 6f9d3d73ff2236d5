//! Rounds of `vedetta bench processor` kept across runs, and what they say together.
//!
//! A round's two passes (without and with the trigger set) run back to back, so their
//! ratio leaves out most of the host's drift; the ratios still spread over forty points
//! from one round to the next on a shared host (−11.0 % to +33.5 % in stops 41–42's 36
//! rounds of one build; docs/rounds/), so a bar of "≤ 10 %" wants a mean over dozens of
//! rounds and the interval around it, more than one run of `--rounds` (at most 20, ~5
//! minutes each) gives. `--rounds-file` appends
//! every round, as it ends, to a file of JSON lines, and the run's summary pools every
//! round in the file made by the same setup: this binary (its bytes' SHA-256), the same
//! configuration file (its bytes' SHA-256), the same traffic flags and pass mode. Rounds
//! of another setup are counted and left out, never mixed in; a line that does not read
//! is an error naming it, never skipped.
//!
//! Rounds of `--interleave` (each round's passes cut into slices taken in turn) spread far
//! less: 3.2 points (standard deviation of a round's ratio over 6 control rounds, both
//! passes without triggers) against 8.4 for whole passes back to back. The setup names
//! the protocol, so the two are never pooled.
//!
//! The interval is the mean of the rounds' ratios ± Student's t quantile (two-sided 95 %,
//! `n − 1` degrees of freedom) times its standard error: the rounds are taken as
//! independent draws of one pair's ratio, which the alternating order of the passes
//! within rounds (see the bench's docs) is there to make fair.

use super::processor::Pass;
use crate::clock::SystemClock;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::path::Path;
use vedetta_core::time::Clock;

/// The rounds file's line format (a line of another version is refused, not misread).
/// Format 2 added the protocol's fields to the setup ([`Setup::interleave_seconds`],
/// [`Setup::control`]); a line of format 1 reads as a round of passes whole, one after the
/// other, with triggers.
const FORMAT: u32 = 2;
/// The oldest format read.
const OLDEST_FORMAT: u32 = 1;
/// The longest slice of `--interleave`, in seconds (the flag's bound, and the file's).
pub(super) const MAX_INTERLEAVE_SECONDS: u64 = 3_600;
/// The largest rounds file read (a round's line is under a kilobyte).
const MAX_FILE_BYTES: u64 = 64 << 20;

/// What must be the same for two rounds to be pooled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Setup {
    /// SHA-256 of the running executable's bytes (the same build, not the same version).
    pub binary_sha256: String,
    /// SHA-256 of the configuration file's bytes (triggers and pipeline settings).
    pub config_sha256: String,
    /// The traffic flags.
    pub rate: f64,
    pub warmup: u64,
    pub fill: u64,
    pub seconds: u64,
    pub batch: usize,
    /// Passes in the bench's own process (`--same-process`) rather than one each.
    pub same_process: bool,
    /// The two passes interleaved in slices of this many seconds of traffic
    /// (`--interleave`); none: each pass whole, one after the other.
    #[serde(default)]
    pub interleave_seconds: Option<u64>,
    /// Both passes without triggers (`--control`): an A/A round, the protocol's own
    /// spread and bias.
    #[serde(default)]
    pub control: bool,
}

/// One round: its two passes, as the run measured them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Round {
    pub format: u32,
    pub setup: Setup,
    /// Its index in its run, and when it ended (RFC 3339, UTC).
    pub round: usize,
    pub ended_at: String,
    pub alone: Pass,
    pub with: Pass,
}

impl Round {
    pub fn new(setup: &Setup, round: usize, alone: Pass, with: Pass) -> Self {
        Self {
            format: FORMAT,
            setup: setup.clone(),
            round,
            ended_at: jiff::Timestamp::from_millisecond(SystemClock.now_ms())
                .map_or_else(|_| String::new(), |at| at.to_string()),
            alone,
            with,
        }
    }
}

impl Setup {
    /// This run's setup: the running binary's and `config`'s digests beside the flags.
    pub fn of_this_run(
        config: &Path,
        traffic: &super::stage::Traffic,
        protocol: Protocol,
    ) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("the running executable's path")?;
        Ok(Self {
            binary_sha256: sha256_of_file(&exe)?,
            config_sha256: sha256_of_file(config)?,
            rate: traffic.rate,
            warmup: traffic.warmup,
            fill: traffic.fill,
            seconds: traffic.seconds,
            batch: traffic.batch,
            same_process: protocol.same_process,
            interleave_seconds: protocol.interleave_seconds,
            control: protocol.control,
        })
    }
}

/// How a run's passes are made (see [`Setup`]'s fields of the same names).
#[derive(Debug, Clone, Copy)]
pub(super) struct Protocol {
    pub same_process: bool,
    pub interleave_seconds: Option<u64>,
    pub control: bool,
}

fn sha256_of_file(path: &Path) -> anyhow::Result<String> {
    use sha2::{Digest, Sha256};
    let mut file =
        std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("reading {}", path.display()))?;
    Ok(crate::crypto::hex(&hasher.finalize()))
}

/// Appends `round` to the file as one line (made if missing), flushed to disk: a run cut
/// short keeps the rounds it finished.
pub(super) fn append(path: &Path, round: &Round) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(round)?;
    line.push(b'\n');
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.write_all(&line)
        .and_then(|()| file.sync_data())
        .with_context(|| format!("appending a round to {}", path.display()))
}

/// The rounds of the file made by `setup`, in the file's order, and how many rounds of
/// other setups it holds.
pub(super) fn read_matching(path: &Path, setup: &Setup) -> anyhow::Result<(Vec<Round>, usize)> {
    let (matching, others) = read(path)?
        .into_iter()
        .partition::<Vec<_>, _>(|r| r.setup == *setup);
    Ok((matching, others.len()))
}

/// Every round of the file, in its order. A line that is not a round of this format is an
/// error naming the line; blank lines are allowed.
fn read(path: &Path) -> anyhow::Result<Vec<Round>> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let bytes = file.metadata()?.len();
    anyhow::ensure!(
        bytes <= MAX_FILE_BYTES,
        "{} is {bytes} bytes; a rounds file is at most {MAX_FILE_BYTES}",
        path.display()
    );
    let mut rounds = Vec::new();
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let number = index + 1;
        let line = line.with_context(|| format!("{} line {number}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let format = serde_json::from_str::<FormatOnly>(&line)
            .with_context(|| format!("{} line {number} is not a round", path.display()))?
            .format;
        anyhow::ensure!(
            (OLDEST_FORMAT..=FORMAT).contains(&format),
            "{} line {number} is a round of format {format}; this build reads formats \
             {OLDEST_FORMAT} to {FORMAT}",
            path.display()
        );
        let round: Round = serde_json::from_str(&line)
            .with_context(|| format!("{} line {number} is not a round", path.display()))?;
        anyhow::ensure!(
            format >= 2 || (round.setup.interleave_seconds.is_none() && !round.setup.control),
            "{} line {number}: a round of format 1 has no interleaving and no control",
            path.display()
        );
        anyhow::ensure!(
            (round.setup.interleave_seconds)
                .is_none_or(|s| (1..=MAX_INTERLEAVE_SECONDS).contains(&s)),
            "{} line {number}: interleave_seconds must be 1 to {MAX_INTERLEAVE_SECONDS}",
            path.display()
        );
        let positive = |p: &Pass| {
            [p.cpu_s, p.processor_thread_s]
                .iter()
                .all(|s| s.is_finite() && *s > 0.0)
                && (0.0..p.processor_thread_s).contains(&p.processor_thread_system_s)
        };
        anyhow::ensure!(
            positive(&round.alone) && positive(&round.with),
            "{} line {number}: a pass's CPU seconds must be positive, its kernel part less \
             than its thread's",
            path.display()
        );
        // What is printed from the file is checked first: digests as this build writes
        // them, a time that reads as one (no control characters reach the terminal).
        let digest = |d: &str| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit());
        anyhow::ensure!(
            digest(&round.setup.binary_sha256) && digest(&round.setup.config_sha256),
            "{} line {number}: a setup's digests must be 64 hexadecimal digits",
            path.display()
        );
        anyhow::ensure!(
            round.ended_at.parse::<jiff::Timestamp>().is_ok(),
            "{} line {number}: ended_at must be an RFC 3339 time",
            path.display()
        );
        rounds.push(round);
    }
    Ok(rounds)
}

/// `rounds` grouped by setup, in the order each setup first appears.
fn by_setup(rounds: Vec<Round>) -> Vec<(Setup, Vec<Round>)> {
    let mut setups: Vec<(Setup, Vec<Round>)> = Vec::new();
    for round in rounds {
        match setups.iter_mut().find(|(setup, _)| *setup == round.setup) {
            Some((_, kept)) => kept.push(round),
            None => setups.push((round.setup.clone(), vec![round])),
        }
    }
    setups
}

/// `vedetta bench rounds`: what every setup's rounds in a rounds file say together.
#[derive(Debug, clap::Args)]
pub struct RoundsArgs {
    /// A file `bench processor --rounds-file` wrote.
    file: std::path::PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &RoundsArgs) -> anyhow::Result<()> {
    let setups = by_setup(read(&args.file)?);
    anyhow::ensure!(
        !setups.is_empty(),
        "{} holds no rounds",
        args.file.display()
    );
    let mut json = Vec::new();
    for (setup, rounds) in &setups {
        let ratios = Ratios::of(rounds.iter().map(|r| (&r.alone, &r.with)));
        let (first, last) = (&rounds[0].ended_at, &rounds[rounds.len() - 1].ended_at);
        if args.json {
            json.push(serde_json::json!({
                "setup": setup,
                "rounds": rounds.len(),
                "first_ended_at": first,
                "last_ended_at": last,
                "intervals": ratios.json(),
            }));
            continue;
        }
        println!(
            "{} rounds ({first} … {last}) of binary {}, configuration {}: {} events/s, {} s \
             measured after {} s of fill ({} s of warm-up, batches of {}){}{}{}",
            rounds.len(),
            &setup.binary_sha256[..setup.binary_sha256.len().min(12)],
            &setup.config_sha256[..setup.config_sha256.len().min(12)],
            setup.rate,
            setup.seconds,
            setup.fill,
            setup.warmup,
            setup.batch,
            if setup.same_process {
                ", passes in one process"
            } else {
                ""
            },
            setup
                .interleave_seconds
                .map(|s| format!(", passes interleaved by {s} s"))
                .unwrap_or_default(),
            if setup.control {
                ", control: no triggers in either pass"
            } else {
                ""
            }
        );
        for line in ratios.lines() {
            println!("  {line}");
        }
    }
    if args.json {
        println!("{}", serde_json::Value::Array(json));
    }
    Ok(())
}

#[derive(Deserialize)]
struct FormatOnly {
    format: u32,
}

/// A mean with its standard error and two-sided 95 % interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(super) struct Interval {
    pub n: usize,
    pub mean: f64,
    pub standard_error: f64,
    pub low: f64,
    pub high: f64,
}

impl Interval {
    /// Of `values` (at least two, else none: one value has no spread to speak of).
    pub fn of(values: &[f64]) -> Option<Self> {
        let n = values.len();
        if n < 2 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let standard_error = (variance / n as f64).sqrt();
        let half = t_quantile_975(n - 1) * standard_error;
        Some(Self {
            n,
            mean,
            standard_error,
            low: mean - half,
            high: mean + half,
        })
    }
}

impl std::fmt::Display for Interval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:+.1} % ± {:.1} % (95 % interval {:+.1} … {:+.1} %, {} rounds)",
            self.mean, self.standard_error, self.low, self.high, self.n
        )
    }
}

/// Student's t quantile 0.975 for `df` degrees of freedom: the table's values to 30, then
/// linear in 1/df between 30, 40, 60, 120 and infinity (accurate to the third decimal).
fn t_quantile_975(df: usize) -> f64 {
    const TO_30: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    // (df, t) past the table, the last the normal quantile.
    const BEYOND: [(f64, f64); 4] = [
        (40.0, 2.021),
        (60.0, 2.000),
        (120.0, 1.980),
        (f64::INFINITY, 1.960),
    ];
    match df {
        0 => f64::INFINITY,
        1..=30 => TO_30[df - 1],
        _ => {
            let inverse = 1.0 / df as f64;
            let mut upper = (1.0 / 30.0, TO_30[29]);
            for (at, t) in BEYOND {
                let lower = (1.0 / at, t);
                if inverse >= lower.0 {
                    let share = (inverse - lower.0) / (upper.0 - lower.0);
                    return lower.1 + share * (upper.1 - lower.1);
                }
                upper = lower;
            }
            1.960 // 1/df is never below 1/infinity
        }
    }
}

/// The rounds' ratios, in per cent added by the trigger set: of the processor's threads
/// together (snapshot threads included), of the processor thread alone, and of its user
/// time alone (the kernel's part moves with the host's memory).
pub(super) struct Ratios {
    pub threads: Vec<f64>,
    pub thread: Vec<f64>,
    pub user: Vec<f64>,
}

impl Ratios {
    pub fn of<'a>(pairs: impl IntoIterator<Item = (&'a Pass, &'a Pass)>) -> Self {
        let added = |a: f64, w: f64| (w - a) / a.max(1e-9) * 100.0;
        let mut ratios = Self {
            threads: Vec::new(),
            thread: Vec::new(),
            user: Vec::new(),
        };
        for (alone, with) in pairs {
            ratios.threads.push(added(alone.cpu_s, with.cpu_s));
            let thread = |p: &Pass| p.processor_thread_s;
            ratios.thread.push(added(thread(alone), thread(with)));
            let user = |p: &Pass| p.processor_thread_s - p.processor_thread_system_s;
            ratios.user.push(added(user(alone), user(with)));
        }
        ratios
    }

    /// The three intervals, as lines of the summary (none for fewer than two rounds).
    pub fn lines(&self) -> Vec<String> {
        let line = |what: &str, values: &[f64]| {
            Interval::of(values).map(|interval| format!("{what}: {interval}"))
        };
        [
            line("processor threads", &self.threads),
            line("the processor thread alone", &self.thread),
            line("its user time alone", &self.user),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "processor_threads": Interval::of(&self.threads),
            "processor_thread": Interval::of(&self.thread),
            "processor_thread_user": Interval::of(&self.user),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pass(thread: f64, system: f64, snapshot: f64) -> Pass {
        Pass {
            cpu_s: thread + snapshot,
            processor_thread_s: thread,
            processor_thread_system_s: system,
            other_threads_s: 0.0,
            passing_threads_s: snapshot,
            wall_s: 90.0,
            lag_s: 0.0,
            staged_users: 0,
            snapshot_offset: 0,
        }
    }

    fn setup(config: &str) -> Setup {
        Setup {
            binary_sha256: "b".repeat(64),
            config_sha256: config.to_string(),
            rate: 100_000.0,
            warmup: 240,
            fill: 180,
            seconds: 90,
            batch: 1_000,
            same_process: false,
            interleave_seconds: None,
            control: false,
        }
    }

    #[test]
    fn an_interval_is_the_mean_plus_or_minus_t_standard_errors() {
        let interval = Interval::of(&[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
        assert_eq!((interval.n, interval.mean), (5, 3.0));
        // Sample standard deviation √2.5, over √5: √0.5.
        assert!((interval.standard_error - 0.5f64.sqrt()).abs() < 1e-12);
        // t(0.975, 4) = 2.776.
        assert!((interval.high - (3.0 + 2.776 * 0.5f64.sqrt())).abs() < 1e-9);
        assert!((interval.low - (3.0 - 2.776 * 0.5f64.sqrt())).abs() < 1e-9);
        assert_eq!(Interval::of(&[7.0]), None);
        assert_eq!(Interval::of(&[]), None);
    }

    #[test]
    fn t_quantiles_match_the_table_between_its_rows() {
        // Published values of t(0.975, df).
        for (df, t) in [
            (1, 12.706),
            (17, 2.110),
            (30, 2.042),
            (35, 2.030),
            (40, 2.021),
            (50, 2.009),
            (60, 2.000),
            (100, 1.984),
            (120, 1.980),
            (1_000, 1.962),
        ] {
            let got = t_quantile_975(df);
            assert!((got - t).abs() < 0.002, "df {df}: {got} against {t}");
        }
        assert!(t_quantile_975(usize::MAX) >= 1.960);
        assert!(t_quantile_975(0).is_infinite());
    }

    #[test]
    fn rounds_of_the_same_setup_pool_and_others_are_counted_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rounds.ndjson");
        let ours = setup(&"c".repeat(64));
        let other = setup(&"d".repeat(64));
        append(
            &path,
            &Round::new(&ours, 0, pass(30.0, 6.0, 5.0), pass(33.0, 6.0, 5.0)),
        )
        .unwrap();
        append(
            &path,
            &Round::new(&other, 0, pass(30.0, 6.0, 5.0), pass(60.0, 6.0, 5.0)),
        )
        .unwrap();
        append(
            &path,
            &Round::new(&ours, 1, pass(40.0, 8.0, 5.0), pass(42.0, 8.0, 5.0)),
        )
        .unwrap();
        let (rounds, others) = read_matching(&path, &ours).unwrap();
        assert_eq!(others, 1);
        let setups = by_setup(read(&path).unwrap());
        let grouped: Vec<_> = (setups.iter())
            .map(|(setup, rounds)| (setup.config_sha256.as_str(), rounds.len()))
            .collect();
        assert_eq!(
            grouped,
            [
                (ours.config_sha256.as_str(), 2),
                (other.config_sha256.as_str(), 1)
            ]
        );
        assert_eq!(rounds.iter().map(|r| r.round).collect::<Vec<_>>(), [0, 1]);
        let ratios = Ratios::of(rounds.iter().map(|r| (&r.alone, &r.with)));
        // Threads: 35 → 38 and 45 → 47; the thread: 30 → 33 and 40 → 42; its user time:
        // 24 → 27 and 32 → 34.
        let close = |got: &[f64], want: [f64; 2]| {
            got.len() == 2 && got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-9)
        };
        assert!(close(&ratios.threads, [300.0 / 35.0, 200.0 / 45.0]));
        assert!(close(&ratios.thread, [10.0, 5.0]));
        assert!(close(&ratios.user, [12.5, 6.25]));
        assert_eq!(ratios.lines().len(), 3);
        assert!(ratios.lines()[1].starts_with("the processor thread alone: +7.5 %"));
    }

    #[test]
    fn a_line_that_does_not_read_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rounds.ndjson");
        let ours = setup(&"c".repeat(64));
        append(
            &path,
            &Round::new(&ours, 0, pass(30.0, 6.0, 5.0), pass(33.0, 6.0, 5.0)),
        )
        .unwrap();
        let good = std::fs::read_to_string(&path).unwrap();
        let newer = good.replacen("\"format\":2", "\"format\":3", 1);
        // A line as stops 41-42 wrote them (format 1, no protocol fields) still reads.
        let older = (good.replacen("\"format\":2", "\"format\":1", 1)).replacen(
            ",\"interleave_seconds\":null,\"control\":false",
            "",
            1,
        );
        assert_ne!(older, good);
        std::fs::write(&path, &older).unwrap();
        assert_eq!(read_matching(&path, &ours).unwrap().0.len(), 1);
        let older_interleaved = good.replacen("\"format\":2", "\"format\":1", 1).replacen(
            "\"interleave_seconds\":null",
            "\"interleave_seconds\":10",
            1,
        );
        let cut = &good[..good.len() / 2];
        let bare = good.replacen("\"cpu_s\":35.0,", "", 1);
        let idle = good.replacen("\"cpu_s\":35.0,", "\"cpu_s\":0.0,", 1);
        let all_kernel = good.replacen(
            "\"processor_thread_system_s\":6.0",
            "\"processor_thread_system_s\":30.0",
            1,
        );
        for (bad, why) in [
            (format!("{good}{cut}\n"), "line 2 is not a round"),
            (format!("{good}\n{newer}"), "line 3 is a round of format 3"),
            (
                older_interleaved,
                "line 1: a round of format 1 has no interleaving and no control",
            ),
            (
                good.replacen("\"interleave_seconds\":null", "\"interleave_seconds\":0", 1),
                "line 1: interleave_seconds must be 1 to 3600",
            ),
            (
                good.replacen(
                    "\"interleave_seconds\":null",
                    "\"interleave_seconds\":3601",
                    1,
                ),
                "line 1: interleave_seconds must be 1 to 3600",
            ),
            (bare, "line 1 is not a round"),
            (idle, "line 1: a pass's CPU seconds must be positive"),
            (
                good.replacen("\"binary_sha256\":\"bb", "\"binary_sha256\":\"\u{e9}", 1),
                "line 1: a setup's digests must be 64 hexadecimal digits",
            ),
            (
                good.replacen("\"ended_at\":\"", "\"ended_at\":\"\\u001b[31m", 1),
                "line 1: ended_at must be an RFC 3339 time",
            ),
            (all_kernel, "line 1: a pass's CPU seconds must be positive"),
            ("[1, 2]\n".to_string(), "line 1 is not a round"),
        ] {
            std::fs::write(&path, bad).unwrap();
            let error = format!("{:#}", read_matching(&path, &ours).unwrap_err());
            assert!(error.contains(why), "{error}");
        }
        std::fs::write(&path, format!("{good}\n\n")).unwrap();
        assert_eq!(read_matching(&path, &ours).unwrap().0.len(), 1);
        std::fs::write(&path, "\n").unwrap();
        let args = RoundsArgs {
            file: path,
            json: false,
        };
        let error = run(&args).unwrap_err().to_string();
        assert!(error.contains("holds no rounds"), "{error}");
    }
}
