/*
 * test_store_memory.c: the store interface over the "memory" backend:
 * timelines, paging, retention, dedupe, revoke, groups, routes, positions,
 * sweeping, and a multi-threaded append test (run it under TSan too).
 *
 * The cases every backend shares are in store_contract.c (included
 * below, run first); this file keeps what is the memory engine's own:
 * its clock (retention by age, expiry), its counters (blobs shared, caps,
 * sweeps), positions, failmalloc and concurrency. test_store_file.c
 * includes this file to run all of it against the file backend, which is
 * this engine plus a journal.
 *
 * Threads: main, plus the concurrency test's appenders and one reader.
 * The handles have no uv loop: every helper runs the handle's completions
 * (imgw_store_loop_run_completions) after checking that the callback had
 * not run before the request function returned.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "idsyntax.h"
#include "log.h"
#include "mem_int.h" /* index_many looks at the tables */
#include "store.h"
#include "store_contract.h"
#include "store_impl.h"
#include "test.h"

/* ---- fixtures -------------------------------------------------------- */

/*
 * test_store_file.c includes this file to run the same cases against the
 * "file" backend: it defines TEST_STORE_BACKEND, TEST_STORE_NO_MAIN and
 * test_store_prep(), which gives each opened store a fresh data directory.
 */
#ifndef TEST_STORE_BACKEND
#define TEST_STORE_BACKEND "memory"
static void
test_store_prep(imgw_store_cfg_t *cfg)
{
    (void)cfg;
}
#endif
/*
 * The memory engine's test hooks take the memory store itself; a file
 * store holds one (store_impl.h), and test_store_file.c defines these to
 * reach it. The backends depend on each other one way only: file on
 * memory.
 */
#ifndef TEST_STORE_MEM_OF
#define TEST_STORE_MEM_OF(s) (s)
#define TEST_STORE_SET_CLOCK(s, fn, arg) imgw__store_mem_set_clock(s, fn, arg)
#endif

#define DAY_MS (86400LL * 1000)
#define T0 1700000000000LL /* any fixed unix ms */

static int64_t fake_now;

static int64_t
fake_clock(void *arg)
{
    (void)arg;
    return fake_now;
}

static void
fx_open(fx_t *f, int retention_count, int retention_days, int dedupe_ttl)
{
    imgw_store_cfg_t cfg = {TEST_STORE_BACKEND, NULL,       retention_count,
                            retention_days,     dedupe_ttl, 1000,
                            1};
    char err[128];
    cfg.max_conversations = sc_max_convs;
    test_store_prep(&cfg);
    f->s = NULL;
    f->sl = NULL;
    int r = imgw_store_open(&f->s, &cfg, err, sizeof(err));
    if (r != 0) {
        printf("  cannot open the store: %s\n", err);
        exit(2);
    }
    fake_now = T0;
    TEST_STORE_SET_CLOCK(f->s, fake_clock, NULL);
    if (imgw_store_loop_open(f->s, 0, NULL, &f->sl) != 0)
        exit(2);
}

static void
fx_close(fx_t *f)
{
    imgw_store_loop_close(f->sl);
    imgw_store_close(f->s);
}

/* ---- the contract suite's driver (store_contract.h) ---------------- */

static void
sc_open(fx_t *f, int retention_count, int dedupe_ttl)
{
    fx_open(f, retention_count, 7, dedupe_ttl);
}

static void
sc_close(fx_t *f)
{
    fx_close(f);
}

/* The memory and file backends complete when their completions run. */
static int
sc_wait(fx_t *f, const int *flag)
{
    imgw_store_loop_run_completions(f->sl);
    return *flag;
}

static int64_t
sc_time_ms(uint64_t mid)
{
    (void)mid;
    return fake_now;
}

#include "store_contract.c"

static imgw__store_mem_stats_t
stats(fx_t *f)
{
    imgw__store_mem_stats_t st;
    imgw__store_mem_stats(TEST_STORE_MEM_OF(f->s), &st);
    return st;
}

/* 64 ticks at store time now: enough for the sweep to visit every shard's
 * users (a tick visits MEM_TICK_USER_SHARDS shards, MEM_TICK_BUCKETS
 * buckets each) and pop every expired key at these tests' sizes. */
static void
sweep(fx_t *f, int64_t now)
{
    for (int i = 0; i < 64; i++)
        imgw_store_tick(f->s, now);
}

/* ---- tests ----------------------------------------------------------- */

TEST(open_errors)
{
    imgw_store_t *s = NULL;
    char err[128];
    /* The redis backend is built in: a bad URL is its error. */
    imgw_store_cfg_t cfg = {"redis", "ftp://x", 100, 7, 86400, 1000, 1};
    CHECK_EQ_INT(imgw_store_open(&s, &cfg, err, sizeof(err)), IMGW_ECONFIG);
    CHECK(strstr(err, "redis_url") != NULL);
    CHECK(s == NULL);
    cfg.backend = "nope";
    CHECK_EQ_INT(imgw_store_open(&s, &cfg, err, sizeof(err)), IMGW_ECONFIG);
    cfg.backend = "memory";
    cfg.retention_count = 0;
    CHECK_EQ_INT(imgw_store_open(&s, &cfg, err, sizeof(err)), IMGW_ECONFIG);
    CHECK(strstr(err, "retention_count") != NULL);
    cfg.retention_count = 10;
    cfg.dedupe_ttl = 0;
    CHECK_EQ_INT(imgw_store_open(&s, &cfg, err, sizeof(err)), IMGW_ECONFIG);
    cfg.dedupe_ttl = 60;
    cfg.max_conversations = IMGW__STORE_CONVS_MAX + 1;
    CHECK_EQ_INT(imgw_store_open(&s, &cfg, err, sizeof(err)), IMGW_ECONFIG);
    printf("  refused: %s\n", err);
    CHECK(strstr(err, "max_conversations") != NULL);
    cfg.max_conversations = -1;
    CHECK_EQ_INT(imgw_store_open(&s, &cfg, err, sizeof(err)), IMGW_ECONFIG);
    cfg.max_conversations = 0;
    cfg.backend = "redis";
    cfg.redis_url = "redis://127.0.0.1:1";
    cfg.max_conversations = IMGW__STORE_CONVS_MAX + 1;
    CHECK_EQ_INT(imgw_store_open(&s, &cfg, err, sizeof(err)), IMGW_ECONFIG);
    CHECK(strstr(err, "max_conversations") != NULL);
    cfg.max_conversations = 0;
    cfg.backend = NULL; /* default: memory */
    CHECK_EQ_INT(imgw_store_open(&s, &cfg, err, sizeof(err)), 0);
    imgw_store_loop_t *sl = NULL;
    CHECK_EQ_INT(imgw_store_loop_open(s, 0, NULL, &sl), 0);
    CHECK_EQ_INT(imgw_store_loop_ready(sl), 1);
    imgw_store_loop_close(sl);
    imgw_store_close(s);
}

/* The contract's append_seq_per_user appends; the memory engine stores
 * one blob for the whole group append, one per 1:1 append. */
TEST(append_blobs_shared)
{
    fx_t f;
    fx_open(&f, 1000, 7, 86400);
    int64_t s2[2], s4[4];
    const char *ab[] = {"a", "b"}, *ac[] = {"a", "c"}, *ba[] = {"b", "a"};
    const char *grp[] = {"c", "a", "b", "d"};
    CHECK_EQ_INT(append_msg(&f, "", 1, "s_a_b", ab, 2, s2, NULL), 0);
    CHECK_EQ_INT(append_msg(&f, "", 2, "s_a_c", ac, 2, s2, NULL), 0);
    CHECK_EQ_INT(append_msg(&f, "", 3, "s_a_b", ba, 2, s2, NULL), 0);
    CHECK_EQ_INT(append_msg(&f, "", 4, "g_g1", grp, 4, s4, NULL), 0);
    imgw__store_mem_stats_t st = stats(&f);
    CHECK_EQ_INT(st.blobs_live, 4);
    CHECK_EQ_INT(st.metas, 4);
    CHECK_EQ_INT(st.entries, 2 + 2 + 2 + 4);
    CHECK_EQ_INT(st.users, 4);
    fx_close(&f);
}

/* The contract's append_refused; nothing of the refused calls is held. */
TEST(append_refused_holds_nothing)
{
    fx_t f;
    fx_open(&f, 1000, 7, 86400);
    int64_t seqs[IMGW_STORE_MAX_GROUP + 1];
    const char *one[] = {"a"};
    static const char *many[IMGW_STORE_MAX_GROUP + 1];
    static char names[IMGW_STORE_MAX_GROUP + 1][16];
    for (int i = 0; i <= IMGW_STORE_MAX_GROUP; i++) {
        snprintf(names[i], sizeof(names[i]), "u%d", i);
        many[i] = names[i];
    }
    CHECK_EQ_INT(append_msg(&f, "", 1, "c", one, 0, seqs, NULL), IMGW_EINVAL);
    CHECK_EQ_INT(
        append_msg(&f, "", 1, "c", many, IMGW_STORE_MAX_GROUP + 1, seqs, NULL),
        IMGW_ETOOBIG);
    CHECK_EQ_INT(
        append_msg(&f, "", 1, "c", many, IMGW_STORE_MAX_GROUP, seqs, NULL), 0);
    CHECK_EQ_INT(append_msg(&f, "", 1, "c", one, 1, seqs, NULL), IMGW_EEXIST);
    /* Nothing was appended by the refused calls. */
    CHECK_EQ_INT(stats(&f).entries, IMGW_STORE_MAX_GROUP);
    fx_close(&f);
}

TEST(retention_count)
{
    fx_t f;
    fx_open(&f, 5, 7, 86400);
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
    r = do_sync(&f, "a", 0, 2, 100); /* trimmed range: nothing, no more */
    CHECK(r->n == 0 && !r->has_more);
    CHECK_EQ_INT(max_seq(&f, "a"), 8);
    append_msg(&f, "", 9, "s_a_b", ab, 2, s2, NULL);
    CHECK_EQ_INT(s2[0], 9);
    imgw__store_mem_stats_t st = stats(&f);
    CHECK_EQ_INT(st.entries, 10);
    CHECK_EQ_INT(st.blobs_live, 5); /* trimmed blobs were freed */
    CHECK_EQ_INT(st.metas, 9);      /* metadata lives for retention_days */
    fx_close(&f);
}

