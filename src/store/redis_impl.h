/*
 * redis_impl.h: what the files of the redis store backend share (redis.c:
 * URL, connection, request queue, timeouts, lifecycle; redis_ops.c: the
 * Lua scripts and one function per store request). Nothing outside
 * src/store/redis*.c includes it; hiredis types stay behind it.
 *
 * Threads: everything here runs on the loop that owns the per-loop handle,
 * except imgw__redis_url_parse (main thread, from open).
 */
#ifndef IMGW_STORE_REDIS_IMPL_H
#define IMGW_STORE_REDIS_IMPL_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include "list.h"
#include "store_impl.h"

#define IMGW__REDIS_HOST_MAX 255
/* Commands in flight per loop before new requests are refused. */
#define IMGW__REDIS_MAX_INFLIGHT 4096
#define IMGW__REDIS_PATH_MAX 107 /* sun_path is 108 bytes with the NUL */
#define IMGW__REDIS_SECRET_MAX 255
#define IMGW__REDIS_MAX_DEVICES 16 /* delivered positions per user */
#define IMGW__REDIS_MAX_READS 256  /* read positions per user */
#define IMGW__REDIS_ADDRS 8        /* addresses of a host name tried */

/* The Lua scripts: loaded on every connection, run with EVALSHA. */
enum {
    IMGW__REDIS_S_APPEND,
    IMGW__REDIS_S_SYNC,
    IMGW__REDIS_S_REVOKE,
    IMGW__REDIS_S_GROUP_SET,
    IMGW__REDIS_S_ROUTE_SET,
    IMGW__REDIS_S_ROUTE_DEL,
    IMGW__REDIS_S_DELIVERED,
    IMGW__REDIS_S_READ,
    IMGW__REDIS_S_MAX_SEQ,
    IMGW__REDIS_S_ROUTE_REFRESH,
    IMGW__REDIS_S_CONV_LIST,
    IMGW__REDIS_S_CONV_READ,
    IMGW__REDIS_S_CONV_DEL,
    IMGW__REDIS_N_SCRIPTS
};

/* Script bodies, indexed by IMGW__REDIS_S_* (redis_ops.c). */
extern const char *const imgw__redis_scripts[IMGW__REDIS_N_SCRIPTS];

/* A parsed redis_url. Strings are owned by the struct (one free each). */
typedef struct imgw__redis_url_s {
    char *host;     /* TCP host (name or address), or NULL for unix */
    int port;       /* TCP port */
    char *path;     /* unix socket path, or NULL for TCP */
    char *user;     /* ACL user for AUTH, or NULL */
    char *password; /* AUTH password, or NULL: no AUTH */
    int db;         /* SELECT db (0: no SELECT sent) */
} imgw__redis_url_t;

/** Node-wide state (imgw_store_t.impl): configuration, read-only. */
typedef struct imgw__redis_s {
    imgw__redis_url_t url;
    char where[IMGW__REDIS_HOST_MAX + 64]; /* "host:port db N", for logs */
    int retention_count;
    int64_t retention_ms;
    int64_t seq_ttl_ms; /* IM-SEQ: retention + seq_idle_days, refreshed */
    int dedupe_ttl; /* seconds */
    int max_convs;  /* conversations kept per user (IM-CONV) */
    int timeout_ms; /* per command, connect and handshake included */
    /* The node is ready when every loop's connection is (/readyz,
     * imgw_store_up): each loop thread moves these as its own connection
     * comes and goes; any thread reads them. */
    atomic_int loops_open;
    atomic_int loops_ready;
} imgw__redis_t;

typedef struct imgw__redis_loop_s imgw__redis_loop_t;
typedef struct imgw__redis_req_s imgw__redis_req_t;

/*
 * Completes a request: reply is the server's answer (never an error reply:
 * those arrive as status IMGW_EBUSY with reply NULL) or NULL with status
 * < 0. Runs exactly once per request; the request is freed after it.
 */
typedef void (*imgw__redis_done_fn)(imgw__redis_req_t *q, redisReply *reply,
                                    int status);

