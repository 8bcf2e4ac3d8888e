/*
 * session.c: a WebSocket connection as an IM session: the handshake token,
 * CMD_AUTH_REQ, heartbeats, rate limits, timeouts, kicks and the dispatch
 * of every other command to msg.c. These are net's handlers.
 *
 * Thread: the loop that owns the connection. Store callbacks may run later
 * (redis): they find the connection again by imgw_conn_ref_t, never keep a
 * pointer to it.
 */
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "alloc.h"
#include "conv.h"
#include "downlink.h"
#include "err.h"
#include "hooks.h"
#include "idsyntax.h"
#include "log.h"
#include "session.h"

/* ---- activity log ------------------------------------------------------ */

/*
 * Logins, refused logins and disconnects at info level, so that a terminal
 * running `make run` shows what its clients do (issue 18: it looked dead).
 * The first ACT_FIRST events of the process get a line each; after that
 * loop 0 writes one summary line per ACT_SUMMARY_MS in which anything
 * happened, so a benchmark or a busy node is not flooded. Counters are
 * node-wide atomics (any loop); the summary state is loop 0's alone.
 */
#define ACT_FIRST 20
#define ACT_SUMMARY_MS 60000

typedef enum act_kind_e {
    ACT_LOGIN,
    ACT_REFUSED,
    ACT_LOGOUT,
    ACT_N
} act_kind_t;

static atomic_ullong act_total[ACT_N]; /* since start */
static atomic_uint act_lines;          /* per-event lines written */
static unsigned long long act_seen[ACT_N]; /* loop 0: totals at last summary */
static uint64_t act_last_ms;               /* loop 0: last summary */

static void
act_event(act_kind_t k, const char *user, const char *platform,
          const char *why)
{
    atomic_fetch_add_explicit(&act_total[k], 1, memory_order_relaxed);
    if (!imgw_log_enabled(IMGW_LOG_INFO_L))
        return;
    unsigned n = atomic_fetch_add_explicit(&act_lines, 1,
                                           memory_order_relaxed);
    if (n >= ACT_FIRST)
        return;
    const char *more = n + 1 == ACT_FIRST
                           ? " (further logins and disconnects: one summary "
                             "line per minute)"
                           : "";
    if (k == ACT_LOGIN)
        IMGW_LOG_INFO("user %s logged in (platform %s)%s", user, platform,
                      more);
    else if (k == ACT_LOGOUT)
        IMGW_LOG_INFO("user %s disconnected (platform %s)%s", user, platform,
                      more);
    else
        IMGW_LOG_INFO("login refused: %s%s", why, more);
}

/* Loop 0's tick: the per-minute summary once the per-event lines are used
 * up, only for a minute in which something happened. */
static void
act_tick(uint64_t now_ms)
{
    if (act_last_ms == 0)
        act_last_ms = now_ms;
    if (now_ms - act_last_ms < ACT_SUMMARY_MS)
        return;
    unsigned long long t[ACT_N], d[ACT_N], any = 0;
    for (int k = 0; k < ACT_N; k++) {
        t[k] = atomic_load_explicit(&act_total[k], memory_order_relaxed);
        d[k] = t[k] - act_seen[k];
        any |= d[k];
        act_seen[k] = t[k];
    }
    uint64_t secs = (now_ms - act_last_ms) / 1000;
    act_last_ms = now_ms;
    if (any && atomic_load_explicit(&act_lines, memory_order_relaxed) >=
                   ACT_FIRST)
        IMGW_LOG_INFO("last %llu s: %llu logins, %llu refused, %llu "
                      "disconnects; %llu sessions open",
                      (unsigned long long)secs, d[ACT_LOGIN], d[ACT_REFUSED],
                      d[ACT_LOGOUT], t[ACT_LOGIN] - t[ACT_LOGOUT]);
}

/* ---- rate limits -------------------------------------------------------- */

/*
 * Token buckets refilled lazily on use: send_rate per second for sends and
 * 10 x send_rate for every other frame, each with a burst of 2 x its rate.
 */
