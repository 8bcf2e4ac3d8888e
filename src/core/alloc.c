/*
 * alloc.c: see alloc.h. Any thread.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "alloc.h"

static long fail_at;          /* 0: injection off */
static int fail_every;
static atomic_int armed;
static atomic_long counted;

void
imgw_alloc_init(void)
{
    const char *s = getenv("IMGW_FAILMALLOC");
    if (s != NULL && *s != '\0')
        fail_at = strtol(s, NULL, 10);
    s = getenv("IMGW_FAILMALLOC_EVERY");
    fail_every = s != NULL && *s == '1';
}

void
imgw_alloc_arm(void)
{
    if (fail_at > 0)
        atomic_store(&armed, 1);
}

static int
should_fail(void)
{
    if (fail_at <= 0 || !atomic_load_explicit(&armed, memory_order_relaxed))
        return 0;
    long n = atomic_fetch_add(&counted, 1) + 1;
    return fail_every ? n >= fail_at : n == fail_at;
}

void *
imgw_malloc(size_t n)
{
    return should_fail() ? NULL : malloc(n);
}

void *
imgw_calloc(size_t n, size_t size)
{
    return should_fail() ? NULL : calloc(n, size);
}

void *
imgw_realloc(void *p, size_t n)
{
    return should_fail() ? NULL : realloc(p, n);
}

char *
imgw_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = imgw_malloc(n);
    if (d != NULL)
        memcpy(d, s, n);
    return d;
}

void
imgw_free(void *p)
{
    free(p);
}

void
imgw_alloc_install_cjson(void)
{
    cJSON_Hooks h = {imgw_malloc, imgw_free};
    cJSON_InitHooks(&h);
}
