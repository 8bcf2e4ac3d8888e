/*
 * mem_timeline.c: the memory backend's users and their timelines: records,
 * rings, retention by count and age, the per-user sweep, and the append, sync
 * and max_seq requests.
 * See memory.c for the locking and memory rules every file follows.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "log.h"
#include "mem_int.h"

/* ---- users and timelines ------------------------------------------------- */

imgw__mem_user_t *
imgw__mem_user_find(imgw__mem_shard_t *sh, uint64_t h, const char *id)
{
    for (imgw__mem_hnode_t *x = sh->users.b[h & sh->users.mask]; x;
         x = x->next) {
        imgw__mem_user_t *u = (imgw__mem_user_t *)x;
        if (x->hash == h && strcmp(u->id, id) == 0)
            return u;
    }
    return NULL;
}

/*
 * Finds or creates the record; NULL with *err = IMGW_ENOMEM, or
 * IMGW_EBUSY when the node holds max_users records already (counted in
 * users_refused). A new record is idle (no route, nothing used), which
 * reads exactly like an unknown user, so creating one and then failing
 * later leaves no visible state: the sweep drops it. The count is reserved
 * before the allocation, so concurrent creations on other shards cannot
 * pass the cap.
 */
imgw__mem_user_t *
imgw__mem_user_get(imgw__mem_t *m, imgw__mem_shard_t *sh, uint64_t h,
                   const char *id, int *err)
{
    imgw__mem_user_t *u = imgw__mem_user_find(sh, h, id);
    if (u != NULL)
        return u;
    if (atomic_fetch_add_explicit(&m->n_users, 1, memory_order_relaxed) >=
        m->max_users) {
        atomic_fetch_sub_explicit(&m->n_users, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&m->users_refused, 1, memory_order_relaxed);
        IMGW_LOG_WARN_RL("store: %zu user records (store.max_users): "
                         "refusing a new one",
                         m->max_users);
        *err = IMGW_EBUSY;
        return NULL;
    }
    size_t len = strlen(id);
    /* offsetof, not sizeof: the id starts in the struct's tail padding,
     * which keeps short ids in a smaller malloc chunk. */
    u = mem_calloc(1, offsetof(imgw__mem_user_t, id) + len + 1);
    if (u == NULL) {
        atomic_fetch_sub_explicit(&m->n_users, 1, memory_order_relaxed);
        *err = IMGW_ENOMEM;
        return NULL;
    }
    memcpy(u->id, id, len + 1);
    u->h.hash = h;
    htab_insert(&sh->users, &u->h);
    return u;
}

/*
 * The memory twin of IM-SEQ's TTL: a max_seq unused for seq_ttl (longer
 * than retention, so the timeline has aged out by then) is forgotten and
 * the next message starts again at seq 1. Lookups call this before they
 * read max_seq, so a late sweep never shows a counter Redis would have
 * expired. Aged entries must have been dropped first (imgw__mem_user_age).
 */
static inline void
used_seq_expire(const imgw__mem_t *m, imgw__mem_used_t *t, int64_t now)
{
    if (t->count == 0 && t->max_seq != 0 &&
        now - imgw__mem_touched_ms(t) >= m->seq_ttl_ms)
        t->max_seq = 0; /* used_shrink frees t if nothing else is in it */
}

void
imgw__mem_user_seq_expire(const imgw__mem_t *m, imgw__mem_user_t *u,
                          int64_t now)
{
    if (u->used != NULL)
        used_seq_expire(m, u->used, now);
}

void
imgw__mem_ring_pop(imgw__mem_t *m, imgw__mem_used_t *t)
{
    imgw__mem_blob_t *b = t->ring[t->head].blob;
    t->ring[t->head].blob = NULL;
    t->head = t->head + 1 == t->cap ? 0 : t->head + 1;
    t->count--;
    imgw__mem_blob_unref(m, b);
}

