/*
 * conv.c: conversation list commands over the store's per-user
 * conversation state (store.h "conversations", docs/store.md). Runs on the
 * loop that owns the session; store callbacks run on that loop too.
 */
#include "conv.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "err.h"
#include "idsyntax.h"
#include "log.h"

#define CONV_WIRE_PAGE_MAX 50 /* proto/imgw.options conversations max_count */
#define CONV_WIRE_PAGE_DEFAULT 20

/* "s_<a>_<b>" with a <= b byte-wise. */
static int
conv_single_id(const char *a, const char *b, char *out, size_t cap)
{
    if (strcmp(a, b) > 0) {
        const char *t = a;
        a = b;
        b = t;
    }
    int n = snprintf(out, cap, "s_%s_%s", a, b);
    return (n < 0 || (size_t)n >= cap) ? -1 : 0;
}

int
imgw_conv_resolve(const char *user, const char *id, int *kind, char *peer,
                  size_t peer_cap)
{
    char again[300];
    size_t ul = strlen(user), il = strlen(id);
    if (strncmp(id, "g_", 2) == 0) {
        if (!imgw_id_valid(id + 2) || il - 2 >= peer_cap)
            return -1;
        *kind = IMGW_STORE_CONV_GROUP;
        memcpy(peer, id + 2, il - 1);
        return 0;
    }
    if (strncmp(id, "s_", 2) != 0 || il < 2 + ul + 1)
        return -1;
    /* The user is the first side ("s_<user>_<peer>") or the second
     * ("s_<peer>_<user>"); each candidate must rebuild the id exactly. The
     * first form is tried first so the answer is deterministic. */
    for (int form = 0; form < 2; form++) {
        const char *p;
        size_t pl = il - 2 - ul - 1;
        if (form == 0) {
            if (strncmp(id + 2, user, ul) != 0 || id[2 + ul] != '_')
                continue;
            p = id + 2 + ul + 1;
        } else {
            if (strcmp(id + il - ul, user) != 0 || id[il - ul - 1] != '_')
                continue;
            p = id + 2;
        }
        if (pl == 0 || pl >= peer_cap)
            continue;
        memcpy(peer, p, pl);
        peer[pl] = '\0';
        if (!imgw_id_valid(peer) ||
            conv_single_id(user, peer, again, sizeof(again)) != 0 ||
            strcmp(again, id) != 0)
            continue;
        *kind = IMGW_STORE_CONV_SINGLE;
        return 0;
    }
    return -1;
}

/* ---- list ------------------------------------------------------------------
 */

typedef struct conv_list_ctx_s {
    imgw_conn_ref_t ref;
    uint32_t sequence;
} conv_list_ctx_t;

static void
conv_list_cb(int status, const imgw_store_conv_t *c, size_t n, int has_more,
             uint64_t total_unread, void *data)
{
    conv_list_ctx_t *x = data;
    imgw_core_loop_t *cl = imgw_core_loop_current();
    imgw_session_t *s = imgw_core_session(cl, x->ref);
    uint32_t sequence = x->sequence;
    imgw_free(x);
    if (s == NULL)
        return;
    /* 50 entries of ~900 bytes: on the heap, not the loop's stack. */
    im_ConversationListResponse *r = imgw_try_calloc(1, sizeof(*r));
    if (r == NULL) {
        imgw_session_error(s, sequence, im_ErrorCode_ERR_SERVER_BUSY,
                           "out of memory");
        return;
    }
    if (status != 0) {
        r->error_code = im_ErrorCode_ERR_SERVER_BUSY;
        snprintf(r->error_msg, sizeof(r->error_msg), "store unavailable");
        imgw_core_count_error(cl, r->error_code);
    } else {
        for (size_t i = 0; i < n && i < CONV_WIRE_PAGE_MAX; i++) {
            im_Conversation *o = &r->conversations[r->conversations_count];
            if (c[i].kind == IMGW_STORE_CONV_GROUP) {
                snprintf(o->conversation_id, sizeof(o->conversation_id), "g_%s",
                         c[i].peer);
                snprintf(o->group_id, sizeof(o->group_id), "%s", c[i].peer);
            } else {
                conv_single_id(s->user, c[i].peer, o->conversation_id,
                               sizeof(o->conversation_id));
                snprintf(o->peer_id, sizeof(o->peer_id), "%s", c[i].peer);
            }
            imgw_id_format(c[i].last_message_id, o->last_message_id);
            o->last_seq = c[i].last_seq;
            snprintf(o->last_sender_id, sizeof(o->last_sender_id), "%s",
                     c[i].last_sender);
            o->last_message_type = c[i].last_type;
            snprintf(o->preview, sizeof(o->preview), "%s", c[i].preview);
            o->unread =
                c[i].unread > INT32_MAX ? INT32_MAX : (int32_t)c[i].unread;
            o->read_seq = c[i].read_seq;
            o->updated_time = c[i].updated_ms;
            r->conversations_count++;
        }
        r->has_more = has_more || n > CONV_WIRE_PAGE_MAX;
        r->total_unread = (int64_t)total_unread;
    }
    imgw_session_reply(s, im_CommandType_CMD_CONVERSATION_LIST_RSP, sequence,
                       r);
    imgw_free(r);
}

