/*
 * test_pbfast: the direct protobuf reader/writer (src/core/pbfast.c)
 * cross-checked against nanopb (test/fuzz/pbfast_check.h) on generated
 * frames: every field, edge values, unknown fields, map entries, cut and
 * flipped bytes; plus the codec-level result on the shapes pbfast leaves
 * to nanopb.
 */
#include <stdint.h>
#include <string.h>

#include "codec.h"
#include "pbfast_check.h"
#include "test.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint32_t
rnd(uint32_t n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng % n);
}

static size_t
put_varint(uint8_t *p, uint64_t v)
{
    size_t n = 0;

    while (v >= 0x80) {
        p[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (uint8_t)v;
    return n;
}

static uint64_t
edge_value(void)
{
    static const uint64_t v[] = {0,          1,          127,
                                 128,        0x7fffffff, 0x80000000ull,
                                 0xffffffff, 0x100000000ull, UINT64_MAX,
                                 (uint64_t)INT64_MIN, (uint64_t)-1 << 31,
                                 (uint64_t)-5};
    return rnd(3) ? rnd(100000) : v[rnd(sizeof(v) / sizeof(v[0]))];
}

/* A SendMessageRequest-like body: fields 1-8 (sometimes with the wrong
 * wire type), extra (10) now and then, unknown fields, strings up to and
 * over their bounds. */
static size_t
gen_body(uint8_t *p, size_t cap)
{
    size_t n = 0;
    int k = (int)rnd(10);

    for (int i = 0; i < k && n + 600 < cap; i++) {
        uint32_t f = 1 + rnd(12);
        int len_type = (f <= 5 || f == 7 || f == 10);

        if (rnd(20) == 0)
            len_type = !len_type;
        p[n++] = (uint8_t)((f << 3) | (len_type ? 2 : 0));
        if (len_type) {
            size_t l = rnd(8) ? rnd(40) : rnd(300);

            if (f == 10 && rnd(2)) { /* a well-formed map entry */
                uint8_t e[80];
                size_t el = 0, kl = rnd(10), vl = rnd(20);
                e[el++] = 0x0a;
                e[el++] = (uint8_t)kl;
                for (size_t j = 0; j < kl; j++)
                    e[el++] = (uint8_t)('a' + rnd(26));
                e[el++] = 0x12;
                e[el++] = (uint8_t)vl;
                for (size_t j = 0; j < vl; j++)
                    e[el++] = (uint8_t)('A' + rnd(26));
                n += put_varint(p + n, el);
                memcpy(p + n, e, el);
                n += el;
                continue;
            }
            n += put_varint(p + n, l);
            for (size_t j = 0; j < l; j++)
                p[n++] = (uint8_t)(rnd(10) ? 'a' + rnd(26) : rnd(256));
        } else {
            n += put_varint(p + n, edge_value());
        }
    }
    return n;
}

static size_t
gen_env(uint8_t *p, size_t cap, const uint8_t *body, size_t bl)
{
    size_t n = 0;

    if (rnd(4)) {
        p[n++] = 0x08;
        n += put_varint(p + n, rnd(4) ? 200 : edge_value());
    }
    if (rnd(2)) {
        p[n++] = 0x10;
        n += put_varint(p + n, edge_value());
    }
    if (rnd(8)) {
        p[n++] = 0x1a;
        n += put_varint(p + n, bl);
        memcpy(p + n, body, bl);
        n += bl;
    }
    if (rnd(2)) {
        p[n++] = 0x20;
        n += put_varint(p + n, edge_value());
    }
    if (rnd(30) == 0 && n + 2 < cap) { /* unknown field */
        p[n++] = 0x28;
        p[n++] = 1;
    }
    return n;
}

TEST(cross_check_generated)
{
    static uint8_t body[8192], frame[9000];
    int bad = 0, accepted = 0, iters = 60000;

    for (int i = 0; i < iters; i++) {
        size_t bl = gen_body(body, sizeof(body));
        size_t fl = gen_env(frame, sizeof(frame), body, bl);

        if (rnd(5) == 0 && bl > 0) /* cut */
            bl = rnd((uint32_t)bl);
        if (rnd(5) == 0 && bl > 0) /* flip a byte */
            body[rnd((uint32_t)bl)] ^= (uint8_t)(1 + rnd(255));
        if (pbfast_check(body, bl, &accepted) != 0 ||
            pbfast_check(frame, fl, &accepted) != 0)
            bad++;
    }
    printf("  %d inputs, %d fast paths taken\n", 2 * iters, accepted);
    CHECK_EQ_INT(bad, 0);
    CHECK(accepted > iters / 2);
}

/* A typical send goes the fast way and comes out as the codec's result. */
TEST(codec_send_frame)
{
    static imgw_msg_in_t in;
    uint8_t body[256], frame[300];
    size_t bl = 0, fl = 0;
    const char *cmid = "c-1", *to = "bob";

    body[bl++] = 0x0a;
    body[bl++] = (uint8_t)strlen(cmid);
    memcpy(body + bl, cmid, strlen(cmid));
    bl += strlen(cmid);
    body[bl++] = 0x22;
    body[bl++] = (uint8_t)strlen(to);
    memcpy(body + bl, to, strlen(to));
    bl += strlen(to);
    body[bl++] = 0x3a;
    body[bl++] = 2;
    body[bl++] = 'h';
    body[bl++] = 'i';
    frame[fl++] = 0x08;
    fl += put_varint(frame + fl, 200);
    frame[fl++] = 0x10;
    frame[fl++] = 7;
    frame[fl++] = 0x1a;
    frame[fl++] = (uint8_t)bl;
    memcpy(frame + fl, body, bl);
    fl += bl;

    CHECK_EQ_INT(pbfast_check(frame, fl, NULL), 0);
    CHECK_EQ_INT(imgw_codec_decode(IMGW_CODEC_PB, frame, fl, &in, NULL, 0), 0);
    CHECK_EQ_INT(in.command, 200);
    CHECK_EQ_INT(in.sequence, 7);
    CHECK_EQ_STR(in.u.send.client_msg_id, "c-1");
    CHECK_EQ_STR(in.u.send.receiver_id, "bob");
    CHECK_EQ_INT(in.content.len, 2);
    CHECK(in.content.ptr == frame + fl - 2);

    /* extra entries are nanopb's: the codec still reads them */
    body[bl++] = 0x52;
    body[bl++] = 6;
    memcpy(body + bl, "\x0a\x01k\x12\x01v", 6);
    bl += 6;
    fl = 0;
    frame[fl++] = 0x08;
    fl += put_varint(frame + fl, 200);
    frame[fl++] = 0x1a;
    frame[fl++] = (uint8_t)bl;
    memcpy(frame + fl, body, bl);
    fl += bl;
    CHECK_EQ_INT(imgw_pbfast_decode_send(body, bl, 1 << 20, &in.u.send,
                                         &in.content),
                 IMGW_PBFAST_NOT_MINE);
    CHECK_EQ_INT(imgw_codec_decode(IMGW_CODEC_PB, frame, fl, &in, NULL, 0), 0);
    CHECK_EQ_INT(in.u.send.extra_count, 1);
    CHECK_EQ_STR(in.u.send.extra[0].key, "k");
    CHECK_EQ_STR(in.u.send.receiver_id, "bob");
    CHECK_EQ_INT(in.content.len, 2);

    /* a string one byte over its bound: both refuse */
    memset(body, 0, sizeof(body));
    body[0] = 0x0a;
    body[1] = 128;
    body[2] = 1;
    memset(body + 3, 'x', 128);
    CHECK_EQ_INT(imgw_pbfast_decode_send(body, 131, 1 << 20, &in.u.send,
                                         &in.content),
                 IMGW_PBFAST_NOT_MINE);
    CHECK_EQ_INT(pbfast_check(body, 131, NULL), 0);
}

/* The encoders write exactly nanopb's bytes for a push and a response. */
TEST(encode_push_and_response)
{
    static im_PushMessage pm;
    static uint8_t a[2048], b[2048];
    im_SendMessageResponse r;
    imgw_slice_t content = {(const uint8_t *)"hello", 5};
    ssize_t n;
    pb_ostream_t os;

    memset(&pm, 0, sizeof(pm));
    strcpy(pm.message_id, "42");
    strcpy(pm.client_msg_id, "c1");
    strcpy(pm.sender_id, "alice");
    strcpy(pm.receiver_id, "bob");
    strcpy(pm.conversation_id, "alice:bob");
    pm.message_type = -3;
    pm.send_time = 1700000000000;
    pm.server_time = 1700000000001;
    pm.content.funcs.encode = pbc_bytes_cb;
    pm.content.arg = &content;
    n = imgw_pbfast_encode_push(&pm, &content, a, sizeof(a));
    os = pb_ostream_from_buffer(b, sizeof(b));
    CHECK(pb_encode(&os, &im_PushMessage_msg, &pm));
    CHECK_EQ_INT(n, (ssize_t)os.bytes_written);
    CHECK(n > 0 && memcmp(a, b, (size_t)n) == 0);
    CHECK_EQ_INT(imgw_pbfast_encode_push(&pm, &content, a, 40), -1);
    pm.extra_count = 1;
    CHECK_EQ_INT(imgw_pbfast_encode_push(&pm, &content, a, sizeof(a)), -1);

    memset(&r, 0, sizeof(r));
    r.error_code = im_ErrorCode_ERR_SEND_TOO_FAST;
    strcpy(r.error_msg, "slow down");
    strcpy(r.message_id, "77");
    r.seq = -1;
    r.server_time = 5;
    n = imgw_pbfast_encode_send_rsp(&r, a, sizeof(a));
    os = pb_ostream_from_buffer(b, sizeof(b));
    CHECK(pb_encode(&os, &im_SendMessageResponse_msg, &r));
    CHECK_EQ_INT(n, (ssize_t)os.bytes_written);
    CHECK(n > 0 && memcmp(a, b, (size_t)n) == 0);
    memset(r.message_id, 'x', sizeof(r.message_id)); /* no NUL */
    CHECK_EQ_INT(imgw_pbfast_encode_send_rsp(&r, a, sizeof(a)), -1);
}

int
main(void)
{
    RUN(cross_check_generated);
    RUN(codec_send_frame);
    RUN(encode_push_and_response);
    TEST_DONE();
}
