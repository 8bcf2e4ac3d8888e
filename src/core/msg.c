/*
 * msg.c: the messaging commands of protocol.md section 5: send (1:1 and
 * group, dedupe, durable-then-respond), ack, sync, read receipts, typing
 * and revoke.
 *
 * Thread: the loop owning the sender's connection. Each command that needs
 * the store keeps what its continuation needs in one heap block; the
 * continuation finds the connection again by ref (it may be gone: a stored
 * message is still pushed to its receivers).
 */
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "coalesce.h"
#include "conv.h"
#include "err.h"
#include "hooks.h"
#include "idsyntax.h"
#include "log.h"
#include "mail.h"
#include "session.h"
#include "uniq.h"
#include "utf8.h"

#define SYNC_MAX_BYTES (1u << 20) /* a sync page's payload bound */
#define SYNC_MAX_FRAME (4u << 20) /* a sync page's encoded frame bound */

/* ---- helpers ------------------------------------------------------------ */

/* The loop's recipient scratch: distinct members of one fan-out. */
static _Thread_local imgw_uniq_t uniq = IMGW_UNIQ_INIT;

void
imgw_msg_thread_free(void)
{
    imgw_uniq_free(&uniq);
    imgw_coalesce_thread_free();
}

/*
 * Takes one token of the user's node-wide budget (which: the user map's
 * IMGW_USERMAP_BUDGET_*): limits.user_send_rate (0 = 2 x send_rate) for
 * sends, limits.user_receipt_rate (0 = send_rate) for receipts and typing,
 * each with a burst of 2 x its rate. 1 = taken, 0 = over budget.
 */
static int
user_budget(imgw_session_t *s, int which)
{
    const imgw_config_t *cfg = s->cl->node->cfg;
    double rate =
        which == IMGW_USERMAP_BUDGET_SEND
            ? (cfg->user_send_rate ? cfg->user_send_rate : 2.0 * cfg->send_rate)
            : (cfg->user_receipt_rate ? cfg->user_receipt_rate
                                      : (double)cfg->send_rate);
    return imgw_usermap_take(s->cl->node->users, s->user, which, rate,
                             2.0 * rate, imgw_loop_now_ms(s->cl->loop));
}

static size_t copy_str(char *dst, size_t cap, const char *src);

static void
send_rsp_str(imgw_session_t *s, uint32_t seq, int code, const char *msg,
             const char *message_id, int64_t mseq, int64_t server_time)
{
    im_SendMessageResponse r = im_SendMessageResponse_init_zero;
    r.error_code = (im_ErrorCode)code;
    if (msg)
        snprintf(r.error_msg, sizeof(r.error_msg), "%s", msg);
    if (message_id)
        copy_str(r.message_id, sizeof(r.message_id), message_id);
    r.seq = mseq;
    r.server_time = server_time;
    if (code != 0)
        imgw_core_count_error(s->cl, code);
    imgw_session_reply(s, im_CommandType_CMD_SEND_MSG_RSP, seq, &r);
}

static void
send_rsp(imgw_session_t *s, uint32_t seq, int code, const char *msg,
         uint64_t message_id, int64_t mseq, int64_t server_time)
{
    char id[24];
    if (message_id)
        imgw_id_format(message_id, id);
    send_rsp_str(s, seq, code, msg, message_id ? id : NULL, mseq,
                 server_time);
}

/* Builds "s_<a>_<b>" (a <= b byte-wise) into out. */
static int
single_conv(const char *a, const char *b, char *out, size_t outlen)
{
    if (strcmp(a, b) > 0) {
        const char *t = a;
        a = b;
        b = t;
    }
    /* By hand: this runs for every 1:1 message (vfprintf was on the
     * profile of issue 14). */
    size_t al = strlen(a), bl = strlen(b);
    if (outlen < 2 || al + bl + 4 > outlen)
        return -1;
    out[0] = 's';
    out[1] = '_';
    memcpy(out + 2, a, al);
    out[2 + al] = '_';
    memcpy(out + 3 + al, b, bl);
    out[3 + al + bl] = '\0';
    return 0;
}

/*
 * The other participant of a single conversation that me belongs to, or
 * NULL. User ids may contain '_', so me is matched at either end.
 */
static int
conv_peer(const char *conv, const char *me, char *peer, size_t peerlen)
{
    size_t ml = strlen(me), cl = strlen(conv);
    if (cl < 2 || strncmp(conv, "s_", 2) != 0)
        return -1;
    const char *body = conv + 2;
    size_t bl = cl - 2;
    /* s_<me>_<peer> with me <= peer */
    if (bl > ml + 1 && strncmp(body, me, ml) == 0 && body[ml] == '_') {
        const char *p = body + ml + 1;
        if (strlen(p) < peerlen && strcmp(me, p) <= 0) {
            snprintf(peer, peerlen, "%s", p);
            return 0;
        }
    }
    /* s_<peer>_<me> with peer <= me */
    if (bl > ml + 1 && strcmp(body + bl - ml, me) == 0 &&
        body[bl - ml - 1] == '_') {
        size_t pl = bl - ml - 1;
        if (pl < peerlen) {
            memcpy(peer, body, pl);
            peer[pl] = '\0';
            if (strcmp(peer, me) <= 0)
                return 0;
        }
    }
    return -1;
}

/* ---- send --------------------------------------------------------------- */

/*
 * What append_cb needs, in one heap block: the struct, then (1:1 only) the
 * users and seqs arrays, then the encoded blob and the strings the store
 * request points to. A group send gets its users, seqs and member strings
 * in a second block once the members are known (members).
 */
typedef struct send_ctx_s {
    imgw_conn_ref_t ref;
    uint32_t sequence;
    uint64_t message_id;
    char message_id_str[24]; /* formatted once, for the response */
    int64_t server_time;
    size_t n_users;
    char **users; /* users[0] is the sender; no duplicates */
    int64_t *seqs;
    void *members; /* group: the block holding users, seqs, strings */
    const char *sender;
    const char *client_msg_id;
    const char *conv;
    uint8_t *blob;
    size_t blob_len;
    int32_t msg_type;
    uint8_t pooled; /* an IMGW_SEND_CTX_BLOCK block of the loop's pool */
    char preview[IMGW_STORE_PREVIEW_MAX + 1]; /* conversation list */
    imgw_store_append_t req;
    _Alignas(8) unsigned char mem[];
} send_ctx_t;

/* A context of `size` bytes: a block-sized one comes from (and goes back
 * to) the loop's pool, so a steady stream of sends does not malloc. */
static send_ctx_t *
send_ctx_new(imgw_core_loop_t *cl, size_t size)
{
    send_ctx_t *x = NULL;
    int pooled = size <= IMGW_SEND_CTX_BLOCK;
    if (pooled) {
        x = imgw_pool_get(&cl->send_ctxs);
        if (x == NULL)
            x = imgw_try_malloc(IMGW_SEND_CTX_BLOCK);
    } else {
        x = imgw_try_malloc(size);
    }
    if (x != NULL)
        x->pooled = (uint8_t)pooled;
    return x;
}

