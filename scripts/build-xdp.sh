#!/usr/bin/env bash
# Builds the XDP program (ebpf/) into target/xdp/bulwark-xdp.o, first installing what it
# builds with (`scripts/setup.sh xdp`: Debian's rustc-web and its prebuilt core for
# bpfel-unknown-none, and bpf-linker built against LLVM 22, once).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh xdp
out=target/xdp
mkdir -p "$out"
(
    cd ebpf
    RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=../target/ebpf \
        cargo build --release --locked 2>&1
)
cp target/ebpf/bpfel-unknown-none/release/bulwark-xdp "$out/bulwark-xdp.o"
echo "built $out/bulwark-xdp.o"
