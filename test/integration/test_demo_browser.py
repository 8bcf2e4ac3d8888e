"""The browser demo at GET / (www/index.html, embedded in the binary).

* test_page_*, test_dev_*: plain HTTP, no browser: the page, its headers,
  and the dev-only endpoints (/dev/token, /dev/group) being 404 unless
  auth.dev_tokens = true.
* test_two_browsers_chat: headless Chromium (Debian's chromium +
  chromium-driver, driven by python3-selenium; all installed by
  deps/install.sh). Two browsers (alice, bob) log in, chat 1:1 and in a
  group, see typing, read receipts and revokes, and bob's history survives
  a reload (sync). An incoming message opens nothing and is not read until
  the user opens the chat; after a reload nothing is opened, unread badges
  and own "read" marks come back (localStorage). Screenshots of both pages
  go to the test's tmp dir (alice's also to $IMGW_DEMO_PNG when set, e.g.
  docs/demo.png; a test run leaves the tree as it was). A missing browser
  is a FAILURE, not a skip.
* test_demo_badges_two_windows_and_online_dots: bob in two windows (two
  platforms) gets alice's messages with a badge in both; reading the chat
  in one clears the badge in the other (read_seq -> CMD_READ_RECEIPT_PUSH
  to bob's other connection) and, after a reload of that other window
  (fresh page, no local read state for it), the badge stays gone (the
  server's CMD_CONVERSATION_LIST_RSP). Online dots follow alice's login
  and logout (CMD_PRESENCE_SUB_REQ / CMD_PRESENCE_PUSH).
* test_demo_empty_list_and_id_rules: the empty conversation list is one
  line, not one word per line; login, "New chat" and "New group" refuse
  ids outside [A-Za-z0-9._@-]{1,64}; the server's own error text is shown.
* test_demo_kicked_use_here: a page kicked by a second login of the same
  user disables its composer and offers "Use here", which takes over.
* test_demo_offline_retry_and_errors: with the server gone the page says
  "cannot reach the server" (never "Failed to fetch") and offers "Retry
  now", which reconnects at once once the server is back.

Run: /usr/bin/python3 -m pytest -q -s test/integration/test_demo_browser.py
Env: IMGW_CHROMIUM (default /usr/bin/chromium), IMGW_CHROMEDRIVER
(default /usr/bin/chromedriver), IMGW_DEMO_PNG (unset or empty: don't
copy; IMGW_DEMO_PNG=docs/demo.png refreshes the README's picture).
"""

import os
import shutil
import time

import pytest

