/*
 * test_mem_idx.c: unit tests for the memory store's per-message index
 * (src/store/mem_idx.h): entries that share a home bucket and a tag,
 * removal from the middle of a probe run, a saturated overflow count,
 * incremental growth and shrinking with lookups during the migration,
 * reserve's answer when growth cannot allocate, and a long random run
 * cross-checked against a plain array.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "alloc.h"
#include "err.h"
#include "mem_idx.h"

#include "test.h"

typedef struct ent_s {
    int key;
    uint32_t hash; /* at the offset given to init */
    int in; /* in the index, as the test believes */
} ent_t;

#define HOFF offsetof(ent_t, hash)

/* A hash from a 25-bit home value (bucket v * nb / 2^25 of a table of nb:
 * 0 is bucket 0 in every table) and tag bits. */
static uint32_t
mk(uint32_t v, uint32_t tag)
{
    return (tag & 0x7f) | v << 7;
}

static int
ent_eq(const void *p, const void *key)
{
    return ((const ent_t *)p)->key == *(const int *)key;
}

static ent_t *
find(imgw__mem_idx_t *x, const ent_t *e)
{
    return imgw__mem_idx_find(x, e->hash, ent_eq, &e->key);
}

static void
add(imgw__mem_idx_t *x, ent_t *e)
{
    if (imgw__mem_idx_reserve(x) == 0) {
        imgw__mem_idx_insert(x, e->hash, e);
        e->in = 1;
    }
}

static void
del(imgw__mem_idx_t *x, ent_t *e)
{
    imgw__mem_idx_remove(x, e->hash, e);
    e->in = 0;
}

/* How many of es[0..n) are found where the test expects them (present
 * and the same pointer, or absent). */
static int
agree(imgw__mem_idx_t *x, ent_t *es, int n)
{
    int ok = 0;
    for (int i = 0; i < n; i++)
        ok += find(x, &es[i]) == (es[i].in ? &es[i] : NULL);
    return ok;
}

static size_t
over_sum(const imgw__mem_idx_t *x)
{
    size_t s = 0;
    for (size_t i = 0; i < x->cur.nb; i++)
        s += x->cur.b[i].over;
    return s;
}

/* 20 entries with one home bucket and one tag fill three buckets; a
 * lookup must look past the tag matches and the full buckets. */
TEST(collisions)
{
    imgw__mem_idx_t x;
    ent_t es[20];
    CHECK_EQ_INT(imgw__mem_idx_init(&x, HOFF), 0);
    for (int i = 0; i < 20; i++) {
        /* One hash: one home bucket and tag in every table. */
        es[i].hash = mk(1u << 24, 0x2a);
        es[i].key = i;
        add(&x, &es[i]);
    }
    CHECK_EQ_INT(imgw__mem_idx_count(&x), 20);
    CHECK_EQ_INT(agree(&x, es, 20), 20);
    ent_t miss = {es[0].hash, 99, 0};
    CHECK(find(&x, &miss) == NULL);
    printf("  %zu buckets, overflow counts sum %zu\n", x.cur.nb,
           over_sum(&x));
    CHECK(over_sum(&x) > 0);
    imgw__mem_idx_free(&x);
}

/* Removing entries from the start and middle of a probe run keeps the
 * later ones reachable; removing all brings the overflow counts to 0. */
