"""Fault injection on the store path (hardening issue): Redis answering
slowly (DEBUG SLEEP) during sustained traffic. Every message acknowledged
to a sender must be in its receiver's timeline afterwards; sends that
could not be stored in time are answered ERR_SERVER_BUSY, and the node
recovers by itself."""
import asyncio
import threading
import time

import imgw_harness as H
import services
from msg_helpers import OK, MClient, close_all, uid

BUSY = H.pb.ERR_SERVER_BUSY


def test_redis_slow_during_traffic(server):
    r = services.RedisServer(extra_args=["--enable-debug-command", "yes"]).start()
    try:
        srv = server(threads=2, env={"store.backend": "redis",
                                     "store.redis_url": r.url,
                                     "store.redis_timeout_ms": 300,
                                     "limits.send_rate": 100000})
        print("check: DEBUG SLEEP 1.5 on Redis while 3 senders send; acked "
              "messages all reach the timelines, slow sends get ERR_SERVER_BUSY, "
              "the node recovers without a restart")

        def sleeper():
            time.sleep(0.8)
            cli = r.client()
            cli.execute_command("DEBUG", "SLEEP", "1.5")

        async def go():
            recv = uid("slow_r")
            cr = await MClient.open(srv, recv)
            senders = [await MClient.open(srv, uid("slow_s%d" % i)) for i in range(3)]
            acked, busy, other = [], 0, 0
            t = threading.Thread(target=sleeper)
            t.start()
            deadline = time.time() + 4.5
            i = 0
            while time.time() < deadline:
                for s in senders:
                    i += 1
                    try:
                        res = await s.send_msg(to=recv, content="m%d" % i, timeout=8)
                    except AssertionError:
                        other += 1
                        continue
                    if res.error_code == OK:
                        acked.append(res.message_id)
                    elif res.error_code == BUSY:
                        busy += 1
                    else:
                        other += 1
                await asyncio.sleep(0.02)
            t.join()
            print("acked %d, busy %d, other %d" % (len(acked), busy, other))
            assert busy > 0, "the slow Redis never surfaced as ERR_SERVER_BUSY"
            assert other == 0
            # Recovered: a send succeeds again without restarting imgw.
            for _ in range(50):
                res = await senders[0].send_msg(to=recv, content="after")
                if res.error_code == OK:
                    acked.append(res.message_id)
                    break
                await asyncio.sleep(0.2)
            else:
                raise AssertionError("sends never succeeded again")
            msgs, _ = await cr.sync_all()
            got = {m.message_id for m in msgs}
            lost = [m for m in acked if m not in got]
            print("acknowledged but missing from the timeline:", len(lost))
            assert not lost
            assert H.http_get(srv.port, "/healthz").status == 200
            await close_all([cr] + senders)
        H.run(go())
    finally:
        r.cleanup()
