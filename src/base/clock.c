/* clock.c: see clock.h. Any thread. */
#include "clock.h"

int64_t
imgw_clock_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void
imgw_clock_wall_ts(struct timespec *ts)
{
    clock_gettime(CLOCK_REALTIME, ts);
}

uint64_t
imgw_clock_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

uint64_t
imgw_clock_mono_ms(void)
{
    return imgw_clock_mono_ns() / 1000000ULL;
}

uint64_t
imgw_clock_coarse_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec;
}
