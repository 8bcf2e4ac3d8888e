/*
 * bench.h: shared types of imgw-bench, the load generator for imgw.
 *
 * Process model: the parent parses options, prepares server-side state
 * (groups through the admin API), forks --procs workers and measures the
 * server (/proc/<pid>/stat and status). Each worker owns one libuv loop and
 * a slice of the connections, runs the scenario and writes one bresult_t
 * back over a pipe; the parent merges them. Everything inside a worker runs
 * on its loop thread except the downlink publisher thread (AMQP), which
 * touches only atomic counters.
 *
 * Time: every timestamp is uv_hrtime() (CLOCK_MONOTONIC, nanoseconds),
 * which all processes of the host share, so a send time embedded in a
 * message by one process can be compared with a receive time in another.
 */
#ifndef IMGW_BENCH_H
#define IMGW_BENCH_H

#include "hist.h"

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

enum bench_scenario {
    SC_CONNECT = 0,
    SC_RELAY,
    SC_GROUP,
    SC_DOWNLINK,
    SC_STORM,
};

typedef struct bopts_s {
    int scenario;
    const char *host; /* must be in 127.0.0.0/8 */
    int port;
    int conns;        /* connect, storm */
    int pairs;        /* relay */
    int groups;       /* group */
    int members;      /* group */
    int receivers;    /* downlink */
    double rate;      /* conns/s (connect) or msgs/s (relay/group/downlink) */
    double conn_rate; /* setup connect rate for the other scenarios */
    double duration;  /* s of sending */
    double hold;      /* s (connect) */
    double jitter;    /* s (storm) */
    double drain;     /* s to wait for stragglers after sending */
    double timeout;   /* s for a connect+upgrade+auth */
    int size;         /* content bytes */
    int json;         /* text codec */
    int procs;
    int server_pid;
    int quiet;
    int hb_burst; /* heartbeats of all connections at once (not spread) */
    const char *secret;
    const char *admin_token;
    const char *amqp_url;
    const char *broker_id;
    const char *label;
    /* receivers (BR_RECV connections) connect here instead of host:port:
       another cluster node (cross-node relay); NULL / 0 = host / port */
    const char *recv_host;
    int recv_port;
    /* extra processes whose CPU is sampled like the server's (other nodes,
       redis-server, the broker): --watch-pid NAME=PID, repeatable */
    int nwatch;
    int watch_pid[8];
    const char *watch_name[8];
    char runid[16]; /* makes client_msg_ids unique across runs (dedupe) */
} bopts_t;

/* One worker's outcome, sent raw over a pipe (same binary on both ends). */
typedef struct bresult_s {
    uint64_t conns;    /* connections this worker was asked to open */
    uint64_t conns_ok; /* authenticated in the setup phase */
    uint64_t conns_fail;
    uint64_t http_fail; /* upgrade refused (status != 101) */
    uint64_t auth_fail; /* AuthResponse != ERR_SUCCESS */
    uint64_t kicked;
    uint64_t closed_unexpected;
    uint64_t sent;
    uint64_t skipped; /* sends due while the sender was not ready */
    uint64_t acked_ok;
    uint64_t acked_err;
    uint64_t ack_err_code; /* first non-success error code seen */
    uint64_t unacked;
    uint64_t expected; /* deliveries due to receivers */
    uint64_t received; /* unique deliveries */
    uint64_t dup;
    uint64_t lost;
    uint64_t seq_gaps;     /* PushMessage.seq not previous + 1 */
    uint64_t misrouted;    /* push carrying another stream's content */
    uint64_t error_rsp;    /* CMD_ERROR_RSP frames */
    uint64_t reconnect_ok; /* storm */
    uint64_t reconnect_fail;
    uint64_t publish_fail;     /* downlink */
    uint64_t cpu_setup_us;     /* worker user+sys CPU, setup phase */
    uint64_t cpu_phase_us;     /* worker user+sys CPU, measured phase */
    uint64_t cpu_phase_sys_us; /* of which system (kernel) time */
    uint64_t cpu_setup_sys_us;
    uint64_t setup_ns;    /* wall time of the setup phase */
    uint64_t phase_ns;    /* wall time of the sending phase */
    char err[160];        /* first error worth showing */
    bhist_t h_conn;       /* connect+upgrade+auth latency, ns */
    bhist_t h_lat;        /* delivery latency from intended send time, ns */
    bhist_t h_ack;        /* SendMessageResponse latency, ns */
    bhist_t h_storm;      /* storm: re-auth completion since the drop, ns */
    bhist_t h_lat_actual; /* delivery latency from the actual send, ns */
    bhist_t h_up;         /* actual send -> PushMessage.server_time (ms
                             resolution: wall clock mapped to monotonic) */
} bresult_t;

