"""CMD_SYNC_REQ / CMD_SYNC_RSP and AuthResponse.max_seq (protocol.md 4, 5, 10).

SyncRequest{min_seq, max_seq, limit}: messages with min_seq < seq <= max_seq
(max_seq 0 = unbounded), oldest first, at most limit (default 100, cap 500),
has_more, server_max_seq. Every test runs once per store backend.
"""

import asyncio

import pytest

from imgw_harness import run
from msg_helpers import (  # noqa: F401  (fixtures)
    INVALID, OK, MClient, assert_code, check_push_matches, close_all, mgw, mserver,
    send_many, store_backend, uid)


def seqs(r):
    return [m.seq for m in r.messages]


@pytest.mark.parametrize("codec", ["pb", "json"])
def test_sync_paging_has_more(mgw, codec):
    print("check (%s): 7 messages; sync limit 3 pages 1-3 (has_more), 4-6 (has_more), "
          "7 (no more); server_max_seq 7 on every page; content/ids in order" % codec)

    async def go():
        a, b = uid("a"), uid("b")
        ca = await MClient.open(mgw, a, codec="pb" if codec == "json" else "json")
        rs = await send_many(ca, 7, to=b, prefix="page")
        cb = await MClient.open(mgw, b, codec=codec)
        assert cb.auth_rsp.max_seq == 7, cb.auth_rsp
        pages = []
        cur = 0
        for want, more in (([1, 2, 3], True), ([4, 5, 6], True), ([7], False)):
            r = await cb.sync(min_seq=cur, limit=3)
            print("sync min_seq=%d limit=3 -> seqs %r has_more %r server_max_seq %r"
                  % (cur, seqs(r), r.has_more, r.server_max_seq))
            assert_code(r, OK, "sync")
            assert seqs(r) == want, r
            assert r.has_more is more, "has_more for %r: %r" % (want, r)
            assert r.server_max_seq == 7, r
            pages.extend(r.messages)
            cur = r.messages[-1].seq
        for m, res in zip(pages, rs):
            check_push_matches(m, res.req, res, what="synced message")
        r = await cb.sync(min_seq=7, limit=3)
        assert seqs(r) == [] and not r.has_more and r.server_max_seq == 7, r
        await close_all([ca, cb])
    run(go())


def test_sync_exact_limit_boundary(mgw):
    print("check: 6 messages, limit 3: the second page (4-6) has has_more false "
          "(nothing beyond the limit); limit == count -> has_more false")

    async def go():
        a, b = uid("a"), uid("b")
        ca = await MClient.open(mgw, a)
        await send_many(ca, 6, to=b)
        r = await ca.sync(0, 0, 6)
        print("limit 6:", seqs(r), r.has_more)
        assert seqs(r) == [1, 2, 3, 4, 5, 6] and r.has_more is False, r
        r = await ca.sync(3, 0, 3)
        print("min 3 limit 3:", seqs(r), r.has_more)
        assert seqs(r) == [4, 5, 6] and r.has_more is False, r
        r = await ca.sync(0, 0, 5)
        assert seqs(r) == [1, 2, 3, 4, 5] and r.has_more is True, r
        await close_all([ca])
    run(go())


def test_sync_max_seq_bound(mgw):
    print("check: min_seq < seq <= max_seq: (2,5] -> 3,4,5 no more; (2,5] limit 2 -> 3,4 "
          "has_more; (0,0] unbounded -> all 8; max_seq beyond the end -> up to the end")

    async def go():
        a, b = uid("a"), uid("b")
        ca = await MClient.open(mgw, a)
        await send_many(ca, 8, to=b)
        cb = await MClient.open(mgw, b, codec="json")
        r = await cb.sync(2, 5, 10)
        print("(2,5]:", seqs(r), r.has_more, r.server_max_seq)
        assert seqs(r) == [3, 4, 5] and r.has_more is False and r.server_max_seq == 8, r
        r = await cb.sync(2, 5, 2)
        print("(2,5] limit 2:", seqs(r), r.has_more)
        assert seqs(r) == [3, 4] and r.has_more is True, r
        r = await cb.sync(0, 0, 0)
        assert seqs(r) == list(range(1, 9)) and r.has_more is False, r
        r = await cb.sync(6, 100, 0)
        assert seqs(r) == [7, 8] and r.has_more is False, r
        r = await cb.sync(5, 5, 10)
        assert seqs(r) == [] and r.has_more is False, r
        r = await cb.sync(100, 0, 10)
        print("beyond the end:", r)
        assert seqs(r) == [] and r.has_more is False and r.server_max_seq == 8, r
        await close_all([ca, cb])
    run(go())


