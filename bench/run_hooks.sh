#!/usr/bin/env bash
# Relay cost with the before-send hook on (a local hook server) beside off,
# measured in the same run: bench/run_hooks.sh [IMGW] [BENCH] [RATE] [SECONDS]
# Prints both JSON lines and the ratios; docs/benchmarks.md has a run.
set -euo pipefail
IMGW=${1:-build/imgw}
BENCH=${2:-build/bench/imgw-bench}
RATE=${3:-1000}
DUR=${4:-8}
here=$(cd "$(dirname "$0")" && pwd)
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
out=$(mktemp)
coproc HOOK { exec python3 "$here/hook_server.py"; }
read -r HPORT <&"${HOOK[0]}"
trap 'kill $HOOK_PID 2>/dev/null || true; rm -f "$out"' EXIT
for mode in off on; do
  port=$(free_port)
  extra=()
  if [ "$mode" = on ]; then
    extra=(IMGW__HOOKS__BEFORE_SEND_URL=http://127.0.0.1:$HPORT/before
           IMGW__HOOKS__SECRET=bench-hook-secret-0123456789)
  fi
  env IMGW__SERVER__PORTS=$port IMGW__SERVER__BIND=127.0.0.1 \
      IMGW__AUTH__JWT_SECRET=bench-secret-0123456789abcdef0123456789 \
      IMGW__LIMITS__SEND_RATE=1000000 IMGW_LOG=warn "${extra[@]}" \
      "$IMGW" -t 1 &
  spid=$!
  for _ in $(seq 100); do python3 -c "import socket;socket.create_connection(('127.0.0.1',$port),0.2)" 2>/dev/null && break; sleep 0.05; done
  "$BENCH" relay --port "$port" --server-pid "$spid" --pairs 100 --rate "$RATE" \
      --duration "$DUR" --drain 2 --watch-pid hook=$HOOK_PID --label "hook-$mode" \
      | grep '^JSON ' | tee -a "$out"
  kill -TERM $spid; wait $spid || true
done
python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l[5:]) for l in open(sys.argv[1])]
off, on = rows
def g(r, *k):
    for x in k:
        r = r[x]
    return r
for name, keys in [("server CPU us/msg", ("server_cpu_us_per_msg",)),
                   ("ack latency p50 us", ("ack_latency_us", "p50")),
                   ("delivery latency p50 us", ("latency_us", "p50"))]:
    a, b = g(off, *keys), g(on, *keys)
    print("%-26s off %8.1f  on %8.1f  ratio %.2f" % (name, a, b, b / a if a else 0))
print("lost off/on: %s/%s" % (off["lost"], on["lost"]))
PY
