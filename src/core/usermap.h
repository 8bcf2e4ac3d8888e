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

typedef struct imgw_usermap_conn_s {
    imgw_conn_ref_t ref;
    char platform[IMGW_USERMAP_PLATFORM];
} imgw_usermap_conn_t;

typedef struct imgw_usermap_s imgw_usermap_t;

int imgw_usermap_new(imgw_usermap_t **out, size_t nshards);
void imgw_usermap_free(imgw_usermap_t *m);

/*
 * Adds ref for (user, platform). If another connection of the same user is
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
/** Copies up to max of user's connections into out; returns the count. */
size_t imgw_usermap_get(imgw_usermap_t *m, const char *user,
                        imgw_usermap_conn_t *out, size_t max);
/** Users with at least one connection (approximate under concurrency). */
size_t imgw_usermap_users(imgw_usermap_t *m);

#endif