/*
 * Moves u's used part into one with ncap (>= count) ring slots, oldest at
 * index 0, creating an empty one (max_seq 0, touched now) if u has none.
 * It moves: callers re-read u->used after this, never keep one across it.
 */
int
imgw__mem_ring_realloc(imgw__mem_user_t *u, uint32_t ncap, int64_t now)
{
    const imgw__mem_used_t *o = u->used;
    imgw__mem_used_t *t =
        mem_malloc(sizeof(*t) + (size_t)ncap * sizeof(t->ring[0]));
    if (t == NULL)
        return IMGW_ENOMEM;
    if (o != NULL) {
        *t = *o; /* the fixed part */
    } else {
        memset(t, 0, sizeof(*t));
        imgw__mem_touch(t, now);
    }
    t->cap = ncap;
    t->head = 0;
    uint32_t j = t->count ? o->head : 0;
    for (uint32_t i = 0; i < t->count; i++) {
        t->ring[i] = o->ring[j];
        if (++j == o->cap)
            j = 0;
    }
    imgw_free(u->used);
    u->used = t;
    return 0;
}

imgw__mem_used_t *
imgw__mem_used_own(imgw__mem_user_t *u, int64_t now)
{
    if (u->used == NULL)
        (void)imgw__mem_ring_realloc(u, 0, now); /* failure: stays NULL */
    return u->used;
}

/* Makes room for one more entry, creating the used part at the user's
 * first. At retention_count the append pops the oldest instead, so the
 * ring never exceeds retention_count slots. */
static int
ring_reserve(const imgw__mem_t *m, imgw__mem_user_t *u, int64_t now)
{
    uint32_t max = (uint32_t)m->retention_count;
    const imgw__mem_used_t *t = u->used;
    if (t != NULL && (t->count < t->cap || t->count >= max))
        return 0;
    uint32_t ncap = t && t->cap ? t->cap * 2 : 4;
    if (ncap > max)
        ncap = max;
    return imgw__mem_ring_realloc(u, ncap, now);
}

/*
 * Gives back what aging has emptied (failure: keep it): the used part of
 * a user left with no entry, no positions and an expired max_seq entirely,
 * which takes it back to an idle record; the ring of one whose max_seq or
 * positions live on; most of a ring that is mostly empty. Runs after
 * imgw__mem_user_seq_expire.
 */
static void
used_shrink(imgw__mem_user_t *u)
{
    imgw__mem_used_t *t = u->used;
    if (t == NULL)
        return;
    if (t->count == 0 && t->max_seq == 0 && t->pos == NULL) {
        imgw_free(t);
        u->used = NULL;
    } else if (t->count == 0 && t->cap > 0) {
        (void)imgw__mem_ring_realloc(u, 0, 0);
    } else if (t->cap > 16 && t->count * 4 <= t->cap) {
        (void)imgw__mem_ring_realloc(u, t->count * 2 > 8 ? t->count * 2 : 8, 0);
    }
}

/* Drops entries at least retention_days old. */
static inline void
used_age(imgw__mem_t *m, imgw__mem_used_t *t, int64_t now)
{
    while (t->count > 0 && now - t->ring[t->head].stored_ms >= m->retention_ms)
        imgw__mem_ring_pop(m, t);
}

void
imgw__mem_user_age(imgw__mem_t *m, imgw__mem_user_t *u, int64_t now)
{
    if (u->used != NULL)
        used_age(m, u->used, now);
}

void
imgw__mem_routes_expire(imgw__mem_shard_t *sh, imgw__mem_user_t *u,
                        int64_t now)
{
    imgw__mem_route_t *rt = imgw__mem_routes(u);
    for (uint16_t i = 0; i < u->n_routes;) {
        if (rt[i].expire_ms <= now) {
            imgw__mem_pb_put(sh, rt[i].pb);
            if (i != --u->n_routes)
                rt[i] = rt[u->n_routes];
        } else {
            i++;
        }
    }
}

