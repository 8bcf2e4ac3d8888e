/*
 * test_conn.c: unit tests for net/conn.c (with the HTTP and WebSocket
 * handlers it dispatches to), on test/fuzz/fuzz_net.h's fake loop: a
 * connection with no socket, reads handed in as conn.c's socket read would,
 * and the loop's flush played by the harness, which hands every written
 * byte to the sink below. What is checked is what a client would see:
 * responses and their keep-alive, pipelining and a paused read answered
 * later, the upgrade (accept key, state) or its refusal, messages up and
 * echoed frames down, the closing handshake, 1009 and 1007 closes, an
 * abort, and on_close running once per connection.
 *
 * The socket_ tests put a connection on a real loopback TCP socket and run
 * the harness's uv loop: conn.c's own reads, sends, partial writes waiting
 * for UV_WRITABLE, EOF and reset handling, and the fd closed at the end.
 */
#include "fuzz_net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "test.h"

static char out[65536];
static size_t out_len;

static void
sink(imgw_conn_t *c, const uint8_t *p, size_t n)
{
    (void)c;
    if (n > sizeof(out) - 1 - out_len)
        n = sizeof(out) - 1 - out_len;
    memcpy(out + out_len, p, n);
    out_len += n;
    out[out_len] = '\0';
}

static imgw_conn_t *
start(int state, unsigned mode)
{
    fuzz_net_init();
    fuzz_net_sink = sink;
    fuzz_mode = mode;
    out_len = 0;
    out[0] = '\0';
    return fuzz_net_conn(state);
}

static void
feed(imgw_conn_t *c, const void *p, size_t n)
{
    fuzz_net_feed(c, p, n, 0);
}

static void
feed_str(imgw_conn_t *c, const char *s)
{
    feed(c, s, strlen(s));
}

/* Occurrences of s in what the connection wrote. */
static int
count(const char *s)
{
    size_t k = strlen(s);
    int n = 0;
    for (const char *p = out, *end = out + out_len;
         (p = memmem(p, (size_t)(end - p), s, k)) != NULL; p += k)
        n++;
    return n;
}

/* A client frame: masked (key 1,2,3,4), FIN set, payload < 126 bytes. */
static size_t
frame(uint8_t *dst, int opcode, const void *payload, size_t n)
{
    static const uint8_t key[4] = {1, 2, 3, 4};
    dst[0] = (uint8_t)(0x80 | opcode);
    dst[1] = (uint8_t)(0x80 | n);
    memcpy(dst + 2, key, 4);
    for (size_t i = 0; i < n; i++)
        dst[6 + i] = ((const uint8_t *)payload)[i] ^ key[i % 4];
    return 6 + n;
}

/* A close frame the server wrote: 0x88, length, then the code. */
static int
server_close_code(void)
{
    for (size_t i = 0; i + 3 < out_len; i++) {
        if ((uint8_t)out[i] == 0x88 && (uint8_t)out[i + 1] >= 2 &&
            (uint8_t)out[i + 1] < 126)
            return ((uint8_t)out[i + 2] << 8) | (uint8_t)out[i + 3];
    }
    return -1;
}

#define UPGRADE                                                              \
    "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"                  \
    "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"                   \
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"

TEST(http_keepalive_and_pipelining)
{
    imgw_conn_t *c = start(IMGW_CONN_HTTP, 0); /* answer 200 "ok" now */
    feed_str(c, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
                "GET /b HTTP/1.1\r\nHost: x\r\n\r\n");
    CHECK_EQ_INT(count("HTTP/1.1 200"), 2); /* both pipelined requests */
    CHECK_EQ_INT(count("\r\n\r\nok\n"), 2);
    CHECK(c->state == IMGW_CONN_HTTP); /* kept alive */
    CHECK_EQ_INT(fuzz_removed, 0);
    fuzz_net_end(c);
    CHECK_EQ_INT(fuzz_removed, 1); /* on_close once */
}

