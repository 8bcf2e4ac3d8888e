/*
 * conn.c: one TCP connection's life on its loop: reading, the coalesced
 * write path, deadlines and the one close path.
 *
 * Thread: only the owning loop. Other threads reach a connection through
 * its loop's mailbox with an imgw_conn_ref_t.
 *
 * Memory: an idle connection is this struct, 264 bytes in a 272-byte
 * malloc chunk (net_int.h): a uv_poll_t (160) on the socket plus ~100
 * bytes. HTTP state, WebSocket frame contexts and output blocks are
 * borrowed only while needed: the read buffer is the loop's, output
 * blocks come from a per-loop pool and go back once flushed.
 *
 * Socket: a uv_poll_t on the fd, not a uv_tcp_t (248 bytes, most of it
 * the stream's write queue and callbacks this file never used): libuv
 * says when the fd is readable or writable, and this file reads, sends
 * and closes the fd itself, the way libuv's stream code does.
 *
 * Protocols: the connection's handler (HTTP, then WebSocket after an
 * upgrade) is reached only through net->protos (see net_int.h); this file
 * names none of them. It owns the connection's entry in the loop's table:
 * imgw__conn_accept links it, conn_close_cb unlinks it.
 *
 * Writes: frames are appended to the connection's pending block and the
 * connection joins the loop's flush list; the loop's prepare handle (run
 * once per iteration, right before it polls) flushes every listed
 * connection with one send, so everything a connection is sent in one
 * iteration leaves in one syscall. What the kernel does not take stays in
 * the block, UV_WRITABLE is armed (IMGW_CF_WRITING), and new output
 * meanwhile is appended behind it; the next send happens when the socket
 * is writable again.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "alloc.h"
#include "err.h"
#include "log.h"
#include "net_int.h"

static void conn_close_cb(uv_handle_t *h);
static void conn_poll_cb(uv_poll_t *h, int status, int events);

static const imgw_proto_t *
conn_proto(const imgw_conn_t *c)
{
    return c->loop->net->protos[c->proto];
}

/* ---- output blocks ----------------------------------------------------- */

static imgw_obuf_t *
obuf_get(imgw_loop_t *l, size_t need)
{
    imgw_obuf_t *b;
    if (need <= IMGW_OBUF_SMALL) {
        if (l->n_obuf_pool > 0) {
            b = l->obuf_pool[--l->n_obuf_pool];
        } else {
            b = imgw_try_malloc(sizeof(*b) + IMGW_OBUF_SMALL);
            if (b == NULL)
                return NULL;
            b->cap = IMGW_OBUF_SMALL;
        }
    } else {
        size_t cap = IMGW_OBUF_SMALL;
        while (cap < need)
            cap *= 2;
        b = imgw_try_malloc(sizeof(*b) + cap);
        if (b == NULL)
            return NULL;
        b->cap = cap;
    }
    b->len = 0;
    b->off = 0;
    return b;
}

void
imgw__obuf_release(imgw_loop_t *l, imgw_obuf_t *b)
{
    if (b == NULL)
        return;
    if (b->cap == IMGW_OBUF_SMALL && l->n_obuf_pool < IMGW_OBUF_POOL_MAX)
        l->obuf_pool[l->n_obuf_pool++] = b;
    else
        imgw_free(b);
}

/* ---- creation and the loop's table ------------------------------------ */

imgw_conn_t *
imgw__conn_new(imgw_loop_t *l)
{
    /* Aborts (imgw_xcalloc): a fixed small size, and there is no graceful
     * way on (the accepted socket would be dropped unanswered). So it is
     * never made to fail on purpose either. */
    imgw_conn_t *c = imgw_xcalloc(1, sizeof(*c));
    c->loop = l;
    c->state = IMGW_CONN_HTTP;
    c->proto = IMGW_PROTO_HTTP;
    return c;
}

