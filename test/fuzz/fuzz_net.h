/*
 * fuzz_net.h: a fake loop for the net fuzz targets (fuzz_http, fuzz_ws).
 *
 * The real http.c, ws.c and conn.c run on a calloc'ed imgw_loop_t whose
 * uv_loop is initialized but never polled. A connection's uv_poll_t is on
 * an eventfd instead of a socket (imgw__conn_open): never readable, and a
 * send on it fails, so nothing is ever written to the network. Instead,
 * fuzz_net_flush() plays the loop's prepare callback as if every write had
 * succeeded (the output blocks are dropped, or handed to fuzz_net_sink
 * when a unit test wants to read them; CLOSE_AFTER closes), and
 * fuzz_net_end() closes the connection and runs the uv loop once so that
 * conn_close_cb frees it exactly as in the server.
 *
 * loop.c is not linked: net calls it for nothing. The harness plays its
 * part by filling the net's protocol handler table itself (fuzz_protos);
 * conn_close_cb running is seen through the on_close handler (the
 * connection carries a non-NULL data pointer for that).
 *
 * The first input byte selects how the core handlers behave (respond now,
 * answer later, refuse the upgrade, echo/close/abort on a message); the
 * second picks the chunking of the rest of the input into reads.
 */
#ifndef IMGW_FUZZ_NET_H
#define IMGW_FUZZ_NET_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>

#include "utf8.h"
#include "log.h"
#include "net_int.h"

#define FUZZ_MAX_FRAME 4096
#define FUZZ_MAX_BODY 2048

static imgw_loop_t *fuzz_loop;
static imgw_net_t *fuzz_net;
static imgw_net_handlers_t fuzz_handlers;
static unsigned fuzz_mode;   /* input byte 0 */
static int fuzz_async;       /* on_http returned 1: answer between reads */
static size_t fuzz_messages; /* on_message calls in this input */
static size_t fuzz_removed;  /* conn_close_cb ran */
/* What a connection wrote, for test/unit/test_conn.c; NULL (the fuzzers)
 * drops the output unread. */
static void (*fuzz_net_sink)(imgw_conn_t *c, const uint8_t *p, size_t n);

#define FUZZ_CHECK(cond)                                                       \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__,         \
                    __LINE__, #cond);                                          \
            abort();                                                           \
        }                                                                      \
    } while (0)

/* ---- loop.c's part ------------------------------------------------------ */

static const imgw_proto_t *const fuzz_protos[IMGW_PROTO_N] = {
    [IMGW_PROTO_HTTP] = &imgw__http_proto,
    [IMGW_PROTO_WS] = &imgw__ws_proto,
};

static int fuzz_conn_tag; /* every connection's data: on_close runs */

static void
fuzz_on_close(imgw_conn_t *c)
{
    FUZZ_CHECK(imgw_conn_data(c) == &fuzz_conn_tag);
    fuzz_removed++;
}

/* ---- core handler stand-ins -------------------------------------------- */

/* Exercises the request helpers core uses on every request. */
static void
fuzz_use_req(const imgw_http_req_t *req)
{
    char small[8], big[512];
    FUZZ_CHECK(req->method != NULL);
    FUZZ_CHECK(req->n_headers <= IMGW_HTTP_MAX_HEADERS);
    for (size_t i = 0; i < req->n_headers; i++) {
        /* Every span must be readable (ASan checks the bytes). */
        volatile size_t sum = 0;
        for (size_t k = 0; k < req->names[i].len; k++)
            sum += (unsigned char)req->names[i].p[k];
        for (size_t k = 0; k < req->values[i].len; k++)
            sum += (unsigned char)req->values[i].p[k];
        (void)sum;
    }
    (void)imgw_http_header(req, "host");
    (void)imgw_http_header(req, "authorization");
    if (imgw_http_query_param(req, "token", big, sizeof(big)) == 0)
        FUZZ_CHECK(strlen(big) < sizeof(big));
    (void)imgw_http_query_param(req, "t", small, sizeof(small));
    if (imgw_http_cookie(req, "token", big, sizeof(big)) == 0)
        FUZZ_CHECK(strlen(big) < sizeof(big));
    (void)imgw_http_cookie(req, "a", small, sizeof(small));
    if (req->body_len) {
        volatile uint8_t x = req->body[0] ^ req->body[req->body_len - 1];
        (void)x;
    }
}

