/*
 * store.h: the one asynchronous store interface (protocol.md sections 5, 6).
 *
 * Three backends sit behind it: "memory" (in-process, single node, sharded
 * locks), "file" (the memory backend made durable by a journal and
 * snapshots in a data directory) and "redis" (hiredis async, one context
 * per loop). Core code only sees this header.
 *
 * Threads: imgw_store_open() and imgw_store_close() run on the main thread.
 * Each loop gets its own handle with imgw_store_loop_open() on that loop's
 * thread and uses it only there. Every callback runs on the loop that
 * issued the request.
 *
 * Callbacks never run before the request function returns (libuv's rule:
 * a refused request also completes through its callback, later). Every
 * request function returns 0 and its callback then runs exactly once,
 * later, from imgw_store_loop_run_completions() (which the handle's own
 * uv_idle_t calls on the loop it was opened with) or from the backend's
 * I/O (redis replies), with status 0 or the reason it failed, including
 * argument refusals (IMGW_EINVAL, IMGW_ETOOBIG; see docs/store.md for
 * the bounds) and IMGW_ENOMEM. The only other return is IMGW_EINVAL for
 * a NULL handle or a NULL callback where the request has a result: a
 * caller bug, and then nothing runs. So a caller can count or free
 * right after the call, whatever the backend, and never needs to call
 * its own callback for a refusal.
 *
 * Requests: the caller owns every imgw_store_*_t request struct and every
 * pointer inside it until the callback has run. Other arguments (ids,
 * member lists) are used before the request function returns. Pointers
 * handed to a callback (result arrays, strings) are valid only during the
 * callback: the store copied them for a completion that had to wait.
 *
 * status in callbacks: 0, IMGW_ENOTFOUND (missing group / message),
 * IMGW_EINVAL / IMGW_ETOOBIG (refused up front: nothing was done),
 * IMGW_EEXIST (append: the message id is in use), IMGW_ENOMEM,
 * IMGW_EBUSY (backend unreachable or closing: nothing was written),
 * IMGW_ETIMEDOUT (no answer in time: the write may or may not have
 * happened; callers treat it like EBUSY towards clients).
 */
#ifndef IMGW_STORE_H
#define IMGW_STORE_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#define IMGW_STORE_MAX_GROUP 1000 /* members per group */
#define IMGW_STORE_MAX_ROUTES 16  /* platforms per user */
#define IMGW_STORE_SYNC_MAX 500   /* entries per sync page */
#define IMGW_STORE_CONV_PAGE_MAX 100 /* conversations per list page */
#define IMGW_STORE_PREVIEW_MAX 120   /* bytes of a last-message preview */

typedef struct imgw_store_s imgw_store_t;           /* node-wide */
typedef struct imgw_store_loop_s imgw_store_loop_t; /* one per loop */

typedef struct imgw_store_cfg_s {
    const char *backend;    /* "memory" | "file" | "redis" */
    const char *redis_url;
    int retention_count;    /* entries kept per timeline */
    int retention_days;     /* entries older than this are dropped */
    int dedupe_ttl;         /* seconds */
    int timeout_ms;         /* per-command timeout (redis) */
    int n_loops;
    /* Memory backend bounds (docs/store.md); 0 = the default. Redis keeps
     * its own TTLs and ignores them. */
    size_t max_dedupes;     /* dedupe records; the oldest are evicted */
    size_t max_metas;       /* message metadata records (revoke lookups);
                               the oldest are evicted */
    int meta_ttl;           /* seconds metadata stays findable for revoke
                               (e.g. server.revoke_window); 0 = retention */
    /* File backend (docs/store.md "The file backend"); others ignore them. */
    const char *path;       /* data directory; NULL/"" = "data" */
    const char *fsync;      /* "always" | "interval" (NULL) | "never" */
    int fsync_interval_ms;  /* interval: 0 = 1000 */
    int64_t compact_bytes;  /* journal size that triggers a snapshot;
                               0 = 64 MiB */
    /* Per-user state (docs/store.md "Per-user state"). A user's max_seq
     * (IM-SEQ) lives retention_days + seq_idle_days after the user's last
     * append, auth (max_seq), sync or route refresh, so it outlives every
     * entry of its timeline; 0 = the default (30 days). Both backends. */
    int seq_idle_days;
    size_t max_users; /* memory backend: user records; past it a
                         request that needs a new one is refused
                         with IMGW_EBUSY; 0 = the default */
    int max_conversations; /* conversations kept per user; the one updated
                              longest ago is dropped; 0 = the default */
} imgw_store_cfg_t;

