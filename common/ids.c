/*
 * ids: validation, creation and printing of identifiers (see ids.h).
 * Must never accept a name that could be confused with another: no upper
 * case, no NUL, no separators at either end.
 */
#include "ids.h"

#include <string.h>

#include <openssl/rand.h>

static bool is_alnum_lower(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

bool ids_is_valid_name(const char *s)
{
    if (s == NULL)
        return false;
    size_t n = strnlen(s, IDS_NAME_MAX + 1);
    if (n == 0 || n > IDS_NAME_MAX)
        return false;
    if (!is_alnum_lower(s[0]) || !is_alnum_lower(s[n - 1]))
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!is_alnum_lower(c) && c != '.' && c != '_' && c != '-')
            return false;
        if (c == '.' && s[i + 1] == '.')
            return false;
    }
    return true;
}

bool ids_new(uint8_t out[IDS_BYTES], uint64_t now_ms)
{
    uint8_t rnd[IDS_BYTES - 6];
    if (RAND_bytes(rnd, sizeof rnd) != 1)
        return false;
    for (int i = 0; i < 6; i++)
        out[i] = (uint8_t)(now_ms >> (8 * (5 - i)));
    memcpy(out + 6, rnd, sizeof rnd);
    out[6] = (uint8_t)(0x70 | (out[6] & 0x0f));   /* version 7 */
    out[8] = (uint8_t)(0x80 | (out[8] & 0x3f));   /* RFC 9562 variant */
    return true;
}

uint64_t ids_time_ms(const uint8_t id[IDS_BYTES])
{
    uint64_t t = 0;
    for (int i = 0; i < 6; i++)
        t = (t << 8) | id[i];
    return t;
}

char *ids_hex(const uint8_t *id, size_t len, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[id[i] >> 4];
        out[2 * i + 1] = digits[id[i] & 0x0f];
    }
    out[2 * len] = '\0';
    return out;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

bool ids_from_hex(const char *hex, uint8_t out[IDS_BYTES])
{
    return ids_from_hex_len(hex, out, IDS_BYTES);
}

bool ids_from_hex_len(const char *hex, uint8_t *out, size_t len)
{
    if (hex == NULL || strlen(hex) != 2 * len)
        return false;
    for (size_t i = 0; i < len; i++) {
        int hi = hex_value(hex[2 * i]), lo = hex_value(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return false;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return true;
}
