/*
 * digdir: DigDir's self-service admin API under /api/v1. Finds, creates and
 * updates Maskinporten clients, keeps their JWKS on the key schedule, and
 * checks which scopes the organisation may consume. Bodies are built with
 * jansson and parsed with JSON_REJECT_DUPLICATES and json_unpack_ex; listings
 * are streamed and parsed one entry at a time (jsonarray), because DigDir
 * neither pages them nor looks clients up by description, so an
 * organisation of thousands of clients answers with megabytes.
 *
 * Must never log or copy the admin token; error messages carry only DigDir's
 * own error texts, the endpoint and the correlation_id.
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "clock.h"
#include "digdir.h"
#include "hash.h"
#include "log.h"

#define API_SUFFIX	   "/api/v1"
#define SETTLE_POLL_MS	   250 /* first listing interval while a timed-out create may still land */
#define SETTLE_POLL_MAX_MS 4000
#define SETTLE_MAX_MS	   30000
/*
 * Client listings are shared by concurrent flights. A lookup may use a
 * listing up to list_reuse_ms old (2 s by default): a create it leads to is always confirmed
 * by a listing sent after the create, which settles any race. A confirming
 * listing waits for the creates still under way, for the callers woken by the
 * last listing that have not yet read it (a busy machine may leave them
 * unscheduled for a while, and each may lead to a create), and for a quiet moment
 * (LIST_QUIET_MS: the Mounts of a burst arrive spread over some
 * milliseconds), up to LIST_BATCH_MS, so that one listing confirms every
 * client a burst of new apps made.
 */
#define LIST_REUSE_MS 2000 /* the default of list_reuse_ms */
#define LIST_BATCH_MS 1000
#define LIST_QUIET_MS 50 /* ... and until no create began or ended for this long */

/*
 * The fields of a client a PUT may carry. DigDir's docs say to GET the
 * client, change it and PUT it back "(fjern created_date, last_updated)"
 * (felleslosninger/docs oidc_api_admin_maskinporten.md); what it sets itself
 * (client_id, client_orgno, created, active) and what a GET may carry beside
 * the registration (jwks_uri, supplier_orgno, ...) is not sent back, so a
 * PUT keeps only the registration's own fields (docs/digdir-api.md).
 */
static const char *const writable_fields[] = {
	"client_name",
	"description",
	"client_uri",
	"scopes",
	"integration_type",
	"application_type",
	"token_endpoint_auth_method",
	"grant_types",
	"access_token_lifetime",
	"authorization_lifetime",
	"refresh_token_lifetime",
	"refresh_token_usage",
	"redirect_uris",
	"post_logout_redirect_uris",
	"frontchannel_logout_uri",
	"frontchannel_logout_session_required",
	"sso_disabled",
	"code_challenge_method",
};

/*
 * When a listing was sent, or what a caller needs of one: sent after ms
 * (strictly: within a millisecond the order is unknown), and after the
 * answers of this process's first seq creates. Counting creates, not
 * milliseconds, orders a listing exactly after the creates it must show.
 */
struct stamp {
	int64_t ms;
	uint64_t seq;
};

static bool fresh_for(struct stamp sent, struct stamp need)
{
	return sent.ms > need.ms && sent.seq >= need.seq;
}

/* ---- the client listing, as kept ---------------------------------------- */

/* One listed client; strings are offsets into the listing's arena. */
struct listed {
	uint32_t id, description, scopes;
	uint32_t next; /* the next of its bucket, index + 1; 0 ends the chain */
	int64_t created_ms;
};

struct digdir_listing {
	char *arena;
	size_t alen, acap;
	struct listed *v;
	size_t n, cap;
	uint32_t *buckets; /* index + 1 of the first entry; 0: empty */
	size_t nbuckets;
};

struct digdir {
	struct http *http;
	struct mp *mp;
	char *api; /* base URL ending in /api/v1 */
	char *client_name;
	char *client_uri;
	char *default_scope;
	long access_token_lifetime;
	long authorization_lifetime;
	long scope_cache_ms;
	size_t max_listing;
	long list_reuse_ms;

	/* Scope names the organisation may consume; guarded by scope_lock. */
	pthread_mutex_t scope_lock;
	json_t *consumable; /* object: name -> true */
	int64_t consumable_at_ms;

	/* The shared client listing; guarded by list_lock (see list_fresh). */
	pthread_mutex_t list_lock;
	pthread_cond_t list_done;
	pthread_cond_t create_done;
	struct digdir_listing *list; /* the last successful listing; read under list_lock */
	struct stamp list_at;	     /* when its request was sent */
	bool list_running;	     /* a listing is under way ... */
	bool list_batching;	     /* ... and not sent yet, or ... */
	struct stamp next_at;	     /* ... sent at this stamp */
	int creating;		     /* creates sent and not answered yet */
	int list_waiting;	     /* callers waiting for the listing under way */
	int list_unread;	     /* callers woken by its answer, not yet back under the lock */
	int64_t create_moved_ms;     /* when a create last began or ended */
	uint64_t creates_ended;
	unsigned list_gen; /* bumped when one finishes */
	int list_rc;	   /* how the last one ended */
	struct err list_err;
	/* Descriptions this process tried to create lately: their lookups want fresh listings. */
	struct {
		uint64_t hash;
		uint64_t seq; /* creates_ended when its answer came */
	} creates[64];
	unsigned ncreates;
};

static char *dup_or_null(const char *s)
{
	return s && *s ? strdup(s) : NULL;
}

struct digdir *digdir_new(struct http *http, struct mp *mp, const struct digdir_config *config,
			  struct err *err)
{
	struct digdir *dd = NULL;
	size_t n;

	if (!config->base_url || !*config->base_url) {
		err_set(err, ERR_INVALID, EINVAL, "missing the DigDir base URL");
		return NULL;
	}
	dd = calloc(1, sizeof(*dd));
	if (!dd)
		goto nomem;
	pthread_mutex_init(&dd->scope_lock, NULL);
	pthread_mutex_init(&dd->list_lock, NULL);
	clock_cond_init(&dd->list_done);
	clock_cond_init(&dd->create_done);
	dd->http = http;
	dd->mp = mp;
	/* "/api/v1" is appended unless the URL already ends with it. */
	n = strlen(config->base_url);
	while (n > 0 && config->base_url[n - 1] == '/')
		n--;
	if (n >= strlen(API_SUFFIX) &&
	    !strncmp(config->base_url + n - strlen(API_SUFFIX), API_SUFFIX, strlen(API_SUFFIX)))
		dd->api = strndup(config->base_url, n);
	else if (asprintf(&dd->api, "%.*s%s", (int)n, config->base_url, API_SUFFIX) < 0)
		dd->api = NULL;
	dd->client_name =
	    strdup(config->client_name && *config->client_name ? config->client_name
							       : "maskinporten-csi-provider");
	dd->client_uri = dup_or_null(config->client_uri);
	dd->default_scope = dup_or_null(config->default_scope);
	dd->access_token_lifetime =
	    config->access_token_lifetime > 0 ? config->access_token_lifetime : 3600;
	dd->authorization_lifetime =
	    config->authorization_lifetime > 0 ? config->authorization_lifetime : 7200;
	dd->scope_cache_ms =
	    (config->scope_cache_seconds > 0 ? config->scope_cache_seconds : 600) * 1000L;
	dd->max_listing =
	    config->max_listing_bytes > 0 ? config->max_listing_bytes : DIGDIR_MAX_LISTING_DEFAULT;
	dd->list_reuse_ms = config->list_reuse_ms > 0 ? config->list_reuse_ms : LIST_REUSE_MS;
	if (!dd->api || !dd->client_name)
		goto nomem;
	return dd;
nomem:
	err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
	digdir_free(dd);
	return NULL;
}

