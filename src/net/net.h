/*
 * net.h: the network layer's face towards core.
 *
 * net owns loops, listeners, connections, HTTP parsing (llhttp), WebSocket
 * framing (wslay), write queues, per-connection deadlines and mailboxes. It
 * knows nothing of the IM protocol: core plugs in through
 * imgw_net_handlers_t, called on the loop thread that owns the connection.
 *
 * Thread rules: every imgw_conn_* function is called only on the loop that
 * owns the connection (other threads post to that loop's mailbox and use
 * imgw_conn_ref_t, never a pointer). imgw_loop_post() may be called from
 * any thread.
 */
#ifndef IMGW_NET_H
#define IMGW_NET_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <uv.h>

#include "mailbox.h"
#include "conn_ref.h"

typedef struct imgw_conn_s imgw_conn_t;
typedef struct imgw_loop_s imgw_loop_t;

/* ---- HTTP requests as core sees them --------------------------------- */

#define IMGW_HTTP_MAX_HEADERS 64
#define IMGW_HTTP_MAX_HEAD 8192

typedef struct imgw_span_s {
    const char *p;
    size_t len;
} imgw_span_t;

typedef struct imgw_http_req_s {
    const char *method;    /* "GET", "PUT", ... */
    imgw_span_t path;      /* without the query */
    imgw_span_t query;     /* after '?', may be empty */
    size_t n_headers;
    imgw_span_t names[IMGW_HTTP_MAX_HEADERS];
    imgw_span_t values[IMGW_HTTP_MAX_HEADERS];
    const uint8_t *body;
    size_t body_len;
    int is_upgrade;        /* a valid RFC 6455 upgrade request */
    char peer[64];         /* remote address */
} imgw_http_req_t;

/** Case-insensitive header lookup; returns the first value or NULL. */
const imgw_span_t *imgw_http_header(const imgw_http_req_t *req,
                                    const char *name);
/** Query parameter value (%XX and + decoded): 0, -1 when absent, -2 when
 * longer than outlen allows. */
int imgw_http_query_param(const imgw_http_req_t *req, const char *name,
                          char *out, size_t outlen);
/** Cookie value by name: 0, -1 when absent, -2 when too long. */
int imgw_http_cookie(const imgw_http_req_t *req, const char *name, char *out,
                     size_t outlen);

/* ---- handlers: core's side ------------------------------------------- */

typedef struct imgw_net_handlers_s {
    /*
     * A complete non-upgrade request. Respond with imgw_conn_http_respond()
     * before returning (return 0) or later (return 1: the connection stops
     * reading until the response is sent).
     */
    int (*on_http)(imgw_conn_t *c, const imgw_http_req_t *req);
    /*
     * A valid WebSocket upgrade request. Return 0 to accept (net answers
     * 101 and the connection is a WebSocket from now on), or an HTTP status
     * (401, 403, 503, ...) to refuse it; net writes that response.
     */
    int (*on_upgrade)(imgw_conn_t *c, const imgw_http_req_t *req);
    /* One complete WebSocket message (text: already UTF-8 validated). data
     * is valid only during the call. */
    void (*on_message)(imgw_conn_t *c, int is_text, const uint8_t *data,
                       size_t len);
    /* The connection's deadline passed (see imgw_conn_set_deadline). */
    void (*on_deadline)(imgw_conn_t *c);
    /* The connection is gone; last call for it. */
    void (*on_close)(imgw_conn_t *c);
    /* A mailbox node posted with imgw_loop_post(); the handler owns it. */
    void (*on_mail)(imgw_loop_t *l, imgw_mpsc_node_t *n);
    /* Once a second on every loop; now_ms is loop time (monotonic). */
    void (*on_tick)(imgw_loop_t *l, uint64_t now_ms);
    /* Loop thread start/stop (per-loop state such as store handles). */
    int (*on_loop_start)(imgw_loop_t *l);
    void (*on_loop_stop)(imgw_loop_t *l);
} imgw_net_handlers_t;

/* ---- net-wide setup -------------------------------------------------- */

