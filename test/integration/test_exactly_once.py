"""Exactly-once delivery under concurrency (protocol.md 5).

Server -t 4 (users spread over the loops, cross-loop delivery through the
mailboxes), 200 users with mixed codecs, 20 of them with a second device.
Every user sends to 4 others concurrently (bounded concurrency, high
send_rate); some sends come from the second device, and some messages are
resent with the same client_msg_id. Then:
  * every send got ERR_SUCCESS, message ids are unique;
  * every connection got each message addressed to it (and each message its
    user sent from another device) exactly once, and nothing else;
  * every user's timeline (paged with limit 500 / has_more) holds exactly the
    messages sent to it and by it, seqs 1..max without gaps, in seq order,
    with the same seq as the push / the send response.
Runs once per store backend.
"""

import asyncio
import collections
import time

import imgw_harness as H
from imgw_harness import run
from msg_helpers import (  # noqa: F401  (fixtures)
    OK, MClient, close_all, mserver, store_backend, uid)

N_USERS = 200
OFFSETS = (1, 7, 31, 97)        # each user sends to 4 distinct others
SECOND_DEVICE_EVERY = 10        # users 0, 10, 20, ... have a second device
RESEND_EVERY = 5                # users 0, 5, 10, ... resend their first message
CONNECT_CONCURRENCY = 40
SEND_CONCURRENCY = 100


