/*
 * http.c: HTTP/1.1 request heads with llhttp, the RFC 6455 upgrade checks,
 * keep-alive for plain requests, and response writing.
 *
 * Thread: the owning loop only.
 *
 * Received head bytes are copied into the connection's head buffer before
 * llhttp sees them, so every span llhttp reports (URL, header names and
 * values) points into that one buffer and stays contiguous across reads.
 * The buffer is IMGW_HTTP_MAX_HEAD bytes: a head that does not fit is a
 * 431. After a complete request the parser pauses; the handler answers;
 * what remains (a pipelined request) moves to the front and parsing
 * resumes. An upgrade hands the connection, and what follows the head, to
 * the WebSocket handler through conn.c (imgw__conn_set_proto): this file
 * names no other handler and never loop.c. It computes the upgrade's
 * Sec-WebSocket-Accept itself (SHA-1 and base64 from mbedtls): that is
 * part of the HTTP handshake, not of WebSocket framing.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <llhttp.h>
#include <mbedtls/base64.h>
#include <mbedtls/sha1.h>

#include "alloc.h"
#include "err.h"
#include "log.h"
#include "net_int.h"

typedef struct imgw_http_s {
    llhttp_t parser;
    size_t len;       /* bytes in buf */
    size_t parsed;    /* bytes of buf llhttp has consumed */
    int headers_done;
    int message_done;
    int upgrade;      /* request carries an Upgrade header */
    int in_field;     /* inside a header name */
    size_t n_headers;
    int too_many_headers;
    imgw_span_t url;
    imgw_span_t names[IMGW_HTTP_MAX_HEADERS];
    imgw_span_t values[IMGW_HTTP_MAX_HEADERS];
    uint8_t *body;
    size_t body_len;
    size_t body_cap;
    size_t body_limit;
    int body_too_big;
    int close_after;  /* the request being answered ends the connection
                         (Connection: close, HTTP/1.0): every response to
                         it, now or from an async handler, closes */
    char buf[IMGW_HTTP_MAX_HEAD];
} imgw_http_t;

static llhttp_settings_t settings;
static uv_once_t settings_once = UV_ONCE_INIT;

static imgw_http_t *
http_of(llhttp_t *p)
{
    return (imgw_http_t *)p->data;
}

/* A span continues when llhttp delivers a field or value in pieces: the
 * pieces are adjacent in buf because buf receives bytes in order. */
static void
span_extend(imgw_span_t *s, const char *at, size_t len)
{
    if (s->p == NULL)
        s->p = at;
    s->len = (size_t)(at + len - s->p);
}

static int
on_message_begin(llhttp_t *p)
{
    imgw_http_t *h = http_of(p);
    h->n_headers = 0;
    h->too_many_headers = 0;
    h->url.p = NULL;
    h->url.len = 0;
    h->headers_done = 0;
    h->message_done = 0;
    h->upgrade = 0;
    h->in_field = 0;
    h->body_len = 0;
    h->body_too_big = 0;
    return 0;
}

static int
on_url(llhttp_t *p, const char *at, size_t len)
{
    span_extend(&http_of(p)->url, at, len);
    return 0;
}

/*
 * Trailer fields of a chunked body arrive after on_headers_complete, while
 * the body is parsed straight from the read buffer (direct mode): their
 * bytes are not in buf, so they may not become spans (a field split across
 * two reads would span from one read into the next). They are ignored.
 */
static int
on_header_field(llhttp_t *p, const char *at, size_t len)
{
    imgw_http_t *h = http_of(p);
    if (h->headers_done)
        return 0; /* a trailer */
    if (!h->in_field) {
        /* A new header name starts. */
        h->in_field = 1;
        if (h->n_headers == IMGW_HTTP_MAX_HEADERS) {
            h->too_many_headers = 1;
            return 0;
        }
        h->n_headers++;
        h->names[h->n_headers - 1] = (imgw_span_t){NULL, 0};
        h->values[h->n_headers - 1] = (imgw_span_t){NULL, 0};
    }
    if (!h->too_many_headers)
        span_extend(&h->names[h->n_headers - 1], at, len);
    return 0;
}

static int
on_header_field_complete(llhttp_t *p)
{
    http_of(p)->in_field = 0;
    return 0;
}

static int
on_header_value(llhttp_t *p, const char *at, size_t len)
{
    imgw_http_t *h = http_of(p);
    if (h->too_many_headers || h->n_headers == 0 || h->headers_done)
        return 0;
    span_extend(&h->values[h->n_headers - 1], at, len);
    return 0;
}

