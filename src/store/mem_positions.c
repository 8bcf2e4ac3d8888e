/*
 * mem_positions.c: the memory backend's delivered and read positions per user
 * (bounded, least recently updated replaced), and their test-hook readers.
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

/* ---- delivered / read positions ------------------------------------------ */

/* Keeps the highest seq per device (acks may arrive out of order); at
 * MEM_MAX_DEVICES the least recently updated device is forgotten. */
int
imgw__mem_set_delivered(imgw_store_loop_t *sl, const char *user,
                        const char *device, int64_t seq, imgw_store_done_cb cb,
                        void *data)
{
    imgw__mem_t *m = sl->store->impl;
    uint64_t h = hash_str(m, user);
    imgw__mem_shard_t *sh = &m->shards[shard_of(h)];
    char *copy = NULL;
    int err = IMGW_ENOMEM;
    int64_t now = mem_now(m);

    pthread_mutex_lock(&sh->mu);
    imgw__mem_user_t *u = imgw__mem_user_get(m, sh, h, user, &err);
    if (u == NULL)
        goto fail;
    imgw__mem_pos_t *p = imgw__mem_pos_own(u, now);
    if (p == NULL)
        goto fail;
    for (uint16_t i = 0; i < p->n_dev; i++)
        if (strcmp(p->dev[i].device, device) == 0) {
            if (seq > p->dev[i].seq)
                p->dev[i].seq = seq;
            p->dev[i].stamp = ++sh->stamp;
            goto done;
        }
    copy = mem_strdup(device);
    if (copy == NULL)
        goto fail;
    uint16_t i;
    if (p->n_dev == MEM_MAX_DEVICES) {
        i = 0;
        for (uint16_t j = 1; j < p->n_dev; j++)
            if (p->dev[j].stamp < p->dev[i].stamp)
                i = j;
        imgw_free(p->dev[i].device);
    } else {
        if (p->n_dev == p->cap_dev &&
            imgw__mem_array_grow((void **)&p->dev, &p->cap_dev, sizeof(*p->dev),
                                 MEM_MAX_DEVICES) != 0)
            goto fail;
        i = p->n_dev++;
    }
    p->dev[i].device = copy;
    p->dev[i].seq = seq;
    p->dev[i].stamp = ++sh->stamp;
done:
    pthread_mutex_unlock(&sh->mu);
    if (cb)
        cb(0, data);
    return 0;
fail:
    pthread_mutex_unlock(&sh->mu);
    imgw_free(copy);
    return err;
}

/* Keeps the last message id written per conversation; at MEM_MAX_READS
 * the least recently updated conversation is forgotten. */
int
imgw__mem_set_read(imgw_store_loop_t *sl, const char *user,
                   const char *conversation_id, const char *message_id,
                   imgw_store_done_cb cb, void *data)
{
    imgw__mem_t *m = sl->store->impl;
    uint64_t h = hash_str(m, user);
    imgw__mem_shard_t *sh = &m->shards[shard_of(h)];
    size_t clen = strlen(conversation_id), mlen = strlen(message_id);
    char *cm = mem_malloc(clen + 1 + mlen + 1);
    if (cm == NULL)
        return IMGW_ENOMEM;
    memcpy(cm, conversation_id, clen + 1);
    memcpy(cm + clen + 1, message_id, mlen + 1);
    int err = IMGW_ENOMEM;
    int64_t now = mem_now(m);

    pthread_mutex_lock(&sh->mu);
    imgw__mem_user_t *u = imgw__mem_user_get(m, sh, h, user, &err);
    if (u == NULL)
        goto fail;
    imgw__mem_pos_t *p = imgw__mem_pos_own(u, now);
    if (p == NULL)
        goto fail;
    uint16_t i;
    for (i = 0; i < p->n_read; i++)
        if (strcmp(p->reads[i].cm, conversation_id) == 0)
            break;
    if (i < p->n_read) {
        imgw_free(p->reads[i].cm);
    } else if (p->n_read == MEM_MAX_READS) {
        i = 0;
        for (uint16_t j = 1; j < p->n_read; j++)
            if (p->reads[j].stamp < p->reads[i].stamp)
                i = j;
        imgw_free(p->reads[i].cm);
    } else {
        if (p->n_read == p->cap_read &&
            imgw__mem_array_grow((void **)&p->reads, &p->cap_read,
                                 sizeof(*p->reads), MEM_MAX_READS) != 0)
            goto fail;
        i = p->n_read++;
    }
    p->reads[i].cm = cm;
    p->reads[i].stamp = ++sh->stamp;
    pthread_mutex_unlock(&sh->mu);
    if (cb)
        cb(0, data);
    return 0;
fail:
    pthread_mutex_unlock(&sh->mu);
    imgw_free(cm);
    return err;
}

int
imgw__store_mem_get_delivered(imgw_store_t *s, const char *user,
                              const char *device, int64_t *seq)
{
    if (s == NULL || s->be != &imgw__store_memory)
        return IMGW_EINVAL;
    imgw__mem_t *m = s->impl;
    uint64_t h = hash_str(m, user);
    imgw__mem_shard_t *sh = &m->shards[shard_of(h)];
    int r = IMGW_ENOTFOUND;
    pthread_mutex_lock(&sh->mu);
    imgw__mem_user_t *u = imgw__mem_user_find(sh, h, user);
    const imgw__mem_pos_t *p = u ? imgw__mem_pos_of(u) : NULL;
    for (uint16_t i = 0; p != NULL && i < p->n_dev; i++)
        if (strcmp(p->dev[i].device, device) == 0) {
            *seq = p->dev[i].seq;
            r = 0;
            break;
        }
    pthread_mutex_unlock(&sh->mu);
    return r;
}

int
imgw__store_mem_get_read(imgw_store_t *s, const char *user,
                         const char *conversation_id, char *buf, size_t len)
{
    if (s == NULL || s->be != &imgw__store_memory || len == 0)
        return IMGW_EINVAL;
    imgw__mem_t *m = s->impl;
    uint64_t h = hash_str(m, user);
    imgw__mem_shard_t *sh = &m->shards[shard_of(h)];
    int r = IMGW_ENOTFOUND;
    pthread_mutex_lock(&sh->mu);
    imgw__mem_user_t *u = imgw__mem_user_find(sh, h, user);
    const imgw__mem_pos_t *p = u ? imgw__mem_pos_of(u) : NULL;
    for (uint16_t i = 0; p != NULL && i < p->n_read; i++) {
        const char *cm = p->reads[i].cm;
        if (strcmp(cm, conversation_id) == 0) {
            snprintf(buf, len, "%s", cm + strlen(cm) + 1);
            r = 0;
            break;
        }
    }
    pthread_mutex_unlock(&sh->mu);
    return r;
}
