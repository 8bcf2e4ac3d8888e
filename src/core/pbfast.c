/*
 * pbfast.c: the hot messages read and written by hand (see pbfast.h).
 *
 * The profile of a 1:1 relay (issue 14) had nanopb's generic walk
 * (load_descriptor_values, pb_field_iter_*, pb_check_proto3_default_value,
 * the ~10 KB memset of a SendMessageRequest's defaults) at about a third
 * of imgw's user-space instructions per message. The wire format of these
 * four messages is small enough to write out: single-byte tags, varints,
 * length-delimited strings. Anything outside that shape is left to nanopb,
 * so there is one definition of the edge cases (nanopb's).
 */
#include "pbfast.h"

#include <string.h>

/* Wire types. */
#define PBF_VARINT 0
#define PBF_LEN 2

/* Reads a varint at *p (< end) into *v; at most 10 bytes, the tenth
 * holding one bit, as nanopb requires. Returns 0 or -1. */
static int
pbf_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    const uint8_t *q = *p;
    uint64_t r = 0;
    unsigned shift = 0;

    while (q < end) {
        uint8_t b = *q++;

        if (shift == 63 && b > 1)
            return -1;
        r |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = r;
            *p = q;
            return 0;
        }
        shift += 7;
        if (shift > 63)
            return -1;
    }
    return -1;
}

/* int32 / enum: nanopb decodes the varint as int64 and refuses values
 * that do not survive the cast. */
static int
pbf_int32(const uint8_t **p, const uint8_t *end, int32_t *out)
{
    uint64_t v;
    int64_t s;

    if (pbf_varint(p, end, &v) != 0)
        return -1;
    s = (int64_t)v;
    if (s < INT32_MIN || s > INT32_MAX)
        return -1;
    *out = (int32_t)s;
    return 0;
}

/* A length-delimited value: its bytes at *val, length *len, within end. */
static int
pbf_len(const uint8_t **p, const uint8_t *end, const uint8_t **val,
        size_t *len)
{
    uint64_t v;

    if (pbf_varint(p, end, &v) != 0 || v > (uint64_t)(end - *p))
        return -1;
    *val = *p;
    *len = (size_t)v;
    *p += v;
    return 0;
}

/* A string into char[size]: nanopb refuses size or more bytes. */
static int
pbf_str(const uint8_t **p, const uint8_t *end, char *dst, size_t size)
{
    const uint8_t *v;
    size_t n;

    if (pbf_len(p, end, &v, &n) != 0 || n + 1 > size)
        return -1;
    memcpy(dst, v, n);
    dst[n] = '\0';
    return 0;
}

int
imgw_pbfast_decode_env(const uint8_t *p, size_t n, im_WebSocketMessage *env,
                       imgw_slice_t *body)
{
    const uint8_t *end;
    uint64_t v;

    env->command = 0;
    env->sequence = 0;
    env->timestamp = 0;
    body->ptr = NULL;
    body->len = 0;
    if (p == NULL)
        return n == 0 ? 0 : IMGW_PBFAST_NOT_MINE;
    end = p + n;
    while (p < end) {
        uint8_t tag = *p++;

        switch (tag) {
        case (1 << 3) | PBF_VARINT:
            /* An enum without negative values: nanopb reads it unsigned,
             * so only 0..INT32_MAX mean the same to both. */
            if (pbf_varint(&p, end, &v) != 0 || v > INT32_MAX)
                return IMGW_PBFAST_NOT_MINE;
            env->command = (im_CommandType)v;
            break;
        case (2 << 3) | PBF_VARINT:
            if (pbf_varint(&p, end, &v) != 0 || v > UINT32_MAX)
                return IMGW_PBFAST_NOT_MINE;
            env->sequence = (uint32_t)v;
            break;
        case (3 << 3) | PBF_LEN:
            if (pbf_len(&p, end, &body->ptr, &body->len) != 0)
                return IMGW_PBFAST_NOT_MINE;
            break;
        case (4 << 3) | PBF_VARINT:
            if (pbf_varint(&p, end, &v) != 0)
                return IMGW_PBFAST_NOT_MINE;
            env->timestamp = (int64_t)v;
            break;
        default:
            return IMGW_PBFAST_NOT_MINE;
        }
    }
    return 0;
}

int
imgw_pbfast_decode_send(const uint8_t *p, size_t n, size_t content_max,
                        im_SendMessageRequest *m, imgw_slice_t *content)
{
    const uint8_t *end;
    uint64_t v;

    m->client_msg_id[0] = '\0';
    m->conversation_id[0] = '\0';
    m->sender_id[0] = '\0';
    m->receiver_id[0] = '\0';
    m->group_id[0] = '\0';
    m->message_type = 0;
    m->send_time = 0;
    m->extra_count = 0;
    content->ptr = NULL;
    content->len = 0;
    if (p == NULL)
        return n == 0 ? 0 : IMGW_PBFAST_NOT_MINE;
    end = p + n;
    while (p < end) {
        uint8_t tag = *p++;
        int r;

        switch (tag) {
        case (1 << 3) | PBF_LEN:
            r = pbf_str(&p, end, m->client_msg_id, sizeof(m->client_msg_id));
            break;
        case (2 << 3) | PBF_LEN:
            r = pbf_str(&p, end, m->conversation_id,
                        sizeof(m->conversation_id));
            break;
        case (3 << 3) | PBF_LEN:
            r = pbf_str(&p, end, m->sender_id, sizeof(m->sender_id));
            break;
        case (4 << 3) | PBF_LEN:
            r = pbf_str(&p, end, m->receiver_id, sizeof(m->receiver_id));
            break;
        case (5 << 3) | PBF_LEN:
            r = pbf_str(&p, end, m->group_id, sizeof(m->group_id));
            break;
        case (6 << 3) | PBF_VARINT:
            r = pbf_int32(&p, end, &m->message_type);
            break;
        case (7 << 3) | PBF_LEN:
            r = pbf_len(&p, end, &content->ptr, &content->len);
            if (r == 0 && content->len > content_max)
                r = -1;
            break;
        case (8 << 3) | PBF_VARINT:
            r = pbf_varint(&p, end, &v);
            if (r == 0)
                m->send_time = (int64_t)v;
            break;
        default:
            r = -1;
            break;
        }
        if (r != 0) {
            content->ptr = NULL;
            content->len = 0;
            return IMGW_PBFAST_NOT_MINE;
        }
    }
    return 0;
}

