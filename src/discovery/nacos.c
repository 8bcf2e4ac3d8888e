/*
 * nacos.c: service registration with Nacos over its HTTP open API v1 (see
 * nacos.h). Runs on the main thread's libuv loop only; the one exception is
 * imgw_nacos_stats(), which reads process-wide atomics from any thread.
 *
 * Each registered port is an "instance" with at most one HTTP request in
 * flight, sent with the shared HTTP client (net/httpc.h: libcurl on this
 * loop; it resolves names without blocking and tries every address of a
 * name). The client bounds each request with a timeout, and whatever goes
 * wrong is counted, logged at a bounded rate and retried at the next beat.
 * Nothing here ever stops the gateway. Requests say "Connection: close": a
 * beat every few seconds per port does not need a kept-alive connection,
 * and Nacos behind a proxy then sees no idle sockets from us.
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
#include "httpc.h"
#include "log.h"
#include "nacos.h"

#define IMGW_NACOS_STOP_MS 2000    /* deregistration budget on shutdown */
#define IMGW_NACOS_REQ_MAX_MS 5000 /* upper bound for one request */
#define IMGW_NACOS_IN_CAP 2048     /* response body bytes we look at */

enum { IMGW_NACOS_REGISTER = 0, IMGW_NACOS_BEAT, IMGW_NACOS_DEREGISTER };

static const char *const imgw_nacos_kind_name[] = {"register", "beat",
                                                   "deregister"};

/* Deregistration state of one instance during imgw_nacos_stop(). */
enum {
    IMGW_NACOS_DEREG_NONE = 0, /* not stopping */
    IMGW_NACOS_DEREG_WANT,     /* DELETE to send once no request is in flight */
    IMGW_NACOS_DEREG_DONE      /* DELETE finished, failed or given up */
};

/* One registered port. Owned by imgw_nacos_t (array). */
typedef struct imgw_nacos_inst_s {
    imgw_nacos_t *n;
    uint16_t port;
    int tls;                /* 1 = wss (tls.ports) */
    int registered;         /* last register answered 2xx, no 404 since */
    int reregister;         /* a beat said "unknown": register right away */
    int dereg;              /* IMGW_NACOS_DEREG_* */
    int kind;               /* of the request in flight */
    imgw_httpc_req_t *req;  /* request in flight, or NULL */
} imgw_nacos_inst_t;

