/*
 * api.c: the plain HTTP endpoints of protocol.md section 1: /healthz,
 * /readyz, /metrics, the admin API (/api/groups/{gid}, /api/push,
 * /api/users/{uid}), the
 * dev endpoints (/dev/token, /dev/group) and the browser demo page at GET /
 * (www/index.html, embedded at build time by tools/embed.py).
 *
 * Thread: the loop that owns the HTTP connection. Store-backed handlers
 * may finish later (redis): they return 1 and answer from the callback,
 * finding the connection again by ref.
 */
#include <dirent.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "json.h"
#include "alloc.h"
#include "err.h"
#include "idsyntax.h"
#include "log.h"
#include "metrics.h"
#include "mq.h"
#include "downlink.h"
#include "session.h"

#define JSON_CT "application/json"

static int
path_eq(const imgw_span_t *p, const char *s)
{
    size_t n = strlen(s);
    return p->len == n && memcmp(p->p, s, n) == 0;
}

static int
path_prefix(const imgw_span_t *p, const char *s)
{
    size_t n = strlen(s);
    return p->len >= n && memcmp(p->p, s, n) == 0;
}

static void
respond_text(imgw_conn_t *c, int status, const char *text)
{
    imgw_conn_http_respond(c, status, NULL, NULL, text, strlen(text), 1);
}

static void
respond_json(imgw_conn_t *c, int status, cJSON *j)
{
    char *s = cJSON_PrintUnformatted(j);
    if (s == NULL) {
        respond_text(c, 500, "out of memory\n");
        return;
    }
    imgw_conn_http_respond(c, status, JSON_CT, NULL, s, strlen(s), 1);
    imgw_free(s);
}

/* {"error": msg}: msg escaped by base's one JSON escaper, so a message
 * that quotes a rule ("body must be {"members": ...}") or an id stays JSON. */
static void
respond_error_json(imgw_conn_t *c, int status, const char *msg)
{
    static const char head[] = "{\"error\":\"", tail[] = "\"}";
    uint8_t buf[512];
    size_t ml = strlen(msg), h = sizeof(head) - 1, t = sizeof(tail) - 1;
    size_t need = imgw_json_escape(NULL, 0, (const uint8_t *)msg, ml);
    uint8_t *o = need + h + t <= sizeof(buf) ? buf : imgw_try_malloc(need + h + t);
    if (o == NULL) {
        respond_text(c, 500, "out of memory\n");
        return;
    }
    memcpy(o, head, h);
    imgw_json_escape(o + h, need, (const uint8_t *)msg, ml);
    memcpy(o + h + need, tail, t);
    imgw_conn_http_respond(c, status, JSON_CT, NULL, (const char *)o,
                           h + need + t, 1);
    if (o != buf)
        imgw_free(o);
}

static cJSON *
parse_body(const imgw_http_req_t *req)
{
    if (req->body_len == 0 ||
        !imgw_codec_json_prescan(req->body, req->body_len))
        return NULL;
    return cJSON_ParseWithLength((const char *)req->body, req->body_len);
}

/* ---- admin authentication ------------------------------------------------ */

/*
 * Failed admin authentications are counted per client address, in a small
 * table per loop (this thread's; no locks). Past auth.admin_fail_limit
 * failures in ADMIN_FAIL_WINDOW_MS an address gets 429 without its token
 * being looked at: answering a right guess with 200 while refusing wrong
 * ones would keep the oracle open. Each loop counts on its own, so a node
 * allows up to threads x limit guesses per window and address; with every
 * failure closing its connection that is a few hundred guesses a minute
 * against a secret of at least 32 bytes. When every slot is held by a live
 * address, the others share the last slot: spraying addresses cannot reset
 * a count, it only makes the strangers share one budget.
 */
#define ADMIN_FAIL_SLOTS 128
#define ADMIN_FAIL_WINDOW_MS 60000

