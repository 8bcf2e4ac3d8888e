/*
 * codec.c: imgw's two wire codecs (see codec.h; protocol.md sections 2, 3,
 * 8 and 10; the JSON mapping is written down in docs/protocol-json.md).
 *
 *   protobuf  nanopb with the bounds of proto/imgw.options. Callback
 *             (FT_CALLBACK) bytes fields are decoded as slices pointing into
 *             the input and encoded from imgw_slice_t; nothing is copied or
 *             allocated.
 *   JSON      input is parsed with cJSON (after a cheap nesting-depth scan)
 *             and mapped onto the same nanopb structs through tables built
 *             from the generated *_FIELDLIST macros, so a field added to the
 *             .proto shows up in JSON without touching this file. Output is
 *             written by a small bounds-checked writer, not cJSON_Print, so
 *             encoding never allocates either.
 *
 * Every decoded body (both codecs, client frames and downlink JSON) has
 * its string fields checked for UTF-8 through the same field tables
 * (codec_strings_valid); bytes fields are not strings and stay unchecked.
 *
 * Threads: any. Every function works on caller memory and the read-only
 * tables below; there is no global mutable state.
 *
 * Stack: decoding a stored PushMessage needs an im_PushMessage (~11 KiB) on
 * the stack (sync entries, JSON push prefix, downlink JSON); everything
 * else is small.
 */
#include "codec.h"

#include <pthread.h>
#include <stdbool.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <pb_decode.h>
#include <pb_encode.h>

#include "json.h"
#include "utf8.h"
#include "err.h"

/* A bytes field (content) is never larger than this, whatever the config
 * says; core enforces the smaller max_message_bytes. (imgw.options) */
#define CODEC_MAX_BYTES (1024 * 1024)
/* A SyncResponse never carries more entries (imgw.options, protocol.md 5). */
#define CODEC_SYNC_MAX 500

/* For functions with an im_PushMessage (~11 KiB) local: kept out of line
 * so that stack is only taken while such a message is in use, not by every
 * caller that merely might need one. */
#define CODEC_NOINLINE __attribute__((noinline))

/* =======================================================================
 * Tables: command names, error code names, and per-message field tables
 * ======================================================================= */

enum { CODEC_C2S = 1, CODEC_S2C = 2 };

/*
 * One JSON-visible field of a nanopb struct. kind says how the bytes at
 * off are interpreted; for static repeated fields count_off/elem locate the
 * pb_size_t count and the element size.
 */
typedef enum codec_jkind_e {
    CODEC_JK_STRING,  /* char[size], NUL-terminated */
    CODEC_JK_INT32,   /* int32_t */
    CODEC_JK_INT64,   /* int64_t */
    CODEC_JK_ENUM,    /* im_ErrorCode (the only enum inside bodies) */
    CODEC_JK_BOOL,    /* bool */
    CODEC_JK_BYTES,   /* pb_callback_t, arg = imgw_slice_t * */
    CODEC_JK_MAP,     /* map<string,string>: repeated ExtraEntry, or the
                         message's repeated submessage (codec_jmsg_t.sub) */
    CODEC_JK_STRINGS, /* repeated string: char[count][elem] */
    CODEC_JK_MSGS     /* pb_callback_t of PushMessages (SyncResponse) */
} codec_jkind_t;

/* nanopb's (allocation, label, type) triples mapped onto our kinds. A
 * combination the proto gains later without a line here fails to compile,
 * which is the point. */
#define CODEC_JK_STATIC_SINGULAR_STRING CODEC_JK_STRING
#define CODEC_JK_STATIC_SINGULAR_INT32 CODEC_JK_INT32
#define CODEC_JK_STATIC_SINGULAR_INT64 CODEC_JK_INT64
#define CODEC_JK_STATIC_SINGULAR_UENUM CODEC_JK_ENUM
#define CODEC_JK_STATIC_SINGULAR_BOOL CODEC_JK_BOOL
#define CODEC_JK_CALLBACK_SINGULAR_BYTES CODEC_JK_BYTES
#define CODEC_JK_STATIC_REPEATED_MESSAGE CODEC_JK_MAP
#define CODEC_JK_STATIC_REPEATED_STRING CODEC_JK_STRINGS
#define CODEC_JK_CALLBACK_REPEATED_MESSAGE CODEC_JK_MSGS

typedef struct codec_jfield_s {
    const char *name;   /* proto field name = JSON key */
    uint32_t kind;      /* codec_jkind_t */
    uint32_t off;       /* offset of the member in the struct */
    uint32_t size;      /* sizeof the member (whole array if repeated) */
    uint32_t count_off; /* static repeated: offset of the pb_size_t count */
    uint32_t elem;      /* static repeated: sizeof one element */
} codec_jfield_t;