void digdir_free(struct digdir *dd)
{
	if (!dd)
		return;
	free(dd->api);
	free(dd->client_name);
	free(dd->client_uri);
	free(dd->default_scope);
	json_decref(dd->consumable);
	digdir_listing_free(dd->list);
	pthread_mutex_destroy(&dd->scope_lock);
	pthread_cond_destroy(&dd->list_done);
	pthread_cond_destroy(&dd->create_done);
	pthread_mutex_destroy(&dd->list_lock);
	free(dd);
}

const char *digdir_org_number(struct digdir *dd)
{
	return mp_org_number(dd->mp);
}

int digdir_status_error(const char *endpoint, const struct http_response *resp, struct err *err)
{
	const char *cid = NULL, *desc = NULL, *m;
	enum err_kind kind;
	char msgs[400] = "";
	json_t *doc, *errors = NULL, *e;
	size_t i, used = 0;

	doc = json_loadb(resp->body, resp->body_len, JSON_REJECT_DUPLICATES, NULL);
	if (doc)
		json_unpack(doc, "{s?s, s?o, s?s}", "correlation_id", &cid, "errors", &errors,
			    "error_description", &desc);
	/* errors[].errorMessage when there are any, else error_description. */
	for (i = 0; i < json_array_size(errors) && (e = json_array_get(errors, i)); i++) {
		if (json_unpack(e, "{s:s}", "errorMessage", &m) == 0 && used < sizeof(msgs))
			used += (size_t)snprintf(msgs + used, sizeof(msgs) - used, "%s%s",
						 used ? "; " : "", m);
	}
	if (!msgs[0] && desc)
		snprintf(msgs, sizeof(msgs), "%s", strncmp(desc, ", ", 2) == 0 ? desc + 2 : desc);

	if (resp->status == 401 || resp->status == 403)
		kind = ERR_PERMISSION;
	else if (resp->status == 404)
		kind = ERR_NOT_FOUND;
	else if (resp->status == 409)
		kind = ERR_CONFLICT;
	else if (resp->status == 429)
		kind = ERR_THROTTLED;
	else if (resp->status >= 500)
		kind = ERR_UNAVAILABLE;
	else
		kind = ERR_UPSTREAM;

	if (err) {
		err->http_status = resp->status;
		snprintf(err->correlation_id, sizeof(err->correlation_id), "%s", cid ? cid : "");
	}
	err_set(err, kind, EPROTO, "DigDir %s answered HTTP %ld: %s%s%s%s", endpoint, resp->status,
		msgs[0] ? msgs : "no error message",
		kind == ERR_PERMISSION ? " (check the admin client's scopes and credentials)" : "",
		cid ? ", correlation_id " : "", cid ? cid : "");
	json_decref(doc);
	switch (kind) {
	case ERR_NOT_FOUND:
		return -ENOENT;
	case ERR_CONFLICT:
		return -EEXIST;
	case ERR_PERMISSION:
		return -EACCES;
	default:
		return -EPROTO;
	}
}

/*
 * One request with the admin token the call needs. A 401 means our cached
 * admin token went stale: one more try with a fresh one. The answer's body is
 * in *ret (release with http_response_release) when the status is below 400.
 */
static int request(struct digdir *dd, struct http_request *req, unsigned flags,
		   struct http_response *ret, struct err *err)
{
	enum mp_admin which = flags & DIGDIR_EXPOSE ? MP_ADMIN_EXPOSE : MP_ADMIN_CLIENTS;
	struct http_response resp = { 0 };
	char *token = NULL;
	int r = 0, tries;

	for (tries = 0; tries < 2; tries++) {
		r = mp_admin_token(dd->mp, which, req->deadline_ms, &token, err);
		if (r < 0)
			goto out;
		req->bearer = token;
		r = http_do(dd->http, req, &resp, err);
		req->bearer = NULL;
		if (r < 0)
			goto out;
		if (resp.status != 401)
			break;
		mp_admin_token_invalidate(dd->mp, token);
		secret_free(token);
		token = NULL;
		if (tries == 0)
			http_response_release(&resp);
	}
	if (resp.status >= 400) {
		r = digdir_status_error(req->endpoint, &resp, err);
		goto out;
	}
	*ret = resp;
	resp = (struct http_response){ 0 };
	r = 0;
out:
	http_response_release(&resp);
	secret_free(token);
	return r;
}

static void begin(struct err *err, const char *endpoint)
{
	if (err) {
		err->correlation_id[0] = '\0';
		snprintf(err->endpoint, sizeof(err->endpoint), "digdir %s", endpoint);
	}
}

int digdir_call(struct digdir *dd, const char *method, const char *path, const char *endpoint,
		const json_t *body, unsigned flags, int64_t deadline_ms, json_t **ret,
		struct err *err)
{
	struct http_response resp = { 0 };
	struct http_request req = { 0 };
	char *url = NULL, *text = NULL;
	json_error_t jerr;
	json_t *doc = NULL;
	int r;

	begin(err, endpoint);
	if (asprintf(&url, "%s%s", dd->api, path) < 0) {
		url = NULL;
		r = err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
		goto out;
	}
	if (body) {
		text = json_dumps(body, JSON_COMPACT);
		if (!text) {
			r = err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
			goto out;
		}
	}
	req = (struct http_request){
		.method = method,
		.url = url,
		.service = "digdir",
		.endpoint = endpoint,
		.content_type = "application/json",
		.body = text,
		.body_len = text ? strlen(text) : 0,
		.idempotent = flags & DIGDIR_IDEMPOTENT,
		.deadline_ms = deadline_ms,
	};
	r = request(dd, &req, flags, &resp, err);
	if (r < 0)
		goto out;
	if (ret) {
		if (resp.body_len == 0) {
			doc = json_null();
		} else {
			if (!http_is_json(resp.content_type)) {
				r = err_set(err, ERR_BAD_RESPONSE, EPROTO,
					    "DigDir %s: answer is '%s', not JSON", endpoint,
					    resp.content_type[0] ? resp.content_type : "untyped");
				goto out;
			}
			doc = json_loadb(resp.body, resp.body_len, JSON_REJECT_DUPLICATES, &jerr);
			if (!doc) {
				r = err_set(err, ERR_BAD_RESPONSE, EPROTO,
					    "DigDir %s: malformed JSON in the answer (%s)",
					    endpoint, jerr.text);
				goto out;
			}
		}
		*ret = doc;
	}
	r = 0;
out:
	http_response_release(&resp);
	free(text);
	free(url);
	return r;
}

/* A streamed listing: the parser, and what the caller builds of it. */
struct streamed {
	struct jsonarray ja;
	void (*reset)(void *ctx);
	void *ctx;
};

/* The http sink of a streamed listing: every chunk goes to the parser. */
static int list_sink(void *ctx, const char *data, size_t len, struct err *err)
{
	struct streamed *s = ctx;

	return jsonarray_feed(&s->ja, data, len, err);
}

/* Before every attempt: a retry starts over, and so does what the caller built. */
static void list_restart(void *ctx)
{
	struct streamed *s = ctx;

	jsonarray_reset(&s->ja);
	if (s->reset)
		s->reset(s->ctx);
}

int digdir_call_list(struct digdir *dd, const char *path, const char *endpoint, unsigned flags,
		     jsonarray_fn fn, void (*reset)(void *ctx), void *ctx, int64_t deadline_ms,
		     struct err *err)
{
	struct http_response resp = { 0 };
	struct http_request req = { 0 };
	struct streamed st = { .reset = reset, .ctx = ctx };
	char what[128];
	char *url = NULL;
	int r;