int imgw_store_open(imgw_store_t **out, const imgw_store_cfg_t *cfg, char *err,
                    size_t errlen);
void imgw_store_close(imgw_store_t *s);
/* Node-wide counters for /metrics (any thread). */
typedef struct imgw_store_stats_s {
    size_t users;           /* memory: user records held */
    size_t max_users;       /* memory: their cap */
    uint64_t users_refused; /* memory: requests refused at the cap */
} imgw_store_stats_t;
/** Fills *out; IMGW_ENOTFOUND when the backend keeps no such counters. */
int imgw_store_stats(imgw_store_t *s, imgw_store_stats_t *out);

/** Called on the loop's own thread before it serves connections. */
int imgw_store_loop_open(imgw_store_t *s, int loop_index, uv_loop_t *loop,
                         imgw_store_loop_t **out);
/** Closes the loop handle (its uv handles are closed on loop). */
void imgw_store_loop_close(imgw_store_loop_t *sl);
/**
 * Runs the callbacks of completed requests of this handle, in the order
 * they completed, including those their callbacks queue; returns how many
 * ran. A handle opened with a uv loop runs them by itself (an idle handle
 * started while any wait, before the loop's prepare/flush step, so the
 * answers they write leave in the same iteration); a handle opened with
 * loop NULL (tests, the file backend's replay) runs them only here.
 * imgw_store_loop_close() runs what is left.
 */
int imgw_store_loop_run_completions(imgw_store_loop_t *sl);
/** 1 while the backend is reachable from this loop (memory: always). */
int imgw_store_loop_ready(imgw_store_loop_t *sl);
/** Whether n_loops loop handles are open and ready (a node-wide readiness:
 * /readyz, imgw_store_up). Any thread. */
int imgw_store_ready(imgw_store_t *s, int n_loops);
/**
 * Periodic housekeeping (expiry sweeps of the memory backend); call from
 * one loop about once a second with unix time in ms. Bounded work per call.
 */
void imgw_store_tick(imgw_store_t *s, int64_t now_ms);

/* ---- append: one message into several timelines, atomically ---------- */

typedef struct imgw_store_append_s {
    /* in */
    const char *sender;          /* user id, NUL-terminated */
    const char *client_msg_id;   /* "" = no dedupe */
    uint64_t message_id;
    int64_t server_time_ms;
    const char *conversation_id;
    const char *const *users;    /* timelines to append to; users[0] is the
                                    sender; no duplicates */
    size_t n_users;
    const uint8_t *entry;        /* encoded PushMessage without seq */
    size_t entry_len;
    int64_t *seqs;               /* caller array of n_users: filled */
    /* Conversation state (imgw_store_conv_list): the kind and peer come
     * from conversation_id ("g_<gid>": group; "s_...": 1:1 between
     * users[0] and users[1]); both optional. */
    int32_t msg_type;    /* the message's type */
    const char *preview; /* NULL = none; cut to
                            IMGW_STORE_PREVIEW_MAX bytes */
    /* out */
    int duplicate;               /* 1: (sender, client_msg_id) seen within
                                    dedupe_ttl: nothing was appended;
                                    dup_message_id/dup_seq are the first */
    uint64_t dup_message_id;
    int64_t dup_seq;
} imgw_store_append_t;

typedef void (*imgw_store_append_cb)(imgw_store_append_t *req, int status,
                                     void *data);
/*
 * Appends entry to each user's timeline with that user's next seq, records
 * the dedupe key (sender, client_msg_id) -> (message_id, sender seq) with
 * dedupe_ttl, and records the message's metadata (sender, conversation,
 * server time) for revoke, all or nothing. Trims each timeline to the
 * retention bounds.
 */
int imgw_store_append(imgw_store_loop_t *sl, imgw_store_append_t *req,
                      imgw_store_append_cb cb, void *data);

/* ---- timelines ------------------------------------------------------- */

typedef struct imgw_store_entry_s {
    int64_t seq;
    const uint8_t *blob; /* encoded PushMessage without seq */
    size_t len;
    uint8_t revoked;     /* the message was revoked */
} imgw_store_entry_t;

