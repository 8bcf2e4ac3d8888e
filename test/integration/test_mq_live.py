"""src/mq (the broker thread) against a real RabbitMQ.

Runs the C program test/mq/test_mq_live (built by meson as
build/test/mq/test_mq_live; override with $IMGW_MQ_TEST_BIN):

  test_mq_checks            its self-contained checks (publish to itself,
                            consume + ack, reject, oversized, stale tags,
                            publish while disconnected, a 2000-message burst)
                            against the session's shared broker;
  test_mq_broker_restart    a private broker is stopped and started again on
                            the same port while the program runs: it must
                            notice, drop publishes meanwhile, reconnect,
                            re-declare, get the unacked message again, ignore
                            the stale ack, and consume what pika publishes;
  test_mq_broker_freeze     the broker is SIGSTOPped: only the AMQP heartbeat
                            can tell, and it must; then SIGCONT and recovery.

The program and this file talk in stdout lines (see the C file's header).

Run:  cd /work/main && /usr/bin/python3 -m pytest -q test/integration/test_mq_live.py
"""

import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from services import rabbitmq_factory, rabbitmq_server  # noqa: E402,F401 (fixtures)

REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
CANDIDATES = ("build/test/mq/test_mq_live", "build/test_mq_live")


def mq_test_bin():
    override = os.environ.get("IMGW_MQ_TEST_BIN")
    paths = [override] if override else [os.path.join(REPO, p) for p in CANDIDATES]
    for p in paths:
        if p and os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    pytest.fail("test_mq_live binary not found (looked at %s): build it (meson "
                "target test/mq/test_mq_live) or point $IMGW_MQ_TEST_BIN at it"
                % ", ".join(paths), pytrace=False)


@pytest.fixture(scope="session")
def mq_bin():
    """Listed first by the tests: a missing binary fails before any broker
    is started."""
    return mq_test_bin()


class Prog:
    """The C program, its stdout read line by line in a thread."""

    def __init__(self, argv):
        self.argv = argv
        self.lines = []             # everything it printed, for reports
        self.q = queue.Queue()
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            self.q.put(line)
        self.q.put(None)

    def output(self):
        return "\n".join(self.lines)

    def expect(self, prefix, timeout):
        """Waits for a line starting with prefix; fails with the output."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.fail("no %r line after %ss" % (prefix, timeout))
            try:
                line = self.q.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self.fail("program exited (code %s) before a %r line"
                          % (self.proc.wait(), prefix))
            if line.startswith(prefix):
                return line

    def finish(self, timeout):
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.fail("program did not exit within %ss" % timeout)
        self.reader.join(5)
        return code

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def fail(self, why):
        self.kill()
        pytest.fail("%s\n--- %s\n%s" % (why, " ".join(self.argv), self.output()),
                    pytrace=False)


def check_summary(prog, code):
    summary = [l for l in prog.lines if l.endswith(" failed") and " passed, " in l]
    if code != 0 or not summary or not summary[-1].endswith(" 0 failed"):
        prog.fail("exit code %s, summary %r" % (code, summary[-1:] or None))


def publish(mq, routing_key, body):
    """Persistent publish to imgw.direct as a business service would."""
    import pika
    conn = mq.connection()
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        # mandatory: an unroutable message (queue not bound) raises here
        ch.basic_publish(exchange="imgw.direct", routing_key=routing_key,
                         body=body, mandatory=True,
                         properties=pika.BasicProperties(
                             delivery_mode=2, content_type="application/json"))
    finally:
        conn.close()


def test_mq_checks(mq_bin, rabbitmq_server):
    prog = Prog([mq_bin, rabbitmq_server.url])
    check_summary(prog, prog.finish(240))


def test_mq_broker_restart(mq_bin, rabbitmq_factory):
    mq = rabbitmq_factory()
    broker_id = "imgw-test-restart-" + uuid.uuid4().hex[:8]
    prog = Prog([mq_bin, mq.url, "restart", broker_id])
    try:
        prog.expect("READY", 60)
        publish(mq, broker_id, b"m1")
        prog.expect("GOT m1", 30)        # held unacked across the restart
        mq.stop()
        prog.expect("DISCONNECTED", 60)
        prog.expect("DROP_OK", 10)
        mq.start()                       # same port, same data directory
        prog.expect("RECONNECTED", 120)
        publish(mq, broker_id, b"m2")
        prog.expect("DONE", 60)
        check_summary(prog, prog.finish(60))
    finally:
        prog.kill()
        print(prog.output())  # shown with -s


def test_mq_broker_freeze(mq_bin, rabbitmq_factory):
    mq = rabbitmq_factory()
    broker_id = "imgw-test-freeze-" + uuid.uuid4().hex[:8]
    prog = Prog([mq_bin, mq.url, "freeze", broker_id])
    frozen = False
    try:
        prog.expect("READY", 60)
        os.killpg(mq.proc.pid, signal.SIGSTOP)
        frozen = True
        t0 = time.monotonic()
        prog.expect("DISCONNECTED", 40)  # heartbeat 5 s: dead after ~10 s
        took = time.monotonic() - t0
        os.killpg(mq.proc.pid, signal.SIGCONT)
        frozen = False
        assert took >= 5, "noticed a silent broker too early (%.1fs)" % took
        prog.expect("RECONNECTED", 120)
        prog.expect("DONE", 60)
        check_summary(prog, prog.finish(60))
    finally:
        if frozen:
            os.killpg(mq.proc.pid, signal.SIGCONT)
        prog.kill()
        print(prog.output())  # shown with -s
