/*
 * memory.c: the in-process store backend ("memory"): one node, the same
 * semantics as the redis backend (docs/store.md).
 *
 * Threads: one instance is shared by every loop. All state lives in 64
 * shards, each one mutex and four hash tables (users, dedupe keys, message
 * metadata, groups); a key's shard is the top 6 bits of its seeded hash. A
 * request locks the shards it needs in ascending index order, copies or
 * takes references to what its callback needs, unlocks, and only then runs
 * the callback, synchronously, on the calling thread: a callback may call
 * back into the store. imgw_store_tick() may run on any thread.
 *
 * Memory: an appended entry is copied once into a blob shared by all the
 * timelines of that append (a 1000-member group message is stored once,
 * not 1000 times). Blobs and message metadata are reference-counted with
 * atomics, not under the shard locks, because their holders live in
 * different shards: the timelines of several users, the metadata table, and
 * a sync callback that runs with no lock held.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alloc.h"
#include "clock.h"
#include "err.h"
#include "hash.h"
#include "log.h"
#include "rec.h"
#include "store_impl.h"

#define MEM_SHARD_BITS 6
#define MEM_SHARDS (1u << MEM_SHARD_BITS) /* one bit each in a uint64_t */
#define MEM_HTAB_MIN 16                   /* buckets, power of two */
#define MEM_MAX_DEVICES 16                /* delivered positions per user */
#define MEM_MAX_READS 256                 /* read positions per user */
#define MEM_MAX_RETENTION_COUNT 10000000
#define MEM_MAX_RETENTION_DAYS 3650
#define MEM_MAX_DEDUPE_TTL (366 * 86400)
/*
 * Global caps on the per-message records, so that a sustained send rate
 * cannot grow the node without bound within dedupe_ttl / retention (at
 * 30k msgs/s a 24 h dedupe_ttl alone would be 2.6e9 records). The counts
 * are node-wide atomics; an append that takes one over the cap evicts the
 * oldest records of the shard it has locked (the head of that shard's age
 * list). Under an even load that is close to the globally oldest; a hot
 * shard (one very busy sender: dedupe keys live in the sender's shard)
 * recycles its own records while quiet shards keep theirs until their TTL.
 * A shard never evicts the record it has just inserted, so a count can
 * pass its cap by at most one record per shard (MEM_SHARDS).
 * ~100 bytes a record: about 100 MB per cap at the defaults.
 */
#define MEM_DEFAULT_MAX_DEDUPES 1000000
#define MEM_DEFAULT_MAX_METAS 1000000
/*
 * Per-user records are capped too: a record is made for every user named
 * as a receiver or group member, and one that got a message keeps its
 * max_seq for retention + seq_idle_days after its last use. Past the cap
 * a request that needs a new record is refused (IMGW_EBUSY: the sender
 * gets ERR_SERVER_BUSY, nothing is stored) and counted, rather than
 * evicting a record whose max_seq a client may still hold. ~200 bytes a
 * record with a small ring: about 400 MB at the default.
 */
#define MEM_DEFAULT_MAX_USERS 2000000
#define MEM_MAX_RECORDS ((size_t)1 << 32)
/* Expired dedupe keys / metadata an append removes from the shards it has
 * locked anyway: more than one per insertion, so expiry keeps pace with
 * the insertion rate even if nobody calls tick. */
#define MEM_LAZY_POPS 2
#define MEM_TICK_POPS 1024     /* per shard and table per tick */
#define MEM_TICK_USER_SHARDS 4 /* shards whose users one tick visits */
#define MEM_TICK_BUCKETS 256   /* user buckets per visited shard */
#define MEM_STACK_SLOTS 16     /* appends to <= 16 users use no malloc */
#define MEM_STACK_ENTRIES 32   /* sync pages <= 32 entries use no malloc */

#define MEM_CONTAINER(ptr, type, member)                                       \
    ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

/* ---- types --------------------------------------------------------------- */

/* Intrusive chained-hash node; always the first member of its object. */
typedef struct imgw__mem_hnode_s {
    struct imgw__mem_hnode_s *next;
    uint64_t hash;
} imgw__mem_hnode_t;

typedef struct imgw__mem_htab_s {
    imgw__mem_hnode_t **b;
    size_t mask; /* buckets - 1; buckets is a power of two >= MEM_HTAB_MIN */
    size_t n;    /* nodes */
} imgw__mem_htab_t;

/* Circular doubly linked list with a sentinel head. */
typedef struct imgw__mem_link_s {
    struct imgw__mem_link_s *prev, *next;
} imgw__mem_link_t;

/*
 * Message metadata. The metadata table holds one reference while the
 * message is unexpired, the message's blob holds another, so sync can read
 * revoked through the blob without locking the message's shard.
 */
typedef struct imgw__mem_meta_s {
    imgw__mem_hnode_t h;  /* in shard->metas (shard of the id) */
    imgw__mem_link_t age; /* shard->meta_age, oldest first */
    atomic_uint refs;
    atomic_uchar revoked; /* set under the id's shard lock, read anywhere */
    int64_t expire_ms;    /* under the id's shard lock */
    uint64_t message_id;  /* immutable from here on */
    int64_t server_time_ms;
    const char *conv; /* points into sender[] after its NUL */
    char sender[];
} imgw__mem_meta_t;

/* One append's entry bytes, shared by its timelines (one ref each). */
typedef struct imgw__mem_blob_s {
    atomic_uint refs;
    imgw__mem_meta_t *meta; /* one reference */
    size_t len;
    uint8_t data[];
} imgw__mem_blob_t;

/*
 * A timeline slot. The seq is not stored: a timeline only ever gains
 * entries at its tail (seq = ++max_seq) and loses them at its head, so it
 * always holds the consecutive seqs max_seq - count + 1 .. max_seq.
 */
typedef struct imgw__mem_ent_s {
    int64_t stored_ms; /* store clock at append: retention age */
    imgw__mem_blob_t *blob;
} imgw__mem_ent_t;

typedef struct imgw__mem_route_s {
    int64_t expire_ms;
    char *pb; /* "platform\0broker_id\0", one allocation */
} imgw__mem_route_t;

typedef struct imgw__mem_dev_s {
    uint64_t stamp; /* shard->stamp at last update: LRU order */
    int64_t seq;
    char *device;
} imgw__mem_dev_t;

typedef struct imgw__mem_read_s {
    uint64_t stamp;
    char *cm; /* "conversation_id\0message_id\0", one allocation */
} imgw__mem_read_t;

/* Everything kept per user; all of it under the user's shard lock. */
typedef struct imgw__mem_user_s {
    imgw__mem_hnode_t h;   /* in shard->users */
    int64_t max_seq;       /* never decreases while the timeline holds an
                              entry or the user was used within seq_ttl */
    int64_t touched_ms;    /* last append, sync, max_seq or route refresh */
    uint64_t epoch;        /* id of the message that got seq 1 (store.h);
                              meaningful while max_seq != 0 */
    imgw__mem_ent_t *ring; /* cap slots, count used from head */
    uint32_t cap, head, count;
    uint16_t n_routes, cap_routes;
    uint16_t n_dev, cap_dev;
    uint16_t n_read, cap_read;
    imgw__mem_route_t *routes;
    imgw__mem_dev_t *dev;
    imgw__mem_read_t *reads;
    char id[];
} imgw__mem_user_t;

typedef struct imgw__mem_dedupe_s {
    imgw__mem_hnode_t h;  /* in the sender's shard, hashed on the key */
    imgw__mem_link_t age; /* shard->dedupe_age, oldest first */
    int64_t expire_ms;
    uint64_t message_id;
    int64_t seq; /* the sender's seq of the first append */
    char key[];  /* sender "\0" client_msg_id "\0" */
} imgw__mem_dedupe_t;

/*
 * A group's member list: immutable once published. group_set swaps in a
 * new one; group_get takes a reference and runs its callback on the list
 * without copying 1000 strings and without the lock.
 */
typedef struct imgw__mem_group_s {
    imgw__mem_hnode_t h; /* in shard->groups */
    atomic_uint refs;    /* the table's one + readers' */
    size_t n;
    const char **members;
    char *gid;
} imgw__mem_group_t;

typedef struct imgw__mem_shard_s {
    _Alignas(64) pthread_mutex_t mu; /* a cache line per shard at least */
    imgw__mem_htab_t users, dedupes, metas, groups;
    imgw__mem_link_t dedupe_age, meta_age;
    size_t cursor;  /* next users bucket the tick sweep visits */
    uint64_t stamp; /* LRU clock of delivered/read positions */
} imgw__mem_shard_t;

typedef struct imgw__mem_s {
    imgw__mem_shard_t *shards; /* MEM_SHARDS */
    int retention_count;
    int64_t retention_ms;
    int64_t dedupe_ms;
    int64_t meta_ms;    /* metadata lifetime in the table */
    size_t max_dedupes; /* caps, see MEM_DEFAULT_MAX_DEDUPES */
    size_t max_metas;
    size_t max_users;      /* see MEM_DEFAULT_MAX_USERS */
    int64_t seq_ttl_ms;    /* retention + seq_idle_days: max_seq's lifetime
                              after the record's last use */
    atomic_size_t n_users; /* records in all shards */
    atomic_uint_fast64_t users_refused; /* requests refused at max_users */
    atomic_size_t n_dedupes; /* records in all shards' dedupe tables */
    atomic_size_t n_metas;   /* records in all shards' metadata tables */
    uint64_t seed;
    imgw__store_clock_fn clock;
    void *clock_arg;
    atomic_uint tick_next;    /* shard the next user sweep starts at */
    atomic_size_t blobs_live; /* stats only */
    atomic_size_t metas_live;
} imgw__mem_t;

/* ---- allocation ---------------------------------------------------------- */

/*
 * Every allocation is an imgw_try_* one, so the unit tests can fail the
 * Nth (imgw__store_mem_fail_alloc, base/alloc.c's countdown) and check
 * that a failed request leaves no partial state.
 */
int
imgw__store_mem_fail_alloc(int n)
{
    return imgw__alloc_fail_nth(n);
}

/* ---- clock, hashing ------------------------------------------------------ */

static int64_t
mem_realtime_ms(void *arg)
{
    (void)arg;
    return imgw_clock_wall_ms();
}

static int64_t
mem_now(const imgw__mem_t *m)
{
    return m->clock(m->clock_arg);
}

/* murmur3's finalizer: spreads FNV's weak high bits, which pick shards. */
#define mix64 imgw_hash_fmix64
#define fnv imgw_hash_fnv1a64

/*
 * Seeded per process so hash chains cannot be planned from outside. This
 * is not SipHash: user ids come from verified tokens and group ids from the
 * admin API, so flooding one chain is not something a stranger can do.
 */
static uint64_t
hash_str(const imgw__mem_t *m, const char *s)
{
    return mix64(fnv(m->seed ^ IMGW_HASH_FNV64_BASIS, s, strlen(s)));
}

static uint64_t
hash_dedupe(const imgw__mem_t *m, const char *sender, const char *cmid)
{
    uint64_t h =
        fnv(m->seed ^ IMGW_HASH_FNV64_BASIS, sender, strlen(sender) + 1);
    return mix64(fnv(h, cmid, strlen(cmid)));
}

static uint64_t
hash_id(const imgw__mem_t *m, uint64_t id)
{
    return mix64(id ^ m->seed);
}

static unsigned
shard_of(uint64_t h)
{
    return (unsigned)(h >> (64 - MEM_SHARD_BITS));
}

