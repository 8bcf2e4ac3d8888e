/*
 * loop.c: the reactors. One libuv loop per thread, each with its own
 * SO_REUSEPORT listener on every port, its connection table, timer wheel,
 * mailbox, flush list and pools.
 *
 * Threads: imgw_net_new/start/drain/join/free run on the main thread;
 * everything else on the loop's own thread, except imgw_loop_post (any).
 *
 * libuv 1.44 has no SO_REUSEPORT flag for uv_tcp_bind, so each listener
 * socket is made by hand (socket, SO_REUSEPORT, bind, listen) on the main
 * thread, where a bad address or a port in use is reported before any loop
 * runs, and watched by its loop with a uv_poll_t: the loop accepts with
 * accept4 itself (conn.c owns the socket from there, on a uv_poll_t too,
 * no uv_tcp_t per connection). The kernel then spreads new connections
 * over the loops; a connection never leaves its loop.
 * Before that, take_port_lock makes each port this process's alone, so a
 * second imgw on the same port is refused instead of silently sharing it.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "alloc.h"
#include "clock.h"
#include "err.h"
#include "log.h"
#include "net_int.h"

/*
 * The protocol handlers by IMGW_PROTO_*: the one place that names them.
 * conn.c reaches a connection's handler through this table only.
 */
static const imgw_proto_t *const net_protos[IMGW_PROTO_N] = {
    [IMGW_PROTO_HTTP] = &imgw__http_proto,
    [IMGW_PROTO_WS] = &imgw__ws_proto,
};

/* ---- connection table ------------------------------------------------ */

imgw_conn_t *
imgw_loop_conn(imgw_loop_t *l, imgw_conn_ref_t ref)
{
    if (ref.slot >= l->n_slots)
        return NULL;
    imgw_conn_t *c = l->slots[ref.slot];
    if (c == NULL || c->gen != ref.gen || c->state == IMGW_CONN_CLOSED)
        return NULL;
    return c;
}

void
imgw_loop_foreach_ws(imgw_loop_t *l, void (*fn)(imgw_conn_t *, void *),
                     void *arg)
{
    for (size_t i = 0; i < l->n_slots; i++) {
        imgw_conn_t *c = l->slots[i];
        if (c != NULL && c->state == IMGW_CONN_WS)
            fn(c, arg);
    }
}

/* ---- accepting --------------------------------------------------------- */

/* Answers a refused connection with status and closes it. */
static void
refuse(imgw_conn_t *c, int status)
{
    static const char full[] = "HTTP/1.1 503 Service Unavailable\r\n"
                               "Content-Type: text/plain\r\n"
                               "Content-Length: 5\r\n"
                               "Connection: close\r\n\r\nfull\n";
    static const char busy[] = "HTTP/1.1 429 Too Many Requests\r\n"
                               "Content-Type: text/plain\r\n"
                               "Content-Length: 5\r\n"
                               "Retry-After: 1\r\n"
                               "Connection: close\r\n\r\nbusy\n";
    uv_buf_t b = status == 503 ? uv_buf_init((char *)full, sizeof(full) - 1)
                               : uv_buf_init((char *)busy, sizeof(busy) - 1);
    if (imgw__conn_write_raw(c, &b, 1, 0) == 0) {
        c->flags |= IMGW_CF_CLOSE_AFTER;
        c->state = IMGW_CONN_CLOSING;
    } else {
        imgw__conn_close_now(c);
    }
}

/* The loop's handshake_rate bucket (burst = one second's worth). */
static int
handshake_token(imgw_loop_t *l)
{
    int rate = l->net->opts.handshake_rate;
    if (rate <= 0)
        return 1;
    if (l->hs_refill_ms == 0) {
        l->hs_refill_ms = l->now_ms;
        l->hs_tokens = rate;
    }
    if (l->now_ms > l->hs_refill_ms) {
        l->hs_tokens += (double)(l->now_ms - l->hs_refill_ms) * rate / 1000.0;
        if (l->hs_tokens > rate)
            l->hs_tokens = rate;
        l->hs_refill_ms = l->now_ms;
    }
    if (l->hs_tokens < 1.0)
        return 0;
    l->hs_tokens -= 1.0;
    return 1;
}

