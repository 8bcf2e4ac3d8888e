/*
 * api.c: the plain HTTP endpoints of protocol.md section 1: /healthz,
 * /readyz, /metrics, the admin API (/api/groups/{gid}, /api/push), the
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

#include "alloc.h"
#include "err.h"
#include "log.h"
#include "metrics.h"
#include "../mq/mq.h"
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
    free(s);
}

static void
respond_error_json(imgw_conn_t *c, int status, const char *msg)
{
    char buf[256];
    int n = snprintf(buf, sizeof(buf), "{\"error\":\"%s\"}", msg);
    imgw_conn_http_respond(c, status, JSON_CT, NULL, buf, (size_t)n, 1);
}

static cJSON *
parse_body(const imgw_http_req_t *req)
{
    if (req->body_len == 0 ||
        !imgw_codec_json_prescan(req->body, req->body_len))
        return NULL;
    return cJSON_ParseWithLength((const char *)req->body, req->body_len);
}

/* 0 when the admin bearer token matches; otherwise answers and returns -1. */
static int
check_admin(imgw_core_loop_t *cl, imgw_conn_t *c, const imgw_http_req_t *req)
{
    const char *tok = cl->node->cfg->admin_token;
    const imgw_span_t *a = imgw_http_header(req, "authorization");
    size_t tl = strlen(tok);
    int ok = a != NULL && a->len == tl + 7 &&
             strncasecmp(a->p, "Bearer ", 7) == 0;
    /* Constant time over the token bytes. */
    unsigned diff = ok ? 0 : 1;
    for (size_t i = 0; ok && i < tl; i++)
        diff |= (unsigned)(a->p[7 + i] ^ tok[i]);
    if (diff != 0) {
        imgw_conn_http_respond(c, 401, JSON_CT,
                               "WWW-Authenticate: Bearer\r\n",
                               "{\"error\":\"unauthorized\"}", 24, 1);
        return -1;
    }
    return 0;
}

/* ---- async store answers ---------------------------------------------------- */

typedef struct api_ctx_s {
    imgw_conn_ref_t ref;
    char gid[IMGW_JWT_MAX_USER];
} api_ctx_t;

static _Thread_local api_ctx_t *sync_pending;
static _Thread_local int sync_done;

/* The connection a callback answers, or NULL when it went away. */
static imgw_conn_t *
ctx_conn(api_ctx_t *x)
{
    imgw_core_loop_t *cl = imgw_core_loop_current();
    if (x == sync_pending)
        sync_done = 1;
    return imgw_loop_conn(cl->loop, x->ref);
}

/* Runs a store call; returns 0 when it answered already, 1 when later. */
static int
run_async(api_ctx_t *x, int r, void (*fail)(int, void *))
{
    if (r != 0) {
        fail(r, x);
        return 0;
    }
    int was = sync_done;
    sync_pending = NULL;
    sync_done = 0;
    return was ? 0 : 1;
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
    free(x);
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
    free(x);
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
    free(x);
}

static void
group_get_fail(int r, void *data)
{
    group_get_cb(r, NULL, 0, data);
}

static int
valid_id(const char *s, size_t n)
{
    if (n == 0 || n >= IMGW_JWT_MAX_USER)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x21 || s[i] == '/' || s[i] == 0x7f)
            return 0;
    return 1;
}

static int
handle_groups(imgw_core_loop_t *cl, imgw_conn_t *c, const imgw_http_req_t *req)
{
    const char *gid = req->path.p + strlen("/api/groups/");
    size_t gl = req->path.len - strlen("/api/groups/");
    if (!valid_id(gid, gl)) {
        respond_error_json(c, 400, "bad group id");
        return 0;
    }
    api_ctx_t *x = imgw_calloc(1, sizeof(*x));
    if (x == NULL) {
        respond_error_json(c, 503, "out of memory");
        return 0;
    }
    x->ref = imgw_conn_ref(c);
    memcpy(x->gid, gid, gl);
    sync_pending = x;
    sync_done = 0;
    if (strcmp(req->method, "GET") == 0)
        return run_async(x, imgw_store_group_get(cl->store, x->gid,
                                                 group_get_cb, x),
                         group_get_fail);
    if (strcmp(req->method, "DELETE") == 0)
        return run_async(x, imgw_store_group_del(cl->store, x->gid,
                                                 group_del_cb, x),
                         group_del_cb);
    if (strcmp(req->method, "PUT") != 0) {
        sync_pending = NULL;
        free(x);
        imgw_conn_http_respond(c, 405, NULL, "Allow: GET, PUT, DELETE\r\n",
                               "method not allowed\n", 19, 1);
        return 0;
    }
    cJSON *j = parse_body(req);
    cJSON *m = j ? cJSON_GetObjectItemCaseSensitive(j, "members") : NULL;
    size_t n = cJSON_IsArray(m) ? (size_t)cJSON_GetArraySize(m) : 0;
    const char **members = NULL;
    int bad = !cJSON_IsArray(m) || n > IMGW_STORE_MAX_GROUP;
    if (!bad) {
        members = imgw_malloc((n ? n : 1) * sizeof(char *));
        bad = members == NULL;
        size_t i = 0;
        cJSON *it;
        cJSON_ArrayForEach(it, m)
        {
            if (bad)
                break;
            if (!cJSON_IsString(it) ||
                !valid_id(it->valuestring, strlen(it->valuestring)))
                bad = 1;
            else
                members[i++] = it->valuestring;
        }
    }
    int r = 0;
    if (bad) {
        sync_pending = NULL;
        free(x);
        respond_error_json(c, 400, "body must be {\"members\":[user ids]}");
    } else {
        r = run_async(x, imgw_store_group_set(cl->store, x->gid, members, n,
                                              group_set_cb, x),
                      group_set_cb);
    }
    free(members);
    cJSON_Delete(j);
    return r;
}

