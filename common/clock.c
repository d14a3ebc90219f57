/* clock: wall and monotonic time, both replaceable by a test's source
 * (clock.h). It must never make production read anything but the system
 * clocks. */
#include "clock.h"

#include <stddef.h>
#include <time.h>

static clock_source *source;

static uint64_t system_ms(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t clock_now_ms(void)
{
    return source != NULL ? source->wall_ms : system_ms(CLOCK_REALTIME);
}

uint64_t clock_mono_ms(void)
{
    return source != NULL ? source->mono_ms : system_ms(CLOCK_MONOTONIC);
}

void clock_set_source(clock_source *src)
{
    source = src;
}

void clock_advance(clock_source *src, uint64_t ms)
{
    src->wall_ms += ms;
    src->mono_ms += ms;
}
