/*
 * mq.c: the broker thread (RabbitMQ through rabbitmq-c 0.11); see mq.h.
 *
 * Threads: imgw_mq_start() and imgw_mq_stop() run on the owner's thread
 * (main). imgw_mq_publish/ack/reject/connected/stats run on any thread and
 * only touch the command queue, the eventfd and atomics. Everything else,
 * every rabbitmq-c call and on_message included, runs on the MQ thread,
 * which alone owns the amqp_connection_state_t (rabbitmq-c is not thread
 * safe).
 *
 * The MQ thread's life: connect + declare (mq_connect), then a loop that
 * polls the AMQP socket and the eventfd (mq_run), then teardown
 * (mq_disconnect), then capped exponential backoff with jitter before the
 * next attempt (mq_backoff), until imgw_mq_stop() raises `stopping`.
 *
 * Commands (publish, ack, reject) travel in a lock-free intrusive MPSC
 * queue (Vyukov's, as in net/mailbox.c; copied here in twenty lines so that
 * src/mq depends on neither src/net nor libuv). A producer writes the
 * eventfd only when the queue is not already armed, so a burst of publishes
 * costs one syscall.
 *
 * Delivery tags handed to on_message carry the connection generation in
 * their top 16 bits. AMQP delivery tags restart at 1 on every channel, so
 * an ack for a tag of a dead connection would, without the generation, ack
 * an unrelated message on the new one; with it the ack is dropped (the
 * broker already requeued that message when the old connection died).
 */
#include "mq.h"

#include <amqp.h>
#include <amqp_tcp_socket.h>

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "alloc.h"
#include "clock.h"
#include "err.h"
#include "log.h"
#include "mpsc.h"

#define MQ_CHANNEL 1
#define MQ_DEFAULT_EXCHANGE "imgw.direct"
#define MQ_DEFAULT_PREFETCH 256
#define MQ_DEFAULT_MAX_MESSAGE ((size_t)1 << 20)
#define MQ_SHORTSTR_MAX 255 /* AMQP short string: queue, exchange, key */

/* Publishes waiting for the MQ thread; beyond this publish fails. */
#define MQ_MAX_PENDING 100000
/*
 * Publishes sent but not yet confirmed. A power of two: the bitmap that
 * records out-of-order confirms is a ring of this many bits (8 KiB). When
 * it is full the thread stops sending until confirms come back, which is
 * also the flow control towards a slow broker.
 */
#define MQ_CONFIRM_WINDOW 65536

#define MQ_BACKOFF_MIN_MS 100
#define MQ_BACKOFF_MAX_MS 5000
/* poll() timeout: rabbitmq-c sends and checks heartbeats only when called. */
#define MQ_POLL_MS 1000
#define MQ_CONNECT_TIMEOUT_S 5
#define MQ_RPC_TIMEOUT_S 10
/* At stop: how long to wait for confirms of the last publishes. */
#define MQ_STOP_CONFIRM_MS 2000
/* Work per loop turn, so frames, publishes and acks interleave. */
#define MQ_FRAME_BUDGET 256
#define MQ_DRAIN_BUDGET 1024
/* Receive buffer for bodies; grows by doubling up to max_message. */
#define MQ_BODY_INITIAL 4096

/*
 * Consumer acks are batched: a delivery settled by imgw_mq_ack waits in a
 * ring bitmap of MQ_ACK_WINDOW tags (a power of two >= the largest
 * prefetch, so every unsettled tag fits) until every tag below it is
 * settled too, then one basic.ack with multiple = 1 covers the whole run.
 * A tag still missing after MQ_ACK_GAP_MS (a delivery some loop holds on
 * to) stops batching from holding up the others: they go out one by one.
 */
#define MQ_ACK_WINDOW 65536
#define MQ_ACK_GAP_MS 100
/*
 * Acks do not wake the MQ thread one by one: a loop acking a delivery
 * pushes the ack and writes the eventfd only when MQ_ACK_WAKE_DIV-th of
 * the prefetch window (or more) is queued; otherwise the thread collects
 * the acks when it next wakes, for the next delivery from the socket, or
 * at the latest MQ_ACK_DELAY_MS after it went to sleep with deliveries
 * still out (mq_serve). A delivery's ack thus waits at most a few ms, the
 * broker's window never runs dry, and a steady downlink costs one eventfd
 * write per batch instead of one per message.
 */
#define MQ_ACK_DELAY_MS 5
#define MQ_ACK_WAKE_DIV 4

#define MQ_TAG_BITS 48
#define MQ_TAG_MASK ((UINT64_C(1) << MQ_TAG_BITS) - 1)
#define MQ_GEN_MASK UINT64_C(0xffff)

/* ---- the command queue --------------------------------------------------- */

enum { MQ_ITEM_PUBLISH = 1, MQ_ITEM_ACK, MQ_ITEM_REJECT };

typedef struct mq_item_s {
    imgw_mpsc_node_t node; /* first: a node pointer is an item pointer */
    int kind;
    uint64_t tag;    /* ack/reject: the generation-stamped tag */
    size_t key_len;  /* publish: routing key bytes (a NUL follows) */
    size_t body_len; /* publish: body bytes after the key's NUL */
    char data[];
} mq_item_t;

struct imgw_mq_s {
    /* Immutable after start. ci's strings point into url_buf. */
    char *url_buf;
    struct amqp_connection_info ci;
    char *broker_id;
    char *exchange;
    char conn_name[300]; /* shown in the management UI */
    int prefetch;
    int heartbeat;
    char expiration[24]; /* "" or the per-message TTL in ms */
    size_t max_message;
    imgw_mq_message_cb on_message;
    void *data;
    int efd; /* eventfd: wakes the MQ thread */
    pthread_t thread;

    /* Command queue: any thread pushes, the MQ thread pops. */
    imgw_mpsc_t q;
    atomic_int armed;          /* 1 while a wake-up is pending */
    atomic_size_t acks_queued; /* acks pushed, not yet popped */
    size_t ack_wake_at;        /* acks_queued that wakes the thread */
    atomic_size_t pending;     /* publishes queued, <= MQ_MAX_PENDING */
    atomic_int stopping;

    /* Stats: written by any thread (drops) or the MQ thread, read by any. */
    atomic_uint_fast64_t consumed;
    atomic_uint_fast64_t acked;
    atomic_uint_fast64_t rejected;
    atomic_uint_fast64_t published;
    atomic_uint_fast64_t publish_dropped;
    atomic_uint_fast64_t reconnects;
    atomic_int connected;

