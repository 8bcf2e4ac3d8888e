"""HTTP side of the gateway: WebSocket handshake (RFC 6455), /healthz, errors.

protocol.md section 1 (endpoints), section 10 (HTTP details).
"""

import base64
import os
import time

import pytest

import imgw_harness as H


def upgrade(gw, **kw):
    req, key = H.upgrade_request(gw.port, **kw)
    resp = H.http_request(gw.port, req, head_only=True)
    return resp, key


@pytest.mark.parametrize("path", ["/ws", "/"])
def test_upgrade_101_with_accept(gw, path):
    print("check: GET %s with a proper upgrade -> 101 + correct Sec-WebSocket-Accept" % path)
    resp, key = upgrade(gw, path=path)
    print("got:", resp)
    assert resp.status == 101, resp
    assert resp.header("sec-websocket-accept") == H.ws_accept(key), resp
    assert (resp.header("upgrade") or "").lower() == "websocket", resp
    assert "upgrade" in (resp.header("connection") or "").lower(), resp


def test_upgrade_case_insensitive_and_connection_token_list(gw):
    print("check: 'Upgrade: WebSocket' and 'Connection: keep-alive, Upgrade' (Firefox) -> 101")
    resp, key = upgrade(gw, upgrade="WebSocket", connection="keep-alive, Upgrade")
    print("got:", resp)
    assert resp.status == 101, resp
    assert resp.header("sec-websocket-accept") == H.ws_accept(key)


def test_upgrade_with_query_string_path(gw):
    print("check: GET /ws?foo=bar (no token) upgrades -> 101")
    resp, key = upgrade(gw, path="/ws?foo=bar")
    assert resp.status == 101, resp


def test_missing_upgrade_header_400(gw):
    print("check: GET /ws without Upgrade header -> 400")
    resp, _ = upgrade(gw, omit=("Upgrade",))
    print("got:", resp)
    assert resp.status == 400, resp


def test_missing_connection_header_400(gw):
    print("check: GET /ws without Connection: Upgrade -> 400")
    resp, _ = upgrade(gw, omit=("Connection",))
    print("got:", resp)
    assert resp.status == 400, resp


def test_connection_without_upgrade_token_400(gw):
    print("check: GET /ws with 'Connection: keep-alive' only -> 400")
    resp, _ = upgrade(gw, connection="keep-alive")
    print("got:", resp)
    assert resp.status == 400, resp


def test_plain_get_ws_400(gw):
    print("check: plain GET /ws (no WebSocket headers at all) -> 400")
    r = H.http_get(gw.port, "/ws")
    print("got:", r)
    assert r.status == 400, r


@pytest.mark.parametrize("key", [
    "!!!not-base64!!!",
    base64.b64encode(os.urandom(15)).decode(),   # 15 bytes
    base64.b64encode(os.urandom(17)).decode(),   # 17 bytes
    "",
])
def test_bad_websocket_key_400(gw, key):
    print("check: Sec-WebSocket-Key %r (not base64 of 16 bytes) -> 400" % key)
    resp, _ = upgrade(gw, key=key)
    print("got:", resp)
    assert resp.status == 400, resp


def test_missing_websocket_key_400(gw):
    print("check: no Sec-WebSocket-Key -> 400")
    resp, _ = upgrade(gw, omit=("Sec-WebSocket-Key",))
    print("got:", resp)
    assert resp.status == 400, resp


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_non_get_upgrade_400(gw, method):
    print("check: %s /ws with upgrade headers -> 400" % method)
    req, _ = H.upgrade_request(gw.port, method=method,
                               extra={"Content-Length": "0"})
    resp = H.http_request(gw.port, req)
    print("got:", resp)
    assert resp.status == 400, resp


@pytest.mark.parametrize("version", ["12", "8", "14"])
def test_bad_version_426(gw, version):
    print("check: Sec-WebSocket-Version %s -> 426 with Sec-WebSocket-Version: 13" % version)
    resp, _ = upgrade(gw, version=version)
    print("got:", resp)
    assert resp.status == 426, resp
    assert "13" in [v.strip() for h in resp.header_all("sec-websocket-version")
                    for v in h.split(",")], resp


