"""Shared helpers for the imgw integration suite.

Imported by conftest.py (fixtures) and by the test modules (clients, tokens,
raw HTTP). Only Debian's python3 packages are used: pytest, websockets 10.x
(legacy asyncio API), protobuf, PyJWT and cryptography.

What lives here:
  * imgw_pb2           Python classes generated from proto/imgw.proto at import
  * ServerProc         one running imgw process (port, url, proc, log_text())
  * start_server()     writes an INI + env overrides, starts, waits for /healthz
  * make_token()       HS256 / RS256 / ES256 / none tokens with PyJWT
  * WSClient           asyncio WebSocket client speaking both codecs
  * HTTPConn / http_*  raw-socket HTTP for exact handshake control
  * RawWS              raw-socket WebSocket client (hand-built frames)
"""

import asyncio
import atexit
import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

from urllib.parse import urlsplit

import jwt  # PyJWT
import websockets
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor

# --------------------------------------------------------------------------
# paths

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
PROTO_DIR = os.path.join(REPO, "proto")


def binary_path():
    p = os.environ.get("IMGW_BIN", os.path.join(REPO, "build", "imgw"))
    if not os.path.isabs(p):
        p = os.path.join(REPO, p)
    return p


def require_binary():
    p = binary_path()
    if not (os.path.isfile(p) and os.access(p, os.X_OK)):
        raise RuntimeError(
            "imgw binary not found or not executable at %r; build it first "
            "(meson setup build && ninja -C build) or set IMGW_BIN" % p)
    return p


# --------------------------------------------------------------------------
# protobuf classes, generated once per session


