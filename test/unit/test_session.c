/*
 * test_session.c: unit tests for core/session.c, net's handlers that make
 * a WebSocket an IM session, on test/fuzz/fuzz_net.h's fake loop with
 * imgw_core_handlers installed over a real core loop (configuration
 * defaults, an HS256 secret, the memory store; the store's completions
 * run when the test runs the uv loop, as the real loop would). What is
 * checked is what clients see and what the node records: the handshake
 * token (accepted, refused with 401 and counted), the Origin check (403),
 * CMD_AUTH_REQ with the handshake's or its own token, refusals closing
 * with 4001, the user map and the gauges, heartbeats answered, a second
 * login on the same platform kicking the first (KickPush, 4002), the auth
 * deadline, the frame rate limit (ERR_SEND_TOO_FAST), and on_close taking
 * the user offline.
 */
#include "fuzz_net.h"

#include "alloc.h"
#include "jwt.h"
#include "node.h"
#include "session.h"
#include "store.h"
#include "test.h"

#define SECRET "0123456789abcdef0123456789abcdef-test-secret"

static imgw_config_t cfg;
static imgw_node_t node;
static imgw_core_loop_t core;
static imgw_core_loop_t *core_ptr = &core;

/* Output per connection (at most 4 at a time). */
typedef struct outbuf_s {
    imgw_conn_t *c; /* compared only: it may be freed already */
    uint32_t slot, gen; /* its table entry, to tell whether it lives */
    char b[16384];
    size_t n;
} outbuf_t;
static outbuf_t outs[4];

static outbuf_t *
out_of(imgw_conn_t *c)
{
    for (int i = 0; i < 4; i++)
        if (outs[i].c == c)
            return &outs[i];
    for (int i = 0; i < 4; i++)
        if (outs[i].c == NULL) {
            outs[i].c = c;
            outs[i].n = 0;
            return &outs[i];
        }
    return &outs[0];
}

static void
sink(imgw_conn_t *c, const uint8_t *p, size_t n)
{
    outbuf_t *o = out_of(c);
    if (n > sizeof(o->b) - o->n)
        n = sizeof(o->b) - o->n;
    memcpy(o->b + o->n, p, n);
    o->n += n;
}

static int
has(imgw_conn_t *c, const char *s)
{
    outbuf_t *o = out_of(c);
    return memmem(o->b, o->n, s, strlen(s)) != NULL;
}

/* The code of the close frame the server wrote to c, or -1. */
static int
close_code(imgw_conn_t *c)
{
    outbuf_t *o = out_of(c);
    for (size_t i = 0; i + 3 < o->n; i++)
        if ((uint8_t)o->b[i] == 0x88 && (uint8_t)o->b[i + 1] >= 2 &&
            (uint8_t)o->b[i + 1] < 126)
            return ((uint8_t)o->b[i + 2] << 8) | (uint8_t)o->b[i + 3];
    return -1;
}

static void
forget(imgw_conn_t *c)
{
    outbuf_t *o = out_of(c);
    o->c = NULL;
    o->n = 0;
}

static int
setup(void)
{
    char err[256];
    imgw_config_defaults(&cfg);
    snprintf(cfg.jwt_secret, sizeof(cfg.jwt_secret), "%s", SECRET);
    snprintf(cfg.broker_id, sizeof(cfg.broker_id), "test");
    cfg.max_frame_bytes = FUZZ_MAX_FRAME;
    cfg.send_rate = 1; /* other frames: 20 burst, 10/s */
    imgw_store_cfg_t sc;
    memset(&sc, 0, sizeof(sc));
    sc.backend = "memory";
    sc.retention_count = 100;
    sc.retention_days = 1;
    sc.dedupe_ttl = 60;
    sc.n_loops = 1;
    if (imgw_store_open(&node.store, &sc, err, sizeof(err)) != 0 ||
        imgw_usermap_new(&node.users, 4) != 0 ||
        imgw_watchmap_new(&node.watches, 4) != 0)
        return -1;
    node.cfg = &cfg;
    node.n_loops = 1;
    node.loops = &core_ptr;
    imgw_id_init(&node.ids, 1);
    core.node = &node;
    core.scratch_cap = (size_t)cfg.max_frame_bytes + 4096;
    core.scratch = imgw_xmalloc(core.scratch_cap);
    core.out_cap = (size_t)cfg.max_frame_bytes * 8 + 65536;
    core.out = imgw_xmalloc(core.out_cap);

    fuzz_net_init();
    fuzz_net_sink = sink;
    fuzz_net->h = &imgw_core_handlers;
    fuzz_net->opts.handlers = &imgw_core_handlers;
    fuzz_net->opts.data = &node;
    /* loop.c's part at thread start. */
    return imgw_core_handlers.on_loop_start(fuzz_loop);
}

