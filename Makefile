# Everyday commands. `make help` lists them.
.PHONY: help demo test quick fmt lint bench

help:           ## this list
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

demo:           ## run Vedetta with live demo traffic on http://127.0.0.1:8080
	cargo run --release -- serve --demo

test:           ## everything CI runs
	scripts/test.sh

quick:          ## unit tests only
	scripts/test.sh --quick

fmt:            ## format the code
	cargo fmt --all

lint:           ## clippy as CI runs it
	cargo clippy --workspace --all-targets -- -D warnings

bench:          ## the benchmarks recorded in docs/benchmarks.md
	cargo bench -p vedetta-core
	cargo run --release -- bench intake --seconds 15
