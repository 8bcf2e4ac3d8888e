"""One-to-one messaging: send, push, dedupe, multi-device, kick, errors.

protocol.md sections 3 (commands), 4 (one connection per user+platform),
5 (messaging semantics) and 10 (which error in which response). Every test
runs once per store backend (msg_helpers.BACKENDS).
"""

import asyncio
import json

import pytest

import imgw_harness as H
from imgw_harness import pb, run
from msg_helpers import (  # noqa: F401  (fixtures)
    C, DENIED, INVALID, NO_CONV, OK, TOO_FAST, TOO_LARGE, MClient, assert_code,
    check_msg_id, check_push_matches, close_all, is_msg, mgw, mserver, single_conv,
    store_backend, uid)

CODEC_PAIRS = [("pb", "pb"), ("json", "json"), ("json", "pb"), ("pb", "json")]


# ------------------------------------------------------------------ basics


@pytest.mark.parametrize("scodec,rcodec", CODEC_PAIRS)
def test_send_and_push_fields(mgw, scodec, rcodec):
    print("check (%s sender -> %s receiver): SEND_MSG_RSP success with decimal message_id, "
          "seq 1, server_time; receiver gets PUSH_MSG with every field (extra, "
          "client_msg_id, conversation_id s_<a>_<b>), seq = receiver's seq 1; "
          "the sending connection gets no push" % (scodec, rcodec))

    async def go():
        a, b = uid("snd"), uid("rcv")
        ca = await MClient.open(mgw, a, codec=scodec)
        cb = await MClient.open(mgw, b, codec=rcodec)
        assert ca.auth_rsp.max_seq == 0 and cb.auth_rsp.max_seq == 0
        rsp = await ca.send_msg(to=b, content="héllo wörld ✓ 🌍", message_type=1,
                                extra={"k1": "v1", "lang": "de"})
        print("response:", rsp)
        assert_code(rsp, OK, "send")
        check_msg_id(rsp.message_id)
        assert rsp.seq == 1, "sender's first message must have seq 1: %r" % rsp
        assert rsp.server_time > 0, rsp
        p = await cb.wait_push("CMD_PUSH_MSG")
        print("push to receiver:", p)
        assert p.codec == rcodec, "push not in the receiver's codec: %r" % p
        check_push_matches(p.body, rsp.req, rsp, receiver_seq=1)
        if rcodec == "json":
            jb = p.json["body"]
            assert p.json["command"] in ("CMD_PUSH_MSG", 202), p.json
            assert jb["content"] == "héllo wörld ✓ 🌍", "JSON content must be a UTF-8 string: %r" % jb
            assert jb["extra"] == {"k1": "v1", "lang": "de"}, jb
            assert isinstance(jb["seq"], int) and isinstance(jb["server_time"], int), (
                "64-bit integers must be JSON numbers: %r" % jb)
            assert isinstance(jb["message_id"], str), jb
        if scodec == "json":
            rb = rsp.frame.json["body"]
            print("JSON response body:", rb)
            assert rb.get("error_code", "ERR_SUCCESS") in ("ERR_SUCCESS", 0), rb
            assert isinstance(rb["message_id"], str) and isinstance(rb["seq"], int), rb
        await ca.expect_no_push("CMD_PUSH_MSG")
        await cb.expect_no_push("CMD_PUSH_MSG", lambda f: f.body.message_id != rsp.message_id,
                                wait=0)
        assert len(cb.pushes("CMD_PUSH_MSG")) == 1, cb.pushes()
        await close_all([ca, cb])
    run(go())


def test_conversation_id_bytewise_order(mgw):
    print("check: conversation_id is s_<a>_<b> with a <= b byte-wise "
          "(upper case sorts before lower case); a matching client conversation_id is accepted")

    async def go():
        tag = uid("x")
        low, up = "alice-" + tag, "Zed-" + tag   # 'Z' (0x5a) < 'a' (0x61)
        cl = await MClient.open(mgw, low)
        cu = await MClient.open(mgw, up)
        exp = "s_%s_%s" % (up, low)
        assert single_conv(low, up) == exp
        r1 = await cl.send_ok(to=up, content="1")
        p1 = await cu.wait_push("CMD_PUSH_MSG")
        print("push 1:", p1)
        assert p1.body.conversation_id == exp, p1
        r2 = await cu.send_ok(to=low, content="2", conversation_id=exp)
        p2 = await cl.wait_push("CMD_PUSH_MSG")
        print("push 2:", p2)
        assert p2.body.conversation_id == exp, p2
        assert r1.seq == 1 and r2.seq == 2, (r1, r2)
        assert p1.body.seq == 1 and p2.body.seq == 2, "timeline seqs: %r %r" % (p1, p2)
        await close_all([cl, cu])
    run(go())


def test_empty_sender_filled(mgw):
    print("check: an empty sender_id is filled with the authenticated user")

    async def go():
        a, b = uid("a"), uid("b")
        ca = await MClient.open(mgw, a, codec="json")
        cb = await MClient.open(mgw, b)
        rsp = await ca.send_msg(to=b, sender="", content="no sender")
        print("response:", rsp)
        assert_code(rsp, OK)
        p = await cb.wait_push("CMD_PUSH_MSG")
        print("push:", p)
        assert p.body.sender_id == a, p
        assert p.body.conversation_id == single_conv(a, b), p
        await close_all([ca, cb])
    run(go())