/* Gives c a slot of the loop's table; its generation tells stale refs. */
static int
conn_link(imgw_loop_t *l, imgw_conn_t *c)
{
    uint32_t s;
    if (l->n_free > 0) {
        s = l->free_slots[--l->n_free];
    } else {
        if (l->n_slots == l->cap_slots) {
            size_t cap = l->cap_slots ? l->cap_slots * 2 : 1024;
            imgw_conn_t **ns = imgw_try_realloc(l->slots, cap * sizeof(*ns));
            if (ns == NULL)
                return IMGW_ENOMEM;
            l->slots = ns;
            uint32_t *ng = imgw_try_realloc(l->gens, cap * sizeof(*ng));
            if (ng == NULL)
                return IMGW_ENOMEM;
            l->gens = ng;
            uint32_t *nf = imgw_try_realloc(l->free_slots, cap * sizeof(*nf));
            if (nf == NULL)
                return IMGW_ENOMEM;
            l->free_slots = nf;
            l->cap_slots = cap;
        }
        s = (uint32_t)l->n_slots++;
        l->gens[s] = 0;
    }
    /* Generation 0 means "not in the table" (conn_unlink): skip it when
     * a slot's counter wraps. */
    if (++l->gens[s] == 0)
        l->gens[s] = 1;
    l->slots[s] = c;
    c->slot = s;
    c->gen = l->gens[s];
    return 0;
}

static void
conn_unlink(imgw_loop_t *l, imgw_conn_t *c)
{
    if (c->gen == 0)
        return; /* never linked (a harness's bare connection) */
    if (c->flags & IMGW_CF_IP_COUNTED)
        imgw_iplimit_release(l->net->iplimit, &c->addr);
    l->slots[c->slot] = NULL;
    l->free_slots[l->n_free++] = c->slot;
    imgw_stat_dec(&l->st.conns_open);
    if (c->flags & IMGW_CF_COUNTED_WS)
        imgw_stat_dec(&l->st.ws_open);
    atomic_fetch_sub(&l->net->conns, 1);
}

/* close_cb of a connection that never entered the table (poll is the
 * first member of imgw_conn_t, so the handle is the allocation). */
static void
free_unlisted_cb(uv_handle_t *h)
{
    imgw_conn_t *c = IMGW_CONTAINER_OF(h, imgw_conn_t, poll);
    close(imgw__conn_fd(c));
    imgw_free(c);
}

int
imgw__conn_open(imgw_conn_t *c, int fd)
{
    /* uv_poll_init_socket also makes fd non-blocking; a socket from
     * accept4(SOCK_NONBLOCK) already is, but libuv checks it that way. */
    int r = uv_poll_init_socket(&c->loop->uv, &c->poll, fd);
    return r < 0 ? r : 0;
}

imgw_conn_t *
imgw__conn_accept(imgw_loop_t *l, int fd, long *node_conns)
{
    imgw_conn_t *c = imgw__conn_new(l); /* aborts rather than fail */
    int r = imgw__conn_open(c, fd);
    if (r != 0) {
        IMGW_LOG_WARN_RL("accept failed: %s", uv_strerror(r));
        close(fd);
        imgw_free(c);
        return NULL;
    }
    if (conn_link(l, c) != 0) {
        /* Not in the table: close without the table bookkeeping. */
        c->state = IMGW_CONN_CLOSED;
        uv_close((uv_handle_t *)&c->poll, free_unlisted_cb);
        return NULL;
    }
    imgw_stat_inc(&l->st.accepted);
    imgw_stat_inc(&l->st.conns_open);
    *node_conns = atomic_fetch_add(&l->net->conns, 1) + 1;
    return c;
}

void
imgw__conn_set_proto(imgw_conn_t *c, int proto)
{
    c->proto = (uint8_t)proto;
    if (conn_proto(c)->start)
        conn_proto(c)->start(c);
}

void
imgw__conn_pools_trim(imgw_loop_t *l, size_t keep)
{
    while (l->n_obuf_pool > keep)
        imgw_free(l->obuf_pool[--l->n_obuf_pool]);
    for (int i = 0; i < IMGW_PROTO_N; i++)
        if (l->net->protos[i]->trim)
            l->net->protos[i]->trim(l, keep);
}

/* ---- reading ------------------------------------------------------------ */

/* Plaintext from the socket, or from TLS. */
void
imgw__conn_input(imgw_conn_t *c, const uint8_t *data, size_t len)
{
    if (c->state != IMGW_CONN_CLOSED)
        conn_proto(c)->feed(c, data, len);
}

static void
tls_recv(void *arg, const uint8_t *p, size_t n)
{
    imgw__conn_input(arg, p, n);
}

static int conn_append(imgw_conn_t *c, const uv_buf_t *bufs, size_t n,
                       int bounded);
static void conn_write(imgw_conn_t *c, int waited);

