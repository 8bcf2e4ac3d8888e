/*
 * conv.h: the conversation list commands (issue 13): CMD_CONVERSATION_LIST_REQ,
 * CMD_CONVERSATION_DELETE_REQ, and the unread reset of a read receipt that
 * carries read_seq. Loop thread of the session only.
 */
#ifndef IMGW_CONV_H
#define IMGW_CONV_H

#include <stddef.h>

#include "session.h"

/** Answers CMD_CONVERSATION_LIST_RSP (async: the store answers first). */
void imgw_conv_list(imgw_session_t *s, imgw_msg_in_t *in);
/** Answers CMD_CONVERSATION_DELETE_RSP. */
void imgw_conv_delete(imgw_session_t *s, imgw_msg_in_t *in);
/**
 * An accepted read receipt with read_seq > 0 (msg.c): moves user's read
 * position and unread count of conversation conv in the store; cb runs
 * later with the store's status (IMGW_ENOTFOUND: no state for it, e.g.
 * deleted or dropped past store.max_conversations). Returns 0, or -1 when
 * conv names no conversation of user (nothing was asked, cb will not
 * run).
 */
int imgw_conv_mark_read(imgw_store_loop_t *store, const char *user,
                        const char *conv, int64_t read_seq,
                        imgw_store_done_cb cb, void *data);

/**
 * Resolves a conversation id relative to user (docs/protocol.md): "g_<gid>"
 * is (group, gid); "s_<a>_<b>" must contain user as one side, and peer
 * (peer_cap bytes) receives the other. Returns 0, or -1 when id names no
 * conversation user can be in.
 */
int imgw_conv_resolve(const char *user, const char *id, int *kind, char *peer,
                      size_t peer_cap);

#endif