def test_sync_default_limit_and_cap(mgw):
    print("check: 520 messages in a timeline; limit 0 -> default 100 (has_more); "
          "limit 1000 -> capped at 500 (has_more); paging with limit 500 returns all 520 "
          "in seq order 1..520")

    async def go():
        a, b = uid("a"), uid("b")
        ca = await MClient.open(mgw, a)
        rs = await send_many(ca, 520, to=b, window=100, prefix="bulk")
        assert [r.seq for r in rs] == list(range(1, 521)), "sender seqs not 1..520"
        cb = await MClient.open(mgw, b)
        assert cb.auth_rsp.max_seq == 520, cb.auth_rsp
        r = await cb.sync(0, 0, 0)
        print("limit 0: %d messages, has_more %r" % (len(r.messages), r.has_more))
        assert seqs(r) == list(range(1, 101)) and r.has_more is True, (
            "default limit: got %d messages, has_more %r" % (len(r.messages), r.has_more))
        r = await cb.sync(0, 0, -5)
        assert seqs(r) == list(range(1, 101)) and r.has_more is True, (
            "limit -5 (docs: <= 0 means 100): got %d" % len(r.messages))
        ids = [int(x.message_id) for x in rs]
        assert all(x < y for x, y in zip(ids, ids[1:])), (
            "message ids of sequential sends are not increasing (time-ordered)")
        r = await cb.sync(0, 0, 1000)
        print("limit 1000: %d messages, has_more %r" % (len(r.messages), r.has_more))
        assert seqs(r) == list(range(1, 501)) and r.has_more is True, (
            "cap: got %d messages, has_more %r" % (len(r.messages), r.has_more))
        msgs, pages = await cb.sync_all(limit=500)
        print("pages:", [len(p.messages) for p in pages])
        assert [m.seq for m in msgs] == list(range(1, 521))
        assert [m.message_id for m in msgs] == [r.message_id for r in rs]
        assert len(pages) == 2 and pages[-1].has_more is False
        await close_all([ca, cb])
    run(go())


def test_auth_max_seq_tracks_timeline(mgw):
    print("check: AuthResponse.max_seq = the user's current max seq (0 for a new user, "
          "then counts received + sent messages), also for a second device")

    async def go():
        a, b = uid("a"), uid("b")
        ca = await MClient.open(mgw, a)
        assert ca.auth_rsp.max_seq == 0, ca.auth_rsp
        cb = await MClient.open(mgw, b, codec="json")
        await send_many(ca, 2, to=b)
        await send_many(cb, 3, to=a)
        a2 = await MClient.open(mgw, a, platform="iOS", codec="json")
        b2 = await MClient.open(mgw, b, platform="iOS")
        print("a max_seq", a2.auth_rsp.max_seq, "b max_seq", b2.auth_rsp.max_seq)
        assert a2.auth_rsp.max_seq == 5, a2.auth_rsp
        assert b2.auth_rsp.max_seq == 5, b2.auth_rsp
        r = await a2.sync()
        assert seqs(r) == [1, 2, 3, 4, 5] and r.server_max_seq == 5, r
        await close_all([ca, cb, a2, b2])
    run(go())


def test_sync_catches_up_after_reconnect(mgw):
    print("check: receiver online for 2 messages (pushed), offline for 3; after "
          "reconnect sync(min_seq=last pushed seq) returns exactly the 3 missed ones")

    async def go():
        a, b = uid("a"), uid("b")
        ca = await MClient.open(mgw, a)
        cb = await MClient.open(mgw, b, codec="json")
        first = await send_many(ca, 2, to=b)
        await cb.wait_push("CMD_PUSH_MSG", count=2)
        last = max(p.body.seq for p in cb.pushes("CMD_PUSH_MSG"))
        await cb.close()
        await asyncio.sleep(0.2)
        missed = await send_many(ca, 3, to=b)
        cb = await MClient.open(mgw, b, codec="json")
        assert cb.auth_rsp.max_seq == 5, cb.auth_rsp
        r = await cb.sync(min_seq=last)
        print("missed:", [(m.seq, m.message_id) for m in r.messages])
        assert [m.message_id for m in r.messages] == [x.message_id for x in missed], r
        assert seqs(r) == [3, 4, 5], r
        assert len(first) == 2
        await close_all([ca, cb])
    run(go())


@pytest.mark.parametrize("req", [(-1, 0, 10), (0, -5, 10), (5, 3, 10)])
def test_sync_invalid_ranges(mgw, req):
    print("check (docs/protocol.md): sync %r (negative, or max_seq < min_seq) -> "
          "ERR_INVALID_PARAM in the SyncResponse; the connection stays" % (req,))

    async def go():
        a = uid("a")
        ca = await MClient.open(mgw, a)
        r = await ca.sync(*req)
        print(r)
        assert_code(r, INVALID, "sync %r" % (req,))
        assert list(r.messages) == [], r
        await ca.heartbeat()
        await ca.close()
    run(go())


