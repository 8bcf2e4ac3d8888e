"""Wire codecs: binary protobuf and text JSON envelopes, errors, WebSocket
framing (fragmentation, UTF-8, size limit, ping).

protocol.md sections 2, 3, 5 (limits) and 10 (errors, JSON codec, close codes).
"""

import asyncio
import json
import time

import pytest
import websockets

import imgw_harness as H
from imgw_harness import ERR, WSClient, make_token, run, pb

OK = ERR.Value("ERR_SUCCESS")
INVALID = ERR.Value("ERR_INVALID_PARAM")
ERROR_RSP = H.cmd_num("CMD_ERROR_RSP")
HB_RSP = H.cmd_num("CMD_HEARTBEAT_RSP")


async def authed(srv, user, codec="pb"):
    c = await WSClient.connect(srv, codec=codec)
    await c.auth_ok(user, make_token(user))
    return c


def assert_error(f, seq, code=INVALID):
    assert f.command == ERROR_RSP, "expected CMD_ERROR_RSP, got %r" % f
    assert f.sequence == seq, "expected sequence %d, got %r" % (seq, f)
    assert f.body.error_code == code, "expected %s, got %r" % (H.err_name(code), f)


# ---------------------------------------------------------------- both codecs


@pytest.mark.parametrize("codec", ["pb", "json"])
def test_codec_auth_and_heartbeat(gw, codec):
    print("check: a %s client authenticates and heartbeats; replies in its codec" % codec)

    async def go():
        c = await WSClient.connect(gw, codec=codec)
        a = await c.auth("codec-" + codec, make_token("codec-" + codec))
        print("auth:", a)
        assert a.codec == codec and a.body.error_code == OK, a
        hb = await c.heartbeat(seq=77)
        print("heartbeat:", hb)
        assert hb.codec == codec and hb.sequence == 77, hb
        await c.close()
    run(go())


def test_json_reply_shape(gw):
    print("check: JSON replies: command as enum name, sequence a number, body an "
          "object, enums by name, 64-bit ints as JSON numbers")

    async def go():
        c = await WSClient.connect(gw, codec="json")
        a = await c.auth("json-shape", make_token("json-shape"), seq=9)
        print("auth raw:", a.raw)
        j = a.json
        assert j["command"] == "CMD_AUTH_RSP", j
        assert j["sequence"] == 9 and isinstance(j["sequence"], int), j
        assert isinstance(j.get("body", {}), dict), j
        ec = j.get("body", {}).get("error_code", "ERR_SUCCESS")
        assert ec == "ERR_SUCCESS", "error_code must be the enum name: %r" % j
        if "max_seq" in j.get("body", {}):
            assert isinstance(j["body"]["max_seq"], int), j
        hb = await c.heartbeat(seq=10)
        print("heartbeat raw:", hb.raw)
        assert hb.json["command"] == "CMD_HEARTBEAT_RSP", hb.json
        st = hb.json["body"]["server_time"]
        assert isinstance(st, int) and not isinstance(st, bool), (
            "server_time must be a JSON number: %r" % hb.json)
        await c.close()
    run(go())


def test_json_command_by_number(gw):
    print("check: JSON command given as a number (100 auth, 5 heartbeat) is accepted")

    async def go():
        c = await WSClient.connect(gw, codec="json")
        user = "json-num"
        await c.send_raw(json.dumps({"command": 100, "sequence": 1, "body": {
            "user_id": user, "token": make_token(user), "platform": "Web"}}))
        a = await c.recv_frame()
        print("auth:", a)
        assert a.command == H.cmd_num("CMD_AUTH_RSP") and a.sequence == 1, a
        assert a.body.error_code == OK, a
        await c.send_raw(json.dumps({"command": 5, "sequence": 2,
                                     "body": {"client_time": H.now_ms()}}))
        hb = await c.recv_frame()
        print("heartbeat:", hb)
        assert hb.command == HB_RSP and hb.sequence == 2, hb
        await c.close()
    run(go())


def test_json_numeric_string_and_absent_body(gw):
    print("check: JSON int64 as numeric string is accepted; an absent body takes "
          "proto3 defaults")

    async def go():
        c = await authed(gw, "json-str", "json")
        await c.send_raw(json.dumps({"command": "CMD_HEARTBEAT_REQ", "sequence": 3,
                                     "body": {"client_time": str(H.now_ms())}}))
        hb = await c.recv_frame()
        print("numeric string:", hb)
        assert hb.command == HB_RSP and hb.sequence == 3, hb
        await c.send_raw(json.dumps({"command": "CMD_HEARTBEAT_REQ", "sequence": 4}))
        hb = await c.recv_frame()
        print("absent body:", hb)
        assert hb.command == HB_RSP and hb.sequence == 4, hb
        await c.close()
    run(go())


