/*
 * presence.c: who is online (docs/protocol.md "Presence").
 *
 *   CMD_PRESENCE_REQ      each listed user's online platforms, cluster-wide:
 *                         one route read per user (IM-USER-{u}: the routes
 *                         every node writes at login and deletes at logout).
 *   CMD_PRESENCE_SUB_REQ  adds (or removes) users to the connection's
 *                         subscriptions and answers their presence now.
 *   CMD_PRESENCE_PUSH     when a subscribed-to user logs in or out on any
 *                         node: the user's platforms after the change.
 *
 * Subscriptions live in the node's watch map (watched user -> connection
 * refs) and in the session (its own list, to drop them at close). In a
 * cluster each node also registers itself as a watcher of the user in the
 * store (imgw_store_watch_set, IM-PWATCH-{u}, refreshed by loop 0's tick
 * while the subscription lasts), so that the node where the user logs in
 * or out knows which other nodes to tell: one broker message per watching
 * node (deliver.c -> cluster.c), never a broadcast.
 *
 * A change is read back from the store after the route write (same loop,
 * same store connection: answered in order), so every push carries the
 * store's state at that moment, not a delta; of two pushes racing from two
 * nodes the later read is the truer one, and a query settles it.
 *
 * Thread: loops. Store callbacks find connections again by ref.
 */
#include <stdio.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "alloc.h"
#include "err.h"
#include "idsyntax.h"
#include "log.h"
#include "session.h"

#define PRESENCE_MAX_IDS 100 /* ids per request (imgw.options) */

/* Presence requests share the user's receipt/typing budget: each asks
 * the store up to 100 reads. 1 = taken. */
static int
presence_budget(imgw_session_t *s)
{
    const imgw_config_t *cfg = s->cl->node->cfg;
    double rate = cfg->user_receipt_rate ? cfg->user_receipt_rate
                                         : (double)cfg->send_rate;
    return imgw_usermap_take(s->cl->node->users, s->user,
                             IMGW_USERMAP_BUDGET_RECEIPT, rate, 2.0 * rate,
                             imgw_loop_now_ms(s->cl->loop));
}

/* ---- queries: one route read per user, answered when all are in ------ */

typedef struct pq_s pq_t;

typedef struct pq_ref_s {
    pq_t *q;
    size_t i;
} pq_ref_t;

struct pq_s {
    imgw_conn_ref_t ref;
    uint32_t sequence;
    int command; /* the response: 801 or 803 */
    size_t pending;
    int failed;
    union {
        im_PresenceResponse r;
        im_PresenceSubscribeResponse s;
    } u;
    im_UserPresence *users; /* into u */
    pb_size_t *count;       /* into u */
    pq_ref_t refs[PRESENCE_MAX_IDS];
    uint8_t added[PRESENCE_MAX_IDS]; /* SUB: added by this request */
};

static void pq_answer(imgw_core_loop_t *cl, pq_t *q);

static void
pq_route_cb(int status, const imgw_store_route_t *r, size_t n, void *data)
{
    pq_ref_t *pr = data;
    pq_t *q = pr->q;
    im_UserPresence *u = &q->users[pr->i];
    if (status != 0)
        q->failed = 1;
    const size_t max = sizeof(u->platforms) / sizeof(u->platforms[0]);
    for (size_t k = 0; status == 0 && k < n && u->platforms_count < max; k++)
        snprintf(u->platforms[u->platforms_count++], sizeof(u->platforms[0]),
                 "%s", r[k].platform);
    u->online = u->platforms_count > 0;
    if (--q->pending == 0)
        pq_answer(imgw_core_loop_current(), q);
}

/* Drops subscription i of s (unordered). */
static void
watch_drop(imgw_session_t *s, uint32_t i)
{
    imgw_watchmap_remove(s->cl->node->watches, s->watch[i],
                         imgw_conn_ref(s->conn));
    imgw_free(s->watch[i]);
    s->watch[i] = s->watch[--s->n_watch];
}

static int
watch_find(const imgw_session_t *s, const char *user)
{
    for (uint32_t i = 0; i < s->n_watch; i++)
        if (strcmp(s->watch[i], user) == 0)
            return (int)i;
    return -1;
}

