"""A cluster of imgw nodes sharing one Redis and one RabbitMQ
(protocol.md 4, 5, 7, 8, 10; docs/cluster.md).

  test_cross_node_exactly_once      1:1, group, typing, receipts, revoke
                                    between users on three nodes: each push
                                    arrives exactly once (count by id)
  test_cross_node_kick              same (user, platform) on another node:
                                    CMD_KICK_PUSH + close 4002 on the old one
  test_downlink_direct_broadcast_malformed
                                    business downlink over imgw.direct:
                                    ids (both codecs), broadcast (this node
                                    only), malformed ones rejected + counted
  test_kill9_node_no_acked_loss     kill -9 one node during traffic: every
                                    acknowledged message is in the timelines;
                                    its user reconnects elsewhere and syncs
  test_rabbitmq_outage_and_recovery private broker stopped during traffic:
                                    local delivery goes on, cross-node via
                                    sync, /readyz 503, reconnect, resume
  test_read_state_across_nodes      conversation list (issue 13): unread
                                    counts kept in Redis; reading on one
                                    node clears the badge of the reader's
                                    device on the other node (push + list)

Run:  cd /work/main && /usr/bin/python3 -m pytest -q -s test/integration/test_cluster.py
"""

import asyncio
import time

import imgw_harness as H
from cluster_helpers import (OK, Recorder, ametrics, apublish, astatus,
                             await_for, check_contiguous, kill9, metrics,
                             short_id, start_node, status, timeline, wait_for)
from imgw_harness import pb
from msg_helpers import MClient, close_all, group_conv, put_group, single_conv, uid
from services import rabbitmq_factory, rabbitmq_server, redis_server  # noqa: F401


def start_cluster(server, redis_url, mq_url, n=3, threads=2, **overrides):
    tag = short_id("c")
    nodes = []
    for i in range(n):
        nodes.append(start_node(server, redis_url, mq_url,
                                broker_id="%s-node%d" % (tag, i + 1),
                                node_id=100 + i + 1, threads=threads, **overrides))
    # every node's queue is declared and consumed once its broker link is up
    for s in nodes:
        wait_for(lambda: metrics(s.port).get("imgw_mq_up") == 1, 20,
                 what="%s imgw_mq_up 1" % s.broker_id)
    return nodes


def count_by(frames, key):
    out = {}
    for f in frames:
        k = key(f)
        out[k] = out.get(k, 0) + 1
    return out


# ---------------------------------------------------------- 1 exactly once


