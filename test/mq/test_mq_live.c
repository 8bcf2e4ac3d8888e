/*
 * test_mq_live.c: src/mq against a real RabbitMQ.
 *
 *   test_mq_live AMQP_URL                      the checks below
 *   test_mq_live AMQP_URL restart [BROKER_ID]  the broker-restart scenario,
 *                                              driven by test_mq_live.py
 *   test_mq_live AMQP_URL freeze [BROKER_ID]   the silent-broker scenario
 *                                              (heartbeats), likewise
 *
 * Threads: main runs the checks; on_message runs on the MQ thread and only
 * records what arrived (under a mutex) for main to look at. Ends with
 * "N passed, N failed" (test/unit/test.h); exit 1 on any failure.
 *
 * Restart mode speaks in stdout lines (flushed) to the python side:
 *   READY <id>     connected; python publishes "m1" to imgw.direct/<id>
 *   GOT m1         received, deliberately not acked; python stops RabbitMQ
 *   DISCONNECTED   seen; then a publish must fail with IMGW_EMQ
 *   DROP_OK        python starts RabbitMQ again (same port)
 *   RECONNECTED    python publishes "m2"
 *   then m1 comes again (requeued by the broker), the stale ack of its first
 *   delivery must be dropped, m1 and m2 are acked, a self-publish works.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "err.h"
#include "log.h"
#include "mq.h"
#include "test.h"

#define MAX_GOT 4096
#define BODY_KEEP 64

typedef struct got_s {
    char body[BODY_KEEP]; /* NUL-terminated prefix */
    size_t len;
    uint64_t tag;
} got_t;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static got_t got[MAX_GOT];
static int ngot;
static imgw_mq_t *_Atomic auto_ack_mq; /* set: on_msg acks on the MQ thread */
static int print_got;          /* restart mode: echo "GOT <body>" */
static const char *url;
static char restart_id[128]; /* restart mode: the queue / routing key */

static void
on_msg(void *data, const uint8_t *body, size_t len, uint64_t tag)
{
    (void)data;
    pthread_mutex_lock(&mu);
    if (ngot < MAX_GOT) {
        got_t *g = &got[ngot++];
        size_t n = len < BODY_KEEP - 1 ? len : BODY_KEEP - 1;
        memcpy(g->body, body, n);
        g->body[n] = '\0';
        g->len = len;
        g->tag = tag;
        if (print_got) {
            printf("GOT %s\n", g->body);
            fflush(stdout);
        }
    }
    pthread_mutex_unlock(&mu);
    if (auto_ack_mq != NULL)
        imgw_mq_ack(auto_ack_mq, tag); /* from inside the callback */
}

static void
got_reset(void)
{
    pthread_mutex_lock(&mu);
    ngot = 0;
    pthread_mutex_unlock(&mu);
}

static int
got_count(void)
{
    pthread_mutex_lock(&mu);
    int n = ngot;
    pthread_mutex_unlock(&mu);
    return n;
}

static got_t
got_at(int i)
{
    pthread_mutex_lock(&mu);
    got_t g = got[i];
    pthread_mutex_unlock(&mu);
    return g;
}

static uint64_t
now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void
sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int
wait_got(int n, int ms)
{
    uint64_t end = now_ms() + (uint64_t)ms;
    while (got_count() < n) {
        if (now_ms() >= end)
            return 0;
        sleep_ms(10);
    }
    return 1;
}

static int
wait_connected(imgw_mq_t *mq, int want, int ms)
{
    uint64_t end = now_ms() + (uint64_t)ms;
    while (!!imgw_mq_connected(mq) != want) {
        if (now_ms() >= end)
            return 0;
        sleep_ms(10);
    }
    return 1;
}

/* Waits until the stats field reaches at least v. */
#define WAIT_STAT(mq, field, v, ms)                                            \
    ({                                                                         \
        imgw_mq_stats_t st_;                                                   \
        uint64_t end_ = now_ms() + (uint64_t)(ms);                             \
        for (;;) {                                                             \
            imgw_mq_stats(mq, &st_);                                           \
            if (st_.field >= (uint64_t)(v) || now_ms() >= end_)                \
                break;                                                         \
            sleep_ms(10);                                                      \
        }                                                                      \
        (long long)st_.field;                                                  \
    })

