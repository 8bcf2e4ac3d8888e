/*
 * mem_conv.c: per-user conversation lists of the memory backend (see
 * mem_conv.h). Called by memory.c under the owning shard's lock, from any
 * loop thread.
 */
#include "mem_conv.h"

#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "err.h"
#include "store_impl.h"

int
imgw__mem_conv_reserve(imgw__mem_convs_t *t, uint32_t max)
{
    if (t->n < t->cap || t->n >= max)
        return 0; /* room, or the update reuses the oldest slot */
    uint32_t ncap = t->cap ? t->cap * 2 : 4;
    if (ncap > max)
        ncap = max;
    imgw_store_conv_t *v = imgw_try_realloc(t->v, (size_t)ncap * sizeof(*v));
    if (v == NULL)
        return IMGW_ENOMEM;
    t->v = v;
    t->cap = ncap;
    return 0;
}

imgw_store_conv_t *
imgw__mem_conv_find(imgw__mem_convs_t *t, int kind, const char *peer)
{
    for (uint32_t i = 0; i < t->n; i++)
        if (t->v[i].kind == kind && strcmp(t->v[i].peer, peer) == 0)
            return &t->v[i];
    return NULL;
}

static void
copy_cut(char *dst, size_t cap, const char *src)
{
    size_t n = src ? imgw__store_cut_utf8(src, cap - 1) : 0;
    if (n > 0)
        memcpy(dst, src, n);
    dst[n] = '\0';
}

void
imgw__mem_conv_update(imgw__mem_convs_t *t, uint32_t max, int kind,
                      const char *peer, uint64_t message_id, int64_t seq,
                      const char *sender, int32_t msg_type, const char *preview,
                      int64_t now_ms, int own)
{
    imgw_store_conv_t *c = imgw__mem_conv_find(t, kind, peer);
    if (c == NULL) {
        if (t->n < t->cap && t->n < max) {
            c = &t->v[t->n++];
        } else if (t->n > 0) {
            /* Full: the conversation updated longest ago makes room. */
            c = &t->v[0];
            for (uint32_t i = 1; i < t->n; i++)
                if (t->v[i].last_seq < c->last_seq)
                    c = &t->v[i];
        } else {
            return; /* max 0 or reserve not called: keep nothing */
        }
        memset(c, 0, sizeof(*c));
        c->kind = kind;
        copy_cut(c->peer, sizeof(c->peer), peer);
    }
    c->last_message_id = message_id;
    c->last_seq = seq;
    copy_cut(c->last_sender, sizeof(c->last_sender), sender);
    c->last_type = msg_type;
    copy_cut(c->preview, sizeof(c->preview), preview);
    c->updated_ms = now_ms;
    if (!own)
        c->unread++;
}

int
imgw__mem_conv_delete(imgw__mem_convs_t *t, int kind, const char *peer)
{
    imgw_store_conv_t *c = imgw__mem_conv_find(t, kind, peer);
    if (c == NULL)
        return IMGW_ENOTFOUND;
    *c = t->v[--t->n];
    if (t->n == 0) {
        imgw_free(t->v);
        t->v = NULL;
        t->cap = 0;
    }
    return 0;
}

uint64_t
imgw__mem_conv_total_unread(const imgw__mem_convs_t *t)
{
    uint64_t sum = 0;
    for (uint32_t i = 0; i < t->n; i++)
        sum += t->v[i].unread;
    return sum;
}

size_t
imgw__mem_conv_page(const imgw__mem_convs_t *t, int64_t before_seq,
                    size_t limit, imgw_store_conv_t *out, int *has_more)
{
    /* Every update appends to this user's timeline, so last_seq orders the
     * entries by update and is unique: a selection by descending last_seq
     * below the cursor, limit (<= IMGW_STORE_CONV_PAGE_MAX) passes of at
     * most max entries each. */
    size_t k = 0;
    int64_t bound = before_seq > 0 ? before_seq : INT64_MAX;
    *has_more = 0;
    while (1) {
        const imgw_store_conv_t *best = NULL;
        for (uint32_t i = 0; i < t->n; i++)
            if (t->v[i].last_seq < bound &&
                (best == NULL || t->v[i].last_seq > best->last_seq))
                best = &t->v[i];
        if (best == NULL)
            break;
        if (k == limit) {
            *has_more = 1;
            break;
        }
        out[k++] = *best;
        bound = best->last_seq;
    }
    return k;
}

void
imgw__mem_conv_free(imgw__mem_convs_t *t)
{
    imgw_free(t->v);
    t->v = NULL;
    t->n = t->cap = 0;
}
