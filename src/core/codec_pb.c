/*
 * codec_pb.c: the protobuf codec (see codec.h, codec.c for the file map):
 * nanopb with the bounds of proto/imgw.options. Callback (FT_CALLBACK)
 * bytes fields are decoded as slices pointing into the input and encoded
 * from imgw_slice_t; nothing is copied or allocated. Also the stored
 * PushMessage blobs (decode, sync entries copied as stored) and the
 * fan-out frame parts.
 *
 * Threads: any. Every function works on caller memory; there is no global
 * mutable state.
 *
 * Stack: decoding a stored PushMessage needs an im_PushMessage (~11 KiB) on
 * the stack (revoked sync entries); everything else is small.
 */
#include "codec_int.h"

#include <stdbool.h>
#include <string.h>

#include <pb_decode.h>
#include <pb_encode.h>

#include "err.h"
#include "pbfast.h"

/* =======================================================================
 * nanopb callbacks
 * ======================================================================= */

/*
 * Decode side of a bytes callback field: where to record the slice and the
 * input buffer it must lie in.
 */
typedef struct codec_slice_dec_s {
    imgw_slice_t *out;
    const uint8_t *lo; /* the whole input buffer */
    size_t len;
    size_t max; /* refuse longer values */
} codec_slice_dec_t;

/*
 * Records where a bytes field lies in the input instead of copying it. The
 * stream is a buffer stream (pb_istream_from_buffer), whose state is the
 * read position; pb_read(NULL) then just skips. The range check is not
 * paranoia: for a field that arrives with a non-length-delimited wire type,
 * nanopb copies the value to its own stack and hands us a stream over that
 * copy, which must not escape as a slice.
 */
static bool
codec_slice_decode_cb(pb_istream_t *stream, const pb_field_t *field,
                      void **arg)
{
    const codec_slice_dec_t *d = *arg;
    uintptr_t p = (uintptr_t)stream->state, lo = (uintptr_t)d->lo;
    size_t n = stream->bytes_left;

    (void)field;
    if (n > d->max || p < lo || p - lo > d->len || n > d->len - (p - lo))
        return false;
    d->out->ptr = (const uint8_t *)stream->state;
    d->out->len = n;
    return pb_read(stream, NULL, n);
}

static void
codec_slice_dec_init(codec_slice_dec_t *d, pb_callback_t *cb,
                     imgw_slice_t *out, const uint8_t *data, size_t len,
                     size_t max)
{
    d->out = out;
    d->lo = data;
    d->len = data ? len : 0;
    d->max = max;
    out->ptr = NULL;
    out->len = 0;
    cb->funcs.decode = codec_slice_decode_cb;
    cb->arg = d;
}

bool
imgw__codec_bytes_encode_cb(pb_ostream_t *stream, const pb_field_t *field,
                      void *const *arg)
{
    const imgw_slice_t *s = *arg;

    /* proto3: an empty bytes field is not on the wire. */
    if (s == NULL || s->len == 0)
        return true;
    return pb_encode_tag_for_field(stream, field) &&
           pb_encode_string(stream, s->ptr, s->len);
}

void
imgw_codec_set_bytes(pb_callback_t *field, imgw_slice_t *s)
{
    field->funcs.encode = imgw__codec_bytes_encode_cb;
    field->arg = s;
}

/* The envelope body: a submessage encoded straight into the output. */
typedef struct codec_body_s {
    const pb_msgdesc_t *desc;
    const void *body;
} codec_body_t;

static bool
codec_body_encode_cb(pb_ostream_t *stream, const pb_field_t *field,
                     void *const *arg)
{
    const codec_body_t *b = *arg;

    return pb_encode_tag_for_field(stream, field) &&
           pb_encode_submessage(stream, b->desc, b->body);
}