def test_missing_version_rejected(gw):
    print("check: no Sec-WebSocket-Version -> refused (400 or 426), not upgraded")
    resp, _ = upgrade(gw, omit=("Sec-WebSocket-Version",))
    print("got:", resp)
    assert resp.status in (400, 426), resp


@pytest.mark.parametrize("path", ["/nope", "/ws/extra", "/healthzz", "/wss"])
def test_unknown_path_404(gw, path):
    print("check: GET %s -> 404" % path)
    r = H.http_get(gw.port, path)
    print("got:", r)
    assert r.status == 404, r


def test_unknown_path_upgrade_404(gw):
    print("check: WebSocket upgrade on /chat (unknown path) -> 404")
    resp, _ = upgrade(gw, path="/chat")
    print("got:", resp)
    assert resp.status == 404, resp


def test_healthz_ok(gw):
    print("check: GET /healthz -> 200, body 'ok'")
    r = H.http_get(gw.port, "/healthz")
    print("got:", r)
    assert r.status == 200, r
    assert r.body.strip() == b"ok", r


def test_metrics_prometheus_text(gw):
    print("check: GET /metrics -> 200, Prometheus text with imgw_connections_open")
    r = H.http_get(gw.port, "/metrics")
    print("got status %d, %d bytes" % (r.status, len(r.body)))
    assert r.status == 200, r
    ctype = r.header("content-type") or ""
    print("content-type:", ctype)
    assert ctype.startswith("text/plain"), ctype
    text = r.body.decode()
    bad = [ln for ln in text.splitlines()
           if ln and not ln.startswith("#") and not H.METRIC_RE.match(ln)]
    assert not bad, "lines that are not Prometheus samples: %r" % bad[:5]
    names = {n for n, _, _ in H.parse_metrics(text)}
    print("metric names:", sorted(names)[:40])
    assert "imgw_connections_open" in names
    assert "# TYPE imgw_connections_open gauge" in text, "missing TYPE line"


@pytest.mark.parametrize("raw", [
    b"GARBAGE\r\n\r\n",
    b"GET\r\n\r\n",
    b"GET /healthz HTTP/9.9.9\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nno-colon-header\r\n\r\n",
])
def test_malformed_request_400(gw, raw):
    print("check: malformed request %r -> 400 and the connection closed" % raw)
    c = H.HTTPConn(gw.port)
    try:
        c.send(raw)
        resp = c.read_response()
        print("got:", resp)
        assert resp.status == 400, resp
        assert c.wait_closed(5.0), "connection not closed after a 400"
    finally:
        c.close()


def test_oversized_head_431(gw):
    print("check: request head over 8 KiB -> 431")
    raw = ("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n"
           % ("a" * 9000)).encode()
    c = H.HTTPConn(gw.port)
    try:
        c.send(raw)
        resp = c.read_response()
        print("got:", resp)
        assert resp.status == 431, resp
    finally:
        c.close()


def test_oversized_head_many_headers_431(gw):
    print("check: 200 headers of 50 bytes (~10 KiB head) -> 431")
    hdrs = "".join("X-H%03d: %s\r\n" % (i, "b" * 40) for i in range(200))
    raw = ("GET /ws HTTP/1.1\r\nHost: x\r\n%s\r\n" % hdrs).encode()
    c = H.HTTPConn(gw.port)
    try:
        c.send(raw)
        resp = c.read_response()
        print("got:", resp)
        assert resp.status == 431, resp
    finally:
        c.close()


def test_head_just_under_8k_ok(gw):
    print("check: a ~7 KiB head is still served (200)")
    raw = ("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\nConnection: close\r\n\r\n"
           % ("a" * 7000)).encode()
    resp = H.http_request(gw.port, raw)
    print("got:", resp)
    assert resp.status == 200, resp


