/*
 * watchmap.c: watched user id -> subscribed connections (see watchmap.h).
 *
 * Threads: any. new/free on the main thread; add/remove/get from every
 * loop concurrently; users()/subs() from a stats reader.
 *
 * Each shard is a chained hash table whose bucket array doubles when the
 * shard holds more users than buckets (a failed resize is ignored: the
 * table stays correct, only its chains grow). An entry is freed with its
 * last watcher. The hash is unseeded FNV-1a + fmix64 (base/hash.h): the
 * watched ids come from authenticated clients, bounded per connection
 * (limits.presence_subscriptions), and a collision costs chain length,
 * not correctness.
 */
#include "watchmap.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "alloc.h"
#include "err.h"
#include "hash.h"

#define WM_USER_MAX 127
#define WM_MIN_BUCKETS 16

typedef struct wm_entry_s {
    struct wm_entry_s *next;
    uint64_t hash;
    imgw_conn_ref_t *refs; /* n watchers, room for cap */
    uint32_t n, cap;
    char user[]; /* NUL-terminated */
} wm_entry_t;

typedef struct wm_shard_s {
    _Alignas(64) pthread_mutex_t lock;
    wm_entry_t **buckets; /* nbuckets chains (power of two); under lock */
    size_t nbuckets, n;   /* under lock */
} wm_shard_t;

struct imgw_watchmap_s {
    size_t nshards; /* power of two */
    wm_shard_t *shards;
    atomic_size_t users, subs;
};

int
imgw_watchmap_new(imgw_watchmap_t **out, size_t nshards)
{
    size_t ns = 1;
    while (ns < nshards && ns < 4096)
        ns <<= 1;
    imgw_watchmap_t *m = imgw_try_calloc(1, sizeof(*m));
    if (m == NULL)
        return IMGW_ENOMEM;
    m->shards = imgw_try_aligned_alloc(_Alignof(wm_shard_t),
                                       ns * sizeof(wm_shard_t));
    if (m->shards == NULL) {
        imgw_free(m);
        return IMGW_ENOMEM;
    }
    memset(m->shards, 0, ns * sizeof(wm_shard_t));
    m->nshards = ns;
    for (size_t i = 0; i < ns; i++) {
        wm_shard_t *s = &m->shards[i];
        pthread_mutex_init(&s->lock, NULL);
        s->buckets = imgw_try_calloc(WM_MIN_BUCKETS, sizeof(wm_entry_t *));
        if (s->buckets == NULL) {
            m->nshards = i + 1;
            imgw_watchmap_free(m);
            return IMGW_ENOMEM;
        }
        s->nbuckets = WM_MIN_BUCKETS;
    }
    *out = m;
    return 0;
}

void
imgw_watchmap_free(imgw_watchmap_t *m)
{
    if (m == NULL)
        return;
    for (size_t i = 0; i < m->nshards; i++) {
        wm_shard_t *s = &m->shards[i];
        for (size_t b = 0; s->buckets && b < s->nbuckets; b++) {
            wm_entry_t *e = s->buckets[b];
            while (e) {
                wm_entry_t *next = e->next;
                imgw_free(e->refs);
                imgw_free(e);
                e = next;
            }
        }
        imgw_free(s->buckets);
        pthread_mutex_destroy(&s->lock);
    }
    imgw_free(m->shards);
    imgw_free(m);
}

static wm_shard_t *
wm_shard(imgw_watchmap_t *m, uint64_t h)
{
    return &m->shards[(h >> 48) & (m->nshards - 1)];
}

/* The entry's chain slot (so it can be unlinked), under the shard lock. */
static wm_entry_t **
wm_find(wm_shard_t *s, const char *user, uint64_t h)
{
    wm_entry_t **pp = &s->buckets[h & (s->nbuckets - 1)];
    while (*pp && ((*pp)->hash != h || strcmp((*pp)->user, user) != 0))
        pp = &(*pp)->next;
    return pp;
}

static void
wm_grow(wm_shard_t *s)
{
    size_t nb = s->nbuckets * 2;
    wm_entry_t **b = imgw_try_calloc(nb, sizeof(*b));
    if (b == NULL)
        return;
    for (size_t i = 0; i < s->nbuckets; i++) {
        wm_entry_t *e = s->buckets[i];
        while (e) {
            wm_entry_t *next = e->next;
            e->next = b[e->hash & (nb - 1)];
            b[e->hash & (nb - 1)] = e;
            e = next;
        }
    }
    imgw_free(s->buckets);
    s->buckets = b;
    s->nbuckets = nb;
}

