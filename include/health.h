/*
 * health: the small HTTP endpoints of the DaemonSet, on --probe-addr and
 * --metrics-addr (one listener serves both when there is no --probe-addr).
 *
 *   GET /healthz  200 "ok", or 503 with the reason live() gave (liveness probe)
 *   GET /readyz   200 "ok", or 503 with the reason ready() gave (readiness probe)
 *   GET /metrics  200, the Prometheus text format from metrics_render()
 *
 * Anything else is 404; methods other than GET and HEAD are 405. Each
 * listener runs on its own threads (libmicrohttpd), with connection limits
 * and an idle timeout, so idle or stuck clients of /metrics cannot starve the
 * probes of a separate listener. It never serves a secret: the reasons are
 * written by our own callbacks and must not contain one.
 */
#ifndef MCP_HEALTH_H
#define MCP_HEALTH_H

#include <stddef.h>

#include "err.h"

/*
 * The checks behind /healthz and /readyz. Each returns 0 when healthy, or
 * anything else after writing a one-line, NUL-terminated reason into msg (at
 * most len bytes, secrets never). Either pointer may be NULL: that check
 * always passes. They are called on the server's threads, possibly at the
 * same time, and should answer within a few seconds (the probes time out).
 * ctx is borrowed until health_stop() returns.
 */
#define HEALTH_PROBES  (1u << 0) /* /healthz and /readyz */
#define HEALTH_METRICS (1u << 1) /* /metrics */

struct health_ops {
	int (*live)(void *ctx, char *msg, size_t len);
	int (*ready)(void *ctx, char *msg, size_t len);
	void *ctx;
	unsigned paths; /* HEALTH_PROBES | HEALTH_METRICS; 0 (or no ops): both */
};

struct health;

/*
 * Starts serving on addr: "host:port", "[v6-address]:port" or ":port" (all
 * IPv4 addresses); port 0 picks a free port (see health_port). ops is copied.
 * Returns the server (stop it with health_stop), or NULL with err filled in.
 */
struct health *health_start(const char *addr, const struct health_ops *ops, struct err *err);

/* The port actually bound. */
int health_port(const struct health *h);

/* Stops serving, waits for the threads, frees h. Accepts NULL. */
void health_stop(struct health *h);

#endif
