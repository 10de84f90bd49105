#!/usr/bin/env bash
# Peak memory of the engine under concurrent large messages (40 x 25 MiB, 100 x 50 MiB);
# rewrites the memory section of bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -p bulwark -p bulwark-load
exec /usr/bin/python3 scripts/bench_memory.py --results bench/RESULTS.md "$@"
