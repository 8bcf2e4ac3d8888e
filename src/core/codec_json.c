/*
 * codec_json.c: the JSON codec (see codec.h, codec.c for the file map).
 * Input is parsed with cJSON (after a cheap nesting-depth scan) and mapped
 * onto the same nanopb structs as protobuf through codec.c's field tables.
 * Output is written by a small bounds-checked writer, not cJSON_Print, so
 * encoding never allocates. Also the nanopb callback that encodes a
 * SyncResponse read from JSON (downlinks), and the fan-out JSON prefix.
 *
 * Threads: any. Every function works on caller memory; there is no global
 * mutable state.
 *
 * Stack: decoding a stored PushMessage needs an im_PushMessage (~11 KiB) on
 * the stack (sync entries, JSON push prefix, downlink JSON); everything
 * else is small.
 */
#include "codec_int.h"

#include <stdbool.h>
#include <string.h>

#include <pb_encode.h>

#include "json.h"
#include "utf8.h"
#include "err.h"

/* =======================================================================
 * JSON reader: cJSON tree -> nanopb struct (same field tables)
 * ======================================================================= */

void
imgw__codec_jr_init(codec_jr_t *r, imgw_slice_t *content)
{
    r->scratch = NULL;
    r->cap = 0;
    r->used = 0;
    r->content = content;
    r->utf8_content = 1;
    content->ptr = NULL;
    content->len = 0;
}

/*
 * An integral JSON number within [lo, hi]. cJSON keeps numbers as doubles,
 * which hold integers exactly up to 2^53; protocol values (seqs, millis)
 * are far below, and bigger int64s can be sent as strings.
 */
int
imgw_codec_json_int(const void *item, int64_t lo, int64_t hi, int64_t *out)
{
    const cJSON *v = item;
    double d;
    int64_t i;

    if (!cJSON_IsNumber(v))
        return -1;
    d = v->valuedouble;
    if (!(d >= -0x1p63 && d < 0x1p63)) /* also false for NaN */
        return -1;
    i = (int64_t)d;
    if ((double)i != d || i < lo || i > hi)
        return -1;
    *out = i;
    return 0;
}

static int
codec_jr_num(const cJSON *v, int64_t lo, int64_t hi, int64_t *out)
{
    return imgw_codec_json_int(v, lo, hi, out);
}

