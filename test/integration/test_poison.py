"""Poisoned strings and worst-case sync pages (security audit, issue 17,
items 2 and 3; docs/hardening.md "Audit fixes: codec").

Item 2: a protobuf `string` field that is not UTF-8 used to be stored and
pushed byte for byte; the receiver's standard protobuf decoder (Python's
here, as any client's) then rejects that push and every SyncResponse page
holding it. Now every string field of every client body is checked at
decode: CMD_ERROR_RSP ERR_INVALID_PARAM with the request's sequence, the
connection stays up, nothing is stored or pushed. JSON text may not carry
U+0000 (raw or \\u0000), and /api/push data strings must be UTF-8 too.
`content` is bytes: any bytes are kept, protobuf receivers get them
exactly, JSON receivers get each malformed byte as U+FFFD.

Item 3: a JSON sync page used to be encoded into a buffer sized for twice
the stored bytes, but a control byte is six bytes in JSON (\\u0001), so four
60 KB messages of \\x01 broke every JSON sync ("cannot encode the sync
page"). Pages are now sized, and cut, by their encoded frame.

Every test runs once per store backend (memory, redis).
"""

import asyncio
import json

import pytest

import imgw_harness as H
from imgw_harness import pb, run
from msg_helpers import (  # noqa: F401  (fixtures)
    INVALID, OK, MClient, assert_code, close_all, http_json, mgw, mserver,
    store_backend, uid)

ERROR_RSP = H.cmd_num("CMD_ERROR_RSP")

# ---- raw protobuf: Python's protobuf cannot build invalid UTF-8 strings


def varint(v):
    out = b""
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def fb(num, b):
    """A length-delimited field (protobuf: for a singular field the last
    occurrence wins, so appending one overrides the serialized value)."""
    return varint((num << 3) | 2) + varint(len(b)) + b