static int
fuzz_on_http(imgw_conn_t *c, const imgw_http_req_t *req)
{
    fuzz_use_req(req);
    FUZZ_CHECK(req->body_len <= FUZZ_MAX_BODY);
    switch (fuzz_mode & 3) {
    case 0:
        imgw_conn_http_respond(c, 200, NULL, NULL, "ok\n", 3, 1);
        return 0;
    case 1:
        imgw_conn_http_respond(c, 404, "application/json", "X-A: b\r\n", "{}",
                               2, 0);
        return 0;
    case 2:
        fuzz_async = 1; /* answered by fuzz_net_flush() */
        return 1;
    default:
        imgw_conn_abort(c);
        return 0;
    }
}

static int
fuzz_on_upgrade(imgw_conn_t *c, const imgw_http_req_t *req)
{
    (void)c;
    fuzz_use_req(req);
    FUZZ_CHECK(req->is_upgrade);
    return (fuzz_mode & 4) ? 401 : 0;
}

static void
fuzz_on_message(imgw_conn_t *c, int is_text, const uint8_t *data, size_t len)
{
    fuzz_messages++;
    FUZZ_CHECK(len <= FUZZ_MAX_FRAME);
    if (is_text)
        FUZZ_CHECK(imgw_utf8_valid(data, len));
    if (len) {
        volatile uint8_t x = data[0] ^ data[len - 1];
        (void)x;
    }
    switch ((fuzz_mode >> 3) & 3) {
    case 1: {
        /* data is NULL for an empty fragmented message; conn.c's
         * imgw__conn_write_raw() would memcpy(dst, NULL, 0) from it, which
         * is UB (reported, conn.c is not ours to change): echo "" then. */
        uv_buf_t b =
            uv_buf_init(len ? (char *)data : (char *)"", (unsigned)len);
        (void)imgw_conn_send_ws(c, is_text, &b, 1);
        break;
    }
    case 2:
        if (fuzz_messages == 2)
            imgw_conn_close_ws(c, 1000, "bye");
        break;
    case 3:
        if (fuzz_messages == 3)
            imgw_conn_abort(c);
        break;
    default:
        break;
    }
}

/* ---- setup, per-input driving ------------------------------------------ */

static inline void
fuzz_net_init(void)
{
    if (fuzz_loop != NULL)
        return;
    imgw_log_set_level(IMGW_LOG_OFF);
    fuzz_handlers.on_http = fuzz_on_http;
    fuzz_handlers.on_upgrade = fuzz_on_upgrade;
    fuzz_handlers.on_message = fuzz_on_message;
    fuzz_handlers.on_close = fuzz_on_close;
    fuzz_net = calloc(1, sizeof(*fuzz_net));
    fuzz_loop = calloc(1, sizeof(*fuzz_loop));
    if (fuzz_net == NULL || fuzz_loop == NULL)
        abort();
    fuzz_net->opts.max_frame_bytes = FUZZ_MAX_FRAME;
    fuzz_net->opts.max_body_bytes = FUZZ_MAX_BODY;
    fuzz_net->opts.max_queued_bytes = 64 * 1024;
    fuzz_net->opts.auth_timeout = 10;
    fuzz_net->opts.handlers = &fuzz_handlers;
    fuzz_net->h = &fuzz_handlers;
    fuzz_net->protos = fuzz_protos;
    fuzz_loop->net = fuzz_net;
    fuzz_loop->now_ms = 1000000;
    if (uv_loop_init(&fuzz_loop->uv) != 0 ||
        imgw_tw_init(&fuzz_loop->tw, 64, fuzz_loop->now_ms / IMGW_TICK_MS) != 0)
        abort();
}

static inline imgw_conn_t *
fuzz_net_conn(int state)
{
    imgw_conn_t *c = imgw__conn_new(fuzz_loop);
    if (c == NULL || imgw__conn_open(c, eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) != 0)
        abort();
    imgw_conn_set_data(c, &fuzz_conn_tag);
    if (state == IMGW_CONN_WS)
        imgw__conn_set_proto(c, IMGW_PROTO_WS); /* as after a 101 */
    fuzz_async = 0;
    fuzz_messages = 0;
    fuzz_removed = 0;
    return c;
}

