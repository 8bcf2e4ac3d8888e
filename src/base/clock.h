/*
 * clock.h: imgw's two clocks.
 *
 * The wall clock (CLOCK_REALTIME) is for what goes on the wire, into the
 * store or into a log line: timestamps, expiry stamps, JWT exp/nbf. The
 * monotonic clock (CLOCK_MONOTONIC) is for deadlines, backoff and
 * intervals, which a wall clock step (NTP, an operator, a VM resume) must
 * not move. A network loop's deadlines use libuv's cached loop time
 * (net/loop.c), which is this monotonic clock read once per iteration.
 *
 * Thread: any. No failure: clock_gettime cannot fail for these clocks.
 */
#ifndef IMGW_CLOCK_H
#define IMGW_CLOCK_H

#include <stdint.h>
#include <time.h>

/** Unix time in ms (CLOCK_REALTIME). */
int64_t imgw_clock_wall_ms(void);
/** Unix time as a timespec (for log timestamps with sub-second digits). */
void imgw_clock_wall_ts(struct timespec *ts);
/** CLOCK_MONOTONIC in ns: intervals, deadlines and seeds. */
uint64_t imgw_clock_mono_ns(void);
/** CLOCK_MONOTONIC in ms. */
uint64_t imgw_clock_mono_ms(void);
/** CLOCK_MONOTONIC_COARSE in whole seconds: cheap, for rate limits. */
uint64_t imgw_clock_coarse_s(void);

#endif
