/*
 * test_watchmap.c: unit tests for core/watchmap.c (presence subscriptions:
 * watched user -> connection refs).
 *
 * Includes watchmap.c to look at the shards' tables, so this binary is
 * built from this file alone (the static library's copy is not pulled).
 *
 * Threads: concurrent runs 4 threads on one map; the rest run on main.
 */
#include "watchmap.c"

#include "test.h"

#include <pthread.h>
#include <stdio.h>

#include "alloc.h"

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

TEST(add_get_remove)
{
    imgw_watchmap_t *m = NULL;
    CHECK_EQ_INT(imgw_watchmap_new(&m, 4), 0);
    imgw_conn_ref_t *refs = NULL;
    CHECK_EQ_INT(imgw_watchmap_get(m, "x", &refs), 0);
    CHECK(refs == NULL);
    /* the first watcher of a user on this node: 1; more, or again: 0 */
    CHECK_EQ_INT(imgw_watchmap_add(m, "x", mkref(0, 1, 1)), 1);
    CHECK_EQ_INT(imgw_watchmap_add(m, "x", mkref(1, 2, 1)), 0);
    CHECK_EQ_INT(imgw_watchmap_add(m, "x", mkref(1, 2, 1)), 0);
    CHECK_EQ_INT(imgw_watchmap_add(m, "y", mkref(1, 2, 1)), 1);
    CHECK_EQ_INT(imgw_watchmap_users(m), 2);
    CHECK_EQ_INT(imgw_watchmap_subs(m), 3);
    ssize_t n = imgw_watchmap_get(m, "x", &refs);
    CHECK_EQ_INT(n, 2);
    CHECK(refs != NULL && imgw_conn_ref_eq(refs[0], mkref(0, 1, 1)) &&
          imgw_conn_ref_eq(refs[1], mkref(1, 2, 1)));
    imgw_free(refs);
    /* a stale generation is another connection */
    CHECK_EQ_INT(imgw_watchmap_remove(m, "x", mkref(0, 1, 2)), 0);
    CHECK_EQ_INT(imgw_watchmap_remove(m, "x", mkref(0, 1, 1)), 1);
    CHECK_EQ_INT(imgw_watchmap_remove(m, "x", mkref(0, 1, 1)), 0);
    CHECK_EQ_INT(imgw_watchmap_remove(m, "x", mkref(1, 2, 1)), 1);
    /* the entry went with its last watcher; a new one is "first" again */
    CHECK_EQ_INT(imgw_watchmap_users(m), 1);
    CHECK_EQ_INT(imgw_watchmap_get(m, "x", &refs), 0);
    CHECK_EQ_INT(imgw_watchmap_add(m, "x", mkref(0, 1, 1)), 1);
    CHECK_EQ_INT(imgw_watchmap_subs(m), 2);
    imgw_watchmap_free(m); /* frees what is left (ASan: no leak) */
}

TEST(bad_args)
{
    imgw_watchmap_t *m = NULL;
    CHECK_EQ_INT(imgw_watchmap_new(&m, 1), 0);
    char big[200];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    CHECK_EQ_INT(imgw_watchmap_add(m, "", mkref(0, 1, 1)), IMGW_EINVAL);
    CHECK_EQ_INT(imgw_watchmap_add(m, big, mkref(0, 1, 1)), IMGW_EINVAL);
    CHECK_EQ_INT(imgw_watchmap_remove(m, "", mkref(0, 1, 1)), 0);
    imgw_conn_ref_t *refs = NULL;
    CHECK_EQ_INT(imgw_watchmap_get(m, big, &refs), 0);
    CHECK_EQ_INT(imgw_watchmap_users(m), 0);
    imgw_watchmap_free(m);
}

static void
count_user(const char *user, void *arg)
{
    (void)user;
    (*(size_t *)arg)++;
}

