/*
 * nacos.c: service registration with Nacos over its HTTP open API v1 (see
 * nacos.h). Runs on the main thread's libuv loop only; the one exception is
 * imgw_nacos_stats(), which reads process-wide atomics from any thread.
 *
 * Each registered port is an "instance" with at most one HTTP request in
 * flight. A request is one short-lived TCP connection: connect, write the
 * whole request with "Connection: close", read until EOF (or until
 * Content-Length bytes of body arrived), look at the status line (and, for
 * beats, the body), close. That is all the HTTP we need, and it keeps every
 * failure local to one request: a timer bounds each
 * request, and whatever goes wrong is counted, logged at a bounded rate and
 * retried at the next beat. Nothing here ever stops the gateway.
 *
 * Endpoints (Nacos 1.x and 2.x both serve them):
 *   POST   /nacos/v1/ns/instance        register; form body
 *   PUT    /nacos/v1/ns/instance/beat   beat; query string
 *   DELETE /nacos/v1/ns/instance        deregister; query string
 * Servlet containers parse form bodies for POST only, so PUT and DELETE
 * carry their parameters in the query string, as the Java client does.
 */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "alloc.h"
#include "buf.h"
#include "err.h"
#include "log.h"
#include "nacos.h"

#define IMGW_NACOS_STOP_MS 2000    /* deregistration budget on shutdown */
#define IMGW_NACOS_REQ_MAX_MS 5000 /* upper bound for one request */
#define IMGW_NACOS_MAX_ADDRS 4     /* addresses kept from one lookup */
#define IMGW_NACOS_IN_CAP                                                      \
    2048 /* response bytes kept; the rest is read                              \
          * and dropped (we need the status line                               \
          * and a short JSON body only) */

enum { IMGW_NACOS_REGISTER = 0, IMGW_NACOS_BEAT, IMGW_NACOS_DEREGISTER };

static const char *const imgw_nacos_kind_name[] = {"register", "beat",
                                                   "deregister"};

/* Deregistration state of one instance during imgw_nacos_stop(). */
enum {
    IMGW_NACOS_DEREG_NONE = 0, /* not stopping */
    IMGW_NACOS_DEREG_WANT,     /* DELETE to send once no request is in flight */
    IMGW_NACOS_DEREG_DONE      /* DELETE finished, failed or given up */
};

typedef struct imgw_nacos_req_s imgw_nacos_req_t;

/* One registered port. Owned by imgw_nacos_t (array). */
typedef struct imgw_nacos_inst_s {
    imgw_nacos_t *n;
    uint16_t port;
    int tls;               /* 1 = wss (tls.ports) */
    int registered;        /* last register answered 2xx, no 404 since */
    int reregister;        /* a beat said "unknown": register right away */
    int dereg;             /* IMGW_NACOS_DEREG_* */
    int retry;             /* 1 + kind to resend at once (next address) */
    imgw_nacos_req_t *req; /* request in flight, or NULL */
} imgw_nacos_inst_t;

/*
 * One HTTP exchange. Freed when both handles have closed (open_handles
 * drops to 0); `finished` makes the outcome be decided exactly once even
 * though connect, write, read and the timer can each end it.
 */
struct imgw_nacos_req_s {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_connect_t connect;
    uv_write_t write;
    imgw_nacos_inst_t *inst;
    int kind;         /* IMGW_NACOS_REGISTER / BEAT / DEREGISTER */
    int open_handles; /* 2 after init; freed at 0 */
    int finished;
    int addr_idx; /* index into n->addrs this request dialled */
    int retry;    /* connect failed, another address remains */
    char *out;    /* the whole request, malloc'd */
    size_t out_len;
    size_t in_len; /* in[0..in_len) received, in_len <= IN_CAP */
    char in[IMGW_NACOS_IN_CAP + 1];
    char sink[512]; /* read target once `in` is full */
};

