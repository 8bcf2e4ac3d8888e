/*
 * store_contract.c: the cases every store backend must pass, and the
 * request helpers (each issues one request, checks that its callback did
 * not run before the request function returned, and waits for it).
 * Included by each backend's test file after it defined the driver of
 * store_contract.h; run with sc_run_contract().
 *
 * Since store.h's calling-convention change (callbacks never run before
 * the request function returns, refusals included), a refusal is the
 * callback's status: the helpers return it like any other status.
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "store.h"
#include "store_contract.h"
#include "store_impl.h"
#include "test.h"

#ifndef SC_SETS_UNORDERED
#define SC_SETS_UNORDERED 0
#endif

/* Callbacks that ran before their request function returned. */
static int sc_early;

static void
sc_note_early(int calls)
{
    if (calls != 0) {
        sc_early++;
        printf("  FAIL  a callback ran before its request returned\n");
    }
}

/* What every case ends with: no callback ran early, then close. */
static void
sc_close_checked(fx_t *f)
{
    CHECK_EQ_INT(sc_early, 0);
    sc_early = 0;
    sc_close(f);
}

/* ---- append ---------------------------------------------------------- */

typedef struct app_res_s {
    int calls;
    int status;
} app_res_t;

static void
app_cb(imgw_store_append_t *req, int status, void *data)
{
    app_res_t *r = data;
    (void)req;
    r->calls++;
    r->status = status;
}

/*
 * Appends message id mid (blob = its decimal text) from users[0] to
 * users; fills seqs. Returns the callback's status (-1: it did not run
 * exactly once, -2: the request function refused it); *req_out (if given)
 * receives the request for its dedupe fields.
 */
static int
append_msg(fx_t *f, const char *cmid, uint64_t mid, const char *conv,
           const char *const *users, size_t n, int64_t *seqs,
           imgw_store_append_t *req_out)
{
    char blob[32];
    int len = snprintf(blob, sizeof(blob), "%" PRIu64, mid);
    imgw_store_append_t req;
    app_res_t res = {0, 0};
    memset(&req, 0, sizeof(req));
    req.sender = users[0];
    req.client_msg_id = cmid;
    req.message_id = mid;
    req.server_time_ms = sc_time_ms(mid);
    req.conversation_id = conv;
    req.users = users;
    req.n_users = n;
    req.entry = (const uint8_t *)blob;
    req.entry_len = (size_t)len;
    req.seqs = seqs;
    if (imgw_store_append(f->sl, &req, app_cb, &res) != 0)
        return -2;
    sc_note_early(res.calls);
    if (!sc_wait(f, &res.calls) || res.calls != 1)
        return -1;
    if (req_out)
        *req_out = req;
    return res.status;
}

/* ---- sync ------------------------------------------------------------ */

#define PAGE_MAX 600

typedef struct sync_res_s {
    int calls;
    int status;
    size_t n;
    int has_more;
    int64_t server_max;
    int64_t oldest;
    uint64_t epoch;
    int64_t seq[PAGE_MAX];
    uint64_t mid[PAGE_MAX]; /* the blob parsed back */
    int revoked[PAGE_MAX];
} sync_res_t;

static void
sync_cb(int status, const imgw_store_entry_t *e, size_t n, int has_more,
        int64_t server_max_seq, int64_t oldest_seq, uint64_t epoch, void *data)
{
    sync_res_t *r = data;
    r->calls++;
    r->status = status;
    r->n = n;
    r->has_more = has_more;
    r->server_max = server_max_seq;
    r->oldest = oldest_seq;
    r->epoch = epoch;
    for (size_t i = 0; i < n && i < PAGE_MAX; i++) {
        char buf[32];
        size_t l = e[i].len < sizeof(buf) - 1 ? e[i].len : sizeof(buf) - 1;
        memcpy(buf, e[i].blob, l);
        buf[l] = '\0';
        r->seq[i] = e[i].seq;
        r->mid[i] = strtoull(buf, NULL, 10);
        r->revoked[i] = e[i].revoked;
    }
}

static sync_res_t *
do_sync(fx_t *f, const char *user, int64_t min, int64_t max, int limit)
{
    static sync_res_t r;
    memset(&r, 0, sizeof(r));
    int rc = imgw_store_sync(f->sl, user, min, max, limit, sync_cb, &r);
    if (rc != 0) {
        r.status = -2;
        return &r;
    }
    sc_note_early(r.calls);
    if (!sc_wait(f, &r.calls) || r.calls != 1)
        r.status = -1;
    return &r;
}

typedef struct val_res_s {
    int calls;
    int status;
    int64_t v;
    uint64_t epoch;
} val_res_t;

static uint64_t last_epoch; /* epoch of the last max_seq() */

static void
seq_cb(int status, int64_t max_seq, uint64_t epoch, void *data)
{
    val_res_t *r = data;
    r->calls++;
    r->status = status;
    r->v = max_seq;
    r->epoch = epoch;
    last_epoch = epoch;
}

/* max_seq, or -1000 + the callback's status (-2: refused, -3: no cb). */
static int64_t
max_seq(fx_t *f, const char *user)
{
    val_res_t r = {0, 0, 0, 0};
    if (imgw_store_max_seq(f->sl, user, seq_cb, &r) != 0)
        return -2;
    sc_note_early(r.calls);
    if (!sc_wait(f, &r.calls))
        return -3;
    return r.status == 0 ? r.v : -1000 + r.status;
}

static void
done_cb(int status, void *data)
{
    val_res_t *r = data;
    r->calls++;
    r->status = status;
}

/*
 * Runs one request with an imgw_store_done_cb, written with `done_cb, res`
 * as its callback and data, and evaluates to the callback's status (-2:
 * the request function refused it, -1: no callback, -3: more than one).
 */
#define DONE(f, call_with_cb)                                                  \
    ({                                                                         \
        val_res_t r_ = {0, 12345, 0, 0};                                          \
        val_res_t *res = &r_;                                                  \
        int rc_ = (call_with_cb);                                              \
        if (rc_ == 0) {                                                        \
            sc_note_early(r_.calls);                                           \
            if (!sc_wait((f), &r_.calls))                                      \
                rc_ = -1;                                                      \
        } else {                                                               \
            rc_ = -2;                                                          \
        }                                                                      \
        rc_ == 0 ? (r_.calls == 1 ? r_.status : -3) : rc_;                     \
    })

/* ---- messages, groups, routes ----------------------------------------- */

typedef struct msg_res_s {
    int calls;
    int status;
    imgw_store_msg_t m;
    char sender[128];
    char conv[512];
} msg_res_t;

static void
msg_cb(int status, const imgw_store_msg_t *m, void *data)
{
    msg_res_t *r = data;
    r->calls++;
    r->status = status;
    if (m != NULL) {
        r->m = *m;
        snprintf(r->sender, sizeof(r->sender), "%s", m->sender);
        snprintf(r->conv, sizeof(r->conv), "%s", m->conversation_id);
    }
}

