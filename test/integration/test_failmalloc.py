"""Allocation failure along a connection's life (hardening issue).

IMGW_FAILMALLOC=N makes the Nth allocation of the connection path (net,
HTTP, WebSocket, sessions, delivery, cJSON) fail once, counting from the
first accepted connection. For every N over a whole life (handshake, auth
in both codecs, send, push, sync, close) the node must answer with an error
or close that connection, never crash, stay healthy for the next client,
and exit 0 on SIGTERM; in the sanitizer build LeakSanitizer checks that the
failure leaked nothing (the harness fails on any sanitizer report)."""
import asyncio
import json
import time

import websockets

import imgw_harness as H

MAX_N = 110


async def life(port, n):
    """One scripted connection life; every step may fail. Returns what
    happened, for the log."""
    ta = H.make_token("fa_a")
    tb = H.make_token("fb_b")
    seen = []
    try:
        async with websockets.connect("ws://127.0.0.1:%d/ws?token=%s" % (port, ta),
                                      open_timeout=3) as a, \
                websockets.connect("ws://127.0.0.1:%d/ws" % port,
                                   open_timeout=3) as b:
            await a.send(json.dumps({"command": "CMD_AUTH_REQ", "sequence": 1,
                                     "body": {}}))
            seen.append(json.loads(await asyncio.wait_for(a.recv(), 3))["command"])
            auth = H.pb.AuthRequest(user_id="fb_b", token=tb, platform="x")
            await b.send(H.pb_frame(100, auth.SerializeToString(), 1))
            seen.append("b-auth")
            await asyncio.wait_for(b.recv(), 3)
            await a.send(json.dumps({"command": "CMD_SEND_MSG_REQ", "sequence": 2,
                                     "body": {"receiver_id": "fb_b",
                                              "client_msg_id": "m%d" % n,
                                              "content": "x" * 300,
                                              "extra": {"k": "v"}}}))
            seen.append(json.loads(await asyncio.wait_for(a.recv(), 3))["body"]
                        .get("error_code"))
            await asyncio.wait_for(b.recv(), 3)
            seen.append("pushed")
            await b.send(H.pb_frame(300, H.pb.SyncRequest(limit=10).SerializeToString(), 3))
            await asyncio.wait_for(b.recv(), 3)
            seen.append("synced")
    except Exception as e:  # a refused or closed connection is fine
        seen.append("ended: %s" % type(e).__name__)
    return seen


async def healthy_client(port):
    tok = H.make_token("fc_c")
    async with websockets.connect("ws://127.0.0.1:%d/ws?token=%s" % (port, tok),
                                  open_timeout=5) as c:
        await c.send(json.dumps({"command": "CMD_AUTH_REQ", "sequence": 1, "body": {}}))
        r = json.loads(await asyncio.wait_for(c.recv(), 5))
        return r["body"]["error_code"]


def retry(fn, want):
    """fn() == want, allowing one failed first try (the one-shot injected
    failure may land on it when the life used fewer than N allocations)."""
    try:
        got = fn()
        if got == want:
            return got
        print("  first try gave %r (the injected failure?)" % (got,))
    except Exception as e:
        print("  first try failed (the injected failure?):", type(e).__name__)
    return fn()


def test_every_allocation_failure_along_a_life(server):
    print("check: for N in 1..%d the Nth connection-path allocation fails; the node "
          "survives, serves the next client, and exits 0 (LSan-clean in the "
          "sanitizer build)" % MAX_N)
    outcomes = {}
    for n in range(1, MAX_N + 1):
        srv = server(threads=1, env={"IMGW_FAILMALLOC": n})
        seen = H.run(life(srv.port, n))
        outcomes[n] = seen
        assert srv.proc.poll() is None, "imgw died with N=%d: %s" % (n, srv.log_tail())
        # When the life used fewer than N allocations the one injected
        # failure lands on these checks instead: a second try must work.
        assert retry(lambda: H.http_get(srv.port, "/healthz").status, 200) == 200
        assert retry(lambda: H.run(healthy_client(srv.port)),
                     "ERR_SUCCESS") == "ERR_SUCCESS", n
        code, killed = srv.stop(timeout=10)
        log = srv.log_text()
        assert not killed and code == 0, "N=%d: exit %s" % (n, code)
        for marker in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
            assert marker not in log, "N=%d: %s\n%s" % (n, marker, srv.log_tail(60))
    failed_lives = sum(1 for s in outcomes.values() if any(
        str(x).startswith("ended") for x in s) or "ERR_SERVER_BUSY" in s)
    for n, s in outcomes.items():
        print("N=%2d: %s" % (n, s))
    print("lives disturbed by the injected failure: %d of %d" % (failed_lives, MAX_N))
    # The injection must really have hit the connection path.
    assert failed_lives >= MAX_N // 4


def test_allocation_failure_storm(server):
    print("check: with every allocation failing from the 10th on, clients are "
          "refused or closed, the node stays up and exits 0")
    srv = server(threads=2, env={"IMGW_FAILMALLOC": 10, "IMGW_FAILMALLOC_EVERY": 1})
    for i in range(5):
        H.run(life(srv.port, i))
    assert srv.proc.poll() is None
    code, killed = srv.stop(timeout=10)
    assert code == 0 and not killed
    log = srv.log_text()
    for marker in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
        assert marker not in log, srv.log_tail(60)
