/*
 * provider: Mount and Version for the gRPC server.
 *
 * The fast handler runs on the server's completion-queue thread: it parses,
 * answers bad requests and warm clients from memory, and hands everything
 * else to a worker (the slow handler), so a cold Mount never delays a warm
 * one. What it hands over is the parsed request, never the request bytes:
 * those carry the `secrets` field (up to megabytes the provider never reads)
 * and the pod's tokens, and are released before the Mount waits. Errors become gRPC status codes
 * here and nowhere else. Each Mount is logged once (cache hits at debug), with pod, namespace,
 * client and result; never the key, the `secrets` field or the pod's tokens.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "hash.h"
#include "log.h"
#include "metrics.h"
#include "mount.h"
#include "provider.h"
#include "registry.h"
#include "scopes.h"
#include "utf8.h"
#include "wipe.h"
#include "writer.h"

/* Time kept back from the caller's deadline, so our error arrives before theirs. */
#define DEADLINE_MARGIN_MS 1500

/*
 * Packed answers of warm Mounts. Every pod of an app gets the same files, so
 * the answer is built once per (app, scopes, mode, key) and copied after
 * that. Direct-mapped by the app's description; a collision replaces. The
 * slots share SLOT_LOCKS mutexes, so the table's pages stay untouched (and
 * out of the resident set) until apps use them.
 */
#define ANSWER_SLOTS 1024
#define SLOT_LOCKS   64

struct answer_slot {
	char *description;
	char *scopes_key;
	const struct mp_metadata
	    *meta; /* the metadata the files name; a refresh makes them stale */
	unsigned mode;
	char kid[KEYS_KID_MAX];
	char *client_id;
	uint8_t *payload; /* SECRET: holds the private JWK */
	size_t len;
};

struct provider {
	struct app *app;
	struct registry *reg;
	struct scopes *scopes;
	struct state *state;
	struct answer_slot *slots;
	pthread_mutex_t slot_locks[SLOT_LOCKS];
	_Atomic(const struct mp_metadata *) meta; /* set once fetched; lives as long as app->mp */
};

enum server_code provider_status(enum err_kind kind)
{
	switch (kind) {
	case ERR_NONE:
		return SERVER_OK;
	case ERR_INVALID:
		return SERVER_INVALID_ARGUMENT;
	case ERR_PERMISSION:
		return SERVER_PERMISSION_DENIED;
	case ERR_SCOPE_ACCESS:
	case ERR_UPSTREAM:
	case ERR_CONFLICT:
	case ERR_UNCONFIGURED:
		return SERVER_FAILED_PRECONDITION;
	case ERR_NOT_FOUND:
		return SERVER_NOT_FOUND;
	case ERR_THROTTLED:
		return SERVER_RESOURCE_EXHAUSTED;
	case ERR_TIMEOUT:
	case ERR_PROPAGATING:
		return SERVER_DEADLINE_EXCEEDED;
	/*
	 * DigDir being down is not UNAVAILABLE: the driver would retry at once,
	 * three times, adding load where kubelet's own backoff is the right pace.
	 */
	case ERR_UNAVAILABLE:
	case ERR_BAD_RESPONSE:
	case ERR_INTERNAL:
		return SERVER_INTERNAL;
	}
	return SERVER_INTERNAL;
}

/* What a person should do about an error kind. */
static const char *advice(enum err_kind kind)
{
	switch (kind) {
	case ERR_THROTTLED:
		return "; DigDir is rate limiting, the kubelet retries with backoff";
	case ERR_UNAVAILABLE:
	case ERR_TIMEOUT:
		return "; the kubelet retries with backoff, and clients this node knows keep "
		       "being served meanwhile";
	case ERR_BAD_RESPONSE:
		return "; DigDir or Maskinporten answered something unusable, see the provider's "
		       "log";
	default:
		return "";
	}
}

