//! Replays the fuzz corpus on stable, as part of `cargo test --workspace` (and so of
//! `scripts/test.sh`): every file of `fuzz/corpus/<target>/` and every regression kept in
//! `fuzz/artifacts/<target>/` goes through the same function the fuzzer calls. A finding
//! fixed once stays fixed without nightly or a fuzzing run.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use vedetta_fuzz::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The files of a directory, sorted; none when it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("a readable directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// Runs every file through the target; returns the files that broke an invariant.
fn replay(target: fn(&[u8]), files: &[PathBuf]) -> Vec<String> {
    let mut failures = Vec::new();
    for file in files {
        let bytes = std::fs::read(file).expect("a readable corpus file");
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| target(&bytes))) {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("{}: {message}", file.display()));
        }
    }
    failures
}

#[test]
fn every_corpus_file_and_regression_keeps_its_invariants() {
    let mut failures = Vec::new();
    for (name, target) in TARGETS {
        let corpus = files(&fuzz_dir().join("corpus").join(name));
        assert!(
            !corpus.is_empty(),
            "fuzz/corpus/{name} is empty: every target keeps seeds"
        );
        failures.extend(replay(target, &corpus));
        let artifacts = files(&fuzz_dir().join("artifacts").join(name));
        failures.extend(replay(target, &artifacts));
        eprintln!(
            "{name}: {} corpus files, {} regressions",
            corpus.len(),
            artifacts.len()
        );
    }
    assert!(
        failures.is_empty(),
        "broken invariants:\n{}",
        failures.join("\n")
    );
}

/// The harness and the list agree: each target has its cargo-fuzz entry point.
#[test]
fn every_target_has_a_cargo_fuzz_entry_point() {
    for (name, _) in TARGETS {
        let entry = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        let source =
            std::fs::read_to_string(&entry).unwrap_or_else(|e| panic!("{}: {e}", entry.display()));
        assert!(
            source.contains("fuzz_target!"),
            "{} is no fuzz target",
            entry.display()
        );
    }
}
