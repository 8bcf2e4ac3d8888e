/*
 * twheel.h: a per-loop hashed timer wheel for per-connection deadlines
 * (auth timeout, heartbeat timeout). One uv_timer_t per loop ticks it;
 * a connection embeds one imgw_tw_entry_t (two pointers and a deadline)
 * instead of owning a uv_timer_t (~150 bytes each).
 *
 * Resolution is one tick (the loop uses 1 s). Deadlines are absolute ticks.
 * Entries further than nslots ticks away wait in their slot for more laps.
 * Loop thread only.
 */
#ifndef IMGW_TWHEEL_H
#define IMGW_TWHEEL_H

#include <stddef.h>
#include <stdint.h>

#include "list.h"

/* Zeroed (or as the wheel leaves it after firing or cancelling) is "not
 * scheduled": no init needed. */
typedef struct imgw_tw_entry_s {
    imgw_list_t link;  /* in its slot's list while scheduled */
    uint64_t deadline; /* absolute tick */
} imgw_tw_entry_t;

typedef struct imgw_twheel_s {
    uint64_t now;       /* current tick */
    size_t nslots;      /* power of two */
    imgw_list_t *slots; /* nslots list heads */
    size_t count;       /* scheduled entries */
} imgw_twheel_t;

typedef void (*imgw_tw_expire_cb)(imgw_tw_entry_t *e, void *arg);

/** nslots is rounded up to a power of two. Returns 0 or IMGW_ENOMEM. */
int imgw_tw_init(imgw_twheel_t *tw, size_t nslots, uint64_t now);
void imgw_tw_free(imgw_twheel_t *tw);
/** (Re)schedules e to fire at deadline (>= now; earlier fires next tick). */
void imgw_tw_schedule(imgw_twheel_t *tw, imgw_tw_entry_t *e, uint64_t deadline);
/** Unschedules e; harmless when it is not scheduled. */
void imgw_tw_cancel(imgw_twheel_t *tw, imgw_tw_entry_t *e);
static inline int
imgw_tw_pending(const imgw_tw_entry_t *e)
{
    return imgw_list_linked(&e->link);
}
/*
 * Advances to tick `to`, calling cb for every entry whose deadline <= to
 * (the entry is unscheduled before cb runs, so cb may reschedule or free
 * it). Returns the number of expired entries.
 */
size_t imgw_tw_advance(imgw_twheel_t *tw, uint64_t to, imgw_tw_expire_cb cb,
                       void *arg);

#endif
