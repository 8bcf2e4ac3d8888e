/*
 * nacos.h: optional service registration with Nacos (HTTP open API v1).
 *
 * When nacos.server is set, every WebSocket port (server.ports as "ws",
 * tls.ports as "wss") is registered as an ephemeral instance of
 * nacos.service in nacos.group / nacos.namespace, kept alive with a beat
 * every nacos.beat_interval seconds and deregistered on shutdown. All of it
 * runs on the main thread's libuv loop with the shared HTTP client
 * (net/httpc.h, libcurl on that loop): a Nacos that is down or slow never
 * stops or delays the gateway (failures are logged at a bounded rate and
 * retried at the next beat).
 *
 * Thread: every function except imgw_nacos_stats() must be called on the
 * thread that runs the loop given to imgw_nacos_start() (the main thread).
 */
#ifndef IMGW_NACOS_H
#define IMGW_NACOS_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "config.h"

typedef struct imgw_nacos_s imgw_nacos_t;

/* Counters for /metrics; a snapshot, each field read atomically. */
typedef struct imgw_nacos_stats_s {
    int registered;    /* gauge: ports currently registered */
    uint64_t requests; /* HTTP requests sent (register, beat, deregister) */
    uint64_t beats_ok; /* beats Nacos answered 2xx for a known instance */
    uint64_t failures; /* requests that failed: connect, timeout, non-2xx */
} imgw_nacos_stats_t;

/*
 * Parses cfg->nacos_server ("host:port" or "[v6]:port") and prepares one
 * instance per WebSocket port. Nothing is sent yet: the first register
 * requests go out on the first turn of `loop` (so call uv_run after the
 * listeners exist), then a beat per port every cfg->nacos_beat_interval s.
 * Host names are resolved by the HTTP client, asynchronously.
 *
 * cfg must outlive the instance. On success *out owns the registration;
 * release it with imgw_nacos_free(). Returns 0, IMGW_ECONFIG (err names
 * nacos.server), IMGW_ENOMEM or a libuv code.
 */
int imgw_nacos_start(imgw_nacos_t **out, uv_loop_t *loop,
                     const imgw_config_t *cfg, char *err, size_t errlen);

/*
 * Starts deregistration: stops the beats, abandons any request in flight
 * and sends one DELETE per port. done(arg) is called once on the loop when
 * every DELETE has finished, or 2 s after this call, whichever is first.
 * Calling it again is a no-op (the first done stays in charge). done may be
 * NULL.
 */
void imgw_nacos_stop(imgw_nacos_t *n, void (*done)(void *), void *arg);

/*
 * Closes everything. Memory is released in libuv close callbacks, so the
 * loop must run once more afterwards (uv_run(loop, UV_RUN_NOWAIT) is
 * enough). A pending done callback
 * of imgw_nacos_stop() is never called after this. n may be NULL.
 */
void imgw_nacos_free(imgw_nacos_t *n);

/*
 * Copies the counters. Any thread. The counters are process-wide (there is
 * one registration per process), so n may be NULL, e.g. from /metrics,
 * which has no pointer to the instance; all zero when Nacos is unused.
 */
void imgw_nacos_stats(const imgw_nacos_t *n, imgw_nacos_stats_t *out);

#endif