typedef struct admin_fail_s {
    char addr[64];     /* imgw_conn_peer(); "" = free slot */
    uint64_t since_ms; /* loop time of the window's first failure */
    unsigned fails;
} admin_fail_t;

static _Thread_local admin_fail_t admin_fails[ADMIN_FAIL_SLOTS + 1];

/*
 * The slot counting addr at loop time now: its own, the shared overflow
 * slot, or NULL when it has none and one is free (create = 0). With
 * create = 1 a free slot is taken instead, so the result is never NULL.
 */
static admin_fail_t *
admin_fail_slot(const char *addr, uint64_t now, int create)
{
    admin_fail_t *spill = &admin_fails[ADMIN_FAIL_SLOTS];
    admin_fail_t *free_slot = NULL;

    for (int i = 0; i <= ADMIN_FAIL_SLOTS; i++) {
        admin_fail_t *f = &admin_fails[i];
        if (f->fails > 0 && now - f->since_ms >= ADMIN_FAIL_WINDOW_MS) {
            f->addr[0] = '\0';
            f->fails = 0;
        }
    }
    for (int i = 0; i < ADMIN_FAIL_SLOTS; i++) {
        admin_fail_t *f = &admin_fails[i];
        if (f->fails == 0) {
            if (free_slot == NULL)
                free_slot = f;
        } else if (strcmp(f->addr, addr) == 0) {
            return f;
        }
    }
    if (free_slot == NULL)
        return spill;
    if (!create)
        return NULL;
    snprintf(free_slot->addr, sizeof(free_slot->addr), "%s", addr);
    return free_slot;
}

/*
 * 0 when the admin bearer token matches; otherwise answers (401, or 429
 * past the failure budget) and returns -1. Both answers close the
 * connection, so every guess costs a new TCP (and TLS) handshake.
 */
static int
check_admin(imgw_core_loop_t *cl, imgw_conn_t *c, const imgw_http_req_t *req)
{
    const char *tok = cl->node->cfg->admin_token;
    unsigned limit = (unsigned)cl->node->cfg->admin_fail_limit;
    const imgw_span_t *a = imgw_http_header(req, "authorization");
    const char *addr = imgw_conn_peer(c);
    uint64_t now = imgw_loop_now_ms(cl->loop);
    admin_fail_t *f = admin_fail_slot(addr, now, 0);

    if (limit > 0 && f != NULL && f->fails >= limit) {
        char hdr[64];
        uint64_t left =
            (ADMIN_FAIL_WINDOW_MS - (now - f->since_ms) + 999) / 1000;
        snprintf(hdr, sizeof(hdr), "Retry-After: %llu\r\n",
                 (unsigned long long)left);
        static const char body[] =
            "{\"error\":\"too many failed admin authentications\"}";
        imgw_conn_http_respond(c, 429, JSON_CT, hdr, body, sizeof(body) - 1, 0);
        return -1;
    }
    /* Digests, not the bytes: the comparison takes the same time whatever
       the presented token's length and content. */
    if (a != NULL && a->len >= 7 && strncasecmp(a->p, "Bearer ", 7) == 0 &&
        imgw_jwt_secret_equal(a->p + 7, a->len - 7, tok, strlen(tok)))
        return 0;
    f = admin_fail_slot(addr, now, 1);
    if (f->fails == 0)
        f->since_ms = now;
    if (++f->fails == limit)
        IMGW_LOG_WARN("admin api: %u failed authentications from %s; "
                      "answering 429 for %d s",
                      f->fails,
                      f == &admin_fails[ADMIN_FAIL_SLOTS]
                          ? "addresses without a slot"
                          : addr,
                      ADMIN_FAIL_WINDOW_MS / 1000);
    imgw_conn_http_respond(c, 401, JSON_CT, "WWW-Authenticate: Bearer\r\n",
                           "{\"error\":\"unauthorized\"}", 24, 0);
    return -1;
}

/* ---- async store answers ---------------------------------------------------- */

