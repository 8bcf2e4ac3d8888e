/*
 * conn.c: imgw-bench's client connection: TCP from a chosen 127.0.0.X
 * source, the HTTP upgrade with ?token=, CMD_AUTH_REQ, and then framing and
 * decoding of what the server sends. Loop thread of the owning worker only.
 *
 * Why not wslay's event API: a bench client must cost far less per message
 * than the server, so frames are written and parsed here directly. Client
 * frames are masked (RFC 6455 5.3) with a fresh key each; the payload is
 * encoded with 14 bytes of headroom so the header goes in front of it
 * without a copy, and one uv_try_write sends the whole frame. Reads land in
 * the worker's shared buffer; a connection keeps bytes of its own only while
 * a frame is incomplete, so idle connections hold no buffers at all.
 */
#include "bench.h"

#include "imgw.pb.h"
#include "jwt.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <netinet/in.h>
#include <pb_decode.h>
#include <pb_encode.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define HDR_ROOM 14 /* 2 + 8 (length) + 4 (mask) */
#define MAX_IN_FRAME (16u << 20)
#define MAX_HTTP_HEAD 8192

static struct sockaddr_in g_dst;
static struct sockaddr_in g_dst_recv; /* receivers: --recv-host/--recv-port */
static const bopts_t *g_o;

static void conn_fail(bconn_t *c, int http_status, int auth_code,
                      const char *why);

void
bconn_global_init(const bopts_t *o)
{
    g_o = o;
    memset(&g_dst, 0, sizeof(g_dst));
    g_dst.sin_family = AF_INET;
    g_dst.sin_port = htons((uint16_t)o->port);
    inet_pton(AF_INET, o->host, &g_dst.sin_addr);
    g_dst_recv = g_dst;
    if (o->recv_port > 0)
        g_dst_recv.sin_port = htons((uint16_t)o->recv_port);
    if (o->recv_host)
        inet_pton(AF_INET, o->recv_host, &g_dst_recv.sin_addr);
}

static const struct sockaddr_in *
conn_dst(const bconn_t *c)
{
    return c->role == BR_RECV ? &g_dst_recv : &g_dst;
}

size_t
bconn_worker_buf(void)
{
    /* envelope + body of the largest message we send, with headroom */
    return (size_t)g_o->size * 2 + 8192;
}

/* ---- writing ---------------------------------------------------------- */

typedef struct wreq_s {
    uv_write_t req;
    size_t len;
    uint8_t data[];
} wreq_t;

static void
on_written(uv_write_t *req, int status)
{
    (void)status; /* a failed write shows up as a read error / close */
    free(req);
}

/*
 * Sends buf[0..len) in order with what is already queued: uv_try_write
 * refuses (UV_EAGAIN) while the queue is non-empty, so trying first never
 * reorders. Whatever the kernel did not take is copied and queued.
 */
static int
conn_write(bconn_t *c, const uint8_t *buf, size_t len)
{
    uv_buf_t b = uv_buf_init((char *)buf, (unsigned)len);
    int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (n == UV_EAGAIN)
        n = 0;
    if (n < 0)
        return n;
    if ((size_t)n == len)
        return 0;
    wreq_t *wr = malloc(sizeof(*wr) + (len - (size_t)n));
    if (wr == NULL)
        return UV_ENOMEM;
    wr->len = len - (size_t)n;
    memcpy(wr->data, buf + n, wr->len);
    b = uv_buf_init((char *)wr->data, (unsigned)wr->len);
    int rc = uv_write(&wr->req, (uv_stream_t *)&c->tcp, &b, 1, on_written);
    if (rc < 0)
        free(wr);
    return rc;
}

static inline void
mask_payload(uint8_t *p, size_t len, uint32_t key)
{
    uint64_t k8 = (uint64_t)key | ((uint64_t)key << 32);
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t v;
        memcpy(&v, p + i, 8);
        v ^= k8;
        memcpy(p + i, &v, 8);
    }
    const uint8_t *kb = (const uint8_t *)&key;
    for (; i < len; i++)
        p[i] ^= kb[i & 3];
}

/*
 * payload must have HDR_ROOM writable bytes in front of it. Masks in place
 * and sends one frame with FIN set.
 */
