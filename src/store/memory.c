/*
 * memory.c: the in-process store backend ("memory"): one node, the same
 * semantics as the redis backend (docs/store.md).
 *
 * Threads: one instance is shared by every loop. All state lives in 64
 * shards, each one mutex and four hash tables (users, dedupe keys, message
 * metadata, groups); a key's shard is the top 6 bits of its seeded hash. A
 * request locks the shards it needs in ascending index order, copies or
 * takes references to what its callback needs, unlocks, and only then runs
 * the callback, synchronously, on the calling thread: a callback may call
 * back into the store. imgw_store_tick() may run on any thread.
 *
 * Files (mem_int.h is what they share: the shard and record types, the
 * allocation, hashing and locking helpers, and each file's functions the
 * others call, as imgw__mem_*):
 *     memory.c        the backend table, open/close, loops, tick, stats
 *     mem_timeline.c  users, their rings, append, sync, max_seq, retention
 *     mem_dedupe.c    dedupe keys: lookup, expiry, eviction
 *     mem_meta.c      blobs and message metadata, msg_get, revoke
 *     mem_groups.c    groups
 *     mem_routes.c    routes
 *     mem_positions.c delivered and read positions
 *     mem_snapshot.c  dump and load for the file backend (file.c)
 * The file backend sits above this one (it calls imgw__store_memory's
 * table and the snapshot functions); nothing here calls the file backend.
 *
 * Memory: an appended entry is copied once into a blob shared by all the
 * timelines of that append (a 1000-member group message is stored once,
 * not 1000 times). Blobs and message metadata are reference-counted with
 * atomics, not under the shard locks, because their holders live in
 * different shards: the timelines of several users, the metadata table, and
 * a sync callback that runs with no lock held.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "err.h"
#include "log.h"
#include "mem_int.h"

/* The unit tests fail the Nth allocation through base/alloc.c's one
 * countdown (every store allocation is an imgw_try_* one). */
int
imgw__store_mem_fail_alloc(int n)
{
    return imgw__alloc_fail_nth(n);
}

static int64_t
mem_realtime_ms(void *arg)
{
    (void)arg;
    return imgw_clock_wall_ms();
}

/* ---- open, close, loops, tick -------------------------------------------- */

static void
drain_free(void *p, void *arg)
{
    (void)arg;
    imgw_free(p);
}

static void
drain_meta(void *p, void *arg)
{
    imgw__mem_meta_unref(arg, p);
}

static void
shards_free(imgw__mem_t *m, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        imgw__mem_shard_t *sh = &m->shards[i];
        imgw__mem_hnode_t *x, *next;
        for (size_t b = 0; sh->users.b && b <= sh->users.mask; b++)
            for (x = sh->users.b[b]; x; x = next) {
                next = x->next;
                imgw__mem_user_free(m, sh, (imgw__mem_user_t *)x);
            }
        imgw__mem_idx_drain(&sh->dedupes, drain_free, NULL);
        imgw__mem_idx_drain(&sh->metas, drain_meta, m);
        for (size_t b = 0; sh->groups.b && b <= sh->groups.mask; b++)
            for (x = sh->groups.b[b]; x; x = next) {
                next = x->next;
                imgw_free(x); /* no reader can hold one: no loop is left */
            }
        imgw_free(sh->users.b);
        imgw_free(sh->groups.b);
        /* The users held every reference: nothing is left in pbs. */
        imgw_free(sh->pbs.b);
        pthread_mutex_destroy(&sh->mu);
    }
    imgw_free(m->shards);
}

