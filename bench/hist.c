/*
 * hist.c: log-bucketed histogram (see hist.h). Any thread, one owner each.
 */
#include "hist.h"

#include <string.h>

#define SUB (1u << BHIST_SUB_BITS)

void
bhist_init(bhist_t *h)
{
    memset(h, 0, sizeof(*h));
    h->min = UINT64_MAX;
}

/*
 * Values below 2*SUB are their own bucket. Above, the value's top
 * BHIST_SUB_BITS+1 bits select the bucket: shift = msb - BHIST_SUB_BITS
 * makes v >> shift land in [SUB, 2*SUB), and each shift gets SUB buckets
 * after the first 2*SUB linear ones.
 */
static inline unsigned
bhist_index(uint64_t v)
{
    if (v < 2 * SUB)
        return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = msb - BHIST_SUB_BITS;
    return (shift + 1) * SUB + (unsigned)((v >> shift) - SUB);
}

static inline uint64_t
bhist_low(unsigned idx, uint64_t *width)
{
    if (idx < 2 * SUB) {
        *width = 1;
        return idx;
    }
    unsigned shift = idx / SUB - 1;
    uint64_t sub = idx % SUB + SUB;
    *width = (uint64_t)1 << shift;
    return sub << shift;
}

void
bhist_record(bhist_t *h, uint64_t v)
{
    h->b[bhist_index(v)]++;
    h->count++;
    h->sum += (double)v;
    if (v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
}

void
bhist_merge(bhist_t *dst, const bhist_t *src)
{
    if (src->count == 0)
        return;
    for (unsigned i = 0; i < BHIST_BUCKETS; i++)
        dst->b[i] += src->b[i];
    dst->count += src->count;
    dst->sum += src->sum;
    if (src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
}

uint64_t
bhist_quantile(const bhist_t *h, double q)
{
    if (h->count == 0)
        return 0;
    if (q >= 1.0)
        return h->max;
    uint64_t rank = (uint64_t)(q * (double)h->count + 0.999999);
    if (rank == 0)
        rank = 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < BHIST_BUCKETS; i++) {
        seen += h->b[i];
        if (seen >= rank) {
            uint64_t w, lo = bhist_low(i, &w);
            uint64_t mid = lo + w / 2;
            if (mid < h->min)
                mid = h->min;
            if (mid > h->max)
                mid = h->max;
            return mid;
        }
    }
    return h->max;
}

double
bhist_mean(const bhist_t *h)
{
    return h->count ? h->sum / (double)h->count : 0.0;
}
