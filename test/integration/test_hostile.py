"""Hostile clients (hardening issue, part 3).

Every test connects two well-behaved clients ("bystanders") before the
attack and ends with Bystanders.check(): /healthz 200, both bystanders
heartbeat and exchange a message (with its push), and a fresh client
authenticates. See hostile_helpers.py.

  * slowloris handshakes (1 byte/s), one and 50 at once: dropped after
    server.auth_timeout while other clients are served
  * a client that never reads while being pushed to: closed as a slow
    consumer (imgw_slow_consumers_total), bounded server memory
  * a client that never reads while flooding requests whose answers queue
    up (pings -> pongs, heartbeats, undecodable frames, pipelined HTTP
    GET /metrics): answers stay bounded, server memory bounded
  * a burst of big messages to a receiver that reads as fast as it can
    must not get it closed as a slow consumer
  * 10,000 connections opened and dropped (FIN or RST) mid-handshake:
    imgw_tcp_connections_open returns to its baseline
  * RFC 6455 violations (mask, RSV, opcodes, lengths, fragmentation,
    control frames, UTF-8 across fragments, garbage pipelined after the
    upgrade) -> the documented close codes (docs/protocol.md)
  * HTTP abuse: 431 for a head over 8 KiB, 400 for too many header lines,
    absurd Content-Length, chunked / fixed bodies over max_body_bytes -> 413
"""

import resource
import select
import socket
import struct
import time

import pytest

import imgw_harness as H
from imgw_harness import make_token, pb
from hostile_helpers import (OK, Bystanders, SyncClient,
                             hb_payload, linger0, masked_frame, metric, raw_ws,
                             rss_kb, uid, wait_metric)

ADMIN = "hostile-admin-token-0123456789abcdef"


def expect_ws_close(rw, code, timeout=5.0):
    code_got, reason, before = rw.expect_close(timeout)
    print("  close code %s reason %r (frames before: %d)" % (code_got, reason, len(before)))
    assert code_got == code, "expected close %d, got %s (%r); frames before %r" % (
        code, code_got, reason, before)
    return before


def victim(port):
    """An authenticated raw connection that will misbehave."""
    c = SyncClient(port, uid("victim"))
    return c


# --------------------------------------------------------------------------
# slowloris


AUTH_TIMEOUT = 3
DROP_BOUND = AUTH_TIMEOUT + 6  # generous: wheel granularity + a loaded box


class Slow:
    """One connection trickling `data` one byte per second."""

    def __init__(self, port, data, upgraded=False):
        self.t0 = time.monotonic()
        if upgraded:
            self.rw, _ = raw_ws(port)
            self.sock = self.rw.sock
            self.got = self.rw.http.buf
        else:
            self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            self.got = b""
        self.sock.setblocking(False)
        self.upgraded = upgraded
        self.data = data
        self.pos = 0
        self.closed_at = None
        self.how = None

    def tick(self):
        if self.closed_at is None and self.pos < len(self.data):
            try:
                self.sock.send(self.data[self.pos:self.pos + 1])
                self.pos += 1
            except (BrokenPipeError, ConnectionResetError) as e:
                self.mark(repr(e))

    def readable(self):
        try:
            while True:
                d = self.sock.recv(65536)
                if not d:
                    self.mark("EOF")
                    return
                self.got += d
        except BlockingIOError:
            return
        except (ConnectionResetError, BrokenPipeError) as e:
            self.mark(repr(e))

    def mark(self, how):
        if self.closed_at is None:
            self.closed_at = time.monotonic()
            self.how = how

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def run_slow(clients, during=None, bound=DROP_BOUND):
    """Trickle one byte per second per client until all are closed (or
    `bound` s). `during` runs once, ~1.5 s in, while all are connected."""
    start = time.monotonic()
    next_tick = start
    did = during is None
    while time.monotonic() - start < bound:
        now = time.monotonic()
        if now >= next_tick:
            for s in clients:
                s.tick()
            next_tick += 1.0
        if not did and now - start > 1.5:
            alive = sum(1 for s in clients if s.closed_at is None)
            print("  %.1fs in: %d slow clients still connected; serving others"
                  % (now - start, alive))
            assert alive == len(clients), "slow clients dropped before auth_timeout"
            during()
            did = True
        open_ = [s for s in clients if s.closed_at is None]
        if not open_:
            break
        r, _, _ = select.select([s.sock for s in open_], [], [], 0.1)
        rs = set(r)
        for s in open_:
            if s.sock in rs:
                s.readable()
    return time.monotonic() - start


