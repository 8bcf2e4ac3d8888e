/*
 * test_store_conv.c: conversation state of the memory backend (issue 13
 * item 1, store.h "conversations"): unread counts for 1:1 and groups, own
 * messages not counted, read positions (to a seq, recounted below the last
 * message), paging and ordering, delete for one side only, and the bounds
 * (conversations per user, preview bytes, page size).
 *
 * Threads: main only; callbacks run from imgw_store_loop_run_completions
 * after each request function returned (store.h).
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "log.h"
#include "store.h"
#include "store_impl.h"
#include "test.h"

typedef struct fx_s {
    imgw_store_t *s;
    imgw_store_loop_t *sl;
} fx_t;

static int64_t fake_now = 1700000000000LL;

static int64_t
fake_clock(void *arg)
{
    (void)arg;
    return fake_now;
}

static void
fx_open(fx_t *f, int max_convs)
{
    imgw_store_cfg_t cfg;
    char err[128];
    memset(&cfg, 0, sizeof(cfg));
    cfg.backend = "memory";
    cfg.retention_count = 1000;
    cfg.retention_days = 7;
    cfg.dedupe_ttl = 60;
    cfg.timeout_ms = 1000;
    cfg.n_loops = 1;
    cfg.max_conversations = max_convs;
    if (imgw_store_open(&f->s, &cfg, err, sizeof(err)) != 0) {
        printf("  cannot open the store: %s\n", err);
        exit(2);
    }
    imgw__store_mem_set_clock(f->s, fake_clock, NULL);
    if (imgw_store_loop_open(f->s, 0, NULL, &f->sl) != 0)
        exit(2);
}

static void
fx_close(fx_t *f)
{
    imgw_store_loop_close(f->sl);
    imgw_store_close(f->s);
}

static void
app_cb(imgw_store_append_t *req, int status, void *data)
{
    (void)req;
    *(int *)data = status;
}

static uint64_t next_mid = 1000;

/* users[0] sends a text message with preview text to users. */
static int
post(fx_t *f, const char *conv, const char *const *users, size_t n,
     const char *text)
{
    int64_t seqs[8];
    imgw_store_append_t req;
    int st = -99;
    memset(&req, 0, sizeof(req));
    req.sender = users[0];
    req.client_msg_id = "";
    req.message_id = ++next_mid;
    req.server_time_ms = ++fake_now;
    req.conversation_id = conv;
    req.users = users;
    req.n_users = n;
    req.entry = (const uint8_t *)"x";
    req.entry_len = 1;
    req.seqs = seqs;
    req.msg_type = 1;
    req.preview = text;
    int r = imgw_store_append(f->sl, &req, app_cb, &st);
    imgw_store_loop_run_completions(f->sl);
    return r != 0 ? r : st;
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
    memcpy(r->c, c, n * sizeof(*c));
}

static list_res_t lr;

static list_res_t *
list(fx_t *f, const char *user, int64_t before, int limit)
{
    memset(&lr, 0, sizeof(lr));
    int r = imgw_store_conv_list(f->sl, user, before, limit, list_cb, &lr);
    CHECK_EQ_INT(lr.calls, 0); /* store.h: never before the return */
    imgw_store_loop_run_completions(f->sl);
    CHECK_EQ_INT(lr.calls, 1);
    if (r != 0)
        lr.status = r;
    return &lr;
}

static void
done_cb(int status, void *data)
{
    *(int *)data = status;
}

static int
conv_read(fx_t *f, const char *user, int kind, const char *peer, int64_t seq)
{
    int st = -99;
    int r = imgw_store_conv_read(f->sl, user, kind, peer, seq, done_cb, &st);
    imgw_store_loop_run_completions(f->sl);
    return r != 0 ? r : st;
}

static int
conv_del(fx_t *f, const char *user, int kind, const char *peer)
{
    int st = -99;
    int r = imgw_store_conv_delete(f->sl, user, kind, peer, done_cb, &st);
    imgw_store_loop_run_completions(f->sl);
    return r != 0 ? r : st;
}

#define S IMGW_STORE_CONV_SINGLE
#define G IMGW_STORE_CONV_GROUP

