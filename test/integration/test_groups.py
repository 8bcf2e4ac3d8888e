"""Groups: the /api/groups admin API and group messaging (protocol.md 1, 5, 10).

PUT/GET/DELETE /api/groups/{gid} with `Authorization: Bearer <admin_token>`;
group sends reach every member's online connections (any loop, -t 4) except
the sending connection; offline members sync. Every test runs once per store
backend.
"""

import asyncio

import pytest

from imgw_harness import run
from msg_helpers import (  # noqa: F401  (fixtures)
    ADMIN_TOKEN, DENIED, INVALID, NO_CONV, MClient, assert_code,
    check_push_matches, close_all, group_conv, http_json, is_msg, mgw, mserver,
    put_group, store_backend, uid)


# ------------------------------------------------------------------ HTTP API


def test_group_api_put_get_delete(mgw):
    print("check: PUT {members} -> 200; GET -> 200 {group_id, members}; PUT again "
          "replaces; DELETE -> 200; GET after delete -> 404")
    gid = uid("grp")
    r = http_json(mgw.port, "PUT", "/api/groups/" + gid, {"members": ["m1", "m2", "m3"]})
    print("PUT:", r)
    assert r.status == 200, r
    r = http_json(mgw.port, "GET", "/api/groups/" + gid)
    print("GET:", r)
    assert r.status == 200, r
    assert r.json is not None, "GET body is not JSON: %r" % r
    assert r.json.get("group_id") == gid, r.json
    assert sorted(r.json.get("members", [])) == ["m1", "m2", "m3"], r.json
    r = http_json(mgw.port, "PUT", "/api/groups/" + gid, {"members": ["m2", "m4"]})
    assert r.status == 200, r
    r = http_json(mgw.port, "GET", "/api/groups/" + gid)
    print("GET after replace:", r)
    assert r.status == 200 and sorted(r.json["members"]) == ["m2", "m4"], r
    r = http_json(mgw.port, "DELETE", "/api/groups/" + gid)
    print("DELETE:", r)
    assert r.status == 200, r
    r = http_json(mgw.port, "GET", "/api/groups/" + gid)
    print("GET after DELETE:", r)
    assert r.status == 404, r


def test_group_api_get_missing_404(mgw):
    print("check: GET of a group that never existed -> 404")
    r = http_json(mgw.port, "GET", "/api/groups/" + uid("never"))
    print(r)
    assert r.status == 404, r


@pytest.mark.parametrize("method", ["PUT", "GET", "DELETE"])
@pytest.mark.parametrize("token", [None, "wrong-token", ADMIN_TOKEN + "x", ""])
def test_group_api_bad_token_401(mgw, method, token):
    print("check: %s /api/groups with bearer %r -> 401, nothing changed" % (method, token))
    gid = uid("grp")
    put_group(mgw.port, gid, ["keep"])
    body = {"members": ["intruder"]} if method == "PUT" else None
    r = http_json(mgw.port, method, "/api/groups/" + gid, body, token=token)
    print(r)
    assert r.status == 401, r
    r = http_json(mgw.port, "GET", "/api/groups/" + gid)
    assert r.status == 200 and r.json["members"] == ["keep"], r


def test_group_api_basic_scheme_401(mgw):
    print("check: Authorization: Basic <admin token> is not a bearer -> 401")
    r = http_json(mgw.port, "GET", "/api/groups/" + uid("g"), token=None,
                  headers={"Authorization": "Basic " + ADMIN_TOKEN})
    print(r)
    assert r.status == 401, r


