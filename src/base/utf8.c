/*
 * utf8.c: strict UTF-8 validation (RFC 3629 section 4, the table of
 * well-formed byte sequences). See utf8.h.
 */
#include "utf8.h"

#include <string.h>

size_t
imgw_utf8_seq_len(const uint8_t *p, size_t n)
{
    uint8_t c = p[0], lo = 0x80, hi = 0xbf;
    size_t len, i;

    /* The lead byte fixes the length; E0, ED, F0 and F4 narrow the range
     * of the second byte, which is what excludes overlongs, surrogates
     * and code points above U+10FFFF. */
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        if (c == 0xe0)
            lo = 0xa0;
        else if (c == 0xed)
            hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        if (c == 0xf0)
            lo = 0x90;
        else if (c == 0xf4)
            hi = 0x8f;
    } else {
        return 0;
    }
    if (n < len || p[1] < lo || p[1] > hi)
        return 0;
    for (i = 2; i < len; i++) {
        if (p[i] < 0x80 || p[i] > 0xbf)
            return 0;
    }
    return len;
}

int
imgw_utf8_valid_cstr(const char *s, size_t cap)
{
    const uint8_t *p = (const uint8_t *)s;

    for (size_t i = 0; i < cap; i++) {
        if (p[i] == 0)
            return 1;
        if (p[i] >= 0x80)
            return imgw_utf8_valid(p + i, strnlen(s + i, cap - i));
    }
    return 1;
}

int
imgw_utf8_valid(const uint8_t *p, size_t n)
{
    size_t i = 0, k;

    while (i < n) {
        /* ASCII runs dominate (ids, tokens, most text): 8 bytes a step. */
        while (n - i >= 8) {
            uint64_t w;

            memcpy(&w, p + i, 8);
            if (w & 0x8080808080808080ull)
                break;
            i += 8;
        }
        if (i >= n)
            break;
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        k = imgw_utf8_seq_len(p + i, n - i);
        if (k == 0)
            return 0;
        i += k;
    }
    return 1;
}