TEST(unread_single)
{
    fx_t f;
    fx_open(&f, 0);
    const char *ab[] = {"alice", "bob"}, *ba[] = {"bob", "alice"};
    CHECK_EQ_INT(post(&f, "s_alice_bob", ab, 2, "hi"), 0);
    CHECK_EQ_INT(post(&f, "s_alice_bob", ab, 2, "there"), 0);
    CHECK_EQ_INT(post(&f, "s_alice_bob", ba, 2, "yo"), 0);
    CHECK_EQ_INT(post(&f, "s_alice_bob", ab, 2, "last"), 0);
    list_res_t *r = list(&f, "bob", 0, 0);
    CHECK_EQ_INT(r->status, 0);
    CHECK_EQ_INT(r->n, 1);
    CHECK_EQ_INT(r->c[0].kind, S);
    CHECK_EQ_STR(r->c[0].peer, "alice");
    CHECK_EQ_INT(r->c[0].unread, 3); /* bob's own "yo" not counted */
    CHECK_EQ_INT(r->total, 3);
    CHECK_EQ_STR(r->c[0].last_sender, "alice");
    CHECK_EQ_STR(r->c[0].preview, "last");
    CHECK_EQ_INT(r->c[0].last_type, 1);
    CHECK_EQ_INT(r->c[0].last_message_id, next_mid);
    CHECK_EQ_INT(r->c[0].last_seq, 4);
    CHECK_EQ_INT(r->c[0].updated_ms, fake_now);
    r = list(&f, "alice", 0, 0);
    CHECK_EQ_INT(r->n, 1);
    CHECK_EQ_STR(r->c[0].peer, "bob");
    CHECK_EQ_INT(r->c[0].unread, 1); /* only bob's "yo" */
    r = list(&f, "carol", 0, 0);
    CHECK_EQ_INT(r->status, 0);
    CHECK_EQ_INT(r->n, 0);
    CHECK_EQ_INT(r->total, 0);
    fx_close(&f);
}

TEST(unread_group_and_ambiguous_ids)
{
    fx_t f;
    fx_open(&f, 0);
    const char *g[] = {"alice", "bob", "carol"},
               *gb[] = {"bob", "alice", "carol"};
    CHECK_EQ_INT(post(&f, "g_team", g, 3, "g1"), 0);
    CHECK_EQ_INT(post(&f, "g_team", gb, 3, "g2"), 0);
    list_res_t *r = list(&f, "carol", 0, 0);
    CHECK_EQ_INT(r->n, 1);
    CHECK_EQ_INT(r->c[0].kind, G);
    CHECK_EQ_STR(r->c[0].peer, "team");
    CHECK_EQ_INT(r->c[0].unread, 2);
    CHECK_EQ_STR(r->c[0].last_sender, "bob");
    r = list(&f, "alice", 0, 0);
    CHECK_EQ_INT(r->c[0].unread, 1);
    /* "s_a_b_c" names both (a_b, c) and (a, b_c): kept apart by peer. */
    const char *p1[] = {"a_b", "c"}, *p2[] = {"a", "b_c"};
    CHECK_EQ_INT(post(&f, "s_a_b_c", p1, 2, "one"), 0);
    CHECK_EQ_INT(post(&f, "s_a_b_c", p2, 2, "two"), 0);
    r = list(&f, "c", 0, 0);
    CHECK_EQ_INT(r->n, 1);
    CHECK_EQ_STR(r->c[0].peer, "a_b");
    CHECK_EQ_STR(r->c[0].preview, "one");
    r = list(&f, "b_c", 0, 0);
    CHECK_EQ_INT(r->n, 1);
    CHECK_EQ_STR(r->c[0].peer, "a");
    CHECK_EQ_STR(r->c[0].preview, "two");
    /* A group and a 1:1 with the same name are two conversations. */
    const char *tb[] = {"team", "carol"};
    CHECK_EQ_INT(post(&f, "s_carol_team", tb, 2, "dm"), 0);
    r = list(&f, "carol", 0, 0);
    CHECK_EQ_INT(r->n, 2);
    CHECK_EQ_INT(r->c[0].kind, S);
    CHECK_EQ_INT(r->c[1].kind, G);
    CHECK_EQ_INT(r->total, 3);
    /* No conversation id: no conversation state. */
    CHECK_EQ_INT(post(&f, "", tb, 2, "sys"), 0);
    CHECK_EQ_INT(list(&f, "carol", 0, 0)->n, 2);
    fx_close(&f);
}

