/*
 * store_impl.h: what store.c (the dispatch) and the store backends share.
 * Only the .c files of src/store and the store's unit tests include it;
 * core sees store.h alone.
 *
 * A backend is one const table of function pointers (imgw_store_backend_t)
 * plus its own state behind imgw_store_t.impl. store.c validates every
 * argument against the bounds below before it calls the table, so a backend
 * only sees requests that are well-formed (strings within bounds, limit
 * already clamped, counts within IMGW_STORE_MAX_*), and every backend
 * refuses the same things with the same codes.
 *
 * Adding a backend: write src/store/<name>.c that defines
 *     const imgw_store_backend_t imgw__store_<name> = { "<name>", ... };
 * and name it in imgw_store_open (store.c), as memory, file and redis
 * (always built) are. Nothing in core changes.
 *
 * Threads: the table's open/close run on the main thread, loop_open /
 * loop_close and the request functions on the loop that owns the handle,
 * tick on whichever loop the core picks (any thread for memory).
 */
#ifndef IMGW_STORE_IMPL_H
#define IMGW_STORE_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "store.h"

/*
 * Bounds enforced by store.c for every backend (bytes, without the NUL).
 * IMGW__STORE_ID_MAX: user, member, group, device, platform, broker_id,
 * client_msg_id and set_read's message id string; the codec's fields are
 * 128 bytes with the NUL, so nothing core accepts is refused here.
 */
#define IMGW__STORE_ID_MAX 127
#define IMGW__STORE_CONV_MAX 511 /* conversation_id ("s_<a>_<b>" <= 257) */
#define IMGW__STORE_ENTRY_MAX (16u << 20) /* one encoded PushMessage */
#define IMGW__STORE_SYNC_DEFAULT 100      /* limit <= 0 */
#define IMGW__STORE_SEQ_IDLE_DAYS 30      /* seq_idle_days = 0 */
#define IMGW__STORE_MAX_SEQ_IDLE_DAYS 3650
#define IMGW__STORE_CONVS_DEFAULT 200 /* max_conversations = 0 */
#define IMGW__STORE_CONVS_MAX 10000
#define IMGW__STORE_CONV_PAGE_DEFAULT 20

typedef struct imgw_store_backend_s imgw_store_backend_t;

/* Node-wide handle; store.c allocates it, the backend fills impl. */
struct imgw_store_s {
    const imgw_store_backend_t *be;
    void *impl; /* backend state; owned by be, freed by be->close */
};

/*
 * Per-loop handle. The backend allocates it (possibly as the first member
 * of a larger struct of its own) in loop_open, fills these fields, and
 * frees it in loop_close, at once or after its uv handles have closed.
 */
struct imgw__store_cq_s; /* store.c: the completion queue */

struct imgw_store_loop_s {
    imgw_store_t *store;
    const imgw_store_backend_t *be;
    int loop_index;
    uv_loop_t *loop; /* may be NULL for backends that do no I/O (memory) */
    void *impl;      /* backend per-loop state, or NULL */
    /* store.c's completion queue (store.h "Calling conventions"); set by
     * imgw_store_loop_open after the backend's loop_open. Backends leave
     * it alone. NULL for an inner handle another backend opened directly
     * through the table (file.c's memory handles), whose requests never
     * go through store.c. */
    struct imgw__store_cq_s *cq;
};

/*
 * The backend table. Request functions get arguments already validated by
 * store.c and return 0 = accepted (the callback runs exactly once) or < 0
 * = refused (the callback never runs). Unlike store.h's contract, a
 * backend MAY run the callback before it returns (memory does, always;
 * redis when it refuses at once): store.c hands every backend its own
 * trampoline callback, copies what a callback received before the request
 * returned, and queues it, so the caller's callback always runs later.
 * The pointers a backend hands a callback need only be valid during that
 * call. Callbacks typed imgw_store_done_cb may be NULL.
 */
struct imgw_store_backend_s {
    const char *name; /* cfg->backend value that selects it */
    int (*open)(imgw_store_t *s, const imgw_store_cfg_t *cfg, char *err,
                size_t errlen);
    void (*close)(imgw_store_t *s);
    int (*loop_open)(imgw_store_t *s, int loop_index, uv_loop_t *loop,
                     imgw_store_loop_t **out);
    void (*loop_close)(imgw_store_loop_t *sl);
    int (*loop_ready)(imgw_store_loop_t *sl);
    /* n_loops loops open and ready; any thread. NULL: always (the backend
     * has no connection to wait for). */
    int (*ready)(imgw_store_t *s, int n_loops);
    void (*tick)(imgw_store_t *s, int64_t now_ms); /* NULL: nothing to do */
    int (*stats)(imgw_store_t *s, imgw_store_stats_t *out); /* may be NULL */

