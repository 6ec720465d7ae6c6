/*
 * digdir: DigDir's self-service admin API (/api/v1): clients, their JWKS,
 * scope access, and the organisation's own scopes. JSON through jansson. It
 * speaks the API and nothing else: which keys to register is keyset's
 * business, the order of a provisioning's steps provision's.
 *
 * Every call takes a deadline (clock_now_ms() clock) and fills a struct err
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
#include "jsonarray.h"
#include "maskinporten.h"

#define DIGDIR_MAX_LISTING_DEFAULT (256L * 1024 * 1024) /* bytes of one streamed listing */
#define DIGDIR_MAX_ENTRY	   (1024 * 1024)	/* bytes of one entry of a listing */

struct digdir_config {
	const char *base_url;	 /* https://api.test.samarbeid.digdir.no ("/api/v1" appended) */
	const char *client_name; /* client_name of new clients; NULL: "maskinporten-csi-provider" */
	const char *client_uri;	 /* NULL: left out */
	const char *default_scope;  /* registered when an app consumes none (DigDir requires one) */
	long access_token_lifetime; /* 0: 3600 */
	long authorization_lifetime; /* 0: 7200 */
	long scope_cache_seconds;    /* how long scope access lists are trusted; 0: 600 */
	size_t max_listing_bytes; /* bound of one listing answer; 0: DIGDIR_MAX_LISTING_DEFAULT */
	long list_reuse_ms;	  /* how old a listing a lookup may use; 0: 2000 */
};

struct digdir;

struct digdir *digdir_new(struct http *http, struct mp *mp, const struct digdir_config *config,
			  struct err *err);
void digdir_free(struct digdir *dd);

/* Flags of digdir_call and digdir_call_list. */
enum {
	DIGDIR_IDEMPOTENT = 1, /* safe to repeat: retried after errors that reached DigDir */
	DIGDIR_EXPOSE = 2,     /* an exposed-scope call: the token with idporten:scopes.write */
};

/*
 * One authenticated request to DigDir: path under /api/v1 (with query), body
 * may be NULL. *ret (may be NULL) gets the parsed JSON answer (json_null()
 * for an empty body). Statuses >= 400 become errors with DigDir's message and
 * correlation_id.
 */
int digdir_call(struct digdir *dd, const char *method, const char *path, const char *endpoint,
		const json_t *body, unsigned flags, int64_t deadline_ms, json_t **ret,
		struct err *err);

/*
 * A GET whose answer is a list of objects, streamed: fn gets each object as
 * it arrives (borrowed for the call), so a listing of any length up to the
 * configured bound is read in bounded memory. A retry starts the list over:
 * reset (may be NULL) is called with ctx before every attempt, so that ctx
 * holds only the entries of the answer that succeeds.
 */
int digdir_call_list(struct digdir *dd, const char *path, const char *endpoint, unsigned flags,
		     jsonarray_fn fn, void (*reset)(void *ctx), void *ctx, int64_t deadline_ms,
		     struct err *err);

/* GET /clients, streamed: fn gets every active client of the organisation. */
int digdir_each_client(struct digdir *dd, jsonarray_fn fn, void (*reset)(void *ctx), void *ctx,
		       int64_t deadline_ms, struct err *err);

/* GET /clients/{id}: *ret is a new reference. ERR_NOT_FOUND (-ENOENT) when DigDir has none. */
int digdir_get_client(struct digdir *dd, const char *client_id, int64_t deadline_ms, json_t **ret,
		      struct err *err);

/*
 * The active maskinporten clients whose description is description, from a
 * listing shared by concurrent callers (one at most LIST_REUSE_MS old, or
 * newer than any create of this description by this process). *ret_ids is a
 * new array of client ids, earliest created first (ties: smallest id): the
 * first is the one every node picks. Empty when there is none.
 */
int digdir_lookup(struct digdir *dd, const char *description, int64_t deadline_ms, json_t **ret_ids,
		  struct err *err);

/*
 * What a flight asks of digdir_ensure_client, and what it answers. The
 * scope sets are keys: sorted, deduplicated, space-joined.
 */
struct digdir_ensure {
	/* In. */
	const char *description;
	const char *const *scopes; /* none: the default scope */
	size_t nscopes;
	const char *pinned_id; /* the client this app had; checked again, dropped if unfit */
	const char *written;   /* the scope set this node last registered for it, or NULL */
	bool readonly_scopes;  /* revalidation: report differing scopes, never write them */
	/* Out, each owned by the struct: release with digdir_ensure_release(). */
	char *client_id;
	char *registered;    /* the scope set DigDir holds now */
	json_t *duplicates;  /* ids of other active clients with this description, or NULL */
	bool created;	     /* this call created the client: it has no keys yet */
	bool scopes_changed; /* this call registered new scopes */
	bool scopes_differ;  /* readonly_scopes: DigDir holds other scopes than the wanted ones */
};

