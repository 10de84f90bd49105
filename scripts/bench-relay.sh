#!/usr/bin/env bash
# Bulwark vs Postfix relaying 4 KiB messages over 50 connections to the same smtp-sink
# (smtp-source -s 50 -m 20000 -l 4096), 3 runs, medians and ratios. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -p bulwark
exec /usr/bin/python3 scripts/bench_relay.py --runs "${RUNS:-3}" "$@"
