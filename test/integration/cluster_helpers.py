"""Helpers for the Redis-backend and cluster integration tests
(test_redis_node.py, test_cluster.py).

  node_env()        IMGW__* overrides for one node (redis store, broker, ids)
  start_node()      start one imgw through the `server` fixture factory
  kill9()           SIGKILL a node and tell the fixture not to expect exit 0
  metrics()         /metrics as {name: value} (unlabelled samples)
  status()          HTTP status of GET path (None when nothing answers)
  wait_for()        poll a predicate (sync)
  await_for()       poll a predicate (async)
  publish()         pika publish to imgw.direct (a fresh connection each time)
  Recorder          a sender loop: sends 1:1 / group messages with distinct
                    client_msg_ids and records every response
  timeline()        sync_all -> [(seq, message_id)]
"""

import asyncio
import json
import time
import uuid

import imgw_harness as H
from msg_helpers import ADMIN_TOKEN, OK, MClient, SendResult

BUSY = H.ERR.Value("ERR_SERVER_BUSY")
EXCHANGE = "imgw.direct"


def short_id(prefix):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:8])


def node_env(redis_url, mq_url=None, broker_id=None, node_id=None, extra=None):
    e = {"store.backend": "redis", "store.redis_url": redis_url}
    if mq_url:
        e["mq.url"] = mq_url
    if broker_id is not None:
        e["server.broker_id"] = broker_id
    if node_id is not None:
        e["server.node_id"] = node_id
    e.update(extra or {})
    return e


def start_node(server, redis_url, mq_url=None, broker_id=None, node_id=None,
               threads=2, extra=None, **overrides):
    """Start an imgw node via the conftest `server` factory (admin token and a
    high send rate by default). Returns the ServerProc with .broker_id set."""
    ov = {"admin_token": ADMIN_TOKEN, "send_rate": 100000}
    ov.update(overrides)
    s = server(threads=threads,
               env=node_env(redis_url, mq_url, broker_id, node_id, extra), **ov)
    s.broker_id = broker_id
    print("[cluster] node %s broker_id=%s node_id=%s port %d" % (
        s.name, broker_id, node_id, s.port))
    wait_ready(s)
    return s


def wait_ready(s, timeout=20.0, streak=6):
    """/healthz answers 200 as soon as imgw listens; the loops' Redis (and
    broker) links come up asynchronously. Wait until /readyz answers 200
    `streak` times in a row (each request lands on some loop)."""
    deadline = time.monotonic() + timeout
    ok = 0
    last = None
    while ok < streak:
        last = status(s.port, "/readyz")
        ok = ok + 1 if last == 200 else 0
        if time.monotonic() > deadline:
            raise AssertionError("%s: /readyz not steadily 200 within %.0fs (last %s)"
                                 % (s.name, timeout, last))
        time.sleep(0.02 if last == 200 else 0.1)


def kill9(s):
    """kill -9 a node; the fixture's teardown then skips the exit-0 check."""
    s.proc.kill()
    s.exit_code = s.proc.wait()
    s.stopped = True
    print("[cluster] %s (broker_id %s) killed with SIGKILL, exit %s"
          % (s.name, getattr(s, "broker_id", None), s.exit_code))
    return s.exit_code


def metrics(port, timeout=5.0):
    r = H.http_get(port, "/metrics", timeout=timeout)
    assert r.status == 200, "/metrics: %r" % r
    out = {}
    for name, labels, v in H.parse_metrics(r.body.decode("utf-8", "replace")):
        if not labels:
            out[name] = v
    return out


def status(port, path, timeout=3.0):
    try:
        return H.http_get(port, path, timeout=timeout).status
    except OSError:
        return None


