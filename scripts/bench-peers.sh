#!/usr/bin/env bash
# Bulwark, Postfix and Haraka under identical load on this machine: 1, 4 and 64 KiB
# messages, 3 runs each, with bulwark-load and smtp-source as clients. Prints medians
# and ratios, rewrites the peers section of bench/RESULTS.md, writes bench/peers.json
# and the chart bench/peers.png. Needs root; leaves nothing running.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
HARAKA_DIR=${HARAKA_DIR:-/opt/bulwark-peers/haraka}
if [ ! -x "$HARAKA_DIR/node_modules/.bin/haraka" ]; then
  command -v npm >/dev/null || { echo "bench-peers: npm is needed for Haraka" >&2; exit 1; }
  mkdir -p "$HARAKA_DIR"
  (cd "$HARAKA_DIR" && npm install --no-audit --no-fund --loglevel=error Haraka@3)
fi
cargo build --release -p bulwark -p bulwark-load -p bulwark-bench --bin bulwark --bin bulwark-load --bin bench-chart
HARAKA_DIR="$HARAKA_DIR" /usr/bin/python3 scripts/bench_peers.py --runs "${RUNS:-3}" \
  --json bench/peers.json --results bench/RESULTS.md "$@"
./target/release/bench-chart bench/peers.json bench/peers.png
