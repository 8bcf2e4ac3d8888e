"""Batching under load (server.batch_us, src/net/loop.c batch_wait): after
an iteration that read from two or more connections the loop waits
batch_us before it polls again; an idle or one-connection iteration never
waits, and batch_us = 0 turns it off. Nothing is lost or reordered either
way. docs/operations.md, conf/imgw.ini.
"""

import asyncio

import imgw_harness as H
from imgw_harness import WSClient, make_token, run

N = 16       # connections, all on one loop (-t 1)
ROUNDS = 30  # each round: every connection sends a heartbeat at once


def batch_waits(port):
    r = H.http_get(port, "/metrics")
    assert r.status == 200, r
    total = 0
    for name, _labels, v in H.parse_metrics(r.body.decode()):
        if name == "imgw_batch_waits_total":
            total += v
    return total


async def rounds(s, tag):
    clients = []
    try:
        for i in range(N):
            c = await WSClient.connect(s)
            await c.auth_ok("%s-%d" % (tag, i), make_token("%s-%d" % (tag, i)))
            clients.append(c)
        idle = batch_waits(s.port)
        # One client at a time: each iteration reads one connection.
        for c in clients:
            await c.heartbeat()
        single = batch_waits(s.port)
        # All at once: the loop reads several connections per iteration.
        for _ in range(ROUNDS):
            rsp = await asyncio.gather(*(c.heartbeat() for c in clients))
            assert len(rsp) == N
        busy = batch_waits(s.port)
        return idle, single, busy
    finally:
        await asyncio.gather(*(c.close() for c in clients))


def test_busy_loop_waits_idle_loop_does_not(server):
    s = server(threads=1)
    print("check: default batch_us, -t 1: %d heartbeats one by one add no "
          "wait; %d rounds of %d concurrent heartbeats all answered and "
          "imgw_batch_waits_total grows" % (N, ROUNDS, N))
    idle, single, busy = run(rounds(s, "bw"))
    print("batch waits: after auth %d, after one-by-one %d, after concurrent %d"
          % (idle, single, busy))
    assert single == idle, "one connection per iteration waited: %d -> %d" % (idle, single)
    assert busy > single, "concurrent input never made the loop wait: %d" % busy


def test_batch_us_zero_never_waits(server):
    s = server(threads=1, env={"IMGW__SERVER__BATCH_US": "0"})
    print("check: batch_us = 0: %d rounds of %d concurrent heartbeats all "
          "answered, imgw_batch_waits_total stays 0" % (ROUNDS, N))
    idle, single, busy = run(rounds(s, "bz"))
    print("batch waits: %d %d %d" % (idle, single, busy))
    assert (idle, single, busy) == (0, 0, 0)
