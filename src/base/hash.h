/*
 * hash.h: the non-cryptographic hashes imgw uses for its tables.
 *
 * FNV-1a over bytes, then murmur3's 64-bit finaliser (fmix64), because
 * FNV's high bits mix poorly and tables pick shards or buckets from them.
 * Callers that face strangers seed the FNV basis per process (the memory
 * store); none of this is SipHash, so keys must not be attacker-chosen in
 * bulk. imgw_hash_fnv1a32 is unseeded and stable across builds and
 * platforms (the node id derived from broker_id relies on that).
 *
 * Thread: any (pure functions).
 */
#ifndef IMGW_HASH_H
#define IMGW_HASH_H

#include <stddef.h>
#include <stdint.h>

#define IMGW_HASH_FNV64_BASIS 0xcbf29ce484222325ULL
#define IMGW_HASH_FNV64_PRIME 0x100000001b3ULL

/** Continues an FNV-1a 64 hash h over n bytes at s. */
static inline uint64_t
imgw_hash_fnv1a64(uint64_t h, const void *s, size_t n)
{
    const unsigned char *p = s;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= IMGW_HASH_FNV64_PRIME;
    }
    return h;
}

/** murmur3's fmix64: spreads every input bit over the whole word. */
static inline uint64_t
imgw_hash_fmix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

/** FNV-1a 64 of n bytes, finalised with fmix64 (unseeded). */
static inline uint64_t
imgw_hash_bytes(const void *s, size_t n)
{
    return imgw_hash_fmix64(imgw_hash_fnv1a64(IMGW_HASH_FNV64_BASIS, s, n));
}

/** FNV-1a 32 of a NUL-terminated string: stable, unseeded. */
static inline uint32_t
imgw_hash_fnv1a32(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 16777619u;
    }
    return h;
}

#endif
