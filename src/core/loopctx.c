/*
 * loopctx.c: the bottom of core: the calling loop thread's core state, the
 * wall clock, the error counters and the session behind a connection ref.
 * Every core file may use it; it calls
 * no other core file but the codec's error table.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>

#include "clock.h"
#include "err.h"
#include "log.h"
#include "session.h"

static _Thread_local imgw_core_loop_t *current_loop;

void
imgw_core_loop_set_current(imgw_core_loop_t *cl)
{
    current_loop = cl;
}

imgw_core_loop_t *
imgw_core_loop_current(void)
{
    return current_loop;
}

_Atomic int64_t imgw__wall_offset_ms;

/*
 * The wall clock, unix ms: only for what goes on the wire or into the store
 * (frame timestamps, server_time, JWT exp/nbf, store expiry). Deadlines,
 * timeouts and rate buckets run on the loop's monotonic clock
 * (imgw_loop_now_ms), which a wall clock step does not move.
 */
int64_t
imgw_now_ms(void)
{
    return imgw_clock_wall_ms() +
           atomic_load_explicit(&imgw__wall_offset_ms, memory_order_relaxed);
}

void
imgw_core_count_error(imgw_core_loop_t *cl, int code)
{
    int i = imgw_codec_err_index(code);
    imgw_stat_inc(&cl->st.errors[i >= 0 ? i : IMGW_N_ERRCODES - 1]);
}

imgw_session_t *
imgw_core_session(imgw_core_loop_t *cl, imgw_conn_ref_t ref)
{
    /* A ref outlives its connection (the slot's generation says so), and
     * a connection is a session only once upgraded and authenticated. */
    imgw_conn_t *c = imgw_loop_conn(cl->loop, ref);
    if (c == NULL || !imgw_conn_is_ws(c))
        return NULL;
    imgw_session_t *s = imgw_conn_data(c);
    return (s != NULL && s->authed) ? s : NULL;
}
