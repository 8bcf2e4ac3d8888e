"""Conversation list with unread counts (issue 13; protocol.md 3.1, 3.2).

Every test runs on the memory and the redis backend (msg_helpers'
store_backend; docs/store.md "Conversations"). Reading on one device
reaching the user's devices on other loops is checked here (-t 2); across
nodes in test_cluster.py, across a kill -9 of the file backend in
test_durable.py.
"""

import asyncio

import pytest

import imgw_harness as H
from imgw_harness import pb, run
from msg_helpers import (  # noqa: F401  (fixtures)
    NO_CONV, OK, MClient, assert_code, close_all, group_conv, mgw, mserver,
    put_group,
    single_conv, store_backend, uid)

INVALID = H.ERR.Value("ERR_INVALID_PARAM")


async def conv_list(c, before_seq=0, limit=0):
    f = await c.request("CMD_CONVERSATION_LIST_REQ",
                        pb.ConversationListRequest(before_seq=before_seq, limit=limit),
                        expect="CMD_CONVERSATION_LIST_RSP")
    return f.body


async def conv_delete(c, conv):
    f = await c.request("CMD_CONVERSATION_DELETE_REQ",
                        pb.ConversationDeleteRequest(conversation_id=conv),
                        expect="CMD_CONVERSATION_DELETE_RSP")
    return f.body


async def read_to(c, conv, seq, mids=()):
    f = await c.request("CMD_READ_RECEIPT_REQ",
                        pb.ReadReceiptRequest(message_ids=list(mids),
                                              conversation_id=conv, read_seq=seq),
                        expect="CMD_READ_RECEIPT_RSP")
    return f.body


@pytest.mark.parametrize("codec", ["pb", "json"])
def test_unread_single_own_not_counted_and_read_seq(mgw, codec):
    print("check (%s): b's list has a's conversation with the last message, "
          "preview and unread 2 (b's own message not counted); a's has 1; "
          "a receipt with read_seq lowers and then clears b's count" % codec)

    async def go():
        a, b = uid("a"), uid("b")
        ca = await MClient.open(mgw, a, codec=codec)
        cb = await MClient.open(mgw, b, codec=codec)
        cb2 = await MClient.open(mgw, b, codec="json" if codec == "pb" else "pb",
                                 platform="iOS")
        await ca.send_ok(to=b, content="first")
        await cb.send_ok(to=a, content="mine")
        last = await ca.send_ok(to=b, content="h\u00e9llo " * 40)
        pushes = await cb.wait_push("CMD_PUSH_MSG", count=2)
        conv = single_conv(a, b)
        lb = await conv_list(cb)
        print("b's list:", lb)
        assert_code(lb, OK, "list")
        assert len(lb.conversations) == 1, lb
        e = lb.conversations[0]
        assert e.conversation_id == conv and e.peer_id == a and e.group_id == "", e
        assert e.unread == 2 and lb.total_unread == 2, lb
        assert e.last_sender_id == a and e.last_message_id == last.message_id, e
        assert e.last_message_type == 1 and e.last_seq == 3, e
        assert len(e.preview.encode()) <= 120 and e.preview.startswith("h\u00e9llo"), e
        la = await conv_list(ca)
        print("a's list:", la)
        assert la.conversations[0].peer_id == b and la.conversations[0].unread == 1, la
        first = min(pushes, key=lambda p: p.body.seq).body
        first_seq = first.seq
        assert_code(await read_to(cb, conv, first_seq, [first.message_id]), OK,
                    "read to first")
        lb = await conv_list(cb)
        print("after read_seq=%d:" % first_seq, lb)
        assert lb.conversations[0].unread == 1 and lb.conversations[0].read_seq == first_seq
        assert_code(await read_to(cb, conv, lb.conversations[0].last_seq,
                                  [last.message_id]), OK, "read all")
        lb = await conv_list(cb)
        assert lb.conversations[0].unread == 0 and lb.total_unread == 0, lb
        # b's other device: told the read state, and its list agrees.
        p = await cb2.wait_push("CMD_READ_RECEIPT_PUSH",
                                pred=lambda f: f.body.read_seq == first_seq)
        print("b's other device got:", p)
        assert p.body.user_id == b and p.body.conversation_id == conv, p
        l2 = await conv_list(cb2)
        assert l2.conversations[0].unread == 0 and l2.total_unread == 0, l2
        await close_all([ca, cb, cb2])
    run(go())