static void
make_id(char *buf, size_t len, const char *what)
{
    static unsigned seq;
    snprintf(buf, len, "imgw-test-%s-%d-%u-%llu", what, (int)getpid(), ++seq,
             (unsigned long long)now_ms());
}

static imgw_mq_t *
start(const char *u, const char *id, size_t max_message, int prefetch)
{
    imgw_mq_opts_t o = {0};
    char err[256] = "";
    imgw_mq_t *mq = NULL;
    o.url = u;
    o.broker_id = id;
    o.exchange = "imgw.direct";
    o.prefetch = prefetch;
    o.heartbeat = 5;
    o.max_message = max_message;
    o.on_message = on_msg;
    int rc = imgw_mq_start(&mq, &o, err, sizeof(err));
    if (rc != 0)
        printf("  imgw_mq_start: %s (%s)\n", imgw_err_name(rc), err);
    return mq;
}

static int
publish_str(imgw_mq_t *mq, const char *key, const char *s)
{
    return imgw_mq_publish(mq, key, (const uint8_t *)s, strlen(s));
}

/* ---- checks ------------------------------------------------------------ */

TEST(config_errors)
{
    imgw_mq_opts_t o = {0};
    imgw_mq_t *mq = (imgw_mq_t *)1;
    char err[256];

    o.broker_id = "x";
    o.on_message = on_msg;

    o.url = "http://nope";
    err[0] = '\0';
    CHECK_EQ_INT(imgw_mq_start(&mq, &o, err, sizeof(err)), IMGW_ECONFIG);
    CHECK(mq == NULL);
    CHECK(err[0] != '\0');
    printf("    (%s)\n", err);

    o.url = "amqps://guest:guest@127.0.0.1:5671/";
    err[0] = '\0';
    CHECK_EQ_INT(imgw_mq_start(&mq, &o, err, sizeof(err)), IMGW_ECONFIG);
    CHECK(strstr(err, "amqps") != NULL);

    o.url = "amqp://guest:guest@127.0.0.1:notaport/";
    CHECK_EQ_INT(imgw_mq_start(&mq, &o, err, sizeof(err)), IMGW_ECONFIG);

    o.url = "";
    CHECK_EQ_INT(imgw_mq_start(&mq, &o, err, sizeof(err)), IMGW_ECONFIG);

    o.url = url;
    o.broker_id = "";
    err[0] = '\0';
    CHECK_EQ_INT(imgw_mq_start(&mq, &o, err, sizeof(err)), IMGW_ECONFIG);
    CHECK(strstr(err, "broker_id") != NULL);

    o.broker_id = "x";
    o.prefetch = 70000;
    CHECK_EQ_INT(imgw_mq_start(&mq, &o, err, sizeof(err)), IMGW_ECONFIG);
    o.prefetch = 0;
    o.heartbeat = -1;
    CHECK_EQ_INT(imgw_mq_start(&mq, &o, err, sizeof(err)), IMGW_ECONFIG);
    o.heartbeat = 0;
    o.on_message = NULL;
    CHECK(imgw_mq_start(&mq, &o, err, sizeof(err)) < 0);
    CHECK(mq == NULL);
}

/*
 * Publishing while the broker is unreachable fails at once and is counted.
 * The "broker" is a bound but not listening socket: connects are refused.
 */
