/*
 * mem_groups.c: the memory backend's groups: immutable member lists swapped
 * under the shard lock, read by reference; group_set, group_get, group_del.
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

/* ---- groups -------------------------------------------------------------- */

imgw__mem_group_t *
imgw__mem_group_find(imgw__mem_shard_t *sh, uint64_t h, const char *gid)
{
    for (imgw__mem_hnode_t *x = sh->groups.b[h & sh->groups.mask]; x;
         x = x->next) {
        imgw__mem_group_t *g = (imgw__mem_group_t *)x;
        if (x->hash == h && strcmp(g->gid, gid) == 0)
            return g;
    }
    return NULL;
}

void
imgw__mem_group_unref(imgw__mem_group_t *g)
{
    if (atomic_fetch_sub_explicit(&g->refs, 1, memory_order_acq_rel) == 1)
        free(g);
}

typedef struct imgw__mem_sortkey_s {
    const char *s;
    size_t i;
} imgw__mem_sortkey_t;

static int
sortkey_cmp(const void *a, const void *b)
{
    const imgw__mem_sortkey_t *x = a, *y = b;
    int c = strcmp(x->s, y->s);
    if (c != 0)
        return c;
    return x->i < y->i ? -1 : x->i > y->i;
}

/*
 * Builds the immutable member list: duplicates dropped (the first one
 * kept, so the caller's order survives), all in one allocation.
 */
imgw__mem_group_t *
imgw__mem_group_build(const char *gid, const char *const *members, size_t n)
{
    imgw__mem_sortkey_t *keys = mem_malloc(n * sizeof(*keys));
    unsigned char *keep = mem_calloc(n, 1);
    imgw__mem_group_t *g = NULL;
    if (keys == NULL || keep == NULL)
        goto out;
    for (size_t i = 0; i < n; i++) {
        keys[i].s = members[i];
        keys[i].i = i;
    }
    qsort(keys, n, sizeof(*keys), sortkey_cmp);
    size_t kept = 0, bytes = strlen(gid) + 1;
    for (size_t j = 0; j < n; j++)
        if (j == 0 || strcmp(keys[j].s, keys[j - 1].s) != 0) {
            keep[keys[j].i] = 1;
            kept++;
            bytes += strlen(keys[j].s) + 1;
        }
    g = mem_malloc(sizeof(*g) + kept * sizeof(char *) + bytes);
    if (g == NULL)
        goto out;
    g->members = (const char **)(void *)(g + 1);
    char *p = (char *)(g->members + kept);
    size_t len = strlen(gid) + 1;
    g->gid = memcpy(p, gid, len);
    p += len;
    g->n = 0;
    for (size_t i = 0; i < n; i++)
        if (keep[i]) {
            len = strlen(members[i]) + 1;
            g->members[g->n++] = memcpy(p, members[i], len);
            p += len;
        }
    atomic_init(&g->refs, 1);
out:
    free(keys);
    free(keep);
    return g;
}

/* An empty member list removes the group: in Redis an empty set does not
 * exist, and both backends must answer group_get the same way. */
int
imgw__mem_group_set(imgw_store_loop_t *sl, const char *gid,
                    const char *const *members, size_t n, imgw_store_done_cb cb,
                    void *data)
{
    imgw__mem_t *m = sl->store->impl;
    uint64_t h = hash_str(m, gid);
    imgw__mem_shard_t *sh = &m->shards[shard_of(h)];
    imgw__mem_group_t *g = NULL;
    if (n > 0) {
        g = imgw__mem_group_build(gid, members, n);
        if (g == NULL)
            return IMGW_ENOMEM;
        g->h.hash = h;
    }
    pthread_mutex_lock(&sh->mu);
    imgw__mem_group_t *old = imgw__mem_group_find(sh, h, gid);
    if (old != NULL)
        htab_remove(&sh->groups, &old->h);
    if (g != NULL)
        htab_insert(&sh->groups, &g->h);
    pthread_mutex_unlock(&sh->mu);
    if (old != NULL)
        imgw__mem_group_unref(
            old); /* readers in a callback may still hold it */
    if (cb)
        cb(0, data);
    return 0;
}

int
imgw__mem_group_get(imgw_store_loop_t *sl, const char *gid,
                    imgw_store_members_cb cb, void *data)
{
    imgw__mem_t *m = sl->store->impl;
    uint64_t h = hash_str(m, gid);
    imgw__mem_shard_t *sh = &m->shards[shard_of(h)];
    pthread_mutex_lock(&sh->mu);
    imgw__mem_group_t *g = imgw__mem_group_find(sh, h, gid);
    if (g != NULL)
        atomic_fetch_add_explicit(&g->refs, 1, memory_order_relaxed);
    pthread_mutex_unlock(&sh->mu);
    if (g == NULL) {
        cb(IMGW_ENOTFOUND, NULL, 0, data);
        return 0;
    }
    cb(0, g->members, g->n, data);
    imgw__mem_group_unref(g);
    return 0;
}

int
imgw__mem_group_del(imgw_store_loop_t *sl, const char *gid,
                    imgw_store_done_cb cb, void *data)
{
    imgw__mem_t *m = sl->store->impl;
    uint64_t h = hash_str(m, gid);
    imgw__mem_shard_t *sh = &m->shards[shard_of(h)];
    pthread_mutex_lock(&sh->mu);
    imgw__mem_group_t *g = imgw__mem_group_find(sh, h, gid);
    if (g != NULL)
        htab_remove(&sh->groups, &g->h);
    pthread_mutex_unlock(&sh->mu);
    if (g != NULL)
        imgw__mem_group_unref(g);
    if (cb)
        cb(g ? 0 : IMGW_ENOTFOUND, data);
    return 0;
}
