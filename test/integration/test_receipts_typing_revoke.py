"""Read receipts, typing status and revoke (protocol.md 3, 5, 10).

Every test runs once per store backend.
"""

import asyncio
import time

import pytest

import imgw_harness as H
from imgw_harness import pb, run
from msg_helpers import (  # noqa: F401  (fixtures)
    DENIED, INVALID, NO_CONV, OK, MClient, assert_code, close_all, group_conv,
    mgw, mserver, put_group, single_conv, store_backend, uid)

ERROR_RSP = H.cmd_num("CMD_ERROR_RSP")


# ------------------------------------------------------------ read receipts


async def read_receipt(c, mids, conv):
    f = await c.request("CMD_READ_RECEIPT_REQ",
                        pb.ReadReceiptRequest(message_ids=mids, conversation_id=conv),
                        expect="CMD_READ_RECEIPT_RSP")
    return f.body


@pytest.mark.parametrize("codec", ["pb", "json"])
def test_read_receipt_single(mgw, codec):
    print("check (%s reader): READ_RECEIPT_REQ -> RSP success; the sender's devices and "
          "the reader's other device get READ_RECEIPT_PUSH {message_ids, conversation_id, "
          "user_id=reader, read_time}; the reading connection gets none" % codec)

    async def go():
        a, b = uid("a"), uid("b")
        aw = await MClient.open(mgw, a, codec="json" if codec == "pb" else "pb")
        ai = await MClient.open(mgw, a, platform="iOS")
        bw = await MClient.open(mgw, b, codec=codec)
        bi = await MClient.open(mgw, b, codec="json", platform="iOS")
        r1 = await aw.send_ok(to=b, content="read me 1")
        r2 = await aw.send_ok(to=b, content="read me 2")
        await bw.wait_push("CMD_PUSH_MSG", count=2)
        conv = single_conv(a, b)
        t0 = int(time.time() * 1000) - 5000
        rsp = await read_receipt(bw, [r1.message_id, r2.message_id], conv)
        print("response:", rsp)
        assert_code(rsp, OK, "read receipt")
        for c in (aw, ai, bi):
            p = await c.wait_push("CMD_READ_RECEIPT_PUSH")
            print("push to %s:" % c.label, p)
            assert p.codec == c.codec
            assert list(p.body.message_ids) == [r1.message_id, r2.message_id], p
            assert p.body.conversation_id == conv, p
            assert p.body.user_id == b, p
            assert p.body.read_time >= t0, "read_time not set: %r" % p
        await bw.expect_no_push("CMD_READ_RECEIPT_PUSH", wait=0.4)
        for c in (aw, ai, bi):
            assert len(c.pushes("CMD_READ_RECEIPT_PUSH")) == 1, c.frames
        # receipts are not messages: timelines unchanged
        s = await bi.sync()
        assert [m.message_id for m in s.messages] == [r1.message_id, r2.message_id], s
        await close_all([aw, ai, bw, bi])
    run(go())


def test_read_receipt_group(mgw):
    print("check: group read receipt -> every other member's connection and the reader's "
          "other device get the push; the reading connection none; non-members none")

    async def go():
        a, b, c, x = uid("a"), uid("b"), uid("c"), uid("x")
        gid = uid("grp")
        put_group(mgw.port, gid, [a, b, c])
        ca = await MClient.open(mgw, a)
        cb = await MClient.open(mgw, b, codec="json")
        cb2 = await MClient.open(mgw, b, platform="iOS")
        cc = await MClient.open(mgw, c)
        cx = await MClient.open(mgw, x)
        r = await ca.send_ok(group=gid, content="g")
        await cb.wait_push("CMD_PUSH_MSG")
        rsp = await read_receipt(cb, [r.message_id], group_conv(gid))
        assert_code(rsp, OK)
        for cl in (ca, cc, cb2):
            p = await cl.wait_push("CMD_READ_RECEIPT_PUSH")
            print("push to %s:" % cl.label, p)
            assert p.body.user_id == b and p.body.conversation_id == group_conv(gid), p
            assert list(p.body.message_ids) == [r.message_id], p
        await cb.expect_no_push("CMD_READ_RECEIPT_PUSH", wait=0.3)
        assert cx.pushes() == [], cx.frames
        await close_all([ca, cb, cb2, cc, cx])
    run(go())


