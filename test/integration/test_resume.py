"""The resume contract (protocol.md "Resume contract", issue 15).

Every user timeline has an epoch. AuthResponse.epoch and SyncResponse.epoch
carry it; SyncRequest.epoch is the epoch the client's min_seq belongs to.
When it differs (the timeline was reset or lost), or when retention trimmed
past the client's seq, SyncResponse.discontinuity is true and oldest_seq
says where the timeline now starts. Checked on both codecs and on every
store backend: memory (a restart loses the timeline), redis (FLUSHALL),
file (durable: a restart keeps the epoch, no discontinuity).
"""

import pytest

import imgw_harness as H
from imgw_harness import pb, run
from msg_helpers import (  # noqa: F401  (fixtures)
    OK, MClient, assert_code, close_all, mserver, send_many, store_backend,
    uid, DEFAULT_MSG_OVERRIDES, _stop_servers)


def seqs(r):
    return [m.seq for m in r.messages]


async def sync(c, min_seq=0, epoch="", limit=0, max_seq=0):
    f = await c.request("CMD_SYNC_REQ",
                        pb.SyncRequest(min_seq=min_seq, max_seq=max_seq,
                                       limit=limit, epoch=epoch),
                        expect="CMD_SYNC_RSP")
    r = f.body
    print("  sync(min_seq=%d, epoch=%r) -> seqs %r epoch %r discontinuity %r "
          "oldest_seq %d server_max_seq %d" % (
              min_seq, epoch, seqs(r), r.epoch, r.discontinuity, r.oldest_seq,
              r.server_max_seq))
    assert_code(r, OK, "sync")
    return r


@pytest.mark.parametrize("codec", ["pb", "json"])
def test_epoch_in_auth_and_sync(mserver, store_backend, codec):
    print("check (%s, %s): no epoch before the first message; then AuthResponse "
          "and SyncResponse carry the same epoch; a sync from a held position in "
          "that epoch has no discontinuity; an unknown epoch at min_seq 0 is no "
          "discontinuity (nothing held)" % (store_backend.name, codec))
    s = mserver(threads=2)

    async def go():
        a, b = uid("a"), uid("b")
        cb = await MClient.open(s, b, codec=codec)
        assert cb.auth_rsp.epoch == "" and cb.auth_rsp.max_seq == 0, cb.auth_rsp
        r = await sync(cb)
        assert r.epoch == "" and not r.discontinuity and r.oldest_seq == 1, r
        await cb.close()
        ca = await MClient.open(s, a, codec="json" if codec == "pb" else "pb")
        await send_many(ca, 3, to=b)
        cb = await MClient.open(s, b, codec=codec)
        ep = cb.auth_rsp.epoch
        print("  auth: max_seq %d epoch %r" % (cb.auth_rsp.max_seq, ep))
        assert ep != "" and ep.isdigit() and cb.auth_rsp.max_seq == 3, cb.auth_rsp
        r = await sync(cb, 0, ep)
        assert seqs(r) == [1, 2, 3] and r.epoch == ep and not r.discontinuity, r
        assert r.oldest_seq == 1, r
        r = await sync(cb, 2, ep)
        assert seqs(r) == [3] and not r.discontinuity, r
        r = await sync(cb, 3, ep)
        assert seqs(r) == [] and not r.discontinuity, r
        r = await sync(cb, 0, "12345")
        assert seqs(r) == [1, 2, 3] and not r.discontinuity and r.epoch == ep, r
        await close_all([ca, cb])
    run(go())


def test_retention_trim_is_a_discontinuity(mserver, store_backend):
    print("check (%s): retention_count 3; the client held seq 1; five more "
          "messages trim past it: discontinuity with oldest_seq 4 and the held "
          "messages 4..6; a sync from 3 (nothing missed) has none"
          % store_backend.name)
    s = mserver(threads=2, env={"IMGW__STORE__RETENTION_COUNT": "3"})

    async def go():
        a, b = uid("a"), uid("b")
        ca = await MClient.open(s, a)
        await send_many(ca, 1, to=b)
        cb = await MClient.open(s, b, codec="json")
        ep = cb.auth_rsp.epoch
        r = await sync(cb, 0, ep)
        assert seqs(r) == [1] and not r.discontinuity, r
        await send_many(ca, 5, to=b)
        r = await sync(cb, 1, ep)
        assert r.discontinuity and r.oldest_seq == 4 and seqs(r) == [4, 5, 6], r
        assert r.epoch == ep, r
        r = await sync(cb, 3, ep)
        assert not r.discontinuity and seqs(r) == [4, 5, 6], r
        await close_all([ca, cb])
    run(go())


