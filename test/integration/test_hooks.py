"""Business hooks (issue 12, docs/hooks.md) against a real HTTP server.

HookServer is a ThreadingHTTPServer (HTTP/1.1, keep-alive) on a free
loopback port. It checks every request's X-Imgw-Timestamp and
X-Imgw-Signature (hex HMAC-SHA256 of timestamp "." body with the secret)
and counts the ones that do not verify. /before answers the before-send
hook through a `decide(body)` function the test sets (status, payload,
delay); /events records event batches and answers `events_status`.
No imgw internals are mocked: the hook is a real server, imgw a real
process, the stores real (memory and Redis, via msg_helpers).
"""

import asyncio
import hashlib
import hmac
import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import imgw_harness as H
from msg_helpers import (DENIED, OK, MClient, close_all, mserver,  # noqa: F401
                         single_conv, store_backend, uid)
from services import rabbitmq_server, redis_server  # noqa: F401

SECRET = "hook-secret-for-tests-0123456789"
BUSY = H.ERR.Value("ERR_SERVER_BUSY")


class HookServer:
    def __init__(self, secret=SECRET):
        self.secret = secret.encode()
        self.lock = threading.Lock()
        self.calls = []          # before-send bodies, in arrival order
        self.events = []         # every event received (duplicates too)
        self.posts = []          # event POST sizes
        self.events_status = 200
        self.bad_sigs = 0
        self.active = 0
        self.max_active = 0
        self.decide = lambda body: (200, {"allow": True}, 0)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # head and body are two writes

            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n)
                ts = self.headers.get("X-Imgw-Timestamp", "")
                sig = self.headers.get("X-Imgw-Signature", "")
                want = hmac.new(fake.secret, ts.encode() + b"." + raw,
                                hashlib.sha256).hexdigest()
                if not ts or not hmac.compare_digest(sig, want) or \
                        abs(time.time() - int(ts)) > 300:
                    with fake.lock:
                        fake.bad_sigs += 1
                    return self._send(401, b"bad signature")
                body = json.loads(raw)
                if self.path == "/events":
                    with fake.lock:
                        fake.posts.append(len(body["events"]))
                        st = fake.events_status
                        if st == 200:
                            fake.events.extend(body["events"])
                    return self._send(st, b"{}")
                with fake.lock:
                    fake.calls.append(body)
                    fake.active += 1
                    fake.max_active = max(fake.max_active, fake.active)
                try:
                    status, payload, delay = fake.decide(body)
                    if delay:
                        time.sleep(delay)
                    if isinstance(payload, (dict, list)):
                        payload = json.dumps(payload).encode()
                    self._send(status, payload)
                finally:
                    with fake.lock:
                        fake.active -= 1

            def _send(self, code, payload):
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # many senders connect at once

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def events_of(self, typ, **match):
        with self.lock:
            return [e for e in self.events if e["type"] == typ and
                    all(e.get(k) == v for k, v in match.items())]


@pytest.fixture
def hook():
    h = HookServer()
    yield h
    print("hook: %d before-send calls, %d events, %d bad signatures"
          % (len(h.calls), len(h.events), h.bad_sigs))
    assert h.bad_sigs == 0, "imgw sent a request whose signature does not verify"
    h.close()


def hook_env(h, before=True, events=False, **extra):
    e = {"hooks.secret": SECRET}
    if before:
        e["hooks.before_send_url"] = h.url + "/before"
    if isinstance(events, str):
        e["hooks.events"] = events
    if events:
        e["hooks.events_url"] = h.url + "/events"
        e["hooks.flush_ms"] = 50
    e.update({"hooks." + k: v for k, v in extra.items()})
    return e


def labelled(port, name):
    r = H.http_get(port, "/metrics")
    return {tuple(sorted(lb.items())): v
            for n, lb, v in H.parse_metrics(r.body.decode()) if n == name}


def metric(port, name, **labels):
    return labelled(port, name).get(tuple(sorted(labels.items())), 0)


def run(coro):
    return asyncio.run(coro)


async def await_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out waiting for " + what
        await asyncio.sleep(0.05)


# ---- before-send ---------------------------------------------------------