    int (*append)(imgw_store_loop_t *sl, imgw_store_append_t *req,
                  imgw_store_append_cb cb, void *data);
    int (*sync)(imgw_store_loop_t *sl, const char *user, int64_t min_seq,
                int64_t max_seq, int limit, imgw_store_sync_cb cb, void *data);
    int (*max_seq)(imgw_store_loop_t *sl, const char *user,
                   imgw_store_seq_cb cb, void *data);
    int (*set_delivered)(imgw_store_loop_t *sl, const char *user,
                         const char *device, int64_t seq, imgw_store_done_cb cb,
                         void *data);
    int (*set_read)(imgw_store_loop_t *sl, const char *user,
                    const char *conversation_id, const char *message_id,
                    imgw_store_done_cb cb, void *data);
    int (*msg_get)(imgw_store_loop_t *sl, uint64_t message_id,
                   imgw_store_msg_cb cb, void *data);
    int (*revoke)(imgw_store_loop_t *sl, uint64_t message_id,
                  imgw_store_done_cb cb, void *data);
    int (*group_set)(imgw_store_loop_t *sl, const char *gid,
                     const char *const *members, size_t n,
                     imgw_store_done_cb cb, void *data);
    int (*group_get)(imgw_store_loop_t *sl, const char *gid,
                     imgw_store_members_cb cb, void *data);
    int (*group_del)(imgw_store_loop_t *sl, const char *gid,
                     imgw_store_done_cb cb, void *data);
    int (*route_set)(imgw_store_loop_t *sl, const char *user,
                     const char *platform, const char *broker_id, int ttl,
                     imgw_store_done_cb cb, void *data);
    int (*route_del)(imgw_store_loop_t *sl, const char *user,
                     const char *platform, const char *broker_id,
                     imgw_store_done_cb cb, void *data);
    int (*route_refresh)(imgw_store_loop_t *sl, const char *user, int ttl,
                         imgw_store_done_cb cb, void *data);
    int (*route_get)(imgw_store_loop_t *sl, const char *user,
                     imgw_store_routes_cb cb, void *data);
    /* NULL in single-node backends (store.h, imgw_store_watch_set). */
    int (*watch_set)(imgw_store_loop_t *sl, const char *user,
                     const char *broker_id, int ttl, imgw_store_done_cb cb,
                     void *data);
    int (*watch_get)(imgw_store_loop_t *sl, const char *user,
                     imgw_store_routes_cb cb, void *data);
    int (*dedupe_get)(imgw_store_loop_t *sl, const char *sender,
                      const char *client_msg_id, imgw_store_dedupe_cb cb,
                      void *data);
    /* Conversations; NULL: the backend keeps none (IMGW_ENOTFOUND). */
    int (*conv_list)(imgw_store_loop_t *sl, const char *user,
                     int64_t before_seq, int limit, imgw_store_conv_list_cb cb,
                     void *data);
    int (*conv_read)(imgw_store_loop_t *sl, const char *user, int kind,
                     const char *peer, int64_t read_seq, imgw_store_done_cb cb,
                     void *data);
    int (*conv_delete)(imgw_store_loop_t *sl, const char *user, int kind,
                       const char *peer, imgw_store_done_cb cb, void *data);
};

/* store.c: what every backend's conversation state shares (store.h). */

/*
 * The conversation an append belongs to: IMGW_STORE_CONV_GROUP for
 * "g_<gid>", IMGW_STORE_CONV_SINGLE for "s_..." with at most two users (the
 * 1:1 string is never parsed: it is ambiguous when ids contain '_', and
 * users[] names both sides exactly), 0 (no conversation state) otherwise.
 */
int imgw__store_conv_kind(const char *conversation_id, size_t n_users);
/* Whose conversation user i's entry is: the group id, the other user of a
 * 1:1, or the sender itself for a note to self (n_users 1). */
const char *imgw__store_conv_peer(int kind, const char *conversation_id,
                                  const char *const *users, size_t n_users,
                                  size_t i);
/** Length of s cut to at most max bytes without splitting a UTF-8
 *  sequence. */
size_t imgw__store_cut_utf8(const char *s, size_t max);

