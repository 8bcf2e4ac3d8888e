"""Service registration with Nacos (HTTP open API v1), against a fake Nacos.

FakeNacos is a ThreadingHTTPServer on a free port that records every request
(method, path, query + form parameters, arrival time) and answers like Nacos:
"ok" for register / deregister, {"clientBeatInterval":5000,"code":10200} for
beats. Modes make beats answer "unknown instance" (HTTP 404, or 200 with
code 20404 as real Nacos does) or make DELETE hang, to test re-registration
and the 2 s deregistration budget.
"""

import json
import signal
import subprocess
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import imgw_harness as H

REG_PATH = "/nacos/v1/ns/instance"
BEAT_PATH = "/nacos/v1/ns/instance/beat"


class FakeNacos:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = []         # dicts: t, method, path, params, headers
        self.beat_unknown = 0      # answer this many beats with "unknown"
        self.unknown_style = 404   # 404, 20404 or 500 (old Nacos)
        self.hang_delete = False
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # close after each answer

            def log_message(self, *a):
                pass

            def _handle(self):
                u = urllib.parse.urlsplit(self.path)
                params = dict(urllib.parse.parse_qsl(u.query, keep_blank_values=True))
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                ctype = self.headers.get("Content-Type") or ""
                form = {}
                if body and "x-www-form-urlencoded" in ctype:
                    form = dict(urllib.parse.parse_qsl(body.decode(),
                                                       keep_blank_values=True))
                rec = {"t": time.monotonic(), "method": self.command,
                       "path": u.path, "query": params, "form": form,
                       "params": dict(params, **form),
                       "headers": dict(self.headers.items())}
                with fake.lock:
                    fake.requests.append(rec)
                    unknown = False
                    if self.command == "PUT" and u.path == BEAT_PATH and fake.beat_unknown > 0:
                        fake.beat_unknown -= 1
                        unknown = True
                if self.command == "DELETE" and fake.hang_delete:
                    time.sleep(8)
                if self.command == "PUT" and u.path == BEAT_PATH:
                    if unknown and fake.unknown_style == 404:
                        self._send(404, b"caused: instance not found")
                    elif unknown and fake.unknown_style == 500:
                        self._send(500, b"caused: service not found: imgw-test")
                    elif unknown:
                        self._send(200, b'{"clientBeatInterval":5000,"code":20404}',
                                   "application/json")
                    else:
                        self._send(200, b'{"clientBeatInterval":5000,"code":10200}',
                                   "application/json")
                elif u.path == REG_PATH and self.command in ("POST", "DELETE"):
                    self._send(200, b"ok")
                else:
                    self._send(404, b"no such api")

            def _send(self, code, body, ctype="text/plain"):
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass

            do_POST = do_PUT = do_DELETE = do_GET = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def of(self, method, path):
        with self.lock:
            return [r for r in self.requests if r["method"] == method and r["path"] == path]

    def registers(self):
        return self.of("POST", REG_PATH)

    def beats(self):
        return self.of("PUT", BEAT_PATH)

    def deregisters(self):
        return self.of("DELETE", REG_PATH)

    def wait_for(self, pred, timeout, what):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return
            time.sleep(0.05)
        with self.lock:
            seen = [(r["method"], r["path"], r["params"].get("port")) for r in self.requests]
        raise AssertionError("timed out after %.1fs waiting for %s; requests: %r"
                             % (timeout, what, seen))


@pytest.fixture
def nacos():
    f = FakeNacos()
    yield f
    f.close()


def nacos_env(port, interval=1, **extra):
    env = {"nacos.server": "127.0.0.1:%d" % port,
           "nacos.beat_interval": interval,
           "nacos.service": "imgw-test"}
    env.update(extra)
    return env


def by_port(reqs):
    out = {}
    for r in reqs:
        out.setdefault(int(r["params"]["port"]), []).append(r)
    return out