TEST(retention_age)
{
    fx_t f;
    fx_open(&f, 1000, 1, 86400);
    const char *ab[] = {"a", "b"};
    int64_t s2[2];
    append_msg(&f, "", 1, "s_a_b", ab, 2, s2, NULL);
    append_msg(&f, "", 2, "s_a_b", ab, 2, s2, NULL);
    fake_now = T0 + DAY_MS / 2;
    append_msg(&f, "", 3, "s_a_b", ab, 2, s2, NULL);
    fake_now = T0 + DAY_MS - 1;
    CHECK_EQ_INT(do_sync(&f, "a", 0, 0, 100)->n, 3);
    fake_now = T0 + DAY_MS;
    sync_res_t *r = do_sync(&f, "a", 0, 0, 100);
    CHECK(r->n == 1 && r->seq[0] == 3 && r->server_max == 3);
    fake_now = T0 + DAY_MS * 2;
    r = do_sync(&f, "a", 0, 0, 100);
    CHECK(r->n == 0 && r->server_max == 3);
    /* max_seq survives the timeline emptying, also through the sweep. */
    sweep(&f, fake_now);
    CHECK_EQ_INT(max_seq(&f, "a"), 3);
    CHECK_EQ_INT(max_seq(&f, "b"), 3);
    append_msg(&f, "", 4, "s_a_b", ab, 2, s2, NULL);
    CHECK(s2[0] == 4 && s2[1] == 4);
    fx_close(&f);
}

TEST(dedupe)
{
    fx_t f;
    fx_open(&f, 1000, 7, 10);
    const char *ab[] = {"a", "b"}, *ba[] = {"b", "a"};
    int64_t s2[2] = {0, 0};
    imgw_store_append_t req;
    CHECK_EQ_INT(append_msg(&f, "c1", 100, "s_a_b", ab, 2, s2, &req), 0);
    CHECK_EQ_INT(req.duplicate, 0);
    int64_t first = s2[0];
    s2[0] = s2[1] = -7;
    CHECK_EQ_INT(append_msg(&f, "c1", 101, "s_a_b", ab, 2, s2, &req), 0);
    CHECK_EQ_INT(req.duplicate, 1);
    CHECK_EQ_INT(req.dup_message_id, 100);
    CHECK_EQ_INT(req.dup_seq, first);
    CHECK(s2[0] == -7 && s2[1] == -7); /* nothing appended */
    CHECK_EQ_INT(max_seq(&f, "a"), 1);
    CHECK_EQ_INT(max_seq(&f, "b"), 1);
    CHECK_EQ_INT(stats(&f).metas, 1);
    /* Another sender's same client_msg_id is another key (appended a bit
     * later so it is still alive when a/c1 expires). */
    fake_now = T0 + 5000;
    CHECK_EQ_INT(append_msg(&f, "c1", 102, "s_a_b", ba, 2, s2, &req), 0);
    CHECK_EQ_INT(req.duplicate, 0);
    /* "" never dedupes. */
    append_msg(&f, "", 103, "s_a_b", ab, 2, s2, &req);
    append_msg(&f, "", 104, "s_a_b", ab, 2, s2, &req);
    CHECK_EQ_INT(req.duplicate, 0);
    CHECK_EQ_INT(max_seq(&f, "a"), 4);

    /* Expiry after dedupe_ttl (10 s). */
    fake_now = T0 + 9999;
    append_msg(&f, "c1", 105, "s_a_b", ab, 2, s2, &req);
    CHECK_EQ_INT(req.duplicate, 1);
    CHECK_EQ_INT(req.dup_message_id, 100);
    fake_now = T0 + 10000;
    append_msg(&f, "c1", 106, "s_a_b", ab, 2, s2, &req);
    CHECK_EQ_INT(req.duplicate, 0);
    CHECK_EQ_INT(s2[0], 5);
    /* The key now points at the new message. */
    append_msg(&f, "c1", 107, "s_a_b", ab, 2, s2, &req);
    CHECK_EQ_INT(req.duplicate, 1);
    CHECK_EQ_INT(req.dup_message_id, 106);
    CHECK_EQ_INT(req.dup_seq, 5);
    CHECK_EQ_INT(stats(&f).dedupes, 2); /* a/c1 reused in place, b/c1 */
    fx_close(&f);
}

TEST(revoke_and_msg_get)
{
    fx_t f;
    fx_open(&f, 1000, 1, 86400);
    const char *grp[] = {"a", "b", "c"};
    int64_t s3[3];
    fake_now = T0 + 5;
    append_msg(&f, "", 77, "g_g1", grp, 3, s3, NULL);
    append_msg(&f, "", 78, "g_g1", grp, 3, s3, NULL);
    msg_res_t *r = msg_get(&f, 77);
    CHECK_EQ_INT(r->status, 0);
    CHECK_EQ_INT(r->calls, 1);
    CHECK_EQ_INT(r->m.message_id, 77);
    CHECK_EQ_STR(r->sender, "a");
    CHECK_EQ_STR(r->conv, "g_g1");
    CHECK_EQ_INT(r->m.server_time_ms, T0 + 5);
    CHECK_EQ_INT(r->m.revoked, 0);
    CHECK_EQ_INT(msg_get(&f, 999)->status, IMGW_ENOTFOUND);

    CHECK_EQ_INT(DONE(&f, imgw_store_revoke(f.sl, 77, done_cb, res)), 0);
    CHECK_EQ_INT(msg_get(&f, 77)->m.revoked, 1);
    CHECK_EQ_INT(msg_get(&f, 78)->m.revoked, 0);
    CHECK_EQ_INT(DONE(&f, imgw_store_revoke(f.sl, 999, done_cb, res)),
                 IMGW_ENOTFOUND);
    CHECK_EQ_INT(imgw_store_revoke(f.sl, 78, NULL, NULL), 0); /* cb NULL */
    for (int u = 0; u < 3; u++) {
        sync_res_t *sr = do_sync(&f, grp[u], 0, 0, 10);
        CHECK(sr->n == 2 && sr->revoked[0] == 1 && sr->revoked[1] == 1);
    }
    /* Metadata expires with retention_days. */
    fake_now = T0 + DAY_MS + 5;
    CHECK_EQ_INT(msg_get(&f, 77)->status, IMGW_ENOTFOUND);
    CHECK_EQ_INT(DONE(&f, imgw_store_revoke(f.sl, 77, done_cb, res)),
                 IMGW_ENOTFOUND);
    fx_close(&f);
}

/* The node-wide caps on dedupe keys and metadata (max_dedupes,
 * max_metas) and the shorter metadata lifetime (meta_ttl). */
TEST(record_caps)
{
    imgw_store_cfg_t cfg = {TEST_STORE_BACKEND, NULL, 100000, 7,  86400,
                            1000,               1,    100,    50, 60};
    char err[128];
    fx_t f;
    test_store_prep(&cfg);
    CHECK_EQ_INT(imgw_store_open(&f.s, &cfg, err, sizeof(err)), 0);
    fake_now = T0;
    TEST_STORE_SET_CLOCK(f.s, fake_clock, NULL);
    CHECK_EQ_INT(imgw_store_loop_open(f.s, 0, NULL, &f.sl), 0);

    /* 40 senders (spread over the shards) x 100 messages, all in one
     * timeline pair each: far over both caps. */
    char users[40][8], cmid[32];
    int64_t s2[2];
    imgw_store_append_t req;
    for (int i = 0; i < 40; i++)
        snprintf(users[i], sizeof(users[i]), "u%d", i);
    uint64_t mid = 1000;
    for (int k = 0; k < 100; k++) {
        for (int i = 0; i < 40; i++) {
            const char *pair[2] = {users[i], "sink"};
            snprintf(cmid, sizeof(cmid), "c%d", k);
            CHECK_EQ_INT(append_msg(&f, cmid, ++mid, "s_x", pair, 2, s2, &req),
                         0);
            CHECK_EQ_INT(req.duplicate, 0);
            imgw__store_mem_stats_t st = stats(&f);
            /* A shard keeps the record it just inserted, so a cap can be
             * passed by at most one record per shard (64). */
            CHECK(st.dedupes <= 100 + 64);
            CHECK(st.metas <= 50 + 64);
        }
        fake_now += 10;
    }
    imgw__store_mem_stats_t st = stats(&f);
    CHECK(st.dedupes >= 100 && st.dedupes <= 100 + 64);
    CHECK(st.metas >= 50 && st.metas <= 50 + 64);
    CHECK_EQ_INT(st.entries, 8000); /* timelines are not touched */
    /* The newest survive: the last key still dedupes, the last message can
     * be revoked and sync shows it; the oldest is gone for revoke only. */
    const char *last[2] = {users[39], "sink"};
    CHECK_EQ_INT(append_msg(&f, "c99", 99999, "s_x", last, 2, s2, &req), 0);
    CHECK_EQ_INT(req.duplicate, 1);
    CHECK_EQ_INT(req.dup_message_id, mid);
    CHECK_EQ_INT(msg_get(&f, mid)->status, 0);
    CHECK_EQ_INT(msg_get(&f, 1001)->status, IMGW_ENOTFOUND);
    CHECK_EQ_INT(DONE(&f, imgw_store_revoke(f.sl, mid, done_cb, res)), 0);
    sync_res_t *sr = do_sync(&f, users[39], 99, 0, 10);
    CHECK(sr->n == 1 && sr->mid[0] == mid && sr->revoked[0] == 1);
    sr = do_sync(&f, users[0], 0, 1, 10); /* evicted metadata: still synced */
    CHECK(sr->n == 1 && sr->mid[0] == 1001 && sr->revoked[0] == 0);

    /* meta_ttl (60 s) ends revoke lookups long before retention (7 days);
     * the revoked flag stays with the entry. */
    fake_now += 60 * 1000;
    CHECK_EQ_INT(msg_get(&f, mid)->status, IMGW_ENOTFOUND);
    sr = do_sync(&f, users[39], 99, 0, 10);
    CHECK(sr->n == 1 && sr->revoked[0] == 1);
    imgw_store_tick(f.s, fake_now);
    CHECK_EQ_INT(stats(&f).metas, 0);
    fx_close(&f);

    /* Bad caps are refused. */
    imgw_store_cfg_t bad = cfg;
    bad.meta_ttl = -1;
    imgw_store_t *s = NULL;
    CHECK_EQ_INT(imgw_store_open(&s, &bad, err, sizeof(err)), IMGW_ECONFIG);
}