struct imgw_nacos_s {
    uv_loop_t *loop;
    const imgw_config_t *cfg;
    char host[256];     /* without brackets; for DNS and logs */
    char hostport[264]; /* nacos.server as given: the Host header */
    uint16_t port;
    int numeric; /* host is an IP literal: never resolved */
    struct sockaddr_storage addrs[IMGW_NACOS_MAX_ADDRS];
    int n_addrs;
    int addr_idx;  /* the address requests dial now */
    int have_addr; /* addrs[addr_idx] is usable */
    int gai_pending;
    uv_getaddrinfo_t gai;
    uv_timer_t beat_timer;
    uv_timer_t stop_timer;
    int open_timers; /* 2 after start; see imgw_nacos_release() */
    uint64_t req_timeout_ms;
    char metadata[512]; /* JSON object, not encoded */
    imgw_nacos_inst_t inst[2 * IMGW_CONFIG_MAX_PORTS];
    int n_inst;
    int live_reqs; /* requests not yet freed */
    int stopping;
    int stop_expired; /* the 2 s budget ran out */
    int freeing;
    void (*done)(void *);
    void *done_arg;
};

/* Process-wide counters (one registration per process): /metrics reads
 * them without a pointer to the instance, from any loop thread. */
static struct {
    atomic_int registered;
    atomic_uint_fast64_t requests;
    atomic_uint_fast64_t beats_ok;
    atomic_uint_fast64_t failures;
} imgw_nacos_g;

static void imgw_nacos_send(imgw_nacos_inst_t *in, int kind);
static void imgw_nacos_check_stopped(imgw_nacos_t *n);

/* ------------------------------------------------------------------------
 * request text: an imgw_buf_t (base/buf.h); allocation failure sticks and
 * is checked once
 */

/* Percent-encodes everything but RFC 3986 unreserved characters; valid in
 * both query strings and x-www-form-urlencoded bodies. */
static void
imgw_nacos_sb_enc(imgw_buf_t *b, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
            (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.' ||
            c == '~') {
            imgw_buf_add(b, (const char *)&c, 1);
        } else {
            char e[3] = {'%', hex[c >> 4], hex[c & 15]};
            imgw_buf_add(b, e, 3);
        }
    }
}

/* Appends s as a JSON string literal (quotes included). */
static void
imgw_nacos_json_str(char *dst, size_t cap, const char *s)
{
    size_t o = 0;
    if (cap < 3) {
        dst[0] = '\0';
        return;
    }
    dst[o++] = '"';
    for (; *s && o + 8 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            dst[o++] = '\\';
            dst[o++] = (char)c;
        } else if (c < 0x20) {
            o += (size_t)snprintf(dst + o, cap - o, "\\u%04x", c);
        } else {
            dst[o++] = (char)c;
        }
    }
    dst[o++] = '"';
    dst[o] = '\0';
}

/* ------------------------------------------------------------------------
 * request building
 */

/* The parameters every endpoint takes, as name=value&... (encoded). */
static void
imgw_nacos_common_params(imgw_buf_t *b, imgw_nacos_inst_t *in)
{
    const imgw_config_t *cfg = in->n->cfg;
    imgw_buf_str(b, "serviceName=");
    imgw_nacos_sb_enc(b, cfg->nacos_service);
    imgw_buf_str(b, "&groupName=");
    imgw_nacos_sb_enc(b, cfg->nacos_group);
    if (cfg->nacos_namespace[0] != '\0') {
        imgw_buf_str(b, "&namespaceId=");
        imgw_nacos_sb_enc(b, cfg->nacos_namespace);
    }
    imgw_buf_str(b, "&ip=");
    imgw_nacos_sb_enc(b, cfg->nacos_ip);
    imgw_buf_fmt(b, "&port=%u&ephemeral=true", (unsigned)in->port);
}

static void
imgw_nacos_instance_metadata(imgw_nacos_inst_t *in, char *dst, size_t cap)
{
    snprintf(dst, cap, "%s,\"protocol\":\"%s\"}", in->n->metadata,
             in->tls ? "wss" : "ws");
}

/*
 * Builds the whole request for `kind` into a malloc'd buffer. Returns 0 or
 * IMGW_ENOMEM.
 */