def test_cross_node_exactly_once(server, redis_server, rabbitmq_server):
    print("check: A@node1, B@node2 (json), C@node3, B's 2nd device @node3: 1:1 and "
          "group messages, typing, read receipts and revoke pushes cross nodes and "
          "each arrives exactly once at each expected connection, never at the "
          "sending connection; push seqs match the receivers' timelines")
    n1, n2, n3 = start_cluster(server, redis_server.url, rabbitmq_server.url)
    A, B, C = uid("A"), uid("B"), uid("C")
    gid = uid("g")
    put_group(n1.port, gid, [A, B, C])

    async def go():
        ca = await MClient.open(n1, A)
        cb = await MClient.open(n2, B, codec="json")
        cc = await MClient.open(n3, C)
        cb2 = await MClient.open(n3, B, platform="ios")
        conns = {"A": ca, "B": cb, "C": cc, "B2": cb2}
        expect = {}   # message_id -> set of connection names

        async def send(frm, n, to=None, group=None, who=()):
            for i in range(n):
                r = await conns[frm].send_ok(to=to, group=group,
                                             content="%s->%s %d" % (frm, to or group, i))
                expect[r.message_id] = set(who)

        await send("A", 3, to=B, who=("B", "B2"))
        await send("B", 3, to=C, who=("C", "B2"))
        await send("C", 3, to=A, who=("A",))
        await send("A", 2, group=gid, who=("B", "B2", "C"))
        await send("B", 2, group=gid, who=("A", "C", "B2"))
        await send("B2", 2, group=gid, who=("A", "B", "C"))
        await send("C", 1, group=gid, who=("A", "B", "B2"))
        want = {name: sum(1 for w in expect.values() if name in w) for name in conns}
        print("messages sent: %d; pushes expected per connection: %r" % (len(expect), want))
        for name, c in conns.items():
            await c.wait_push("CMD_PUSH_MSG", count=want[name], timeout=15)
        await asyncio.sleep(1.0)   # let any duplicate arrive
        problems = []
        for name, c in conns.items():
            got = count_by(c.pushes("CMD_PUSH_MSG"), lambda f: f.body.message_id)
            for mid, who in expect.items():
                n = got.get(mid, 0)
                exp = 1 if name in who else 0
                if n != exp:
                    problems.append("%s got %s %d times, expected %d" % (name, mid, n, exp))
            extra = set(got) - set(expect)
            if extra:
                problems.append("%s got unknown message ids %r" % (name, extra))
        print("push counts checked: %d problems" % len(problems))
        assert not problems, "\n".join(problems)

        # push seq == the receiver's timeline seq
        for name, c in conns.items():
            tl = {mid: seq for seq, mid, _ in await timeline(c)}
            check_contiguous(sorted((s, m, None) for m, s in tl.items()), name)
            for f in c.pushes("CMD_PUSH_MSG"):
                assert tl.get(f.body.message_id) == f.body.seq, (
                    "%s: push seq %d for %s, timeline says %r" % (
                        name, f.body.seq, f.body.message_id, tl.get(f.body.message_id)))

        # typing: 1:1 from A (node1), group from C (node3)
        await typing(ca, single_conv(A, B), 1)
        await typing(cc, group_conv(gid), 1)
        # read receipt: B (node2) reads A's 1:1 messages
        ab_mids = [m for m, w in expect.items() if w == {"B", "B2"}]
        rr = await cb.request("CMD_READ_RECEIPT_REQ",
                              pb.ReadReceiptRequest(message_ids=ab_mids,
                                                    conversation_id=single_conv(A, B)),
                              expect="CMD_READ_RECEIPT_RSP")
        assert rr.body.error_code == OK, rr
        # revoke: A revokes a 1:1 message to B, C revokes its group message
        rv1 = ab_mids[0]
        rv2 = [m for m, w in expect.items() if w == {"A", "B", "B2"}][0]
        for c, mid, conv in ((ca, rv1, single_conv(A, B)), (cc, rv2, group_conv(gid))):
            r = await c.request("CMD_REVOKE_MSG_REQ",
                                pb.RevokeMessageRequest(message_id=mid, conversation_id=conv),
                                expect="CMD_REVOKE_MSG_RSP")
            assert r.body.error_code == OK, r

        typ_want = {"A": [("g", C)], "B": [("s", A), ("g", C)], "B2": [("s", A), ("g", C)],
                    "C": []}
        rr_want = {"A": 1, "B": 0, "B2": 1, "C": 0}
        rv_want = {"A": [rv2], "B": [rv1, rv2], "B2": [rv1, rv2], "C": [rv1, rv2]}
        # C is not in the 1:1 conversation A-B: it must not get rv1
        rv_want["C"] = []
        for name, c in conns.items():
            if typ_want[name]:
                await c.wait_push("CMD_TYPING_STATUS_PUSH", count=len(typ_want[name]),
                                  timeout=10)
            if rr_want[name]:
                await c.wait_push("CMD_READ_RECEIPT_PUSH", count=rr_want[name], timeout=10)
            if rv_want[name]:
                await c.wait_push("CMD_REVOKE_MSG_PUSH", count=len(rv_want[name]),
                                  timeout=10)
        await asyncio.sleep(1.0)
        problems = []
        for name, c in conns.items():
            typ = sorted(("g" if f.body.conversation_id == group_conv(gid) else "s",
                          f.body.user_id) for f in c.pushes("CMD_TYPING_STATUS_PUSH"))
            if typ != sorted(typ_want[name]):
                problems.append("%s typing pushes %r, expected %r" % (name, typ, typ_want[name]))
            rrs = c.pushes("CMD_READ_RECEIPT_PUSH")
            if len(rrs) != rr_want[name]:
                problems.append("%s read receipt pushes %d, expected %d: %r"
                                % (name, len(rrs), rr_want[name], rrs))
            for f in rrs:
                if sorted(f.body.message_ids) != sorted(ab_mids) or f.body.user_id != B:
                    problems.append("%s read receipt push wrong: %r" % (name, f))
            rvs = sorted(f.body.message_id for f in c.pushes("CMD_REVOKE_MSG_PUSH"))
            if rvs != sorted(rv_want[name]):
                problems.append("%s revoke pushes %r, expected %r" % (name, rvs, rv_want[name]))
        print("typing / receipt / revoke pushes checked: %d problems" % len(problems))
        assert not problems, "\n".join(problems)
        await close_all(list(conns.values()))

    H.run(go())


