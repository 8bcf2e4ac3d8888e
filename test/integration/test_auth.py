"""Authentication: handshake tokens, CMD_AUTH_REQ, JWT checks, auth timeout.

protocol.md section 4 and section 10 (close codes, nbf -> ERR_AUTH_FAILED).
"""

import asyncio
import time

import pytest

import imgw_harness as H
from imgw_harness import ERR, WSClient, make_token, run

OK = ERR.Value("ERR_SUCCESS")
AUTH_FAILED = ERR.Value("ERR_AUTH_FAILED")
EXPIRED = ERR.Value("ERR_TOKEN_EXPIRED")


async def auth_expect_fail(c, user, token, code, close=4001):
    f = await c.auth(user, token)
    print("auth response:", f)
    assert f.body.error_code == code, (
        "expected %s, got %s (%r)" % (H.err_name(code), H.err_name(f.body.error_code), f))
    got, before = await c.expect_close(close, timeout=5)
    print("closed with", got, "frames before close:", before)


# ---------------------------------------------------------------- success


@pytest.mark.parametrize("codec", ["pb", "json"])
def test_auth_req_success_new_user(gw, codec):
    print("check: no token at handshake; CMD_AUTH_REQ with a valid HS256 token "
          "-> CMD_AUTH_RSP ERR_SUCCESS, max_seq 0, sequence echoed (%s)" % codec)

    async def go():
        c = await WSClient.connect(gw, codec=codec)
        user = "newuser-%s-%d" % (codec, time.time_ns())
        f = await c.auth(user, make_token(user), seq=41)
        print("got:", f)
        assert f.codec == codec
        assert f.sequence == 41
        assert f.body.error_code == OK, f
        assert f.body.max_seq == 0, f
        await c.close()
    run(go())


@pytest.mark.parametrize("via", ["query", "header", "cookie"])
def test_handshake_token_then_empty_auth_token(gw, via):
    print("check: valid token at handshake via %s; CMD_AUTH_REQ with empty token "
          "-> ERR_SUCCESS" % via)

    async def go():
        user = "hs-%s" % via
        c = await WSClient.connect(gw, token=make_token(user), token_via=via)
        f = await c.auth(user, "")
        print("got:", f)
        assert f.body.error_code == OK, f
        hb = await c.heartbeat()
        print("heartbeat after auth:", hb)
        await c.close()
    run(go())


def test_handshake_cookie_among_other_cookies(gw):
    print("check: 'Cookie: a=1; token=<jwt>; b=2' is found -> auth with empty token ok")

    async def go():
        user = "cookie-multi"
        c = await WSClient.connect(
            gw, headers={"Cookie": "a=1; token=%s; b=2" % make_token(user)})
        f = await c.auth(user, "")
        print("got:", f)
        assert f.body.error_code == OK, f
        await c.close()
    run(go())


def test_handshake_token_and_same_token_in_auth_req(gw):
    print("check: valid token at handshake and again in CMD_AUTH_REQ -> ERR_SUCCESS")

    async def go():
        user = "both-places"
        tok = make_token(user)
        c = await WSClient.connect(gw, token=tok, token_via="header")
        f = await c.auth(user, tok)
        assert f.body.error_code == OK, f
        await c.close()
    run(go())


def test_expired_within_leeway_accepted(gw):
    print("check: token expired 5 s ago is accepted (default leeway 30 s)")

    async def go():
        c = await WSClient.connect(gw)
        f = await c.auth("leeway-user", make_token("leeway-user", exp_in=-5))
        print("got:", f)
        assert f.body.error_code == OK, f
        await c.close()
    run(go())


@pytest.mark.parametrize("claim,value,user", [
    ("user_id", "claim-user-id", "claim-user-id"),
    ("uid", "claim-uid", "claim-uid"),
    ("uid", 123456789, "123456789"),
])
def test_user_id_claim_fallbacks(gw, claim, value, user):
    print("check: token without sub but %s=%r authenticates user %r" % (claim, value, user))

    async def go():
        tok = make_token(None, claims={claim: value}, sub_claim=None)
        c = await WSClient.connect(gw)
        f = await c.auth(user, tok)
        print("got:", f)
        assert f.body.error_code == OK, f
        await c.close()
    run(go())


