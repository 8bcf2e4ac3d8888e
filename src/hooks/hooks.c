/*
 * hooks.c: the business hooks (hooks.h, docs/hooks.md).
 *
 * Thread: one loop per imgw_hooks_loop_t. Nothing is shared between loops
 * except the read-only config; /metrics reads the per-loop counters
 * without locks, as it does core's own (only their loop writes them).
 *
 * Before-send. Each send of a connection is an item on that connection's
 * chain (a FIFO hung on the session). An item is first looked up in the
 * store's dedupe table (a resend of a stored message is answered from
 * there, the hook is not asked twice), then POSTed to the hook; calls of
 * one connection run concurrently, but items leave the chain only from its
 * head, so a connection's messages are stored, and answered, in the order
 * they were sent, whatever order the hook answers in. A session that
 * closes leaves its chain behind; the items finish (and are stored when
 * allowed) without it, and the last one frees the chain. Calls in flight
 * per loop are bounded by hooks.max_inflight: beyond it a send is refused
 * with ERR_SERVER_BUSY at once (nothing of it was stored).
 *
 * Events. One bounded queue per loop of ready JSON objects; a timer posts
 * up to hooks.batch of them every hooks.flush_ms, one POST at a time per
 * loop. A POST that fails keeps its events at the head of the queue and
 * backs off (doubling from flush_ms to hooks.retry_max_ms); so delivery is
 * at least once, and each event carries an id to dedupe on. A full queue
 * drops the new event and counts it: messaging never waits for the hook.
 */
#include "hooks.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <mbedtls/base64.h>
#include <mbedtls/md.h>

#include "utf8.h"
#include "alloc.h"
#include "buf.h"
#include "err.h"
#include "httpc.h"
#include "list.h"
#include "log.h"
#include "stat.h"

#define HOOK_LAT_BUCKETS 12
static const double hook_lat_le[HOOK_LAT_BUCKETS - 1] = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5};

/* Why a before-send call did not give a usable answer (metrics label). */
enum {
    HF_TIMEOUT = 0, /* hooks.timeout_ms passed */
    HF_CONNECT,     /* connect, TLS, protocol */
    HF_STATUS,      /* an HTTP status other than 2xx */
    HF_ANSWER,      /* not the JSON object of docs/hooks.md */
    HF_TOO_BIG,     /* body over hooks.max_response_bytes */
    HF_N
};
static const char *const hf_name[HF_N] = {"timeout", "connect", "status",
                                          "bad_answer", "too_big"};

enum { EV_OFFLINE = 1, EV_ONLINE = 2, EV_OFFLINE_USER = 4 };

/* Written by the owning loop only, read by the /metrics scrape on another
 * thread: single-writer atomics like every other counter (base/stat.h). */
typedef struct hooks_stats_s {
    imgw_stat_t bs_calls;
    imgw_stat_t bs_allowed;
    imgw_stat_t bs_rewritten;
    imgw_stat_t bs_denied;
    imgw_stat_t bs_failed[HF_N];
    imgw_stat_t bs_fail_open; /* failures allowed by failure = open */
    imgw_stat_t bs_busy;      /* refused: max_inflight reached */
    imgw_stat_t bs_dup;       /* resends answered from the store */
    imgw_stat_t bs_lat_hist[HOOK_LAT_BUCKETS];
    imgw_stat_t bs_lat_us_sum;
    imgw_stat_t bs_inflight; /* gauge */
    imgw_stat_t ev_posts;
    imgw_stat_t ev_post_failures;
    imgw_stat_t ev_sent;
    imgw_stat_t ev_dropped;
    imgw_stat_t ev_queued; /* gauge */
} hooks_stats_t;

typedef struct hook_send_s hook_send_t;

struct imgw_hooks_chain_s {
    hook_send_t *head, *tail;
    int orphan;   /* the session is gone; freed once empty */
    int draining; /* inside chain_drain: only it may free the chain */
};

enum { HS_LOOKUP = 0, HS_CALLING, HS_READY };
enum { HV_ALLOW = 0, HV_DENY, HV_FAIL, HV_DUP };

struct hook_send_s {
    hook_send_t *next;               /* chain order */
    imgw_list_t all;                 /* in hl->all: every item */
    imgw_hooks_loop_t *hl;
    imgw_hooks_chain_t *chain;
    imgw_httpc_req_t *req;
    imgw_conn_ref_t ref;
    uint32_t sequence;
    int state, verdict, fail_reason;
    int code;
    char msg[128];
    uint64_t dup_id;
    int64_t dup_seq;
    char conv[264];
    char platform[IMGW_USERMAP_PLATFORM];
    uint8_t *content; /* owned; the hook may replace it */
    size_t content_len;
    im_SendMessageRequest q; /* the request (extra may be replaced) */
};

struct imgw_hooks_loop_s {
    imgw_core_loop_t *cl;
    const imgw_config_t *cfg;
    imgw_httpc_t *http;
    int stopping;
    int lookups; /* dedupe lookups in the store: hl lives until 0 */
    int route_lookups;
    unsigned events; /* EV_* chosen by hooks.events */
    size_t inflight; /* before-send items past the busy check */
    imgw_list_t all;  /* every item not yet finished, newest first */
    const imgw_hooks_send_ops_t *ops; /* msg.c's, from before_send */
    /* events */
    char **q;        /* ring of JSON objects, cap hooks.queue_max */
    size_t q_cap, q_head, q_len;
    size_t q_posting; /* events of the POST in flight (from head) */
    imgw_httpc_req_t *ev_req;
    uv_timer_t timer;
    int timer_open;
    uint64_t backoff_ms, next_post_ms;
    uint64_t ev_seq;
    int64_t start_ms;
    im_PushMessage pm; /* decode scratch for message.offline */
    hooks_stats_t st;
};