static void reply_error(struct provider *p, struct server_reply *reply,
			const struct mount_request *req, const struct err *err)
{
	/* Upstream trouble while stopping is our own doing: http_cancel. */
	bool stopping = http_cancelled(p->app->http) &&
			(err->kind == ERR_UNAVAILABLE || err->kind == ERR_TIMEOUT);
	int n;

	reply->code = stopping ? SERVER_UNAVAILABLE : provider_status(err->kind);
	if (req && req->description)
		n = snprintf(reply->message, sizeof(reply->message),
			     "maskinporten: pod %s/%s, client %s: %s", req->namespace_name,
			     req->pod_name ? req->pod_name : "?", req->description, err->msg);
	else
		n = snprintf(reply->message, sizeof(reply->message), "maskinporten: %s", err->msg);
	if (n > 0 && (size_t)n < sizeof(reply->message) && err->correlation_id[0] &&
	    !strstr(err->msg, err->correlation_id))
		n += snprintf(reply->message + n, sizeof(reply->message) - (size_t)n,
			      " (DigDir correlation_id %s)", err->correlation_id);
	if (n > 0 && (size_t)n < sizeof(reply->message))
		snprintf(reply->message + n, sizeof(reply->message) - (size_t)n, "%s",
			 stopping ? "; the provider is shutting down, the kubelet retries"
				  : advice(err->kind));
	/* gRPC clients read the details as UTF-8: a cut to fit must not split a character. */
	utf8_clean(reply->message);
}

/* s, or NULL when it is empty: an attribute the request did not carry. */
static const char *nonempty(const char *s)
{
	return s[0] ? s : NULL;
}

/*
 * Counts the Mount and logs it: errors as warnings, Mounts that reached a
 * worker at info, and those answered on the fast path, the driver's
 * republishing of every pod every few minutes, at debug (they are counted in
 * the metrics). hit: the client and its key were known, nothing was asked of
 * DigDir (a worker answers such Mounts too: files written by the provider,
 * exposed scopes). A request refused before it was parsed has no req: who
 * then names the pod as far as its attributes do.
 */
static void log_mount(const struct mount_request *req, const struct mount_who *who,
		      const char *client_id, int64_t t0, const struct err *err, bool fast, bool hit)
{
	enum log_level level = err ? LOG_LEVEL_WARN : fast ? LOG_LEVEL_DEBUG : LOG_LEVEL_INFO;
	double seconds = (double)(clock_now_ms() - t0) / 1000.0;
	const char *ns = NULL, *pod = NULL, *app = NULL;
	char ms[32];

	metrics_mount(err ? "error" : "ok", err ? err_kind_name(err->kind) : "none", seconds);
	if (log_current_level < level)
		return;
	if (req) {
		ns = req->namespace_name;
		pod = req->pod_name;
		app = req->service_account;
	} else if (who) {
		ns = nonempty(who->namespace_name);
		pod = nonempty(who->pod_name);
		app = nonempty(who->service_account);
	}
	struct log_field f[] = {
		{ "namespace", ns },
		{ "pod", pod },
		{ "app", app },
		{ "client_id", client_id },
		{ "duration_ms", ms },
		{ "result", err ? "error" : "ok" },
		{ "kind", err ? err_kind_name(err->kind) : NULL },
		{ "cache", err ? NULL : (hit ? "hit" : "miss") },
	};

	snprintf(ms, sizeof(ms), "%.1f", seconds * 1000.0);
	if (err)
		log_fields(level, f, sizeof(f) / sizeof(f[0]), "mount failed: %s", err->msg);
	else
		log_fields(level, f, sizeof(f) / sizeof(f[0]), "mount");
}

static int version(void *ctx, const uint8_t *data, size_t len, int64_t deadline_ms,
		   struct server_reply *reply, void **ret_work, size_t *ret_work_bytes)
{
	if (mount_version_response(&reply->payload, &reply->len) < 0) {
		reply->code = SERVER_INTERNAL;
		snprintf(reply->message, sizeof(reply->message), "out of memory");
		return 0;
	}
	reply->code = SERVER_OK;
	return 0;
}

