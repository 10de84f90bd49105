#!/usr/bin/env bash
# Builds the XDP program (ebpf/) into target/xdp/bulwark-xdp.o. Needs what
# scripts/setup.sh installs for it: Debian's rustc-web and its prebuilt core for
# bpfel-unknown-none, and bpf-linker built against LLVM 22.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/xdp
mkdir -p "$out"
(
    cd ebpf
    RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=../target/ebpf \
        cargo build --release --locked 2>&1
)
cp target/ebpf/bpfel-unknown-none/release/bulwark-xdp "$out/bulwark-xdp.o"
echo "built $out/bulwark-xdp.o"
