/*
 * conn_ref.h: how other threads name a connection.
 *
 * A connection is referenced by (loop index, slot, generation), never by
 * pointer: only the owning loop dereferences its own connections, and it
 * drops refs whose generation is stale (the slot was reused). Kept apart
 * from net.h so that core's user map can hold refs without libuv.
 */
#ifndef IMGW_CONN_REF_H
#define IMGW_CONN_REF_H

#include <stdint.h>

typedef struct imgw_conn_ref_s {
    uint16_t loop;
    uint32_t slot;
    uint32_t gen;
} imgw_conn_ref_t;

static inline int
imgw_conn_ref_eq(imgw_conn_ref_t a, imgw_conn_ref_t b)
{
    return a.loop == b.loop && a.slot == b.slot && a.gen == b.gen;
}

#endif
