/*
 * mem_snapshot.c: the memory backend's snapshots of the live state for the
 * file backend (file.c): imgw__store_mem_dump and the loader.
 * See memory.c for the locking and memory rules every file follows.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "err.h"
#include "log.h"
#include "rec.h"
#include "mem_int.h"

/* ---- snapshots (the file backend, file.c) -------------------------------- */

/*
 * A snapshot is a stream of records (rec.h) that rebuilds the live state in
 * an empty memory backend: metadata and blobs once each, numbered in the
 * order they are first met (blobs are shared by timelines in different
 * shards, metadata by a blob and the table), then per shard the metadata
 * table and the dedupe keys in age order, the groups, and each user with
 * its max_seq, positions and timeline slots. Routes are not durable.
 *
 * The caller (file.c) holds its journal lock, so no request that creates a
 * blob or metadata runs meanwhile; requests that only drop state (expiry,
 * aging in sync, the tick) still may, and shards are visited one lock at a
 * time. A pointer already numbered therefore still is the object that was
 * numbered: nothing new can be allocated at a freed blob's address until
 * the lock is released. The snapshot may thus miss records that expired
 * while it ran, never show a state that did not exist.
 */

typedef struct imgw__mem_pmap_s {
    const void **k;
    uint32_t *v;
    size_t mask, n;
} imgw__mem_pmap_t;

static uint64_t
pmap_hash(const void *p)
{
    return mix64((uint64_t)(uintptr_t)p);
}

/* Returns the slot of p (k[slot] == p, or NULL when absent). */
static size_t
pmap_slot(const imgw__mem_pmap_t *pm, const void *p)
{
    size_t i = pmap_hash(p) & pm->mask;
    while (pm->k[i] != NULL && pm->k[i] != p)
        i = (i + 1) & pm->mask;
    return i;
}

static int
pmap_grow(imgw__mem_pmap_t *pm)
{
    size_t nb = pm->k ? (pm->mask + 1) * 2 : 1024;
    imgw__mem_pmap_t nm = {imgw_try_calloc(nb, sizeof(void *)),
                           imgw_try_malloc(nb * sizeof(uint32_t)), nb - 1, 0};
    if (nm.k == NULL || nm.v == NULL) {
        imgw_free(nm.k);
        imgw_free(nm.v);
        return IMGW_ENOMEM;
    }
    for (size_t i = 0; pm->k && i <= pm->mask; i++)
        if (pm->k[i] != NULL) {
            size_t j = pmap_slot(&nm, pm->k[i]);
            nm.k[j] = pm->k[i];
            nm.v[j] = pm->v[i];
            nm.n++;
        }
    imgw_free(pm->k);
    imgw_free(pm->v);
    *pm = nm;
    return 0;
}

typedef struct imgw__mem_dump_s {
    imgw__rec_buf_t *out;
    imgw__mem_pmap_t map; /* metadata and blob pointers -> number */
    uint32_t n_metas, n_blobs;
} imgw__mem_dump_t;

/* Number of the metadata / blob p; emits its record the first time.
 * UINT32_MAX on ENOMEM (out->err is set then too). */
