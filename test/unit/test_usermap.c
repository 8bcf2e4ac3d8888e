/*
 * test_usermap.c: unit tests for core/usermap.c (user -> connections).
 *
 * Includes usermap.c itself to look at the shards' tables (bucket counts,
 * users per shard), so this binary is built from this file alone, without
 * linking usermap.c again.
 *
 * Threads: test_concurrent runs 4 threads on one map; the rest run on the
 * main thread. IMGW_TEST_SCALE (default 1, 0.25 under TSAN) scales the
 * user counts and iterations.
 */
#include "usermap.c"

#include "test.h"

#include <pthread.h>
#include <stdio.h>
#include <time.h>

#if defined(__SANITIZE_THREAD__)
#define UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define UNDER_TSAN 1
#endif
#endif
#ifndef UNDER_TSAN
#define UNDER_TSAN 0
#endif

static size_t
scaled(size_t n)
{
    const char *s = getenv("IMGW_TEST_SCALE");
    double f = s ? atof(s) : (UNDER_TSAN ? 0.25 : 1.0);
    if (f <= 0)
        f = 1.0;
    size_t r = (size_t)((double)n * f);
    return r < 1000 ? 1000 : r;
}

static double
now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static imgw_conn_ref_t
mkref(uint16_t loop, uint32_t slot, uint32_t gen)
{
    imgw_conn_ref_t r;
    memset(&r, 0, sizeof(r));
    r.loop = loop;
    r.slot = slot;
    r.gen = gen;
    return r;
}

static size_t
total_buckets(imgw_usermap_t *m)
{
    size_t nb = 0;
    for (size_t i = 0; i < m->nshards; i++)
        nb += m->shards[i].nbuckets;
    return nb;
}

/* ---- single thread ------------------------------------------------------- */

TEST(new_free)
{
    imgw_usermap_t *m = (imgw_usermap_t *)1;
    CHECK_EQ_INT(imgw_usermap_new(&m, 0), IMGW_EINVAL);
    CHECK(m == NULL);
    CHECK_EQ_INT(imgw_usermap_new(&m, UM_MAX_SHARDS + 1), IMGW_EINVAL);
    CHECK_EQ_INT(imgw_usermap_new(&m, 5), 0);
    CHECK_EQ_INT(m->nshards, 8);
    CHECK_EQ_INT((uintptr_t)m->shards % 64, 0);
    CHECK_EQ_INT(imgw_usermap_users(m), 0);
    imgw_usermap_free(m);
    imgw_usermap_free(NULL);
    CHECK_EQ_INT(imgw_usermap_new(&m, 1), 0);
    CHECK_EQ_INT(m->nshards, 1);
    imgw_usermap_free(m);
}

