/*
 * watchmap.h: presence subscriptions of this node: watched user id -> the
 * connections (by ref) that subscribed to that user's presence. Shared by
 * all loops (docs/protocol.md "Presence").
 *
 * Sharded like the user map: a user hashes to one shard with its own
 * mutex; critical sections are a lookup plus a small copy or edit, never
 * I/O. Connections are named by imgw_conn_ref_t, never by pointer; the
 * owning loop drops stale refs when it delivers.
 *
 * Memory: one entry per watched user (about 48 bytes plus the id) and one
 * ref (12 bytes, arrays grown by doubling) per subscription.
 */
#ifndef IMGW_WATCHMAP_H
#define IMGW_WATCHMAP_H

#include <stddef.h>
#include <sys/types.h>

#include "conn_ref.h" /* imgw_conn_ref_t (net) */

typedef struct imgw_watchmap_s imgw_watchmap_t;

/* Main thread, before the loops start / after they stop. Returns 0 or
 * IMGW_ENOMEM. */
int imgw_watchmap_new(imgw_watchmap_t **out, size_t nshards);
void imgw_watchmap_free(imgw_watchmap_t *m);

/*
 * Adds ref as a watcher of user. Returns 1 when user had no watcher on
 * this node before (the caller registers the node as a watcher in the
 * store), 0 when it had one or ref already watches it, IMGW_ENOMEM or
 * IMGW_EINVAL (empty or over-long id). Any thread.
 */
int imgw_watchmap_add(imgw_watchmap_t *m, const char *user,
                      imgw_conn_ref_t ref);
/** Removes ref from user's watchers; returns 1 if it was there. */
int imgw_watchmap_remove(imgw_watchmap_t *m, const char *user,
                         imgw_conn_ref_t ref);
/*
 * Copies user's watchers into *out (imgw_try_malloc'd, the caller frees
 * it with imgw_free; NULL when there are none). Returns the count, or
 * IMGW_ENOMEM. Any thread.
 */
ssize_t imgw_watchmap_get(imgw_watchmap_t *m, const char *user,
                          imgw_conn_ref_t **out);
/*
 * Calls fn for every watched user, one shard at a time with that shard
 * locked: fn must be quick and must not call into the map (the store's
 * request functions qualify: they copy their arguments and never block).
 */
void imgw_watchmap_foreach_user(imgw_watchmap_t *m,
                                void (*fn)(const char *user, void *arg),
                                void *arg);
/** Watched users and subscriptions (approximate under concurrency). */
size_t imgw_watchmap_users(imgw_watchmap_t *m);
size_t imgw_watchmap_subs(imgw_watchmap_t *m);

#endif
