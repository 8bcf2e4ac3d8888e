"""Security audit, authentication and admin safety (docs/hardening.md,
"Audit fixes: authentication and admin safety"):

  * item 4: a numeric user id beyond 2^53 is refused (9007199254740993
    would round to 9007199254740992 and be that user); exact ones work.
  * item 12: the `token` cookie is taken at the handshake only from the
    server's own origin or one in server.origins (no cross-site WebSocket
    hijacking); ?token= and Authorization are not ambient, so unaffected.
  * item 13: a failed admin authentication is 401 with Connection: close and
    the connection closed; repeated failures from one address get 429 (the
    right token too, until the window is over); admin_token and jwt_secret
    shorter than 32 bytes fail the start with exit 2 naming the key.
  * item 15: a token without exp is refused by default (401 at the
    handshake, ERR_AUTH_FAILED + 4001 in CMD_AUTH_REQ), accepted with
    auth.require_exp = false.
"""

import base64
import hashlib
import hmac
import subprocess
import time

import pytest

import imgw_harness as H
import msg_helpers as M
from imgw_harness import ERR, WSClient, make_token, run

OK = ERR.Value("ERR_SUCCESS")
AUTH_FAILED = ERR.Value("ERR_AUTH_FAILED")
ADMIN = "audit-admin-token-0123456789abcdef0123"


def handshake(port, path="/ws", headers=None):
    req, _ = H.upgrade_request(port, path=path, extra=headers or {})
    return H.http_request(port, req, head_only=True)


async def auth_code(srv, user, token, **connect):
    c = await WSClient.connect(srv, **connect)
    f = await c.auth(user, token)
    print("  CMD_AUTH_REQ %s -> %s" % (user, H.err_name(f.body.error_code)))
    if f.body.error_code == OK:
        return f.body.error_code, c
    code, _ = await c.expect_close(4001, timeout=5)
    print("  closed %s" % code)
    return f.body.error_code, None


def forged(payload):
    return H.forge_hs256(payload, H.DEFAULT_SECRET.encode())


def raw_token(payload_text):
    """HS256 over an exact payload text (json.dumps would respell numbers)."""
    b = lambda x: base64.urlsafe_b64encode(x).rstrip(b"=").decode()
    h = b(b'{"alg":"HS256","typ":"JWT"}')
    p = b(payload_text.encode())
    sig = hmac.new(H.DEFAULT_SECRET.encode(), ("%s.%s" % (h, p)).encode(),
                   hashlib.sha256).digest()
    return "%s.%s.%s" % (h, p, b(sig))


# ---------------------------------------------------------------- item 4


@pytest.mark.parametrize("claim", ["sub", "user_id", "uid"])
def test_numeric_id_beyond_2_53_refused(server, claim):
    s = server(threads=1)
    now = int(time.time())
    exact, rounded = 9007199254740992, 9007199254740993
    print("check: %s=%d logs in as '%d'; %s=%d (rounds to the same double) is "
          "refused at the handshake (401) and in CMD_AUTH_REQ (4001), and does "
          "not kick the first user" % (claim, exact, exact, claim, rounded))
    good = forged({claim: exact, "exp": now + 600})
    bad = forged({claim: rounded, "exp": now + 600})

    async def go():
        code, victim = await auth_code(s, "", good)
        assert code == OK
        r = handshake(s.port, "/ws?token=" + bad)
        print("  handshake with %s=%d -> %d" % (claim, rounded, r.status))
        assert r.status == 401, r
        code, _ = await auth_code(s, "", bad)
        assert code == AUTH_FAILED
        code, _ = await auth_code(s, str(exact), bad)
        assert code == AUTH_FAILED
        # The victim is still connected and served.
        hb = await victim.heartbeat()
        print("  victim heartbeat after the attempts: %s" % hb.name)
        await victim.close()
    run(go())


def test_numeric_id_other_spellings_refused(gw):
    now = int(time.time())
    print("check: numeric ids must be plain integers: 1e3, 42.0 refused; 4242 and "
          "-17 accepted as '4242' and '-17'")

    async def go():
        for v, want in ((4242, "4242"), (-17, "-17")):
            code, c = await auth_code(gw, want, forged({"sub": v, "exp": now + 600}))
            assert code == OK
            await c.close()
        for text in ("1e3", "42.0"):
            tok = raw_token('{"sub":%s,"exp":%d}' % (text, now + 600))
            code, _ = await auth_code(gw, "", tok)
            assert code == AUTH_FAILED, text
    run(go())


def test_infinite_exp_refused(gw):
    print("check: exp 1e999 (infinity to a double: never expires) -> 401 at the "
          "handshake; exp 1e300 too")
    for text in ("1e999", "1e300"):
        tok = raw_token('{"sub":"inf","exp":%s}' % text)
        r = handshake(gw.port, "/ws?token=" + tok)
        print("  exp %s -> %d" % (text, r.status))
        assert r.status == 401, r


# ---------------------------------------------------------------- item 15