/* Room for one more route when n_routes == imgw__mem_routes_cap(u): the
 * second moves the inline one into an array of two, later ones double it
 * (up to IMGW_STORE_MAX_ROUTES). */
int
imgw__mem_routes_grow(imgw__mem_user_t *u)
{
    if (u->cap_routes == 0) {
        imgw__mem_route_t *a = mem_malloc(2 * sizeof(*a));
        if (a == NULL)
            return IMGW_ENOMEM;
        a[0] = u->r.one;
        u->r.arr = a;
        u->cap_routes = 2;
        return 0;
    }
    return imgw__mem_array_grow((void **)&u->r.arr, &u->cap_routes,
                                sizeof(*u->r.arr), IMGW_STORE_MAX_ROUTES);
}

/* Back to the inline route once at most one is left (the sweep, not
 * route_del: a user flapping between two platforms would otherwise
 * allocate at every second route_set). */
static void
routes_shrink(imgw__mem_user_t *u)
{
    if (u->cap_routes == 0 || u->n_routes > 1)
        return;
    imgw__mem_route_t *a = u->r.arr;
    if (u->n_routes == 1)
        u->r.one = a[0];
    else
        memset(&u->r.one, 0, sizeof(u->r.one));
    u->cap_routes = 0;
    imgw_free(a);
}

/*
 * Whether the sweep may free the record: nothing retained, no live route,
 * and either nothing at all (it reads like an unknown user) or unused for
 * seq_ttl (its max_seq has expired; its delivered / read positions go with
 * it, as Redis's IM-POS / IM-READ expire retention after their last write).
 */
static int
user_is_free(const imgw__mem_t *m, imgw__mem_user_t *u, int64_t now)
{
    if (imgw__mem_count_of(u) > 0 || u->n_routes > 0)
        return 0;
    imgw__mem_user_seq_expire(m, u, now);
    const imgw__mem_pos_t *p = imgw__mem_pos_of(u);
    if (imgw__mem_max_seq_of(u) == 0 &&
        (p == NULL || (p->n_dev == 0 && p->n_read == 0)))
        return 1;
    /* used != NULL: it holds the max_seq or positions */
    return now - imgw__mem_touched_ms(u->used) >= m->seq_ttl_ms;
}

void
imgw__mem_user_free(imgw__mem_t *m, imgw__mem_shard_t *sh,
                    imgw__mem_user_t *u)
{
    imgw__mem_used_t *t = u->used;
    imgw__mem_pos_t *p = imgw__mem_pos_of(u);
    while (t != NULL && t->count > 0)
        imgw__mem_ring_pop(m, t);
    imgw_free(t);
    const imgw__mem_route_t *rt = imgw__mem_routes(u);
    for (uint16_t i = 0; i < u->n_routes; i++)
        imgw__mem_pb_put(sh, rt[i].pb);
    if (u->cap_routes != 0)
        imgw_free(u->r.arr);
    if (p != NULL) {
        for (uint16_t i = 0; i < p->n_dev; i++)
            imgw_free(p->dev[i].device);
        for (uint16_t i = 0; i < p->n_read; i++)
            imgw_free(p->reads[i].cm);
        imgw_free(p->dev);
        imgw_free(p->reads);
        imgw__mem_conv_free(&p->convs);
        imgw_free(p);
    }
    imgw_free(u);
}

/* Grows a small per-user array by doubling, up to max elements. */
int
imgw__mem_array_grow(void **arr, uint16_t *cap, size_t elsize, uint16_t max)
{
    /* Starts at one: most users hold one device position. */
    uint32_t ncap = *cap ? (uint32_t)*cap * 2 : 1;
    if (ncap > max)
        ncap = max;
    void *p = mem_realloc(*arr, ncap * elsize);
    if (p == NULL)
        return IMGW_ENOMEM;
    *arr = p;
    *cap = (uint16_t)ncap;
    return 0;
}

