/*
 * pbfast_check.h: src/core/pbfast.c against nanopb on the same bytes, for
 * test/unit/test_pbfast.c and test/fuzz/fuzz_pb.c.
 *
 * pbfast_check(data, n) reads data as an envelope and as a
 * SendMessageRequest body with both decoders: whatever pbfast accepts,
 * nanopb must accept with the same fields. For every body nanopb decodes,
 * the PushMessage and SendMessageResponse built from it are encoded by
 * both: where pbfast writes, its bytes must be nanopb's. Returns 0, or a
 * number naming the first disagreement (printed to stderr). *accepted
 * (optional) counts the fast paths taken, so a test can show it ran them.
 */
#ifndef IMGW_PBFAST_CHECK_H
#define IMGW_PBFAST_CHECK_H

#include <stdio.h>
#include <string.h>

#include <pb_decode.h>
#include <pb_encode.h>

#include "pbfast.h"

typedef struct pbc_slice_s {
    const uint8_t *ptr;
    size_t len;
    size_t max;
    const uint8_t *lo, *hi; /* the input: a value elsewhere is refused */
} pbc_slice_t;

/* As codec_pb.c's slice callback: for a bytes field sent with another
 * wire type, nanopb hands over a stream on its own stack copy, which is
 * refused rather than kept. */
static bool
pbc_slice_cb(pb_istream_t *stream, const pb_field_t *field, void **arg)
{
    pbc_slice_t *s = *arg;
    const uint8_t *p = stream->state;

    (void)field;
    if (stream->bytes_left > s->max || p < s->lo || p > s->hi ||
        stream->bytes_left > (size_t)(s->hi - p))
        return false;
    s->ptr = stream->state;
    s->len = stream->bytes_left;
    return pb_read(stream, NULL, stream->bytes_left);
}

static bool
pbc_bytes_cb(pb_ostream_t *stream, const pb_field_t *field, void *const *arg)
{
    const imgw_slice_t *s = *arg;

    if (s == NULL || s->len == 0)
        return true;
    return pb_encode_tag_for_field(stream, field) &&
           pb_encode_string(stream, s->ptr, s->len);
}

static int
pbc_fail(int where)
{
    fprintf(stderr, "pbfast disagrees with nanopb (check %d)\n", where);
    return where;
}

/* Both encoders on one body; 0 when pbfast declines or matches. */
static int
pbc_encode_same(const pb_msgdesc_t *desc, const void *st, ssize_t fast,
                const uint8_t *fbuf, uint8_t *nbuf, size_t cap, int where)
{
    pb_ostream_t os = pb_ostream_from_buffer(nbuf, cap);

    if (fast < 0)
        return 0;
    if (!pb_encode(&os, desc, st) || os.bytes_written != (size_t)fast ||
        memcmp(nbuf, fbuf, (size_t)fast) != 0)
        return pbc_fail(where);
    return 0;
}