def test_keepalive_two_requests(gw):
    print("check: two GET /healthz on one TCP connection (keep-alive) both answered")
    c = H.HTTPConn(gw.port)
    try:
        for i in range(2):
            c.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            r = c.read_response()
            print("response %d: %r" % (i + 1, r))
            assert r.status == 200, r
            assert r.body.strip() == b"ok"
    finally:
        c.close()


def test_keepalive_request_with_body(gw):
    print("check: a GET /healthz with a 5-byte body, then another request on the "
          "same connection: the body is skipped and both are answered 200")
    c = H.HTTPConn(gw.port)
    try:
        c.send("GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        r1 = c.read_response()
        c.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        r2 = c.read_response()
        print("responses:", r1, r2)
        assert r1.status == 200 and r2.status == 200
    finally:
        c.close()


def test_http10_healthz_closes(gw):
    print("check: HTTP/1.0 GET /healthz -> 200 'ok' and the server closes the connection")
    c = H.HTTPConn(gw.port)
    try:
        c.send("GET /healthz HTTP/1.0\r\n\r\n")
        r = c.read_response()
        print("got:", r)
        assert r.status == 200 and r.body.strip() == b"ok", r
        assert c.wait_closed(5.0), "HTTP/1.0 connection left open"
    finally:
        c.close()


def test_keepalive_pipelined(gw):
    print("check: two pipelined GET /healthz in one write -> two 200 responses")
    c = H.HTTPConn(gw.port)
    try:
        c.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
        for i in range(2):
            r = c.read_response()
            print("response %d: %r" % (i + 1, r))
            assert r.status == 200, r
    finally:
        c.close()


def test_idle_tcp_dropped_after_auth_timeout(server):
    s = server(auth_timeout=2)
    print("check: a TCP client that sends nothing is dropped after auth_timeout=2 "
          "(at least ~1s, within 10s)")
    c = H.HTTPConn(s.port)
    t0 = time.monotonic()
    try:
        closed = c.wait_closed(12.0)
        dt = time.monotonic() - t0
        print("closed=%s after %.2fs" % (closed, dt))
        assert closed, "idle connection still open after 12s"
        assert dt >= 0.9, "dropped too early (%.2fs) for auth_timeout=2" % dt
        assert dt <= 10.0
    finally:
        c.close()


def test_incomplete_head_dropped(server):
    s = server(auth_timeout=2)
    print("check: an incomplete request head is dropped after auth_timeout=2 (within 10s)")
    c = H.HTTPConn(s.port)
    t0 = time.monotonic()
    try:
        c.send("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        closed = c.wait_closed(12.0)
        dt = time.monotonic() - t0
        print("closed=%s after %.2fs" % (closed, dt))
        assert closed, "half-sent request still open after 12s"
        assert dt >= 0.9, "dropped too early (%.2fs)" % dt
        assert dt <= 10.0
    finally:
        c.close()


def test_trickled_head_still_dropped(server):
    s = server(auth_timeout=2)
    print("check: a slowloris client trickling header bytes is still dropped (within 10s)")
    c = H.HTTPConn(s.port)
    t0 = time.monotonic()
    closed = False
    try:
        c.send("GET /ws HTTP/1.1\r\n")
        while time.monotonic() - t0 < 12:
            try:
                c.send("X-A: b\r\n")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if c.wait_closed(0.3):
                closed = True
                break
        dt = time.monotonic() - t0
        print("closed=%s after %.2fs" % (closed, dt))
        assert closed and dt <= 10.0, "trickling client not dropped within 10s"
    finally:
        c.close()


def test_server_survives_garbage_then_serves(gw):
    print("check: after random garbage on a few connections, /healthz still 200")
    for i in range(5):
        try:
            c = H.HTTPConn(gw.port, timeout=2)
            c.send(os.urandom(512))
            try:
                c.read_response(timeout=2)
            except (OSError, ConnectionError, AssertionError):
                pass
            c.close()
        except OSError:
            pass
    r = H.http_get(gw.port, "/healthz")
    assert r.status == 200, r
