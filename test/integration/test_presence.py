"""Presence (issue 13 item 5; docs/protocol.md "Presence").

  test_query_both_codecs            CMD_PRESENCE_REQ: online platforms from
                                    the routes, offline users, duplicates
  test_subscribe_push_lifecycle     CMD_PRESENCE_SUB_REQ + CMD_PRESENCE_PUSH
                                    across loops (-t 4): login, 2nd platform,
                                    logout, last logout, same-platform relogin,
                                    unsubscribe; subscriptions die with the
                                    connection (metrics)
  test_bounds_and_bad_input         empty / too many / bad ids, the per-
                                    connection subscription bound, off
  test_admin_users_api              GET /api/users/{uid}: platforms, node,
                                    connections; 401 / 400 / 405
  test_cluster_presence             two nodes over real Redis + RabbitMQ:
                                    query, subscription push through the
                                    broker, admin API naming the other node

Every single-node test runs once per store backend (memory, redis).
"""

import asyncio

import imgw_harness as H
from imgw_harness import pb, run
from cluster_helpers import metrics, short_id, start_node, wait_for
from msg_helpers import (  # noqa: F401  (fixtures)
    ADMIN_TOKEN, DENIED, INVALID, OK, MClient, close_all, http_json, mgw,
    mserver, store_backend, uid)
from services import rabbitmq_server, redis_server  # noqa: F401


async def query(c, ids, codec=None):
    f = await c.request("CMD_PRESENCE_REQ", pb.PresenceRequest(user_ids=ids),
                        expect="CMD_PRESENCE_RSP", codec=codec)
    return f.body


async def subscribe(c, ids, unsubscribe=False):
    f = await c.request("CMD_PRESENCE_SUB_REQ",
                        pb.PresenceSubscribeRequest(user_ids=ids,
                                                    unsubscribe=unsubscribe),
                        expect="CMD_PRESENCE_SUB_RSP")
    return f.body


def as_map(users):
    return {u.user_id: (u.online, sorted(u.platforms)) for u in users}


def presence_pushes(c, user):
    return [f.body for f in c.pushes("CMD_PRESENCE_PUSH")
            if f.body.user_id == user]


async def next_push(c, user, n):
    """Waits for the n-th presence push about user (1-based)."""
    await c.wait_push("CMD_PRESENCE_PUSH", pred=lambda f: f.body.user_id == user,
                      count=n)
    return presence_pushes(c, user)[n - 1]


def test_query_both_codecs(mgw):
    print("check: A online on Web and iOS, B never connected; a pb and a json "
          "client query [A, B, A] -> A online with both platforms, B offline, "
          "A listed once; after A's iOS closes, A has Web only")

    async def go():
        a, b, q = uid("pa"), uid("pb"), uid("pq")
        a1 = await MClient.open(mgw, a, platform="Web")
        a2 = await MClient.open(mgw, a, platform="iOS", codec="json")
        cp = await MClient.open(mgw, q)
        cj = await MClient.open(mgw, q, platform="Android", codec="json")
        for c in (cp, cj):
            r = await query(c, [a, b, a])
            print(c.codec, r)
            assert r.error_code == OK, r
            assert [u.user_id for u in r.users] == [a, b], r
            assert as_map(r.users) == {a: (True, ["Web", "iOS"]),
                                       b: (False, [])}, r
        jf = await cj.request("CMD_PRESENCE_REQ", pb.PresenceRequest(user_ids=[a]))
        print("json frame:", jf.json)
        assert jf.json["body"]["users"][0]["user_id"] == a, jf.json
        assert sorted(jf.json["body"]["users"][0]["platforms"]) == ["Web", "iOS"]
        await a2.close()

        async def only_web():
            r = await query(cp, [a])
            return as_map(r.users)[a] == (True, ["Web"])
        for _ in range(100):
            if await only_web():
                break
            await asyncio.sleep(0.05)
        assert await only_web()
        await close_all([a1, cp, cj])
    run(go())


