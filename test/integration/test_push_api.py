"""POST /api/push: server-side push (protocol.md 1, 8, 10).

Body {"code": 202, "ids": [...], "data": {...}} (or "broadcast": true) ->
200 {"ok": true, "connections": N}; each target connection gets the frame in
its own codec; pushes are not stored. Every test runs once per store backend.
"""

import asyncio

import pytest

import imgw_harness as H
from imgw_harness import run
from msg_helpers import (  # noqa: F401  (fixtures)
    MClient, api_push, close_all, http_json, mgw, mserver,
    store_backend, uid)

PUSH = H.cmd_num("CMD_PUSH_MSG")


def push_data(sender, receiver, text="from the api", mid="900000000000000001"):
    return {"message_id": mid, "client_msg_id": "api-1",
            "conversation_id": "s_%s_%s" % tuple(sorted([sender, receiver], key=str.encode)),
            "sender_id": sender, "receiver_id": receiver, "message_type": 1,
            "content": text, "send_time": 1700000000123, "server_time": 1700000000456,
            "seq": 0, "extra": {"source": "api", "n": "1"}}


def test_api_push_to_user_both_codecs(mgw):
    print("check: POST /api/push code 202 to a user with a pb and a json connection -> "
          "200 {ok:true, connections:2}; the pb client gets a protobuf PUSH_MSG and the "
          "json client a JSON text frame, both with every data field")

    async def go():
        u, other = uid("u"), uid("o")
        cp = await MClient.open(mgw, u, codec="pb", platform="Android")
        cj = await MClient.open(mgw, u, codec="json", platform="Web")
        co = await MClient.open(mgw, other)
        data = push_data("system", u, text="grüße ✓")
        r = api_push(mgw.port, {"code": 202, "ids": [u], "data": data})
        print("POST /api/push:", r)
        assert r.status == 200, r
        assert r.json == {"ok": True, "connections": 2}, r.json
        fp = await cp.wait_push("CMD_PUSH_MSG")
        fj = await cj.wait_push("CMD_PUSH_MSG")
        print("pb:", fp)
        print("json:", fj)
        assert fp.codec == "pb" and isinstance(fp.raw, (bytes, bytearray)), fp
        assert fj.codec == "json" and isinstance(fj.raw, str), fj
        for f in (fp, fj):
            b = f.body
            assert b.message_id == data["message_id"] and b.client_msg_id == "api-1", f
            assert b.conversation_id == data["conversation_id"], f
            assert (b.sender_id, b.receiver_id, b.message_type) == ("system", u, 1), f
            assert bytes(b.content) == "grüße ✓".encode(), f
            assert (b.send_time, b.server_time) == (1700000000123, 1700000000456), f
            assert dict(b.extra) == {"source": "api", "n": "1"}, f
        assert fj.json["body"]["content"] == "grüße ✓", fj.json
        await co.expect_no_push(wait=0.3)
        await close_all([cp, cj, co])
    run(go())


def test_api_push_many_users_across_loops(mgw):
    print("check: -t 4; /api/push to 20 users (mixed codecs, spread over loops) -> "
          "connections == 20 and each gets exactly one frame; offline ids count 0")

    async def go():
        users = [uid("pu") for _ in range(20)]
        cs = [await MClient.open(mgw, u, codec="json" if i % 2 else "pb")
              for i, u in enumerate(users)]
        r = api_push(mgw.port, {"code": 202, "ids": users + [uid("offline")],
                                "data": {"message_id": "1", "content": "fanout"}})
        print(r)
        assert r.status == 200 and r.json == {"ok": True, "connections": 20}, r
        for c in cs:
            f = await c.wait_push("CMD_PUSH_MSG")
            assert bytes(f.body.content) == b"fanout", f
        await asyncio.sleep(0.3)
        for c in cs:
            assert len(c.pushes()) == 1, (c.label, c.frames)
        r = api_push(mgw.port, {"code": 202, "ids": [uid("nobody")], "data": {}})
        print("offline only:", r)
        assert r.status == 200 and r.json == {"ok": True, "connections": 0}, r
        await close_all(cs)
    run(go())


