"""Smoke tests of test/integration/services.py: real Redis and RabbitMQ.

Run:  cd /work/main && /usr/bin/python3 -m pytest -q -s test/integration/test_services_smoke.py
Each step prints what it checks (visible with -s) and asserts it.
"""

import os
import stat
import uuid

import pika
import pytest
import redis

import services as S
from services import rabbitmq_server, redis_factory, redis_server  # noqa: F401 (fixtures)


def step(msg):
    print("  [check] " + msg, flush=True)


def unique(prefix):
    return "%s.%s" % (prefix, uuid.uuid4().hex[:10])


def assert_gone(server, tag, ports):
    """No process of that server left, its ports closed."""
    left = S._tagged_pids(tag)
    step("no process left with tag %s: %s" % (tag[:8], left or "none"))
    assert left == []
    for p in ports:
        step("port %d closed" % p)
        assert not S._port_open(p)


# --------------------------------------------------------------------------
# Redis


def test_free_port():
    p = S.free_port()
    step("free_port() -> %d, bindable on 127.0.0.1" % p)
    assert 1024 < p < 65536
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", p))


def test_redis_set_get(redis_server):
    r = redis_server
    step("url %s points at the running server (pid %d)" % (r.url, r.pid))
    assert r.url == "redis://127.0.0.1:%d/0" % r.port
    assert r.running
    c = r.client()
    step("SET imgw:smoke hello / GET -> hello")
    assert c.set("imgw:smoke", "hello")
    assert c.get("imgw:smoke") == "hello"
    step("redis.from_url(url) reaches the same data")
    c2 = redis.from_url(r.url, decode_responses=True)
    assert c2.get("imgw:smoke") == "hello"
    info = c.info("server")
    step("server is Redis %s, tcp_port %s" % (info["redis_version"], info["tcp_port"]))
    assert info["tcp_port"] == r.port
    assert info["redis_version"].startswith("7.")
    c2.close()
    c.close()


def test_redis_crash_restart_same_port_keeps_data(redis_factory):
    r = redis_factory(persist=True)
    port, pid = r.port, r.pid
    c = r.client()
    step("persist=True: appendonly=%s appendfsync=%s" % (
        c.config_get("appendonly")["appendonly"], c.config_get("appendfsync")["appendfsync"]))
    assert c.config_get("appendonly")["appendonly"] == "yes"
    for i in range(100):
        c.set("k%d" % i, "v%d" % i)
    c.rpush("imgw:list", "a", "b", "c")
    step("wrote 100 keys + a list, now SIGKILL (crash) pid %d" % pid)
    tag = r.tag
    code = r.kill()
    step("kill() -> exit %s (negative = signal)" % code)
    assert code == -9
    assert_gone(r, tag, [port])
    step("a client of the dead server gets ConnectionError")
    with pytest.raises(redis.ConnectionError):
        c.ping()
    r.start()
    step("restarted on the same port %d (pid %d -> %d)" % (r.port, pid, r.pid))
    assert r.port == port and r.pid != pid
    step("the old client object reconnects by itself and sees the data")
    assert c.get("k99") == "v99"
    assert c.dbsize() == 101
    assert c.lrange("imgw:list", 0, -1) == ["a", "b", "c"]
    c.close()

    step("restart(persist=False, kill=True): no AOF loaded -> empty database")
    r.restart(persist=False, kill=True)
    assert r.port == port
    assert r.client().dbsize() == 0


def test_redis_rdb_graceful_restart_keeps_data(redis_factory):
    r = redis_factory(persist="rdb")
    r.client().set("imgw:rdb", "kept")
    code = r.stop()
    step("persist='rdb': graceful stop() -> exit %s, dump.rdb written" % code)
    assert code == 0
    assert os.path.exists(os.path.join(r.dir, "dump.rdb"))
    r.start()
    step("restart on same port %d: GET imgw:rdb -> kept" % r.port)
    assert r.client().get("imgw:rdb") == "kept"


def test_redis_unix_socket_and_password(redis_factory):
    r = redis_factory(unix_socket=True, password="s3cret")
    step("unix socket at %s (mode 700)" % r.unix_path)
    st = os.stat(r.unix_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o700
    step("PING over the unix socket -> True")
    assert r.client(unix=True).ping() is True
    step("unix_url %s works with redis.from_url" % r.unix_url)
    assert redis.from_url(r.unix_url, password="s3cret").ping()
    step("without the password: AuthenticationError")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=r.port).ping()
    step("url carries the password: %s" % r.url)
    assert redis.from_url(r.url).ping()


def test_redis_cleanup_leaves_nothing(redis_factory):
    r = redis_factory()
    d, port, tag = r.dir, r.port, r.tag
    r.cleanup()
    step("cleanup(): temp dir %s removed" % d)
    assert S.KEEP_DIRS or not os.path.exists(d)
    assert_gone(r, tag, [port])
    step("cleanup() twice is harmless")
    r.cleanup()