TEST(remove_in_run)
{
    imgw__mem_idx_t x;
    ent_t es[40];
    CHECK_EQ_INT(imgw__mem_idx_init(&x, HOFF), 0);
    for (int i = 0; i < 40; i++) {
        /* Four home buckets, ten entries each, two tags. */
        es[i].hash = mk((uint32_t)(i % 4) << 23, (uint32_t)(i % 2));
        es[i].key = i;
        add(&x, &es[i]);
    }
    /* The migration of the growth ends before the checks. */
    imgw__mem_idx_step(&x, SIZE_MAX);
    CHECK(x.old.b == NULL);
    CHECK_EQ_INT(agree(&x, es, 40), 40);
    for (int i = 0; i < 40; i += 3)
        del(&x, &es[i]);
    CHECK_EQ_INT(agree(&x, es, 40), 40);
    CHECK_EQ_INT(imgw__mem_idx_count(&x), 40 - 14);
    /* Reinserted into freed slots: still found, nothing doubled. */
    for (int i = 0; i < 40; i += 6)
        add(&x, &es[i]);
    CHECK_EQ_INT(agree(&x, es, 40), 40);
    for (int i = 0; i < 40; i++)
        if (es[i].in)
            del(&x, &es[i]);
    imgw__mem_idx_step(&x, SIZE_MAX);
    CHECK_EQ_INT(imgw__mem_idx_count(&x), 0);
    CHECK_EQ_INT(over_sum(&x), 0);
    CHECK_EQ_INT(agree(&x, es, 40), 40);
    imgw__mem_idx_free(&x);
}

/* 600 entries on one home bucket in every table size: its overflow count
 * saturates at 255 and stays there; lookups stay right. */
TEST(saturated_overflow)
{
    enum { N = 600 };
    imgw__mem_idx_t x;
    ent_t *es = calloc(N, sizeof(*es));
    CHECK_EQ_INT(imgw__mem_idx_init(&x, HOFF), 0);
    for (int i = 0; i < N; i++) {
        es[i].hash = mk(0, (uint32_t)i);
        es[i].key = i;
        add(&x, &es[i]);
    }
    imgw__mem_idx_step(&x, SIZE_MAX);
    CHECK_EQ_INT(x.cur.b[0].over, 255);
    CHECK_EQ_INT(agree(&x, es, N), N);
    for (int i = 0; i < N; i += 2)
        del(&x, &es[i]);
    CHECK_EQ_INT(agree(&x, es, N), N);
    for (int i = 1; i < N; i += 2)
        del(&x, &es[i]);
    CHECK_EQ_INT(imgw__mem_idx_count(&x), 0);
    CHECK_EQ_INT(x.cur.b[0].over, 255);
    CHECK_EQ_INT(agree(&x, es, N), N);
    imgw__mem_idx_free(&x);
    free(es);
}

static uint64_t rng = 88172645463325252ULL;

static uint64_t
next_rand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* Growth migrates a few buckets per insert: lookups in the middle of it
 * find every entry in one table or the other, and the old table goes
 * away before the new one fills. Then a shrink after most are removed. */
