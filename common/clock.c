/* clock: wall and monotonic time behind a replaceable source (clock.h). */
#include "clock.h"

#include <stddef.h>
#include <time.h>

static clock_source_fn source;
static void *source_ctx;

uint64_t clock_now_ms(void)
{
    if (source != NULL)
        return source(source_ctx);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t clock_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void clock_set_source(clock_source_fn fn, void *ctx)
{
    source = fn;
    source_ctx = ctx;
}