static uint32_t
dump_ref(imgw__mem_dump_t *d, const void *p, int is_blob)
{
    if (d->map.k == NULL || (d->map.n + 1) * 2 > d->map.mask + 1)
        if (pmap_grow(&d->map) != 0) {
            d->out->err = IMGW_ENOMEM;
            return UINT32_MAX;
        }
    size_t i = pmap_slot(&d->map, p);
    if (d->map.k[i] != NULL)
        return d->map.v[i];
    uint32_t num;
    if (is_blob) {
        const imgw__mem_blob_t *b = p;
        uint32_t mnum = dump_ref(d, b->meta, 0);
        i = pmap_slot(&d->map, p); /* the map may have grown */
        num = d->n_blobs++;
        size_t at = imgw__rec_begin(d->out, IMGW__REC_S_BLOB);
        imgw__rec_put_u32(d->out, num);
        imgw__rec_put_u32(d->out, mnum);
        imgw__rec_put_bytes(d->out, b->data, b->len);
        imgw__rec_end(d->out, at);
    } else {
        const imgw__mem_meta_t *mt = p;
        num = d->n_metas++;
        size_t at = imgw__rec_begin(d->out, IMGW__REC_S_META);
        imgw__rec_put_u32(d->out, num);
        imgw__rec_put_u64(d->out, mt->message_id);
        imgw__rec_put_u64(d->out, (uint64_t)mt->server_time_ms);
        imgw__rec_put_u8(
            d->out, atomic_load_explicit(&mt->revoked, memory_order_relaxed));
        imgw__rec_put_str(d->out, mt->sender);
        imgw__rec_put_str(d->out, mt->conv);
        imgw__rec_end(d->out, at);
    }
    d->map.k[i] = p;
    d->map.v[i] = num;
    d->map.n++;
    return num;
}

#define MEM_DUMP_CHUNK 1024 /* timeline slots per S_ENTRIES record */

static void
dump_user(imgw__mem_dump_t *d, const imgw__mem_user_t *u)
{
    imgw__rec_buf_t *o = d->out;
    size_t at = imgw__rec_begin(o, IMGW__REC_S_USER);
    imgw__rec_put_str(o, u->id);
    const imgw__mem_used_t *t = u->used;
    uint32_t count = imgw__mem_count_of(u);
    imgw__rec_put_u64(o, (uint64_t)imgw__mem_max_seq_of(u));
    /* The last use, so max_seq's idle expiry (seq_ttl) counts from the
     * same moment after a restart as it would have without one. */
    imgw__rec_put_u64(o, (uint64_t)imgw__mem_touched_ms(t)); /* t: dumped */
    const imgw__mem_pos_t *p = t->pos;
    uint16_t nd = p ? p->n_dev : 0, nr = p ? p->n_read : 0;
    imgw__rec_put_u16(o, nd);
    for (uint16_t i = 0; i < nd; i++) {
        imgw__rec_put_str(o, p->dev[i].device);
        imgw__rec_put_u64(o, (uint64_t)p->dev[i].seq);
        imgw__rec_put_u64(o, p->dev[i].stamp);
    }
    imgw__rec_put_u16(o, nr);
    for (uint16_t i = 0; i < nr; i++) {
        const char *cm = p->reads[i].cm;
        imgw__rec_put_str(o, cm);
        imgw__rec_put_str(o, cm + strlen(cm) + 1);
        imgw__rec_put_u64(o, p->reads[i].stamp);
    }
    /* Last, so a snapshot written before epochs existed still loads (its
     * users read epoch 0). */
    imgw__rec_put_u64(o, t->epoch);
    imgw__rec_end(o, at);
    uint32_t nums[MEM_DUMP_CHUNK];
    for (uint32_t done = 0; done < count && !o->err;) { /* count > 0: t */
        uint32_t k =
            count - done < MEM_DUMP_CHUNK ? count - done : MEM_DUMP_CHUNK;
        /* Blob and metadata records first: a record cannot nest. */
        for (uint32_t i = 0; i < k; i++)
            nums[i] =
                dump_ref(d, t->ring[(t->head + done + i) % t->cap].blob, 1);
        at = imgw__rec_begin(o, IMGW__REC_S_ENTRIES);
        imgw__rec_put_u32(o, k);
        for (uint32_t i = 0; i < k; i++) {
            imgw__rec_put_u32(o, nums[i]);
            imgw__rec_put_u64(
                o, (uint64_t)t->ring[(t->head + done + i) % t->cap].stored_ms);
        }
        imgw__rec_end(o, at);
        done += k;
    }
    const imgw__mem_convs_t *cv = p ? &p->convs : NULL;
    for (uint32_t i = 0; cv != NULL && i < cv->n && !o->err; i++) {
        const imgw_store_conv_t *c = &cv->v[i];
        at = imgw__rec_begin(o, IMGW__REC_S_CONV);
        imgw__rec_put_u8(o, (uint8_t)c->kind);
        imgw__rec_put_str(o, c->peer);
        imgw__rec_put_u64(o, c->last_message_id);
        imgw__rec_put_u64(o, (uint64_t)c->last_seq);
        imgw__rec_put_str(o, c->last_sender);
        imgw__rec_put_u32(o, (uint32_t)c->last_type);
        imgw__rec_put_str(o, c->preview);
        imgw__rec_put_u32(o, c->unread);
        imgw__rec_put_u64(o, (uint64_t)c->read_seq);
        imgw__rec_put_u64(o, (uint64_t)c->updated_ms);
        imgw__rec_end(o, at);
    }
}

