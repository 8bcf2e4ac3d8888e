/*
 * fuzz_codec.h: what the server does with a decoded SendMessageRequest,
 * shared by fuzz_pb and fuzz_json: copy its fields into a PushMessage
 * (as msg.c does) and encode that in both codecs, so that peer-chosen
 * strings and content bytes go through the protobuf encoder and the JSON
 * writer's escaping.
 */
#ifndef IMGW_FUZZ_CODEC_H
#define IMGW_FUZZ_CODEC_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "codec.h"
#include "err.h"

/* Strict UTF-8 (RFC 3629), as a WebSocket text frame must be. */
static int
fuzz_utf8_ok(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t more;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf)
            more = 1, cp = c & 0x1f;
        else if (c >= 0xe0 && c <= 0xef)
            more = 2, cp = c & 0x0f;
        else if (c >= 0xf0 && c <= 0xf4)
            more = 3, cp = c & 0x07;
        else
            return 0;
        if (n - i - 1 < more)
            return 0;
        for (size_t k = 1; k <= more; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((more == 2 && cp < 0x800) || (more == 3 && cp < 0x10000) ||
            cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += more + 1;
    }
    return 1;
}

/*
 * A JSON frame the server sends (n >= 0 = its length) must be one valid
 * JSON object in valid UTF-8: codec.h promises a valid text frame whatever
 * bytes were stored.
 */
static void
fuzz_json_frame_ok(const uint8_t *p, ssize_t n)
{
    if (n < 0)
        return;
    if (!fuzz_utf8_ok(p, (size_t)n)) {
        fprintf(stderr, "JSON frame is not UTF-8\n");
        abort();
    }
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts((const char *)p, (size_t)n, &end, 0);
    if (!cJSON_IsObject(j) || end != (const char *)p + n) {
        fprintf(stderr, "JSON frame does not parse: %.*s\n",
                (int)(n > 300 ? 300 : n), (const char *)p);
        abort();
    }
    cJSON_Delete(j);
}

static void
fuzz_check_len(ssize_t n, size_t cap)
{
    if ((n >= 0 && (size_t)n > cap) ||
        (n < 0 && n != IMGW_ETOOBIG && n != IMGW_EINVAL && n != IMGW_EDECODE &&
         n != IMGW_EUNKNOWNCMD)) {
        fprintf(stderr, "encode returned %zd (cap %zu)\n", n, cap);
        abort();
    }
}

/* The fan-out JSON frame: prefix + decimal seq + "}}" (codec.h). */
static void
fuzz_push_prefix_ok(const uint8_t *blob, size_t len, uint8_t *out, size_t cap)
{
    ssize_t n =
        imgw_codec_push_json_prefix(blob, len, 1700000000000, out, cap - 32);
    fuzz_check_len(n, cap - 32);
    if (n < 0)
        return;
    int k = snprintf((char *)out + n, 32, "%lld}}", (long long)INT64_MIN);
    fuzz_json_frame_ok(out, n + k);
}

static void
fuzz_push_from_send(const imgw_msg_in_t *in, uint8_t *out, size_t cap)
{
    static im_PushMessage pm;
    imgw_slice_t content = in->content;
    const im_SendMessageRequest *s = &in->u.send;

    if (in->command != im_CommandType_CMD_SEND_MSG_REQ)
        return;
    memset(&pm, 0, sizeof(pm));
    snprintf(pm.message_id, sizeof(pm.message_id), "%s", "0123456789abcdef");
    memcpy(pm.client_msg_id, s->client_msg_id, sizeof(pm.client_msg_id));
    memcpy(pm.conversation_id, s->conversation_id, sizeof(pm.conversation_id));
    memcpy(pm.sender_id, s->sender_id, sizeof(pm.sender_id));
    memcpy(pm.receiver_id, s->receiver_id, sizeof(pm.receiver_id));
    memcpy(pm.group_id, s->group_id, sizeof(pm.group_id));
    pm.message_type = s->message_type;
    pm.send_time = s->send_time;
    pm.server_time = 1700000000000;
    pm.seq = 42;
    pm.extra_count = s->extra_count;
    if (pm.extra_count > 16)
        abort(); /* nanopb's bound from imgw.options */
    for (pb_size_t i = 0; i < s->extra_count; i++) {
        memcpy(pm.extra[i].key, s->extra[i].key, sizeof(pm.extra[i].key));
        memcpy(pm.extra[i].value, s->extra[i].value, sizeof(pm.extra[i].value));
    }
    imgw_codec_set_bytes(&pm.content, &content);
    fuzz_check_len(imgw_codec_encode(IMGW_CODEC_PB, im_CommandType_CMD_PUSH_MSG,
                                     1, 1, &pm, out, cap),
                   cap);
    ssize_t jl = imgw_codec_encode(IMGW_CODEC_JSON, im_CommandType_CMD_PUSH_MSG,
                                   1, 1, &pm, out, cap);
    fuzz_check_len(jl, cap);
    fuzz_json_frame_ok(out, jl);
    /* The stored blob and what fan-out makes of it. */
    ssize_t bl = imgw_codec_encode_pb_body(im_CommandType_CMD_PUSH_MSG, &pm,
                                           out, cap / 2);
    fuzz_check_len(bl, cap / 2);
    if (bl > 0) {
        im_PushMessage back;
        imgw_slice_t bc;
        if (imgw_codec_decode_push(out, (size_t)bl, &back, &bc) != 0 ||
            bc.len != content.len ||
            (bc.len && memcmp(bc.ptr, content.ptr, bc.len) != 0) ||
            strcmp(back.sender_id, pm.sender_id) != 0) {
            fprintf(stderr, "stored blob does not round-trip\n");
            abort();
        }
        fuzz_push_prefix_ok(out, (size_t)bl, out + cap / 2, cap / 2);
    }
}

#endif
