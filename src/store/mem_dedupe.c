/*
 * mem_dedupe.c: the memory backend's dedupe keys (sender, client_msg_id) ->
 * (message id, seq): lookup, expiry from the age lists, eviction at
 * max_dedupes; the dedupe_get request.
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

static void
dedupe_drop(imgw__mem_t *m, imgw__mem_shard_t *sh, imgw__mem_dedupe_t *d)
{
    imgw_list_remove(&d->age);
    imgw__mem_idx_remove(&sh->dedupes, d->hash, d);
    atomic_fetch_sub_explicit(&m->n_dedupes, 1, memory_order_relaxed);
    imgw_free(d);
}

/* key holds two NUL-terminated strings: compare both. */
static int
dedupe_eq(const void *p, const void *key)
{
    const char *a = ((const imgw__mem_dedupe_t *)p)->key, *b = key;
    return strcmp(a, b) == 0 &&
           strcmp(a + strlen(a) + 1, b + strlen(b) + 1) == 0;
}

imgw__mem_dedupe_t *
imgw__mem_dedupe_find(imgw__mem_shard_t *sh, uint64_t h, const char *key)
{
    return imgw__mem_idx_find(&sh->dedupes, h, dedupe_eq, key);
}

/* Drops up to budget expired entries from the front of each age list.
 * The lists are in insertion order, which is expiry order because each
 * table's TTL is fixed; with a clock that steps back an entry may wait
 * behind a later one, which costs memory for a while, never correctness:
 * lookups check expire_ms themselves. */
void
imgw__mem_dedupe_expire(imgw__mem_t *m, imgw__mem_shard_t *sh, int64_t now,
                        int budget)
{
    while (budget-- > 0 && !imgw_list_empty(&sh->dedupe_age)) {
        imgw__mem_dedupe_t *d =
            IMGW_LIST_ENTRY(sh->dedupe_age.next, imgw__mem_dedupe_t, age);
        if (d->expire_ms > now)
            break;
        dedupe_drop(m, sh, d);
    }
}

/*
 * The caps (MEM_DEFAULT_MAX_*): while the node holds more than the cap,
 * drops this shard's oldest records, expired or not, but never keep (the
 * record just inserted). An evicted dedupe key lets a late retry of that
 * message through as a new message; an evicted metadata record makes
 * msg_get / revoke answer ENOTFOUND. A blob keeps its own reference to the
 * metadata, so a revoked flag already set stays visible to sync.
 */
void
imgw__mem_dedupe_evict(imgw__mem_t *m, imgw__mem_shard_t *sh,
                       const imgw__mem_dedupe_t *keep)
{
    while (atomic_load_explicit(&m->n_dedupes, memory_order_relaxed) >
               m->max_dedupes &&
           sh->dedupe_age.next != &keep->age)
        dedupe_drop(
            m, sh,
            IMGW_LIST_ENTRY(sh->dedupe_age.next, imgw__mem_dedupe_t, age));
}

int
imgw__mem_dedupe_get(imgw_store_loop_t *sl, const char *sender,
                     const char *cmid, imgw_store_dedupe_cb cb, void *data)
{
    imgw__mem_t *m = sl->store->impl;
    size_t slen = strlen(sender), clen = strlen(cmid);
    char key[2 * (IMGW__STORE_ID_MAX + 1)];
    if (slen + 1 + clen + 1 > sizeof(key))
        return IMGW_EINVAL;
    memcpy(key, sender, slen + 1);
    memcpy(key + slen + 1, cmid, clen + 1);
    imgw__mem_shard_t *sh = &m->shards[shard_of(hash_str(m, sender))];
    uint64_t hd = hash_dedupe(m, sender, cmid);
    int64_t now = mem_now(m), seq = 0;
    uint64_t id = 0;
    int st = IMGW_ENOTFOUND;
    pthread_mutex_lock(&sh->mu);
    imgw__mem_dedupe_t *d = imgw__mem_dedupe_find(sh, hd, key);
    if (d != NULL && d->expire_ms > now) {
        st = 0;
        id = d->message_id;
        seq = d->seq;
    }
    pthread_mutex_unlock(&sh->mu);
    cb(st, id, seq, data);
    return 0;
}