@pytest.mark.parametrize("codec", ["pb", "json"])
def test_allow_deny_rewrite(mserver, hook, codec):
    def decide(b):
        c = b.get("content", "")
        if c == "deny-default":
            return 200, {"allow": False}, 0
        if c.startswith("deny"):
            return 200, {"allow": False, "error_code": 103,
                         "error_msg": "blocked by b\u00e9"}, 0
        if "darn" in c:
            return 200, {"allow": True, "content": c.replace("darn", "****"),
                         "extra": {"moderated": "1"}}, 0
        return 200, {"allow": True}, 0
    hook.decide = decide
    s = mserver(threads=2, env=hook_env(hook))
    print("check (%s, %s): allow stores and pushes as sent; deny answers the "
          "hook's code and stores/pushes nothing; a rewrite replaces content "
          "and extra in the stored and pushed message" % (codec, s.backend.name))

    async def go():
        a, b = uid("a"), uid("b")
        ca = await MClient.open(s, a, codec=codec)
        cb = await MClient.open(s, b, codec=codec)
        r1 = await ca.send_msg(to=b, content="hello", extra={"k": "v"})
        assert r1.error_code == OK, r1
        p1 = await cb.wait_push("CMD_PUSH_MSG", lambda f: f.body.message_id == r1.message_id)
        assert p1.body.content == b"hello" and dict(p1.body.extra) == {"k": "v"}
        r2 = await ca.send_msg(to=b, content="deny this")
        print("deny ->", r2.error_code, r2.error_msg)
        assert r2.error_code == 103 and r2.error_msg == "blocked by b\u00e9", r2
        assert not r2.message_id
        r3 = await ca.send_msg(to=b, content="deny-default")
        print("deny without a code ->", r3.error_code)
        assert r3.error_code == DENIED, r3
        r4 = await ca.send_msg(to=b, content="oh darn it")
        assert r4.error_code == OK, r4
        p4 = await cb.wait_push("CMD_PUSH_MSG", lambda f: f.body.message_id == r4.message_id)
        print("rewritten push:", p4.body.content, dict(p4.body.extra))
        assert p4.body.content == b"oh **** it"
        assert dict(p4.body.extra) == {"moderated": "1"}
        await cb.expect_no_push("CMD_PUSH_MSG", lambda f: f.body.content.startswith(b"deny"))
        msgs, _ = await cb.sync_all()
        got = [m.content for m in msgs]
        print("receiver timeline:", got)
        assert got == [b"hello", b"oh **** it"]
        call = hook.calls[0]
        print("hook body:", call)
        assert call["sender_id"] == a and call["receiver_id"] == b
        assert call["conversation_id"] == single_conv(a, b)
        assert call["content"] == "hello" and call["extra"] == {"k": "v"}
        assert call["platform"] == "Web" and call["message_type"] == 1
        assert call["client_msg_id"] == r1.req.client_msg_id
        await close_all([ca, cb])
    run(go())
    assert metric(s.port, "imgw_hook_decisions_total", decision="deny") == 2
    assert metric(s.port, "imgw_hook_decisions_total", decision="rewrite") == 1


def test_resend_answered_from_store(mserver, hook):
    s = mserver(threads=1, env=hook_env(hook))
    print("check: a resend of a stored client_msg_id is answered from the "
          "store (same message_id and seq) without calling the hook again")

    async def go():
        a, b = uid("a"), uid("b")
        ca = await MClient.open(s, a)
        r1 = await ca.send_msg(to=b, client_msg_id="cm-1")
        r2 = await ca.send_msg(to=b, client_msg_id="cm-1")
        print("first", r1.message_id, r1.seq, "resend", r2.message_id, r2.seq)
        assert r1.error_code == OK and r2.error_code == OK
        assert (r2.message_id, r2.seq) == (r1.message_id, r1.seq)
        assert len(hook.calls) == 1, hook.calls
        await ca.close()
    run(go())
    assert metric(s.port, "imgw_hook_decisions_total", decision="dup") == 1