imgw__mem_pos_t *
imgw__mem_pos_own(imgw__mem_user_t *u, int64_t now)
{
    imgw__mem_used_t *t = imgw__mem_used_own(u, now);
    if (t != NULL && t->pos == NULL)
        t->pos = mem_calloc(1, sizeof(*t->pos));
    return t ? t->pos : NULL;
}

/* Visits up to budget buckets of a shard's users, continuing where the
 * last visit stopped: ages timelines and expires their max_seq, drops
 * expired routes, shrinks timelines and route arrays (freeing timelines
 * that hold nothing), frees records that hold nothing. A table resized
 * between visits may make one pass skip or repeat a few users; the next
 * pass gets them. */
void
imgw__mem_users_sweep(imgw__mem_t *m, imgw__mem_shard_t *sh, int64_t now,
                      int budget)
{
    size_t b = sh->cursor;
    for (; budget > 0 && b <= sh->users.mask; budget--, b++) {
        imgw__mem_hnode_t **pp = &sh->users.b[b];
        while (*pp != NULL) {
            imgw__mem_user_t *u = (imgw__mem_user_t *)*pp;
            imgw__mem_user_age(m, u, now);
            imgw__mem_user_seq_expire(m, u, now);
            imgw__mem_routes_expire(sh, u, now);
            used_shrink(u);
            routes_shrink(u);
            if (user_is_free(m, u, now)) {
                *pp = u->h.next;
                sh->users.n--;
                atomic_fetch_sub_explicit(&m->n_users, 1, memory_order_relaxed);
                imgw__mem_user_free(m, sh, u);
            } else {
                pp = &u->h.next;
            }
        }
    }
    if (b > sh->users.mask) {
        b = 0;
        htab_shrink(&sh->users);
        imgw__mem_idx_shrink(&sh->dedupes);
        imgw__mem_idx_shrink(&sh->metas);
        htab_shrink(&sh->groups);
    }
    sh->cursor = b;
}

/* ---- append -------------------------------------------------------------- */

typedef struct imgw__mem_slot_s {
    uint64_t hash;
    imgw__mem_user_t *u;
} imgw__mem_slot_t;

/*
<<<<<<< HEAD
 * All or nothing. Everything whose size is known up front (blob,
 * metadata, dedupe key, the per-user slot array) is
 * allocated before any lock. Under the locks, the only allocations are an
 * index growing, a missing user record and a ring growing; none changes
 * what any reader can see (a migrating index finds the same entries, an
 * empty record reads like an unknown user, a bigger ring holds the same
 * entries), so on ENOMEM we unlock and return with nothing appended. After
 * that point nothing can fail.
=======
 * All or nothing. Everything whose size is known up front (blob,
 * metadata, dedupe key, the per-user slot array) is allocated before any
 * lock. Under the locks, the only allocations are a missing user record,
 * a user's first timeline and a ring growing; none changes what any reader
 * can see (an empty record reads like an unknown user, an empty timeline
 * like none, a bigger ring holds the same entries), so on ENOMEM we unlock
 * and return with nothing appended. After that point nothing can fail.
>>>>>>> main
 */
