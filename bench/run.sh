#!/usr/bin/env bash
# Every benchmark of bench/RESULTS.md in one command (root; ~15 minutes on 2 vCPUs). Prints the
# tables; nothing else should run on the machine meanwhile (the VM's noise is already ±30%).
#   bench/run.sh [capture-seconds-per-step] [rounds-at-max]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-2}"; rounds="${2:-3}"
cargo build --release --quiet
b=./target/release/synscope-bench
echo "# synscope benchmarks — $(date -u +%Y-%m-%dT%H:%MZ), $(uname -r), $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo; echo "## engine (one core, in memory)"; $b engine
echo; echo "## worker path (ring records: decode, evidence, engine)"; $b worker
echo; echo "## hash flooding (crafted keys vs random, p99 insert)"; $b hashflood
echo; echo "## pcap (offline, vs tshark and tcpdump)"; $b pcap
echo; echo "## capture (veth, stepped rates, ceilings, tcpdump)"; $b capture "$secs" 100000,200000,400000 "$rounds"
echo; echo "## connection rate (host overhead of inline mode)"; $b connrate 8 3
echo; echo "## throughput (host overhead of inline mode, iperf3)"; bench/follow_cost.sh 3 5