def test_exactly_once_200_users(mserver):
    s = mserver(threads=4, send_rate=100000)
    print("check: -t 4, %d users (pb/json mixed, every %dth with a 2nd device), each "
          "sends to %d others concurrently: all sends succeed; every connection gets each "
          "of its messages exactly once; every timeline = sent-to + sent-by, seqs 1..max "
          "without gaps; resends with the same client_msg_id are deduped"
          % (N_USERS, SECOND_DEVICE_EVERY, len(OFFSETS)))

    async def go():
        t_start = time.monotonic()
        tag = uid("eo")
        users = ["%s-%03d" % (tag, i) for i in range(N_USERS)]
        conns = collections.defaultdict(list)    # user -> [MClient]
        sem = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def connect(i, platform, codec):
            async with sem:
                c = await MClient.open(s, users[i], codec=codec, platform=platform)
                assert c.auth_rsp.max_seq == 0, c.auth_rsp
                conns[users[i]].append(c)

        jobs = []
        for i in range(N_USERS):
            codec = "pb" if i % 2 == 0 else "json"
            jobs.append(connect(i, "Web", codec))
            if i % SECOND_DEVICE_EVERY == 0:
                jobs.append(connect(i, "iOS", "json" if codec == "pb" else "pb"))
        await asyncio.gather(*jobs)
        all_conns = [c for cs in conns.values() for c in cs]
        print("connected %d connections in %.1fs" % (len(all_conns), time.monotonic() - t_start))

        # ---- concurrent sends
        sends = []            # (sender index, receiver index, MClient, SendResult)
        send_sem = asyncio.Semaphore(SEND_CONCURRENCY)

        async def send(i, k, d):
            cs = conns[users[i]]
            c = cs[k % len(cs)]       # alternate devices where there are two
            async with send_sem:
                r = await c.send_msg(to=users[(i + d) % N_USERS],
                                     content="eo %d->%d" % (i, (i + d) % N_USERS),
                                     extra={"from": str(i)}, timeout=30)
            sends.append((i, (i + d) % N_USERS, c, r))

        t0 = time.monotonic()
        await asyncio.gather(*(send(i, k, d) for i in range(N_USERS)
                               for k, d in enumerate(OFFSETS)))
        print("%d sends answered in %.1fs" % (len(sends), time.monotonic() - t0))
        failed = [(i, j, r) for i, j, _, r in sends if r.error_code != OK]
        assert not failed, "%d sends failed, e.g. %r" % (len(failed), failed[:5])
        ids = [r.message_id for _, _, _, r in sends]
        assert len(set(ids)) == len(ids), "duplicate message ids among %d sends" % len(ids)
        by_id = {r.message_id: (i, j, c, r) for i, j, c, r in sends}

        # ---- resends with the same client_msg_id (dedupe under load)
        first_of = {}
        for i, j, c, r in sends:
            first_of.setdefault(i, (c, r))

        async def resend(i):
            c, r = first_of[i]
            async with send_sem:
                f = await c.request("CMD_SEND_MSG_REQ", r.req, expect="CMD_SEND_MSG_RSP",
                                    timeout=30)
            return i, r, f.body

        res = await asyncio.gather(*(resend(i) for i in range(0, N_USERS, RESEND_EVERY)))
        bad = [(i, r, b) for i, r, b in res
               if (b.error_code, b.message_id, b.seq) != (OK, r.message_id, r.seq)]
        print("%d resends, %d not deduped" % (len(res), len(bad)))
        assert not bad, "resend with the same client_msg_id not deduped, e.g. %r" % (bad[:3],)

        # ---- expected pushes per connection
        expected = {}
        for c in all_conns:
            exp = set()
            for mid, (i, j, sc, r) in by_id.items():
                if users[j] == c.user:
                    exp.add(mid)
                elif users[i] == c.user and sc is not c:
                    exp.add(mid)
            expected[c] = exp

        deadline = time.monotonic() + 25
        while time.monotonic() < deadline:
            if all(len(c.pushes("CMD_PUSH_MSG")) >= len(expected[c]) for c in all_conns):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.8)     # room for duplicates to show up

        problems = []
        total = 0
        push_seq = {}                # (user, message_id) -> seq seen in a push
        for c in all_conns:
            got = collections.Counter(f.body.message_id for f in c.pushes("CMD_PUSH_MSG"))
            total += sum(got.values())
            dup = {m: n for m, n in got.items() if n > 1}
            missing = expected[c] - set(got)
            extra = set(got) - expected[c]
            if dup or missing or extra:
                problems.append("%s: %d duplicated, %d missing, %d unexpected (e.g. %r %r %r)"
                                % (c.label, len(dup), len(missing), len(extra),
                                   list(dup.items())[:2], list(missing)[:2], list(extra)[:2]))
            for f in c.pushes("CMD_PUSH_MSG"):
                prev = push_seq.setdefault((c.user, f.body.message_id), f.body.seq)
                if prev != f.body.seq:
                    problems.append("%s: message %s pushed with seq %d and %d on two devices"
                                    % (c.label, f.body.message_id, prev, f.body.seq))
            others = [f for f in c.frames if f.command != 202]
            if others:
                problems.append("%s: unexpected frames %r" % (c.label, others[:3]))
        print("pushes received: %d (expected %d)"
              % (total, sum(len(e) for e in expected.values())))
        assert not problems, "%d delivery problems:\n%s" % (
            len(problems), "\n".join(problems[:20]))

        # ---- timelines via sync
        sync_sem = asyncio.Semaphore(20)
        tl_problems = []

        async def check_timeline(u):
            c = conns[u][0]
            async with sync_sem:
                msgs, pages = await c.sync_all(limit=500)
            seqs = [m.seq for m in msgs]
            want = {mid for mid, (i, j, _, _) in by_id.items() if u in (users[i], users[j])}
            got = [m.message_id for m in msgs]
            if seqs != list(range(1, len(msgs) + 1)):
                tl_problems.append("%s: seqs not 1..max: %r" % (u, seqs))
            if len(got) != len(set(got)) or set(got) != want:
                tl_problems.append("%s: timeline %d messages (%d distinct), want %d; "
                                   "missing %r extra %r" % (
                                       u, len(got), len(set(got)), len(want),
                                       list(want - set(got))[:3], list(set(got) - want)[:3]))
            if pages[-1].server_max_seq != len(msgs):
                tl_problems.append("%s: server_max_seq %d != %d messages"
                                   % (u, pages[-1].server_max_seq, len(msgs)))
            for m in msgs:
                i, j, _, r = by_id.get(m.message_id, (None, None, None, None))
                if r is None:
                    continue
                if users[i] == u and m.seq != r.seq:
                    tl_problems.append("%s: own message %s at seq %d, response said %d"
                                       % (u, m.message_id, m.seq, r.seq))
                ps = push_seq.get((u, m.message_id))
                if ps is not None and ps != m.seq:
                    tl_problems.append("%s: message %s pushed with seq %d, synced at %d"
                                       % (u, m.message_id, ps, m.seq))
                if (m.sender_id, m.receiver_id) != (users[i], users[j]) or \
                        bytes(m.content) != bytes(r.req.content):
                    tl_problems.append("%s: message %s fields wrong: %r" % (u, m.message_id, m))

        await asyncio.gather(*(check_timeline(u) for u in users))
        assert not tl_problems, "%d timeline problems:\n%s" % (
            len(tl_problems), "\n".join(tl_problems[:20]))
        n_tl = len(users) * len(OFFSETS) * 2
        print("timelines ok: %d users, %d entries in total" % (len(users), n_tl))

        await close_all(all_conns)
        print("total %.1fs" % (time.monotonic() - t_start))
    run(go())