static void
peer_addr(imgw_conn_t *c, imgw_ipaddr_t *out)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    memset(out, 0, sizeof(*out));
    if (getpeername(imgw__conn_fd(c), (struct sockaddr *)&ss, &len) != 0)
        return;
    if (ss.ss_family == AF_INET) {
        /* IPv4-mapped IPv6, so both families share one table. */
        out->b[10] = 0xff;
        out->b[11] = 0xff;
        memcpy(out->b + 12, &((struct sockaddr_in *)&ss)->sin_addr, 4);
    } else if (ss.ss_family == AF_INET6) {
        memcpy(out->b, &((struct sockaddr_in6 *)&ss)->sin6_addr, 16);
    }
}

/* A socket accepted on a listener (tls: a [tls] port). */
static void
on_connection(imgw_loop_t *l, int fd, int tls)
{
    long n;
    imgw_conn_t *c = imgw__conn_accept(l, fd, &n);
    if (c == NULL)
        return;
    imgw_alloc_arm();
    l->now_ms = imgw__loop_clock_ms(l);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    c->last_rx = (uint32_t)l->now_ms;
    imgw_conn_set_deadline(c, l->now_ms +
                                  (uint64_t)l->net->opts.auth_timeout * 1000);
    if (l->draining) {
        imgw__conn_close_now(c);
        return;
    }
    if (tls && imgw__conn_tls_start(c, l->tls_ctx) != 0) {
        imgw__conn_close_now(c);
        return;
    }
    if (n > l->net->opts.max_connections) {
        imgw_stat_inc(&l->st.refused_full);
        refuse(c, 503);
        return;
    }
    if (!handshake_token(l)) {
        imgw_stat_inc(&l->st.refused_rate);
        refuse(c, 429);
        return;
    }
    if (l->net->opts.max_connections_per_ip > 0) {
        peer_addr(c, &c->addr);
        int ok = imgw_iplimit_acquire(l->net->iplimit, &c->addr,
                                      l->net->opts.max_connections_per_ip);
        if (ok != 1) {
            imgw_stat_inc(&l->st.refused_ip);
            refuse(c, 429);
            return;
        }
        c->flags |= IMGW_CF_IP_COUNTED;
    }
    imgw__conn_read_start(c);
}

/* Accepts per listener wake-up: a connect storm on one port must not keep
 * the loop from its connections' reads and writes for long. The listener
 * is level-triggered, so what is left is taken at the next iteration. */
#define IMGW_ACCEPT_BUDGET 64

static void listener_cb(uv_poll_t *h, int status, int events);

/* The EMFILE reserve: any fd will do; "/" is always there. -1 when none
 * can be had. */
static int
reserve_fd_open(void)
{
    return open("/", O_RDONLY | O_CLOEXEC);
}

/*
 * Out of fds (EMFILE/ENFILE): the pending connection stays in the backlog
 * and the listener stays readable, which would spin the loop. libuv's
 * answer, done the same way here: a reserve fd (l->emfile_fd, opened at
 * loop start) is closed to make room, every pending connection is
 * accepted and closed at once (the clients see a reset and may retry
 * elsewhere, rather than hang in the backlog), and the reserve is opened
 * again. If it cannot be (the fds are still gone), the loop's listeners
 * pause until the next timer tick (listeners_resume) instead of spinning.
 */
static void
accept_shed(imgw_loop_t *l, int lfd)
{
    if (l->emfile_fd >= 0) {
        close(l->emfile_fd);
        l->emfile_fd = -1;
        for (;;) {
            int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd >= 0)
                close(fd);
            else if (errno != EINTR)
                break;
        }
        l->emfile_fd = reserve_fd_open();
    }
    if (l->emfile_fd < 0 && !l->accept_paused) {
        l->accept_paused = 1;
        for (int i = 0; i < l->n_listeners; i++)
            uv_poll_stop(&l->listeners[i]);
    }
}

/* The timer's retry after accept_shed paused the listeners. */
static void
listeners_resume(imgw_loop_t *l)
{
    if (!l->accept_paused)
        return;
    if (l->emfile_fd < 0)
        l->emfile_fd = reserve_fd_open();
    if (l->emfile_fd < 0)
        return;
    l->accept_paused = 0;
    for (int i = 0; i < l->n_listeners; i++)
        uv_poll_start(&l->listeners[i], UV_READABLE, listener_cb);
}

