#!/usr/bin/env bash
# The relay figure of record: Bulwark vs Postfix, smtp-source -s 50 -m 20000 -l 4096,
# 3 runs, both relaying to the same sink. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -p bulwark -p bulwark-load
exec /usr/bin/python3 scripts/bench_peers.py --peers bulwark,postfix --clients smtp-source \
  --results bench/RESULTS.md --section relay \
  --sizes 4096 --messages 20000 --connections 50 --runs "${RUNS:-3}" "$@"
