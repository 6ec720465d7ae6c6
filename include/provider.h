/*
 * provider: the Mount and Version handlers behind the gRPC server. Turns a
 * MountRequest into files through mount (parsing), registry (clients and
 * keys) and, in provider write mode, writer. The one place where errors
 * become gRPC status codes and where each Mount is logged.
 */
#ifndef MCP_PROVIDER_H
#define MCP_PROVIDER_H

#include <stddef.h>

#include "app.h"
#include "err.h"
#include "server.h"
#include "state.h"

struct provider;

/* app must be open with seed and DigDir; borrowed, must outlive the provider. */
struct provider *provider_new(struct app *app, struct err *err);

/* Stops the registry's background work and wipes its keys. Accepts NULL. */
void provider_free(struct provider *p);

/* The handlers for server_run(). */
void provider_ops(struct provider *p, struct server_ops *ret);

/*
 * Cancels every upstream request for good (http_cancel): the process is
 * stopping. Mounts that were waiting on DigDir or Maskinporten answer
 * UNAVAILABLE, "the provider is shutting down". ctx is the provider.
 */
void provider_cancel(void *ctx);

/* Starts background revalidation. Returns 0 or -errno. */
int provider_start(struct provider *p);

/* Readiness: metadata fetched and an admin token obtainable. 0, or -errno with msg. */
int provider_ready(struct provider *p, char *msg, size_t len);

/*
 * The state file of cfg (--state-file, else beside the socket; "": none,
 * nothing is remembered). NULL on allocation failure. Shared with `client show`.
 */
struct state *provider_state_open(const struct config *cfg);

/* The gRPC status for an error kind: the single mapping of the project. */
enum server_code provider_status(enum err_kind kind);

#endif
