/*
 * test_store_redis.c: the store interface over the "redis" backend against
 * a real redis-server (started by test/integration/test_store_redis.py,
 * which passes its URL). The semantics mode runs the store contract suite
 * (store_contract.c, the cases every backend passes) first, then what is
 * Redis's own: the keys and TTLs behind each request, scripts, timeouts,
 * closing; what Redis does differently is checked as docs/store.md says.
 *
 *   test_store_redis semantics URL   every request kind, key layout, TTLs,
 *                                    NOSCRIPT retry, timeouts (CLIENT PAUSE),
 *                                    loop_close with requests in flight
 *   test_store_redis smoke URL       connect (unix socket, AUTH), append, sync
 *   test_store_redis badauth URL     wrong password: never ready, EBUSY
 *   test_store_redis outage URL      driven over stdin/stdout by the python
 *                                    wrapper, which kills and restarts Redis
 *
 * Each mode ends with "N passed, N failed" (test.h) and exits 1 on failure.
 *
 * Threads: one, running a uv loop; requests are asynchronous, so each
 * helper issues a request and runs the loop until its callback has run.
 * A plain synchronous hiredis connection inspects keys and TTLs.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <uv.h>

#include "err.h"
#include "log.h"
#include "redis_impl.h"
#include "store.h"
#include "store_contract.h"
#include "store_impl.h"
#include "test.h"

static uv_loop_t loop_;
static uv_loop_t *L = &loop_;
static uv_timer_t pump;
static const char *URL;
static redisContext *RC; /* inspection connection */

static void
pump_cb(uv_timer_t *t)
{
    (void)t;
}

/* Runs the loop until *flag or ms have passed; returns *flag. */
static int
wait_for(const int *flag, int ms)
{
    uv_update_time(L);
    uint64_t end = uv_now(L) + (uint64_t)ms;
    while (!*flag && uv_now(L) < end)
        uv_run(L, UV_RUN_ONCE);
    return *flag;
}

static void
sleep_loop(int ms)
{
    int never = 0;
    wait_for(&never, ms);
}

/* ---- inspection over a synchronous connection ------------------------- */

static void
rc_connect(void)
{
    imgw__redis_url_t u;
    char err[256];
    if (imgw__redis_url_parse(URL, &u, err, sizeof(err)) != 0) {
        printf("bad URL %s: %s\n", URL, err);
        exit(2);
    }
    struct timeval tv = {3, 0};
    RC = u.path ? redisConnectUnixWithTimeout(u.path, tv)
                : redisConnectWithTimeout(u.host, u.port, tv);
    if (RC == NULL || RC->err) {
        printf("cannot connect to %s\n", URL);
        exit(2);
    }
    redisSetTimeout(RC, tv);
    redisReply *r;
    if (u.password) {
        r = u.user ? redisCommand(RC, "AUTH %s %s", u.user, u.password)
                   : redisCommand(RC, "AUTH %s", u.password);
        freeReplyObject(r);
    }
    r = redisCommand(RC, "SELECT %d", u.db);
    freeReplyObject(r);
    imgw__redis_url_free(&u);
}

static void
rc_reconnect(void)
{
    if (RC)
        redisFree(RC);
    RC = NULL;
    rc_connect();
}

/* An integer command result, or LLONG_MIN on error. */
static long long
rc_int(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(RC, fmt, ap);
    va_end(ap);
    long long v = -999999;
    if (r && r->type == REDIS_REPLY_INTEGER)
        v = r->integer;
    freeReplyObject(r);
    return v;
}

/* A string result copied into a static buffer ("(nil)" / "(err)"). */
static const char *
rc_str(const char *fmt, ...)
{
    static char buf[512];
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(RC, fmt, ap);
    va_end(ap);
    if (r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements > 0) {
        redisReply *x = r->element[0]; /* first element of a list */
        r->element[0] = NULL;
        freeReplyObject(r);
        r = x;
    }
    if (r == NULL)
        snprintf(buf, sizeof(buf), "(err)");
    else if (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS)
        snprintf(buf, sizeof(buf), "%.*s", (int)r->len, r->str);
    else if (r->type == REDIS_REPLY_NIL)
        snprintf(buf, sizeof(buf), "(nil)");
    else
        snprintf(buf, sizeof(buf), "(err)");
    freeReplyObject(r);
    return buf;
}

static void
flushdb(void)
{
    freeReplyObject(redisCommand(RC, "FLUSHDB"));
}

/* ---- fixture ---------------------------------------------------------- */

static int
fx_open_url(fx_t *f, const char *url, int retention_count, int dedupe_ttl,
            int timeout_ms, int wait_ready)
{
    imgw_store_cfg_t cfg = {"redis", url,        retention_count, 7,
                            dedupe_ttl, timeout_ms, 1};
    cfg.max_conversations = sc_max_convs;
    char err[256];
    f->s = NULL;
    f->sl = NULL;
    int r = imgw_store_open(&f->s, &cfg, err, sizeof(err));
    if (r != 0) {
        printf("  cannot open the store: %s\n", err);
        exit(2);
    }
    if (imgw_store_loop_open(f->s, 0, L, &f->sl) != 0)
        exit(2);
    if (!wait_ready)
        return 0;
    uv_update_time(L);
    uint64_t end = uv_now(L) + 10000;
    while (!imgw_store_loop_ready(f->sl) && uv_now(L) < end)
        uv_run(L, UV_RUN_ONCE);
    return imgw_store_loop_ready(f->sl) ? 0 : -1;
}

static void
fx_open(fx_t *f, int retention_count, int dedupe_ttl)
{
    flushdb();
    if (fx_open_url(f, URL, retention_count, dedupe_ttl, 500, 1) != 0) {
        printf("  store never became ready\n");
        exit(2);
    }
}

static void
fx_close(fx_t *f)
{
    imgw_store_loop_close(f->sl);
    imgw_store_close(f->s);
    sleep_loop(20); /* let the close callbacks run */
}

/* ---- the contract suite's driver (store_contract.h) ------------------ */

#define SC_SETS_UNORDERED 1 /* SMEMBERS */

static void
sc_open(fx_t *f, int retention_count, int dedupe_ttl)
{
    fx_open(f, retention_count, dedupe_ttl);
}

static void
sc_close(fx_t *f)
{
    fx_close(f);
}

static int
sc_wait(fx_t *f, const int *flag)
{
    (void)f;
    return wait_for(flag, 5000);
}

static int64_t
sc_time_ms(uint64_t mid)
{
    return 1700000000000LL + (int64_t)mid;
}

#include "store_contract.c"

/* The value part of a "<stamp>:<value>" position, or "(nil)". */
static const char *
position(const char *key, const char *field)
{
    const char *v = rc_str("HGET %s %s", key, field);
    const char *c = strchr(v, ':');
    return c && strcmp(v, "(nil)") != 0 ? c + 1 : v;
}

/* ---- semantics ---------------------------------------------------------- */