def test_slowloris_single(server):
    print("check: a client sending its upgrade request one byte per second is "
          "dropped after auth_timeout=%d; other clients are served meanwhile"
          % AUTH_TIMEOUT)
    srv = server(auth_timeout=AUTH_TIMEOUT)
    by = Bystanders(srv)
    req, _ = H.upgrade_request(srv.port)
    s = Slow(srv.port, req)
    try:
        run_slow([s], during=lambda: by.check("during slowloris"))
        took = (s.closed_at - s.t0) if s.closed_at else None
        print("  slow client: %d of %d bytes sent, closed after %s s (%s), got %r"
              % (s.pos, len(req), took and round(took, 2), s.how, s.got[:80]))
        assert s.closed_at is not None, "slowloris client not dropped within %ds" % DROP_BOUND
        assert s.pos < len(req), "the whole request went through"
        assert b"101" not in s.got[:20], s.got
        by.check("after slowloris")
    finally:
        s.close()
        by.close()


def test_slowloris_50(server):
    print("check: 50 slow clients at once (40 trickling the upgrade request, 10 "
          "upgraded and trickling a frame without authenticating) are all dropped "
          "after auth_timeout=%d; a new client is served meanwhile" % AUTH_TIMEOUT)
    srv = server(auth_timeout=AUTH_TIMEOUT)
    by = Bystanders(srv)
    base_tcp = metric(srv.port, "imgw_tcp_connections_open")
    clients = []
    try:
        for i in range(40):
            req, _ = H.upgrade_request(srv.port)
            clients.append(Slow(srv.port, req))
        frame = masked_frame(H.OP_BINARY, H.pb_frame("CMD_AUTH_REQ", pb.AuthRequest(
            user_id="slow", token=make_token("slow")), seq=1))
        for i in range(10):
            clients.append(Slow(srv.port, frame, upgraded=True))
        run_slow(clients, during=lambda: by.check("during 50 slow clients"))
        alive = [s for s in clients if s.closed_at is None]
        print("  dropped %d/50; close times %s..%s s" % (
            50 - len(alive),
            round(min(s.closed_at - s.t0 for s in clients if s.closed_at), 2)
            if len(alive) < 50 else "-",
            round(max(s.closed_at - s.t0 for s in clients if s.closed_at), 2)
            if len(alive) < 50 else "-"))
        assert not alive, "%d slow clients still connected after %ds" % (len(alive), DROP_BOUND)
        for s in clients[40:]:
            # upgraded ones: a close frame 4001 (auth timeout) comes first
            assert s.got[:1] == b"\x88" and len(s.got) >= 4, s.got[:20]
            code = struct.unpack("!H", s.got[2:4])[0]
            assert code == 4001, "upgraded slow client closed with %d" % code
        print("  the 10 upgraded slow clients got close 4001")
        v = wait_metric(srv.port, "imgw_tcp_connections_open", lambda v: v <= base_tcp, 5)
        print("  tcp connections open: %s (baseline %s)" % (v, base_tcp))
        assert v <= base_tcp
        by.check("after 50 slow clients")
    finally:
        for s in clients:
            s.close()
        by.close()


# --------------------------------------------------------------------------
# slow consumer


def nonreading_client(port, user):
    """Authenticated client with a tiny receive buffer that then stops reading."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    return SyncClient(port, user, sock=sock)


def drain_until_closed(sock, timeout=15.0):
    """Read everything; returns (how, bytes) when the server's close is seen."""
    sock.settimeout(1.0)
    deadline = time.monotonic() + timeout
    n = 0
    while time.monotonic() < deadline:
        try:
            d = sock.recv(1 << 20)
        except socket.timeout:
            continue
        except ConnectionResetError:
            return "RST", n
        if not d:
            return "EOF", n
        n += len(d)
    return None, n