def test_register_beat_deregister(server, nacos):
    s = server(threads=1, n_ports=2, broker_id="node-a", env=nacos_env(nacos.port))
    print("check: one POST %s per WebSocket port (form body) with serviceName, "
          "groupName, ip, port, ephemeral/healthy/enabled/weight and metadata "
          "{broker_id, protocol=ws, version}" % REG_PATH)
    nacos.wait_for(lambda: len(by_port(nacos.registers())) == 2, 5, "2 registers")
    regs = by_port(nacos.registers())
    assert sorted(regs) == sorted(s.ports), (sorted(regs), s.ports)
    for port, rs in regs.items():
        r = rs[0]
        p = r["form"]
        print("register port %d: %r" % (port, p))
        assert r["query"] == {}, "register parameters belong in the form body"
        assert p["serviceName"] == "imgw-test"
        assert p["groupName"] == "DEFAULT_GROUP"
        assert "namespaceId" not in p, "no namespaceId when nacos.namespace is empty"
        assert p["ip"] == "127.0.0.1"
        assert p["ephemeral"] == "true" and p["healthy"] == "true"
        assert p["enabled"] == "true" and float(p["weight"]) == 1
        meta = json.loads(p["metadata"])
        assert meta == {"broker_id": "node-a", "protocol": "ws",
                        "version": meta.get("version")}, meta
        assert meta["version"], meta
        assert r["headers"].get("Connection", "").lower() == "close"
        assert len(rs) == 1, "registered port %d %d times" % (port, len(rs))

    print("check: a PUT %s per port about every second (beat_interval=1) "
          "with the beat JSON" % BEAT_PATH)
    nacos.wait_for(lambda: all(len(v) >= 3 for v in by_port(nacos.beats()).values())
                   and len(by_port(nacos.beats())) == 2, 8, "3 beats per port")
    for port, bs in by_port(nacos.beats()).items():
        gaps = [round(b["t"] - a["t"], 2) for a, b in zip(bs, bs[1:])]
        print("beats port %d: gaps %r" % (port, gaps))
        assert all(0.5 <= g <= 2.0 for g in gaps), gaps
        q = bs[0]["query"]
        assert q["serviceName"] == "imgw-test" and q["ip"] == "127.0.0.1"
        assert q["ephemeral"] == "true"
        beat = json.loads(q["beat"])
        print("beat JSON:", beat)
        assert beat["port"] == port and beat["ip"] == "127.0.0.1"
        assert beat["serviceName"].endswith("imgw-test")
        assert beat["cluster"] == "DEFAULT" and beat["scheduled"] is True
        assert beat["metadata"]["broker_id"] == "node-a"
    assert len(nacos.registers()) == 2, "no re-register while beats succeed"

    print("check: SIGTERM -> one DELETE %s per port before the process exits, "
          "exit code 0" % REG_PATH)
    s.signal(signal.SIGTERM)
    code = s.wait_exit(15)
    t_exit = time.monotonic()
    s.stopped = True
    print("exit code:", code)
    assert code == 0
    dels = by_port(nacos.deregisters())
    print("deregistered ports:", sorted(dels), "server ports:", s.ports)
    assert sorted(dels) == sorted(s.ports)
    for port, ds in dels.items():
        q = ds[0]["query"]
        assert q["serviceName"] == "imgw-test" and q["groupName"] == "DEFAULT_GROUP"
        assert q["ip"] == "127.0.0.1" and q["ephemeral"] == "true"
        assert ds[0]["t"] <= t_exit
    assert "nacos: deregistered" in s.log_text()


@pytest.mark.parametrize("style", [404, 20404, 500],
                         ids=["http404", "code20404", "http500"])
def test_unknown_beat_reregisters(server, nacos, style):
    nacos.unknown_style = style
    s = server(threads=1, env=nacos_env(nacos.port, **{"nacos.namespace": "ns-1",
                                                       "nacos.group": "G1"}))
    print("check: a beat answered %s makes imgw register again at once "
          "(namespaceId/groupName carried)"
          % {404: "HTTP 404", 20404: '200 {"code":20404}',
             500: "HTTP 500 (old Nacos: service not found)"}[style])
    nacos.wait_for(lambda: len(nacos.registers()) == 1, 5, "first register")
    r0 = nacos.registers()[0]["form"]
    assert r0["namespaceId"] == "ns-1" and r0["groupName"] == "G1", r0
    nacos.wait_for(lambda: len(nacos.beats()) >= 1, 5, "first beat")
    with nacos.lock:
        nacos.beat_unknown = 1
    n_beats = len(nacos.beats())
    nacos.wait_for(lambda: len(nacos.registers()) >= 2, 5, "a second register")
    regs = nacos.registers()
    beats = nacos.beats()
    unknown_beat = beats[n_beats]
    delay = regs[1]["t"] - unknown_beat["t"]
    print("re-register %.3fs after the unknown beat" % delay)
    assert delay < 0.5, "re-register should follow the unknown beat at once"
    assert regs[1]["form"]["port"] == str(s.port)
    nacos.wait_for(lambda: len(nacos.beats()) >= n_beats + 3, 5,
                   "beats after re-registration")
    assert len(nacos.registers()) == 2, "registered more than once more"
    if style == 500:
        assert "beat of 127.0.0.1:%d answered 500" % s.port in s.log_text()
    else:
        assert "registering again" in s.log_text()


