//! Measures generation speed, alone and with NDJSON serialization, on one core.
//!
//! `cargo run --release -p vedetta-synth --example throughput -- [records] [sessions_per_minute]`
//!
//! The population is sized at 100 users per session per minute (at least the default 50k).
//!
//! Prints a few sample lines first so a reader can see what is being generated.

use std::time::Instant;

use vedetta_synth::{Generator, SynthConfig, to_ndjson_line};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let records: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(5_000_000);
    let sessions_per_minute: f64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(120.0);
    let config = SynthConfig {
        sessions_per_minute,
        users: ((sessions_per_minute * 100.0) as u64).max(SynthConfig::default().users),
        ..SynthConfig::default()
    };

    let mut line = Vec::new();
    for arrival in Generator::new(config.clone())?.take(5) {
        line.clear();
        to_ndjson_line(&arrival.record, &mut line);
        print!("{}", String::from_utf8_lossy(&line));
    }

    // Generation only: the records are built, ordered and dropped.
    let mut generator = Generator::new(config.clone())?;
    let started = Instant::now();
    let mut checksum = 0i64;
    let mut most_buffered = 0;
    for _ in 0..records {
        checksum = checksum.wrapping_add(generator.next_arrival().arrival_ms);
        most_buffered = most_buffered.max(generator.buffered());
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "generate:             {records} records in {elapsed:.2} s = {:.2} M records/s (checksum {checksum}, buffer peak {most_buffered})",
        records as f64 / elapsed / 1e6
    );

    // Generation and serialization into one reused buffer, as `vedetta gen` would write it.
    let mut generator = Generator::new(config)?;
    let mut out = Vec::with_capacity(1 << 20);
    let mut bytes = 0usize;
    let started = Instant::now();
    for _ in 0..records {
        to_ndjson_line(&generator.next_arrival().record, &mut out);
        if out.len() > (1 << 20) - 4_096 {
            bytes += out.len();
            out.clear();
        }
    }
    bytes += out.len();
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "generate + serialize: {records} records in {elapsed:.2} s = {:.2} M records/s, {:.0} MB/s, {:.0} bytes/record",
        records as f64 / elapsed / 1e6,
        bytes as f64 / elapsed / 1e6,
        bytes as f64 / records as f64
    );
    println!("{:?}", generator.stats());
    Ok(())
}