@pytest.mark.parametrize("raw", [
    "not json",
    "{}",
    '{"members": "u1"}',
    '{"members": [1, 2]}',
    '{"members": [["u1"]]}',
    '[]',
    '{"members": ["u1"]',
])
def test_group_api_bad_body_400(mgw, raw):
    print("check: PUT /api/groups with body %r -> 400; the group is unchanged" % raw)
    gid = uid("grp")
    put_group(mgw.port, gid, ["orig"])
    r = http_json(mgw.port, "PUT", "/api/groups/" + gid, raw_body=raw)
    print(r)
    assert r.status == 400, r
    # The error body is JSON (its message quotes the rule, braces and all).
    assert r.json is not None and isinstance(r.json.get("error"), str), r
    r = http_json(mgw.port, "GET", "/api/groups/" + gid)
    assert r.status == 200 and r.json["members"] == ["orig"], r


def test_group_api_error_body_is_valid_json(mgw):
    print("check: PUT /api/groups with a bad body answers 400 with valid JSON whose "
          "error names the expected shape, quotes escaped")
    gid = uid("grp")
    r = http_json(mgw.port, "PUT", "/api/groups/" + gid, raw_body='{"members": "u1"}')
    print(r)
    assert r.status == 400, r
    assert r.json is not None, "error body is not JSON: %r" % r.raw
    print("error message:", r.json["error"])
    assert r.json["error"] == 'body must be {"members":[user ids]}', r.json


@pytest.mark.parametrize("what,body", [
    ("1001 members", {"members": ["m%d" % i for i in range(1001)]}),
    ("member with '/'", {"members": ["a/b"]}),
    ("member with a control character", {"members": ["a\nb"]}),
    ("empty member id", {"members": [""]}),
    ("member id of 128 bytes", {"members": ["m" * 128]}),
])
def test_group_api_documented_limits_400(mgw, what, body):
    print("check (docs/protocol.md HTTP API: ids 1..127 bytes, no control characters, "
          "no '/', at most 1000 members): PUT with %s -> 400" % what)
    gid = uid("grp")
    r = http_json(mgw.port, "PUT", "/api/groups/" + gid, body)
    print(r)
    assert r.status == 400, r
    assert http_json(mgw.port, "GET", "/api/groups/" + gid).status == 404


def test_group_api_1000_members_ok(mgw):
    print("check: a group of exactly 1000 members (127-byte ids allowed) is accepted "
          "and returned in full")
    gid = uid("grp")
    members = ["%s-%04d" % (gid, i) for i in range(999)] + ["x" * 127]
    r = http_json(mgw.port, "PUT", "/api/groups/" + gid, {"members": members})
    print(r)
    assert r.status == 200, r
    r = http_json(mgw.port, "GET", "/api/groups/" + gid)
    assert r.status == 200 and sorted(r.json["members"]) == sorted(members), (
        r.status, len((r.json or {}).get("members", [])))


def test_group_api_disabled_without_admin_token(mserver):
    s = mserver(threads=1, admin_token=None)
    print("check: admin_token unset -> /api/groups and /api/push answer 404 "
          "(with or without a bearer)")
    for method, path, body in (("PUT", "/api/groups/g1", {"members": ["a"]}),
                               ("GET", "/api/groups/g1", None),
                               ("DELETE", "/api/groups/g1", None),
                               ("POST", "/api/push", {"code": 202, "ids": ["a"], "data": {}})):
        for tok in (None, ADMIN_TOKEN):
            r = http_json(s.port, method, path, body, token=tok)
            print(method, path, tok, "->", r)
            assert r.status == 404, (method, path, r)


# ------------------------------------------------------------ group messaging