TEST(http_close_after_response)
{
    /* mode 1: 404 with close: the connection ends once it is written. */
    imgw_conn_t *c = start(IMGW_CONN_HTTP, 1);
    feed_str(c, "GET /missing HTTP/1.1\r\nHost: x\r\n\r\n");
    CHECK_EQ_INT(count("HTTP/1.1 404"), 1);
    CHECK_EQ_INT(count("X-A: b\r\n"), 1); /* the extra header line */
    CHECK(count("application/json") == 1);
    CHECK(c->state == IMGW_CONN_CLOSED);
    fuzz_net_end(c);
    CHECK_EQ_INT(fuzz_removed, 1);
}

TEST(http_paused_until_answered)
{
    /* mode 2: the handler answers later (fuzz_net_flush() plays the
     * answer); until then the pipelined second request is kept, and it is
     * handled once the first is answered. */
    const char *two = "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
                      "GET /next HTTP/1.1\r\nHost: x\r\n\r\n";
    imgw_conn_t *c = start(IMGW_CONN_HTTP, 2);
    memcpy(fuzz_loop->rbuf, two, strlen(two)); /* one read, as conn_read */
    imgw__conn_on_read(c, fuzz_loop->rbuf, strlen(two));
    CHECK(c->flags & IMGW_CF_READ_PAUSED);
    CHECK(fuzz_loop->flush_head == NULL); /* nothing written yet */
    CHECK_EQ_INT(out_len, 0);
    fuzz_net_flush(c);
    CHECK_EQ_INT(count("HTTP/1.1 200"), 1);
    CHECK_EQ_INT(count("late\n"), 1);
    /* The answer resumed the connection: the second request arrived at
     * the handler, which holds it too. */
    CHECK(c->state == IMGW_CONN_HTTP);
    CHECK(c->flags & IMGW_CF_READ_PAUSED);
    fuzz_net_flush(c);
    CHECK_EQ_INT(count("HTTP/1.1 200"), 2);
    CHECK_EQ_INT(count("late\n"), 2);
    fuzz_net_end(c);
    CHECK_EQ_INT(fuzz_removed, 1);
}

TEST(http_bad_request)
{
    imgw_conn_t *c = start(IMGW_CONN_HTTP, 0);
    feed_str(c, "NOT HTTP AT ALL\r\n\r\n");
    CHECK_EQ_INT(count("HTTP/1.1 400"), 1);
    CHECK_EQ_INT(count("HTTP/1.1 200"), 0);
    fuzz_net_end(c);
    CHECK_EQ_INT(fuzz_removed, 1);
}