def wait_for(pred, timeout, interval=0.1, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = pred()
        except Exception as e:  # keep polling
            last = e
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() > deadline:
            raise AssertionError("%s not reached within %.0fs (last: %r)"
                                 % (what, timeout, last))
        time.sleep(interval)


async def await_for(pred, timeout, interval=0.1, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = pred()
        except Exception as e:
            last = e
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() > deadline:
            raise AssertionError("%s not reached within %.0fs (last: %r)"
                                 % (what, timeout, last))
        await asyncio.sleep(interval)


async def astatus(port, path):
    return await asyncio.get_event_loop().run_in_executor(None, status, port, path)


async def ametrics(port):
    return await asyncio.get_event_loop().run_in_executor(None, metrics, port)


def publish(mq, routing_key, body, exchange=EXCHANGE, content_type="application/json"):
    """Publish one message with pika (new connection, publisher confirms)."""
    import pika
    if not isinstance(body, (bytes, bytearray)):
        body = json.dumps(body).encode("utf-8")
    conn = mq.connection()
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish(exchange, routing_key, bytes(body),
                         pika.BasicProperties(content_type=content_type),
                         mandatory=True)
    finally:
        conn.close()


async def apublish(mq, routing_key, body, **kw):
    loop = asyncio.get_event_loop()
    return await loop.run_in_executor(None, lambda: publish(mq, routing_key, body, **kw))


async def open_retry(server, user, timeout=20.0, **kw):
    """MClient.open, retried while the login answers ERR_SERVER_BUSY (a loop
    whose store connection is still reconnecting after an outage)."""
    deadline = time.monotonic() + timeout
    while True:
        c = await MClient.open(server, user, expect_ok=False, **kw)
        if c.auth_rsp.error_code == OK:
            return c
        await c.close()
        assert c.auth_rsp.error_code == BUSY and time.monotonic() < deadline, (
            "login of %s failed: %r" % (user, c.auth_rsp))
        await asyncio.sleep(0.2)


async def timeline(c):
    """The whole timeline of c's user: [(seq, message_id, PushMessage)]."""
    msgs, _ = await c.sync_all(limit=500)
    return [(m.seq, m.message_id, m) for m in msgs]


def check_contiguous(tl, who):
    seqs = [s for s, _, _ in tl]
    if seqs:
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), (
            "%s: timeline seqs have holes or disorder: %r" % (who, seqs[:50]))


class Rec:
    """One recorded send."""

    def __init__(self, req, t_sent):
        self.req = req
        self.t_sent = t_sent
        self.t_rsp = None
        self.code = None
        self.message_id = None
        self.seq = None
        self.error = None

    def __repr__(self):
        return "<Rec cmid=%s code=%s mid=%s seq=%s sent=%.2f rsp=%s err=%s>" % (
            self.req.client_msg_id, H.err_name(self.code) if self.code is not None
            else None, self.message_id, self.seq, self.t_sent,
            "%.2f" % self.t_rsp if self.t_rsp else None, self.error)


class Recorder:
    """Sends messages from one MClient in a loop (at most `window` in flight),
    each with a distinct client_msg_id, recording every response.

    targets: list of dicts for msg_req (e.g. {"to": "b"} or {"group": "g"}),
    used round robin. Run with start(); stop() ends the loop and waits for the
    outstanding responses."""

    def __init__(self, client, targets, window=1, pause=0.0, prefix="r",
                 rsp_timeout=15.0, busy_pause=0.02):
        self.c = client
        self.targets = targets
        self.window = window
        self.pause = pause
        self.prefix = prefix
        self.rsp_timeout = rsp_timeout
        self.busy_pause = busy_pause  # back off a little after a failed send
        self._last_failed = False
        self.recs = []
        self._stop = False
        self._task = None
        self._pending = set()
        self.t0 = time.monotonic()

    def start(self):
        self._task = asyncio.ensure_future(self._run())
        return self

    async def _one(self, rec, fut):
        try:
            f = await asyncio.wait_for(fut, self.rsp_timeout)
            rec.code = f.body.error_code
            rec.message_id = f.body.message_id
            rec.seq = f.body.seq
            self._last_failed = rec.code != OK
        except Exception as e:  # timeout or closed
            rec.error = repr(e)
            self._last_failed = True
        rec.t_rsp = time.monotonic()

    async def _run(self):
        sem = asyncio.Semaphore(self.window)
        i = 0
        while not self._stop:
            await sem.acquire()
            if self._stop:
                sem.release()
                break
            tgt = self.targets[i % len(self.targets)]
            req = self.c.msg_req(content="%s %d" % (self.prefix, i),
                                 client_msg_id="%s-%d-%s" % (self.prefix, i,
                                                             uuid.uuid4().hex[:6]),
                                 **tgt)
            i += 1
            rec = Rec(req, time.monotonic())
            self.recs.append(rec)
            try:
                _, fut = await self.c.send_nowait("CMD_SEND_MSG_REQ", req)
            except Exception as e:
                rec.error = repr(e)
                rec.t_rsp = time.monotonic()
                sem.release()
                break
            t = asyncio.ensure_future(self._one(rec, fut))
            self._pending.add(t)
            t.add_done_callback(lambda t: (self._pending.discard(t), sem.release()))
            if self._last_failed and self.busy_pause:
                await asyncio.sleep(self.busy_pause)
            elif self.pause:
                await asyncio.sleep(self.pause)
            else:
                await asyncio.sleep(0)

    async def stop(self):
        self._stop = True
        if self._task is not None:
            await asyncio.wait_for(self._task, 30)
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=self.rsp_timeout + 5)

    def acked(self):
        return [r for r in self.recs if r.code == OK]

    def summary(self):
        by = {}
        for r in self.recs:
            k = H.err_name(r.code) if r.code is not None else ("no response: %s" % r.error)
            by[k] = by.get(k, 0) + 1
        return by


__all__ = ["ADMIN_TOKEN", "OK", "BUSY", "MClient", "SendResult", "node_env",
           "start_node", "kill9", "open_retry", "metrics", "status", "wait_for", "await_for",
           "astatus", "ametrics", "publish", "apublish", "timeline",
           "check_contiguous", "Recorder", "Rec", "short_id", "EXCHANGE"]
