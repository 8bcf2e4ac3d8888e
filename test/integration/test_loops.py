"""Reactor loops: connections spread over several loops (SO_REUSEPORT),
visible per loop in /metrics.

protocol.md sections 1 (/metrics), 9 (threads, ports).
"""

import asyncio

import imgw_harness as H
from imgw_harness import WSClient, make_token, run

N = 100


def conn_open_by_loop(port):
    r = H.http_get(port, "/metrics")
    assert r.status == 200, r
    per = {}
    for name, labels, v in H.parse_metrics(r.body.decode()):
        if name == "imgw_connections_open":
            assert "loop" in labels, "imgw_connections_open without a loop label: %r" % labels
            per[labels["loop"]] = per.get(labels["loop"], 0) + v
    return per, r.body.decode()


def test_connections_spread_over_loops(server):
    s = server(threads=4)
    print("check: -t 4, %d authenticated connections -> imgw_connections_open{loop} "
          "shows >1 loop in use and sums to %d" % (N, N))

    async def go():
        sem = asyncio.Semaphore(20)

        async def one(i):
            async with sem:
                c = await WSClient.connect(s)
                await c.auth_ok("loop-user-%d" % i, make_token("loop-user-%d" % i))
                return c

        clients = await asyncio.gather(*(one(i) for i in range(N)))
        await asyncio.sleep(0.3)
        per, text = conn_open_by_loop(s.port)
        print("per loop:", per)
        try:
            assert len(per) >= 1, "no imgw_connections_open samples:\n" + text
            used = [k for k, v in per.items() if v > 0]
            assert len(used) > 1, "all connections on one loop: %r" % per
            assert sum(per.values()) == N, "sum %r != %d: %r" % (sum(per.values()), N, per)
            for h in clients[:10]:
                await h.heartbeat()
        finally:
            await asyncio.gather(*(c.close() for c in clients))
        # after the clients are gone the gauges go back to 0
        for _ in range(50):
            per, _ = conn_open_by_loop(s.port)
            if sum(per.values()) == 0:
                break
            await asyncio.sleep(0.1)
        print("after close:", per)
        assert sum(per.values()) == 0, "connections_open not back to 0: %r" % per
    run(go())


def test_metrics_loop_labels_match_threads(server):
    s = server(threads=3)
    print("check: -t 3 -> imgw_connections_open has samples for loops 0,1,2")
    per, text = conn_open_by_loop(s.port)
    print("per loop:", per)
    assert sorted(per) == ["0", "1", "2"], per


# ---- one process per port (issue 18 item 1) -----------------------------
#
# Every loop's listener uses SO_REUSEPORT, which lets any process of the
# same user join the port: a second imgw on a port used to start without a
# word and the kernel split the clients between two separate stores. Now a
# second process is refused with exit status 3 and a message naming the
# holder, and the first keeps serving.

import os
import socket
import subprocess

EXIT_PORT_IN_USE = 3


def run_second(tmp_path, ports, bind="127.0.0.1", env=None, name="second"):
    """Starts another imgw on ports (a list) and expects it to exit by itself
    (a binary without the fix starts and is killed: a failure)."""
    ini = tmp_path / ("%s.ini" % name)
    ini.write_text("[server]\nports = %s\nbind = %s\n[auth]\njwt_secret = %s\n"
                   % (",".join(str(p) for p in ports), bind, H.DEFAULT_SECRET))
    cmd = [H.require_binary(), "-c", str(ini), "-t", "2", "-l", "info"]
    try:
        r = subprocess.run(cmd, env=H.clean_env(env), capture_output=True,
                           text=True, timeout=15)
    except subprocess.TimeoutExpired as e:
        raise AssertionError("second imgw on %r did not exit: it started and "
                             "shares the port (stderr %r)" % (ports, e.stderr))
    print("$ %s -> exit %d\nstderr: %s" % (" ".join(cmd), r.returncode,
                                          r.stderr[-1500:]))
    return r


def alice_to_bob_pairs(port, n=8, tag="p"):
    """n alice->bob pairs on fresh connections; every bob gets the push."""
    async def go():
        for i in range(n):
            a_id, b_id = "%s-alice-%d" % (tag, i), "%s-bob-%d" % (tag, i)
            url = "ws://127.0.0.1:%d/ws" % port
            b = await WSClient.connect(url)
            await b.auth_ok(b_id, make_token(b_id))
            a = await WSClient.connect(url)
            await a.auth_ok(a_id, make_token(a_id))
            rsp = await a.request("CMD_SEND_MSG_REQ", {
                "client_msg_id": "m%d" % i, "receiver_id": b_id,
                "message_type": 1, "content": b"hi"})
            assert rsp.body.error_code == 0, rsp
            push = await b.recv_frame(timeout=5)
            assert push.name == "CMD_PUSH_MSG", push
            await a.close()
            await b.close()
        print("%d of %d alice->bob pairs delivered live" % (n, n))
    run(go())


def test_second_process_same_port_refused(server, tmp_path):
    print("check: a second imgw on the first one's port exits %d naming the "
          "port and the first's pid; the first keeps serving every pair"
          % EXIT_PORT_IN_USE)
    first = server(threads=2)
    r = run_second(tmp_path, [first.port])
    assert r.returncode == EXIT_PORT_IN_USE, r.returncode
    want = ("port %d is already served by another imgw process (pid %d)"
            % (first.port, first.proc.pid))
    assert want in r.stderr, r.stderr
    assert first.proc.poll() is None, "the first process died"
    assert H.http_get(first.port, "/healthz").status == 200
    alice_to_bob_pairs(first.port)


def test_second_process_overlapping_address_refused(server, tmp_path):
    print("check: a second imgw on 0.0.0.0 with the port the first serves on "
          "127.0.0.1 is refused too (exit %d)" % EXIT_PORT_IN_USE)
    first = server(threads=2)
    r = run_second(tmp_path, [first.port], bind="0.0.0.0")
    assert r.returncode == EXIT_PORT_IN_USE, r.returncode
    assert "port %d on 0.0.0.0 is already in use" % first.port in r.stderr, r.stderr
    alice_to_bob_pairs(first.port, n=2, tag="ov")


def test_second_process_same_tls_port_refused(server, tmp_path):
    from test_tls import make_cert
    cert, key = make_cert(tmp_path)
    tls_port = H.free_port()
    first = server(threads=2, env={"tls.cert": cert, "tls.key": key,
                                   "tls.ports": tls_port})
    print("check: a second imgw sharing only the TLS port %d is refused" % tls_port)
    other = H.free_port()
    r = run_second(tmp_path, [other], env={"IMGW__TLS__CERT": cert,
                                           "IMGW__TLS__KEY": key,
                                           "IMGW__TLS__PORTS": str(tls_port)})
    assert r.returncode == EXIT_PORT_IN_USE, r.returncode
    assert ("port %d is already served by another imgw process (pid %d)"
            % (tls_port, first.proc.pid)) in r.stderr, r.stderr
    assert H.http_get(first.port, "/healthz").status == 200


def test_port_held_by_other_reuseport_program_refused(tmp_path, imgw_bin):
    print("check: a non-imgw program listening with SO_REUSEPORT on the port "
          "(which the kernel would let imgw join) makes imgw exit %d"
          % EXIT_PORT_IN_USE)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    port = s.getsockname()[1]
    try:
        r = run_second(tmp_path, [port])
    finally:
        s.close()
    assert r.returncode == EXIT_PORT_IN_USE, r.returncode
    assert "port %d on 127.0.0.1 is already in use" % port in r.stderr, r.stderr
