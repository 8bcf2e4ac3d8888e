"""The JavaScript SDK (sdk/js) against a real imgw (issue 15).

Runs the SDK's own node:test suite (sdk/js/test/*.test.mjs) with IMGW_BIN
pointing at the binary under test and a real redis-server for the FLUSHALL
case. That suite starts, stops and restarts imgw itself (same port), so it
covers: reconnect after a server restart mid-conversation with messages sent
meanwhile arriving exactly once; a send in flight when the connection drops
stored once; discontinuities after a memory-store restart, a Redis FLUSHALL
and retention trimming; typed server errors; token refresh.

Also checked here: the generated protobuf code (sdk/js/src/gen) matches
proto/imgw.proto, and www/imgw-sdk.js (the bundle the demo page embeds) is
the one the SDK sources build.

Node and npm are Debian packages (deps/install.sh); the npm packages come
from sdk/js/package-lock.json via `npm ci` (deps/install.sh runs it; this
file runs it too when node_modules is missing).
"""

import os
import shutil
import subprocess
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
SDK = os.path.join(REPO, "sdk", "js")


def _run(cmd, env=None, timeout=600):
    print("[sdk] $ %s" % " ".join(cmd))
    p = subprocess.run(cmd, cwd=SDK, env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, errors="replace",
                       timeout=timeout)
    print(p.stdout[-20000:])
    return p


@pytest.fixture(scope="module")
def sdk_ready():
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("node / npm missing: run deps/install.sh (Debian nodejs npm)",
                    pytrace=False)
    if not os.path.isdir(os.path.join(SDK, "node_modules", "@bufbuild")):
        env = dict(os.environ, CI="true")
        p = _run(["npm", "ci", "--no-audit", "--no-fund"], env=env)
        assert p.returncode == 0, "npm ci failed"
    p = _run(["node", "build.mjs"])
    assert p.returncode == 0, "the SDK does not build (esbuild / tsc)"
    return SDK


def test_generated_protobuf_matches_proto(sdk_ready):
    print("check: sdk/js/src/gen/imgw_pb.ts is what protoc-gen-es makes of "
          "proto/imgw.proto (regenerate with `npm run gen`)")
    if shutil.which("protoc") is None:
        pytest.fail("protoc missing (Debian protobuf-compiler)", pytrace=False)
    with tempfile.TemporaryDirectory() as d:
        p = _run(["protoc", "--plugin=protoc-gen-es=./node_modules/.bin/protoc-gen-es",
                  "--es_out=" + d, "--es_opt=target=ts,import_extension=none",
                  "-I", os.path.join(REPO, "proto"),
                  os.path.join(REPO, "proto", "imgw.proto")])
        assert p.returncode == 0
        with open(os.path.join(d, "imgw_pb.ts")) as f:
            fresh = f.read()
    with open(os.path.join(SDK, "src", "gen", "imgw_pb.ts")) as f:
        committed = f.read()
    assert fresh == committed, "sdk/js/src/gen/imgw_pb.ts is stale: npm run gen"


def test_demo_bundle_is_current(sdk_ready):
    print("check: www/imgw-sdk.js (embedded into the demo page at build time) "
          "is the IIFE bundle of the current SDK sources")
    p = _run(["node", "build.mjs", "--check-demo"])
    assert p.returncode == 0, "www/imgw-sdk.js is stale: cd sdk/js && npm run build:demo"


def test_sdk_against_imgw(sdk_ready, imgw_bin):
    import services
    r = services.RedisServer().start()
    try:
        env = dict(os.environ)
        env["IMGW_BIN"] = imgw_bin
        env["IMGW_TEST_REDIS_URL"] = r.url
        p = _run(["node", "--test", "--test-concurrency=1", "test/"], env=env,
                 timeout=900)
    finally:
        r.cleanup()
    out = p.stdout
    assert p.returncode == 0, "the SDK's tests failed (output above)"
    assert "# fail 0" in out and "# pass " in out, "no node:test summary"
    assert "# skipped 0" in out, "a case was skipped (Redis URL?)"


def test_npm_pack_is_publishable(sdk_ready):
    print("check: `npm pack` holds ESM, CJS, type declarations, the browser "
          "bundle and the README; the CJS build loads with require()")
    import json
    p = _run(["npm", "pack", "--dry-run", "--json", "--ignore-scripts"])
    assert p.returncode == 0
    out = p.stdout
    info = json.loads(out[out.index("["):])
    files = {f["path"] for f in info[0]["files"]}
    print("[sdk] package files: %s" % sorted(files))
    for f in ("dist/index.mjs", "dist/index.cjs", "dist/types/index.d.ts",
              "dist/imgw.iife.js", "README.md", "package.json"):
        assert f in files, f
    p = _run(["node", "-e", "const m = require('./dist/index.cjs'); "
              "if (typeof m.ImgwClient !== 'function') process.exit(1); "
              "console.log('cjs ok', Object.keys(m).sort().join(','))"])
    assert p.returncode == 0
