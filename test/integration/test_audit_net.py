"""Security audit (issue 17), items 5, 9, 10 and 11 against the real binary
(item 14, the monotonic deadline clock, is test/unit/test_loop.c).

  test_broker_push_numbers_rejected     5: internal imgw:push messages with
                                        ts / seq 1e300, -1, 2.5, 2^63, a
                                        string: rejected, counted in
                                        imgw_mq_rejected_total, nothing
                                        delivered, no crash (sanitizer
                                        build: no "runtime error:")
  test_api_push_numbers_400             5: /api/push with out-of-range or
                                        fractional numbers -> 400
  test_preauth_heartbeats_rate_limited  9: 2,000 heartbeats before
                                        CMD_AUTH_REQ -> ERR_SEND_TOO_FAST
                                        after the burst; login still works
  test_api_connection_close_async       10: /api requests with Connection:
                                        close on the Redis backend (async
                                        answers) are closed right after the
                                        answer; keep-alive still keeps
  test_empty_continuations_bounded      11: 5,000 empty continuation frames
                                        -> close 1009; 1,024 frames in one
                                        message are still fine

Run:  /usr/bin/python3 -m pytest -q test/integration/test_audit_net.py
"""

import asyncio
import base64
import json
import os
import socket
import struct

import pytest

import imgw_harness as H
from cluster_helpers import ametrics, apublish, metrics, short_id, start_node, wait_for
from imgw_harness import pb
from msg_helpers import ADMIN_TOKEN, MClient, TOO_FAST, api_push, close_all, http_json, uid
from services import rabbitmq_server, redis_server  # noqa: F401 (fixtures)

HB_RSP = H.cmd_num("CMD_HEARTBEAT_RSP")
ERR_RSP = H.cmd_num("CMD_ERROR_RSP")


def masked(opcode, payload, fin=True):
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        hdr = struct.pack("!BB", b0, 0x80 | n)
    elif n < 65536:
        hdr = struct.pack("!BBH", b0, 0x80 | 126, n)
    else:
        hdr = struct.pack("!BBQ", b0, 0x80 | 127, n)
    mk = os.urandom(4)
    return hdr + mk + bytes(b ^ mk[i % 4] for i, b in enumerate(payload))


# ------------------------------------------------------------------ item 5


def internal_push(user, seq, ts=1700000000000, mid="ap-1"):
    blob = pb.PushMessage(message_id=mid, sender_id="sys", receiver_id=user,
                          content=b"internal").SerializeToString()
    return {"imgw": "push", "ts": ts, "blob": base64.b64encode(blob).decode(),
            "targets": [[user, seq]]}


def test_broker_push_numbers_rejected(server, redis_server, rabbitmq_server):
    print("check: imgw:push broker messages whose ts or seq is 1e300, -1, 2.5, 2^63 or "
          "a string are rejected (imgw_mq_rejected_total +1 each), deliver nothing, "
          "and do not crash the node; valid pushes before and after arrive with "
          "their seq")
    tag = short_id("an")
    n1 = start_node(server, redis_server.url, rabbitmq_server.url,
                    broker_id="%s-node1" % tag, node_id=151)
    wait_for(lambda: metrics(n1.port).get("imgw_mq_up") == 1, 20, what="imgw_mq_up 1")
    mq = rabbitmq_server
    U = uid("U")

    async def go():
        c = await MClient.open(n1, U)
        await apublish(mq, n1.broker_id, internal_push(U, 7, mid="ok-1"))
        f = await c.wait_push("CMD_PUSH_MSG", pred=lambda f: f.body.message_id == "ok-1",
                              timeout=10)
        print("valid push: %r" % f)
        assert f.body.seq == 7, f
        before = (await ametrics(n1.port)).get("imgw_mq_rejected_total", 0)
        bad = [
            ("seq 1e300", internal_push(U, 1e300, mid="bad-1")),
            ("seq -1", internal_push(U, -1, mid="bad-2")),
            ("seq 2.5", internal_push(U, 2.5, mid="bad-3")),
            ("seq 2^63", internal_push(U, 2 ** 63, mid="bad-4")),
            ("seq -1e300", internal_push(U, -1e300, mid="bad-5")),
            ("seq '5'", internal_push(U, "5", mid="bad-6")),
            ("ts 1e300", internal_push(U, 8, ts=1e300, mid="bad-7")),
            ("ts -1", internal_push(U, 8, ts=-1, mid="bad-8")),
            ("ts 2.5", internal_push(U, 8, ts=2.5, mid="bad-9")),
            ("ts -1e300", internal_push(U, 8, ts=-1e300, mid="bad-10")),
        ]
        for what, body in bad:
            await apublish(mq, n1.broker_id, body)
            print("published: %s -> %s" % (what, json.dumps(body)[:160]))
        await apublish(mq, n1.broker_id, internal_push(U, 9, mid="ok-2"))
        f = await c.wait_push("CMD_PUSH_MSG", pred=lambda f: f.body.message_id == "ok-2",
                              timeout=20)
        assert f.body.seq == 9, f
        await asyncio.sleep(0.5)
        after = (await ametrics(n1.port)).get("imgw_mq_rejected_total", 0)
        print("imgw_mq_rejected_total %d -> %d (%d bad published)" % (before, after, len(bad)))
        assert after - before == len(bad), (before, after, len(bad))
        got = [(f.body.message_id, f.body.seq) for f in c.pushes("CMD_PUSH_MSG")]
        print("pushes: %r" % got)
        assert got == [("ok-1", 7), ("ok-2", 9)], got
        log = n1.log_text()
        assert "runtime error:" not in log, log[-2000:]
        assert log.count("mq: rejected a message") >= 1, log[-2000:]
        assert n1.proc.poll() is None
        await c.heartbeat()
        await close_all([c])

    H.run(go())


