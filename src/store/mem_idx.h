/*
 * mem_idx.h: the index of the memory backend's two per-message tables (a
 * shard's dedupe keys and message metadata), which hold every message of
 * their window: hundreds of thousands of entries, looked up by every
 * append, nearly always for a key that is not there.
 *
 * Why not the chained table (mem_int.h's htab): a miss there loads a
 * bucket pointer and then walks one or two nodes, each a cache miss. Here
 * a bucket is one 64-byte line of seven (tag, pointer) slots, the tag
 * being 7 bits of the hash, so a miss reads one line and dereferences a
 * node only on a tag match (1 in 128 per occupied slot). A table has any
 * number of buckets (the home is a multiply-shift of the hash, not a
 * mask), so a big one grows by half rather than doubling. Buckets are probed
 * linearly, wrapping; `over` counts the entries that had to go past a full
 * bucket (F14's outbound overflow count), so a lookup stops at the first
 * bucket with over == 0 and a removal just clears its slot: no tombstones,
 * no backward shift. A count that reaches 255 stays there (lookups then
 * probe on past that bucket: slower, never wrong).
 *
 * The entries are the caller's objects; each holds the low 32 bits of
 * its hash as a uint32_t at the offset given to imgw__mem_idx_init, which
 * the index reads when it moves an entry (32 bits fit in padding the
 * objects had: the chained table's node took 16 bytes). The index uses
 * only those bits: 7 for the tag, the other 25 for the home bucket. Growth and shrinking are incremental, as Redis's dict
 * rehash: a resize allocates the new table and then every insert and
 * removal (and imgw__mem_idx_step) moves a few buckets of the old one;
 * meanwhile lookups search both. A full table never rehashes in one step
 * unless a shrink's migration is overtaken by a burst (then it finishes
 * that migration, which has only the few entries a shrink starts with).
 *
 * Memory: 64 B per 7 slots, at most 6 of 7 used before growing and 4 of 7
 * right after (growth by half, from 512 buckets on; smaller tables
 * double), so 10.7-16 B per entry, plus 0-4 B for
 * the 32-bit hash in the entry; the chained table took 16 B in the node
 * and 4-8 B of buckets. (Doubling would have left 3 of 7 used after each
 * growth, up to 21 B per entry: at the default caps, 15,600 entries per
 * shard, that is where a power-of-two table sits.)
 *
 * Threads: none of its own; every call runs under the shard lock.
 *
 * Not done: prefetching the home buckets before the append takes its
 * locks (a relaxed-atomic copy of cur's base and mask) measured no
 * difference in a store-only append loop, so it is not kept.
 */
#ifndef IMGW_STORE_MEM_IDX_H
#define IMGW_STORE_MEM_IDX_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define MEM_IDX_WAYS 7
#define MEM_IDX_MIN 2 /* buckets: 128 B for an empty table */
#define MEM_IDX_FULL 6 /* entries per bucket before growing */

typedef struct imgw__mem_idx_bkt_s {
    uint8_t tag[MEM_IDX_WAYS]; /* 0: empty; else 0x80 | 7 bits of hash */
    uint8_t over;              /* see above; saturates at 255 */
    void *p[MEM_IDX_WAYS];
} imgw__mem_idx_bkt_t;

typedef struct imgw__mem_idx_tab_s {
    imgw__mem_idx_bkt_t *b; /* 64-byte aligned; NULL: no table */
    size_t nb;              /* buckets, >= MEM_IDX_MIN */
    size_t n;               /* entries */
} imgw__mem_idx_tab_t;

typedef struct imgw__mem_idx_s {
    imgw__mem_idx_tab_t cur; /* inserts go here */
    imgw__mem_idx_tab_t old; /* being moved into cur while old.b != NULL */
    size_t mig;              /* next bucket of old to move */
    size_t hash_off;         /* of the entries' uint32_t hash */
} imgw__mem_idx_t;

/* Entry equality: p an entry whose tag matched, key the caller's. */
typedef int (*imgw__mem_idx_eq_fn)(const void *p, const void *key);

/* The tag and the home bucket come from the low 32 bits of the hash (the
 * top ones pick the shard, one value for every entry of a table): bits
 * 0-6 the tag, bits 7-31 scaled to [0, nb). */