def test_api_push_other_commands(mgw):
    print("check: /api/push with code 502 (read receipt), 602 (typing) and 207 (revoke) "
          "delivers that command with its body")

    async def go():
        u = uid("u")
        c = await MClient.open(mgw, u, codec="json")
        cp = await MClient.open(mgw, u, codec="pb", platform="iOS")
        cases = [
            (502, "CMD_READ_RECEIPT_PUSH", {"message_ids": ["1", "2"], "conversation_id": "s_a_b",
                                            "user_id": "a", "read_time": 1700000000000}),
            (602, "CMD_TYPING_STATUS_PUSH", {"conversation_id": "s_a_b", "user_id": "a",
                                             "status": 1}),
            (207, "CMD_REVOKE_MSG_PUSH", {"message_id": "7", "conversation_id": "s_a_b",
                                          "revoked_by": "a", "revoked_time": 1700000000001}),
        ]
        for code, name, data in cases:
            r = api_push(mgw.port, {"code": code, "ids": [u], "data": data})
            print(code, r)
            assert r.status == 200 and r.json["connections"] == 2, r
            for cl in (c, cp):
                f = await cl.wait_push(name)
                got = H.msg_to_json_dict(f.body)
                print(" ", cl.codec, got)
                for k, v in data.items():
                    assert got.get(k) == v, "%s field %s: %r != %r" % (name, k, got.get(k), v)
        await close_all([c, cp])
    run(go())


def test_api_push_broadcast(mserver):
    mgw = mserver(threads=4)
    print("check: own server -t 4; broadcast true reaches every authenticated connection "
          "(connections == count), not unauthenticated ones")

    async def go():
        users = [uid("bc") for _ in range(6)]
        cs = [await MClient.open(mgw, u, codec="json" if i % 2 else "pb")
              for i, u in enumerate(users)]
        unauth = await MClient.connect(mgw)
        await asyncio.sleep(0.1)
        r = api_push(mgw.port, {"code": 202, "broadcast": True, "ids": [],
                                "data": {"message_id": "42", "content": "to everyone"}})
        print(r)
        assert r.status == 200 and r.json.get("ok") is True, r
        for c in cs:
            f = await c.wait_push("CMD_PUSH_MSG")
            assert bytes(f.body.content) == b"to everyone", f
        r2 = api_push(mgw.port, {"code": 202, "broadcast": True,
                                 "data": {"content": "no ids key"}})
        print("broadcast without ids:", r2)
        assert r2.status == 200, r2
        for c in cs:
            await c.wait_push("CMD_PUSH_MSG", lambda f: bytes(f.body.content) == b"no ids key")
        await asyncio.sleep(0.3)
        assert unauth.frames == [], "unauthenticated connection got %r" % unauth.frames
        for c in cs:
            assert len(c.pushes()) == 2, (c.label, c.frames)
        await close_all(cs + [unauth])
        # the count: N = connections the frame was delivered to (authenticated ones)
        for resp in (r, r2):
            assert resp.json["connections"] == len(cs), (
                "broadcast answered connections=%r, but only %d authenticated connections "
                "are open (and got the frame); 1 unauthenticated WebSocket and the HTTP "
                "request's own connection are also open" % (resp.json["connections"], len(cs)))
    run(go())


def test_api_push_not_stored(mgw):
    print("check: /api/push frames are not stored: max_seq/sync unchanged after a push")

    async def go():
        u, a = uid("u"), uid("a")
        ca = await MClient.open(mgw, a)
        c = await MClient.open(mgw, u)
        real = await ca.send_ok(to=u, content="real")
        await c.wait_push("CMD_PUSH_MSG")
        r = api_push(mgw.port, {"code": 202, "ids": [u], "data": {"message_id": "5",
                                                                   "content": "ephemeral",
                                                                   "seq": 99}})
        assert r.status == 200 and r.json["connections"] == 1, r
        await c.wait_push("CMD_PUSH_MSG", lambda f: bytes(f.body.content) == b"ephemeral")
        s = await c.sync()
        print("sync:", s)
        assert [m.message_id for m in s.messages] == [real.message_id], s
        assert s.server_max_seq == 1, s
        c2 = await MClient.open(mgw, u, platform="iOS")
        assert c2.auth_rsp.max_seq == 1, c2.auth_rsp
        nxt = await ca.send_ok(to=u, content="next")
        p = await c.wait_push("CMD_PUSH_MSG", lambda f: f.body.message_id == nxt.message_id)
        assert p.body.seq == 2, "api push consumed a seq: %r" % p
        await close_all([ca, c, c2])
    run(go())