/*
 * One command in flight. Linked in the loop's FIFO from the moment it is
 * handed to hiredis until its reply callback; hiredis answers in order, so
 * the FIFO's head always has the nearest deadline.
 */
struct imgw__redis_req_s {
    imgw_list_t link; /* in the loop's FIFO; zeroed: in none */
    imgw__redis_loop_t *rl;
    uint64_t deadline; /* uv_now() ms */
    imgw__redis_done_fn done;
    uint8_t write;   /* 1: a write; a lost answer leaves its fate unknown */
    uint8_t script;  /* IMGW__REDIS_S_* + 1 for EVALSHA, 0 otherwise */
    uint8_t retried; /* a NOSCRIPT retry was made */
    uint8_t internal; /* handshake / keepalive: no user callback */
    char *cmd;        /* EVALSHA requests: the formatted command, kept to
                         resend it after NOSCRIPT (hiredis allocation) */
    size_t cmdlen;
    /* The caller's callback and its argument (one of them is set). */
    union {
        imgw_store_append_cb append;
        imgw_store_sync_cb sync;
        imgw_store_seq_cb seq;
        imgw_store_done_cb done;
        imgw_store_msg_cb msg;
        imgw_store_members_cb members;
        imgw_store_routes_cb routes;
        imgw_store_dedupe_cb dedupe;
        imgw_store_conv_list_cb convs;
    } cb;
    void *data;
    imgw_store_append_t *app; /* append: the caller's request */
    uint64_t message_id;      /* msg_get: the id asked for */
    int aux; /* sync: the page size; SCRIPT LOAD: the script index */
};

/* Connection states of one loop's context. */
enum {
    IMGW__REDIS_DOWN,      /* no context; the reconnect timer runs */
    IMGW__REDIS_RESOLVING, /* uv_getaddrinfo in progress */
    IMGW__REDIS_HANDSHAKE, /* connecting; AUTH/SELECT/SCRIPT LOAD queued */
    IMGW__REDIS_READY,     /* requests are accepted */
};

/** Per-loop state; the store.h handle is its first member. */
struct imgw__redis_loop_s {
    imgw_store_loop_t base; /* first: store.c's handle */
    imgw__redis_t *r;
    uv_loop_t *loop;
    redisAsyncContext *ac; /* NULL while down */
    int state;             /* IMGW__REDIS_* */
    int freeing;           /* redisAsyncFree called, not finished yet */
    int closing;           /* loop_close called */
    int up;                /* reached READY since the last connect */
    int drop_status;       /* status for in-flight requests of a drop we
                              started (0: by kind, see imgw__redis_fail) */
    int handshake_left;    /* handshake replies still expected */
    int backoff_ms;        /* next reconnect delay */
    int open_handles;      /* uv handles / requests not yet closed */
    imgw_list_t fifo;       /* the in-flight FIFO (of req.link) */
    size_t n_inflight;
    uint64_t shed;          /* requests refused at IMGW__REDIS_MAX_INFLIGHT */
    uint64_t last_send; /* uv_now() of the last command sent */
    uv_timer_t deadline_timer; /* fires at the FIFO head's deadline */
    uv_timer_t conn_timer;     /* reconnect backoff / keepalive PING */
    uv_getaddrinfo_t gai;
    int gai_active;
    unsigned addr_idx; /* which resolved address the next attempt uses */
    char sha[IMGW__REDIS_N_SCRIPTS][41]; /* from SCRIPT LOAD replies */
};

/* ---- redis.c ------------------------------------------------------------- */

/**
 * Parses redis://[[user]:password@]host[:port][/db] or
 * unix:/path[?db=N][&password=P] (also unix:///path) into *u. Returns 0,
 * or IMGW_ECONFIG with a message in err. u is zeroed first; free it with
 * imgw__redis_url_free either way.
 */
int imgw__redis_url_parse(const char *s, imgw__redis_url_t *u, char *err,
                          size_t errlen);
void imgw__redis_url_free(imgw__redis_url_t *u);

/**
 * A request for a store call: NULL when the loop is not ready (the caller
 * then completes with IMGW_EBUSY at once) or out of memory (*refuse set to
 * IMGW_ENOMEM: the call is refused).
 */
