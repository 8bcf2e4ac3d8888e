/*
 * rec.h: the record format of the "file" backend's journal and snapshot
 * files (docs/store.md, "The file backend"), shared by file.c (journal
 * records) and memory.c (snapshot records of its live state).
 *
 * A record on disk is
 *     u32 len | u32 crc32(type, payload) | u8 type | payload (len - 1 bytes)
 * all integers little-endian. A string is u16 n, n bytes, then a NUL that
 * the reader checks, so decoded strings point into the record buffer and
 * are NUL-terminated without a copy. A byte string is u32 n, n bytes.
 *
 * The writer (imgw__rec_buf_t) grows a heap buffer and remembers the first
 * allocation failure in err instead of failing every put; the reader
 * (imgw__rec_rd_t) remembers the first bound violation. Callers check err
 * once at the end.
 */
#ifndef IMGW_STORE_REC_H
#define IMGW_STORE_REC_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"

#define IMGW__REC_HDR 8 /* len + crc, before the type byte */
/* Largest record either side accepts: one append of a 16 MiB entry to
 * 1000 users, or a snapshot's blob of one, fits well inside. */
#define IMGW__REC_MAX (64u << 20)

/* Snapshot record types (memory.c); journal types are below 0x40. */
enum {
    IMGW__REC_S_META = 0x41,       /* one message's metadata */
    IMGW__REC_S_META_TABLE = 0x42, /* that metadata in the lookup table */
    IMGW__REC_S_BLOB = 0x43,       /* one entry's bytes, shared */
    IMGW__REC_S_DEDUPE = 0x44,
    IMGW__REC_S_GROUP = 0x45,
    IMGW__REC_S_USER = 0x46,    /* starts a user: max_seq, positions */
    IMGW__REC_S_ENTRIES = 0x47, /* timeline slots of the last S_USER */
    IMGW__REC_S_CONV = 0x48,    /* one conversation of the last S_USER */
};

typedef struct imgw__rec_buf_s {
    uint8_t *p;
    size_t len, cap;
    int err; /* first failure (IMGW_ENOMEM / IMGW_ETOOBIG), sticky */
} imgw__rec_buf_t;

typedef struct imgw__rec_rd_s {
    const uint8_t *p;
    size_t n, off;
    int err; /* IMGW_EPROTO after the first read past the end / bad string */
} imgw__rec_rd_t;

uint32_t imgw__crc32(uint32_t crc, const void *p, size_t n);

static inline int
imgw__rec_reserve(imgw__rec_buf_t *b, size_t n)
{
    if (b->err)
        return b->err;
    if (b->len + n <= b->cap)
        return 0;
    size_t ncap = b->cap ? b->cap : 256;
    while (ncap < b->len + n)
        ncap *= 2;
    uint8_t *q = imgw_try_realloc(b->p, ncap);
    if (q == NULL)
        return b->err = IMGW_ENOMEM;
    b->p = q;
    b->cap = ncap;
    return 0;
}

static inline void
imgw__rec_put(imgw__rec_buf_t *b, const void *src, size_t n)
{
    if (n == 0 || imgw__rec_reserve(b, n) != 0)
        return;
    memcpy(b->p + b->len, src, n);
    b->len += n;
}

static inline void
imgw__rec_put_u8(imgw__rec_buf_t *b, uint8_t v)
{
    imgw__rec_put(b, &v, 1);
}

static inline void
imgw__rec_put_u16(imgw__rec_buf_t *b, uint16_t v)
{
    uint8_t x[2] = {(uint8_t)v, (uint8_t)(v >> 8)};
    imgw__rec_put(b, x, 2);
}

static inline void
imgw__rec_put_u32(imgw__rec_buf_t *b, uint32_t v)
{
    uint8_t x[4];
    for (int i = 0; i < 4; i++)
        x[i] = (uint8_t)(v >> (8 * i));
    imgw__rec_put(b, x, 4);
}

