/*
 * mailbox.c: the per-loop mailbox built on base/mpsc.h (one uv_async_t,
 * coalesced wake-ups).
 *
 * Threads: imgw_mailbox_post() from any thread; imgw_mailbox_init/drain/
 * close() and the async callback only on the consumer (the owning loop's)
 * thread.
 *
 * The no-lost-wake-up argument (why every posted node is delivered by some
 * later callback without the loop ever polling) is written out above
 * mailbox_async_cb() and in docs/concurrency.md.
 */
#include "mailbox.h"

#include <stdint.h>

#include "list.h"

#define MAILBOX_OF(a) IMGW_CONTAINER_OF(a, imgw_mailbox_t, async)

/* ---- the mailbox --------------------------------------------------------- */

/*
 * Delivers at most budget nodes, stopping early when pop() returns NULL.
 * The callback may drain or close the mailbox itself (loop.c closes it
 * from inside a STOP node): pop() is never re-entered mid-call, only
 * between nodes, so nesting is safe.
 */
static size_t
mailbox_drain_n(imgw_mailbox_t *mb, size_t budget)
{
    size_t n = 0;
    imgw_mpsc_node_t *node;

    while (n < budget && (node = imgw_mpsc_pop(&mb->q)) != NULL) {
        /* Relaxed: a statistic and a hint. It cannot underflow because the
         * producer's increment happens-before the push that we just
         * acquired. */
        atomic_fetch_sub_explicit(&mb->depth, 1, memory_order_relaxed);
        n++;
        imgw_stat_inc(&mb->drained);
        mb->cb(mb, node); /* owns node now; do not touch it again */
    }
    imgw_stat_set(&mb->last_batch, n);
    return n;
}

/*
 * Why no node is ever stranded.
 *
 * A producer does: depth++, push, then exchange(armed, 1) and sends only
 * if armed was 0. The callback does: exchange(armed, 0), then drains.
 * Both are read-modify-writes on `armed`, so they are totally ordered and
 * each reads the value just before it. Take a producer P and the first
 * callback C whose disarm comes after P's exchange in that order (one
 * exists: if P read 0 it sent a wake-up itself; if it read 1, whoever set
 * that 1 sent one, and that callback disarms after P). C's disarm (acquire)
 * reads a value written by P's exchange (release) or by a later exchange,
 * which is in P's release sequence; so P's push happens-before C drains,
 * and C sees P's node unless an *earlier* producer R is still between its
 * two push steps. R's exchange on `armed` then comes after C's disarm, and
 * the same argument gives a later callback that sees both. Hence the
 * disarm is an exchange, not a plain store: a seq_cst store followed by
 * acquire loads of the queue is the store-buffer pattern, which the C11
 * model only makes safe with seq_cst fences on both sides.
 *
 * Each callback drains at most what `depth` counted right after its
 * disarm, "what is queued now": nodes counted later belong to producers
 * whose exchange follows the disarm, which by the argument above have a
 * wake-up of their own. This bounds one callback when producers are
 * faster than the loop, so sockets are not starved by a busy mailbox.
 *
 * If depth is still non-zero afterwards (a producer between its depth++
 * and its link, or the budget ran out), we re-arm. That is redundant with
 * the producer's own wake-up, but cheap: when armed is already 1 a
 * callback is pending anyway and we send nothing.
 */
static void
mailbox_async_cb(uv_async_t *a)
{
    imgw_mailbox_t *mb = MAILBOX_OF(a);

    imgw_stat_inc(&mb->wakeups);
    atomic_exchange_explicit(&mb->armed, 0, memory_order_acq_rel);
    size_t budget = atomic_load_explicit(&mb->depth, memory_order_relaxed);
    mailbox_drain_n(mb, budget);
    /* The callback may have closed us; a closing handle gets no sends. */
    if (uv_is_closing((uv_handle_t *)&mb->async))
        return;
    if (atomic_load_explicit(&mb->depth, memory_order_relaxed) > 0 &&
        atomic_exchange_explicit(&mb->armed, 1, memory_order_acq_rel) == 0)
        uv_async_send(&mb->async);
}

int
imgw_mailbox_init(imgw_mailbox_t *mb, uv_loop_t *loop, imgw_mailbox_cb cb,
                  void *data)
{
    imgw_mpsc_init(&mb->q);
    atomic_init(&mb->armed, 0);
    atomic_init(&mb->depth, 0);
    mb->cb = cb;
    mb->data = data;
    atomic_init(&mb->drained, 0);
    atomic_init(&mb->wakeups, 0);
    atomic_init(&mb->last_batch, 0);
    return uv_async_init(loop, &mb->async, mailbox_async_cb);
}

int
imgw_mailbox_post(imgw_mailbox_t *mb, imgw_mpsc_node_t *n)
{
    /*
     * Count before pushing, so depth covers every node from the moment it
     * can become visible: the consumer's decrement happens after its
     * acquire of the link, which happens after this, so depth never wraps
     * below zero, and "pop found nothing but depth > 0" really means a
     * producer is inside this function. Relaxed: the push publishes it.
     */
    atomic_fetch_add_explicit(&mb->depth, 1, memory_order_relaxed);
    imgw_mpsc_push(&mb->q, n);
    /*
     * acq_rel (release is the part that matters): publishes the push to
     * the callback's disarm, see above mailbox_async_cb(). Only the
     * producer that flips 0 -> 1 pays for the syscall.
     */
    if (atomic_exchange_explicit(&mb->armed, 1, memory_order_acq_rel) == 0)
        return uv_async_send(&mb->async);
    return 0;
}

size_t
imgw_mailbox_drain(imgw_mailbox_t *mb)
{
    /* No disarm here: if armed is 1, the pending callback runs anyway and
     * finds whatever this call leaves (possibly nothing). */
    return mailbox_drain_n(
        mb, atomic_load_explicit(&mb->depth, memory_order_relaxed));
}

void
imgw_mailbox_close(imgw_mailbox_t *mb, uv_close_cb close_cb)
{
    if (uv_is_closing((uv_handle_t *)&mb->async))
        return;
    /*
     * Close first, then drain: uv_close() only marks the handle (close_cb
     * runs on a later loop iteration), so the nodes are still delivered
     * before close_cb, and a callback that calls us again from inside this
     * drain sees a closing handle and returns instead of closing twice.
     * Producers must have stopped posting by now: a node pushed after this
     * drain is never delivered.
     */
    uv_close((uv_handle_t *)&mb->async, close_cb);
    mailbox_drain_n(mb, SIZE_MAX);
}

void
imgw_mailbox_stats(const imgw_mailbox_t *mb, uint64_t *drained,
                   uint64_t *wakeups, uint64_t *last_batch, uint64_t *depth)
{
    *drained = imgw_stat_get(&mb->drained);
    *wakeups = imgw_stat_get(&mb->wakeups);
    *last_batch = imgw_stat_get(&mb->last_batch);
    *depth = atomic_load_explicit(&((imgw_mailbox_t *)mb)->depth,
                                  memory_order_relaxed);
}
