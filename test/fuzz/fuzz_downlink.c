/*
 * fuzz_downlink: the broker downlink / POST /api/push body
 * {code, ids, data, broadcast} (protocol.md section 8).
 *
 * imgw_api_push_json() needs a core loop and delivers to connections, so
 * this target runs its parsing and encoding steps directly: the same
 * nesting prescan as api.c's parse_body(), cJSON_ParseWithLength(), the
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

#include "codec.h"
#include "err.h"
#include "log.h"
#include "fuzz_codec.h"

#define OUT_CAP ((size_t)131072 * 8 + 65536) /* main.c: cl->out_cap */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint8_t *out;

/* A copy of api.c's json_depth_ok (static there). */
static int
json_depth_ok(const uint8_t *p, size_t n, int max)
{
    int depth = 0, in_str = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t ch = p[i];
        if (in_str) {
            if (ch == '\\')
                i++;
            else if (ch == '"')
                in_str = 0;
        } else if (ch == '"') {
            in_str = 1;
        } else if (ch == '{' || ch == '[') {
            if (++depth > max)
                return 0;
        } else if (ch == '}' || ch == ']') {
            depth--;
        }
    }
    return 1;
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
    if (size == 0 || !json_depth_ok(data, size, IMGW_JSON_MAX_DEPTH))
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