@pytest.mark.parametrize("mode", ["slow", "down", "garbage", "huge", "status500"])
@pytest.mark.parametrize("failure", ["closed", "open"])
def test_failure_modes(mserver, hook, mode, failure):
    # Only "slow" relies on the timeout; the others get a generous one so
    # that a loaded machine cannot turn their failure into a timeout.
    extra = {"failure": failure, "timeout_ms": 300 if mode == "slow" else 10000}
    env = hook_env(hook, **extra)
    if mode == "down":
        env["hooks.before_send_url"] = "http://127.0.0.1:%d/before" % H.free_port()
    elif mode == "slow":
        hook.decide = lambda b: (200, {"allow": True}, 1.0)
    elif mode == "garbage":
        hook.decide = lambda b: (200, b"<html>not json", 0)
    elif mode == "huge":
        huge = b'{"allow":true,"pad":"' + b"x" * (10 << 20) + b'"}'
        hook.decide = lambda b: (200, huge, 0)
    else:
        hook.decide = lambda b: (500, {"allow": True}, 0)
    s = mserver(threads=1, env=env)
    print("check: hook %s with failure = %s -> %s" % (
        mode, failure, "ERR_SERVER_BUSY, nothing stored" if failure == "closed"
        else "the message is stored and pushed"))

    async def go():
        a, b = uid("a"), uid("b")
        ca = await MClient.open(s, a)
        cb = await MClient.open(s, b)
        r = await ca.send_msg(to=b, content="x")
        print("answer:", r.error_code, r.error_msg)
        msgs, _ = await cb.sync_all()
        if failure == "closed":
            assert r.error_code == BUSY, r
            assert msgs == []
        else:
            assert r.error_code == OK, r
            assert [m.message_id for m in msgs] == [r.message_id]
        await close_all([ca, cb])
    run(go())
    reason = {"slow": "timeout", "down": "connect", "garbage": "bad_answer",
              "huge": "too_big", "status500": "status"}[mode]
    n = metric(s.port, "imgw_hook_failures_total", hook="before_send", reason=reason)
    print("failures{reason=%s} = %s" % (reason, n))
    assert n == 1
    if failure == "open":
        assert metric(s.port, "imgw_hook_decisions_total", decision="fail_open") == 1


def test_inflight_bound_and_order(mserver, hook):
    # Answers come back in a random order (random delays, a threaded
    # server), so order can only hold if imgw restores it.
    hook.decide = lambda b: (200, {"allow": True}, random.uniform(0, 0.05))
    s = mserver(threads=1, env=hook_env(hook, max_inflight=8))
    n_senders, per = 12, 15
    print("check: %d senders x %d pipelined sends, max_inflight = 8 on one "
          "loop: at most 8 calls at once, the rest ERR_SERVER_BUSY; every "
          "sender's stored messages are in the order it sent them" % (n_senders, per))

    async def go():
        recv = uid("r")
        cr = await MClient.open(s, recv)
        senders = [await MClient.open(s, uid("s")) for _ in range(n_senders)]

        async def burst(c):
            reqs = [c.msg_req(to=recv, content="%s:%d" % (c.user, i)) for i in range(per)]
            futs = [asyncio.ensure_future(c.request("CMD_SEND_MSG_REQ", q,
                                                    expect="CMD_SEND_MSG_RSP", timeout=30))
                    for q in reqs]
            return [(q.content, f.body) for q, f in zip(reqs, await asyncio.gather(*futs))]
        results = await asyncio.gather(*(burst(c) for c in senders))
        codes = [r.error_code for res in results for _, r in res]
        print("answers: %d ok, %d busy" % (codes.count(OK), codes.count(BUSY)))
        assert set(codes) <= {OK, BUSY}
        assert codes.count(BUSY) > 0, "the bound never applied"
        msgs, _ = await cr.sync_all()
        by_sender = {}
        for m in msgs:
            by_sender.setdefault(m.sender_id, []).append(int(m.content.split(b":")[1]))
        for c, res in zip(senders, results):
            ok = [int(q.split(b":")[1]) for q, r in res if r.error_code == OK]
            assert by_sender.get(c.user, []) == ok, (c.user, by_sender.get(c.user), ok)
        await close_all(senders + [cr])
    run(go())
    print("most calls at once:", hook.max_active)
    assert hook.max_active <= 8
    assert metric(s.port, "imgw_hook_decisions_total", decision="busy") > 0


# ---- events --------------------------------------------------------------