imgw__redis_req_t *imgw__redis_req_new(imgw__redis_loop_t *rl,
                                       imgw__redis_done_fn done, int write,
                                       int *refuse);

/**
 * Sends q as argv (EVALSHA of script s + 1 when s >= 0: argv[0] and
 * argv[1] are filled in here, the caller leaves them empty). From here on
 * q->done runs exactly once (possibly before this returns, with
 * IMGW_EBUSY, if hiredis refuses the command).
 */
void imgw__redis_send(imgw__redis_req_t *q, int script, int argc,
                      const char **argv, size_t *lens);

/** Frees a request that was never sent. */
void imgw__redis_req_free(imgw__redis_req_t *q);

/* ---- redis_ops.c: the request functions of the backend table ------------ */

int imgw__redis_dedupe_get(imgw_store_loop_t *sl, const char *sender,
                           const char *client_msg_id, imgw_store_dedupe_cb cb,
                           void *data);

int imgw__redis_append(imgw_store_loop_t *sl, imgw_store_append_t *req,
                       imgw_store_append_cb cb, void *data);
int imgw__redis_sync(imgw_store_loop_t *sl, const char *user, int64_t min_seq,
                     int64_t max_seq, int limit, imgw_store_sync_cb cb,
                     void *data);
int imgw__redis_max_seq(imgw_store_loop_t *sl, const char *user,
                        imgw_store_seq_cb cb, void *data);
int imgw__redis_set_delivered(imgw_store_loop_t *sl, const char *user,
                              const char *device, int64_t seq,
                              imgw_store_done_cb cb, void *data);
int imgw__redis_set_read(imgw_store_loop_t *sl, const char *user,
                         const char *conversation_id, const char *message_id,
                         imgw_store_done_cb cb, void *data);
int imgw__redis_msg_get(imgw_store_loop_t *sl, uint64_t message_id,
                        imgw_store_msg_cb cb, void *data);
int imgw__redis_revoke(imgw_store_loop_t *sl, uint64_t message_id,
                       imgw_store_done_cb cb, void *data);
int imgw__redis_group_set(imgw_store_loop_t *sl, const char *gid,
                          const char *const *members, size_t n,
                          imgw_store_done_cb cb, void *data);
int imgw__redis_group_get(imgw_store_loop_t *sl, const char *gid,
                          imgw_store_members_cb cb, void *data);
int imgw__redis_group_del(imgw_store_loop_t *sl, const char *gid,
                          imgw_store_done_cb cb, void *data);
int imgw__redis_route_set(imgw_store_loop_t *sl, const char *user,
                          const char *platform, const char *broker_id, int ttl,
                          imgw_store_done_cb cb, void *data);
int imgw__redis_route_del(imgw_store_loop_t *sl, const char *user,
                          const char *platform, const char *broker_id,
                          imgw_store_done_cb cb, void *data);
int imgw__redis_route_refresh(imgw_store_loop_t *sl, const char *user,
                              int ttl, imgw_store_done_cb cb, void *data);
int imgw__redis_route_get(imgw_store_loop_t *sl, const char *user,
                          imgw_store_routes_cb cb, void *data);
int imgw__redis_conv_list(imgw_store_loop_t *sl, const char *user,
                          int64_t before_seq, int limit,
                          imgw_store_conv_list_cb cb, void *data);
int imgw__redis_conv_read(imgw_store_loop_t *sl, const char *user, int kind,
                          const char *peer, int64_t read_seq,
                          imgw_store_done_cb cb, void *data);
int imgw__redis_conv_delete(imgw_store_loop_t *sl, const char *user,
                            int kind, const char *peer, imgw_store_done_cb cb,
                            void *data);
int imgw__redis_watch_set(imgw_store_loop_t *sl, const char *user,
                          const char *broker_id, int ttl,
                          imgw_store_done_cb cb, void *data);
int imgw__redis_watch_get(imgw_store_loop_t *sl, const char *user,
                          imgw_store_routes_cb cb, void *data);

#endif
