/*
 * test_loop.c: the loop's deadline clock (net/loop.c) against wall clock
 * steps.
 *
 * Deadlines (auth and heartbeat timeouts), the timer wheel and the rate
 * buckets run on imgw__loop_clock_ms(), a monotonic clock. The wall clock
 * (core's imgw_now_ms) has a test hook, imgw__wall_offset_ms, that steps it
 * as NTP or an operator would. With a wall-clock deadline source the
 * checks below fail: a step back of an hour keeps an auth_timeout of 1 s
 * from ever firing, a step forward closes a connection whose 30 s
 * auth_timeout is far away.
 *
 * The e2e checks run a real one-loop imgw_net with a raw TCP client (an
 * accepted connection that never sends a request has the auth_timeout
 * deadline). Waits are generous bounds, not speed assertions.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "session.h"
#include "net_int.h"
#include "test.h"

#define HOUR_MS (3600LL * 1000)

static const imgw_net_handlers_t no_handlers; /* every handler NULL */

static uint16_t
free_port(void)
{
    struct sockaddr_in a;
    socklen_t al = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &al) != 0) {
        if (fd >= 0)
            close(fd);
        return 0;
    }
    close(fd);
    return ntohs(a.sin_port);
}

static imgw_net_t *
net_start(uint16_t *port, int auth_timeout)
{
    static uint16_t ports[1];
    char err[256] = "";
    imgw_net_opts_t o = {
        .bind = "127.0.0.1",
        .ports = ports,
        .n_ports = 1,
        .n_loops = 1,
        .auth_timeout = auth_timeout,
        .max_frame_bytes = 65536,
        .max_queued_bytes = 1 << 20,
        .max_body_bytes = 65536,
        .max_connections = 100,
        .handlers = &no_handlers,
    };
    imgw_net_t *n = NULL;
    for (int attempt = 0; attempt < 5 && n == NULL; attempt++) {
        ports[0] = free_port();
        if (ports[0] == 0 || imgw_net_new(&n, &o, err, sizeof(err)) != 0)
            n = NULL;
    }
    if (n == NULL) {
        printf("  cannot create the net: %s\n", err);
        return NULL;
    }
    if (imgw_net_start(n) != 0) {
        imgw_net_free(n);
        return NULL;
    }
    *port = ports[0];
    return n;
}

static void
net_stop(imgw_net_t *n)
{
    imgw_net_drain(n, 0);
    CHECK_EQ_INT(imgw_net_join(n, 10000), 0);
    imgw_net_free(n);
}