def test_binary_empty_body(gw):
    print("check: binary heartbeat with an empty body (all defaults) is answered")

    async def go():
        c = await authed(gw, "pb-empty")
        await c.send_raw(H.pb_frame("CMD_HEARTBEAT_REQ", b"", seq=12))
        hb = await c.recv_frame()
        print("got:", hb)
        assert hb.command == HB_RSP and hb.sequence == 12, hb
        await c.close()
    run(go())


def test_reply_codec_follows_last_frame(gw):
    print("check: one connection: binary frame -> binary reply, then text -> text, "
          "then binary again -> binary")

    async def go():
        c = await WSClient.connect(gw, codec="pb")
        a = await c.auth("mixed", make_token("mixed"), codec="pb")
        assert a.codec == "pb" and a.body.error_code == OK, a
        for i, codec in enumerate(["json", "pb", "json", "json", "pb"]):
            hb = await c.heartbeat(seq=100 + i, codec=codec)
            print("sent %s heartbeat, got:" % codec, hb)
            assert hb.codec == codec, "reply codec %s, last frame %s" % (hb.codec, codec)
        await c.close()
    run(go())


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("body", [b"\x08\xff\xff", b"\x0a\x05ab", b"\xff\xff\xff\xff"])
def test_bad_protobuf_body(gw, body):
    print("check: heartbeat with undecodable body %r -> CMD_ERROR_RSP ERR_INVALID_PARAM, "
          "sequence echoed; connection stays up" % body)

    async def go():
        c = await authed(gw, "badbody")
        await c.send_raw(H.pb_frame("CMD_HEARTBEAT_REQ", body, seq=21))
        f = await c.recv_frame()
        print("got:", f)
        assert_error(f, 21)
        hb = await c.heartbeat(seq=22)
        print("heartbeat after:", hb)
        await c.close()
    run(go())


@pytest.mark.parametrize("body", [{"client_time": "not-a-number"},
                                  {"client_time": [1, 2]},
                                  {"client_time": {"x": 1}}])
def test_bad_json_body(gw, body):
    print("check: JSON heartbeat with bad body %r -> CMD_ERROR_RSP ERR_INVALID_PARAM, "
          "sequence echoed, stays up" % body)

    async def go():
        c = await authed(gw, "badjson", "json")
        await c.send_raw(json.dumps({"command": "CMD_HEARTBEAT_REQ", "sequence": 23,
                                     "body": body}))
        f = await c.recv_frame()
        print("got:", f)
        assert f.codec == "json"
        assert_error(f, 23)
        await c.heartbeat(seq=24)
        await c.close()
    run(go())


@pytest.mark.parametrize("data", [b"\xff\xff\xff\xff\xff", b"\x08", b"\x12\x10abc"])
def test_undecodable_binary_envelope(gw, data):
    print("check: binary frame %r that is not a WebSocketMessage -> CMD_ERROR_RSP "
          "ERR_INVALID_PARAM with sequence 0; stays up" % data)

    async def go():
        c = await authed(gw, "badenv")
        await c.send_raw(data)
        f = await c.recv_frame()
        print("got:", f)
        assert f.codec == "pb"
        assert_error(f, 0)
        await c.heartbeat()
        await c.close()
    run(go())


@pytest.mark.parametrize("data", ["not json", "{\"command\": ", "[]", "42",
                                  "{\"command\": {}}"])
def test_undecodable_text_envelope(gw, data):
    print("check: text frame %r that is not an envelope -> JSON CMD_ERROR_RSP "
          "ERR_INVALID_PARAM with sequence 0; stays up" % data)

    async def go():
        c = await authed(gw, "badtextenv", "json")
        await c.send_raw(data)
        f = await c.recv_frame()
        print("got:", f)
        assert f.codec == "json"
        assert_error(f, 0)
        await c.heartbeat()
        await c.close()
    run(go())


@pytest.mark.parametrize("codec", ["pb", "json"])
def test_unknown_command(gw, codec):
    print("check: unknown command number 999 -> CMD_ERROR_RSP ERR_INVALID_PARAM "
          "with sequence echoed; stays up (%s)" % codec)

    async def go():
        c = await authed(gw, "unknowncmd-" + codec, codec)
        if codec == "pb":
            await c.send_raw(H.pb_frame(999, b"", seq=42))
        else:
            await c.send_raw(json.dumps({"command": 999, "sequence": 42, "body": {}}))
        f = await c.recv_frame()
        print("got:", f)
        assert f.codec == codec
        assert_error(f, 42)
        await c.heartbeat()
        await c.close()
    run(go())


# ---------------------------------------------------------------- framing