def test_offline_and_presence_events(mserver, hook):
    s = mserver(threads=2, env=hook_env(hook, before=False, events=True,
                                        batch=3, preview_bytes=5))
    print("check: message.offline for an offline receiver only (preview cut "
          "to 5 bytes on a UTF-8 boundary), user.online / user.offline for "
          "a user's first / last connection, batches of at most 3")

    async def go():
        a, on, off = uid("a"), uid("on"), uid("off")
        ca = await MClient.open(s, a, platform="Web")
        ca2 = await MClient.open(s, a, platform="iOS")
        con = await MClient.open(s, on)
        sent = []
        for i in range(4):
            sent.append(await ca.send_ok(to=off, content="h\u00e9llo %d" % i))
        await ca.send_ok(to=on, content="to the online one")
        await await_for(lambda: len(hook.events_of("message.offline")) >= 4, 10,
                        "4 message.offline events")
        await ca.close()
        await asyncio.sleep(0.3)
        assert not hook.events_of("user.offline", user_id=a), \
            "user.offline while another connection of the user is open"
        await ca2.close()
        await con.close()
        return a, on, off, sent
    a, on, off, sent = run(go())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (not hook.events_of("user.offline", user_id=a)
                                           or not hook.events_of("user.offline", user_id=on)):
        time.sleep(0.05)
    offl = hook.events_of("message.offline")
    print("offline events:", offl)
    assert {e["user_id"] for e in offl} == {off}
    assert sorted(e["message_id"] for e in offl) == sorted(r.message_id for r in sent)
    e0 = offl[0]
    assert e0["sender_id"] == a and e0["conversation_id"] == single_conv(a, off)
    assert e0["preview"] == "h\u00e9ll", e0   # 5 bytes: h, e-acute (2), l, l
    ids = [e["id"] for e in hook.events]
    assert len(set(ids)) == len(ids), "event ids repeat"
    onl = hook.events_of("user.online", user_id=a)
    offu = hook.events_of("user.offline", user_id=a)
    print("presence of a:", onl, offu)
    assert len(onl) == 1 and len(offu) == 1, "one per first/last connection"
    assert hook.events_of("user.online", user_id=on) and hook.events_of("user.offline", user_id=on)
    assert max(hook.posts) <= 3, hook.posts


def test_events_retry_then_overflow(mserver, hook):
    hook.events_status = 503
    s = mserver(threads=1, env=hook_env(hook, before=False, events="message.offline",
                                        queue_max=10, retry_max_ms=200))
    print("check: events survive a hook answering 503 and arrive once it "
          "recovers (at-least-once); beyond queue_max they are dropped and "
          "counted, and sends never wait")

    async def go():
        a = uid("a")
        ca = await MClient.open(s, a)
        first = [await ca.send_ok(to=uid("off"), content="m%d" % i) for i in range(6)]
        # Wait for a failed post rather than sleeping a fixed time: on a
        # loaded machine the first retry can come late.
        await await_for(lambda: metric(s.port, "imgw_hook_failures_total",
                                       hook="events", reason="post") >= 1,
                        10, "a failed events post")
        with hook.lock:
            hook.events_status = 200
        await asyncio.sleep(0)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(hook.events_of("message.offline")) < 6:
            await asyncio.sleep(0.05)
        got = {e["message_id"] for e in hook.events_of("message.offline")}
        assert got == {r.message_id for r in first}, got
        with hook.lock:
            hook.events_status = 503
        for i in range(25):
            await ca.send_ok(to=uid("off"), content="o%d" % i)
        await ca.close()
    run(go())
    # A batch may be in flight (neither queued nor dropped) when the sends
    # end; it returns to the queue or is dropped once its post fails.
    deadline = time.monotonic() + 10
    while True:
        dropped = metric(s.port, "imgw_hook_events_dropped_total")
        queued = metric(s.port, "imgw_hook_events_queued")
        if dropped + queued == 25 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    print("dropped %s, queued %s" % (dropped, queued))
    assert queued <= 10 and dropped >= 15 and dropped + queued == 25


# ---- config and downlink -------------------------------------------------


@pytest.mark.parametrize("key,value,env", [
    ("hooks.before_send_url", "ftp://x/y", {"hooks.secret": SECRET}),
    ("hooks.events_url", "http:///nohost", {"hooks.secret": SECRET}),
    ("hooks.secret", "short", {"hooks.before_send_url": "http://127.0.0.1:1/"}),
    ("hooks.events", "message.offline,user.gone", {}),
])
def test_bad_hook_config_exit_2(imgw_bin, tmp_path, key, value, env):
    import subprocess
    print("check: %s=%r -> exit 2 naming the key" % (key, value))
    ini = tmp_path / "h.ini"
    ini.write_text("[server]\nports = %d\nbind = 127.0.0.1\n[auth]\njwt_secret = %s\n"
                   % (H.free_port(), H.DEFAULT_SECRET))
    e = {"IMGW__" + k.replace(".", "__").upper(): v for k, v in env.items()}
    e["IMGW__" + key.replace(".", "__").upper()] = value
    r = subprocess.run([imgw_bin, "-c", str(ini)], env=H.clean_env(e),
                       capture_output=True, text=True, timeout=10)
    print("exit", r.returncode, r.stderr.strip()[-200:])
    assert r.returncode == 2 and key in r.stderr


