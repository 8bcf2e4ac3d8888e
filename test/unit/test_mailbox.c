/*
 * test_mailbox.c: unit tests for net/mailbox.c (the MPSC queue and the
 * loop mailbox).
 *
 * Threads: the main thread is the consumer (it runs the libuv loop, or
 * spins on imgw_mpsc_pop for the raw queue test); producer threads only
 * push/post. Every item carries (producer id, per-producer counter) so the
 * consumer can check that nothing is lost or duplicated and that each
 * producer's items arrive in order.
 *
 * Size: IMGW_TEST_SCALE (a factor, default 1; 0.25 by default under TSAN)
 * scales the item counts, which at 1 are 4 x 500,000 for the mailbox,
 * 4 x 20,000 posted in bursts with pauses, and 4 x 250,000 for the raw
 * queue.
 */
#include "mailbox.h"

#include "test.h"

#include <pthread.h>
#include <sched.h>
#include <stdint.h>
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

#define NPROD 4

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

typedef struct item_s {
    imgw_mpsc_node_t node; /* first member: item pointer == node pointer */
    uint32_t producer;
    uint32_t seq;
} item_t;

/* What the consumer observed. Consumer thread only. */
typedef struct tally_s {
    size_t per_item;            /* items each producer sends */
    size_t total;               /* items received */
    size_t count[NPROD];        /* items received per producer */
    int64_t last[NPROD];        /* last seq seen per producer, -1 at start */
    unsigned char *seen[NPROD]; /* per_item flags each */
    size_t dups, disorder, bad;
} tally_t;

static void
tally_init(tally_t *t, size_t per_item)
{
    memset(t, 0, sizeof(*t));
    t->per_item = per_item;
    for (int p = 0; p < NPROD; p++) {
        t->last[p] = -1;
        t->seen[p] = calloc(per_item, 1);
    }
}

static void
tally_free(tally_t *t)
{
    for (int p = 0; p < NPROD; p++)
        free(t->seen[p]);
}

static void
tally_add(tally_t *t, const item_t *it)
{
    if (it->producer >= NPROD || it->seq >= t->per_item) {
        t->bad++;
        return;
    }
    uint32_t p = it->producer;
    if (t->seen[p][it->seq])
        t->dups++;
    t->seen[p][it->seq] = 1;
    if ((int64_t)it->seq <= t->last[p])
        t->disorder++;
    t->last[p] = it->seq;
    t->count[p]++;
    t->total++;
}

static void
tally_check(tally_t *t)
{
    CHECK_EQ_INT(t->total, t->per_item * NPROD);
    CHECK_EQ_INT(t->dups, 0);
    CHECK_EQ_INT(t->disorder, 0);
    CHECK_EQ_INT(t->bad, 0);
    size_t missing = 0;
    for (int p = 0; p < NPROD; p++)
        for (size_t i = 0; i < t->per_item; i++)
            missing += !t->seen[p][i];
    CHECK_EQ_INT(missing, 0);
    for (int p = 0; p < NPROD; p++)
        CHECK_EQ_INT(t->count[p], t->per_item);
}

/* ---- raw queue, single thread -------------------------------------------- */

TEST(mpsc_single_thread)
{
    imgw_mpsc_t q;
    item_t it[4];
    imgw_mpsc_init(&q);
    CHECK(imgw_mpsc_pop(&q) == NULL);

    /* One node: pop must re-push the stub to hand it out. */
    imgw_mpsc_push(&q, &it[0].node);
    CHECK(imgw_mpsc_pop(&q) == &it[0].node);
    CHECK(imgw_mpsc_pop(&q) == NULL);
    CHECK(imgw_mpsc_pop(&q) == NULL);

    /* Several, FIFO; then the same nodes again (recycled). */
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 4; i++)
            imgw_mpsc_push(&q, &it[i].node);
        int order_ok = 1;
        for (int i = 0; i < 4; i++)
            order_ok &= imgw_mpsc_pop(&q) == &it[i].node;
        CHECK(order_ok);
        CHECK(imgw_mpsc_pop(&q) == NULL);
    }

    /* Interleaved push/pop keeps FIFO across the stub. */
    imgw_mpsc_push(&q, &it[0].node);
    imgw_mpsc_push(&q, &it[1].node);
    CHECK(imgw_mpsc_pop(&q) == &it[0].node);
    imgw_mpsc_push(&q, &it[2].node);
    CHECK(imgw_mpsc_pop(&q) == &it[1].node);
    CHECK(imgw_mpsc_pop(&q) == &it[2].node);
    CHECK(imgw_mpsc_pop(&q) == NULL);
}

