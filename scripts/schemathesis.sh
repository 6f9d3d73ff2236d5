#!/usr/bin/env bash
# Runs Schemathesis (a third-party OpenAPI conformance fuzzer) with every check against a
# real `vedetta serve`: API key configured, free loopback port, data in a temp dir.
# Installs the pinned Schemathesis into a venv under ~/.cache (reused when present). Fails
# when Schemathesis cannot be installed or finds any failure.
#
# Usage: scripts/schemathesis.sh [path/to/vedetta]   (default: builds the debug binary)
set -euo pipefail
cd "$(dirname "$0")/.."

version=4.32.5
venv="${XDG_CACHE_HOME:-$HOME/.cache}/vedetta/schemathesis-$version"
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$version"; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "schemathesis==$version"
fi
"$venv/bin/schemathesis" --version

binary="${1:-}"
if [ -z "$binary" ]; then
  cargo build -p vedetta
  binary="${CARGO_TARGET_DIR:-target}/debug/vedetta"
fi
work="$(mktemp -d)"
key="schemathesis-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
VEDETTA_INGEST__API_KEYS="$key" VEDETTA_LOG=warn,vedetta::server=info \
  "$binary" serve --data-dir "$work/data" --listen 127.0.0.1:0 >"$work/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -rf "$work"' EXIT
port=""
for _ in $(seq 100); do
  port="$(grep -o 'listening address=127.0.0.1:[0-9]*' "$work/server.log" | sed 's/.*://' || true)"
  [ -n "$port" ] && break
  kill -0 "$server" 2>/dev/null || { cat "$work/server.log"; exit 1; }
  sleep 0.1
done
[ -n "$port" ] || { echo "the server did not start"; cat "$work/server.log"; exit 1; }

# One worker: with two, Hypothesis parses lambda sources with `ast.parse` on two threads at
# once, and CPython 3.11 fails that race with "SystemError: AST constructor recursion depth
# mismatch" (its recursion-depth check is not thread-safe), a Runtime Error that has
# nothing to do with the API.
"$venv/bin/schemathesis" --config-file tests/schemathesis/schemathesis.toml run \
  "http://127.0.0.1:$port/v1/openapi.json" \
  --checks all \
  -H "Authorization: Bearer $key" \
  --max-examples 60 \
  --seed 8 \
  --request-timeout 10 \
  --workers 1 \
  --phases examples,coverage,fuzzing
