/*
 * mem_meta.c: the memory backend's entry blobs and message metadata
 * (reference counts, lookup, expiry, eviction at max_metas), and the msg_get
 * and revoke requests.
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

/* ---- blobs, metadata, dedupe keys ---------------------------------------- */

void
imgw__mem_meta_unref(imgw__mem_t *m, imgw__mem_meta_t *x)
{
    if (atomic_fetch_sub_explicit(&x->refs, 1, memory_order_acq_rel) == 1) {
        atomic_fetch_sub_explicit(&m->metas_live, 1, memory_order_relaxed);
        imgw_free(x);
    }
}

void
imgw__mem_blob_ref(imgw__mem_blob_t *b)
{
    /* Relaxed is enough: the caller already holds a reference (a timeline
     * slot, under its shard lock), so the count cannot reach zero here. */
    atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed);
}

void
imgw__mem_blob_unref(imgw__mem_t *m, imgw__mem_blob_t *b)
{
    if (atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) == 1) {
        imgw__mem_meta_unref(m, b->meta);
        atomic_fetch_sub_explicit(&m->blobs_live, 1, memory_order_relaxed);
        imgw_free(b);
    }
}

static int
meta_eq(const void *p, const void *key)
{
    return ((const imgw__mem_meta_t *)p)->message_id == *(const uint64_t *)key;
}

imgw__mem_meta_t *
imgw__mem_meta_find(imgw__mem_shard_t *sh, uint64_t h, uint64_t id)
{
    return imgw__mem_idx_find(&sh->metas, h, meta_eq, &id);
}

void
imgw__mem_meta_drop(imgw__mem_t *m, imgw__mem_shard_t *sh, imgw__mem_meta_t *mt)
{
    imgw_list_remove(&mt->age);
    imgw__mem_idx_remove(&sh->metas, mt->hash, mt);
    atomic_fetch_sub_explicit(&m->n_metas, 1, memory_order_relaxed);
    imgw__mem_meta_unref(m, mt);
}

void
imgw__mem_meta_expire(imgw__mem_t *m, imgw__mem_shard_t *sh, int64_t now,
                      int budget)
{
    while (budget-- > 0 && !imgw_list_empty(&sh->meta_age)) {
        imgw__mem_meta_t *mt =
            IMGW_LIST_ENTRY(sh->meta_age.next, imgw__mem_meta_t, age);
        if (mt->expire_ms > now)
            break;
        imgw__mem_meta_drop(m, sh, mt);
    }
}

void
imgw__mem_meta_evict(imgw__mem_t *m, imgw__mem_shard_t *sh,
                     const imgw__mem_meta_t *keep)
{
    while (atomic_load_explicit(&m->n_metas, memory_order_relaxed) >
               m->max_metas &&
           sh->meta_age.next != &keep->age)
        imgw__mem_meta_drop(
            m, sh, IMGW_LIST_ENTRY(sh->meta_age.next, imgw__mem_meta_t, age));
}

/* ---- messages ------------------------------------------------------------ */

int
imgw__mem_msg_get(imgw_store_loop_t *sl, uint64_t message_id,
                  imgw_store_msg_cb cb, void *data)
{
    imgw__mem_t *m = sl->store->impl;
    uint64_t h = hash_id(m, message_id);
    imgw__mem_shard_t *sh = &m->shards[shard_of(h)];
    char sender[IMGW__STORE_ID_MAX + 1], conv[IMGW__STORE_CONV_MAX + 1];
    imgw_store_msg_t msg;
    int64_t now = mem_now(m);

    pthread_mutex_lock(&sh->mu);
    imgw__mem_meta_t *mt = imgw__mem_meta_find(sh, h, message_id);
    if (mt == NULL || mt->expire_ms <= now) {
        pthread_mutex_unlock(&sh->mu);
        cb(IMGW_ENOTFOUND, NULL, data);
        return 0;
    }
    /* store.c bounded both strings on the way in. */
    snprintf(sender, sizeof(sender), "%s", mt->sender);
    snprintf(conv, sizeof(conv), "%s", mt->conv);
    msg.message_id = mt->message_id;
    msg.sender = sender;
    msg.conversation_id = conv;
    msg.server_time_ms = mt->server_time_ms;
    msg.revoked = atomic_load_explicit(&mt->revoked, memory_order_relaxed);
    pthread_mutex_unlock(&sh->mu);
    cb(0, &msg, data);
    return 0;
}

int
imgw__mem_revoke(imgw_store_loop_t *sl, uint64_t message_id,
                 imgw_store_done_cb cb, void *data)
{
    imgw__mem_t *m = sl->store->impl;
    uint64_t h = hash_id(m, message_id);
    imgw__mem_shard_t *sh = &m->shards[shard_of(h)];
    int64_t now = mem_now(m);
    int status = 0;

    pthread_mutex_lock(&sh->mu);
    imgw__mem_meta_t *mt = imgw__mem_meta_find(sh, h, message_id);
    if (mt == NULL || mt->expire_ms <= now)
        status = IMGW_ENOTFOUND;
    else
        atomic_store_explicit(&mt->revoked, 1, memory_order_relaxed);
    pthread_mutex_unlock(&sh->mu);
    if (cb)
        cb(status, data);
    return 0;
}