@pytest.mark.parametrize("mtype", [0, 1, 2, 3, 4, 5])
def test_message_types_accepted(mgw, mtype):
    print("check: message_type %d is accepted and pushed unchanged" % mtype)

    async def go():
        a, b = uid("a"), uid("b")
        ca = await MClient.open(mgw, a)
        cb = await MClient.open(mgw, b)
        rsp = await ca.send_ok(to=b, message_type=mtype, content="t%d" % mtype)
        p = await cb.wait_push("CMD_PUSH_MSG")
        print("push:", p)
        assert p.body.message_type == mtype, p
        assert p.body.message_id == rsp.message_id
        await close_all([ca, cb])
    run(go())


def test_msg_ack_has_no_response(mgw):
    print("check: CMD_MSG_ACK gets no response; the connection stays usable")

    async def go():
        a, b = uid("a"), uid("b")
        ca = await MClient.open(mgw, a)
        cb = await MClient.open(mgw, b)
        rsp = await ca.send_ok(to=b)
        p = await cb.wait_push("CMD_PUSH_MSG")
        seq, fut = await cb.send_nowait("CMD_MSG_ACK",
                                        pb.MessageAck(message_id=p.body.message_id,
                                                      seq=p.body.seq))
        hb = await cb.heartbeat()
        await asyncio.sleep(0.3)
        print("heartbeat after ack:", hb, "frames:", cb.frames)
        assert not fut.done(), "CMD_MSG_ACK got a response: %r" % fut.result()
        assert cb.pushes("CMD_ERROR_RSP") == [], cb.frames
        assert rsp.message_id == p.body.message_id
        await close_all([ca, cb])
    run(go())


# ------------------------------------------------------------ offline/sync


@pytest.mark.parametrize("rcodec", ["pb", "json"])
def test_receiver_offline_then_sync(mgw, rcodec):
    print("check: receiver offline; sender sends 3 messages (success); the receiver "
          "logs in: AuthResponse.max_seq == 3, sync returns the 3 messages oldest first "
          "with seq 1..3 and all fields (%s receiver)" % rcodec)

    async def go():
        a, b = uid("a"), uid("off")
        ca = await MClient.open(mgw, a, codec="json" if rcodec == "pb" else "pb")
        rsps = []
        for i in range(3):
            rsps.append(await ca.send_ok(to=b, content="offline %d" % i,
                                         extra={"i": str(i)}))
        print("responses:", [(r.message_id, r.seq) for r in rsps])
        assert [r.seq for r in rsps] == [1, 2, 3]
        assert len({r.message_id for r in rsps}) == 3
        cb = await MClient.open(mgw, b, codec=rcodec)
        print("receiver auth:", cb.auth_rsp)
        assert cb.auth_rsp.max_seq == 3, "AuthResponse.max_seq: %r" % cb.auth_rsp
        s = await cb.sync(0, 0, 100)
        print("sync:", s)
        assert_code(s, OK, "sync")
        assert [m.seq for m in s.messages] == [1, 2, 3], s
        assert not s.has_more, s
        assert s.server_max_seq == 3, s
        for m, r, want in zip(s.messages, rsps, (1, 2, 3)):
            check_push_matches(m, r.req, r, receiver_seq=want, what="synced message")
        # nothing was pushed for messages sent while offline
        await cb.expect_no_push("CMD_PUSH_MSG", wait=0.3)
        await close_all([ca, cb])
    run(go())


def test_sender_timeline_contains_sent_messages(mgw):
    print("check: the sender's own timeline holds its sent messages (seq = response seq), "
          "interleaved with received ones; AuthResponse.max_seq of a new device reflects it")

    async def go():
        a, b = uid("a"), uid("b")
        ca = await MClient.open(mgw, a)
        cb = await MClient.open(mgw, b, codec="json")
        r1 = await ca.send_ok(to=b, content="a1")
        r2 = await cb.send_ok(to=a, content="b1")
        r3 = await ca.send_ok(to=b, content="a2")
        print("seqs a:", r1.seq, r3.seq, "b:", r2.seq)
        assert (r1.seq, r3.seq) == (1, 3), (r1, r3)
        assert r2.seq == 2, r2
        ca2 = await MClient.open(mgw, a, platform="iOS")
        assert ca2.auth_rsp.max_seq == 3, ca2.auth_rsp
        s = await ca2.sync()
        print("a's timeline:", s)
        assert [(m.seq, m.message_id) for m in s.messages] == [
            (1, r1.message_id), (2, r2.message_id), (3, r3.message_id)], s
        assert [m.sender_id for m in s.messages] == [a, b, a]
        await close_all([ca, cb, ca2])
    run(go())


# ----------------------------------------------------------- multi-device