static void
dump_shard(imgw__mem_dump_t *d, imgw__mem_shard_t *sh)
{
    imgw__rec_buf_t *o = d->out;
    for (imgw_list_t *l = sh->meta_age.next; l != &sh->meta_age && !o->err;
         l = l->next) {
        imgw__mem_meta_t *mt = IMGW_LIST_ENTRY(l, imgw__mem_meta_t, age);
        uint32_t num = dump_ref(d, mt, 0);
        size_t at = imgw__rec_begin(o, IMGW__REC_S_META_TABLE);
        imgw__rec_put_u32(o, num);
        imgw__rec_put_u64(o, (uint64_t)mt->expire_ms);
        imgw__rec_end(o, at);
    }
    for (imgw_list_t *l = sh->dedupe_age.next;
         l != &sh->dedupe_age && !o->err; l = l->next) {
        imgw__mem_dedupe_t *dd = IMGW_LIST_ENTRY(l, imgw__mem_dedupe_t, age);
        size_t at = imgw__rec_begin(o, IMGW__REC_S_DEDUPE);
        imgw__rec_put_u64(o, (uint64_t)dd->expire_ms);
        imgw__rec_put_u64(o, dd->message_id);
        imgw__rec_put_u64(o, (uint64_t)dd->seq);
        imgw__rec_put_str(o, dd->key);
        imgw__rec_put_str(o, dd->key + strlen(dd->key) + 1);
        imgw__rec_end(o, at);
    }
    for (size_t b = 0; b <= sh->groups.mask && !o->err; b++)
        for (imgw__mem_hnode_t *x = sh->groups.b[b]; x; x = x->next) {
            imgw__mem_group_t *g = (imgw__mem_group_t *)x;
            size_t at = imgw__rec_begin(o, IMGW__REC_S_GROUP);
            imgw__rec_put_str(o, g->gid);
            imgw__rec_put_u16(o, (uint16_t)g->n);
            for (size_t i = 0; i < g->n; i++)
                imgw__rec_put_str(o, g->members[i]);
            imgw__rec_end(o, at);
        }
    for (size_t b = 0; b <= sh->users.mask && !o->err; b++)
        for (imgw__mem_hnode_t *x = sh->users.b[b]; x; x = x->next) {
            imgw__mem_user_t *u = (imgw__mem_user_t *)x;
            const imgw__mem_pos_t *p = imgw__mem_pos_of(u);
            if (imgw__mem_max_seq_of(u) != 0 ||
                (p && (p->n_dev != 0 || p->n_read != 0 || p->convs.n != 0)))
                dump_user(d, u);
        }
}

int
imgw__store_mem_dump(imgw_store_t *s, imgw__rec_buf_t *out)
{
    if (s == NULL || s->be != &imgw__store_memory || out == NULL)
        return IMGW_EINVAL;
    imgw__mem_t *m = s->impl;
    imgw__mem_dump_t d = {.out = out};
    for (unsigned i = 0; i < MEM_SHARDS && !out->err; i++) {
        imgw__mem_shard_t *sh = &m->shards[i];
        pthread_mutex_lock(&sh->mu);
        dump_shard(&d, sh);
        pthread_mutex_unlock(&sh->mu);
    }
    imgw_free(d.map.k);
    imgw_free(d.map.v);
    return out->err;
}