async def typing(c, conv, status_):
    body = pb.TypingStatusRequest(conversation_id=conv, status=status_)
    await c.ws.send(c._encode("CMD_TYPING_STATUS_REQ", body, c.next_seq()))


# ------------------------------------------------------------------ 2 kick


def test_cross_node_kick(server, redis_server, rabbitmq_server):
    print("check: X/web on node1, then X/web on node2: node1's connection gets "
          "CMD_KICK_PUSH and close 4002; node2's stays; X/ios on node3 untouched; "
          "the route names node2")
    n1, n2, n3 = start_cluster(server, redis_server.url, rabbitmq_server.url)
    X = uid("X")
    rc = redis_server.client()

    async def go():
        old = await MClient.open(n1, X, platform="web")
        ios = await MClient.open(n3, X, platform="ios", codec="json")
        new = await MClient.open(n2, X, platform="web", codec="json")
        code = await old.wait_closed(timeout=10)
        kicks = old.pushes("CMD_KICK_PUSH")
        print("old connection closed with %s; kick pushes: %r" % (code, kicks))
        assert len(kicks) == 1, old.all_frames
        assert code == 4002, code
        await asyncio.sleep(1.0)
        assert not new.closed.is_set(), "the new connection was closed (%s)" % new.close_code
        assert not ios.closed.is_set(), "ios connection was closed (%s)" % ios.close_code
        await new.heartbeat()
        await ios.heartbeat()
        assert not new.pushes("CMD_KICK_PUSH") and not ios.pushes("CMD_KICK_PUSH")
        h = rc.hgetall("IM-USER-%s" % X)
        print("route after the kick: %r" % h)
        assert h.get("web") == n2.broker_id and h.get("ios") == n3.broker_id, h
        await close_all([new, ios])

    H.run(go())


# ------------------------------------------------- conversations (issue 13)


def test_read_state_across_nodes(server, redis_server, rabbitmq_server):
    print("check: a on node1 sends 1:1 and in a group to b, who has a device on "
          "node1 and one on node2: both list the same unread counts (a's own "
          "not counted); b reads the 1:1 on node1: node2's device gets "
          "CMD_READ_RECEIPT_PUSH with read_seq and lists unread 0 there, the "
          "group still unread; a's list untouched (b's message unread, its own "
          "not)")
    n1, n2 = start_cluster(server, redis_server.url, rabbitmq_server.url, n=2)
    a, b, gid = uid("a"), uid("b"), uid("g")
    assert put_group(n1.port, gid, [a, b]).status == 200

    async def conv_list(c):
        f = await c.request("CMD_CONVERSATION_LIST_REQ",
                            pb.ConversationListRequest(),
                            expect="CMD_CONVERSATION_LIST_RSP")
        assert f.body.error_code == OK, f.body
        return f.body

    async def go():
        ca = await MClient.open(n1, a)
        b1 = await MClient.open(n1, b, platform="web")
        b2 = await MClient.open(n2, b, platform="ios", codec="json")
        for i in range(2):
            await ca.send_ok(to=b, content="dm %d" % i)
        await ca.send_ok(group=gid, content="group")
        await b1.send_ok(to=a, content="mine")
        pushes = await b2.wait_push("CMD_PUSH_MSG", count=3)
        conv = single_conv(a, b)
        l1, l2 = await conv_list(b1), await conv_list(b2)
        print("b on node1:", l1)
        print("b on node2:", l2)
        assert l1 == l2, (l1, l2)
        assert [c.conversation_id for c in l2.conversations] == [conv, group_conv(gid)]
        assert [c.unread for c in l2.conversations] == [2, 1] and l2.total_unread == 3
        last = max((p.body for p in pushes if p.body.conversation_id == conv),
                   key=lambda m: m.seq)
        rr = await b1.request("CMD_READ_RECEIPT_REQ",
                              pb.ReadReceiptRequest(conversation_id=conv,
                                                    message_ids=[last.message_id],
                                                    read_seq=l1.conversations[0].last_seq),
                              expect="CMD_READ_RECEIPT_RSP")
        assert rr.body.error_code == OK, rr.body
        p = await b2.wait_push("CMD_READ_RECEIPT_PUSH",
                               pred=lambda f: f.body.read_seq > 0, timeout=10)
        print("node2's device of b got:", p)
        assert p.body.user_id == b and p.body.conversation_id == conv
        assert p.body.read_seq == l1.conversations[0].last_seq, p
        l2 = await conv_list(b2)
        print("b on node2 after reading on node1:", l2)
        assert [c.unread for c in l2.conversations] == [0, 1] and l2.total_unread == 1
        la = await conv_list(ca)
        print("a's list:", la)
        # a's: b's "mine" unread, its own messages never; b's read no effect
        assert [c.unread for c in la.conversations] == [1, 0], la
        assert la.conversations[0].preview == "mine" and la.total_unread == 1, la
        await close_all([ca, b1, b2])

    H.run(go())