def _gen_proto():
    out = tempfile.mkdtemp(prefix="imgw_pb_")
    atexit.register(shutil.rmtree, out, True)
    cmd = ["protoc", "--python_out=" + out, "-I", PROTO_DIR,
           os.path.join(PROTO_DIR, "imgw.proto")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("protoc failed: %s\n%s" % (cmd, r.stderr))
    sys.path.insert(0, out)
    import imgw_pb2  # noqa: E402
    return imgw_pb2


imgw_pb2 = _gen_proto()
pb = imgw_pb2
CMD = pb.CommandType
ERR = pb.ErrorCode

# protocol.md section 3: command number -> body class
BODY_CLASS = {
    CMD.Value("CMD_ERROR_RSP"): pb.ErrorResponse,
    CMD.Value("CMD_HEARTBEAT_REQ"): pb.HeartbeatRequest,
    CMD.Value("CMD_HEARTBEAT_RSP"): pb.HeartbeatResponse,
    CMD.Value("CMD_AUTH_REQ"): pb.AuthRequest,
    CMD.Value("CMD_AUTH_RSP"): pb.AuthResponse,
    CMD.Value("CMD_KICK_PUSH"): pb.KickPush,
    CMD.Value("CMD_SEND_MSG_REQ"): pb.SendMessageRequest,
    CMD.Value("CMD_SEND_MSG_RSP"): pb.SendMessageResponse,
    CMD.Value("CMD_PUSH_MSG"): pb.PushMessage,
    CMD.Value("CMD_MSG_ACK"): pb.MessageAck,
    CMD.Value("CMD_REVOKE_MSG_REQ"): pb.RevokeMessageRequest,
    CMD.Value("CMD_REVOKE_MSG_RSP"): pb.RevokeMessageResponse,
    CMD.Value("CMD_REVOKE_MSG_PUSH"): pb.RevokeMessagePush,
    CMD.Value("CMD_SYNC_REQ"): pb.SyncRequest,
    CMD.Value("CMD_SYNC_RSP"): pb.SyncResponse,
    CMD.Value("CMD_READ_RECEIPT_REQ"): pb.ReadReceiptRequest,
    CMD.Value("CMD_READ_RECEIPT_RSP"): pb.ReadReceiptResponse,
    CMD.Value("CMD_READ_RECEIPT_PUSH"): pb.ReadReceiptPush,
    CMD.Value("CMD_TYPING_STATUS_REQ"): pb.TypingStatusRequest,
    CMD.Value("CMD_TYPING_STATUS_PUSH"): pb.TypingStatusPush,
    CMD.Value("CMD_CONVERSATION_LIST_REQ"): pb.ConversationListRequest,
    CMD.Value("CMD_CONVERSATION_LIST_RSP"): pb.ConversationListResponse,
    CMD.Value("CMD_CONVERSATION_DELETE_REQ"): pb.ConversationDeleteRequest,
    CMD.Value("CMD_CONVERSATION_DELETE_RSP"): pb.ConversationDeleteResponse,
    CMD.Value("CMD_PRESENCE_REQ"): pb.PresenceRequest,
    CMD.Value("CMD_PRESENCE_RSP"): pb.PresenceResponse,
    CMD.Value("CMD_PRESENCE_SUB_REQ"): pb.PresenceSubscribeRequest,
    CMD.Value("CMD_PRESENCE_SUB_RSP"): pb.PresenceSubscribeResponse,
    CMD.Value("CMD_PRESENCE_PUSH"): pb.PresencePush,
}


def cmd_num(cmd):
    """'CMD_AUTH_REQ' or 100 -> 100."""
    if isinstance(cmd, str):
        return CMD.Value(cmd)
    return int(cmd)


def cmd_name(n):
    try:
        return CMD.Name(n)
    except ValueError:
        return str(n)


def err_name(n):
    try:
        return ERR.Name(n)
    except ValueError:
        return str(n)


def now_ms():
    return int(time.time() * 1000)


# --------------------------------------------------------------------------
# JSON codec helpers (protocol.md sections 2 and 10: proto field names,
# enums by name, 64-bit ints as numbers, bytes as UTF-8 strings)


def msg_to_json_dict(msg):
    """protobuf message -> dict in the imgw JSON form."""
    out = {}
    for fd, value in msg.ListFields():
        out[fd.name] = _field_to_json(fd, value)
    return out


def _scalar_to_json(fd, v):
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return v.decode("utf-8")
    if fd.type == FieldDescriptor.TYPE_ENUM:
        ev = fd.enum_type.values_by_number.get(v)
        return ev.name if ev else v
    if fd.type == FieldDescriptor.TYPE_MESSAGE:
        return msg_to_json_dict(v)
    return v


def _field_to_json(fd, value):
    if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
        return dict(value)
    if fd.label == FieldDescriptor.LABEL_REPEATED:
        return [_scalar_to_json(fd, v) for v in value]
    return _scalar_to_json(fd, value)


def json_dict_to_msg(d, cls):
    """dict in the imgw JSON form -> protobuf message (raises on mismatch)."""
    msg = cls()
    fixed = _fix_bytes_for_parse(d, cls.DESCRIPTOR)
    json_format.ParseDict(fixed, msg, ignore_unknown_fields=True)
    return msg


def _fix_bytes_for_parse(d, desc):
    # json_format wants base64 for bytes; imgw sends UTF-8 text.
    if not isinstance(d, dict):
        return d
    out = dict(d)
    for name, v in d.items():
        fd = desc.fields_by_name.get(name)
        if fd is None:
            continue
        if fd.type == FieldDescriptor.TYPE_BYTES:
            if isinstance(v, str):
                out[name] = base64.b64encode(v.encode("utf-8")).decode()
            elif isinstance(v, list):
                out[name] = [base64.b64encode(x.encode("utf-8")).decode()
                             if isinstance(x, str) else x for x in v]
        elif (fd.type == FieldDescriptor.TYPE_MESSAGE
              and not fd.message_type.GetOptions().map_entry):
            if isinstance(v, list):
                out[name] = [_fix_bytes_for_parse(x, fd.message_type) for x in v]
            else:
                out[name] = _fix_bytes_for_parse(v, fd.message_type)
    return out


# --------------------------------------------------------------------------
# tokens


DEFAULT_SECRET = "imgw-test-secret-0123456789abcdef0123456789abcdef"


def make_token(user="u1", alg="HS256", key=None, exp_in=600, nbf_in=None,
               claims=None, sub_claim="sub", headers=None):
    """Mint a JWT. key defaults to DEFAULT_SECRET for HS256; for RS256/ES256
    pass a cryptography private key. exp_in=None: no exp claim."""
    now = int(time.time())
    payload = {"iat": now}
    if user is not None and sub_claim:
        payload[sub_claim] = user
    if exp_in is not None:
        payload["exp"] = now + exp_in
    if nbf_in is not None:
        payload["nbf"] = now + nbf_in
    if claims:
        payload.update(claims)
    if alg == "none":
        return jwt.encode(payload, None, algorithm="none", headers=headers)
    if key is None:
        key = DEFAULT_SECRET
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def _b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def forge_hs256(payload, secret_bytes, header=None):
    """HS256 token signed with arbitrary bytes (PyJWT refuses PEM secrets)."""
    header = header or {"alg": "HS256", "typ": "JWT"}
    h = _b64url(json.dumps(header, separators=(",", ":")).encode())
    p = _b64url(json.dumps(payload, separators=(",", ":")).encode())
    sig = hmac.new(secret_bytes, ("%s.%s" % (h, p)).encode(),
                   hashlib.sha256).digest()
    return "%s.%s.%s" % (h, p, _b64url(sig))


def tamper_signature(token):
    h, p, s = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))
    raw[0] ^= 0x01
    return "%s.%s.%s" % (h, p, _b64url(bytes(raw)))