typedef struct api_ctx_s {
    imgw_conn_ref_t ref;
    char gid[IMGW_JWT_MAX_USER];
} api_ctx_t;

/* The connection a callback answers, or NULL when it went away. */
static imgw_conn_t *
ctx_conn(api_ctx_t *x)
{
    imgw_core_loop_t *cl = imgw_core_loop_current();
    return imgw_loop_conn(cl->loop, x->ref);
}

static void
group_set_cb(int status, void *data)
{
    api_ctx_t *x = data;
    imgw_conn_t *c = ctx_conn(x);
    if (c != NULL) {
        if (status == 0)
            imgw_conn_http_respond(c, 200, JSON_CT, NULL, "{\"ok\":true}", 11,
                                   1);
        else if (status == IMGW_ETOOBIG || status == IMGW_EINVAL)
            respond_error_json(c, 400, "bad members");
        else
            respond_error_json(c, 503, "store unavailable");
    }
    imgw_free(x);
}

static void
group_del_cb(int status, void *data)
{
    api_ctx_t *x = data;
    imgw_conn_t *c = ctx_conn(x);
    if (c != NULL) {
        if (status == 0)
            imgw_conn_http_respond(c, 200, JSON_CT, NULL, "{\"ok\":true}", 11,
                                   1);
        else if (status == IMGW_ENOTFOUND)
            respond_error_json(c, 404, "no such group");
        else
            respond_error_json(c, 503, "store unavailable");
    }
    imgw_free(x);
}

static void
group_get_cb(int status, const char *const *members, size_t n, void *data)
{
    api_ctx_t *x = data;
    imgw_conn_t *c = ctx_conn(x);
    if (c != NULL) {
        if (status == 0) {
            cJSON *j = cJSON_CreateObject();
            cJSON_AddStringToObject(j, "group_id", x->gid);
            cJSON *arr = cJSON_AddArrayToObject(j, "members");
            for (size_t i = 0; i < n; i++)
                cJSON_AddItemToArray(arr, cJSON_CreateString(members[i]));
            respond_json(c, 200, j);
            cJSON_Delete(j);
        } else if (status == IMGW_ENOTFOUND) {
            respond_error_json(c, 404, "no such group");
        } else {
            respond_error_json(c, 503, "store unavailable");
        }
    }
    imgw_free(x);
}

/* The id rule (idsyntax.h) for every id /api and /dev take. */
static int
valid_id(const char *s, size_t n)
{
    return imgw_id_check(s, n) == NULL;
}

/* 400 {"error": "<what> <the rule that failed>"}. */
static void
respond_bad_id(imgw_conn_t *c, const char *what, const char *s, size_t n)
{
    char msg[128];
    snprintf(msg, sizeof(msg), "%s %s", what, imgw_id_check(s, n));
    respond_error_json(c, 400, msg);
}

