/*
 * clock: monotonic milliseconds and deadline waits on condition variables
 * made for that clock. Must never use CLOCK_REALTIME for a deadline.
 */
#include <errno.h>
#include <time.h>

#include "clock.h"

int64_t clock_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int clock_cond_init(pthread_cond_t *cond)
{
	pthread_condattr_t ca;
	int r;

	r = pthread_condattr_init(&ca);
	if (r != 0)
		return r;
	r = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	if (r == 0)
		r = pthread_cond_init(cond, &ca);
	pthread_condattr_destroy(&ca);
	return r;
}

bool clock_wait_until(pthread_cond_t *cond, pthread_mutex_t *lock, int64_t deadline_ms)
{
	struct timespec ts;

	if (deadline_ms <= 0) {
		pthread_cond_wait(cond, lock);
		return true;
	}
	if (deadline_ms <= clock_now_ms())
		return false;
	ts.tv_sec = (time_t)(deadline_ms / 1000);
	ts.tv_nsec = (long)(deadline_ms % 1000) * 1000000L;
	return pthread_cond_timedwait(cond, lock, &ts) != ETIMEDOUT;
}
