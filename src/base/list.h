/*
 * list.h: the one intrusive doubly linked list (the shape of the Linux
 * kernel's list.h and libuv's queue.h). A list is a circular ring through
 * a sentinel head; a node is an imgw_list_t embedded in its object, found
 * back with IMGW_LIST_ENTRY. Insert, remove and splice are O(1) and never
 * allocate. IMGW_CONTAINER_OF is the one "object from its member" macro
 * of the tree (list nodes, libuv handles embedded in imgw objects).
 *
 * A node that is in no list is "unlinked": either all zero (an object
 * fresh from imgw_xcalloc needs no init) or as imgw_list_remove leaves it
 * (pointing at itself). imgw_list_linked() tells the two states from
 * "linked", and imgw_list_remove() of an unlinked node does nothing, so
 * owners need no flag of their own.
 *
 * Thread: none of its own; a list belongs to whoever owns its head.
 */
#ifndef IMGW_LIST_H
#define IMGW_LIST_H

#include <stddef.h>

typedef struct imgw_list_s {
    struct imgw_list_s *next, *prev; /* the ring; NULL or self: unlinked */
} imgw_list_t;

/** The object of type T whose member is at ptr. */
#define IMGW_CONTAINER_OF(ptr, T, member)                                    \
    ((T *)(void *)((char *)(ptr)-offsetof(T, member)))

/** The object of type T whose member is the list node at ptr. */
#define IMGW_LIST_ENTRY(ptr, T, member) IMGW_CONTAINER_OF(ptr, T, member)

/** Every node of head, front to back. The loop must not remove pos; use
 * IMGW_LIST_FOREACH_SAFE for that. */
#define IMGW_LIST_FOREACH(pos, head)                                         \
    for ((pos) = (head)->next; (pos) != (head); (pos) = (pos)->next)

/** Every node of head, front to back; the body may remove pos (n holds
 * the next node). */
#define IMGW_LIST_FOREACH_SAFE(pos, n, head)                                 \
    for ((pos) = (head)->next, (n) = (pos)->next; (pos) != (head);          \
         (pos) = (n), (n) = (pos)->next)

/** Makes head an empty list (a head must be initialised before use). */
static inline void
imgw_list_init(imgw_list_t *head)
{
    head->next = head->prev = head;
}

/** 1 when the list at head has no node. */
static inline int
imgw_list_empty(const imgw_list_t *head)
{
    return head->next == head;
}

/** 1 when node is in a list (0 for a zeroed or removed node). */
static inline int
imgw_list_linked(const imgw_list_t *node)
{
    return node->next != NULL && node->next != node;
}

/** The front node of head, or NULL when the list is empty. */
static inline imgw_list_t *
imgw_list_first(const imgw_list_t *head)
{
    return head->next == head ? NULL : head->next;
}

/** The back node of head, or NULL when the list is empty. */
static inline imgw_list_t *
imgw_list_last(const imgw_list_t *head)
{
    return head->prev == head ? NULL : head->prev;
}

/** Appends node (unlinked) at the back of head. */
static inline void
imgw_list_insert_tail(imgw_list_t *head, imgw_list_t *node)
{
    node->prev = head->prev;
    node->next = head;
    head->prev->next = node;
    head->prev = node;
}

/** Puts node (unlinked) at the front of head. */
static inline void
imgw_list_insert_head(imgw_list_t *head, imgw_list_t *node)
{
    node->next = head->next;
    node->prev = head;
    head->next->prev = node;
    head->next = node;
}

/** Takes node out of its list and leaves it unlinked; a node that is not
 * linked is left alone. */
static inline void
imgw_list_remove(imgw_list_t *node)
{
    if (!imgw_list_linked(node))
        return;
    node->prev->next = node->next;
    node->next->prev = node->prev;
    node->next = node->prev = node;
}

/** Moves every node of from, in order, to the empty list to; from is
 * left empty. (Walking a batch that callbacks may change: take it off
 * the real list first.) */
static inline void
imgw_list_move_all(imgw_list_t *from, imgw_list_t *to)
{
    if (imgw_list_empty(from)) {
        imgw_list_init(to);
        return;
    }
    to->next = from->next;
    to->prev = from->prev;
    to->next->prev = to;
    to->prev->next = to;
    imgw_list_init(from);
}

#endif