/* Locks every shard in mask, lowest index first: the one lock order. */
static void
lock_mask(imgw__mem_t *m, uint64_t mask)
{
    while (mask) {
        pthread_mutex_lock(&m->shards[__builtin_ctzll(mask)].mu);
        mask &= mask - 1;
    }
}

static void
unlock_mask(imgw__mem_t *m, uint64_t mask)
{
    while (mask) {
        pthread_mutex_unlock(&m->shards[__builtin_ctzll(mask)].mu);
        mask &= mask - 1;
    }
}

/* ---- hash tables and lists ----------------------------------------------- */

static int
htab_init(imgw__mem_htab_t *t)
{
    t->b = imgw_try_calloc(MEM_HTAB_MIN, sizeof(*t->b));
    t->mask = MEM_HTAB_MIN - 1;
    t->n = 0;
    return t->b ? 0 : IMGW_ENOMEM;
}

/* Rehashes into nb buckets. Failing to allocate only leaves the table
 * more loaded than it should be, so it is not an error. */
static void
htab_resize(imgw__mem_htab_t *t, size_t nb)
{
    imgw__mem_hnode_t **nbk = imgw_try_calloc(nb, sizeof(*nbk));
    if (nbk == NULL)
        return;
    for (size_t i = 0; i <= t->mask; i++) {
        imgw__mem_hnode_t *x = t->b[i], *next;
        for (; x != NULL; x = next) {
            next = x->next;
            x->next = nbk[x->hash & (nb - 1)];
            nbk[x->hash & (nb - 1)] = x;
        }
    }
    imgw_free(t->b);
    t->b = nbk;
    t->mask = nb - 1;
}

static void
htab_insert(imgw__mem_htab_t *t, imgw__mem_hnode_t *x)
{
    imgw__mem_hnode_t **b = &t->b[x->hash & t->mask];
    x->next = *b;
    *b = x;
    if (++t->n > t->mask + 1)
        htab_resize(t, (t->mask + 1) * 2);
}

static void
htab_remove(imgw__mem_htab_t *t, imgw__mem_hnode_t *x)
{
    imgw__mem_hnode_t **pp = &t->b[x->hash & t->mask];
    while (*pp != x)
        pp = &(*pp)->next;
    *pp = x->next;
    t->n--;
}

/* Gives memory back after a burst: down to ~2 nodes per bucket. */
static void
htab_shrink(imgw__mem_htab_t *t)
{
    if (t->mask + 1 <= MEM_HTAB_MIN || t->n * 8 >= t->mask + 1)
        return;
    size_t nb = MEM_HTAB_MIN;
    while (nb < t->n * 2)
        nb *= 2;
    htab_resize(t, nb);
}

static void
link_init(imgw__mem_link_t *l)
{
    l->prev = l->next = l;
}

static void
link_push_tail(imgw__mem_link_t *head, imgw__mem_link_t *l)
{
    l->prev = head->prev;
    l->next = head;
    head->prev->next = l;
    head->prev = l;
}

static void
link_remove(imgw__mem_link_t *l)
{
    l->prev->next = l->next;
    l->next->prev = l->prev;
    l->prev = l->next = l;
}

/* ---- blobs, metadata, dedupe keys ---------------------------------------- */

static void
meta_unref(imgw__mem_t *m, imgw__mem_meta_t *x)
{
    if (atomic_fetch_sub_explicit(&x->refs, 1, memory_order_acq_rel) == 1) {
        atomic_fetch_sub_explicit(&m->metas_live, 1, memory_order_relaxed);
        imgw_free(x);
    }
}

static void
blob_ref(imgw__mem_blob_t *b)
{
    /* Relaxed is enough: the caller already holds a reference (a timeline
     * slot, under its shard lock), so the count cannot reach zero here. */
    atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed);
}

static void
blob_unref(imgw__mem_t *m, imgw__mem_blob_t *b)
{
    if (atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) == 1) {
        meta_unref(m, b->meta);
        atomic_fetch_sub_explicit(&m->blobs_live, 1, memory_order_relaxed);
        imgw_free(b);
    }
}

static imgw__mem_meta_t *
meta_find(imgw__mem_shard_t *sh, uint64_t h, uint64_t id)
{
    for (imgw__mem_hnode_t *x = sh->metas.b[h & sh->metas.mask]; x;
         x = x->next) {
        imgw__mem_meta_t *mt = (imgw__mem_meta_t *)x;
        if (x->hash == h && mt->message_id == id)
            return mt;
    }
    return NULL;
}

static void
meta_drop(imgw__mem_t *m, imgw__mem_shard_t *sh, imgw__mem_meta_t *mt)
{
    link_remove(&mt->age);
    htab_remove(&sh->metas, &mt->h);
    atomic_fetch_sub_explicit(&m->n_metas, 1, memory_order_relaxed);
    meta_unref(m, mt);
}

static void
dedupe_drop(imgw__mem_t *m, imgw__mem_shard_t *sh, imgw__mem_dedupe_t *d)
{
    link_remove(&d->age);
    htab_remove(&sh->dedupes, &d->h);
    atomic_fetch_sub_explicit(&m->n_dedupes, 1, memory_order_relaxed);
    imgw_free(d);
}

static imgw__mem_dedupe_t *
dedupe_find(imgw__mem_shard_t *sh, uint64_t h, const char *key)
{
    for (imgw__mem_hnode_t *x = sh->dedupes.b[h & sh->dedupes.mask]; x;
         x = x->next) {
        imgw__mem_dedupe_t *d = (imgw__mem_dedupe_t *)x;
        /* key holds two NUL-terminated strings: compare both. */
        if (x->hash == h && strcmp(d->key, key) == 0 &&
            strcmp(d->key + strlen(d->key) + 1, key + strlen(key) + 1) == 0)
            return d;
    }
    return NULL;
}

/* Drops up to budget expired entries from the front of each age list.
 * The lists are in insertion order, which is expiry order because each
 * table's TTL is fixed; with a clock that steps back an entry may wait
 * behind a later one, which costs memory for a while, never correctness:
 * lookups check expire_ms themselves. */
static void
dedupe_expire(imgw__mem_t *m, imgw__mem_shard_t *sh, int64_t now, int budget)
{
    while (budget-- > 0 && sh->dedupe_age.next != &sh->dedupe_age) {
        imgw__mem_dedupe_t *d =
            MEM_CONTAINER(sh->dedupe_age.next, imgw__mem_dedupe_t, age);
        if (d->expire_ms > now)
            break;
        dedupe_drop(m, sh, d);
    }
}

