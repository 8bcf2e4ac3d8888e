/*
 * mem_idx.c: the memory backend's per-message index (mem_idx.h): slot
 * placement and removal, the incremental migration between two tables,
 * growth and shrinking.
 */
#include "mem_idx.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "alloc.h"
#include "err.h"

/* Buckets of old moved per insert and per removal. A growth adds half, so
 * the new table takes >= 3 inserts per old bucket before it is full: one
 * at a time would do; two leave room for removals that find nothing to
 * move and finish sooner (both tables are live meanwhile). */
#define MEM_IDX_STEP_INSERT 2
/* Tables this big grow by half, smaller ones double. Growth by half keeps
 * big tables fuller (10.7-16 B per entry, not up to 21) but moves each
 * entry twice as often (1 / (growth - 1) moves per insert while a store
 * fills); below 32 KB a table's slack is not worth the moves. */
#define MEM_IDX_HALF_FROM 512
#define MEM_IDX_STEP_REMOVE 1
/* Buckets ahead whose entries a step prefetches: an append moves about
 * six buckets (two inserts, two removals), so this is about the previous
 * append's work, long enough ago for the loads to have completed. */
#define MEM_IDX_PREFETCH 4

static size_t
tab_cap(const imgw__mem_idx_tab_t *t)
{
    return t->nb * MEM_IDX_WAYS;
}

static size_t
tab_full(const imgw__mem_idx_tab_t *t)
{
    return t->nb * MEM_IDX_FULL;
}

static int
tab_alloc(imgw__mem_idx_tab_t *t, size_t nb)
{
    if (nb > SIZE_MAX / sizeof(imgw__mem_idx_bkt_t))
        return IMGW_ENOMEM;
    t->b = imgw_try_aligned_alloc(64, nb * sizeof(*t->b));
    if (t->b == NULL)
        return IMGW_ENOMEM;
    memset(t->b, 0, nb * sizeof(*t->b));
    t->nb = nb;
    t->n = 0;
    return 0;
}

static uint32_t
entry_hash(const imgw__mem_idx_t *x, const void *p)
{
    uint32_t h;
    memcpy(&h, (const char *)p + x->hash_off, sizeof(h));
    return h;
}

/* Places p in the first free slot from its home bucket on; the caller
 * guarantees one (n < cap). */
static void
tab_put(imgw__mem_idx_tab_t *t, uint32_t h, void *p)
{
    size_t i = imgw__mem_idx_home(h, t->nb);
    for (;;) {
        imgw__mem_idx_bkt_t *b = &t->b[i];
        for (int j = 0; j < MEM_IDX_WAYS; j++) {
            if (b->tag[j] == 0) {
                b->tag[j] = imgw__mem_idx_tag(h);
                b->p[j] = p;
                t->n++;
                return;
            }
        }
        if (b->over != UINT8_MAX)
            b->over++;
        i = imgw__mem_idx_next(i, t->nb);
    }
}

/* Clears slot j of bucket i, where an entry homed at bucket home was. */
static void
tab_clear(imgw__mem_idx_tab_t *t, size_t home, size_t i, int j)
{
    t->b[i].tag[j] = 0;
    t->b[i].p[j] = NULL;
    t->n--;
    for (size_t k = home; k != i; k = imgw__mem_idx_next(k, t->nb))
        if (t->b[k].over != UINT8_MAX) /* saturated: stays, see .h */
            t->b[k].over--;
}

/* Removes p if t holds it; 1 if it did. */
static int
tab_del(imgw__mem_idx_tab_t *t, uint32_t h, const void *p)
{
    size_t home = imgw__mem_idx_home(h, t->nb), i = home;
    for (size_t k = 0; k < t->nb; k++) {
        imgw__mem_idx_bkt_t *b = &t->b[i];
        for (int j = 0; j < MEM_IDX_WAYS; j++) {
            if (b->p[j] == p && b->tag[j] != 0) {
                tab_clear(t, home, i, j);
                return 1;
            }
        }
        if (b->over == 0)
            return 0;
        i = imgw__mem_idx_next(i, t->nb);
    }
    return 0;
}

int
imgw__mem_idx_init(imgw__mem_idx_t *x, size_t hash_off)
{
    x->hash_off = hash_off;
    memset(&x->cur, 0, sizeof(x->cur));
    memset(&x->old, 0, sizeof(x->old));
    x->mig = 0;
    if (tab_alloc(&x->cur, MEM_IDX_MIN) != 0)
        return IMGW_ENOMEM;
    return 0;
}

void
imgw__mem_idx_free(imgw__mem_idx_t *x)
{
    imgw_free(x->cur.b);
    imgw_free(x->old.b);
    x->cur.b = x->old.b = NULL;
    x->cur.n = x->old.n = 0;
}

