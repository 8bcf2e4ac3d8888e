/*
 * test_alloc.c: unit tests for base/alloc.c, the one allocator policy:
 * the aborting imgw_x* family works and is never injected, the imgw_try_*
 * family works, the failmalloc countdown (imgw__alloc_fail_nth) fails
 * exactly the nth try allocation once, whatever its kind, cJSON's
 * allocations go through it once installed, and the IMGW_FAILMALLOC
 * environment switch counts only from imgw_alloc_arm (the first
 * connection), once or with IMGW_FAILMALLOC_EVERY from the Nth on.
 */
#include "alloc.h"

#include <stdint.h>
#include <stdlib.h>

#include <cjson/cJSON.h>

#include "test.h"

TEST(x_family)
{
    char *p = imgw_xmalloc(16);
    memcpy(p, "0123456789abcde", 16);
    p = imgw_xrealloc(p, 4096);
    CHECK_EQ_STR(p, "0123456789abcde"); /* realloc keeps the bytes */
    imgw_free(p);
    unsigned char *z = imgw_xcalloc(64, 4);
    int zero = 1;
    for (size_t i = 0; i < 256; i++)
        zero &= z[i] == 0;
    CHECK(zero);
    imgw_free(z);
    char *d = imgw_xstrdup("hello");
    CHECK_EQ_STR(d, "hello");
    imgw_free(d);
    /* Size 0 still gives a pointer one may free. */
    p = imgw_xmalloc(0);
    CHECK(p != NULL);
    imgw_free(p);
}

TEST(try_family)
{
    char *s = imgw_try_strdup("abc");
    CHECK(s != NULL);
    CHECK_EQ_STR(s, "abc");
    char *t = imgw_try_strndup("abcdef", 3);
    CHECK(t != NULL);
    CHECK_EQ_STR(t, "abc");
    char *u = imgw_try_strndup("ab", 10); /* shorter than n */
    CHECK(u != NULL);
    CHECK_EQ_STR(u, "ab");
    unsigned char *c = imgw_try_calloc(8, 8);
    CHECK(c != NULL && c[0] == 0 && c[63] == 0);
    /* n is rounded up to the alignment, as aligned_alloc requires. */
    void *a = imgw_try_aligned_alloc(64, 100);
    CHECK(a != NULL);
    CHECK_EQ_INT((uintptr_t)a % 64, 0);
    imgw_free(s);
    imgw_free(t);
    imgw_free(u);
    imgw_free(c);
    imgw_free(a);
    imgw_free(NULL); /* like free(3) */
}

TEST(fail_nth_countdown)
{
    void *p[4];

    CHECK_EQ_INT(imgw__alloc_fail_nth(3), 0); /* nothing was pending */
    p[0] = imgw_try_malloc(8);
    p[1] = imgw_try_malloc(8);
    p[2] = imgw_try_malloc(8); /* the third fails */
    p[3] = imgw_try_malloc(8); /* once: the next works again */
    CHECK(p[0] != NULL);
    CHECK(p[1] != NULL);
    CHECK(p[2] == NULL);
    CHECK(p[3] != NULL);
    CHECK_EQ_INT(imgw__alloc_fail_nth(0), 0); /* it has happened */
    for (int i = 0; i < 4; i++)
        imgw_free(p[i]);

    /* An armed countdown that has not fired yet is reported and can be
     * turned off. */
    CHECK_EQ_INT(imgw__alloc_fail_nth(5), 0);
    void *q = imgw_try_malloc(8);
    CHECK(q != NULL);
    CHECK_EQ_INT(imgw__alloc_fail_nth(0), 4);
    imgw_free(q);
    q = imgw_try_malloc(8);
    CHECK(q != NULL); /* off */
    imgw_free(q);
}

TEST(fail_nth_every_kind)
{
    /* Every try function counts and fails; the x family never does. */
    imgw__alloc_fail_nth(1);
    CHECK(imgw_try_calloc(1, 8) == NULL);
    imgw__alloc_fail_nth(1);
    CHECK(imgw_try_strdup("x") == NULL);
    imgw__alloc_fail_nth(1);
    CHECK(imgw_try_strndup("xyz", 2) == NULL);
    imgw__alloc_fail_nth(1);
    CHECK(imgw_try_aligned_alloc(16, 16) == NULL);

    char *keep = imgw_try_strdup("kept");
    CHECK(keep != NULL);
    imgw__alloc_fail_nth(1);
    char *bigger = imgw_try_realloc(keep, 1 << 20);
    CHECK(bigger == NULL);
    CHECK_EQ_STR(keep, "kept"); /* a failed realloc leaves the block */
    imgw_free(keep);

    imgw__alloc_fail_nth(1);
    void *x = imgw_xmalloc(8); /* not injected: the countdown waits */
    CHECK(x != NULL);
    CHECK_EQ_INT(imgw__alloc_fail_nth(0), 1);
    imgw_free(x);
}

TEST(cjson_routed)
{
    imgw_alloc_install_cjson();
    cJSON *o = cJSON_CreateObject();
    CHECK(o != NULL);
    cJSON_Delete(o);
    imgw__alloc_fail_nth(1);
    o = cJSON_CreateObject(); /* its one allocation is the injected one */
    CHECK(o == NULL);
    CHECK_EQ_INT(imgw__alloc_fail_nth(0), 0);
    o = cJSON_Parse("{\"a\":[1,2,3]}");
    CHECK(o != NULL);
    cJSON_Delete(o);
}

/* Last: the environment switch has no way back but IMGW_FAILMALLOC=0. */
TEST(env_switch)
{
    void *p[8];

    setenv("IMGW_FAILMALLOC", "2", 1);
    unsetenv("IMGW_FAILMALLOC_EVERY");
    imgw_alloc_init();
    /* Not armed yet (no connection accepted): start-up never fails. */
    int all = 1;
    for (int i = 0; i < 8; i++) {
        p[i] = imgw_try_malloc(8);
        all &= p[i] != NULL;
    }
    CHECK(all);
    for (int i = 0; i < 8; i++)
        imgw_free(p[i]);

    imgw_alloc_arm();
    p[0] = imgw_try_malloc(8);
    p[1] = imgw_try_malloc(8); /* the 2nd after arming */
    p[2] = imgw_try_malloc(8);
    CHECK(p[0] != NULL);
    CHECK(p[1] == NULL);
    CHECK(p[2] != NULL); /* once */
    imgw_free(p[0]);
    imgw_free(p[2]);

    /* EVERY: from the Nth counted allocation on, all fail (3 counted so
     * far, so the 4th and everything after it). */
    setenv("IMGW_FAILMALLOC", "4", 1);
    setenv("IMGW_FAILMALLOC_EVERY", "1", 1);
    imgw_alloc_init();
    p[0] = imgw_try_malloc(8);
    p[1] = imgw_try_malloc(8);
    p[2] = imgw_try_calloc(1, 8);
    CHECK(p[0] == NULL);
    CHECK(p[1] == NULL);
    CHECK(p[2] == NULL);

    setenv("IMGW_FAILMALLOC", "0", 1);
    imgw_alloc_init();
    p[0] = imgw_try_malloc(8);
    CHECK(p[0] != NULL); /* off again */
    imgw_free(p[0]);
}

int
main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    RUN(x_family);
    RUN(try_family);
    RUN(fail_nth_countdown);
    RUN(fail_nth_every_kind);
    RUN(cjson_routed);
    RUN(env_switch);
    TEST_DONE();
}