/* Answers from a registry answer: files in the response, or written by us. */
static int answer(struct provider *p, const struct mount_request *req,
		  const struct registry_answer *a, const struct mp_metadata *meta,
		  const char *exposed, struct server_reply *reply, struct err *err)
{
	const struct config *cfg = p->app->cfg;
	struct mount_content c = {
		.client_id = a->client_id,
		.jwk_private = a->jwk_private,
		.kid = a->kid,
		.well_known_url = meta->well_known_url,
		.issuer = meta->issuer,
		.jwks_uri = meta->jwks_uri,
		.token_endpoint = meta->token_endpoint,
		.exposed_scopes = exposed,
	};
	bool provider_writes = cfg->write_mode == WRITE_MODE_PROVIDER;
	struct mount_file files[MOUNT_MAX_FILES];
	struct writer_file wf[MOUNT_MAX_FILES];
	size_t n = 0;
	int r;

	if (provider_writes && !req->target_path)
		return err_set(err, ERR_INVALID, EINVAL,
			       "field \"target_path\" is empty, and this provider writes the files "
			       "itself (--write-mode provider)");
	/* Built once: written here in provider write mode, and versioned in the answer. */
	r = mount_build_files(req, &c, files, &n);
	if (r < 0)
		return err_set(err, ERR_INTERNAL, -r, "building the files failed");
	if (provider_writes) {
		for (size_t i = 0; i < n; i++)
			wf[i] = (struct writer_file){ files[i].name, req->mode,
						      (const uint8_t *)files[i].contents,
						      files[i].len };
		r = writer_write(cfg->kubelet_dir, req->target_path, wf, n, err);
		if (r < 0)
			goto out;
	}
	r = mount_pack_response(files, n, req->mode, a->kid, !provider_writes, &reply->payload,
				&reply->len);
	if (r < 0) {
		r = err_set(err, ERR_INTERNAL, -r, "building the response failed");
		goto out;
	}
	reply->code = SERVER_OK;
out:
	mount_files_free(files, n);
	return r;
}

static struct answer_slot *slot_of(struct provider *p, const char *description)
{
	return &p->slots[hash_str(HASH_INIT, description) % ANSWER_SLOTS];
}

static pthread_mutex_t *slot_lock(struct provider *p, const struct answer_slot *s)
{
	return &p->slot_locks[(size_t)(s - p->slots) % SLOT_LOCKS];
}

static void slot_clear(struct answer_slot *s)
{
	free(s->description);
	free(s->scopes_key);
	free(s->client_id);
	if (s->payload) {
		wipe(s->payload, s->len);
		free(s->payload);
	}
	s->description = s->scopes_key = s->client_id = NULL;
	s->payload = NULL;
	s->len = 0;
}

/* Copies the cached answer for req and kid into reply. True when there was one. */
static bool cached_answer(struct provider *p, const struct mount_request *req, const char *kid,
			  const struct mp_metadata *meta, struct server_reply *reply,
			  char *ret_client_id, size_t idlen)
{
	struct answer_slot *s = slot_of(p, req->description);
	bool hit = false;

	pthread_mutex_lock(slot_lock(p, s));
	if (s->payload && s->mode == req->mode && s->meta == meta && !strcmp(s->kid, kid) &&
	    !strcmp(s->description, req->description) && !strcmp(s->scopes_key, req->scopes_key)) {
		reply->payload = malloc(s->len ? s->len : 1);
		if (reply->payload) {
			memcpy(reply->payload, s->payload, s->len);
			reply->len = s->len;
			reply->code = SERVER_OK;
			snprintf(ret_client_id, idlen, "%s", s->client_id);
			hit = true;
		}
	}
	pthread_mutex_unlock(slot_lock(p, s));
	return hit;
}

