/*
 * worker.c: one imgw-bench worker process: its loop, its slice of the
 * connections, and the scenario logic (setup, barrier, measured phase,
 * drain, result). Everything runs on the worker's loop thread, except the
 * downlink publisher thread, which shares only atomic counters with it.
 *
 * Phases: SETUP opens the connections at a paced rate (--rate for connect
 * and storm, --conn-rate otherwise) and waits for each to authenticate or
 * fail; then the worker tells the parent 'R' and blocks until 'G', so that
 * every worker starts the measured phase together and the parent can read
 * the server's CPU and RSS in between. RUN sends at the open-loop rate; DRAIN
 * waits for the last acks and pushes; the result goes back as 'D' + a raw
 * bresult_t, and the worker exits (the kernel closes its sockets).
 */
#include "worker.h"

#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

enum { P_SETUP = 0, P_RUN, P_DRAIN, P_HOLD, P_STORM, P_DONE };

typedef struct bstream_s {
    uint64_t sent;        /* sends issued on this stream */
    uint64_t err;         /* of which acked with an error */
    _Atomic uint64_t pub; /* downlink: published (publisher thread) */
    uint64_t pubn;        /* downlink: numbers issued (publisher thread) */
    int32_t sender;       /* conn index, -1 for downlink */
    int32_t gstream;      /* global id: pair, group or receiver index */
    uint32_t fanout;      /* receivers READY when the phase started */
} bstream_t;

typedef struct qent_s {
    uint64_t due;
    uint32_t idx;
} qent_t;

struct bworker_s {
    uv_loop_t loop;
    const bopts_t *o;
    int wid;
    int rfd, wfd;
    bresult_t *r;
    bconn_t *c;
    uint32_t n;
    bstream_t *s;
    uint32_t ns;
    uv_timer_t tick;
    uv_timer_t hb;
    int phase;
    qent_t *q; /* connect schedule, by due time */
    uint32_t qn, qpos;
    uint32_t setup_count;
    uint64_t t_setup0, t_phase0, t_phase_end, deadline;
    double rate; /* this worker's share */
    double conn_rate;
    uint64_t total, issued;
    uint32_t rr;
    uint64_t deliv_expected, deliv_uniq, outstanding;
    uint64_t t_drop;
    uint32_t storm_n, storm_done;
    struct rusage ru0;
    uint8_t *rbuf;
    size_t rbuf_len;
    uint8_t *wbuf;
    size_t wbuf_len;
    char *content;
    uint32_t rng;
    int64_t wall_minus_mono; /* CLOCK_REALTIME ns - uv_hrtime() */
    uint32_t hb_slot;        /* next heartbeat slice */
    pthread_t pub;
    _Atomic int pub_done;
    int pub_started;
};

/* ---- accessors for conn.c --------------------------------------------- */

uv_loop_t *
bench_loop(bworker_t *w)
{
    return &w->loop;
}

uint8_t *
bench_rbuf(bworker_t *w, size_t *len)
{
    *len = w->rbuf_len;
    return w->rbuf;
}

uint8_t *
bench_wbuf(bworker_t *w, size_t *len)
{
    *len = w->wbuf_len;
    return w->wbuf;
}

const bopts_t *
bench_opts(bworker_t *w)
{
    return w->o;
}

uint32_t
bench_rand(bworker_t *w)
{
    uint32_t x = w->rng;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return w->rng = x;
}

/* ---- small helpers ---------------------------------------------------- */

static uint64_t
cpu_us(const struct rusage *ru)
{
    return (uint64_t)ru->ru_utime.tv_sec * 1000000 + ru->ru_utime.tv_usec +
           (uint64_t)ru->ru_stime.tv_sec * 1000000 + ru->ru_stime.tv_usec;
}

static uint64_t
cpu_since(const struct rusage *ru0)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return cpu_us(&ru) - cpu_us(ru0);
}

static uint64_t
sys_since(const struct rusage *ru0)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (uint64_t)(ru.ru_stime.tv_sec - ru0->ru_stime.tv_sec) * 1000000 +
           (uint64_t)(ru.ru_stime.tv_usec - ru0->ru_stime.tv_usec);
}

