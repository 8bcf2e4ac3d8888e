"""Paced drain (operations issue): on SIGTERM the node stops accepting and
closes its WebSocket connections with 1001 spread over drain_seconds, not
all at once, then exits 0."""
import asyncio
import json
import signal
import time

import websockets

import imgw_harness as H

N = 60
WINDOW = 3


def test_drain_is_paced(server):
    srv = server(threads=2, drain_seconds=WINDOW)
    print("check: %d authenticated clients, SIGTERM with drain_seconds=%d: every "
          "client gets 1001, the closes are spread over the window, new "
          "connections are refused, exit 0" % (N, WINDOW))

    async def go():
        clients = []
        for i in range(N):
            tok = H.make_token("drain%d" % i)
            ws = await websockets.connect("ws://127.0.0.1:%d/ws?token=%s"
                                          % (srv.port, tok))
            await ws.send(json.dumps({"command": "CMD_AUTH_REQ", "sequence": 1,
                                      "body": {}}))
            r = json.loads(await ws.recv())
            assert r["body"]["error_code"] == "ERR_SUCCESS"
            clients.append(ws)
        closed_at = {}

        async def watch(i, ws):
            try:
                while True:
                    await ws.recv()
            except websockets.ConnectionClosed:
                closed_at[i] = (time.monotonic(), ws.close_code)

        tasks = [asyncio.ensure_future(watch(i, ws)) for i, ws in enumerate(clients)]
        t0 = time.monotonic()
        srv.signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        try:
            await asyncio.wait_for(websockets.connect(
                "ws://127.0.0.1:%d/ws" % srv.port), 2)
            refused = False
        except Exception:
            refused = True
        print("new connection during the drain refused:", refused)
        assert refused
        await asyncio.wait_for(asyncio.gather(*tasks), WINDOW + 10)
        return t0, closed_at

    t0, closed_at = H.run(go())
    times = sorted(t - t0 for t, _ in closed_at.values())
    codes = {c for _, c in closed_at.values()}
    print("close codes:", codes)
    print("first close %.2f s, median %.2f s, last %.2f s after SIGTERM"
          % (times[0], times[len(times) // 2], times[-1]))
    early = sum(1 for t in times if t < WINDOW / 4.0)
    print("closed in the first quarter of the window: %d of %d" % (early, N))
    assert len(times) == N and codes == {1001}
    # Paced, not at once: the closes span most of the window and no more
    # than about half of them come in its first quarter.
    assert times[-1] - times[0] >= WINDOW * 0.5
    assert early <= N * 0.5
    code = srv.proc.wait(timeout=WINDOW + 10)
    srv.stopped = True
    srv.exit_code = code
    print("exit code", code)
    assert code == 0
