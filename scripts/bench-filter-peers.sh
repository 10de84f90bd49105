#!/usr/bin/env bash
# Filtering peers under identical load on this machine: Bulwark as a relay, Bulwark with
# every check on (built-in rules, and again with Debian's SpamAssassin rules), Postfix,
# Postfix + SpamAssassin (spamass-milter, spamd) and Postfix + rspamd (as a milter), 4 KiB
# messages from bulwark-load, 3 runs; DNS for every filter from one local dnsmasq.
# Rewrites the filter-peers section of bench/RESULTS.md and writes bench/filter-peers.json.
# Needs root; leaves nothing running.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# spamd + spamass-milter from Debian; rspamd unpacked beside vectorscan.
DEBIAN_FRONTEND=noninteractive apt-get install -y -q spamd spamc spamass-milter >/dev/null
source scripts/install-rspamd.sh
cargo build --release -p bulwark -p bulwark-load --bin bulwark --bin bulwark-load
RSPAMD_DIR="$RSPAMD_DIR" /usr/bin/python3 scripts/bench_peers.py \
  --peers bulwark,bulwark-filter,bulwark-filter-sa,postfix,postfix-sa,postfix-rspamd \
  --sizes 4096 --clients bulwark-load --messages "${MESSAGES:-1000}" --runs "${RUNS:-3}" \
  --json bench/filter-peers.json --results bench/RESULTS.md --section filter-peers "$@"
