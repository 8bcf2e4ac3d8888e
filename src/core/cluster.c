/*
 * cluster.c: this node as one broker node of a cluster (protocol.md
 * sections 7 and 8).
 *
 * Outgoing: after a message is stored and pushed to this node's own
 * connections, the receivers' routes (store: IM-USER-{user} platform ->
 * broker_id) name the other nodes that hold connections of theirs; each
 * such node gets ONE publish carrying all its recipients (with each one's
 * seq) and the shared PushMessage body. Other pushes (receipts, typing,
 * revoke) travel in the downlink format {code, ids, data}. A login kicks a
 * (user, platform) connection on another node with a "kick" message.
 *
 * Incoming: the MQ thread hands every consumed message to a loop (round
 * robin) through imgw_net_post; that loop parses it (bounded size and
 * depth), routes it to the owning loops' mailboxes, and only then acks it.
 * Malformed messages are rejected without requeue, counted and logged at a
 * bounded rate.
 *
 * Internal messages carry "imgw": "push" | "kick" | "presence" (sent by
 * presence.c to the nodes watching a user); anything else is a
 * business downlink, handled exactly like POST /api/push.
 *
 * Threads: imgw_cluster_start/stop on main; on_mq on the MQ thread; the
 * rest on loops.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <mbedtls/base64.h>

#include "alloc.h"
#include "json.h"
#include "mq.h"
#include "err.h"
#include "idsyntax.h"
#include "log.h"
#include "mail.h"
#include "session.h"

#define CLUSTER_MAX_MESSAGE (4u << 20)
#define CLUSTER_PUBLISH_TTL_MS 60000

/* ---- the MQ thread side ------------------------------------------------- */

static void
on_mq(void *data, const uint8_t *body, size_t len, uint64_t tag)
{
    imgw_node_t *node = data;
    if (atomic_load(&node->draining))
        return; /* left unacked: the broker redelivers it elsewhere/later */
    imgw_mail_t *m = imgw_mail_new(IMGW_MAIL_MQ, 0);
    if (m == NULL)
        return;
    m->tag = tag;
    m->data = imgw_mail_data_new(body, len, NULL, 0, 1);
    if (m->data == NULL) {
        imgw_mail_free(m);
        return;
    }
    int loop = (int)(atomic_fetch_add(&node->mq_rr, 1) % (unsigned)node->n_loops);
    if (imgw_net_post(node->net, loop, &m->node) != 0)
        imgw_mail_free(m);
}

int
imgw_cluster_start(imgw_node_t *node, char *err, size_t errlen)
{
    const imgw_config_t *cfg = node->cfg;
    imgw_mq_opts_t o = {
        .url = cfg->mq_url,
        .broker_id = cfg->broker_id,
        .exchange = cfg->mq_exchange,
        .prefetch = cfg->mq_prefetch,
        .heartbeat = 30,
        .max_message = CLUSTER_MAX_MESSAGE,
        .publish_ttl_ms = CLUSTER_PUBLISH_TTL_MS,
        .on_message = on_mq,
        .data = node,
    };
    return imgw_mq_start(&node->mq, &o, err, errlen);
}

void
imgw_cluster_stop(imgw_node_t *node)
{
    if (node->mq != NULL)
        imgw_mq_stop(node->mq);
    node->mq = NULL;
}

/* ---- outgoing: find the other nodes, one publish per node --------------- */

typedef struct hop_s {
    char broker[128];
    size_t user; /* index into the fan-out's users */
} hop_t;

typedef struct fanout_ref_s fanout_ref_t;

typedef struct fanout_s {
    fanout_ref_t *refs; /* one per user: the lookups' callback data */
    int command;        /* 202: blob push; else a downlink frame */
    int64_t ts;
    uint8_t *payload;   /* 202: PushMessage blob; else the JSON body text */
    size_t payload_len;
    char **users;
    int64_t *seqs;
    size_t n;
    size_t pending;     /* route lookups outstanding */
    hop_t *hops;
    size_t n_hops, cap_hops;
} fanout_t;

struct fanout_ref_s {
    fanout_t *f;
    size_t user;
};

static void
fanout_free(fanout_t *f)
{
    for (size_t i = 0; i < f->n; i++)
        imgw_free(f->users[i]);
    imgw_free(f->users);
    imgw_free(f->seqs);
    imgw_free(f->payload);
    imgw_free(f->hops);
    imgw_free(f->refs);
    imgw_free(f);
}

