"""Real Redis and RabbitMQ servers for the imgw integration tests.

Standalone: only the standard library, plus Debian's python3-redis,
python3-pika and python3-pytest (the fixtures at the bottom).  No mocks:
every server is the Debian binary, started on free loopback ports in its
own temporary directory, in its own process group, and never left behind.

    from services import RedisServer, RabbitMQServer, free_port

    r = RedisServer(unix_socket=True).start(persist=True)
    r.client().set("k", "v")
    r.kill(); r.start()                  # crash + restart, same port & dir
    r.cleanup()                          # stop + remove the temp dir

    mq = RabbitMQServer().start()        # ~3-8 s on 2 shared cores
    conn = mq.connection()               # pika.BlockingConnection
    mq.restart()                         # same ports, node name and data
    mq.cleanup()

Fixtures (import them into conftest.py or a test module):
    redis_server      function scope: a fresh server per test
    redis_factory     function scope: redis_factory(password=..., unix_socket=True, persist=True)
    rabbitmq_server   session scope: one shared broker (use unique queue names)
    rabbitmq_factory  function scope: private brokers for crash/restart tests

See docs/testing-services.md.
"""

import atexit
import ctypes
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
INSTALL_SCRIPT = os.path.join(REPO, "deps", "install.sh")

# Keep temp dirs after cleanup() (for post-mortem): IMGW_KEEP_SERVICE_DIRS=1
KEEP_DIRS = os.environ.get("IMGW_KEEP_SERVICE_DIRS", "") not in ("", "0")
# Parent of the temp dirs (default: the system temp dir, falling back to /tmp
# when the rabbitmq user could not reach it).
BASE_DIR = os.environ.get("IMGW_SERVICE_TMPDIR") or None

TAG_VAR = "IMGW_SERVICE_TAG"


def _log(msg):
    # Shown with pytest -s; otherwise captured and shown for failing tests.
    print("[services] " + msg, flush=True)


# --------------------------------------------------------------------------
# small helpers