	begin(err, endpoint);
	snprintf(what, sizeof(what), "DigDir %s", endpoint);
	jsonarray_init(&st.ja, what, DIGDIR_MAX_ENTRY, fn, ctx);
	if (asprintf(&url, "%s%s", dd->api, path) < 0) {
		url = NULL;
		r = err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
		goto out;
	}
	req = (struct http_request){
		.method = "GET",
		.url = url,
		.service = "digdir",
		.endpoint = endpoint,
		.content_type = "application/json",
		.idempotent = true,
		.deadline_ms = deadline_ms,
		.sink = list_sink,
		.restart = list_restart,
		.sink_ctx = &st,
		.sink_max = dd->max_listing,
	};
	r = request(dd, &req, flags | DIGDIR_IDEMPOTENT, &resp, err);
	if (r < 0)
		goto out;
	/* An empty 2xx answer never reached the sink: it is not a list either. */
	r = jsonarray_finish(&st.ja, err);
out:
	jsonarray_release(&st.ja);
	http_response_release(&resp);
	free(url);
	return r;
}

char *digdir_path(const char *prefix, const char *value, const char *suffix)
{
	char *esc = http_escape(value), *p = NULL;

	if (esc && asprintf(&p, "%s%s%s", prefix, esc, suffix) < 0)
		p = NULL;
	free(esc);
	return p;
}

/* "/clients/<escaped id><suffix>" */
static char *client_path(const char *client_id, const char *suffix)
{
	return digdir_path("/clients/", client_id, suffix);
}

/* ---- the kept listing ----------------------------------------------------- */

struct digdir_listing *digdir_listing_new(void)
{
	return calloc(1, sizeof(struct digdir_listing));
}

void digdir_listing_free(struct digdir_listing *l)
{
	if (!l)
		return;
	free(l->arena);
	free(l->v);
	free(l->buckets);
	free(l);
}

void digdir_listing_clear(void *ctx)
{
	struct digdir_listing *l = ctx;

	l->alen = 0;
	l->n = 0;
	if (l->buckets)
		memset(l->buckets, 0, l->nbuckets * sizeof(*l->buckets));
}

size_t digdir_listing_count(const struct digdir_listing *l)
{
	return l ? l->n : 0;
}

/* Copies s into the arena; returns its offset, or UINT32_MAX when memory or the arena ran out. */
static uint32_t intern(struct digdir_listing *l, const char *s)
{
	size_t n = strlen(s) + 1;
	uint32_t at;

	if (l->alen + n > UINT32_MAX - 1)
		return UINT32_MAX;
	if (l->alen + n > l->acap) {
		size_t cap = l->acap ? l->acap : 16384;
		char *p;

		while (cap < l->alen + n)
			cap *= 2;
		p = realloc(l->arena, cap);
		if (!p)
			return UINT32_MAX;
		l->arena = p;
		l->acap = cap;
	}
	at = (uint32_t)l->alen;
	memcpy(l->arena + at, s, n);
	l->alen += n;
	return at;
}

static uint64_t bucket_of(const struct digdir_listing *l, const char *description)
{
	return hash_str(HASH_INIT, description) & (l->nbuckets - 1);
}

/* Doubles the bucket array and chains every entry again. */
static int rehash(struct digdir_listing *l)
{
	size_t n = l->nbuckets ? l->nbuckets * 2 : 64;
	uint32_t *b = calloc(n, sizeof(*b));

	if (!b)
		return -ENOMEM;
	free(l->buckets);
	l->buckets = b;
	l->nbuckets = n;
	for (size_t i = 0; i < l->n; i++) {
		uint64_t h = bucket_of(l, l->arena + l->v[i].description);

		l->v[i].next = l->buckets[h];
		l->buckets[h] = (uint32_t)(i + 1);
	}
	return 0;
}

int digdir_listing_add(void *ctx, json_t *client, size_t index, struct err *err)
{
	struct digdir_listing *l = ctx;
	const char *id = NULL, *desc = NULL, *itype = NULL, *created = NULL;
	json_t *scopes = NULL, *active = NULL;
	struct listed e = { 0 };
	json_error_t jerr;
	char *key;

	if (json_unpack_ex(client, &jerr, 0, "{s:s, s?s, s?s, s?s, s?o, s?o}", "client_id", &id,
			   "description", &desc, "integration_type", &itype, "created", &created,
			   "scopes", &scopes, "active", &active) < 0)
		return err_set(err, ERR_BAD_RESPONSE, EPROTO,
			       "DigDir GET /clients: entry %zu is not a client (%s)", index,
			       jerr.text);
	/* Only what a lookup can pick: active maskinporten clients with a description. */
	if (json_is_false(active) || !desc || !itype || strcmp(itype, "maskinporten") != 0)
		return 0;
	key = scopes ? digdir_scopes_key(scopes) : strdup("");
	if (!key)
		return err_set(err, ERR_BAD_RESPONSE, EPROTO,
			       "DigDir GET /clients: entry %zu: scopes is not a list of names",
			       index);
	e.created_ms = INT64_MAX;
	digdir_parse_time(created, &e.created_ms);
	e.id = intern(l, id);
	e.description = intern(l, desc);
	e.scopes = intern(l, key);
	free(key);
	if (e.id == UINT32_MAX || e.description == UINT32_MAX || e.scopes == UINT32_MAX)
		return err_set(err, ERR_INTERNAL, ENOMEM, "out of memory keeping the listing");
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 256;
		struct listed *v = realloc(l->v, cap * sizeof(*v));

		if (!v)
			return err_set(err, ERR_INTERNAL, ENOMEM,
				       "out of memory keeping the listing");
		l->v = v;
		l->cap = cap;
	}
	l->v[l->n++] = e;
	if (l->n * 2 > l->nbuckets) {
		if (rehash(l) < 0)
			return err_set(err, ERR_INTERNAL, ENOMEM,
				       "out of memory keeping the listing");
	} else {
		uint64_t h = bucket_of(l, desc);

		l->v[l->n - 1].next = l->buckets[h];
		l->buckets[h] = (uint32_t)l->n;
	}
	return 0;
}

/* Sort key of a candidate: when it was created (unknown: last), then its id. */
static bool earlier(const struct digdir_listing *l, const struct listed *a, const struct listed *b)
{
	if (a->created_ms != b->created_ms)
		return a->created_ms < b->created_ms;
	return strcmp(l->arena + a->id, l->arena + b->id) < 0;
}

json_t *digdir_listing_find(const struct digdir_listing *l, const char *description)
{
	const struct listed *found[64];
	size_t n = 0;
	json_t *ids = json_array();

	if (!ids || !l || !l->nbuckets)
		return ids;
	for (uint32_t i = l->buckets[bucket_of(l, description)]; i; i = l->v[i - 1].next) {
		const struct listed *e = &l->v[i - 1];
		size_t at;

		if (strcmp(l->arena + e->description, description) != 0)
			continue;
		/* Insertion sort: a description has one client, rarely a few. */
		if (n == sizeof(found) / sizeof(found[0]))
			break;
		for (at = n; at > 0 && earlier(l, e, found[at - 1]); at--)
			found[at] = found[at - 1];
		found[at] = e;
		n++;
	}
	for (size_t i = 0; i < n; i++)
		if (json_array_append_new(ids, json_string(l->arena + found[i]->id)) < 0) {
			json_decref(ids);
			return NULL;
		}
	return ids;
}

static struct listed *listed_by_id(const struct digdir_listing *l, const char *description,
				   const char *client_id)
{
	if (!l || !l->nbuckets)
		return NULL;
	for (uint32_t i = l->buckets[bucket_of(l, description)]; i; i = l->v[i - 1].next)
		if (!strcmp(l->arena + l->v[i - 1].id, client_id))
			return &l->v[i - 1];
	return NULL;
}

