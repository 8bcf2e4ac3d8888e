"""Reactor loops: connections spread over several loops (SO_REUSEPORT),
visible per loop in /metrics.

protocol.md sections 1 (/metrics), 9 (threads, ports).
"""

import asyncio

import imgw_harness as H
from imgw_harness import WSClient, make_token, run

N = 100


def conn_open_by_loop(port):
    r = H.http_get(port, "/metrics")
    assert r.status == 200, r
    per = {}
    for name, labels, v in H.parse_metrics(r.body.decode()):
        if name == "imgw_connections_open":
            assert "loop" in labels, "imgw_connections_open without a loop label: %r" % labels
            per[labels["loop"]] = per.get(labels["loop"], 0) + v
    return per, r.body.decode()


def test_connections_spread_over_loops(server):
    s = server(threads=4)
    print("check: -t 4, %d authenticated connections -> imgw_connections_open{loop} "
          "shows >1 loop in use and sums to %d" % (N, N))

    async def go():
        sem = asyncio.Semaphore(20)

        async def one(i):
            async with sem:
                c = await WSClient.connect(s)
                await c.auth_ok("loop-user-%d" % i, make_token("loop-user-%d" % i))
                return c

        clients = await asyncio.gather(*(one(i) for i in range(N)))
        await asyncio.sleep(0.3)
        per, text = conn_open_by_loop(s.port)
        print("per loop:", per)
        try:
            assert len(per) >= 1, "no imgw_connections_open samples:\n" + text
            used = [k for k, v in per.items() if v > 0]
            assert len(used) > 1, "all connections on one loop: %r" % per
            assert sum(per.values()) == N, "sum %r != %d: %r" % (sum(per.values()), N, per)
            for h in clients[:10]:
                await h.heartbeat()
        finally:
            await asyncio.gather(*(c.close() for c in clients))
        # after the clients are gone the gauges go back to 0
        for _ in range(50):
            per, _ = conn_open_by_loop(s.port)
            if sum(per.values()) == 0:
                break
            await asyncio.sleep(0.1)
        print("after close:", per)
        assert sum(per.values()) == 0, "connections_open not back to 0: %r" % per
    run(go())


def test_metrics_loop_labels_match_threads(server):
    s = server(threads=3)
    print("check: -t 3 -> imgw_connections_open has samples for loops 0,1,2")
    per, text = conn_open_by_loop(s.port)
    print("per loop:", per)
    assert sorted(per) == ["0", "1", "2"], per
