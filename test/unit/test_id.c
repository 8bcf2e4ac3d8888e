/*
 * test_id.c: unit tests for core/id.c (message ids).
 *
 * Mostly single-threaded with an injected clock; test_concurrent_unique
 * runs 4 threads on one generator with the real clock and checks, after
 * sorting, that no id was handed out twice and that each thread's ids
 * increase. IMGW_TEST_SCALE (default 1, 0.25 under TSAN) scales its
 * 4 x 1,000,000 ids.
 */
#include "id.h"

#include "err.h"
#include "test.h"

#include <pthread.h>
#include <time.h>

#if defined(__SANITIZE_THREAD__)
#define UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define UNDER_TSAN 1
#endif
#endif
#ifndef UNDER_TSAN
#define UNDER_TSAN 0
#endif

#define T0 (IMGW_ID_EPOCH_MS + 86400000LL * 400) /* some day in 2025 */

static size_t
scaled(size_t n)
{
    const char *s = getenv("IMGW_TEST_SCALE");
    double f = s ? atof(s) : (UNDER_TSAN ? 0.25 : 1.0);
    if (f <= 0)
        f = 1.0;
    size_t r = (size_t)((double)n * f);
    return r < 1000 ? 1000 : r;
}

static int64_t
wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static double
now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

TEST(layout)
{
    imgw_idgen_t g;
    imgw_id_init(&g, 7);
    uint64_t a = imgw_id_next(&g, T0);
    uint64_t b = imgw_id_next(&g, T0);
    CHECK_EQ_INT(imgw_id_time_ms(a), T0);
    CHECK_EQ_INT(imgw_id_node(a), 7);
    CHECK_EQ_INT(a & 0xfff, 0);
    CHECK_EQ_INT(b & 0xfff, 1);
    CHECK_EQ_INT(b, a + 1);
    CHECK((a >> 63) == 0);
    CHECK_EQ_INT(a >> 22, (uint64_t)(T0 - IMGW_ID_EPOCH_MS));
    /* a new millisecond restarts the sequence */
    uint64_t c = imgw_id_next(&g, T0 + 5);
    CHECK_EQ_INT(imgw_id_time_ms(c), T0 + 5);
    CHECK_EQ_INT(c & 0xfff, 0);
    /* a clock before the epoch counts from the epoch */
    imgw_idgen_t g2;
    imgw_id_init(&g2, 1);
    uint64_t d = imgw_id_next(&g2, 1000);
    CHECK_EQ_INT(imgw_id_time_ms(d), IMGW_ID_EPOCH_MS);
    CHECK(d > 0);
}

TEST(node_bits)
{
    int nodes[] = {0, 1, 2, 511, 512, 1000, 1023};
    int ok = 1;
    for (size_t i = 0; i < sizeof(nodes) / sizeof(nodes[0]); i++) {
        imgw_idgen_t g;
        imgw_id_init(&g, nodes[i]);
        for (int k = 0; k < 5000; k++) { /* crosses a borrowed ms */
            uint64_t id = imgw_id_next(&g, T0);
            ok &= imgw_id_node(id) == nodes[i];
            ok &= imgw_id_time_ms(id) == T0 || imgw_id_time_ms(id) == T0 + 1;
        }
    }
    CHECK(ok);
    /* out-of-range node ids are masked, never spill into the time bits */
    imgw_idgen_t g;
    imgw_id_init(&g, 1024 + 5);
    uint64_t id = imgw_id_next(&g, T0);
    CHECK_EQ_INT(imgw_id_node(id), 5);
    CHECK_EQ_INT(imgw_id_time_ms(id), T0);
}

TEST(monotonic_real_clock)
{
    imgw_idgen_t g;
    imgw_id_init(&g, 3);
    size_t n = scaled(1000000), bad = 0;
    uint64_t prev = 0;
    int64_t t_before = wall_ms();
    for (size_t i = 0; i < n; i++) {
        uint64_t id = imgw_id_next(&g, wall_ms());
        bad += id <= prev;
        prev = id;
    }
    CHECK_EQ_INT(bad, 0);
    CHECK(imgw_id_time_ms(prev) >= t_before);
}

