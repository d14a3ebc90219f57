/*
 * log: formatted event lines to stderr (log.h). Must never block the
 * caller on anything but the write itself, and never write a partial line
 * that another thread's line could split.
 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static log_level max_level = LOGL_INFO;
static const char *const level_names[] = {"error", "warn", "info", "debug"};

void log_set_level(log_level level)
{
    max_level = level;
}

bool log_level_from_name(const char *name, log_level *out)
{
    for (size_t i = 0; i < sizeof level_names / sizeof level_names[0]; i++) {
        if (name != NULL && strcmp(name, level_names[i]) == 0) {
            *out = (log_level)i;
            return true;
        }
    }
    return false;
}

void log_emit(log_level level, const char *component, const char *fmt, ...)
{
    if (level > max_level)
        return;
    char line[2048];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %s: ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                     tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000L,
                     level_names[level], component);
    if (n < 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len >= sizeof line - 1) {
        len = sizeof line - 2;
        memcpy(line + len - 3, "...", 3);
    }
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;   /* nowhere left to report a failed log write */
}

char *log_quote(const char *s, char *out, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    out[o++] = '"';
    for (; s != NULL && *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[4];
        size_t k = 0;
        if (c == '"' || c == '\\') {
            esc[k++] = '\\';
            esc[k++] = (char)c;
        } else if (c < 0x20 || c == 0x7f) {
            esc[k++] = '\\';
            esc[k++] = 'x';
            esc[k++] = hex[c >> 4];
            esc[k++] = hex[c & 0xf];
        } else {
            esc[k++] = (char)c;   /* UTF-8 bytes pass through */
        }
        if (o + k + 2 > n)
            break;
        memcpy(out + o, esc, k);
        o += k;
    }
    out[o++] = '"';
    out[o] = '\0';
    return out;
}