TEST(publish_while_disconnected)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {0};
    socklen_t sl = sizeof(sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    CHECK(getsockname(fd, (struct sockaddr *)&sa, &sl) == 0);
    char u[128];
    snprintf(u, sizeof(u), "amqp://guest:guest@127.0.0.1:%d/",
             ntohs(sa.sin_port));

    imgw_mq_t *mq = start(u, "imgw-test-nobroker", 0, 0);
    CHECK(mq != NULL);
    if (mq == NULL) {
        close(fd);
        return;
    }
    sleep_ms(400); /* a few refused attempts */
    CHECK_EQ_INT(imgw_mq_connected(mq), 0);
    CHECK_EQ_INT(publish_str(mq, "somewhere", "lost"), IMGW_EMQ);
    CHECK_EQ_INT(publish_str(mq, "somewhere", "lost too"), IMGW_EMQ);
    imgw_mq_ack(mq, 12345); /* dropped quietly */
    imgw_mq_stats_t st;
    imgw_mq_stats(mq, &st);
    CHECK_EQ_INT(st.publish_dropped, 2);
    CHECK_EQ_INT(st.published, 0);
    CHECK_EQ_INT(st.connected, 0);
    CHECK_EQ_INT(st.reconnects, 0);
    uint64_t t0 = now_ms();
    imgw_mq_stop(mq);
    uint64_t dt = now_ms() - t0;
    printf("    (stop took %llu ms)\n", (unsigned long long)dt);
    CHECK(dt < 3000); /* stop interrupts the backoff sleep */
    close(fd);
}

/* Publish to ourselves, consume, ack; the broker confirms the publish. */
TEST(consume_and_ack)
{
    char id[128];
    make_id(id, sizeof(id), "ack");
    got_reset();
    imgw_mq_t *mq = start(url, id, 0, 0);
    CHECK(mq != NULL);
    if (mq == NULL)
        return;
    CHECK(wait_connected(mq, 1, 20000));
    CHECK_EQ_INT(publish_str(mq, id, "{\"hello\":1}"), 0);
    CHECK(wait_got(1, 10000));
    if (got_count() >= 1) {
        got_t g = got_at(0);
        CHECK_EQ_STR(g.body, "{\"hello\":1}");
        CHECK_EQ_INT(g.len, 11);
        imgw_mq_ack(mq, g.tag);
    }
    CHECK_EQ_INT(WAIT_STAT(mq, acked, 1, 5000), 1);
    CHECK_EQ_INT(WAIT_STAT(mq, published, 1, 5000), 1);
    CHECK_EQ_INT(WAIT_STAT(mq, consumed, 1, 5000), 1);

    /* An empty body is a message too. */
    CHECK_EQ_INT(imgw_mq_publish(mq, id, NULL, 0), 0);
    CHECK(wait_got(2, 10000));
    if (got_count() >= 2) {
        CHECK_EQ_INT(got_at(1).len, 0);
        imgw_mq_ack(mq, got_at(1).tag);
    }
    CHECK_EQ_INT(WAIT_STAT(mq, acked, 2, 5000), 2);

    imgw_mq_stats_t st;
    imgw_mq_stats(mq, &st);
    CHECK_EQ_INT(st.connected, 1);
    CHECK_EQ_INT(st.publish_dropped, 0);
    CHECK_EQ_INT(st.rejected, 0);
    CHECK_EQ_INT(st.reconnects, 0);
    imgw_mq_stop(mq);
}

/*
 * A rejected delivery is gone (no requeue); an unacked one comes back to
 * the next consumer of the queue once this one stops.
 */