# --------------------------------------------------------------------------
# server process


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# shorthand keyword -> INI section
KEY_SECTION = {
    "ports": "server", "bind": "server", "threads": "server",
    "broker_id": "server", "node_id": "server", "route_ttl": "server",
    "revoke_window": "server", "max_connections": "server",
    "heartbeat_timeout": "server", "auth_timeout": "server",
    "drain_seconds": "server", "origins": "server",
    "jwt_secret": "auth", "require_exp": "auth", "admin_fail_limit": "auth", "jwt_public_key": "auth", "leeway": "auth",
    "issuer": "auth", "audience": "auth", "app_ids": "auth",
    "admin_token": "auth",
    "backend": "store",
    "max_message_bytes": "limits", "max_frame_bytes": "limits",
    "send_rate": "limits",
}


def clean_env(extra=None):
    """os.environ without any IMGW__* / IMGW_LOG, plus extra."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("IMGW__") and k != "IMGW_LOG"
           and k != "IMGW_BIN"}
    env.setdefault("ASAN_OPTIONS", "abort_on_error=0:detect_leaks=1")
    if extra:
        env.update(extra)
    return env


def env_name(section, key):
    return "IMGW__%s__%s" % (section.upper(), key.upper())


class ServerProc:
    def __init__(self, tmpdir, name, threads, ini, env_over, args, log_level,
                 n_ports=1, ports_via_env=False, config_mode="flag"):
        # config_mode: "flag"  -c FILE -t N -l LEVEL (default)
        #              "long"  --config FILE --threads N --log-level LEVEL
        #              "cwd"   FILE written to <cwd>/conf/imgw.ini, no -c
        #              "env"   no file at all: every key as IMGW__S__K
        self.config_mode = config_mode
        self.n_ports = n_ports
        self.ports_via_env = ports_via_env
        self.ports = []
        self.tmpdir = tmpdir
        self.name = name
        self.threads = threads
        self.ini = ini            # {section: {key: value}}
        self.env_over = env_over  # {IMGW__S__K: value}
        self.args = list(args or [])
        self.log_level = log_level
        self.port = None
        self.proc = None
        self.log_path = os.path.join(tmpdir, "%s.log" % name)
        self.ini_path = os.path.join(tmpdir, "%s.ini" % name)
        self.cmdline = None
        self.exit_code = None
        self.stopped = False

    # -- helpers for tests
    @property
    def url(self):
        return "ws://127.0.0.1:%d/ws" % self.port

    def ws_url(self, path="/ws"):
        return "ws://127.0.0.1:%d%s" % (self.port, path)

    def log_text(self):
        try:
            with open(self.log_path, "r", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def log_tail(self, n=60):
        return "\n".join(self.log_text().splitlines()[-n:])

    def describe(self):
        envs = " ".join("%s=%s" % kv for kv in sorted(self.env_over.items()))
        return "%s %s" % (envs, " ".join(self.cmdline or []))

    # -- lifecycle
    def _write_ini(self):
        with open(self.ini_path, "w") as f:
            for section, kv in self.ini.items():
                f.write("[%s]\n" % section)
                for k, v in kv.items():
                    f.write("%s = %s\n" % (k, v))
                f.write("\n")

    def start(self, ready_timeout=10.0):
        binp = require_binary()
        last_err = None
        for attempt in range(4):
            self.ports = []
            while len(self.ports) < self.n_ports:
                p = free_port()
                if p not in self.ports:
                    self.ports.append(p)
            self.port = self.ports[0]
            plist = ",".join(str(p) for p in self.ports)
            if self.ports_via_env:
                self.ini.setdefault("server", {}).pop("ports", None)
                self.env_over[env_name("server", "ports")] = plist
            else:
                self.ini.setdefault("server", {})["ports"] = plist
            mode = self.config_mode
            if mode == "env":
                for section, kv in self.ini.items():
                    for k, v in kv.items():
                        self.env_over.setdefault(env_name(section, k), str(v))
                if not self.ports_via_env:
                    self.env_over[env_name("server", "ports")] = plist
                cfg = []
            elif mode == "cwd":
                os.makedirs(os.path.join(self.tmpdir, "conf"), exist_ok=True)
                self.ini_path = os.path.join(self.tmpdir, "conf", "imgw.ini")
                self._write_ini()
                cfg = []
            else:
                self._write_ini()
                cfg = ["--config" if mode == "long" else "-c", self.ini_path]
            if mode == "long":
                opts = ["--threads", str(self.threads), "--log-level", self.log_level]
            else:
                opts = ["-t", str(self.threads), "-l", self.log_level]
            self.cmdline = [binp] + cfg + opts + self.args
            env = clean_env(self.env_over)
            logf = open(self.log_path, "ab")
            logf.write(("=== start attempt %d: %s\n" % (attempt, self.describe())).encode())
            logf.flush()
            self.proc = subprocess.Popen(self.cmdline, stdout=logf,
                                         stderr=subprocess.STDOUT, env=env,
                                         cwd=self.tmpdir)
            logf.close()
            ok, last_err = self._wait_ready(ready_timeout)
            if ok:
                print("[harness] started imgw pid=%d port=%d threads=%d: %s"
                      % (self.proc.pid, self.port, self.threads, self.describe()))
                return self
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            text = self.log_text().lower()
            if ("in use" in text or "eaddrinuse" in text
                    or "already served" in text):
                continue  # port race with a parallel run: retry
            break
        raise RuntimeError("imgw did not become ready: %s\n--- log tail ---\n%s"
                           % (last_err, self.log_tail()))

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        err = "timeout"
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                return False, "process exited with code %d during startup" % rc
            try:
                r = http_get(self.port, "/healthz", timeout=1.0)
                if r.status == 200:
                    self._wait_store()
                    return True, None
                err = "healthz answered %d" % r.status
            except OSError as e:
                err = "healthz: %r" % (e,)
            time.sleep(0.05)
        return False, "no 200 from /healthz within %.0fs (%s)" % (timeout, err)

    def _wait_store(self, timeout=10.0):
        """/healthz answers as soon as imgw listens; a Redis store connects
        each loop a moment later, and a login reaching a loop whose store is
        not up yet is refused (ERR_SERVER_BUSY). Wait until /readyz stops
        saying "store unavailable" (it checks every loop), but go on after
        the timeout: some tests start with the store down on purpose."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                r = http_get(self.port, "/readyz", timeout=1.0)
                if b"store unavailable" not in r.body:
                    return
            except OSError:
                return
            time.sleep(0.05)

    def signal(self, sig):
        self.proc.send_signal(sig)

    def wait_exit(self, timeout):
        try:
            self.exit_code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.exit_code

    def stop(self, timeout=10.0):
        """SIGTERM, wait, SIGKILL. Returns (exit_code, killed)."""
        if self.stopped:
            return self.exit_code, False
        self.stopped = True
        if self.proc is None:
            return None, False
        killed = False
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                killed = True
        self.exit_code = self.proc.returncode
        return self.exit_code, killed