TEST(open_errors)
{
    static const char *bad[] = {
        "", "http://x", "redis://", "redis://:@h", "redis://user@h",
        "redis://h:0", "redis://h:70000", "redis://h:12x", "redis://h/x",
        "redis://h/1?timeout=3", "redis://[::1", "rediss://h:1",
        "unix:relative/path", "unix:/tmp/s?db=x", "unix:/tmp/s?foo=1",
        "redis://:%zz@h", NULL};
    imgw_store_cfg_t cfg = {"redis", NULL, 100, 7, 86400, 500, 1};
    char err[256];
    for (int i = 0; bad[i]; i++) {
        imgw_store_t *s = (imgw_store_t *)1;
        cfg.redis_url = bad[i];
        int r = imgw_store_open(&s, &cfg, err, sizeof(err));
        CHECK_EQ_INT(r, IMGW_ECONFIG);
        CHECK(s == NULL && strstr(err, "redis_url") != NULL);
        if (r != IMGW_ECONFIG)
            printf("  url %s accepted\n", bad[i]);
    }
    static const char *good[] = {
        "redis://127.0.0.1:6379/0", "redis://localhost", "redis://h:1/15",
        "redis://:p%40ss@h:2/3", "redis://user:pw@[::1]:6380/2",
        "unix:/tmp/redis.sock", "unix:///tmp/redis.sock?db=2",
        "unix:/tmp/r.sock?db=1&password=x", NULL};
    for (int i = 0; good[i]; i++) {
        imgw_store_t *s = NULL;
        cfg.redis_url = good[i];
        int r = imgw_store_open(&s, &cfg, err, sizeof(err));
        CHECK_EQ_INT(r, 0);
        if (r != 0)
            printf("  url %s refused: %s\n", good[i], err);
        imgw_store_close(s);
    }
    imgw__redis_url_t u;
    CHECK_EQ_INT(imgw__redis_url_parse("redis://:p%40ss@h:2/3", &u, err,
                                       sizeof(err)),
                 0);
    CHECK(u.user == NULL && strcmp(u.password, "p@ss") == 0 &&
          strcmp(u.host, "h") == 0 && u.port == 2 && u.db == 3);
    imgw__redis_url_free(&u);
    CHECK_EQ_INT(imgw__redis_url_parse("redis://bob:pw@[::1]:6380/2", &u, err,
                                       sizeof(err)),
                 0);
    CHECK(strcmp(u.user, "bob") == 0 && strcmp(u.host, "::1") == 0 &&
          u.port == 6380 && u.db == 2);
    imgw__redis_url_free(&u);
    CHECK_EQ_INT(imgw__redis_url_parse("unix:///tmp/x.sock?db=4", &u, err,
                                       sizeof(err)),
                 0);
    CHECK(strcmp(u.path, "/tmp/x.sock") == 0 && u.db == 4 && u.host == NULL);
    imgw__redis_url_free(&u);
    /* Same configuration bounds as memory. */
    cfg.redis_url = "redis://h";
    cfg.retention_count = 0;
    imgw_store_t *s = NULL;
    CHECK_EQ_INT(imgw_store_open(&s, &cfg, err, sizeof(err)), IMGW_ECONFIG);
    CHECK(strstr(err, "retention_count") != NULL);
    cfg.retention_count = 10;
    CHECK_EQ_INT(imgw_store_open(&s, &cfg, err, sizeof(err)), 0);
    imgw_store_loop_t *sl = NULL;
    CHECK_EQ_INT(imgw_store_loop_open(s, 0, NULL, &sl), IMGW_EINVAL);
    imgw_store_close(s);
}

/* The contract's append_seq_per_user, then the keys behind it. */
TEST(append_keys)
{
    fx_t f;
    fx_open(&f, 1000, 86400);
    int64_t s2[2], s4[4];
    const char *ab[] = {"a", "b"}, *ac[] = {"a", "c"}, *ba[] = {"b", "a"};
    const char *grp[] = {"c", "a", "b", "d"};
    CHECK_EQ_INT(append_msg(&f, "", 1, "s_a_b", ab, 2, s2, NULL), 0);
    CHECK_EQ_INT(append_msg(&f, "", 2, "s_a_c", ac, 2, s2, NULL), 0);
    CHECK_EQ_INT(append_msg(&f, "", 3, "s_a_b", ba, 2, s2, NULL), 0);
    CHECK_EQ_INT(append_msg(&f, "", 4, "g_g1", grp, 4, s4, NULL), 0);
    /* Key layout (protocol.md 6 and docs/store.md). */
    CHECK_EQ_STR(rc_str("GET IM-SEQ-a"), "4");
    CHECK_EQ_STR(rc_str("TYPE IM-TL-a"), "zset");
    CHECK_EQ_INT(rc_int("ZCARD IM-TL-a"), 4);
    const char *m = rc_str("ZRANGE IM-TL-a 0 0");
    CHECK(strncmp(m, "1:", 2) == 0 && strcmp(strrchr(m, ':'), ":1") == 0);
    CHECK_EQ_STR(rc_str("TYPE IM-MSG-4"), "hash");
    CHECK_EQ_STR(rc_str("HGET IM-MSG-4 sender"), "c");
    CHECK_EQ_STR(rc_str("HGET IM-MSG-4 conv"), "g_g1");
    long long pttl = rc_int("PTTL IM-MSG-4");
    CHECK(pttl > 7LL * 86400 * 1000 - 60000 && pttl <= 7LL * 86400 * 1000);
    pttl = rc_int("PTTL IM-TL-a");
    CHECK(pttl > 7LL * 86400 * 1000 - 60000 && pttl <= 7LL * 86400 * 1000);
    /* max_seq outlives the timeline: retention (7 days) + seq_idle_days
     * (default 30), from the last append. */
    long long sttl = rc_int("PTTL IM-SEQ-a");
    CHECK(sttl > 37LL * 86400 * 1000 - 60000 && sttl <= 37LL * 86400 * 1000);
    CHECK(sttl > rc_int("PTTL IM-TL-a"));
    fx_close(&f);
}

/* The contract's append_refused, then a script error half way. */
TEST(append_refused_keys)
{
    fx_t f;
    fx_open(&f, 1000, 86400);
    static int64_t seqs[IMGW_STORE_MAX_GROUP + 1];
    const char *one[] = {"a"};
    const char *u0[] = {"u0"};
    CHECK_EQ_INT(append_msg(&f, "", 1, "c", u0, 1, seqs, NULL), 0);
    CHECK_EQ_INT(append_msg(&f, "", 1, "c", one, 1, seqs, NULL), IMGW_EEXIST);
    CHECK_EQ_INT(max_seq(&f, "u0"), 1);
    /* A key of the wrong type: an error before any write, so nothing at all
     * is written (the message key and u0's seq stay as they were). */
    freeReplyObject(redisCommand(RC, "SET IM-TL-bad x"));
    const char *mix[] = {"u0", "bad"};
    CHECK_EQ_INT(append_msg(&f, "k", 2, "c", mix, 2, seqs, NULL), IMGW_EBUSY);
    CHECK_EQ_INT(max_seq(&f, "u0"), 1);
    CHECK_EQ_INT(rc_int("EXISTS IM-MSG-2"), 0);
    CHECK_EQ_INT(rc_int("EXISTS IM-DEDUP-u0:k"), 0);
    CHECK_EQ_INT(imgw_store_loop_ready(f.sl), 1);
    fx_close(&f);
}

TEST(retention)
{
    fx_t f;
    fx_open(&f, 5, 86400);
    const char *ab[] = {"a", "b"};
    int64_t s2[2];
    for (uint64_t i = 1; i <= 8; i++)
        append_msg(&f, "", i, "s_a_b", ab, 2, s2, NULL);
    sync_res_t *r = do_sync(&f, "a", 0, 0, 100);
    CHECK_EQ_INT(r->n, 5);
    CHECK_EQ_INT(r->seq[0], 4);
    CHECK_EQ_INT(r->seq[4], 8);
    CHECK_EQ_INT(r->mid[0], 4);
    CHECK_EQ_INT(r->server_max, 8);
    r = do_sync(&f, "a", 0, 2, 100);
    CHECK(r->n == 0 && !r->has_more);
    CHECK_EQ_INT(max_seq(&f, "a"), 8);
    CHECK_EQ_INT(rc_int("ZCARD IM-TL-b"), 5);
    CHECK_EQ_INT(rc_int("EXISTS IM-MSG-1"), 1); /* metadata lives on */

    /* Age: entries stored more than retention_days (7) ago are a prefix
     * of the timeline; plant three with an old stored time before two
     * fresh ones, as if Redis's clock had moved on by 8 days. */
    long long now_ms = 0;
    redisReply *t = redisCommand(RC, "TIME");
    if (t && t->elements == 2)
        now_ms = strtoll(t->element[0]->str, NULL, 10) * 1000 +
                 strtoll(t->element[1]->str, NULL, 10) / 1000;
    freeReplyObject(t);
    long long old = now_ms - 8LL * 86400 * 1000;
    for (int i = 1; i <= 5; i++)
        freeReplyObject(redisCommand(RC, "ZADD IM-TL-old %d %d:%lld:%d", i,
                                     900 + i, i <= 3 ? old : now_ms, 900 + i));
    freeReplyObject(redisCommand(RC, "SET IM-SEQ-old 5"));
    r = do_sync(&f, "old", 0, 0, 100);
    CHECK(r->status == 0 && r->n == 2 && r->seq[0] == 4 && r->mid[1] == 905 &&
          !r->has_more && r->server_max == 5);
    CHECK_EQ_INT(rc_int("ZCARD IM-TL-old"), 2); /* trimmed, not just hidden */
    for (int i = 1; i <= 3; i++)
        freeReplyObject(redisCommand(RC, "ZADD IM-TL-old2 %d %d:%lld:x", i,
                                     800 + i, old));
    freeReplyObject(redisCommand(RC, "SET IM-SEQ-old2 3"));
    const char *o2[] = {"old2"};
    CHECK_EQ_INT(append_msg(&f, "", 9, "c", o2, 1, s2, NULL), 0);
    CHECK_EQ_INT(s2[0], 4);
    CHECK_EQ_INT(rc_int("ZCARD IM-TL-old2"), 1); /* append trims too */
    fx_close(&f);
}

