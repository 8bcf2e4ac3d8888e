/*
 * mem_routes.c: the memory backend's routes (user -> platform -> broker_id)
 * with an expiry per platform: route_set, route_del, route_refresh,
 * route_get.
 * See memory.c for the locking and memory rules every file follows.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "log.h"
#include "mem_int.h"

/* ---- routes -------------------------------------------------------------- */

/*
 * Each platform has its own expiry (a dead node's route expires even while
 * the user's other platforms keep refreshing). At IMGW_STORE_MAX_ROUTES
 * platforms a new one replaces the one that would expire first.
 */
int
imgw__mem_route_set(imgw_store_loop_t *sl, const char *user,
                    const char *platform, const char *broker_id, int ttl,
                    imgw_store_done_cb cb, void *data)
{
    imgw__mem_t *m = sl->store->impl;
    uint64_t h = hash_str(m, user);
    imgw__mem_shard_t *sh = &m->shards[shard_of(h)];
    size_t plen = strlen(platform), blen = strlen(broker_id);
    char *pb = mem_malloc(plen + 1 + blen + 1);
    if (pb == NULL)
        return IMGW_ENOMEM;
    memcpy(pb, platform, plen + 1);
    memcpy(pb + plen + 1, broker_id, blen + 1);
    int64_t now = mem_now(m);
    int err = IMGW_ENOMEM;

    pthread_mutex_lock(&sh->mu);
    imgw__mem_user_t *u = imgw__mem_user_get(m, sh, h, user, now, &err);
    if (u == NULL)
        goto fail;
    imgw__mem_routes_expire(u, now);
    uint16_t i;
    for (i = 0; i < u->n_routes; i++)
        if (strcmp(u->routes[i].pb, platform) == 0)
            break;
    if (i < u->n_routes) {
        free(u->routes[i].pb);
    } else if (u->n_routes == IMGW_STORE_MAX_ROUTES) {
        i = 0;
        for (uint16_t j = 1; j < u->n_routes; j++)
            if (u->routes[j].expire_ms < u->routes[i].expire_ms)
                i = j;
        free(u->routes[i].pb);
    } else {
        if (u->n_routes == u->cap_routes &&
            imgw__mem_array_grow((void **)&u->routes, &u->cap_routes,
                                 sizeof(*u->routes),
                                 IMGW_STORE_MAX_ROUTES) != 0)
            goto fail;
        i = u->n_routes++;
    }
    u->routes[i].pb = pb;
    u->routes[i].expire_ms = now + (int64_t)ttl * 1000;
    pthread_mutex_unlock(&sh->mu);
    if (cb)
        cb(0, data);
    return 0;
fail:
    pthread_mutex_unlock(&sh->mu);
    free(pb);
    return err;
}

/* Status 0 whether or not a field was deleted: a route that moved to
 * another node (or expired) is simply not ours to delete. */
int
imgw__mem_route_del(imgw_store_loop_t *sl, const char *user,
                    const char *platform, const char *broker_id,
                    imgw_store_done_cb cb, void *data)
{
    imgw__mem_t *m = sl->store->impl;
    uint64_t h = hash_str(m, user);
    imgw__mem_shard_t *sh = &m->shards[shard_of(h)];
    int64_t now = mem_now(m);

    pthread_mutex_lock(&sh->mu);
    imgw__mem_user_t *u = imgw__mem_user_find(sh, h, user);
    if (u != NULL) {
        imgw__mem_routes_expire(u, now);
        for (uint16_t i = 0; i < u->n_routes; i++) {
            const char *pb = u->routes[i].pb;
            if (strcmp(pb, platform) == 0) {
                if (strcmp(pb + strlen(pb) + 1, broker_id) == 0) {
                    free(u->routes[i].pb);
                    if (i != --u->n_routes)
                        u->routes[i] = u->routes[u->n_routes];
                }
                break;
            }
        }
    }
    pthread_mutex_unlock(&sh->mu);
    if (cb)
        cb(0, data);
    return 0;
}

int
imgw__mem_route_refresh(imgw_store_loop_t *sl, const char *user, int ttl,
                        imgw_store_done_cb cb, void *data)
{
    imgw__mem_t *m = sl->store->impl;
    uint64_t h = hash_str(m, user);
    imgw__mem_shard_t *sh = &m->shards[shard_of(h)];
    int64_t now = mem_now(m);

    pthread_mutex_lock(&sh->mu);
    imgw__mem_user_t *u = imgw__mem_user_find(sh, h, user);
    if (u != NULL) {
        /* Expired routes stay dead: refreshing must not resurrect a
         * route whose node stopped refreshing it. */
        imgw__mem_routes_expire(u, now);
        for (uint16_t i = 0; i < u->n_routes; i++)
            u->routes[i].expire_ms = now + (int64_t)ttl * 1000;
        /* Heartbeats of an online client keep its max_seq alive (Redis:
         * the same script refreshes IM-SEQ's TTL), unless it has expired
         * already: then there is nothing to keep. */
        imgw__mem_user_age(m, u, now);
        imgw__mem_user_seq_expire(m, u, now);
        u->touched_ms = now;
    }
    pthread_mutex_unlock(&sh->mu);
    if (cb)
        cb(0, data);
    return 0;
}

int
imgw__mem_route_get(imgw_store_loop_t *sl, const char *user,
                    imgw_store_routes_cb cb, void *data)
{
    imgw__mem_t *m = sl->store->impl;
    uint64_t h = hash_str(m, user);
    imgw__mem_shard_t *sh = &m->shards[shard_of(h)];
    char buf[IMGW_STORE_MAX_ROUTES][2][IMGW__STORE_ID_MAX + 1];
    imgw_store_route_t r[IMGW_STORE_MAX_ROUTES];
    size_t n = 0;
    int64_t now = mem_now(m);

    pthread_mutex_lock(&sh->mu);
    imgw__mem_user_t *u = imgw__mem_user_find(sh, h, user);
    if (u != NULL) {
        imgw__mem_routes_expire(u, now);
        for (uint16_t i = 0; i < u->n_routes; i++, n++) {
            const char *pb = u->routes[i].pb;
            snprintf(buf[n][0], sizeof(buf[n][0]), "%s", pb);
            snprintf(buf[n][1], sizeof(buf[n][1]), "%s", pb + strlen(pb) + 1);
            r[n].platform = buf[n][0];
            r[n].broker_id = buf[n][1];
        }
    }
    pthread_mutex_unlock(&sh->mu);
    cb(0, n ? r : NULL, n, data);
    return 0;
}