static int
on_header_value_complete(llhttp_t *p)
{
    imgw_http_t *h = http_of(p);
    /* An empty value produces no on_header_value call. */
    if (!h->too_many_headers && h->n_headers > 0 && !h->headers_done &&
        h->values[h->n_headers - 1].p == NULL)
        h->values[h->n_headers - 1].p = "";
    return 0;
}

static int
on_headers_complete(llhttp_t *p)
{
    imgw_http_t *h = http_of(p);
    h->headers_done = 1;
    if (h->too_many_headers)
        return -1;
    for (size_t i = 0; i < h->n_headers; i++) {
        if (h->names[i].len == 7 &&
            strncasecmp(h->names[i].p, "upgrade", 7) == 0) {
            h->upgrade = 1;
            /* Treat it as an upgrade: no body, pause with the rest of the
             * bytes left for the WebSocket layer. */
            return 2;
        }
    }
    return 0;
}

static int
on_body(llhttp_t *p, const char *at, size_t len)
{
    imgw_http_t *h = http_of(p);
    if (h->body_too_big)
        return 0;
    if (h->body_len + len > h->body_limit) {
        h->body_too_big = 1;
        return 0;
    }
    if (h->body_len + len > h->body_cap) {
        size_t cap = h->body_cap ? h->body_cap : 1024;
        while (cap < h->body_len + len)
            cap *= 2;
        uint8_t *nb = imgw_try_realloc(h->body, cap);
        if (nb == NULL) {
            h->body_too_big = 1;
            return 0;
        }
        h->body = nb;
        h->body_cap = cap;
    }
    memcpy(h->body + h->body_len, at, len);
    h->body_len += len;
    return 0;
}

static int
on_message_complete(llhttp_t *p)
{
    imgw_http_t *h = http_of(p);
    h->message_done = 1;
    /* An upgrade stops with HPE_PAUSED_UPGRADE on its own. */
    return h->upgrade ? 0 : HPE_PAUSED;
}

static void
settings_init(void)
{
    llhttp_settings_init(&settings);
    settings.on_message_begin = on_message_begin;
    settings.on_url = on_url;
    settings.on_header_field = on_header_field;
    settings.on_header_field_complete = on_header_field_complete;
    settings.on_header_value = on_header_value;
    settings.on_header_value_complete = on_header_value_complete;
    settings.on_headers_complete = on_headers_complete;
    settings.on_body = on_body;
    settings.on_message_complete = on_message_complete;
}

static imgw_http_t *
http_get(imgw_conn_t *c)
{
    if (c->http == NULL) {
        uv_once(&settings_once, settings_init);
        imgw_http_t *h = imgw_try_malloc(sizeof(*h));
        if (h == NULL)
            return NULL;
        memset(h, 0, offsetof(imgw_http_t, buf));
        llhttp_init(&h->parser, HTTP_REQUEST, &settings);
        h->parser.data = h;
        h->body_limit = c->loop->net->opts.max_body_bytes;
        c->http = h;
    }
    return c->http;
}

static void
http_free(imgw_conn_t *c)
{
    /* c->http shares its word with the WebSocket handler's c->rx. */
    if (c->proto == IMGW_PROTO_HTTP && c->http) {
        imgw_free(c->http->body);
        imgw_free(c->http);
        c->http = NULL;
    }
}

/* ---- responses ------------------------------------------------------- */

static const char *
status_text(int status)
{
    switch (status) {
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 413: return "Payload Too Large";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Unknown";
    }
}

