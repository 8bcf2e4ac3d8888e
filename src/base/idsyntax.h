/*
 * idsyntax.h: the syntax of the string ids that name per-user and
 * per-group state (user, group and member ids) and of client_msg_id. One
 * rule, checked wherever an id enters (JWT subject, frames, /api, the
 * broker downlink) and again at the store's edge (store.c), so no backend
 * ever builds a key from an id outside it. docs/protocol.md ("Ids") and
 * docs/store.md ("Keys") document it.
 *
 *   user / group / member id: 1..IMGW_ID_MAX bytes of [A-Za-z0-9._@-]
 *   client_msg_id:            1..IMGW_CMID_MAX bytes of printable ASCII
 *                             (0x21..0x7e: no space, no control byte)
 *
 * Why this alphabet: Redis keys that join an id with a second value use
 * ':' as the separator (IM-DEDUP-{user}:{client_msg_id}), so ':' may not
 * occur in an id; no control bytes or spaces for logs and line-based
 * tools; no '/' for /api/groups/{gid}; no glob characters (* ? [ ]) for
 * KEYS / SCAN patterns; no '{' '}' that would make a key a Redis Cluster
 * hash tag. '_' is allowed (s_<a>_<b> conversation ids are resolved
 * against the reader's own id, see msg.c conv_peer).
 *
 * Threads: pure functions, any thread.
 */
#ifndef IMGW_IDSYNTAX_H
#define IMGW_IDSYNTAX_H

#include <stddef.h>

#define IMGW_ID_MAX 127   /* bytes, without the NUL */
#define IMGW_CMID_MAX 127 /* bytes, without the NUL */

/**
 * Checks n bytes of s against the user/group id rule. Returns NULL when
 * the id is valid, else a static sentence naming the rule that failed
 * ("is empty", ...), meant to follow the field's name in an error message.
 */
const char *imgw_id_check(const char *s, size_t n);
/** 1 when the NUL-terminated s is a valid user/group id (NULL: 0). */
int imgw_id_valid(const char *s);

/** Like imgw_id_check for a non-empty client_msg_id. */
const char *imgw_cmid_check(const char *s, size_t n);
/** 1 when s is NULL, "" (no dedupe) or a valid client_msg_id. */
int imgw_cmid_valid_opt(const char *s);

#endif
