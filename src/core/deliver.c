/*
 * deliver.c: pushes to this node's connections, wherever they live.
 *
 * Thread: any loop. A push first resolves users to connection refs in the
 * user map, groups the refs by owning loop, writes to this loop's own
 * connections at once and hands every other loop one mail carrying all of
 * its targets. The owning loop encodes: a PushMessage blob is completed
 * per receiver (its seq) around one shared body, the JSON prefix is built
 * once per loop, and other pushes are encoded once per codec per loop.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "err.h"
#include "log.h"
#include "mail.h"
#include "session.h"

/* Per-loop target lists while one push is being routed. */
typedef struct route_s {
    imgw_target_t *t;
    size_t n, cap;
} route_t;

static _Thread_local route_t *routes;
static _Thread_local int n_routes;

void
imgw_deliver_thread_free(void)
{
    for (int i = 0; i < n_routes; i++)
        imgw_free(routes[i].t);
    imgw_free(routes);
    routes = NULL;
    n_routes = 0;
}

static int
routes_reset(int n_loops)
{
    if (routes == NULL) {
        routes = imgw_try_calloc((size_t)n_loops, sizeof(*routes));
        if (routes == NULL)
            return IMGW_ENOMEM;
        n_routes = n_loops;
    }
    for (int i = 0; i < n_routes; i++)
        routes[i].n = 0;
    return 0;
}

static int
route_add(imgw_conn_ref_t ref, int64_t seq)
{
    route_t *r = &routes[ref.loop];
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 64;
        imgw_target_t *t = imgw_try_realloc(r->t, cap * sizeof(*t));
        if (t == NULL)
            return IMGW_ENOMEM;
        r->t = t;
        r->cap = cap;
    }
    r->t[r->n].ref = ref;
    r->t[r->n].seq = seq;
    r->n++;
    return 0;
}

/* Resolves users to refs (skipping exclude) into the per-loop routes. */
static size_t
resolve(imgw_core_loop_t *cl, const char *const *users, const int64_t *seqs,
        size_t n, imgw_conn_ref_t exclude)
{
    imgw_usermap_conn_t conns[IMGW_USERMAP_MAX_CONNS];
    size_t total = 0;
    if (routes_reset(cl->node->n_loops) != 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        size_t k = imgw_usermap_get(cl->node->users, users[i], conns,
                                    IMGW_USERMAP_MAX_CONNS);
        for (size_t j = 0; j < k; j++) {
            if (imgw_conn_ref_eq(conns[j].ref, exclude))
                continue;
            if (route_add(conns[j].ref, seqs ? seqs[i] : 0) == 0)
                total++;
        }
    }
    return total;
}

/* ---- writing on the owning loop ------------------------------------------ */

static void
local_push(imgw_core_loop_t *cl, const uint8_t *blob, size_t len, int64_t ts,
           const imgw_target_t *t, size_t n)
{
    ssize_t json_len = -1; /* the JSON prefix, built on first need */
    for (size_t i = 0; i < n; i++) {
        imgw_session_t *s = imgw_core_session(cl, t[i].ref);
        if (s == NULL)
            continue;
        uv_buf_t b[3];
        uint8_t hdr[16], trl[32];
        if (s->codec == IMGW_CODEC_PB) {
            size_t hl, tl;
            imgw_codec_push_pb_parts(len, t[i].seq, ts, hdr, &hl, trl, &tl);
            b[0] = uv_buf_init((char *)hdr, (unsigned)hl);
            b[1] = uv_buf_init((char *)blob, (unsigned)len);
            b[2] = uv_buf_init((char *)trl, (unsigned)tl);
            imgw_conn_send_ws(s->conn, 0, b, 3);
        } else {
            if (json_len < 0) {
                json_len = imgw_codec_push_json_prefix(blob, len, ts, cl->out,
                                                       cl->out_cap);
                if (json_len < 0) {
                    IMGW_LOG_WARN_RL("cannot encode a JSON push: %s",
                                     imgw_strerror((int)json_len));
                    continue;
                }
            }
            int tl = snprintf((char *)trl, sizeof(trl), "%lld}}",
                              (long long)t[i].seq);
            b[0] = uv_buf_init((char *)cl->out, (unsigned)json_len);
            b[1] = uv_buf_init((char *)trl, (unsigned)tl);
            imgw_conn_send_ws(s->conn, 1, b, 2);
        }
        imgw_stat_inc(&cl->st.msgs_pushed);
    }
}

