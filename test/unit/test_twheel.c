/*
 * test_twheel.c: unit tests for net/twheel.c (the per-loop timer wheel).
 *
 * Single-threaded. Entries are embedded in a test struct with an id and a
 * record of when they fired; callbacks check the wheel's current tick
 * against the entry's deadline, so "exactly at its tick" is asserted from
 * inside the expiry itself. Random tests use a fixed-seed xorshift so a
 * failure replays.
 */
#include "twheel.h"

#include "err.h"
#include "test.h"

#include <stdint.h>

typedef struct tent_s {
    imgw_tw_entry_t e;     /* first member: entry pointer == tent pointer */
    uint64_t want;         /* deadline the test asked for */
    uint64_t fired_at;     /* wheel tick when it fired, 0 if not yet */
    int fired;             /* times fired */
    int resched_left;      /* reschedule_cb: times to reschedule itself */
    struct tent_s *victim; /* cancel_other_cb: entry to cancel */
} tent_t;

typedef struct ctx_s {
    imgw_twheel_t *tw;
    size_t calls;
    size_t early, late, badcount; /* violations seen inside callbacks */
    uint64_t lo;                  /* advance: previous tick (exclusive) */
    uint64_t hi;                  /* advance: target tick */
} ctx_t;

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint64_t
rng(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

/* Checks the firing tick: exactly the deadline when stepping one tick at
 * a time, else within (lo, hi] and not before the deadline. */
static void
exact_cb(imgw_tw_entry_t *e, void *arg)
{
    ctx_t *c = arg;
    tent_t *t = (tent_t *)e;
    c->calls++;
    t->fired++;
    t->fired_at = c->tw->now;
    if (imgw_tw_pending(e))
        c->badcount++;
    if (c->tw->now < e->deadline || e->deadline > c->hi)
        c->early++; /* before its tick, or in an advance not reaching it */
    if (e->deadline <= c->lo || c->tw->now > c->hi)
        c->late++; /* an earlier advance should have fired it */
}

TEST(init_and_rounding)
{
    imgw_twheel_t tw;
    CHECK_EQ_INT(imgw_tw_init(&tw, 5, 100), 0);
    CHECK_EQ_INT(tw.nslots, 8);
    CHECK_EQ_INT(tw.now, 100);
    CHECK_EQ_INT(tw.count, 0);
    imgw_tw_free(&tw);
    CHECK_EQ_INT(imgw_tw_init(&tw, 0, 0), 0);
    CHECK_EQ_INT(tw.nslots, 1);
    imgw_tw_free(&tw);
    CHECK_EQ_INT(imgw_tw_init(&tw, 1024, 0), 0);
    CHECK_EQ_INT(tw.nslots, 1024);
    imgw_tw_free(&tw);
    CHECK_EQ_INT(imgw_tw_init(&tw, SIZE_MAX, 0), IMGW_ENOMEM);
}

TEST(schedule_cancel_reschedule)
{
    imgw_twheel_t tw;
    ctx_t c = {0};
    tent_t a = {0}, b = {0};

    imgw_tw_init(&tw, 8, 100);
    c.tw = &tw;
    CHECK(!imgw_tw_pending(&a.e));
    imgw_tw_cancel(&tw, &a.e); /* never scheduled: harmless */
    CHECK_EQ_INT(tw.count, 0);

    imgw_tw_schedule(&tw, &a.e, 103);
    CHECK(imgw_tw_pending(&a.e));
    CHECK_EQ_INT(tw.count, 1);
    c.lo = 100, c.hi = 102;
    CHECK_EQ_INT(imgw_tw_advance(&tw, 102, exact_cb, &c), 0);
    CHECK_EQ_INT(tw.now, 102);
    c.lo = 102, c.hi = 103;
    CHECK_EQ_INT(imgw_tw_advance(&tw, 103, exact_cb, &c), 1);
    CHECK_EQ_INT(a.fired, 1);
    CHECK_EQ_INT(a.fired_at, 103);
    CHECK(!imgw_tw_pending(&a.e));
    CHECK_EQ_INT(tw.count, 0);

    /* cancel */
    imgw_tw_schedule(&tw, &b.e, 105);
    CHECK_EQ_INT(tw.count, 1);
    imgw_tw_cancel(&tw, &b.e);
    CHECK(!imgw_tw_pending(&b.e));
    CHECK_EQ_INT(tw.count, 0);
    imgw_tw_cancel(&tw, &b.e); /* twice: harmless */
    CHECK_EQ_INT(tw.count, 0);
    c.lo = 103, c.hi = 120;
    CHECK_EQ_INT(imgw_tw_advance(&tw, 120, exact_cb, &c), 0);
    CHECK_EQ_INT(b.fired, 0);

    /* reschedule later and earlier: count stays 1, fires once */
    imgw_tw_schedule(&tw, &b.e, 125);
    imgw_tw_schedule(&tw, &b.e, 130);
    CHECK_EQ_INT(tw.count, 1);
    CHECK_EQ_INT(b.e.deadline, 130);
    c.lo = 120, c.hi = 129;
    CHECK_EQ_INT(imgw_tw_advance(&tw, 129, exact_cb, &c), 0);
    imgw_tw_schedule(&tw, &b.e, 131);
    imgw_tw_schedule(&tw, &b.e, 130);
    c.lo = 129, c.hi = 130;
    CHECK_EQ_INT(imgw_tw_advance(&tw, 130, exact_cb, &c), 1);
    CHECK_EQ_INT(b.fired, 1);
    CHECK_EQ_INT(b.fired_at, 130);

    /* deadline now or in the past: next tick */
    imgw_tw_schedule(&tw, &a.e, 130);
    CHECK_EQ_INT(a.e.deadline, 131);
    imgw_tw_schedule(&tw, &b.e, 3);
    CHECK_EQ_INT(b.e.deadline, 131);
    CHECK_EQ_INT(tw.count, 2);
    c.lo = 130, c.hi = 131;
    CHECK_EQ_INT(imgw_tw_advance(&tw, 131, exact_cb, &c), 2);
    CHECK_EQ_INT(a.fired_at, 131);
    CHECK_EQ_INT(b.fired_at, 131);

    /* advancing backwards or to now does nothing */
    CHECK_EQ_INT(imgw_tw_advance(&tw, 131, exact_cb, &c), 0);
    CHECK_EQ_INT(imgw_tw_advance(&tw, 50, exact_cb, &c), 0);
    CHECK_EQ_INT(tw.now, 131);
    CHECK_EQ_INT(c.early, 0);
    CHECK_EQ_INT(c.late, 0);
    CHECK_EQ_INT(c.badcount, 0);
    imgw_tw_free(&tw);
}

TEST(beyond_one_lap)
{
    imgw_twheel_t tw;
    ctx_t c = {0};
    tent_t t[4];
    uint64_t dl[4] = {8, 9, 100, 1000}; /* 8 slots, start at tick 0 */

    memset(t, 0, sizeof(t));
    imgw_tw_init(&tw, 8, 0);
    c.tw = &tw;
    for (int i = 0; i < 4; i++)
        imgw_tw_schedule(&tw, &t[i].e, dl[i]);
    for (uint64_t k = 1; k <= 1000; k++) {
        c.lo = k - 1, c.hi = k;
        imgw_tw_advance(&tw, k, exact_cb, &c);
    }
    for (int i = 0; i < 4; i++) {
        CHECK_EQ_INT(t[i].fired, 1);
        CHECK_EQ_INT(t[i].fired_at, dl[i]);
    }
    CHECK_EQ_INT(tw.count, 0);
    CHECK_EQ_INT(c.early + c.late + c.badcount, 0);
    imgw_tw_free(&tw);
}

/* Many entries, random deadlines (most beyond one lap), one tick at a time,
 * with random cancels and reschedules along the way. */
TEST(random_exact)
{
    enum { N = 20000, SPAN = 5000 };
    imgw_twheel_t tw;
    ctx_t c = {0};
    tent_t *t = calloc(N, sizeof(*t));
    size_t cancelled = 0;

    imgw_tw_init(&tw, 256, 1000);
    c.tw = &tw;
    for (size_t i = 0; i < N; i++) {
        t[i].want = 1001 + rng() % SPAN;
        imgw_tw_schedule(&tw, &t[i].e, t[i].want);
    }
    CHECK_EQ_INT(tw.count, N);
    size_t fired = 0, count_bad = 0;
    for (uint64_t k = 1001; k <= 1000 + SPAN + 10; k++) {
        /* now and then cancel or move a pending entry */
        if (k % 7 == 0) {
            tent_t *x = &t[rng() % N];
            if (imgw_tw_pending(&x->e)) {
                if (rng() & 1) {
                    imgw_tw_cancel(&tw, &x->e);
                    x->want = 0;
                    cancelled++;
                } else {
                    x->want = k + 1 + rng() % 600;
                    imgw_tw_schedule(&tw, &x->e, x->want);
                }
            }
        }
        c.lo = k - 1, c.hi = k;
        fired += imgw_tw_advance(&tw, k, exact_cb, &c);
        if (tw.count != N - cancelled - fired)
            count_bad++;
    }
    size_t wrong = 0;
    for (size_t i = 0; i < N; i++) {
        if (t[i].want == 0)
            wrong += t[i].fired != 0;
        else
            wrong += t[i].fired != 1 || t[i].fired_at != t[i].want;
    }
    CHECK_EQ_INT(wrong, 0);
    CHECK_EQ_INT(count_bad, 0);
    CHECK_EQ_INT(fired + cancelled, N);
    CHECK_EQ_INT(c.calls, fired);
    CHECK_EQ_INT(c.early, 0);
    CHECK_EQ_INT(c.late, 0);
    CHECK_EQ_INT(c.badcount, 0);
    CHECK_EQ_INT(tw.count, 0);
    imgw_tw_free(&tw);
    free(t);
}

/* Random jumps, some longer than the wheel: every entry fires in the first
 * advance whose target reaches its deadline, never before. */
TEST(random_jumps)
{
    enum { N = 20000, SPAN = 20000 };
    imgw_twheel_t tw;
    ctx_t c = {0};
    tent_t *t = calloc(N, sizeof(*t));

    imgw_tw_init(&tw, 64, 0);
    c.tw = &tw;
    for (size_t i = 0; i < N; i++) {
        t[i].want = 1 + rng() % SPAN;
        imgw_tw_schedule(&tw, &t[i].e, t[i].want);
    }
    uint64_t k = 0;
    size_t fired = 0, jumps = 0, big = 0, missed = 0;
    while (k < SPAN) {
        uint64_t step = 1 + rng() % 200; /* up to ~3 laps */
        big += step > tw.nslots;
        c.lo = k, c.hi = k + step;
        fired += imgw_tw_advance(&tw, k + step, exact_cb, &c);
        k += step;
        jumps++;
        CHECK_EQ_INT(tw.now, k);
        /* nothing due may be left behind */
        for (size_t i = 0; i < N; i += 97)
            missed += imgw_tw_pending(&t[i].e) && t[i].want <= k;
    }
    size_t wrong = 0;
    for (size_t i = 0; i < N; i++)
        wrong += t[i].fired != 1;
    CHECK(big > 0);
    CHECK_EQ_INT(missed, 0);
    CHECK_EQ_INT(wrong, 0);
    CHECK_EQ_INT(fired, N);
    CHECK_EQ_INT(c.early, 0);
    CHECK_EQ_INT(c.late, 0);
    CHECK_EQ_INT(tw.count, 0);
    printf("  info  %zu jumps (%zu longer than the wheel)\n", jumps, big);
    imgw_tw_free(&tw);
    free(t);
}

TEST(big_jump)
{
    imgw_twheel_t tw;
    ctx_t c = {0};
    tent_t t[6];
    uint64_t dl[6] = {1, 7, 8, 500, 1000, 5000};

    memset(t, 0, sizeof(t));
    imgw_tw_init(&tw, 8, 0);
    c.tw = &tw;
    for (int i = 0; i < 6; i++)
        imgw_tw_schedule(&tw, &t[i].e, dl[i]);
    c.lo = 0, c.hi = 1000;
    CHECK_EQ_INT(imgw_tw_advance(&tw, 1000, exact_cb, &c), 5);
    CHECK_EQ_INT(tw.now, 1000);
    CHECK_EQ_INT(tw.count, 1);
    CHECK(imgw_tw_pending(&t[5].e));
    CHECK_EQ_INT(t[5].fired, 0);
    /* a jump over a huge gap costs one lap, not the gap */
    c.lo = 1000, c.hi = UINT64_C(1) << 40;
    CHECK_EQ_INT(imgw_tw_advance(&tw, UINT64_C(1) << 40, exact_cb, &c), 1);
    CHECK_EQ_INT(t[5].fired, 1);
    CHECK_EQ_INT(tw.count, 0);
    /* an empty wheel jumps without walking */
    CHECK_EQ_INT(imgw_tw_advance(&tw, UINT64_C(1) << 50, exact_cb, &c), 0);
    CHECK_EQ_INT(tw.now, UINT64_C(1) << 50);
    CHECK_EQ_INT(c.early + c.late + c.badcount, 0);
    imgw_tw_free(&tw);
}

/* ---- callbacks that change the wheel ------------------------------------- */

static void
reschedule_cb(imgw_tw_entry_t *e, void *arg)
{
    ctx_t *c = arg;
    tent_t *t = (tent_t *)e;
    c->calls++;
    t->fired++;
    t->fired_at = c->tw->now;
    if (t->resched_left-- > 0)
        imgw_tw_schedule(c->tw, e, c->tw->now + 3);
}

static void
free_cb(imgw_tw_entry_t *e, void *arg)
{
    ctx_t *c = arg;
    c->calls++;
    free(e); /* ASan catches any later touch by the wheel */
}

static void
cancel_other_cb(imgw_tw_entry_t *e, void *arg)
{
    ctx_t *c = arg;
    tent_t *t = (tent_t *)e;
    c->calls++;
    t->fired++;
    if (t->victim != NULL && t->victim->fired == 0) {
        imgw_tw_cancel(c->tw, &t->victim->e);
        t->victim->want = 1; /* mark: cancelled by a callback */
    }
}

static void
resched_now_cb(imgw_tw_entry_t *e, void *arg)
{
    ctx_t *c = arg;
    tent_t *t = (tent_t *)e;
    c->calls++;
    t->fired++;
    if (t->resched_left-- > 0)
        imgw_tw_schedule(c->tw, e, c->tw->now); /* "now": next tick */
}

TEST(cb_reschedules)
{
    imgw_twheel_t tw;
    ctx_t c = {0};
    tent_t a = {0};

    imgw_tw_init(&tw, 4, 0);
    c.tw = &tw;
    a.resched_left = 5;
    imgw_tw_schedule(&tw, &a.e, 2);
    for (uint64_t k = 1; k <= 40; k++)
        imgw_tw_advance(&tw, k, reschedule_cb, &c);
    CHECK_EQ_INT(a.fired, 6);
    CHECK_EQ_INT(a.fired_at, 17); /* 2, 5, 8, 11, 14, 17 */
    CHECK(!imgw_tw_pending(&a.e));
    CHECK_EQ_INT(tw.count, 0);

    /* Rescheduling for "now" inside one multi-tick advance fires once per
     * walked tick and stops at the target tick: no livelock. */
    tent_t b = {0};
    ctx_t c2 = {0};
    c2.tw = &tw;
    b.resched_left = 100;
    imgw_tw_schedule(&tw, &b.e, 41);
    CHECK_EQ_INT(imgw_tw_advance(&tw, 44, resched_now_cb, &c2), 4);
    CHECK_EQ_INT(b.fired, 4);
    CHECK(imgw_tw_pending(&b.e));
    CHECK_EQ_INT(b.e.deadline, 45);
    /* Across a jump longer than the wheel (4 slots) only the last lap is
     * walked: 57..60, so it fires on those four ticks. */
    CHECK_EQ_INT(imgw_tw_advance(&tw, 60, resched_now_cb, &c2), 4);
    CHECK_EQ_INT(b.fired, 8);
    CHECK_EQ_INT(b.e.deadline, 61);
    CHECK_EQ_INT(tw.count, 1);
    imgw_tw_cancel(&tw, &b.e);
    imgw_tw_free(&tw);
}

TEST(cb_frees)
{
    enum { N = 1000 };
    imgw_twheel_t tw;
    ctx_t c = {0};

    imgw_tw_init(&tw, 16, 0);
    c.tw = &tw;
    for (int i = 0; i < N; i++) {
        imgw_tw_entry_t *e = calloc(1, sizeof(*e));
        imgw_tw_schedule(&tw, e, 1 + (uint64_t)(i % 50));
    }
    CHECK_EQ_INT(tw.count, N);
    size_t fired = 0;
    for (uint64_t k = 1; k <= 60; k++)
        fired += imgw_tw_advance(&tw, k, free_cb, &c);
    CHECK_EQ_INT(fired, N);
    CHECK_EQ_INT(c.calls, N);
    CHECK_EQ_INT(tw.count, 0);
    imgw_tw_free(&tw);
}

TEST(cb_cancels_other)
{
    imgw_twheel_t tw;
    ctx_t c = {0};
    tent_t t[3];

    /* All three in the same slot and due on the same tick: whichever fires
     * first cancels the next one in the ring. */
    memset(t, 0, sizeof(t));
    imgw_tw_init(&tw, 8, 0);
    c.tw = &tw;
    for (int i = 0; i < 3; i++) {
        t[i].victim = &t[(i + 1) % 3];
        imgw_tw_schedule(&tw, &t[i].e, 5);
    }
    size_t n = imgw_tw_advance(&tw, 5, cancel_other_cb, &c);
    int fired = t[0].fired + t[1].fired + t[2].fired;
    CHECK_EQ_INT(n, (size_t)fired);
    CHECK_EQ_INT(fired, 2); /* t0 fires and cancels t1; t2 fires */
    CHECK_EQ_INT(t[1].fired, 0);
    CHECK_EQ_INT(tw.count, 0);
    for (int i = 0; i < 3; i++)
        CHECK(!imgw_tw_pending(&t[i].e));
    imgw_tw_free(&tw);
}

TEST(free_with_pending)
{
    imgw_twheel_t tw;
    tent_t a = {0}, b = {0};
    imgw_tw_init(&tw, 8, 0);
    imgw_tw_schedule(&tw, &a.e, 3);
    imgw_tw_schedule(&tw, &b.e, 300);
    imgw_tw_free(&tw);
    CHECK(!imgw_tw_pending(&a.e));
    CHECK(!imgw_tw_pending(&b.e));
    CHECK(tw.slots == NULL);
}

int
main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    RUN(init_and_rounding);
    RUN(schedule_cancel_reschedule);
    RUN(beyond_one_lap);
    RUN(random_exact);
    RUN(random_jumps);
    RUN(big_jump);
    RUN(cb_reschedules);
    RUN(cb_frees);
    RUN(cb_cancels_other);
    RUN(free_with_pending);
    TEST_DONE();
}
