"""Graceful shutdown: SIGTERM / SIGINT drain (close 1001, /healthz 503, exit 0).

protocol.md section 10 (Shutdown, close codes).
"""

import asyncio
import signal
import time

import pytest

import imgw_harness as H
from imgw_harness import WSClient, make_token, run


def healthz_status(port):
    try:
        r = H.http_get(port, "/healthz", timeout=3)
        return r.status
    except (ConnectionRefusedError, ConnectionResetError, ConnectionError):
        return "refused"
    except OSError as e:
        return "error: %r" % e


def healthz_during_drain(port, window=1.0):
    """Poll /healthz right after the signal. The signal is asynchronous, so a
    200 may still come before the server has seen it; within `window` s it
    must turn to 503 (or refused), and never go back to 200."""
    seen = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < window:
        st = healthz_status(port)
        seen.append(st)
        if st != 200:
            break
        time.sleep(0.02)
    first_bad = next((i for i, st in enumerate(seen) if st != 200), None)
    if first_bad is not None:
        for _ in range(3):
            st = healthz_status(port)
            seen.append(st)
            if st == "refused":
                break
            time.sleep(0.02)
    return seen


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_graceful_shutdown(server, sig):
    s = server(threads=2, drain_seconds=1)
    print("check: %s with authenticated clients (pb + json) -> /healthz not 200 "
          "during the drain, every client gets close 1001, exit code 0 within 15s"
          % sig.name)

    async def go():
        clients = []
        for i in range(4):
            codec = "pb" if i % 2 == 0 else "json"
            c = await WSClient.connect(s, codec=codec)
            await c.auth_ok("bye-%d" % i, make_token("bye-%d" % i))
            clients.append(c)
        t0 = time.monotonic()
        s.signal(sig)
        seen = await asyncio.get_running_loop().run_in_executor(
            None, healthz_during_drain, s.port)
        print("/healthz after the signal:", seen)
        bad = [i for i, st in enumerate(seen) if st != 200]
        assert bad, "/healthz still 200 for 1s after %s: %r" % (sig.name, seen)
        assert all(st in (503, "refused") for st in seen[bad[0]:]), (
            "/healthz during the drain: %r (want 503 or refused, never 200 again)"
            % (seen,))
        codes = await asyncio.gather(*(c.expect_close(timeout=12) for c in clients))
        print("close codes:", [c for c, _ in codes],
              "after %.2fs" % (time.monotonic() - t0))
        assert all(c == 1001 for c, _ in codes), codes
    run(go())
    code = s.wait_exit(15)
    print("exit code:", code)
    assert code == 0, "process exit code %r (None = still running after 15s)" % code
    s.stopped = True


def test_shutdown_idle_server_exits_0(server):
    s = server(drain_seconds=1)
    print("check: SIGTERM on an idle server -> exit 0 within 15s")
    s.signal(signal.SIGTERM)
    code = s.wait_exit(15)
    print("exit code:", code)
    assert code == 0, code
    s.stopped = True


def test_shutdown_with_unauthenticated_and_http_clients(server):
    s = server(drain_seconds=1)
    print("check: SIGTERM with an unauthenticated WebSocket and an idle keep-alive "
          "HTTP connection open -> exit 0 within 15s; the WebSocket gets 1001")
    http = H.HTTPConn(s.port)
    http.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert http.read_response().status == 200

    async def go():
        c = await WSClient.connect(s)
        s.signal(signal.SIGTERM)
        await c.expect_close(1001, timeout=12)
    try:
        run(go())
        code = s.wait_exit(15)
        print("exit code:", code)
        assert code == 0, code
        s.stopped = True
    finally:
        http.close()


def test_shutdown_many_connections_all_loops(server):
    s = server(threads=4, drain_seconds=1)
    n = 100
    print("check: -t 4 with %d authenticated connections; SIGTERM -> every one gets "
          "close 1001, exit 0 within 15s" % n)

    async def go():
        sem = asyncio.Semaphore(20)

        async def one(i):
            async with sem:
                c = await WSClient.connect(s, codec="pb" if i % 3 else "json")
                await c.auth_ok("many-%d" % i, make_token("many-%d" % i))
                return c
        clients = await asyncio.gather(*(one(i) for i in range(n)))
        t0 = time.monotonic()
        s.signal(signal.SIGTERM)
        res = await asyncio.gather(*(c.expect_close(timeout=12) for c in clients))
        codes = [c for c, _ in res]
        print("close codes: %r within %.2fs" % (
            {k: codes.count(k) for k in set(codes)}, time.monotonic() - t0))
        assert codes == [1001] * n
    run(go())
    code = s.wait_exit(15)
    print("exit code:", code)
    assert code == 0, code
    s.stopped = True
