#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests, CLI tests and the privileged end-to-end
# tests (network namespaces, veth, XDP; needs root). Sets the machine up first.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --test
export PATH="$HOME/.cargo/bin:$PATH"

# The committed BPF object must be what xdp-prog/ and common/ compile to (a change there never
# ships with a stale object): compiled here with nightly + bpf-linker and compared.
echo "== BPF object"
./scripts/bpf-object.sh --check

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --all-targets

# A short fuzzing run of the whole parse → flow → detect path, seeded with the scenario pcaps
# (longer: SYNSCOPE_FUZZ_SECS=600 ./scripts/test.sh, or `cargo +nightly fuzz run pipeline`).
fuzz_secs="${SYNSCOPE_FUZZ_SECS:-30}"
if [ "$fuzz_secs" -gt 0 ]; then
  echo "== cargo fuzz (${fuzz_secs}s)"
  (cd fuzz && mkdir -p corpus/pipeline &&
    cargo +nightly fuzz run pipeline corpus/pipeline ../inspector/tests/pcaps -- \
      -max_total_time="$fuzz_secs" -max_len=4096 -print_final_stats=1 2>&1 | tail -n 12)
fi