static void
pq_answer(imgw_core_loop_t *cl, pq_t *q)
{
    imgw_session_t *s = imgw_core_session(cl, q->ref);
    if (s != NULL) {
        if (q->failed) {
            /* A subscription whose current state cannot be read is taken
             * back: the answer says "nothing changed, retry". */
            if (q->command == im_CommandType_CMD_PRESENCE_SUB_RSP)
                for (pb_size_t i = 0; i < *q->count; i++) {
                    int k = watch_find(s, q->users[i].user_id);
                    if (k >= 0 && q->added[i])
                        watch_drop(s, (uint32_t)k);
                }
            *q->count = 0;
            if (q->command == im_CommandType_CMD_PRESENCE_RSP) {
                q->u.r.error_code = im_ErrorCode_ERR_SERVER_BUSY;
                snprintf(q->u.r.error_msg, sizeof(q->u.r.error_msg),
                         "store unavailable");
            } else {
                q->u.s.error_code = im_ErrorCode_ERR_SERVER_BUSY;
                snprintf(q->u.s.error_msg, sizeof(q->u.s.error_msg),
                         "store unavailable");
            }
            imgw_core_count_error(cl, im_ErrorCode_ERR_SERVER_BUSY);
        }
        if (q->command == im_CommandType_CMD_PRESENCE_SUB_RSP)
            q->u.s.subscribed = (int32_t)s->n_watch;
        imgw_session_reply(s, q->command, q->sequence, &q->u);
    }
    imgw_free(q);
}

static pq_t *
pq_new(imgw_session_t *s, uint32_t sequence, int command)
{
    pq_t *q = imgw_try_calloc(1, sizeof(*q));
    if (q == NULL)
        return NULL;
    q->ref = imgw_conn_ref(s->conn);
    q->sequence = sequence;
    q->command = command;
    if (command == im_CommandType_CMD_PRESENCE_RSP) {
        q->users = q->u.r.users;
        q->count = &q->u.r.users_count;
    } else {
        q->users = q->u.s.users;
        q->count = &q->u.s.users_count;
    }
    return q;
}

/* Starts the reads of q's users (all filled in); the last answer replies. */
static void
pq_start(imgw_core_loop_t *cl, pq_t *q)
{
    if (*q->count == 0) { /* not a store callback: may answer now */
        pq_answer(cl, q);
        return;
    }
    /* Every read answers later (store.h), so the last answer replies and
     * frees; nothing touches q after the loop. */
    size_t n = *q->count;
    q->pending = n;
    for (size_t i = 0; i < n; i++) {
        q->refs[i].q = q;
        q->refs[i].i = i;
        imgw_store_route_get(cl->store, q->users[i].user_id, pq_route_cb,
                             &q->refs[i]);
    }
}

/*
 * Validates ids (the id rule) and copies the distinct ones into q's users.
 * Returns NULL, or the error message (into msg).
 */
static const char *
pq_fill(pq_t *q, char ids[][128], pb_size_t n, char *msg, size_t msglen)
{
    for (pb_size_t i = 0; i < n; i++) {
        const char *why = imgw_id_check(ids[i], strlen(ids[i]));
        if (why != NULL) {
            snprintf(msg, msglen, "user id %s", why);
            return msg;
        }
        int dup = 0;
        for (pb_size_t k = 0; k < *q->count && !dup; k++)
            dup = strcmp(q->users[k].user_id, ids[i]) == 0;
        if (dup)
            continue;
        snprintf(q->users[*q->count].user_id, sizeof(q->users[0].user_id),
                 "%s", ids[i]);
        (*q->count)++;
    }
    return NULL;
}

static void
presence_refuse(imgw_session_t *s, uint32_t sequence, int command, int code,
                const char *msg)
{
    if (command == im_CommandType_CMD_PRESENCE_RSP) {
        im_PresenceResponse r = im_PresenceResponse_init_zero;
        r.error_code = (im_ErrorCode)code;
        snprintf(r.error_msg, sizeof(r.error_msg), "%s", msg);
        imgw_session_reply(s, command, sequence, &r);
    } else {
        /* PresenceSubscribeResponse holds 100 UserPresence (64 KiB):
         * heap, not stack. */
        im_PresenceSubscribeResponse *r = imgw_try_calloc(1, sizeof(*r));
        if (r == NULL) {
            imgw_session_error(s, sequence, im_ErrorCode_ERR_UNKNOWN,
                               "out of memory");
            return;
        }
        r->error_code = (im_ErrorCode)code;
        snprintf(r->error_msg, sizeof(r->error_msg), "%s", msg);
        r->subscribed = (int32_t)s->n_watch;
        imgw_session_reply(s, command, sequence, r);
        imgw_free(r);
    }
    if (code != im_ErrorCode_ERR_SUCCESS)
        imgw_core_count_error(s->cl, code);
}

