#!/usr/bin/env bash
# Installs rspamd for the benchmark peers, idempotently, into RSPAMD_DIR (default
# /opt/bulwark-peers/rspamd/root). Debian's package needs libhyperscan5, which conflicts
# with the vectorscan Bulwark builds against: it is unpacked into a directory of its own
# and runs with its libraries from there. Sourced by bench-filter-peers.sh and bench-av.sh.
RSPAMD_DIR=${RSPAMD_DIR:-/opt/bulwark-peers/rspamd/root}
DEBIAN_FRONTEND=noninteractive apt-get install -y -q libluajit2-5.1-2 >/dev/null
if [ ! -x "$RSPAMD_DIR/usr/bin/rspamd" ]; then
  debs=$(mktemp -d)
  (cd "$debs" && apt-get download rspamd libhyperscan5)
  mkdir -p "$RSPAMD_DIR"
  for d in "$debs"/*.deb; do dpkg -x "$d" "$RSPAMD_DIR"; done
  rm -rf "$debs"
fi