static int
handle_groups(imgw_core_loop_t *cl, imgw_conn_t *c, const imgw_http_req_t *req)
{
    const char *gid = req->path.p + strlen("/api/groups/");
    size_t gl = req->path.len - strlen("/api/groups/");
    if (!valid_id(gid, gl)) {
        respond_bad_id(c, "group id", gid, gl);
        return 0;
    }
    api_ctx_t *x = imgw_try_calloc(1, sizeof(*x));
    if (x == NULL) {
        respond_error_json(c, 503, "out of memory");
        return 0;
    }
    x->ref = imgw_conn_ref(c);
    memcpy(x->gid, gid, gl);
    /* The store answers later, always (store.h), refusals included. */
    if (strcmp(req->method, "GET") == 0) {
        imgw_store_group_get(cl->store, x->gid, group_get_cb, x);
        return 1;
    }
    if (strcmp(req->method, "DELETE") == 0) {
        imgw_store_group_del(cl->store, x->gid, group_del_cb, x);
        return 1;
    }
    if (strcmp(req->method, "PUT") != 0) {
        imgw_free(x);
        imgw_conn_http_respond(c, 405, NULL, "Allow: GET, PUT, DELETE\r\n",
                               "method not allowed\n", 19, 1);
        return 0;
    }
    cJSON *j = parse_body(req);
    cJSON *m = j ? cJSON_GetObjectItemCaseSensitive(j, "members") : NULL;
    size_t n = cJSON_IsArray(m) ? (size_t)cJSON_GetArraySize(m) : 0;
    const char **members = NULL;
    const char *bad_member = NULL;
    int bad = !cJSON_IsArray(m) || n > IMGW_STORE_MAX_GROUP;
    if (!bad) {
        members = imgw_try_malloc((n ? n : 1) * sizeof(char *));
        bad = members == NULL;
        size_t i = 0;
        cJSON *it;
        cJSON_ArrayForEach(it, m)
        {
            if (bad)
                break;
            if (!cJSON_IsString(it))
                bad = 1;
            else if (!valid_id(it->valuestring, strlen(it->valuestring)))
                bad = 1, bad_member = it->valuestring;
            else
                members[i++] = it->valuestring;
        }
    }
    int r = 0;
    if (bad) {
        imgw_free(x);
        if (bad_member != NULL)
            respond_bad_id(c, "member id", bad_member, strlen(bad_member));
        else
            respond_error_json(c, 400, "body must be {\"members\":[user ids]}");
    } else {
        /* members point into j: the store copies them before it returns. */
        imgw_store_group_set(cl->store, x->gid, members, n, group_set_cb, x);
        r = 1;
    }
    imgw_free(members);
    cJSON_Delete(j);
    return r;
}

/* ---- users: presence -------------------------------------------------- */

/*
 * GET /api/users/{uid}: the user's routes (every node's logins, from the
 * store) and this node's own connections of the user:
 * {"user_id":U,"online":B,"platforms":[{"platform":P,"node":N}],
 *  "node":THIS_NODE,"connections":K}.
 */
static void
user_routes_cb(int status, const imgw_store_route_t *r, size_t n, void *data)
{
    api_ctx_t *x = data;
    imgw_conn_t *c = ctx_conn(x);
    if (c != NULL && status != 0) {
        respond_error_json(c, 503, "store unavailable");
    } else if (c != NULL) {
        imgw_core_loop_t *cl = imgw_core_loop_current();
        imgw_usermap_conn_t conns[IMGW_USERMAP_MAX_CONNS];
        size_t k = imgw_usermap_get(cl->node->users, x->gid, conns,
                                    IMGW_USERMAP_MAX_CONNS);
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "user_id", x->gid);
        cJSON_AddBoolToObject(j, "online", n > 0);
        cJSON *arr = cJSON_AddArrayToObject(j, "platforms");
        for (size_t i = 0; i < n; i++) {
            cJSON *e = cJSON_CreateObject();
            cJSON_AddStringToObject(e, "platform", r[i].platform);
            cJSON_AddStringToObject(e, "node", r[i].broker_id);
            cJSON_AddItemToArray(arr, e);
        }
        cJSON_AddStringToObject(j, "node", cl->node->cfg->broker_id);
        cJSON_AddNumberToObject(j, "connections", (double)k);
        respond_json(c, 200, j);
        cJSON_Delete(j);
    }
    imgw_free(x);
}

static int
handle_users(imgw_core_loop_t *cl, imgw_conn_t *c, const imgw_http_req_t *req)
{
    const char *uid = req->path.p + strlen("/api/users/");
    size_t ul = req->path.len - strlen("/api/users/");
    if (strcmp(req->method, "GET") != 0) {
        imgw_conn_http_respond(c, 405, NULL, "Allow: GET\r\n",
                               "method not allowed\n", 19, 1);
        return 0;
    }
    if (!valid_id(uid, ul)) {
        respond_bad_id(c, "user id", uid, ul);
        return 0;
    }
    api_ctx_t *x = imgw_try_calloc(1, sizeof(*x));
    if (x == NULL) {
        respond_error_json(c, 503, "out of memory");
        return 0;
    }
    x->ref = imgw_conn_ref(c);
    memcpy(x->gid, uid, ul); /* gid: the id the answer is about */
    imgw_store_route_get(cl->store, x->gid, user_routes_cb, x);
    return 1;
}

