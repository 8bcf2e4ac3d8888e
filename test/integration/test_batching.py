"""Batching under load (server.batch_us, src/net/loop.c batch_wait): after
an iteration that read from two or more connections, a loop waits what is
left of batch_us since its previous iteration before it polls again; an
idle or one-connection iteration never waits, and batch_us = 0 turns it
off. Nothing is lost or reordered either way. docs/operations.md,
conf/imgw.ini; the rule itself: test/unit/test_loop.c batch_wait_rule.
"""

import os
import struct

import imgw_harness as H
from imgw_harness import make_token, pb

N = 16       # connections, all on one loop (-t 1)
ROUNDS = 30  # each round: every connection's PIPE heartbeats in one write
PIPE = 20


def batch_waits(port):
    r = H.http_get(port, "/metrics")
    assert r.status == 200, r
    total = 0
    for name, _labels, v in H.parse_metrics(r.body.decode()):
        if name == "imgw_batch_waits_total":
            total += v
    return total


def masked(payload):
    """One masked binary frame (payload < 126 bytes), as a client sends."""
    assert len(payload) < 126
    mk = os.urandom(4)
    body = bytes(b ^ mk[i % 4] for i, b in enumerate(payload))
    return struct.pack("!BB", 0x82, 0x80 | len(payload)) + mk + body


def recv_pb(rw):
    op, data = rw.recv_message()
    assert op == H.OP_BINARY, (op, data)
    return H.decode_frame(data)


def rounds(s, tag):
    conns = []
    try:
        for i in range(N):
            rw = H.RawWS(s.port)
            conns.append(rw)
            user = "%s-%d" % (tag, i)
            rw.send_frame(H.OP_BINARY, H.pb_frame("CMD_AUTH_REQ", pb.AuthRequest(
                user_id=user, token=make_token(user), platform="Web"), seq=1))
            f = recv_pb(rw)
            assert f.command == H.cmd_num("CMD_AUTH_RSP") and f.body.error_code == 0, f
        idle = batch_waits(s.port)
        # One connection at a time: each iteration reads one connection.
        for rw in conns:
            rw.send_frame(H.OP_BINARY, H.pb_frame(
                "CMD_HEARTBEAT_REQ", pb.HeartbeatRequest(client_time=1), seq=2))
            assert recv_pb(rw).command == H.cmd_num("CMD_HEARTBEAT_RSP")
        single = batch_waits(s.port)
        # Frames written round-robin over every connection, as fast as the
        # client can: for a few milliseconds the loop finds several
        # connections readable in iteration after iteration.
        seq = 10
        for _ in range(ROUNDS):
            want = list(range(seq, seq + PIPE))
            frames = [masked(H.pb_frame(
                "CMD_HEARTBEAT_REQ", pb.HeartbeatRequest(client_time=1), seq=q))
                for q in want]
            for fr in frames:
                for rw in conns:
                    rw.sock.sendall(fr)
            for rw in conns:
                got = []
                for _k in range(PIPE):
                    f = recv_pb(rw)
                    assert f.command == H.cmd_num("CMD_HEARTBEAT_RSP"), f
                    got.append(f.sequence)
                assert got == want, "answers lost or reordered: %r != %r" % (got, want)
            seq += PIPE
        busy = batch_waits(s.port)
        return idle, single, busy
    finally:
        for rw in conns:
            rw.close()


def test_busy_loop_waits_idle_loop_does_not(server):
    # 2 ms rather than the default 200 us: a sanitizer build's iterations
    # may take longer than 200 us, and a saturated loop rightly never waits.
    s = server(threads=1, env={"IMGW__SERVER__BATCH_US": "2000"})
    print("check: batch_us 2000, -t 1: %d heartbeats one by one add no "
          "wait; %d rounds of %d pipelined heartbeats on each of %d "
          "connections all answered in order, and imgw_batch_waits_total "
          "grows" % (N, ROUNDS, PIPE, N))
    idle, single, busy = rounds(s, "bw")
    print("batch waits: after auth %d, after one-by-one %d, after bursts %d"
          % (idle, single, busy))
    assert single == idle, "one connection per iteration waited: %d -> %d" % (idle, single)
    assert busy > single, "bursts on %d connections never made the loop wait" % N


def test_batch_us_zero_never_waits(server):
    s = server(threads=1, env={"IMGW__SERVER__BATCH_US": "0"})
    print("check: batch_us = 0: %d rounds of %d pipelined heartbeats on "
          "each of %d connections all answered in order, "
          "imgw_batch_waits_total stays 0" % (ROUNDS, PIPE, N))
    idle, single, busy = rounds(s, "bz")
    print("batch waits: %d %d %d" % (idle, single, busy))
    assert (idle, single, busy) == (0, 0, 0)
