/*
 * maskinporten: the metadata document, the admin access token and app token
 * requests. The admin token is fetched with a JWT grant (x5c of the business
 * certificate chain, or the kid of a pre-registered key) and cached until
 * shortly before it expires; one refresh runs at a time and other callers
 * wait for it.
 *
 * Must never log or put into an error: grants, access tokens, or the token
 * endpoint's answers (only Maskinporten's error code and description).
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "clock.h"
#include "keys.h"
#include "log.h"
#include "maskinporten.h"

#define WELL_KNOWN_SUFFIX ".well-known/oauth-authorization-server"
#define GRANT_LIFETIME	  60 /* seconds; Maskinporten allows at most 120 */
#define TOKEN_MARGIN_S	  60 /* refresh this long before expiry, or 10% of the lifetime */
#define META_MAX_AGE_MS	  (24 * 3600 * 1000L) /* the metadata is fetched again daily, by default */
#define META_RETRY_MS	  (60 * 1000L)	      /* and at most this often on demand */

/* A metadata document; every one fetched is kept, so borrowed pointers stay valid. */
struct meta_doc {
	struct mp_metadata m;
	struct meta_doc *older;
};

/* One cached admin token. SECRET: token. */
struct admin_token {
	char *scopes;
	char *token;
	int64_t refresh_at_ms;
	bool refreshing;
};

struct mp {
	struct http *http;
	char *well_known_url;
	char *admin_client_id;
	char *admin_kid;
	struct keys_key *admin_key;
	json_t *x5c; /* NULL when the admin key is identified by kid */
	bool trust_endpoints;
	int64_t meta_max_age_ms;

	/* Metadata; meta_lock is held across a fetch. */
	pthread_mutex_t meta_lock;
	struct meta_doc *meta; /* the current document, NULL before the first fetch */
	int64_t meta_at_ms;    /* when it was fetched (or last confirmed) */
	int64_t meta_retry_ms; /* after a failed refresh, none before this */
	int64_t stale_ok_ms;   /* mp_metadata_stale() counts again from this */
	bool meta_stale;

	/* The admin tokens, one per enum mp_admin. Guarded by lock; cond wakes waiters. */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct admin_token tok[2];
	char orgno[32];
};

static char *dup_or_null(const char *s)
{
	return s && *s ? strdup(s) : NULL;
}

/* Whether the space-separated list holds word. */
static bool has_word(const char *list, const char *word)
{
	size_t n = strlen(word);

	for (const char *p = list; (p = strstr(p, word)); p += n)
		if ((p == list || p[-1] == ' ') && (p[n] == ' ' || p[n] == '\0'))
			return true;
	return false;
}

/* The scopes of the two admin tokens: as configured, and the same plus scopes.write. */
static int admin_scopes(struct mp *mp, const char *configured, struct err *err)
{
	const char *base = configured && *configured ? configured : MP_ADMIN_SCOPES_DEFAULT;

	mp->tok[MP_ADMIN_CLIENTS].scopes = strdup(base);
	if (has_word(base, MP_SCOPES_WRITE))
		mp->tok[MP_ADMIN_EXPOSE].scopes = strdup(base);
	else if (asprintf(&mp->tok[MP_ADMIN_EXPOSE].scopes, "%s %s", base, MP_SCOPES_WRITE) < 0)
		mp->tok[MP_ADMIN_EXPOSE].scopes = NULL;
	if (!mp->tok[MP_ADMIN_CLIENTS].scopes || !mp->tok[MP_ADMIN_EXPOSE].scopes)
		return err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
	return 0;
}

static void meta_free(struct meta_doc *d)
{
	while (d) {
		struct meta_doc *older = d->older;

		free((char *)d->m.issuer);
		free((char *)d->m.token_endpoint);
		free((char *)d->m.jwks_uri);
		free(d);
		d = older;
	}
}

struct mp *mp_new(struct http *http, const struct mp_config *config, struct err *err)
{
	struct mp *mp = NULL;

	mp = calloc(1, sizeof(*mp));
	if (!mp) {
		err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
		return NULL;
	}
	pthread_mutex_init(&mp->meta_lock, NULL);
	pthread_mutex_init(&mp->lock, NULL);
	clock_cond_init(&mp->cond);
	mp->http = http;

