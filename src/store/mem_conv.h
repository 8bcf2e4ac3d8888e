/*
 * mem_conv.h: one user's conversation list in the memory backend (issue 13
 * item 1). memory.c embeds an imgw__mem_convs_t in each user record and
 * calls these functions under that user's shard lock; nothing here locks,
 * and nothing here knows about timelines (memory.c recounts unread entries
 * from the ring when a read position lands below the last message).
 *
 * A conversation is keyed by (kind, peer): the partner's user id for a 1:1
 * conversation, the group id for a group, never by the "s_<a>_<b>" string,
 * which is ambiguous when user ids contain '_' (docs/protocol.md).
 *
 * Bounds: at most max entries per user (the one with the oldest update is
 * dropped for a new one), previews cut to IMGW_STORE_PREVIEW_MAX bytes on a
 * UTF-8 boundary. Lookups scan the array: max is small (default
 * IMGW__STORE_CONVS_DEFAULT). TODO: an index if max grows to thousands.
 */
#ifndef IMGW_MEM_CONV_H
#define IMGW_MEM_CONV_H

#include <stddef.h>
#include <stdint.h>

#include "store.h"

typedef struct imgw__mem_convs_s {
    imgw_store_conv_t *v; /* cap slots, n used, unordered */
    uint32_t n, cap;
} imgw__mem_convs_t;

/** Makes room for one more entry (up to max); 0 or IMGW_ENOMEM. */
int imgw__mem_conv_reserve(imgw__mem_convs_t *t, uint32_t max);

/**
 * Records message (message_id, seq in this user's timeline, sender, type,
 * preview) as the last of conversation (kind, peer), creating it (past max
 * the oldest entry makes room) after imgw__mem_conv_reserve succeeded.
 * own: the user sent it, so it does not count as unread.
 */
void imgw__mem_conv_update(imgw__mem_convs_t *t, uint32_t max, int kind,
                           const char *peer, uint64_t message_id, int64_t seq,
                           const char *sender, int32_t msg_type,
                           const char *preview, int64_t now_ms, int own);

/** The entry of (kind, peer), or NULL. */
imgw_store_conv_t *imgw__mem_conv_find(imgw__mem_convs_t *t, int kind,
                                       const char *peer);

/** Removes the entry of (kind, peer); IMGW_ENOTFOUND when absent. */
int imgw__mem_conv_delete(imgw__mem_convs_t *t, int kind, const char *peer);

/** Sum of the unread counts. */
uint64_t imgw__mem_conv_total_unread(const imgw__mem_convs_t *t);

/**
 * Copies up to limit entries with last_seq < before_seq (0 = no bound),
 * newest update first, into out (limit slots); *has_more when more exist.
 * Returns the number copied.
 */
size_t imgw__mem_conv_page(const imgw__mem_convs_t *t, int64_t before_seq,
                           size_t limit, imgw_store_conv_t *out, int *has_more);

void imgw__mem_conv_free(imgw__mem_convs_t *t);

#endif