def test_slow_consumer_closed(server):
    print("check: a client that never reads (SO_RCVBUF 4096) while being pushed "
          "to is closed once max_queued_bytes=262144 is exceeded; "
          "imgw_slow_consumers_total counts it; RSS stays bounded; the sender "
          "is unaffected (user messages and /api/push)")
    srv = server(max_frame_bytes=131072, send_rate=100000, admin_token=ADMIN,
                 env={"limits.max_queued_bytes": 262144})
    by = Bystanders(srv)
    slow = nonreading_client(srv.port, uid("slow"))
    slow2 = nonreading_client(srv.port, uid("slow2"))
    rss0 = rss_kb(srv.proc.pid)
    print("  server RSS before: %d kB" % rss0)
    try:
        content = "x" * 60000
        sent = 0
        for i in range(400):
            rsp = by.a.send_msg(slow.user, content)
            assert rsp.error_code == OK, "sender affected: %r" % rsp
            sent += 1
            if i % 10 == 9 and metric(srv.port, "imgw_slow_consumers_total") >= 1:
                break
        n = metric(srv.port, "imgw_slow_consumers_total")
        print("  %d x 60000-byte messages sent (all ERR_SUCCESS); slow consumers: %d"
              % (sent, n))
        assert n >= 1, "no slow consumer detected after %d x 60 kB pushes" % sent
        print("  clients' local ports: slow %d, slow2 %d, sender %d, receiver %d" % (
            slow.rw.sock.getsockname()[1], slow2.rw.sock.getsockname()[1],
            by.a.rw.sock.getsockname()[1], by.b.rw.sock.getsockname()[1]))
        print("  server log: %s" % [ln for ln in srv.log_text().splitlines()
                                    if "slow consumer" in ln])
        how, nbytes = drain_until_closed(slow.rw.sock)
        print("  non-reading client: %s after draining %d bytes" % (how, nbytes))
        assert how is not None, "the non-reading connection was not closed"

        print("  same through POST /api/push to a second non-reading client")
        import msg_helpers as M
        pushes = 0
        for i in range(400):
            r = M.http_json(srv.port, "POST", "/api/push", token=ADMIN, body={
                "code": 202, "ids": [slow2.user],
                "data": {"message_id": str(i + 1), "sender_id": "sys",
                         "receiver_id": slow2.user, "content": content}})
            assert r.status == 200, r
            pushes += 1
            if i % 10 == 9 and metric(srv.port, "imgw_slow_consumers_total") >= 2:
                break
        n = metric(srv.port, "imgw_slow_consumers_total")
        print("  %d pushes; slow consumers: %d" % (pushes, n))
        assert n >= 2
        how, nbytes = drain_until_closed(slow2.rw.sock)
        print("  second non-reading client: %s after %d bytes" % (how, nbytes))
        assert how is not None
        rss1 = rss_kb(srv.proc.pid)
        print("  server RSS after: %d kB (growth %d kB)" % (rss1, rss1 - rss0))
        assert rss1 - rss0 < 200 * 1024, "RSS grew by %d kB" % (rss1 - rss0)
        by.check("after slow consumers")
    finally:
        slow.rw.close()
        slow2.rw.close()
        by.close()


FLOODS = {
    # each frame makes the server queue a response the client never reads
    "ping_125": lambda: masked_frame(H.OP_PING, b"p" * 125),
    "heartbeat": lambda: masked_frame(H.OP_BINARY, hb_payload(1)),
    "undecodable_pb": lambda: masked_frame(H.OP_BINARY, b"\xff" * 100),
}


@pytest.mark.parametrize("kind", list(FLOODS))
def test_flood_from_nonreading_client(server, kind):
    print("check: a client that never reads floods %s frames (up to 80 MB): "
          "the responses it does not read stay bounded by max_queued_bytes=262144 "
          "-> the connection is closed (slow consumer) or no longer read from, "
          "server RSS grows < 40 MB"
          % kind)
    srv = server(env={"limits.max_queued_bytes": 262144})
    by = Bystanders(srv)
    c = nonreading_client(srv.port, uid("flood"))
    rss0 = rss_kb(srv.proc.pid)
    sc0 = metric(srv.port, "imgw_slow_consumers_total")
    buf = FLOODS[kind]() * 4000
    sent, how, t0 = 0, "still open", time.monotonic()
    try:
        c.rw.sock.settimeout(5)
        try:
            while sent < 80 * 1024 * 1024 and time.monotonic() - t0 < 30:
                c.rw.sock.sendall(buf)
                sent += len(buf)
        except socket.timeout:
            how = "server stopped reading"
        except (BrokenPipeError, ConnectionResetError) as e:
            how = "closed (%s)" % type(e).__name__
        rss1 = rss_kb(srv.proc.pid)
        sc = metric(srv.port, "imgw_slow_consumers_total") - sc0
        print("  sent %.1f MB in %.1fs: %s; RSS %d -> %d kB; slow consumers +%d"
              % (sent / 1e6, time.monotonic() - t0, how, rss0, rss1, sc))
        if how == "still open" or how == "server stopped reading":
            d, _ = drain_until_closed(c.rw.sock, timeout=3)
            print("  then draining: %s" % d)
            if d:
                how = "closed (%s)" % d
        assert rss1 - rss0 < 40 * 1024, "server RSS grew by %d kB" % (rss1 - rss0)
        # closing it (slow consumer) or applying backpressure (no longer
        # reading from it) both keep the server bounded
        assert how.startswith("closed") or how == "server stopped reading", (
            "the flooding non-reader was neither closed nor throttled: %s" % how)
        by.check("after %s flood" % kind)
    finally:
        c.rw.close()
        by.close()


