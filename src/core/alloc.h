/*
 * alloc.h: the allocator hook of the connection path.
 *
 * The network, HTTP, WebSocket, session and delivery code allocate through
 * these wrappers (and cJSON through imgw_alloc_install_cjson), so a test
 * can make the Nth allocation fail and check that imgw answers with an
 * error or closes that one connection, never crashes or leaks.
 *
 * Failure injection: IMGW_FAILMALLOC=N in the environment makes the Nth
 * hooked allocation after the first accepted connection fail (once; with
 * IMGW_FAILMALLOC_EVERY=1 every allocation from the Nth on fails). Counting
 * starts at the first connection so that start-up always succeeds. Without
 * the variable the hook costs one predictable branch.
 */
#ifndef IMGW_ALLOC_H
#define IMGW_ALLOC_H

#include <stddef.h>

void *imgw_malloc(size_t n);
void *imgw_calloc(size_t n, size_t size);
void *imgw_realloc(void *p, size_t n);
char *imgw_strdup(const char *s);
void imgw_free(void *p);

/* Reads IMGW_FAILMALLOC*; main thread, once, before the loops start. */
void imgw_alloc_init(void);
/* Starts counting (the first accepted connection calls it). Any thread. */
void imgw_alloc_arm(void);
/* Routes cJSON's allocations through the hook. */
void imgw_alloc_install_cjson(void);

#endif
