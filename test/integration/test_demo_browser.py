"""The browser demo at GET / (www/index.html, embedded in the binary).

* test_page_*, test_dev_*: plain HTTP, no browser: the page, its headers,
  and the dev-only endpoints (/dev/token, /dev/group) being 404 unless
  auth.dev_tokens = true.
* test_two_browsers_chat: headless Chromium (Debian's chromium +
  chromium-driver, driven by python3-selenium; all installed by
  deps/install.sh). Two browsers (alice, bob) log in, chat 1:1 and in a
  group, see typing, read receipts and revokes, and bob's history survives
  a reload (sync). Screenshots of both pages go to the test's tmp dir and
  alice's to docs/demo.png. A missing browser is a FAILURE, not a skip.

Run: /usr/bin/python3 -m pytest -q -s test/integration/test_demo_browser.py
Env: IMGW_CHROMIUM (default /usr/bin/chromium), IMGW_CHROMEDRIVER
(default /usr/bin/chromedriver), IMGW_DEMO_PNG (default docs/demo.png;
empty: don't copy).
"""

import os
import shutil
import time

import pytest

import imgw_harness as H

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHROMIUM = os.environ.get("IMGW_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("IMGW_CHROMEDRIVER", "/usr/bin/chromedriver")
DEMO_PNG = os.environ.get("IMGW_DEMO_PNG", os.path.join(REPO, "docs", "demo.png"))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DEV = {"auth.dev_tokens": "true"}


def step(msg):
    print("[demo] " + msg, flush=True)


def http(port, method, path, headers=None):
    h = "".join("%s: %s\r\n" % kv for kv in (headers or {}).items())
    raw = ("%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%sContent-Length: 0\r\n"
           "Connection: close\r\n\r\n" % (method, path, port, h))
    return H.http_request(port, raw)


# ---------------------------------------------------------------------------
# plain HTTP


def check_page(r):
    assert r.status == 200, r
    assert r.header("content-type") == "text/html; charset=utf-8"
    assert r.header("cache-control") == "no-cache"
    assert r.header("x-content-type-options") == "nosniff"
    csp = r.header("content-security-policy") or ""
    for part in ("default-src 'none'", "script-src 'unsafe-inline'",
                 "style-src 'unsafe-inline'", "connect-src 'self' ws: wss:"):
        assert part in csp, csp
    assert int(r.header("content-length")) == len(r.body)
    with open(os.path.join(REPO, "www", "index.html"), "rb") as f:
        assert r.body == f.read(), "served page differs from www/index.html"
    assert b'data-testid="login-user"' in r.body


def test_page_served_with_headers(server):
    s = server()  # dev tokens off: the page is served all the same
    for path in ("/", "/index.html", "/?user=x", "/index.html?v=2"):
        step("GET %s -> 200 text/html, no-cache, nosniff, CSP, body = www/index.html" % path)
        check_page(H.http_get(s.port, path))
    for method in ("POST", "PUT", "DELETE", "HEAD"):
        r = http(s.port, method, "/")
        step("%s / -> %d" % (method, r.status))
        assert r.status == 405 and r.header("allow") == "GET", r
    for path in ("/index.htm", "/www/index.html", "/../www/index.html",
                 "/%2e%2e/www/index.html", "/index.html/", "//", "/favicon.ico"):
        r = H.http_get(s.port, path)
        step("GET %s -> %d" % (path, r.status))
        assert r.status in (400, 404), r


def test_page_keep_alive_pipelined(server):
    """A keep-alive connection gets the whole page, then the next answer."""
    s = server()
    c = H.HTTPConn(s.port)
    try:
        c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        check_page(c.read_response())
        r = c.read_response()
        assert r.status == 200 and r.body == b"ok", r
    finally:
        c.close()
    step("pipelined GET / then /healthz on one connection: both answered")


def test_dev_endpoints_off_by_default(server):
    s = server()
    r = H.http_get(s.port, "/dev/token?user=alice")
    step("dev_tokens off: GET /dev/token -> %d" % r.status)
    assert r.status == 404, r
    r = http(s.port, "POST", "/dev/group?gid=g1&members=alice,bob")
    step("dev_tokens off: POST /dev/group -> %d" % r.status)
    assert r.status == 404, r
    s2 = server(env=DEV, secret=None)
    r = H.http_get(s2.port, "/dev/token?user=alice")
    step("dev_tokens on but no jwt_secret: GET /dev/token -> %d" % r.status)
    assert r.status == 404, r
    r = http(s2.port, "POST", "/dev/group?gid=g1&members=alice,bob")
    step("dev_tokens on but no jwt_secret: POST /dev/group -> %d" % r.status)
    assert r.status == 404, r


def test_dev_group_endpoint(server):
    import json
    adm = "demo-admin-token-0123456789abcdef"  # 32+ bytes (audit item 13)
    s = server(env=dict(DEV, **{"auth.admin_token": adm}))
    auth = {"Authorization": "Bearer " + adm}
    r = http(s.port, "POST", "/dev/group?gid=team&members=alice,bob,carol")
    step("POST /dev/group?gid=team&members=alice,bob,carol -> %d %s" % (r.status, r.body))
    assert r.status == 200 and json.loads(r.body) == {"ok": True}, r
    r = H.http_get(s.port, "/api/groups/team", headers=auth)
    step("admin GET /api/groups/team -> %s" % r.body)
    assert r.status == 200, r
    assert sorted(json.loads(r.body)["members"]) == ["alice", "bob", "carol"]
    r = http(s.port, "POST", "/dev/group?gid=team&members=alice")
    assert r.status == 200, r
    r = H.http_get(s.port, "/api/groups/team", headers=auth)
    step("replaced members -> %s" % r.body)
    assert json.loads(r.body)["members"] == ["alice"]
    for path, want in (("/dev/group?gid=a/b&members=x", 400),
                       ("/dev/group?members=x", 400),
                       ("/dev/group?gid=g2", 400),
                       ("/dev/group?gid=g2&members=", 400),
                       ("/dev/group?gid=g2&members=a,,b", 200),
                       ("/dev/group?gid=g2&members=a%20b", 400),
                       ("/dev/group?gid=g2&members=" + ",".join("u%d" % i for i in range(65)), 400)):
        r = http(s.port, "POST", path)
        step("POST %s -> %d" % (path[:60], r.status))
        assert r.status == want, (path, r)
    r = H.http_get(s.port, "/dev/group?gid=g3&members=a")
    step("GET /dev/group -> %d" % r.status)
    assert r.status == 405 and r.header("allow") == "POST", r
    r = H.http_get(s.port, "/dev/token?user=alice")
    assert r.status == 200 and json.loads(r.body)["user"] == "alice", r


# ---------------------------------------------------------------------------
# headless Chromium


def _require_browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("python3-selenium (module selenium)")
    if missing:
        pytest.fail("browser test needs %s: run `bash deps/install.sh` "
                    "(installs chromium chromium-driver python3-selenium)"
                    % ", ".join(missing), pytrace=False)


class Page:
    """One headless Chromium (own profile, so its own localStorage)."""

    def __init__(self, name, url, tmpdir):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        self.name = name
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for a in ("--headless=new", "--no-sandbox", "--disable-gpu",
                  "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-extensions",
                  "--disable-background-timer-throttling",
                  "--disable-renderer-backgrounding",
                  "--window-size=1100,820", "--force-device-scale-factor=1",
                  "--user-data-dir=" + os.path.join(tmpdir, "chrome-" + name)):
            opts.add_argument(a)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        log = os.path.join(tmpdir, "chromedriver-%s.log" % name)
        self.d = webdriver.Chrome(service=Service(CHROMEDRIVER, log_path=log),
                                  options=opts)
        self.d.set_page_load_timeout(20)
        self.d.get(url)

    def js(self, script, *args):
        return self.d.execute_script(script, *args)

    def wait(self, what, fn, timeout=15.0):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = fn()
            if last:
                return last
            time.sleep(0.1)
        raise AssertionError("%s: timed out waiting for %s (last: %r)\nmessages: %r"
                             % (self.name, what, last, self.messages()))

    def el(self, testid):
        from selenium.webdriver.common.by import By
        return self.d.find_element(By.CSS_SELECTOR, '[data-testid="%s"]' % testid)

    def type(self, testid, text):
        e = self.el(testid)
        e.clear()
        e.send_keys(text)

    def login(self, user):
        self.type("login-user", user)
        self.el("login-submit").click()
        self.wait_online()

    def wait_online(self):
        self.wait("online + synced", lambda: self.js(
            "return document.body.dataset.conn === 'online' && "
            "document.body.dataset.synced === '1'"))

    def messages(self):
        try:
            return self.js("""
              return Array.from(document.querySelectorAll('[data-testid=msg]')).map(e => ({
                id: e.dataset.msgId, own: e.dataset.own === '1', state: e.dataset.state,
                text: e.querySelector('[data-testid=msg-content]').textContent,
                status: (e.querySelector('[data-testid=msg-status]') || {}).textContent || ''}));""")
        except Exception as e:  # noqa: BLE001 (diagnostics only)
            return "<%s>" % e

    def message(self, pred):
        for m in self.messages():
            if pred(m):
                return m
        return None

    def send(self, text):
        self.type("composer-input", text)
        self.el("composer-send").click()
        return self.wait("own message %r sent" % text, lambda: self.message(
            lambda m: m["own"] and m["text"] == text and m["state"] in ("sent", "read")))

    def open_conv(self, conv_id):
        from selenium.webdriver.common.by import By
        self.wait("conversation %s listed" % conv_id, lambda: self.d.find_elements(
            By.CSS_SELECTOR, '[data-testid=conv][data-conv-id="%s"]' % conv_id))
        self.d.find_element(By.CSS_SELECTOR,
                            '[data-testid=conv][data-conv-id="%s"]' % conv_id).click()
        self.wait("conversation %s active" % conv_id, lambda: self.js(
            "const e = document.querySelector('[data-testid=conv].active');"
            "return e && e.dataset.convId === arguments[0];", conv_id))

    def screenshot(self, path):
        self.d.save_screenshot(path)
        with open(path, "rb") as f:
            data = f.read()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, \
            "%s: bad screenshot (%d bytes)" % (path, len(data))
        return len(data)

    def console_errors(self):
        return [e for e in self.d.get_log("browser") if e.get("level") == "SEVERE"]

    def close(self):
        try:
            self.d.quit()
        except Exception:  # noqa: BLE001
            pass


def test_two_browsers_chat(server, tmp_path):
    _require_browser()
    s = server(env=DEV)
    url = "http://127.0.0.1:%d/" % s.port
    pages = []
    try:
        step("start two headless Chromium browsers on %s" % url)
        alice = Page("alice", url, str(tmp_path))
        pages.append(alice)
        bob = Page("bob", url, str(tmp_path))
        pages.append(bob)

        step("login: each page fetches /dev/token, connects /ws, CMD_AUTH_REQ, CMD_SYNC_REQ")
        alice.login("alice")
        bob.login("bob")
        assert alice.el("me").text == "alice" and bob.el("me").text == "bob"

        step("1:1: alice opens a chat with bob and sends 'hello bob'")
        alice.type("new-chat-peer", "bob")
        alice.el("new-chat-submit").click()
        alice.open_conv("s_alice_bob")
        sent = alice.send("hello bob")
        assert sent["id"].isdigit(), sent  # the server's message_id

        step("bob's page shows the pushed message (CMD_PUSH_MSG) in s_alice_bob")
        got = bob.wait("'hello bob' from alice", lambda: bob.message(
            lambda m: not m["own"] and m["text"] == "hello bob"))
        assert got["id"] == sent["id"]
        assert bob.js("return document.querySelector('[data-testid=conv].active').dataset.convId") \
            == "s_alice_bob"

        step("read receipt: bob displayed it -> CMD_READ_RECEIPT_REQ -> alice shows 'read'")
        alice.wait("'read' on alice's message", lambda: alice.message(
            lambda m: m["id"] == sent["id"] and m["state"] == "read" and m["status"] == "read"))

        step("typing: bob types in the composer -> alice's header shows 'bob is typing'")
        bob.type("composer-input", "hi ali")
        alice.wait("typing indicator", lambda: "bob is typing" in alice.el("typing").text)
        step("bob sends 'hi alice' -> the indicator goes away, alice sees the reply")
        bob.type("composer-input", "hi alice")
        bob.el("composer-send").click()
        alice.wait("'hi alice' from bob", lambda: alice.message(
            lambda m: not m["own"] and m["text"] == "hi alice"))
        alice.wait("typing indicator cleared", lambda: alice.el("typing").text == "")

        step("revoke: alice sends 'oops, wrong chat' and revokes it")
        oops = alice.send("oops, wrong chat")
        bob.wait("'oops' on bob's page", lambda: bob.message(lambda m: m["id"] == oops["id"]))
        alice.js("""document.querySelector('[data-msg-id="' + arguments[0] + '"] [data-testid=msg-revoke]').click()""",
                 oops["id"])
        alice.wait("alice's own copy revoked", lambda: alice.message(
            lambda m: m["id"] == oops["id"] and m["state"] == "revoked"
            and m["text"] == "message revoked"))
        step("bob's page shows 'message revoked' (CMD_REVOKE_MSG_PUSH)")
        bob.wait("'message revoked' on bob's page", lambda: bob.message(
            lambda m: m["id"] == oops["id"] and m["state"] == "revoked"
            and m["text"] == "message revoked"))
        assert not any("oops" in m["text"] for m in bob.messages())

        step("reload bob's page: localStorage logs bob in again, sync restores the history")
        bob.d.refresh()
        bob.wait_online()
        bob.wait("history after reload", lambda: len(bob.messages()) == 3)
        hist = bob.messages()
        step("bob's history: %s" % [(m["text"], m["state"]) for m in hist])
        assert [m["text"] for m in hist] == ["hello bob", "hi alice", "message revoked"], hist
        assert [m["own"] for m in hist] == [False, True, False], hist
        assert hist[2]["state"] == "revoked" and hist[2]["id"] == oops["id"], hist
        assert bob.el("me").text == "bob"

        step("group: alice creates group 'team' with bob (POST /dev/group) and sends to it")
        alice.type("group-id", "team")
        alice.type("group-members", "bob")
        alice.el("group-create").click()
        alice.wait("group conversation active", lambda: alice.js(
            "const e = document.querySelector('[data-testid=conv].active');"
            "return e && e.dataset.convId === 'g_team';"))
        gsent = alice.send("hello team")
        step("bob's page lists g_team with an unread badge; opening it shows the message")
        bob.wait("unread badge on g_team", lambda: bob.js(
            "return document.querySelector('[data-testid=conv][data-conv-id=g_team] [data-testid=conv-unread]') !== null"))
        bob.open_conv("g_team")
        got = bob.wait("'hello team' in the group", lambda: bob.message(
            lambda m: m["text"] == "hello team" and not m["own"]))
        assert got["id"] == gsent["id"]
        assert "group" in bob.el("conv-title").text
        alice.wait("'read by bob' in the group", lambda: alice.message(
            lambda m: m["id"] == gsent["id"] and m["status"] == "read by bob"))
        bob.send("hi team")
        alice.wait("bob's group reply", lambda: alice.message(
            lambda m: m["text"] == "hi team" and not m["own"]))

        step("screenshots: alice in the 1:1 chat, bob in the group")
        alice.open_conv("s_alice_bob")
        for p in pages:  # no transient toast in the pictures
            p.js("document.getElementById('toast').hidden = true;")
        time.sleep(0.3)
        shots = {}
        for p in pages:
            path = str(tmp_path / ("demo-%s.png" % p.name))
            n = p.screenshot(path)
            shots[p.name] = path
            step("%s: %s (%d bytes, PNG)" % (p.name, path, n))
        if DEMO_PNG:
            try:
                shutil.copyfile(shots["alice"], DEMO_PNG)
                step("copied alice's screenshot to %s" % DEMO_PNG)
            except OSError as e:
                step("could not copy the screenshot to %s: %s" % (DEMO_PNG, e))

        for p in pages:
            errs = p.console_errors()
            step("%s: %d console errors" % (p.name, len(errs)))
            assert not errs, errs
    finally:
        for p in pages:
            p.close()
