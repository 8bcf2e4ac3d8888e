"""One imgw node on the Redis store backend, against a real redis-server
(protocol.md 4-6, 10; docs/store.md "The redis backend"; docs/cluster.md
"When something dies").

  test_restart_keeps_timelines_seqs_groups   SIGTERM imgw, start a new one on
                                             the same Redis: max_seq, sync,
                                             groups and group sends survive
  test_routes_fields_ttl_and_heartbeat       IM-USER-{user}: platform ->
                                             broker_id, TTL, removal on close,
                                             heartbeat refresh
  test_redis_outage_no_acked_loss            Redis killed during 1:1 traffic:
                                             ERR_SERVER_BUSY, /readyz 503,
                                             recovery without restarting imgw,
                                             no acknowledged message lost
  test_group_burst_atomic_across_kill        Redis killed in a burst of group
                                             sends: all-or-nothing per message
  test_bad_redis_url_exit_2                  bad store.redis_url -> exit 2

Run:  cd /work/main && /usr/bin/python3 -m pytest -q -s test/integration/test_redis_node.py
"""

import asyncio
import subprocess
import time

import pytest

import imgw_harness as H
from cluster_helpers import (BUSY, OK, Recorder, astatus, check_contiguous,
                             await_for, open_retry, short_id, start_node, status,
                             timeline)
from msg_helpers import MClient, close_all, group_conv, http_json, put_group, uid
from services import redis_factory, redis_server  # noqa: F401 (fixtures)


def route_hash(rc, user):
    return rc.hgetall("IM-USER-%s" % user)


# ----------------------------------------------------------------- 1 restart


def test_restart_keeps_timelines_seqs_groups(server, redis_server):
    print("check: messages + a group (admin API), SIGTERM imgw (exit 0), a new imgw "
          "on the same Redis: AuthResponse.max_seq, sync, GET group, group send")
    r = redis_server
    bid = short_id("rnode")
    s1 = start_node(server, r.url, broker_id=bid, node_id=11)
    a, b, c = uid("a"), uid("b"), uid("c")
    gid = uid("g")
    put_group(s1.port, gid, [a, b, c])

    async def phase1():
        ca = await MClient.open(s1, a)
        cb = await MClient.open(s1, b, codec="json")
        sent = []
        for i in range(5):
            sent.append(await ca.send_ok(to=b, content="one-to-one %d" % i))
        for i in range(3):
            sent.append(await cb.send_ok(group=gid, content="group %d" % i))
        tl_a = await timeline(ca)
        tl_b = await timeline(cb)
        await close_all([ca, cb])
        return sent, tl_a, tl_b

    sent, tl_a, tl_b = H.run(phase1())
    print("before restart: a has %d entries, b has %d" % (len(tl_a), len(tl_b)))
    assert len(tl_a) == 8 and len(tl_b) == 8, (tl_a, tl_b)
    code, killed = s1.stop()
    print("first imgw exit code %s (killed=%s)" % (code, killed))
    assert code == 0 and not killed

    s2 = start_node(server, r.url, broker_id=bid, node_id=11)

    async def phase2():
        ca = await MClient.open(s2, a)
        cb = await MClient.open(s2, b, codec="json")
        cc = await MClient.open(s2, c)
        print("after restart: max_seq a=%d b=%d c=%d" % (
            ca.auth_rsp.max_seq, cb.auth_rsp.max_seq, cc.auth_rsp.max_seq))
        assert ca.auth_rsp.max_seq == 8, ca.auth_rsp
        assert cb.auth_rsp.max_seq == 8, cb.auth_rsp
        assert cc.auth_rsp.max_seq == 3, cc.auth_rsp
        tl_a2 = await timeline(ca)
        tl_b2 = await timeline(cb)
        assert [(s, m) for s, m, _ in tl_a2] == [(s, m) for s, m, _ in tl_a], (
            "a's timeline changed across the restart")
        assert [(s, m) for s, m, _ in tl_b2] == [(s, m) for s, m, _ in tl_b], (
            "b's timeline changed across the restart")
        assert [m for _, m, _ in tl_b2] == [x.message_id for x in sent]
        for (_, _, m), x in zip(tl_b2, sent):
            assert bytes(m.content) == bytes(x.req.content), (m, x.req)
        rsp = http_json(s2.port, "GET", "/api/groups/%s" % gid)
        print("GET group after restart: %r" % rsp)
        assert rsp.status == 200 and sorted(rsp.json["members"]) == sorted([a, b, c]), rsp
        res = await ca.send_ok(group=gid, content="after restart")
        print("group send after restart: %r" % res)
        assert res.seq == 9, res
        for cl, want_seq in ((cb, 9), (cc, 4)):
            p = await cl.wait_push("CMD_PUSH_MSG",
                                   pred=lambda f: f.body.message_id == res.message_id)
            assert p.body.seq == want_seq and p.body.conversation_id == group_conv(gid), p
        await close_all([ca, cb, cc])

    H.run(phase2())