def build_server(tmpdir, name, threads=2, log_level="info", args=None,
                 ini=None, env=None, secret=DEFAULT_SECRET, n_ports=1,
                 ports_via_env=False, config_mode="flag", **overrides):
    """Prepare a ServerProc.

    Base config goes to an INI file: [server] bind/ports/drain_seconds and
    [auth] jwt_secret. Overrides:
      * shorthand kwargs (auth_timeout=2, max_frame_bytes=4096, ...) and
      * env={"server.auth_timeout": 2} or {"IMGW__SERVER__AUTH_TIMEOUT": 2}
    become IMGW__SECTION__KEY environment variables (env > file);
      * ini={"section": {"key": value}} is merged into the file.
    secret=None leaves jwt_secret unset.
    """
    base = {
        "server": {"bind": "127.0.0.1", "drain_seconds": "1"},
        "auth": {},
    }
    if secret is not None:
        base["auth"]["jwt_secret"] = secret
    for section, kv in (ini or {}).items():
        base.setdefault(section, {}).update({k: str(v) for k, v in kv.items()})
    base = {s: kv for s, kv in base.items() if kv or s == "server"}
    env_over = {}
    for k, v in overrides.items():
        if k not in KEY_SECTION:
            raise TypeError("unknown server override %r (use env=...)" % k)
        env_over[env_name(KEY_SECTION[k], k)] = str(v)
    for k, v in (env or {}).items():
        if k.startswith("IMGW"):
            env_over[k] = str(v)
        else:
            s, key = k.split(".", 1)
            env_over[env_name(s, key)] = str(v)
    return ServerProc(tmpdir, name, threads, base, env_over, args, log_level,
                      n_ports=n_ports, ports_via_env=ports_via_env,
                      config_mode=config_mode)