def test_group_paging_and_order(mgw):
    print("check: group and 1:1 conversations newest first, paged by before_seq "
          "with has_more; total_unread over all")

    async def go():
        me, p, q = uid("me"), uid("p"), uid("q")
        gid = uid("g")
        assert put_group(mgw.port, gid, [me, p, q]).status == 200
        cm = await MClient.open(mgw, me)
        cp = await MClient.open(mgw, p)
        cq = await MClient.open(mgw, q)
        await cp.send_ok(to=me, content="1")
        await cq.send_ok(group=gid, content="2")
        await cq.send_ok(to=me, content="3")
        await cp.send_ok(group=gid, content="4")
        want = [group_conv(gid), single_conv(me, q), single_conv(me, p)]
        got, before, pages = [], 0, 0
        while True:
            r = await conv_list(cm, before_seq=before, limit=1)
            print("page:", r)
            assert_code(r, OK, "list page")
            assert r.total_unread == 4, r
            got += [c.conversation_id for c in r.conversations]
            pages += 1
            if not r.has_more:
                break
            before = r.conversations[-1].last_seq
        assert got == want, got
        assert pages == 3
        r = await conv_list(cm)
        g = r.conversations[0]
        assert g.group_id == gid and g.peer_id == "" and g.unread == 2, g
        assert g.last_sender_id == p, g
        await close_all([cm, cp, cq])
    run(go())


def test_delete_for_one_side_and_not_exist(mgw):
    print("check: delete hides the conversation for the deleter only; a second "
          "delete, a conversation without the user, or garbage -> "
          "ERR_CONVERSATION_NOT_EXIST")

    async def go():
        a, b, c = uid("a"), uid("b"), uid("c")
        ca = await MClient.open(mgw, a, codec="json")
        cb = await MClient.open(mgw, b)
        await ca.send_ok(to=b, content="x")
        await cb.wait_push("CMD_PUSH_MSG")
        conv = single_conv(a, b)
        r = await conv_delete(cb, conv)
        print("delete:", r)
        assert_code(r, OK, "delete")
        assert r.conversation_id == conv
        assert len((await conv_list(cb)).conversations) == 0
        assert len((await conv_list(ca)).conversations) == 1
        for bad in (conv, single_conv(a, c), "s_", "g_", "x_y", group_conv("nosuch")):
            r = await conv_delete(cb, bad)
            print("delete %r:" % bad, r)
            assert_code(r, NO_CONV, "delete %r" % bad)
        await close_all([ca, cb])
    run(go())


def test_underscore_ids_resolve_relative_to_the_requester(mgw):
    print("check: s_a_b_c names (a_b, c) for c and (a, b_c) for b_c: each "
          "requester deletes only its own conversation")

    async def go():
        base = uid("z")
        x1, y1 = base + "_a_b", base + "_c"
        cx = await MClient.open(mgw, x1)
        cy = await MClient.open(mgw, y1)
        await cx.send_ok(to=y1, content="m")
        await cy.wait_push("CMD_PUSH_MSG")
        conv = single_conv(x1, y1)
        ly = await conv_list(cy)
        assert ly.conversations[0].peer_id == x1 and ly.conversations[0].conversation_id == conv
        assert_code(await conv_delete(cy, conv), OK, "delete by y")
        assert len((await conv_list(cx)).conversations) == 1
        await close_all([cx, cy])
    run(go())