	mp->well_known_url = dup_or_null(config->well_known_url);
	mp->admin_client_id = dup_or_null(config->admin_client_id);
	mp->admin_kid = dup_or_null(config->admin_kid);
	mp->trust_endpoints = config->trust_endpoints;
	mp->meta_max_age_ms =
	    config->metadata_refresh_ms > 0 ? config->metadata_refresh_ms : META_MAX_AGE_MS;
	if (!mp->well_known_url) {
		err_set(err, ERR_INVALID, EINVAL, "missing the Maskinporten well-known URL");
		goto fail;
	}
	if (admin_scopes(mp, config->admin_scopes, err) < 0)
		goto fail;
	if (config->org_number && *config->org_number) {
		if (strlen(config->org_number) != 9 ||
		    strspn(config->org_number, "0123456789") != 9) {
			err_set(err, ERR_INVALID, EINVAL,
				"--org-number must be the organisation's nine digits");
			goto fail;
		}
		snprintf(mp->orgno, sizeof(mp->orgno), "%s", config->org_number);
	}
	/* The admin key is needed only for admin tokens: app token requests work without. */
	if (config->admin_key_file && *config->admin_key_file) {
		if (!mp->admin_client_id) {
			err_set(err, ERR_INVALID, EINVAL, "missing the admin client id");
			goto fail;
		}
		mp->admin_key = keys_key_from_pem_file(config->admin_key_file, err);
		if (!mp->admin_key)
			goto fail;
		if (config->admin_cert_file && *config->admin_cert_file) {
			mp->x5c = keys_x5c_from_pem_file(config->admin_cert_file, err);
			if (!mp->x5c)
				goto fail;
		} else if (!mp->admin_kid) {
			err_set(err, ERR_INVALID, EINVAL,
				"the admin key needs --admin-cert-file (x5c) or --admin-kid");
			goto fail;
		}
	}
	return mp;
fail:
	mp_free(mp);
	return NULL;
}

void mp_free(struct mp *mp)
{
	if (!mp)
		return;
	free(mp->well_known_url);
	free(mp->admin_client_id);
	free(mp->admin_kid);
	keys_key_free(mp->admin_key);
	json_decref(mp->x5c);
	meta_free(mp->meta);
	for (size_t i = 0; i < 2; i++) {
		free(mp->tok[i].scopes);
		secret_free(mp->tok[i].token);
	}
	pthread_mutex_destroy(&mp->meta_lock);
	pthread_mutex_destroy(&mp->lock);
	pthread_cond_destroy(&mp->cond);
	free(mp);
}