/* Keeps a copy of a warm answer for the next pod of the same app. */
static void cache_answer(struct provider *p, const struct mount_request *req,
			 const struct registry_answer *a, const struct mp_metadata *meta,
			 const struct server_reply *reply)
{
	struct answer_slot *s = slot_of(p, req->description);

	pthread_mutex_lock(slot_lock(p, s));
	slot_clear(s);
	s->description = strdup(req->description);
	s->scopes_key = strdup(req->scopes_key);
	s->client_id = strdup(a->client_id);
	s->payload = malloc(reply->len ? reply->len : 1);
	if (s->description && s->scopes_key && s->client_id && s->payload) {
		memcpy(s->payload, reply->payload, reply->len);
		s->len = reply->len;
		s->mode = req->mode;
		s->meta = meta;
		memcpy(s->kid, a->kid, sizeof(s->kid));
	} else {
		slot_clear(s);
	}
	pthread_mutex_unlock(slot_lock(p, s));
}

static int64_t budget(struct provider *p, int64_t deadline_ms)
{
	int64_t own = clock_now_ms() + p->app->cfg->mount_timeout_ms;
	int64_t theirs = deadline_ms - DEADLINE_MARGIN_MS;

	return theirs < own ? theirs : own;
}

/* A Mount handed to a worker: the parsed request and when it arrived. */
struct work {
	struct mount_request req;
	int64_t t0;
};

static size_t str_bytes(const char *s)
{
	return s ? strlen(s) + 1 : 0;
}

/* What a work item holds, for the server's byte bound on its queue. */
static size_t work_bytes(const struct work *w)
{
	const struct mount_request *r = &w->req;
	size_t n = sizeof(*w);

	n += str_bytes(r->namespace_name) + str_bytes(r->service_account) + str_bytes(r->pod_name) +
	     str_bytes(r->pod_uid) + str_bytes(r->target_path) + str_bytes(r->description) +
	     str_bytes(r->scopes_key) + str_bytes(r->exposes);
	for (size_t i = 0; i < r->nscopes; i++)
		n += str_bytes(r->scopes[i]);
	return n;
}

static void work_free(void *arg)
{
	struct work *w = arg;

	if (!w)
		return;
	mount_request_free(&w->req);
	free(w);
}

/*
 * Moves *req into a new work item for a worker. False when out of memory:
 * then the caller still owns *req.
 */
static bool hand_over(struct mount_request *req, int64_t t0, void **ret_work,
		      size_t *ret_work_bytes)
{
	struct work *w = malloc(sizeof(*w));

	if (!w)
		return false;
	w->req = *req;
	w->t0 = t0;
	memset(req, 0, sizeof(*req));
	*ret_work = w;
	*ret_work_bytes = work_bytes(w);
	return true;
}

static int mount_fast(void *ctx, const uint8_t *data, size_t len, int64_t deadline_ms,
		      struct server_reply *reply, void **ret_work, size_t *ret_work_bytes)
{
	struct provider *p = ctx;
	const struct mp_metadata *meta = atomic_load(&p->meta);
	struct registry_answer a = { 0 };
	struct mount_request req = { 0 };
	struct mount_who who;
	struct err err = { 0 };
	char kid[KEYS_KID_MAX], client_id[128];
	int64_t t0 = clock_now_ms();
	int handed = 1;

	if (mount_parse(data, len, p->app->cfg->cluster_name, &req, &who, &err) < 0) {
		reply_error(p, reply, NULL, &err);
		log_mount(NULL, &who, NULL, t0, &err, false, false);
		return 0;
	}
	/* Writing files, exposed scopes and cold clients are a worker's job. */
	if (!meta || req.exposes || p->app->cfg->write_mode == WRITE_MODE_PROVIDER ||
	    registry_warm_kid(p->reg, req.description, req.scopes_key, kid) < 0)
		goto out;