static int
hop_add(fanout_t *f, const char *broker, size_t user)
{
    for (size_t i = 0; i < f->n_hops; i++)
        if (f->hops[i].user == user && strcmp(f->hops[i].broker, broker) == 0)
            return 0;
    if (f->n_hops == f->cap_hops) {
        size_t cap = f->cap_hops ? f->cap_hops * 2 : 8;
        hop_t *h = imgw_try_realloc(f->hops, cap * sizeof(*h));
        if (h == NULL)
            return IMGW_ENOMEM;
        f->hops = h;
        f->cap_hops = cap;
    }
    snprintf(f->hops[f->n_hops].broker, sizeof(f->hops[0].broker), "%s",
             broker);
    f->hops[f->n_hops].user = user;
    f->n_hops++;
    return 0;
}

static char *
b64(const uint8_t *p, size_t n)
{
    size_t olen = 0;
    mbedtls_base64_encode(NULL, 0, &olen, p, n);
    char *out = imgw_try_malloc(olen + 1);
    if (out == NULL)
        return NULL;
    if (mbedtls_base64_encode((unsigned char *)out, olen + 1, &olen, p, n) !=
        0) {
        imgw_free(out);
        return NULL;
    }
    out[olen] = '\0';
    return out;
}

/*
 * The downlink {"code":C,"ids":[the hops' users of broker from hop i],
 * "data":BODY} around the fan-out's body text, built once as text (ids are
 * escaped by base's JSON escaper). Marks the hops it takes in done.
 * Returns a malloc'd NUL-terminated string or NULL (out of memory).
 */
static char *
frame_downlink(const fanout_t *f, size_t i, uint8_t *done, size_t *len)
{
    const char *broker = f->hops[i].broker;
    size_t need = 64 + f->payload_len;
    for (size_t k = i; k < f->n_hops; k++) {
        if (!done[k] && strcmp(f->hops[k].broker, broker) == 0) {
            const char *u = f->users[f->hops[k].user];
            need += 3 + imgw_json_escape(NULL, 0, (const uint8_t *)u,
                                         strlen(u));
        }
    }
    char *out = imgw_try_malloc(need);
    if (out == NULL) {
        for (size_t k = i; k < f->n_hops; k++)
            if (strcmp(f->hops[k].broker, broker) == 0)
                done[k] = 1; /* one drop counted for this broker */
        return NULL;
    }
    size_t o = (size_t)snprintf(out, need, "{\"code\":%d,\"ids\":[",
                                f->command);
    int first = 1;
    for (size_t k = i; k < f->n_hops; k++) {
        if (done[k] || strcmp(f->hops[k].broker, broker) != 0)
            continue;
        done[k] = 1;
        const char *u = f->users[f->hops[k].user];
        if (!first)
            out[o++] = ',';
        first = 0;
        out[o++] = '"';
        o += imgw_json_escape((uint8_t *)out + o, need - o,
                              (const uint8_t *)u, strlen(u));
        out[o++] = '"';
    }
    memcpy(out + o, "],\"data\":", 9);
    o += 9;
    memcpy(out + o, f->payload, f->payload_len);
    o += f->payload_len;
    out[o++] = '}';
    out[o] = '\0';
    *len = o;
    return out;
}

/* Publishes one message per broker named by the hops. */
static void
fanout_flush(imgw_core_loop_t *cl, fanout_t *f)
{
    imgw_node_t *node = cl->node;
    char *blob64 = NULL;
    if (f->command == im_CommandType_CMD_PUSH_MSG) {
        blob64 = b64(f->payload, f->payload_len);
        if (blob64 == NULL)
            return;
    }
    uint8_t *done = imgw_try_calloc(f->n_hops ? f->n_hops : 1, 1);
    if (done == NULL) {
        imgw_free(blob64);
        return;
    }
    for (size_t i = 0; i < f->n_hops; i++) {
        if (done[i])
            continue;
        const char *broker = f->hops[i].broker;
        if (blob64 == NULL) {
            size_t tl = 0;
            char *text = frame_downlink(f, i, done, &tl);
            if (text == NULL ||
                imgw_mq_publish(node->mq, broker, (const uint8_t *)text, tl) !=
                    0) {
                atomic_fetch_add(&node->remote_dropped, 1);
                IMGW_LOG_WARN_RL("cluster: push to node %s dropped (broker "
                                 "unavailable)", broker);
            }
            imgw_free(text);
            continue;
        }
        cJSON *msg = cJSON_CreateObject();
        cJSON *list = cJSON_CreateArray();
        for (size_t k = i; k < f->n_hops; k++) {
            if (done[k] || strcmp(f->hops[k].broker, broker) != 0)
                continue;
            done[k] = 1;
            size_t u = f->hops[k].user;
            cJSON *t = cJSON_CreateArray();
            cJSON_AddItemToArray(t, cJSON_CreateString(f->users[u]));
            cJSON_AddItemToArray(t, cJSON_CreateNumber((double)f->seqs[u]));
            cJSON_AddItemToArray(list, t);
        }
        cJSON_AddStringToObject(msg, "imgw", "push");
        cJSON_AddNumberToObject(msg, "ts", (double)f->ts);
        cJSON_AddStringToObject(msg, "blob", blob64);
        cJSON_AddItemToObject(msg, "targets", list);
        char *text = cJSON_PrintUnformatted(msg);
        cJSON_Delete(msg);
        if (text == NULL ||
            imgw_mq_publish(node->mq, broker, (const uint8_t *)text,
                            strlen(text)) != 0) {
            /* The message is in the store: its receivers sync it. */
            atomic_fetch_add(&node->remote_dropped, 1);
            IMGW_LOG_WARN_RL("cluster: push to node %s dropped (broker "
                             "unavailable)", broker);
        }
        imgw_free(text);
    }
    imgw_free(done);
    imgw_free(blob64);
}