int mp_parse_metadata(const char *well_known_url, const struct http_response *resp,
		      bool trust_endpoints, struct mp_metadata *ret, struct err *err)
{
	const char *issuer = NULL, *token_endpoint = NULL, *jwks_uri = NULL;
	struct mp_metadata meta = { .well_known_url = well_known_url };
	json_error_t jerr;
	json_t *doc = NULL;
	char joined[1024];
	int r;

	if (resp->status != 200) {
		if (err)
			err->http_status = resp->status;
		r = err_set(err, resp->status >= 500 ? ERR_UNAVAILABLE : ERR_BAD_RESPONSE, EPROTO,
			    "Maskinporten metadata %s: HTTP %ld", well_known_url, resp->status);
		goto out;
	}
	if (!http_is_json(resp->content_type)) {
		r = err_set(err, ERR_BAD_RESPONSE, EPROTO,
			    "Maskinporten metadata %s: Content-Type '%s', not application/json",
			    well_known_url, resp->content_type);
		goto out;
	}
	doc = json_loadb(resp->body, resp->body_len, JSON_REJECT_DUPLICATES, &jerr);
	if (!doc ||
	    json_unpack_ex(doc, &jerr, 0, "{s:s, s:s, s:s}", "issuer", &issuer, "token_endpoint",
			   &token_endpoint, "jwks_uri", &jwks_uri) < 0 ||
	    !*issuer || !*token_endpoint || !*jwks_uri) {
		r = err_set(err, ERR_BAD_RESPONSE, EPROTO,
			    "Maskinporten metadata %s: not a metadata document (%s)",
			    well_known_url, doc ? jerr.text : "not JSON");
		goto out;
	}
	/* The issuer must serve this very document (a trailing '/' on it is absorbed). */
	snprintf(joined, sizeof(joined), "%s%s%s", issuer,
		 issuer[strlen(issuer) - 1] == '/' ? "" : "/", WELL_KNOWN_SUFFIX);
	if (strcmp(joined, well_known_url) != 0) {
		r = err_set(err, ERR_BAD_RESPONSE, EPROTO,
			    "Maskinporten metadata: issuer %s does not match the well-known URL %s",
			    issuer, well_known_url);
		goto out;
	}
	/*
	 * The admin grant goes to token_endpoint, and a grant sent elsewhere can
	 * be replayed there: both endpoints must be the issuer's own origin,
	 * unless the operator said otherwise.
	 */
	if (!trust_endpoints &&
	    (!http_same_origin(token_endpoint, issuer) || !http_same_origin(jwks_uri, issuer))) {
		r = err_set(
		    err, ERR_BAD_RESPONSE, EPROTO,
		    "Maskinporten metadata: token_endpoint %.200s and jwks_uri %.200s must "
		    "be URLs on the issuer's origin (%.200s); set --trust-metadata-endpoints "
		    "only if that is how your Maskinporten is deployed",
		    token_endpoint, jwks_uri, issuer);
		goto out;
	}
	meta.issuer = strdup(issuer);
	meta.token_endpoint = strdup(token_endpoint);
	meta.jwks_uri = strdup(jwks_uri);
	if (!meta.issuer || !meta.token_endpoint || !meta.jwks_uri) {
		r = err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
		goto out;
	}
	*ret = meta;
	memset(&meta, 0, sizeof(meta));
	r = 0;
out:
	free((char *)meta.issuer);
	free((char *)meta.token_endpoint);
	free((char *)meta.jwks_uri);
	json_decref(doc);
	return r;
}

static int fetch_metadata(struct mp *mp, int64_t deadline_ms, struct mp_metadata *ret,
			  struct err *err)
{
	struct http_request req = {
		.method = "GET",
		.url = mp->well_known_url,
		.service = "maskinporten",
		.endpoint = "GET /.well-known/oauth-authorization-server",
		.idempotent = true,
		.deadline_ms = deadline_ms,
	};
	struct http_response resp = { 0 };
	int r;

	r = http_do(mp->http, &req, &resp, err);
	if (r == 0)
		r = mp_parse_metadata(mp->well_known_url, &resp, mp->trust_endpoints, ret, err);
	http_response_release(&resp);
	return r;
}

static bool same_metadata(const struct mp_metadata *a, const struct mp_metadata *b)
{
	return !strcmp(a->issuer, b->issuer) && !strcmp(a->token_endpoint, b->token_endpoint) &&
	       !strcmp(a->jwks_uri, b->jwks_uri);
}

int mp_metadata(struct mp *mp, int64_t deadline_ms, const struct mp_metadata **ret, struct err *err)
{
	struct mp_metadata fresh = { 0 };
	struct meta_doc *d;
	int64_t now = clock_now_ms();
	int r = 0;

	pthread_mutex_lock(&mp->meta_lock);
	if (mp->meta && ((!mp->meta_stale && now - mp->meta_at_ms < mp->meta_max_age_ms) ||
			 now < mp->meta_retry_ms))
		goto out;
	r = fetch_metadata(mp, deadline_ms, &fresh, err);
	if (r < 0) {
		/* A refresh that fails keeps the document we have; the next try waits a minute. */
		if (mp->meta) {
			log_warn("refreshing Maskinporten's metadata failed, keeping the one "
				 "fetched before: %s",
				 err ? err->msg : "");
			mp->meta_retry_ms = now + META_RETRY_MS;
			r = 0;
		}
		goto out;
	}
	mp->meta_at_ms = now;
	mp->meta_stale = false;
	if (mp->meta && same_metadata(&mp->meta->m, &fresh)) {
		free((char *)fresh.issuer);
		free((char *)fresh.token_endpoint);
		free((char *)fresh.jwks_uri);
		goto out;
	}
	d = calloc(1, sizeof(*d));
	if (!d) {
		free((char *)fresh.issuer);
		free((char *)fresh.token_endpoint);
		free((char *)fresh.jwks_uri);
		r = err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
		goto out;
	}
	if (mp->meta)
		log_info("Maskinporten's metadata changed: issuer %s, token endpoint %s",
			 fresh.issuer, fresh.token_endpoint);
	d->m = fresh;
	d->older = mp->meta;
	mp->meta = d;
out:
	if (r == 0)
		*ret = &mp->meta->m;
	pthread_mutex_unlock(&mp->meta_lock);
	return r;
}

