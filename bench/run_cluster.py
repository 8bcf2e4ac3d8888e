#!/usr/bin/python3
"""bench/run_cluster.py: imgw-bench with the redis store and a cluster.

Starts a private redis-server and RabbitMQ node with the integration tests'
helpers (test/integration/services.py: free 127.0.0.1 ports, temp dirs,
stopped at exit), then, each bench run on fresh imgw nodes (one loop, -t 1):

  memory    relay, one node, memory store                  (per rate)
  redis     relay, one node, store.backend=redis           (per rate)
  cross     relay, senders on node 1, receivers on node 2, redis + RabbitMQ
            (imgw-bench --recv-port)                        (per rate)
  downlink  downlink to a node with mq.url (redis store), then the same
            publish rate into a plain consumer (bench/amqp_sink.c) on a
            queue of the same broker                        (per rate)

Prints every JSON line of imgw-bench (and of amqp_sink), each followed by a
"REDIS {...}" line for runs against Redis: deltas of INFO commandstats /
INFO stats over the whole bench run (setup included) per message sent.
Every imgw-bench run is bounded (timeout 30 s).

  /usr/bin/python3 bench/run_cluster.py [--imgw build/imgw]
      [--bench build/bench/imgw-bench] [--out cluster.jsonl]
      [--rates "5000 10000 20000"] [--pairs 1000] [--duration 8]
      [--only memory,redis,cross,downlink] [--dl-rates "5000 10000 20000"]
"""

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "test", "integration"))
import services  # noqa: E402

BENCH_TIMEOUT = 30


def log(msg):
    print("[run_cluster] " + msg, file=sys.stderr, flush=True)


