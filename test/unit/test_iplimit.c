/*
 * test_iplimit.c: unit tests for net/iplimit.c, the per-address open
 * connection counts behind server.max_connections_per_ip: the limit per
 * address, addresses counted apart, release making room, an address
 * forgotten when its count reaches zero, limit 0 meaning none, tables that
 * grow under many addresses (deletion keeping every probe chain intact),
 * and IMGW_ENOMEM when growing fails.
 */
#include "iplimit.h"

#include "alloc.h"
#include "err.h"
#include "test.h"

static imgw_ipaddr_t
addr_of(uint32_t v)
{
    imgw_ipaddr_t a;
    memset(&a, 0, sizeof(a));
    a.b[10] = 0xff; /* ::ffff:a.b.c.d */
    a.b[11] = 0xff;
    a.b[12] = (uint8_t)(v >> 24);
    a.b[13] = (uint8_t)(v >> 16);
    a.b[14] = (uint8_t)(v >> 8);
    a.b[15] = (uint8_t)v;
    return a;
}

TEST(limit_per_address)
{
    imgw_iplimit_t *t = NULL;
    imgw_ipaddr_t a = addr_of(0x0a000001), b = addr_of(0x0a000002);

    CHECK_EQ_INT(imgw_iplimit_new(&t), 0);
    CHECK_EQ_INT(imgw_iplimit_count(t), 0);
    CHECK_EQ_INT(imgw_iplimit_acquire(t, &a, 2), 1);
    CHECK_EQ_INT(imgw_iplimit_acquire(t, &a, 2), 1);
    CHECK_EQ_INT(imgw_iplimit_acquire(t, &a, 2), 0); /* the third: refused */
    CHECK_EQ_INT(imgw_iplimit_acquire(t, &b, 2), 1); /* b is counted apart */
    CHECK_EQ_INT(imgw_iplimit_count(t), 2);
    imgw_iplimit_release(t, &a);
    CHECK_EQ_INT(imgw_iplimit_acquire(t, &a, 2), 1); /* room again */
    CHECK_EQ_INT(imgw_iplimit_acquire(t, &a, 2), 0);
    /* A lower limit applies to the count already held. */
    CHECK_EQ_INT(imgw_iplimit_acquire(t, &a, 1), 0);
    imgw_iplimit_release(t, &a);
    imgw_iplimit_release(t, &a);
    CHECK_EQ_INT(imgw_iplimit_count(t), 1); /* a is forgotten at zero */
    imgw_iplimit_release(t, &b);
    CHECK_EQ_INT(imgw_iplimit_count(t), 0);
    /* Releasing an address that holds nothing changes nothing. */
    imgw_iplimit_release(t, &b);
    CHECK_EQ_INT(imgw_iplimit_count(t), 0);
    imgw_iplimit_free(t);
}

TEST(no_limit)
{
    imgw_iplimit_t *t = NULL;
    imgw_ipaddr_t a = addr_of(0x7f000001);
    int ok = 1;

    CHECK_EQ_INT(imgw_iplimit_new(&t), 0);
    for (int i = 0; i < 1000; i++)
        ok &= imgw_iplimit_acquire(t, &a, 0) == 1;
    CHECK(ok);
    CHECK_EQ_INT(imgw_iplimit_count(t), 1);
    for (int i = 0; i < 999; i++)
        imgw_iplimit_release(t, &a);
    CHECK_EQ_INT(imgw_iplimit_count(t), 1); /* one connection left */
    imgw_iplimit_release(t, &a);
    CHECK_EQ_INT(imgw_iplimit_count(t), 0);
    imgw_iplimit_free(t);
}

TEST(many_addresses)
{
    enum { N = 20000 };
    imgw_iplimit_t *t = NULL;
    int ok = 1;

    CHECK_EQ_INT(imgw_iplimit_new(&t), 0);
    for (uint32_t i = 0; i < N; i++) {
        imgw_ipaddr_t a = addr_of(0xc0000000u + i);
        ok &= imgw_iplimit_acquire(t, &a, 1) == 1;
    }
    CHECK(ok);
    CHECK_EQ_INT(imgw_iplimit_count(t), N);
    /* Every address is still found after the tables grew: all refused. */
    ok = 1;
    for (uint32_t i = 0; i < N; i++) {
        imgw_ipaddr_t a = addr_of(0xc0000000u + i);
        ok &= imgw_iplimit_acquire(t, &a, 1) == 0;
    }
    CHECK(ok);
    /* Drop every other one; the rest must still be found (deletion keeps
     * probe chains whole), the dropped ones admitted again. */
    for (uint32_t i = 0; i < N; i += 2) {
        imgw_ipaddr_t a = addr_of(0xc0000000u + i);
        imgw_iplimit_release(t, &a);
    }
    CHECK_EQ_INT(imgw_iplimit_count(t), N / 2);
    int kept = 1, freed = 1;
    for (uint32_t i = 0; i < N; i++) {
        imgw_ipaddr_t a = addr_of(0xc0000000u + i);
        int r = imgw_iplimit_acquire(t, &a, 1);
        if (i % 2)
            kept &= r == 0;
        else
            freed &= r == 1;
    }
    CHECK(kept);
    CHECK(freed);
    CHECK_EQ_INT(imgw_iplimit_count(t), N);
    imgw_iplimit_free(t);
}

TEST(grow_fails)
{
    imgw_iplimit_t *t = NULL;
    imgw_ipaddr_t a = addr_of(0x01020304);

    CHECK_EQ_INT(imgw_iplimit_new(&t), 0);
    /* The first address of a shard allocates its table. */
    imgw__alloc_fail_nth(1);
    CHECK_EQ_INT(imgw_iplimit_acquire(t, &a, 5), IMGW_ENOMEM);
    CHECK_EQ_INT(imgw_iplimit_count(t), 0); /* nothing was counted */
    CHECK_EQ_INT(imgw_iplimit_acquire(t, &a, 5), 1);
    CHECK_EQ_INT(imgw_iplimit_count(t), 1);
    imgw_iplimit_free(t);

    imgw__alloc_fail_nth(1);
    t = NULL;
    CHECK_EQ_INT(imgw_iplimit_new(&t), IMGW_ENOMEM);
    CHECK(t == NULL);
}

int
main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    RUN(limit_per_address);
    RUN(no_limit);
    RUN(many_addresses);
    RUN(grow_fails);
    TEST_DONE();
}
