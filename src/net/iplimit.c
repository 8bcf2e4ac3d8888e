/*
 * iplimit.c: see iplimit.h. Any thread; each shard's mutex guards a small
 * open-addressing table that grows by doubling and drops entries whose
 * count falls to zero (backward-shift deletion, so no tombstones).
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "err.h"
#include "hash.h"
#include "iplimit.h"

#define NSHARDS 64

typedef struct slot_s {
    imgw_ipaddr_t addr;
    uint32_t count; /* 0 = empty */
} slot_t;

typedef struct shard_s {
    pthread_mutex_t mu;
    slot_t *slots;
    size_t cap; /* power of two */
    size_t used;
} shard_t;

struct imgw_iplimit_s {
    shard_t shards[NSHARDS];
};

static uint64_t
addr_hash(const imgw_ipaddr_t *a)
{
    return imgw_hash_fnv1a64(IMGW_HASH_FNV64_BASIS, a->b, sizeof(a->b));
}

int
imgw_iplimit_new(imgw_iplimit_t **out)
{
    imgw_iplimit_t *t = imgw_try_calloc(1, sizeof(*t));
    if (t == NULL)
        return IMGW_ENOMEM;
    for (int i = 0; i < NSHARDS; i++)
        pthread_mutex_init(&t->shards[i].mu, NULL);
    *out = t;
    return 0;
}

void
imgw_iplimit_free(imgw_iplimit_t *t)
{
    if (t == NULL)
        return;
    for (int i = 0; i < NSHARDS; i++) {
        pthread_mutex_destroy(&t->shards[i].mu);
        imgw_free(t->shards[i].slots);
    }
    imgw_free(t);
}

static slot_t *
find(shard_t *s, const imgw_ipaddr_t *a, uint64_t h)
{
    if (s->cap == 0)
        return NULL;
    size_t mask = s->cap - 1;
    for (size_t i = (h >> 6) & mask;; i = (i + 1) & mask) {
        slot_t *sl = &s->slots[i];
        if (sl->count == 0)
            return NULL;
        if (memcmp(&sl->addr, a, sizeof(*a)) == 0)
            return sl;
    }
}

static int
grow(shard_t *s)
{
    size_t cap = s->cap ? s->cap * 2 : 16;
    slot_t *ns = imgw_try_calloc(cap, sizeof(*ns));
    if (ns == NULL)
        return IMGW_ENOMEM;
    for (size_t k = 0; k < s->cap; k++) {
        slot_t *o = &s->slots[k];
        if (o->count == 0)
            continue;
        size_t i = (addr_hash(&o->addr) >> 6) & (cap - 1);
        while (ns[i].count != 0)
            i = (i + 1) & (cap - 1);
        ns[i] = *o;
    }
    imgw_free(s->slots);
    s->slots = ns;
    s->cap = cap;
    return 0;
}

int
imgw_iplimit_acquire(imgw_iplimit_t *t, const imgw_ipaddr_t *a, int limit)
{
    uint64_t h = addr_hash(a);
    shard_t *s = &t->shards[h % NSHARDS];
    int r = 1;
    pthread_mutex_lock(&s->mu);
    slot_t *sl = find(s, a, h);
    if (sl != NULL) {
        if (limit > 0 && sl->count >= (uint32_t)limit)
            r = 0;
        else
            sl->count++;
    } else {
        if ((s->used + 1) * 4 > s->cap * 3 && grow(s) != 0) {
            r = IMGW_ENOMEM;
        } else {
            size_t mask = s->cap - 1;
            size_t i = (h >> 6) & mask;
            while (s->slots[i].count != 0)
                i = (i + 1) & mask;
            s->slots[i].addr = *a;
            s->slots[i].count = 1;
            s->used++;
        }
    }
    pthread_mutex_unlock(&s->mu);
    return r;
}

void
imgw_iplimit_release(imgw_iplimit_t *t, const imgw_ipaddr_t *a)
{
    uint64_t h = addr_hash(a);
    shard_t *s = &t->shards[h % NSHARDS];
    pthread_mutex_lock(&s->mu);
    slot_t *sl = find(s, a, h);
    if (sl != NULL && --sl->count == 0) {
        /* Backward-shift deletion keeps every probe chain unbroken. */
        size_t mask = s->cap - 1;
        size_t hole = (size_t)(sl - s->slots);
        size_t j = hole;
        for (;;) {
            j = (j + 1) & mask;
            if (s->slots[j].count == 0)
                break;
            size_t home = (addr_hash(&s->slots[j].addr) >> 6) & mask;
            /* Move j into the hole unless its home lies in (hole, j]. */
            int in_range = hole <= j ? (home > hole && home <= j)
                                     : (home > hole || home <= j);
            if (!in_range) {
                s->slots[hole] = s->slots[j];
                s->slots[j].count = 0;
                hole = j;
            }
        }
        s->slots[hole].count = 0;
        s->used--;
    }
    pthread_mutex_unlock(&s->mu);
}

size_t
imgw_iplimit_count(imgw_iplimit_t *t)
{
    size_t n = 0;
    for (int i = 0; i < NSHARDS; i++) {
        pthread_mutex_lock(&t->shards[i].mu);
        n += t->shards[i].used;
        pthread_mutex_unlock(&t->shards[i].mu);
    }
    return n;
}
