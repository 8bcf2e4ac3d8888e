/*
 * mpsc.h: a lock-free intrusive multi-producer single-consumer queue
 * (Dmitry Vyukov's design), pure C11 atomics.
 *
 * push is one atomic exchange plus one store and never blocks; pop is
 * consumer-only. Used by the loops' mailboxes (net/mailbox.c, which add a
 * uv_async_t wake-up) and by the broker thread's command queue (mq/mq.c,
 * which adds an eventfd). Neither the queue nor its users allocate: a node
 * is embedded in the caller's item.
 *
 * Ownership: a node belongs to the producer until push, then to the
 * consumer (which frees or recycles it after pop).
 */
#ifndef IMGW_MPSC_H
#define IMGW_MPSC_H

#include <stdatomic.h>
#include <stddef.h>

typedef struct imgw_mpsc_node_s {
    struct imgw_mpsc_node_s *_Atomic next;
} imgw_mpsc_node_t;

typedef struct imgw_mpsc_s {
    imgw_mpsc_node_t *_Atomic head; /* producers exchange here */
    imgw_mpsc_node_t *tail;         /* consumer only */
    imgw_mpsc_node_t stub;
} imgw_mpsc_t;

void imgw_mpsc_init(imgw_mpsc_t *q);
/** Any thread. */
void imgw_mpsc_push(imgw_mpsc_t *q, imgw_mpsc_node_t *n);
/*
 * Consumer thread only. Returns the oldest node or NULL when the queue is
 * empty or a producer is between its two steps (its node shows up on a
 * later pop; the mailbox re-arms so that pop happens).
 */
imgw_mpsc_node_t *imgw_mpsc_pop(imgw_mpsc_t *q);

/*
 * Consumer thread only: 1 when a node may be queued (a producer between
 * its two steps counts as queued; its node shows up on a later pop), 0
 * when the queue is empty.
 */
int imgw_mpsc_nonempty(imgw_mpsc_t *q);

#endif