const char *digdir_listing_scopes(const struct digdir_listing *l, const char *client_id)
{
	for (size_t i = 0; l && i < l->n; i++)
		if (!strcmp(l->arena + l->v[i].id, client_id))
			return l->arena + l->v[i].scopes;
	return NULL;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

char *digdir_scopes_key(const json_t *scopes)
{
	const char **v;
	size_t n = json_array_size(scopes), len = 1, at = 0, k = 0;
	char *key;

	if (!json_is_array(scopes))
		return NULL;
	v = calloc(n ? n : 1, sizeof(*v));
	if (!v)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		v[i] = json_string_value(json_array_get(scopes, i));
		if (!v[i]) {
			free(v);
			return NULL;
		}
		len += strlen(v[i]) + 1;
	}
	qsort(v, n, sizeof(*v), cmp_str);
	key = malloc(len);
	if (key) {
		for (size_t i = 0; i < n; i++) {
			size_t m = strlen(v[i]);

			if (k && !strcmp(v[i], v[k - 1]))
				continue; /* a set: duplicates collapse */
			v[k++] = v[i];
			if (at)
				key[at++] = ' ';
			memcpy(key + at, v[i], m);
			at += m;
		}
		key[at] = '\0';
	}
	free(v);
	return key;
}

/* The scope set key of plain names. */
static char *names_key(const char *const *scopes, size_t n)
{
	json_t *a = json_array();
	char *key;

	for (size_t i = 0; a && i < n; i++)
		if (json_array_append_new(a, json_string(scopes[i])) < 0) {
			json_decref(a);
			return NULL;
		}
	key = a ? digdir_scopes_key(a) : NULL;
	json_decref(a);
	return key;
}

int digdir_each_client(struct digdir *dd, jsonarray_fn fn, void (*reset)(void *ctx), void *ctx,
		       int64_t deadline_ms, struct err *err)
{
	return digdir_call_list(dd, "/clients", "GET /clients", 0, fn, reset, ctx, deadline_ms,
				err);
}

/* A whole listing, kept as this provider keeps them. */
static int list_clients(struct digdir *dd, int64_t deadline_ms, struct digdir_listing **ret,
			struct err *err)
{
	struct digdir_listing *l = digdir_listing_new();
	int r;

	if (!l)
		return err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
	r = digdir_each_client(dd, digdir_listing_add, digdir_listing_clear, l, deadline_ms, err);
	if (r < 0) {
		digdir_listing_free(l);
		return r;
	}
	*ret = l;
	return 0;
}

int digdir_parse_time(const char *s, int64_t *ret_ms)
{
	struct tm tm = { 0 };
	const char *p;
	long frac = 0, scale = 1000, off = 0;
	int oh, om, n;
	time_t t;

	if (!s)
		return -EINVAL;
	p = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
	if (!p)
		return -EINVAL;
	/* Fraction: keep milliseconds. */
	if (*p == '.') {
		for (p++; *p >= '0' && *p <= '9'; p++) {
			if (scale > 1) {
				scale /= 10;
				frac += (*p - '0') * scale;
			}
		}
	}
	if (*p == 'Z' || *p == 'z') {
		p++;
	} else if ((*p == '+' || *p == '-') && sscanf(p + 1, "%2d:%2d%n", &oh, &om, &n) == 2) {
		off = (oh * 60L + om) * 60L * (*p == '-' ? -1 : 1);
		p += 1 + n;
	} else {
		return -EINVAL;
	}
	if (*p)
		return -EINVAL;
	t = timegm(&tm);
	*ret_ms = ((int64_t)t - off) * 1000 + frac;
	return 0;
}

/* ---- the shared listing ---------------------------------------------------- */

/* Waits on cond (list_lock held) until woken or until_ms. -ETIMEDOUT once past it. */
static int wait_until(struct digdir *dd, pthread_cond_t *cond, int64_t until_ms)
{
	return clock_wait_until(cond, &dd->list_lock, until_ms) ? 0 : -ETIMEDOUT;
}

/*
 * A caller woken by a listing's answer holds list_lock again: what it read
 * there is decided (a client found, or a create announced), so a confirming
 * listing waiting for the burst need no longer wait for it.
 */
static void list_read(struct digdir *dd)
{
	if (--dd->list_unread == 0)
		pthread_cond_broadcast(&dd->create_done);
}

/*
 * A lookup found no client, so a create follows (after the access check):
 * the next confirming listing waits for its answer, and so confirms the
 * creates of a whole burst of new apps at once. Called with list_lock held,
 * by the lookup that read the listing: a confirming listing can then never
 * start in the gap between a flight's lookup and its create, however long the
 * scheduler leaves that flight waiting.
 */
static void create_begin_locked(struct digdir *dd)
{
	dd->creating++;
	dd->create_moved_ms = clock_now_ms();
}

/* The create announced by create_begin_locked will not be sent after all. */
static void create_cancel(struct digdir *dd)
{
	pthread_mutex_lock(&dd->list_lock);
	if (--dd->creating == 0)
		pthread_cond_broadcast(&dd->create_done);
	pthread_mutex_unlock(&dd->list_lock);
}

/*
 * The create's answer came (or the wait for it ended). Returns what a
 * listing must be to show what it did; lookups of description want the same.
 */
static struct stamp create_end(struct digdir *dd, const char *description)
{
	struct stamp need = { .ms = INT64_MIN };

	pthread_mutex_lock(&dd->list_lock);
	need.seq = ++dd->creates_ended;
	dd->creates[dd->ncreates % 64].hash = hash_str(HASH_INIT, description);
	dd->creates[dd->ncreates % 64].seq = need.seq;
	dd->ncreates++;
	dd->create_moved_ms = clock_now_ms();
	if (--dd->creating == 0)
		pthread_cond_broadcast(&dd->create_done);
	pthread_mutex_unlock(&dd->list_lock);
	return need;
}

/*
 * How fresh a lookup's listing must be: a shared one up to list_reuse_ms old
 * will do, unless this process tried to create the client. Then only a
 * listing sent after that attempt's answer can tell whether it happened, and
 * an older one would make us create the client a second time.
 */
static struct stamp lookup_need(struct digdir *dd, const char *description)
{
	struct stamp need = { .ms = clock_now_ms() - dd->list_reuse_ms };
	uint64_t h = hash_str(HASH_INIT, description);

	pthread_mutex_lock(&dd->list_lock);
	for (unsigned i = 0; i < 64 && i < dd->ncreates; i++)
		if (dd->creates[i].hash == h && dd->creates[i].seq > need.seq)
			need.seq = dd->creates[i].seq;
	pthread_mutex_unlock(&dd->list_lock);
	return need;
}

/*
 * Makes dd->list fresh enough for need: the last listing when it is, the one
 * under way when it will be, else a new one. With batch, the new one is sent
 * once the creates under way are answered (up to LIST_BATCH_MS later), and
 * every caller arriving meanwhile shares it. Returns 0 with list_lock held,
 * so the caller reads dd->list before another listing replaces it.
 */
static int list_fresh(struct digdir *dd, struct stamp need, bool batch, int64_t deadline_ms,
		      struct err *err)
{
	int64_t until = deadline_ms > 0 ? deadline_ms : INT64_MAX / 2;
	struct digdir_listing *list = NULL;
	struct err lerr = { 0 };
	struct stamp sent;
	int r;

	pthread_mutex_lock(&dd->list_lock);
	for (;;) {
		if (dd->list && fresh_for(dd->list_at, need))
			return 0;
		if (!dd->list_running)
			break;
		/* Wait for the listing under way; use it, or its failure, when it is fresh. */
		unsigned gen = dd->list_gen;
		bool fresh = dd->list_batching || fresh_for(dd->next_at, need);

		dd->list_waiting++;
		while (dd->list_gen == gen)
			if (wait_until(dd, &dd->list_done, until) < 0 && dd->list_gen == gen) {
				dd->list_waiting--;
				r = err_set(
				    err, ERR_TIMEOUT, ETIMEDOUT,
				    "DigDir GET /clients: timed out waiting for the listing");
				goto fail;
			}
		list_read(dd);
		if (fresh && dd->list_rc < 0) {
			if (err)
				*err = dd->list_err;
			r = dd->list_rc;
			goto fail;
		}
	}
	dd->list_running = true;
	if (batch) {
		int64_t batch_end = clock_now_ms() + LIST_BATCH_MS;

		dd->list_batching = true;
		for (;;) {
			int64_t quiet = dd->create_moved_ms + LIST_QUIET_MS;
			int64_t end = batch_end < until ? batch_end : until;

			bool settled = dd->creating == 0 && dd->list_unread == 0;

			if (settled && clock_now_ms() >= quiet)
				break;
			if (wait_until(dd, &dd->create_done, settled && quiet < end ? quiet : end) <
			    0)
				break;
		}
		dd->list_batching = false;
	}
	sent = dd->next_at = (struct stamp){ clock_now_ms(), dd->creates_ended };
	pthread_mutex_unlock(&dd->list_lock);

