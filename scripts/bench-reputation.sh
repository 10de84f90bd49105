#!/usr/bin/env bash
# The relay with the connection tier (DNS lists, throttles) on and off, from 254 client
# addresses, and the DNS lists' cache hit rate; rewrites the reputation section of
# bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -p bulwark -p bulwark-load
exec /usr/bin/python3 scripts/bench_reputation.py --results bench/RESULTS.md "$@"