@pytest.mark.parametrize("codecs", [("pb", "json"), ("json", "pb")])
def test_sender_second_device_gets_push(mgw, codecs):
    print("check: sender has 2 devices (Web %s, iOS %s); sending from Web pushes to iOS "
          "with the sender's seq, not to Web; receiver with 2 devices gets it on both" % codecs)

    async def go():
        a, b = uid("a"), uid("b")
        aw = await MClient.open(mgw, a, codec=codecs[0], platform="Web")
        ai = await MClient.open(mgw, a, codec=codecs[1], platform="iOS")
        bw = await MClient.open(mgw, b, codec=codecs[1], platform="Web")
        ba = await MClient.open(mgw, b, codec=codecs[0], platform="Android")
        rsp = await aw.send_ok(to=b, content="to all devices", extra={"x": "y"})
        pi = await ai.wait_push("CMD_PUSH_MSG")
        print("push to sender's iOS:", pi)
        check_push_matches(pi.body, rsp.req, rsp, receiver_seq=rsp.seq,
                           what="push to the sender's other device")
        for c in (bw, ba):
            p = await c.wait_push("CMD_PUSH_MSG")
            print("push to %s:" % c.label, p)
            check_push_matches(p.body, rsp.req, rsp, receiver_seq=1)
        await aw.expect_no_push("CMD_PUSH_MSG")
        for c in (ai, bw, ba):
            assert len(c.pushes("CMD_PUSH_MSG")) == 1, (c.label, c.frames)
        await close_all([aw, ai, bw, ba])
    run(go())


# ------------------------------------------------------------------ dedupe


@pytest.mark.parametrize("codec", ["pb", "json"])
def test_dedupe_same_client_msg_id(mgw, codec):
    print("check (%s): resend with the same client_msg_id -> same message_id and seq, "
          "no second push, one timeline entry; a new client_msg_id gets the next seq; "
          "another sender may reuse the same client_msg_id" % codec)

    async def go():
        a, b, c = uid("a"), uid("b"), uid("c")
        ca = await MClient.open(mgw, a, codec=codec)
        ca2 = await MClient.open(mgw, a, codec=codec, platform="iPad")
        cb = await MClient.open(mgw, b)
        cc = await MClient.open(mgw, c, codec="json")
        cmid = "dup-" + uid("m")
        r1 = await ca.send_ok(to=b, client_msg_id=cmid, content="once")
        await cb.wait_push("CMD_PUSH_MSG")
        r2 = await ca.send_ok(to=b, client_msg_id=cmid, content="once")
        print("first:", r1, "resend:", r2)
        assert (r2.message_id, r2.seq) == (r1.message_id, r1.seq), (r1, r2)
        # resend from the other device of the same user: also deduped
        r3 = await ca2.send_ok(to=b, client_msg_id=cmid, content="once")
        print("resend from the second device:", r3)
        assert (r3.message_id, r3.seq) == (r1.message_id, r1.seq), (r1, r3)
        await asyncio.sleep(0.6)
        print("receiver pushes:", cb.pushes())
        assert len(cb.pushes("CMD_PUSH_MSG")) == 1, "second push for a dedupe hit: %r" % cb.frames
        assert len(ca2.pushes("CMD_PUSH_MSG")) == 1, ca2.frames
        r4 = await ca.send_ok(to=b, client_msg_id=cmid + "-new", content="twice")
        assert r4.seq == r1.seq + 1 and r4.message_id != r1.message_id, (r1, r4)
        # another sender may use the same client_msg_id
        r5 = await cc.send_ok(to=b, client_msg_id=cmid, content="from c")
        assert r5.message_id != r1.message_id, (r1, r5)
        p5 = await cb.wait_push("CMD_PUSH_MSG", is_msg(r5.message_id))
        s = await cb.sync()
        print("receiver timeline:", [(m.seq, m.message_id, m.client_msg_id) for m in s.messages])
        assert [m.message_id for m in s.messages] == [r1.message_id, r4.message_id,
                                                      r5.message_id], s
        assert [m.seq for m in s.messages] == [1, 2, 3]
        assert p5.body.seq == 3
        await close_all([ca, ca2, cb, cc])
    run(go())


# ------------------------------------------------------------ kick / platforms


@pytest.mark.parametrize("codec", ["pb", "json"])
def test_kick_same_platform(mgw, codec):
    print("check (%s): a second login on the same platform -> the old connection gets "
          "CMD_KICK_PUSH then close 4002; the new one works and receives pushes" % codec)

    async def go():
        a, b = uid("a"), uid("b")
        old = await MClient.open(mgw, a, codec=codec, platform="Android")
        new = await MClient.open(mgw, a, codec=codec, platform="Android")
        code = await old.wait_closed(5)
        print("old connection frames:", old.frames, "close code:", code)
        kicks = old.pushes("CMD_KICK_PUSH")
        assert len(kicks) == 1, "expected one CMD_KICK_PUSH before close: %r" % old.frames
        assert kicks[0].codec == codec, kicks[0]
        assert kicks[0].body.platform == "Android", "KickPush.platform: %r" % kicks[0]
        assert kicks[0].body.reason != "", "KickPush.reason empty: %r" % kicks[0]
        assert code == 4002, "old connection closed with %r, expected 4002" % code
        assert new.pushes("CMD_KICK_PUSH") == []
        cb = await MClient.open(mgw, b)
        rsp = await cb.send_ok(to=a, content="after kick")
        p = await new.wait_push("CMD_PUSH_MSG")
        assert p.body.message_id == rsp.message_id
        await close_all([old, new, cb])
    run(go())


