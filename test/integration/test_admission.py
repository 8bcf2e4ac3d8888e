"""Admission control: max_connections (503), per-IP limit (429), handshake
rate (429), the Origin allow-list (403), each counted in /metrics."""
import os
import re
import resource
import socket
import time

import imgw_harness as H


def scrape(port, src="127.0.0.9"):
    """GET /metrics from another source address, so the scrape itself is
    not refused by the per-IP limit under test."""
    s = socket.socket()
    s.settimeout(5)
    s.bind((src, 0))
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:80]
    return body.decode()


def metric(port, name, labels):
    body = scrape(port)
    pat = r"^%s\{%s\} (\d+)$" % (re.escape(name), re.escape(labels))
    m = re.search(pat, body, re.M)
    assert m, "metric %s{%s} missing" % (name, labels)
    return int(m.group(1))


def upgrade_status(port, extra=None):
    raw, _ = H.upgrade_request(port, extra=extra)
    c = H.HTTPConn(port)
    try:
        c.send(raw)
        return c.read_response(head_only=True).status, c
    except Exception:
        c.close()
        raise


def test_max_connections(server):
    srv = server(threads=1, env={"server.max_connections": 3})
    held = []
    try:
        for i in range(3):
            st, c = upgrade_status(srv.port)
            print("connection", i, "->", st)
            assert st == 101
            held.append(c)
        st, c = upgrade_status(srv.port)
        held.append(c)
        print("4th connection over max_connections=3 ->", st)
        assert st == 503
    finally:
        for c in held:
            c.close()
    time.sleep(0.5)
    assert metric(srv.port, "imgw_refused_total",
                  'reason="max_connections"') >= 1
    # Capacity comes back once connections close.
    time.sleep(0.5)
    st, c = upgrade_status(srv.port)
    c.close()
    print("after closing them ->", st)
    assert st == 101


def test_per_ip_limit(server):
    srv = server(threads=2, env={"server.max_connections_per_ip": 2})
    held = []
    try:
        for i in range(2):
            st, c = upgrade_status(srv.port)
            held.append(c)
            assert st == 101
        st, c = upgrade_status(srv.port)
        held.append(c)
        print("3rd connection from 127.0.0.1 with limit 2 ->", st)
        assert st == 429
        # Another source address is a different client.
        s = socket.socket()
        s.bind(("127.0.0.2", 0))
        s.connect(("127.0.0.1", srv.port))
        raw, _ = H.upgrade_request(srv.port)
        s.sendall(raw)
        head = s.recv(200).decode("latin-1")
        s.close()
        print("from 127.0.0.2:", head.splitlines()[0])
        assert head.startswith("HTTP/1.1 101")
        assert metric(srv.port, "imgw_refused_total", 'reason="per_ip"') >= 1
    finally:
        for c in held:
            c.close()


def test_handshake_rate(server):
    srv = server(threads=1, env={"server.handshake_rate": 5})
    codes = []
    conns = []
    for _ in range(20):
        st, c = upgrade_status(srv.port)
        codes.append(st)
        conns.append(c)
    for c in conns:
        c.close()
    print("20 quick handshakes with handshake_rate=5:", codes)
    # The harness readiness probe spent one token.
    assert codes.count(101) >= 3
    assert 429 in codes
    time.sleep(1.2)
    st, c = upgrade_status(srv.port)
    c.close()
    print("after a second ->", st)
    assert st == 101
    assert metric(srv.port, "imgw_refused_total",
                  'reason="handshake_rate"') >= 1


def test_origin_allow_list(server):
    srv = server(threads=1,
                 env={"server.origins": "https://chat.example, http://localhost:3000"})
    st, c = upgrade_status(srv.port, extra={"Origin": "https://chat.example"})
    c.close()
    print("allowed Origin ->", st)
    assert st == 101
    st, c = upgrade_status(srv.port, extra={"Origin": "http://localhost:3000"})
    c.close()
    assert st == 101
    st, c = upgrade_status(srv.port, extra={"Origin": "https://evil.example"})
    c.close()
    print("foreign Origin ->", st)
    assert st == 403
    st, c = upgrade_status(srv.port)
    c.close()
    print("no Origin (non-browser client) ->", st)
    assert st == 101
    assert metric(srv.port, "imgw_refused_total", 'reason="origin"') == 1


def proc_cpu_ticks(pid):
    f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])  # utime + stime


def test_out_of_fds(server):
    """At RLIMIT_NOFILE the loop sheds what it cannot take (the reserve-fd
    trick: accept and close), keeps the connections it has, does not spin
    on the readable listener, and accepts again once fds are free."""
    srv = server(threads=1, auth_timeout=30)
    pid = srv.proc.pid
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    nfd = len(os.listdir("/proc/%d/fd" % pid))
    room = 4
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (nfd + room, hard))
    print("server has %d fds open; soft limit set to %d" % (nfd, nfd + room))
    socks = []
    try:
        for i in range(16):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            socks.append(s)
        time.sleep(1.0)
        shed, held = 0, 0
        for s in socks:
            s.settimeout(0.2)
            try:
                d = s.recv(1)
                shed += d == b""
            except socket.timeout:
                held += 1
            except ConnectionResetError:
                shed += 1
        cpu0 = proc_cpu_ticks(pid)
        time.sleep(1.0)
        cpu = proc_cpu_ticks(pid) - cpu0
        print("16 connects: %d held open, %d shed (closed at once); "
              "server CPU over 1 s while full: %d ticks" % (held, shed, cpu))
        assert held >= 1 and shed >= 1 and held + shed == 16
        assert "accept failed: too many open files" in srv.log_text()
    finally:
        for s in socks:
            s.close()
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    time.sleep(0.5)
    st, c = upgrade_status(srv.port)
    c.close()
    print("after the limit is lifted ->", st)
    assert st == 101
