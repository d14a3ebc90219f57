/*
 * clock: the one place the broker, library and tools read the time.
 *
 * Two clocks: wall time (clock_now_ms: ms since the Unix epoch, UTC) for
 * what is stored or sent (created_at, expires_at, deadlines, directory
 * expiry), and a monotonic counter (clock_mono_ms) for intervals inside
 * one process (idle sessions, a turn's time budget, held frames, retries).
 *
 * A seam for tests: clock_set_source() hands both clocks to a
 * clock_source that the test moves by hand, so a test drives deadlines,
 * idle timeouts and turn budgets forward without sleeping. Production code
 * never calls it: without a source both clocks are the system's
 * (CLOCK_REALTIME, CLOCK_MONOTONIC), exactly as before the seam existed.
 * Log lines (log.c) keep the system's wall time, so a person reading a
 * test's log sees when it ran.
 */
#ifndef REF_CLOCK_H
#define REF_CLOCK_H

#include <stdint.h>

/* A clock a test moves. Read by clock_now_ms() and clock_mono_ms() while
 * it is the source; the test changes the fields directly or with
 * clock_advance(). Setting wall_ms backwards (a wall clock stepped back)
 * is allowed; mono_ms must never go backwards. */
typedef struct {
    uint64_t wall_ms;     /* what clock_now_ms() returns */
    uint64_t mono_ms;     /* what clock_mono_ms() returns */
} clock_source;

/* Now, in ms since the epoch: the source's wall_ms, else the system's. */
uint64_t clock_now_ms(void);

/* A monotonic ms counter for timeouts and intervals: the source's mono_ms,
 * else CLOCK_MONOTONIC. Only differences between two readings mean
 * anything. */
uint64_t clock_mono_ms(void);

/* Read both clocks from src (borrowed: it must outlive its use, until
 * clock_set_source(NULL) restores the system clocks). Not thread-safe:
 * call it, and move the source, only while no other thread reads the
 * clock (the broker's worker threads never do). */
void clock_set_source(clock_source *src);

/* Move both of src's clocks forward by ms: time passing, as a sleep would
 * have let it pass. */
void clock_advance(clock_source *src, uint64_t ms);

#endif
