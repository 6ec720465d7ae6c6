/*
 * digdir: DigDir's self-service admin API (/api/v1): clients, their JWKS,
 * scope access, and the organisation's own scopes. JSON through jansson.
 *
 * Every call takes a deadline (http_now_ms() clock) and fills a struct err
 * with the endpoint, DigDir's correlation_id and a kind the provider maps to
 * a gRPC status.
 */
#ifndef MCP_DIGDIR_H
#define MCP_DIGDIR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "err.h"
#include "http.h"
#include "keys.h"
#include "maskinporten.h"

struct digdir_config {
	const char *base_url;	 /* https://api.test.samarbeid.digdir.no ("/api/v1" appended) */
	const char *client_name; /* client_name of new clients; NULL: "maskinporten-csi-provider" */
	const char *client_uri;	 /* NULL: left out */
	const char *default_scope;  /* registered when an app consumes none (DigDir requires one) */
	long access_token_lifetime; /* 0: 3600 */
	long authorization_lifetime; /* 0: 7200 */
	long scope_cache_seconds;    /* how long scope access lists are trusted; 0: 600 */
};

struct digdir;

struct digdir *digdir_new(struct http *http, struct mp *mp, const struct digdir_config *config,
			  struct err *err);
void digdir_free(struct digdir *dd);

/* GET /clients: every active client of the organisation. *ret is a new array. */
int digdir_list_clients(struct digdir *dd, int64_t deadline_ms, json_t **ret, struct err *err);

/*
 * Finds the client: by pinned_id when non-NULL, else by description and
 * integration_type "maskinporten". When several match, the one created first
 * (ties: the smallest client_id) wins, the same choice on every node.
 * Returns 0 with *ret a new reference, or NULL when there is none.
 */
int digdir_find_client(struct digdir *dd, const char *description, const char *pinned_id,
		       int64_t deadline_ms, json_t **ret, struct err *err);

/*
 * Makes sure the client for description exists with exactly these consumed
 * scopes: finds it (by pinned_id, or by description when pinned_id is NULL
 * or no longer listed; adopting clients made by hand or by other tools), creates
 * it when missing, PUTs it when its scopes differ. Checks first that the
 * organisation may consume every scope (ERR_SCOPE_ACCESS naming each scope and
 * the organisation number otherwise). With no scopes, the default scope is
 * registered. Never leaves a duplicate: after a create it lists again and,
 * when another node created one too, keeps the winner of
 * digdir_find_client's rule and deletes its own.
 * Returns 0 with *ret_client_id (caller frees); *ret_created (may be NULL)
 * says whether the client is one this call created, so no key is registered.
 */
int digdir_ensure_client(struct digdir *dd, const char *description, const char *const *scopes,
			 size_t nscopes, const char *pinned_id, int64_t deadline_ms,
			 char **ret_client_id, bool *ret_created, struct err *err);

/* Checks that the organisation may consume every scope (cached scope access lists). */
int digdir_check_scope_access(struct digdir *dd, const char *const *scopes, size_t nscopes,
			      int64_t deadline_ms, struct err *err);

/* GET /clients/{id}/jwks: *ret is a new "keys" array (empty when none). */
int digdir_get_jwks(struct digdir *dd, const char *client_id, int64_t deadline_ms, json_t **ret,
		    struct err *err);

/* POST /clients/{id}/jwks with {"keys": keys}; *ret (may be NULL) is the registered "keys". */
int digdir_put_jwks(struct digdir *dd, const char *client_id, const json_t *keys,
		    int64_t deadline_ms, json_t **ret, struct err *err);

/* Flags of digdir_sync_jwks. */
enum {
	DIGDIR_JWKS_DROP_FOREIGN = 1, /* drop keys that are not ours (keys_schedule_input) */
	DIGDIR_JWKS_NEW_CLIENT = 2,   /* just created here: no keys yet, skip the first read */
};

/*
 * Reads the JWKS, computes the set with keys_schedule() and uploads it only
 * when it changed, then confirms by reading back that our keys are there.
 * *ret_registered (may be NULL) gets the registered "keys" array; *ret_uploaded
 * (may be NULL) says whether an upload happened.
 */
int digdir_sync_jwks(struct digdir *dd, const char *client_id, const struct keys_seed *seed,
		     int64_t epoch, int64_t epoch_len, unsigned flags,
		     keys_public_jwk_fn public_jwk, void *ctx, int64_t deadline_ms,
		     json_t **ret_registered, bool *ret_uploaded, struct err *err);

/* DELETE /clients/{id} (DigDir deactivates it). */
int digdir_delete_client(struct digdir *dd, const char *client_id, int64_t deadline_ms,
			 struct err *err);

/* A generic authenticated request to DigDir, for the scope calls of later issues:
 * path under /api/v1 (with query), body may be NULL. *ret (may be NULL) gets
 * the parsed JSON answer (json_null() for an empty body). Statuses >= 400
 * become errors with DigDir's message and correlation_id. */
int digdir_call(struct digdir *dd, const char *method, const char *path, const char *endpoint,
		const json_t *body, bool idempotent, int64_t deadline_ms, json_t **ret,
		struct err *err);

/* prefix + value percent-encoded + suffix, e.g. ("/scopes?scope=", "a:b", ""). Caller frees. */
char *digdir_path(const char *prefix, const char *value, const char *suffix);

/* The organisation number of the admin token, or NULL. Borrowed. */
const char *digdir_org_number(struct digdir *dd);

/* Pure helpers, exported for the unit tests. */

/*
 * The client digdir_find_client's rule picks out of a GET /clients list:
 * pinned_id when non-NULL, else the earliest `created` (ties: smallest
 * client_id) of the active clients with this description and integration_type
 * maskinporten. Borrowed from clients, or NULL. *ret_matches (may be NULL)
 * gets how many matched.
 */
json_t *digdir_pick_client(const json_t *clients, const char *description, const char *pinned_id,
			   size_t *ret_matches);

/* Whether a client's "scopes" array holds exactly the wanted scopes, as sets. */
bool digdir_scopes_equal(const json_t *have, const char *const *want, size_t nwant);

/* DigDir's ISO 8601 time ("2021-09-15T10:20:43.354+02:00", "...Z") in Unix ms. */
int digdir_parse_time(const char *s, int64_t *ret_ms);

/* The parsers of DigDir's answers, exported for the fuzzers (tests/fuzz). */

/* Turns a DigDir error answer (status >= 400) into err: DigDir's messages,
 * correlation_id, a kind. Returns the matching negative errno. */
int digdir_status_error(const char *endpoint, const struct http_response *resp, struct err *err);

/* 0 when a GET /clients answer is a list of objects with a client_id. */
int digdir_check_client_list(const json_t *list, struct err *err);

/* The "keys" array of a JWKS answer (absent "keys": none), each key with a kid.
 * Returns 0 with *ret a new reference (json_decref). */
int digdir_parse_jwks(json_t *doc, const char *endpoint, json_t **ret, struct err *err);

/* The scope names orgno may consume out of GET /scopes/access/all (APPROVED
 * entries of orgno) and GET /scopes/all?accessible_for_all=true. Returns 0
 * with *ret a new object name -> true (json_decref). */
int digdir_parse_consumable(const json_t *access, const json_t *open, const char *orgno,
			    json_t **ret, struct err *err);

#endif