static int
pbfast_check(const uint8_t *data, size_t n, int *accepted)
{
    static im_SendMessageRequest fq, nq;
    static im_PushMessage pm;
    static uint8_t fbuf[1200 + 65536], nbuf[1200 + 65536];
    im_WebSocketMessage fe, ne;
    im_SendMessageResponse rsp;
    imgw_slice_t fbody, fcontent;
    pbc_slice_t nbody = {NULL, 0, SIZE_MAX, data, data + n},
                ncontent = {NULL, 0, 65536, data, data + n};
    pb_istream_t is;
    int nok, r;

    /* envelope */
    if (imgw_pbfast_decode_env(data, n, &fe, &fbody) == 0) {
        if (accepted)
            (*accepted)++;
        ne.body.funcs.decode = pbc_slice_cb;
        ne.body.arg = &nbody;
        is = pb_istream_from_buffer(data, n);
        if (!pb_decode(&is, &im_WebSocketMessage_msg, &ne)) {
            fprintf(stderr, "nanopb: %s; input", PB_GET_ERROR(&is));
            for (size_t i = 0; i < n && i < 40; i++)
                fprintf(stderr, " %02x", data[i]);
            fprintf(stderr, "\n");
            return pbc_fail(1);
        }
        if (ne.command != fe.command || ne.sequence != fe.sequence ||
            ne.timestamp != fe.timestamp || nbody.len != fbody.len ||
            (nbody.len && nbody.ptr != fbody.ptr))
            return pbc_fail(2);
    }

    /* SendMessageRequest body */
    memset(&nq, 0, sizeof(nq));
    nq.content.funcs.decode = pbc_slice_cb;
    nq.content.arg = &ncontent;
    is = pb_istream_from_buffer(data, n);
    nok = pb_decode(&is, &im_SendMessageRequest_msg, &nq);
    if (imgw_pbfast_decode_send(data, n, 65536, &fq, &fcontent) == 0) {
        if (accepted)
            (*accepted)++;
        if (!nok)
            return pbc_fail(3);
        if (strcmp(fq.client_msg_id, nq.client_msg_id) ||
            strcmp(fq.conversation_id, nq.conversation_id) ||
            strcmp(fq.sender_id, nq.sender_id) ||
            strcmp(fq.receiver_id, nq.receiver_id) ||
            strcmp(fq.group_id, nq.group_id) ||
            fq.message_type != nq.message_type ||
            fq.send_time != nq.send_time || nq.extra_count != 0 ||
            fq.extra_count != 0 || fcontent.len != ncontent.len ||
            (fcontent.len && fcontent.ptr != ncontent.ptr))
            return pbc_fail(4);
    }
    if (!nok)
        return 0;

    /* Encoders, on a push and a response built from what nanopb read. */
    memset(&pm, 0, sizeof(pm));
    memcpy(pm.message_id, nq.client_msg_id,
           strnlen(nq.client_msg_id, sizeof(pm.message_id) - 1));
    strcpy(pm.client_msg_id, nq.client_msg_id);
    strcpy(pm.conversation_id, nq.conversation_id);
    strcpy(pm.sender_id, nq.sender_id);
    strcpy(pm.receiver_id, nq.receiver_id);
    strcpy(pm.group_id, nq.group_id);
    pm.message_type = nq.message_type;
    pm.send_time = nq.send_time;
    pm.server_time = (int64_t)(0 - (uint64_t)nq.send_time);
    pm.seq = (int64_t)nq.message_type * 7;
    fcontent.ptr = ncontent.ptr;
    fcontent.len = ncontent.len;
    pm.content.funcs.encode = pbc_bytes_cb;
    pm.content.arg = &fcontent;
    if (nq.extra_count > 0 && nq.extra_count <= 17) {
        pm.extra_count = nq.extra_count;
        for (pb_size_t i = 0; i < nq.extra_count; i++) {
            strcpy(pm.extra[i].key, nq.extra[i].key);
            strcpy(pm.extra[i].value, nq.extra[i].value);
        }
    }
    r = pbc_encode_same(&im_PushMessage_msg, &pm,
                        imgw_pbfast_encode_push(&pm, &fcontent, fbuf,
                                                sizeof(fbuf)),
                        fbuf, nbuf, sizeof(nbuf), 5);
    if (r)
        return r;

    memset(&rsp, 0, sizeof(rsp));
    rsp.error_code = (im_ErrorCode)nq.message_type;
    memcpy(rsp.error_msg, nq.conversation_id,
           strnlen(nq.conversation_id, sizeof(rsp.error_msg) - 1));
    memcpy(rsp.message_id, nq.sender_id,
           strnlen(nq.sender_id, sizeof(rsp.message_id) - 1));
    rsp.seq = nq.send_time;
    rsp.server_time = (int64_t)((uint64_t)nq.message_type - (uint64_t)nq.send_time);
    return pbc_encode_same(&im_SendMessageResponse_msg, &rsp,
                           imgw_pbfast_encode_send_rsp(&rsp, fbuf,
                                                       sizeof(fbuf)),
                           fbuf, nbuf, sizeof(nbuf), 6);
}

#endif
