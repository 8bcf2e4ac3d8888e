/*
 * uniq.c: distinct recipients in O(n) (see uniq.h).
 *
 * Why not sort + unique: the result must keep the store's order (users[0]
 * is the sender and the timelines' seqs line up with users[]), and a
 * sort of 1000 pointers costs ~10,000 strcmp; a hash set costs one hash
 * per member and a strcmp only on a full 32-bit hash match.
 *
 * The set is sized to at least twice the input (load <= 1/2, so linear
 * probing stays short) and cleared per call with one memset of that size,
 * not of the largest size ever used: a 2-member group after a 1000-member
 * one clears 4 slots only.
 */
#include "uniq.h"

#include <stdlib.h>
#include <string.h>

#include "alloc.h"

static uint32_t
uniq_hash(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a 64 */
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001b3ULL;
    }
    h ^= h >> 33; /* fold the well-mixed high bits into the low ones */
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return (uint32_t)h;
}

/* Makes room for a list of n and a set for n keys; 0 or -1 (no memory). */
static int
uniq_reserve(imgw_uniq_t *u, size_t n, size_t *nslots)
{
    size_t want = 16;
    while (want < 2 * n)
        want <<= 1;
    if (want > u->nslots_) {
        uint64_t *s = imgw_try_malloc(want * sizeof(*s));
        if (s == NULL)
            return -1;
        imgw_free(u->slots_);
        u->slots_ = s;
        u->nslots_ = want;
    }
    if (n > u->list_cap_) {
        const char **l = imgw_try_malloc(n * sizeof(*l));
        if (l == NULL)
            return -1;
        imgw_free(u->list_);
        u->list_ = l;
        u->list_cap_ = n;
    }
    *nslots = want;
    return 0;
}

/* Adds s unless present; returns 1 when it was already in the set. */
static int
uniq_add(imgw_uniq_t *u, size_t mask, const char *s, size_t *k)
{
    uint32_t h = uniq_hash(s);
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        uint64_t v = u->slots_[i];
        if (v == 0) {
            u->list_[*k] = s;
            (*k)++;
            u->slots_[i] = ((uint64_t)h << 32) | (uint64_t)*k;
            return 0;
        }
        if ((uint32_t)(v >> 32) == h &&
            strcmp(u->list_[(uint32_t)v - 1], s) == 0)
            return 1;
    }
}

const char *const *
imgw_uniq_build(imgw_uniq_t *u, const char *first, const char *const *in,
                size_t n, size_t *count, int *first_seen)
{
    size_t total = n + (first != NULL), nslots, k = 0;
    *count = 0;
    if (first_seen)
        *first_seen = 0;
    if (total > UINT32_MAX - 1 || uniq_reserve(u, total ? total : 1, &nslots))
        return NULL;
    /* Only the part of the set this call can probe is cleared. */
    memset(u->slots_, 0, nslots * sizeof(*u->slots_));
    size_t mask = nslots - 1;
    if (first != NULL)
        uniq_add(u, mask, first, &k);
    for (size_t i = 0; i < n; i++) {
        int dup = uniq_add(u, mask, in[i], &k);
        if (dup && first_seen && first != NULL && !*first_seen &&
            strcmp(in[i], first) == 0)
            *first_seen = 1;
    }
    *count = k;
    return u->list_;
}

void
imgw_uniq_free(imgw_uniq_t *u)
{
    imgw_free(u->slots_);
    imgw_free(u->list_);
    memset(u, 0, sizeof(*u));
}