def test_default_platform_kick(mgw):
    print("check: an empty platform means \"default\": a later login with platform "
          "\"default\" kicks the empty-platform connection (4002)")

    async def go():
        a = uid("a")
        c1 = await MClient.open(mgw, a, platform="")
        c2 = await MClient.open(mgw, a, platform="default")
        code = await c1.wait_closed(5)
        print("first connection frames:", c1.frames, "close:", code)
        assert c1.pushes("CMD_KICK_PUSH"), c1.frames
        assert code == 4002, code
        await c2.heartbeat()
        await close_all([c1, c2])
    run(go())


def test_different_platforms_coexist(mgw):
    print("check: logins of one user on Web, iOS and Android coexist (no kick) and all "
          "three receive pushes")

    async def go():
        a, b = uid("a"), uid("b")
        cs = [await MClient.open(mgw, a, codec=cd, platform=pf)
              for pf, cd in (("Web", "json"), ("iOS", "pb"), ("Android", "pb"))]
        cb = await MClient.open(mgw, b, codec="json")
        rsp = await cb.send_ok(to=a, content="hi all")
        for c in cs:
            p = await c.wait_push("CMD_PUSH_MSG")
            assert p.body.message_id == rsp.message_id, p
            assert not c.closed.is_set(), c.label
            assert c.pushes("CMD_KICK_PUSH") == [], c.frames
        await close_all(cs + [cb])
    run(go())


def test_cross_loop_delivery_ring(mgw):
    print("check: -t 4; 16 users in a ring (mixed codecs) each send to the next; "
          "every push arrives once, whatever loop each user landed on")

    async def go():
        users = [uid("ring") for _ in range(16)]
        cs = [await MClient.open(mgw, u, codec="pb" if i % 2 else "json")
              for i, u in enumerate(users)]
        rsps = await asyncio.gather(*(c.send_ok(to=users[(i + 1) % 16], content="r%d" % i)
                                      for i, c in enumerate(cs)))
        for i, c in enumerate(cs):
            want = rsps[(i - 1) % 16].message_id
            p = await c.wait_push("CMD_PUSH_MSG", is_msg(want))
            assert p.body.sender_id == users[(i - 1) % 16]
        await asyncio.sleep(0.3)
        for c in cs:
            assert len(c.pushes("CMD_PUSH_MSG")) == 1, (c.label, c.frames)
        await close_all(cs)
    run(go())


# ------------------------------------------------------------------ errors


async def _expect_send_error(c, code, what, others=(), **kw):
    rsp = await c.send_msg(**kw)
    print("%s -> %s" % (what, rsp))
    assert_code(rsp, code, what)
    if rsp.frame.codec == "json":
        assert rsp.frame.json["body"].get("error_code") == H.err_name(code), (
            "JSON error_code must be the enum name: %r" % rsp.frame.json)
    assert rsp.message_id == "" and rsp.seq == 0, "failed send carries an id/seq: %r" % rsp
    return rsp


@pytest.mark.parametrize("codec", ["pb", "json"])
def test_send_validation_errors(mgw, codec):
    print("check (%s): both/neither receiver and group -> ERR_INVALID_PARAM; spoofed "
          "sender -> ERR_PERMISSION_DENIED; conversation_id mismatch -> ERR_INVALID_PARAM; "
          "message_type 6 / -1 -> ERR_INVALID_PARAM; unknown group -> "
          "ERR_CONVERSATION_NOT_EXIST; nothing is pushed or stored" % codec)

    async def go():
        a, b, x = uid("a"), uid("b"), uid("x")
        ca = await MClient.open(mgw, a, codec=codec)
        cb = await MClient.open(mgw, b)
        await _expect_send_error(ca, INVALID, "both receiver and group",
                                 to=b, group="grp-" + uid("g"))
        await _expect_send_error(ca, INVALID, "neither receiver nor group")
        await _expect_send_error(ca, DENIED, "sender_id of another user", to=b, sender=x)
        await _expect_send_error(ca, INVALID, "wrong conversation_id", to=b,
                                 conversation_id=single_conv(a, x))
        await _expect_send_error(ca, INVALID, "conversation_id in the wrong order", to=b,
                                 conversation_id="s_%s_%s" % tuple(
                                     sorted([a, b], key=str.encode, reverse=True)))
        await _expect_send_error(ca, INVALID, "group conversation_id for a single chat",
                                 to=b, conversation_id="g_" + b)
        await _expect_send_error(ca, INVALID, "message_type 6", to=b, message_type=6)
        await _expect_send_error(ca, INVALID, "message_type -1", to=b, message_type=-1)
        await _expect_send_error(ca, NO_CONV, "unknown group", group=uid("nogroup"))
        await cb.expect_no_push(wait=0.5)
        s = await ca.sync()
        assert list(s.messages) == [] and s.server_max_seq == 0, (
            "rejected messages reached the sender's timeline: %r" % s)
        s = await cb.sync()
        assert list(s.messages) == [], "rejected messages stored: %r" % s
        # still fine afterwards
        rsp = await ca.send_ok(to=b, content="valid")
        assert rsp.seq == 1, rsp
        await close_all([ca, cb])
    run(go())