TEST(groups)
{
    fx_t f;
    fx_open(&f, 1000, 7, 86400);
    const char *m1[] = {"u1", "u2", "u1", "u3", "u2"};
    CHECK_EQ_INT(
        DONE(&f, imgw_store_group_set(f.sl, "g1", m1, 5, done_cb, res)), 0);
    grp_res_t *r = group_get(&f, "g1");
    CHECK_EQ_INT(r->status, 0);
    CHECK_EQ_INT(r->n, 3); /* duplicates dropped, first order kept */
    CHECK_EQ_STR(r->m[0], "u1");
    CHECK_EQ_STR(r->m[1], "u2");
    CHECK_EQ_STR(r->m[2], "u3");
    const char *m2[] = {"u9"};
    imgw_store_group_set(f.sl, "g1", m2, 1, NULL, NULL);
    r = group_get(&f, "g1");
    CHECK(r->n == 1 && strcmp(r->m[0], "u9") == 0);
    CHECK_EQ_INT(group_get(&f, "g2")->status, IMGW_ENOTFOUND);

    CHECK_EQ_INT(DONE(&f, imgw_store_group_del(f.sl, "g1", done_cb, res)), 0);
    CHECK_EQ_INT(group_get(&f, "g1")->status, IMGW_ENOTFOUND);
    CHECK_EQ_INT(DONE(&f, imgw_store_group_del(f.sl, "g1", done_cb, res)),
                 IMGW_ENOTFOUND);

    /* Bounds are refused up front, through the callback (later). */
    static const char *many[IMGW_STORE_MAX_GROUP + 1];
    for (int i = 0; i <= IMGW_STORE_MAX_GROUP; i++)
        many[i] = "x";
    CHECK_EQ_INT(
        DONE(&f, imgw_store_group_set(f.sl, "g3", many,
                                      IMGW_STORE_MAX_GROUP + 1, done_cb, res)),
        IMGW_ETOOBIG);
    char longid[IMGW__STORE_ID_MAX + 2];
    memset(longid, 'y', sizeof(longid) - 1);
    longid[sizeof(longid) - 1] = '\0';
    const char *bad[] = {"ok", longid};
    CHECK_EQ_INT(
        DONE(&f, imgw_store_group_set(f.sl, "g3", bad, 2, done_cb, res)),
        IMGW_EINVAL);
    longid[IMGW__STORE_ID_MAX] = '\0'; /* exactly 127 bytes: fine */
    CHECK_EQ_INT(
        DONE(&f, imgw_store_group_set(f.sl, "g3", bad, 2, done_cb, res)), 0);
    CHECK_EQ_INT(group_get(&f, "g3")->n, 2);
    const char *dup1000[IMGW_STORE_MAX_GROUP];
    for (int i = 0; i < IMGW_STORE_MAX_GROUP; i++)
        dup1000[i] = "same";
    imgw_store_group_set(f.sl, "g4", dup1000, IMGW_STORE_MAX_GROUP, NULL, NULL);
    CHECK_EQ_INT(group_get(&f, "g4")->n, 1);
    /* An empty member set removes the group (as an empty Redis set). */
    CHECK_EQ_INT(
        DONE(&f, imgw_store_group_set(f.sl, "g3", NULL, 0, done_cb, res)), 0);
    CHECK_EQ_INT(group_get(&f, "g3")->status, IMGW_ENOTFOUND);

    /* Re-entrant callback replacing the group it is reading. */
    imgw_store_group_set(f.sl, "g1", m1, 5, NULL, NULL);
    static grp_res_t rr;
    memset(&rr, 0, sizeof(rr));
    rr.reenter = &f;
    CHECK_EQ_INT(imgw_store_group_get(f.sl, "g1", grp_cb, &rr), 0);
    CHECK_EQ_INT(rr.calls, 0);
    sc_wait(&f, &rr.calls);
    CHECK(rr.n == 3 && strcmp(rr.m[2], "u3") == 0);
    r = group_get(&f, "g1");
    CHECK(r->n == 1 && strcmp(r->m[0], "zz") == 0);
    CHECK_EQ_INT(stats(&f).groups, 2); /* g1, g4 */
    fx_close(&f);
}