void
imgw_conv_list(imgw_session_t *s, imgw_msg_in_t *in)
{
    const im_ConversationListRequest *q = &in->u.conv_list;
    const char *bad = NULL;
    if (q->before_seq < 0)
        bad = "before_seq must be >= 0";
    else if (q->limit < 0 || q->limit > CONV_WIRE_PAGE_MAX)
        bad = "limit must be 0..50 (0: 20)";
    if (bad != NULL) {
        im_ConversationListResponse r = im_ConversationListResponse_init_zero;
        r.error_code = im_ErrorCode_ERR_INVALID_PARAM;
        snprintf(r.error_msg, sizeof(r.error_msg), "%s", bad);
        imgw_core_count_error(s->cl, r.error_code);
        imgw_session_reply(s, im_CommandType_CMD_CONVERSATION_LIST_RSP,
                           in->sequence, &r);
        return;
    }
    int limit = q->limit == 0 ? CONV_WIRE_PAGE_DEFAULT : q->limit;
    conv_list_ctx_t *x = imgw_try_malloc(sizeof(*x));
    if (x == NULL) {
        imgw_session_error(s, in->sequence, im_ErrorCode_ERR_SERVER_BUSY,
                           "out of memory");
        return;
    }
    x->ref = imgw_conn_ref(s->conn);
    x->sequence = in->sequence;
    /* A refusal completes through conv_list_cb too, after this returns
     * (store.h), as for every store request in msg.c. */
    imgw_store_conv_list(s->cl->store, s->user, q->before_seq, limit,
                         conv_list_cb, x);
}

/* ---- delete ----------------------------------------------------------------
 */

typedef struct conv_del_ctx_s {
    imgw_conn_ref_t ref;
    uint32_t sequence;
    char conv[264];
} conv_del_ctx_t;

static void
conv_del_reply(imgw_session_t *s, uint32_t sequence, int code, const char *why,
               const char *conv)
{
    im_ConversationDeleteResponse r = im_ConversationDeleteResponse_init_zero;
    r.error_code = (im_ErrorCode)code;
    if (why)
        snprintf(r.error_msg, sizeof(r.error_msg), "%s", why);
    snprintf(r.conversation_id, sizeof(r.conversation_id), "%s", conv);
    if (code != 0)
        imgw_core_count_error(s->cl, code);
    imgw_session_reply(s, im_CommandType_CMD_CONVERSATION_DELETE_RSP, sequence,
                       &r);
}

static void
conv_del_cb(int status, void *data)
{
    conv_del_ctx_t *x = data;
    imgw_core_loop_t *cl = imgw_core_loop_current();
    imgw_session_t *s = imgw_core_session(cl, x->ref);
    if (s != NULL) {
        if (status == 0)
            conv_del_reply(s, x->sequence, 0, NULL, x->conv);
        else if (status == IMGW_ENOTFOUND)
            conv_del_reply(s, x->sequence,
                           im_ErrorCode_ERR_CONVERSATION_NOT_EXIST,
                           "no such conversation", x->conv);
        else
            conv_del_reply(s, x->sequence, im_ErrorCode_ERR_SERVER_BUSY,
                           "store unavailable", x->conv);
    }
    imgw_free(x);
}

void
imgw_conv_delete(imgw_session_t *s, imgw_msg_in_t *in)
{
    const char *id = in->u.conv_delete.conversation_id;
    char peer[IMGW_JWT_MAX_USER];
    int kind = 0;
    if (imgw_conv_resolve(s->user, id, &kind, peer, sizeof(peer)) != 0) {
        conv_del_reply(s, in->sequence, im_ErrorCode_ERR_CONVERSATION_NOT_EXIST,
                       "no such conversation", id);
        return;
    }
    conv_del_ctx_t *x = imgw_try_malloc(sizeof(*x));
    if (x == NULL) {
        conv_del_reply(s, in->sequence, im_ErrorCode_ERR_SERVER_BUSY,
                       "out of memory", id);
        return;
    }
    x->ref = imgw_conn_ref(s->conn);
    x->sequence = in->sequence;
    snprintf(x->conv, sizeof(x->conv), "%s", id);
    imgw_store_conv_delete(s->cl->store, s->user, kind, peer, conv_del_cb,
                           x);
}

/* ---- read ------------------------------------------------------------------
 */

int
imgw_conv_mark_read(imgw_store_loop_t *store, const char *user,
                    const char *conv, int64_t read_seq, imgw_store_done_cb cb,
                    void *data)
{
    char peer[IMGW_JWT_MAX_USER];
    int kind = 0;
    if (read_seq <= 0 ||
        imgw_conv_resolve(user, conv, &kind, peer, sizeof(peer)) != 0)
        return -1;
    return imgw_store_conv_read(store, user, kind, peer, read_seq, cb, data);
}
