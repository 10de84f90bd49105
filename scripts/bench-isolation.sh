#!/usr/bin/env bash
# Latency of 4 KiB messages while large messages are scanned on the same core; rewrites
# the isolation section of bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -p bulwark -p bulwark-load
exec /usr/bin/python3 scripts/bench_isolation.py --results bench/RESULTS.md "$@"