static void
listener_cb(uv_poll_t *h, int status, int events)
{
    imgw_loop_t *l = h->data;
    (void)events;
    int i = (int)(h - l->listeners);
    int lfd = l->listen_fds[i];
    if (status < 0) {
        /* libuv stopped the handle (EPOLLERR); a listening socket has no
         * error to report, so keep accepting. */
        IMGW_LOG_WARN_RL("accept failed: %s", uv_strerror(status));
        uv_poll_start(h, UV_READABLE, listener_cb);
        return;
    }
    for (int k = 0; k < IMGW_ACCEPT_BUDGET && !l->draining; k++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            on_connection(l, fd, l->listener_tls[i]);
            continue;
        }
        int e = errno;
        if (e == EAGAIN || e == EWOULDBLOCK)
            return;
        if (e == EINTR || e == ECONNABORTED)
            continue; /* reset before it was taken: the next one */
        if (e == EMFILE || e == ENFILE)
            accept_shed(l, lfd);
        IMGW_LOG_WARN_RL("accept failed: %s", uv_strerror(-e));
        return;
    }
}

/* ---- timers, flush, mailbox ---------------------------------------------- */

static void
tw_expire(imgw_tw_entry_t *e, void *arg)
{
    (void)arg;
    imgw_conn_t *c = IMGW_CONTAINER_OF(e, imgw_conn_t, tw);
    imgw__conn_deadline_fired(c);
}

static void loop_idle(imgw_loop_t *l);
static void loop_close_handles(imgw_loop_t *l);
static void release_port_locks(imgw_net_t *n);

static void
drain_step(imgw_loop_t *l)
{
    /* Paced drain: by time t of the window, close t/window of the
     * connections that were open when it began, so clients reconnect
     * elsewhere spread out instead of all at once. */
    size_t target = l->drain_total;
    if (l->now_ms < l->drain_end_ms && l->drain_end_ms > l->drain_start_ms) {
        double frac = (double)(l->now_ms - l->drain_start_ms) /
                      (double)(l->drain_end_ms - l->drain_start_ms);
        target = (size_t)(frac * (double)l->drain_total) + 1;
    }
    size_t asked = 0;
    for (size_t i = 0; i < l->n_slots; i++) {
        imgw_conn_t *c = l->slots[i];
        if (c == NULL || (c->flags & IMGW_CF_DRAIN_DONE))
            continue;
        asked++;
    }
    size_t done = l->drain_total > asked ? l->drain_total - asked : 0;
    for (size_t i = 0; i < l->n_slots && done < target; i++) {
        imgw_conn_t *c = l->slots[i];
        if (c == NULL || (c->flags & IMGW_CF_DRAIN_DONE))
            continue;
        c->flags |= IMGW_CF_DRAIN_DONE;
        done++;
        if (c->state == IMGW_CONN_WS)
            imgw_conn_close_ws(c, 1001, "going away");
        else if (c->state == IMGW_CONN_HTTP)
            imgw__conn_close_now(c);
    }
    if (imgw_stat_get(&l->st.conns_open) == 0)
        loop_idle(l);
}

/*
 * Every IMGW_TRIM_MS: gives back what a burst left behind. The pools (conn.c's
 * output blocks and each protocol handler's own) are cut to IMGW_POOL_KEEP
 * entries (they refill from malloc if the load needs
 * more, a few mallocs per 10 s), and loop 0 asks glibc to return free
 * memory to the OS: freed blocks otherwise stay in the heap (and in RSS)
 * for good, 4 KiB output blocks and 4 KiB wslay buffers of thousands of
 * connections after one heartbeat burst. malloc_trim(0) walks every arena
 * (each loop thread has its own), so one loop doing it is enough; it costs
 * a walk of the free chunks and an madvise per free page run, about every
 * 10 s. The timestamp is per thread: the pools are per loop.
 */
static _Thread_local uint64_t trim_last_ms;

static void
trim_tick(imgw_loop_t *l)
{
    if (l->now_ms - trim_last_ms < IMGW_TRIM_MS)
        return;
    trim_last_ms = l->now_ms;
    imgw__conn_pools_trim(l, IMGW_POOL_KEEP);
    if (l->index == 0)
        malloc_trim(0);
}

static void
timer_cb(uv_timer_t *t)
{
    imgw_loop_t *l = t->data;
    l->now_ms = imgw__loop_clock_ms(l);
    imgw_tw_advance(&l->tw, l->now_ms / IMGW_TICK_MS, tw_expire, NULL);
    if (l->now_ms - l->last_tick_ms >= 1000) {
        l->last_tick_ms = l->now_ms;
        if (l->net->h->on_tick && !l->stopping)
            l->net->h->on_tick(l, l->now_ms);
        trim_tick(l);
    }
    if (l->accept_paused && !l->draining)
        listeners_resume(l);
    if (l->draining && !l->stopping)
        drain_step(l);
}