    /* MQ thread only. */
    amqp_connection_state_t conn;
    uint64_t gen;       /* connection generation, 1 for the first */
    bool quiesce;       /* stopping: deliveries are no longer handed out */
    uint64_t next_seq;  /* publisher-confirm number of the next publish */
    uint64_t low_seq;   /* every seq below this one is confirmed/nacked */
    uint64_t *resolved; /* ring bitmap: seq confirmed out of order */
    /* Consumer acks of this connection (see MQ_ACK_WINDOW). Every delivery
     * tag <= ack_base is settled and told to the broker; above it, a tag
     * is in ack_wait (acked here, not yet sent) or ack_done (sent alone:
     * a reject, or an ack flushed past a gap), or still with a loop. */
    uint64_t *ack_wait; /* ring bitmaps of MQ_ACK_WINDOW bits */
    uint64_t *ack_done;
    uint64_t ack_base;
    uint64_t ack_hi;     /* highest tag ever put in ack_wait/ack_done */
    size_t ack_waiting;  /* bits set in ack_wait */
    uint64_t handed_out; /* deliveries given to on_message (this conn) */
    uint64_t settled;    /* of those, acked or rejected here */
    uint64_t ack_gap_ms; /* when acks started waiting behind a gap, or 0 */
    uint8_t *body;       /* receive buffer */
    size_t body_cap;
    uint64_t rng; /* xorshift state for backoff jitter */
};

/* MQ thread only. NULL when empty, or when a producer is between its two
 * steps; that producer wakes the thread after it finishes (see mq_wake),
 * so its item is popped on a later turn. */
static mq_item_t *
mq_q_pop(imgw_mq_t *mq)
{
    return (mq_item_t *)(void *)imgw_mpsc_pop(&mq->q);
}

static void
mq_efd_write(imgw_mq_t *mq)
{
    uint64_t one = 1;
    /* EAGAIN means the counter is huge, i.e. already readable: fine. */
    while (write(mq->efd, &one, sizeof(one)) < 0 && errno == EINTR)
        ;
}

/*
 * Any thread, after pushing. The seq_cst exchange pairs with the one in
 * mq_clear_wake: either we see armed == 0 and write the eventfd, or the
 * MQ thread disarms after our exchange and so pops after our push.
 */
static void
mq_wake(imgw_mq_t *mq)
{
    if (atomic_exchange(&mq->armed, 1) == 0)
        mq_efd_write(mq);
}

/* MQ thread: called when the eventfd polled readable, before draining. */
static void
mq_clear_wake(imgw_mq_t *mq)
{
    uint64_t v;
    while (read(mq->efd, &v, sizeof(v)) < 0 && errno == EINTR)
        ;
    atomic_exchange(&mq->armed, 0);
}

/* Frees an item, counting a dropped publish. */
static void
mq_item_drop(imgw_mq_t *mq, mq_item_t *it)
{
    if (it->kind == MQ_ITEM_PUBLISH) {
        atomic_fetch_sub(&mq->pending, 1);
        atomic_fetch_add(&mq->publish_dropped, 1);
    } else if (it->kind == MQ_ITEM_ACK) {
        atomic_fetch_sub_explicit(&mq->acks_queued, 1, memory_order_relaxed);
    }
    imgw_free(it);
}

/*
 * While disconnected: publishes are dropped (counted) and acks too (their
 * connection is gone, the broker requeued those deliveries).
 */
static void
mq_drop_queued(imgw_mq_t *mq)
{
    mq_item_t *it;
    while ((it = mq_q_pop(mq)) != NULL)
        mq_item_drop(mq, it);
}

/* ---- small helpers ------------------------------------------------------- */

static uint64_t
mq_rand(imgw_mq_t *mq)
{
    uint64_t x = mq->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    mq->rng = x;
    return x;
}

/* Describes a failed RPC reply into buf; returns 0 if it was NORMAL. */
static int
mq_reply_check(amqp_rpc_reply_t r, const char *what, char *buf, size_t len)
{
    switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL:
        return 0;
    case AMQP_RESPONSE_NONE:
        snprintf(buf, len, "%s: missing RPC reply", what);
        break;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        snprintf(buf, len, "%s: %s", what, amqp_error_string2(r.library_error));
        break;
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
            const amqp_connection_close_t *c = r.reply.decoded;
            snprintf(buf, len, "%s: connection closed by broker: %u %.*s", what,
                     (unsigned)c->reply_code, (int)c->reply_text.len,
                     (const char *)c->reply_text.bytes);
        } else if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
            const amqp_channel_close_t *c = r.reply.decoded;
            snprintf(buf, len, "%s: channel closed by broker: %u %.*s", what,
                     (unsigned)c->reply_code, (int)c->reply_text.len,
                     (const char *)c->reply_text.bytes);
        } else {
            snprintf(buf, len, "%s: unexpected method 0x%08x", what,
                     (unsigned)r.reply.id);
        }
        break;
    }
    return -1;
}

/* ---- publisher confirms ------------------------------------------------- */

static bool
mq_seq_resolved(const imgw_mq_t *mq, uint64_t seq)
{
    uint64_t i = seq & (MQ_CONFIRM_WINDOW - 1);
    return (mq->resolved[i / 64] >> (i % 64)) & 1;
}

static void
mq_seq_mark(imgw_mq_t *mq, uint64_t seq, bool on)
{
    uint64_t i = seq & (MQ_CONFIRM_WINDOW - 1);
    if (on)
        mq->resolved[i / 64] |= UINT64_C(1) << (i % 64);
    else
        mq->resolved[i / 64] &= ~(UINT64_C(1) << (i % 64));
}

/*
 * basic.ack / basic.nack from the broker for our publishes. `multiple`
 * resolves every outstanding seq up to and including seq. RabbitMQ confirms
 * in order in practice, but the protocol does not promise it, hence the
 * bitmap: every seq is counted exactly once, as published or as dropped.
 */
static void
mq_on_confirm(imgw_mq_t *mq, uint64_t seq, bool multiple, bool ok)
{
    if (seq == 0 || seq >= mq->next_seq) {
        IMGW_LOG_WARN_RL("mq: confirm for unknown publish %llu",
                         (unsigned long long)seq);
        return;
    }
    uint64_t from = multiple ? mq->low_seq : seq;
    if (from < mq->low_seq)
        from = mq->low_seq;
    for (uint64_t s = from; s <= seq; s++) {
        if (mq_seq_resolved(mq, s))
            continue;
        mq_seq_mark(mq, s, true);
        atomic_fetch_add(ok ? &mq->published : &mq->publish_dropped, 1);
    }
    if (!ok)
        IMGW_LOG_WARN_RL("mq: broker nacked publish %llu%s",
                         (unsigned long long)seq,
                         multiple ? " (and before)" : "");
    while (mq->low_seq < mq->next_seq && mq_seq_resolved(mq, mq->low_seq)) {
        mq_seq_mark(mq, mq->low_seq, false);
        mq->low_seq++;
    }
}

/* The connection died: publishes never confirmed count as dropped (they
 * may have reached the queue; the store has them either way). */
static void
mq_confirms_reset(imgw_mq_t *mq)
{
    for (uint64_t s = mq->low_seq; s < mq->next_seq; s++) {
        if (!mq_seq_resolved(mq, s))
            atomic_fetch_add(&mq->publish_dropped, 1);
        mq_seq_mark(mq, s, false);
    }
    mq->next_seq = 1;
    mq->low_seq = 1;
}