/*
 * The loop's connection table, as conn.c's accept path fills it (the fake
 * loop has no accept): store callbacks and kicks find a session by ref.
 * conn_close_cb takes the connection out again.
 */
static void
table_link(imgw_conn_t *c)
{
    imgw_loop_t *l = fuzz_loop;
    if (l->cap_slots == 0) {
        l->cap_slots = 64;
        l->slots = imgw_xcalloc(l->cap_slots, sizeof(*l->slots));
        l->gens = imgw_xcalloc(l->cap_slots, sizeof(*l->gens));
        l->free_slots = imgw_xcalloc(l->cap_slots, sizeof(*l->free_slots));
    }
    uint32_t s = l->n_free > 0 ? l->free_slots[--l->n_free]
                               : (uint32_t)l->n_slots++;
    if (s >= l->cap_slots)
        abort(); /* a test that keeps 64 connections open */
    l->slots[s] = c;
    c->slot = s;
    c->gen = ++l->gens[s];
}

/* A new connection reading HTTP; its data is core's session after 101. */
static imgw_conn_t *
conn_new(void)
{
    imgw_conn_t *c = imgw__conn_new(fuzz_loop);
    if (c == NULL || imgw__conn_open(c, eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) != 0)
        abort();
    table_link(c);
    forget(c);
    outbuf_t *o = out_of(c);
    o->slot = c->slot;
    o->gen = c->gen;
    return c;
}

static void
feed(imgw_conn_t *c, const void *p, size_t n)
{
    memcpy(fuzz_loop->rbuf, p, n);
    imgw__conn_on_read(c, fuzz_loop->rbuf, n);
    fuzz_net_flush(c);
    /* The store answers from the loop's idle step: run it, then write. */
    uv_run(&fuzz_loop->uv, UV_RUN_NOWAIT);
    fuzz_net_flush(c);
}

static void
upgrade(imgw_conn_t *c, const char *query, const char *extra)
{
    char req[2048];
    int n = snprintf(req, sizeof(req),
                     "GET /ws%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n%s\r\n",
                     query, extra ? extra : "");
    feed(c, req, (size_t)n);
}

/* A masked text frame (payload < 65536). */
static void
send_text(imgw_conn_t *c, const char *text)
{
    static uint8_t f[8192];
    size_t n = strlen(text), h;
    f[0] = 0x81;
    if (n < 126) {
        f[1] = (uint8_t)(0x80 | n);
        h = 2;
    } else {
        f[1] = 0x80 | 126;
        f[2] = (uint8_t)(n >> 8);
        f[3] = (uint8_t)n;
        h = 4;
    }
    memset(f + h, 0, 4); /* mask key 0: the payload as it is */
    memcpy(f + h + 4, text, n);
    feed(c, f, h + 4 + n);
}

static void
token(const char *user, char *out, size_t cap)
{
    int n = imgw_jwt_sign_hs256(SECRET, user, imgw_now_ms() / 1000, 3600, out,
                                cap);
    if (n <= 0)
        abort();
}

static void
conn_end(imgw_conn_t *c)
{
    /* A connection the test closed (4001, kick) is freed already. */
    outbuf_t *o = out_of(c);
    imgw_conn_t *live = fuzz_loop->slots[o->slot];
    if (live == c && live->gen == o->gen && c->state != IMGW_CONN_CLOSED)
        imgw__conn_close_now(c);
    uv_run(&fuzz_loop->uv, UV_RUN_NOWAIT); /* conn_close_cb: on_close */
    forget(c);
}

static size_t
online(const char *user)
{
    imgw_usermap_conn_t conns[IMGW_USERMAP_MAX_CONNS];
    return imgw_usermap_get(node.users, user, conns, IMGW_USERMAP_MAX_CONNS);
}