def test_read_receipt_errors(mgw):
    print("check: READ_RECEIPT on a single conversation the user is not part of -> "
          "ERR_INVALID_PARAM; group non-member -> ERR_PERMISSION_DENIED; unknown group -> "
          "ERR_CONVERSATION_NOT_EXIST; nothing pushed")

    async def go():
        a, b, x = uid("a"), uid("b"), uid("x")
        gid = uid("grp")
        put_group(mgw.port, gid, [a, b])
        ca = await MClient.open(mgw, a)
        cb = await MClient.open(mgw, b)
        cx = await MClient.open(mgw, x, codec="json")
        r = await ca.send_ok(to=b)
        await cb.wait_push("CMD_PUSH_MSG")
        rsp = await read_receipt(cx, [r.message_id], single_conv(a, b))
        print("foreign single conversation:", rsp)
        assert_code(rsp, INVALID, "foreign single conversation")
        rsp = await read_receipt(cx, [r.message_id], group_conv(gid))
        print("group non-member:", rsp)
        assert_code(rsp, DENIED, "group non-member")
        rsp = await read_receipt(cx, [r.message_id], group_conv(uid("nogrp")))
        print("unknown group:", rsp)
        assert_code(rsp, NO_CONV, "unknown group")
        await asyncio.sleep(0.4)
        assert ca.pushes("CMD_READ_RECEIPT_PUSH") == [], ca.frames
        assert cb.pushes("CMD_READ_RECEIPT_PUSH") == [], cb.frames
        await close_all([ca, cb, cx])
    run(go())


# ------------------------------------------------------------------- typing


async def typing(c, conv, status):
    """Send TYPING_STATUS_REQ; returns (seq, future of a response)."""
    return await c.send_nowait("CMD_TYPING_STATUS_REQ",
                               pb.TypingStatusRequest(conversation_id=conv, status=status))


@pytest.mark.parametrize("codec", ["pb", "json"])
def test_typing_single(mgw, codec):
    print("check (%s): TYPING_STATUS_REQ -> no response; the other participant's "
          "connections get TYPING_STATUS_PUSH {conversation_id, user_id, status}; the "
          "typist's own devices get nothing; typing is never stored" % codec)

    async def go():
        a, b = uid("a"), uid("b")
        aw = await MClient.open(mgw, a, codec=codec)
        ai = await MClient.open(mgw, a, platform="iOS")
        bw = await MClient.open(mgw, b, codec="json")
        bi = await MClient.open(mgw, b, platform="iOS")
        conv = single_conv(a, b)
        _, fut = await typing(aw, conv, 1)
        for c in (bw, bi):
            p = await c.wait_push("CMD_TYPING_STATUS_PUSH")
            print("push to %s:" % c.label, p)
            assert (p.body.conversation_id, p.body.user_id, p.body.status) == (conv, a, 1), p
        _, fut2 = await typing(aw, conv, 0)
        p = await bw.wait_push("CMD_TYPING_STATUS_PUSH", lambda f: f.body.status == 0)
        assert p.body.user_id == a
        await asyncio.sleep(0.4)
        assert not fut.done() and not fut2.done(), "typing got a response: %r" % (
            fut.result() if fut.done() else fut2.result())
        assert aw.frames == [], "typist got frames: %r" % aw.frames
        assert ai.pushes("CMD_TYPING_STATUS_PUSH") == [], ai.frames
        assert len(bw.pushes("CMD_TYPING_STATUS_PUSH")) == 2
        for c in (aw, bw):
            s = await c.sync()
            assert list(s.messages) == [] and s.server_max_seq == 0, s
        await close_all([aw, ai, bw, bi])
    run(go())


