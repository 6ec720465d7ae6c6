/*
 * health: the small HTTP endpoint of the DaemonSet, on --metrics-addr.
 *
 *   GET /healthz  200 "ok", or 503 with the reason live() gave (liveness probe)
 *   GET /readyz   200 "ok", or 503 with the reason ready() gave (readiness probe)
 *   GET /metrics  200, the Prometheus text format from metrics_render()
 *
 * Anything else is 404; methods other than GET and HEAD are 405. The server
 * runs on its own threads (libmicrohttpd), with a small connection limit and
 * short timeouts, so a stuck scraper cannot pin it. It never serves a secret:
 * the reasons are written by our own callbacks and must not contain one.
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
struct health_ops {
	int (*live)(void *ctx, char *msg, size_t len);
	int (*ready)(void *ctx, char *msg, size_t len);
	void *ctx;
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
