/*
 * net_int.h: net's private structures, shared by loop.c, conn.c, http.c and
 * ws.c only. Nothing outside src/net includes this file.
 *
 * Calls run one way: loop.c -> conn.c -> a protocol handler (http.c, ws.c)
 * through the handler table (imgw_proto_t), and the handlers -> conn.c's
 * face (the conn.c section at the end). conn.c never names a handler, a
 * handler never names loop.c or another handler: the HTTP handler hands a
 * connection to the WebSocket one with imgw__conn_set_proto(), and the
 * table is filled by loop.c, which names them (net->protos). TLS is no
 * handler: it is a byte transformer under them (tls.h) that conn.c drives
 * through imgw_tls_io_t.
 */
#ifndef IMGW_NET_INT_H
#define IMGW_NET_INT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "list.h"
#include "stat.h"
#include "mailbox.h"
#include "net.h"
#include "iplimit.h"
#include "tls.h"
#include "twheel.h"

#define IMGW_MAX_LISTENERS 32
#define IMGW_READ_BUF 65536
/* Pooled output block size. Nearly every write is a few frames of a few
 * hundred bytes (a 101, an AuthResponse, the responses and pushes of one
 * batch_us iteration), so 2 KiB holds them; a bigger write (a sync page, a
 * fan-out burst) gets a block of its own. The size matters for idle
 * memory: a connect or heartbeat burst fills the pool, and a full pool at
 * 16 KiB was 1 MiB, ~55 B per connection of a 19,000-connection node; at
 * 4 KiB ~14 B (docs/benchmarks.md, hold). */
#define IMGW_OBUF_SMALL 2048
/* Pool caps: what a burst leaves pooled stays out of the OS for good, so
 * keep them small (64 x 2 KiB = 128 KiB of blocks); the steady state needs
 * few, and loop.c's trim tick gives the rest back (IMGW_POOL_KEEP). */
#define IMGW_OBUF_POOL_MAX 64   /* pooled blocks kept per loop */
#define IMGW_WS_POOL_MAX 64     /* pooled wslay frame contexts per loop */
#define IMGW_POOL_KEEP 16       /* pooled entries the trim tick keeps */
#define IMGW_TRIM_MS 10000      /* pool trim + malloc_trim period */
#define IMGW_TICK_MS 250        /* timer wheel resolution */
#define IMGW_BATCH_MIN_READS 2  /* connections read: a busy iteration */
#define IMGW_CLOSE_GRACE_MS 2000 /* close handshake before abort */
/* Frames of one fragmented WebSocket message, first one included; one more
 * closes the connection with 1009 (docs/protocol.md). Empty continuations
 * would otherwise be free to send forever. */
#define IMGW_WS_MAX_FRAGMENTS 1024

/* Output block: a pooled or sized buffer. conn.c writes it itself (no
 * libuv write request), so output queued while the kernel is full is
 * appended to the same block. */
typedef struct imgw_obuf_s {
    size_t len;  /* bytes filled; off <= len <= cap */
    size_t off;  /* bytes already written */
    size_t cap;
    uint8_t data[];
} imgw_obuf_t;

enum {
    IMGW_CONN_HTTP = 0, /* reading an HTTP request */
    IMGW_CONN_WS,       /* WebSocket open */
    IMGW_CONN_CLOSING,  /* close frame sent or response ending */
    IMGW_CONN_CLOSED    /* uv_close called; waiting for close_cb */
};

enum {
    IMGW_CF_IN_FLUSH = 1 << 0,     /* on the loop's flush list */
    IMGW_CF_CLOSE_AFTER = 1 << 1,  /* uv_close once output is written */
    IMGW_CF_READ_PAUSED = 1 << 2,  /* async HTTP response pending */
    IMGW_CF_COUNTED_WS = 1 << 3,   /* counted in ws_open */
    IMGW_CF_CLOSE_SENT = 1 << 4,   /* our close frame is queued */
    IMGW_CF_DRAIN_DONE = 1 << 5,   /* drain already asked it to close */
    IMGW_CF_RX_DEAD = 1 << 6,      /* protocol failed: input ignored */
    IMGW_CF_IP_COUNTED = 1 << 7,   /* holds a per-IP count */
    IMGW_CF_WRITING = 1 << 8,      /* kernel full: waiting for UV_WRITABLE */
    IMGW_CF_READING = 1 << 9,      /* reading wanted (imgw__conn_read_start) */
    IMGW_CF_POLL_IN = 1 << 10,     /* UV_READABLE armed on c->poll */
    IMGW_CF_POLL_OUT = 1 << 11     /* UV_WRITABLE armed on c->poll */
};