def test_token_without_exp_refused_by_default(gw):
    tok = make_token("noexp", exp_in=None)
    print("check: a token without exp -> 401 at the handshake, ERR_AUTH_FAILED and "
          "close 4001 in CMD_AUTH_REQ (auth.require_exp defaults to true)")
    r = handshake(gw.port, "/ws?token=" + tok)
    print("  handshake -> %d" % r.status)
    assert r.status == 401, r

    async def go():
        code, _ = await auth_code(gw, "noexp", tok)
        assert code == AUTH_FAILED
        # The same user with exp is fine.
        code, c = await auth_code(gw, "noexp", make_token("noexp"))
        assert code == OK
        await c.close()
    run(go())


def test_token_without_exp_with_require_exp_false(server):
    s = server(threads=1, require_exp="false")
    tok = make_token("noexp2", exp_in=None)
    print("check: auth.require_exp = false: a token without exp is accepted at the "
          "handshake and in CMD_AUTH_REQ")
    r = handshake(s.port, "/ws?token=" + tok)
    print("  handshake -> %d" % r.status)
    assert r.status == 101, r

    async def go():
        code, c = await auth_code(s, "noexp2", tok)
        assert code == OK
        await c.close()
    run(go())


# ---------------------------------------------------------------- item 12


def test_cookie_needs_vetted_origin_without_allow_list(gw):
    tok = make_token("cookie1")
    cookie = {"Cookie": "token=" + tok}
    print("check: server.origins empty: token cookie with a foreign Origin -> 401, "
          "without Origin -> 401, with Origin 'null' -> 401; with the server's own "
          "origin (Origin host:port == Host) -> 101")
    cases = [
        ("foreign Origin", dict(cookie, Origin="http://evil.example"), 401),
        ("foreign Origin, same host other port",
         dict(cookie, Origin="http://127.0.0.1:%d" % (gw.port + 1)), 401),
        ("Origin with our host as a prefix",
         dict(cookie, Origin="http://127.0.0.1:%d.evil.example" % gw.port), 401),
        ("no Origin", dict(cookie), 401),
        ("Origin null", dict(cookie, Origin="null"), 401),
        ("same origin", dict(cookie, Origin=H.same_origin(gw.port)), 101),
        ("same origin, https", dict(cookie, Origin="https://127.0.0.1:%d" % gw.port), 101),
    ]
    for name, hdrs, want in cases:
        r = handshake(gw.port, headers=hdrs)
        print("  %s -> %d" % (name, r.status))
        assert r.status == want, (name, r)
    # Tokens that a foreign page cannot make the browser attach are not
    # affected: the page would have to know the token.
    r = handshake(gw.port, "/ws?token=" + tok, headers={"Origin": "http://evil.example"})
    print("  ?token= with a foreign Origin -> %d" % r.status)
    assert r.status == 101, r
    r = handshake(gw.port, headers={"Origin": "http://evil.example",
                                    "Authorization": "Bearer " + tok})
    print("  Authorization with a foreign Origin -> %d" % r.status)
    assert r.status == 101, r
    # A foreign page without the cookie still gets an (unauthenticated)
    # connection, as before.
    r = handshake(gw.port, headers={"Origin": "http://evil.example"})
    print("  no token, foreign Origin -> %d" % r.status)
    assert r.status == 101, r


def test_cookie_with_allow_list(server):
    allowed = "https://chat.example"
    s = server(threads=1, origins=allowed)
    tok = make_token("cookie2")
    print("check: server.origins=%s: the cookie from that Origin authenticates the "
          "connection; other Origins are 403 (origin check); no Origin -> 401" % allowed)

    async def go():
        c = await WSClient.connect(s, token=tok, token_via="cookie",
                                   headers={"Origin": allowed})
        f = await c.auth("", "")
        print("  auth with the cookie's token -> %s" % H.err_name(f.body.error_code))
        assert f.body.error_code == OK
        await c.close()
    run(go())
    r = handshake(s.port, headers={"Cookie": "token=" + tok, "Origin": "https://evil.example"})
    print("  cookie, Origin https://evil.example -> %d" % r.status)
    assert r.status == 403, r
    r = handshake(s.port, headers={"Cookie": "token=" + tok})
    print("  cookie, no Origin -> %d" % r.status)
    assert r.status == 401, r


# ---------------------------------------------------------------- item 13


def admin_request(conn, port, token, path="/api/groups/g1"):
    auth = "" if token is None else "Authorization: Bearer %s\r\n" % token
    conn.send("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%s\r\n" % (path, port, auth))
    return conn.read_response()


def test_admin_401_closes_connection(server):
    s = server(threads=1, admin_token=ADMIN)
    print("check: a keep-alive admin request with a wrong token -> 401 with "
          "Connection: close, and the server closes the socket; the right token "
          "keeps the connection")
    c = H.HTTPConn(s.port)
    try:
        r = admin_request(c, s.port, "wrong-" + ADMIN)
        print("  wrong token -> %d, Connection: %s" % (r.status, r.header("connection")))
        assert r.status == 401, r
        assert (r.header("connection") or "").lower() == "close", r
        c.sock.settimeout(5)
        rest = c.sock.recv(100)
        print("  then read -> %r" % rest)
        assert rest == b"", rest
    finally:
        c.close()
    c = H.HTTPConn(s.port)
    try:
        M.put_group(s.port, "g1", ["a"], token=ADMIN)
        for i in range(2):
            r = admin_request(c, s.port, ADMIN)
            print("  right token, request %d on one connection -> %d" % (i + 1, r.status))
            assert r.status == 200, r
    finally:
        c.close()