TEST(grow_and_foreach)
{
    imgw_watchmap_t *m = NULL;
    CHECK_EQ_INT(imgw_watchmap_new(&m, 2), 0);
    char id[32];
    for (int i = 0; i < 5000; i++) {
        snprintf(id, sizeof(id), "user%d", i);
        if (imgw_watchmap_add(m, id, mkref((uint16_t)(i % 4), (uint32_t)i, 1)) !=
            1)
            break;
    }
    CHECK_EQ_INT(imgw_watchmap_users(m), 5000);
    size_t buckets = 0;
    for (size_t i = 0; i < m->nshards; i++)
        buckets += m->shards[i].nbuckets;
    printf("  5000 users in %zu shards, %zu buckets\n", m->nshards, buckets);
    CHECK(buckets >= 5000 / 2); /* the tables grew */
    size_t seen = 0;
    imgw_watchmap_foreach_user(m, count_user, &seen);
    CHECK_EQ_INT(seen, 5000);
    imgw_conn_ref_t *refs = NULL;
    CHECK_EQ_INT(imgw_watchmap_get(m, "user4321", &refs), 1);
    CHECK(refs && refs[0].slot == 4321);
    imgw_free(refs);
    imgw_watchmap_free(m);
}

TEST(failmalloc)
{
    /* Every allocation of add, failing in turn: an error, never a broken
     * map or a leak (ASan), and the map still works afterwards. */
    imgw_watchmap_t *m = NULL;
    CHECK_EQ_INT(imgw_watchmap_new(&m, 1), 0);
    int failures = 0;
    for (int k = 1; k <= 3; k++) {
        char id[16];
        snprintf(id, sizeof(id), "f%d", k);
        imgw__alloc_fail_nth(k);
        int r = imgw_watchmap_add(m, id, mkref(0, 1, 1));
        int left = imgw__alloc_fail_nth(0);
        if (left == 0) { /* the k-th allocation did fail */
            failures++;
            CHECK_EQ_INT(r, IMGW_ENOMEM);
        }
    }
    CHECK(failures >= 2); /* the entry and its ref array */
    CHECK_EQ_INT(imgw_watchmap_subs(m), 3 - (size_t)failures);
    CHECK_EQ_INT(imgw_watchmap_users(m), 3 - (size_t)failures);
    CHECK_EQ_INT(imgw_watchmap_add(m, "after", mkref(0, 1, 1)), 1);
    imgw_watchmap_free(m);
}

typedef struct worker_s {
    imgw_watchmap_t *m;
    int id;
    int errors;
} worker_t;

static void *
worker(void *arg)
{
    worker_t *w = arg;
    char id[32];
    for (int round = 0; round < 200; round++) {
        for (int u = 0; u < 50; u++) {
            snprintf(id, sizeof(id), "shared%d", u);
            if (imgw_watchmap_add(w->m, id, mkref((uint16_t)w->id,
                                                  (uint32_t)u, 1)) < 0)
                w->errors++;
        }
        for (int u = 0; u < 50; u++) {
            snprintf(id, sizeof(id), "shared%d", u);
            imgw_conn_ref_t *refs = NULL;
            ssize_t n = imgw_watchmap_get(w->m, id, &refs);
            int mine = 0;
            for (ssize_t i = 0; i < n; i++)
                mine += refs[i].loop == w->id;
            imgw_free(refs);
            if (mine != 1)
                w->errors++;
            if (imgw_watchmap_remove(w->m, id, mkref((uint16_t)w->id,
                                                     (uint32_t)u, 1)) != 1)
                w->errors++;
        }
    }
    return NULL;
}

TEST(concurrent)
{
    imgw_watchmap_t *m = NULL;
    CHECK_EQ_INT(imgw_watchmap_new(&m, 8), 0);
    pthread_t t[4];
    worker_t w[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (worker_t){m, i, 0};
        pthread_create(&t[i], NULL, worker, &w[i]);
    }
    int errors = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        errors += w[i].errors;
    }
    CHECK_EQ_INT(errors, 0);
    CHECK_EQ_INT(imgw_watchmap_users(m), 0);
    CHECK_EQ_INT(imgw_watchmap_subs(m), 0);
    imgw_watchmap_free(m);
}

int
main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    RUN(add_get_remove);
    RUN(bad_args);
    RUN(grow_and_foreach);
    RUN(failmalloc);
    RUN(concurrent);
    TEST_DONE();
}