static int
tls_send(void *arg, const uint8_t *p, size_t n)
{
    imgw_conn_t *c = arg;
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
    return conn_append(c, &b, 1, 0);
}

int
imgw__conn_tls_start(imgw_conn_t *c, imgw_tls_ctx_t *ctx)
{
    imgw_tls_io_t io = {tls_send, tls_recv, c};
    return imgw_tls_new(&c->tls, ctx, &io);
}

void
imgw__conn_on_read(imgw_conn_t *c, const uint8_t *data, size_t len)
{
    imgw_stat_add(&c->loop->st.bytes_in, len);
    c->last_rx = (uint32_t)c->loop->now_ms;
    if (c->tls == NULL) {
        imgw__conn_input(c, data, len);
        return;
    }
    int r = imgw_tls_feed(c->tls, data, len);
    if (r < 0 && c->state != IMGW_CONN_CLOSED) {
        IMGW_LOG_DEBUG("tls %s: %s", imgw_conn_peer(c), imgw_strerror(r));
        imgw__conn_close_now(c);
    }
}

/*
 * Which events c->poll waits for: readable while reading is wanted, and
 * writable while a partial write waits for room. uv_poll_start is called
 * only on a change: each call costs an epoll_ctl or two at the next poll
 * (libuv drops and re-adds the fd), and most connections never change.
 * Returns 0 or libuv's error.
 */
static int
conn_poll_update(imgw_conn_t *c)
{
    uint16_t want = 0;
    int ev = 0;
    if (c->flags & IMGW_CF_READING) {
        want |= IMGW_CF_POLL_IN;
        ev |= UV_READABLE;
    }
    if (c->flags & IMGW_CF_WRITING) {
        want |= IMGW_CF_POLL_OUT;
        ev |= UV_WRITABLE;
    }
    uint16_t have = c->flags & (IMGW_CF_POLL_IN | IMGW_CF_POLL_OUT);
    if (want == have)
        return 0;
    int r = ev ? uv_poll_start(&c->poll, ev, conn_poll_cb)
               : uv_poll_stop(&c->poll);
    if (r != 0)
        return r;
    c->flags = (uint16_t)((c->flags & ~(IMGW_CF_POLL_IN | IMGW_CF_POLL_OUT)) |
                          want);
    return 0;
}

/* Reads per readable event, as libuv's stream does (32): a peer that keeps
 * the socket full must not starve the loop's other connections. */
#define IMGW_READ_BUDGET 32

/*
 * The socket is readable: reads into the loop's one buffer (each read is
 * consumed or copied by the handler before the next) until the kernel has
 * no more (EAGAIN or a short read), the budget is spent, or the handler
 * stopped reading or closed c. EOF and errors (ECONNRESET...) close c
 * without a log, as libuv's read callback path did.
 */
static void
conn_read(imgw_conn_t *c)
{
    imgw_loop_t *l = c->loop;
    int fd = imgw__conn_fd(c);
    for (int i = 0; i < IMGW_READ_BUDGET; i++) {
        ssize_t n;
        do
            n = read(fd, l->rbuf, sizeof(l->rbuf));
        while (n < 0 && errno == EINTR);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) { /* EOF or error */
            imgw__conn_close_now(c);
            return;
        }
        /* A connection with input, however many reads it takes: what
         * server.batch_us counts (loop.c batch_wait). */
        l->iter_reads += i == 0;
        imgw__conn_on_read(c, l->rbuf, (size_t)n);
        if ((size_t)n < sizeof(l->rbuf) || c->state == IMGW_CONN_CLOSED ||
            !(c->flags & IMGW_CF_READING))
            return;
    }
}