/* ---- encoding ---------------------------------------------------------- */

static uint8_t *
pbf_put_varint(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

/* Tag, length and bytes; nothing for an empty value (proto3). */
static uint8_t *
pbf_put_bytes(uint8_t *p, uint8_t tag, const void *s, size_t n)
{
    if (n == 0)
        return p;
    *p++ = tag;
    p = pbf_put_varint(p, n);
    memcpy(p, s, n);
    return p + n;
}

/* A varint field; nothing for 0. Signed values go out sign-extended to 64
 * bits (10 bytes when negative), as nanopb and protobuf write them. */
static uint8_t *
pbf_put_int(uint8_t *p, uint8_t tag, int64_t v)
{
    if (v == 0)
        return p;
    *p++ = tag;
    return pbf_put_varint(p, (uint64_t)v);
}

/* The length of a NUL-terminated char[size], or -1 when it has no NUL
 * (nanopb: "unterminated string"). */
#define PBF_STRLEN(s) pbf_strlen((s), sizeof(s))
static ssize_t
pbf_strlen(const char *s, size_t size)
{
    size_t n = strnlen(s, size);

    return n == size ? -1 : (ssize_t)n;
}

/* Worst case per string field: tag + 2-byte length; per varint field:
 * tag + 10. */
#define PBF_STR_OVH 3
#define PBF_INT_MAX 11

ssize_t
imgw_pbfast_encode_send_rsp(const im_SendMessageResponse *r, uint8_t *out,
                            size_t cap)
{
    ssize_t em = PBF_STRLEN(r->error_msg), mi = PBF_STRLEN(r->message_id);
    uint8_t *p = out;

    /* error_code: an enum nanopb writes unsigned; only >= 0 is common. */
    if (em < 0 || mi < 0 || r->error_code < 0 ||
        cap < (size_t)em + (size_t)mi + 2 * PBF_STR_OVH + 3 * PBF_INT_MAX)
        return -1;
    p = pbf_put_int(p, (1 << 3) | PBF_VARINT, (int64_t)r->error_code);
    p = pbf_put_bytes(p, (2 << 3) | PBF_LEN, r->error_msg, (size_t)em);
    p = pbf_put_bytes(p, (3 << 3) | PBF_LEN, r->message_id, (size_t)mi);
    p = pbf_put_int(p, (4 << 3) | PBF_VARINT, r->seq);
    p = pbf_put_int(p, (5 << 3) | PBF_VARINT, r->server_time);
    return p - out;
}

ssize_t
imgw_pbfast_encode_push(const im_PushMessage *pm, const imgw_slice_t *content,
                        uint8_t *out, size_t cap)
{
    ssize_t len[6];
    const char *s[6] = {pm->message_id,  pm->client_msg_id,
                        pm->conversation_id, pm->sender_id,
                        pm->receiver_id, pm->group_id};
    size_t need = 4 * PBF_INT_MAX + 1 + 10, cl, i;
    uint8_t *p = out;

    if (pm->extra_count != 0)
        return -1;
    len[0] = PBF_STRLEN(pm->message_id);
    len[1] = PBF_STRLEN(pm->client_msg_id);
    len[2] = PBF_STRLEN(pm->conversation_id);
    len[3] = PBF_STRLEN(pm->sender_id);
    len[4] = PBF_STRLEN(pm->receiver_id);
    len[5] = PBF_STRLEN(pm->group_id);
    for (i = 0; i < 6; i++) {
        if (len[i] < 0)
            return -1;
        need += (size_t)len[i] + PBF_STR_OVH;
    }
    cl = content ? content->len : 0;
    if (cap < need || cap - need < cl)
        return -1;
    for (i = 0; i < 6; i++)
        p = pbf_put_bytes(p, (uint8_t)(((i + 1) << 3) | PBF_LEN), s[i],
                          (size_t)len[i]);
    p = pbf_put_int(p, (7 << 3) | PBF_VARINT, pm->message_type);
    if (cl != 0)
        p = pbf_put_bytes(p, (8 << 3) | PBF_LEN, content->ptr, cl);
    p = pbf_put_int(p, (9 << 3) | PBF_VARINT, pm->send_time);
    p = pbf_put_int(p, (10 << 3) | PBF_VARINT, pm->server_time);
    p = pbf_put_int(p, (11 << 3) | PBF_VARINT, pm->seq);
    return p - out;
}