/*
 * The loader holds one reference to every metadata and blob it created
 * (so a malformed snapshot leaks nothing: load_end drops them all) and
 * the user the next S_ENTRIES belong to. It runs before any loop exists,
 * so it takes the shard locks only to keep the lock discipline uniform.
 */
struct imgw__store_mem_loader_s {
    imgw__mem_t *m;
    imgw__mem_meta_t **metas;
    imgw__mem_blob_t **blobs;
    size_t n_metas, cap_metas, n_blobs, cap_blobs;
    imgw__mem_user_t *cur;
    uint64_t max_id;
};

imgw__store_mem_loader_t *
imgw__store_mem_load_begin(imgw_store_t *s)
{
    if (s == NULL || s->be != &imgw__store_memory)
        return NULL;
    imgw__store_mem_loader_t *ld = imgw_try_calloc(1, sizeof(*ld));
    if (ld != NULL)
        ld->m = s->impl;
    return ld;
}

static int
load_push(void ***arr, size_t *n, size_t *cap, void *x)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 1024;
        void **q = imgw_try_realloc(*arr, nc * sizeof(*q));
        if (q == NULL)
            return IMGW_ENOMEM;
        *arr = q;
        *cap = nc;
    }
    (*arr)[(*n)++] = x;
    return 0;
}

static int
load_meta(imgw__store_mem_loader_t *ld, imgw__rec_rd_t *r)
{
    uint32_t num = imgw__rec_get_u32(r);
    uint64_t id = imgw__rec_get_u64(r);
    int64_t st = (int64_t)imgw__rec_get_u64(r);
    uint8_t revoked = imgw__rec_get_u8(r);
    const char *sender = imgw__rec_get_str(r);
    const char *conv = imgw__rec_get_str(r);
    if (r->err || num != ld->n_metas)
        return IMGW_EPROTO;
    size_t slen = strlen(sender), vlen = strlen(conv);
    imgw__mem_meta_t *mt = mem_malloc(MEM_META_SIZE(slen, vlen));
    if (mt == NULL)
        return IMGW_ENOMEM;
    memset(mt, 0, offsetof(imgw__mem_meta_t, sender));
    memcpy(mt->sender, sender, slen + 1);
    memcpy(mt->sender + slen + 1, conv, vlen + 1);
    mt->conv = mt->sender + slen + 1;
    mt->message_id = id;
    mt->server_time_ms = st;
    atomic_init(&mt->revoked, revoked ? 1 : 0);
    atomic_init(&mt->refs, 1); /* the loader's */
    imgw_list_init(&mt->age);
    mt->hash = (uint32_t)hash_id(ld->m, id);
    if (load_push((void ***)&ld->metas, &ld->n_metas, &ld->cap_metas, mt)) {
        imgw_free(mt);
        return IMGW_ENOMEM;
    }
    atomic_fetch_add_explicit(&ld->m->metas_live, 1, memory_order_relaxed);
    if (id > ld->max_id)
        ld->max_id = id;
    return 0;
}

