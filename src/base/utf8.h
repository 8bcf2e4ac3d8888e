/*
 * utf8.h: imgw's one UTF-8 validator (RFC 3629), shared by the WebSocket
 * layer (text frames and close reasons, close 1007), the codecs (every
 * protobuf string field, JSON output escaping) and JWT verification.
 *
 * src/base/ holds dependency-free helpers: it includes no other imgw
 * folder, so any module can use it. Thread: any (pure functions).
 */
#ifndef IMGW_UTF8_H
#define IMGW_UTF8_H

#include <stddef.h>
#include <stdint.h>

/*
 * Length (2..4) of the well-formed multi-byte UTF-8 sequence at p, which
 * holds n >= 1 bytes with p[0] >= 0x80; 0 when there is none. Overlong
 * forms, surrogates (U+D800..U+DFFF), code points above U+10FFFF, stray
 * continuation bytes and sequences cut by the end of the buffer are all
 * malformed. For callers that handle bad bytes one by one (the JSON writer
 * replaces each with U+FFFD).
 */
size_t imgw_utf8_seq_len(const uint8_t *p, size_t n);

/*
 * Returns 1 when the n bytes at p are well-formed UTF-8 (as above), else 0.
 * p may be NULL when n is 0. U+0000 is valid UTF-8; callers that cannot
 * carry it check for it themselves.
 */
int imgw_utf8_valid(const uint8_t *p, size_t n);
/* The same for a string of at most cap bytes, NUL-terminated or not
 * (the bytes up to the first NUL, or all cap): one pass over the common
 * short ASCII string instead of a length scan and a validation. */
int imgw_utf8_valid_cstr(const char *s, size_t cap);

#endif