static void
refill(imgw_session_t *s, uint64_t now)
{
    const imgw_config_t *cfg = s->cl->node->cfg;
    /* Full buckets from the session's start (session_new). */
    uint32_t d = (uint32_t)now - s->refill_ms;
    float dt = (float)d / 1000.0f;
    if (d == 0)
        return;
    s->refill_ms = (uint32_t)now;
    s->send_tokens += dt * (float)cfg->send_rate;
    if (s->send_tokens > 2.0f * (float)cfg->send_rate)
        s->send_tokens = 2.0f * (float)cfg->send_rate;
    s->other_tokens += dt * 10.0f * (float)cfg->send_rate;
    if (s->other_tokens > 20.0f * (float)cfg->send_rate)
        s->other_tokens = 20.0f * (float)cfg->send_rate;
}

static int
take_token(imgw_session_t *s, int is_send)
{
    refill(s, imgw_loop_now_ms(s->cl->loop));
    float *b = is_send ? &s->send_tokens : &s->other_tokens;
    if (*b < 1.0f)
        return 0;
    *b -= 1.0f;
    return 1;
}

/* ---- authentication ----------------------------------------------------- */

static int
auth_fail_index(imgw_jwt_result_t r)
{
    int i = -(int)r;
    return (i > 0 && i < 7) ? i : 7;
}

/*
 * The handshake token from ?token=, Authorization: Bearer or the token
 * cookie: 1 found, 0 none, -1 present but over the size bound (a 401).
 * *cookie is set when the token came from the cookie.
 */
static int
token_from_request(const imgw_http_req_t *req, char *out, size_t outlen,
                   int *cookie)
{
    *cookie = 0;
    int q = imgw_http_query_param(req, "token", out, outlen);
    if (q == -2)
        return -1;
    if (q == 0 && out[0])
        return 1;
    const imgw_span_t *a = imgw_http_header(req, "authorization");
    if (a && a->len > 7 && strncasecmp(a->p, "Bearer ", 7) == 0) {
        size_t n = a->len - 7;
        const char *p = a->p + 7;
        while (n > 0 && *p == ' ') {
            p++;
            n--;
        }
        if (n + 1 > outlen)
            return -1;
        memcpy(out, p, n);
        out[n] = '\0';
        return n > 0;
    }
    int k = imgw_http_cookie(req, "token", out, outlen);
    *cookie = 1;
    if (k == -2)
        return -1;
    if (k == 0 && out[0])
        return 1;
    return 0;
}

/*
 * A browser attaches the token cookie to a WebSocket handshake whatever
 * page opened it, and server.origins defaults to any Origin, so a cookie
 * alone proves nothing about who is asking (cross-site WebSocket
 * hijacking: evil.example opens ws://imgw/ws and acts as the victim). The
 * cookie is taken only from a browser request (Origin present) whose
 * origin is vetted: by a configured server.origins list (on_upgrade
 * checked it already), or else by being the same origin as the server,
 * that is the host[:port] of Origin equal to Host (the demo page served by
 * imgw itself). Behind a proxy that rewrites Host, configure origins.
 */
static int
cookie_allowed(const char *list, const imgw_span_t *origin,
               const imgw_span_t *host)
{
    if (origin == NULL)
        return 0;
    if (list[0] != '\0')
        return 1;
    if (host == NULL)
        return 0;
    const char *p = memmem(origin->p, origin->len, "://", 3);
    if (p == NULL) /* "null" (sandboxed or opaque origins) among others */
        return 0;
    p += 3;
    size_t n = origin->len - (size_t)(p - origin->p);
    return n > 0 && n == host->len && strncasecmp(p, host->p, n) == 0;
}

/*
 * server.origins: when set, a browser's Origin must be one of the comma
 * separated values (exact match); requests without Origin (non-browser
 * clients) are not affected.
 */
