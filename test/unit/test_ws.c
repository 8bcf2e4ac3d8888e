/* test_ws.c: WebSocket helpers: frame headers, UTF-8, accept key. */
#include <stdint.h>
#include <string.h>

#include "utf8.h"
#include "net_int.h"
#include "test.h"

TEST(header_lengths)
{
    uint8_t h[10];
    CHECK_EQ_INT(imgw__ws_header(h, 2, 0), 2);
    CHECK_EQ_INT(h[0], 0x82);
    CHECK_EQ_INT(h[1], 0);
    CHECK_EQ_INT(imgw__ws_header(h, 1, 125), 2);
    CHECK_EQ_INT(h[0], 0x81);
    CHECK_EQ_INT(h[1], 125);
    CHECK_EQ_INT(imgw__ws_header(h, 2, 126), 4);
    CHECK_EQ_INT(h[1], 126);
    CHECK_EQ_INT((h[2] << 8) | h[3], 126);
    CHECK_EQ_INT(imgw__ws_header(h, 2, 65535), 4);
    CHECK_EQ_INT((h[2] << 8) | h[3], 65535);
    CHECK_EQ_INT(imgw__ws_header(h, 2, 65536), 10);
    CHECK_EQ_INT(h[1], 127);
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | h[2 + i];
    CHECK_EQ_INT(v, 65536);
    CHECK_EQ_INT(imgw__ws_header(h, 8, 2), 2);
    CHECK_EQ_INT(h[0], 0x88);
}

TEST(utf8)
{
    CHECK(imgw_utf8_valid((const uint8_t *)"", 0));
    CHECK(imgw_utf8_valid((const uint8_t *)"hello", 5));
    CHECK(imgw_utf8_valid((const uint8_t *)"h\xc3\xa9llo", 6));
    CHECK(imgw_utf8_valid((const uint8_t *)"\xe4\xbd\xa0\xe5\xa5\xbd", 6));
    CHECK(imgw_utf8_valid((const uint8_t *)"\xf0\x9f\x98\x80", 4));
    CHECK(!imgw_utf8_valid((const uint8_t *)"\xff", 1));
    CHECK(!imgw_utf8_valid((const uint8_t *)"\xc3", 1));          /* cut */
    CHECK(!imgw_utf8_valid((const uint8_t *)"\xe4\xbd", 2));      /* cut */
    CHECK(!imgw_utf8_valid((const uint8_t *)"\xc0\xaf", 2));      /* overlong */
    CHECK(!imgw_utf8_valid((const uint8_t *)"\xe0\x80\xaf", 3));  /* overlong */
    CHECK(!imgw_utf8_valid((const uint8_t *)"\xed\xa0\x80", 3));  /* surrogate */
    CHECK(!imgw_utf8_valid((const uint8_t *)"\xf4\x90\x80\x80", 4)); /* >10FFFF */
    CHECK(!imgw_utf8_valid((const uint8_t *)"a\x80", 2));         /* stray */
    CHECK(!imgw_utf8_valid((const uint8_t *)"\xce\xba\xe1\xbd", 4));
}

TEST(accept_key)
{
    char out[29];
    /* RFC 6455 section 1.3's example. */
    CHECK_EQ_INT(imgw__http_accept_key("dGhlIHNhbXBsZSBub25jZQ==", 24, out), 0);
    CHECK_EQ_STR(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    CHECK_EQ_INT(imgw__http_accept_key(" dGhlIHNhbXBsZSBub25jZQ== ", 26, out),
                 0);
    CHECK(imgw__http_accept_key("dGhlIHNhbXBsZSBub25jZQ", 22, out) != 0);
    CHECK(imgw__http_accept_key("dGhlIHNhbXBsZSBub25jZQ=!", 24, out) != 0);
    /* 24 characters of base64 that decode to 17 bytes are refused. */
    CHECK(imgw__http_accept_key("AAAAAAAAAAAAAAAAAAAAAAAA", 24, out) != 0);
    CHECK(imgw__http_accept_key("", 0, out) != 0);
}

int
main(void)
{
    RUN(header_lengths);
    RUN(utf8);
    RUN(accept_key);
    TEST_DONE();
}