/* "-?[0-9]+" within int64, nothing else (no spaces, signs, exponents). */
static int
codec_jr_i64_str(const char *s, int64_t *out)
{
    uint64_t v = 0, lim = (uint64_t)INT64_MAX;
    int neg = 0;

    if (*s == '-') {
        neg = 1;
        lim++;
        s++;
    }
    if (*s == '\0')
        return -1;
    for (; *s; s++) {
        unsigned d = (unsigned)(*s - '0');

        if (d > 9 || v > (lim - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    if (!neg)
        *out = (int64_t)v;
    else
        *out = v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v;
    return 0;
}

/* int64: a JSON number or a numeric string (protocol.md section 10). */
static int
codec_jr_i64(const cJSON *v, int64_t *out)
{
    if (cJSON_IsString(v))
        return codec_jr_i64_str(v->valuestring, out);
    return codec_jr_num(v, INT64_MIN, INT64_MAX, out);
}

static int
codec_jr_enum(const cJSON *v, int64_t *out)
{
    size_t i, n;

    if (cJSON_IsString(v)) {
        n = imgw_codec_err_count();
        for (i = 0; i < n; i++) {
            int code = imgw_codec_err_value(i);

            if (strcmp(im_ErrorCode_name((im_ErrorCode)code), v->valuestring) ==
                0) {
                *out = code;
                return 0;
            }
        }
        return -1;
    }
    /* proto3 enums are open: any non-negative int32 number is kept. */
    return codec_jr_num(v, 0, INT32_MAX, out);
}

/* A string that fits char[size] with its NUL. */
static int
codec_jr_cstr(const cJSON *v, char *dst, size_t size)
{
    size_t n;

    if (!cJSON_IsString(v))
        return -1;
    n = strlen(v->valuestring);
    if (n >= size)
        return -1;
    memcpy(dst, v->valuestring, n + 1);
    return 0;
}

static int
codec_jr_bytes(const cJSON *v, pb_callback_t *cb, codec_jr_t *r)
{
    size_t n;

    if (!cJSON_IsString(v))
        return -1;
    n = strlen(v->valuestring);
    if (n > CODEC_MAX_BYTES)
        return -1;
    /* Business input (/api/push, the broker): content is a JSON string,
     * which must be UTF-8 (RFC 8259); one that is not is refused like any
     * malformed downlink (issue 12 item 5) instead of reaching JSON
     * clients with U+FFFD in place of what the business sent. cJSON does
     * not check. Protobuf clients' bytes never pass through here. */
    if (r->utf8_content &&
        !imgw_utf8_valid((const uint8_t *)v->valuestring, n))
        return IMGW_EUTF8;
    if (r->scratch) {
        /* The decoded string is never longer than its JSON text, so a
         * scratch of len bytes always fits; check anyway. */
        if (n > r->cap - r->used)
            return -1;
        if (n)
            memcpy(r->scratch + r->used, v->valuestring, n);
        r->content->ptr = r->scratch + r->used;
        r->used += n;
    } else {
        r->content->ptr = (const uint8_t *)v->valuestring;
    }
    r->content->len = n;
    imgw_codec_set_bytes(cb, r->content);
    return 0;
}

static int
codec_jr_map(const cJSON *v, const codec_jfield_t *f, uint8_t *st)
{
    im_PushMessage_ExtraEntry *e;
    const cJSON *c;
    pb_size_t n = 0;

    if (!cJSON_IsObject(v))
        return -1;
    for (c = v->child; c; c = c->next) {
        if (n >= f->size / f->elem || c->string == NULL)
            return -1;
        e = (im_PushMessage_ExtraEntry *)(st + f->off + (size_t)n * f->elem);
        if (strlen(c->string) >= sizeof(e->key))
            return -1;
        memcpy(e->key, c->string, strlen(c->string) + 1);
        if (codec_jr_cstr(c, e->value, sizeof(e->value)) != 0)
            return -1;
        n++;
    }
    *(pb_size_t *)(st + f->count_off) = n;
    return 0;
}

/* A repeated submessage (codec_jmsg_t.sub): an array of objects. */
static int
codec_jr_subs(const cJSON *v, const codec_jfield_t *f, uint8_t *st,
              const codec_jmsg_t *sub, codec_jr_t *r)
{
    const cJSON *c;
    pb_size_t n = 0;

    if (!cJSON_IsArray(v))
        return -1;
    for (c = v->child; c; c = c->next) {
        if (n >= f->size / f->elem || !cJSON_IsObject(c) ||
            imgw__codec_jr_msg(c, sub, st + f->off + (size_t)n * f->elem,
                               r) != 0)
            return -1;
        n++;
    }
    *(pb_size_t *)(st + f->count_off) = n;
    return 0;
}

static int
codec_jr_strings(const cJSON *v, const codec_jfield_t *f, uint8_t *st)
{
    const cJSON *c;
    pb_size_t n = 0;

    if (!cJSON_IsArray(v))
        return -1;
    for (c = v->child; c; c = c->next) {
        if (n >= f->size / f->elem ||
            codec_jr_cstr(c, (char *)(st + f->off + (size_t)n * f->elem),
                          f->elem) != 0)
            return -1;
        n++;
    }
    *(pb_size_t *)(st + f->count_off) = n;
    return 0;
}

/*
 * SyncResponse.messages from JSON: validated here, element by element, and
 * read again when encoded (imgw__codec_msgs_json_encode_cb, codec_jw_msgs), so
 * no storage for 500 decoded messages is needed.
 */
static CODEC_NOINLINE int
codec_jr_msgs(const cJSON *v, pb_callback_t *cb)
{
    im_PushMessage pm;
    imgw_slice_t content;
    codec_jr_t r;
    const cJSON *c;
    size_t n = 0;
    int rc;

    if (!cJSON_IsArray(v))
        return -1;
    for (c = v->child; c; c = c->next) {
        imgw__codec_jr_init(&r, &content);
        if (++n > CODEC_SYNC_MAX || !cJSON_IsObject(c))
            return -1;
        rc = imgw__codec_jr_msg(c, &imgw__codec_m_push, &pm, &r);
        if (rc != 0)
            return rc;
    }
    cb->funcs.encode = imgw__codec_msgs_json_encode_cb;
    cb->arg = (void *)(uintptr_t)v; /* read-only; pb_callback_t has no const */
    return 0;
}

static int
codec_jr_field(const cJSON *v, const codec_jfield_t *f, uint8_t *st,
               const codec_jmsg_t *sub, codec_jr_t *r)
{
    uint8_t *p = st + f->off;
    int64_t i;

    /* proto3 JSON: null means "default", and the struct starts zeroed. */
    if (cJSON_IsNull(v))
        return 0;
    switch ((codec_jkind_t)f->kind) {
    case CODEC_JK_STRING:
        return codec_jr_cstr(v, (char *)p, f->size);
    case CODEC_JK_INT32:
        if (codec_jr_num(v, INT32_MIN, INT32_MAX, &i) != 0)
            return -1;
        *(int32_t *)p = (int32_t)i;
        return 0;
    case CODEC_JK_INT64:
        return codec_jr_i64(v, (int64_t *)p);
    case CODEC_JK_ENUM:
        if (codec_jr_enum(v, &i) != 0)
            return -1;
        *(im_ErrorCode *)p = (im_ErrorCode)i;
        return 0;
    case CODEC_JK_BOOL:
        if (!cJSON_IsBool(v))
            return -1;
        *(bool *)p = cJSON_IsTrue(v) ? true : false;
        return 0;
    case CODEC_JK_BYTES:
        return codec_jr_bytes(v, (pb_callback_t *)p, r);
    case CODEC_JK_MAP:
        if (sub)
            return codec_jr_subs(v, f, st, sub, r);
        return codec_jr_map(v, f, st);
    case CODEC_JK_STRINGS:
        return codec_jr_strings(v, f, st);
    case CODEC_JK_MSGS:
        return codec_jr_msgs(v, (pb_callback_t *)p);
    }
    return -1;
}

/*
 * Fills st (zeroed first) from a JSON object: keys are proto field names,
 * unknown keys are ignored, NULL or null is an all-default body. Returns 0,
 * IMGW_EDECODE, or IMGW_EUTF8 for a string field that is not UTF-8 (cJSON
 * does not check raw bytes, and /api/push and broker input never went
 * through a WebSocket text frame check).
 */
int
imgw__codec_jr_msg(const cJSON *obj, const codec_jmsg_t *m, void *st,
             codec_jr_t *r)
{
    const cJSON *c;
    uint32_t k;
    int rc;

    memset(st, 0, m->size);
    if (obj == NULL || cJSON_IsNull(obj))
        return 0;
    if (!cJSON_IsObject(obj))
        return IMGW_EDECODE;
    for (c = obj->child; c; c = c->next) {
        if (c->string == NULL)
            continue;
        for (k = 0; k < m->nf; k++) {
            if (strcmp(m->f[k].name, c->string) == 0)
                break;
        }
        if (k < m->nf && (rc = codec_jr_field(c, &m->f[k], st, m->sub, r)) != 0)
            return rc == IMGW_EUTF8 ? IMGW_EUTF8 : IMGW_EDECODE;
    }
    return imgw__codec_strings_valid(m, st);
}

static CODEC_NOINLINE bool
codec_msg_json_encode_one(pb_ostream_t *stream, const pb_field_t *field,
                          const cJSON *c)
{
    im_PushMessage pm;
    imgw_slice_t content;
    codec_jr_t r;

    imgw__codec_jr_init(&r, &content);
    if (imgw__codec_jr_msg(c, &imgw__codec_m_push, &pm, &r) != 0)
        return false;
    return pb_encode_tag_for_field(stream, field) &&
           pb_encode_submessage(stream, &im_PushMessage_msg, &pm);
}

bool
imgw__codec_msgs_json_encode_cb(pb_ostream_t *stream, const pb_field_t *field,
                          void *const *arg)
{
    const cJSON *c;

    for (c = *arg ? ((const cJSON *)*arg)->child : NULL; c; c = c->next) {
        if (!codec_msg_json_encode_one(stream, field, c))
            return false;
    }
    return true;
}

/* =======================================================================
 * JSON writer: bounds-checked, never allocates
 * ======================================================================= */

static void
codec_jw_fail(codec_jw_t *w, int err)
{
    if (w->err == 0)
        w->err = err;
    w->left = 0;
}

static inline void
codec_jw_put(codec_jw_t *w, const void *s, size_t n)
{
    if (n > w->left) {
        codec_jw_fail(w, IMGW_ETOOBIG);
        w->over += n;
        return;
    }
    if (n) {
        memcpy(w->p, s, n);
        w->p += n;
        w->left -= n;
    }
}

#define codec_jw_lit(w, s) codec_jw_put((w), (s), sizeof(s) - 1)

static inline void
codec_jw_ch(codec_jw_t *w, uint8_t c)
{
    if (w->left == 0) {
        codec_jw_fail(w, IMGW_ETOOBIG);
        w->over++;
        return;
    }
    *w->p++ = c;
    w->left--;
}

static void
codec_jw_u64(codec_jw_t *w, uint64_t v, int neg)
{
    uint8_t buf[21];
    size_t i = sizeof(buf);

    do {
        buf[--i] = (uint8_t)('0' + v % 10);
        v /= 10;
    } while (v);
    if (neg)
        buf[--i] = '-';
    codec_jw_put(w, buf + i, sizeof(buf) - i);
}

static void
codec_jw_i64(codec_jw_t *w, int64_t v)
{
    if (v < 0)
        codec_jw_u64(w, 0 - (uint64_t)v, 1);
    else
        codec_jw_u64(w, (uint64_t)v, 0);
}

/*
 * A JSON string literal of n bytes, escaped by base's one escaper
 * (json.h: quote, backslash and control characters escaped, bytes that
 * start no valid UTF-8 sequence replaced by U+FFFD), so the frame is valid
 * JSON and a valid WebSocket text frame whatever bytes were stored.
 */
static void
codec_jw_str(codec_jw_t *w, const uint8_t *s, size_t n)
{
    codec_jw_ch(w, '"');
    size_t need = imgw_json_escape(w->p, w->left, s, n);
    if (need > w->left) {
        codec_jw_fail(w, IMGW_ETOOBIG);
        w->over += need;
    } else if (need > 0) { /* a measuring writer's p is NULL */
        w->p += need;
        w->left -= need;
    }
    codec_jw_ch(w, '"');
}

/* A NUL-terminated char[size] member. */
static void
codec_jw_cstr(codec_jw_t *w, const char *s, size_t size)
{
    codec_jw_str(w, (const uint8_t *)s, strnlen(s, size));
}

static void
codec_jw_key(codec_jw_t *w, const char *name)
{
    codec_jw_ch(w, '"');
    codec_jw_put(w, name, strlen(name));
    codec_jw_lit(w, "\":");
}

/* One SyncResponse entry read back from a validated JSON array element. */
static CODEC_NOINLINE void
codec_jw_json_entry(codec_jw_t *w, const cJSON *c)
{
    im_PushMessage pm;
    imgw_slice_t content;
    codec_jr_t r;

    imgw__codec_jr_init(&r, &content);
    if (imgw__codec_jr_msg(c, &imgw__codec_m_push, &pm, &r) != 0) {
        codec_jw_fail(w, IMGW_EINVAL);
        return;
    }
    imgw__codec_jw_msg(w, &imgw__codec_m_push, &pm, 0);
}

static CODEC_NOINLINE void
codec_jw_stored_entry(codec_jw_t *w, const imgw_codec_entries_t *e, size_t i)
{
    im_PushMessage pm;
    imgw_slice_t content;

    if (imgw__codec_entry_load(e, i, &pm, &content) != 0) {
        codec_jw_fail(w, IMGW_EINVAL);
        return;
    }
    imgw__codec_jw_msg(w, &imgw__codec_m_push, &pm, 0);
}

/* SyncResponse.messages: every entry as a complete PushMessage object. */
static void
codec_jw_msgs(codec_jw_t *w, const pb_callback_t *cb)
{
    size_t i;

    codec_jw_ch(w, '[');
    if (cb->funcs.encode == imgw__codec_msgs_json_encode_cb) {
        const cJSON *c = cb->arg ? ((const cJSON *)cb->arg)->child : NULL;

        for (i = 0; c; c = c->next, i++) {
            if (i)
                codec_jw_ch(w, ',');
            codec_jw_json_entry(w, c);
        }
    } else if (cb->arg) {
        const imgw_codec_entries_t *e = cb->arg;

        if (e->n > CODEC_SYNC_MAX || (e->n && (!e->blob || !e->seq))) {
            codec_jw_fail(w, IMGW_EINVAL);
            return;
        }
        for (i = 0; i < e->n && !w->err; i++) {
            if (i)
                codec_jw_ch(w, ',');
            codec_jw_stored_entry(w, e, i);
        }
    }
    codec_jw_ch(w, ']');
}

static const char *
codec_err_name(int code)
{
    return imgw_codec_err_name(code);
}

static void
codec_jw_field(codec_jw_t *w, const codec_jfield_t *f, const uint8_t *st,
               const codec_jmsg_t *sub)
{
    const uint8_t *p = st + f->off;
    const char *name;
    pb_size_t i, n;

    codec_jw_key(w, f->name);
    switch ((codec_jkind_t)f->kind) {
    case CODEC_JK_STRING:
        codec_jw_cstr(w, (const char *)p, f->size);
        break;
    case CODEC_JK_INT32:
        codec_jw_i64(w, *(const int32_t *)p);
        break;
    case CODEC_JK_INT64:
        codec_jw_i64(w, *(const int64_t *)p);
        break;
    case CODEC_JK_ENUM:
        /* By name; a value this build does not know goes out as a number
         * (proto3 JSON mapping). */
        name = codec_err_name((int)*(const im_ErrorCode *)p);
        if (name) {
            codec_jw_ch(w, '"');
            codec_jw_put(w, name, strlen(name));
            codec_jw_ch(w, '"');
        } else {
            codec_jw_i64(w, (int64_t)*(const im_ErrorCode *)p);
        }
        break;
    case CODEC_JK_BOOL:
        if (*(const bool *)p)
            codec_jw_lit(w, "true");
        else
            codec_jw_lit(w, "false");
        break;
    case CODEC_JK_BYTES: {
        const imgw_slice_t *s = ((const pb_callback_t *)p)->arg;

        codec_jw_str(w, s ? s->ptr : NULL, s ? s->len : 0);
        break;
    }
    case CODEC_JK_MAP: {
        const im_PushMessage_ExtraEntry *e =
            (const im_PushMessage_ExtraEntry *)p;

        n = *(const pb_size_t *)(st + f->count_off);
        if (sub) {
            codec_jw_ch(w, '[');
            for (i = 0; i < n && i < f->size / f->elem; i++) {
                if (i)
                    codec_jw_ch(w, ',');
                imgw__codec_jw_msg(w, sub, p + (size_t)i * f->elem, 0);
            }
            codec_jw_ch(w, ']');
            break;
        }
        codec_jw_ch(w, '{');
        for (i = 0; i < n && i < f->size / f->elem; i++) {
            if (i)
                codec_jw_ch(w, ',');
            codec_jw_cstr(w, e[i].key, sizeof(e[i].key));
            codec_jw_ch(w, ':');
            codec_jw_cstr(w, e[i].value, sizeof(e[i].value));
        }
        codec_jw_ch(w, '}');
        break;
    }
    case CODEC_JK_STRINGS:
        n = *(const pb_size_t *)(st + f->count_off);
        codec_jw_ch(w, '[');
        for (i = 0; i < n && i < f->size / f->elem; i++) {
            if (i)
                codec_jw_ch(w, ',');
            codec_jw_cstr(w, (const char *)(p + (size_t)i * f->elem),
                          f->elem);
        }
        codec_jw_ch(w, ']');
        break;
    case CODEC_JK_MSGS:
        codec_jw_msgs(w, (const pb_callback_t *)p);
        break;
    }
}

/*
 * A body object with every field, defaults included (clients like seeing
 * "error_code":"ERR_SUCCESS" and "seq":0). m->last goes last; with prefix
 * the object stops right after that field's key (fan-out prefix).
 */
void
imgw__codec_jw_msg(codec_jw_t *w, const codec_jmsg_t *m, const void *st,
             int prefix)
{
    uint32_t k, n = 0;

    codec_jw_ch(w, '{');
    for (k = 0; k < m->nf; k++) {
        if ((int32_t)k == m->last)
            continue;
        if (n++)
            codec_jw_ch(w, ',');
        codec_jw_field(w, &m->f[k], st, m->sub);
    }
    if (m->last >= 0) {
        if (n++)
            codec_jw_ch(w, ',');
        if (prefix) {
            codec_jw_key(w, m->f[m->last].name);
            return;
        }
        codec_jw_field(w, &m->f[m->last], st, m->sub);
    }
    codec_jw_ch(w, '}');
}

/* {"command":"NAME","sequence":S,"timestamp":T,"body": */
static void
codec_jw_head(codec_jw_t *w, const codec_cmd_t *ci, uint32_t sequence,
              int64_t timestamp)
{
    codec_jw_lit(w, "{\"command\":\"");
    codec_jw_put(w, imgw__codec_cmd_name(ci), strlen(imgw__codec_cmd_name(ci)));
    codec_jw_lit(w, "\",\"sequence\":");
    codec_jw_u64(w, sequence, 0);
    codec_jw_lit(w, ",\"timestamp\":");
    codec_jw_i64(w, timestamp);
    codec_jw_lit(w, ",\"body\":");
}

ssize_t
imgw__codec_encode_json(const codec_cmd_t *ci, uint32_t sequence,
                  int64_t timestamp, const void *body, uint8_t *out,
                  size_t cap)
{
    codec_jw_t w = {out, out ? cap : 0, 0, 0};

    codec_jw_head(&w, ci, sequence, timestamp);
    imgw__codec_jw_msg(&w, ci->msg, body, 0);
    codec_jw_ch(&w, '}');
    return w.err ? w.err : (ssize_t)(w.p - out);
}

ssize_t
imgw_codec_encode_json_body(int command, const void *body, uint8_t *out,
                            size_t cap)
{
    const codec_cmd_t *ci = imgw__codec_cmd_find(command);

    if (ci == NULL || ci->dir != CODEC_S2C || body == NULL)
        return IMGW_EINVAL;
    codec_jw_t w = {out, out ? cap : 0, 0, 0};
    imgw__codec_jw_msg(&w, ci->msg, body, 0);
    return w.err ? w.err : (ssize_t)(w.p - out);
}

/* =======================================================================
 * JSON decode
 * ======================================================================= */

/*
 * Refuses nesting deeper than IMGW_JSON_MAX_DEPTH before cJSON (which
 * recurses per level) sees the text, and U+0000 in any form: a \u0000
 * escape or a raw NUL byte (valid UTF-8, so a text frame may carry it).
 * cJSON hands strings out NUL-terminated, so either would silently cut the
 * field, content included, where the docs promise ERR_INVALID_PARAM.
 * Brackets inside strings do not count; a backslash skips the next byte so
 * \" does not end a string.
 */
static int
codec_json_depth_ok(const uint8_t *p, size_t n)
{
    size_t i;
    int depth = 0;

    if (n && memchr(p, 0, n) != NULL)
        return 0;
    for (i = 0; i < n; i++) {
        switch (p[i]) {
        case '"':
            for (i++; i < n && p[i] != '"'; i++) {
                if (p[i] != '\\')
                    continue;
                /* cJSON ends a string at \u0000: refuse it rather than
                 * silently truncate (strings here are NUL-terminated). */
                if (i + 5 < n && p[i + 1] == 'u' &&
                    memcmp(p + i + 2, "0000", 4) == 0)
                    return 0;
                i++;
            }
            break;
        case '{':
        case '[':
            if (++depth > IMGW_JSON_MAX_DEPTH)
                return 0;
            break;
        case '}':
        case ']':
            depth--;
            break;
        default:
            break;
        }
    }
    return 1;
}

static int
codec_decode_json_tree(const cJSON *root, imgw_msg_in_t *out,
                       uint8_t *scratch, size_t scratch_cap)
{
    const codec_cmd_t *ci = NULL;
    const cJSON *v;
    codec_jr_t r;
    int64_t i;
    int rc;

    if (!cJSON_IsObject(root))
        return IMGW_EENVELOPE;
    v = cJSON_GetObjectItemCaseSensitive(root, "sequence");
    if (v != NULL && !cJSON_IsNull(v)) {
        if (codec_jr_num(v, 0, UINT32_MAX, &i) != 0)
            return IMGW_EENVELOPE;
        out->sequence = (uint32_t)i;
    }

    /* From here on the sequence is known, so errors can echo it. */
    v = cJSON_GetObjectItemCaseSensitive(root, "command");
    if (cJSON_IsString(v)) {
        ci = imgw__codec_cmd_find_name(v->valuestring);
    } else if (codec_jr_num(v, INT32_MIN, INT32_MAX, &i) == 0) {
        out->command = (int)i;
        ci = imgw__codec_cmd_find((int)i);
    }
    if (ci == NULL || ci->dir != CODEC_C2S)
        return IMGW_EUNKNOWNCMD;
    out->command = ci->command;

    v = cJSON_GetObjectItemCaseSensitive(root, "timestamp");
    if (v != NULL && !cJSON_IsNull(v) &&
        codec_jr_i64(v, &out->timestamp) != 0)
        return IMGW_EDECODE;

    imgw__codec_jr_init(&r, &out->content);
    r.scratch = scratch;
    /* A client's JSON frame arrived as a WebSocket text frame, which the
     * ws layer has checked already; keep its content as it came. */
    r.utf8_content = 0;
    r.cap = scratch ? scratch_cap : 0;
    rc = imgw__codec_jr_msg(cJSON_GetObjectItemCaseSensitive(root, "body"),
                            ci->msg, &out->u, &r);
    if (rc != 0)
        return rc;
    if (out->command == im_CommandType_CMD_SEND_MSG_REQ)
        imgw_codec_set_bytes(&out->u.send.content, &out->content);
    return 0;
}

int
imgw_codec_json_prescan(const uint8_t *p, size_t n)
{
    return codec_json_depth_ok(p, n);
}

int
imgw__codec_decode_json(const uint8_t *data, size_t len, imgw_msg_in_t *out,
                  uint8_t *scratch, size_t scratch_cap)
{
    const char *end = NULL;
    cJSON *root;
    int rc;

    if (len == 0 || !codec_json_depth_ok(data, len))
        return IMGW_EENVELOPE;
    root = cJSON_ParseWithLengthOpts((const char *)data, len, &end, 0);
    if (root == NULL)
        return IMGW_EENVELOPE;
    /* One frame is one value: only whitespace may follow it. */
    for (; end && end < (const char *)data + len; end++) {
        if (*end != ' ' && *end != '\t' && *end != '\n' && *end != '\r') {
            cJSON_Delete(root);
            return IMGW_EENVELOPE;
        }
    }
    rc = codec_decode_json_tree(root, out, scratch, scratch_cap);
    cJSON_Delete(root);
    return rc;
}

ssize_t
imgw_codec_push_json_prefix(const uint8_t *blob, size_t blob_len,
                            int64_t timestamp, uint8_t *out, size_t cap)
{
    const codec_cmd_t *ci = imgw__codec_cmd_find(im_CommandType_CMD_PUSH_MSG);
    codec_jw_t w = {out, out ? cap : 0, 0, 0};
    im_PushMessage pm;
    imgw_slice_t content;

    if (imgw_codec_decode_push(blob, blob_len, &pm, &content) != 0)
        return IMGW_EDECODE;
    codec_jw_head(&w, ci, 0, timestamp);
    imgw__codec_jw_msg(&w, &imgw__codec_m_push, &pm, 1);
    return w.err ? w.err : (ssize_t)(w.p - out);
}
