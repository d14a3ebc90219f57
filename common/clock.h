/*
 * clock: the one place the broker, library and tools read the time.
 *
 * A seam for tests: clock_set_source() replaces the wall clock so that a
 * test can move time forward without sleeping. Production code never calls
 * it. Times are milliseconds since the Unix epoch (UTC).
 */
#ifndef REF_CLOCK_H
#define REF_CLOCK_H

#include <stdint.h>

typedef uint64_t (*clock_source_fn)(void *ctx);

/* Now, in ms since the epoch, from the current source. */
uint64_t clock_now_ms(void);

/* A monotonic ms counter for timeouts and intervals (never the source). */
uint64_t clock_mono_ms(void);

/* Replace the time source; fn NULL restores the wall clock. Not thread-safe:
 * call before any thread reads the clock. */
void clock_set_source(clock_source_fn fn, void *ctx);

#endif