# -------------------------------------------------------------- 3 downlink


def push_data(mid, content="hello"):
    return {"message_id": mid, "content": content, "sender_id": "biz-service",
            "message_type": 1}


def test_downlink_direct_broadcast_malformed(server, redis_server, rabbitmq_server):
    print("check: downlink {code 202, ids, data} on imgw.direct with routing key = "
          "node1's broker_id reaches the users there (pb + json); broadcast reaches "
          "every authenticated connection of node1 only; malformed messages are "
          "rejected, counted in imgw_mq_rejected_total, node healthy, a valid one "
          "after them arrives")
    n1, n2 = start_cluster(server, redis_server.url, rabbitmq_server.url, n=2)
    mq = rabbitmq_server
    U1, U2, U3 = uid("U1"), uid("U2"), uid("U3")

    async def go():
        c1 = await MClient.open(n1, U1)
        c2 = await MClient.open(n1, U2, codec="json")
        c3 = await MClient.open(n2, U3)
        anon = await MClient.connect(n1)   # connected, never authenticated
        await apublish(mq, n1.broker_id, {"code": 202, "ids": [U1, U2, U3],
                                          "data": push_data("dl-1", "direct hello")})
        for c in (c1, c2):
            f = await c.wait_push("CMD_PUSH_MSG", pred=lambda f: f.body.message_id == "dl-1",
                                  timeout=10)
            print("%s got %r" % (c.label, f))
            assert f.codec == c.codec, f
            assert bytes(f.body.content) == b"direct hello", f
            assert f.body.sender_id == "biz-service", f
        await apublish(mq, n1.broker_id, {"code": 202, "broadcast": True,
                                          "data": push_data("bc-1", "broadcast hello")})
        for c in (c1, c2):
            f = await c.wait_push("CMD_PUSH_MSG", pred=lambda f: f.body.message_id == "bc-1",
                                  timeout=10)
            assert bytes(f.body.content) == b"broadcast hello", f
        await asyncio.sleep(1.0)
        print("U3 (node2) frames: %r; anonymous frames: %r" % (c3.frames, anon.frames))
        assert not c3.pushes(), "node2's user got a push published to node1: %r" % c3.frames
        assert not anon.pushes("CMD_PUSH_MSG"), (
            "an unauthenticated connection got the broadcast: %r" % anon.frames)

        before = (await ametrics(n1.port)).get("imgw_mq_rejected_total", 0)
        nested = {"a": 1}
        for _ in range(200):
            nested = {"a": nested}
        malformed = [
            ("not json", b"this is not json {"),
            ("json array", [{"code": 202, "ids": [U1], "data": push_data("bad-arr")}]),
            ("code is a string", {"code": "x202", "ids": [U1], "data": push_data("bad-1")}),
            ("ids is a string", {"code": 202, "ids": U1, "data": push_data("bad-2")}),
            ("data is a list", {"code": 202, "ids": [U1], "data": [push_data("bad-3")]}),
            ("ids has a number", {"code": 202, "ids": [U1, 7], "data": push_data("bad-4")}),
            ("unknown code 9999", {"code": 9999, "ids": [U1], "data": push_data("bad-5")}),
            ("client->server code 200", {"code": 200, "ids": [U1],
                                         "data": {"receiver_id": U2, "content": "x"}}),
            ("5 MB body", {"code": 202, "ids": [U1],
                           "data": push_data("bad-6", "x" * (5 << 20))}),
            ("nested 200 deep", {"code": 202, "ids": [U1], "data": nested}),
            ("nested data deep", {"code": 202, "ids": [U1],
                                  "data": dict(push_data("bad-7"), extra=nested)}),
        ]
        for what, body in malformed:
            await apublish(mq, n1.broker_id, body)
            print("published malformed: %s" % what)
        await apublish(mq, n1.broker_id, {"code": 202, "ids": [U1],
                                          "data": push_data("dl-2", "after the junk")})
        f = await c1.wait_push("CMD_PUSH_MSG", pred=lambda f: f.body.message_id == "dl-2",
                               timeout=20)
        assert bytes(f.body.content) == b"after the junk", f
        await asyncio.sleep(0.5)
        after = (await ametrics(n1.port)).get("imgw_mq_rejected_total", 0)
        print("imgw_mq_rejected_total %d -> %d (%d malformed published)"
              % (before, after, len(malformed)))
        assert after - before == len(malformed), (before, after, len(malformed))
        got = sorted(f.body.message_id for f in c1.pushes("CMD_PUSH_MSG"))
        print("U1 pushes: %r" % got)
        assert got == ["bc-1", "dl-1", "dl-2"], "malformed downlinks delivered: %r" % got
        assert n1.proc.poll() is None and await astatus(n1.port, "/healthz") == 200
        assert await astatus(n1.port, "/readyz") == 200
        await c1.heartbeat()
        await close_all([c1, c2, c3, anon])

    H.run(go())