# --------------------------------------------------------------------------
# raw HTTP


class HTTPResponse:
    def __init__(self, status, reason, headers, body, raw_head):
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (name_lower, value)
        self.body = body
        self.raw_head = raw_head

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return default

    def header_all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k == name]

    def __repr__(self):
        return "<HTTP %d %s %r body=%r>" % (self.status, self.reason,
                                             self.headers, self.body[:200])


class HTTPConn:
    """One TCP connection; send exact bytes, read responses."""

    def __init__(self, port, timeout=5.0, host="127.0.0.1"):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.timeout = timeout
        self.closed_by_peer = False

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.sock.sendall(data)

    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("timed out reading")
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(65536)
        if not chunk:
            self.closed_by_peer = True
            return False
        self.buf += chunk
        return True

    def read_response(self, timeout=None, head_only=False):
        """Read one response. head_only: don't read a body (101)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while b"\r\n\r\n" not in self.buf:
            if not self._fill(deadline):
                raise ConnectionError("peer closed before a full response head; "
                                      "got %r" % self.buf[:300])
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        m = re.match(r"HTTP/1\.[01] (\d{3})(?: (.*))?$", lines[0])
        if not m:
            raise AssertionError("bad status line %r" % lines[0])
        status, reason = int(m.group(1)), m.group(2) or ""
        headers = []
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            headers.append((k.strip().lower(), v.strip()))
        resp = HTTPResponse(status, reason, headers, b"", head)
        if head_only or status == 101 or 100 <= status < 200 or status in (204, 304):
            return resp
        cl = resp.header("content-length")
        te = (resp.header("transfer-encoding") or "").lower()
        if cl is not None:
            n = int(cl)
            while len(self.buf) < n:
                if not self._fill(deadline):
                    break
            resp.body, self.buf = self.buf[:n], self.buf[n:]
        elif "chunked" in te:
            body = b""
            while True:
                while b"\r\n" not in self.buf:
                    if not self._fill(deadline):
                        raise ConnectionError("eof in chunked body")
                line, self.buf = self.buf.split(b"\r\n", 1)
                size = int(line.split(b";")[0], 16)
                while len(self.buf) < size + 2:
                    if not self._fill(deadline):
                        raise ConnectionError("eof in chunked body")
                body += self.buf[:size]
                self.buf = self.buf[size + 2:]
                if size == 0:
                    break
            resp.body = body
        else:
            # read until close
            try:
                while self._fill(deadline):
                    pass
            except socket.timeout:
                pass
            resp.body, self.buf = self.buf, b""
        return resp

    def wait_closed(self, timeout=5.0):
        """True if the peer closes (EOF or RST) within timeout."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                if not self._fill(deadline):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def http_request(port, raw, timeout=5.0, head_only=False):
    c = HTTPConn(port, timeout=timeout)
    try:
        c.send(raw)
        return c.read_response(head_only=head_only)
    finally:
        c.close()


