"""The redis store backend against real redis-servers.

The checks live in a C program, test/unit/test_store_redis.c (built by meson
as build/test_store_redis, or build/test/test_store_redis; override with
IMGW_STORE_REDIS_TEST_BIN, relative to the repository root or absolute). This
wrapper starts the servers (services.RedisServer), runs the program with
their URL, and for the outage test kills and restarts Redis at the points
the program asks for over stdout ("KILL_NOW", "RESTART_NOW", "BURST_START",
"BURST_DONE"), answering on its stdin ("killed", "restarted").

Run:  cd /work/main && /usr/bin/python3 -m pytest -q test/integration/test_store_redis.py
Each test requires the program's last line to be "N passed, 0 failed".
"""

import os
import queue
import re
import subprocess
import threading
import time

import pytest

from services import redis_factory, redis_server  # noqa: F401 (fixtures)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
RESULT = re.compile(r"^(\d+) passed, (\d+) failed$", re.M)


@pytest.fixture(scope="module")
def test_bin():
    p = os.environ.get("IMGW_STORE_REDIS_TEST_BIN")
    if not p:
        # build/test_store_redis; an executable() declared in
        # test/meson.build lands in build/test/ instead.
        p = os.path.join(REPO, "build", "test_store_redis")
        for alt in (os.path.join(REPO, "build", "test", "test_store_redis"),
                    os.path.join(REPO, "build", "test", "store",
                                 "test_store_redis")):
            if not os.path.exists(p) and os.path.exists(alt):
                p = alt
    if not os.path.isabs(p):
        p = os.path.join(REPO, p)
    if not (os.path.isfile(p) and os.access(p, os.X_OK)):
        pytest.fail("redis store test program not found or not executable at "
                    "%r; build it (ninja -C build test_store_redis) or set "
                    "IMGW_STORE_REDIS_TEST_BIN" % p, pytrace=False)
    return p


def check_result(out, rc):
    """The program's own verdict: every check passed, at least one ran."""
    m = RESULT.findall(out)
    assert m, "no result line; output:\n" + out[-4000:]
    passed, failed = int(m[-1][0]), int(m[-1][1])
    fails = [l for l in out.splitlines() if l.startswith("  FAIL")]
    assert failed == 0 and rc == 0, "%d failed (exit %s):\n%s\n--- tail:\n%s" % (
        failed, rc, "\n".join(fails), out[-3000:])
    assert passed > 0
    return passed


def run(test_bin, mode, url, timeout=60):
    p = subprocess.run([test_bin, mode, url], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=timeout, cwd=REPO)
    out = p.stdout.decode("utf-8", "replace")
    return check_result(out, p.returncode)


def test_semantics(test_bin, redis_server):
    """Every request kind, key layout and TTLs, NOSCRIPT retry, timeouts
    (CLIENT PAUSE), loop_close with requests in flight."""
    n = run(test_bin, "semantics", redis_server.url)
    assert n > 250


def test_unix_socket_password_and_db(test_bin, redis_factory):
    r = redis_factory(password="s3cr:et@", unix_socket=True)
    # %-escaped password, db 2 (SELECT), over TCP ...
    run(test_bin, "smoke",
        "redis://:s3cr%%3Aet%%40@127.0.0.1:%d/2" % r.port)
    assert r.client(db=2).get("IM-SEQ-a") == "1"
    # ... and over the unix socket, db 3.
    run(test_bin, "smoke",
        "unix://%s?db=3&password=s3cr%%3Aet%%40" % r.unix_path)
    assert r.client(db=3).get("IM-SEQ-a") == "1"


def test_wrong_password_never_ready(test_bin, redis_factory):
    r = redis_factory(password="right")
    run(test_bin, "badauth", "redis://:wrong@127.0.0.1:%d/0" % r.port)


def test_outage_restart_and_atomic_appends(test_bin, redis_factory):
    """Redis dies: requests fail with EBUSY/ETIMEDOUT, never success, and
    loop_ready goes 0; it comes back on the same port: the same process
    works again. Then a kill in the middle of a burst of pipelined appends:
    after the restart (AOF, fsync always) every acknowledged append is in
    all its timelines at its seqs, and an unacknowledged one is in all or
    none of them."""
    r = redis_factory(persist=True)
    proc = subprocess.Popen([test_bin, "outage", r.url], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            cwd=REPO)
    lines = queue.Queue()
    out = []

    def reader():
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            out.append(line)
            lines.put(line)
        lines.put(None)

    threading.Thread(target=reader, daemon=True).start()

    def expect(word, timeout=30):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                line = lines.get(timeout=max(0.1, end - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            if line == word:
                return
        proc.kill()
        pytest.fail("program did not say %s; output:\n%s" %
                    (word, "\n".join(out)[-4000:]), pytrace=False)

    def say(word):
        proc.stdin.write((word + "\n").encode())
        proc.stdin.flush()

    try:
        expect("KILL_NOW")
        r.kill()
        say("killed")
        expect("RESTART_NOW")
        r.start()
        say("restarted")
        expect("BURST_START")
        time.sleep(0.3)  # mid-burst: appends are in flight all the time
        r.kill()
        expect("BURST_DONE")
        r.start()
        say("restarted")
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    time.sleep(0.1)  # let the reader drain
    print("\n".join(l for l in out if not l.startswith("  ok")))
    check_result("\n".join(out) + "\n", rc)