def test_bounds_and_bad_input(mgw):
    print("check: page size 0..50 (0: 20), before_seq >= 0 and read_seq >= 0, "
          "else ERR_INVALID_PARAM naming the bound; a long text preview is cut "
          "to 120 bytes on a UTF-8 boundary, binary content has none")

    async def go():
        a, b = uid("a"), uid("b")
        ca = await MClient.open(mgw, a)
        cb = await MClient.open(mgw, b, codec="json")
        for kw, what in (({"limit": 51}, "limit"), ({"limit": -1}, "limit"),
                         ({"before_seq": -1}, "before_seq")):
            r = await conv_list(cb, **kw)
            print("list %r:" % kw, r)
            assert_code(r, INVALID, "list %r" % kw)
            assert what in r.error_msg, r
        await ca.send_ok(to=b, content="\u00e9" * 100)  # 200 bytes
        await cb.wait_push("CMD_PUSH_MSG")
        e = (await conv_list(cb)).conversations[0]
        print("preview of 200 bytes of \u00e9: %d bytes" % len(e.preview.encode()))
        assert e.preview == "\u00e9" * 60, e
        await ca.send_ok(to=b, content="x" + "\u00e9" * 100)
        await cb.wait_push("CMD_PUSH_MSG", count=2)
        e = (await conv_list(cb)).conversations[0]
        assert e.preview == "x" + "\u00e9" * 59, e  # 119 bytes: no split char
        await ca.send_ok(to=b, content=b"\xff\xfe\x00binary")
        await cb.wait_push("CMD_PUSH_MSG", count=3)
        e = (await conv_list(cb)).conversations[0]
        assert e.preview == "" and e.unread == 3, e
        r = await read_to(cb, single_conv(a, b), -1, [e.last_message_id])
        print("read_seq -1:", r)
        assert_code(r, INVALID, "read_seq -1")
        assert (await conv_list(cb)).conversations[0].unread == 3
        await close_all([ca, cb])
    run(go())


def test_list_length_bound(mserver):
    print("check: store.max_conversations = 3: a user with 5 partners keeps the "
          "3 updated last; total_unread counts only those")
    s = mserver(threads=1, env={"store.max_conversations": "3"})

    async def go():
        me = uid("me")
        cm = await MClient.open(s, me)
        peers = [uid("p%d" % i) for i in range(5)]
        for p in peers:
            c = await MClient.open(s, p)
            await c.send_ok(to=me, content="from " + p)
            await c.close()
        await cm.wait_push("CMD_PUSH_MSG", count=5)
        r = await conv_list(cm, limit=50)
        print("list:", [(c.peer_id, c.unread) for c in r.conversations])
        assert [c.peer_id for c in r.conversations] == peers[:1:-1], r
        assert r.total_unread == 3 and not r.has_more, r
        await cm.close()
    run(go())


def loop_counts(port):
    r = H.http_get(port, "/metrics")
    per = {}
    for name, labels, v in H.parse_metrics(r.body.decode()):
        if name == "imgw_connections_open":
            per[labels["loop"]] = per.get(labels["loop"], 0) + v
    return per


async def devices_on_two_loops(server, user):
    """Opens connections of user (platforms d0, d1, ...) one at a time until
    two sit on different loops (imgw_connections_open{loop} tells which loop
    took each); returns ({loop: client}, all clients)."""
    by_loop, opened = {}, []
    for i in range(16):
        before = loop_counts(server.port)
        c = await MClient.open(server, user, platform="d%d" % i,
                               codec="pb" if i % 2 else "json")
        after = loop_counts(server.port)
        opened.append(c)
        grew = [l for l in after if after[l] > before.get(l, 0)]
        if len(grew) == 1 and grew[0] not in by_loop:
            by_loop[grew[0]] = c
        if len(by_loop) == 2:
            return by_loop, opened
    raise AssertionError("16 connections never spread over two loops: %r"
                         % loop_counts(server.port))


