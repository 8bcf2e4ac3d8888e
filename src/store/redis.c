/*
 * redis.c: the redis store backend ("redis"): URL parsing, one hiredis
 * async context per loop, the in-flight request FIFO with its deadlines,
 * reconnection with backoff, and the backend table. The requests
 * themselves (keys, Lua scripts, reply parsing) are in redis_ops.c;
 * docs/store.md ("The redis backend") describes the whole design.
 *
 * Threads: open/close on the main thread (no I/O: open only parses and
 * checks the configuration). Everything else runs on the loop that owns
 * the per-loop handle: its context, timers and requests are touched by
 * that thread only, so nothing here locks.
 *
 * hiredis 0.14 has no timeouts for async contexts, so every command is
 * linked, in sending order, in a per-loop FIFO with a deadline, and one
 * uv_timer watches the FIFO's head. Redis answers in order, so the head is
 * always the oldest command. A missed deadline fails every command in
 * flight with IMGW_ETIMEDOUT and drops the connection: a connection that
 * lost one answer cannot be trusted to pair the next ones correctly.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <hiredis/adapters/libuv.h>

#include "alloc.h"
#include "err.h"
#include "log.h"
#include "redis_impl.h"

#define REDIS_MAX_RETENTION_COUNT 10000000
#define REDIS_MAX_RETENTION_DAYS 3650
#define REDIS_MAX_DEDUPE_TTL (366 * 86400)
#define REDIS_DEFAULT_TIMEOUT_MS 2000
#define REDIS_BACKOFF_MIN_MS 100
#define REDIS_BACKOFF_MAX_MS 5000
#define REDIS_KEEPALIVE_MS 1000 /* PING when idle this long */

/* ---- URL --------------------------------------------------------------- */

static int
url_fail(char *err, size_t errlen, const char *why)
{
    snprintf(err, errlen, "store: bad redis_url: %s", why);
    return IMGW_ECONFIG;
}

static int
hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Copies s[0..n) with %XX decoded; NULL on a bad escape, an embedded NUL
 * or out of memory (*bad tells which). */
static char *
pct_dup(const char *s, size_t n, int *bad)
{
    char *out = imgw_try_malloc(n + 1);
    size_t j = 0;
    *bad = 0;
    if (out == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)s[i];
        if (c == '%') {
            int a = i + 2 < n ? hexval((unsigned char)s[i + 1]) : -1;
            int b = i + 2 < n ? hexval((unsigned char)s[i + 2]) : -1;
            if (a < 0 || b < 0 || a * 16 + b == 0) {
                imgw_free(out);
                *bad = 1;
                return NULL;
            }
            c = a * 16 + b;
            i += 2;
        }
        out[j++] = (char)c;
    }
    out[j] = '\0';
    return out;
}

/* A decimal integer in [lo, hi] spanning exactly s[0..n). */
static int
parse_int(const char *s, size_t n, long lo, long hi, int *out)
{
    long v = 0;
    if (n == 0 || n > 10)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    if (v < lo || v > hi)
        return -1;
    *out = (int)v;
    return 0;
}

void
imgw__redis_url_free(imgw__redis_url_t *u)
{
    imgw_free(u->host);
    imgw_free(u->path);
    imgw_free(u->user);
    imgw_free(u->password);
    memset(u, 0, sizeof(*u));
}

/* unix:/path[?db=N][&password=P]; "unix://" + an absolute path works too
 * (what most clients print). */
static int
url_parse_unix(const char *s, imgw__redis_url_t *u, char *err, size_t errlen)
{
    int bad;
    if (strncmp(s, "//", 2) == 0)
        s += 2;
    const char *q = strchr(s, '?');
    size_t plen = q ? (size_t)(q - s) : strlen(s);
    if (plen == 0 || s[0] != '/')
        return url_fail(err, errlen, "unix socket path must be absolute");
    if (plen > IMGW__REDIS_PATH_MAX)
        return url_fail(err, errlen, "unix socket path too long");
    u->path = pct_dup(s, plen, &bad);
    if (u->path == NULL)
        return bad ? url_fail(err, errlen, "bad %-escape in the path")
                   : IMGW_ENOMEM;
    while (q != NULL) {
        const char *p = q + 1;
        q = strchr(p, '&');
        size_t n = q ? (size_t)(q - p) : strlen(p);
        if (n > 3 && strncmp(p, "db=", 3) == 0) {
            if (parse_int(p + 3, n - 3, 0, INT_MAX, &u->db) != 0)
                return url_fail(err, errlen, "db must be a number >= 0");
        } else if (n > 9 && strncmp(p, "password=", 9) == 0) {
            if (n - 9 > IMGW__REDIS_SECRET_MAX)
                return url_fail(err, errlen, "password too long");
            imgw_free(u->password);
            u->password = pct_dup(p + 9, n - 9, &bad);
            if (u->password == NULL)
                return bad ? url_fail(err, errlen, "bad %-escape in password")
                           : IMGW_ENOMEM;
        } else {
            return url_fail(err, errlen,
                            "unix: URLs take only ?db=N and &password=P");
        }
    }
    return 0;
}