# --------------------------------------------------------------------------
# RabbitMQ


def test_rabbitmq_publish_consume(rabbitmq_server):
    mq = rabbitmq_server
    step("broker up: %s node %s (started in %.1fs)" % (
        mq.url, mq.nodename, mq.last_start_seconds))
    assert mq.url == "amqp://guest:guest@127.0.0.1:%d/%%2f" % mq.port
    conn = pika.BlockingConnection(pika.URLParameters(mq.url))
    props = conn._impl.server_properties
    step("server product %s %s" % (props.get("product"), props.get("version")))
    assert str(props["version"]).startswith("3.10")
    ch = conn.channel()
    queue, key = unique("imgw.smoke"), unique("user")
    step("declare exchange imgw.direct (direct), queue %s bound with key %s" % (queue, key))
    ch.exchange_declare("imgw.direct", exchange_type="direct", durable=True)
    ch.queue_declare(queue)
    ch.queue_bind(queue, "imgw.direct", routing_key=key)
    ch.confirm_delivery()
    for i in range(3):
        ch.basic_publish("imgw.direct", key, b"hello %d" % i,
                         properties=pika.BasicProperties(content_type="text/plain"))
    step("a message with another routing key is not routed to the queue")
    ch.basic_publish("imgw.direct", key + ".other", b"elsewhere")
    got = []
    for method, props, body in ch.consume(queue, inactivity_timeout=5):
        if method is None:
            break
        got.append((method.exchange, method.routing_key, body))
        ch.basic_ack(method.delivery_tag)
        if len(got) == 3:
            break
    ch.cancel()
    step("consumed %s" % [g[2] for g in got])
    assert got == [("imgw.direct", key, b"hello %d" % i) for i in range(3)]
    step("queue is empty afterwards (the other key went nowhere)")
    assert ch.queue_declare(queue, passive=True).method.message_count == 0
    ch.queue_delete(queue)
    conn.close()


@pytest.fixture(scope="module")
def private_mq():
    """A broker of our own for the stop/kill tests, so the shared
    `rabbitmq_server` other modules use is never restarted under them."""
    mq = S.RabbitMQServer()
    try:
        yield mq.start()
    finally:
        mq.cleanup()
        step("private broker cleaned up, dir removed: %s" % (mq.dir is None))


def test_rabbitmq_stop_restart_same_port(private_mq):
    mq = private_mq
    port, node, pid = mq.port, mq.nodename, mq.pid
    queue = unique("imgw.durable")
    conn = mq.connection()
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare(queue, durable=True)
    ch.basic_publish("", queue, b"survives",
                     properties=pika.BasicProperties(delivery_mode=2))
    step("durable queue %s holds 1 persistent message" % queue)

    tag, epmd_port = mq.tag, mq.epmd_port
    code = mq.stop()
    step("graceful stop() -> exit %s" % code)
    assert code == 0
    assert_gone(mq, tag, [port, epmd_port])
    step("the open connection notices the broker went away")
    with pytest.raises(pika.exceptions.AMQPError):
        conn.process_data_events(time_limit=1)
        ch.queue_declare(queue, passive=True)
    step("connecting while it is down fails (AMQPConnectionError)")
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        mq.connection()

    mq.start()
    step("started again in %.1fs on the same port %d, node %s (pid %d -> %d)" % (
        mq.last_start_seconds, mq.port, mq.nodename, pid, mq.pid))
    assert (mq.port, mq.nodename) == (port, node) and mq.pid != pid
    conn = mq.connection()
    ch = conn.channel()
    method, _, body = ch.basic_get(queue, auto_ack=True)
    step("reconnected; the durable queue still has: %r" % body)
    assert body == b"survives"
    ch.queue_delete(queue)
    conn.close()


def test_rabbitmq_crash_restart(private_mq):
    mq = private_mq
    port = mq.port
    queue = unique("imgw.crash")
    conn = mq.connection()
    ch = conn.channel()
    ch.confirm_delivery()
    ch.queue_declare(queue, durable=True)
    ch.basic_publish("", queue, b"confirmed before crash",
                     properties=pika.BasicProperties(delivery_mode=2))
    conn.close()
    step("sync_metadata(): the declaration is on disk (else a crash may lose it)")
    mq.sync_metadata()
    tag = mq.tag
    step("restart(kill=True): SIGKILL the node, then start it again")
    mq.restart(kill=True)
    step("killed run left nothing behind, new run up on port %d in %.1fs" % (
        mq.port, mq.last_start_seconds))
    assert not S._tagged_pids(tag)
    assert mq.port == port
    conn = mq.connection()
    ch = conn.channel()
    _, _, body = ch.basic_get(queue, auto_ack=True)
    step("publisher-confirmed persistent message survived the crash: %r" % body)
    assert body == b"confirmed before crash"
    ch.queue_delete(queue)
    conn.close()