static inline void
imgw__rec_put_u64(imgw__rec_buf_t *b, uint64_t v)
{
    uint8_t x[8];
    for (int i = 0; i < 8; i++)
        x[i] = (uint8_t)(v >> (8 * i));
    imgw__rec_put(b, x, 8);
}

/* s NULL is written as "". store.c bounded every string to < 64 KiB. */
static inline void
imgw__rec_put_str(imgw__rec_buf_t *b, const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n > UINT16_MAX) {
        if (!b->err)
            b->err = IMGW_ETOOBIG;
        return;
    }
    imgw__rec_put_u16(b, (uint16_t)n);
    imgw__rec_put(b, s, n);
    imgw__rec_put_u8(b, 0);
}

static inline void
imgw__rec_put_bytes(imgw__rec_buf_t *b, const void *p, size_t n)
{
    imgw__rec_put_u32(b, (uint32_t)n);
    imgw__rec_put(b, p, n);
}

/* Starts a record; returns its offset for imgw__rec_end. */
static inline size_t
imgw__rec_begin(imgw__rec_buf_t *b, uint8_t type)
{
    size_t at = b->len;
    uint8_t hdr[IMGW__REC_HDR] = {0};
    imgw__rec_put(b, hdr, sizeof(hdr));
    imgw__rec_put_u8(b, type);
    return at;
}

/* Fills in the length and CRC of the record started at at. */
static inline void
imgw__rec_end(imgw__rec_buf_t *b, size_t at)
{
    if (b->err)
        return;
    size_t len = b->len - at - IMGW__REC_HDR;
    if (len > IMGW__REC_MAX) {
        b->err = IMGW_ETOOBIG;
        return;
    }
    uint32_t crc = imgw__crc32(0, b->p + at + IMGW__REC_HDR, len);
    for (int i = 0; i < 4; i++) {
        b->p[at + i] = (uint8_t)(len >> (8 * i));
        b->p[at + 4 + i] = (uint8_t)(crc >> (8 * i));
    }
}

static inline uint32_t
imgw__rec_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

static inline const uint8_t *
imgw__rec_take(imgw__rec_rd_t *r, size_t n)
{
    if (r->err || n > r->n - r->off) {
        r->err = IMGW_EPROTO;
        return NULL;
    }
    const uint8_t *p = r->p + r->off;
    r->off += n;
    return p;
}

static inline uint8_t
imgw__rec_get_u8(imgw__rec_rd_t *r)
{
    const uint8_t *p = imgw__rec_take(r, 1);
    return p ? p[0] : 0;
}

static inline uint16_t
imgw__rec_get_u16(imgw__rec_rd_t *r)
{
    const uint8_t *p = imgw__rec_take(r, 2);
    return p ? (uint16_t)(p[0] | p[1] << 8) : 0;
}

static inline uint32_t
imgw__rec_get_u32(imgw__rec_rd_t *r)
{
    const uint8_t *p = imgw__rec_take(r, 4);
    return p ? imgw__rec_le32(p) : 0;
}

static inline uint64_t
imgw__rec_get_u64(imgw__rec_rd_t *r)
{
    const uint8_t *p = imgw__rec_take(r, 8);
    uint64_t v = 0;
    for (int i = 0; p && i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* A NUL-terminated string inside the record, or "" after an error. */
static inline const char *
imgw__rec_get_str(imgw__rec_rd_t *r)
{
    uint16_t n = imgw__rec_get_u16(r);
    const uint8_t *p = imgw__rec_take(r, (size_t)n + 1);
    if (p == NULL || p[n] != 0 || memchr(p, 0, n) != NULL) {
        r->err = IMGW_EPROTO;
        return "";
    }
    return (const char *)p;
}

static inline const uint8_t *
imgw__rec_get_bytes(imgw__rec_rd_t *r, size_t *n)
{
    uint32_t len = imgw__rec_get_u32(r);
    const uint8_t *p = imgw__rec_take(r, len);
    *n = p ? len : 0;
    return p;
}

#endif