BAD = [b"a\xff", b"ok\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"x\x80y"]


async def raw_request(c, cmd, body, timeout=10.0):
    """Sends a binary frame whose body is the given raw bytes; returns the
    response frame with the same sequence."""
    seq = c.next_seq()
    fut = asyncio.get_event_loop().create_future()
    c.pending[seq] = fut
    await c.ws.send(H.pb_frame(cmd, body, seq))
    try:
        return await asyncio.wait_for(fut, timeout)
    except asyncio.TimeoutError:
        c.pending.pop(seq, None)
        raise AssertionError("%s: no response to %s seq %d; frames %r"
                             % (c.label, cmd, seq, c.frames[-5:]))


def assert_invalid_param(f, what):
    print("  %s -> %s %s %r" % (what, H.cmd_name(f.command),
                                H.err_name(f.body.error_code), f.body.error_msg))
    assert f.command == ERROR_RSP, "%s: expected CMD_ERROR_RSP, got %r" % (what, f)
    assert f.body.error_code == INVALID, "%s: %r" % (what, f)


def assert_all_decoded(c, what):
    """Every frame c received opened with the standard decoder."""
    bad = [f for f in c.all_frames if getattr(f, "error", None)]
    assert not bad, "%s: %d frame(s) the standard decoder rejects: %r" % (
        what, len(bad), [(f.error, f.raw[:80]) for f in bad])


def send_cases(c, to):
    """(label, raw SendMessageRequest body) with one poisoned string each."""
    base = c.msg_req(to=to, content="poison", extra={"k": "v"})
    raw = base.SerializeToString()
    cases = []
    for i, bad in enumerate(BAD):
        cases.append(("client_msg_id %r" % bad, raw + fb(1, bad)))
        cases.append(("conversation_id %r" % bad, raw + fb(2, bad)))
        cases.append(("extra key %r" % bad, raw + fb(10, fb(1, bad) + fb(2, b"v"))))
        cases.append(("extra value %r" % bad, raw + fb(10, fb(1, b"k2") + fb(2, bad))))
    cases.append(("sender_id", raw + fb(3, BAD[0])))
    cases.append(("receiver_id", raw + fb(4, BAD[0])))
    cases.append(("group_id", raw + fb(5, BAD[0])))
    return cases


@pytest.mark.parametrize("rcodec", ["pb", "json"])
def test_invalid_utf8_strings_refused(mgw, rcodec):
    print("check (receiver %s): SendMessageRequest with invalid UTF-8 in "
          "client_msg_id / conversation_id / extra key / extra value / ids -> "
          "CMD_ERROR_RSP ERR_INVALID_PARAM (sequence echoed), connection up, "
          "nothing pushed or stored; receipts, typing, revoke, ack with "
          "invalid UTF-8 ids likewise; the receiver's pushes and sync all "
          "decode with the standard protobuf decoder" % rcodec)

    async def go():
        a, b = uid("a"), uid("b")
        ca = await MClient.open(mgw, a)
        cb = await MClient.open(mgw, b, codec=rcodec)
        first = await ca.send_ok(to=b, content="before")
        for label, body in send_cases(ca, b):
            f = await raw_request(ca, "CMD_SEND_MSG_REQ", body)
            assert_invalid_param(f, "send " + label)
        conv = "s_%s_%s" % tuple(sorted([a, b]))
        good_read = pb.ReadReceiptRequest(message_ids=[first.message_id],
                                          conversation_id=conv).SerializeToString()
        for label, cmd, body in [
                ("receipt message_ids", "CMD_READ_RECEIPT_REQ", good_read + fb(1, BAD[0])),
                ("receipt message_ids (only)", "CMD_READ_RECEIPT_REQ",
                 fb(1, b"\xff") + fb(2, conv.encode())),
                ("receipt conversation_id", "CMD_READ_RECEIPT_REQ", good_read + fb(2, BAD[2])),
                ("typing conversation_id", "CMD_TYPING_STATUS_REQ", fb(1, BAD[1])),
                ("revoke message_id", "CMD_REVOKE_MSG_REQ", fb(1, BAD[3])),
                ("revoke conversation_id", "CMD_REVOKE_MSG_REQ",
                 fb(1, first.message_id.encode()) + fb(2, BAD[4])),
                ("ack message_id", "CMD_MSG_ACK", fb(1, BAD[0])),
        ]:
            f = await raw_request(ca, cmd, body)
            assert_invalid_param(f, label)
        # The connection is still up and still works.
        hb = await ca.heartbeat()
        print("  heartbeat after the refusals: %r" % hb)
        last = await ca.send_ok(to=b, content="after")
        await cb.wait_push("CMD_PUSH_MSG", count=2)
        await cb.expect_no_push("CMD_READ_RECEIPT_PUSH", wait=0.3)
        await cb.expect_no_push("CMD_TYPING_STATUS_PUSH", wait=0.0)
        pushes = cb.pushes("CMD_PUSH_MSG")
        print("  receiver pushes: %r" % [bytes(p.body.content) for p in pushes])
        assert [bytes(p.body.content) for p in pushes] == [b"before", b"after"], pushes
        assert_all_decoded(cb, "receiver")
        r = await cb.sync()
        print("  receiver sync: %r" % [(m.seq, bytes(m.content)) for m in r.messages])
        assert_code(r, OK, "sync")
        assert [bytes(m.content) for m in r.messages] == [b"before", b"after"], r
        assert [m.message_id for m in r.messages] == [first.message_id, last.message_id]
        # The sender's own timeline (its other devices sync it) is clean too.
        r = await ca.sync()
        assert [bytes(m.content) for m in r.messages] == [b"before", b"after"], r
        assert_all_decoded(cb, "receiver after sync")
        assert_all_decoded(ca, "sender")
        await close_all([ca, cb])
    run(go())


def test_invalid_utf8_auth_fields_refused(mgw):
    print("check: CMD_AUTH_REQ with invalid UTF-8 in user_id / platform is "
          "undecodable: ERR_AUTH_FAILED and close 4001 (before authentication "
          "every undecodable frame is, docs/protocol.md); a second AUTH_REQ "
          "with invalid UTF-8 on an authenticated connection is "
          "CMD_ERROR_RSP ERR_INVALID_PARAM and the connection stays")

    async def go():
        u = uid("u")
        tok = H.make_token(u)
        for field in (1, 3):
            c = await MClient.connect(mgw, "pb")
            body = pb.AuthRequest(user_id=u, token=tok, platform="Web").SerializeToString()
            await c.ws.send(H.pb_frame("CMD_AUTH_REQ", body + fb(field, b"\xff"), 1))
            code = await c.wait_closed(timeout=5)
            f = c.all_frames[0] if c.all_frames else None
            print("  auth with field %d poisoned -> %r, close %s" % (field, f, code))
            assert f is not None and f.body.error_code == H.ERR.Value("ERR_AUTH_FAILED"), f
            assert code == 4001, code
            await c.close()
        c = await MClient.open(mgw, u)
        body = pb.AuthRequest(user_id=u, token=tok, platform="Web").SerializeToString()
        f = await raw_request(c, "CMD_AUTH_REQ", body + fb(3, b"\xc0\xaf"))
        assert_invalid_param(f, "second auth, platform poisoned")
        await c.heartbeat()
        await close_all([c])
    run(go())


def test_json_nul_refused(mgw):
    print("check: a JSON send whose content or client_msg_id holds U+0000 "
          "(\\u0000 escape or a raw NUL byte) -> CMD_ERROR_RSP "
          "ERR_INVALID_PARAM (sequence 0: the frame is refused before it is "
          "parsed), nothing stored or pushed; the connection stays up")

    async def go():
        a, b = uid("a"), uid("b")
        ca = await MClient.open(mgw, a, codec="json")
        cb = await MClient.open(mgw, b)
        head = '{"command":"CMD_SEND_MSG_REQ","sequence":%d,"body":{"receiver_id":"%s",'
        frames = [
            ("content \\u0000", (head + '"content":"ab\\u0000cd"}}') % (41, b)),
            ("content raw NUL", (head + '"content":"ab\x00cd"}}') % (42, b)),
            ("client_msg_id \\u0000", (head + '"client_msg_id":"x\\u0000y","content":"z"}}') % (43, b)),
            ("extra value raw NUL", (head + '"extra":{"k":"v\x00w"},"content":"z"}}') % (44, b)),
        ]
        for i, (label, text) in enumerate(frames):
            await ca.ws.send(text)
            got = await ca.wait_push("CMD_ERROR_RSP", count=i + 1)
            f = got[-1] if isinstance(got, list) else got
            print("  %s -> %s %s seq %d %r" % (label, H.cmd_name(f.command),
                                               H.err_name(f.body.error_code), f.sequence,
                                               f.body.error_msg))
            assert f.body.error_code == INVALID and f.sequence == 0, f
        await ca.heartbeat()
        ok = await ca.send_ok(to=b, content="clean")
        p = await cb.wait_push("CMD_PUSH_MSG")
        assert bytes(p.body.content) == b"clean", p
        await cb.expect_no_push("CMD_PUSH_MSG", pred=lambda f: bytes(f.body.content) != b"clean",
                                wait=0.3)
        r = await cb.sync()
        assert [m.message_id for m in r.messages] == [ok.message_id], r
        await close_all([ca, cb])
    run(go())


def test_api_push_strings_must_be_utf8(mgw):
    print("check: POST /api/push whose data has a non-UTF-8 string (raw bytes "
          "in the JSON text) -> 400 naming UTF-8, nothing pushed; the same "
          "for non-UTF-8 content (issue 12: strings from the business must "
          "be UTF-8); a valid push afterwards decodes with the standard "
          "decoder on both codecs")

    async def go():
        u = uid("u")
        cp = await MClient.open(mgw, u, platform="P")
        cj = await MClient.open(mgw, u, codec="json", platform="J")
        for field in ("client_msg_id", "sender_id", "message_id"):
            raw = (b'{"code":202,"ids":["' + u.encode() + b'"],"data":{"' +
                   field.encode() + b'":"a\xff"}}')
            r = http_json(mgw.port, "POST", "/api/push", raw_body=raw)
            print("  data.%s poisoned -> %r" % (field, r))
            assert r.status == 400 and "UTF-8" in (r.json or {}).get("error", ""), r
        raw = (b'{"code":202,"ids":["' + u.encode() + b'"],"data":{"extra":{"k":"\xc0\xaf"}}}')
        r = http_json(mgw.port, "POST", "/api/push", raw_body=raw)
        assert r.status == 400, r
        raw = (b'{"code":502,"ids":["' + u.encode() + b'"],"data":{"message_ids":["\xff"]}}')
        r = http_json(mgw.port, "POST", "/api/push", raw_body=raw)
        assert r.status == 400, r
        raw = (b'{"code":202,"ids":["' + u.encode() + b'"],"data":{"message_id":"9",'
               b'"content":"ok\xff\x01z"}}')
        r = http_json(mgw.port, "POST", "/api/push", raw_body=raw)
        print("  content with a bad byte -> %r" % r)
        assert r.status == 400 and "UTF-8" in (r.json or {}).get("error", ""), r
        raw = (b'{"code":202,"ids":["' + u.encode() + b'"],"data":{"message_id":"10",'
               b'"content":"ok \xc3\xa9\x01z"}}')
        r = http_json(mgw.port, "POST", "/api/push", raw_body=raw)
        assert r.status == 200, r
        p = await cp.wait_push("CMD_PUSH_MSG")
        j = await cj.wait_push("CMD_PUSH_MSG")
        print("  PB content %r, JSON content %r" % (bytes(p.body.content), j.json["body"]["content"]))
        assert p.body.message_id == "10", p
        assert bytes(p.body.content) == "ok \u00e9\x01z".encode(), p
        assert j.json["body"]["content"] == "ok \u00e9\x01z", j.json
        await cp.expect_no_push("CMD_PUSH_MSG", pred=lambda f: f.body.message_id != "10", wait=0.3)
        assert_all_decoded(cp, "PB client")
        assert_all_decoded(cj, "JSON client")
        await close_all([cp, cj])
    run(go())


def test_content_not_utf8_consistent(mgw):
    print("check: content that is not UTF-8 (a PB sender) is stored exactly: "
          "PB receivers get the bytes in push and sync, JSON receivers get "
          "the same U+FFFD text in push and sync")

    async def go():
        a, b = uid("a"), uid("b")
        content = b"hi\xff\xfe\xc3(\x01\xe2\x82"
        want = "hi\ufffd\ufffd\ufffd(\x01\ufffd\ufffd"
        ca = await MClient.open(mgw, a)
        cp = await MClient.open(mgw, b, platform="P")
        cj = await MClient.open(mgw, b, codec="json", platform="J")
        await ca.send_ok(to=b, content=content)
        p = await cp.wait_push("CMD_PUSH_MSG")
        j = await cj.wait_push("CMD_PUSH_MSG")
        assert bytes(p.body.content) == content, p
        assert j.json["body"]["content"] == want, j.json
        r = await cp.sync()
        assert [bytes(m.content) for m in r.messages] == [content], r
        await cj.sync()
        sj = [f for f in cj.all_frames if f.command == H.cmd_num("CMD_SYNC_RSP")][-1]
        got = [m["content"] for m in sj.json["body"]["messages"]]
        print("  JSON push %r, JSON sync %r" % (j.json["body"]["content"], got))
        assert got == [want], sj.json
        await close_all([ca, cp, cj])
    run(go())


# ---- item 3: worst-case content in sync pages


def frame_bytes(f):
    return len(f.raw.encode("utf-8") if isinstance(f.raw, str) else f.raw)


async def send_big(c, to, n, fill, size=60000):
    rs = []
    for i in range(n):
        body = bytes([fill]) * (size - 8) + b"%08d" % i
        rs.append(await c.send_ok(to=to, content=body, timeout=30))
    return rs


@pytest.mark.parametrize("rcodec", ["json", "pb"])
def test_sync_worst_case_control_bytes(mgw, rcodec):
    print("check (%s receiver): four 60 KB messages of \\x01 (six bytes each "
          "in JSON) sync in one page with the content intact; before the "
          "fix JSON answered 'cannot encode the sync page'" % rcodec)

    async def go():
        a, b = uid("a"), uid("b")
        ca = await MClient.open(mgw, a)
        rs = await send_big(ca, b, 4, 0x01)
        cb = await MClient.open(mgw, b, codec=rcodec)
        r = await cb.sync(timeout=30)
        f = [x for x in cb.all_frames if x.command == H.cmd_num("CMD_SYNC_RSP")][-1]
        print("  sync: %s, %d messages, has_more %r, frame %d bytes"
              % (H.err_name(r.error_code), len(r.messages), r.has_more, frame_bytes(f)))
        assert_code(r, OK, "sync")
        assert len(r.messages) == 4 and not r.has_more, r.error_msg
        for m, s in zip(r.messages, rs):
            assert m.message_id == s.message_id
            assert bytes(m.content) == bytes(s.req.content), "content changed"
        assert_all_decoded(cb, "receiver")
        await close_all([ca, cb])
    run(go())


@pytest.mark.parametrize("rcodec", ["json", "pb"])
def test_sync_pages_cut_by_frame_not_failed(mgw, rcodec):
    print("check (%s receiver): twelve 60 KB messages, \\x01 and invalid "
          "bytes (U+FFFD in JSON): paging with limit 500 returns every one "
          "intact; JSON pages are cut by their frame size (has_more, each "
          "frame <= 2 MiB + overhead with the default 4 MiB write queue), "
          "never refused" % rcodec)

    async def go():
        a, b = uid("a"), uid("b")
        ca = await MClient.open(mgw, a)
        rs = await send_big(ca, b, 8, 0x01) + await send_big(ca, b, 4, 0xff)
        cb = await MClient.open(mgw, b, codec=rcodec)
        msgs, pages = await cb.sync_all(limit=500)
        frames = [x for x in cb.all_frames if x.command == H.cmd_num("CMD_SYNC_RSP")]
        print("  %d pages of %r messages, frames %r bytes"
              % (len(pages), [len(p.messages) for p in pages], [frame_bytes(x) for x in frames]))
        assert [m.message_id for m in msgs] == [s.message_id for s in rs]
        for m, s in zip(msgs, rs):
            sent = bytes(s.req.content)
            if rcodec == "pb" or sent[0] == 0x01:
                assert bytes(m.content) == sent, "content changed"
            else:
                want = ("\ufffd" * (len(sent) - 8)).encode() + sent[-8:]
                assert bytes(m.content) == want, "content not U+FFFD-replaced"
        for x in frames:
            assert frame_bytes(x) <= 2 * 1024 * 1024 + 4096, frame_bytes(x)
        if rcodec == "json":
            # 12 x ~360 KB cannot fit one 2 MiB frame
            assert len(pages) > 1, [len(p.messages) for p in pages]
        assert_all_decoded(cb, "receiver")
        await close_all([ca, cb])
    run(go())


def test_sync_small_write_queue(mserver):
    print("check: with limits.max_queued_bytes = 512 KiB a PB sync of twelve "
          "60 KB messages is cut into pages that fit half the queue, so the "
          "connection is never dropped as a slow consumer")

    async def go():
        s = mserver(threads=2, env={"limits.max_queued_bytes": 524288})
        a, b = uid("a"), uid("b")
        ca = await MClient.open(s, a)
        rs = await send_big(ca, b, 12, 0x41)
        cb = await MClient.open(s, b)
        msgs, pages = await cb.sync_all(limit=500)
        frames = [x for x in cb.all_frames if x.command == H.cmd_num("CMD_SYNC_RSP")]
        print("  %d pages of %r, frames %r bytes" % (
            len(pages), [len(p.messages) for p in pages], [frame_bytes(x) for x in frames]))
        assert [m.message_id for m in msgs] == [r.message_id for r in rs]
        assert len(pages) > 1
        for x in frames:
            assert frame_bytes(x) <= 262144 + 4096, frame_bytes(x)
        await close_all([ca, cb])
    run(go())