/* ---- raw queue, threads -------------------------------------------------- */

typedef struct raw_prod_s {
    imgw_mpsc_t *q;
    item_t *items;
    size_t n;
    uint32_t id;
} raw_prod_t;

static void *
raw_producer(void *arg)
{
    raw_prod_t *p = arg;
    for (size_t i = 0; i < p->n; i++) {
        p->items[i].producer = p->id;
        p->items[i].seq = (uint32_t)i;
        imgw_mpsc_push(p->q, &p->items[i].node);
    }
    return NULL;
}

TEST(mpsc_threads)
{
    size_t per = scaled(250000);
    imgw_mpsc_t q;
    raw_prod_t prod[NPROD];
    pthread_t th[NPROD];
    tally_t t;

    imgw_mpsc_init(&q);
    tally_init(&t, per);
    double t0 = now_s();
    for (int i = 0; i < NPROD; i++) {
        prod[i].q = &q;
        prod[i].items = malloc(per * sizeof(item_t));
        prod[i].n = per;
        prod[i].id = (uint32_t)i;
        pthread_create(&th[i], NULL, raw_producer, &prod[i]);
    }
    size_t empty_pops = 0;
    while (t.total < per * NPROD) {
        imgw_mpsc_node_t *n = imgw_mpsc_pop(&q);
        if (n == NULL) {
            /* Empty or a producer mid-push: the node will show up. */
            empty_pops++;
            sched_yield();
            continue;
        }
        tally_add(&t, (item_t *)n);
    }
    double dt = now_s() - t0;
    for (int i = 0; i < NPROD; i++)
        pthread_join(th[i], NULL);
    CHECK(imgw_mpsc_pop(&q) == NULL);
    tally_check(&t);
    printf("  info  %zu items in %.3f s (%.1f M/s), %zu empty pops\n",
           per * NPROD, dt, (double)(per * NPROD) / dt / 1e6, empty_pops);
    for (int i = 0; i < NPROD; i++)
        free(prod[i].items);
    tally_free(&t);
}

/* ---- mailbox on a loop --------------------------------------------------- */

/*
 * A lost wake-up fails nothing by itself: the loop just sleeps with nodes
 * queued. So the stress runs carry a watchdog timer: once all producers
 * are done, if nothing arrives for WATCHDOG_TICKS ticks, the run is
 * declared stuck (a FAIL), and the mailbox is closed, which drains it and
 * lets the loop end.
 */
#define WATCHDOG_MS 100
#define WATCHDOG_TICKS 20

typedef struct mb_test_s {
    tally_t t;
    size_t expect;
    int closed_in_cb;
    int close_cb_called;
    int closing;
    int stuck;            /* the watchdog fired */
    size_t stuck_missing; /* items not delivered when it fired */
    uv_timer_t watchdog;
    size_t watch_total;
    int watch_idle;
    atomic_int producers_done;
} mb_test_t;

typedef struct mb_prod_s {
    imgw_mailbox_t *mb;
    mb_test_t *x;
    item_t *items;
    size_t n;
    uint32_t id;
    int bursty; /* post in small bursts with pauses: the loop goes idle */
    int post_errors;
} mb_prod_t;

static void *
mb_producer(void *arg)
{
    mb_prod_t *p = arg;
    uint64_t r = 0x9e3779b97f4a7c15ULL * (p->id + 1);
    for (size_t i = 0; i < p->n; i++) {
        p->items[i].producer = p->id;
        p->items[i].seq = (uint32_t)i;
        if (imgw_mailbox_post(p->mb, &p->items[i].node) != 0)
            p->post_errors++;
        if (p->bursty) {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            if (r % 8 == 0) {
                struct timespec ts = {0, (long)((r >> 40) % 20000)};
                nanosleep(&ts, NULL);
            }
        }
    }
    atomic_fetch_add(&p->x->producers_done, 1);
    return NULL;
}

static void
count_close_cb(uv_handle_t *h)
{
    imgw_mailbox_t *mb =
        (imgw_mailbox_t *)(void *)((char *)h - offsetof(imgw_mailbox_t, async));
    mb_test_t *x = mb->data;
    x->close_cb_called++;
}

static void
stress_finish(imgw_mailbox_t *mb, mb_test_t *x)
{
    if (x->closing)
        return;
    x->closing = 1;
    uv_close((uv_handle_t *)&x->watchdog, NULL);
    imgw_mailbox_close(mb, count_close_cb);
}