typedef struct bworker_s bworker_t;

enum bconn_state {
    BC_IDLE = 0,
    BC_CONNECTING,
    BC_HTTP,
    BC_AUTH,
    BC_READY,
    BC_CLOSING,
    BC_CLOSED,
};

enum bconn_role { BR_NONE = 0, BR_SEND = 1, BR_RECV = 2 };

#define BC_RING 1024 /* intended send times kept per sender, by sequence */

typedef struct bconn_s {
    uv_tcp_t tcp; /* data = this */
    uv_connect_t creq;
    bworker_t *w;
    uint32_t idx;  /* index in the worker */
    uint32_t gidx; /* global index: picks the source address */
    uint8_t state;
    uint8_t role;
    uint8_t counted;   /* setup outcome already counted */
    uint8_t was_ready; /* READY when the measured phase started */
    int32_t stream;    /* local stream this conn sends to / receives from */
    char user[40];
    char peer[40];   /* sender: receiver user id or group id */
    uint64_t t_conn; /* connect start, ns */
    uint8_t *rb;     /* partial input, only while a frame is incomplete */
    uint32_t rlen, rcap;
    uint8_t *frag; /* fragmented message being reassembled (rare) */
    uint32_t fraglen;
    uint8_t fragop;
    /* sender */
    uint32_t next_n; /* last message number issued */
    uint32_t outstanding;
    uint64_t *ring; /* intended time by n % BC_RING */
    /* receiver */
    uint8_t *bits;   /* bit n set = message n seen */
    uint32_t bitcap; /* bytes */
    uint64_t uniq;
    int64_t last_seq;
} bconn_t;

/* Connection layer (conn.c). Loop thread only. */
void bconn_start(bconn_t *c);
void bconn_close(bconn_t *c);
int bconn_send_msg(bconn_t *c, uint32_t n, const char *cmid, size_t cmidlen,
                   const uint8_t *content, size_t clen, int group);
int bconn_send_heartbeat(bconn_t *c);
void bconn_global_init(const bopts_t *o);
size_t bconn_worker_buf(void); /* bytes of write scratch a worker needs */

/* Callbacks from conn.c into the scenario code (main.c). */
void bench_on_ready(bconn_t *c, uint64_t now);
void bench_on_fail(bconn_t *c, int http_status, int auth_code, const char *why);
void bench_on_ack(bconn_t *c, uint32_t seq, int err, uint64_t now);
void bench_on_push(bconn_t *c, const uint8_t *content, size_t clen, int64_t seq,
                   int64_t server_ms, uint64_t now);
void bench_on_closed(bconn_t *c, const char *why);
void bench_on_kick(bconn_t *c);
void bench_on_error_rsp(bconn_t *c, int code);

/* Worker accessors used by conn.c. */
uv_loop_t *bench_loop(bworker_t *w);
uint8_t *bench_rbuf(bworker_t *w, size_t *len);
uint8_t *bench_wbuf(bworker_t *w, size_t *len);
const bopts_t *bench_opts(bworker_t *w);
uint32_t bench_rand(bworker_t *w);

#endif