static msg_res_t *
msg_get(fx_t *f, uint64_t id)
{
    static msg_res_t r;
    memset(&r, 0, sizeof(r));
    if (imgw_store_msg_get(f->sl, id, msg_cb, &r) != 0) {
        r.status = -2;
        return &r;
    }
    sc_note_early(r.calls);
    if (!sc_wait(f, &r.calls))
        r.status = -1;
    return &r;
}

typedef struct grp_res_s {
    int calls;
    int status;
    size_t n;
    char m[8][16];
    fx_t *reenter; /* if set: replace the group from inside the callback */
} grp_res_t;

static int
cmp_str16(const void *a, const void *b)
{
    return strcmp(a, b);
}

static void
grp_cb(int status, const char *const *members, size_t n, void *data)
{
    grp_res_t *r = data;
    r->calls++;
    r->status = status;
    r->n = n;
    if (r->reenter != NULL) {
        /* No lock is held: this must not deadlock, and members (the old
         * list) must stay readable after the group was replaced. */
        const char *other[] = {"zz"};
        imgw_store_group_set(r->reenter->sl, "g1", other, 1, NULL, NULL);
    }
    for (size_t i = 0; i < n && i < 8; i++)
        snprintf(r->m[i], sizeof(r->m[i]), "%s", members[i]);
    /* Redis sets have no order: sort so checks can name positions. */
    if (SC_SETS_UNORDERED)
        qsort(r->m, n < 8 ? n : 8, sizeof(r->m[0]), cmp_str16);
}

static grp_res_t *
group_get(fx_t *f, const char *gid)
{
    static grp_res_t r;
    memset(&r, 0, sizeof(r));
    if (imgw_store_group_get(f->sl, gid, grp_cb, &r) != 0) {
        r.status = -2;
        return &r;
    }
    sc_note_early(r.calls);
    if (!sc_wait(f, &r.calls))
        r.status = -1;
    return &r;
}

typedef struct route_res_s {
    int calls;
    int status;
    size_t n;
    char p[IMGW_STORE_MAX_ROUTES][16];
    char b[IMGW_STORE_MAX_ROUTES][16];
} route_res_t;

static void
route_cb(int status, const imgw_store_route_t *r, size_t n, void *data)
{
    route_res_t *x = data;
    x->calls++;
    x->status = status;
    x->n = status == 0 ? n : 999;
    for (size_t i = 0; i < n && i < IMGW_STORE_MAX_ROUTES; i++) {
        snprintf(x->p[i], sizeof(x->p[i]), "%s", r[i].platform);
        snprintf(x->b[i], sizeof(x->b[i]), "%s", r[i].broker_id);
    }
}

/* n is 999 for a failed callback, 998 refused, 997 no callback. */
static route_res_t *
routes(fx_t *f, const char *user)
{
    static route_res_t r;
    memset(&r, 0, sizeof(r));
    if (imgw_store_route_get(f->sl, user, route_cb, &r) != 0) {
        r.n = 998;
        return &r;
    }
    sc_note_early(r.calls);
    if (!sc_wait(f, &r.calls))
        r.n = 997;
    return &r;
}

/* imgw_store_watch_get, like routes(): the nodes watching user. */
static route_res_t *
watchers(fx_t *f, const char *user)
{
    static route_res_t r;
    memset(&r, 0, sizeof(r));
    if (imgw_store_watch_get(f->sl, user, route_cb, &r) != 0) {
        r.n = 998;
        return &r;
    }
    sc_note_early(r.calls);
    if (!sc_wait(f, &r.calls))
        r.n = 997;
    return &r;
}

/* The broker of platform p in the last route_get, or "" if absent. */
static const char *
route_of(route_res_t *r, const char *p)
{
    for (size_t i = 0; i < r->n && i < IMGW_STORE_MAX_ROUTES; i++)
        if (strcmp(r->p[i], p) == 0)
            return r->b[i];
    return "";
}

/* ---- the contract ------------------------------------------------------- */

/* Counts the callbacks of the callbacks_later case; sc_all is set when
 * sc_expect of them ran. */
static int sc_calls, sc_expect, sc_all;

static void
sc_count(void)
{
    if (++sc_calls == sc_expect)
        sc_all = 1;
}

static void
cnt_append(imgw_store_append_t *req, int status, void *data)
{
    (void)req;
    *(int *)data = status;
    sc_count();
}
static void
cnt_sync(int status, const imgw_store_entry_t *e, size_t n, int more,
         int64_t max, int64_t oldest, uint64_t epoch, void *data)
{
    (void)e, (void)n, (void)more, (void)max, (void)oldest, (void)epoch;
    *(int *)data = status;
    sc_count();
}
static void
cnt_seq(int status, int64_t v, uint64_t epoch, void *data)
{
    (void)v, (void)epoch;
    *(int *)data = status;
    sc_count();
}
static void
cnt_dedupe(int status, uint64_t id, int64_t seq, void *data)
{
    (void)id, (void)seq;
    *(int *)data = status;
    sc_count();
}
static void
cnt_done(int status, void *data)
{
    *(int *)data = status;
    sc_count();
}
static void
cnt_msg(int status, const imgw_store_msg_t *m, void *data)
{
    (void)m;
    *(int *)data = status;
    sc_count();
}
static void
cnt_members(int status, const char *const *m, size_t n, void *data)
{
    (void)m, (void)n;
    *(int *)data = status;
    sc_count();
}
static void
cnt_routes(int status, const imgw_store_route_t *r, size_t n, void *data)
{
    (void)r, (void)n;
    *(int *)data = status;
    sc_count();
}

/*
 * store.h: no callback runs before its request function returns, for
 * accepted and refused requests of every kind; each runs exactly once
 * later, with the refusal as its status. Only a NULL handle or a NULL
 * result callback is refused by the return value, and then nothing runs.
 */