# ----------------------------------------------------------- 4 kill -9 node


def test_kill9_node_no_acked_loss(server, redis_server, rabbitmq_server):
    print("check: A@node1 and B@node2 send to D@node3 and to each other; node3 is "
          "killed with SIGKILL during the traffic; every acknowledged message is in "
          "its receiver's timeline; D reconnects to node1 and syncs exactly the "
          "acknowledged set, seqs 1..N without gaps")
    n1, n2, n3 = start_cluster(server, redis_server.url, rabbitmq_server.url)
    A, B, D = uid("A"), uid("B"), uid("D")

    async def go():
        ca = await MClient.open(n1, A)
        cb = await MClient.open(n2, B, codec="json")
        cd = await MClient.open(n3, D)
        ra = Recorder(ca, [{"to": D}, {"to": B}], window=2, pause=0.02, prefix="fromA").start()
        rb = Recorder(cb, [{"to": D}, {"to": A}], window=2, pause=0.02, prefix="fromB").start()
        await asyncio.sleep(1.5)
        n_before = len(ra.acked()) + len(rb.acked())
        t_kill = time.monotonic()
        kill9(n3)
        print("node3 killed after %d acknowledged sends" % n_before)
        await asyncio.sleep(2.0)
        await ra.stop()
        await rb.stop()
        print("A: %r  B: %r" % (ra.summary(), rb.summary()))
        recs = ra.recs + rb.recs
        bad = [x for x in recs if x.code != OK]
        assert not bad, "sends failed although Redis and their nodes are up: %r" % bad[:5]
        code = await cd.wait_closed(timeout=10)
        print("D's connection to the killed node ended (close code %s)" % code)
        after_kill = [x for x in recs if x.t_sent > t_kill + 0.2]
        print("%d sends acknowledged after the kill" % len(after_kill))
        assert after_kill, "no traffic after the kill"
        assert any(x.req.receiver_id == D for x in after_kill)
        to_d = [x for x in recs if x.req.receiver_id == D]
        to_a = [x for x in rb.recs if x.req.receiver_id == A]
        to_b = [x for x in ra.recs if x.req.receiver_id == B]
        await cd.close()

        d2 = await MClient.open(n1, D)
        tl_d = await timeline(d2)
        print("D reconnected to node1: max_seq %d, %d timeline entries, %d acknowledged "
              "sends to D" % (d2.auth_rsp.max_seq, len(tl_d), len(to_d)))
        assert [s for s, _, _ in tl_d] == list(range(1, len(tl_d) + 1)), "gaps in D's timeline"
        assert d2.auth_rsp.max_seq == len(tl_d)
        got = sorted(m for _, m, _ in tl_d)
        want = sorted(x.message_id for x in to_d)
        assert got == want, ("D's timeline != acknowledged set: missing %r, extra %r"
                             % (sorted(set(want) - set(got))[:5], sorted(set(got) - set(want))[:5]))
        for c, exp, who in ((ca, to_a, "A"), (cb, to_b, "B")):
            tl = {m for _, m, _ in await timeline(c)}
            lost = [x for x in exp if x.message_id not in tl]
            print("%s: %d acknowledged messages to it, %d missing" % (who, len(exp), len(lost)))
            assert not lost, lost[:5]
        await close_all([ca, cb, d2])

    H.run(go())