def http_get(port, path, timeout=5.0, headers=None):
    h = "".join("%s: %s\r\n" % kv for kv in (headers or {}).items())
    raw = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%sConnection: close\r\n\r\n"
           % (path, port, h))
    return http_request(port, raw, timeout=timeout)


WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_accept(key):
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


def new_ws_key():
    return base64.b64encode(os.urandom(16)).decode()


def same_origin(port):
    """The Origin a browser would send for a page served by imgw on port
    (upgrade_request's Host is 127.0.0.1:port)."""
    return "http://127.0.0.1:%d" % port


def upgrade_request(port, path="/ws", key=None, method="GET", version="13",
                    upgrade="websocket", connection="Upgrade", extra=None,
                    omit=()):
    """Build a handshake request. Header values None or names in omit are left out."""
    key = new_ws_key() if key is None else key
    hdrs = [("Host", "127.0.0.1:%d" % port), ("Upgrade", upgrade),
            ("Connection", connection), ("Sec-WebSocket-Key", key),
            ("Sec-WebSocket-Version", version)]
    hdrs += list((extra or {}).items())
    lines = ["%s %s HTTP/1.1" % (method, path)]
    for k, v in hdrs:
        if v is None or k in omit:
            continue
        lines.append("%s: %s" % (k, v))
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), key


# --------------------------------------------------------------------------
# raw WebSocket over a socket (handshake + hand-built frames)

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


class RawWS:
    def __init__(self, port, path="/ws", extra=None, timeout=5.0):
        self.http = HTTPConn(port, timeout=timeout)
        req, key = upgrade_request(port, path=path, extra=extra)
        self.http.send(req)
        resp = self.http.read_response(head_only=True)
        if resp.status != 101:
            raise AssertionError("handshake failed: %r" % resp)
        assert resp.header("sec-websocket-accept") == ws_accept(key)
        self.sock = self.http.sock

    def send_frame(self, opcode, payload, fin=True, mask=True, rsv=0):
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
        n = len(payload)
        mbit = 0x80 if mask else 0
        if n < 126:
            hdr = struct.pack("!BB", b0, mbit | n)
        elif n < 65536:
            hdr = struct.pack("!BBH", b0, mbit | 126, n)
        else:
            hdr = struct.pack("!BBQ", b0, mbit | 127, n)
        if mask:
            mk = os.urandom(4)
            payload = bytes(b ^ mk[i % 4] for i, b in enumerate(payload))
            hdr += mk
        self.sock.sendall(hdr + payload)

    def _need(self, n, deadline):
        while len(self.http.buf) < n:
            if not self.http._fill(deadline):
                raise ConnectionError("eof")
        out, self.http.buf = self.http.buf[:n], self.http.buf[n:]
        return out

    def recv_frame(self, timeout=5.0):
        """-> (fin, opcode, payload). Raises ConnectionError on EOF."""
        deadline = time.monotonic() + timeout
        b0, b1 = self._need(2, deadline)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._need(2, deadline))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._need(8, deadline))[0]
        mk = self._need(4, deadline) if b1 & 0x80 else None
        data = self._need(n, deadline)
        if mk:
            data = bytes(b ^ mk[i % 4] for i, b in enumerate(data))
        return bool(b0 & 0x80), b0 & 0x0F, data

    def recv_message(self, timeout=5.0):
        """Next data message (skipping pongs). Returns (opcode, payload);
        a close frame returns (OP_CLOSE, payload)."""
        deadline = time.monotonic() + timeout
        while True:
            fin, op, data = self.recv_frame(max(0.01, deadline - time.monotonic()))
            if op in (OP_PONG, OP_PING):
                continue
            if op == OP_CLOSE:
                return op, data
            buf, first = data, op
            while not fin:
                fin, op, data = self.recv_frame(max(0.01, deadline - time.monotonic()))
                if op in (OP_PING, OP_PONG):
                    continue
                buf += data
            return first, buf

    def expect_close(self, timeout=5.0):
        """Read until a close frame; returns (code, reason, frames_before)."""
        deadline = time.monotonic() + timeout
        before = []
        while True:
            try:
                fin, op, data = self.recv_frame(max(0.01, deadline - time.monotonic()))
            except (ConnectionError, ConnectionResetError) as e:
                raise AssertionError("connection ended without a close frame "
                                     "(%r); frames before: %r" % (e, before))
            if op == OP_CLOSE:
                code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
                return code, data[2:].decode("utf-8", "replace"), before
            before.append((op, data))

    def close(self):
        self.http.close()