TEST(dedupe)
{
    fx_t f;
    fx_open(&f, 1000, 1);
    const char *ab[] = {"a", "b"}, *ba[] = {"b", "a"};
    int64_t s2[2] = {0, 0};
    imgw_store_append_t req;
    CHECK_EQ_INT(append_msg(&f, "c1", 100, "s_a_b", ab, 2, s2, &req), 0);
    CHECK_EQ_INT(req.duplicate, 0);
    int64_t first = s2[0];
    /* IM-DEDUP-{sender}:{client_msg_id}: ':' cannot occur in a user id. */
    CHECK_EQ_STR(rc_str("GET IM-DEDUP-a:c1"), "100:1");
    long long ttl = rc_int("PTTL IM-DEDUP-a:c1");
    CHECK(ttl > 0 && ttl <= 1000);
    s2[0] = s2[1] = -7;
    CHECK_EQ_INT(append_msg(&f, "c1", 101, "s_a_b", ab, 2, s2, &req), 0);
    CHECK_EQ_INT(req.duplicate, 1);
    CHECK_EQ_INT(req.dup_message_id, 100);
    CHECK_EQ_INT(req.dup_seq, first);
    CHECK(s2[0] == -7 && s2[1] == -7);
    CHECK_EQ_INT(max_seq(&f, "a"), 1);
    CHECK_EQ_INT(max_seq(&f, "b"), 1);
    CHECK_EQ_INT(rc_int("EXISTS IM-MSG-101"), 0);
    CHECK_EQ_INT(append_msg(&f, "c1", 102, "s_a_b", ba, 2, s2, &req), 0);
    CHECK_EQ_INT(req.duplicate, 0);
    append_msg(&f, "", 103, "s_a_b", ab, 2, s2, &req);
    append_msg(&f, "", 104, "s_a_b", ab, 2, s2, &req);
    CHECK_EQ_INT(req.duplicate, 0);
    CHECK_EQ_INT(max_seq(&f, "a"), 4);
    /* Expiry after dedupe_ttl (1 s here). */
    sleep_loop(1100);
    append_msg(&f, "c1", 106, "s_a_b", ab, 2, s2, &req);
    CHECK_EQ_INT(req.duplicate, 0);
    CHECK_EQ_INT(s2[0], 5);
    append_msg(&f, "c1", 107, "s_a_b", ab, 2, s2, &req);
    CHECK_EQ_INT(req.duplicate, 1);
    CHECK_EQ_INT(req.dup_message_id, 106);
    CHECK_EQ_INT(req.dup_seq, 5);
    fx_close(&f);
}

/*
 * Audit item 1: with the contract's IM-DEDUP-{user}-{cmid}, ("eve", "x-1")
 * and ("eve-x", "1") shared IM-DEDUP-eve-x-1, so eve-x's send was answered
 * as a duplicate of eve's message (its id and seq) and never stored. Both
 * must be stored, with their own ids, and each pair must still dedupe.
 */
TEST(dedupe_key_collision_keys)
{
    fx_t f;
    fx_open(&f, 1000, 86400);
    int64_t s2[2];
    imgw_store_append_t req;
    const char *eve[] = {"eve", "bob"}, *evex[] = {"eve-x", "bob"};
    CHECK_EQ_INT(append_msg(&f, "x-1", 1, "s_bob_eve", eve, 2, s2, &req), 0);
    CHECK_EQ_INT(req.duplicate, 0);
    CHECK_EQ_INT(append_msg(&f, "1", 2, "s_bob_eve-x", evex, 2, s2, &req), 0);
    printf("  eve-x/1: duplicate %d (dup id %" PRIu64 "), seqs %" PRId64
           " %" PRId64 "\n",
           req.duplicate, req.dup_message_id, s2[0], s2[1]);
    CHECK_EQ_INT(req.duplicate, 0);
    CHECK_EQ_INT(s2[0], 1);
    CHECK_EQ_INT(s2[1], 2);
    CHECK_EQ_INT(rc_int("EXISTS IM-MSG-2"), 1);
    CHECK_EQ_STR(rc_str("GET IM-DEDUP-eve:x-1"), "1:1");
    CHECK_EQ_STR(rc_str("GET IM-DEDUP-eve-x:1"), "2:1");
    CHECK_EQ_INT(rc_int("EXISTS IM-DEDUP-eve-x-1"), 0);
    sync_res_t *r = do_sync(&f, "bob", 0, 0, 10);
    CHECK(r->n == 2 && r->mid[0] == 1 && r->mid[1] == 2);
    CHECK_EQ_INT(append_msg(&f, "1", 3, "s_bob_eve-x", evex, 2, s2, &req), 0);
    CHECK(req.duplicate == 1 && req.dup_message_id == 2);
    CHECK_EQ_INT(append_msg(&f, "x-1", 4, "s_bob_eve", eve, 2, s2, &req), 0);
    CHECK(req.duplicate == 1 && req.dup_message_id == 1);
    /* A client_msg_id may hold ':' itself: the first ':' ends the user. */
    const char *ab[] = {"a", "b"};
    CHECK_EQ_INT(append_msg(&f, "b:c", 5, "s_a_b", ab, 2, s2, &req), 0);
    CHECK_EQ_STR(rc_str("GET IM-DEDUP-a:b:c"), "5:1");
    /* Ids outside the syntax never reach Redis (store.c refuses them). */
    const char *colon[] = {"a:b", "c"}, *ctl[] = {"a", "b\x01"};
    CHECK_EQ_INT(append_msg(&f, "c", 6, "x", colon, 2, s2, NULL), IMGW_EINVAL);
    CHECK_EQ_INT(append_msg(&f, "c", 6, "x", ctl, 2, s2, NULL), IMGW_EINVAL);
    CHECK_EQ_INT(append_msg(&f, "a b", 6, "x", ab, 2, s2, NULL), IMGW_EINVAL);
    CHECK_EQ_INT(do_sync(&f, "a b", 0, 0, 10)->status, IMGW_EINVAL);
    CHECK_EQ_INT(max_seq(&f, "a:"), -1000 + IMGW_EINVAL);
    CHECK_EQ_INT(
        DONE(&f, imgw_store_group_set(f.sl, "g*", ab, 2, done_cb, res)),
        IMGW_EINVAL);
    CHECK_EQ_INT(rc_int("EXISTS IM-MSG-6"), 0);
    fx_close(&f);
}

/*
 * Audit item 6: IM-SEQ has a TTL (retention + seq_idle_days) that every
 * append, sync, max_seq (auth) and route refresh (heartbeat) restarts, so
 * ids nobody uses do not keep a key forever, while a counter never expires
 * under a timeline or an active client. Nothing creates an IM-SEQ for a
 * user that has none.
 */
TEST(seq_ttl)
{
    fx_t f;
    fx_open(&f, 1000, 86400);
    const long long full = 37LL * 86400 * 1000; /* 7 + 30 days */
    int64_t s2[2];
    const char *ab[] = {"a", "b"};
    CHECK_EQ_INT(append_msg(&f, "", 1, "s_a_b", ab, 2, s2, NULL), 0);
    long long t = rc_int("PTTL IM-SEQ-b");
    printf("  PTTL IM-SEQ-b after an append: %lld ms\n", t);
    CHECK(t > full - 60000 && t <= full);
    /* Each kind of use restarts it. */
    freeReplyObject(redisCommand(RC, "PEXPIRE IM-SEQ-a 100000"));
    CHECK_EQ_INT(max_seq(&f, "a"), 1);
    CHECK(rc_int("PTTL IM-SEQ-a") > full - 60000);
    freeReplyObject(redisCommand(RC, "PEXPIRE IM-SEQ-a 100000"));
    CHECK_EQ_INT(do_sync(&f, "a", 0, 0, 10)->n, 1);
    CHECK(rc_int("PTTL IM-SEQ-a") > full - 60000);
    freeReplyObject(redisCommand(RC, "PEXPIRE IM-SEQ-a 100000"));
    CHECK_EQ_INT(
        DONE(&f, imgw_store_route_refresh(f.sl, "a", 60, done_cb, res)), 0);
    CHECK(rc_int("PTTL IM-SEQ-a") > full - 60000);
    /* Unknown users: no key appears. */
    CHECK_EQ_INT(max_seq(&f, "ghost"), 0);
    CHECK_EQ_INT(do_sync(&f, "ghost", 0, 0, 10)->n, 0);
    imgw_store_route_refresh(f.sl, "ghost", 60, NULL, NULL);
    CHECK_EQ_INT(max_seq(&f, "ghost"), 0);
    CHECK_EQ_INT(rc_int("EXISTS IM-SEQ-ghost"), 0);
    /* A pre-existing counter without TTL (older nodes) gets one on use. */
    freeReplyObject(redisCommand(RC, "SET IM-SEQ-old 9"));
    CHECK_EQ_INT(rc_int("TTL IM-SEQ-old"), -1);
    CHECK_EQ_INT(max_seq(&f, "old"), 9);
    CHECK(rc_int("PTTL IM-SEQ-old") > full - 60000);
    /* Expired: the user starts again at 1 (its timeline expired first). */
    freeReplyObject(redisCommand(RC, "DEL IM-SEQ-b IM-TL-b"));
    CHECK_EQ_INT(append_msg(&f, "", 2, "s_a_b", ab, 2, s2, NULL), 0);
    CHECK_EQ_INT(s2[0], 2);
    CHECK_EQ_INT(s2[1], 1);
    fx_close(&f);

    /* seq_idle_days is configurable (1..3650). */
    imgw_store_cfg_t cfg = {"redis", URL, 100, 7, 60, 500, 1};
    imgw_store_t *s = NULL;
    char err[256];
    cfg.seq_idle_days = 3651;
    CHECK_EQ_INT(imgw_store_open(&s, &cfg, err, sizeof(err)), IMGW_ECONFIG);
    CHECK(strstr(err, "seq_idle_days") != NULL);
    cfg.seq_idle_days = -1;
    CHECK_EQ_INT(imgw_store_open(&s, &cfg, err, sizeof(err)), IMGW_ECONFIG);
}