TEST(callbacks_later)
{
    fx_t f;
    sc_open(&f, 1000, 86400);
    enum { K = 32 };
    int st[K];
    for (int i = 0; i < K; i++)
        st[i] = 12345;
    const char *ab[] = {"a", "b"};
    int64_t s2[2];
    imgw_store_append_t ok, bad;
    memset(&ok, 0, sizeof(ok));
    ok.sender = "a";
    ok.client_msg_id = "k1";
    ok.message_id = 7001;
    ok.server_time_ms = sc_time_ms(7001);
    ok.conversation_id = "s_a_b";
    ok.users = ab;
    ok.n_users = 2;
    ok.entry = (const uint8_t *)"x";
    ok.entry_len = 1;
    ok.seqs = s2;
    bad = ok;
    bad.n_users = 0; /* refused: no users */
    static const char *many[IMGW_STORE_MAX_GROUP + 1];
    for (int i = 0; i <= IMGW_STORE_MAX_GROUP; i++)
        many[i] = "m";
    sc_calls = sc_all = 0;
    sc_expect = -1;
    int n = 0;
    imgw_store_loop_t *sl = f.sl;
    CHECK_EQ_INT(imgw_store_append(sl, &ok, cnt_append, &st[n++]), 0);
    CHECK_EQ_INT(imgw_store_append(sl, &bad, cnt_append, &st[n++]), 0);
    CHECK_EQ_INT(imgw_store_sync(sl, "a", 0, 0, 10, cnt_sync, &st[n++]), 0);
    CHECK_EQ_INT(imgw_store_sync(sl, "a b", 0, 0, 10, cnt_sync, &st[n++]), 0);
    CHECK_EQ_INT(imgw_store_max_seq(sl, "a", cnt_seq, &st[n++]), 0);
    CHECK_EQ_INT(imgw_store_max_seq(sl, "", cnt_seq, &st[n++]), 0);
    CHECK_EQ_INT(imgw_store_dedupe_get(sl, "a", "k1", cnt_dedupe, &st[n++]), 0);
    CHECK_EQ_INT(imgw_store_dedupe_get(sl, "a", "", cnt_dedupe, &st[n++]), 0);
    CHECK_EQ_INT(imgw_store_set_delivered(sl, "a", "d", 1, cnt_done, &st[n++]),
                 0);
    CHECK_EQ_INT(imgw_store_set_delivered(sl, "a", "d", -1, cnt_done, &st[n++]),
                 0);
    CHECK_EQ_INT(imgw_store_set_read(sl, "a", "s_a_b", "1", cnt_done, &st[n++]),
                 0);
    CHECK_EQ_INT(imgw_store_set_read(sl, "a", "", "1", cnt_done, &st[n++]), 0);
    CHECK_EQ_INT(imgw_store_msg_get(sl, 7001, cnt_msg, &st[n++]), 0);
    CHECK_EQ_INT(imgw_store_msg_get(sl, 999999, cnt_msg, &st[n++]), 0);
    CHECK_EQ_INT(imgw_store_revoke(sl, 999999, cnt_done, &st[n++]), 0);
    CHECK_EQ_INT(imgw_store_group_set(sl, "g1", ab, 2, cnt_done, &st[n++]), 0);
    CHECK_EQ_INT(imgw_store_group_set(sl, "g2", many, IMGW_STORE_MAX_GROUP + 1,
                                      cnt_done, &st[n++]),
                 0);
    CHECK_EQ_INT(imgw_store_group_get(sl, "g1", cnt_members, &st[n++]), 0);
    CHECK_EQ_INT(imgw_store_group_get(sl, "g:1", cnt_members, &st[n++]), 0);
    CHECK_EQ_INT(imgw_store_group_del(sl, "nog", cnt_done, &st[n++]), 0);
    CHECK_EQ_INT(imgw_store_group_del(sl, "g 1", cnt_done, &st[n++]), 0);
    CHECK_EQ_INT(
        imgw_store_route_set(sl, "a", "ios", "n1", 60, cnt_done, &st[n++]), 0);
    CHECK_EQ_INT(
        imgw_store_route_set(sl, "a", "ios", "n1", 0, cnt_done, &st[n++]), 0);
    CHECK_EQ_INT(imgw_store_route_get(sl, "a", cnt_routes, &st[n++]), 0);
    CHECK_EQ_INT(imgw_store_route_get(sl, "a:", cnt_routes, &st[n++]), 0);
    CHECK_EQ_INT(imgw_store_route_refresh(sl, "a", 60, cnt_done, &st[n++]), 0);
    CHECK_EQ_INT(imgw_store_route_refresh(sl, "a\n", 60, cnt_done, &st[n++]),
                 0);
    CHECK_EQ_INT(imgw_store_route_del(sl, "a", "ios", "n2", cnt_done, &st[n++]),
                 0);
    CHECK_EQ_INT(imgw_store_route_del(sl, "a", "", "n2", cnt_done, &st[n++]),
                 0);
    printf("  %d requests issued, %d callbacks ran before they returned\n", n,
           sc_calls);
    CHECK_EQ_INT(sc_calls, 0);
    /* Only a caller bug is refused by the return value; nothing runs. */
    CHECK_EQ_INT(imgw_store_sync(NULL, "a", 0, 0, 1, cnt_sync, &st[K - 1]),
                 IMGW_EINVAL);
    CHECK_EQ_INT(imgw_store_max_seq(sl, "a", NULL, NULL), IMGW_EINVAL);
    CHECK_EQ_INT(imgw_store_append(sl, &ok, NULL, NULL), IMGW_EINVAL);
    /* A refused request with no callback is simply dropped. */
    CHECK_EQ_INT(imgw_store_set_delivered(sl, "a", "d", -1, NULL, NULL), 0);
    sc_expect = n;
    sc_wait(&f, &sc_all);
    CHECK_EQ_INT(sc_calls, n);
    int k = 0;
    CHECK_EQ_INT(st[k++], 0);           /* append */
    CHECK_EQ_INT(st[k++], IMGW_EINVAL); /* append without users */
    CHECK_EQ_INT(st[k++], 0);           /* sync */
    CHECK_EQ_INT(st[k++], IMGW_EINVAL);
    CHECK_EQ_INT(st[k++], 0);           /* max_seq */
    CHECK_EQ_INT(st[k++], IMGW_EINVAL);
    CHECK_EQ_INT(st[k++], 0);           /* dedupe_get of the append's key */
    CHECK_EQ_INT(st[k++], IMGW_EINVAL); /* empty client_msg_id */
    CHECK_EQ_INT(st[k++], 0);           /* set_delivered */
    CHECK_EQ_INT(st[k++], IMGW_EINVAL);
    CHECK_EQ_INT(st[k++], 0);           /* set_read */
    CHECK_EQ_INT(st[k++], IMGW_EINVAL);
    CHECK_EQ_INT(st[k++], 0);              /* msg_get of the append */
    CHECK_EQ_INT(st[k++], IMGW_ENOTFOUND); /* unknown message */
    CHECK_EQ_INT(st[k++], IMGW_ENOTFOUND); /* revoke unknown */
    CHECK_EQ_INT(st[k++], 0);
    CHECK_EQ_INT(st[k++], IMGW_ETOOBIG);
    CHECK_EQ_INT(st[k++], 0);
    CHECK_EQ_INT(st[k++], IMGW_EINVAL);
    CHECK_EQ_INT(st[k++], IMGW_ENOTFOUND); /* group_del of no group */
    CHECK_EQ_INT(st[k++], IMGW_EINVAL);
    CHECK_EQ_INT(st[k++], 0);
    CHECK_EQ_INT(st[k++], IMGW_EINVAL); /* ttl 0 */
    CHECK_EQ_INT(st[k++], 0);
    CHECK_EQ_INT(st[k++], IMGW_EINVAL);
    CHECK_EQ_INT(st[k++], 0);
    CHECK_EQ_INT(st[k++], IMGW_EINVAL);
    CHECK_EQ_INT(st[k++], 0);
    CHECK_EQ_INT(st[k++], IMGW_EINVAL);
    CHECK_EQ_INT(k, n);
    CHECK_EQ_INT(st[K - 1], 12345);
    /* The refused append changed nothing. */
    CHECK_EQ_INT(max_seq(&f, "a"), 1);
    sc_close_checked(&f);
}

