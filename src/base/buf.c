/* buf.c: see buf.h. */
#include "buf.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "alloc.h"
#include "err.h"

int
imgw_buf_reserve(imgw_buf_t *b, size_t n)
{
    if (b->err)
        return b->err;
    if (n > SIZE_MAX / 2 - b->len ||
        (b->max != 0 && b->len + n > b->max))
        return b->err = IMGW_ETOOBIG;
    size_t need = b->len + n + 1;
    if (b->p != NULL && need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap *= 2;
    char *p = imgw_try_realloc(b->p, cap);
    if (p == NULL)
        return b->err = IMGW_ENOMEM;
    if (b->p == NULL)
        p[0] = '\0';
    b->p = p;
    b->cap = cap;
    return 0;
}

void
imgw_buf_add(imgw_buf_t *b, const void *s, size_t n)
{
    if (imgw_buf_reserve(b, n) != 0)
        return;
    if (n > 0)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void
imgw_buf_str(imgw_buf_t *b, const char *s)
{
    imgw_buf_add(b, s, strlen(s));
}

void
imgw_buf_fmt(imgw_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    for (int pass = 0; pass < 2; pass++) {
        if (imgw_buf_reserve(b, 0) != 0)
            return;
        size_t room = b->cap - b->len;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, room, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->p[b->len] = '\0';
            b->err = IMGW_EINVAL;
            return;
        }
        if ((size_t)n < room) {
            if (b->max != 0 && b->len + (size_t)n > b->max) {
                b->p[b->len] = '\0';
                b->err = IMGW_ETOOBIG;
                return;
            }
            b->len += (size_t)n;
            return;
        }
        b->p[b->len] = '\0';
        if (imgw_buf_reserve(b, (size_t)n) != 0)
            return;
    }
}

void
imgw_buf_free(imgw_buf_t *b)
{
    imgw_free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
    b->err = 0;
}