/* The resume contract's store side: IM-EPOCH-{u} is the id of the message
 * that gave the timeline seq 1, lives as long as IM-SEQ-{u}, and a flush
 * (the timeline lost) gives the next message a new one. */
TEST(timeline_epoch)
{
    fx_t f;
    fx_open(&f, 3, 86400);
    const char *ab[] = {"a", "b"};
    int64_t s2[2];
    const uint64_t big = 18446744073709551000ull; /* a Lua number rounds it */
    CHECK_EQ_INT(max_seq(&f, "a"), 0);
    CHECK(last_epoch == 0);
    sync_res_t *r = do_sync(&f, "a", 0, 0, 10);
    CHECK(r->status == 0 && r->epoch == 0 && r->oldest == 1);
    CHECK_EQ_INT(append_msg(&f, "", big, "c", ab, 2, s2, NULL), 0);
    for (uint64_t i = 1; i <= 4; i++)
        CHECK_EQ_INT(append_msg(&f, "", big + i, "c", ab, 2, s2, NULL), 0);
    CHECK_EQ_INT(max_seq(&f, "a"), 5);
    printf("  epoch of a: %llu, IM-EPOCH-a = %s\n",
           (unsigned long long)last_epoch, rc_str("GET IM-EPOCH-a"));
    CHECK(last_epoch == big);
    long long ts = rc_int("PTTL IM-SEQ-a"), te = rc_int("PTTL IM-EPOCH-a");
    printf("  PTTL IM-SEQ-a %lld, IM-EPOCH-a %lld\n", ts, te);
    CHECK(te > 0 && te > ts - 60000 && te <= ts + 60000);
    r = do_sync(&f, "a", 0, 0, 10);
    printf("  sync: oldest %lld, max %lld\n", (long long)r->oldest,
           (long long)r->server_max);
    CHECK(r->epoch == big && r->oldest == 3 && r->server_max == 5 && r->n == 3);
    /* Heartbeats keep the epoch alive beside the counter. */
    freeReplyObject(redisCommand(RC, "PEXPIRE IM-EPOCH-a 100000"));
    imgw_store_route_refresh(f.sl, "a", 60, NULL, NULL);
    CHECK_EQ_INT(max_seq(&f, "a"), 5);
    CHECK(rc_int("PTTL IM-EPOCH-a") > 100000);
    /* The timeline lost: no epoch until the next message starts one. */
    flushdb();
    CHECK_EQ_INT(max_seq(&f, "a"), 0);
    CHECK(last_epoch == 0);
    r = do_sync(&f, "a", 4, 0, 10);
    CHECK(r->status == 0 && r->epoch == 0 && r->server_max == 0);
    CHECK_EQ_INT(append_msg(&f, "", 77, "c", ab, 2, s2, NULL), 0);
    CHECK_EQ_INT(s2[0], 1);
    CHECK_EQ_INT(max_seq(&f, "b"), 1);
    printf("  epoch of b after the flush: %llu\n",
           (unsigned long long)last_epoch);
    CHECK(last_epoch == 77);
    fx_close(&f);
}

TEST(revoke_and_msg_get)
{
    fx_t f;
    fx_open(&f, 1000, 86400);
    const char *grp[] = {"a", "b", "c"};
    int64_t s3[3];
    append_msg(&f, "", 77, "g_g1", grp, 3, s3, NULL);
    append_msg(&f, "", 78, "g_g1", grp, 3, s3, NULL);
    msg_res_t *r = msg_get(&f, 77);
    CHECK_EQ_INT(r->status, 0);
    CHECK_EQ_INT(r->calls, 1);
    CHECK_EQ_INT(r->m.message_id, 77);
    CHECK_EQ_STR(r->sender, "a");
    CHECK_EQ_STR(r->conv, "g_g1");
    CHECK_EQ_INT(r->m.server_time_ms, 1700000000000LL + 77);
    CHECK_EQ_INT(r->m.revoked, 0);
    CHECK_EQ_INT(msg_get(&f, 999)->status, IMGW_ENOTFOUND);

    CHECK_EQ_INT(DONE(&f, imgw_store_revoke(f.sl, 77, done_cb, res)), 0);
    CHECK_EQ_INT(msg_get(&f, 77)->m.revoked, 1);
    CHECK_EQ_INT(msg_get(&f, 78)->m.revoked, 0);
    CHECK_EQ_INT(DONE(&f, imgw_store_revoke(f.sl, 999, done_cb, res)),
                 IMGW_ENOTFOUND);
    CHECK_EQ_INT(rc_int("EXISTS IM-MSG-999"), 0); /* not created */
    CHECK_EQ_INT(imgw_store_revoke(f.sl, 78, NULL, NULL), 0); /* cb NULL */
    for (int u = 0; u < 3; u++) {
        sync_res_t *sr = do_sync(&f, grp[u], 0, 0, 10);
        CHECK(sr->n == 2 && sr->revoked[0] == 1 && sr->revoked[1] == 1);
    }
    /* Metadata gone (expired): ENOTFOUND for both. */
    freeReplyObject(redisCommand(RC, "DEL IM-MSG-77"));
    CHECK_EQ_INT(msg_get(&f, 77)->status, IMGW_ENOTFOUND);
    CHECK_EQ_INT(DONE(&f, imgw_store_revoke(f.sl, 77, done_cb, res)),
                 IMGW_ENOTFOUND);
    fx_close(&f);
}