/*
 * What a callback receives is what the store held when the request ran,
 * even when the state changes before the callback does (store.c copies
 * the results of a completion that has to wait; redis answers in order).
 */
TEST(results_are_the_request_time_state)
{
    fx_t f;
    sc_open(&f, 2, 86400);
    const char *aa[] = {"a"}, *m1[] = {"u1", "u2"}, *m2[] = {"zz"};
    int64_t s1[1];
    append_msg(&f, "", 1, "c", aa, 1, s1, NULL);
    append_msg(&f, "", 2, "c", aa, 1, s1, NULL);
    CHECK_EQ_INT(
        DONE(&f, imgw_store_group_set(f.sl, "g1", m1, 2, done_cb, res)), 0);
    static sync_res_t sr;
    static grp_res_t gr;
    memset(&sr, 0, sizeof(sr));
    memset(&gr, 0, sizeof(gr));
    CHECK_EQ_INT(imgw_store_sync(f.sl, "a", 0, 0, 10, sync_cb, &sr), 0);
    CHECK_EQ_INT(imgw_store_group_get(f.sl, "g1", grp_cb, &gr), 0);
    /* Retention 2: these trim entry 1 and replace the group before the
     * callbacks above have run. */
    append_msg(&f, "", 3, "c", aa, 1, s1, NULL);
    append_msg(&f, "", 4, "c", aa, 1, s1, NULL);
    CHECK_EQ_INT(
        DONE(&f, imgw_store_group_set(f.sl, "g1", m2, 1, done_cb, res)), 0);
    sc_wait(&f, &sr.calls);
    sc_wait(&f, &gr.calls);
    CHECK(sr.calls == 1 && sr.status == 0 && sr.n == 2);
    CHECK(sr.mid[0] == 1 && sr.mid[1] == 2 && sr.seq[1] == 2);
    CHECK(gr.calls == 1 && gr.status == 0 && gr.n == 2);
    CHECK_EQ_STR(gr.m[0], "u1");
    CHECK_EQ_STR(gr.m[1], "u2");
    sync_res_t *r = do_sync(&f, "a", 0, 0, 10);
    CHECK(r->n == 2 && r->mid[0] == 3 && r->mid[1] == 4);
    CHECK_EQ_STR(group_get(&f, "g1")->m[0], "zz");
    sc_close_checked(&f);
}

/* Seqs per user, over 1:1 and group appends. */
TEST(append_seq_per_user)
{
    fx_t f;
    sc_open(&f, 1000, 86400);
    int64_t s2[2], s4[4];
    const char *ab[] = {"a", "b"}, *ac[] = {"a", "c"}, *ba[] = {"b", "a"};
    const char *grp[] = {"c", "a", "b", "d"};

    CHECK_EQ_INT(append_msg(&f, "", 1, "s_a_b", ab, 2, s2, NULL), 0);
    CHECK_EQ_INT(s2[0], 1);
    CHECK_EQ_INT(s2[1], 1);
    CHECK_EQ_INT(append_msg(&f, "", 2, "s_a_c", ac, 2, s2, NULL), 0);
    CHECK_EQ_INT(s2[0], 2);
    CHECK_EQ_INT(s2[1], 1);
    CHECK_EQ_INT(append_msg(&f, "", 3, "s_a_b", ba, 2, s2, NULL), 0);
    CHECK_EQ_INT(s2[0], 2); /* b */
    CHECK_EQ_INT(s2[1], 3); /* a */
    CHECK_EQ_INT(append_msg(&f, "", 4, "g_g1", grp, 4, s4, NULL), 0);
    CHECK_EQ_INT(s4[0], 2); /* c */
    CHECK_EQ_INT(s4[1], 4); /* a */
    CHECK_EQ_INT(s4[2], 3); /* b */
    CHECK_EQ_INT(s4[3], 1); /* d */
    CHECK_EQ_INT(max_seq(&f, "a"), 4);
    CHECK_EQ_INT(max_seq(&f, "b"), 3);
    CHECK_EQ_INT(max_seq(&f, "c"), 2);
    CHECK_EQ_INT(max_seq(&f, "d"), 1);
    CHECK_EQ_INT(max_seq(&f, "nobody"), 0);

    sync_res_t *r = do_sync(&f, "a", 0, 0, 100);
    CHECK_EQ_INT(r->status, 0);
    CHECK_EQ_INT(r->n, 4);
    CHECK_EQ_INT(r->server_max, 4);
    CHECK_EQ_INT(r->has_more, 0);
    CHECK(r->seq[0] == 1 && r->seq[1] == 2 && r->seq[2] == 3 && r->seq[3] == 4);
    CHECK(r->mid[0] == 1 && r->mid[1] == 2 && r->mid[2] == 3 && r->mid[3] == 4);
    r = do_sync(&f, "d", 0, 0, 100);
    CHECK_EQ_INT(r->n, 1);
    CHECK_EQ_INT(r->mid[0], 4);
    sc_close_checked(&f);
}

/* Bounds, a reused message id: refused in the callback, nothing stored. */
TEST(append_refused)
{
    fx_t f;
    sc_open(&f, 1000, 86400);
    static int64_t seqs[IMGW_STORE_MAX_GROUP + 1];
    const char *one[] = {"a"};
    char longid[IMGW__STORE_ID_MAX + 2];
    memset(longid, 'x', sizeof(longid) - 1);
    longid[sizeof(longid) - 1] = '\0';
    const char *bad[] = {"a", longid};
    CHECK_EQ_INT(append_msg(&f, "", 1, "c", one, 0, seqs, NULL), IMGW_EINVAL);
    CHECK_EQ_INT(append_msg(&f, "", 1, "c", bad, 2, seqs, NULL), IMGW_EINVAL);
    CHECK_EQ_INT(append_msg(&f, longid, 1, "c", one, 1, seqs, NULL),
                 IMGW_EINVAL); /* client_msg_id over 127 bytes */
    static const char *many[IMGW_STORE_MAX_GROUP + 1];
    static char names[IMGW_STORE_MAX_GROUP + 1][16];
    for (int i = 0; i <= IMGW_STORE_MAX_GROUP; i++) {
        snprintf(names[i], sizeof(names[i]), "u%d", i);
        many[i] = names[i];
    }
    CHECK_EQ_INT(
        append_msg(&f, "", 1, "c", many, IMGW_STORE_MAX_GROUP + 1, seqs, NULL),
        IMGW_ETOOBIG);
    CHECK_EQ_INT(
        append_msg(&f, "", 1, "c", many, IMGW_STORE_MAX_GROUP, seqs, NULL), 0);
    CHECK_EQ_INT(seqs[IMGW_STORE_MAX_GROUP - 1], 1);
    /* A reused message id is refused with nothing appended. */
    CHECK_EQ_INT(append_msg(&f, "", 1, "c", one, 1, seqs, NULL), IMGW_EEXIST);
    CHECK_EQ_INT(max_seq(&f, "u0"), 1);
    CHECK_EQ_INT(max_seq(&f, "a"), 0);
    sc_close_checked(&f);
}