static int
conn_send_frame(bconn_t *c, int op, uint8_t *payload, size_t len)
{
    uint8_t hdr[HDR_ROOM];
    size_t hl = 0;
    uint32_t key = bench_rand(c->w);
    hdr[hl++] = (uint8_t)(0x80 | op);
    if (len < 126) {
        hdr[hl++] = (uint8_t)(0x80 | len);
    } else if (len < 65536) {
        hdr[hl++] = 0x80 | 126;
        hdr[hl++] = (uint8_t)(len >> 8);
        hdr[hl++] = (uint8_t)len;
    } else {
        hdr[hl++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--)
            hdr[hl++] = (uint8_t)((uint64_t)len >> (8 * i));
    }
    memcpy(hdr + hl, &key, 4);
    hl += 4;
    mask_payload(payload, len, key);
    uint8_t *frame = payload - hl;
    memcpy(frame, hdr, hl);
    return conn_write(c, frame, len + hl);
}

/* ---- protobuf helpers ------------------------------------------------- */

typedef struct slice_s {
    const uint8_t *p;
    size_t n;
} slice_t;

static bool
enc_slice_cb(pb_ostream_t *s, const pb_field_t *f, void *const *arg)
{
    const slice_t *sl = *arg;
    return pb_encode_tag_for_field(s, f) && pb_encode_string(s, sl->p, sl->n);
}

static bool
dec_slice_cb(pb_istream_t *s, const pb_field_t *f, void **arg)
{
    (void)f;
    slice_t *sl = *arg;
    sl->p = (const uint8_t *)s->state; /* memory stream: points into frame */
    sl->n = s->bytes_left;
    return pb_read(s, NULL, s->bytes_left);
}

/*
 * Encodes envelope {command, sequence, body} at out (which has HDR_ROOM in
 * front) and returns its length, or 0 on overflow.
 */
static size_t
enc_envelope(uint8_t *out, size_t cap, int cmd, uint32_t seq,
             const uint8_t *body, size_t blen)
{
    im_WebSocketMessage env = im_WebSocketMessage_init_zero;
    slice_t sl = {body, blen};
    env.command = (im_CommandType)cmd;
    env.sequence = seq;
    env.body.funcs.encode = enc_slice_cb;
    env.body.arg = &sl;
    pb_ostream_t os = pb_ostream_from_buffer(out, cap);
    if (!pb_encode(&os, im_WebSocketMessage_fields, &env))
        return 0;
    return os.bytes_written;
}

/*
 * Hot path without nanopb. The three messages that go by per relayed message
 * (SendMessageRequest out; the envelope, PushMessage and SendMessageResponse
 * in) are written and scanned by hand: nanopb's descriptor walk and its
 * ~10 KB fixed-size structs cost more than everything else the bench does
 * per message. Field numbers are the contract in proto/imgw.proto; the
 * nanopb path (auth, heartbeat, errors) stays as the reference.
 */
static inline uint8_t *
put_varint(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

static inline size_t
varint_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

/* Length-delimited field: tag (field << 3 | 2), length, bytes. */
static inline uint8_t *
put_bytes(uint8_t *p, unsigned field, const void *b, size_t n)
{
    *p++ = (uint8_t)(field << 3 | 2);
    p = put_varint(p, n);
    memcpy(p, b, n);
    return p + n;
}

static inline int
get_varint(const uint8_t **pp, const uint8_t *end, uint64_t *v)
{
    const uint8_t *p = *pp;
    uint64_t x = 0;
    for (int shift = 0; shift < 64 && p < end; shift += 7) {
        uint8_t b = *p++;
        x |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *v = x;
            *pp = p;
            return 0;
        }
    }
    return -1;
}

typedef struct pbfield_s {
    unsigned num;
    unsigned wire;
    uint64_t v;       /* varint value */
    const uint8_t *b; /* length-delimited payload */
    size_t n;
} pbfield_t;

