/*
 * test_codec.c: unit tests for src/core/codec*.c, both wire codecs.
 *
 * Frames the codec writes are opened here with nanopb and cJSON directly,
 * and client frames are built here by hand (pb_encode, JSON text), so the
 * codec is checked against the libraries, not against itself. Buffers fed
 * to decoders in the robustness tests are malloc'd at their exact length
 * so AddressSanitizer catches any read past the end.
 *
 * Single-threaded; run under -fsanitize=address,undefined.
 */
#include "codec.h"
#include "err.h"
#include "test.h"

#include <stdbool.h>
#include <stdint.h>

#include <cjson/cJSON.h>
#include <pb_common.h>
#include <pb_decode.h>
#include <pb_encode.h>

#define T_BIG (2u * 1024 * 1024 + 4096)
#define T_MIB (1024 * 1024)

static uint8_t t_out[T_BIG];
static uint8_t t_out2[T_BIG];
static uint8_t t_body[T_BIG];
static uint8_t t_scratch[T_BIG];
static imgw_msg_in_t t_in;

/* ---- helpers: nanopb side ------------------------------------------- */

static bool
t_slice_dec(pb_istream_t *s, const pb_field_t *f, void **arg)
{
    imgw_slice_t *sl = *arg;

    (void)f;
    sl->ptr = (const uint8_t *)s->state;
    sl->len = s->bytes_left;
    return pb_read(s, NULL, s->bytes_left);
}

static bool
t_slice_enc(pb_ostream_t *s, const pb_field_t *f, void *const *arg)
{
    const imgw_slice_t *sl = *arg;

    return pb_encode_tag_for_field(s, f) &&
           pb_encode_string(s, sl->ptr, sl->len);
}

/* Opens a binary frame with plain nanopb: envelope plus body slice. */
static int
t_pb_open(const uint8_t *p, size_t n, im_WebSocketMessage *env,
          imgw_slice_t *body)
{
    pb_istream_t is = pb_istream_from_buffer(p, n);

    memset(env, 0, sizeof(*env));
    body->ptr = NULL;
    body->len = 0;
    env->body.funcs.decode = t_slice_dec;
    env->body.arg = body;
    return pb_decode(&is, &im_WebSocketMessage_msg, env) ? 0 : -1;
}

/* Builds a binary client frame by hand: body with pb_encode, then the
 * envelope around it. Returns its length (0 on failure). */
static size_t
t_pb_frame(int cmd, uint32_t seq, int64_t ts, const pb_msgdesc_t *desc,
           const void *body, uint8_t *out, size_t cap)
{
    pb_ostream_t os = pb_ostream_from_buffer(t_body, sizeof(t_body));
    im_WebSocketMessage env;
    imgw_slice_t b;

    if (desc && !pb_encode(&os, desc, body))
        return 0;
    b.ptr = t_body;
    b.len = desc ? os.bytes_written : 0;
    memset(&env, 0, sizeof(env));
    env.command = (im_CommandType)cmd;
    env.sequence = seq;
    env.timestamp = ts;
    env.body.funcs.encode = t_slice_enc;
    env.body.arg = &b;
    os = pb_ostream_from_buffer(out, cap);
    return pb_encode(&os, &im_WebSocketMessage_msg, &env) ? os.bytes_written
                                                          : 0;
}

/* Decodes PushMessages of a SyncResponse into a small array. */
#define T_MAXMSGS 8
typedef struct t_msgs_s {
    size_t n;
    im_PushMessage pm[T_MAXMSGS];
    imgw_slice_t content[T_MAXMSGS];
} t_msgs_t;

static t_msgs_t t_msgs;

static bool
t_msgs_dec(pb_istream_t *s, const pb_field_t *f, void **arg)
{
    t_msgs_t *m = *arg;
    im_PushMessage *pm;

    (void)f;
    if (m->n >= T_MAXMSGS)
        return false;
    pm = &m->pm[m->n];
    memset(pm, 0, sizeof(*pm));
    m->content[m->n].ptr = NULL;
    m->content[m->n].len = 0;
    pm->content.funcs.decode = t_slice_dec;
    pm->content.arg = &m->content[m->n];
    if (!pb_decode(s, &im_PushMessage_msg, pm))
        return false;
    m->n++;
    return true;
}

/* Field-by-field PushMessage comparison (content compared as bytes). */
static int
t_push_eq(const im_PushMessage *a, const imgw_slice_t *ac,
          const im_PushMessage *b, const imgw_slice_t *bc)
{
    pb_size_t i;

    if (strcmp(a->message_id, b->message_id) ||
        strcmp(a->client_msg_id, b->client_msg_id) ||
        strcmp(a->conversation_id, b->conversation_id) ||
        strcmp(a->sender_id, b->sender_id) ||
        strcmp(a->receiver_id, b->receiver_id) ||
        strcmp(a->group_id, b->group_id) ||
        a->message_type != b->message_type || a->send_time != b->send_time ||
        a->server_time != b->server_time || a->seq != b->seq ||
        a->extra_count != b->extra_count)
        return 0;
    for (i = 0; i < a->extra_count; i++) {
        if (strcmp(a->extra[i].key, b->extra[i].key) ||
            strcmp(a->extra[i].value, b->extra[i].value))
            return 0;
    }
    if (ac->len != bc->len)
        return 0;
    return ac->len == 0 || memcmp(ac->ptr, bc->ptr, ac->len) == 0;
}

/* Decodes a PushMessage body with plain nanopb. */
static int
t_push_dec(const uint8_t *p, size_t n, im_PushMessage *pm,
           imgw_slice_t *content)
{
    pb_istream_t is = pb_istream_from_buffer(p, n);

    memset(pm, 0, sizeof(*pm));
    content->ptr = NULL;
    content->len = 0;
    pm->content.funcs.decode = t_slice_dec;
    pm->content.arg = content;
    return pb_decode(&is, &im_PushMessage_msg, pm) ? 0 : -1;
}

static const char t_hello[] = "hello \"world\"\n\xe4\xbd\xa0\xe5\xa5\xbd";

static void
t_fill_push(im_PushMessage *pm, imgw_slice_t *content)
{
    memset(pm, 0, sizeof(*pm));
    strcpy(pm->message_id, "7212345678901234567");
    strcpy(pm->client_msg_id, "c-1");
    strcpy(pm->conversation_id, "s_u1_u2");
    strcpy(pm->sender_id, "u1");
    strcpy(pm->receiver_id, "u2");
    pm->message_type = 1;
    pm->send_time = 1700000000000;
    pm->server_time = 1700000000123;
    pm->extra_count = 2;
    strcpy(pm->extra[0].key, "k1");
    strcpy(pm->extra[0].value, "v1");
    strcpy(pm->extra[1].key, "lang");
    strcpy(pm->extra[1].value, "zh");
    content->ptr = (const uint8_t *)t_hello;
    content->len = sizeof(t_hello) - 1;
    imgw_codec_set_bytes(&pm->content, content);
}

/* ---- helpers: cJSON side --------------------------------------------- */

static cJSON *
t_json(const uint8_t *p, ssize_t n)
{
    return n > 0 ? cJSON_ParseWithLength((const char *)p, (size_t)n) : NULL;
}

static const char *
t_jstr(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);

    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static double
t_jnum(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);

    return cJSON_IsNumber(v) ? v->valuedouble : -12345.5;
}

static int
t_jcount(const cJSON *o)
{
    return o ? cJSON_GetArraySize(o) : -1;
}

/* Decodes a JSON frame given as a C string. */
static int
t_jdec(const char *s)
{
    memset(&t_in, 0xa5, sizeof(t_in));
    return imgw_codec_decode(IMGW_CODEC_JSON, (const uint8_t *)s, strlen(s),
                             &t_in, t_scratch, sizeof(t_scratch));
}

static int
t_pdec(const uint8_t *p, size_t n)
{
    memset(&t_in, 0xa5, sizeof(t_in));
    return imgw_codec_decode(IMGW_CODEC_PB, p, n, &t_in, t_scratch,
                             sizeof(t_scratch));
}

/* RFC 3629 check, independent of the codec's. */
static int
t_utf8_ok(const uint8_t *s, size_t n)
{
    size_t i = 0, k, len;

    while (i < n) {
        uint8_t c = s[i];
        uint32_t cp;

        if (c < 0x80) {
            i++;
            continue;
        }
        if ((c & 0xe0) == 0xc0) {
            len = 2;
            cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            len = 3;
            cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            len = 4;
            cp = c & 0x07;
        } else {
            return 0;
        }
        if (i + len > n)
            return 0;
        for (k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) ||
            (len == 4 && cp < 0x10000) || cp > 0x10ffff ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += len;
    }
    return 1;
}

/* ---- server->client samples ------------------------------------------ */

static im_ErrorResponse s_err;
static im_HeartbeatResponse s_hb;
static im_AuthResponse s_auth;
static im_KickPush s_kick;
static im_SendMessageResponse s_send;
static im_RevokeMessageResponse s_revs;
static im_RevokeMessagePush s_revp;
static im_ReadReceiptResponse s_reads;
static im_ReadReceiptPush s_readp;
static im_TypingStatusPush s_typ;

typedef struct t_s2c_s {
    int cmd;
    const pb_msgdesc_t *desc;
    const void *body;
    size_t size;
} t_s2c_t;

/* Every server->client body without callback fields, all fields set. */
static const t_s2c_t t_s2c[] = {
    {1, &im_ErrorResponse_msg, &s_err, sizeof(s_err)},
    {6, &im_HeartbeatResponse_msg, &s_hb, sizeof(s_hb)},
    {101, &im_AuthResponse_msg, &s_auth, sizeof(s_auth)},
    {102, &im_KickPush_msg, &s_kick, sizeof(s_kick)},
    {201, &im_SendMessageResponse_msg, &s_send, sizeof(s_send)},
    {206, &im_RevokeMessageResponse_msg, &s_revs, sizeof(s_revs)},
    {207, &im_RevokeMessagePush_msg, &s_revp, sizeof(s_revp)},
    {501, &im_ReadReceiptResponse_msg, &s_reads, sizeof(s_reads)},
    {502, &im_ReadReceiptPush_msg, &s_readp, sizeof(s_readp)},
    {602, &im_TypingStatusPush_msg, &s_typ, sizeof(s_typ)},
};
#define T_NS2C (sizeof(t_s2c) / sizeof(t_s2c[0]))

static void
t_fill_s2c(void)
{
    memset(&s_err, 0, sizeof(s_err));
    s_err.error_code = im_ErrorCode_ERR_INVALID_PARAM;
    strcpy(s_err.error_msg, "bad \"param\"\t\x01");
    memset(&s_hb, 0, sizeof(s_hb));
    s_hb.server_time = 1700000000999;
    memset(&s_auth, 0, sizeof(s_auth));
    s_auth.error_code = im_ErrorCode_ERR_TOKEN_EXPIRED;
    strcpy(s_auth.error_msg, "expired");
    s_auth.max_seq = 9007199254740991; /* 2^53 - 1 */
    memset(&s_kick, 0, sizeof(s_kick));
    strcpy(s_kick.reason, "login elsewhere");
    strcpy(s_kick.platform, "iOS");
    memset(&s_send, 0, sizeof(s_send));
    s_send.error_code = im_ErrorCode_ERR_SUCCESS;
    strcpy(s_send.message_id, "7212345678901234567");
    s_send.seq = 42;
    s_send.server_time = -5; /* negative int64 survives both codecs */
    memset(&s_revs, 0, sizeof(s_revs));
    s_revs.error_code = im_ErrorCode_ERR_PERMISSION_DENIED;
    strcpy(s_revs.error_msg, "not yours");
    memset(&s_revp, 0, sizeof(s_revp));
    strcpy(s_revp.message_id, "1");
    strcpy(s_revp.conversation_id, "g_team");
    strcpy(s_revp.revoked_by, "u1");
    s_revp.revoked_time = 1700000000001;
    memset(&s_reads, 0, sizeof(s_reads));
    s_reads.error_code = im_ErrorCode_ERR_CONVERSATION_NOT_EXIST;
    memset(&s_readp, 0, sizeof(s_readp));
    s_readp.message_ids_count = 3;
    strcpy(s_readp.message_ids[0], "1");
    strcpy(s_readp.message_ids[1], "22");
    strcpy(s_readp.message_ids[2], "12345678901234567890123"); /* max */
    strcpy(s_readp.conversation_id, "s_u1_u2");
    strcpy(s_readp.user_id, "u2");
    s_readp.read_time = 1700000000002;
    memset(&s_typ, 0, sizeof(s_typ));
    strcpy(s_typ.conversation_id, "s_u1_u2");
    strcpy(s_typ.user_id, "u1");
    s_typ.status = 1;
}

/* ======================================================================
 * Tests
 * ====================================================================== */

TEST(cmd_names)
{
    printf("  checks: imgw_codec_cmd_name gives the proto enum names\n");
    CHECK_EQ_STR(imgw_codec_cmd_name(0), "CMD_UNKNOWN");
    CHECK_EQ_STR(imgw_codec_cmd_name(1), "CMD_ERROR_RSP");
    CHECK_EQ_STR(imgw_codec_cmd_name(5), "CMD_HEARTBEAT_REQ");
    CHECK_EQ_STR(imgw_codec_cmd_name(100), "CMD_AUTH_REQ");
    CHECK_EQ_STR(imgw_codec_cmd_name(102), "CMD_KICK_PUSH");
    CHECK_EQ_STR(imgw_codec_cmd_name(202), "CMD_PUSH_MSG");
    CHECK_EQ_STR(imgw_codec_cmd_name(207), "CMD_REVOKE_MSG_PUSH");
    CHECK_EQ_STR(imgw_codec_cmd_name(301), "CMD_SYNC_RSP");
    CHECK_EQ_STR(imgw_codec_cmd_name(502), "CMD_READ_RECEIPT_PUSH");
    CHECK_EQ_STR(imgw_codec_cmd_name(602), "CMD_TYPING_STATUS_PUSH");
    CHECK(imgw_codec_cmd_name(601) == NULL);
    CHECK(imgw_codec_cmd_name(-1) == NULL);
    /* Every value the proto names is found (the lookup is a binary search
     * over a table that must stay in numeric order), and no other. */
    printf("  checks: every CommandType value -1..1000 found iff the proto "
           "names it\n");
    int found = 0, wrong = 0;
    for (int v = -1; v <= 1000; v++) {
        const char *pn = im_CommandType_name((im_CommandType)v);
        int named = v >= 0 && strcmp(pn, "unknown") != 0;
        const char *cn = imgw_codec_cmd_name(v);
        if (named != (cn != NULL) || (cn != NULL && strcmp(cn, pn) != 0))
            wrong++;
        found += cn != NULL;
    }
    printf("  %d commands found, %d mismatches\n", found, wrong);
    CHECK_EQ_INT(wrong, 0);
    CHECK(found >= 29);
}

/* Encodes with the codec, and separately with plain nanopb (body encoded
 * on its own, wrapped by an envelope whose body is those bytes), and
 * compares the frames byte for byte. */