/* redis://[[user]:password@]host[:port][/db]; host may be [v6]. */
static int
url_parse_tcp(const char *s, imgw__redis_url_t *u, char *err, size_t errlen)
{
    int bad;
    size_t alen = strcspn(s, "/?#");
    const char *at = NULL;
    for (size_t i = 0; i < alen; i++)
        if (s[i] == '@')
            at = s + i;
    if (at != NULL) {
        const char *colon = memchr(s, ':', (size_t)(at - s));
        if (colon == NULL)
            return url_fail(err, errlen,
                            "credentials must be [user]:password@");
        size_t ulen = (size_t)(colon - s), plen = (size_t)(at - colon - 1);
        if (ulen > IMGW__REDIS_SECRET_MAX || plen > IMGW__REDIS_SECRET_MAX)
            return url_fail(err, errlen, "user or password too long");
        if (plen == 0)
            return url_fail(err, errlen, "empty password");
        if (ulen > 0) {
            u->user = pct_dup(s, ulen, &bad);
            if (u->user == NULL)
                return bad ? url_fail(err, errlen, "bad %-escape in user")
                           : IMGW_ENOMEM;
        }
        u->password = pct_dup(colon + 1, plen, &bad);
        if (u->password == NULL)
            return bad ? url_fail(err, errlen, "bad %-escape in password")
                       : IMGW_ENOMEM;
        alen -= (size_t)(at + 1 - s);
        s = at + 1;
    }
    const char *h = s, *port = NULL;
    size_t hlen;
    if (alen > 0 && s[0] == '[') {
        const char *close = memchr(s, ']', alen);
        if (close == NULL)
            return url_fail(err, errlen, "unterminated [IPv6 address]");
        h = s + 1;
        hlen = (size_t)(close - h);
        if (close + 1 < s + alen) {
            if (close[1] != ':')
                return url_fail(err, errlen, "junk after ]");
            port = close + 2;
        }
    } else {
        const char *colon = memchr(s, ':', alen);
        hlen = colon ? (size_t)(colon - s) : alen;
        if (colon)
            port = colon + 1;
    }
    if (hlen == 0)
        return url_fail(err, errlen, "no host");
    if (hlen > IMGW__REDIS_HOST_MAX)
        return url_fail(err, errlen, "host too long");
    for (size_t i = 0; i < hlen; i++)
        if (h[i] == '@' || h[i] == '%' || h[i] == ' ' || h[i] == '[' ||
            h[i] == ']')
            return url_fail(err, errlen, "bad character in host");
    u->host = imgw_try_strndup(h, hlen);
    if (u->host == NULL)
        return IMGW_ENOMEM;
    u->port = 6379;
    if (port != NULL &&
        parse_int(port, (size_t)(s + alen - port), 1, 65535, &u->port) != 0)
        return url_fail(err, errlen, "port must be 1..65535");
    const char *rest = s + alen;
    if (rest[0] == '/') {
        size_t n = strlen(rest + 1);
        if (n > 0 && parse_int(rest + 1, n, 0, INT_MAX, &u->db) != 0)
            return url_fail(err, errlen, "db must be a number >= 0");
    } else if (rest[0] != '\0') {
        return url_fail(err, errlen, "query strings are not supported");
    }
    return 0;
}

int
imgw__redis_url_parse(const char *s, imgw__redis_url_t *u, char *err,
                      size_t errlen)
{
    memset(u, 0, sizeof(*u));
    if (s == NULL || s[0] == '\0')
        return url_fail(err, errlen, "empty");
    if (strncmp(s, "redis://", 8) == 0)
        return url_parse_tcp(s + 8, u, err, errlen);
    if (strncmp(s, "unix:", 5) == 0)
        return url_parse_unix(s + 5, u, err, errlen);
    if (strncmp(s, "rediss://", 9) == 0)
        return url_fail(err, errlen, "TLS (rediss://) is not supported");
    return url_fail(err, errlen,
                    "must be redis://[:password@]host[:port][/db] or "
                    "unix:/path[?db=N]");
}

/* ---- open / close ------------------------------------------------------ */

