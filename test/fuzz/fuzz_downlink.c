/*
 * fuzz_downlink: the broker downlink / POST /api/push body
 * {code, ids, data, broadcast} (protocol.md section 8).
 *
 * imgw_downlink_push() (downlink.c) needs a core loop and delivers to connections, so
 * this target runs its parsing and encoding steps directly: the same
 * prescan as api.c's parse_body(), cJSON_ParseWithLength(), the
 * same shape checks, then imgw_codec_encode_from_json() in both codecs
 * into halves of a buffer sized as main.c sizes cl->out (default
 * max_frame_bytes). Beyond the server's path it also encodes "data" (or
 * the whole body when there is none) as the body of every
 * server->client command, so each body's JSON reader is reached from any
 * seed.
 */
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <pb_decode.h>

#include "codec.h"
#include "err.h"
#include "log.h"
#include "fuzz_codec.h"

#define OUT_CAP ((size_t)131072 * 8 + 65536) /* main.c: cl->out_cap */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint8_t *out;

/* The body descriptor of a server->client command, or NULL. */
static const pb_msgdesc_t *
s2c_desc(int command)
{
    switch (command) {
    case 1: return &im_ErrorResponse_msg;
    case 6: return &im_HeartbeatResponse_msg;
    case 101: return &im_AuthResponse_msg;
    case 102: return &im_KickPush_msg;
    case 201: return &im_SendMessageResponse_msg;
    case 202: return &im_PushMessage_msg;
    case 206: return &im_RevokeMessageResponse_msg;
    case 207: return &im_RevokeMessagePush_msg;
    case 301: return &im_SyncResponse_msg;
    case 501: return &im_ReadReceiptResponse_msg;
    case 502: return &im_ReadReceiptPush_msg;
    case 602: return &im_TypingStatusPush_msg;
    default: return NULL;
    }
}

static bool
body_slice_cb(pb_istream_t *s, const pb_field_t *f, void **arg)
{
    const uint8_t **b = *arg;
    (void)f;
    b[0] = (const uint8_t *)s->state;
    b[1] = b[0] + s->bytes_left;
    return pb_read(s, NULL, s->bytes_left);
}

/*
 * A protobuf frame made from downlink JSON opens with plain nanopb and
 * every string in its body is UTF-8: a receiver's standard decoder would
 * reject the push otherwise.
 */
static void
pb_frame_ok(int code, const uint8_t *p, ssize_t n)
{
    static union {
        im_PushMessage push;
        im_SyncResponse sync;
        im_ReadReceiptPush read;
        uint8_t any[64 * 1024];
    } body;
    const pb_msgdesc_t *d = s2c_desc(code);
    im_WebSocketMessage env;
    const uint8_t *b[2] = {NULL, NULL};
    if (n < 0 || d == NULL)
        return;
    memset(&env, 0, sizeof(env));
    env.body.funcs.decode = body_slice_cb;
    env.body.arg = b;
    pb_istream_t is = pb_istream_from_buffer(p, (size_t)n);
    if (!pb_decode(&is, &im_WebSocketMessage_msg, &env) ||
        (int)env.command != code) {
        fprintf(stderr, "downlink PB frame does not decode\n");
        abort();
    }
    memset(&body, 0, sizeof(body));
    is = pb_istream_from_buffer(b[0], b[0] ? (size_t)(b[1] - b[0]) : 0);
    if (!pb_decode(&is, d, &body) || !fuzz_strings_ok(d, &body)) {
        fprintf(stderr, "downlink PB body %d: undecodable or not UTF-8\n",
                code);
        abort();
    }
}

static void
encode_both(int code, const cJSON *body)
{
    size_t half = OUT_CAP / 2;
    ssize_t pl = imgw_codec_encode_from_json(IMGW_CODEC_PB, code, body,
                                             1700000000000, out + half, half);
    ssize_t jl = imgw_codec_encode_from_json(IMGW_CODEC_JSON, code, body,
                                             1700000000000, out, half);
    if ((pl >= 0 && (size_t)pl > half) || (jl >= 0 && (size_t)jl > half))
        abort();
    fuzz_check_len(pl, half);
    fuzz_check_len(jl, half);
    pb_frame_ok(code, out + half, pl);
    fuzz_json_frame_ok(out, jl); /* valid JSON in valid UTF-8 */
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const int s2c[] = {1,   6,   101, 102, 201, 202,
                              206, 207, 301, 501, 502, 602};
    if (out == NULL) {
        imgw_log_set_level(IMGW_LOG_OFF);
        out = malloc(OUT_CAP);
        if (out == NULL)
            abort();
    }
    /* api.c's parse_body() and the broker path run the same prescan. */
    if (size == 0 || !imgw_codec_json_prescan(data, size))
        return 0;
    char *body = malloc(size);
    if (body == NULL)
        abort();
    memcpy(body, data, size);
    cJSON *j = cJSON_ParseWithLength(body, size);
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        free(body);
        return 0;
    }
    const cJSON *code = cJSON_GetObjectItemCaseSensitive(j, "code");
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(j, "data");
    if (cJSON_IsNumber(code) && code->valuedouble == (double)code->valueint &&
        (d == NULL || cJSON_IsObject(d))) {
        cJSON *empty = d == NULL ? cJSON_CreateObject() : NULL;
        encode_both(code->valueint, d ? d : empty);
        cJSON_Delete(empty);
    }
    const cJSON *b = cJSON_IsObject(d) ? d : j;
    for (size_t i = 0; i < sizeof(s2c) / sizeof(s2c[0]); i++)
        encode_both(s2c[i], b);
    cJSON_Delete(j);
    free(body);
    return 0;
}