def test_message_too_large(mserver):
    s = mserver(max_message_bytes=64, threads=2)
    print("check: max_message_bytes=64: 64 content bytes ok; 65 -> ERR_MESSAGE_TOO_LARGE "
          "in SEND_MSG_RSP (both codecs), nothing pushed; connection stays up")

    async def go():
        a, b = uid("a"), uid("b")
        ca = await MClient.open(s, a)
        cj = await MClient.open(s, a, codec="json", platform="json")
        cb = await MClient.open(s, b)
        ok = await ca.send_ok(to=b, content="x" * 64)
        await cb.wait_push("CMD_PUSH_MSG", is_msg(ok.message_id))
        await _expect_send_error(ca, TOO_LARGE, "65 bytes (pb)", to=b, content="y" * 65)
        await _expect_send_error(cj, TOO_LARGE, "2000 bytes (json)", to=b, content="z" * 2000)
        # multi-byte: 22 x 3 bytes = 66 bytes > 64
        await _expect_send_error(cj, TOO_LARGE, "66 UTF-8 bytes (json)", to=b,
                                 content="€" * 22)
        await asyncio.sleep(0.5)
        assert len(cb.pushes("CMD_PUSH_MSG")) == 1, cb.frames
        await ca.heartbeat()
        await cj.heartbeat()
        await close_all([ca, cj, cb])
    run(go())


def test_send_too_fast(mserver):
    s = mserver(send_rate=5, threads=2)
    print("check: send_rate=5 (burst 10): 30 sends pipelined at once -> some succeed "
          "(at most ~burst), the rest ERR_SEND_TOO_FAST in SEND_MSG_RSP; only the "
          "successful ones are pushed and stored; after a pause sending works again")

    async def go():
        a, b = uid("a"), uid("b")
        ca = await MClient.open(s, a)
        cb = await MClient.open(s, b)
        futs = []
        for i in range(30):
            _, fut = await ca.send_nowait("CMD_SEND_MSG_REQ",
                                          ca.msg_req(to=b, content="fast %d" % i))
            futs.append(fut)
        frames = await asyncio.wait_for(asyncio.gather(*futs), 15)
        codes = [f.body.error_code for f in frames]
        print("codes:", [H.err_name(c) for c in codes])
        assert all(f.command == H.cmd_num("CMD_SEND_MSG_RSP") for f in frames), frames
        n_ok = codes.count(OK)
        n_fast = codes.count(TOO_FAST)
        assert n_ok + n_fast == 30, "unexpected codes: %r" % codes
        assert n_fast > 0, "30 sends at once with send_rate=5 were all accepted"
        assert 1 <= n_ok <= 15, "burst is 2 x 5 = 10, yet %d were accepted" % n_ok
        ok_ids = [f.body.message_id for f in frames if f.body.error_code == OK]
        await asyncio.sleep(0.6)
        got = [p.body.message_id for p in cb.pushes("CMD_PUSH_MSG")]
        assert sorted(got) == sorted(ok_ids), "pushes %r != accepted %r" % (got, ok_ids)
        st = await cb.sync()
        assert [m.message_id for m in st.messages] == ok_ids, st
        assert [m.seq for m in st.messages] == list(range(1, n_ok + 1)), st
        # the bucket is per connection: the same user's other device is not throttled
        ci = await MClient.open(s, a, platform="iOS", codec="json")
        r = await ci.send_msg(to=b, content="other device")
        assert_code(r, OK, "send from a second connection while the first is throttled")
        await asyncio.sleep(1.2)
        r = await ca.send_msg(to=b, content="after pause")
        assert_code(r, OK, "send after a pause")
        await close_all([ca, cb, ci])
    run(go())


def test_other_commands_rate_limited(mserver):
    s = mserver(send_rate=5, threads=2)
    print("check: send_rate=5 -> other commands limited to 50/s (burst 100): 300 sync "
          "requests pipelined -> some answered, the rest CMD_ERROR_RSP ERR_SEND_TOO_FAST "
          "echoing their sequence; the connection stays up")

    async def go():
        a = uid("a")
        ca = await MClient.open(s, a)
        futs = []
        for i in range(300):
            seq, fut = await ca.send_nowait("CMD_SYNC_REQ", pb.SyncRequest(limit=1))
            futs.append((seq, fut))
        frames = await asyncio.wait_for(asyncio.gather(*(f for _, f in futs)), 20)
        n_ok = n_fast = 0
        for (seq, _), f in zip(futs, frames):
            assert f.sequence == seq, f
            if f.command == H.cmd_num("CMD_SYNC_RSP"):
                n_ok += 1
            else:
                assert f.command == H.cmd_num("CMD_ERROR_RSP"), f
                assert_code(f.body, TOO_FAST, "rate-limited sync")
                n_fast += 1
        print("answered %d, ERR_SEND_TOO_FAST %d" % (n_ok, n_fast))
        assert n_fast > 0, "300 frames at once with a 50/s limit were all answered"
        assert 1 <= n_ok <= 150, n_ok
        await asyncio.sleep(1.0)
        await ca.heartbeat()
        await ca.close()
    run(go())


