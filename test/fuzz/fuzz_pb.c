/*
 * fuzz_pb: protobuf frames from clients and stored PushMessage blobs.
 *
 * Every input is decoded as a client binary frame
 * (imgw_codec_decode(IMGW_CODEC_PB)), as the server does for each binary
 * WebSocket message. When byte 0 is odd, the rest is also treated as a
 * stored PushMessage blob: imgw_codec_decode_push(), and for a blob that
 * decodes, the re-encodes the server does with stored blobs: a PushMessage
 * frame in both codecs, the fan-out pieces (push_pb_parts and
 * push_json_prefix) and a SyncResponse page with the blob as a live and as
 * a revoked entry, sized as msg.c sizes sync pages. Decoded client bodies
 * must hold only UTF-8 strings (fuzz_decoded_ok). pbfast_check runs the
 * direct reader/writer of the hot messages beside nanopb on every input.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "err.h"
#include "log.h"
#include "fuzz_codec.h"
#include "pbfast_check.h"

#define OUT_CAP (2 * 1024 * 1024)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static uint8_t *out;
static imgw_msg_in_t in;

static void
check_frame(ssize_t n, size_t cap)
{
    if (n >= 0 && (size_t)n > cap)
        abort();
    if (n < 0 && n != IMGW_ETOOBIG && n != IMGW_EINVAL && n != IMGW_EDECODE)
        abort();
}

/*
 * msg.c sizes and cuts sync pages with imgw_codec_sync_entry_max/_size: for
 * a blob that decodes, the exact size is at most the bound, and a page of
 * these two entries always encodes into the sum of the sizes plus
 * IMGW_CODEC_SYNC_OVERHEAD, in both codecs, whatever the blob holds.
 */
static void
sync_sizing(imgw_slice_t *blobs, int64_t *seqs, uint8_t *revoked)
{
    imgw_codec_entries_t e = {2, blobs, seqs, revoked};
    for (int c = 0; c < 2; c++) {
        imgw_codec_t codec = c ? IMGW_CODEC_JSON : IMGW_CODEC_PB;
        size_t need = IMGW_CODEC_SYNC_OVERHEAD;
        for (int i = 0; i < 2; i++) {
            ssize_t x = imgw_codec_sync_entry_size(codec, blobs[i].ptr,
                                                   blobs[i].len, seqs[i],
                                                   revoked[i]);
            size_t b = imgw_codec_sync_entry_max(codec, blobs[i].len);
            if (x < 0 || (size_t)x > b) {
                fprintf(stderr, "sync entry size %zd, bound %zu\n", x, b);
                abort();
            }
            need += (size_t)x;
        }
        if (need > OUT_CAP)
            continue;
        im_SyncResponse sr;
        memset(&sr, 0, sizeof(sr));
        sr.messages.arg = &e;
        sr.server_max_seq = INT64_MIN;
        sr.has_more = true;
        ssize_t n = imgw_codec_encode(codec, im_CommandType_CMD_SYNC_RSP,
                                      UINT32_MAX, INT64_MIN, &sr, out, need);
        if (n < 0) {
            fprintf(stderr, "sync page of %zu sized bytes: %zd\n", need, n);
            abort();
        }
    }
}

static void
fuzz_blob(const uint8_t *blob, size_t len)
{
    im_PushMessage pm;
    imgw_slice_t content;
    memset(&pm, 0, sizeof(pm));
    if (imgw_codec_decode_push(blob, len, &pm, &content) != 0)
        return;
    /* content must lie inside the blob */
    if (content.len &&
        (content.ptr < blob || content.ptr + content.len > blob + len))
        abort();
    check_frame(imgw_codec_encode(IMGW_CODEC_PB, im_CommandType_CMD_PUSH_MSG, 7,
                                  1700000000000, &pm, out, OUT_CAP),
                OUT_CAP);
    ssize_t jl = imgw_codec_encode(IMGW_CODEC_JSON, im_CommandType_CMD_PUSH_MSG,
                                   7, 1700000000000, &pm, out, OUT_CAP);
    check_frame(jl, OUT_CAP);
    fuzz_json_frame_ok(out, jl);
    /* A small buffer: IMGW_ETOOBIG, never an overrun. */
    check_frame(imgw_codec_encode(IMGW_CODEC_JSON, im_CommandType_CMD_PUSH_MSG,
                                  7, 1700000000000, &pm, out, 64),
                64);
    check_frame(imgw_codec_encode_pb_body(im_CommandType_CMD_PUSH_MSG, &pm, out,
                                          OUT_CAP),
                OUT_CAP);

    uint8_t hdr[16], trl[24];
    size_t hl = 0, tl = 0;
    imgw_codec_push_pb_parts(len, pm.seq, 1700000000000, hdr, &hl, trl, &tl);
    if (hl > sizeof(hdr) || tl > sizeof(trl))
        abort();
    fuzz_push_prefix_ok(blob, len, out, OUT_CAP);

    imgw_slice_t blobs[2] = {{blob, len}, {blob, len}};
    int64_t seqs[2] = {1, INT64_MAX};
    uint8_t revoked[2] = {0, 1};
    imgw_codec_entries_t e = {2, blobs, seqs, revoked};
    im_SyncResponse sr;
    memset(&sr, 0, sizeof(sr));
    sr.messages.arg = &e;
    sr.server_max_seq = 2;
    sr.has_more = true;
    check_frame(imgw_codec_encode(IMGW_CODEC_PB, im_CommandType_CMD_SYNC_RSP, 9,
                                  1, &sr, out, OUT_CAP),
                OUT_CAP);
    memset(&sr, 0, sizeof(sr));
    sr.messages.arg = &e;
    jl = imgw_codec_encode(IMGW_CODEC_JSON, im_CommandType_CMD_SYNC_RSP, 9, 1,
                           &sr, out, OUT_CAP);
    check_frame(jl, OUT_CAP);
    fuzz_json_frame_ok(out, jl);
    sync_sizing(blobs, seqs, revoked);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (out == NULL) {
        imgw_log_set_level(IMGW_LOG_OFF);
        out = malloc(OUT_CAP);
        if (out == NULL)
            abort();
    }
    /* The frame in a heap copy of its exact size, so ASan sees overreads. */
    uint8_t *frame = malloc(size ? size : 1);
    size_t scratch_cap = size + 4096; /* as main.c: max_frame + 4096 */
    uint8_t *scratch = malloc(scratch_cap);
    if (frame == NULL || scratch == NULL)
        abort();
    memcpy(frame, data, size);
    memset(&in, 0, sizeof(in));
    int r = imgw_codec_decode(IMGW_CODEC_PB, frame, size, &in, scratch,
                              scratch_cap);
    fuzz_decoded_ok(r, &in);
    if (r == 0 && in.content.len &&
        (in.content.ptr < frame ||
         in.content.ptr + in.content.len > frame + size))
        abort();
    if (r == 0)
        fuzz_push_from_send(&in, out, OUT_CAP);
    /* The direct reader/writer (src/core/pbfast.c) agrees with nanopb on
     * these bytes as an envelope and as a SendMessageRequest body. */
    if (pbfast_check(frame, size, NULL) != 0)
        abort();
    if (size > 0 && (data[0] & 1))
        fuzz_blob(frame + 1, size - 1);
    free(scratch);
    free(frame);
    return 0;
}