static int
imgw_nacos_build(imgw_nacos_inst_t *in, int kind, char **out, size_t *len)
{
    imgw_nacos_t *n = in->n;
    const imgw_config_t *cfg = n->cfg;
    imgw_buf_t q = {0}, b = {0};
    char meta[640];
    const char *method, *path;

    imgw_nacos_instance_metadata(in, meta, sizeof(meta));
    imgw_nacos_common_params(&q, in);
    if (kind == IMGW_NACOS_REGISTER) {
        method = "POST";
        path = "/nacos/v1/ns/instance";
        imgw_buf_str(&q, "&healthy=true&enabled=true&weight=1"
                              "&metadata=");
        imgw_nacos_sb_enc(&q, meta);
    } else if (kind == IMGW_NACOS_BEAT) {
        /* serviceName inside the beat is the grouped name, as the Java
         * client's BeatInfo carries it. */
        char svc[300], ip[140], beat[1400];
        char grouped[260];
        snprintf(grouped, sizeof(grouped), "%s@@%s", cfg->nacos_group,
                 cfg->nacos_service);
        imgw_nacos_json_str(svc, sizeof(svc), grouped);
        imgw_nacos_json_str(ip, sizeof(ip), cfg->nacos_ip);
        snprintf(beat, sizeof(beat),
                 "{\"serviceName\":%s,\"ip\":%s,\"port\":%u,"
                 "\"cluster\":\"DEFAULT\",\"weight\":1,\"scheduled\":true,"
                 "\"metadata\":%s}",
                 svc, ip, (unsigned)in->port, meta);
        method = "PUT";
        path = "/nacos/v1/ns/instance/beat";
        imgw_buf_str(&q, "&beat=");
        imgw_nacos_sb_enc(&q, beat);
    } else {
        method = "DELETE";
        path = "/nacos/v1/ns/instance";
    }

    imgw_buf_fmt(&b, "%s %s", method, path);
    if (kind != IMGW_NACOS_REGISTER && !q.err) {
        imgw_buf_str(&b, "?");
        imgw_buf_add(&b, q.p, q.len);
    }
    imgw_buf_str(&b, " HTTP/1.1\r\nHost: ");
    imgw_buf_str(&b, n->hostport);
    imgw_buf_str(&b, "\r\nUser-Agent: imgw/" IMGW_VERSION
                          "\r\nAccept: */*\r\nConnection: close\r\n");
    if (kind == IMGW_NACOS_REGISTER) {
        imgw_buf_fmt(&b,
                          "Content-Type: application/x-www-form-urlencoded"
                          "\r\nContent-Length: %zu\r\n\r\n",
                          q.len);
        if (!q.err)
            imgw_buf_add(&b, q.p, q.len);
    } else {
        imgw_buf_str(&b, "Content-Length: 0\r\n\r\n");
    }
    int oom = q.err || b.err;
    imgw_free(q.p);
    if (oom) {
        imgw_free(b.p);
        return IMGW_ENOMEM;
    }
    *out = b.p;
    *len = b.len;
    return 0;
}

/* ------------------------------------------------------------------------
 * one request: connect, write, read the response, close
 */

static void
imgw_nacos_set_registered(imgw_nacos_inst_t *in, int on)
{
    if (in->registered == on)
        return;
    in->registered = on;
    atomic_fetch_add(&imgw_nacos_g.registered, on ? 1 : -1);
}

/* HTTP status from the first line, or 0 when there is none. */
static int
imgw_nacos_status(const char *in, size_t len)
{
    if (len < 12 || memcmp(in, "HTTP/1.", 7) != 0 || in[8] != ' ')
        return 0;
    int st = 0;
    for (int i = 9; i < 12; i++) {
        if (in[i] < '0' || in[i] > '9')
            return 0;
        st = st * 10 + (in[i] - '0');
    }
    return st;
}

/*
 * Applies the result of a request to its instance: counters, logs and the
 * registered flag. status is 0 when the exchange completed (then the
 * response is in req->in), else a libuv error; UV_ECANCELED means we
 * abandoned it ourselves and is neither a failure nor logged.
 */
