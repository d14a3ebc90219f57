/*
 * utf8: checking and cutting UTF-8 text.
 *
 * Every string that comes from the wire must be valid UTF-8 (proto3
 * parsers in other languages refuse frames that are not), and every text
 * the broker builds from such strings must be cut to its limit on a
 * character boundary, never in the middle of one. wire.c checks with
 * utf8_is_valid(); whoever builds a detail cuts it with utf8_cut().
 */
#ifndef REF_UTF8_H
#define REF_UTF8_H

#include <stdbool.h>
#include <stddef.h>

/* True if the len bytes at s (borrowed; NULL only if len is 0) are valid
 * UTF-8 as RFC 3629 defines it: shortest forms only, no surrogates
 * (U+D800..U+DFFF), nothing above U+10FFFF. */
bool utf8_is_valid(const char *s, size_t len);

/* Cut the NUL-terminated string s (in place) to at most max_bytes bytes,
 * ending on a character boundary: a character that would not fit whole is
 * dropped whole. Returns the new length. s valid UTF-8 stays valid. */
size_t utf8_cut(char *s, size_t max_bytes);

/* Copy src into dst (dst_size bytes) and cut it to at most max_bytes at a
 * character boundary (utf8_cut); dst is always terminated. */
void utf8_copy_cut(char *dst, size_t dst_size, const char *src, size_t max_bytes);

#endif
