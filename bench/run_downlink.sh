#!/bin/sh
# bench/run_downlink.sh: broker downlink at several rates against a fresh
# one-loop server wired to an existing RabbitMQ.
#
#   bench/run_downlink.sh AMQP_URL [IMGW] [BENCH] [OUT.jsonl] ["RATES"]
#   e.g. bench/run_downlink.sh 'amqp://guest:guest@127.0.0.1:5672/%2f'
# A private RabbitMQ can be started with the integration tests' helper:
#   /usr/bin/python3 -c 'import sys,time; sys.path.insert(0,"test/integration");
#     from services import RabbitMQServer as R; r=R(); r.start(); print(r.url,flush=True);
#     time.sleep(600); r.stop()'
# Env: RECEIVERS (1000), DURATION (8).
set -eu
. "$(dirname "$0")/run_common.sh"
url=${1:?usage: run_downlink.sh AMQP_URL [IMGW] [BENCH] [OUT] [RATES]}
imgw=${2:-$root/build/imgw}
bench=${3:-$root/build/bench/imgw-bench}
out=${4:-downlink.jsonl}
rates=${5:-"5000 10000 20000"}
tmp=$(mktemp)
trap 'stop_server; rm -f "$tmp"' EXIT INT TERM
export IMGW__MQ__URL="$url" IMGW__SERVER__BROKER_ID=benchnode
start_server "$imgw" 1
sleep 1 # let the MQ thread connect and declare its queue
for r in $rates; do
    timeout 300 "$bench" downlink --port "$SRV_PORT" --server-pid "$SRV_PID" \
        --broker-id benchnode --amqp "$url" --receivers "${RECEIVERS:-1000}" \
        --rate "$r" --duration "${DURATION:-8}" >"$tmp" || true
    cat "$tmp"
    grep '^JSON ' "$tmp" >>"$out" || true
done