def test_exactly_once_group_fanout(mserver):
    s = mserver(threads=4, send_rate=100000)
    GROUP, SENDERS, PER = 60, 12, 5
    print("check: -t 4, group of %d members all online (mixed codecs); %d members send "
          "%d messages each concurrently: every member connection gets every message "
          "of the others exactly once, with the seq it has in that member's timeline; "
          "every timeline holds all %d messages, seqs 1..%d"
          % (GROUP, SENDERS, PER, SENDERS * PER, SENDERS * PER))

    async def go():
        from msg_helpers import put_group
        gid = uid("eog")
        members = ["%s-%02d" % (gid, i) for i in range(GROUP)]
        put_group(s.port, gid, members)
        sem = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def connect(i):
            async with sem:
                return await MClient.open(s, members[i], codec="json" if i % 2 else "pb")

        cs = await asyncio.gather(*(connect(i) for i in range(GROUP)))

        async def burst(c):
            out = []
            for k in range(PER):
                out.append(await c.send_msg(group=gid, content="%s #%d" % (c.user, k),
                                            timeout=30))
            return out

        res = await asyncio.gather(*(burst(c) for c in cs[:SENDERS]))
        flat = [(cs[i], r) for i, rs in enumerate(res) for r in rs]
        bad = [r for _, r in flat if r.error_code != OK]
        assert not bad, "%d group sends failed: %r" % (len(bad), bad[:3])
        all_ids = {r.message_id for _, r in flat}
        assert len(all_ids) == SENDERS * PER
        deadline = time.monotonic() + 20
        want = {c: {r.message_id for sc, r in flat if sc is not c} for c in cs}
        while time.monotonic() < deadline and any(
                len(c.pushes("CMD_PUSH_MSG")) < len(want[c]) for c in cs):
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.8)
        problems = []
        for c in cs:
            got = collections.Counter(p.body.message_id for p in c.pushes("CMD_PUSH_MSG"))
            if set(got) != want[c] or any(n > 1 for n in got.values()):
                problems.append("%s: %d pushes, %d distinct, want %d" % (
                    c.label, sum(got.values()), len(got), len(want[c])))
        assert not problems, "\n".join(problems[:20])
        for c in cs:
            msgs, _ = await c.sync_all()
            seqs = [m.seq for m in msgs]
            assert seqs == list(range(1, len(all_ids) + 1)), (c.label, seqs)
            assert {m.message_id for m in msgs} == all_ids, c.label
            pseq = {p.body.message_id: p.body.seq for p in c.pushes("CMD_PUSH_MSG")}
            for m in msgs:
                if m.message_id in pseq:
                    assert pseq[m.message_id] == m.seq, (c.label, m.message_id)
            own = [m for m in msgs if m.sender_id == c.user]
            rs = {r.message_id: r.seq for sc, r in flat if sc is c}
            for m in own:
                assert rs[m.message_id] == m.seq, (c.label, m.message_id, m.seq)
        await close_all(cs)
    run(go())


def test_exactly_once_with_receivers_dropping(mserver):
    s = mserver(threads=4, send_rate=100000)
    N, DROP = 100, 30
    print("check: -t 4, %d users each send to 4 others concurrently while %d users abort "
          "their TCP connections mid-burst: every send succeeds, the surviving connections "
          "get their messages exactly once, and every timeline (re-login + sync) is "
          "complete with seqs 1..max" % (N, DROP))

    async def go():
        tag = uid("drop")
        users = ["%s-%03d" % (tag, i) for i in range(N)]
        sem = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def connect(i):
            async with sem:
                return await MClient.open(s, users[i], codec="json" if i % 2 else "pb")

        cs = await asyncio.gather(*(connect(i) for i in range(N)))
        droppers = set(range(0, N, N // DROP))
        send_sem = asyncio.Semaphore(SEND_CONCURRENCY)
        sends = []

        async def send(i, d):
            if i in droppers:
                return
            async with send_sem:
                r = await cs[i].send_msg(to=users[(i + d) % N], timeout=30)
            sends.append((i, (i + d) % N, r))

        async def drop_later():
            await asyncio.sleep(0.02)
            for i in droppers:
                cs[i].ws.transport.abort()
                await asyncio.sleep(0)

        await asyncio.gather(drop_later(), *(send(i, d) for i in range(N) for d in OFFSETS))
        bad = [x for x in sends if x[2].error_code != OK]
        assert not bad, "failed sends: %r" % bad[:3]
        await asyncio.sleep(1.0)
        problems = []
        for j, c in enumerate(cs):
            if j in droppers:
                continue
            want = {r.message_id for i, jj, r in sends if jj == j}
            got = collections.Counter(p.body.message_id for p in c.pushes("CMD_PUSH_MSG"))
            if set(got) != want or any(n > 1 for n in got.values()):
                problems.append("%s: %d pushes (%d distinct), want %d"
                                % (c.label, sum(got.values()), len(got), len(want)))
        assert not problems, "\n".join(problems[:10])
        await close_all([c for j, c in enumerate(cs) if j not in droppers])
        for j in range(N):
            c = await MClient.open(s, users[j], platform="check")
            msgs, _ = await c.sync_all()
            want = {r.message_id for i, jj, r in sends if j in (i, jj)}
            assert [m.seq for m in msgs] == list(range(1, len(want) + 1)), (users[j], [m.seq for m in msgs])
            assert {m.message_id for m in msgs} == want, users[j]
            assert c.auth_rsp.max_seq == len(want), c.auth_rsp
            await c.close()
        r = H.http_get(s.port, "/healthz")
        assert r.status == 200, r
    run(go())
