/*
 * usermap.c: user id -> this node's live connections (see usermap.h).
 *
 * Threads: any. imgw_usermap_new/free run on the main thread before the
 * loops start and after they stop; add/remove/get from every loop (and
 * whoever else routes) concurrently, users() from a stats reader.
 *
 * Sharding: the user id's hash picks a shard (high bits) and a bucket in
 * the shard's chained table (low bits), so the two choices are
 * independent. Each shard has its own mutex, held only for a lookup plus
 * a small copy or edit (never I/O, at most one malloc/realloc), and sits
 * on its own cache lines so neighbouring shards' locks do not false-share.
 *
 * Memory: one allocation per user, holding the entry header, room for
 * `cap` connections (1, 2, 4, 8 or 16, grown on demand) and the user id,
 * so an idle user with one connection and an id of up to 8 bytes is one
 * 64-byte malloc chunk plus its share of the bucket array; the user's rate
 * buckets are a second, 32-byte one made at its first send or receipt
 * (imgw_usermap_take). An entry is freed as soon as its
 * last connection goes. Bucket arrays double when a shard holds more users than
 * buckets and halve when it holds fewer than a quarter (hysteresis, so a shard
 * at the boundary does not flap); a failed resize is ignored: the table is
 * still correct, only its chains are longer.
 *
 * The hash is FNV-1a with a 64-bit finaliser (FNV's high bits mix poorly
 * on short keys). It is unseeded: user ids come from tokens the operator's
 * issuer signed, so an outsider cannot choose colliding ids.
 */
#include "usermap.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "err.h"
#include "hash.h"

#define UM_USER_MAX 127     /* bytes in a user id, NUL excluded */
#define UM_MIN_BUCKETS 16   /* per shard; also the initial size */
#define UM_LOAD 2           /* users per bucket before the shard doubles */
#define UM_MAX_SHARDS 65536 /* shard index comes from 16+ hash bits */

/* A registered connection. The platform is the registering caller's
 * string, borrowed until the ref is removed or replaced (usermap.h): a
 * pointer instead of a 32-byte copy keeps an idle user's entry at 80 bytes
 * of heap instead of 112. Read only under the shard lock, like the rest. */
typedef struct um_conn_s {
    imgw_conn_ref_t ref;
    const char *platform;
} um_conn_t;

/* The user's token buckets (imgw_usermap_take), shared by all of its
 * connections on this node; refill_ms 0 = full, not used yet. */
typedef struct um_budget_s {
    float tokens[IMGW_USERMAP_N_BUDGETS];
    uint64_t refill_ms[IMGW_USERMAP_N_BUDGETS];
} um_budget_t;

typedef struct um_entry_s {
    struct um_entry_s *next; /* bucket chain */
    uint32_t hash;           /* low 32 bits of the user's hash */
    uint8_t n;               /* connections in conns[] */
    uint8_t cap;             /* room in conns[]; the user id follows it */
    uint8_t keylen;          /* strlen(user), 1..UM_USER_MAX */
    /* NULL until the user's first send or receipt: most connected users
     * are idle, and without the 24 bytes an idle user with a short id
     * (<= 8 bytes) is one 64-byte chunk instead of 80. */
    um_budget_t *budget;
    um_conn_t conns[];
} um_entry_t;
/* One connection and an id of up to 8 bytes in a 64-byte malloc chunk. */
_Static_assert(sizeof(um_entry_t) + sizeof(um_conn_t) <= 48,
               "um_entry_t grew");

typedef struct um_shard_s {
    /* _Alignas: one shard per cache line pair, never sharing a line with
     * its neighbour's mutex. */
    _Alignas(64) pthread_mutex_t lock;
    um_entry_t **buckets; /* nbuckets chains; under lock */
    size_t nbuckets;      /* power of two; under lock */
    size_t n;             /* users in this shard; under lock */
    atomic_size_t users;  /* copy of n for lock-free imgw_usermap_users */
} um_shard_t;

struct imgw_usermap_s {
    size_t nshards; /* power of two */
    um_shard_t *shards;
};

/* ---- helpers ------------------------------------------------------------- */

static uint64_t
um_hash(const char *s, size_t len)
{
    return imgw_hash_bytes(s, len); /* FNV-1a 64 + fmix64 */
}

static size_t
um_entry_size(size_t cap, size_t keylen)
{
    return sizeof(um_entry_t) + cap * sizeof(um_conn_t) + keylen + 1;
}

static char *
um_entry_user(um_entry_t *e)
{
    return (char *)(e->conns + e->cap);
}