	r = list_clients(dd, deadline_ms, &list, &lerr);

	pthread_mutex_lock(&dd->list_lock);
	dd->list_running = false;
	dd->list_gen++;
	dd->list_unread += dd->list_waiting;
	dd->list_waiting = 0;
	dd->list_rc = r;
	dd->list_err = lerr;
	pthread_cond_broadcast(&dd->list_done);
	if (r < 0) {
		if (err)
			*err = lerr;
		goto fail;
	}
	digdir_listing_free(dd->list);
	dd->list = list;
	dd->list_at = sent;
	return 0;
fail:
	pthread_mutex_unlock(&dd->list_lock);
	return r;
}

/*
 * The ids listed for description (list_lock held): a new array, earliest
 * first. *ret_scopes (may be NULL) gets a copy of the first one's scope set.
 */
static json_t *find_locked(struct digdir *dd, const char *description, char **ret_scopes,
			   struct err *err)
{
	json_t *ids = digdir_listing_find(dd->list, description);
	const char *first = json_string_value(json_array_get(ids, 0));
	struct listed *e = first ? listed_by_id(dd->list, description, first) : NULL;

	if (!ids) {
		err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
		return NULL;
	}
	if (ret_scopes) {
		*ret_scopes = e ? strdup(dd->list->arena + e->scopes) : NULL;
		if (e && !*ret_scopes) {
			json_decref(ids);
			err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
			return NULL;
		}
	}
	return ids;
}

int digdir_lookup(struct digdir *dd, const char *description, int64_t deadline_ms, json_t **ret_ids,
		  struct err *err)
{
	json_t *ids;
	int r;

	r = list_fresh(dd, lookup_need(dd, description), false, deadline_ms, err);
	if (r < 0)
		return r;
	ids = find_locked(dd, description, NULL, err);
	pthread_mutex_unlock(&dd->list_lock);
	if (!ids)
		return -ENOMEM;
	*ret_ids = ids;
	return 0;
}

/* What we registered ourselves is what the kept listing shows, until the next listing. */
static void listing_update_scopes(struct digdir *dd, const char *description, const char *client_id,
				  const char *key)
{
	struct listed *e;
	uint32_t at;

	pthread_mutex_lock(&dd->list_lock);
	e = listed_by_id(dd->list, description, client_id);
	if (e) {
		at = intern(dd->list, key);
		if (at != UINT32_MAX)
			e->scopes = at;
		else
			dd->list_at.ms = INT64_MIN; /* no memory: the next lookup lists again */
	}
	pthread_mutex_unlock(&dd->list_lock);
}

int digdir_get_client(struct digdir *dd, const char *client_id, int64_t deadline_ms, json_t **ret,
		      struct err *err)
{
	char *path = client_path(client_id, "");
	json_t *c = NULL;
	const char *id;
	int r;

	if (!path)
		return err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
	r = digdir_call(dd, "GET", path, "GET /clients/{id}", NULL, DIGDIR_IDEMPOTENT, deadline_ms,
			&c, err);
	free(path);
	if (r < 0)
		return r;
	if (json_unpack(c, "{s:s}", "client_id", &id) < 0 || strcmp(id, client_id) != 0) {
		json_decref(c);
		return err_set(err, ERR_BAD_RESPONSE, EPROTO,
			       "DigDir GET /clients/{id}: the answer is not client %s", client_id);
	}
	*ret = c;
	return 0;
}

/* ---- which scopes the organisation may consume ----------------------------- */

struct consumable {
	json_t *set; /* name -> true */
	const char *orgno;
};

/* An entry of GET /scopes/access/all: an APPROVED grant to orgno counts. */
static int add_access(void *ctx, json_t *e, size_t i, struct err *err)
{
	struct consumable *c = ctx;
	const char *consumer, *scope, *state;
	json_error_t jerr;

	if (json_unpack_ex(e, &jerr, 0, "{s:s, s:s, s:s}", "consumer_orgno", &consumer, "scope",
			   &scope, "state", &state) < 0)
		return err_set(err, ERR_BAD_RESPONSE, EPROTO,
			       "DigDir GET /scopes/access/all: entry %zu: %s", i, jerr.text);
	if (!strcmp(consumer, c->orgno) && !strcmp(state, "APPROVED"))
		json_object_set_new(c->set, scope, json_true());
	return 0;
}

/* An entry of GET /scopes/all?accessible_for_all=true: open to everyone. */
static int add_open(void *ctx, json_t *e, size_t i, struct err *err)
{
	struct consumable *c = ctx;
	const char *name;
	json_error_t jerr;
	int afa = 1;

	if (json_unpack_ex(e, &jerr, 0, "{s:s, s?b}", "name", &name, "accessible_for_all", &afa) <
	    0)
		return err_set(err, ERR_BAD_RESPONSE, EPROTO,
			       "DigDir GET /scopes/all: entry %zu: %s", i, jerr.text);
	if (afa)
		json_object_set_new(c->set, name, json_true());
	return 0;
}

int digdir_parse_consumable(const json_t *access, const json_t *open, const char *orgno,
			    json_t **ret, struct err *err)
{
	struct consumable c = { .set = json_object(), .orgno = orgno };
	json_t *e;
	size_t i;
	int r = 0;

	if (!json_is_array(access) || !json_is_array(open) || !c.set) {
		r = err_set(err, ERR_BAD_RESPONSE, EPROTO,
			    "DigDir scope access lists: answer is not a list");
		goto out;
	}
	json_array_foreach(access, i, e) if ((r = add_access(&c, e, i, err)) < 0) goto out;
	json_array_foreach(open, i, e) if ((r = add_open(&c, e, i, err)) < 0) goto out;
	*ret = c.set;
	c.set = NULL;
out:
	json_decref(c.set);
	return r;
}

static void clear_set(void *ctx)
{
	json_object_clear(((struct consumable *)ctx)->set);
}

/* One of the two access lists, read on a thread of its own. */
struct list_job {
	struct digdir *dd;
	const char *path, *endpoint;
	jsonarray_fn fn;
	struct consumable c;
	int64_t deadline_ms;
	int r;
	struct err err;
};

static void *list_job_run(void *arg)
{
	struct list_job *j = arg;

	pthread_setname_np(pthread_self(), "mp-list");
	j->r = digdir_call_list(j->dd, j->path, j->endpoint, 0, j->fn, clear_set, &j->c,
				j->deadline_ms, &j->err);
	return NULL;
}

/*
 * Reads both access lists into a new object of consumable scope names. They
 * are independent, so the second is read on a thread beside the first: one
 * round trip, not two, before a new client is created.
 */
static int fetch_consumable(struct digdir *dd, const char *orgno, int64_t deadline_ms, json_t **ret,
			    struct err *err)
{
	struct list_job access = { dd,
				   "/scopes/access/all",
				   "GET /scopes/access/all",
				   add_access,
				   { json_object(), orgno },
				   deadline_ms,
				   0,
				   { 0 } };
	struct list_job open = { dd,
				 "/scopes/all?accessible_for_all=true",
				 "GET /scopes/all",
				 add_open,
				 { json_object(), orgno },
				 deadline_ms,
				 0,
				 { 0 } };
	pthread_t t;
	bool threaded;
	int r;