int
imgw__mem_append(imgw_store_loop_t *sl, imgw_store_append_t *req,
                 imgw_store_append_cb cb, void *data)
{
    imgw__mem_t *m = sl->store->impl;
    size_t n = req->n_users;
    const char *cmid = req->client_msg_id ? req->client_msg_id : "";
    const char *conv = req->conversation_id ? req->conversation_id : "";
    size_t slen = strlen(req->sender), clen = strlen(cmid);
    size_t vlen = strlen(conv);
    imgw__mem_slot_t stack_slots[MEM_STACK_SLOTS], *slots = stack_slots;
    imgw__mem_blob_t *blob = NULL;
    imgw__mem_meta_t *meta = NULL;
    imgw__mem_dedupe_t *dd = NULL;
    int r = IMGW_ENOMEM;

    if (n > MEM_STACK_SLOTS) {
        slots = mem_malloc(n * sizeof(*slots));
        if (slots == NULL)
            return IMGW_ENOMEM;
    }
    blob = mem_malloc(sizeof(*blob) + req->entry_len);
    meta = mem_malloc(MEM_META_SIZE(slen, vlen));
    if (clen > 0)
        dd = mem_malloc(MEM_DEDUPE_SIZE(slen, clen));
    if (blob == NULL || meta == NULL || (clen > 0 && dd == NULL))
        goto out;

    uint64_t mask = 0;
    for (size_t i = 0; i < n; i++) {
        slots[i].hash = hash_str(m, req->users[i]);
        slots[i].u = NULL;
        mask |= 1ULL << shard_of(slots[i].hash);
    }
    /* The dedupe key lives in the sender's shard (usually locked anyway
     * for users[0]), hashed on the whole key within it. */
    imgw__mem_shard_t *sh_s = &m->shards[shard_of(hash_str(m, req->sender))];
    uint64_t hd = clen > 0 ? hash_dedupe(m, req->sender, cmid) : 0;
    uint64_t hm = hash_id(m, req->message_id);
    imgw__mem_shard_t *sh_m = &m->shards[shard_of(hm)];
    mask |= 1ULL << (sh_s - m->shards);
    mask |= 1ULL << (sh_m - m->shards);

    memcpy(meta->sender, req->sender, slen + 1);
    memcpy(meta->sender + slen + 1, conv, vlen + 1);
    meta->conv = meta->sender + slen + 1;
    meta->message_id = req->message_id;
    meta->server_time_ms = req->server_time_ms;
    atomic_init(&meta->revoked, 0);
    atomic_init(&meta->refs, 2); /* the table and the blob */
    meta->hash = (uint32_t)hm;
    atomic_init(&blob->refs, (unsigned)n);
    blob->meta = meta;
    blob->len = req->entry_len;
    if (req->entry_len > 0)
        memcpy(blob->data, req->entry, req->entry_len);
    if (dd != NULL) {
        memcpy(dd->key, req->sender, slen + 1);
        memcpy(dd->key + slen + 1, cmid, clen + 1);
        dd->hash = (uint32_t)hd;
    }

    int64_t now = mem_now(m);
    int ckind = imgw__store_conv_kind(conv, n);
    lock_mask(m, mask);

    imgw__mem_dedupe_t *old_dd = NULL;
    if (dd != NULL) {
        old_dd = imgw__mem_dedupe_find(sh_s, hd, dd->key);
        if (old_dd != NULL && old_dd->expire_ms > now) {
            req->duplicate = 1;
            req->dup_message_id = old_dd->message_id;
            req->dup_seq = old_dd->seq;
            unlock_mask(m, mask);
            r = 0; /* accepted: out frees what we prepared, runs cb */
            goto out;
        }
    }
    imgw__mem_meta_t *old_meta = imgw__mem_meta_find(sh_m, hm, req->message_id);
    if (old_meta != NULL && old_meta->expire_ms > now) {
        /* Message ids are unique by contract (protocol.md 5); a reuse
         * would make msg_get and revoke ambiguous, so refuse it. */
        unlock_mask(m, mask);
        r = IMGW_EEXIST;
        goto out;
    }
    /* Room in both indexes (a growth is invisible to readers). */
    if (imgw__mem_idx_reserve(&sh_m->metas) != 0 ||
        (dd != NULL && old_dd == NULL &&
         imgw__mem_idx_reserve(&sh_s->dedupes) != 0)) {
        unlock_mask(m, mask);
        r = IMGW_ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        imgw__mem_shard_t *sh = &m->shards[shard_of(slots[i].hash)];
        imgw__mem_user_t *u =
            imgw__mem_user_get(m, sh, slots[i].hash, req->users[i], &r);
        if (u == NULL || ring_reserve(m, u, now) != 0 ||
            (ckind != 0 && ((u->used->pos == NULL && /* reserved: used */
                             imgw__mem_pos_own(u, now) == NULL) ||
                            imgw__mem_conv_reserve(&u->used->pos->convs,
                                                   m->max_convs) != 0))) {
            unlock_mask(m, mask);
            if (u != NULL)
                r = IMGW_ENOMEM;
            goto out;
        }
        slots[i].u = u;
    }

    /* Commit: nothing below can fail. */
    if (old_meta != NULL)
        imgw__mem_meta_drop(m, sh_m, old_meta);
    for (size_t i = 0; i < n; i++) {
        /* ring_reserve gave u its used part; it does not move from here
         * on. */
        imgw__mem_used_t *t = slots[i].u->used;
        used_age(m, t, now);
        used_seq_expire(m, t, now);
        imgw__mem_touch(t, now);
        /* A timeline that starts (again) at seq 1 starts a new epoch; the
         * message id makes it unique and replays of the file backend's
         * journal rebuild the same one. */
        if (t->max_seq == 0)
            t->epoch = req->message_id;
        /* count == cap only if users[] named this user twice (against the
         * contract): drop the oldest rather than overflow. */
        while (t->count >= (uint32_t)m->retention_count || t->count == t->cap)
            imgw__mem_ring_pop(m, t);
        imgw__mem_ent_t *e = &t->ring[(t->head + t->count) % t->cap];
        e->stored_ms = now;
        e->blob = blob;
        t->count++;
        req->seqs[i] = ++t->max_seq;
        if (ckind != 0)
            imgw__mem_conv_update(
                &t->pos->convs, m->max_convs, ckind,
                imgw__store_conv_peer(ckind, conv, req->users, n, i),
                req->message_id, req->seqs[i], req->sender, req->msg_type,
                req->preview, now, i == 0);
    }
    atomic_fetch_add_explicit(&m->blobs_live, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&m->metas_live, 1, memory_order_relaxed);
    meta->expire_ms = now + m->meta_ms;
    imgw__mem_idx_insert(&sh_m->metas, hm, meta);
    imgw_list_insert_tail(&sh_m->meta_age, &meta->age);
    atomic_fetch_add_explicit(&m->n_metas, 1, memory_order_relaxed);
    imgw__mem_meta_evict(m, sh_m, meta);
    if (dd != NULL) {
        if (old_dd != NULL) {
            /* An expired key still in the table: reuse its record. */
            imgw_free(dd);
            dd = old_dd;
            imgw_list_remove(&dd->age);
        } else {
            imgw__mem_idx_insert(&sh_s->dedupes, hd, dd);
            atomic_fetch_add_explicit(&m->n_dedupes, 1, memory_order_relaxed);
        }
        dd->expire_ms = now + m->dedupe_ms;
        dd->message_id = req->message_id;
        dd->seq = req->seqs[0];
        imgw_list_insert_tail(&sh_s->dedupe_age, &dd->age);
        imgw__mem_dedupe_expire(m, sh_s, now, MEM_LAZY_POPS);
        imgw__mem_dedupe_evict(m, sh_s, dd);
    }
    imgw__mem_meta_expire(m, sh_m, now, MEM_LAZY_POPS);
    unlock_mask(m, mask);

    if (slots != stack_slots)
        imgw_free(slots);
    cb(req, 0, data);
    return 0;

out:
    imgw_free(blob);
    imgw_free(meta);
    imgw_free(dd);
    if (slots != stack_slots)
        imgw_free(slots);
    if (r == 0)
        cb(req, 0, data);
    return r;
}