/* Returns the user id's length, or 0 when it is NULL, empty or too long. */
static size_t
um_user_len(const char *user)
{
    if (user == NULL)
        return 0;
    size_t len = strnlen(user, UM_USER_MAX + 1);
    return len > UM_USER_MAX ? 0 : len;
}

static um_shard_t *
um_shard(imgw_usermap_t *m, uint64_t h)
{
    return &m->shards[(h >> 32) & (m->nshards - 1)];
}

/* Returns the link that points at user's entry (*link is NULL when the
 * user is absent: then it is where a new entry can be linked). Lock held. */
static um_entry_t **
um_find(um_shard_t *s, uint32_t h, const char *user, size_t len)
{
    um_entry_t **pp = &s->buckets[h & (s->nbuckets - 1)];
    for (; *pp != NULL; pp = &(*pp)->next) {
        um_entry_t *e = *pp;
        if (e->hash == h && e->keylen == len &&
            memcmp(um_entry_user(e), user, len) == 0)
            return pp;
    }
    return pp;
}

/* Rehashes the shard into nb buckets; keeps the old table if malloc
 * fails. Lock held. */
static void
um_resize(um_shard_t *s, size_t nb)
{
    um_entry_t **nbk = imgw_try_calloc(nb, sizeof(*nbk));
    if (nbk == NULL)
        return;
    for (size_t i = 0; i < s->nbuckets; i++) {
        um_entry_t *e = s->buckets[i];
        while (e != NULL) {
            um_entry_t *next = e->next;
            um_entry_t **head = &nbk[e->hash & (nb - 1)];
            e->next = *head;
            *head = e;
            e = next;
        }
    }
    imgw_free(s->buckets);
    s->buckets = nbk;
    s->nbuckets = nb;
}

static void
um_users_changed(um_shard_t *s)
{
    /* Relaxed: a statistic; readers accept a slightly stale sum. */
    atomic_store_explicit(&s->users, s->n, memory_order_relaxed);
}

/* ---- lifecycle ----------------------------------------------------------- */

int
imgw_usermap_new(imgw_usermap_t **out, size_t nshards)
{
    size_t ns = 1;

    *out = NULL;
    if (nshards == 0 || nshards > UM_MAX_SHARDS)
        return IMGW_EINVAL;
    while (ns < nshards)
        ns <<= 1;
    imgw_usermap_t *m = imgw_try_calloc(1, sizeof(*m));
    if (m == NULL)
        return IMGW_ENOMEM;
    /* sizeof(um_shard_t) is a multiple of its 64-byte alignment. */
    m->shards = imgw_try_aligned_alloc(_Alignof(um_shard_t), ns * sizeof(um_shard_t));
    if (m->shards == NULL) {
        imgw_free(m);
        return IMGW_ENOMEM;
    }
    for (size_t i = 0; i < ns; i++) {
        um_shard_t *s = &m->shards[i];
        s->buckets = imgw_try_calloc(UM_MIN_BUCKETS, sizeof(*s->buckets));
        if (s->buckets == NULL || pthread_mutex_init(&s->lock, NULL) != 0) {
            imgw_free(s->buckets);
            m->nshards = i; /* free what was set up so far */
            imgw_usermap_free(m);
            return IMGW_ENOMEM;
        }
        s->nbuckets = UM_MIN_BUCKETS;
        s->n = 0;
        atomic_init(&s->users, 0);
    }
    m->nshards = ns;
    *out = m;
    return 0;
}