TEST(reject_not_redelivered)
{
    char id[128];
    make_id(id, sizeof(id), "reject");
    got_reset();
    imgw_mq_t *mq = start(url, id, 0, 0);
    CHECK(mq != NULL);
    if (mq == NULL)
        return;
    CHECK(wait_connected(mq, 1, 20000));
    CHECK_EQ_INT(publish_str(mq, id, "reject-me"), 0);
    CHECK(wait_got(1, 10000));
    if (got_count() >= 1) {
        CHECK_EQ_STR(got_at(0).body, "reject-me");
        imgw_mq_reject(mq, got_at(0).tag);
    }
    CHECK_EQ_INT(WAIT_STAT(mq, rejected, 1, 5000), 1);
    sleep_ms(1000);
    CHECK_EQ_INT(got_count(), 1); /* not redelivered */

    CHECK_EQ_INT(publish_str(mq, id, "keep-me"), 0);
    CHECK(wait_got(2, 10000));
    if (got_count() >= 2)
        CHECK_EQ_STR(got_at(1).body, "keep-me"); /* not acked */
    imgw_mq_stop(mq);

    /* A new consumer of the same queue: only the unacked one is there. */
    got_reset();
    mq = start(url, id, 0, 0);
    CHECK(mq != NULL);
    if (mq == NULL)
        return;
    CHECK(wait_connected(mq, 1, 20000));
    CHECK(wait_got(1, 10000));
    sleep_ms(1000);
    CHECK_EQ_INT(got_count(), 1);
    if (got_count() >= 1) {
        CHECK_EQ_STR(got_at(0).body, "keep-me");
        imgw_mq_ack(mq, got_at(0).tag);
    }
    CHECK_EQ_INT(WAIT_STAT(mq, acked, 1, 5000), 1);
    imgw_mq_stop(mq);
}

/* Deliveries over max_message are rejected and never reach on_message. */
TEST(oversized_rejected)
{
    char id[128];
    make_id(id, sizeof(id), "big");
    got_reset();
    imgw_mq_t *mq = start(url, id, 1024, 0);
    CHECK(mq != NULL);
    if (mq == NULL)
        return;
    CHECK(wait_connected(mq, 1, 20000));
    /* Several frames' worth (frame_max is 128 KiB) to exercise skipping. */
    size_t big_len = 300 * 1024;
    uint8_t *big = malloc(big_len);
    memset(big, 'x', big_len);
    CHECK_EQ_INT(imgw_mq_publish(mq, id, big, big_len), 0);
    CHECK_EQ_INT(imgw_mq_publish(mq, id, big, 1025), 0);
    CHECK_EQ_INT(imgw_mq_publish(mq, id, big, 1024), 0); /* just fits */
    free(big);
    CHECK_EQ_INT(WAIT_STAT(mq, rejected, 2, 10000), 2);
    CHECK(wait_got(1, 10000));
    sleep_ms(300);
    CHECK_EQ_INT(got_count(), 1);
    if (got_count() >= 1) {
        CHECK_EQ_INT(got_at(0).len, 1024);
        imgw_mq_ack(mq, got_at(0).tag);
    }
    CHECK_EQ_INT(WAIT_STAT(mq, acked, 1, 5000), 1);
    imgw_mq_stats_t st;
    imgw_mq_stats(mq, &st);
    CHECK_EQ_INT(st.consumed, 3);
    CHECK_EQ_INT(st.reconnects, 0);
    imgw_mq_stop(mq);
}

/*
 * A bogus ack (a tag the channel never delivered) makes the broker close
 * the channel; imgw_mq reconnects. The message that was in flight comes
 * back under a new tag; an ack with the old tag must be dropped, not sent:
 * tags restart at 1 per channel, so it would otherwise ack the wrong one
 * or kill the channel again.
 */
TEST(stale_tag_after_reconnect)
{
    char id[128];
    make_id(id, sizeof(id), "stale");
    got_reset();
    imgw_mq_t *mq = start(url, id, 0, 0);
    CHECK(mq != NULL);
    if (mq == NULL)
        return;
    CHECK(wait_connected(mq, 1, 20000));
    CHECK_EQ_INT(publish_str(mq, id, "in-flight"), 0);
    CHECK(wait_got(1, 10000));
    if (got_count() < 1) {
        imgw_mq_stop(mq);
        return;
    }
    got_t first = got_at(0);
    imgw_mq_ack(mq, first.tag + 1000); /* same generation, unknown tag */
    CHECK_EQ_INT(WAIT_STAT(mq, reconnects, 1, 15000), 1);
    CHECK(wait_connected(mq, 1, 15000));
    CHECK(wait_got(2, 10000)); /* requeued by the broker, delivered again */
    if (got_count() < 2) {
        imgw_mq_stop(mq);
        return;
    }
    got_t again = got_at(1);
    CHECK_EQ_STR(again.body, "in-flight");
    CHECK(again.tag != first.tag);
    CHECK((again.tag & 0xffffffffffffull) == (first.tag & 0xffffffffffffull));
    imgw_mq_stats_t st0;
    imgw_mq_stats(mq, &st0);
    imgw_mq_ack(mq, first.tag); /* stale: dropped */
    sleep_ms(500);
    imgw_mq_stats_t st1;
    imgw_mq_stats(mq, &st1);
    CHECK_EQ_INT(st1.acked, st0.acked);
    CHECK_EQ_INT(st1.reconnects, 1);
    CHECK_EQ_INT(st1.connected, 1);
    imgw_mq_ack(mq, again.tag);
    CHECK_EQ_INT(WAIT_STAT(mq, acked, st0.acked + 1, 5000), st0.acked + 1);
    sleep_ms(300);
    CHECK_EQ_INT(got_count(), 2);
    imgw_mq_stats(mq, &st1);
    CHECK_EQ_INT(st1.reconnects, 1);
    imgw_mq_stop(mq);
}