/* ---- consumer acks ------------------------------------------------------ */

static bool
mq_bit(const uint64_t *map, uint64_t tag)
{
    uint64_t i = tag & (MQ_ACK_WINDOW - 1);
    return (map[i / 64] >> (i % 64)) & 1;
}

static void
mq_bit_set(uint64_t *map, uint64_t tag, bool on)
{
    uint64_t i = tag & (MQ_ACK_WINDOW - 1);
    if (on)
        map[i / 64] |= UINT64_C(1) << (i % 64);
    else
        map[i / 64] &= ~(UINT64_C(1) << (i % 64));
}

/* A new connection: its delivery tags start again at 1. */
static void
mq_acks_reset(imgw_mq_t *mq)
{
    memset(mq->ack_wait, 0, MQ_ACK_WINDOW / 8);
    memset(mq->ack_done, 0, MQ_ACK_WINDOW / 8);
    mq->ack_base = mq->ack_hi = 0;
    mq->ack_waiting = 0;
    mq->ack_gap_ms = 0;
    mq->handed_out = mq->settled = 0;
}

/* Settles dtag (of the current connection) here; only a tag outside the
 * window (never with prefetch <= MQ_ACK_WINDOW) or a reject is sent at
 * once. Returns an AMQP status. */
static int
mq_ack_settle(imgw_mq_t *mq, uint64_t dtag, bool ack)
{
    if (dtag <= mq->ack_base || mq_bit(mq->ack_wait, dtag) ||
        mq_bit(mq->ack_done, dtag)) {
        IMGW_LOG_WARN_RL("mq: delivery %llu settled twice",
                         (unsigned long long)dtag);
        return AMQP_STATUS_OK;
    }
    mq->settled++;
    bool in_window = dtag - mq->ack_base < MQ_ACK_WINDOW;
    if (ack && in_window) {
        mq_bit_set(mq->ack_wait, dtag, true);
        mq->ack_waiting++;
    } else {
        int rc = ack ? amqp_basic_ack(mq->conn, MQ_CHANNEL, dtag, 0)
                     : amqp_basic_reject(mq->conn, MQ_CHANNEL, dtag, 0);
        if (rc != AMQP_STATUS_OK)
            return rc;
        atomic_fetch_add(ack ? &mq->acked : &mq->rejected, 1);
        if (!in_window)
            return AMQP_STATUS_OK;
        mq_bit_set(mq->ack_done, dtag, true);
    }
    if (dtag > mq->ack_hi)
        mq->ack_hi = dtag;
    return AMQP_STATUS_OK;
}

/*
 * Sends what the settled acks allow: one basic.ack (multiple = 1) for the
 * run of settled tags above ack_base, at its highest waiting tag (one that
 * is still outstanding at the broker: RabbitMQ closes the channel on an
 * ack for a tag it does not know, multiple or not). Acks left behind a gap
 * go out one by one when force is set or the gap is MQ_ACK_GAP_MS old.
 * Returns an AMQP status.
 */
static int
mq_ack_flush(imgw_mq_t *mq, bool force)
{
    uint64_t last = 0;
    size_t n = 0;
    while (mq->ack_base < mq->ack_hi) {
        uint64_t t = mq->ack_base + 1;
        if (mq_bit(mq->ack_wait, t)) {
            mq_bit_set(mq->ack_wait, t, false);
            last = t;
            n++;
        } else if (mq_bit(mq->ack_done, t)) {
            mq_bit_set(mq->ack_done, t, false);
        } else {
            break;
        }
        mq->ack_base = t;
    }
    if (last != 0) {
        mq->ack_waiting -= n;
        int rc = amqp_basic_ack(mq->conn, MQ_CHANNEL, last, 1);
        if (rc != AMQP_STATUS_OK)
            return rc;
        atomic_fetch_add(&mq->acked, n);
    }
    if (mq->ack_waiting == 0) {
        mq->ack_gap_ms = 0;
        return AMQP_STATUS_OK;
    }
    uint64_t now = imgw_clock_mono_ms();
    if (mq->ack_gap_ms == 0)
        mq->ack_gap_ms = now;
    if (!force && now - mq->ack_gap_ms < MQ_ACK_GAP_MS)
        return AMQP_STATUS_OK;
    for (uint64_t t = mq->ack_base + 1; t <= mq->ack_hi; t++) {
        if (!mq_bit(mq->ack_wait, t))
            continue;
        int rc = amqp_basic_ack(mq->conn, MQ_CHANNEL, t, 0);
        if (rc != AMQP_STATUS_OK)
            return rc;
        atomic_fetch_add(&mq->acked, 1);
        mq_bit_set(mq->ack_wait, t, false);
        mq_bit_set(mq->ack_done, t, true);
    }
    mq->ack_waiting = 0;
    mq->ack_gap_ms = 0;
    return AMQP_STATUS_OK;
}

/* ---- connect and declare ------------------------------------------------- */

static void
mq_tune_socket(imgw_mq_t *mq)
{
    int fd = amqp_get_sockfd(mq->conn);
    if (fd < 0)
        return;
    /*
     * A publish blocks in send() when the socket buffer is full, and
     * rabbitmq-c checks heartbeats only while reading. Bound how long
     * unacknowledged data may sit in the kernel, so a dead broker turns into
     * a socket error instead of a stuck thread.
     */
    unsigned int ms = (unsigned)(mq->heartbeat > 0 ? 2 * mq->heartbeat : 60);
    ms *= 1000;
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &ms, sizeof(ms));
    (void)setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static int
mq_login(imgw_mq_t *mq, char *why, size_t whylen)
{
    /* consumer_cancel_notify: a deleted queue cancels our consumer with a
     * basic.cancel, and we reconnect (which re-declares it), instead of
     * silently consuming nothing. rabbitmq-c merges these capabilities with
     * its defaults. */
    amqp_table_entry_t caps_e[1];
    caps_e[0].key = amqp_cstring_bytes("consumer_cancel_notify");
    caps_e[0].value.kind = AMQP_FIELD_KIND_BOOLEAN;
    caps_e[0].value.value.boolean = 1;
    amqp_table_entry_t props_e[2];
    props_e[0].key = amqp_cstring_bytes("capabilities");
    props_e[0].value.kind = AMQP_FIELD_KIND_TABLE;
    props_e[0].value.value.table.num_entries = 1;
    props_e[0].value.value.table.entries = caps_e;
    props_e[1].key = amqp_cstring_bytes("connection_name");
    props_e[1].value.kind = AMQP_FIELD_KIND_UTF8;
    props_e[1].value.value.bytes = amqp_cstring_bytes(mq->conn_name);
    amqp_table_t props = {2, props_e};

    amqp_rpc_reply_t r = amqp_login_with_properties(
        mq->conn, mq->ci.vhost, 0, AMQP_DEFAULT_FRAME_SIZE, mq->heartbeat,
        &props, AMQP_SASL_METHOD_PLAIN, mq->ci.user, mq->ci.password);
    return mq_reply_check(r, "login", why, whylen);
}

