#!/usr/bin/env bash
# Runs the cargo-fuzz targets (fuzz/fuzz_targets/) for SECONDS each (default 300), from
# the committed seed corpora (fuzz/corpus/T, read only) into a scratch corpus, and prints
# executions and time per target. Exits non-zero on the first target that finds a crash
# (its input is saved in fuzz/artifacts/T/). scripts/test.sh runs it with a short time.
#   scripts/fuzz.sh [SECONDS] [TARGET ...]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-300}
shift || true
TARGETS=("$@")
if ((${#TARGETS[@]} == 0)); then
  TARGETS=(smtp_session spool_record snapshot directory_csv delivery_replies config inspect_message attachment archive_zip archive_gzip archive_tar archive_bzip2 archive_xz archive_7z)
fi
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: the nightly toolchain is needed (cargo-fuzz uses sanitizers)" >&2
  exit 1
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked --quiet
fi
cd fuzz
echo "== building fuzz targets"
cargo +nightly fuzz build -O
SCRATCH=$(mktemp -d /tmp/bulwark-fuzz.XXXXXX)
trap 'rm -rf "$SCRATCH"' EXIT
printf '%-18s %12s %8s %10s\n' target executions seconds exec/s
for t in "${TARGETS[@]}"; do
  mkdir -p "$SCRATCH/$t" "artifacts/$t"
  log="$SCRATCH/$t.log"
  if ! cargo +nightly fuzz run -O "$t" "$SCRATCH/$t" "corpus/$t" -- \
      -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 \
      -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "fuzz: $t found a failure; the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  printf '%-18s %12s %8s %10s\n' "$t" "${runs:-?}" "${secs:-?}" "${rate:-?}"
done
