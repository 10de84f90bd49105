#!/usr/bin/env bash
# Installs what Bulwark needs to build, run and test on Debian 12. Idempotent: it only
# calls apt-get when a package is missing.
set -euo pipefail

PACKAGES=(
  git pkg-config build-essential curl iproute2 openssl ca-certificates
  postfix                 # smtp-source / smtp-sink clients, and the peer for benchmarks
  swaks libnet-ssleay-perl libio-socket-ssl-perl
  python3 python3-aiosmtpd
  dnsmasq-base            # a real DNS server for the MX tests
  fonts-dejavu-core       # the font of the benchmark charts
  systemd                 # systemd-analyze checks examples/bulwark.service
  libvectorscan-dev       # Hyperscan-compatible regex engine for content inspection
  libpcre2-dev            # PCRE2 for the patterns Hyperscan refuses
  spamassassin            # stock rules to import, and the detection peer (spamd/spamc)
  clamav-daemon           # clamd: the external antivirus engine the tests start offline
  clamav-milter           # the antivirus peer of the relay benchmark (Postfix + clamd)
  chromium chromium-driver # the consoles' browser tests (Selenium drives headless Chromium)
)
# With `xdp`: what the XDP program (ebpf/) builds with. Debian's rustc-web has a prebuilt
# `core` for the BPF target, and bpf-linker is built against LLVM 22.
if [ "${1:-}" = xdp ]; then
  PACKAGES+=(rustc-web libstd-rust-web-dev-bpf llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev
    netsniff-ng)            # trafgen: the SYN flood of the XDP flood test
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  # Postfix is installed for its tools and as a benchmark peer; it must not start a
  # system mail service of its own.
  echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# schemathesis (PyPI) exercises the control API from its OpenAPI document.
if ! python3 -c "import schemathesis" 2>/dev/null; then
  echo "setup: installing schemathesis"
  python3 -m pip install --quiet --disable-pip-version-check schemathesis
fi
# Selenium (PyPI) drives Debian's chromium through chromium-driver in the browser tests.
if ! python3 -c "import selenium" 2>/dev/null; then
  echo "setup: installing selenium"
  python3 -m pip install --quiet --disable-pip-version-check selenium
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo is not installed; install Rust (rustup) first" >&2
  exit 1
fi
for component in rustfmt clippy; do
  rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
done

# bpf-linker links the XDP program; built once (about a minute), then kept in ~/.cargo/bin.
if [ "${1:-}" = xdp ] && ! bpf-linker --version 2>/dev/null | grep -q "^bpf-linker 0\.13"; then
  echo "setup: building bpf-linker 0.13 against LLVM 22"
  LLVM_PREFIX=/usr/lib/llvm-22 cargo install --quiet bpf-linker --version "~0.13" \
    --no-default-features --features llvm-22
fi