static int
origin_allowed(const char *list, const imgw_span_t *origin)
{
    if (list[0] == '\0' || origin == NULL)
        return 1;
    const char *p = list;
    while (*p) {
        while (*p == ' ' || *p == ',')
            p++;
        const char *e = p;
        while (*e && *e != ',')
            e++;
        const char *t = e;
        while (t > p && t[-1] == ' ')
            t--;
        if (t > p && (size_t)(t - p) == origin->len &&
            strncasecmp(p, origin->p, origin->len) == 0)
            return 1;
        p = e;
    }
    return 0;
}

static int
on_upgrade(imgw_conn_t *c, const imgw_http_req_t *req)
{
    imgw_core_loop_t *cl = imgw_loop_data(imgw_conn_loop(c));
    if (!origin_allowed(cl->node->cfg->origins,
                        imgw_http_header(req, "origin"))) {
        imgw_stat_inc(&cl->st.refused_origin);
        return 403;
    }
    char *tok = (char *)cl->scratch; /* big enough: max_frame_bytes */
    int from_cookie;
    int have =
        token_from_request(req, tok, IMGW_JWT_MAX_TOKEN + 1, &from_cookie);
    imgw_jwt_claims_t claims;
    if (have > 0 && from_cookie &&
        !cookie_allowed(cl->node->cfg->origins, imgw_http_header(req, "origin"),
                        imgw_http_header(req, "host"))) {
        imgw_stat_inc(&cl->st.handshake_401);
        imgw_stat_inc(&cl->st.auth_fail[7]);
        IMGW_LOG_DEBUG("handshake token cookie refused: no Origin, or a "
                       "cross-origin one without server.origins");
        return 401;
    }
    if (have < 0) {
        imgw_stat_inc(&cl->st.handshake_401);
        imgw_stat_inc(&cl->st.auth_fail[auth_fail_index(IMGW_JWT_MALFORMED)]);
        act_event(ACT_REFUSED, NULL, NULL, "handshake token too long (401)");
        return 401;
    }
    if (have > 0) {
        imgw_jwt_result_t r = imgw_jwt_verify(cl->jwt, tok, strlen(tok),
                                              imgw_now_ms() / 1000, &claims);
        if (r != IMGW_JWT_OK) {
            imgw_stat_inc(&cl->st.handshake_401);
            imgw_stat_inc(&cl->st.auth_fail[auth_fail_index(r)]);
            IMGW_LOG_DEBUG("handshake token refused: %s",
                           imgw_jwt_reason(r));
            char why[96];
            snprintf(why, sizeof(why), "handshake token: %s (HTTP 401)",
                     imgw_jwt_reason(r));
            act_event(ACT_REFUSED, NULL, NULL, why);
            return 401;
        }
        /* An authentic token whose user id breaks the id rule
         * (idsyntax.h): the request is bad, not the signature. */
        const char *why = imgw_id_check(claims.user_id, strlen(claims.user_id));
        if (why != NULL) {
            imgw_stat_inc(
                &cl->st.auth_fail[auth_fail_index(IMGW_JWT_BAD_CLAIM)]);
            IMGW_LOG_DEBUG("handshake token refused: user id %s", why);
            return 400;
        }
    }
    /* A handshake token's user goes at the session's tail, with room for
     * a short platform: auth then writes "user\0platform\0" over it in
     * place (realloc within the chunk), so an idle connection's session
     * is one chunk that never moved, and neither a copy of the user nor
     * the chunk auth would leave behind costs heap. */
    size_t hl = have > 0 ? strlen(claims.user_id) : 0;
    size_t room = hl > 0 ? hl + 1 + IMGW_SESSION_PLATFORM_ROOM : 0;
    imgw_session_t *s = imgw_try_calloc(1, sizeof(*s) + room);
    if (s == NULL)
        return 503;
    s->cl = cl;
    s->conn = c;
    s->send_tokens = 2.0f * (float)cl->node->cfg->send_rate;
    s->other_tokens = 20.0f * (float)cl->node->cfg->send_rate;
    s->refill_ms = (uint32_t)imgw_loop_now_ms(cl->loop);
    if (hl > 0) {
        memcpy(s->ids, claims.user_id, hl + 1);
        s->hs_user = s->ids;
    }
    imgw_conn_set_data(c, s);
    return 0;
}