static int
load_meta_table(imgw__store_mem_loader_t *ld, imgw__rec_rd_t *r)
{
    uint32_t num = imgw__rec_get_u32(r);
    int64_t expire = (int64_t)imgw__rec_get_u64(r);
    if (r->err || num >= ld->n_metas)
        return IMGW_EPROTO;
    imgw__mem_t *m = ld->m;
    imgw__mem_meta_t *mt = ld->metas[num];
    imgw__mem_shard_t *sh = &m->shards[shard_of(hash_id(m, mt->message_id))];
    pthread_mutex_lock(&sh->mu);
    if (!imgw_list_linked(&mt->age) &&
        imgw__mem_meta_find(sh, mt->hash, mt->message_id) == NULL) {
        if (imgw__mem_idx_reserve(&sh->metas) != 0) {
            pthread_mutex_unlock(&sh->mu);
            return IMGW_ENOMEM;
        }
        mt->expire_ms = expire;
        atomic_fetch_add_explicit(&mt->refs, 1, memory_order_relaxed);
        imgw__mem_idx_insert(&sh->metas, mt->hash, mt);
        imgw_list_insert_tail(&sh->meta_age, &mt->age);
        atomic_fetch_add_explicit(&m->n_metas, 1, memory_order_relaxed);
    }
    pthread_mutex_unlock(&sh->mu);
    return 0;
}

static int
load_blob(imgw__store_mem_loader_t *ld, imgw__rec_rd_t *r)
{
    uint32_t num = imgw__rec_get_u32(r);
    uint32_t mnum = imgw__rec_get_u32(r);
    size_t len;
    const uint8_t *data = imgw__rec_get_bytes(r, &len);
    if (r->err || num != ld->n_blobs || mnum >= ld->n_metas)
        return IMGW_EPROTO;
    imgw__mem_blob_t *b = mem_malloc(sizeof(*b) + len);
    if (b == NULL)
        return IMGW_ENOMEM;
    atomic_init(&b->refs, 1); /* the loader's */
    b->meta = ld->metas[mnum];
    b->len = len;
    if (len > 0)
        memcpy(b->data, data, len);
    if (load_push((void ***)&ld->blobs, &ld->n_blobs, &ld->cap_blobs, b)) {
        imgw_free(b);
        return IMGW_ENOMEM;
    }
    atomic_fetch_add_explicit(&b->meta->refs, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&ld->m->blobs_live, 1, memory_order_relaxed);
    return 0;
}

static int
load_dedupe(imgw__store_mem_loader_t *ld, imgw__rec_rd_t *r)
{
    int64_t expire = (int64_t)imgw__rec_get_u64(r);
    uint64_t id = imgw__rec_get_u64(r);
    int64_t seq = (int64_t)imgw__rec_get_u64(r);
    const char *sender = imgw__rec_get_str(r);
    const char *cmid = imgw__rec_get_str(r);
    if (r->err || !sender[0] || !cmid[0])
        return IMGW_EPROTO;
    imgw__mem_t *m = ld->m;
    size_t slen = strlen(sender), clen = strlen(cmid);
    imgw__mem_dedupe_t *dd = mem_malloc(MEM_DEDUPE_SIZE(slen, clen));
    if (dd == NULL)
        return IMGW_ENOMEM;
    memcpy(dd->key, sender, slen + 1);
    memcpy(dd->key + slen + 1, cmid, clen + 1);
    dd->hash = (uint32_t)hash_dedupe(m, sender, cmid);
    dd->expire_ms = expire;
    dd->message_id = id;
    dd->seq = seq;
    imgw__mem_shard_t *sh = &m->shards[shard_of(hash_str(m, sender))];
    pthread_mutex_lock(&sh->mu);
    if (imgw__mem_dedupe_find(sh, dd->hash, dd->key) != NULL) {
        pthread_mutex_unlock(&sh->mu);
        imgw_free(dd);
        return 0;
    }
    if (imgw__mem_idx_reserve(&sh->dedupes) != 0) {
        pthread_mutex_unlock(&sh->mu);
        imgw_free(dd);
        return IMGW_ENOMEM;
    }
    imgw__mem_idx_insert(&sh->dedupes, dd->hash, dd);
    imgw_list_insert_tail(&sh->dedupe_age, &dd->age);
    atomic_fetch_add_explicit(&m->n_dedupes, 1, memory_order_relaxed);
    pthread_mutex_unlock(&sh->mu);
    return 0;
}

