"""RFC 6455 framing robustness: protocol violations, huge declared lengths,
data pipelined after the handshake, large messages across TCP reads,
abrupt disconnects.

protocol.md section 1 (RFC 6455, version 13), section 2 (one frame = one
envelope, reassembly bounded by the size limit), section 10 (close codes).
"""

import os
import socket
import struct
import time

import pytest

import imgw_harness as H
from imgw_harness import ERR, make_token, pb

OK = ERR.Value("ERR_SUCCESS")
HB_RSP = H.cmd_num("CMD_HEARTBEAT_RSP")


def raw_authed(port, user):
    rw = H.RawWS(port)
    rw.send_frame(H.OP_BINARY, H.pb_frame("CMD_AUTH_REQ", pb.AuthRequest(
        user_id=user, token=make_token(user), platform="Web"), seq=1))
    op, data = rw.recv_message()
    f = H.decode_frame(data)
    assert f.command == H.cmd_num("CMD_AUTH_RSP") and f.body.error_code == OK, f
    return rw


def hb_bytes(seq):
    return H.pb_frame("CMD_HEARTBEAT_REQ", pb.HeartbeatRequest(client_time=1), seq=seq)


VIOLATIONS = {
    "rsv1_without_extension": lambda rw: rw.send_frame(H.OP_BINARY, hb_bytes(2), rsv=4),
    "reserved_opcode_3": lambda rw: rw.send_frame(3, b"x"),
    "reserved_control_opcode_11": lambda rw: rw.send_frame(11, b""),
    "control_frame_over_125": lambda rw: rw.send_frame(H.OP_PING, b"p" * 126),
    "fragmented_control_frame": lambda rw: rw.send_frame(H.OP_PING, b"p", fin=False),
    "continuation_without_start": lambda rw: rw.send_frame(H.OP_CONT, hb_bytes(2)),
    "new_message_inside_fragmented": lambda rw: (
        rw.send_frame(H.OP_BINARY, b"\x08", fin=False),
        rw.send_frame(H.OP_BINARY, hb_bytes(3))),
}


@pytest.mark.parametrize("kind", sorted(VIOLATIONS))
def test_protocol_violation_closes_1002(gw, kind):
    print("check: RFC 6455 violation %s -> close 1002" % kind)
    rw = raw_authed(gw.port, "viol-" + kind)
    try:
        try:
            VIOLATIONS[kind](rw)
        except (BrokenPipeError, ConnectionResetError):
            pass
        code, reason, before = rw.expect_close(5)
        print("close code %s reason %r frames before %r" % (code, reason, before))
        assert code == 1002, code
    finally:
        rw.close()


def test_huge_declared_length_closes_1009(gw):
    print("check: a frame header declaring 2^40 bytes -> close 1009 without the "
          "server waiting for (or allocating) the payload")
    rw = raw_authed(gw.port, "hugelen")
    try:
        hdr = struct.pack("!BBQ", 0x80 | H.OP_BINARY, 0x80 | 127, 1 << 40) + os.urandom(4)
        rw.sock.sendall(hdr + b"\x00" * 16)
        code, reason, before = rw.expect_close(5)
        print("close code %s reason %r" % (code, reason))
        assert code == 1009, code
    finally:
        rw.close()
    r = H.http_get(gw.port, "/healthz")
    assert r.status == 200


def test_frame_pipelined_with_handshake(gw):
    print("check: handshake and the first WebSocket frame in one TCP write -> 101, "
          "then the frame is processed")
    c = H.HTTPConn(gw.port)
    try:
        req, key = H.upgrade_request(gw.port)
        payload = hb_bytes(9)
        mk = os.urandom(4)
        frame = struct.pack("!BB", 0x80 | H.OP_BINARY, 0x80 | len(payload)) + mk + \
            bytes(b ^ mk[i % 4] for i, b in enumerate(payload))
        c.send(req + frame)
        resp = c.read_response(head_only=True)
        assert resp.status == 101, resp
        rw = H.RawWS.__new__(H.RawWS)
        rw.http, rw.sock = c, c.sock
        op, data = rw.recv_message(5)
        f = H.decode_frame(data)
        print("got:", f)
        assert f.command == HB_RSP and f.sequence == 9, f
    finally:
        c.close()


def test_many_frames_in_one_write(gw):
    print("check: 100 heartbeats in one TCP write -> 100 responses in order")
    rw = raw_authed(gw.port, "burst")
    try:
        buf = b""
        for i in range(100):
            payload = hb_bytes(1000 + i)
            mk = os.urandom(4)
            buf += struct.pack("!BB", 0x80 | H.OP_BINARY, 0x80 | len(payload)) + mk + \
                bytes(b ^ mk[j % 4] for j, b in enumerate(payload))
        rw.sock.sendall(buf)
        seqs = []
        for i in range(100):
            op, data = rw.recv_message(5)
            f = H.decode_frame(data)
            assert f.command == HB_RSP, f
            seqs.append(f.sequence)
        assert seqs == list(range(1000, 1100)), seqs
    finally:
        rw.close()