# ---------------------------------------------------------------- handshake 401


def _bad_tokens():
    good = make_token("alice")
    return {
        "bad_signature": H.tamper_signature(good),
        "wrong_secret": make_token("alice", key="some-other-secret-0123456789abcdef"),
        "expired": make_token("alice", exp_in=-3600),
        "nbf_future": make_token("alice", nbf_in=3600),
        "alg_none": make_token("alice", alg="none"),
        "garbage": "not.a.jwt",
    }


@pytest.mark.parametrize("kind", ["bad_signature", "wrong_secret", "expired",
                                  "nbf_future", "alg_none", "garbage"])
@pytest.mark.parametrize("via", ["query", "header", "cookie"])
def test_handshake_invalid_token_401(gw, kind, via):
    print("check: %s token at handshake via %s -> HTTP 401, no upgrade" % (kind, via))
    tok = _bad_tokens()[kind]
    path, extra = "/ws", {}
    if via == "query":
        path = "/ws?token=" + tok
    elif via == "header":
        extra["Authorization"] = "Bearer " + tok
    else:
        # Same origin, so the cookie is taken and its token is what fails.
        extra["Cookie"] = "token=" + tok
        extra["Origin"] = H.same_origin(gw.port)
    req, _ = H.upgrade_request(gw.port, path=path, extra=extra)
    resp = H.http_request(gw.port, req)
    print("got:", resp)
    assert resp.status == 401, resp


# ---------------------------------------------------------------- CMD_AUTH_REQ failures


def test_auth_user_mismatch_with_handshake_token(gw):
    print("check: handshake token for alice, CMD_AUTH_REQ user_id=bob, empty token "
          "-> ERR_AUTH_FAILED, close 4001")

    async def go():
        c = await WSClient.connect(gw, token=make_token("alice"))
        await auth_expect_fail(c, "bob", "", AUTH_FAILED)
    run(go())


@pytest.mark.parametrize("codec", ["pb", "json"])
def test_auth_user_mismatch_with_req_token(gw, codec):
    print("check: CMD_AUTH_REQ user_id=bob with alice's token -> ERR_AUTH_FAILED, "
          "close 4001 (%s)" % codec)

    async def go():
        c = await WSClient.connect(gw, codec=codec)
        await auth_expect_fail(c, "bob", make_token("alice"), AUTH_FAILED)
    run(go())


def test_auth_expired_token(gw):
    print("check: CMD_AUTH_REQ with a token expired 1 h ago -> ERR_TOKEN_EXPIRED, close 4001")

    async def go():
        c = await WSClient.connect(gw)
        await auth_expect_fail(c, "alice", make_token("alice", exp_in=-3600), EXPIRED)
    run(go())


@pytest.mark.parametrize("kind", ["bad_signature", "wrong_secret", "nbf_future",
                                  "alg_none", "garbage", "empty"])
def test_auth_bad_token(gw, kind):
    print("check: CMD_AUTH_REQ with %s token -> ERR_AUTH_FAILED, close 4001" % kind)
    tok = "" if kind == "empty" else _bad_tokens()[kind]

    async def go():
        c = await WSClient.connect(gw)
        await auth_expect_fail(c, "alice", tok, AUTH_FAILED)
    run(go())


def test_auth_alg_none_unsigned_with_sig_stripped(gw):
    print("check: alg none token with an HS256 header swapped in and no signature "
          "-> ERR_AUTH_FAILED")
    good = make_token("alice")
    h, p, _ = good.split(".")

    async def go():
        c = await WSClient.connect(gw)
        await auth_expect_fail(c, "alice", "%s.%s." % (h, p), AUTH_FAILED)
    run(go())