import imgw_harness as H

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHROMIUM = os.environ.get("IMGW_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("IMGW_CHROMEDRIVER", "/usr/bin/chromedriver")
DEMO_PNG = os.environ.get("IMGW_DEMO_PNG", "")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DEV = {"auth.dev_tokens": "true"}


def step(msg):
    print("[demo] " + msg, flush=True)


def http(port, method, path, headers=None):
    h = "".join("%s: %s\r\n" % kv for kv in (headers or {}).items())
    raw = ("%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%sContent-Length: 0\r\n"
           "Connection: close\r\n\r\n" % (method, path, port, h))
    return H.http_request(port, raw)


def served_page():
    """www/index.html as the build embeds it (tools/embed.py inline_sdk)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "embed", os.path.join(REPO, "tools", "embed.py"))
    embed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(embed)
    with open(os.path.join(REPO, "www", "index.html"), "rb") as f:
        page = f.read()
    with open(os.path.join(REPO, "www", "imgw-sdk.js"), "rb") as f:
        return embed.inline_sdk(page, f.read())


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
    # The served page is www/index.html with the SDK bundle inlined at its
    # marker (tools/embed.py --sdk www/imgw-sdk.js): still one static file.
    assert r.body == served_page(), "served page differs from www/index.html + SDK"
    assert b"<!-- imgw-sdk:" not in r.body and b"ImgwClient" in r.body
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

    def login(self, user, platform=None):
        self.type("login-user", user)
        if platform is not None:
            self.type("login-platform", platform)
        self.el("login-submit").click()
        self.wait_online()

    def wait_listed(self):
        """The server's conversation list (CMD_CONVERSATION_LIST_RSP) is in."""
        self.wait("conversation list loaded", lambda: self.js(
            "return document.body.dataset.listed === '1'"))

    def online_dot(self, conv_id):
        """'1' / '0' of a listed 1:1 conversation's online dot, or None."""
        return self.js("const b = document.querySelector('[data-testid=conv][data-conv-id=\"'"
                       " + arguments[0] + '\"] [data-testid=conv-online]');"
                       "return b ? b.dataset.online : null;", conv_id)

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
        # Found and clicked in one script: the sidebar is rebuilt whenever
        # the server's list or a push arrives, which can replace the entry
        # between a WebDriver find and its click (a stale element; seen on
        # the sanitizer build, whose answers come later).
        sel = '[data-testid=conv][data-conv-id="%s"]' % conv_id
        self.wait("conversation %s listed and clicked" % conv_id, lambda: self.js(
            "const e = document.querySelector(arguments[0]);"
            "if (!e) return false; e.click(); return true;", sel))
        self.wait("conversation %s active" % conv_id, lambda: self.js(
            "const e = document.querySelector('[data-testid=conv].active');"
            "return e && e.dataset.convId === arguments[0];", conv_id))

    def active_conv(self):
        return self.js("const e = document.querySelector('[data-testid=conv].active');"
                       "return e ? e.dataset.convId : null;")

    def badge(self, conv_id):
        """The unread badge text of a listed conversation, or None."""
        return self.js("const b = document.querySelector('[data-testid=conv][data-conv-id=\"'"
                       " + arguments[0] + '\"] [data-testid=conv-unread]');"
                       "return b ? b.textContent : null;", conv_id)

    def barrier_to(self, other, conv_id):
        """Sends a typing frame from this page in conv_id and waits until
        `other` (which has conv_id open) shows it: anything this page sent
        earlier (a read receipt) has reached `other` by then. Then clears it."""
        # Through the page's SDK client: same socket, so it follows whatever
        # the page sent before.
        self.js("state.client.typing(arguments[0], 1);", conv_id)
        other.wait("typing barrier from %s" % self.name,
                   lambda: "is typing" in other.el("typing").text)
        self.js("state.client.typing(arguments[0], 0);", conv_id)
        other.wait("typing barrier cleared", lambda: other.el("typing").text == "")

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

        step("bob's page lists s_alice_bob with unread badge 1 and opens nothing "
             "(CMD_PUSH_MSG; the user has not looked yet)")
        bob.wait("unread badge 1 on s_alice_bob", lambda: bob.badge("s_alice_bob") == "1")
        assert bob.active_conv() is None, bob.active_conv()
        assert bob.el("conv-title").text == "No conversation selected"
        step("barrier: bob's page sends a frame after the push; when alice sees it, "
             "a receipt sent on the push would have arrived too -> still 'sent'")
        bob.barrier_to(alice, "s_alice_bob")
        m = alice.message(lambda m: m["id"] == sent["id"])
        assert m["state"] == "sent" and m["status"] == "sent", m

        step("bob opens the chat: the message shows, the badge goes, and only now "
             "CMD_READ_RECEIPT_REQ -> alice shows 'read'")
        bob.open_conv("s_alice_bob")
        got = bob.wait("'hello bob' from alice", lambda: bob.message(
            lambda m: not m["own"] and m["text"] == "hello bob"))
        assert got["id"] == sent["id"]
        bob.wait("badge gone", lambda: bob.badge("s_alice_bob") is None)
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
        bob.wait("'read' on bob's 'hi alice' (alice has the chat open)", lambda: bob.message(
            lambda m: m["own"] and m["text"] == "hi alice" and m["state"] == "read"))

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

        step("group: alice creates group 'team' with bob (POST /dev/group) and sends to it")
        alice.type("group-id", "team")
        alice.type("group-members", "bob")
        alice.el("group-create").click()
        alice.wait("group conversation active", lambda: alice.active_conv() == "g_team")
        gsent = alice.send("hello team")
        step("bob's page lists g_team with unread badge 1 and stays where it is")
        bob.wait("unread badge on g_team", lambda: bob.badge("g_team") == "1")
        assert bob.active_conv() == "s_alice_bob"

        step("reload bob's page: localStorage logs bob in again, sync restores the "
             "history; nothing is opened, the unread badge is back")
        bob.d.refresh()
        bob.wait_online()
        bob.wait("g_team listed after reload", lambda: bob.badge("g_team") == "1")
        assert bob.active_conv() is None, bob.active_conv()
        assert bob.el("conv-title").text == "No conversation selected"
        assert bob.badge("s_alice_bob") is None, "s_alice_bob was read before the reload"
        step("barrier: nothing marked 'hello team' read by bob")
        bob.barrier_to(alice, "g_team")
        m = alice.message(lambda m: m["id"] == gsent["id"])
        assert m["status"] == "sent", m

        step("bob opens s_alice_bob: the history is back, his 'hi alice' still 'read'")
        bob.open_conv("s_alice_bob")
        bob.wait("history after reload", lambda: len(bob.messages()) == 3)
        hist = bob.messages()
        step("bob's history: %s" % [(m["text"], m["state"]) for m in hist])
        assert [m["text"] for m in hist] == ["hello bob", "hi alice", "message revoked"], hist
        assert [m["own"] for m in hist] == [False, True, False], hist
        assert hist[2]["state"] == "revoked" and hist[2]["id"] == oops["id"], hist
        assert hist[1]["state"] == "read" and hist[1]["status"] == "read", hist
        assert bob.el("me").text == "bob"

        step("bob opens g_team: the message shows and alice gets 'read by bob'")
        bob.open_conv("g_team")
        got = bob.wait("'hello team' in the group", lambda: bob.message(
            lambda m: m["text"] == "hello team" and not m["own"]))
        assert got["id"] == gsent["id"]
        assert "group" in bob.el("conv-title").text
        bob.wait("g_team badge gone", lambda: bob.badge("g_team") is None)
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


def _console_errors_ok(pages):
    """No script errors; failed requests the test provoked ("network") are fine."""
    for p in pages:
        errs = [e for e in p.console_errors() if e.get("source") != "network"]
        step("%s: %d console errors" % (p.name, len(errs)))
        assert not errs, errs


def test_demo_badges_two_windows_and_online_dots(server, tmp_path):
    _require_browser()
    s = server(env=DEV)
    url = "http://127.0.0.1:%d/" % s.port
    pages = []
    try:
        step("alice (web) and bob in two windows (platforms web and tab2)")
        alice = Page("alice", url, str(tmp_path))
        pages.append(alice)
        bob1 = Page("bob1", url, str(tmp_path))
        pages.append(bob1)
        bob2 = Page("bob2", url, str(tmp_path))
        pages.append(bob2)
        alice.login("alice")
        bob1.login("bob")
        bob2.login("bob", platform="tab2")
        for p in pages:
            p.wait_listed()

        step("alice opens a chat with bob: its online dot is green (bob is logged in)")
        alice.type("new-chat-peer", "bob")
        alice.el("new-chat-submit").click()
        alice.open_conv("s_alice_bob")
        alice.wait("bob's dot online", lambda: alice.online_dot("s_alice_bob") == "1")
        alice.wait("header says online", lambda: "online" in alice.el("conv-presence").text)
        alice.send("one")
        alice.send("two")

        step("both of bob's windows list s_alice_bob with badge 2 and alice online")
        for p in (bob1, bob2):
            p.wait("badge 2", lambda p=p: p.badge("s_alice_bob") == "2")
            p.wait("alice's dot online", lambda p=p: p.online_dot("s_alice_bob") == "1")
            assert p.active_conv() is None

        step("bob reads the chat in window 1: the badge goes there, and in window 2 "
             "too without opening anything (read_seq -> push to bob's other connection)")
        bob1.open_conv("s_alice_bob")
        bob1.wait("badge gone in window 1", lambda: bob1.badge("s_alice_bob") is None)
        bob2.wait("badge gone in window 2", lambda: bob2.badge("s_alice_bob") is None)
        assert bob2.active_conv() is None

        step("window 2 forgets its local read state (as a new browser would) and "
             "reloads: the badge stays gone, from the server's conversation list")
        bob2.js("localStorage.removeItem('imgw.demo.state.bob');")
        bob2.d.refresh()
        bob2.wait_online()
        bob2.wait_listed()
        assert bob2.js("return localStorage.getItem('imgw.demo.state.bob') === null || "
                       "!(JSON.parse(localStorage.getItem('imgw.demo.state.bob')).read || {})"
                       "['s_alice_bob']"), "window 2 kept a local read position"
        bob2.wait("conversation listed", lambda: bob2.js(
            "return !!document.querySelector('[data-testid=conv][data-conv-id=\"s_alice_bob\"]')"))
        assert bob2.badge("s_alice_bob") is None, bob2.badge("s_alice_bob")

        step("alice sends 'three' while bob has the chat open in window 1 only: "
             "window 2 shows badge 1 then loses it when window 1 reads it")
        bob1.open_conv("s_alice_bob")
        alice.send("three")
        bob1.wait("'three' shown in window 1", lambda: bob1.message(
            lambda m: m["text"] == "three"))
        bob2.wait("window 2 badge cleared again", lambda: bob2.badge("s_alice_bob") is None)

        step("alice logs out: bob's dots for alice go grey; she logs in again: green")
        alice.el("logout").click()
        for p in (bob1, bob2):
            p.wait("alice offline", lambda p=p: p.online_dot("s_alice_bob") == "0")
        bob1.wait("header says offline", lambda: "offline" in bob1.el("conv-presence").text)
        alice.login("alice")
        for p in (bob1, bob2):
            p.wait("alice online again", lambda p=p: p.online_dot("s_alice_bob") == "1")
        _console_errors_ok(pages)
    finally:
        for p in pages:
            p.close()


def test_demo_empty_list_and_id_rules(server, tmp_path):
    _require_browser()
    s = server(env=DEV)
    url = "http://127.0.0.1:%d/" % s.port
    pages = []
    try:
        carol = Page("carol", url, str(tmp_path))
        pages.append(carol)

        step("login refuses ids outside [A-Za-z0-9._@-]{1,64} before asking for a token")
        for bad in ("bad id", "a/b", "caf\u00e9", "<b>", "x,y"):
            carol.type("login-user", bad)
            carol.el("login-submit").click()
            carol.wait("login error for %r" % bad,
                       lambda: "invalid user id" in carol.el("login-error").text)
            assert carol.el("chat-view").get_attribute("hidden") is not None, bad
            step("  login %r -> %r" % (bad, carol.el("login-error").text))
        assert carol.el("login-user").get_attribute("maxlength") == "64"
        carol.login("carol")

        step("the empty conversation list is one or two lines of text, "
             "not one word per line")
        shape = carol.js("""
          const li = document.querySelector('#conv-list li.empty');
          const r = document.createRange(); r.selectNodeContents(li);
          const tops = new Set(Array.from(r.getClientRects()).map(x => Math.round(x.top)));
          return {lines: tops.size, width: Math.round(li.getBoundingClientRect().width),
                  text: li.textContent};""")
        step("  %s" % shape)
        assert shape["text"].startswith("No conversations yet"), shape
        assert shape["lines"] <= 2, shape

        step("New chat refuses the ids login refuses")
        for bad in ("bob smith", "a/b", "caf\u00e9", "x;y", "\u4e2d\u6587"):
            carol.type("new-chat-peer", bad)
            carol.el("new-chat-submit").click()
            carol.wait("new chat error for %r" % bad,
                       lambda: "invalid user id" in carol.el("new-chat-error").text)
            step("  new chat %r -> %r" % (bad, carol.el("new-chat-error").text))
        assert carol.js("return document.querySelectorAll('[data-testid=conv]').length") == 0
        assert carol.active_conv() is None
        carol.type("new-chat-peer", "dave.o@x-y_1")
        carol.el("new-chat-submit").click()
        carol.wait("chat with dave.o@x-y_1 open",
                   lambda: carol.active_conv() == "s_carol_dave.o@x-y_1")
        assert carol.el("new-chat-error").text == ""
        step("  new chat 'dave.o@x-y_1' -> opened s_carol_dave.o@x-y_1")

        step("New group refuses bad group and member ids")
        for gid, members in (("my team", "bob"), ("team", "bob,c d"), ("t/x", "bob")):
            carol.type("group-id", gid)
            carol.type("group-members", members)
            carol.el("group-create").click()
            carol.wait("group error for %r" % gid,
                       lambda: "invalid id" in carol.el("group-error").text)
            step("  group %r members %r -> %r" % (gid, members, carol.el("group-error").text))

        step("a group the server refuses (65 members incl. carol): its own error "
             "text is shown")
        carol.type("group-id", "big")
        carol.type("group-members", ",".join("u%d" % i for i in range(64)))
        carol.el("group-create").click()
        carol.wait("server error shown",
                   lambda: "bad members" in carol.el("group-error").text)
        text = carol.el("group-error").text
        step("  -> %r" % text)
        assert "HTTP 400" in text and "Failed to fetch" not in text, text
        assert carol.badge("g_big") is None and carol.js(
            "return document.querySelector('[data-conv-id=g_big]')") is None
        _console_errors_ok([p for p in pages])
    finally:
        for p in pages:
            p.close()


def test_demo_kicked_use_here(server, tmp_path):
    _require_browser()
    s = server(env=DEV)
    url = "http://127.0.0.1:%d/" % s.port
    pages = []
    try:
        one = Page("alice-1", url, str(tmp_path))
        pages.append(one)
        two = Page("alice-2", url, str(tmp_path))
        pages.append(two)
        one.login("alice")
        one.type("new-chat-peer", "bob")
        one.el("new-chat-submit").click()
        one.wait("chat open", lambda: one.active_conv() == "s_alice_bob")
        one.send("first")

        step("a second page logs in as alice (same platform) -> the first is kicked")
        two.login("alice")
        one.wait("kicked", lambda: one.js("return document.body.dataset.conn") == "kicked")
        assert one.el("composer-input").get_attribute("disabled") is not None
        assert one.el("composer-send").get_attribute("disabled") is not None
        assert one.el("use-here").is_displayed()
        assert not one.el("retry-now").is_displayed()
        step("  kicked page: composer disabled, 'Use here' shown (%r)"
             % one.el("composer-input").get_attribute("placeholder"))

        step("'Use here' logs in again and takes over: the other page is kicked")
        one.el("use-here").click()
        one.wait_online()
        two.wait("second page kicked",
                 lambda: two.js("return document.body.dataset.conn") == "kicked")
        assert not one.el("use-here").is_displayed()
        assert one.el("composer-input").get_attribute("disabled") is None
        sent = one.send("back here")
        assert sent["id"].isdigit(), sent
        two.type("new-chat-peer", "bob")
        two.el("new-chat-submit").click()
        two.wait("chat open on the kicked page", lambda: two.active_conv() == "s_alice_bob")
        assert two.el("composer-input").get_attribute("disabled") is not None
        step("  first page online and sending; the second kicked, composer disabled")
    finally:
        for p in pages:
            p.close()


def _restart_same_port(s):
    """Starts the stopped server s again on its port (the page reconnects to
    the address it was loaded from)."""
    import subprocess
    logf = open(s.log_path, "ab")
    s.proc = subprocess.Popen(s.cmdline, stdout=logf, stderr=subprocess.STDOUT,
                              env=H.clean_env(s.env_over), cwd=s.tmpdir)
    logf.close()
    s.stopped, s.exit_code = False, None
    ok, err = s._wait_ready(10.0)
    assert ok, err


def test_demo_offline_retry_and_errors(server, tmp_path):
    _require_browser()
    s = server(env=DEV)
    url = "http://127.0.0.1:%d/" % s.port
    pages = []
    try:
        p = Page("erin", url, str(tmp_path))
        pages.append(p)
        p.login("erin")
        assert not p.el("retry-now").is_displayed()

        step("stop the server: the page goes offline, says why, offers 'Retry now'")
        code, killed = s.stop()
        assert code == 0 and not killed, (code, killed)
        p.wait("offline with 'Retry now'", lambda: p.js(
            "return document.body.dataset.conn") == "offline" and p.el("retry-now").is_displayed())
        p.wait("reason shown", lambda: "cannot reach the server" in p.el("conn-error").text,
               timeout=30)
        step("  pill %r, error %r" % (p.el("conn-state").text, p.el("conn-error").text))
        assert "Failed to fetch" not in p.el("conn-error").text

        step("creating a group while the server is down: 'cannot reach the server', "
             "not 'Failed to fetch'")
        p.type("group-id", "team")
        p.type("group-members", "bob")
        p.el("group-create").click()
        p.wait("group error", lambda: "cannot reach the server" in p.el("group-error").text)
        assert "Failed to fetch" not in p.el("group-error").text
        assert "Failed to fetch" not in p.el("toast").text

        step("'Retry now' while still down: one more attempt, still offline")
        p.el("retry-now").click()
        p.wait("offline again", lambda: p.js(
            "return document.body.dataset.conn") == "offline" and p.el("retry-now").is_displayed())

        step("server back on the same port; 'Retry now' reconnects at once")
        _restart_same_port(s)
        p.el("retry-now").click()
        p.wait_online()
        assert not p.el("retry-now").is_displayed()
        assert p.el("conn-error").text == ""
        p.type("new-chat-peer", "bob")
        p.el("new-chat-submit").click()
        p.wait("chat open", lambda: p.active_conv() == "s_bob_erin")
        p.send("back online")
    finally:
        for p in pages:
            p.close()
