/*
 * fuzz_json: text frames from clients, imgw_codec_decode(IMGW_CODEC_JSON)
 * (the depth prescan, cJSON, the envelope and every client body), with the
 * frame in a heap buffer of exactly its size and not NUL-terminated, as a
 * WebSocket message is. A decoded SendMessageRequest is then turned into a
 * PushMessage and encoded in both codecs (fuzz_codec.h).
 */
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "err.h"
#include "log.h"
#include "fuzz_codec.h"

#define OUT_CAP (2 * 1024 * 1024)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint8_t *out;
static imgw_msg_in_t in;

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (out == NULL) {
        imgw_log_set_level(IMGW_LOG_OFF);
        out = malloc(OUT_CAP);
        if (out == NULL)
            abort();
    }
    uint8_t *frame = malloc(size ? size : 1);
    size_t scratch_cap = size + 4096; /* as main.c: max_frame + 4096 */
    uint8_t *scratch = malloc(scratch_cap);
    if (frame == NULL || scratch == NULL)
        abort();
    memcpy(frame, data, size);
    memset(&in, 0, sizeof(in));
    int r = imgw_codec_decode(IMGW_CODEC_JSON, frame, size, &in, scratch,
                              scratch_cap);
    fuzz_decoded_ok(r, &in);
    if (r == 0 && in.content.len &&
        (in.content.ptr < scratch ||
         in.content.ptr + in.content.len > scratch + scratch_cap))
        abort();
    if (r == 0)
        fuzz_push_from_send(&in, out, OUT_CAP);
    free(scratch);
    free(frame);
    return 0;
}
