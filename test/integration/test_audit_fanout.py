"""Audit items 7 and 8 (issue 17): fan-out cost and amplification.

* 7: a user's sends are bounded by one budget shared by all of its
  connections on the node (limits.user_send_rate), and a 1000-member group
  send reaches each member exactly once (the O(n) recipient builder, with
  duplicate members and the sender inside the member list).
* 8: read receipts and typing are pushed at most once per (user,
  conversation) per interval, the latest position / status last; receipts
  must name messages of their conversation; receipts and typing are bounded
  per user (limits.user_receipt_rate).

No test asserts speed. Where a count depends on how long a burst took
(pushes per interval, tokens refilled), the bound is computed from the
measured duration and the configured rate, so a slow machine only makes the
bound looser, never the test flaky.

Every test runs once per store backend.
"""

import asyncio
import time

import imgw_harness as H
from imgw_harness import pb, run
from msg_helpers import (  # noqa: F401  (fixtures)
    INVALID, OK, TOO_FAST, MClient, assert_code, close_all, group_conv, mgw,
    mserver, put_group, single_conv, store_backend, uid)

ERROR_RSP = H.cmd_num("CMD_ERROR_RSP")


async def gather_responses(futs, timeout=30):
    return [await asyncio.wait_for(f, timeout) for f in futs]


# ------------------------------------------------------------ 7: send budget


def test_user_send_budget_shared_by_platforms(mserver):
    s = mserver(send_rate=20, env={"limits.user_send_rate": 1})
    print("check: send_rate=20 (40 per connection at once) but user_send_rate=1 "
          "(burst 2): one user on 4 platforms sending 10 each at the same time gets "
          "at most 2 + 1/s x elapsed accepted, the rest ERR_SEND_TOO_FAST in the "
          "SendMessageResponse; only the accepted ones are stored; another user is "
          "not affected; after 2.5 s the user can send again")

    async def go():
        u, r, v = uid("u"), uid("r"), uid("v")
        plats = ["Web", "iOS", "Android", "PC"]
        cs = [await MClient.open(s, u, platform=p, codec="json" if i % 2 else "pb")
              for i, p in enumerate(plats)]
        cr = await MClient.open(s, r)
        cv = await MClient.open(s, v)
        t0 = time.monotonic()
        futs = []
        for i in range(10):
            for c in cs:
                _, f = await c.send_nowait("CMD_SEND_MSG_REQ",
                                           c.msg_req(to=r, content="burst %d" % i))
                futs.append(f)
        rsps = [f.body for f in await gather_responses(futs)]
        elapsed = time.monotonic() - t0
        ok = [x for x in rsps if x.error_code == OK]
        fast = [x for x in rsps if x.error_code == TOO_FAST]
        bound = 2 + 1.0 * elapsed + 1
        print("40 sends in %.2fs: %d accepted, %d ERR_SEND_TOO_FAST (bound %.1f)"
              % (elapsed, len(ok), len(fast), bound))
        assert len(ok) + len(fast) == 40, rsps
        assert 1 <= len(ok) <= bound, "per-user budget not applied: %d accepted" % len(ok)
        assert fast and "rate" in fast[0].error_msg, fast[:1]
        # only the accepted ones exist: the receiver's timeline has exactly them
        msgs, _ = await cr.sync_all()
        assert sorted(m.message_id for m in msgs) == sorted(x.message_id for x in ok), msgs
        # another user's budget is its own
        assert_code((await cv.send_msg(to=r)).body, OK, "other user")
        await asyncio.sleep(2.5)  # >= 2 tokens refilled at 1/s
        assert_code((await cs[2].send_msg(to=r, content="later")).body, OK,
                    "after the refill")
        await close_all(cs + [cr, cv])
    run(go())


# ------------------------------------------- 7: 1000-member group, O(n) dedupe