def test_group_send_reaches_every_member(mgw):
    print("check: -t 4; group of 12 (10 online: mixed codecs, two with a second device; "
          "2 offline); a send reaches every member connection once (seq = that member's "
          "timeline seq, group_id, conversation_id g_<gid>), not the sending connection "
          "but the sender's other device; non-members get nothing; offline members sync it")

    async def go():
        gid = uid("grp")
        members = [uid("gm") for _ in range(12)]
        outsider = uid("out")
        put_group(mgw.port, gid, members)
        online = members[:10]
        conns = {}
        for i, u in enumerate(online):
            conns[u] = [await MClient.open(mgw, u, codec="json" if i % 3 == 0 else "pb")]
        for u in (online[0], online[5]):
            conns[u].append(await MClient.open(mgw, u, platform="iOS",
                                               codec="pb" if conns[u][0].codec == "json" else "json"))
        co = await MClient.open(mgw, outsider)
        sender = conns[online[0]][0]
        rsp = await sender.send_ok(group=gid, content="hello group", extra={"g": "1"},
                                   conversation_id=group_conv(gid))
        print("send:", rsp)
        assert rsp.seq == 1, rsp
        for u in online:
            for c in conns[u]:
                if c is sender:
                    continue
                p = await c.wait_push("CMD_PUSH_MSG", timeout=5)
                assert p.codec == c.codec
                check_push_matches(p.body, rsp.req, rsp, receiver_seq=1,
                                   what="group push to %s" % c.label)
        await asyncio.sleep(0.4)
        for u in online:
            for c in conns[u]:
                n = len(c.pushes("CMD_PUSH_MSG"))
                assert n == (0 if c is sender else 1), "%s got %d pushes: %r" % (c.label, n, c.frames)
        assert co.pushes() == [], "non-member got frames: %r" % co.frames
        for u in members[10:]:
            c = await MClient.open(mgw, u)
            assert c.auth_rsp.max_seq == 1, c.auth_rsp
            s = await c.sync()
            assert len(s.messages) == 1, s
            check_push_matches(s.messages[0], rsp.req, rsp, receiver_seq=1,
                               what="synced group message of %s" % u)
            await c.close()
        await close_all([c for cs in conns.values() for c in cs] + [co])
    run(go())


def test_group_seq_is_per_member_timeline(mgw):
    print("check: a group push carries each receiver's own timeline seq (members with "
          "different histories get different seqs)")

    async def go():
        a, b, c = uid("a"), uid("b"), uid("c")
        gid = uid("grp")
        put_group(mgw.port, gid, [a, b, c])
        ca = await MClient.open(mgw, a)
        cb = await MClient.open(mgw, b, codec="json")
        cc = await MClient.open(mgw, c)
        await ca.send_ok(to=b, content="private 1")
        await ca.send_ok(to=b, content="private 2")
        await cb.wait_push("CMD_PUSH_MSG", count=2)
        rsp = await cc.send_ok(group=gid, content="group")
        assert rsp.seq == 1, rsp
        pa = await ca.wait_push("CMD_PUSH_MSG", is_msg(rsp.message_id))
        pb_ = await cb.wait_push("CMD_PUSH_MSG", is_msg(rsp.message_id))
        print("a seq", pa.body.seq, "b seq", pb_.body.seq)
        assert pa.body.seq == 3, pa
        assert pb_.body.seq == 3, pb_
        # a: 1, 2 sent + group = 3; b: 2 received + group = 3; now make them differ
        await cb.send_ok(to=c, content="b to c")
        rsp2 = await ca.send_ok(group=gid, content="group 2")
        pb2 = await cb.wait_push("CMD_PUSH_MSG", is_msg(rsp2.message_id))
        pc2 = await cc.wait_push("CMD_PUSH_MSG", is_msg(rsp2.message_id))
        print("rsp2 seq", rsp2.seq, "b", pb2.body.seq, "c", pc2.body.seq)
        assert (rsp2.seq, pb2.body.seq, pc2.body.seq) == (4, 5, 3), (rsp2, pb2, pc2)
        await close_all([ca, cb, cc])
    run(go())