/* Reads the next field at *pp; returns 1, 0 at the end, -1 if malformed. */
static int
next_field(const uint8_t **pp, const uint8_t *end, pbfield_t *f)
{
    uint64_t tag;
    if (*pp >= end)
        return 0;
    if (get_varint(pp, end, &tag) < 0)
        return -1;
    f->num = (unsigned)(tag >> 3);
    f->wire = (unsigned)(tag & 7);
    switch (f->wire) {
    case 0:
        return get_varint(pp, end, &f->v) < 0 ? -1 : 1;
    case 1:
        if (end - *pp < 8)
            return -1;
        *pp += 8;
        return 1;
    case 5:
        if (end - *pp < 4)
            return -1;
        *pp += 4;
        return 1;
    case 2: {
        uint64_t n;
        if (get_varint(pp, end, &n) < 0 || n > (uint64_t)(end - *pp))
            return -1;
        f->b = *pp;
        f->n = (size_t)n;
        *pp += n;
        return 1;
    }
    default:
        return -1;
    }
}

/* ---- JSON helpers ----------------------------------------------------- */

static const struct {
    const char *name;
    int num;
} k_cmds[] = {
    {"CMD_ERROR_RSP", 1},   {"CMD_HEARTBEAT_RSP", 6},  {"CMD_AUTH_RSP", 101},
    {"CMD_KICK_PUSH", 102}, {"CMD_SEND_MSG_RSP", 201}, {"CMD_PUSH_MSG", 202},
};

static int
json_enum(const cJSON *it, int is_cmd)
{
    if (it == NULL)
        return 0;
    if (cJSON_IsNumber(it))
        return (int)it->valuedouble;
    if (!cJSON_IsString(it))
        return -1;
    const char *s = it->valuestring;
    if (is_cmd) {
        for (size_t i = 0; i < sizeof(k_cmds) / sizeof(k_cmds[0]); i++)
            if (strcmp(s, k_cmds[i].name) == 0)
                return k_cmds[i].num;
        return -1;
    }
    if (strcmp(s, "ERR_SUCCESS") == 0)
        return 0;
    if (strcmp(s, "ERR_SEND_TOO_FAST") == 0)
        return 201;
    if (strcmp(s, "ERR_AUTH_FAILED") == 0)
        return 100;
    if (strcmp(s, "ERR_SERVER_BUSY") == 0)
        return 3;
    if (strcmp(s, "ERR_PERMISSION_DENIED") == 0)
        return 102;
    if (strcmp(s, "ERR_CONVERSATION_NOT_EXIST") == 0)
        return 202;
    return 1;
}

static int64_t
json_i64(const cJSON *it)
{
    if (cJSON_IsNumber(it))
        return (int64_t)it->valuedouble;
    if (cJSON_IsString(it))
        return strtoll(it->valuestring, NULL, 10);
    return 0;
}

/* ---- sending commands ------------------------------------------------- */

static int
send_auth(bconn_t *c)
{
    size_t cap;
    uint8_t *wb = bench_wbuf(c->w, &cap);
    uint8_t *out = wb + HDR_ROOM;
    size_t n;
    if (g_o->json) {
        int k = snprintf((char *)out, cap - HDR_ROOM,
                         "{\"command\":\"CMD_AUTH_REQ\",\"sequence\":1,"
                         "\"body\":{\"user_id\":\"%s\",\"token\":\"\","
                         "\"platform\":\"bench\"}}",
                         c->user);
        n = (size_t)k;
        return conn_send_frame(c, 1, out, n);
    }
    uint8_t body[256];
    im_AuthRequest a;
    memset(&a, 0, sizeof(a));
    snprintf(a.user_id, sizeof(a.user_id), "%s", c->user);
    strcpy(a.platform, "bench");
    pb_ostream_t os = pb_ostream_from_buffer(body, sizeof(body));
    if (!pb_encode(&os, im_AuthRequest_fields, &a))
        return UV_EINVAL;
    n = enc_envelope(out, cap - HDR_ROOM, im_CommandType_CMD_AUTH_REQ, 1, body,
                     os.bytes_written);
    if (n == 0)
        return UV_EINVAL;
    return conn_send_frame(c, 2, out, n);
}

int
bconn_send_heartbeat(bconn_t *c)
{
    size_t cap;
    uint8_t *wb = bench_wbuf(c->w, &cap);
    uint8_t *out = wb + HDR_ROOM;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    if (g_o->json) {
        int k = snprintf((char *)out, cap - HDR_ROOM,
                         "{\"command\":\"CMD_HEARTBEAT_REQ\",\"sequence\":0,"
                         "\"body\":{\"client_time\":%lld}}",
                         (long long)ms);
        return conn_send_frame(c, 1, out, (size_t)k);
    }
    uint8_t body[32];
    im_HeartbeatRequest h = {ms};
    pb_ostream_t os = pb_ostream_from_buffer(body, sizeof(body));
    if (!pb_encode(&os, im_HeartbeatRequest_fields, &h))
        return UV_EINVAL;
    size_t n =
        enc_envelope(out, cap - HDR_ROOM, im_CommandType_CMD_HEARTBEAT_REQ, 0,
                     body, os.bytes_written);
    return n ? conn_send_frame(c, 2, out, n) : UV_EINVAL;
}

