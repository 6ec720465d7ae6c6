/*
 * registry: what this node knows about the clients it has served.
 *
 * A warm client (known client_id, same scopes, its key for the current epoch
 * registered and accepted by Maskinporten) is answered from memory with no
 * network call. Everything else goes through one provisioning flight per
 * client, which concurrent Mounts of the same app share. A flight runs on
 * its own thread with its own budget: a Mount whose deadline passes gets a
 * retryable error while the flight goes on, so the kubelet's next try is
 * answered at once. Bounded (LRU); a background thread revalidates known
 * clients and rolls them into a new epoch before Mounts ask. When DigDir is
 * down, a known client whose current key was seen registered keeps being
 * served.
 */
#ifndef MCP_REGISTRY_H
#define MCP_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "digdir.h"
#include "err.h"
#include "http.h"
#include "keys.h"
#include "maskinporten.h"
#include "state.h"

/*
 * A Mount asking for the scope set an app had before its last change, while
 * the current set was asked for this recently, is refused: two
 * SecretProviderClasses give the app different scopes. Longer than the
 * driver's republish interval (2 minutes by default), so two sets in use at
 * once always meet inside it.
 */
#define REGISTRY_FLIP_WINDOW_MS (5 * 60 * 1000L)

struct registry_config {
	long capacity;		    /* entries kept; the least recently used go first */
	int64_t epoch_len;	    /* seconds */
	long revalidate_interval_s; /* re-check a client at DigDir this often */
	long flight_timeout_ms; /* budget of a flight, which outlives the Mount that started it */
	long flip_window_ms;	/* 0: REGISTRY_FLIP_WINDOW_MS */
	int64_t time_offset_s;	/* added to the clock (tests of epochs and skew) */
};

/* A copy of what a Mount needs. SECRET: jwk_private; release with registry_answer_release(). */
struct registry_answer {
	char *client_id;
	char *jwk_private;
	char kid[KEYS_KID_MAX];
	bool cached; /* registry_ensure: warm on arrival, nothing was asked of DigDir */
};

struct registry;

/*
 * dd, mp, http, seed and st (may be NULL) are borrowed and must outlive the
 * registry: mp and http for asking Maskinporten whether a new key works, st
 * for remembering each app's client across restarts. NULL on allocation
 * failure.
 */
struct registry *registry_new(const struct registry_config *config, struct digdir *dd,
			      struct mp *mp, struct http *http, const struct keys_seed *seed,
			      struct state *st);

/*
 * Shutting down: the revalidation thread starts nothing more, and flights
 * waiting for Maskinporten to accept a key give up at once. Mounts are still
 * answered from memory.
 */
void registry_stop(struct registry *reg);

/* Stops background work, waits for the flights under way, wipes every key. Accepts NULL. */
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
 * concurrent callers for the same description. Waits until deadline_ms at
 * most; the flight goes on after that (ERR_PROPAGATING while Maskinporten
 * does not accept the new client or key yet, ERR_TIMEOUT otherwise).
 */
int registry_ensure(struct registry *reg, const char *description, char *const *scopes,
		    size_t nscopes, const char *scopes_key, int64_t deadline_ms,
		    struct registry_answer *ret, struct err *err);

void registry_answer_release(struct registry_answer *answer);

/*
 * Starts the revalidation thread, which first settles the apps the state
 * file says were being created when the provider stopped (their duplicates
 * are cleaned up). Returns 0 or -errno.
 */
int registry_start(struct registry *reg);

#endif
