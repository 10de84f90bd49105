#!/usr/bin/env bash
# Restart with 100,000 queued messages: time to accept mail again, to read the spool
# back and to deliver it; rewrites the restart section of bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -p bulwark -p bulwark-load
exec /usr/bin/python3 scripts/bench_restart.py --results bench/RESULTS.md "$@"