/*
 * Sends CMD_SEND_MSG_REQ with envelope sequence n to c->peer (a user, or a
 * group when group is set). The body is encoded after the envelope's
 * headroom region so that one scratch buffer serves both.
 */
int
bconn_send_msg(bconn_t *c, uint32_t n, const char *cmid, size_t cmidlen,
               const uint8_t *content, size_t clen, int group)
{
    size_t cap;
    uint8_t *wb = bench_wbuf(c->w, &cap);
    uint8_t *out = wb + HDR_ROOM;
    if (g_o->json) {
        int k = snprintf((char *)out, cap - HDR_ROOM,
                         "{\"command\":\"CMD_SEND_MSG_REQ\",\"sequence\":%u,"
                         "\"body\":{\"client_msg_id\":\"%.*s\","
                         "\"sender_id\":\"%s\",\"%s\":\"%s\","
                         "\"message_type\":1,\"content\":\"%.*s\"}}",
                         n, (int)cmidlen, cmid, c->user,
                         group ? "group_id" : "receiver_id", c->peer, (int)clen,
                         (const char *)content);
        if (k <= 0 || (size_t)k >= cap - HDR_ROOM)
            return UV_EINVAL;
        return conn_send_frame(c, 1, out, (size_t)k);
    }
    /* body = SendMessageRequest{1 client_msg_id, 3 sender_id,
     * 4 receiver_id | 5 group_id, 6 message_type = 1, 7 content} */
    size_t ul = strlen(c->user), pl = strlen(c->peer);
    size_t blen = 1 + varint_len(cmidlen) + cmidlen + 1 + varint_len(ul) + ul +
                  1 + varint_len(pl) + pl + 2 + 1 + varint_len(clen) + clen;
    size_t need = 1 + varint_len(im_CommandType_CMD_SEND_MSG_REQ) + 1 +
                  varint_len(n) + 1 + varint_len(blen) + blen;
    if (need + HDR_ROOM > cap)
        return UV_EINVAL;
    uint8_t *q = out;
    *q++ = 1 << 3; /* envelope.command */
    q = put_varint(q, im_CommandType_CMD_SEND_MSG_REQ);
    *q++ = 2 << 3; /* envelope.sequence */
    q = put_varint(q, n);
    *q++ = 3 << 3 | 2; /* envelope.body */
    q = put_varint(q, blen);
    q = put_bytes(q, 1, cmid, cmidlen);
    q = put_bytes(q, 3, c->user, ul);
    q = put_bytes(q, group ? 5 : 4, c->peer, pl);
    *q++ = 6 << 3;
    *q++ = 1;
    q = put_bytes(q, 7, content, clen);
    return conn_send_frame(c, 2, out, (size_t)(q - out));
}

/* ---- receiving -------------------------------------------------------- */

static void
handle_cmd(bconn_t *c, int cmd, uint32_t seq, int err, const uint8_t *content,
           size_t clen, int64_t tseq, int64_t server_ms, uint64_t now)
{
    switch (cmd) {
    case im_CommandType_CMD_AUTH_RSP:
        if (c->state != BC_AUTH)
            return;
        if (err != 0) {
            conn_fail(c, 0, err, "auth refused");
            return;
        }
        c->state = BC_READY;
        bench_on_ready(c, now);
        return;
    case im_CommandType_CMD_SEND_MSG_RSP:
        bench_on_ack(c, seq, err, now);
        return;
    case im_CommandType_CMD_PUSH_MSG:
        bench_on_push(c, content, clen, tseq, server_ms, now);
        return;
    case im_CommandType_CMD_KICK_PUSH:
        bench_on_kick(c);
        return;
    case im_CommandType_CMD_ERROR_RSP:
        bench_on_error_rsp(c, err);
        if (c->state == BC_AUTH)
            conn_fail(c, 0, err, "error response during auth");
        return;
    default:
        return;
    }
}