static int
t_same_as_nanopb(int cmd, uint32_t seq, int64_t ts, const void *body)
{
    const pb_msgdesc_t *desc = NULL;
    im_WebSocketMessage env;
    imgw_slice_t b;
    pb_ostream_t os;
    ssize_t n;
    size_t i;

    for (i = 0; i < T_NS2C; i++) {
        if (t_s2c[i].cmd == cmd)
            desc = t_s2c[i].desc;
    }
    if (cmd == 202)
        desc = &im_PushMessage_msg;
    if (desc == NULL)
        return 0;
    n = imgw_codec_encode(IMGW_CODEC_PB, cmd, seq, ts, body, t_out,
                          sizeof(t_out));
    os = pb_ostream_from_buffer(t_body, sizeof(t_body));
    if (n <= 0 || !pb_encode(&os, desc, body))
        return 0;
    b.ptr = t_body;
    b.len = os.bytes_written;
    memset(&env, 0, sizeof(env));
    env.command = (im_CommandType)cmd;
    env.sequence = seq;
    env.timestamp = ts;
    env.body.funcs.encode = t_slice_enc;
    env.body.arg = &b;
    os = pb_ostream_from_buffer(t_out2, sizeof(t_out2));
    if (!pb_encode(&os, &im_WebSocketMessage_msg, &env))
        return 0;
    return os.bytes_written == (size_t)n &&
           memcmp(t_out, t_out2, (size_t)n) == 0;
}

TEST(s2c_pb_roundtrip)
{
    static uint8_t dec[16384];
    size_t i;

    printf("  checks: every server->client body survives PB encode + plain "
           "nanopb decode\n");
    t_fill_s2c();
    for (i = 0; i < T_NS2C; i++) {
        const t_s2c_t *t = &t_s2c[i];
        im_WebSocketMessage env;
        imgw_slice_t body;
        pb_istream_t is;
        ssize_t n;

        n = imgw_codec_encode(IMGW_CODEC_PB, t->cmd, 77 + (uint32_t)i,
                              1700000000000 + (int64_t)i, t->body, t_out,
                              sizeof(t_out));
        printf("  cmd %d (%s): %zd bytes\n", t->cmd,
               imgw_codec_cmd_name(t->cmd), n);
        CHECK(n > 0);
        CHECK_EQ_INT(t_pb_open(t_out, (size_t)n, &env, &body), 0);
        CHECK_EQ_INT(env.command, t->cmd);
        CHECK_EQ_INT(env.sequence, 77 + i);
        CHECK_EQ_INT(env.timestamp, 1700000000000 + (int64_t)i);
        memset(dec, 0, sizeof(dec));
        is = pb_istream_from_buffer(body.ptr, body.len);
        CHECK(pb_decode(&is, t->desc, dec));
        CHECK(memcmp(dec, t->body, t->size) == 0);
        /* Byte-identical to nanopb's own envelope around that body, with
         * and without the optional (zero) sequence and timestamp. */
        CHECK(t_same_as_nanopb(t->cmd, 77 + (uint32_t)i,
                               1700000000000 + (int64_t)i, t->body));
        CHECK(t_same_as_nanopb(t->cmd, 0, 0, t->body));
    }
    CHECK_EQ_INT(imgw_codec_encode(IMGW_CODEC_PB, 100, 1, 0, &s_err, t_out,
                                   sizeof(t_out)),
                 IMGW_EINVAL);
    CHECK_EQ_INT(imgw_codec_encode(IMGW_CODEC_PB, 999, 1, 0, &s_err, t_out,
                                   sizeof(t_out)),
                 IMGW_EINVAL);
    CHECK_EQ_INT(imgw_codec_encode(IMGW_CODEC_JSON, 0, 1, 0, &s_err, t_out,
                                   sizeof(t_out)),
                 IMGW_EINVAL);
}

TEST(s2c_json_roundtrip)
{
    static uint8_t dec[16384];
    size_t i;

    printf("  checks: every server->client body as JSON: envelope, all "
           "fields present, and back through encode_from_json to the same "
           "struct and the same text\n");
    t_fill_s2c();
    for (i = 0; i < T_NS2C; i++) {
        const t_s2c_t *t = &t_s2c[i];
        im_WebSocketMessage env;
        imgw_slice_t body;
        pb_istream_t is;
        ssize_t n, n0, m;
        cJSON *root;
        const cJSON *jb;

        n = imgw_codec_encode(IMGW_CODEC_JSON, t->cmd, 9, 1234, t->body,
                              t_out, sizeof(t_out));
        printf("  %.*s\n", (int)(n > 0 ? n : 0), (const char *)t_out);
        CHECK(n > 0);
        CHECK(t_utf8_ok(t_out, (size_t)n));
        root = t_json(t_out, n);
        CHECK(root != NULL);
        CHECK_EQ_STR(t_jstr(root, "command"), imgw_codec_cmd_name(t->cmd));
        CHECK(t_jnum(root, "sequence") == 9);
        CHECK(t_jnum(root, "timestamp") == 1234);
        jb = cJSON_GetObjectItemCaseSensitive(root, "body");
        CHECK(cJSON_IsObject(jb));
        CHECK_EQ_INT(t_jcount(jb), t->desc->field_count);

        m = imgw_codec_encode_from_json(IMGW_CODEC_PB, t->cmd, jb, 1234,
                                        t_out2, sizeof(t_out2));
        CHECK(m > 0);
        CHECK_EQ_INT(t_pb_open(t_out2, (size_t)m, &env, &body), 0);
        CHECK_EQ_INT(env.command, t->cmd);
        memset(dec, 0, sizeof(dec));
        is = pb_istream_from_buffer(body.ptr, body.len);
        CHECK(pb_decode(&is, t->desc, dec));
        CHECK(memcmp(dec, t->body, t->size) == 0);

        /* Same body back to JSON gives the same text (sequence is 0). */
        n0 = imgw_codec_encode(IMGW_CODEC_JSON, t->cmd, 0, 1234, t->body,
                               t_out, sizeof(t_out));
        m = imgw_codec_encode_from_json(IMGW_CODEC_JSON, t->cmd, jb, 1234,
                                        t_out2, sizeof(t_out2));
        CHECK(n0 > 0 && m == n0 && memcmp(t_out, t_out2, (size_t)m) == 0);
        cJSON_Delete(root);
    }
}

TEST(json_envelope_exact)
{
    im_AuthResponse a;
    im_HeartbeatResponse h;
    ssize_t n;
    static const char want[] =
        "{\"command\":\"CMD_AUTH_RSP\",\"sequence\":1,\"timestamp\":123,"
        "\"body\":{\"error_code\":\"ERR_SUCCESS\",\"error_msg\":\"\","
        "\"max_seq\":0,\"epoch\":\"\"}}";
    static const char want_hb[] =
        "{\"command\":\"CMD_HEARTBEAT_RSP\",\"sequence\":4294967295,"
        "\"timestamp\":-9223372036854775808,\"body\":{\"server_time\":"
        "9223372036854775807}}";

    printf("  checks: exact JSON text, defaults emitted, integer extremes\n");
    memset(&a, 0, sizeof(a));
    n = imgw_codec_encode(IMGW_CODEC_JSON, 101, 1, 123, &a, t_out,
                          sizeof(t_out));
    CHECK_EQ_INT(n, sizeof(want) - 1);
    CHECK(n > 0 && memcmp(t_out, want, (size_t)n) == 0);
    h.server_time = INT64_MAX;
    n = imgw_codec_encode(IMGW_CODEC_JSON, 6, UINT32_MAX, INT64_MIN, &h,
                          t_out, sizeof(t_out));
    CHECK_EQ_INT(n, sizeof(want_hb) - 1);
    CHECK(n > 0 && memcmp(t_out, want_hb, (size_t)n) == 0);
}

/* ---- client->server -------------------------------------------------- */

static im_HeartbeatRequest c_hb;
static im_AuthRequest c_auth;
static im_SendMessageRequest c_send;
static im_MessageAck c_ack;
static im_RevokeMessageRequest c_rev;
static im_SyncRequest c_sync;
static im_ReadReceiptRequest c_read;
static im_TypingStatusRequest c_typ;
static imgw_slice_t c_content;

static void
t_fill_c2s(void)
{
    memset(&c_hb, 0, sizeof(c_hb));
    c_hb.client_time = 1700000000000;
    memset(&c_auth, 0, sizeof(c_auth));
    strcpy(c_auth.user_id, "user123");
    strcpy(c_auth.token, "eyJhbGciOiJIUzI1NiIs.x.y");
    strcpy(c_auth.platform, "iOS");
    memset(&c_send, 0, sizeof(c_send));
    strcpy(c_send.client_msg_id, "cm-1");
    strcpy(c_send.conversation_id, "s_u1_u2");
    strcpy(c_send.sender_id, "u1");
    strcpy(c_send.receiver_id, "u2");
    c_send.message_type = 1;
    c_send.send_time = 1700000000000;
    c_send.extra_count = 2;
    strcpy(c_send.extra[0].key, "a");
    strcpy(c_send.extra[0].value, "1");
    strcpy(c_send.extra[1].key, "b");
    strcpy(c_send.extra[1].value, "two");
    c_content.ptr = (const uint8_t *)"hi there";
    c_content.len = 8;
    imgw_codec_set_bytes(&c_send.content, &c_content);
    memset(&c_ack, 0, sizeof(c_ack));
    strcpy(c_ack.message_id, "7212345678901234567");
    c_ack.seq = 17;
    memset(&c_rev, 0, sizeof(c_rev));
    strcpy(c_rev.message_id, "7212345678901234567");
    strcpy(c_rev.conversation_id, "g_team");
    memset(&c_sync, 0, sizeof(c_sync));
    c_sync.min_seq = 10;
    c_sync.max_seq = 0;
    c_sync.limit = 100;
    memset(&c_read, 0, sizeof(c_read));
    c_read.message_ids_count = 2;
    strcpy(c_read.message_ids[0], "1");
    strcpy(c_read.message_ids[1], "2");
    strcpy(c_read.conversation_id, "s_u1_u2");
    memset(&c_typ, 0, sizeof(c_typ));
    strcpy(c_typ.conversation_id, "s_u1_u2");
    c_typ.status = 1;
}

typedef struct t_c2s_s {
    int cmd;
    const pb_msgdesc_t *desc;
    const void *body;
    size_t size;
    const char *json; /* the same frame as JSON text */
} t_c2s_t;

static const t_c2s_t t_c2s[] = {
    {5, &im_HeartbeatRequest_msg, &c_hb, sizeof(c_hb),
     "{\"command\":\"CMD_HEARTBEAT_REQ\",\"sequence\":3,\"timestamp\":99,"
     "\"body\":{\"client_time\":1700000000000}}"},
    {100, &im_AuthRequest_msg, &c_auth, sizeof(c_auth),
     "{\"command\":\"CMD_AUTH_REQ\",\"sequence\":3,\"timestamp\":99,"
     "\"body\":{\"user_id\":\"user123\",\"token\":"
     "\"eyJhbGciOiJIUzI1NiIs.x.y\",\"platform\":\"iOS\"}}"},
    {200, &im_SendMessageRequest_msg, &c_send, sizeof(c_send),
     "{\"command\":\"CMD_SEND_MSG_REQ\",\"sequence\":3,\"timestamp\":99,"
     "\"body\":{\"client_msg_id\":\"cm-1\",\"conversation_id\":\"s_u1_u2\","
     "\"sender_id\":\"u1\",\"receiver_id\":\"u2\",\"group_id\":\"\","
     "\"message_type\":1,\"content\":\"hi there\",\"send_time\":"
     "1700000000000,\"extra\":{\"a\":\"1\",\"b\":\"two\"}}}"},
    {203, &im_MessageAck_msg, &c_ack, sizeof(c_ack),
     "{\"command\":\"CMD_MSG_ACK\",\"sequence\":3,\"timestamp\":99,"
     "\"body\":{\"message_id\":\"7212345678901234567\",\"seq\":17}}"},
    {205, &im_RevokeMessageRequest_msg, &c_rev, sizeof(c_rev),
     "{\"command\":\"CMD_REVOKE_MSG_REQ\",\"sequence\":3,\"timestamp\":99,"
     "\"body\":{\"message_id\":\"7212345678901234567\","
     "\"conversation_id\":\"g_team\"}}"},
    {300, &im_SyncRequest_msg, &c_sync, sizeof(c_sync),
     "{\"command\":\"CMD_SYNC_REQ\",\"sequence\":3,\"timestamp\":99,"
     "\"body\":{\"min_seq\":10,\"max_seq\":0,\"limit\":100}}"},
    {500, &im_ReadReceiptRequest_msg, &c_read, sizeof(c_read),
     "{\"command\":\"CMD_READ_RECEIPT_REQ\",\"sequence\":3,\"timestamp\":99,"
     "\"body\":{\"message_ids\":[\"1\",\"2\"],\"conversation_id\":"
     "\"s_u1_u2\"}}"},
    {600, &im_TypingStatusRequest_msg, &c_typ, sizeof(c_typ),
     "{\"command\":\"CMD_TYPING_STATUS_REQ\",\"sequence\":3,\"timestamp\":99,"
     "\"body\":{\"conversation_id\":\"s_u1_u2\",\"status\":1}}"},
};
#define T_NC2S (sizeof(t_c2s) / sizeof(t_c2s[0]))

/* Compares the decoded union member with the expected struct, content
 * callbacks aside (they are checked through t_in.content). */
static int
t_c2s_eq(const t_c2s_t *t)
{
    static uint8_t a[16384], b[16384];

    memcpy(a, &t_in.u, t->size);
    memcpy(b, t->body, t->size);
    if (t->cmd == 200) {
        memset(&((im_SendMessageRequest *)(void *)a)->content, 0,
               sizeof(pb_callback_t));
        memset(&((im_SendMessageRequest *)(void *)b)->content, 0,
               sizeof(pb_callback_t));
    }
    return memcmp(a, b, t->size) == 0;
}

TEST(c2s_pb_roundtrip)
{
    size_t i, n;

    printf("  checks: hand-built binary client frames decode to the same "
           "structs; content points into the frame\n");
    t_fill_c2s();
    for (i = 0; i < T_NC2S; i++) {
        const t_c2s_t *t = &t_c2s[i];

        n = t_pb_frame(t->cmd, 3, 99, t->desc, t->body, t_out,
                       sizeof(t_out));
        CHECK(n > 0);
        memset(&t_in.u, 0, sizeof(t_in.u));
        CHECK_EQ_INT(imgw_codec_decode(IMGW_CODEC_PB, t_out, n, &t_in, NULL,
                                       0),
                     0);
        printf("  cmd %d (%s): %zu bytes\n", t->cmd,
               imgw_codec_cmd_name(t->cmd), n);
        CHECK_EQ_INT(t_in.command, t->cmd);
        CHECK_EQ_INT(t_in.sequence, 3);
        CHECK_EQ_INT(t_in.timestamp, 99);
        CHECK(t_c2s_eq(t));
        if (t->cmd == 200) {
            CHECK_EQ_INT(t_in.content.len, 8);
            CHECK(t_in.content.ptr >= t_out &&
                  t_in.content.ptr + 8 <= t_out + n);
            CHECK(memcmp(t_in.content.ptr, "hi there", 8) == 0);
        } else {
            CHECK(t_in.content.ptr == NULL && t_in.content.len == 0);
        }
    }

    /* Absent body: all defaults. */
    n = t_pb_frame(300, 8, 0, NULL, NULL, t_out, sizeof(t_out));
    memset(&t_in.u, 0x5a, sizeof(t_in.u));
    CHECK_EQ_INT(t_pdec(t_out, n), 0);
    CHECK_EQ_INT(t_in.command, 300);
    CHECK_EQ_INT(t_in.sequence, 8);
    CHECK(t_in.u.sync.min_seq == 0 && t_in.u.sync.max_seq == 0 &&
          t_in.u.sync.limit == 0);
    n = t_pb_frame(200, 8, 0, NULL, NULL, t_out, sizeof(t_out));
    CHECK_EQ_INT(t_pdec(t_out, n), 0);
    CHECK(t_in.u.send.client_msg_id[0] == 0 && t_in.content.len == 0 &&
          t_in.u.send.extra_count == 0);
}

