/*
 * codec_dispatch.c: codec.h's entry points that pick a codec (see codec.c
 * for the file map): decode and encode a frame, a protobuf body, a
 * downlink's JSON data as a frame in either codec, and the sizing of sync
 * page entries. The top of the codec: it calls codec_pb.c, codec_json.c
 * and codec.c, and nothing calls back up.
 *
 * Threads: any. Every function works on caller memory; there is no global
 * mutable state.
 *
 * Stack: a downlink's body and an exactly sized sync entry take an
 * im_PushMessage-sized struct (~11 KiB) on the stack.
 */
#include "codec_int.h"

#include <string.h>

#include <pb_encode.h>

#include "err.h"

/*
 * codec.h's contract for callback fields is about arg only (a slice for
 * PushMessage.content, entries for SyncResponse.messages); nanopb also
 * needs funcs.encode. A PushMessage prepared with imgw_codec_set_bytes (or
 * filled by imgw_codec_decode_push) and any SyncResponse that went through
 * here before are used as they are; otherwise the body is copied once to
 * set the encoder (imgw__codec_encode_pb_copy), ~11 KiB of memcpy for a push.
 */
static int
codec_needs_copy(int command, const void *body)
{
    if (command == im_CommandType_CMD_PUSH_MSG)
        return ((const im_PushMessage *)body)->content.funcs.encode !=
               imgw__codec_bytes_encode_cb;
    if (command == im_CommandType_CMD_SYNC_RSP) {
        const im_SyncResponse *sr = body;

        return sr->messages.funcs.encode != imgw__codec_entries_encode_cb &&
               sr->messages.funcs.encode != imgw__codec_msgs_json_encode_cb;
    }
    return 0;
}

ssize_t
imgw_codec_encode_pb_body(int command, const void *body, uint8_t *out,
                          size_t cap)
{
    const codec_cmd_t *ci = imgw__codec_cmd_find(command);
    ssize_t n;

    if (ci == NULL || ci->msg == NULL || body == NULL)
        return IMGW_EINVAL;
    if (codec_needs_copy(command, body))
        return imgw__codec_encode_pb_copy(ci, 0, 0, 0, body, out, cap);
    n = imgw__codec_fast_body(command, body, out, cap);
    if (n >= 0)
        return n;
    return imgw__codec_pb_run(ci->msg->desc, body, out, cap);
}

/* =======================================================================
 * Public entry points
 * ======================================================================= */

int
imgw_codec_decode(imgw_codec_t codec, const uint8_t *data, size_t len,
                  imgw_msg_in_t *out, uint8_t *scratch, size_t scratch_cap)
{
    int rc;

    out->command = 0;
    out->sequence = 0;
    out->timestamp = 0;
    out->content.ptr = NULL;
    out->content.len = 0;
    if (data == NULL && len != 0)
        return IMGW_EENVELOPE;
    if (codec == IMGW_CODEC_PB)
        rc = imgw__codec_decode_pb(data, len, out);
    else if (codec == IMGW_CODEC_JSON)
        rc = imgw__codec_decode_json(data, len, out, scratch, scratch_cap);
    else
        return IMGW_EINVAL;
    if (rc == IMGW_EENVELOPE)
        out->sequence = 0;
    return rc;
}

ssize_t
imgw_codec_encode(imgw_codec_t codec, int command, uint32_t sequence,
                  int64_t timestamp, const void *body, uint8_t *out,
                  size_t cap)
{
    const codec_cmd_t *ci = imgw__codec_cmd_find(command);

    if (ci == NULL || ci->dir != CODEC_S2C || body == NULL)
        return IMGW_EINVAL;
    if (codec == IMGW_CODEC_PB) {
        if (codec_needs_copy(command, body))
            return imgw__codec_encode_pb_copy(ci, 1, sequence, timestamp, body,
                                        out, cap);
        return imgw__codec_encode_pb(ci, sequence, timestamp, body, out, cap);
    }
    if (codec == IMGW_CODEC_JSON)
        return imgw__codec_encode_json(ci, sequence, timestamp, body, out, cap);
    return IMGW_EINVAL;
}