static int
redis_open(imgw_store_t *s, const imgw_store_cfg_t *cfg, char *err,
           size_t errlen)
{
    if (cfg->retention_count < 1 ||
        cfg->retention_count > REDIS_MAX_RETENTION_COUNT) {
        snprintf(err, errlen, "store: retention_count must be 1..%d",
                 REDIS_MAX_RETENTION_COUNT);
        return IMGW_ECONFIG;
    }
    if (cfg->retention_days < 1 ||
        cfg->retention_days > REDIS_MAX_RETENTION_DAYS) {
        snprintf(err, errlen, "store: retention_days must be 1..%d",
                 REDIS_MAX_RETENTION_DAYS);
        return IMGW_ECONFIG;
    }
    if (cfg->dedupe_ttl < 1 || cfg->dedupe_ttl > REDIS_MAX_DEDUPE_TTL) {
        snprintf(err, errlen, "store: dedupe_ttl must be 1..%d",
                 REDIS_MAX_DEDUPE_TTL);
        return IMGW_ECONFIG;
    }
    if (cfg->seq_idle_days < 0 ||
        cfg->seq_idle_days > IMGW__STORE_MAX_SEQ_IDLE_DAYS) {
        snprintf(err, errlen, "store: seq_idle_days must be 1..%d",
                 IMGW__STORE_MAX_SEQ_IDLE_DAYS);
        return IMGW_ECONFIG;
    }
    if (cfg->max_conversations < 0 ||
        cfg->max_conversations > IMGW__STORE_CONVS_MAX) {
        snprintf(err, errlen, "store: max_conversations must be 0..%d",
                 IMGW__STORE_CONVS_MAX);
        return IMGW_ECONFIG;
    }
    imgw__redis_t *r = imgw_try_calloc(1, sizeof(*r));
    if (r == NULL)
        return IMGW_ENOMEM;
    r->max_convs = cfg->max_conversations > 0 ? cfg->max_conversations
                                              : IMGW__STORE_CONVS_DEFAULT;
    int rc = imgw__redis_url_parse(cfg->redis_url, &r->url, err, errlen);
    if (rc != 0) {
        imgw__redis_url_free(&r->url);
        imgw_free(r);
        return rc;
    }
    r->retention_count = cfg->retention_count;
    r->retention_ms = (int64_t)cfg->retention_days * 86400 * 1000;
    r->seq_ttl_ms = r->retention_ms +
                    (int64_t)(cfg->seq_idle_days ? cfg->seq_idle_days
                                                 : IMGW__STORE_SEQ_IDLE_DAYS) *
                        86400 * 1000;
    r->dedupe_ttl = cfg->dedupe_ttl;
    r->timeout_ms =
        cfg->timeout_ms > 0 ? cfg->timeout_ms : REDIS_DEFAULT_TIMEOUT_MS;
    if (r->url.path != NULL)
        snprintf(r->where, sizeof(r->where), "unix:%.107s db %d", r->url.path,
                 r->url.db);
    else
        snprintf(r->where, sizeof(r->where), "%.255s:%d db %d", r->url.host,
                 r->url.port, r->url.db);
    s->impl = r;
    IMGW_LOG_INFO("store: redis backend at %s%s, retention %d entries / %d "
                  "days, dedupe %d s, max seq kept %lld days after last use, "
                  "timeout %d ms",
                  r->where, r->url.password ? " (AUTH)" : "",
                  cfg->retention_count, cfg->retention_days, cfg->dedupe_ttl,
                  (long long)(r->seq_ttl_ms / 86400000), r->timeout_ms);
    return 0;
}

static void
redis_close(imgw_store_t *s)
{
    imgw__redis_t *r = s->impl;
    if (r == NULL)
        return;
    imgw__redis_url_free(&r->url);
    imgw_free(r);
    s->impl = NULL;
}

/* ---- the FIFO of commands in flight ----------------------------------- */

static void deadline_cb(uv_timer_t *t);
static void conn_drop(imgw__redis_loop_t *rl, int status);

static void
fifo_push(imgw__redis_loop_t *rl, imgw__redis_req_t *q)
{
    uint64_t now = uv_now(rl->loop);
    q->deadline = now + (uint64_t)rl->r->timeout_ms;
    imgw_list_insert_tail(&rl->fifo, &q->link);
    rl->n_inflight++;
    rl->last_send = now;
    /* Deadlines only grow along the FIFO, so a running timer is already
     * due no later than this one. */
    if (!uv_is_active((uv_handle_t *)&rl->deadline_timer))
        uv_timer_start(&rl->deadline_timer, deadline_cb,
                       (uint64_t)rl->r->timeout_ms, 0);
}

static void
fifo_unlink(imgw__redis_req_t *q)
{
    if (!imgw_list_linked(&q->link))
        return;
    imgw_list_remove(&q->link);
    q->rl->n_inflight--;
}

void
imgw__redis_req_free(imgw__redis_req_t *q)
{
    if (q->cmd != NULL)
        redisFreeCommand(q->cmd);
    imgw_free(q);
}

