"""Heartbeat: CMD_HEARTBEAT_REQ/RSP and the heartbeat timeout (close 4000).

protocol.md sections 3, 5 (heartbeat) and 10 (close codes).
"""

import asyncio
import time

import pytest

import imgw_harness as H
from imgw_harness import WSClient, make_token, run, pb


@pytest.mark.parametrize("codec", ["pb", "json"])
def test_heartbeat_server_time(gw, codec):
    print("check: CMD_HEARTBEAT_REQ -> CMD_HEARTBEAT_RSP, sequence echoed, "
          "server_time (ms) within 5s of now (%s)" % codec)

    async def go():
        c = await WSClient.connect(gw, codec=codec)
        await c.auth_ok("hb-" + codec, make_token("hb-" + codec))
        before = H.now_ms()
        f = await c.request("CMD_HEARTBEAT_REQ", pb.HeartbeatRequest(client_time=before),
                            seq=1234, expect="CMD_HEARTBEAT_RSP")
        after = H.now_ms()
        print("got:", f, "local window", before, after)
        st = f.body.server_time
        assert before - 5000 <= st <= after + 5000, (
            "server_time %d not within 5s of [%d, %d] (seconds instead of ms?)"
            % (st, before, after))
        await c.close()
    run(go())


def test_heartbeat_sequence_max_uint32(gw):
    print("check: sequence 4294967295 (uint32 max) is echoed exactly")

    async def go():
        c = await WSClient.connect(gw)
        await c.auth_ok("hb-seqmax", make_token("hb-seqmax"))
        f = await c.heartbeat(seq=4294967295)
        assert f.sequence == 4294967295, f
        await c.close()
    run(go())


@pytest.mark.parametrize("codec", ["pb", "json"])
def test_heartbeat_timeout_closes_4000(server, codec):
    s = server(heartbeat_timeout=2)
    print("check: heartbeat_timeout=2; an authenticated client that sends nothing "
          "-> close 4000 (at least ~1s, within 10s) (%s)" % codec)

    async def go():
        c = await WSClient.connect(s, codec=codec)
        await c.auth_ok("hbto-" + codec, make_token("hbto-" + codec))
        t0 = time.monotonic()
        await c.expect_close(4000, timeout=10)
        dt = time.monotonic() - t0
        print("closed with 4000 after %.2fs" % dt)
        assert dt >= 0.9, "closed too early (%.2fs)" % dt
    run(go())


def test_heartbeats_keep_connection_alive(server):
    s = server(heartbeat_timeout=2)
    print("check: heartbeat_timeout=2; heartbeats every 0.5s keep the connection "
          "open for 5s (2.5x the timeout)")

    async def go():
        c = await WSClient.connect(s)
        await c.auth_ok("hbalive", make_token("hbalive"))
        t0 = time.monotonic()
        while time.monotonic() - t0 < 5.0:
            await asyncio.sleep(0.5)
            await c.heartbeat()
        print("still open after %.1fs" % (time.monotonic() - t0))
        await c.heartbeat()
        await c.close()
    run(go())


def test_any_command_frame_refreshes_heartbeat(server):
    s = server(heartbeat_timeout=2)
    print("check: heartbeat_timeout=2; other command frames (CMD_SYNC_REQ) every 0.5s "
          "also keep it open for 5s ('no frame for heartbeat_timeout')")

    async def go():
        c = await WSClient.connect(s)
        await c.auth_ok("hbsync", make_token("hbsync"))
        t0 = time.monotonic()
        while time.monotonic() - t0 < 5.0:
            await asyncio.sleep(0.5)
            f = await c.request("CMD_SYNC_REQ", pb.SyncRequest(limit=1))
            assert f.command != H.cmd_num("CMD_ERROR_RSP") or \
                f.body.error_code != H.ERR.Value("ERR_AUTH_FAILED"), f
        await c.heartbeat()
        await c.close()
    run(go())


def test_heartbeat_timeout_after_heartbeats_stop(server):
    s = server(heartbeat_timeout=2)
    print("check: heartbeat_timeout=2; heartbeats for 3s, then silence -> close 4000 "
          "within 10s of the last heartbeat")

    async def go():
        c = await WSClient.connect(s)
        await c.auth_ok("hbstop", make_token("hbstop"))
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3.0:
            await asyncio.sleep(0.5)
            await c.heartbeat()
        t1 = time.monotonic()
        await c.expect_close(4000, timeout=10)
        print("closed %.2fs after the last heartbeat" % (time.monotonic() - t1))
    run(go())