/* Every server->client body, for imgw_codec_encode_from_json. */
typedef union codec_s2c_u {
    im_ErrorResponse error;
    im_HeartbeatResponse heartbeat;
    im_AuthResponse auth;
    im_KickPush kick;
    im_SendMessageResponse send;
    im_PushMessage push;
    im_RevokeMessageResponse revoke;
    im_RevokeMessagePush revoke_push;
    im_SyncResponse sync;
    im_ReadReceiptResponse read;
    im_ReadReceiptPush read_push;
    im_TypingStatusPush typing;
    im_ConversationListResponse conv_list;
    im_ConversationDeleteResponse conv_delete;
    im_PresenceResponse presence;
    im_PresenceSubscribeResponse presence_sub;
    im_PresencePush presence_push;
} codec_s2c_t;

ssize_t
imgw_codec_encode_from_json(imgw_codec_t codec, int command,
                            const void *data, int64_t timestamp,
                            uint8_t *out, size_t cap)
{
    const codec_cmd_t *ci = imgw__codec_cmd_find(command);
    imgw_slice_t content;
    codec_s2c_t body;
    codec_jr_t r;
    int rc;

    if (ci == NULL || ci->dir != CODEC_S2C)
        return IMGW_EUNKNOWNCMD;
    if (codec != IMGW_CODEC_PB && codec != IMGW_CODEC_JSON)
        return IMGW_EINVAL;
    /* content points into the cJSON tree, which outlives this call. */
    imgw__codec_jr_init(&r, &content);
    rc = imgw__codec_jr_msg(data, ci->msg, &body, &r);
    if (rc != 0)
        return rc;
    if (command == im_CommandType_CMD_PUSH_MSG)
        imgw_codec_set_bytes(&body.push.content, &content);
    if (codec == IMGW_CODEC_JSON)
        return imgw__codec_encode_json(ci, 0, timestamp, &body, out, cap);
    /* A SyncResponse without "messages" keeps a NULL callback: none. */
    return imgw__codec_encode_pb(ci, 0, timestamp, &body, out, cap);
}

/* =======================================================================
 * Sync page sizing
 * ======================================================================= */

size_t
imgw_codec_sync_entry_max(imgw_codec_t codec, size_t blob_len)
{
    /* PB: field tag, length varint (<= 10), the blob, the seq field
     * (<= 11); a revoked entry is re-encoded without content, plus the
     * marker (~12) and any longer re-encoded varint; 64 covers all.
     * JSON: each blob byte becomes at most 6 (a control byte's \u00XX;
     * every string or map entry also costs >= 2 wire bytes that its JSON
     * quotes and colon do not exceed), plus every key of a PushMessage
     * written with defaults, 20-digit numbers, the revoked marker and the
     * separating comma: under 512. */
    if (codec == IMGW_CODEC_JSON)
        return blob_len * 6 + 512;
    return blob_len + 64;
}

static CODEC_NOINLINE ssize_t
codec_sync_entry_size_slow(imgw_codec_t codec, const uint8_t *blob,
                           size_t len, int64_t seq, int revoked)
{
    imgw_slice_t sl = {blob, len};
    uint8_t rev = revoked ? 1 : 0;
    imgw_codec_entries_t e = {1, &sl, &seq, &rev};
    im_PushMessage pm;
    imgw_slice_t content;
    size_t n;

    if (imgw__codec_entry_load(&e, 0, &pm, &content) != 0)
        return IMGW_EINVAL;
    if (codec == IMGW_CODEC_PB) {
        if (!pb_get_encoded_size(&n, &im_PushMessage_msg, &pm))
            return IMGW_EINVAL;
        return (ssize_t)(1 + imgw__codec_varint_len(n) + n);
    } else {
        /* A writer with no room measures (codec_jw_t.over). */
        codec_jw_t w = {NULL, 0, 0, 0};

        imgw__codec_jw_msg(&w, &imgw__codec_m_push, &pm, 0);
        if (w.err != 0 && w.err != IMGW_ETOOBIG)
            return w.err;
        return (ssize_t)(w.over + 1); /* and its comma */
    }
}

ssize_t
imgw_codec_sync_entry_size(imgw_codec_t codec, const uint8_t *blob,
                           size_t len, int64_t seq, int revoked)
{
    size_t tn;

    if (codec != IMGW_CODEC_PB && codec != IMGW_CODEC_JSON)
        return IMGW_EINVAL;
    if (codec == IMGW_CODEC_PB && !revoked) {
        /* Copied as stored, seq appended (imgw__codec_entries_encode_cb). */
        tn = 1 + imgw__codec_varint_len((uint64_t)seq);
        return (ssize_t)(1 + imgw__codec_varint_len(len + tn) + len + tn);
    }
    return codec_sync_entry_size_slow(codec, blob, len, seq, revoked);
}