static void
route_cb(int status, const imgw_store_route_t *r, size_t n, void *data)
{
    fanout_ref_t *ref = data;
    fanout_t *f = ref->f;
    imgw_core_loop_t *cl = imgw_core_loop_current();
    const char *self = cl->node->cfg->broker_id;
    if (status == 0)
        for (size_t i = 0; i < n; i++)
            if (strcmp(r[i].broker_id, self) != 0)
                hop_add(f, r[i].broker_id, ref->user);
    if (--f->pending == 0) {
        fanout_flush(cl, f);
        fanout_free(f);
    }
}

/*
 * Looks up every user's routes (pipelined by the redis backend) and
 * publishes once every answer is in. payload is copied.
 */
static void
fanout_start(imgw_core_loop_t *cl, int command, int64_t ts,
             const uint8_t *payload, size_t len, const char *const *users,
             const int64_t *seqs, size_t n)
{
    if (n == 0)
        return;
    fanout_t *f = imgw_try_calloc(1, sizeof(*f));
    fanout_ref_t *refs = imgw_try_calloc(n, sizeof(*refs));
    if (f == NULL || refs == NULL) {
        imgw_free(f);
        imgw_free(refs);
        IMGW_LOG_WARN_RL("cluster: out of memory routing a push");
        return;
    }
    f->refs = refs;
    f->command = command;
    f->ts = ts;
    f->payload = imgw_try_malloc(len ? len : 1);
    f->users = imgw_try_calloc(n, sizeof(char *));
    f->seqs = imgw_try_calloc(n, sizeof(int64_t));
    if (f->payload == NULL || f->users == NULL || f->seqs == NULL)
        goto oom;
    memcpy(f->payload, payload, len);
    f->payload_len = len;
    for (size_t i = 0; i < n; i++) {
        f->users[i] = imgw_try_strdup(users[i]);
        if (f->users[i] == NULL)
            goto oom;
        f->n = i + 1;
        f->seqs[i] = seqs ? seqs[i] : 0;
    }
    /* Every lookup answers later, refused or not (store.h), so the last
     * answer flushes and frees; nothing here touches f after the loop. */
    f->pending = n;
    for (size_t i = 0; i < n; i++) {
        refs[i].f = f;
        refs[i].user = i;
        imgw_store_route_get(cl->store, f->users[i], route_cb, &refs[i]);
    }
    return;
oom:
    IMGW_LOG_WARN_RL("cluster: out of memory routing a push");
    fanout_free(f);
}

void
imgw_cluster_push(imgw_core_loop_t *cl, const uint8_t *blob, size_t len,
                  int64_t timestamp, const char *const *users,
                  const int64_t *seqs, size_t n)
{
    fanout_start(cl, im_CommandType_CMD_PUSH_MSG, timestamp, blob, len, users,
                 seqs, n);
}

void
imgw_cluster_frame(imgw_core_loop_t *cl, int command,
                   const imgw_push_body_t *body, const char *const *users,
                   size_t n)
{
    /* The body as JSON, written once by our own encoder; fanout_flush
     * wraps it into each node's downlink without parsing it again. */
    ssize_t len = imgw_codec_encode_json_body(command, body, cl->out,
                                              cl->out_cap);
    if (len < 0)
        return;
    fanout_start(cl, command, 0, cl->out, (size_t)len, users, NULL, n);
}