TEST(c2s_json_roundtrip)
{
    size_t i;

    printf("  checks: hand-written JSON client frames decode to the same "
           "structs; content is copied to scratch\n");
    t_fill_c2s();
    for (i = 0; i < T_NC2S; i++) {
        const t_c2s_t *t = &t_c2s[i];

        memset(&t_in.u, 0, sizeof(t_in.u));
        CHECK_EQ_INT(imgw_codec_decode(IMGW_CODEC_JSON,
                                       (const uint8_t *)t->json,
                                       strlen(t->json), &t_in, t_scratch,
                                       sizeof(t_scratch)),
                     0);
        printf("  %s\n", t->json);
        CHECK_EQ_INT(t_in.command, t->cmd);
        CHECK_EQ_INT(t_in.sequence, 3);
        CHECK_EQ_INT(t_in.timestamp, 99);
        CHECK(t_c2s_eq(t));
        if (t->cmd == 200) {
            CHECK_EQ_INT(t_in.content.len, 8);
            CHECK(t_in.content.ptr == t_scratch);
            CHECK(memcmp(t_in.content.ptr, "hi there", 8) == 0);
        }
    }

    /* Absent, null and empty bodies; whitespace around the value. */
    CHECK_EQ_INT(t_jdec("{\"command\":\"CMD_SYNC_REQ\"}"), 0);
    CHECK(t_in.sequence == 0 && t_in.timestamp == 0 &&
          t_in.u.sync.limit == 0 && t_in.u.sync.min_seq == 0);
    CHECK_EQ_INT(t_jdec(" {\"command\":5,\"sequence\":2,\"body\":null}\r\n"),
                 0);
    CHECK(t_in.command == 5 && t_in.sequence == 2 &&
          t_in.u.heartbeat.client_time == 0);
    CHECK_EQ_INT(t_jdec("{\"command\":\"CMD_SEND_MSG_REQ\",\"body\":{}}"), 0);
    CHECK(t_in.content.len == 0 && t_in.u.send.extra_count == 0);
    /* Unknown fields are ignored, null fields take defaults. */
    CHECK_EQ_INT(t_jdec("{\"command\":100,\"x\":[1,{}],\"body\":{\"user_id\":"
                        "\"u\",\"nope\":{\"a\":[]},\"token\":null}}"),
                 0);
    CHECK_EQ_STR(t_in.u.auth.user_id, "u");
    CHECK_EQ_STR(t_in.u.auth.token, "");
}

TEST(json_command_name_and_number)
{
    printf("  checks: command by name and by number, same result\n");
    CHECK_EQ_INT(t_jdec("{\"command\":\"CMD_AUTH_REQ\",\"sequence\":1,"
                        "\"body\":{\"user_id\":\"a\"}}"),
                 0);
    CHECK_EQ_INT(t_in.command, 100);
    CHECK_EQ_STR(t_in.u.auth.user_id, "a");
    CHECK_EQ_INT(t_jdec("{\"command\":100,\"sequence\":1,"
                        "\"body\":{\"user_id\":\"a\"}}"),
                 0);
    CHECK_EQ_INT(t_in.command, 100);
    CHECK_EQ_STR(t_in.u.auth.user_id, "a");
    CHECK_EQ_INT(t_jdec("{\"command\":600.0,\"body\":{\"status\":0}}"), 0);
    CHECK_EQ_INT(t_in.command, 600);
    CHECK_EQ_INT(t_jdec("{\"body\":{},\"sequence\":5,\"command\":"
                        "\"CMD_MSG_ACK\"}"),
                 0);
    CHECK_EQ_INT(t_in.command, 203);
    CHECK_EQ_INT(t_in.sequence, 5);
}

TEST(json_int64_string_and_enum_number)
{
    static uint8_t dec[4096];
    im_WebSocketMessage env;
    imgw_slice_t body;
    pb_istream_t is;
    cJSON *data, *root;
    ssize_t n;

    printf("  checks: int64 as numeric strings, range checks, enums by "
           "number and by name\n");
    CHECK_EQ_INT(t_jdec("{\"command\":300,\"timestamp\":\"1700000000000\","
                        "\"body\":{\"min_seq\":\"9223372036854775807\","
                        "\"max_seq\":\"-9223372036854775808\",\"limit\":5}}"),
                 0);
    CHECK(t_in.timestamp == 1700000000000);
    CHECK(t_in.u.sync.min_seq == INT64_MAX);
    CHECK(t_in.u.sync.max_seq == INT64_MIN);
    CHECK_EQ_INT(t_in.u.sync.limit, 5);
    CHECK_EQ_INT(t_jdec("{\"command\":300,\"body\":{\"min_seq\":"
                        "\"9223372036854775808\"}}"),
                 IMGW_EDECODE);
    CHECK_EQ_INT(t_jdec("{\"command\":300,\"body\":{\"min_seq\":\"12a\"}}"),
                 IMGW_EDECODE);
    CHECK_EQ_INT(t_jdec("{\"command\":300,\"body\":{\"min_seq\":\"\"}}"),
                 IMGW_EDECODE);
    CHECK_EQ_INT(t_jdec("{\"command\":300,\"body\":{\"min_seq\":\" 1\"}}"),
                 IMGW_EDECODE);
    CHECK_EQ_INT(t_jdec("{\"command\":300,\"body\":{\"min_seq\":1.5}}"),
                 IMGW_EDECODE);
    CHECK_EQ_INT(t_jdec("{\"command\":300,\"body\":{\"min_seq\":true}}"),
                 IMGW_EDECODE);
    CHECK_EQ_INT(t_jdec("{\"command\":300,\"body\":{\"limit\":2147483647}}"),
                 0);
    CHECK_EQ_INT(t_jdec("{\"command\":300,\"body\":{\"limit\":2147483648}}"),
                 IMGW_EDECODE);
    CHECK_EQ_INT(t_jdec("{\"command\":300,\"body\":{\"limit\":\"5\"}}"),
                 IMGW_EDECODE);
    CHECK_EQ_INT(t_jdec("{\"command\":300,\"body\":{\"limit\":-2147483648}}"),
                 0);
    CHECK_EQ_INT(t_in.u.sync.limit, INT32_MIN);
    CHECK_EQ_INT(t_jdec("{\"command\":300,\"timestamp\":\"x\"}"),
                 IMGW_EDECODE);
    CHECK_EQ_INT(t_in.command, 300);

    /* Enums (ErrorCode lives in server->client bodies: downlink JSON). */
    data = cJSON_Parse("{\"error_code\":2,\"error_msg\":\"e\"}");
    n = imgw_codec_encode_from_json(IMGW_CODEC_JSON, 1, data, 5, t_out,
                                    sizeof(t_out));
    root = t_json(t_out, n);
    CHECK_EQ_STR(t_jstr(cJSON_GetObjectItemCaseSensitive(root, "body"),
                        "error_code"),
                 "ERR_INVALID_PARAM");
    cJSON_Delete(root);
    cJSON_Delete(data);
    data = cJSON_Parse("{\"error_code\":\"ERR_SEND_TOO_FAST\"}");
    n = imgw_codec_encode_from_json(IMGW_CODEC_PB, 1, data, 5, t_out,
                                    sizeof(t_out));
    CHECK(n > 0 && t_pb_open(t_out, (size_t)n, &env, &body) == 0);
    memset(dec, 0, sizeof(dec));
    is = pb_istream_from_buffer(body.ptr, body.len);
    CHECK(pb_decode(&is, &im_ErrorResponse_msg, dec));
    CHECK_EQ_INT(((im_ErrorResponse *)(void *)dec)->error_code, 201);
    cJSON_Delete(data);
    /* An unknown number is kept (open enum) and printed as a number. */
    data = cJSON_Parse("{\"error_code\":999}");
    n = imgw_codec_encode_from_json(IMGW_CODEC_JSON, 1, data, 5, t_out,
                                    sizeof(t_out));
    root = t_json(t_out, n);
    CHECK(t_jnum(cJSON_GetObjectItemCaseSensitive(root, "body"),
                 "error_code") == 999);
    cJSON_Delete(root);
    cJSON_Delete(data);
    data = cJSON_Parse("{\"error_code\":\"ERR_NOPE\"}");
    CHECK_EQ_INT(imgw_codec_encode_from_json(IMGW_CODEC_JSON, 1, data, 5,
                                             t_out, sizeof(t_out)),
                 IMGW_EDECODE);
    cJSON_Delete(data);
    data = cJSON_Parse("{\"error_code\":-1}");
    CHECK_EQ_INT(imgw_codec_encode_from_json(IMGW_CODEC_PB, 1, data, 5,
                                             t_out, sizeof(t_out)),
                 IMGW_EDECODE);
    cJSON_Delete(data);
}

TEST(extra_map_roundtrip)
{
    static im_PushMessage pm, pm2;
    imgw_slice_t c1, c2, body;
    im_WebSocketMessage env;
    const cJSON *extra;
    cJSON *root;
    ssize_t n;
    int k;

    printf("  checks: map<string,string> extra through both codecs, both "
           "directions, up to the bound\n");
    CHECK_EQ_INT(t_jdec("{\"command\":200,\"body\":{\"extra\":{\"k\":\"v\","
                        "\"\xe4\xbd\xa0\":\"\\\"q\\\"\",\"empty\":\"\"}}}"),
                 0);
    CHECK_EQ_INT(t_in.u.send.extra_count, 3);
    CHECK_EQ_STR(t_in.u.send.extra[0].key, "k");
    CHECK_EQ_STR(t_in.u.send.extra[0].value, "v");
    CHECK_EQ_STR(t_in.u.send.extra[1].key, "\xe4\xbd\xa0");
    CHECK_EQ_STR(t_in.u.send.extra[1].value, "\"q\"");
    CHECK_EQ_STR(t_in.u.send.extra[2].value, "");
    CHECK_EQ_INT(t_jdec("{\"command\":200,\"body\":{\"extra\":{\"k\":1}}}"),
                 IMGW_EDECODE);
    CHECK_EQ_INT(t_jdec("{\"command\":200,\"body\":{\"extra\":[\"k\"]}}"),
                 IMGW_EDECODE);

    t_fill_push(&pm, &c1);
    pm.extra_count = 17;
    for (k = 0; k < 17; k++) {
        snprintf(pm.extra[k].key, sizeof(pm.extra[k].key), "key%d", k);
        snprintf(pm.extra[k].value, sizeof(pm.extra[k].value), "v%d", k);
    }
    n = imgw_codec_encode(IMGW_CODEC_PB, 202, 0, 1, &pm, t_out,
                          sizeof(t_out));
    CHECK(n > 0 && t_pb_open(t_out, (size_t)n, &env, &body) == 0);
    CHECK_EQ_INT(t_push_dec(body.ptr, body.len, &pm2, &c2), 0);
    CHECK(t_push_eq(&pm, &c1, &pm2, &c2));
    n = imgw_codec_encode(IMGW_CODEC_JSON, 202, 0, 1, &pm, t_out,
                          sizeof(t_out));
    root = t_json(t_out, n);
    extra = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(root, "body"), "extra");
    CHECK_EQ_INT(t_jcount(extra), 17);
    CHECK_EQ_STR(t_jstr(extra, "key16"), "v16");
    /* And back: JSON extra -> PB, same map. */
    n = imgw_codec_encode_from_json(
        IMGW_CODEC_PB, 202, cJSON_GetObjectItemCaseSensitive(root, "body"),
        1, t_out2, sizeof(t_out2));
    CHECK(n > 0 && t_pb_open(t_out2, (size_t)n, &env, &body) == 0);
    CHECK_EQ_INT(t_push_dec(body.ptr, body.len, &pm2, &c2), 0);
    CHECK(t_push_eq(&pm, &c1, &pm2, &c2));
    cJSON_Delete(root);
}

TEST(push_pb_parts)
{
    static const int64_t seqs[] = {0, 1, 127, 128, 300, 16384,
                                   34359738368LL, INT64_MAX, -1};
    static const int64_t tss[] = {0, 1, 1700000000000};
    static im_PushMessage pm, want, got;
    imgw_slice_t c, gc, body, tailed;
    im_WebSocketMessage env;
    uint8_t blob[4096], hdr[16], trl[24];
    size_t i, j, hl, tl, fl, sl, bad = 0, badbytes = 0;
    pb_ostream_t os;
    ssize_t bl, n;

    printf("  checks: hdr + blob + trl decodes to the same PushMessage as "
           "imgw_codec_encode and equals nanopb's bytes\n");
    t_fill_push(&pm, &c);
    bl = imgw_codec_encode_pb_body(202, &pm, blob, sizeof(blob));
    CHECK(bl > 0);
    for (i = 0; i < sizeof(seqs) / sizeof(seqs[0]); i++) {
        for (j = 0; j < sizeof(tss) / sizeof(tss[0]); j++) {
            imgw_codec_push_pb_parts((size_t)bl, seqs[i], tss[j], hdr, &hl,
                                     trl, &tl);
            if (hl > 16 || tl > 24) {
                bad++;
                continue;
            }
            memcpy(t_out, hdr, hl);
            memcpy(t_out + hl, blob, (size_t)bl);
            memcpy(t_out + hl + (size_t)bl, trl, tl);
            fl = hl + (size_t)bl + tl;
            if (t_pb_open(t_out, fl, &env, &body) != 0 ||
                env.command != 202 || env.sequence != 0 ||
                env.timestamp != tss[j] ||
                t_push_dec(body.ptr, body.len, &got, &gc) != 0) {
                bad++;
                continue;
            }
            want = pm;
            want.seq = seqs[i];
            if (!t_push_eq(&want, &c, &got, &gc))
                bad++;
            /* The normal encoder's frame decodes to the same message. */
            n = imgw_codec_encode(IMGW_CODEC_PB, 202, 0, tss[j], &want,
                                  t_out2, sizeof(t_out2));
            if (n <= 0 || t_pb_open(t_out2, (size_t)n, &env, &body) != 0 ||
                t_push_dec(body.ptr, body.len, &got, &gc) != 0 ||
                !t_push_eq(&want, &c, &got, &gc))
                bad++;
            /* Byte-identical to nanopb's envelope around blob + seq: the
             * body is blob + trl's seq field (tag + varint). */
            sl = 1;
            while (trl[sl] & 0x80)
                sl++;
            sl++;
            memcpy(t_scratch, blob, (size_t)bl);
            memcpy(t_scratch + bl, trl, sl);
            tailed.ptr = t_scratch;
            tailed.len = (size_t)bl + sl;
            memset(&env, 0, sizeof(env));
            env.command = (im_CommandType)202;
            env.timestamp = tss[j];
            env.body.funcs.encode = t_slice_enc;
            env.body.arg = &tailed;
            os = pb_ostream_from_buffer(t_out2, sizeof(t_out2));
            if (!pb_encode(&os, &im_WebSocketMessage_msg, &env) ||
                os.bytes_written != fl || memcmp(t_out2, t_out, fl) != 0)
                badbytes++;
        }
    }
    CHECK_EQ_INT(bad, 0);
    CHECK_EQ_INT(badbytes, 0);
    imgw_codec_push_pb_parts(0, -1, -1, hdr, &hl, trl, &tl);
    printf("  worst case: hdr %zu, trl %zu bytes\n", hl, tl);
    CHECK(hl <= 16 && tl <= 24);
}