/* Each declare is an RPC; rabbitmq-c leaves its reply in the connection. */
#define MQ_RPC(call, what)                                                     \
    do {                                                                       \
        (void)(call);                                                          \
        if (mq_reply_check(amqp_get_rpc_reply(mq->conn), what, why, whylen) <  \
            0)                                                                 \
            return -1;                                                         \
    } while (0)

static int
mq_declare(imgw_mq_t *mq, char *why, size_t whylen)
{
    amqp_bytes_t q = amqp_cstring_bytes(mq->broker_id);
    amqp_bytes_t x = amqp_cstring_bytes(mq->exchange);

    MQ_RPC(amqp_channel_open(mq->conn, MQ_CHANNEL), "channel.open");
    MQ_RPC(amqp_confirm_select(mq->conn, MQ_CHANNEL), "confirm.select");
    MQ_RPC(amqp_exchange_declare(mq->conn, MQ_CHANNEL, x,
                                 amqp_cstring_bytes("direct"), 0, 1, 0, 0,
                                 amqp_empty_table),
           "exchange.declare");
    /* Durable and shared: the node's queue outlives the node, so pushes
     * published while it restarts wait for it. */
    MQ_RPC(amqp_queue_declare(mq->conn, MQ_CHANNEL, q, 0, 1, 0, 0,
                              amqp_empty_table),
           "queue.declare");
    MQ_RPC(amqp_queue_bind(mq->conn, MQ_CHANNEL, q, x, q, amqp_empty_table),
           "queue.bind");
    MQ_RPC(amqp_basic_qos(mq->conn, MQ_CHANNEL, 0, (uint16_t)mq->prefetch, 0),
           "basic.qos");
    MQ_RPC(amqp_basic_consume(mq->conn, MQ_CHANNEL, q, amqp_empty_bytes, 0, 0,
                              0, amqp_empty_table),
           "basic.consume");
    return 0;
}

#undef MQ_RPC

/*
 * Opens the connection and declares everything. Returns 0 (mq->conn is live
 * and the consumer registered) or -1 with the reason in why (conn freed).
 */
static int
mq_connect(imgw_mq_t *mq, char *why, size_t whylen)
{
    struct timeval ctv = {MQ_CONNECT_TIMEOUT_S, 0};
    struct timeval rtv = {MQ_RPC_TIMEOUT_S, 0};
    int rc;

    mq->conn = amqp_new_connection();
    if (mq->conn == NULL) {
        snprintf(why, whylen, "out of memory");
        return -1;
    }
    amqp_socket_t *sock = amqp_tcp_socket_new(mq->conn);
    if (sock == NULL) {
        snprintf(why, whylen, "socket: out of memory");
        goto fail;
    }
    /* Bound every handshake and RPC: the thread must come back to its
     * loop (and to `stopping`) even if the broker hangs. */
    amqp_set_handshake_timeout(mq->conn, &rtv);
    amqp_set_rpc_timeout(mq->conn, &rtv);
    rc = amqp_socket_open_noblock(sock, mq->ci.host, mq->ci.port, &ctv);
    if (rc != AMQP_STATUS_OK) {
        /* Only "a socket error occurred" for refused or unreachable:
         * rabbitmq-c keeps the SO_ERROR of its non-blocking connect to
         * itself, and errno is a leftover EINPROGRESS. */
        snprintf(why, whylen, "connect %s:%d: %s", mq->ci.host, mq->ci.port,
                 amqp_error_string2(rc));
        goto fail;
    }
    mq_tune_socket(mq);
    if (mq_login(mq, why, whylen) < 0 || mq_declare(mq, why, whylen) < 0)
        goto fail;
    return 0;

fail:
    amqp_destroy_connection(mq->conn);
    mq->conn = NULL;
    return -1;
}

/*
 * Tears the connection down. clean: close channel and connection with
 * their handshakes (stop); otherwise just drop the socket (it failed, or
 * the broker closed it). Then forget the connection's confirms and drop
 * whatever commands are queued for it.
 */
static void
mq_disconnect(imgw_mq_t *mq, bool clean)
{
    atomic_store(&mq->connected, 0);
    if (clean) {
        char why[256];
        amqp_rpc_reply_t r =
            amqp_channel_close(mq->conn, MQ_CHANNEL, AMQP_REPLY_SUCCESS);
        if (mq_reply_check(r, "channel.close", why, sizeof(why)) == 0)
            r = amqp_connection_close(mq->conn, AMQP_REPLY_SUCCESS);
        if (mq_reply_check(r, "close", why, sizeof(why)) < 0)
            IMGW_LOG_WARN("mq: %s", why);
    }
    amqp_destroy_connection(mq->conn);
    mq->conn = NULL;
    mq_confirms_reset(mq);
    mq_drop_queued(mq);
}

/* ---- frames from the broker ---------------------------------------------- */

static int mq_on_frame(imgw_mq_t *mq, const amqp_frame_t *f);

static int
mq_send_reject(imgw_mq_t *mq, uint64_t dtag)
{
    int rc = amqp_basic_reject(mq->conn, MQ_CHANNEL, dtag, 0);
    if (rc != AMQP_STATUS_OK) {
        IMGW_LOG_WARN("mq: basic.reject: %s", amqp_error_string2(rc));
        return -1;
    }
    atomic_fetch_add(&mq->rejected, 1);
    return 0;
}

/*
 * Reads the next content frame (header or body) of a delivery on channel
 * ch. rabbitmq-c does not export its per-channel wait, so frames of other
 * channels are handled here: only channel 0 is in use besides ours, and it
 * may interleave a connection.close or connection.blocked. The broker sends
 * content right behind basic.deliver; the RPC timeout bounds a stall.
 */
static int
mq_content_frame(imgw_mq_t *mq, amqp_channel_t ch, uint8_t type,
                 amqp_frame_t *f)
{
    for (;;) {
        struct timeval tv = {MQ_RPC_TIMEOUT_S, 0};
        int rc = amqp_simple_wait_frame_noblock(mq->conn, f, &tv);
        if (rc != AMQP_STATUS_OK) {
            IMGW_LOG_WARN("mq: reading a delivery: %s", amqp_error_string2(rc));
            return -1;
        }
        if (f->channel != ch) {
            if (mq_on_frame(mq, f) < 0)
                return -1;
            continue;
        }
        if (f->frame_type == type)
            return 0;
        if (f->frame_type == AMQP_FRAME_METHOD &&
            (f->payload.method.id == AMQP_CHANNEL_CLOSE_METHOD ||
             f->payload.method.id == AMQP_CONNECTION_CLOSE_METHOD)) {
            (void)mq_on_frame(mq, f); /* logs it and replies close-ok */
            return -1;
        }
        IMGW_LOG_WARN("mq: frame type %u inside a delivery",
                      (unsigned)f->frame_type);
        return -1;
    }
}

/*
 * basic.deliver: reads header and body frames itself rather than through
 * amqp_consume_message, for two reasons. The body lands in one reusable
 * buffer (no malloc per message), and an oversized body is skipped frame by
 * frame instead of first being malloc'd at whatever size the peer declared.
 */
