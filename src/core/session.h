/*
 * session.h: core's per-WebSocket state and the net handlers that drive
 * it. Internal to src/core. Loop thread only.
 */
#ifndef IMGW_SESSION_H
#define IMGW_SESSION_H

#include <string.h>

#include "node.h"

typedef struct imgw_session_s {
    imgw_core_loop_t *cl;
    imgw_conn_t *conn;
    /* Authenticated user id, NULL before auth: points into ids[], where
     * auth puts "user\0platform\0" (the platform read with
     * imgw_session_platform; the user map borrows that pointer until this
     * session removes its ref, usermap.h). */
    char *user;
    /* The user of a valid handshake token, NULL without one: points into
     * ids[] (session.c puts it there at the handshake, with room for a
     * short platform, so auth rewrites ids[] in place); NULL once
     * authenticated, when re-authentication is refused. */
    char *hs_user;
    uint8_t codec;      /* imgw_codec_t of the client's last frame */
    uint8_t authed;
    uint8_t registered; /* in the user map */
    float send_tokens;  /* CMD_SEND_MSG_REQ bucket */
    float other_tokens; /* every other frame */
    uint16_t n_watch, cap_watch; /* presence.c's watch[] (below) */
    /* Loop times (imgw_loop_now_ms), their low 32 bits: both are compared
     * with now by difference, which is exact for 49 days, and a live
     * session sends a frame (and so refills and refreshes) at least every
     * server.heartbeat_timeout (<= 1 day). 8 bytes less put an idle
     * session with a short user id and platform in a 96-byte malloc chunk
     * instead of 112. */
    uint32_t refill_ms;
    uint32_t route_refreshed_ms;
    struct imgw_hooks_chain_s *hook_chain; /* hooks.c: sends in order */
    /* presence.c: the users this connection subscribed to (owned ids),
     * at most limits.presence_subscriptions (<= 10,000, so 16-bit counts
     * that fit the padding above); each is also in the node's watch map
     * under this connection's ref. */
    char **watch;
    /* Grown once, at auth (the session is reallocated then, before anything
     * but the connection points at it): an idle connection's user id and
     * platform cost no malloc chunk of their own. */
    char ids[];
} imgw_session_t;
/* Every connection has one for its whole life (hold figures in
 * docs/benchmarks.md): a new field needs a place in the padding or a
 * reason to cost every idle connection more. */
_Static_assert(sizeof(imgw_session_t) <= 72, "imgw_session_t grew");

/* Bytes of platform the handshake leaves room for after a token's user
 * ("Web", "iOS", "Android", "bench"): auth's realloc then stays in the
 * chunk. A longer platform only moves the session. */
#define IMGW_SESSION_PLATFORM_ROOM 8

/* The platform of the authenticated session, "" before auth. */
static inline const char *
imgw_session_platform(const imgw_session_t *s)
{
    return s->user ? s->user + strlen(s->user) + 1 : "";
}

extern const imgw_net_handlers_t imgw_core_handlers;

/* reply.c: encodes body for command in the session's codec and queues the frame.
 * Returns 0 or a negative IMGW_E* code (the connection may be closing). */
int imgw_session_reply(imgw_session_t *s, int command, uint32_t sequence,
                       const void *body);
/* CMD_ERROR_RSP with code and a short message. */
void imgw_session_error(imgw_session_t *s, uint32_t sequence, int code,
                        const char *msg);
/* Kicks a connection of this loop (CMD_KICK_PUSH, then close 4002). */
void imgw_session_kick(imgw_core_loop_t *cl, imgw_conn_ref_t ref,
                       const char *platform);
/* loopctx.c: the authenticated session of a connection of this loop, or
 * NULL (gone, not a WebSocket, not authenticated). */
imgw_session_t *imgw_core_session(imgw_core_loop_t *cl, imgw_conn_ref_t ref);
/* loopctx.c: counts an error code in metrics. */
void imgw_core_count_error(imgw_core_loop_t *cl, int code);
/* The wall clock (unix ms) for timestamps on the wire and in the store;
 * never for deadlines (those use imgw_loop_now_ms, a monotonic clock). */
int64_t imgw_now_ms(void);
/* Test hook: added to imgw_now_ms() (a wall clock step); 0 in production. */
extern _Atomic int64_t imgw__wall_offset_ms;
/* The calling loop thread's core state (store callbacks use it). */
imgw_core_loop_t *imgw_core_loop_current(void);
/* Sets it (session.c, at loop start). */
void imgw_core_loop_set_current(imgw_core_loop_t *cl);

/* msg.c: the messaging commands. */
void imgw_msg_send(imgw_session_t *s, imgw_msg_in_t *in);
void imgw_msg_ack(imgw_session_t *s, imgw_msg_in_t *in);
void imgw_msg_sync(imgw_session_t *s, imgw_msg_in_t *in);
void imgw_msg_read(imgw_session_t *s, imgw_msg_in_t *in);
void imgw_msg_typing(imgw_session_t *s, imgw_msg_in_t *in);
void imgw_msg_revoke(imgw_session_t *s, imgw_msg_in_t *in);
/* The second half of a send (hooks.c calls it once the before-send hook
 * allowed it): encode, store, answer, push. q->sender_id is the sender. */
void imgw_msg_send_commit(imgw_core_loop_t *cl, imgw_conn_ref_t ref,
                          uint32_t sequence, const im_SendMessageRequest *q,
                          imgw_slice_t content, const char *conv);
/* SendMessageResponse to ref's session if it is still there (counted). */
void imgw_msg_send_answer(imgw_core_loop_t *cl, imgw_conn_ref_t ref,
                          uint32_t sequence, int code, const char *msg,
                          uint64_t message_id, int64_t seq,
                          int64_t server_time);