TEST(push_json_prefix)
{
    static im_PushMessage pm;
    static const int64_t seqs[] = {0, 42, -7, INT64_MAX};
    imgw_slice_t c;
    uint8_t blob[4096];
    ssize_t bl, pl, n;
    size_t i;
    char num[32];

    printf("  checks: prefix + seq + \"}}\" is byte-equal to "
           "imgw_codec_encode(JSON, 202) and valid JSON\n");
    t_fill_push(&pm, &c);
    bl = imgw_codec_encode_pb_body(202, &pm, blob, sizeof(blob));
    CHECK(bl > 0);
    pl = imgw_codec_push_json_prefix(blob, (size_t)bl, 1700000000000, t_out,
                                     sizeof(t_out));
    CHECK(pl > 6);
    printf("  prefix: %.*s\n", (int)(pl > 0 ? pl : 0), (const char *)t_out);
    CHECK(pl > 6 && memcmp(t_out + pl - 6, "\"seq\":", 6) == 0);
    for (i = 0; i < sizeof(seqs) / sizeof(seqs[0]); i++) {
        cJSON *root;
        size_t fl;

        snprintf(num, sizeof(num), "%lld", (long long)seqs[i]);
        memcpy(t_out2, t_out, (size_t)pl);
        memcpy(t_out2 + pl, num, strlen(num));
        memcpy(t_out2 + pl + strlen(num), "}}", 2);
        fl = (size_t)pl + strlen(num) + 2;
        pm.seq = seqs[i];
        n = imgw_codec_encode(IMGW_CODEC_JSON, 202, 0, 1700000000000, &pm,
                              t_scratch, sizeof(t_scratch));
        CHECK(n > 0 && (size_t)n == fl &&
              memcmp(t_scratch, t_out2, fl) == 0);
        root = t_json(t_out2, (ssize_t)fl);
        CHECK(root != NULL);
        CHECK(t_jnum(cJSON_GetObjectItemCaseSensitive(root, "body"),
                     "seq") == (double)seqs[i]);
        CHECK_EQ_STR(t_jstr(cJSON_GetObjectItemCaseSensitive(root, "body"),
                            "content"),
                     t_hello);
        cJSON_Delete(root);
    }
    pm.seq = 42;
    CHECK(t_same_as_nanopb(202, 0, 1700000000000, &pm));
    CHECK(t_same_as_nanopb(202, 9, 0, &pm));
    CHECK_EQ_INT(imgw_codec_push_json_prefix((const uint8_t *)"\xff\xff", 2,
                                             0, t_out, sizeof(t_out)),
                 IMGW_EDECODE);
}

TEST(pb_body_and_decode_push)
{
    static im_PushMessage pm, got;
    imgw_slice_t c, gc;
    uint8_t blob[4096];
    ssize_t bl, bl2;

    printf("  checks: stored blob has no seq, decodes back, and a decoded "
           "PushMessage re-encodes unchanged\n");
    t_fill_push(&pm, &c);
    pm.seq = 0;
    bl = imgw_codec_encode_pb_body(202, &pm, blob, sizeof(blob));
    CHECK(bl > 0);
    CHECK_EQ_INT(imgw_codec_decode_push(blob, (size_t)bl, &got, &gc), 0);
    CHECK(t_push_eq(&pm, &c, &got, &gc));
    CHECK(gc.ptr >= blob && gc.ptr + gc.len <= blob + bl);
    /* got's content callback now encodes from gc. */
    bl2 = imgw_codec_encode_pb_body(202, &got, t_out, sizeof(t_out));
    CHECK(bl2 == bl && memcmp(t_out, blob, (size_t)bl) == 0);
    /* A PushMessage whose content has only arg set (no set_bytes). */
    got.content.funcs.encode = NULL;
    bl2 = imgw_codec_encode_pb_body(202, &got, t_out, sizeof(t_out));
    CHECK(bl2 == bl && memcmp(t_out, blob, (size_t)bl) == 0);
    bl = imgw_codec_encode(IMGW_CODEC_PB, 202, 3, 4, &pm, t_out,
                           sizeof(t_out));
    bl2 = imgw_codec_encode(IMGW_CODEC_PB, 202, 3, 4, &got, t_out2,
                            sizeof(t_out2));
    CHECK(bl > 0 && bl2 == bl && memcmp(t_out, t_out2, (size_t)bl) == 0);
    CHECK_EQ_INT(imgw_codec_encode_pb_body(202, &pm, t_out, 10),
                 IMGW_ETOOBIG);
    CHECK_EQ_INT(imgw_codec_decode_push((const uint8_t *)"\x0a\x05" "ab", 4,
                                        &got, &gc),
                 IMGW_EDECODE);
    CHECK_EQ_INT(imgw_codec_decode_push(NULL, 0, &got, &gc), 0);
    CHECK(got.message_id[0] == 0 && gc.len == 0);
}

/* Four stored entries: live, revoked (no marker yet), revoked with an old
 * marker value, live with a large seq. */
static im_PushMessage e_pm[5];
static imgw_slice_t e_c[5];
static uint8_t e_blob[5][4096];
static imgw_slice_t e_blobs[5];
static int64_t e_seq[5] = {5, 6, 7, 1099511627776LL, 9};
static uint8_t e_rev[5] = {0, 1, 1, 0, 1};

static void
t_fill_entries(imgw_codec_entries_t *e)
{
    int i, k;

    for (i = 0; i < 5; i++) {
        t_fill_push(&e_pm[i], &e_c[i]);
        snprintf(e_pm[i].message_id, sizeof(e_pm[i].message_id), "%d",
                 100 + i);
    }
    strcpy(e_pm[2].extra[1].key, "revoked");
    strcpy(e_pm[2].extra[1].value, "0");
    e_pm[4].extra_count = 17; /* full: the marker replaces the last */
    for (k = 0; k < 17; k++) {
        snprintf(e_pm[4].extra[k].key, sizeof(e_pm[4].extra[k].key), "k%d",
                 k);
        strcpy(e_pm[4].extra[k].value, "x");
    }
    for (i = 0; i < 5; i++) {
        ssize_t n = imgw_codec_encode_pb_body(202, &e_pm[i], e_blob[i],
                                              sizeof(e_blob[i]));

        e_blobs[i].ptr = e_blob[i];
        e_blobs[i].len = n > 0 ? (size_t)n : 0;
    }
    e->n = 5;
    e->blob = e_blobs;
    e->seq = e_seq;
    e->revoked = e_rev;
}

static int
t_has_extra(const im_PushMessage *pm, const char *k, const char *v)
{
    pb_size_t i;

    for (i = 0; i < pm->extra_count; i++) {
        if (strcmp(pm->extra[i].key, k) == 0)
            return strcmp(pm->extra[i].value, v) == 0;
    }
    return 0;
}

TEST(sync_entries_pb)
{
    static im_SyncResponse sr, got;
    static uint8_t bad[] = {0x0a, 0x7f, 'x'};
    imgw_codec_entries_t e;
    im_WebSocketMessage env;
    imgw_slice_t body;
    pb_istream_t is;
    ssize_t n;
    size_t i;

    printf("  checks: SyncResponse from stored blobs in PB: seq appended, "
           "revoked entries emptied and marked\n");
    t_fill_entries(&e);
    memset(&sr, 0, sizeof(sr));
    sr.server_max_seq = 9;
    sr.has_more = true;
    sr.messages.arg = &e;
    n = imgw_codec_encode(IMGW_CODEC_PB, 301, 11, 1, &sr, t_out,
                          sizeof(t_out));
    CHECK(n > 0 && t_pb_open(t_out, (size_t)n, &env, &body) == 0);
    memset(&got, 0, sizeof(got));
    t_msgs.n = 0;
    got.messages.funcs.decode = t_msgs_dec;
    got.messages.arg = &t_msgs;
    is = pb_istream_from_buffer(body.ptr, body.len);
    CHECK(pb_decode(&is, &im_SyncResponse_msg, &got));
    CHECK(got.server_max_seq == 9 && got.has_more);
    CHECK_EQ_INT(t_msgs.n, 5);
    for (i = 0; i < t_msgs.n && i < 5; i++) {
        const im_PushMessage *m = &t_msgs.pm[i];

        CHECK(m->seq == e_seq[i]);
        CHECK_EQ_STR(m->message_id, e_pm[i].message_id);
        if (e_rev[i]) {
            CHECK_EQ_INT(t_msgs.content[i].len, 0);
            CHECK(t_has_extra(m, "revoked", "1"));
        } else {
            CHECK(t_msgs.content[i].len == sizeof(t_hello) - 1 &&
                  memcmp(t_msgs.content[i].ptr, t_hello,
                         sizeof(t_hello) - 1) == 0);
            CHECK(!t_has_extra(m, "revoked", "1"));
            CHECK_EQ_INT(m->extra_count, 2);
        }
    }
    CHECK_EQ_INT(t_msgs.pm[1].extra_count, 3); /* marker added */
    CHECK_EQ_INT(t_msgs.pm[2].extra_count, 2); /* marker replaced */
    CHECK_EQ_INT(t_msgs.pm[4].extra_count, 17); /* last slot gave way */
    CHECK_EQ_STR(t_msgs.pm[4].extra[16].key, "revoked");

    /* The same encoder is reached through a SyncResponse with funcs unset
     * (codec.h: only arg is the contract); a bad revoked blob fails. */
    e_blobs[1].ptr = bad;
    e_blobs[1].len = sizeof(bad);
    CHECK_EQ_INT(imgw_codec_encode(IMGW_CODEC_PB, 301, 11, 1, &sr, t_out,
                                   sizeof(t_out)),
                 IMGW_EINVAL);
    CHECK_EQ_INT(imgw_codec_encode(IMGW_CODEC_JSON, 301, 11, 1, &sr, t_out,
                                   sizeof(t_out)),
                 IMGW_EINVAL);
    e.n = 501;
    CHECK_EQ_INT(imgw_codec_encode(IMGW_CODEC_PB, 301, 11, 1, &sr, t_out,
                                   sizeof(t_out)),
                 IMGW_EINVAL);
    /* No entries at all. */
    sr.messages.arg = NULL;
    n = imgw_codec_encode(IMGW_CODEC_PB, 301, 11, 1, &sr, t_out,
                          sizeof(t_out));
    CHECK(n > 0);
    n = imgw_codec_encode(IMGW_CODEC_JSON, 301, 11, 1, &sr, t_out,
                          sizeof(t_out));
    CHECK(n > 0 && memmem(t_out, (size_t)n, "\"messages\":[]", 13) != NULL);
}

TEST(sync_entries_json)
{
    static im_SyncResponse sr;
    imgw_codec_entries_t e;
    const cJSON *msgs, *m, *body;
    cJSON *root;
    ssize_t n;
    int i;

    printf("  checks: SyncResponse from stored blobs in JSON: every field of "
           "every entry, seq included, revoked entries marked\n");
    t_fill_entries(&e);
    memset(&sr, 0, sizeof(sr));
    sr.error_code = im_ErrorCode_ERR_SUCCESS;
    sr.server_max_seq = 9;
    sr.messages.arg = &e;
    n = imgw_codec_encode(IMGW_CODEC_JSON, 301, 11, 1, &sr, t_out,
                          sizeof(t_out));
    CHECK(n > 0);
    CHECK(t_utf8_ok(t_out, (size_t)n));
    root = t_json(t_out, n);
    CHECK(root != NULL);
    body = cJSON_GetObjectItemCaseSensitive(root, "body");
    /* 5 + the resume contract's epoch, discontinuity, oldest_seq. */
    CHECK_EQ_INT(t_jcount(body), 8);
    CHECK_EQ_STR(t_jstr(body, "error_code"), "ERR_SUCCESS");
    CHECK(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(body, "has_more")));
    CHECK(
        cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(body, "discontinuity")));
    CHECK_EQ_STR(t_jstr(body, "epoch"), "");
    msgs = cJSON_GetObjectItemCaseSensitive(body, "messages");
    CHECK_EQ_INT(t_jcount(msgs), 5);
    for (i = 0; i < 5; i++) {
        const cJSON *extra;

        m = cJSON_GetArrayItem(msgs, i);
        CHECK_EQ_INT(t_jcount(m), 12);
        CHECK(t_jnum(m, "seq") == (double)e_seq[i]);
        CHECK_EQ_STR(t_jstr(m, "message_id"), e_pm[i].message_id);
        extra = cJSON_GetObjectItemCaseSensitive(m, "extra");
        if (e_rev[i]) {
            CHECK_EQ_STR(t_jstr(m, "content"), "");
            CHECK_EQ_STR(t_jstr(extra, "revoked"), "1");
        } else {
            CHECK_EQ_STR(t_jstr(m, "content"), t_hello);
            CHECK(t_jstr(extra, "revoked") == NULL);
        }
    }
    cJSON_Delete(root);
}