	/* Another pod of the same app had this very answer: copy it. */
	if (cached_answer(p, &req, kid, meta, reply, client_id, sizeof(client_id))) {
		log_mount(&req, NULL, client_id, t0, NULL, true, true);
		handed = 0;
		goto out;
	}
	if (registry_lookup(p->reg, req.description, req.scopes_key, &a) < 0)
		goto out;
	if (answer(p, &req, &a, meta, NULL, reply, &err) < 0) {
		reply_error(p, reply, &req, &err);
		log_mount(&req, NULL, a.client_id, t0, &err, true, true);
	} else {
		cache_answer(p, &req, &a, meta, reply);
		log_mount(&req, NULL, a.client_id, t0, NULL, true, true);
	}
	handed = 0;
out:
	registry_answer_release(&a);
	if (handed && !hand_over(&req, t0, ret_work, ret_work_bytes)) {
		err_set(&err, ERR_INTERNAL, ENOMEM, "out of memory");
		reply_error(p, reply, &req, &err);
		log_mount(&req, NULL, NULL, t0, &err, true, false);
		handed = 0;
	}
	mount_request_free(&req);
	return handed;
}

/*
 * Consumer grants DigDir refused: the Mount went on without them, so each is
 * logged (and counted) where the operator looks, with DigDir's reason.
 */
static void log_refused(const struct mount_request *req, const json_t *refused)
{
	size_t i;
	json_t *o;

	json_array_foreach(refused, i, o)
	{
		const char *scope = json_string_value(json_object_get(o, "scope"));
		const char *orgno = json_string_value(json_object_get(o, "orgno"));
		const char *why = json_string_value(json_object_get(o, "reason"));
		struct log_field f[] = {
			{ "namespace", req->namespace_name },
			{ "app", req->service_account },
			{ "scope", scope },
			{ "orgno", orgno },
		};

		metrics_consumer_refused();
		log_fields(LOG_LEVEL_WARN, f, sizeof(f) / sizeof(f[0]),
			   "DigDir refused to grant organisation %s access to exposed scope %s; "
			   "skipped, the other consumers are granted: %s",
			   orgno ? orgno : "?", scope ? scope : "?", why ? why : "");
	}
}

static void mount_slow(void *ctx, void *arg, int64_t deadline_ms, struct server_reply *reply)
{
	struct provider *p = ctx;
	struct work *w = arg;
	struct registry_answer a = { 0 };
	const struct mount_request *req = w ? &w->req : NULL;
	const struct mp_metadata *meta = NULL;
	struct scopes_decl *decl = NULL;
	json_t *refused = NULL;
	char *exposed = NULL;
	struct err err = { 0 };
	int64_t t0 = w ? w->t0 : clock_now_ms(), until = budget(p, deadline_ms);

	if (!req) {
		err_set(&err, ERR_INTERNAL, EINVAL, "a Mount reached a worker without its request");
		goto fail;
	}
	/* A bad declaration, or one this provider cannot serve, fails before anything is
	 * provisioned. */
	if (req->exposes && scopes_parse(req->exposes, &decl, &err) < 0)
		goto fail;
	if (decl && scopes_check(p->scopes, &err) < 0)
		goto fail;
	if (mp_metadata(p->app->mp, until, &meta, &err) < 0) {
		err_prefix(&err, "fetching Maskinporten's metadata: ");
		goto fail;
	}
	atomic_store(&p->meta, meta);
	if (registry_ensure(p->reg, req->description, req->scopes, req->nscopes, req->scopes_key,
			    until, &a, &err) < 0)
		goto fail;
	/* Exposed scopes once the client is there; cached per app (scopes.c). */
	if (decl &&
	    scopes_sync(p->scopes, req->description, decl, until, &exposed, &refused, &err) < 0) {
		err_prefix(&err, "exposed scopes: ");
		goto fail;
	}
	if (decl) {
		log_refused(req, refused);
		state_refused(p->state, req->description, refused);
	}
	if (answer(p, req, &a, meta, exposed, reply, &err) < 0)
		goto fail;
	log_mount(req, NULL, a.client_id, t0, NULL, false, a.cached);
	goto out;
fail:
	reply_error(p, reply, req, &err);
	log_mount(req, NULL, a.client_id, t0, &err, false, false);
out:
	free(exposed);
	json_decref(refused);
	scopes_decl_free(decl);
	registry_answer_release(&a);
}