def test_api_push_numbers_400(server):
    print("check: /api/push with code 1e300 / -1 / 2.5 / 2^31 / a string and data "
          "numbers out of int64 or fractional -> 400 with an error; a valid one -> 200")
    s = server(admin_token=ADMIN_TOKEN)
    U = uid("U")
    data = {"message_id": "1", "sender_id": "sys", "receiver_id": U, "content": "x"}
    cases = [
        ("code 1e300", {"code": 1e300, "ids": [U], "data": data}),
        ("code -1e300", {"code": -1e300, "ids": [U], "data": data}),
        ("code -1", {"code": -1, "ids": [U], "data": data}),
        ("code 202.5", {"code": 202.5, "ids": [U], "data": data}),
        ("code 2^31", {"code": 2 ** 31, "ids": [U], "data": data}),
        ("code 2^32+202", {"code": 2 ** 32 + 202, "ids": [U], "data": data}),
        ("code '202'", {"code": "202", "ids": [U], "data": data}),
        ("seq 1e300", {"code": 202, "ids": [U], "data": dict(data, seq=1e300)}),
        ("seq 2^63", {"code": 202, "ids": [U], "data": dict(data, seq=2 ** 63)}),
        ("seq 2.5", {"code": 202, "ids": [U], "data": dict(data, seq=2.5)}),
        ("send_time -1e300", {"code": 202, "ids": [U],
                              "data": dict(data, send_time=-1e300)}),
        ("message_type 2^31", {"code": 202, "ids": [U],
                               "data": dict(data, message_type=2 ** 31)}),
    ]
    for what, body in cases:
        r = api_push(s.port, body)
        print("%-20s -> %r" % (what, r))
        assert r.status == 400, (what, r)
        assert r.json and "error" in r.json, (what, r)
    r = api_push(s.port, {"code": 202, "ids": [U], "data": dict(data, seq=5)})
    print("valid -> %r" % r)
    assert r.status == 200, r
    assert "runtime error:" not in s.log_text()


# ------------------------------------------------------------------ item 9


def test_preauth_heartbeats_rate_limited(server):
    print("check: send_rate=10 (other frames: 100/s, burst 200): 2,000 heartbeats "
          "before CMD_AUTH_REQ -> every one answered, the ones past the burst with "
          "ERR_SEND_TOO_FAST; the connection stays open and then authenticates")
    s = server(send_rate=10)

    async def go():
        c = await MClient.connect(s)
        futs = []
        for _ in range(2000):
            _, fut = await c.send_nowait("CMD_HEARTBEAT_REQ", pb.HeartbeatRequest(client_time=1))
            futs.append(fut)
        frames = await asyncio.wait_for(asyncio.gather(*futs), 30)
        hb = sum(1 for f in frames if f.command == HB_RSP)
        fast = [f for f in frames if f.command == ERR_RSP and f.body.error_code == TOO_FAST]
        print("2000 pre-auth heartbeats: %d answered, %d ERR_SEND_TOO_FAST, %d other"
              % (hb, len(fast), len(frames) - hb - len(fast)))
        assert hb + len(fast) == 2000, frames[:5]
        assert len(fast) > 0, "no pre-auth heartbeat was rate limited"
        assert hb < 2000
        assert not c.closed.is_set(), c.close_code
        await asyncio.sleep(1.5)  # the bucket refills (100 frames/s)
        U = uid("U")
        f = await c.request("CMD_AUTH_REQ",
                            pb.AuthRequest(user_id=U, token=H.make_token(U), platform="Web"),
                            expect="CMD_AUTH_RSP")
        print("then auth: %r" % f)
        assert f.body.error_code == 0, f
        await c.close()

    H.run(go())