static void
imgw_nacos_outcome(imgw_nacos_req_t *req, int status)
{
    imgw_nacos_inst_t *in = req->inst;
    const imgw_config_t *cfg = in->n->cfg;
    const char *what = imgw_nacos_kind_name[req->kind];
    int http = 0;

    if (status == UV_ECANCELED)
        return;
    req->in[req->in_len] = '\0';
    if (status == 0) {
        http = imgw_nacos_status(req->in, req->in_len);
        if (http == 0)
            status = IMGW_EPROTO;
    }
    if (status != 0) {
        atomic_fetch_add(&imgw_nacos_g.failures, 1);
        IMGW_LOG_WARN_RL("nacos: %s of %s:%u at %s failed: %s", what,
                         cfg->nacos_ip, (unsigned)in->port, in->n->hostport,
                         imgw_strerror(status));
        return;
    }

    const char *body = strstr(req->in, "\r\n\r\n");
    body = body ? body + 4 : "";
    int ok = http >= 200 && http < 300;
    if (req->kind == IMGW_NACOS_BEAT) {
        /* Nacos answers a beat for an instance it does not know (expired
         * while we could not reach it, or lost in a Nacos restart) with
         * 404 or, more often, 200 and code 20404 RESOURCE_NOT_FOUND. */
        if (http == 404 ||
            (ok && (strstr(body, "\"code\":20404") != NULL ||
                    strstr(body, "RESOURCE_NOT_FOUND") != NULL))) {
            IMGW_LOG_INFO("nacos: %s:%u is unknown to Nacos: registering "
                          "again",
                          cfg->nacos_ip, (unsigned)in->port);
            imgw_nacos_set_registered(in, 0);
            in->reregister = 1;
            return;
        }
    }
    if (!ok) {
        atomic_fetch_add(&imgw_nacos_g.failures, 1);
        /* Nacos puts the reason in a short text body; show its start. */
        IMGW_LOG_WARN_RL("nacos: %s of %s:%u answered %d: %.120s", what,
                         cfg->nacos_ip, (unsigned)in->port, http, body);
        /* Older Nacos answers 500 "service not found" once the service is
         * gone; registering is idempotent, so any refused beat re-registers
         * (at most one extra request per beat). */
        if (req->kind == IMGW_NACOS_BEAT) {
            imgw_nacos_set_registered(in, 0);
            in->reregister = 1;
        }
        return;
    }
    if (req->kind == IMGW_NACOS_REGISTER) {
        if (!in->registered)
            IMGW_LOG_INFO("nacos: registered %s:%u (%s) as %s in %s",
                          cfg->nacos_ip, (unsigned)in->port,
                          in->tls ? "wss" : "ws", cfg->nacos_service,
                          cfg->nacos_group);
        imgw_nacos_set_registered(in, 1);
    } else if (req->kind == IMGW_NACOS_BEAT) {
        atomic_fetch_add(&imgw_nacos_g.beats_ok, 1);
    } else {
        IMGW_LOG_INFO("nacos: deregistered %s:%u", cfg->nacos_ip,
                      (unsigned)in->port);
    }
}

/* Frees n once nothing can call back into it any more. */
static void
imgw_nacos_release(imgw_nacos_t *n)
{
    if (n->freeing && n->open_timers == 0 && n->live_reqs == 0 &&
        !n->gai_pending)
        imgw_free(n);
}

/* What an instance does after its request is gone. */
static void
imgw_nacos_next(imgw_nacos_inst_t *in)
{
    imgw_nacos_t *n = in->n;
    if (n->freeing)
        return;
    if (n->stopping) {
        if (in->dereg == IMGW_NACOS_DEREG_WANT)
            imgw_nacos_send(in, IMGW_NACOS_DEREGISTER);
        imgw_nacos_check_stopped(n);
        return;
    }
    int retry = in->retry;
    in->retry = 0;
    if (in->reregister)
        imgw_nacos_send(in, IMGW_NACOS_REGISTER);
    else if (retry)
        imgw_nacos_send(in, retry - 1);
}

static void
imgw_nacos_req_close_cb(uv_handle_t *h)
{
    imgw_nacos_req_t *req = h->data;
    if (--req->open_handles > 0)
        return;
    imgw_nacos_inst_t *in = req->inst;
    imgw_nacos_t *n = in->n;
    if (req->kind == IMGW_NACOS_DEREGISTER && !req->retry)
        in->dereg = IMGW_NACOS_DEREG_DONE;
    else if (req->retry && req->kind != IMGW_NACOS_DEREGISTER)
        in->retry = 1 + req->kind;
    in->req = NULL;
    n->live_reqs--;
    imgw_free(req->out);
    imgw_free(req);
    imgw_nacos_next(in);
    imgw_nacos_release(n);
}

/* Ends a request once: decides the outcome, closes both handles. */
static void
imgw_nacos_finish(imgw_nacos_req_t *req, int status)
{
    if (req->finished)
        return;
    req->finished = 1;
    imgw_nacos_outcome(req, status);
    uv_close((uv_handle_t *)&req->tcp, imgw_nacos_req_close_cb);
    uv_close((uv_handle_t *)&req->timer, imgw_nacos_req_close_cb);
}

static void
imgw_nacos_timeout_cb(uv_timer_t *t)
{
    imgw_nacos_finish(t->data, UV_ETIMEDOUT);
}

