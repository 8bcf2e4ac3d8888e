#!/usr/bin/env bash
# run_ab.sh: two imgw builds side by side on the same 1:1 relay load, runs
# alternated (A B A B A B), so that a change's cost is a ratio taken in one
# run on one machine (docs/benchmarks.md, "Conversation list").
#
#   bench/run_ab.sh memory|redis|callgrind IMGW_A IMGW_B [ROUNDS]
#
# memory / redis: server CPU per message from imgw-bench's JSON line
#   (server_cpu_us_per_msg; for redis also redis-server's CPU per message,
#   watched with --watch-pid), one fresh server (and a fresh redis-server,
#   no persistence) per run. Load: 1000 pairs, 10 s, 20,000 msgs/s (memory)
#   or 5,000 msgs/s (redis), -t 1.
# callgrind: the server's user-space instructions (Ir) over a fixed load of
#   5,000 messages (100 pairs, 500 msgs/s, 10 s), memory store: exact, not
#   disturbed by other processes on the machine.
#
# Prints one line per run and a summary line per build (median) plus the
# ratio B/A. Needs imgw-bench built (ninja -C build bench/imgw-bench),
# redis-server for redis, valgrind for callgrind.
set -euo pipefail
mode=${1:?memory|redis|callgrind}
A=${2:?imgw build A}
B=${3:?imgw build B}
rounds=${4:-3}
here=$(cd "$(dirname "$0")" && pwd)
bench=${IMGW_BENCH:-$here/../build/bench/imgw-bench}
secret=bench-secret-0123456789abcdef0123456789
tmp=$(mktemp -d /tmp/imgw-ab.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() {
    for _ in $(seq 1 200); do
        (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listens on $1" >&2
    return 1
}

json_field() { python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print(eval(sys.argv[1], {}, {"d": d}))' "$1"; }

one_run() { # build label -> prints "value [value2]"
    local bin=$1 port rport rpid="" pid out extra=()
    port=$(free_port)
    local env=(IMGW__SERVER__PORTS=$port IMGW__AUTH__JWT_SECRET=$secret
               IMGW__LIMITS__SEND_RATE=1000000
               IMGW_LOG=warn)
    if [ "$mode" = redis ]; then
        rport=$(free_port)
        redis-server --port "$rport" --save '' --appendonly no \
            --daemonize no --dir "$tmp" >"$tmp/redis.log" 2>&1 &
        rpid=$!
        wait_port "$rport"
        env+=(IMGW__STORE__BACKEND=redis
              IMGW__STORE__REDIS_URL=redis://127.0.0.1:$rport/0)
        extra=(--watch-pid redis=$rpid)
    fi
    if [ "$mode" = callgrind ]; then
        env "${env[@]}" valgrind --tool=callgrind \
            --callgrind-out-file="$tmp/cg.out" "$bin" -t 1 \
            >"$tmp/server.log" 2>&1 &
    else
        env "${env[@]}" "$bin" -t 1 >"$tmp/server.log" 2>&1 &
    fi
    pid=$!
    wait_port "$port"
    case $mode in
    memory) out=$("$bench" relay --pairs 1000 --rate 20000 --duration 10 \
                  --port "$port" --server-pid "$pid" | grep '^JSON ') ;;
    redis) out=$("$bench" relay --pairs 1000 --rate 5000 --duration 10 \
                 --port "$port" --server-pid "$pid" "${extra[@]}" |
                 grep '^JSON ') ;;
    callgrind) out=$("$bench" relay --pairs 100 --rate 500 --duration 10 \
                     --conn-rate 500 --timeout 60 --port "$port" |
                     grep '^JSON ') ;;
    esac
    kill -INT "$pid"
    wait "$pid" || true
    [ -n "$rpid" ] && { kill "$rpid"; wait "$rpid" || true; }
    out=${out#JSON }
    local lost acked
    lost=$(echo "$out" | json_field 'd["lost"] + d["duplicated"] + d["seq_gaps"]')
    acked=$(echo "$out" | json_field 'd["acked"]')
    [ "$lost" = 0 ] || { echo "run lost/duplicated messages: $out" >&2; exit 1; }
    case $mode in
    memory) echo "$(echo "$out" | json_field 'd["server_cpu_us_per_msg"]')" ;;
    redis) echo "$(echo "$out" | json_field 'd["server_cpu_us_per_msg"]') $(echo "$out" | json_field 'd["watch"]["redis"]["cpu_us_per_msg"]')" ;;
    callgrind)
        local ir
        ir=$(callgrind_annotate "$tmp/cg.out" 2>/dev/null |
             awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
        python3 -c "print('%.0f' % ($ir / $acked))" ;;
    esac
}

declare -a ra rb
for i in $(seq 1 "$rounds"); do
    a=$(one_run "$A"); ra+=("$a"); echo "round $i A $a"
    b=$(one_run "$B"); rb+=("$b"); echo "round $i B $b"
done
python3 - "$mode" "${#ra[@]}" "${ra[@]}" "${rb[@]}" <<'EOF'
import statistics, sys
mode, n = sys.argv[1], int(sys.argv[2])
runs = sys.argv[3:]
a = [list(map(float, r.split())) for r in runs[:n]]
b = [list(map(float, r.split())) for r in runs[n:]]
names = {"memory": ["imgw us/msg"], "callgrind": ["imgw Ir/msg"],
         "redis": ["imgw us/msg", "redis-server us/msg"]}[mode]
for k, name in enumerate(names):
    ma = statistics.median(x[k] for x in a)
    mb = statistics.median(x[k] for x in b)
    print("%s: A median %.2f, B median %.2f, B/A %.3f" % (name, ma, mb, mb / ma))
if mode == "redis":
    ma = statistics.median(x[0] + x[1] for x in a)
    mb = statistics.median(x[0] + x[1] for x in b)
    print("imgw + redis-server us/msg: A median %.2f, B median %.2f, B/A %.3f"
          % (ma, mb, mb / ma))
EOF
