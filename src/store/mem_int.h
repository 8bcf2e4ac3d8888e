/*
 * mem_int.h: what the memory backend's files share (memory.c lists them):
 * the limits, the shard and record types, the allocation wrappers (so the
 * failmalloc test hook sees every allocation), hashing and shard locking,
 * the intrusive hash tables (the age lists are base's list.h), and each
 * file's functions the others call. Private to src/store/mem*.c;
 * store_impl.h is the backend's face to store.c and file.c.
 *
 * Threads: as memory.c says. A function that takes a shard runs with that
 * shard's lock held unless its comment says otherwise.
 */
#ifndef IMGW_STORE_MEM_INT_H
#define IMGW_STORE_MEM_INT_H

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
#include "hash.h"
#include "list.h"
#include "mem_conv.h"
#include "mem_idx.h"
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
#define MEM_TICK_MIGRATE 32    /* index buckets per shard and table per tick:
                                  ~7 entries each, a cache miss apiece */
#define MEM_TICK_USER_SHARDS 4 /* shards whose users one tick visits */
#define MEM_TICK_BUCKETS 256   /* user buckets per visited shard */
#define MEM_STACK_SLOTS 16     /* appends to <= 16 users use no malloc */
#define MEM_STACK_ENTRIES 32   /* sync pages <= 32 entries use no malloc */

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

/*
 * Message metadata. The metadata table holds one reference while the
 * message is unexpired, the message's blob holds another, so sync can read
 * revoked through the blob without locking the message's shard.
 */
typedef struct imgw__mem_meta_s {
    imgw_list_t age; /* shard->meta_age, oldest first */
    atomic_uint refs;
    uint32_t hash;        /* hash_id's low bits: shard->metas (mem_idx.h) */
    int64_t expire_ms;    /* under the id's shard lock */
    uint64_t message_id;  /* immutable from here on */
    int64_t server_time_ms;
    const char *conv; /* points into sender[] after its NUL */
    atomic_uchar revoked; /* set under the id's shard lock, read anywhere */
    char sender[];        /* allocated from offsetof(.., sender) on */
} imgw__mem_meta_t;

/* Bytes of metadata for strings of these lengths. */
#define MEM_META_SIZE(slen, vlen)                                            \
    (offsetof(imgw__mem_meta_t, sender) + (slen) + 1 + (vlen) + 1)

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
    /* "platform\0broker_id\0", shared with every route of the shard that
     * names the same pair (imgw__mem_pb_get): thousands of idle users on
     * one node all hold the same few strings. */
    const char *pb;
} imgw__mem_route_t;

/* A shared route string of one shard, refcounted under the shard lock. */
typedef struct imgw__mem_pb_s {
    imgw__mem_hnode_t h; /* in shard->pbs */
    uint32_t refs;       /* routes naming it; bounded by max_users * 16 */
    char s[];            /* "platform\0broker_id\0" */
} imgw__mem_pb_t;

typedef struct imgw__mem_dev_s {
    uint64_t stamp; /* shard->stamp at last update: LRU order */
    int64_t seq;
    char *device;
} imgw__mem_dev_t;

typedef struct imgw__mem_read_s {
    uint64_t stamp;
    char *cm; /* "conversation_id\0message_id\0", one allocation */
} imgw__mem_read_t;

/* Delivered and read positions and the conversation list of a user that
 * has any: most idle users (a connection that never receives, acks or
 * marks read) have none, so the record holds one pointer for them instead
 * of three arrays and their counts. */
typedef struct imgw__mem_pos_s {
    imgw__mem_dev_t *dev;
    imgw__mem_read_t *reads;
    uint16_t n_dev, cap_dev;
    uint16_t n_read, cap_read;
    imgw__mem_convs_t convs; /* conversation list (mem_conv.h) */
} imgw__mem_pos_t;

/*
 * What a user holds once used, and an idle one (a connection that never
 * received, acked or marked anything) does not: its last use, positions
 * and timeline. Created by the first append that reserves a slot for the
 * user, the first position or conversation, or a snapshot's user; freed by
 * the sweep once it holds no entry and no positions and max_seq has
 * expired. One with max_seq 0, no entry and no positions reads exactly
 * like none (a failed append may leave one behind). The ring is inline, so
 * this is one allocation; growing or shrinking the ring moves it.
 */
typedef struct imgw__mem_used_s {
    int64_t max_seq;      /* never decreases while the ring holds an entry or
                             the user was used within seq_ttl */
    uint64_t epoch;       /* id of the message that got seq 1 (store.h);
                             meaningful while max_seq != 0 */
    imgw__mem_pos_t *pos; /* NULL until the first position or conversation */
    /* Last append, sync, max_seq or route refresh, in store-clock seconds
     * rounded up (imgw__mem_touch): it only ever meets seq_ttl, which is
     * days, and 32 bits of it keep this header at 40 bytes, so a ring of
     * 4 fills a 112-byte chunk rather than spilling into a 128-byte one. */
    uint32_t touched_s;
    uint32_t cap, head, count; /* ring slots; count used from head */
    imgw__mem_ent_t ring[];
} imgw__mem_used_t;