# ------------------------------------------------------- 5 RabbitMQ outage


def test_rabbitmq_outage_and_recovery(server, redis_server, rabbitmq_factory):
    print("check: private broker, two nodes; broker stopped: imgw_mq_up 0, /readyz 503, "
          "same-node pushes still arrive, cross-node sends are stored (receiver syncs "
          "them) and the dropped pushes counted; broker started again on the same "
          "port: imgw_mq_up 1, /readyz 200, cross-node pushes resume, no imgw restart")
    mq = rabbitmq_factory()
    n1, n2 = start_cluster(server, redis_server.url, mq.url, n=2)
    A, L, B = uid("A"), uid("L"), uid("B")

    async def go():
        ca = await MClient.open(n1, A)
        cl = await MClient.open(n1, L, codec="json")
        cb = await MClient.open(n2, B)
        r = await ca.send_ok(to=B, content="before")
        await cb.wait_push("CMD_PUSH_MSG", pred=lambda f: f.body.message_id == r.message_id,
                           timeout=10)
        print("cross-node push works before the outage")
        mq.stop()
        print("broker stopped")
        for s in (n1, n2):
            await await_for(lambda: metrics(s.port).get("imgw_mq_up") == 0, 20,
                            what="%s imgw_mq_up 0" % s.broker_id)
            st = await astatus(s.port, "/readyz")
            print("%s: imgw_mq_up 0, /readyz %s, /healthz %s" % (
                s.broker_id, st, status(s.port, "/healthz")))
            assert st == 503, st
            assert status(s.port, "/healthz") == 200
        dropped0 = (await ametrics(n1.port)).get("imgw_remote_push_dropped_total", 0)
        local = await ca.send_ok(to=L, content="local during outage")
        await cl.wait_push("CMD_PUSH_MSG", pred=lambda f: f.body.message_id == local.message_id,
                           timeout=10)
        print("same-node push arrived during the outage")
        cross = [await ca.send_ok(to=B, content="cross during outage %d" % i)
                 for i in range(3)]
        back = await cb.send_ok(to=A, content="B->A during outage")
        await asyncio.sleep(0.5)
        dropped1 = (await ametrics(n1.port)).get("imgw_remote_push_dropped_total", 0)
        print("imgw_remote_push_dropped_total on node1: %d -> %d; B got %d of the 3 pushes "
              "live" % (dropped0, dropped1, sum(1 for x in cross if cb.pushes(
                  "CMD_PUSH_MSG", pred=lambda f, x=x: f.body.message_id == x.message_id))))
        assert dropped1 >= dropped0 + 3, (dropped0, dropped1)
        tl_b = {m for _, m, _ in await timeline(cb)}
        tl_a = {m for _, m, _ in await timeline(ca)}
        assert all(x.message_id in tl_b for x in cross), "B's sync lacks the outage messages"
        assert back.message_id in tl_a, "A's sync lacks B's outage message"

        mq.start()
        print("broker started again on port %d" % mq.port)
        for s in (n1, n2):
            await await_for(lambda: metrics(s.port).get("imgw_mq_up") == 1, 30,
                            what="%s imgw_mq_up 1 after the broker restart" % s.broker_id)
            await await_for(lambda: status(s.port, "/readyz") == 200, 10,
                            what="%s /readyz 200" % s.broker_id)
        print("both nodes reconnected")
        r1 = await ca.send_ok(to=B, content="after")
        r2 = await cb.send_ok(to=A, content="after, back")
        await cb.wait_push("CMD_PUSH_MSG", pred=lambda f: f.body.message_id == r1.message_id,
                           timeout=15)
        await ca.wait_push("CMD_PUSH_MSG", pred=lambda f: f.body.message_id == r2.message_id,
                           timeout=15)
        print("cross-node pushes resumed in both directions")
        assert n1.proc.poll() is None and n2.proc.poll() is None
        await close_all([ca, cl, cb])

    H.run(go())