def test_typing_group(mgw):
    print("check: typing in a group -> every other member gets the push, the typist none")

    async def go():
        ms = [uid("gm") for _ in range(4)]
        gid = uid("grp")
        put_group(mgw.port, gid, ms)
        cs = [await MClient.open(mgw, u, codec="json" if i % 2 else "pb")
              for i, u in enumerate(ms)]
        _, fut = await typing(cs[0], group_conv(gid), 1)
        for c in cs[1:]:
            p = await c.wait_push("CMD_TYPING_STATUS_PUSH")
            assert (p.body.conversation_id, p.body.user_id, p.body.status) == (
                group_conv(gid), ms[0], 1), p
        await asyncio.sleep(0.3)
        assert cs[0].frames == [] and not fut.done(), cs[0].frames
        await close_all(cs)
    run(go())


@pytest.mark.parametrize("codec", ["pb", "json"])
def test_typing_errors(mgw, codec):
    print("check (%s): typing errors come as CMD_ERROR_RSP echoing the sequence: foreign "
          "single conversation -> ERR_INVALID_PARAM, group non-member -> "
          "ERR_PERMISSION_DENIED, unknown group -> ERR_CONVERSATION_NOT_EXIST, malformed "
          "conversation_id -> ERR_INVALID_PARAM; nobody gets a push; connection stays up"
          % codec)

    async def go():
        a, b, x = uid("a"), uid("b"), uid("x")
        gid = uid("grp")
        put_group(mgw.port, gid, [a, b])
        ca = await MClient.open(mgw, a)
        cb = await MClient.open(mgw, b)
        cx = await MClient.open(mgw, x, codec=codec)
        cases = [(single_conv(a, b), INVALID, "foreign single conversation"),
                 (group_conv(gid), DENIED, "group non-member"),
                 (group_conv(uid("nogrp")), NO_CONV, "unknown group"),
                 ("garbage", INVALID, "malformed conversation_id"),
                 ("", INVALID, "empty conversation_id")]
        for conv, code, what in cases:
            seq, fut = await typing(cx, conv, 1)
            f = await asyncio.wait_for(fut, 5)
            print("%s -> %r" % (what, f))
            assert f.command == ERROR_RSP, "%s: expected CMD_ERROR_RSP, got %r" % (what, f)
            assert f.sequence == seq, f
            assert_code(f.body, code, what)
        await asyncio.sleep(0.3)
        assert ca.pushes() == [] and cb.pushes() == [], (ca.frames, cb.frames)
        await cx.heartbeat()
        await close_all([ca, cb, cx])
    run(go())


# ------------------------------------------------------------------- revoke


async def revoke(c, mid, conv):
    f = await c.request("CMD_REVOKE_MSG_REQ",
                        pb.RevokeMessageRequest(message_id=mid, conversation_id=conv),
                        expect="CMD_REVOKE_MSG_RSP")
    return f.body


@pytest.mark.parametrize("codec", ["pb", "json"])
def test_revoke_single(mgw, codec):
    print("check (%s): the sender revokes -> RSP success; the receiver's connections and "
          "the sender's other device get REVOKE_MSG_PUSH {message_id, conversation_id, "
          "revoked_by, revoked_time}; not the requesting connection; later syncs (both "
          "sides) return it with empty content and extra[revoked]=1; other messages intact"
          % codec)

    async def go():
        a, b = uid("a"), uid("b")
        aw = await MClient.open(mgw, a, codec=codec)
        ai = await MClient.open(mgw, a, platform="iOS", codec="json")
        bw = await MClient.open(mgw, b)
        bi = await MClient.open(mgw, b, platform="iOS", codec=codec)
        keep = await aw.send_ok(to=b, content="stays")
        gone = await aw.send_ok(to=b, content="secret", extra={"k": "v"})
        await bw.wait_push("CMD_PUSH_MSG", count=2)
        conv = single_conv(a, b)
        t0 = int(time.time() * 1000) - 5000
        rsp = await revoke(aw, gone.message_id, conv)
        print("revoke response:", rsp)
        assert_code(rsp, OK, "revoke")
        for c in (ai, bw, bi):
            p = await c.wait_push("CMD_REVOKE_MSG_PUSH")
            print("push to %s:" % c.label, p)
            assert p.codec == c.codec
            assert (p.body.message_id, p.body.conversation_id, p.body.revoked_by) == (
                gone.message_id, conv, a), p
            assert p.body.revoked_time >= t0, p
        await aw.expect_no_push("CMD_REVOKE_MSG_PUSH", wait=0.4)
        for c in (ai, bw):
            s = await c.sync()
            print("%s timeline after revoke:" % c.label, s)
            byid = {m.message_id: m for m in s.messages}
            assert set(byid) == {keep.message_id, gone.message_id}, s
            m = byid[gone.message_id]
            assert bytes(m.content) == b"", "revoked message still has content: %r" % m
            assert m.extra.get("revoked") == "1", "extra[revoked] missing: %r" % m
            k = byid[keep.message_id]
            assert bytes(k.content) == b"stays" and "revoked" not in k.extra, k
            assert [m.seq for m in s.messages] == [1, 2], "revoke changed seqs: %r" % s
        await close_all([aw, ai, bw, bi])
    run(go())


