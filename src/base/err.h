/*
 * err.h: imgw's one error vocabulary.
 *
 * Functions that can fail return 0 (or a non-negative count) on success and
 * a negative IMGW_E* code on failure. libuv codes (UV_E*) pass through
 * unchanged; they are all above -4096, ours start at -10000 and are grouped
 * by hundreds like wslay's: -101xx protocol, -102xx auth, -103xx store,
 * -104xx broker, -105xx resources. The list is one X-macro so the enum,
 * imgw_strerror() and imgw_err_name() can never disagree.
 */
#ifndef IMGW_ERR_H
#define IMGW_ERR_H

#include <stddef.h>

#define IMGW_ERRNO_MAP(X)                                                    \
    X(EINVAL, -10001, "invalid argument")                                    \
    X(ENOMEM, -10002, "out of memory")                                       \
    X(ENOTFOUND, -10003, "not found")                                        \
    X(EEXIST, -10004, "already exists")                                      \
    X(ETOOBIG, -10005, "value too large")                                    \
    X(ECONFIG, -10006, "bad configuration")                                  \
    X(EPROTO, -10101, "protocol violation")                                  \
    X(EDECODE, -10102, "undecodable message")                                \
    X(EENVELOPE, -10103, "undecodable envelope")                             \
    X(EUNKNOWNCMD, -10104, "unknown command")                                \
    X(EUTF8, -10105, "invalid UTF-8")                                        \
    X(EAUTH, -10201, "authentication failed")                                \
    X(EEXPIRED, -10202, "token expired")                                     \
    X(EBUSY, -10301, "store unavailable")                                    \
    X(ETIMEDOUT, -10302, "operation timed out")                              \
    X(EMQ, -10401, "broker unavailable")                                     \
    X(EQUEUEFULL, -10501, "queue full")                                      \
    X(ECLOSED, -10502, "connection closed")

typedef enum imgw_err_e {
#define IMGW__ERR_ENUM(name, code, msg) IMGW_##name = (code),
    IMGW_ERRNO_MAP(IMGW__ERR_ENUM)
#undef IMGW__ERR_ENUM
    IMGW_OK = 0
} imgw_err_t;

/** Human text for an IMGW_E* or UV_E* code; never NULL. */
const char *imgw_strerror(int err);
/** Symbolic name ("EINVAL") for an IMGW_E* or UV_E* code; never NULL. */
const char *imgw_err_name(int err);

/** Formats a message into a caller's error buffer (anet's `char *err`
 * convention); does nothing when err is NULL or errlen is 0. */
void imgw_err_fmt(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
