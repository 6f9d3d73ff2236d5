#!/usr/bin/env bash
# Runs every test Vedetta has, on a fresh machine or a warm one.
#
# It installs what the tests need (reusing what is already there): Debian's Chromium,
# Prometheus and Alertmanager, aiosmtpd (pinned, in a venv under ~/.cache), the pinned Node packages of the browser test and of the Grafana schema check.
# Then it runs formatting and lint checks, the Grafana check, the whole test suite and
# Schemathesis against a real server (scripts/schemathesis.sh, pinned, in a venv under ~/.cache),
# integration tests included (they start the real server, Prometheus and Chromium). A
# service the tests need that cannot be installed or started is a failure, never a skip.
#
# Usage: scripts/test.sh            # everything
#        scripts/test.sh --quick    # unit tests only (no installs, no lints, no integration)
set -euo pipefail
cd "$(dirname "$0")/.."

quick=false
[ "${1:-}" = "--quick" ] && quick=true

step() { printf '\n== %s ==\n' "$*"; }

step "toolchain"
cargo --version
rustc --version

if $quick; then
  step "unit tests (cargo test --workspace --lib --bins)"
  cargo test --workspace --lib --bins
  exit 0
fi

step "test dependencies"
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
command -v node >/dev/null 2>&1 || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing from Debian: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's prometheus package may start its own service; the tests start theirs on free ports.
export CHROMIUM="${CHROMIUM:-$(command -v chromium)}"
export PROMETHEUS="${PROMETHEUS:-$(command -v prometheus)}"
export ALERTMANAGER="${ALERTMANAGER:-$(command -v prometheus-alertmanager)}"
# The e-mail test's SMTP server: aiosmtpd from PyPI, pinned, in a venv reused across runs
# (like Schemathesis's, scripts/schemathesis.sh).
aiosmtpd_version=1.4.6
aiosmtpd_venv="${XDG_CACHE_HOME:-$HOME/.cache}/vedetta/aiosmtpd-$aiosmtpd_version"
if ! "$aiosmtpd_venv/bin/python" -c "import aiosmtpd, sys; sys.exit(aiosmtpd.__version__ != '$aiosmtpd_version')" 2>/dev/null; then
  rm -rf "$aiosmtpd_venv"
  python3 -m venv "$aiosmtpd_venv"
  "$aiosmtpd_venv/bin/pip" install --quiet "aiosmtpd==$aiosmtpd_version"
fi
export AIOSMTPD_PYTHON="$aiosmtpd_venv/bin/python"
echo "chromium: $("$CHROMIUM" --version 2>/dev/null || echo missing)"
echo "prometheus: $("$PROMETHEUS" --version 2>&1 | head -n 1)"
echo "alertmanager: $("$ALERTMANAGER" --version 2>&1 | head -n 1)"
echo "aiosmtpd: $("$AIOSMTPD_PYTHON" -c 'import aiosmtpd; print(aiosmtpd.__version__)')"
echo "node: $(node --version)"
for dir in tests/browser tests/grafana; do
  if [ -f "$dir/package-lock.json" ]; then
    npm ci --prefix "$dir" --no-audit --no-fund --loglevel=error
  fi
done

step "format (cargo fmt --check)"
cargo fmt --all -- --check

step "lints (cargo clippy --all-targets -- -D warnings)"
cargo clippy --workspace --all-targets -- -D warnings

if [ -f tests/grafana/check.mjs ]; then
  step "Grafana dashboard against Grafana's schema"
  node tests/grafana/check.mjs
fi

step "tests (cargo test --workspace; replays the fuzz corpus, docs/fuzzing.md)"
cargo test --workspace

step "API description against the server (Schemathesis, every check)"
scripts/schemathesis.sh