/*
 * Under load, a loop that polls again right away wakes once per burst of
 * input (on a VM each wake-up, and each wake-up of a peer our writes make,
 * costs more than the messages it carries) and writes each connection
 * once per burst. After an iteration that read from at least
 * IMGW_BATCH_MIN_READS connections, and after its output went out, it
 * sleeps server.batch_us first: what arrives meanwhile is read in one
 * iteration, and a connection's responses and pushes leave in one write.
 * An idle or lightly loaded loop (one connection per iteration) never
 * waits, so the added latency (at most batch_us plus the kernel's timer
 * slack) is paid only under load. The wait is what is left of batch_us
 * since the previous iteration's: a busy loop polls at most once per
 * batch_us, and a saturated one (iterations longer than batch_us) never
 * sleeps, so the wait never costs throughput. It holds no lock; other
 * loops and the MQ thread keep running, and mail waits at most batch_us.
 */
static void
batch_wait(imgw_loop_t *l)
{
    uint32_t reads = l->iter_reads;
    l->iter_reads = 0;
    if (l->net->opts.batch_us <= 0 || l->stopping)
        return;
    uint64_t now = uv_hrtime(), period = (uint64_t)l->net->opts.batch_us * 1000u;
    uint64_t wait = imgw__batch_wait_ns(reads, now - l->batch_last_ns, period);
    l->batch_last_ns = now;
    if (wait == 0)
        return;
    struct timespec ts = {(time_t)(wait / 1000000000u),
                          (long)(wait % 1000000000u)};
    imgw_stat_inc(&l->st.batch_waits);
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
    l->batch_last_ns = uv_hrtime();
}

static void
prepare_cb(uv_prepare_t *p)
{
    imgw_loop_t *l = p->data;
    imgw__conn_flush_all(l);
    batch_wait(l);
}

static void
start_drain(imgw_loop_t *l)
{
    if (l->draining)
        return;
    l->draining = 1;
    for (int i = 0; i < l->n_listeners; i++) {
        /* uv_close of a poll takes the fd out of epoll at once, so it can
         * be closed here; it must be before the port locks go. */
        uv_close((uv_handle_t *)&l->listeners[i], NULL);
        close(l->listen_fds[i]);
        l->listen_fds[i] = -1;
    }
    l->n_listeners = 0;
    /* The listening fds are closed; the last loop to get here frees the
     * ports for a successor (rolling restart). */
    if (atomic_fetch_sub(&l->net->loops_listening, 1) == 1)
        release_port_locks(l->net);
    l->drain_start_ms = l->now_ms;
    l->drain_end_ms =
        l->now_ms + (uint64_t)atomic_load(&l->net->drain_ms);
    l->drain_total = (size_t)imgw_stat_get(&l->st.conns_open);
    IMGW_LOG_INFO("draining %zu connections over %llu ms", l->drain_total,
                  (unsigned long long)(l->drain_end_ms - l->drain_start_ms));
    drain_step(l);
}

static void
mailbox_cb(imgw_mailbox_t *mb, imgw_mpsc_node_t *n)
{
    imgw_loop_t *l = mb->data;
    l->now_ms = imgw__loop_clock_ms(l);
    if (n == &l->stop_node) {
        start_drain(l);
        return;
    }
    if (n == &l->final_node) {
        loop_close_handles(l);
        return;
    }
    if (l->net->h->on_mail)
        l->net->h->on_mail(l, n);
}

/*
 * A drained loop waits for the others before it closes its handles:
 * until every loop is drained, another loop may still post to this one's
 * mailbox (a push to a connection that is gone), and posting to a closed
 * uv_async_t is a use-after-free. The last loop to drain tells them all.
 */
static void
loop_idle(imgw_loop_t *l)
{
    if (l->idle)
        return;
    l->idle = 1;
    imgw_net_t *n = l->net;
    if (atomic_fetch_add(&n->loops_idle, 1) + 1 != n->n_loops)
        return;
    /* Other threads' posts: refuse new ones, wait out those under way. */
    atomic_store(&n->closing, 1);
    while (atomic_load(&n->ext_posting) > 0)
        uv_sleep(1);
    for (int i = 0; i < n->n_loops; i++)
        imgw_mailbox_post(&n->loops[i]->mbox, &n->loops[i]->final_node);
}

static void
loop_close_handles(imgw_loop_t *l)
{
    if (l->stopping)
        return;
    l->stopping = 1;
    if (l->net->h->on_loop_stop)
        l->net->h->on_loop_stop(l);
    uv_timer_stop(&l->timer);
    uv_close((uv_handle_t *)&l->timer, NULL);
    uv_prepare_stop(&l->flush_prep);
    uv_close((uv_handle_t *)&l->flush_prep, NULL);
    imgw_mailbox_close(&l->mbox, NULL);
}