def test_json_numeric_strings_accepted(mgw):
    print("check: a JSON sender may give int64 fields as numeric strings and enums/ints "
          "as numbers (protocol.md 10); the push carries them as numbers")

    async def go():
        a, b = uid("a"), uid("b")
        ca = await MClient.open(mgw, a, codec="json")
        cb = await MClient.open(mgw, b, codec="json")
        seq, fut = await ca.send_nowait("CMD_SEND_MSG_REQ", {
            "client_msg_id": "num-1", "sender_id": a, "receiver_id": b,
            "message_type": 2, "content": "numbers", "send_time": "1700000000999",
            "extra": {"a": "b"}})
        f = await asyncio.wait_for(fut, 5)
        print("response:", f)
        assert f.command == H.cmd_num("CMD_SEND_MSG_RSP"), f
        assert_code(f.body, OK)
        p = await cb.wait_push("CMD_PUSH_MSG")
        print("push json:", p.json)
        assert p.json["body"]["send_time"] == 1700000000999, p.json
        assert p.json["body"]["message_type"] == 2, p.json
        await close_all([ca, cb])
    run(go())


def test_kick_chain_across_loops(mgw):
    print("check: -t 4; 6 successive logins of one user on platform Web (landing on "
          "various loops): each older one gets KICK_PUSH + 4002; only the last is left "
          "and only it gets the next push")

    async def go():
        a, b = uid("a"), uid("b")
        cs = []
        for i in range(6):
            cs.append(await MClient.open(mgw, a, codec="json" if i % 2 else "pb"))
            if i:
                code = await cs[i - 1].wait_closed(5)
                assert cs[i - 1].pushes("CMD_KICK_PUSH"), cs[i - 1].frames
                assert code == 4002, "login %d closed with %r" % (i - 1, code)
        cb = await MClient.open(mgw, b)
        r = await cb.send_ok(to=a)
        p = await cs[-1].wait_push("CMD_PUSH_MSG")
        assert p.body.message_id == r.message_id
        for c in cs[:-1]:
            assert c.pushes("CMD_PUSH_MSG") == [], c.frames
        await close_all(cs + [cb])
    run(go())


# --------------------------------------------- dedupe details (docs/protocol.md,
# docs/store.md fill in what the shared contract leaves open)


def test_dedupe_hit_ignores_new_target(mgw):
    print("check: the dedupe key is (sender, client_msg_id) only: a resend of the same "
          "client_msg_id to another receiver returns the first message_id/seq and "
          "delivers nothing to the new receiver; server_time is the original one")

    async def go():
        a, b, c = uid("a"), uid("b"), uid("c")
        ca = await MClient.open(mgw, a)
        cb = await MClient.open(mgw, b)
        cc = await MClient.open(mgw, c, codec="json")
        r1 = await ca.send_ok(to=b, client_msg_id="same-key", content="first")
        await asyncio.sleep(0.05)
        r2 = await ca.send_ok(to=c, client_msg_id="same-key", content="second")
        print(r1, r2)
        assert (r2.message_id, r2.seq) == (r1.message_id, r1.seq), (r1, r2)
        assert r2.server_time == r1.server_time, (r1, r2)
        await cc.expect_no_push(wait=0.5)
        s = await cc.sync()
        assert list(s.messages) == [], s
        await close_all([ca, cb, cc])
    run(go())


def test_failed_send_not_recorded_for_dedupe(mgw):
    print("check: a send rejected by validation does not record its client_msg_id: "
          "the corrected resend with the same client_msg_id is stored and pushed")

    async def go():
        a, b = uid("a"), uid("b")
        ca = await MClient.open(mgw, a)
        cb = await MClient.open(mgw, b)
        r = await ca.send_msg(to=b, client_msg_id="fix-me", message_type=9)
        assert_code(r, INVALID, "bad message_type")
        r = await ca.send_msg(to=b, client_msg_id="fix-me", sender=uid("spoof"))
        assert_code(r, DENIED, "spoofed sender")
        ok = await ca.send_ok(to=b, client_msg_id="fix-me", content="corrected")
        print("corrected:", ok)
        assert ok.seq == 1, ok
        p = await cb.wait_push("CMD_PUSH_MSG")
        assert p.body.message_id == ok.message_id and bytes(p.body.content) == b"corrected"
        await close_all([ca, cb])
    run(go())


def test_empty_client_msg_id_no_dedupe(mgw):
    print("check (docs/store.md): an empty client_msg_id means no dedupe: two sends "
          "both stored and pushed with different ids")

    async def go():
        a, b = uid("a"), uid("b")
        ca = await MClient.open(mgw, a)
        cb = await MClient.open(mgw, b)
        r1 = await ca.send_ok(to=b, client_msg_id="", content="one")
        r2 = await ca.send_ok(to=b, client_msg_id="", content="two")
        assert r1.message_id != r2.message_id and (r1.seq, r2.seq) == (1, 2), (r1, r2)
        await cb.wait_push("CMD_PUSH_MSG", count=2)
        await close_all([ca, cb])
    run(go())


def test_send_to_self(mgw):
    print("check (docs/protocol.md): sending to yourself is allowed: one timeline "
          "entry (conversation s_<you>_<you>), pushed to your other connections only")

    async def go():
        a = uid("a")
        c1 = await MClient.open(mgw, a)
        c2 = await MClient.open(mgw, a, platform="iOS", codec="json")
        r = await c1.send_ok(to=a, content="note to self")
        p = await c2.wait_push("CMD_PUSH_MSG")
        print("push:", p)
        assert p.body.conversation_id == "s_%s_%s" % (a, a), p
        assert p.body.seq == r.seq == 1, (p, r)
        await c1.expect_no_push("CMD_PUSH_MSG", wait=0.4)
        assert len(c2.pushes("CMD_PUSH_MSG")) == 1, c2.frames
        s = await c2.sync()
        assert [m.message_id for m in s.messages] == [r.message_id], s
        await close_all([c1, c2])
    run(go())


