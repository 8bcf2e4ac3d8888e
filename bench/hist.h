/*
 * hist.h: a log-bucketed latency histogram in the spirit of HdrHistogram.
 *
 * Values (nanoseconds in imgw-bench) are counted in buckets whose width is
 * 1/64 of their magnitude, so every recorded value is known to better than
 * 1.6 % (two significant digits) from 1 ns up to 2^63 ns, in a fixed 30 KB
 * array. Recording is a clz, a shift and an increment; histograms of the
 * same layout merge by adding arrays, which is how worker processes are
 * combined by the parent. Not thread-safe: one owner per histogram.
 */
#ifndef IMGW_BENCH_HIST_H
#define IMGW_BENCH_HIST_H

#include <stdint.h>

#define BHIST_SUB_BITS 6 /* 64 sub-buckets per power of two */
#define BHIST_BUCKETS                                                          \
    ((64 - BHIST_SUB_BITS) * (1 << BHIST_SUB_BITS) + (1 << BHIST_SUB_BITS))

typedef struct bhist_s {
    uint64_t count;
    uint64_t min; /* exact, UINT64_MAX when empty */
    uint64_t max; /* exact */
    double sum;
    uint64_t b[BHIST_BUCKETS];
} bhist_t;

void bhist_init(bhist_t *h);
void bhist_record(bhist_t *h, uint64_t v);
/** Adds src into dst (same layout by construction). */
void bhist_merge(bhist_t *dst, const bhist_t *src);
/**
 * Value at quantile q in [0,1]: the midpoint of the bucket holding the
 * ceil(q*count)-th value, clamped to [min,max]; q=1 gives the exact max.
 * 0 when the histogram is empty.
 */
uint64_t bhist_quantile(const bhist_t *h, double q);
double bhist_mean(const bhist_t *h);

#endif