/* memory.c */
extern const imgw_store_backend_t imgw__store_memory;
/* file.c: the memory backend plus a journal and snapshots on disk. */
extern const imgw_store_backend_t imgw__store_file;
/* redis*.c: always built. */
extern const imgw_store_backend_t imgw__store_redis;

/* ---- memory backend hooks for unit tests --------------------------------- */

/** Returns unix time in ms; arg is what was given to set_clock. */
typedef int64_t (*imgw__store_clock_fn)(void *arg);

/**
 * Replaces the memory backend's clock (default: CLOCK_REALTIME in ms).
 * Call before any loop uses the store: the pointer is read without a lock.
 * fn NULL restores the default. No-op for other backends: a file store's
 * clock is imgw__store_file_set_clock's (the file backend sits above the
 * memory one, never the other way round; the memory hooks below take the
 * memory store itself, imgw__store_file_inner() of a file store).
 */
void imgw__store_mem_set_clock(imgw_store_t *s, imgw__store_clock_fn fn,
                               void *arg);

typedef struct imgw__store_mem_stats_s {
    size_t users;   /* per-user records */
    size_t entries; /* timeline entries over all users */
    size_t used;    /* users past idle: holding a timeline or positions */
    size_t dedupes; /* dedupe keys in the tables (expired ones too) */
    size_t metas;   /* message metadata in the table */
    size_t groups;
    size_t routes;     /* route fields, expired ones not yet dropped too */
    size_t route_arrays;  /* users whose routes outgrew the inline one */
    size_t route_strings; /* shared "platform\0broker_id\0" strings */
    size_t devices;    /* delivered positions */
    size_t reads;      /* read positions */
    size_t blobs_live; /* entry blobs still allocated (any holder) */
    size_t metas_live; /* metadata still allocated (table or blobs) */
} imgw__store_mem_stats_t;

/**
 * Walks every shard (one lock at a time) and counts. Test and debug use
 * only: O(users). Returns 0, or IMGW_EINVAL when s is not memory.
 */
int imgw__store_mem_stats(imgw_store_t *s, imgw__store_mem_stats_t *out);

/**
 * failmalloc for the memory backend: n > 0 makes the nth allocation from
 * now on fail (once); 0 turns it off. Returns the countdown that was left
 * (> 0: the failure has not happened yet). Not for concurrent use.
 */
int imgw__store_mem_fail_alloc(int n);

/**
 * Reads a stored delivered position (seq) or read position (the message
 * id string, copied into buf). Returns 0 or IMGW_ENOTFOUND.
 */
int imgw__store_mem_get_delivered(imgw_store_t *s, const char *user,
                                  const char *device, int64_t *seq);
int imgw__store_mem_get_read(imgw_store_t *s, const char *user,
                             const char *conversation_id, char *buf,
                             size_t len);

/* ---- memory backend snapshots (file.c) ------------------------------------ */

struct imgw__rec_buf_s;
typedef struct imgw__store_mem_loader_s imgw__store_mem_loader_t;

/**
 * Appends the live state of memory store s (not its routes) to out as
 * snapshot records (rec.h). The caller keeps every request that creates
 * state (append above all) from running meanwhile; see memory.c. Returns
 * 0 or out->err.
 */
int imgw__store_mem_dump(imgw_store_t *s, struct imgw__rec_buf_s *out);
/** Loads snapshot records into an empty memory store, before any loop. */
imgw__store_mem_loader_t *imgw__store_mem_load_begin(imgw_store_t *s);
/** One record's type and payload. 0, IMGW_EPROTO (malformed) or ENOMEM. */
int imgw__store_mem_load(imgw__store_mem_loader_t *ld, uint8_t type,
                         const uint8_t *p, size_t n);
/** Frees the loader; *max_id gets the highest message id loaded. */
void imgw__store_mem_load_end(imgw__store_mem_loader_t *ld, uint64_t *max_id);

/* ---- file backend hooks for unit tests ----------------------------------- */

/** The memory store inside a file store, or s itself for other backends. */
imgw_store_t *imgw__store_file_inner(imgw_store_t *s);
/** Sets the clock of a file store (it stamps its journal records and
 * gives its memory store their times). */
void imgw__store_file_set_clock(imgw_store_t *s, imgw__store_clock_fn fn,
                                void *arg);
/** Writes a snapshot and switches journals now, on the calling thread. */
int imgw__store_file_compact(imgw_store_t *s);

#endif
