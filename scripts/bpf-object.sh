#!/usr/bin/env bash
# Regenerates the committed BPF object (xdp-prog/prebuilt/) from xdp-prog/ and common/: run it
# after changing them, and commit both files. Needs ./scripts/setup.sh --bpf (nightly toolchain
# and bpf-linker). `--check` compiles the sources and fails unless the committed object is what
# they give (what scripts/test.sh runs, so a stale object never ships).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
target="${CARGO_TARGET_DIR:-target}"
if [ "${1:-}" = --check ]; then
  SYNSCOPE_BPF=check cargo build --quiet -p synscope --lib
  echo "bpf-object: xdp-prog/prebuilt/ matches its sources"
  exit 0
fi
SYNSCOPE_BPF=build cargo build --quiet -p synscope --lib
obj="$(ls -t "$target"/debug/build/synscope-*/out/synscope-xdp | head -n1)"
mkdir -p xdp-prog/prebuilt
# Debug info carries build paths and is not loaded (aya reads BTF, which stays).
llvm-objcopy --strip-debug "$obj" xdp-prog/prebuilt/synscope-xdp.o
# The stamp: the sources' hash as the build script computed it, and what compiled them.
hash="$(cat "$(dirname "$obj")/bpf-sources")"
{
  echo "sources: $hash"
  echo "rustc: $(rustc +nightly --version)"
  echo "bpf-linker: $(cargo install --list | sed -n 's/^bpf-linker \(v[^:]*\):$/\1/p')"
} >xdp-prog/prebuilt/SOURCES
cat xdp-prog/prebuilt/SOURCES
ls -l xdp-prog/prebuilt/synscope-xdp.o