static void
imgw_nacos_alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    imgw_nacos_req_t *req = h->data;
    (void)hint;
    if (req->in_len < IMGW_NACOS_IN_CAP)
        *buf = uv_buf_init(req->in + req->in_len,
                           (unsigned)(IMGW_NACOS_IN_CAP - req->in_len));
    else
        *buf = uv_buf_init(req->sink, sizeof(req->sink));
}

/*
 * 1 when the response is complete by its Content-Length, so a server that
 * ignores "Connection: close" does not hold the request until its timeout.
 * Without the header (or once `in` is full) EOF decides.
 */
static int
imgw_nacos_complete(imgw_nacos_req_t *req)
{
    req->in[req->in_len] = '\0';
    const char *end = strstr(req->in, "\r\n\r\n");
    if (end == NULL)
        return 0;
    for (const char *p = req->in; p < end;) {
        const char *eol = strstr(p, "\r\n");
        if (strncasecmp(p, "Content-Length:", 15) == 0) {
            unsigned long cl = strtoul(p + 15, NULL, 10);
            return (size_t)(req->in + req->in_len - (end + 4)) >= cl;
        }
        p = eol + 2;
    }
    return 0;
}

static void
imgw_nacos_read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    imgw_nacos_req_t *req = s->data;
    if (nread > 0) {
        if (buf->base != req->sink) {
            req->in_len += (size_t)nread;
            if (imgw_nacos_complete(req))
                imgw_nacos_finish(req, 0);
        }
        return;
    }
    if (nread == UV_EOF)
        imgw_nacos_finish(req, 0);
    else if (nread < 0)
        imgw_nacos_finish(req, (int)nread);
}

static void
imgw_nacos_write_cb(uv_write_t *w, int status)
{
    if (status < 0)
        imgw_nacos_finish(w->data, status);
}

static void
imgw_nacos_connect_cb(uv_connect_t *c, int status)
{
    imgw_nacos_req_t *req = c->data;
    int r;
    if (status < 0) {
        imgw_nacos_t *n = req->inst->n;
        /* "localhost" gives ::1 and 127.0.0.1 while Nacos may listen on
         * one only: try the next address at once; after the last one, look
         * the name up again at the next beat (the host may have moved). */
        if (status != UV_ECANCELED && !n->numeric &&
            req->addr_idx == n->addr_idx && n->have_addr) {
            if (++n->addr_idx < n->n_addrs) {
                req->retry = 1;
            } else {
                n->addr_idx = 0;
                n->have_addr = 0;
            }
        }
        imgw_nacos_finish(req, status);
        return;
    }
    if (req->finished)
        return;
    uv_buf_t b = uv_buf_init(req->out, (unsigned)req->out_len);
    req->write.data = req;
    if ((r = uv_write(&req->write, (uv_stream_t *)&req->tcp, &b, 1,
                      imgw_nacos_write_cb)) != 0 ||
        (r = uv_read_start((uv_stream_t *)&req->tcp, imgw_nacos_alloc_cb,
                           imgw_nacos_read_cb)) != 0)
        imgw_nacos_finish(req, r);
}

/*
 * Starts one request of `kind` for an instance that has none in flight.
 * Failures before anything is on the wire count as failures and leave the
 * instance idle (the next beat retries); during stop they mark the
 * deregistration done.
 */
static void
imgw_nacos_send(imgw_nacos_inst_t *in, int kind)
{
    imgw_nacos_t *n = in->n;
    imgw_nacos_req_t *req;
    int r;

    if (in->req != NULL)
        return;
    if (kind == IMGW_NACOS_REGISTER)
        in->reregister = 0;
    if (!n->have_addr) {
        if (kind == IMGW_NACOS_DEREGISTER)
            in->dereg = IMGW_NACOS_DEREG_DONE;
        return;
    }
    req = imgw_try_calloc(1, sizeof(*req));
    if (req == NULL) {
        r = IMGW_ENOMEM;
        goto fail;
    }
    if ((r = imgw_nacos_build(in, kind, &req->out, &req->out_len)) != 0) {
        imgw_free(req);
        goto fail;
    }
    req->inst = in;
    req->kind = kind;
    req->addr_idx = n->addr_idx;
    uv_tcp_init(n->loop, &req->tcp);
    uv_timer_init(n->loop, &req->timer);
    req->tcp.data = req->timer.data = req->connect.data = req;
    req->open_handles = 2;
    in->req = req;
    n->live_reqs++;
    atomic_fetch_add(&imgw_nacos_g.requests, 1);
    uv_timer_start(&req->timer, imgw_nacos_timeout_cb,
                   kind == IMGW_NACOS_DEREGISTER ? IMGW_NACOS_STOP_MS
                                                 : n->req_timeout_ms,
                   0);
    r = uv_tcp_connect(&req->connect, &req->tcp,
                       (const struct sockaddr *)&n->addrs[n->addr_idx],
                       imgw_nacos_connect_cb);
    if (r != 0)
        imgw_nacos_finish(req, r); /* close callbacks free it */
    return;

fail:
    atomic_fetch_add(&imgw_nacos_g.failures, 1);
    IMGW_LOG_WARN_RL("nacos: %s of port %u not sent: %s",
                     imgw_nacos_kind_name[kind], (unsigned)in->port,
                     imgw_strerror(r));
    if (kind == IMGW_NACOS_DEREGISTER)
        in->dereg = IMGW_NACOS_DEREG_DONE;
}

