"""pytest harness for the imgw integration suite.

Run:  cd /work/main && /usr/bin/python3 -m pytest -q test/integration
Binary: $IMGW_BIN or build/imgw (relative to the repository root).

Fixtures
  server        factory: server(threads=2, auth_timeout=2, env={...}, ini={...},
                secret=..., n_ports=1, ports_via_env=False, config_mode="flag")
                -> started ServerProc (.port .ports .url .proc .log_text());
                stopped with SIGTERM at teardown (SIGKILL after 10 s), exit
                code 0 required unless the test stopped it itself (stopped=True).
                Shorthand kwargs (auth_timeout, heartbeat_timeout, drain_seconds,
                max_frame_bytes, leeway, ...) become IMGW__SECTION__KEY env vars;
                ini={...} goes into the INI file; config_mode: "flag" (-c/-t/-l),
                "long" (--config ...), "cwd" (conf/imgw.ini, no -c), "env" (no file).
  gw            module-scoped default server (2 loops, HS256 secret, defaults)
  imgw_bin      path of the binary (fails clearly when missing)
  jwt_keys      RSA / EC key pairs + public PEM files (session scope)
  tmp_path      (pytest builtin) per-test temporary directory
On a failing test the tail of every server log started by it is attached to
the report ("imgw log" sections).
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import imgw_harness as H  # noqa: E402

from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: E402


@pytest.fixture(scope="session")
def imgw_bin():
    try:
        return H.require_binary()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
    servers = list(getattr(item, "_imgw_servers", []))
    for v in getattr(item, "funcargs", {}).values():
        if isinstance(v, H.ServerProc) and v not in servers:
            servers.append(v)
    if rep.failed and servers:
        for s in servers:
            rep.sections.append((
                "imgw log (%s, port %s, exit %s)" % (s.name, s.port, s.exit_code),
                "cmd: %s\n%s" % (s.describe(), s.log_tail(80))))


@pytest.fixture
def server(request, tmp_path, imgw_bin):
    """Factory fixture: start an imgw with overrides; stops them at teardown."""
    started = []
    request.node._imgw_servers = started

    def factory(threads=2, log_level="info", args=None, ini=None, env=None,
                secret=H.DEFAULT_SECRET, start=True, n_ports=1,
                ports_via_env=False, config_mode="flag", **overrides):
        name = "imgw%d" % len(started)
        s = H.build_server(str(tmp_path), name, threads=threads,
                           log_level=log_level, args=args, ini=ini, env=env,
                           secret=secret, n_ports=n_ports,
                           ports_via_env=ports_via_env,
                           config_mode=config_mode, **overrides)
        started.append(s)
        if start:
            s.start()
        return s

    yield factory
    stop_and_check(started)


def stop_and_check(started):
    problems = []
    for s in started:
        if s.proc is None:
            continue
        already = s.stopped
        code, killed = s.stop(timeout=10.0)
        print("[harness] %s (port %s) exit code %s%s" % (
            s.name, s.port, code, " (SIGKILLed after 10s)" if killed else ""))
        if already:
            continue  # the test stopped it and checked the code itself
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


@pytest.fixture(scope="module")
def gw(tmp_path_factory, imgw_bin):
    """One default server shared by a module (auth_timeout=10 default,
    heartbeat_timeout default). Tests needing other config use `server`."""
    d = tmp_path_factory.mktemp("gw")
    s = H.build_server(str(d), "gw", threads=2)
    s.start()
    yield s
    stop_and_check([s])


@pytest.fixture(scope="session")
def jwt_keys(tmp_path_factory):
    """Key pairs for RS256 / ES256 (and a second pair of each: 'wrong key')."""
    d = tmp_path_factory.mktemp("keys")
    keys = {}

    def pem_pub(k):
        return k.public_key().public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo)

    keys["rsa"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys["rsa_other"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys["ec"] = ec.generate_private_key(ec.SECP256R1())
    keys["ec_other"] = ec.generate_private_key(ec.SECP256R1())
    for name in ("rsa", "ec"):
        p = d / ("%s_pub.pem" % name)
        p.write_bytes(pem_pub(keys[name]))
        keys[name + "_pub_path"] = str(p)
        keys[name + "_pub_pem"] = pem_pub(keys[name])
    return keys
