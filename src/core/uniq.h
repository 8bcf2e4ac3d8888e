/*
 * uniq.h: the distinct recipients of one fan-out, in O(n).
 *
 * A group send or receipt gets the member list from the store and must
 * append to / push to each user once, the sender first. The builder keeps
 * an open-addressing set of hashes and a result list that are reused from
 * call to call (one per loop thread), so a 1000-member group costs about
 * 1000 hash probes and no allocation once the scratch has grown.
 *
 * Thread: the owner of the imgw_uniq_t (a loop). Not thread-safe.
 */
#ifndef IMGW_UNIQ_H
#define IMGW_UNIQ_H

#include <stddef.h>
#include <stdint.h>

typedef struct imgw_uniq_s {
    uint64_t *slots_; /* hash (high 32) | list index + 1 (low 32); 0 =
                         empty. nslots_ is a power of two */
    size_t nslots_;
    const char **list_; /* the result; room for list_cap_ */
    size_t list_cap_;
} imgw_uniq_t;

#define IMGW_UNIQ_INIT                                                         \
    {                                                                          \
        NULL, 0, NULL, 0                                                       \
    }

/*
 * Builds the distinct strings of first (when not NULL) followed by
 * in[0..n), in order of first appearance: first is always result[0], and
 * *first_seen (may be NULL) is set to 1 when first also occurs in in. The
 * result points at the caller's strings and is valid until the next call
 * or imgw_uniq_free(); *count is its length.
 *
 * Returns the result, or NULL when the scratch could not grow (out of
 * memory; *count is 0).
 */
const char *const *imgw_uniq_build(imgw_uniq_t *u, const char *first,
                                   const char *const *in, size_t n,
                                   size_t *count, int *first_seen);

/** Frees the scratch; u is empty (reusable) afterwards. */
void imgw_uniq_free(imgw_uniq_t *u);

#endif