def test_admin_failures_throttled(server):
    limit = 5
    s = server(threads=1, admin_token=ADMIN, admin_fail_limit=limit)
    print("check: admin_fail_limit=%d: %d wrong tokens -> 401 each, then 429 "
          "(with Retry-After) for wrong and right tokens alike; other endpoints "
          "unaffected" % (limit, limit))
    for i in range(limit):
        r = M.http_json(s.port, "GET", "/api/groups/g1", token="guess-%d" % i)
        print("  guess %d -> %d" % (i + 1, r.status))
        assert r.status == 401, r
    for tok in ("guess-x", ADMIN, None):
        r = H.http_get(s.port, "/api/groups/g1",
                       headers={} if tok is None else {"Authorization": "Bearer " + tok})
        print("  token %r -> %d, Retry-After %s" % (tok and tok[:8], r.status,
                                                    r.header("retry-after")))
        assert r.status == 429, r
        assert 1 <= int(r.header("retry-after")) <= 60, r
        assert (r.header("connection") or "").lower() == "close", r
    r = H.http_get(s.port, "/healthz")
    assert r.status == 200, r
    assert "failed authentications" in s.log_text()


def test_admin_no_throttle_when_limit_zero(server):
    s = server(threads=1, admin_token=ADMIN, admin_fail_limit=0)
    print("check: admin_fail_limit=0: 30 wrong tokens are all 401, the right one 200")
    for i in range(30):
        r = M.http_json(s.port, "GET", "/api/groups/g1", token="guess-%d" % i)
        assert r.status == 401, (i, r)
    M.put_group(s.port, "g1", ["a"], token=ADMIN)


@pytest.mark.parametrize("key,value", [
    ("admin_token", "q7z"),
    ("admin_token", "x" * 31),
    ("jwt_secret", "imgw-dev-secret"),
    ("jwt_secret", "s" * 31),
])
@pytest.mark.parametrize("via", ["file", "env"])
def test_short_secret_refused_at_start(imgw_bin, tmp_path, key, value, via):
    print("check: auth.%s of %d bytes (%s) -> exit 2 with a message naming "
          "auth.%s and not the value" % (key, len(value), via, key))
    ini = tmp_path / "imgw.ini"
    # A network-facing bind: only such a node must refuse (a loopback-only
    # node starts with a warning, see the test below). The process exits at
    # config validation, before it binds anything.
    text = "[server]\nports = %d\nbind = 0.0.0.0\n[auth]\n" % H.free_port()
    env = {}
    if key != "jwt_secret":
        text += "jwt_secret = %s\n" % H.DEFAULT_SECRET
    if via == "file":
        text += "%s = %s\n" % (key, value)
    else:
        env[H.env_name("auth", key)] = value
    ini.write_text(text)
    try:
        p = subprocess.run([imgw_bin, "-c", str(ini), "-t", "1"], env=H.clean_env(env),
                           capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired as e:
        raise AssertionError("imgw started with a %d-byte %s: %r" % (len(value), key, e.stderr))
    out = p.stdout + p.stderr
    print("  exit %d: %s" % (p.returncode, out.strip()[-300:]))
    assert p.returncode == 2, p.returncode
    assert "auth.%s" % key in out, out
    assert "at least 32" in out, out
    assert value not in out, out


def test_short_secret_on_loopback_starts_with_warning(tmp_path):
    print("check: a node bound to 127.0.0.1 only starts with a 27-byte "
          "jwt_secret and a 9-byte admin_token (the shared benchmark tools "
          "use such), warns naming the key, and HS256 still verifies")
    secret = "cmp-secret-0123456789abcdef"
    s = H.build_server(str(tmp_path), "weak", threads=1, secret=secret,
                       env={"auth.admin_token": "cmp-admin"})
    s.start()
    try:
        log = s.log_text()
        print("  log:", [l for l in log.splitlines() if "shorter than" in l])
        assert "is shorter than 32 bytes: accepted only because server.bind " \
               "127.0.0.1 is loopback" in log, log
        r = H.http_get(s.port, "/api/groups/g1",
                       headers={"Authorization": "Bearer cmp-admin"})
        print("  admin GET with the short token ->", r.status)
        assert r.status == 404, r  # authorized: the group does not exist
        r = H.http_get(s.port, "/api/groups/g1",
                       headers={"Authorization": "Bearer cmp-admix"})
        print("  admin GET with a wrong token ->", r.status)
        assert r.status == 401, r
        tok = H.make_token("alice", key=secret)
        print("  HS256 token signed with the short secret verifies at the handshake")
        raw, _ = H.upgrade_request(s.port, path="/ws?token=" + tok)
        st = H.http_request(s.port, raw, head_only=True)
        assert st.status == 101, st
    finally:
        s.stop()
