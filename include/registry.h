/*
 * registry: what this node knows about the clients it has served.
 *
 * A warm client (known client_id, same scopes, its key for the current epoch
 * registered) is answered from memory with no network call. Everything else
 * goes through one provisioning flight per client, which concurrent Mounts
 * of the same app share. Bounded (LRU); a background thread revalidates
 * known clients and rolls them into a new epoch before Mounts ask. When
 * DigDir is down, a known client whose current key was seen registered keeps
 * being served.
 */
#ifndef MCP_REGISTRY_H
#define MCP_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "digdir.h"
#include "err.h"
#include "keys.h"

struct registry_config {
	long capacity;		    /* entries kept; the least recently used go first */
	int64_t epoch_len;	    /* seconds */
	long revalidate_interval_s; /* re-check a client at DigDir this often */
	long flight_timeout_ms;	    /* budget of a background flight */
	int64_t time_offset_s;	    /* added to the clock (tests of epochs and skew) */
};

/* A copy of what a Mount needs. SECRET: jwk_private; release with registry_answer_release(). */
struct registry_answer {
	char *client_id;
	char *jwk_private;
	char kid[KEYS_KID_MAX];
	int64_t epoch;
	bool cached; /* registry_ensure: warm on arrival, nothing was asked of DigDir */
};

struct registry;

/* dd and seed are borrowed and must outlive the registry. NULL on allocation failure. */
struct registry *registry_new(const struct registry_config *config, struct digdir *dd,
			      const struct keys_seed *seed);

/* Stops the background thread (if started) and wipes every key. Accepts NULL. */
void registry_free(struct registry *reg);

/* The current epoch by this process's clock. */
int64_t registry_epoch(const struct registry *reg);

/*
 * Never blocks on the network: 0 and the current kid (which names the client
 * and the epoch) when description is warm for scopes_key, else -EAGAIN. Counts
 * a cache hit. Copies no key material.
 */
int registry_warm_kid(struct registry *reg, const char *description, const char *scopes_key,
		      char ret_kid[KEYS_KID_MAX]);

/* Never blocks on the network: 0 and *ret when description is warm for scopes_key, else -EAGAIN. */
int registry_lookup(struct registry *reg, const char *description, const char *scopes_key,
		    struct registry_answer *ret);

/*
 * Provisions or refreshes the client and answers, sharing the flight with
 * concurrent callers for the same description. Blocks until deadline_ms at most.
 */
int registry_ensure(struct registry *reg, const char *description, char *const *scopes,
		    size_t nscopes, const char *scopes_key, int64_t deadline_ms,
		    struct registry_answer *ret, struct err *err);

void registry_answer_release(struct registry_answer *answer);

/* Starts the revalidation thread. Returns 0 or -errno. */
int registry_start(struct registry *reg);

size_t registry_size(struct registry *reg);

#endif