TEST(grow_and_shrink)
{
    enum { N = 20000 };
    imgw__mem_idx_t x;
    ent_t *es = calloc(N, sizeof(*es));
    int migrating = 0, checked_mid = 0;
    size_t max_buckets = 0;
    CHECK_EQ_INT(imgw__mem_idx_init(&x, HOFF), 0);
    for (int i = 0; i < N; i++) {
        es[i].hash = (uint32_t)next_rand();
        es[i].key = i;
        add(&x, &es[i]);
        if (x.old.b != NULL) {
            migrating++;
            if (!checked_mid && x.old.nb >= 256 && x.mig > 64) {
                /* Partway through a 256-bucket table's migration. */
                checked_mid = agree(&x, es, i + 1) == i + 1;
                printf("  mid-migration at %d entries: old %zu, new %zu\n",
                       i + 1, x.old.n, x.cur.n);
            }
        }
        /* Every entry counted in one table; never past 6 per bucket. */
        if (x.cur.n + x.old.n > (x.cur.nb) * MEM_IDX_FULL)
            break;
    }
    CHECK_EQ_INT(imgw__mem_idx_count(&x), N);
    CHECK(migrating > 0);
    CHECK(checked_mid);
    CHECK_EQ_INT(agree(&x, es, N), N);
    imgw__mem_idx_step(&x, SIZE_MAX);
    max_buckets = x.cur.nb;
    printf("  %d entries in %zu buckets (%.1f B per entry)\n", N, max_buckets,
           (double)max_buckets * 64 / N);
    CHECK(max_buckets * MEM_IDX_FULL >= N);
    CHECK(max_buckets * 3 <= N); /* more than 3 per bucket: a full table */

    for (int i = 100; i < N; i++)
        del(&x, &es[i]);
    CHECK_EQ_INT(imgw__mem_idx_count(&x), 100);
    imgw__mem_idx_shrink(&x);
    CHECK(x.old.b != NULL);
    /* Lookups while the shrink's migration runs (no inserts: steps). */
    CHECK_EQ_INT(agree(&x, es, N), N);
    for (int k = 0; x.old.b != NULL && k < 100000; k++)
        imgw__mem_idx_step(&x, 16);
    CHECK(x.old.b == NULL);
    printf("  shrunk to %zu buckets for 100 entries\n", x.cur.nb);
    CHECK(x.cur.nb <= 32);
    CHECK_EQ_INT(agree(&x, es, N), N);
    /* A burst right after the shrink, while its migration runs: the
     * reserve finishes the migration and grows. */
    for (int i = 100; i < 2000; i++)
        add(&x, &es[i]);
    imgw__mem_idx_shrink(&x); /* not below the entries: no-op */
    CHECK_EQ_INT(imgw__mem_idx_count(&x), 2000);
    CHECK_EQ_INT(agree(&x, es, N), N);
    imgw__mem_idx_free(&x);
    free(es);
}

/* A shrink started, then inserts overtake its migration: reserve ends
 * the migration and grows instead of overfilling the small table. */
TEST(burst_during_shrink)
{
    enum { N = 5000 };
    imgw__mem_idx_t x;
    ent_t *es = calloc(N, sizeof(*es));
    CHECK_EQ_INT(imgw__mem_idx_init(&x, HOFF), 0);
    for (int i = 0; i < N; i++) {
        es[i].hash = (uint32_t)next_rand();
        es[i].key = i;
        add(&x, &es[i]);
    }
    for (int i = 10; i < N; i++)
        del(&x, &es[i]);
    imgw__mem_idx_step(&x, SIZE_MAX);
    imgw__mem_idx_shrink(&x);
    CHECK(x.old.b != NULL);
    size_t small = x.cur.nb;
    int over = 0;
    for (int i = 10; i < N; i++) {
        add(&x, &es[i]);
        over += x.cur.n + x.old.n > (x.cur.nb) * MEM_IDX_FULL;
    }
    printf("  shrink target %zu buckets, now %zu\n", small, x.cur.nb);
    CHECK_EQ_INT(over, 0);
    CHECK(x.cur.nb > small);
    CHECK_EQ_INT(imgw__mem_idx_count(&x), N);
    CHECK_EQ_INT(agree(&x, es, N), N);
    imgw__mem_idx_free(&x);
    free(es);
}

/* Growth that cannot allocate: reserve still says yes while a slot would
 * be left free, then IMGW_ENOMEM; nothing is lost, and the next reserve
 * with memory grows. */
TEST(reserve_without_memory)
{
    enum { N = 64 };
    imgw__mem_idx_t x;
    ent_t es[N];
    int refused = 0, at = -1;
    CHECK_EQ_INT(imgw__mem_idx_init(&x, HOFF), 0);
    size_t cap = (x.cur.nb) * MEM_IDX_WAYS;
    for (int i = 0; i < N; i++) {
        es[i].hash = (uint32_t)next_rand();
        es[i].key = i;
        es[i].in = 0;
    }
    for (int i = 0; i < N; i++) {
        imgw__alloc_fail_nth(1); /* the next allocation fails */
        int r = imgw__mem_idx_reserve(&x);
        imgw__alloc_fail_nth(0);
        if (r != 0) {
            CHECK_EQ_INT(r, IMGW_ENOMEM);
            if (at < 0)
                at = i;
            refused++;
            continue;
        }
        imgw__mem_idx_insert(&x, es[i].hash, &es[i]);
        es[i].in = 1;
    }
    printf("  refused from entry %d on (capacity %zu)\n", at, cap);
    CHECK_EQ_INT(at, (int)cap - 1);
    CHECK_EQ_INT(imgw__mem_idx_count(&x), cap - 1);
    CHECK_EQ_INT(agree(&x, es, N), N);
    CHECK_EQ_INT(imgw__mem_idx_reserve(&x), 0);
    CHECK(x.cur.nb > cap / MEM_IDX_WAYS);
    CHECK_EQ_INT(agree(&x, es, N), N);
    imgw__mem_idx_free(&x);
}

