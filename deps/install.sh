#!/usr/bin/env bash
# Installs, from Debian packages, only what imgw's build and tests need and
# the machine lacks. Idempotent: a second run with everything present does
# nothing and prints nothing but its summary line.
#
#   deps/install.sh        everything: building, running and every test
#                          (make test; the test harness calls it so)
#   deps/install.sh run    only building and running imgw (make, make run):
#                          no test servers, no browser, no profilers
set -euo pipefail

MODE="${1:-all}"
case "$MODE" in
  all|run) ;;
  *) echo "usage: deps/install.sh [run]" >&2; exit 2 ;;
esac

# Building and running imgw (the release build configures the test and
# bench targets too, so meson finds their compilers and python).
PKGS=(
  build-essential pkg-config meson ninja-build
  libuv1-dev libwslay-dev libnanopb-dev nanopb protobuf-compiler
  libhiredis-dev librabbitmq-dev libcjson-dev libmbedtls-dev libinih-dev
  libcurl4-openssl-dev
  node-llhttp
  python3
)
# The tests (make test): the sanitizer and fuzz builds' clang, real Redis
# and RabbitMQ servers, the Python test libraries.
TEST_PKGS=(
  clang libclang-rt-14-dev
  python3-pytest python3-websockets python3-protobuf python3-jwt
  python3-cryptography python3-pika python3-redis
  redis-server rabbitmq-server
  openssl procps psmisc
  # The peer comparison (../shared/peers/compare.sh, docs/benchmarks.md)
  # builds a libwebsockets relay; valgrind, perf and strace give the
  # deterministic per-message counts beside it.
  libwebsockets-dev valgrind linux-perf strace
  # The browser demo test (test/integration/test_demo_browser.py) drives
  # www/index.html in a headless Chromium through Selenium.
  chromium chromium-driver python3-selenium
)
if [ "$MODE" = all ]; then
  PKGS+=("${TEST_PKGS[@]}")
  # Node and npm for the JavaScript SDK's tests (sdk/js): Debian's, unless
  # a node and an npm are already on the PATH (another vendor's nodejs
  # package bundles its own npm and conflicts with Debian's). The server
  # does not need them: the demo's SDK bundle (www/imgw-sdk.js) is
  # committed.
  if ! command -v node >/dev/null 2>&1; then PKGS+=(nodejs); fi
  if ! command -v npm >/dev/null 2>&1; then PKGS+=(npm); fi
fi
# Optional extras asked for by a caller: DEPS_EXTRA="chromium chromium-driver".
if [ -n "${DEPS_EXTRA:-}" ]; then
  read -r -a extra <<<"$DEPS_EXTRA"
  PKGS+=("${extra[@]}")
fi

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

# The JavaScript SDK's npm packages (sdk/js), exactly as pinned by its
# package-lock.json, whenever node_modules is missing or older than the
# lockfile. No network use when they are current.
npm_deps() {
  [ "$MODE" = all ] || return 0
  local dir
  dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/sdk/js"
  [ -f "$dir/package-lock.json" ] || return 0
  if [ ! -f "$dir/node_modules/.package-lock.json" ] ||
     [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
    echo "deps: npm ci in sdk/js"
    (cd "$dir" && CI=true npm ci --no-audit --no-fund --loglevel=error </dev/null)
  fi
}

if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all ${#PKGS[@]} packages present"
  npm_deps
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# The services must not be started by the package scripts: the tests start
# their own instances on free ports.
policy_added=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  policy_added=1
fi
cleanup() { if [ "$policy_added" = 1 ]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup EXIT
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
npm_deps
echo "deps: done"