# ------------------------------------------------------------------ 2 routes


def test_routes_fields_ttl_and_heartbeat(server, redis_server):
    ttl = 6
    print("check: IM-USER-{user} field platform = broker_id exactly, 0 < PTTL <= "
          "route_ttl (%d s); second platform adds a field; close removes the field; "
          "heartbeats refresh the TTL" % ttl)
    rc = redis_server.client()
    bid = short_id("route-node")
    s = start_node(server, redis_server.url, broker_id=bid, node_id=12, route_ttl=ttl)
    u = uid("ru")
    key = "IM-USER-%s" % u

    async def go():
        ios = await MClient.open(s, u, platform="ios")
        h = route_hash(rc, u)
        pttl = rc.pttl(key)
        print("after ios login: %r pttl=%d" % (h, pttl))
        assert h.get("ios") == bid, h
        assert 0 < pttl <= ttl * 1000, pttl
        android = await MClient.open(s, u, platform="android", codec="json")
        h = route_hash(rc, u)
        print("after android login: %r" % h)
        assert h.get("ios") == bid and h.get("android") == bid, h
        await ios.close()
        deadline = time.monotonic() + 5
        while "ios" in route_hash(rc, u) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        h = route_hash(rc, u)
        print("after ios closed: %r" % h)
        assert "ios" not in h, "ios field still there 5 s after close: %r" % h
        assert h.get("android") == bid, h

        # heartbeat refresh: let the TTL run down, then heartbeat.
        t0 = time.monotonic()
        await asyncio.sleep(3.5)
        before = rc.pttl(key)
        print("pttl after 3.5 s without heartbeats: %d" % before)
        assert 0 < before <= 4000, before
        # heartbeats every 0.5 s until well past the original expiry; the
        # server refreshes at most every route_ttl/3 = 2 s
        best = 0
        while time.monotonic() - t0 < ttl + 2.5:
            await android.heartbeat()
            await asyncio.sleep(0.1)
            best = max(best, rc.pttl(key))
            await asyncio.sleep(0.4)
        await android.heartbeat()
        await asyncio.sleep(0.1)
        after = rc.pttl(key)
        h = route_hash(rc, u)
        print("%.1f s later, with heartbeats: highest pttl seen %d, now %d, fields %r"
              % (time.monotonic() - t0, best, after, h))
        assert h.get("android") == bid, "route expired despite heartbeats: %r" % h
        assert 5000 <= best <= ttl * 1000, best
        assert 2000 <= after <= ttl * 1000, after
        await android.close()
        deadline = time.monotonic() + 5
        while rc.exists(key) and route_hash(rc, u) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        print("after android closed: %r" % route_hash(rc, u))
        assert route_hash(rc, u) == {}

    H.run(go())


# ------------------------------------------------------------------ 3 outage