TEST(encode_from_json)
{
    static im_PushMessage got;
    im_WebSocketMessage env;
    imgw_slice_t body, gc;
    const cJSON *jb;
    cJSON *data, *root;
    ssize_t n;
    size_t k;
    static const char *bad[] = {
        "{\"error_msg\":5}",
        "{\"error_code\":true}",
        "[1]",
        "\"str\"",
        "{\"error_msg\":\"" /* 256 chars: one too many */
        "0123456789012345678901234567890123456789012345678901234567890123"
        "0123456789012345678901234567890123456789012345678901234567890123"
        "0123456789012345678901234567890123456789012345678901234567890123"
        "0123456789012345678901234567890123456789012345678901234567890123"
        "\"}",
    };

    printf("  checks: downlink JSON data -> frames in both codecs; wrong "
           "shapes -> EDECODE; non server->client commands -> "
           "EUNKNOWNCMD\n");
    data = cJSON_Parse("{\"message_id\":\"9\",\"sender_id\":\"sys\","
                       "\"content\":\"hi \\u00e9\",\"seq\":\"5\","
                       "\"send_time\":1,\"extra\":{\"a\":\"b\"},"
                       "\"unknown\":[1,2]}");
    n = imgw_codec_encode_from_json(IMGW_CODEC_PB, 202, data, 77, t_out,
                                    sizeof(t_out));
    CHECK(n > 0 && t_pb_open(t_out, (size_t)n, &env, &body) == 0);
    CHECK(env.command == 202 && env.sequence == 0 && env.timestamp == 77);
    CHECK_EQ_INT(t_push_dec(body.ptr, body.len, &got, &gc), 0);
    CHECK_EQ_STR(got.message_id, "9");
    CHECK(got.seq == 5 && got.send_time == 1 && got.extra_count == 1);
    CHECK(gc.len == 5 && memcmp(gc.ptr, "hi \xc3\xa9", 5) == 0);
    n = imgw_codec_encode_from_json(IMGW_CODEC_JSON, 202, data, 77, t_out,
                                    sizeof(t_out));
    root = t_json(t_out, n);
    jb = cJSON_GetObjectItemCaseSensitive(root, "body");
    CHECK_EQ_STR(t_jstr(root, "command"), "CMD_PUSH_MSG");
    CHECK_EQ_STR(t_jstr(jb, "content"), "hi \xc3\xa9");
    CHECK(t_jnum(jb, "seq") == 5);
    CHECK_EQ_INT(t_jcount(jb), 12);
    cJSON_Delete(root);
    cJSON_Delete(data);

    /* A SyncResponse with messages given inline. */
    data = cJSON_Parse("{\"server_max_seq\":3,\"has_more\":true,\"messages\":"
                       "[{\"message_id\":\"1\",\"seq\":2,\"content\":\"a\"},"
                       "{\"message_id\":\"2\",\"seq\":3,\"content\":\"b\"}]}");
    n = imgw_codec_encode_from_json(IMGW_CODEC_PB, 301, data, 0, t_out,
                                    sizeof(t_out));
    CHECK(n > 0 && t_pb_open(t_out, (size_t)n, &env, &body) == 0);
    {
        static im_SyncResponse sr;
        pb_istream_t is = pb_istream_from_buffer(body.ptr, body.len);

        memset(&sr, 0, sizeof(sr));
        t_msgs.n = 0;
        sr.messages.funcs.decode = t_msgs_dec;
        sr.messages.arg = &t_msgs;
        CHECK(pb_decode(&is, &im_SyncResponse_msg, &sr));
        CHECK(sr.server_max_seq == 3 && sr.has_more);
        CHECK_EQ_INT(t_msgs.n, 2);
        CHECK(t_msgs.pm[1].seq == 3 && t_msgs.content[1].len == 1 &&
              t_msgs.content[1].ptr[0] == 'b');
    }
    n = imgw_codec_encode_from_json(IMGW_CODEC_JSON, 301, data, 0, t_out,
                                    sizeof(t_out));
    root = t_json(t_out, n);
    jb = cJSON_GetObjectItemCaseSensitive(root, "body");
    CHECK_EQ_INT(t_jcount(cJSON_GetObjectItemCaseSensitive(jb, "messages")),
                 2);
    CHECK_EQ_STR(t_jstr(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(
                                               jb, "messages"),
                                           1),
                        "content"),
                 "b");
    cJSON_Delete(root);
    cJSON_Delete(data);

    data = cJSON_Parse("{\"messages\":[{\"seq\":\"x\"}]}");
    CHECK_EQ_INT(imgw_codec_encode_from_json(IMGW_CODEC_PB, 301, data, 0,
                                             t_out, sizeof(t_out)),
                 IMGW_EDECODE);
    cJSON_Delete(data);
    data = cJSON_Parse("{\"messages\":[1]}");
    CHECK_EQ_INT(imgw_codec_encode_from_json(IMGW_CODEC_JSON, 301, data, 0,
                                             t_out, sizeof(t_out)),
                 IMGW_EDECODE);
    cJSON_Delete(data);
    data = cJSON_Parse("{\"messages\":{}}");
    CHECK_EQ_INT(imgw_codec_encode_from_json(IMGW_CODEC_JSON, 301, data, 0,
                                             t_out, sizeof(t_out)),
                 IMGW_EDECODE);
    cJSON_Delete(data);
    data = cJSON_Parse("{\"content\":5}");
    CHECK_EQ_INT(imgw_codec_encode_from_json(IMGW_CODEC_PB, 202, data, 0,
                                             t_out, sizeof(t_out)),
                 IMGW_EDECODE);
    cJSON_Delete(data);
    data = cJSON_Parse("{\"message_ids\":[\"1\",2]}");
    CHECK_EQ_INT(imgw_codec_encode_from_json(IMGW_CODEC_PB, 502, data, 0,
                                             t_out, sizeof(t_out)),
                 IMGW_EDECODE);
    cJSON_Delete(data);
    for (k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
        data = cJSON_Parse(bad[k]);
        CHECK(data != NULL);
        CHECK_EQ_INT(imgw_codec_encode_from_json(IMGW_CODEC_JSON, 1, data, 0,
                                                 t_out, sizeof(t_out)),
                     IMGW_EDECODE);
        cJSON_Delete(data);
    }
    data = cJSON_Parse("{}");
    CHECK_EQ_INT(imgw_codec_encode_from_json(IMGW_CODEC_PB, 200, data, 0,
                                             t_out, sizeof(t_out)),
                 IMGW_EUNKNOWNCMD);
    CHECK_EQ_INT(imgw_codec_encode_from_json(IMGW_CODEC_JSON, 999, data, 0,
                                             t_out, sizeof(t_out)),
                 IMGW_EUNKNOWNCMD);
    CHECK_EQ_INT(imgw_codec_encode_from_json(IMGW_CODEC_JSON, 0, data, 0,
                                             t_out, sizeof(t_out)),
                 IMGW_EUNKNOWNCMD);
    CHECK(imgw_codec_encode_from_json(IMGW_CODEC_JSON, 102, data, 0, t_out,
                                      sizeof(t_out)) > 0);
    CHECK(imgw_codec_encode_from_json(IMGW_CODEC_PB, 6, NULL, 0, t_out,
                                      sizeof(t_out)) > 0);
    CHECK_EQ_INT(imgw_codec_encode_from_json(IMGW_CODEC_PB, 102, data, 0,
                                             t_out, 3),
                 IMGW_ETOOBIG);
    cJSON_Delete(data);
}

TEST(unknown_command)
{
    size_t n;

    printf("  checks: unknown, server->client and zero commands -> "
           "EUNKNOWNCMD with the sequence kept\n");
    n = t_pb_frame(999, 41, 0, NULL, NULL, t_out, sizeof(t_out));
    CHECK_EQ_INT(t_pdec(t_out, n), IMGW_EUNKNOWNCMD);
    CHECK_EQ_INT(t_in.sequence, 41);
    n = t_pb_frame(101, 42, 0, &im_AuthResponse_msg, &s_auth, t_out,
                   sizeof(t_out));
    CHECK_EQ_INT(t_pdec(t_out, n), IMGW_EUNKNOWNCMD);
    CHECK_EQ_INT(t_in.sequence, 42);
    n = t_pb_frame(0, 43, 0, NULL, NULL, t_out, sizeof(t_out));
    CHECK_EQ_INT(t_pdec(t_out, n), IMGW_EUNKNOWNCMD);
    CHECK_EQ_INT(t_in.sequence, 43);
    CHECK_EQ_INT(t_pdec(t_out, 0), IMGW_EUNKNOWNCMD); /* empty frame */
    CHECK_EQ_INT(t_in.sequence, 0);

    CHECK_EQ_INT(t_jdec("{\"command\":\"CMD_NOPE\",\"sequence\":44}"),
                 IMGW_EUNKNOWNCMD);
    CHECK_EQ_INT(t_in.sequence, 44);
    CHECK_EQ_INT(t_jdec("{\"command\":12345,\"sequence\":45}"),
                 IMGW_EUNKNOWNCMD);
    CHECK_EQ_INT(t_in.sequence, 45);
    CHECK_EQ_INT(t_jdec("{\"command\":\"CMD_AUTH_RSP\",\"sequence\":46}"),
                 IMGW_EUNKNOWNCMD);
    CHECK_EQ_INT(t_in.sequence, 46);
    CHECK_EQ_INT(t_jdec("{\"sequence\":47,\"body\":{}}"), IMGW_EUNKNOWNCMD);
    CHECK_EQ_INT(t_in.sequence, 47);
    CHECK_EQ_INT(t_jdec("{\"command\":[100],\"sequence\":48}"),
                 IMGW_EUNKNOWNCMD);
    CHECK_EQ_INT(t_in.sequence, 48);
    CHECK_EQ_INT(t_jdec("{\"command\":100.5,\"sequence\":49}"),
                 IMGW_EUNKNOWNCMD);
    CHECK_EQ_INT(t_in.sequence, 49);
    CHECK_EQ_INT(t_jdec("{\"command\":\"cmd_auth_req\",\"sequence\":50}"),
                 IMGW_EUNKNOWNCMD);
    CHECK_EQ_INT(t_in.sequence, 50);
}

TEST(envelope_errors)
{
    static const char *env_bad[] = {
        "",
        "   ",
        "null",
        "[]",
        "\"CMD_AUTH_REQ\"",
        "42",
        "{",
        "{\"command\":100,}",
        "{\"command\":100} x",
        "{\"command\":100}{}",
        "{\"command\":100,\"sequence\":\"1\"}",
        "{\"command\":100,\"sequence\":-1}",
        "{\"command\":100,\"sequence\":4294967296}",
        "{\"command\":100,\"sequence\":1.5}",
        "{'command':100}",
    };
    size_t i;
    uint8_t pb_bad[] = {0x08, 0x64, 0x10}; /* sequence tag, no value */
    uint8_t pb_bad2[] = {0x08, 0x64, 0x1a, 0x05, 0x0a}; /* body too short */
    uint8_t pb_bad3[] = {0x08, 0x64, 0x0f}; /* wire type 7 */
    uint8_t pb_bad4[] = {0x08, 0xff, 0xff, 0xff, 0xff, 0x1f}; /* > 32 bit */

    printf("  checks: undecodable envelopes -> EENVELOPE with sequence 0; "
           "bad bodies -> EDECODE with command and sequence\n");
    for (i = 0; i < sizeof(env_bad) / sizeof(env_bad[0]); i++) {
        int rc = t_jdec(env_bad[i]);

        printf("  %-45s -> %s\n", env_bad[i], imgw_err_name(rc));
        CHECK_EQ_INT(rc, IMGW_EENVELOPE);
        CHECK_EQ_INT(t_in.sequence, 0);
    }
    CHECK_EQ_INT(t_pdec(pb_bad, sizeof(pb_bad)), IMGW_EENVELOPE);
    CHECK_EQ_INT(t_pdec(pb_bad2, sizeof(pb_bad2)), IMGW_EENVELOPE);
    CHECK_EQ_INT(t_pdec(pb_bad3, sizeof(pb_bad3)), IMGW_EENVELOPE);
    CHECK_EQ_INT(t_pdec(pb_bad4, sizeof(pb_bad4)), IMGW_EENVELOPE);
    CHECK_EQ_INT(t_in.sequence, 0);

    /* Body errors keep command and sequence. */
    CHECK_EQ_INT(t_jdec("{\"command\":100,\"sequence\":7,\"body\":[1]}"),
                 IMGW_EDECODE);
    CHECK(t_in.command == 100 && t_in.sequence == 7);
    CHECK_EQ_INT(t_jdec("{\"command\":100,\"sequence\":7,\"body\":\"x\"}"),
                 IMGW_EDECODE);
    CHECK_EQ_INT(t_jdec("{\"command\":100,\"sequence\":7,\"body\":{"
                        "\"user_id\":1}}"),
                 IMGW_EDECODE);
    CHECK(t_in.command == 100 && t_in.sequence == 7);
    CHECK_EQ_INT(t_jdec("{\"command\":500,\"sequence\":7,\"body\":{"
                        "\"message_ids\":\"1\"}}"),
                 IMGW_EDECODE);
    CHECK_EQ_INT(t_jdec("{\"command\":500,\"sequence\":7,\"body\":{"
                        "\"message_ids\":[null]}}"),
                 IMGW_EDECODE);
    {
        /* A body that is not a valid AuthRequest: field 1 as a varint. */
        uint8_t f[] = {0x08, 0x64, 0x10, 0x07, 0x1a, 0x02, 0x08, 0x01};

        CHECK_EQ_INT(t_pdec(f, sizeof(f)), IMGW_EDECODE);
        CHECK(t_in.command == 100 && t_in.sequence == 7);
    }
}

TEST(oversized)
{
    static im_AuthRequest a;
    static im_ReadReceiptRequest r;
    static im_SendMessageRequest s;
    static char json[T_BIG];
    imgw_slice_t big;
    size_t n, k;
    int i;

    printf("  checks: strings, repeated fields, map entries and content at "
           "and over their bounds, both codecs\n");
    /* PB strings: 127 chars fit user_id[128], 128 do not. */
    memset(&a, 0, sizeof(a));
    memset(a.user_id, 'u', 127);
    n = t_pb_frame(100, 5, 0, &im_AuthRequest_msg, &a, t_out, sizeof(t_out));
    CHECK_EQ_INT(t_pdec(t_out, n), 0);
    CHECK_EQ_INT(strlen(t_in.u.auth.user_id), 127);
    {
        /* nanopb will not encode an over-long static string, so build the
         * body by hand: field 1, 128 bytes. */
        uint8_t body[140];
        imgw_slice_t b;
        im_WebSocketMessage env;
        pb_ostream_t os;

        body[0] = 0x0a;
        body[1] = 128;
        body[2] = 1;
        memset(body + 3, 'u', 128);
        b.ptr = body;
        b.len = 131;
        memset(&env, 0, sizeof(env));
        env.command = (im_CommandType)100;
        env.sequence = 5;
        env.body.funcs.encode = t_slice_enc;
        env.body.arg = &b;
        os = pb_ostream_from_buffer(t_out, sizeof(t_out));
        CHECK(pb_encode(&os, &im_WebSocketMessage_msg, &env));
        CHECK_EQ_INT(t_pdec(t_out, os.bytes_written), IMGW_EDECODE);
        CHECK(t_in.command == 100 && t_in.sequence == 5);
        /* message_ids: 101 entries of field 1 */
        b.ptr = t_body + 8192;
        for (i = 0, k = 0; i < 101; i++) {
            t_body[8192 + k++] = 0x0a;
            t_body[8192 + k++] = 1;
            t_body[8192 + k++] = 'm';
        }
        b.len = k;
        env.command = (im_CommandType)500;
        os = pb_ostream_from_buffer(t_out, sizeof(t_out));
        CHECK(pb_encode(&os, &im_WebSocketMessage_msg, &env));
        CHECK_EQ_INT(t_pdec(t_out, os.bytes_written), IMGW_EDECODE);
        b.len = k - 3;
        os = pb_ostream_from_buffer(t_out, sizeof(t_out));
        CHECK(pb_encode(&os, &im_WebSocketMessage_msg, &env));
        CHECK_EQ_INT(t_pdec(t_out, os.bytes_written), 0);
        CHECK_EQ_INT(t_in.u.read.message_ids_count, 100);
    }
    memset(&r, 0, sizeof(r));
    r.message_ids_count = 1;
    memset(r.message_ids[0], '1', 23);
    n = t_pb_frame(500, 5, 0, &im_ReadReceiptRequest_msg, &r, t_out,
                   sizeof(t_out));
    CHECK_EQ_INT(t_pdec(t_out, n), 0);

    /* PB map: 16 entries fit, 17 do not (SendMessageRequest). */
    memset(&s, 0, sizeof(s));
    s.extra_count = 16;
    for (i = 0; i < 16; i++)
        snprintf(s.extra[i].key, sizeof(s.extra[i].key), "k%d", i);
    n = t_pb_frame(200, 5, 0, &im_SendMessageRequest_msg, &s, t_out,
                   sizeof(t_out));
    CHECK_EQ_INT(t_pdec(t_out, n), 0);
    CHECK_EQ_INT(t_in.u.send.extra_count, 16);
    {
        /* Same frame plus one more map entry appended to the body. */
        im_WebSocketMessage env;
        imgw_slice_t b;
        size_t bl;
        pb_ostream_t os = pb_ostream_from_buffer(t_body, sizeof(t_body));

        CHECK(pb_encode(&os, &im_SendMessageRequest_msg, &s));
        bl = os.bytes_written;
        memcpy(t_body + bl, "\x52\x05\x0a\x03xyz", 7);
        b.ptr = t_body;
        b.len = bl + 7;
        memset(&env, 0, sizeof(env));
        env.command = (im_CommandType)200;
        env.body.funcs.encode = t_slice_enc;
        env.body.arg = &b;
        os = pb_ostream_from_buffer(t_out, sizeof(t_out));
        CHECK(pb_encode(&os, &im_WebSocketMessage_msg, &env));
        CHECK_EQ_INT(t_pdec(t_out, os.bytes_written), IMGW_EDECODE);
    }

    /* Content: 1 MiB is accepted, 1 MiB + 1 is refused (PB). */
    memset(t_scratch, 'c', T_MIB + 1);
    memset(&s, 0, sizeof(s));
    big.ptr = t_scratch;
    big.len = T_MIB;
    imgw_codec_set_bytes(&s.content, &big);
    n = t_pb_frame(200, 5, 0, &im_SendMessageRequest_msg, &s, t_out,
                   sizeof(t_out));
    CHECK(n > T_MIB);
    CHECK_EQ_INT(imgw_codec_decode(IMGW_CODEC_PB, t_out, n, &t_in, NULL, 0),
                 0);
    CHECK_EQ_INT(t_in.content.len, T_MIB);
    big.len = T_MIB + 1;
    n = t_pb_frame(200, 5, 0, &im_SendMessageRequest_msg, &s, t_out,
                   sizeof(t_out));
    CHECK_EQ_INT(imgw_codec_decode(IMGW_CODEC_PB, t_out, n, &t_in, NULL, 0),
                 IMGW_EDECODE);

    /* JSON: the same bounds. */
    n = (size_t)snprintf(json, sizeof(json),
                         "{\"command\":100,\"body\":{\"user_id\":\"%0127d\"}}",
                         0);
    CHECK_EQ_INT(t_jdec(json), 0);
    n = (size_t)snprintf(json, sizeof(json),
                         "{\"command\":100,\"body\":{\"user_id\":\"%0128d\"}}",
                         0);
    CHECK_EQ_INT(t_jdec(json), IMGW_EDECODE);
    n = (size_t)snprintf(json, sizeof(json),
                         "{\"command\":100,\"body\":{\"token\":\"%04096d\"}}",
                         0);
    CHECK_EQ_INT(t_jdec(json), IMGW_EDECODE);
    n = (size_t)snprintf(json, sizeof(json),
                         "{\"command\":203,\"body\":{\"message_id\":"
                         "\"%024d\"}}",
                         0);
    CHECK_EQ_INT(t_jdec(json), IMGW_EDECODE);
    for (k = 100; k <= 101; k++) {
        n = (size_t)snprintf(json, sizeof(json),
                             "{\"command\":500,\"body\":{\"message_ids\":[");
        for (i = 0; i < (int)k; i++)
            n += (size_t)snprintf(json + n, sizeof(json) - n, "%s\"%d\"",
                                  i ? "," : "", i);
        snprintf(json + n, sizeof(json) - n, "]}}");
        CHECK_EQ_INT(t_jdec(json), k == 100 ? 0 : IMGW_EDECODE);
    }
    for (k = 16; k <= 17; k++) {
        n = (size_t)snprintf(json, sizeof(json),
                             "{\"command\":200,\"body\":{\"extra\":{");
        for (i = 0; i < (int)k; i++)
            n += (size_t)snprintf(json + n, sizeof(json) - n,
                                  "%s\"k%d\":\"v\"", i ? "," : "", i);
        snprintf(json + n, sizeof(json) - n, "}}}");
        CHECK_EQ_INT(t_jdec(json), k == 16 ? 0 : IMGW_EDECODE);
    }
    n = (size_t)snprintf(json, sizeof(json),
                         "{\"command\":200,\"body\":{\"extra\":{\"%064d\":"
                         "\"v\"}}}",
                         0);
    CHECK_EQ_INT(t_jdec(json), IMGW_EDECODE);
    n = (size_t)snprintf(json, sizeof(json),
                         "{\"command\":200,\"body\":{\"extra\":{\"k\":"
                         "\"%0512d\"}}}",
                         0);
    CHECK_EQ_INT(t_jdec(json), IMGW_EDECODE);
    for (k = T_MIB; k <= T_MIB + 1; k++) {
        n = (size_t)snprintf(json, sizeof(json),
                             "{\"command\":200,\"body\":{\"content\":\"");
        memset(json + n, 'c', k);
        n += k;
        snprintf(json + n, sizeof(json) - n, "\"}}");
        CHECK_EQ_INT(t_jdec(json), k == T_MIB ? 0 : IMGW_EDECODE);
        if (k == T_MIB)
            CHECK_EQ_INT(t_in.content.len, T_MIB);
    }
}