/* A long random mix of inserts, removals, shrinks and lookups on hashes
 * from a small set (many share bucket and tag), checked against the
 * test's own record of what is in: every entry's lookup after every
 * 64 operations, the count after each. */
TEST(cross_check)
{
    enum { N = 3000, OPS = 200000 };
    imgw__mem_idx_t x;
    ent_t *es = calloc(N, sizeof(*es));
    size_t in = 0, bad_count = 0, bad_find = 0, checks = 0, peak = 0;
    CHECK_EQ_INT(imgw__mem_idx_init(&x, HOFF), 0);
    for (int i = 0; i < N; i++) {
        uint64_t r = next_rand();
        /* 4 bits of tag, 32 home values: collisions galore. */
        es[i].hash = mk(((uint32_t)(r >> 4) & 0x1f) << 20, (uint32_t)r & 0xf);
        es[i].key = i;
    }
    for (int op = 0; op < OPS; op++) {
        ent_t *e = &es[next_rand() % N];
        /* Phases: mostly inserts, then mostly removals, repeated, so the
         * table grows and shrinks several times. */
        int grow_phase = (op / 20000) % 2 == 0;
        int want_in = (int)(next_rand() % 10) < (grow_phase ? 7 : 2);
        if (want_in && !e->in) {
            add(&x, e);
            in += e->in;
        } else if (!want_in && e->in) {
            del(&x, e);
            in--;
        }
        if (op % 5000 == 0)
            imgw__mem_idx_shrink(&x);
        if (op % 7 == 0)
            imgw__mem_idx_step(&x, 1);
        if (in > peak)
            peak = in;
        bad_count += imgw__mem_idx_count(&x) != in;
        if (op % 64 == 0) {
            checks++;
            bad_find += (size_t)(N - agree(&x, es, N));
        }
    }
    printf("  %d operations, peak %zu entries, %zu full checks\n", OPS, peak,
           checks);
    CHECK_EQ_INT(bad_count, 0);
    CHECK_EQ_INT(bad_find, 0);
    CHECK(peak > N / 2);
    imgw__mem_idx_free(&x);
    free(es);
}

static void
count_cb(void *p, void *arg)
{
    (void)p;
    (*(int *)arg)++;
}

/* drain visits every entry once, in both tables of a migration. */
TEST(drain)
{
    imgw__mem_idx_t x;
    ent_t es[500];
    int n = 0;
    CHECK_EQ_INT(imgw__mem_idx_init(&x, HOFF), 0);
    for (int i = 0; i < 500; i++) {
        es[i].hash = (uint32_t)next_rand();
        es[i].key = i;
        add(&x, &es[i]);
    }
    imgw__mem_idx_drain(&x, count_cb, &n);
    CHECK_EQ_INT(n, 500);
    CHECK(x.cur.b == NULL && x.old.b == NULL);
}

int
main(void)
{
    RUN(collisions);
    RUN(remove_in_run);
    RUN(saturated_overflow);
    RUN(grow_and_shrink);
    RUN(burst_during_shrink);
    RUN(reserve_without_memory);
    test_verbose_ = 0; /* the random run checks thousands of times */
    RUN(cross_check);
    test_verbose_ = 1;
    RUN(drain);
    TEST_DONE();
}
