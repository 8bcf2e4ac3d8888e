#!/bin/sh
# bench/run_all.sh: the measurement set of docs/benchmarks.md, each scenario
# against a fresh one-loop server (so RSS deltas are clean). Appends the JSON
# lines to OUT and prints the human summaries.
#
#   bench/run_all.sh [IMGW] [BENCH] [OUT.jsonl]
set -eu
. "$(dirname "$0")/run_common.sh"
imgw=${1:-$root/build/imgw}
bench=${2:-$root/build/bench/imgw-bench}
out=${3:-bench-results.jsonl}
tmp=$(mktemp)
trap 'stop_server; rm -f "$tmp"' EXIT INT TERM

run() {
    start_server "$imgw" 1
    echo "== imgw-bench $* (server pid $SRV_PID, port $SRV_PORT)"
    timeout 600 "$bench" "$@" --port "$SRV_PORT" --server-pid "$SRV_PID" \
        >"$tmp" || true
    cat "$tmp"
    grep '^JSON ' "$tmp" >>"$out" || true
    stop_server
}

run connect -n 5000 --rate 5000 --hold 3
run connect -n 19000 --rate 5000 --hold 3
run relay --pairs 1000 --rate 30000 --duration 10
run relay --pairs 1000 --rate 30000 --duration 10 --json
run group --groups 10 --members 100 --rate 1000 --duration 10
run storm -n 10000 --rate 5000 --jitter 1
python3 "$(dirname "$0")/plot" -o "${out%.jsonl}.svg" "$out"
