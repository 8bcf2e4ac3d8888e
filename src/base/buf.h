/*
 * buf.h: imgw's one growable byte buffer / string builder.
 *
 * Appends never fail loudly: the first failure (out of memory, or growing
 * past max) sticks in err and makes every later append a no-op, so a
 * builder checks once at the end. While p != NULL the bytes are followed
 * by a NUL (len < cap), so a text buffer is a C string.
 *
 * Memory comes from imgw_try_realloc (base/alloc.h): injected failures
 * reach it. Zero-initialise (imgw_buf_t b = {0}; set max if a peer
 * controls the size) and release with imgw_buf_free.
 *
 * Thread: a buffer belongs to one thread at a time.
 */
#ifndef IMGW_BUF_H
#define IMGW_BUF_H

#include <stddef.h>

typedef struct imgw_buf_s {
    char *p;    /* NULL until the first reserve; owned */
    size_t len; /* bytes held, without the NUL; len < cap once p != NULL */
    size_t cap; /* bytes allocated */
    size_t max; /* bound on len, 0 for none */
    int err;    /* 0, IMGW_ENOMEM or IMGW_ETOOBIG; sticky */
} imgw_buf_t;

/** Room for n more bytes (and the NUL). Returns 0 or the sticky err. */
int imgw_buf_reserve(imgw_buf_t *b, size_t n);
void imgw_buf_add(imgw_buf_t *b, const void *s, size_t n);
void imgw_buf_str(imgw_buf_t *b, const char *s);
void imgw_buf_fmt(imgw_buf_t *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/** Frees p and resets the buffer (max is kept). */
void imgw_buf_free(imgw_buf_t *b);

#endif