TEST(read_positions)
{
    fx_t f;
    fx_open(&f, 0);
    const char *ab[] = {"alice", "bob"}, *g[] = {"alice", "bob", "carol"};
    for (int i = 0; i < 4; i++)
        CHECK_EQ_INT(post(&f, "s_alice_bob", ab, 2, "m"), 0); /* bob 1..4 */
    CHECK_EQ_INT(post(&f, "g_team", g, 3, "g"), 0);           /* bob 5 */
    CHECK_EQ_INT(list(&f, "bob", 0, 0)->total, 5);
    /* Read up to seq 2: seqs 3 and 4 stay unread (recounted). */
    CHECK_EQ_INT(conv_read(&f, "bob", S, "alice", 2), 0);
    list_res_t *r = list(&f, "bob", 0, 0);
    CHECK_EQ_STR(r->c[1].peer, "alice");
    CHECK_EQ_INT(r->c[1].unread, 2);
    CHECK_EQ_INT(r->c[1].read_seq, 2);
    CHECK_EQ_INT(r->c[0].unread, 1); /* the group untouched */
    CHECK_EQ_INT(r->total, 3);
    /* Never back. */
    CHECK_EQ_INT(conv_read(&f, "bob", S, "alice", 1), 0);
    CHECK_EQ_INT(list(&f, "bob", 0, 0)->c[1].unread, 2);
    /* 0 = everything. */
    CHECK_EQ_INT(conv_read(&f, "bob", S, "alice", 0), 0);
    r = list(&f, "bob", 0, 0);
    CHECK_EQ_INT(r->c[1].unread, 0);
    CHECK_EQ_INT(r->c[1].read_seq, 4);
    CHECK_EQ_INT(conv_read(&f, "bob", G, "team", 999), 0);
    CHECK_EQ_INT(list(&f, "bob", 0, 0)->total, 0);
    /* A conversation the user is not in. */
    CHECK_EQ_INT(conv_read(&f, "bob", S, "carol", 0), IMGW_ENOTFOUND);
    CHECK_EQ_INT(conv_read(&f, "nobody", S, "alice", 0), IMGW_ENOTFOUND);
    CHECK_EQ_INT(conv_read(&f, "bob", 7, "alice", 0), IMGW_EINVAL);
    CHECK_EQ_INT(conv_read(&f, "bob", S, "bad id", 0), IMGW_EINVAL);
    /* A new message after the read counts again. */
    CHECK_EQ_INT(post(&f, "s_alice_bob", ab, 2, "new"), 0);
    CHECK_EQ_INT(list(&f, "bob", 0, 0)->c[0].unread, 1);
    fx_close(&f);
}

TEST(paging_and_order)
{
    fx_t f;
    fx_open(&f, 0);
    char names[5][8];
    for (int i = 0; i < 5; i++) {
        snprintf(names[i], sizeof(names[i]), "u%d", i);
        const char *us[] = {names[i], "me"};
        CHECK_EQ_INT(post(&f, "s_x", us, 2, names[i]), 0);
    }
    /* u0 speaks again: it moves to the top. */
    const char *u0[] = {"u0", "me"};
    CHECK_EQ_INT(post(&f, "s_x", u0, 2, "again"), 0);
    const char *want[] = {"u0", "u4", "u3", "u2", "u1"};
    int64_t before = 0;
    size_t got = 0;
    int pages = 0;
    while (1) {
        list_res_t *r = list(&f, "me", before, 2);
        CHECK_EQ_INT(r->status, 0);
        CHECK_EQ_INT(r->total, 6);
        for (size_t i = 0; i < r->n && got < 5; i++, got++)
            CHECK_EQ_STR(r->c[i].peer, want[got]);
        pages++;
        if (!r->has_more || r->n == 0)
            break;
        before = r->c[r->n - 1].last_seq;
    }
    CHECK_EQ_INT(got, 5);
    CHECK_EQ_INT(pages, 3);
    fx_close(&f);
}

