"""Id syntax, Redis key collisions and per-user state (security audit items
1 and 6; docs/protocol.md "Ids", docs/store.md "Keys" and "Per-user state").

  test_dedupe_key_collision           ("eve", "x-1") and ("eve-x", "1") are
                                      different (sender, client_msg_id)
                                      pairs: both stored and pushed, with
                                      their own ids (the old Redis key
                                      IM-DEDUP-{u}-{cmid} made them one)
  test_bad_ids_in_frames              control characters, spaces, ':' in
                                      receiver / group / sender /
                                      client_msg_id, read receipts:
                                      ERR_INVALID_PARAM naming the rule;
                                      nothing stored, nothing created
  test_bad_ids_at_auth                AuthRequest.user_id and a token
                                      subject outside the rule
  test_bad_ids_http                   /api/groups gid and members,
                                      /api/push ids, /dev/token user: 400
                                      with the rule in the message
  test_redis_seq_ttl                  IM-SEQ gets retention + seq_idle_days,
                                      refreshed at auth (redis only)
  test_memory_user_cap                store.max_users: sends needing a new
                                      user record get ERR_SERVER_BUSY,
                                      counted in /metrics (memory only)

Both backends run every test that applies (IMGW_TEST_BACKENDS narrows).
"""

import asyncio
import json

import pytest

import imgw_harness as H
from imgw_harness import make_token, pb, run
from hostile_helpers import handshake_status, raw_ws
from msg_helpers import (  # noqa: F401  (fixtures)
    INVALID, OK, MClient, close_all, http_json, is_msg, mgw, mserver,
    put_group, store_backend, uid)

BUSY = H.pb.ErrorCode.Value("ERR_SERVER_BUSY")
RULE = "may only contain A-Z a-z 0-9 . _ @ -"


def suffix():
    """A run-unique tail made of id characters (shared Redis between runs)."""
    return uid("t").replace("_", "-")


# ------------------------------------------------------------- item 1


def test_dedupe_key_collision(mgw):
    print("check (%s): eve sends with client_msg_id x-1, eve-x with 1, to the same "
          "receiver: two messages, two ids, two pushes, both in the timeline; each "
          "pair still dedupes its own resend" % mgw.backend.name)

    async def go():
        t = suffix()
        eve, evex, bob = "eve" + t, "eve" + t + "-x", "bob" + t
        ce = await MClient.open(mgw, eve)
        cx = await MClient.open(mgw, evex, codec="json")
        cb = await MClient.open(mgw, bob)
        r1 = await ce.send_ok(to=bob, client_msg_id="x-1", content="from eve")
        r2 = await cx.send_ok(to=bob, client_msg_id="1", content="from eve-x")
        print("eve   ->", r1)
        print("eve-x ->", r2)
        assert r2.message_id != r1.message_id, (
            "eve-x's send was answered with eve's message id: %r %r" % (r1, r2))
        assert r2.seq == 1, r2  # eve-x's own first message
        p1 = await cb.wait_push("CMD_PUSH_MSG", is_msg(r1.message_id))
        p2 = await cb.wait_push("CMD_PUSH_MSG", is_msg(r2.message_id))
        print("bob got:", p1.body.sender_id, p2.body.sender_id)
        assert (p1.body.sender_id, p2.body.sender_id) == (eve, evex)
        s = await cb.sync()
        print("bob's timeline:", [(m.seq, m.sender_id, m.client_msg_id) for m in s.messages])
        assert [m.message_id for m in s.messages] == [r1.message_id, r2.message_id]
        # each pair still dedupes itself
        d1 = await ce.send_ok(to=bob, client_msg_id="x-1", content="from eve")
        d2 = await cx.send_ok(to=bob, client_msg_id="1", content="from eve-x")
        assert (d1.message_id, d2.message_id) == (r1.message_id, r2.message_id)
        if mgw.backend.name == "redis":
            rc = mgw.backend.service.client()
            keys = sorted(k for k in rc.scan_iter("IM-DEDUP-eve%s*" % t))
            print("dedupe keys:", keys)
            assert keys == ["IM-DEDUP-eve%s-x:1" % t, "IM-DEDUP-eve%s:x-1" % t], keys
        await close_all([ce, cx, cb])
    run(go())


# ------------------------------------------------------------- item 6: frames