TEST(clock_backwards)
{
    imgw_idgen_t g;
    imgw_id_init(&g, 9);
    uint64_t a = imgw_id_next(&g, T0);
    uint64_t b = imgw_id_next(&g, T0 - 1000); /* clock stepped back 1 s */
    uint64_t c = imgw_id_next(&g, T0 - 999);
    uint64_t d = imgw_id_next(&g, T0 - 5000000);
    CHECK(b > a);
    CHECK(c > b);
    CHECK(d > c);
    CHECK_EQ_INT(imgw_id_time_ms(d), T0);  /* never goes back in time */
    uint64_t e = imgw_id_next(&g, T0 + 1); /* the clock catches up */
    CHECK(e > d);
    CHECK_EQ_INT(imgw_id_time_ms(e), T0 + 1);
    CHECK_EQ_INT(e & 0xfff, 0);
}

TEST(borrow_next_ms)
{
    imgw_idgen_t g;
    imgw_id_init(&g, 1);
    uint64_t prev = 0;
    size_t bad = 0, in_t0 = 0, in_t1 = 0, in_t2 = 0;
    for (int i = 0; i < 4096 * 2 + 10; i++) {
        uint64_t id = imgw_id_next(&g, T0); /* the clock stands still */
        bad += id <= prev;
        prev = id;
        int64_t t = imgw_id_time_ms(id);
        in_t0 += t == T0;
        in_t1 += t == T0 + 1;
        in_t2 += t == T0 + 2;
    }
    CHECK_EQ_INT(bad, 0);
    CHECK_EQ_INT(in_t0, 4096);
    CHECK_EQ_INT(in_t1, 4096);
    CHECK_EQ_INT(in_t2, 10);
    /* the real clock reaching a borrowed ms does not reuse it */
    uint64_t a = imgw_id_next(&g, T0 + 2);
    CHECK(a > prev);
    CHECK_EQ_INT(imgw_id_time_ms(a), T0 + 2);
    CHECK_EQ_INT(a & 0xfff, 10);
}

/* ---- concurrency --------------------------------------------------------- */

typedef struct worker_s {
    imgw_idgen_t *g;
    uint64_t *out;
    size_t n;
    size_t not_increasing;
} worker_t;

static void *
worker(void *arg)
{
    worker_t *w = arg;
    uint64_t prev = 0;
    for (size_t i = 0; i < w->n; i++) {
        uint64_t id = imgw_id_next(w->g, wall_ms());
        w->not_increasing += id <= prev;
        prev = id;
        w->out[i] = id;
    }
    return NULL;
}

static int
cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

TEST(concurrent_unique)
{
    enum { NT = 4 };
    size_t per = scaled(1000000);
    imgw_idgen_t g;
    worker_t w[NT];
    pthread_t th[NT];
    uint64_t *all = malloc(per * NT * sizeof(uint64_t));

    imgw_id_init(&g, 42);
    double t0 = now_s();
    for (int i = 0; i < NT; i++) {
        w[i].g = &g;
        w[i].out = all + per * (size_t)i;
        w[i].n = per;
        w[i].not_increasing = 0;
        pthread_create(&th[i], NULL, worker, &w[i]);
    }
    size_t not_inc = 0;
    for (int i = 0; i < NT; i++) {
        pthread_join(th[i], NULL);
        not_inc += w[i].not_increasing;
    }
    double dt = now_s() - t0;
    qsort(all, per * NT, sizeof(uint64_t), cmp_u64);
    size_t dups = 0, bad_node = 0;
    for (size_t i = 0; i < per * NT; i++) {
        dups += i > 0 && all[i] == all[i - 1];
        bad_node += imgw_id_node(all[i]) != 42;
    }
    CHECK_EQ_INT(not_inc, 0);
    CHECK_EQ_INT(dups, 0);
    CHECK_EQ_INT(bad_node, 0);
    printf("  info  %zu ids from %d threads in %.3f s (%.1f M/s)\n", per * NT,
           NT, dt, (double)(per * NT) / dt / 1e6);
    free(all);
}