def raw_auth(rw, user):
    rw.send_frame(H.OP_BINARY, H.pb_frame("CMD_AUTH_REQ", pb.AuthRequest(
        user_id=user, token=make_token(user), platform="Web"), seq=1))
    op, data = rw.recv_message()
    f = H.decode_frame(data)
    assert f.command == H.cmd_num("CMD_AUTH_RSP") and f.body.error_code == OK, f


def test_invalid_utf8_text_closes_1007(gw):
    print("check: text frame with invalid UTF-8 -> close 1007")
    rw = H.RawWS(gw.port)
    try:
        raw_auth(rw, "utf8")
        rw.send_frame(H.OP_TEXT, b'{"command":"CMD_HEARTBEAT_REQ","sequence":1,'
                                 b'"body":{},"x":"\xff\xfe\xc3\x28"}')
        code, reason, before = rw.expect_close(5)
        print("close code %s reason %r before %r" % (code, reason, before))
        assert code == 1007
    finally:
        rw.close()


def test_invalid_utf8_across_fragments_closes_1007(gw):
    print("check: invalid UTF-8 split across text fragments -> close 1007")
    rw = H.RawWS(gw.port)
    try:
        raw_auth(rw, "utf8frag")
        rw.send_frame(H.OP_TEXT, b'{"command":5,"x":"\xe2\x82', fin=False)
        rw.send_frame(H.OP_CONT, b'\x28"}', fin=True)   # E2 82 28: invalid
        code, reason, before = rw.expect_close(5)
        print("close code %s reason %r" % (code, reason))
        assert code == 1007
    finally:
        rw.close()


def test_valid_utf8_split_across_fragments_ok(gw):
    print("check: a JSON CMD_AUTH_REQ whose platform has multi-byte UTF-8 split "
          "across two text fragments is reassembled and answered")
    rw = H.RawWS(gw.port)
    try:
        user = "utf8ok"
        msg = json.dumps({"command": "CMD_AUTH_REQ", "sequence": 8,
                          "body": {"user_id": user, "token": make_token(user),
                                   "platform": "h\u00e9llo \u4e16\u754c"}},
                         ensure_ascii=False).encode("utf-8")
        cut = msg.index("\u4e16".encode()) + 1
        rw.send_frame(H.OP_TEXT, msg[:cut], fin=False)
        rw.send_frame(H.OP_CONT, msg[cut:], fin=True)
        op, data = rw.recv_message()
        f = H.decode_frame(data.decode("utf-8"))
        print("got:", f)
        assert f.command == H.cmd_num("CMD_AUTH_RSP") and f.sequence == 8, f
        assert f.body.error_code == OK, f
    finally:
        rw.close()


@pytest.mark.parametrize("kind", ["binary", "text"])
def test_oversized_message_closes_1009(server, kind):
    s = server(max_frame_bytes=4096, max_message_bytes=1024)
    print("check: max_frame_bytes=4096; a %s message of 5000 bytes -> close 1009" % kind)

    async def go():
        c = await authed(s, "big-" + kind)
        if kind == "binary":
            data = H.pb_frame("CMD_HEARTBEAT_REQ", b"", seq=2) + b"\x00" * 5000
        else:
            data = json.dumps({"command": "CMD_HEARTBEAT_REQ", "sequence": 2,
                               "body": {}, "pad": "x" * 5000})
        try:
            await c.ws.send(data)
        except websockets.ConnectionClosed:
            pass
        await c.expect_close(1009, timeout=5)
    run(go())


def test_oversized_fragmented_message_closes_1009(server):
    s = server(max_frame_bytes=4096, max_message_bytes=1024)
    print("check: max_frame_bytes=4096; fragments of 1000 bytes adding up to 6000 "
          "-> close 1009")
    rw = H.RawWS(s.port)
    try:
        raw_auth(rw, "bigfrag")
        try:
            rw.send_frame(H.OP_BINARY, b"\x00" * 1000, fin=False)
            for i in range(5):
                rw.send_frame(H.OP_CONT, b"\x00" * 1000, fin=(i == 4))
        except (BrokenPipeError, ConnectionResetError):
            pass
        code, reason, before = rw.expect_close(5)
        print("close code %s reason %r" % (code, reason))
        assert code == 1009
    finally:
        rw.close()


def test_message_under_frame_limit_ok(server):
    s = server(max_frame_bytes=4096, max_message_bytes=1024)
    print("check: max_frame_bytes=4096; a ~3000-byte binary heartbeat (body padded "
          "with an unknown field, which protobuf skips) is processed, not closed")

    async def go():
        c = await authed(s, "under-limit")
        body = (pb.HeartbeatRequest(client_time=1).SerializeToString()
                + b"\x7a\xd4\x16" + b"y" * 2900)   # field 15, len 2900
        await c.send_raw(H.pb_frame("CMD_HEARTBEAT_REQ", body, seq=5))
        f = await c.recv_frame()
        print("got:", f)
        assert f.command == HB_RSP and f.sequence == 5, f
        await c.close()
    run(go())


