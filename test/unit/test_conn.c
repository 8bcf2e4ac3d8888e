/*
 * test_conn.c: unit tests for net/conn.c (with the HTTP and WebSocket
 * handlers it dispatches to), on test/fuzz/fuzz_net.h's fake loop: a
 * connection with no socket, reads handed in as conn.c's read_cb would,
 * and the loop's flush played by the harness, which hands every written
 * byte to the sink below. What is checked is what a client would see:
 * responses and their keep-alive, pipelining and a paused read answered
 * later, the upgrade (accept key, state) or its refusal, messages up and
 * echoed frames down, the closing handshake, 1009 and 1007 closes, an
 * abort, and on_close running once per connection.
 */
#include "fuzz_net.h"

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
    memcpy(fuzz_loop->rbuf, two, strlen(two)); /* one read, as read_cb */
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
    TEST_DONE();
}
