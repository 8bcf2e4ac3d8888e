"""JWT options from [auth]: issuer, audience, app_ids, leeway; claim types;
[server] max_connections.

protocol.md section 4 (exp/nbf leeway, iss/aud when configured, app_id
claim, user id claim) and section 9 (keys), section 10 (app_id -> 401 /
ERR_AUTH_FAILED).
"""

import asyncio

import websockets

import imgw_harness as H
from imgw_harness import ERR, WSClient, make_token, run

OK = ERR.Value("ERR_SUCCESS")
AUTH_FAILED = ERR.Value("ERR_AUTH_FAILED")
EXPIRED = ERR.Value("ERR_TOKEN_EXPIRED")


async def auth_code(srv, user, token):
    c = await WSClient.connect(srv)
    f = await c.auth(user, token)
    print("  auth %s -> %s" % (user, H.err_name(f.body.error_code)))
    if f.body.error_code == OK:
        await c.close()
    else:
        await c.expect_close(4001, timeout=5)
    return f.body.error_code


def handshake_status(srv, token):
    req, _ = H.upgrade_request(srv.port, path="/ws?token=" + token)
    return H.http_request(srv.port, req).status


def test_issuer_checked(server):
    s = server(ini={"auth": {"issuer": "imgw-test-issuer"}})
    print("check: [auth] issuer set: matching iss ok; other or missing iss -> "
          "ERR_AUTH_FAILED (and 401 at the handshake)")

    async def go():
        assert await auth_code(s, "iss1", make_token(
            "iss1", claims={"iss": "imgw-test-issuer"})) == OK
        assert await auth_code(s, "iss2", make_token(
            "iss2", claims={"iss": "someone-else"})) == AUTH_FAILED
        assert await auth_code(s, "iss3", make_token("iss3")) == AUTH_FAILED
    run(go())
    assert handshake_status(s, make_token("iss4", claims={"iss": "someone-else"})) == 401


def test_audience_checked(server):
    s = server(ini={"auth": {"audience": "imgw-clients"}})
    print("check: [auth] audience set: aud string or array containing it ok; "
          "other or missing aud -> ERR_AUTH_FAILED")

    async def go():
        assert await auth_code(s, "aud1", make_token(
            "aud1", claims={"aud": "imgw-clients"})) == OK
        assert await auth_code(s, "aud2", make_token(
            "aud2", claims={"aud": ["other", "imgw-clients"]})) == OK
        assert await auth_code(s, "aud3", make_token(
            "aud3", claims={"aud": "other"})) == AUTH_FAILED
        assert await auth_code(s, "aud4", make_token("aud4")) == AUTH_FAILED
    run(go())
    assert handshake_status(s, make_token("aud5", claims={"aud": "other"})) == 401


def test_app_ids_checked(server):
    s = server(ini={"auth": {"app_ids": "app-a,app-b"}})
    print("check: [auth] app_ids=app-a,app-b: app_id app-b ok; app-c or none -> "
          "ERR_AUTH_FAILED; no app_id at the handshake -> 401")

    async def go():
        assert await auth_code(s, "app1", make_token(
            "app1", claims={"app_id": "app-b"})) == OK
        assert await auth_code(s, "app2", make_token(
            "app2", claims={"app_id": "app-c"})) == AUTH_FAILED
        assert await auth_code(s, "app3", make_token("app3")) == AUTH_FAILED
    run(go())
    assert handshake_status(s, make_token("app4")) == 401
    assert handshake_status(s, make_token("app5", claims={"app_id": "app-a"})) == 101


def test_app_ids_unset_ignores_claim(gw):
    print("check: app_ids unset: any app_id claim is accepted")

    async def go():
        assert await auth_code(gw, "appx", make_token(
            "appx", claims={"app_id": "whatever"})) == OK
    run(go())


def test_leeway_zero(server):
    s = server(leeway=0)
    print("check: leeway=0: a token expired 5 s ago -> ERR_TOKEN_EXPIRED; "
          "nbf 30 s ahead -> ERR_AUTH_FAILED")

    async def go():
        assert await auth_code(s, "lw1", make_token("lw1", exp_in=-5)) == EXPIRED
        assert await auth_code(s, "lw2", make_token("lw2", nbf_in=30)) == AUTH_FAILED
        assert await auth_code(s, "lw3", make_token("lw3")) == OK
    run(go())


def test_nbf_within_leeway_accepted(gw):
    print("check: nbf 5 s in the future is accepted with the default leeway (30 s)")

    async def go():
        assert await auth_code(gw, "nbf5", make_token("nbf5", nbf_in=5)) == OK
    run(go())


def test_token_without_exp(gw, server):
    # Contract changed by audit item 15: exp is required unless
    # auth.require_exp = false (test_audit_auth.py covers the handshake).
    print("check: a token without exp -> ERR_AUTH_FAILED by default; accepted "
          "with auth.require_exp = false")

    async def go(srv, want):
        assert await auth_code(srv, "noexp", make_token("noexp", exp_in=None)) == want
    run(go(gw, AUTH_FAILED))
    run(go(server(threads=1, require_exp="false"), OK))


def test_numeric_sub_claim(gw):
    print("check: numeric sub 4242 authenticates user '4242'")

    async def go():
        tok = make_token(None, claims={"sub": 4242}, sub_claim=None)
        assert await auth_code(gw, "4242", tok) == OK
    run(go())


def test_token_without_user_claim(gw):
    print("check: a valid signature but no sub/user_id/uid -> ERR_AUTH_FAILED")

    async def go():
        tok = make_token(None, sub_claim=None)
        assert await auth_code(gw, "nobody", tok) == AUTH_FAILED
    run(go())


def test_max_connections_503(server):
    s = server(max_connections=3)
    print("check: max_connections=3: with 3 WebSockets open a 4th upgrade is "
          "refused with HTTP 503; after one closes a new one is accepted")

    async def go():
        clients = [await WSClient.connect(s) for _ in range(3)]
        for i, c in enumerate(clients):
            await c.auth_ok("mc%d" % i, make_token("mc%d" % i))
        req, _ = H.upgrade_request(s.port)
        try:
            resp = H.http_request(s.port, req)
            status = resp.status
        except (ConnectionError, OSError) as e:
            status = "closed: %r" % e
        print("4th upgrade:", status)
        assert status == 503, status
        await clients[0].close()
        ok = False
        for _ in range(50):
            await asyncio.sleep(0.1)
            try:
                c = await WSClient.connect(s)
            except websockets.InvalidStatusCode:
                continue
            ok = True
            await c.close()
            break
        assert ok, "no new connection accepted after one closed"
        for c in clients[1:]:
            await c.close()
    run(go())
