/*
 * stat.h: counters that one thread writes and any thread reads.
 *
 * Every imgw counter (a loop's net and core statistics, a mailbox's) is
 * written only by the thread that owns it, and read by whichever loop
 * serves /metrics. Plain uint64_t fields made that a data race (torn reads
 * are possible in C11 terms, and ThreadSanitizer reports every scrape), so
 * a counter is a relaxed atomic: with a single writer, an increment is a
 * relaxed load plus a relaxed store, which compiles to the same plain
 * instructions as before (no lock prefix, no fence), and a reader gets a
 * value that is at most a moment old, never a torn one. memcached sums
 * per-thread stats under a lock instead; a lock-free read is enough here
 * because no counter needs to agree with another at the same instant.
 *
 * Only the owning thread may call imgw_stat_add/inc/dec on a counter (two
 * writers would lose updates); imgw_stat_get is for any thread.
 */
#ifndef IMGW_BASE_STAT_H
#define IMGW_BASE_STAT_H

#include <stdatomic.h>
#include <stdint.h>

typedef _Atomic uint64_t imgw_stat_t;

/** Owner thread only. Adds n (wraps like uint64_t). */
static inline void
imgw_stat_add(imgw_stat_t *s, uint64_t n)
{
    atomic_store_explicit(s, atomic_load_explicit(s, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

static inline void
imgw_stat_inc(imgw_stat_t *s)
{
    imgw_stat_add(s, 1);
}

/** Owner thread only; for gauges (open connections). */
static inline void
imgw_stat_dec(imgw_stat_t *s)
{
    imgw_stat_add(s, UINT64_MAX);
}

/** Owner thread only: a gauge's new value. */
static inline void
imgw_stat_set(imgw_stat_t *s, uint64_t v)
{
    atomic_store_explicit(s, v, memory_order_relaxed);
}

/** Any thread. */
static inline uint64_t
imgw_stat_get(const imgw_stat_t *s)
{
    return atomic_load_explicit((imgw_stat_t *)s, memory_order_relaxed);
}

#endif