# ---------------------------------------------------------------- RS256 / ES256


@pytest.mark.parametrize("alg,kname", [("RS256", "rsa"), ("ES256", "ec")])
def test_asymmetric_valid_token_accepted(server, jwt_keys, alg, kname):
    s = server(secret=None, jwt_public_key=jwt_keys[kname + "_pub_path"])
    print("check: %s token signed with the configured key pair is accepted "
          "(CMD_AUTH_REQ and at the handshake)" % alg)

    async def go():
        tok = make_token("carol", alg=alg, key=jwt_keys[kname])
        c = await WSClient.connect(s)
        f = await c.auth("carol", tok)
        print("auth req:", f)
        assert f.body.error_code == OK, f
        await c.close()
        c = await WSClient.connect(s, token=tok, token_via="header")
        f = await c.auth("carol", "")
        print("handshake token:", f)
        assert f.body.error_code == OK, f
        await c.close()
    run(go())


@pytest.mark.parametrize("alg,kname", [("RS256", "rsa"), ("ES256", "ec")])
def test_asymmetric_wrong_key_rejected(server, jwt_keys, alg, kname):
    s = server(secret=None, jwt_public_key=jwt_keys[kname + "_pub_path"])
    print("check: %s token signed with another private key -> ERR_AUTH_FAILED, "
          "close 4001; and 401 at the handshake" % alg)
    tok = make_token("carol", alg=alg, key=jwt_keys[kname + "_other"])

    async def go():
        c = await WSClient.connect(s)
        await auth_expect_fail(c, "carol", tok, AUTH_FAILED)
    run(go())
    req, _ = H.upgrade_request(s.port, path="/ws?token=" + tok)
    resp = H.http_request(s.port, req)
    print("handshake:", resp)
    assert resp.status == 401, resp


def test_rs256_expired_token(server, jwt_keys):
    s = server(secret=None, jwt_public_key=jwt_keys["rsa_pub_path"])
    print("check: expired RS256 token -> ERR_TOKEN_EXPIRED, close 4001")

    async def go():
        c = await WSClient.connect(s)
        await auth_expect_fail(c, "carol", make_token("carol", alg="RS256",
                                                      key=jwt_keys["rsa"],
                                                      exp_in=-3600), EXPIRED)
    run(go())


def test_unconfigured_alg_rejected(server, jwt_keys):
    s = server(secret=None, jwt_public_key=jwt_keys["rsa_pub_path"])
    print("check: with only an RSA public key configured, HS256 tokens are rejected "
          "(incl. HS256 keyed with the public PEM: algorithm confusion), "
          "and alg none too")
    now = int(time.time())
    confused = H.forge_hs256({"sub": "carol", "exp": now + 600},
                             jwt_keys["rsa_pub_pem"])
    plain_hs = make_token("carol")

    async def go():
        for name, tok in (("hs256-pem-secret", confused), ("hs256", plain_hs),
                          ("none", make_token("carol", alg="none"))):
            print(" -", name)
            c = await WSClient.connect(s)
            await auth_expect_fail(c, "carol", tok, AUTH_FAILED)
    run(go())


def test_es256_token_on_rsa_server_rejected(server, jwt_keys):
    s = server(secret=None, jwt_public_key=jwt_keys["rsa_pub_path"])
    print("check: ES256 token on a server with an RSA public key -> ERR_AUTH_FAILED")

    async def go():
        c = await WSClient.connect(s)
        await auth_expect_fail(c, "carol", make_token("carol", alg="ES256",
                                                      key=jwt_keys["ec"]), AUTH_FAILED)
    run(go())


# ---------------------------------------------------------------- before auth