/* Many publishes: every one is confirmed once and consumed once. */
TEST(burst)
{
    enum { N = 2000 };
    char id[128];
    make_id(id, sizeof(id), "burst");
    got_reset();
    imgw_mq_t *mq = start(url, id, 0, 50);
    CHECK(mq != NULL);
    if (mq == NULL)
        return;
    CHECK(wait_connected(mq, 1, 20000));
    int fails = 0;
    for (int i = 0; i < N; i++) {
        char b[32];
        snprintf(b, sizeof(b), "n%d", i);
        fails += publish_str(mq, id, b) != 0;
    }
    CHECK_EQ_INT(fails, 0);
    /* prefetch 50: ack as they come, or delivery stops at 50 */
    int acked = 0;
    uint64_t end = now_ms() + 30000;
    while (acked < N && now_ms() < end) {
        int n = got_count();
        for (; acked < n; acked++)
            imgw_mq_ack(mq, got_at(acked).tag);
        sleep_ms(5);
    }
    CHECK_EQ_INT(acked, N);
    int in_order = 1;
    for (int i = 0; i < got_count() && i < N; i++) {
        char b[32];
        snprintf(b, sizeof(b), "n%d", i);
        if (strcmp(got_at(i).body, b) != 0)
            in_order = 0;
    }
    CHECK(in_order);
    CHECK_EQ_INT(WAIT_STAT(mq, published, N, 10000), N);
    CHECK_EQ_INT(WAIT_STAT(mq, acked, N, 10000), N);
    imgw_mq_stats_t st;
    imgw_mq_stats(mq, &st);
    CHECK_EQ_INT(st.consumed, N);
    CHECK_EQ_INT(st.publish_dropped, 0);
    imgw_mq_stop(mq);
}

/*
 * Several threads publish at once (the queue is multi-producer) while the
 * acks come from inside on_message, i.e. from the MQ thread itself.
 */
enum { PUB_THREADS = 4, PUB_EACH = 500 };

typedef struct pub_arg_s {
    imgw_mq_t *mq;
    const char *key;
    int t;
    int fails;
} pub_arg_t;

static void *
pub_thread(void *p)
{
    pub_arg_t *a = p;
    for (int i = 0; i < PUB_EACH; i++) {
        char b[32];
        snprintf(b, sizeof(b), "t%d-%d", a->t, i);
        a->fails += publish_str(a->mq, a->key, b) != 0;
    }
    return NULL;
}