TEST(routes)
{
    fx_t f;
    fx_open(&f, 1000, 7, 86400);
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

    /* Delete only if it is still ours. */
    CHECK_EQ_INT(
        DONE(&f, imgw_store_route_del(f.sl, "u", "ios", "b2", done_cb, res)),
        0);
    CHECK_EQ_STR(route_of(routes(&f, "u"), "ios"), "b1");
    imgw_store_route_del(f.sl, "u", "ios", "b1", NULL, NULL);
    r = routes(&f, "u");
    CHECK_EQ_INT(r->n, 1);
    CHECK_EQ_STR(route_of(r, "ios"), "");
    /* set overwrites the owner. */
    imgw_store_route_set(f.sl, "u", "web", "b3", 30, NULL, NULL);
    CHECK_EQ_STR(route_of(routes(&f, "u"), "web"), "b3");

    /* Expiry, and refresh extending every platform. */
    fake_now = T0;
    imgw_store_route_set(f.sl, "v", "ios", "b1", 30, NULL, NULL);
    imgw_store_route_set(f.sl, "v", "web", "b1", 10, NULL, NULL);
    fake_now = T0 + 9999;
    CHECK_EQ_INT(routes(&f, "v")->n, 2);
    imgw_store_route_refresh(f.sl, "v", 30, NULL, NULL);
    fake_now = T0 + 35000;
    CHECK_EQ_INT(routes(&f, "v")->n, 2);
    fake_now = T0 + 39998;
    CHECK_EQ_INT(routes(&f, "v")->n, 2);
    fake_now = T0 + 39999; /* refreshed at 9999 for 30 s */
    CHECK_EQ_INT(routes(&f, "v")->n, 0);
    /* refresh does not resurrect what expired */
    imgw_store_route_refresh(f.sl, "v", 30, NULL, NULL);
    CHECK_EQ_INT(routes(&f, "v")->n, 0);
    CHECK_EQ_INT(
        DONE(&f, imgw_store_route_set(f.sl, "v", "ios", "b1", 0, done_cb, res)),
        IMGW_EINVAL);

    /* At most IMGW_STORE_MAX_ROUTES platforms: the soonest to expire goes. */
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

/*
 * Routes share their "platform\0broker_id\0" strings per shard (an idle
 * node's users all name the same few pairs): the count stays at one per
 * pair and shard, every route still reads its own pair, and replacing,
 * deleting, expiring and sweeping drop the references (ASan: no use after
 * free, no leak).
 */
TEST(routes_shared_strings)
{
    fx_t f;
    fx_open(&f, 1000, 7, 86400);
    enum { N = 2000 };
    char u[16];
    fake_now = T0;
    for (int i = 0; i < N; i++) {
        snprintf(u, sizeof(u), "s%d", i);
        imgw_store_route_set(f.sl, u, "web", "b1", 30, NULL, NULL);
        if (i % 2)
            imgw_store_route_set(f.sl, u, "ios", "b1", 60, NULL, NULL);
    }
    imgw__store_mem_stats_t st = stats(&f);
    CHECK_EQ_INT(st.routes, N + N / 2);
    /* two pairs, in at most 64 shards each */
    CHECK(st.route_strings >= 2 && st.route_strings <= 128);
    printf("  info  %zu routes share %zu strings\n", st.routes,
           st.route_strings);
    snprintf(u, sizeof(u), "s%d", 7);
    route_res_t *r = routes(&f, u);
    CHECK_EQ_INT(r->n, 2);
    CHECK_EQ_STR(route_of(r, "web"), "b1");
    CHECK_EQ_STR(route_of(r, "ios"), "b1");
    /* another owner for one user's web: only that route changes */
    imgw_store_route_set(f.sl, u, "web", "b2", 30, NULL, NULL);
    CHECK_EQ_STR(route_of(routes(&f, u), "web"), "b2");
    snprintf(u, sizeof(u), "s%d", 9);
    CHECK_EQ_STR(route_of(routes(&f, u), "web"), "b1");
    /* deleting every web route of b1 leaves the ios ones readable */
    for (int i = 0; i < N; i++) {
        snprintf(u, sizeof(u), "s%d", i);
        imgw_store_route_del(f.sl, u, "web", "b1", NULL, NULL);
    }
    st = stats(&f);
    CHECK_EQ_INT(st.routes, N / 2 + 1);
    snprintf(u, sizeof(u), "s%d", 9);
    r = routes(&f, u);
    CHECK_EQ_INT(r->n, 1);
    CHECK_EQ_STR(route_of(r, "ios"), "b1");
    /* expiry (ios at 60 s, s7's web at 30 s) and the sweep drop the rest */
    fake_now = T0 + 61000;
    for (int i = 0; i < 4 * 64; i++)
        imgw_store_tick(f.s, fake_now);
    st = stats(&f);
    CHECK_EQ_INT(st.routes, 0);
    CHECK_EQ_INT(st.route_strings, 0);
    CHECK_EQ_INT(st.users, 0);
    fake_now = T0;
    fx_close(&f);
}

/* One node: watch_set records nothing, watch_get names no node; both
 * answer later with status 0, and bad ids are refused like elsewhere. */
TEST(watchers_single_node)
{
    fx_t f;
    fx_open(&f, 1000, 7, 86400);
    CHECK_EQ_INT(DONE(&f, imgw_store_watch_set(f.sl, "u", "b1", 30, done_cb,
                                               res)),
                 0);
    route_res_t *r = watchers(&f, "u");
    CHECK_EQ_INT(r->calls, 1);
    CHECK_EQ_INT(r->n, 0);
    CHECK_EQ_INT(DONE(&f, imgw_store_watch_set(f.sl, "a b", "b1", 30, done_cb,
                                               res)),
                 IMGW_EINVAL);
    CHECK_EQ_INT(DONE(&f, imgw_store_watch_set(f.sl, "u", "b1", 0, done_cb,
                                               res)),
                 IMGW_EINVAL);
    CHECK_EQ_INT(watchers(&f, "a:b")->n, 999); /* refused: status != 0 */
    fx_close(&f);
}

TEST(positions)
{
    fx_t f;
    fx_open(&f, 1000, 7, 86400);
    int64_t seq = 0;
    char buf[64];
    CHECK_EQ_INT(
        DONE(&f, imgw_store_set_delivered(f.sl, "u", "d0", 5, done_cb, res)),
        0);
    imgw_store_set_delivered(f.sl, "u", "d0", 3, NULL, NULL); /* older ack */
    CHECK_EQ_INT(
        imgw__store_mem_get_delivered(TEST_STORE_MEM_OF(f.s), "u", "d0", &seq),
        0);
    CHECK_EQ_INT(seq, 5);
    imgw_store_set_delivered(f.sl, "u", "d0", 9, NULL, NULL);
    imgw__store_mem_get_delivered(TEST_STORE_MEM_OF(f.s), "u", "d0", &seq);
    CHECK_EQ_INT(seq, 9);
    /* 20 devices: beyond 16 the least recently updated go: d0..d3. */
    for (int i = 1; i < 20; i++) {
        char d[16];
        snprintf(d, sizeof(d), "d%d", i);
        imgw_store_set_delivered(f.sl, "u", d, i, NULL, NULL);
    }
    CHECK_EQ_INT(stats(&f).devices, 16);
    CHECK_EQ_INT(
        imgw__store_mem_get_delivered(TEST_STORE_MEM_OF(f.s), "u", "d0", &seq),
        IMGW_ENOTFOUND);
    CHECK_EQ_INT(
        imgw__store_mem_get_delivered(TEST_STORE_MEM_OF(f.s), "u", "d3", &seq),
        IMGW_ENOTFOUND);
    CHECK_EQ_INT(
        imgw__store_mem_get_delivered(TEST_STORE_MEM_OF(f.s), "u", "d4", &seq),
        0);
    CHECK_EQ_INT(seq, 4);
    CHECK_EQ_INT(
        imgw__store_mem_get_delivered(TEST_STORE_MEM_OF(f.s), "u", "d19", &seq),
        0);

    /* Read positions: the last message id per conversation, 256 kept. */
    imgw_store_set_read(f.sl, "u", "s_u_v", "100", NULL, NULL);
    imgw_store_set_read(f.sl, "u", "s_u_v", "90", NULL, NULL);
    CHECK_EQ_INT(imgw__store_mem_get_read(TEST_STORE_MEM_OF(f.s), "u", "s_u_v",
                                          buf, sizeof(buf)),
                 0);
    CHECK_EQ_STR(buf, "90");
    for (int i = 0; i < 300; i++) {
        char c[16];
        snprintf(c, sizeof(c), "g_%d", i);
        imgw_store_set_read(f.sl, "u", c, "1", NULL, NULL);
        if (i == 100) /* touch s_u_v: it becomes recent again */
            imgw_store_set_read(f.sl, "u", "s_u_v", "91", NULL, NULL);
    }
    CHECK_EQ_INT(stats(&f).reads, 256);
    CHECK_EQ_INT(imgw__store_mem_get_read(TEST_STORE_MEM_OF(f.s), "u", "s_u_v",
                                          buf, sizeof(buf)),
                 0);
    CHECK_EQ_STR(buf, "91");
    CHECK_EQ_INT(imgw__store_mem_get_read(TEST_STORE_MEM_OF(f.s), "u", "g_0",
                                          buf, sizeof(buf)),
                 IMGW_ENOTFOUND);
    CHECK_EQ_INT(imgw__store_mem_get_read(TEST_STORE_MEM_OF(f.s), "u", "g_299",
                                          buf, sizeof(buf)),
                 0);
    CHECK_EQ_INT(
        DONE(&f, imgw_store_set_read(f.sl, "u", "", "1", done_cb, res)),
        IMGW_EINVAL);
    CHECK_EQ_INT(
        DONE(&f, imgw_store_set_delivered(f.sl, "u", "d", -1, done_cb, res)),
        IMGW_EINVAL);
    fx_close(&f);
}

TEST(tick_sweeps)
{
    fx_t f;
    fx_open(&f, 1000, 1, 10);
    int64_t s2[2];
    char a[16], b[16], cmid[16];
    for (int i = 0; i < 300; i++) {
        snprintf(a, sizeof(a), "a%d", i);
        snprintf(b, sizeof(b), "b%d", i);
        snprintf(cmid, sizeof(cmid), "c%d", i);
        const char *ab[] = {a, b};
        append_msg(&f, cmid, 1000 + (uint64_t)i, "c", ab, 2, s2, NULL);
    }
    imgw_store_route_set(f.sl, "r1", "ios", "b1", 5, NULL, NULL);
    imgw_store_route_set(f.sl, "r2", "ios", "b1", 5, NULL, NULL);
    imgw_store_route_del(f.sl, "r2", "ios", "b1", NULL, NULL);
    imgw_store_set_delivered(f.sl, "r3", "d", 1, NULL, NULL);
    imgw__store_mem_stats_t st = stats(&f);
    CHECK_EQ_INT(st.users, 603);
    CHECK_EQ_INT(st.dedupes, 300);
    CHECK_EQ_INT(st.metas, 300);
    CHECK_EQ_INT(st.entries, 600);
    CHECK_EQ_INT(st.blobs_live, 300);
    CHECK_EQ_INT(st.routes, 1);

    /* Before expiry, ticks remove nothing but the empty r2. */
    sweep(&f, T0 + 1000);
    st = stats(&f);
    CHECK_EQ_INT(st.users, 602);
    CHECK_EQ_INT(st.dedupes, 300);

    /* After dedupe_ttl and the route TTL: one tick clears the keys. */
    fake_now = T0 + 10000;
    imgw_store_tick(f.s, fake_now);
    st = stats(&f);
    CHECK_EQ_INT(st.dedupes, 0);
    CHECK_EQ_INT(st.metas, 300);
    sweep(&f, fake_now);
    st = stats(&f);
    CHECK_EQ_INT(st.routes, 0);
    CHECK_EQ_INT(st.users, 601); /* r1's record held only its route */

    /* After retention_days: metadata, entries and blobs go; max_seq and
     * the users stay. */
    fake_now = T0 + DAY_MS;
    sweep(&f, fake_now);
    st = stats(&f);
    CHECK_EQ_INT(st.metas, 0);
    CHECK_EQ_INT(st.entries, 0);
    CHECK_EQ_INT(st.blobs_live, 0);
    CHECK_EQ_INT(st.metas_live, 0);
    CHECK_EQ_INT(st.users, 601);
    CHECK_EQ_INT(st.devices, 1);
    CHECK_EQ_INT(max_seq(&f, "a7"), 1);
    CHECK_EQ_INT(max_seq(&f, "b299"), 1);
    fx_close(&f);
}

/* A blob the timelines dropped (retention_count 1) leaves its metadata
 * findable, revocable and its id taken; both go at expiry. */
TEST(blob_dropped_meta_kept)
{
    fx_t f;
    fx_open(&f, 1, 1, 10);
    int64_t s2[2];
    const char *ab[] = {"a", "b"};
    CHECK_EQ_INT(append_msg(&f, "c1", 501, "s_a_b", ab, 2, s2, NULL), 0);
    CHECK_EQ_INT(append_msg(&f, "c2", 502, "s_a_b", ab, 2, s2, NULL), 0);
    imgw__store_mem_stats_t st = stats(&f);
    CHECK_EQ_INT(st.entries, 2);   /* one per timeline: 501 popped */
    CHECK_EQ_INT(st.blobs_live, 1);
    CHECK_EQ_INT(st.metas, 2);
    CHECK_EQ_INT(st.metas_live, 2);
    msg_res_t *mr = msg_get(&f, 501);
    CHECK_EQ_INT(mr->status, 0);
    CHECK_EQ_STR(mr->sender, "a");
    CHECK_EQ_STR(mr->conv, "s_a_b");
    CHECK_EQ_INT(DONE(&f, imgw_store_revoke(f.sl, 501, done_cb, res)), 0);
    CHECK_EQ_INT(msg_get(&f, 501)->m.revoked, 1);
    /* The live message reads through its blob's metadata. */
    CHECK_EQ_INT(DONE(&f, imgw_store_revoke(f.sl, 502, done_cb, res)), 0);
    sync_res_t *sr = do_sync(&f, "b", 0, 0, 10);
    CHECK_EQ_INT(sr->n, 1);
    CHECK_EQ_INT(sr->mid[0], 502);
    CHECK_EQ_INT(sr->revoked[0], 1);
    /* A reused id is refused while its metadata is in the table, even
     * with its blob gone. */
    CHECK_EQ_INT(append_msg(&f, "c3", 501, "s_a_b", ab, 2, s2, NULL),
                 IMGW_EEXIST);
    fake_now = T0 + DAY_MS;
    sweep(&f, fake_now);
    st = stats(&f);
    CHECK_EQ_INT(st.metas, 0);
    CHECK_EQ_INT(st.blobs_live, 0);
    CHECK_EQ_INT(st.metas_live, 0);
    fx_close(&f);
}

/* Many messages through the index (mem_idx.c): every dedupe key and id is
 * found while the tables grow and migrate, and after expiry the ticks
 * shrink them and the store still works. */
TEST(index_many)
{
    enum { N = 30000 };
    fx_t f;
    fx_open(&f, 1000, 1, 10);
    int64_t s2[2];
    char a[16], b[16], cmid[24];
    int bad_append = 0, bad_dup = 0, bad_get = 0, bad_reuse = 0;
    for (int i = 0; i < N; i++) {
        snprintf(a, sizeof(a), "a%d", i % 500);
        snprintf(b, sizeof(b), "b%d", i % 500);
        snprintf(cmid, sizeof(cmid), "c%d", i);
        const char *ab[] = {a, b};
        bad_append += append_msg(&f, cmid, 10000 + (uint64_t)i, "c", ab, 2,
                                 s2, NULL) != 0;
    }
    for (int i = 0; i < N; i += 7) {
        imgw_store_append_t req;
        snprintf(a, sizeof(a), "a%d", i % 500);
        snprintf(b, sizeof(b), "b%d", i % 500);
        snprintf(cmid, sizeof(cmid), "c%d", i);
        const char *ab[] = {a, b};
        /* A resend (new id, same key) is a duplicate of the first. */
        int r = append_msg(&f, cmid, 900000 + (uint64_t)i, "c", ab, 2, s2,
                           &req);
        bad_dup += r != 0 || !req.duplicate ||
                   req.dup_message_id != 10000 + (uint64_t)i;
        bad_get += msg_get(&f, 10000 + (uint64_t)i)->status != 0;
        /* The same id under a new key: refused. */
        snprintf(cmid, sizeof(cmid), "x%d", i);
        bad_reuse += append_msg(&f, cmid, 10000 + (uint64_t)i, "c", ab, 2,
                                s2, NULL) != IMGW_EEXIST;
    }
    CHECK_EQ_INT(bad_append, 0);
    CHECK_EQ_INT(bad_dup, 0);
    CHECK_EQ_INT(bad_get, 0);
    CHECK_EQ_INT(bad_reuse, 0);
    CHECK_EQ_INT(msg_get(&f, 5)->status, IMGW_ENOTFOUND);
    imgw__store_mem_stats_t st = stats(&f);
    CHECK_EQ_INT(st.dedupes, N);
    CHECK_EQ_INT(st.metas, N);
    /* Everything expires; enough ticks for the sweeps' passes and the
     * shrinks' migrations. */
    fake_now = T0 + DAY_MS;
    for (int i = 0; i < 400; i++)
        imgw_store_tick(f.s, fake_now);
    st = stats(&f);
    CHECK_EQ_INT(st.dedupes, 0);
    CHECK_EQ_INT(st.metas, 0);
    CHECK_EQ_INT(st.metas_live, 0);
    imgw__mem_t *m = TEST_STORE_MEM_OF(f.s)->impl;
    size_t big = 0;
    for (unsigned i = 0; i < MEM_SHARDS; i++)
        big += m->shards[i].dedupes.cur.nb > MEM_IDX_MIN ||
               m->shards[i].metas.cur.nb > MEM_IDX_MIN ||
               m->shards[i].metas.old.b != NULL;
    printf("  shards whose tables are above the minimum after expiry: %zu\n",
           big);
    CHECK_EQ_INT(big, 0);
    const char *ab[] = {"a1", "b1"};
    CHECK_EQ_INT(append_msg(&f, "again", 77, "c", ab, 2, s2, NULL), 0);
    CHECK_EQ_INT(msg_get(&f, 77)->status, 0);
    fx_close(&f);
}

/* ---- ids, keys and per-user state (audit items 1 and 6) ---------------- */

static void
fx_open_cfg(fx_t *f, imgw_store_cfg_t *cfg)
{
    char err[128];
    f->s = NULL;
    f->sl = NULL;
    if (imgw_store_open(&f->s, cfg, err, sizeof(err)) != 0) {
        printf("  cannot open the store: %s\n", err);
        exit(2);
    }
    fake_now = T0;
    if (strcmp(cfg->backend, "memory") == 0)
        imgw__store_mem_set_clock(f->s, fake_clock, NULL);
    else
        TEST_STORE_SET_CLOCK(f->s, fake_clock, NULL);
    if (imgw_store_loop_open(f->s, 0, NULL, &f->sl) != 0)
        exit(2);
}

TEST(id_validator)
{
    char max[IMGW_ID_MAX + 2];
    memset(max, 'x', sizeof(max) - 1);
    max[sizeof(max) - 1] = '\0';
    CHECK(imgw_id_check(max, IMGW_ID_MAX + 1) != NULL); /* 128 bytes */
    CHECK(imgw_id_check(max, IMGW_ID_MAX) == NULL);     /* 127 bytes */
    CHECK_EQ_INT(imgw_id_valid(max), 0);
    max[IMGW_ID_MAX] = '\0';
    CHECK_EQ_INT(imgw_id_valid(max), 1);
    static const char *good[] = {
        "u1", "alice", "eve-x", "slow_r", "a.b@example.com", "0", "A-Z_09.@"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        printf("  id %-20s valid\n", good[i]);
        CHECK_EQ_INT(imgw_id_valid(good[i]), 1);
    }
    static const char *bad[] = {"",      "a:b",  "a b",  "a\tb",        "a\nb",
                                "a\x7f", "a/b",  "a*",   "a?",          "a[1]",
                                "{a}",   "a\"b", "a\\b", "Jos\xc3\xa9", "a,b",
                                "a+b",   "a#b",  "a%b"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *why = imgw_id_check(bad[i], strlen(bad[i]));
        printf("  id #%zu refused: %s\n", i, why ? why : "(accepted!)");
        CHECK(why != NULL);
        CHECK_EQ_INT(imgw_id_valid(bad[i]), 0);
    }
    /* Every byte value against the rule as written (A-Z a-z 0-9 . _ @ -):
     * the check is a table, so each entry is tested. */
    int wrong = 0, allowed = 0;
    for (int c = 0; c < 256; c++) {
        char one[2] = {(char)c, 0};
        int rule = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                   (c >= '0' && c <= '9') || c == '.' || c == '_' ||
                   c == '@' || c == '-';
        int got = imgw_id_check(one, 1) == NULL;
        wrong += got != rule;
        allowed += got;
    }
    printf("  every byte value: %d allowed, %d against the rule\n", allowed,
           wrong);
    CHECK_EQ_INT(wrong, 0);
    CHECK_EQ_INT(allowed, 66);
    CHECK_EQ_STR(imgw_id_check("", 0), "is empty");
    CHECK_EQ_STR(imgw_id_check("a:b", 3),
                 "may only contain A-Z a-z 0-9 . _ @ -");
    CHECK_EQ_INT(imgw_id_valid(NULL), 0);
    /* client_msg_id: printable ASCII, ':' and '/' included; optional. */
    CHECK_EQ_INT(imgw_cmid_valid_opt(NULL), 1);
    CHECK_EQ_INT(imgw_cmid_valid_opt(""), 1);
    CHECK_EQ_INT(imgw_cmid_valid_opt("x-1:2/3{}*?~"), 1);
    CHECK_EQ_INT(imgw_cmid_valid_opt("a b"), 0);
    CHECK_EQ_INT(imgw_cmid_valid_opt("a\x01"), 0);
    CHECK_EQ_INT(imgw_cmid_valid_opt("\xc3\xa9"), 0);
    CHECK_EQ_STR(imgw_cmid_check("a b", 3),
                 "must be printable ASCII without spaces");
    char cm[IMGW_CMID_MAX + 2];
    memset(cm, 'c', sizeof(cm) - 1);
    cm[sizeof(cm) - 1] = '\0';
    CHECK_EQ_INT(imgw_cmid_valid_opt(cm), 0);
    cm[IMGW_CMID_MAX] = '\0';
    CHECK_EQ_INT(imgw_cmid_valid_opt(cm), 1);
}

/* The contract's store_edge_ids: a refused id creates no user record. */
TEST(store_edge_ids_no_records)
{
    fx_t f;
    fx_open(&f, 1000, 7, 86400);
    int64_t s2[2];
    const char *ctl[] = {"a", "b\x01"}, *ok[] = {"a", "b"};
    CHECK_EQ_INT(append_msg(&f, "", 1, "c", ctl, 2, s2, NULL), IMGW_EINVAL);
    CHECK_EQ_INT(append_msg(&f, "a b", 1, "c", ok, 2, s2, NULL), IMGW_EINVAL);
    CHECK_EQ_INT(DONE(&f, imgw_store_route_set(f.sl, "a b", "ios", "n1", 60,
                                               done_cb, res)),
                 IMGW_EINVAL);
    CHECK_EQ_INT(stats(&f).users, 0); /* nothing was created */
    CHECK_EQ_INT(append_msg(&f, "k:1/2", 1, "c", ok, 2, s2, NULL), 0);
    CHECK_EQ_INT(stats(&f).users, 2);
    fx_close(&f);
}

/*
 * store.max_users: past the cap a request that needs a new user record is
 * refused with IMGW_EBUSY and counted; existing users go on; records the
 * sweep frees make room again.
 */
TEST(user_cap)
{
    imgw_store_cfg_t cfg = {"memory", NULL, 1000, 1, 60, 1000, 1};
    cfg.max_users = 3;
    cfg.seq_idle_days = 1;
    fx_t f;
    fx_open_cfg(&f, &cfg);
    int64_t s2[2];
    imgw_store_stats_t st;
    const char *ab[] = {"a", "b"}, *ac[] = {"a", "c"}, *ad[] = {"a", "d"};
    CHECK_EQ_INT(append_msg(&f, "", 1, "c", ab, 2, s2, NULL), 0);
    CHECK_EQ_INT(append_msg(&f, "", 2, "c", ac, 2, s2, NULL), 0);
    CHECK_EQ_INT(append_msg(&f, "", 3, "c", ad, 2, s2, NULL), IMGW_EBUSY);
    CHECK_EQ_INT(max_seq(&f, "a"), 2); /* nothing of message 3 */
    CHECK_EQ_INT(max_seq(&f, "d"), 0);
    CHECK_EQ_INT(DONE(&f, imgw_store_route_set(f.sl, "e", "ios", "n1", 60,
                                               done_cb, res)),
                 IMGW_EBUSY);
    CHECK_EQ_INT(
        DONE(&f, imgw_store_set_delivered(f.sl, "e", "d", 1, done_cb, res)),
        IMGW_EBUSY);
    CHECK_EQ_INT(
        DONE(&f, imgw_store_set_delivered(f.sl, "a", "d", 1, done_cb, res)), 0);
    CHECK_EQ_INT(append_msg(&f, "", 4, "c", ab, 2, s2, NULL), 0);
    CHECK_EQ_INT(imgw_store_stats(f.s, &st), 0);
    printf("  users %zu / %zu, refused %llu\n", st.users, st.max_users,
           (unsigned long long)st.users_refused);
    CHECK_EQ_INT(st.users, 3);
    CHECK_EQ_INT(st.max_users, 3);
    CHECK_EQ_INT(st.users_refused, 3);
    /* After retention (1 day) + seq_idle_days (1): the records are idle,
     * the sweep frees them, and new users fit again. */
    fake_now = T0 + 2 * DAY_MS;
    sweep(&f, fake_now);
    CHECK_EQ_INT(imgw_store_stats(f.s, &st), 0);
    CHECK_EQ_INT(st.users, 0);
    CHECK_EQ_INT(stats(&f).users, 0);
    CHECK_EQ_INT(append_msg(&f, "", 5, "c", ad, 2, s2, NULL), 0);
    CHECK_EQ_INT(s2[0], 1); /* a's counter expired with its record */
    fx_close(&f);
}

/*
 * max_seq's lifetime (the memory twin of IM-SEQ's TTL): it survives the
 * timeline by seq_idle_days after the user's last append / sync / max_seq
 * / route refresh; a user unused for longer starts again at 1.
 */
TEST(seq_idle_expiry)
{
    imgw_store_cfg_t cfg = {"memory", NULL, 1000, 1, 60, 1000, 1};
    cfg.seq_idle_days = 2;
    fx_t f;
    fx_open_cfg(&f, &cfg);
    int64_t s2[2];
    const char *ab[] = {"a", "b"};
    CHECK_EQ_INT(append_msg(&f, "", 1, "c", ab, 2, s2, NULL), 0);
    CHECK_EQ_INT(append_msg(&f, "", 2, "c", ab, 2, s2, NULL), 0);
    /* Day 2: the entries aged out (retention 1 day), the counters stay. */
    fake_now = T0 + 2 * DAY_MS;
    sweep(&f, fake_now);
    CHECK_EQ_INT(stats(&f).entries, 0);
    CHECK_EQ_INT(stats(&f).users, 2);
    CHECK_EQ_INT(max_seq(&f, "a"), 2); /* touches a (an auth) */
    /* Day 3.5: b was last used on day 0 (> 1 + 2 days): gone; a was
     * touched on day 2: kept. */
    fake_now = T0 + 3 * DAY_MS + DAY_MS / 2;
    CHECK_EQ_INT(max_seq(&f, "b"), 0);
    sweep(&f, fake_now);
    CHECK_EQ_INT(stats(&f).users, 1);
    CHECK_EQ_INT(append_msg(&f, "", 3, "c", ab, 2, s2, NULL), 0);
    CHECK_EQ_INT(s2[0], 3); /* a: never reused a seq */
    CHECK_EQ_INT(s2[1], 1); /* b: started again */
    /* Heartbeats (route refresh) keep a quiet online user's counter. */
    CHECK_EQ_INT(DONE(&f, imgw_store_route_set(f.sl, "a", "ios", "n1", 60,
                                               done_cb, res)),
                 0);
    for (int d = 0; d < 8; d++) {
        fake_now += DAY_MS;
        imgw_store_route_refresh(f.sl, "a", 86400 * 2, NULL, NULL);
        sweep(&f, fake_now);
    }
    CHECK_EQ_INT(max_seq(&f, "a"), 3);
    CHECK_EQ_INT(max_seq(&f, "b"), 0);
    fx_close(&f);
}

/*
 * An idle user (routes only) is one small record: its first route inline,
 * no timeline or positions ("used" counts the users that have them). A
 * second route moves the routes into an array, which the sweep gives back
 * once one route is left; every step must still read the same routes.
 */
TEST(idle_user_routes_inline)
{
    fx_t f;
    fx_open(&f, 1000, 7, 86400);
    imgw_store_route_set(f.sl, "u", "ios", "b1", 30, NULL, NULL);
    imgw__store_mem_stats_t st = stats(&f);
    printf("  one route: users %zu used %zu routes %zu arrays %zu\n", st.users,
           st.used, st.routes, st.route_arrays);
    CHECK_EQ_INT(st.users, 1);
    CHECK_EQ_INT(st.used, 0);
    CHECK_EQ_INT(st.routes, 1);
    CHECK_EQ_INT(st.route_arrays, 0);
    CHECK_EQ_INT(max_seq(&f, "u"), 0); /* an auth: creates nothing */
    CHECK_EQ_INT(stats(&f).used, 0);

    /* Past one: an array; then a third grows it. */
    imgw_store_route_set(f.sl, "u", "web", "b2", 30, NULL, NULL);
    CHECK_EQ_INT(stats(&f).route_arrays, 1);
    imgw_store_route_set(f.sl, "u", "mac", "b3", 60, NULL, NULL);
    route_res_t *r = routes(&f, "u");
    CHECK_EQ_INT(r->n, 3);
    CHECK_EQ_STR(route_of(r, "ios"), "b1");
    CHECK_EQ_STR(route_of(r, "web"), "b2");
    CHECK_EQ_STR(route_of(r, "mac"), "b3");

    /* Down to one (the one that was last in the array): a sweep moves it
     * back inline, with its own expiry. */
    imgw_store_route_del(f.sl, "u", "ios", "b1", NULL, NULL);
    imgw_store_route_del(f.sl, "u", "web", "b2", NULL, NULL);
    CHECK_EQ_INT(stats(&f).route_arrays, 1);
    sweep(&f, fake_now);
    st = stats(&f);
    CHECK_EQ_INT(st.route_arrays, 0);
    CHECK_EQ_INT(st.routes, 1);
    CHECK_EQ_INT(st.users, 1);
    r = routes(&f, "u");
    CHECK_EQ_INT(r->n, 1);
    CHECK_EQ_STR(route_of(r, "mac"), "b3");
    fake_now = T0 + 30000; /* ios and web would have expired by now */
    CHECK_EQ_STR(route_of(routes(&f, "u"), "mac"), "b3");

    /* Inline again, a second route spills again, replacing works. */
    imgw_store_route_set(f.sl, "u", "ios", "b4", 60, NULL, NULL);
    imgw_store_route_set(f.sl, "u", "ios", "b5", 60, NULL, NULL);
    r = routes(&f, "u");
    CHECK_EQ_INT(r->n, 2);
    CHECK_EQ_STR(route_of(r, "ios"), "b5");
    CHECK_EQ_INT(stats(&f).route_arrays, 1);

    /* Everything expires: the sweep frees the array and the record. */
    fake_now = T0 + 100000;
    sweep(&f, fake_now);
    st = stats(&f);
    CHECK_EQ_INT(st.users, 0);
    CHECK_EQ_INT(st.routes, 0);
    CHECK_EQ_INT(st.route_arrays, 0);
    CHECK_EQ_INT(st.route_strings, 0);
    fx_close(&f);
}

/*
 * The used part's life: an online (routed) user's first message creates
 * it, retention empties its ring but max_seq keeps it, and once max_seq
 * has expired too (seq_idle_days) the sweep frees it and the user is an
 * idle record again, its route intact; the next message starts a new
 * timeline at seq 1. Positions keep it alive as max_seq does.
 */
TEST(used_created_aged_freed)
{
    imgw_store_cfg_t cfg = {"memory", NULL, 1000, 1, 60, 1000, 1};
    cfg.seq_idle_days = 2;
    fx_t f;
    fx_open_cfg(&f, &cfg);
    int64_t s2[2];
    const char *ab[] = {"a", "b"};
    /* Routes for both, long enough to outlive everything below. */
    imgw_store_route_set(f.sl, "a", "ios", "n1", 30 * 86400, NULL, NULL);
    imgw_store_route_set(f.sl, "b", "ios", "n1", 30 * 86400, NULL, NULL);
    CHECK_EQ_INT(stats(&f).used, 0);
    CHECK_EQ_INT(append_msg(&f, "", 1, "c", ab, 2, s2, NULL), 0);
    CHECK_EQ_INT(append_msg(&f, "", 2, "c", ab, 2, s2, NULL), 0);
    imgw__store_mem_stats_t st = stats(&f);
    printf("  after 2 messages: users %zu used %zu entries %zu\n", st.users,
           st.used, st.entries);
    CHECK_EQ_INT(st.used, 2);
    CHECK_EQ_INT(st.entries, 4);
    sync_res_t *sr = do_sync(&f, "b", 0, 0, 10);
    CHECK_EQ_INT(sr->n, 2);
    CHECK_EQ_INT(sr->epoch, 1);
    /* b acks: a position, kept with b's used part. */
    imgw_store_set_delivered(f.sl, "b", "d1", 2, NULL, NULL);

    /* Day 1.5: the entries aged out (retention 1 day); max_seq stays. */
    fake_now = T0 + DAY_MS + DAY_MS / 2;
    sweep(&f, fake_now);
    st = stats(&f);
    CHECK_EQ_INT(st.entries, 0);
    CHECK_EQ_INT(st.used, 2);
    CHECK_EQ_INT(st.blobs_live, 0);
    CHECK_EQ_INT(max_seq(&f, "a"), 2);
    CHECK_EQ_INT(do_sync(&f, "a", 0, 0, 10)->n, 0);

    /* Day 5: max_seq expired (1 + 2 days after the day-1.5 use): a's used
     * part goes and a is idle again; b's stays for its position until
     * its own seq_ttl, then b's too (records with a route stay). */
    fake_now = T0 + 5 * DAY_MS;
    CHECK_EQ_INT(max_seq(&f, "a"), 0);
    sweep(&f, fake_now);
    st = stats(&f);
    printf("  day 5: users %zu used %zu devices %zu\n", st.users, st.used,
           st.devices);
    CHECK_EQ_INT(st.users, 2);
    CHECK_EQ_INT(st.used, 1);
    CHECK_EQ_INT(st.devices, 1);
    CHECK_EQ_INT(routes(&f, "a")->n, 1);
    CHECK_EQ_STR(route_of(routes(&f, "a"), "ios"), "n1");
    CHECK_EQ_INT(max_seq(&f, "b"), 0);
    int64_t seq = -1;
    CHECK_EQ_INT(
        imgw__store_mem_get_delivered(TEST_STORE_MEM_OF(f.s), "b", "d1", &seq),
        0);
    CHECK_EQ_INT(seq, 2);

    /* A new message: a new timeline, seq 1, a new epoch. */
    const char *aa[] = {"a"};
    CHECK_EQ_INT(append_msg(&f, "", 7, "c", aa, 1, s2, NULL), 0);
    CHECK_EQ_INT(s2[0], 1);
    CHECK_EQ_INT(stats(&f).used, 2);
    sr = do_sync(&f, "a", 0, 0, 10);
    CHECK_EQ_INT(sr->n, 1);
    CHECK_EQ_INT(sr->epoch, 7);
    fx_close(&f);
}

/* The used part keeps its last use in whole seconds, rounded up: a
 * max_seq is never forgotten before seq_ttl after a sub-second use, and
 * at most a second after. */
TEST(seq_ttl_rounds_up)
{
    imgw_store_cfg_t cfg = {"memory", NULL, 1000, 1, 60, 1000, 1};
    cfg.seq_idle_days = 2;
    fx_t f;
    fx_open_cfg(&f, &cfg);
    int64_t s1[1];
    const char *cc[] = {"c"};
    int64_t ttl = 3 * DAY_MS; /* retention 1 day + seq_idle_days 2 */
    fake_now = T0 + 1500;
    CHECK_EQ_INT(append_msg(&f, "", 1, "c", cc, 1, s1, NULL), 0);
    fake_now = T0 + 1500 + ttl - 1;
    sweep(&f, fake_now);
    CHECK_EQ_INT(stats(&f).users, 1);
    fake_now = T0 + 2000 + ttl;
    sweep(&f, fake_now);
    imgw__store_mem_stats_t st = stats(&f);
    printf("  a second after seq_ttl: users %zu used %zu\n", st.users, st.used);
    CHECK_EQ_INT(st.users, 0);
    CHECK_EQ_INT(st.used, 0);
    fx_close(&f);
}

/* The resume contract's store side (store.h "epoch"): a timeline's epoch
 * is the id of the message that gave it seq 1, and stays until the
 * timeline starts again at seq 1; oldest_seq follows retention. */
TEST(timeline_epoch)
{
    imgw_store_cfg_t cfg = {TEST_STORE_BACKEND, NULL, 3, 1, 60, 1000, 1};
    cfg.seq_idle_days = 2;
    test_store_prep(&cfg);
    fx_t f;
    fx_open_cfg(&f, &cfg);
    int64_t s2[2];
    const char *ab[] = {"a", "b"};
    const char *ac[] = {"a", "c"};
    /* Nothing yet: no epoch, the first seq a sync could return is 1. */
    CHECK_EQ_INT(max_seq(&f, "a"), 0);
    CHECK(last_epoch == 0);
    sync_res_t *r = do_sync(&f, "a", 0, 0, 10);
    CHECK(r->status == 0 && r->epoch == 0 && r->oldest == 1);
    CHECK_EQ_INT(append_msg(&f, "", 70, "c", ab, 2, s2, NULL), 0);
    CHECK_EQ_INT(append_msg(&f, "", 71, "c", ab, 2, s2, NULL), 0);
    CHECK_EQ_INT(append_msg(&f, "", 72, "c", ac, 2, s2, NULL), 0);
    CHECK_EQ_INT(max_seq(&f, "a"), 3);
    printf("  epoch of a: %llu, of c: ", (unsigned long long)last_epoch);
    CHECK(last_epoch == 70);
    CHECK_EQ_INT(max_seq(&f, "c"), 1);
    printf("%llu\n", (unsigned long long)last_epoch);
    CHECK(last_epoch == 72); /* c's timeline started with message 72 */
    r = do_sync(&f, "a", 0, 0, 10);
    CHECK(r->epoch == 70 && r->oldest == 1 && r->server_max == 3);
    /* Retention 3 trims a's head: oldest_seq moves, the epoch stays. */
    CHECK_EQ_INT(append_msg(&f, "", 73, "c", ab, 2, s2, NULL), 0);
    CHECK_EQ_INT(append_msg(&f, "", 74, "c", ab, 2, s2, NULL), 0);
    r = do_sync(&f, "a", 0, 0, 10);
    printf("  a after trimming: oldest %lld, max %lld, epoch %llu\n",
           (long long)r->oldest, (long long)r->server_max,
           (unsigned long long)r->epoch);
    CHECK(r->epoch == 70 && r->oldest == 3 && r->server_max == 5);
    CHECK_EQ_INT(r->n, 3);
    /* Idle expiry of b's counter (retention 1 day + 2 idle days) resets
     * its timeline: the next message starts a new epoch. */
    fake_now += 4 * DAY_MS;
    CHECK_EQ_INT(max_seq(&f, "b"), 0);
    CHECK(last_epoch == 0);
    r = do_sync(&f, "b", 0, 0, 10);
    CHECK(r->epoch == 0 && r->oldest == 1 && r->server_max == 0);
    CHECK_EQ_INT(append_msg(&f, "", 80, "c", ab, 2, s2, NULL), 0);
    CHECK_EQ_INT(s2[1], 1);
    CHECK_EQ_INT(max_seq(&f, "b"), 1);
    printf("  b after its reset: epoch %llu\n", (unsigned long long)last_epoch);
    CHECK(last_epoch == 80);
    fx_close(&f);
}

/* A sync callback that appends to the timeline it is reading. */
typedef struct reenter_s {
    fx_t *f;
    int ok;
    int calls;
} reenter_t;

static void
reenter_sync_cb(int status, const imgw_store_entry_t *e, size_t n, int has_more,
                int64_t server_max_seq, int64_t oldest_seq, uint64_t epoch,
                void *data)
{
    reenter_t *x = data;
    const char *aa[] = {"a"};
    int64_t s1[1];
    (void)has_more;
    (void)server_max_seq;
    x->calls++;
    (void)oldest_seq;
    (void)epoch;
    /* Retention 2: this append trims entry 1 while we still read it. */
    int r = append_msg(x->f, "", 50, "c", aa, 1, s1, NULL);
    x->ok = status == 0 && n == 2 && r == 0 && s1[0] == 3 && e[0].len == 1 &&
            e[0].blob[0] == '1' && e[1].blob[0] == '2';
}

TEST(reentrant_sync)
{
    fx_t f;
    fx_open(&f, 2, 7, 86400);
    const char *aa[] = {"a"};
    int64_t s1[1];
    append_msg(&f, "", 1, "c", aa, 1, s1, NULL);
    append_msg(&f, "", 2, "c", aa, 1, s1, NULL);
    reenter_t x = {&f, 0, 0};
    CHECK_EQ_INT(imgw_store_sync(f.sl, "a", 0, 0, 10, reenter_sync_cb, &x), 0);
    CHECK_EQ_INT(x.calls, 0);
    sc_wait(&f, &x.calls);
    CHECK_EQ_INT(x.ok, 1);
    sync_res_t *r = do_sync(&f, "a", 0, 0, 10);
    CHECK(r->n == 2 && r->seq[0] == 2 && r->seq[1] == 3);
    CHECK_EQ_INT(stats(&f).blobs_live, 2);
    fx_close(&f);
}

/* ---- failmalloc ------------------------------------------------------- */

/* Stats that any half-done request would change. */
static int
same_state(const imgw__store_mem_stats_t *a, const imgw__store_mem_stats_t *b)
{
    return a->entries == b->entries && a->dedupes == b->dedupes &&
           a->metas == b->metas && a->groups == b->groups &&
           a->routes == b->routes && a->devices == b->devices &&
           a->reads == b->reads && a->blobs_live == b->blobs_live &&
           a->metas_live == b->metas_live;
}

/*
 * Fails the 1st, 2nd, ... allocation of each request until it gets
 * through: every failure must be a clean IMGW_ENOMEM refusal (reported by
 * the callback, later, with nothing visible changed), and the retry must
 * then work.
 */
TEST(failmalloc)
{
    fx_t f;
    fx_open(&f, 4, 7, 86400);
    const char *grp[] = {"a",   "n1",  "n2",  "n3",  "n4",  "n5",  "n6",
                         "n7",  "n8",  "n9",  "n10", "n11", "n12", "n13",
                         "n14", "n15", "n16", "n17", "n18"};
    size_t ng = sizeof(grp) / sizeof(grp[0]);
    int64_t seqs[32];
    const char *aa[] = {"a"};
    append_msg(&f, "", 1, "c", aa, 1, seqs, NULL);
    int enomem = 0, bad = 0, rounds = 0;
    for (int step = 0; step < 11; step++) {
        for (int n = 1;; n++) {
            imgw__store_mem_stats_t before = stats(&f);
            int64_t a_before = max_seq(&f, "a");
            int r;
            char cmid[16];
            snprintf(cmid, sizeof(cmid), "k%d", step);
            imgw__store_mem_fail_alloc(n);
            switch (step) {
            case 0: /* group append: new users, rings growing, dedupe */
            case 1:
            case 2: /* again, with rings full (retention 4) */
                r = append_msg(&f, cmid, 100 + (uint64_t)step, "g", grp, ng,
                               seqs, NULL);
                break;
            case 3:
                r = do_sync(&f, "a", 0, 0, 100)->status;
                break;
            case 4:
                r = DONE(
                    &f, imgw_store_group_set(f.sl, "g", grp, ng, done_cb, res));
                break;
            case 5:
                r = DONE(&f, imgw_store_route_set(f.sl, "nn", "ios", "b", 60,
                                                  done_cb, res));
                break;
            case 6:
                r = DONE(&f, imgw_store_set_delivered(f.sl, "nd", "d", 4,
                                                      done_cb, res));
                break;
            case 7:
                r = DONE(&f, imgw_store_set_read(f.sl, "nr", "c", "5", done_cb,
                                                 res));
                break;
            case 8: /* a second route: the inline one moves to an array */
                r = DONE(&f, imgw_store_route_set(f.sl, "nn", "web", "b", 60,
                                                  done_cb, res));
                break;
            case 9: { /* an idle user's first message (and conversation) */
                const char *nm[] = {"nn", "nm"};
                r = append_msg(&f, "", 200, "s_nn_nm", nm, 2, seqs, NULL);
                break;
            }
            default: { /* open itself */
                imgw_store_t *s2 = NULL;
                imgw_store_cfg_t cfg = {"memory", NULL, 10, 1, 10, 0, 1};
                r = imgw_store_open(&s2, &cfg, NULL, 0);
                if (r == 0)
                    imgw_store_close(s2);
                else if (s2 != NULL)
                    bad++;
                break;
            }
            }
            int left = imgw__store_mem_fail_alloc(0);
            imgw__store_mem_stats_t after = stats(&f);
            rounds++;
            if (r == IMGW_ENOMEM) {
                enomem++;
                if (!same_state(&before, &after) ||
                    max_seq(&f, "a") != a_before)
                    bad++;
                continue;
            }
            if (r != 0)
                bad++;
            if (left > 0)
                break; /* got through without reaching the nth alloc */
        }
    }
    CHECK_EQ_INT(bad, 0);
    CHECK(enomem >= 15);
    printf("  (%d rounds, %d refused with ENOMEM)\n", rounds, enomem);
    /* Each append went in exactly once despite the failed tries. */
    CHECK_EQ_INT(max_seq(&f, "a"), 4);
    CHECK_EQ_INT(max_seq(&f, "n18"), 3);
    imgw_store_append_t req;
    append_msg(&f, "k0", 999, "g", grp, ng, seqs, &req);
    CHECK_EQ_INT(req.duplicate, 1);
    CHECK_EQ_INT(req.dup_message_id, 100);
    CHECK_EQ_INT(req.dup_seq, 2);
    CHECK_EQ_INT(group_get(&f, "g")->n, ng);
    CHECK_EQ_INT(routes(&f, "nn")->n, 2);
    CHECK_EQ_INT(max_seq(&f, "nn"), 1);
    CHECK_EQ_INT(max_seq(&f, "nm"), 1);
    fx_close(&f);
}

/* ---- concurrency ------------------------------------------------------ */

#define CC_THREADS 4
#define CC_USERS 200
#define CC_MSGS 3000 /* per thread */
#define CC_GROUP_MAX 20

typedef struct cc_msg_s {
    uint64_t id;
    uint8_t n;
    uint8_t dup; /* 1: the append reported a duplicate */
    uint64_t dup_of;
    uint16_t users[CC_GROUP_MAX];
    int64_t seqs[CC_GROUP_MAX];
} cc_msg_t;

typedef struct cc_thread_s {
    imgw_store_t *s;
    int index;
    cc_msg_t *msgs;
    int errors;
} cc_thread_t;

static char cc_names[CC_USERS][16];
static atomic_int cc_stop;

static uint32_t
cc_rand(uint32_t *st)
{
    *st ^= *st << 13;
    *st ^= *st >> 17;
    *st ^= *st << 5;
    return *st;
}

static void *
cc_appender(void *arg)
{
    cc_thread_t *t = arg;
    imgw_store_loop_t *sl;
    uint32_t rnd = 0x9e3779b9u * (uint32_t)(t->index + 1);
    if (imgw_store_loop_open(t->s, t->index, NULL, &sl) != 0) {
        t->errors++;
        return NULL;
    }
    for (int k = 0; k < CC_MSGS; k++) {
        cc_msg_t *m = &t->msgs[k];
        const char *users[CC_GROUP_MAX];
        uint16_t sender = (uint16_t)(cc_rand(&rnd) % CC_USERS);
        m->id = ((uint64_t)(t->index + 1) << 32) | (uint64_t)k;
        m->users[0] = sender;
        m->n = 1;
        size_t want = cc_rand(&rnd) % 10 < 7 ? 2 : 3 + cc_rand(&rnd) % 18;
        while (m->n < want) {
            uint16_t u = (uint16_t)(cc_rand(&rnd) % CC_USERS);
            int seen = 0;
            for (int i = 0; i < m->n; i++)
                seen |= m->users[i] == u;
            if (!seen)
                m->users[m->n++] = u;
        }
        for (int i = 0; i < m->n; i++)
            users[i] = cc_names[m->users[i]];
        /* Every 10th message resends the previous one's client_msg_id. */
        char cmid[32], blob[32];
        int resend = k > 0 && k % 10 == 0;
        snprintf(cmid, sizeof(cmid), "t%d-%d", t->index, resend ? k - 1 : k);
        if (resend) {
            /* Same sender as the original, or it is another key. */
            m->users[0] = t->msgs[k - 1].users[0];
            users[0] = cc_names[m->users[0]];
            for (int i = 1; i < m->n; i++)
                if (m->users[i] == m->users[0])
                    m->users[i] = m->users[--m->n], i--;
            for (int i = 0; i < m->n; i++)
                users[i] = cc_names[m->users[i]];
        }
        int len = snprintf(blob, sizeof(blob), "%" PRIu64, m->id);
        imgw_store_append_t req;
        app_res_t res = {0, 0};
        memset(&req, 0, sizeof(req));
        req.sender = users[0];
        req.client_msg_id = cmid;
        req.message_id = m->id;
        req.server_time_ms = 0;
        req.conversation_id = "c";
        req.users = users;
        req.n_users = m->n;
        req.entry = (const uint8_t *)blob;
        req.entry_len = (size_t)len;
        req.seqs = m->seqs;
        /* No callback before the request returned; then exactly one. */
        if (imgw_store_append(sl, &req, app_cb, &res) != 0 || res.calls != 0 ||
            imgw_store_loop_run_completions(sl) != 1 || res.calls != 1 ||
            res.status != 0) {
            t->errors++;
            continue;
        }
        if (req.duplicate) {
            m->dup = 1;
            m->dup_of = req.dup_message_id;
        }
        if (resend != req.duplicate)
            t->errors++;
        if (resend && req.dup_message_id != t->msgs[k - 1].id)
            t->errors++;
    }
    imgw_store_loop_close(sl);
    return NULL;
}

typedef struct cc_reader_s {
    imgw_store_t *s;
    int errors;
    long pages;
} cc_reader_t;

typedef struct cc_page_s {
    int ok;
    size_t n;
    int calls;
} cc_page_t;

static void
cc_page_cb(int status, const imgw_store_entry_t *e, size_t n, int has_more,
           int64_t server_max_seq, int64_t oldest_seq, uint64_t epoch,
           void *data)
{
    cc_page_t *p = data;
    (void)has_more;
    p->calls++;
    (void)oldest_seq;
    (void)epoch;
    p->n = n;
    p->ok = status == 0;
    for (size_t i = 0; i < n; i++)
        if (e[i].seq > server_max_seq || e[i].len == 0 ||
            (i > 0 && e[i].seq != e[i - 1].seq + 1))
            p->ok = 0;
}

static void
cc_members_cb(int status, const char *const *members, size_t n, void *data)
{
    int *ok = data;
    *ok = status == IMGW_ENOTFOUND || (status == 0 && n >= 1 && members[0]);
}

static void *
cc_reader(void *arg)
{
    cc_reader_t *t = arg;
    imgw_store_loop_t *sl;
    uint32_t rnd = 12345;
    if (imgw_store_loop_open(t->s, CC_THREADS, NULL, &sl) != 0) {
        t->errors++;
        return NULL;
    }
    while (!cc_stop) {
        cc_page_t p = {0, 0, 0};
        const char *u = cc_names[cc_rand(&rnd) % CC_USERS];
        if (imgw_store_sync(sl, u, cc_rand(&rnd) % 50, 0, 50, cc_page_cb, &p) !=
                0 ||
            p.calls != 0 || imgw_store_loop_run_completions(sl) != 1 || !p.ok)
            t->errors++;
        const char *mem[] = {u, "x"};
        int ok = -1;
        imgw_store_group_set(sl, "gg", mem, 2, NULL, NULL);
        if (imgw_store_group_get(sl, "gg", cc_members_cb, &ok) != 0 ||
            ok != -1 || imgw_store_loop_run_completions(sl) != 1 || ok != 1)
            t->errors++;
        imgw_store_tick(t->s, 0); /* nothing expires at time 0 */
        t->pages++;
    }
    imgw_store_loop_close(sl);
    return NULL;
}

TEST(concurrent_appends)
{
    imgw_store_t *s;
    imgw_store_cfg_t cfg = {TEST_STORE_BACKEND, NULL, 100000, 7, 86400, 1000,
                            CC_THREADS + 1};
    char err[128];
    test_store_prep(&cfg);
    CHECK_EQ_INT(imgw_store_open(&s, &cfg, err, sizeof(err)), 0);
    for (int i = 0; i < CC_USERS; i++)
        snprintf(cc_names[i], sizeof(cc_names[i]), "u%d", i);
    cc_thread_t th[CC_THREADS];
    pthread_t tid[CC_THREADS], rid;
    cc_reader_t rd = {s, 0, 0};
    cc_stop = 0;
    for (int i = 0; i < CC_THREADS; i++) {
        th[i].s = s;
        th[i].index = i;
        th[i].errors = 0;
        th[i].msgs = calloc(CC_MSGS, sizeof(cc_msg_t));
        if (th[i].msgs == NULL)
            exit(2);
    }
    pthread_create(&rid, NULL, cc_reader, &rd);
    for (int i = 0; i < CC_THREADS; i++)
        pthread_create(&tid[i], NULL, cc_appender, &th[i]);
    for (int i = 0; i < CC_THREADS; i++)
        pthread_join(tid[i], NULL);
    cc_stop = 1;
    pthread_join(rid, NULL);
    int errors = 0;
    for (int i = 0; i < CC_THREADS; i++)
        errors += th[i].errors;
    CHECK_EQ_INT(errors, 0);
    CHECK_EQ_INT(rd.errors, 0);
    printf("  (reader made %ld passes)\n", rd.pages);

    /* Expected timelines from what each append reported. */
    static uint64_t expect[CC_USERS][CC_THREADS * CC_MSGS + 1];
    static int64_t count[CC_USERS];
    memset(expect, 0, sizeof(expect));
    memset(count, 0, sizeof(count));
    int collisions = 0, bad_seq = 0, dups = 0;
    for (int i = 0; i < CC_THREADS; i++)
        for (int k = 0; k < CC_MSGS; k++) {
            cc_msg_t *m = &th[i].msgs[k];
            if (m->dup) {
                dups++;
                continue;
            }
            for (int j = 0; j < m->n; j++) {
                int64_t q = m->seqs[j];
                if (q < 1 || q > CC_THREADS * CC_MSGS) {
                    bad_seq++;
                    continue;
                }
                if (expect[m->users[j]][q] != 0)
                    collisions++;
                expect[m->users[j]][q] = m->id;
                count[m->users[j]]++;
            }
        }
    CHECK_EQ_INT(collisions, 0);
    CHECK_EQ_INT(bad_seq, 0);
    CHECK_EQ_INT(dups, CC_THREADS * ((CC_MSGS - 1) / 10));

    /* Read every timeline back page by page. */
    imgw_store_loop_t *sl;
    imgw_store_loop_open(s, 0, NULL, &sl);
    fx_t f = {s, sl};
    int gaps = 0, wrong = 0, maxbad = 0;
    size_t total = 0;
    for (int u = 0; u < CC_USERS; u++) {
        int64_t next = 1, ms = max_seq(&f, cc_names[u]);
        if (ms != count[u])
            maxbad++;
        for (;;) {
            sync_res_t *r = do_sync(&f, cc_names[u], next - 1, 0, 500);
            for (size_t i = 0; i < r->n; i++) {
                if (r->seq[i] != next)
                    gaps++;
                if (r->mid[i] != expect[u][r->seq[i]])
                    wrong++;
                next = r->seq[i] + 1;
                total++;
            }
            if (!r->has_more || r->n == 0)
                break;
        }
        if (next - 1 != ms)
            gaps++;
    }
    CHECK_EQ_INT(maxbad, 0);
    CHECK_EQ_INT(gaps, 0);
    CHECK_EQ_INT(wrong, 0);
    size_t appended = 0;
    for (int u = 0; u < CC_USERS; u++)
        appended += (size_t)count[u];
    CHECK_EQ_INT(total, appended);
    imgw__store_mem_stats_t st = stats(&f);
    CHECK_EQ_INT(st.entries, appended);
    CHECK_EQ_INT(st.blobs_live, CC_THREADS * CC_MSGS - dups);
    CHECK_EQ_INT(st.metas, CC_THREADS * CC_MSGS - dups);
    imgw_store_loop_close(sl);
    imgw_store_close(s);
    for (int i = 0; i < CC_THREADS; i++)
        free(th[i].msgs);
}

#ifndef TEST_STORE_NO_MAIN
int
main(void)
{
    imgw_log_set_level(IMGW_LOG_WARN_L);
    sc_run_contract();
    RUN(open_errors);
    RUN(append_blobs_shared);
    RUN(append_refused_holds_nothing);
    RUN(retention_count);
    RUN(retention_age);
    RUN(dedupe);
    RUN(revoke_and_msg_get);
    RUN(record_caps);
    RUN(groups);
    RUN(routes);
    RUN(routes_shared_strings);
    RUN(watchers_single_node);
    RUN(positions);
    RUN(tick_sweeps);
    RUN(blob_dropped_meta_kept);
    RUN(index_many);
    RUN(idle_user_routes_inline);
    RUN(used_created_aged_freed);
    RUN(seq_ttl_rounds_up);
    RUN(id_validator);
    RUN(store_edge_ids_no_records);
    RUN(user_cap);
    RUN(seq_idle_expiry);
    RUN(timeline_epoch);
    RUN(reentrant_sync);
    RUN(failmalloc);
    RUN(concurrent_appends);
    TEST_DONE();
}
#endif
