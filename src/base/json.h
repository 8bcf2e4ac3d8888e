/*
 * json.h: imgw's one JSON string escaper, shared by the JSON codec's
 * writer (codec.c) and the HTTP API's error bodies (api.c), so every JSON
 * imgw writes escapes strings the same way.
 *
 * src/base/ holds dependency-free helpers. Thread: any (pure function).
 */
#ifndef IMGW_JSON_H
#define IMGW_JSON_H

#include <stddef.h>
#include <stdint.h>

/*
 * Writes the n bytes at s as the inside of a JSON string literal (no
 * quotes) into dst: quote, backslash and control characters escaped, and
 * each byte that does not start a valid UTF-8 sequence replaced by U+FFFD,
 * so the output is valid JSON and valid UTF-8 whatever the bytes. Returns
 * the escaped length; when it exceeds cap nothing is written (call with
 * cap 0, dst NULL to size a buffer). s may be NULL when n is 0.
 */
size_t imgw_json_escape(uint8_t *dst, size_t cap, const uint8_t *s, size_t n);

#endif