TEST(concurrent_publishers)
{
    char id[128];
    make_id(id, sizeof(id), "threads");
    got_reset();
    imgw_mq_t *mq = start(url, id, 0, 100);
    CHECK(mq != NULL);
    if (mq == NULL)
        return;
    CHECK(wait_connected(mq, 1, 20000));
    auto_ack_mq = mq;
    pthread_t th[PUB_THREADS];
    pub_arg_t args[PUB_THREADS];
    for (int t = 0; t < PUB_THREADS; t++) {
        args[t] = (pub_arg_t){mq, id, t, 0};
        pthread_create(&th[t], NULL, pub_thread, &args[t]);
    }
    int fails = 0;
    for (int t = 0; t < PUB_THREADS; t++) {
        pthread_join(th[t], NULL);
        fails += args[t].fails;
    }
    CHECK_EQ_INT(fails, 0);
    const int n = PUB_THREADS * PUB_EACH;
    CHECK(wait_got(n, 30000));
    CHECK_EQ_INT(WAIT_STAT(mq, acked, n, 10000), n);
    CHECK_EQ_INT(WAIT_STAT(mq, published, n, 10000), n);
    /* each exactly once, and in order per producer */
    static unsigned char seen[PUB_THREADS][PUB_EACH];
    int next[PUB_THREADS] = {0}, bad = 0;
    memset(seen, 0, sizeof(seen));
    for (int i = 0; i < got_count(); i++) {
        int t, k;
        if (sscanf(got_at(i).body, "t%d-%d", &t, &k) != 2 || t < 0 ||
            t >= PUB_THREADS || k < 0 || k >= PUB_EACH || seen[t][k]++ ||
            k != next[t]++)
            bad++;
    }
    CHECK_EQ_INT(bad, 0);
    CHECK_EQ_INT(got_count(), n);
    imgw_mq_stop(mq);
    auto_ack_mq = NULL;
}

/* ---- restart and freeze modes ------------------------------------------ */

static void
say(const char *fmt, const char *arg)
{
    printf(fmt, arg);
    printf("\n");
    fflush(stdout);
}

/* Index of the first delivery at or after `from` whose body is s, or -1. */
static int
find_got(int from, const char *s)
{
    for (int i = from; i < got_count(); i++)
        if (strcmp(got_at(i).body, s) == 0)
            return i;
    return -1;
}

static int
wait_find(int from, const char *s, int ms)
{
    uint64_t end = now_ms() + (uint64_t)ms;
    int i;
    while ((i = find_got(from, s)) < 0 && now_ms() < end)
        sleep_ms(10);
    return i;
}

TEST(broker_restart)
{
    const char *id = restart_id;
    imgw_mq_t *mq = start(url, id, 0, 0);
    CHECK(mq != NULL);
    if (mq == NULL)
        return;
    CHECK(wait_connected(mq, 1, 30000));
    say("READY %s", id);

    int i1 = wait_find(0, "m1", 30000);
    CHECK(i1 >= 0);
    if (i1 < 0)
        goto out;
    got_t m1_old = got_at(i1); /* not acked: held across the restart */
    int mark = got_count();

    CHECK(wait_connected(mq, 0, 120000));
    say("%s", "DISCONNECTED");
    imgw_mq_stats_t st;
    imgw_mq_stats(mq, &st);
    uint64_t dropped0 = st.publish_dropped;
    CHECK_EQ_INT(publish_str(mq, id, "lost"), IMGW_EMQ);
    imgw_mq_stats(mq, &st);
    CHECK_EQ_INT(st.publish_dropped, dropped0 + 1);
    say("%s", "DROP_OK");

    CHECK(wait_connected(mq, 1, 120000));
    imgw_mq_stats(mq, &st);
    CHECK(st.reconnects >= 1);
    uint64_t acked0 = st.acked;
    uint64_t reconnects0 = st.reconnects;
    say("%s", "RECONNECTED");

    /* The stale tag of m1's first delivery is dropped, not sent. */
    imgw_mq_ack(mq, m1_old.tag);
    sleep_ms(300);
    imgw_mq_stats(mq, &st);
    CHECK_EQ_INT(st.acked, acked0);

    int i1b = wait_find(mark, "m1", 30000); /* requeued, persistent */
    CHECK(i1b >= 0);
    int i2 = wait_find(mark, "m2", 30000);
    CHECK(i2 >= 0);
    if (i1b >= 0) {
        CHECK(got_at(i1b).tag != m1_old.tag);
        imgw_mq_ack(mq, got_at(i1b).tag);
    }
    if (i2 >= 0)
        imgw_mq_ack(mq, got_at(i2).tag);

    CHECK_EQ_INT(publish_str(mq, id, "m3"), 0);
    int i3 = wait_find(mark, "m3", 10000);
    CHECK(i3 >= 0);
    if (i3 >= 0)
        imgw_mq_ack(mq, got_at(i3).tag);
    CHECK_EQ_INT(WAIT_STAT(mq, acked, acked0 + 3, 10000), acked0 + 3);
    CHECK_EQ_INT(WAIT_STAT(mq, published, 1, 10000), 1);
    imgw_mq_stats(mq, &st);
    CHECK_EQ_INT(st.reconnects, reconnects0); /* the stale ack hurt nothing */
    CHECK_EQ_INT(st.connected, 1);
    printf("    stats: consumed %llu acked %llu rejected %llu published %llu "
           "dropped %llu reconnects %llu\n",
           (unsigned long long)st.consumed, (unsigned long long)st.acked,
           (unsigned long long)st.rejected, (unsigned long long)st.published,
           (unsigned long long)st.publish_dropped,
           (unsigned long long)st.reconnects);
    say("%s", "DONE");
out:
    imgw_mq_stop(mq);
}