typedef struct imgw_net_opts_s {
    const char *bind;
    const uint16_t *ports;
    int n_ports;
    const uint16_t *tls_ports; /* wss:// listeners of their own */
    int n_tls_ports;
    const char *tls_cert;   /* PEM files, required with tls_ports */
    const char *tls_key;
    int n_loops;
    int auth_timeout;       /* seconds: unauthenticated connections */
    size_t max_frame_bytes; /* WebSocket message bound: close 1009 */
    size_t max_queued_bytes;/* per-connection output bound */
    size_t max_body_bytes;  /* HTTP request body bound: 413 */
    int max_connections;    /* node-wide: HTTP 503 beyond */
    int max_connections_per_ip; /* node-wide per address: 429; 0 = off */
    int handshake_rate;     /* accepted connections/s per loop (burst =
                               rate): 429 beyond; 0 = off */
    /* Batching under load (loop.c prepare_cb): after an iteration that
     * read from at least IMGW_BATCH_MIN_READS connections, the loop
     * sleeps this long before it polls again, so input that arrives
     * meanwhile is read, stored and answered in one iteration: fewer
     * wake-ups of this loop and of the peers, fewer writes. The wait is
     * what is left of batch_us since the previous iteration, so a busy
     * loop polls at most once per batch_us and a saturated one never
     * waits. Adds at most this (plus the kernel's timer slack) to a
     * message's latency, only under load. 0 = off. */
    int batch_us;
    const imgw_net_handlers_t *handlers;
    void *data;             /* core's node pointer */
} imgw_net_opts_t;

typedef struct imgw_net_s imgw_net_t;

/* Creates the loops (threads not started); binds every listener so a
 * bad address or port in use is reported before anything runs. */
int imgw_net_new(imgw_net_t **out, const imgw_net_opts_t *opts, char *err,
                 size_t errlen);
/* Starts one thread per loop. */
int imgw_net_start(imgw_net_t *n);
/* Any thread: stop accepting and begin the drain: every connection gets
 * close code 1001, spread over drain_ms. */
void imgw_net_drain(imgw_net_t *n, int drain_ms);
/* Waits for every loop thread to finish (after drain). Returns 0 or
 * UV_ETIMEDOUT when timeout_ms passed. */
int imgw_net_join(imgw_net_t *n, int timeout_ms);
void imgw_net_free(imgw_net_t *n);
int imgw_net_n_loops(const imgw_net_t *n);
imgw_loop_t *imgw_net_loop(imgw_net_t *n, int i);
int imgw_net_draining(const imgw_net_t *n);
/* Node-wide open connections (approximate). */
long imgw_net_conn_count(const imgw_net_t *n);

/* ---- loops ------------------------------------------------------------ */

/** Loop threads: hands n to loop l's on_mail handler. 0 or UV_E*. */
int imgw_loop_post(imgw_loop_t *l, imgw_mpsc_node_t *n);
/*
 * Threads that are not loops (the MQ thread): like imgw_loop_post, but
 * safe against the loops shutting down: returns IMGW_ECLOSED (and keeps
 * ownership of node with the caller) once the loops are closing.
 */
int imgw_net_post(imgw_net_t *n, int loop, imgw_mpsc_node_t *node);
int imgw_loop_index(const imgw_loop_t *l);
uv_loop_t *imgw_loop_uv(imgw_loop_t *l);
imgw_net_t *imgw_loop_net(imgw_loop_t *l);
void *imgw_loop_data(imgw_loop_t *l);
void imgw_loop_set_data(imgw_loop_t *l, void *data);
void *imgw_net_data(imgw_net_t *n);
/** Loop's own connection by ref; NULL when gone (stale generation). */
imgw_conn_t *imgw_loop_conn(imgw_loop_t *l, imgw_conn_ref_t ref);
/** Calls fn for every WebSocket connection of the loop. */
void imgw_loop_foreach_ws(imgw_loop_t *l, void (*fn)(imgw_conn_t *, void *),
                          void *arg);