void
imgw_conn_http_respond(imgw_conn_t *c, int status, const char *ctype,
                       const char *extra_headers, const void *body,
                       size_t body_len, int keep_alive)
{
    char head[1024];
    if (c->state == IMGW_CONN_CLOSED)
        return;
    if (c->proto == IMGW_PROTO_HTTP && c->http != NULL &&
        c->http->close_after)
        keep_alive = 0;
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\n"
                     "Content-Type: %s\r\n"
                     "Content-Length: %zu\r\n"
                     "%s%s\r\n",
                     status, status_text(status),
                     ctype ? ctype : "text/plain; charset=utf-8", body_len,
                     keep_alive ? "" : "Connection: close\r\n",
                     extra_headers ? extra_headers : "");
    if (n < 0 || (size_t)n >= sizeof(head)) {
        imgw__conn_close_now(c);
        return;
    }
    /* Pipelined requests from a client that never reads must not pile up
     * responses without bound (one large response alone is fine). */
    if (c->queued > 0 &&
        c->queued + (size_t)n + body_len > c->loop->net->opts.max_queued_bytes) {
        imgw_stat_inc(&c->loop->st.slow_consumers);
        imgw__conn_close_now(c);
        return;
    }
    uv_buf_t bufs[2] = {uv_buf_init(head, (unsigned)n),
                        uv_buf_init((char *)body, (unsigned)body_len)};
    if (imgw__conn_write_raw(c, bufs, body_len ? 2 : 1, 0) < 0) {
        imgw__conn_close_now(c);
        return;
    }
    if (!keep_alive) {
        c->flags |= IMGW_CF_CLOSE_AFTER;
        c->state = IMGW_CONN_CLOSING;
    }
    if (c->flags & IMGW_CF_READ_PAUSED) {
        /* An async handler answered: go on with what was pipelined. */
        c->flags &= ~IMGW_CF_READ_PAUSED;
        if (keep_alive)
            imgw__http_resume(c);
    }
}

static void
respond_error(imgw_conn_t *c, int status)
{
    const char *txt = status_text(status);
    imgw_conn_http_respond(c, status, NULL,
                           status == 426 ? "Sec-WebSocket-Version: 13\r\n"
                                         : NULL,
                           txt, strlen(txt), 0);
}

/* ---- request helpers exposed to core --------------------------------- */

const imgw_span_t *
imgw_http_header(const imgw_http_req_t *req, const char *name)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i < req->n_headers; i++)
        if (req->names[i].len == nl &&
            strncasecmp(req->names[i].p, name, nl) == 0)
            return &req->values[i];
    return NULL;
}

static int
hexval(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    ch = tolower(ch);
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    return -1;
}

static int
copy_decoded(const char *p, size_t len, char *out, size_t outlen)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        int ch = (unsigned char)p[i];
        if (ch == '%' && i + 2 < len) {
            int a = hexval((unsigned char)p[i + 1]);
            int b = hexval((unsigned char)p[i + 2]);
            if (a >= 0 && b >= 0) {
                ch = a * 16 + b;
                i += 2;
            }
        } else if (ch == '+') {
            ch = ' ';
        }
        if (o + 1 >= outlen)
            return -2;
        out[o++] = (char)ch;
    }
    out[o] = '\0';
    return 0;
}

int
imgw_http_query_param(const imgw_http_req_t *req, const char *name, char *out,
                      size_t outlen)
{
    size_t nl = strlen(name);
    const char *p = req->query.p, *end = req->query.p + req->query.len;
    while (p && p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *seg_end = amp ? amp : end;
        const char *eq = memchr(p, '=', (size_t)(seg_end - p));
        if (eq && (size_t)(eq - p) == nl && memcmp(p, name, nl) == 0)
            return copy_decoded(eq + 1, (size_t)(seg_end - eq - 1), out,
                                outlen);
        p = amp ? amp + 1 : end;
    }
    return -1;
}

int
imgw_http_cookie(const imgw_http_req_t *req, const char *name, char *out,
                 size_t outlen)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i < req->n_headers; i++) {
        if (req->names[i].len != 6 ||
            strncasecmp(req->names[i].p, "cookie", 6) != 0)
            continue;
        const char *p = req->values[i].p;
        const char *end = p + req->values[i].len;
        while (p < end) {
            while (p < end && (*p == ' ' || *p == ';'))
                p++;
            const char *semi = memchr(p, ';', (size_t)(end - p));
            const char *seg_end = semi ? semi : end;
            const char *eq = memchr(p, '=', (size_t)(seg_end - p));
            if (eq && (size_t)(eq - p) == nl && memcmp(p, name, nl) == 0) {
                size_t vl = (size_t)(seg_end - eq - 1);
                if (vl + 1 > outlen)
                    return -2;
                memcpy(out, eq + 1, vl);
                out[vl] = '\0';
                return 0;
            }
            p = seg_end;
        }
    }
    return -1;
}

/* ---- the upgrade checks (RFC 6455 section 4.2.1) ---------------------- */

