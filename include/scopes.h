/*
 * scopes: the scopes an app exposes (SecretProviderClass parameter
 * `exposes`), kept in line with DigDir: created, updated, reactivated and
 * deactivated, with their consumer organisations granted and revoked.
 *
 * A scope belongs to the app its description names ("<product> -
 * <cluster>:<namespace>:<app>"); a scope of another app is never changed.
 */
#ifndef MCP_SCOPES_H
#define MCP_SCOPES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "digdir.h"
#include "err.h"

#define SCOPES_MAX_ENTRIES    32
#define SCOPES_MAX_CONSUMERS  256 /* in all the entries of one declaration */
#define SCOPES_MAX_NAME	      128
#define SCOPES_AT_MAX_AGE_MAX 2147483647L /* DigDir's at_max_age: seconds, 0 is no cap */
#define SCOPES_MAX_WRITES     128 /* DigDir writes one Mount makes; the rest at the next one */

/* One exposed scope as declared, defaults filled in. Owned by its scopes_decl. */
struct scopes_entry {
	char *name;
	char *product;
	char *subscope; /* product + separator + name */
	bool enabled;
	bool accessible_for_all;
	bool private_visibility;
	bool altinn;	       /* delegationSource: altinn */
	long at_max_age;       /* seconds an access token may live, 0: no cap; -1: not sent */
	json_t *integrations;  /* array of strings */
	char (*consumers)[10]; /* nine-digit organisation numbers, deduplicated */
	size_t nconsumers;
};

/* A parsed `exposes` declaration. Free with scopes_decl_free(). */
struct scopes_decl {
	struct scopes_entry *entries;
	size_t n;
	char hash[65]; /* SHA-256 of the normalised declaration: equal meaning, equal hash */
};

/*
 * Parses and validates the `exposes` parameter: a JSON list of objects with
 * name, product, enabled, atMaxAge, allowedIntegrations, accessibleForAll,
 * delegationSource, separator, visibility and consumers. Fails with
 * ERR_INVALID naming the entry and the field. *ret is new (caller frees).
 */
int scopes_parse(const char *text, struct scopes_decl **ret, struct err *err);

void scopes_decl_free(struct scopes_decl *decl);

/* Exposed scopes kept in line with DigDir, with a per-app cache of the last sync. */
struct scopes;

/*
 * prefix is the organisation's scope prefix at DigDir (NULL: exposing
 * scopes is not configured, and every sync fails saying so). A declaration
 * synced for an app less than revalidate_s ago is not synced again. dd is
 * borrowed. NULL on allocation failure.
 */
struct scopes *scopes_new(struct digdir *dd, const char *prefix, long revalidate_s);
void scopes_free(struct scopes *sc);

/* 0 when this provider can sync exposed scopes, else ERR_UNCONFIGURED saying what to set. */
int scopes_check(const struct scopes *sc, struct err *err);

/*
 * Makes DigDir match the declaration for the app (description
 * "<cluster>:<namespace>:<app>"), writing only what differs and at most
 * SCOPES_MAX_WRITES changes per call (ERR_THROTTLED past it: the rest follow
 * at the next call). A scope of the same name owned by another app fails
 * with ERR_CONFLICT naming its owner. A consumer grant DigDir refuses (HTTP
 * 400) is skipped: *ret_refused (may be NULL; NULL when none, else a new
 * array of {scope, orgno, reason}) names each. When DigDir is unreachable
 * and this exact declaration was synced before, the last result is kept.
 * *ret_names (caller frees) gets the enabled scopes' full names, space
 * separated.
 */
int scopes_sync(struct scopes *sc, const char *app_description, const struct scopes_decl *decl,
		int64_t deadline_ms, char **ret_names, json_t **ret_refused, struct err *err);

/*
 * The organisation's scopes (inactive ones too) whose description names
 * the app. *ret is a new array of DigDir's scope objects.
 */
int scopes_list_owned(struct digdir *dd, const char *app_description, int64_t deadline_ms,
		      json_t **ret, struct err *err);

/* GET /scopes/access?scope=full_name: *ret is a new array of consumer entries. */
int scopes_get_access(struct digdir *dd, const char *full_name, int64_t deadline_ms, json_t **ret,
		      struct err *err);

/* DELETE /scopes?scope=full_name: DigDir deactivates the scope. */
int scopes_deactivate(struct digdir *dd, const char *full_name, int64_t deadline_ms,
		      struct err *err);

/* Pure helpers, exported for the unit tests. */

/* Whether a DigDir scope object's description names the app ("<product> - <app>"). */
bool scopes_owned_by(const json_t *scope, const char *app_description);

/*
 * The POST/PUT body of an entry, field for field as digdirator sends it.
 * prefix is the organisation's scope prefix (DigDir requires it);
 * delegation_issuer is the issuer of the altinn delegation source or NULL.
 * A new object, or NULL on allocation failure.
 */
json_t *scopes_registration(const struct scopes_entry *e, const char *app_description,
			    const char *prefix, const char *delegation_issuer);

/* Whether the registered scope differs from the body in any field the body sets. */
bool scopes_differs(const json_t *have, const json_t *want);

/* Whether a nine-digit organisation number has a valid mod-11 check digit. */
bool scopes_orgno_valid(const char *orgno);

#endif