TEST(add_get_remove)
{
    imgw_usermap_t *m;
    imgw_usermap_conn_t out[IMGW_USERMAP_MAX_CONNS];
    imgw_conn_ref_t k = mkref(9, 9, 9);
    imgw_conn_ref_t r1 = mkref(0, 10, 1), r2 = mkref(1, 20, 1);

    imgw_usermap_new(&m, 16);
    CHECK_EQ_INT(imgw_usermap_get(m, "alice", out, 16), 0);
    CHECK_EQ_INT(imgw_usermap_add(m, "alice", "web", r1, &k), 0);
    CHECK_EQ_INT(imgw_usermap_users(m), 1);
    CHECK_EQ_INT(imgw_usermap_get(m, "alice", out, 16), 1);
    CHECK(imgw_conn_ref_eq(out[0].ref, r1));
    CHECK_EQ_STR(out[0].platform, "web");
    CHECK(imgw_conn_ref_eq(k, mkref(9, 9, 9))); /* untouched when 0 */

    CHECK_EQ_INT(imgw_usermap_add(m, "alice", "ios", r2, &k), 0);
    CHECK_EQ_INT(imgw_usermap_users(m), 1);
    CHECK_EQ_INT(imgw_usermap_get(m, "alice", out, 16), 2);
    CHECK(imgw_conn_ref_eq(out[0].ref, r1));
    CHECK(imgw_conn_ref_eq(out[1].ref, r2));
    CHECK_EQ_STR(out[1].platform, "ios");
    CHECK_EQ_INT(imgw_usermap_get(m, "alice", out, 1), 1); /* max */
    CHECK_EQ_INT(imgw_usermap_get(m, "alice", out, 0), 0);
    CHECK_EQ_INT(imgw_usermap_get(m, "alic", out, 16), 0);
    CHECK_EQ_INT(imgw_usermap_get(m, "alicee", out, 16), 0);

    CHECK_EQ_INT(imgw_usermap_remove(m, "alice", r1), 1);
    CHECK_EQ_INT(imgw_usermap_remove(m, "alice", r1), 0);
    CHECK_EQ_INT(imgw_usermap_get(m, "alice", out, 16), 1);
    CHECK(imgw_conn_ref_eq(out[0].ref, r2));
    CHECK_EQ_INT(imgw_usermap_remove(m, "bob", r2), 0); /* wrong user */
    CHECK_EQ_INT(imgw_usermap_remove(m, "alice", r2), 1);
    CHECK_EQ_INT(imgw_usermap_get(m, "alice", out, 16), 0);
    CHECK_EQ_INT(imgw_usermap_users(m), 0);

    /* idempotent add */
    CHECK_EQ_INT(imgw_usermap_add(m, "carol", "web", r1, NULL), 0);
    CHECK_EQ_INT(imgw_usermap_add(m, "carol", "web", r1, NULL), 0);
    CHECK_EQ_INT(imgw_usermap_get(m, "carol", out, 16), 1);
    CHECK_EQ_INT(imgw_usermap_users(m), 1);
    CHECK_EQ_INT(imgw_usermap_remove(m, "carol", r1), 1);
    CHECK_EQ_INT(imgw_usermap_users(m), 0);
    imgw_usermap_free(m);
}

TEST(kick_same_platform)
{
    imgw_usermap_t *m;
    imgw_usermap_conn_t out[IMGW_USERMAP_MAX_CONNS];
    imgw_conn_ref_t k;
    imgw_conn_ref_t r1 = mkref(0, 1, 1), r2 = mkref(1, 2, 1),
                    r3 = mkref(0, 3, 1);

    imgw_usermap_new(&m, 4);
    CHECK_EQ_INT(imgw_usermap_add(m, "bob", "web", r1, &k), 0);
    CHECK_EQ_INT(imgw_usermap_add(m, "bob", "android", r3, &k), 0);
    memset(&k, 0, sizeof(k));
    CHECK_EQ_INT(imgw_usermap_add(m, "bob", "web", r2, &k), 1);
    CHECK(imgw_conn_ref_eq(k, r1));
    CHECK_EQ_INT(imgw_usermap_get(m, "bob", out, 16), 2);
    int has_r2_web = 0, has_r1 = 0;
    for (int i = 0; i < 2; i++) {
        has_r2_web |= imgw_conn_ref_eq(out[i].ref, r2) &&
                      strcmp(out[i].platform, "web") == 0;
        has_r1 |= imgw_conn_ref_eq(out[i].ref, r1);
    }
    CHECK(has_r2_web);
    CHECK(!has_r1);
    /* the kicked connection's late remove does nothing */
    CHECK_EQ_INT(imgw_usermap_remove(m, "bob", r1), 0);
    CHECK_EQ_INT(imgw_usermap_get(m, "bob", out, 16), 2);
    /* kicked may be NULL */
    CHECK_EQ_INT(imgw_usermap_add(m, "bob", "web", r1, NULL), 1);

    /* A connection moving platform: r1 (web) re-added as android takes
     * android's place and leaves web. */
    CHECK_EQ_INT(imgw_usermap_add(m, "bob", "android", r1, &k), 1);
    CHECK(imgw_conn_ref_eq(k, r3));
    CHECK_EQ_INT(imgw_usermap_get(m, "bob", out, 16), 1);
    CHECK(imgw_conn_ref_eq(out[0].ref, r1));
    CHECK_EQ_STR(out[0].platform, "android");
    imgw_usermap_free(m);
}

/*
 * The map borrows the registering caller's platform string (a session's
 * own field) instead of copying it: a replaced, kicked or moved
 * connection's string must be let go at once, because its session frees
 * it. Each string here is a heap copy freed as soon as its connection is
 * out of the map, so a stale borrow is a use after free (ASan) or at least
 * a wrong platform (the freed bytes are overwritten first).
 */