/* Is token (case-insensitive) one of the comma-separated values? */
static int
header_has_token(const imgw_span_t *v, const char *token)
{
    size_t tl = strlen(token);
    const char *p = v->p, *end = v->p + v->len;
    while (p < end) {
        while (p < end && (*p == ' ' || *p == '\t' || *p == ','))
            p++;
        const char *s = p;
        while (p < end && *p != ',')
            p++;
        const char *e = p;
        while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        if ((size_t)(e - s) == tl && strncasecmp(s, token, tl) == 0)
            return 1;
    }
    return 0;
}

int
imgw__http_accept_key(const char *key, size_t key_len, char out[29])
{
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    unsigned char raw[32];
    size_t olen = 0;
    while (key_len > 0 && (key[key_len - 1] == ' ' || key[key_len - 1] == '\t'))
        key_len--;
    while (key_len > 0 && (*key == ' ' || *key == '\t')) {
        key++;
        key_len--;
    }
    if (key_len != 24)
        return -1;
    if (mbedtls_base64_decode(raw, sizeof(raw), &olen,
                              (const unsigned char *)key, key_len) != 0 ||
        olen != 16)
        return -1;
    unsigned char cat[24 + sizeof(guid)];
    unsigned char sha[20];
    memcpy(cat, key, 24);
    memcpy(cat + 24, guid, sizeof(guid) - 1);
    if (mbedtls_sha1_ret(cat, 24 + sizeof(guid) - 1, sha) != 0)
        return -1;
    if (mbedtls_base64_encode((unsigned char *)out, 29, &olen, sha, 20) != 0)
        return -1;
    out[olen] = '\0';
    return 0;
}

/*
 * Returns 0 when req is a valid upgrade, else the HTTP status to answer
 * (400, or 426 for a version other than 13), and fills accept.
 */
int
imgw__http_check_upgrade(const imgw_http_req_t *req, int is_get,
                         char accept[29])
{
    if (!is_get)
        return 400;
    const imgw_span_t *up = imgw_http_header(req, "upgrade");
    const imgw_span_t *conn = imgw_http_header(req, "connection");
    const imgw_span_t *key = imgw_http_header(req, "sec-websocket-key");
    const imgw_span_t *ver = imgw_http_header(req, "sec-websocket-version");
    if (up == NULL || !header_has_token(up, "websocket"))
        return 400;
    if (conn == NULL || !header_has_token(conn, "upgrade"))
        return 400;
    if (key == NULL || imgw__http_accept_key(key->p, key->len, accept) != 0)
        return 400;
    if (ver == NULL || ver->len != 2 || memcmp(ver->p, "13", 2) != 0)
        return 426;
    return 0;
}

static void
fill_req(imgw_conn_t *c, imgw_http_t *h, imgw_http_req_t *req)
{
    req->method = llhttp_method_name(llhttp_get_method(&h->parser));
    const char *u = h->url.p ? h->url.p : "/";
    size_t ul = h->url.p ? h->url.len : 1;
    const char *q = memchr(u, '?', ul);
    req->path.p = u;
    req->path.len = q ? (size_t)(q - u) : ul;
    req->query.p = q ? q + 1 : u + ul;
    req->query.len = q ? (size_t)(u + ul - q - 1) : 0;
    req->n_headers = h->n_headers;
    memcpy(req->names, h->names, h->n_headers * sizeof(imgw_span_t));
    memcpy(req->values, h->values, h->n_headers * sizeof(imgw_span_t));
    req->body = h->body;
    req->body_len = h->body_len;
    req->is_upgrade = 0;
    snprintf(req->peer, sizeof(req->peer), "%s", imgw_conn_peer(c));
}

static int
path_is(const imgw_span_t *p, const char *s)
{
    size_t n = strlen(s);
    return p->len == n && memcmp(p->p, s, n) == 0;
}

/*
 * Handles a complete upgrade head. Returns 1 when the connection became a
 * WebSocket, 0 when it was refused (a response is queued and the
 * connection closes after it).
 */