static void
req_complete(imgw__redis_req_t *q, redisReply *reply, int status)
{
    q->done(q, reply, status);
    imgw__redis_req_free(q);
}

imgw__redis_req_t *
imgw__redis_req_new(imgw__redis_loop_t *rl, imgw__redis_done_fn done,
                    int write, int *refuse)
{
    *refuse = 0;
    if (rl->state != IMGW__REDIS_READY || rl->freeing || rl->closing)
        return NULL;
    /* Load shedding: when Redis falls behind, a pipeline that grows
     * without bound ends in one timeout failing everything queued. Past
     * this many commands in flight new requests fail at once (EBUSY, the
     * clients get ERR_SERVER_BUSY) while the queued ones still complete. */
    if (rl->n_inflight >= IMGW__REDIS_MAX_INFLIGHT) {
        rl->shed++;
        return NULL;
    }
    imgw__redis_req_t *q = imgw_try_calloc(1, sizeof(*q));
    if (q == NULL) {
        *refuse = IMGW_ENOMEM;
        return NULL;
    }
    q->rl = rl;
    q->done = done;
    q->write = (uint8_t)(write != 0);
    return q;
}

static void reply_cb(redisAsyncContext *ac, void *r, void *privdata);

/* Hands a formatted command to hiredis and links it; 0 or -1 (not sent). */
static int
req_post(imgw__redis_req_t *q, const char *cmd, size_t len)
{
    imgw__redis_loop_t *rl = q->rl;
    if (rl->ac == NULL || rl->freeing)
        return -1;
    if (redisAsyncFormattedCommand(rl->ac, reply_cb, q, cmd, len) !=
        REDIS_OK)
        return -1;
    fifo_push(rl, q);
    return 0;
}

void
imgw__redis_send(imgw__redis_req_t *q, int script, int argc,
                 const char **argv, size_t *lens)
{
    imgw__redis_loop_t *rl = q->rl;
    char *cmd = NULL;
    if (script >= 0) {
        argv[0] = "EVALSHA";
        lens[0] = 7;
        argv[1] = rl->sha[script];
        lens[1] = 40;
        q->script = (uint8_t)(script + 1);
    }
    int len = redisFormatCommandArgv(&cmd, argc, argv, lens);
    if (len < 0 || req_post(q, cmd, (size_t)len) != 0) {
        if (cmd != NULL)
            redisFreeCommand(cmd);
        req_complete(q, NULL, IMGW_EBUSY); /* nothing reached Redis */
        return;
    }
    /* EVALSHA keeps its bytes to resend them after NOSCRIPT (a Redis that
     * lost its script cache under a live connection: SCRIPT FLUSH). */
    if (script >= 0) {
        q->cmd = cmd;
        q->cmdlen = (size_t)len;
    } else {
        redisFreeCommand(cmd);
    }
}

/* Sends an internal command (handshake, keepalive): argv of C strings. */
static void
send_internal(imgw__redis_loop_t *rl, imgw__redis_done_fn done, int aux,
              int argc, const char **argv)
{
    size_t lens[3];
    imgw__redis_req_t *q = imgw_try_calloc(1, sizeof(*q));
    if (q == NULL) {
        /* The handshake cannot complete: start over later. */
        conn_drop(rl, 0);
        return;
    }
    q->rl = rl;
    q->done = done;
    q->internal = 1;
    q->aux = aux;
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    imgw__redis_send(q, -1, argc, argv, lens);
}

static void script_loaded(imgw__redis_req_t *q, redisReply *reply,
                          int status);

/*
 * NOSCRIPT: Redis lost the script (SCRIPT FLUSH, or a failover to a
 * replica that never saw it) while this connection stayed up. Load it
 * again and resend the same bytes right behind the load; the sha depends
 * only on the body, so the command stays valid. 0 = resent.
 */
static int
req_retry_noscript(imgw__redis_req_t *q)
{
    imgw__redis_loop_t *rl = q->rl;
    if (rl->state != IMGW__REDIS_READY || rl->freeing || q->retried)
        return -1;
    const char *argv[3] = {"SCRIPT", "LOAD",
                           imgw__redis_scripts[q->script - 1]};
    send_internal(rl, script_loaded, q->script - 1, 3, argv);
    if (rl->state != IMGW__REDIS_READY || rl->freeing)
        return -1;
    q->retried = 1;
    return req_post(q, q->cmd, q->cmdlen);
}

/*
 * Every reply (or, when the context goes away, NULL) for every command.
 * An error reply completes the request with IMGW_EBUSY: our scripts check
 * everything before their first write, so an error means nothing was
 * written. A NULL reply means the answer was lost: a write may or may not
 * have happened (IMGW_ETIMEDOUT), a read simply failed (IMGW_EBUSY), unless
 * the drop was a timeout, which is IMGW_ETIMEDOUT for all.
 */