def test_group_send_errors(mgw):
    print("check: unknown group -> ERR_CONVERSATION_NOT_EXIST; sender not a member -> "
          "ERR_PERMISSION_DENIED; wrong conversation_id -> ERR_INVALID_PARAM; deleted "
          "group -> ERR_CONVERSATION_NOT_EXIST; member removed by PUT -> DENIED; nothing "
          "pushed to members")

    async def go():
        a, b, x = uid("a"), uid("b"), uid("x")
        gid = uid("grp")
        put_group(mgw.port, gid, [a, b])
        ca = await MClient.open(mgw, a)
        cb = await MClient.open(mgw, b, codec="json")
        cx = await MClient.open(mgw, x)
        r = await cx.send_msg(group=uid("nogrp"))
        print("unknown group:", r)
        assert_code(r, NO_CONV, "unknown group")
        r = await cx.send_msg(group=gid)
        print("non-member:", r)
        assert_code(r, DENIED, "non-member")
        r = await ca.send_msg(group=gid, conversation_id=group_conv(gid + "x"))
        print("wrong conversation_id:", r)
        assert_code(r, INVALID, "wrong conversation_id")
        r = await ca.send_msg(group=gid, conversation_id="s_%s_%s" % (a, b))
        assert_code(r, INVALID, "single conversation_id for a group")
        await cb.expect_no_push(wait=0.4)
        ok = await ca.send_ok(group=gid, content="fine")
        await cb.wait_push("CMD_PUSH_MSG", is_msg(ok.message_id))
        put_group(mgw.port, gid, [b, x])
        r = await ca.send_msg(group=gid)
        print("removed member:", r)
        assert_code(r, DENIED, "removed member")
        ok2 = await cx.send_ok(group=gid, content="x joined")
        await cb.wait_push("CMD_PUSH_MSG", is_msg(ok2.message_id))
        await ca.expect_no_push("CMD_PUSH_MSG", is_msg(ok2.message_id), wait=0.3)
        assert http_json(mgw.port, "DELETE", "/api/groups/" + gid).status == 200
        r = await cb.send_msg(group=gid)
        print("deleted group:", r)
        assert_code(r, NO_CONV, "deleted group")
        await close_all([ca, cb, cx])
    run(go())


def test_group_dedupe(mgw):
    print("check: a group resend with the same client_msg_id -> same message_id/seq, "
          "members get one push")

    async def go():
        a, b, c = uid("a"), uid("b"), uid("c")
        gid = uid("grp")
        put_group(mgw.port, gid, [a, b, c])
        ca = await MClient.open(mgw, a, codec="json")
        cb = await MClient.open(mgw, b)
        cc = await MClient.open(mgw, c, codec="json")
        r1 = await ca.send_ok(group=gid, client_msg_id="g-dup-1")
        r2 = await ca.send_ok(group=gid, client_msg_id="g-dup-1")
        print(r1, r2)
        assert (r1.message_id, r1.seq) == (r2.message_id, r2.seq)
        await asyncio.sleep(0.5)
        for cl in (cb, cc):
            assert len(cl.pushes("CMD_PUSH_MSG")) == 1, (cl.label, cl.frames)
            s = await cl.sync()
            assert [m.message_id for m in s.messages] == [r1.message_id], s
        await close_all([ca, cb, cc])
    run(go())


def test_group_duplicate_members_single_delivery(mgw):
    print("check: PUT with duplicate member ids stores each member once; a group send "
          "then reaches each member connection once and appends once per timeline")

    async def go():
        a, b = uid("a"), uid("b")
        gid = uid("grp")
        put_group(mgw.port, gid, [a, b, b, a, b])
        r = http_json(mgw.port, "GET", "/api/groups/" + gid)
        print("GET:", r)
        assert sorted(r.json["members"]) == sorted([a, b]), r.json
        ca = await MClient.open(mgw, a)
        cb = await MClient.open(mgw, b, codec="json")
        rsp = await ca.send_ok(group=gid)
        assert rsp.seq == 1, rsp
        await cb.wait_push("CMD_PUSH_MSG")
        await asyncio.sleep(0.4)
        assert len(cb.pushes("CMD_PUSH_MSG")) == 1, cb.frames
        s = await cb.sync()
        assert [m.seq for m in s.messages] == [1] and s.server_max_seq == 1, s
        await close_all([ca, cb])
    run(go())