static void
local_frame(imgw_core_loop_t *cl, int command, const imgw_push_body_t *body,
            int64_t ts, const imgw_target_t *t, size_t n)
{
    ssize_t len[2] = {-1, -1};
    uint8_t *pb = NULL;
    for (size_t i = 0; i < n; i++) {
        imgw_session_t *s = imgw_core_session(cl, t[i].ref);
        if (s == NULL)
            continue;
        int k = s->codec;
        if (len[k] < 0) {
            /* PB goes to the upper half of out, JSON to the lower. */
            size_t half = cl->out_cap / 2;
            uint8_t *dst = k == IMGW_CODEC_PB ? cl->out + half : cl->out;
            len[k] = imgw_codec_encode((imgw_codec_t)k, command, 0, ts, body,
                                       dst, half);
            if (len[k] < 0) {
                IMGW_LOG_WARN_RL("cannot encode command %d", command);
                continue;
            }
            if (k == IMGW_CODEC_PB)
                pb = dst;
        }
        uv_buf_t b = uv_buf_init(k == IMGW_CODEC_PB ? (char *)pb
                                                    : (char *)cl->out,
                                 (unsigned)len[k]);
        imgw_conn_send_ws(s->conn, k == IMGW_CODEC_JSON, &b, 1);
    }
}

/* command: 0 for a downlink (counted as an API push), else the frame's
 * own command (a presence push). */
static void
local_raw(imgw_core_loop_t *cl, uint8_t *const raw[2],
          const size_t raw_len[2], const imgw_target_t *t, size_t n,
          int command)
{
    for (size_t i = 0; i < n; i++) {
        imgw_session_t *s = imgw_core_session(cl, t[i].ref);
        if (s == NULL || raw[s->codec] == NULL)
            continue;
        uv_buf_t b = uv_buf_init((char *)raw[s->codec],
                                 (unsigned)raw_len[s->codec]);
        imgw_conn_send_ws(s->conn, s->codec == IMGW_CODEC_JSON, &b, 1);
        imgw_stat_inc(command ? &cl->st.presence_pushes : &cl->st.api_pushes);
    }
}

typedef struct bcast_s {
    imgw_core_loop_t *cl;
    uint8_t *const *raw;
    const size_t *raw_len;
} bcast_t;

static void
bcast_one(imgw_conn_t *c, void *arg)
{
    bcast_t *b = arg;
    imgw_session_t *s = imgw_conn_data(c);
    if (s == NULL || !s->authed || b->raw[s->codec] == NULL)
        return;
    uv_buf_t ub = uv_buf_init((char *)b->raw[s->codec],
                              (unsigned)b->raw_len[s->codec]);
    imgw_conn_send_ws(c, s->codec == IMGW_CODEC_JSON, &ub, 1);
    imgw_stat_inc(&b->cl->st.api_pushes);
}

void
imgw_deliver_mail(imgw_core_loop_t *cl, imgw_mail_t *m)
{
    imgw_mail_data_t *d = m->data;

    switch (m->kind) {
    case IMGW_MAIL_KICK:
        imgw_session_kick(cl, m->targets[0].ref, (const char *)d->ptr[0]);
        break;
    case IMGW_MAIL_PUSH:
        local_push(cl, d->ptr[0], d->len[0], m->timestamp, m->targets, m->n);
        break;
    case IMGW_MAIL_FRAME:
        /* d holds only the command's member of the union (mail.h). */
        local_frame(cl, m->command, (const imgw_push_body_t *)d->ptr[0],
                    m->timestamp, m->targets, m->n);
        break;
    case IMGW_MAIL_RAW:
        if (m->broadcast) {
            bcast_t b = {cl, d->ptr, d->len};
            imgw_loop_foreach_ws(cl->loop, bcast_one, &b);
        } else {
            local_raw(cl, d->ptr, d->len, m->targets, m->n, m->command);
        }
        break;
    default:
        break;
    }
    imgw_mail_free(m);
}

/* ---- routing ------------------------------------------------------------- */

