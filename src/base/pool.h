/*
 * pool.h: a free list of same-sized blocks, for objects made and freed once
 * per message on one loop (a store request's completion record, the send
 * context), so that steady traffic does not go through malloc and free.
 *
 * The pool only keeps blocks: imgw_pool_get returns a kept block or NULL
 * (the caller then allocates with the imgw_try_* / imgw_x* family, at the
 * pool's size), imgw_pool_put keeps a block or says no (the caller frees
 * it). So allocation failures and failure injection stay where they were,
 * and at most `max` blocks are held (a burst's peak is given back).
 *
 * Under AddressSanitizer the pool keeps nothing: every block goes back to
 * free(), so a use after free is still reported (a kept block would be
 * silently reused).
 *
 * Thread: one owner (a loop); not locked.
 */
#ifndef IMGW_POOL_H
#define IMGW_POOL_H

#include <stddef.h>
#include <stdint.h>

typedef struct imgw_pool_s {
    void *head;   /* kept blocks, linked through their first word */
    uint32_t n;   /* how many are kept */
    uint32_t max; /* never more than this */
    size_t size;  /* every block is this size (>= sizeof(void *)) */
} imgw_pool_t;

/** size: the blocks' size; max: at most this many kept. */
void imgw_pool_init(imgw_pool_t *p, size_t size, uint32_t max);

/** A kept block (contents undefined) or NULL: allocate p->size then. */
void *imgw_pool_get(imgw_pool_t *p);

/** 1 when the pool kept b (of p->size bytes), 0: the caller frees it. */
int imgw_pool_put(imgw_pool_t *p, void *b);

/** Frees what is kept (at the owner's end, or to trim). */
void imgw_pool_drain(imgw_pool_t *p);

#endif