void
imgw_presence_query(imgw_session_t *s, imgw_msg_in_t *in)
{
    const int rsp = im_CommandType_CMD_PRESENCE_RSP;
    char msg[160];
    if (!presence_budget(s)) {
        imgw_stat_inc(&s->cl->st.rate_limited);
        presence_refuse(s, in->sequence, rsp, im_ErrorCode_ERR_SEND_TOO_FAST,
                        "presence rate exceeded");
        return;
    }
    pq_t *q = pq_new(s, in->sequence, rsp);
    if (q == NULL) {
        presence_refuse(s, in->sequence, rsp, im_ErrorCode_ERR_UNKNOWN,
                        "out of memory");
        return;
    }
    im_PresenceRequest *r = &in->u.presence;
    if (r->user_ids_count == 0 ||
        pq_fill(q, r->user_ids, r->user_ids_count, msg, sizeof(msg))) {
        if (r->user_ids_count == 0)
            snprintf(msg, sizeof(msg), "user_ids must list 1..%d users",
                     PRESENCE_MAX_IDS);
        imgw_free(q);
        presence_refuse(s, in->sequence, rsp, im_ErrorCode_ERR_INVALID_PARAM,
                        msg);
        return;
    }
    pq_start(s->cl, q);
}

/* ---- subscriptions ---------------------------------------------------- */

/* Adds user to s's subscriptions. 1 added, 0 already there, <0 error. */
static int
watch_add(imgw_session_t *s, const char *user)
{
    imgw_core_loop_t *cl = s->cl;
    if (watch_find(s, user) >= 0)
        return 0;
    if (s->n_watch == s->cap_watch) {
        uint32_t cap = s->cap_watch ? s->cap_watch * 2 : 8;
        char **w = imgw_try_realloc(s->watch, cap * sizeof(*w));
        if (w == NULL)
            return IMGW_ENOMEM;
        s->watch = w;
        s->cap_watch = (uint16_t)cap; /* <= 16384: session.h */
    }
    char *id = imgw_try_strdup(user);
    if (id == NULL)
        return IMGW_ENOMEM;
    int r = imgw_watchmap_add(cl->node->watches, id, imgw_conn_ref(s->conn));
    if (r < 0) {
        imgw_free(id);
        return r;
    }
    s->watch[s->n_watch++] = id;
    /* The first watcher on this node registers the node, so the node
     * where the user logs in or out publishes here. */
    if (r == 1 && cl->node->mq != NULL)
        imgw_store_watch_set(cl->store, id, cl->node->cfg->broker_id,
                             cl->node->cfg->route_ttl, NULL, NULL);
    return 1;
}

void
imgw_presence_subscribe(imgw_session_t *s, imgw_msg_in_t *in)
{
    const int rsp = im_CommandType_CMD_PRESENCE_SUB_RSP;
    const imgw_config_t *cfg = s->cl->node->cfg;
    im_PresenceSubscribeRequest *r = &in->u.presence_sub;
    char msg[160];

    if (cfg->presence_subscriptions == 0) {
        presence_refuse(s, in->sequence, rsp,
                        im_ErrorCode_ERR_PERMISSION_DENIED,
                        "presence subscriptions are off");
        return;
    }
    if (!presence_budget(s)) {
        imgw_stat_inc(&s->cl->st.rate_limited);
        presence_refuse(s, in->sequence, rsp, im_ErrorCode_ERR_SEND_TOO_FAST,
                        "presence rate exceeded");
        return;
    }
    if (r->unsubscribe) {
        if (r->user_ids_count == 0)
            while (s->n_watch > 0)
                watch_drop(s, s->n_watch - 1);
        for (pb_size_t i = 0; i < r->user_ids_count; i++) {
            int k = watch_find(s, r->user_ids[i]);
            if (k >= 0)
                watch_drop(s, (uint32_t)k);
        }
        presence_refuse(s, in->sequence, rsp, im_ErrorCode_ERR_SUCCESS, "");
        return;
    }
    pq_t *q = pq_new(s, in->sequence, rsp);
    if (q == NULL) {
        presence_refuse(s, in->sequence, rsp, im_ErrorCode_ERR_UNKNOWN,
                        "out of memory");
        return;
    }
    if (pq_fill(q, r->user_ids, r->user_ids_count, msg, sizeof(msg))) {
        imgw_free(q);
        presence_refuse(s, in->sequence, rsp, im_ErrorCode_ERR_INVALID_PARAM,
                        msg);
        return;
    }
    /* All or nothing: count the new ones against the bound first. */
    size_t fresh = 0;
    for (pb_size_t i = 0; i < *q->count; i++)
        fresh += watch_find(s, q->users[i].user_id) < 0;
    if (s->n_watch + fresh > (size_t)cfg->presence_subscriptions) {
        imgw_free(q);
        snprintf(msg, sizeof(msg),
                 "over limits.presence_subscriptions (%d per connection)",
                 cfg->presence_subscriptions);
        presence_refuse(s, in->sequence, rsp, im_ErrorCode_ERR_INVALID_PARAM,
                        msg);
        return;
    }
    for (pb_size_t i = 0; i < *q->count; i++) {
        int a = watch_add(s, q->users[i].user_id);
        if (a < 0) {
            for (pb_size_t k = 0; k < i; k++) {
                int w = watch_find(s, q->users[k].user_id);
                if (w >= 0 && q->added[k])
                    watch_drop(s, (uint32_t)w);
            }
            imgw_free(q);
            presence_refuse(s, in->sequence, rsp, im_ErrorCode_ERR_UNKNOWN,
                            "out of memory");
            return;
        }
        q->added[i] = (uint8_t)a; /* taken back if the reads fail */
    }
    pq_start(s->cl, q);
}

