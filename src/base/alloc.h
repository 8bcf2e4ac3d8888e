/*
 * alloc.h: imgw's one allocator policy. Nothing in src/ outside
 * base/alloc.c calls malloc, calloc, realloc, free or strdup directly
 * (tools/lint.sh checks it in `make test`).
 *
 * Two families:
 *
 *   imgw_x*      abort the process when memory is exhausted; for fixed,
 *                small sizes set by imgw itself (start-up structures), where
 *                there is no sensible way on and every caller's NULL check
 *                would be dead code. Never subject to failure injection.
 *   imgw_try_*   return NULL on failure and must be checked (they are
 *                warn_unused_result); for every size a peer controls and
 *                every allocation along a connection's or a request's life,
 *                where the answer to NULL is an error reply or closing that
 *                one connection. Subject to failure injection.
 *
 * imgw_free frees memory from either family (and is free(3)). Memory that
 * a library allocates is released with that library's function (cJSON's
 * cJSON_free / cJSON_Delete, hiredis's freeReplyObject, ...); cJSON's own
 * allocations are routed through imgw_try_malloc by
 * imgw_alloc_install_cjson, so they are injected too.
 *
 * Failure injection (the one failmalloc of the tree):
 *   - IMGW_FAILMALLOC=N in the environment makes the Nth imgw_try_*
 *     allocation after the first accepted connection fail (once; with
 *     IMGW_FAILMALLOC_EVERY=1 every one from the Nth on fails). Counting
 *     starts at the first connection so that start-up always succeeds.
 *     test/integration/test_failmalloc.py drives it.
 *   - imgw__alloc_fail_nth(n), for unit tests: the nth imgw_try_*
 *     allocation from now on fails, once.
 * Without either, the hook costs one predictable branch per allocation.
 *
 * Thread: any.
 */
#ifndef IMGW_ALLOC_H
#define IMGW_ALLOC_H

#include <stddef.h>

#define IMGW_WUR __attribute__((warn_unused_result))

/* ---- aborting: fixed small sizes ------------------------------------- */

void *imgw_xmalloc(size_t n) __attribute__((malloc, returns_nonnull));
void *imgw_xcalloc(size_t n, size_t size)
    __attribute__((malloc, returns_nonnull));
void *imgw_xrealloc(void *p, size_t n) __attribute__((returns_nonnull));
char *imgw_xstrdup(const char *s) __attribute__((malloc, returns_nonnull));

/* ---- failing: sizes a peer controls, connection and request paths ---- */

void *imgw_try_malloc(size_t n) __attribute__((malloc)) IMGW_WUR;
void *imgw_try_calloc(size_t n, size_t size) __attribute__((malloc)) IMGW_WUR;
void *imgw_try_realloc(void *p, size_t n) IMGW_WUR;
char *imgw_try_strdup(const char *s) __attribute__((malloc)) IMGW_WUR;
/** Copies at most n bytes of s and a NUL. */
char *imgw_try_strndup(const char *s, size_t n) __attribute__((malloc))
IMGW_WUR;
/** aligned_alloc(3): n is rounded up to a multiple of align here. */
void *imgw_try_aligned_alloc(size_t align, size_t n) __attribute__((malloc))
IMGW_WUR;

void imgw_free(void *p);

/* ---- failure injection ----------------------------------------------- */

/* Reads IMGW_FAILMALLOC*; main thread, once, before the loops start. */
void imgw_alloc_init(void);
/* Starts counting (the first accepted connection calls it). Any thread. */
void imgw_alloc_arm(void);
/*
 * Unit tests: n > 0 makes the nth imgw_try_* allocation from now on fail
 * (once); 0 turns it off. Returns the countdown that was left (> 0: the
 * failure has not happened yet). Not for concurrent use.
 */
int imgw__alloc_fail_nth(int n);
/* Routes cJSON's allocations through imgw_try_malloc / imgw_free. */
void imgw_alloc_install_cjson(void);

#endif
