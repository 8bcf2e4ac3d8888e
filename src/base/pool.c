/* pool.c: see pool.h. */
#include "pool.h"

#include "alloc.h"

#if defined(__SANITIZE_ADDRESS__)
#define IMGW_POOL_KEEPS 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define IMGW_POOL_KEEPS 0
#endif
#endif
#ifndef IMGW_POOL_KEEPS
#define IMGW_POOL_KEEPS 1
#endif

void
imgw_pool_init(imgw_pool_t *p, size_t size, uint32_t max)
{
    p->head = NULL;
    p->n = 0;
    p->max = IMGW_POOL_KEEPS ? max : 0;
    p->size = size < sizeof(void *) ? sizeof(void *) : size;
}

void *
imgw_pool_get(imgw_pool_t *p)
{
    void *b = p->head;
    if (b != NULL) {
        p->head = *(void **)b;
        p->n--;
    }
    return b;
}

int
imgw_pool_put(imgw_pool_t *p, void *b)
{
    if (p->n >= p->max)
        return 0;
    *(void **)b = p->head;
    p->head = b;
    p->n++;
    return 1;
}

void
imgw_pool_drain(imgw_pool_t *p)
{
    while (p->head != NULL)
        imgw_free(imgw_pool_get(p));
}
