"""Helpers and fixtures for the imgw messaging tests (protocol.md 3, 5, 10).

Import the fixtures into a test module:

    from msg_helpers import store_backend, mgw, mserver  # noqa: F401

Store backends
  Every messaging test runs once per entry of BACKENDS (fixture
  `store_backend`, module scope, parametrized). Adding the Redis backend is
  the one-line change BACKENDS = ["memory", "redis"]: for "redis" the
  fixture starts a real redis-server (services.RedisServer) and returns the
  IMGW__STORE__* environment that points imgw at it.
  IMGW_TEST_BACKENDS=memory,redis (environment) overrides the list.

Servers
  mgw       module scope: one imgw (-t 4, admin token, high send rate) on
            the module's backend; tests use unique user ids (uid()).
  mserver   function scope factory: mserver(threads=4, **overrides) -> a
            started ServerProc with the backend env merged in (for tests
            that need special limits: revoke_window, send_rate, ...).

Client
  MClient   asyncio WebSocket client with a background reader: responses
            are matched to requests by `sequence`, everything else (pushes,
            kick, unmatched errors) is collected per command and can be
            awaited with wait_push()/expect_no_push().
"""

import asyncio
import json
import os
import time
import uuid

import pytest
import websockets

import imgw_harness as H
from imgw_harness import CMD, ERR, make_token, pb

# --------------------------------------------------------------------------
# backends

BACKENDS = ["memory", "redis"]
if os.environ.get("IMGW_TEST_BACKENDS"):
    BACKENDS = [b.strip() for b in os.environ["IMGW_TEST_BACKENDS"].split(",")
                if b.strip()]

ADMIN_TOKEN = "imgw-test-admin-token-0123456789"


class Backend:
    def __init__(self, name, env, service=None):
        self.name = name
        self.env = env          # {IMGW__STORE__...: value}
        self.service = service  # services.RedisServer for "redis"

    def __repr__(self):
        return "<Backend %s %r>" % (self.name, self.env)


def start_backend(name):
    if name == "memory":
        return Backend("memory", {"IMGW__STORE__BACKEND": "memory"})
    if name == "redis":
        import services
        r = services.RedisServer().start()
        return Backend("redis", {"IMGW__STORE__BACKEND": "redis",
                                 "IMGW__STORE__REDIS_URL": r.url}, r)
    raise ValueError("unknown store backend %r" % name)


def stop_backend(b):
    if b.service is not None:
        b.service.cleanup()


@pytest.fixture(scope="module", params=BACKENDS)
def store_backend(request):
    b = start_backend(request.param)
    print("[msg] store backend %s" % b.name)
    try:
        yield b
    finally:
        stop_backend(b)


def _stop_servers(started):
    problems = []
    for s in started:
        if s.proc is None or s.stopped:
            continue
        code, killed = s.stop(timeout=10.0)
        print("[msg] %s (port %s) exit code %s%s" % (
            s.name, s.port, code, " (SIGKILLed)" if killed else ""))
        if killed:
            problems.append("%s did not exit within 10s of SIGTERM" % s.name)
        elif code != 0:
            problems.append("%s exited with code %s after SIGTERM" % (s.name, code))
        log = s.log_text()
        for marker in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
            if marker in log:
                problems.append("%s log contains %r" % (s.name, marker))
    if problems:
        for s in started:
            print("---- %s log tail ----\n%s" % (s.name, s.log_tail(80)))
        pytest.fail("server teardown: " + "; ".join(problems), pytrace=False)


def server_env(backend, env=None):
    e = dict(backend.env)
    e.update(env or {})
    return e


DEFAULT_MSG_OVERRIDES = {"admin_token": ADMIN_TOKEN, "send_rate": 100000}


@pytest.fixture(scope="module")
def mgw(tmp_path_factory, imgw_bin, store_backend):
    """Module-shared imgw on the module's backend: -t 4, admin token, a high
    send rate (default limits otherwise)."""
    d = tmp_path_factory.mktemp("mgw")
    s = H.build_server(str(d), "mgw-%s" % store_backend.name, threads=4,
                       env=server_env(store_backend), **DEFAULT_MSG_OVERRIDES)
    s.start()
    s.backend = store_backend
    yield s
    _stop_servers([s])


