#!/usr/bin/env bash
# Runs Bulwark on the example configuration (examples/bulwark.toml), with a local
# downstream sink standing in for the customer's mail server on 127.0.0.1:2526.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cargo build --release -p bulwark

CONFIG=${CONFIG:-examples/bulwark.toml}
MAILDIR=${MAILDIR:-$PWD/run/mail}
mkdir -p "$MAILDIR"

./target/release/bulwark check-config "$CONFIG"

python3_bin=/usr/bin/python3
"$python3_bin" scripts/sink.py --listen 127.0.0.1:2526 --dir "$MAILDIR" > /dev/null &
SINK=$!
trap 'kill $SINK 2>/dev/null || true' EXIT INT TERM

cat <<INFO

  Bulwark is starting on 127.0.0.1:2525 (metrics on http://127.0.0.1:9425/metrics).
  Mail for example.test is relayed to the sink on 127.0.0.1:2526, which stores it in
  $MAILDIR

  Send a message from another terminal:
      swaks --server 127.0.0.1:2525 --from you@sender.test --to user@example.test
  and see it arrive:
      ls $MAILDIR && cat $MAILDIR/*.eml

  Stop with Ctrl-C.

INFO

./target/release/bulwark serve --config "$CONFIG"
