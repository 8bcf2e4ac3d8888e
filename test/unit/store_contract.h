/*
 * store_contract.h: the store contract suite's driver interface.
 *
 * store_contract.c holds the cases every backend must pass (docs/store.md)
 * and the request helpers the backends' own tests use too. A backend's
 * test file (test_store_memory.c, test_store_file.c, test_store_redis.c)
 * defines, before it includes store_contract.c:
 *
 *   fx_t                  { imgw_store_t *s; imgw_store_loop_t *sl; }
 *   sc_open(f, retention_count, dedupe_ttl)   a fresh, empty store
 *   sc_close(f)           closes it
 *   sc_wait(f, flag)      runs the backend until *flag != 0 (memory: the
 *                         handle's completions; redis: the uv loop, for
 *                         at most a few seconds); returns *flag
 *   sc_time_ms(mid)       the server_time_ms of message mid's append
 *   SC_SETS_UNORDERED     1 when group members come back in any order
 *
 * and passes sc_max_convs (0: the default) as max_conversations to the
 * stores sc_open opens.
 *
 * Every helper checks store.h's rule on the way: the callback has not run
 * when the request function returns, refused requests included (counted
 * in sc_early, which sc_close_checked() asserts is 0).
 *
 * Threads: the test's one thread.
 */
#ifndef IMGW_STORE_CONTRACT_H
#define IMGW_STORE_CONTRACT_H

#include "store.h"

typedef struct fx_s {
    imgw_store_t *s;
    imgw_store_loop_t *sl;
} fx_t;

/* max_conversations of the next sc_open (conv_bounds sets it). */
static int sc_max_convs;

static void sc_open(fx_t *f, int retention_count, int dedupe_ttl);
static void sc_close(fx_t *f);
static int sc_wait(fx_t *f, const int *flag);
static int64_t sc_time_ms(uint64_t mid);

#endif