struct imgw_nacos_s {
    uv_loop_t *loop;
    const imgw_config_t *cfg;
    imgw_httpc_t *http;
    char host[256];     /* without brackets; for logs */
    char hostport[264]; /* nacos.server as given: the URL's authority */
    uint16_t port;
    uv_timer_t beat_timer;
    uv_timer_t stop_timer;
    int open_timers; /* 2 after start; see imgw_nacos_release() */
    uint64_t req_timeout_ms;
    char metadata[512]; /* JSON object, not encoded */
    imgw_nacos_inst_t inst[2 * IMGW_CONFIG_MAX_PORTS];
    int n_inst;
    int stopping;
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
 * Builds the URL (with the query string for PUT and DELETE) and, for
 * register, the form body, both malloc'd. Returns 0 or IMGW_ENOMEM.
 */
static int
imgw_nacos_build(imgw_nacos_inst_t *in, int kind, char **url, char **body,
                 size_t *body_len)
{
    imgw_nacos_t *n = in->n;
    const imgw_config_t *cfg = n->cfg;
    imgw_buf_t q = {0}, b = {0};
    char meta[640];
    const char *path;

    imgw_nacos_instance_metadata(in, meta, sizeof(meta));
    imgw_nacos_common_params(&q, in);
    if (kind == IMGW_NACOS_REGISTER) {
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
        path = "/nacos/v1/ns/instance/beat";
        imgw_buf_str(&q, "&beat=");
        imgw_nacos_sb_enc(&q, beat);
    } else {
        path = "/nacos/v1/ns/instance";
    }

    imgw_buf_str(&b, "http://");
    imgw_buf_str(&b, n->hostport);
    imgw_buf_str(&b, path);
    if (kind != IMGW_NACOS_REGISTER && !q.err) {
        imgw_buf_str(&b, "?");
        imgw_buf_add(&b, q.p, q.len);
    }
    int oom = q.err || b.err;
    if (oom) {
        imgw_free(q.p);
        imgw_free(b.p);
        return IMGW_ENOMEM;
    }
    *url = b.p;
    if (kind == IMGW_NACOS_REGISTER) {
        *body = q.p;
        *body_len = q.len;
    } else {
        imgw_free(q.p);
        *body = NULL;
        *body_len = 0;
    }
    return 0;
}

/* ------------------------------------------------------------------------
 * one request and its outcome
 */

static void
imgw_nacos_set_registered(imgw_nacos_inst_t *in, int on)
{
    if (in->registered == on)
        return;
    in->registered = on;
    atomic_fetch_add(&imgw_nacos_g.registered, on ? 1 : -1);
}

/*
 * Applies the result of a request to its instance: counters, logs and the
 * registered flag.
 */
static void
imgw_nacos_outcome(imgw_nacos_inst_t *in, int kind,
                   const imgw_httpc_resp_t *resp)
{
    const imgw_config_t *cfg = in->n->cfg;
    const char *what = imgw_nacos_kind_name[kind];
    long http = resp->http;
    /* A body larger than we keep still tells the status. */
    if (resp->status != 0 && resp->status != IMGW_ETOOBIG) {
        atomic_fetch_add(&imgw_nacos_g.failures, 1);
        IMGW_LOG_WARN_RL("nacos: %s of %s:%u at %s failed: %s (%s)", what,
                         cfg->nacos_ip, (unsigned)in->port, in->n->hostport,
                         imgw_strerror(resp->status), resp->error);
        return;
    }
    const char *body = resp->body;
    int ok = http >= 200 && http < 300;
    if (kind == IMGW_NACOS_BEAT) {
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
        IMGW_LOG_WARN_RL("nacos: %s of %s:%u answered %ld: %.120s", what,
                         cfg->nacos_ip, (unsigned)in->port, http, body);
        /* Older Nacos answers 500 "service not found" once the service is
         * gone; registering is idempotent, so any refused beat re-registers
         * (at most one extra request per beat). */
        if (kind == IMGW_NACOS_BEAT) {
            imgw_nacos_set_registered(in, 0);
            in->reregister = 1;
        }
        return;
    }
    if (kind == IMGW_NACOS_REGISTER) {
        if (!in->registered)
            IMGW_LOG_INFO("nacos: registered %s:%u (%s) as %s in %s",
                          cfg->nacos_ip, (unsigned)in->port,
                          in->tls ? "wss" : "ws", cfg->nacos_service,
                          cfg->nacos_group);
        imgw_nacos_set_registered(in, 1);
    } else if (kind == IMGW_NACOS_BEAT) {
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
    if (n->freeing && n->open_timers == 0)
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
    if (in->reregister)
        imgw_nacos_send(in, IMGW_NACOS_REGISTER);
}

static void
imgw_nacos_resp_cb(const imgw_httpc_resp_t *resp, void *arg)
{
    imgw_nacos_inst_t *in = arg;
    int kind = in->kind;
    in->req = NULL;
    imgw_nacos_outcome(in, kind, resp);
    if (kind == IMGW_NACOS_DEREGISTER)
        in->dereg = IMGW_NACOS_DEREG_DONE;
    imgw_nacos_next(in);
}

/* Abandons the instance's request in flight, if any (no outcome). */
static void
imgw_nacos_abandon(imgw_nacos_inst_t *in)
{
    if (in->req == NULL)
        return;
    imgw_httpc_cancel(in->n->http, in->req);
    in->req = NULL;
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
    char *url = NULL, *body = NULL;
    size_t body_len = 0;
    int r;

    if (in->req != NULL)
        return;
    if (kind == IMGW_NACOS_REGISTER)
        in->reregister = 0;
    if ((r = imgw_nacos_build(in, kind, &url, &body, &body_len)) != 0)
        goto fail;
    static const char *const hdrs[] = {"Accept: */*", "Connection: close"};
    imgw_httpc_opts_t o = {
        .method = kind == IMGW_NACOS_REGISTER ? "POST"
                  : kind == IMGW_NACOS_BEAT   ? "PUT"
                                              : "DELETE",
        .url = url,
        .content_type = kind == IMGW_NACOS_REGISTER
                            ? "application/x-www-form-urlencoded"
                            : NULL,
        .body = body,
        .body_len = body_len,
        .headers = hdrs,
        .n_headers = 2,
        .timeout_ms = kind == IMGW_NACOS_DEREGISTER ? IMGW_NACOS_STOP_MS
                                                    : n->req_timeout_ms,
        .max_response = IMGW_NACOS_IN_CAP,
    };
    in->kind = kind;
    r = imgw_httpc_request(n->http, &o, imgw_nacos_resp_cb, in, &in->req);
    imgw_free(url);
    imgw_free(body);
    if (r != 0)
        goto fail;
    atomic_fetch_add(&imgw_nacos_g.requests, 1);
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
 * beats, stop
 */

/* One round: register what is not registered, beat the rest. */
static void
imgw_nacos_round(imgw_nacos_t *n)
{
    if (n->stopping || n->freeing)
        return;
    for (int i = 0; i < n->n_inst; i++) {
        imgw_nacos_inst_t *in = &n->inst[i];
        if (in->req != NULL)
            continue; /* a slow Nacos: skip this beat, the timeout bounds it */
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
imgw_nacos_fire_done(imgw_nacos_t *n)
{
    void (*done)(void *) = n->done;
    n->done = NULL;
    uv_timer_stop(&n->stop_timer);
    if (done)
        done(n->done_arg);
}

/* Calls done once every instance's DELETE is over. */
static void
imgw_nacos_check_stopped(imgw_nacos_t *n)
{
    if (!n->stopping || n->freeing || n->done == NULL)
        return;
    for (int i = 0; i < n->n_inst; i++)
        if (n->inst[i].dereg == IMGW_NACOS_DEREG_WANT || n->inst[i].req)
            return;
    imgw_nacos_fire_done(n);
}

static void
imgw_nacos_stop_timer_cb(uv_timer_t *t)
{
    imgw_nacos_t *n = t->data;
    IMGW_LOG_WARN("nacos: deregistration did not finish in %d ms; going on",
                  IMGW_NACOS_STOP_MS);
    for (int i = 0; i < n->n_inst; i++) {
        n->inst[i].dereg = IMGW_NACOS_DEREG_DONE;
        imgw_nacos_abandon(&n->inst[i]);
    }
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
    for (int i = 0; i < n->n_inst; i++) {
        imgw_nacos_inst_t *in = &n->inst[i];
        /* Deregister every port, registered or not: a register still in
         * flight may have reached Nacos, and deleting an unknown instance
         * is harmless. */
        in->dereg = IMGW_NACOS_DEREG_WANT;
        imgw_nacos_abandon(in);
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
        imgw_nacos_abandon(&n->inst[i]);
    }
    imgw_httpc_free(n->http);
    n->http = NULL;
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
    if (imgw_httpc_new(&n->http, loop) != 0) {
        imgw_free(n);
        snprintf(err, errlen, "nacos: out of memory");
        return IMGW_ENOMEM;
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