typedef struct auth_ctx_s {
    imgw_conn_ref_t ref;
    uint32_t sequence;
} auth_ctx_t;

static void
route_done(int status, void *data)
{
    (void)status;
    (void)data;
}

static void
auth_max_seq_cb(int status, int64_t max_seq, uint64_t epoch, void *data)
{
    auth_ctx_t *ctx = data;
    imgw_core_loop_t *cl = imgw_core_loop_current();
    imgw_conn_t *c = imgw_loop_conn(cl->loop, ctx->ref);
    if (c != NULL) {
        imgw_session_t *s = imgw_conn_data(c);
        im_AuthResponse ar = im_AuthResponse_init_zero;
        if (status != 0) {
            ar.error_code = im_ErrorCode_ERR_SERVER_BUSY;
            snprintf(ar.error_msg, sizeof(ar.error_msg), "store unavailable");
            imgw_core_count_error(cl, ar.error_code);
            imgw_session_reply(s, im_CommandType_CMD_AUTH_RSP, ctx->sequence,
                               &ar);
            imgw_conn_close_ws(c, 1013, "store unavailable");
        } else {
            ar.error_code = im_ErrorCode_ERR_SUCCESS;
            ar.max_seq = max_seq;
            /* The resume contract (protocol.md): "" while the timeline
             * holds no seq. */
            if (epoch != 0)
                snprintf(ar.epoch, sizeof(ar.epoch), "%" PRIu64, epoch);
            imgw_session_reply(s, im_CommandType_CMD_AUTH_RSP, ctx->sequence,
                               &ar);
        }
    }
    imgw_free(ctx);
}

static void
auth_reject(imgw_session_t *s, uint32_t sequence, imgw_jwt_result_t r,
            const char *msg)
{
    im_AuthResponse ar = im_AuthResponse_init_zero;
    ar.error_code = r == IMGW_JWT_EXPIRED ? im_ErrorCode_ERR_TOKEN_EXPIRED
                                          : im_ErrorCode_ERR_AUTH_FAILED;
    snprintf(ar.error_msg, sizeof(ar.error_msg), "%s", msg);
    imgw_stat_inc(&s->cl->st.auth_fail[auth_fail_index(r)]);
    imgw_core_count_error(s->cl, ar.error_code);
    char why[160];
    snprintf(why, sizeof(why), "CMD_AUTH_REQ: %s (4001)", msg);
    act_event(ACT_REFUSED, NULL, NULL, why);
    imgw_session_reply(s, im_CommandType_CMD_AUTH_RSP, sequence, &ar);
    imgw_conn_close_ws(s->conn, 4001, "authentication failed");
}

/* A user id outside the id rule (idsyntax.h): ERR_INVALID_PARAM saying
 * which rule failed, then close 4001 like any failed authentication. */
static void
auth_bad_id(imgw_session_t *s, uint32_t sequence, const char *field,
            const char *why)
{
    im_AuthResponse ar = im_AuthResponse_init_zero;
    ar.error_code = im_ErrorCode_ERR_INVALID_PARAM;
    snprintf(ar.error_msg, sizeof(ar.error_msg), "%s %s", field, why);
    imgw_stat_inc(&s->cl->st.auth_fail[auth_fail_index(IMGW_JWT_BAD_CLAIM)]);
    imgw_core_count_error(s->cl, ar.error_code);
    imgw_session_reply(s, im_CommandType_CMD_AUTH_RSP, sequence, &ar);
    imgw_conn_close_ws(s->conn, 4001, "authentication failed");
}