def test_revoke_group(mgw):
    print("check: revoking a group message pushes REVOKE_MSG_PUSH to every other member; "
          "members' syncs show it revoked")

    async def go():
        ms = [uid("gm") for _ in range(4)]
        gid = uid("grp")
        put_group(mgw.port, gid, ms)
        cs = [await MClient.open(mgw, u, codec="json" if i % 2 else "pb")
              for i, u in enumerate(ms)]
        r = await cs[0].send_ok(group=gid, content="oops")
        for c in cs[1:]:
            await c.wait_push("CMD_PUSH_MSG")
        rsp = await revoke(cs[0], r.message_id, group_conv(gid))
        assert_code(rsp, OK)
        for c in cs[1:]:
            p = await c.wait_push("CMD_REVOKE_MSG_PUSH")
            assert (p.body.message_id, p.body.conversation_id, p.body.revoked_by) == (
                r.message_id, group_conv(gid), ms[0]), p
            s = await c.sync()
            assert len(s.messages) == 1 and bytes(s.messages[0].content) == b"" \
                and s.messages[0].extra.get("revoked") == "1", s
        await close_all(cs)
    run(go())


def test_revoke_errors(mgw):
    print("check: revoke by the receiver -> ERR_PERMISSION_DENIED; by an outsider -> "
          "ERR_PERMISSION_DENIED; unknown message_id -> ERR_INVALID_PARAM; message untouched")

    async def go():
        a, b, x = uid("a"), uid("b"), uid("x")
        ca = await MClient.open(mgw, a)
        cb = await MClient.open(mgw, b, codec="json")
        cx = await MClient.open(mgw, x)
        r = await ca.send_ok(to=b, content="mine")
        await cb.wait_push("CMD_PUSH_MSG")
        conv = single_conv(a, b)
        rsp = await revoke(cb, r.message_id, conv)
        print("by receiver:", rsp)
        assert_code(rsp, DENIED, "revoke by receiver")
        rsp = await revoke(cx, r.message_id, conv)
        print("by outsider:", rsp)
        assert rsp.error_code in (DENIED,), "revoke by outsider: %r" % rsp
        rsp = await revoke(ca, "12345", conv)
        print("unknown id:", rsp)
        assert_code(rsp, INVALID, "unknown message_id")
        rsp = await revoke(ca, "", conv)
        print("empty id:", rsp)
        assert_code(rsp, INVALID, "empty message_id")
        await asyncio.sleep(0.3)
        assert ca.pushes("CMD_REVOKE_MSG_PUSH") == [] and cb.pushes("CMD_REVOKE_MSG_PUSH") == []
        s = await cb.sync()
        assert bytes(s.messages[0].content) == b"mine" and "revoked" not in s.messages[0].extra, s
        await close_all([ca, cb, cx])
    run(go())