/*
 * What the loop's prepare callback would do if every write succeeded at
 * once, plus the late answer of an async HTTP handler.
 */
static inline void
fuzz_net_flush(imgw_conn_t *c)
{
    if (fuzz_async && c->state == IMGW_CONN_HTTP &&
        (c->flags & IMGW_CF_READ_PAUSED)) {
        fuzz_async = 0;
        imgw_conn_http_respond(c, 200, NULL, NULL, "late\n", 5, 1);
    }
    while (fuzz_loop->flush_head != NULL) {
        imgw_conn_t *f = fuzz_loop->flush_head;
        fuzz_loop->flush_head = f->flush_next;
        f->flush_next = NULL;
        f->flags &= ~IMGW_CF_IN_FLUSH;
        if (f->state == IMGW_CONN_CLOSED) {
            /* Closed with output queued: where a socket would have taken
             * it first (conn.c's direct flush failing on the socketless
             * handle, or a resumed read that cannot start), the sink still
             * sees what the connection wrote. conn_close_cb frees it. */
            if (fuzz_net_sink != NULL && f->pend != NULL)
                fuzz_net_sink(f, f->pend->data + f->pend->off,
                              f->pend->len - f->pend->off);
            continue;
        }
        if (f->pend != NULL) {
            FUZZ_CHECK(f->pend->off <= f->pend->len &&
                       f->pend->len <= f->pend->cap);
            FUZZ_CHECK(f->queued >= f->pend->len - f->pend->off);
            if (fuzz_net_sink != NULL)
                fuzz_net_sink(f, f->pend->data + f->pend->off,
                              f->pend->len - f->pend->off);
            f->queued -= f->pend->len - f->pend->off;
            imgw__obuf_release(fuzz_loop, f->pend);
            f->pend = NULL;
        }
        if (f->flags & IMGW_CF_CLOSE_AFTER)
            imgw__conn_close_now(f);
    }
}

/* Next chunk length from a small PRNG seeded by input byte 1. */
static inline size_t
fuzz_chunk(uint32_t *rng, unsigned seed, size_t left)
{
    size_t n;
    if (seed == 0)
        return left; /* everything in one read */
    *rng ^= *rng << 13;
    *rng ^= *rng >> 17;
    *rng ^= *rng << 5;
    n = 1 + *rng % ((seed & 0x7f) + 1u);
    if (seed & 0x80)
        n *= 17;
    return n < left ? n : left;
}

/* Feeds data to c as a sequence of reads, as conn.c's conn_read would. */
static inline void
fuzz_net_feed(imgw_conn_t *c, const uint8_t *data, size_t len, unsigned seed)
{
    uint32_t rng = 0x9e3779b9u ^ seed;
    while (len > 0 && c->state != IMGW_CONN_CLOSED) {
        size_t n = fuzz_chunk(&rng, seed, len);
        if (c->flags & IMGW_CF_READ_PAUSED) {
            /* uv_read_stop: nothing is read until the answer. */
            fuzz_net_flush(c);
            if (c->flags & IMGW_CF_READ_PAUSED)
                break; /* no answer is coming: the rest is never read */
            continue;
        }
        /* Reads land in the loop's buffer, as in conn_read. */
        memcpy(fuzz_loop->rbuf, data, n);
        imgw__conn_on_read(c, fuzz_loop->rbuf, n);
        /* Poison-free reuse: scribble over the read buffer so that a span
         * kept past its read shows up as garbage to the next checks. */
        memset(fuzz_loop->rbuf, 0xA5, n);
        data += n;
        len -= n;
        fuzz_net_flush(c);
    }
    fuzz_net_flush(c);
}

/* Closes c (if the input did not) and lets conn_close_cb free it. */
static inline void
fuzz_net_end(imgw_conn_t *c)
{
    if (c->state != IMGW_CONN_CLOSED)
        imgw__conn_close_now(c);
    uv_run(&fuzz_loop->uv, UV_RUN_NOWAIT);
    FUZZ_CHECK(fuzz_removed == 1);
    FUZZ_CHECK(fuzz_loop->flush_head == NULL);
    /* Keep the pools from holding memory across inputs. */
    imgw__conn_pools_trim(fuzz_loop, 0);
}

#endif
