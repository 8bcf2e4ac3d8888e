/*
 * hooks.h: the business hooks (docs/hooks.md). The product's own services
 * decide on each send before it is stored ([hooks] before_send_url) and
 * receive events ([hooks] events_url): message.offline for receivers with
 * no connection on any node, user.online / user.offline for a user's first
 * / last connection on this node. Every request is signed (HMAC-SHA256 of
 * timestamp "." body with [hooks] secret).
 *
 * Thread: the loop of the imgw_core_loop_t given; each loop has its own
 * HTTP client (net/httpc.h), its own calls in flight and its own event
 * queue. Every function is a no-op (or says "off") when the hook it serves
 * is not configured, so callers need no checks of their own.
 */
#ifndef IMGW_HOOKS_H
#define IMGW_HOOKS_H

#include "session.h"

typedef struct imgw_hooks_loop_s imgw_hooks_loop_t;
typedef struct imgw_hooks_chain_s imgw_hooks_chain_t;

/* on_loop_start / on_loop_stop of the core loop. Returns 0 or IMGW_E*. */
int imgw_hooks_loop_start(imgw_core_loop_t *cl);
void imgw_hooks_loop_stop(imgw_core_loop_t *cl);

/* 1 when the before-send hook is configured. */
int imgw_hooks_before_send_on(const imgw_core_loop_t *cl);

/* msg.c's second half of a send and its answer: handed in with every send,
 * so the hook, below msg.c, completes a send without calling up into it. */
typedef struct imgw_hooks_send_ops_s {
    void (*commit)(imgw_core_loop_t *cl, imgw_conn_ref_t ref, uint32_t sequence,
                   const im_SendMessageRequest *q, imgw_slice_t content,
                   const char *conv);
    void (*answer)(imgw_core_loop_t *cl, imgw_conn_ref_t ref, uint32_t sequence,
                   int code, const char *msg, uint64_t message_id, int64_t seq,
                   int64_t server_time);
} imgw_hooks_send_ops_t;

/*
 * Takes over a validated CMD_SEND_MSG_REQ (copied: in is the loop's decode
 * scratch): a store lookup of (sender, client_msg_id) answers a resend of
 * a stored message; otherwise the hook is asked, and the send is committed
 * (ops->commit), denied or failed (hooks.failure; ops->answer). Sends of
 * one connection complete in the order they arrived. ops is static.
 */
void imgw_hooks_before_send(imgw_session_t *s, const imgw_msg_in_t *in,
                            const char *conv, const imgw_hooks_send_ops_t *ops);

/* The session is closing: its sends still in the hook go on without it. */
void imgw_hooks_session_closed(imgw_session_t *s);

/*
 * A message was stored for users (users[0] the sender): queues
 * message.offline for every other user with no route in the store.
 */
void imgw_hooks_stored(imgw_core_loop_t *cl, const uint8_t *blob, size_t len,
                       const char *const *users, size_t n);

/* The user's first (online = 1) or last (0) connection on this node. */
void imgw_hooks_presence(imgw_core_loop_t *cl, const char *user,
                         const char *platform, int online);

/* /metrics lines of the hooks (summed over loops), malloc'd; NULL: none. */
char *imgw_hooks_metrics(imgw_node_t *node);

#endif
