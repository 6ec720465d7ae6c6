/*
 * registry: the per-client cache, one provisioning flight per client, epochs.
 *
 * One mutex guards the table; it is never held across network calls or key
 * derivation. A flight marks its entry in_flight, drops the lock, talks to
 * DigDir, derives keys, then publishes under the lock and wakes the callers
 * that waited for it. Must never log key material; entries wipe their
 * private JWK when they are replaced or evicted.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hash.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "registry.h"
#include "timespec.h"

struct entry {
	char *description;
	char *client_id; /* pinned once known */
	char **scopes;	 /* as registered */
	size_t nscopes;
	char *scopes_key;
	int64_t epoch;	   /* epoch of jwk_private; -1: none */
	char *jwk_private; /* SECRET */
	char kid[KEYS_KID_MAX];
	int64_t registered_max; /* highest own epoch seen registered at DigDir; -1: none */
	int64_t validated_ms;	/* last successful flight, http_now_ms() clock */
	bool in_flight;
	int waiters;	     /* callers sleeping on this entry: it must not be evicted */
	unsigned generation; /* bumped by every finished flight */
	int flight_rc;
	struct err flight_err;
	struct entry *hnext;	   /* hash chain */
	struct entry *prev, *next; /* LRU list, most recent first */
};

struct registry {
	struct registry_config cfg;
	struct digdir *dd;
	const struct keys_seed *seed;
	pthread_mutex_t lock;
	pthread_cond_t flight_done;
	struct entry **buckets;
	size_t nbuckets, size;
	struct entry *lru_head, *lru_tail;
	pthread_t thread;
	bool thread_started, stopping;
	pthread_cond_t wake;
};

static uint64_t hash(const char *s)
{
	return hash_str(HASH_INIT, s);
}

static int64_t now_s(const struct registry *reg)
{
	return (int64_t)time(NULL) + reg->cfg.time_offset_s;
}

int64_t registry_epoch(const struct registry *reg)
{
	return keys_epoch_at(now_s(reg), reg->cfg.epoch_len);
}

static void lru_unlink(struct registry *reg, struct entry *e)
{
	if (e->prev)
		e->prev->next = e->next;
	else
		reg->lru_head = e->next;
	if (e->next)
		e->next->prev = e->prev;
	else
		reg->lru_tail = e->prev;
	e->prev = e->next = NULL;
}

static void lru_push(struct registry *reg, struct entry *e)
{
	e->next = reg->lru_head;
	e->prev = NULL;
	if (reg->lru_head)
		reg->lru_head->prev = e;
	reg->lru_head = e;
	if (!reg->lru_tail)
		reg->lru_tail = e;
}

static void free_scopes(char **scopes, size_t n)
{
	if (!scopes)
		return;
	for (size_t i = 0; i < n; i++)
		free(scopes[i]);
	free(scopes);
}

static void wipe_jwk(struct entry *e)
{
	keys_free_secret(e->jwk_private);
	e->jwk_private = NULL;
	e->epoch = -1;
}

static void entry_free(struct entry *e)
{
	if (!e)
		return;
	wipe_jwk(e);
	free(e->description);
	free(e->client_id);
	free_scopes(e->scopes, e->nscopes);
	free(e->scopes_key);
	free(e);
}

static struct entry *find(struct registry *reg, const char *description)
{
	struct entry *e = reg->buckets[hash(description) & (reg->nbuckets - 1)];

	for (; e; e = e->hnext)
		if (!strcmp(e->description, description))
			return e;
	return NULL;
}

static void table_remove(struct registry *reg, struct entry *victim)
{
	struct entry **p = &reg->buckets[hash(victim->description) & (reg->nbuckets - 1)];

	for (; *p; p = &(*p)->hnext)
		if (*p == victim) {
			*p = victim->hnext;
			break;
		}
	lru_unlink(reg, victim);
	reg->size--;
}

/* Adds an empty entry, evicting the least recently used idle one when full. */
static struct entry *insert(struct registry *reg, const char *description)
{
	struct entry *e, **bucket;

