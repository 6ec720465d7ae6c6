/*
 * digdir: DigDir's self-service admin API under /api/v1. Finds, creates and
 * updates Maskinporten clients, keeps their JWKS on the key schedule, and
 * checks which scopes the organisation may consume. Bodies are built with
 * jansson and parsed with JSON_REJECT_DUPLICATES and json_unpack_ex.
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

#include "hash.h"
#include "digdir.h"
#include "timespec.h"

#define API_SUFFIX     "/api/v1"
#define SETTLE_POLL_MS 250 /* listing interval while a timed-out create may still land */
#define SETTLE_MAX_MS  30000
/*
 * Client listings are shared by concurrent flights. A lookup may use a
 * listing up to LIST_REUSE_MS old: a create it leads to is always confirmed
 * by a listing sent after the create, which settles any race. A confirming
 * listing waits for the creates still under way, up to LIST_BATCH_MS, so
 * that one listing confirms every client a burst of new apps made.
 */
#define LIST_REUSE_MS 2000
#define LIST_BATCH_MS 1000

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

	/* Scope names the organisation may consume; guarded by scope_lock. */
	pthread_mutex_t scope_lock;
	json_t *consumable; /* object: name -> true */
	int64_t consumable_at_ms;

	/* The shared client listing; guarded by list_lock (see list_shared). */
	pthread_mutex_t list_lock;
	pthread_cond_t list_done;
	pthread_cond_t create_done;
	json_t *list;	      /* the last successful listing, never modified */
	struct stamp list_at; /* when its request was sent */
	bool list_running;    /* a listing is under way ... */
	bool list_batching;   /* ... and not sent yet, or ... */
	struct stamp next_at; /* ... sent at this stamp */
	int creating;	      /* creates sent and not answered yet */
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
	pthread_cond_init(&dd->list_done, NULL);
	pthread_cond_init(&dd->create_done, NULL);
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
	json_decref(dd->list);
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

int digdir_call(struct digdir *dd, const char *method, const char *path, const char *endpoint,
		const json_t *body, bool idempotent, int64_t deadline_ms, json_t **ret,
		struct err *err)
{
	struct http_response resp = { 0 };
	struct http_request req = { 0 };
	char *url = NULL, *text = NULL, *token = NULL;
	json_error_t jerr;
	json_t *doc = NULL;
	int r, tries;

	if (err) {
		err->correlation_id[0] = '\0';
		snprintf(err->endpoint, sizeof(err->endpoint), "digdir %s", endpoint);
	}
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

	/* A 401 means our cached admin token went stale: one more try with a fresh one. */
	for (tries = 0; tries < 2; tries++) {
		r = mp_admin_token(dd->mp, deadline_ms, &token, err);
		if (r < 0)
			goto out;
		req = (struct http_request){
			.method = method,
			.url = url,
			.service = "digdir",
			.endpoint = endpoint,
			.bearer = token,
			.content_type = "application/json",
			.body = text,
			.body_len = text ? strlen(text) : 0,
			.idempotent = idempotent,
			.deadline_ms = deadline_ms,
		};
		r = http_do(dd->http, &req, &resp, err);
		if (r < 0)
			goto out;
		if (resp.status != 401)
			break;
		mp_admin_token_invalidate(dd->mp, token);
		keys_free_secret(token);
		token = NULL;
		if (tries == 0)
			http_response_release(&resp);
	}
	if (resp.status >= 400) {
		r = digdir_status_error(endpoint, &resp, err);
		goto out;
	}
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
	keys_free_secret(token);
	free(text);
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

int digdir_check_client_list(const json_t *list, struct err *err)
{
	json_error_t jerr;
	const char *id;
	json_t *c;
	size_t i;

	if (!json_is_array(list))
		return err_set(err, ERR_BAD_RESPONSE, EPROTO,
			       "DigDir GET /clients: answer is not a list of clients");
	for (i = 0; i < json_array_size(list) && (c = json_array_get(list, i)); i++) {
		if (json_unpack_ex(c, &jerr, 0, "{s:s}", "client_id", &id) < 0)
			return err_set(err, ERR_BAD_RESPONSE, EPROTO,
				       "DigDir GET /clients: entry %zu is not a client (%s)", i,
				       jerr.text);
	}
	return 0;
}

int digdir_list_clients(struct digdir *dd, int64_t deadline_ms, json_t **ret, struct err *err)
{
	json_t *list = NULL;
	int r;

	r = digdir_call(dd, "GET", "/clients", "GET /clients", NULL, true, deadline_ms, &list, err);
	if (r < 0)
		return r;
	r = digdir_check_client_list(list, err);
	if (r < 0) {
		json_decref(list);
		return r;
	}
	*ret = list;
	return 0;
}

/* Waits on cond (list_lock held) until woken or until_ms. -ETIMEDOUT once past it. */
static int wait_until(struct digdir *dd, pthread_cond_t *cond, int64_t until_ms)
{
	int64_t left = until_ms - http_now_ms();
	struct timespec ts;

	if (left <= 0)
		return -ETIMEDOUT;
	ts = timespec_in_ms(CLOCK_REALTIME, left);
	pthread_cond_timedwait(cond, &dd->list_lock, &ts);
	return 0;
}

/* A create is about to be sent: the next confirming listing waits for its answer. */
static void create_begin(struct digdir *dd)
{
	pthread_mutex_lock(&dd->list_lock);
	dd->creating++;
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
	if (--dd->creating == 0)
		pthread_cond_broadcast(&dd->create_done);
	pthread_mutex_unlock(&dd->list_lock);
	return need;
}

/*
 * How fresh a lookup's listing must be: a shared one up to LIST_REUSE_MS old
 * will do, unless this process tried to create the client. Then only a
 * listing sent after that attempt's answer can tell whether it happened, and
 * an older one would make us create the client a second time.
 */
static struct stamp lookup_need(struct digdir *dd, const char *description)
{
	struct stamp need = { .ms = http_now_ms() - LIST_REUSE_MS };
	uint64_t h = hash_str(HASH_INIT, description);