def _varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def pb_frame(cmd, body=b"", seq=1, ts=None):
    env = pb.WebSocketMessage()
    env.command = cmd_num(cmd)
    env.sequence = seq
    if not isinstance(body, (bytes, bytearray)):
        body = body.SerializeToString()
    env.body = bytes(body)
    env.timestamp = now_ms() if ts is None else ts
    return env.SerializeToString()


# --------------------------------------------------------------------------
# asyncio WebSocket client (both codecs)


class Frame:
    def __init__(self, codec, command, sequence, body, raw, json_obj=None,
                 timestamp=0):
        self.codec = codec          # "pb" or "json"
        self.command = command      # int
        self.sequence = sequence
        self.body = body            # imgw_pb2 message (None if unknown cmd)
        self.raw = raw              # bytes / str as received
        self.json = json_obj        # dict for text frames
        self.timestamp = timestamp

    @property
    def name(self):
        return cmd_name(self.command)

    def __iter__(self):
        # allows: command, sequence, body = await client.recv_frame()
        return iter((self.command, self.sequence, self.body))

    def __repr__(self):
        b = (json_format.MessageToDict(self.body, preserving_proto_field_name=True)
             if self.body is not None else None)
        return "<Frame %s %s seq=%d body=%r%s>" % (
            self.codec, self.name, self.sequence, b,
            (" json=%r" % self.json) if self.json is not None else "")


class ClosedError(AssertionError):
    pass


def decode_frame(data):
    if isinstance(data, (bytes, bytearray)):
        env = pb.WebSocketMessage()
        env.ParseFromString(bytes(data))
        cls = BODY_CLASS.get(env.command)
        body = None
        if cls is not None:
            body = cls()
            body.ParseFromString(env.body)
        return Frame("pb", env.command, env.sequence, body, data,
                     timestamp=env.timestamp)
    obj = json.loads(data)
    assert isinstance(obj, dict), "text frame is not a JSON object: %r" % data
    c = obj.get("command")
    if isinstance(c, str):
        c = CMD.Value(c) if c in CMD.keys() else int(c)
    cls = BODY_CLASS.get(c)
    body = None
    if cls is not None:
        body = json_dict_to_msg(obj.get("body") or {}, cls)
    ts = obj.get("timestamp", 0)
    return Frame("json", c, int(obj.get("sequence", 0)), body, data, obj,
                 timestamp=int(ts) if ts is not None else 0)


