"""README.md's snippets, run as a new user would paste them (issue 18 item 3).

Every ```sh / ```js block of README.md carries a marker comment just above it:

  <!-- readme-test: shell token=USER -->   run with bash against a started
      node (make run's settings: the Makefile's secret, dev tokens on);
      `./build/` becomes the directory of the binary under test and
      127.0.0.1:8080 / localhost:8080 the node's port. The last line of the
      output must be a token for USER (or /dev/token's JSON holding one),
      and that token must log USER in.
  <!-- readme-test: console -->   pasted into the browser console of the
      node's page (http://<node>/) in headless Chromium, evaluated the way
      DevTools does (Runtime.evaluate in REPL mode: top-level await, const
      at top level); every frame it logs is checked, and bob, connected
      beforehand, must get its message live.
  <!-- readme-test: skip (reason) -->   not runnable here (builds, takes
      port 8080); the reason is required.

test_every_snippet_is_marked fails on an unmarked block, so a new snippet
cannot land untested by accident. test_make_run_dry_run checks what
`make run` would do (bind, build targets) without running it.
"""

import asyncio
import json
import os
import re
import subprocess
import time

import jwt
import pytest

import imgw_harness as H

README = os.path.join(H.REPO, "README.md")


def _make_run_secret():
    """make run's development secret, read from the Makefile itself so the
    README snippets are checked against what `make run` really uses."""
    with open(os.path.join(H.REPO, "Makefile")) as f:
        m = re.search(r"^IMGW__AUTH__JWT_SECRET \?= (\S+)$", f.read(), re.M)
    assert m, "Makefile lost its IMGW__AUTH__JWT_SECRET default"
    return m.group(1)