def test_timeline_reset_is_a_discontinuity(tmp_path, imgw_bin, store_backend):
    name = store_backend.name
    print("check (%s): the timeline is lost (%s); a client that held seq 3 in "
          "the old epoch syncs with it: the page is the new timeline from its "
          "start (seq 1), discontinuity, a new epoch; without an epoch a "
          "position past server_max_seq is a discontinuity too" % (
              name, "memory store restart" if name == "memory" else
              "FLUSHALL"))
    started = []

    def server():
        ov = dict(DEFAULT_MSG_OVERRIDES)
        srv = H.build_server(str(tmp_path), "imgw%d-%s" % (len(started), name),
                             threads=2, env=dict(store_backend.env), **ov)
        started.append(srv)
        srv.start()
        return srv

    async def go():
        a, b = uid("a"), uid("b")
        s1 = server()
        ca = await MClient.open(s1, a)
        await send_many(ca, 3, to=b)
        cb = await MClient.open(s1, b, codec="json")
        ep1 = cb.auth_rsp.epoch
        r = await sync(cb, 0, ep1)
        assert seqs(r) == [1, 2, 3], r
        await close_all([ca, cb])
        if name == "memory":
            s1.stop()
            s2 = server()
        else:
            store_backend.service.client().flushall()
            s2 = s1
        cb = await MClient.open(s2, b, codec="pb")
        print("  after the reset: auth max_seq %d epoch %r" % (
            cb.auth_rsp.max_seq, cb.auth_rsp.epoch))
        assert cb.auth_rsp.max_seq == 0 and cb.auth_rsp.epoch == "", cb.auth_rsp
        r = await sync(cb, 3, ep1)
        assert r.discontinuity and seqs(r) == [] and r.epoch == "", r
        ca = await MClient.open(s2, a)
        await send_many(ca, 2, to=b)
        r = await sync(cb, 3, ep1)
        assert r.discontinuity and seqs(r) == [1, 2], r
        assert r.epoch not in ("", ep1) and r.oldest_seq == 1, r
        ep2 = r.epoch
        r = await sync(cb, 2, ep2)
        assert not r.discontinuity and seqs(r) == [], r
        r = await sync(cb, 5, "")
        assert r.discontinuity and r.server_max_seq == 2, r
        await close_all([ca, cb])

    try:
        run(go())
    finally:
        _stop_servers(started)


def test_file_restart_keeps_the_epoch(tmp_path, imgw_bin):
    print("check (file): the durable backend keeps the epoch across a restart; "
          "messages sent after it sync with no discontinuity")
    started = []
    data = str(tmp_path / "data")

    def server():
        srv = H.build_server(str(tmp_path), "imgw%d-file" % len(started),
                             threads=2, env={"store.backend": "file",
                                             "store.path": data},
                             **DEFAULT_MSG_OVERRIDES)
        started.append(srv)
        srv.start()
        return srv

    async def go():
        a, b = uid("a"), uid("b")
        s1 = server()
        ca = await MClient.open(s1, a)
        await send_many(ca, 2, to=b)
        cb = await MClient.open(s1, b)
        ep = cb.auth_rsp.epoch
        assert ep != "", cb.auth_rsp
        await close_all([ca, cb])
        s1.stop()
        s2 = server()
        ca = await MClient.open(s2, a)
        await send_many(ca, 2, to=b)
        cb = await MClient.open(s2, b, codec="json")
        print("  after the restart: epoch %r (before %r)" % (cb.auth_rsp.epoch, ep))
        assert cb.auth_rsp.epoch == ep and cb.auth_rsp.max_seq == 4, cb.auth_rsp
        r = await sync(cb, 2, ep)
        assert not r.discontinuity and seqs(r) == [3, 4] and r.epoch == ep, r
        await close_all([ca, cb])

    try:
        run(go())
    finally:
        _stop_servers(started)