/* Every state change goes through here so that the node-wide count of
 * ready loops (redis_ready) follows it. */
static void
set_state(imgw__redis_loop_t *rl, int st)
{
    int was = rl->state == IMGW__REDIS_READY;
    int now = st == IMGW__REDIS_READY;
    rl->state = st;
    if (was != now)
        atomic_fetch_add(&rl->r->loops_ready, now ? 1 : -1);
}

static void
reply_cb(redisAsyncContext *ac, void *r, void *privdata)
{
    imgw__redis_req_t *q = privdata;
    imgw__redis_loop_t *rl = q->rl;
    redisReply *reply = r;
    (void)ac;
    fifo_unlink(q);
    if (reply == NULL) {
        /* The context is being torn down: callbacks that run from here
         * on must not send on it. */
        set_state(rl, IMGW__REDIS_DOWN);
        int st = rl->drop_status;
        if (st == 0)
            st = q->write ? IMGW_ETIMEDOUT : IMGW_EBUSY;
        req_complete(q, NULL, st);
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        if (q->script && strncmp(reply->str, "NOSCRIPT", 8) == 0 &&
            req_retry_noscript(q) == 0)
            return;
        IMGW_LOG_WARN_RL("store: redis (%s) error reply: %.200s",
                         rl->r->where, reply->str);
        req_complete(q, NULL, IMGW_EBUSY);
        return;
    }
    req_complete(q, reply, 0);
}

/* ---- connection -------------------------------------------------------- */

/*
 * hiredis 0.14.1's libuv adapter returns early when uv_poll reports an
 * error. libuv reports POLLERR (a refused connect, a reset connection) as
 * status UV_EBADF and stops the handle, so hiredis would never see the
 * failure and the context would hang until a deadline. We keep its
 * attach and cleanup (they own the uv_poll_t and free it in its close
 * callback) and route its events through this callback, which on an error
 * lets hiredis try the directions it was waiting for, so that it reads the
 * socket error itself (what hiredis 1.0's adapter does).
 */
static void
poll_cb(uv_poll_t *handle, int status, int events)
{
    redisLibuvEvents *p = handle->data;
    int ev = status < 0 ? p->events : events;
    if (p->context != NULL && (ev & UV_READABLE))
        redisAsyncHandleRead(p->context);
    if (p->context != NULL && (ev & UV_WRITABLE))
        redisAsyncHandleWrite(p->context);
}

static void
ev_update(redisLibuvEvents *p)
{
    if (p->events)
        uv_poll_start(&p->handle, p->events, poll_cb);
    else
        uv_poll_stop(&p->handle);
}

static void
ev_add_read(void *priv)
{
    redisLibuvEvents *p = priv;
    p->events |= UV_READABLE;
    ev_update(p);
}

static void
ev_del_read(void *priv)
{
    redisLibuvEvents *p = priv;
    p->events &= ~UV_READABLE;
    ev_update(p);
}

static void
ev_add_write(void *priv)
{
    redisLibuvEvents *p = priv;
    p->events |= UV_WRITABLE;
    ev_update(p);
}

static void
ev_del_write(void *priv)
{
    redisLibuvEvents *p = priv;
    p->events &= ~UV_WRITABLE;
    ev_update(p);
}

static void conn_start(imgw__redis_loop_t *rl);

static void
reconnect_cb(uv_timer_t *t)
{
    conn_start(t->data);
}

static void
schedule_reconnect(imgw__redis_loop_t *rl)
{
    if (rl->closing)
        return;
    set_state(rl, IMGW__REDIS_DOWN);
    uv_timer_stop(&rl->conn_timer);
    uv_timer_start(&rl->conn_timer, reconnect_cb, (uint64_t)rl->backoff_ms,
                   0);
    rl->backoff_ms *= 2;
    if (rl->backoff_ms > REDIS_BACKOFF_MAX_MS)
        rl->backoff_ms = REDIS_BACKOFF_MAX_MS;
}

/* The context is gone (or going, in hiredis's hands): forget it and plan
 * the next attempt. Idempotent. */
static void
conn_gone(imgw__redis_loop_t *rl)
{
    if (rl->ac == NULL && !rl->freeing)
        return;
    if (rl->up && !rl->closing)
        IMGW_LOG_WARN("store: redis (%s) connection lost on loop %d",
                      rl->r->where, rl->base.loop_index);
    if (!rl->up)
        rl->addr_idx++; /* this address did not work: try the next */
    rl->up = 0;
    rl->ac = NULL;
    rl->freeing = 0;
    rl->drop_status = 0;
    set_state(rl, IMGW__REDIS_DOWN);
    schedule_reconnect(rl);
}