def test_subscribe_push_lifecycle(mgw):
    print("check: W (pb) and W2 (json) subscribe to X; X logs in on Web, then "
          "iOS, Web closes, iOS closes: each watcher gets 4 pushes with the "
          "platforms after each change; a same-platform relogin pushes online "
          "(no offline); after unsubscribe nothing more; closing the watchers "
          "drops the subscriptions (imgw_presence_subscriptions back)")

    async def go():
        x, w = uid("px"), uid("pw")
        base = metrics(mgw.port).get("imgw_presence_subscriptions", 0)
        cw = await MClient.open(mgw, w)
        cw2 = await MClient.open(mgw, w, platform="iOS", codec="json")
        r = await subscribe(cw, [x])
        print("subscribe:", r)
        assert r.error_code == OK and r.subscribed == 1, r
        assert as_map(r.users) == {x: (False, [])}, r
        r2 = await subscribe(cw2, [x, x])
        assert r2.error_code == OK and r2.subscribed == 1, r2
        assert metrics(mgw.port).get("imgw_presence_subscriptions") == base + 2

        x1 = await MClient.open(mgw, x, platform="Web")
        for c in (cw, cw2):
            p = await next_push(c, x, 1)
            print(c.label, p)
            assert p.online and list(p.platforms) == ["Web"] and p.platform == "Web", p
            assert p.time > 0, p
        x2 = await MClient.open(mgw, x, platform="iOS")
        for c in (cw, cw2):
            p = await next_push(c, x, 2)
            assert p.online and sorted(p.platforms) == ["Web", "iOS"], p
            assert p.platform == "iOS", p
        await x1.close()
        for c in (cw, cw2):
            p = await next_push(c, x, 3)
            assert p.online and list(p.platforms) == ["iOS"] and p.platform == "Web", p
        await x2.close()
        for c in (cw, cw2):
            p = await next_push(c, x, 4)
            assert not p.online and list(p.platforms) == [] and p.platform == "iOS", p
        print("json push frame:", [f.json for f in cw2.pushes("CMD_PRESENCE_PUSH")][-1])

        # a relogin on the same platform kicks the old one: online, never offline
        x3 = await MClient.open(mgw, x, platform="Web")
        await next_push(cw, x, 5)
        x4 = await MClient.open(mgw, x, platform="Web")
        p = await next_push(cw, x, 6)
        assert p.online and list(p.platforms) == ["Web"], p
        await x3.wait_closed()
        await asyncio.sleep(0.3)
        got = presence_pushes(cw, x)
        assert len(got) == 6 and all(q.online for q in got[4:]), got

        r = await subscribe(cw, [], unsubscribe=True)
        assert r.error_code == OK and r.subscribed == 0, r
        n, m = len(presence_pushes(cw, x)), len(presence_pushes(cw2, x))
        await x4.close()
        p = await next_push(cw2, x, m + 1)
        assert not p.online, p
        await asyncio.sleep(0.3)
        assert len(presence_pushes(cw, x)) == n, presence_pushes(cw, x)[n:]

        await close_all([cw, cw2])
        wait_for(lambda: metrics(mgw.port).get("imgw_presence_subscriptions") == base,
                 10, what="subscriptions dropped at close")
    run(go())


def test_bounds_and_bad_input(mserver):
    print("check: empty list / bad id -> ERR_INVALID_PARAM; 101 ids -> undecodable "
          "(CMD_ERROR_RSP); subscriptions bounded by limits.presence_subscriptions "
          "(all or nothing); 0 turns them off (ERR_PERMISSION_DENIED)")
    s = mserver(threads=2, env={"limits.presence_subscriptions": 3})
    off = mserver(threads=1, env={"limits.presence_subscriptions": 0})

    async def go():
        c = await MClient.open(s, uid("pbq"))
        r = await query(c, [])
        print("empty:", r)
        assert r.error_code == INVALID and not r.users, r
        r = await query(c, ["bad id!"])
        print("bad id:", r)
        assert r.error_code == INVALID and "user id" in r.error_msg, r
        f = await c.request("CMD_PRESENCE_REQ",
                            pb.PresenceRequest(user_ids=["u%d" % i for i in range(101)]))
        print("101 ids:", f)
        assert H.cmd_name(f.command) == "CMD_ERROR_RSP" and f.body.error_code == INVALID, f
        r = await query(c, ["u%d" % i for i in range(100)])
        assert r.error_code == OK and len(r.users) == 100, r.error_code

        r = await subscribe(c, ["a1", "a2"])
        assert r.error_code == OK and r.subscribed == 2, r
        r = await subscribe(c, ["a2", "a3", "a4"])
        print("over the bound:", r)
        assert r.error_code == INVALID and r.subscribed == 2, r
        assert "presence_subscriptions" in r.error_msg, r
        r = await subscribe(c, ["a2", "a3"])
        assert r.error_code == OK and r.subscribed == 3, r
        r = await subscribe(c, ["a1"], unsubscribe=True)
        assert r.error_code == OK and r.subscribed == 2, r
        r = await subscribe(c, ["x y"])
        assert r.error_code == INVALID and r.subscribed == 2, r

        co = await MClient.open(off, uid("poff"))
        r = await subscribe(co, ["a1"])
        print("off:", r)
        assert r.error_code == DENIED, r
        r = await query(co, ["a1"])
        assert r.error_code == OK, r
        await close_all([c, co])
    run(go())