def test_read_on_one_device_updates_the_other_loop(mserver):
    print("check: -t 2, b has a device on each loop; b reads on one: the other "
          "gets CMD_READ_RECEIPT_PUSH with read_seq and its list shows unread 0; "
          "a read up to an earlier seq leaves the later messages unread on both")
    s = mserver(threads=2)

    async def go():
        a, b = uid("a"), uid("b")
        by_loop, opened = await devices_on_two_loops(s, b)
        (l1, d1), (l2, d2) = sorted(by_loop.items())
        print("b's devices: %s on loop %s, %s on loop %s" % (d1.label, l1, d2.label, l2))
        ca = await MClient.open(s, a)
        for i in range(3):
            await ca.send_ok(to=b, content="m%d" % i)
        await d2.wait_push("CMD_PUSH_MSG", count=3)
        # b's timeline seqs (read_seq is in the reader's timeline)
        sent = sorted((f.body for f in await d1.wait_push("CMD_PUSH_MSG", count=3)),
                      key=lambda m: m.seq)
        conv = single_conv(a, b)
        assert (await conv_list(d2)).total_unread == 3
        assert_code(await read_to(d1, conv, sent[0].seq, [sent[0].message_id]),
                    OK, "read to the first")
        p = await d2.wait_push("CMD_READ_RECEIPT_PUSH",
                               pred=lambda f: f.body.read_seq == sent[0].seq)
        print("other loop's device got:", p)
        assert p.body.user_id == b and p.body.conversation_id == conv, p
        e = (await conv_list(d2)).conversations[0]
        assert e.unread == 2 and e.read_seq == sent[0].seq, e
        assert_code(await read_to(d1, conv, sent[2].seq, [sent[2].message_id]),
                    OK, "read all")
        await d2.wait_push("CMD_READ_RECEIPT_PUSH",
                           pred=lambda f: f.body.read_seq == sent[2].seq)
        r = await conv_list(d2)
        print("other loop's list after reading all:", r)
        assert r.conversations[0].unread == 0 and r.total_unread == 0, r
        # Every other device of b heard of it; the reading one did not.
        for c in opened:
            got = c.pushes("CMD_READ_RECEIPT_PUSH",
                           pred=lambda f: f.body.read_seq == sent[2].seq)
            if c is d1:
                assert got == [], (c.label, got)
            else:
                await c.wait_push("CMD_READ_RECEIPT_PUSH",
                                  pred=lambda f: f.body.read_seq == sent[2].seq)
        await close_all(opened + [ca])
    run(go())


def test_read_seq_moves_even_when_ids_are_covered(mgw):
    print("check: two receipts naming the same message id, the second with a "
          "higher read_seq, inside one coalescing window: the reader's other "
          "device still learns the higher read_seq, and the list agrees")

    async def go():
        a, b = uid("a"), uid("b")
        ca = await MClient.open(mgw, a)
        b1 = await MClient.open(mgw, b)
        b2 = await MClient.open(mgw, b, platform="iOS", codec="json")
        for i in range(3):
            await ca.send_ok(to=b, content="m%d" % i)
        pushes = sorted((f.body for f in await b1.wait_push("CMD_PUSH_MSG", count=3)),
                        key=lambda m: m.seq)
        conv = single_conv(a, b)
        mid = pushes[2].message_id
        assert_code(await read_to(b1, conv, pushes[0].seq, [mid]), OK, "first")
        assert_code(await read_to(b1, conv, pushes[2].seq, [mid]), OK, "covered ids")
        p = await b2.wait_push("CMD_READ_RECEIPT_PUSH",
                               pred=lambda f: f.body.read_seq == pushes[2].seq)
        print("b's other device got:", p)
        e = (await conv_list(b2)).conversations[0]
        assert e.unread == 0 and e.read_seq == pushes[2].seq, e
        await close_all([ca, b1, b2])
    run(go())