def test_large_message_across_reads(gw):
    print("check: a 120000-byte binary message (default max_frame_bytes 131072), "
          "sent in small TCP pieces, is reassembled and answered")
    rw = raw_authed(gw.port, "large")
    try:
        pad = 120000
        body = (pb.HeartbeatRequest(client_time=1).SerializeToString()
                + b"\x7a" + H._varint(pad) + b"z" * pad)
        payload = H.pb_frame("CMD_HEARTBEAT_REQ", body, seq=77)
        mk = os.urandom(4)
        frame = struct.pack("!BBQ", 0x80 | H.OP_BINARY, 0x80 | 127, len(payload)) + mk + \
            bytes(b ^ mk[i % 4] for i, b in enumerate(payload))
        for i in range(0, len(frame), 7000):
            rw.sock.sendall(frame[i:i + 7000])
            time.sleep(0.002)
        op, data = rw.recv_message(10)
        f = H.decode_frame(data)
        print("got:", f)
        assert f.command == HB_RSP and f.sequence == 77, f
    finally:
        rw.close()


def frame_bytes(opcode, payload, fin=True, len16=False):
    """A masked client frame; len16 forces the 16-bit length form (a
    non-minimal encoding when the payload is under 126 bytes)."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    if n < 126 and not len16:
        hdr = struct.pack("!BB", b0, 0x80 | n)
    elif n < 65536:
        hdr = struct.pack("!BBH", b0, 0x80 | 126, n)
    else:
        hdr = struct.pack("!BBQ", b0, 0x80 | 127, n)
    mk = os.urandom(4)
    return hdr + mk + bytes(b ^ mk[i % 4] for i, b in enumerate(payload))


def padded_hb(seq, pad):
    body = (pb.HeartbeatRequest(client_time=1).SerializeToString()
            + b"\x7a" + H._varint(pad) + b"z" * pad)
    return H.pb_frame("CMD_HEARTBEAT_REQ", body, seq=seq)


def test_mixed_frames_in_one_write_and_a_cut_frame(gw):
    print("check: one TCP write with whole data frames (7- and 16-bit lengths, "
          "the reader's fast path), a ping, a fragmented message, more whole "
          "frames and the first half of a frame, then the rest -> every answer "
          "in order and the pong")
    rw = raw_authed(gw.port, "mixed")
    try:
        first = frame_bytes(H.OP_BINARY, hb_bytes(1))
        big = frame_bytes(H.OP_BINARY, padded_hb(2, 300))      # 16-bit length
        over = frame_bytes(H.OP_BINARY, padded_hb(3, 5000))    # over 4 KiB
        ping = frame_bytes(H.OP_PING, b"pp")
        hb4 = hb_bytes(4)
        frag = frame_bytes(H.OP_BINARY, hb4[:3], fin=False) + \
            frame_bytes(H.OP_CONT, hb4[3:])
        after = frame_bytes(H.OP_BINARY, hb_bytes(5))
        cut = frame_bytes(H.OP_BINARY, padded_hb(6, 200))
        rw.sock.sendall(first + big + over + ping + frag + after + cut[:50])
        time.sleep(0.05)
        rw.sock.sendall(cut[50:] + frame_bytes(H.OP_BINARY, hb_bytes(7)))
        seqs, pongs = [], 0
        while len(seqs) < 7:
            fin, op, data = rw.recv_frame(5)
            if op == H.OP_PONG:
                assert data == b"pp", data
                pongs += 1
                continue
            f = H.decode_frame(data)
            assert f.command == HB_RSP, f
            seqs.append(f.sequence)
        print("answers:", seqs, "pongs:", pongs)
        assert seqs == [1, 2, 3, 4, 5, 6, 7], seqs
        assert pongs == 1
    finally:
        rw.close()


@pytest.mark.parametrize("kind", ["non_minimal_16bit_length", "unmasked",
                                  "invalid_utf8_text"])
def test_bad_frame_after_a_good_one_in_one_write(gw, kind):
    print("check: a whole good frame then a bad one (%s) in one TCP write -> "
          "the first is answered, then the connection is closed" % kind)
    rw = raw_authed(gw.port, "badafter-" + kind)
    try:
        good = frame_bytes(H.OP_BINARY, hb_bytes(11))
        if kind == "non_minimal_16bit_length":
            bad, want = frame_bytes(H.OP_BINARY, hb_bytes(12), len16=True), 1002
        elif kind == "unmasked":
            p = hb_bytes(12)
            bad, want = struct.pack("!BB", 0x80 | H.OP_BINARY, len(p)) + p, 1002
        else:
            bad, want = frame_bytes(H.OP_TEXT, b"\xff\xfe"), 1007
        rw.sock.sendall(good + bad)
        code, reason, before = rw.expect_close(5)
        print("close code %s reason %r frames before %d" % (code, reason, len(before)))
        assert code == want, code
        answered = [H.decode_frame(d).sequence for op, d in before
                    if op == H.OP_BINARY]
        assert answered == [11], answered
    finally:
        rw.close()


def test_abrupt_disconnects_do_not_hurt(gw):
    print("check: clients vanishing mid-handshake, mid-frame and mid-fragmented "
          "message (RST) leave the server serving")
    for i in range(10):
        # mid handshake
        c = H.HTTPConn(gw.port)
        c.send(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgr")
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()
        # mid frame / mid fragmented message, after auth
        rw = raw_authed(gw.port, "abrupt-%d" % i)
        if i % 2:
            rw.sock.sendall(struct.pack("!BB", 0x80 | H.OP_BINARY, 0x80 | 100) + b"\x00" * 20)
        else:
            rw.send_frame(H.OP_BINARY, b"\x08", fin=False)
        rw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        rw.close()
    r = H.http_get(gw.port, "/healthz")
    assert r.status == 200, r

    async def go():
        c = await H.WSClient.connect(gw)
        await c.auth_ok("after-abrupt", make_token("after-abrupt"))
        await c.heartbeat()
        await c.close()
    H.run(go())
