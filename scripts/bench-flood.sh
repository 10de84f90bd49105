#!/usr/bin/env bash
# Legitimate mail under a SYN flood and a connection flood from blocked sources: with the
# XDP program, with the engine's refusal only, and with no flood (network namespaces, as
# root). Rewrites the flood section of bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build-xdp.sh
cargo build --release -p bulwark -p bulwark-load -p bulwark-xdp
exec /usr/bin/python3 scripts/bench_flood.py --results bench/RESULTS.md "$@"