	while (reg->size >= (size_t)reg->cfg.capacity) {
		struct entry *victim = reg->lru_tail;

		while (victim && (victim->in_flight || victim->waiters))
			victim = victim->prev;
		if (!victim)
			return NULL;
		table_remove(reg, victim);
		entry_free(victim);
	}
	e = calloc(1, sizeof(*e));
	if (!e)
		return NULL;
	e->description = strdup(description);
	if (!e->description) {
		free(e);
		return NULL;
	}
	e->epoch = -1;
	e->registered_max = -1;
	bucket = &reg->buckets[hash(description) & (reg->nbuckets - 1)];
	e->hnext = *bucket;
	*bucket = e;
	lru_push(reg, e);
	reg->size++;
	metrics_cache_size((long)reg->size);
	return e;
}

static bool warm(const struct entry *e, const char *scopes_key, int64_t epoch)
{
	return e->client_id && e->jwk_private && e->epoch == epoch && e->scopes_key &&
	       !strcmp(e->scopes_key, scopes_key);
}

/* Copies the answer out of e; call with the lock held. */
static int answer_from(const struct entry *e, struct registry_answer *ret)
{
	struct registry_answer a = { 0 };

	a.client_id = strdup(e->client_id);
	a.jwk_private = strdup(e->jwk_private);
	if (!a.client_id || !a.jwk_private) {
		registry_answer_release(&a);
		return -ENOMEM;
	}
	memcpy(a.kid, e->kid, sizeof(a.kid));
	a.epoch = e->epoch;
	*ret = a;
	return 0;
}

void registry_answer_release(struct registry_answer *answer)
{
	if (!answer)
		return;
	free(answer->client_id);
	keys_free_secret(answer->jwk_private);
	memset(answer, 0, sizeof(*answer));
}

int registry_lookup(struct registry *reg, const char *description, const char *scopes_key,
		    struct registry_answer *ret)
{
	int64_t epoch = registry_epoch(reg);
	struct entry *e;
	int r = -EAGAIN;

	pthread_mutex_lock(&reg->lock);
	e = find(reg, description);
	if (e && warm(e, scopes_key, epoch))
		r = answer_from(e, ret);
	pthread_mutex_unlock(&reg->lock);
	return r;
}

int registry_warm_kid(struct registry *reg, const char *description, const char *scopes_key,
		      char ret_kid[KEYS_KID_MAX])
{
	int64_t epoch = registry_epoch(reg);
	struct entry *e;
	int r = -EAGAIN;

	pthread_mutex_lock(&reg->lock);
	e = find(reg, description);
	if (e && warm(e, scopes_key, epoch)) {
		memcpy(ret_kid, e->kid, KEYS_KID_MAX);
		lru_unlink(reg, e);
		lru_push(reg, e);
		r = 0;
	}
	pthread_mutex_unlock(&reg->lock);
	/* A miss is counted by registry_ensure, which every miss goes on to. */
	if (r == 0)
		metrics_cache(true);
	return r;
}

/* The highest epoch among our keys in a registered "keys" array, or -1. */
static int64_t registered_max(const struct registry *reg, const char *client_id, const json_t *keys)
{
	int64_t best = -1, ep;
	size_t i;
	json_t *k;

	json_array_foreach(keys, i, k)
	{
		const char *kid = json_string_value(json_object_get(k, "kid"));

		if (kid && keys_kid_is_own(reg->seed, client_id, kid, &ep) && ep > best)
			best = ep;
	}
	return best;
}

/* What a flight produced, published under the lock. */
struct flight_result {
	char *client_id;
	char *jwk_private; /* SECRET */
	char kid[KEYS_KID_MAX];
	int64_t epoch;
	int64_t registered_max;
};

/*
 * The network part of a flight, run without the lock: find or create the
 * client, register the key schedule, derive the current key. pinned may be NULL.
 */