TEST(groups)
{
    fx_t f;
    fx_open(&f, 1000, 86400);
    const char *m1[] = {"u1", "u2", "u1", "u3", "u2"};
    CHECK_EQ_INT(
        DONE(&f, imgw_store_group_set(f.sl, "g1", m1, 5, done_cb, res)), 0);
    grp_res_t *r = group_get(&f, "g1");
    CHECK_EQ_INT(r->status, 0);
    CHECK_EQ_INT(r->n, 3);
    CHECK_EQ_STR(r->m[0], "u1");
    CHECK_EQ_STR(r->m[1], "u2");
    CHECK_EQ_STR(r->m[2], "u3");
    CHECK_EQ_STR(rc_str("TYPE IM-GROUP-g1"), "set");
    const char *m2[] = {"u9"};
    CHECK_EQ_INT(
        DONE(&f, imgw_store_group_set(f.sl, "g1", m2, 1, done_cb, res)), 0);
    r = group_get(&f, "g1");
    CHECK(r->n == 1 && strcmp(r->m[0], "u9") == 0);
    CHECK_EQ_INT(group_get(&f, "g2")->status, IMGW_ENOTFOUND);
    CHECK_EQ_INT(DONE(&f, imgw_store_group_del(f.sl, "g1", done_cb, res)), 0);
    CHECK_EQ_INT(group_get(&f, "g1")->status, IMGW_ENOTFOUND);
    CHECK_EQ_INT(DONE(&f, imgw_store_group_del(f.sl, "g1", done_cb, res)),
                 IMGW_ENOTFOUND);

    static const char *many[IMGW_STORE_MAX_GROUP + 1];
    static char names[IMGW_STORE_MAX_GROUP + 1][16];
    for (int i = 0; i <= IMGW_STORE_MAX_GROUP; i++) {
        snprintf(names[i], sizeof(names[i]), "m%d", i);
        many[i] = names[i];
    }
    CHECK_EQ_INT(
        DONE(&f, imgw_store_group_set(f.sl, "g3", many,
                                      IMGW_STORE_MAX_GROUP + 1, done_cb, res)),
        IMGW_ETOOBIG);
    CHECK_EQ_INT(
        DONE(&f, imgw_store_group_set(f.sl, "g3", many, IMGW_STORE_MAX_GROUP,
                                      done_cb, res)),
        0);
    CHECK_EQ_INT(group_get(&f, "g3")->n, IMGW_STORE_MAX_GROUP);
    /* n = 0 removes the group. */
    CHECK_EQ_INT(
        DONE(&f, imgw_store_group_set(f.sl, "g3", NULL, 0, done_cb, res)), 0);
    CHECK_EQ_INT(group_get(&f, "g3")->status, IMGW_ENOTFOUND);
    CHECK_EQ_INT(rc_int("EXISTS IM-GROUP-g3"), 0);

    /* A callback that replaces the group it is reading. */
    imgw_store_group_set(f.sl, "g1", m1, 5, NULL, NULL);
    static grp_res_t rr;
    memset(&rr, 0, sizeof(rr));
    rr.reenter = &f;
    CHECK_EQ_INT(imgw_store_group_get(f.sl, "g1", grp_cb, &rr), 0);
    wait_for(&rr.calls, 5000);
    CHECK(rr.n == 3 && strcmp(rr.m[2], "u3") == 0);
    r = group_get(&f, "g1");
    CHECK(r->n == 1 && strcmp(r->m[0], "zz") == 0);
    fx_close(&f);
}

TEST(routes)
{
    fx_t f;
    fx_open(&f, 1000, 86400);
    CHECK_EQ_INT(DONE(&f, imgw_store_route_set(f.sl, "u", "ios", "b1", 30,
                                               done_cb, res)),
                 0);
    imgw_store_route_set(f.sl, "u", "web", "b2", 30, NULL, NULL);
    route_res_t *r = routes(&f, "u");
    CHECK_EQ_INT(r->n, 2);
    CHECK_EQ_STR(route_of(r, "ios"), "b1");
    CHECK_EQ_STR(route_of(r, "web"), "b2");
    CHECK_EQ_INT(routes(&f, "nobody")->n, 0);
    CHECK_EQ_INT(routes(&f, "nobody")->calls, 1);
    /* The protocol's key: IM-USER-{user}, field platform = broker_id. */
    CHECK_EQ_STR(rc_str("HGET IM-USER-u ios"), "b1");
    long long ttl = rc_int("TTL IM-USER-u");
    CHECK(ttl > 25 && ttl <= 30);

    CHECK_EQ_INT(
        DONE(&f, imgw_store_route_del(f.sl, "u", "ios", "b2", done_cb, res)),
        0);
    CHECK_EQ_STR(route_of(routes(&f, "u"), "ios"), "b1");
    imgw_store_route_del(f.sl, "u", "ios", "b1", NULL, NULL);
    r = routes(&f, "u");
    CHECK_EQ_INT(r->n, 1);
    CHECK_EQ_STR(route_of(r, "ios"), "");
    imgw_store_route_set(f.sl, "u", "web", "b3", 30, NULL, NULL);
    CHECK_EQ_STR(route_of(routes(&f, "u"), "web"), "b3");

    /* TTL: set never shortens it (the key outlives its longest field);
     * refresh sets it. */
    imgw_store_route_set(f.sl, "v", "ios", "b1", 300, NULL, NULL);
    imgw_store_route_set(f.sl, "v", "web", "b1", 10, NULL, NULL);
    CHECK_EQ_INT(routes(&f, "v")->n, 2);
    ttl = rc_int("TTL IM-USER-v");
    CHECK(ttl > 290 && ttl <= 300);
    CHECK_EQ_INT(
        DONE(&f, imgw_store_route_refresh(f.sl, "v", 60, done_cb, res)), 0);
    ttl = rc_int("TTL IM-USER-v");
    CHECK(ttl > 55 && ttl <= 60);
    /* Expiry, and refresh does not resurrect. */
    imgw_store_route_set(f.sl, "x", "ios", "b1", 1, NULL, NULL);
    CHECK_EQ_INT(routes(&f, "x")->n, 1);
    sleep_loop(1100);
    CHECK_EQ_INT(routes(&f, "x")->n, 0);
    CHECK_EQ_INT(
        DONE(&f, imgw_store_route_refresh(f.sl, "x", 30, done_cb, res)), 0);
    CHECK_EQ_INT(routes(&f, "x")->n, 0);
    CHECK_EQ_INT(rc_int("EXISTS IM-USER-x"), 0);
    CHECK_EQ_INT(
        DONE(&f, imgw_store_route_set(f.sl, "v", "ios", "b1", 0, done_cb, res)),
        IMGW_EINVAL);

    /* At most IMGW_STORE_MAX_ROUTES platforms: the first added go. */
    for (int i = 0; i < IMGW_STORE_MAX_ROUTES + 4; i++) {
        char p[16];
        snprintf(p, sizeof(p), "p%d", i);
        imgw_store_route_set(f.sl, "w", p, "b", 100 + i, NULL, NULL);
    }
    r = routes(&f, "w");
    CHECK_EQ_INT(r->n, IMGW_STORE_MAX_ROUTES);
    CHECK_EQ_STR(route_of(r, "p0"), "");
    CHECK_EQ_STR(route_of(r, "p3"), "");
    CHECK_EQ_STR(route_of(r, "p4"), "b");
    CHECK_EQ_STR(route_of(r, "p19"), "b");
    fx_close(&f);
}

/* IM-PWATCH-{user}: broker_id -> broker_id, TTL only grows, at most
 * IMGW_STORE_MAX_WATCHERS nodes. */
TEST(watchers)
{
    fx_t f;
    fx_open(&f, 1000, 86400);
    CHECK_EQ_INT(watchers(&f, "wu")->n, 0);
    CHECK_EQ_INT(DONE(&f, imgw_store_watch_set(f.sl, "wu", "n1", 30, done_cb,
                                               res)),
                 0);
    imgw_store_watch_set(f.sl, "wu", "n2", 300, NULL, NULL);
    imgw_store_watch_set(f.sl, "wu", "n1", 30, NULL, NULL);
    route_res_t *r = watchers(&f, "wu");
    CHECK_EQ_INT(r->n, 2);
    CHECK_EQ_STR(route_of(r, "n1"), "n1");
    CHECK_EQ_STR(route_of(r, "n2"), "n2");
    CHECK_EQ_STR(rc_str("HGET IM-PWATCH-wu n2"), "n2");
    long long ttl = rc_int("TTL IM-PWATCH-wu");
    CHECK(ttl > 290 && ttl <= 300);
    /* routes and watchers are separate keys */
    CHECK_EQ_INT(routes(&f, "wu")->n, 0);
    for (int i = 0; i < IMGW_STORE_MAX_WATCHERS + 5; i++) {
        char b[16];
        snprintf(b, sizeof(b), "m%d", i);
        imgw_store_watch_set(f.sl, "wv", b, 60, NULL, NULL);
    }
    CHECK_EQ_INT(watchers(&f, "wv")->n, IMGW_STORE_MAX_WATCHERS);
    CHECK_EQ_INT(rc_int("HLEN IM-PWATCH-wv"), IMGW_STORE_MAX_WATCHERS);
    CHECK_EQ_INT(rc_int("HEXISTS IM-PWATCH-wv m0"), 0);
    CHECK_EQ_INT(rc_int("HEXISTS IM-PWATCH-wv m68"), 1);
    fx_close(&f);
}

