/*
 * test_pool.c: unit tests for src/base/pool.c, the per-loop free list of
 * same-sized blocks (store completion records, send contexts).
 *
 * Checks that a kept block is handed out again (LIFO), that no more than
 * max are kept (the caller frees the rest), that a zeroed pool keeps
 * nothing, and that under AddressSanitizer nothing is kept at all, so a
 * use after free of a pooled object is still reported.
 */
#include "alloc.h"
#include "pool.h"
#include "test.h"

#include <string.h>

#if defined(__SANITIZE_ADDRESS__)
#define ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ASAN 1
#endif
#endif
#ifndef ASAN
#define ASAN 0
#endif

TEST(reuse_and_bound)
{
    imgw_pool_t p;
    imgw_pool_init(&p, 64, 2);
    CHECK(imgw_pool_get(&p) == NULL); /* empty: the caller allocates */
    void *a = imgw_xmalloc(p.size), *b = imgw_xmalloc(p.size),
         *c = imgw_xmalloc(p.size);
    int ka = imgw_pool_put(&p, a), kb = imgw_pool_put(&p, b);
    int kc = imgw_pool_put(&p, c);
    printf("  kept a=%d b=%d c=%d (asan=%d)\n", ka, kb, kc, ASAN);
    CHECK_EQ_INT(kc, 0); /* over max: never kept */
    imgw_free(c);
    if (ASAN) {
        CHECK_EQ_INT(ka, 0);
        CHECK_EQ_INT(kb, 0);
        imgw_free(a);
        imgw_free(b);
        CHECK(imgw_pool_get(&p) == NULL);
    } else {
        CHECK_EQ_INT(ka, 1);
        CHECK_EQ_INT(kb, 1);
        CHECK_EQ_INT((int)p.n, 2);
        CHECK(imgw_pool_get(&p) == b); /* last in, first out: warm */
        CHECK(imgw_pool_get(&p) == a);
        CHECK(imgw_pool_get(&p) == NULL);
        CHECK(imgw_pool_put(&p, a) == 1);
        imgw_free(b);
    }
    imgw_pool_drain(&p); /* frees a when kept */
    CHECK_EQ_INT((int)p.n, 0);
    CHECK(imgw_pool_get(&p) == NULL);
}

TEST(zeroed_keeps_nothing)
{
    imgw_pool_t p;
    memset(&p, 0, sizeof(p)); /* a harness's calloc'ed owner */
    void *a = imgw_xmalloc(32);
    CHECK_EQ_INT(imgw_pool_put(&p, a), 0);
    imgw_free(a);
    CHECK(imgw_pool_get(&p) == NULL);
    imgw_pool_drain(&p);
}

TEST(tiny_size_holds_a_link)
{
    imgw_pool_t p;
    imgw_pool_init(&p, 1, 4);
    CHECK(p.size >= sizeof(void *));
}

int
main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    RUN(reuse_and_bound);
    RUN(zeroed_keeps_nothing);
    RUN(tiny_size_holds_a_link);
    TEST_DONE();
}