/* ------------------------------------------------------------------------
 * address, beats, stop
 */

static void imgw_nacos_resolve(imgw_nacos_t *n);

/* One round: register what is not registered, beat the rest. */
static void
imgw_nacos_round(imgw_nacos_t *n)
{
    if (n->stopping || n->freeing)
        return;
    if (!n->have_addr) {
        imgw_nacos_resolve(n); /* the round runs again once resolved */
        return;
    }
    for (int i = 0; i < n->n_inst; i++) {
        imgw_nacos_inst_t *in = &n->inst[i];
        if (in->req != NULL)
            continue; /* a slow Nacos: skip this beat, the timer bounds it */
        imgw_nacos_send(in,
                        in->registered ? IMGW_NACOS_BEAT : IMGW_NACOS_REGISTER);
    }
}

static void
imgw_nacos_beat_cb(uv_timer_t *t)
{
    imgw_nacos_round(t->data);
}

static void
imgw_nacos_gai_cb(uv_getaddrinfo_t *g, int status, struct addrinfo *res)
{
    imgw_nacos_t *n = g->data;
    n->gai_pending = 0;
    if (status == 0 && res != NULL && !n->freeing) {
        n->n_addrs = 0;
        for (struct addrinfo *a = res;
             a != NULL && n->n_addrs < IMGW_NACOS_MAX_ADDRS; a = a->ai_next) {
            struct sockaddr_storage *ss = &n->addrs[n->n_addrs];
            if (a->ai_family == AF_INET6) {
                memcpy(ss, a->ai_addr, sizeof(struct sockaddr_in6));
                ((struct sockaddr_in6 *)ss)->sin6_port = htons(n->port);
            } else if (a->ai_family == AF_INET) {
                memcpy(ss, a->ai_addr, sizeof(struct sockaddr_in));
                ((struct sockaddr_in *)ss)->sin_port = htons(n->port);
            } else {
                continue;
            }
            n->n_addrs++;
        }
        n->addr_idx = 0;
        n->have_addr = n->n_addrs > 0;
        if (n->have_addr)
            imgw_nacos_round(n);
    } else if (status != 0 && status != UV_ECANCELED &&
               status != UV_EAI_CANCELED) {
        atomic_fetch_add(&imgw_nacos_g.failures, 1);
        IMGW_LOG_WARN_RL("nacos: cannot resolve %s: %s", n->host,
                         uv_strerror(status));
    }
    if (res != NULL)
        uv_freeaddrinfo(res);
    imgw_nacos_release(n);
}

/* Looks nacos.server's host up without blocking the loop. */
static void
imgw_nacos_resolve(imgw_nacos_t *n)
{
    struct addrinfo hints;
    if (n->gai_pending || n->numeric)
        return;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    n->gai.data = n;
    int r = uv_getaddrinfo(n->loop, &n->gai, imgw_nacos_gai_cb, n->host, NULL,
                           &hints);
    if (r == 0) {
        n->gai_pending = 1;
    } else {
        atomic_fetch_add(&imgw_nacos_g.failures, 1);
        IMGW_LOG_WARN_RL("nacos: cannot resolve %s: %s", n->host,
                         uv_strerror(r));
    }
}

static void
imgw_nacos_fire_done(imgw_nacos_t *n)
{
    void (*done)(void *) = n->done;
    n->done = NULL;
    uv_timer_stop(&n->stop_timer);
    if (done)
        done(n->done_arg);
}

