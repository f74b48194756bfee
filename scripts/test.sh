#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests, CLI tests and the privileged end-to-end
# tests (network namespaces, veth, XDP; needs root). Sets the machine up first.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --all-targets