DEV_SECRET = _make_run_secret()
CHROMIUM = os.environ.get("IMGW_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("IMGW_CHROMEDRIVER", "/usr/bin/chromedriver")

MARK = re.compile(r"^<!--\s*readme-test:\s*(\w+)\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^```(\w*)\s*$")
CHECKED_LANGS = ("sh", "bash", "shell", "js", "javascript", "console")


def snippets():
    """[(line, lang, kind, args, code)] for every fenced block; kind None when
    the block has no marker."""
    lines = open(README, encoding="utf-8").read().splitlines()
    out, i, mark = [], 0, None
    while i < len(lines):
        m = MARK.match(lines[i])
        if m:
            mark = (m.group(1), m.group(2))
            i += 1
            continue
        f = FENCE.match(lines[i])
        if f:
            start, lang = i + 1, f.group(1)
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            code = "\n".join(lines[i + 1:j])
            kind, args = mark if mark else (None, "")
            out.append((start, lang, kind, args, code))
            mark, i = None, j + 1
            continue
        if lines[i].strip():
            mark = None  # a marker applies to the block right below it only
        i += 1
    return out


def marked(kind):
    return [s for s in snippets() if s[2] == kind]


def snippet_id(s):
    # pytest passes a placeholder when the list is empty (no marked block)
    return "line%d" % s[0] if isinstance(s, tuple) else str(s)


def test_every_snippet_is_marked():
    print("check: every sh/js block of README.md is marked tested or skip (with "
          "a reason), and there are tested shell and console blocks")
    blocks = snippets()
    for line, lang, kind, args, code in blocks:
        print("README.md:%d ```%s -> %s %s" % (line, lang, kind, args))
        if lang in CHECKED_LANGS:
            assert kind in ("shell", "console", "skip"), \
                "README.md:%d: ```%s block without a readme-test marker" % (line, lang)
            if kind == "skip":
                assert args.startswith("(") and len(args) > 4, \
                    "README.md:%d: skip needs a (reason)" % line
    assert marked("shell") and marked("console")


@pytest.fixture
def devnode(server):
    """A node configured like `make run` (dev secret, dev tokens on)."""
    return server(secret=DEV_SECRET, env={"auth.dev_tokens": "true"})


def localize(code, port):
    bindir = os.path.dirname(H.require_binary())
    code = code.replace("./build/", bindir + "/")
    for host in ("127.0.0.1:8080", "localhost:8080"):
        code = code.replace(host, "127.0.0.1:%d" % port)
    return code


async def login_with(node, user, token):
    c = await H.WSClient.connect(node)
    rsp = await c.auth(user, token)
    await c.close()
    return rsp


@pytest.mark.parametrize("snip", marked("shell"), ids=snippet_id)
def test_shell_snippet(devnode, snip):
    line, lang, kind, args, code = snip
    user = dict(a.split("=", 1) for a in args.split())["token"]
    cmd = localize(code, devnode.port)
    print("README.md:%d, as run:\n%s" % (line, cmd))
    r = subprocess.run(["bash", "-euo", "pipefail", "-c", cmd], cwd=H.REPO,
                       capture_output=True, text=True, timeout=30,
                       env=H.clean_env())
    print("exit %d\nstdout: %s\nstderr: %s" % (r.returncode, r.stdout, r.stderr))
    assert r.returncode == 0, r.stderr
    last = [l for l in r.stdout.splitlines() if l.strip()][-1].strip()
    token = json.loads(last)["token"] if last.startswith("{") else last
    claims = jwt.decode(token, DEV_SECRET, algorithms=["HS256"])
    print("token claims:", claims)
    assert claims["sub"] == user, claims
    rsp = H.run(login_with(devnode, user, token))
    print("login with it:", rsp)
    assert rsp.body.error_code == 0, rsp


class Browser:
    def __init__(self, tmpdir):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for a in ("--headless=new", "--no-sandbox", "--disable-gpu",
                  "--disable-dev-shm-usage", "--no-first-run",
                  "--disable-background-networking", "--disable-extensions",
                  "--user-data-dir=" + os.path.join(tmpdir, "chrome-readme")):
            opts.add_argument(a)
        self.d = webdriver.Chrome(
            service=Service(CHROMEDRIVER,
                            log_path=os.path.join(tmpdir, "chromedriver.log")),
            options=opts)
        self.d.set_page_load_timeout(20)

    def console(self, code):
        """Evaluates code as the DevTools console does."""
        return self.d.execute_cdp_cmd("Runtime.evaluate", {
            "expression": code, "replMode": True, "awaitPromise": True,
            "userGesture": True})

    def quit(self):
        self.d.quit()


@pytest.mark.parametrize("snip", marked("console"), ids=snippet_id)
def test_console_snippet(devnode, snip, tmp_path):
    line, lang, kind, args, code = snip
    print("README.md:%d: pasted into the console of http://127.0.0.1:%d/:\n%s"
          % (line, devnode.port, code))
    b = Browser(str(tmp_path))

    def paste():
        b.d.get("http://127.0.0.1:%d/" % devnode.port)
        b.console("window.__frames = []; { const log = console.log; "
                  "console.log = (...a) => { window.__frames.push(a.join(' ')); "
                  "log(...a); }; }")
        res = b.console(code)
        print("console result:", res)
        assert "exceptionDetails" not in res, res
        frames = []
        for _ in range(100):
            frames = b.d.execute_script("return window.__frames")
            if len(frames) >= 3:
                break
            time.sleep(0.1)
        return frames

    async def go():
        bob = await H.WSClient.connect(devnode)
        await bob.auth_ok("bob", H.make_token("bob", key=DEV_SECRET))
        frames = await asyncio.get_running_loop().run_in_executor(None, paste)
        push = await bob.recv_frame(timeout=10)
        await bob.close()
        return frames, push

    try:
        frames, push = H.run(go())
    finally:
        b.quit()
    print("frames logged by the snippet:")
    got = {}
    for f in frames:
        print("  " + f)
        j = json.loads(f)  # each one is a JSON frame, as the README says
        got[j["command"]] = j
    for cmd in ("CMD_AUTH_RSP", "CMD_HEARTBEAT_RSP", "CMD_SEND_MSG_RSP"):
        assert cmd in got, "%s not logged: %r" % (cmd, frames)
    for cmd in ("CMD_AUTH_RSP", "CMD_SEND_MSG_RSP"):
        assert got[cmd]["body"]["error_code"] == "ERR_SUCCESS", got[cmd]
    assert "server_time" in got["CMD_HEARTBEAT_RSP"]["body"], got
    print("bob got:", push)
    assert push.name == "CMD_PUSH_MSG", push
    assert push.body.sender_id == "alice" and push.body.content == b"hi", push


def test_make_run_dry_run():
    print("check: `make -n run` builds only imgw and imgw-token and starts imgw "
          "on 127.0.0.1 with dev tokens; RUN_BIND=0.0.0.0 opens it")
    env = H.clean_env()
    r = subprocess.run(["make", "-n", "run"], cwd=H.REPO, capture_output=True,
                       text=True, timeout=30, env=env)
    print(r.stdout, r.stderr)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    ninja = [l for l in lines if l.startswith("ninja ")]
    assert ninja and all(l.split()[3:] == ["imgw", "imgw-token"] for l in ninja), ninja
    start = [l for l in lines if "/imgw " in l and "DEV_TOKENS=true" in l]
    assert start and "IMGW__SERVER__BIND=127.0.0.1" in start[0], start
    print("check: `make run` keeps its history in the durable file store")
    assert "IMGW__STORE__BACKEND=file" in start[0], start
    assert "IMGW__STORE__PATH=data" in start[0], start
    r = subprocess.run(["make", "-n", "run", "RUN_BIND=0.0.0.0"], cwd=H.REPO,
                       capture_output=True, text=True, timeout=30, env=env)
    assert "IMGW__SERVER__BIND=0.0.0.0" in r.stdout, r.stdout