/* ---- helpers ------------------------------------------------------------- */

static uint64_t
hooks_now_ms(imgw_hooks_loop_t *hl)
{
    return imgw_loop_now_ms(hl->cl->loop);
}

/* Appends "X-Imgw-Timestamp" and "X-Imgw-Signature" lines for body. */
static int
hooks_sign(const imgw_config_t *cfg, const char *body, size_t len,
           char ts_line[48], char sig_line[96])
{
    char ts[24];
    int tl = snprintf(ts, sizeof(ts), "%" PRId64, imgw_now_ms() / 1000);
    unsigned char mac[32];
    mbedtls_md_context_t md;
    const mbedtls_md_info_t *info = mbedtls_md_info_from_type(MBEDTLS_MD_SHA256);
    mbedtls_md_init(&md);
    int r = mbedtls_md_setup(&md, info, 1);
    if (r == 0)
        r = mbedtls_md_hmac_starts(&md, (const unsigned char *)cfg->hooks_secret,
                                   strlen(cfg->hooks_secret));
    if (r == 0)
        r = mbedtls_md_hmac_update(&md, (const unsigned char *)ts, (size_t)tl);
    if (r == 0)
        r = mbedtls_md_hmac_update(&md, (const unsigned char *)".", 1);
    if (r == 0)
        r = mbedtls_md_hmac_update(&md, (const unsigned char *)body, len);
    if (r == 0)
        r = mbedtls_md_hmac_finish(&md, mac);
    mbedtls_md_free(&md);
    if (r != 0)
        return IMGW_ENOMEM;
    static const char hex[] = "0123456789abcdef";
    char h[65];
    for (int i = 0; i < 32; i++) {
        h[2 * i] = hex[mac[i] >> 4];
        h[2 * i + 1] = hex[mac[i] & 15];
    }
    h[64] = '\0';
    snprintf(ts_line, 48, "X-Imgw-Timestamp: %s", ts);
    snprintf(sig_line, 96, "X-Imgw-Signature: %s", h);
    return 0;
}

/* POSTs a JSON body to url, signed. */
static int
hooks_post(imgw_hooks_loop_t *hl, const char *url, const char *body,
           uint64_t timeout_ms, imgw_httpc_cb cb, void *arg,
           imgw_httpc_req_t **out)
{
    char ts[48], sig[96], node[160];
    if (hooks_sign(hl->cfg, body, strlen(body), ts, sig) != 0)
        return IMGW_ENOMEM;
    snprintf(node, sizeof(node), "X-Imgw-Node: %s", hl->cfg->broker_id);
    const char *hdrs[3] = {ts, sig, node};
    imgw_httpc_opts_t o = {
        .method = "POST",
        .url = url,
        .content_type = "application/json",
        .body = body,
        .body_len = strlen(body),
        .headers = hdrs,
        .n_headers = 3,
        .timeout_ms = timeout_ms,
        .max_response = (size_t)hl->cfg->hooks_max_response_bytes,
    };
    return imgw_httpc_request(hl->http, &o, cb, arg, out);
}

/* Adds content to obj: "content" when it is UTF-8, else "content_base64". */
static int
hooks_add_content(cJSON *obj, const char *key, const uint8_t *p, size_t n)
{
    if (imgw_utf8_valid(p, n)) {
        char *s = imgw_try_malloc(n + 1);
        if (s == NULL)
            return -1;
        memcpy(s, p, n);
        s[n] = '\0';
        cJSON *v = cJSON_AddStringToObject(obj, key, s);
        imgw_free(s);
        return v ? 0 : -1;
    }
    size_t olen = 0;
    mbedtls_base64_encode(NULL, 0, &olen, p, n);
    unsigned char *b = imgw_try_malloc(olen + 1);
    if (b == NULL)
        return -1;
    int r = mbedtls_base64_encode(b, olen + 1, &olen, p, n);
    b[olen] = '\0';
    char k[48];
    snprintf(k, sizeof(k), "%s_base64", key);
    cJSON *v = r == 0 ? cJSON_AddStringToObject(obj, k, (char *)b) : NULL;
    imgw_free(b);
    return v ? 0 : -1;
}

/* The longest prefix of p[0..n) within max bytes that ends on a character
 * boundary (p is UTF-8). */
static size_t
utf8_cut(const uint8_t *p, size_t n, size_t max)
{
    if (n <= max)
        return n;
    size_t k = max;
    while (k > 0 && (p[k] & 0xC0) == 0x80)
        k--;
    return k;
}

/* ---- before-send: chain ---------------------------------------------------- */

static void
send_free(hook_send_t *x)
{
    imgw_list_remove(&x->all);
    imgw_free(x->content);
    imgw_free(x);
}

static void chain_drain(imgw_hooks_chain_t *ch);

