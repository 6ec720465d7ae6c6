/*
 * provision: one app's provisioning as a sequence of steps, in the order a
 * reader follows them: find or create the client, clean up what a create
 * race left, register the key schedule, take the epoch's key, and wait until
 * Maskinporten accepts anything new before a pod gets it. The registry
 * decides when to provision and shares the result; this module only does it.
 */
#ifndef MCP_PROVISION_H
#define MCP_PROVISION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "digdir.h"
#include "err.h"
#include "http.h"
#include "keys.h"
#include "maskinporten.h"

/* What every provisioning uses; all borrowed, outliving every call. */
struct provision {
	struct digdir *dd;
	struct mp *mp;
	struct http *http;
	const struct keys_seed *seed;
	int64_t epoch_len; /* seconds */
};

/* How a provisioning reports its progress and waits; every member may be NULL. */
struct provision_hooks {
	/* The step under way (a static string), and whether it waits for Maskinporten. */
	void (*step)(void *ctx, const char *what, bool verifying);
	/* Sleeps ms between token requests; false: stop waiting (the process stops). */
	bool (*pause)(void *ctx, long ms);
	void *ctx;
};

struct provision_request {
	const char *description;
	char *const *scopes;
	size_t nscopes;
	const char *pinned;  /* the client the app had, or NULL */
	const char *written; /* the scope set this node last registered, or NULL */
	bool readonly;	     /* revalidation: never write the client's scopes */
	int64_t epoch;
	int64_t find_deadline_ms; /* finding the client (the Mount that asked waits for it) */
	int64_t deadline_ms;	  /* the rest, which goes on after that Mount gave up */
	struct provision_hooks hooks;
};

/* What a provisioning produced. Release with provision_result_release(). */
struct provision_result {
	char *client_id;
	char *registered;  /* the scope set DigDir holds */
	char *jwk_private; /* SECRET: the epoch's key, as the pod's file holds it */
	char kid[KEYS_KID_MAX];
	int64_t epoch;
	int64_t registered_max; /* the newest epoch of ours registered */
	bool differs;		/* readonly: DigDir holds other scopes than the wanted ones */
};

/* Runs the steps. Returns 0 with *ret filled, or a negative errno with err naming the step. */
int provision_run(const struct provision *pv, const struct provision_request *req,
		  struct provision_result *ret, struct err *err);

/*
 * DigDir failed, but this node saw the key of epoch registered for client_id
 * before (registered_max >= epoch): the same key, derived locally. Returns 0
 * with *ret filled (registered = written), or -ENOENT / -errno.
 */
int provision_fallback(const struct provision *pv, const char *client_id, const char *written,
		       int64_t epoch, int64_t registered_max, struct provision_result *ret);

/*
 * After a restart, an app whose create may have been cut short: looks it up
 * and deactivates the duplicates that hold no key (or only ours). *ret_client_id
 * (caller frees; NULL when DigDir has none) is the client every node picks.
 */
int provision_settle(const struct provision *pv, const char *description, int64_t deadline_ms,
		     char **ret_client_id, struct err *err);

void provision_result_release(struct provision_result *r);

#endif
