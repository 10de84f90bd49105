#!/usr/bin/env bash
# Regenerates docs/screenshots/ by running the browser journeys (control/tests/browser.rs)
# with their screenshots written there.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --workspace
BULWARK_SCREENSHOTS="$PWD/docs/screenshots" cargo test --release -p bulwark-control --test browser -- --nocapture