static int fly(struct registry *reg, const char *description, char *const *scopes, size_t nscopes,
	       const char *pinned, int64_t epoch, int64_t deadline_ms, struct flight_result *ret,
	       struct err *err)
{
	struct keys_derive_ctx d = { .seed = reg->seed, .keep = true, .keep_epoch = epoch };
	json_t *registered = NULL;
	char *client_id = NULL;
	bool uploaded = false, created = false;
	int r;

	r = digdir_ensure_client(reg->dd, description, (const char *const *)scopes, nscopes, pinned,
				 deadline_ms, &client_id, &created, err);
	if (r < 0)
		goto out;
	d.client_id = client_id;
	r = digdir_sync_jwks(reg->dd, client_id, reg->seed, epoch, reg->cfg.epoch_len,
			     created ? DIGDIR_JWKS_NEW_CLIENT : 0, keys_derive_public_jwk, &d,
			     deadline_ms, &registered, &uploaded, err);
	for (unsigned i = 0; i < d.derived; i++)
		metrics_key_derived();
	if (r < 0)
		goto out;
	if (uploaded)
		metrics_jwks_upload();
	if (!d.kept) {
		d.kept = keys_derive(reg->seed, client_id, epoch);
		if (!d.kept) {
			r = err_set(err, ERR_INTERNAL, EIO, "deriving the key of epoch %lld failed",
				    (long long)epoch);
			goto out;
		}
		metrics_key_derived();
	}
	r = keys_kid(reg->seed, client_id, epoch, ret->kid);
	if (r < 0) {
		err_set(err, ERR_INTERNAL, -r, "the client id is too long for a kid");
		goto out;
	}
	ret->jwk_private = keys_jwk_private(d.kept, ret->kid);
	if (!ret->jwk_private) {
		r = err_set(err, ERR_INTERNAL, ENOMEM, "serialising the key failed");
		goto out;
	}
	ret->epoch = epoch;
	ret->registered_max = registered_max(reg, client_id, registered);
	ret->client_id = client_id;
	client_id = NULL;
	r = 0;
out:
	EVP_PKEY_free(d.kept);
	json_decref(registered);
	free(client_id);
	return r;
}

/*
 * DigDir failed, but this node saw the current key registered before: derive
 * it locally and keep serving. Returns 0 with the result, or -ENOENT.
 */
static int fallback(struct registry *reg, const char *client_id, int64_t registered, int64_t epoch,
		    struct flight_result *ret)
{
	EVP_PKEY *pkey;

	if (!client_id || registered < epoch)
		return -ENOENT;
	pkey = keys_derive(reg->seed, client_id, epoch);
	if (!pkey)
		return -EIO;
	metrics_key_derived();
	if (keys_kid(reg->seed, client_id, epoch, ret->kid) < 0 ||
	    !(ret->jwk_private = keys_jwk_private(pkey, ret->kid)) ||
	    !(ret->client_id = strdup(client_id))) {
		EVP_PKEY_free(pkey);
		keys_free_secret(ret->jwk_private);
		return -ENOMEM;
	}
	EVP_PKEY_free(pkey);
	ret->epoch = epoch;
	ret->registered_max = registered;
	return 0;
}

static char **copy_scopes(char *const *scopes, size_t n)
{
	char **c = calloc(n ? n : 1, sizeof(char *));

	for (size_t i = 0; c && i < n; i++)
		if (!(c[i] = strdup(scopes[i]))) {
			free_scopes(c, i);
			return NULL;
		}
	return c;
}

/*
 * Runs one flight for e (marked in_flight by the caller, lock held on entry
 * and on return). Publishes the result and wakes the waiters.
 */