def free_port(host="127.0.0.1"):
    """A TCP port that was free on `host` a moment ago (bind to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _free_ports(n, host="127.0.0.1"):
    """n distinct free ports (sockets held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _port_open(port, host="127.0.0.1", timeout=0.5):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tail(path, n=40):
    """Last n lines of a text file ('' if it does not exist)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-n:])


_install_lock = threading.Lock()
_install_done = False


def run_install_once(reason):
    """Run `bash deps/install.sh` from the repo root, at most once per process."""
    global _install_done
    with _install_lock:
        if _install_done:
            return
        _install_done = True
        _log("%s: running bash deps/install.sh" % reason)
        r = subprocess.run(["bash", INSTALL_SCRIPT], cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
        if r.returncode != 0:
            raise RuntimeError("deps/install.sh failed (exit %d):\n%s"
                               % (r.returncode, r.stdout[-4000:]))


def _find_binary(what, candidates, env_var):
    """First executable of candidates ($env_var first); installs once if none."""
    def look():
        override = os.environ.get(env_var)
        for p in ([override] if override else []) + list(candidates):
            if p and os.path.isfile(p) and os.access(p, os.X_OK):
                return p
        return None

    p = look()
    if p is None:
        run_install_once("%s not found" % what)
        p = look()
    if p is None:
        raise RuntimeError(
            "%s not found (looked at %s, $%s); deps/install.sh did not provide "
            "it: install the Debian package by hand" %
            (what, ", ".join(candidates), env_var))
    return p


def _import(modname):
    try:
        return __import__(modname)
    except ImportError:
        run_install_once("python module %r missing" % modname)
        return __import__(modname)


# Processes we start die with us even when pytest is SIGKILLed (no atexit):
# the kernel sends them SIGTERM when the thread that started them ends.
try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _PR_SET_PDEATHSIG = 1
except OSError:  # pragma: no cover
    _libc = None


def _die_with_parent():
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _tagged_pids(tag):
    """Live (non-zombie) processes whose environment carries TAG_VAR=tag.

    Catches what a process group does not: the Erlang VM's helpers
    (erl_child_setup, inet_gethost, port programs) call setsid().
    """
    needle = ("%s=%s" % (TAG_VAR, tag)).encode() + b"\0"
    me = os.getpid()
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open("/proc/%s/environ" % name, "rb") as f:
                env = f.read()
            if needle not in env and not env.endswith(needle[:-1]):
                continue
            with open("/proc/%s/stat" % name, "rb") as f:
                st = f.read()
            if st[st.rindex(b")") + 2:][:1] == b"Z":
                continue
            out.append(int(name))
        except (OSError, ValueError):
            continue
    return out


def _sweep(tag, grace=2.0):
    """Wait up to `grace` s for tagged processes to exit, then SIGKILL them."""
    deadline = time.monotonic() + grace
    pids = _tagged_pids(tag)
    while pids and time.monotonic() < deadline:
        time.sleep(0.1)
        pids = _tagged_pids(tag)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    if pids:
        deadline = time.monotonic() + 5
        while _tagged_pids(tag) and time.monotonic() < deadline:
            time.sleep(0.05)
    return pids


def _killpg(proc, sig):
    try:
        os.killpg(proc.pid, sig)  # start_new_session: pgid == pid
    except ProcessLookupError:
        pass


def _proc_start_time(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            st = f.read()
        return st[st.rindex(b")") + 2:].split()[19].decode()  # field 22
    except (OSError, ValueError, IndexError):
        return None


_OWNER = "%d %s" % (os.getpid(), _proc_start_time(os.getpid()))
_swept_bases = set()


def _sweep_stale_dirs(base):
    """Remove imgw-redis-*/imgw-rabbitmq-* dirs whose owning process is gone
    (left by a test run that was SIGKILLed: its servers died with it through
    PDEATHSIG, but nothing could remove their temp dirs)."""
    if base in _swept_bases or KEEP_DIRS:
        return
    _swept_bases.add(base)
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        if not name.startswith(("imgw-redis-", "imgw-rabbitmq-")):
            continue
        d = os.path.join(base, name)
        try:
            with open(os.path.join(d, ".owner")) as f:
                pid, start = f.read().split()
        except (OSError, ValueError):
            continue  # not ours, or being created right now
        if _proc_start_time(int(pid)) != start:
            shutil.rmtree(d, ignore_errors=True)


def _make_tmpdir(prefix, base=None, reachable_by_uid=None):
    base = base or BASE_DIR or tempfile.gettempdir()
    if reachable_by_uid is not None and not _reachable(base, reachable_by_uid):
        if _reachable("/tmp", reachable_by_uid):
            base = "/tmp"
        else:
            raise RuntimeError("no temp dir the rabbitmq user can reach "
                               "(tried %s, /tmp); set IMGW_SERVICE_TMPDIR" % base)
    _sweep_stale_dirs(base)
    d = tempfile.mkdtemp(prefix=prefix, dir=base)
    with open(os.path.join(d, ".owner"), "w") as f:
        f.write(_OWNER + "\n")
    return d


def _reachable(path, uid):
    """Can user `uid` traverse every directory down to `path`? (rough check)"""
    gids = {pwd.getpwuid(uid).pw_gid}
    p = os.path.abspath(path)
    while True:
        try:
            st = os.stat(p)
        except OSError:
            return False
        if st.st_uid == uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid in gids:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            return False
        if p == "/":
            return True
        p = os.path.dirname(p)


# Every server object that may own processes or a temp dir; atexit cleans up.
_live = set()
_live_lock = threading.Lock()


def _atexit_cleanup():
    with _live_lock:
        servers = list(_live)
    for s in servers:
        try:
            s.cleanup(timeout=10)
        except Exception as e:  # pragma: no cover
            sys.stderr.write("[services] atexit cleanup of %r failed: %s\n" % (s, e))


atexit.register(_atexit_cleanup)


class ServiceError(RuntimeError):
    pass


class _Service:
    """Common process handling: start in a new session, stop, kill, cleanup."""

    kind = "service"

    def __init__(self, base_dir=None):
        self.base_dir = base_dir
        self.dir = None
        self.proc = None
        self.tag = None
        self.last_start_seconds = None
        self.start_count = 0
        self.exit_codes = []

    # -- state
    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def __repr__(self):
        return "<%s port=%s dir=%s running=%s>" % (
            type(self).__name__, getattr(self, "port", None), self.dir, self.running)

    def __enter__(self):
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc):
        self.cleanup()

    def _register(self):
        with _live_lock:  # from here on atexit removes the dir
            _live.add(self)

    # -- process control
    def _spawn(self, argv, env, out_path, tag=None, **kw):
        self.tag = tag or uuid.uuid4().hex
        env = dict(env)
        env[TAG_VAR] = self.tag
        out = open(out_path, "ab")
        try:
            self.proc = subprocess.Popen(
                argv, env=env, cwd=self.dir, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_die_with_parent, **kw)
        finally:
            out.close()
        self._register()
        self.start_count += 1

    def _after_exit(self):
        """Hook: called after the main process is gone (kill helpers, epmd)."""
        if self.tag:
            _sweep(self.tag)

    def stop(self, timeout=None):
        """Graceful stop: SIGTERM to the process group, wait, SIGKILL fallback.

        Returns the exit code (None if it was not running)."""
        if self.proc is None:
            return None
        timeout = self.stop_timeout if timeout is None else timeout
        code = self.proc.poll()
        if code is None:
            _killpg(self.proc, signal.SIGTERM)
            try:
                code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _log("%s pid %d ignored SIGTERM for %ss: SIGKILL" %
                     (self.kind, self.proc.pid, timeout))
                _killpg(self.proc, signal.SIGKILL)
                code = self.proc.wait()
        _killpg(self.proc, signal.SIGKILL)  # stragglers in the group
        self._after_exit()
        self.exit_codes.append(code)
        self.proc = None
        return code

    def kill(self):
        """Crash it: SIGKILL to the whole process group, no shutdown work."""
        if self.proc is None:
            return None
        _killpg(self.proc, signal.SIGKILL)
        code = self.proc.wait()
        if self.tag:
            # the VM's setsid()ed helpers would exit on EOF, but be sure
            for pid in _tagged_pids(self.tag):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        self._after_exit()
        self.exit_codes.append(code)
        self.proc = None
        return code

    def cleanup(self, timeout=None):
        """Stop (if running) and remove the temp dir. Safe to call twice."""
        try:
            self.stop(timeout)
        finally:
            if self.dir and not KEEP_DIRS:
                shutil.rmtree(self.dir, ignore_errors=True)
                self.dir = None
            with _live_lock:
                _live.discard(self)

    close = cleanup

    def _wait_ready(self, timeout, probe, what):
        t0 = time.monotonic()
        deadline = t0 + timeout
        last_err = None
        while True:
            code = self.proc.poll()
            if code is not None:
                self._fail("%s exited with code %s during startup" % (what, code),
                           code=code)
            try:
                if probe():
                    self.last_start_seconds = time.monotonic() - t0
                    return
            except Exception as e:  # not ready yet
                last_err = e
            if time.monotonic() > deadline:
                self._fail("%s not ready after %.0fs (last error: %r)" %
                           (what, timeout, last_err))
            time.sleep(0.1 if timeout <= 15 else 0.25)

    def _fail(self, msg, code=None):
        logs = self.log_tail(60)
        if code is None:
            self.stop(timeout=10)
        else:
            self._after_exit()
            self.exit_codes.append(code)
            self.proc = None
        raise ServiceError("%s\n--- command: %s\n%s" % (msg, " ".join(self.argv), logs))


# --------------------------------------------------------------------------
# Redis


class RedisServer(_Service):
    """A redis-server on 127.0.0.1:<free port> in its own temp dir.

    persist: False/None -> no persistence (--save "" --appendonly no);
             True or "aof" -> --appendonly yes --appendfsync always (survives kill());
             "rdb" -> RDB snapshot on graceful stop (survives stop(), not kill()).
    unix_socket: also listen on <dir>/redis.sock (mode 700) -> .unix_path.
    password: --requirepass; client() uses it.
    """

    kind = "redis"
    stop_timeout = 10
    CANDIDATES = ("/usr/bin/redis-server", "/usr/sbin/redis-server")

    def __init__(self, password=None, unix_socket=False, persist=False, port=None,
                 extra_args=(), start_timeout=10, base_dir=None):
        super().__init__(base_dir)
        self.password = password
        self.unix_socket = unix_socket
        self.persist = persist
        self.port = port
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.binary = None
        self.argv = []

    host = "127.0.0.1"

    @property
    def url(self):
        auth = ":%s@" % self.password if self.password else ""
        return "redis://%s%s:%d/0" % (auth, self.host, self.port)

    @property
    def unix_path(self):
        return os.path.join(self.dir, "redis.sock") if self.unix_socket and self.dir else None

    @property
    def unix_url(self):
        p = self.unix_path
        return "unix://%s?db=0" % p if p else None

    @property
    def log_path(self):
        return os.path.join(self.dir, "redis.log") if self.dir else None

    def log_tail(self, n=40):
        if not self.dir:
            return ""
        return "--- %s (tail)\n%s\n--- stdout/stderr (tail)\n%s" % (
            self.log_path, tail(self.log_path, n),
            tail(os.path.join(self.dir, "stdout.log"), n))

    def _argv(self):
        a = [self.binary,
             "--port", str(self.port), "--bind", self.host,
             "--dir", self.dir, "--daemonize", "no",
             "--logfile", self.log_path]
        if self.persist in (True, "aof"):
            a += ["--save", "", "--appendonly", "yes", "--appendfsync", "always"]
        elif self.persist == "rdb":
            a += ["--save", "3600", "1", "--appendonly", "no"]
        elif not self.persist:
            a += ["--save", "", "--appendonly", "no"]
        else:
            raise ValueError("persist must be False, True, 'aof' or 'rdb': %r" % (self.persist,))
        if self.unix_socket:
            a += ["--unixsocket", self.unix_path, "--unixsocketperm", "700"]
        if self.password:
            a += ["--requirepass", self.password]
        return a + self.extra_args

    def start(self, persist=None):
        """Start (or start again on the same port and dir). Returns self."""
        t0 = time.monotonic()
        if self.running:
            raise ServiceError("redis already running on port %s" % self.port)
        if persist is not None:
            self.persist = persist
        self.binary = self.binary or _find_binary(
            "redis-server", self.CANDIDATES, "IMGW_REDIS_SERVER")
        _import("redis")
        if self.dir is None:
            self.dir = _make_tmpdir("imgw-redis-", self.base_dir)
            self._register()
        fixed_port = self.port is not None
        for attempt in range(3):
            if not fixed_port:
                self.port = free_port()
            self.argv = self._argv()
            self._spawn(self.argv, os.environ, os.path.join(self.dir, "stdout.log"))
            try:
                self._wait_ready(self.start_timeout, self._ping, "redis-server")
                break
            except ServiceError as e:
                # someone grabbed the free port between probe and bind: retry
                if fixed_port or attempt == 2 or "Address already in use" not in str(e):
                    raise
                _log("redis port %d was taken, retrying on another" % self.port)
        self.last_start_seconds = time.monotonic() - t0
        _log("redis up on port %d in %.2fs (pid %d, dir %s, persist=%s)" %
             (self.port, self.last_start_seconds, self.pid, self.dir, self.persist))
        return self

    def _ping(self):
        import redis
        c = redis.Redis(host=self.host, port=self.port, password=self.password,
                        socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            return c.ping()
        finally:
            c.close()

    def restart(self, persist=None, kill=False):
        """Stop (or kill(), kill=True) and start again on the same port/dir."""
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start(persist=persist)

    def client(self, unix=False, decode_responses=True, **kw):
        """redis.Redis for this server (TCP, or the unix socket with unix=True)."""
        import redis
        kw.setdefault("socket_timeout", 5)
        kw.setdefault("password", self.password)
        if unix:
            if not self.unix_path:
                raise ServiceError("RedisServer(unix_socket=True) needed for a unix client")
            return redis.Redis(unix_socket_path=self.unix_path,
                               decode_responses=decode_responses, **kw)
        kw.setdefault("socket_connect_timeout", 5)
        return redis.Redis(host=self.host, port=self.port,
                           decode_responses=decode_responses, **kw)


# --------------------------------------------------------------------------
# RabbitMQ


class RabbitMQServer(_Service):
    """A RabbitMQ 3.10 node on 127.0.0.1 free ports, with its own epmd.

    Runs as user `rabbitmq` when we are root (its files are chowned to it).
    The node name is imgwtest<amqp port>@localhost; restart() keeps ports,
    node name and the mnesia dir, so durable queues and persistent messages
    survive.  guest/guest is allowed because clients connect over loopback.

    config: extra lines for rabbitmq.conf (new-style sysctl format).
    """

    kind = "rabbitmq"
    stop_timeout = 30
    CANDIDATES = ("/usr/lib/rabbitmq/bin/rabbitmq-server",
                  "/usr/lib/rabbitmq/sbin/rabbitmq-server")
    CTL_CANDIDATES = ("/usr/lib/rabbitmq/bin/rabbitmqctl",)
    EPMD_CANDIDATES = ("/usr/bin/epmd", "/usr/lib/erlang/bin/epmd")

    host = "127.0.0.1"

    def __init__(self, config=(), start_timeout=60, base_dir=None, user="rabbitmq"):
        super().__init__(base_dir)
        self.config = list(config)
        self.start_timeout = start_timeout
        self.port = None
        self.dist_port = None
        self.epmd_port = None
        self.nodename = None
        self.binary = None
        self.argv = []
        self.epmd_proc = None
        # run as `user` only when root (as any other user, run as ourselves)
        self.user = user if os.geteuid() == 0 else None
        self._pw = pwd.getpwnam(user) if self.user else None

    @property
    def url(self):
        return "amqp://guest:guest@%s:%d/%%2f" % (self.host, self.port)

    @property
    def log_path(self):
        if not (self.dir and self.nodename):
            return None
        return os.path.join(self.dir, "log", self.nodename + ".log")

    def log_tail(self, n=40):
        if not self.dir:
            return ""
        return "--- %s (tail)\n%s\n--- stdout/stderr (tail)\n%s\n--- epmd (tail)\n%s" % (
            self.log_path, tail(self.log_path, n),
            tail(os.path.join(self.dir, "stdout.log"), n),
            tail(os.path.join(self.dir, "epmd.log"), 10))

    # -- files and environment
    def _chown_tree(self):
        if not self.user:
            return
        uid, gid = self._pw.pw_uid, self._pw.pw_gid
        for root, dirs, files in os.walk(self.dir):
            os.chown(root, uid, gid)
            for f in files:
                os.lchown(os.path.join(root, f), uid, gid)

    def _write_files(self):
        d = self.dir
        for sub in ("mnesia", "log"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        with open(os.path.join(d, "enabled_plugins"), "w") as f:
            f.write("[].\n")
        open(os.path.join(d, "rabbitmq-env.conf"), "w").close()  # shadow /etc's
        with open(os.path.join(d, "rabbitmq.conf"), "w") as f:
            f.write("# written by test/integration/services.py\n"
                    "loopback_users.guest = true\n"
                    "log.file.level = info\n"
                    + "".join(line + "\n" for line in self.config))
        cookie = os.path.join(d, ".erlang.cookie")
        if not os.path.exists(cookie):
            fd = os.open(cookie, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
            with os.fdopen(fd, "w") as f:
                f.write(uuid.uuid4().hex.upper())
        self._chown_tree()
        os.chmod(cookie, 0o400)

    def env(self):
        """Environment for the server and the CLI tools (rabbitmqctl)."""
        d = self.dir
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update({
            "HOME": d,  # .erlang.cookie
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": self.host,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": os.path.join(d, "mnesia"),
            "RABBITMQ_LOG_BASE": os.path.join(d, "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(d, "enabled_plugins"),
            "RABBITMQ_FEATURE_FLAGS_FILE": os.path.join(d, "feature_flags"),
            "RABBITMQ_PID_FILE": os.path.join(d, "rabbitmq.pid"),
            "RABBITMQ_CONFIG_FILE": os.path.join(d, "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": os.path.join(d, "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": os.path.join(d, "rabbitmq-env.conf"),
            # distribution listener on loopback only
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS":
                "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": self.host,
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
        })
        if self.user:
            env.update(USER=self.user, LOGNAME=self.user)
        return env

    def _user_kw(self):
        if not self.user:
            return {}
        return {"user": self._pw.pw_uid, "group": self._pw.pw_gid, "extra_groups": []}

    # -- epmd: our own, on our own port, so it is ours to stop
    def _start_epmd(self, epmd):
        out = open(os.path.join(self.dir, "epmd.log"), "ab")
        try:
            env = dict(self.env())
            env[TAG_VAR] = self.tag or ""
            self.epmd_proc = subprocess.Popen(
                [epmd, "-port", str(self.epmd_port), "-address", self.host],
                env=env, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_die_with_parent, **self._user_kw())
        finally:
            out.close()
        deadline = time.monotonic() + 10
        while not _port_open(self.epmd_port):
            if self.epmd_proc.poll() is not None or time.monotonic() > deadline:
                code = self.epmd_proc.poll()
                self._stop_epmd()
                raise ServiceError("epmd on port %d did not start (exit %s):\n%s" % (
                    self.epmd_port, code, tail(os.path.join(self.dir, "epmd.log"))))
            time.sleep(0.05)

    def _stop_epmd(self):
        p, self.epmd_proc = self.epmd_proc, None
        if p is None:
            return
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def _after_exit(self):
        self._stop_epmd()      # first: it carries the tag the sweep looks for
        super()._after_exit()  # then the VM's setsid()ed helpers, if any

    # -- lifecycle
    def start(self):
        """Start the node (again, on the same ports, if it ran before)."""
        t0 = time.monotonic()
        if self.running:
            raise ServiceError("rabbitmq already running on port %s" % self.port)
        self.binary = self.binary or _find_binary(
            "rabbitmq-server", self.CANDIDATES, "IMGW_RABBITMQ_SERVER")
        epmd = _find_binary("epmd", self.EPMD_CANDIDATES, "IMGW_EPMD")
        _import("pika")
        if self.dir is None:
            self.dir = _make_tmpdir("imgw-rabbitmq-", self.base_dir,
                                    self._pw.pw_uid if self.user else None)
            os.chmod(self.dir, 0o755)
            self._register()
        fixed = self.port is not None
        for attempt in range(3):
            if not fixed:
                self.port, self.dist_port, self.epmd_port = _free_ports(3)
                self.nodename = "imgwtest%d@localhost" % self.port
            self._write_files()
            self.argv = [self.binary]
            self.tag = uuid.uuid4().hex
            try:
                self._start_epmd(epmd)
                # same tag as epmd: one sweep finds the VM's helpers and epmd
                self._spawn(self.argv, self.env(), os.path.join(self.dir, "stdout.log"),
                            tag=self.tag, **self._user_kw())
                self._wait_ready(self.start_timeout, self._probe, "rabbitmq-server")
                break
            except ServiceError as e:
                self._stop_epmd()
                if fixed or attempt == 2 or "eaddrinuse" not in str(e).lower():
                    raise
                _log("rabbitmq ports taken, retrying on others")
        self.last_start_seconds = time.monotonic() - t0
        _log("rabbitmq up on port %d in %.2fs (node %s, dist %d, epmd %d, dir %s)" % (
            self.port, self.last_start_seconds, self.nodename, self.dist_port,
            self.epmd_port, self.dir))
        return self

    def restart(self, kill=False):
        """stop() (or kill(), kill=True) and start again: same ports and data."""
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start()

    def ensure_running(self):
        if not self.running:
            _log("rabbitmq was not running: starting it again")
            self.start()
        return self

    def sync_metadata(self):
        """Flush Mnesia's transaction log to disk (rabbitmqctl eval, ~0.4 s).

        Queue/exchange/binding declarations reach disk asynchronously: a
        SIGKILL within a moment of a declare can lose it (observed 1 in 5).
        Call this before kill() when a test needs declarations to survive a
        crash; a graceful stop() always keeps them."""
        r = self.ctl("eval", "mnesia:sync_log().")
        if r.stdout.strip() != "ok":
            raise ServiceError("mnesia:sync_log() returned %r %r" % (r.stdout, r.stderr))

    # -- clients
    def parameters(self, **kw):
        import pika
        kw.setdefault("connection_attempts", 1)
        kw.setdefault("socket_timeout", 5)
        kw.setdefault("blocked_connection_timeout", 30)
        return pika.ConnectionParameters(
            host=self.host, port=self.port, virtual_host="/",
            credentials=pika.PlainCredentials("guest", "guest"), **kw)

    def connection(self, **kw):
        """A new pika.BlockingConnection to this broker (caller closes it)."""
        import pika
        return pika.BlockingConnection(self.parameters(**kw))

    def _probe(self):
        if not _port_open(self.port, timeout=0.3):
            return False
        pika_log = logging.getLogger("pika")
        level = pika_log.level
        pika_log.setLevel(logging.CRITICAL)  # connection-refused noise
        try:
            c = self.connection(socket_timeout=2, stack_timeout=5)
            c.close()
            return True
        finally:
            pika_log.setLevel(level)

    def ctl(self, *args, timeout=60, check=True):
        """Run rabbitmqctl against this node (slow: ~2-3 s, Elixir startup)."""
        ctl = _find_binary("rabbitmqctl", self.CTL_CANDIDATES, "IMGW_RABBITMQCTL")
        r = subprocess.run([ctl, "-n", self.nodename] + list(args), env=self.env(),
                           cwd=self.dir, stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=timeout, **self._user_kw())
        if check and r.returncode != 0:
            raise ServiceError("rabbitmqctl %s failed (%d):\n%s%s" % (
                " ".join(args), r.returncode, r.stdout, r.stderr))
        return r


# --------------------------------------------------------------------------
# pytest fixtures (import into conftest.py: `from services import *fixtures*`)

try:
    import pytest
except ImportError:  # pragma: no cover - the module works without pytest
    pytest = None

_shared_rabbit = None
_shared_lock = threading.Lock()


def shared_rabbitmq():
    """The process-wide broker behind the `rabbitmq_server` fixture.

    A singleton, so importing the fixture into both conftest.py and a test
    module still starts only one broker."""
    global _shared_rabbit
    with _shared_lock:
        if _shared_rabbit is None:
            s = RabbitMQServer()
            try:
                s.start()
            except BaseException:
                s.cleanup()
                raise
            _shared_rabbit = s
        return _shared_rabbit.ensure_running()


def _stop_shared_rabbitmq():
    global _shared_rabbit
    with _shared_lock:
        s, _shared_rabbit = _shared_rabbit, None
    if s is not None:
        s.cleanup()


if pytest is not None:

    @pytest.fixture
    def redis_server():
        """A fresh redis-server (no password, no persistence) for one test."""
        s = RedisServer()
        try:
            yield s.start()
        finally:
            s.cleanup()

    @pytest.fixture
    def redis_factory():
        """redis_factory(**RedisServer kwargs, start=True) -> RedisServer;
        all are cleaned up after the test."""
        made = []

        def make(start=True, **kw):
            s = RedisServer(**kw)
            made.append(s)
            return s.start() if start else s

        try:
            yield make
        finally:
            for s in made:
                s.cleanup()

    @pytest.fixture(scope="session")
    def rabbitmq_server():
        """One broker for the whole session (~3-8 s to start). Tests must use
        unique queue/exchange names; a test that stops it must start it again."""
        s = shared_rabbitmq()
        try:
            yield s
        finally:
            _stop_shared_rabbitmq()

    @pytest.fixture
    def rabbitmq_factory():
        """rabbitmq_factory(**RabbitMQServer kwargs, start=True) -> a private
        broker (for crash/restart tests); cleaned up after the test."""
        made = []

        def make(start=True, **kw):
            s = RabbitMQServer(**kw)
            made.append(s)
            return s.start() if start else s

        try:
            yield make
        finally:
            for s in made:
                s.cleanup()