class Node:
    """One imgw process on a free 127.0.0.1 port."""

    def __init__(self, binary, logdir, name, node_id, redis_url=None,
                 mq_url=None, threads=1):
        self.name = name
        self.port = services.free_port()
        env = dict(os.environ)
        env.update({
            "IMGW__SERVER__PORTS": str(self.port),
            "IMGW__AUTH__JWT_SECRET": "bench-secret-0123456789abcdef0123456789",
            "IMGW__LIMITS__SEND_RATE": "1000000",
            "IMGW__AUTH__ADMIN_TOKEN": "bench-admin-token-0123456789abcdef",
            "IMGW__SERVER__BROKER_ID": name,
            "IMGW__SERVER__NODE_ID": str(node_id),
            "IMGW_LOG": "warn",
        })
        if redis_url:
            env["IMGW__STORE__BACKEND"] = "redis"
            env["IMGW__STORE__REDIS_URL"] = redis_url
        if mq_url:
            env["IMGW__MQ__URL"] = mq_url
        self.log_path = os.path.join(logdir, "%s-%d.log" % (name, self.port))
        out = open(self.log_path, "ab")
        self.proc = subprocess.Popen([binary, "-t", str(threads)], env=env,
                                     stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT)
        out.close()
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("imgw %s exited: %s" %
                                   (name, services.tail(self.log_path)))
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("imgw %s did not listen" % name)
                time.sleep(0.1)
        if mq_url or redis_url:
            self.wait_ready()

    def wait_ready(self, timeout=15):
        """/readyz answers 200 once the store (and the broker) are up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                s = socket.create_connection(("127.0.0.1", self.port), 0.5)
                s.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\n"
                          b"Connection: close\r\n\r\n")
                data = s.recv(64)
                s.close()
                if b" 200 " in data:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        log("warning: %s not ready after %ss" % (self.name, timeout))

    @property
    def pid(self):
        return self.proc.pid

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def redis_snapshot(r):
    cs = r.info("commandstats")
    st = r.info("stats")
    calls = {k[len("cmdstat_"):]: v["calls"] for k, v in cs.items()}
    # Redis's own time in each command (a script's inner commands are
    # counted both in their own entry and in EVALSHA's usec)
    calls.update({"usec:" + k[len("cmdstat_"):]: v["usec"]
                  for k, v in cs.items()})
    keys = ("total_commands_processed", "total_net_input_bytes",
            "total_net_output_bytes", "total_reads_processed",
            "total_writes_processed")
    return calls, {k: st.get(k, 0) for k in keys}


def redis_delta(before, after, msgs):
    c0, s0 = before
    c1, s1 = after
    per = lambda v: round(v / msgs, 4) if msgs else None  # noqa: E731
    d = {k: c1[k] - c0.get(k, 0) for k in c1 if c1[k] - c0.get(k, 0)}
    cmds = {k: v for k, v in d.items() if not k.startswith("usec:")}
    usec = {k[5:]: v for k, v in d.items() if k.startswith("usec:")}
    out = {"msgs": msgs,
           "commands": cmds,
           "commands_per_msg": {k: per(v) for k, v in cmds.items()},
           # what imgw itself sends per message (the rest run inside the
           # append script); setup (login routes) amortised in
           "client_commands_per_msg": per(sum(
               cmds.get(k, 0) for k in ("evalsha", "hgetall", "expire",
                                        "ping", "eval", "hmget", "smembers"))),
           "usec_per_msg": {k: per(v) for k, v in usec.items()
                            if k in ("evalsha", "hgetall")}}
    for k in s1:
        d = s1[k] - s0.get(k, 0)
        out[k] = d
        out[k + "_per_msg"] = per(d)
    return out


def schedstat(pid):
    """(ns on a CPU, ns runnable but waiting for one) summed over threads."""
    run = wait = 0
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return None
    for t in tids:
        try:
            with open("/proc/%d/task/%s/schedstat" % (pid, t)) as f:
                a = f.read().split()
            run += int(a[0])
            wait += int(a[1])
        except (OSError, ValueError, IndexError):
            pass
    return run, wait


def sched_delta(before, pids):
    """For each name: CPU ms and run-queue wait ms since `before`."""
    out = {}
    for name, pid in pids.items():
        a, b = before.get(name), schedstat(pid)
        if a and b:
            out[name] = {"cpu_ms": round((b[0] - a[0]) / 1e6),
                         "runq_wait_ms": round((b[1] - a[1]) / 1e6)}
    return out


def beam_pid(mq):
    for pid in services._tagged_pids(mq.tag):
        try:
            with open("/proc/%d/comm" % pid) as f:
                if f.read().strip() == "beam.smp":
                    return pid
        except OSError:
            pass
    return None


def run_bench(args, argv, label):
    cmd = [args.bench] + argv + ["--label", label]
    log(" ".join(cmd))
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=BENCH_TIMEOUT)
        out = p.stdout
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        log("bench timed out")
    js = None
    for line in out.splitlines():
        if line.startswith("JSON "):
            js = json.loads(line[5:])
    if not args.quiet:
        sys.stderr.write(out)
    return js


def emit(args, prefix, obj):
    line = "%s %s" % (prefix, json.dumps(obj, separators=(",", ":")))
    print(line, flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")


def relay_argv(args, rate, port, server_pid):
    return ["relay", "--pairs", str(args.pairs), "--rate", str(rate),
            "--duration", str(args.duration), "--conn-rate", "5000",
            "--drain", "3", "--port", str(port), "--server-pid", str(server_pid)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--imgw", default=os.path.join(ROOT, "build", "imgw"))
    ap.add_argument("--bench", default=os.path.join(ROOT, "build", "bench",
                                                   "imgw-bench"))
    ap.add_argument("--sink", default=None,
                    help="amqp_sink binary (default: compiled into a temp dir)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--rates", default="5000 10000 20000")
    ap.add_argument("--dl-rates", default="5000 10000 20000")
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--receivers", type=int, default=1000)
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--only", default="memory,redis,cross,downlink")
    ap.add_argument("--quiet", action="store_true",
                    help="do not echo the bench's human summaries")
    args = ap.parse_args()
    only = set(args.only.split(","))
    rates = [int(x) for x in args.rates.split()]
    dl_rates = [int(x) for x in args.dl_rates.split()]
    tmp = tempfile.mkdtemp(prefix="imgw-cluster-bench-")
    log("logs in " + tmp)

    rs = mq = None
    nodes = []

    def stop_nodes():
        while nodes:
            nodes.pop().stop()

    try:
        if only & {"redis", "cross", "downlink"}:
            rs = services.RedisServer().start()
        if only & {"cross", "downlink"}:
            mq = services.RabbitMQServer().start()
        rpid = rs.pid if rs else None
        bpid = beam_pid(mq) if mq else None
        rc = rs.client() if rs else None
        nid = [10]

        def node(name, **kw):
            nid[0] += 1
            n = Node(args.imgw, tmp, name, nid[0], **kw)
            nodes.append(n)
            return n

        # ---- single node: memory vs redis
        for backend in ("memory", "redis"):
            if backend not in only:
                continue
            for rate in rates:
                n = node("bench-%s" % backend,
                         redis_url=rs.url if backend == "redis" else None)
                argv = relay_argv(args, rate, n.port, n.pid)
                pids = {"node": n.pid}
                if backend == "redis":
                    argv += ["--watch-pid", "redis=%d" % rpid]
                    before = redis_snapshot(rc)
                    pids["redis"] = rpid
                s0 = {k: schedstat(v) for k, v in pids.items()}
                js = run_bench(args, argv, "relay-%s-%d" % (backend, rate))
                if js:
                    # whole bench run (setup included): time each process
                    # was runnable but waiting for a CPU (shared host)
                    js["sched"] = sched_delta(s0, pids)
                    emit(args, "JSON", js)
                    if backend == "redis":
                        emit(args, "REDIS", dict(redis_delta(
                            before, redis_snapshot(rc), js["sent"]),
                            label=js.get("label")))
                stop_nodes()

        # ---- cross-node 1:1 (redis + RabbitMQ)
        if "cross" in only:
            for rate in rates:
                n1 = node("bench-n1", redis_url=rs.url, mq_url=mq.url)
                n2 = node("bench-n2", redis_url=rs.url, mq_url=mq.url)
                argv = relay_argv(args, rate, n1.port, n1.pid) + [
                    "--recv-port", str(n2.port),
                    "--watch-pid", "node2=%d" % n2.pid,
                    "--watch-pid", "redis=%d" % rpid]
                if bpid:
                    argv += ["--watch-pid", "rabbitmq=%d" % bpid]
                before = redis_snapshot(rc)
                pids = {"node1": n1.pid, "node2": n2.pid, "redis": rpid}
                if bpid:
                    pids["rabbitmq"] = bpid
                s0 = {k: schedstat(v) for k, v in pids.items()}
                js = run_bench(args, argv, "relay-cross-%d" % rate)
                if js:
                    js["sched"] = sched_delta(s0, pids)
                    emit(args, "JSON", js)
                    emit(args, "REDIS", dict(redis_delta(
                        before, redis_snapshot(rc), js["sent"]),
                        label=js.get("label")))
                stop_nodes()

        # ---- downlink vs a plain consumer on the same broker
        if "downlink" in only:
            sink = args.sink
            if sink is None:
                sink = os.path.join(tmp, "amqp_sink")
                subprocess.run(["gcc", "-O2", "-D_GNU_SOURCE", "-o", sink,
                                os.path.join(HERE, "amqp_sink.c"),
                                "-lrabbitmq"], check=True)
            for rate in dl_rates:
                n = node("bench-dl", redis_url=rs.url, mq_url=mq.url)
                argv = ["downlink", "--receivers", str(args.receivers),
                        "--rate", str(rate), "--duration", str(args.duration),
                        "--conn-rate", "5000", "--drain", "3",
                        "--broker-id", "bench-dl", "--amqp", mq.url,
                        "--port", str(n.port), "--server-pid", str(n.pid)]
                if bpid:
                    argv += ["--watch-pid", "rabbitmq=%d" % bpid]
                pids = {"node": n.pid}
                if bpid:
                    pids["rabbitmq"] = bpid
                s0 = {k: schedstat(v) for k, v in pids.items()}
                js = run_bench(args, argv, "downlink-%d" % rate)
                if js:
                    js["sched"] = sched_delta(s0, pids)
                    # arrivals all happen by duration + max latency: a
                    # lower bound of the delivery rate that, unlike
                    # deliveries_per_s, does not count drain-time arrivals
                    # as if they came within the phase
                    js["rate_bound"] = round(js["received"] / (
                        args.duration + js["latency_us"]["max"] / 1e6), 1)
                    emit(args, "JSON", js)
                # the same publisher, into a plain consumer's queue: the
                # bench's receivers (still on the node) get nothing, so its
                # own lost/received figures are meaningless here.
                sp = subprocess.Popen(
                    [sink, mq.url, "bench-sink", str(args.duration + 12)],
                    stdout=subprocess.PIPE, text=True)
                ready = sp.stdout.readline().strip()
                if ready != "READY":
                    log("amqp_sink failed to start")
                argv2 = list(argv)
                argv2[argv2.index("--broker-id") + 1] = "bench-sink"
                argv2[argv2.index("--drain") + 1] = "0.5"
                js2 = run_bench(args, argv2, "downlink-sinkpub-%d" % rate)
                try:
                    sout, _ = sp.communicate(timeout=BENCH_TIMEOUT)
                except subprocess.TimeoutExpired:
                    sp.kill()
                    sout, _ = sp.communicate()
                for line in sout.splitlines():
                    if line.startswith("JSON "):
                        s = json.loads(line[5:])
                        s["publish_rate"] = rate
                        s["rate_bound"] = round(s["received"] / (
                            args.duration + s["latency_us"]["max"] / 1e6), 1)
                        if js2:
                            s["published"] = js2.get("sent")
                            s["publisher_achieved_rate"] = js2.get(
                                "achieved_rate")
                            s["rabbitmq_cpu_us_per_msg"] = (
                                js2.get("watch", {}).get("rabbitmq", {})
                                .get("cpu_us", 0) / max(1, js2.get("sent", 1)))
                        emit(args, "JSON", s)
                stop_nodes()
    finally:
        stop_nodes()
        if mq:
            mq.cleanup()
        if rs:
            rs.cleanup()


if __name__ == "__main__":
    main()
