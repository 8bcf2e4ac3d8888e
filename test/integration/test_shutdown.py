"""Graceful shutdown: SIGTERM / SIGINT drain (close 1001, /healthz 503, exit 0).

protocol.md section 10 (Shutdown, close codes).
"""

import asyncio
import signal
import time

import pytest

import imgw_harness as H
from imgw_harness import WSClient, make_token, run


def healthz_during_drain(port):
    try:
        r = H.http_get(port, "/healthz", timeout=3)
        return r.status
    except (ConnectionRefusedError, ConnectionResetError, ConnectionError):
        return "refused"
    except OSError as e:
        return "error: %r" % e


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
        st = await asyncio.get_running_loop().run_in_executor(
            None, healthz_during_drain, s.port)
        print("/healthz right after the signal:", st)
        assert st in (503, "refused"), "/healthz during drain answered %r" % (st,)
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