/*
 * A timeline's epoch (docs/store.md "Epochs"): the message id of the append
 * that gave it seq 1, kept exactly as long as its max_seq (IM-EPOCH-{u}
 * beside IM-SEQ-{u}; the file backend's journal and snapshots). A timeline
 * that is reset or lost (a Redis flush, a memory-store restart, max_seq's
 * idle expiry) starts again at seq 1 under a new epoch, so a client that
 * remembers (epoch, seq) can tell "nothing missed" from "the seqs I hold
 * mean nothing here". 0: the timeline holds no seq (never started or
 * reset and empty), or it started before epochs existed.
 */
typedef void (*imgw_store_sync_cb)(int status, const imgw_store_entry_t *e,
                                   size_t n, int has_more,
                                   int64_t server_max_seq, int64_t oldest_seq,
                                   uint64_t epoch, void *data);
/*
 * Entries of user's timeline with min_seq < seq <= max_seq (max_seq 0 = no
 * bound), oldest first, at most limit (1..IMGW_STORE_SYNC_MAX); has_more
 * when more exist in the range. oldest_seq: the lowest seq the timeline
 * still holds (retention trims its head), server_max_seq + 1 when it holds
 * none; epoch as above.
 */
int imgw_store_sync(imgw_store_loop_t *sl, const char *user, int64_t min_seq,
                    int64_t max_seq, int limit, imgw_store_sync_cb cb,
                    void *data);

/** max_seq and the timeline's epoch (see imgw_store_sync_cb). */
typedef void (*imgw_store_seq_cb)(int status, int64_t max_seq, uint64_t epoch,
                                  void *data);
int imgw_store_max_seq(imgw_store_loop_t *sl, const char *user,
                       imgw_store_seq_cb cb, void *data);

/** Delivered (MSG_ACK) / read positions per (user, device). cb may be NULL. */
typedef void (*imgw_store_done_cb)(int status, void *data);
int imgw_store_set_delivered(imgw_store_loop_t *sl, const char *user,
                             const char *device, int64_t seq,
                             imgw_store_done_cb cb, void *data);
int imgw_store_set_read(imgw_store_loop_t *sl, const char *user,
                        const char *conversation_id, const char *message_id,
                        imgw_store_done_cb cb, void *data);

/* ---- conversations (issue 13) ------------------------------------------ */

/*
 * Per user, per conversation: the last message and the user's unread
 * count, updated by imgw_store_append in the same atomic step. A 1:1
 * conversation is keyed by the partner's id, a group by its id (kind), never
 * by the "s_<a>_<b>" string (ambiguous when ids contain '_').
 */
enum { IMGW_STORE_CONV_SINGLE = 1, IMGW_STORE_CONV_GROUP = 2 };

typedef struct imgw_store_conv_s {
    int kind;       /* IMGW_STORE_CONV_* */
    char peer[128]; /* partner user id or group id */
    uint64_t last_message_id;
    int64_t last_seq; /* the last message's seq in the user's
                         timeline: orders and pages the list */
    char last_sender[128];
    int32_t last_type;
    char preview[IMGW_STORE_PREVIEW_MAX + 1];
    uint32_t unread;    /* messages of others after read_seq */
    int64_t read_seq;   /* the user's read position (timeline seq) */
    int64_t updated_ms; /* store time of the last message */
} imgw_store_conv_t;

typedef void (*imgw_store_conv_list_cb)(int status, const imgw_store_conv_t *c,
                                        size_t n, int has_more,
                                        uint64_t total_unread, void *data);
/*
 * The user's conversations with last_seq < before_seq (0 = from the
 * newest), newest update first, at most limit (1..IMGW_STORE_CONV_PAGE_MAX;
 * <= 0 = 20); has_more when older ones exist; total_unread over all of
 * them. The next page's before_seq is the last entry's last_seq.
 * Status IMGW_ENOTFOUND: the backend keeps no conversation state.
 */
int imgw_store_conv_list(imgw_store_loop_t *sl, const char *user,
                         int64_t before_seq, int limit,
                         imgw_store_conv_list_cb cb, void *data);
/*
 * Moves user's read position in (kind, peer) to read_seq (never back) and
 * sets the unread count to the messages of others above it; read_seq 0 or
 * past the last message = everything read. Status IMGW_ENOTFOUND when the
 * user has no such conversation. cb may be NULL.
 */
int imgw_store_conv_read(imgw_store_loop_t *sl, const char *user, int kind,
                         const char *peer, int64_t read_seq,
                         imgw_store_done_cb cb, void *data);
/** Hides (kind, peer) for user only; IMGW_ENOTFOUND when absent. */
int imgw_store_conv_delete(imgw_store_loop_t *sl, const char *user, int kind,
                           const char *peer, imgw_store_done_cb cb, void *data);