static int
load_group(imgw__store_mem_loader_t *ld, imgw__rec_rd_t *r)
{
    const char *gid = imgw__rec_get_str(r);
    uint16_t n = imgw__rec_get_u16(r);
    if (r->err || !gid[0] || n == 0 || n > IMGW_STORE_MAX_GROUP)
        return IMGW_EPROTO;
    const char *members[IMGW_STORE_MAX_GROUP];
    for (uint16_t i = 0; i < n; i++)
        members[i] = imgw__rec_get_str(r);
    if (r->err)
        return IMGW_EPROTO;
    imgw__mem_group_t *g = imgw__mem_group_build(gid, members, n);
    if (g == NULL)
        return IMGW_ENOMEM;
    imgw__mem_t *m = ld->m;
    g->h.hash = hash_str(m, gid);
    imgw__mem_shard_t *sh = &m->shards[shard_of(g->h.hash)];
    pthread_mutex_lock(&sh->mu);
    imgw__mem_group_t *old = imgw__mem_group_find(sh, g->h.hash, gid);
    if (old != NULL)
        htab_remove(&sh->groups, &old->h);
    htab_insert(&sh->groups, &g->h);
    pthread_mutex_unlock(&sh->mu);
    if (old != NULL)
        imgw__mem_group_unref(old);
    return 0;
}

static int
load_user(imgw__store_mem_loader_t *ld, imgw__rec_rd_t *r)
{
    imgw__mem_t *m = ld->m;
    const char *id = imgw__rec_get_str(r);
    int64_t max_seq = (int64_t)imgw__rec_get_u64(r);
    int64_t touched = (int64_t)imgw__rec_get_u64(r);
    if (r->err || !id[0] || max_seq < 0)
        return IMGW_EPROTO;
    uint64_t h = hash_str(m, id);
    imgw__mem_shard_t *sh = &m->shards[shard_of(h)];
    int rc = 0;
    pthread_mutex_lock(&sh->mu);
    imgw__mem_user_t *u = imgw__mem_user_get(m, sh, h, id, &rc);
    if (u == NULL)
        goto out;
    if (imgw__mem_max_seq_of(u) != 0 || imgw__mem_count_of(u) != 0) {
        rc = IMGW_EPROTO; /* a user twice */
        goto out;
    }
    /* A saved user has a max_seq or positions: it was used. */
    imgw__mem_used_t *t = imgw__mem_used_own(u, touched);
    if (t == NULL) {
        rc = IMGW_ENOMEM;
        goto out;
    }
    imgw__mem_touch(t, touched);
    t->max_seq = max_seq;
    uint16_t nd = imgw__rec_get_u16(r);
    imgw__mem_pos_t *p = NULL;
    if (nd > 0 && (p = imgw__mem_pos_own(u, touched)) == NULL) {
        rc = IMGW_ENOMEM;
        goto out;
    }
    for (uint16_t i = 0; i < nd && !r->err; i++) {
        const char *dev = imgw__rec_get_str(r);
        int64_t seq = (int64_t)imgw__rec_get_u64(r);
        uint64_t stamp = imgw__rec_get_u64(r);
        if (r->err || p->n_dev == MEM_MAX_DEVICES)
            break;
        char *copy = mem_strdup(dev);
        if (copy == NULL ||
            (p->n_dev == p->cap_dev &&
             imgw__mem_array_grow((void **)&p->dev, &p->cap_dev,
                                  sizeof(*p->dev), MEM_MAX_DEVICES))) {
            imgw_free(copy);
            rc = IMGW_ENOMEM;
            goto out;
        }
        p->dev[p->n_dev].device = copy;
        p->dev[p->n_dev].seq = seq;
        p->dev[p->n_dev++].stamp = stamp;
        if (stamp > sh->stamp)
            sh->stamp = stamp;
    }
    uint16_t nr = imgw__rec_get_u16(r);
    if (nr > 0 && p == NULL && (p = imgw__mem_pos_own(u, touched)) == NULL) {
        rc = IMGW_ENOMEM;
        goto out;
    }
    for (uint16_t i = 0; i < nr && !r->err; i++) {
        const char *conv = imgw__rec_get_str(r);
        const char *mid = imgw__rec_get_str(r);
        uint64_t stamp = imgw__rec_get_u64(r);
        if (r->err || p->n_read == MEM_MAX_READS)
            break;
        size_t cl = strlen(conv), ml = strlen(mid);
        char *cm = mem_malloc(cl + 1 + ml + 1);
        if (cm == NULL ||
            (p->n_read == p->cap_read &&
             imgw__mem_array_grow((void **)&p->reads, &p->cap_read,
                                  sizeof(*p->reads), MEM_MAX_READS))) {
            imgw_free(cm);
            rc = IMGW_ENOMEM;
            goto out;
        }
        memcpy(cm, conv, cl + 1);
        memcpy(cm + cl + 1, mid, ml + 1);
        p->reads[p->n_read].cm = cm;
        p->reads[p->n_read++].stamp = stamp;
        if (stamp > sh->stamp)
            sh->stamp = stamp;
    }
    if (!r->err && r->n - r->off >= 8)
        t->epoch = imgw__rec_get_u64(r);
    if (r->err)
        rc = IMGW_EPROTO;
out:
    ld->cur = rc == 0 ? u : NULL;
    pthread_mutex_unlock(&sh->mu);
    return rc;
}