static void
conn_poll_cb(uv_poll_t *h, int status, int events)
{
    imgw_conn_t *c = IMGW_CONTAINER_OF(h, imgw_conn_t, poll);
    c->loop->now_ms = imgw__loop_clock_ms(c->loop);
    if (status < 0) {
        /* EPOLLERR (a reset, mostly): libuv has stopped the handle and
         * says UV_EBADF; the socket's own error is what a read or write
         * would have failed with. Logged as a failed write was before. */
        if (c->flags & IMGW_CF_WRITING) {
            int e = 0;
            socklen_t el = sizeof(e);
            getsockopt(imgw__conn_fd(c), SOL_SOCKET, SO_ERROR, &e, &el);
            IMGW_LOG_DEBUG("write to %p failed: %s", (void *)c,
                           e ? uv_strerror(-e) : uv_strerror(status));
        }
        imgw__conn_close_now(c);
        return;
    }
    if ((events & UV_READABLE) && (c->flags & IMGW_CF_READING))
        conn_read(c);
    if ((events & UV_WRITABLE) && (c->flags & IMGW_CF_WRITING) &&
        c->state != IMGW_CONN_CLOSED) {
        /* Room again: what write_cb did, write what is left (and what
         * came meanwhile), then close-after-output if asked. */
        c->flags &= (uint16_t)~IMGW_CF_WRITING;
        conn_write(c, 1);
        if (c->state != IMGW_CONN_CLOSED && conn_poll_update(c) != 0)
            imgw__conn_close_now(c);
    }
}

void
imgw__conn_read_start(imgw_conn_t *c)
{
    if (c->state == IMGW_CONN_CLOSED)
        return;
    c->flags |= IMGW_CF_READING;
    if (conn_poll_update(c) != 0)
        imgw__conn_close_now(c);
}

void
imgw__conn_read_stop(imgw_conn_t *c)
{
    if (c->state == IMGW_CONN_CLOSED)
        return;
    c->flags &= (uint16_t)~IMGW_CF_READING;
    if (conn_poll_update(c) != 0)
        imgw__conn_close_now(c);
}

/* ---- writing ------------------------------------------------------------ */

static void
flush_list_add(imgw_conn_t *c)
{
    if (c->flags & IMGW_CF_IN_FLUSH)
        return;
    c->flags |= IMGW_CF_IN_FLUSH;
    c->flush_next = c->loop->flush_head;
    c->loop->flush_head = c;
}

/*
 * Appends bufs to the pending block. Returns 0, IMGW_ECLOSED, IMGW_ENOMEM,
 * or IMGW_EQUEUEFULL (the caller closes the connection as a slow consumer).
 */
int
imgw__conn_write_raw(imgw_conn_t *c, const uv_buf_t *bufs, size_t n,
                     int bounded)
{
    if (c->tls == NULL)
        return conn_append(c, bufs, n, bounded);
    /* TLS: the bound applies to the plaintext; records go to the queue. */
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += bufs[i].len;
    if (c->state == IMGW_CONN_CLOSED)
        return IMGW_ECLOSED;
    if (bounded && c->queued + total > c->loop->net->opts.max_queued_bytes) {
        if (!(c->flags & IMGW_CF_WRITING) && c->pend != NULL) {
            imgw__conn_flush(c);
            if (c->state == IMGW_CONN_CLOSED)
                return IMGW_ECLOSED;
        }
        if (c->queued + total > c->loop->net->opts.max_queued_bytes)
            return IMGW_EQUEUEFULL;
    }
    for (size_t i = 0; i < n; i++) {
        if (bufs[i].len == 0)
            continue;
        int r = imgw_tls_write(c->tls, (const uint8_t *)bufs[i].base,
                               bufs[i].len);
        if (r < 0)
            return r;
    }
    return 0;
}

/*
 * Appends bufs to the pending block. Returns 0, IMGW_ECLOSED, IMGW_ENOMEM,
 * or IMGW_EQUEUEFULL (the caller closes the connection as a slow consumer).
 */
static int
conn_append(imgw_conn_t *c, const uv_buf_t *bufs, size_t n, int bounded)
{
    imgw_loop_t *l = c->loop;
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += bufs[i].len;
    if (c->state == IMGW_CONN_CLOSED)
        return IMGW_ECLOSED;
    if (total > UINT32_MAX - c->queued)
        return IMGW_EQUEUEFULL; /* queued is 32 bits (net_int.h) */
    if (bounded && c->queued + total > l->net->opts.max_queued_bytes) {
        /* What this iteration queued has not been offered to the socket
         * yet: a reader that keeps up must not look slow because of one
         * burst, so write first and judge by what is left. */
        if (!(c->flags & IMGW_CF_WRITING) && c->pend != NULL) {
            imgw__conn_flush(c);
            if (c->state == IMGW_CONN_CLOSED)
                return IMGW_ECLOSED;
        }
        if (c->queued + total > l->net->opts.max_queued_bytes)
            return IMGW_EQUEUEFULL;
    }
    imgw_obuf_t *b = c->pend;
    if (b == NULL || b->len + total > b->cap) {
        size_t have = b ? b->len - b->off : 0;
        imgw_obuf_t *nb = obuf_get(l, have + total);
        if (nb == NULL)
            return IMGW_ENOMEM;
        if (b) {
            memcpy(nb->data, b->data + b->off, have);
            nb->len = have;
            imgw__obuf_release(l, b);
        }
        c->pend = b = nb;
    }
    for (size_t i = 0; i < n; i++) {
        if (bufs[i].len == 0)
            continue; /* an empty piece may have a NULL base */
        memcpy(b->data + b->len, bufs[i].base, bufs[i].len);
        b->len += bufs[i].len;
    }
    c->queued += (uint32_t)total;
    flush_list_add(c);
    return 0;
}

