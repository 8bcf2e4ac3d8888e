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

/* ---- shared route strings ------------------------------------------------ */

static uint64_t
pb_hash(const imgw__mem_t *m, const char *pb, size_t len)
{
    return mix64(fnv(m->seed ^ IMGW_HASH_FNV64_BASIS, pb, len));
}

/*
 * Per shard, under its lock (routes are only ever touched under it), so
 * no lock of its own: a pair is stored at most once per shard, 64 copies
 * node-wide at worst. Every entry is referenced by at least one route, so
 * the table is bounded by the routes.
 */
const char *
imgw__mem_pb_get(imgw__mem_t *m, imgw__mem_shard_t *sh, const char *platform,
                 const char *broker_id)
{
    size_t plen = strlen(platform), blen = strlen(broker_id);
    size_t len = plen + 1 + blen + 1;
    char key[2 * (IMGW__STORE_ID_MAX + 1)];
    char *k = len <= sizeof(key) ? key : mem_malloc(len);
    if (k == NULL)
        return NULL;
    memcpy(k, platform, plen + 1);
    memcpy(k + plen + 1, broker_id, blen + 1);
    uint64_t h = pb_hash(m, k, len);
    imgw__mem_pb_t *p = NULL;
    for (imgw__mem_hnode_t *x = sh->pbs.b[h & sh->pbs.mask]; x; x = x->next) {
        imgw__mem_pb_t *c = (imgw__mem_pb_t *)x;
        if (x->hash == h && memcmp(c->s, k, len) == 0) {
            p = c;
            break;
        }
    }
    if (p == NULL) {
        p = mem_malloc(sizeof(*p) + len);
        if (p != NULL) {
            p->h.hash = h;
            p->refs = 0;
            memcpy(p->s, k, len);
            htab_insert(&sh->pbs, &p->h);
        }
    }
    if (k != key)
        imgw_free(k);
    if (p == NULL)
        return NULL;
    p->refs++;
    return p->s;
}

void
imgw__mem_pb_put(imgw__mem_shard_t *sh, const char *pb)
{
    imgw__mem_pb_t *p = IMGW_CONTAINER_OF(pb, imgw__mem_pb_t, s);
    if (--p->refs > 0)
        return;
    htab_remove(&sh->pbs, &p->h);
    htab_shrink(&sh->pbs);
    imgw_free(p);
}

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
    int64_t now = mem_now(m);
    int err = IMGW_ENOMEM;

    pthread_mutex_lock(&sh->mu);
    const char *pb = imgw__mem_pb_get(m, sh, platform, broker_id);
    if (pb == NULL)
        goto fail;
    imgw__mem_user_t *u = imgw__mem_user_get(m, sh, h, user, &err);
    if (u == NULL)
        goto fail;
    imgw__mem_routes_expire(sh, u, now);
    imgw__mem_route_t *rt = imgw__mem_routes(u);
    uint16_t i;
    for (i = 0; i < u->n_routes; i++)
        if (strcmp(rt[i].pb, platform) == 0)
            break;
    if (i < u->n_routes) {
        imgw__mem_pb_put(sh, rt[i].pb);
    } else if (u->n_routes == IMGW_STORE_MAX_ROUTES) {
        i = 0;
        for (uint16_t j = 1; j < u->n_routes; j++)
            if (rt[j].expire_ms < rt[i].expire_ms)
                i = j;
        imgw__mem_pb_put(sh, rt[i].pb);
    } else {
        if (u->n_routes == imgw__mem_routes_cap(u) &&
            imgw__mem_routes_grow(u) != 0)
            goto fail;
        rt = imgw__mem_routes(u); /* growing moves them */
        i = u->n_routes++;
    }
    rt[i].pb = pb;
    rt[i].expire_ms = now + (int64_t)ttl * 1000;
    pthread_mutex_unlock(&sh->mu);
    if (cb)
        cb(0, data);
    return 0;
fail:
    if (pb != NULL)
        imgw__mem_pb_put(sh, pb);
    pthread_mutex_unlock(&sh->mu);
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
        imgw__mem_routes_expire(sh, u, now);
        imgw__mem_route_t *rt = imgw__mem_routes(u);
        for (uint16_t i = 0; i < u->n_routes; i++) {
            const char *pb = rt[i].pb;
            if (strcmp(pb, platform) == 0) {
                if (strcmp(pb + strlen(pb) + 1, broker_id) == 0) {
                    imgw__mem_pb_put(sh, pb);
                    if (i != --u->n_routes)
                        rt[i] = rt[u->n_routes];
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
        imgw__mem_routes_expire(sh, u, now);
        imgw__mem_route_t *rt = imgw__mem_routes(u);
        for (uint16_t i = 0; i < u->n_routes; i++)
            rt[i].expire_ms = now + (int64_t)ttl * 1000;
        /* Heartbeats of an online client keep its max_seq alive (Redis:
         * the same script refreshes IM-SEQ's TTL), unless it has expired
         * already: then there is nothing to keep. */
        imgw__mem_user_age(m, u, now);
        imgw__mem_user_seq_expire(m, u, now);
        if (u->used != NULL) /* else nothing to keep alive */
            imgw__mem_touch(u->used, now);
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
        imgw__mem_routes_expire(sh, u, now);
        const imgw__mem_route_t *rt = imgw__mem_routes(u);
        for (uint16_t i = 0; i < u->n_routes; i++, n++) {
            const char *pb = rt[i].pb;
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