def test_admin_users_api(mgw):
    print("check: GET /api/users/U: online, platforms with node, this node's "
          "connection count; offline user; 401 without token; 400 bad id; 405 PUT")

    async def go():
        u = uid("pad")
        c1 = await MClient.open(mgw, u, platform="Web")
        c2 = await MClient.open(mgw, u, platform="Android")
        r = http_json(mgw.port, "GET", "/api/users/%s" % u)
        print(r)
        assert r.status == 200, r
        j = r.json
        assert j["user_id"] == u and j["online"] is True and j["connections"] == 2, j
        assert sorted(p["platform"] for p in j["platforms"]) == ["Android", "Web"], j
        assert all(p["node"] == j["node"] for p in j["platforms"]), j
        r = http_json(mgw.port, "GET", "/api/users/%s" % uid("nobody"))
        assert r.status == 200 and r.json["online"] is False, r
        assert r.json["platforms"] == [] and r.json["connections"] == 0, r
        assert http_json(mgw.port, "GET", "/api/users/%s" % u, token=None).status == 401
        assert http_json(mgw.port, "GET", "/api/users/a%20b").status == 400
        assert http_json(mgw.port, "PUT", "/api/users/%s" % u, {}).status == 405
        await close_all([c1, c2])
    run(go())


def test_cluster_presence(server, redis_server, rabbitmq_server):
    print("check: node1 + node2 on one Redis and RabbitMQ; W@node1 subscribes to "
          "X; X logs in on node2 (Web, then iOS) and out: W gets the pushes "
          "through the broker; a query on node1 shows X's platforms; "
          "/api/users on node1 names node2 and 0 local connections")
    tag = short_id("pc")
    n1 = start_node(server, redis_server.url, rabbitmq_server.url,
                    broker_id=tag + "-n1", node_id=201)
    n2 = start_node(server, redis_server.url, rabbitmq_server.url,
                    broker_id=tag + "-n2", node_id=202)
    for s in (n1, n2):
        wait_for(lambda: metrics(s.port).get("imgw_mq_up") == 1, 20, what="mq up")

    async def go():
        x, w = uid("cx"), uid("cw")
        cw = await MClient.open(n1, w, codec="json")
        r = await subscribe(cw, [x])
        assert r.error_code == OK and as_map(r.users) == {x: (False, [])}, r
        x1 = await MClient.open(n2, x, platform="Web")
        p = await next_push(cw, x, 1)
        print("push 1:", p)
        assert p.online and list(p.platforms) == ["Web"], p
        x2 = await MClient.open(n2, x, platform="iOS")
        p = await next_push(cw, x, 2)
        assert sorted(p.platforms) == ["Web", "iOS"], p
        r = await query(cw, [x])
        assert as_map(r.users) == {x: (True, ["Web", "iOS"])}, r
        a = http_json(n1.port, "GET", "/api/users/%s" % x)
        print("admin on node1:", a)
        assert a.status == 200 and a.json["online"] and a.json["connections"] == 0, a
        assert {p["node"] for p in a.json["platforms"]} == {n2.broker_id}, a
        assert a.json["node"] == n1.broker_id, a
        # One logout at a time: two at once may be read back from the store
        # in either order (docs/protocol.md "Presence": snapshots).
        await x1.close()
        p = await next_push(cw, x, 3)
        print("push 3:", p)
        assert p.online and list(p.platforms) == ["iOS"], p
        await x2.close()
        p = await next_push(cw, x, 4)
        print("push 4:", p)
        assert not p.online and list(p.platforms) == [], p
        # a watcher on the user's own node gets it too (no broker hop)
        cw2 = await MClient.open(n2, uid("cw2"))
        await subscribe(cw2, [x])
        x3 = await MClient.open(n2, x, platform="Web")
        p = await next_push(cw2, x, 1)
        assert p.online, p
        p = await next_push(cw, x, 5)
        assert p.online, p
        await close_all([cw, cw2, x3])
    run(go())