def test_revoke_after_window_refused(mserver):
    s = mserver(threads=2, revoke_window=1)
    print("check: revoke_window=1; revoke after 2.5 s -> ERR_PERMISSION_DENIED, no push, "
          "content intact; a fresh message can still be revoked at once")

    async def go():
        a, b = uid("a"), uid("b")
        ca = await MClient.open(s, a)
        cb = await MClient.open(s, b, codec="json")
        old = await ca.send_ok(to=b, content="too late")
        await asyncio.sleep(2.5)
        rsp = await revoke(ca, old.message_id, single_conv(a, b))
        print("late revoke:", rsp)
        assert_code(rsp, DENIED, "revoke after the window")
        fresh = await ca.send_ok(to=b, content="quick")
        rsp = await revoke(ca, fresh.message_id, single_conv(a, b))
        print("quick revoke:", rsp)
        assert_code(rsp, OK, "revoke within the window")
        p = await cb.wait_push("CMD_REVOKE_MSG_PUSH")
        assert p.body.message_id == fresh.message_id, p
        assert len(cb.pushes("CMD_REVOKE_MSG_PUSH")) == 1, cb.frames
        st = await cb.sync()
        byid = {m.message_id: m for m in st.messages}
        assert bytes(byid[old.message_id].content) == b"too late", st
        assert byid[fresh.message_id].extra.get("revoked") == "1", st
        await close_all([ca, cb])
    run(go())


def test_revoke_conversation_mismatch(mgw):
    print("check (docs/protocol.md): revoke with a conversation_id other than the "
          "message's -> ERR_INVALID_PARAM; an empty conversation_id uses the stored one")

    async def go():
        a, b, c = uid("a"), uid("b"), uid("c")
        ca = await MClient.open(mgw, a)
        cb = await MClient.open(mgw, b)
        r = await ca.send_ok(to=b, content="x")
        rsp = await revoke(ca, r.message_id, single_conv(a, c))
        print("mismatch:", rsp)
        assert_code(rsp, INVALID, "conversation mismatch")
        await cb.expect_no_push("CMD_REVOKE_MSG_PUSH", wait=0.3)
        rsp = await revoke(ca, r.message_id, "")
        print("empty conversation_id:", rsp)
        assert_code(rsp, OK, "revoke without conversation_id")
        p = await cb.wait_push("CMD_REVOKE_MSG_PUSH")
        assert p.body.conversation_id == single_conv(a, b), p
        await close_all([ca, cb])
    run(go())


def test_read_receipt_json_reader(mgw):
    print("check: a JSON reader acknowledges a binary sender's message: the sender "
          "gets a protobuf READ_RECEIPT_PUSH with user_id = reader")

    async def go():
        a, b = uid("a"), uid("b")
        ca = await MClient.open(mgw, a, codec="json")
        cb = await MClient.open(mgw, b)
        r = await cb.send_ok(to=a, content="hi a")
        await ca.wait_push("CMD_PUSH_MSG")
        rsp = await read_receipt(ca, [r.message_id], single_conv(a, b))
        assert_code(rsp, OK)
        p = await cb.wait_push("CMD_READ_RECEIPT_PUSH")
        assert p.body.user_id == a and list(p.body.message_ids) == [r.message_id], p
        await close_all([ca, cb])
    run(go())


def test_revoke_from_senders_other_device(mgw):
    print("check: the sender may revoke from another of its devices: success; the "
          "device that sent the message and the receiver get REVOKE_MSG_PUSH, the "
          "requesting device does not")

    async def go():
        a, b = uid("a"), uid("b")
        aw = await MClient.open(mgw, a, platform="Web")
        ai = await MClient.open(mgw, a, platform="iOS", codec="json")
        cb = await MClient.open(mgw, b)
        r = await aw.send_ok(to=b, content="sent from web")
        await ai.wait_push("CMD_PUSH_MSG")
        rsp = await revoke(ai, r.message_id, single_conv(a, b))
        print("revoke from iOS:", rsp)
        assert_code(rsp, OK, "revoke from the sender's other device")
        for c in (aw, cb):
            p = await c.wait_push("CMD_REVOKE_MSG_PUSH")
            assert p.body.message_id == r.message_id and p.body.revoked_by == a, p
        await ai.expect_no_push("CMD_REVOKE_MSG_PUSH", wait=0.4)
        await close_all([aw, ai, cb])
    run(go())