static void
do_auth(imgw_session_t *s, imgw_msg_in_t *in)
{
    imgw_core_loop_t *cl = s->cl;
    const imgw_config_t *cfg = cl->node->cfg;
    im_AuthRequest *a = &in->u.auth;
    const char *user;
    imgw_jwt_claims_t claims;

    if (s->authed) {
        im_AuthResponse ar = im_AuthResponse_init_zero;
        ar.error_code = im_ErrorCode_ERR_INVALID_PARAM;
        snprintf(ar.error_msg, sizeof(ar.error_msg), "already authenticated");
        imgw_core_count_error(cl, ar.error_code);
        imgw_session_reply(s, im_CommandType_CMD_AUTH_RSP, in->sequence, &ar);
        return;
    }
    if (a->token[0] != '\0') {
        imgw_jwt_result_t r = imgw_jwt_verify(cl->jwt, a->token,
                                              strlen(a->token),
                                              imgw_now_ms() / 1000, &claims);
        if (r != IMGW_JWT_OK) {
            auth_reject(s, in->sequence, r, imgw_jwt_reason(r));
            return;
        }
        user = claims.user_id;
    } else if (s->hs_user != NULL) {
        user = s->hs_user;
    } else {
        auth_reject(s, in->sequence, IMGW_JWT_MALFORMED, "token required");
        return;
    }
    const char *why;
    if (a->user_id[0] != '\0' &&
        (why = imgw_id_check(a->user_id, strlen(a->user_id))) != NULL) {
        auth_bad_id(s, in->sequence, "user_id", why);
        return;
    }
    if ((why = imgw_id_check(user, strlen(user))) != NULL) {
        auth_bad_id(s, in->sequence, "the token's user id", why);
        return;
    }
    if (a->user_id[0] != '\0' && strcmp(a->user_id, user) != 0) {
        auth_reject(s, in->sequence, IMGW_JWT_BAD_CLAIM,
                    "user_id does not match the token");
        return;
    }
    /* User id and platform at the session's tail: an idle connection
     * keeps them for its whole life, so no malloc chunk of their own.
     * Nothing but the connection points at the session yet (commands
     * other than auth and heartbeats are refused before auth, and auth
     * once only), so it may move. */
    const char *plat = a->platform[0] ? a->platform : "default";
    size_t ulen = strlen(user);
    size_t plen = strnlen(plat, IMGW_USERMAP_PLATFORM - 1);
    /* The handshake's user lives in ids[], which the realloc may move and
     * the copy below overwrites: take it out first. */
    char ubuf[IMGW_ID_MAX + 1];
    int from_hs = user == s->hs_user;
    if (from_hs) {
        memcpy(ubuf, user, ulen + 1);
        user = ubuf;
    }
    imgw_session_t *ns = imgw_try_realloc(s, sizeof(*s) + ulen + 1 + plen + 1);
    if (ns == NULL) {
        imgw_conn_close_ws(s->conn, 1011, "out of memory");
        return;
    }
    s = ns;
    imgw_conn_set_data(s->conn, s);
    char *ids = s->ids;
    /* ids[] is about to hold this user: the handshake's user stays known
     * (for a retry after a refusal below) only if it is this one. */
    int keep_hs = s->hs_user != NULL && (from_hs || strcmp(ids, user) == 0);
    memcpy(ids, user, ulen + 1);
    s->hs_user = keep_hs ? ids : NULL;
    memcpy(ids + ulen + 1, plat, plen);
    ids[ulen + 1 + plen] = '\0';
    s->user = ids;
    const char *platform = ids + ulen + 1; /* imgw_session_platform */
    imgw_conn_ref_t kicked;
    size_t n_conns = 0;
    int k = imgw_usermap_add_n(cl->node->users, s->user, platform,
                               imgw_conn_ref(s->conn), &kicked, &n_conns);
    if (k < 0) {
        auth_reject(s, in->sequence, IMGW_JWT_BAD_CLAIM,
                    "too many connections for this user");
        s->user = NULL; /* ids[] stays: a retry writes it again */
        return;
    }
    /* Re-authentication is refused from here on: the handshake's user is
     * of no more use. */
    s->hs_user = NULL;
    s->registered = 1;
    s->authed = 1;
    imgw_stat_inc(&cl->st.auth_ok);
    imgw_stat_inc(&cl->st.sessions_authed);
    act_event(ACT_LOGIN, s->user, platform, NULL);
    if (n_conns == 1)
        imgw_hooks_presence(cl, s->user, platform, 1);
    if (k == 1)
        imgw_deliver_kick(cl, kicked, platform);
    /* Read the route before overwriting it: a (user, platform) logged in
     * on another node is kicked there (the store answers in order). */
    imgw_deliver_kick_remote(cl, s->user, platform);
    imgw_store_route_set(cl->store, s->user, platform, cfg->broker_id,
                         cfg->route_ttl, route_done, NULL);
    imgw_presence_changed(cl, s->user, platform, 1);
    s->route_refreshed_ms = (uint32_t)imgw_loop_now_ms(cl->loop);
    imgw_conn_set_deadline(s->conn, imgw_loop_now_ms(cl->loop) +
                                        (uint64_t)cfg->heartbeat_timeout *
                                            1000);
    auth_ctx_t *ctx = imgw_try_malloc(sizeof(*ctx));
    if (ctx == NULL) {
        imgw_conn_close_ws(s->conn, 1011, "out of memory");
        return;
    }
    ctx->ref = imgw_conn_ref(s->conn);
    ctx->sequence = in->sequence;
    imgw_store_max_seq(cl->store, s->user, auth_max_seq_cb, ctx);
}