TEST(sync_ranges_and_paging)
{
    fx_t f;
    sc_open(&f, 10000, 86400);
    const char *ab[] = {"a", "b"};
    int64_t s2[2];
    for (uint64_t i = 1; i <= 10; i++)
        append_msg(&f, "", 100 + i, "s_a_b", ab, 2, s2, NULL);

    sync_res_t *r = do_sync(&f, "a", 0, 0, 3);
    CHECK_EQ_INT(r->n, 3);
    CHECK_EQ_INT(r->seq[0], 1);
    CHECK_EQ_INT(r->seq[2], 3);
    CHECK_EQ_INT(r->mid[2], 103);
    CHECK_EQ_INT(r->has_more, 1);
    CHECK_EQ_INT(r->server_max, 10);
    r = do_sync(&f, "a", 3, 0, 3);
    CHECK(r->n == 3 && r->seq[0] == 4 && r->seq[2] == 6 && r->has_more);
    r = do_sync(&f, "a", 9, 0, 3);
    CHECK(r->n == 1 && r->seq[0] == 10 && !r->has_more);
    r = do_sync(&f, "a", 10, 0, 3);
    CHECK(r->n == 0 && !r->has_more && r->server_max == 10);
    r = do_sync(&f, "a", 2, 5, 100); /* 2 < seq <= 5 */
    CHECK(r->n == 3 && r->seq[0] == 3 && r->seq[2] == 5 && !r->has_more);
    r = do_sync(&f, "a", 2, 5, 2);
    CHECK(r->n == 2 && r->seq[0] == 3 && r->seq[1] == 4 && r->has_more);
    r = do_sync(&f, "a", 2, 5, 3); /* exactly the range: no more */
    CHECK(r->n == 3 && !r->has_more);
    r = do_sync(&f, "a", 5, 3, 10); /* empty range */
    CHECK(r->status == 0 && r->n == 0 && !r->has_more);
    r = do_sync(&f, "a", 0, 1000, 100); /* max beyond server max */
    CHECK(r->n == 10 && !r->has_more);
    r = do_sync(&f, "nobody", 0, 0, 100);
    CHECK(r->status == 0 && r->calls == 1 && r->n == 0 && r->server_max == 0 &&
          !r->has_more);
    r = do_sync(&f, "a", INT64_MAX, 0, 10);
    CHECK(r->status == 0 && r->n == 0 && !r->has_more);
    r = do_sync(&f, "a", 0, INT64_MAX, 10);
    CHECK(r->status == 0 && r->n == 10 && !r->has_more);
    CHECK_EQ_INT(do_sync(&f, "a", -1, 0, 10)->status, IMGW_EINVAL);
    CHECK_EQ_INT(do_sync(&f, "a", 0, -1, 10)->status, IMGW_EINVAL);

    /* limit clamping: <= 0 is 100, above the cap is IMGW_STORE_SYNC_MAX. */
    for (uint64_t i = 11; i <= 560; i++)
        append_msg(&f, "", 100 + i, "s_a_b", ab, 2, s2, NULL);
    r = do_sync(&f, "b", 0, 0, 0);
    CHECK(r->n == 100 && r->has_more && r->seq[99] == 100);
    r = do_sync(&f, "b", 0, 0, -5);
    CHECK_EQ_INT(r->n, 100);
    r = do_sync(&f, "b", 0, 0, 100000);
    CHECK_EQ_INT(r->n, IMGW_STORE_SYNC_MAX);
    CHECK_EQ_INT(r->has_more, 1);
    CHECK_EQ_INT(r->seq[IMGW_STORE_SYNC_MAX - 1], IMGW_STORE_SYNC_MAX);
    r = do_sync(&f, "b", 500, 0, 100000);
    CHECK(r->n == 60 && !r->has_more && r->seq[59] == 560);
    CHECK_EQ_INT(r->mid[59], 660);
    sc_close_checked(&f);
}

/*
 * The audit's collision: ("eve", "x-1") and ("eve-x", "1") are different
 * (sender, client_msg_id) pairs and must both be stored, with their own
 * ids and seqs (Redis: the key must keep the parts apart).
 */
TEST(dedupe_key_collision)
{
    fx_t f;
    sc_open(&f, 1000, 86400);
    int64_t s2[2];
    imgw_store_append_t req;
    const char *eve[] = {"eve", "bob"}, *evex[] = {"eve-x", "bob"};
    CHECK_EQ_INT(append_msg(&f, "x-1", 1, "s_bob_eve", eve, 2, s2, &req), 0);
    CHECK_EQ_INT(req.duplicate, 0);
    CHECK_EQ_INT(append_msg(&f, "1", 2, "s_bob_eve-x", evex, 2, s2, &req), 0);
    CHECK_EQ_INT(req.duplicate, 0);
    CHECK_EQ_INT(s2[0], 1);
    CHECK_EQ_INT(s2[1], 2); /* bob got both */
    CHECK_EQ_INT(max_seq(&f, "eve-x"), 1);
    sync_res_t *r = do_sync(&f, "bob", 0, 0, 10);
    CHECK(r->n == 2 && r->mid[0] == 1 && r->mid[1] == 2);
    /* Each pair still dedupes itself. */
    CHECK_EQ_INT(append_msg(&f, "1", 3, "s_bob_eve-x", evex, 2, s2, &req), 0);
    CHECK(req.duplicate == 1 && req.dup_message_id == 2);
    CHECK_EQ_INT(append_msg(&f, "x-1", 4, "s_bob_eve", eve, 2, s2, &req), 0);
    CHECK(req.duplicate == 1 && req.dup_message_id == 1);
    sc_close_checked(&f);
}

