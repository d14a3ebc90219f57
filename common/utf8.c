/*
 * utf8: checking and cutting UTF-8 text (utf8.h).
 */
#include "utf8.h"

#include <stdint.h>
#include <string.h>

bool utf8_is_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        unsigned c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        unsigned lo = 0x80, hi = 0xbf;   /* range of the second byte */
        if (c >= 0xc2 && c <= 0xdf) {
            n = 2;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 3;
            if (c == 0xe0)
                lo = 0xa0;   /* no overlong forms */
            else if (c == 0xed)
                hi = 0x9f;   /* no surrogates */
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 4;
            if (c == 0xf0)
                lo = 0x90;   /* no overlong forms */
            else if (c == 0xf4)
                hi = 0x8f;   /* nothing above U+10FFFF */
        } else {
            return false;    /* a continuation byte, 0xc0, 0xc1 or 0xf5.. */
        }
        if (len - i < n || p[i + 1] < lo || p[i + 1] > hi)
            return false;
        for (size_t k = 2; k < n; k++)
            if ((p[i + k] & 0xc0) != 0x80)
                return false;
        i += n;
    }
    return true;
}

size_t utf8_cut(char *s, size_t max_bytes)
{
    size_t len = strlen(s);
    if (len <= max_bytes)
        return len;
    size_t n = max_bytes;
    /* s[n] is the first byte dropped: while it continues a character,
     * that character is cut, so drop it whole (at most 3 steps back). */
    while (n > 0 && ((unsigned char)s[n] & 0xc0) == 0x80 && max_bytes - n < 3)
        n--;
    s[n] = '\0';
    return n;
}

void utf8_copy_cut(char *dst, size_t dst_size, const char *src, size_t max_bytes)
{
    if (dst_size == 0)
        return;
    size_t n = strnlen(src, dst_size - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
    utf8_cut(dst, max_bytes);
}
