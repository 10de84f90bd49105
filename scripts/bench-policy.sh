#!/usr/bin/env bash
# Policy propagation latency (control API → every engine core), idle and under load;
# rewrites the policy section of bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -p bulwark -p bulwark-load -p bulwark-control
exec /usr/bin/python3 scripts/bench_policy.py --results bench/RESULTS.md "$@"
