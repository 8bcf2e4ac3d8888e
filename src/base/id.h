/*
 * id.h: 64-bit time-ordered message ids, unique across the cluster.
 *
 *   bit 63      0 (ids are positive int64)
 *   bits 62..22 41 bits of milliseconds since 2024-01-01T00:00:00Z
 *   bits 21..12 10 bits node id (config server.node_id)
 *   bits 11..0  12 bits sequence within the millisecond
 *
 * One lock-free generator per node, shared by all loops: next() is a CAS
 * loop on one atomic, so ids are unique within the node and strictly
 * increasing in the order any one thread obtains them. When 4096 ids are
 * used within one millisecond the generator borrows the next millisecond
 * (never goes back in time, even if the clock does).
 */
#ifndef IMGW_ID_H
#define IMGW_ID_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define IMGW_ID_EPOCH_MS 1704067200000LL

typedef struct imgw_idgen_s {
    _Atomic uint64_t last; /* (ms << 12) | seq of the last id handed out */
    uint64_t node;         /* 0..1023 */
} imgw_idgen_t;

void imgw_id_init(imgw_idgen_t *g, int node_id);
/** Any thread. now_ms = unix time in ms (injected for tests). */
uint64_t imgw_id_next(imgw_idgen_t *g, int64_t now_ms);
/** Decimal form; buf >= 21 bytes. Returns length. */
size_t imgw_id_format(uint64_t id, char *buf);
/** Parses a decimal id; returns 0 or IMGW_EINVAL. */
int imgw_id_parse(const char *s, size_t len, uint64_t *out);
/** Unix ms and node id encoded in an id. */
int64_t imgw_id_time_ms(uint64_t id);
int imgw_id_node(uint64_t id);

#endif
