/*
 * mpsc.c: Vyukov's intrusive MPSC queue (see mpsc.h).
 *
 * Threads: imgw_mpsc_push() from any thread; imgw_mpsc_init/pop/nonempty()
 * only on the consumer thread.
 *
 * The queue is a singly linked list from tail (oldest, consumer side) to
 * head (newest, producer side), always holding at least one node: the
 * embedded stub, or the last node handed in. A producer swings head to its
 * node with one exchange and then links the previous head to it; between
 * those two steps the list is cut, and pop() reports "nothing" rather than
 * wait. The consumer never hands out the node that head points to, because
 * a producer may still be about to write its `next`; when that node is the
 * only one left it pushes the stub behind it first.
 */
#include "mpsc.h"

void
imgw_mpsc_init(imgw_mpsc_t *q)
{
    atomic_init(&q->stub.next, NULL);
    atomic_init(&q->head, &q->stub);
    q->tail = &q->stub;
}

void
imgw_mpsc_push(imgw_mpsc_t *q, imgw_mpsc_node_t *n)
{
    /* Relaxed: the release operations below publish this store together
     * with the caller's payload. */
    atomic_store_explicit(&n->next, NULL, memory_order_relaxed);
    /*
     * acq_rel. Release: the producer that next exchanges head gets n as
     * its prev and will store n->next; our NULL store above must come
     * before that store in n->next's modification order, or the consumer
     * could read our stale NULL after the link and lose the rest of the
     * list. Acquire: the same reasoning from the other side, for the NULL
     * that prev's producer stored into prev->next before we link onto it.
     */
    imgw_mpsc_node_t *prev =
        atomic_exchange_explicit(&q->head, n, memory_order_acq_rel);
    /*
     * Release: pairs with the consumer's acquire load of prev->next, so a
     * consumer that sees n also sees everything the caller wrote into the
     * node before pushing it (and the depth increment in post). Until this
     * store lands, pop() stops at prev and returns NULL.
     */
    atomic_store_explicit(&prev->next, n, memory_order_release);
}

imgw_mpsc_node_t *
imgw_mpsc_pop(imgw_mpsc_t *q)
{
    imgw_mpsc_node_t *tail = q->tail;
    /* Acquire everywhere on ->next: pairs with the push's release store,
     * making the node's payload visible before we hand it out. */
    imgw_mpsc_node_t *next =
        atomic_load_explicit(&tail->next, memory_order_acquire);

    if (tail == &q->stub) {
        if (next == NULL)
            return NULL; /* empty, or the first push is half done */
        /* Step over the stub; it is re-pushed below when needed. */
        q->tail = next;
        tail = next;
        next = atomic_load_explicit(&next->next, memory_order_acquire);
    }
    if (next != NULL) {
        q->tail = next;
        return tail;
    }
    /*
     * tail is the last linked node. If head has moved past it, a producer
     * has exchanged head but not linked yet: its node (and any pushed
     * after it) shows up on a later pop. Acquire is more than the pointer
     * comparison needs; it costs nothing on x86 and keeps the reasoning
     * local.
     */
    imgw_mpsc_node_t *head =
        atomic_load_explicit(&q->head, memory_order_acquire);
    if (tail != head)
        return NULL;
    /*
     * tail is the only node. Producers link onto whatever head is, so we
     * may not hand tail out (the caller could free it under a producer's
     * store). Put the stub behind it; after that, tail->next is either the
     * stub or a producer's node that beat the stub to head.
     */
    imgw_mpsc_push(q, &q->stub);
    next = atomic_load_explicit(&tail->next, memory_order_acquire);
    if (next != NULL) {
        q->tail = next;
        return tail;
    }
    /* A producer exchanged head before the stub and has not linked yet. */
    return NULL;
}

int
imgw_mpsc_nonempty(imgw_mpsc_t *q)
{
    return q->tail != &q->stub ||
           atomic_load_explicit(&q->stub.next, memory_order_acquire) != NULL;
}