	pthread_mutex_lock(&dd->list_lock);
	for (unsigned i = 0; i < 64 && i < dd->ncreates; i++)
		if (dd->creates[i].hash == h && dd->creates[i].seq > need.seq)
			need.seq = dd->creates[i].seq;
	pthread_mutex_unlock(&dd->list_lock);
	return need;
}

/*
 * A client listing fresh enough for need: the last one when it is, the one
 * under way when it will be, else a new one. With batch, the new one is sent
 * once the creates under way are answered (up to LIST_BATCH_MS later), and
 * every caller arriving meanwhile shares it. *ret is a new reference to a
 * listing nobody modifies.
 */
static int list_shared(struct digdir *dd, struct stamp need, bool batch, int64_t deadline_ms,
		       json_t **ret, struct err *err)
{
	int64_t until = deadline_ms > 0 ? deadline_ms : INT64_MAX / 2;
	json_t *list = NULL;
	struct err lerr = { 0 };
	struct stamp sent;
	int r;

	pthread_mutex_lock(&dd->list_lock);
	for (;;) {
		if (dd->list && fresh_for(dd->list_at, need)) {
			*ret = json_incref(dd->list);
			r = 0;
			goto out;
		}
		if (!dd->list_running)
			break;
		/* Wait for the listing under way; use it, or its failure, when it is fresh. */
		unsigned gen = dd->list_gen;
		bool fresh = dd->list_batching || fresh_for(dd->next_at, need);

		while (dd->list_gen == gen)
			if (wait_until(dd, &dd->list_done, until) < 0) {
				r = err_set(
				    err, ERR_TIMEOUT, ETIMEDOUT,
				    "DigDir GET /clients: timed out waiting for the listing");
				goto out;
			}
		if (fresh && dd->list_rc < 0) {
			if (err)
				*err = dd->list_err;
			r = dd->list_rc;
			goto out;
		}
	}
	dd->list_running = true;
	if (batch) {
		int64_t batch_end = http_now_ms() + LIST_BATCH_MS;

		dd->list_batching = true;
		while (dd->creating > 0 &&
		       wait_until(dd, &dd->create_done, batch_end < until ? batch_end : until) == 0)
			;
		dd->list_batching = false;
	}
	sent = dd->next_at = (struct stamp){ http_now_ms(), dd->creates_ended };
	pthread_mutex_unlock(&dd->list_lock);

	r = digdir_list_clients(dd, deadline_ms, &list, &lerr);

	pthread_mutex_lock(&dd->list_lock);
	dd->list_running = false;
	dd->list_gen++;
	dd->list_rc = r;
	dd->list_err = lerr;
	if (r == 0) {
		json_decref(dd->list);
		dd->list = json_incref(list);
		dd->list_at = sent;
		*ret = list;
	} else if (err) {
		*err = lerr;
	}
	pthread_cond_broadcast(&dd->list_done);
out:
	pthread_mutex_unlock(&dd->list_lock);
	return r;
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

/* Sort key of a candidate: when it was created (unknown: last), then its id. */
static bool earlier(json_t *a, json_t *b)
{
	const char *ida = json_string_value(json_object_get(a, "client_id"));
	const char *idb = json_string_value(json_object_get(b, "client_id"));
	int64_t ta = INT64_MAX, tb = INT64_MAX;

	digdir_parse_time(json_string_value(json_object_get(a, "created")), &ta);
	digdir_parse_time(json_string_value(json_object_get(b, "created")), &tb);
	if (ta != tb)
		return ta < tb;
	return strcmp(ida ? ida : "", idb ? idb : "") < 0;
}

json_t *digdir_pick_client(const json_t *clients, const char *description, const char *pinned_id,
			   size_t *ret_matches)
{
	const char *id, *desc, *itype;
	json_t *c, *best = NULL;
	size_t i, matches = 0;

	for (i = 0; i < json_array_size(clients) && (c = json_array_get(clients, i)); i++) {
		if (json_is_false(json_object_get(c, "active")))
			continue;
		id = json_string_value(json_object_get(c, "client_id"));
		desc = json_string_value(json_object_get(c, "description"));
		itype = json_string_value(json_object_get(c, "integration_type"));
		if (pinned_id) {
			if (id && !strcmp(id, pinned_id)) {
				if (ret_matches)
					*ret_matches = 1;
				return c;
			}
			continue;
		}
		if (!desc || !itype || strcmp(desc, description) || strcmp(itype, "maskinporten"))
			continue;
		matches++;
		if (!best || earlier(c, best))
			best = c;
	}
	if (ret_matches)
		*ret_matches = matches;
	return best;
}

int digdir_find_client(struct digdir *dd, const char *description, const char *pinned_id,
		       int64_t deadline_ms, json_t **ret, struct err *err)
{
	json_t *list = NULL, *c;
	int r;

	r = digdir_list_clients(dd, deadline_ms, &list, err);
	if (r < 0)
		return r;
	c = digdir_pick_client(list, description, pinned_id, NULL);
	*ret = c ? json_incref(c) : NULL;
	json_decref(list);
	return 0;
}

bool digdir_scopes_equal(const json_t *have, const char *const *want, size_t nwant)
{
	size_t i, j, n = json_array_size(have);

	/* As sets: every wanted scope is there and nothing else (duplicates aside). */
	for (i = 0; i < nwant; i++) {
		bool found = false;

		for (j = 0; j < n && !found; j++) {
			const char *s = json_string_value(json_array_get(have, j));

			found = s && !strcmp(s, want[i]);
		}
		if (!found)
			return false;
	}
	for (j = 0; j < n; j++) {
		const char *s = json_string_value(json_array_get(have, j));
		bool found = false;

		for (i = 0; i < nwant && s && !found; i++)
			found = !strcmp(s, want[i]);
		if (!found)
			return false;
	}
	return true;
}

int digdir_parse_consumable(const json_t *access, const json_t *open, const char *orgno,
			    json_t **ret, struct err *err)
{
	const char *consumer, *scope, *state, *name;
	json_t *set = NULL, *e;
	json_error_t jerr;
	int afa;
	size_t i;
	int r;

	set = json_object();
	if (!json_is_array(access) || !json_is_array(open) || !set) {
		r = err_set(err, ERR_BAD_RESPONSE, EPROTO,
			    "DigDir scope access lists: answer is not a list");
		goto out;
	}
	for (i = 0; i < json_array_size(access) && (e = json_array_get(access, i)); i++) {
		if (json_unpack_ex(e, &jerr, 0, "{s:s, s:s, s:s}", "consumer_orgno", &consumer,
				   "scope", &scope, "state", &state) < 0) {
			r = err_set(err, ERR_BAD_RESPONSE, EPROTO,
				    "DigDir GET /scopes/access/all: entry %zu: %s", i, jerr.text);
			goto out;
		}
		if (!strcmp(consumer, orgno) && !strcmp(state, "APPROVED"))
			json_object_set_new(set, scope, json_true());
	}
	for (i = 0; i < json_array_size(open) && (e = json_array_get(open, i)); i++) {
		afa = 1;
		if (json_unpack_ex(e, &jerr, 0, "{s:s, s?b}", "name", &name, "accessible_for_all",
				   &afa) < 0) {
			r = err_set(err, ERR_BAD_RESPONSE, EPROTO,
				    "DigDir GET /scopes/all: entry %zu: %s", i, jerr.text);
			goto out;
		}
		if (afa)
			json_object_set_new(set, name, json_true());
	}
	*ret = set;
	set = NULL;
	r = 0;
out:
	json_decref(set);
	return r;
}

/* Reads both access lists into a new object of consumable scope names. */
static int fetch_consumable(struct digdir *dd, const char *orgno, int64_t deadline_ms, json_t **ret,
			    struct err *err)
{
	json_t *access = NULL, *open = NULL;
	int r;

	r = digdir_call(dd, "GET", "/scopes/access/all", "GET /scopes/access/all", NULL, true,
			deadline_ms, &access, err);
	if (r < 0)
		goto out;
	r = digdir_call(dd, "GET", "/scopes/all?accessible_for_all=true", "GET /scopes/all", NULL,
			true, deadline_ms, &open, err);
	if (r < 0)
		goto out;
	r = digdir_parse_consumable(access, open, orgno, ret, err);
out:
	json_decref(access);
	json_decref(open);
	return r;
}

int digdir_check_scope_access(struct digdir *dd, const char *const *scopes, size_t nscopes,
			      int64_t deadline_ms, struct err *err)
{
	char missing[400];
	const char *orgno;
	json_t *fresh = NULL;
	char *token = NULL;
	size_t used;
	bool refreshed = false;
	int r = 0;

	/* The organisation number comes with the admin token. */
	orgno = mp_org_number(dd->mp);
	if (!orgno) {
		r = mp_admin_token(dd->mp, deadline_ms, &token, err);
		keys_free_secret(token);
		if (r < 0)
			return r;
		orgno = mp_org_number(dd->mp);
		if (!orgno)
			return err_set(err, ERR_BAD_RESPONSE, EPROTO,
				       "the admin token names no organisation number");
	}

	pthread_mutex_lock(&dd->scope_lock);
	for (;;) {
		/* Stale or missing lists are read again; a miss refreshes them once. */
		if (!dd->consumable || http_now_ms() - dd->consumable_at_ms > dd->scope_cache_ms) {
			r = fetch_consumable(dd, orgno, deadline_ms, &fresh, err);
			if (r < 0)
				goto out;
			json_decref(dd->consumable);
			dd->consumable = fresh;
			dd->consumable_at_ms = http_now_ms();
			refreshed = true;
		}
		used = 0;
		missing[0] = '\0';
		for (size_t i = 0; i < nscopes; i++)
			if (!json_object_get(dd->consumable, scopes[i]) && used < sizeof(missing))
				used += (size_t)snprintf(missing + used, sizeof(missing) - used,
							 "%s%s", used ? ", " : "", scopes[i]);
		if (!missing[0] || refreshed)
			break;
		dd->consumable_at_ms = 0;
		json_decref(dd->consumable);
		dd->consumable = NULL;
	}
	if (missing[0])
		r = err_set(err, ERR_SCOPE_ACCESS, EACCES,
			    "organisation %s has no access to scope(s) %s: ask each scope's owner "
			    "to grant %s access (pre-register the consumer), provisioning fails "
			    "until then",
			    orgno, missing, orgno);
out:
	pthread_mutex_unlock(&dd->scope_lock);
	return r;
}

/* The ClientRegistration body of reference 2.4. */
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

static int create_client(struct digdir *dd, const json_t *body, int64_t deadline_ms, char **ret_id,
			 struct err *err)
{
	json_error_t jerr;
	json_t *created = NULL;
	const char *id;
	int r;

	r = digdir_call(dd, "POST", "/clients", "POST /clients", body, false, deadline_ms, &created,
			err);
	if (r < 0)
		return r;
	if (json_unpack_ex(created, &jerr, 0, "{s:s}", "client_id", &id) < 0 || !*id) {
		json_decref(created);
		return err_set(err, ERR_BAD_RESPONSE, EPROTO,
			       "DigDir POST /clients: answer names no client_id (%s)", jerr.text);
	}
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
	r = digdir_call(dd, "DELETE", path, "DELETE /clients/{id}", NULL, true, deadline_ms, NULL,
			err);
	free(path);
	return r;
}

/* Whether a failed create may have happened at DigDir anyway. */
static bool maybe_created(const struct err *e)
{
	return e->kind == ERR_UNAVAILABLE || e->kind == ERR_TIMEOUT || e->kind == ERR_BAD_RESPONSE;
}

/*
 * Creates the client and settles races: another node may have created one
 * for the same description at the same time. After the create the listing
 * decides (earliest created wins); a loser we made is deleted. *ret_ours
 * says whether the winner is the client this call created.
 */
static int create_and_settle(struct digdir *dd, const char *description, const json_t *body,
			     int64_t deadline_ms, json_t **ret_winner, bool *ret_ours,
			     struct err *err)
{
	struct err cerr = { 0 };
	struct stamp need;
	json_t *list = NULL, *winner = NULL;
	char *ours = NULL;
	int64_t settle_until;
	int r = 0, rc;

	/* Without a deadline, a timed-out create is waited for this long. */
	settle_until = deadline_ms > 0 ? deadline_ms : http_now_ms() + SETTLE_MAX_MS;
	/* A second create only after the listing showed that the first did not happen. */
	for (int tries = 0; tries < 2 && !winner; tries++) {
		create_begin(dd);
		rc = create_client(dd, body, deadline_ms, &ours, &cerr);
		need = create_end(dd, description);
		if (rc < 0 && !maybe_created(&cerr)) {
			if (err)
				*err = cerr;
			r = rc;
			goto out;
		}
		/* Never blindly repeat a create that may have reached DigDir: look first. */
		json_decref(list);
		list = NULL;
		r = list_shared(dd, need, true, deadline_ms, &list, err);
		if (r < 0)
			goto out;
		winner = digdir_pick_client(list, description, NULL, NULL);
		/*
		 * A create we stopped waiting for may still be running at DigDir:
		 * an empty listing proves nothing yet. Look again until it shows
		 * or the deadline passes, and never create a second time.
		 */
		while (!winner && rc < 0 && cerr.kind == ERR_TIMEOUT &&
		       http_now_ms() + SETTLE_POLL_MS < settle_until) {
			nanosleep(&(struct timespec){ 0, SETTLE_POLL_MS * 1000000L }, NULL);
			json_decref(list);
			list = NULL;
			r = digdir_list_clients(dd, deadline_ms, &list, err);
			if (r < 0)
				goto out;
			winner = digdir_pick_client(list, description, NULL, NULL);
		}
		if (winner)
			break;
		if (rc < 0 && cerr.kind == ERR_TIMEOUT) {
			if (err)
				*err = cerr;
			r = rc;
			goto out;
		}
		if (rc == 0) {
			r = err_set(err, ERR_BAD_RESPONSE, EPROTO,
				    "DigDir created client %s but does not list it", ours);
			goto out;
		}
		if (err)
			*err = cerr;
		r = rc;
	}
	if (!winner)
		goto out;
	*ret_ours = ours && !strcmp(json_string_value(json_object_get(winner, "client_id")), ours);
	if (ours && !*ret_ours) {
		/* Another node won the race; ours goes, so one client stays active. */
		r = digdir_delete_client(dd, ours, deadline_ms, err);
		if (r < 0 && (!err || err->kind != ERR_NOT_FOUND))
			goto out;
	}
	*ret_winner = json_incref(winner);
	r = 0;
out:
	free(ours);
	json_decref(list);
	return r;
}

int digdir_ensure_client(struct digdir *dd, const char *description, const char *const *scopes,
			 size_t nscopes, const char *pinned_id, int64_t deadline_ms,
			 char **ret_client_id, bool *ret_created, struct err *err)
{
	const char *def[1], *id, *itype;
	json_t *list = NULL, *client = NULL, *body = NULL, *have;
	char *path = NULL, *copy = NULL;
	bool created = false;
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
	r = digdir_check_scope_access(dd, scopes, nscopes, deadline_ms, err);
	if (r < 0)
		goto out;
	body = registration(dd, description, scopes, nscopes);
	if (!body) {
		r = err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
		goto out;
	}

	r = list_shared(dd, lookup_need(dd, description), false, deadline_ms, &list, err);
	if (r < 0)
		goto out;
	client = digdir_pick_client(list, description, pinned_id, NULL);
	/* A pinned client that is gone is looked up by description. */
	if (!client && pinned_id)
		client = digdir_pick_client(list, description, NULL, NULL);
	if (client) {
		json_incref(client);
	} else {
		r = create_and_settle(dd, description, body, deadline_ms, &client, &created, err);
		if (r < 0)
			goto out;
	}

	id = json_string_value(json_object_get(client, "client_id"));
	itype = json_string_value(json_object_get(client, "integration_type"));
	if (itype && strcmp(itype, "maskinporten") != 0) {
		r = err_set(
		    err, ERR_CONFLICT, EEXIST,
		    "client %s has integration_type %s, not maskinporten, and DigDir cannot "
		    "change it",
		    id, itype);
		goto out;
	}
	have = json_object_get(client, "scopes");
	if (!digdir_scopes_equal(have, scopes, nscopes)) {
		path = client_path(id, "");
		if (!path) {
			r = err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
			goto out;
		}
		r = digdir_call(dd, "PUT", path, "PUT /clients/{id}", body, true, deadline_ms, NULL,
				err);
		if (r < 0)
			goto out;
	}
	copy = strdup(id);
	if (!copy) {
		r = err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
		goto out;
	}
	*ret_client_id = copy;
	if (ret_created)
		*ret_created = created;
	r = 0;
out:
	free(path);
	json_decref(body);
	json_decref(client);
	json_decref(list);
	return r;
}

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
	r = digdir_call(dd, "GET", path, "GET /clients/{id}/jwks", NULL, true, deadline_ms, &doc,
			err);
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
	r = digdir_call(dd, "POST", path, "POST /clients/{id}/jwks", body, true, deadline_ms, &doc,
			err);
	if (r == 0 && ret)
		r = digdir_parse_jwks(doc, "POST /clients/{id}/jwks", ret, err);
out:
	json_decref(doc);
	json_decref(body);
	free(path);
	return r;
}

int digdir_sync_jwks(struct digdir *dd, const char *client_id, const struct keys_seed *seed,
		     int64_t epoch, int64_t epoch_len, unsigned flags,
		     keys_public_jwk_fn public_jwk, void *ctx, int64_t deadline_ms,
		     json_t **ret_registered, bool *ret_uploaded, struct err *err)
{
	struct keys_schedule_input in = { 0 };
	json_t *current = NULL, *set = NULL, *after = NULL, *final;
	char kid[KEYS_KID_MAX];
	bool changed = false;
	int r = 0;

	/*
	 * A client this process just created has no keys: reading them would
	 * cost a request and tell nothing. Another node uploading at the same
	 * time is the read-modify-write race every sync has; both upload the
	 * same derived keys, and the read-back checks ours are there.
	 */
	if (flags & DIGDIR_JWKS_NEW_CLIENT)
		current = json_array();
	else
		r = digdir_get_jwks(dd, client_id, deadline_ms, &current, err);
	if (!current) {
		if (r == 0)
			r = err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
		goto out;
	}
	in = (struct keys_schedule_input){ .seed = seed,
					   .client_id = client_id,
					   .epoch = epoch,
					   .epoch_len = epoch_len,
					   .current = current,
					   .drop_foreign = flags & DIGDIR_JWKS_DROP_FOREIGN };
	r = keys_schedule(&in, public_jwk, ctx, &set, &changed, err);
	if (r < 0)
		goto out;
	final = current;
	if (changed) {
		r = digdir_put_jwks(dd, client_id, set, deadline_ms, NULL, err);
		if (r < 0)
			goto out;
		/* Read back: the upload counts only once DigDir shows our keys. */
		r = digdir_get_jwks(dd, client_id, deadline_ms, &after, err);
		if (r < 0)
			goto out;
		final = after;
	}
	for (int64_t e = epoch; e <= epoch + 1; e++) {
		r = keys_kid(seed, client_id, e, kid);
		if (r < 0) {
			r = err_set(err, ERR_INVALID, -r, "client id %s too long for a kid",
				    client_id);
			goto out;
		}
		if (!keys_set_has_kid(final, kid)) {
			r = err_set(err, ERR_BAD_RESPONSE, EPROTO,
				    "DigDir does not list key %s of client %s after the upload",
				    kid, client_id);
			goto out;
		}
	}
	if (ret_registered)
		*ret_registered = json_incref(final);
	if (ret_uploaded)
		*ret_uploaded = changed;
	r = 0;
out:
	json_decref(current);
	json_decref(set);
	json_decref(after);
	return r;
}