@pytest.fixture
def mserver(request, tmp_path, imgw_bin, store_backend):
    """Factory: mserver(threads=4, env={...}, **shorthand overrides)."""
    started = []
    request.node._imgw_servers = started

    def factory(threads=4, env=None, start=True, **overrides):
        ov = dict(DEFAULT_MSG_OVERRIDES)
        ov.update(overrides)
        ov = {k: v for k, v in ov.items() if v is not None}
        s = H.build_server(str(tmp_path), "imgw%d-%s" % (len(started), store_backend.name),
                           threads=threads, env=server_env(store_backend, env), **ov)
        s.backend = store_backend
        started.append(s)
        if start:
            s.start()
        return s

    yield factory
    _stop_servers(started)


# --------------------------------------------------------------------------
# small helpers

OK = ERR.Value("ERR_SUCCESS")
INVALID = ERR.Value("ERR_INVALID_PARAM")
DENIED = ERR.Value("ERR_PERMISSION_DENIED")
TOO_LARGE = ERR.Value("ERR_MESSAGE_TOO_LARGE")
TOO_FAST = ERR.Value("ERR_SEND_TOO_FAST")
NO_CONV = ERR.Value("ERR_CONVERSATION_NOT_EXIST")
AUTH_FAILED = ERR.Value("ERR_AUTH_FAILED")

C = {n: CMD.Value(n) for n in CMD.keys()}

RESPONSE_CMDS = {C["CMD_ERROR_RSP"], C["CMD_HEARTBEAT_RSP"], C["CMD_AUTH_RSP"],
                 C["CMD_SEND_MSG_RSP"], C["CMD_REVOKE_MSG_RSP"],
                 C["CMD_SYNC_RSP"], C["CMD_READ_RECEIPT_RSP"],
                 C["CMD_CONVERSATION_LIST_RSP"], C["CMD_CONVERSATION_DELETE_RSP"],
                 C["CMD_PRESENCE_RSP"], C["CMD_PRESENCE_SUB_RSP"]}

_uid_counter = [0]


def uid(prefix="u"):
    """A user / group id unique to this run (safe with a shared Redis)."""
    _uid_counter[0] += 1
    return "%s-%s-%d" % (prefix, uuid.uuid4().hex[:8], _uid_counter[0])


def single_conv(a, b):
    x, y = sorted([a, b], key=lambda s: s.encode("utf-8"))
    return "s_%s_%s" % (x, y)


def group_conv(gid):
    return "g_%s" % gid


def err_name(code):
    return H.err_name(code)


def assert_code(body, code, what=""):
    assert body.error_code == code, "%sexpected %s, got %s (%r)" % (
        (what + ": ") if what else "", err_name(code), err_name(body.error_code), body)


def body_dict(msg):
    return H.msg_to_json_dict(msg)


# --------------------------------------------------------------------------
# HTTP (admin API)


class JSONResp:
    def __init__(self, status, body):
        self.status = status
        self.raw = body
        try:
            self.json = json.loads(body.decode("utf-8")) if body else None
        except ValueError:
            self.json = None

    def __repr__(self):
        return "<HTTP %d %r>" % (self.status, self.raw[:300])


def http_json(port, method, path, body=None, token=ADMIN_TOKEN, raw_body=None,
              headers=None, timeout=10.0):
    """One HTTP request (Connection: close). body: JSON-encodable or None;
    raw_body: bytes/str sent as-is. token=None: no Authorization header."""
    if raw_body is not None:
        data = raw_body.encode("utf-8") if isinstance(raw_body, str) else raw_body
    elif body is not None:
        data = json.dumps(body).encode("utf-8")
    else:
        data = b""
    hdrs = [("Host", "127.0.0.1:%d" % port), ("Connection", "close")]
    if token is not None:
        hdrs.append(("Authorization", "Bearer %s" % token))
    if data or method in ("POST", "PUT"):
        hdrs.append(("Content-Type", "application/json"))
        hdrs.append(("Content-Length", str(len(data))))
    for k, v in (headers or {}).items():
        hdrs.append((k, v))
    head = "%s %s HTTP/1.1\r\n%s\r\n" % (
        method, path, "".join("%s: %s\r\n" % kv for kv in hdrs))
    r = H.http_request(port, head.encode("latin-1") + data, timeout=timeout)
    return JSONResp(r.status, r.body)


