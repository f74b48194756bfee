#!/usr/bin/env bash
# Idempotent machine setup for building and testing synscope on Debian 12 (run as root).
# Fast when everything is already installed: each step checks before it acts.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }

# Debian packages: build (clang/llvm/libelf for BPF tooling), lab and tests (iproute2,
# iptables, tcpdump, tshark, python3 for the raw-packet probe client; prometheus/promtool and
# curl for the metrics tests, which start their own Prometheus; haproxy, nginx and wrk for the
# LB node tests, which start their own instances inside network namespaces).
APT_PACKAGES=(
  build-essential pkg-config clang llvm libelf-dev zlib1g-dev m4 libpcap-dev gcc-multilib
  iproute2 iptables nftables tcpdump tshark bpftool ethtool procps psmisc
  python3 python3-scapy iperf3 curl prometheus systemd logrotate tmux
  haproxy nginx wrk
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  echo 'wireshark-common wireshark-common/install-setuid boolean false' | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts the web servers it just installed as system services; the tests run their
  # own, so the ones this step installed are stopped and disabled (a machine's own are left).
  if [ -d /run/systemd/system ]; then
    for p in "${missing[@]}"; do
      case "$p" in
        haproxy | nginx) systemctl disable --now --quiet "$p" || true ;;
      esac
    done
  fi
fi

command -v rustup >/dev/null || { log "rustup not found: install Rust with rustup first"; exit 1; }
export PATH="$HOME/.cargo/bin:$PATH"

# The BPF crate needs a nightly toolchain with rust-src (for -Z build-std=core).
if ! rustup toolchain list | grep -q '^nightly'; then
  log "installing the nightly toolchain"
  rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed | grep -q '^rust-src'; then
  log "adding rust-src to nightly"
  rustup component add rust-src --toolchain nightly
fi

# bpf-linker must link against the same LLVM as the nightly rustc that emits the bitcode.
# `cargo install bpf-linker` alone fails to find -lLLVM; point LLVM_PREFIX at a directory whose
# lib/libLLVM.so is the nightly toolchain's own shared LLVM.
nightly_lib="$(rustc +nightly --print sysroot)/lib"
llvm_so="$(ls "$nightly_lib"/libLLVM.so.* 2>/dev/null | head -n1 || true)"
[ -n "$llvm_so" ] || { log "no libLLVM.so.* in $nightly_lib"; exit 1; }
llvm_major="$(basename "$llvm_so" | sed -E 's/^libLLVM\.so\.([0-9]+).*/\1/')"
stamp="$HOME/.cargo/bpf-linker.llvm"
if ! command -v bpf-linker >/dev/null || [ "$(cat "$stamp" 2>/dev/null)" != "$llvm_so" ]; then
  log "building bpf-linker against $llvm_so (LLVM $llvm_major)"
  prefix="$HOME/.cache/synscope-llvm"
  mkdir -p "$prefix/lib"
  ln -sf "$llvm_so" "$prefix/lib/libLLVM.so"
  LLVM_PREFIX="$prefix" cargo install bpf-linker --locked --force \
    --no-default-features --features "llvm-$llvm_major"
  echo "$llvm_so" >"$stamp"
fi
# cargo-fuzz drives the fuzz target (fuzz/) with libFuzzer on the nightly toolchain.
if ! command -v cargo-fuzz >/dev/null; then
  log "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
# cargo-deb builds the .deb operators install (tested: installed and removed in CI).
if ! command -v cargo-deb >/dev/null; then
  log "installing cargo-deb"
  cargo install cargo-deb --locked
fi
log "ready"
