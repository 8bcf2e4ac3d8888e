/*
 * alloc.c: see alloc.h. Any thread. The only file in src/ that calls the C
 * library's allocator.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "alloc.h"

static long fail_at; /* 0: injection off */
static int fail_every;
static atomic_int armed;
static atomic_long counted;
static atomic_int fail_countdown; /* imgw__alloc_fail_nth */

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

int
imgw__alloc_fail_nth(int n)
{
    return atomic_exchange_explicit(&fail_countdown, n > 0 ? n : 0,
                                    memory_order_relaxed);
}

static int
should_fail(void)
{
    if (atomic_load_explicit(&fail_countdown, memory_order_relaxed) > 0 &&
        atomic_fetch_sub_explicit(&fail_countdown, 1, memory_order_relaxed) ==
            1)
        return 1;
    if (fail_at <= 0 || !atomic_load_explicit(&armed, memory_order_relaxed))
        return 0;
    long n = atomic_fetch_add(&counted, 1) + 1;
    return fail_every ? n >= fail_at : n == fail_at;
}

/* ---- aborting ------------------------------------------------------------ */

static void __attribute__((noreturn))
oom(size_t n)
{
    /* No log.c here: base/alloc.c sits below it, and formatting must not
     * allocate. One write, then abort for a core dump. */
    char buf[96];
    int len = snprintf(buf, sizeof(buf),
                       "imgw: out of memory allocating %zu bytes\n", n);
    if (len > 0) {
        ssize_t w = write(STDERR_FILENO, buf, (size_t)len);
        (void)w;
    }
    abort();
}

void *
imgw_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL)
        oom(n);
    return p;
}

void *
imgw_xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (p == NULL)
        oom(n * size);
    return p;
}

void *
imgw_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (q == NULL)
        oom(n);
    return q;
}

char *
imgw_xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    return memcpy(imgw_xmalloc(n), s, n);
}

/* ---- failing ------------------------------------------------------------- */

void *
imgw_try_malloc(size_t n)
{
    return should_fail() ? NULL : malloc(n);
}

void *
imgw_try_calloc(size_t n, size_t size)
{
    return should_fail() ? NULL : calloc(n, size);
}

void *
imgw_try_realloc(void *p, size_t n)
{
    return should_fail() ? NULL : realloc(p, n);
}

char *
imgw_try_strdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = imgw_try_malloc(n);
    if (d != NULL)
        memcpy(d, s, n);
    return d;
}

char *
imgw_try_strndup(const char *s, size_t n)
{
    size_t len = strnlen(s, n);
    char *d = imgw_try_malloc(len + 1);
    if (d != NULL) {
        memcpy(d, s, len);
        d[len] = '\0';
    }
    return d;
}

void *
imgw_try_aligned_alloc(size_t align, size_t n)
{
    n = (n + align - 1) / align * align;
    return should_fail() ? NULL : aligned_alloc(align, n);
}

void
imgw_free(void *p)
{
    free(p);
}

static void *
cjson_malloc(size_t n)
{
    return imgw_try_malloc(n);
}

void
imgw_alloc_install_cjson(void)
{
    cJSON_Hooks h = {cjson_malloc, imgw_free};
    cJSON_InitHooks(&h);
}