def test_concurrent_duplicate_sends_from_two_devices(mgw):
    print("check: -t 4; the same client_msg_id sent at the same moment from two devices "
          "of one user (30 keys, pipelined, connections on different loops where "
          "possible): both responses give one message_id/seq per key, the receiver gets "
          "each key exactly once, the timelines hold each once with no gaps")

    async def go():
        a, b = uid("a"), uid("b")
        # open extra devices until two land on different loops is not observable;
        # use 4 devices to make a cross-loop pair very likely with 4 loops
        devs = [await MClient.open(mgw, a, platform="p%d" % i,
                                   codec="json" if i % 2 else "pb") for i in range(4)]
        cb = await MClient.open(mgw, b)
        keys = ["race-%d" % i for i in range(30)]
        futs = []
        for k in keys:
            for d in devs:
                _, fut = await d.send_nowait("CMD_SEND_MSG_REQ",
                                             d.msg_req(to=b, client_msg_id=k, content=k))
                futs.append((k, fut))
        frames = await asyncio.wait_for(asyncio.gather(*(f for _, f in futs)), 20)
        per = {}
        for (k, _), f in zip(futs, frames):
            assert_code(f.body, OK, "racing send %s" % k)
            per.setdefault(k, set()).add((f.body.message_id, f.body.seq))
        multi = {k: v for k, v in per.items() if len(v) != 1}
        assert not multi, "one client_msg_id got several messages: %r" % multi
        mids = {k: next(iter(v))[0] for k, v in per.items()}
        assert len(set(mids.values())) == 30
        await asyncio.sleep(1.0)
        got = [p.body.message_id for p in cb.pushes("CMD_PUSH_MSG")]
        assert sorted(got) == sorted(mids.values()), (
            "receiver pushes: %d (%d distinct), want 30" % (len(got), len(set(got))))
        for d in devs:
            # each device sees the messages other devices won, at most once each
            dm = [p.body.message_id for p in d.pushes("CMD_PUSH_MSG")]
            assert len(dm) == len(set(dm)), "%s got duplicates" % d.label
        for c in (cb, devs[0]):
            msgs, _ = await c.sync_all()
            assert [m.seq for m in msgs] == list(range(1, 31)), [m.seq for m in msgs]
            assert sorted(m.message_id for m in msgs) == sorted(mids.values())
        await close_all(devs + [cb])
    run(go())


def test_second_auth_rejected(mgw):
    print("check (docs/protocol.md): a second CMD_AUTH_REQ on an authenticated "
          "connection -> ERR_INVALID_PARAM, the connection stays and keeps its user")

    async def go():
        a, b = uid("a"), uid("b")
        ca = await MClient.open(mgw, a)
        f = await ca.request("CMD_AUTH_REQ", pb.AuthRequest(user_id=b, token=H.make_token(b)),
                             expect="CMD_AUTH_RSP")
        print(f)
        assert_code(f.body, INVALID, "second auth")
        cb = await MClient.open(mgw, b)
        r = await cb.send_ok(to=a)
        p = await ca.wait_push("CMD_PUSH_MSG")
        assert p.body.message_id == r.message_id and p.body.receiver_id == a
        await close_all([ca, cb])
    run(go())


def test_push_codec_follows_last_client_frame(mgw):
    print("check: pushes use the codec of the client's last frame: a pb-authenticated "
          "connection that sends a JSON heartbeat gets the next push as JSON, and after "
          "a pb heartbeat as protobuf again")

    async def go():
        a, b = uid("a"), uid("b")
        ca = await MClient.open(mgw, a, codec="pb")
        cb = await MClient.open(mgw, b)
        ca.codec = "json"
        await ca.heartbeat()
        r1 = await cb.send_ok(to=a, content="as json")
        p1 = await ca.wait_push("CMD_PUSH_MSG", is_msg(r1.message_id))
        print("after a JSON frame:", p1)
        assert p1.codec == "json", p1
        ca.codec = "pb"
        await ca.heartbeat()
        r2 = await cb.send_ok(to=a, content="as pb")
        p2 = await ca.wait_push("CMD_PUSH_MSG", is_msg(r2.message_id))
        print("after a pb frame:", p2)
        assert p2.codec == "pb", p2
        await close_all([ca, cb])
    run(go())


@pytest.mark.parametrize("scodec,rcodec", CODEC_PAIRS)
def test_content_and_extra_escaping(mgw, scodec, rcodec):
    print("check (%s -> %s): content with quotes, backslashes, newlines, control "
          "characters and non-BMP characters, and extra with unicode keys/values, arrive "
          "byte-exact in pushes and syncs" % (scodec, rcodec))
    _escaping_roundtrip(mgw, scodec, rcodec,
                        'a "q" \\ back\nnew\tline \x01\x1f é ✓ 🌍 \u2028 </script>',
                        {"ключ": "значение", "quote\"key": "back\\slash", "empty": "",
                         "nl": "a\nb"})