static void
meta_expire(imgw__mem_t *m, imgw__mem_shard_t *sh, int64_t now, int budget)
{
    while (budget-- > 0 && sh->meta_age.next != &sh->meta_age) {
        imgw__mem_meta_t *mt =
            MEM_CONTAINER(sh->meta_age.next, imgw__mem_meta_t, age);
        if (mt->expire_ms > now)
            break;
        meta_drop(m, sh, mt);
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
static void
dedupe_evict(imgw__mem_t *m, imgw__mem_shard_t *sh,
             const imgw__mem_dedupe_t *keep)
{
    while (atomic_load_explicit(&m->n_dedupes, memory_order_relaxed) >
               m->max_dedupes &&
           sh->dedupe_age.next != &keep->age)
        dedupe_drop(
            m, sh, MEM_CONTAINER(sh->dedupe_age.next, imgw__mem_dedupe_t, age));
}

static void
meta_evict(imgw__mem_t *m, imgw__mem_shard_t *sh, const imgw__mem_meta_t *keep)
{
    while (atomic_load_explicit(&m->n_metas, memory_order_relaxed) >
               m->max_metas &&
           sh->meta_age.next != &keep->age)
        meta_drop(m, sh,
                  MEM_CONTAINER(sh->meta_age.next, imgw__mem_meta_t, age));
}

/* ---- users and timelines ------------------------------------------------- */

static imgw__mem_user_t *
user_find(imgw__mem_shard_t *sh, uint64_t h, const char *id)
{
    for (imgw__mem_hnode_t *x = sh->users.b[h & sh->users.mask]; x;
         x = x->next) {
        imgw__mem_user_t *u = (imgw__mem_user_t *)x;
        if (x->hash == h && strcmp(u->id, id) == 0)
            return u;
    }
    return NULL;
}

/*
 * Finds or creates the record; NULL with *err = IMGW_ENOMEM, or
 * IMGW_EBUSY when the node holds max_users records already (counted in
 * users_refused). A new record is empty (max_seq 0), which reads exactly
 * like an unknown user, so creating one and then failing later leaves no
 * visible state: the sweep drops it. The count is reserved before the
 * allocation, so concurrent creations on other shards cannot pass the cap.
 */
static imgw__mem_user_t *
user_get(imgw__mem_t *m, imgw__mem_shard_t *sh, uint64_t h, const char *id,
         int64_t now, int *err)
{
    imgw__mem_user_t *u = user_find(sh, h, id);
    if (u != NULL)
        return u;
    if (atomic_fetch_add_explicit(&m->n_users, 1, memory_order_relaxed) >=
        m->max_users) {
        atomic_fetch_sub_explicit(&m->n_users, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&m->users_refused, 1, memory_order_relaxed);
        IMGW_LOG_WARN_RL("store: %zu user records (store.max_users): "
                         "refusing a new one",
                         m->max_users);
        *err = IMGW_EBUSY;
        return NULL;
    }
    size_t len = strlen(id);
    u = imgw_try_calloc(1, sizeof(*u) + len + 1);
    if (u == NULL) {
        atomic_fetch_sub_explicit(&m->n_users, 1, memory_order_relaxed);
        *err = IMGW_ENOMEM;
        return NULL;
    }
    memcpy(u->id, id, len + 1);
    u->h.hash = h;
    u->touched_ms = now;
    htab_insert(&sh->users, &u->h);
    return u;
}

/*
 * The memory twin of IM-SEQ's TTL: a max_seq unused for seq_ttl (longer
 * than retention, so the timeline has aged out by then) is forgotten and
 * the next message starts again at seq 1. Lookups call this before they
 * read max_seq, so a late sweep never shows a counter Redis would have
 * expired. Aged entries must have been dropped first (user_age).
 */
static void
user_seq_expire(const imgw__mem_t *m, imgw__mem_user_t *u, int64_t now)
{
    if (u->count == 0 && u->max_seq != 0 &&
        now - u->touched_ms >= m->seq_ttl_ms)
        u->max_seq = 0;
}

static void
ring_pop(imgw__mem_t *m, imgw__mem_user_t *u)
{
    imgw__mem_blob_t *b = u->ring[u->head].blob;
    u->ring[u->head].blob = NULL;
    u->head = u->head + 1 == u->cap ? 0 : u->head + 1;
    u->count--;
    blob_unref(m, b);
}

/* Moves the ring into ncap (>= count) slots, oldest at index 0. */
static int
ring_realloc(imgw__mem_user_t *u, uint32_t ncap)
{
    imgw__mem_ent_t *r = imgw_try_malloc((size_t)ncap * sizeof(*r));
    if (r == NULL)
        return IMGW_ENOMEM;
    uint32_t j = u->head;
    for (uint32_t i = 0; i < u->count; i++) {
        r[i] = u->ring[j];
        if (++j == u->cap)
            j = 0;
    }
    imgw_free(u->ring);
    u->ring = r;
    u->cap = ncap;
    u->head = 0;
    return 0;
}

/* Makes room for one more entry. At retention_count the append pops the
 * oldest instead, so the ring never exceeds retention_count slots. */
static int
ring_reserve(const imgw__mem_t *m, imgw__mem_user_t *u)
{
    uint32_t max = (uint32_t)m->retention_count;
    if (u->count < u->cap || u->count >= max)
        return 0;
    uint32_t ncap = u->cap ? u->cap * 2 : 4;
    if (ncap > max)
        ncap = max;
    return ring_realloc(u, ncap);
}

/* Gives back a ring that aging has mostly emptied (failure: keep it). */
static void
ring_shrink(imgw__mem_user_t *u)
{
    if (u->count == 0) {
        imgw_free(u->ring);
        u->ring = NULL;
        u->cap = u->head = 0;
    } else if (u->cap > 16 && u->count * 4 <= u->cap) {
        (void)ring_realloc(u, u->count * 2 > 8 ? u->count * 2 : 8);
    }
}

/* Drops entries at least retention_days old. */
static void
user_age(imgw__mem_t *m, imgw__mem_user_t *u, int64_t now)
{
    while (u->count > 0 && now - u->ring[u->head].stored_ms >= m->retention_ms)
        ring_pop(m, u);
}

static void
routes_expire(imgw__mem_user_t *u, int64_t now)
{
    for (uint16_t i = 0; i < u->n_routes;) {
        if (u->routes[i].expire_ms <= now) {
            imgw_free(u->routes[i].pb);
            if (i != --u->n_routes)
                u->routes[i] = u->routes[u->n_routes];
        } else {
            i++;
        }
    }
}

/*
 * Whether the sweep may free the record: nothing retained, no live route,
 * and either nothing at all (it reads like an unknown user) or unused for
 * seq_ttl (its max_seq has expired; its delivered / read positions go with
 * it, as Redis's IM-POS / IM-READ expire retention after their last write).
 */
static int
user_is_free(const imgw__mem_t *m, imgw__mem_user_t *u, int64_t now)
{
    if (u->count > 0 || u->n_routes > 0)
        return 0;
    user_seq_expire(m, u, now);
    if (u->max_seq == 0 && u->n_dev == 0 && u->n_read == 0)
        return 1;
    return now - u->touched_ms >= m->seq_ttl_ms;
}

static void
user_free(imgw__mem_t *m, imgw__mem_user_t *u)
{
    while (u->count > 0)
        ring_pop(m, u);
    imgw_free(u->ring);
    for (uint16_t i = 0; i < u->n_routes; i++)
        imgw_free(u->routes[i].pb);
    for (uint16_t i = 0; i < u->n_dev; i++)
        imgw_free(u->dev[i].device);
    for (uint16_t i = 0; i < u->n_read; i++)
        imgw_free(u->reads[i].cm);
    imgw_free(u->routes);
    imgw_free(u->dev);
    imgw_free(u->reads);
    imgw_free(u);
}

/* Grows a small per-user array by doubling, up to max elements. */
static int
array_grow(void **arr, uint16_t *cap, size_t elsize, uint16_t max)
{
    uint32_t ncap = *cap ? (uint32_t)*cap * 2 : 2;
    if (ncap > max)
        ncap = max;
    void *p = imgw_try_realloc(*arr, ncap * elsize);
    if (p == NULL)
        return IMGW_ENOMEM;
    *arr = p;
    *cap = (uint16_t)ncap;
    return 0;
}

/* Visits up to budget buckets of a shard's users, continuing where the
 * last visit stopped: ages timelines, drops expired routes, shrinks rings,
 * frees records that hold nothing. A table resized between visits may make
 * one pass skip or repeat a few users; the next pass gets them. */
static void
users_sweep(imgw__mem_t *m, imgw__mem_shard_t *sh, int64_t now, int budget)
{
    size_t b = sh->cursor;
    for (; budget > 0 && b <= sh->users.mask; budget--, b++) {
        imgw__mem_hnode_t **pp = &sh->users.b[b];
        while (*pp != NULL) {
            imgw__mem_user_t *u = (imgw__mem_user_t *)*pp;
            user_age(m, u, now);
            routes_expire(u, now);
            ring_shrink(u);
            if (user_is_free(m, u, now)) {
                *pp = u->h.next;
                sh->users.n--;
                atomic_fetch_sub_explicit(&m->n_users, 1, memory_order_relaxed);
                user_free(m, u);
            } else {
                pp = &u->h.next;
            }
        }
    }
    if (b > sh->users.mask) {
        b = 0;
        htab_shrink(&sh->users);
        htab_shrink(&sh->dedupes);
        htab_shrink(&sh->metas);
        htab_shrink(&sh->groups);
    }
    sh->cursor = b;
}

/* ---- open, close, loops, tick -------------------------------------------- */

static void
shards_free(imgw__mem_t *m, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        imgw__mem_shard_t *sh = &m->shards[i];
        imgw__mem_hnode_t *x, *next;
        for (size_t b = 0; sh->users.b && b <= sh->users.mask; b++)
            for (x = sh->users.b[b]; x; x = next) {
                next = x->next;
                user_free(m, (imgw__mem_user_t *)x);
            }
        for (size_t b = 0; sh->dedupes.b && b <= sh->dedupes.mask; b++)
            for (x = sh->dedupes.b[b]; x; x = next) {
                next = x->next;
                imgw_free(x);
            }
        for (size_t b = 0; sh->metas.b && b <= sh->metas.mask; b++)
            for (x = sh->metas.b[b]; x; x = next) {
                next = x->next;
                meta_unref(m, (imgw__mem_meta_t *)x);
            }
        for (size_t b = 0; sh->groups.b && b <= sh->groups.mask; b++)
            for (x = sh->groups.b[b]; x; x = next) {
                next = x->next;
                imgw_free(x); /* no reader can hold one: no loop is left */
            }
        imgw_free(sh->users.b);
        imgw_free(sh->dedupes.b);
        imgw_free(sh->metas.b);
        imgw_free(sh->groups.b);
        pthread_mutex_destroy(&sh->mu);
    }
    imgw_free(m->shards);
}

static int
mem_open(imgw_store_t *s, const imgw_store_cfg_t *cfg, char *err, size_t errlen)
{
    if (cfg->retention_count < 1 ||
        cfg->retention_count > MEM_MAX_RETENTION_COUNT) {
        snprintf(err, errlen, "store: retention_count must be 1..%d",
                 MEM_MAX_RETENTION_COUNT);
        return IMGW_ECONFIG;
    }
    if (cfg->retention_days < 1 ||
        cfg->retention_days > MEM_MAX_RETENTION_DAYS) {
        snprintf(err, errlen, "store: retention_days must be 1..%d",
                 MEM_MAX_RETENTION_DAYS);
        return IMGW_ECONFIG;
    }
    if (cfg->dedupe_ttl < 1 || cfg->dedupe_ttl > MEM_MAX_DEDUPE_TTL) {
        snprintf(err, errlen, "store: dedupe_ttl must be 1..%d",
                 MEM_MAX_DEDUPE_TTL);
        return IMGW_ECONFIG;
    }
    if (cfg->max_dedupes > MEM_MAX_RECORDS ||
        cfg->max_metas > MEM_MAX_RECORDS) {
        snprintf(err, errlen,
                 "store: max_dedupes and max_metas must be "
                 "0..%zu",
                 MEM_MAX_RECORDS);
        return IMGW_ECONFIG;
    }
    if (cfg->meta_ttl < 0 || cfg->meta_ttl > MEM_MAX_RETENTION_DAYS * 86400) {
        snprintf(err, errlen, "store: meta_ttl must be 0..%d",
                 MEM_MAX_RETENTION_DAYS * 86400);
        return IMGW_ECONFIG;
    }
    if (cfg->max_users > MEM_MAX_RECORDS) {
        snprintf(err, errlen, "store: max_users must be 0..%zu",
                 MEM_MAX_RECORDS);
        return IMGW_ECONFIG;
    }
    if (cfg->seq_idle_days < 0 ||
        cfg->seq_idle_days > IMGW__STORE_MAX_SEQ_IDLE_DAYS) {
        snprintf(err, errlen, "store: seq_idle_days must be 1..%d",
                 IMGW__STORE_MAX_SEQ_IDLE_DAYS);
        return IMGW_ECONFIG;
    }
    imgw__mem_t *m = imgw_try_calloc(1, sizeof(*m));
    if (m == NULL)
        return IMGW_ENOMEM;
    m->shards = imgw_try_aligned_alloc(_Alignof(imgw__mem_shard_t),
                                  MEM_SHARDS * sizeof(imgw__mem_shard_t));
    if (m->shards == NULL) {
        imgw_free(m);
        return IMGW_ENOMEM;
    }
    memset(m->shards, 0, MEM_SHARDS * sizeof(imgw__mem_shard_t));
    m->retention_count = cfg->retention_count;
    m->retention_ms = (int64_t)cfg->retention_days * 86400 * 1000;
    m->dedupe_ms = (int64_t)cfg->dedupe_ttl * 1000;
    m->meta_ms =
        cfg->meta_ttl > 0 && (int64_t)cfg->meta_ttl * 1000 < m->retention_ms
            ? (int64_t)cfg->meta_ttl * 1000
            : m->retention_ms;
    size_t max_dd =
        cfg->max_dedupes ? cfg->max_dedupes : MEM_DEFAULT_MAX_DEDUPES;
    size_t max_mt = cfg->max_metas ? cfg->max_metas : MEM_DEFAULT_MAX_METAS;
    m->max_dedupes = max_dd;
    m->max_metas = max_mt;
    m->max_users = cfg->max_users ? cfg->max_users : MEM_DEFAULT_MAX_USERS;
    m->seq_ttl_ms = m->retention_ms +
                    (int64_t)(cfg->seq_idle_days ? cfg->seq_idle_days
                                                 : IMGW__STORE_SEQ_IDLE_DAYS) *
                        86400 * 1000;
    atomic_init(&m->n_users, 0);
    atomic_init(&m->users_refused, 0);
    atomic_init(&m->n_dedupes, 0);
    atomic_init(&m->n_metas, 0);
    m->clock = mem_realtime_ms;
    m->seed = mix64(imgw_clock_mono_ns() ^ (uint64_t)(uintptr_t)m);
    atomic_init(&m->tick_next, 0);
    atomic_init(&m->blobs_live, 0);
    atomic_init(&m->metas_live, 0);
    for (unsigned i = 0; i < MEM_SHARDS; i++) {
        imgw__mem_shard_t *sh = &m->shards[i];
        link_init(&sh->dedupe_age);
        link_init(&sh->meta_age);
        if (pthread_mutex_init(&sh->mu, NULL) != 0) {
            shards_free(m, i);
            imgw_free(m);
            return IMGW_ENOMEM;
        }
        /* Tables that failed keep b == NULL, which shards_free skips. */
        if (htab_init(&sh->users) || htab_init(&sh->dedupes) ||
            htab_init(&sh->metas) || htab_init(&sh->groups)) {
            shards_free(m, i + 1);
            imgw_free(m);
            return IMGW_ENOMEM;
        }
    }
    s->impl = m;
    IMGW_LOG_INFO("store: memory backend, %u shards, retention %d entries "
                  "/ %d days, dedupe %d s (at most %zu), metadata %lld s "
                  "(at most %zu), users at most %zu, max seq kept %lld days "
                  "after last use",
                  MEM_SHARDS, cfg->retention_count, cfg->retention_days,
                  cfg->dedupe_ttl, max_dd, (long long)(m->meta_ms / 1000),
                  max_mt, m->max_users, (long long)(m->seq_ttl_ms / 86400000));
    return 0;
}

static void
mem_close(imgw_store_t *s)
{
    imgw__mem_t *m = s->impl;
    shards_free(m, MEM_SHARDS);
    imgw_free(m);
    s->impl = NULL;
}

static int
mem_loop_open(imgw_store_t *s, int loop_index, uv_loop_t *loop,
              imgw_store_loop_t **out)
{
    /* Nothing per loop: the handle only points at the shared state. */
    imgw_store_loop_t *sl = imgw_try_calloc(1, sizeof(*sl));
    if (sl == NULL)
        return IMGW_ENOMEM;
    sl->store = s;
    sl->be = s->be;
    sl->loop_index = loop_index;
    sl->loop = loop;
    *out = sl;
    return 0;
}

static void
mem_loop_close(imgw_store_loop_t *sl)
{
    imgw_free(sl);
}

static int
mem_loop_ready(imgw_store_loop_t *sl)
{
    (void)sl;
    return 1;
}

/*
 * Bounded housekeeping: every shard's expired dedupe keys and metadata (at
 * most MEM_TICK_POPS each; appends pop more as they go), then the users of
 * MEM_TICK_USER_SHARDS shards, MEM_TICK_BUCKETS buckets each, so one call
 * holds any lock only briefly and a full pass over the users takes
 * MEM_SHARDS / MEM_TICK_USER_SHARDS calls per 256 buckets.
 */
static void
mem_tick(imgw_store_t *s, int64_t now_ms)
{
    imgw__mem_t *m = s->impl;
    for (unsigned i = 0; i < MEM_SHARDS; i++) {
        imgw__mem_shard_t *sh = &m->shards[i];
        pthread_mutex_lock(&sh->mu);
        dedupe_expire(m, sh, now_ms, MEM_TICK_POPS);
        meta_expire(m, sh, now_ms, MEM_TICK_POPS);
        pthread_mutex_unlock(&sh->mu);
    }
    for (unsigned k = 0; k < MEM_TICK_USER_SHARDS; k++) {
        unsigned i =
            atomic_fetch_add_explicit(&m->tick_next, 1, memory_order_relaxed) %
            MEM_SHARDS;
        imgw__mem_shard_t *sh = &m->shards[i];
        pthread_mutex_lock(&sh->mu);
        users_sweep(m, sh, now_ms, MEM_TICK_BUCKETS);
        pthread_mutex_unlock(&sh->mu);
    }
}

/* ---- append -------------------------------------------------------------- */

typedef struct imgw__mem_slot_s {
    uint64_t hash;
    imgw__mem_user_t *u;
} imgw__mem_slot_t;

/*
 * All or nothing. Everything whose size is known up front (blob,
 * metadata, dedupe key, the per-user slot array) is allocated before any
 * lock. Under the locks, the only allocations are a missing user record
 * and a ring growing; neither changes what any reader can see (an empty
 * record reads like an unknown user, a bigger ring holds the same
 * entries), so on ENOMEM we unlock and return with nothing appended. After
 * that point nothing can fail.
 */
static int
mem_append(imgw_store_loop_t *sl, imgw_store_append_t *req,
           imgw_store_append_cb cb, void *data)
{
    imgw__mem_t *m = sl->store->impl;
    size_t n = req->n_users;
    const char *cmid = req->client_msg_id ? req->client_msg_id : "";
    const char *conv = req->conversation_id ? req->conversation_id : "";
    size_t slen = strlen(req->sender), clen = strlen(cmid);
    size_t vlen = strlen(conv);
    imgw__mem_slot_t stack_slots[MEM_STACK_SLOTS], *slots = stack_slots;
    imgw__mem_blob_t *blob = NULL;
    imgw__mem_meta_t *meta = NULL;
    imgw__mem_dedupe_t *dd = NULL;
    int r = IMGW_ENOMEM;

    if (n > MEM_STACK_SLOTS) {
        slots = imgw_try_malloc(n * sizeof(*slots));
        if (slots == NULL)
            return IMGW_ENOMEM;
    }
    blob = imgw_try_malloc(sizeof(*blob) + req->entry_len);
    meta = imgw_try_malloc(sizeof(*meta) + slen + 1 + vlen + 1);
    if (clen > 0)
        dd = imgw_try_malloc(sizeof(*dd) + slen + 1 + clen + 1);
    if (blob == NULL || meta == NULL || (clen > 0 && dd == NULL))
        goto out;

    uint64_t mask = 0;
    for (size_t i = 0; i < n; i++) {
        slots[i].hash = hash_str(m, req->users[i]);
        slots[i].u = NULL;
        mask |= 1ULL << shard_of(slots[i].hash);
    }
    /* The dedupe key lives in the sender's shard (usually locked anyway
     * for users[0]), hashed on the whole key within it. */
    imgw__mem_shard_t *sh_s = &m->shards[shard_of(hash_str(m, req->sender))];
    uint64_t hd = clen > 0 ? hash_dedupe(m, req->sender, cmid) : 0;
    uint64_t hm = hash_id(m, req->message_id);
    imgw__mem_shard_t *sh_m = &m->shards[shard_of(hm)];
    mask |= 1ULL << (sh_s - m->shards);
    mask |= 1ULL << (sh_m - m->shards);

    memcpy(meta->sender, req->sender, slen + 1);
    memcpy(meta->sender + slen + 1, conv, vlen + 1);
    meta->conv = meta->sender + slen + 1;
    meta->message_id = req->message_id;
    meta->server_time_ms = req->server_time_ms;
    atomic_init(&meta->revoked, 0);
    atomic_init(&meta->refs, 2); /* the table and the blob */
    meta->h.hash = hm;
    atomic_init(&blob->refs, (unsigned)n);
    blob->meta = meta;
    blob->len = req->entry_len;
    if (req->entry_len > 0)
        memcpy(blob->data, req->entry, req->entry_len);
    if (dd != NULL) {
        memcpy(dd->key, req->sender, slen + 1);
        memcpy(dd->key + slen + 1, cmid, clen + 1);
        dd->h.hash = hd;
    }

    int64_t now = mem_now(m);
    lock_mask(m, mask);

    imgw__mem_dedupe_t *old_dd = NULL;
    if (dd != NULL) {
        old_dd = dedupe_find(sh_s, hd, dd->key);
        if (old_dd != NULL && old_dd->expire_ms > now) {
            req->duplicate = 1;
            req->dup_message_id = old_dd->message_id;
            req->dup_seq = old_dd->seq;
            unlock_mask(m, mask);
            r = 0; /* accepted: out frees what we prepared, runs cb */
            goto out;
        }
    }
    imgw__mem_meta_t *old_meta = meta_find(sh_m, hm, req->message_id);
    if (old_meta != NULL && old_meta->expire_ms > now) {
        /* Message ids are unique by contract (protocol.md 5); a reuse
         * would make msg_get and revoke ambiguous, so refuse it. */
        unlock_mask(m, mask);
        r = IMGW_EEXIST;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        imgw__mem_shard_t *sh = &m->shards[shard_of(slots[i].hash)];
        imgw__mem_user_t *u =
            user_get(m, sh, slots[i].hash, req->users[i], now, &r);
        if (u == NULL || ring_reserve(m, u) != 0) {
            unlock_mask(m, mask);
            if (u != NULL)
                r = IMGW_ENOMEM;
            goto out;
        }
        slots[i].u = u;
    }

    /* Commit: nothing below can fail. */
    if (old_meta != NULL)
        meta_drop(m, sh_m, old_meta);
    for (size_t i = 0; i < n; i++) {
        imgw__mem_user_t *u = slots[i].u;
        user_age(m, u, now);
        user_seq_expire(m, u, now);
        u->touched_ms = now;
        /* A timeline that starts (again) at seq 1 starts a new epoch; the
         * message id makes it unique and replays of the file backend's
         * journal rebuild the same one. */
        if (u->max_seq == 0)
            u->epoch = req->message_id;
        /* count == cap only if users[] named this user twice (against the
         * contract): drop the oldest rather than overflow. */
        while (u->count >= (uint32_t)m->retention_count || u->count == u->cap)
            ring_pop(m, u);
        imgw__mem_ent_t *e = &u->ring[(u->head + u->count) % u->cap];
        e->stored_ms = now;
        e->blob = blob;
        u->count++;
        req->seqs[i] = ++u->max_seq;
    }
    atomic_fetch_add_explicit(&m->blobs_live, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&m->metas_live, 1, memory_order_relaxed);
    meta->expire_ms = now + m->meta_ms;
    htab_insert(&sh_m->metas, &meta->h);
    link_push_tail(&sh_m->meta_age, &meta->age);
    atomic_fetch_add_explicit(&m->n_metas, 1, memory_order_relaxed);
    meta_evict(m, sh_m, meta);
    if (dd != NULL) {
        if (old_dd != NULL) {
            /* An expired key still in the table: reuse its record. */
            imgw_free(dd);
            dd = old_dd;
            link_remove(&dd->age);
        } else {
            htab_insert(&sh_s->dedupes, &dd->h);
            atomic_fetch_add_explicit(&m->n_dedupes, 1, memory_order_relaxed);
        }
        dd->expire_ms = now + m->dedupe_ms;
        dd->message_id = req->message_id;
        dd->seq = req->seqs[0];
        link_push_tail(&sh_s->dedupe_age, &dd->age);
        dedupe_expire(m, sh_s, now, MEM_LAZY_POPS);
        dedupe_evict(m, sh_s, dd);
    }
    meta_expire(m, sh_m, now, MEM_LAZY_POPS);
    unlock_mask(m, mask);

    if (slots != stack_slots)
        imgw_free(slots);
    cb(req, 0, data);
    return 0;

out:
    imgw_free(blob);
    imgw_free(meta);
    imgw_free(dd);
    if (slots != stack_slots)
        imgw_free(slots);
    if (r == 0)
        cb(req, 0, data);
    return r;
}

/* ---- timelines ----------------------------------------------------------- */

static int
mem_sync(imgw_store_loop_t *sl, const char *user, int64_t min_seq,
         int64_t max_seq, int limit, imgw_store_sync_cb cb, void *data)
{
    imgw__mem_t *m = sl->store->impl;
    uint64_t h = hash_str(m, user);
    imgw__mem_shard_t *sh = &m->shards[shard_of(h)];
    imgw_store_entry_t stack_e[MEM_STACK_ENTRIES], *e = stack_e;
    imgw__mem_blob_t *stack_b[MEM_STACK_ENTRIES], **bl = stack_b;
    int64_t now = mem_now(m);

    pthread_mutex_lock(&sh->mu);
    imgw__mem_user_t *u = user_find(sh, h, user);
    if (u == NULL) {
        pthread_mutex_unlock(&sh->mu);
        cb(0, NULL, 0, 0, 0, 1, 0, data);
        return 0;
    }
    user_age(m, u, now);
    user_seq_expire(m, u, now);
    u->touched_ms = now; /* the client holds seqs: keep max_seq alive */
    int64_t server_max = u->max_seq;
    uint64_t epoch = u->max_seq != 0 ? u->epoch : 0;
    int64_t first = u->max_seq - (int64_t)u->count + 1;
    int64_t hi = max_seq == 0 || max_seq > u->max_seq ? u->max_seq : max_seq;
    int64_t lo = first, avail = 0;
    if (min_seq < hi) { /* so min_seq + 1 cannot overflow */
        lo = min_seq + 1 > first ? min_seq + 1 : first;
        avail = hi >= lo ? hi - lo + 1 : 0;
    }
    size_t k = avail > limit ? (size_t)limit : (size_t)avail;
    int has_more = avail > (int64_t)k;
    if (k > MEM_STACK_ENTRIES) {
        /* Sized under the lock: malloc takes none of ours. */
        e = imgw_try_malloc(k * sizeof(*e));
        bl = imgw_try_malloc(k * sizeof(*bl));
        if (e == NULL || bl == NULL) {
            pthread_mutex_unlock(&sh->mu);
            imgw_free(e);
            imgw_free(bl);
            return IMGW_ENOMEM;
        }
    }
    uint32_t start = (uint32_t)(lo - first);
    for (size_t i = 0; i < k; i++) {
        imgw__mem_blob_t *b = u->ring[(u->head + start + i) % u->cap].blob;
        blob_ref(b);
        bl[i] = b;
        e[i].seq = lo + (int64_t)i;
        e[i].blob = b->data;
        e[i].len = b->len;
        e[i].revoked =
            atomic_load_explicit(&b->meta->revoked, memory_order_relaxed);
    }
    pthread_mutex_unlock(&sh->mu);

    /* The references keep the bytes alive while the callback runs with no
     * lock held, even if a concurrent append trims these entries. */
    cb(0, e, k, has_more, server_max, first, epoch, data);
    for (size_t i = 0; i < k; i++)
        blob_unref(m, bl[i]);
    if (e != stack_e) {
        imgw_free(e);
        imgw_free(bl);
    }
    return 0;
}

static int
mem_dedupe_get(imgw_store_loop_t *sl, const char *sender, const char *cmid,
               imgw_store_dedupe_cb cb, void *data)
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
    imgw__mem_dedupe_t *d = dedupe_find(sh, hd, key);
    if (d != NULL && d->expire_ms > now) {
        st = 0;
        id = d->message_id;
        seq = d->seq;
    }
    pthread_mutex_unlock(&sh->mu);
    cb(st, id, seq, data);
    return 0;
}