def test_redis_outage_no_acked_loss(server, redis_factory):
    print("check: Redis killed while a sender sends 1:1 messages: ERR_SERVER_BUSY "
          "(never ERR_SUCCESS unless stored), /readyz 503, /healthz 200, node up; "
          "Redis restarted (AOF always): sends succeed again without restarting "
          "imgw; every acknowledged message is in both timelines")
    r = redis_factory(persist=True)
    s = start_node(server, r.url, broker_id=short_id("outage"), node_id=13)
    a, b = uid("sa"), uid("sb")

    async def go():
        ca = await MClient.open(s, a)
        cb = await MClient.open(s, b, codec="json")
        rec = Recorder(ca, [{"to": b}], window=4, pause=0.01, prefix="out").start()
        await asyncio.sleep(1.5)
        assert any(x.code == OK for x in rec.recs), rec.summary()
        t_kill = time.monotonic()
        r.kill()
        print("redis killed after %d sends" % len(rec.recs))
        await asyncio.sleep(1.0)
        ready = await astatus(s.port, "/readyz")
        health = await astatus(s.port, "/healthz")
        print("during outage: /readyz %s /healthz %s" % (ready, health))
        await asyncio.sleep(1.5)
        ready2 = await astatus(s.port, "/readyz")
        t_restart = time.monotonic()
        r.start()
        print("redis restarted on port %d after %.1f s" % (r.port, t_restart - t_kill))
        assert s.proc.poll() is None, "imgw died during the outage"
        assert not cb.closed.is_set() and not ca.closed.is_set(), (
            "a connected client was disconnected by the Redis outage (codes %s %s)"
            % (ca.close_code, cb.close_code))
        # wait for sends to succeed again
        deadline = time.monotonic() + 20
        recovered_at = None
        while time.monotonic() < deadline:
            ok_after = [x for x in rec.recs if x.code == OK and x.t_sent > t_restart]
            if ok_after:
                recovered_at = ok_after[0].t_rsp
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        await rec.stop()
        print("send results: %r" % rec.summary())
        assert ready == 503 and ready2 == 503, (ready, ready2)
        assert health == 200, health
        assert recovered_at is not None, (
            "no successful send within 20 s of the Redis restart: %r" % rec.summary())
        print("sends succeed again %.1f s after the restart" % (recovered_at - t_restart))
        # every loop reconnects on its own backoff schedule (<= 5 s)
        await await_for(lambda: status(s.port, "/readyz") == 200 and
                        status(s.port, "/readyz") == 200, 15,
                        what="/readyz 200 after the Redis restart")
        print("/readyz 200 again")

        bad = [x for x in rec.recs if x.code not in (OK, BUSY)]
        assert not bad, "responses other than SUCCESS / SERVER_BUSY: %r" % bad[:5]
        during = [x for x in rec.recs
                  if x.t_sent > t_kill + 0.5 and x.t_rsp is not None and x.t_rsp < t_restart]
        print("%d sends made and answered while Redis was down" % len(during))
        assert during, "no send happened during the outage"
        wrong = [x for x in during if x.code != BUSY]
        assert not wrong, "sends during the outage not ERR_SERVER_BUSY: %r" % wrong[:5]

        # fresh connections: the receiver's and the sender's timelines
        # (a login may still meet a loop whose store link is reconnecting:
        # ERR_SERVER_BUSY, retried)
        cb2 = await open_retry(s, b, platform="check")
        ca2 = await open_retry(s, a, platform="check")
        tl_b = await timeline(cb2)
        tl_a = await timeline(ca2)
        check_contiguous(tl_a, "sender")
        check_contiguous(tl_b, "receiver")
        b_ids = {m: seq for seq, m, _ in tl_b}
        a_by_seq = {seq: m for seq, m, _ in tl_a}
        acked = rec.acked()
        lost = [x for x in acked if x.message_id not in b_ids
                or a_by_seq.get(x.seq) != x.message_id]
        print("acknowledged: %d, in receiver's timeline: %d entries, sender's: %d; "
              "acknowledged-but-lost = %d" % (len(acked), len(tl_b), len(tl_a), len(lost)))
        assert not lost, "acknowledged but lost: %r" % lost[:10]
        # all-or-nothing: a message in one timeline is in the other too
        a_ids = set(a_by_seq.values())
        assert a_ids == set(b_ids), ("timelines disagree: only sender %r, only receiver %r"
                                     % (sorted(a_ids - set(b_ids))[:5],
                                        sorted(set(b_ids) - a_ids)[:5]))
        cmids = [m.client_msg_id for _, _, m in tl_b]
        assert len(cmids) == len(set(cmids)), "a client_msg_id stored twice"
        await close_all([ca, cb, ca2, cb2])

    H.run(go())