TEST(delete_one_side)
{
    fx_t f;
    fx_open(&f, 0);
    const char *ab[] = {"alice", "bob"};
    CHECK_EQ_INT(post(&f, "s_alice_bob", ab, 2, "hi"), 0);
    CHECK_EQ_INT(conv_del(&f, "bob", S, "alice"), 0);
    CHECK_EQ_INT(list(&f, "bob", 0, 0)->n, 0);
    CHECK_EQ_INT(list(&f, "bob", 0, 0)->total, 0);
    CHECK_EQ_INT(list(&f, "alice", 0, 0)->n, 1);
    CHECK_EQ_INT(conv_del(&f, "bob", S, "alice"), IMGW_ENOTFOUND);
    CHECK_EQ_INT(conv_del(&f, "bob", G, "alice"), IMGW_ENOTFOUND);
    /* A new message brings it back, counting from there. */
    CHECK_EQ_INT(post(&f, "s_alice_bob", ab, 2, "back"), 0);
    list_res_t *r = list(&f, "bob", 0, 0);
    CHECK_EQ_INT(r->n, 1);
    CHECK_EQ_INT(r->c[0].unread, 1);
    fx_close(&f);
}

TEST(bounds)
{
    fx_t f;
    fx_open(&f, 3);
    char names[6][8];
    for (int i = 0; i < 6; i++) {
        snprintf(names[i], sizeof(names[i]), "p%d", i);
        const char *us[] = {names[i], "me"};
        CHECK_EQ_INT(post(&f, "s_x", us, 2, "m"), 0);
    }
    list_res_t *r = list(&f, "me", 0, 100);
    CHECK_EQ_INT(r->n, 3); /* max_conversations: the 3 newest */
    CHECK_EQ_STR(r->c[0].peer, "p5");
    CHECK_EQ_STR(r->c[2].peer, "p3");
    CHECK_EQ_INT(r->total, 3);
    /* Preview: 200 bytes of two-byte characters cut on a boundary. */
    char big[201];
    for (int i = 0; i < 200; i += 2) {
        big[i] = (char)0xC3;
        big[i + 1] = (char)0xA9;
    }
    big[200] = '\0';
    const char *us[] = {"p5", "me"};
    CHECK_EQ_INT(post(&f, "s_x", us, 2, big), 0);
    r = list(&f, "me", 0, 1);
    CHECK(strlen(r->c[0].preview) <= IMGW_STORE_PREVIEW_MAX);
    CHECK_EQ_INT(strlen(r->c[0].preview), IMGW_STORE_PREVIEW_MAX);
    CHECK_EQ_INT(r->has_more, 1);
    /* Page size clamp and refusals. */
    CHECK_EQ_INT(list(&f, "me", -1, 0)->status, IMGW_EINVAL);
    CHECK_EQ_INT(list(&f, "me", 0, 100000)->n, 3);
    fx_close(&f);

    imgw_store_cfg_t cfg;
    char err[128];
    imgw_store_t *s = NULL;
    memset(&cfg, 0, sizeof(cfg));
    cfg.backend = "memory";
    cfg.retention_count = 10;
    cfg.retention_days = 1;
    cfg.dedupe_ttl = 60;
    cfg.n_loops = 1;
    cfg.max_conversations = IMGW__STORE_CONVS_MAX + 1;
    CHECK_EQ_INT(imgw_store_open(&s, &cfg, err, sizeof(err)), IMGW_ECONFIG);
    printf("  open refused: %s\n", err);
    CHECK(strstr(err, "max_conversations") != NULL);
}

int
main(void)
{
    imgw_log_set_level(IMGW_LOG_WARN_L);
    RUN(unread_single);
    RUN(unread_group_and_ambiguous_ids);
    RUN(read_positions);
    RUN(paging_and_order);
    RUN(delete_one_side);
    RUN(bounds);
    TEST_DONE();
}