def test_pipelined_http_from_nonreading_client(server):
    print("check: an unauthenticated client pipelines 0.5 MB of 'GET /metrics' "
          "requests (about 15,000; each answer is ~5 KB) and never reads: the "
          "answers it does not read must stay bounded (max_queued_bytes=262144): "
          "the server closes it or stops reading from it; RSS grows < 64 MB")
    srv = server(env={"limits.max_queued_bytes": 262144})
    by = Bystanders(srv)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", srv.port))
    rss0 = rss_kb(srv.proc.pid)
    req = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 1000
    sent, how, t0 = 0, "still open", time.monotonic()
    try:
        sock.settimeout(3)
        try:
            while sent < 512 * 1024:
                sock.sendall(req)
                sent += len(req)
        except socket.timeout:
            how = "server stopped reading"
        except (BrokenPipeError, ConnectionResetError) as e:
            how = "closed (%s)" % type(e).__name__
        time.sleep(1.0)  # let the server answer what it has read
        rss1 = rss_kb(srv.proc.pid)
        print("  sent %.2f MB of requests in %.1fs: %s; RSS %d -> %d kB"
              % (sent / 1e6, time.monotonic() - t0, how, rss0, rss1))
        assert rss1 - rss0 < 64 * 1024, "server RSS grew by %d kB" % (rss1 - rss0)
        by.check("after pipelined /metrics")
    finally:
        linger0(sock)
        sock.close()
        by.close()


BURSTS = {
    # name: (messages, env overrides)
    "default_limits": (100, {}),
    "queue_256k": (20, {"limits.max_queued_bytes": 262144}),
}


@pytest.mark.parametrize("kind", list(BURSTS))
def test_burst_does_not_kill_reading_receiver(server, kind):
    NBURST, env = BURSTS[kind]
    print("check (%s): a burst of %d x 60000-byte messages pipelined by one sender "
          "(within the send_rate burst) to a receiver that READS as fast as it "
          "can: the receiver is not closed as a slow consumer and gets every "
          "push. (Otherwise any user can knock any online user off by bursting "
          "at them.) env %r" % (kind, NBURST, env))
    import threading
    import uuid
    srv = server(threads=2, env=env)
    by = Bystanders(srv)
    r = SyncClient(srv.port, uid("rcv"))
    got, err = [0], [None]

    def reader():
        try:
            while got[0] < NBURST:
                f = r.recv(15)
                if f.command == H.cmd_num("CMD_PUSH_MSG"):
                    got[0] += 1
        except Exception as e:  # closed or timed out
            err[0] = repr(e)[:200]

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        buf = b""
        for i in range(NBURST):
            req = pb.SendMessageRequest(client_msg_id=uuid.uuid4().hex, sender_id=by.a.user,
                                        receiver_id=r.user, message_type=1,
                                        content=b"%05d" % i + b"y" * 59995,
                                        send_time=H.now_ms())
            buf += masked_frame(H.OP_BINARY, H.pb_frame("CMD_SEND_MSG_REQ", req, seq=1000 + i))
        by.a.rw.sock.sendall(buf)
        codes = []
        for i in range(NBURST):
            f = by.a.wait_for(lambda f: f.command == H.cmd_num("CMD_SEND_MSG_RSP"), 15,
                              "send response")
            codes.append(f.body.error_code)
        print("  sender: %d/%d ERR_SUCCESS" % (codes.count(OK), NBURST))
        assert codes.count(OK) == NBURST, [H.err_name(c) for c in codes if c != OK][:5]
        t.join(15)
        n = metric(srv.port, "imgw_slow_consumers_total")
        print("  receiver got %d/%d pushes; reader ended with %s; slow consumers %d; log %s"
              % (got[0], NBURST, err[0], n, [ln for ln in srv.log_text().splitlines()
                                     if "slow consumer" in ln][:3]))
        assert n == 0 and got[0] == NBURST, (
            "a reading receiver was closed as a slow consumer during a burst")
        # The burst spent the sender's whole send_rate bucket (burst 2x):
        # let it refill before the bystander check sends again.
        time.sleep(1.1)
        by.check("after a burst")
    finally:
        r.rw.close()
        by.close()


# --------------------------------------------------------------------------
# connection churn


