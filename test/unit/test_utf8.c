/*
 * test_utf8.c: unit tests for src/base/utf8.c, the one UTF-8 validator of
 * the WebSocket layer, both codecs and JWT verification.
 *
 * The validator is compared with a reference written differently here
 * (decode the code point, then judge it), exhaustively over every 1-, 2-
 * and 3-byte input and every 4-byte input with a valid-looking lead.
 */
#include "json.h"
#include "utf8.h"
#include "test.h"

#include <stdint.h>
#include <string.h>

/* Reference: 1 when p[0..n) is well-formed UTF-8 (RFC 3629). */
static int
ref_valid(const uint8_t *p, size_t n)
{
    size_t i = 0;

    while (i < n) {
        uint32_t cp, min;
        size_t len, k;

        if (p[i] < 0x80) {
            i++;
            continue;
        }
        if ((p[i] & 0xe0) == 0xc0) {
            len = 2, cp = p[i] & 0x1f, min = 0x80;
        } else if ((p[i] & 0xf0) == 0xe0) {
            len = 3, cp = p[i] & 0x0f, min = 0x800;
        } else if ((p[i] & 0xf8) == 0xf0) {
            len = 4, cp = p[i] & 0x07, min = 0x10000;
        } else {
            return 0;
        }
        if (n - i < len)
            return 0;
        for (k = 1; k < len; k++) {
            if ((p[i + k] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (p[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += len;
    }
    return 1;
}

TEST(known_cases)
{
    printf("  checks: ASCII, 2/3/4-byte text, cut, overlong, surrogate, "
           "above U+10FFFF, stray continuation\n");
    CHECK(imgw_utf8_valid(NULL, 0));
    CHECK(imgw_utf8_valid((const uint8_t *)"", 0));
    CHECK(imgw_utf8_valid((const uint8_t *)"hello", 5));
    CHECK(imgw_utf8_valid((const uint8_t *)"a\0b", 3)); /* U+0000 is UTF-8 */
    CHECK(imgw_utf8_valid((const uint8_t *)"h\xc3\xa9llo", 6));
    CHECK(imgw_utf8_valid((const uint8_t *)"\xe4\xbd\xa0\xe5\xa5\xbd", 6));
    CHECK(imgw_utf8_valid((const uint8_t *)"\xf0\x9f\x98\x80", 4));
    CHECK(imgw_utf8_valid((const uint8_t *)"\xf4\x8f\xbf\xbf", 4));
    CHECK(imgw_utf8_valid((const uint8_t *)"\xef\xbf\xbf", 3));
    CHECK(!imgw_utf8_valid((const uint8_t *)"\xff", 1));
    CHECK(!imgw_utf8_valid((const uint8_t *)"\xfe", 1));
    CHECK(!imgw_utf8_valid((const uint8_t *)"\xc3", 1));
    CHECK(!imgw_utf8_valid((const uint8_t *)"\xe4\xbd", 2));
    CHECK(!imgw_utf8_valid((const uint8_t *)"\xf0\x9f\x98", 3));
    CHECK(!imgw_utf8_valid((const uint8_t *)"\xc0\xaf", 2));
    CHECK(!imgw_utf8_valid((const uint8_t *)"\xc1\xbf", 2));
    CHECK(!imgw_utf8_valid((const uint8_t *)"\xe0\x80\xaf", 3));
    CHECK(!imgw_utf8_valid((const uint8_t *)"\xf0\x8f\xbf\xbf", 4));
    CHECK(!imgw_utf8_valid((const uint8_t *)"\xed\xa0\x80", 3));
    CHECK(!imgw_utf8_valid((const uint8_t *)"\xed\xbf\xbf", 3));
    CHECK(!imgw_utf8_valid((const uint8_t *)"\xf4\x90\x80\x80", 4));
    CHECK(!imgw_utf8_valid((const uint8_t *)"\xf5\x80\x80\x80", 4));
    CHECK(!imgw_utf8_valid((const uint8_t *)"a\x80", 2));
    CHECK(!imgw_utf8_valid((const uint8_t *)"\xce\xba\xe1\xbd", 4));
    CHECK_EQ_INT(imgw_utf8_seq_len((const uint8_t *)"\xc3\xa9", 2), 2);
    CHECK_EQ_INT(imgw_utf8_seq_len((const uint8_t *)"\xe2\x82\xac", 3), 3);
    CHECK_EQ_INT(imgw_utf8_seq_len((const uint8_t *)"\xf0\x9f\x98\x80", 4),
                 4);
    CHECK_EQ_INT(imgw_utf8_seq_len((const uint8_t *)"\xe2\x82\xac", 2), 0);
    CHECK_EQ_INT(imgw_utf8_seq_len((const uint8_t *)"\x80", 1), 0);
}

TEST(exhaustive_vs_reference)
{
    uint8_t b[4];
    unsigned long bad = 0, valid = 0, a, c, d, e;

    printf("  checks: every 1-, 2- and 3-byte input and every 4-byte input "
           "with lead F0..F7 agree with a reference decoder\n");
    for (a = 0; a < 256; a++) {
        b[0] = (uint8_t)a;
        bad += imgw_utf8_valid(b, 1) != ref_valid(b, 1);
        for (c = 0; c < 256; c++) {
            b[1] = (uint8_t)c;
            bad += imgw_utf8_valid(b, 2) != ref_valid(b, 2);
            for (d = 0; d < 256; d++) {
                b[2] = (uint8_t)d;
                valid += ref_valid(b, 3);
                bad += imgw_utf8_valid(b, 3) != ref_valid(b, 3);
            }
        }
    }
    for (a = 0xf0; a < 0xf8; a++) {
        b[0] = (uint8_t)a;
        for (c = 0x80; c < 0xc0; c++) {
            b[1] = (uint8_t)c;
            for (d = 0x80; d < 0xc0; d++) {
                b[2] = (uint8_t)d;
                for (e = 0; e < 256; e++) {
                    b[3] = (uint8_t)e;
                    bad += imgw_utf8_valid(b, 4) != ref_valid(b, 4);
                }
            }
        }
    }
    printf("  %lu valid 3-byte inputs\n", valid);
    CHECK_EQ_INT(bad, 0);
}

TEST(ascii_fast_path)
{
    uint8_t buf[40];
    size_t pos, n;
    int bad = 0;

    printf("  checks: one bad byte at every position of ASCII runs of "
           "every length up to 40 is found (8-byte word steps)\n");
    for (n = 1; n <= sizeof(buf); n++) {
        memset(buf, 'a', n);
        bad += !imgw_utf8_valid(buf, n);
        for (pos = 0; pos < n; pos++) {
            memset(buf, 'a', n);
            buf[pos] = 0xff;
            bad += imgw_utf8_valid(buf, n);
            /* A valid 2-byte sequence that ends the buffer. */
            if (pos + 2 == n) {
                buf[pos] = 0xc3;
                buf[pos + 1] = 0xa9;
                bad += !imgw_utf8_valid(buf, n);
                buf[pos + 1] = 'a'; /* now cut: lead without continuation */
                bad += imgw_utf8_valid(buf, n);
            }
        }
    }
    CHECK_EQ_INT(bad, 0);
}

TEST(cstr_same_as_strnlen_then_valid)
{
    /* Every 3-byte prefix (all 2^24) followed by "ab" and a NUL inside a
     * 6-byte field, and the same field without a NUL: the one-pass
     * string check must agree with strnlen + imgw_utf8_valid. */
    char f[6];
    unsigned long bad = 0, a;

    printf("  checks: imgw_utf8_valid_cstr == imgw_utf8_valid(strnlen) for "
           "every 3-byte head, with and without a terminating NUL\n");
    for (a = 0; a < (1ul << 24); a++) {
        f[0] = (char)(a & 0xff);
        f[1] = (char)((a >> 8) & 0xff);
        f[2] = (char)(a >> 16);
        f[3] = 'a';
        f[4] = 'b';
        f[5] = '\0';
        bad += imgw_utf8_valid_cstr(f, sizeof(f)) !=
               imgw_utf8_valid((const uint8_t *)f, strnlen(f, sizeof(f)));
        f[5] = (char)0xc3; /* no NUL: the whole field, cut sequence */
        bad += imgw_utf8_valid_cstr(f, sizeof(f)) !=
               imgw_utf8_valid((const uint8_t *)f, strnlen(f, sizeof(f)));
    }
    CHECK_EQ_INT(bad, 0);
}

/* base's JSON escaper: quotes, backslashes, controls, bad bytes. */
static void
test_json_escape(void)
{
    const char *in = "body must be {\"members\":[a\\b]}\n\x01\xff\xc3\xa9";
    const char *want =
        "body must be {\\\"members\\\":[a\\\\b]}\\n\\u0001\xef\xbf\xbd\xc3\xa9";
    uint8_t out[128];
    size_t n = imgw_json_escape(NULL, 0, (const uint8_t *)in, strlen(in));
    CHECK_EQ_INT((int)n, (int)strlen(want));
    /* too small: nothing written, the length still told */
    memset(out, 'x', sizeof(out));
    CHECK_EQ_INT((int)imgw_json_escape(out, n - 1, (const uint8_t *)in,
                                       strlen(in)),
                 (int)n);
    CHECK(out[0] == 'x');
    CHECK_EQ_INT((int)imgw_json_escape(out, sizeof(out), (const uint8_t *)in,
                                       strlen(in)),
                 (int)n);
    CHECK(memcmp(out, want, n) == 0);
    CHECK_EQ_INT((int)imgw_json_escape(out, 0, NULL, 0), 0);
}

int
main(void)
{
    RUN(json_escape);
    RUN(known_cases);
    RUN(exhaustive_vs_reference);
    RUN(ascii_fast_path);
    RUN(cstr_same_as_strnlen_then_valid);
    TEST_DONE();
}