def test_retention_count(mserver, store_backend):
    s = mserver(threads=2, env={"IMGW__STORE__RETENTION_COUNT": "5"})
    print("check: retention_count=5; 8 messages -> sync returns seqs 4..8 only, "
          "server_max_seq and AuthResponse.max_seq stay 8; seqs never reused")

    async def go():
        a, b = uid("a"), uid("b")
        ca = await MClient.open(s, a)
        await send_many(ca, 8, to=b)
        cb = await MClient.open(s, b, codec="json")
        assert cb.auth_rsp.max_seq == 8, cb.auth_rsp
        r = await cb.sync()
        print("sync:", seqs(r), r.has_more, r.server_max_seq)
        assert seqs(r) == [4, 5, 6, 7, 8] and r.server_max_seq == 8 and not r.has_more, r
        r = await cb.sync(0, 0, 2)
        assert seqs(r) == [4, 5] and r.has_more, r
        r9 = await ca.send_ok(to=b)
        assert r9.seq == 9, r9
        r = await cb.sync()
        assert seqs(r) == [5, 6, 7, 8, 9], r
        await close_all([ca, cb])
    run(go())


def test_sync_large_messages_paged(mgw):
    print("check: 40 messages of 60000 bytes (2.4 MB): sync limit 500 may cut the page "
          "(docs: ~1 MiB) but then has_more is true; paging returns all 40 in order, "
          "content intact")

    async def go():
        a, b = uid("a"), uid("b")
        ca = await MClient.open(mgw, a)
        rs = []
        for i in range(40):
            rs.append(await ca.send_ok(to=b, content=("%02d" % i) * 30000))
        cb = await MClient.open(mgw, b)
        r = await cb.sync(0, 0, 500, timeout=20)
        print("first page: %d messages, has_more %r" % (len(r.messages), r.has_more))
        assert seqs(r) == list(range(1, len(r.messages) + 1)), seqs(r)
        assert len(r.messages) >= 1
        if len(r.messages) < 40:
            assert r.has_more, "page cut at %d of 40 without has_more" % len(r.messages)
        msgs, pages = await cb.sync_all(limit=500)
        print("pages:", [len(p.messages) for p in pages])
        assert [m.seq for m in msgs] == list(range(1, 41))
        for m, x in zip(msgs, rs):
            assert m.message_id == x.message_id and bytes(m.content) == bytes(x.req.content)
        await close_all([ca, cb])
    run(go())


def test_seed_style_sync_after_local_max(mserver, mgw):
    print("check: seed 003's CMD_SYNC_REQ(max_seq, limit) = {max_seq: 3, limit: 10} "
          "with server.sync_max_seq = after -> only the newer seqs 4, 5; ranges "
          "with min_seq > 0 unchanged; the default server keeps the contract "
          "(the same request returns 1..3)")
    s = mserver(threads=2, env={"IMGW__SERVER__SYNC_MAX_SEQ": "after"})

    async def go():
        for srv, mode in ((s, "after"), (mgw, "bound")):
            a, b = uid("a"), uid("b")
            ca = await MClient.open(srv, a)
            await send_many(ca, 5, to=b, prefix="seed")
            for codec in ("pb", "json"):
                cb = await MClient.open(srv, b, codec=codec, platform=codec)
                r = await cb.sync(0, 3, 10)
                print("%s %s: {max_seq: 3, limit: 10} -> %r has_more %r "
                      "server_max_seq %r" % (mode, codec, seqs(r), r.has_more,
                                             r.server_max_seq))
                assert_code(r, OK, "sync")
                if mode == "after":
                    assert seqs(r) == [4, 5] and not r.has_more, r
                    r = await cb.sync(0, 3, 1)  # paging in the seed's form
                    assert seqs(r) == [4] and r.has_more, r
                    r = await cb.sync(0, 5, 10)  # up to date: nothing
                    assert seqs(r) == [] and not r.has_more, r
                else:
                    assert seqs(r) == [1, 2, 3], r
                assert r.server_max_seq == 5, r
                # The contract's forms mean the same under both settings.
                r = await cb.sync(3, 0, 10)
                assert seqs(r) == [4, 5], r
                r = await cb.sync(1, 3, 10)
                assert seqs(r) == [2, 3], r
                r = await cb.sync()
                assert seqs(r) == [1, 2, 3, 4, 5], r
                await cb.close()
            await ca.close()
    run(go())
