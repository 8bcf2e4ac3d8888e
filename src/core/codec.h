/*
 * codec.h: imgw's two wire codecs (protocol.md sections 2, 3 and 10).
 *
 *   IMGW_CODEC_PB    binary frame = nanopb WebSocketMessage, body = the
 *                    serialized body message.
 *   IMGW_CODEC_JSON  text frame = the same envelope as JSON with "body" an
 *                    object (cJSON), enums by name (numbers accepted on
 *                    input), 64-bit ints as numbers (numeric strings
 *                    accepted on input), bytes as UTF-8 strings.
 *
 * Thread: any, but every call works on caller-provided memory only; the
 * large structs (imgw_msg_in_t) live in per-loop scratch, never per
 * connection. No malloc on the protobuf path. Bounds come from
 * proto/imgw.options; callback (FT_CALLBACK) bytes fields are imgw_slice_t.
 */
#ifndef IMGW_CODEC_H
#define IMGW_CODEC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "imgw.pb.h"

typedef enum imgw_codec_e { IMGW_CODEC_PB = 0, IMGW_CODEC_JSON = 1 } imgw_codec_t;

/** A borrowed byte range; the owner is documented where it is filled. */
typedef struct imgw_slice_s {
    const uint8_t *ptr;
    size_t len;
} imgw_slice_t;

#define IMGW_JSON_MAX_DEPTH 16

/*
 * A decoded client frame. command is one of the client->server commands
 * (5, 100, 200, 203, 205, 300, 500, 600, 700, 702, 800, 802); u holds its
 * body (zeroed proto3 defaults when the body is absent).
 */
typedef struct imgw_msg_in_s {
    int command;
    uint32_t sequence;
    int64_t timestamp;
    union {
        im_HeartbeatRequest heartbeat;
        im_AuthRequest auth;
        im_SendMessageRequest send;
        im_MessageAck ack;
        im_RevokeMessageRequest revoke;
        im_SyncRequest sync;
        im_ReadReceiptRequest read;
        im_TypingStatusRequest typing;
        im_ConversationListRequest conv_list;
        im_ConversationDeleteRequest conv_delete;
        im_PresenceRequest presence;
        im_PresenceSubscribeRequest presence_sub;
    } u;
    /*
     * SendMessageRequest.content: for PB it points into the input frame;
     * for JSON into the caller's scratch buffer. Valid as long as both are.
     */
    imgw_slice_t content;
} imgw_msg_in_t;

/*
 * Decodes one frame. scratch (at least len bytes) receives decoded JSON
 * strings that must outlive the cJSON tree (content). Returns:
 *   0                 ok
 *   IMGW_EENVELOPE    the envelope itself is undecodable (out->sequence = 0)
 *   IMGW_EUNKNOWNCMD  not a client->server command (out->sequence set)
 *   IMGW_EDECODE      the body is undecodable or over a bound
 *                     (out->sequence and out->command set)
 *   IMGW_EUTF8        a string field (not bytes: content may hold
 *                     anything) is not valid UTF-8; sequence and command
 *                     set, as for IMGW_EDECODE
 */
int imgw_codec_decode(imgw_codec_t codec, const uint8_t *data, size_t len,
                      imgw_msg_in_t *out, uint8_t *scratch,
                      size_t scratch_cap);

/*
 * Encodes a whole server->client frame: envelope {command, sequence,
 * timestamp} around body, a pointer to the nanopb struct for command:
 *   1 ErrorResponse, 6 HeartbeatResponse, 101 AuthResponse, 102 KickPush,
 *   201 SendMessageResponse, 202 PushMessage, 206 RevokeMessageResponse,
 *   207 RevokeMessagePush, 301 SyncResponse, 501 ReadReceiptResponse,
 *   502 ReadReceiptPush, 602 TypingStatusPush, 701
 *   ConversationListResponse, 703 ConversationDeleteResponse, 801
 *   PresenceResponse, 803 PresenceSubscribeResponse, 804 PresencePush.
 * Callback fields: PushMessage.content's arg is an imgw_slice_t *;
 * SyncResponse.messages' arg is an imgw_codec_entries_t *.
 * Returns the frame length, or IMGW_ETOOBIG when cap is too small,
 * IMGW_EINVAL for a command it cannot encode.
 */
ssize_t imgw_codec_encode(imgw_codec_t codec, int command, uint32_t sequence,
                          int64_t timestamp, const void *body, uint8_t *out,
                          size_t cap);
/* Only the JSON object of a server->client body (the frame's "body"), as
 * imgw_codec_encode writes it: the data of a cross-node downlink. */
ssize_t imgw_codec_encode_json_body(int command, const void *body,
                                    uint8_t *out, size_t cap);

/*
 * Timeline entries for a SyncResponse: blob[i] is a protobuf PushMessage
 * without its seq field (as stored), seq[i] its seq in this timeline, and
 * revoked[i] != 0 means "emit with empty content and extra revoked=1".
 */
typedef struct imgw_codec_entries_s {
    size_t n;
    const imgw_slice_t *blob;
    const int64_t *seq;
    const uint8_t *revoked;
} imgw_codec_entries_t;

