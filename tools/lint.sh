#!/bin/sh
# tools/lint.sh: the source rules a compiler does not check (make lint;
# make test runs it first). Prints file:line: why for every offender and
# exits 1 when there is one.
#
#   1. One allocator policy: no malloc, calloc, realloc, free, strdup,
#      strndup or aligned_alloc call in src/ outside src/base/alloc.c
#      (use imgw_x* or imgw_try_*, base/alloc.h). Comment lines are
#      skipped. Memory a library allocates is freed with that library's
#      own function, which this does not flag.
#   2. Floors: a quoted #include in src/<layer>/ must name a header of a
#      floor that layer may include (base: base; net, store, mq: itself
#      and base; core, with discovery and hooks, which share its floor:
#      everything). meson's include directories enforce
#      the same at compile time; this names the line.
#   3. No #include "../...": every layer has its include directory.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 2
fail=0
TMPF=$(mktemp)

# 1. bare allocator calls.
out=$(grep -nE '(^|[^A-Za-z0-9_.>])(malloc|calloc|realloc|free|strdup|strndup|aligned_alloc)[[:space:]]*\(' \
          $(find src -name '*.[ch]' ! -path src/base/alloc.c | sort) |
      grep -vE '^[^:]+:[0-9]+:[[:space:]]*(\*|/\*|//)')
if [ -n "$out" ]; then
    echo "$out" | sed 's/^\([^:]*:[0-9]*\):.*/\1: bare allocator call (use imgw_x* or imgw_try_*, src\/base\/alloc.h)/'
    fail=1
fi

# 2. upward includes. Headers generated at build time (imgw.pb.h,
# imgw_version.h) belong to core.
allowed() {
    case $1 in
    base) echo "base" ;;
    net | store | mq) echo "$1 base" ;;
    core | discovery | hooks) echo "core discovery hooks net store mq base" ;;
    esac
}
for layer in base net store mq core discovery hooks; do
    dirs=$(allowed "$layer")
    for f in $(find "src/$layer" -name '*.[ch]' | sort); do
        grep -nE '^[[:space:]]*#[[:space:]]*include[[:space:]]*"' "$f" |
        while IFS= read -r line; do
            n=${line%%:*}
            h=$(echo "$line" | sed 's/.*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/')
            case $h in ../*) continue ;; esac # rule 3
            ok=0
            for d in $dirs; do
                [ -f "src/$d/$h" ] && ok=1
            done
            if [ $ok = 0 ] && [ "$(allowed "$layer")" = "$(allowed core)" ]; then
                case $h in imgw.pb.h | imgw_version.h | *.c) ok=1 ;; esac
            fi
            if [ $ok = 0 ]; then
                where=$(for d in base net store mq core discovery hooks; do
                            [ -f "src/$d/$h" ] && echo "src/$d"; done | head -n 1)
                echo "$f:$n: src/$layer may include only $dirs, not \"$h\"${where:+ ($where)}"
                echo x >>"$TMPF"
            fi
        done
    done
done

# 3. relative includes.
out=$(grep -rnE '^[[:space:]]*#[[:space:]]*include[[:space:]]*"\.\./' src test bench)
if [ -n "$out" ]; then
    echo "$out" | sed 's/^\([^:]*:[0-9]*\):.*/\1: #include "..\/" (use the layer'"'"'s include directory)/'
    fail=1
fi

# 4. call cycles between the files of one floor (issue 11: calls run one
#    way inside core, net and hooks; tools/callcycles.py names each cycle).
if ! /usr/bin/python3 "$(dirname "$0")/callcycles.py" src/core src/net src/hooks >"$TMPF.cc" 2>&1; then
    cat "$TMPF.cc"
    fail=1
fi
rm -f "$TMPF.cc"

[ -s "$TMPF" ] && fail=1
rm -f "$TMPF"
if [ $fail = 0 ]; then
    echo "lint: ok"
fi
exit $fail
