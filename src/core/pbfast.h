/*
 * pbfast.h: direct protobuf reading and writing of the messages on the 1:1
 * hot path (WebSocketMessage, SendMessageRequest, SendMessageResponse,
 * PushMessage), without nanopb's descriptor walk.
 *
 * Each function handles the common shape of its message and answers "not
 * mine" for anything else (unknown or repeated map fields, odd wire types,
 * out-of-range values, too little room), so that the caller runs nanopb on
 * the same bytes: accepted input gives exactly the struct or the bytes
 * nanopb would (test_pbfast cross-checks both ways, fuzz_pb runs both).
 * Internal to src/core; called only by codec.c. Thread: any, works on the
 * caller's memory only.
 */
#ifndef IMGW_PBFAST_H
#define IMGW_PBFAST_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "codec.h"

/* Returned by the decoders when nanopb must decide. */
#define IMGW_PBFAST_NOT_MINE 1

/* The envelope: command, sequence, timestamp into env (body untouched),
 * the body's bytes into *body (a slice of p; {NULL, 0} when absent).
 * Returns 0 or IMGW_PBFAST_NOT_MINE. */
int imgw_pbfast_decode_env(const uint8_t *p, size_t n, im_WebSocketMessage *env,
                           imgw_slice_t *body);

/* A SendMessageRequest without extra entries. content points into p
 * (refused, as NOT_MINE, beyond content_max bytes). m->content is left for
 * the caller. The string members get their bytes and a NUL, not a memset
 * of the whole struct (nanopb zeroes ~10 KB). Returns 0 or NOT_MINE. */
int imgw_pbfast_decode_send(const uint8_t *p, size_t n, size_t content_max,
                            im_SendMessageRequest *m, imgw_slice_t *content);

/* Body encoders: the bytes written, or -1 when nanopb must do it (room,
 * extra entries, an unterminated string). */
ssize_t imgw_pbfast_encode_send_rsp(const im_SendMessageResponse *r,
                                    uint8_t *out, size_t cap);
ssize_t imgw_pbfast_encode_push(const im_PushMessage *pm,
                                const imgw_slice_t *content, uint8_t *out,
                                size_t cap);

#endif