static int
mq_on_deliver(imgw_mq_t *mq, amqp_channel_t ch, const amqp_basic_deliver_t *d)
{
    uint64_t dtag = d->delivery_tag;
    amqp_frame_t f;

    if (mq_content_frame(mq, ch, AMQP_FRAME_HEADER, &f) < 0)
        return -1;
    uint64_t size = f.payload.properties.body_size;
    bool oversized = size > mq->max_message;
    if (!oversized && size > mq->body_cap) {
        size_t cap = mq->body_cap ? mq->body_cap : MQ_BODY_INITIAL;
        while (cap < size)
            cap *= 2;
        if (cap > mq->max_message)
            cap = mq->max_message;
        uint8_t *nb = imgw_try_realloc(mq->body, cap);
        if (nb == NULL) {
            /* Reconnecting requeues it; better than rejecting it. */
            IMGW_LOG_ERROR("mq: out of memory for a %llu byte delivery",
                           (unsigned long long)size);
            return -1;
        }
        mq->body = nb;
        mq->body_cap = cap;
    }
    for (uint64_t got = 0; got < size;) {
        if (mq_content_frame(mq, ch, AMQP_FRAME_BODY, &f) < 0)
            return -1;
        size_t n = f.payload.body_fragment.len;
        if (n > size - got) {
            IMGW_LOG_WARN("mq: delivery body longer than its header says");
            return -1;
        }
        if (!oversized)
            memcpy(mq->body + got, f.payload.body_fragment.bytes, n);
        got += n;
    }

    /* Stopping: leave it unacked; closing the channel requeues it. */
    if (mq->quiesce)
        return 0;
    atomic_fetch_add(&mq->consumed, 1);
    if (oversized) {
        IMGW_LOG_WARN_RL("mq: rejecting a %llu byte delivery (max_message "
                         "%zu)",
                         (unsigned long long)size, mq->max_message);
        return mq_send_reject(mq, dtag);
    }
    if (dtag > MQ_TAG_MASK) {
        /* Never in practice (2^48 deliveries on one channel); reconnecting
         * restarts the numbering, and requeues this one. */
        IMGW_LOG_WARN("mq: delivery tag space exhausted, reconnecting");
        return -1;
    }
    uint64_t tag = ((mq->gen & MQ_GEN_MASK) << MQ_TAG_BITS) | dtag;
    mq->handed_out++;
    mq->on_message(mq->data, mq->body, (size_t)size, tag);
    return 0;
}

/* basic.return: only for mandatory publishes, which we never make; read
 * and discard its content so the frame stream stays in step. */
static int
mq_on_return(imgw_mq_t *mq, amqp_channel_t ch)
{
    amqp_message_t msg;
    amqp_rpc_reply_t r = amqp_read_message(mq->conn, ch, &msg, 0);
    if (r.reply_type != AMQP_RESPONSE_NORMAL)
        return -1;
    amqp_destroy_message(&msg);
    IMGW_LOG_WARN_RL("mq: a publish was returned as unroutable");
    return 0;
}