/* ---- decimal form -------------------------------------------------------- */

static int
parse_str(const char *s, uint64_t *out)
{
    return imgw_id_parse(s, strlen(s), out);
}

TEST(format_parse)
{
    char buf[21];
    uint64_t v = 0;

    CHECK_EQ_INT(imgw_id_format(0, buf), 1);
    CHECK_EQ_STR(buf, "0");
    CHECK_EQ_INT(imgw_id_format(1234567890123ULL, buf), 13);
    CHECK_EQ_STR(buf, "1234567890123");
    CHECK_EQ_INT(imgw_id_format(UINT64_MAX, buf), 20);
    CHECK_EQ_STR(buf, "18446744073709551615");
    CHECK_EQ_INT(parse_str("18446744073709551615", &v), 0);
    CHECK(v == UINT64_MAX);
    CHECK_EQ_INT(parse_str("0", &v), 0);
    CHECK(v == 0);
    CHECK_EQ_INT(parse_str("00042", &v), 0);
    CHECK(v == 42);

    /* round trip on real ids */
    imgw_idgen_t g;
    imgw_id_init(&g, 77);
    int ok = 1;
    for (int i = 0; i < 10000; i++) {
        uint64_t id = imgw_id_next(&g, T0 + i / 3), back = 0;
        size_t n = imgw_id_format(id, buf);
        ok &= n == strlen(buf);
        ok &= imgw_id_parse(buf, n, &back) == 0 && back == id;
    }
    CHECK(ok);

    /* the two-digits-at-a-time formatter against printf, at every digit
     * count and around every power of ten */
    ok = 1;
    for (int d = 0; d < 20; d++) {
        uint64_t p10 = 1;
        for (int j = 0; j < d; j++)
            p10 *= 10;
        for (int off = -2; off <= 2; off++) {
            uint64_t x = p10 + (uint64_t)(int64_t)off;
            char want[24];
            snprintf(want, sizeof(want), "%llu", (unsigned long long)x);
            ok &= imgw_id_format(x, buf) == strlen(want) &&
                  strcmp(buf, want) == 0;
        }
    }
    CHECK(ok);

    /* a length-bounded parse ignores what follows */
    CHECK_EQ_INT(imgw_id_parse("123abc", 3, &v), 0);
    CHECK(v == 123);

    /* junk */
    v = 99;
    CHECK_EQ_INT(parse_str("", &v), IMGW_EINVAL);
    CHECK_EQ_INT(imgw_id_parse(NULL, 3, &v), IMGW_EINVAL);
    CHECK_EQ_INT(parse_str("12a", &v), IMGW_EINVAL);
    CHECK_EQ_INT(parse_str("-1", &v), IMGW_EINVAL);
    CHECK_EQ_INT(parse_str("+1", &v), IMGW_EINVAL);
    CHECK_EQ_INT(parse_str(" 1", &v), IMGW_EINVAL);
    CHECK_EQ_INT(parse_str("1 ", &v), IMGW_EINVAL);
    CHECK_EQ_INT(parse_str("0x10", &v), IMGW_EINVAL);
    CHECK_EQ_INT(parse_str("1.5", &v), IMGW_EINVAL);
    CHECK_EQ_INT(imgw_id_parse("1\0"
                               "2",
                               3, &v),
                 IMGW_EINVAL);
    /* overflow and length */
    CHECK_EQ_INT(parse_str("18446744073709551616", &v), IMGW_EINVAL);
    CHECK_EQ_INT(parse_str("99999999999999999999", &v), IMGW_EINVAL);
    CHECK_EQ_INT(parse_str("000000000000000000001", &v), IMGW_EINVAL);
    CHECK_EQ_INT(parse_str("184467440737095516150", &v), IMGW_EINVAL);
    CHECK(v == 99); /* untouched on error */
}

int
main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    RUN(layout);
    RUN(node_bits);
    RUN(monotonic_real_clock);
    RUN(clock_backwards);
    RUN(borrow_next_ms);
    RUN(concurrent_unique);
    RUN(format_parse);
    TEST_DONE();
}