@pytest.mark.parametrize("codec", ["pb", "json"])
def test_command_before_auth(gw, codec):
    print("check: CMD_SEND_MSG_REQ before auth -> CMD_ERROR_RSP ERR_AUTH_FAILED with "
          "the sequence echoed, then close 4001 (%s)" % codec)

    async def go():
        c = await WSClient.connect(gw, codec=codec)
        body = H.pb.SendMessageRequest(client_msg_id="c1", receiver_id="bob",
                                       message_type=1, content=b"hi")
        f = await c.request("CMD_SEND_MSG_REQ", body, seq=7)
        print("got:", f)
        assert f.command == H.cmd_num("CMD_ERROR_RSP"), f
        assert f.sequence == 7, f
        assert f.body.error_code == AUTH_FAILED, f
        await c.expect_close(4001, timeout=5)
    run(go())


def test_sync_before_auth_with_handshake_token(gw):
    print("check: valid handshake token but CMD_SYNC_REQ as first frame -> "
          "CMD_ERROR_RSP ERR_AUTH_FAILED, close 4001")

    async def go():
        c = await WSClient.connect(gw, token=make_token("dave"))
        f = await c.request("CMD_SYNC_REQ", H.pb.SyncRequest(limit=10), seq=3)
        print("got:", f)
        assert f.command == H.cmd_num("CMD_ERROR_RSP") and f.sequence == 3, f
        assert f.body.error_code == AUTH_FAILED, f
        await c.expect_close(4001, timeout=5)
    run(go())


@pytest.mark.parametrize("codec", ["pb", "json"])
def test_heartbeat_before_auth_allowed(gw, codec):
    print("check: CMD_HEARTBEAT_REQ before auth is answered; auth still works after (%s)"
          % codec)

    async def go():
        c = await WSClient.connect(gw, codec=codec)
        hb = await c.heartbeat(seq=5)
        print("heartbeat:", hb)
        assert hb.sequence == 5
        f = await c.auth("erin", make_token("erin"))
        assert f.body.error_code == OK, f
        await c.close()
    run(go())


def test_no_auth_within_timeout_closes_4001(server):
    s = server(auth_timeout=2)
    print("check: auth_timeout=2, connected without auth (heartbeats only) "
          "-> close 4001 (at least ~1s, within 10s)")

    async def go():
        c = await WSClient.connect(s)
        t0 = time.monotonic()
        await c.heartbeat()
        await c.expect_close(4001, timeout=10)
        dt = time.monotonic() - t0
        print("closed after %.2fs" % dt)
        assert dt >= 0.9, "closed too early"
    run(go())


def test_handshake_token_still_needs_auth_req(server):
    s = server(auth_timeout=2)
    print("check: a valid handshake token alone is not a login: no CMD_AUTH_REQ within "
          "auth_timeout=2 -> close 4001")

    async def go():
        c = await WSClient.connect(s, token=make_token("frank"))
        await c.expect_close(4001, timeout=10)
    run(go())


def test_authenticated_connection_outlives_auth_timeout(server):
    s = server(auth_timeout=1)
    print("check: after a successful auth the auth_timeout (1s) no longer applies")

    async def go():
        c = await WSClient.connect(s)
        await c.auth_ok("gina", make_token("gina"))
        for _ in range(5):
            await asyncio.sleep(0.5)
            await c.heartbeat()
        await c.close()
    run(go())


def test_query_token_among_other_params(gw):
    print("check: /ws?a=1&token=<jwt>&b=2 finds the token; auth with empty token ok")

    async def go():
        user = "query-multi"
        c = await WSClient.connect(
            "ws://127.0.0.1:%d/ws?a=1&token=%s&b=2" % (gw.port, make_token(user)))
        f = await c.auth(user, "")
        print("got:", f)
        assert f.body.error_code == OK, f
        await c.close()
    run(go())


def test_bearer_scheme_case_insensitive(gw):
    print("check: 'Authorization: bearer <jwt>' (lower-case scheme, RFC 7235) works")

    async def go():
        user = "bearer-lower"
        c = await WSClient.connect(gw, headers={"Authorization": "bearer " + make_token(user)})
        f = await c.auth(user, "")
        print("got:", f)
        assert f.body.error_code == OK, f
        await c.close()
    run(go())
