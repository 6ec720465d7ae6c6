/*
 * registry: the per-client cache, one provisioning flight per client, epochs.
 *
 * One mutex guards the table; it is never held across network calls or key
 * derivation. A flight marks its entry in_flight, runs provision_run() on a
 * thread of its own without the lock, then publishes under the lock and wakes
 * the Mounts that waited for it. Must never log key material; entries wipe
 * their private JWK when they are replaced or evicted.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "hash.h"
#include "log.h"
#include "metrics.h"
#include "provision.h"
#include "registry.h"

#define REPORT_MARGIN_MS 300 /* a flight's error reaches the Mount before it stops waiting */

struct entry {
	char *description;
	char *client_id; /* pinned once known */
	char **scopes;	 /* of the answer held */
	size_t nscopes;
	char *scopes_key;
	char *written;	   /* the scope set DigDir held after this node's last flight */
	char *prev_key;	   /* the set asked for before the last change */
	int64_t asked_ms;  /* the last Mount that asked for scopes_key */
	bool stale;	   /* revalidation found other scopes at DigDir: the next Mount flies */
	int64_t epoch;	   /* epoch of jwk_private; -1: none */
	char *jwk_private; /* SECRET */
	char kid[KEYS_KID_MAX];
	int64_t registered_max; /* highest own epoch seen registered at DigDir; -1: none */
	int64_t validated_ms;	/* last successful flight, clock_now_ms() clock */
	bool in_flight;
	bool verifying;	     /* the flight waits for Maskinporten to accept a new key */
	const char *step;    /* what the running flight does now, for a Mount that stops waiting */
	char *flight_key;    /* the scope set the running flight provisions */
	int waiters;	     /* callers sleeping on this entry: it must not be evicted */
	unsigned generation; /* bumped by every finished flight */
	int flight_rc;
	struct err flight_err;
	struct entry *hnext;	   /* hash chain */
	struct entry *prev, *next; /* LRU list, most recent first */
};

struct registry {
	struct registry_config cfg;
	struct provision pv;
	struct state *st;
	pthread_mutex_t lock;
	pthread_cond_t flight_done; /* CLOCK_MONOTONIC */
	pthread_cond_t wake;	    /* CLOCK_MONOTONIC */
	struct entry **buckets;
	size_t nbuckets, size;
	struct entry *lru_head, *lru_tail;
	pthread_t thread;
	bool thread_started, stopping;
	int flights; /* flight threads running */
};