static void
do_heartbeat(imgw_session_t *s, imgw_msg_in_t *in)
{
    imgw_core_loop_t *cl = s->cl;
    const imgw_config_t *cfg = cl->node->cfg;
    im_HeartbeatResponse hr = im_HeartbeatResponse_init_zero;
    hr.server_time = imgw_now_ms();
    imgw_stat_inc(&cl->st.heartbeats);
    imgw_session_reply(s, im_CommandType_CMD_HEARTBEAT_RSP, in->sequence, &hr);
    uint64_t now = imgw_loop_now_ms(cl->loop);
    /* Refresh the route's TTL, but not on every beat. */
    if (s->authed && (uint32_t)now - s->route_refreshed_ms >=
                         (uint64_t)cfg->route_ttl * 1000 / 3) {
        s->route_refreshed_ms = (uint32_t)now;
        imgw_store_route_refresh(cl->store, s->user, cfg->route_ttl,
                                 route_done, NULL);
    }
}

/* ---- messages ------------------------------------------------------------ */

static void
on_message(imgw_conn_t *c, int is_text, const uint8_t *data, size_t len)
{
    imgw_session_t *s = imgw_conn_data(c);
    imgw_core_loop_t *cl = s->cl;
    imgw_msg_in_t *in = &cl->in;
    s->codec = is_text ? IMGW_CODEC_JSON : IMGW_CODEC_PB;

    int r = imgw_codec_decode((imgw_codec_t)s->codec, data, len, in,
                              cl->scratch, cl->scratch_cap);
    /* The frame bucket applies from the first frame: before it, a client
     * that never authenticates could have every heartbeat answered. Sends
     * take from their own bucket below (only once authenticated: before
     * that a send closes the connection). */
    int is_send = s->authed && r == 0 &&
                  in->command == im_CommandType_CMD_SEND_MSG_REQ;
    if (!is_send && !take_token(s, 0)) {
        imgw_stat_inc(&cl->st.rate_limited);
        imgw_session_error(s, r == IMGW_EENVELOPE ? 0 : in->sequence,
                           im_ErrorCode_ERR_SEND_TOO_FAST, "too many frames");
        return;
    }
    if (!s->authed) {
        if (r == 0 && in->command == im_CommandType_CMD_HEARTBEAT_REQ) {
            do_heartbeat(s, in);
            return;
        }
        if (r == 0 && in->command == im_CommandType_CMD_AUTH_REQ) {
            do_auth(s, in);
            return;
        }
        imgw_session_error(s, r == IMGW_EENVELOPE ? 0 : in->sequence,
                           im_ErrorCode_ERR_AUTH_FAILED,
                           "authentication required");
        imgw_stat_inc(&cl->st.auth_fail[7]);
        act_event(ACT_REFUSED, NULL, NULL,
                  r != 0 ? "undecodable frame before CMD_AUTH_REQ (4001)"
                         : "a command before CMD_AUTH_REQ (4001)");
        imgw_conn_close_ws(c, 4001, "authentication required");
        return;
    }
    if (r != 0) {
        imgw_session_error(s, r == IMGW_EENVELOPE ? 0 : in->sequence,
                           im_ErrorCode_ERR_INVALID_PARAM,
                           r == IMGW_EUNKNOWNCMD ? "unknown command"
                           : r == IMGW_EENVELOPE ? "undecodable frame"
                           : r == IMGW_EUTF8     ? "string field is not UTF-8"
                                                 : "undecodable body");
        return;
    }
    switch (in->command) {
    case im_CommandType_CMD_HEARTBEAT_REQ:
        do_heartbeat(s, in);
        break;
    case im_CommandType_CMD_AUTH_REQ:
        do_auth(s, in);
        break;
    case im_CommandType_CMD_SEND_MSG_REQ:
        if (!take_token(s, 1)) {
            im_SendMessageResponse sr = im_SendMessageResponse_init_zero;
            sr.error_code = im_ErrorCode_ERR_SEND_TOO_FAST;
            snprintf(sr.error_msg, sizeof(sr.error_msg), "send rate exceeded");
            imgw_stat_inc(&cl->st.rate_limited);
            imgw_core_count_error(cl, sr.error_code);
            imgw_session_reply(s, im_CommandType_CMD_SEND_MSG_RSP,
                               in->sequence, &sr);
            break;
        }
        imgw_msg_send(s, in);
        break;
    case im_CommandType_CMD_MSG_ACK:
        imgw_msg_ack(s, in);
        break;
    case im_CommandType_CMD_SYNC_REQ:
        imgw_msg_sync(s, in);
        break;
    case im_CommandType_CMD_READ_RECEIPT_REQ:
        imgw_msg_read(s, in);
        break;
    case im_CommandType_CMD_CONVERSATION_LIST_REQ:
        imgw_conv_list(s, in);
        break;
    case im_CommandType_CMD_CONVERSATION_DELETE_REQ:
        imgw_conv_delete(s, in);
        break;
    case im_CommandType_CMD_TYPING_STATUS_REQ:
        imgw_msg_typing(s, in);
        break;
    case im_CommandType_CMD_REVOKE_MSG_REQ:
        imgw_msg_revoke(s, in);
        break;
    case im_CommandType_CMD_PRESENCE_REQ:
        imgw_presence_query(s, in);
        break;
    case im_CommandType_CMD_PRESENCE_SUB_REQ:
        imgw_presence_subscribe(s, in);
        break;
    default:
        imgw_session_error(s, in->sequence, im_ErrorCode_ERR_INVALID_PARAM,
                           "unknown command");
        break;
    }
}

