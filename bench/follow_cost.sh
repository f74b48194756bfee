#!/usr/bin/env bash
# What inline mode costs traffic it does not select: iperf3 TCP throughput through a netns veth
# pair with synscope not attached, attached with the follow window off (--follow 0) and on
# (default 4), interleaved, N rounds. Needs root and a release build (cargo build --release).
# Usage: bench/follow_cost.sh [rounds] [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"; secs="${2:-5}"
bin=./target/release/synscope
[ -x "$bin" ] || { echo "run cargo build --release first" >&2; exit 1; }
c=synscope-fc-c; s=synscope-fc-s
cleanup() { ip netns del "$c" 2>/dev/null || true; ip netns del "$s" 2>/dev/null || true; }
trap cleanup EXIT
cleanup
ip netns add "$c"; ip netns add "$s"
ip link add fcc netns "$c" type veth peer name fcs netns "$s"
ip -n "$c" addr add 192.0.2.1/24 dev fcc; ip -n "$s" addr add 192.0.2.2/24 dev fcs
ip -n "$c" link set fcc up; ip -n "$s" link set fcs up
ip -n "$c" link set lo up; ip -n "$s" link set lo up
ip netns exec "$s" iperf3 -s -D -1 >/dev/null 2>&1 || true
run() { # prints Gbit/s of one iperf3 run
  ip netns exec "$s" iperf3 -s -D -1 >/dev/null 2>&1
  sleep 0.3
  ip netns exec "$c" iperf3 -c 192.0.2.2 -t "$secs" -J |
    python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))'
}
declare -A sum
for mode in none follow0 follow4; do sum[$mode]=0; done
for r in $(seq "$rounds"); do
  for mode in none follow0 follow4; do
    pid=""
    case $mode in
      follow0) ip netns exec "$s" "$bin" live --iface fcs --follow 0 >/dev/null 2>&1 & pid=$! ;;
      follow4) ip netns exec "$s" "$bin" live --iface fcs --follow 4 >/dev/null 2>&1 & pid=$! ;;
    esac
    [ -n "$pid" ] && sleep 1.5
    g=$(run)
    [ -n "$pid" ] && { kill -INT "$pid"; wait "$pid" || true; }
    echo "round $r $mode $g Gbit/s"
    sum[$mode]=$(python3 -c "print(${sum[$mode]} + $g)")
  done
done
n=$rounds
base=$(python3 -c "print(${sum[none]} / $n)")
echo
echo "| synscope | mean Gbit/s ($rounds × ${secs}s, interleaved) | ratio to not attached |"
echo "|---|---|---|"
for mode in none follow0 follow4; do
  m=$(python3 -c "print(${sum[$mode]} / $n)")
  printf '| %s | %.2f | %.3f |\n' "$mode" "$m" "$(python3 -c "print($m / $base)")"
done
