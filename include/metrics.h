/*
 * metrics: process-wide counters rendered in the Prometheus text format.
 * Every function is thread-safe and cheap; label values are copied.
 * Never put a secret in a label.
 */
#ifndef MCP_METRICS_H
#define MCP_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* An upstream request: service "digdir" or "maskinporten", endpoint a template
 * such as "GET /clients/{id}/jwks", status the HTTP status or 0 on transport error. */
void metrics_upstream_request(const char *service, const char *endpoint, long status);
void metrics_upstream_retry(const char *service, const char *endpoint);

/* A finished Mount: result "ok" or "error", kind an err_kind_name() ("none" when ok). */
void metrics_mount(const char *result, const char *kind, double seconds);

void metrics_cache(bool hit);
void metrics_cache_size(long entries);
void metrics_key_derived(void);
void metrics_jwks_upload(void);
void metrics_epoch(int64_t epoch);

/* A client we created and could not use was deactivated ("duplicate"). */
void metrics_client_deactivated(const char *reason);

/* DigDir refused one consumer grant of an exposed scope; the others went on. */
void metrics_consumer_refused(void);

/* A flight waited this long for Maskinporten to accept a new client or key. */
void metrics_key_propagation(double seconds);

/* Renders everything. Returns 0 and a malloc'd text (caller frees), or -ENOMEM. */
int metrics_render(char **ret_text, size_t *ret_len);

/* For tests and benchmarks: forget every counter. */
void metrics_reset(void);

#endif
