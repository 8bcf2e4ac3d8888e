/*
 * test_uniq.c: unit tests for core/uniq.c, the O(n) recipient builder of
 * group fan-out (distinct members, the sender first, input order kept).
 */
#include "uniq.h"

#include "test.h"

#include <stdio.h>

/* 1 when list[0..n) has no two equal strings. */
static int
all_distinct(const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        for (size_t j = i + 1; j < n; j++)
            if (strcmp(list[i], list[j]) == 0)
                return 0;
    return 1;
}

TEST(basic_order)
{
    imgw_uniq_t u = IMGW_UNIQ_INIT;
    const char *in[] = {"b", "c", "a", "d"};
    size_t k = 99;
    int seen = -1;
    const char *const *r = imgw_uniq_build(&u, "a", in, 4, &k, &seen);
    CHECK(r != NULL);
    CHECK_EQ_INT(k, 4);
    CHECK_EQ_INT(seen, 1);
    CHECK_EQ_STR(r[0], "a"); /* the sender first */
    CHECK_EQ_STR(r[1], "b");
    CHECK_EQ_STR(r[2], "c");
    CHECK_EQ_STR(r[3], "d");
    imgw_uniq_free(&u);
}

TEST(sender_not_member)
{
    imgw_uniq_t u = IMGW_UNIQ_INIT;
    const char *in[] = {"x", "y"};
    size_t k;
    int seen = -1;
    const char *const *r = imgw_uniq_build(&u, "me", in, 2, &k, &seen);
    CHECK(r != NULL);
    CHECK_EQ_INT(seen, 0);
    CHECK_EQ_INT(k, 3);
    CHECK_EQ_STR(r[0], "me");
    imgw_uniq_free(&u);
}

TEST(duplicates)
{
    imgw_uniq_t u = IMGW_UNIQ_INIT;
    /* Equal strings at different addresses: compared by content. */
    char a1[] = "alice", a2[] = "alice", b1[] = "bob", b2[] = "bob";
    const char *in[] = {a1, b1, "s", a2, b2, "s", "carol", a1};
    size_t k;
    int seen = 0;
    const char *const *r = imgw_uniq_build(&u, "s", in, 8, &k, &seen);
    CHECK(r != NULL);
    CHECK_EQ_INT(k, 4);
    CHECK_EQ_INT(seen, 1);
    CHECK_EQ_STR(r[0], "s");
    CHECK_EQ_STR(r[1], "alice");
    CHECK(r[1] == a1); /* the first occurrence is kept */
    CHECK_EQ_STR(r[2], "bob");
    CHECK_EQ_STR(r[3], "carol");
    imgw_uniq_free(&u);
}

TEST(no_first_empty)
{
    imgw_uniq_t u = IMGW_UNIQ_INIT;
    size_t k = 7;
    int seen = 7;
    const char *const *r = imgw_uniq_build(&u, NULL, NULL, 0, &k, &seen);
    CHECK(r != NULL);
    CHECK_EQ_INT(k, 0);
    CHECK_EQ_INT(seen, 0);
    const char *in[] = {"p", "q", "p"};
    r = imgw_uniq_build(&u, NULL, in, 3, &k, NULL);
    CHECK_EQ_INT(k, 2);
    CHECK_EQ_STR(r[0], "p");
    CHECK_EQ_STR(r[1], "q");
    imgw_uniq_free(&u);
}

/* A 1000-member group with the sender inside and every member twice, the
 * scratch reused across calls of different sizes (stale slots must not
 * leak from the big call into the small one). */
TEST(large_group_reuse)
{
    imgw_uniq_t u = IMGW_UNIQ_INIT;
    enum { N = 1000 };
    static char names[N][16];
    static const char *in[2 * N];
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof(names[i]), "m%d", i);
        in[i] = names[i];
        in[N + i] = names[N - 1 - i];
    }
    size_t k;
    int seen;
    const char *const *r = imgw_uniq_build(&u, "m500", in, 2 * N, &k, &seen);
    CHECK(r != NULL);
    CHECK_EQ_INT(k, N);
    CHECK_EQ_INT(seen, 1);
    CHECK_EQ_STR(r[0], "m500");
    CHECK_EQ_STR(r[1], "m0");
    CHECK_EQ_STR(r[N - 1], "m999");
    CHECK(all_distinct(r, k));
    int order_ok = 1;
    for (int i = 0, j = 1; i < N; i++) {
        if (i == 500)
            continue;
        order_ok &= strcmp(r[j++], names[i]) == 0;
    }
    CHECK(order_ok);
    /* Small call after the big one: only "m1" and "z" now. */
    const char *small[] = {"m1", "m1", "z"};
    r = imgw_uniq_build(&u, "z", small, 3, &k, &seen);
    CHECK_EQ_INT(k, 2);
    CHECK_EQ_INT(seen, 1);
    CHECK_EQ_STR(r[0], "z");
    CHECK_EQ_STR(r[1], "m1");
    /* And big again: same answer as the first time. */
    r = imgw_uniq_build(&u, "m500", in, 2 * N, &k, &seen);
    CHECK_EQ_INT(k, N);
    CHECK(all_distinct(r, k));
    imgw_uniq_free(&u);
    CHECK(u.slots_ == NULL && u.list_ == NULL);
}

/* Many distinct keys that share hash buckets: correctness does not
 * depend on the hash spreading them (probing compares content). */
TEST(many_distinct)
{
    imgw_uniq_t u = IMGW_UNIQ_INIT;
    enum { N = 5000 };
    static char names[N][24];
    static const char *in[N];
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof(names[i]), "user-%07d", i * 7919);
        in[i] = names[i];
    }
    size_t k;
    const char *const *r = imgw_uniq_build(&u, NULL, in, N, &k, NULL);
    CHECK(r != NULL);
    CHECK_EQ_INT(k, N);
    int same = 1;
    for (int i = 0; i < N; i++)
        same &= r[i] == in[i];
    CHECK(same);
    imgw_uniq_free(&u);
}

int
main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    RUN(basic_order);
    RUN(sender_not_member);
    RUN(duplicates);
    RUN(no_first_empty);
    RUN(large_group_reuse);
    RUN(many_distinct);
    TEST_DONE();
}