void mp_metadata_stale(struct mp *mp)
{
	int64_t now = clock_now_ms();

	pthread_mutex_lock(&mp->meta_lock);
	if (now >= mp->stale_ok_ms) {
		mp->meta_stale = true;
		mp->stale_ok_ms = now + META_RETRY_MS;
	}
	pthread_mutex_unlock(&mp->meta_lock);
}

/* What a person should do about each of Maskinporten's error codes. */
static const char *hint(const char *code, bool admin)
{
	if (!strcmp(code, "invalid_scope"))
		return admin
			   ? "the admin client lacks these scopes: check --admin-scopes and the "
			     "admin client's registration"
			   : "the scope is not registered on the client: add it to the client's "
			     "scopes (the SecretProviderClass `scopes` parameter) and mount again";
	if (!strcmp(code, "invalid_grant") || !strcmp(code, "invalid_client"))
		return admin ? "check --admin-client-id, the admin key and certificate, and the "
			       "clock"
			     : "check the client id and that its key is registered (new keys take "
			       "up to 2 minutes to reach Maskinporten), and the clock";
	if (!strcmp(code, "forbidden"))
		return "the organisation has no access to the scope: ask the scope's owner to "
		       "grant it";
	if (!strcmp(code, "invalid_request"))
		return "the grant was malformed";
	return "see Maskinporten's error description";
}

struct grant_ctx {
	const struct keys_key *key;
	const char *kid;
	const json_t *x5c;
	const char *iss;
	const char *aud;
	const char *scope;
};

/* A fresh grant (new jti) for every attempt. SECRET: the body. */
static int make_grant_body(void *p, char **ret_body, size_t *ret_len)
{
	static const char prefix[] =
	    "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=";
	struct grant_ctx *g = p;
	char *jwt, *body;
	size_t jlen;

	jwt = keys_grant(g->key, g->kid, g->x5c, g->iss, g->aud, g->scope, (int64_t)time(NULL),
			 GRANT_LIFETIME);
	if (!jwt)
		return -EIO;
	/* A compact JWS is base64url and dots: safe in a form body as it is. */
	jlen = strlen(jwt);
	body = malloc(sizeof(prefix) + jlen);
	if (!body) {
		secret_free(jwt);
		return -ENOMEM;
	}
	memcpy(body, prefix, sizeof(prefix) - 1);
	memcpy(body + sizeof(prefix) - 1, jwt, jlen + 1);
	secret_free(jwt);
	*ret_body = body;
	*ret_len = sizeof(prefix) - 1 + jlen;
	return 0;
}

static int token_request(struct http *http, const char *token_endpoint, const struct grant_ctx *g,
			 bool admin, int64_t deadline_ms, json_t **ret_response, struct err *err)
{
	struct http_request req = {
		.method = "POST",
		.url = token_endpoint,
		.service = "maskinporten",
		.endpoint = "POST /token",
		.content_type = "application/x-www-form-urlencoded",
		.idempotent = false,
		.deadline_ms = deadline_ms,
		.make_body = make_grant_body,
		.free_body = secret_free,
		.body_ctx = (void *)g,
	};
	struct http_response resp = { 0 };
	int r;

	r = http_do(http, &req, &resp, err);
	if (r == 0)
		r = mp_parse_token_answer(&resp, admin, ret_response, err);
	http_response_release(&resp);
	return r;
}

int mp_parse_token_answer(const struct http_response *resp, bool admin, json_t **ret_response,
			  struct err *err)
{
	const char *code = NULL, *desc = NULL, *token = NULL;
	json_error_t jerr;
	json_t *doc = NULL;
	int r;