static char *
heap_plat(const char *s)
{
    char *p = malloc(IMGW_USERMAP_PLATFORM);
    snprintf(p, IMGW_USERMAP_PLATFORM, "%s", s);
    return p;
}

static void
drop_plat(char *p)
{
    memset(p, 'X', IMGW_USERMAP_PLATFORM - 1);
    p[IMGW_USERMAP_PLATFORM - 1] = '\0';
    free(p);
}

TEST(platform_borrowed)
{
    imgw_usermap_t *m;
    imgw_usermap_conn_t out[IMGW_USERMAP_MAX_CONNS];
    imgw_conn_ref_t k;
    imgw_conn_ref_t r1 = mkref(0, 1, 1), r2 = mkref(1, 2, 1);

    imgw_usermap_new(&m, 4);
    char *p1 = heap_plat("web");
    CHECK_EQ_INT(imgw_usermap_add(m, "fay", p1, r1, &k), 0);
    /* r2 logs in on the same platform: r1 is kicked, its session goes */
    char *p2 = heap_plat("web");
    CHECK_EQ_INT(imgw_usermap_add(m, "fay", p2, r2, &k), 1);
    CHECK(imgw_conn_ref_eq(k, r1));
    drop_plat(p1);
    CHECK_EQ_INT(imgw_usermap_get(m, "fay", out, 16), 1);
    CHECK_EQ_STR(out[0].platform, "web");
    /* the same ref again with an equal string in another buffer */
    char *p3 = heap_plat("web");
    CHECK_EQ_INT(imgw_usermap_add(m, "fay", p3, r2, &k), 0);
    drop_plat(p2);
    CHECK_EQ_INT(imgw_usermap_get(m, "fay", out, 16), 1);
    CHECK_EQ_STR(out[0].platform, "web");
    /* r2 moves to another platform */
    char *p4 = heap_plat("ios");
    CHECK_EQ_INT(imgw_usermap_add(m, "fay", p4, r2, &k), 0);
    drop_plat(p3);
    CHECK_EQ_INT(imgw_usermap_get(m, "fay", out, 16), 1);
    CHECK_EQ_STR(out[0].platform, "ios");
    /* what get hands out are copies: they outlive the borrow */
    CHECK_EQ_INT(imgw_usermap_remove(m, "fay", r2), 1);
    drop_plat(p4);
    CHECK_EQ_STR(out[0].platform, "ios");
    CHECK_EQ_INT(imgw_usermap_get(m, "fay", out, 16), 0);
    imgw_usermap_free(m);
}

TEST(stale_ref)
{
    imgw_usermap_t *m;
    imgw_usermap_conn_t out[IMGW_USERMAP_MAX_CONNS];
    imgw_conn_ref_t cur = mkref(2, 77, 5);

    imgw_usermap_new(&m, 4);
    CHECK_EQ_INT(imgw_usermap_add(m, "dave", "web", cur, NULL), 0);
    /* same loop and slot, older or newer generation; other loop */
    CHECK_EQ_INT(imgw_usermap_remove(m, "dave", mkref(2, 77, 4)), 0);
    CHECK_EQ_INT(imgw_usermap_remove(m, "dave", mkref(2, 77, 6)), 0);
    CHECK_EQ_INT(imgw_usermap_remove(m, "dave", mkref(3, 77, 5)), 0);
    CHECK_EQ_INT(imgw_usermap_remove(m, "dave", mkref(2, 78, 5)), 0);
    CHECK_EQ_INT(imgw_usermap_get(m, "dave", out, 16), 1);
    CHECK(imgw_conn_ref_eq(out[0].ref, cur));
    CHECK_EQ_INT(imgw_usermap_users(m), 1);
    imgw_usermap_free(m);
}