TEST(too_deep_json)
{
    char buf[512];
    size_t n;
    int d;

    printf("  checks: nesting over IMGW_JSON_MAX_DEPTH is refused before "
           "parsing; brackets inside strings do not count\n");
    /* envelope (1) + body (2) + unknown field nested to total depth d */
    for (d = IMGW_JSON_MAX_DEPTH; d <= IMGW_JSON_MAX_DEPTH + 1; d++) {
        int k;

        n = (size_t)snprintf(buf, sizeof(buf),
                             "{\"command\":5,\"sequence\":1,\"body\":{\"x\":");
        for (k = 2; k < d; k++)
            buf[n++] = '[';
        for (k = 2; k < d; k++)
            buf[n++] = ']';
        snprintf(buf + n, sizeof(buf) - n, "}}");
        CHECK_EQ_INT(t_jdec(buf),
                     d <= IMGW_JSON_MAX_DEPTH ? 0 : IMGW_EENVELOPE);
    }
    CHECK_EQ_INT(t_in.sequence, 0);
    n = (size_t)snprintf(buf, sizeof(buf),
                         "{\"command\":5,\"body\":{\"x\":\"");
    memset(buf + n, '[', 100);
    n += 100;
    snprintf(buf + n, sizeof(buf) - n, "\\\"{{{{{{{{{{{{{{{{{{{{\"}}");
    CHECK_EQ_INT(t_jdec(buf), 0);
    memset(buf, '[', 400);
    buf[400] = 0;
    CHECK_EQ_INT(t_jdec(buf), IMGW_EENVELOPE);
    memset(buf, '{', 400);
    CHECK_EQ_INT(t_jdec(buf), IMGW_EENVELOPE);
}

TEST(json_escaping)
{
    static im_PushMessage pm;
    static const uint8_t raw[] =
        "a\"b\\c\n\r\t\b\f\x01\x1f\x7f/"
        "\xc3\xa9"         /* valid 2-byte */
        "\xff"             /* never valid */
        "\xc0\x80"         /* overlong NUL */
        "\xed\xa0\x80"     /* surrogate */
        "\xe2\x82"         /* truncated 3-byte */
        "\xe2\x82\xac"     /* valid euro sign */
        "\xf0\x9f\x98\x80" /* valid 4-byte */
        "\xf4\x90\x80\x80" /* above U+10FFFF */
        "\x80"             /* lone continuation */
        "\xe2";            /* truncated at the very end */
    static const char want[] =
        "a\"b\\c\n\r\t\b\f\x01\x1f\x7f/"
        "\xc3\xa9"
        "\xef\xbf\xbd"
        "\xef\xbf\xbd\xef\xbf\xbd"
        "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"
        "\xef\xbf\xbd\xef\xbf\xbd"
        "\xe2\x82\xac"
        "\xf0\x9f\x98\x80"
        "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"
        "\xef\xbf\xbd"
        "\xef\xbf\xbd";
    imgw_slice_t c;
    cJSON *root;
    ssize_t n, i;
    int ctl = 0;

    printf("  checks: quotes, backslashes and control characters escaped; "
           "invalid UTF-8 replaced with U+FFFD; output valid JSON + UTF-8\n");
    t_fill_push(&pm, &c);
    c.ptr = raw;
    c.len = sizeof(raw) - 1;
    strcpy(pm.sender_id, "tab\there\xfe");
    n = imgw_codec_encode(IMGW_CODEC_JSON, 202, 0, 0, &pm, t_out,
                          sizeof(t_out));
    CHECK(n > 0);
    printf("  %.*s\n", (int)(n > 0 ? n : 0), (const char *)t_out);
    for (i = 0; i < n; i++)
        ctl += t_out[i] < 0x20;
    CHECK_EQ_INT(ctl, 0);
    CHECK(t_utf8_ok(t_out, (size_t)n));
    CHECK(memmem(t_out, (size_t)n, "\\u0001\\u001f", 12) != NULL);
    CHECK(memmem(t_out, (size_t)n, "a\\\"b\\\\c\\n\\r\\t\\b\\f",
                 sizeof("a\\\"b\\\\c\\n\\r\\t\\b\\f") - 1) != NULL);
    root = t_json(t_out, n);
    CHECK(root != NULL);
    CHECK_EQ_STR(t_jstr(cJSON_GetObjectItemCaseSensitive(root, "body"),
                        "content"),
                 want);
    CHECK_EQ_STR(t_jstr(cJSON_GetObjectItemCaseSensitive(root, "body"),
                        "sender_id"),
                 "tab\there\xef\xbf\xbd");
    cJSON_Delete(root);

    /* JSON input escapes decode to the bytes. */
    CHECK_EQ_INT(t_jdec("{\"command\":200,\"body\":{\"content\":"
                        "\"\\u00e9\\n\\\"\\ud83d\\ude00\"}}"),
                 0);
    CHECK(t_in.content.len == 8 &&
          memcmp(t_in.content.ptr, "\xc3\xa9\n\"\xf0\x9f\x98\x80", 8) == 0);
}

TEST(callback_wire_types)
{
    static im_PushMessage pm;
    imgw_slice_t c;
    /* content (field 8) as a varint instead of length-delimited */
    static const uint8_t blob[] = {0x0a, 0x01, '1', 0x40, 0x05};
    /* envelope: command 100, body (field 3) as a varint */
    static const uint8_t env[] = {0x08, 0x64, 0x10, 0x02, 0x18, 0x05};
    /* command 200, body = SendMessageRequest with content (7) as fixed32 */
    static const uint8_t send[] = {0x08, 0xc8, 0x01, 0x10, 0x03, 0x1a, 0x05,
                                   0x3d, 0x01, 0x02, 0x03, 0x04};

    printf("  checks: bytes fields arriving with a scalar wire type are "
           "refused (nanopb would hand the callback a stack copy)\n");
    CHECK_EQ_INT(imgw_codec_decode_push(blob, sizeof(blob), &pm, &c),
                 IMGW_EDECODE);
    CHECK_EQ_INT(c.len, 0);
    CHECK_EQ_INT(imgw_codec_push_json_prefix(blob, sizeof(blob), 1, t_out,
                                             sizeof(t_out)),
                 IMGW_EDECODE);
    CHECK_EQ_INT(t_pdec(env, sizeof(env)), IMGW_EENVELOPE);
    CHECK_EQ_INT(t_pdec(send, sizeof(send)), IMGW_EDECODE);
    CHECK(t_in.command == 200 && t_in.sequence == 3 && t_in.content.len == 0);
}

/* Every strict prefix of a frame: an error or (PB only, when the cut is at
 * an envelope field boundary before the body) a valid shorter frame. */
TEST(truncated_pb)
{
    static im_PushMessage pm;
    uint8_t *frame, *copy;
    size_t n, len, body_at, body_end, errs = 0, inside = 0;
    imgw_slice_t c;
    int rc;

    printf("  checks: every truncation of a binary frame: never a crash or "
           "over-read, an error whenever the body is cut\n");
    t_fill_c2s();
    n = t_pb_frame(200, 300, 1700000000000, &im_SendMessageRequest_msg,
                   &c_send, t_out, sizeof(t_out));
    CHECK(n > 20);
    frame = malloc(n);
    memcpy(frame, t_out, n);
    /* 08 c8 01 (command) 10 ac 02 (sequence) 1a ... (body) 20 + 6 bytes
     * (timestamp): cutting exactly before the body or before the
     * timestamp leaves a valid frame; any other cut after the body tag
     * must fail. */
    body_at = 6;
    body_end = n - 7;
    CHECK(frame[body_at] == 0x1a);
    CHECK(frame[body_end] == 0x20);
    for (len = 0; len < n; len++) {
        copy = malloc(len ? len : 1);
        memcpy(copy, frame, len);
        rc = imgw_codec_decode(IMGW_CODEC_PB, copy, len, &t_in, NULL, 0);
        if (len > body_at && len != body_end) {
            inside++;
            errs += rc < 0;
        } else if (rc != 0 && rc != IMGW_EENVELOPE &&
                   rc != IMGW_EUNKNOWNCMD) {
            errs += 1000;
        }
        free(copy);
    }
    CHECK_EQ_INT(errs, inside);
    free(frame);

    /* Stored blobs too (decode_push and the JSON prefix that uses it). */
    t_fill_push(&pm, &c);
    n = (size_t)imgw_codec_encode_pb_body(202, &pm, t_out, sizeof(t_out));
    errs = 0;
    for (len = 0; len < n; len++) {
        im_PushMessage *got = malloc(sizeof(*got));
        imgw_slice_t gc;

        copy = malloc(len ? len : 1);
        memcpy(copy, t_out, len);
        rc = imgw_codec_decode_push(copy, len, got, &gc);
        if (rc != 0 && rc != IMGW_EDECODE)
            errs++;
        if (rc == 0 && gc.len && (gc.ptr < copy || gc.ptr + gc.len >
                                                       copy + len))
            errs++;
        rc = (int)imgw_codec_push_json_prefix(copy, len, 1, t_out2,
                                              sizeof(t_out2));
        if (rc < 0 && rc != IMGW_EDECODE)
            errs++;
        free(copy);
        free(got);
    }
    CHECK_EQ_INT(errs, 0);
}

TEST(truncated_json)
{
    size_t i, len, n, errs = 0, total = 0;
    uint8_t *copy;
    int rc;

    printf("  checks: every strict prefix of every JSON client frame is an "
           "error (never a crash or over-read)\n");
    for (i = 0; i < T_NC2S; i++) {
        n = strlen(t_c2s[i].json);
        for (len = 0; len < n; len++) {
            copy = malloc(len ? len : 1);
            memcpy(copy, t_c2s[i].json, len);
            rc = imgw_codec_decode(IMGW_CODEC_JSON, copy, len, &t_in,
                                   t_scratch, len);
            total++;
            if (rc >= 0)
                errs++;
            free(copy);
        }
    }
    printf("  %zu prefixes\n", total);
    CHECK_EQ_INT(errs, 0);
}

#define T_FUZZ 60000

static uint64_t t_rng = 0x9e3779b97f4a7c15ULL;

static uint64_t
t_rand(void)
{
    /* xorshift64*: fixed seed, so failures reproduce. */
    t_rng ^= t_rng >> 12;
    t_rng ^= t_rng << 25;
    t_rng ^= t_rng >> 27;
    return t_rng * 0x2545f4914f6cdd1dULL;
}

static int
t_rc_ok(int rc)
{
    return rc == 0 || rc == IMGW_EENVELOPE || rc == IMGW_EUNKNOWNCMD ||
           rc == IMGW_EDECODE || rc == IMGW_EUTF8;
}

