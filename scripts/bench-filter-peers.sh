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
# spamd + spamass-milter from Debian; rspamd's package needs libhyperscan5, which
# conflicts with the vectorscan Bulwark builds against: it is unpacked into a directory
# of its own and runs with its libraries from there.
DEBIAN_FRONTEND=noninteractive apt-get install -y -q spamd spamc spamass-milter libluajit2-5.1-2 >/dev/null
RSPAMD_DIR=${RSPAMD_DIR:-/opt/bulwark-peers/rspamd/root}
if [ ! -x "$RSPAMD_DIR/usr/bin/rspamd" ]; then
  debs=$(mktemp -d)
  (cd "$debs" && apt-get download rspamd libhyperscan5)
  mkdir -p "$RSPAMD_DIR"
  for d in "$debs"/*.deb; do dpkg -x "$d" "$RSPAMD_DIR"; done
  rm -rf "$debs"
fi
cargo build --release -p bulwark -p bulwark-load --bin bulwark --bin bulwark-load
RSPAMD_DIR="$RSPAMD_DIR" /usr/bin/python3 scripts/bench_peers.py \
  --peers bulwark,bulwark-filter,bulwark-filter-sa,postfix,postfix-sa,postfix-rspamd \
  --sizes 4096 --clients bulwark-load --messages "${MESSAGES:-1000}" --runs "${RUNS:-3}" \
  --json bench/filter-peers.json --results bench/RESULTS.md --section filter-peers "$@"