TEST(positions)
{
    fx_t f;
    fx_open(&f, 1000, 86400);
    CHECK_EQ_INT(
        DONE(&f, imgw_store_set_delivered(f.sl, "u", "d0", 5, done_cb, res)),
        0);
    imgw_store_set_delivered(f.sl, "u", "d0", 3, NULL, NULL);
    CHECK_EQ_STR(position("IM-POS-u", "d0"), "5");
    CHECK_EQ_INT(
        DONE(&f, imgw_store_set_delivered(f.sl, "u", "d0", 9, done_cb, res)),
        0);
    CHECK_EQ_STR(position("IM-POS-u", "d0"), "9");
    for (int i = 1; i < 20; i++) {
        char d[16];
        snprintf(d, sizeof(d), "d%d", i);
        imgw_store_set_delivered(f.sl, "u", d, i, NULL, NULL);
    }
    CHECK_EQ_INT(
        DONE(&f, imgw_store_set_delivered(f.sl, "u", "d19", 19, done_cb, res)),
        0);
    CHECK_EQ_INT(rc_int("HLEN IM-POS-u"), 16 + 1); /* + the stamp field */
    CHECK_EQ_STR(position("IM-POS-u", "d0"), "(nil)");
    CHECK_EQ_STR(position("IM-POS-u", "d3"), "(nil)");
    CHECK_EQ_STR(position("IM-POS-u", "d4"), "4");
    CHECK_EQ_STR(position("IM-POS-u", "d19"), "19");
    long long pttl = rc_int("PTTL IM-POS-u");
    CHECK(pttl > 0 && pttl <= 7LL * 86400 * 1000);

    imgw_store_set_read(f.sl, "u", "s_u_v", "100", NULL, NULL);
    CHECK_EQ_INT(
        DONE(&f, imgw_store_set_read(f.sl, "u", "s_u_v", "90", done_cb, res)),
        0);
    CHECK_EQ_STR(position("IM-READ-u", "s_u_v"), "90");
    for (int i = 0; i < 300; i++) {
        char c[16];
        snprintf(c, sizeof(c), "g_%d", i);
        imgw_store_set_read(f.sl, "u", c, "1", NULL, NULL);
        if (i == 100)
            imgw_store_set_read(f.sl, "u", "s_u_v", "91", NULL, NULL);
    }
    CHECK_EQ_INT(
        DONE(&f, imgw_store_set_read(f.sl, "u", "g_299", "1", done_cb, res)),
        0);
    CHECK_EQ_INT(rc_int("HLEN IM-READ-u"), 256 + 1);
    CHECK_EQ_STR(position("IM-READ-u", "s_u_v"), "91");
    CHECK_EQ_STR(position("IM-READ-u", "g_0"), "(nil)");
    CHECK_EQ_STR(position("IM-READ-u", "g_299"), "1");
    CHECK_EQ_INT(
        DONE(&f, imgw_store_set_read(f.sl, "u", "", "1", done_cb, res)),
        IMGW_EINVAL);
    fx_close(&f);
}

/* NOSCRIPT: the script cache was flushed under a live connection. */
TEST(noscript_retry)
{
    fx_t f;
    fx_open(&f, 1000, 86400);
    const char *ab[] = {"a", "b"};
    int64_t s2[2];
    CHECK_EQ_INT(append_msg(&f, "", 1, "s", ab, 2, s2, NULL), 0);
    freeReplyObject(redisCommand(RC, "SCRIPT FLUSH"));
    CHECK_EQ_INT(append_msg(&f, "", 2, "s", ab, 2, s2, NULL), 0);
    CHECK_EQ_INT(s2[0], 2);
    freeReplyObject(redisCommand(RC, "SCRIPT FLUSH"));
    sync_res_t *r = do_sync(&f, "b", 0, 0, 10);
    CHECK(r->status == 0 && r->n == 2);
    CHECK_EQ_INT(imgw_store_loop_ready(f.sl), 1);
    fx_close(&f);
}

typedef struct many_s {
    int calls;
    int ok, busy, timedout, other;
    int twice; /* a callback that ran for a finished request */
} many_t;

typedef struct slot_s {
    imgw_store_append_t req;
    const char *users[2];
    int64_t seqs[2];
    char blob[24];
    int done;
    int status;
    many_t *m;
} slot_t;

static void
slot_cb(imgw_store_append_t *req, int status, void *data)
{
    slot_t *s = data;
    (void)req;
    if (s->done++)
        s->m->twice++;
    s->status = status;
    s->m->calls++;
    if (status == 0)
        s->m->ok++;
    else if (status == IMGW_EBUSY)
        s->m->busy++;
    else if (status == IMGW_ETIMEDOUT)
        s->m->timedout++;
    else
        s->m->other++;
}

static void
slot_fill(slot_t *s, many_t *m, uint64_t mid, const char *a, const char *b)
{
    memset(s, 0, sizeof(*s));
    s->m = m;
    s->users[0] = a;
    s->users[1] = b;
    int len = snprintf(s->blob, sizeof(s->blob), "%" PRIu64, mid);
    s->req.sender = a;
    s->req.client_msg_id = "";
    s->req.message_id = mid;
    s->req.server_time_ms = 1;
    s->req.conversation_id = "c";
    s->req.users = s->users;
    s->req.n_users = 2;
    s->req.entry = (const uint8_t *)s->blob;
    s->req.entry_len = (size_t)len;
    s->req.seqs = s->seqs;
}

/* A Redis that stops answering (CLIENT PAUSE): commands in flight time out
 * with ETIMEDOUT, the connection is dropped, requests meanwhile get EBUSY,
 * and the loop comes back by itself once Redis answers again. */
TEST(timeouts)
{
    fx_t f;
    fx_open(&f, 1000, 86400);
    static slot_t slots[20];
    many_t m;
    memset(&m, 0, sizeof(m));
    freeReplyObject(redisCommand(RC, "CLIENT PAUSE 1500 ALL"));
    uv_update_time(L);
    uint64_t t0 = uv_now(L);
    for (int i = 0; i < 10; i++) {
        slot_fill(&slots[i], &m, 500 + (uint64_t)i, "ta", "tb");
        CHECK_EQ_INT(imgw_store_append(f.sl, &slots[i].req, slot_cb, &slots[i]),
                     0);
    }
    int want = 10;
    int got = 0;
    uv_update_time(L);
    while (m.calls < want && uv_now(L) - t0 < 3000)
        uv_run(L, UV_RUN_ONCE);
    got = m.calls;
    uint64_t took = uv_now(L) - t0;
    CHECK_EQ_INT(got, 10);
    CHECK_EQ_INT(m.timedout, 10);
    CHECK(took >= 450 && took < 1400); /* timeout_ms = 500 */
    CHECK_EQ_INT(imgw_store_loop_ready(f.sl), 0);
    CHECK_EQ_INT(imgw_store_ready(f.s, 1), 0); /* node-wide: /readyz */
    /* While down: EBUSY at once (in the callback, never before the
     * request returned). */
    for (int i = 10; i < 20; i++) {
        slot_fill(&slots[i], &m, 500 + (uint64_t)i, "ta", "tb");
        CHECK_EQ_INT(imgw_store_append(f.sl, &slots[i].req, slot_cb, &slots[i]),
                     0);
    }
    sleep_loop(10);
    CHECK_EQ_INT(m.busy, 10);
    CHECK_EQ_INT(m.ok, 0);
    /* Back after the pause. */
    uv_update_time(L);
    uint64_t end = uv_now(L) + 8000;
    while (!imgw_store_loop_ready(f.sl) && uv_now(L) < end)
        uv_run(L, UV_RUN_ONCE);
    CHECK_EQ_INT(imgw_store_loop_ready(f.sl), 1);
    /* Ready node-wide only for as many loops as are open and ready: a
     * two-loop node with one loop connected is not ready. */
    CHECK_EQ_INT(imgw_store_ready(f.s, 1), 1);
    CHECK_EQ_INT(imgw_store_ready(f.s, 2), 0);
    CHECK(max_seq(&f, "ta") >= 0);
    const char *ab[] = {"ta", "tb"};
    int64_t s2[2];
    CHECK_EQ_INT(append_msg(&f, "", 600, "c", ab, 2, s2, NULL), 0);
    /* Whatever timed out is all or nothing: both timelines agree. */
    CHECK_EQ_INT(max_seq(&f, "ta"), max_seq(&f, "tb"));
    CHECK_EQ_INT(m.twice, 0);
    fx_close(&f);
}

/* loop_close with requests in flight: every callback runs exactly once,
 * none with success it did not get from Redis, and nothing leaks (ASan). */