void
imgw_presence_session_closed(imgw_session_t *s)
{
    while (s->n_watch > 0)
        watch_drop(s, s->n_watch - 1);
    imgw_free(s->watch);
    s->watch = NULL;
    s->cap_watch = 0;
}

/* ---- changes: tell the watchers ----------------------------------------- */

typedef struct pc_s {
    char user[IMGW_JWT_MAX_USER];
    char platform[IMGW_USERMAP_PLATFORM];
    size_t n_nodes; /* other watching nodes (owned strings) */
    char **nodes;
} pc_t;

static void
pc_free(pc_t *c)
{
    for (size_t i = 0; i < c->n_nodes; i++)
        imgw_free(c->nodes[i]);
    imgw_free(c->nodes);
    imgw_free(c);
}

/* The push to this node's watchers and the other watching nodes. */
static void
pc_routes_cb(int status, const imgw_store_route_t *r, size_t n, void *data)
{
    pc_t *c = data;
    imgw_core_loop_t *cl = imgw_core_loop_current();
    if (status != 0) {
        IMGW_LOG_WARN_RL("presence of %s not pushed: %s", c->user,
                         imgw_strerror(status));
        pc_free(c);
        return;
    }
    im_PresencePush p = im_PresencePush_init_zero;
    snprintf(p.user_id, sizeof(p.user_id), "%s", c->user);
    snprintf(p.platform, sizeof(p.platform), "%s", c->platform);
    const size_t max = sizeof(p.platforms) / sizeof(p.platforms[0]);
    for (size_t k = 0; k < n && p.platforms_count < max; k++)
        snprintf(p.platforms[p.platforms_count++], sizeof(p.platforms[0]),
                 "%s", r[k].platform);
    p.online = p.platforms_count > 0;
    p.time = imgw_now_ms();

    if (c->n_nodes > 0) {
        /* The body as our JSON encoder writes it, once for every node. */
        ssize_t bl = imgw_codec_encode_json_body(
            im_CommandType_CMD_PRESENCE_PUSH, &p, cl->out, cl->out_cap);
        if (bl > 0)
            imgw_deliver_presence_remote(cl, (const char *const *)c->nodes,
                                         c->n_nodes, cl->out, (size_t)bl);
    }
    imgw_conn_ref_t *refs = NULL;
    ssize_t nr = imgw_watchmap_get(cl->node->watches, c->user, &refs);
    if (nr > 0) {
        size_t half = cl->out_cap / 2;
        ssize_t pl = imgw_codec_encode(IMGW_CODEC_PB,
                                       im_CommandType_CMD_PRESENCE_PUSH, 0,
                                       p.time, &p, cl->out + half, half);
        ssize_t jl = imgw_codec_encode(IMGW_CODEC_JSON,
                                       im_CommandType_CMD_PRESENCE_PUSH, 0,
                                       p.time, &p, cl->out, half);
        if (pl > 0 && jl > 0)
            imgw_deliver_raw_refs(cl, cl->out + half, (size_t)pl, cl->out,
                                  (size_t)jl, refs, (size_t)nr);
    }
    imgw_free(refs);
    pc_free(c);
}