TEST(garbage)
{
    static const char alpha[] = "{}[]\":,0123456789-.eEtrufalsn\\ \tabcu";
    static const char *keys[] = {
        "\"command\":", "\"sequence\":", "\"body\":", "\"content\":",
        "\"extra\":", "\"message_ids\":", "200", "\"CMD_SEND_MSG_REQ\"",
        "\"timestamp\":", "null", "\"\\u0000\"", "{", "}", "[", "]", ",",
        "\"x\"", "1e999", "-0", "\"\\ud800\""};
    size_t it, i, n, bad = 0, ok = 0;
    uint8_t *buf;
    uint8_t seed[T_NC2S][600], blob[1024];
    size_t seedn[T_NC2S], blobn;
    static im_PushMessage pm0;
    imgw_slice_t c0;

    printf("  checks: random bytes, random JSON-ish text and mutated valid "
           "frames (fixed seed): allowed codes only, no crash\n");
    t_fill_push(&pm0, &c0);
    blobn = (size_t)imgw_codec_encode_pb_body(202, &pm0, blob, sizeof(blob));
    t_fill_c2s();
    for (i = 0; i < T_NC2S; i++)
        seedn[i] = t_pb_frame(t_c2s[i].cmd, 1, 2, t_c2s[i].desc,
                              t_c2s[i].body, seed[i], sizeof(seed[i]));

    for (it = 0; it < T_FUZZ; it++) {
        int rc;

        n = t_rand() % 80;
        buf = malloc(n ? n : 1);
        switch (it % 6) {
        case 5: /* mutated valid PushMessage blob */
            free(buf);
            n = blobn;
            buf = malloc(n);
            memcpy(buf, blob, n);
            for (size_t k = t_rand() % 4 + 1; k; k--)
                buf[t_rand() % n] = (uint8_t)t_rand();
            if (t_rand() % 2)
                n = t_rand() % (n + 1);
            break;
        case 0: /* random bytes */
            for (i = 0; i < n; i++)
                buf[i] = (uint8_t)t_rand();
            break;
        case 1: /* mutated valid binary frame */
            i = t_rand() % T_NC2S;
            free(buf);
            n = seedn[i];
            buf = malloc(n);
            memcpy(buf, seed[i], n);
            for (size_t k = t_rand() % 4 + 1; k; k--)
                buf[t_rand() % n] = (uint8_t)t_rand();
            if (t_rand() % 2)
                n = t_rand() % (n + 1);
            break;
        case 2: /* JSON-ish characters */
            for (i = 0; i < n; i++)
                buf[i] = (uint8_t)alpha[t_rand() % (sizeof(alpha) - 1)];
            break;
        case 3: { /* JSON-ish tokens */
            size_t cap = n, k = 0;

            while (k < cap) {
                const char *tok = keys[t_rand() % (sizeof(keys) /
                                                   sizeof(keys[0]))];
                size_t tl = strlen(tok);

                if (tl > cap - k)
                    tl = cap - k;
                memcpy(buf + k, tok, tl);
                k += tl;
            }
            break;
        }
        default: { /* mutated valid JSON frame */
            const char *j = t_c2s[t_rand() % T_NC2S].json;

            free(buf);
            n = strlen(j);
            buf = malloc(n);
            memcpy(buf, j, n);
            for (size_t k = t_rand() % 3 + 1; k; k--)
                buf[t_rand() % n] = (uint8_t)alpha[t_rand() %
                                                   (sizeof(alpha) - 1)];
            break;
        }
        }
        rc = imgw_codec_decode(IMGW_CODEC_PB, buf, n, &t_in, NULL, 0);
        bad += !t_rc_ok(rc);
        if (rc == 0 && t_in.content.len &&
            (t_in.content.ptr < buf || t_in.content.ptr + t_in.content.len >
                                           buf + n))
            bad++;
        rc = imgw_codec_decode(IMGW_CODEC_JSON, buf, n, &t_in, t_scratch, n);
        bad += !t_rc_ok(rc);
        ok += rc == 0;
        if (rc == 0 && t_in.content.len > n)
            bad++;
        {
            im_PushMessage *pm = malloc(sizeof(*pm));
            imgw_slice_t c;
            ssize_t r;

            rc = imgw_codec_decode_push(buf, n, pm, &c);
            bad += rc != 0 && rc != IMGW_EDECODE;
            r = imgw_codec_push_json_prefix(buf, n, 5, t_out, sizeof(t_out));
            bad += r < 0 && r != IMGW_EDECODE;
            if (r > 0 && !t_utf8_ok(t_out, (size_t)r))
                bad++;
            free(pm);
        }
        {
            /* Whatever cJSON accepts, the downlink path must handle. */
            cJSON *d = cJSON_ParseWithLength((const char *)buf, n);

            if (d) {
                static const int cmds[] = {1, 202, 301, 502};
                ssize_t r = imgw_codec_encode_from_json(
                    it % 2 ? IMGW_CODEC_PB : IMGW_CODEC_JSON,
                    cmds[t_rand() % 4], d, 1, t_out, sizeof(t_out));

                bad += r < 0 && r != IMGW_EDECODE && r != IMGW_EUTF8;
                cJSON_Delete(d);
            }
        }
        free(buf);
    }
    printf("  %d inputs, %zu decoded as valid JSON frames\n", T_FUZZ, ok);
    CHECK_EQ_INT(bad, 0);
}

TEST(too_small_output)
{
    static im_PushMessage pm;
    static im_SyncResponse sr;
    imgw_codec_entries_t e;
    imgw_slice_t c;
    uint8_t blob[4096], *buf;
    size_t i, cap, bad = 0, tried = 0;
    ssize_t n, r, bl;
    int codec;

    printf("  checks: every output capacity below the frame size gives "
           "ETOOBIG and no write past cap\n");
    t_fill_s2c();
    t_fill_push(&pm, &c);
    t_fill_entries(&e);
    memset(&sr, 0, sizeof(sr));
    sr.messages.arg = &e;
    for (codec = 0; codec <= 1; codec++) {
        for (i = 0; i < T_NS2C + 2; i++) {
            int cmd = i < T_NS2C ? t_s2c[i].cmd : i == T_NS2C ? 202 : 301;
            const void *body = i < T_NS2C ? t_s2c[i].body
                               : i == T_NS2C ? (const void *)&pm
                                             : (const void *)&sr;

            n = imgw_codec_encode((imgw_codec_t)codec, cmd, 1, 2, body, t_out,
                                  sizeof(t_out));
            if (n <= 0) {
                bad++;
                continue;
            }
            for (cap = 0; cap < (size_t)n;
                 cap += cap + 40 >= (size_t)n ? 1 : 1 + cap / 64) {
                buf = cap ? malloc(cap) : NULL;
                r = imgw_codec_encode((imgw_codec_t)codec, cmd, 1, 2, body,
                                      buf, cap);
                bad += r != IMGW_ETOOBIG;
                tried++;
                free(buf);
            }
            buf = malloc((size_t)n);
            r = imgw_codec_encode((imgw_codec_t)codec, cmd, 1, 2, body, buf,
                                  (size_t)n);
            bad += r != n || memcmp(buf, t_out, (size_t)n) != 0;
            free(buf);
        }
    }
    bl = imgw_codec_encode_pb_body(202, &pm, blob, sizeof(blob));
    n = imgw_codec_push_json_prefix(blob, (size_t)bl, 3, t_out,
                                    sizeof(t_out));
    for (cap = 0; cap < (size_t)n; cap++) {
        buf = cap ? malloc(cap) : NULL;
        r = imgw_codec_push_json_prefix(blob, (size_t)bl, 3, buf, cap);
        bad += r != IMGW_ETOOBIG;
        tried++;
        free(buf);
    }
    printf("  %zu capacities tried\n", tried);
    CHECK_EQ_INT(bad, 0);
}

/* ---- audit item 2: UTF-8 in string fields, NUL in JSON ----------------- */

/* Malformed UTF-8 of each kind the validator knows. */
static const char *const t_bad_utf8[] = {
    "a\xff",         /* never valid */
    "ok\xc3",        /* cut 2-byte */
    "\xed\xa0\x80",  /* surrogate */
    "\xc0\xaf",      /* overlong */
    "\xf4\x90\x80\x80", /* above U+10FFFF */
    "x\x80y",        /* stray continuation */
};
#define T_NBAD (sizeof(t_bad_utf8) / sizeof(t_bad_utf8[0]))

/*
 * Writes s into string slot j of a nanopb struct and returns the number of
 * slots. Slots come from nanopb's field iterator, so every static string
 * field of every body is found without a list here to keep in step: the
 * singular strings, element 0 of a repeated string and the key and value
 * of map entry 0 (the filled bodies have at least one of each).
 */
static int
t_string_slot(const pb_msgdesc_t *desc, void *st, int j, const char *s,
              int *seen)
{
    pb_field_iter_t it;

    if (!pb_field_iter_begin(&it, desc, st))
        return *seen;
    do {
        if (PB_ATYPE(it.type) != PB_ATYPE_STATIC)
            continue;
        if (PB_LTYPE(it.type) == PB_LTYPE_STRING) {
            if ((*seen)++ == j && s)
                snprintf((char *)it.pData, it.data_size, "%s", s);
        } else if (PB_LTYPE_IS_SUBMSG(it.type)) {
            t_string_slot(it.submsg_desc, it.pData, j, s, seen);
        }
    } while (pb_field_iter_next(&it));
    return *seen;
}

TEST(utf8_string_fields_pb)
{
    static uint8_t body[16384];
    size_t t, b, n;
    int j, slots, total = 0, seen;

    printf("  checks: every string field of every client->server body "
           "(map keys and values, repeated strings) with invalid UTF-8 is "
           "IMGW_EUTF8 with command and sequence known; valid UTF-8 in the "
           "same slot decodes\n");
    t_fill_c2s();
    for (t = 0; t < T_NC2S; t++) {
        seen = 0;
        memcpy(body, t_c2s[t].body, t_c2s[t].size);
        slots = t_string_slot(t_c2s[t].desc, body, -1, NULL, &seen);
        for (j = 0; j < slots; j++) {
            for (b = 0; b < T_NBAD; b++) {
                memcpy(body, t_c2s[t].body, t_c2s[t].size);
                seen = 0;
                t_string_slot(t_c2s[t].desc, body, j, t_bad_utf8[b], &seen);
                n = t_pb_frame(t_c2s[t].cmd, 77, 5, t_c2s[t].desc, body,
                               t_out, sizeof(t_out));
                CHECK(n > 0);
                CHECK_EQ_INT(t_pdec(t_out, n), IMGW_EUTF8);
                CHECK_EQ_INT(t_in.sequence, 77);
                CHECK_EQ_INT(t_in.command, t_c2s[t].cmd);
            }
            memcpy(body, t_c2s[t].body, t_c2s[t].size);
            seen = 0;
            t_string_slot(t_c2s[t].desc, body, j, "\xc3\xa9\xe2\x82\xac",
                          &seen);
            n = t_pb_frame(t_c2s[t].cmd, 77, 5, t_c2s[t].desc, body, t_out,
                           sizeof(t_out));
            CHECK_EQ_INT(t_pdec(t_out, n), 0);
        }
        printf("  command %d: %d string slots\n", t_c2s[t].cmd, slots);
        total += slots;
    }
    /* auth 3, send 5 + extra key and value, ack 1, sync 1 (epoch), revoke
     * 2, receipt 2, typing 1: a new string field in the proto raises this. */
    CHECK_EQ_INT(total, 17);
}

TEST(utf8_string_fields_json)
{
    /* Each names one string field of a client body; %s is the value. */
    static const char *const cases[] = {
        "{\"command\":100,\"sequence\":7,\"body\":{\"user_id\":\"%s\"}}",
        "{\"command\":100,\"sequence\":7,\"body\":{\"token\":\"%s\"}}",
        "{\"command\":100,\"sequence\":7,\"body\":{\"platform\":\"%s\"}}",
        "{\"command\":200,\"sequence\":7,\"body\":{\"client_msg_id\":\"%s\"}}",
        "{\"command\":200,\"sequence\":7,\"body\":{\"conversation_id\":\"%s\"}}",
        "{\"command\":200,\"sequence\":7,\"body\":{\"sender_id\":\"%s\"}}",
        "{\"command\":200,\"sequence\":7,\"body\":{\"receiver_id\":\"%s\"}}",
        "{\"command\":200,\"sequence\":7,\"body\":{\"group_id\":\"%s\"}}",
        "{\"command\":200,\"sequence\":7,\"body\":{\"extra\":{\"%s\":\"v\"}}}",
        "{\"command\":200,\"sequence\":7,\"body\":{\"extra\":{\"k\":\"%s\"}}}",
        "{\"command\":203,\"sequence\":7,\"body\":{\"message_id\":\"%s\"}}",
        "{\"command\":205,\"sequence\":7,\"body\":{\"message_id\":\"%s\"}}",
        "{\"command\":205,\"sequence\":7,\"body\":{\"conversation_id\":\"%s\"}}",
        "{\"command\":500,\"sequence\":7,\"body\":{\"message_ids\":[\"1\",\"%s\"]}}",
        "{\"command\":500,\"sequence\":7,\"body\":{\"conversation_id\":\"%s\"}}",
        "{\"command\":600,\"sequence\":7,\"body\":{\"conversation_id\":\"%s\"}}",
    };
    char buf[512];
    size_t i, b;

    printf("  checks: the JSON reader refuses raw invalid UTF-8 in every "
           "string field (a caller that skipped the text-frame check, and "
           "/api/push or broker input, which never had one); content, "
           "bytes, may hold any bytes\n");
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        for (b = 0; b < T_NBAD; b++) {
            snprintf(buf, sizeof(buf), cases[i], t_bad_utf8[b]);
            CHECK_EQ_INT(t_jdec(buf), IMGW_EUTF8);
            CHECK_EQ_INT(t_in.sequence, 7);
        }
        snprintf(buf, sizeof(buf), cases[i], "\xc3\xa9");
        CHECK_EQ_INT(t_jdec(buf), 0);
    }
    CHECK_EQ_INT(t_jdec("{\"command\":200,\"sequence\":7,\"body\":"
                        "{\"content\":\"a\xff\"}}"),
                 0);
    CHECK(t_in.content.len == 2 && memcmp(t_in.content.ptr, "a\xff", 2) == 0);
}

static int
t_jdecn(const char *s, size_t n)
{
    uint8_t *p = malloc(n ? n : 1);
    int rc;

    memcpy(p, s, n);
    memset(&t_in, 0xa5, sizeof(t_in));
    rc = imgw_codec_decode(IMGW_CODEC_JSON, p, n, &t_in, t_scratch,
                           sizeof(t_scratch));
    free(p);
    return rc;
}

TEST(json_nul_refused)
{
    /* sizeof - 1: the raw NUL is part of the text. */
    static const char raw_content[] =
        "{\"command\":200,\"sequence\":7,\"body\":{\"content\":\"ab\0cd\"}}";
    static const char raw_cmid[] =
        "{\"command\":200,\"sequence\":7,\"body\":{\"client_msg_id\":\"a\0b\"}}";
    static const char raw_extra[] =
        "{\"command\":200,\"sequence\":7,\"body\":{\"extra\":{\"k\":\"v\0w\"}}}";
    static const char raw_outside[] =
        "{\"command\":5,\"sequence\":7}\0";
    static const char esc_content[] =
        "{\"command\":200,\"sequence\":7,\"body\":{\"content\":\"ab\\u0000cd\"}}";
    static const char esc_user[] =
        "{\"command\":100,\"sequence\":7,\"body\":{\"user_id\":\"al\\u0000ice\"}}";
    static const char esc_literal[] =
        "{\"command\":200,\"sequence\":7,\"body\":{\"content\":\"a\\\\u0000\"}}";

    printf("  checks: U+0000 in JSON, raw NUL byte or \\u0000 escape, in "
           "content or any string, is refused (IMGW_EENVELOPE, sequence 0) "
           "instead of cutting the field; an escaped backslash before "
           "u0000 is text\n");
    CHECK_EQ_INT(t_jdecn(raw_content, sizeof(raw_content) - 1),
                 IMGW_EENVELOPE);
    CHECK_EQ_INT(t_in.sequence, 0);
    CHECK_EQ_INT(t_jdecn(raw_cmid, sizeof(raw_cmid) - 1), IMGW_EENVELOPE);
    CHECK_EQ_INT(t_jdecn(raw_extra, sizeof(raw_extra) - 1), IMGW_EENVELOPE);
    CHECK_EQ_INT(t_jdecn(raw_outside, sizeof(raw_outside) - 1),
                 IMGW_EENVELOPE);
    CHECK_EQ_INT(t_jdecn(esc_content, sizeof(esc_content) - 1),
                 IMGW_EENVELOPE);
    CHECK_EQ_INT(t_jdecn(esc_user, sizeof(esc_user) - 1), IMGW_EENVELOPE);
    CHECK_EQ_INT(t_jdecn(esc_literal, sizeof(esc_literal) - 1), 0);
    CHECK(t_in.content.len == 7 &&
          memcmp(t_in.content.ptr, "a\\u0000", 7) == 0);
    /* The prescan the push API and the broker path run. */
    CHECK_EQ_INT(imgw_codec_json_prescan((const uint8_t *)raw_content,
                                         sizeof(raw_content) - 1),
                 0);
    CHECK_EQ_INT(imgw_codec_json_prescan((const uint8_t *)esc_content,
                                         sizeof(esc_content) - 1),
                 0);
    CHECK_EQ_INT(imgw_codec_json_prescan((const uint8_t *)esc_literal,
                                         sizeof(esc_literal) - 1),
                 1);
}

