#!/usr/bin/env bash
# The embedded default run: sets the machine up, builds synscope, and runs `synscope demo`
# (a throw-away network-namespace lab with real kernel TCP traffic; needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet
exec ./target/release/synscope demo "$@"