/* ---- the loop thread --------------------------------------------------- */

static void
close_walk_cb(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void
loop_thread(void *arg)
{
    imgw_loop_t *l = arg;
    char tag[16];
    snprintf(tag, sizeof(tag), "loop%d", l->index);
    imgw_log_set_thread(tag);
    int r = 0;
    l->emfile_fd = -1;
    uv_update_time(&l->uv);
    l->now_ms = imgw__loop_clock_ms(l);
    l->last_tick_ms = l->now_ms;
    if ((r = imgw_tw_init(&l->tw, 1024, l->now_ms / IMGW_TICK_MS)) != 0)
        goto fail;
    if ((r = imgw_mailbox_init(&l->mbox, &l->uv, mailbox_cb, l)) != 0)
        goto fail;
    uv_timer_init(&l->uv, &l->timer);
    l->timer.data = l;
    uv_timer_start(&l->timer, timer_cb, IMGW_TICK_MS, IMGW_TICK_MS);
    if (l->net->opts.n_tls_ports > 0) {
        char err[256];
        r = imgw_tls_ctx_new(&l->tls_ctx, l->net->opts.tls_cert,
                             l->net->opts.tls_key, err, sizeof(err));
        if (r != 0) {
            IMGW_LOG_ERROR("%s", err);
            goto fail;
        }
    }
    uv_prepare_init(&l->uv, &l->flush_prep);
    l->flush_prep.data = l;
    uv_prepare_start(&l->flush_prep, prepare_cb);
    /* The EMFILE reserve (accept_shed); without one the loop still runs,
     * pausing its listeners when out of fds. */
    l->emfile_fd = reserve_fd_open();
    for (int i = 0; i < l->n_listeners; i++) {
        /* listen_fds[i] stays the loop's: closed at the drain, or by
         * imgw_net_free after a failed start. */
        if ((r = uv_poll_init_socket(&l->uv, &l->listeners[i],
                                     l->listen_fds[i])) != 0)
            goto fail;
        l->listeners[i].data = l;
        if ((r = uv_poll_start(&l->listeners[i], UV_READABLE,
                               listener_cb)) != 0)
            goto fail;
    }
    if (l->net->h->on_loop_start && (r = l->net->h->on_loop_start(l)) != 0)
        goto fail;
    l->start_err = 0;
    uv_sem_post(&l->started);
    uv_run(&l->uv, UV_RUN_DEFAULT);
    goto out;
fail:
    IMGW_LOG_ERROR("loop %d failed to start: %s", l->index, imgw_strerror(r));
    l->start_err = r;
    uv_sem_post(&l->started);
    uv_walk(&l->uv, close_walk_cb, NULL);
    uv_run(&l->uv, UV_RUN_DEFAULT);
out:
    if (l->emfile_fd >= 0)
        close(l->emfile_fd);
    l->emfile_fd = -1;
    imgw_tls_ctx_free(l->tls_ctx);
    l->tls_ctx = NULL;
    imgw_tw_free(&l->tw);
    imgw__conn_pools_trim(l, 0);
    if (uv_loop_close(&l->uv) != 0) {
        uv_walk(&l->uv, close_walk_cb, NULL);
        uv_run(&l->uv, UV_RUN_DEFAULT);
        uv_loop_close(&l->uv);
    }
    uv_mutex_lock(&l->net->done_mu);
    atomic_fetch_sub(&l->net->loops_running, 1);
    uv_cond_broadcast(&l->net->done_cv);
    uv_mutex_unlock(&l->net->done_mu);
}

/* ---- net-wide ---------------------------------------------------------- */

/* Refused starts that can still read the holder's pid (a few hundred bytes
 * of kernel memory each until the holder exits). */
#define IMGW__PORT_LOCK_BACKLOG 64

/* Fills ss/sl for bind_addr:port; IMGW_ECONFIG for a non-literal. */
static int
parse_bind(const char *bind_addr, uint16_t port, struct sockaddr_storage *ss,
           socklen_t *sl, char *err, size_t errlen)
{
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, bind_addr, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons(port);
        *sl = sizeof(*s4);
    } else if (inet_pton(AF_INET6, bind_addr, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(port);
        *sl = sizeof(*s6);
    } else {
        snprintf(err, errlen, "server.bind: '%s' is not an IP address",
                 bind_addr);
        return IMGW_ECONFIG;
    }
    return 0;
}

/*
 * The pid of the imgw process holding the port lock `name` (an abstract
 * unix socket, see take_port_lock), or -1 when it cannot be told. A unix
 * stream connect completes at once and SO_PEERCRED then names the process
 * that called listen() on the lock. The connection is never accepted; it
 * sits in the holder's backlog (IMGW__PORT_LOCK_BACKLOG) until the holder
 * exits, so after that many refused starts the connect fails and the pid
 * is just not shown.
 */
static long
port_lock_holder(const struct sockaddr_un *name, socklen_t namelen)
{
    long pid = -1;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct ucred uc;
    socklen_t ul = sizeof(uc);
    if (connect(fd, (const struct sockaddr *)name, namelen) == 0 &&
        getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &ul) == 0 && uc.pid > 0)
        pid = (long)uc.pid;
    close(fd);
    return pid;
}