/* ---- timelines ----------------------------------------------------------- */

int
imgw__mem_sync(imgw_store_loop_t *sl, const char *user, int64_t min_seq,
               int64_t max_seq, int limit, imgw_store_sync_cb cb, void *data)
{
    imgw__mem_t *m = sl->store->impl;
    uint64_t h = hash_str(m, user);
    imgw__mem_shard_t *sh = &m->shards[shard_of(h)];
    imgw_store_entry_t stack_e[MEM_STACK_ENTRIES], *e = stack_e;
    imgw__mem_blob_t *stack_b[MEM_STACK_ENTRIES], **bl = stack_b;
    int64_t now = mem_now(m);

    pthread_mutex_lock(&sh->mu);
    imgw__mem_user_t *u = imgw__mem_user_find(sh, h, user);
    if (u == NULL) {
        pthread_mutex_unlock(&sh->mu);
        cb(0, NULL, 0, 0, 0, 1, 0, data);
        return 0;
    }
    imgw__mem_user_age(m, u, now);
    imgw__mem_user_seq_expire(m, u, now);
    imgw__mem_used_t *t = u->used; /* NULL: reads as max_seq 0, empty */
    if (t != NULL)
        imgw__mem_touch(t, now); /* the client holds seqs: keep max_seq alive */
    int64_t server_max = imgw__mem_max_seq_of(u);
    uint64_t epoch = server_max != 0 ? t->epoch : 0;
    int64_t first = server_max - (int64_t)imgw__mem_count_of(u) + 1;
    int64_t hi = max_seq == 0 || max_seq > server_max ? server_max : max_seq;
    int64_t lo = first, avail = 0;
    if (min_seq < hi) { /* so min_seq + 1 cannot overflow */
        lo = min_seq + 1 > first ? min_seq + 1 : first;
        avail = hi >= lo ? hi - lo + 1 : 0;
    }
    size_t k = avail > limit ? (size_t)limit : (size_t)avail;
    int has_more = avail > (int64_t)k;
    if (k > MEM_STACK_ENTRIES) {
        /* Sized under the lock: malloc takes none of ours. */
        e = mem_malloc(k * sizeof(*e));
        bl = mem_malloc(k * sizeof(*bl));
        if (e == NULL || bl == NULL) {
            pthread_mutex_unlock(&sh->mu);
            imgw_free(e);
            imgw_free(bl);
            return IMGW_ENOMEM;
        }
    }
    uint32_t start = (uint32_t)(lo - first);
    for (size_t i = 0; i < k; i++) { /* k > 0: t != NULL */
        imgw__mem_blob_t *b = t->ring[(t->head + start + i) % t->cap].blob;
        imgw__mem_blob_ref(b);
        bl[i] = b;
        e[i].seq = lo + (int64_t)i;
        e[i].blob = b->data;
        e[i].len = b->len;
        e[i].revoked =
            atomic_load_explicit(&b->meta->revoked, memory_order_relaxed);
    }
    pthread_mutex_unlock(&sh->mu);

    /* The references keep the bytes alive while the callback runs with no
     * lock held, even if a concurrent append trims these entries. */
    cb(0, e, k, has_more, server_max, first, epoch, data);
    for (size_t i = 0; i < k; i++)
        imgw__mem_blob_unref(m, bl[i]);
    if (e != stack_e) {
        imgw_free(e);
        imgw_free(bl);
    }
    return 0;
}

int
imgw__mem_max_seq(imgw_store_loop_t *sl, const char *user, imgw_store_seq_cb cb,
                  void *data)
{
    imgw__mem_t *m = sl->store->impl;
    uint64_t h = hash_str(m, user);
    imgw__mem_shard_t *sh = &m->shards[shard_of(h)];
    int64_t now = mem_now(m), seq = 0;
    uint64_t epoch = 0;
    pthread_mutex_lock(&sh->mu);
    imgw__mem_user_t *u = imgw__mem_user_find(sh, h, user);
    if (u != NULL) {
        /* At auth: the client is about to hold seqs (IM-SEQ's TTL restarts
         * in Redis). */
        imgw__mem_user_age(m, u, now);
        imgw__mem_user_seq_expire(m, u, now);
        if (u->used != NULL)
            imgw__mem_touch(u->used, now);
        seq = imgw__mem_max_seq_of(u);
        epoch = seq != 0 ? u->used->epoch : 0;
    }
    pthread_mutex_unlock(&sh->mu);
    cb(0, seq, epoch, data);
    return 0;
}