	/* Only the error fields are ever read out of the answer into messages. */
	doc = json_loadb(resp->body, resp->body_len, JSON_REJECT_DUPLICATES, &jerr);
	if (resp->status != 200) {
		if (err)
			err->http_status = resp->status;
		if (doc && json_unpack_ex(doc, &jerr, 0, "{s:s, s?s}", "error", &code,
					  "error_description", &desc) == 0) {
			r = err_set(err, ERR_UPSTREAM, EPERM,
				    "Maskinporten refused the grant: %s: %s (%s)", code,
				    desc ? desc : "no description", hint(code, admin));
			if (err)
				snprintf(err->code, sizeof(err->code), "%s", code);
		} else
			r = err_set(err, ERR_UPSTREAM, EPROTO,
				    "Maskinporten's token endpoint answered HTTP %ld without an "
				    "error code",
				    resp->status);
		goto out;
	}
	if (!http_is_json(resp->content_type)) {
		r = err_set(err, ERR_BAD_RESPONSE, EPROTO,
			    "Maskinporten's token endpoint answered '%.60s', not JSON",
			    resp->content_type[0] ? resp->content_type : "untyped");
		goto out;
	}
	if (!doc || json_unpack_ex(doc, &jerr, 0, "{s:s}", "access_token", &token) < 0 || !*token) {
		r = err_set(err, ERR_BAD_RESPONSE, EPROTO,
			    "Maskinporten's token endpoint answered without an access_token");
		goto out;
	}
	*ret_response = doc;
	doc = NULL;
	r = 0;
out:
	json_decref(doc);
	return r;
}

int mp_token_request(struct http *http, const char *token_endpoint, const char *issuer,
		     const struct keys_key *key, const char *kid, const char *client_id,
		     const char *scope, int64_t deadline_ms, json_t **ret_response, struct err *err)
{
	struct grant_ctx g = {
		.key = key, .kid = kid, .iss = client_id, .aud = issuer, .scope = scope
	};

	return token_request(http, token_endpoint, &g, false, deadline_ms, ret_response, err);
}

/*
 * The organisation number out of the admin token's claims: consumer.ID
 * "0192:<orgno>", which Maskinporten promises is always present
 * (client_orgno is an old claim it is removing). Not verified: the token
 * came over TLS from the issuer we trust, and it is only used to read scope
 * access lists.
 */
void mp_token_orgno(const char *token, char *ret, size_t len)
{
	const char *p1, *p2, *id = NULL;
	unsigned char *raw = NULL;
	json_t *claims = NULL;
	size_t rawlen = 0;
	char *part = NULL;

	ret[0] = '\0';
	p1 = strchr(token, '.');
	p2 = p1 ? strchr(p1 + 1, '.') : NULL;
	if (!p2)
		return;
	part = strndup(p1 + 1, (size_t)(p2 - p1 - 1));
	raw = part ? keys_b64url_decode(part, &rawlen) : NULL;
	claims = raw ? json_loadb((const char *)raw, rawlen, JSON_REJECT_DUPLICATES, NULL) : NULL;
	if (claims && json_unpack(claims, "{s:{s:s}}", "consumer", "ID", &id) == 0 &&
	    strncmp(id, "0192:", 5) == 0)
		snprintf(ret, len, "%s", id + 5);
	json_decref(claims);
	free(raw);
	free(part);
}

/* Whether a failed token request says the metadata we hold may be out of date. */
static bool metadata_suspect(const struct err *err)
{
	return err->kind == ERR_UNAVAILABLE || err->kind == ERR_BAD_RESPONSE ||
	       err->http_status == 404 || err->http_status == 405;
}

