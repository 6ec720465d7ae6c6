/*
 * timespec: absolute deadlines for pthread_cond_timedwait, which wants the
 * condition variable's clock (CLOCK_REALTIME unless set otherwise) and not a
 * number of milliseconds.
 */
#ifndef MCP_TIMESPEC_H
#define MCP_TIMESPEC_H

#include <stdint.h>
#include <time.h>

/* The time ms milliseconds (>= 0) from now on clock. */
static inline struct timespec timespec_in_ms(clockid_t clock, int64_t ms)
{
	struct timespec ts;

	clock_gettime(clock, &ts);
	ts.tv_sec += (time_t)(ms / 1000);
	ts.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	return ts;
}

#endif