TEST(close_in_flight)
{
    fx_t f;
    fx_open(&f, 1000, 86400);
    static slot_t slots[50];
    many_t m;
    memset(&m, 0, sizeof(m));
    for (int i = 0; i < 50; i++) {
        slot_fill(&slots[i], &m, 700 + (uint64_t)i, "ca", "cb");
        imgw_store_append(f.sl, &slots[i].req, slot_cb, &slots[i]);
    }
    val_res_t v = {0, 0, 0, 0};
    imgw_store_max_seq(f.sl, "ca", seq_cb, &v);
    imgw_store_loop_close(f.sl);
    CHECK_EQ_INT(m.calls, 50);
    CHECK_EQ_INT(m.ok, 0);
    CHECK_EQ_INT(m.timedout, 50); /* writes in flight: fate unknown */
    CHECK_EQ_INT(v.calls, 1);
    CHECK_EQ_INT(v.status, IMGW_EBUSY);
    imgw_store_close(f.s);
    sleep_loop(20);
    CHECK_EQ_INT(m.twice, 0);
    /* Whatever did reach Redis arrived whole. */
    CHECK_EQ_INT(rc_int("ZCARD IM-TL-ca"), rc_int("ZCARD IM-TL-cb"));
}

/* A host name goes through uv_getaddrinfo ("localhost" may give ::1
 * first while Redis listens on 127.0.0.1 only: the next address is
 * tried); closing while resolving or connecting frees everything. */
TEST(hostname_and_early_close)
{
    imgw__redis_url_t u;
    char err[256], url[300];
    fx_t f;
    CHECK_EQ_INT(imgw__redis_url_parse(URL, &u, err, sizeof(err)), 0);
    if (u.path == NULL) {
        snprintf(url, sizeof(url), "redis://%s%s%slocalhost:%d/%d",
                 u.password ? ":" : "", u.password ? u.password : "",
                 u.password ? "@" : "", u.port, u.db);
        CHECK_EQ_INT(fx_open_url(&f, url, 100, 86400, 500, 1), 0);
        CHECK_EQ_INT(max_seq(&f, "nobody"), 0);
        fx_close(&f);
        fx_open_url(&f, url, 100, 86400, 500, 0); /* close while resolving */
        fx_close(&f);
    }
    imgw__redis_url_free(&u);
    /* Close with the handshake queued; a request before ready is EBUSY. */
    fx_open_url(&f, URL, 100, 86400, 500, 0);
    CHECK_EQ_INT(max_seq(&f, "a"), -1000 + IMGW_EBUSY);
    fx_close(&f);
    /* Close once ready, from inside a callback of this very store. */
    fx_open(&f, 100, 86400);
    val_res_t v = {0, 0, 0, 0};
    CHECK_EQ_INT(imgw_store_max_seq(f.sl, "a", seq_cb, &v), 0);
    wait_for(&v.calls, 5000);
    CHECK_EQ_INT(v.status, 0);
    fx_close(&f);
}

typedef struct closer_s {
    int calls;
    int status;
    fx_t *f;
} closer_t;

static void
closer_cb(int status, int64_t max_seq, uint64_t epoch, void *data)
{
    closer_t *c = data;
    (void)max_seq;
    (void)epoch;
    if (c->calls++ == 0 && c->f != NULL) {
        imgw_store_loop_close(c->f->sl); /* inside hiredis's reply callback */
        c->f = NULL;
    }
    c->status = status;
}

TEST(close_from_callback)
{
    fx_t f;
    fx_open(&f, 100, 86400);
    static closer_t c[5];
    memset(c, 0, sizeof(c));
    c[0].f = &f;
    for (int i = 0; i < 5; i++)
        CHECK_EQ_INT(imgw_store_max_seq(f.sl, "a", closer_cb, &c[i]), 0);
    wait_for(&c[4].calls, 5000);
    CHECK(c[0].calls == 1 && c[0].status == 0);
    for (int i = 1; i < 5; i++)
        CHECK(c[i].calls == 1 && c[i].status == IMGW_EBUSY);
    imgw_store_close(f.s);
    sleep_loop(20);
}

/* ---- modes ---------------------------------------------------------------- */

static int
run_semantics(void)
{
    rc_connect();
    flushdb();
    sc_run_contract();
    RUN(open_errors);
    RUN(append_keys);
    RUN(append_refused_keys);
    RUN(retention);
    RUN(dedupe);
    RUN(dedupe_key_collision_keys);
    RUN(seq_ttl);
    RUN(timeline_epoch);
    RUN(revoke_and_msg_get);
    RUN(groups);
    RUN(routes);
    RUN(watchers);
    RUN(positions);
    RUN(noscript_retry);
    RUN(hostname_and_early_close);
    RUN(close_from_callback);
    RUN(timeouts);
    rc_reconnect(); /* the pause may have outlived our own timeout */
    RUN(close_in_flight);
    return 0;
}

TEST(smoke)
{
    fx_t f;
    rc_connect();
    fx_open(&f, 100, 86400);
    const char *ab[] = {"a", "b"};
    int64_t s2[2];
    CHECK_EQ_INT(append_msg(&f, "x", 1, "s_a_b", ab, 2, s2, NULL), 0);
    sync_res_t *r = do_sync(&f, "b", 0, 0, 10);
    CHECK(r->status == 0 && r->n == 1 && r->mid[0] == 1);
    CHECK_EQ_STR(rc_str("GET IM-SEQ-a"), "1");
    fx_close(&f);
}

TEST(badauth)
{
    fx_t f;
    CHECK_EQ_INT(fx_open_url(&f, URL, 100, 86400, 500, 0), 0);
    sleep_loop(1500);
    CHECK_EQ_INT(imgw_store_loop_ready(f.sl), 0);
    CHECK_EQ_INT(max_seq(&f, "a"), -1000 + IMGW_EBUSY);
    fx_close(&f);
}

/* ---- outage: driven by the python wrapper ------------------------------ */

static uv_pipe_t in_pipe;
static char in_buf[256];
static size_t in_len;
static int in_lines; /* complete lines received */
static char last_line[256];

static void
in_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b)
{
    static char tmp[256];
    (void)h;
    (void)sz;
    b->base = tmp;
    b->len = sizeof(tmp);
}

static void
in_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    (void)s;
    for (ssize_t i = 0; i < n; i++) {
        char c = b->base[i];
        if (c == '\n') {
            in_buf[in_len] = '\0';
            snprintf(last_line, sizeof(last_line), "%s", in_buf);
            in_len = 0;
            in_lines++;
        } else if (in_len + 1 < sizeof(in_buf)) {
            in_buf[in_len++] = c;
        }
    }
}

/* Prints a line for the wrapper and waits for its answer. */
static int
await_line(const char *say, const char *expect, int ms)
{
    int want = in_lines + 1;
    printf("%s\n", say);
    fflush(stdout);
    uv_update_time(L);
    uint64_t end = uv_now(L) + (uint64_t)ms;
    while (in_lines < want && uv_now(L) < end)
        uv_run(L, UV_RUN_ONCE);
    return in_lines >= want && strcmp(last_line, expect) == 0;
}

static int
wait_ready(fx_t *f, int ms)
{
    uv_update_time(L);
    uint64_t end = uv_now(L) + (uint64_t)ms;
    while (!imgw_store_loop_ready(f->sl) && uv_now(L) < end)
        uv_run(L, UV_RUN_ONCE);
    return imgw_store_loop_ready(f->sl);
}

#define BURST_MAX 20000
#define BURST_INFLIGHT 32

static slot_t *burst;
static int burst_next, burst_stop, burst_inflight;
static fx_t *burst_fx;

static void burst_issue(void);

static void
burst_cb(imgw_store_append_t *req, int status, void *data)
{
    slot_cb(req, status, data);
    burst_inflight--;
    if (status != 0)
        burst_stop = 1;
}

static void
burst_issue(void)
{
    while (!burst_stop && burst_inflight < BURST_INFLIGHT &&
           burst_next < BURST_MAX) {
        slot_t *s = &burst[burst_next];
        uint64_t mid = 1000000 + (uint64_t)burst_next;
        burst_next++;
        if (burst_next % 2)
            slot_fill(s, s->m, mid, "bx", "by");
        else
            slot_fill(s, s->m, mid, "by", "bz");
        burst_inflight++;
        if (imgw_store_append(burst_fx->sl, &s->req, burst_cb, s) != 0) {
            burst_inflight--;
            burst_stop = 1;
        }
    }
}

/* All entries of a user's timeline: mids[seq] (seq 1..max). */
static int
read_timeline(fx_t *f, const char *user, uint64_t *mids, int64_t cap,
              int64_t *max)
{
    int64_t from = 0;
    *max = -1;
    for (;;) {
        sync_res_t *r = do_sync(f, user, from, 0, 500);
        if (r->status != 0)
            return -1;
        *max = r->server_max;
        for (size_t i = 0; i < r->n; i++) {
            if (r->seq[i] < 1 || r->seq[i] >= cap)
                return -1;
            mids[r->seq[i]] = r->mid[i];
        }
        if (!r->has_more || r->n == 0)
            return 0;
        from = r->seq[r->n - 1];
    }
}