@pytest.mark.parametrize("payload", [
    {"code": 999, "ids": ["x"], "data": {}},
    {"code": 0, "ids": ["x"], "data": {}},
    {"code": 200, "ids": ["x"], "data": {}},
    {"code": 100, "ids": ["x"], "data": {}},
    {"code": 300, "ids": ["x"], "data": {}},
    {"code": 203, "ids": ["x"], "data": {}},
    {"code": "202", "ids": ["x"], "data": {}},
    {"code": 202.5, "ids": ["x"], "data": {}},
    {"ids": ["x"], "data": {}},
    {"code": 202, "ids": "x", "data": {}},
    {"code": 202, "ids": [1], "data": {}},
    {"code": 202, "data": {}},
    {"code": 202, "ids": ["x"], "data": "hello"},
    {"code": 202, "ids": ["x"], "data": [1]},
    {"code": 202, "ids": ["x"], "data": {"seq": "not a number"}},
    {"code": 202, "ids": ["x"], "data": {"message_type": "text"}},
    {"code": 202, "ids": ["x"], "data": {"extra": ["a"]}},
    {"code": 202, "ids": ["x"], "broadcast": "yes", "data": {}},
], ids=lambda p: repr(p)[:60])
def test_api_push_bad_requests_400(mgw, payload):
    print("check: /api/push with %r -> 400 and nothing delivered" % payload)

    async def go():
        c = await MClient.open(mgw, "x-" + uid("bad"))
        pl = dict(payload)
        if isinstance(pl.get("ids"), list) and pl["ids"] == ["x"]:
            pl["ids"] = [c.user]
        r = api_push(mgw.port, pl)
        print(r)
        assert r.status == 400, r
        await c.expect_no_push(wait=0.3)
        await c.close()
    run(go())


@pytest.mark.parametrize("raw", ["not json", "[1,2]", '{"code": 202, "ids": ["x"]', ""])
def test_api_push_malformed_json_400(mgw, raw):
    print("check: /api/push with body %r -> 400" % raw)
    r = http_json(mgw.port, "POST", "/api/push", raw_body=raw)
    print(r)
    assert r.status == 400, r


@pytest.mark.parametrize("token", [None, "wrong", ""])
def test_api_push_auth_401(mgw, token):
    print("check: /api/push with bearer %r -> 401 and nothing delivered" % token)

    async def go():
        c = await MClient.open(mgw, uid("u"))
        r = http_json(mgw.port, "POST", "/api/push",
                      {"code": 202, "ids": [c.user], "data": {"content": "x"}}, token=token)
        print(r)
        assert r.status == 401, r
        await c.expect_no_push(wait=0.3)
        await c.close()
    run(go())


def test_api_push_duplicate_ids_once_per_connection(mgw):
    print("check: ids naming a user twice target that user once: each of its "
          "connections gets the frame exactly once and connections counts each once "
          "(ids are the target users, protocol.md 8)")

    async def go():
        u = uid("u")
        c1 = await MClient.open(mgw, u)
        c2 = await MClient.open(mgw, u, platform="iOS", codec="json")
        r = api_push(mgw.port, {"code": 202, "ids": [u, u, u], "data": {"content": "dup"}})
        print(r)
        assert r.status == 200, r
        await c1.wait_push("CMD_PUSH_MSG")
        await c2.wait_push("CMD_PUSH_MSG")
        await asyncio.sleep(0.4)
        n = (len(c1.pushes("CMD_PUSH_MSG")), len(c2.pushes("CMD_PUSH_MSG")))
        print("frames per connection:", n)
        assert n == (1, 1), "a user listed 3 times got %r frames per connection" % (n,)
        assert r.json["connections"] == 2, r.json
        await close_all([c1, c2])
    run(go())