/*
 * Drops the connection: every command in flight completes (status: see
 * reply_cb; status != 0 overrides it), the context is freed and a
 * reconnect is planned. Inside a hiredis callback the free is deferred by
 * hiredis until the callback returns; the context is then already
 * unusable for new commands because the state is no longer READY.
 */
static void
conn_drop(imgw__redis_loop_t *rl, int status)
{
    redisAsyncContext *ac = rl->ac;
    if (ac == NULL || rl->freeing)
        return;
    set_state(rl, IMGW__REDIS_DOWN);
    if (ac->c.flags & (REDIS_DISCONNECTING | REDIS_FREEING))
        return; /* hiredis is already tearing it down: on_disconnect */
    rl->freeing = 1;
    rl->drop_status = status;
    int deferred = (ac->c.flags & REDIS_IN_CALLBACK) != 0;
    redisAsyncFree(ac);
    if (!deferred)
        conn_gone(rl); /* no-op if on_disconnect already ran */
}

static void
deadline_cb(uv_timer_t *t)
{
    imgw__redis_loop_t *rl = t->data;
    imgw_list_t *first = imgw_list_first(&rl->fifo);
    if (first == NULL)
        return;
    imgw__redis_req_t *head = IMGW_LIST_ENTRY(first, imgw__redis_req_t, link);
    uint64_t now = uv_now(rl->loop);
    if (head->deadline > now) {
        uv_timer_start(t, deadline_cb, head->deadline - now, 0);
        return;
    }
    IMGW_LOG_WARN_RL("store: redis (%s) gave no answer in %d ms on loop %d: "
                     "dropping the connection (%zu commands in flight)",
                     rl->r->where, rl->r->timeout_ms, rl->base.loop_index,
                     rl->n_inflight);
    conn_drop(rl, IMGW_ETIMEDOUT);
}

static void
ping_done(imgw__redis_req_t *q, redisReply *reply, int status)
{
    (void)reply;
    if (status != 0)
        conn_drop(q->rl, 0);
}

static void
keepalive_cb(uv_timer_t *t)
{
    imgw__redis_loop_t *rl = t->data;
    if (rl->state != IMGW__REDIS_READY || rl->freeing || rl->n_inflight > 0)
        return;
    if (uv_now(rl->loop) - rl->last_send < REDIS_KEEPALIVE_MS)
        return;
    /* An idle connection must still notice a dead server (no FIN, e.g. a
     * network partition), so that loop_ready tells the truth. */
    const char *argv[1] = {"PING"};
    send_internal(rl, ping_done, 0, 1, argv);
}

static void
handshake_step(imgw__redis_loop_t *rl)
{
    if (--rl->handshake_left > 0 || rl->state != IMGW__REDIS_HANDSHAKE)
        return;
    set_state(rl, IMGW__REDIS_READY);
    rl->up = 1;
    rl->backoff_ms = REDIS_BACKOFF_MIN_MS;
    IMGW_LOG_INFO("store: redis (%s) ready on loop %d", rl->r->where,
                  rl->base.loop_index);
    uv_timer_stop(&rl->conn_timer);
    uv_timer_start(&rl->conn_timer, keepalive_cb, REDIS_KEEPALIVE_MS,
                   REDIS_KEEPALIVE_MS);
}

static void
handshake_done(imgw__redis_req_t *q, redisReply *reply, int status)
{
    (void)reply;
    if (status != 0) {
        conn_drop(q->rl, 0);
        return;
    }
    handshake_step(q->rl);
}

static void
script_loaded(imgw__redis_req_t *q, redisReply *reply, int status)
{
    imgw__redis_loop_t *rl = q->rl;
    if (status != 0 || reply->type != REDIS_REPLY_STRING || reply->len != 40) {
        if (status == 0)
            IMGW_LOG_WARN_RL("store: redis (%s): odd SCRIPT LOAD reply",
                             rl->r->where);
        conn_drop(rl, 0);
        return;
    }
    memcpy(rl->sha[q->aux], reply->str, 40);
    rl->sha[q->aux][40] = '\0';
    if (rl->state == IMGW__REDIS_HANDSHAKE)
        handshake_step(rl);
}

static void
on_connect(const redisAsyncContext *ac, int status)
{
    imgw__redis_loop_t *rl = ac->data;
    if (status == REDIS_OK)
        return; /* the handshake replies decide when we are ready */
    IMGW_LOG_WARN_RL("store: redis (%s) connect failed on loop %d: %s",
                     rl->r->where, rl->base.loop_index,
                     ac->errstr ? ac->errstr : "?");
    /* hiredis frees the context when this returns and fails the queued
     * handshake commands; they find rl->ac NULL and do nothing more. */
    conn_gone(rl);
}