/* Rounded up, so max_seq is never forgotten before seq_ttl; a uint32 of
 * unix seconds lasts until 2106. */
static inline void
imgw__mem_touch(imgw__mem_used_t *t, int64_t now_ms)
{
    t->touched_s = (uint32_t)((now_ms + 999) / 1000);
}

static inline int64_t
imgw__mem_touched_ms(const imgw__mem_used_t *t)
{
    return (int64_t)t->touched_s * 1000;
}

/*
 * Everything kept per user; all of it under the user's shard lock. The
 * record is what every idle connection's user costs, so it holds only
 * what such a user uses: its id, its chain link and one route (44 bytes
 * before the id: ids up to 11 bytes keep it in a 64-byte malloc chunk).
 * The rest hangs off used, NULL until needed; a second route moves the
 * routes into an array (imgw__mem_routes).
 */
typedef struct imgw__mem_user_s {
    imgw__mem_hnode_t h;    /* in shard->users */
    imgw__mem_used_t *used; /* NULL while idle */
    union {
        imgw__mem_route_t one;  /* cap_routes == 0: at most one, inline */
        imgw__mem_route_t *arr; /* cap_routes >= 2 */
    } r;
    uint16_t n_routes, cap_routes;
    char id[];
} imgw__mem_user_t;
/* The idle record's size is the point of its layout: keep it measured. */
_Static_assert(sizeof(void *) != 8 || offsetof(imgw__mem_user_t, id) == 44,
               "an idle user's record grew: see imgw__mem_user_t");
_Static_assert(sizeof(void *) != 8 || sizeof(imgw__mem_used_t) == 40,
               "the used header grew: see imgw__mem_used_t");

/* u's routes: n_routes of them, room for imgw__mem_routes_cap(u). */
static inline imgw__mem_route_t *
imgw__mem_routes(imgw__mem_user_t *u)
{
    return u->cap_routes ? u->r.arr : &u->r.one;
}

static inline uint16_t
imgw__mem_routes_cap(const imgw__mem_user_t *u)
{
    return u->cap_routes ? u->cap_routes : 1;
}

/* What an absent timeline reads as, so readers need not test for NULL. */
static inline int64_t
imgw__mem_max_seq_of(const imgw__mem_user_t *u)
{
    return u->used ? u->used->max_seq : 0;
}

static inline uint32_t
imgw__mem_count_of(const imgw__mem_user_t *u)
{
    return u->used ? u->used->count : 0;
}

static inline imgw__mem_pos_t *
imgw__mem_pos_of(const imgw__mem_user_t *u)
{
    return u->used ? u->used->pos : NULL;
}

typedef struct imgw__mem_dedupe_s {
    imgw_list_t age; /* shard->dedupe_age, oldest first */
    int64_t expire_ms;
    uint64_t message_id;
    int64_t seq;   /* the sender's seq of the first append */
    uint32_t hash; /* hash_dedupe's low bits: the sender's shard's dedupes */
    char key[];    /* sender "\0" client_msg_id "\0", allocated from
                      offsetof(.., key) on */
} imgw__mem_dedupe_t;

/* Bytes of a dedupe record for strings of these lengths. */
#define MEM_DEDUPE_SIZE(slen, clen)                                          \
    (offsetof(imgw__mem_dedupe_t, key) + (slen) + 1 + (clen) + 1)

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
    imgw__mem_htab_t users, groups;
    imgw__mem_idx_t dedupes, metas; /* one entry per message: mem_idx.h */
    imgw__mem_htab_t pbs; /* route strings of this shard's users */
    imgw_list_t dedupe_age, meta_age;
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
    uint32_t max_convs;    /* conversations per user */
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
 * Every allocation is an imgw_try_* one (base/alloc.h), so the unit tests
 * can fail the Nth (imgw__store_mem_fail_alloc forwards to base/alloc.c's
 * one countdown) and check that a failed request leaves no partial state.
 */
#define mem_malloc imgw_try_malloc
#define mem_calloc imgw_try_calloc
#define mem_realloc imgw_try_realloc
#define mem_strdup imgw_try_strdup
#define mem_aligned_alloc imgw_try_aligned_alloc

/* ---- clock, hashing ------------------------------------------------------ */

