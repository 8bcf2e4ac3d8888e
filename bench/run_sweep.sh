#!/bin/sh
# bench/run_sweep.sh: relay at increasing rates against a fresh one-loop
# server per rate, then a latency-vs-rate chart.
#
#   bench/run_sweep.sh [IMGW] [BENCH] [OUT.jsonl] [RATES]
#   e.g. bench/run_sweep.sh build/imgw build/bench/imgw-bench sweep.jsonl "5000 10000 20000 30000"
# Env: PAIRS (1000), DURATION (10), EXTRA (more imgw-bench options, e.g. --json)
set -eu
. "$(dirname "$0")/run_common.sh"
imgw=${1:-$root/build/imgw}
bench=${2:-$root/build/bench/imgw-bench}
out=${3:-sweep.jsonl}
rates=${4:-"5000 10000 20000 30000 40000"}
tmp=$(mktemp)
trap 'stop_server; rm -f "$tmp"' EXIT INT TERM
for r in $rates; do
    start_server "$imgw" 1
    timeout 300 "$bench" relay --port "$SRV_PORT" --server-pid "$SRV_PID" \
        --pairs "${PAIRS:-1000}" --rate "$r" --duration "${DURATION:-10}" \
        ${EXTRA:-} >"$tmp" || true
    cat "$tmp"
    grep '^JSON ' "$tmp" >>"$out" || true
    stop_server
done
python3 "$(dirname "$0")/plot" -o "${out%.jsonl}.svg" "$out"