/* Calls done once every instance's DELETE is over and nothing is open. */
static void
imgw_nacos_check_stopped(imgw_nacos_t *n)
{
    if (!n->stopping || n->freeing || n->done == NULL)
        return;
    if (n->live_reqs > 0)
        return;
    for (int i = 0; i < n->n_inst; i++)
        if (n->inst[i].dereg == IMGW_NACOS_DEREG_WANT)
            return;
    imgw_nacos_fire_done(n);
}

static void
imgw_nacos_stop_timer_cb(uv_timer_t *t)
{
    imgw_nacos_t *n = t->data;
    n->stop_expired = 1;
    IMGW_LOG_WARN("nacos: deregistration did not finish in %d ms; going on",
                  IMGW_NACOS_STOP_MS);
    for (int i = 0; i < n->n_inst; i++) {
        n->inst[i].dereg = IMGW_NACOS_DEREG_DONE;
        if (n->inst[i].req != NULL)
            imgw_nacos_finish(n->inst[i].req, UV_ECANCELED);
    }
    /* The close callbacks still touch n, but not the caller's state: let
     * the caller go on now rather than one loop turn later. */
    imgw_nacos_fire_done(n);
}

void
imgw_nacos_stop(imgw_nacos_t *n, void (*done)(void *), void *arg)
{
    if (n == NULL || n->stopping || n->freeing)
        return;
    n->stopping = 1;
    n->done = done;
    n->done_arg = arg;
    uv_timer_stop(&n->beat_timer);
    uv_timer_start(&n->stop_timer, imgw_nacos_stop_timer_cb, IMGW_NACOS_STOP_MS,
                   0);
    if (n->gai_pending)
        uv_cancel((uv_req_t *)&n->gai);
    for (int i = 0; i < n->n_inst; i++) {
        imgw_nacos_inst_t *in = &n->inst[i];
        /* Deregister every port, registered or not: a register still in
         * flight may have reached Nacos, and deleting an unknown instance
         * is harmless. */
        in->dereg = IMGW_NACOS_DEREG_WANT;
        if (in->req != NULL)
            imgw_nacos_finish(in->req, UV_ECANCELED); /* then DELETE */
        else
            imgw_nacos_send(in, IMGW_NACOS_DEREGISTER);
    }
    imgw_nacos_check_stopped(n);
}

static void
imgw_nacos_timer_close_cb(uv_handle_t *h)
{
    imgw_nacos_t *n = h->data;
    n->open_timers--;
    imgw_nacos_release(n);
}

void
imgw_nacos_free(imgw_nacos_t *n)
{
    if (n == NULL || n->freeing)
        return;
    n->freeing = 1;
    n->done = NULL;
    for (int i = 0; i < n->n_inst; i++) {
        imgw_nacos_set_registered(&n->inst[i], 0);
        if (n->inst[i].req != NULL)
            imgw_nacos_finish(n->inst[i].req, UV_ECANCELED);
    }
    if (n->gai_pending)
        uv_cancel((uv_req_t *)&n->gai);
    uv_close((uv_handle_t *)&n->beat_timer, imgw_nacos_timer_close_cb);
    uv_close((uv_handle_t *)&n->stop_timer, imgw_nacos_timer_close_cb);
}

/* ------------------------------------------------------------------------
 * start
 */

/*
 * Splits "host:port" or "[v6]:port" into n->host / n->port. Returns 0 or
 * -1 with err naming nacos.server.
 */
static int
imgw_nacos_parse_server(imgw_nacos_t *n, const char *s, char *err,
                        size_t errlen)
{
    const char *host = s, *colon;
    size_t hlen;

    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (end == NULL || end[1] != ':')
            goto bad;
        host = s + 1;
        hlen = (size_t)(end - host);
        colon = end + 1;
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL || memchr(s, ':', (size_t)(colon - s)) != NULL)
            goto bad; /* no port, or an unbracketed IPv6 address */
        hlen = (size_t)(colon - s);
    }
    if (hlen == 0 || hlen >= sizeof(n->host))
        goto bad;
    for (size_t i = 0; i < hlen; i++) {
        unsigned char c = (unsigned char)host[i];
        if (c <= ' ' || c == '/' || c == '@' || c == '?' || c == '#' ||
            c >= 0x7f)
            goto bad;
    }
    long port = 0;
    const char *p = colon + 1;
    if (*p == '\0')
        goto bad;
    for (; *p; p++) {
        if (*p < '0' || *p > '9' || port > 65535)
            goto bad;
        port = port * 10 + (*p - '0');
    }
    if (port < 1 || port > 65535)
        goto bad;
    memcpy(n->host, host, hlen);
    n->host[hlen] = '\0';
    n->port = (uint16_t)port;
    snprintf(n->hostport, sizeof(n->hostport), "%s", s);
    return 0;