static void on_binary_pb(bconn_t *c, const uint8_t *p, size_t len,
                         uint64_t now);

/*
 * Scans the envelope by hand; CMD_PUSH_MSG and CMD_SEND_MSG_RSP are decoded
 * here, anything else goes to the nanopb path.
 */
static void
on_binary(bconn_t *c, const uint8_t *p, size_t len, uint64_t now)
{
    const uint8_t *q = p, *end = p + len, *body = NULL;
    size_t blen = 0;
    uint64_t cmd = 0, seq = 0;
    pbfield_t f;
    int r;
    while ((r = next_field(&q, end, &f)) > 0) {
        if (f.num == 1 && f.wire == 0)
            cmd = f.v;
        else if (f.num == 2 && f.wire == 0)
            seq = f.v;
        else if (f.num == 3 && f.wire == 2) {
            body = f.b;
            blen = f.n;
        }
    }
    if (r < 0) {
        bench_on_error_rsp(c, -1);
        return;
    }
    if (cmd == im_CommandType_CMD_PUSH_MSG) {
        const uint8_t *content = NULL;
        size_t clen = 0;
        int64_t tseq = 0, sms = 0;
        q = body;
        end = body + blen;
        while (body && (r = next_field(&q, end, &f)) > 0) {
            if (f.num == 8 && f.wire == 2) {
                content = f.b;
                clen = f.n;
            } else if (f.num == 10 && f.wire == 0)
                sms = (int64_t)f.v;
            else if (f.num == 11 && f.wire == 0)
                tseq = (int64_t)f.v;
        }
        if (r < 0) {
            bench_on_error_rsp(c, -1);
            return;
        }
        handle_cmd(c, (int)cmd, (uint32_t)seq, 0, content, clen, tseq, sms,
                   now);
        return;
    }
    if (cmd == im_CommandType_CMD_SEND_MSG_RSP) {
        int err = 0;
        q = body;
        end = body + blen;
        while (body && (r = next_field(&q, end, &f)) > 0)
            if (f.num == 1 && f.wire == 0)
                err = (int)f.v;
        if (r < 0)
            err = -1;
        handle_cmd(c, (int)cmd, (uint32_t)seq, err, NULL, 0, 0, 0, now);
        return;
    }
    on_binary_pb(c, p, len, now);
}

/* The reference path: nanopb for every other command. */
static void
on_binary_pb(bconn_t *c, const uint8_t *p, size_t len, uint64_t now)
{
    im_WebSocketMessage env = im_WebSocketMessage_init_zero;
    slice_t body = {NULL, 0};
    env.body.funcs.decode = dec_slice_cb;
    env.body.arg = &body;
    pb_istream_t is = pb_istream_from_buffer(p, len);
    if (!pb_decode(&is, im_WebSocketMessage_fields, &env)) {
        bench_on_error_rsp(c, -1);
        return;
    }
    int cmd = env.command, err = 0;
    slice_t content = {NULL, 0};
    int64_t tseq = 0, server_ms = 0;
    is = pb_istream_from_buffer(body.p ? body.p : (const uint8_t *)"", body.n);
    switch (cmd) {
    case im_CommandType_CMD_AUTH_RSP: {
        im_AuthResponse r = im_AuthResponse_init_zero;
        if (!pb_decode(&is, im_AuthResponse_fields, &r))
            err = -1;
        else
            err = r.error_code;
        break;
    }
    case im_CommandType_CMD_SEND_MSG_RSP: {
        im_SendMessageResponse r = im_SendMessageResponse_init_zero;
        if (!pb_decode(&is, im_SendMessageResponse_fields, &r))
            err = -1;
        else
            err = r.error_code;
        break;
    }
    case im_CommandType_CMD_ERROR_RSP: {
        im_ErrorResponse r = im_ErrorResponse_init_zero;
        err = pb_decode(&is, im_ErrorResponse_fields, &r) ? (int)r.error_code
                                                          : -1;
        break;
    }
    case im_CommandType_CMD_PUSH_MSG: {
        /*
         * The push struct is ~10 KB of fixed arrays (extra map); decode into
         * a static one without re-initialising it, resetting only what we
         * read, to keep a memset of 10 KB off every delivery.
         */
        static im_PushMessage pm;
        pm.seq = 0;
        pm.extra_count = 0;
        pm.content.funcs.decode = dec_slice_cb;
        pm.content.arg = &content;
        if (!pb_decode_ex(&is, im_PushMessage_fields, &pm, PB_DECODE_NOINIT)) {
            bench_on_error_rsp(c, -1);
            return;
        }
        tseq = pm.seq;
        server_ms = pm.server_time;
        break;
    }
    default:
        break;
    }
    handle_cmd(c, cmd, env.sequence, err, content.p, content.n, tseq, server_ms,
               now);
}

