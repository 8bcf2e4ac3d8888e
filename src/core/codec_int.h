/*
 * codec_int.h: what the codec's files share (codec.c lists them): bounds,
 * the table types, the JSON reader and writer states, and each file's
 * functions the others call (imgw__codec_*). Private to src/core/codec*.c;
 * codec.h is the codec's face.
 *
 * Threads: any, as codec.h says.
 */
#ifndef IMGW_CODEC_INT_H
#define IMGW_CODEC_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <cjson/cJSON.h>
#include <pb.h>

#include "codec.h"

/* A bytes field (content) is never larger than this, whatever the config
 * says; core enforces the smaller max_message_bytes. (imgw.options) */
#define CODEC_MAX_BYTES (1024 * 1024)
/* A SyncResponse never carries more entries (imgw.options, protocol.md 5). */
#define CODEC_SYNC_MAX 500

/* For functions with an im_PushMessage (~11 KiB) local: kept out of line
 * so that stack is only taken while such a message is in use, not by every
 * caller that merely might need one. */
#define CODEC_NOINLINE __attribute__((noinline))

enum { CODEC_C2S = 1, CODEC_S2C = 2 };

/*
 * One JSON-visible field of a nanopb struct. kind says how the bytes at
 * off are interpreted; for static repeated fields count_off/elem locate the
 * pb_size_t count and the element size.
 */
typedef enum codec_jkind_e {
    CODEC_JK_STRING,  /* char[size], NUL-terminated */
    CODEC_JK_INT32,   /* int32_t */
    CODEC_JK_INT64,   /* int64_t */
    CODEC_JK_ENUM,    /* im_ErrorCode (the only enum inside bodies) */
    CODEC_JK_BOOL,    /* bool */
    CODEC_JK_BYTES,   /* pb_callback_t, arg = imgw_slice_t * */
    CODEC_JK_MAP,     /* map<string,string>: repeated ExtraEntry, or the
                         message's repeated submessage (codec_jmsg_t.sub) */
    CODEC_JK_STRINGS, /* repeated string: char[count][elem] */
    CODEC_JK_MSGS     /* pb_callback_t of PushMessages (SyncResponse) */
} codec_jkind_t;

typedef struct codec_jfield_s {
    const char *name;   /* proto field name = JSON key */
    uint32_t kind;      /* codec_jkind_t */
    uint32_t off;       /* offset of the member in the struct */
    uint32_t size;      /* sizeof the member (whole array if repeated) */
    uint32_t count_off; /* static repeated: offset of the pb_size_t count */
    uint32_t elem;      /* static repeated: sizeof one element */
} codec_jfield_t;

typedef struct codec_jmsg_s {
    const pb_msgdesc_t *desc;
    const codec_jfield_t *f;
    uint32_t nf;
    int32_t last; /* field written last in JSON (PushMessage.seq), or -1 */
    uint32_t size;
    /* nanopb lays a map and a static repeated submessage out alike, so
     * the field macros cannot tell them apart: a message whose one
     * repeated message field is not a map names its element table here
     * (UserPresence lists), and that field is read and written as an
     * array of objects. */
    const struct codec_jmsg_s *sub;
} codec_jmsg_t;

typedef struct codec_cmd_s {
    int command;
    int dir; /* CODEC_C2S, CODEC_S2C, or 0 (no body: CMD_UNKNOWN) */
    const codec_jmsg_t *msg;
} codec_cmd_t;

struct codec_jr_s {
    uint8_t *scratch;      /* bytes fields are copied here; NULL: the slice
                              points into the cJSON tree */
    size_t cap;            /* of scratch */
    size_t used;           /* of scratch */
    imgw_slice_t *content; /* the slice a bytes field is decoded into */
    int utf8_content;      /* content must be UTF-8 (business input) */
};

typedef struct codec_jw_s {
    uint8_t *p;  /* next byte to write */
    size_t left; /* bytes left at p */
    int err;     /* first error: IMGW_ETOOBIG or IMGW_EINVAL; 0 = none */
    size_t over; /* bytes that did not fit once err is ETOOBIG, so a
                    writer with no room at all measures the text */
} codec_jw_t;

typedef struct codec_jr_s codec_jr_t;

/* ---- codec.c: tables ---------------------------------------------------- */

/** PushMessage's field table (its "seq" written last). */
extern const codec_jmsg_t imgw__codec_m_push;
/** The command's table row, or NULL. */
const codec_cmd_t *imgw__codec_cmd_find(int command);
/** The row of "CMD_AUTH_REQ", or NULL. */
const codec_cmd_t *imgw__codec_cmd_find_name(const char *name);
/** The proto's name of a row's command. */
const char *imgw__codec_cmd_name(const codec_cmd_t *ci);
/** 0, or IMGW_EUTF8 when a string field of st (an m) is not UTF-8. */
int imgw__codec_strings_valid(const codec_jmsg_t *m, const void *st);

/* ---- codec_pb.c: protobuf ----------------------------------------------- */

/** nanopb encoders the codec installs (codec_dispatch.c tells them apart
 * from a caller's). */
bool imgw__codec_bytes_encode_cb(pb_ostream_t *stream,
                                 const pb_field_t *field, void *const *arg);
bool imgw__codec_entries_encode_cb(pb_ostream_t *stream,
                                   const pb_field_t *field,
                                   void *const *arg);
size_t imgw__codec_varint_len(uint64_t v);
/** Sync entry i as a complete PushMessage; 0 or IMGW_EINVAL. */
int imgw__codec_entry_load(const imgw_codec_entries_t *e, size_t i,
                           im_PushMessage *pm, imgw_slice_t *content);
int imgw__codec_decode_pb(const uint8_t *data, size_t len,
                          imgw_msg_in_t *out);
/* pbfast.c's encoder for a hot body (SendMessageResponse, PushMessage);
 * -1 when nanopb must encode it. */
ssize_t imgw__codec_fast_body(int command, const void *body, uint8_t *out,
                              size_t cap);
ssize_t imgw__codec_pb_run(const pb_msgdesc_t *desc, const void *st,
                           uint8_t *out, size_t cap);
ssize_t imgw__codec_encode_pb(const codec_cmd_t *ci, uint32_t sequence,
                              int64_t timestamp, const void *body,
                              uint8_t *out, size_t cap);
ssize_t imgw__codec_encode_pb_copy(const codec_cmd_t *ci, int envelope,
                                   uint32_t sequence, int64_t timestamp,
                                   const void *body, uint8_t *out,
                                   size_t cap);

/* ---- codec_json.c: JSON ------------------------------------------------- */

/** The nanopb encoder of a SyncResponse read from JSON. */
bool imgw__codec_msgs_json_encode_cb(pb_ostream_t *stream,
                                     const pb_field_t *field,
                                     void *const *arg);
void imgw__codec_jr_init(codec_jr_t *r, imgw_slice_t *content);
int imgw__codec_jr_msg(const cJSON *obj, const codec_jmsg_t *m, void *st,
                       codec_jr_t *r);
void imgw__codec_jw_msg(codec_jw_t *w, const codec_jmsg_t *m,
                        const void *st, int prefix);
ssize_t imgw__codec_encode_json(const codec_cmd_t *ci, uint32_t sequence,
                                int64_t timestamp, const void *body,
                                uint8_t *out, size_t cap);
int imgw__codec_decode_json(const uint8_t *data, size_t len,
                            imgw_msg_in_t *out, uint8_t *scratch,
                            size_t scratch_cap);

#endif