bad:
    snprintf(err, errlen,
             "nacos.server: '%s' is not host:port (e.g. 127.0.0.1:8848)", s);
    return -1;
}

int
imgw_nacos_start(imgw_nacos_t **out, uv_loop_t *loop, const imgw_config_t *cfg,
                 char *err, size_t errlen)
{
    imgw_nacos_t *n = imgw_try_calloc(1, sizeof(*n));
    char bid[300];

    *out = NULL;
    if (n == NULL) {
        snprintf(err, errlen, "nacos: out of memory");
        return IMGW_ENOMEM;
    }
    n->loop = loop;
    n->cfg = cfg;
    if (imgw_nacos_parse_server(n, cfg->nacos_server, err, errlen) != 0) {
        imgw_free(n);
        return IMGW_ECONFIG;
    }
    if (uv_ip4_addr(n->host, n->port, (struct sockaddr_in *)&n->addrs[0]) ==
            0 ||
        uv_ip6_addr(n->host, n->port, (struct sockaddr_in6 *)&n->addrs[0]) ==
            0) {
        n->numeric = 1;
        n->n_addrs = 1;
        n->have_addr = 1;
    }
    for (int i = 0; i < cfg->n_ports; i++)
        n->inst[n->n_inst++] =
            (imgw_nacos_inst_t){.n = n, .port = cfg->ports[i], .tls = 0};
    for (int i = 0; i < cfg->n_tls_ports; i++)
        n->inst[n->n_inst++] =
            (imgw_nacos_inst_t){.n = n, .port = cfg->tls_ports[i], .tls = 1};
    /* The metadata object without its closing brace: each instance appends
     * its protocol (see imgw_nacos_instance_metadata). */
    imgw_nacos_json_str(bid, sizeof(bid), cfg->broker_id);
    snprintf(n->metadata, sizeof(n->metadata),
             "{\"broker_id\":%s,\"version\":\"%s\"", bid, IMGW_VERSION);

    /* A request may take up to one beat interval, within [1 s, 5 s]: a
     * slower one would only delay the next beat. */
    n->req_timeout_ms = (uint64_t)cfg->nacos_beat_interval * 1000;
    if (n->req_timeout_ms > IMGW_NACOS_REQ_MAX_MS)
        n->req_timeout_ms = IMGW_NACOS_REQ_MAX_MS;
    if (n->req_timeout_ms < 1000)
        n->req_timeout_ms = 1000;

    uv_timer_init(loop, &n->beat_timer);
    uv_timer_init(loop, &n->stop_timer);
    n->beat_timer.data = n->stop_timer.data = n;
    n->open_timers = 2;
    /* Timeout 0: the first round (register every port) runs on the first
     * loop turn, then every beat_interval. */
    uv_timer_start(&n->beat_timer, imgw_nacos_beat_cb, 0,
                   (uint64_t)cfg->nacos_beat_interval * 1000);
    if (!n->numeric)
        imgw_nacos_resolve(n);
    IMGW_LOG_INFO("nacos: registering %d port(s) on %s (broker %s) as "
                  "service %s (group %s, namespace %s) at %s, beat every %d s",
                  n->n_inst, cfg->nacos_ip, cfg->broker_id, cfg->nacos_service,
                  cfg->nacos_group,
                  cfg->nacos_namespace[0] ? cfg->nacos_namespace : "public",
                  n->hostport, cfg->nacos_beat_interval);
    *out = n;
    return 0;
}

void
imgw_nacos_stats(const imgw_nacos_t *n, imgw_nacos_stats_t *out)
{
    (void)n;
    out->registered = atomic_load(&imgw_nacos_g.registered);
    out->requests = atomic_load(&imgw_nacos_g.requests);
    out->beats_ok = atomic_load(&imgw_nacos_g.beats_ok);
    out->failures = atomic_load(&imgw_nacos_g.failures);
}
