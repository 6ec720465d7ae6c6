/*
 * clock: the project's one clock and its one way to wait. Deadlines are
 * milliseconds on CLOCK_MONOTONIC, which no change of the wall clock moves,
 * and every condition variable that a deadline bounds is made on that clock,
 * so a wait is neither stretched nor cut when NTP or a person sets the time.
 */
#ifndef MCP_CLOCK_H
#define MCP_CLOCK_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

/* Monotonic milliseconds: the clock of every deadline. */
int64_t clock_now_ms(void);

/* Initialises cond on the monotonic clock, for clock_wait_until(). Returns 0 or an errno. */
int clock_cond_init(pthread_cond_t *cond);

/*
 * Waits on cond (lock held) until woken or until deadline_ms (clock_now_ms()
 * clock; 0 or less: no deadline). Returns false once the deadline has passed
 * (without waiting when it already had), true when woken, spuriously or not:
 * callers wait in a loop that checks their condition.
 */
bool clock_wait_until(pthread_cond_t *cond, pthread_mutex_t *lock, int64_t deadline_ms);

#endif