static void
stress_cb(imgw_mailbox_t *mb, imgw_mpsc_node_t *n)
{
    mb_test_t *x = mb->data;
    tally_add(&x->t, (item_t *)n);
    if (x->t.total == x->expect) {
        /* Close from inside the callback, as loop.c does for STOP. */
        x->closed_in_cb = 1;
        stress_finish(mb, x);
    }
}

static void
watchdog_cb(uv_timer_t *t)
{
    imgw_mailbox_t *mb = t->data;
    mb_test_t *x = mb->data;
    if (atomic_load(&x->producers_done) < NPROD ||
        x->t.total != x->watch_total) {
        x->watch_total = x->t.total;
        x->watch_idle = 0;
        return;
    }
    if (++x->watch_idle < WATCHDOG_TICKS)
        return;
    x->stuck = 1;
    x->stuck_missing = x->expect - x->t.total;
    stress_finish(mb, x);
}

static void
run_mailbox(size_t per, int bursty)
{
    uv_loop_t loop;
    imgw_mailbox_t mb;
    mb_test_t x;
    mb_prod_t prod[NPROD];
    pthread_t th[NPROD];

    memset(&x, 0, sizeof(x));
    tally_init(&x.t, per);
    x.expect = per * NPROD;
    atomic_init(&x.producers_done, 0);
    CHECK_EQ_INT(uv_loop_init(&loop), 0);
    CHECK_EQ_INT(imgw_mailbox_init(&mb, &loop, stress_cb, &x), 0);
    uv_timer_init(&loop, &x.watchdog);
    x.watchdog.data = &mb;
    uv_timer_start(&x.watchdog, watchdog_cb, WATCHDOG_MS, WATCHDOG_MS);

    double t0 = now_s();
    for (int i = 0; i < NPROD; i++) {
        prod[i].mb = &mb;
        prod[i].x = &x;
        prod[i].items = malloc(per * sizeof(item_t));
        prod[i].n = per;
        prod[i].id = (uint32_t)i;
        prod[i].bursty = bursty;
        prod[i].post_errors = 0;
        pthread_create(&th[i], NULL, mb_producer, &prod[i]);
    }
    /* Returns once the mailbox and the watchdog are closed. */
    CHECK_EQ_INT(uv_run(&loop, UV_RUN_DEFAULT), 0);
    double dt = now_s() - t0;
    int post_errors = 0;
    for (int i = 0; i < NPROD; i++) {
        pthread_join(th[i], NULL);
        post_errors += prod[i].post_errors;
    }

    CHECK_EQ_INT(x.stuck, 0);
    CHECK_EQ_INT(x.stuck_missing, 0);
    tally_check(&x.t);
    CHECK_EQ_INT(post_errors, 0);
    CHECK(x.closed_in_cb);
    CHECK_EQ_INT(x.close_cb_called, 1);
    CHECK_EQ_INT(mb.drained, x.expect);
    CHECK_EQ_INT(atomic_load(&mb.depth), 0);
    CHECK(mb.wakeups >= 1);
    CHECK(mb.wakeups < x.expect); /* wake-ups coalesce */
    printf("  info  %zu items in %.3f s (%.1f M/s), %llu wakeups "
           "(%.1f items/wakeup)\n",
           x.expect, dt, (double)x.expect / dt / 1e6,
           (unsigned long long)mb.wakeups,
           (double)x.expect / (double)mb.wakeups);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
    for (int i = 0; i < NPROD; i++)
        free(prod[i].items);
    tally_free(&x.t);
}

/* Producers flat out: the loop rarely sleeps, batches are large. */
TEST(mailbox_stress)
{
    run_mailbox(scaled(500000), 0);
}

/* Producers in bursts with pauses: the loop goes idle and must be woken
 * again and again, which is where a lost wake-up would show. */
TEST(mailbox_bursts)
{
    run_mailbox(scaled(20000), 1);
}

/* ---- mailbox, single thread: drain, close, coalescing -------------------- */

typedef struct seq_test_s {
    int got[8];
    int ngot;
    int close_cb_called;
    int got_at_close; /* ngot when close_cb ran */
} seq_test_t;

static void
seq_cb(imgw_mailbox_t *mb, imgw_mpsc_node_t *n)
{
    seq_test_t *s = mb->data;
    if (s->ngot < 8)
        s->got[s->ngot] = (int)((item_t *)n)->seq;
    s->ngot++;
}

static void
seq_close_cb(uv_handle_t *h)
{
    imgw_mailbox_t *mb =
        (imgw_mailbox_t *)(void *)((char *)h - offsetof(imgw_mailbox_t, async));
    seq_test_t *s = mb->data;
    s->close_cb_called++;
    s->got_at_close = s->ngot;
}