/* Frees the calling loop thread's messaging scratch (at loop stop). */
void imgw_msg_thread_free(void);

/* deliver.c: pushes to connections of this node, on any loop. */
void imgw_deliver_push(imgw_core_loop_t *cl, const uint8_t *blob, size_t len,
                       int64_t timestamp, const char *const *users,
                       const int64_t *seqs, size_t n, imgw_conn_ref_t exclude);
/* Only this node's connections (used for pushes from other nodes). */
void imgw_deliver_push_local(imgw_core_loop_t *cl, const uint8_t *blob,
                             size_t len, int64_t timestamp,
                             const char *const *users, const int64_t *seqs,
                             size_t n, imgw_conn_ref_t exclude);
void imgw_deliver_frame(imgw_core_loop_t *cl, int command,
                        const imgw_push_body_t *body, const char *const *users,
                        size_t n, imgw_conn_ref_t exclude);
/* Pre-encoded frames (both codecs) to users' connections, or broadcast
 * to every WebSocket of the node when users is NULL. Returns the number
 * of connections targeted. */
size_t imgw_deliver_raw(imgw_core_loop_t *cl, const uint8_t *pb, size_t pb_len,
                        const uint8_t *json, size_t json_len,
                        const char *const *users, size_t n);
void imgw_deliver_mail(imgw_core_loop_t *cl, imgw_mail_t *m);
/* Kicks a connection of this node, on whichever loop owns it. */
void imgw_deliver_kick(imgw_core_loop_t *cl, imgw_conn_ref_t ref,
                       const char *platform);
/* Kicks (user, platform) on another node (through cluster.c), if any. */
void imgw_deliver_kick_remote(imgw_core_loop_t *cl, const char *user,
                              const char *platform);
/* Frees the calling loop thread's routing scratch (at loop stop). */
void imgw_deliver_thread_free(void);

/* cluster.c: other nodes, through the MQ thread (node->mq set). */
int imgw_cluster_start(imgw_node_t *node, char *err, size_t errlen);
void imgw_cluster_stop(imgw_node_t *node);
void imgw_cluster_push(imgw_core_loop_t *cl, const uint8_t *blob, size_t len,
                       int64_t timestamp, const char *const *users,
                       const int64_t *seqs, size_t n);
void imgw_cluster_frame(imgw_core_loop_t *cl, int command,
                        const imgw_push_body_t *body,
                        const char *const *users, size_t n);
/* Kicks (user, platform) on whichever other node its route names. */
void imgw_cluster_kick(imgw_core_loop_t *cl, const char *user,
                       const char *platform);
/* A message consumed from this node's queue, parsed (on a loop). */
enum {
    IMGW_CLUSTER_IN_DOWNLINK = 1, /* a business downlink, like /api/push */
    IMGW_CLUSTER_IN_PUSH,         /* another node's stored message */
    IMGW_CLUSTER_IN_KICK,         /* (user, platform) logged in elsewhere */
    IMGW_CLUSTER_IN_PRESENCE      /* a presence change for our watchers */
};
typedef struct imgw_cluster_in_s {
    int kind;
    struct cJSON *j; /* the parsed message; user and platform point in it */
    uint8_t *blob;   /* PUSH: the PushMessage */
    size_t blob_len;
    int64_t ts;
    const char **users;
    int64_t *seqs;
    size_t n;
    const char *user, *platform; /* KICK */
} imgw_cluster_in_t;
const char *imgw_cluster_parse(const uint8_t *body, size_t len,
                               imgw_cluster_in_t *in);
void imgw_cluster_in_free(imgw_cluster_in_t *in);
void imgw_cluster_settle(imgw_core_loop_t *cl, uint64_t tag, size_t len,
                         const char *why);

/* presence.c: presence queries, subscriptions and pushes. */
void imgw_presence_query(imgw_session_t *s, imgw_msg_in_t *in);
void imgw_presence_subscribe(imgw_session_t *s, imgw_msg_in_t *in);
/* (user, platform) logged in (online 1) or out (0) on this node, called
 * right after the route write was issued: tells the subscribers, on this
 * node and on the watching nodes, once the store has answered. */
void imgw_presence_changed(imgw_core_loop_t *cl, const char *user,
                           const char *platform, int online);
/* The connection closes: drops its subscriptions. */
void imgw_presence_session_closed(imgw_session_t *s);
/* A presence message from another node (cluster.c parsed it). */
void imgw_presence_remote(imgw_core_loop_t *cl, const struct cJSON *j);
/* Loop 0's tick: re-registers this node's watched users in the store
 * before their IM-PWATCH entries expire. */
void imgw_presence_tick(imgw_core_loop_t *cl, uint64_t now_ms);
/* deliver.c: a PresencePush (its JSON body) to other nodes, one broker
 * message each (through cluster.c). */
void imgw_deliver_presence_remote(imgw_core_loop_t *cl,
                                  const char *const *nodes, size_t n,
                                  const uint8_t *json_body, size_t len);
/* cluster.c: {"imgw":"presence","data":BODY} to each node's queue. */
void imgw_cluster_presence(imgw_core_loop_t *cl, const char *const *nodes,
                           size_t n, const uint8_t *json_body, size_t len);
/* deliver.c: pre-encoded frames (both codecs) to connections by ref, on
 * whichever loop owns them (counted as presence pushes). */
void imgw_deliver_raw_refs(imgw_core_loop_t *cl, const uint8_t *pb,
                           size_t pb_len, const uint8_t *json,
                           size_t json_len, const imgw_conn_ref_t *refs,
                           size_t n);

/* api.c: plain HTTP endpoints. */
int imgw_api_handle(imgw_core_loop_t *cl, imgw_conn_t *c,
                    const imgw_http_req_t *req);

#endif
