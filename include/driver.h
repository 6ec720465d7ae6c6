/*
 * driver: the client side of the provider protocol, as the Secrets Store CSI
 * Driver speaks it (gRPC over a Unix socket, :authority "localhost"). Used by
 * the `mount` subcommand, /healthz and the benchmarks.
 */
#ifndef MCP_DRIVER_H
#define MCP_DRIVER_H

#include <stddef.h>
#include <stdint.h>

#include "err.h"

struct driver;

/* Connects (lazily) to socket_path. Returns NULL on allocation failure. */
struct driver *driver_new(const char *socket_path);
void driver_free(struct driver *d);

/*
 * One unary call of method ("/v1alpha1.CSIDriverProvider/Mount") with the
 * packed request, waiting at most timeout_ms. Returns 0 with *ret_status
 * the gRPC status code, *ret_message its details (malloc'd, may be NULL)
 * and, on status 0, *ret_payload and *ret_len the packed response (malloc'd;
 * SECRET for Mount). Returns a negative errno when the call could not be made.
 * Thread-safe: several threads may call concurrently on one driver.
 */
int driver_call(struct driver *d, const char *method, const uint8_t *req, size_t len,
		long timeout_ms, int *ret_status, char **ret_message, uint8_t **ret_payload,
		size_t *ret_len);

/* Convenience: Version. Returns 0 with *ret_runtime ("name version", malloc'd). */
int driver_version(struct driver *d, long timeout_ms, char **ret_runtime, struct err *err);

#endif