def test_10000_connections_dropped(server):
    print("check: 10,000 connections opened and dropped without a close handshake "
          "(nothing / part of a head / a whole upgrade head / TLS-looking bytes; "
          "half RST, half FIN), in batches of 500: imgw_tcp_connections_open "
          "returns to its baseline and the node is healthy")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < min(hard, 4096):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    srv = server(auth_timeout=5)
    by = Bystanders(srv)
    base_tcp = metric(srv.port, "imgw_tcp_connections_open")
    base_ws = metric(srv.port, "imgw_connections_open")
    acc0 = metric(srv.port, "imgw_connections_accepted_total")
    print("  baseline: tcp open %s, ws open %s" % (base_tcp, base_ws))
    full, _ = H.upgrade_request(srv.port)
    payloads = [b"", b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgr", full,
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"]
    total = 0
    t0 = time.monotonic()
    try:
        for batch in range(20):
            socks = []
            for i in range(500):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.settimeout(10)
                s.connect(("127.0.0.1", srv.port))
                p = payloads[i % 4]
                if p:
                    try:
                        s.send(p)
                    except OSError:
                        pass
                socks.append(s)
            for i, s in enumerate(socks):
                if i % 2:
                    linger0(s)
                s.close()
            total += len(socks)
        print("  %d connections opened and dropped in %.1fs" % (total, time.monotonic() - t0))
        v = wait_metric(srv.port, "imgw_tcp_connections_open", lambda v: v <= base_tcp, 20,
                        step=0.25)
        acc = metric(srv.port, "imgw_connections_accepted_total") - acc0
        ws = metric(srv.port, "imgw_connections_open")
        print("  after: tcp open %s, ws open %s, accepted %d" % (v, ws, acc))
        assert v <= base_tcp, "tcp connections open %s, baseline %s" % (v, base_tcp)
        assert ws <= base_ws, ws
        assert acc >= 9000, "only %d of 10000 connections accepted" % acc
        by.check("after 10000 dropped connections")
    finally:
        by.close()


# --------------------------------------------------------------------------
# RFC 6455 violations


def _ctl_126(c):
    c.rw.sock.sendall(masked_frame(H.OP_PING, b"p" * 126))


VIOLATIONS = {
    "unmasked_frame": (lambda c: c.rw.sock.sendall(
        masked_frame(H.OP_BINARY, hb_payload(9), mask=False)), 1002),
    "rsv1": (lambda c: c.rw.sock.sendall(masked_frame(H.OP_BINARY, hb_payload(9), rsv=4)), 1002),
    "rsv2": (lambda c: c.rw.sock.sendall(masked_frame(H.OP_BINARY, hb_payload(9), rsv=2)), 1002),
    "rsv3": (lambda c: c.rw.sock.sendall(masked_frame(H.OP_BINARY, hb_payload(9), rsv=1)), 1002),
    "opcode_3": (lambda c: c.rw.sock.sendall(masked_frame(3, b"x")), 1002),
    "opcode_7": (lambda c: c.rw.sock.sendall(masked_frame(7, b"x")), 1002),
    "opcode_0xB": (lambda c: c.rw.sock.sendall(masked_frame(0xB, b"")), 1002),
    "opcode_0xF": (lambda c: c.rw.sock.sendall(masked_frame(0xF, b"x")), 1002),
    "ping_payload_126": (_ctl_126, 1002),
    "close_payload_126": (lambda c: c.rw.sock.sendall(
        masked_frame(H.OP_CLOSE, struct.pack("!H", 1000) + b"r" * 124)), 1002),
    "fragmented_ping": (lambda c: c.rw.sock.sendall(
        masked_frame(H.OP_PING, b"p", fin=False)), 1002),
    "continuation_without_start": (lambda c: c.rw.sock.sendall(
        masked_frame(H.OP_CONT, hb_payload(9))), 1002),
    "length_msb_set_2^63": (lambda c: c.rw.sock.sendall(
        struct.pack("!BBQ", 0x80 | H.OP_BINARY, 0x80 | 127, 1 << 63)
        + b"\x01\x02\x03\x04" + b"\x00" * 8), 1002),
    "length_2^62": (lambda c: c.rw.sock.sendall(
        struct.pack("!BBQ", 0x80 | H.OP_BINARY, 0x80 | 127, 1 << 62)
        + b"\x01\x02\x03\x04" + b"\x00" * 64), 1009),
    "fragments_over_max_frame_bytes": (lambda c: [c.rw.sock.sendall(
        masked_frame(H.OP_BINARY if i == 0 else H.OP_CONT, b"z" * 60000, fin=False))
        for i in range(3)], 1009),
}


@pytest.mark.parametrize("kind", list(VIOLATIONS))
def test_frame_violation(server, kind):
    act, code = VIOLATIONS[kind]
    print("check: %s from an authenticated client -> close %d, node unaffected"
          % (kind, code))
    srv = server()
    by = Bystanders(srv)
    v = victim(srv.port)
    rss0 = rss_kb(srv.proc.pid)
    try:
        try:
            act(v)
        except (BrokenPipeError, ConnectionResetError):
            pass
        expect_ws_close(v.rw, code)
        rss1 = rss_kb(srv.proc.pid)
        print("  server RSS %d -> %d kB" % (rss0, rss1))
        assert rss1 - rss0 < 64 * 1024, "RSS grew by %d kB" % (rss1 - rss0)
        by.check("after " + kind)
    finally:
        v.rw.close()
        by.close()


def test_frame_violation_before_auth(server):
    print("check: the same violations from a client that has not authenticated "
          "(unmasked, reserved opcode, 2^62 length) -> 1002/1002/1009")
    srv = server()
    by = Bystanders(srv)
    try:
        for data, code in ((masked_frame(H.OP_BINARY, hb_payload(1), mask=False), 1002),
                           (masked_frame(0x5, b"x"), 1002),
                           (struct.pack("!BBQ", 0x82, 0xFF, 1 << 62) + b"abcd" + b"\0" * 16,
                            1009)):
            rw, _ = raw_ws(srv.port)
            rw.sock.sendall(data)
            expect_ws_close(rw, code)
            rw.close()
        by.check("after pre-auth violations")
    finally:
        by.close()


def test_huge_length_header_only(server):
    print("check: a frame header declaring 2^62 bytes with NO payload byte after "
          "it -> close 1009 as soon as the header is complete (the server must "
          "not wait for payload it will refuse anyway)")
    srv = server()
    by = Bystanders(srv)
    v = victim(srv.port)
    try:
        v.rw.sock.sendall(struct.pack("!BBQ", 0x80 | H.OP_BINARY, 0x80 | 127, 1 << 62)
                          + b"\x01\x02\x03\x04")
        expect_ws_close(v.rw, 1009)
        by.check("after a 2^62 header")
    finally:
        v.rw.close()
        by.close()


def test_ping_between_fragments(server):
    print("check: a ping between the fragments of a text message is answered with "
          "a pong right away and the message is still reassembled and answered")
    srv = server()
    by = Bystanders(srv)
    v = victim(srv.port)
    try:
        msg = b'{"command":"CMD_HEARTBEAT_REQ","sequence":41,"body":{"client_time":5}}'
        v.rw.sock.sendall(masked_frame(H.OP_TEXT, msg[:20], fin=False))
        v.rw.sock.sendall(masked_frame(H.OP_CONT, msg[20:40], fin=False))
        v.rw.sock.sendall(masked_frame(H.OP_PING, b"between-fragments"))
        fin, op, data = v.rw.recv_frame(5)
        print("  after the ping: fin=%s op=%s %r" % (fin, op, data))
        assert (op, data) == (H.OP_PONG, b"between-fragments"), (op, data)
        v.rw.sock.sendall(masked_frame(H.OP_PONG, b"unsolicited"))  # ignored
        v.rw.sock.sendall(masked_frame(H.OP_CONT, msg[40:], fin=True))
        op, data = v.rw.recv_message(5)
        f = H.decode_frame(data.decode() if op == H.OP_TEXT else data)
        print("  reassembled message answered: %r" % f)
        assert op == H.OP_TEXT and f.command == H.cmd_num("CMD_HEARTBEAT_RSP") \
            and f.sequence == 41, f
        by.check("after interleaved ping")
    finally:
        v.rw.close()
        by.close()


UTF8_SPLITS = {
    # (first fragment tail, continuation head, expected)
    "valid_euro_split": (b"\xe2\x82", b"\xac", None),
    "invalid_continuation": (b"\xe2\x82", b"\x28", 1007),
    "surrogate_split": (b"\xed\xa0", b"\x80", 1007),
    "overlong_split": (b"\xc0", b"\xaf", 1007),
    "truncated_at_end": (b"", b"\xf0\x9f\x98", 1007),
}


@pytest.mark.parametrize("kind", list(UTF8_SPLITS))
def test_utf8_across_fragments(server, kind):
    a, b, code = UTF8_SPLITS[kind]
    print("check: text message with %s UTF-8 split across fragments -> %s"
          % (kind, "accepted (answered, no close)" if code is None else "close %d" % code))
    srv = server()
    by = Bystanders(srv)
    v = victim(srv.port)
    try:
        head = b'{"command":"CMD_HEARTBEAT_REQ","sequence":3,"body":{"client_time":1},"x":"'
        tail = b'"}' if kind != "truncated_at_end" else b""
        if kind == "truncated_at_end":
            v.rw.sock.sendall(masked_frame(H.OP_TEXT, head + b'"}', fin=False))
            v.rw.sock.sendall(masked_frame(H.OP_CONT, b, fin=True))
        else:
            v.rw.sock.sendall(masked_frame(H.OP_TEXT, head + a, fin=False))
            v.rw.sock.sendall(masked_frame(H.OP_CONT, b + tail, fin=True))
        if code is None:
            op, data = v.rw.recv_message(5)
            assert op == H.OP_TEXT, (op, data)
            f = H.decode_frame(data.decode() if op == H.OP_TEXT else data)
            print("  answered: %r" % f)
            assert f.sequence == 3, f
            v.heartbeat()
        else:
            expect_ws_close(v.rw, code)
        by.check("after utf8 " + kind)
    finally:
        v.rw.close()
        by.close()


GARBAGE = {
    "ascii": b"GARBAGE GARBAGE\r\n\r\n",
    "zeros": b"\x00" * 16,
    "ff": b"\xff" * 16,
    "second_request": b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n",
}


@pytest.mark.parametrize("kind", list(GARBAGE))
def test_garbage_pipelined_after_upgrade(server, kind):
    print("check: upgrade request + %s garbage in one write -> 101, then close 1002"
          % kind)
    srv = server()
    by = Bystanders(srv)
    try:
        rw, resp = raw_ws(srv.port, trailing=GARBAGE[kind])
        print("  handshake %d" % resp.status)
        expect_ws_close(rw, 1002)
        rw.close()
        by.check("after pipelined garbage")
    finally:
        by.close()


# --------------------------------------------------------------------------
# HTTP abuse


def read_status_or_close(c, timeout=5.0):
    """-> status code, or 'closed' when the server closed without answering."""
    try:
        return c.read_response(timeout=timeout).status
    except (ConnectionError, OSError) as e:
        if isinstance(e, socket.timeout):
            return "timeout"
        return "closed"


def test_http_head_over_8k(server):
    print("check: a request head over 8 KiB -> 431 (plain GET and upgrade)")
    srv = server()
    by = Bystanders(srv)
    try:
        for path, extra in (("/healthz", ""),
                            ("/ws", "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                             "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
                             % H.new_ws_key())):
            for size in (8300, 100000):
                c = H.HTTPConn(srv.port)
                try:
                    head = ("GET %s HTTP/1.1\r\nHost: x\r\n%sX-Big: %s\r\n\r\n"
                            % (path, extra, "a" * size)).encode()
                    try:
                        c.send(head)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    st = read_status_or_close(c)
                    print("  %s with a %d-byte header -> %s" % (path, size, st))
                    assert st == 431, st
                finally:
                    c.close()
        by.check("after 431s")
    finally:
        by.close()


def test_http_200_header_lines(server):
    print("check: a request with 200 header lines (head < 8 KiB) -> 400 or 431")
    srv = server()
    by = Bystanders(srv)
    try:
        for path in ("/healthz", "/ws"):
            lines = "".join("X-H-%d: v\r\n" % i for i in range(200))
            c = H.HTTPConn(srv.port)
            try:
                c.send("GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (path, lines))
                st = read_status_or_close(c)
                print("  %s with 200 header lines -> %s" % (path, st))
                assert st in (400, 431), st
                assert c.wait_closed(5), "connection kept open after an error"
            finally:
                c.close()
        by.check("after too many header lines")
    finally:
        by.close()


def test_http_absurd_content_length(server):
    print("check: absurd Content-Length values with no body: overflowing/negative "
          "ones -> 400; a huge valid one is not allocated (413 or no answer), the "
          "client then closes; no crash, memory bounded, connections released")
    srv = server(admin_token=ADMIN, auth_timeout=3)
    by = Bystanders(srv)
    base_tcp = metric(srv.port, "imgw_tcp_connections_open")
    rss0 = rss_kb(srv.proc.pid)
    try:
        for cl in ("18446744073709551616", "99999999999999999999999", "-1", "1e9",
                   "0x10"):
            c = H.HTTPConn(srv.port)
            try:
                c.send("POST /api/push HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                       "Content-Length: %s\r\n\r\n" % (ADMIN, cl))
                st = read_status_or_close(c)
                print("  Content-Length: %s -> %s" % (cl, st))
                assert st == 400, st
            finally:
                c.close()
        for cl in ("9223372036854775807", "1000000000000", "1048577"):
            for close_how in ("FIN", "RST", "half-close"):
                c = H.HTTPConn(srv.port)
                try:
                    c.send("POST /api/push HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                           "Content-Type: application/json\r\nContent-Length: %s\r\n\r\n{\"a\""
                           % (ADMIN, cl))
                    if close_how == "half-close":
                        c.sock.shutdown(socket.SHUT_WR)
                        st = read_status_or_close(c, timeout=AUTH_TIMEOUT + 5)
                    else:
                        st = read_status_or_close(c, timeout=0.5)
                    print("  Content-Length: %s, %s -> %s" % (cl, close_how, st))
                    assert st in (413, 400, "closed", "timeout"), st
                    if close_how == "half-close":
                        assert st != "timeout", "server kept a half-closed connection"
                    if close_how == "RST":
                        linger0(c.sock)
                finally:
                    c.close()
        # one that just sits there, one that streams body bytes without end:
        # both dropped by the HTTP-phase auth_timeout (counted from connect)
        for mode in ("idle", "streaming"):
            c = H.HTTPConn(srv.port)
            try:
                c.send("POST /api/push HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                       "Content-Length: 1000000000000\r\n\r\n" % ADMIN)
                t0 = time.monotonic()
                if mode == "idle":
                    st = read_status_or_close(c, timeout=AUTH_TIMEOUT + 6)
                else:
                    st, chunk, sent = "timeout", b"s" * 16384, 0
                    c.sock.setblocking(False)
                    while time.monotonic() - t0 < AUTH_TIMEOUT + 6:
                        try:
                            sent += c.sock.send(chunk)
                        except BlockingIOError:
                            pass
                        except (BrokenPipeError, ConnectionResetError):
                            st = "closed"
                            break
                        r, _, _ = select.select([c.sock], [], [], 0.02)
                        if r:
                            try:
                                d = c.sock.recv(65536)
                            except ConnectionResetError:
                                d = b""
                            st = "closed" if not d else d[:12].decode("latin-1")
                            break
                    print("  streamed %d body bytes" % sent)
                print("  %s after a huge Content-Length -> %s after %.1fs"
                      % (mode, st, time.monotonic() - t0))
                assert st != "timeout", "%s connection not dropped after auth_timeout" % mode
            finally:
                c.close()
        v = wait_metric(srv.port, "imgw_tcp_connections_open", lambda v: v <= base_tcp, 5)
        rss1 = rss_kb(srv.proc.pid)
        print("  tcp open %s (baseline %s), RSS %d -> %d kB" % (v, base_tcp, rss0, rss1))
        assert v <= base_tcp
        assert rss1 - rss0 < 64 * 1024
        by.check("after absurd Content-Length")
    finally:
        by.close()


def _send_tolerant(c, data):
    try:
        c.send(data)
        return True
    except (BrokenPipeError, ConnectionResetError):
        return False


def test_http_body_over_max_body_bytes(server):
    print("check: POST /api/push bodies over limits.max_body_bytes=4096 -> 413: "
          "chunked (many chunks, and one huge chunk) and with Content-Length")
    srv = server(admin_token=ADMIN, env={"limits.max_body_bytes": 4096})
    by = Bystanders(srv)
    rss0 = rss_kb(srv.proc.pid)
    head = ("POST /api/push HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
            "Content-Type: application/json\r\n" % ADMIN)
    try:
        # many chunks, 64 KiB in total
        c = H.HTTPConn(srv.port, timeout=10)
        try:
            data = (head + "Transfer-Encoding: chunked\r\n\r\n").encode()
            data += b"".join(b"400\r\n" + b"a" * 1024 + b"\r\n" for _ in range(64))
            data += b"0\r\n\r\n"
            _send_tolerant(c, data)
            st = read_status_or_close(c, 10)
            print("  chunked 64 x 1 KiB -> %s" % st)
            assert st == 413, st
        finally:
            c.close()
        # one chunk declaring 1 GiB, 200 KiB of it sent, then the rest never
        c = H.HTTPConn(srv.port, timeout=10)
        try:
            data = (head + "Transfer-Encoding: chunked\r\n\r\n40000000\r\n").encode()
            _send_tolerant(c, data + b"b" * 200000)
            st = read_status_or_close(c, 3)
            print("  one 1 GiB chunk, 200 KB sent -> %s" % st)
            assert st in (413, "timeout"), st
        finally:
            linger0(c.sock)
            c.close()
        # a chunk size that overflows
        c = H.HTTPConn(srv.port, timeout=10)
        try:
            _send_tolerant(c, (head + "Transfer-Encoding: chunked\r\n\r\n"
                               "FFFFFFFFFFFFFFFFFF\r\nabc\r\n").encode())
            st = read_status_or_close(c, 5)
            print("  chunk size FFFFFFFFFFFFFFFFFF -> %s" % st)
            assert st in (400, 413), st
        finally:
            c.close()
        # Content-Length, body sent
        c = H.HTTPConn(srv.port, timeout=10)
        try:
            body = b'{"code":202,"ids":["x"],"data":{"content":"' + b"c" * 8000 + b'"}}'
            _send_tolerant(c, (head + "Content-Length: %d\r\n\r\n" % len(body)).encode()
                           + body)
            st = read_status_or_close(c, 10)
            print("  Content-Length %d -> %s" % (len(body), st))
            assert st == 413, st
        finally:
            c.close()
        # a body at the limit still works
        r = __import__("msg_helpers").http_json(srv.port, "POST", "/api/push", token=ADMIN,
                                               body={"code": 202, "ids": [by.b.user],
                                                     "data": {"content": "small"}})
        print("  a small push -> %r" % r)
        assert r.status == 200, r
        by.b.wait_push("small")
        rss1 = rss_kb(srv.proc.pid)
        print("  RSS %d -> %d kB" % (rss0, rss1))
        assert rss1 - rss0 < 64 * 1024
        by.check("after oversized bodies")
    finally:
        by.close()