static int run_flight(struct registry *reg, struct entry *e, char *const *scopes, size_t nscopes,
		      const char *scopes_key, int64_t deadline_ms, struct err *err)
{
	struct flight_result res = { 0 };
	char *pinned = e->client_id ? strdup(e->client_id) : NULL;
	char *description = strdup(e->description);
	bool same_scopes = e->scopes_key && !strcmp(e->scopes_key, scopes_key);
	int64_t known_max = e->registered_max, epoch = registry_epoch(reg);
	char **scopes_copy = copy_scopes(scopes, nscopes);
	char *key_copy = strdup(scopes_key);
	int r;

	pthread_mutex_unlock(&reg->lock);

	if (!description || !scopes_copy || !key_copy) {
		r = err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
	} else {
		r = fly(reg, description, scopes, nscopes, pinned, epoch, deadline_ms, &res, err);
		if (r < 0 && same_scopes && err->kind != ERR_SCOPE_ACCESS &&
		    err->kind != ERR_INVALID &&
		    fallback(reg, pinned, known_max, epoch, &res) == 0) {
			log_warn(
			    "DigDir failed for %s (%s); serving the key of epoch %lld, which was "
			    "registered when last checked",
			    description, err->msg, (long long)epoch);
			r = 0;
		}
	}

	pthread_mutex_lock(&reg->lock);
	if (r == 0) {
		wipe_jwk(e);
		free(e->client_id);
		e->client_id = res.client_id;
		e->jwk_private = res.jwk_private;
		e->epoch = res.epoch;
		memcpy(e->kid, res.kid, sizeof(e->kid));
		if (res.registered_max > e->registered_max)
			e->registered_max = res.registered_max;
		free_scopes(e->scopes, e->nscopes);
		free(e->scopes_key);
		e->scopes = scopes_copy;
		e->nscopes = nscopes;
		e->scopes_key = key_copy;
		scopes_copy = NULL;
		key_copy = NULL;
		e->validated_ms = http_now_ms();
	}
	e->in_flight = false;
	e->generation++;
	e->flight_rc = r;
	if (r < 0 && err)
		e->flight_err = *err;
	pthread_cond_broadcast(&reg->flight_done);

	free_scopes(scopes_copy, nscopes);
	free(key_copy);
	free(pinned);
	free(description);
	return r;
}

/* Waits for the flight on e to finish; lock held. -ETIMEDOUT past the deadline. */
static int wait_flight(struct registry *reg, struct entry *e, int64_t deadline_ms)
{
	while (e->in_flight) {
		int64_t left = deadline_ms - http_now_ms();
		struct timespec ts;

		if (left <= 0)
			return -ETIMEDOUT;
		ts = timespec_in_ms(CLOCK_REALTIME, left);
		pthread_cond_timedwait(&reg->flight_done, &reg->lock, &ts);
	}
	return 0;
}

int registry_ensure(struct registry *reg, const char *description, char *const *scopes,
		    size_t nscopes, const char *scopes_key, int64_t deadline_ms,
		    struct registry_answer *ret, struct err *err)
{
	int64_t epoch = registry_epoch(reg);
	struct entry *e;
	bool cached = false;
	int r;

	pthread_mutex_lock(&reg->lock);
	e = find(reg, description);
	if (!e)
		e = insert(reg, description);
	if (!e) {
		r = err_set(err, ERR_INTERNAL, ENOMEM,
			    "the client cache is full of clients being provisioned");
		goto out;
	}
	lru_unlink(reg, e);
	lru_push(reg, e);
	cached = warm(e, scopes_key, epoch);
	metrics_cache(cached);

	if (e->in_flight) {
		unsigned gen = e->generation;

		/* Share the running flight: its result is ours when it asked for our scopes. */
		e->waiters++;
		r = wait_flight(reg, e, deadline_ms);
		e->waiters--;
		if (r < 0) {
			r = err_set(err, ERR_TIMEOUT, ETIMEDOUT,
				    "timed out waiting for the provisioning of %s", description);
			goto out;
		}
		if (warm(e, scopes_key, epoch)) {
			r = answer_from(e, ret);
			goto out;
		}
		if (e->generation != gen && e->flight_rc < 0 && e->scopes_key &&
		    !strcmp(e->scopes_key, scopes_key)) {
			if (err)
				*err = e->flight_err;
			r = e->flight_rc;
			goto out;
		}
	}
	if (warm(e, scopes_key, epoch)) {
		r = answer_from(e, ret);
		goto out;
	}