static int
mem_max_seq(imgw_store_loop_t *sl, const char *user, imgw_store_seq_cb cb,
            void *data)
{
    imgw__mem_t *m = sl->store->impl;
    uint64_t h = hash_str(m, user);
    imgw__mem_shard_t *sh = &m->shards[shard_of(h)];
    int64_t now = mem_now(m), seq = 0;
    uint64_t epoch = 0;
    pthread_mutex_lock(&sh->mu);
    imgw__mem_user_t *u = user_find(sh, h, user);
    if (u != NULL) {
        /* At auth: the client is about to hold seqs (IM-SEQ's TTL restarts
         * in Redis). */
        user_age(m, u, now);
        user_seq_expire(m, u, now);
        u->touched_ms = now;
        seq = u->max_seq;
        epoch = seq != 0 ? u->epoch : 0;
    }
    pthread_mutex_unlock(&sh->mu);
    cb(0, seq, epoch, data);
    return 0;
}

/* ---- delivered / read positions ------------------------------------------ */

/* Keeps the highest seq per device (acks may arrive out of order); at
 * MEM_MAX_DEVICES the least recently updated device is forgotten. */
static int
mem_set_delivered(imgw_store_loop_t *sl, const char *user, const char *device,
                  int64_t seq, imgw_store_done_cb cb, void *data)
{
    imgw__mem_t *m = sl->store->impl;
    uint64_t h = hash_str(m, user);
    imgw__mem_shard_t *sh = &m->shards[shard_of(h)];
    char *copy = NULL;
    int err = IMGW_ENOMEM;
    int64_t now = mem_now(m);

    pthread_mutex_lock(&sh->mu);
    imgw__mem_user_t *u = user_get(m, sh, h, user, now, &err);
    if (u == NULL)
        goto fail;
    for (uint16_t i = 0; i < u->n_dev; i++)
        if (strcmp(u->dev[i].device, device) == 0) {
            if (seq > u->dev[i].seq)
                u->dev[i].seq = seq;
            u->dev[i].stamp = ++sh->stamp;
            goto done;
        }
    copy = imgw_try_strdup(device);
    if (copy == NULL)
        goto fail;
    uint16_t i;
    if (u->n_dev == MEM_MAX_DEVICES) {
        i = 0;
        for (uint16_t j = 1; j < u->n_dev; j++)
            if (u->dev[j].stamp < u->dev[i].stamp)
                i = j;
        imgw_free(u->dev[i].device);
    } else {
        if (u->n_dev == u->cap_dev &&
            array_grow((void **)&u->dev, &u->cap_dev, sizeof(*u->dev),
                       MEM_MAX_DEVICES) != 0)
            goto fail;
        i = u->n_dev++;
    }
    u->dev[i].device = copy;
    u->dev[i].seq = seq;
    u->dev[i].stamp = ++sh->stamp;
done:
    pthread_mutex_unlock(&sh->mu);
    if (cb)
        cb(0, data);
    return 0;
fail:
    pthread_mutex_unlock(&sh->mu);
    imgw_free(copy);
    return err;
}