/*
 * Makes bind_addr:port this process's own before any SO_REUSEPORT listener
 * is bound (issue 18: a second imgw on the same port used to start without
 * a word, and the kernel split the clients between two separate stores).
 *
 * SO_REUSEPORT lets any process of the same user join a port, so two
 * checks keep it to one process:
 *  1. A lock: an abstract-namespace unix socket named after the address
 *     and port, bound and listened on. The kernel frees it when the
 *     process dies (no stale pidfile), and a second imgw's bind fails
 *     with EADDRINUSE: it is refused and names the holder's pid.
 *  2. A probe: a TCP socket bound to the same address and port without
 *     SO_REUSEPORT, then closed. The kernel refuses it while any socket
 *     covers the address (another imgw on an overlapping address such as
 *     0.0.0.0 against 127.0.0.1, or any other program), whatever that
 *     socket's options.
 * Returns the lock's fd (kept open until the drain or imgw_net_free), or
 * UV_EADDRINUSE with err saying who holds the port, or another negative
 * code.
 */
static int
take_port_lock(const char *bind_addr, uint16_t port, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    int r = parse_bind(bind_addr, port, &ss, &sl, err, errlen);
    if (r != 0)
        return r;
    /* The name uses the parsed address, so "::0" and "::" are one lock. */
    char addr[INET6_ADDRSTRLEN];
    const void *a =
        ss.ss_family == AF_INET
            ? (const void *)&((struct sockaddr_in *)&ss)->sin_addr
            : (const void *)&((struct sockaddr_in6 *)&ss)->sin6_addr;
    inet_ntop(ss.ss_family, a, addr, sizeof(addr));
    struct sockaddr_un un;
    memset(&un, 0, sizeof(un));
    un.sun_family = AF_UNIX;
    int nl = snprintf(un.sun_path + 1, sizeof(un.sun_path) - 1,
                      "imgw/listen/%s/%u", addr, port);
    socklen_t unlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) +
                                  1 + (size_t)nl);

    int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (lfd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -errno;
    }
    if (bind(lfd, (struct sockaddr *)&un, unlen) != 0 ||
        listen(lfd, IMGW__PORT_LOCK_BACKLOG) != 0) {
        int e = errno;
        close(lfd);
        if (e != EADDRINUSE) {
            snprintf(err, errlen, "port %u: cannot take the port lock: %s",
                     port, strerror(e));
            return -e;
        }
        long pid = port_lock_holder(&un, unlen);
        char who[32] = "pid unknown";
        if (pid > 0)
            snprintf(who, sizeof(who), "pid %ld", pid);
        snprintf(err, errlen,
                 "port %u is already served by another imgw process (%s) "
                 "on %s",
                 port, who, bind_addr);
        return UV_EADDRINUSE;
    }

    int pfd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (pfd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        close(lfd);
        return -errno;
    }
    int one = 1;
    setsockopt(pfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(pfd, (struct sockaddr *)&ss, sl) != 0) {
        int e = errno;
        close(pfd);
        close(lfd);
        if (e == EADDRINUSE) {
            snprintf(err, errlen,
                     "port %u on %s is already in use by another process "
                     "(another imgw on an overlapping address, or another "
                     "program)",
                     port, bind_addr);
            return UV_EADDRINUSE;
        }
        snprintf(err, errlen, "listen on %s:%u: %s", bind_addr, port,
                 strerror(e));
        return -e;
    }
    close(pfd);
    return lfd;
}