/* Slots go to the tail of the current user's ring, so they hold the seqs
 * max_seq - count + 1 .. max_seq once the user's last chunk is in. */
static int
load_entries(imgw__store_mem_loader_t *ld, imgw__rec_rd_t *r)
{
    imgw__mem_t *m = ld->m;
    imgw__mem_user_t *u = ld->cur;
    uint32_t k = imgw__rec_get_u32(r);
    if (r->err || u == NULL || k > MEM_DUMP_CHUNK)
        return IMGW_EPROTO;
    imgw__mem_shard_t *sh = &m->shards[shard_of(u->h.hash)];
    int rc = 0;
    pthread_mutex_lock(&sh->mu);
    for (uint32_t i = 0; i < k; i++) {
        uint32_t num = imgw__rec_get_u32(r);
        int64_t stored = (int64_t)imgw__rec_get_u64(r);
        if (r->err || num >= ld->n_blobs ||
            (int64_t)imgw__mem_count_of(u) >= imgw__mem_max_seq_of(u)) {
            rc = IMGW_EPROTO;
            break;
        }
        imgw__mem_used_t *t = u->used; /* max_seq > 0: load_user made it */
        if (t->count >= (uint32_t)m->retention_count)
            imgw__mem_ring_pop(m, t); /* a smaller retention than when saved */
        if (t->count == t->cap) {
            uint32_t max = (uint32_t)m->retention_count;
            uint32_t ncap = t->cap ? t->cap * 2 : 4;
            if (imgw__mem_ring_realloc(u, ncap < max ? ncap : max, 0) != 0) {
                rc = IMGW_ENOMEM;
                break;
            }
            t = u->used; /* moved */
        }
        imgw__mem_blob_t *b = ld->blobs[num];
        imgw__mem_blob_ref(b);
        imgw__mem_ent_t *e = &t->ring[(t->head + t->count) % t->cap];
        e->stored_ms = stored;
        e->blob = b;
        t->count++;
    }
    pthread_mutex_unlock(&sh->mu);
    return rc;
}

