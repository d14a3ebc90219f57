/*
 * log: one line per event, for the broker and the tools.
 *
 *   2026-11-23T03:45:05.123Z info ingress: accepted referral=... msg=... from=...
 *
 * The time is UTC with milliseconds, then the level, the component and a
 * short message followed by key=value pairs that always name the ids
 * involved, so one grep follows a referral. Levels: error (a person must
 * act), warn (degraded), info (lifecycle), debug.
 *
 * libreferral never uses this module: a library reports through the
 * callback its application sets, never to stderr.
 */
#ifndef REF_LOG_H
#define REF_LOG_H

#include <stdbool.h>
#include <stddef.h>

typedef enum {
    LOGL_ERROR = 0,
    LOGL_WARN = 1,
    LOGL_INFO = 2,
    LOGL_DEBUG = 3,
} log_level;

/* Lines above this level are not written. Default LOGL_INFO. */
void log_set_level(log_level level);

/* Parse "error", "warn", "info" or "debug". False on anything else. */
bool log_level_from_name(const char *name, log_level *out);

/* Write one line to stderr (unbuffered, one write call per line so lines
 * from several threads never interleave). Lines longer than 2 KiB are cut
 * and end with "...". */
void log_emit(log_level level, const char *component, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_error(comp, ...) log_emit(LOGL_ERROR, comp, __VA_ARGS__)
#define log_warn(comp, ...) log_emit(LOGL_WARN, comp, __VA_ARGS__)
#define log_info(comp, ...) log_emit(LOGL_INFO, comp, __VA_ARGS__)
#define log_debug(comp, ...) log_emit(LOGL_DEBUG, comp, __VA_ARGS__)

/* Copy untrusted text s into out (size n, n >= 3) as a double-quoted value
 * with quotes, backslashes and non-printable bytes escaped (\xNN), cut to
 * fit. NULL s gives "". Returns out. Use it for every value that came from
 * outside before it goes into a log line. */
char *log_quote(const char *s, char *out, size_t n);

#endif
