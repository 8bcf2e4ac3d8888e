#!/bin/sh
# test/fuzz/run.sh [seconds-per-target] [build-dir] [target...]
#
# Seconds 0 only builds.
# A thin runner over the fuzz targets meson builds (test/fuzz/meson.build):
# sets up build-dir (default build-fuzz/) the first time, with clang,
# -Dfuzz=true and -Db_sanitize=address,undefined (so
# -fsanitize=fuzzer,address,undefined), has ninja build the targets, then
# runs each one for the given time (default 60 s) on a copy of its
# checked-in corpus (test/fuzz/corpus/<target>/), so runs never grow the
# checked-in seeds. Prints the executions per target (libFuzzer's "Done N
# runs" line) and exits non-zero when any target crashes, leaks or times
# out; the crash input and the log stay in <build-dir>/<target>.{log,crash-*}.
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
JOBS=${FUZZ_JOBS:-2}
NICE=${FUZZ_NICE:-10}
ALL_TARGETS="fuzz_http fuzz_ws fuzz_pb fuzz_json fuzz_jwt fuzz_downlink fuzz_config"
TARGETS=${*:-$ALL_TARGETS}

FUZZ="$ROOT/test/fuzz"

# ---- build (meson) ------------------------------------------------------------

mkdir -p "$(dirname "$BUILD")"
if [ ! -f "$BUILD/build.ninja" ]; then
    echo "== setting up $BUILD"
    # -O1: the speed/coverage trade libFuzzer's docs suggest.
    CC=${CC:-clang} meson setup "$BUILD" "$ROOT" -Dfuzz=true \
        -Db_sanitize=address,undefined -Db_lundef=false -Doptimization=1 \
        -Dbench=false -Dintegration=false >"$BUILD.setup.log" 2>&1 || {
        cat "$BUILD.setup.log"
        exit 2
    }
    rm -f "$BUILD.setup.log"
fi
echo "== building into $BUILD"
ninjat=""
for t in $TARGETS; do
    case " $ALL_TARGETS " in
    *" $t "*) ninjat="$ninjat test/fuzz/$t" ;;
    *)
        echo "unknown target $t" >&2
        exit 2 ;;
    esac
done
# shellcheck disable=SC2086
ninja -C "$BUILD" -j "$JOBS" $ninjat >"$BUILD/fuzz-build.log" 2>&1 || {
    tail -n 40 "$BUILD/fuzz-build.log"
    exit 2
}

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
    (cd "$BUILD" && nice -n "$NICE" "./test/fuzz/$t" -max_total_time="$SECS" \
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