/* One frame from the broker. Returns 0, or -1: the connection must go. */
static int
mq_on_frame(imgw_mq_t *mq, const amqp_frame_t *f)
{
    if (f->frame_type != AMQP_FRAME_METHOD)
        return 0; /* stray content frame: nothing to do with it */

    switch (f->payload.method.id) {
    case AMQP_BASIC_DELIVER_METHOD:
        return mq_on_deliver(mq, f->channel, f->payload.method.decoded);
    case AMQP_BASIC_ACK_METHOD: {
        const amqp_basic_ack_t *a = f->payload.method.decoded;
        mq_on_confirm(mq, a->delivery_tag, a->multiple, true);
        return 0;
    }
    case AMQP_BASIC_NACK_METHOD: {
        const amqp_basic_nack_t *n = f->payload.method.decoded;
        mq_on_confirm(mq, n->delivery_tag, n->multiple, false);
        return 0;
    }
    case AMQP_BASIC_RETURN_METHOD:
        return mq_on_return(mq, f->channel);
    case AMQP_BASIC_CANCEL_METHOD:
        IMGW_LOG_WARN("mq: broker cancelled the consumer of queue %s "
                      "(deleted?): reconnecting to re-declare it",
                      mq->broker_id);
        return -1;
    case AMQP_CHANNEL_CLOSE_METHOD: {
        const amqp_channel_close_t *c = f->payload.method.decoded;
        IMGW_LOG_WARN("mq: broker closed the channel: %u %.*s",
                      (unsigned)c->reply_code, (int)c->reply_text.len,
                      (const char *)c->reply_text.bytes);
        /* Courtesy reply; the whole connection is rebuilt anyway. */
        amqp_channel_close_ok_t ok = {0};
        (void)amqp_send_method(mq->conn, f->channel,
                               AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
        return -1;
    }
    case AMQP_CONNECTION_CLOSE_METHOD: {
        const amqp_connection_close_t *c = f->payload.method.decoded;
        IMGW_LOG_WARN("mq: broker closed the connection: %u %.*s",
                      (unsigned)c->reply_code, (int)c->reply_text.len,
                      (const char *)c->reply_text.bytes);
        amqp_connection_close_ok_t ok = {0};
        (void)amqp_send_method(mq->conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD,
                               &ok);
        return -1;
    }
    case AMQP_CONNECTION_BLOCKED_METHOD:
        IMGW_LOG_WARN("mq: broker blocked publishing (resource alarm)");
        return 0;
    case AMQP_CONNECTION_UNBLOCKED_METHOD:
        IMGW_LOG_INFO("mq: broker unblocked publishing");
        return 0;
    default:
        IMGW_LOG_DEBUG("mq: ignoring method 0x%08x",
                       (unsigned)f->payload.method.id);
        return 0;
    }
}

/*
 * Handles what the broker sent, without blocking: up to MQ_FRAME_BUDGET
 * frames. The 1 us timeout, rather than zero, matters: rabbitmq-c compares
 * its deadlines, and only a deadline later than the receive-heartbeat one
 * lets it notice a broker that went silent (AMQP_STATUS_HEARTBEAT_TIMEOUT).
 * It still polls with 0 ms. Heartbeats due are sent on the way.
 */
static int
mq_read_frames(imgw_mq_t *mq)
{
    int rc = 0;
    for (int i = 0; i < MQ_FRAME_BUDGET; i++) {
        struct timeval tv = {0, 1};
        amqp_frame_t f;
        int st = amqp_simple_wait_frame_noblock(mq->conn, &f, &tv);
        if (st == AMQP_STATUS_TIMEOUT)
            break;
        if (st != AMQP_STATUS_OK) {
            IMGW_LOG_WARN("mq: connection lost: %s", amqp_error_string2(st));
            rc = -1;
            break;
        }
        if (mq_on_frame(mq, &f) < 0) {
            rc = -1;
            break;
        }
    }
    if (rc == 0)
        amqp_maybe_release_buffers(mq->conn);
    return rc;
}

/* ---- commands to the broker ---------------------------------------------- */

enum { MQ_DRAIN_EMPTY = 0, MQ_DRAIN_MORE = 1, MQ_DRAIN_WINDOW = 2 };

/*
 * Sends queued commands: up to MQ_DRAIN_BUDGET, and nothing while the
 * confirm window is full. Returns MQ_DRAIN_EMPTY (the queue was found
 * empty), MQ_DRAIN_MORE (budget used up: come back soon), MQ_DRAIN_WINDOW
 * (wait for confirms), or -1 if the connection failed.
 */
static int
mq_drain_items(imgw_mq_t *mq)
{
    static const amqp_bytes_t json = {16, (void *)"application/json"};
    amqp_basic_properties_t props;
    memset(&props, 0, sizeof(props));
    props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
    props.content_type = json;
    props.delivery_mode = 2; /* persistent */
    if (mq->expiration[0]) {
        props._flags |= AMQP_BASIC_EXPIRATION_FLAG;
        props.expiration = amqp_cstring_bytes(mq->expiration);
    }

    for (int i = 0; i < MQ_DRAIN_BUDGET; i++) {
        if (mq->next_seq - mq->low_seq >= MQ_CONFIRM_WINDOW)
            return MQ_DRAIN_WINDOW;
        mq_item_t *it = mq_q_pop(mq);
        if (it == NULL)
            return MQ_DRAIN_EMPTY;
        int rc = AMQP_STATUS_OK;
        uint64_t gen = it->tag >> MQ_TAG_BITS;
        uint64_t dtag = it->tag & MQ_TAG_MASK;

        switch (it->kind) {
        case MQ_ITEM_PUBLISH: {
            atomic_fetch_sub(&mq->pending, 1);
            amqp_bytes_t key = {it->key_len, it->data};
            amqp_bytes_t body = {it->body_len, it->data + it->key_len + 1};
            rc = amqp_basic_publish(mq->conn, MQ_CHANNEL,
                                    amqp_cstring_bytes(mq->exchange), key, 0, 0,
                                    &props, body);
            if (rc == AMQP_STATUS_OK)
                mq->next_seq++;
            else
                atomic_fetch_add(&mq->publish_dropped, 1);
            break;
        }
        case MQ_ITEM_ACK:
        case MQ_ITEM_REJECT:
            if (it->kind == MQ_ITEM_ACK)
                atomic_fetch_sub_explicit(&mq->acks_queued, 1,
                                          memory_order_relaxed);
            if (gen != (mq->gen & MQ_GEN_MASK)) {
                IMGW_LOG_DEBUG("mq: dropping %s of a previous connection",
                               it->kind == MQ_ITEM_ACK ? "ack" : "reject");
                break;
            }
            rc = mq_ack_settle(mq, dtag, it->kind == MQ_ITEM_ACK);
            break;
        }
        imgw_free(it);
        if (rc != AMQP_STATUS_OK) {
            IMGW_LOG_WARN("mq: send failed: %s", amqp_error_string2(rc));
            return -1;
        }
    }
    return MQ_DRAIN_MORE;
}

/* mq_drain_items, then the acks it settled (all of them when stopping). */
static int
mq_drain(imgw_mq_t *mq)
{
    int more = mq_drain_items(mq);
    if (more < 0)
        return -1;
    int rc = mq_ack_flush(mq, mq->quiesce);
    if (rc != AMQP_STATUS_OK) {
        IMGW_LOG_WARN("mq: send failed: %s", amqp_error_string2(rc));
        return -1;
    }
    return more;
}

/* ---- the thread ---------------------------------------------------------- */

/*
 * imgw_mq_stop() was called while connected: send what is queued (acks
 * above all: unsent they would mean redeliveries), wait briefly for the
 * last confirms, with deliveries no longer handed out. Returns 0 if the
 * connection is still fit for a clean close.
 */
static int
mq_finish(imgw_mq_t *mq)
{
    uint64_t deadline = imgw_clock_mono_ms() + MQ_STOP_CONFIRM_MS;
    struct pollfd pfd = {amqp_get_sockfd(mq->conn), POLLIN, 0};

    mq->quiesce = true;
    for (;;) {
        int more = mq_drain(mq);
        if (more < 0)
            return -1;
        if (more == MQ_DRAIN_EMPTY && mq->low_seq == mq->next_seq)
            return 0;
        uint64_t now = imgw_clock_mono_ms();
        if (now >= deadline) {
            IMGW_LOG_WARN("mq: stopping with %llu publishes unconfirmed",
                          (unsigned long long)(mq->next_seq - mq->low_seq));
            return 0;
        }
        if (!amqp_frames_enqueued(mq->conn) && !amqp_data_in_buffer(mq->conn))
            (void)poll(&pfd, 1,
                       more == MQ_DRAIN_MORE ? 0 : (int)(deadline - now));
        if (mq_read_frames(mq) < 0)
            return -1;
    }
}

/*
 * Serves one live connection until it fails (returns -1) or stop is asked
 * (returns 0 after mq_finish, or -1 if that failed).
 *
 * Wake-ups: while the thread is awake it keeps `armed` at 1, so producers
 * (a loop acking every delivery it handled) push without writing the
 * eventfd; it disarms only right before a poll that may sleep, and then
 * looks at the queue once more (mq_wake explains the pairing). A busy
 * thread thus costs its producers no syscall at all.
 */
static int
mq_serve(imgw_mq_t *mq)
{
    struct pollfd pfd[2];
    pfd[0].fd = amqp_get_sockfd(mq->conn);
    pfd[0].events = POLLIN;
    pfd[1].fd = mq->efd;
    pfd[1].events = POLLIN;

    for (;;) {
        if (atomic_load(&mq->stopping))
            return mq_finish(mq);
        int more = mq_drain(mq);
        if (more < 0)
            return -1;
        /* Frames already read into rabbitmq-c's buffer do not make the
         * socket readable again: do not sleep on them. Acks waiting behind
         * a gap are looked at again after MQ_ACK_GAP_MS. */
        int timeout = mq->ack_waiting ? MQ_ACK_GAP_MS : MQ_POLL_MS;
        if (mq->settled != mq->handed_out)
            timeout = MQ_ACK_DELAY_MS; /* acks may be queued unannounced */
        if (more == MQ_DRAIN_MORE || amqp_frames_enqueued(mq->conn) ||
            amqp_data_in_buffer(mq->conn))
            timeout = 0;
        if (timeout > 0) {
            atomic_exchange(&mq->armed, 0);
            if (imgw_mpsc_nonempty(&mq->q))
                timeout = 0;
        }
        pfd[0].revents = pfd[1].revents = 0;
        if (poll(pfd, 2, timeout) < 0 && errno != EINTR) {
            IMGW_LOG_ERROR("mq: poll: %s", strerror(errno));
            return -1;
        }
        if (pfd[1].revents & POLLIN) {
            uint64_t v;
            while (read(mq->efd, &v, sizeof(v)) < 0 && errno == EINTR)
                ;
        }
        atomic_store(&mq->armed, 1); /* awake: no eventfd writes needed */
        /* Also on timeout: that is when heartbeats are sent and checked. */
        if (mq_read_frames(mq) < 0)
            return -1;
    }
}

static int
mq_run(imgw_mq_t *mq)
{
    atomic_store(&mq->armed, 1);
    int rc = mq_serve(mq);
    /* Back to the plain pattern for mq_backoff, which drops what gets
     * queued when woken: wake it for anything already there. */
    atomic_exchange(&mq->armed, 0);
    if (imgw_mpsc_nonempty(&mq->q))
        mq_wake(mq);
    return rc;
}

/* Sleeps ms between connection attempts, dropping what gets queued and
 * returning early on stop. */
static void
mq_backoff(imgw_mq_t *mq, uint64_t ms)
{
    uint64_t deadline = imgw_clock_mono_ms() + ms;
    struct pollfd pfd = {mq->efd, POLLIN, 0};

    while (!atomic_load(&mq->stopping)) {
        uint64_t now = imgw_clock_mono_ms();
        if (now >= deadline)
            break;
        pfd.revents = 0;
        if (poll(&pfd, 1, (int)(deadline - now)) > 0)
            mq_clear_wake(mq);
        mq_drop_queued(mq);
    }
}

static void *
mq_thread_main(void *arg)
{
    imgw_mq_t *mq = arg;
    uint64_t backoff = MQ_BACKOFF_MIN_MS;
    bool ever = false;
    char why[512];

    imgw_log_set_thread("mq");
    while (!atomic_load(&mq->stopping)) {
        if (mq_connect(mq, why, sizeof(why)) < 0) {
            IMGW_LOG_WARN_RL("mq: broker %s:%d: %s (retrying)", mq->ci.host,
                             mq->ci.port, why);
            /* Jitter in [backoff/2, backoff]: nodes that lost the same
             * broker do not all come back in the same millisecond. */
            uint64_t ms = backoff / 2 + mq_rand(mq) % (backoff / 2 + 1);
            mq_backoff(mq, ms);
            backoff = backoff * 2 > MQ_BACKOFF_MAX_MS ? MQ_BACKOFF_MAX_MS
                                                      : backoff * 2;
            continue;
        }
        mq->gen++;
        mq->quiesce = false;
        mq_acks_reset(mq);
        if (ever)
            atomic_fetch_add(&mq->reconnects, 1);
        ever = true;
        atomic_store(&mq->connected, 1);
        IMGW_LOG_INFO("mq: connected to %s:%d vhost %s, consuming queue %s",
                      mq->ci.host, mq->ci.port, mq->ci.vhost, mq->broker_id);

        uint64_t t0 = imgw_clock_mono_ms();
        int rc = mq_run(mq);
        mq_disconnect(mq, rc == 0);
        /* A connection that dies right after it was made (a broker that
         * accepts then kills us) must not turn into a 10 Hz retry loop. */
        if (imgw_clock_mono_ms() - t0 >= MQ_BACKOFF_MAX_MS)
            backoff = MQ_BACKOFF_MIN_MS;
        if (!atomic_load(&mq->stopping)) {
            IMGW_LOG_WARN("mq: disconnected from %s:%d, reconnecting",
                          mq->ci.host, mq->ci.port);
            mq_backoff(mq, backoff / 2 + mq_rand(mq) % (backoff / 2 + 1));
            backoff = backoff * 2 > MQ_BACKOFF_MAX_MS ? MQ_BACKOFF_MAX_MS
                                                      : backoff * 2;
        }
    }
    return NULL;
}

/* ---- public API ---------------------------------------------------------- */

static void
mq_free(imgw_mq_t *mq)
{
    if (mq == NULL)
        return;
    mq_item_t *it;
    while ((it = mq_q_pop(mq)) != NULL)
        mq_item_drop(mq, it);
    if (mq->efd >= 0)
        close(mq->efd);
    imgw_free(mq->resolved);
    imgw_free(mq->ack_wait);
    imgw_free(mq->ack_done);
    imgw_free(mq->body);
    imgw_free(mq->broker_id);
    imgw_free(mq->exchange);
    imgw_free(mq->url_buf);
    imgw_free(mq);
}

int
imgw_mq_start(imgw_mq_t **out, const imgw_mq_opts_t *opts, char *err,
              size_t errlen)
{
    if (out == NULL || opts == NULL) {
        imgw_err_fmt(err, errlen, "%s", "mq: missing options");
        return IMGW_EINVAL;
    }
    *out = NULL;
    if (opts->url == NULL || opts->url[0] == '\0') {
        imgw_err_fmt(err, errlen, "%s", "mq: broker URL is empty");
        return IMGW_ECONFIG;
    }
    if (opts->broker_id == NULL || opts->broker_id[0] == '\0' ||
        strlen(opts->broker_id) > MQ_SHORTSTR_MAX) {
        imgw_err_fmt(
            err, errlen, "%s",
            "mq: broker_id must be 1 to 255 bytes (it names the queue)");
        return IMGW_ECONFIG;
    }
    const char *exchange = opts->exchange && opts->exchange[0]
                               ? opts->exchange
                               : MQ_DEFAULT_EXCHANGE;
    if (strlen(exchange) > MQ_SHORTSTR_MAX) {
        imgw_err_fmt(err, errlen, "%s",
                     "mq: exchange name longer than 255 bytes");
        return IMGW_ECONFIG;
    }
    if (opts->prefetch < 0 || opts->prefetch > 65535) {
        imgw_err_fmt(err, errlen, "%s",
                     "mq: prefetch must be 0 (default) to 65535");
        return IMGW_ECONFIG;
    }
    if (opts->heartbeat < 0 || opts->heartbeat > 65535) {
        imgw_err_fmt(err, errlen, "%s",
                     "mq: heartbeat must be 0 (off) to 65535 seconds");
        return IMGW_ECONFIG;
    }
    if (opts->on_message == NULL) {
        imgw_err_fmt(err, errlen, "%s", "mq: on_message callback is missing");
        return IMGW_EINVAL;
    }

    imgw_mq_t *mq = imgw_try_calloc(1, sizeof(*mq));
    if (mq == NULL)
        goto nomem;
    mq->efd = -1;
    imgw_mpsc_init(&mq->q);
    /* amqp_parse_url() cuts the string up and points ci into it: keep it. */
    mq->url_buf = imgw_try_strdup(opts->url);
    mq->broker_id = imgw_try_strdup(opts->broker_id);
    mq->exchange = imgw_try_strdup(exchange);
    mq->resolved = imgw_try_calloc(MQ_CONFIRM_WINDOW / 64, sizeof(uint64_t));
    mq->ack_wait = imgw_try_calloc(MQ_ACK_WINDOW / 64, sizeof(uint64_t));
    mq->ack_done = imgw_try_calloc(MQ_ACK_WINDOW / 64, sizeof(uint64_t));
    if (!mq->url_buf || !mq->broker_id || !mq->exchange || !mq->resolved ||
        !mq->ack_wait || !mq->ack_done)
        goto nomem;
    amqp_default_connection_info(&mq->ci);
    if (amqp_parse_url(mq->url_buf, &mq->ci) != AMQP_STATUS_OK) {
        /* Not echoing the URL: it may carry a password. */
        imgw_err_fmt(err, errlen, "%s",
                     "mq: invalid broker URL (want "
                     "amqp://user:pass@host:port/vhost)");
        mq_free(mq);
        return IMGW_ECONFIG;
    }
    if (mq->ci.ssl) {
        imgw_err_fmt(err, errlen, "%s", "mq: amqps:// (TLS) is not supported");
        mq_free(mq);
        return IMGW_ECONFIG;
    }
    if (mq->ci.host == NULL || mq->ci.host[0] == '\0') {
        imgw_err_fmt(err, errlen, "%s", "mq: broker URL has no host");
        mq_free(mq);
        return IMGW_ECONFIG;
    }
    snprintf(mq->conn_name, sizeof(mq->conn_name), "imgw %s", mq->broker_id);
    mq->prefetch = opts->prefetch ? opts->prefetch : MQ_DEFAULT_PREFETCH;
    mq->ack_wake_at = (size_t)mq->prefetch / MQ_ACK_WAKE_DIV;
    if (mq->ack_wake_at == 0)
        mq->ack_wake_at = 1;
    if (opts->publish_ttl_ms > 0)
        snprintf(mq->expiration, sizeof(mq->expiration), "%d",
                 opts->publish_ttl_ms);
    mq->heartbeat = opts->heartbeat;
    mq->max_message =
        opts->max_message ? opts->max_message : MQ_DEFAULT_MAX_MESSAGE;
    mq->on_message = opts->on_message;
    mq->data = opts->data;
    mq->next_seq = mq->low_seq = 1;
    mq->rng = (imgw_clock_mono_ms() << 20) ^ (uint64_t)getpid() ^ (uintptr_t)mq;
    if (mq->rng == 0)
        mq->rng = 0x9e3779b97f4a7c15u;

    mq->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (mq->efd < 0) {
        imgw_err_fmt(err, errlen, "mq: eventfd: %s", strerror(errno));
        mq_free(mq);
        return IMGW_ENOMEM;
    }

    /* The MQ thread takes no signals: they belong to the main thread. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&mq->thread, NULL, mq_thread_main, mq);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        imgw_err_fmt(err, errlen, "mq: pthread_create: %s", strerror(rc));
        mq_free(mq);
        return IMGW_ENOMEM;
    }
    *out = mq;
    return 0;

nomem:
    imgw_err_fmt(err, errlen, "%s", "mq: out of memory");
    mq_free(mq);
    return IMGW_ENOMEM;
}

static int
mq_push_item(imgw_mq_t *mq, mq_item_t *it)
{
    imgw_mpsc_push(&mq->q, &it->node);
    mq_wake(mq);
    return 0;
}

int
imgw_mq_publish(imgw_mq_t *mq, const char *routing_key, const uint8_t *body,
                size_t len)
{
    if (mq == NULL || routing_key == NULL || (body == NULL && len > 0))
        return IMGW_EINVAL;
    size_t key_len = strlen(routing_key);
    if (key_len > MQ_SHORTSTR_MAX)
        return IMGW_EINVAL;
    if (!atomic_load_explicit(&mq->connected, memory_order_relaxed) ||
        atomic_load_explicit(&mq->stopping, memory_order_relaxed)) {
        atomic_fetch_add(&mq->publish_dropped, 1);
        return IMGW_EMQ;
    }
    if (atomic_fetch_add(&mq->pending, 1) >= MQ_MAX_PENDING) {
        atomic_fetch_sub(&mq->pending, 1);
        atomic_fetch_add(&mq->publish_dropped, 1);
        IMGW_LOG_WARN_RL("mq: %d publishes already queued, dropping",
                         MQ_MAX_PENDING);
        return IMGW_EMQ;
    }
    mq_item_t *it = imgw_try_malloc(sizeof(*it) + key_len + 1 + len);
    if (it == NULL) {
        atomic_fetch_sub(&mq->pending, 1);
        atomic_fetch_add(&mq->publish_dropped, 1);
        return IMGW_ENOMEM;
    }
    it->kind = MQ_ITEM_PUBLISH;
    it->tag = 0;
    it->key_len = key_len;
    it->body_len = len;
    memcpy(it->data, routing_key, key_len + 1);
    if (len > 0)
        memcpy(it->data + key_len + 1, body, len);
    return mq_push_item(mq, it);
}

/*
 * Acks and rejects are not bounded like publishes: there are at most
 * prefetch of them per connection, since the broker stops delivering.
 */
static void
mq_settle(imgw_mq_t *mq, int kind, uint64_t tag)
{
    if (mq == NULL)
        return;
    mq_item_t *it = imgw_try_malloc(sizeof(*it));
    if (it == NULL) {
        /* The delivery stays unacked until the connection is rebuilt. */
        IMGW_LOG_ERROR("mq: out of memory queueing an ack");
        return;
    }
    it->kind = kind;
    it->tag = tag;
    it->key_len = it->body_len = 0;
    if (kind != MQ_ITEM_ACK) {
        mq_push_item(mq, it);
        return;
    }
    /* See MQ_ACK_DELAY_MS: most acks are picked up without a wake-up. */
    size_t q =
        atomic_fetch_add_explicit(&mq->acks_queued, 1, memory_order_relaxed) +
        1;
    imgw_mpsc_push(&mq->q, &it->node);
    if (q >= mq->ack_wake_at)
        mq_wake(mq);
}

void
imgw_mq_ack(imgw_mq_t *mq, uint64_t tag)
{
    mq_settle(mq, MQ_ITEM_ACK, tag);
}

void
imgw_mq_reject(imgw_mq_t *mq, uint64_t tag)
{
    mq_settle(mq, MQ_ITEM_REJECT, tag);
}

int
imgw_mq_connected(imgw_mq_t *mq)
{
    return mq != NULL && atomic_load(&mq->connected);
}

void
imgw_mq_stats(imgw_mq_t *mq, imgw_mq_stats_t *out)
{
    memset(out, 0, sizeof(*out));
    if (mq == NULL)
        return;
    out->consumed = atomic_load(&mq->consumed);
    out->acked = atomic_load(&mq->acked);
    out->rejected = atomic_load(&mq->rejected);
    out->published = atomic_load(&mq->published);
    out->publish_dropped = atomic_load(&mq->publish_dropped);
    out->reconnects = atomic_load(&mq->reconnects);
    out->connected = atomic_load(&mq->connected);
}

void
imgw_mq_stop(imgw_mq_t *mq)
{
    if (mq == NULL)
        return;
    atomic_store(&mq->stopping, 1);
    mq_efd_write(mq);
    pthread_join(mq->thread, NULL);
    mq_free(mq);
}
