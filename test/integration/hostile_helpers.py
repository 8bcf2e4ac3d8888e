"""Helpers for test_hostile.py and test_security.py.

  SyncClient     blocking, authenticated protobuf client over a raw socket
                 (imgw_harness.RawWS): heartbeat, send, wait for pushes.
  Bystanders     two well-behaved clients connected and authenticated
                 BEFORE an attack; .check() afterwards proves the node is
                 healthy and that they (and a fresh client) still work:
                 /healthz 200, heartbeats, a message each way with its push,
                 a new connection authenticates.
  raw_ws()       WebSocket handshake on a given socket, optionally with
                 bytes pipelined after the request head (same write).
  masked_frame() one client frame as bytes (for hand-made sequences).
  metric(), rss_kb(), sign_hs256_raw() ...
"""

import os
import socket
import struct
import time
import uuid

import imgw_harness as H
from imgw_harness import ERR, make_token, pb

OK = ERR.Value("ERR_SUCCESS")
AUTH_FAILED = ERR.Value("ERR_AUTH_FAILED")
C = {n: H.CMD.Value(n) for n in H.CMD.keys()}

_n = [0]


def uid(prefix="u"):
    _n[0] += 1
    return "%s-%s-%d" % (prefix, uuid.uuid4().hex[:6], _n[0])


# --------------------------------------------------------------------------
# node observation


def metric(port, name, labels=None):
    """Sum of all samples of `name` (optionally filtered by labels)."""
    r = H.http_get(port, "/metrics", timeout=10)
    assert r.status == 200, r
    tot = 0.0
    for n, lab, v in H.parse_metrics(r.body.decode("utf-8", "replace")):
        if n == name and all(lab.get(k) == x for k, x in (labels or {}).items()):
            tot += v
    return tot


def wait_metric(port, name, pred, timeout=10.0, labels=None, step=0.1):
    """Poll until pred(value); returns the last value (caller asserts)."""
    deadline = time.monotonic() + timeout
    v = metric(port, name, labels)
    while not pred(v) and time.monotonic() < deadline:
        time.sleep(step)
        v = metric(port, name, labels)
    return v


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for ln in f:
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1])
    raise AssertionError("no VmRSS for pid %d" % pid)


def assert_healthy(srv):
    assert srv.proc.poll() is None, "imgw exited (code %s)" % srv.proc.returncode
    r = H.http_get(srv.port, "/healthz", timeout=10)
    print("  /healthz -> %d %r" % (r.status, r.body))
    assert r.status == 200 and r.body == b"ok", r


