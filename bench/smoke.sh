#!/bin/sh
# bench/smoke.sh: a few seconds of relay (20 pairs, 200 msgs/s, protobuf then
# JSON) against an imgw server that imgw-bench starts itself on a free port.
# Exits non-zero if anything was lost, duplicated, refused or left unacked.
# No speed assertions.
#
#   bench/smoke.sh [IMGW_BINARY [IMGW_BENCH_BINARY]]
#
# Defaults: build/imgw and build/bench/imgw-bench under the repository root.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
server=${1:-$root/build/imgw}
bench=${2:-$root/build/bench/imgw-bench}
for f in "$server" "$bench"; do
    if [ ! -x "$f" ]; then
        echo "smoke.sh: $f is not an executable (build first)" >&2
        exit 2
    fi
done
exec timeout 120 "$bench" --smoke "$server"