def test_group_1000_members_one_push_each(mgw):
    print("check: a 1000-entry member list (997 distinct: the sender listed twice, "
          "two members twice) -> the send succeeds, every online member connection "
          "gets exactly one push, the sender's other device one, the sending "
          "connection none; timelines hold the message once (sender seq 1, offline "
          "members sync exactly one)")

    async def go():
        sender = uid("gs")
        others = [uid("gm") for _ in range(996)]
        members = [sender] + others + [sender, others[0], others[1]]
        assert len(members) == 1000
        gid = uid("big")
        put_group(mgw.port, gid, members)
        online = others[:40] + others[-20:]
        sw = await MClient.open(mgw, sender, platform="Web")
        si = await MClient.open(mgw, sender, platform="iOS", codec="json")
        cs = []
        for i, m in enumerate(online):
            cs.append(await MClient.open(mgw, m, codec="json" if i % 3 == 0 else "pb"))
        # o0 also on a second platform: both its connections get it once
        cs.append(await MClient.open(mgw, others[0], platform="iOS"))
        r1 = await sw.send_ok(group=gid, content="to a thousand")
        print("send:", r1)
        assert r1.seq == 1, r1
        r2 = await sw.send_ok(group=gid, content="second")
        assert r2.seq == 2, r2
        for c in cs + [si]:
            await c.wait_push("CMD_PUSH_MSG", count=2, timeout=20)
        await asyncio.sleep(1.0)  # any duplicate would have arrived
        bad = []
        for c in cs + [si]:
            mids = [f.body.message_id for f in c.pushes("CMD_PUSH_MSG")]
            if mids != [r1.message_id, r2.message_id]:
                bad.append((c.label, mids))
        print("online connections checked: %d, wrong: %d" % (len(cs) + 1, len(bad)))
        assert not bad, bad[:5]
        assert sw.pushes("CMD_PUSH_MSG") == [], sw.frames[:3]
        seqs = [f.body.seq for f in cs[0].pushes("CMD_PUSH_MSG")]
        assert seqs == [1, 2], seqs
        st = await sw.sync()
        assert [m.message_id for m in st.messages] == [r1.message_id, r2.message_id], st
        for m in (others[500], others[1], others[995]):
            c = await MClient.open(mgw, m, platform="late")
            st = await c.sync()
            print("offline member %s sync: %s" % (m, [(x.seq, x.message_id) for x in st.messages]))
            assert [(x.seq, x.message_id) for x in st.messages] == [
                (1, r1.message_id), (2, r2.message_id)], st
            await c.close()
        await close_all(cs + [sw, si])
    run(go())


# ---------------------------------------------- 8: receipts coalesced, valid


async def read_receipt(c, mids, conv):
    f = await c.request("CMD_READ_RECEIPT_REQ",
                        pb.ReadReceiptRequest(message_ids=mids, conversation_id=conv),
                        expect="CMD_READ_RECEIPT_RSP")
    return f.body