struct state *provider_state_open(const struct config *cfg)
{
	char *path = cfg->state_file ? NULL : state_default_path(cfg->socket_path);
	struct state *st = state_open(cfg->state_file ? cfg->state_file : path, cfg->cluster_name);

	free(path);
	return st;
}

struct provider *provider_new(struct app *app, struct err *err)
{
	const struct config *cfg = app->cfg;
	struct registry_config rc = {
		.capacity = cfg->cache_size,
		.epoch_len = cfg->epoch_length,
		.revalidate_interval_s = cfg->revalidate_interval_s,
		.flight_timeout_ms = cfg->flight_timeout_ms,
		.flip_window_ms = cfg->scope_flip_window_ms,
		.time_offset_s = cfg->time_offset_s,
	};
	struct provider *p = calloc(1, sizeof(*p));

	if (!p) {
		err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
		return NULL;
	}
	p->app = app;
	p->state = provider_state_open(cfg);
	p->reg =
	    p->state ? registry_new(&rc, app->dd, app->mp, app->http, &app->seed, p->state) : NULL;
	p->scopes = scopes_new(app->dd, cfg->scope_prefix, cfg->revalidate_interval_s);
	p->slots = calloc(ANSWER_SLOTS, sizeof(*p->slots));
	if (!p->reg || !p->scopes || !p->slots) {
		registry_free(p->reg);
		scopes_free(p->scopes);
		state_close(p->state);
		free(p->slots);
		free(p);
		err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
		return NULL;
	}
	for (size_t i = 0; i < SLOT_LOCKS; i++)
		pthread_mutex_init(&p->slot_locks[i], NULL);
	metrics_epoch(registry_epoch(p->reg));
	writer_test_crash_after(cfg->test_crash_in_write);
	return p;
}

void provider_cancel(void *ctx)
{
	struct provider *p = ctx;

	/* Flights waiting for Maskinporten stop too, and revalidation starts nothing more. */
	registry_stop(p->reg);
	http_cancel(p->app->http);
}

int provider_start(struct provider *p)
{
	return registry_start(p->reg);
}

void provider_free(struct provider *p)
{
	if (!p)
		return;
	registry_free(p->reg);
	scopes_free(p->scopes);
	state_close(p->state);
	for (size_t i = 0; i < ANSWER_SLOTS; i++)
		slot_clear(&p->slots[i]);
	for (size_t i = 0; i < SLOT_LOCKS; i++)
		pthread_mutex_destroy(&p->slot_locks[i]);
	free(p->slots);
	free(p);
}

void provider_ops(struct provider *p, struct server_ops *ret)
{
	*ret = (struct server_ops){
		.version = version,
		.mount_fast = mount_fast,
		.mount_slow = mount_slow,
		.work_free = work_free,
		.cancel = provider_cancel,
		.ctx = p,
	};
}

int provider_ready(struct provider *p, char *msg, size_t len)
{
	const struct mp_metadata *meta = NULL;
	struct err err = { 0 };
	char *token = NULL;
	int r;

	metrics_epoch(registry_epoch(p->reg));
	r = mp_metadata(p->app->mp, clock_now_ms() + 5000, &meta, &err);
	if (r == 0) {
		atomic_store(&p->meta, meta);
		r = mp_admin_token(p->app->mp, MP_ADMIN_CLIENTS, clock_now_ms() + 5000, &token,
				   &err);
	}
	secret_free(token);
	if (r < 0)
		snprintf(msg, len, "%s", err.msg);
	return r;
}