static void
on_text(bconn_t *c, const uint8_t *p, size_t len, uint64_t now)
{
    cJSON *j = cJSON_ParseWithLength((const char *)p, len);
    if (j == NULL) {
        bench_on_error_rsp(c, -1);
        return;
    }
    int cmd = json_enum(cJSON_GetObjectItemCaseSensitive(j, "command"), 1);
    uint32_t seq =
        (uint32_t)json_i64(cJSON_GetObjectItemCaseSensitive(j, "sequence"));
    const cJSON *body = cJSON_GetObjectItemCaseSensitive(j, "body");
    int err =
        json_enum(cJSON_GetObjectItemCaseSensitive(body, "error_code"), 0);
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(body, "content");
    const char *content = cJSON_IsString(ct) ? ct->valuestring : NULL;
    int64_t tseq = json_i64(cJSON_GetObjectItemCaseSensitive(body, "seq"));
    int64_t sms =
        json_i64(cJSON_GetObjectItemCaseSensitive(body, "server_time"));
    handle_cmd(c, cmd, seq, err, (const uint8_t *)content,
               content ? strlen(content) : 0, tseq, sms, now);
    cJSON_Delete(j);
}

static void
on_message(bconn_t *c, int op, const uint8_t *p, size_t len, uint64_t now)
{
    if (op == 2)
        on_binary(c, p, len, now);
    else
        on_text(c, p, len, now);
}

/*
 * Parses complete frames from data[0..len) and returns the bytes consumed.
 * May close c; callers check c->state afterwards.
 */
static size_t
parse_frames(bconn_t *c, uint8_t *data, size_t len, uint64_t now)
{
    size_t off = 0;
    while (c->state < BC_CLOSING && len - off >= 2) {
        uint8_t *f = data + off;
        size_t avail = len - off, hl = 2;
        int fin = f[0] & 0x80, op = f[0] & 0x0f, masked = f[1] & 0x80;
        uint64_t plen = f[1] & 0x7f;
        if (plen == 126) {
            if (avail < 4)
                break;
            plen = ((uint64_t)f[2] << 8) | f[3];
            hl = 4;
        } else if (plen == 127) {
            if (avail < 10)
                break;
            plen = 0;
            for (int i = 0; i < 8; i++)
                plen = (plen << 8) | f[2 + i];
            hl = 10;
        }
        if (plen > MAX_IN_FRAME) {
            conn_fail(c, 0, 0, "oversized frame from server");
            return off;
        }
        uint8_t mk[4] = {0, 0, 0, 0};
        if (masked) {
            if (avail < hl + 4)
                break;
            memcpy(mk, f + hl, 4);
            hl += 4;
        }
        if (avail < hl + plen)
            break;
        uint8_t *pl = f + hl;
        if (masked)
            for (uint64_t i = 0; i < plen; i++)
                pl[i] ^= mk[i & 3];
        off += hl + (size_t)plen;
        switch (op) {
        case 0x8: { /* close */
            char why[64];
            int code = plen >= 2 ? (pl[0] << 8) | pl[1] : 0;
            snprintf(why, sizeof(why), "server closed (code %d)", code);
            if (c->state == BC_AUTH)
                conn_fail(c, 0, code, why);
            else {
                bench_on_closed(c, why);
                bconn_close(c);
            }
            return off;
        }
        case 0x9: { /* ping: answer with the same payload */
            size_t cap;
            uint8_t *wb = bench_wbuf(c->w, &cap);
            if (plen <= 125) {
                memcpy(wb + HDR_ROOM, pl, (size_t)plen);
                conn_send_frame(c, 0xA, wb + HDR_ROOM, (size_t)plen);
            }
            break;
        }
        case 0xA:
            break;
        case 0x0:
        case 0x1:
        case 0x2:
            if (op != 0 && fin && c->frag == NULL) {
                on_message(c, op, pl, (size_t)plen, now);
                break;
            }
            /* fragmented message: reassemble (rare for this server) */
            if (op != 0) {
                free(c->frag);
                c->frag = NULL;
                c->fraglen = 0;
                c->fragop = (uint8_t)op;
            }
            if ((uint64_t)c->fraglen + plen > MAX_IN_FRAME) {
                conn_fail(c, 0, 0, "oversized message from server");
                return off;
            }
            uint8_t *nf = realloc(c->frag, c->fraglen + (size_t)plen + 1);
            if (nf == NULL) {
                conn_fail(c, 0, 0, "out of memory");
                return off;
            }
            c->frag = nf;
            memcpy(c->frag + c->fraglen, pl, (size_t)plen);
            c->fraglen += (uint32_t)plen;
            if (fin) {
                uint8_t *m = c->frag;
                uint32_t ml = c->fraglen;
                c->frag = NULL;
                c->fraglen = 0;
                on_message(c, c->fragop, m, ml, now);
                free(m);
            }
            break;
        default:
            conn_fail(c, 0, 0, "unknown opcode from server");
            return off;
        }
    }
    return off;
}