/* ---- kicks across nodes ------------------------------------------------- */

typedef struct kick_ctx_s {
    char user[IMGW_JWT_MAX_USER];
    char platform[IMGW_USERMAP_PLATFORM];
} kick_ctx_t;

static void
kick_route_cb(int status, const imgw_store_route_t *r, size_t n, void *data)
{
    kick_ctx_t *k = data;
    imgw_core_loop_t *cl = imgw_core_loop_current();
    const char *self = cl->node->cfg->broker_id;
    for (size_t i = 0; status == 0 && i < n; i++) {
        if (strcmp(r[i].platform, k->platform) != 0 ||
            strcmp(r[i].broker_id, self) == 0)
            continue;
        cJSON *msg = cJSON_CreateObject();
        cJSON_AddStringToObject(msg, "imgw", "kick");
        cJSON_AddStringToObject(msg, "user", k->user);
        cJSON_AddStringToObject(msg, "platform", k->platform);
        char *text = cJSON_PrintUnformatted(msg);
        cJSON_Delete(msg);
        if (text == NULL || imgw_mq_publish(cl->node->mq, r[i].broker_id,
                                            (const uint8_t *)text,
                                            strlen(text)) != 0)
            atomic_fetch_add(&cl->node->remote_dropped, 1);
        imgw_free(text);
    }
    imgw_free(k);
}

void
imgw_cluster_kick(imgw_core_loop_t *cl, const char *user, const char *platform)
{
    kick_ctx_t *k = imgw_try_calloc(1, sizeof(*k));
    if (k == NULL)
        return;
    snprintf(k->user, sizeof(k->user), "%s", user);
    snprintf(k->platform, sizeof(k->platform), "%s", platform);
    imgw_store_route_get(cl->store, user, kick_route_cb, k);
}

/* ---- presence to the watching nodes -------------------------------------- */

/* {"imgw":"presence","data":BODY}, built once as text around the body our
 * JSON encoder wrote, published to each node (presence.c found them). */
void
imgw_cluster_presence(imgw_core_loop_t *cl, const char *const *nodes,
                      size_t n, const uint8_t *json_body, size_t len)
{
    static const char head[] = "{\"imgw\":\"presence\",\"data\":";
    size_t hl = sizeof(head) - 1;
    uint8_t *text = imgw_try_malloc(hl + len + 1);
    if (text == NULL) {
        atomic_fetch_add(&cl->node->remote_dropped, n);
        return;
    }
    memcpy(text, head, hl);
    memcpy(text + hl, json_body, len);
    text[hl + len] = '}';
    for (size_t i = 0; i < n; i++) {
        if (imgw_mq_publish(cl->node->mq, nodes[i], text, hl + len + 1) != 0) {
            atomic_fetch_add(&cl->node->remote_dropped, 1);
            IMGW_LOG_WARN_RL("cluster: presence push to node %s dropped "
                             "(broker unavailable)", nodes[i]);
        }
    }
    imgw_free(text);
}

/* ---- incoming ------------------------------------------------------------- */