TEST(upgrade_and_echo)
{
    uint8_t f[256];
    /* mode 8: messages are echoed. */
    imgw_conn_t *c = start(IMGW_CONN_HTTP, 8);
    feed_str(c, UPGRADE);
    CHECK_EQ_INT(count("HTTP/1.1 101"), 1);
    /* RFC 6455's example key and its accept value. */
    CHECK_EQ_INT(count("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), 1);
    CHECK(c->state == IMGW_CONN_WS);
    out_len = 0;
    size_t n = frame(f, 0x1, "hello", 5);
    feed(c, f, n);
    CHECK_EQ_INT(fuzz_messages, 1);
    /* The echo: an unmasked text frame with the same payload. */
    CHECK_EQ_INT(out_len, 7);
    CHECK_EQ_INT((uint8_t)out[0], 0x81);
    CHECK_EQ_INT((uint8_t)out[1], 5);
    CHECK(memcmp(out + 2, "hello", 5) == 0);
    /* A binary message too, and a ping answered with a pong. */
    out_len = 0;
    n = frame(f, 0x2, "\x00\x01\x02", 3);
    n += frame(f + n, 0x9, "p", 1);
    feed(c, f, n);
    CHECK_EQ_INT(fuzz_messages, 2);
    CHECK_EQ_INT((uint8_t)out[0], 0x82);
    CHECK(count("\x8a\x01p") == 1); /* pong, payload echoed */
    fuzz_net_end(c);
    CHECK_EQ_INT(fuzz_removed, 1);
}

TEST(upgrade_refused)
{
    /* mode 4: on_upgrade answers 401; the connection never becomes WS. */
    imgw_conn_t *c = start(IMGW_CONN_HTTP, 4);
    feed_str(c, UPGRADE);
    CHECK_EQ_INT(count("HTTP/1.1 401"), 1);
    CHECK_EQ_INT(count("HTTP/1.1 101"), 0);
    CHECK(c->state != IMGW_CONN_WS);
    fuzz_net_end(c);
    CHECK_EQ_INT(fuzz_removed, 1);
}

TEST(closing_handshake)
{
    uint8_t f[64];
    imgw_conn_t *c = start(IMGW_CONN_WS, 0);
    size_t n = frame(f, 0x8, "\x03\xe8", 2); /* close 1000 */
    feed(c, f, n);
    CHECK_EQ_INT(server_close_code(), 1000); /* answered */
    CHECK(c->state == IMGW_CONN_CLOSED || c->state == IMGW_CONN_CLOSING);
    fuzz_net_end(c);
    CHECK_EQ_INT(fuzz_removed, 1);
}

TEST(server_closes_on_second_message)
{
    uint8_t f[64];
    /* mode 16: the handler closes with 1000 "bye" at the 2nd message. */
    imgw_conn_t *c = start(IMGW_CONN_WS, 16);
    size_t n = frame(f, 0x1, "a", 1);
    n += frame(f + n, 0x1, "b", 1);
    n += frame(f + n, 0x1, "c", 1); /* after the close: not delivered */
    feed(c, f, n);
    CHECK_EQ_INT(fuzz_messages, 2);
    CHECK_EQ_INT(server_close_code(), 1000);
    CHECK_EQ_INT(count("bye"), 1);
    fuzz_net_end(c);
    CHECK_EQ_INT(fuzz_removed, 1);
}

TEST(too_big_closes_1009)
{
    /* max_frame_bytes is 4096 in the fake loop; a 5000-byte frame (16-bit
     * length) is refused before it is read. */
    static uint8_t f[5010];
    imgw_conn_t *c = start(IMGW_CONN_WS, 0);
    f[0] = 0x82;
    f[1] = 0x80 | 126;
    f[2] = 5000 >> 8;
    f[3] = 5000 & 0xff;
    memset(f + 4, 0, 4); /* mask key 0 */
    memset(f + 8, 'x', 5000);
    feed(c, f, 5008);
    CHECK_EQ_INT(fuzz_messages, 0);
    CHECK_EQ_INT(server_close_code(), 1009);
    fuzz_net_end(c);
    CHECK_EQ_INT(fuzz_removed, 1);
}

TEST(bad_utf8_closes_1007)
{
    uint8_t f[64];
    imgw_conn_t *c = start(IMGW_CONN_WS, 0);
    size_t n = frame(f, 0x1, "\xff\xfe", 2);
    feed(c, f, n);
    CHECK_EQ_INT(fuzz_messages, 0);
    CHECK_EQ_INT(server_close_code(), 1007);
    fuzz_net_end(c);
    CHECK_EQ_INT(fuzz_removed, 1);
}

TEST(unmasked_client_frame_closes_1002)
{
    uint8_t f[8] = {0x81, 0x02, 'h', 'i'};
    imgw_conn_t *c = start(IMGW_CONN_WS, 0);
    feed(c, f, 4);
    CHECK_EQ_INT(fuzz_messages, 0);
    CHECK_EQ_INT(server_close_code(), 1002);
    fuzz_net_end(c);
    CHECK_EQ_INT(fuzz_removed, 1);
}

TEST(abort_on_third_message)
{
    uint8_t f[64];
    /* mode 24: the handler aborts at the 3rd message: no close frame. */
    imgw_conn_t *c = start(IMGW_CONN_WS, 24);
    size_t n = 0;
    for (int i = 0; i < 4; i++)
        n += frame(f + n, 0x1, "m", 1);
    feed(c, f, n);
    CHECK_EQ_INT(fuzz_messages, 3);
    CHECK(c->state == IMGW_CONN_CLOSED);
    CHECK_EQ_INT(server_close_code(), -1);
    fuzz_net_end(c);
    CHECK_EQ_INT(fuzz_removed, 1);
}

TEST(conn_size)
{
    /* Issue 14 (hold): 264 bytes is a 272-byte malloc chunk; one byte
     * more is a 288-byte one (net_int.h's layout). */
    printf("  sizeof(imgw_conn_t) = %zu, uv_poll_t = %zu\n",
           sizeof(imgw_conn_t), sizeof(uv_poll_t));
    CHECK(sizeof(imgw_conn_t) <= 264);
}

TEST(deadline_across_32bit_wrap)
{
    /* The deadline keeps the low 32 bits of its loop ms: one that wraps
     * past 2^32 must neither fire early nor be lost. */
    imgw_conn_t *c = start(IMGW_CONN_HTTP, 0);
    uint64_t saved = fuzz_loop->now_ms;
    fuzz_loop->now_ms = 0xFFFFF000u;
    imgw_conn_set_deadline(c, fuzz_loop->now_ms + 10000);
    imgw__conn_deadline_fired(c);
    CHECK(c->state != IMGW_CONN_CLOSED);
    fuzz_loop->now_ms += 9999;
    imgw__conn_deadline_fired(c);
    CHECK(c->state != IMGW_CONN_CLOSED);
    fuzz_loop->now_ms += 1;
    imgw__conn_deadline_fired(c);
    printf("  deadline 10 s after 0xFFFFF000 ms fired at +10 s: %s\n",
           c->state == IMGW_CONN_CLOSED ? "yes" : "no");
    CHECK(c->state == IMGW_CONN_CLOSED);
    fuzz_net_end(c);
    CHECK_EQ_INT(fuzz_removed, 1);
    fuzz_loop->now_ms = saved;
}

/* A connected loopback pair: *srv (non-blocking, for the connection) and
 * *cli (the peer, blocking with a 5 s receive timeout). Small buffers, so
 * that a few hundred KiB do not fit and a send is partial. */
static void
tcp_pair(int *srv, int *cli)
{
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof(a);
    int small = 8192;
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        listen(l, 1) != 0 || getsockname(l, (struct sockaddr *)&a, &al) != 0)
        abort();
    *cli = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    setsockopt(*cli, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    if (connect(*cli, (struct sockaddr *)&a, sizeof(a)) != 0)
        abort();
    *srv = accept4(l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (*srv < 0)
        abort();
    setsockopt(*srv, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
    struct timeval tv = {5, 0};
    setsockopt(*cli, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    close(l);
}

static imgw_conn_t *
sock_conn(int fd, unsigned mode)
{
    fuzz_net_init();
    fuzz_net_sink = NULL;
    fuzz_mode = mode;
    imgw_conn_t *c = imgw__conn_new(fuzz_loop);
    if (imgw__conn_open(c, fd) != 0)
        abort();
    imgw_conn_set_data(c, &fuzz_conn_tag);
    fuzz_removed = 0;
    return c;
}

/* One loop iteration as the server runs it: poll (no wait), then the
 * prepare step's flush. */
static void
spin(void)
{
    uv_run(&fuzz_loop->uv, UV_RUN_NOWAIT);
    imgw__conn_flush_all(fuzz_loop);
}

TEST(socket_partial_write_then_close_after)
{
    enum { BIG = 512 * 1024 };
    int fd, cli;
    tcp_pair(&fd, &cli);
    imgw_conn_t *c = sock_conn(fd, 0);
    static uint8_t big[BIG], got[BIG + 16];
    for (size_t i = 0; i < BIG; i++)
        big[i] = (uint8_t)(i * 7);
    uv_buf_t b = uv_buf_init((char *)big, BIG);
    CHECK_EQ_INT(imgw__conn_write_raw(c, &b, 1, 0), 0);
    imgw__conn_flush_all(fuzz_loop);
    printf("  first send took %zu of %d bytes; writing: %d\n",
           (size_t)(BIG - c->queued), BIG, !!(c->flags & IMGW_CF_WRITING));
    CHECK(c->flags & IMGW_CF_WRITING);
    CHECK(c->queued > 0 && c->queued < BIG);
    /* Output while the kernel is full goes behind the rest, in order. */
    uv_buf_t t = uv_buf_init("tail", 4);
    uint32_t before = c->queued;
    CHECK_EQ_INT(imgw__conn_write_raw(c, &t, 1, 0), 0);
    CHECK_EQ_INT(c->queued, before + 4);
    c->flags |= IMGW_CF_CLOSE_AFTER;
    size_t total = 0;
    int eof = 0;
    for (int i = 0; i < 100000 && !eof; i++) {
        spin();
        ssize_t n = recv(cli, got + total, sizeof(got) - total, MSG_DONTWAIT);
        if (n == 0)
            eof = 1;
        else if (n > 0)
            total += (size_t)n;
    }
    printf("  peer read %zu bytes then %s; on_close ran %zu time(s)\n", total,
           eof ? "EOF" : "no EOF", fuzz_removed);
    CHECK_EQ_INT(total, BIG + 4);
    CHECK(memcmp(got, big, BIG) == 0);
    CHECK(memcmp(got + BIG, "tail", 4) == 0);
    CHECK(eof);
    CHECK_EQ_INT(fuzz_removed, 1);
    close(cli);
}

TEST(socket_read_respond_and_eof)
{
    int fd, cli;
    tcp_pair(&fd, &cli);
    imgw_conn_t *c = sock_conn(fd, 0); /* mode 0: 200 "ok", keep-alive */
    imgw__conn_read_start(c);
    const char req[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    CHECK_EQ_INT(send(cli, req, sizeof(req) - 1, 0), (int)sizeof(req) - 1);
    char buf[512];
    size_t got = 0;
    for (int i = 0; i < 100000 && !memmem(buf, got, "ok\n", 3); i++) {
        spin();
        ssize_t n = recv(cli, buf + got, sizeof(buf) - 1 - got, MSG_DONTWAIT);
        if (n > 0)
            got += (size_t)n;
    }
    buf[got] = '\0';
    printf("  response: %.15s... (%zu bytes)\n", buf, got);
    CHECK(strncmp(buf, "HTTP/1.1 200", 12) == 0);
    CHECK(c->state == IMGW_CONN_HTTP);
    /* The peer's FIN: read returns 0, the connection closes. */
    shutdown(cli, SHUT_WR);
    for (int i = 0; i < 100000 && fuzz_removed == 0; i++)
        spin();
    printf("  after the peer's FIN: on_close ran %zu time(s)\n", fuzz_removed);
    CHECK_EQ_INT(fuzz_removed, 1);
    CHECK_EQ_INT(recv(cli, buf, sizeof(buf), 0), 0); /* our fd is closed */
    close(cli);
}

TEST(socket_reset_while_writing)
{
    /* Reading stopped (as for an async answer) and output waiting for
     * room: the peer's RST still closes the connection. */
    int fd, cli;
    tcp_pair(&fd, &cli);
    imgw_conn_t *c = sock_conn(fd, 0);
    static uint8_t big[256 * 1024];
    uv_buf_t b = uv_buf_init((char *)big, sizeof(big));
    CHECK_EQ_INT(imgw__conn_write_raw(c, &b, 1, 0), 0);
    imgw__conn_flush_all(fuzz_loop);
    CHECK(c->flags & IMGW_CF_WRITING);
    struct linger lg = {1, 0};
    setsockopt(cli, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(cli);
    for (int i = 0; i < 100000 && fuzz_removed == 0; i++)
        spin();
    printf("  after the peer's RST: on_close ran %zu time(s)\n", fuzz_removed);
    CHECK_EQ_INT(fuzz_removed, 1);
}

int
main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    RUN(http_keepalive_and_pipelining);
    RUN(http_close_after_response);
    RUN(http_paused_until_answered);
    RUN(http_bad_request);
    RUN(upgrade_and_echo);
    RUN(upgrade_refused);
    RUN(closing_handshake);
    RUN(server_closes_on_second_message);
    RUN(too_big_closes_1009);
    RUN(bad_utf8_closes_1007);
    RUN(unmasked_client_frame_closes_1002);
    RUN(abort_on_third_message);
    RUN(conn_size);
    RUN(deadline_across_32bit_wrap);
    RUN(socket_partial_write_then_close_after);
    RUN(socket_read_respond_and_eof);
    RUN(socket_reset_while_writing);
    TEST_DONE();
}
