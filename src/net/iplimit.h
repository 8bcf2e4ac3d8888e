/*
 * iplimit.h: node-wide open-connection counts per client address, for
 * server.max_connections_per_ip. Sharded by address with a mutex per
 * shard; touched only at accept and close, never per message.
 */
#ifndef IMGW_IPLIMIT_H
#define IMGW_IPLIMIT_H

#include <stddef.h>
#include <stdint.h>

typedef struct imgw_iplimit_s imgw_iplimit_t;

/* An address as 16 bytes (IPv4 mapped into IPv6). */
typedef struct imgw_ipaddr_s {
    uint8_t b[16];
} imgw_ipaddr_t;

int imgw_iplimit_new(imgw_iplimit_t **out);
void imgw_iplimit_free(imgw_iplimit_t *t);
/*
 * Counts one more connection from addr unless it already has limit
 * (limit 0 = no limit). Returns 1 when admitted, 0 when refused, or
 * IMGW_ENOMEM. Any thread.
 */
int imgw_iplimit_acquire(imgw_iplimit_t *t, const imgw_ipaddr_t *addr,
                         int limit);
/* Forgets one connection from addr (one that acquire admitted). */
void imgw_iplimit_release(imgw_iplimit_t *t, const imgw_ipaddr_t *addr);
/* Addresses with at least one connection. */
size_t imgw_iplimit_count(imgw_iplimit_t *t);

#endif