	e->in_flight = true;
	r = run_flight(reg, e, scopes, nscopes, scopes_key, deadline_ms, err);
	if (r == 0)
		r = answer_from(e, ret);
out:
	pthread_mutex_unlock(&reg->lock);
	if (r == 0)
		ret->cached = cached;
	return r;
}

/* Background: revalidate stale entries and roll entries into a new epoch. */
static void *revalidate_loop(void *arg)
{
	struct registry *reg = arg;
	long tick_s = reg->cfg.revalidate_interval_s / 4;

	if (tick_s < 1)
		tick_s = 1;
	if (tick_s > 30)
		tick_s = 30;

	pthread_mutex_lock(&reg->lock);
	while (!reg->stopping) {
		struct timespec ts;
		int64_t epoch = registry_epoch(reg), now = http_now_ms();
		struct entry *e;

		/* One stale entry per pass keeps the lock free for Mounts in between. */
		for (e = reg->lru_tail; e; e = e->prev) {
			int64_t age = now - e->validated_ms;
			bool stale = age >= reg->cfg.revalidate_interval_s * 1000;
			bool rolled = e->epoch != epoch && age >= 30 * 1000;

			if (!e->in_flight && e->client_id && e->scopes_key && (stale || rolled))
				break;
		}
		if (e) {
			struct err err = { 0 };
			size_t n = e->nscopes;
			char **scopes = copy_scopes(e->scopes, n);
			char *key = strdup(e->scopes_key);

			if (scopes && key) {
				e->in_flight = true;
				if (run_flight(reg, e, scopes, n, key,
					       http_now_ms() + reg->cfg.flight_timeout_ms,
					       &err) < 0)
					log_warn("revalidating %s failed: %s", e->description,
						 err.msg);
				/* Failed or not, wait a whole interval before the next try. */
				e->validated_ms = http_now_ms();
			}
			free_scopes(scopes, scopes ? n : 0);
			free(key);
			continue;
		}
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += tick_s;
		pthread_cond_timedwait(&reg->wake, &reg->lock, &ts);
	}
	pthread_mutex_unlock(&reg->lock);
	return NULL;
}

struct registry *registry_new(const struct registry_config *config, struct digdir *dd,
			      const struct keys_seed *seed)
{
	struct registry *reg = calloc(1, sizeof(*reg));
	size_t n = 16;

	if (!reg)
		return NULL;
	reg->cfg = *config;
	reg->dd = dd;
	reg->seed = seed;
	while (n < (size_t)config->capacity * 2)
		n <<= 1;
	reg->nbuckets = n;
	reg->buckets = calloc(n, sizeof(*reg->buckets));
	if (!reg->buckets) {
		free(reg);
		return NULL;
	}
	pthread_mutex_init(&reg->lock, NULL);
	pthread_cond_init(&reg->flight_done, NULL);
	pthread_cond_init(&reg->wake, NULL);
	return reg;
}

int registry_start(struct registry *reg)
{
	int r = pthread_create(&reg->thread, NULL, revalidate_loop, reg);

	if (r != 0)
		return -r;
	reg->thread_started = true;
	return 0;
}

size_t registry_size(struct registry *reg)
{
	size_t n;

	pthread_mutex_lock(&reg->lock);
	n = reg->size;
	pthread_mutex_unlock(&reg->lock);
	return n;
}

void registry_free(struct registry *reg)
{
	struct entry *e, *next;

	if (!reg)
		return;
	if (reg->thread_started) {
		pthread_mutex_lock(&reg->lock);
		reg->stopping = true;
		pthread_cond_broadcast(&reg->wake);
		pthread_mutex_unlock(&reg->lock);
		pthread_join(reg->thread, NULL);
	}
	for (e = reg->lru_head; e; e = next) {
		next = e->next;
		entry_free(e);
	}
	free(reg->buckets);
	pthread_cond_destroy(&reg->wake);
	pthread_cond_destroy(&reg->flight_done);
	pthread_mutex_destroy(&reg->lock);
	free(reg);
}