static void
set_err(bworker_t *w, const bconn_t *c, const char *why)
{
    if (w->r->err[0] == 0)
        snprintf(w->r->err, sizeof(w->r->err), "%s: %s", c->user, why);
}

static char *
put_u64(char *p, uint64_t v)
{
    char tmp[24];
    int i = 0;
    do {
        tmp[i++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (i)
        *p++ = tmp[--i];
    return p;
}

static char *
put_hex(char *p, uint64_t v)
{
    static const char hx[] = "0123456789abcdef";
    char tmp[20];
    int i = 0;
    do {
        tmp[i++] = hx[v & 15];
        v >>= 4;
    } while (v);
    while (i)
        *p++ = tmp[--i];
    return p;
}

/*
 * Parses "<stream>:<n>:<hex intended time>:<hex actual send time>:" at the
 * start of content.
 */
static int
parse_content(const uint8_t *p, size_t len, uint64_t *stream, uint64_t *n,
              uint64_t *t, uint64_t *ta)
{
    uint64_t v[4] = {0, 0, 0, 0};
    size_t i = 0;
    for (int f = 0; f < 4; f++) {
        size_t start = i;
        while (i < len && p[i] != ':') {
            uint8_t ch = p[i];
            if (f < 2) {
                if (ch < '0' || ch > '9')
                    return -1;
                v[f] = v[f] * 10 + (ch - '0');
            } else {
                int d = ch >= '0' && ch <= '9'   ? ch - '0'
                        : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                                                 : -1;
                if (d < 0)
                    return -1;
                v[f] = v[f] * 16 + (uint64_t)d;
            }
            i++;
        }
        if (i == len || i == start)
            return -1;
        i++;
    }
    *stream = v[0];
    *n = v[1];
    *t = v[2];
    *ta = v[3];
    return 0;
}

/*
 * Writes "<stream>:<n>:<hex t>:<hex ta>:" padded with 'x' to size into buf
 * and returns its length. Any thread (the downlink publisher uses it too).
 */
static size_t
make_content(char *buf, int size, uint64_t stream, uint64_t n, uint64_t t,
             uint64_t ta)
{
    char *p = buf;
    p = put_u64(p, stream);
    *p++ = ':';
    p = put_u64(p, n);
    *p++ = ':';
    p = put_hex(p, t);
    *p++ = ':';
    p = put_hex(p, ta);
    *p++ = ':';
    size_t len = (size_t)(p - buf);
    if (len < (size_t)size) {
        memset(p, 'x', (size_t)size - len);
        len = (size_t)size;
    }
    buf[len] = 0;
    return len;
}

static void finish(bworker_t *w);
static void start_phase(bworker_t *w, uint64_t now);

/* ---- setup ------------------------------------------------------------ */

static void
setup_progress(bworker_t *w)
{
    if (w->phase == P_SETUP && w->setup_count == w->n)
        start_phase(w, uv_hrtime());
}

void
bench_on_ready(bconn_t *c, uint64_t now)
{
    bworker_t *w = c->w;
    if (w->phase == P_SETUP) {
        if (c->counted)
            return;
        c->counted = 1;
        w->r->conns_ok++;
        bhist_record(&w->r->h_conn, now - c->t_conn);
        w->setup_count++;
        setup_progress(w);
    } else if (w->phase == P_STORM) {
        if (c->counted)
            return;
        c->counted = 1;
        w->r->reconnect_ok++;
        bhist_record(&w->r->h_lat, now - c->t_conn);
        bhist_record(&w->r->h_storm, now - w->t_drop);
        w->storm_done++;
        if (w->storm_done == w->storm_n)
            finish(w);
    }
}

void
bench_on_fail(bconn_t *c, int http_status, int auth_code, const char *why)
{
    bworker_t *w = c->w;
    set_err(w, c, why);
    if (w->phase == P_SETUP) {
        if (c->counted)
            return;
        c->counted = 1;
        w->r->conns_fail++;
        if (http_status)
            w->r->http_fail++;
        if (auth_code)
            w->r->auth_fail++;
        w->setup_count++;
        setup_progress(w);
    } else if (w->phase == P_STORM) {
        if (c->counted)
            return;
        c->counted = 1;
        w->r->reconnect_fail++;
        w->storm_done++;
        if (w->storm_done == w->storm_n)
            finish(w);
    } else {
        w->r->closed_unexpected++;
    }
}

void
bench_on_closed(bconn_t *c, const char *why)
{
    bworker_t *w = c->w;
    if (w->phase == P_DONE)
        return;
    w->r->closed_unexpected++;
    set_err(w, c, why);
}

void
bench_on_kick(bconn_t *c)
{
    c->w->r->kicked++;
    set_err(c->w, c, "kicked");
}

void
bench_on_error_rsp(bconn_t *c, int code)
{
    c->w->r->error_rsp++;
    char why[48];
    snprintf(why, sizeof(why), "CMD_ERROR_RSP code %d", code);
    set_err(c->w, c, why);
}

/* ---- messages --------------------------------------------------------- */

void
bench_on_ack(bconn_t *c, uint32_t seq, int err, uint64_t now)
{
    bworker_t *w = c->w;
    if (c->role != BR_SEND || c->outstanding == 0)
        return;
    c->outstanding--;
    w->outstanding--;
    if (err) {
        bstream_t *s = &w->s[c->stream];
        w->r->acked_err++;
        s->err++;
        w->deliv_expected -= s->fanout;
        if (w->r->ack_err_code == 0)
            w->r->ack_err_code = (uint64_t)err;
        return;
    }
    w->r->acked_ok++;
    if (seq <= c->next_n && c->next_n - seq < BC_RING && seq > 0)
        bhist_record(&w->r->h_ack, now - c->ring[seq % BC_RING]);
}

void
bench_on_push(bconn_t *c, const uint8_t *content, size_t clen, int64_t seq,
              int64_t server_ms, uint64_t now)
{
    bworker_t *w = c->w;
    uint64_t gs, n, t, ta;
    if (c->role != BR_RECV || content == NULL ||
        parse_content(content, clen, &gs, &n, &t, &ta) < 0 ||
        gs != (uint64_t)w->s[c->stream].gstream || n == 0 || n > (1u << 30)) {
        w->r->misrouted++;
        return;
    }
    if (seq > 0) {
        if (c->last_seq > 0 && seq != c->last_seq + 1)
            w->r->seq_gaps++;
        c->last_seq = seq;
    }
    uint64_t byte = n >> 3;
    if (byte >= c->bitcap) {
        uint32_t cap = c->bitcap ? c->bitcap : 64;
        while (cap <= byte)
            cap *= 2;
        uint8_t *nb = realloc(c->bits, cap);
        if (nb == NULL) {
            w->r->misrouted++;
            return;
        }
        memset(nb + c->bitcap, 0, cap - c->bitcap);
        c->bits = nb;
        c->bitcap = cap;
    }
    uint8_t bit = (uint8_t)(1u << (n & 7));
    if (c->bits[byte] & bit) {
        w->r->dup++;
        return;
    }
    c->bits[byte] |= bit;
    c->uniq++;
    w->deliv_uniq++;
    w->r->received++;
    bhist_record(&w->r->h_lat, now > t ? now - t : 0);
    bhist_record(&w->r->h_lat_actual, now > ta ? now - ta : 0);
    if (server_ms > 0) {
        /* server_time is wall-clock ms; map it onto uv_hrtime(). It is
         * truncated to the ms, so this under-reads by up to 1 ms. */
        int64_t smono = server_ms * 1000000 - w->wall_minus_mono;
        bhist_record(&w->r->h_up,
                     smono > (int64_t)ta ? (uint64_t)(smono - (int64_t)ta) : 0);
    }
}

static void
send_one(bworker_t *w, bstream_t *s, uint64_t intended, uint64_t now)
{
    bconn_t *c = &w->c[s->sender];
    if (c->state != BC_READY) {
        w->r->skipped++;
        return;
    }
    uint32_t n = ++c->next_n;
    c->ring[n % BC_RING] = intended;
    char cmid[64];
    char *p = cmid;
    *p++ = 'b';
    p = put_u64(p, (uint64_t)s->gstream);
    *p++ = '-';
    p = put_u64(p, n);
    *p++ = '-';
    size_t rl = strlen(w->o->runid);
    memcpy(p, w->o->runid, rl);
    p += rl;
    size_t clen = make_content(w->content, w->o->size, (uint64_t)s->gstream, n,
                               intended, now);
    int rc = bconn_send_msg(c, n, cmid, (size_t)(p - cmid),
                            (const uint8_t *)w->content, clen,
                            w->o->scenario == SC_GROUP);
    if (rc < 0) {
        c->next_n--;
        w->r->skipped++;
        set_err(w, c, uv_strerror(rc));
        return;
    }
    w->r->sent++;
    s->sent++;
    c->outstanding++;
    w->outstanding++;
    w->deliv_expected += s->fanout;
}

/* ---- downlink publisher (its own thread; rabbitmq-c blocks) ------------ */

static void *
pub_main(void *arg)
{
    bworker_t *w = arg;
    const bopts_t *o = w->o;
    char *url = strdup(o->amqp_url);
    struct amqp_connection_info ci;
    amqp_connection_state_t conn = NULL;
    char *body = malloc((size_t)o->size + 1024);
    char *content = malloc((size_t)o->size + 64);
    if (url == NULL || body == NULL || content == NULL ||
        amqp_parse_url(url, &ci) != AMQP_STATUS_OK) {
        snprintf(w->r->err, sizeof(w->r->err), "bad --amqp URL");
        goto out;
    }
    conn = amqp_new_connection();
    amqp_socket_t *sock = amqp_tcp_socket_new(conn);
    struct timeval tmo = {5, 0};
    if (sock == NULL ||
        amqp_socket_open_noblock(sock, ci.host, ci.port, &tmo) != 0) {
        snprintf(w->r->err, sizeof(w->r->err), "amqp: cannot connect");
        goto out;
    }
    amqp_rpc_reply_t rr =
        amqp_login(conn, ci.vhost, 0, 131072, 0, AMQP_SASL_METHOD_PLAIN,
                   ci.user, ci.password);
    if (rr.reply_type != AMQP_RESPONSE_NORMAL) {
        snprintf(w->r->err, sizeof(w->r->err), "amqp: login failed");
        goto out;
    }
    amqp_channel_open(conn, 1);
    if (amqp_get_rpc_reply(conn).reply_type != AMQP_RESPONSE_NORMAL) {
        snprintf(w->r->err, sizeof(w->r->err), "amqp: channel failed");
        goto out;
    }
    amqp_basic_properties_t props;
    memset(&props, 0, sizeof(props));
    props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
    props.content_type = amqp_cstring_bytes("application/json");
    props.delivery_mode = 1;
    uint64_t t0 = w->t_phase0, issued = 0, rr_i = 0;
    while (issued < w->total) {
        uint64_t now = uv_hrtime();
        /* message k is due at t0 + k / rate: k = 0 at once */
        uint64_t due = (uint64_t)((double)(now - t0) * w->rate / 1e9) + 1;
        if (due > w->total)
            due = w->total;
        for (; issued < due; issued++) {
            bstream_t *s = &w->s[rr_i++ % w->ns];
            uint64_t intended = t0 + (uint64_t)((double)issued * 1e9 / w->rate);
            uint64_t n = ++s->pubn;
            make_content(content, o->size, (uint64_t)s->gstream, n, intended,
                         uv_hrtime());
            int bl = snprintf(
                body, (size_t)o->size + 1024,
                "{\"code\":202,\"ids\":[\"bd%d\"],\"data\":{\"message_id\":"
                "\"%llu\",\"client_msg_id\":\"d%d-%llu-%s\",\"sender_id\":"
                "\"bench\",\"receiver_id\":\"bd%d\",\"message_type\":1,"
                "\"content\":\"%s\"}}",
                s->gstream, (unsigned long long)n, s->gstream,
                (unsigned long long)n, o->runid, s->gstream, content);
            amqp_bytes_t b = {(size_t)bl, body};
            int rc = amqp_basic_publish(
                conn, 1, amqp_cstring_bytes("imgw.direct"),
                amqp_cstring_bytes(o->broker_id), 0, 0, &props, b);
            if (rc == AMQP_STATUS_OK)
                atomic_fetch_add(&s->pub, 1);
            else {
                s->pubn--;
                w->r->publish_fail++;
            }
        }
        if (issued < w->total)
            usleep(500);
    }
out:
    if (conn) {
        amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
        amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
        amqp_destroy_connection(conn);
    }
    free(url);
    free(body);
    free(content);
    atomic_store(&w->pub_done, 1);
    return NULL;
}

/* ---- phases ----------------------------------------------------------- */

static int
cmp_qent(const void *a, const void *b)
{
    const qent_t *x = a, *y = b;
    return x->due < y->due ? -1 : x->due > y->due;
}

/*
 * Heartbeats are spread evenly: the timer fires every HB_TICK_MS and serves
 * one of HB_SLOTS slices of the connections, so each connection sends one
 * every HB_TICK_MS * HB_SLOTS = 30 s, as independent clients would, instead
 * of the whole worker bursting at once.
 */
#define HB_TICK_MS 100
#define HB_SLOTS 300

static void
on_heartbeat(uv_timer_t *t)
{
    bworker_t *w = t->data;
    uint32_t slot = w->hb_slot++ % HB_SLOTS;
    uint32_t step = HB_SLOTS;
    if (w->o->hb_burst) {
        /* --heartbeat-burst: everyone in the same tick, every 30 s */
        if (slot != HB_SLOTS - 1)
            return;
        slot = 0;
        step = 1;
    }
    for (uint32_t i = slot; i < w->n; i += step)
        if (w->c[i].state == BC_READY)
            bconn_send_heartbeat(&w->c[i]);
}

/* Barrier with the parent: 'R' up, wait for 'G'. */
static void
barrier(bworker_t *w)
{
    char ch = 'R';
    if (write(w->wfd, &ch, 1) != 1)
        _exit(3);
    if (read(w->rfd, &ch, 1) != 1 || ch != 'G')
        _exit(3);
}

static void
start_phase(bworker_t *w, uint64_t now)
{
    bresult_t *r = w->r;
    r->setup_ns = now - w->t_setup0;
    r->cpu_setup_us = cpu_since(&w->ru0);
    r->cpu_setup_sys_us = sys_since(&w->ru0);
    barrier(w);
    now = uv_hrtime();
    getrusage(RUSAGE_SELF, &w->ru0);
    w->t_phase0 = now;
    for (uint32_t i = 0; i < w->n; i++) {
        bconn_t *c = &w->c[i];
        c->was_ready = c->state == BC_READY;
        if (c->was_ready && c->role == BR_RECV)
            w->s[c->stream].fanout++;
    }
    switch (w->o->scenario) {
    case SC_CONNECT:
        w->phase = P_HOLD;
        w->deadline = now + (uint64_t)(w->o->hold * 1e9);
        break;
    case SC_RELAY:
    case SC_GROUP:
        w->phase = P_RUN;
        w->total = w->ns ? (uint64_t)(w->rate * w->o->duration + 0.5) : 0;
        w->issued = 0;
        break;
    case SC_DOWNLINK:
        w->phase = P_RUN;
        w->total = w->ns ? (uint64_t)(w->rate * w->o->duration + 0.5) : 0;
        if (pthread_create(&w->pub, NULL, pub_main, w) != 0) {
            snprintf(r->err, sizeof(r->err), "cannot start publisher");
            atomic_store(&w->pub_done, 1);
        } else
            w->pub_started = 1;
        break;
    case SC_STORM: {
        w->phase = P_STORM;
        w->t_drop = now;
        w->qn = 0;
        for (uint32_t i = 0; i < w->n; i++) {
            bconn_t *c = &w->c[i];
            if (!c->was_ready)
                continue;
            bconn_close(c);
            c->counted = 0;
            double u = (double)bench_rand(w) / 4294967296.0;
            w->q[w->qn].due = now + (uint64_t)(u * w->o->jitter * 1e9);
            w->q[w->qn].idx = i;
            w->qn++;
        }
        qsort(w->q, w->qn, sizeof(qent_t), cmp_qent);
        w->qpos = 0;
        w->storm_n = w->qn;
        w->storm_done = 0;
        w->deadline = now + (uint64_t)((w->o->jitter + w->o->timeout) * 1e9);
        if (w->storm_n == 0)
            finish(w);
        break;
    }
    }
    double long_run =
        w->o->scenario == SC_CONNECT ? w->o->hold : w->o->duration;
    if (long_run > 40)
        uv_timer_start(&w->hb, on_heartbeat, HB_TICK_MS, HB_TICK_MS);
}

static void
on_tick(uv_timer_t *t)
{
    bworker_t *w = t->data;
    uint64_t now = uv_hrtime();
    switch (w->phase) {
    case P_SETUP:
        while (w->qpos < w->qn && w->q[w->qpos].due <= now) {
            bconn_start(&w->c[w->q[w->qpos].idx]);
            w->qpos++;
        }
        if (w->phase == P_SETUP && now > w->deadline) {
            for (uint32_t i = 0; i < w->n; i++) {
                bconn_t *c = &w->c[i];
                if (!c->counted) {
                    if (c->state == BC_IDLE)
                        c->state = BC_CONNECTING;
                    bench_on_fail(c, 0, 0, "setup timeout");
                    bconn_close(c);
                }
            }
        }
        break;
    case P_RUN:
        if (w->o->scenario == SC_DOWNLINK) {
            if (atomic_load(&w->pub_done)) {
                pthread_join(w->pub, NULL);
                w->pub_started = 0;
                uint64_t pub = 0;
                for (uint32_t i = 0; i < w->ns; i++) {
                    uint64_t p = atomic_load(&w->s[i].pub);
                    pub += p;
                    w->s[i].sent = p;
                    w->deliv_expected += p * w->s[i].fanout;
                }
                w->r->sent = pub;
                w->phase = P_DRAIN;
                w->t_phase_end = now;
                w->deadline = now + (uint64_t)(w->o->drain * 1e9);
            }
            break;
        } else {
            /* message k is due at t_phase0 + k / rate: k = 0 at once */
            uint64_t due =
                (uint64_t)((double)(now - w->t_phase0) * w->rate / 1e9) + 1;
            if (due > w->total)
                due = w->total;
            for (; w->issued < due; w->issued++) {
                uint64_t intended =
                    w->t_phase0 + (uint64_t)((double)w->issued * 1e9 / w->rate);
                send_one(w, &w->s[w->rr++ % w->ns], intended, now);
            }
            if (w->issued >= w->total) {
                w->phase = P_DRAIN;
                w->t_phase_end = now;
                w->deadline = now + (uint64_t)(w->o->drain * 1e9);
            }
        }
        break;
    case P_DRAIN:
        if ((w->outstanding == 0 && w->deliv_uniq >= w->deliv_expected) ||
            now > w->deadline)
            finish(w);
        break;
    case P_HOLD:
        if (now > w->deadline) {
            w->t_phase_end = now;
            finish(w);
        }
        break;
    case P_STORM:
        while (w->qpos < w->qn && w->q[w->qpos].due <= now) {
            bconn_t *c = &w->c[w->q[w->qpos].idx];
            if (c->state != BC_CLOSED)
                break; /* its close callback has not run yet */
            bconn_start(c);
            w->qpos++;
        }
        if (w->phase == P_STORM && now > w->deadline) {
            for (uint32_t i = 0; i < w->qn; i++) {
                bconn_t *c = &w->c[w->q[i].idx];
                if (!c->counted) {
                    c->counted = 1;
                    w->r->reconnect_fail++;
                }
            }
            set_err(w, &w->c[w->q[0].idx], "storm: reconnect timeout");
            finish(w);
        }
        break;
    default:
        break;
    }
}

static ssize_t
writen(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    size_t off = 0;
    while (off < len) {
        ssize_t k = write(fd, p + off, len - off);
        if (k <= 0)
            return -1;
        off += (size_t)k;
    }
    return (ssize_t)off;
}

static void
finish(bworker_t *w)
{
    bresult_t *r = w->r;
    uint64_t now = uv_hrtime();
    if (w->phase == P_DONE)
        return;
    if (w->phase == P_STORM)
        w->t_phase_end = now;
    w->phase = P_DONE;
    r->cpu_phase_us = cpu_since(&w->ru0);
    r->cpu_phase_sys_us = sys_since(&w->ru0);
    r->phase_ns = (w->t_phase_end ? w->t_phase_end : now) - w->t_phase0;
    for (uint32_t i = 0; i < w->n; i++) {
        bconn_t *c = &w->c[i];
        if (c->role != BR_RECV || !c->was_ready)
            continue;
        bstream_t *s = &w->s[c->stream];
        uint64_t exp = s->sent - s->err;
        r->expected += exp;
        if (exp > c->uniq)
            r->lost += exp - c->uniq;
    }
    r->unacked = w->outstanding;
    char ch = 'D';
    if (writen(w->wfd, &ch, 1) < 0 || writen(w->wfd, r, sizeof(*r)) < 0)
        _exit(3);
    _exit(0);
}

/* ---- construction ----------------------------------------------------- */

static void
conn_init(bworker_t *w, uint32_t i, uint32_t gidx, int role, int stream,
          const char *user, const char *peer)
{
    bconn_t *c = &w->c[i];
    memset(c, 0, sizeof(*c));
    c->w = w;
    c->idx = i;
    c->gidx = gidx;
    c->role = (uint8_t)role;
    c->stream = stream;
    snprintf(c->user, sizeof(c->user), "%s", user);
    if (peer)
        snprintf(c->peer, sizeof(c->peer), "%s", peer);
    if (role == BR_SEND) {
        c->ring = calloc(BC_RING, sizeof(uint64_t));
        if (c->ring == NULL)
            abort();
    }
}

/* Half-open range [lo, hi) of units (conns, pairs, groups, receivers). */
static void
slice(int units, int k, int procs, int *lo, int *hi)
{
    *lo = (int)((int64_t)units * k / procs);
    *hi = (int)((int64_t)units * (k + 1) / procs);
}

int
worker_main(const bopts_t *o, int k, int procs, int rfd, int wfd)
{
    bworker_t *w = calloc(1, sizeof(*w));
    bresult_t *r = calloc(1, sizeof(*r));
    if (w == NULL || r == NULL) {
        free(w);
        free(r);
        return 2;
    }
    w->o = o;
    w->wid = k;
    w->rfd = rfd;
    w->wfd = wfd;
    w->r = r;
    w->rng = 0x9e3779b9u ^ (uint32_t)(k * 7919) ^ (uint32_t)getpid() ^
             (uint32_t)uv_hrtime();
    if (w->rng == 0)
        w->rng = 1;
    bhist_init(&r->h_conn);
    bhist_init(&r->h_lat);
    bhist_init(&r->h_ack);
    bhist_init(&r->h_storm);
    bhist_init(&r->h_lat_actual);
    bhist_init(&r->h_up);
    {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        w->wall_minus_mono =
            (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec - (int64_t)uv_hrtime();
    }
    w->rbuf_len = 256 * 1024;
    w->rbuf = malloc(w->rbuf_len);
    w->wbuf_len = bconn_worker_buf();
    w->wbuf = malloc(w->wbuf_len);
    w->content = malloc((size_t)o->size + 64);
    if (w->rbuf == NULL || w->wbuf == NULL || w->content == NULL)
        return 2;

    int lo = 0, hi = 0, units = 0;
    char u[40], p[40];
    switch (o->scenario) {
    case SC_CONNECT:
    case SC_STORM:
        units = o->conns;
        slice(units, k, procs, &lo, &hi);
        w->n = (uint32_t)(hi - lo);
        w->c = calloc(w->n ? w->n : 1, sizeof(bconn_t));
        for (int i = lo; i < hi; i++) {
            snprintf(u, sizeof(u), "bc%d", i);
            conn_init(w, (uint32_t)(i - lo), (uint32_t)i, BR_NONE, -1, u, NULL);
        }
        break;
    case SC_RELAY:
        units = o->pairs;
        slice(units, k, procs, &lo, &hi);
        w->n = (uint32_t)(2 * (hi - lo));
        w->ns = (uint32_t)(hi - lo);
        w->c = calloc(w->n ? w->n : 1, sizeof(bconn_t));
        w->s = calloc(w->ns ? w->ns : 1, sizeof(bstream_t));
        for (int i = lo; i < hi; i++) {
            uint32_t s = (uint32_t)(i - lo);
            snprintf(u, sizeof(u), "bu%d", i);
            snprintf(p, sizeof(p), "bv%d", i);
            conn_init(w, 2 * s, (uint32_t)(2 * i), BR_SEND, (int)s, u, p);
            conn_init(w, 2 * s + 1, (uint32_t)(2 * i + 1), BR_RECV, (int)s, p,
                      NULL);
            w->s[s].sender = (int32_t)(2 * s);
            w->s[s].gstream = i;
        }
        break;
    case SC_GROUP: {
        units = o->groups;
        slice(units, k, procs, &lo, &hi);
        uint32_t m = (uint32_t)o->members;
        w->ns = (uint32_t)(hi - lo);
        w->n = w->ns * m;
        w->c = calloc(w->n ? w->n : 1, sizeof(bconn_t));
        w->s = calloc(w->ns ? w->ns : 1, sizeof(bstream_t));
        for (int g = lo; g < hi; g++) {
            uint32_t s = (uint32_t)(g - lo);
            snprintf(p, sizeof(p), "bgrp%d", g);
            for (uint32_t j = 0; j < m; j++) {
                snprintf(u, sizeof(u), "bg%dm%u", g, j);
                conn_init(w, s * m + j, (uint32_t)g * m + j,
                          j == 0 ? BR_SEND : BR_RECV, (int)s, u,
                          j == 0 ? p : NULL);
            }
            w->s[s].sender = (int32_t)(s * m);
            w->s[s].gstream = g;
        }
        break;
    }
    case SC_DOWNLINK:
        units = o->receivers;
        slice(units, k, procs, &lo, &hi);
        w->n = w->ns = (uint32_t)(hi - lo);
        w->c = calloc(w->n ? w->n : 1, sizeof(bconn_t));
        w->s = calloc(w->ns ? w->ns : 1, sizeof(bstream_t));
        for (int i = lo; i < hi; i++) {
            uint32_t s = (uint32_t)(i - lo);
            snprintf(u, sizeof(u), "bd%d", i);
            conn_init(w, s, (uint32_t)i, BR_RECV, (int)s, u, NULL);
            w->s[s].sender = -1;
            w->s[s].gstream = i;
        }
        break;
    }
    r->conns = w->n;
    w->rate = units ? o->rate * (double)(hi - lo) / (double)units : 0;
    double crate = (o->scenario == SC_CONNECT || o->scenario == SC_STORM)
                       ? o->rate
                       : o->conn_rate;
    w->conn_rate = crate * (double)(hi - lo) / (double)(units ? units : 1);
    if (w->conn_rate <= 0)
        w->conn_rate = 1;

    uv_loop_init(&w->loop);
    uv_timer_init(&w->loop, &w->tick);
    uv_timer_init(&w->loop, &w->hb);
    w->tick.data = w->hb.data = w;
    w->q = calloc(w->n ? w->n : 1, sizeof(qent_t));
    getrusage(RUSAGE_SELF, &w->ru0);
    w->t_setup0 = uv_hrtime();
    for (uint32_t i = 0; i < w->n; i++) {
        w->q[i].due = w->t_setup0 + (uint64_t)((double)i * 1e9 / w->conn_rate);
        w->q[i].idx = i;
    }
    w->qn = w->n;
    w->deadline = w->t_setup0 +
                  (uint64_t)(((double)w->n / w->conn_rate + o->timeout) * 1e9);
    w->phase = P_SETUP;
    if (w->n == 0)
        start_phase(w, uv_hrtime());
    uv_timer_start(&w->tick, on_tick, 0, 1);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    return 0;
}
