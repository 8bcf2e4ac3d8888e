/*
 * reply.c: what a loop writes to one of its sessions: a reply in the
 * session's codec, an error response, a kick. msg.c answers through it,
 * deliver.c kicks through it, session.c does both; it calls only below
 * (codec, net, loopctx.c).
 */
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>

#include "err.h"
#include "log.h"
#include "session.h"

int
imgw_session_reply(imgw_session_t *s, int command, uint32_t sequence,
                   const void *body)
{
    imgw_core_loop_t *cl = s->cl;
    ssize_t n = imgw_codec_encode((imgw_codec_t)s->codec, command, sequence,
                                  imgw_now_ms(), body, cl->out, cl->out_cap);
    if (n < 0) {
        IMGW_LOG_WARN_RL("cannot encode command %d: %s", command,
                         imgw_strerror((int)n));
        return (int)n;
    }
    uv_buf_t b = uv_buf_init((char *)cl->out, (unsigned)n);
    return imgw_conn_send_ws(s->conn, s->codec == IMGW_CODEC_JSON, &b, 1);
}

void
imgw_session_error(imgw_session_t *s, uint32_t sequence, int code,
                   const char *msg)
{
    im_ErrorResponse er = im_ErrorResponse_init_zero;
    er.error_code = (im_ErrorCode)code;
    snprintf(er.error_msg, sizeof(er.error_msg), "%s", msg);
    imgw_core_count_error(s->cl, code);
    imgw_session_reply(s, im_CommandType_CMD_ERROR_RSP, sequence, &er);
}

/* ---- kicks -------------------------------------------------------------- */

void
imgw_session_kick(imgw_core_loop_t *cl, imgw_conn_ref_t ref,
                  const char *platform)
{
    imgw_conn_t *c = imgw_loop_conn(cl->loop, ref);
    if (c == NULL)
        return;
    imgw_session_t *s = imgw_conn_data(c);
    if (s == NULL || !imgw_conn_is_ws(c))
        return;
    im_KickPush kp = im_KickPush_init_zero;
    snprintf(kp.reason, sizeof(kp.reason), "%s",
             "logged in on another connection");
    snprintf(kp.platform, sizeof(kp.platform), "%s", platform);
    imgw_session_reply(s, im_CommandType_CMD_KICK_PUSH, 0, &kp);
    /* It no longer owns the (user, platform) slot: the newer login does. */
    s->registered = 0;
    imgw_stat_inc(&cl->st.kicks);
    imgw_conn_close_ws(c, 4002, "kicked");
}