TEST(max_conns)
{
    imgw_usermap_t *m;
    imgw_usermap_conn_t out[IMGW_USERMAP_MAX_CONNS + 4];
    char plat[IMGW_USERMAP_PLATFORM];
    /* borrowed by the map until removed: one buffer per connection */
    char plats[IMGW_USERMAP_MAX_CONNS][IMGW_USERMAP_PLATFORM];
    imgw_conn_ref_t k;
    int ok = 1;

    imgw_usermap_new(&m, 4);
    for (int i = 0; i < IMGW_USERMAP_MAX_CONNS; i++) {
        snprintf(plats[i], sizeof(plats[i]), "p%d", i);
        ok &= imgw_usermap_add(m, "eve", plats[i], mkref(0, (uint32_t)i, 1),
                               &k) == 0;
    }
    CHECK(ok);
    CHECK_EQ_INT(imgw_usermap_add(m, "eve", "one-more", mkref(0, 99, 1), &k),
                 IMGW_EQUEUEFULL);
    CHECK_EQ_INT(imgw_usermap_get(m, "eve", out, IMGW_USERMAP_MAX_CONNS + 4),
                 IMGW_USERMAP_MAX_CONNS);
    /* order is insertion order, and every platform/ref pair survived the
     * entry's reallocations */
    ok = 1;
    for (int i = 0; i < IMGW_USERMAP_MAX_CONNS; i++) {
        snprintf(plat, sizeof(plat), "p%d", i);
        ok &= out[i].ref.slot == (uint32_t)i &&
              strcmp(out[i].platform, plat) == 0;
    }
    CHECK(ok);
    /* full, but a same-platform replacement still works */
    CHECK_EQ_INT(imgw_usermap_add(m, "eve", "p3", mkref(1, 3, 2), &k), 1);
    CHECK(imgw_conn_ref_eq(k, mkref(0, 3, 1)));
    /* and an existing ref is still idempotent */
    CHECK_EQ_INT(imgw_usermap_add(m, "eve", "p4", mkref(0, 4, 1), &k), 0);
    /* after a remove there is room again */
    CHECK_EQ_INT(imgw_usermap_remove(m, "eve", mkref(0, 0, 1)), 1);
    CHECK_EQ_INT(imgw_usermap_add(m, "eve", "one-more", mkref(0, 99, 1), &k),
                 0);
    CHECK_EQ_INT(imgw_usermap_get(m, "eve", out, 4), 4);
    /* the user id is intact after the entry grew (it lives after conns) */
    um_shard_t *s = um_shard(m, um_hash("eve", 3));
    um_entry_t *e = *um_find(s, (uint32_t)um_hash("eve", 3), "eve", 3);
    CHECK(e != NULL);
    if (e != NULL) {
        CHECK_EQ_STR(um_entry_user(e), "eve");
        CHECK_EQ_INT(e->cap, IMGW_USERMAP_MAX_CONNS);
    }
    imgw_usermap_free(m);
}

TEST(bad_args)
{
    imgw_usermap_t *m;
    imgw_usermap_conn_t out[4];
    char u127[128], u128[129], p31[32], p32[33];
    imgw_conn_ref_t r = mkref(0, 1, 1);

    memset(u127, 'u', 127);
    u127[127] = '\0';
    memset(u128, 'u', 128);
    u128[128] = '\0';
    memset(p31, 'p', 31);
    p31[31] = '\0';
    memset(p32, 'p', 32);
    p32[32] = '\0';

    imgw_usermap_new(&m, 4);
    CHECK_EQ_INT(imgw_usermap_add(m, NULL, "web", r, NULL), IMGW_EINVAL);
    CHECK_EQ_INT(imgw_usermap_add(m, "", "web", r, NULL), IMGW_EINVAL);
    CHECK_EQ_INT(imgw_usermap_add(m, u128, "web", r, NULL), IMGW_EINVAL);
    CHECK_EQ_INT(imgw_usermap_add(m, "x", NULL, r, NULL), IMGW_EINVAL);
    CHECK_EQ_INT(imgw_usermap_add(m, "x", p32, r, NULL), IMGW_EINVAL);
    CHECK_EQ_INT(imgw_usermap_users(m), 0);
    CHECK_EQ_INT(imgw_usermap_add(m, u127, p31, r, NULL), 0);
    CHECK_EQ_INT(imgw_usermap_get(m, u127, out, 4), 1);
    CHECK_EQ_STR(out[0].platform, p31);
    CHECK_EQ_INT(imgw_usermap_add(m, "x", "", r, NULL), 0); /* "" platform */
    CHECK_EQ_INT(imgw_usermap_get(m, NULL, out, 4), 0);
    CHECK_EQ_INT(imgw_usermap_get(m, u128, out, 4), 0);
    CHECK_EQ_INT(imgw_usermap_remove(m, NULL, r), 0);
    CHECK_EQ_INT(imgw_usermap_remove(m, "", r), 0);
    CHECK_EQ_INT(imgw_usermap_remove(m, u128, r), 0);
    /* a 128-byte id must not alias its 127-byte prefix */
    CHECK_EQ_INT(imgw_usermap_remove(m, u127, r), 1);
    CHECK_EQ_INT(imgw_usermap_users(m), 1);
    imgw_usermap_free(m);
}