static size_t
codec_varint(uint8_t *p, uint64_t v)
{
    size_t n = 0;

    while (v >= 0x80) {
        p[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (uint8_t)v;
    return n;
}

size_t
imgw__codec_varint_len(uint64_t v)
{
    size_t n = 1;

    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

/*
 * Sync entries marked revoked go out with empty content and
 * extra["revoked"] = "1" (protocol.md section 5). Every existing "revoked"
 * key is overwritten, so the map's last-one-wins reading agrees. extra has
 * one slot more than a client may send (17 vs 16) for this marker; should
 * it still be full, the last entry gives way, because the marker is what
 * clients act on.
 */
static void
codec_mark_revoked(im_PushMessage *pm)
{
    const pb_size_t max = sizeof(pm->extra) / sizeof(pm->extra[0]);
    pb_size_t i;
    int found = 0;

    for (i = 0; i < pm->extra_count; i++) {
        if (strcmp(pm->extra[i].key, "revoked") == 0) {
            memcpy(pm->extra[i].value, "1", 2);
            found = 1;
        }
    }
    if (found)
        return;
    i = pm->extra_count < max ? pm->extra_count++ : (pb_size_t)(max - 1);
    memcpy(pm->extra[i].key, "revoked", sizeof("revoked"));
    memcpy(pm->extra[i].value, "1", 2);
}

/*
 * Loads sync entry i as a complete PushMessage (seq set, revocation
 * applied). content ends up pointing into the blob, or empty if revoked.
 */
int
imgw__codec_entry_load(const imgw_codec_entries_t *e, size_t i,
                       im_PushMessage *pm, imgw_slice_t *content)
{
    if (imgw_codec_decode_push(e->blob[i].ptr, e->blob[i].len, pm,
                               content) != 0)
        return IMGW_EINVAL;
    pm->seq = e->seq[i];
    if (e->revoked && e->revoked[i]) {
        content->ptr = NULL;
        content->len = 0;
        codec_mark_revoked(pm);
    }
    return 0;
}

static CODEC_NOINLINE bool
codec_revoked_encode(pb_ostream_t *stream, const pb_field_t *field,
                     const imgw_codec_entries_t *e, size_t i)
{
    im_PushMessage pm;
    imgw_slice_t content;

    if (imgw__codec_entry_load(e, i, &pm, &content) != 0)
        return false;
    return pb_encode_tag_for_field(stream, field) &&
           pb_encode_submessage(stream, &im_PushMessage_msg, &pm);
}

/*
 * SyncResponse.messages from stored blobs. A live entry is the stored
 * blob followed by its seq (field 11), so it is copied, not re-encoded;
 * protobuf's last-one-wins makes the appended seq authoritative even if a
 * blob carried one. Only revoked entries are decoded and re-encoded.
 */
bool
imgw__codec_entries_encode_cb(pb_ostream_t *stream, const pb_field_t *field,
                        void *const *arg)
{
    const imgw_codec_entries_t *e = *arg;
    uint8_t tail[11];
    size_t i, tn;

    if (e == NULL)
        return true;
    if (e->n > CODEC_SYNC_MAX || (e->n && (!e->blob || !e->seq)))
        return false;
    for (i = 0; i < e->n; i++) {
        if (e->revoked && e->revoked[i]) {
            if (!codec_revoked_encode(stream, field, e, i))
                return false;
            continue;
        }
        tail[0] = 0x58; /* field 11 (seq), varint */
        tn = 1 + codec_varint(tail + 1, (uint64_t)e->seq[i]);
        if (!pb_encode_tag_for_field(stream, field) ||
            !pb_encode_varint(stream, (uint64_t)(e->blob[i].len + tn)) ||
            (e->blob[i].len &&
             !pb_write(stream, e->blob[i].ptr, e->blob[i].len)) ||
            !pb_write(stream, tail, tn))
            return false;
    }
    return true;
}

/* =======================================================================
 * Protobuf decode
 * ======================================================================= */

int
imgw__codec_decode_pb(const uint8_t *data, size_t len, imgw_msg_in_t *out)
{
    im_WebSocketMessage env;
    imgw_slice_t body;
    codec_slice_dec_t bd, cd;
    const codec_cmd_t *ci;
    pb_istream_t is;
    bool ok;

    /* The hot shapes by hand (pbfast.h); nanopb for everything else. The
     * body is bounded only by the frame itself. */
    if (imgw_pbfast_decode_env(data, len, &env, &body) != 0) {
        codec_slice_dec_init(&bd, &env.body, &body, data, len, SIZE_MAX);
        is = pb_istream_from_buffer(data, len);
        if (!pb_decode(&is, &im_WebSocketMessage_msg, &env))
            return IMGW_EENVELOPE;
    }

    out->command = (int)env.command;
    out->sequence = env.sequence;
    out->timestamp = env.timestamp;
    ci = imgw__codec_cmd_find(out->command);
    if (ci == NULL || ci->dir != CODEC_C2S)
        return IMGW_EUNKNOWNCMD;

    if (out->command == im_CommandType_CMD_SEND_MSG_REQ &&
        imgw_pbfast_decode_send(body.ptr, body.len, CODEC_MAX_BYTES,
                                &out->u.send, &out->content) == 0) {
        imgw_codec_set_bytes(&out->u.send.content, &out->content);
        return imgw__codec_strings_valid(ci->msg, &out->u);
    }
    if (out->command == im_CommandType_CMD_SEND_MSG_REQ) {
        /* pb_decode leaves callbacks alone, so this survives its init. */
        codec_slice_dec_init(&cd, &out->u.send.content, &out->content,
                             body.ptr, body.len, CODEC_MAX_BYTES);
    }
    is = pb_istream_from_buffer(body.ptr, body.len);
    ok = pb_decode(&is, ci->msg->desc, &out->u);
    if (out->command == im_CommandType_CMD_SEND_MSG_REQ) {
        /* The callback still points at cd on this stack; make it an
         * encoder of the same slice so the struct is safe to keep. */
        if (!ok)
            out->content.len = 0;
        imgw_codec_set_bytes(&out->u.send.content, &out->content);
    }
    if (!ok)
        return IMGW_EDECODE;
    return imgw__codec_strings_valid(ci->msg, &out->u);
}

int
imgw_codec_decode_push(const uint8_t *blob, size_t len, im_PushMessage *pm,
                       imgw_slice_t *content)
{
    codec_slice_dec_t cd;
    pb_istream_t is;
    bool ok;

    codec_slice_dec_init(&cd, &pm->content, content, blob, len,
                         CODEC_MAX_BYTES);
    is = pb_istream_from_buffer(blob, len);
    ok = pb_decode(&is, &im_PushMessage_msg, pm);
    if (!ok)
        content->len = 0;
    /* Ready to re-encode (content encodes from *content), and no pointer
     * to cd on this stack is left behind. */
    imgw_codec_set_bytes(&pm->content, content);
    return ok ? 0 : IMGW_EDECODE;
}

/* =======================================================================
 * Protobuf encode
 * ======================================================================= */

/* The direct encoders of pbfast.h for the two hot bodies; -1 = nanopb's
 * turn (any other body, or a shape pbfast leaves to nanopb). */
ssize_t
imgw__codec_fast_body(int command, const void *body, uint8_t *out, size_t cap)
{
    if (command == im_CommandType_CMD_SEND_MSG_RSP)
        return imgw_pbfast_encode_send_rsp(body, out, cap);
    if (command == im_CommandType_CMD_PUSH_MSG) {
        const im_PushMessage *pm = body;

        if (pm->content.funcs.encode != imgw__codec_bytes_encode_cb)
            return -1;
        return imgw_pbfast_encode_push(pm, pm->content.arg, out, cap);
    }
    return -1;
}

/*
 * Runs pb_encode into out. nanopb reports "stream full" and bad input the
 * same way, so a failure is re-run on a sizing stream (failure path only):
 * if that succeeds, the buffer was too small.
 */
ssize_t
imgw__codec_pb_run(const pb_msgdesc_t *desc, const void *st, uint8_t *out,
             size_t cap)
{
    pb_ostream_t os = pb_ostream_from_buffer(out, cap);
    pb_ostream_t sz = PB_OSTREAM_SIZING;

    if (pb_encode(&os, desc, st))
        return (ssize_t)os.bytes_written;
    return pb_encode(&sz, desc, st) ? IMGW_ETOOBIG : IMGW_EINVAL;
}

/* Envelope bytes before the body: command and sequence (tag + up to 5
 * varint bytes each), body tag and length (1 + up to 10). */
#define CODEC_PB_HDR_MAX 23

/*
 * The usual way (below) lets nanopb size the body, then write it: every
 * body is encoded twice. Here it is encoded once, behind a gap big enough
 * for any envelope header; the header is then written and the body slid
 * down to meet it. The bytes are exactly nanopb's (fields in tag order,
 * zero sequence and timestamp omitted). Returns -1 when anything fails,
 * including a body that only fits without the gap; the caller then takes
 * the usual way, which also tells ETOOBIG from EINVAL.
 */
static ssize_t
codec_encode_pb_once(const codec_cmd_t *ci, uint32_t sequence,
                     int64_t timestamp, const void *body, uint8_t *out,
                     size_t cap)
{
    pb_ostream_t os;
    uint8_t hdr[CODEC_PB_HDR_MAX];
    size_t hl = 0, bl, n;

    if (cap <= CODEC_PB_HDR_MAX)
        return -1;
    n = (size_t)imgw__codec_fast_body(ci->command, body,
                                      out + CODEC_PB_HDR_MAX,
                                      cap - CODEC_PB_HDR_MAX);
    if (n == (size_t)-1) {
        os = pb_ostream_from_buffer(out + CODEC_PB_HDR_MAX,
                                    cap - CODEC_PB_HDR_MAX);
        if (!pb_encode(&os, ci->msg->desc, body))
            return -1;
        n = os.bytes_written;
    }
    bl = n;
    hdr[hl++] = 0x08; /* command (field 1); never 0 for a server command */
    hl += codec_varint(hdr + hl, (uint32_t)ci->command);
    if (sequence != 0) {
        hdr[hl++] = 0x10; /* sequence (field 2) */
        hl += codec_varint(hdr + hl, sequence);
    }
    hdr[hl++] = 0x1a; /* body (field 3) */
    hl += codec_varint(hdr + hl, bl);
    memmove(out + hl, out + CODEC_PB_HDR_MAX, bl);
    memcpy(out, hdr, hl);
    n = hl + bl;
    if (timestamp != 0) {
        if (cap - n < 1 + imgw__codec_varint_len((uint64_t)timestamp))
            return -1;
        out[n++] = 0x20; /* timestamp (field 4) */
        n += codec_varint(out + n, (uint64_t)timestamp);
    }
    return (ssize_t)n;
}

ssize_t
imgw__codec_encode_pb(const codec_cmd_t *ci, uint32_t sequence,
                      int64_t timestamp, const void *body, uint8_t *out,
                      size_t cap)
{
    im_WebSocketMessage env;
    codec_body_t b;
    ssize_t n;

    n = codec_encode_pb_once(ci, sequence, timestamp, body, out, cap);
    if (n >= 0)
        return n;

    b.desc = ci->msg->desc;
    b.body = body;
    env.command = (im_CommandType)ci->command;
    env.sequence = sequence;
    env.timestamp = timestamp;
    env.body.funcs.encode = codec_body_encode_cb;
    env.body.arg = &b;
    return imgw__codec_pb_run(&im_WebSocketMessage_msg, &env, out, cap);
}

/*
 * The copy path of codec_needs_copy(): envelope (whole frame) or body only
 * (envelope == 0).
 */
CODEC_NOINLINE ssize_t
imgw__codec_encode_pb_copy(const codec_cmd_t *ci, int envelope,
                           uint32_t sequence, int64_t timestamp,
                           const void *body, uint8_t *out, size_t cap)
{
    union {
        im_PushMessage push;
        im_SyncResponse sync;
    } tmp;

    if (ci->command == im_CommandType_CMD_PUSH_MSG) {
        tmp.push = *(const im_PushMessage *)body;
        imgw_codec_set_bytes(&tmp.push.content, tmp.push.content.arg);
    } else {
        tmp.sync = *(const im_SyncResponse *)body;
        tmp.sync.messages.funcs.encode = imgw__codec_entries_encode_cb;
    }
    if (envelope)
        return imgw__codec_encode_pb(ci, sequence, timestamp, &tmp, out, cap);
    return imgw__codec_pb_run(ci->msg->desc, &tmp, out, cap);
}

void
imgw_codec_push_pb_parts(size_t blob_len, int64_t seq, int64_t timestamp,
                         uint8_t *hdr, size_t *hdr_len, uint8_t *trl,
                         size_t *trl_len)
{
    size_t n = 0;

    /* command = 202 (field 1); sequence 0 is omitted; body (field 3) is
     * the blob plus its seq field (0x58 = field 11, varint). Byte for byte
     * what nanopb writes for the envelope, so receivers see no difference. */
    hdr[n++] = 0x08;
    n += codec_varint(hdr + n, im_CommandType_CMD_PUSH_MSG);
    hdr[n++] = 0x1a;
    n += codec_varint(hdr + n, (uint64_t)blob_len + 1 +
                                   imgw__codec_varint_len((uint64_t)seq));
    *hdr_len = n;

    n = 0;
    trl[n++] = 0x58;
    n += codec_varint(trl + n, (uint64_t)seq);
    if (timestamp != 0) {
        trl[n++] = 0x20; /* timestamp (field 4), varint */
        n += codec_varint(trl + n, (uint64_t)timestamp);
    }
    *trl_len = n;
}
