#!/usr/bin/env bash
# peer-syscalls.sh [IMGW_BIN]: context switches, CPU time and system calls
# of an imgw server (-t 1, memory store) during 4 s of the peers' relay
# load (1000 pairs, 30,000 msgs/s, as ../shared/peers/compare.sh runs it),
# from `perf stat` on the server's pid. Counts, not times: they hold on a
# noisy machine where compare.sh's ratios move. Needs perf and the peers'
# tools (compare.sh builds them into /tmp/imgw-peers). Extra settings go
# through the environment, e.g. IMGW__SERVER__BATCH_US=0.
set -u
bin=${1:-build/imgw}
peers=${PEERS_OUT:-/tmp/imgw-peers}
port=${PORT:-19741}
secret=cmp-secret-0123456789abcdef
[ -x "$peers/loadgen" ] || { echo "no $peers/loadgen: run ../shared/peers/compare.sh once"; exit 2; }
command -v perf >/dev/null || { echo "needs perf"; exit 2; }
tmp=$(mktemp -d); : > "$tmp/empty.ini"
IMGW__SERVER__PORTS=$port IMGW__SERVER__BIND=127.0.0.1 IMGW__SERVER__BROKER_ID=cmp \
IMGW__AUTH__JWT_SECRET=$secret IMGW__AUTH__ADMIN_TOKEN=cmp-admin IMGW__STORE__BACKEND=memory \
IMGW__LIMITS__SEND_RATE=100000 IMGW_LOG=warn "$bin" -c "$tmp/empty.ini" -t 1 >"$tmp/imgw.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
"$peers/loadgen" --pairs 1000 --rate 30000 --duration 8 --warmup 2 --src-ips 127.0.0.1-127.0.0.20 \
  --quiet --url ws://127.0.0.1:$port/ws --mode imgw --jwt-secret $secret --server-pid $pid >"$tmp/lg.out" 2>&1 &
lg=$!
sleep 5
perf stat -e context-switches,task-clock,syscalls:sys_enter_read,syscalls:sys_enter_recvfrom,\
syscalls:sys_enter_write,syscalls:sys_enter_sendto,syscalls:sys_enter_epoll_wait,\
syscalls:sys_enter_clock_nanosleep,syscalls:sys_enter_mprotect -p $pid -- sleep 4 2>&1 |
  awk '/[0-9]/ && !/elapsed|Performance/ {print $1, $2}'
wait $lg
grep -o '"recv_per_s":[0-9.]*\|"lost":[0-9]*' "$tmp/lg.out" | tr '\n' ' '; echo