TEST(outage)
{
    fx_t f;
    rc_connect();
    flushdb();
    redisFree(RC);
    RC = NULL;
    uv_pipe_init(L, &in_pipe, 0);
    uv_pipe_open(&in_pipe, 0);
    uv_read_start((uv_stream_t *)&in_pipe, in_alloc, in_read);

    CHECK_EQ_INT(fx_open_url(&f, URL, 100000, 86400, 500, 1), 0);
    const char *ab[] = {"oa", "ob"};
    int64_t s2[2];
    for (uint64_t i = 1; i <= 5; i++)
        CHECK_EQ_INT(append_msg(&f, "", i, "s", ab, 2, s2, NULL), 0);
    const char *gm[] = {"oa", "ob"};
    CHECK_EQ_INT(
        DONE(&f, imgw_store_group_set(f.sl, "og", gm, 2, done_cb, res)), 0);

    /* Phase 1: Redis goes away. */
    CHECK(await_line("KILL_NOW", "killed", 20000));
    many_t m;
    memset(&m, 0, sizeof(m));
    static slot_t slots[400];
    int n = 0, ready_zero_at = -1, other_ok = 0, other_fail = 0;
    uv_update_time(L);
    uint64_t t0 = uv_now(L);
    while (uv_now(L) - t0 < 2500 && n < 400) {
        slot_fill(&slots[n], &m, 100 + (uint64_t)n, "oa", "ob");
        imgw_store_append(f.sl, &slots[n].req, slot_cb, &slots[n]);
        n++;
        val_res_t v = {0, 0, 0, 0};
        imgw_store_max_seq(f.sl, "oa", seq_cb, &v);
        wait_for(&v.calls, 2000);
        if (v.calls == 1 && v.status == 0)
            other_ok++;
        else if (v.calls == 1 &&
                 (v.status == IMGW_EBUSY || v.status == IMGW_ETIMEDOUT))
            other_fail++;
        if (ready_zero_at < 0 && !imgw_store_loop_ready(f.sl))
            ready_zero_at = (int)(uv_now(L) - t0);
        sleep_loop(20);
    }
    sleep_loop(700); /* let the last ones time out */
    printf("  outage: %d appends: ok %d busy %d timedout %d other %d; "
           "loop_ready 0 after %d ms\n",
           n, m.ok, m.busy, m.timedout, m.other, ready_zero_at);
    CHECK_EQ_INT(m.calls, n);
    CHECK_EQ_INT(m.ok, 0);
    CHECK_EQ_INT(m.other, 0);
    CHECK_EQ_INT(m.twice, 0);
    CHECK_EQ_INT(other_ok, 0);
    CHECK(other_fail > 10);
    CHECK(ready_zero_at >= 0 && ready_zero_at < 1000);
    CHECK_EQ_INT(imgw_store_loop_ready(f.sl), 0);

    /* Phase 2: back on the same port; no restart of this program. */
    CHECK(await_line("RESTART_NOW", "restarted", 30000));
    CHECK_EQ_INT(wait_ready(&f, 10000), 1);
    CHECK_EQ_INT(max_seq(&f, "oa"), 5); /* AOF kept what was acked */
    CHECK_EQ_INT(append_msg(&f, "", 50, "s", ab, 2, s2, NULL), 0);
    CHECK_EQ_INT(s2[0], 6);
    CHECK_EQ_INT(group_get(&f, "og")->n, 2);

    /* Phase 3: a kill in the middle of a burst of pipelined appends. */
    many_t bm;
    memset(&bm, 0, sizeof(bm));
    burst = calloc(BURST_MAX, sizeof(*burst));
    for (int i = 0; i < BURST_MAX; i++)
        burst[i].m = &bm;
    burst_fx = &f;
    printf("BURST_START\n");
    fflush(stdout);
    uv_update_time(L);
    t0 = uv_now(L);
    while ((!burst_stop || burst_inflight > 0) && uv_now(L) - t0 < 15000) {
        burst_issue();
        uv_run(L, UV_RUN_ONCE);
    }
    printf("  burst: %d issued: ok %d busy %d timedout %d other %d\n",
           burst_next, bm.ok, bm.busy, bm.timedout, bm.other);
    CHECK(burst_stop);
    CHECK_EQ_INT(burst_inflight, 0);
    CHECK_EQ_INT(bm.calls, burst_next);
    CHECK_EQ_INT(bm.twice, 0);
    CHECK(bm.ok > 0);
    CHECK(await_line("BURST_DONE", "restarted", 30000));
    CHECK_EQ_INT(wait_ready(&f, 10000), 1);

    /* Every acked append is in all its timelines at its seqs; an unacked
     * one is in all of them or in none. */
    static uint64_t tx[BURST_MAX + 2], ty[BURST_MAX + 2], tz[BURST_MAX + 2];
    int64_t mx, my, mz;
    CHECK_EQ_INT(read_timeline(&f, "bx", tx, BURST_MAX + 2, &mx), 0);
    CHECK_EQ_INT(read_timeline(&f, "by", ty, BURST_MAX + 2, &my), 0);
    CHECK_EQ_INT(read_timeline(&f, "bz", tz, BURST_MAX + 2, &mz), 0);
    /* where[i]: bitmask of timelines holding burst message i. */
    static int where[BURST_MAX], holes;
    static int64_t at[BURST_MAX][3];
    uint64_t *tl[3] = {tx, ty, tz};
    int64_t mxs[3] = {mx, my, mz};
    for (int t = 0; t < 3; t++)
        for (int64_t s = 1; s <= mxs[t]; s++) {
            uint64_t id = tl[t][s];
            if (id < 1000000 || id >= 1000000 + (uint64_t)BURST_MAX) {
                holes++;
                continue;
            }
            where[id - 1000000] |= 1 << t;
            at[id - 1000000][t] = s;
        }
    CHECK_EQ_INT(holes, 0); /* seqs 1..max all filled */
    int acked_bad = 0, partial = 0, unacked_present = 0;
    for (int i = 0; i < burst_next; i++) {
        slot_t *s = &burst[i];
        int want_mask = (i + 1) % 2 ? 1 | 2 : 2 | 4; /* bx,by or by,bz */
        int t0i = (i + 1) % 2 ? 0 : 1, t1i = (i + 1) % 2 ? 1 : 2;
        if (s->status == 0) {
            if (where[i] != want_mask || at[i][t0i] != s->seqs[0] ||
                at[i][t1i] != s->seqs[1])
                acked_bad++;
        } else if (where[i] != 0) {
            if (where[i] != want_mask)
                partial++;
            else
                unacked_present++;
        }
    }
    printf("  after restart: bx %" PRId64 " by %" PRId64 " bz %" PRId64
           " entries; %d unacked appends present in full\n",
           mx, my, mz, unacked_present);
    CHECK_EQ_INT(acked_bad, 0);
    CHECK_EQ_INT(partial, 0);
    CHECK_EQ_INT(mx + mz, my); /* every append went to by */
    free(burst);
    fx_close(&f);
    uv_read_stop((uv_stream_t *)&in_pipe);
    uv_close((uv_handle_t *)&in_pipe, NULL);
}

int
main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 3) {
        fprintf(stderr,
                "usage: %s semantics|smoke|badauth|outage REDIS_URL\n",
                argv[0]);
        return 2;
    }
    URL = argv[2];
    const char *lvl = getenv("IMGW_LOG");
    imgw_log_set_level(lvl ? imgw_log_parse_level(lvl) : IMGW_LOG_WARN_L);
    uv_loop_init(L);
    uv_timer_init(L, &pump);
    uv_timer_start(&pump, pump_cb, 5, 5);
    if (strcmp(argv[1], "semantics") == 0) {
        run_semantics();
    } else if (strcmp(argv[1], "smoke") == 0) {
        RUN(smoke);
    } else if (strcmp(argv[1], "badauth") == 0) {
        RUN(badauth);
    } else if (strcmp(argv[1], "outage") == 0) {
        RUN(outage);
    } else {
        fprintf(stderr, "unknown mode %s\n", argv[1]);
        return 2;
    }
    if (RC)
        redisFree(RC);
    uv_timer_stop(&pump);
    uv_close((uv_handle_t *)&pump, NULL);
    uv_run(L, UV_RUN_DEFAULT);
    /* Every handle of the store is closed: nothing left on the loop. */
    CHECK_EQ_INT(uv_loop_close(L), 0);
    TEST_DONE();
}
