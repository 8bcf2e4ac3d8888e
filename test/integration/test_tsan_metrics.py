"""Statistics without data races (issue 16 item 4): /metrics scraped under
traffic on several loops, with the server built with ThreadSanitizer.

Every counter is written by its own loop only and read by whichever loop
serves the scrape (src/base/stat.h). This runs the ThreadSanitizer build of
imgw (IMGW_TSAN_BIN; test/run.py sets it for its --tsan build, and skips it
otherwise) with 3 loops, drives 1:1 sends, group sends and admin pushes
across the loops while another thread scrapes /metrics again and again,
and fails if the server's log holds a ThreadSanitizer report.
"""

import asyncio
import os
import threading

import pytest

import imgw_harness as H
from imgw_harness import run
from msg_helpers import (ADMIN_TOKEN, MClient, api_push, close_all,
                         put_group, uid)

TSAN_BIN = os.environ.get("IMGW_TSAN_BIN")

pytestmark = pytest.mark.skipif(
    not TSAN_BIN, reason="IMGW_TSAN_BIN (a ThreadSanitizer build of imgw) not set")

N_USERS = 12
ROUNDS = 4


@pytest.fixture
def tsan_server(tmp_path, monkeypatch):
    assert os.access(TSAN_BIN, os.X_OK), "IMGW_TSAN_BIN=%r is not executable" % TSAN_BIN
    monkeypatch.setenv("IMGW_BIN", TSAN_BIN)
    # Keep running after a report, so the log shows every race of the run.
    supp = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "tsan.supp")
    monkeypatch.setenv("TSAN_OPTIONS", "halt_on_error=0:second_deadlock_stack=1:"
                       "suppressions=" + supp)
    s = H.build_server(str(tmp_path), "tsan", threads=3,
                       env={"IMGW__STORE__BACKEND": "memory"},
                       admin_token=ADMIN_TOKEN, send_rate=100000)
    s.start(ready_timeout=30.0)
    try:
        yield s
    finally:
        s.stop(timeout=20.0)


def loops_in_use(port):
    r = H.http_get(port, "/metrics")
    assert r.status == 200, r
    per = {}
    for name, labels, v in H.parse_metrics(r.body.decode()):
        if name == "imgw_connections_open":
            per[labels["loop"]] = v
    return per


def test_metrics_scraped_under_cross_loop_traffic_without_races(tsan_server):
    s = tsan_server
    print("check: TSan imgw -t 3, %d users, 1:1 + group sends + /api/push across "
          "loops while /metrics is scraped in a loop -> no 'WARNING: ThreadSanitizer' "
          "in the server log" % N_USERS)
    scrapes = [0]
    stop = threading.Event()
    bad = []

    def scraper():
        while not stop.is_set():
            r = H.http_get(s.port, "/metrics", timeout=20.0)
            if r.status != 200 or b"imgw_frames_total" not in r.body:
                bad.append(r)
            scrapes[0] += 1

    async def go():
        users = [uid("ts") for _ in range(N_USERS)]
        clients = [await MClient.open(s, u) for u in users]
        per = loops_in_use(s.port)
        print("connections per loop:", per)
        assert len([v for v in per.values() if v > 0]) > 1, (
            "all connections on one loop, no cross-loop traffic: %r" % per)
        gid = uid("tsg")
        put_group(s.port, gid, users)
        t = threading.Thread(target=scraper, daemon=True)
        t.start()
        try:
            for rnd in range(ROUNDS):
                # 1:1: every user to the next one (most pairs cross loops).
                for i, c in enumerate(clients):
                    await c.send_ok(to=users[(i + 1) % N_USERS],
                                    content=("r%d-%d" % (rnd, i)).encode())
                # A group send fans out to every loop.
                await clients[rnd % N_USERS].send_ok(
                    group=gid, content=("g%d" % rnd).encode())
                # Admin pushes, posted from the HTTP request's loop.
                r = api_push(s.port, {"code": 202, "ids": users,
                                      "data": {"round": rnd}})
                assert r.status == 200, r
                for c in clients:
                    await c.heartbeat()
        finally:
            stop.set()
            t.join(timeout=30)
            await close_all(clients)

    run(go())
    print("scrapes while traffic ran:", scrapes[0])
    assert scrapes[0] >= 1, "no /metrics scrape completed"
    assert not bad, "bad /metrics answers: %r" % bad[:2]
    code, killed = s.stop(timeout=20.0)
    log = s.log_text()
    n_reports = log.count("WARNING: ThreadSanitizer")
    print("server exit code %s, ThreadSanitizer reports: %d" % (code, n_reports))
    if n_reports:
        start = log.index("WARNING: ThreadSanitizer")
        print(log[start:start + 6000])
    assert n_reports == 0, "ThreadSanitizer reported %d race(s); first one above" % n_reports
    assert not killed, "server did not stop within 20 s of SIGTERM"