static void
on_deadline(imgw_conn_t *c)
{
    imgw_session_t *s = imgw_conn_data(c);
    if (s == NULL || imgw_conn_closing(c)) {
        imgw_conn_abort(c);
        return;
    }
    if (!s->authed) {
        imgw_conn_close_ws(c, 4001, "authentication timeout");
        return;
    }
    imgw_core_loop_t *cl = s->cl;
    uint64_t hb = (uint64_t)cl->node->cfg->heartbeat_timeout * 1000;
    uint64_t last = imgw_conn_last_rx_ms(c);
    uint64_t now = imgw_loop_now_ms(cl->loop);
    if (now < last + hb) {
        imgw_conn_set_deadline(c, last + hb);
        return;
    }
    imgw_conn_close_ws(c, 4000, "heartbeat timeout");
}

static void
on_close(imgw_conn_t *c)
{
    imgw_session_t *s = imgw_conn_data(c);
    imgw_core_loop_t *cl = s->cl;
    const char *platform = imgw_session_platform(s);
    if (s->authed) {
        imgw_stat_dec(&cl->st.sessions_authed);
        act_event(ACT_LOGOUT, s->user, platform, NULL);
    }
    imgw_hooks_session_closed(s);
    if (s->user != NULL) {
        size_t left = 1;
        int removed = imgw_usermap_remove_n(cl->node->users, s->user,
                                            imgw_conn_ref(c), &left);
        if (removed && left == 0)
            imgw_hooks_presence(cl, s->user, platform, 0);
        /* The route belongs to this connection only if the user map still
         * pointed at it (a newer login on the platform owns it now). */
        if (removed && s->registered) {
            imgw_store_route_del(cl->store, s->user, platform,
                                 cl->node->cfg->broker_id, route_done, NULL);
            imgw_presence_changed(cl, s->user, platform, 0);
        }
    }
    imgw_presence_session_closed(s);
    imgw_free(s);
    imgw_conn_set_data(c, NULL);
}