static int
make_listener(const char *bind_addr, uint16_t port, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    int r = parse_bind(bind_addr, port, &ss, &sl, err, errlen);
    if (r != 0)
        return r;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
                    0);
    if (fd < 0) {
        snprintf(err, errlen, "socket: %s", strerror(errno));
        return -errno;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0 ||
        bind(fd, (struct sockaddr *)&ss, sl) != 0) {
        int e = errno;
        snprintf(err, errlen, "listen on %s:%u: %s", bind_addr, port,
                 strerror(e));
        close(fd);
        return -e;
    }
    if (listen(fd, 4096) != 0) {
        int e = errno;
        snprintf(err, errlen, "listen on %s:%u: %s", bind_addr, port,
                 strerror(e));
        close(fd);
        return -e;
    }
    return fd;
}

/* Closes the port locks: once no loop listens any more (drain) a successor
 * may take the ports, or at imgw_net_free. Main thread, or the loop that
 * closed the last listeners (the others no longer touch them). */
static void
release_port_locks(imgw_net_t *n)
{
    for (int i = 0; i < n->n_port_locks; i++)
        if (n->port_locks[i] >= 0) {
            close(n->port_locks[i]);
            n->port_locks[i] = -1;
        }
    n->n_port_locks = 0;
}

int
imgw_net_new(imgw_net_t **out, const imgw_net_opts_t *opts, char *err,
             size_t errlen)
{
    imgw_net_t *n = imgw_try_calloc(1, sizeof(*n));
    if (n == NULL)
        return IMGW_ENOMEM;
    n->opts = *opts;
    n->h = opts->handlers;
    n->protos = net_protos;
    snprintf(n->bind, sizeof(n->bind), "%s", opts->bind);
    n->opts.bind = n->bind;
    if (opts->n_ports + opts->n_tls_ports > IMGW_MAX_LISTENERS) {
        imgw_free(n);
        return IMGW_EINVAL;
    }
    if (opts->n_ports > 0) /* ports may be NULL then: memcpy(NULL) is UB */
        memcpy(n->ports, opts->ports, (size_t)opts->n_ports * sizeof(uint16_t));
    n->opts.ports = n->ports;
    n->n_loops = opts->n_loops;
    uv_mutex_init(&n->done_mu);
    uv_cond_init(&n->done_cv);
    atomic_store(&n->loops_listening, opts->n_loops);
    for (int p = 0; p < opts->n_ports + opts->n_tls_ports; p++) {
        uint16_t port = p >= opts->n_ports ? opts->tls_ports[p - opts->n_ports]
                                           : opts->ports[p];
        int fd = take_port_lock(opts->bind, port, err, errlen);
        if (fd < 0) {
            release_port_locks(n);
            uv_mutex_destroy(&n->done_mu);
            uv_cond_destroy(&n->done_cv);
            imgw_free(n);
            return fd;
        }
        n->port_locks[n->n_port_locks++] = fd;
    }
    n->loops = imgw_try_calloc((size_t)n->n_loops, sizeof(*n->loops));
    if (n->loops == NULL || imgw_iplimit_new(&n->iplimit) != 0) {
        release_port_locks(n);
        imgw_free(n->loops);
        imgw_free(n);
        return IMGW_ENOMEM;
    }
    for (int i = 0; i < n->n_loops; i++) {
        imgw_loop_t *l = imgw_try_calloc(1, sizeof(*l));
        if (l == NULL) {
            imgw_net_free(n);
            return IMGW_ENOMEM;
        }
        n->loops[i] = l;
        l->index = i;
        l->net = n;
        for (int k = 0; k < IMGW_MAX_LISTENERS; k++)
            l->listen_fds[k] = -1;
        int r = uv_loop_init(&l->uv);
        if (r != 0) {
            snprintf(err, errlen, "uv_loop_init: %s", uv_strerror(r));
            imgw_net_free(n);
            return r;
        }
        uv_sem_init(&l->started, 0);
        for (int p = 0; p < opts->n_ports + opts->n_tls_ports; p++) {
            int tls = p >= opts->n_ports;
            uint16_t port = tls ? opts->tls_ports[p - opts->n_ports]
                                : opts->ports[p];
            int fd = make_listener(opts->bind, port, err, errlen);
            if (fd < 0) {
                imgw_net_free(n);
                return fd;
            }
            l->listener_tls[l->n_listeners] = (uint8_t)tls;
            l->listen_fds[l->n_listeners++] = fd;
        }
    }
    *out = n;
    return 0;
}

int
imgw_net_start(imgw_net_t *n)
{
    int first_err = 0;
    for (int i = 0; i < n->n_loops; i++) {
        imgw_loop_t *l = n->loops[i];
        atomic_fetch_add(&n->loops_running, 1);
        int r = uv_thread_create(&l->thread, loop_thread, l);
        if (r != 0) {
            atomic_fetch_sub(&n->loops_running, 1);
            return r;
        }
        uv_sem_wait(&l->started);
        if (l->start_err && !first_err)
            first_err = l->start_err;
    }
    return first_err;
}

