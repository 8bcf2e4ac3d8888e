/*
 * idsyntax.c: the id syntax rule (see idsyntax.h for the rule and why).
 *
 * Threads: pure functions, any thread.
 */
#include "idsyntax.h"

#include <string.h>

/* 1 for the bytes a user/group id may hold: A-Z a-z 0-9 . _ @ -. A table:
 * every id of a message is checked at least twice on the send path (the
 * command, then the store's edge), and one load a byte is cheaper than
 * the chain of ranges. */
#define ID_OK_RANGE(lo, hi) [lo... hi] = 1
static const unsigned char id_ok[256] = {
    ID_OK_RANGE('a', 'z'), ID_OK_RANGE('A', 'Z'), ID_OK_RANGE('0', '9'),
    ['.'] = 1, ['_'] = 1, ['@'] = 1, ['-'] = 1,
};

static int
id_byte_ok(unsigned char c)
{
    return id_ok[c];
}

const char *
imgw_id_check(const char *s, size_t n)
{
    if (s == NULL || n == 0)
        return "is empty";
    if (n > IMGW_ID_MAX)
        return "is too long (at most 127 bytes)";
    /* The commonest mistakes get a sentence of their own, so a user who
     * typed "a b" is told about the space, not handed the whole rule. */
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (id_byte_ok(ch))
            continue;
        if (ch == ' ')
            return "must not contain spaces (ids may only contain A-Z a-z "
                   "0-9 . _ @ -)";
        if (ch < 0x20 || ch == 0x7f)
            return "must not contain control characters (ids may only "
                   "contain A-Z a-z 0-9 . _ @ -)";
        if (ch == '/')
            return "must not contain '/' (ids may only contain A-Z a-z 0-9 "
                   ". _ @ -)";
        return "may only contain A-Z a-z 0-9 . _ @ -";
    }
    return NULL;
}

int
imgw_id_valid(const char *s)
{
    /* strnlen bounds the scan: an id longer than the rule is refused
     * without reading past IMGW_ID_MAX + 1 bytes. */
    return s != NULL && imgw_id_check(s, strnlen(s, IMGW_ID_MAX + 1)) == NULL;
}

const char *
imgw_cmid_check(const char *s, size_t n)
{
    if (s == NULL || n == 0)
        return "is empty";
    if (n > IMGW_CMID_MAX)
        return "is longer than 127 bytes";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x21 || c > 0x7e)
            return "must be printable ASCII without spaces";
    }
    return NULL;
}

int
imgw_cmid_valid_opt(const char *s)
{
    if (s == NULL || s[0] == '\0')
        return 1;
    return imgw_cmid_check(s, strnlen(s, IMGW_CMID_MAX + 1)) == NULL;
}