	if (!access.c.set || !open.c.set) {
		r = err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
		goto out;
	}
	threaded = pthread_create(&t, NULL, list_job_run, &open) == 0;
	list_job_run(&access);
	if (threaded)
		pthread_join(t, NULL);
	else
		list_job_run(&open);
	r = access.r < 0 ? access.r : open.r;
	if (r < 0) {
		if (err)
			*err = access.r < 0 ? access.err : open.err;
		goto out;
	}
	json_object_update(access.c.set, open.c.set);
	*ret = access.c.set;
	access.c.set = NULL;
out:
	json_decref(open.c.set);
	json_decref(access.c.set);
	return r;
}

/* An entry of GET /scopes/all: a public scope, whoever may consume it. */
static int add_public(void *ctx, json_t *e, size_t i, struct err *err)
{
	struct consumable *c = ctx;
	const char *name = json_string_value(json_object_get(e, "name"));

	if (name)
		json_object_set_new(c->set, name, json_true());
	return 0;
}

/*
 * Splits the scopes the organisation may not consume into those DigDir lists
 * as public (they exist: access is missing) and the others (they do not
 * exist, or are private to their owner). Best effort: on failure both lists
 * name every scope as unknown.
 */
static void explain_missing(struct digdir *dd, const char *const *missing, size_t n,
			    int64_t deadline_ms, char *exist, size_t elen, char *unknown,
			    size_t ulen)
{
	struct consumable pub = { .set = json_object() };
	size_t eu = 0, uu = 0;
	int r = -ENOMEM;

	if (pub.set)
		r = digdir_call_list(dd, "/scopes/all", "GET /scopes/all", 0, add_public, clear_set,
				     &pub, deadline_ms, NULL);
	exist[0] = unknown[0] = '\0';
	for (size_t i = 0; i < n; i++) {
		bool listed = r == 0 && json_object_get(pub.set, missing[i]);
		char *buf = listed ? exist : unknown;
		size_t *used = listed ? &eu : &uu, len = listed ? elen : ulen;

		if (*used < len)
			*used += (size_t)snprintf(buf + *used, len - *used, "%s%s",
						  *used ? ", " : "", missing[i]);
	}
	json_decref(pub.set);
}

int digdir_check_scope_access(struct digdir *dd, const char *const *scopes, size_t nscopes,
			      int64_t deadline_ms, struct err *err)
{
	const char *missing[64];
	char exist[300], unknown[300];
	const char *orgno;
	json_t *fresh = NULL;
	char *token = NULL;
	size_t nmissing = 0;
	bool refreshed = false;
	int r = 0;

	/* The organisation number is configured, or comes with the admin token. */
	orgno = mp_org_number(dd->mp);
	if (!orgno) {
		r = mp_admin_token(dd->mp, MP_ADMIN_CLIENTS, deadline_ms, &token, err);
		secret_free(token);
		if (r < 0)
			return r;
		orgno = mp_org_number(dd->mp);
		if (!orgno)
			return err_set(err, ERR_BAD_RESPONSE, EPROTO,
				       "the admin token names no organisation (no consumer.ID "
				       "claim): set --org-number");
	}

	pthread_mutex_lock(&dd->scope_lock);
	for (;;) {
		/* Stale or missing lists are read again; a miss refreshes them once. */
		if (!dd->consumable || clock_now_ms() - dd->consumable_at_ms > dd->scope_cache_ms) {
			r = fetch_consumable(dd, orgno, deadline_ms, &fresh, err);
			if (r < 0)
				goto out;
			json_decref(dd->consumable);
			dd->consumable = fresh;
			dd->consumable_at_ms = clock_now_ms();
			refreshed = true;
		}
		nmissing = 0;
		for (size_t i = 0; i < nscopes && nmissing < 64; i++)
			if (!json_object_get(dd->consumable, scopes[i]))
				missing[nmissing++] = scopes[i];
		if (!nmissing || refreshed)
			break;
		dd->consumable_at_ms = 0;
		json_decref(dd->consumable);
		dd->consumable = NULL;
	}
	pthread_mutex_unlock(&dd->scope_lock);
	if (!nmissing)
		return 0;

	explain_missing(dd, missing, nmissing, deadline_ms, exist, sizeof(exist), unknown,
			sizeof(unknown));
	return err_set(err, ERR_SCOPE_ACCESS, EACCES,
		       "organisation %s may not consume %s%s%s%s%s%s%s: provisioning fails until "
		       "then",
		       orgno, exist[0] ? "scope(s) " : "", exist,
		       exist[0] ? ", which exist: ask each scope's owner to grant organisation "
				: "",
		       exist[0] ? orgno : "", exist[0] && unknown[0] ? "; and " : "",
		       unknown[0] ? unknown : "",
		       unknown[0] ? ", which DigDir does not list as public scopes: check the "
				    "names, or ask the owner of a private scope to grant access"
				  : "");
out:
	pthread_mutex_unlock(&dd->scope_lock);
	return r;
}

/* ---- clients --------------------------------------------------------------- */

/* The ClientRegistration body of a new client (field for field as digdirator's). */
static json_t *registration(struct digdir *dd, const char *description, const char *const *scopes,
			    size_t nscopes)
{
	json_t *body, *list;

	list = json_array();
	for (size_t i = 0; list && i < nscopes; i++)
		json_array_append_new(list, json_string(scopes[i]));
	body = json_pack("{s:I, s:s, s:I, s:s}", "access_token_lifetime",
			 (json_int_t)dd->access_token_lifetime, "application_type", "web",
			 "authorization_lifetime", (json_int_t)dd->authorization_lifetime,
			 "client_name", dd->client_name);
	if (!body || !list) {
		json_decref(body);
		json_decref(list);
		return NULL;
	}
	if (dd->client_uri)
		json_object_set_new(body, "client_uri", json_string(dd->client_uri));
	json_object_set_new(body, "description", json_string(description));
	json_object_set_new(body, "frontchannel_logout_session_required", json_false());
	json_object_set_new(body, "grant_types",
			    json_pack("[s]", "urn:ietf:params:oauth:grant-type:jwt-bearer"));
	json_object_set_new(body, "integration_type", json_string("maskinporten"));
	json_object_set_new(body, "post_logout_redirect_uris", json_null());
	json_object_set_new(body, "redirect_uris", json_null());
	json_object_set_new(body, "refresh_token_usage", json_string("ONETIME"));
	json_object_set_new(body, "scopes", list);
	json_object_set_new(body, "sso_disabled", json_false());
	json_object_set_new(body, "token_endpoint_auth_method", json_string("private_key_jwt"));
	return body;
}

/* POST /clients: *ret_id and *ret_created_ms (when DigDir says) of the new client. */
static int create_client(struct digdir *dd, const json_t *body, int64_t deadline_ms, char **ret_id,
			 int64_t *ret_created_ms, struct err *err)
{
	json_error_t jerr;
	json_t *created = NULL;
	const char *id, *when = NULL;
	int r;

	r = digdir_call(dd, "POST", "/clients", "POST /clients", body, 0, deadline_ms, &created,
			err);
	if (r < 0)
		return r;
	if (json_unpack_ex(created, &jerr, 0, "{s:s, s?s}", "client_id", &id, "created", &when) <
		0 ||
	    !*id) {
		json_decref(created);
		return err_set(err, ERR_BAD_RESPONSE, EPROTO,
			       "DigDir POST /clients: answer names no client_id (%s)", jerr.text);
	}
	*ret_created_ms = INT64_MAX;
	digdir_parse_time(when, ret_created_ms);
	*ret_id = strdup(id);
	json_decref(created);
	return *ret_id ? 0 : err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
}

int digdir_delete_client(struct digdir *dd, const char *client_id, int64_t deadline_ms,
			 struct err *err)
{
	char *path = client_path(client_id, "");
	int r;

