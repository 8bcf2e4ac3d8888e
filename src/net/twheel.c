/*
 * twheel.c: the per-loop hashed timer wheel (see twheel.h).
 *
 * Thread: the owning loop only; no locks, no atomics.
 *
 * Layout: nslots circular doubly linked lists, each headed by a sentinel,
 * and an entry for deadline d lives in slot d & (nslots - 1) whatever the
 * lap, so schedule and cancel are O(1). Advancing visits the slots of the
 * ticks passed; an entry found in a visited slot fires when its deadline
 * has come and otherwise stays for a later lap. The lists are base's
 * (list.h): a scheduled entry is linked, which is what imgw_tw_pending()
 * tests.
 *
 * Deadlines are kept with the wheel's `now` strictly behind them: a
 * deadline at or before now is stored as now + 1 (it fires on the next
 * tick), so an entry is never in a slot that the walk has already passed.
 */
#include "twheel.h"

#include <stdlib.h>

#include "alloc.h"
#include "err.h"

int
imgw_tw_init(imgw_twheel_t *tw, size_t nslots, uint64_t now)
{
    size_t n = 1;

    tw->now = now;
    tw->nslots = 0;
    tw->slots = NULL;
    tw->count = 0;
    while (n < nslots) {
        if (n > SIZE_MAX / 2 / sizeof(imgw_list_t))
            return IMGW_ENOMEM;
        n <<= 1;
    }
    tw->slots = imgw_try_malloc(n * sizeof(*tw->slots));
    if (tw->slots == NULL)
        return IMGW_ENOMEM;
    for (size_t i = 0; i < n; i++)
        imgw_list_init(&tw->slots[i]);
    tw->nslots = n;
    return 0;
}

void
imgw_tw_free(imgw_twheel_t *tw)
{
    /* Leave entries still scheduled in a sane "not pending" state, so an
     * owner that cancels after the wheel is gone does not write into the
     * freed sentinels. */
    for (size_t i = 0; i < tw->nslots; i++) {
        imgw_list_t *l;

        while ((l = imgw_list_first(&tw->slots[i])) != NULL)
            imgw_list_remove(l);
    }
    imgw_free(tw->slots);
    tw->slots = NULL;
    tw->nslots = 0;
    tw->count = 0;
}

void
imgw_tw_schedule(imgw_twheel_t *tw, imgw_tw_entry_t *e, uint64_t deadline)
{
    if (imgw_list_linked(&e->link))
        imgw_list_remove(&e->link);
    else
        tw->count++;
    if (deadline <= tw->now)
        deadline = tw->now + 1;
    e->deadline = deadline;
    imgw_list_insert_tail(&tw->slots[deadline & (tw->nslots - 1)], &e->link);
}

void
imgw_tw_cancel(imgw_twheel_t *tw, imgw_tw_entry_t *e)
{
    if (!imgw_list_linked(&e->link))
        return;
    imgw_list_remove(&e->link);
    tw->count--;
}

/*
 * Fires the due entries of one slot at tick t (tw->now == t already).
 *
 * The slot's list is first moved onto a local sentinel and then consumed
 * one entry at a time from its front. That makes the walk immune to
 * whatever the callback does: it may free or reschedule its own entry
 * (already unlinked), cancel or reschedule *other* entries of this batch
 * (they are unlinked from the local list like from any other), or
 * schedule new ones into this very slot (they go to the real slot list,
 * which this call does not revisit; such a deadline is t + k * nslots for
 * k >= 1 since it is > t, so it is not due yet).
 */
static size_t
tw_expire_slot(imgw_twheel_t *tw, imgw_list_t *head, uint64_t t,
               imgw_tw_expire_cb cb, void *arg)
{
    imgw_list_t batch, *l;
    size_t fired = 0;

    if (imgw_list_empty(head))
        return 0;
    imgw_list_move_all(head, &batch);

    while ((l = imgw_list_first(&batch)) != NULL) {
        imgw_tw_entry_t *e = IMGW_LIST_ENTRY(l, imgw_tw_entry_t, link);
        imgw_list_remove(l);
        if (e->deadline <= t) {
            tw->count--;
            fired++;
            cb(e, arg);
        } else {
            imgw_list_insert_tail(head, &e->link); /* a later lap */
        }
    }
    return fired;
}

/*
 * Walks tick by tick from now + 1 to `to`, so an entry fires exactly at
 * its deadline tick when the wheel is advanced one tick at a time (the
 * loop's case). For a jump longer than nslots ticks (a stalled loop, a
 * clock step) only the last nslots ticks are walked: that visits every
 * slot once, each at the latest tick <= to with that slot's residue, so
 * every entry with deadline <= to is found at a tick >= its deadline and
 * fires; entries still in the future stay. Firing order within a jump is
 * then by slot, not strictly by deadline.
 *
 * tw->now is the walked tick while callbacks run, so a callback that
 * reschedules "now or earlier" lands on the next walked tick and still
 * fires within this call, once per tick at most: no livelock.
 */
size_t
imgw_tw_advance(imgw_twheel_t *tw, uint64_t to, imgw_tw_expire_cb cb, void *arg)
{
    size_t fired = 0;

    if (to <= tw->now)
        return 0;
    uint64_t t = tw->now + 1;
    if (to - tw->now > tw->nslots)
        t = to - tw->nslots + 1;
    for (;;) {
        if (tw->count == 0)
            break; /* nothing to find in the remaining slots */
        tw->now = t;
        fired +=
            tw_expire_slot(tw, &tw->slots[t & (tw->nslots - 1)], t, cb, arg);
        if (t == to)
            break;
        t++;
    }
    tw->now = to;
    return fired;
}
