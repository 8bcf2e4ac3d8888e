#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target into test/fuzz/corpus/.

Seeds are small valid examples plus edge cases. Run from anywhere:
    python3 test/fuzz/make_seeds.py
Files named crash-* (minimized reproducers of fixed bugs) are kept; the
other seeds are rewritten. The JWT seeds need python3-cryptography.
"""
import base64
import hashlib
import hmac
import json
import os
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(ROOT, "test", "fuzz", "corpus")


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- protobuf ----------------------------------------------------------------

def varint(v):
    v &= (1 << 64) - 1
    out = b""
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def fv(num, v):  # varint field
    return varint(num << 3) + varint(v)


def fb(num, b):  # length-delimited field
    if isinstance(b, str):
        b = b.encode()
    return varint((num << 3) | 2) + varint(len(b)) + b


def env(cmd, seq, body=None, ts=1700000000000):
    out = fv(1, cmd) + fv(2, seq)
    if body is not None:
        out += fb(3, body)
    return out + fv(4, ts)


def extra(num, k, v):
    return fb(num, fb(1, k) + fb(2, v))


SEND = (fb(1, "c1") + fb(2, "p2p:alice:bob") + fb(3, "alice") + fb(4, "bob")
        + fv(6, 1) + fb(7, "hello \xe4\xb8\x96 \"q\" \\ \n") + fv(8, 1700000000000)
        + extra(10, "k", "v") + extra(10, "trace", "x" * 20))
PUSH = (fb(1, "0123456789abcdef") + fb(2, "c1") + fb(3, "p2p:alice:bob")
        + fb(4, "alice") + fb(5, "bob") + fv(7, 1) + fb(8, b"hi\x00\xff\xc3(")
        + fv(9, 1700000000000) + fv(10, 1700000000001) + extra(15, "k", "v"))


def seeds_pb():
    t = "fuzz_pb"
    # byte 0 even: client frame only; odd: also blob = input[1:]
    put(t, "heartbeat", env(5, 1, fv(1, 1700000000000)))
    put(t, "heartbeat_nobody", env(5, 2))
    put(t, "auth", env(100, 3, fb(1, "alice") + fb(2, "eyJhbGciOi.x.y") + fb(3, "web")))
    put(t, "send", env(200, 4, SEND))
    put(t, "ack", env(203, 5, fb(1, "0123456789abcdef") + fv(2, 9)))
    put(t, "revoke", env(205, 6, fb(1, "0123456789abcdef") + fb(2, "g:1")))
    put(t, "sync", env(300, 7, fv(1, 1) + fv(2, 100) + fv(3, 50)))
    put(t, "read", env(500, 8, fb(1, "m1") + fb(1, "m2") + fb(2, "g:1")))
    put(t, "typing", env(600, 9, fb(1, "p2p:a:b") + fv(2, 1)))
    put(t, "unknown_cmd", env(202, 10, PUSH))
    put(t, "neg_cmd", env(-1, 11))
    put(t, "bad_body", env(200, 12, b"\x0a\xff\xff\xff\xff\x0f"))
    put(t, "long_string", env(100, 13, fb(1, "u" * 200)))
    put(t, "too_many_extra", env(200, 14, b"".join(extra(10, "k%d" % i, "v") for i in range(20))))
    put(t, "empty", b"")
    # blobs (byte 0 odd selects the blob path; the frame decode sees all)
    put(t, "blob_push", b"\x01" + PUSH)
    put(t, "blob_push_seq", b"\x03" + PUSH + fv(11, 77))
    put(t, "blob_revoked_extra", b"\x05" + PUSH + b"".join(extra(15, "k%d" % i, "v") for i in range(17)))
    put(t, "blob_empty", b"\x07")
    put(t, "blob_truncated", b"\x09" + PUSH[:-3])
    # invalid UTF-8 in string fields: IMGW_EUTF8 (audit item 2)
    put(t, "send_bad_utf8_cmid", env(200, 15, SEND + fb(1, b"c\xff")))
    put(t, "send_bad_utf8_extra_key", env(200, 16, SEND + extra(10, b"\xc0\xaf", "v")))
    put(t, "send_bad_utf8_extra_value", env(200, 17, SEND + extra(10, "k", b"\xed\xa0\x80")))
    put(t, "send_utf8_ok", env(200, 18, fb(1, "\u00e9\u4e16\U0001F600".encode()) + fb(4, "b")))
    put(t, "read_bad_utf8", env(500, 19, fb(1, "m1") + fb(1, b"m\x80") + fb(2, "g_1")))
    put(t, "auth_bad_utf8", env(100, 20, fb(1, "alice") + fb(3, b"web\xf4\x90\x80\x80")))
    put(t, "typing_bad_utf8", env(600, 21, fb(1, b"s_a_\xe2\x82")))
    put(t, "revoke_bad_utf8", env(205, 22, fb(1, b"\xfe") + fb(2, "g_1")))
    # sync sizing: control bytes everywhere (six bytes each in JSON); kept
    # near 2 KB, since the largest seed sets libFuzzer's input length
    ctl = (fb(1, b"\x01" * 23) + fb(2, b"\x1f" * 127) + fb(4, b"\x02" * 127)
           + fv(7, (1 << 64) - 1) + fb(8, b"\x01" * 300) + fv(9, (1 << 63))
           + b"".join(extra(15, bytes([0x41 + i]) + b"\x01" * 62, b"\x01" * 24)
                      for i in range(17)))
    put(t, "blob_control_bytes", b"\x0b" + ctl)
    put(t, "blob_bad_utf8_content", b"\x0d" + PUSH + fb(8, b"\xff" * 500))


def seeds_json():
    t = "fuzz_json"
    def j(o):
        return json.dumps(o, ensure_ascii=False, separators=(",", ":"))
    put(t, "heartbeat", j({"command": "CMD_HEARTBEAT_REQ", "sequence": 1, "timestamp": 1700000000000, "body": {"client_time": 1}}))
    put(t, "heartbeat_num", j({"command": 5, "sequence": 2}))
    put(t, "auth", j({"command": "CMD_AUTH_REQ", "sequence": 3, "body": {"user_id": "alice", "token": "a.b.c", "platform": "web"}}))
    put(t, "send", j({"command": "CMD_SEND_MSG_REQ", "sequence": 4, "timestamp": "1700000000000",
                      "body": {"client_msg_id": "c1", "conversation_id": "p2p:alice:bob", "sender_id": "alice",
                               "receiver_id": "bob", "message_type": 1, "content": "hi \u4e16 \"q\" \\ \u0001",
                               "send_time": "-5", "extra": {"k": "v", "trace": "t"}}}))
    put(t, "send_escapes", '{"command":"CMD_SEND_MSG_REQ","body":{"content":"\\u0000\\ud83d\\ude00\\ud800x\\/\\b\\f\\n\\r\\t","extra":{}}}')
    put(t, "ack", j({"command": "CMD_MSG_ACK", "sequence": 5, "body": {"message_id": "0123456789abcdef", "seq": 9}}))
    put(t, "revoke", j({"command": "CMD_REVOKE_MSG_REQ", "body": {"message_id": "m", "conversation_id": "g:1"}}))
    put(t, "sync", j({"command": "CMD_SYNC_REQ", "body": {"min_seq": 0, "max_seq": "9223372036854775807", "limit": 50}}))
    put(t, "read", j({"command": "CMD_READ_RECEIPT_REQ", "body": {"message_ids": ["m1", "m2"], "conversation_id": "g:1"}}))
    put(t, "typing", j({"command": "CMD_TYPING_STATUS_REQ", "body": {"conversation_id": "p2p:a:b", "status": 1}}))
    put(t, "null_body", '{"command":"CMD_HEARTBEAT_REQ","sequence":null,"body":null}')
    put(t, "deep", '{"command":5,"body":' + "[" * 16 + "]" * 16 + "}")
    put(t, "too_deep", "[" * 17 + "]" * 17)
    put(t, "brackets_in_string", '{"command":5,"x":"[[[[[[[[[[[[[[[[[[[[","body":{}}')
    put(t, "trailing", '{"command":5} x')
    put(t, "bad_seq", '{"command":5,"sequence":4294967296}')
    put(t, "float_int", '{"command":"CMD_SYNC_REQ","body":{"limit":1.5,"min_seq":1e300}}')
    put(t, "unknown_cmd", '{"command":"CMD_PUSH_MSG","sequence":7}')
    put(t, "enum_neg", '{"command":-200}')
    put(t, "not_object", '[1,2,3]')
    put(t, "unterminated", '{"command":"CMD_AUTH_REQ","body":{"token":"abc')
    # U+0000 and raw invalid UTF-8 (the WebSocket layer checks text frames,
    # this target feeds the codec directly): refused (audit item 2)
    put(t, "raw_nul_content", b'{"command":200,"sequence":1,"body":{"content":"a\x00b"}}')
    put(t, "esc_nul_cmid", '{"command":200,"sequence":1,"body":{"client_msg_id":"a\\u0000b"}}')
    put(t, "escaped_backslash_u0000", '{"command":200,"body":{"content":"a\\\\u0000"}}')
    put(t, "bad_utf8_cmid", b'{"command":200,"sequence":1,"body":{"client_msg_id":"a\xff"}}')
    put(t, "bad_utf8_extra_key", b'{"command":200,"body":{"extra":{"\xc0\xaf":"v"}}}')
    put(t, "bad_utf8_read_ids", b'{"command":500,"body":{"message_ids":["1","\xed\xa0\x80"]}}')
    put(t, "bad_utf8_content", b'{"command":200,"body":{"content":"\xff\x01"}}')


def seeds_downlink():
    t = "fuzz_downlink"
    def j(o):
        return json.dumps(o, ensure_ascii=False, separators=(",", ":"))
    push = {"message_id": "0123456789abcdef", "client_msg_id": "c1", "conversation_id": "g:1",
            "sender_id": "sys", "group_id": "1", "message_type": 9, "content": "hello \u4e16\n",
            "send_time": 1700000000000, "server_time": "1700000000001", "seq": 3, "extra": {"a": "b"}}
    put(t, "push", j({"code": 202, "ids": ["alice", "bob"], "data": push}))
    put(t, "push_broadcast", j({"code": 202, "broadcast": True, "data": push}))
    put(t, "kick", j({"code": 102, "ids": ["alice"], "data": {"reason": "admin", "platform": "web"}}))
    put(t, "error", j({"code": 1, "ids": ["u"], "data": {"error_code": "ERR_SERVER_BUSY", "error_msg": "x"}}))
    put(t, "error_num_enum", j({"code": 1, "ids": ["u"], "data": {"error_code": 999}}))
    put(t, "sync", j({"code": 301, "ids": ["u"], "data": {"error_code": 0, "messages": [push, {"seq": 4}], "server_max_seq": 4, "has_more": False}}))
    put(t, "read_push", j({"code": 502, "ids": ["u"], "data": {"message_ids": ["m1", "m2"], "conversation_id": "g", "user_id": "u", "read_time": 5}}))
    put(t, "typing", j({"code": 602, "ids": ["u"], "data": {"conversation_id": "c", "user_id": "u", "status": 1}}))
    put(t, "revoke_push", j({"code": 207, "ids": ["u"], "data": {"message_id": "m", "conversation_id": "c", "revoked_by": "a", "revoked_time": 1}}))
    put(t, "auth_rsp", j({"code": 101, "ids": ["u"], "data": {"error_code": "ERR_SUCCESS", "max_seq": "-9223372036854775808"}}))
    put(t, "client_code", j({"code": 200, "ids": ["u"], "data": {}}))
    put(t, "no_data", j({"code": 6, "ids": ["u"]}))
    put(t, "float_code", '{"code":202.5,"ids":["u"],"data":{}}')
    put(t, "bad_types", j({"code": 202, "ids": ["u"], "data": {"content": 5, "extra": {"k": 1}, "seq": "1x"}}))
    put(t, "big_extra", j({"code": 202, "ids": ["u"], "data": {"extra": {"k%d" % i: "v" for i in range(20)}}}))
    put(t, "deep", '{"code":202,"data":{"extra":' + "[" * 15 + "]" * 15 + "}}")
    put(t, "msgs_many", j({"code": 301, "ids": ["u"], "data": {"messages": [{"seq": i} for i in range(30)]}}))
    # strings must be UTF-8 in protobuf pushes; content is bytes (audit item 2)
    put(t, "bad_utf8_cmid", b'{"code":202,"ids":["u"],"data":{"client_msg_id":"a\xff"}}')
    put(t, "bad_utf8_extra", b'{"code":202,"ids":["u"],"data":{"extra":{"k":"\xc0\xaf"}}}')
    put(t, "bad_utf8_read_ids", b'{"code":502,"ids":["u"],"data":{"message_ids":["\xff"]}}')
    put(t, "bad_utf8_sync_msg", b'{"code":301,"ids":["u"],"data":{"messages":[{"seq":1},{"sender_id":"\xed\xa0\x80"}]}}')
    put(t, "bad_utf8_content", b'{"code":202,"ids":["u"],"data":{"content":"ok\xff\x01"}}')
    put(t, "raw_nul", b'{"code":202,"ids":["u"],"data":{"content":"a\x00b"}}')


# ---- HTTP / WebSocket ------------------------------------------------------------

def mask_frame(opcode, payload, fin=True, key=b"\x01\x02\x03\x04", rsv=0, masked=True, ext=None):
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    if ext is None:
        ext = 0 if n < 126 else (1 if n < 65536 else 2)
    if ext == 0:
        hdr = bytes([b0, (0x80 if masked else 0) | n])
    elif ext == 1:
        hdr = bytes([b0, (0x80 if masked else 0) | 126]) + struct.pack(">H", n)
    else:
        hdr = bytes([b0, (0x80 if masked else 0) | 127]) + struct.pack(">Q", n)
    if not masked:
        return hdr + payload
    return hdr + key + bytes(c ^ key[i % 4] for i, c in enumerate(payload))


UPGRADE = ("GET /ws?token=abc%20d+e&x=1 HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
           "Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           "Sec-WebSocket-Version: 13\r\nCookie: a=1; token=xyz\r\n\r\n").encode()


def seeds_ws():
    t = "fuzz_ws"
    # byte 0: handler mode (bits 3-4: 0 record, 1 echo, 2 close, 3 abort);
    # byte 1: chunking seed (0 = one read)
    hello = mask_frame(1, b"hello")
    put(t, "text", b"\x00\x00" + hello)
    put(t, "text_chunked", b"\x08\x03" + hello + mask_frame(2, b"\x00\x01\x02"))
    put(t, "binary_126", b"\x08\x00" + mask_frame(2, b"x" * 300))
    put(t, "too_big", b"\x00\x05" + mask_frame(2, b"y" * 4097))
    put(t, "len64_huge", b"\x00\x00" + bytes([0x82, 0xFF]) + struct.pack(">Q", 1 << 62) + b"\x00" * 4)
    put(t, "fragments", b"\x08\x02" + mask_frame(1, b"he", fin=False) + mask_frame(9, b"p")
        + mask_frame(0, b"ll", fin=False) + mask_frame(0, b"o"))
    put(t, "frag_too_big", b"\x00\x81" + mask_frame(2, b"a" * 3000, fin=False) + mask_frame(0, b"b" * 2000))
    put(t, "ping_pong", b"\x00\x00" + mask_frame(9, b"ping") + mask_frame(10, b"pong"))
    put(t, "close", b"\x00\x00" + mask_frame(8, b"\x03\xe8bye"))
    put(t, "close_bad_code", b"\x00\x00" + mask_frame(8, b"\x03\xed"))
    put(t, "close_1byte", b"\x00\x00" + mask_frame(8, b"\x03"))
    put(t, "close_bad_utf8", b"\x00\x00" + mask_frame(8, b"\x03\xe8\xc0\xaf"))
    put(t, "bad_utf8", b"\x00\x00" + mask_frame(1, b"\xed\xa0\x80"))
    put(t, "utf8_split", b"\x00\x01" + mask_frame(1, "\u4e16\U0001F600".encode(), fin=False) + mask_frame(0, "\u00e9".encode()))
    put(t, "unmasked", b"\x00\x00" + mask_frame(1, b"x", masked=False))
    put(t, "rsv", b"\x00\x00" + mask_frame(1, b"x", rsv=4))
    put(t, "reserved_opcode", b"\x00\x00" + mask_frame(3, b"x"))
    put(t, "cont_no_msg", b"\x00\x00" + mask_frame(0, b"x"))
    put(t, "ping_too_long", b"\x00\x00" + mask_frame(9, b"p" * 126))
    put(t, "ping_fragmented", b"\x00\x00" + mask_frame(9, b"p", fin=False))
    put(t, "nonminimal_len", b"\x00\x00" + mask_frame(2, b"abc", ext=1))
    put(t, "echo_then_close", b"\x10\x00" + hello + hello + mask_frame(8, b""))
    put(t, "after_close", b"\x00\x00" + mask_frame(8, b"\x03\xe8") + hello)
    put(t, "many_small", b"\x08\x04" + b"".join(mask_frame(2, bytes([i])) for i in range(40)))


def seeds_http():
    t = "fuzz_http"
    # byte 0: mode (bits 0-1 on_http: respond / close / async / abort;
    # bit 2: refuse the upgrade; bits 3-4: on_message); byte 1: chunking
    get = b"GET /health?x=1 HTTP/1.1\r\nHost: a\r\nCookie: token=abc; a=b\r\n\r\n"
    put(t, "get", b"\x00\x00" + get)
    put(t, "get_chunked", b"\x00\x05" + get)
    put(t, "pipelined", b"\x00\x00" + get + get + b"GET /x HTTP/1.0\r\n\r\n")
    put(t, "pipelined_async", b"\x02\x07" + get + get)
    put(t, "close_after", b"\x01\x00" + get + get)
    put(t, "post_body", b"\x00\x00POST /api/push HTTP/1.1\r\nContent-Length: 11\r\nContent-Type: application/json\r\n\r\n{\"code\":1}\n")
    put(t, "post_chunked_te", b"\x00\x03POST /api/push HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    put(t, "post_too_big", b"\x00\x00POST /x HTTP/1.1\r\nContent-Length: 3000\r\n\r\n" + b"z" * 3000)
    put(t, "upgrade", b"\x00\x00" + UPGRADE)
    put(t, "upgrade_frames", b"\x08\x00" + UPGRADE + mask_frame(1, b"hi") + mask_frame(8, b"\x03\xe8"))
    put(t, "upgrade_frames_chunked", b"\x08\x83" + UPGRADE + mask_frame(1, b"hi") + mask_frame(2, b"x" * 200))
    put(t, "upgrade_refused", b"\x04\x00" + UPGRADE)
    put(t, "upgrade_v8", b"\x00\x00" + UPGRADE.replace(b"Version: 13", b"Version: 8"))
    put(t, "upgrade_badkey", b"\x00\x00" + UPGRADE.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"short"))
    put(t, "upgrade_post", b"\x00\x00" + UPGRADE.replace(b"GET", b"POST"))
    put(t, "upgrade_other_path", b"\x00\x00" + UPGRADE.replace(b"/ws?", b"/api?"))
    put(t, "ws_no_upgrade", b"\x00\x00GET /ws HTTP/1.1\r\nHost: a\r\n\r\n")
    put(t, "root_upgrade", b"\x00\x00" + UPGRADE.replace(b"/ws?", b"/?"))
    put(t, "many_headers", b"\x00\x00GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(70)) + b"\r\n")
    put(t, "head_too_big", b"\x00\x00GET / HTTP/1.1\r\nX: " + b"a" * 8200 + b"\r\n\r\n")
    put(t, "bad_request", b"\x00\x00GE T / HTTP/1.1\r\n\r\n")
    put(t, "empty_header_value", b"\x00\x00GET /?token= HTTP/1.1\r\nCookie:\r\nX-Empty:\r\n\r\n")
    put(t, "query_escapes", b"\x00\x00GET /?token=%41%4g%%2+x&t=%zz HTTP/1.1\r\n\r\n")
    put(t, "http10_keepalive", b"\x00\x00GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET / HTTP/1.0\r\n\r\n")


# ---- JWT ---------------------------------------------------------------------------

def b64u(b):
    if isinstance(b, str):
        b = b.encode()
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def seeds_jwt():
    t = "fuzz_jwt"
    now = 1700000000
    secret = b"fuzz-secret"

    def hs(header, claims, key=secret):
        si = b64u(json.dumps(header)) + "." + b64u(json.dumps(claims))
        sig = hmac.new(key, si.encode(), hashlib.sha256).digest()
        return si + "." + b64u(sig)

    h = {"alg": "HS256", "typ": "JWT"}
    good = {"sub": "alice", "iat": now, "exp": now + 3600}
    rules = {"sub": "bob", "iss": "imgw", "aud": ["x", "chat"], "app_id": "app2", "exp": now + 10, "nbf": now - 10}
    # byte 0 picks the verifier: 0 RSA+HS, 1 EC+HS with iss/aud/app_ids, 2 HS with aud
    put(t, "hs_ok", b"\x00" + hs(h, good).encode())
    put(t, "hs_rules_ok", b"\x01" + hs(h, rules).encode())
    put(t, "hs_aud_ok", b"\x02" + hs(h, {"user_id": "u", "aud": "chat"}).encode())
    put(t, "hs_uid", b"\x00" + hs(h, {"uid": 12345}).encode())
    put(t, "hs_expired", b"\x00" + hs(h, {"sub": "a", "exp": now - 100}).encode())
    put(t, "hs_nbf", b"\x00" + hs(h, {"sub": "a", "nbf": now + 100}).encode())
    put(t, "hs_exp_float", b"\x00" + hs(h, {"sub": "a", "exp": 1e308}).encode())
    put(t, "hs_bad_sig", b"\x00" + hs(h, good, b"wrong").encode())
    put(t, "hs_no_user", b"\x00" + hs(h, {"exp": now + 5}).encode())
    put(t, "hs_long_user", b"\x00" + hs(h, {"sub": "u" * 200}).encode())
    put(t, "hs_bad_app", b"\x01" + hs(h, dict(rules, app_id="app3")).encode())
    put(t, "hs_nested", b"\x00" + hs(h, {"sub": "a", "x": json.loads("[" * 40 + "1" + "]" * 40)}).encode())
    put(t, "alg_none", b"\x00" + (b64u('{"alg":"none"}') + "." + b64u(json.dumps(good)) + ".").encode())
    put(t, "alg_missing", b"\x00" + (b64u('{"typ":"JWT"}') + "." + b64u(json.dumps(good)) + ".AAAA").encode())
    put(t, "two_parts", b"\x00" + (b64u(json.dumps(h)) + "." + b64u(json.dumps(good))).encode())
    put(t, "padding", b"\x00" + (base64.urlsafe_b64encode(json.dumps(h).encode()).decode() + ".e30=.AA==").encode())
    put(t, "not_json", b"\x00" + (b64u("{") + "." + b64u("[]") + "." + b64u("x")).encode())
    put(t, "empty", b"\x00")
    try:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec, padding
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    except ImportError:
        return
    d = os.path.join(ROOT, "test", "unit", "data", "jwt")
    with open(os.path.join(d, "rsa_private.pem"), "rb") as f:
        rsa = serialization.load_pem_private_key(f.read(), None)
    with open(os.path.join(d, "ec_private.pem"), "rb") as f:
        eck = serialization.load_pem_private_key(f.read(), None)

    def rs(claims):
        si = b64u(json.dumps({"alg": "RS256", "typ": "JWT"})) + "." + b64u(json.dumps(claims))
        sig = rsa.sign(si.encode(), padding.PKCS1v15(), hashes.SHA256())
        return si + "." + b64u(sig)

    def es(claims, der=False):
        si = b64u(json.dumps({"alg": "ES256", "typ": "JWT"})) + "." + b64u(json.dumps(claims))
        sig = eck.sign(si.encode(), ec.ECDSA(hashes.SHA256()))
        if not der:
            r, s = decode_dss_signature(sig)
            sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return si + "." + b64u(sig)

    put(t, "rs_ok", b"\x00" + rs(good).encode())
    put(t, "rs_on_ec", b"\x01" + rs(rules).encode())
    put(t, "es_ok", b"\x01" + es(rules).encode())
    put(t, "es_der_sig", b"\x01" + es(rules, der=True).encode())
    put(t, "es_on_rsa", b"\x00" + es(good).encode())
    put(t, "es_on_hs_only", b"\x02" + es(good).encode())


# ---- config ------------------------------------------------------------------------

def seeds_config():
    t = "fuzz_config"
    with open(os.path.join(ROOT, "conf", "imgw.ini"), "rb") as f:
        put(t, "imgw_ini", f.read())
    put(t, "minimal", "[server]\nports = 9000\n")
    put(t, "ports_list", "[server]\nports = 9000, 9001,9002\nbind = ::1\nthreads = 4\n[tls]\nports = 9443\ncert = /c.pem\nkey = /k.pem\n")
    put(t, "tls_overlap", "[server]\nports = 9000\n[tls]\nports = 9000\ncert = a\nkey = b\n")
    put(t, "bad_int", "[server]\nthreads = 4x\n")
    put(t, "int_overflow", "[server]\nthreads = 99999999999999999999\nnode_id = -1\n")
    put(t, "unknown_key", "[server]\nnope = 1\n")
    put(t, "unknown_section", "[nope]\na = b\n")
    put(t, "bool_enum", "[auth]\ndev_tokens = yes\n[store]\nbackend = redis\nredis_url = redis://h:1/0\n")
    put(t, "long_value", "[auth]\njwt_secret = " + "s" * 600 + "\n")
    put(t, "long_line", "[auth]\nissuer = " + "i" * 5000 + "\n")
    put(t, "limits", "[limits]\nmax_message_bytes = 200000\nmax_frame_bytes = 1024\nmax_body_bytes = 1024\n")
    put(t, "nacos", "[nacos]\nserver = 127.0.0.1:8848\nservice =\n")
    put(t, "no_section", "ports = 1\n")
    put(t, "continuation", "[server]\nports = 9000\n  9001\n")
    put(t, "comments", "; c\n# d\n[server] ; x\nports = 9000 ; inline\n\n")
    put(t, "env", "[server]\nports = 9000\n\x00IMGW__SERVER__PORTS=9100,9101\nIMGW__AUTH__LEEWAY=30\nIMGW_LOG=debug\nPATH=/bin\n")
    put(t, "env_bad", "\x00IMGW__SERVER__THREADZ=1\n")
    put(t, "env_lower", "\x00IMGW__server__ports=1\n")
    put(t, "env_noeq", "\x00IMGW__SERVER__PORTS\n")
    put(t, "argv", "[server]\nports = 9000\n\x00IMGW_LOG=warn\n\x00-t\n8\n-l\ntrace\n")
    put(t, "argv_cluster", "\x00\x00-Vh\n")
    put(t, "argv_long", "\x00\x00--threads=3\n--log-level\nerror\n--\n-t\n")
    put(t, "argv_bad", "\x00\x00-x\n")
    put(t, "argv_missing", "\x00\x00-t\n")


# ---- dictionaries (libFuzzer -dict), test/fuzz/<target>.dict --------------------

def dict_write(target, words):
    path = os.path.join(ROOT, "test", "fuzz", target + ".dict")
    with open(path, "w") as f:
        f.write("# libFuzzer dictionary for %s; written by make_seeds.py\n" % target)
        for w in sorted(set(words)):
            esc = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "\\x%02x" % ord(c) for c in w)
            f.write('"%s"\n' % esc)


def dicts():
    import re
    with open(os.path.join(ROOT, "proto", "imgw.proto")) as f:
        proto = f.read()
    names = re.findall(r"\b(CMD_[A-Z_]+|ERR_[A-Z_]+)\b", proto)
    fields = re.findall(r"^\s*(?:repeated\s+)?[\w<>, ]+\s+(\w+)\s*=\s*\d+;", proto, re.M)
    js = ['"%s":' % x for x in set(fields)] + ['"%s"' % x for x in names]
    js += ['"command":', '"sequence":', '"timestamp":', '"body":', "null", "true", "false",
           "\\u", "\\ud83d", "9223372036854775807", "-9223372036854775808", "4294967295", "1e400"]
    dict_write("fuzz_json", js)
    dict_write("fuzz_downlink", js + ['"code":', '"ids":', '"data":', '"broadcast":'])
    with open(os.path.join(ROOT, "src", "core", "config.c")) as f:
        cfg = f.read()
    opts = re.findall(r'OPT_\w+\(\s*"(\w+)",\s*"(\w+)"', cfg)
    cw = ["[%s]" % sec for sec, _ in opts] + ["%s = " % k for _, k in opts]
    cw += ["IMGW__%s__%s=" % (sec.upper(), k.upper()) for sec, k in opts]
    cw += ["IMGW_LOG=", "--config=", "--threads", "--log-level", "-t", "-l", "-h", "-V", "--",
           "true", "false", "memory", "redis", "redis://", "amqp://", "::1", "0.0.0.0", "65535", "2147483648"]
    dict_write("fuzz_config", cw)
    hw = ["GET ", "POST ", "HTTP/1.1\r\n", "HTTP/1.0\r\n", "\r\n\r\n", "Upgrade: websocket\r\n",
          "Connection: Upgrade\r\n", "Connection: keep-alive\r\n", "Connection: close\r\n",
          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "Sec-WebSocket-Version: 13\r\n",
          "Content-Length: ", "Transfer-Encoding: chunked\r\n", "Cookie: token=", "/ws", "/api/push",
          "?token=", "&", "%", "Expect: 100-continue\r\n", "\x81\x85\x01\x02\x03\x04", "\x88\x82"]
    dict_write("fuzz_http", hw)
    jw = ['{"alg":"HS256"}', '{"alg":"RS256"}', '{"alg":"ES256"}', '{"alg":"none"}', '"sub":', '"user_id":',
          '"uid":', '"exp":', '"nbf":', '"iss":', '"aud":', '"app_id":', "eyJ", "."]
    dict_write("fuzz_jwt", jw)


def main():
    dicts()
    seeds_pb()
    seeds_json()
    seeds_downlink()
    seeds_ws()
    seeds_http()
    seeds_jwt()
    seeds_config()


if __name__ == "__main__":
    main()
