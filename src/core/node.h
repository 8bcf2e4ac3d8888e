/*
 * node.h: the node (one imgw process) as core sees it, and each loop's core
 * state. Internal to src/core.
 *
 * imgw_node_t is built on the main thread before the loops start and is
 * read-only afterwards, apart from its thread-safe members (usermap, idgen,
 * store, atomics). imgw_core_loop_t belongs to one loop thread.
 */
#ifndef IMGW_NODE_H
#define IMGW_NODE_H

#include <stdatomic.h>
#include <stdint.h>

#include "codec.h"
#include "config.h"
#include "stat.h"
#include "id.h"
#include "jwt.h"
#include "mailbox.h"
#include "net.h"
#include "store.h"
#include "usermap.h"
#include "watchmap.h"

/* Error responses as counted in metrics: index = the code's position among
 * the ErrorCode values (imgw_codec_err_index), the last one "other". */
#define IMGW_N_ERRCODES (IMGW_CODEC_MAX_ERRS + 1)

typedef struct imgw_node_s {
    const imgw_config_t *cfg;
    imgw_net_t *net;
    imgw_usermap_t *users;
    imgw_watchmap_t *watches;  /* presence subscriptions (presence.c) */
    imgw_idgen_t ids;
    imgw_store_t *store;
    struct imgw_core_loop_s **loops;
    int n_loops;
    uint64_t start_ms;
    atomic_int draining;
    struct imgw_mq_s *mq;      /* NULL = single node */
    atomic_uint mq_rr;         /* round robin of consumed messages */
    atomic_ullong mq_bad;      /* consumed messages rejected as malformed */
    atomic_ullong remote_dropped; /* remote pushes the broker did not take */
} imgw_node_t;

/* Per-loop counters; summed over loops by /metrics (metrics.c's table).
 * Only the loop thread writes them (imgw_stat_inc, base/stat.h); any thread
 * reads them (imgw_stat_get). */
typedef struct imgw_core_stats_s {
    imgw_stat_t auth_ok;
    imgw_stat_t sessions_authed; /* gauge: authenticated connections */
    imgw_stat_t auth_fail[8];    /* by imgw_jwt_result_t (negated), [7] other */
    imgw_stat_t handshake_401;
    imgw_stat_t refused_origin;
    imgw_stat_t msgs_sent;
    imgw_stat_t msgs_pushed; /* push frames written */
    imgw_stat_t msgs_synced; /* entries returned by sync */
    imgw_stat_t msgs_dup;
    imgw_stat_t errors[IMGW_N_ERRCODES];
    imgw_stat_t kicks;
    imgw_stat_t heartbeats;
    imgw_stat_t rate_limited;
    imgw_stat_t api_pushes;
    imgw_stat_t presence_pushes; /* CMD_PRESENCE_PUSH frames written */
    imgw_stat_t store_ops;
    imgw_stat_t store_errors;
    imgw_stat_t store_lat_us_sum;
    imgw_stat_t store_lat_hist[12]; /* buckets, see metrics.c */
} imgw_core_stats_t;

typedef struct imgw_core_loop_s {
    imgw_node_t *node;
    imgw_loop_t *loop;
    int index;
    imgw_jwt_t *jwt;
    imgw_store_loop_t *store;
    imgw_msg_in_t in;       /* decode scratch */
    uint8_t *scratch;       /* decoded JSON strings, max_frame_bytes */
    size_t scratch_cap;
    uint8_t *out;           /* encode buffer for one frame */
    size_t out_cap;
    /* imgw_msg_send's PushMessage: every field it encodes is assigned on
     * each send (extra only up to extra_count), so it is never zeroed. */
    im_PushMessage push;
    imgw_core_stats_t st;
    struct imgw_hooks_loop_s *hooks; /* hooks.c; NULL without hooks */
} imgw_core_loop_t;

/* Mail between loops (see session.c / deliver.c). */
enum {
    IMGW_MAIL_KICK = 1, /* close ref with CMD_KICK_PUSH + 4002 */
    IMGW_MAIL_PUSH,     /* a PushMessage blob to refs with their seqs */
    IMGW_MAIL_FRAME,    /* a server->client body struct to refs */
    IMGW_MAIL_RAW,      /* a pre-encoded frame per codec (downlink) */
    IMGW_MAIL_MQ        /* a broker message (raw[0]) to handle, tag */
};

typedef struct imgw_target_s {
    imgw_conn_ref_t ref;
    int64_t seq;
} imgw_target_t;

typedef union imgw_push_body_u {
    im_KickPush kick;
    im_TypingStatusPush typing;
    im_ReadReceiptPush read;
    im_RevokeMessagePush revoke;
} imgw_push_body_t;

/*
 * What a mail carries, allocated once per fan-out and shared by every loop
 * it goes to (one reference per mail; the last loop to release it frees
 * it): a PushMessage blob (ptr[0]), a FRAME body (ptr[0], only as many
 * bytes as its command's struct, imgw_push_body_size), a RAW frame per
 * codec, a broker message (MQ, ptr[0]), a KICK's platform (ptr[0], a
 * string). Immutable once posted. Before issue 16 every mail embedded an
 * imgw_push_body_t (~2.9 KB, zeroed) and copied its blob per loop.
 */
typedef struct imgw_mail_data_s {
    atomic_uint refs;
    uint8_t *ptr[2]; /* into bytes[], or NULL */
    size_t len[2];
    _Alignas(8) uint8_t bytes[];
} imgw_mail_data_t;

/* A mail: a small header, the data reference, the targets. */
typedef struct imgw_mail_s {
    imgw_mpsc_node_t node;
    int kind;
    int command;              /* FRAME: the body's command */
    int64_t timestamp;
    int broadcast;            /* RAW: every WebSocket of the loop */
    imgw_mail_data_t *data;   /* one reference (deliver.c's mail_data_*) */
    uint64_t tag;             /* MQ: delivery tag to settle */
    size_t n;                 /* targets */
    imgw_target_t targets[];
} imgw_mail_t;

#endif