/* One send of what is left in b; the bytes taken, 0 when the kernel is
 * full, or -errno. MSG_NOSIGNAL: a peer gone is an error, not SIGPIPE. */
static ssize_t
conn_send(imgw_conn_t *c, imgw_obuf_t *b)
{
    ssize_t n;
    do
        n = send(imgw__conn_fd(c), b->data + b->off, b->len - b->off,
                 MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
    return n;
}

/* The flush; waited: the socket had been full (what uv_write's callback
 * did then, down to its debug log of a failure). */
static void
conn_write(imgw_conn_t *c, int waited)
{
    imgw_loop_t *l = c->loop;
    if (c->state == IMGW_CONN_CLOSED || (c->flags & IMGW_CF_WRITING))
        return;
    imgw_obuf_t *b = c->pend;
    if (b != NULL) {
        ssize_t r = conn_send(c, b);
        if (r < 0) {
            if (waited)
                IMGW_LOG_DEBUG("write to %p failed: %s", (void *)c,
                               uv_strerror((int)r));
            imgw__conn_close_now(c);
            return;
        }
        b->off += (size_t)r;
        c->queued -= (uint32_t)r;
        imgw_stat_add(&l->st.bytes_out, (size_t)r);
        if (b->off < b->len) {
            /* The rest waits in b for UV_WRITABLE (conn_poll_cb). */
            c->flags |= IMGW_CF_WRITING;
            if (conn_poll_update(c) != 0)
                imgw__conn_close_now(c);
            return;
        }
        c->pend = NULL;
        imgw__obuf_release(l, b);
    }
    if (c->flags & IMGW_CF_CLOSE_AFTER)
        imgw__conn_close_now(c);
}

void
imgw__conn_flush(imgw_conn_t *c)
{
    conn_write(c, 0);
}

void
imgw__conn_flush_all(imgw_loop_t *l)
{
    while (l->flush_head != NULL) {
        imgw_conn_t *c = l->flush_head;
        l->flush_head = c->flush_next;
        c->flush_next = NULL;
        c->flags &= ~IMGW_CF_IN_FLUSH;
        imgw__conn_flush(c);
    }
}

/* The WebSocket calls of net.h go to the connection's handler: only the
 * WebSocket one sends messages; each has its own way to close. */
int
imgw_conn_send_ws(imgw_conn_t *c, int is_text, const uv_buf_t *pieces,
                  size_t n)
{
    const imgw_proto_t *p = conn_proto(c);
    if (c->state == IMGW_CONN_CLOSED || p->send == NULL)
        return IMGW_ECLOSED;
    return p->send(c, is_text, pieces, n);
}

void
imgw_conn_close_ws(imgw_conn_t *c, int code, const char *reason)
{
    if (c->state != IMGW_CONN_CLOSED)
        conn_proto(c)->close(c, code, reason);
}

void
imgw_conn_abort(imgw_conn_t *c)
{
    imgw__conn_close_now(c);
}

void
imgw__conn_close_now(imgw_conn_t *c)
{
    if (c->state == IMGW_CONN_CLOSED)
        return;
    c->state = IMGW_CONN_CLOSED;
    imgw_tw_cancel(&c->loop->tw, &c->tw);
    /* uv_close stops the poll and takes the fd out of epoll; the fd
     * itself is closed in conn_close_cb, so its number cannot be reused by
     * an accept while libuv may still hold events for this handle. */
    uv_close((uv_handle_t *)&c->poll, conn_close_cb);
}

static void
conn_close_cb(uv_handle_t *h)
{
    imgw_conn_t *c = IMGW_CONTAINER_OF(h, imgw_conn_t, poll);
    imgw_loop_t *l = c->loop;
    if (l->net->h->on_close && c->poll.data != NULL)
        l->net->h->on_close(c);
    for (int i = 0; i < IMGW_PROTO_N; i++)
        l->net->protos[i]->free(c);
    if (c->tls) {
        imgw_tls_free(c->tls);
        c->tls = NULL;
    }
    imgw__obuf_release(l, c->pend); /* unwritten output is dropped */
    c->pend = NULL;
    if (c->flags & IMGW_CF_IN_FLUSH) {
        imgw_conn_t **pp = &l->flush_head;
        while (*pp && *pp != c)
            pp = &(*pp)->flush_next;
        if (*pp)
            *pp = c->flush_next;
    }
    conn_unlink(l, c);
    close(imgw__conn_fd(c));
    imgw_free(c);
}

/* ---- deadlines ---------------------------------------------------------- */

void
imgw_conn_set_deadline(imgw_conn_t *c, uint64_t deadline_ms)
{
    imgw_loop_t *l = c->loop;
    if (deadline_ms == 0) {
        c->deadline = 0;
        imgw_tw_cancel(&l->tw, &c->tw);
        return;
    }
    /* Low bits 0 would read as "none": 1 ms later instead. */
    c->deadline = (uint32_t)deadline_ms ? (uint32_t)deadline_ms : 1;
    uint64_t tick = (deadline_ms + IMGW_TICK_MS - 1) / IMGW_TICK_MS;
    /* Re-linking on every frame would be wasted work: an earlier entry
     * fires, sees the later deadline and reschedules itself. */
    if (imgw_tw_pending(&c->tw) && c->tw.deadline <= tick)
        return;
    imgw_tw_schedule(&l->tw, &c->tw, tick);
}

void
imgw__conn_deadline_fired(imgw_conn_t *c)
{
    imgw_loop_t *l = c->loop;
    if (c->state == IMGW_CONN_CLOSED || c->deadline == 0)
        return;
    /* The 32-bit distance to the deadline (net_int.h): > 0 is ahead. */
    int32_t left = (int32_t)(c->deadline - (uint32_t)l->now_ms);
    if (left > 0) {
        uint64_t at = l->now_ms + (uint64_t)left;
        imgw_tw_schedule(&l->tw, &c->tw,
                         (at + IMGW_TICK_MS - 1) / IMGW_TICK_MS);
        return;
    }
    c->deadline = 0;
    if (c->state == IMGW_CONN_WS && l->net->h->on_deadline)
        l->net->h->on_deadline(c);
    else
        imgw__conn_close_now(c);
}

/* ---- accessors ---------------------------------------------------------- */

imgw_conn_ref_t
imgw_conn_ref(const imgw_conn_t *c)
{
    imgw_conn_ref_t r = {(uint16_t)c->loop->index, c->slot, c->gen};
    return r;
}

imgw_loop_t *
imgw_conn_loop(const imgw_conn_t *c)
{
    return c->loop;
}

void *
imgw_conn_data(const imgw_conn_t *c)
{
    return c->poll.data;
}

void
imgw_conn_set_data(imgw_conn_t *c, void *data)
{
    c->poll.data = data;
}

uint64_t
imgw_conn_last_rx_ms(const imgw_conn_t *c)
{
    /* now_ms never goes back and last_rx came from it: the 32-bit
     * distance is exact below 2^32 ms (49 days). */
    uint64_t now = c->loop->now_ms;
    return now - (uint32_t)((uint32_t)now - c->last_rx);
}

int
imgw_conn_is_ws(const imgw_conn_t *c)
{
    return c->state == IMGW_CONN_WS;
}

int
imgw_conn_closing(const imgw_conn_t *c)
{
    return c->state >= IMGW_CONN_CLOSING;
}

const char *
imgw_conn_peer(const imgw_conn_t *c)
{
    static _Thread_local char buf[64];
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    buf[0] = '\0';
    if (getpeername(imgw__conn_fd(c), (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET)
            uv_ip4_name((struct sockaddr_in *)&ss, buf, sizeof(buf));
        else if (ss.ss_family == AF_INET6)
            uv_ip6_name((struct sockaddr_in6 *)&ss, buf, sizeof(buf));
    }
    return buf;
}
