/*
 * id.c: the node's 64-bit message-id generator and the ids' decimal form
 * (see id.h for the bit layout).
 *
 * Threads: imgw_id_next() from any thread, lock-free, on the one generator
 * the node shares between its loops; imgw_id_init() before the loops
 * start; the other functions are pure.
 *
 * The generator keeps one 64-bit word, last = (ms << 12) | seq, the time
 * and sequence part of the last id handed out. The next id's word is
 * max(last + 1, now << 12): the current millisecond with sequence 0 if the
 * clock moved on, else simply the next value, which overflows the 12-bit
 * sequence into the millisecond field when 4096 ids were taken in one
 * millisecond ("borrowing" the next one) and ignores a clock that went
 * backwards. The node id is spliced in between when the id is built.
 *
 * The 41-bit millisecond field lasts until 2093-09-06; later clocks would
 * carry into bit 63. Not handled: nobody will run this build then.
 */
#include "id.h"

#include <string.h>

#include "err.h"

#define ID_SEQ_BITS 12
#define ID_NODE_BITS 10
#define ID_SEQ_MASK ((UINT64_C(1) << ID_SEQ_BITS) - 1)
#define ID_NODE_MASK ((UINT64_C(1) << ID_NODE_BITS) - 1)
#define ID_MAX_DIGITS 20 /* UINT64_MAX is 18446744073709551615 */

void
imgw_id_init(imgw_idgen_t *g, int node_id)
{
    atomic_init(&g->last, 0);
    /* The config layer validates 0..1023; masking keeps an unvalidated
     * value from spilling into the millisecond bits. */
    g->node = (uint64_t)node_id & ID_NODE_MASK;
}

uint64_t
imgw_id_next(imgw_idgen_t *g, int64_t now_ms)
{
    int64_t ms = now_ms - IMGW_ID_EPOCH_MS;
    if (ms < 0)
        ms = 0; /* a clock before 2024 is a broken clock: use the epoch */
    uint64_t floor = (uint64_t)ms << ID_SEQ_BITS;

    /*
     * Relaxed is enough: every successful CAS is a read-modify-write of
     * `last`, and RMWs on one object form a single total order in which
     * each reads the value the previous one wrote. So no two callers get
     * the same word, and one thread's successive ids increase; so do ids
     * of any two calls ordered by happens-before, by coherence. Nothing
     * else is published through the id, so no acquire/release is needed.
     * A failed CAS reloads `last` and recomputes; under contention that is
     * a retry per collision, never a wait.
     */
    uint64_t last = atomic_load_explicit(&g->last, memory_order_relaxed);
    uint64_t next;
    do {
        next = last + 1 > floor ? last + 1 : floor;
    } while (!atomic_compare_exchange_weak_explicit(
        &g->last, &last, next, memory_order_relaxed, memory_order_relaxed));

    return ((next >> ID_SEQ_BITS) << (ID_SEQ_BITS + ID_NODE_BITS)) |
           (g->node << ID_SEQ_BITS) | (next & ID_SEQ_MASK);
}

size_t
imgw_id_format(uint64_t id, char *buf)
{
    /* Two digits per division: ids are 19 digits, formatted twice per
     * message (response and push), so this halves the divisions on the
     * send path. */
    static const char pairs[201] =
        "00010203040506070809101112131415161718192021222324252627282930313233"
        "34353637383940414243444546474849505152535455565758596061626364656667"
        "6869707172737475767778798081828384858687888990919293949596979899";
    char tmp[ID_MAX_DIGITS + 1];
    size_t n = sizeof(tmp), len;

    while (id >= 100) {
        unsigned d = (unsigned)(id % 100) * 2;
        id /= 100;
        tmp[--n] = pairs[d + 1];
        tmp[--n] = pairs[d];
    }
    if (id >= 10) {
        unsigned d = (unsigned)id * 2;
        tmp[--n] = pairs[d + 1];
        tmp[--n] = pairs[d];
    } else {
        tmp[--n] = (char)('0' + id);
    }
    len = sizeof(tmp) - n;
    memcpy(buf, tmp + n, len);
    buf[len] = '\0';
    return len;
}

int
imgw_id_parse(const char *s, size_t len, uint64_t *out)
{
    uint64_t v = 0;

    if (s == NULL || len == 0 || len > ID_MAX_DIGITS)
        return IMGW_EINVAL;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return IMGW_EINVAL; /* no sign, space, or other junk */
        uint64_t d = (uint64_t)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return IMGW_EINVAL; /* does not fit in 64 bits */
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

int64_t
imgw_id_time_ms(uint64_t id)
{
    return (int64_t)(id >> (ID_SEQ_BITS + ID_NODE_BITS)) + IMGW_ID_EPOCH_MS;
}

int
imgw_id_node(uint64_t id)
{
    return (int)((id >> ID_SEQ_BITS) & ID_NODE_MASK);
}