	if (!path)
		return err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
	r = digdir_call(dd, "DELETE", path, "DELETE /clients/{id}", NULL, DIGDIR_IDEMPOTENT,
			deadline_ms, NULL, err);
	free(path);
	return r;
}

/*
 * Whether a failed create may have happened at DigDir anyway: a transient
 * failure other than 429, which DigDir answers before doing anything.
 */
static bool maybe_created(const struct err *e)
{
	return err_is_transient(e->kind) && e->kind != ERR_THROTTLED;
}

/* The earliest of the listed ids and ours (created at ours_ms), by the rule every node uses. */
static const char *winner_of(const json_t *ids, const char *ours, int64_t ours_ms, int64_t first_ms)
{
	const char *first = json_string_value(json_array_get(ids, 0));

	if (!ours)
		return first;
	if (!first || !strcmp(first, ours))
		return ours;
	for (size_t i = 0; i < json_array_size(ids); i++)
		if (!strcmp(json_string_value(json_array_get(ids, i)), ours))
			return first; /* listed, and not first */
	/* Not listed yet: compare with the first by creation time, then id. */
	if (ours_ms != first_ms)
		return ours_ms < first_ms ? ours : first;
	return strcmp(ours, first) < 0 ? ours : first;
}

/* The creation time the kept listing shows for client_id, INT64_MAX when unknown. */
static int64_t listed_created(struct digdir *dd, const char *description, const char *client_id)
{
	struct listed *e = client_id ? listed_by_id(dd->list, description, client_id) : NULL;

	return e ? e->created_ms : INT64_MAX;
}

/*
 * Creates the client (announced by create_begin_locked) and settles races: another
 * node may have created one for the same description at the same time. After the create a listing
 * decides (earliest created wins); a loser we made is deactivated.
 * *ret_ours says whether the winner is the client this call created.
 */
static int create_and_settle(struct digdir *dd, const char *description, const json_t *body,
			     int64_t deadline_ms, char **ret_winner, bool *ret_ours,
			     struct err *err)
{
	struct err cerr = { 0 };
	struct stamp need;
	json_t *ids = NULL;
	char *ours = NULL, *winner = NULL;
	int64_t settle_until, ours_ms = INT64_MAX, poll = SETTLE_POLL_MS;
	int r = 0, rc;

	/* Without a deadline, a timed-out create is waited for this long. */
	settle_until = deadline_ms > 0 ? deadline_ms : clock_now_ms() + SETTLE_MAX_MS;
	rc = create_client(dd, body, deadline_ms, &ours, &ours_ms, &cerr);
	need = create_end(dd, description);
	if (rc < 0 && !maybe_created(&cerr)) {
		if (err)
			*err = cerr;
		r = rc;
		goto out;
	}
	/*
	 * Never blindly repeat a create that may have reached DigDir: look. A
	 * create we stopped waiting for may still be running at DigDir, so an
	 * empty listing proves nothing yet: look again until it shows or the
	 * deadline passes, and never create a second time.
	 */
	for (;;) {
		const char *w;

		r = list_fresh(dd, need, true, deadline_ms, err);
		if (r < 0)
			goto out;
		json_decref(ids);
		ids = find_locked(dd, description, NULL, err);
		w = ids ? winner_of(ids, ours, ours_ms,
				    listed_created(dd, description,
						   json_string_value(json_array_get(ids, 0))))
			: NULL;
		winner = w ? strdup(w) : NULL;
		pthread_mutex_unlock(&dd->list_lock);
		if (!ids) {
			r = -ENOMEM;
			goto out;
		}
		/* Only a create we stopped waiting for may still land: others are settled. */
		if (winner || ours || rc == 0 || cerr.kind != ERR_TIMEOUT ||
		    clock_now_ms() + poll >= settle_until)
			break;
		nanosleep(&(struct timespec){ poll / 1000, (poll % 1000) * 1000000L }, NULL);
		poll = poll * 2 > SETTLE_POLL_MAX_MS ? SETTLE_POLL_MAX_MS : poll * 2;
		need = (struct stamp){ .ms = clock_now_ms(), .seq = need.seq };
	}
	if (!winner) {
		if (err)
			*err = cerr;
		r = rc < 0 ? rc : err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
		goto out;
	}
	*ret_ours = ours && !strcmp(winner, ours);
	if (ours && !*ret_ours) {
		/* Another node won the race; ours goes, so one client stays active. */
		log_info("client %s for %s lost a create race to %s: deactivating it", ours,
			 description, winner);
		r = digdir_delete_client(dd, ours, deadline_ms, err);
		if (r < 0 && (!err || err->kind != ERR_NOT_FOUND))
			goto out;
	} else if (*ret_ours && !json_array_size(ids)) {
		log_warn("DigDir does not list client %s yet, which it created for %s: using it",
			 ours, description);
	}
	*ret_winner = winner;
	winner = NULL;
	r = 0;
out:
	free(winner);
	free(ours);
	json_decref(ids);
	return r;
}

/*
 * Registers scopes on client_id by GET, modify, PUT, as DigDir's docs advise,
 * so that what a client made by hand or by another tool carries besides its
 * scopes (name, lifetimes, ...) survives. current is the GET answer when the
 * caller has it.
 */
static int put_scopes(struct digdir *dd, const char *description, const char *client_id,
		      const json_t *current, const char *const *scopes, size_t nscopes,
		      const char *key, int64_t deadline_ms, struct err *err)
{
	json_t *got = NULL, *body = NULL, *list = json_array();
	char *path = client_path(client_id, "");
	int r;

	if (!path || !list) {
		r = err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
		goto out;
	}
	if (!current) {
		r = digdir_get_client(dd, client_id, deadline_ms, &got, err);
		if (r < 0)
			goto out;
		current = got;
	}
	body = json_object();
	for (size_t i = 0; body && i < sizeof(writable_fields) / sizeof(writable_fields[0]); i++) {
		json_t *v = json_object_get(current, writable_fields[i]);

		if (v && json_object_set(body, writable_fields[i], v) < 0) {
			json_decref(body);
			body = NULL;
		}
	}
	for (size_t i = 0; body && i < nscopes; i++)
		json_array_append_new(list, json_string(scopes[i]));
	if (!body || json_object_set(body, "scopes", list) < 0) {
		r = err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
		goto out;
	}
	r = digdir_call(dd, "PUT", path, "PUT /clients/{id}", body, DIGDIR_IDEMPOTENT, deadline_ms,
			NULL, err);
	if (r == 0)
		listing_update_scopes(dd, description, client_id, key);
out:
	json_decref(list);
	json_decref(body);
	json_decref(got);
	free(path);
	return r;
}

/*
 * The pinned client when it still belongs to the app: active, maskinporten,
 * and described as description. *ret is NULL when it no longer does (the
 * caller looks the app up again); errors other than "not found" fail.
 */
static int pinned_client(struct digdir *dd, const char *description, const char *pinned,
			 int64_t deadline_ms, json_t **ret, struct err *err)
{
	json_t *c = NULL;
	const char *desc, *itype;
	int r;

	*ret = NULL;
	r = digdir_get_client(dd, pinned, deadline_ms, &c, err);
	if (r < 0) {
		if (err && err->kind == ERR_NOT_FOUND) {
			log_info("client %s of %s is gone at DigDir: looking the app up again",
				 pinned, description);
			return 0;
		}
		return r;
	}
	desc = json_string_value(json_object_get(c, "description"));
	itype = json_string_value(json_object_get(c, "integration_type"));
	if (json_is_false(json_object_get(c, "active"))) {
		log_info("client %s of %s is inactive at DigDir: looking the app up again", pinned,
			 description);
	} else if (!desc || strcmp(desc, description) != 0) {
		/* Its description names another app now: it is that app's, never both. */
		log_warn("client %s is now described as \"%.200s\", not %s: it no longer belongs "
			 "to this app, looking the app up again",
			 pinned, desc ? desc : "", description);
	} else if (itype && strcmp(itype, "maskinporten") != 0) {
		json_decref(c);
		return err_set(err, ERR_CONFLICT, EEXIST,
			       "client %s has integration_type %s, not maskinporten, and DigDir "
			       "cannot change it",
			       pinned, itype);
	} else {
		*ret = c;
		return 0;
	}
	json_decref(c);
	return 0;
}