/*
 * Sizing a SyncResponse page before encoding it (msg.c cuts pages by the
 * frame they make, so content never makes a page fail to encode):
 *
 * imgw_codec_sync_entry_max() is a cheap upper bound of the bytes one
 * stored entry of blob_len bytes adds to the frame in codec, whatever the
 * blob holds (JSON: 6 bytes per blob byte, as a control byte escapes to
 * \u00XX, plus the keys).
 *
 * imgw_codec_sync_entry_size() is the exact number (JSON: its separating
 * comma included), for when the bound would cut a page early. It decodes
 * the blob unless it is a live protobuf entry. Returns it, or IMGW_EINVAL
 * for a blob that does not decode.
 *
 * A frame is at most IMGW_CODEC_SYNC_OVERHEAD bytes plus its entries.
 */
#define IMGW_CODEC_SYNC_OVERHEAD 4096
size_t imgw_codec_sync_entry_max(imgw_codec_t codec, size_t blob_len);
ssize_t imgw_codec_sync_entry_size(imgw_codec_t codec, const uint8_t *blob,
                                   size_t len, int64_t seq, int revoked);

/** Sets a bytes callback field to encode from s (s must outlive encoding). */
void imgw_codec_set_bytes(pb_callback_t *field, imgw_slice_t *s);

/*
 * Protobuf body only (no envelope), for storing PushMessage blobs.
 * Returns the length or IMGW_ETOOBIG.
 */
ssize_t imgw_codec_encode_pb_body(int command, const void *body, uint8_t *out,
                                  size_t cap);

/*
 * Decodes a stored PushMessage blob. content points into blob.
 * Returns 0 or IMGW_EDECODE.
 */
int imgw_codec_decode_push(const uint8_t *blob, size_t len, im_PushMessage *pm,
                           imgw_slice_t *content);

/*
 * Fan-out helpers: a push is encoded once per codec and completed per
 * receiver with its own seq, so a group delivery never re-encodes the body.
 *
 * PB: frame = hdr + blob + trl, where imgw_codec_push_pb_parts() writes hdr
 * (<= 16 bytes) and trl (<= 24 bytes) for a blob of blob_len bytes.
 * JSON: imgw_codec_push_json_prefix() writes the frame up to and including
 * `"seq":` (the body's last key); the receiver's frame is prefix + the
 * decimal seq + "}}".
 */
void imgw_codec_push_pb_parts(size_t blob_len, int64_t seq, int64_t timestamp,
                              uint8_t *hdr, size_t *hdr_len, uint8_t *trl,
                              size_t *trl_len);
ssize_t imgw_codec_push_json_prefix(const uint8_t *blob, size_t blob_len,
                                    int64_t timestamp, uint8_t *out,
                                    size_t cap);

/*
 * Decodes a JSON object (the "data" of a downlink message, section 8) as
 * the body of server->client command `command` and encodes the whole frame
 * in codec. Used by the broker downlink and POST /api/push.
 * Returns the frame length, IMGW_EUNKNOWNCMD for a command that is not
 * server->client, IMGW_EDECODE for data of the wrong shape, IMGW_EUTF8 for
 * a string field that is not valid UTF-8 (content, bytes, may hold
 * anything), IMGW_ETOOBIG.
 * data is a cJSON * (void * keeps cJSON out of this header).
 */
ssize_t imgw_codec_encode_from_json(imgw_codec_t codec, int command,
                                    const void *data, int64_t timestamp,
                                    uint8_t *out, size_t cap);

/*
 * The cheap check before any cJSON parse of peer input: nesting at most
 * IMGW_JSON_MAX_DEPTH (cJSON recurses per level) and no U+0000, neither a
 * \u0000 escape nor a raw NUL byte (cJSON would cut the string there).
 * Returns 1 when the text may be parsed.
 */
int imgw_codec_json_prescan(const uint8_t *p, size_t n);

/*
 * The one conversion of a peer's JSON number (a cJSON *, void * keeps
 * cJSON out of this header) to an integer: it must be a number, integral
 * and within [lo, hi]; cJSON keeps numbers as doubles, and casting one out
 * of int64's range (1e300) is undefined behaviour. Everything from the
 * network (frames, /api bodies, broker messages) goes through here.
 * Returns 0 and fills *out, or -1.
 */
int imgw_codec_json_int(const void *v, int64_t lo, int64_t hi, int64_t *out);

/* Integers a double holds exactly (2^53): the bound for seqs and
 * millisecond timestamps that arrive as JSON numbers. */
#define IMGW_JSON_MAX_EXACT 9007199254740992LL

/** "CMD_AUTH_REQ" for 100, or NULL. */
const char *imgw_codec_cmd_name(int command);

/*
 * The ErrorCode values of proto/imgw.proto in numeric order, with their
 * names from the proto (nanopb's im_ErrorCode_name): the one list behind
 * the JSON codec and /metrics' error labels. Any thread.
 */
#define IMGW_CODEC_MAX_ERRS 32 /* room for the enum's values */
/** How many ErrorCode values there are. */
size_t imgw_codec_err_count(void);
/** The i-th value (numeric order), or -1 past the end. */
int imgw_codec_err_value(size_t i);
/** Position of code in that order, or -1 for no ErrorCode value. */
int imgw_codec_err_index(int code);
/** "ERR_INVALID_PARAM" for 2, or NULL for no ErrorCode value. */
const char *imgw_codec_err_name(int code);

#endif