/* Completes one item that reached the head of its chain. */
static void
send_finish(hook_send_t *x)
{
    imgw_hooks_loop_t *hl = x->hl;
    imgw_core_loop_t *cl = hl->cl;
    hl->inflight--;
    hl->st.bs_inflight = hl->inflight;
    int verdict = x->verdict;
    if (verdict == HV_FAIL && strcmp(hl->cfg->hooks_failure, "open") == 0) {
        hl->st.bs_fail_open++;
        verdict = HV_ALLOW;
    }
    if (hl->stopping && verdict == HV_ALLOW) {
        verdict = HV_FAIL; /* the store is closing */
    }
    switch (verdict) {
    case HV_ALLOW: {
        imgw_slice_t c = {x->content, x->content_len};
        hl->ops->commit(cl, x->ref, x->sequence, &x->q, c, x->conv);
        break;
    }
    case HV_DUP:
        imgw_stat_inc(&cl->st.msgs_dup);
        hl->ops->answer(cl, x->ref, x->sequence, 0, NULL, x->dup_id,
                             x->dup_seq, imgw_id_time_ms(x->dup_id));
        break;
    case HV_DENY:
        hl->ops->answer(cl, x->ref, x->sequence, x->code,
                             x->msg[0] ? x->msg : "denied by the business",
                             0, 0, 0);
        break;
    default:
        hl->ops->answer(cl, x->ref, x->sequence,
                             im_ErrorCode_ERR_SERVER_BUSY,
                             "before-send hook unavailable", 0, 0, 0);
        break;
    }
}

/* Takes finished items off the head, in order. */
static void
chain_drain(imgw_hooks_chain_t *ch)
{
    if (ch->draining)
        return; /* the outer drain goes on from the new head */
    /* Answering can close the connection (a write error), and its close
     * may orphan this chain under us: draining keeps it alive. */
    ch->draining = 1;
    while (ch->head != NULL && ch->head->state == HS_READY) {
        hook_send_t *x = ch->head;
        ch->head = x->next;
        if (ch->head == NULL)
            ch->tail = NULL;
        send_finish(x);
        send_free(x);
    }
    ch->draining = 0;
    if (ch->orphan && ch->head == NULL)
        imgw_free(ch);
}

static void
send_ready(hook_send_t *x, int verdict)
{
    x->state = HS_READY;
    x->verdict = verdict;
    chain_drain(x->chain);
}

static void
send_fail(hook_send_t *x, int reason, const char *detail)
{
    imgw_hooks_loop_t *hl = x->hl;
    hl->st.bs_failed[reason]++;
    IMGW_LOG_WARN_RL("hooks: before-send call failed (%s): %s; failure = %s",
                     hf_name[reason], detail, hl->cfg->hooks_failure);
    send_ready(x, HV_FAIL);
}

/* ---- before-send: the answer ---------------------------------------------- */

/* A JSON string that is UTF-8 and shorter than cap (with the NUL). */
static const char *
json_str(const cJSON *v, size_t cap)
{
    if (!cJSON_IsString(v) || v->valuestring == NULL)
        return NULL;
    size_t n = strlen(v->valuestring);
    if (n >= cap || !imgw_utf8_valid((const uint8_t *)v->valuestring, n))
        return NULL;
    return v->valuestring;
}

/*
 * Reads {"allow": bool, "error_code": N, "error_msg": "...", "content":
 * "...", "extra": {...}} into x. Returns 0, or -1 for an answer outside
 * that shape (then the failure rule applies).
 */
