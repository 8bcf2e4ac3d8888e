"""wss:// on [tls] ports: a real TLS client (python's ssl through websockets)
against a certificate the test generates; messaging over wss; a wrong or
missing certificate file is a startup error (exit 2)."""
import asyncio
import datetime
import json
import ssl
import subprocess
import time

import jwt
import websockets
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import imgw_harness as H

SECRET = H.DEFAULT_SECRET


def make_cert(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.utcnow()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cp, kp = tmp_path / "cert.pem", tmp_path / "key.pem"
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kp.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    return str(cp), str(kp)


def token(user):
    return jwt.encode({"sub": user, "exp": int(time.time()) + 600}, SECRET, "HS256")


def client_ctx(cert):
    ctx = ssl.create_default_context(cafile=cert)
    ctx.check_hostname = True
    return ctx


def test_wss_messaging(server, tmp_path):
    cert, key = make_cert(tmp_path)
    tls_port = H.free_port()
    srv = server(threads=2, env={"tls.cert": cert, "tls.key": key,
                                 "tls.ports": tls_port})
    print("check: wss handshake with a verified certificate, JSON auth, a message "
          "from a wss client to a plain ws client and back")

    async def go():
        ctx = client_ctx(cert)
        url = "wss://localhost:%d/ws?token=%s" % (tls_port, token("tls_a"))
        async with websockets.connect(url, ssl=ctx) as a, \
                websockets.connect("ws://127.0.0.1:%d/ws?token=%s"
                                   % (srv.port, token("tls_b"))) as b:
            print("TLS version:", a.transport.get_extra_info("ssl_object").version())
            await a.send(json.dumps({"command": "CMD_AUTH_REQ", "sequence": 1,
                                     "body": {}}))
            r = json.loads(await a.recv())
            print("auth over wss:", r)
            assert r["body"]["error_code"] == "ERR_SUCCESS"
            await b.send(json.dumps({"command": "CMD_AUTH_REQ", "sequence": 1,
                                     "body": {}}))
            json.loads(await b.recv())
            big = "x" * 50000
            await a.send(json.dumps({"command": "CMD_SEND_MSG_REQ", "sequence": 2,
                                     "body": {"receiver_id": "tls_b",
                                              "client_msg_id": "t1",
                                              "content": big}}))
            r = json.loads(await a.recv())
            assert r["body"]["error_code"] == "ERR_SUCCESS", r
            p = json.loads(await asyncio.wait_for(b.recv(), 5))
            assert p["command"] == "CMD_PUSH_MSG" and p["body"]["content"] == big
            await b.send(json.dumps({"command": "CMD_SEND_MSG_REQ", "sequence": 2,
                                     "body": {"receiver_id": "tls_a",
                                              "client_msg_id": "t2",
                                              "content": "back"}}))
            for _ in range(3):
                p = json.loads(await asyncio.wait_for(a.recv(), 5))
                if p["command"] == "CMD_PUSH_MSG":
                    break
            print("push over wss:", p["body"]["content"])
            assert p["body"]["content"] == "back"
    H.run(go())
    # The plain port does not speak TLS and the TLS port not plain HTTP.
    r = H.http_get(srv.port, "/healthz")
    assert r.status == 200


def test_tls_port_refuses_plaintext(server, tmp_path):
    cert, key = make_cert(tmp_path)
    tls_port = H.free_port()
    server(threads=1, env={"tls.cert": cert, "tls.key": key, "tls.ports": tls_port})
    import socket
    s = socket.create_connection(("127.0.0.1", tls_port), timeout=5)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    try:
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    s.close()
    print("plaintext on the TLS port got:", data[:40])
    assert b"HTTP/1.1 200" not in data


def test_bad_certificate_is_startup_error(imgw_bin, tmp_path):
    cert, key = make_cert(tmp_path)
    bad = tmp_path / "garbage.pem"
    bad.write_text("not a certificate\n")
    cases = [("missing cert", str(tmp_path / "nope.pem"), key, "tls.cert"),
             ("garbage cert", str(bad), key, "tls.cert"),
             ("missing key", cert, str(tmp_path / "nokey.pem"), "tls.key")]
    for what, c, k, name in cases:
        env = H.clean_env({"IMGW__SERVER__PORTS": str(H.free_port()),
                           "IMGW__TLS__PORTS": str(H.free_port()),
                           "IMGW__TLS__CERT": c, "IMGW__TLS__KEY": k,
                           "IMGW__AUTH__JWT_SECRET": SECRET})
        p = subprocess.run([imgw_bin, "-t", "1"], env=env, capture_output=True,
                           text=True, timeout=20, cwd=str(tmp_path))
        print(what, "-> exit", p.returncode, p.stderr.strip().splitlines()[-1:])
        assert p.returncode == 2
        assert name in p.stderr