int
imgw_watchmap_add(imgw_watchmap_t *m, const char *user, imgw_conn_ref_t ref)
{
    size_t len = strnlen(user, WM_USER_MAX + 1);
    if (len == 0 || len > WM_USER_MAX)
        return IMGW_EINVAL;
    uint64_t h = imgw_hash_bytes(user, len);
    wm_shard_t *s = wm_shard(m, h);
    int r = 0;
    pthread_mutex_lock(&s->lock);
    wm_entry_t **pp = wm_find(s, user, h);
    wm_entry_t *e = *pp;
    if (e == NULL) {
        e = imgw_try_calloc(1, sizeof(*e) + len + 1);
        if (e == NULL) {
            r = IMGW_ENOMEM;
            goto out;
        }
        e->hash = h;
        memcpy(e->user, user, len + 1);
        e->next = s->buckets[h & (s->nbuckets - 1)];
        s->buckets[h & (s->nbuckets - 1)] = e;
        s->n++;
        atomic_fetch_add_explicit(&m->users, 1, memory_order_relaxed);
        r = 1;
    }
    for (uint32_t i = 0; i < e->n; i++)
        if (imgw_conn_ref_eq(e->refs[i], ref))
            goto out;
    if (e->n == e->cap) {
        uint32_t cap = e->cap ? e->cap * 2 : 2;
        imgw_conn_ref_t *nr = imgw_try_realloc(e->refs, cap * sizeof(*nr));
        if (nr == NULL) {
            if (e->n == 0) { /* just created: take it out again */
                *wm_find(s, user, h) = e->next;
                s->n--;
                atomic_fetch_sub_explicit(&m->users, 1, memory_order_relaxed);
                imgw_free(e);
            }
            r = IMGW_ENOMEM;
            goto out;
        }
        e->refs = nr;
        e->cap = cap;
    }
    e->refs[e->n++] = ref;
    atomic_fetch_add_explicit(&m->subs, 1, memory_order_relaxed);
    if (r == 1 && s->n > s->nbuckets)
        wm_grow(s);
out:
    pthread_mutex_unlock(&s->lock);
    return r;
}

int
imgw_watchmap_remove(imgw_watchmap_t *m, const char *user,
                     imgw_conn_ref_t ref)
{
    size_t len = strnlen(user, WM_USER_MAX + 1);
    if (len == 0 || len > WM_USER_MAX)
        return 0;
    uint64_t h = imgw_hash_bytes(user, len);
    wm_shard_t *s = wm_shard(m, h);
    int r = 0;
    pthread_mutex_lock(&s->lock);
    wm_entry_t **pp = wm_find(s, user, h);
    wm_entry_t *e = *pp;
    for (uint32_t i = 0; e && i < e->n; i++) {
        if (!imgw_conn_ref_eq(e->refs[i], ref))
            continue;
        e->refs[i] = e->refs[--e->n];
        atomic_fetch_sub_explicit(&m->subs, 1, memory_order_relaxed);
        r = 1;
        break;
    }
    if (e && e->n == 0) {
        *pp = e->next;
        s->n--;
        atomic_fetch_sub_explicit(&m->users, 1, memory_order_relaxed);
        imgw_free(e->refs);
        imgw_free(e);
    }
    pthread_mutex_unlock(&s->lock);
    return r;
}

ssize_t
imgw_watchmap_get(imgw_watchmap_t *m, const char *user, imgw_conn_ref_t **out)
{
    *out = NULL;
    size_t len = strnlen(user, WM_USER_MAX + 1);
    if (len == 0 || len > WM_USER_MAX)
        return 0;
    uint64_t h = imgw_hash_bytes(user, len);
    wm_shard_t *s = wm_shard(m, h);
    ssize_t n = 0;
    pthread_mutex_lock(&s->lock);
    wm_entry_t *e = *wm_find(s, user, h);
    if (e != NULL && e->n > 0) {
        *out = imgw_try_malloc(e->n * sizeof(**out));
        if (*out == NULL) {
            n = IMGW_ENOMEM;
        } else {
            memcpy(*out, e->refs, e->n * sizeof(**out));
            n = (ssize_t)e->n;
        }
    }
    pthread_mutex_unlock(&s->lock);
    return n;
}

void
imgw_watchmap_foreach_user(imgw_watchmap_t *m,
                           void (*fn)(const char *user, void *arg), void *arg)
{
    for (size_t i = 0; i < m->nshards; i++) {
        wm_shard_t *s = &m->shards[i];
        pthread_mutex_lock(&s->lock);
        for (size_t b = 0; b < s->nbuckets; b++)
            for (wm_entry_t *e = s->buckets[b]; e; e = e->next)
                fn(e->user, arg);
        pthread_mutex_unlock(&s->lock);
    }
}

size_t
imgw_watchmap_users(imgw_watchmap_t *m)
{
    return atomic_load_explicit(&m->users, memory_order_relaxed);
}

size_t
imgw_watchmap_subs(imgw_watchmap_t *m)
{
    return atomic_load_explicit(&m->subs, memory_order_relaxed);
}