/* One flight's inputs, copied so that it needs nothing of the entry until it publishes. */
struct flight {
	struct registry *reg;
	struct entry *e;
	char *description;
	char **scopes;
	size_t nscopes;
	char *key;
	char *pinned;
	char *written;
	bool readonly;		   /* revalidation: never writes scopes */
	int64_t mount_deadline_ms; /* the Mount that started it, 0: none (revalidation) */
	int64_t epoch;
	int64_t known_max;
	bool same_scopes;
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

/* Waits on cond (lock held) until woken or until_ms. False once past it. */
static bool wait_until(struct registry *reg, pthread_cond_t *cond, int64_t until_ms)
{
	return until_ms > clock_now_ms() && clock_wait_until(cond, &reg->lock, until_ms);
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

static void wipe_jwk(struct entry *e)
{
	secret_free(e->jwk_private);
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
	free(e->written);
	free(e->prev_key);
	free(e->flight_key);
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
	bool pending = false;

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
	/* What the state file remembers is a hint: the first flight checks it at DigDir. */
	if (state_get(reg->st, description, &e->client_id, &e->written, &pending) == 0 && pending) {
		free(e->client_id);
		e->client_id = NULL; /* a create may have been cut short: look the app up */
	}
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
	return e->client_id && e->jwk_private && e->epoch == epoch && !e->stale && e->scopes_key &&
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
	*ret = a;
	return 0;
}

void registry_answer_release(struct registry_answer *answer)
{
	if (!answer)
		return;
	free(answer->client_id);
	secret_free(answer->jwk_private);
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
		e->asked_ms = clock_now_ms();
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

/* ---- one flight ----------------------------------------------------------- */

/* The provisioning's hooks: its step and the pause between token requests, for this entry. */
struct hook_ctx {
	struct registry *reg;
	struct entry *e;
};

static void hook_step(void *ctx, const char *what, bool verifying)
{
	struct hook_ctx *h = ctx;

	pthread_mutex_lock(&h->reg->lock);
	h->e->step = what;
	h->e->verifying = verifying;
	pthread_mutex_unlock(&h->reg->lock);
}

/* Sleeps ms unless the registry stops meanwhile. False when it stops. */
static bool hook_pause(void *ctx, long ms)
{
	struct registry *reg = ((struct hook_ctx *)ctx)->reg;
	int64_t until = clock_now_ms() + ms;
	bool stopping;

	pthread_mutex_lock(&reg->lock);
	while (!reg->stopping && wait_until(reg, &reg->wake, until))
		;
	stopping = reg->stopping;
	pthread_mutex_unlock(&reg->lock);
	return !stopping;
}

static void flight_free(struct flight *f)
{
	if (!f)
		return;
	free(f->description);
	free_scopes(f->scopes, f->nscopes);
	free(f->key);
	free(f->pinned);
	free(f->written);
	free(f);
}

/* A client may be handed to one app only: another entry holding it lets it go. */
static void release_elsewhere(struct registry *reg, const struct entry *owner)
{
	for (struct entry *o = reg->lru_head; o; o = o->next) {
		if (o == owner || !o->client_id || strcmp(o->client_id, owner->client_id) != 0)
			continue;
		log_warn("client %s now belongs to %s (its description at DigDir): %s forgets it "
			 "and looks itself up again",
			 owner->client_id, owner->description, o->description);
		wipe_jwk(o);
		free(o->client_id);
		o->client_id = NULL;
		o->registered_max = -1;
	}
}

/* Publishes a flight's result (lock held) and wakes the callers that wait for it. */
static void publish(struct registry *reg, struct flight *f, int r, struct provision_result *res,
		    const struct err *err)
{
	struct entry *e = f->e;

	if (r == 0) {
		wipe_jwk(e);
		free(e->client_id);
		e->client_id = res->client_id;
		e->jwk_private = res->jwk_private;
		e->epoch = res->epoch;
		memcpy(e->kid, res->kid, sizeof(e->kid));
		if (res->registered_max > e->registered_max)
			e->registered_max = res->registered_max;
		/* What this node registered: a revalidation, which writes nothing, keeps it. */
		if (res->registered && !f->readonly) {
			free(e->written);
			e->written = res->registered;
			res->registered = NULL;
		}
		res->client_id = res->jwk_private = NULL;
		if (f->readonly) {
			/* Revalidation: other scopes at DigDir make the next Mount fly. */
			e->stale = res->differs;
		} else {
			if (e->scopes_key && strcmp(e->scopes_key, f->key) != 0) {
				free(e->prev_key);
				e->prev_key = e->scopes_key;
				e->scopes_key = NULL;
			}
			free_scopes(e->scopes, e->nscopes);
			free(e->scopes_key);
			e->scopes = f->scopes;
			e->nscopes = f->nscopes;
			e->scopes_key = f->key;
			f->scopes = NULL;
			f->nscopes = 0;
			f->key = NULL;
			e->stale = false;
			e->asked_ms = clock_now_ms();
		}
		e->validated_ms = clock_now_ms();
		release_elsewhere(reg, e);
	}

	e->in_flight = false;
	e->verifying = false;
	e->step = NULL;
	e->generation++;
	e->flight_rc = r;
	if (r < 0 && err)
		e->flight_err = *err;
	pthread_cond_broadcast(&reg->flight_done);
}

/*
 * Errors that the Mount's own parameters cause, or that time cures for this
 * very key: serving a key known from before would hide them. Anything else
 * (DigDir down, garbage, refused admin credentials) is DigDir's trouble.
 */
static bool mounts_fault(enum err_kind kind)
{
	return kind == ERR_SCOPE_ACCESS || kind == ERR_INVALID || kind == ERR_CONFLICT ||
	       kind == ERR_PROPAGATING || kind == ERR_UNCONFIGURED;
}

/*
 * Runs the flight without the lock, then publishes it under the lock. When
 * DigDir fails for a reason that may pass, a key this node saw registered
 * before keeps being served.
 */
static void run(struct flight *f)
{
	struct registry *reg = f->reg;
	struct hook_ctx hooks = { reg, f->e };
	struct provision_request req = {
		.description = f->description,
		.scopes = f->scopes,
		.nscopes = f->nscopes,
		.pinned = f->pinned,
		.written = f->written,
		.readonly = f->readonly,
		.epoch = f->epoch,
		.hooks = { .step = hook_step, .pause = hook_pause, .ctx = &hooks },
	};
	struct provision_result res = { 0 };
	struct err err = { 0 };
	char *id = NULL, *written = NULL;
	int r;

	req.deadline_ms = clock_now_ms() + reg->cfg.flight_timeout_ms;
	req.find_deadline_ms = f->mount_deadline_ms && f->mount_deadline_ms < req.deadline_ms
				   ? f->mount_deadline_ms
				   : req.deadline_ms;
	/* A flight that may create a client says so first, in case this process dies mid-create. */
	if (!f->pinned && !f->readonly)
		state_pending(reg->st, f->description);
	r = provision_run(&reg->pv, &req, &res, &err);
	if (r < 0 && !mounts_fault(err.kind) && f->same_scopes &&
	    provision_fallback(&reg->pv, f->pinned, f->written, f->epoch, f->known_max, &res) ==
		0) {
		log_warn("DigDir failed for %s (%s); serving the key of epoch %lld, which was "
			 "registered when last checked",
			 f->description, err.msg, (long long)f->epoch);
		r = 0;
	}
	if (r < 0 && f->readonly)
		log_warn("revalidating %s failed: %s", f->description, err.msg);

	/* What the state file keeps of a success: copied under the lock, written after it. */
	if (r == 0 && res.client_id)
		id = strdup(res.client_id);
	if (r == 0 && res.registered && !f->readonly)
		written = strdup(res.registered);

	pthread_mutex_lock(&reg->lock);
	publish(reg, f, r, &res, &err);
	pthread_mutex_unlock(&reg->lock);
	if (id)
		state_settled(reg->st, f->description, id, written);
	free(id);
	free(written);
	provision_result_release(&res);
}

static void *flight_main(void *arg)
{
	struct flight *f = arg;
	struct registry *reg = f->reg;

	pthread_setname_np(pthread_self(), "mp-flight");
	run(f);
	flight_free(f);
	pthread_mutex_lock(&reg->lock);
	reg->flights--;
	pthread_cond_broadcast(&reg->flight_done);
	pthread_mutex_unlock(&reg->lock);
	return NULL;
}

/*
 * Starts a flight for e (lock held): on its own thread, or with detach false
 * (or when no thread can be made) in this one, dropping the lock meanwhile.
 * Returns 0 or -ENOMEM.
 */
static int start_flight(struct registry *reg, struct entry *e, char *const *scopes, size_t nscopes,
			const char *key, bool readonly, int64_t mount_deadline_ms, bool detach)
{
	struct flight *f = calloc(1, sizeof(*f));
	pthread_attr_t attr;
	pthread_t t;

	if (!f)
		return -ENOMEM;
	*f = (struct flight){
		.reg = reg,
		.e = e,
		.description = strdup(e->description),
		.scopes = copy_scopes(scopes, nscopes),
		.nscopes = nscopes,
		.key = strdup(key),
		.pinned = e->client_id ? strdup(e->client_id) : NULL,
		.written = e->written ? strdup(e->written) : NULL,
		.readonly = readonly,
		.mount_deadline_ms = mount_deadline_ms,
		.epoch = registry_epoch(reg),
		.known_max = e->registered_max,
		.same_scopes = e->scopes_key && !strcmp(e->scopes_key, key),
	};
	free(e->flight_key);
	e->flight_key = strdup(key);
	if (!f->description || !f->scopes || !f->key || !e->flight_key ||
	    (e->client_id && !f->pinned) || (e->written && !f->written)) {
		flight_free(f);
		return -ENOMEM;
	}
	e->in_flight = true;
	if (detach && pthread_attr_init(&attr) == 0) {
		int rc;

		pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
		rc = pthread_create(&t, &attr, flight_main, f);
		pthread_attr_destroy(&attr);
		if (rc == 0) {
			reg->flights++;
			return 0;
		}
	}
	pthread_mutex_unlock(&reg->lock);
	run(f);
	flight_free(f);
	pthread_mutex_lock(&reg->lock);
	return 0;
}

int registry_ensure(struct registry *reg, const char *description, char *const *scopes,
		    size_t nscopes, const char *scopes_key, int64_t deadline_ms,
		    struct registry_answer *ret, struct err *err)
{
	int64_t epoch = registry_epoch(reg), window = reg->cfg.flip_window_ms;
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

	for (;;) {
		unsigned gen;
		bool ours;

		if (warm(e, scopes_key, epoch)) {
			e->asked_ms = clock_now_ms();
			r = answer_from(e, ret);
			goto out;
		}
		if (!e->in_flight) {
			/* Back to the set before the last change while the new one is in use: a
			 * flip. */
			if (e->scopes_key && e->prev_key && !strcmp(scopes_key, e->prev_key) &&
			    strcmp(scopes_key, e->scopes_key) != 0 &&
			    clock_now_ms() - e->asked_ms < window) {
				r = err_set(
				    err, ERR_CONFLICT, EEXIST,
				    "this app's pods ask for two sets of scopes: [%.200s], and "
				    "[%.200s] %lld s ago. Two SecretProviderClasses (or two "
				    "volumes) give the app different scopes, which would flip its "
				    "client at DigDir at every Mount: make them agree. (A set "
				    "changed back on purpose is taken %lld s after the last Mount "
				    "asking for the other.)",
				    scopes_key, e->scopes_key,
				    (long long)((clock_now_ms() - e->asked_ms) / 1000),
				    (long long)(window / 1000));
				goto out;
			}
			if (start_flight(reg, e, scopes, nscopes, scopes_key, false,
					 deadline_ms - REPORT_MARGIN_MS, true) < 0) {
				r = err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
				goto out;
			}
			continue;
		}
		/* A flight runs: ours when it provisions our scopes, else wait for it to end. */
		gen = e->generation;
		ours = e->flight_key && !strcmp(e->flight_key, scopes_key);
		e->waiters++;
		while (e->generation == gen && wait_until(reg, &reg->flight_done, deadline_ms))
			;
		e->waiters--;
		if (e->generation == gen) {
			if (ours && e->verifying)
				r = err_set(
				    err, ERR_PROPAGATING, EAGAIN,
				    "the new key of client %s is not accepted by Maskinporten "
				    "yet (DigDir takes up to 2 minutes to pass it on); "
				    "provisioning goes on, and the kubelet's next try is "
				    "answered as soon as it works",
				    e->client_id ? e->client_id : "(new)");
			else
				r = err_set(
				    err, ERR_TIMEOUT, ETIMEDOUT,
				    "provisioning %s did not finish in this Mount's time (it "
				    "is %s); it goes on, and the kubelet's next try gets its "
				    "result",
				    description, e->step ? e->step : "starting");
			goto out;
		}
		if (ours && e->flight_rc < 0) {
			if (err)
				*err = e->flight_err;
			r = e->flight_rc;
			goto out;
		}
	}
out:
	pthread_mutex_unlock(&reg->lock);
	if (r == 0)
		ret->cached = cached;
	return r;
}

/*
 * After a restart: the apps whose create may have been cut short (pending in
 * the state file) are looked up, and duplicates the cut left are cleaned up,
 * whether or not a pod of the app mounts again.
 */
static void settle_pending(struct registry *reg)
{
	json_t *apps = state_pending_apps(reg->st), *d;
	size_t i;

	json_array_foreach(apps, i, d)
	{
		const char *description = json_string_value(d);
		struct err err = { 0 };
		char *id = NULL;

		if (provision_settle(&reg->pv, description,
				     clock_now_ms() + reg->cfg.flight_timeout_ms, &id, &err) < 0) {
			log_warn("settling %s after a restart failed: %s", description, err.msg);
			continue;
		}
		state_settled(reg->st, description, id, NULL);
		free(id);
	}
	json_decref(apps);
}

/* Background: revalidate stale entries and roll entries into a new epoch. */
static void *revalidate_loop(void *arg)
{
	struct registry *reg = arg;
	long tick_s = reg->cfg.revalidate_interval_s / 4;

	settle_pending(reg);

	if (tick_s < 1)
		tick_s = 1;
	if (tick_s > 30)
		tick_s = 30;

	pthread_mutex_lock(&reg->lock);
	while (!reg->stopping) {
		int64_t epoch = registry_epoch(reg), now = clock_now_ms();
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
			size_t n = e->nscopes;
			char **scopes = copy_scopes(e->scopes, n);
			char *key = strdup(e->scopes_key);

			if (scopes && key) {
				e->waiters++;
				start_flight(reg, e, scopes, n, key, true, 0, false);
				e->waiters--;
				/* Failed or not, wait a whole interval before the next try. */
				e->validated_ms = clock_now_ms();
			}
			free_scopes(scopes, scopes ? n : 0);
			free(key);
			continue;
		}
		wait_until(reg, &reg->wake, clock_now_ms() + tick_s * 1000);
	}
	pthread_mutex_unlock(&reg->lock);
	return NULL;
}

struct registry *registry_new(const struct registry_config *config, struct digdir *dd,
			      struct mp *mp, struct http *http, const struct keys_seed *seed,
			      struct state *st)
{
	struct registry *reg = calloc(1, sizeof(*reg));
	size_t n = 16;

	if (!reg)
		return NULL;
	reg->cfg = *config;
	if (reg->cfg.flip_window_ms <= 0)
		reg->cfg.flip_window_ms = REGISTRY_FLIP_WINDOW_MS;
	reg->pv = (struct provision){
		.dd = dd, .mp = mp, .http = http, .seed = seed, .epoch_len = config->epoch_len
	};
	reg->st = st;
	while (n < (size_t)config->capacity * 2)
		n <<= 1;
	reg->nbuckets = n;
	reg->buckets = calloc(n, sizeof(*reg->buckets));
	if (!reg->buckets) {
		free(reg);
		return NULL;
	}
	pthread_mutex_init(&reg->lock, NULL);
	clock_cond_init(&reg->flight_done);
	clock_cond_init(&reg->wake);
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

void registry_stop(struct registry *reg)
{
	pthread_mutex_lock(&reg->lock);
	reg->stopping = true;
	pthread_cond_broadcast(&reg->wake);
	pthread_mutex_unlock(&reg->lock);
}

void registry_free(struct registry *reg)
{
	struct entry *e, *next;

	if (!reg)
		return;
	registry_stop(reg);
	if (reg->thread_started)
		pthread_join(reg->thread, NULL);
	/* Flights see stopping at their next pause; their entries must outlive them. */
	pthread_mutex_lock(&reg->lock);
	while (reg->flights > 0) {
		pthread_cond_broadcast(&reg->wake);
		wait_until(reg, &reg->flight_done, clock_now_ms() + 1000);
	}
	pthread_mutex_unlock(&reg->lock);
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
