#!/bin/sh
# test/fuzz/run.sh [seconds-per-target] [build-dir] [target...]
#
# Seconds 0 only builds.
# Builds every libFuzzer target of test/fuzz/ with clang
# (-fsanitize=fuzzer,address,undefined; no meson needed), then runs each one
# for the given time (default 60 s) on a copy of its checked-in corpus
# (test/fuzz/corpus/<target>/), so runs never grow the checked-in seeds.
# Prints the executions per target (libFuzzer's "Done N runs" line) and
# exits non-zero when any target crashes, leaks or times out; the crash
# input and the log stay in <build-dir>/<target>.{log,crash-*}.
#
# A target's dictionary test/fuzz/<target>.dict is used when present
# (make_seeds.py writes the seeds and the dictionaries).
#
# Environment: CC (default clang), FUZZ_JOBS (parallel compiles, default
# 2), FUZZ_NICE (nice level for the fuzzing runs, default 10), FUZZ_ARGS
# (extra libFuzzer options, e.g. "-dict=..." or "-rss_limit_mb=4096").
# Targets are run one after the other: the machine is shared.
set -eu

SECS=${1:-60}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=${2:-"$ROOT/build-fuzz"}
[ $# -ge 2 ] && shift 2 || shift $#
case $BUILD in /*) ;; *) BUILD="$PWD/$BUILD" ;; esac
CC=${CC:-clang}
JOBS=${FUZZ_JOBS:-2}
NICE=${FUZZ_NICE:-10}
ALL_TARGETS="fuzz_http fuzz_ws fuzz_pb fuzz_json fuzz_jwt fuzz_downlink fuzz_config"
TARGETS=${*:-$ALL_TARGETS}

FUZZ="$ROOT/test/fuzz"
OBJ="$BUILD/obj"
GEN="$BUILD/gen"
mkdir -p "$OBJ" "$GEN"

# ---- build ------------------------------------------------------------------

SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined"
CFLAGS="-g -O1 -fno-omit-frame-pointer -std=gnu11 -D_GNU_SOURCE $SAN"
INC="-I$ROOT/src/base -I$ROOT/src/core -I$ROOT/src/net -I$ROOT/src/store -I$ROOT/src/mq \
     -I$GEN -I/usr/share/include/llhttp"
LIBS="-luv -lcjson -linih -lwslay -lmbedtls -lmbedx509 -lmbedcrypto \
      /usr/lib/x86_64-linux-gnu/libprotobuf-nanopb.a -lhiredis -lpthread -lm"

# The version header meson makes from project(version : ...) in meson.build.
ver=$(sed -n "s/^  version : '\([^']*\)',*$/\1/p" "$ROOT/meson.build" | head -n 1)
sed "s/@version@/$ver/" "$ROOT/src/core/imgw_version.h.in" >"$GEN/imgw_version.h.new"
if cmp -s "$GEN/imgw_version.h.new" "$GEN/imgw_version.h"; then
    rm -f "$GEN/imgw_version.h.new"
else
    mv "$GEN/imgw_version.h.new" "$GEN/imgw_version.h"
fi

# Generated nanopb sources, only when the .proto or .options changed.
if [ ! -f "$GEN/imgw.pb.c" ] ||
   [ "$ROOT/proto/imgw.proto" -nt "$GEN/imgw.pb.c" ] ||
   [ "$ROOT/proto/imgw.options" -nt "$GEN/imgw.pb.c" ]; then
    (cd "$ROOT" && protoc --plugin=protoc-gen-nanopb=/usr/bin/protoc-gen-nanopb \
        -I proto --nanopb_out="$GEN" \
        --nanopb_opt=-fproto/imgw.options proto/imgw.proto)
fi

# name:source pairs for the library objects (instrumented for coverage).
LIBSRC="
utf8:$ROOT/src/base/utf8.c
json:$ROOT/src/base/json.c
codec:$ROOT/src/core/codec.c
codec_dispatch:$ROOT/src/core/codec_dispatch.c
codec_json:$ROOT/src/core/codec_json.c
codec_pb:$ROOT/src/core/codec_pb.c
config:$ROOT/src/core/config.c
jwt:$ROOT/src/core/jwt.c
log:$ROOT/src/base/log.c
clock:$ROOT/src/base/clock.c
err:$ROOT/src/base/err.c
http:$ROOT/src/net/http.c
ws:$ROOT/src/net/ws.c
conn:$ROOT/src/net/conn.c
twheel:$ROOT/src/net/twheel.c
tls:$ROOT/src/net/tls.c
iplimit:$ROOT/src/net/iplimit.c
alloc:$ROOT/src/base/alloc.c
imgw_pb:$GEN/imgw.pb.c
llhttp_api:/usr/share/llhttp/api.c
llhttp_http:/usr/share/llhttp/http.c
llhttp_llhttp:/usr/share/llhttp/llhttp.c
"

# Compiles name:source when the object is out of date; at most $JOBS at a
# time.
compile_all() {
    pids=""
    n=0
    for pair in $LIBSRC; do
        name=${pair%%:*}
        src=${pair#*:}
        o="$OBJ/$name.o"
        # Up to date: newer than its source, this script, the generated
        # header and every header under src/ (a struct that changed size
        # must not leave objects and harnesses disagreeing on its layout).
        if [ -f "$o" ] && [ "$o" -nt "$src" ] && [ "$o" -nt "$0" ] &&
           [ "$o" -nt "$GEN/imgw.pb.h" ] &&
           [ -z "$(find "$ROOT/src" -name '*.h' -newer "$o" | head -n 1)" ]; then
            continue
        fi
        extra=""
        case $name in llhttp_*) extra="-w" ;; esac
        # shellcheck disable=SC2086
        $CC $CFLAGS -fsanitize=fuzzer-no-link $extra $INC -c "$src" -o "$o" &
        pids="$pids $!"
        n=$((n + 1))
        if [ $n -ge "$JOBS" ]; then
            for p in $pids; do wait "$p"; done
            pids=""
            n=0
        fi
    done
    for p in $pids; do wait "$p"; done
}

# Objects each target links besides its own harness.
objs_for() {
    case $1 in
    fuzz_http|fuzz_ws)
        echo "http ws conn twheel tls iplimit alloc log clock err utf8 llhttp_api llhttp_http llhttp_llhttp" ;;
    fuzz_pb|fuzz_json|fuzz_downlink)
        echo "codec codec_dispatch codec_json codec_pb imgw_pb alloc log clock err utf8 json" ;;
    fuzz_jwt)
        echo "jwt alloc log clock err utf8" ;;
    fuzz_config)
        echo "config log clock err" ;;
    *)
        echo "unknown target $1" >&2
        exit 2 ;;
    esac
}

echo "== building into $BUILD"
compile_all
for t in $TARGETS; do
    objs=""
    for o in $(objs_for "$t"); do objs="$objs $OBJ/$o.o"; done
    bin="$BUILD/$t"
    newer=0
    [ -f "$bin" ] || newer=1
    for f in "$FUZZ/$t.c" "$FUZZ"/*.h $objs; do
        [ -f "$bin" ] && [ "$f" -nt "$bin" ] && newer=1
    done
    if [ $newer = 1 ]; then
        # shellcheck disable=SC2086
        $CC $CFLAGS -fsanitize=fuzzer $INC -DIMGW_FUZZ_ROOT="\"$ROOT\"" \
            "$FUZZ/$t.c" $objs $LIBS -o "$bin"
    fi
done

# ---- run --------------------------------------------------------------------

if [ "$SECS" = 0 ]; then
    echo "== built (0 s per target: nothing run)"
    exit 0
fi

echo "== running each target for ${SECS}s"
fail=0
for t in $TARGETS; do
    work="$BUILD/corpus-run/$t"
    rm -rf "$work"
    mkdir -p "$work"
    if [ -d "$FUZZ/corpus/$t" ]; then
        cp -R "$FUZZ/corpus/$t/." "$work/"
    fi
    log="$BUILD/$t.log"
    dict=""
    [ -f "$FUZZ/$t.dict" ] && dict="-dict=$FUZZ/$t.dict"
    rc=0
    # -timeout: one input taking >10 s is a hang; -rss_limit_mb bounds a
    # runaway allocation; -print_final_stats gives "Done N runs" context.
    # shellcheck disable=SC2086
    (cd "$BUILD" && nice -n "$NICE" "./$t" -max_total_time="$SECS" \
        -timeout=10 -rss_limit_mb=2048 -artifact_prefix="$BUILD/$t." \
        -print_final_stats=1 $dict ${FUZZ_ARGS:-} "$work") >"$log" 2>&1 || rc=$?
    runs=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\1 runs in \2 s/p' "$log" | tail -n 1)
    cov=$(grep -E '^#[0-9]+.*(DONE|INITED|NEW|REDUCE|pulse)' "$log" | tail -n 1 |
          sed -n 's/.*\(cov: [0-9]*\).*\(ft: [0-9]*\).*/\1 \2/p')
    if [ $rc -ne 0 ]; then
        fail=1
        printf '%-14s FAILED (exit %d) %s; see %s\n' "$t" "$rc" \
            "${runs:-}" "$log"
        grep -E '^(==[0-9]+==ERROR|SUMMARY|.*runtime error)' "$log" | head -n 5 || true
    else
        printf '%-14s %s  (%s, corpus %s files)\n' "$t" "${runs:-? runs}" \
            "${cov:-}" "$(ls "$work" | wc -l)"
    fi
done
exit $fail