/* A conversation of the current user (after its S_USER). */
static int
load_conv(imgw__store_mem_loader_t *ld, imgw__rec_rd_t *r)
{
    imgw__mem_t *m = ld->m;
    imgw__mem_user_t *u = ld->cur;
    imgw_store_conv_t c;
    memset(&c, 0, sizeof(c));
    c.kind = imgw__rec_get_u8(r);
    const char *peer = imgw__rec_get_str(r);
    c.last_message_id = imgw__rec_get_u64(r);
    c.last_seq = (int64_t)imgw__rec_get_u64(r);
    const char *sender = imgw__rec_get_str(r);
    c.last_type = (int32_t)imgw__rec_get_u32(r);
    const char *preview = imgw__rec_get_str(r);
    c.unread = imgw__rec_get_u32(r);
    c.read_seq = (int64_t)imgw__rec_get_u64(r);
    c.updated_ms = (int64_t)imgw__rec_get_u64(r);
    if (r->err || u == NULL ||
        (c.kind != IMGW_STORE_CONV_SINGLE && c.kind != IMGW_STORE_CONV_GROUP) ||
        strlen(peer) >= sizeof(c.peer) ||
        strlen(sender) >= sizeof(c.last_sender) ||
        strlen(preview) > IMGW_STORE_PREVIEW_MAX)
        return IMGW_EPROTO;
    memcpy(c.peer, peer, strlen(peer) + 1);
    memcpy(c.last_sender, sender, strlen(sender) + 1);
    memcpy(c.preview, preview, strlen(preview) + 1);
    imgw__mem_shard_t *sh = &m->shards[shard_of(u->h.hash)];
    int rc = 0;
    pthread_mutex_lock(&sh->mu);
    imgw__mem_pos_t *pp = imgw__mem_pos_own(u, 0); /* load_user made used */
    if (pp == NULL) {
        rc = IMGW_ENOMEM;
    } else if (pp->convs.n >= m->max_convs) {
        /* A smaller store.max_conversations than when saved: the list
         * keeps the first max_convs (any; the rest of the list is what
         * the next updates order). */
    } else if (imgw__mem_conv_reserve(&pp->convs, m->max_convs) != 0) {
        rc = IMGW_ENOMEM;
    } else {
        pp->convs.v[pp->convs.n++] = c;
    }
    pthread_mutex_unlock(&sh->mu);
    return rc;
}

int
imgw__store_mem_load(imgw__store_mem_loader_t *ld, uint8_t type,
                     const uint8_t *p, size_t n)
{
    imgw__rec_rd_t r = {p, n, 0, 0};
    if (type != IMGW__REC_S_ENTRIES && type != IMGW__REC_S_BLOB &&
        type != IMGW__REC_S_META && type != IMGW__REC_S_CONV)
        ld->cur = NULL; /* entries and conversations follow their user */
    switch (type) {
    case IMGW__REC_S_META:
        return load_meta(ld, &r);
    case IMGW__REC_S_META_TABLE:
        return load_meta_table(ld, &r);
    case IMGW__REC_S_BLOB:
        return load_blob(ld, &r);
    case IMGW__REC_S_DEDUPE:
        return load_dedupe(ld, &r);
    case IMGW__REC_S_GROUP:
        return load_group(ld, &r);
    case IMGW__REC_S_USER:
        return load_user(ld, &r);
    case IMGW__REC_S_ENTRIES:
        return load_entries(ld, &r);
    case IMGW__REC_S_CONV:
        return load_conv(ld, &r);
    default:
        return IMGW_EPROTO;
    }
}

void
imgw__store_mem_load_end(imgw__store_mem_loader_t *ld, uint64_t *max_id)
{
    if (ld == NULL)
        return;
    if (max_id != NULL)
        *max_id = ld->max_id;
    for (size_t i = 0; i < ld->n_blobs; i++)
        imgw__mem_blob_unref(ld->m, ld->blobs[i]);
    for (size_t i = 0; i < ld->n_metas; i++)
        imgw__mem_meta_unref(ld->m, ld->metas[i]);
    imgw_free(ld->blobs);
    imgw_free(ld->metas);
    imgw_free(ld);
}