def test_bad_ids_in_frames(mgw):
    print("check (%s): receiver_id / group_id / sender_id / client_msg_id outside "
          "the id rule -> ERR_INVALID_PARAM naming the field and rule; nothing is "
          "stored for the made-up receiver; read receipts too" % mgw.backend.name)

    async def go():
        a = uid("a")
        ca = await MClient.open(mgw, a)
        bad_receivers = ["b\x01" + a, "b\n", "b c", "b:c", "b/c", "b*", "b\u00e9"]
        for to in bad_receivers:
            r = await ca.send_msg(to=to)
            print("  receiver_id %r -> %s %r" % (to[:20], r.error_code, r.error_msg))
            assert r.error_code == INVALID, r
            assert r.error_msg.startswith("receiver_id "), r
        r = await ca.send_msg(to="b\x01" + a)
        assert RULE in r.error_msg, r
        r = await ca.send_msg(group="g:1")
        print("  group_id 'g:1' ->", r.error_code, r.error_msg)
        assert r.error_code == INVALID and r.error_msg.startswith("group_id "), r
        r = await ca.send_msg(to=uid("b"), client_msg_id="a b")
        print("  client_msg_id 'a b' ->", r.error_code, r.error_msg)
        assert r.error_code == INVALID and "client_msg_id" in r.error_msg, r
        assert "printable ASCII" in r.error_msg, r
        r = await ca.send_msg(to=uid("b"), client_msg_id="c\x7f")
        assert r.error_code == INVALID, r
        r = await ca.send_msg(to=uid("b"), sender=a + "\x01")
        print("  sender_id with \\x01 ->", r.error_code, r.error_msg)
        assert r.error_code == INVALID and r.error_msg.startswith("sender_id "), r
        # ':' and '/' are fine inside a client_msg_id
        ok = await ca.send_ok(to=uid("b"), client_msg_id="k:1/2")
        assert ok.seq >= 1
        # read receipts: a conversation naming a bad peer or group
        for conv in ("s_%s_b\x01" % a, "g_bad:gid", "s_%s_b c" % a):
            f = await ca.request("CMD_READ_RECEIPT_REQ",
                                 pb.ReadReceiptRequest(conversation_id=conv,
                                                       message_ids=["1"]),
                                 expect="CMD_READ_RECEIPT_RSP")
            print("  read receipt %r -> %s %r" % (conv, f.body.error_code, f.body.error_msg))
            assert f.body.error_code == INVALID, f
        # the connection is still fine
        await ca.heartbeat()
        s = await ca.sync()
        assert [m.client_msg_id for m in s.messages] == ["k:1/2"], s
        if mgw.backend.name == "redis":
            rc = mgw.backend.service.client()
            assert rc.exists("IM-SEQ-b\x01" + a) == 0
            assert rc.exists("IM-SEQ-b:c") == 0
        await close_all([ca])
    run(go())


def test_bad_ids_at_auth(mgw):
    print("check (%s): AuthRequest.user_id or the token's subject outside the id "
          "rule -> ERR_INVALID_PARAM with the rule, close 4001; at the handshake "
          "a token with such a subject is 400" % mgw.backend.name)

    async def go():
        for user_id, sub in (("a b", None), ("a:b", None), ("", "Jos\u00e9"),
                             ("", "a b"), ("", "a:b")):
            token = make_token(sub if sub is not None else user_id)
            c = await MClient.open(mgw, user_id, token=token, expect_ok=False)
            print("  user_id %r token sub %r -> %s %r" % (
                user_id, sub, c.auth_rsp.error_code, c.auth_rsp.error_msg))
            assert c.auth_rsp.error_code == INVALID, c.auth_rsp
            assert ("user_id " if sub is None else "the token's user id ") in \
                c.auth_rsp.error_msg, c.auth_rsp
            code = await c.wait_closed(5)
            print("    then close", code)
            assert code == 4001, code
    run(go())
    for sub in ("a b", "a:b", "Jos\u00e9"):
        st = handshake_status(mgw.port, make_token(sub))
        print("  handshake with a token for %r -> %d" % (sub, st))
        assert st == 400, st
    assert handshake_status(mgw.port, make_token(uid("ok"))) == 101