/* ---- push ---------------------------------------------------------------- */

static int
handle_push(imgw_core_loop_t *cl, imgw_conn_t *c, const imgw_http_req_t *req)
{
    if (strcmp(req->method, "POST") != 0) {
        imgw_conn_http_respond(c, 405, NULL, "Allow: POST\r\n",
                               "method not allowed\n", 19, 1);
        return 0;
    }
    cJSON *j = parse_body(req);
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        respond_error_json(c, 400, "body must be a JSON object");
        return 0;
    }
    size_t targets = 0;
    const char *why = NULL;
    int st = imgw_downlink_push(cl, j, &targets, &why);
    cJSON_Delete(j);
    if (st != 200) {
        respond_error_json(c, st, why);
        return 0;
    }
    char buf[64];
    int n = snprintf(buf, sizeof(buf), "{\"ok\":true,\"connections\":%zu}",
                     targets);
    imgw_conn_http_respond(c, 200, JSON_CT, NULL, buf, (size_t)n, 1);
    return 0;
}

/* ---- dev tokens ------------------------------------------------------------- */

static int
handle_dev_token(imgw_core_loop_t *cl, imgw_conn_t *c,
                 const imgw_http_req_t *req)
{
    const imgw_config_t *cfg = cl->node->cfg;
    char user[IMGW_JWT_MAX_USER];
    char tok[1024];
    if (!cfg->dev_tokens || cfg->jwt_secret[0] == '\0') {
        respond_text(c, 404, "not found\n");
        return 0;
    }
    int qr = imgw_http_query_param(req, "user", user, sizeof(user));
    if (qr != 0) {
        respond_error_json(c, 400,
                           qr == -1 ? "user required: GET /dev/token?user=<id>"
                                    : "user is too long (at most 127 bytes)");
        return 0;
    }
    if (!valid_id(user, strlen(user))) {
        respond_bad_id(c, "user", user, strlen(user));
        return 0;
    }
    int n = imgw_jwt_sign_hs256(cfg->jwt_secret, user, imgw_now_ms() / 1000,
                                86400, tok, sizeof(tok));
    if (n < 0) {
        respond_error_json(c, 500, "cannot sign");
        return 0;
    }
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "user", user);
    cJSON_AddStringToObject(j, "token", tok);
    respond_json(c, 200, j);
    cJSON_Delete(j);
    return 0;
}

/*
 * POST /dev/group?gid=G&members=a,b,c: the admin group PUT for the browser
 * demo, only when dev tokens are enabled (same store call, same answers).
 */
static int
handle_dev_group(imgw_core_loop_t *cl, imgw_conn_t *c,
                 const imgw_http_req_t *req)
{
    const imgw_config_t *cfg = cl->node->cfg;
    char gid[IMGW_JWT_MAX_USER];
    char list[8192];
    const char *members[64];
    size_t n = 0;
    if (!cfg->dev_tokens || cfg->jwt_secret[0] == '\0') {
        respond_text(c, 404, "not found\n");
        return 0;
    }
    if (strcmp(req->method, "POST") != 0) {
        imgw_conn_http_respond(c, 405, NULL, "Allow: POST\r\n",
                               "method not allowed\n", 19, 1);
        return 0;
    }
    if (imgw_http_query_param(req, "gid", gid, sizeof(gid)) != 0 ||
        !valid_id(gid, strlen(gid))) {
        respond_error_json(c, 400, "gid required");
        return 0;
    }
    if (imgw_http_query_param(req, "members", list, sizeof(list)) != 0) {
        respond_error_json(c, 400, "members required");
        return 0;
    }
    for (char *save = NULL, *m = strtok_r(list, ",", &save); m != NULL;
         m = strtok_r(NULL, ",", &save)) {
        if (n == sizeof(members) / sizeof(members[0]) ||
            !valid_id(m, strlen(m))) {
            respond_error_json(c, 400, "bad members");
            return 0;
        }
        members[n++] = m;
    }
    if (n == 0) {
        respond_error_json(c, 400, "members required");
        return 0;
    }
    api_ctx_t *x = imgw_try_calloc(1, sizeof(*x));
    if (x == NULL) {
        respond_error_json(c, 503, "out of memory");
        return 0;
    }
    x->ref = imgw_conn_ref(c);
    memcpy(x->gid, gid, strlen(gid) + 1);
    imgw_store_group_set(cl->store, x->gid, members, n, group_set_cb, x);
    return 1;
}