/* Every request refuses ids outside the syntax up front, whoever calls. */
TEST(store_edge_ids)
{
    fx_t f;
    sc_open(&f, 1000, 86400);
    int64_t s2[2];
    const char *ctl[] = {"a", "b\x01"}, *colon[] = {"a:x", "b"};
    const char *sp[] = {"a", "b c"}, *ok[] = {"a", "b"};
    CHECK_EQ_INT(append_msg(&f, "", 1, "c", ctl, 2, s2, NULL), IMGW_EINVAL);
    CHECK_EQ_INT(append_msg(&f, "", 1, "c", colon, 2, s2, NULL), IMGW_EINVAL);
    CHECK_EQ_INT(append_msg(&f, "", 1, "c", sp, 2, s2, NULL), IMGW_EINVAL);
    CHECK_EQ_INT(append_msg(&f, "a b", 1, "c", ok, 2, s2, NULL), IMGW_EINVAL);
    CHECK_EQ_INT(append_msg(&f, "a\x1b", 1, "c", ok, 2, s2, NULL), IMGW_EINVAL);
    CHECK_EQ_INT(max_seq(&f, "a"), 0); /* nothing was created */
    CHECK_EQ_INT(append_msg(&f, "k:1/2", 1, "c", ok, 2, s2, NULL), 0);
    CHECK_EQ_INT(do_sync(&f, "a:x", 0, 0, 10)->status, IMGW_EINVAL);
    CHECK_EQ_INT(do_sync(&f, "b\n", 0, 0, 10)->status, IMGW_EINVAL);
    CHECK_EQ_INT(max_seq(&f, "a b"), -1000 + IMGW_EINVAL);
    CHECK_EQ_INT(
        DONE(&f, imgw_store_set_delivered(f.sl, "a\x7f", "d", 1, done_cb, res)),
        IMGW_EINVAL);
    CHECK_EQ_INT(
        DONE(&f, imgw_store_set_read(f.sl, "a:", "s_a_b", "1", done_cb, res)),
        IMGW_EINVAL);
    CHECK_EQ_INT(DONE(&f, imgw_store_set_read(f.sl, "a", "s_a_b", "1\x01",
                                              done_cb, res)),
                 IMGW_EINVAL);
    const char *mem_bad[] = {"a", "b\x01"};
    CHECK_EQ_INT(
        DONE(&f, imgw_store_group_set(f.sl, "g:1", ok, 2, done_cb, res)),
        IMGW_EINVAL);
    CHECK_EQ_INT(
        DONE(&f, imgw_store_group_set(f.sl, "g1", mem_bad, 2, done_cb, res)),
        IMGW_EINVAL);
    CHECK_EQ_INT(DONE(&f, imgw_store_group_del(f.sl, "g/1", done_cb, res)),
                 IMGW_EINVAL);
    CHECK_EQ_INT(DONE(&f, imgw_store_route_set(f.sl, "a b", "ios", "n1", 60,
                                               done_cb, res)),
                 IMGW_EINVAL);
    CHECK_EQ_INT(
        DONE(&f, imgw_store_route_refresh(f.sl, "a\r", 60, done_cb, res)),
        IMGW_EINVAL);
    CHECK_EQ_INT(group_get(&f, "g1")->status, IMGW_ENOTFOUND);
    CHECK_EQ_INT(routes(&f, "a")->n, 0);
    sc_close_checked(&f);
}


/* ---- conversations (store.h "conversations", issue 13) ------------------ */

static uint64_t conv_mid = 900000;

/* users[0] sends a text message with preview text to users; status. */
static int
conv_post(fx_t *f, const char *conv, const char *const *users, size_t n,
          const char *text)
{
    int64_t seqs[8];
    char blob[32];
    int len = snprintf(blob, sizeof(blob), "%" PRIu64, ++conv_mid);
    imgw_store_append_t req;
    app_res_t res = {0, 0};
    memset(&req, 0, sizeof(req));
    req.sender = users[0];
    req.client_msg_id = "";
    req.message_id = conv_mid;
    req.server_time_ms = sc_time_ms(conv_mid);
    req.conversation_id = conv;
    req.users = users;
    req.n_users = n;
    req.entry = (const uint8_t *)blob;
    req.entry_len = (size_t)len;
    req.seqs = seqs;
    req.msg_type = 1;
    req.preview = text;
    if (imgw_store_append(f->sl, &req, app_cb, &res) != 0)
        return -2;
    sc_note_early(res.calls);
    if (!sc_wait(f, &res.calls) || res.calls != 1)
        return -1;
    return res.status;
}

typedef struct list_res_s {
    int calls, status, has_more;
    size_t n;
    uint64_t total;
    imgw_store_conv_t c[IMGW_STORE_CONV_PAGE_MAX];
} list_res_t;

static void
list_cb(int status, const imgw_store_conv_t *c, size_t n, int has_more,
        uint64_t total_unread, void *data)
{
    list_res_t *r = data;
    r->calls++;
    r->status = status;
    r->n = n;
    r->has_more = has_more;
    r->total = total_unread;
    if (n > 0)
        memcpy(r->c, c, n * sizeof(*c));
}

static list_res_t conv_lr;

/* One list page of user's conversations (status -2: refused, -3: no cb). */
static list_res_t *
conv_list(fx_t *f, const char *user, int64_t before, int limit)
{
    memset(&conv_lr, 0, sizeof(conv_lr));
    if (imgw_store_conv_list(f->sl, user, before, limit, list_cb, &conv_lr) !=
        0) {
        conv_lr.status = -2;
        return &conv_lr;
    }
    sc_note_early(conv_lr.calls);
    if (!sc_wait(f, &conv_lr.calls) || conv_lr.calls != 1)
        conv_lr.status = -3;
    return &conv_lr;
}

#define CONV_S IMGW_STORE_CONV_SINGLE
#define CONV_G IMGW_STORE_CONV_GROUP

#define CONV_READ(f, user, kind, peer, seq)                                    \
    DONE(f, imgw_store_conv_read((f)->sl, user, kind, peer, seq, done_cb, res))
#define CONV_DEL(f, user, kind, peer)                                          \
    DONE(f, imgw_store_conv_delete((f)->sl, user, kind, peer, done_cb, res))

TEST(conv_unread_single)
{
    fx_t f;
    sc_open(&f, 1000, 60);
    const char *ab[] = {"alice", "bob"}, *ba[] = {"bob", "alice"};
    CHECK_EQ_INT(conv_post(&f, "s_alice_bob", ab, 2, "hi"), 0);
    CHECK_EQ_INT(conv_post(&f, "s_alice_bob", ab, 2, "there"), 0);
    CHECK_EQ_INT(conv_post(&f, "s_alice_bob", ba, 2, "yo"), 0);
    CHECK_EQ_INT(conv_post(&f, "s_alice_bob", ab, 2, "last"), 0);
    list_res_t *r = conv_list(&f, "bob", 0, 0);
    CHECK_EQ_INT(r->status, 0);
    CHECK_EQ_INT(r->n, 1);
    CHECK_EQ_INT(r->c[0].kind, CONV_S);
    CHECK_EQ_STR(r->c[0].peer, "alice");
    CHECK_EQ_INT(r->c[0].unread, 3); /* bob's own "yo" not counted */
    CHECK_EQ_INT(r->total, 3);
    CHECK_EQ_STR(r->c[0].last_sender, "alice");
    CHECK_EQ_STR(r->c[0].preview, "last");
    CHECK_EQ_INT(r->c[0].last_type, 1);
    CHECK_EQ_INT(r->c[0].last_message_id, conv_mid);
    CHECK_EQ_INT(r->c[0].last_seq, 4);
    CHECK_EQ_INT(r->c[0].read_seq, 0);
    CHECK(r->c[0].updated_ms > 0);
    CHECK_EQ_INT(r->has_more, 0);
    r = conv_list(&f, "alice", 0, 0);
    CHECK_EQ_INT(r->n, 1);
    CHECK_EQ_STR(r->c[0].peer, "bob");
    CHECK_EQ_INT(r->c[0].unread, 1); /* only bob's "yo" */
    CHECK_EQ_INT(r->total, 1);
    r = conv_list(&f, "carol", 0, 0);
    CHECK_EQ_INT(r->status, 0);
    CHECK_EQ_INT(r->n, 0);
    CHECK_EQ_INT(r->total, 0);
    /* A note to self: one user, own messages never unread. */
    const char *self[] = {"alice"};
    CHECK_EQ_INT(conv_post(&f, "s_alice_alice", self, 1, "memo"), 0);
    r = conv_list(&f, "alice", 0, 0);
    CHECK_EQ_INT(r->n, 2);
    CHECK_EQ_STR(r->c[0].peer, "alice");
    CHECK_EQ_INT(r->c[0].unread, 0);
    CHECK_EQ_INT(r->total, 1);
    sc_close_checked(&f);
}