def test_non_utf8_downlink_refused(mserver):
    s = mserver(threads=1)
    print("check: POST /api/push whose data.content is not UTF-8 -> 400, "
          "nothing delivered (issue 12 item 5)")
    u = uid("u")
    from msg_helpers import http_json
    raw = ('{"code":202,"ids":["%s"],"data":{"message_id":"1","content":"a' % u).encode() \
        + b"\xff" + b'"}}'
    r = http_json(s.port, "POST", "/api/push", raw_body=raw)
    print("status", r.status, getattr(r, "json", None) or getattr(r, "text", ""))
    assert r.status == 400
    ok = http_json(s.port, "POST", "/api/push", raw_body=raw.replace(b"\xff", b"\xc3\xa9"))
    assert ok.status == 200, ok


# ---- cluster (Redis + RabbitMQ) ------------------------------------------


def test_offline_events_two_nodes(server, hook, redis_server, rabbitmq_server):
    from cluster_helpers import metrics, short_id, start_node, wait_for
    tag = short_id("hk")
    env = hook_env(hook, before=True, events="message.offline")
    nodes = [start_node(server, redis_server.url, rabbitmq_server.url,
                        broker_id="%s-node%d" % (tag, i), node_id=170 + i,
                        extra=env) for i in (1, 2)]
    for s in nodes:
        wait_for(lambda: metrics(s.port).get("imgw_mq_up") == 1, 20, what="imgw_mq_up")
    n1, n2 = nodes
    print("check: sender on node1, receiver online on node2 -> pushed there, no "
          "message.offline (the route in Redis decides); an offline receiver "
          "gets exactly one event; both nodes ask the before-send hook")

    async def go():
        a, on, off = uid("a"), uid("on"), uid("off")
        ca = await MClient.open(n1, a)
        con = await MClient.open(n2, on, codec="json")
        r_on = await ca.send_ok(to=on, content="online")
        await con.wait_push("CMD_PUSH_MSG", lambda f: f.body.message_id == r_on.message_id,
                            timeout=10)
        r_off = await ca.send_ok(to=off, content="offline")
        cb = await MClient.open(n2, a)
        r_2 = await cb.send_ok(to=off, content="from node2")
        await await_for(lambda: len(hook.events_of("message.offline")) >= 2, 10,
                        "2 offline events")
        await asyncio.sleep(0.5)
        await close_all([ca, con, cb])
        return on, off, r_on, r_off, r_2
    on, off, r_on, r_off, r_2 = run(go())
    offl = hook.events_of("message.offline")
    print("offline events:", [(e["user_id"], e["message_id"], e["node"]) for e in offl])
    assert not hook.events_of("message.offline", user_id=on)
    assert sorted(e["message_id"] for e in offl) == sorted([r_off.message_id, r_2.message_id])
    assert {e["node"] for e in offl} == {n1.broker_id, n2.broker_id}
    assert {c["node"] for c in hook.calls} == {n1.broker_id, n2.broker_id}


def test_non_utf8_broker_downlink_refused(server, redis_server, rabbitmq_server):
    from cluster_helpers import ametrics, apublish, metrics, short_id, start_node, wait_for
    n1 = start_node(server, redis_server.url, rabbitmq_server.url,
                    broker_id="%s-node1" % short_id("u8"), node_id=181)
    wait_for(lambda: metrics(n1.port).get("imgw_mq_up") == 1, 20, what="imgw_mq_up")
    print("check: a broker downlink whose data.content is not UTF-8 is rejected "
          "(imgw_mq_rejected_total +1) and delivered to nobody; a valid one after "
          "it arrives")

    async def go():
        u = uid("u")
        c = await MClient.open(n1, u, codec="json")
        before = (await ametrics(n1.port)).get("imgw_mq_rejected_total", 0)
        bad = ('{"code":202,"ids":["%s"],"data":{"message_id":"b1","content":"a' % u
               ).encode() + b"\xff\xfe" + b'"}}'
        await apublish(rabbitmq_server, n1.broker_id, bad)
        good = {"code": 202, "ids": [u], "data": {"message_id": "g1", "content": "ok"}}
        await apublish(rabbitmq_server, n1.broker_id, good)
        await c.wait_push("CMD_PUSH_MSG", lambda f: f.body.message_id == "g1", timeout=10)
        after = (await ametrics(n1.port)).get("imgw_mq_rejected_total", 0)
        got = [f.body.message_id for f in c.pushes("CMD_PUSH_MSG")]
        print("rejected %d -> %d, pushes %r" % (before, after, got))
        assert after - before == 1 and got == ["g1"]
        await c.close()
    run(go())