struct imgw_http_s; /* http.c */
struct imgw_ws_rx_s; /* ws.c */

/* ---- protocol handlers ------------------------------------------------ */

/* Index into net->protos: a connection's current handler (c->proto). */
enum { IMGW_PROTO_HTTP = 0, IMGW_PROTO_WS, IMGW_PROTO_N };

/*
 * A protocol handler, the way libuv's stream types plug into uv_stream_t:
 * conn.c owns the socket, the write queue, deadlines and the close path,
 * and calls the connection's handler only through these pointers. Every
 * member runs on the owning loop.
 */
typedef struct imgw_proto_s {
    const char *name;
    /* The connection became this handler's (imgw__conn_set_proto). */
    void (*start)(imgw_conn_t *c);
    /* Plaintext from the peer, valid during the call. */
    void (*feed)(imgw_conn_t *c, const uint8_t *data, size_t len);
    /* imgw_conn_send_ws(); NULL: refused with IMGW_ECLOSED. */
    int (*send)(imgw_conn_t *c, int is_text, const uv_buf_t *pieces, size_t n);
    /* imgw_conn_close_ws(): the handler's way to end the connection. */
    void (*close)(imgw_conn_t *c, int code, const char *reason);
    /* close_cb: frees what the handler holds for c. conn.c runs every
     * handler's (a connection that just switched may hold both). */
    void (*free)(imgw_conn_t *c);
    /* Cuts the loop's pools of this handler to at most keep entries
     * (keep 0: empties them); NULL when it has none. */
    void (*trim)(imgw_loop_t *l, size_t keep);
} imgw_proto_t;

/* http.c, ws.c: the handlers. Only loop.c (which fills net->protos) and
 * test harnesses name them. */
extern const imgw_proto_t imgw__http_proto;
extern const imgw_proto_t imgw__ws_proto;

/* loop.c's batching rule (server.batch_us): the nanoseconds a loop waits
 * before it polls again, given the connections it read this iteration and
 * the time since its previous wait decision. 0: poll now (a quiet
 * iteration, or one that already took a whole period). */
static inline uint64_t
imgw__batch_wait_ns(uint32_t reads, uint64_t since_ns, uint64_t period_ns)
{
    if (reads < IMGW_BATCH_MIN_READS || since_ns >= period_ns)
        return 0;
    return period_ns - since_ns;
}

/* A loop's counters (net.h's list), written by the loop only. */
typedef struct imgw__loop_counters_s {
#define IMGW__LOOP_COUNTER(name, what) imgw_stat_t name;
    IMGW_LOOP_COUNTERS(IMGW__LOOP_COUNTER)
#undef IMGW__LOOP_COUNTER
} imgw__loop_counters_t;

/*
 * A connection: 264 bytes (a 272-byte malloc chunk; test_conn checks it),
 * its uv_poll_t (160) the largest part. The socket is a uv_poll_t on the fd, not a uv_tcp_t
 * (248): conn.c does its own read, send and close, and an idle connection
 * needs nothing of a stream's write queue or read callbacks.
 */
struct imgw_conn_s {
    uv_poll_t poll; /* io_watcher.fd is the socket; data is core's session */
    imgw_loop_t *loop;
    uint32_t slot;
    uint32_t gen;
    /* Loop time of the last read, its low 32 bits: the distance to now is
     * exact for 49 days (imgw_conn_last_rx_ms), and with the three small
     * fields it fills one word where a uint64_t and padding took two. */
    uint32_t last_rx;
    uint16_t flags;  /* IMGW_CF_* */
    uint8_t state;
    uint8_t proto; /* IMGW_PROTO_*: index into net->protos */
    /* The deadline (imgw_conn_set_deadline), the low 32 bits of its loop
     * ms, 0 = none: deadlines are at most a day ahead (heartbeat_timeout's
     * bound), and the 32-bit distance is exact within 24 days. With queued
     * it fills one word where the uint64_t and a size_t took two, which
     * takes the struct under the next malloc chunk size. */
    uint32_t deadline;
    /* Unwritten bytes of pend: below max_queued_bytes (an int) for
     * bounded writes, and conn_append refuses what would pass 4 GiB. */
    uint32_t queued;
    imgw_tw_entry_t tw;
    /* The current handler's borrowed state (c->proto says which member):
     * the HTTP handler's request state, or, once a WebSocket, what a
     * partial frame or message needs. http.c frees its state before it
     * hands the connection over, so the two never overlap, and each
     * handler's free looks only at its own member. */
    union {
        struct imgw_http_s *http;  /* IMGW_PROTO_HTTP */
        struct imgw_ws_rx_s *rx;   /* IMGW_PROTO_WS */
    };
    /* Unwritten output: filled here and written from here, a partial
     * write keeps the rest at pend->off (IMGW_CF_WRITING). */
    imgw_obuf_t *pend;
    imgw_conn_t *flush_next;
    /* core's session (imgw_conn_data) lives in poll.data, which libuv
     * leaves to its user: a pointer less per connection. */
    imgw_ipaddr_t addr;            /* peer, for the per-IP limit */
    imgw_tls_t *tls;               /* wss:// connections only */
};