/* Keeps the last message id written per conversation; at MEM_MAX_READS
 * the least recently updated conversation is forgotten. */
static int
mem_set_read(imgw_store_loop_t *sl, const char *user,
             const char *conversation_id, const char *message_id,
             imgw_store_done_cb cb, void *data)
{
    imgw__mem_t *m = sl->store->impl;
    uint64_t h = hash_str(m, user);
    imgw__mem_shard_t *sh = &m->shards[shard_of(h)];
    size_t clen = strlen(conversation_id), mlen = strlen(message_id);
    char *cm = imgw_try_malloc(clen + 1 + mlen + 1);
    if (cm == NULL)
        return IMGW_ENOMEM;
    memcpy(cm, conversation_id, clen + 1);
    memcpy(cm + clen + 1, message_id, mlen + 1);
    int err = IMGW_ENOMEM;
    int64_t now = mem_now(m);

    pthread_mutex_lock(&sh->mu);
    imgw__mem_user_t *u = user_get(m, sh, h, user, now, &err);
    if (u == NULL)
        goto fail;
    uint16_t i;
    for (i = 0; i < u->n_read; i++)
        if (strcmp(u->reads[i].cm, conversation_id) == 0)
            break;
    if (i < u->n_read) {
        imgw_free(u->reads[i].cm);
    } else if (u->n_read == MEM_MAX_READS) {
        i = 0;
        for (uint16_t j = 1; j < u->n_read; j++)
            if (u->reads[j].stamp < u->reads[i].stamp)
                i = j;
        imgw_free(u->reads[i].cm);
    } else {
        if (u->n_read == u->cap_read &&
            array_grow((void **)&u->reads, &u->cap_read, sizeof(*u->reads),
                       MEM_MAX_READS) != 0)
            goto fail;
        i = u->n_read++;
    }
    u->reads[i].cm = cm;
    u->reads[i].stamp = ++sh->stamp;
    pthread_mutex_unlock(&sh->mu);
    if (cb)
        cb(0, data);
    return 0;
fail:
    pthread_mutex_unlock(&sh->mu);
    imgw_free(cm);
    return err;
}

/* ---- messages ------------------------------------------------------------ */

