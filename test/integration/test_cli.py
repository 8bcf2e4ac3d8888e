"""Command line and configuration (operators' contract).

protocol.md section 9 and section 10 (Config).
"""

import re
import subprocess

import pytest

import imgw_harness as H


def run_imgw(args, env_extra=None, cwd=None, timeout=10):
    """Run imgw to completion. A port is always configured so that a binary
    which wrongly starts does not grab 8080; it is killed on timeout."""
    binp = H.require_binary()
    env = H.clean_env(env_extra)
    try:
        r = subprocess.run([binp] + args, env=env, cwd=cwd, capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise AssertionError("imgw %s did not exit within %ds (it started?) "
                             "stdout=%r stderr=%r" % (args, timeout, e.stdout, e.stderr))
    print("$ imgw %s -> exit %d\nstdout: %s\nstderr: %s"
          % (" ".join(args), r.returncode, r.stdout[-2000:], r.stderr[-2000:]))
    return r


@pytest.fixture
def good_ini(tmp_path):
    p = tmp_path / "good.ini"
    p.write_text("[server]\nports = %d\nbind = 127.0.0.1\n" % H.free_port())
    return str(p)


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(imgw_bin, flag):
    print("check: imgw %s prints a version and exits 0" % flag)
    r = run_imgw([flag])
    assert r.returncode == 0
    assert re.search(r"\d+\.\d+\.\d+", r.stdout + r.stderr), "no version number printed"


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help(imgw_bin, flag):
    print("check: imgw %s prints usage and exits 0" % flag)
    r = run_imgw([flag])
    assert r.returncode == 0
    out = r.stdout + r.stderr
    for opt in ("--config", "--threads", "--version", "--help"):
        assert opt in out, "%s missing from --help" % opt


def test_unknown_env_var_exit_2(imgw_bin, good_ini):
    print("check: IMGW__SERVER__NOPE=1 -> exit 2, stderr names the variable")
    r = run_imgw(["-c", good_ini], {"IMGW__SERVER__NOPE": "1"})
    assert r.returncode == 2
    assert "IMGW__SERVER__NOPE" in r.stderr, r.stderr


def test_unknown_env_section_exit_2(imgw_bin, good_ini):
    print("check: IMGW__NOSECTION__PORTS=1 -> exit 2, stderr names the variable")
    r = run_imgw(["-c", good_ini], {"IMGW__NOSECTION__PORTS": "1"})
    assert r.returncode == 2
    assert "IMGW__NOSECTION__PORTS" in r.stderr, r.stderr


def _names_key(stderr, section, key):
    s = stderr.lower()
    return ("%s.%s" % (section, key)) in s or H.env_name(section, key).lower() in s


@pytest.mark.parametrize("key,value", [("threads", "abc"), ("threads", "-1"),
                                       ("auth_timeout", "10x"), ("ports", "70000")])
def test_bad_env_value_exit_2(imgw_bin, good_ini, key, value):
    print("check: IMGW__SERVER__%s=%s -> exit 2, stderr names server.%s"
          % (key.upper(), value, key))
    r = run_imgw(["-c", good_ini], {H.env_name("server", key): value})
    assert r.returncode == 2
    assert _names_key(r.stderr, "server", key), r.stderr


def test_missing_config_file_exit_2(imgw_bin, tmp_path):
    print("check: -c /nonexistent.ini -> exit 2")
    missing = str(tmp_path / "does-not-exist.ini")
    r = run_imgw(["-c", missing])
    assert r.returncode == 2
    assert "does-not-exist.ini" in r.stderr, "error should name the file"


def test_unknown_ini_key_exit_2(imgw_bin, tmp_path):
    print("check: an unknown key in the INI file -> exit 2 naming it")
    p = tmp_path / "bad.ini"
    p.write_text("[server]\nports = %d\nbogus_key = 1\n" % H.free_port())
    r = run_imgw(["-c", str(p)])
    assert r.returncode == 2
    assert "bogus_key" in r.stderr, r.stderr


def test_bad_ini_value_exit_2(imgw_bin, tmp_path):
    print("check: [server] heartbeat_timeout = soon -> exit 2 naming server.heartbeat_timeout")
    p = tmp_path / "bad.ini"
    p.write_text("[server]\nports = %d\nheartbeat_timeout = soon\n" % H.free_port())
    r = run_imgw(["-c", str(p)])
    assert r.returncode == 2
    assert _names_key(r.stderr, "server", "heartbeat_timeout"), r.stderr


def test_bad_cli_threads_exit_2(imgw_bin, good_ini):
    print("check: -t abc -> exit 2")
    r = run_imgw(["-c", good_ini, "-t", "abc"])
    assert r.returncode == 2


def test_unknown_cli_option_exit_2(imgw_bin, good_ini):
    print("check: an unknown option --frobnicate -> exit 2")
    r = run_imgw(["-c", good_ini, "--frobnicate"])
    assert r.returncode == 2


def test_env_overrides_file(server):
    print("check: env beats file: file auth_timeout=30, IMGW__SERVER__AUTH_TIMEOUT=1 "
          "-> an idle WebSocket is closed 4001 well before 30s")
    s = server(ini={"server": {"auth_timeout": 30}}, auth_timeout=1)

    async def go():
        c = await H.WSClient.connect(s)
        await c.expect_close(4001, timeout=10)
    H.run(go())


def test_cli_threads_beats_env(server):
    print("check: CLI > env: IMGW__SERVER__THREADS=1 with -t 3 -> 3 loops in /metrics")
    s = server(threads=3, env={"server.threads": 1})
    r = H.http_get(s.port, "/metrics")
    loops = {l["loop"] for n, l, v in H.parse_metrics(r.body.decode())
             if n == "imgw_connections_open" and "loop" in l}
    print("loops:", loops)
    assert loops == {"0", "1", "2"}, loops


def test_two_ports_via_env(server):
    print("check: IMGW__SERVER__PORTS=p1,p2 (env, no ports in the file) -> both "
          "ports serve /healthz and WebSocket")
    s = server(n_ports=2, ports_via_env=True)
    print("ports:", s.ports, s.describe())
    for p in s.ports:
        r = H.http_get(p, "/healthz")
        print("port", p, "->", r.status)
        assert r.status == 200, (p, r)

    async def go():
        for p in s.ports:
            c = await H.WSClient.connect("ws://127.0.0.1:%d/ws" % p)
            await c.auth_ok("twoports-%d" % p, H.make_token("twoports-%d" % p))
            await c.close()
    H.run(go())


def test_long_options(server):
    print("check: --config FILE --threads 3 --log-level info work like -c/-t/-l")
    s = server(threads=3, config_mode="long")
    r = H.http_get(s.port, "/metrics")
    loops = {l["loop"] for n, l, v in H.parse_metrics(r.body.decode())
             if n == "imgw_connections_open" and "loop" in l}
    assert loops == {"0", "1", "2"}, loops


def test_default_config_file_in_cwd(server):
    print("check: without -c, conf/imgw.ini (relative to the working dir) is read")
    s = server(config_mode="cwd", auth_timeout=2)
    print("ini:", s.ini_path, s.describe())
    r = H.http_get(s.port, "/healthz")
    assert r.status == 200, r


def test_no_config_file_uses_defaults(server):
    print("check: without -c and without conf/imgw.ini, built-in defaults + env run "
          "(everything given as IMGW__* variables)")
    s = server(config_mode="env")
    print(s.describe())
    r = H.http_get(s.port, "/healthz")
    assert r.status == 200, r

    async def go():
        c = await H.WSClient.connect(s)
        await c.auth_ok("envonly", H.make_token("envonly"))
        await c.close()
    H.run(go())


def test_log_level_cli_beats_imgw_log(server):
    # Contract change (issue 18 item 8): -l used to lose to IMGW_LOG, against
    # the documented "command line > environment"; now -l wins like every
    # other option, and IMGW_LOG still applies when -l is absent.
    print("check: -l error with IMGW_LOG=info -> no INFO lines (-l wins); "
          "IMGW_LOG=error without -l -> no INFO lines; -l info -> INFO lines")
    body = lambda t: "\n".join(l for l in t.splitlines() if not l.startswith("=== "))
    quiet = server(log_level="error", env={"IMGW_LOG": "info"})
    loud = server(log_level="info", env={"IMGW_LOG": "error"})
    print("-l error, IMGW_LOG=info:\n" + quiet.log_text())
    print("-l info, IMGW_LOG=error:\n" + loud.log_text())
    assert "INFO" not in body(quiet.log_text()), "IMGW_LOG=info beat -l error"
    assert "INFO" in body(loud.log_text()), "IMGW_LOG=error beat -l info"


def test_imgw_log_without_cli_sets_level(imgw_bin, good_ini):
    print("check: no -l, IMGW_LOG=error -> the INFO startup lines are gone; "
          "IMGW_LOG=info -> they are there (imgw -c FILE, stopped by SIGTERM)")
    import signal
    import time
    out = {}
    for lvl in ("error", "info"):
        p = subprocess.Popen([imgw_bin, "-c", good_ini, "-t", "1"],
                             env=H.clean_env({"IMGW_LOG": lvl}),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
        port = int(re.search(r"ports = (\d+)", open(good_ini).read()).group(1))
        for _ in range(200):
            try:
                if H.http_get(port, "/healthz", timeout=1.0).status == 200:
                    break
            except OSError:
                time.sleep(0.05)
        p.send_signal(signal.SIGTERM)
        out[lvl] = p.communicate(timeout=15)[0]
        print("IMGW_LOG=%s:\n%s" % (lvl, out[lvl]))
        assert p.returncode == 0, p.returncode
    assert "INFO" not in out["error"]
    assert "INFO" in out["info"]


def test_dev_token_says_which_rule_failed(server):
    print("check: GET /dev/token with a bad user names the rule (400), "
          "not 'user required'")
    s = server(env={"auth.dev_tokens": "true"})
    cases = [("/dev/token?user=a%20b", "spaces"),
             ("/dev/token?user=a+b", "spaces"),
             ("/dev/token?user=a%2Fb", "'/'"),
             ("/dev/token?user=a%01b", "control"),
             ("/dev/token?user=", "empty"),
             ("/dev/token?user=" + "x" * 200, "too long"),
             ("/dev/token", "user required")]
    for path, want in cases:
        r = H.http_get(s.port, path)
        print("%s -> %d %s" % (path[:40], r.status, r.body))
        assert r.status == 400, r
        assert want in r.body.decode(), (path, r.body)
    r = H.http_get(s.port, "/dev/token?user=alice")
    print("/dev/token?user=alice ->", r.status)
    assert r.status == 200 and b'"user":"alice"' in r.body, r


def test_bad_log_level_exit_2(imgw_bin, good_ini):
    print("check: -l chatty (not a level) -> exit 2")
    r = run_imgw(["-c", good_ini, "-l", "chatty"])
    assert r.returncode == 2


def test_info_log_shows_logins_capped(server):
    print("check: at info, logins, refused logins and disconnects get one line "
          "each for the first 20 events, then nothing per event (no flood)")
    import time
    s = server(threads=2)

    async def go():
        c = await H.WSClient.connect(s)
        await c.auth_ok("log-alice", H.make_token("log-alice"), platform="Web")
        await c.close()
        bad = await H.WSClient.connect(s)
        await bad.auth("log-mallory", H.make_token("log-mallory", key="wrong"))
        await bad.expect_close(4001)
        for i in range(30):
            c = await H.WSClient.connect(s)
            await c.auth_ok("log-u%d" % i, H.make_token("log-u%d" % i))
            await c.close()
    H.run(go())
    text = ""
    for _ in range(50):  # the disconnect lines are written as the closes land
        text = s.log_text()
        if text.count("further logins") == 1:
            break
        time.sleep(0.1)
    print(text)
    assert "user log-alice logged in (platform Web)" in text
    assert "user log-alice disconnected (platform Web)" in text
    assert "login refused: " in text
    events = [l for l in text.splitlines()
              if " logged in (" in l or " disconnected (" in l or "login refused" in l]
    assert len(events) == 20, len(events)
    assert "further logins and disconnects: one summary line per minute" in events[-1]