typedef struct imgw_ws_feed_s {
    const uint8_t *p;
    size_t len;
    uint64_t fed; /* bytes handed to the current frame context */
} imgw_ws_feed_t;

struct imgw_loop_s {
    uv_loop_t uv;
    uv_thread_t thread;
    int index;
    imgw_net_t *net;
    int listen_fds[IMGW_MAX_LISTENERS]; /* -1 once closed */
    uv_poll_t listeners[IMGW_MAX_LISTENERS]; /* on listen_fds */
    uint8_t listener_tls[IMGW_MAX_LISTENERS]; /* 1: a [tls] port */
    int n_listeners;
    int emfile_fd;     /* reserve fd for EMFILE (loop.c accept_shed), or -1 */
    int accept_paused; /* out of fds: listeners stopped until a tick */
    imgw_tls_ctx_t *tls_ctx; /* this loop's, when [tls] ports exist */
    imgw_mailbox_t mbox;
    imgw_mpsc_node_t stop_node;  /* starts the drain */
    imgw_mpsc_node_t final_node; /* every loop drained: close handles */
    int idle;                    /* drained, waiting for the others */
    uv_timer_t timer;
    uv_prepare_t flush_prep;
    imgw_twheel_t tw;
    uint64_t now_ms;        /* imgw__loop_clock_ms() of this iteration */
    uint64_t last_tick_ms;

    /* connection table: slot -> conn, with generations for stale refs */
    imgw_conn_t **slots;
    uint32_t *gens;
    uint32_t *free_slots;
    size_t n_free;
    size_t n_slots;   /* slots ever handed out */
    size_t cap_slots;

    imgw_conn_t *flush_head;
    /* Connections with input in this iteration (conn.c conn_read; reset
     * by prepare_cb): what decides whether the loop waits server.batch_us
     * before polling. */
    uint32_t iter_reads;
    uint64_t batch_last_ns; /* uv_hrtime() of the last prepare_cb */

    /* pools */
    imgw_obuf_t *obuf_pool[IMGW_OBUF_POOL_MAX];
    size_t n_obuf_pool;
    void *ws_pool[IMGW_WS_POOL_MAX]; /* wslay_frame_context_ptr */
    size_t n_ws_pool;
    imgw_ws_feed_t feed;

    /* drain */
    int draining;
    uint64_t drain_start_ms;
    uint64_t drain_end_ms;
    size_t drain_total;
    int stopping;

    double hs_tokens;       /* handshake_rate bucket */
    uint64_t hs_refill_ms;
    imgw__loop_counters_t st;
    void *data; /* core's per-loop state */
    int start_err;
    uv_sem_t started;
    uint8_t rbuf[IMGW_READ_BUF];
};

struct imgw_net_s {
    imgw_net_opts_t opts;
    uint16_t ports[IMGW_MAX_LISTENERS];
    char bind[64];
    imgw_loop_t **loops;
    int n_loops;
    atomic_int draining;
    atomic_int drain_ms;
    atomic_long conns;  /* node-wide open connections */
    atomic_int loops_running;
    atomic_int loops_listening; /* loops that have not closed listeners */
    int port_locks[IMGW_MAX_LISTENERS]; /* take_port_lock fds, or -1 */
    int n_port_locks;
    atomic_int loops_idle;
    atomic_int ext_posting; /* imgw_net_post calls under way */
    atomic_int closing;     /* every loop drained: no more posts */
    uv_mutex_t done_mu;
    uv_cond_t done_cv;
    const imgw_net_handlers_t *h;
    /* The protocol handlers by IMGW_PROTO_* (loop.c's table). */
    const imgw_proto_t *const *protos;
    imgw_iplimit_t *iplimit;
};