void
imgw_usermap_free(imgw_usermap_t *m)
{
    if (m == NULL)
        return;
    for (size_t i = 0; i < m->nshards; i++) {
        um_shard_t *s = &m->shards[i];
        for (size_t b = 0; b < s->nbuckets; b++) {
            um_entry_t *e = s->buckets[b];
            while (e != NULL) {
                um_entry_t *next = e->next;
                imgw_free(e->budget);
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

/* ---- operations ---------------------------------------------------------- */

/*
 * Order of checks, all under the shard lock:
 *   1. ref already registered: with the same platform nothing changes
 *      (return 0, idempotent); with another platform it is taken out and
 *      re-added below as if new (a connection moving platform).
 *   2. another connection on the same platform: replaced in place, its
 *      ref goes to *kicked, return 1. Replacing never needs room, so it
 *      works even when the user is at IMGW_USERMAP_MAX_CONNS.
 *   3. otherwise appended; IMGW_EQUEUEFULL at the bound.
 * Invalid arguments (user NULL, empty or over 127 bytes, platform NULL or
 * over 31 bytes) give IMGW_EINVAL; an allocation failure IMGW_ENOMEM. On
 * any error nothing changed.
 */
int
imgw_usermap_add(imgw_usermap_t *m, const char *user, const char *platform,
                 imgw_conn_ref_t ref, imgw_conn_ref_t *kicked)
{
    return imgw_usermap_add_n(m, user, platform, ref, kicked, NULL);
}

int
imgw_usermap_add_n(imgw_usermap_t *m, const char *user, const char *platform,
                   imgw_conn_ref_t ref, imgw_conn_ref_t *kicked, size_t *n)
{
    if (n != NULL)
        *n = 0;
    size_t len = um_user_len(user);
    if (len == 0 || platform == NULL)
        return IMGW_EINVAL;
    size_t plen = strnlen(platform, IMGW_USERMAP_PLATFORM);
    if (plen >= IMGW_USERMAP_PLATFORM)
        return IMGW_EINVAL;

    uint64_t h64 = um_hash(user, len);
    uint32_t h = (uint32_t)h64;
    um_shard_t *s = um_shard(m, h64);
    int rc = 0;

    pthread_mutex_lock(&s->lock);
    um_entry_t **pp = um_find(s, h, user, len);
    um_entry_t *e = *pp;

    if (e == NULL) {
        e = imgw_try_malloc(um_entry_size(1, len));
        if (e == NULL) {
            rc = IMGW_ENOMEM;
            goto out;
        }
        e->next = NULL;
        e->hash = h;
        e->n = 0;
        e->cap = 1;
        e->keylen = (uint8_t)len;
        e->budget = NULL;
        memcpy(um_entry_user(e), user, len + 1);
        *pp = e;
        s->n++;
        um_users_changed(s);
        /* Up to two users per bucket: a bucket word per user is ~13 B of
         * an idle connection's memory at load 1, and a lookup compares
         * hashes before keys, so a second hop is cheap. */
        if (s->n > UM_LOAD * s->nbuckets)
            um_resize(s, s->nbuckets * 2); /* e stays valid; pp does not */
    } else {
        for (size_t i = 0; i < e->n; i++) {
            if (!imgw_conn_ref_eq(e->conns[i].ref, ref))
                continue;
            if (strcmp(e->conns[i].platform, platform) == 0) {
                e->conns[i].platform = platform; /* the newest borrow */
                goto out; /* already there: idempotent */
            }
            memmove(&e->conns[i], &e->conns[i + 1],
                    (e->n - i - 1) * sizeof(e->conns[0]));
            e->n--;
            break;
        }
        for (size_t i = 0; i < e->n; i++) {
            if (strcmp(e->conns[i].platform, platform) != 0)
                continue;
            if (kicked != NULL)
                *kicked = e->conns[i].ref;
            e->conns[i].ref = ref;
            e->conns[i].platform = platform; /* the kicked one's goes */
            rc = 1;
            goto out;
        }
        if (e->n >= IMGW_USERMAP_MAX_CONNS) {
            rc = IMGW_EQUEUEFULL;
            goto out;
        }
        if (e->n == e->cap) {
            size_t ncap = (size_t)e->cap * 2;
            if (ncap > IMGW_USERMAP_MAX_CONNS)
                ncap = IMGW_USERMAP_MAX_CONNS;
            um_entry_t *ne = imgw_try_realloc(e, um_entry_size(ncap, len));
            if (ne == NULL) {
                rc = IMGW_ENOMEM;
                goto out;
            }
            /* The user id sat right after the old capacity. */
            memmove((char *)(ne->conns + ncap), (char *)(ne->conns + ne->cap),
                    len + 1);
            ne->cap = (uint8_t)ncap;
            *pp = ne;
            e = ne;
        }
    }
    e->conns[e->n].ref = ref;
    e->conns[e->n].platform = platform;
    e->n++;
out:
    if (n != NULL && e != NULL && rc >= 0)
        *n = e->n;
    pthread_mutex_unlock(&s->lock);
    return rc;
}

int
imgw_usermap_remove(imgw_usermap_t *m, const char *user, imgw_conn_ref_t ref)
{
    return imgw_usermap_remove_n(m, user, ref, NULL);
}

int
imgw_usermap_remove_n(imgw_usermap_t *m, const char *user,
                      imgw_conn_ref_t ref, size_t *n)
{
    if (n != NULL)
        *n = 0;
    size_t len = um_user_len(user);
    if (len == 0)
        return 0;
    uint64_t h64 = um_hash(user, len);
    uint32_t h = (uint32_t)h64;
    um_shard_t *s = um_shard(m, h64);
    int removed = 0;

    pthread_mutex_lock(&s->lock);
    um_entry_t **pp = um_find(s, h, user, len);
    um_entry_t *e = *pp;
    if (e == NULL)
        goto out;
    for (size_t i = 0; i < e->n; i++) {
        /* A stale ref (an older generation of the slot) never matches, so
         * a late remove cannot take out the connection that replaced it. */
        if (!imgw_conn_ref_eq(e->conns[i].ref, ref))
            continue;
        memmove(&e->conns[i], &e->conns[i + 1],
                (e->n - i - 1) * sizeof(e->conns[0]));
        e->n--;
        removed = 1;
        break;
    }
    if (removed && n != NULL)
        *n = e->n;
    if (removed && e->n == 0) {
        *pp = e->next;
        imgw_free(e->budget);
        imgw_free(e);
        s->n--;
        um_users_changed(s);
        if (s->nbuckets > UM_MIN_BUCKETS && s->n < s->nbuckets / 2)
            um_resize(s, s->nbuckets / 2);
    }
out:
    pthread_mutex_unlock(&s->lock);
    return removed;
}

size_t
imgw_usermap_get(imgw_usermap_t *m, const char *user, imgw_usermap_conn_t *out,
                 size_t max)
{
    size_t len = um_user_len(user);
    if (len == 0 || max == 0)
        return 0;
    uint64_t h64 = um_hash(user, len);
    uint32_t h = (uint32_t)h64;
    um_shard_t *s = um_shard(m, h64);
    size_t k = 0;

    pthread_mutex_lock(&s->lock);
    um_entry_t *e = *um_find(s, h, user, len);
    if (e != NULL) {
        k = e->n < max ? e->n : max;
        for (size_t i = 0; i < k; i++) {
            /* Copied under the lock: the owner may go once it is out. */
            out[i].ref = e->conns[i].ref;
            size_t pl = strlen(e->conns[i].platform); /* checked at add */
            memcpy(out[i].platform, e->conns[i].platform, pl + 1);
        }
    }
    pthread_mutex_unlock(&s->lock);
    return k;
}

/*
 * Why here: a user's connections may live on different loops, and the
 * entry already exists per user with a lock that is held only briefly;
 * a bucket is two floats of arithmetic inside the same critical section a
 * push's lookup takes. The bucket lives and dies with the entry: a user
 * with no connection left has no budget to keep.
 */
int
imgw_usermap_take(imgw_usermap_t *m, const char *user, int which, double rate,
                  double burst, uint64_t now_ms)
{
    size_t len = um_user_len(user);
    if (len == 0 || which < 0 || which >= IMGW_USERMAP_N_BUDGETS)
        return 1;
    uint64_t h64 = um_hash(user, len);
    uint32_t h = (uint32_t)h64;
    um_shard_t *s = um_shard(m, h64);
    int ok = 1;

    pthread_mutex_lock(&s->lock);
    um_entry_t *e = *um_find(s, h, user, len);
    /* The first take makes the buckets (under the lock, as add makes the
     * entry). Without memory the user-wide limit is not applied this
     * time: the connection's own buckets (session.c) still bound it, and
     * refusing a send as "too fast" would name the wrong cause. */
    if (e != NULL && e->budget == NULL)
        e->budget = imgw_try_calloc(1, sizeof(*e->budget));
    if (e != NULL && e->budget != NULL) {
        um_budget_t *bu = e->budget;
        double t = bu->tokens[which];
        if (bu->refill_ms[which] == 0) {
            t = burst;
            bu->refill_ms[which] = now_ms ? now_ms : 1;
        } else if (now_ms > bu->refill_ms[which]) {
            /* Loops' clocks differ by a little; one behind the last
             * refill adds nothing rather than moving the mark back. */
            t += (double)(now_ms - bu->refill_ms[which]) * rate / 1000.0;
            if (t > burst)
                t = burst;
            bu->refill_ms[which] = now_ms;
        }
        if (t >= 1.0)
            t -= 1.0;
        else
            ok = 0;
        bu->tokens[which] = (float)t;
    }
    pthread_mutex_unlock(&s->lock);
    return ok;
}

size_t
imgw_usermap_users(imgw_usermap_t *m)
{
    size_t total = 0;
    for (size_t i = 0; i < m->nshards; i++)
        total +=
            atomic_load_explicit(&m->shards[i].users, memory_order_relaxed);
    return total;
}