/* HTTP state: wait for the head, check 101, send the auth frame. */
static size_t
parse_http(bconn_t *c, uint8_t *data, size_t len)
{
    uint8_t *end = memmem(data, len, "\r\n\r\n", 4);
    if (end == NULL) {
        if (len > MAX_HTTP_HEAD)
            conn_fail(c, 0, 0, "oversized HTTP response");
        return 0;
    }
    int status = 0;
    if (len >= 12 && memcmp(data, "HTTP/1.1 ", 9) == 0)
        status = atoi((const char *)data + 9);
    if (status != 101) {
        char why[64];
        snprintf(why, sizeof(why), "upgrade refused: HTTP %d", status);
        conn_fail(c, status, 0, why);
        return len;
    }
    c->state = BC_AUTH;
    int rc = send_auth(c);
    if (rc < 0) {
        conn_fail(c, 0, 0, "auth write failed");
        return len;
    }
    return (size_t)(end + 4 - data);
}

static void
on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    (void)hint;
    bconn_t *c = h->data;
    size_t len;
    uint8_t *b = bench_rbuf(c->w, &len);
    *buf = uv_buf_init((char *)b, (unsigned)len);
}

static void
on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    bconn_t *c = s->data;
    if (nread == 0)
        return;
    if (nread < 0) {
        char why[64];
        snprintf(why, sizeof(why), "read: %s", uv_err_name((int)nread));
        if (c->state < BC_READY)
            conn_fail(c, 0, 0, why);
        else {
            bench_on_closed(c, why);
            bconn_close(c);
        }
        return;
    }
    uint64_t now = uv_hrtime();
    uint8_t *data;
    size_t len;
    if (c->rlen) {
        size_t need = c->rlen + (size_t)nread;
        if (need > c->rcap) {
            size_t cap = c->rcap ? c->rcap : 4096;
            while (cap < need)
                cap *= 2;
            uint8_t *nb = realloc(c->rb, cap);
            if (nb == NULL) {
                conn_fail(c, 0, 0, "out of memory");
                return;
            }
            c->rb = nb;
            c->rcap = (uint32_t)cap;
        }
        memcpy(c->rb + c->rlen, buf->base, (size_t)nread);
        c->rlen = (uint32_t)need;
        data = c->rb;
        len = need;
    } else {
        data = (uint8_t *)buf->base;
        len = (size_t)nread;
    }
    size_t used = 0;
    if (c->state == BC_HTTP)
        used = parse_http(c, data, len);
    if (c->state >= BC_AUTH && c->state < BC_CLOSING)
        used += parse_frames(c, data + used, len - used, now);
    if (c->state >= BC_CLOSING)
        return;
    size_t left = len - used;
    if (left == 0) {
        free(c->rb);
        c->rb = NULL;
        c->rlen = c->rcap = 0;
        return;
    }
    if (data == c->rb) {
        memmove(c->rb, c->rb + used, left);
    } else {
        size_t cap = left < 4096 ? 4096 : left * 2;
        uint8_t *nb = malloc(cap);
        if (nb == NULL) {
            conn_fail(c, 0, 0, "out of memory");
            return;
        }
        memcpy(nb, data + used, left);
        c->rb = nb;
        c->rcap = (uint32_t)cap;
    }
    c->rlen = (uint32_t)left;
}