/** Loop time of this iteration, ms: a monotonic clock (not the wall clock,
 * not unix time), for deadlines, timeouts and rate buckets only. */
uint64_t imgw_loop_now_ms(imgw_loop_t *l);

/*
 * A loop's counters, one list: the loop keeps them as imgw_stat_t (written
 * only by the loop, see base/stat.h) and imgw_loop_stats() copies them into
 * this plain struct for any thread. X(name, comment).
 */
#define IMGW_LOOP_COUNTERS(X)                                                  \
    X(accepted, "TCP connections accepted")                                    \
    X(conns_open, "gauge: all connections, HTTP and WebSocket")                \
    X(ws_open, "gauge: open WebSockets")                                       \
    X(handshakes_ok, "upgrades answered 101")                                  \
    X(handshakes_failed, "upgrades and heads refused")                         \
    X(http_requests, "plain HTTP requests")                                    \
    X(frames_in, "WebSocket messages received")                                \
    X(frames_out, "WebSocket messages queued")                                 \
    X(bytes_in, "socket bytes read")                                           \
    X(bytes_out, "socket bytes written")                                       \
    X(slow_consumers, "closed at max_queued_bytes")                            \
    X(refused_full, "refused at max_connections")                              \
    X(refused_ip, "refused at max_connections_per_ip")                         \
    X(refused_rate, "refused at handshake_rate")                              \
    X(batch_waits, "busy iterations followed by a server.batch_us wait")

typedef struct imgw_loop_stats_s {
#define IMGW__LOOP_STAT_FIELD(name, what) uint64_t name;
    IMGW_LOOP_COUNTERS(IMGW__LOOP_STAT_FIELD)
#undef IMGW__LOOP_STAT_FIELD
    /* the loop's mailbox */
    uint64_t mailbox_drained, mailbox_wakeups, mailbox_last_batch;
    uint64_t mailbox_depth;
} imgw_loop_stats_t;
/** Any thread: a snapshot of loop l's counters (each a moment old at most;
 * no two are taken at the same instant). */
void imgw_loop_stats(imgw_loop_t *l, imgw_loop_stats_t *out);

/* ---- connections ------------------------------------------------------ */

imgw_conn_ref_t imgw_conn_ref(const imgw_conn_t *c);
imgw_loop_t *imgw_conn_loop(const imgw_conn_t *c);
void *imgw_conn_data(const imgw_conn_t *c);
void imgw_conn_set_data(imgw_conn_t *c, void *data);
const char *imgw_conn_peer(const imgw_conn_t *c);
int imgw_conn_is_ws(const imgw_conn_t *c);
/** Loop time (ms) of the connection's last received bytes. */
uint64_t imgw_conn_last_rx_ms(const imgw_conn_t *c);
int imgw_conn_closing(const imgw_conn_t *c);

/*
 * Queues one WebSocket message (text or binary) made of n pieces. Output is
 * coalesced per loop iteration and flushed with one write per socket.
 * Returns 0, IMGW_ECLOSED (connection closing) or IMGW_EQUEUEFULL (the
 * connection exceeded max_queued_bytes: it is being closed as a slow
 * consumer).
 */
int imgw_conn_send_ws(imgw_conn_t *c, int is_text, const uv_buf_t *pieces,
                      size_t n);
/* Sends a close frame with code (and reason), then closes the connection
 * once it is flushed (or after a short grace period). Idempotent. */
void imgw_conn_close_ws(imgw_conn_t *c, int code, const char *reason);
/* Closes at once, dropping queued output. Idempotent. */
void imgw_conn_abort(imgw_conn_t *c);
/* Absolute deadline in loop ms (0 = none); on expiry on_deadline runs. */
void imgw_conn_set_deadline(imgw_conn_t *c, uint64_t deadline_ms);
/* Writes an HTTP response (Content-Length framing). keep_alive = 0 closes
 * after the write. extra_headers: "Name: value\r\n"... or NULL. */
void imgw_conn_http_respond(imgw_conn_t *c, int status, const char *ctype,
                            const char *extra_headers, const void *body,
                            size_t body_len, int keep_alive);

#endif