void digdir_ensure_release(struct digdir_ensure *e)
{
	free(e->client_id);
	free(e->registered);
	json_decref(e->duplicates);
	e->client_id = e->registered = NULL;
	e->duplicates = NULL;
}

int digdir_ensure_client(struct digdir *dd, struct digdir_ensure *e, int64_t deadline_ms,
			 struct err *err)
{
	const char *const *scopes = e->scopes;
	const char *def[1];
	size_t nscopes = e->nscopes;
	json_t *client = NULL, *ids = NULL, *body = NULL;
	char *want = NULL, *have = NULL, *id = NULL;
	int r;

	/* DigDir rejects clients without scopes: register the default one. */
	if (nscopes == 0) {
		if (!dd->default_scope)
			return err_set(err, ERR_INVALID, EINVAL,
				       "no scopes requested and no --default-scope configured");
		def[0] = dd->default_scope;
		scopes = def;
		nscopes = 1;
	}
	want = names_key(scopes, nscopes);
	if (!want) {
		r = err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
		goto out;
	}

	/* 1. The client this app had, while it is still the app's. */
	if (e->pinned_id) {
		r = pinned_client(dd, e->description, e->pinned_id, deadline_ms, &client, err);
		if (r < 0)
			goto out;
	}
	if (client) {
		id = strdup(e->pinned_id);
		have = digdir_scopes_key(json_object_get(client, "scopes"));
		if (!id || !have) {
			r = err_set(err, ERR_BAD_RESPONSE, EPROTO,
				    "DigDir GET /clients/{id}: client %s has no list of scopes",
				    e->pinned_id);
			goto out;
		}
	} else {
		/* 2. Else the one every node picks from the listing, or 3. a new one. */
		r = list_fresh(dd, lookup_need(dd, e->description), false, deadline_ms, err);
		if (r < 0)
			goto out;
		ids = find_locked(dd, e->description, &have, err);
		if (ids && json_array_size(ids) == 0)
			create_begin_locked(dd);
		pthread_mutex_unlock(&dd->list_lock);
		if (!ids) {
			r = -ENOMEM;
			goto out;
		}
		if (json_array_size(ids) > 0) {
			id = strdup(json_string_value(json_array_get(ids, 0)));
			if (json_array_size(ids) > 1) {
				e->duplicates = json_array();
				for (size_t i = 1; e->duplicates && i < json_array_size(ids); i++)
					json_array_append(e->duplicates, json_array_get(ids, i));
			}
		} else {
			/* Nothing is registered before the organisation's access is checked. */
			r = digdir_check_scope_access(dd, scopes, nscopes, deadline_ms, err);
			body = r == 0 ? registration(dd, e->description, scopes, nscopes) : NULL;
			if (r == 0 && !body)
				r = err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
			if (r < 0) {
				create_cancel(dd);
				goto out;
			}
			r = create_and_settle(dd, e->description, body, deadline_ms, &id,
					      &e->created, err);
			if (r < 0)
				goto out;
			free(have);
			/* Ours has the scopes it was created with; another node's, its own. */
			have = e->created ? strdup(want) : NULL;
		}
		if (!id) {
			r = err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
			goto out;
		}
	}

	if (!have) {
		/* Another node created it, after the listing this call read. */
		r = digdir_get_client(dd, id, deadline_ms, &client, err);
		if (r < 0)
			goto out;
		have = digdir_scopes_key(json_object_get(client, "scopes"));
		if (!have) {
			r = err_set(err, ERR_BAD_RESPONSE, EPROTO,
				    "DigDir GET /clients/{id}: client %s has no list of scopes",
				    id);
			goto out;
		}
	}

	/* 4. Its scopes: write ours, unless someone else changed them after us. */
	if (strcmp(have, want) != 0) {
		if (e->readonly_scopes) {
			/* Revalidation reports; a Mount, with its parameters, writes. */
			e->scopes_differ = true;
		} else if (e->written && strcmp(have, e->written) != 0) {
			r = err_set(
			    err, ERR_CONFLICT, EEXIST,
			    "the scopes of client %s were changed at DigDir to [%.200s] "
			    "after this provider registered [%.200s]; this Mount asks for "
			    "[%.200s]. Two SecretProviderClasses (or a change by hand) give "
			    "this app different scopes: make them agree",
			    id, have, e->written, want);
			goto out;
		} else {
			r = digdir_check_scope_access(dd, scopes, nscopes, deadline_ms, err);
			if (r == 0)
				r = put_scopes(dd, e->description, id, client, scopes, nscopes,
					       want, deadline_ms, err);
			if (r < 0)
				goto out;
			e->scopes_changed = true;
			free(have);
			have = strdup(want);
		}
	}
	e->client_id = id;
	e->registered = have;
	id = have = NULL;
	r = 0;
out:
	free(id);
	free(have);
	free(want);
	json_decref(body);
	json_decref(ids);
	json_decref(client);
	return r;
}

/* ---- keys ------------------------------------------------------------------ */

int digdir_parse_jwks(json_t *doc, const char *endpoint, json_t **ret, struct err *err)
{
	json_error_t jerr;
	json_t *keys = NULL, *k;
	const char *kid;
	size_t i;

	if (!json_is_object(doc) || json_unpack_ex(doc, &jerr, 0, "{s?o}", "keys", &keys) < 0 ||
	    (keys && !json_is_array(keys)))
		return err_set(err, ERR_BAD_RESPONSE, EPROTO, "DigDir %s: not a JWKS", endpoint);
	for (i = 0; i < json_array_size(keys) && (k = json_array_get(keys, i)); i++) {
		if (json_unpack_ex(k, &jerr, 0, "{s:s}", "kid", &kid) < 0)
			return err_set(err, ERR_BAD_RESPONSE, EPROTO,
				       "DigDir %s: key %zu has no kid", endpoint, i);
	}
	*ret = keys ? json_incref(keys) : json_array();
	return *ret ? 0 : err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
}

int digdir_get_jwks(struct digdir *dd, const char *client_id, int64_t deadline_ms, json_t **ret,
		    struct err *err)
{
	char *path = client_path(client_id, "/jwks");
	json_t *doc = NULL;
	int r;

	if (!path)
		return err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
	r = digdir_call(dd, "GET", path, "GET /clients/{id}/jwks", NULL, DIGDIR_IDEMPOTENT,
			deadline_ms, &doc, err);
	if (r == 0)
		r = digdir_parse_jwks(doc, "GET /clients/{id}/jwks", ret, err);
	json_decref(doc);
	free(path);
	return r;
}

int digdir_put_jwks(struct digdir *dd, const char *client_id, const json_t *keys,
		    int64_t deadline_ms, json_t **ret, struct err *err)
{
	char *path = client_path(client_id, "/jwks");
	json_t *body = NULL, *doc = NULL;
	int r;

	body = json_pack("{s:O}", "keys", keys);
	if (!path || !body) {
		r = err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
		goto out;
	}
	/* The upload replaces the whole set, so repeating it is harmless. */
	r = digdir_call(dd, "POST", path, "POST /clients/{id}/jwks", body, DIGDIR_IDEMPOTENT,
			deadline_ms, &doc, err);
	if (r == 0 && ret)
		r = digdir_parse_jwks(doc, "POST /clients/{id}/jwks", ret, err);
out:
	json_decref(doc);
	json_decref(body);
	free(path);
	return r;
}