def test_receipt_burst_coalesced(mserver):
    interval = 1.0
    s = mserver(env={"limits.receipt_interval_ms": int(interval * 1000)})
    print("check: 500 read receipts of one reader in one group conversation (moving "
          "through 10 messages) -> all answered ERR_SUCCESS; each member connection "
          "and the reader's other device get at most elapsed/interval + 3 pushes "
          "(not 500), positions never go back, and the last push carries the latest "
          "position; the reading connection gets none")

    async def go():
        a, b, rd = uid("a"), uid("b"), uid("rd")
        gid = uid("grp")
        conv = group_conv(gid)
        put_group(s.port, gid, [a, b, rd])
        ca = await MClient.open(s, a)
        cb = await MClient.open(s, b, codec="json")
        rw = await MClient.open(s, rd, platform="Web")
        ri = await MClient.open(s, rd, platform="iOS", codec="json")
        mids = [(await ca.send_ok(group=gid, content="m%d" % i)).message_id
                for i in range(10)]
        for c in (cb, rw, ri):
            await c.wait_push("CMD_PUSH_MSG", count=10)
        t0 = time.monotonic()
        futs = []
        for i in range(500):
            _, f = await rw.send_nowait(
                "CMD_READ_RECEIPT_REQ",
                pb.ReadReceiptRequest(message_ids=[mids[i // 50]], conversation_id=conv))
            futs.append(f)
        rsps = await gather_responses(futs)
        elapsed = time.monotonic() - t0
        codes = {H.err_name(f.body.error_code) for f in rsps}
        print("500 receipts answered in %.2fs: %s" % (elapsed, codes))
        assert codes == {"ERR_SUCCESS"}, codes
        for c in (ca, cb, ri):
            await c.wait_push("CMD_READ_RECEIPT_PUSH",
                              lambda f: list(f.body.message_ids) == [mids[-1]],
                              timeout=10)
        await asyncio.sleep(interval + 0.5)  # nothing more may follow
        bound = elapsed / interval + 3
        for c in (ca, cb, ri):
            ps = c.pushes("CMD_READ_RECEIPT_PUSH")
            pos = [mids.index(p.body.message_ids[-1]) for p in ps]
            print("%s: %d receipt pushes (bound %.1f), positions %s"
                  % (c.label, len(ps), bound, pos))
            assert 1 <= len(ps) <= bound, "receipts not coalesced: %d pushes" % len(ps)
            assert pos == sorted(pos), "position went back: %s" % pos
            assert list(ps[-1].body.message_ids) == [mids[-1]], ps[-1]
            assert all(p.body.user_id == rd and p.body.conversation_id == conv for p in ps)
        assert rw.pushes("CMD_READ_RECEIPT_PUSH") == [], rw.frames[-3:]
        await close_all([ca, cb, rw, ri])
    run(go())


def test_receipt_ids_must_be_in_conversation(mgw):
    print("check: a read receipt naming a message of another conversation, an unknown "
          "id, a malformed id, a mix of valid and foreign ids, or no id -> "
          "ERR_INVALID_PARAM in the ReadReceiptResponse and no push; a valid one "
          "-> ERR_SUCCESS and one push")

    async def go():
        a, b, c = uid("a"), uid("b"), uid("c")
        g1, g2 = uid("g1"), uid("g2")
        put_group(mgw.port, g1, [a, b])
        put_group(mgw.port, g2, [a, b])
        ca = await MClient.open(mgw, a)
        cb = await MClient.open(mgw, b, codec="json")
        cc = await MClient.open(mgw, c)
        ab = await ca.send_ok(to=b, content="a->b")
        ac = await ca.send_ok(to=c, content="a->c (b is not in it)")
        m1 = await ca.send_ok(group=g1, content="in g1")
        conv = single_conv(a, b)
        cases = [
            ([ac.message_id], conv, "message of another single conversation"),
            ([m1.message_id], conv, "group message named in a single conversation"),
            ([ab.message_id], group_conv(g2), "single message named in a group"),
            ([m1.message_id], group_conv(g2), "message of another group"),
            (["12345"], conv, "unknown message id"),
            (["not-a-number"], conv, "malformed message id"),
            ([ab.message_id, ac.message_id], conv, "valid id mixed with a foreign one"),
            ([], conv, "no message id"),
        ]
        for ids, cv, what in cases:
            rsp = await read_receipt(cb, ids, cv)
            print("%s -> %s %r" % (what, H.err_name(rsp.error_code), rsp.error_msg))
            assert_code(rsp, INVALID, what)
        await asyncio.sleep(0.5)
        assert ca.pushes("CMD_READ_RECEIPT_PUSH") == [], ca.frames
        rsp = await read_receipt(cb, [ab.message_id], conv)
        assert_code(rsp, OK, "valid receipt")
        p = await ca.wait_push("CMD_READ_RECEIPT_PUSH")
        assert list(p.body.message_ids) == [ab.message_id] and p.body.user_id == b, p
        rsp = await read_receipt(cb, [m1.message_id], group_conv(g1))
        assert_code(rsp, OK, "valid group receipt")
        p = await ca.wait_push("CMD_READ_RECEIPT_PUSH",
                               lambda f: f.body.conversation_id == group_conv(g1))
        assert list(p.body.message_ids) == [m1.message_id], p
        await close_all([ca, cb, cc])
    run(go())


def test_receipt_and_typing_user_budget(mserver):
    s = mserver(env={"limits.user_receipt_rate": 1})
    print("check: user_receipt_rate=1 (burst 2), receipts spread over two connections "
          "and two conversations: at most 2 + 1/s x elapsed answered ERR_SUCCESS, the "
          "rest ERR_SEND_TOO_FAST; typing over the budget gets no answer and no push")

    async def go():
        a, rd = uid("a"), uid("rd")
        c2 = uid("c2")
        ca = await MClient.open(s, a)
        cc2 = await MClient.open(s, c2)
        rw = await MClient.open(s, rd, platform="Web")
        ri = await MClient.open(s, rd, platform="iOS")
        m1 = await ca.send_ok(to=rd, content="one")
        m2 = await cc2.send_ok(to=rd, content="two")
        t0 = time.monotonic()
        futs = []
        for i in range(10):
            c, m, peer = (rw, m1, a) if i % 2 else (ri, m2, c2)
            _, f = await c.send_nowait(
                "CMD_READ_RECEIPT_REQ",
                pb.ReadReceiptRequest(message_ids=[m.message_id],
                                      conversation_id=single_conv(rd, peer)))
            futs.append(f)
        rsps = [f.body for f in await gather_responses(futs)]
        elapsed = time.monotonic() - t0
        ok = [x for x in rsps if x.error_code == OK]
        fast = [x for x in rsps if x.error_code == TOO_FAST]
        print("10 receipts in %.2fs: %d ok, %d ERR_SEND_TOO_FAST" % (elapsed, len(ok), len(fast)))
        assert len(ok) + len(fast) == 10, rsps
        assert 1 <= len(ok) <= 2 + elapsed + 1, len(ok)
        # the budget is now empty: typing is dropped silently
        _, fut = await rw.send_nowait("CMD_TYPING_STATUS_REQ",
                                      pb.TypingStatusRequest(
                                          conversation_id=single_conv(rd, a), status=1))
        await asyncio.sleep(0.5)
        assert not fut.done(), "typing over the budget was answered: %r" % fut.result()
        assert [f for f in rw.frames if f.command == ERROR_RSP] == [], rw.frames
        await asyncio.sleep(2.5)  # refilled
        rsp = await read_receipt(rw, [m1.message_id], single_conv(rd, a))
        assert_code(rsp, OK, "after the refill")
        await close_all([ca, cc2, rw, ri])
    run(go())


# ------------------------------------------------------- 8: typing coalesced


def test_typing_burst_coalesced(mserver):
    interval = 1.0
    s = mserver(env={"limits.typing_interval_ms": int(interval * 1000)})
    print("check: 100 typing requests (99 x status 1, then 0) in one group -> each "
          "other member gets at most elapsed/interval + 3 pushes and the last one "
          "has status 0; the typist gets none; a typing in another conversation "
          "gets its own push (its own window)")

    async def go():
        t, b, c = uid("t"), uid("b"), uid("c")
        gid = uid("grp")
        conv = group_conv(gid)
        put_group(s.port, gid, [t, b, c])
        ct = await MClient.open(s, t)
        cb = await MClient.open(s, b, codec="json")
        cc = await MClient.open(s, c)
        t0 = time.monotonic()
        for i in range(100):
            await ct.send_nowait("CMD_TYPING_STATUS_REQ",
                                 pb.TypingStatusRequest(conversation_id=conv,
                                                        status=0 if i == 99 else 1))
        await ct.heartbeat()  # frames are handled in order: all 100 were seen
        elapsed = time.monotonic() - t0
        for x in (cb, cc):
            await x.wait_push("CMD_TYPING_STATUS_PUSH", lambda f: f.body.status == 0,
                              timeout=10)
        await asyncio.sleep(interval + 0.5)
        bound = elapsed / interval + 3
        for x in (cb, cc):
            ps = x.pushes("CMD_TYPING_STATUS_PUSH")
            print("%s: %d typing pushes (bound %.1f), statuses %s"
                  % (x.label, len(ps), bound, [p.body.status for p in ps]))
            assert 1 <= len(ps) <= bound, "typing not coalesced: %d pushes" % len(ps)
            assert ps[-1].body.status == 0, ps[-1]
            assert all(p.body.user_id == t and p.body.conversation_id == conv for p in ps)
        assert ct.pushes("CMD_TYPING_STATUS_PUSH") == [], ct.frames
        # another conversation has its own window
        await ct.send_nowait("CMD_TYPING_STATUS_REQ",
                             pb.TypingStatusRequest(conversation_id=single_conv(t, b),
                                                    status=1))
        await cb.wait_push("CMD_TYPING_STATUS_PUSH",
                           lambda f: f.body.conversation_id == single_conv(t, b))
        await close_all([ct, cb, cc])
    run(go())
