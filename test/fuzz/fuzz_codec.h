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
#include <pb_common.h>
#include <pb_decode.h>

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
 * Every static string of a nanopb struct (repeated ones and those inside
 * submessages such as map entries included) is UTF-8. Walks nanopb's own
 * field iterator, not the codec's tables, so it checks the codec against
 * the library. Callback fields (content, sync messages) are skipped.
 */
static int
fuzz_strings_ok(const pb_msgdesc_t *desc, const void *st)
{
    pb_field_iter_t it;

    if (!pb_field_iter_begin_const(&it, desc, st))
        return 1; /* no fields */
    do {
        pb_type_t t = it.type;
        size_t count = 1;

        if (PB_ATYPE(t) != PB_ATYPE_STATIC)
            continue;
        if (PB_HTYPE(t) == PB_HTYPE_REPEATED)
            count = *(const pb_size_t *)it.pSize;
        for (size_t i = 0; i < count && i < it.array_size; i++) {
            const char *p = (const char *)it.pData + i * it.data_size;
            if (PB_LTYPE(t) == PB_LTYPE_STRING &&
                !fuzz_utf8_ok((const uint8_t *)p, strnlen(p, it.data_size)))
                return 0;
            if (PB_LTYPE_IS_SUBMSG(t) && !fuzz_strings_ok(it.submsg_desc, p))
                return 0;
        }
    } while (pb_field_iter_next(&it));
    return 1;
}

/* The body descriptor of a client->server command, or NULL. */
static const pb_msgdesc_t *
fuzz_c2s_desc(int command)
{
    switch (command) {
    case im_CommandType_CMD_HEARTBEAT_REQ: return &im_HeartbeatRequest_msg;
    case im_CommandType_CMD_AUTH_REQ: return &im_AuthRequest_msg;
    case im_CommandType_CMD_SEND_MSG_REQ: return &im_SendMessageRequest_msg;
    case im_CommandType_CMD_MSG_ACK: return &im_MessageAck_msg;
    case im_CommandType_CMD_REVOKE_MSG_REQ: return &im_RevokeMessageRequest_msg;
    case im_CommandType_CMD_SYNC_REQ: return &im_SyncRequest_msg;
    case im_CommandType_CMD_READ_RECEIPT_REQ: return &im_ReadReceiptRequest_msg;
    case im_CommandType_CMD_TYPING_STATUS_REQ: return &im_TypingStatusRequest_msg;
    case im_CommandType_CMD_CONVERSATION_LIST_REQ: return &im_ConversationListRequest_msg;
    case im_CommandType_CMD_CONVERSATION_DELETE_REQ: return &im_ConversationDeleteRequest_msg;
    case im_CommandType_CMD_PRESENCE_REQ: return &im_PresenceRequest_msg;
    case im_CommandType_CMD_PRESENCE_SUB_REQ: return &im_PresenceSubscribeRequest_msg;
    default: return NULL;
    }
}

/*
 * What imgw_codec_decode() returns: one of its codes, and on success every
 * string field of the body is UTF-8 (an invalid one is IMGW_EUTF8, never
 * stored and pushed on to receivers whose decoders would reject it).
 */
static void
fuzz_decoded_ok(int r, const imgw_msg_in_t *in)
{
    if (r != 0 && r != IMGW_EENVELOPE && r != IMGW_EUNKNOWNCMD &&
        r != IMGW_EDECODE && r != IMGW_EUTF8) {
        fprintf(stderr, "decode returned %d\n", r);
        abort();
    }
    if (r != 0)
        return;
    const pb_msgdesc_t *d = fuzz_c2s_desc(in->command);
    if (d == NULL || !fuzz_strings_ok(d, &in->u)) {
        fprintf(stderr, "decoded command %d has a non-UTF-8 string\n",
                in->command);
        abort();
    }
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
         n != IMGW_EUNKNOWNCMD && n != IMGW_EUTF8)) {
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