/* ---- messages: lookup and revoke --------------------------------------- */

typedef struct imgw_store_msg_s {
    uint64_t message_id;
    const char *sender;
    const char *conversation_id;
    int64_t server_time_ms;
    int revoked;
} imgw_store_msg_t;

typedef void (*imgw_store_msg_cb)(int status, const imgw_store_msg_t *m,
                                  void *data);
/** Metadata of a stored message; IMGW_ENOTFOUND when unknown/expired. */
int imgw_store_msg_get(imgw_store_loop_t *sl, uint64_t message_id,
                       imgw_store_msg_cb cb, void *data);
/** Marks it revoked: later syncs return it with revoked = 1. */
int imgw_store_revoke(imgw_store_loop_t *sl, uint64_t message_id,
                      imgw_store_done_cb cb, void *data);

/* ---- groups ------------------------------------------------------------ */

typedef void (*imgw_store_members_cb)(int status, const char *const *members,
                                      size_t n, void *data);
/** Replaces the member set (n <= IMGW_STORE_MAX_GROUP). */
int imgw_store_group_set(imgw_store_loop_t *sl, const char *gid,
                         const char *const *members, size_t n,
                         imgw_store_done_cb cb, void *data);
/** IMGW_ENOTFOUND when the group does not exist. */
int imgw_store_group_get(imgw_store_loop_t *sl, const char *gid,
                         imgw_store_members_cb cb, void *data);
/** IMGW_ENOTFOUND when the group does not exist. */
int imgw_store_group_del(imgw_store_loop_t *sl, const char *gid,
                         imgw_store_done_cb cb, void *data);

/* ---- dedupe lookup ---------------------------------------------------- */

typedef void (*imgw_store_dedupe_cb)(int status, uint64_t message_id,
                                     int64_t seq, void *data);
/*
 * Looks (sender, client_msg_id) up without appending: status 0 with the
 * message id and the sender's seq of the message an earlier append stored
 * under that key within dedupe_ttl, IMGW_ENOTFOUND, or an error
 * (IMGW_EBUSY). The before-send hook uses it so that a resend of a stored
 * message is answered without asking the hook again; the append itself
 * still dedupes atomically. client_msg_id must not be empty.
 */
int imgw_store_dedupe_get(imgw_store_loop_t *sl, const char *sender,
                          const char *client_msg_id, imgw_store_dedupe_cb cb,
                          void *data);

/* ---- routes: user -> platform -> broker_id ------------------------------ */

typedef struct imgw_store_route_s {
    const char *platform;
    const char *broker_id;
} imgw_store_route_t;

typedef void (*imgw_store_routes_cb)(int status, const imgw_store_route_t *r,
                                     size_t n, void *data);
int imgw_store_route_set(imgw_store_loop_t *sl, const char *user,
                         const char *platform, const char *broker_id,
                         int ttl, imgw_store_done_cb cb, void *data);
/** Deletes the field only if it still equals broker_id. */
int imgw_store_route_del(imgw_store_loop_t *sl, const char *user,
                         const char *platform, const char *broker_id,
                         imgw_store_done_cb cb, void *data);
int imgw_store_route_refresh(imgw_store_loop_t *sl, const char *user, int ttl,
                             imgw_store_done_cb cb, void *data);
int imgw_store_route_get(imgw_store_loop_t *sl, const char *user,
                         imgw_store_routes_cb cb, void *data);

/* ---- presence watchers: user -> nodes with presence subscribers -------- */

#define IMGW_STORE_MAX_WATCHERS 64 /* nodes per watched user */

/*
 * Records that node broker_id has connections subscribed to user's
 * presence, for ttl seconds (refreshed by that node while they last), so
 * the node where user logs in or out knows whom to tell (redis:
 * IM-PWATCH-{user}, docs/store.md). The memory and file backends serve
 * one node, whose own subscription map is all there is: set does nothing
 * and get answers no node, both with status 0.
 */
int imgw_store_watch_set(imgw_store_loop_t *sl, const char *user,
                         const char *broker_id, int ttl,
                         imgw_store_done_cb cb, void *data);
/* The watching nodes, as routes whose platform and broker_id both name
 * the node (at most IMGW_STORE_MAX_WATCHERS). */
int imgw_store_watch_get(imgw_store_loop_t *sl, const char *user,
                         imgw_store_routes_cb cb, void *data);

#endif