/*
 * The loop's clock for deadlines, timeouts and rate buckets: libuv's loop
 * time, CLOCK_MONOTONIC in ms, cached per iteration (uv_run refreshes it
 * before timers and again after polling, so read and mailbox callbacks see
 * a current value without a syscall each). Never the wall clock: a step
 * back (NTP, an operator, a VM resume) would freeze every auth and
 * heartbeat deadline, a step forward would fire them all at once.
 * Timestamps that go on the wire or into the store use the wall clock
 * (imgw_now_ms in core), never this one.
 */
static inline uint64_t
imgw__loop_clock_ms(imgw_loop_t *l)
{
    return uv_now(&l->uv);
}

/* ---- conn.c: for loop.c ---------------------------------------------- */

/* A zeroed connection of loop l in the HTTP handler, not yet in the
 * loop's table (harnesses use it bare). NULL when out of memory. */
imgw_conn_t *imgw__conn_new(imgw_loop_t *l);
/* Puts c's handle on the socket fd, which c then owns (conn_close_cb
 * closes it). Harnesses without a socket pass any pollable fd (an
 * eventfd: never readable, refuses writes). An error leaves fd open. */
int imgw__conn_open(imgw_conn_t *c, int fd);
/* The socket of c (-1 for none); valid until conn_close_cb. */
static inline int
imgw__conn_fd(const imgw_conn_t *c)
{
    /* libuv's unix uv_poll_t field: uv_fileno() refuses a closing handle,
     * and the peer's address is still wanted in on_close. */
    return c->poll.io_watcher.fd;
}
/* Takes the accepted socket fd into a new connection in the loop's table
 * and counts it; *node_conns is the node-wide count with it. NULL when it
 * failed (then fd is closed and nothing is left to clean up). */
imgw_conn_t *imgw__conn_accept(imgw_loop_t *l, int fd, long *node_conns);
int imgw__conn_tls_start(imgw_conn_t *c, imgw_tls_ctx_t *ctx);
/* Bytes from the socket (ciphertext on a TLS connection). */
void imgw__conn_on_read(imgw_conn_t *c, const uint8_t *data, size_t len);
void imgw__conn_flush_all(imgw_loop_t *l);
void imgw__conn_deadline_fired(imgw_conn_t *c);
/* Cuts the loop's output block pool and every handler's pools to keep. */
void imgw__conn_pools_trim(imgw_loop_t *l, size_t keep);
void imgw__obuf_release(imgw_loop_t *l, imgw_obuf_t *b);

/* ---- conn.c: the face the handlers (and loop.c) use ------------------- */

/* Plaintext into c's current handler (what a switch leaves over). */
void imgw__conn_input(imgw_conn_t *c, const uint8_t *data, size_t len);
/* Hands c to another handler (IMGW_PROTO_*), which starts it. */
void imgw__conn_set_proto(imgw_conn_t *c, int proto);
/* (Re)starts reading from the socket; closes c when libuv refuses. */
void imgw__conn_read_start(imgw_conn_t *c);
/* Stops reading until imgw__conn_read_start (an async HTTP answer). */
void imgw__conn_read_stop(imgw_conn_t *c);
int imgw__conn_write_raw(imgw_conn_t *c, const uv_buf_t *bufs, size_t n,
                         int bounded);
void imgw__conn_flush(imgw_conn_t *c);
void imgw__conn_close_now(imgw_conn_t *c);

/* ---- http.c, ws.c: helpers their unit tests reach --------------------- */

void imgw__http_resume(imgw_conn_t *c);
/* 0 for a valid RFC 6455 upgrade (accept filled), else 400 or 426. */
int imgw__http_check_upgrade(const imgw_http_req_t *req, int is_get,
                             char accept[29]);
/* Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 4.2.2): 0, or -1
 * for a key that is not 16 bytes of base64. */
int imgw__http_accept_key(const char *key, size_t key_len, char out[29]);
size_t imgw__ws_header(uint8_t *hdr, int opcode, size_t len);

#endif