static void
on_disconnect(const redisAsyncContext *ac, int status)
{
    imgw__redis_loop_t *rl = ac->data;
    if (status != REDIS_OK)
        IMGW_LOG_WARN_RL("store: redis (%s) on loop %d: %s", rl->r->where,
                         rl->base.loop_index,
                         ac->errstr ? ac->errstr : "disconnected");
    conn_gone(rl);
}

/* Creates the context for a numeric address (or the unix path) and
 * queues the handshake, pipelined: AUTH, SELECT, one SCRIPT LOAD per
 * script. hiredis sends them once the non-blocking connect completes. */
static void
conn_connect(imgw__redis_loop_t *rl, const char *ip)
{
    const imgw__redis_url_t *u = &rl->r->url;
    redisAsyncContext *ac = u->path ? redisAsyncConnectUnix(u->path)
                                    : redisAsyncConnect(ip, u->port);
    if (ac == NULL) {
        schedule_reconnect(rl);
        return;
    }
    if (ac->err) {
        IMGW_LOG_WARN_RL("store: redis (%s) connect failed on loop %d: %s",
                         rl->r->where, rl->base.loop_index, ac->errstr);
        rl->addr_idx++;
        redisAsyncFree(ac);
        schedule_reconnect(rl);
        return;
    }
    if (redisLibuvAttach(ac, rl->loop) != REDIS_OK) {
        redisAsyncFree(ac);
        schedule_reconnect(rl);
        return;
    }
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->data = rl;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    rl->ac = ac;
    set_state(rl, IMGW__REDIS_HANDSHAKE);
    rl->handshake_left = IMGW__REDIS_N_SCRIPTS + (u->password != NULL) +
                         (u->db != 0);
    if (u->password != NULL) {
        const char *argv[3] = {"AUTH", u->user ? u->user : u->password,
                               u->password};
        send_internal(rl, handshake_done, 0, u->user ? 3 : 2, argv);
    }
    if (u->db != 0 && rl->state == IMGW__REDIS_HANDSHAKE) {
        char db[16];
        snprintf(db, sizeof(db), "%d", u->db);
        const char *argv[2] = {"SELECT", db};
        send_internal(rl, handshake_done, 0, 2, argv);
    }
    for (int i = 0;
         i < IMGW__REDIS_N_SCRIPTS && rl->state == IMGW__REDIS_HANDSHAKE;
         i++) {
        const char *argv[3] = {"SCRIPT", "LOAD", imgw__redis_scripts[i]};
        send_internal(rl, script_loaded, i, 3, argv);
    }
}

static void
gai_cb(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    imgw__redis_loop_t *rl = req->data;
    char ip[IMGW__REDIS_ADDRS][INET6_ADDRSTRLEN];
    int n = 0;
    rl->gai_active = 0;
    for (struct addrinfo *a = status == 0 ? res : NULL;
         a != NULL && n < IMGW__REDIS_ADDRS; a = a->ai_next) {
        const void *x;
        if (a->ai_family == AF_INET6)
            x = &((struct sockaddr_in6 *)a->ai_addr)->sin6_addr;
        else if (a->ai_family == AF_INET)
            x = &((struct sockaddr_in *)a->ai_addr)->sin_addr;
        else
            continue;
        if (inet_ntop(a->ai_family, x, ip[n], sizeof(ip[n])) != NULL)
            n++;
    }
    uv_freeaddrinfo(res);
    if (rl->closing) {
        if (--rl->open_handles == 0)
            imgw_free(rl);
        return;
    }
    rl->open_handles--;
    if (n == 0) {
        IMGW_LOG_WARN_RL("store: redis (%s): cannot resolve the host: %s",
                         rl->r->where,
                         status ? uv_strerror(status) : "no address");
        schedule_reconnect(rl);
        return;
    }
    /* A name may have several addresses (localhost: ::1 and 127.0.0.1)
     * and Redis may listen on some only: each failed attempt moves on to
     * the next one (conn_gone), a working one is kept. */
    conn_connect(rl, ip[rl->addr_idx % (unsigned)n]);
}

/*
 * One connection attempt. A host name is resolved with uv_getaddrinfo
 * (the thread pool), because hiredis would call getaddrinfo() on the loop
 * thread and a slow DNS server would stall every connection of the loop.
 */
static void
conn_start(imgw__redis_loop_t *rl)
{
    const imgw__redis_url_t *u = &rl->r->url;
    unsigned char buf[sizeof(struct in6_addr)];
    if (rl->closing || rl->ac != NULL || rl->gai_active)
        return;
    if (u->path != NULL || inet_pton(AF_INET, u->host, buf) == 1 ||
        inet_pton(AF_INET6, u->host, buf) == 1) {
        conn_connect(rl, u->host);
        return;
    }
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    rl->gai.data = rl;
    set_state(rl, IMGW__REDIS_RESOLVING);
    if (uv_getaddrinfo(rl->loop, &rl->gai, gai_cb, u->host, NULL, &hints) !=
        0) {
        schedule_reconnect(rl);
        return;
    }
    rl->gai_active = 1;
    rl->open_handles++;
}

