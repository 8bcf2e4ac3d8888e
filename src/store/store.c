/*
 * store.c: the store dispatch. imgw_store_open() picks a backend table by
 * cfg->backend; every request function validates its arguments here, the
 * same way for every backend, and then calls the table (store_impl.h).
 *
 * Threads: open/close on the main thread; everything else on the calling
 * loop's thread. Nothing here keeps state besides the handles.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "err.h"
#include "idsyntax.h"
#include "store_impl.h"

/* 1 when s is a NUL-terminated string of 1..max bytes. */
static int
valid_str(const char *s, size_t max)
{
    if (s == NULL)
        return 0;
    size_t n = strnlen(s, max + 1);
    return n >= 1 && n <= max;
}

/* Like valid_str, but NULL and "" are fine (optional fields). */
static int
valid_opt(const char *s, size_t max)
{
    return s == NULL || strnlen(s, max + 1) <= max;
}

/*
 * User, member and group ids become parts of keys (IM-SEQ-{u},
 * IM-DEDUP-{u}:{cmid}, ...), so they must obey the id syntax
 * (idsyntax.h): core checks it where ids enter, and this edge check makes
 * sure no backend ever composes a key from anything else, whoever calls.
 * device, platform and broker_id are only hash fields and values: a length
 * bound is enough for them.
 */
#define valid_id(s) imgw_id_valid(s)
#define valid_name(s) valid_str((s), IMGW__STORE_ID_MAX)

int
imgw_store_open(imgw_store_t **out, const imgw_store_cfg_t *cfg, char *err,
                size_t errlen)
{
    char dummy[8];
    if (err == NULL || errlen == 0) {
        err = dummy;
        errlen = sizeof(dummy);
    }
    err[0] = '\0';
    if (out == NULL || cfg == NULL) {
        snprintf(err, errlen, "store: no configuration");
        return IMGW_EINVAL;
    }
    *out = NULL;
    const char *name =
        cfg->backend && cfg->backend[0] ? cfg->backend : "memory";
    const imgw_store_backend_t *be = NULL;
    if (strcmp(name, "memory") == 0) {
        be = &imgw__store_memory;
    } else if (strcmp(name, "file") == 0) {
        be = &imgw__store_file;
    } else if (strcmp(name, "redis") == 0) {
        be = &imgw__store_redis;
    } else {
        snprintf(err, errlen, "store: unknown backend \"%.32s\"", name);
        return IMGW_ECONFIG;
    }
    imgw_store_t *s = imgw_try_calloc(1, sizeof(*s));
    if (s == NULL) {
        snprintf(err, errlen, "store: out of memory");
        return IMGW_ENOMEM;
    }
    s->be = be;
    int r = be->open(s, cfg, err, errlen);
    if (r != 0) {
        if (err[0] == '\0')
            snprintf(err, errlen, "store: cannot open %s backend: %s", name,
                     imgw_strerror(r));
        imgw_free(s);
        return r;
    }
    *out = s;
    return 0;
}

void
imgw_store_close(imgw_store_t *s)
{
    if (s == NULL)
        return;
    s->be->close(s);
    imgw_free(s);
}

int
imgw_store_loop_open(imgw_store_t *s, int loop_index, uv_loop_t *loop,
                     imgw_store_loop_t **out)
{
    if (s == NULL || out == NULL || loop_index < 0)
        return IMGW_EINVAL;
    *out = NULL;
    return s->be->loop_open(s, loop_index, loop, out);
}

void
imgw_store_loop_close(imgw_store_loop_t *sl)
{
    if (sl != NULL)
        sl->be->loop_close(sl);
}

int
imgw_store_loop_ready(imgw_store_loop_t *sl)
{
    return sl != NULL && sl->be->loop_ready(sl);
}

void
imgw_store_tick(imgw_store_t *s, int64_t now_ms)
{
    if (s != NULL && s->be->tick != NULL)
        s->be->tick(s, now_ms);
}

int
imgw_store_stats(imgw_store_t *s, imgw_store_stats_t *out)
{
    if (s == NULL || out == NULL)
        return IMGW_EINVAL;
    memset(out, 0, sizeof(*out));
    return s->be->stats ? s->be->stats(s, out) : IMGW_ENOTFOUND;
}

/* ---- append ---------------------------------------------------------- */

int
imgw_store_append(imgw_store_loop_t *sl, imgw_store_append_t *req,
                  imgw_store_append_cb cb, void *data)
{
    if (sl == NULL || req == NULL || cb == NULL)
        return IMGW_EINVAL;
    if (!valid_id(req->sender) || !imgw_cmid_valid_opt(req->client_msg_id) ||
        !valid_opt(req->conversation_id, IMGW__STORE_CONV_MAX) ||
        req->users == NULL || req->n_users == 0 || req->seqs == NULL ||
        (req->entry == NULL && req->entry_len != 0))
        return IMGW_EINVAL;
    if (req->n_users > IMGW_STORE_MAX_GROUP ||
        req->entry_len > IMGW__STORE_ENTRY_MAX)
        return IMGW_ETOOBIG;
    for (size_t i = 0; i < req->n_users; i++)
        if (!valid_id(req->users[i]))
            return IMGW_EINVAL;
    /* Outputs start clean whatever the caller left in them. */
    req->duplicate = 0;
    req->dup_message_id = 0;
    req->dup_seq = 0;
    return sl->be->append(sl, req, cb, data);
}

/* ---- timelines ------------------------------------------------------- */