@pytest.mark.parametrize("codec", ["pb", "json"])
def test_fragmented_message_reassembled(gw, codec):
    print("check: a %s heartbeat sent as 3 fragments is reassembled and answered" % codec)

    async def go():
        c = await authed(gw, "frag-" + codec, codec)
        data, seq = c.encode("CMD_HEARTBEAT_REQ",
                             pb.HeartbeatRequest(client_time=H.now_ms()), seq=55)
        n = len(data)
        parts = [data[:n // 3], data[n // 3: 2 * n // 3], data[2 * n // 3:]]
        await c.ws.send(parts)   # websockets sends an iterable as fragments
        f = await c.recv_frame()
        print("got:", f)
        assert f.command == HB_RSP and f.sequence == 55 and f.codec == codec, f
        await c.close()
    run(go())


def test_fragmented_with_interleaved_ping(gw):
    print("check: ping between fragments of a message -> pong, and the message is "
          "reassembled and answered")
    rw = H.RawWS(gw.port)
    try:
        raw_auth(rw, "fragping")
        data = H.pb_frame("CMD_HEARTBEAT_REQ", pb.HeartbeatRequest(client_time=1), seq=66)
        rw.send_frame(H.OP_BINARY, data[:3], fin=False)
        rw.send_frame(H.OP_PING, b"mid")
        rw.send_frame(H.OP_CONT, data[3:], fin=True)
        got_pong = False
        reply = None
        deadline = time.monotonic() + 5
        while reply is None and time.monotonic() < deadline:
            fin, op, payload = rw.recv_frame(5)
            if op == H.OP_PONG:
                assert payload == b"mid"
                got_pong = True
            elif op == H.OP_BINARY:
                reply = H.decode_frame(payload)
        print("pong=%s reply=%r" % (got_pong, reply))
        assert got_pong, "no pong for the interleaved ping"
        assert reply is not None and reply.command == HB_RSP and reply.sequence == 66
    finally:
        rw.close()


def test_ping_pong(gw):
    print("check: WebSocket ping -> pong with the same payload (before and after auth)")
    rw = H.RawWS(gw.port)
    try:
        rw.send_frame(H.OP_PING, b"hello-imgw")
        fin, op, payload = rw.recv_frame(5)
        print("got opcode %d payload %r" % (op, payload))
        assert op == H.OP_PONG and payload == b"hello-imgw"
        raw_auth(rw, "pinger")
        rw.send_frame(H.OP_PING, b"")
        fin, op, payload = rw.recv_frame(5)
        assert op == H.OP_PONG and payload == b""
    finally:
        rw.close()


def test_ping_pong_websockets_client(gw):
    print("check: websockets client ping() is acknowledged within 5s")

    async def go():
        c = await authed(gw, "pinger2")
        waiter = await c.ws.ping(b"abc")
        await asyncio.wait_for(waiter, 5)
        await c.close()
    run(go())


def test_client_close_is_echoed(gw):
    print("check: client close 1000 -> server answers with a close frame")
    rw = H.RawWS(gw.port)
    try:
        raw_auth(rw, "closer")
        rw.send_frame(H.OP_CLOSE, b"\x03\xe8bye")
        code, reason, before = rw.expect_close(5)
        print("server close code", code)
        assert code == 1000
    finally:
        rw.close()


def test_unmasked_client_frame_rejected(gw):
    print("check: an unmasked client frame is a protocol error -> close 1002")
    rw = H.RawWS(gw.port)
    try:
        raw_auth(rw, "unmasked")
        rw.send_frame(H.OP_BINARY, H.pb_frame("CMD_HEARTBEAT_REQ", b"", seq=3), mask=False)
        code, reason, before = rw.expect_close(5)
        print("close code", code, "frames before", before)
        assert code == 1002
    finally:
        rw.close()


@pytest.mark.parametrize("codec", ["pb", "json"])
def test_reply_envelope_timestamp(gw, codec):
    print("check: reply envelopes carry timestamp = unix millis (within 60s of now) (%s)"
          % codec)

    async def go():
        c = await WSClient.connect(gw, codec=codec)
        a = await c.auth("ts-" + codec, make_token("ts-" + codec))
        hb = await c.heartbeat()
        now = H.now_ms()
        for f in (a, hb):
            print("frame timestamp", f.timestamp, "now", now)
            assert abs(f.timestamp - now) < 60000, f
        await c.close()
    run(go())