void
imgw__mem_idx_step(imgw__mem_idx_t *x, size_t budget)
{
    imgw__mem_idx_tab_t *o = &x->old;
    if (o->b == NULL)
        return;
    for (; budget > 0 && x->mig < o->nb; budget--, x->mig++) {
        /* Moving an entry reads its hash from the entry: a cache miss per
         * entry, which dominated the migration's cost in a relay profile.
         * Start loading the entries of a bucket a few steps ahead, so
         * that by its turn they have arrived, in parallel. */
        if (x->mig + MEM_IDX_PREFETCH < o->nb) {
            const imgw__mem_idx_bkt_t *a = &o->b[x->mig + MEM_IDX_PREFETCH];
            for (int j = 0; j < MEM_IDX_WAYS; j++)
                if (a->tag[j] != 0)
                    __builtin_prefetch((const char *)a->p[j] + x->hash_off);
        }
        imgw__mem_idx_bkt_t *b = &o->b[x->mig];
        for (int j = 0; j < MEM_IDX_WAYS; j++) {
            if (b->tag[j] == 0)
                continue;
            void *p = b->p[j];
            uint32_t h = entry_hash(x, p);
            tab_clear(o, imgw__mem_idx_home(h, o->nb), x->mig, j);
            tab_put(&x->cur, h, p);
        }
    }
    if (x->mig >= o->nb) {
        /* Every bucket visited and inserts go to cur: o->n is 0. */
        imgw_free(o->b);
        memset(o, 0, sizeof(*o));
        x->mig = 0;
    }
}

/* Starts moving everything into a new table of nb buckets (which must
 * hold them: nb * MEM_IDX_FULL >= entries); not while one is running. */
static int
migrate_to(imgw__mem_idx_t *x, size_t nb)
{
    imgw__mem_idx_tab_t t;
    if (tab_alloc(&t, nb) != 0)
        return IMGW_ENOMEM;
    x->old = x->cur;
    x->cur = t;
    x->mig = 0;
    return 0;
}

int
imgw__mem_idx_reserve(imgw__mem_idx_t *x)
{
    size_t total = imgw__mem_idx_count(x);
    if (total + 1 <= tab_full(&x->cur))
        return 0;
    /* cur is full counting what old still holds: only a shrink's
     * migration overtaken by inserts gets here while one runs (a growth's
     * finishes first, see MEM_IDX_STEP_INSERT). Its old table holds few
     * entries, so finishing it now is short. */
    if (x->old.b != NULL)
        imgw__mem_idx_step(x, SIZE_MAX);
    size_t nb = x->cur.nb;
    if (nb < SIZE_MAX / 4 &&
        migrate_to(x, nb < MEM_IDX_HALF_FROM ? nb * 2 : nb + nb / 2) == 0)
        return 0;
    /* No memory to grow: fill on, keeping one slot free so that probes
     * end. */
    return total + 1 < tab_cap(&x->cur) ? 0 : IMGW_ENOMEM;
}

void
imgw__mem_idx_insert(imgw__mem_idx_t *x, uint32_t h, void *p)
{
    imgw__mem_idx_step(x, MEM_IDX_STEP_INSERT);
    tab_put(&x->cur, h, p);
}

void
imgw__mem_idx_remove(imgw__mem_idx_t *x, uint32_t h, void *p)
{
    if (x->old.b == NULL || !tab_del(&x->old, h, p))
        (void)tab_del(&x->cur, h, p);
    imgw__mem_idx_step(x, MEM_IDX_STEP_REMOVE);
}

void
imgw__mem_idx_shrink(imgw__mem_idx_t *x)
{
    size_t total = imgw__mem_idx_count(x);
    if (x->old.b != NULL || x->cur.nb <= MEM_IDX_MIN ||
        total * 8 >= tab_cap(&x->cur))
        return;
    /* Half full at most, so a burst right after does not grow it back. */
    size_t nb = (total * 2 + MEM_IDX_WAYS - 1) / MEM_IDX_WAYS;
    if (nb < MEM_IDX_MIN)
        nb = MEM_IDX_MIN;
    (void)migrate_to(x, nb);
}

void
imgw__mem_idx_drain(imgw__mem_idx_t *x, void (*fn)(void *p, void *arg),
                    void *arg)
{
    imgw__mem_idx_tab_t *tabs[2] = {&x->cur, &x->old};
    for (int k = 0; k < 2; k++) {
        imgw__mem_idx_tab_t *t = tabs[k];
        for (size_t i = 0; t->b != NULL && i < t->nb; i++)
            for (int j = 0; j < MEM_IDX_WAYS; j++)
                if (t->b[i].tag[j] != 0)
                    fn(t->b[i].p[j], arg);
    }
    imgw__mem_idx_free(x);
}
