/*
 * json.c: the JSON string escaper (json.h). Runs of plain bytes are copied
 * in one go.
 */
#include <string.h>

#include "json.h"
#include "utf8.h"

/* Appends k bytes at *o when the whole output fits (fits: need <= cap). */
static void
put(uint8_t **o, int fits, const void *p, size_t k)
{
    if (fits && k) {
        memcpy(*o, p, k);
        *o += k;
    }
}

static size_t
escape(uint8_t *dst, int fits, const uint8_t *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t i = 0, run = 0, u, need = 0;
    uint8_t esc[6];
    uint8_t *o = dst;

    while (i < n) {
        uint8_t c = s[i];
        size_t k;

        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
            i++;
            continue;
        }
        if (c >= 0x80 && (u = imgw_utf8_seq_len(s + i, n - i)) != 0) {
            i += u;
            continue;
        }
        put(&o, fits, s + run, i - run);
        need += i - run;
        if (c >= 0x80) {
            memcpy(esc, "\xef\xbf\xbd", 3);
            k = 3;
        } else if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = c;
            k = 2;
        } else if (c == '\n' || c == '\r' || c == '\t' || c == '\b' ||
                   c == '\f') {
            esc[0] = '\\';
            esc[1] = c == '\n'   ? 'n'
                     : c == '\r' ? 'r'
                     : c == '\t' ? 't'
                     : c == '\b' ? 'b'
                                 : 'f';
            k = 2;
        } else {
            memcpy(esc, "\\u00", 4);
            esc[4] = (uint8_t)hex[c >> 4];
            esc[5] = (uint8_t)hex[c & 15];
            k = 6;
        }
        put(&o, fits, esc, k);
        need += k;
        run = ++i;
    }
    if (i > run)
        put(&o, fits, s + run, i - run);
    return need + (i - run);
}

size_t
imgw_json_escape(uint8_t *dst, size_t cap, const uint8_t *s, size_t n)
{
    size_t need = escape(NULL, 0, s, n);
    if (need <= cap && need > 0)
        escape(dst, 1, s, n);
    return need;
}