#define CODEC_JREP_STATIC_SINGULAR(T, n) 0, 0
#define CODEC_JREP_CALLBACK_SINGULAR(T, n) 0, 0
#define CODEC_JREP_CALLBACK_REPEATED(T, n) 0, 0
#define CODEC_JREP_STATIC_REPEATED(T, n)                                     \
    offsetof(T, n##_count), sizeof(((T *)0)->n[0])
#define CODEC_JF(T, atype, htype, ltype, n, tag)                             \
    {#n, CODEC_JK_##atype##_##htype##_##ltype, offsetof(T, n),               \
     sizeof(((T *)0)->n), CODEC_JREP_##atype##_##htype(T, n)},
#define CODEC_JIDX(T, atype, htype, ltype, n, tag) T##_jidx_##n,

typedef struct codec_jmsg_s {
    const pb_msgdesc_t *desc;
    const codec_jfield_t *f;
    uint32_t nf;
    int32_t last; /* field written last in JSON (PushMessage.seq), or -1 */
    uint32_t size;
    /* nanopb lays a map and a static repeated submessage out alike, so
     * the field macros cannot tell them apart: a message whose one
     * repeated message field is not a map names its element table here
     * (UserPresence lists), and that field is read and written as an
     * array of objects. */
    const struct codec_jmsg_s *sub;
} codec_jmsg_t;

#define CODEC_JFIELDS(T)                                                     \
    static const codec_jfield_t T##_jf[] = {T##_FIELDLIST(CODEC_JF, T)};
#define CODEC_JMSG(T, last)                                                  \
    {&T##_msg, T##_jf, sizeof(T##_jf) / sizeof(T##_jf[0]), (last), sizeof(T), \
     NULL}
#define CODEC_JMSG_SUB(T, sub)                                               \
    {&T##_msg, T##_jf, sizeof(T##_jf) / sizeof(T##_jf[0]), -1, sizeof(T),    \
     (sub)}

CODEC_JFIELDS(im_ErrorResponse)
CODEC_JFIELDS(im_KickPush)
CODEC_JFIELDS(im_AuthRequest)
CODEC_JFIELDS(im_AuthResponse)
CODEC_JFIELDS(im_HeartbeatRequest)
CODEC_JFIELDS(im_HeartbeatResponse)
CODEC_JFIELDS(im_SendMessageRequest)
CODEC_JFIELDS(im_SendMessageResponse)
CODEC_JFIELDS(im_PushMessage)
CODEC_JFIELDS(im_MessageAck)
CODEC_JFIELDS(im_SyncRequest)
CODEC_JFIELDS(im_SyncResponse)
CODEC_JFIELDS(im_ReadReceiptRequest)
CODEC_JFIELDS(im_ReadReceiptResponse)
CODEC_JFIELDS(im_ReadReceiptPush)
CODEC_JFIELDS(im_TypingStatusRequest)
CODEC_JFIELDS(im_TypingStatusPush)
CODEC_JFIELDS(im_RevokeMessageRequest)
CODEC_JFIELDS(im_RevokeMessageResponse)
CODEC_JFIELDS(im_RevokeMessagePush)
CODEC_JFIELDS(im_UserPresence)
CODEC_JFIELDS(im_PresenceRequest)
CODEC_JFIELDS(im_PresenceResponse)
CODEC_JFIELDS(im_PresenceSubscribeRequest)
CODEC_JFIELDS(im_PresenceSubscribeResponse)
CODEC_JFIELDS(im_PresencePush)

/* Field indices of PushMessage, so "seq" can be written last: the fan-out
 * prefix (imgw_codec_push_json_prefix) ends right before its value. */
enum { im_PushMessage_FIELDLIST(CODEC_JIDX, im_PushMessage) };

/* Both map entry types are read through im_PushMessage_ExtraEntry. */
_Static_assert(sizeof(im_SendMessageRequest_ExtraEntry) ==
                   sizeof(im_PushMessage_ExtraEntry) &&
               offsetof(im_SendMessageRequest_ExtraEntry, value) ==
                   offsetof(im_PushMessage_ExtraEntry, value) &&
               sizeof(((im_SendMessageRequest_ExtraEntry *)0)->key) ==
                   sizeof(((im_PushMessage_ExtraEntry *)0)->key) &&
               sizeof(((im_SendMessageRequest_ExtraEntry *)0)->value) ==
                   sizeof(((im_PushMessage_ExtraEntry *)0)->value),
               "ExtraEntry layouts differ");

static const codec_jmsg_t codec_m_error = CODEC_JMSG(im_ErrorResponse, -1);
static const codec_jmsg_t codec_m_kick = CODEC_JMSG(im_KickPush, -1);
static const codec_jmsg_t codec_m_authq = CODEC_JMSG(im_AuthRequest, -1);
static const codec_jmsg_t codec_m_auths = CODEC_JMSG(im_AuthResponse, -1);
static const codec_jmsg_t codec_m_hbq = CODEC_JMSG(im_HeartbeatRequest, -1);
static const codec_jmsg_t codec_m_hbs = CODEC_JMSG(im_HeartbeatResponse, -1);
static const codec_jmsg_t codec_m_sendq =
    CODEC_JMSG(im_SendMessageRequest, -1);
static const codec_jmsg_t codec_m_sends =
    CODEC_JMSG(im_SendMessageResponse, -1);
static const codec_jmsg_t codec_m_push =
    CODEC_JMSG(im_PushMessage, im_PushMessage_jidx_seq);
static const codec_jmsg_t codec_m_ack = CODEC_JMSG(im_MessageAck, -1);
static const codec_jmsg_t codec_m_syncq = CODEC_JMSG(im_SyncRequest, -1);
static const codec_jmsg_t codec_m_syncs = CODEC_JMSG(im_SyncResponse, -1);
static const codec_jmsg_t codec_m_readq =
    CODEC_JMSG(im_ReadReceiptRequest, -1);
static const codec_jmsg_t codec_m_reads =
    CODEC_JMSG(im_ReadReceiptResponse, -1);
static const codec_jmsg_t codec_m_readp = CODEC_JMSG(im_ReadReceiptPush, -1);
static const codec_jmsg_t codec_m_typq =
    CODEC_JMSG(im_TypingStatusRequest, -1);
static const codec_jmsg_t codec_m_typp = CODEC_JMSG(im_TypingStatusPush, -1);
static const codec_jmsg_t codec_m_revq =
    CODEC_JMSG(im_RevokeMessageRequest, -1);
static const codec_jmsg_t codec_m_revs =
    CODEC_JMSG(im_RevokeMessageResponse, -1);
static const codec_jmsg_t codec_m_revp = CODEC_JMSG(im_RevokeMessagePush, -1);
static const codec_jmsg_t codec_m_upres = CODEC_JMSG(im_UserPresence, -1);
static const codec_jmsg_t codec_m_presq = CODEC_JMSG(im_PresenceRequest, -1);
static const codec_jmsg_t codec_m_press =
    CODEC_JMSG_SUB(im_PresenceResponse, &codec_m_upres);
static const codec_jmsg_t codec_m_psubq =
    CODEC_JMSG(im_PresenceSubscribeRequest, -1);
static const codec_jmsg_t codec_m_psubs =
    CODEC_JMSG_SUB(im_PresenceSubscribeResponse, &codec_m_upres);
static const codec_jmsg_t codec_m_presp = CODEC_JMSG(im_PresencePush, -1);

/* A NUL-terminated char[size] member holds UTF-8. */
static int
codec_cstr_utf8(const char *s, size_t size)
{
    return imgw_utf8_valid((const uint8_t *)s, strnlen(s, size));
}

/*
 * Every string field of a decoded body must be UTF-8 (protobuf requires it
 * of `string`). One that is not would be stored and pushed as it came, and
 * a receiver's standard protobuf decoder then rejects that push and every
 * sync page holding it. nanopb can check this itself (PB_VALIDATE_UTF8),
 * but only when pb_decode.c is compiled with that define, and imgw links
 * the distribution's prebuilt libprotobuf-nanopb. The JSON reader fills the
 * same structs from /api/push and broker input, which no WebSocket layer
 * checked. So both codecs walk the field tables after decoding: singular
 * strings, map keys and values, repeated strings. bytes (content) are not
 * strings and may hold anything. Returns 0 or IMGW_EUTF8.
 */
static int
codec_strings_valid(const codec_jmsg_t *m, const void *st)
{
    const uint8_t *base = st;
    uint32_t k;
    pb_size_t i, n;

    for (k = 0; k < m->nf; k++) {
        const codec_jfield_t *f = &m->f[k];
        const uint8_t *p = base + f->off;

        switch ((codec_jkind_t)f->kind) {
        case CODEC_JK_STRING:
            if (!codec_cstr_utf8((const char *)p, f->size))
                return IMGW_EUTF8;
            break;
        case CODEC_JK_MAP: {
            const im_PushMessage_ExtraEntry *e =
                (const im_PushMessage_ExtraEntry *)p;

            n = *(const pb_size_t *)(base + f->count_off);
            for (i = 0; m->sub && i < n && i < f->size / f->elem; i++) {
                if (codec_strings_valid(m->sub, p + (size_t)i * f->elem))
                    return IMGW_EUTF8;
            }
            for (i = 0; !m->sub && i < n && i < f->size / f->elem; i++) {
                if (!codec_cstr_utf8(e[i].key, sizeof(e[i].key)) ||
                    !codec_cstr_utf8(e[i].value, sizeof(e[i].value)))
                    return IMGW_EUTF8;
            }
            break;
        }
        case CODEC_JK_STRINGS:
            n = *(const pb_size_t *)(base + f->count_off);
            for (i = 0; i < n && i < f->size / f->elem; i++) {
                if (!codec_cstr_utf8((const char *)(p + (size_t)i * f->elem),
                                     f->elem))
                    return IMGW_EUTF8;
            }
            break;
        default:
            break;
        }
    }
    return 0;
}

typedef struct codec_cmd_s {
    int command;
    int dir; /* CODEC_C2S, CODEC_S2C, or 0 (no body: CMD_UNKNOWN) */
    const codec_jmsg_t *msg;
} codec_cmd_t;

/*
 * The CommandType enum of proto/imgw.proto, in numeric order, with each
 * command's direction and body. The names come from the proto itself
 * (nanopb's im_CommandType_name(), enum_to_string in imgw.options).
 */
static const codec_cmd_t codec_cmds[] = {
    {0, 0, NULL},
    {1, CODEC_S2C, &codec_m_error},
    {5, CODEC_C2S, &codec_m_hbq},
    {6, CODEC_S2C, &codec_m_hbs},
    {100, CODEC_C2S, &codec_m_authq},
    {101, CODEC_S2C, &codec_m_auths},
    {102, CODEC_S2C, &codec_m_kick},
    {200, CODEC_C2S, &codec_m_sendq},
    {201, CODEC_S2C, &codec_m_sends},
    {202, CODEC_S2C, &codec_m_push},
    {203, CODEC_C2S, &codec_m_ack},
    {205, CODEC_C2S, &codec_m_revq},
    {206, CODEC_S2C, &codec_m_revs},
    {207, CODEC_S2C, &codec_m_revp},
    {300, CODEC_C2S, &codec_m_syncq},
    {301, CODEC_S2C, &codec_m_syncs},
    {500, CODEC_C2S, &codec_m_readq},
    {501, CODEC_S2C, &codec_m_reads},
    {502, CODEC_S2C, &codec_m_readp},
    {600, CODEC_C2S, &codec_m_typq},
    {602, CODEC_S2C, &codec_m_typp},
    {800, CODEC_C2S, &codec_m_presq},
    {801, CODEC_S2C, &codec_m_press},
    {802, CODEC_C2S, &codec_m_psubq},
    {803, CODEC_S2C, &codec_m_psubs},
    {804, CODEC_S2C, &codec_m_presp},
};
#define CODEC_NCMDS (sizeof(codec_cmds) / sizeof(codec_cmds[0]))

/* What nanopb's generated *_name() answers for a value outside its enum. */
#define CODEC_PB_NO_NAME "unknown"

static const char *
codec_cmd_name(const codec_cmd_t *ci)
{
    return im_CommandType_name((im_CommandType)ci->command);
}

/*
 * The ErrorCode values of proto/imgw.proto in numeric order, enumerated
 * once from nanopb's im_ErrorCode_name() over [_MIN, _MAX]: the proto is
 * the one list of the codes and their names (/metrics labels, JSON).
 */
static int codec_err_vals[IMGW_CODEC_MAX_ERRS];
static size_t codec_n_err_vals;
static pthread_once_t codec_errs_once = PTHREAD_ONCE_INIT;

static void
codec_errs_init(void)
{
    int v;

    for (v = _im_ErrorCode_MIN; v <= _im_ErrorCode_MAX; v++) {
        if (strcmp(im_ErrorCode_name((im_ErrorCode)v), CODEC_PB_NO_NAME) == 0)
            continue;
        /* IMGW_CODEC_MAX_ERRS is sized with room to spare: grow it when
         * the proto outgrows it. */
        if (codec_n_err_vals == IMGW_CODEC_MAX_ERRS)
            break;
        codec_err_vals[codec_n_err_vals++] = v;
    }
}

size_t
imgw_codec_err_count(void)
{
    pthread_once(&codec_errs_once, codec_errs_init);
    return codec_n_err_vals;
}

int
imgw_codec_err_value(size_t i)
{
    pthread_once(&codec_errs_once, codec_errs_init);
    return i < codec_n_err_vals ? codec_err_vals[i] : -1;
}

int
imgw_codec_err_index(int code)
{
    size_t lo = 0, hi = imgw_codec_err_count();

    while (lo < hi) { /* codec_err_vals is sorted */
        size_t mid = lo + (hi - lo) / 2;

        if (codec_err_vals[mid] == code)
            return (int)mid;
        if (codec_err_vals[mid] < code)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

const char *
imgw_codec_err_name(int code)
{
    return imgw_codec_err_index(code) >= 0
               ? im_ErrorCode_name((im_ErrorCode)code)
               : NULL;
}

static const codec_cmd_t *
codec_cmd_find(int command)
{
    size_t i;

    for (i = 0; i < CODEC_NCMDS; i++) {
        if (codec_cmds[i].command == command)
            return &codec_cmds[i];
    }
    return NULL;
}

static const codec_cmd_t *
codec_cmd_find_name(const char *name)
{
    size_t i;

    for (i = 0; i < CODEC_NCMDS; i++) {
        if (strcmp(codec_cmd_name(&codec_cmds[i]), name) == 0)
            return &codec_cmds[i];
    }
    return NULL;
}

const char *
imgw_codec_cmd_name(int command)
{
    const codec_cmd_t *ci = codec_cmd_find(command);

    return ci ? codec_cmd_name(ci) : NULL;
}

/* The JSON reader (below) is also used by the nanopb callbacks. */
typedef struct codec_jr_s codec_jr_t;
static int codec_jr_msg(const cJSON *obj, const codec_jmsg_t *m, void *st,
                        codec_jr_t *r);
static bool codec_msgs_json_encode_cb(pb_ostream_t *stream,
                                      const pb_field_t *field,
                                      void *const *arg);

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

static bool
codec_bytes_encode_cb(pb_ostream_t *stream, const pb_field_t *field,
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
    field->funcs.encode = codec_bytes_encode_cb;
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

static size_t
codec_varint_len(uint64_t v)
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
static int
codec_entry_load(const imgw_codec_entries_t *e, size_t i, im_PushMessage *pm,
                 imgw_slice_t *content)
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

    if (codec_entry_load(e, i, &pm, &content) != 0)
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
static bool
codec_entries_encode_cb(pb_ostream_t *stream, const pb_field_t *field,
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
 * JSON reader: cJSON tree -> nanopb struct (same field tables)
 * ======================================================================= */

struct codec_jr_s {
    uint8_t *scratch;      /* bytes fields are copied here; NULL: the slice
                              points into the cJSON tree */
    size_t cap;            /* of scratch */
    size_t used;           /* of scratch */
    imgw_slice_t *content; /* the slice a bytes field is decoded into */
    int utf8_content;      /* content must be UTF-8 (business input) */
};

static void
codec_jr_init(codec_jr_t *r, imgw_slice_t *content)
{
    r->scratch = NULL;
    r->cap = 0;
    r->used = 0;
    r->content = content;
    r->utf8_content = 1;
    content->ptr = NULL;
    content->len = 0;
}

/*
 * An integral JSON number within [lo, hi]. cJSON keeps numbers as doubles,
 * which hold integers exactly up to 2^53; protocol values (seqs, millis)
 * are far below, and bigger int64s can be sent as strings.
 */
int
imgw_codec_json_int(const void *item, int64_t lo, int64_t hi, int64_t *out)
{
    const cJSON *v = item;
    double d;
    int64_t i;

    if (!cJSON_IsNumber(v))
        return -1;
    d = v->valuedouble;
    if (!(d >= -0x1p63 && d < 0x1p63)) /* also false for NaN */
        return -1;
    i = (int64_t)d;
    if ((double)i != d || i < lo || i > hi)
        return -1;
    *out = i;
    return 0;
}

static int
codec_jr_num(const cJSON *v, int64_t lo, int64_t hi, int64_t *out)
{
    return imgw_codec_json_int(v, lo, hi, out);
}

/* "-?[0-9]+" within int64, nothing else (no spaces, signs, exponents). */
static int
codec_jr_i64_str(const char *s, int64_t *out)
{
    uint64_t v = 0, lim = (uint64_t)INT64_MAX;
    int neg = 0;

    if (*s == '-') {
        neg = 1;
        lim++;
        s++;
    }
    if (*s == '\0')
        return -1;
    for (; *s; s++) {
        unsigned d = (unsigned)(*s - '0');

        if (d > 9 || v > (lim - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    if (!neg)
        *out = (int64_t)v;
    else
        *out = v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
    return 0;
}

/* int64: a JSON number or a numeric string (protocol.md section 10). */
static int
codec_jr_i64(const cJSON *v, int64_t *out)
{
    if (cJSON_IsString(v))
        return codec_jr_i64_str(v->valuestring, out);
    return codec_jr_num(v, INT64_MIN, INT64_MAX, out);
}

static int
codec_jr_enum(const cJSON *v, int64_t *out)
{
    size_t i, n;

    if (cJSON_IsString(v)) {
        n = imgw_codec_err_count();
        for (i = 0; i < n; i++) {
            int code = imgw_codec_err_value(i);

            if (strcmp(im_ErrorCode_name((im_ErrorCode)code), v->valuestring) ==
                0) {
                *out = code;
                return 0;
            }
        }
        return -1;
    }
    /* proto3 enums are open: any non-negative int32 number is kept. */
    return codec_jr_num(v, 0, INT32_MAX, out);
}

/* A string that fits char[size] with its NUL. */
static int
codec_jr_cstr(const cJSON *v, char *dst, size_t size)
{
    size_t n;

    if (!cJSON_IsString(v))
        return -1;
    n = strlen(v->valuestring);
    if (n >= size)
        return -1;
    memcpy(dst, v->valuestring, n + 1);
    return 0;
}

static int
codec_jr_bytes(const cJSON *v, pb_callback_t *cb, codec_jr_t *r)
{
    size_t n;

    if (!cJSON_IsString(v))
        return -1;
    n = strlen(v->valuestring);
    if (n > CODEC_MAX_BYTES)
        return -1;
    /* Business input (/api/push, the broker): content is a JSON string,
     * which must be UTF-8 (RFC 8259); one that is not is refused like any
     * malformed downlink (issue 12 item 5) instead of reaching JSON
     * clients with U+FFFD in place of what the business sent. cJSON does
     * not check. Protobuf clients' bytes never pass through here. */
    if (r->utf8_content &&
        !imgw_utf8_valid((const uint8_t *)v->valuestring, n))
        return IMGW_EUTF8;
    if (r->scratch) {
        /* The decoded string is never longer than its JSON text, so a
         * scratch of len bytes always fits; check anyway. */
        if (n > r->cap - r->used)
            return -1;
        if (n)
            memcpy(r->scratch + r->used, v->valuestring, n);
        r->content->ptr = r->scratch + r->used;
        r->used += n;
    } else {
        r->content->ptr = (const uint8_t *)v->valuestring;
    }
    r->content->len = n;
    imgw_codec_set_bytes(cb, r->content);
    return 0;
}

static int
codec_jr_map(const cJSON *v, const codec_jfield_t *f, uint8_t *st)
{
    im_PushMessage_ExtraEntry *e;
    const cJSON *c;
    pb_size_t n = 0;

    if (!cJSON_IsObject(v))
        return -1;
    for (c = v->child; c; c = c->next) {
        if (n >= f->size / f->elem || c->string == NULL)
            return -1;
        e = (im_PushMessage_ExtraEntry *)(st + f->off + (size_t)n * f->elem);
        if (strlen(c->string) >= sizeof(e->key))
            return -1;
        memcpy(e->key, c->string, strlen(c->string) + 1);
        if (codec_jr_cstr(c, e->value, sizeof(e->value)) != 0)
            return -1;
        n++;
    }
    *(pb_size_t *)(st + f->count_off) = n;
    return 0;
}

/* A repeated submessage (codec_jmsg_t.sub): an array of objects. */
static int
codec_jr_subs(const cJSON *v, const codec_jfield_t *f, uint8_t *st,
              const codec_jmsg_t *sub, codec_jr_t *r)
{
    const cJSON *c;
    pb_size_t n = 0;

    if (!cJSON_IsArray(v))
        return -1;
    for (c = v->child; c; c = c->next) {
        if (n >= f->size / f->elem || !cJSON_IsObject(c) ||
            codec_jr_msg(c, sub, st + f->off + (size_t)n * f->elem, r) != 0)
            return -1;
        n++;
    }
    *(pb_size_t *)(st + f->count_off) = n;
    return 0;
}

static int
codec_jr_strings(const cJSON *v, const codec_jfield_t *f, uint8_t *st)
{
    const cJSON *c;
    pb_size_t n = 0;

    if (!cJSON_IsArray(v))
        return -1;
    for (c = v->child; c; c = c->next) {
        if (n >= f->size / f->elem ||
            codec_jr_cstr(c, (char *)(st + f->off + (size_t)n * f->elem),
                          f->elem) != 0)
            return -1;
        n++;
    }
    *(pb_size_t *)(st + f->count_off) = n;
    return 0;
}

/*
 * SyncResponse.messages from JSON: validated here, element by element, and
 * read again when encoded (codec_msgs_json_encode_cb, codec_jw_msgs), so
 * no storage for 500 decoded messages is needed.
 */
static CODEC_NOINLINE int
codec_jr_msgs(const cJSON *v, pb_callback_t *cb)
{
    im_PushMessage pm;
    imgw_slice_t content;
    codec_jr_t r;
    const cJSON *c;
    size_t n = 0;
    int rc;

    if (!cJSON_IsArray(v))
        return -1;
    for (c = v->child; c; c = c->next) {
        codec_jr_init(&r, &content);
        if (++n > CODEC_SYNC_MAX || !cJSON_IsObject(c))
            return -1;
        rc = codec_jr_msg(c, &codec_m_push, &pm, &r);
        if (rc != 0)
            return rc;
    }
    cb->funcs.encode = codec_msgs_json_encode_cb;
    cb->arg = (void *)(uintptr_t)v; /* read-only; pb_callback_t has no const */
    return 0;
}

static int
codec_jr_field(const cJSON *v, const codec_jfield_t *f, uint8_t *st,
               const codec_jmsg_t *sub, codec_jr_t *r)
{
    uint8_t *p = st + f->off;
    int64_t i;

    /* proto3 JSON: null means "default", and the struct starts zeroed. */
    if (cJSON_IsNull(v))
        return 0;
    switch ((codec_jkind_t)f->kind) {
    case CODEC_JK_STRING:
        return codec_jr_cstr(v, (char *)p, f->size);
    case CODEC_JK_INT32:
        if (codec_jr_num(v, INT32_MIN, INT32_MAX, &i) != 0)
            return -1;
        *(int32_t *)p = (int32_t)i;
        return 0;
    case CODEC_JK_INT64:
        return codec_jr_i64(v, (int64_t *)p);
    case CODEC_JK_ENUM:
        if (codec_jr_enum(v, &i) != 0)
            return -1;
        *(im_ErrorCode *)p = (im_ErrorCode)i;
        return 0;
    case CODEC_JK_BOOL:
        if (!cJSON_IsBool(v))
            return -1;
        *(bool *)p = cJSON_IsTrue(v) ? true : false;
        return 0;
    case CODEC_JK_BYTES:
        return codec_jr_bytes(v, (pb_callback_t *)p, r);
    case CODEC_JK_MAP:
        if (sub)
            return codec_jr_subs(v, f, st, sub, r);
        return codec_jr_map(v, f, st);
    case CODEC_JK_STRINGS:
        return codec_jr_strings(v, f, st);
    case CODEC_JK_MSGS:
        return codec_jr_msgs(v, (pb_callback_t *)p);
    }
    return -1;
}

/*
 * Fills st (zeroed first) from a JSON object: keys are proto field names,
 * unknown keys are ignored, NULL or null is an all-default body. Returns 0,
 * IMGW_EDECODE, or IMGW_EUTF8 for a string field that is not UTF-8 (cJSON
 * does not check raw bytes, and /api/push and broker input never went
 * through a WebSocket text frame check).
 */
static int
codec_jr_msg(const cJSON *obj, const codec_jmsg_t *m, void *st,
             codec_jr_t *r)
{
    const cJSON *c;
    uint32_t k;
    int rc;

    memset(st, 0, m->size);
    if (obj == NULL || cJSON_IsNull(obj))
        return 0;
    if (!cJSON_IsObject(obj))
        return IMGW_EDECODE;
    for (c = obj->child; c; c = c->next) {
        if (c->string == NULL)
            continue;
        for (k = 0; k < m->nf; k++) {
            if (strcmp(m->f[k].name, c->string) == 0)
                break;
        }
        if (k < m->nf && (rc = codec_jr_field(c, &m->f[k], st, m->sub, r)) != 0)
            return rc == IMGW_EUTF8 ? IMGW_EUTF8 : IMGW_EDECODE;
    }
    return codec_strings_valid(m, st);
}

static CODEC_NOINLINE bool
codec_msg_json_encode_one(pb_ostream_t *stream, const pb_field_t *field,
                          const cJSON *c)
{
    im_PushMessage pm;
    imgw_slice_t content;
    codec_jr_t r;

    codec_jr_init(&r, &content);
    if (codec_jr_msg(c, &codec_m_push, &pm, &r) != 0)
        return false;
    return pb_encode_tag_for_field(stream, field) &&
           pb_encode_submessage(stream, &im_PushMessage_msg, &pm);
}

static bool
codec_msgs_json_encode_cb(pb_ostream_t *stream, const pb_field_t *field,
                          void *const *arg)
{
    const cJSON *c;

    for (c = *arg ? ((const cJSON *)*arg)->child : NULL; c; c = c->next) {
        if (!codec_msg_json_encode_one(stream, field, c))
            return false;
    }
    return true;
}

/* =======================================================================
 * Protobuf decode
 * ======================================================================= */

static int
codec_decode_pb(const uint8_t *data, size_t len, imgw_msg_in_t *out)
{
    im_WebSocketMessage env;
    imgw_slice_t body;
    codec_slice_dec_t bd, cd;
    const codec_cmd_t *ci;
    pb_istream_t is;
    bool ok;

    /* The body is bounded only by the frame itself. */
    codec_slice_dec_init(&bd, &env.body, &body, data, len, SIZE_MAX);
    is = pb_istream_from_buffer(data, len);
    if (!pb_decode(&is, &im_WebSocketMessage_msg, &env))
        return IMGW_EENVELOPE;

    out->command = (int)env.command;
    out->sequence = env.sequence;
    out->timestamp = env.timestamp;
    ci = codec_cmd_find(out->command);
    if (ci == NULL || ci->dir != CODEC_C2S)
        return IMGW_EUNKNOWNCMD;

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
    return codec_strings_valid(ci->msg, &out->u);
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

/*
 * codec.h's contract for callback fields is about arg only (a slice for
 * PushMessage.content, entries for SyncResponse.messages); nanopb also
 * needs funcs.encode. A PushMessage prepared with imgw_codec_set_bytes (or
 * filled by imgw_codec_decode_push) and any SyncResponse that went through
 * here before are used as they are; otherwise the body is copied once to
 * set the encoder (codec_encode_pb_copy), ~11 KiB of memcpy for a push.
 */
static int
codec_needs_copy(int command, const void *body)
{
    if (command == im_CommandType_CMD_PUSH_MSG)
        return ((const im_PushMessage *)body)->content.funcs.encode !=
               codec_bytes_encode_cb;
    if (command == im_CommandType_CMD_SYNC_RSP) {
        const im_SyncResponse *sr = body;

        return sr->messages.funcs.encode != codec_entries_encode_cb &&
               sr->messages.funcs.encode != codec_msgs_json_encode_cb;
    }
    return 0;
}

/*
 * Runs pb_encode into out. nanopb reports "stream full" and bad input the
 * same way, so a failure is re-run on a sizing stream (failure path only):
 * if that succeeds, the buffer was too small.
 */
static ssize_t
codec_pb_run(const pb_msgdesc_t *desc, const void *st, uint8_t *out,
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
    os = pb_ostream_from_buffer(out + CODEC_PB_HDR_MAX,
                                cap - CODEC_PB_HDR_MAX);
    if (!pb_encode(&os, ci->msg->desc, body))
        return -1;
    bl = os.bytes_written;
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
        if (cap - n < 1 + codec_varint_len((uint64_t)timestamp))
            return -1;
        out[n++] = 0x20; /* timestamp (field 4) */
        n += codec_varint(out + n, (uint64_t)timestamp);
    }
    return (ssize_t)n;
}

static ssize_t
codec_encode_pb(const codec_cmd_t *ci, uint32_t sequence, int64_t timestamp,
                const void *body, uint8_t *out, size_t cap)
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
    return codec_pb_run(&im_WebSocketMessage_msg, &env, out, cap);
}

/*
 * The copy path of codec_needs_copy(): envelope (whole frame) or body only
 * (envelope == 0).
 */
static CODEC_NOINLINE ssize_t
codec_encode_pb_copy(const codec_cmd_t *ci, int envelope, uint32_t sequence,
                     int64_t timestamp, const void *body, uint8_t *out,
                     size_t cap)
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
        tmp.sync.messages.funcs.encode = codec_entries_encode_cb;
    }
    if (envelope)
        return codec_encode_pb(ci, sequence, timestamp, &tmp, out, cap);
    return codec_pb_run(ci->msg->desc, &tmp, out, cap);
}

ssize_t
imgw_codec_encode_pb_body(int command, const void *body, uint8_t *out,
                          size_t cap)
{
    const codec_cmd_t *ci = codec_cmd_find(command);

    if (ci == NULL || ci->msg == NULL || body == NULL)
        return IMGW_EINVAL;
    if (codec_needs_copy(command, body))
        return codec_encode_pb_copy(ci, 0, 0, 0, body, out, cap);
    return codec_pb_run(ci->msg->desc, body, out, cap);
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
                                   codec_varint_len((uint64_t)seq));
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

/* =======================================================================
 * JSON writer: bounds-checked, never allocates
 * ======================================================================= */

typedef struct codec_jw_s {
    uint8_t *p;  /* next byte to write */
    size_t left; /* bytes left at p */
    int err;     /* first error: IMGW_ETOOBIG or IMGW_EINVAL; 0 = none */
    size_t over; /* bytes that did not fit once err is ETOOBIG, so a
                    writer with no room at all measures the text */
} codec_jw_t;

static void
codec_jw_fail(codec_jw_t *w, int err)
{
    if (w->err == 0)
        w->err = err;
    w->left = 0;
}

static inline void
codec_jw_put(codec_jw_t *w, const void *s, size_t n)
{
    if (n > w->left) {
        codec_jw_fail(w, IMGW_ETOOBIG);
        w->over += n;
        return;
    }
    if (n) {
        memcpy(w->p, s, n);
        w->p += n;
        w->left -= n;
    }
}

#define codec_jw_lit(w, s) codec_jw_put((w), (s), sizeof(s) - 1)

static inline void
codec_jw_ch(codec_jw_t *w, uint8_t c)
{
    if (w->left == 0) {
        codec_jw_fail(w, IMGW_ETOOBIG);
        w->over++;
        return;
    }
    *w->p++ = c;
    w->left--;
}

static void
codec_jw_u64(codec_jw_t *w, uint64_t v, int neg)
{
    uint8_t buf[21];
    size_t i = sizeof(buf);

    do {
        buf[--i] = (uint8_t)('0' + v % 10);
        v /= 10;
    } while (v);
    if (neg)
        buf[--i] = '-';
    codec_jw_put(w, buf + i, sizeof(buf) - i);
}

static void
codec_jw_i64(codec_jw_t *w, int64_t v)
{
    if (v < 0)
        codec_jw_u64(w, 0 - (uint64_t)v, 1);
    else
        codec_jw_u64(w, (uint64_t)v, 0);
}

/*
 * A JSON string literal of n bytes, escaped by base's one escaper
 * (json.h: quote, backslash and control characters escaped, bytes that
 * start no valid UTF-8 sequence replaced by U+FFFD), so the frame is valid
 * JSON and a valid WebSocket text frame whatever bytes were stored.
 */
static void
codec_jw_str(codec_jw_t *w, const uint8_t *s, size_t n)
{
    codec_jw_ch(w, '"');
    size_t need = imgw_json_escape(w->p, w->left, s, n);
    if (need > w->left) {
        codec_jw_fail(w, IMGW_ETOOBIG);
        w->over += need;
    } else if (need > 0) { /* a measuring writer's p is NULL */
        w->p += need;
        w->left -= need;
    }
    codec_jw_ch(w, '"');
}

/* A NUL-terminated char[size] member. */
static void
codec_jw_cstr(codec_jw_t *w, const char *s, size_t size)
{
    codec_jw_str(w, (const uint8_t *)s, strnlen(s, size));
}

static void
codec_jw_key(codec_jw_t *w, const char *name)
{
    codec_jw_ch(w, '"');
    codec_jw_put(w, name, strlen(name));
    codec_jw_lit(w, "\":");
}

static void codec_jw_msg(codec_jw_t *w, const codec_jmsg_t *m,
                         const void *st, int prefix);

/* One SyncResponse entry read back from a validated JSON array element. */
static CODEC_NOINLINE void
codec_jw_json_entry(codec_jw_t *w, const cJSON *c)
{
    im_PushMessage pm;
    imgw_slice_t content;
    codec_jr_t r;

    codec_jr_init(&r, &content);
    if (codec_jr_msg(c, &codec_m_push, &pm, &r) != 0) {
        codec_jw_fail(w, IMGW_EINVAL);
        return;
    }
    codec_jw_msg(w, &codec_m_push, &pm, 0);
}

static CODEC_NOINLINE void
codec_jw_stored_entry(codec_jw_t *w, const imgw_codec_entries_t *e, size_t i)
{
    im_PushMessage pm;
    imgw_slice_t content;

    if (codec_entry_load(e, i, &pm, &content) != 0) {
        codec_jw_fail(w, IMGW_EINVAL);
        return;
    }
    codec_jw_msg(w, &codec_m_push, &pm, 0);
}

/* SyncResponse.messages: every entry as a complete PushMessage object. */
static void
codec_jw_msgs(codec_jw_t *w, const pb_callback_t *cb)
{
    size_t i;

    codec_jw_ch(w, '[');
    if (cb->funcs.encode == codec_msgs_json_encode_cb) {
        const cJSON *c = cb->arg ? ((const cJSON *)cb->arg)->child : NULL;

        for (i = 0; c; c = c->next, i++) {
            if (i)
                codec_jw_ch(w, ',');
            codec_jw_json_entry(w, c);
        }
    } else if (cb->arg) {
        const imgw_codec_entries_t *e = cb->arg;

        if (e->n > CODEC_SYNC_MAX || (e->n && (!e->blob || !e->seq))) {
            codec_jw_fail(w, IMGW_EINVAL);
            return;
        }
        for (i = 0; i < e->n && !w->err; i++) {
            if (i)
                codec_jw_ch(w, ',');
            codec_jw_stored_entry(w, e, i);
        }
    }
    codec_jw_ch(w, ']');
}

static const char *
codec_err_name(int code)
{
    return imgw_codec_err_name(code);
}

static void
codec_jw_field(codec_jw_t *w, const codec_jfield_t *f, const uint8_t *st,
               const codec_jmsg_t *sub)
{
    const uint8_t *p = st + f->off;
    const char *name;
    pb_size_t i, n;

    codec_jw_key(w, f->name);
    switch ((codec_jkind_t)f->kind) {
    case CODEC_JK_STRING:
        codec_jw_cstr(w, (const char *)p, f->size);
        break;
    case CODEC_JK_INT32:
        codec_jw_i64(w, *(const int32_t *)p);
        break;
    case CODEC_JK_INT64:
        codec_jw_i64(w, *(const int64_t *)p);
        break;
    case CODEC_JK_ENUM:
        /* By name; a value this build does not know goes out as a number
         * (proto3 JSON mapping). */
        name = codec_err_name((int)*(const im_ErrorCode *)p);
        if (name) {
            codec_jw_ch(w, '"');
            codec_jw_put(w, name, strlen(name));
            codec_jw_ch(w, '"');
        } else {
            codec_jw_i64(w, (int64_t)*(const im_ErrorCode *)p);
        }
        break;
    case CODEC_JK_BOOL:
        if (*(const bool *)p)
            codec_jw_lit(w, "true");
        else
            codec_jw_lit(w, "false");
        break;
    case CODEC_JK_BYTES: {
        const imgw_slice_t *s = ((const pb_callback_t *)p)->arg;

        codec_jw_str(w, s ? s->ptr : NULL, s ? s->len : 0);
        break;
    }
    case CODEC_JK_MAP: {
        const im_PushMessage_ExtraEntry *e =
            (const im_PushMessage_ExtraEntry *)p;

        n = *(const pb_size_t *)(st + f->count_off);
        if (sub) {
            codec_jw_ch(w, '[');
            for (i = 0; i < n && i < f->size / f->elem; i++) {
                if (i)
                    codec_jw_ch(w, ',');
                codec_jw_msg(w, sub, p + (size_t)i * f->elem, 0);
            }
            codec_jw_ch(w, ']');
            break;
        }
        codec_jw_ch(w, '{');
        for (i = 0; i < n && i < f->size / f->elem; i++) {
            if (i)
                codec_jw_ch(w, ',');
            codec_jw_cstr(w, e[i].key, sizeof(e[i].key));
            codec_jw_ch(w, ':');
            codec_jw_cstr(w, e[i].value, sizeof(e[i].value));
        }
        codec_jw_ch(w, '}');
        break;
    }
    case CODEC_JK_STRINGS:
        n = *(const pb_size_t *)(st + f->count_off);
        codec_jw_ch(w, '[');
        for (i = 0; i < n && i < f->size / f->elem; i++) {
            if (i)
                codec_jw_ch(w, ',');
            codec_jw_cstr(w, (const char *)(p + (size_t)i * f->elem),
                          f->elem);
        }
        codec_jw_ch(w, ']');
        break;
    case CODEC_JK_MSGS:
        codec_jw_msgs(w, (const pb_callback_t *)p);
        break;
    }
}

/*
 * A body object with every field, defaults included (clients like seeing
 * "error_code":"ERR_SUCCESS" and "seq":0). m->last goes last; with prefix
 * the object stops right after that field's key (fan-out prefix).
 */
static void
codec_jw_msg(codec_jw_t *w, const codec_jmsg_t *m, const void *st,
             int prefix)
{
    uint32_t k, n = 0;

    codec_jw_ch(w, '{');
    for (k = 0; k < m->nf; k++) {
        if ((int32_t)k == m->last)
            continue;
        if (n++)
            codec_jw_ch(w, ',');
        codec_jw_field(w, &m->f[k], st, m->sub);
    }
    if (m->last >= 0) {
        if (n++)
            codec_jw_ch(w, ',');
        if (prefix) {
            codec_jw_key(w, m->f[m->last].name);
            return;
        }
        codec_jw_field(w, &m->f[m->last], st, m->sub);
    }
    codec_jw_ch(w, '}');
}

/* {"command":"NAME","sequence":S,"timestamp":T,"body": */
static void
codec_jw_head(codec_jw_t *w, const codec_cmd_t *ci, uint32_t sequence,
              int64_t timestamp)
{
    codec_jw_lit(w, "{\"command\":\"");
    codec_jw_put(w, codec_cmd_name(ci), strlen(codec_cmd_name(ci)));
    codec_jw_lit(w, "\",\"sequence\":");
    codec_jw_u64(w, sequence, 0);
    codec_jw_lit(w, ",\"timestamp\":");
    codec_jw_i64(w, timestamp);
    codec_jw_lit(w, ",\"body\":");
}

static ssize_t
codec_encode_json(const codec_cmd_t *ci, uint32_t sequence,
                  int64_t timestamp, const void *body, uint8_t *out,
                  size_t cap)
{
    codec_jw_t w = {out, out ? cap : 0, 0, 0};

    codec_jw_head(&w, ci, sequence, timestamp);
    codec_jw_msg(&w, ci->msg, body, 0);
    codec_jw_ch(&w, '}');
    return w.err ? w.err : (ssize_t)(w.p - out);
}

ssize_t
imgw_codec_encode_json_body(int command, const void *body, uint8_t *out,
                            size_t cap)
{
    const codec_cmd_t *ci = codec_cmd_find(command);

    if (ci == NULL || ci->dir != CODEC_S2C || body == NULL)
        return IMGW_EINVAL;
    codec_jw_t w = {out, out ? cap : 0, 0, 0};
    codec_jw_msg(&w, ci->msg, body, 0);
    return w.err ? w.err : (ssize_t)(w.p - out);
}

/* =======================================================================
 * JSON decode
 * ======================================================================= */

/*
 * Refuses nesting deeper than IMGW_JSON_MAX_DEPTH before cJSON (which
 * recurses per level) sees the text, and U+0000 in any form: a \u0000
 * escape or a raw NUL byte (valid UTF-8, so a text frame may carry it).
 * cJSON hands strings out NUL-terminated, so either would silently cut the
 * field, content included, where the docs promise ERR_INVALID_PARAM.
 * Brackets inside strings do not count; a backslash skips the next byte so
 * \" does not end a string.
 */
static int
codec_json_depth_ok(const uint8_t *p, size_t n)
{
    size_t i;
    int depth = 0;

    if (n && memchr(p, 0, n) != NULL)
        return 0;
    for (i = 0; i < n; i++) {
        switch (p[i]) {
        case '"':
            for (i++; i < n && p[i] != '"'; i++) {
                if (p[i] != '\\')
                    continue;
                /* cJSON ends a string at \u0000: refuse it rather than
                 * silently truncate (strings here are NUL-terminated). */
                if (i + 5 < n && p[i + 1] == 'u' &&
                    memcmp(p + i + 2, "0000", 4) == 0)
                    return 0;
                i++;
            }
            break;
        case '{':
        case '[':
            if (++depth > IMGW_JSON_MAX_DEPTH)
                return 0;
            break;
        case '}':
        case ']':
            depth--;
            break;
        default:
            break;
        }
    }
    return 1;
}

static int
codec_decode_json_tree(const cJSON *root, imgw_msg_in_t *out,
                       uint8_t *scratch, size_t scratch_cap)
{
    const codec_cmd_t *ci = NULL;
    const cJSON *v;
    codec_jr_t r;
    int64_t i;
    int rc;

    if (!cJSON_IsObject(root))
        return IMGW_EENVELOPE;
    v = cJSON_GetObjectItemCaseSensitive(root, "sequence");
    if (v != NULL && !cJSON_IsNull(v)) {
        if (codec_jr_num(v, 0, UINT32_MAX, &i) != 0)
            return IMGW_EENVELOPE;
        out->sequence = (uint32_t)i;
    }

    /* From here on the sequence is known, so errors can echo it. */
    v = cJSON_GetObjectItemCaseSensitive(root, "command");
    if (cJSON_IsString(v)) {
        ci = codec_cmd_find_name(v->valuestring);
    } else if (codec_jr_num(v, INT32_MIN, INT32_MAX, &i) == 0) {
        out->command = (int)i;
        ci = codec_cmd_find((int)i);
    }
    if (ci == NULL || ci->dir != CODEC_C2S)
        return IMGW_EUNKNOWNCMD;
    out->command = ci->command;

    v = cJSON_GetObjectItemCaseSensitive(root, "timestamp");
    if (v != NULL && !cJSON_IsNull(v) &&
        codec_jr_i64(v, &out->timestamp) != 0)
        return IMGW_EDECODE;

    codec_jr_init(&r, &out->content);
    r.scratch = scratch;
    /* A client's JSON frame arrived as a WebSocket text frame, which the
     * ws layer has checked already; keep its content as it came. */
    r.utf8_content = 0;
    r.cap = scratch ? scratch_cap : 0;
    rc = codec_jr_msg(cJSON_GetObjectItemCaseSensitive(root, "body"), ci->msg,
                      &out->u, &r);
    if (rc != 0)
        return rc;
    if (out->command == im_CommandType_CMD_SEND_MSG_REQ)
        imgw_codec_set_bytes(&out->u.send.content, &out->content);
    return 0;
}

int
imgw_codec_json_prescan(const uint8_t *p, size_t n)
{
    return codec_json_depth_ok(p, n);
}

static int
codec_decode_json(const uint8_t *data, size_t len, imgw_msg_in_t *out,
                  uint8_t *scratch, size_t scratch_cap)
{
    const char *end = NULL;
    cJSON *root;
    int rc;

    if (len == 0 || !codec_json_depth_ok(data, len))
        return IMGW_EENVELOPE;
    root = cJSON_ParseWithLengthOpts((const char *)data, len, &end, 0);
    if (root == NULL)
        return IMGW_EENVELOPE;
    /* One frame is one value: only whitespace may follow it. */
    for (; end && end < (const char *)data + len; end++) {
        if (*end != ' ' && *end != '\t' && *end != '\n' && *end != '\r') {
            cJSON_Delete(root);
            return IMGW_EENVELOPE;
        }
    }
    rc = codec_decode_json_tree(root, out, scratch, scratch_cap);
    cJSON_Delete(root);
    return rc;
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
        rc = codec_decode_pb(data, len, out);
    else if (codec == IMGW_CODEC_JSON)
        rc = codec_decode_json(data, len, out, scratch, scratch_cap);
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
    const codec_cmd_t *ci = codec_cmd_find(command);

    if (ci == NULL || ci->dir != CODEC_S2C || body == NULL)
        return IMGW_EINVAL;
    if (codec == IMGW_CODEC_PB) {
        if (codec_needs_copy(command, body))
            return codec_encode_pb_copy(ci, 1, sequence, timestamp, body,
                                        out, cap);
        return codec_encode_pb(ci, sequence, timestamp, body, out, cap);
    }
    if (codec == IMGW_CODEC_JSON)
        return codec_encode_json(ci, sequence, timestamp, body, out, cap);
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
    im_PresenceResponse presence;
    im_PresenceSubscribeResponse presence_sub;
    im_PresencePush presence_push;
} codec_s2c_t;

ssize_t
imgw_codec_encode_from_json(imgw_codec_t codec, int command,
                            const void *data, int64_t timestamp,
                            uint8_t *out, size_t cap)
{
    const codec_cmd_t *ci = codec_cmd_find(command);
    imgw_slice_t content;
    codec_s2c_t body;
    codec_jr_t r;
    int rc;

    if (ci == NULL || ci->dir != CODEC_S2C)
        return IMGW_EUNKNOWNCMD;
    if (codec != IMGW_CODEC_PB && codec != IMGW_CODEC_JSON)
        return IMGW_EINVAL;
    /* content points into the cJSON tree, which outlives this call. */
    codec_jr_init(&r, &content);
    rc = codec_jr_msg(data, ci->msg, &body, &r);
    if (rc != 0)
        return rc;
    if (command == im_CommandType_CMD_PUSH_MSG)
        imgw_codec_set_bytes(&body.push.content, &content);
    if (codec == IMGW_CODEC_JSON)
        return codec_encode_json(ci, 0, timestamp, &body, out, cap);
    /* A SyncResponse without "messages" keeps a NULL callback: none. */
    return codec_encode_pb(ci, 0, timestamp, &body, out, cap);
}

ssize_t
imgw_codec_push_json_prefix(const uint8_t *blob, size_t blob_len,
                            int64_t timestamp, uint8_t *out, size_t cap)
{
    const codec_cmd_t *ci = codec_cmd_find(im_CommandType_CMD_PUSH_MSG);
    codec_jw_t w = {out, out ? cap : 0, 0, 0};
    im_PushMessage pm;
    imgw_slice_t content;

    if (imgw_codec_decode_push(blob, blob_len, &pm, &content) != 0)
        return IMGW_EDECODE;
    codec_jw_head(&w, ci, 0, timestamp);
    codec_jw_msg(&w, &codec_m_push, &pm, 1);
    return w.err ? w.err : (ssize_t)(w.p - out);
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

    if (codec_entry_load(&e, 0, &pm, &content) != 0)
        return IMGW_EINVAL;
    if (codec == IMGW_CODEC_PB) {
        if (!pb_get_encoded_size(&n, &im_PushMessage_msg, &pm))
            return IMGW_EINVAL;
        return (ssize_t)(1 + codec_varint_len(n) + n);
    } else {
        /* A writer with no room measures (codec_jw_t.over). */
        codec_jw_t w = {NULL, 0, 0, 0};

        codec_jw_msg(&w, &codec_m_push, &pm, 0);
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
        /* Copied as stored, seq appended (codec_entries_encode_cb). */
        tn = 1 + codec_varint_len((uint64_t)seq);
        return (ssize_t)(1 + codec_varint_len(len + tn) + len + tn);
    }
    return codec_sync_entry_size_slow(codec, blob, len, seq, revoked);
}