TEST(conv_unread_group_and_ambiguous_ids)
{
    fx_t f;
    sc_open(&f, 1000, 60);
    const char *g[] = {"alice", "bob", "carol"},
               *gb[] = {"bob", "alice", "carol"};
    CHECK_EQ_INT(conv_post(&f, "g_team", g, 3, "g1"), 0);
    CHECK_EQ_INT(conv_post(&f, "g_team", gb, 3, "g2"), 0);
    list_res_t *r = conv_list(&f, "carol", 0, 0);
    CHECK_EQ_INT(r->n, 1);
    CHECK_EQ_INT(r->c[0].kind, CONV_G);
    CHECK_EQ_STR(r->c[0].peer, "team");
    CHECK_EQ_INT(r->c[0].unread, 2);
    CHECK_EQ_STR(r->c[0].last_sender, "bob");
    r = conv_list(&f, "alice", 0, 0);
    CHECK_EQ_INT(r->c[0].unread, 1);
    /* "s_a_b_c" names both (a_b, c) and (a, b_c): kept apart by peer. */
    const char *p1[] = {"a_b", "c"}, *p2[] = {"a", "b_c"};
    CHECK_EQ_INT(conv_post(&f, "s_a_b_c", p1, 2, "one"), 0);
    CHECK_EQ_INT(conv_post(&f, "s_a_b_c", p2, 2, "two"), 0);
    r = conv_list(&f, "c", 0, 0);
    CHECK_EQ_INT(r->n, 1);
    CHECK_EQ_STR(r->c[0].peer, "a_b");
    CHECK_EQ_STR(r->c[0].preview, "one");
    r = conv_list(&f, "b_c", 0, 0);
    CHECK_EQ_INT(r->n, 1);
    CHECK_EQ_STR(r->c[0].peer, "a");
    CHECK_EQ_STR(r->c[0].preview, "two");
    /* A group and a 1:1 with the same name are two conversations. */
    const char *tb[] = {"team", "carol"};
    CHECK_EQ_INT(conv_post(&f, "s_carol_team", tb, 2, "dm"), 0);
    r = conv_list(&f, "carol", 0, 0);
    CHECK_EQ_INT(r->n, 2);
    CHECK_EQ_INT(r->c[0].kind, CONV_S);
    CHECK_EQ_INT(r->c[1].kind, CONV_G);
    CHECK_EQ_INT(r->total, 3);
    /* No conversation id: no conversation state. */
    CHECK_EQ_INT(conv_post(&f, "", tb, 2, "sys"), 0);
    CHECK_EQ_INT(conv_list(&f, "carol", 0, 0)->n, 2);
    /* A preview with every byte a string may hold, kept as given. */
    CHECK_EQ_INT(conv_post(&f, "s_carol_team", tb, 2, "a:b\\c\"d\n%s"), 0);
    CHECK_EQ_STR(conv_list(&f, "carol", 0, 1)->c[0].preview, "a:b\\c\"d\n%s");
    sc_close_checked(&f);
}

TEST(conv_read_positions)
{
    fx_t f;
    sc_open(&f, 1000, 60);
    const char *ab[] = {"alice", "bob"}, *g[] = {"alice", "bob", "carol"};
    const char *ba[] = {"bob", "alice"};
    for (int i = 0; i < 3; i++)
        CHECK_EQ_INT(conv_post(&f, "s_alice_bob", ab, 2, "m"), 0); /* 1..3 */
    CHECK_EQ_INT(conv_post(&f, "s_alice_bob", ba, 2, "own"), 0);   /* 4 */
    CHECK_EQ_INT(conv_post(&f, "s_alice_bob", ab, 2, "m"), 0);     /* 5 */
    CHECK_EQ_INT(conv_post(&f, "g_team", g, 3, "g"), 0);           /* 6 */
    CHECK_EQ_INT(conv_list(&f, "bob", 0, 0)->total, 5);
    /* Read up to seq 2: 3 and 5 stay unread (recounted; 4 is bob's). */
    CHECK_EQ_INT(CONV_READ(&f, "bob", CONV_S, "alice", 2), 0);
    list_res_t *r = conv_list(&f, "bob", 0, 0);
    CHECK_EQ_STR(r->c[1].peer, "alice");
    CHECK_EQ_INT(r->c[1].unread, 2);
    CHECK_EQ_INT(r->c[1].read_seq, 2);
    CHECK_EQ_INT(r->c[0].unread, 1); /* the group untouched */
    CHECK_EQ_INT(r->total, 3);
    /* Never back. */
    CHECK_EQ_INT(CONV_READ(&f, "bob", CONV_S, "alice", 1), 0);
    CHECK_EQ_INT(conv_list(&f, "bob", 0, 0)->c[1].unread, 2);
    CHECK_EQ_INT(conv_list(&f, "bob", 0, 0)->c[1].read_seq, 2);
    /* 0 = everything. */
    CHECK_EQ_INT(CONV_READ(&f, "bob", CONV_S, "alice", 0), 0);
    r = conv_list(&f, "bob", 0, 0);
    CHECK_EQ_INT(r->c[1].unread, 0);
    CHECK_EQ_INT(r->c[1].read_seq, 5);
    /* Past the last message = up to it. */
    CHECK_EQ_INT(CONV_READ(&f, "bob", CONV_G, "team", 999), 0);
    r = conv_list(&f, "bob", 0, 0);
    CHECK_EQ_INT(r->c[0].read_seq, 6);
    CHECK_EQ_INT(r->total, 0);
    /* A conversation the user is not in, or has no state for. */
    CHECK_EQ_INT(CONV_READ(&f, "bob", CONV_S, "carol", 0), IMGW_ENOTFOUND);
    CHECK_EQ_INT(CONV_READ(&f, "nobody", CONV_S, "alice", 0),
                 IMGW_ENOTFOUND);
    CHECK_EQ_INT(CONV_READ(&f, "bob", CONV_S, "team", 0), IMGW_ENOTFOUND);
    /* Refused up front. */
    CHECK_EQ_INT(CONV_READ(&f, "bob", 7, "alice", 0), IMGW_EINVAL);
    CHECK_EQ_INT(CONV_READ(&f, "bob", CONV_S, "bad id", 0), IMGW_EINVAL);
    CHECK_EQ_INT(CONV_READ(&f, "bob", CONV_S, "alice", -1), IMGW_EINVAL);
    CHECK_EQ_INT(CONV_READ(&f, "b:b", CONV_S, "alice", 0), IMGW_EINVAL);
    /* A new message after the read counts again. */
    CHECK_EQ_INT(conv_post(&f, "s_alice_bob", ab, 2, "new"), 0);
    r = conv_list(&f, "bob", 0, 0);
    CHECK_EQ_INT(r->c[0].unread, 1);
    CHECK_EQ_INT(r->c[0].read_seq, 5);
    CHECK_EQ_INT(r->total, 1);
    sc_close_checked(&f);
}