static int
mem_msg_get(imgw_store_loop_t *sl, uint64_t message_id, imgw_store_msg_cb cb,
            void *data)
{
    imgw__mem_t *m = sl->store->impl;
    uint64_t h = hash_id(m, message_id);
    imgw__mem_shard_t *sh = &m->shards[shard_of(h)];
    char sender[IMGW__STORE_ID_MAX + 1], conv[IMGW__STORE_CONV_MAX + 1];
    imgw_store_msg_t msg;
    int64_t now = mem_now(m);

    pthread_mutex_lock(&sh->mu);
    imgw__mem_meta_t *mt = meta_find(sh, h, message_id);
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

static int
mem_revoke(imgw_store_loop_t *sl, uint64_t message_id, imgw_store_done_cb cb,
           void *data)
{
    imgw__mem_t *m = sl->store->impl;
    uint64_t h = hash_id(m, message_id);
    imgw__mem_shard_t *sh = &m->shards[shard_of(h)];
    int64_t now = mem_now(m);
    int status = 0;

    pthread_mutex_lock(&sh->mu);
    imgw__mem_meta_t *mt = meta_find(sh, h, message_id);
    if (mt == NULL || mt->expire_ms <= now)
        status = IMGW_ENOTFOUND;
    else
        atomic_store_explicit(&mt->revoked, 1, memory_order_relaxed);
    pthread_mutex_unlock(&sh->mu);
    if (cb)
        cb(status, data);
    return 0;
}

/* ---- groups -------------------------------------------------------------- */

static imgw__mem_group_t *
group_find(imgw__mem_shard_t *sh, uint64_t h, const char *gid)
{
    for (imgw__mem_hnode_t *x = sh->groups.b[h & sh->groups.mask]; x;
         x = x->next) {
        imgw__mem_group_t *g = (imgw__mem_group_t *)x;
        if (x->hash == h && strcmp(g->gid, gid) == 0)
            return g;
    }
    return NULL;
}

static void
group_unref(imgw__mem_group_t *g)
{
    if (atomic_fetch_sub_explicit(&g->refs, 1, memory_order_acq_rel) == 1)
        imgw_free(g);
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
static imgw__mem_group_t *
group_build(const char *gid, const char *const *members, size_t n)
{
    imgw__mem_sortkey_t *keys = imgw_try_malloc(n * sizeof(*keys));
    unsigned char *keep = imgw_try_calloc(n, 1);
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
    g = imgw_try_malloc(sizeof(*g) + kept * sizeof(char *) + bytes);
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
    imgw_free(keys);
    imgw_free(keep);
    return g;
}

/* An empty member list removes the group: in Redis an empty set does not
 * exist, and both backends must answer group_get the same way. */
static int
mem_group_set(imgw_store_loop_t *sl, const char *gid,
              const char *const *members, size_t n, imgw_store_done_cb cb,
              void *data)
{
    imgw__mem_t *m = sl->store->impl;
    uint64_t h = hash_str(m, gid);
    imgw__mem_shard_t *sh = &m->shards[shard_of(h)];
    imgw__mem_group_t *g = NULL;
    if (n > 0) {
        g = group_build(gid, members, n);
        if (g == NULL)
            return IMGW_ENOMEM;
        g->h.hash = h;
    }
    pthread_mutex_lock(&sh->mu);
    imgw__mem_group_t *old = group_find(sh, h, gid);
    if (old != NULL)
        htab_remove(&sh->groups, &old->h);
    if (g != NULL)
        htab_insert(&sh->groups, &g->h);
    pthread_mutex_unlock(&sh->mu);
    if (old != NULL)
        group_unref(old); /* readers in a callback may still hold it */
    if (cb)
        cb(0, data);
    return 0;
}

static int
mem_group_get(imgw_store_loop_t *sl, const char *gid, imgw_store_members_cb cb,
              void *data)
{
    imgw__mem_t *m = sl->store->impl;
    uint64_t h = hash_str(m, gid);
    imgw__mem_shard_t *sh = &m->shards[shard_of(h)];
    pthread_mutex_lock(&sh->mu);
    imgw__mem_group_t *g = group_find(sh, h, gid);
    if (g != NULL)
        atomic_fetch_add_explicit(&g->refs, 1, memory_order_relaxed);
    pthread_mutex_unlock(&sh->mu);
    if (g == NULL) {
        cb(IMGW_ENOTFOUND, NULL, 0, data);
        return 0;
    }
    cb(0, g->members, g->n, data);
    group_unref(g);
    return 0;
}

static int
mem_group_del(imgw_store_loop_t *sl, const char *gid, imgw_store_done_cb cb,
              void *data)
{
    imgw__mem_t *m = sl->store->impl;
    uint64_t h = hash_str(m, gid);
    imgw__mem_shard_t *sh = &m->shards[shard_of(h)];
    pthread_mutex_lock(&sh->mu);
    imgw__mem_group_t *g = group_find(sh, h, gid);
    if (g != NULL)
        htab_remove(&sh->groups, &g->h);
    pthread_mutex_unlock(&sh->mu);
    if (g != NULL)
        group_unref(g);
    if (cb)
        cb(g ? 0 : IMGW_ENOTFOUND, data);
    return 0;
}

/* ---- routes -------------------------------------------------------------- */

/*
 * Each platform has its own expiry (a dead node's route expires even while
 * the user's other platforms keep refreshing). At IMGW_STORE_MAX_ROUTES
 * platforms a new one replaces the one that would expire first.
 */
static int
mem_route_set(imgw_store_loop_t *sl, const char *user, const char *platform,
              const char *broker_id, int ttl, imgw_store_done_cb cb, void *data)
{
    imgw__mem_t *m = sl->store->impl;
    uint64_t h = hash_str(m, user);
    imgw__mem_shard_t *sh = &m->shards[shard_of(h)];
    size_t plen = strlen(platform), blen = strlen(broker_id);
    char *pb = imgw_try_malloc(plen + 1 + blen + 1);
    if (pb == NULL)
        return IMGW_ENOMEM;
    memcpy(pb, platform, plen + 1);
    memcpy(pb + plen + 1, broker_id, blen + 1);
    int64_t now = mem_now(m);
    int err = IMGW_ENOMEM;

    pthread_mutex_lock(&sh->mu);
    imgw__mem_user_t *u = user_get(m, sh, h, user, now, &err);
    if (u == NULL)
        goto fail;
    routes_expire(u, now);
    uint16_t i;
    for (i = 0; i < u->n_routes; i++)
        if (strcmp(u->routes[i].pb, platform) == 0)
            break;
    if (i < u->n_routes) {
        imgw_free(u->routes[i].pb);
    } else if (u->n_routes == IMGW_STORE_MAX_ROUTES) {
        i = 0;
        for (uint16_t j = 1; j < u->n_routes; j++)
            if (u->routes[j].expire_ms < u->routes[i].expire_ms)
                i = j;
        imgw_free(u->routes[i].pb);
    } else {
        if (u->n_routes == u->cap_routes &&
            array_grow((void **)&u->routes, &u->cap_routes, sizeof(*u->routes),
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
    imgw_free(pb);
    return err;
}

/* Status 0 whether or not a field was deleted: a route that moved to
 * another node (or expired) is simply not ours to delete. */
static int
mem_route_del(imgw_store_loop_t *sl, const char *user, const char *platform,
              const char *broker_id, imgw_store_done_cb cb, void *data)
{
    imgw__mem_t *m = sl->store->impl;
    uint64_t h = hash_str(m, user);
    imgw__mem_shard_t *sh = &m->shards[shard_of(h)];
    int64_t now = mem_now(m);

    pthread_mutex_lock(&sh->mu);
    imgw__mem_user_t *u = user_find(sh, h, user);
    if (u != NULL) {
        routes_expire(u, now);
        for (uint16_t i = 0; i < u->n_routes; i++) {
            const char *pb = u->routes[i].pb;
            if (strcmp(pb, platform) == 0) {
                if (strcmp(pb + strlen(pb) + 1, broker_id) == 0) {
                    imgw_free(u->routes[i].pb);
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

static int
mem_route_refresh(imgw_store_loop_t *sl, const char *user, int ttl,
                  imgw_store_done_cb cb, void *data)
{
    imgw__mem_t *m = sl->store->impl;
    uint64_t h = hash_str(m, user);
    imgw__mem_shard_t *sh = &m->shards[shard_of(h)];
    int64_t now = mem_now(m);

    pthread_mutex_lock(&sh->mu);
    imgw__mem_user_t *u = user_find(sh, h, user);
    if (u != NULL) {
        /* Expired routes stay dead: refreshing must not resurrect a
         * route whose node stopped refreshing it. */
        routes_expire(u, now);
        for (uint16_t i = 0; i < u->n_routes; i++)
            u->routes[i].expire_ms = now + (int64_t)ttl * 1000;
        /* Heartbeats of an online client keep its max_seq alive (Redis:
         * the same script refreshes IM-SEQ's TTL), unless it has expired
         * already: then there is nothing to keep. */
        user_age(m, u, now);
        user_seq_expire(m, u, now);
        u->touched_ms = now;
    }
    pthread_mutex_unlock(&sh->mu);
    if (cb)
        cb(0, data);
    return 0;
}

static int
mem_route_get(imgw_store_loop_t *sl, const char *user, imgw_store_routes_cb cb,
              void *data)
{
    imgw__mem_t *m = sl->store->impl;
    uint64_t h = hash_str(m, user);
    imgw__mem_shard_t *sh = &m->shards[shard_of(h)];
    char buf[IMGW_STORE_MAX_ROUTES][2][IMGW__STORE_ID_MAX + 1];
    imgw_store_route_t r[IMGW_STORE_MAX_ROUTES];
    size_t n = 0;
    int64_t now = mem_now(m);

    pthread_mutex_lock(&sh->mu);
    imgw__mem_user_t *u = user_find(sh, h, user);
    if (u != NULL) {
        routes_expire(u, now);
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

static int
mem_stats(imgw_store_t *s, imgw_store_stats_t *out)
{
    imgw__mem_t *m = s->impl;
    out->users = atomic_load_explicit(&m->n_users, memory_order_relaxed);
    out->max_users = m->max_users;
    out->users_refused =
        atomic_load_explicit(&m->users_refused, memory_order_relaxed);
    return 0;
}

/* ---- the table ----------------------------------------------------------- */

const imgw_store_backend_t imgw__store_memory = {
    .name = "memory",
    .open = mem_open,
    .close = mem_close,
    .loop_open = mem_loop_open,
    .loop_close = mem_loop_close,
    .loop_ready = mem_loop_ready,
    .tick = mem_tick,
    .stats = mem_stats,
    .append = mem_append,
    .sync = mem_sync,
    .max_seq = mem_max_seq,
    .dedupe_get = mem_dedupe_get,
    .set_delivered = mem_set_delivered,
    .set_read = mem_set_read,
    .msg_get = mem_msg_get,
    .revoke = mem_revoke,
    .group_set = mem_group_set,
    .group_get = mem_group_get,
    .group_del = mem_group_del,
    .route_set = mem_route_set,
    .route_del = mem_route_del,
    .route_refresh = mem_route_refresh,
    .route_get = mem_route_get,
};

/* ---- snapshots (the file backend, file.c) -------------------------------- */

/*
 * A snapshot is a stream of records (rec.h) that rebuilds the live state in
 * an empty memory backend: metadata and blobs once each, numbered in the
 * order they are first met (blobs are shared by timelines in different
 * shards, metadata by a blob and the table), then per shard the metadata
 * table and the dedupe keys in age order, the groups, and each user with
 * its max_seq, positions and timeline slots. Routes are not durable.
 *
 * The caller (file.c) holds its journal lock, so no request that creates a
 * blob or metadata runs meanwhile; requests that only drop state (expiry,
 * aging in sync, the tick) still may, and shards are visited one lock at a
 * time. A pointer already numbered therefore still is the object that was
 * numbered: nothing new can be allocated at a freed blob's address until
 * the lock is released. The snapshot may thus miss records that expired
 * while it ran, never show a state that did not exist.
 */

typedef struct imgw__mem_pmap_s {
    const void **k;
    uint32_t *v;
    size_t mask, n;
} imgw__mem_pmap_t;

static uint64_t
pmap_hash(const void *p)
{
    return mix64((uint64_t)(uintptr_t)p);
}

/* Returns the slot of p (k[slot] == p, or NULL when absent). */
static size_t
pmap_slot(const imgw__mem_pmap_t *pm, const void *p)
{
    size_t i = pmap_hash(p) & pm->mask;
    while (pm->k[i] != NULL && pm->k[i] != p)
        i = (i + 1) & pm->mask;
    return i;
}

static int
pmap_grow(imgw__mem_pmap_t *pm)
{
    size_t nb = pm->k ? (pm->mask + 1) * 2 : 1024;
    imgw__mem_pmap_t nm = {imgw_try_calloc(nb, sizeof(void *)),
                           imgw_try_malloc(nb * sizeof(uint32_t)), nb - 1, 0};
    if (nm.k == NULL || nm.v == NULL) {
        imgw_free(nm.k);
        imgw_free(nm.v);
        return IMGW_ENOMEM;
    }
    for (size_t i = 0; pm->k && i <= pm->mask; i++)
        if (pm->k[i] != NULL) {
            size_t j = pmap_slot(&nm, pm->k[i]);
            nm.k[j] = pm->k[i];
            nm.v[j] = pm->v[i];
            nm.n++;
        }
    imgw_free(pm->k);
    imgw_free(pm->v);
    *pm = nm;
    return 0;
}

typedef struct imgw__mem_dump_s {
    imgw__rec_buf_t *out;
    imgw__mem_pmap_t map; /* metadata and blob pointers -> number */
    uint32_t n_metas, n_blobs;
} imgw__mem_dump_t;

/* Number of the metadata / blob p; emits its record the first time.
 * UINT32_MAX on ENOMEM (out->err is set then too). */
static uint32_t
dump_ref(imgw__mem_dump_t *d, const void *p, int is_blob)
{
    if (d->map.k == NULL || (d->map.n + 1) * 2 > d->map.mask + 1)
        if (pmap_grow(&d->map) != 0) {
            d->out->err = IMGW_ENOMEM;
            return UINT32_MAX;
        }
    size_t i = pmap_slot(&d->map, p);
    if (d->map.k[i] != NULL)
        return d->map.v[i];
    uint32_t num;
    if (is_blob) {
        const imgw__mem_blob_t *b = p;
        uint32_t mnum = dump_ref(d, b->meta, 0);
        i = pmap_slot(&d->map, p); /* the map may have grown */
        num = d->n_blobs++;
        size_t at = imgw__rec_begin(d->out, IMGW__REC_S_BLOB);
        imgw__rec_put_u32(d->out, num);
        imgw__rec_put_u32(d->out, mnum);
        imgw__rec_put_bytes(d->out, b->data, b->len);
        imgw__rec_end(d->out, at);
    } else {
        const imgw__mem_meta_t *mt = p;
        num = d->n_metas++;
        size_t at = imgw__rec_begin(d->out, IMGW__REC_S_META);
        imgw__rec_put_u32(d->out, num);
        imgw__rec_put_u64(d->out, mt->message_id);
        imgw__rec_put_u64(d->out, (uint64_t)mt->server_time_ms);
        imgw__rec_put_u8(
            d->out, atomic_load_explicit(&mt->revoked, memory_order_relaxed));
        imgw__rec_put_str(d->out, mt->sender);
        imgw__rec_put_str(d->out, mt->conv);
        imgw__rec_end(d->out, at);
    }
    d->map.k[i] = p;
    d->map.v[i] = num;
    d->map.n++;
    return num;
}

#define MEM_DUMP_CHUNK 1024 /* timeline slots per S_ENTRIES record */

static void
dump_user(imgw__mem_dump_t *d, const imgw__mem_user_t *u)
{
    imgw__rec_buf_t *o = d->out;
    size_t at = imgw__rec_begin(o, IMGW__REC_S_USER);
    imgw__rec_put_str(o, u->id);
    imgw__rec_put_u64(o, (uint64_t)u->max_seq);
    /* The last use, so max_seq's idle expiry (seq_ttl) counts from the
     * same moment after a restart as it would have without one. */
    imgw__rec_put_u64(o, (uint64_t)u->touched_ms);
    imgw__rec_put_u16(o, u->n_dev);
    for (uint16_t i = 0; i < u->n_dev; i++) {
        imgw__rec_put_str(o, u->dev[i].device);
        imgw__rec_put_u64(o, (uint64_t)u->dev[i].seq);
        imgw__rec_put_u64(o, u->dev[i].stamp);
    }
    imgw__rec_put_u16(o, u->n_read);
    for (uint16_t i = 0; i < u->n_read; i++) {
        const char *cm = u->reads[i].cm;
        imgw__rec_put_str(o, cm);
        imgw__rec_put_str(o, cm + strlen(cm) + 1);
        imgw__rec_put_u64(o, u->reads[i].stamp);
    }
    /* Last, so a snapshot written before epochs existed still loads (its
     * users read epoch 0). */
    imgw__rec_put_u64(o, u->epoch);
    imgw__rec_end(o, at);
    uint32_t nums[MEM_DUMP_CHUNK];
    for (uint32_t done = 0; done < u->count && !o->err;) {
        uint32_t k = u->count - done < MEM_DUMP_CHUNK ? u->count - done
                                                      : MEM_DUMP_CHUNK;
        /* Blob and metadata records first: a record cannot nest. */
        for (uint32_t i = 0; i < k; i++)
            nums[i] =
                dump_ref(d, u->ring[(u->head + done + i) % u->cap].blob, 1);
        at = imgw__rec_begin(o, IMGW__REC_S_ENTRIES);
        imgw__rec_put_u32(o, k);
        for (uint32_t i = 0; i < k; i++) {
            imgw__rec_put_u32(o, nums[i]);
            imgw__rec_put_u64(
                o, (uint64_t)u->ring[(u->head + done + i) % u->cap].stored_ms);
        }
        imgw__rec_end(o, at);
        done += k;
    }
}

static void
dump_shard(imgw__mem_dump_t *d, imgw__mem_shard_t *sh)
{
    imgw__rec_buf_t *o = d->out;
    for (imgw__mem_link_t *l = sh->meta_age.next; l != &sh->meta_age && !o->err;
         l = l->next) {
        imgw__mem_meta_t *mt = MEM_CONTAINER(l, imgw__mem_meta_t, age);
        uint32_t num = dump_ref(d, mt, 0);
        size_t at = imgw__rec_begin(o, IMGW__REC_S_META_TABLE);
        imgw__rec_put_u32(o, num);
        imgw__rec_put_u64(o, (uint64_t)mt->expire_ms);
        imgw__rec_end(o, at);
    }
    for (imgw__mem_link_t *l = sh->dedupe_age.next;
         l != &sh->dedupe_age && !o->err; l = l->next) {
        imgw__mem_dedupe_t *dd = MEM_CONTAINER(l, imgw__mem_dedupe_t, age);
        size_t at = imgw__rec_begin(o, IMGW__REC_S_DEDUPE);
        imgw__rec_put_u64(o, (uint64_t)dd->expire_ms);
        imgw__rec_put_u64(o, dd->message_id);
        imgw__rec_put_u64(o, (uint64_t)dd->seq);
        imgw__rec_put_str(o, dd->key);
        imgw__rec_put_str(o, dd->key + strlen(dd->key) + 1);
        imgw__rec_end(o, at);
    }
    for (size_t b = 0; b <= sh->groups.mask && !o->err; b++)
        for (imgw__mem_hnode_t *x = sh->groups.b[b]; x; x = x->next) {
            imgw__mem_group_t *g = (imgw__mem_group_t *)x;
            size_t at = imgw__rec_begin(o, IMGW__REC_S_GROUP);
            imgw__rec_put_str(o, g->gid);
            imgw__rec_put_u16(o, (uint16_t)g->n);
            for (size_t i = 0; i < g->n; i++)
                imgw__rec_put_str(o, g->members[i]);
            imgw__rec_end(o, at);
        }
    for (size_t b = 0; b <= sh->users.mask && !o->err; b++)
        for (imgw__mem_hnode_t *x = sh->users.b[b]; x; x = x->next) {
            imgw__mem_user_t *u = (imgw__mem_user_t *)x;
            if (u->max_seq != 0 || u->n_dev != 0 || u->n_read != 0)
                dump_user(d, u);
        }
}

int
imgw__store_mem_dump(imgw_store_t *s, imgw__rec_buf_t *out)
{
    if (s == NULL || s->be != &imgw__store_memory || out == NULL)
        return IMGW_EINVAL;
    imgw__mem_t *m = s->impl;
    imgw__mem_dump_t d = {.out = out};
    for (unsigned i = 0; i < MEM_SHARDS && !out->err; i++) {
        imgw__mem_shard_t *sh = &m->shards[i];
        pthread_mutex_lock(&sh->mu);
        dump_shard(&d, sh);
        pthread_mutex_unlock(&sh->mu);
    }
    imgw_free(d.map.k);
    imgw_free(d.map.v);
    return out->err;
}

/*
 * The loader holds one reference to every metadata and blob it created
 * (so a malformed snapshot leaks nothing: load_end drops them all) and
 * the user the next S_ENTRIES belong to. It runs before any loop exists,
 * so it takes the shard locks only to keep the lock discipline uniform.
 */
struct imgw__store_mem_loader_s {
    imgw__mem_t *m;
    imgw__mem_meta_t **metas;
    imgw__mem_blob_t **blobs;
    size_t n_metas, cap_metas, n_blobs, cap_blobs;
    imgw__mem_user_t *cur;
    uint64_t max_id;
};

imgw__store_mem_loader_t *
imgw__store_mem_load_begin(imgw_store_t *s)
{
    if (s == NULL || s->be != &imgw__store_memory)
        return NULL;
    imgw__store_mem_loader_t *ld = imgw_try_calloc(1, sizeof(*ld));
    if (ld != NULL)
        ld->m = s->impl;
    return ld;
}

static int
load_push(void ***arr, size_t *n, size_t *cap, void *x)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 1024;
        void **q = imgw_try_realloc(*arr, nc * sizeof(*q));
        if (q == NULL)
            return IMGW_ENOMEM;
        *arr = q;
        *cap = nc;
    }
    (*arr)[(*n)++] = x;
    return 0;
}

static int
load_meta(imgw__store_mem_loader_t *ld, imgw__rec_rd_t *r)
{
    uint32_t num = imgw__rec_get_u32(r);
    uint64_t id = imgw__rec_get_u64(r);
    int64_t st = (int64_t)imgw__rec_get_u64(r);
    uint8_t revoked = imgw__rec_get_u8(r);
    const char *sender = imgw__rec_get_str(r);
    const char *conv = imgw__rec_get_str(r);
    if (r->err || num != ld->n_metas)
        return IMGW_EPROTO;
    size_t slen = strlen(sender), vlen = strlen(conv);
    imgw__mem_meta_t *mt = imgw_try_malloc(sizeof(*mt) + slen + 1 + vlen + 1);
    if (mt == NULL)
        return IMGW_ENOMEM;
    memset(mt, 0, sizeof(*mt));
    memcpy(mt->sender, sender, slen + 1);
    memcpy(mt->sender + slen + 1, conv, vlen + 1);
    mt->conv = mt->sender + slen + 1;
    mt->message_id = id;
    mt->server_time_ms = st;
    atomic_init(&mt->revoked, revoked ? 1 : 0);
    atomic_init(&mt->refs, 1); /* the loader's */
    link_init(&mt->age);
    mt->h.hash = hash_id(ld->m, id);
    if (load_push((void ***)&ld->metas, &ld->n_metas, &ld->cap_metas, mt)) {
        imgw_free(mt);
        return IMGW_ENOMEM;
    }
    atomic_fetch_add_explicit(&ld->m->metas_live, 1, memory_order_relaxed);
    if (id > ld->max_id)
        ld->max_id = id;
    return 0;
}

static int
load_meta_table(imgw__store_mem_loader_t *ld, imgw__rec_rd_t *r)
{
    uint32_t num = imgw__rec_get_u32(r);
    int64_t expire = (int64_t)imgw__rec_get_u64(r);
    if (r->err || num >= ld->n_metas)
        return IMGW_EPROTO;
    imgw__mem_t *m = ld->m;
    imgw__mem_meta_t *mt = ld->metas[num];
    imgw__mem_shard_t *sh = &m->shards[shard_of(mt->h.hash)];
    pthread_mutex_lock(&sh->mu);
    if (mt->age.next == &mt->age &&
        meta_find(sh, mt->h.hash, mt->message_id) == NULL) {
        mt->expire_ms = expire;
        atomic_fetch_add_explicit(&mt->refs, 1, memory_order_relaxed);
        htab_insert(&sh->metas, &mt->h);
        link_push_tail(&sh->meta_age, &mt->age);
        atomic_fetch_add_explicit(&m->n_metas, 1, memory_order_relaxed);
    }
    pthread_mutex_unlock(&sh->mu);
    return 0;
}

static int
load_blob(imgw__store_mem_loader_t *ld, imgw__rec_rd_t *r)
{
    uint32_t num = imgw__rec_get_u32(r);
    uint32_t mnum = imgw__rec_get_u32(r);
    size_t len;
    const uint8_t *data = imgw__rec_get_bytes(r, &len);
    if (r->err || num != ld->n_blobs || mnum >= ld->n_metas)
        return IMGW_EPROTO;
    imgw__mem_blob_t *b = imgw_try_malloc(sizeof(*b) + len);
    if (b == NULL)
        return IMGW_ENOMEM;
    atomic_init(&b->refs, 1); /* the loader's */
    b->meta = ld->metas[mnum];
    b->len = len;
    if (len > 0)
        memcpy(b->data, data, len);
    if (load_push((void ***)&ld->blobs, &ld->n_blobs, &ld->cap_blobs, b)) {
        imgw_free(b);
        return IMGW_ENOMEM;
    }
    atomic_fetch_add_explicit(&b->meta->refs, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&ld->m->blobs_live, 1, memory_order_relaxed);
    return 0;
}

static int
load_dedupe(imgw__store_mem_loader_t *ld, imgw__rec_rd_t *r)
{
    int64_t expire = (int64_t)imgw__rec_get_u64(r);
    uint64_t id = imgw__rec_get_u64(r);
    int64_t seq = (int64_t)imgw__rec_get_u64(r);
    const char *sender = imgw__rec_get_str(r);
    const char *cmid = imgw__rec_get_str(r);
    if (r->err || !sender[0] || !cmid[0])
        return IMGW_EPROTO;
    imgw__mem_t *m = ld->m;
    size_t slen = strlen(sender), clen = strlen(cmid);
    imgw__mem_dedupe_t *dd = imgw_try_malloc(sizeof(*dd) + slen + 1 + clen + 1);
    if (dd == NULL)
        return IMGW_ENOMEM;
    memcpy(dd->key, sender, slen + 1);
    memcpy(dd->key + slen + 1, cmid, clen + 1);
    dd->h.hash = hash_dedupe(m, sender, cmid);
    dd->expire_ms = expire;
    dd->message_id = id;
    dd->seq = seq;
    imgw__mem_shard_t *sh = &m->shards[shard_of(hash_str(m, sender))];
    pthread_mutex_lock(&sh->mu);
    if (dedupe_find(sh, dd->h.hash, dd->key) != NULL) {
        pthread_mutex_unlock(&sh->mu);
        imgw_free(dd);
        return 0;
    }
    htab_insert(&sh->dedupes, &dd->h);
    link_push_tail(&sh->dedupe_age, &dd->age);
    atomic_fetch_add_explicit(&m->n_dedupes, 1, memory_order_relaxed);
    pthread_mutex_unlock(&sh->mu);
    return 0;
}

static int
load_group(imgw__store_mem_loader_t *ld, imgw__rec_rd_t *r)
{
    const char *gid = imgw__rec_get_str(r);
    uint16_t n = imgw__rec_get_u16(r);
    if (r->err || !gid[0] || n == 0 || n > IMGW_STORE_MAX_GROUP)
        return IMGW_EPROTO;
    const char *members[IMGW_STORE_MAX_GROUP];
    for (uint16_t i = 0; i < n; i++)
        members[i] = imgw__rec_get_str(r);
    if (r->err)
        return IMGW_EPROTO;
    imgw__mem_group_t *g = group_build(gid, members, n);
    if (g == NULL)
        return IMGW_ENOMEM;
    imgw__mem_t *m = ld->m;
    g->h.hash = hash_str(m, gid);
    imgw__mem_shard_t *sh = &m->shards[shard_of(g->h.hash)];
    pthread_mutex_lock(&sh->mu);
    imgw__mem_group_t *old = group_find(sh, g->h.hash, gid);
    if (old != NULL)
        htab_remove(&sh->groups, &old->h);
    htab_insert(&sh->groups, &g->h);
    pthread_mutex_unlock(&sh->mu);
    if (old != NULL)
        group_unref(old);
    return 0;
}

static int
load_user(imgw__store_mem_loader_t *ld, imgw__rec_rd_t *r)
{
    imgw__mem_t *m = ld->m;
    const char *id = imgw__rec_get_str(r);
    int64_t max_seq = (int64_t)imgw__rec_get_u64(r);
    int64_t touched = (int64_t)imgw__rec_get_u64(r);
    if (r->err || !id[0] || max_seq < 0)
        return IMGW_EPROTO;
    uint64_t h = hash_str(m, id);
    imgw__mem_shard_t *sh = &m->shards[shard_of(h)];
    int rc = 0;
    pthread_mutex_lock(&sh->mu);
    imgw__mem_user_t *u = user_get(m, sh, h, id, touched, &rc);
    if (u == NULL)
        goto out;
    if (u->max_seq != 0 || u->count != 0) {
        rc = IMGW_EPROTO; /* a user twice */
        goto out;
    }
    u->max_seq = max_seq;
    uint16_t nd = imgw__rec_get_u16(r);
    for (uint16_t i = 0; i < nd && !r->err; i++) {
        const char *dev = imgw__rec_get_str(r);
        int64_t seq = (int64_t)imgw__rec_get_u64(r);
        uint64_t stamp = imgw__rec_get_u64(r);
        if (r->err || u->n_dev == MEM_MAX_DEVICES)
            break;
        char *copy = imgw_try_strdup(dev);
        if (copy == NULL || (u->n_dev == u->cap_dev &&
                             array_grow((void **)&u->dev, &u->cap_dev,
                                        sizeof(*u->dev), MEM_MAX_DEVICES))) {
            imgw_free(copy);
            rc = IMGW_ENOMEM;
            goto out;
        }
        u->dev[u->n_dev].device = copy;
        u->dev[u->n_dev].seq = seq;
        u->dev[u->n_dev++].stamp = stamp;
        if (stamp > sh->stamp)
            sh->stamp = stamp;
    }
    uint16_t nr = imgw__rec_get_u16(r);
    for (uint16_t i = 0; i < nr && !r->err; i++) {
        const char *conv = imgw__rec_get_str(r);
        const char *mid = imgw__rec_get_str(r);
        uint64_t stamp = imgw__rec_get_u64(r);
        if (r->err || u->n_read == MEM_MAX_READS)
            break;
        size_t cl = strlen(conv), ml = strlen(mid);
        char *cm = imgw_try_malloc(cl + 1 + ml + 1);
        if (cm == NULL || (u->n_read == u->cap_read &&
                           array_grow((void **)&u->reads, &u->cap_read,
                                      sizeof(*u->reads), MEM_MAX_READS))) {
            imgw_free(cm);
            rc = IMGW_ENOMEM;
            goto out;
        }
        memcpy(cm, conv, cl + 1);
        memcpy(cm + cl + 1, mid, ml + 1);
        u->reads[u->n_read].cm = cm;
        u->reads[u->n_read++].stamp = stamp;
        if (stamp > sh->stamp)
            sh->stamp = stamp;
    }
    if (!r->err && r->n - r->off >= 8)
        u->epoch = imgw__rec_get_u64(r);
    if (r->err)
        rc = IMGW_EPROTO;
out:
    ld->cur = rc == 0 ? u : NULL;
    pthread_mutex_unlock(&sh->mu);
    return rc;
}

/* Slots go to the tail of the current user's ring, so they hold the seqs
 * max_seq - count + 1 .. max_seq once the user's last chunk is in. */
static int
load_entries(imgw__store_mem_loader_t *ld, imgw__rec_rd_t *r)
{
    imgw__mem_t *m = ld->m;
    imgw__mem_user_t *u = ld->cur;
    uint32_t k = imgw__rec_get_u32(r);
    if (r->err || u == NULL || k > MEM_DUMP_CHUNK)
        return IMGW_EPROTO;
    imgw__mem_shard_t *sh = &m->shards[shard_of(u->h.hash)];
    int rc = 0;
    pthread_mutex_lock(&sh->mu);
    for (uint32_t i = 0; i < k; i++) {
        uint32_t num = imgw__rec_get_u32(r);
        int64_t stored = (int64_t)imgw__rec_get_u64(r);
        if (r->err || num >= ld->n_blobs ||
            (int64_t)u->count >= u->max_seq) {
            rc = IMGW_EPROTO;
            break;
        }
        if (u->count >= (uint32_t)m->retention_count)
            ring_pop(m, u); /* a smaller retention than when saved */
        if (u->count == u->cap &&
            ring_realloc(u, u->cap ? (u->cap * 2 < (uint32_t)m->retention_count
                                          ? u->cap * 2
                                          : (uint32_t)m->retention_count)
                                   : 4) != 0) {
            rc = IMGW_ENOMEM;
            break;
        }
        imgw__mem_blob_t *b = ld->blobs[num];
        blob_ref(b);
        imgw__mem_ent_t *e = &u->ring[(u->head + u->count) % u->cap];
        e->stored_ms = stored;
        e->blob = b;
        u->count++;
    }
    pthread_mutex_unlock(&sh->mu);
    return rc;
}

int
imgw__store_mem_load(imgw__store_mem_loader_t *ld, uint8_t type,
                     const uint8_t *p, size_t n)
{
    imgw__rec_rd_t r = {p, n, 0, 0};
    if (type != IMGW__REC_S_ENTRIES && type != IMGW__REC_S_BLOB &&
        type != IMGW__REC_S_META)
        ld->cur = NULL; /* entries follow their user or its blobs only */
    switch (type) {
    case IMGW__REC_S_META:
        return load_meta(ld, &r);
    case IMGW__REC_S_META_TABLE:
        return load_meta_table(ld, &r);
    case IMGW__REC_S_BLOB:
        return load_blob(ld, &r);
    case IMGW__REC_S_DEDUPE:
        return load_dedupe(ld, &r);
    case IMGW__REC_S_GROUP:
        return load_group(ld, &r);
    case IMGW__REC_S_USER:
        return load_user(ld, &r);
    case IMGW__REC_S_ENTRIES:
        return load_entries(ld, &r);
    default:
        return IMGW_EPROTO;
    }
}

void
imgw__store_mem_load_end(imgw__store_mem_loader_t *ld, uint64_t *max_id)
{
    if (ld == NULL)
        return;
    if (max_id != NULL)
        *max_id = ld->max_id;
    for (size_t i = 0; i < ld->n_blobs; i++)
        blob_unref(ld->m, ld->blobs[i]);
    for (size_t i = 0; i < ld->n_metas; i++)
        meta_unref(ld->m, ld->metas[i]);
    imgw_free(ld->blobs);
    imgw_free(ld->metas);
    imgw_free(ld);
}

/* ---- test hooks (store_impl.h) ------------------------------------------- */

void
imgw__store_mem_set_clock(imgw_store_t *s, imgw__store_clock_fn fn, void *arg)
{
    if (s != NULL && s->be == &imgw__store_file) {
        imgw__store_file_set_clock(s, fn, arg);
        return;
    }
    if (s == NULL || s->be != &imgw__store_memory)
        return;
    imgw__mem_t *m = s->impl;
    m->clock = fn ? fn : mem_realtime_ms;
    m->clock_arg = arg;
}

int
imgw__store_mem_stats(imgw_store_t *s, imgw__store_mem_stats_t *out)
{
    s = imgw__store_file_inner(s);
    if (s == NULL || out == NULL || s->be != &imgw__store_memory)
        return IMGW_EINVAL;
    imgw__mem_t *m = s->impl;
    memset(out, 0, sizeof(*out));
    for (unsigned i = 0; i < MEM_SHARDS; i++) {
        imgw__mem_shard_t *sh = &m->shards[i];
        pthread_mutex_lock(&sh->mu);
        out->users += sh->users.n;
        out->dedupes += sh->dedupes.n;
        out->metas += sh->metas.n;
        out->groups += sh->groups.n;
        for (size_t b = 0; b <= sh->users.mask; b++)
            for (imgw__mem_hnode_t *x = sh->users.b[b]; x; x = x->next) {
                imgw__mem_user_t *u = (imgw__mem_user_t *)x;
                out->entries += u->count;
                out->routes += u->n_routes;
                out->devices += u->n_dev;
                out->reads += u->n_read;
            }
        pthread_mutex_unlock(&sh->mu);
    }
    out->blobs_live =
        atomic_load_explicit(&m->blobs_live, memory_order_relaxed);
    out->metas_live =
        atomic_load_explicit(&m->metas_live, memory_order_relaxed);
    return 0;
}

int
imgw__store_mem_get_delivered(imgw_store_t *s, const char *user,
                              const char *device, int64_t *seq)
{
    s = imgw__store_file_inner(s);
    if (s == NULL || s->be != &imgw__store_memory)
        return IMGW_EINVAL;
    imgw__mem_t *m = s->impl;
    uint64_t h = hash_str(m, user);
    imgw__mem_shard_t *sh = &m->shards[shard_of(h)];
    int r = IMGW_ENOTFOUND;
    pthread_mutex_lock(&sh->mu);
    imgw__mem_user_t *u = user_find(sh, h, user);
    for (uint16_t i = 0; u != NULL && i < u->n_dev; i++)
        if (strcmp(u->dev[i].device, device) == 0) {
            *seq = u->dev[i].seq;
            r = 0;
            break;
        }
    pthread_mutex_unlock(&sh->mu);
    return r;
}

int
imgw__store_mem_get_read(imgw_store_t *s, const char *user,
                         const char *conversation_id, char *buf, size_t len)
{
    s = imgw__store_file_inner(s);
    if (s == NULL || s->be != &imgw__store_memory || len == 0)
        return IMGW_EINVAL;
    imgw__mem_t *m = s->impl;
    uint64_t h = hash_str(m, user);
    imgw__mem_shard_t *sh = &m->shards[shard_of(h)];
    int r = IMGW_ENOTFOUND;
    pthread_mutex_lock(&sh->mu);
    imgw__mem_user_t *u = user_find(sh, h, user);
    for (uint16_t i = 0; u != NULL && i < u->n_read; i++) {
        const char *cm = u->reads[i].cm;
        if (strcmp(cm, conversation_id) == 0) {
            snprintf(buf, len, "%s", cm + strlen(cm) + 1);
            r = 0;
            break;
        }
    }
    pthread_mutex_unlock(&sh->mu);
    return r;
}