# ----------------------------------------------------- 4 group burst + kill


def test_group_burst_atomic_across_kill(server, redis_factory):
    n_members = 20
    print("check: concurrent group sends (group of %d, 4 senders) while Redis is "
          "killed mid-burst and restarted: every acknowledged message is in every "
          "member's timeline; every message is in all timelines or in none" % n_members)
    r = redis_factory(persist=True)
    s = start_node(server, r.url, broker_id=short_id("burst"), node_id=14, threads=2)
    members = [uid("gm") for _ in range(n_members)]
    gid = uid("grp")
    put_group(s.port, gid, members)

    async def go():
        senders = [await MClient.open(s, members[i]) for i in range(4)]
        recs = [Recorder(c, [{"group": gid}], window=8, prefix="burst%d" % i).start()
                for i, c in enumerate(senders)]
        deadline = time.monotonic() + 20
        while (sum(len(x.acked()) for x in recs) < 40 and time.monotonic() < deadline):
            await asyncio.sleep(0.01)
        r.kill()
        print("redis killed with %d acked, %d sent" % (
            sum(len(x.acked()) for x in recs), sum(len(x.recs) for x in recs)))
        await asyncio.sleep(0.7)
        r.start()
        t_restart = time.monotonic()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if all(any(x.code == OK and x.t_sent > t_restart for x in rr.recs)
                   for rr in recs):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)
        for rr in recs:
            await rr.stop()
        for i, rr in enumerate(recs):
            print("sender %d: %r" % (i, rr.summary()))
        acked = [x for rr in recs for x in rr.acked()]
        assert any(x.t_sent > t_restart for x in acked), "no send succeeded after the restart"
        bad = [x for rr in recs for x in rr.recs if x.code not in (OK, BUSY)]
        assert not bad, "responses other than SUCCESS / SERVER_BUSY: %r" % bad[:5]

        timelines = {}
        for m in members:
            c = await open_retry(s, m, platform="check")
            tl = await timeline(c)
            check_contiguous(tl, m)
            assert c.auth_rsp.max_seq == (tl[-1][0] if tl else 0), (
                "%s: max_seq %d but timeline ends at %r" % (m, c.auth_rsp.max_seq, tl[-1:]))
            timelines[m] = {mid for _, mid, _ in tl}
            await c.close()
        union = set().union(*timelines.values())
        partial = {mid: [m for m in members if mid not in timelines[m]]
                   for mid in union if any(mid not in timelines[m] for m in members)}
        missing = [(x.message_id, [m for m in members if x.message_id not in timelines[m]])
                   for x in acked if any(x.message_id not in timelines[m] for m in members)]
        print("acknowledged %d, distinct messages stored %d, partial %d, "
              "acknowledged-but-missing %d" % (len(acked), len(union), len(partial),
                                               len(missing)))
        assert not missing, "acknowledged but missing from timelines: %r" % missing[:5]
        assert not partial, "messages in some timelines only: %r" % list(partial.items())[:5]
        await close_all(senders)

    H.run(go())


# ------------------------------------------------------------- 5 bad url


@pytest.mark.parametrize("url", ["ftp://x", "redis://127.0.0.1:99999/0"])
def test_bad_redis_url_exit_2(imgw_bin, tmp_path, url):
    print("check: store.backend=redis with store.redis_url=%r -> exit 2, the message "
          "names redis_url" % url)
    ini = tmp_path / "imgw.ini"
    ini.write_text("[server]\nports = %d\nbind = 127.0.0.1\n[auth]\njwt_secret = %s\n"
                   % (H.free_port(), H.DEFAULT_SECRET))
    env = H.clean_env({"IMGW__STORE__BACKEND": "redis", "IMGW__STORE__REDIS_URL": url})
    try:
        p = subprocess.run([imgw_bin, "-c", str(ini), "-t", "1"], env=env,
                           capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired as e:
        raise AssertionError("imgw started with redis_url=%r (no exit within 10 s): %r"
                             % (url, e.stderr))
    out = p.stdout + p.stderr
    print("exit %d, output: %s" % (p.returncode, out[-1000:]))
    assert p.returncode == 2, p.returncode
    assert "redis_url" in out, out
