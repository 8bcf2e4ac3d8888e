/*
 * coalesce.h: at most one read receipt / typing push per (user,
 * conversation) per interval (limits.receipt_interval_ms,
 * limits.typing_interval_ms); see coalesce.c and docs/protocol.md.
 * Internal to src/core. Loop thread only.
 */
#ifndef IMGW_COALESCE_H
#define IMGW_COALESCE_H

#include "node.h"

enum { IMGW_COALESCE_RECEIPT = 0, IMGW_COALESCE_TYPING = 1 };

/* What imgw_coalesce_offer decided. */
enum {
    IMGW_COALESCE_NOW = 0, /* push it now: a new window opened */
    IMGW_COALESCE_HELD,    /* kept as the window's push, sent at its end */
    IMGW_COALESCE_COVERED  /* a receipt at or behind the position already
                              pushed or held in this window: nothing */
};

/* Where held pushes whose window ended go (msg.c's imgw_msg_conv_flush):
 * passed in by the caller, so this helper never calls up into msg.c. */
typedef void (*imgw_coalesce_flush_fn)(imgw_core_loop_t *cl, int kind,
                                       const char *user, const char *conv,
                                       const imgw_push_body_t *body,
                                       imgw_conn_ref_t exclude);

/*
 * Offers an accepted receipt (body->read) or typing status (body->typing)
 * of user in conv, sent from connection `from` (excluded from the push).
 * Returns one of the values above. When the loop's table is full or out
 * of memory the answer is IMGW_COALESCE_NOW (the per-user budget still
 * bounds such pushes). A held push goes to flush at its window's end.
 */
int imgw_coalesce_offer(imgw_core_loop_t *cl, int kind, const char *user,
                        const char *conv, const imgw_push_body_t *body,
                        imgw_conn_ref_t from, imgw_coalesce_flush_fn flush);

/* Entries and held pushes of this loop (tests and metrics). */
size_t imgw_coalesce_entries(void);
/* Drops the calling loop's table and closes its timer (at loop stop;
 * held pushes are dropped: their read positions are already stored). */
void imgw_coalesce_thread_free(void);

#endif