/*
 * Freeze mode: python SIGSTOPs the broker after READY. The TCP connection
 * stays up (the kernel still acks our bytes), so only the AMQP heartbeat
 * (5 s here, dead after 2 x 5 s of silence) can notice; python SIGCONTs it
 * after DISCONNECTED, and we must come back and work.
 */
TEST(broker_freeze)
{
    const char *id = restart_id;
    imgw_mq_t *mq = start(url, id, 0, 0);
    CHECK(mq != NULL);
    if (mq == NULL)
        return;
    CHECK(wait_connected(mq, 1, 30000));
    say("READY %s", id);
    uint64_t t0 = now_ms();
    CHECK(wait_connected(mq, 0, 60000));
    printf("    (silence noticed after %llu ms)\n",
           (unsigned long long)(now_ms() - t0));
    say("%s", "DISCONNECTED");
    CHECK(wait_connected(mq, 1, 120000));
    say("%s", "RECONNECTED");
    int mark = got_count();
    CHECK_EQ_INT(publish_str(mq, id, "after-freeze"), 0);
    int i = wait_find(mark, "after-freeze", 10000);
    CHECK(i >= 0);
    if (i >= 0)
        imgw_mq_ack(mq, got_at(i).tag);
    CHECK_EQ_INT(WAIT_STAT(mq, acked, 1, 10000), 1);
    CHECK_EQ_INT(WAIT_STAT(mq, published, 1, 10000), 1);
    say("%s", "DONE");
    imgw_mq_stop(mq);
}

int
main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) {
        fprintf(stderr, "usage: %s AMQP_URL [restart|freeze [BROKER_ID]]\n",
                argv[0]);
        return 2;
    }
    url = argv[1];
    print_got = argc >= 3; /* the scenarios echo deliveries */
    const char *lvl = getenv("IMGW_LOG_LEVEL");
    if (lvl && imgw_log_parse_level(lvl) >= 0)
        imgw_log_set_level(imgw_log_parse_level(lvl));

    if (argc >= 3) {
        if (argc >= 4)
            snprintf(restart_id, sizeof(restart_id), "%s", argv[3]);
        else
            make_id(restart_id, sizeof(restart_id), argv[2]);
        if (strcmp(argv[2], "restart") == 0)
            RUN(broker_restart);
        else if (strcmp(argv[2], "freeze") == 0)
            RUN(broker_freeze);
        else {
            fprintf(stderr, "unknown mode %s\n", argv[2]);
            return 2;
        }
        TEST_DONE();
    }

    RUN(config_errors);
    RUN(publish_while_disconnected);
    RUN(consume_and_ack);
    RUN(reject_not_redelivered);
    RUN(oversized_rejected);
    RUN(stale_tag_after_reconnect);
    RUN(burst);
    RUN(concurrent_publishers);
    TEST_DONE();
}