/* Many users: tables grow, lookups stay right, tables shrink back. */
TEST(grow_shrink)
{
    size_t n = scaled(200000);
    imgw_usermap_t *m;
    imgw_usermap_conn_t out[IMGW_USERMAP_MAX_CONNS];
    char user[32];

    imgw_usermap_new(&m, 64);
    size_t nb0 = total_buckets(m);
    double t0 = now_s();
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) {
        snprintf(user, sizeof(user), "user-%zu", i);
        bad += imgw_usermap_add(m, user, "web",
                                mkref((uint16_t)(i % 4), (uint32_t)i, 1),
                                NULL) != 0;
    }
    double t_add = now_s() - t0;
    CHECK_EQ_INT(bad, 0);
    CHECK_EQ_INT(imgw_usermap_users(m), n);
    size_t nb1 = total_buckets(m);
    CHECK(nb1 >= n / 4); /* grew: load factor <= 2 per shard, ~1-2 */
    size_t minu = SIZE_MAX, maxu = 0;
    for (size_t i = 0; i < m->nshards; i++) {
        size_t u = m->shards[i].n;
        minu = u < minu ? u : minu;
        maxu = u > maxu ? u : maxu;
        bad += u > UM_LOAD * m->shards[i].nbuckets;
    }
    CHECK_EQ_INT(bad, 0);
    /* the hash spreads users evenly over shards (mean n/64) */
    CHECK(maxu < (n / 64) * 5 / 4);
    CHECK(minu > (n / 64) * 3 / 4);

    t0 = now_s();
    for (size_t i = 0; i < n; i++) {
        snprintf(user, sizeof(user), "user-%zu", i);
        size_t k = imgw_usermap_get(m, user, out, IMGW_USERMAP_MAX_CONNS);
        bad += k != 1 || out[0].ref.slot != (uint32_t)i;
    }
    double t_get = now_s() - t0;
    CHECK_EQ_INT(bad, 0);

    /* remove the odd ones, check the even ones are still there */
    for (size_t i = 1; i < n; i += 2) {
        snprintf(user, sizeof(user), "user-%zu", i);
        bad += imgw_usermap_remove(
                   m, user, mkref((uint16_t)(i % 4), (uint32_t)i, 1)) != 1;
    }
    CHECK_EQ_INT(bad, 0);
    CHECK_EQ_INT(imgw_usermap_users(m), n - n / 2);
    for (size_t i = 0; i < n; i++) {
        snprintf(user, sizeof(user), "user-%zu", i);
        size_t k = imgw_usermap_get(m, user, out, IMGW_USERMAP_MAX_CONNS);
        bad += k != (i % 2 == 0 ? 1u : 0u);
    }
    CHECK_EQ_INT(bad, 0);
    t0 = now_s();
    for (size_t i = 0; i < n; i += 2) {
        snprintf(user, sizeof(user), "user-%zu", i);
        bad += imgw_usermap_remove(
                   m, user, mkref((uint16_t)(i % 4), (uint32_t)i, 1)) != 1;
    }
    double t_rm = now_s() - t0;
    CHECK_EQ_INT(bad, 0);
    CHECK_EQ_INT(imgw_usermap_users(m), 0);
    CHECK_EQ_INT(total_buckets(m), nb0); /* shrunk back to the minimum */
    printf("  info  %zu users: add %.0f ns, get %.0f ns, remove %.0f ns "
           "each; buckets %zu -> %zu -> %zu\n",
           n, t_add * 1e9 / (double)n, t_get * 1e9 / (double)n,
           t_rm * 1e9 / (double)(n - n / 2), nb0, nb1, total_buckets(m));
    imgw_usermap_free(m);
}

/* ---- threads ------------------------------------------------------------- */