/* Which nodes watch the user; then, if anyone does, its routes. */
static void
pc_watch_cb(int status, const imgw_store_route_t *r, size_t n, void *data)
{
    pc_t *c = data;
    imgw_core_loop_t *cl = imgw_core_loop_current();
    const char *self = cl->node->cfg->broker_id;
    size_t others = 0;
    for (size_t i = 0; status == 0 && i < n; i++)
        others += strcmp(r[i].broker_id, self) != 0;
    if (others > 0) {
        c->nodes = imgw_try_calloc(others, sizeof(*c->nodes));
        for (size_t i = 0; c->nodes && i < n; i++) {
            if (strcmp(r[i].broker_id, self) == 0)
                continue;
            if ((c->nodes[c->n_nodes] = imgw_try_strdup(r[i].broker_id)))
                c->n_nodes++;
        }
    }
    imgw_conn_ref_t *refs = NULL;
    ssize_t local = imgw_watchmap_get(cl->node->watches, c->user, &refs);
    imgw_free(refs);
    if (local <= 0 && c->n_nodes == 0) {
        pc_free(c); /* nobody watches: the common case, one read */
        return;
    }
    imgw_store_route_get(cl->store, c->user, pc_routes_cb, c);
}

void
imgw_presence_changed(imgw_core_loop_t *cl, const char *user,
                      const char *platform, int online)
{
    imgw_node_t *node = cl->node;
    if (node->mq == NULL) {
        /* One node: only the local watch map can have watchers. */
        imgw_conn_ref_t *refs = NULL;
        ssize_t local = imgw_watchmap_get(node->watches, user, &refs);
        imgw_free(refs);
        if (local <= 0)
            return;
    }
    pc_t *c = imgw_try_calloc(1, sizeof(*c));
    if (c == NULL)
        return;
    snprintf(c->user, sizeof(c->user), "%s", user);
    snprintf(c->platform, sizeof(c->platform), "%s", platform);
    IMGW_LOG_DEBUG("presence: %s %s on %s, telling its watchers", user,
                   online ? "logged in" : "logged out", platform);
    /* Issued after the caller's route write on the same store handle, so
     * both answers come after it. */
    if (node->mq == NULL)
        pc_watch_cb(0, NULL, 0, c);
    else
        imgw_store_watch_get(cl->store, user, pc_watch_cb, c);
}

/* A push from another node: {"imgw":"presence","data":{PresencePush}}. */
void
imgw_presence_remote(imgw_core_loop_t *cl, const cJSON *j)
{
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(j, "data");
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(data, "user_id");
    if (!cJSON_IsString(u) || !imgw_id_valid(u->valuestring))
        return;
    imgw_conn_ref_t *refs = NULL;
    ssize_t nr = imgw_watchmap_get(cl->node->watches, u->valuestring, &refs);
    if (nr > 0) {
        size_t half = cl->out_cap / 2;
        int64_t now = imgw_now_ms();
        ssize_t pl = imgw_codec_encode_from_json(
            IMGW_CODEC_PB, im_CommandType_CMD_PRESENCE_PUSH, data, now,
            cl->out + half, half);
        ssize_t jl = imgw_codec_encode_from_json(
            IMGW_CODEC_JSON, im_CommandType_CMD_PRESENCE_PUSH, data, now,
            cl->out, half);
        if (pl > 0 && jl > 0)
            imgw_deliver_raw_refs(cl, cl->out + half, (size_t)pl, cl->out,
                                  (size_t)jl, refs, (size_t)nr);
        else
            IMGW_LOG_WARN_RL("presence push from another node not "
                             "decodable");
    }
    imgw_free(refs);
}

/* ---- keeping the store's watcher entries alive -------------------------- */

static void
refresh_one(const char *user, void *arg)
{
    imgw_core_loop_t *cl = arg;
    imgw_store_watch_set(cl->store, user, cl->node->cfg->broker_id,
                         cl->node->cfg->route_ttl, NULL, NULL);
}

void
imgw_presence_tick(imgw_core_loop_t *cl, uint64_t now_ms)
{
    static uint64_t last_ms; /* loop 0 only */
    if (cl->node->mq == NULL)
        return;
    uint64_t every = (uint64_t)cl->node->cfg->route_ttl * 1000 / 3;
    if (last_ms != 0 && now_ms - last_ms < every)
        return;
    last_ms = now_ms;
    imgw_watchmap_foreach_user(cl->node->watches, refresh_one, cl);
}