/* ---- push ---------------------------------------------------------------- */

static int
cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/*
 * The downlink body {code, ids, data, broadcast} (protocol.md section 8):
 * encoded once per codec, delivered to the users' connections on this node.
 * Returns the HTTP status and fills *targets.
 */
int
imgw_api_push_json(imgw_core_loop_t *cl, const cJSON *j, size_t *targets,
                   const char **why)
{
    const cJSON *code = cJSON_GetObjectItemCaseSensitive(j, "code");
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(j, "ids");
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(j, "data");
    const cJSON *bc = cJSON_GetObjectItemCaseSensitive(j, "broadcast");
    int broadcast = cJSON_IsTrue(bc);
    *targets = 0;
    if (!cJSON_IsNumber(code) || code->valuedouble != (double)code->valueint) {
        *why = "code must be a command number";
        return 400;
    }
    if (data != NULL && !cJSON_IsObject(data)) {
        *why = "data must be an object";
        return 400;
    }
    if (!broadcast && !cJSON_IsArray(ids)) {
        *why = "ids must be an array of user ids";
        return 400;
    }
    if (bc != NULL && !cJSON_IsBool(bc)) {
        *why = "broadcast must be a boolean";
        return 400;
    }
    size_t n = broadcast ? 0 : (size_t)cJSON_GetArraySize(ids);
    if (n > 10000) {
        *why = "too many ids";
        return 400;
    }
    cJSON *empty = NULL;
    if (data == NULL)
        data = empty = cJSON_CreateObject();
    size_t half = cl->out_cap / 2;
    int64_t now = imgw_now_ms();
    ssize_t pl = imgw_codec_encode_from_json(IMGW_CODEC_PB, code->valueint,
                                             data, now, cl->out + half, half);
    ssize_t jl = pl < 0 ? pl
                        : imgw_codec_encode_from_json(IMGW_CODEC_JSON,
                                                      code->valueint, data,
                                                      now, cl->out, half);
    cJSON_Delete(empty);
    if (pl < 0 || jl < 0) {
        ssize_t e = pl < 0 ? pl : jl;
        *why = e == IMGW_EUNKNOWNCMD ? "unknown or client-side code"
               : e == IMGW_ETOOBIG   ? "data too large"
               : e == IMGW_EUTF8     ? "data has a string that is not UTF-8"
                                     : "data does not fit the command's body";
        return 400;
    }
    const char **users = NULL;
    if (!broadcast) {
        users = imgw_malloc((n ? n : 1) * sizeof(char *));
        if (users == NULL) {
            *why = "out of memory";
            return 503;
        }
        size_t i = 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, ids)
        {
            if (!cJSON_IsString(it) || it->valuestring[0] == '\0') {
                free(users);
                *why = "ids must be non-empty strings";
                return 400;
            }
            users[i++] = it->valuestring;
        }
        /* ids is a set: a user listed twice gets the frame once. */
        qsort(users, n, sizeof(*users), cmp_str);
        size_t k = 0;
        for (i = 0; i < n; i++)
            if (k == 0 || strcmp(users[k - 1], users[i]) != 0)
                users[k++] = users[i];
        n = k;
    }
    *targets = imgw_deliver_raw(cl, cl->out + half, (size_t)pl, cl->out,
                                (size_t)jl, users, n);
    free(users);
    return 200;
}

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
    int st = imgw_api_push_json(cl, j, &targets, &why);
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
    if (imgw_http_query_param(req, "user", user, sizeof(user)) != 0 ||
        !valid_id(user, strlen(user))) {
        respond_error_json(c, 400, "user required");
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
    api_ctx_t *x = imgw_calloc(1, sizeof(*x));
    if (x == NULL) {
        respond_error_json(c, 503, "out of memory");
        return 0;
    }
    x->ref = imgw_conn_ref(c);
    memcpy(x->gid, gid, strlen(gid) + 1);
    sync_pending = x;
    sync_done = 0;
    return run_async(x, imgw_store_group_set(cl->store, x->gid, members, n,
                                             group_set_cb, x),
                     group_set_cb);
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
        else if (!imgw_store_loop_ready(cl->store))
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
        free(body);
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
    }
    respond_text(c, 404, "not found\n");
    return 0;
}