/* An internal push: {"imgw":"push","ts":T,"blob":B64,"targets":[[u,seq]]}. */
static const char *
parse_push(const cJSON *j, imgw_cluster_in_t *in)
{
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(j, "ts");
    const cJSON *blob = cJSON_GetObjectItemCaseSensitive(j, "blob");
    const cJSON *targets = cJSON_GetObjectItemCaseSensitive(j, "targets");
    int64_t ts_ms;
    if (!cJSON_IsNumber(ts) || !cJSON_IsString(blob) ||
        !cJSON_IsArray(targets))
        return "push needs ts, blob and targets";
    /* Numbers from the broker are checked before any cast: (int64_t)1e300
     * is undefined behaviour and would push seq -2^63 in a release build. */
    if (imgw_codec_json_int(ts, 0, IMGW_JSON_MAX_EXACT, &ts_ms) != 0)
        return "ts must be an integer in [0, 2^53]";
    size_t bl = strlen(blob->valuestring), olen = 0;
    uint8_t *raw = imgw_try_malloc(bl ? bl : 1);
    if (raw == NULL)
        return "out of memory";
    if (mbedtls_base64_decode(raw, bl ? bl : 1, &olen,
                              (const unsigned char *)blob->valuestring,
                              bl) != 0) {
        imgw_free(raw);
        return "blob is not base64";
    }
    im_PushMessage pm;
    imgw_slice_t content;
    if (imgw_codec_decode_push(raw, olen, &pm, &content) != 0) {
        imgw_free(raw);
        return "blob is not a PushMessage";
    }
    size_t n = (size_t)cJSON_GetArraySize(targets);
    const char **users = imgw_try_malloc((n ? n : 1) * sizeof(char *));
    int64_t *seqs = imgw_try_malloc((n ? n : 1) * sizeof(int64_t));
    const char *why = NULL;
    size_t k = 0;
    const cJSON *t;
    if (users == NULL || seqs == NULL)
        why = "out of memory";
    cJSON_ArrayForEach(t, targets)
    {
        if (why)
            break;
        const cJSON *u = cJSON_GetArrayItem(t, 0);
        const cJSON *s = cJSON_GetArrayItem(t, 1);
        if (!cJSON_IsArray(t) || !cJSON_IsString(u) ||
            !imgw_id_valid(u->valuestring) ||
            imgw_codec_json_int(s, 0, IMGW_JSON_MAX_EXACT, &seqs[k]) != 0) {
            why = "targets must be [[user id, seq], ...] with integer seqs "
                  "in [0, 2^53]";
            break;
        }
        users[k] = u->valuestring;
        k++;
    }
    if (why != NULL) {
        imgw_free(users);
        imgw_free(seqs);
        imgw_free(raw);
        return why;
    }
    in->kind = IMGW_CLUSTER_IN_PUSH;
    in->blob = raw;
    in->blob_len = olen;
    in->ts = ts_ms;
    in->users = users;
    in->seqs = seqs;
    in->n = k;
    return NULL;
}

/*
 * Parses a message consumed from this node's queue into *in (which owns
 * what it points at until imgw_cluster_in_free). Returns NULL, or why the
 * message is rejected. The caller (downlink.c) routes it and settles it.
 */
const char *
imgw_cluster_parse(const uint8_t *body, size_t len, imgw_cluster_in_t *in)
{
    const char *why = NULL;
    cJSON *j = NULL;
    memset(in, 0, sizeof(*in));
    if (len == 0 || len > CLUSTER_MAX_MESSAGE)
        return "empty or oversized";
    if (!imgw_codec_json_prescan(body, len))
        return "nested too deep or \\u0000";
    if ((j = cJSON_ParseWithLength((const char *)body, len)) == NULL ||
        !cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return "not a JSON object";
    }
    in->j = j;
    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(j, "imgw");
    if (kind == NULL) {
        in->kind = IMGW_CLUSTER_IN_DOWNLINK;
    } else if (!cJSON_IsString(kind)) {
        why = "imgw must be a string";
    } else if (strcmp(kind->valuestring, "push") == 0) {
        why = parse_push(j, in);
    } else if (strcmp(kind->valuestring, "kick") == 0) {
        const cJSON *u = cJSON_GetObjectItemCaseSensitive(j, "user");
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "platform");
        if (cJSON_IsString(u) && cJSON_IsString(p) &&
            imgw_id_valid(u->valuestring)) {
            in->kind = IMGW_CLUSTER_IN_KICK;
            in->user = u->valuestring;
            in->platform = p->valuestring;
        } else {
            why = "kick needs user and platform";
        }
    } else if (strcmp(kind->valuestring, "presence") == 0) {
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(j, "data");
        const cJSON *u = cJSON_GetObjectItemCaseSensitive(d, "user_id");
        if (cJSON_IsObject(d) && cJSON_IsString(u) &&
            imgw_id_valid(u->valuestring))
            in->kind = IMGW_CLUSTER_IN_PRESENCE;
        else
            why = "presence needs data with a user_id";
    } else {
        why = "unknown imgw message";
    }
    return why;
}

void
imgw_cluster_in_free(imgw_cluster_in_t *in)
{
    cJSON_Delete(in->j);
    imgw_free(in->blob);
    imgw_free(in->users);
    imgw_free(in->seqs);
    memset(in, 0, sizeof(*in));
}

/* Acks a handled message, or rejects it (counted, logged) with why. */
void
imgw_cluster_settle(imgw_core_loop_t *cl, uint64_t tag, size_t len,
                    const char *why)
{
    imgw_node_t *node = cl->node;
    if (why != NULL) {
        atomic_fetch_add(&node->mq_bad, 1);
        IMGW_LOG_WARN_RL("mq: rejected a message (%zu bytes): %s", len, why);
        imgw_mq_reject(node->mq, tag);
        return;
    }
    /* Everything is in the owning loops' mailboxes (or written): settle. */
    imgw_mq_ack(node->mq, tag);
}