# ------------------------------------------------------------------ item 10


def api_request(method, path, port, body=None, close=True):
    data = json.dumps(body).encode() if body is not None else b""
    head = ("%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer %s\r\n"
            % (method, path, port, ADMIN_TOKEN))
    if close:
        head += "Connection: close\r\n"
    if body is not None:
        head += "Content-Type: application/json\r\nContent-Length: %d\r\n" % len(data)
    return head.encode() + b"\r\n" + data


@pytest.mark.parametrize("backend", ["redis", "memory"])
def test_api_connection_close_async(server, redis_server, backend):
    print("check: store %s, auth_timeout=60: PUT / GET / DELETE /api/groups/{gid} and "
          "GET of a missing group with 'Connection: close' -> the answer carries "
          "Connection: close and the server closes the socket right after it (not "
          "after auth_timeout); without it, two requests share one connection"
          % backend)
    env = {"store.backend": "redis", "store.redis_url": redis_server.url} \
        if backend == "redis" else {}
    s = server(admin_token=ADMIN_TOKEN, auth_timeout=60, env=env)
    if backend == "redis":
        wait_for(lambda: H.http_get(s.port, "/readyz").status == 200, 20, what="/readyz")
    gid = uid("g")
    steps = [("PUT", "/api/groups/" + gid, {"members": ["a", "b"]}, 200),
             ("GET", "/api/groups/" + gid, None, 200),
             ("DELETE", "/api/groups/" + gid, None, 200),
             ("GET", "/api/groups/" + gid, None, 404),
             ("POST", "/api/push", {"code": 202, "ids": ["a"], "data": {}}, 200)]
    for method, path, body, want in steps:
        c = H.HTTPConn(s.port, timeout=10)
        try:
            c.send(api_request(method, path, s.port, body))
            r = c.read_response()
            closed = c.wait_closed(timeout=10)
            print("%s %s -> %d %r, Connection: %r, closed by the server: %s"
                  % (method, path, r.status, r.body[:60], r.header("connection"), closed))
            assert r.status == want, r
            assert closed, "%s %s: socket still open 10 s after the answer" % (method, path)
            assert (r.header("connection") or "").lower() == "close", r
        finally:
            c.close()
    # keep-alive is unchanged: two async answers on one connection
    c = H.HTTPConn(s.port, timeout=10)
    try:
        c.send(api_request("PUT", "/api/groups/" + gid, s.port, {"members": ["a"]},
                           close=False))
        r1 = c.read_response()
        c.send(api_request("GET", "/api/groups/" + gid, s.port, close=False))
        r2 = c.read_response()
        print("keep-alive: %d %r / %d %r" % (r1.status, r1.body, r2.status, r2.body))
        assert r1.status == 200 and r2.status == 200, (r1, r2)
        assert json.loads(r2.body)["members"] == ["a"], r2
        assert r2.header("connection") is None, r2
    finally:
        c.close()


# ------------------------------------------------------------------ item 11


def test_empty_continuations_bounded(server):
    print("check: a text message of 1 frame + 5,000 empty continuations -> close "
          "1009 (at most 1,024 frames per message); a heartbeat in exactly 1,024 "
          "frames is answered")
    s = server()
    # 1,024 frames: the limit, still fine
    msg = b'{"command":"CMD_HEARTBEAT_REQ","sequence":5,"body":{"client_time":1}}'
    rw = H.RawWS(s.port)
    try:
        buf = masked(H.OP_TEXT, msg[:10], fin=False)
        buf += masked(H.OP_CONT, b"", fin=False) * 1022
        buf += masked(H.OP_CONT, msg[10:], fin=True)
        rw.sock.sendall(buf)
        op, data = rw.recv_message(10)
        assert op == H.OP_TEXT, (op, data)
        f = H.decode_frame(data.decode("utf-8"))
        print("1,024 frames: %r" % f)
        assert f.command == HB_RSP and f.sequence == 5, f
    finally:
        rw.close()
    # 5,001 frames: closed at the 1,025th
    rw = H.RawWS(s.port)
    try:
        buf = masked(H.OP_TEXT, msg[:10], fin=False)
        buf += masked(H.OP_CONT, b"", fin=False) * 5000
        try:
            rw.sock.sendall(buf)
        except (BrokenPipeError, ConnectionResetError) as e:
            print("send ended: %r" % e)
        code, reason, before = rw.expect_close(10)
        print("5,001 frames: close %s %r (frames before: %d)" % (code, reason, len(before)))
        assert code == 1009, (code, reason)
    finally:
        rw.close()
    assert H.http_get(s.port, "/healthz").status == 200