int
imgw_store_sync(imgw_store_loop_t *sl, const char *user, int64_t min_seq,
                int64_t max_seq, int limit, imgw_store_sync_cb cb, void *data)
{
    if (sl == NULL || cb == NULL || !valid_id(user) || min_seq < 0 ||
        max_seq < 0)
        return IMGW_EINVAL;
    if (limit <= 0)
        limit = IMGW__STORE_SYNC_DEFAULT;
    if (limit > IMGW_STORE_SYNC_MAX)
        limit = IMGW_STORE_SYNC_MAX;
    return sl->be->sync(sl, user, min_seq, max_seq, limit, cb, data);
}

int
imgw_store_max_seq(imgw_store_loop_t *sl, const char *user,
                   imgw_store_seq_cb cb, void *data)
{
    if (sl == NULL || cb == NULL || !valid_id(user))
        return IMGW_EINVAL;
    return sl->be->max_seq(sl, user, cb, data);
}

int
imgw_store_set_delivered(imgw_store_loop_t *sl, const char *user,
                         const char *device, int64_t seq, imgw_store_done_cb cb,
                         void *data)
{
    if (sl == NULL || !valid_id(user) || !valid_name(device) || seq < 0)
        return IMGW_EINVAL;
    return sl->be->set_delivered(sl, user, device, seq, cb, data);
}

int
imgw_store_set_read(imgw_store_loop_t *sl, const char *user,
                    const char *conversation_id, const char *message_id,
                    imgw_store_done_cb cb, void *data)
{
    if (sl == NULL || !valid_id(user) ||
        !valid_str(conversation_id, IMGW__STORE_CONV_MAX) ||
        message_id == NULL || message_id[0] == '\0' ||
        !imgw_cmid_valid_opt(message_id))
        return IMGW_EINVAL;
    return sl->be->set_read(sl, user, conversation_id, message_id, cb, data);
}

/* ---- messages -------------------------------------------------------- */

int
imgw_store_dedupe_get(imgw_store_loop_t *sl, const char *sender,
                      const char *client_msg_id, imgw_store_dedupe_cb cb,
                      void *data)
{
    if (sl == NULL || cb == NULL || !valid_id(sender) ||
        client_msg_id == NULL || client_msg_id[0] == '\0' ||
        !imgw_cmid_valid_opt(client_msg_id))
        return IMGW_EINVAL;
    if (sl->be->dedupe_get == NULL) {
        cb(IMGW_ENOTFOUND, 0, 0, data);
        return 0;
    }
    return sl->be->dedupe_get(sl, sender, client_msg_id, cb, data);
}

int
imgw_store_msg_get(imgw_store_loop_t *sl, uint64_t message_id,
                   imgw_store_msg_cb cb, void *data)
{
    if (sl == NULL || cb == NULL)
        return IMGW_EINVAL;
    return sl->be->msg_get(sl, message_id, cb, data);
}

int
imgw_store_revoke(imgw_store_loop_t *sl, uint64_t message_id,
                  imgw_store_done_cb cb, void *data)
{
    if (sl == NULL)
        return IMGW_EINVAL;
    return sl->be->revoke(sl, message_id, cb, data);
}

/* ---- groups ---------------------------------------------------------- */

int
imgw_store_group_set(imgw_store_loop_t *sl, const char *gid,
                     const char *const *members, size_t n,
                     imgw_store_done_cb cb, void *data)
{
    if (sl == NULL || !valid_id(gid) || (n > 0 && members == NULL))
        return IMGW_EINVAL;
    if (n > IMGW_STORE_MAX_GROUP)
        return IMGW_ETOOBIG;
    for (size_t i = 0; i < n; i++)
        if (!valid_id(members[i]))
            return IMGW_EINVAL;
    return sl->be->group_set(sl, gid, members, n, cb, data);
}

int
imgw_store_group_get(imgw_store_loop_t *sl, const char *gid,
                     imgw_store_members_cb cb, void *data)
{
    if (sl == NULL || cb == NULL || !valid_id(gid))
        return IMGW_EINVAL;
    return sl->be->group_get(sl, gid, cb, data);
}

int
imgw_store_group_del(imgw_store_loop_t *sl, const char *gid,
                     imgw_store_done_cb cb, void *data)
{
    if (sl == NULL || !valid_id(gid))
        return IMGW_EINVAL;
    return sl->be->group_del(sl, gid, cb, data);
}

/* ---- routes ---------------------------------------------------------- */

int
imgw_store_route_set(imgw_store_loop_t *sl, const char *user,
                     const char *platform, const char *broker_id, int ttl,
                     imgw_store_done_cb cb, void *data)
{
    if (sl == NULL || !valid_id(user) || !valid_name(platform) ||
        !valid_name(broker_id) || ttl <= 0)
        return IMGW_EINVAL;
    return sl->be->route_set(sl, user, platform, broker_id, ttl, cb, data);
}

int
imgw_store_route_del(imgw_store_loop_t *sl, const char *user,
                     const char *platform, const char *broker_id,
                     imgw_store_done_cb cb, void *data)
{
    if (sl == NULL || !valid_id(user) || !valid_name(platform) ||
        !valid_name(broker_id))
        return IMGW_EINVAL;
    return sl->be->route_del(sl, user, platform, broker_id, cb, data);
}

int
imgw_store_route_refresh(imgw_store_loop_t *sl, const char *user, int ttl,
                         imgw_store_done_cb cb, void *data)
{
    if (sl == NULL || !valid_id(user) || ttl <= 0)
        return IMGW_EINVAL;
    return sl->be->route_refresh(sl, user, ttl, cb, data);
}

int
imgw_store_route_get(imgw_store_loop_t *sl, const char *user,
                     imgw_store_routes_cb cb, void *data)
{
    if (sl == NULL || cb == NULL || !valid_id(user))
        return IMGW_EINVAL;
    return sl->be->route_get(sl, user, cb, data);
}