static inline int64_t
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
static inline uint64_t
hash_str(const imgw__mem_t *m, const char *s)
{
    return mix64(fnv(m->seed ^ IMGW_HASH_FNV64_BASIS, s, strlen(s)));
}

static inline uint64_t
hash_dedupe(const imgw__mem_t *m, const char *sender, const char *cmid)
{
    uint64_t h =
        fnv(m->seed ^ IMGW_HASH_FNV64_BASIS, sender, strlen(sender) + 1);
    return mix64(fnv(h, cmid, strlen(cmid)));
}

static inline uint64_t
hash_id(const imgw__mem_t *m, uint64_t id)
{
    return mix64(id ^ m->seed);
}

static inline unsigned
shard_of(uint64_t h)
{
    return (unsigned)(h >> (64 - MEM_SHARD_BITS));
}

/* Locks every shard in mask, lowest index first: the one lock order. */
static inline void
lock_mask(imgw__mem_t *m, uint64_t mask)
{
    while (mask) {
        pthread_mutex_lock(&m->shards[__builtin_ctzll(mask)].mu);
        mask &= mask - 1;
    }
}

static inline void
unlock_mask(imgw__mem_t *m, uint64_t mask)
{
    while (mask) {
        pthread_mutex_unlock(&m->shards[__builtin_ctzll(mask)].mu);
        mask &= mask - 1;
    }
}

/* ---- hash tables --------------------------------------------------------- */

static inline int
htab_init(imgw__mem_htab_t *t)
{
    t->b = mem_calloc(MEM_HTAB_MIN, sizeof(*t->b));
    t->mask = MEM_HTAB_MIN - 1;
    t->n = 0;
    return t->b ? 0 : IMGW_ENOMEM;
}

/* Rehashes into nb buckets. Failing to allocate only leaves the table
 * more loaded than it should be, so it is not an error. */