TEST(downlink_utf8)
{
    static const struct {
        int cmd;
        const char *data;
    } bad[] = {
        {202, "{\"client_msg_id\":\"a\xff\"}"},
        {202, "{\"sender_id\":\"\xed\xa0\x80\"}"},
        {202, "{\"extra\":{\"k\xc3\":\"v\"}}"},
        {202, "{\"extra\":{\"k\":\"\xc0\xaf\"}}"},
        {502, "{\"message_ids\":[\"1\",\"\xff\"]}"},
        {602, "{\"user_id\":\"\xf4\x90\x80\x80\"}"},
        {1, "{\"error_msg\":\"x\x80\"}"},
        {301, "{\"messages\":[{\"message_id\":\"1\"},{\"group_id\":\"\xff\"}]}"},
    };
    static im_PushMessage got;
    im_WebSocketMessage env;
    imgw_slice_t body, gc;
    cJSON *d, *root;
    ssize_t n;
    size_t i;

    printf("  checks: downlink data (/api/push, broker) with a non-UTF-8 "
           "string is IMGW_EUTF8 in both codecs, so no protobuf push carries "
           "one; non-UTF-8 content is refused too (issue 12 item 5), UTF-8 "
           "content goes to both codecs exactly\n");
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        d = cJSON_Parse(bad[i].data);
        CHECK(d != NULL);
        CHECK_EQ_INT(imgw_codec_encode_from_json(IMGW_CODEC_PB, bad[i].cmd, d,
                                                 1, t_out, sizeof(t_out)),
                     IMGW_EUTF8);
        CHECK_EQ_INT(imgw_codec_encode_from_json(IMGW_CODEC_JSON, bad[i].cmd,
                                                 d, 1, t_out, sizeof(t_out)),
                     IMGW_EUTF8);
        cJSON_Delete(d);
    }
    /* Issue 12 item 5: business input whose content is not UTF-8 is
     * refused as malformed (it used to reach PB clients as is and JSON
     * clients with U+FFFD); valid UTF-8 content still goes through. */
    d = cJSON_Parse("{\"message_id\":\"1\",\"content\":\"a\xff\x01z\"}");
    CHECK_EQ_INT(imgw_codec_encode_from_json(IMGW_CODEC_PB, 202, d, 1, t_out,
                                             sizeof(t_out)),
                 IMGW_EUTF8);
    CHECK_EQ_INT(imgw_codec_encode_from_json(IMGW_CODEC_JSON, 202, d, 1, t_out,
                                             sizeof(t_out)),
                 IMGW_EUTF8);
    cJSON_Delete(d);
    d = cJSON_Parse("{\"message_id\":\"1\",\"content\":\"a\xc3\xa9\x01z\"}");
    n = imgw_codec_encode_from_json(IMGW_CODEC_PB, 202, d, 1, t_out,
                                    sizeof(t_out));
    CHECK(n > 0 && t_pb_open(t_out, (size_t)n, &env, &body) == 0);
    CHECK(t_push_dec(body.ptr, body.len, &got, &gc) == 0);
    CHECK(gc.len == 5 && memcmp(gc.ptr, "a\xc3\xa9\x01z", 5) == 0);
    n = imgw_codec_encode_from_json(IMGW_CODEC_JSON, 202, d, 1, t_out,
                                    sizeof(t_out));
    CHECK(n > 0 && t_utf8_ok(t_out, (size_t)n));
    root = t_json(t_out, n);
    CHECK_EQ_STR(t_jstr(cJSON_GetObjectItemCaseSensitive(root, "body"),
                        "content"),
                 "a\xc3\xa9\x01z");
    cJSON_Delete(root);
    cJSON_Delete(d);
}

TEST(content_non_utf8_consistent)
{
    static const uint8_t raw[] = "ok\xff\xfe\xc3(\x01\xe2\x82";
    static im_PushMessage pm;
    static im_SyncResponse sr;
    static const char want[] =
        "ok\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd(\x01\xef\xbf\xbd\xef\xbf\xbd";
    static uint8_t blob[4096], pfx[8192];
    imgw_slice_t c, sl;
    int64_t seq = 5;
    uint8_t rev = 0;
    imgw_codec_entries_t e = {1, &sl, &seq, &rev};
    cJSON *root;
    const cJSON *b;
    ssize_t n, bl;

    printf("  checks: content that is not UTF-8 is stored as sent; JSON "
           "receivers get it with each malformed byte as U+FFFD, the same "
           "in a push frame, the fan-out prefix and a sync page\n");
    t_fill_push(&pm, &c);
    c.ptr = raw;
    c.len = sizeof(raw) - 1;
    bl = imgw_codec_encode_pb_body(202, &pm, blob, sizeof(blob));
    CHECK(bl > 0);
    sl.ptr = blob;
    sl.len = (size_t)bl;
    /* push frame */
    n = imgw_codec_encode(IMGW_CODEC_JSON, 202, 0, 1, &pm, t_out,
                          sizeof(t_out));
    root = t_json(t_out, n);
    CHECK_EQ_STR(t_jstr(cJSON_GetObjectItemCaseSensitive(root, "body"),
                        "content"),
                 want);
    cJSON_Delete(root);
    /* fan-out prefix + seq + }} */
    n = imgw_codec_push_json_prefix(blob, (size_t)bl, 1, pfx, sizeof(pfx));
    CHECK(n > 0);
    n += snprintf((char *)pfx + n, sizeof(pfx) - (size_t)n, "5}}");
    root = t_json(pfx, n);
    CHECK_EQ_STR(t_jstr(cJSON_GetObjectItemCaseSensitive(root, "body"),
                        "content"),
                 want);
    cJSON_Delete(root);
    /* sync page */
    memset(&sr, 0, sizeof(sr));
    sr.messages.arg = &e;
    n = imgw_codec_encode(IMGW_CODEC_JSON, 301, 1, 1, &sr, t_out,
                          sizeof(t_out));
    root = t_json(t_out, n);
    b = cJSON_GetObjectItemCaseSensitive(root, "body");
    b = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(b, "messages"), 0);
    CHECK_EQ_STR(t_jstr(b, "content"), want);
    cJSON_Delete(root);
}

/* ---- audit item 3: sync page sizing ------------------------------------ */

/* A worst-case PushMessage blob: every string full of control bytes, 17
 * extras of maximal control-byte keys and values, content of clen 0x01. */
static ssize_t
t_worst_blob(uint8_t *out, size_t cap, size_t clen, uint8_t fill)
{
    static im_PushMessage pm;
    static uint8_t content[70000];
    imgw_slice_t c = {content, clen};
    pb_size_t i;

    memset(&pm, 0, sizeof(pm));
    memset(content, fill, clen);
    memset(pm.message_id, 1, sizeof(pm.message_id) - 1);
    memset(pm.client_msg_id, 1, sizeof(pm.client_msg_id) - 1);
    memset(pm.conversation_id, 1, sizeof(pm.conversation_id) - 1);
    memset(pm.sender_id, 1, sizeof(pm.sender_id) - 1);
    memset(pm.receiver_id, 1, sizeof(pm.receiver_id) - 1);
    memset(pm.group_id, 1, sizeof(pm.group_id) - 1);
    pm.message_type = INT32_MIN;
    pm.send_time = INT64_MIN;
    pm.server_time = INT64_MIN;
    pm.extra_count = 17;
    for (i = 0; i < 17; i++) {
        memset(pm.extra[i].key, 1, sizeof(pm.extra[i].key) - 1);
        pm.extra[i].key[0] = (char)('a' + i); /* distinct keys */
        memset(pm.extra[i].value, 1, sizeof(pm.extra[i].value) - 1);
    }
    imgw_codec_set_bytes(&pm.content, &c);
    return imgw_codec_encode_pb_body(202, &pm, out, cap);
}

/* Frame length of a SyncResponse of the first n entries of e, or error. */
static ssize_t
t_sync_frame(imgw_codec_t codec, imgw_codec_entries_t *e, size_t n,
             uint8_t *out, size_t cap)
{
    static im_SyncResponse sr;
    imgw_codec_entries_t sub = *e;

    sub.n = n;
    memset(&sr, 0, sizeof(sr));
    sr.server_max_seq = INT64_MAX;
    sr.has_more = true;
    sr.messages.arg = &sub;
    return imgw_codec_encode(codec, 301, UINT32_MAX, INT64_MIN, &sr, out,
                             cap);
}

TEST(sync_entry_sizing)
{
    static uint8_t blobs[4][80000];
    static const struct {
        size_t clen;
        uint8_t fill;
    } kinds[] = {{60000, 0x01}, {60000, 0xff}, {0, 0x01}, {3, 'a'}};
    imgw_slice_t sl[4];
    int64_t seqs[4] = {1, 127, 128, INT64_MAX};
    uint8_t rev[4] = {0, 1, 0, 1};
    imgw_codec_entries_t e = {4, sl, seqs, rev};
    size_t i, k, sum;
    int c;

    printf("  checks: imgw_codec_sync_entry_size is exactly what an entry "
           "adds to the frame and imgw_codec_sync_entry_max bounds it, for "
           "worst-case blobs (control bytes everywhere, invalid UTF-8), "
           "live and revoked, both codecs; a buffer of the sizes plus "
           "IMGW_CODEC_SYNC_OVERHEAD always fits the page\n");
    for (i = 0; i < 4; i++) {
        ssize_t n = t_worst_blob(blobs[i], sizeof(blobs[i]), kinds[i].clen,
                                 kinds[i].fill);
        CHECK(n > 0);
        sl[i].ptr = blobs[i];
        sl[i].len = n > 0 ? (size_t)n : 0;
    }
    for (c = 0; c < 2; c++) {
        imgw_codec_t codec = c ? IMGW_CODEC_JSON : IMGW_CODEC_PB;
        ssize_t f0 = t_sync_frame(codec, &e, 0, t_out, sizeof(t_out)), fk;

        CHECK(f0 > 0 && (size_t)f0 <= IMGW_CODEC_SYNC_OVERHEAD);
        sum = 0;
        for (k = 0; k < 4; k++) {
            ssize_t x = imgw_codec_sync_entry_size(codec, sl[k].ptr,
                                                   sl[k].len, seqs[k],
                                                   rev[k]);
            size_t b = imgw_codec_sync_entry_max(codec, sl[k].len);

            printf("  %s entry %zu: blob %zu, exact %zd, bound %zu\n",
                   c ? "JSON" : "PB", k, sl[k].len, x, b);
            CHECK(x > 0 && (size_t)x <= b);
            sum += (size_t)x;
            fk = t_sync_frame(codec, &e, k + 1, t_out, sizeof(t_out));
            if (c) {
                /* JSON's first entry has no comma before it. */
                CHECK_EQ_INT(fk - f0, (ssize_t)sum - 1);
            } else {
                /* PB: the envelope's body length varint grows too. */
                CHECK(fk - f0 >= (ssize_t)sum && fk - f0 <= (ssize_t)sum + 9);
            }
            CHECK(fk > 0 && (size_t)fk <= sum + IMGW_CODEC_SYNC_OVERHEAD);
        }
        /* The page fits a buffer of exactly its sizes + the overhead, and
         * the content comes back intact. */
        fk = t_sync_frame(codec, &e, 4, t_out,
                          sum + IMGW_CODEC_SYNC_OVERHEAD);
        CHECK(fk > 0);
        CHECK(t_sync_frame(codec, &e, 4, t_out, (size_t)fk - 1) ==
              IMGW_ETOOBIG);
        fk = t_sync_frame(codec, &e, 4, t_out, sizeof(t_out));
        if (c) {
            cJSON *root = t_json(t_out, fk);
            const cJSON *m = cJSON_GetArrayItem(
                cJSON_GetObjectItemCaseSensitive(
                    cJSON_GetObjectItemCaseSensitive(root, "body"),
                    "messages"),
                0);
            const char *got = t_jstr(m, "content");

            CHECK(got && strlen(got) == 60000 && got[0] == 1 &&
                  got[59999] == 1);
            cJSON_Delete(root);
        }
    }
    /* A blob that does not decode has no exact size (live PB needs no
     * decode). */
    CHECK_EQ_INT(imgw_codec_sync_entry_size(IMGW_CODEC_JSON,
                                            (const uint8_t *)"\x0a\x7f", 2,
                                            1, 0),
                 IMGW_EINVAL);
    CHECK_EQ_INT(imgw_codec_sync_entry_size(IMGW_CODEC_PB,
                                            (const uint8_t *)"\x0a\x7f", 2,
                                            1, 1),
                 IMGW_EINVAL);
}

/* The cross-node downlink's data: exactly the frame's "body" object. */
static void
test_json_body_only(void)
{
    im_ReadReceiptPush rp = im_ReadReceiptPush_init_zero;
    snprintf(rp.conversation_id, sizeof(rp.conversation_id), "%s",
             "single:a\"b");
    snprintf(rp.user_id, sizeof(rp.user_id), "%s", "u1");
    rp.message_ids_count = 2;
    snprintf(rp.message_ids[0], sizeof(rp.message_ids[0]), "%s", "123");
    snprintf(rp.message_ids[1], sizeof(rp.message_ids[1]), "%s", "456");
    rp.read_time = 9007199254740993LL; /* above 2^53: written exactly */
    uint8_t frame[4096], body[4096];
    ssize_t fl = imgw_codec_encode(IMGW_CODEC_JSON, 502, 0, 0, &rp, frame,
                                   sizeof(frame));
    ssize_t bl = imgw_codec_encode_json_body(502, &rp, body, sizeof(body));
    CHECK(fl > 0 && bl > 0);
    const char *at = strstr((const char *)frame, "\"body\":");
    CHECK(at != NULL);
    if (at == NULL || fl <= 0 || bl <= 0)
        return;
    at += 7;
    CHECK_EQ_INT((int)bl, (int)(fl - (at - (const char *)frame) - 1));
    CHECK(memcmp(at, body, (size_t)bl) == 0);
    printf("  body: %.*s\n", (int)bl, body);
    CHECK(imgw_codec_encode_json_body(502, &rp, body, 8) == IMGW_ETOOBIG);
    CHECK(imgw_codec_encode_json_body(3, &rp, body, sizeof(body)) ==
          IMGW_EINVAL);
}

int
main(void)
{
    RUN(json_body_only);
    test_verbose_ = getenv("TEST_QUIET") == NULL;
    RUN(cmd_names);
    RUN(s2c_pb_roundtrip);
    RUN(s2c_json_roundtrip);
    RUN(json_envelope_exact);
    RUN(c2s_pb_roundtrip);
    RUN(c2s_json_roundtrip);
    RUN(json_command_name_and_number);
    RUN(json_int64_string_and_enum_number);
    RUN(extra_map_roundtrip);
    RUN(push_pb_parts);
    RUN(push_json_prefix);
    RUN(pb_body_and_decode_push);
    RUN(sync_entries_pb);
    RUN(sync_entries_json);
    RUN(encode_from_json);
    RUN(unknown_command);
    RUN(envelope_errors);
    RUN(oversized);
    RUN(too_deep_json);
    RUN(json_escaping);
    RUN(callback_wire_types);
    RUN(truncated_pb);
    RUN(truncated_json);
    RUN(garbage);
    RUN(too_small_output);
    RUN(utf8_string_fields_pb);
    RUN(utf8_string_fields_json);
    RUN(json_nul_refused);
    RUN(downlink_utf8);
    RUN(content_non_utf8_consistent);
    RUN(sync_entry_sizing);
    TEST_DONE();
}