void
imgw_deliver_kick(imgw_core_loop_t *cl, imgw_conn_ref_t ref,
                  const char *platform)
{
    if (ref.loop == cl->index) {
        imgw_session_kick(cl, ref, platform);
        return;
    }
    imgw_mail_t *m = imgw_mail_new(IMGW_MAIL_KICK, 1);
    if (m == NULL)
        return;
    m->targets[0].ref = ref;
    m->data = imgw_mail_data_new(platform, strlen(platform) + 1, NULL, 0, 1);
    if (m->data == NULL) {
        imgw_mail_free(m);
        return;
    }
    imgw_loop_post(imgw_net_loop(cl->node->net, ref.loop), &m->node);
}

/* A mail to route r's targets carrying one reference to d. */
static imgw_mail_t *
mail_new(int kind, const route_t *r, imgw_mail_data_t *d)
{
    imgw_mail_t *m = imgw_mail_new(kind, r->n);
    if (m == NULL)
        return NULL;
    if (r->n > 0)
        memcpy(m->targets, r->t, r->n * sizeof(imgw_target_t));
    m->data = d;
    return m;
}

/* The loops other than self that resolve() found targets on. */
static unsigned
remote_routes(const imgw_core_loop_t *cl)
{
    unsigned k = 0;
    for (int i = 0; i < n_routes; i++)
        k += routes[i].n > 0 && i != cl->index;
    return k;
}

/* Posts a mail to loop i, or, when there is no memory for it, gives its
 * data reference back. */
static void
mail_post(imgw_core_loop_t *cl, int i, imgw_mail_t *m, imgw_mail_data_t *d)
{
    if (m == NULL) {
        imgw_mail_data_release(d);
        return;
    }
    imgw_loop_post(imgw_net_loop(cl->node->net, i), &m->node);
}

void
imgw_deliver_push(imgw_core_loop_t *cl, const uint8_t *blob, size_t len,
                  int64_t timestamp, const char *const *users,
                  const int64_t *seqs, size_t n, imgw_conn_ref_t exclude)
{
    imgw_deliver_push_local(cl, blob, len, timestamp, users, seqs, n, exclude);
    if (cl->node->mq != NULL)
        imgw_cluster_push(cl, blob, len, timestamp, users, seqs, n);
}

void
imgw_deliver_push_local(imgw_core_loop_t *cl, const uint8_t *blob, size_t len,
                        int64_t timestamp, const char *const *users,
                        const int64_t *seqs, size_t n, imgw_conn_ref_t exclude)
{
    if (resolve(cl, users, seqs, n, exclude) == 0)
        return;
    /* One copy of the blob for every other loop of the fan-out. */
    unsigned remote = remote_routes(cl);
    imgw_mail_data_t *d =
        remote ? imgw_mail_data_new(blob, len, NULL, 0, remote) : NULL;
    for (int i = 0; i < n_routes; i++) {
        route_t *r = &routes[i];
        if (r->n == 0)
            continue;
        if (i == cl->index) {
            local_push(cl, blob, len, timestamp, r->t, r->n);
            continue;
        }
        if (d == NULL)
            continue;
        imgw_mail_t *m = mail_new(IMGW_MAIL_PUSH, r, d);
        if (m != NULL)
            m->timestamp = timestamp;
        mail_post(cl, i, m, d);
    }
}

void
imgw_deliver_frame(imgw_core_loop_t *cl, int command,
                   const imgw_push_body_t *body, const char *const *users,
                   size_t n, imgw_conn_ref_t exclude)
{
    int64_t ts = imgw_now_ms();
    if (cl->node->mq != NULL)
        imgw_cluster_frame(cl, command, body, users, n);
    if (resolve(cl, users, NULL, n, exclude) == 0)
        return;
    unsigned remote = remote_routes(cl);
    imgw_mail_data_t *d =
        remote ? imgw_mail_data_new(body, imgw_push_body_size(command), NULL,
                                    0, remote)
               : NULL;
    for (int i = 0; i < n_routes; i++) {
        route_t *r = &routes[i];
        if (r->n == 0)
            continue;
        if (i == cl->index) {
            local_frame(cl, command, body, ts, r->t, r->n);
            continue;
        }
        if (d == NULL)
            continue;
        imgw_mail_t *m = mail_new(IMGW_MAIL_FRAME, r, d);
        if (m != NULL) {
            m->command = command;
            m->timestamp = ts;
        }
        mail_post(cl, i, m, d);
    }
}