static int fetch_admin_token(struct mp *mp, enum mp_admin which, int64_t deadline_ms,
			     char **ret_token, long *ret_lifetime, struct err *err)
{
	const struct mp_metadata *meta;
	struct grant_ctx g = { 0 };
	json_t *resp = NULL, *jexp;
	const char *token;
	int r;

	if (!mp->admin_key)
		return err_set(err, ERR_INVALID, EINVAL,
			       "no admin key configured (--admin-key-file)");
	r = mp_metadata(mp, deadline_ms, &meta, err);
	if (r < 0)
		return r;
	g = (struct grant_ctx){ .key = mp->admin_key,
				.kid = mp->x5c ? NULL : mp->admin_kid,
				.x5c = mp->x5c,
				.iss = mp->admin_client_id,
				.aud = meta->issuer,
				.scope = mp->tok[which].scopes };
	r = token_request(mp->http, meta->token_endpoint, &g, true, deadline_ms, &resp, err);
	if (r < 0) {
		if (metadata_suspect(err))
			mp_metadata_stale(mp);
		if (which == MP_ADMIN_EXPOSE && !strcmp(err->code, "invalid_scope"))
			return err_set(
			    err, ERR_UPSTREAM, EPERM,
			    "exposing scopes needs the admin scope %s, and Maskinporten "
			    "refuses it to admin client %s (invalid_scope): ask DigDir to "
			    "give that client %s, or remove `exposes`",
			    MP_SCOPES_WRITE, mp->admin_client_id, MP_SCOPES_WRITE);
		err_prefix(err, "admin token: ");
		return r;
	}
	json_unpack(resp, "{s:s}", "access_token", &token);
	jexp = json_object_get(resp, "expires_in");
	*ret_lifetime = json_is_integer(jexp) && json_integer_value(jexp) > 0
			    ? (long)json_integer_value(jexp)
			    : 120;
	*ret_token = strdup(token);
	json_decref(resp);
	if (!*ret_token)
		return err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
	return 0;
}

int mp_admin_token(struct mp *mp, enum mp_admin which, int64_t deadline_ms, char **ret_token,
		   struct err *err)
{
	struct admin_token *t = &mp->tok[which == MP_ADMIN_EXPOSE ? MP_ADMIN_EXPOSE : 0];
	char *fresh = NULL, *copy = NULL;
	long lifetime = 0, margin;
	int r = 0;

	pthread_mutex_lock(&mp->lock);
	/* A valid cached token, or wait while another caller refreshes it. */
	for (;;) {
		if (t->token && clock_now_ms() < t->refresh_at_ms) {
			copy = strdup(t->token);
			pthread_mutex_unlock(&mp->lock);
			if (!copy)
				return err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
			*ret_token = copy;
			return 0;
		}
		if (!t->refreshing)
			break;
		if (!clock_wait_until(&mp->cond, &mp->lock, deadline_ms)) {
			pthread_mutex_unlock(&mp->lock);
			return err_set(err, ERR_TIMEOUT, ETIMEDOUT,
				       "deadline passed waiting for the admin token");
		}
	}
	t->refreshing = true;
	pthread_mutex_unlock(&mp->lock);

	r = fetch_admin_token(mp, which, deadline_ms, &fresh, &lifetime, err);

	pthread_mutex_lock(&mp->lock);
	t->refreshing = false;
	if (r == 0) {
		secret_free(t->token);
		t->token = fresh;
		margin = lifetime / 10 < TOKEN_MARGIN_S ? lifetime / 10 : TOKEN_MARGIN_S;
		t->refresh_at_ms = clock_now_ms() + (int64_t)(lifetime - margin) * 1000;
		if (!mp->orgno[0])
			mp_token_orgno(fresh, mp->orgno, sizeof(mp->orgno));
		copy = strdup(fresh);
		if (!copy)
			r = err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
	}
	pthread_cond_broadcast(&mp->cond);
	pthread_mutex_unlock(&mp->lock);
	if (r == 0)
		*ret_token = copy;
	return r;
}

void mp_admin_token_invalidate(struct mp *mp, const char *token)
{
	pthread_mutex_lock(&mp->lock);
	for (size_t i = 0; i < 2; i++)
		if (mp->tok[i].token && token && strcmp(mp->tok[i].token, token) == 0) {
			secret_free(mp->tok[i].token);
			mp->tok[i].token = NULL;
		}
	pthread_mutex_unlock(&mp->lock);
}

const char *mp_org_number(struct mp *mp)
{
	const char *r;

	/* Written once, under the lock, always with the same value. */
	pthread_mutex_lock(&mp->lock);
	r = mp->orgno[0] ? mp->orgno : NULL;
	pthread_mutex_unlock(&mp->lock);
	return r;
}