TEST(handshake_token_then_auth)
{
    char tok[1024], q[1100];
    token("alice", tok, sizeof(tok));
    snprintf(q, sizeof(q), "?token=%s", tok);
    uint64_t ok0 = imgw_stat_get(&core.st.auth_ok);

    imgw_conn_t *c = conn_new();
    upgrade(c, q, NULL);
    CHECK(has(c, "HTTP/1.1 101"));
    CHECK(c->state == IMGW_CONN_WS);
    CHECK_EQ_INT(online("alice"), 0); /* not before CMD_AUTH_REQ */
    /* The handshake's token authenticates; the request names none. */
    send_text(c, "{\"command\":\"CMD_AUTH_REQ\",\"sequence\":7,"
                 "\"body\":{\"platform\":\"web\"}}");
    CHECK(has(c, "\"command\":\"CMD_AUTH_RSP\",\"sequence\":7"));
    CHECK(has(c, "\"error_code\":\"ERR_SUCCESS\""));
    CHECK_EQ_INT(imgw_stat_get(&core.st.auth_ok), ok0 + 1);
    CHECK_EQ_INT(imgw_stat_get(&core.st.sessions_authed), 1);
    CHECK_EQ_INT(online("alice"), 1);

    /* A heartbeat is answered with the server's time. */
    send_text(c, "{\"command\":\"CMD_HEARTBEAT_REQ\",\"sequence\":8,"
                 "\"body\":{}}");
    CHECK(has(c, "\"command\":\"CMD_HEARTBEAT_RSP\",\"sequence\":8"));
    CHECK(has(c, "\"server_time\":"));

    /* A second CMD_AUTH_REQ is refused, the session stays. */
    send_text(c, "{\"command\":\"CMD_AUTH_REQ\",\"sequence\":9,\"body\":{}}");
    CHECK(has(c, "already authenticated"));
    CHECK(c->state == IMGW_CONN_WS);

    /* Closing takes alice offline and the gauge down. */
    conn_end(c);
    CHECK_EQ_INT(online("alice"), 0);
    CHECK_EQ_INT(imgw_stat_get(&core.st.sessions_authed), 0);
}

TEST(auth_with_own_token)
{
    char tok[1024], msg[1400];
    token("bob", tok, sizeof(tok));
    imgw_conn_t *c = conn_new();
    upgrade(c, "", NULL); /* no handshake token: allowed */
    CHECK(has(c, "HTTP/1.1 101"));
    snprintf(msg, sizeof(msg),
             "{\"command\":\"CMD_AUTH_REQ\",\"sequence\":1,\"body\":"
             "{\"token\":\"%s\",\"user_id\":\"bob\",\"platform\":\"ios\"}}",
             tok);
    send_text(c, msg);
    CHECK(has(c, "\"error_code\":\"ERR_SUCCESS\""));
    CHECK_EQ_INT(online("bob"), 1);
    conn_end(c);
    CHECK_EQ_INT(online("bob"), 0);
}

TEST(auth_refusals_close_4001)
{
    char tok[1024], msg[1400];
    uint64_t fail0 = imgw_stat_get(&core.st.auth_fail[1]);

    /* No token anywhere. */
    imgw_conn_t *c = conn_new();
    upgrade(c, "", NULL);
    send_text(c, "{\"command\":\"CMD_AUTH_REQ\",\"sequence\":1,\"body\":{}}");
    CHECK(has(c, "token required"));
    CHECK_EQ_INT(close_code(c), 4001);
    CHECK(imgw_stat_get(&core.st.auth_fail[1]) > fail0);
    conn_end(c);

    /* A token for someone else than the user_id claimed. */
    token("carol", tok, sizeof(tok));
    c = conn_new();
    upgrade(c, "", NULL);
    snprintf(msg, sizeof(msg),
             "{\"command\":\"CMD_AUTH_REQ\",\"sequence\":2,\"body\":"
             "{\"token\":\"%s\",\"user_id\":\"dave\"}}",
             tok);
    send_text(c, msg);
    CHECK(has(c, "user_id does not match the token"));
    CHECK_EQ_INT(close_code(c), 4001);
    CHECK_EQ_INT(online("carol"), 0);
    CHECK_EQ_INT(online("dave"), 0);
    conn_end(c);

    /* A token signed with another secret. */
    c = conn_new();
    upgrade(c, "", NULL);
    char bad[1024];
    imgw_jwt_sign_hs256("another-secret-another-secret-another-secret",
                        "eve", imgw_now_ms() / 1000, 3600, bad, sizeof(bad));
    snprintf(msg, sizeof(msg),
             "{\"command\":\"CMD_AUTH_REQ\",\"sequence\":3,\"body\":"
             "{\"token\":\"%s\"}}",
             bad);
    send_text(c, msg);
    CHECK_EQ_INT(close_code(c), 4001);
    CHECK_EQ_INT(online("eve"), 0);
    conn_end(c);
}