enum {
    NT = 4,
    PRIV = 1000,  /* users only one thread touches */
    SHARED = 200, /* users every thread touches, each on its own platform */
    NPLAT = 3,    /* platforms a thread uses for its private users */
};

static const char *const priv_plat[NPLAT] = {"web", "ios", "android"};

/* One thread's view of its own connections: per user and platform slot,
 * the ref it registered (gen 0 = none). */
typedef struct model_s {
    imgw_conn_ref_t priv[PRIV][NPLAT];
    imgw_conn_ref_t shared[SHARED];
} model_t;

typedef struct cworker_s {
    imgw_usermap_t *m;
    int tid;
    size_t iters;
    model_t *model;
    uint64_t rng;
    uint32_t gen;
    size_t errors, adds, kicks, removes, gets;
} cworker_t;

static uint64_t
xs(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static void
user_name(char *buf, size_t size, int tid, int shared, int idx)
{
    if (shared)
        snprintf(buf, size, "shared-%d", idx);
    else
        snprintf(buf, size, "t%d-user-%d", tid, idx);
}

/* Checks that get() shows exactly this thread's connections for the user
 * (and, for a private user, nothing else). */
static size_t
verify_user(cworker_t *w, int shared, int idx)
{
    imgw_usermap_conn_t out[IMGW_USERMAP_MAX_CONNS];
    char user[48];
    const imgw_conn_ref_t *mine =
        shared ? &w->model->shared[idx] : w->model->priv[idx];
    int nmine = shared ? 1 : NPLAT;
    size_t errors = 0, expect = 0, seen = 0;

    user_name(user, sizeof(user), w->tid, shared, idx);
    size_t k = imgw_usermap_get(w->m, user, out, IMGW_USERMAP_MAX_CONNS);
    for (int p = 0; p < nmine; p++)
        expect += mine[p].gen != 0;
    for (size_t i = 0; i < k; i++) {
        if (out[i].ref.loop != w->tid) {
            errors += !shared; /* someone else in a private user */
            continue;
        }
        seen++;
        int found = 0;
        for (int p = 0; p < nmine; p++) {
            const char *plat = shared ? NULL : priv_plat[p];
            char sp[8];
            if (shared) {
                snprintf(sp, sizeof(sp), "p%d", w->tid);
                plat = sp;
            }
            if (mine[p].gen != 0 && imgw_conn_ref_eq(out[i].ref, mine[p]) &&
                strcmp(out[i].platform, plat) == 0)
                found = 1;
        }
        errors += !found;
    }
    errors += seen != expect;
    return errors;
}

static void *
cworker(void *arg)
{
    cworker_t *w = arg;
    char user[48];
    /* The map borrows platforms until removal (usermap.h): the thread's
     * own one outlives the thread, for the final checks. */
    static char sps[NT][8];
    char *sp = sps[w->tid];
    snprintf(sp, sizeof(sps[0]), "p%d", w->tid);

    for (size_t it = 0; it < w->iters; it++) {
        uint64_t r = xs(&w->rng);
        int shared = (r & 3) == 0; /* a quarter of the ops on shared users */
        int idx = (int)((r >> 8) % (shared ? SHARED : PRIV));
        int p = shared ? 0 : (int)((r >> 40) % NPLAT);
        imgw_conn_ref_t *slot =
            shared ? &w->model->shared[idx] : &w->model->priv[idx][p];
        const char *plat = shared ? sp : priv_plat[p];
        int op = (int)((r >> 32) % 8);
        user_name(user, sizeof(user), w->tid, shared, idx);

        if (op < 3) { /* add, kicking our own previous one if any */
            imgw_conn_ref_t ref =
                mkref((uint16_t)w->tid, (uint32_t)(r >> 48), ++w->gen);
            imgw_conn_ref_t k = mkref(0, 0, 0);
            int rc = imgw_usermap_add(w->m, user, plat, ref, &k);
            if (slot->gen != 0)
                w->errors += rc != 1 || !imgw_conn_ref_eq(k, *slot);
            else
                w->errors += rc != 0;
            w->kicks += rc == 1;
            w->adds++;
            /* the kicked ref is stale now: its remove must do nothing */
            if (rc == 1)
                w->errors += imgw_usermap_remove(w->m, user, k) != 0;
            *slot = ref;
        } else if (op < 5) { /* remove */
            if (slot->gen != 0) {
                w->errors += imgw_usermap_remove(w->m, user, *slot) != 1;
                slot->gen = 0;
            } else {
                imgw_conn_ref_t never =
                    mkref((uint16_t)w->tid, 0xffffffffu, 0xffffffffu);
                w->errors += imgw_usermap_remove(w->m, user, never) != 0;
            }
            w->removes++;
        } else { /* get */
            w->errors += verify_user(w, shared, idx);
            w->gets++;
        }
    }
    return NULL;
}

TEST(concurrent)
{
    imgw_usermap_t *m;
    cworker_t w[NT];
    pthread_t th[NT];
    size_t iters = scaled(300000);

    imgw_usermap_new(&m, 8); /* few shards: more lock contention */
    double t0 = now_s();
    for (int i = 0; i < NT; i++) {
        memset(&w[i], 0, sizeof(w[i]));
        w[i].m = m;
        w[i].tid = i;
        w[i].iters = iters;
        w[i].model = calloc(1, sizeof(model_t));
        w[i].rng = 0x9e3779b97f4a7c15ULL * (uint64_t)(i + 1);
        pthread_create(&th[i], NULL, cworker, &w[i]);
    }
    size_t errors = 0, ops = 0, kicks = 0;
    for (int i = 0; i < NT; i++) {
        pthread_join(th[i], NULL);
        errors += w[i].errors;
        kicks += w[i].kicks;
        ops += w[i].adds + w[i].removes + w[i].gets;
    }
    double dt = now_s() - t0;
    CHECK_EQ_INT(errors, 0);
    CHECK(kicks > 0);

    /* Final state: exactly the union of the threads' models. */
    size_t users = 0, final_errors = 0;
    for (int idx = 0; idx < SHARED; idx++) {
        int any = 0;
        imgw_usermap_conn_t out[IMGW_USERMAP_MAX_CONNS];
        char user[48];
        size_t expect = 0;
        for (int t = 0; t < NT; t++) {
            final_errors += verify_user(&w[t], 1, idx);
            expect += w[t].model->shared[idx].gen != 0;
        }
        any = expect > 0;
        user_name(user, sizeof(user), 0, 1, idx);
        final_errors += imgw_usermap_get(m, user, out, 16) != expect;
        users += (size_t)any;
    }
    for (int t = 0; t < NT; t++) {
        for (int idx = 0; idx < PRIV; idx++) {
            final_errors += verify_user(&w[t], 0, idx);
            int any = 0;
            for (int p = 0; p < NPLAT; p++)
                any |= w[t].model->priv[idx][p].gen != 0;
            users += (size_t)any;
        }
    }
    CHECK_EQ_INT(final_errors, 0);
    CHECK_EQ_INT(imgw_usermap_users(m), users);
    size_t shard_sum = 0;
    for (size_t i = 0; i < m->nshards; i++)
        shard_sum += m->shards[i].n;
    CHECK_EQ_INT(shard_sum, users);

    /* Removing every modelled connection empties the map. */
    for (int t = 0; t < NT; t++) {
        char user[48];
        for (int idx = 0; idx < SHARED; idx++) {
            if (w[t].model->shared[idx].gen == 0)
                continue;
            user_name(user, sizeof(user), t, 1, idx);
            final_errors +=
                imgw_usermap_remove(m, user, w[t].model->shared[idx]) != 1;
        }
        for (int idx = 0; idx < PRIV; idx++)
            for (int p = 0; p < NPLAT; p++) {
                if (w[t].model->priv[idx][p].gen == 0)
                    continue;
                user_name(user, sizeof(user), t, 0, idx);
                final_errors +=
                    imgw_usermap_remove(m, user, w[t].model->priv[idx][p]) != 1;
            }
    }
    CHECK_EQ_INT(final_errors, 0);
    CHECK_EQ_INT(imgw_usermap_users(m), 0);
    printf("  info  %zu ops from %d threads in %.3f s (%.2f M ops/s), "
           "%zu kicks, %zu users at the end\n",
           ops, NT, dt, (double)ops / dt / 1e6, kicks, users);
    for (int i = 0; i < NT; i++)
        free(w[i].model);
    imgw_usermap_free(m);
}

/* The per-user budget is one bucket per user, whatever connection (loop)
 * charges it; refills at rate, capped at burst; absent users are free. */
TEST(user_budget)
{
    imgw_usermap_t *m = NULL;
    CHECK_EQ_INT(imgw_usermap_new(&m, 4), 0);
    CHECK_EQ_INT(imgw_usermap_add(m, "u", "Web", mkref(0, 1, 1), NULL), 0);
    CHECK_EQ_INT(imgw_usermap_add(m, "u", "iOS", mkref(1, 1, 1), NULL), 0);
    CHECK_EQ_INT(imgw_usermap_add(m, "v", "Web", mkref(2, 1, 1), NULL), 0);
    int taken = 0;
    for (int i = 0; i < 10; i++)
        taken +=
            imgw_usermap_take(m, "u", IMGW_USERMAP_BUDGET_SEND, 2.0, 4.0, 1000);
    CHECK_EQ_INT(taken, 4); /* the burst, shared by both connections */
    /* other budgets and other users are separate */
    CHECK_EQ_INT(
        imgw_usermap_take(m, "u", IMGW_USERMAP_BUDGET_RECEIPT, 2.0, 4.0, 1000),
        1);
    CHECK_EQ_INT(
        imgw_usermap_take(m, "v", IMGW_USERMAP_BUDGET_SEND, 2.0, 4.0, 1000), 1);
    /* 1 s later: rate 2 -> two more */
    taken = 0;
    for (int i = 0; i < 10; i++)
        taken +=
            imgw_usermap_take(m, "u", IMGW_USERMAP_BUDGET_SEND, 2.0, 4.0, 2000);
    CHECK_EQ_INT(taken, 2);
    /* a clock behind the last refill adds nothing */
    CHECK_EQ_INT(
        imgw_usermap_take(m, "u", IMGW_USERMAP_BUDGET_SEND, 2.0, 4.0, 1500), 0);
    /* long idle: capped at the burst */
    taken = 0;
    for (int i = 0; i < 10; i++)
        taken += imgw_usermap_take(m, "u", IMGW_USERMAP_BUDGET_SEND, 2.0, 4.0,
                                   100000);
    CHECK_EQ_INT(taken, 4);
    /* the bucket survives a connection growing the entry (realloc) */
    CHECK_EQ_INT(imgw_usermap_add(m, "u", "Android", mkref(3, 1, 1), NULL), 0);
    CHECK_EQ_INT(
        imgw_usermap_take(m, "u", IMGW_USERMAP_BUDGET_SEND, 2.0, 4.0, 100000),
        0);
    /* not in the map: not charged */
    CHECK_EQ_INT(
        imgw_usermap_take(m, "nobody", IMGW_USERMAP_BUDGET_SEND, 0.0, 0.0, 1),
        1);
    /* The buckets are made at a user's first take: without memory that
     * take is let through (the connection's own buckets still bound it),
     * and the next take, with memory, makes them and charges from there. */
    printf("  checks: a user's first take without memory passes, the next "
           "makes the buckets\n");
    CHECK_EQ_INT(imgw_usermap_add(m, "w", "Web", mkref(4, 1, 1), NULL), 0);
    imgw__alloc_fail_nth(1);
    CHECK_EQ_INT(
        imgw_usermap_take(m, "w", IMGW_USERMAP_BUDGET_SEND, 1.0, 1.0, 5000), 1);
    CHECK_EQ_INT(imgw__alloc_fail_nth(0), 0); /* the failure happened */
    CHECK_EQ_INT(
        imgw_usermap_take(m, "w", IMGW_USERMAP_BUDGET_SEND, 1.0, 1.0, 5000), 1);
    CHECK_EQ_INT(
        imgw_usermap_take(m, "w", IMGW_USERMAP_BUDGET_SEND, 1.0, 1.0, 5000), 0);
    imgw_usermap_free(m);
}

int
main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    RUN(new_free);
    RUN(add_get_remove);
    RUN(kick_same_platform);
    RUN(platform_borrowed);
    RUN(stale_ref);
    RUN(max_conns);
    RUN(bad_args);
    RUN(grow_shrink);
    RUN(user_budget);
    RUN(concurrent);
    TEST_DONE();
}
