"""Conversation list with unread counts (issue 13; protocol.md 3.1, 3.2).

The memory backend keeps conversation state (docs/store.md "Conversations");
the redis backend does not yet, and its answer is checked to be a clear
error rather than a wrong list.
"""

import asyncio

import pytest

import imgw_harness as H
from imgw_harness import pb, run
from msg_helpers import (  # noqa: F401  (fixtures)
    NO_CONV, OK, MClient, assert_code, close_all, group_conv, mgw, put_group,
    single_conv, store_backend, uid)

BUSY = H.ERR.Value("ERR_SERVER_BUSY")


def memory_only(gw):
    if gw.backend.name != "memory":
        pytest.skip("conversation state: memory backend only so far")


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
    memory_only(mgw)
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
    memory_only(mgw)
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
    memory_only(mgw)
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
    memory_only(mgw)
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


def test_redis_answers_busy_not_a_wrong_list(mgw):
    if mgw.backend.name == "memory":
        pytest.skip("redis only")
    print("check: without conversation state the list is ERR_SERVER_BUSY")

    async def go():
        c = await MClient.open(mgw, uid("r"))
        r = await conv_list(c)
        print("list:", r)
        assert_code(r, BUSY, "list on redis")
        await c.close()
    run(go())