/* ---- per-loop handle --------------------------------------------------- */

static int
redis_loop_open(imgw_store_t *s, int loop_index, uv_loop_t *loop,
                imgw_store_loop_t **out)
{
    if (loop == NULL)
        return IMGW_EINVAL; /* the redis backend needs the loop's I/O */
    imgw__redis_loop_t *rl = imgw_try_calloc(1, sizeof(*rl));
    if (rl == NULL)
        return IMGW_ENOMEM;
    rl->base.store = s;
    rl->base.be = s->be;
    rl->base.loop_index = loop_index;
    rl->base.loop = loop;
    rl->base.impl = rl;
    rl->r = s->impl;
    rl->loop = loop;
    imgw_list_init(&rl->fifo);
    rl->backoff_ms = REDIS_BACKOFF_MIN_MS;
    rl->state = IMGW__REDIS_DOWN;
    atomic_fetch_add(&rl->r->loops_open, 1);
    uv_timer_init(loop, &rl->deadline_timer);
    uv_timer_init(loop, &rl->conn_timer);
    rl->deadline_timer.data = rl;
    rl->conn_timer.data = rl;
    rl->open_handles = 2;
    rl->last_send = uv_now(loop);
    conn_start(rl); /* asynchronous: ready once the handshake is answered */
    *out = &rl->base;
    return 0;
}

static void
handle_closed(uv_handle_t *h)
{
    imgw__redis_loop_t *rl = h->data;
    if (--rl->open_handles == 0)
        imgw_free(rl);
}

/*
 * Fails everything in flight (reads IMGW_EBUSY, writes IMGW_ETIMEDOUT:
 * their fate is unknown), frees the context and closes the timers; the
 * handle itself is freed by the last close callback, so the loop must run
 * once more (core's loops do).
 */
static void
redis_loop_close(imgw_store_loop_t *sl)
{
    imgw__redis_loop_t *rl = sl->impl;
    if (rl->closing)
        return;
    rl->closing = 1;
    atomic_fetch_sub(&rl->r->loops_open, 1);
    uv_timer_stop(&rl->deadline_timer);
    uv_timer_stop(&rl->conn_timer);
    if (rl->gai_active)
        uv_cancel((uv_req_t *)&rl->gai); /* gai_cb runs either way */
    conn_drop(rl, 0);
    set_state(rl, IMGW__REDIS_DOWN);
    uv_close((uv_handle_t *)&rl->deadline_timer, handle_closed);
    uv_close((uv_handle_t *)&rl->conn_timer, handle_closed);
}

static int
redis_loop_ready(imgw_store_loop_t *sl)
{
    imgw__redis_loop_t *rl = sl->impl;
    return rl->state == IMGW__REDIS_READY && !rl->freeing;
}

static int
redis_ready(imgw_store_t *s, int n_loops)
{
    imgw__redis_t *r = s->impl;
    /* loops_open too: a loop that closed (shutdown) is not ready. */
    return atomic_load(&r->loops_open) >= n_loops &&
           atomic_load(&r->loops_ready) >= n_loops;
}

/* ---- the table --------------------------------------------------------- */

const imgw_store_backend_t imgw__store_redis = {
    .name = "redis",
    .open = redis_open,
    .close = redis_close,
    .loop_open = redis_loop_open,
    .loop_close = redis_loop_close,
    .loop_ready = redis_loop_ready,
    .ready = redis_ready,
    .tick = NULL, /* Redis expires keys itself */
    .append = imgw__redis_append,
    .sync = imgw__redis_sync,
    .max_seq = imgw__redis_max_seq,
    .dedupe_get = imgw__redis_dedupe_get,
    .set_delivered = imgw__redis_set_delivered,
    .set_read = imgw__redis_set_read,
    .msg_get = imgw__redis_msg_get,
    .revoke = imgw__redis_revoke,
    .group_set = imgw__redis_group_set,
    .group_get = imgw__redis_group_get,
    .group_del = imgw__redis_group_del,
    .route_set = imgw__redis_route_set,
    .route_del = imgw__redis_route_del,
    .route_refresh = imgw__redis_route_refresh,
    .route_get = imgw__redis_route_get,
    .conv_list = imgw__redis_conv_list,
    .conv_read = imgw__redis_conv_read,
    .conv_delete = imgw__redis_conv_delete,
    .watch_set = imgw__redis_watch_set,
    .watch_get = imgw__redis_watch_get,
};
