#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests and the integration tests that drive
# the real binary with swaks, smtplib, smtp-source, aiosmtpd and dnsmasq.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --release --all-targets -- -D warnings
echo "== the XDP program"
bash scripts/build-xdp.sh
echo "== cargo test"
cargo test --release --workspace
echo "== fuzz targets, ${FUZZ_SECONDS:-20} s each (scripts/fuzz.sh runs them longer)"
bash scripts/fuzz.sh "${FUZZ_SECONDS:-20}"
