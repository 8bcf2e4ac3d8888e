/*
 * mailbox.h: a loop's inbox for other threads.
 *
 * The queue is imgw_mpsc_t (base/mpsc.h). imgw_mailbox_t adds one uv_async_t:
 * a producer wakes the loop only when the mailbox is not already armed,
 * and the loop drains everything per wake-up because uv_async_send()
 * coalesces.
 *
 * Ownership: a node belongs to the producer until push, then to the
 * consumer (which frees or recycles it in the callback).
 */
#ifndef IMGW_MAILBOX_H
#define IMGW_MAILBOX_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "mpsc.h"
#include "stat.h"

typedef struct imgw_mailbox_s imgw_mailbox_t;
/** Runs on the loop thread once per drained node; owns n. */
typedef void (*imgw_mailbox_cb)(imgw_mailbox_t *mb, imgw_mpsc_node_t *n);

struct imgw_mailbox_s {
    imgw_mpsc_t q;
    uv_async_t async;
    atomic_int armed;          /* 1 while a wake-up is pending */
    imgw_mailbox_cb cb;
    void *data;                /* user pointer */
    /* stats: written by the loop thread only, read by any
     * (imgw_mailbox_stats) */
    imgw_stat_t drained;       /* nodes delivered */
    imgw_stat_t wakeups;       /* callbacks run */
    imgw_stat_t last_batch;    /* nodes in the last drain */
    atomic_size_t depth;       /* pushed minus drained (approximate) */
};

/** Loop thread. Returns 0 or a UV_E* code. */
int imgw_mailbox_init(imgw_mailbox_t *mb, uv_loop_t *loop, imgw_mailbox_cb cb,
                      void *data);
/** Any thread. Returns 0 or a UV_E* code from uv_async_send. */
int imgw_mailbox_post(imgw_mailbox_t *mb, imgw_mpsc_node_t *n);
/** Loop thread: drains what is queued now (also done by the async cb). */
size_t imgw_mailbox_drain(imgw_mailbox_t *mb);
/** Any thread: the statistics above, each a moment old at most. */
void imgw_mailbox_stats(const imgw_mailbox_t *mb, uint64_t *drained,
                        uint64_t *wakeups, uint64_t *last_batch,
                        uint64_t *depth);
/** Loop thread: closes the async handle; queued nodes are drained first. */
void imgw_mailbox_close(imgw_mailbox_t *mb, uv_close_cb close_cb);

#endif