def test_bad_ids_http(mserver):
    print("check: /api/groups/{gid}, its members, /api/push ids and /dev/token's "
          "user outside the id rule -> 400 naming the rule")
    s = mserver(env={"IMGW__AUTH__DEV_TOKENS": "true"})
    for gid in ("g:1", "g%20x", "g*"):
        r = http_json(s.port, "PUT", "/api/groups/" + gid, {"members": ["a"]})
        print("  PUT /api/groups/%s -> %r" % (gid, r))
        assert r.status == 400 and r.json["error"].startswith("group id "), r
    r = http_json(s.port, "PUT", "/api/groups/" + uid("g"), {"members": ["a", "b\u0001"]})
    print("  member b\\x01 ->", r)
    assert r.status == 400 and r.json["error"].startswith("member id must not contain control"), r
    assert RULE in r.json["error"], r
    r = http_json(s.port, "PUT", "/api/groups/" + uid("g"), {"members": ["a", "b:c"]})
    assert r.status == 400 and "member id" in r.json["error"], r
    for ids in (["ok", "b\u0001"], ["a b"], [""], ["x" * 128]):
        r = http_json(s.port, "POST", "/api/push",
                      {"code": 202, "ids": ids, "data": {"content": "x"}})
        print("  /api/push ids %r -> %r" % ([i[:10] for i in ids], r))
        assert r.status == 400 and r.json["error"].startswith("ids: "), r
    r = http_json(s.port, "GET", "/dev/token?user=a%3Ab", token=None)
    print("  /dev/token?user=a:b ->", r)
    assert r.status == 400 and r.json["error"] == "user " + RULE, r
    r = http_json(s.port, "GET", "/dev/token?user=" + uid("u"), token=None)
    assert r.status == 200, r
    # the valid forms still work
    put_group(s.port, uid("g"), ["a.b@example.com", "c_d", "e-f"])


# ------------------------------------------------------------- item 6: state


def test_redis_seq_ttl(mserver, store_backend):
    if store_backend.name != "redis":
        pytest.skip("IM-SEQ is a Redis key")
    print("check: after a send IM-SEQ-{receiver} has a TTL of retention_days + "
          "seq_idle_days (here 7 + 2 days); an auth restarts it")
    s = mserver(env={"IMGW__STORE__SEQ_IDLE_DAYS": "2"})
    rc = store_backend.service.client()
    full = 9 * 86400

    async def go():
        a, b = uid("a"), uid("b")
        ca = await MClient.open(s, a)
        await ca.send_ok(to=b)
        ttl = rc.ttl("IM-SEQ-" + b)
        print("  TTL IM-SEQ-%s = %d s (TL: %d s)" % (b, ttl, rc.ttl("IM-TL-" + b)))
        assert full - 60 < ttl <= full, ttl
        assert ttl > rc.ttl("IM-TL-" + b)
        rc.expire("IM-SEQ-" + b, 1000)
        cb = await MClient.open(s, b)
        assert cb.auth_rsp.max_seq == 1, cb.auth_rsp
        ttl = rc.ttl("IM-SEQ-" + b)
        print("  after b's auth: TTL %d s" % ttl)
        assert full - 60 < ttl <= full, ttl
        await close_all([ca, cb])
    run(go())


def _metric(port, name):
    r = H.http_get(port, "/metrics")
    for line in r.body.decode().splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[1]))
    return None


def test_memory_user_cap(mserver, store_backend):
    if store_backend.name != "memory":
        pytest.skip("store.max_users bounds the memory backend")
    print("check: store.max_users = 4: sends that need a new user record get "
          "ERR_SERVER_BUSY and are counted; sends between known users go on")
    s = mserver(env={"IMGW__STORE__MAX_USERS": "4"})

    async def go():
        a, b = uid("a"), uid("b")
        ca = await MClient.open(s, a)   # a's record (route)
        await ca.send_ok(to=b)          # b's record: 2
        await ca.send_ok(to=uid("c"))   # 3
        await ca.send_ok(to=uid("d"))   # 4
        refused = []
        for i in range(3):
            r = await ca.send_msg(to=uid("made-up"))
            print("  send to a new user -> %s %r" % (r.error_code, r.error_msg))
            refused.append(r.error_code)
        assert refused == [BUSY] * 3, refused
        r = await ca.send_ok(to=b)       # known users still work
        assert r.seq == 4, r  # a's 4th stored message
        print("  imgw_store_users %s, refused %s" % (
            _metric(s.port, "imgw_store_users"),
            _metric(s.port, "imgw_store_users_refused_total")))
        assert _metric(s.port, "imgw_store_users") == 4
        assert _metric(s.port, "imgw_store_users_max") == 4
        assert _metric(s.port, "imgw_store_users_refused_total") >= 3
        await close_all([ca])
    run(go())