@pytest.mark.parametrize("how", ["refused", "unresolvable"])
def test_nacos_down_server_runs(server, how):
    env = nacos_env(H.free_port())  # nothing listens there
    if how == "unresolvable":
        env["nacos.server"] = "nacos.invalid:8848"
    s = server(threads=1, env=env)
    print("check: Nacos %s (%s) -> server runs (healthz 200), warnings are "
          "logged at a bounded rate, SIGTERM still exits 0 quickly"
          % (how, env["nacos.server"]))
    time.sleep(3.5)
    r = H.http_get(s.port, "/healthz")
    assert r.status == 200
    log = s.log_text()
    warns = [l for l in log.splitlines() if "nacos:" in l and
             ("failed" in l or "cannot resolve" in l)]
    print("%d nacos warning lines, e.g. %r" % (len(warns), warns[:1]))
    assert warns, "no warning about the unreachable Nacos"
    assert len(warns) <= 8, "warnings are not rate-limited: %d lines" % len(warns)
    t0 = time.monotonic()
    s.signal(signal.SIGTERM)
    code = s.wait_exit(10)
    s.stopped = True
    print("exit code %s after %.2fs" % (code, time.monotonic() - t0))
    assert code == 0


def test_deregister_timeout(server, nacos):
    nacos.hang_delete = True
    s = server(threads=1, drain_seconds=1, env=nacos_env(nacos.port))
    print("check: a Nacos that never answers DELETE delays shutdown by at most "
          "about 2 s; exit code 0")
    nacos.wait_for(lambda: len(nacos.registers()) == 1, 5, "register")
    t0 = time.monotonic()
    s.signal(signal.SIGTERM)
    code = s.wait_exit(10)
    s.stopped = True
    took = time.monotonic() - t0
    print("exit code %s after %.2fs" % (code, took))
    assert code == 0
    assert len(nacos.deregisters()) == 1
    assert took < 6, took
    assert "did not finish" in s.log_text()


@pytest.mark.parametrize("value", ["nacoshost", "127.0.0.1:", "127.0.0.1:99999",
                                   "127.0.0.1:88x", ":8848", "::1:8848"])
def test_bad_server_exit_2(imgw_bin, tmp_path, value):
    print("check: nacos.server=%r -> exit 2, stderr names nacos.server" % value)
    ini = tmp_path / "bad.ini"
    ini.write_text("[server]\nports = %d\nbind = 127.0.0.1\n" % H.free_port())
    env = H.clean_env({"IMGW__NACOS__SERVER": value})
    r = subprocess.run([imgw_bin, "-c", str(ini), "-t", "1"], env=env,
                       capture_output=True, text=True, timeout=10)
    print("exit %d, stderr: %s" % (r.returncode, r.stderr.strip()[-300:]))
    assert r.returncode == 2
    assert "nacos.server" in r.stderr


def test_hostname_and_wss(server, nacos, tmp_path):
    from test_tls import make_cert
    cert, key = make_cert(tmp_path)
    tls_port = H.free_port()
    env = nacos_env(nacos.port)
    env.update({"nacos.server": "localhost:%d" % nacos.port,
                "tls.cert": cert, "tls.key": key, "tls.ports": tls_port})
    s = server(threads=1, env=env)
    print("check: nacos.server=localhost:PORT is resolved (uv_getaddrinfo); "
          "server.ports register with protocol ws, tls.ports with wss")
    nacos.wait_for(lambda: len(by_port(nacos.registers())) == 2, 5, "2 registers")
    regs = by_port(nacos.registers())
    protos = {p: json.loads(rs[0]["form"]["metadata"])["protocol"]
              for p, rs in regs.items()}
    print("protocols:", protos)
    assert protos == {s.port: "ws", tls_port: "wss"}
    assert regs[s.port][0]["headers"].get("Host") == "localhost:%d" % nacos.port
