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
        await ca.send_cmd_typing = None  # placeholder removed below
    H.run(go())