static int
on_http(imgw_conn_t *c, const imgw_http_req_t *req)
{
    imgw_core_loop_t *cl = imgw_loop_data(imgw_conn_loop(c));
    return imgw_api_handle(cl, c, req);
}

static void
on_mail(imgw_loop_t *l, imgw_mpsc_node_t *n)
{
    imgw_core_loop_t *cl = imgw_loop_data(l);
    imgw_mail_t *m = (imgw_mail_t *)n;
    /* The broker's messages come back down through the downlink handler,
     * which routes them like local work; the rest is routing's mail. */
    if (m->kind == IMGW_MAIL_MQ)
        imgw_downlink_mail(cl, m);
    else
        imgw_deliver_mail(cl, m);
}

static void
on_tick(imgw_loop_t *l, uint64_t now_ms)
{
    imgw_core_loop_t *cl = imgw_loop_data(l);
    if (cl->index == 0) {
        /* now_ms is loop time (monotonic); the store's expiry stamps are
         * wall clock. */
        imgw_store_tick(cl->node->store, imgw_now_ms());
        act_tick(now_ms);
        imgw_presence_tick(cl, now_ms);
    }
}

static int
on_loop_start(imgw_loop_t *l)
{
    imgw_node_t *node = imgw_net_data(imgw_loop_net(l));
    imgw_core_loop_t *cl = node->loops[imgw_loop_index(l)];
    char err[256];
    cl->loop = l;
    imgw_core_loop_set_current(cl);
    imgw_loop_set_data(l, cl);
    const imgw_config_t *cfg = node->cfg;
    imgw_jwt_opts_t jo = {cfg->jwt_secret, cfg->jwt_public_key, cfg->leeway,
                          cfg->issuer,     cfg->audience,       cfg->app_ids,
                          !cfg->require_exp};
    int r = imgw_jwt_new(&cl->jwt, &jo, err, sizeof(err));
    if (r != 0) {
        IMGW_LOG_ERROR("%s", err);
        return r;
    }
    if ((r = imgw_hooks_loop_start(cl)) != 0)
        return r;
    return imgw_store_loop_open(node->store, cl->index, imgw_loop_uv(l),
                                &cl->store);
}

static void
on_loop_stop(imgw_loop_t *l)
{
    imgw_core_loop_t *cl = imgw_loop_data(l);
    imgw_hooks_loop_stop(cl);
    if (cl->store)
        imgw_store_loop_close(cl->store);
    cl->store = NULL;
    imgw_deliver_thread_free();
    imgw_msg_thread_free();
}

const imgw_net_handlers_t imgw_core_handlers = {
    .on_http = on_http,
    .on_upgrade = on_upgrade,
    .on_message = on_message,
    .on_deadline = on_deadline,
    .on_close = on_close,
    .on_mail = on_mail,
    .on_tick = on_tick,
    .on_loop_start = on_loop_start,
    .on_loop_stop = on_loop_stop,
};
