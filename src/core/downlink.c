/*
 * downlink.c: the business downlink. POST /api/push and the broker's
 * messages end here: a downlink body is encoded once per codec and handed
 * to deliver.c; a broker message is parsed by cluster.c and routed through
 * the same deliver.c entry points a local send uses (push, kick). It sits
 * between the HTTP API and the session's mailbox above and deliver.c
 * below, so the cluster layer never calls up.
 *
 * Thread: the loop that received the request or the mail.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "alloc.h"
#include "downlink.h"
#include "err.h"
#include "idsyntax.h"
#include "log.h"
#include "mail.h"

static int
cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/*
 * The downlink body {code, ids, data, broadcast} (protocol.md section 8):
 * encoded once per codec, delivered to the users' connections on this node.
 * Returns the HTTP status and fills *targets.
 */
int
imgw_downlink_push(imgw_core_loop_t *cl, const cJSON *j, size_t *targets,
                   const char **why)
{
    const cJSON *code = cJSON_GetObjectItemCaseSensitive(j, "code");
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(j, "ids");
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(j, "data");
    const cJSON *bc = cJSON_GetObjectItemCaseSensitive(j, "broadcast");
    int broadcast = cJSON_IsTrue(bc);
    int64_t cmd;
    *targets = 0;
    if (imgw_codec_json_int(code, 0, INT32_MAX, &cmd) != 0) {
        *why = "code must be a command number";
        return 400;
    }
    if (data != NULL && !cJSON_IsObject(data)) {
        *why = "data must be an object";
        return 400;
    }
    if (!broadcast && !cJSON_IsArray(ids)) {
        *why = "ids must be an array of user ids";
        return 400;
    }
    if (bc != NULL && !cJSON_IsBool(bc)) {
        *why = "broadcast must be a boolean";
        return 400;
    }
    size_t n = broadcast ? 0 : (size_t)cJSON_GetArraySize(ids);
    if (n > 10000) {
        *why = "too many ids";
        return 400;
    }
    cJSON *empty = NULL;
    if (data == NULL)
        data = empty = cJSON_CreateObject();
    size_t half = cl->out_cap / 2;
    int64_t now = imgw_now_ms();
    ssize_t pl = imgw_codec_encode_from_json(IMGW_CODEC_PB, (int)cmd, data,
                                             now, cl->out + half, half);
    ssize_t jl = pl < 0 ? pl
                        : imgw_codec_encode_from_json(IMGW_CODEC_JSON,
                                                      (int)cmd, data, now,
                                                      cl->out, half);
    cJSON_Delete(empty);
    if (pl < 0 || jl < 0) {
        ssize_t e = pl < 0 ? pl : jl;
        *why = e == IMGW_EUNKNOWNCMD ? "unknown or client-side code"
               : e == IMGW_ETOOBIG   ? "data too large"
               : e == IMGW_EUTF8     ? "data has a string that is not UTF-8"
                                     : "data does not fit the command's body";
        return 400;
    }
    const char **users = NULL;
    if (!broadcast) {
        users = imgw_try_malloc((n ? n : 1) * sizeof(char *));
        if (users == NULL) {
            *why = "out of memory";
            return 503;
        }
        size_t i = 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, ids)
        {
            if (!cJSON_IsString(it)) {
                imgw_free(users);
                *why = "ids must be strings";
                return 400;
            }
            /* *why must outlive this call: static sentences. */
            size_t il = strlen(it->valuestring);
            if (imgw_id_check(it->valuestring, il) != NULL) {
                imgw_free(users);
                *why = il == 0            ? "ids: an id is empty"
                       : il > IMGW_ID_MAX ? "ids: an id is longer than 127 "
                                            "bytes"
                                          : "ids: an id may only contain "
                                            "A-Z a-z 0-9 . _ @ -";
                return 400;
            }
            users[i++] = it->valuestring;
        }
        /* ids is a set: a user listed twice gets the frame once. */
        qsort(users, n, sizeof(*users), cmp_str);
        size_t k = 0;
        for (i = 0; i < n; i++)
            if (k == 0 || strcmp(users[k - 1], users[i]) != 0)
                users[k++] = users[i];
        n = k;
    }
    *targets = imgw_deliver_raw(cl, cl->out + half, (size_t)pl, cl->out,
                                (size_t)jl, users, n);
    imgw_free(users);
    return 200;
}

/* Kicks this node's connections of (user, platform). */
static void
kick_local(imgw_core_loop_t *cl, const char *user, const char *platform)
{
    imgw_usermap_conn_t conns[IMGW_USERMAP_MAX_CONNS];
    size_t k = imgw_usermap_get(cl->node->users, user, conns,
                                IMGW_USERMAP_MAX_CONNS);
    for (size_t i = 0; i < k; i++) {
        if (strcmp(conns[i].platform, platform) == 0)
            imgw_deliver_kick(cl, conns[i].ref, platform);
    }
}

void
imgw_downlink_mail(imgw_core_loop_t *cl, imgw_mail_t *m)
{
    imgw_cluster_in_t in;
    const char *why = imgw_cluster_parse(m->data->ptr[0], m->data->len[0], &in);
    if (why == NULL) {
        switch (in.kind) {
        case IMGW_CLUSTER_IN_DOWNLINK: {
            size_t targets = 0;
            if (imgw_downlink_push(cl, in.j, &targets, &why) == 200)
                why = NULL;
            else if (why == NULL)
                why = "rejected";
            break;
        }
        case IMGW_CLUSTER_IN_PUSH: {
            imgw_conn_ref_t none = {0xffff, 0, 0};
            imgw_deliver_push_local(cl, in.blob, in.blob_len, in.ts,
                                    in.users, in.seqs, in.n, none);
            break;
        }
        case IMGW_CLUSTER_IN_KICK:
            kick_local(cl, in.user, in.platform);
            break;
        case IMGW_CLUSTER_IN_PRESENCE:
            imgw_presence_remote(cl, in.j);
            break;
        default:
            break;
        }
    }
    imgw_cluster_settle(cl, m->tag, m->data->len[0], why);
    imgw_cluster_in_free(&in);
    imgw_mail_free(m);
}