static void
on_connect(uv_connect_t *req, int status)
{
    bconn_t *c = req->data;
    if (c->state != BC_CONNECTING)
        return;
    if (status < 0) {
        char why[64];
        snprintf(why, sizeof(why), "connect: %s", uv_err_name(status));
        conn_fail(c, 0, 0, why);
        return;
    }
    char tok[1024];
    int tl = imgw_jwt_sign_hs256(g_o->secret, c->user, (int64_t)time(NULL),
                                 86400, tok, sizeof(tok));
    if (tl < 0) {
        conn_fail(c, 0, 0, "token minting failed");
        return;
    }
    char req_[1400];
    int n = snprintf(req_, sizeof(req_),
                     "GET /ws?token=%.*s HTTP/1.1\r\n"
                     "Host: %s:%d\r\n"
                     "Upgrade: websocket\r\n"
                     "Connection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n",
                     tl, tok,
                     c->role == BR_RECV && g_o->recv_host ? g_o->recv_host
                                                          : g_o->host,
                     ntohs(conn_dst(c)->sin_port));
    c->state = BC_HTTP;
    int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (rc == 0)
        rc = conn_write(c, (const uint8_t *)req_, (size_t)n);
    if (rc < 0)
        conn_fail(c, 0, 0, "upgrade write failed");
}

static void
on_closed(uv_handle_t *h)
{
    bconn_t *c = h->data;
    free(c->rb);
    free(c->frag);
    c->rb = c->frag = NULL;
    c->rlen = c->rcap = c->fraglen = 0;
    c->state = BC_CLOSED;
}

void
bconn_close(bconn_t *c)
{
    if (c->state == BC_IDLE) {
        c->state = BC_CLOSED;
        return;
    }
    if (c->state >= BC_CLOSING)
        return;
    c->state = BC_CLOSING;
    uv_close((uv_handle_t *)&c->tcp, on_closed);
}

static void
conn_fail(bconn_t *c, int http_status, int auth_code, const char *why)
{
    if (c->state >= BC_CLOSING)
        return;
    bench_on_fail(c, http_status, auth_code, why);
    bconn_close(c);
}

/*
 * Opens the socket ourselves to set IP_BIND_ADDRESS_NO_PORT before binding
 * to 127.0.0.X: the port is then chosen at connect() time by the 4-tuple,
 * so every source address gets the whole ephemeral range (and more than 64k
 * connections fit on one host).
 */
void
bconn_start(bconn_t *c)
{
    uv_loop_t *loop = bench_loop(c->w);
    c->t_conn = uv_hrtime();
    c->rlen = 0;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        char why[64];
        snprintf(why, sizeof(why), "socket: %s", strerror(errno));
        c->state = BC_CONNECTING; /* so that fail counts it */
        bench_on_fail(c, 0, 0, why);
        c->state = BC_CLOSED;
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
    struct sockaddr_in src;
    memset(&src, 0, sizeof(src));
    src.sin_family = AF_INET;
    src.sin_addr.s_addr = htonl(0x7f000000u | (1u + c->gidx % 254u));
    if (bind(fd, (struct sockaddr *)&src, sizeof(src)) < 0) {
        /* fall back to the kernel's choice */
        src.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        (void)bind(fd, (struct sockaddr *)&src, sizeof(src));
    }
    uv_tcp_init(loop, &c->tcp);
    c->tcp.data = c;
    c->creq.data = c;
    c->state = BC_CONNECTING;
    int rc = uv_tcp_open(&c->tcp, fd);
    if (rc < 0)
        close(fd); /* not adopted by the handle */
    if (rc == 0) {
        uv_tcp_nodelay(&c->tcp, 1);
        rc = uv_tcp_connect(&c->creq, &c->tcp,
                            (const struct sockaddr *)conn_dst(c), on_connect);
    }
    if (rc < 0) {
        char why[64];
        snprintf(why, sizeof(why), "connect: %s", uv_err_name(rc));
        conn_fail(c, 0, 0, why);
    }
}