static int
handle_upgrade(imgw_conn_t *c, imgw_http_t *h, imgw_http_req_t *req)
{
    imgw_loop_t *l = c->loop;
    char accept[29];
    int st = imgw__http_check_upgrade(
        req, llhttp_get_method(&h->parser) == HTTP_GET, accept);
    if (st != 0) {
        imgw_stat_inc(&l->st.handshakes_failed);
        respond_error(c, st);
        return 0;
    }
    req->is_upgrade = 1;
    st = l->net->h->on_upgrade ? l->net->h->on_upgrade(c, req) : 0;
    if (c->state == IMGW_CONN_CLOSED)
        return 0;
    if (st != 0) {
        imgw_stat_inc(&l->st.handshakes_failed);
        respond_error(c, st);
        return 0;
    }
    char resp[160];
    int n = snprintf(resp, sizeof(resp),
                     "HTTP/1.1 101 Switching Protocols\r\n"
                     "Upgrade: websocket\r\n"
                     "Connection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n\r\n",
                     accept);
    uv_buf_t b = uv_buf_init(resp, (unsigned)n);
    if (imgw__conn_write_raw(c, &b, 1, 0) < 0) {
        imgw__conn_close_now(c);
        return 0;
    }
    imgw_stat_inc(&l->st.handshakes_ok);
    return 1; /* the caller frees h, then hands c to the WebSocket */
}

/*
 * Dispatches a complete plain request. Returns 1 to go on parsing, 0 when
 * the connection stops (closing, or paused for an async answer).
 */
static int
handle_request(imgw_conn_t *c, imgw_http_t *h)
{
    imgw_loop_t *l = c->loop;
    imgw_http_req_t *req = imgw_try_malloc(sizeof(*req));
    if (req == NULL) {
        imgw__conn_close_now(c);
        return 0;
    }
    fill_req(c, h, req);
    imgw_stat_inc(&l->st.http_requests);
    if (h->body_too_big ||
        h->body_len > l->net->opts.max_body_bytes) {
        imgw_free(req);
        respond_error(c, 413);
        return 0;
    }
    int keep = llhttp_should_keep_alive(&h->parser);
    h->close_after = !keep;
    int r = l->net->h->on_http ? l->net->h->on_http(c, req) : 404;
    imgw_free(req);
    if (c->state >= IMGW_CONN_CLOSING)
        return 0;
    if (r == 1) {
        c->flags |= IMGW_CF_READ_PAUSED;
        imgw__conn_read_stop(c);
        return 0;
    }
    if (!keep) {
        c->flags |= IMGW_CF_CLOSE_AFTER;
        c->state = IMGW_CONN_CLOSING;
        return 0;
    }
    /* A kept-alive connection gets a fresh auth_timeout per request. */
    imgw_conn_set_deadline(c, l->now_ms +
                                  (uint64_t)l->net->opts.auth_timeout * 1000);
    return 1;
}

/* Drops the consumed bytes of buf: the next request starts at buf[0]. */
static void
compact(imgw_http_t *h)
{
    size_t rest = h->len - h->parsed;
    memmove(h->buf, h->buf + h->parsed, rest);
    h->len = rest;
    h->parsed = 0;
}

static int
is_ws_path(const imgw_span_t *path, int has_upgrade)
{
    return path_is(path, "/ws") || (has_upgrade && path_is(path, "/"));
}