def put_group(port, gid, members, token=ADMIN_TOKEN):
    r = http_json(port, "PUT", "/api/groups/%s" % gid, {"members": list(members)},
                  token=token)
    assert r.status == 200, "PUT group %s: %r" % (gid, r)
    return r


def api_push(port, payload, token=ADMIN_TOKEN):
    return http_json(port, "POST", "/api/push", payload, token=token)


# --------------------------------------------------------------------------
# asyncio client with a background reader


class MClient:
    """One authenticated (or not) WebSocket connection.

    request()/send_*() return the response Frame matched by sequence;
    pushes are kept in self.frames (all non-response frames, in order)."""

    def __init__(self, ws, codec, user=None, platform=None, label=None):
        self.ws = ws
        self.codec = codec
        self.user = user
        self.platform = platform
        self.label = label or "%s/%s/%s" % (user, platform, codec)
        self.seq = 0
        self.pending = {}       # sequence -> Future
        self.frames = []        # unsolicited frames (pushes, kick, ...)
        self.all_frames = []
        self.cond = asyncio.Condition()
        self.closed = asyncio.Event()
        self.close_code = None
        self.reader = asyncio.ensure_future(self._read())
        self.auth_rsp = None

    # -- connect
    @classmethod
    async def connect(cls, server, codec="pb", **kw):
        url = server.ws_url("/ws")
        ws = await websockets.connect(url, max_size=None, ping_interval=None,
                                      open_timeout=20, close_timeout=3,
                                      compression=None, **kw)
        return cls(ws, codec)

    @classmethod
    async def open(cls, server, user, codec="pb", platform="Web", token=None,
                   expect_ok=True):
        c = await cls.connect(server, codec)
        c.user, c.platform = user, platform
        c.label = "%s/%s/%s" % (user, platform, codec)
        f = await c.request("CMD_AUTH_REQ",
                            pb.AuthRequest(user_id=user,
                                           token=make_token(user) if token is None else token,
                                           platform=platform),
                            expect="CMD_AUTH_RSP", timeout=20)
        c.auth_rsp = f.body
        if expect_ok:
            assert f.body.error_code == OK, "auth of %s failed: %r" % (c.label, f)
        return c

    # -- reader
    async def _read(self):
        try:
            async for data in self.ws:
                try:
                    f = H.decode_frame(data)
                except Exception as e:  # keep going; record the junk
                    f = H.Frame("?", -1, 0, None, data)
                    f.error = repr(e)
                self.all_frames.append(f)
                fut = None
                if f.command in RESPONSE_CMDS and f.sequence in self.pending:
                    fut = self.pending.pop(f.sequence)
                if fut is not None and not fut.done():
                    fut.set_result(f)
                else:
                    async with self.cond:
                        self.frames.append(f)
                        self.cond.notify_all()
        except websockets.ConnectionClosed:
            pass
        except Exception as e:  # pragma: no cover
            print("[msg] reader of %s: %r" % (self.label, e))
        finally:
            self.close_code = self.ws.close_code
            self.closed.set()
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(H.ClosedError(
                        "%s closed (code %s) before the response" % (self.label, self.close_code)))
            async with self.cond:
                self.cond.notify_all()

    # -- sending
    def next_seq(self):
        self.seq += 1
        return self.seq

    def _encode(self, cmd, body, seq, codec=None):
        codec = codec or self.codec
        n = H.cmd_num(cmd)
        if codec == "pb":
            if body is None:
                raw = b""
            elif isinstance(body, dict):
                raw = H.json_dict_to_msg(body, H.BODY_CLASS[n]).SerializeToString()
            else:
                raw = body.SerializeToString()
            return H.pb_frame(n, raw, seq)
        jb = body if isinstance(body, dict) else (
            {} if body is None else H.msg_to_json_dict(body))
        return json.dumps({"command": H.cmd_name(n), "sequence": seq, "body": jb,
                           "timestamp": H.now_ms()})

    async def send_nowait(self, cmd, body=None, seq=None, codec=None):
        """Send; returns (seq, future of the response with that sequence)."""
        seq = self.next_seq() if seq is None else seq
        fut = asyncio.get_event_loop().create_future()
        self.pending[seq] = fut
        await self.ws.send(self._encode(cmd, body, seq, codec))
        return seq, fut

    async def request(self, cmd, body=None, expect=None, timeout=10.0, codec=None):
        seq, fut = await self.send_nowait(cmd, body, codec=codec)
        try:
            f = await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            self.pending.pop(seq, None)
            raise AssertionError("%s: no response to %s seq %d within %.1fs; "
                                 "other frames: %r" % (self.label, H.cmd_name(H.cmd_num(cmd)),
                                                       seq, timeout, self.frames[-5:]))
        if expect is not None:
            assert f.command == H.cmd_num(expect), (
                "%s: expected %s for seq %d, got %r" % (self.label, expect, seq, f))
        return f

    # -- commands
    def msg_req(self, to=None, group=None, content="hello", client_msg_id=None,
                sender=None, message_type=1, extra=None, conversation_id=None,
                send_time=None):
        r = pb.SendMessageRequest(
            client_msg_id=client_msg_id if client_msg_id is not None else uuid.uuid4().hex,
            sender_id=self.user if sender is None else sender,
            receiver_id=to or "", group_id=group or "",
            message_type=message_type,
            content=content.encode("utf-8") if isinstance(content, str) else content,
            send_time=H.now_ms() if send_time is None else send_time)
        if conversation_id is not None:
            r.conversation_id = conversation_id
        for k, v in (extra or {}).items():
            r.extra[k] = v
        return r

    async def send_msg(self, to=None, group=None, timeout=10.0, **kw):
        """-> SendMessageResponse body (the request is kept as .req)."""
        req = self.msg_req(to=to, group=group, **kw)
        f = await self.request("CMD_SEND_MSG_REQ", req, expect="CMD_SEND_MSG_RSP",
                               timeout=timeout)
        return SendResult(f, req)

    async def send_ok(self, to=None, group=None, **kw):
        rsp = await self.send_msg(to=to, group=group, **kw)
        assert rsp.error_code == OK, "%s: send to %s failed: %r" % (
            self.label, to or group, rsp)
        return rsp

    async def sync(self, min_seq=0, max_seq=0, limit=0, timeout=10.0):
        f = await self.request("CMD_SYNC_REQ",
                               pb.SyncRequest(min_seq=min_seq, max_seq=max_seq, limit=limit),
                               expect="CMD_SYNC_RSP", timeout=timeout)
        return f.body

    async def sync_all(self, limit=500, min_seq=0):
        """Page through the whole timeline; returns (messages, pages)."""
        out, pages = [], []
        cur = min_seq
        for _ in range(10000):
            r = await self.sync(min_seq=cur, limit=limit)
            assert r.error_code == OK, "%s: sync failed: %r" % (self.label, r)
            pages.append(r)
            out.extend(r.messages)
            if not r.has_more:
                break
            assert len(r.messages) > 0, "%s: has_more with an empty page: %r" % (self.label, r)
            cur = r.messages[-1].seq
        return out, pages

    async def heartbeat(self):
        return await self.request("CMD_HEARTBEAT_REQ",
                                  pb.HeartbeatRequest(client_time=H.now_ms()),
                                  expect="CMD_HEARTBEAT_RSP")

    # -- pushes
    def pushes(self, cmd=None, pred=None):
        n = None if cmd is None else H.cmd_num(cmd)
        return [f for f in self.frames
                if (n is None or f.command == n) and (pred is None or pred(f))]

    async def wait_push(self, cmd, pred=None, timeout=5.0, count=1):
        """Wait until `count` frames of cmd (matching pred) have arrived;
        returns the first (count=1) or the list."""
        deadline = time.monotonic() + timeout
        async with self.cond:
            while True:
                got = self.pushes(cmd, pred)
                if len(got) >= count:
                    return got[0] if count == 1 else got
                if self.closed.is_set():
                    raise AssertionError("%s closed (code %s) while waiting for %s; frames: %r"
                                         % (self.label, self.close_code, cmd, self.frames[-5:]))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError("%s: %d x %s not received within %.1fs (got %d); "
                                         "frames: %r" % (self.label, count, cmd, timeout,
                                                         len(got), self.frames[-8:]))
                try:
                    await asyncio.wait_for(self.cond.wait(), remaining)
                except asyncio.TimeoutError:
                    pass

    async def expect_no_push(self, cmd=None, pred=None, wait=0.6):
        await asyncio.sleep(wait)
        got = self.pushes(cmd, pred)
        assert not got, "%s: unexpected %s: %r" % (self.label, cmd or "frames", got)

    async def wait_closed(self, timeout=5.0):
        try:
            await asyncio.wait_for(self.closed.wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError("%s not closed within %.1fs" % (self.label, timeout))
        return self.close_code

    async def close(self):
        try:
            await asyncio.wait_for(self.ws.close(), 5)
        except Exception:
            pass
        try:
            await asyncio.wait_for(self.reader, 5)
        except Exception:
            pass


class SendResult:
    """SendMessageResponse fields + the request (.req) and the frame (.frame)."""

    def __init__(self, frame, req):
        self.frame = frame
        self.body = frame.body
        self.req = req
        self.error_code = frame.body.error_code
        self.error_msg = frame.body.error_msg
        self.message_id = frame.body.message_id
        self.seq = frame.body.seq
        self.server_time = frame.body.server_time

    def __repr__(self):
        return "<SendResult %s mid=%r seq=%d server_time=%d msg=%r codec=%s>" % (
            H.err_name(self.error_code), self.message_id, self.seq, self.server_time,
            self.error_msg, self.frame.codec)


async def close_all(clients):
    await asyncio.gather(*(c.close() for c in clients if c is not None))


def push_summary(f):
    b = f.body
    return "%s seq=%s mid=%s" % (f.name, getattr(b, "seq", "-"), getattr(b, "message_id", "-"))


def is_msg(mid):
    return lambda f: f.body is not None and getattr(f.body, "message_id", None) == mid


def check_push_matches(push, req, rsp, receiver_seq=None, what="push"):
    """Field-by-field check of a PushMessage against the request/response."""
    p = push.body if hasattr(push, "body") and not isinstance(push, pb.PushMessage) else push
    exp_conv = (group_conv(req.group_id) if req.group_id
                else single_conv(req.sender_id, req.receiver_id))
    problems = []

    def chk(name, got, exp):
        if got != exp:
            problems.append("%s: got %r, expected %r" % (name, got, exp))

    chk("message_id", p.message_id, rsp.message_id)
    chk("client_msg_id", p.client_msg_id, req.client_msg_id)
    chk("conversation_id", p.conversation_id, exp_conv)
    chk("sender_id", p.sender_id, req.sender_id)
    chk("receiver_id", p.receiver_id, req.receiver_id)
    chk("group_id", p.group_id, req.group_id)
    chk("message_type", p.message_type, req.message_type)
    chk("content", bytes(p.content), bytes(req.content))
    chk("send_time", p.send_time, req.send_time)
    chk("extra", dict(p.extra), dict(req.extra))
    if p.server_time <= 0:
        problems.append("server_time not set: %r" % p.server_time)
    if rsp.server_time and p.server_time != rsp.server_time:
        problems.append("server_time %r != response server_time %r"
                        % (p.server_time, rsp.server_time))
    if receiver_seq is not None:
        chk("seq", p.seq, receiver_seq)
    assert not problems, "%s fields wrong:\n  %s\npush: %r" % (
        what, "\n  ".join(problems), p)


def check_msg_id(mid):
    assert isinstance(mid, str) and mid.isdigit() and 0 < int(mid) < 2 ** 64, (
        "message_id %r is not a decimal 64-bit id" % mid)


async def send_many(c, n, to=None, group=None, window=64, prefix="m", **kw):
    """Pipeline n sends on one connection (at most `window` in flight);
    returns the SendResults in send order (all must succeed)."""
    sem = asyncio.Semaphore(window)
    results = [None] * n

    async def one(i, req, fut):
        try:
            f = await asyncio.wait_for(fut, 30)
        finally:
            sem.release()
        results[i] = SendResult(f, req)

    tasks = []
    for i in range(n):
        await sem.acquire()
        req = c.msg_req(to=to, group=group, content="%s %d" % (prefix, i), **kw)
        _, fut = await c.send_nowait("CMD_SEND_MSG_REQ", req)
        tasks.append(asyncio.ensure_future(one(i, req, fut)))
    await asyncio.gather(*tasks)
    bad = [r for r in results if r.error_code != OK]
    assert not bad, "%s: %d of %d sends failed, first: %r" % (c.label, len(bad), n, bad[0])
    return results