/* ---- browser demo page ---------------------------------------------------------- */

extern const unsigned char imgw_www_index[];
extern const size_t imgw_www_index_len;

static int
handle_index(imgw_conn_t *c, const imgw_http_req_t *req)
{
    if (strcmp(req->method, "GET") != 0) {
        imgw_conn_http_respond(c, 405, NULL, "Allow: GET\r\n",
                               "method not allowed\n", 19, 1);
        return 0;
    }
    imgw_conn_http_respond(
        c, 200, "text/html; charset=utf-8",
        "Cache-Control: no-cache\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        "X-Frame-Options: DENY\r\n"
        "Referrer-Policy: no-referrer\r\n"
        "Content-Security-Policy: default-src 'none'; "
        "script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self' ws: wss:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'\r\n",
        imgw_www_index, imgw_www_index_len, 1);
    return 0;
}

/* ---- dispatch ---------------------------------------------------------------- */

int
imgw_api_handle(imgw_core_loop_t *cl, imgw_conn_t *c,
                const imgw_http_req_t *req)
{
    const imgw_span_t *p = &req->path;
    int draining = imgw_net_draining(cl->node->net);
    if (path_eq(p, "/healthz")) {
        if (draining)
            respond_text(c, 503, "draining\n");
        else
            respond_text(c, 200, "ok");
        return 0;
    }
    if (path_eq(p, "/readyz")) {
        if (draining)
            respond_text(c, 503, "draining\n");
        else if (!imgw_store_loop_ready(cl->store) ||
                 !imgw_store_ready(cl->node->store, cl->node->n_loops))
            respond_text(c, 503, "store unavailable\n");
        else if (cl->node->mq != NULL && !imgw_mq_connected(cl->node->mq))
            respond_text(c, 503, "broker unavailable\n");
        else
            respond_text(c, 200, "ready\n");
        return 0;
    }
    if (path_eq(p, "/metrics")) {
        size_t len = 0;
        char *body = imgw_metrics_render(cl->node, &len);
        if (body == NULL) {
            respond_text(c, 500, "out of memory\n");
            return 0;
        }
        imgw_conn_http_respond(c, 200, "text/plain; version=0.0.4", NULL,
                               body, len, 1);
        imgw_free(body);
        return 0;
    }
    if (path_eq(p, "/dev/token"))
        return handle_dev_token(cl, c, req);
    if (path_eq(p, "/dev/group"))
        return handle_dev_group(cl, c, req);
    if (path_eq(p, "/") || path_eq(p, "/index.html"))
        return handle_index(c, req);
    if (path_prefix(p, "/api/")) {
        if (cl->node->cfg->admin_token[0] == '\0') {
            respond_text(c, 404, "not found\n");
            return 0;
        }
        if (check_admin(cl, c, req) != 0)
            return 0;
        if (path_prefix(p, "/api/groups/"))
            return handle_groups(cl, c, req);
        if (path_eq(p, "/api/push"))
            return handle_push(cl, c, req);
        if (path_prefix(p, "/api/users/"))
            return handle_users(cl, c, req);
    }
    respond_text(c, 404, "not found\n");
    return 0;
}