/* On the loop that made x (store and member callbacks run there). */
static void
send_ctx_free(send_ctx_t *x)
{
    if (x == NULL)
        return;
    imgw_free(x->members);
    imgw_core_loop_t *cl = imgw_core_loop_current();
    if (!x->pooled || cl == NULL || !imgw_pool_put(&cl->send_ctxs, x))
        imgw_free(x);
}

/* snprintf(dst, cap, "%s", src) without the format parser. */
static size_t
copy_str(char *dst, size_t cap, const char *src)
{
    size_t n = strnlen(src, cap - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
    return n;
}

/*
 * The conversation list's preview of content: its first
 * IMGW_STORE_PREVIEW_MAX bytes cut on a UTF-8 boundary, or "" when content
 * is not text (bytes may hold anything; the list is pushed as strings).
 */
static void
make_preview(char *dst, imgw_slice_t content)
{
    size_t n = content.len < IMGW_STORE_PREVIEW_MAX ? content.len
                                                    : IMGW_STORE_PREVIEW_MAX;
    while (n > 0 && n < content.len && (content.ptr[n] & 0xC0) == 0x80)
        n--;
    if (n > 0 &&
        (memchr(content.ptr, 0, n) != NULL || !imgw_utf8_valid(content.ptr, n)))
        n = 0;
    if (n > 0)
        memcpy(dst, content.ptr, n);
    dst[n] = '\0';
}

/* Copies len bytes plus a NUL to *p, advances it; returns the copy. */
static char *
put_str(unsigned char **p, const char *src, size_t len)
{
    char *d = (char *)*p;
    memcpy(d, src, len);
    d[len] = '\0';
    *p += len + 1;
    return d;
}

static void
append_cb(imgw_store_append_t *req, int status, void *data)
{
    send_ctx_t *x = data;
    imgw_core_loop_t *cl = imgw_core_loop_current();
    imgw_session_t *s = imgw_core_session(cl, x->ref);
    (void)req;
    imgw_stat_inc(&cl->st.store_ops);
    if (status == IMGW_EINVAL) {
        /* The store's edge check: an id the rule refuses, e.g. a group
         * member stored before the rule existed. Nothing was stored. */
        if (s)
            send_rsp(s, x->sequence, im_ErrorCode_ERR_INVALID_PARAM,
                     "a participant's id breaks the id rule", 0, 0, 0);
        send_ctx_free(x);
        return;
    }
    if (status != 0) {
        imgw_stat_inc(&cl->st.store_errors);
        if (s)
            send_rsp(s, x->sequence, im_ErrorCode_ERR_SERVER_BUSY,
                     "store unavailable", 0, 0, 0);
        send_ctx_free(x);
        return;
    }
    if (x->req.duplicate) {
        imgw_stat_inc(&cl->st.msgs_dup);
        if (s)
            send_rsp(s, x->sequence, 0, NULL, x->req.dup_message_id,
                     x->req.dup_seq,
                     imgw_id_time_ms(x->req.dup_message_id));
        send_ctx_free(x);
        return;
    }
    imgw_stat_inc(&cl->st.msgs_sent);
    if (s)
        send_rsp_str(s, x->sequence, 0, NULL, x->message_id_str, x->seqs[0],
                     x->server_time);
    imgw_hooks_stored(cl, x->blob, x->blob_len,
                      (const char *const *)x->users, x->n_users);
    imgw_deliver_push(cl, x->blob, x->blob_len, x->server_time,
                      (const char *const *)x->users, x->seqs, x->n_users,
                      x->ref);
    send_ctx_free(x);
}

/* Appends the blob to every participant's timeline. */
static void
send_store(imgw_core_loop_t *cl, send_ctx_t *x)
{
    memset(&x->req, 0, sizeof(x->req));
    x->req.sender = x->users[0];
    x->req.client_msg_id = x->client_msg_id;
    x->req.message_id = x->message_id;
    x->req.server_time_ms = x->server_time;
    x->req.conversation_id = x->conv;
    x->req.users = (const char *const *)x->users;
    x->req.n_users = x->n_users;
    x->req.entry = x->blob;
    x->req.entry_len = x->blob_len;
    x->req.seqs = x->seqs;
    x->req.msg_type = x->msg_type;
    x->req.preview = x->preview;
    imgw_store_append(cl->store, &x->req, append_cb, x);
}

static void
group_members_cb(int status, const char *const *members, size_t n,
                 void *data)
{
    send_ctx_t *x = data;
    imgw_core_loop_t *cl = imgw_core_loop_current();
    imgw_session_t *s = imgw_core_session(cl, x->ref);
    const char *sender = x->sender;
    int code = 0, member = 0;
    const char *why = NULL;
    const char *const *u = NULL;
    size_t k = 0;
    if (status == IMGW_ENOTFOUND) {
        code = im_ErrorCode_ERR_CONVERSATION_NOT_EXIST;
        why = "no such group";
    } else if (status != 0) {
        code = im_ErrorCode_ERR_SERVER_BUSY;
        why = "store unavailable";
    } else if ((u = imgw_uniq_build(&uniq, sender, members, n, &k, &member)) ==
               NULL) {
        code = im_ErrorCode_ERR_SERVER_BUSY;
        why = "out of memory";
    } else if (!member) {
        code = im_ErrorCode_ERR_PERMISSION_DENIED;
        why = "not a member of the group";
    }
    if (code == 0) {
        /* One block: users[k], seqs[k], then the strings (the members are
         * only valid during this callback). u[0] is the sender. */
        size_t bytes = 0;
        for (size_t i = 0; i < k; i++)
            bytes += strlen(u[i]) + 1;
        size_t arr = k * (sizeof(char *) + sizeof(int64_t));
        unsigned char *blk = imgw_try_malloc(arr + bytes);
        if (blk == NULL) {
            code = im_ErrorCode_ERR_SERVER_BUSY;
            why = "out of memory";
        } else {
            x->members = blk;
            x->seqs = (int64_t *)(void *)blk;
            x->users = (char **)(void *)(blk + k * sizeof(int64_t));
            unsigned char *p = blk + arr;
            for (size_t i = 0; i < k; i++)
                x->users[i] = put_str(&p, u[i], strlen(u[i]));
            x->n_users = k;
        }
    }
    if (code != 0) {
        if (s)
            send_rsp(s, x->sequence, code, why, 0, 0, 0);
        send_ctx_free(x);
        return;
    }
    send_store(cl, x);
}

void
imgw_msg_send(imgw_session_t *s, imgw_msg_in_t *in)
{
    imgw_core_loop_t *cl = s->cl;
    const imgw_config_t *cfg = cl->node->cfg;
    im_SendMessageRequest *q = &in->u.send;
    char conv[264];

    /* Ids name per-user state and Redis keys: the id rule first
     * (idsyntax.h), so a bad one is ERR_INVALID_PARAM saying which. */
    const char *field = NULL, *why = NULL;
    if (q->sender_id[0] != '\0' &&
        (why = imgw_id_check(q->sender_id, strlen(q->sender_id))) != NULL)
        field = "sender_id";
    else if (q->receiver_id[0] != '\0' &&
             (why = imgw_id_check(q->receiver_id, strlen(q->receiver_id))) !=
                 NULL)
        field = "receiver_id";
    else if (q->group_id[0] != '\0' &&
             (why = imgw_id_check(q->group_id, strlen(q->group_id))) != NULL)
        field = "group_id";
    else if (q->client_msg_id[0] != '\0' &&
             (why = imgw_cmid_check(q->client_msg_id,
                                    strlen(q->client_msg_id))) != NULL)
        field = "client_msg_id";
    if (field != NULL) {
        char msg[96];
        snprintf(msg, sizeof(msg), "%s %s", field, why);
        send_rsp(s, in->sequence, im_ErrorCode_ERR_INVALID_PARAM, msg, 0, 0, 0);
        return;
    }
    if (!user_budget(s, IMGW_USERMAP_BUDGET_SEND)) {
        cl->st.rate_limited++;
        send_rsp(s, in->sequence, im_ErrorCode_ERR_SEND_TOO_FAST,
                 "user send rate exceeded", 0, 0, 0);
        return;
    }
    if (q->sender_id[0] == '\0')
        copy_str(q->sender_id, sizeof(q->sender_id), s->user);
    if (strcmp(q->sender_id, s->user) != 0) {
        send_rsp(s, in->sequence, im_ErrorCode_ERR_PERMISSION_DENIED,
                 "sender_id is not the authenticated user", 0, 0, 0);
        return;
    }
    int has_r = q->receiver_id[0] != '\0', has_g = q->group_id[0] != '\0';
    if (has_r == has_g) {
        send_rsp(s, in->sequence, im_ErrorCode_ERR_INVALID_PARAM,
                 "exactly one of receiver_id and group_id is required", 0, 0,
                 0);
        return;
    }
    if (in->content.len > (size_t)cfg->max_message_bytes) {
        send_rsp(s, in->sequence, im_ErrorCode_ERR_MESSAGE_TOO_LARGE,
                 "content exceeds max_message_bytes", 0, 0, 0);
        return;
    }
    if (q->message_type < 0 || q->message_type > 5) {
        send_rsp(s, in->sequence, im_ErrorCode_ERR_INVALID_PARAM,
                 "message_type must be 1..5", 0, 0, 0);
        return;
    }
    int cr = has_r ? single_conv(s->user, q->receiver_id, conv, sizeof(conv))
                   : snprintf(conv, sizeof(conv), "g_%s", q->group_id) >=
                             (int)sizeof(conv)
                         ? -1
                         : 0;
    if (cr != 0 || (q->conversation_id[0] != '\0' &&
                    strcmp(q->conversation_id, conv) != 0)) {
        send_rsp(s, in->sequence, im_ErrorCode_ERR_INVALID_PARAM,
                 "conversation_id does not match", 0, 0, 0);
        return;
    }

    if (imgw_hooks_before_send_on(cl)) {
        /* The business decides first (docs/hooks.md); it calls
         * imgw_msg_send_commit once allowed. */
        static const imgw_hooks_send_ops_t ops = {imgw_msg_send_commit,
                                                  imgw_msg_send_answer};
        imgw_hooks_before_send(s, in, conv, &ops);
        return;
    }
    imgw_msg_send_commit(cl, imgw_conn_ref(s->conn), in->sequence, q,
                         in->content, conv);
}

void
imgw_msg_send_answer(imgw_core_loop_t *cl, imgw_conn_ref_t ref,
                     uint32_t sequence, int code, const char *msg,
                     uint64_t message_id, int64_t mseq, int64_t server_time)
{
    imgw_session_t *s = imgw_core_session(cl, ref);
    if (s != NULL)
        send_rsp(s, sequence, code, msg, message_id, mseq, server_time);
    else if (code != 0)
        imgw_core_count_error(cl, code);
}

/*
 * Stores and pushes a send that passed validation (and the before-send
 * hook, when there is one). The connection may be gone by now: the message
 * is stored anyway, as one whose store request was under way when its
 * connection closed, and q->sender_id is the authenticated sender.
 */
void
imgw_msg_send_commit(imgw_core_loop_t *cl, imgw_conn_ref_t ref,
                     uint32_t sequence, const im_SendMessageRequest *q,
                     imgw_slice_t content_in, const char *conv)
{
    int has_r = q->receiver_id[0] != '\0';
    /*
     * The blob does not depend on the group's members: encode it now, from
     * the loop's scratch PushMessage (no 10.7 KB struct per send), into
     * cl->out, and copy it into the context below. Every field the encoder
     * reads is assigned here; nanopb reads extra[] only below extra_count.
     */
    int64_t server_time = imgw_now_ms();
    uint64_t message_id = imgw_id_next(&cl->node->ids, server_time);
    im_PushMessage *pm = &cl->push;
    imgw_slice_t content = content_in;
    imgw_id_format(message_id, pm->message_id);
    size_t cmid_len = copy_str(pm->client_msg_id, sizeof(pm->client_msg_id),
                               q->client_msg_id);
    size_t conv_len =
        copy_str(pm->conversation_id, sizeof(pm->conversation_id), conv);
    size_t user_len =
        copy_str(pm->sender_id, sizeof(pm->sender_id), q->sender_id);
    size_t recv_len =
        copy_str(pm->receiver_id, sizeof(pm->receiver_id), q->receiver_id);
    copy_str(pm->group_id, sizeof(pm->group_id), q->group_id);
    pm->message_type = q->message_type;
    imgw_codec_set_bytes(&pm->content, &content);
    pm->send_time = q->send_time;
    pm->server_time = server_time;
    pm->seq = 0; /* the blob is stored without it */
    pm->extra_count = q->extra_count;
    for (pb_size_t i = 0; i < q->extra_count; i++) {
        copy_str(pm->extra[i].key, sizeof(pm->extra[i].key), q->extra[i].key);
        copy_str(pm->extra[i].value, sizeof(pm->extra[i].value),
                 q->extra[i].value);
    }
    ssize_t blen = imgw_codec_encode_pb_body(im_CommandType_CMD_PUSH_MSG, pm,
                                             cl->out, cl->out_cap);
    if (blen < 0) {
        /* Same answer as a failing store: nothing was stored. */
        imgw_stat_inc(&cl->st.store_ops);
        imgw_stat_inc(&cl->st.store_errors);
        imgw_msg_send_answer(cl, ref, sequence, im_ErrorCode_ERR_SERVER_BUSY,
                             "store unavailable", 0, 0, 0);
        return;
    }

    /* One block: [users[2], seqs[2]] (1:1 only), blob, cmid, conv, then
     * (1:1) the two user ids; a group sender's id goes in the strings. */
    size_t arr = has_r ? 2 * (sizeof(char *) + sizeof(int64_t)) : 0;
    size_t strs = (size_t)blen + cmid_len + 1 + conv_len + 1 + user_len + 1 +
                  (has_r ? recv_len + 1 : 0);
    send_ctx_t *x = send_ctx_new(cl, sizeof(*x) + arr + strs);
    if (x == NULL) {
        imgw_msg_send_answer(cl, ref, sequence, im_ErrorCode_ERR_SERVER_BUSY,
                             "out of memory", 0, 0, 0);
        return;
    }
    x->ref = ref;
    x->sequence = sequence;
    x->message_id = message_id;
    /* Formatted above for the push; the response needs the same digits. */
    copy_str(x->message_id_str, sizeof(x->message_id_str), pm->message_id);
    x->server_time = server_time;
    x->members = NULL;
    x->msg_type = (int32_t)q->message_type;
    make_preview(x->preview, content_in);
    unsigned char *p = x->mem + arr;
    x->blob = p;
    x->blob_len = (size_t)blen;
    memcpy(p, cl->out, (size_t)blen);
    p += blen;
    x->client_msg_id = put_str(&p, pm->client_msg_id, cmid_len);
    x->conv = put_str(&p, pm->conversation_id, conv_len);
    char *sender = put_str(&p, pm->sender_id, user_len);
    x->sender = sender;

    if (has_r) {
        x->users = (char **)(void *)x->mem;
        x->seqs = (int64_t *)(void *)(x->mem + 2 * sizeof(char *));
        x->users[0] = sender;
        x->n_users = 1;
        /* To yourself: one timeline, s_<you>_<you>. */
        char *r = put_str(&p, pm->receiver_id, recv_len);
        if (strcmp(r, sender) != 0)
            x->users[x->n_users++] = r;
        send_store(cl, x);
        return;
    }
    x->users = NULL;
    x->seqs = NULL;
    x->n_users = 0;
    imgw_store_group_get(cl->store, q->group_id, group_members_cb, x);
}

/* ---- ack ------------------------------------------------------------------ */

void
imgw_msg_ack(imgw_session_t *s, imgw_msg_in_t *in)
{
    if (in->u.ack.seq <= 0)
        return;
    imgw_store_set_delivered(s->cl->store, s->user, imgw_session_platform(s),
                             in->u.ack.seq, NULL, NULL);
}

/* ---- sync ----------------------------------------------------------------- */

typedef struct sync_ctx_s {
    imgw_conn_ref_t ref;
    uint32_t sequence;
    /* The request as the store saw it, for the resume contract. */
    int64_t min_seq, max_seq;
    int limit;
    char epoch[24]; /* the client's epoch, "" = no check */
    int reset;      /* resent from seq 0 after an epoch mismatch */
} sync_ctx_t;

static void sync_cb(int status, const imgw_store_entry_t *e, size_t n,
                    int has_more, int64_t server_max_seq, int64_t oldest_seq,
                    uint64_t epoch, void *data);

/*
 * The resume contract (protocol.md "Resume contract"). A client's min_seq
 * means something only in the epoch it came from. When the timeline's epoch
 * differs (it was reset or lost since), the page is read again from seq 0,
 * so the client gets the new timeline from its start, flagged as a
 * discontinuity. Returns 1 when the request was resent (x now belongs to
 * that request).
 */
static int
sync_epoch_reset(imgw_session_t *s, sync_ctx_t *x, uint64_t epoch)
{
    char now[24] = "";
    if (x->reset || x->epoch[0] == '\0' || x->min_seq == 0)
        return 0;
    if (epoch != 0)
        snprintf(now, sizeof(now), "%" PRIu64, epoch);
    if (strcmp(now, x->epoch) == 0)
        return 0;
    x->reset = 1;
    x->min_seq = 0;
    x->max_seq = 0;
    imgw_store_sync(s->cl->store, s->user, 0, 0, x->limit, sync_cb, x);
    return 1;
}

/*
 * Messages after the client's position that the timeline no longer holds:
 * an epoch reset, a position past anything this timeline reached (reset
 * without an epoch to compare), or retention trimmed past it.
 */
static int
sync_gap(const sync_ctx_t *x, int64_t server_max_seq, int64_t oldest_seq)
{
    if (x->reset || x->min_seq > server_max_seq)
        return 1;
    if (x->max_seq != 0 && x->max_seq <= x->min_seq)
        return 0;
    return x->min_seq + 1 < oldest_seq;
}

/*
 * The frame bound of one sync page: half the per-connection write queue
 * (a frame over max_queued_bytes would close the connection as a slow
 * consumer, and pushes may be queued beside it), at most SYNC_MAX_FRAME.
 */
static size_t
sync_frame_budget(imgw_core_loop_t *cl)
{
    size_t q = (size_t)cl->node->cfg->max_queued_bytes / 2;
    return q < SYNC_MAX_FRAME ? q : SYNC_MAX_FRAME;
}

/* What entry e adds to the frame: the cheap bound, or the exact size
 * (a decode, for JSON) when asked and the blob decodes. */
static size_t
sync_entry_bytes(imgw_codec_t codec, const imgw_store_entry_t *e, int exact)
{
    size_t b = imgw_codec_sync_entry_max(codec, e->len);
    if (exact) {
        ssize_t x = imgw_codec_sync_entry_size(codec, e->blob, e->len, e->seq,
                                               e->revoked);
        if (x >= 0 && (size_t)x < b)
            b = (size_t)x;
    }
    return b;
}

/*
 * How many of the n entries go into this page: at most SYNC_MAX_BYTES of
 * stored payload and a frame within sync_frame_budget() in the
 * connection's codec (JSON writes a control byte as six), so content can
 * only make a page shorter (has_more), never fail to encode. The first
 * entry always goes, so paging makes progress. Entries are counted by the
 * cheap bound until it passes the budget; from then on by their exact
 * sizes (earlier ones recounted once), so a page is cut where its real
 * frame would pass the budget, not where the bound would. *need gets an
 * output buffer size the page's frame cannot exceed.
 */
static size_t
sync_page_cut(imgw_core_loop_t *cl, imgw_codec_t codec,
              const imgw_store_entry_t *e, size_t n, size_t *need)
{
    size_t budget = sync_frame_budget(cl), bytes = 0, frame = 0, k;
    int exact = 0;
    for (k = 0; k < n; k++) {
        size_t fb = sync_entry_bytes(codec, &e[k], exact);
        if (!exact && frame + fb > budget) {
            exact = 1;
            frame = 0;
            for (size_t i = 0; i < k; i++)
                frame += sync_entry_bytes(codec, &e[i], 1);
            fb = sync_entry_bytes(codec, &e[k], 1);
        }
        if (k > 0 && (bytes + e[k].len > SYNC_MAX_BYTES || frame + fb > budget))
            break;
        bytes += e[k].len;
        frame += fb;
    }
    *need = frame + IMGW_CODEC_SYNC_OVERHEAD;
    return k;
}

static void
sync_cb(int status, const imgw_store_entry_t *e, size_t n, int has_more,
        int64_t server_max_seq, int64_t oldest_seq, uint64_t epoch, void *data)
{
    sync_ctx_t *x = data;
    imgw_core_loop_t *cl = imgw_core_loop_current();
    imgw_session_t *s = imgw_core_session(cl, x->ref);
    uint32_t sequence = x->sequence;
    imgw_stat_inc(&cl->st.store_ops);
    if (s != NULL && status == 0 && sync_epoch_reset(s, x, epoch))
        return;
    int gap = status == 0 && sync_gap(x, server_max_seq, oldest_seq);
    imgw_free(x);
    if (s == NULL)
        return;
    im_SyncResponse r = im_SyncResponse_init_zero;
    if (status != 0) {
        imgw_stat_inc(&cl->st.store_errors);
        r.error_code = im_ErrorCode_ERR_SERVER_BUSY;
        snprintf(r.error_msg, sizeof(r.error_msg), "store unavailable");
        imgw_core_count_error(cl, r.error_code);
        imgw_session_reply(s, im_CommandType_CMD_SYNC_RSP, sequence, &r);
        return;
    }
    size_t need;
    size_t k = sync_page_cut(cl, (imgw_codec_t)s->codec, e, n, &need);
    if (k < n)
        has_more = 1;
    imgw_slice_t *blobs = imgw_try_malloc((k ? k : 1) * sizeof(*blobs));
    int64_t *seqs = imgw_try_malloc((k ? k : 1) * sizeof(*seqs));
    uint8_t *rev = imgw_try_malloc(k ? k : 1);
    uint8_t *out = need > cl->out_cap ? imgw_try_malloc(need) : cl->out;
    if (blobs == NULL || seqs == NULL || rev == NULL || out == NULL) {
        imgw_free(blobs);
        imgw_free(seqs);
        imgw_free(rev);
        if (out != cl->out)
            imgw_free(out);
        imgw_session_error(s, sequence, im_ErrorCode_ERR_SERVER_BUSY,
                           "out of memory");
        return;
    }
    for (size_t i = 0; i < k; i++) {
        blobs[i].ptr = e[i].blob;
        blobs[i].len = e[i].len;
        seqs[i] = e[i].seq;
        rev[i] = e[i].revoked;
    }
    imgw_codec_entries_t ents = {k, blobs, seqs, rev};
    r.messages.arg = &ents;
    r.server_max_seq = server_max_seq;
    r.has_more = has_more != 0;
    if (epoch != 0)
        snprintf(r.epoch, sizeof(r.epoch), "%" PRIu64, epoch);
    r.discontinuity = gap != 0;
    r.oldest_seq = oldest_seq;
    ssize_t len = imgw_codec_encode((imgw_codec_t)s->codec,
                                    im_CommandType_CMD_SYNC_RSP, sequence,
                                    imgw_now_ms(), &r, out,
                                    need > cl->out_cap ? need : cl->out_cap);
    if (len >= 0) {
        uv_buf_t b = uv_buf_init((char *)out, (unsigned)len);
        imgw_conn_send_ws(s->conn, s->codec == IMGW_CODEC_JSON, &b, 1);
        imgw_stat_add(&cl->st.msgs_synced, k);
    } else {
        IMGW_LOG_WARN_RL("cannot encode a sync page: %s",
                         imgw_strerror((int)len));
        imgw_session_error(s, sequence, im_ErrorCode_ERR_UNKNOWN,
                           "cannot encode the sync page");
    }
    imgw_free(blobs);
    imgw_free(seqs);
    imgw_free(rev);
    if (out != cl->out)
        imgw_free(out);
}

void
imgw_msg_sync(imgw_session_t *s, imgw_msg_in_t *in)
{
    im_SyncRequest *q = &in->u.sync;
    int limit = q->limit <= 0 ? 100 : q->limit;
    if (limit > IMGW_STORE_SYNC_MAX)
        limit = IMGW_STORE_SYNC_MAX;
    if (q->min_seq < 0 || q->max_seq < 0 ||
        (q->max_seq != 0 && q->max_seq < q->min_seq)) {
        im_SyncResponse r = im_SyncResponse_init_zero;
        r.error_code = im_ErrorCode_ERR_INVALID_PARAM;
        snprintf(r.error_msg, sizeof(r.error_msg), "bad seq range");
        imgw_core_count_error(s->cl, r.error_code);
        imgw_session_reply(s, im_CommandType_CMD_SYNC_RSP, in->sequence, &r);
        return;
    }
    /* Seed 003 shows CMD_SYNC_REQ(max_seq, limit) as "what I am missing",
     * max_seq being the client's local maximum; the contract reads max_seq
     * as an upper bound. With server.sync_max_seq = after, the seed's form
     * (min_seq 0, max_seq > 0) asks for the messages after max_seq; a
     * request with min_seq > 0 is a range under either setting. */
    int64_t min_seq = q->min_seq, max_seq = q->max_seq;
    if (min_seq == 0 && max_seq > 0 &&
        strcmp(s->cl->node->cfg->sync_max_seq, "after") == 0) {
        min_seq = max_seq;
        max_seq = 0;
    }
    sync_ctx_t *x = imgw_try_malloc(sizeof(*x));
    if (x == NULL) {
        imgw_session_error(s, in->sequence, im_ErrorCode_ERR_SERVER_BUSY,
                           "out of memory");
        return;
    }
    x->ref = imgw_conn_ref(s->conn);
    x->sequence = in->sequence;
    x->min_seq = min_seq;
    x->max_seq = max_seq;
    x->limit = limit;
    x->reset = 0;
    snprintf(x->epoch, sizeof(x->epoch), "%s", q->epoch);
    imgw_store_sync(s->cl->store, s->user, min_seq, max_seq, limit, sync_cb, x);
}

/* ---- conversation participants (receipts, typing) ------------------------ */

/*
 * A receipt or typing request goes through these steps (docs/protocol.md):
 *   1. the user's node-wide budget (limits.user_receipt_rate): a receipt
 *      over it is ERR_SEND_TOO_FAST, a typing status is dropped;
 *   2. the conversation: a single one must contain the user, a group must
 *      exist and have the user as a member;
 *   3. receipts only: every message id must name a stored message of this
 *      conversation (one msg_get each, in parallel), else ERR_INVALID_PARAM;
 *   4. accepted: a receipt stores the read position and is answered; then
 *      the coalescer decides whether the push goes now, at the end of the
 *      (user, conversation) window, or not at all (already covered).
 * A push for a group fetches the members again when it goes out (the
 * member list of step 2 is only valid inside its callback, and a held
 * push goes out later); pushes of held requests (flush) skip steps 1-3.
 */
typedef struct conv_ctx_s {
    imgw_conn_ref_t ref; /* the requesting connection (excluded) */
    uint32_t sequence;
    int command;           /* the request */
    int flush;             /* 1: only push body (accepted before) */
    int lookups;           /* receipts: msg_get answers outstanding */
    int verdict;           /* receipts: first error code of the lookups */
    char user[IMGW_JWT_MAX_USER];
    char conv[264];
    uint64_t pos; /* receipts: the highest message id */
    int64_t read_seq; /* receipts: ReadReceiptRequest.read_seq (0: none) */
    int read_stored;  /* receipts: the conversation read state is stored */
    /* The push to send. Last, and allocated only as far as the member
     * the request uses (conv_ctx_new): a typing context is ~1 KB instead
     * of the union's ~3.3 KB, zeroed, per status change. */
    imgw_push_body_t body;
} conv_ctx_t;

static conv_ctx_t *
conv_ctx_new(int receipt)
{
    int push = receipt ? im_CommandType_CMD_READ_RECEIPT_PUSH
                       : im_CommandType_CMD_TYPING_STATUS_PUSH;
    return imgw_try_calloc(1, offsetof(conv_ctx_t, body) +
                                  imgw_push_body_size(push));
}

static int
is_receipt(const conv_ctx_t *x)
{
    return x->command == im_CommandType_CMD_READ_RECEIPT_REQ;
}

static void
conv_reply(imgw_core_loop_t *cl, conv_ctx_t *x, int code, const char *why)
{
    if (x->flush)
        return;
    imgw_session_t *s = imgw_core_session(cl, x->ref);
    if (s == NULL)
        return;
    if (is_receipt(x)) {
        im_ReadReceiptResponse r = im_ReadReceiptResponse_init_zero;
        r.error_code = (im_ErrorCode)code;
        if (why)
            snprintf(r.error_msg, sizeof(r.error_msg), "%s", why);
        if (code)
            imgw_core_count_error(cl, code);
        imgw_session_reply(s, im_CommandType_CMD_READ_RECEIPT_RSP, x->sequence,
                           &r);
    } else if (code != 0) {
        imgw_session_error(s, x->sequence, code, why);
    }
}

/*
 * Pushes x->body to the conversation's participants, given as users (the
 * user first, no duplicates): receipts to all of them (the reader's other
 * devices included), typing to the others only. Only the requesting
 * connection is excluded.
 */
static void
conv_push(imgw_core_loop_t *cl, conv_ctx_t *x, const char *const *users,
          size_t n)
{
    int cmd = is_receipt(x) ? im_CommandType_CMD_READ_RECEIPT_PUSH
                            : im_CommandType_CMD_TYPING_STATUS_PUSH;
    if (!is_receipt(x)) {
        users++;
        n = n ? n - 1 : 0;
    }
    if (n > 0)
        imgw_deliver_frame(cl, cmd, &x->body, users, n, x->ref);
}

static void conv_members_cb(int status, const char *const *members, size_t n,
                            void *data);

/* Pushes to a single conversation at once, to a group after fetching its
 * members; frees x either way. */
static void
conv_push_start(imgw_core_loop_t *cl, conv_ctx_t *x)
{
    if (strncmp(x->conv, "g_", 2) == 0) {
        x->flush = 1;
        imgw_store_group_get(cl->store, x->conv + 2, conv_members_cb, x);
        return;
    }
    char peer[IMGW_JWT_MAX_USER];
    const char *users[2] = {x->user, peer};
    if (conv_peer(x->conv, x->user, peer, sizeof(peer)) == 0)
        conv_push(cl, x, users,
                  strcmp(x->user, peer) == 0 && is_receipt(x) ? 1 : 2);
    imgw_free(x);
}

/* Step 4: the request is valid. */
static void conv_flush(imgw_core_loop_t *cl, int kind, const char *user,
                       const char *conv, const imgw_push_body_t *body,
                       imgw_conn_ref_t exclude);

static void conv_accept(imgw_core_loop_t *cl, conv_ctx_t *x,
                        const char *const *users, size_t n);

/* The conversation read state of a receipt with read_seq is stored: only
 * now is it answered and pushed, so a device told of the new state (the
 * push) and asking for the list gets that state, whatever store
 * connection it asks on. */
static void
conv_read_cb(int status, void *data)
{
    conv_ctx_t *x = data;
    imgw_core_loop_t *cl = imgw_core_loop_current();
    cl->st.store_ops++;
    if (status != 0 && status != IMGW_ENOTFOUND) {
        /* ENOTFOUND: no state kept (deleted, dropped past
         * store.max_conversations): the receipt still stands. */
        cl->st.store_errors++;
        conv_reply(cl, x, im_ErrorCode_ERR_SERVER_BUSY, "store unavailable");
        imgw_free(x);
        return;
    }
    conv_accept(cl, x, NULL, 0);
}

static void
conv_accept(imgw_core_loop_t *cl, conv_ctx_t *x, const char *const *users,
            size_t n)
{
    int kind = is_receipt(x) ? IMGW_COALESCE_RECEIPT : IMGW_COALESCE_TYPING;
    if (is_receipt(x) && x->read_seq > 0 && !x->read_stored) {
        x->read_stored = 1;
        if (imgw_conv_mark_read(cl->store, x->user, x->conv, x->read_seq,
                                conv_read_cb, x) == 0)
            return;
    }
    if (is_receipt(x)) {
        /* The read position is stored for every accepted receipt, held
         * or not: coalescing only ever delays or drops pushes. */
        char pos[24];
        imgw_id_format(x->pos, pos);
        imgw_store_set_read(cl->store, x->user, x->conv, pos, NULL, NULL);
        conv_reply(cl, x, 0, NULL);
    }
    if (imgw_coalesce_offer(cl, kind, x->user, x->conv, &x->body, x->ref,
                            conv_flush) != IMGW_COALESCE_NOW) {
        imgw_free(x);
        return;
    }
    if (users != NULL) {
        conv_push(cl, x, users, n);
        imgw_free(x);
        return;
    }
    conv_push_start(cl, x);
}

/* One lookup answered, or the issuing loop done; the last one decides. */
static void
receipt_lookup_done(imgw_core_loop_t *cl, conv_ctx_t *x)
{
    if (--x->lookups > 0)
        return;
    if (x->verdict == im_ErrorCode_ERR_INVALID_PARAM) {
        conv_reply(cl, x, x->verdict,
                   "message_ids must name messages of this conversation");
        imgw_free(x);
    } else if (x->verdict != 0) {
        conv_reply(cl, x, x->verdict, "store unavailable");
        imgw_free(x);
    } else {
        conv_accept(cl, x, NULL, 0);
    }
}

static void
receipt_msg_cb(int status, const imgw_store_msg_t *m, void *data)
{
    conv_ctx_t *x = data;
    imgw_core_loop_t *cl = imgw_core_loop_current();
    cl->st.store_ops++;
    if (x->verdict == 0) {
        if (status == IMGW_ENOTFOUND ||
            (status == 0 && strcmp(m->conversation_id, x->conv) != 0))
            x->verdict = im_ErrorCode_ERR_INVALID_PARAM;
        else if (status != 0)
            x->verdict = im_ErrorCode_ERR_SERVER_BUSY;
    }
    if (status != 0 && status != IMGW_ENOTFOUND)
        cl->st.store_errors++;
    receipt_lookup_done(cl, x);
}

/*
 * Step 3. Every lookup answers later, refused or not (store.h), so the
 * count is complete before the first answer and the last one decides; no
 * ids: decided at once.
 */
static void
receipt_validate(imgw_core_loop_t *cl, conv_ctx_t *x)
{
    const im_ReadReceiptPush *p = &x->body.read;
    x->verdict = 0;
    if (p->message_ids_count == 0) {
        x->lookups = 1;
        receipt_lookup_done(cl, x);
        return;
    }
    x->lookups = p->message_ids_count;
    for (pb_size_t i = 0; i < p->message_ids_count; i++) {
        uint64_t id = 0;
        imgw_id_parse(p->message_ids[i], strlen(p->message_ids[i]), &id);
        imgw_store_msg_get(cl->store, id, receipt_msg_cb, x);
    }
}

static void
conv_members_cb(int status, const char *const *members, size_t n, void *data)
{
    conv_ctx_t *x = data;
    imgw_core_loop_t *cl = imgw_core_loop_current();
    const char *const *u = NULL;
    size_t k = 0;
    int member = 0;
    if (status == IMGW_ENOTFOUND) {
        conv_reply(cl, x, im_ErrorCode_ERR_CONVERSATION_NOT_EXIST,
                   "no such group");
    } else if (status != 0) {
        conv_reply(cl, x, im_ErrorCode_ERR_SERVER_BUSY, "store unavailable");
    } else if ((u = imgw_uniq_build(&uniq, x->user, members, n, &k, &member)) ==
               NULL) {
        conv_reply(cl, x, im_ErrorCode_ERR_SERVER_BUSY, "out of memory");
    } else if (!member) {
        /* A held push of a user who has left the group is dropped. */
        conv_reply(cl, x, im_ErrorCode_ERR_PERMISSION_DENIED,
                   "not a member of the group");
    } else if (x->flush) {
        conv_push(cl, x, u, k);
    } else if (is_receipt(x)) {
        receipt_validate(cl, x);
        return;
    } else {
        conv_accept(cl, x, u, k);
        return;
    }
    imgw_free(x);
}

/* Steps 1 and 2: the budget, then the conversation. */
static void
conv_command(imgw_session_t *s, imgw_msg_in_t *in, const char *conv)
{
    imgw_core_loop_t *cl = s->cl;
    int receipt = in->command == im_CommandType_CMD_READ_RECEIPT_REQ;
    if (!user_budget(s, IMGW_USERMAP_BUDGET_RECEIPT)) {
        cl->st.rate_limited++;
        if (receipt) {
            im_ReadReceiptResponse r = im_ReadReceiptResponse_init_zero;
            r.error_code = im_ErrorCode_ERR_SEND_TOO_FAST;
            snprintf(r.error_msg, sizeof(r.error_msg),
                     "user receipt rate exceeded");
            imgw_core_count_error(cl, r.error_code);
            imgw_session_reply(s, im_CommandType_CMD_READ_RECEIPT_RSP,
                               in->sequence, &r);
        }
        /* Typing over the budget is dropped without an answer: typing
         * has no response, and a status is stale a second later. */
        return;
    }
    conv_ctx_t *x = conv_ctx_new(receipt);
    if (x == NULL) {
        imgw_session_error(s, in->sequence, im_ErrorCode_ERR_SERVER_BUSY,
                           "out of memory");
        return;
    }
    x->ref = imgw_conn_ref(s->conn);
    x->sequence = in->sequence;
    x->command = in->command;
    if (in->command == im_CommandType_CMD_READ_RECEIPT_REQ)
        x->read_seq = in->u.read.read_seq;
    snprintf(x->user, sizeof(x->user), "%s", s->user);
    snprintf(x->conv, sizeof(x->conv), "%s", conv);
    if (receipt) {
        im_ReadReceiptPush *p = &x->body.read;
        *p = (im_ReadReceiptPush)im_ReadReceiptPush_init_zero;
        p->message_ids_count = in->u.read.message_ids_count;
        for (pb_size_t i = 0; i < p->message_ids_count; i++) {
            const char *id = in->u.read.message_ids[i];
            uint64_t v;
            if (imgw_id_parse(id, strlen(id), &v) != 0) {
                conv_reply(cl, x, im_ErrorCode_ERR_INVALID_PARAM,
                           "bad message_id");
                imgw_free(x);
                return;
            }
            /* The canonical form: what the lookups and pushes carry. */
            imgw_id_format(v, p->message_ids[i]);
            if (v > x->pos)
                x->pos = v;
        }
        if (p->message_ids_count == 0) {
            conv_reply(cl, x, im_ErrorCode_ERR_INVALID_PARAM,
                       "message_ids is empty");
            imgw_free(x);
            return;
        }
        if (in->u.read.read_seq < 0) {
            conv_reply(cl, x, im_ErrorCode_ERR_INVALID_PARAM,
                       "read_seq must be >= 0");
            imgw_free(x);
            return;
        }
        snprintf(p->conversation_id, sizeof(p->conversation_id), "%s", conv);
        snprintf(p->user_id, sizeof(p->user_id), "%s", s->user);
        p->read_time = imgw_now_ms();
        /* The reader's own devices clear their badge from it. */
        p->read_seq = in->u.read.read_seq > 0 ? in->u.read.read_seq : 0;
    } else {
        im_TypingStatusPush *p = &x->body.typing;
        *p = (im_TypingStatusPush)im_TypingStatusPush_init_zero;
        snprintf(p->conversation_id, sizeof(p->conversation_id), "%s", conv);
        snprintf(p->user_id, sizeof(p->user_id), "%s", s->user);
        p->status = in->u.typing.status;
    }
    if (in->command == im_CommandType_CMD_READ_RECEIPT_REQ) {
        /* Message ids are stored as the read position: printable. */
        for (pb_size_t i = 0; i < in->u.read.message_ids_count; i++) {
            const char *m = in->u.read.message_ids[i];
            if (imgw_cmid_check(m, strlen(m)) != NULL) {
                conv_reply(cl, x, im_ErrorCode_ERR_INVALID_PARAM,
                           "message_ids must be printable ASCII");
                imgw_free(x);
                return;
            }
        }
    }
    if (strncmp(conv, "g_", 2) == 0 && conv[2] != '\0') {
        const char *why = imgw_id_check(conv + 2, strlen(conv + 2));
        if (why != NULL) {
            char msg[96];
            snprintf(msg, sizeof(msg), "group id %s", why);
            conv_reply(cl, x, im_ErrorCode_ERR_INVALID_PARAM, msg);
            imgw_free(x);
            return;
        }
        imgw_store_group_get(cl->store, conv + 2, conv_members_cb, x);
        return;
    }
    char peer[IMGW_JWT_MAX_USER];
    if (conv_peer(conv, s->user, peer, sizeof(peer)) != 0 ||
        !imgw_id_valid(peer)) {
        conv_reply(cl, x, im_ErrorCode_ERR_INVALID_PARAM,
                   "not a conversation of this user");
        imgw_free(x);
        return;
    }
    if (receipt) {
        receipt_validate(cl, x);
        return;
    }
    const char *users[2] = {s->user, peer};
    conv_accept(cl, x, users, 2);
}

void
imgw_msg_read(imgw_session_t *s, imgw_msg_in_t *in)
{
    conv_command(s, in, in->u.read.conversation_id);
}

void
imgw_msg_typing(imgw_session_t *s, imgw_msg_in_t *in)
{
    conv_command(s, in, in->u.typing.conversation_id);
}

/* A held push whose window ended (coalesce.c): participants resolved
 * again, pushed, no answer (the request was answered when accepted). */
static void
conv_flush(imgw_core_loop_t *cl, int kind, const char *user, const char *conv,
           const imgw_push_body_t *body, imgw_conn_ref_t exclude)
{
    int receipt = kind == IMGW_COALESCE_RECEIPT;
    conv_ctx_t *x = conv_ctx_new(receipt);
    if (x == NULL)
        return;
    x->ref = exclude;
    x->flush = 1;
    x->command = receipt ? im_CommandType_CMD_READ_RECEIPT_REQ
                         : im_CommandType_CMD_TYPING_STATUS_REQ;
    memcpy(&x->body, body,
           imgw_push_body_size(receipt ? im_CommandType_CMD_READ_RECEIPT_PUSH
                                       : im_CommandType_CMD_TYPING_STATUS_PUSH));
    snprintf(x->user, sizeof(x->user), "%s", user);
    snprintf(x->conv, sizeof(x->conv), "%s", conv);
    conv_push_start(cl, x);
}

/* ---- revoke --------------------------------------------------------------- */

typedef struct revoke_ctx_s {
    imgw_conn_ref_t ref;
    uint32_t sequence;
    uint64_t message_id;
    char user[IMGW_JWT_MAX_USER];
    char conv[264];
    int64_t revoked_time;
} revoke_ctx_t;

static void
revoke_reply(imgw_core_loop_t *cl, revoke_ctx_t *x, int code, const char *why)
{
    imgw_session_t *s = imgw_core_session(cl, x->ref);
    if (s == NULL)
        return;
    im_RevokeMessageResponse r = im_RevokeMessageResponse_init_zero;
    r.error_code = (im_ErrorCode)code;
    if (why)
        snprintf(r.error_msg, sizeof(r.error_msg), "%s", why);
    if (code)
        imgw_core_count_error(cl, code);
    imgw_session_reply(s, im_CommandType_CMD_REVOKE_MSG_RSP, x->sequence, &r);
}

static void
revoke_push(imgw_core_loop_t *cl, revoke_ctx_t *x, const char *const *users,
            size_t n)
{
    imgw_push_body_t body;
    im_RevokeMessagePush *p = &body.revoke;
    *p = (im_RevokeMessagePush)im_RevokeMessagePush_init_zero;
    imgw_id_format(x->message_id, p->message_id);
    snprintf(p->conversation_id, sizeof(p->conversation_id), "%s", x->conv);
    snprintf(p->revoked_by, sizeof(p->revoked_by), "%s", x->user);
    p->revoked_time = x->revoked_time;
    imgw_deliver_frame(cl, im_CommandType_CMD_REVOKE_MSG_PUSH, &body, users, n,
                       x->ref);
}

static void
revoke_members_cb(int status, const char *const *members, size_t n,
                  void *data)
{
    revoke_ctx_t *x = data;
    imgw_core_loop_t *cl = imgw_core_loop_current();
    if (status == 0) {
        revoke_push(cl, x, members, n);
    } else {
        /* The group is gone: the sender's own devices still learn it. */
        const char *u[1] = {x->user};
        revoke_push(cl, x, u, 1);
    }
    imgw_free(x);
}

static void
revoke_done_cb(int status, void *data)
{
    revoke_ctx_t *x = data;
    imgw_core_loop_t *cl = imgw_core_loop_current();
    if (status != 0) {
        revoke_reply(cl, x, im_ErrorCode_ERR_SERVER_BUSY, "store unavailable");
        imgw_free(x);
        return;
    }
    revoke_reply(cl, x, 0, NULL);
    if (strncmp(x->conv, "g_", 2) == 0) {
        imgw_store_group_get(cl->store, x->conv + 2, revoke_members_cb, x);
        return;
    }
    char peer[IMGW_JWT_MAX_USER];
    const char *users[2] = {x->user, peer};
    size_t n = 1;
    if (conv_peer(x->conv, x->user, peer, sizeof(peer)) == 0 &&
        strcmp(peer, x->user) != 0)
        n = 2;
    revoke_push(cl, x, users, n);
    imgw_free(x);
}

static void
revoke_msg_cb(int status, const imgw_store_msg_t *m, void *data)
{
    revoke_ctx_t *x = data;
    imgw_core_loop_t *cl = imgw_core_loop_current();
    const imgw_config_t *cfg = cl->node->cfg;
    if (status == IMGW_ENOTFOUND) {
        revoke_reply(cl, x, im_ErrorCode_ERR_INVALID_PARAM, "unknown message");
        imgw_free(x);
        return;
    }
    if (status != 0) {
        revoke_reply(cl, x, im_ErrorCode_ERR_SERVER_BUSY, "store unavailable");
        imgw_free(x);
        return;
    }
    if (strcmp(m->sender, x->user) != 0) {
        revoke_reply(cl, x, im_ErrorCode_ERR_PERMISSION_DENIED,
                     "only the sender may revoke");
        imgw_free(x);
        return;
    }
    if (x->conv[0] && strcmp(x->conv, m->conversation_id) != 0) {
        revoke_reply(cl, x, im_ErrorCode_ERR_INVALID_PARAM,
                     "conversation_id does not match");
        imgw_free(x);
        return;
    }
    x->revoked_time = imgw_now_ms();
    if (x->revoked_time - m->server_time_ms >
        (int64_t)cfg->revoke_window * 1000) {
        revoke_reply(cl, x, im_ErrorCode_ERR_PERMISSION_DENIED,
                     "revoke window has passed");
        imgw_free(x);
        return;
    }
    snprintf(x->conv, sizeof(x->conv), "%s", m->conversation_id);
    imgw_store_revoke(cl->store, x->message_id, revoke_done_cb, x);
}

void
imgw_msg_revoke(imgw_session_t *s, imgw_msg_in_t *in)
{
    im_RevokeMessageRequest *q = &in->u.revoke;
    revoke_ctx_t *x = imgw_try_calloc(1, sizeof(*x));
    if (x == NULL) {
        imgw_session_error(s, in->sequence, im_ErrorCode_ERR_SERVER_BUSY,
                           "out of memory");
        return;
    }
    x->ref = imgw_conn_ref(s->conn);
    x->sequence = in->sequence;
    snprintf(x->user, sizeof(x->user), "%s", s->user);
    snprintf(x->conv, sizeof(x->conv), "%s", q->conversation_id);
    if (imgw_id_parse(q->message_id, strlen(q->message_id), &x->message_id) !=
        0) {
        revoke_reply(s->cl, x, im_ErrorCode_ERR_INVALID_PARAM,
                     "bad message_id");
        imgw_free(x);
        return;
    }
    imgw_store_msg_get(s->cl->store, x->message_id, revoke_msg_cb, x);
}
