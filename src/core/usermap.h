/*
 * usermap.h: user id -> live connections of this node, shared by all loops.
 *
 * Sharded: a user hashes to one shard, each shard has its own mutex and
 * open-addressing/chained table; critical sections are a lookup and a copy,
 * never I/O. Connections are referenced by imgw_conn_ref_t (loop index,
 * slot, generation), never by pointer: only the owning loop dereferences
 * its own connections, and it drops refs whose generation is stale.
 */
#ifndef IMGW_USERMAP_H
#define IMGW_USERMAP_H

#include <stddef.h>
#include <stdint.h>

#include "conn_ref.h" /* imgw_conn_ref_t (net) */

#define IMGW_USERMAP_MAX_CONNS 16 /* live connections per user */
#define IMGW_USERMAP_PLATFORM 32

/* Per-user budgets (imgw_usermap_take). */
enum {
    IMGW_USERMAP_BUDGET_SEND = 0,    /* CMD_SEND_MSG_REQ */
    IMGW_USERMAP_BUDGET_RECEIPT = 1, /* read receipts and typing */
    IMGW_USERMAP_N_BUDGETS
};

typedef struct imgw_usermap_conn_s {
    imgw_conn_ref_t ref;
    char platform[IMGW_USERMAP_PLATFORM];
} imgw_usermap_conn_t;

typedef struct imgw_usermap_s imgw_usermap_t;

int imgw_usermap_new(imgw_usermap_t **out, size_t nshards);
void imgw_usermap_free(imgw_usermap_t *m);

/*
 * Adds ref for (user, platform). platform is borrowed, not copied: it must
 * stay valid and unchanged until ref is removed or replaced (the session
 * registers its own platform field and removes its ref before it frees
 * itself); the map reads it only under the shard lock, and
 * imgw_usermap_get hands out copies. If another connection of the same user is
 * registered on the same platform it is removed and returned in *kicked
 * (return value 1), so the caller can kick it. Returns 0 (nothing kicked),
 * 1 (kicked filled), or IMGW_EQUEUEFULL when the user already has
 * IMGW_USERMAP_MAX_CONNS connections on other platforms. Any thread.
 */
int imgw_usermap_add(imgw_usermap_t *m, const char *user, const char *platform,
                     imgw_conn_ref_t ref, imgw_conn_ref_t *kicked);
/** Removes ref if registered for user; returns 1 if removed, 0 otherwise. */
int imgw_usermap_remove(imgw_usermap_t *m, const char *user,
                        imgw_conn_ref_t ref);
/* The same, with *n set (under the shard lock, so two loops never both
 * see "first" or "last") to the user's connection count afterwards: 1
 * after an add = the user's first connection on this node, 0 after a
 * remove that returned 1 = the last one. n may be NULL. */
int imgw_usermap_add_n(imgw_usermap_t *m, const char *user,
                       const char *platform, imgw_conn_ref_t ref,
                       imgw_conn_ref_t *kicked, size_t *n);
int imgw_usermap_remove_n(imgw_usermap_t *m, const char *user,
                          imgw_conn_ref_t ref, size_t *n);
/** Copies up to max of user's connections into out; returns the count. */
size_t imgw_usermap_get(imgw_usermap_t *m, const char *user,
                        imgw_usermap_conn_t *out, size_t max);
/*
 * Takes one token from user's budget `which`: a token bucket refilled at
 * rate tokens per second up to burst (it starts full), shared by all of
 * the user's connections on this node, whatever loop they are on. now_ms
 * is the caller's clock in ms (the loops' wall-clock time). Returns 1 when
 * a token was taken, 0 when the user is over budget. A user that is not in
 * the map (its last connection is going away) is not charged: 1. Any
 * thread; the shard lock is held for the arithmetic only.
 */
int imgw_usermap_take(imgw_usermap_t *m, const char *user, int which,
                      double rate, double burst, uint64_t now_ms);
/** Users with at least one connection (approximate under concurrency). */
size_t imgw_usermap_users(imgw_usermap_t *m);

#endif