/* Runs llhttp on buf[parsed..len) or on feed; see the file comment. */
static void
http_feed(imgw_conn_t *c, const uint8_t *data, size_t len)
{
    /* A response that ends the connection is queued: what else the peer
     * sends is ignored. */
    if (c->state != IMGW_CONN_HTTP)
        return;
    imgw_http_t *h = http_get(c);
    if (h == NULL) {
        imgw__conn_close_now(c);
        return;
    }
    while (c->state == IMGW_CONN_HTTP) {
        const char *p;
        size_t n;
        int direct = 0;
        if (h->parsed == h->len) {
            if (len == 0)
                return;
            if (h->headers_done && !h->upgrade && !h->message_done) {
                /* In a body: llhttp copies it out through on_body. */
                p = (const char *)data;
                n = len;
                direct = 1;
            } else {
                size_t space = sizeof(h->buf) - h->len;
                if (space == 0) {
                    imgw_stat_inc(&c->loop->st.handshakes_failed);
                    respond_error(c, 431);
                    return;
                }
                n = len < space ? len : space;
                memcpy(h->buf + h->len, data, n);
                h->len += n;
                data += n;
                len -= n;
                continue;
            }
        } else {
            p = h->buf + h->parsed;
            n = h->len - h->parsed;
        }
        llhttp_errno_t err = llhttp_execute(&h->parser, p, n);
        size_t used = n;
        if (err != HPE_OK) {
            const char *ep = llhttp_get_error_pos(&h->parser);
            used = ep ? (size_t)(ep - p) : n;
        }
        if (direct) {
            data += used;
            len -= used;
        } else {
            h->parsed += used;
        }
        if (err == HPE_OK) {
            if (!h->headers_done && !direct && h->len == sizeof(h->buf)) {
                imgw_stat_inc(&c->loop->st.handshakes_failed);
                respond_error(c, 431);
                return;
            }
            continue;
        }
        if (err == HPE_PAUSED_UPGRADE) {
            imgw_http_req_t *req = imgw_try_malloc(sizeof(*req));
            if (req == NULL) {
                imgw__conn_close_now(c);
                return;
            }
            fill_req(c, h, req);
            int ok;
            if (is_ws_path(&req->path, 1)) {
                ok = handle_upgrade(c, h, req);
            } else {
                /* Upgrade header on another path: a plain request, and
                 * the last on this connection. */
                imgw_stat_inc(&c->loop->st.http_requests);
                h->close_after = 1;
                int r = c->loop->net->h->on_http
                            ? c->loop->net->h->on_http(c, req)
                            : 404;
                (void)r;
                if (c->state == IMGW_CONN_HTTP) {
                    c->flags |= IMGW_CF_CLOSE_AFTER;
                    c->state = IMGW_CONN_CLOSING;
                }
                ok = 0;
            }
            imgw_free(req);
            if (!ok)
                return;
            /* Bytes after the head belong to the WebSocket. */
            size_t rest = h->len - h->parsed;
            uint8_t *tmp = NULL;
            if (rest) {
                tmp = imgw_try_malloc(rest);
                if (tmp == NULL) {
                    imgw__conn_close_now(c);
                    return;
                }
                memcpy(tmp, h->buf + h->parsed, rest);
            }
            http_free(c);
            imgw__conn_set_proto(c, IMGW_PROTO_WS);
            if (rest)
                imgw__conn_input(c, tmp, rest);
            imgw_free(tmp);
            if (len && c->state == IMGW_CONN_WS)
                imgw__conn_input(c, data, len);
            return;
        }
        if (err == HPE_PAUSED && h->message_done) {
            /* A plain request is complete. */
            imgw_http_req_t tmpreq;
            tmpreq.path.p = h->url.p ? h->url.p : "/";
            const char *q = h->url.p ? memchr(h->url.p, '?', h->url.len)
                                     : NULL;
            tmpreq.path.len = h->url.p ? (q ? (size_t)(q - h->url.p)
                                            : h->url.len)
                                       : 1;
            if (is_ws_path(&tmpreq.path, 0)) {
                /* /ws without an Upgrade header. */
                imgw_stat_inc(&c->loop->st.handshakes_failed);
                respond_error(c, 400);
                return;
            }
            int go_on = handle_request(c, h);
            if (!go_on) {
                if (c->flags & IMGW_CF_READ_PAUSED) {
                    /* Keep what was pipelined for later. */
                    compact(h);
                    size_t space = sizeof(h->buf) - h->len;
                    if (len > space) {
                        imgw__conn_close_now(c);
                        return;
                    }
                    if (len) { /* data is NULL when called to resume */
                        memcpy(h->buf + h->len, data, len);
                        h->len += len;
                    }
                }
                return;
            }
            llhttp_resume(&h->parser);
            compact(h);
            continue;
        }
        /* A parse error. */
        IMGW_LOG_DEBUG("bad request from %s: %s", imgw_conn_peer(c),
                       llhttp_errno_name(err));
        imgw_stat_inc(&c->loop->st.handshakes_failed);
        respond_error(c, 400);
        return;
    }
}

void
imgw__http_resume(imgw_conn_t *c)
{
    if (c->proto != IMGW_PROTO_HTTP || c->state != IMGW_CONN_HTTP)
        return;
    imgw_http_t *h = c->http;
    if (h == NULL)
        return;
    llhttp_resume(&h->parser);
    compact(h);
    http_feed(c, NULL, 0);
    if (c->state == IMGW_CONN_HTTP &&
        !(c->flags & IMGW_CF_READ_PAUSED))
        imgw__conn_read_start(c);
}

/* imgw_conn_close_ws() before an upgrade: an HTTP connection has no
 * closing handshake; one that is reading is dropped, one whose last
 * response is queued ends after it. */
static void
http_close(imgw_conn_t *c, int code, const char *reason)
{
    (void)code, (void)reason;
    if (c->state == IMGW_CONN_HTTP)
        imgw__conn_close_now(c);
}

const imgw_proto_t imgw__http_proto = {
    .name = "http",
    .feed = http_feed,
    .close = http_close,
    .free = http_free,
};
