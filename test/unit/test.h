/*
 * test.h: the unit tests' tiny harness. Each test binary is one module's
 * tests: TEST(name) functions registered in main() with RUN(name); CHECK
 * prints and counts every assertion so a test always shows what it checked.
 * The binary ends with "N passed, N failed" and exits 1 on any failure.
 */
#ifndef IMGW_TEST_H
#define IMGW_TEST_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test_passed_, test_failed_;
static const char *test_current_ = "";
static int test_verbose_ = 1;

#define CHECK(cond)                                                          \
    do {                                                                     \
        if (cond) {                                                          \
            test_passed_++;                                                  \
            if (test_verbose_)                                               \
                printf("  ok    %s: %s\n", test_current_, #cond);           \
        } else {                                                             \
            test_failed_++;                                                  \
            printf("  FAIL  %s: %s (%s:%d)\n", test_current_, #cond,         \
                   __FILE__, __LINE__);                                      \
        }                                                                    \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                   \
    do {                                                                     \
        long long test_a_ = (long long)(a), test_b_ = (long long)(b);        \
        if (test_a_ == test_b_) {                                            \
            test_passed_++;                                                  \
            if (test_verbose_)                                               \
                printf("  ok    %s: %s == %s (%lld)\n", test_current_, #a,   \
                       #b, test_a_);                                         \
        } else {                                                             \
            test_failed_++;                                                  \
            printf("  FAIL  %s: %s == %s (%lld != %lld) (%s:%d)\n",          \
                   test_current_, #a, #b, test_a_, test_b_, __FILE__,        \
                   __LINE__);                                                \
        }                                                                    \
    } while (0)

#define CHECK_EQ_STR(a, b)                                                   \
    do {                                                                     \
        const char *test_a_ = (a), *test_b_ = (b);                           \
        if (test_a_ && test_b_ && strcmp(test_a_, test_b_) == 0) {           \
            test_passed_++;                                                  \
            if (test_verbose_)                                               \
                printf("  ok    %s: %s == \"%s\"\n", test_current_, #a,      \
                       test_b_);                                             \
        } else {                                                             \
            test_failed_++;                                                  \
            printf("  FAIL  %s: %s == \"%s\" (got \"%s\") (%s:%d)\n",        \
                   test_current_, #a, test_b_ ? test_b_ : "(null)",          \
                   test_a_ ? test_a_ : "(null)", __FILE__, __LINE__);        \
        }                                                                    \
    } while (0)

#define TEST(name) static void test_##name(void)
#define RUN(name)                                                            \
    do {                                                                     \
        test_current_ = #name;                                               \
        printf("# %s\n", #name);                                             \
        test_##name();                                                       \
    } while (0)

#define TEST_DONE()                                                          \
    do {                                                                     \
        printf("%d passed, %d failed\n", test_passed_, test_failed_);        \
        return test_failed_ ? 1 : 0;                                         \
    } while (0)

#endif