static int
connect_to(uint16_t port)
{
    struct sockaddr_in a;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Waits (up to ms) until the net counts n connections: the accept, and so
 * the connection's deadline, happened. */
static int
wait_conns(imgw_net_t *n, long want, int ms)
{
    for (int i = 0; i < ms / 10; i++) {
        if (imgw_net_conn_count(n) == want)
            return 1;
        usleep(10000);
    }
    return imgw_net_conn_count(n) == want;
}

/* 1 when the peer closed the socket within ms, 0 if it is still open. */
static int
peer_closed_within(int fd, int ms)
{
    struct pollfd p = {fd, POLLIN, 0};
    char b[64];
    if (poll(&p, 1, ms) <= 0)
        return 0;
    ssize_t r = recv(fd, b, sizeof(b), MSG_DONTWAIT);
    return r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
}

TEST(batch_wait_rule)
{
    const uint64_t P = 200000; /* 200 us */
    printf("  checks: server.batch_us's rule: no wait for a quiet iteration "
           "(0 or 1 connection read) or after a whole period; otherwise what "
           "is left of the period\n");
    CHECK_EQ_INT(imgw__batch_wait_ns(0, 0, P), 0);
    CHECK_EQ_INT(imgw__batch_wait_ns(1, 1000, P), 0);
    CHECK_EQ_INT(imgw__batch_wait_ns(IMGW_BATCH_MIN_READS, 0, P), P);
    CHECK_EQ_INT(imgw__batch_wait_ns(2, 50000, P), 150000);
    CHECK_EQ_INT(imgw__batch_wait_ns(100, P - 1, P), 1);
    CHECK_EQ_INT(imgw__batch_wait_ns(100, P, P), 0);      /* saturated */
    CHECK_EQ_INT(imgw__batch_wait_ns(100, 10 * P, P), 0); /* after a block */
    /* A busy loop's waits add up to at most one period per iteration. */
    uint64_t since = 30000, total = 0;
    int off = 0;
    for (int i = 0; i < 1000; i++) {
        uint64_t w = imgw__batch_wait_ns(3, since, P);
        total += since + w;
        off += since + w != (since < P ? P : since);
        since = (since * 7 + 13000) % (2 * P);
    }
    printf("  1000 iterations: %.1f us per iteration on average, %d off "
           "the rule\n", (double)total / 1000 / 1000, off);
    CHECK_EQ_INT(off, 0);
}

TEST(clock_ignores_wall_steps)
{
    uint16_t port;
    imgw_net_t *n = net_start(&port, 5);
    CHECK(n != NULL);
    if (n == NULL)
        return;
    /* Read from the test thread while the loop runs: uv_now() is a plain
     * load of the loop's cached time, fine for this check. */
    imgw_loop_t *l = imgw_net_loop(n, 0);
    int64_t w0 = imgw_now_ms();
    uint64_t t0 = imgw__loop_clock_ms(l);
    atomic_store(&imgw__wall_offset_ms, -HOUR_MS);
    int64_t w1 = imgw_now_ms();
    usleep(300000); /* a few timer ticks refresh the loop time */
    uint64_t t1 = imgw__loop_clock_ms(l);
    atomic_store(&imgw__wall_offset_ms, HOUR_MS);
    int64_t w2 = imgw_now_ms();
    usleep(300000);
    uint64_t t2 = imgw__loop_clock_ms(l);
    atomic_store(&imgw__wall_offset_ms, 0);
    printf("  wall %lld -> %lld -> %lld, loop clock %llu -> %llu -> %llu\n",
           (long long)w0, (long long)w1, (long long)w2,
           (unsigned long long)t0, (unsigned long long)t1,
           (unsigned long long)t2);
    /* The hook does step the wall clock... */
    CHECK(w1 < w0 - HOUR_MS + 60000);
    CHECK(w2 > w0 + HOUR_MS - 60000);
    /* ...and the loop clock goes on as if nothing happened. */
    CHECK(t1 >= t0 && t1 - t0 < 60000);
    CHECK(t2 >= t1 && t2 - t1 < 60000);
    net_stop(n);
}

TEST(auth_deadline_fires_after_wall_step_back)
{
    uint16_t port;
    imgw_net_t *n = net_start(&port, 1);
    CHECK(n != NULL);
    if (n == NULL)
        return;
    int fd = connect_to(port);
    CHECK(fd >= 0);
    CHECK(wait_conns(n, 1, 5000));
    /* The wall clock goes back an hour right after the accept: a deadline
     * on the wall clock would be an hour away now. */
    atomic_store(&imgw__wall_offset_ms, -HOUR_MS);
    int closed = peer_closed_within(fd, 15000);
    atomic_store(&imgw__wall_offset_ms, 0);
    printf("  auth_timeout 1 s, wall clock -1 h: closed by the deadline: %d\n",
           closed);
    CHECK(closed);
    CHECK(wait_conns(n, 0, 5000));
    if (fd >= 0)
        close(fd);
    net_stop(n);
}

TEST(auth_deadline_holds_after_wall_step_forward)
{
    uint16_t port;
    imgw_net_t *n = net_start(&port, 30);
    CHECK(n != NULL);
    if (n == NULL)
        return;
    int fd = connect_to(port);
    CHECK(fd >= 0);
    CHECK(wait_conns(n, 1, 5000));
    /* An hour forward: a wall-clock deadline 30 s away would be long past
     * and fire at the next tick (every 250 ms); watch for 2 s. */
    atomic_store(&imgw__wall_offset_ms, HOUR_MS);
    int closed = peer_closed_within(fd, 2000);
    atomic_store(&imgw__wall_offset_ms, 0);
    printf("  auth_timeout 30 s, wall clock +1 h: closed within 2 s: %d\n",
           closed);
    CHECK(!closed);
    CHECK_EQ_INT(imgw_net_conn_count(n), 1);
    if (fd >= 0)
        close(fd);
    net_stop(n);
}

int
main(void)
{
    RUN(batch_wait_rule);
    RUN(clock_ignores_wall_steps);
    RUN(auth_deadline_fires_after_wall_step_back);
    RUN(auth_deadline_holds_after_wall_step_forward);
    TEST_DONE();
}