static inline uint8_t
imgw__mem_idx_tag(uint32_t h)
{
    return (uint8_t)(0x80 | (h & 0x7f));
}

static inline size_t
imgw__mem_idx_home(uint32_t h, size_t nb)
{
    return (size_t)(((uint64_t)(h >> 7) * nb) >> 25);
}

static inline size_t
imgw__mem_idx_next(size_t i, size_t nb)
{
    return i + 1 == nb ? 0 : i + 1;
}

/* Bit 8j+7 set for each slot j whose tag byte equals tag (candidates
 * only: the caller checks the byte again, as the borrow of the SWAR test
 * can flag the byte above a match). */
static inline uint64_t
imgw__mem_idx_match(const imgw__mem_idx_bkt_t *b, uint8_t tag)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t w;
    memcpy(&w, b->tag, sizeof(w)); /* the 7 tags and over */
    w ^= 0x0101010101010101ULL * tag;
    return (w - 0x0101010101010101ULL) & ~w & 0x0080808080808080ULL;
#else
    uint64_t r = 0;
    for (int j = 0; j < MEM_IDX_WAYS; j++)
        if (b->tag[j] == tag)
            r |= 0x80ULL << (8 * j);
    return r;
#endif
}

static inline void *
imgw__mem_idx_tab_find(const imgw__mem_idx_tab_t *t, uint32_t h,
                       imgw__mem_idx_eq_fn eq, const void *key)
{
    uint8_t tag = imgw__mem_idx_tag(h);
    size_t i = imgw__mem_idx_home(h, t->nb);
    for (size_t k = 0; k < t->nb; k++) {
        const imgw__mem_idx_bkt_t *b = &t->b[i];
        for (uint64_t c = imgw__mem_idx_match(b, tag); c; c &= c - 1) {
            int j = __builtin_ctzll(c) >> 3;
            if (b->tag[j] == tag && eq(b->p[j], key))
                return b->p[j];
        }
        if (b->over == 0)
            return NULL;
        i = imgw__mem_idx_next(i, t->nb);
    }
    return NULL;
}

/** The entry with hash h (its low 32 bits count) for which eq(entry, key)
 * holds, or NULL. */
static inline void *
imgw__mem_idx_find(const imgw__mem_idx_t *x, uint32_t h,
                   imgw__mem_idx_eq_fn eq, const void *key)
{
    if (x->old.b != NULL) {
        void *p = imgw__mem_idx_tab_find(&x->old, h, eq, key);
        if (p != NULL)
            return p;
    }
    return imgw__mem_idx_tab_find(&x->cur, h, eq, key);
}

/** Entries in the index. */
static inline size_t
imgw__mem_idx_count(const imgw__mem_idx_t *x)
{
    return x->cur.n + x->old.n;
}

/** An empty index of entries whose uint32_t hash is at hash_off; 0 or
 * IMGW_ENOMEM. */
int imgw__mem_idx_init(imgw__mem_idx_t *x, size_t hash_off);
/** Frees the tables (not the entries); x may be zeroed or half-made. */
void imgw__mem_idx_free(imgw__mem_idx_t *x);
/**
 * Makes room for one imgw__mem_idx_insert, which then cannot fail. Returns
 * 0, or IMGW_ENOMEM only when the table could not grow and has one free
 * slot left; a failed growth below that only leaves it more loaded.
 */
int imgw__mem_idx_reserve(imgw__mem_idx_t *x);
/** Adds p (hash h, not in the index) after a successful reserve. */
void imgw__mem_idx_insert(imgw__mem_idx_t *x, uint32_t h, void *p);
/** Removes p, which is in the index under hash h. */
void imgw__mem_idx_remove(imgw__mem_idx_t *x, uint32_t h, void *p);
/** Moves up to budget buckets of a running migration. */
void imgw__mem_idx_step(imgw__mem_idx_t *x, size_t budget);
/** After a burst: starts moving into a table of about twice the entries'
 * slots when the current one is less than 1/8 full. Failure: keep it. */
void imgw__mem_idx_shrink(imgw__mem_idx_t *x);
/** Calls fn on every entry (in no order), then frees the tables. */
void imgw__mem_idx_drain(imgw__mem_idx_t *x, void (*fn)(void *p, void *arg),
                         void *arg);

#endif