TEST(mailbox_coalesce_and_drain)
{
    uv_loop_t loop;
    imgw_mailbox_t mb;
    seq_test_t s;
    item_t it[8];

    memset(&s, 0, sizeof(s));
    for (int i = 0; i < 8; i++)
        it[i].seq = (uint32_t)i;
    uv_loop_init(&loop);
    CHECK_EQ_INT(imgw_mailbox_init(&mb, &loop, seq_cb, &s), 0);

    /* Three posts before the loop runs: one wake-up, all three in order. */
    for (int i = 0; i < 3; i++)
        CHECK_EQ_INT(imgw_mailbox_post(&mb, &it[i].node), 0);
    CHECK_EQ_INT(atomic_load(&mb.armed), 1);
    CHECK_EQ_INT(atomic_load(&mb.depth), 3);
    uv_run(&loop, UV_RUN_NOWAIT);
    CHECK_EQ_INT(s.ngot, 3);
    CHECK(s.got[0] == 0 && s.got[1] == 1 && s.got[2] == 2);
    CHECK_EQ_INT(mb.wakeups, 1);
    CHECK_EQ_INT(mb.last_batch, 3);
    CHECK_EQ_INT(atomic_load(&mb.armed), 0);

    /* A direct drain delivers at once; the pending wake-up finds nothing. */
    CHECK_EQ_INT(imgw_mailbox_post(&mb, &it[3].node), 0);
    CHECK_EQ_INT(imgw_mailbox_post(&mb, &it[4].node), 0);
    CHECK_EQ_INT(imgw_mailbox_drain(&mb), 2);
    CHECK_EQ_INT(s.ngot, 5);
    CHECK_EQ_INT(imgw_mailbox_drain(&mb), 0);
    uv_run(&loop, UV_RUN_NOWAIT);
    CHECK_EQ_INT(mb.wakeups, 2);
    CHECK_EQ_INT(mb.last_batch, 0);
    CHECK_EQ_INT(s.ngot, 5);
    CHECK_EQ_INT(mb.drained, 5);

    /* Close delivers what is queued before close_cb runs. */
    CHECK_EQ_INT(imgw_mailbox_post(&mb, &it[5].node), 0);
    CHECK_EQ_INT(imgw_mailbox_post(&mb, &it[6].node), 0);
    imgw_mailbox_close(&mb, seq_close_cb);
    CHECK_EQ_INT(s.ngot, 7);
    imgw_mailbox_close(&mb, seq_close_cb); /* second close: no-op */
    CHECK_EQ_INT(uv_run(&loop, UV_RUN_DEFAULT), 0);
    CHECK_EQ_INT(s.close_cb_called, 1);
    CHECK_EQ_INT(s.got_at_close, 7);
    CHECK(s.got[5] == 5 && s.got[6] == 6);
    CHECK_EQ_INT(atomic_load(&mb.depth), 0);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

/* Callback that closes the mailbox on a marker node mid-batch. */
static void
close_mid_cb(imgw_mailbox_t *mb, imgw_mpsc_node_t *n)
{
    seq_cb(mb, n);
    if (((item_t *)n)->seq == 1)
        imgw_mailbox_close(mb, seq_close_cb);
}

TEST(mailbox_close_inside_cb)
{
    uv_loop_t loop;
    imgw_mailbox_t mb;
    seq_test_t s;
    item_t it[4];

    memset(&s, 0, sizeof(s));
    for (int i = 0; i < 4; i++)
        it[i].seq = (uint32_t)i;
    uv_loop_init(&loop);
    CHECK_EQ_INT(imgw_mailbox_init(&mb, &loop, close_mid_cb, &s), 0);
    for (int i = 0; i < 4; i++)
        imgw_mailbox_post(&mb, &it[i].node);
    CHECK_EQ_INT(uv_run(&loop, UV_RUN_DEFAULT), 0);
    /* The nested close drained the rest; nothing twice, nothing lost. */
    CHECK_EQ_INT(s.ngot, 4);
    CHECK(s.got[0] == 0 && s.got[1] == 1 && s.got[2] == 2 && s.got[3] == 3);
    CHECK_EQ_INT(s.close_cb_called, 1);
    CHECK_EQ_INT(s.got_at_close, 4);
    CHECK_EQ_INT(mb.drained, 4);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

int
main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    RUN(mpsc_single_thread);
    RUN(mpsc_threads);
    RUN(mailbox_coalesce_and_drain);
    RUN(mailbox_close_inside_cb);
    RUN(mailbox_stress);
    RUN(mailbox_bursts);
    TEST_DONE();
}