/*
 * Makes sure the client for e->description exists with exactly the wanted
 * consumed scopes. Before it registers scopes (a create or a change) it
 * checks that the organisation may consume every one (ERR_SCOPE_ACCESS
 * naming each scope and the organisation number otherwise). A pinned client
 * is read by id and kept only while it is active, of integration_type
 * maskinporten and still described as this app; else the client is looked up
 * by description (adopting clients made by hand or by other tools) and
 * created when missing. Never leaves a duplicate of its own: after a create
 * it lists again and, when another node created one too, keeps the earliest
 * and deactivates its own. Scopes are changed by GET, modify, PUT, so fields
 * this provider does not manage survive. A change of scopes that someone
 * else made after this node's last one (e->written) is not undone:
 * ERR_CONFLICT names both sets.
 */
int digdir_ensure_client(struct digdir *dd, struct digdir_ensure *e, int64_t deadline_ms,
			 struct err *err);

void digdir_ensure_release(struct digdir_ensure *e);

/* Checks that the organisation may consume every scope (cached scope access lists). */
int digdir_check_scope_access(struct digdir *dd, const char *const *scopes, size_t nscopes,
			      int64_t deadline_ms, struct err *err);

/* GET /clients/{id}/jwks: *ret is a new "keys" array (empty when none). */
int digdir_get_jwks(struct digdir *dd, const char *client_id, int64_t deadline_ms, json_t **ret,
		    struct err *err);

/* POST /clients/{id}/jwks with {"keys": keys}: the set replaces what was registered.
 * *ret (may be NULL) gets the registered "keys" DigDir answers with. */
int digdir_put_jwks(struct digdir *dd, const char *client_id, const json_t *keys,
		    int64_t deadline_ms, json_t **ret, struct err *err);

/* DELETE /clients/{id} (DigDir deactivates it). */
int digdir_delete_client(struct digdir *dd, const char *client_id, int64_t deadline_ms,
			 struct err *err);

/* prefix + value percent-encoded + suffix, e.g. ("/scopes?scope=", "a:b", ""). Caller frees. */
char *digdir_path(const char *prefix, const char *value, const char *suffix);

/* The organisation number (configured, or from the admin token), or NULL. Borrowed. */
const char *digdir_org_number(struct digdir *dd);

/* Pure helpers, exported for the unit tests and fuzzers. */

/*
 * A client listing as this provider keeps it: for each active maskinporten
 * client only its id, description, scopes and creation time, indexed by
 * description. Built from a listing streamed in chunks of any size.
 */
struct digdir_listing;

/* An empty listing, to be fed with digdir_listing_feed(). NULL on allocation failure. */
struct digdir_listing *digdir_listing_new(void);
void digdir_listing_free(struct digdir_listing *l);

/* Adds one entry of a GET /clients answer (a jsonarray_fn: ctx is the listing). */
int digdir_listing_add(void *ctx, json_t *client, size_t index, struct err *err);

/* Empties a listing, keeping its memory (the reset of a retried listing). */
void digdir_listing_clear(void *ctx);

/* How many clients it keeps (active maskinporten clients). */
size_t digdir_listing_count(const struct digdir_listing *l);

/*
 * The ids of the clients described as description, earliest created first
 * (unknown times last; ties: smallest id): a new array, empty when none.
 * NULL on allocation failure.
 */
json_t *digdir_listing_find(const struct digdir_listing *l, const char *description);

/* The scope set (sorted, deduplicated, space-joined) of a listed client, or NULL. Borrowed. */
const char *digdir_listing_scopes(const struct digdir_listing *l, const char *client_id);

/* A client's "scopes" array as a scope set key: sorted, deduplicated, space-joined.
 * Caller frees; NULL when scopes is not an array of strings or memory ran out. */
char *digdir_scopes_key(const json_t *scopes);

/* DigDir's ISO 8601 time ("2021-09-15T10:20:43.354+02:00", "...Z") in Unix ms. */
int digdir_parse_time(const char *s, int64_t *ret_ms);

/* The parsers of DigDir's answers, exported for the fuzzers (tests/fuzz). */

/* Turns a DigDir error answer (status >= 400) into err: DigDir's messages,
 * correlation_id, a kind. Returns the matching negative errno. */
int digdir_status_error(const char *endpoint, const struct http_response *resp, struct err *err);

/* The "keys" array of a JWKS answer (absent "keys": none), each key with a kid.
 * Returns 0 with *ret a new reference (json_decref). */
int digdir_parse_jwks(json_t *doc, const char *endpoint, json_t **ret, struct err *err);

/* The scope names orgno may consume out of GET /scopes/access/all (APPROVED
 * entries of orgno) and GET /scopes/all?accessible_for_all=true. Returns 0
 * with *ret a new object name -> true (json_decref). */
int digdir_parse_consumable(const json_t *access, const json_t *open, const char *orgno,
			    json_t **ret, struct err *err);

#endif
