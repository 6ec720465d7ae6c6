/*
 * maskinporten: the authorization server's metadata document and the admin
 * access token (a JWT grant signed with the organisation's key and, when
 * configured, its business certificate chain in x5c), cached and shared.
 */
#ifndef MCP_MASKINPORTEN_H
#define MCP_MASKINPORTEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "err.h"
#include "http.h"
#include "keys.h"

/*
 * The admin token asks only for what its calls need: reading and writing
 * clients always, and idporten:scopes.write (an API provider's scope, which
 * many organisations' admin clients were never given) only for the calls of
 * exposed scopes.
 */
#define MP_ADMIN_SCOPES_DEFAULT "idporten:dcr.read idporten:dcr.write"
#define MP_SCOPES_WRITE		"idporten:scopes.write"

/* Which admin token a call needs. */
enum mp_admin {
	MP_ADMIN_CLIENTS = 0, /* admin_scopes */
	MP_ADMIN_EXPOSE = 1,  /* admin_scopes plus idporten:scopes.write */
};

struct mp_config {
	/* e.g. https://test.maskinporten.no/.well-known/oauth-authorization-server */
	const char *well_known_url;
	const char *admin_client_id; /* iss of the admin grant */
	const char *admin_key_file;  /* PEM private key */
	const char *admin_cert_file; /* PEM chain, leaf first: sent as x5c. NULL: use admin_kid */
	const char *admin_kid;	     /* kid of a pre-registered key, when no certificate */
	const char *admin_scopes;    /* NULL: MP_ADMIN_SCOPES_DEFAULT */
	const char *org_number;	     /* the organisation number; NULL: from the admin token */
	bool trust_endpoints;	  /* accept token_endpoint and jwks_uri off the issuer's origin */
	long metadata_refresh_ms; /* fetch the metadata again this often; 0: daily */
};

/*
 * The metadata document. Strings are owned by the mp and live as long as it,
 * even after a refresh replaced the document (the old one is kept).
 */
struct mp_metadata {
	const char *well_known_url;
	const char *issuer;
	const char *token_endpoint;
	const char *jwks_uri;
};

struct mp;

/* Loads the admin key (and chain). Strings are copied. NULL with err filled. */
struct mp *mp_new(struct http *http, const struct mp_config *config, struct err *err);
void mp_free(struct mp *mp);

/*
 * Fetches and validates the metadata (issuer + "/.well-known/oauth-authorization-server"
 * must be the configured URL; token endpoint and JWKS URI present and on the
 * issuer's origin unless trust_endpoints), then answers from memory. It is
 * fetched again once a day and after mp_metadata_stale(); while a refresh
 * fails, the document last fetched is kept. Returns 0 with *ret borrowed for
 * the life of mp.
 */
int mp_metadata(struct mp *mp, int64_t deadline_ms, const struct mp_metadata **ret,
		struct err *err);

/* Asks for a fresh metadata document at the next mp_metadata() (at most once a minute). */
void mp_metadata_stale(struct mp *mp);

/*
 * An admin access token for which kind of call, fetched with a JWT grant and
 * cached until shortly before it expires. One refresh at a time however many
 * callers. SECRET: *ret_token is a copy the caller frees with secret_free().
 */
int mp_admin_token(struct mp *mp, enum mp_admin which, int64_t deadline_ms, char **ret_token,
		   struct err *err);

/* Forgets the cached admin token if it is still token (after a 401 from DigDir). */
void mp_admin_token_invalidate(struct mp *mp, const char *token);

/*
 * The organisation number ("889640782"): the configured one, else the
 * admin token's consumer.ID ("0192:889640782"), or NULL before a token was
 * fetched.
 */
const char *mp_org_number(struct mp *mp);

/*
 * Gets an access token for an app client: signs a grant with key/kid for
 * client_id and scope, posts it to token_endpoint with audience issuer.
 * Returns 0 with *ret_response the parsed JSON answer (SECRET: contains
 * access_token), or a negative errno with err naming Maskinporten's error and
 * description.
 */
int mp_token_request(struct http *http, const char *token_endpoint, const char *issuer,
		     const struct keys_key *key, const char *kid, const char *client_id,
		     const char *scope, int64_t deadline_ms, json_t **ret_response,
		     struct err *err);

/* The parsers of Maskinporten's answers, exported for the fuzzers (tests/fuzz). */

/* Validates a metadata answer for well_known_url. Returns 0 with *ret filled:
 * well_known_url borrowed, the other strings malloc'd (the caller frees them). */
int mp_parse_metadata(const char *well_known_url, const struct http_response *resp,
		      bool trust_endpoints, struct mp_metadata *ret, struct err *err);

/* A token endpoint answer: 0 with *ret_response the parsed JSON (SECRET: holds
 * access_token; json_decref), or Maskinporten's error code and description in err. */
int mp_parse_token_answer(const struct http_response *resp, bool admin, json_t **ret_response,
			  struct err *err);

/* The organisation number from an access token's unverified claims into ret
 * (len bytes): consumer.ID "0192:<orgno>", the one claim Maskinporten
 * promises; "" when none. */
void mp_token_orgno(const char *token, char *ret, size_t len);

#endif