class WSClient:
    """asyncio client; codec "pb" (binary frames) or "json" (text frames)."""

    def __init__(self, ws, codec="pb"):
        self.ws = ws
        self.codec = codec
        self.seq = 0
        self.received = []

    @classmethod
    async def connect(cls, server, path="/ws", codec="pb", token=None,
                      token_via="query", headers=None, ping_interval=None,
                      open_timeout=10):
        url = server.ws_url(path) if hasattr(server, "ws_url") else server
        hdrs = dict(headers or {})
        if token is not None:
            if token_via == "query":
                url += ("&" if "?" in url else "?") + "token=" + token
            elif token_via == "header":
                hdrs["Authorization"] = "Bearer " + token
            elif token_via == "cookie":
                hdrs["Cookie"] = "token=" + token
            else:
                raise ValueError(token_via)
        if "Cookie" in hdrs:
            # A browser sends its Origin with the cookie; imgw takes the
            # token cookie only from a vetted Origin (same origin here).
            hdrs.setdefault("Origin", "http://" + urlsplit(url).netloc)
        ws = await websockets.connect(url, extra_headers=hdrs, max_size=None,
                                      ping_interval=ping_interval,
                                      open_timeout=open_timeout,
                                      close_timeout=5, compression=None)
        return cls(ws, codec)

    def next_seq(self):
        self.seq += 1
        return self.seq

    def encode(self, cmd, body=None, seq=None, codec=None, ts=None):
        codec = codec or self.codec
        n = cmd_num(cmd)
        seq = self.next_seq() if seq is None else seq
        if codec == "pb":
            if body is None:
                raw = b""
            elif isinstance(body, (bytes, bytearray)):
                raw = bytes(body)
            elif isinstance(body, dict):
                raw = json_dict_to_msg(body, BODY_CLASS[n]).SerializeToString()
            else:
                raw = body.SerializeToString()
            return pb_frame(n, raw, seq, ts), seq
        if body is None:
            jb = {}
        elif isinstance(body, dict):
            jb = body
        else:
            jb = msg_to_json_dict(body)
        cmd_field = cmd if isinstance(cmd, str) else (
            cmd_name(n) if n in CMD.values() else n)
        obj = {"command": cmd_field, "sequence": seq, "body": jb}
        if ts is not None:
            obj["timestamp"] = ts
        return json.dumps(obj), seq

    async def send_cmd(self, cmd, body=None, seq=None, codec=None):
        data, seq = self.encode(cmd, body, seq, codec)
        await self.ws.send(data)
        return seq

    async def send_raw(self, data):
        await self.ws.send(data)

    async def recv_frame(self, timeout=5.0):
        try:
            data = await asyncio.wait_for(self.ws.recv(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError("no frame within %.1fs" % timeout)
        except websockets.ConnectionClosed as e:
            raise ClosedError("connection closed while waiting for a frame: "
                              "code=%s reason=%r" % (self.ws.close_code,
                                                     self.ws.close_reason)) from e
        f = decode_frame(data)
        self.received.append(f)
        return f

    async def request(self, cmd, body=None, seq=None, codec=None, timeout=5.0,
                      expect=None):
        """Send and return the next frame; expect = command that must come back."""
        seq = await self.send_cmd(cmd, body, seq, codec)
        f = await self.recv_frame(timeout)
        if expect is not None:
            assert f.command == cmd_num(expect), (
                "expected %s for seq %d, got %r" % (expect, seq, f))
            assert f.sequence == seq, "sequence not echoed: sent %d, got %r" % (seq, f)
        return f

    async def auth(self, user, token, platform="Web", seq=None, codec=None,
                   timeout=5.0):
        body = pb.AuthRequest(user_id=user, token=token or "", platform=platform)
        return await self.request("CMD_AUTH_REQ", body, seq, codec, timeout,
                                  expect="CMD_AUTH_RSP")

    async def auth_ok(self, user, token, platform="Web", codec=None):
        f = await self.auth(user, token, platform, codec=codec)
        assert f.body.error_code == ERR.Value("ERR_SUCCESS"), (
            "auth of %s failed: %r" % (user, f))
        return f

    async def heartbeat(self, seq=None, codec=None, timeout=5.0):
        return await self.request("CMD_HEARTBEAT_REQ",
                                  pb.HeartbeatRequest(client_time=now_ms()),
                                  seq, codec, timeout,
                                  expect="CMD_HEARTBEAT_RSP")

    async def expect_close(self, code=None, timeout=5.0):
        """Wait for the server to close; returns (code, frames before close)."""
        before = []
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("connection not closed within %.1fs; "
                                     "frames: %r" % (timeout, before))
            try:
                data = await asyncio.wait_for(self.ws.recv(), remaining)
            except asyncio.TimeoutError:
                continue
            except websockets.ConnectionClosed:
                break
            try:
                before.append(decode_frame(data))
            except Exception:  # keep raw data for the message
                before.append(data)
        got = self.ws.close_code
        if code is not None:
            assert got == code, ("expected close code %d, got %s (reason %r); "
                                 "frames before close: %r"
                                 % (code, got, self.ws.close_reason, before))
        return got, before

    async def close(self):
        try:
            await asyncio.wait_for(self.ws.close(), 5)
        except Exception:
            pass


def run(coro):
    return asyncio.run(coro)


# --------------------------------------------------------------------------
# metrics

METRIC_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)")


def parse_metrics(text):
    """-> list of (name, {label: value}, float)."""
    out = []
    for ln in text.splitlines():
        if not ln or ln.startswith("#"):
            continue
        m = METRIC_RE.match(ln)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        try:
            v = float(m.group(4))
        except ValueError:
            continue
        out.append((m.group(1), labels, v))
    return out
