#!/usr/bin/env bash
# The embedded default run: sets the machine up, builds synscope, and runs `synscope demo`
# (a throw-away network-namespace lab with real kernel TCP traffic; needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
# The quickest build that runs the demo: the dev profile, without tap mode (xsk-rs compiles
# libbpf and libxdp from C): ~80 s cold instead of ~140 s. The binary to deploy is
# `cargo build --release` (or the .deb).
cargo build --quiet -p synscope --bin synscope --no-default-features
exec ./target/debug/synscope demo "$@"
