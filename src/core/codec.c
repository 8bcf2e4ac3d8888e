/*
 * codec.c: what a command is, for both wire codecs (see codec.h;
 * protocol.md sections 2, 3, 8 and 10; the JSON mapping is written down in
 * docs/protocol-json.md): the command table (number, name, direction,
 * body), the error code names, the per-message field tables built from the
 * generated *_FIELDLIST macros, and the UTF-8 check of a decoded body's
 * string fields. The bottom of the codec; it calls none of the others.
 *
 * The codec is four files, calls running one way (tools/callcycles.py):
 *
 *   codec_dispatch.c  codec.h's entry points: picks the codec, sync page
 *                     sizing, the downlink JSON -> frame path
 *   codec_json.c      JSON: reader (cJSON tree -> nanopb struct) and writer
 *   codec_pb.c        protobuf: nanopb callbacks, decode, encode, fan-out
 *                     parts
 *   codec.c           this file: the tables both codecs read
 *
 * codec_int.h is what they share. The field tables mean a field added to
 * the .proto shows up in JSON without touching the codec.
 *
 * Every decoded body (both codecs, client frames and downlink JSON) has
 * its string fields checked for UTF-8 through the same field tables
 * (imgw__codec_strings_valid); bytes fields are not strings and stay
 * unchecked.
 *
 * Threads: any. Every function works on caller memory and the read-only
 * tables below; the error values are enumerated once (pthread_once).
 */
#include "codec_int.h"

#include <pthread.h>
#include <string.h>

#include "utf8.h"
#include "err.h"

/* =======================================================================
 * Tables: command names, error code names, and per-message field tables
 * ======================================================================= */

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

#define CODEC_JREP_STATIC_SINGULAR(T, n) 0, 0
#define CODEC_JREP_CALLBACK_SINGULAR(T, n) 0, 0
#define CODEC_JREP_CALLBACK_REPEATED(T, n) 0, 0
#define CODEC_JREP_STATIC_REPEATED(T, n)                                     \
    offsetof(T, n##_count), sizeof(((T *)0)->n[0])
#define CODEC_JF(T, atype, htype, ltype, n, tag)                             \
    {#n, CODEC_JK_##atype##_##htype##_##ltype, offsetof(T, n),               \
     sizeof(((T *)0)->n), CODEC_JREP_##atype##_##htype(T, n)},
#define CODEC_JIDX(T, atype, htype, ltype, n, tag) T##_jidx_##n,

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
CODEC_JFIELDS(im_ConversationListRequest)
CODEC_JFIELDS(im_Conversation)
CODEC_JFIELDS(im_ConversationListResponse)
CODEC_JFIELDS(im_ConversationDeleteRequest)
CODEC_JFIELDS(im_ConversationDeleteResponse)
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
const codec_jmsg_t imgw__codec_m_push =
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
static const codec_jmsg_t codec_m_convlq =
    CODEC_JMSG(im_ConversationListRequest, -1);
static const codec_jmsg_t codec_m_conv = CODEC_JMSG(im_Conversation, -1);
static const codec_jmsg_t codec_m_convls =
    CODEC_JMSG_SUB(im_ConversationListResponse, &codec_m_conv);
static const codec_jmsg_t codec_m_convdq =
    CODEC_JMSG(im_ConversationDeleteRequest, -1);
static const codec_jmsg_t codec_m_convds =
    CODEC_JMSG(im_ConversationDeleteResponse, -1);
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
    return imgw_utf8_valid_cstr(s, size);
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
int
imgw__codec_strings_valid(const codec_jmsg_t *m, const void *st)
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
                if (imgw__codec_strings_valid(m->sub,
                                              p + (size_t)i * f->elem))
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
    {202, CODEC_S2C, &imgw__codec_m_push},
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
    {700, CODEC_C2S, &codec_m_convlq},
    {701, CODEC_S2C, &codec_m_convls},
    {702, CODEC_C2S, &codec_m_convdq},
    {703, CODEC_S2C, &codec_m_convds},
    {800, CODEC_C2S, &codec_m_presq},
    {801, CODEC_S2C, &codec_m_press},
    {802, CODEC_C2S, &codec_m_psubq},
    {803, CODEC_S2C, &codec_m_psubs},
    {804, CODEC_S2C, &codec_m_presp},
};
#define CODEC_NCMDS (sizeof(codec_cmds) / sizeof(codec_cmds[0]))

/* What nanopb's generated *_name() answers for a value outside its enum. */
#define CODEC_PB_NO_NAME "unknown"

const char *
imgw__codec_cmd_name(const codec_cmd_t *ci)
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

const codec_cmd_t *
imgw__codec_cmd_find(int command)
{
    /* Binary search: codec_cmds is in numeric order (test_codec checks
     * every value against the proto's names), and this runs for every
     * frame in and out, where a walk of the table cost ~60 instructions. */
    size_t lo = 0, hi = CODEC_NCMDS;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;

        if (codec_cmds[mid].command == command)
            return &codec_cmds[mid];
        if (codec_cmds[mid].command < command)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

const codec_cmd_t *
imgw__codec_cmd_find_name(const char *name)
{
    size_t i;

    for (i = 0; i < CODEC_NCMDS; i++) {
        if (strcmp(imgw__codec_cmd_name(&codec_cmds[i]), name) == 0)
            return &codec_cmds[i];
    }
    return NULL;
}

const char *
imgw_codec_cmd_name(int command)
{
    const codec_cmd_t *ci = imgw__codec_cmd_find(command);

    return ci ? imgw__codec_cmd_name(ci) : NULL;
}