void
imgw_net_drain(imgw_net_t *n, int drain_ms)
{
    if (atomic_exchange(&n->draining, 1))
        return;
    atomic_store(&n->drain_ms, drain_ms);
    for (int i = 0; i < n->n_loops; i++)
        imgw_mailbox_post(&n->loops[i]->mbox, &n->loops[i]->stop_node);
}

int
imgw_net_join(imgw_net_t *n, int timeout_ms)
{
    uint64_t deadline = imgw_clock_mono_ns() + (uint64_t)timeout_ms * 1000000ULL;
    uv_mutex_lock(&n->done_mu);
    while (atomic_load(&n->loops_running) > 0) {
        uint64_t now = imgw_clock_mono_ns();
        if (now >= deadline)
            break;
        uv_cond_timedwait(&n->done_cv, &n->done_mu, deadline - now);
    }
    int left = atomic_load(&n->loops_running);
    uv_mutex_unlock(&n->done_mu);
    if (left > 0)
        return UV_ETIMEDOUT;
    for (int i = 0; i < n->n_loops; i++)
        uv_thread_join(&n->loops[i]->thread);
    return 0;
}

void
imgw_net_free(imgw_net_t *n)
{
    if (n == NULL)
        return;
    for (int i = 0; i < n->n_loops; i++) {
        imgw_loop_t *l = n->loops[i];
        if (l == NULL)
            continue;
        for (int k = 0; k < l->n_listeners; k++)
            if (l->listen_fds[k] >= 0)
                close(l->listen_fds[k]);
        imgw_free(l->slots);
        imgw_free(l->gens);
        imgw_free(l->free_slots);
        imgw_free(l);
    }
    imgw_free(n->loops);
    release_port_locks(n);
    imgw_iplimit_free(n->iplimit);
    uv_mutex_destroy(&n->done_mu);
    uv_cond_destroy(&n->done_cv);
    imgw_free(n);
}

int
imgw_net_n_loops(const imgw_net_t *n)
{
    return n->n_loops;
}

imgw_loop_t *
imgw_net_loop(imgw_net_t *n, int i)
{
    return n->loops[i];
}

int
imgw_net_draining(const imgw_net_t *n)
{
    return atomic_load(&((imgw_net_t *)n)->draining);
}

long
imgw_net_conn_count(const imgw_net_t *n)
{
    return atomic_load(&((imgw_net_t *)n)->conns);
}

void *
imgw_net_data(imgw_net_t *n)
{
    return n->opts.data;
}

int
imgw_loop_post(imgw_loop_t *l, imgw_mpsc_node_t *node)
{
    return imgw_mailbox_post(&l->mbox, node);
}

int
imgw_net_post(imgw_net_t *n, int loop, imgw_mpsc_node_t *node)
{
    int r;
    atomic_fetch_add(&n->ext_posting, 1);
    if (atomic_load(&n->closing))
        r = IMGW_ECLOSED;
    else
        r = imgw_mailbox_post(&n->loops[loop]->mbox, node);
    atomic_fetch_sub(&n->ext_posting, 1);
    return r;
}

int
imgw_loop_index(const imgw_loop_t *l)
{
    return l->index;
}

uv_loop_t *
imgw_loop_uv(imgw_loop_t *l)
{
    return &l->uv;
}

imgw_net_t *
imgw_loop_net(imgw_loop_t *l)
{
    return l->net;
}

void *
imgw_loop_data(imgw_loop_t *l)
{
    return l->data;
}

void
imgw_loop_set_data(imgw_loop_t *l, void *data)
{
    l->data = data;
}

uint64_t
imgw_loop_now_ms(imgw_loop_t *l)
{
    return l->now_ms;
}

void
imgw_loop_stats(imgw_loop_t *l, imgw_loop_stats_t *out)
{
    /* Any thread: relaxed loads of counters that only the loop writes
     * (base/stat.h); a scrape sees each a moment old at most. */
#define IMGW__LOOP_STAT_COPY(name, what) out->name = imgw_stat_get(&l->st.name);
    IMGW_LOOP_COUNTERS(IMGW__LOOP_STAT_COPY)
#undef IMGW__LOOP_STAT_COPY
    imgw_mailbox_stats(&l->mbox, &out->mailbox_drained, &out->mailbox_wakeups,
                       &out->mailbox_last_batch, &out->mailbox_depth);
}
