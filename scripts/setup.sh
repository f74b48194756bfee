#!/usr/bin/env bash
# Idempotent machine setup for synscope on Debian 12 (run as root). Installs what the calling
# command needs, and no more; fast when everything is already there (each step checks first).
#
#   ./scripts/setup.sh          build and demo: the C build chain (xsk-rs builds libbpf and
#                               libxdp) and the lab's tools. The BPF object comes compiled from
#                               xdp-prog/prebuilt/, so no nightly toolchain and no bpf-linker.
#   ./scripts/setup.sh --bpf    also the nightly toolchain (rust-src) and bpf-linker: what
#                               compiling xdp-prog/ needs (scripts/bpf-object.sh).
#   ./scripts/setup.sh --test   everything scripts/test.sh runs: the above, the test tools
#                               (tcpdump, tshark, Prometheus, HAProxy, nginx, wrk, ...),
#                               cargo-fuzz and cargo-deb.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }

mode="${1:-}"
case "$mode" in
  "" | --bpf | --test) ;;
  *) log "usage: $0 [--bpf | --test]"; exit 2 ;;
esac

# Debian packages. Build: the C chain for libbpf/libxdp (xsk-rs). Demo: the lab (iproute2,
# iptables, python3 for the raw-packet probe client).
APT_PACKAGES=(
  build-essential pkg-config clang llvm libelf-dev zlib1g-dev m4 libpcap-dev gcc-multilib
  iproute2 iptables procps python3
)
# Tests: tcpdump and tshark to compare with, scapy for crafted packets, Prometheus/promtool and
# curl for the metrics tests (they start their own Prometheus), HAProxy, nginx and wrk for the
# LB node tests (their own instances inside network namespaces), the packaging test's systemd
# and logrotate.
if [ "$mode" = --test ]; then
  APT_PACKAGES+=(
    nftables tcpdump tshark bpftool ethtool psmisc python3-scapy iperf3 curl prometheus
    systemd logrotate tmux haproxy nginx wrk
  )
fi
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

if [ -z "$mode" ]; then
  log "ready (build and demo; ./scripts/setup.sh --bpf adds what compiling xdp-prog/ needs)"
  exit 0
fi

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
if [ "$mode" = --bpf ]; then
  log "ready (build, demo and xdp-prog/)"
  exit 0
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
log "ready (everything scripts/test.sh runs)"