static int
send_parse(hook_send_t *x, const char *body, size_t len)
{
    const imgw_config_t *cfg = x->hl->cfg;
    if (!imgw_codec_json_prescan((const uint8_t *)body, len))
        return -1;
    cJSON *root = cJSON_ParseWithLength(body, len);
    if (root == NULL || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return -1;
    }
    int rc = -1;
    const cJSON *allow = cJSON_GetObjectItemCaseSensitive(root, "allow");
    if (!cJSON_IsBool(allow))
        goto out;
    if (!cJSON_IsTrue(allow)) {
        int64_t code = im_ErrorCode_ERR_PERMISSION_DENIED;
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(root, "error_code");
        if (c != NULL && !cJSON_IsNull(c) &&
            imgw_codec_json_int(c, 0, INT32_MAX, &code) != 0)
            goto out;
        if (code == 0)
            code = im_ErrorCode_ERR_PERMISSION_DENIED;
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(root, "error_msg");
        if (m != NULL && !cJSON_IsNull(m)) {
            if (!cJSON_IsString(m) ||
                !imgw_utf8_valid((const uint8_t *)m->valuestring,
                                 strlen(m->valuestring)))
                goto out;
            size_t n = utf8_cut((const uint8_t *)m->valuestring,
                                strlen(m->valuestring), sizeof(x->msg) - 1);
            memcpy(x->msg, m->valuestring, n);
            x->msg[n] = '\0';
        }
        x->code = (int)code;
        x->verdict = HV_DENY;
        rc = 0;
        goto out;
    }
    x->verdict = HV_ALLOW;
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(root, "content");
    const cJSON *extra = cJSON_GetObjectItemCaseSensitive(root, "extra");
    int rewritten = 0;
    if (content != NULL && !cJSON_IsNull(content)) {
        if (!cJSON_IsString(content))
            goto out;
        size_t n = strlen(content->valuestring);
        if (n > (size_t)cfg->max_message_bytes ||
            !imgw_utf8_valid((const uint8_t *)content->valuestring, n))
            goto out;
        uint8_t *c = imgw_try_malloc(n ? n : 1);
        if (c == NULL)
            goto out;
        memcpy(c, content->valuestring, n);
        imgw_free(x->content);
        x->content = c;
        x->content_len = n;
        rewritten = 1;
    }
    if (extra != NULL && !cJSON_IsNull(extra)) {
        if (!cJSON_IsObject(extra))
            goto out;
        size_t max = sizeof(x->q.extra) / sizeof(x->q.extra[0]);
        pb_size_t k = 0;
        for (const cJSON *e = extra->child; e != NULL; e = e->next) {
            const char *v = json_str(e, sizeof(x->q.extra[0].value));
            if (k >= max || e->string == NULL || v == NULL ||
                strlen(e->string) >= sizeof(x->q.extra[0].key) ||
                !imgw_utf8_valid((const uint8_t *)e->string,
                                 strlen(e->string)))
                goto out;
            snprintf(x->q.extra[k].key, sizeof(x->q.extra[k].key), "%s",
                     e->string);
            snprintf(x->q.extra[k].value, sizeof(x->q.extra[k].value), "%s",
                     v);
            k++;
        }
        x->q.extra_count = k;
        rewritten = 1;
    }
    if (rewritten)
        x->hl->st.bs_rewritten++;
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

static void
send_resp_cb(const imgw_httpc_resp_t *resp, void *arg)
{
    hook_send_t *x = arg;
    imgw_hooks_loop_t *hl = x->hl;
    x->req = NULL;
    double secs = (double)resp->elapsed_us / 1e6;
    int b = 0;
    while (b < HOOK_LAT_BUCKETS - 1 && secs > hook_lat_le[b])
        b++;
    hl->st.bs_lat_hist[b]++;
    hl->st.bs_lat_us_sum += resp->elapsed_us;
    if (resp->status == IMGW_ETIMEDOUT) {
        send_fail(x, HF_TIMEOUT, resp->error);
        return;
    }
    if (resp->status == IMGW_ETOOBIG) {
        send_fail(x, HF_TOO_BIG, "response body over max_response_bytes");
        return;
    }
    if (resp->status != 0) {
        send_fail(x, HF_CONNECT, resp->error);
        return;
    }
    if (resp->http < 200 || resp->http > 299) {
        char why[32];
        snprintf(why, sizeof(why), "HTTP %ld", resp->http);
        send_fail(x, HF_STATUS, why);
        return;
    }
    if (send_parse(x, resp->body, resp->body_len) != 0) {
        send_fail(x, HF_ANSWER, "not the documented JSON answer");
        return;
    }
    if (x->verdict == HV_DENY)
        hl->st.bs_denied++;
    else
        hl->st.bs_allowed++;
    send_ready(x, x->verdict);
}

/* The request body of docs/hooks.md. */
static char *
send_body(hook_send_t *x)
{
    const im_SendMessageRequest *q = &x->q;
    cJSON *o = cJSON_CreateObject();
    if (o == NULL)
        return NULL;
    int ok = cJSON_AddStringToObject(o, "type", "message.before_send") &&
             cJSON_AddStringToObject(o, "node", x->hl->cfg->broker_id) &&
             cJSON_AddStringToObject(o, "sender_id", q->sender_id) &&
             cJSON_AddStringToObject(o, "platform", x->platform) &&
             cJSON_AddStringToObject(o, "conversation_id", x->conv) &&
             cJSON_AddNumberToObject(o, "message_type", q->message_type) &&
             cJSON_AddStringToObject(o, "client_msg_id", q->client_msg_id) &&
             cJSON_AddNumberToObject(o, "send_time", (double)q->send_time) &&
             hooks_add_content(o, "content", x->content, x->content_len) == 0;
    if (ok && q->receiver_id[0])
        ok = cJSON_AddStringToObject(o, "receiver_id", q->receiver_id) != NULL;
    if (ok && q->group_id[0])
        ok = cJSON_AddStringToObject(o, "group_id", q->group_id) != NULL;
    cJSON *ex = ok ? cJSON_AddObjectToObject(o, "extra") : NULL;
    ok = ex != NULL;
    for (pb_size_t i = 0; ok && i < q->extra_count; i++)
        ok = cJSON_AddStringToObject(ex, q->extra[i].key, q->extra[i].value) !=
             NULL;
    char *s = ok ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    return s;
}

static void
send_call(hook_send_t *x)
{
    imgw_hooks_loop_t *hl = x->hl;
    x->state = HS_CALLING;
    if (hl->stopping) {
        send_ready(x, HV_FAIL);
        return;
    }
    char *body = send_body(x);
    if (body == NULL) {
        send_fail(x, HF_CONNECT, "out of memory");
        return;
    }
    hl->st.bs_calls++;
    int r = hooks_post(hl, hl->cfg->hooks_before_send_url, body,
                       (uint64_t)hl->cfg->hooks_timeout_ms, send_resp_cb, x,
                       &x->req);
    cJSON_free(body);
    if (r != 0)
        send_fail(x, HF_CONNECT, imgw_strerror(r));
}

static void hooks_loop_release(imgw_hooks_loop_t *hl);

static void
send_dedupe_cb(int status, uint64_t message_id, int64_t seq, void *data)
{
    hook_send_t *x = data;
    imgw_hooks_loop_t *hl = x->hl;
    hl->lookups--;
    if (status == 0) {
        hl->st.bs_dup++;
        x->dup_id = message_id;
        x->dup_seq = seq;
        send_ready(x, HV_DUP);
    } else {
        /* Not found, or the store is down: ask the hook (the append still
         * dedupes, and fails cleanly if the store stays down). */
        send_call(x);
    }
    hooks_loop_release(hl);
}

void
imgw_hooks_before_send(imgw_session_t *s, const imgw_msg_in_t *in,
                       const char *conv, const imgw_hooks_send_ops_t *ops)
{
    imgw_core_loop_t *cl = s->cl;
    imgw_hooks_loop_t *hl = cl->hooks;
    hl->ops = ops;
    if (hl->inflight >= (size_t)hl->cfg->hooks_max_inflight) {
        hl->st.bs_busy++;
        hl->ops->answer(cl, imgw_conn_ref(s->conn), in->sequence,
                             im_ErrorCode_ERR_SERVER_BUSY,
                             "too many sends waiting for the before-send hook",
                             0, 0, 0);
        return;
    }
    hook_send_t *x = imgw_try_calloc(1, sizeof(*x));
    uint8_t *content = imgw_try_malloc(in->content.len ? in->content.len : 1);
    if (s->hook_chain == NULL && x != NULL && content != NULL)
        s->hook_chain = imgw_try_calloc(1, sizeof(*s->hook_chain));
    if (x == NULL || content == NULL || s->hook_chain == NULL) {
        imgw_free(x);
        imgw_free(content);
        hl->ops->answer(cl, imgw_conn_ref(s->conn), in->sequence,
                             im_ErrorCode_ERR_SERVER_BUSY, "out of memory", 0,
                             0, 0);
        return;
    }
    x->hl = hl;
    x->chain = s->hook_chain;
    x->ref = imgw_conn_ref(s->conn);
    x->sequence = in->sequence;
    x->q = in->u.send;
    x->q.content.arg = NULL; /* content lives in x->content */
    if (in->content.len)
        memcpy(content, in->content.ptr, in->content.len);
    x->content = content;
    x->content_len = in->content.len;
    snprintf(x->conv, sizeof(x->conv), "%s", conv);
    snprintf(x->platform, sizeof(x->platform), "%s", imgw_session_platform(s));
    imgw_list_insert_head(&hl->all, &x->all);
    if (x->chain->tail)
        x->chain->tail->next = x;
    else
        x->chain->head = x;
    x->chain->tail = x;
    hl->inflight++;
    hl->st.bs_inflight = hl->inflight;
    if (x->q.client_msg_id[0] == '\0') {
        send_call(x);
        return;
    }
    x->state = HS_LOOKUP;
    hl->lookups++;
    /* Answers later, refusals included (store.h). */
    imgw_store_dedupe_get(cl->store, x->q.sender_id, x->q.client_msg_id,
                          send_dedupe_cb, x);
}

void
imgw_hooks_session_closed(imgw_session_t *s)
{
    imgw_hooks_chain_t *ch = s->hook_chain;
    if (ch == NULL)
        return;
    s->hook_chain = NULL;
    ch->orphan = 1;
    if (ch->head == NULL && !ch->draining)
        imgw_free(ch);
}

int
imgw_hooks_before_send_on(const imgw_core_loop_t *cl)
{
    return cl->hooks != NULL && cl->node->cfg->hooks_before_send_url[0] != '\0';
}

/* ---- events ----------------------------------------------------------------- */

/* Queues one event object (takes ownership of json). */
static void
ev_push(imgw_hooks_loop_t *hl, char *json)
{
    if (json == NULL || hl->q_len >= hl->q_cap) {
        hl->st.ev_dropped++;
        IMGW_LOG_WARN_RL("hooks: event queue full (%zu): event dropped",
                         hl->q_cap);
        cJSON_free(json);
        return;
    }
    hl->q[(hl->q_head + hl->q_len) % hl->q_cap] = json;
    hl->q_len++;
    hl->st.ev_queued = hl->q_len;
}

/* A new event object with its id, type, time and node. */
static cJSON *
ev_new(imgw_hooks_loop_t *hl, const char *type)
{
    char id[200];
    snprintf(id, sizeof(id), "%s-%d-%" PRId64 "-%" PRIu64, hl->cfg->broker_id,
             hl->cl->index, hl->start_ms, ++hl->ev_seq);
    cJSON *o = cJSON_CreateObject();
    if (o == NULL)
        return NULL;
    if (!cJSON_AddStringToObject(o, "id", id) ||
        !cJSON_AddStringToObject(o, "type", type) ||
        !cJSON_AddNumberToObject(o, "time", (double)imgw_now_ms()) ||
        !cJSON_AddStringToObject(o, "node", hl->cfg->broker_id)) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

static void
ev_finish(imgw_hooks_loop_t *hl, cJSON *o, int ok)
{
    char *s = ok && o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (s == NULL)
        hl->st.ev_dropped++;
    else
        ev_push(hl, s);
}

static void ev_flush(imgw_hooks_loop_t *hl);

static void
ev_resp_cb(const imgw_httpc_resp_t *resp, void *arg)
{
    imgw_hooks_loop_t *hl = arg;
    size_t n = hl->q_posting;
    hl->ev_req = NULL;
    hl->q_posting = 0;
    /* The events were received once the hook says 2xx (the body, even one
     * over the bound, does not matter). */
    int ok = (resp->status == 0 || resp->status == IMGW_ETOOBIG) &&
             resp->http >= 200 && resp->http <= 299;
    if (!ok) {
        hl->st.ev_post_failures++;
        uint64_t b = hl->backoff_ms ? hl->backoff_ms * 2
                                    : (uint64_t)hl->cfg->hooks_flush_ms;
        if (b > (uint64_t)hl->cfg->hooks_retry_max_ms)
            b = (uint64_t)hl->cfg->hooks_retry_max_ms;
        hl->backoff_ms = b;
        hl->next_post_ms = hooks_now_ms(hl) + b;
        if (resp->status != 0)
            IMGW_LOG_WARN_RL("hooks: event POST of %zu failed: %s; retry in "
                             "%" PRIu64 " ms",
                             n, resp->error, b);
        else
            IMGW_LOG_WARN_RL("hooks: event POST of %zu answered HTTP %ld; "
                             "retry in %" PRIu64 " ms",
                             n, resp->http, b);
        return;
    }
    hl->backoff_ms = 0;
    hl->next_post_ms = 0;
    for (size_t i = 0; i < n; i++) {
        cJSON_free(hl->q[hl->q_head]);
        hl->q[hl->q_head] = NULL;
        hl->q_head = (hl->q_head + 1) % hl->q_cap;
    }
    hl->q_len -= n;
    hl->st.ev_sent += n;
    hl->st.ev_queued = hl->q_len;
}

/* Posts the head of the queue when nothing is in flight and the backoff
 * allows. Body: {"events":[...]} (the objects are joined as text). */
static void
ev_flush(imgw_hooks_loop_t *hl)
{
    if (hl->stopping || hl->ev_req != NULL || hl->q_len == 0 ||
        hooks_now_ms(hl) < hl->next_post_ms)
        return;
    size_t n = hl->q_len < (size_t)hl->cfg->hooks_batch
                   ? hl->q_len
                   : (size_t)hl->cfg->hooks_batch;
    size_t bytes = 16;
    for (size_t i = 0; i < n; i++)
        bytes += strlen(hl->q[(hl->q_head + i) % hl->q_cap]) + 1;
    char *body = imgw_try_malloc(bytes);
    if (body == NULL)
        return;
    size_t o = 0;
    memcpy(body, "{\"events\":[", 11);
    o = 11;
    for (size_t i = 0; i < n; i++) {
        const char *e = hl->q[(hl->q_head + i) % hl->q_cap];
        size_t l = strlen(e);
        if (i)
            body[o++] = ',';
        memcpy(body + o, e, l);
        o += l;
    }
    memcpy(body + o, "]}", 3);
    hl->q_posting = n;
    hl->st.ev_posts++;
    /* An event POST may take longer than a before-send call: it carries a
     * batch, and nobody waits for it. */
    uint64_t t = (uint64_t)hl->cfg->hooks_timeout_ms * 5;
    int r = hooks_post(hl, hl->cfg->hooks_events_url, body, t, ev_resp_cb, hl,
                       &hl->ev_req);
    imgw_free(body);
    if (r != 0) {
        hl->q_posting = 0;
        hl->st.ev_post_failures++;
    }
}

static void
ev_timer_cb(uv_timer_t *t)
{
    ev_flush(t->data);
}

/* message.offline: one route lookup per receiver. */
typedef struct ev_msg_s {
    imgw_hooks_loop_t *hl;
    int refs;
    char *user; /* this lookup's receiver (in the block) */
    struct ev_msg_shared_s *m;
} ev_msg_t;

typedef struct ev_msg_shared_s {
    int refs;
    char message_id[24];
    int64_t server_time;
    int message_type;
    char sender[128];
    char conv[264];
    char group[128];
    char *preview; /* UTF-8 cut, or NULL when content is not UTF-8 */
    size_t content_len;
} ev_msg_shared_t;

static void
ev_msg_unref(ev_msg_shared_t *m)
{
    if (--m->refs == 0) {
        imgw_free(m->preview);
        imgw_free(m);
    }
}

static void
ev_route_cb(int status, const imgw_store_route_t *r, size_t n, void *data)
{
    ev_msg_t *e = data;
    imgw_hooks_loop_t *hl = e->hl;
    ev_msg_shared_t *m = e->m;
    (void)r;
    hl->route_lookups--;
    /* No route on any node: offline. A lookup that failed says nothing;
     * the event is sent (a push notification too many beats one lost). */
    if (!hl->stopping && (status != 0 || n == 0)) {
        cJSON *o = ev_new(hl, "message.offline");
        int ok = o && cJSON_AddStringToObject(o, "user_id", e->user) &&
                 cJSON_AddStringToObject(o, "message_id", m->message_id) &&
                 cJSON_AddStringToObject(o, "conversation_id", m->conv) &&
                 cJSON_AddStringToObject(o, "sender_id", m->sender) &&
                 cJSON_AddNumberToObject(o, "message_type", m->message_type) &&
                 cJSON_AddNumberToObject(o, "server_time",
                                         (double)m->server_time) &&
                 cJSON_AddNumberToObject(o, "content_bytes",
                                         (double)m->content_len);
        if (ok && m->group[0])
            ok = cJSON_AddStringToObject(o, "group_id", m->group) != NULL;
        if (ok && m->preview)
            ok = cJSON_AddStringToObject(o, "preview", m->preview) != NULL;
        ev_finish(hl, o, ok);
    }
    ev_msg_unref(m);
    imgw_free(e);
    hooks_loop_release(hl);
}

void
imgw_hooks_stored(imgw_core_loop_t *cl, const uint8_t *blob, size_t len,
                  const char *const *users, size_t n)
{
    imgw_hooks_loop_t *hl = cl->hooks;
    if (hl == NULL || !(hl->events & EV_OFFLINE) || n < 2 || hl->stopping)
        return;
    imgw_slice_t content;
    if (imgw_codec_decode_push(blob, len, &hl->pm, &content) != 0)
        return;
    ev_msg_shared_t *m = imgw_try_calloc(1, sizeof(*m));
    if (m == NULL) {
        hl->st.ev_dropped += n - 1;
        return;
    }
    m->refs = 1;
    snprintf(m->message_id, sizeof(m->message_id), "%s", hl->pm.message_id);
    snprintf(m->sender, sizeof(m->sender), "%s", hl->pm.sender_id);
    snprintf(m->conv, sizeof(m->conv), "%s", hl->pm.conversation_id);
    snprintf(m->group, sizeof(m->group), "%s", hl->pm.group_id);
    m->server_time = hl->pm.server_time;
    m->message_type = hl->pm.message_type;
    m->content_len = content.len;
    if (imgw_utf8_valid(content.ptr, content.len)) {
        size_t k = utf8_cut(content.ptr, content.len,
                            (size_t)hl->cfg->hooks_preview_bytes);
        m->preview = imgw_try_malloc(k + 1);
        if (m->preview) {
            if (k)
                memcpy(m->preview, content.ptr, k);
            m->preview[k] = '\0';
        }
    }
    for (size_t i = 1; i < n; i++) {
        size_t ul = strlen(users[i]);
        ev_msg_t *e = imgw_try_malloc(sizeof(*e) + ul + 1);
        if (e == NULL) {
            hl->st.ev_dropped++;
            continue;
        }
        e->hl = hl;
        e->m = m;
        e->user = (char *)(e + 1);
        memcpy(e->user, users[i], ul + 1);
        m->refs++;
        hl->route_lookups++;
        imgw_store_route_get(cl->store, e->user, ev_route_cb, e);
    }
    ev_msg_unref(m);
}

void
imgw_hooks_presence(imgw_core_loop_t *cl, const char *user,
                    const char *platform, int online)
{
    imgw_hooks_loop_t *hl = cl->hooks;
    unsigned want = online ? EV_ONLINE : EV_OFFLINE_USER;
    if (hl == NULL || !(hl->events & want) || hl->stopping)
        return;
    cJSON *o = ev_new(hl, online ? "user.online" : "user.offline");
    int ok = o && cJSON_AddStringToObject(o, "user_id", user) &&
             cJSON_AddStringToObject(o, "platform", platform);
    ev_finish(hl, o, ok);
}

/* ---- loop start / stop -------------------------------------------------------- */

static unsigned
events_mask(const char *list)
{
    unsigned m = 0;
    const char *p = list;
    while (*p) {
        size_t n = strcspn(p, ",");
        size_t a = 0, b = n;
        while (a < b && p[a] == ' ')
            a++;
        while (b > a && p[b - 1] == ' ')
            b--;
#define EV_IS(name) (b - a == strlen(name) && memcmp(p + a, name, b - a) == 0)
        if (EV_IS("message.offline"))
            m |= EV_OFFLINE;
        else if (EV_IS("user.online"))
            m |= EV_ONLINE;
        else if (EV_IS("user.offline"))
            m |= EV_OFFLINE_USER;
#undef EV_IS
        p += n;
        if (*p == ',')
            p++;
    }
    return m;
}

/* Frees hl once stopped and no store callback can reach it any more. */
static void
hooks_loop_release(imgw_hooks_loop_t *hl)
{
    if (!hl->stopping || hl->lookups > 0 || hl->route_lookups > 0 ||
        hl->timer_open)
        return;
    imgw_free(hl);
}

static void
hooks_timer_closed(uv_handle_t *h)
{
    imgw_hooks_loop_t *hl = h->data;
    hl->timer_open = 0;
    hooks_loop_release(hl);
}

int
imgw_hooks_loop_start(imgw_core_loop_t *cl)
{
    const imgw_config_t *cfg = cl->node->cfg;
    cl->hooks = NULL;
    if (cfg->hooks_before_send_url[0] == '\0' && cfg->hooks_events_url[0] == '\0')
        return 0;
    imgw_hooks_loop_t *hl = imgw_try_calloc(1, sizeof(*hl));
    if (hl == NULL)
        return IMGW_ENOMEM;
    hl->cl = cl;
    hl->cfg = cfg;
    imgw_list_init(&hl->all);
    hl->start_ms = imgw_now_ms();
    if (imgw_httpc_new(&hl->http, imgw_loop_uv(cl->loop)) != 0) {
        imgw_free(hl);
        return IMGW_ENOMEM;
    }
    if (cfg->hooks_events_url[0] != '\0') {
        hl->events = events_mask(cfg->hooks_events);
        hl->q_cap = (size_t)cfg->hooks_queue_max;
        hl->q = imgw_try_calloc(hl->q_cap, sizeof(*hl->q));
        if (hl->q == NULL) {
            imgw_httpc_free(hl->http);
            imgw_free(hl);
            return IMGW_ENOMEM;
        }
        uv_timer_init(imgw_loop_uv(cl->loop), &hl->timer);
        hl->timer.data = hl;
        hl->timer_open = 1;
        uv_timer_start(&hl->timer, ev_timer_cb, (uint64_t)cfg->hooks_flush_ms,
                       (uint64_t)cfg->hooks_flush_ms);
    }
    cl->hooks = hl;
    if (cl->index == 0)
        IMGW_LOG_INFO("hooks: before_send %s, events %s (%s), failure %s",
                      cfg->hooks_before_send_url[0] ? cfg->hooks_before_send_url
                                                    : "off",
                      cfg->hooks_events_url[0] ? cfg->hooks_events_url : "off",
                      cfg->hooks_events, cfg->hooks_failure);
    return 0;
}

/*
 * At loop stop: calls in flight are abandoned, their sends answered
 * ERR_SERVER_BUSY (nothing stored); queued events are lost (at-least-once
 * holds while the process runs; docs/hooks.md). Store lookups still under
 * way keep hl until they call back.
 */
void
imgw_hooks_loop_stop(imgw_core_loop_t *cl)
{
    imgw_hooks_loop_t *hl = cl->hooks;
    if (hl == NULL)
        return;
    cl->hooks = NULL;
    hl->stopping = 1;
    /* Free the HTTP client first (no callback of it runs afterwards),
     * then answer the sends whose calls it abandoned, in chain order;
     * those in a store lookup finish when the store calls back. */
    imgw_httpc_free(hl->http);
    hl->http = NULL;
    for (;;) {
        hook_send_t *x = NULL;
        imgw_list_t *l;
        IMGW_LIST_FOREACH(l, &hl->all)
        {
            hook_send_t *y = IMGW_LIST_ENTRY(l, hook_send_t, all);
            if (y->state == HS_CALLING) {
                x = y;
                break;
            }
        }
        if (x == NULL)
            break;
        x->req = NULL;
        send_ready(x, HV_FAIL); /* frees x, maybe others of its chain */
    }
    for (size_t i = 0; i < hl->q_len; i++)
        cJSON_free(hl->q[(hl->q_head + i) % hl->q_cap]);
    imgw_free(hl->q);
    hl->q = NULL;
    hl->q_len = 0;
    if (hl->timer_open) {
        uv_timer_stop(&hl->timer);
        uv_close((uv_handle_t *)&hl->timer, hooks_timer_closed);
    }
    hooks_loop_release(hl);
}

/* ---- metrics -------------------------------------------------------------------- */

/* The text is built in an imgw_buf_t (base/buf.h): an allocation failure
 * sticks and is checked once at the end. */

char *
imgw_hooks_metrics(imgw_node_t *node)
{
    hooks_stats_t t;
    memset(&t, 0, sizeof(t));
    for (int i = 0; i < node->n_loops; i++) {
        imgw_hooks_loop_t *hl = node->loops[i]->hooks;
        if (hl == NULL)
            continue;
        const uint64_t *src = (const uint64_t *)&hl->st;
        uint64_t *dst = (uint64_t *)&t;
        for (size_t k = 0; k < sizeof(t) / sizeof(uint64_t); k++)
            dst[k] += src[k];
    }
    imgw_buf_t b = {0};
#define HEAD(name, type, help)                                                 \
    imgw_buf_fmt(&b, "# HELP " name " " help "\n# TYPE " name " " type "\n")
    HEAD("imgw_hook_calls_total", "counter",
         "Before-send hook calls (hook=before_send) and event POSTs "
         "(hook=events).");
    imgw_buf_fmt(&b, "imgw_hook_calls_total{hook=\"before_send\"} %" PRIu64 "\n",
         t.bs_calls);
    imgw_buf_fmt(&b, "imgw_hook_calls_total{hook=\"events\"} %" PRIu64 "\n",
         t.ev_posts);
    HEAD("imgw_hook_failures_total", "counter",
         "Hook calls without a usable answer, by reason.");
    for (int k = 0; k < HF_N; k++)
        imgw_buf_fmt(&b,
             "imgw_hook_failures_total{hook=\"before_send\",reason=\"%s\"} "
             "%" PRIu64 "\n",
             hf_name[k], t.bs_failed[k]);
    imgw_buf_fmt(&b, "imgw_hook_failures_total{hook=\"events\",reason=\"post\"} %" PRIu64
             "\n",
         t.ev_post_failures);
    HEAD("imgw_hook_decisions_total", "counter",
         "Before-send outcomes: allow, rewrite (allowed with new content or "
         "extra), deny, fail_open (allowed after a failure), busy (refused: "
         "max_inflight), dup (a resend answered from the store).");
    imgw_buf_fmt(&b, "imgw_hook_decisions_total{decision=\"allow\"} %" PRIu64 "\n",
         t.bs_allowed);
    imgw_buf_fmt(&b, "imgw_hook_decisions_total{decision=\"rewrite\"} %" PRIu64 "\n",
         t.bs_rewritten);
    imgw_buf_fmt(&b, "imgw_hook_decisions_total{decision=\"deny\"} %" PRIu64 "\n",
         t.bs_denied);
    imgw_buf_fmt(&b, "imgw_hook_decisions_total{decision=\"fail_open\"} %" PRIu64 "\n",
         t.bs_fail_open);
    imgw_buf_fmt(&b, "imgw_hook_decisions_total{decision=\"busy\"} %" PRIu64 "\n",
         t.bs_busy);
    imgw_buf_fmt(&b, "imgw_hook_decisions_total{decision=\"dup\"} %" PRIu64 "\n",
         t.bs_dup);
    HEAD("imgw_hook_inflight", "gauge",
         "Sends waiting for the before-send hook (or its store lookup).");
    imgw_buf_fmt(&b, "imgw_hook_inflight %" PRIu64 "\n", t.bs_inflight);
    HEAD("imgw_hook_latency_seconds", "histogram",
         "Before-send hook call latency.");
    uint64_t cum = 0;
    for (int k = 0; k < HOOK_LAT_BUCKETS - 1; k++) {
        cum += t.bs_lat_hist[k];
        imgw_buf_fmt(&b, "imgw_hook_latency_seconds_bucket{le=\"%g\"} %" PRIu64 "\n",
             hook_lat_le[k], cum);
    }
    cum += t.bs_lat_hist[HOOK_LAT_BUCKETS - 1];
    imgw_buf_fmt(&b, "imgw_hook_latency_seconds_bucket{le=\"+Inf\"} %" PRIu64 "\n",
         cum);
    imgw_buf_fmt(&b, "imgw_hook_latency_seconds_sum %.6f\n",
         (double)t.bs_lat_us_sum / 1e6);
    imgw_buf_fmt(&b, "imgw_hook_latency_seconds_count %" PRIu64 "\n", cum);
    HEAD("imgw_hook_events_queued", "gauge",
         "Events waiting to be posted to hooks.events_url.");
    imgw_buf_fmt(&b, "imgw_hook_events_queued %" PRIu64 "\n", t.ev_queued);
    HEAD("imgw_hook_events_sent_total", "counter",
         "Events the event hook accepted (2xx).");
    imgw_buf_fmt(&b, "imgw_hook_events_sent_total %" PRIu64 "\n", t.ev_sent);
    HEAD("imgw_hook_events_dropped_total", "counter",
         "Events dropped because the queue was full (hooks.queue_max).");
    imgw_buf_fmt(&b, "imgw_hook_events_dropped_total %" PRIu64 "\n", t.ev_dropped);
#undef HEAD
    if (b.err) {
        imgw_free(b.p);
        return NULL;
    }
    return b.p;
}