TEST(conv_paging_and_order)
{
    fx_t f;
    sc_open(&f, 1000, 60);
    char names[5][8];
    for (int i = 0; i < 5; i++) {
        snprintf(names[i], sizeof(names[i]), "u%d", i);
        const char *us[] = {names[i], "me"};
        CHECK_EQ_INT(conv_post(&f, "s_me_x", us, 2, names[i]), 0);
    }
    /* u0 speaks again: it moves to the top. */
    const char *u0[] = {"u0", "me"};
    CHECK_EQ_INT(conv_post(&f, "s_me_u0", u0, 2, "again"), 0);
    const char *want[] = {"u0", "u4", "u3", "u2", "u1"};
    int64_t before = 0, prev = INT64_MAX;
    size_t got = 0;
    int pages = 0;
    while (pages < 10) {
        list_res_t *r = conv_list(&f, "me", before, 2);
        CHECK_EQ_INT(r->status, 0);
        CHECK_EQ_INT(r->total, 6);
        for (size_t i = 0; i < r->n && got < 5; i++, got++) {
            CHECK_EQ_STR(r->c[i].peer, want[got]);
            CHECK(r->c[i].last_seq < prev); /* newest update first */
            prev = r->c[i].last_seq;
        }
        pages++;
        if (!r->has_more || r->n == 0)
            break;
        before = r->c[r->n - 1].last_seq;
    }
    CHECK_EQ_INT(got, 5);
    CHECK_EQ_INT(pages, 3);
    /* Page sizes: <= 0 is the default, past the maximum is clamped. */
    CHECK_EQ_INT(conv_list(&f, "me", 0, -5)->n, 5);
    CHECK_EQ_INT(conv_list(&f, "me", 0, 1000000)->n, 5);
    CHECK_EQ_INT(conv_list(&f, "me", 0, 1)->has_more, 1);
    CHECK_EQ_INT(conv_list(&f, "me", 1, 10)->n, 0);
    /* Refusals. */
    CHECK_EQ_INT(conv_list(&f, "me", -1, 0)->status, IMGW_EINVAL);
    CHECK_EQ_INT(conv_list(&f, "m e", 0, 0)->status, IMGW_EINVAL);
    sc_close_checked(&f);
}

TEST(conv_delete_one_side)
{
    fx_t f;
    sc_open(&f, 1000, 60);
    const char *ab[] = {"alice", "bob"};
    CHECK_EQ_INT(conv_post(&f, "s_alice_bob", ab, 2, "hi"), 0);
    CHECK_EQ_INT(conv_post(&f, "s_alice_bob", ab, 2, "hi2"), 0);
    CHECK_EQ_INT(CONV_DEL(&f, "bob", CONV_S, "alice"), 0);
    CHECK_EQ_INT(conv_list(&f, "bob", 0, 0)->n, 0);
    CHECK_EQ_INT(conv_list(&f, "bob", 0, 0)->total, 0);
    CHECK_EQ_INT(conv_list(&f, "alice", 0, 0)->n, 1);
    CHECK_EQ_INT(CONV_DEL(&f, "bob", CONV_S, "alice"), IMGW_ENOTFOUND);
    CHECK_EQ_INT(CONV_DEL(&f, "bob", CONV_G, "alice"), IMGW_ENOTFOUND);
    CHECK_EQ_INT(CONV_DEL(&f, "bob", 0, "alice"), IMGW_EINVAL);
    CHECK_EQ_INT(CONV_DEL(&f, "bob", CONV_S, "a:b"), IMGW_EINVAL);
    CHECK_EQ_INT(CONV_READ(&f, "bob", CONV_S, "alice", 0), IMGW_ENOTFOUND);
    /* A new message brings it back, counting from there. */
    CHECK_EQ_INT(conv_post(&f, "s_alice_bob", ab, 2, "back"), 0);
    list_res_t *r = conv_list(&f, "bob", 0, 0);
    CHECK_EQ_INT(r->n, 1);
    CHECK_EQ_INT(r->c[0].unread, 1);
    CHECK_EQ_INT(r->total, 1);
    CHECK_EQ_STR(r->c[0].preview, "back");
    sc_close_checked(&f);
}

TEST(conv_bounds)
{
    fx_t f;
    sc_max_convs = 3;
    sc_open(&f, 1000, 60);
    sc_max_convs = 0;
    char names[6][8];
    for (int i = 0; i < 6; i++) {
        snprintf(names[i], sizeof(names[i]), "p%d", i);
        const char *us[] = {names[i], "me"};
        CHECK_EQ_INT(conv_post(&f, "s_me_x", us, 2, "m"), 0);
    }
    list_res_t *r = conv_list(&f, "me", 0, 100);
    CHECK_EQ_INT(r->n, 3); /* max_conversations: the 3 newest */
    CHECK_EQ_STR(r->c[0].peer, "p5");
    CHECK_EQ_STR(r->c[2].peer, "p3");
    CHECK_EQ_INT(r->total, 3); /* the dropped ones' unread went with them */
    CHECK_EQ_INT(r->has_more, 0);
    /* Preview: 200 bytes of two-byte characters cut on a boundary. */
    char big[201];
    for (int i = 0; i < 200; i += 2) {
        big[i] = (char)0xC3;
        big[i + 1] = (char)0xA9;
    }
    big[200] = '\0';
    const char *us[] = {"p5", "me"};
    CHECK_EQ_INT(conv_post(&f, "s_me_x", us, 2, big), 0);
    r = conv_list(&f, "me", 0, 1);
    CHECK_EQ_INT(strlen(r->c[0].preview), IMGW_STORE_PREVIEW_MAX);
    CHECK(((unsigned char)r->c[0].preview[IMGW_STORE_PREVIEW_MAX - 1]) ==
          0xA9);
    CHECK_EQ_INT(r->has_more, 1);
    /* A cut that would split a character backs off to its start: "x" and
     * then two-byte characters, the 120th byte the first of one. */
    char odd[202];
    odd[0] = 'x';
    memcpy(odd + 1, big, sizeof(big));
    CHECK_EQ_INT(conv_post(&f, "s_me_x", us, 2, odd), 0);
    r = conv_list(&f, "me", 0, 1);
    CHECK_EQ_INT(strlen(r->c[0].preview), IMGW_STORE_PREVIEW_MAX - 1);
    sc_close_checked(&f);
}

static void
sc_run_contract(void)
{
    RUN(callbacks_later);
    RUN(results_are_the_request_time_state);
    RUN(append_seq_per_user);
    RUN(append_refused);
    RUN(sync_ranges_and_paging);
    RUN(dedupe_key_collision);
    RUN(store_edge_ids);
    RUN(conv_unread_single);
    RUN(conv_unread_group_and_ambiguous_ids);
    RUN(conv_read_positions);
    RUN(conv_paging_and_order);
    RUN(conv_delete_one_side);
    RUN(conv_bounds);
}