static int
mem_open(imgw_store_t *s, const imgw_store_cfg_t *cfg, char *err, size_t errlen)
{
    if (cfg->retention_count < 1 ||
        cfg->retention_count > MEM_MAX_RETENTION_COUNT) {
        snprintf(err, errlen, "store: retention_count must be 1..%d",
                 MEM_MAX_RETENTION_COUNT);
        return IMGW_ECONFIG;
    }
    if (cfg->retention_days < 1 ||
        cfg->retention_days > MEM_MAX_RETENTION_DAYS) {
        snprintf(err, errlen, "store: retention_days must be 1..%d",
                 MEM_MAX_RETENTION_DAYS);
        return IMGW_ECONFIG;
    }
    if (cfg->dedupe_ttl < 1 || cfg->dedupe_ttl > MEM_MAX_DEDUPE_TTL) {
        snprintf(err, errlen, "store: dedupe_ttl must be 1..%d",
                 MEM_MAX_DEDUPE_TTL);
        return IMGW_ECONFIG;
    }
    if (cfg->max_dedupes > MEM_MAX_RECORDS ||
        cfg->max_metas > MEM_MAX_RECORDS) {
        snprintf(err, errlen,
                 "store: max_dedupes and max_metas must be "
                 "0..%zu",
                 MEM_MAX_RECORDS);
        return IMGW_ECONFIG;
    }
    if (cfg->meta_ttl < 0 || cfg->meta_ttl > MEM_MAX_RETENTION_DAYS * 86400) {
        snprintf(err, errlen, "store: meta_ttl must be 0..%d",
                 MEM_MAX_RETENTION_DAYS * 86400);
        return IMGW_ECONFIG;
    }
    if (cfg->max_users > MEM_MAX_RECORDS) {
        snprintf(err, errlen, "store: max_users must be 0..%zu",
                 MEM_MAX_RECORDS);
        return IMGW_ECONFIG;
    }
    if (cfg->seq_idle_days < 0 ||
        cfg->seq_idle_days > IMGW__STORE_MAX_SEQ_IDLE_DAYS) {
        snprintf(err, errlen, "store: seq_idle_days must be 1..%d",
                 IMGW__STORE_MAX_SEQ_IDLE_DAYS);
        return IMGW_ECONFIG;
    }
    if (cfg->max_conversations < 0 ||
        cfg->max_conversations > IMGW__STORE_CONVS_MAX) {
        snprintf(err, errlen, "store: max_conversations must be 0..%d",
                 IMGW__STORE_CONVS_MAX);
        return IMGW_ECONFIG;
    }
    imgw__mem_t *m = mem_calloc(1, sizeof(*m));
    if (m == NULL)
        return IMGW_ENOMEM;
    m->max_convs = cfg->max_conversations > 0 ? (uint32_t)cfg->max_conversations
                                              : IMGW__STORE_CONVS_DEFAULT;
    m->shards = mem_aligned_alloc(_Alignof(imgw__mem_shard_t),
                                  MEM_SHARDS * sizeof(imgw__mem_shard_t));
    if (m->shards == NULL) {
        imgw_free(m);
        return IMGW_ENOMEM;
    }
    memset(m->shards, 0, MEM_SHARDS * sizeof(imgw__mem_shard_t));
    m->retention_count = cfg->retention_count;
    m->retention_ms = (int64_t)cfg->retention_days * 86400 * 1000;
    m->dedupe_ms = (int64_t)cfg->dedupe_ttl * 1000;
    m->meta_ms =
        cfg->meta_ttl > 0 && (int64_t)cfg->meta_ttl * 1000 < m->retention_ms
            ? (int64_t)cfg->meta_ttl * 1000
            : m->retention_ms;
    size_t max_dd =
        cfg->max_dedupes ? cfg->max_dedupes : MEM_DEFAULT_MAX_DEDUPES;
    size_t max_mt = cfg->max_metas ? cfg->max_metas : MEM_DEFAULT_MAX_METAS;
    m->max_dedupes = max_dd;
    m->max_metas = max_mt;
    m->max_users = cfg->max_users ? cfg->max_users : MEM_DEFAULT_MAX_USERS;
    m->seq_ttl_ms = m->retention_ms +
                    (int64_t)(cfg->seq_idle_days ? cfg->seq_idle_days
                                                 : IMGW__STORE_SEQ_IDLE_DAYS) *
                        86400 * 1000;
    atomic_init(&m->n_users, 0);
    atomic_init(&m->users_refused, 0);
    atomic_init(&m->n_dedupes, 0);
    atomic_init(&m->n_metas, 0);
    m->clock = mem_realtime_ms;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    m->seed = mix64((uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^
                    (uint64_t)(uintptr_t)m);
    atomic_init(&m->tick_next, 0);
    atomic_init(&m->blobs_live, 0);
    atomic_init(&m->metas_live, 0);
    for (unsigned i = 0; i < MEM_SHARDS; i++) {
        imgw__mem_shard_t *sh = &m->shards[i];
        imgw_list_init(&sh->dedupe_age);
        imgw_list_init(&sh->meta_age);
        if (pthread_mutex_init(&sh->mu, NULL) != 0) {
            shards_free(m, i);
            imgw_free(m);
            return IMGW_ENOMEM;
        }
        /* Tables that failed keep b == NULL, which shards_free skips. */
        if (htab_init(&sh->users) || imgw__mem_idx_init(&sh->dedupes, offsetof(imgw__mem_dedupe_t, hash)) ||
            imgw__mem_idx_init(&sh->metas, offsetof(imgw__mem_meta_t, hash)) || htab_init(&sh->groups) ||
            htab_init(&sh->pbs)) {
            shards_free(m, i + 1);
            imgw_free(m);
            return IMGW_ENOMEM;
        }
    }
    s->impl = m;
    IMGW_LOG_INFO("store: memory backend, %u shards, retention %d entries "
                  "/ %d days, dedupe %d s (at most %zu), metadata %lld s "
                  "(at most %zu), users at most %zu, max seq kept %lld days "
                  "after last use",
                  MEM_SHARDS, cfg->retention_count, cfg->retention_days,
                  cfg->dedupe_ttl, max_dd, (long long)(m->meta_ms / 1000),
                  max_mt, m->max_users, (long long)(m->seq_ttl_ms / 86400000));
    return 0;
}

static void
mem_close(imgw_store_t *s)
{
    imgw__mem_t *m = s->impl;
    shards_free(m, MEM_SHARDS);
    imgw_free(m);
    s->impl = NULL;
}

static int
mem_loop_open(imgw_store_t *s, int loop_index, uv_loop_t *loop,
              imgw_store_loop_t **out)
{
    /* Nothing per loop: the handle only points at the shared state. */
    imgw_store_loop_t *sl = mem_calloc(1, sizeof(*sl));
    if (sl == NULL)
        return IMGW_ENOMEM;
    sl->store = s;
    sl->be = s->be;
    sl->loop_index = loop_index;
    sl->loop = loop;
    *out = sl;
    return 0;
}

static void
mem_loop_close(imgw_store_loop_t *sl)
{
    imgw_free(sl);
}

static int
mem_loop_ready(imgw_store_loop_t *sl)
{
    (void)sl;
    return 1;
}

/*
 * Bounded housekeeping: every shard's expired dedupe keys and metadata (at
 * most MEM_TICK_POPS each; appends pop more as they go) and index
 * migrations (MEM_TICK_MIGRATE buckets each), then the users of
 * MEM_TICK_USER_SHARDS shards, MEM_TICK_BUCKETS buckets each, so one call
 * holds any lock only briefly and a full pass over the users takes
 * MEM_SHARDS / MEM_TICK_USER_SHARDS calls per 256 buckets.
 */
static void
mem_tick(imgw_store_t *s, int64_t now_ms)
{
    imgw__mem_t *m = s->impl;
    for (unsigned i = 0; i < MEM_SHARDS; i++) {
        imgw__mem_shard_t *sh = &m->shards[i];
        pthread_mutex_lock(&sh->mu);
        imgw__mem_dedupe_expire(m, sh, now_ms, MEM_TICK_POPS);
        imgw__mem_meta_expire(m, sh, now_ms, MEM_TICK_POPS);
        /* A shrink's migration has no inserts to carry it on a quiet
         * node: move it along here. */
        imgw__mem_idx_step(&sh->dedupes, MEM_TICK_MIGRATE);
        imgw__mem_idx_step(&sh->metas, MEM_TICK_MIGRATE);
        pthread_mutex_unlock(&sh->mu);
    }
    for (unsigned k = 0; k < MEM_TICK_USER_SHARDS; k++) {
        unsigned i =
            atomic_fetch_add_explicit(&m->tick_next, 1, memory_order_relaxed) %
            MEM_SHARDS;
        imgw__mem_shard_t *sh = &m->shards[i];
        pthread_mutex_lock(&sh->mu);
        imgw__mem_users_sweep(m, sh, now_ms, MEM_TICK_BUCKETS);
        pthread_mutex_unlock(&sh->mu);
    }
}

static int
mem_stats(imgw_store_t *s, imgw_store_stats_t *out)
{
    imgw__mem_t *m = s->impl;
    out->users = atomic_load_explicit(&m->n_users, memory_order_relaxed);
    out->max_users = m->max_users;
    out->users_refused =
        atomic_load_explicit(&m->users_refused, memory_order_relaxed);
    return 0;
}

/* ---- the table ----------------------------------------------------------- */

/* ---- conversations ------------------------------------------------------- */

static int
mem_conv_list(imgw_store_loop_t *sl, const char *user, int64_t before_seq,
              int limit, imgw_store_conv_list_cb cb, void *data)
{
    imgw__mem_t *m = sl->store->impl;
    uint64_t h = hash_str(m, user);
    imgw__mem_shard_t *sh = &m->shards[shard_of(h)];
    /* limit <= IMGW_STORE_CONV_PAGE_MAX (store.c): a bounded copy taken
     * under the lock, handed to cb without it. */
    imgw_store_conv_t *out = mem_malloc((size_t)limit * sizeof(*out));
    if (out == NULL)
        return IMGW_ENOMEM;
    size_t k = 0;
    int has_more = 0;
    uint64_t total = 0;
    pthread_mutex_lock(&sh->mu);
    imgw__mem_user_t *u = imgw__mem_user_find(sh, h, user);
    imgw__mem_pos_t *p = u != NULL ? imgw__mem_pos_of(u) : NULL;
    if (p != NULL) {
        k = imgw__mem_conv_page(&p->convs, before_seq, (size_t)limit, out,
                                &has_more);
        total = imgw__mem_conv_total_unread(&p->convs);
    }
    pthread_mutex_unlock(&sh->mu);
    cb(0, out, k, has_more, total, data);
    imgw_free(out);
    return 0;
}

/* Messages of others in c above read_seq still in u's timeline. */
static uint32_t
conv_recount(const imgw__mem_user_t *u, const imgw_store_conv_t *c,
             int64_t read_seq)
{
    const imgw__mem_used_t *t = u->used;
    if (t == NULL)
        return 0;
    int64_t first = t->max_seq - (int64_t)t->count + 1;
    uint32_t n = 0;
    int64_t lo = read_seq + 1 > first ? read_seq + 1 : first;
    for (int64_t seq = lo; seq <= t->max_seq; seq++) {
        const imgw__mem_blob_t *b =
            t->ring[(t->head + (uint32_t)(seq - first)) % t->cap].blob;
        const imgw__mem_meta_t *mt = b->meta;
        if (strcmp(mt->sender, u->id) == 0)
            continue;
        if (c->kind == IMGW_STORE_CONV_GROUP
                ? strncmp(mt->conv, "g_", 2) == 0 &&
                      strcmp(mt->conv + 2, c->peer) == 0
                : strncmp(mt->conv, "s_", 2) == 0 &&
                      strcmp(mt->sender, c->peer) == 0)
            n++;
    }
    return n;
}

static int
mem_conv_read(imgw_store_loop_t *sl, const char *user, int kind,
              const char *peer, int64_t read_seq, imgw_store_done_cb cb,
              void *data)
{
    imgw__mem_t *m = sl->store->impl;
    uint64_t h = hash_str(m, user);
    imgw__mem_shard_t *sh = &m->shards[shard_of(h)];
    int status = 0;
    pthread_mutex_lock(&sh->mu);
    imgw__mem_user_t *u = imgw__mem_user_find(sh, h, user);
    imgw__mem_pos_t *p = u != NULL ? imgw__mem_pos_of(u) : NULL;
    imgw_store_conv_t *c =
        p != NULL ? imgw__mem_conv_find(&p->convs, kind, peer) : NULL;
    if (c == NULL) {
        status = IMGW_ENOTFOUND;
    } else {
        if (read_seq == 0 || read_seq > c->last_seq)
            read_seq = c->last_seq;
        if (read_seq > c->read_seq) { /* never back */
            c->read_seq = read_seq;
            c->unread =
                read_seq >= c->last_seq ? 0 : conv_recount(u, c, read_seq);
        }
    }
    pthread_mutex_unlock(&sh->mu);
    if (cb)
        cb(status, data);
    return 0;
}

static int
mem_conv_delete(imgw_store_loop_t *sl, const char *user, int kind,
                const char *peer, imgw_store_done_cb cb, void *data)
{
    imgw__mem_t *m = sl->store->impl;
    uint64_t h = hash_str(m, user);
    imgw__mem_shard_t *sh = &m->shards[shard_of(h)];
    pthread_mutex_lock(&sh->mu);
    imgw__mem_user_t *u = imgw__mem_user_find(sh, h, user);
    imgw__mem_pos_t *p = u != NULL ? imgw__mem_pos_of(u) : NULL;
    int status = p != NULL ? imgw__mem_conv_delete(&p->convs, kind, peer)
                           : IMGW_ENOTFOUND;
    pthread_mutex_unlock(&sh->mu);
    if (cb)
        cb(status, data);
    return 0;
}

const imgw_store_backend_t imgw__store_memory = {
    .name = "memory",
    .open = mem_open,
    .close = mem_close,
    .loop_open = mem_loop_open,
    .loop_close = mem_loop_close,
    .loop_ready = mem_loop_ready,
    .tick = mem_tick,
    .stats = mem_stats,
    .append = imgw__mem_append,
    .sync = imgw__mem_sync,
    .max_seq = imgw__mem_max_seq,
    .dedupe_get = imgw__mem_dedupe_get,
    .set_delivered = imgw__mem_set_delivered,
    .set_read = imgw__mem_set_read,
    .msg_get = imgw__mem_msg_get,
    .revoke = imgw__mem_revoke,
    .group_set = imgw__mem_group_set,
    .group_get = imgw__mem_group_get,
    .group_del = imgw__mem_group_del,
    .route_set = imgw__mem_route_set,
    .route_del = imgw__mem_route_del,
    .route_refresh = imgw__mem_route_refresh,
    .route_get = imgw__mem_route_get,
    .conv_list = mem_conv_list,
    .conv_read = mem_conv_read,
    .conv_delete = mem_conv_delete,
};

/* ---- test hooks (store_impl.h) ------------------------------------------- */

void
imgw__store_mem_set_clock(imgw_store_t *s, imgw__store_clock_fn fn, void *arg)
{
    if (s == NULL || s->be != &imgw__store_memory)
        return;
    imgw__mem_t *m = s->impl;
    m->clock = fn ? fn : mem_realtime_ms;
    m->clock_arg = arg;
}

int
imgw__store_mem_stats(imgw_store_t *s, imgw__store_mem_stats_t *out)
{
    if (s == NULL || out == NULL || s->be != &imgw__store_memory)
        return IMGW_EINVAL;
    imgw__mem_t *m = s->impl;
    memset(out, 0, sizeof(*out));
    for (unsigned i = 0; i < MEM_SHARDS; i++) {
        imgw__mem_shard_t *sh = &m->shards[i];
        pthread_mutex_lock(&sh->mu);
        out->users += sh->users.n;
        out->dedupes += imgw__mem_idx_count(&sh->dedupes);
        out->metas += imgw__mem_idx_count(&sh->metas);
        out->groups += sh->groups.n;
        out->route_strings += sh->pbs.n;
        for (size_t b = 0; b <= sh->users.mask; b++)
            for (imgw__mem_hnode_t *x = sh->users.b[b]; x; x = x->next) {
                imgw__mem_user_t *u = (imgw__mem_user_t *)x;
                out->entries += imgw__mem_count_of(u);
                out->routes += u->n_routes;
                out->route_arrays += u->cap_routes != 0;
                const imgw__mem_pos_t *p = imgw__mem_pos_of(u);
                out->used += u->used != NULL;
                out->devices += p ? p->n_dev : 0;
                out->reads += p ? p->n_read : 0;
            }
        pthread_mutex_unlock(&sh->mu);
    }
    out->blobs_live =
        atomic_load_explicit(&m->blobs_live, memory_order_relaxed);
    out->metas_live =
        atomic_load_explicit(&m->metas_live, memory_order_relaxed);
    return 0;
}