size_t
imgw_deliver_raw(imgw_core_loop_t *cl, const uint8_t *pb, size_t pb_len,
                 const uint8_t *json, size_t json_len,
                 const char *const *users, size_t n)
{
    size_t total;
    imgw_mail_data_t *d;
    if (users == NULL) {
        /* Broadcast: every loop walks its own connections; one copy of
         * the frames for all of them. */
        route_t none = {NULL, 0, 0};
        int loops = cl->node->n_loops;
        d = imgw_mail_data_new(pb, pb_len, json, json_len, (unsigned)loops);
        for (int i = 0; d != NULL && i < loops; i++) {
            imgw_mail_t *m = mail_new(IMGW_MAIL_RAW, &none, d);
            if (m != NULL)
                m->broadcast = 1;
            mail_post(cl, i, m, d);
        }
        size_t authed = 0;
        for (int i = 0; i < cl->node->n_loops; i++)
            authed += imgw_stat_get(&cl->node->loops[i]->st.sessions_authed);
        return authed;
    }
    imgw_conn_ref_t none_ref = {0xffff, 0, 0};
    total = resolve(cl, users, NULL, n, none_ref);
    unsigned k = 0;
    for (int i = 0; i < n_routes; i++)
        k += routes[i].n > 0;
    d = k ? imgw_mail_data_new(pb, pb_len, json, json_len, k) : NULL;
    for (int i = 0; d != NULL && i < n_routes; i++) {
        route_t *r = &routes[i];
        if (r->n == 0)
            continue;
        imgw_mail_t *m = mail_new(IMGW_MAIL_RAW, r, d);
        if (m == NULL) {
            imgw_mail_data_release(d);
            continue;
        }
        if (i == cl->index) {
            imgw_deliver_mail(cl, m);
            continue;
        }
        imgw_loop_post(imgw_net_loop(cl->node->net, i), &m->node);
    }
    return total;
}

void
imgw_deliver_raw_refs(imgw_core_loop_t *cl, const uint8_t *pb, size_t pb_len,
                      const uint8_t *json, size_t json_len,
                      const imgw_conn_ref_t *refs, size_t n)
{
    if (n == 0 || routes_reset(cl->node->n_loops) != 0)
        return;
    for (size_t i = 0; i < n; i++)
        if (refs[i].loop < n_routes && route_add(refs[i], 0) != 0)
            break;
    /* One copy of the frames for every other loop (mail.h). */
    unsigned remote = remote_routes(cl);
    imgw_mail_data_t *d =
        remote ? imgw_mail_data_new(pb, pb_len, json, json_len, remote)
               : NULL;
    for (int i = 0; i < n_routes; i++) {
        route_t *r = &routes[i];
        if (r->n == 0)
            continue;
        if (i == cl->index) { /* written from the caller's buffers */
            uint8_t *raw[2] = {(uint8_t *)pb, (uint8_t *)json};
            size_t raw_len[2] = {pb_len, json_len};
            local_raw(cl, raw, raw_len, r->t, r->n,
                      im_CommandType_CMD_PRESENCE_PUSH);
            continue;
        }
        if (d == NULL)
            continue;
        imgw_mail_t *m = mail_new(IMGW_MAIL_RAW, r, d);
        if (m != NULL)
            m->command = im_CommandType_CMD_PRESENCE_PUSH;
        mail_post(cl, i, m, d);
    }
}

void
imgw_deliver_presence_remote(imgw_core_loop_t *cl, const char *const *nodes,
                             size_t n, const uint8_t *json_body, size_t len)
{
    if (cl->node->mq != NULL && n > 0)
        imgw_cluster_presence(cl, nodes, n, json_body, len);
}

/* Kicks (user, platform) on the node its route names, if that is another
 * one: routing to remote nodes is this file's, so session.c asks here. */
void
imgw_deliver_kick_remote(imgw_core_loop_t *cl, const char *user,
                         const char *platform)
{
    if (cl->node->mq != NULL)
        imgw_cluster_kick(cl, user, platform);
}