@pytest.mark.parametrize("rcodec", ["pb", "json"])
def test_content_with_nul_byte_protobuf(mgw, rcodec):
    print("check (pb -> %s): bytes content containing NUL arrives byte-exact "
          "(string fields are NUL-terminated: docs/protocol.md)" % rcodec)
    _escaping_roundtrip(mgw, "pb", rcodec, "before\x00after", {"k": "vw"})


def test_json_nul_escape_refused(mgw):
    print("check: a JSON frame containing \\u0000 is refused with CMD_ERROR_RSP "
          "ERR_INVALID_PARAM (never silently truncated) and the connection stays up")

    async def go():
        a, b = uid("a"), uid("b")
        ca = await MClient.open(mgw, a, codec="json")
        frame = json.dumps({"command": "CMD_SEND_MSG_REQ", "sequence": 77,
                            "body": {"receiver_id": b, "client_msg_id": "nul1",
                                     "content": "before\u0000after"}})
        assert "\\u0000" in frame
        n0 = len(ca.frames)
        await ca.ws.send(frame)
        for _ in range(50):
            errs = [f for f in ca.frames[n0:] if f.command == C["CMD_ERROR_RSP"]]
            if errs:
                break
            await asyncio.sleep(0.1)
        print("error frames:", errs)
        assert errs and errs[0].body.error_code == pb.ERR_INVALID_PARAM
        r = await ca.send_ok(to=b, content="still works")
        assert r.seq >= 1
        await close_all([ca])
    run(go())


def _escaping_roundtrip(mgw, scodec, rcodec, content, extra):
    async def go():
        a, b = uid("a"), uid("b")
        ca = await MClient.open(mgw, a, codec=scodec)
        cb = await MClient.open(mgw, b, codec=rcodec)
        r = await ca.send_ok(to=b, content=content, extra=extra)
        p = await cb.wait_push("CMD_PUSH_MSG")
        print("push:", p)
        assert bytes(p.body.content) == content.encode("utf-8"), p
        assert dict(p.body.extra) == extra, p
        s = await cb.sync()
        m = s.messages[0]
        assert bytes(m.content) == content.encode("utf-8") and dict(m.extra) == extra, m
        assert m.message_id == r.message_id
        await close_all([ca, cb])
    run(go())


def test_sixteen_devices_all_get_push(mgw):
    print("check (docs/protocol.md: at most 16 connections per user): a user with 16 "
          "devices (mixed codecs, spread over loops) gets each message once on every "
          "device; a 17th platform is refused and the 16 stay connected")

    async def go():
        a, b = uid("a"), uid("b")
        devs = [await MClient.open(mgw, a, platform="dev%02d" % i,
                                   codec="json" if i % 2 else "pb") for i in range(16)]
        extra = await MClient.open(mgw, a, platform="dev16", expect_ok=False)
        print("17th login:", extra.auth_rsp)
        assert extra.auth_rsp.error_code != OK, "17th connection accepted"
        cb = await MClient.open(mgw, b)
        r = await cb.send_ok(to=a, content="to 16 devices")
        for d in devs:
            p = await d.wait_push("CMD_PUSH_MSG")
            assert p.body.message_id == r.message_id
        await asyncio.sleep(0.3)
        for d in devs:
            assert not d.closed.is_set(), d.label
            assert len(d.pushes("CMD_PUSH_MSG")) == 1 and not d.pushes("CMD_KICK_PUSH"), d.frames
        # a device sending reaches the other 15
        r2 = await devs[3].send_ok(to=b, content="from dev03")
        for i, d in enumerate(devs):
            if i != 3:
                await d.wait_push("CMD_PUSH_MSG", is_msg(r2.message_id))
        await close_all(devs + [extra, cb])
    run(go())


def test_store_unavailable_server_busy(mserver, store_backend):
    if store_backend.name != "redis":
        pytest.skip("needs an external store that can be stopped (redis backend)")
    import services
    print("check: the store goes away -> sends answer ERR_SERVER_BUSY (nothing accepted); "
          "after it is back, sends succeed and sync shows no half-written message")
    private = services.RedisServer(persist=True).start()
    try:
        s = mserver(threads=2, env={"IMGW__STORE__REDIS_URL": private.url})

        async def go():
            a, b = uid("a"), uid("b")
            ca = await MClient.open(s, a)
            first = await ca.send_ok(to=b, content="before outage")
            private.stop()
            busy = await ca.send_msg(to=b, content="during outage", timeout=20)
            print("during outage:", busy)
            assert_code(busy, H.ERR.Value("ERR_SERVER_BUSY"), "send while the store is down")
            private.start()
            ok = None
            for _ in range(100):
                ok = await ca.send_msg(to=b, content="after outage", timeout=20)
                if ok.error_code == OK:
                    break
                await asyncio.sleep(0.1)
            assert_code(ok, OK, "send after the store came back")
            cb = await MClient.open(s, b)
            st = await cb.sync()
            print("receiver timeline:", [(m.seq, bytes(m.content)) for m in st.messages])
            assert [bytes(m.content) for m in st.messages] == [b"before outage",
                                                               b"after outage"], st
            assert [m.seq for m in st.messages] == [1, 2], st
            assert st.messages[0].message_id == first.message_id
            await close_all([ca, cb])
        run(go())
    finally:
        private.cleanup()