static inline void
htab_resize(imgw__mem_htab_t *t, size_t nb)
{
    imgw__mem_hnode_t **nbk = mem_calloc(nb, sizeof(*nbk));
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

static inline void
htab_insert(imgw__mem_htab_t *t, imgw__mem_hnode_t *x)
{
    imgw__mem_hnode_t **b = &t->b[x->hash & t->mask];
    x->next = *b;
    *b = x;
    /* Up to two nodes per bucket: at one, the user table's buckets were
     * ~13 B of every idle connection; chains compare hashes first. */
    if (++t->n > 2 * (t->mask + 1))
        htab_resize(t, (t->mask + 1) * 2);
}

static inline void
htab_remove(imgw__mem_htab_t *t, imgw__mem_hnode_t *x)
{
    imgw__mem_hnode_t **pp = &t->b[x->hash & t->mask];
    while (*pp != x)
        pp = &(*pp)->next;
    *pp = x->next;
    t->n--;
}

/* Gives memory back after a burst: down to ~2 nodes per bucket. */
static inline void
htab_shrink(imgw__mem_htab_t *t)
{
    if (t->mask + 1 <= MEM_HTAB_MIN || t->n * 8 >= t->mask + 1)
        return;
    size_t nb = MEM_HTAB_MIN;
    while (nb < t->n * 2)
        nb *= 2;
    htab_resize(t, nb);
}

/* ---- functions of the backend's files ----------------------------------- */

/* mem_timeline.c */
imgw__mem_user_t *imgw__mem_user_find(imgw__mem_shard_t *sh, uint64_t h,
                                      const char *id);
imgw__mem_user_t *imgw__mem_user_get(imgw__mem_t *m, imgw__mem_shard_t *sh,
                                     uint64_t h, const char *id, int *err);
/* u's used part, created empty (touched now) when it has none; NULL when
 * out of memory. */
imgw__mem_used_t *imgw__mem_used_own(imgw__mem_user_t *u, int64_t now);
void imgw__mem_user_seq_expire(const imgw__mem_t *m, imgw__mem_user_t *u,
                               int64_t now);
void imgw__mem_ring_pop(imgw__mem_t *m, imgw__mem_used_t *t);
int imgw__mem_ring_realloc(imgw__mem_user_t *u, uint32_t ncap, int64_t now);
int imgw__mem_routes_grow(imgw__mem_user_t *u);
void imgw__mem_user_age(imgw__mem_t *m, imgw__mem_user_t *u, int64_t now);
void imgw__mem_routes_expire(imgw__mem_shard_t *sh, imgw__mem_user_t *u,
                             int64_t now);
void imgw__mem_user_free(imgw__mem_t *m, imgw__mem_shard_t *sh,
                         imgw__mem_user_t *u);
/* mem_routes.c: the shard's shared "platform\0broker_id\0" strings, under
 * its lock. get returns a reference (NULL when out of memory), put drops
 * one. */
const char *imgw__mem_pb_get(imgw__mem_t *m, imgw__mem_shard_t *sh,
                             const char *platform, const char *broker_id);
void imgw__mem_pb_put(imgw__mem_shard_t *sh, const char *pb);
int imgw__mem_array_grow(void **arr, uint16_t *cap, size_t elsize,
                         uint16_t max);
/* u's positions, created empty when it has none; NULL when out of memory. */
imgw__mem_pos_t *imgw__mem_pos_own(imgw__mem_user_t *u, int64_t now);
void imgw__mem_users_sweep(imgw__mem_t *m, imgw__mem_shard_t *sh, int64_t now,
                           int budget);
int imgw__mem_append(imgw_store_loop_t *sl, imgw_store_append_t *req,
                     imgw_store_append_cb cb, void *data);
int imgw__mem_sync(imgw_store_loop_t *sl, const char *user, int64_t min_seq,
                   int64_t max_seq, int limit, imgw_store_sync_cb cb,
                   void *data);
int imgw__mem_max_seq(imgw_store_loop_t *sl, const char *user,
                      imgw_store_seq_cb cb, void *data);
/* mem_dedupe.c */
int imgw__mem_dedupe_get(imgw_store_loop_t *sl, const char *sender,
                         const char *cmid, imgw_store_dedupe_cb cb, void *data);
imgw__mem_dedupe_t *imgw__mem_dedupe_find(imgw__mem_shard_t *sh, uint64_t h,
                                          const char *key);
void imgw__mem_dedupe_expire(imgw__mem_t *m, imgw__mem_shard_t *sh, int64_t now,
                             int budget);
void imgw__mem_dedupe_evict(imgw__mem_t *m, imgw__mem_shard_t *sh,
                            const imgw__mem_dedupe_t *keep);
/* mem_meta.c */
void imgw__mem_meta_unref(imgw__mem_t *m, imgw__mem_meta_t *x);
void imgw__mem_blob_ref(imgw__mem_blob_t *b);
void imgw__mem_blob_unref(imgw__mem_t *m, imgw__mem_blob_t *b);
imgw__mem_meta_t *imgw__mem_meta_find(imgw__mem_shard_t *sh, uint64_t h,
                                      uint64_t id);
void imgw__mem_meta_drop(imgw__mem_t *m, imgw__mem_shard_t *sh,
                         imgw__mem_meta_t *mt);
void imgw__mem_meta_expire(imgw__mem_t *m, imgw__mem_shard_t *sh, int64_t now,
                           int budget);
void imgw__mem_meta_evict(imgw__mem_t *m, imgw__mem_shard_t *sh,
                          const imgw__mem_meta_t *keep);
int imgw__mem_msg_get(imgw_store_loop_t *sl, uint64_t message_id,
                      imgw_store_msg_cb cb, void *data);
int imgw__mem_revoke(imgw_store_loop_t *sl, uint64_t message_id,
                     imgw_store_done_cb cb, void *data);
/* mem_groups.c */
imgw__mem_group_t *imgw__mem_group_find(imgw__mem_shard_t *sh, uint64_t h,
                                        const char *gid);
void imgw__mem_group_unref(imgw__mem_group_t *g);
imgw__mem_group_t *imgw__mem_group_build(const char *gid,
                                         const char *const *members, size_t n);
int imgw__mem_group_set(imgw_store_loop_t *sl, const char *gid,
                        const char *const *members, size_t n,
                        imgw_store_done_cb cb, void *data);
int imgw__mem_group_get(imgw_store_loop_t *sl, const char *gid,
                        imgw_store_members_cb cb, void *data);
int imgw__mem_group_del(imgw_store_loop_t *sl, const char *gid,
                        imgw_store_done_cb cb, void *data);
/* mem_routes.c */
int imgw__mem_route_set(imgw_store_loop_t *sl, const char *user,
                        const char *platform, const char *broker_id, int ttl,
                        imgw_store_done_cb cb, void *data);
int imgw__mem_route_del(imgw_store_loop_t *sl, const char *user,
                        const char *platform, const char *broker_id,
                        imgw_store_done_cb cb, void *data);
int imgw__mem_route_refresh(imgw_store_loop_t *sl, const char *user, int ttl,
                            imgw_store_done_cb cb, void *data);
int imgw__mem_route_get(imgw_store_loop_t *sl, const char *user,
                        imgw_store_routes_cb cb, void *data);
/* mem_positions.c */
int imgw__mem_set_delivered(imgw_store_loop_t *sl, const char *user,
                            const char *device, int64_t seq,
                            imgw_store_done_cb cb, void *data);
int imgw__mem_set_read(imgw_store_loop_t *sl, const char *user,
                       const char *conversation_id, const char *message_id,
                       imgw_store_done_cb cb, void *data);

#endif