TEST(handshake_refusals)
{
    uint64_t h401 = imgw_stat_get(&core.st.handshake_401);
    imgw_conn_t *c = conn_new();
    upgrade(c, "?token=not.a.token", NULL);
    CHECK(has(c, "HTTP/1.1 401"));
    CHECK(!has(c, "HTTP/1.1 101"));
    CHECK_EQ_INT(imgw_stat_get(&core.st.handshake_401), h401 + 1);
    conn_end(c);

    snprintf(cfg.origins, sizeof(cfg.origins), "https://good.example");
    uint64_t ro = imgw_stat_get(&core.st.refused_origin);
    c = conn_new();
    upgrade(c, "", "Origin: https://evil.example\r\n");
    CHECK(has(c, "HTTP/1.1 403"));
    CHECK_EQ_INT(imgw_stat_get(&core.st.refused_origin), ro + 1);
    conn_end(c);
    c = conn_new();
    upgrade(c, "", "Origin: https://good.example\r\n");
    CHECK(has(c, "HTTP/1.1 101"));
    conn_end(c);
    cfg.origins[0] = '\0';
}

TEST(second_login_kicks_the_first)
{
    char tok[1024], q[1100];
    const char *auth = "{\"command\":\"CMD_AUTH_REQ\",\"sequence\":1,"
                       "\"body\":{\"platform\":\"web\"}}";
    token("frank", tok, sizeof(tok));
    snprintf(q, sizeof(q), "?token=%s", tok);
    uint64_t k0 = imgw_stat_get(&core.st.kicks);

    imgw_conn_t *a = conn_new();
    upgrade(a, q, NULL);
    send_text(a, auth);
    CHECK(has(a, "ERR_SUCCESS"));
    imgw_conn_t *b = conn_new();
    upgrade(b, q, NULL);
    send_text(b, auth);
    CHECK(has(b, "ERR_SUCCESS"));
    fuzz_net_flush(a);
    /* The first connection is told and closed; the second owns the slot. */
    CHECK(has(a, "\"command\":\"CMD_KICK_PUSH\""));
    CHECK_EQ_INT(close_code(a), 4002);
    CHECK_EQ_INT(imgw_stat_get(&core.st.kicks), k0 + 1);
    CHECK_EQ_INT(online("frank"), 1);
    CHECK(b->state == IMGW_CONN_WS);
    conn_end(a);
    CHECK_EQ_INT(online("frank"), 1); /* the kicked one leaves b's entry */
    conn_end(b);
    CHECK_EQ_INT(online("frank"), 0);
}

TEST(auth_deadline)
{
    imgw_conn_t *c = conn_new();
    upgrade(c, "", NULL);
    CHECK(c->state == IMGW_CONN_WS);
    /* What the timer wheel calls when auth_timeout passes. */
    imgw_core_handlers.on_deadline(c);
    fuzz_net_flush(c);
    CHECK_EQ_INT(close_code(c), 4001);
    CHECK(has(c, "authentication timeout"));
    conn_end(c);
}

TEST(frame_rate_limit)
{
    uint64_t rl0 = imgw_stat_get(&core.st.rate_limited);
    imgw_conn_t *c = conn_new();
    upgrade(c, "", NULL);
    /* send_rate 1: 20 frames of burst (the loop's clock stands still). */
    for (int i = 0; i < 25; i++)
        send_text(c, "{\"command\":\"CMD_HEARTBEAT_REQ\",\"sequence\":1,"
                     "\"body\":{}}");
    CHECK_EQ_INT(imgw_stat_get(&core.st.heartbeats) >= 20, 1);
    CHECK_EQ_INT(imgw_stat_get(&core.st.rate_limited) - rl0, 5);
    CHECK(has(c, "\"error_code\":\"ERR_SEND_TOO_FAST\""));
    CHECK(has(c, "too many frames"));
    conn_end(c);
}

int
main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (setup() != 0) {
        CHECK(!"setup");
        TEST_DONE();
    }
    RUN(handshake_token_then_auth);
    RUN(auth_with_own_token);
    RUN(auth_refusals_close_4001);
    RUN(handshake_refusals);
    RUN(second_login_kicks_the_first);
    RUN(auth_deadline);
    RUN(frame_rate_limit);
    imgw_core_handlers.on_loop_stop(fuzz_loop);
    uv_run(&fuzz_loop->uv, UV_RUN_NOWAIT);
    imgw_jwt_free(core.jwt);
    imgw_store_close(node.store);
    imgw_usermap_free(node.users);
    imgw_watchmap_free(node.watches);
    imgw_free(core.scratch);
    imgw_free(core.out);
    TEST_DONE();
}
