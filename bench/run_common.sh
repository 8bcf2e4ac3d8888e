# bench/run_common.sh: sourced by the other run_*.sh scripts.
# Starts and stops a private imgw on a free 127.0.0.1 port with the settings
# the bench needs (bench/README.md, "Server settings").
#
#   start_server IMGW_BINARY [THREADS]   sets SRV_PID and SRV_PORT
#   stop_server
root=$(cd "$(dirname "$0")/.." && pwd)

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

start_server() {
    SRV_PORT=$(free_port)
    IMGW__SERVER__PORTS=$SRV_PORT \
    IMGW__AUTH__JWT_SECRET=${BENCH_SECRET:-bench-secret-0123456789abcdef0123456789} \
    IMGW__LIMITS__SEND_RATE=1000000 \
    IMGW__AUTH__ADMIN_TOKEN=${BENCH_ADMIN:-bench-admin-token-0123456789abcdef} \
    IMGW_LOG=${IMGW_LOG:-warn} \
        "$1" -t "${2:-1}" >>"${SRV_LOG:-/dev/null}" 2>&1 &
    SRV_PID=$!
    i=0
    while ! python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$SRV_PORT),0.2)" 2>/dev/null; do
        i=$((i + 1))
        if [ $i -gt 50 ] || ! kill -0 $SRV_PID 2>/dev/null; then
            echo "run: server did not start" >&2
            return 1
        fi
        sleep 0.1
    done
}

stop_server() {
    [ -n "${SRV_PID:-}" ] || return 0
    kill -TERM "$SRV_PID" 2>/dev/null || true
    i=0
    while kill -0 "$SRV_PID" 2>/dev/null && [ $i -lt 50 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    kill -KILL "$SRV_PID" 2>/dev/null || true
    wait "$SRV_PID" 2>/dev/null || true
    SRV_PID=
}