def linger0(sock):
    """close() on this socket sends RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


# --------------------------------------------------------------------------
# raw WebSocket


def masked_frame(opcode, payload, fin=True, rsv=0, mask=True):
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        hdr = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        hdr = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        hdr = struct.pack("!BBQ", b0, mbit | 127, n)
    if not mask:
        return hdr + payload
    mk = os.urandom(4)
    if n > 4096:
        # fast XOR for big payloads
        reps = (mk * (n // 4 + 1))[:n]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(reps, "big")
                  ).to_bytes(n, "big")
    else:
        masked = bytes(b ^ mk[i % 4] for i, b in enumerate(payload))
    return hdr + mk + masked


def raw_ws(port, sock=None, trailing=b"", extra=None, path="/ws", timeout=5.0,
           expect_status=101):
    """Handshake on `sock` (a new connection when None), with `trailing`
    bytes in the same write as the request head. Returns (RawWS, response);
    the RawWS is None when the status is not 101."""
    conn = H.HTTPConn.__new__(H.HTTPConn)
    if sock is None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.settimeout(timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.sock, conn.buf, conn.timeout, conn.closed_by_peer = sock, b"", timeout, False
    req, key = H.upgrade_request(port, path=path, extra=extra)
    conn.send(req + trailing)
    resp = conn.read_response(head_only=True)
    if expect_status is not None:
        assert resp.status == expect_status, resp
    if resp.status != 101:
        return None, resp
    assert resp.header("sec-websocket-accept") == H.ws_accept(key), resp
    rw = H.RawWS.__new__(H.RawWS)
    rw.http, rw.sock = conn, conn.sock
    return rw, resp


def handshake_status(port, token=None, via="query", extra=None, path="/ws"):
    """Status of an upgrade request carrying `token`."""
    hdrs = dict(extra or {})
    if token is not None:
        if via == "query":
            path = path + "?token=" + token
        elif via == "header":
            hdrs["Authorization"] = "Bearer " + token
        elif via == "cookie":
            hdrs["Cookie"] = "token=" + token
            # The cookie counts only from a vetted Origin: same origin here.
            hdrs.setdefault("Origin", H.same_origin(port))
    c = H.HTTPConn(port, timeout=10)
    try:
        req, _ = H.upgrade_request(port, path=path, extra=hdrs)
        c.send(req)
        return c.read_response(head_only=True).status
    finally:
        c.close()


def hb_payload(seq):
    return H.pb_frame("CMD_HEARTBEAT_REQ", pb.HeartbeatRequest(client_time=1), seq=seq)


# --------------------------------------------------------------------------
# blocking client


class SyncClient:
    """A protobuf client on RawWS. Frames that are not the awaited one are
    kept in .stash (pushes) and looked at by wait_for()."""

    def __init__(self, port, user=None, token=None, platform="Web",
                 timeout=5.0, auth=True, sock=None):
        self.port = port
        self.user = user or uid("by")
        self.token = make_token(self.user) if token is None else token
        self.rw, _ = raw_ws(port, sock=sock, timeout=timeout)
        self.seq = 0
        self.stash = []
        self.close_code = None
        if auth:
            f = self.auth(platform)
            assert f.body.error_code == OK, "auth of %s failed: %r" % (self.user, f)

    def auth(self, platform="Web", token=None, user=None):
        return self.request("CMD_AUTH_REQ", pb.AuthRequest(
            user_id=self.user if user is None else user,
            token=self.token if token is None else token, platform=platform),
            expect="CMD_AUTH_RSP")

    def send(self, cmd, body=b""):
        self.seq += 1
        self.rw.sock.sendall(masked_frame(H.OP_BINARY, H.pb_frame(cmd, body, seq=self.seq)))
        return self.seq

    def recv(self, timeout=5.0):
        op, data = self.rw.recv_message(timeout)
        if op == H.OP_CLOSE:
            self.close_code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
            raise H.ClosedError("%s: server closed with %s %r"
                                % (self.user, self.close_code, data[2:]))
        return H.decode_frame(data)

    def wait_for(self, pred, timeout=5.0, what="frame"):
        for i, f in enumerate(self.stash):
            if pred(f):
                return self.stash.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("%s: no %s within %.1fs; stash %r"
                                     % (self.user, what, timeout, self.stash[-5:]))
            try:
                f = self.recv(remaining)
            except OSError as e:  # socket.timeout included
                raise AssertionError("%s: no %s within %.1fs (%r); stash %r"
                                     % (self.user, what, timeout, e, self.stash[-5:]))
            if pred(f):
                return f
            self.stash.append(f)

    def request(self, cmd, body=b"", expect=None, timeout=5.0):
        seq = self.send(cmd, body)
        rsp = {C["CMD_ERROR_RSP"], C["CMD_HEARTBEAT_RSP"], C["CMD_AUTH_RSP"],
               C["CMD_SEND_MSG_RSP"], C["CMD_SYNC_RSP"], C["CMD_REVOKE_MSG_RSP"],
               C["CMD_READ_RECEIPT_RSP"]}
        f = self.wait_for(lambda f: f.command in rsp and f.sequence == seq, timeout,
                          "response to %s seq %d" % (cmd, seq))
        if expect is not None:
            assert f.command == H.cmd_num(expect), "%s: expected %s, got %r" % (
                self.user, expect, f)
        return f

    def heartbeat(self):
        f = self.request("CMD_HEARTBEAT_REQ", pb.HeartbeatRequest(client_time=H.now_ms()),
                         expect="CMD_HEARTBEAT_RSP")
        assert f.body.server_time > 0, f
        return f

    def send_msg(self, to, content, timeout=10.0):
        req = pb.SendMessageRequest(
            client_msg_id=uuid.uuid4().hex, sender_id=self.user, receiver_id=to,
            message_type=1,
            content=content.encode("utf-8") if isinstance(content, str) else content,
            send_time=H.now_ms())
        return self.request("CMD_SEND_MSG_REQ", req, expect="CMD_SEND_MSG_RSP",
                            timeout=timeout).body

    def wait_push(self, content, timeout=5.0):
        c = content.encode("utf-8") if isinstance(content, str) else content
        return self.wait_for(
            lambda f: f.command == C["CMD_PUSH_MSG"] and bytes(f.body.content) == c,
            timeout, "push %r" % c[:40])

    def close(self):
        try:
            self.rw.sock.sendall(masked_frame(H.OP_CLOSE, struct.pack("!H", 1000)))
        except OSError:
            pass
        self.rw.close()


class Bystanders:
    """Two clients connected and authenticated before an attack."""

    def __init__(self, srv, token_fn=None):
        self.srv = srv
        self.token_fn = token_fn or (lambda user: make_token(user))
        ua, ub = uid("bya"), uid("byb")
        self.a = SyncClient(srv.port, ua, token=self.token_fn(ua))
        self.b = SyncClient(srv.port, ub, token=self.token_fn(ub))
        print("  bystanders %s and %s connected and authenticated" % (ua, ub))

    def check(self, tag="after"):
        """The node is healthy and the bystanders are unaffected."""
        print("check: node healthy, bystanders unaffected (%s)" % tag)
        assert_healthy(self.srv)
        self.a.heartbeat()
        self.b.heartbeat()
        for s, r in ((self.a, self.b), (self.b, self.a)):
            text = "%s %s->%s %s" % (tag, s.user, r.user, uuid.uuid4().hex[:6])
            rsp = s.send_msg(r.user, text)
            assert rsp.error_code == OK, "bystander send failed: %r" % rsp
            p = r.wait_push(text)
            assert p.body.sender_id == s.user, p
        print("  bystanders: heartbeats ok, message each way pushed")
        fresh = uid("fresh")
        c = SyncClient(self.srv.port, fresh, token=self.token_fn(fresh))
        c.heartbeat()
        c.close()
        print("  a fresh client %s authenticated and got a heartbeat response" % fresh)

    def close(self):
        self.a.close()
        self.b.close()


# --------------------------------------------------------------------------
# JWT by hand


def sign_hs256_raw(header_json, payload_json, secret):
    """HS256 JWT over exact JSON texts (duplicate keys, odd spacing, ...)."""
    import hashlib
    import hmac
    if isinstance(secret, str):
        secret = secret.encode()
    h = H._b64url(header_json.encode() if isinstance(header_json, str) else header_json)
    p = H._b64url(payload_json.encode() if isinstance(payload_json, str) else payload_json)
    sig = hmac.new(secret, ("%s.%s" % (h, p)).encode(), hashlib.sha256).digest()
    return "%s.%s.%s" % (h, p, H._b64url(sig))
