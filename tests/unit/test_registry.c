/*
 * Unit tests of the registry's policy, which the integration tests cannot
 * pin down because they see DigDir only through the emulator's timing:
 * concurrent Mounts of one app share one flight, a flight outlives the Mount
 * that gave up on it, a Mount's own error is not covered up by an old key,
 * the key registered in advance is served across an epoch boundary while
 * DigDir is down, and a warm client is rolled into the next epoch.
 *
 * The registry reaches DigDir only through provision_*(); this binary links
 * without provision.o and stands in for it (a scripted provisioning that
 * counts its calls and can be held at a gate). time() is the test's too, so
 * epochs roll when a test says so, not when the wall clock does.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "clock.h"
#include "metrics.h"
#include "provision.h"
#include "registry.h"

#define LEN   3600 /* epoch length, seconds */
#define START ((time_t)1800000000)

/* ---- the test's clock ------------------------------------------------------ */

static time_t fake_now = START;

time_t time(time_t *t)
{
	time_t now = __atomic_load_n(&fake_now, __ATOMIC_SEQ_CST);

	if (t)
		*t = now;
	return now;
}

static void advance(time_t s)
{
	__atomic_add_fetch(&fake_now, s, __ATOMIC_SEQ_CST);
}

/* ---- the scripted provisioning ------------------------------------------ */

static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool gated;		 /* provision_run waits at the gate until opened */
	bool verifying;		 /* the step it reports while held */
	bool one_client;	 /* every app finds the same client (a redescribed one) */
	enum err_kind fail;	 /* ERR_NONE: succeed; else fail with this kind */
	int64_t registers_ahead; /* registered_max = epoch + this */
	int runs, at_gate, fallbacks;
	struct provision_request last; /* of the last run (pointers not kept) */
	int64_t last_epoch, fallback_epoch, fallback_max;
	char fallback_client[128];
	char pinned[128];
} fake = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };

static void fake_reset(void)
{
	pthread_mutex_lock(&fake.lock);
	fake.gated = fake.verifying = fake.one_client = false;
	fake.fail = ERR_NONE;
	fake.registers_ahead = 1;
	fake.runs = fake.at_gate = fake.fallbacks = 0;
	fake.last_epoch = fake.fallback_epoch = fake.fallback_max = -1;
	fake.fallback_client[0] = fake.pinned[0] = '\0';
	pthread_mutex_unlock(&fake.lock);
	metrics_reset();
	fake_now = START;
}

static void open_gate(void)
{
	pthread_mutex_lock(&fake.lock);
	fake.gated = false;
	pthread_cond_broadcast(&fake.cond);
	pthread_mutex_unlock(&fake.lock);
}

/* Waits until n provisionings have reached the gate (their step reported). */
static void wait_at_gate(int n)
{
	pthread_mutex_lock(&fake.lock);
	while (fake.at_gate < n)
		pthread_cond_wait(&fake.cond, &fake.lock);
	pthread_mutex_unlock(&fake.lock);
}

/* What a provisioning of client in epoch hands out; the kid names both. */
static int fill(struct provision_result *ret, const char *client, const char *registered,
		int64_t epoch, int64_t registered_max)
{
	*ret = (struct provision_result){ 0 };
	ret->client_id = strdup(client);
	ret->registered = strdup(registered ? registered : "");
	ret->jwk_private = strdup("{\"kty\":\"RSA\",\"d\":\"not-a-real-key\"}");
	snprintf(ret->kid, sizeof(ret->kid), "kid.%s.%lld", client, (long long)epoch);
	ret->epoch = epoch;
	ret->registered_max = registered_max;
	return ret->client_id && ret->registered && ret->jwk_private ? 0 : -ENOMEM;
}

int provision_run(const struct provision *pv, const struct provision_request *req,
		  struct provision_result *ret, struct err *err)
{
	char client[128]; /* each app its own, unless the test says otherwise */
	enum err_kind fail;
	int64_t ahead;

	pthread_mutex_lock(&fake.lock);
	fake.runs++;
	fake.last_epoch = req->epoch;
	snprintf(fake.pinned, sizeof(fake.pinned), "%s", req->pinned ? req->pinned : "");
	if (fake.gated && req->hooks.step)
		req->hooks.step(req->hooks.ctx, "held by the test", fake.verifying);
	fake.at_gate++;
	pthread_cond_broadcast(&fake.cond);
	while (fake.gated)
		pthread_cond_wait(&fake.cond, &fake.lock);
	fail = fake.fail;
	ahead = fake.registers_ahead;
	snprintf(client, sizeof(client), "id-%s", fake.one_client ? "shared" : req->description);
	pthread_mutex_unlock(&fake.lock);

	if (fail != ERR_NONE)
		return err_set(err, fail, EIO, "scripted failure (%s)", err_kind_name(fail));
	return fill(ret, client, req->nscopes ? req->scopes[0] : "", req->epoch,
		    req->epoch + ahead);
}

int provision_fallback(const struct provision *pv, const char *client_id, const char *written,
		       int64_t epoch, int64_t registered_max, struct provision_result *ret)
{
	pthread_mutex_lock(&fake.lock);
	fake.fallbacks++;
	fake.fallback_epoch = epoch;
	fake.fallback_max = registered_max;
	snprintf(fake.fallback_client, sizeof(fake.fallback_client), "%s",
		 client_id ? client_id : "");
	pthread_mutex_unlock(&fake.lock);
	/* The contract: only a key seen registered, for a known client. */
	if (!client_id || registered_max < epoch)
		return -ENOENT;
	return fill(ret, client_id, written, epoch, registered_max);
}

int provision_settle(const struct provision *pv, const char *description, int64_t deadline_ms,
		     char **ret_client_id, struct err *err)
{
	*ret_client_id = NULL;
	return 0;
}

void provision_result_release(struct provision_result *r)
{
	free(r->client_id);
	free(r->registered);
	secret_free(r->jwk_private);
	memset(r, 0, sizeof(*r));
}

/* ---- helpers --------------------------------------------------------------- */

static char scope_a[] = "nav:a", scope_b[] = "nav:b";
static char *const scopes_a[] = { scope_a };
static char *const scopes_b[] = { scope_b };

static struct registry *new_registry(long capacity)
{
	struct registry_config cfg = {
		.capacity = capacity,
		.epoch_len = LEN,
		.revalidate_interval_s = 3600,
		.flight_timeout_ms = 60 * 1000,
	};
	struct registry *reg;

	fake_reset();
	/* Nothing here reaches DigDir, Maskinporten or a state file: provision is the test's. */
	reg = registry_new(&cfg, NULL, NULL, NULL, NULL, NULL);
	assert_non_null(reg);
	return reg;
}

static int ensure(struct registry *reg, const char *description, char *const *scopes, long wait_ms,
		  struct registry_answer *ret, struct err *err)
{
	return registry_ensure(reg, description, scopes, 1, scopes[0], clock_now_ms() + wait_ms,
			       ret, err);
}

/* The value of a counter in the rendered metrics, 0 when absent. */
static long counter(const char *name)
{
	char *text, *p;
	size_t len;
	long v = 0;

	assert_int_equal(metrics_render(&text, &len), 0);
	for (p = text; (p = strstr(p, name)); p += strlen(name))
		if ((p == text || p[-1] == '\n') && p[strlen(name)] == ' ')
			v = strtol(p + strlen(name) + 1, NULL, 10);
	free(text);
	return v;
}

static int64_t epoch_now(void)
{
	return keys_epoch_at((int64_t)time(NULL), LEN);
}

static void expect_kid(const struct registry_answer *a, const char *client, int64_t epoch)
{
	char want[KEYS_KID_MAX];

	snprintf(want, sizeof(want), "kid.%s.%lld", client, (long long)epoch);
	assert_string_equal(a->kid, want);
	assert_string_equal(a->client_id, client);
	assert_non_null(a->jwk_private);
}

/* ---- flights ----------------------------------------------------------------- */

#define MOUNTS 8

struct mount {
	struct registry *reg;
	struct registry_answer answer;
	struct err err;
	int r;
};

static void *mount_main(void *arg)
{
	struct mount *m = arg;

	m->r = ensure(m->reg, "c:ns:app", scopes_a, 30 * 1000, &m->answer, &m->err);
	return NULL;
}

/*
 * Eight Mounts of one app arrive while its flight is held: one provisioning
 * runs, and every Mount gets its answer from it (none was warm on arrival).
 */
static void test_flight_shared(void **state)
{
	struct registry *reg = new_registry(16);
	struct mount m[MOUNTS];
	pthread_t t[MOUNTS];

	fake.gated = true;
	for (int i = 0; i < MOUNTS; i++) {
		m[i] = (struct mount){ .reg = reg };
		assert_int_equal(pthread_create(&t[i], NULL, mount_main, &m[i]), 0);
	}
	/* Every Mount counted its miss under the registry's lock before it waits, and the
	 * flight publishes under that lock: all eight are in before the gate opens. */
	while (counter("mpcsi_cache_misses_total") < MOUNTS)
		usleep(1000);
	open_gate();
	for (int i = 0; i < MOUNTS; i++) {
		assert_int_equal(pthread_join(t[i], NULL), 0);
		assert_int_equal(m[i].r, 0);
		assert_false(m[i].answer.cached);
		expect_kid(&m[i].answer, "id-c:ns:app", epoch_now());
		registry_answer_release(&m[i].answer);
	}
	assert_int_equal(fake.runs, 1);
	assert_int_equal(counter("mpcsi_cache_hits_total"), 0);
	registry_free(reg);
}

/*
 * A Mount whose time runs out gets a retryable error naming what the flight
 * does; the flight goes on, and the next Mount is answered from memory.
 */
static void test_flight_outlives_mount(void **state)
{
	struct registry *reg = new_registry(16);
	struct registry_answer a = { 0 };
	struct err err = { 0 };

	fake.gated = true;
	/* The first Mount starts the flight; the second finds it at the gate, step reported. */
	ensure(reg, "c:ns:app", scopes_a, 1, &a, &err);
	wait_at_gate(1);
	assert_int_equal(ensure(reg, "c:ns:app", scopes_a, 100, &a, &err), -ETIMEDOUT);
	assert_int_equal(err.kind, ERR_TIMEOUT);
	assert_non_null(strstr(err.msg, "held by the test"));
	assert_int_equal(registry_lookup(reg, "c:ns:app", "nav:a", &a), -EAGAIN);

	/* While the flight waits for Maskinporten, a Mount hears that, not a timeout. */
	pthread_mutex_lock(&fake.lock);
	fake.verifying = true;
	pthread_mutex_unlock(&fake.lock);
	ensure(reg, "c:ns:other", scopes_a, 1, &a, &err);
	wait_at_gate(2);
	assert_int_equal(ensure(reg, "c:ns:other", scopes_a, 100, &a, &err), -EAGAIN);
	assert_int_equal(err.kind, ERR_PROPAGATING);

	open_gate();
	/* The held flights finish on their own threads; ensure waits for them. */
	assert_int_equal(ensure(reg, "c:ns:app", scopes_a, 30 * 1000, &a, &err), 0);
	registry_answer_release(&a);
	assert_int_equal(ensure(reg, "c:ns:other", scopes_a, 30 * 1000, &a, &err), 0);
	registry_answer_release(&a);
	assert_int_equal(registry_lookup(reg, "c:ns:app", "nav:a", &a), 0);
	expect_kid(&a, "id-c:ns:app", epoch_now());
	registry_answer_release(&a);
	assert_int_equal(fake.runs, 2);
	registry_free(reg);
}

/* ---- errors and the fallback ------------------------------------------------- */

/*
 * A flight that fails for a reason of the Mount's own (no access to a scope)
 * reports it to every Mount that waited, is never covered by a key known from
 * before, and is not remembered: the next Mount flies again.
 */
static void test_mounts_own_error_not_covered(void **state)
{
	struct registry *reg = new_registry(16);
	struct registry_answer a = { 0 };
	struct err err = { 0 };

	assert_int_equal(ensure(reg, "c:ns:app", scopes_a, 5000, &a, &err), 0);
	registry_answer_release(&a);
	advance(LEN); /* the next epoch: not warm any more */
	fake.fail = ERR_SCOPE_ACCESS;
	assert_true(ensure(reg, "c:ns:app", scopes_a, 5000, &a, &err) < 0);
	assert_int_equal(err.kind, ERR_SCOPE_ACCESS);
	assert_int_equal(fake.fallbacks, 0);
	fake.fail = ERR_NONE;
	assert_int_equal(ensure(reg, "c:ns:app", scopes_a, 5000, &a, &err), 0);
	expect_kid(&a, "id-c:ns:app", epoch_now());
	registry_answer_release(&a);
	assert_int_equal(fake.runs, 3);
	registry_free(reg);
}

/*
 * DigDir goes down across an epoch boundary. The next epoch's key was
 * registered in advance (the schedule's reason for registering e+1), so the
 * Mount after the boundary gets it, derived locally for the pinned client.
 * One epoch later no key was seen registered any more: the Mount gets
 * DigDir's error, not a key Maskinporten would refuse.
 */
static void test_fallback_across_epoch_while_digdir_down(void **state)
{
	struct registry *reg = new_registry(16);
	struct registry_answer a = { 0 };
	struct err err = { 0 };
	int64_t e0 = epoch_now();

	assert_int_equal(ensure(reg, "c:ns:app", scopes_a, 5000, &a, &err), 0);
	registry_answer_release(&a);
	fake.fail = ERR_UNAVAILABLE;

	advance(LEN);
	assert_int_equal(ensure(reg, "c:ns:app", scopes_a, 5000, &a, &err), 0);
	expect_kid(&a, "id-c:ns:app", e0 + 1);
	assert_int_equal(fake.fallbacks, 1);
	assert_string_equal(fake.fallback_client, "id-c:ns:app");
	assert_int_equal(fake.fallback_epoch, e0 + 1);
	assert_int_equal(fake.fallback_max, e0 + 1);
	registry_answer_release(&a);

	advance(LEN);
	assert_true(ensure(reg, "c:ns:app", scopes_a, 5000, &a, &err) < 0);
	assert_int_equal(err.kind, ERR_UNAVAILABLE);
	assert_int_equal(fake.fallbacks, 2);
	assert_int_equal(fake.fallback_epoch, e0 + 2);

	/* Other scopes than the ones served: no fallback either, the scopes must be written. */
	advance(-LEN);
	assert_true(ensure(reg, "c:ns:app", scopes_b, 5000, &a, &err) < 0);
	assert_int_equal(err.kind, ERR_UNAVAILABLE);
	assert_int_equal(fake.fallbacks, 2);
	registry_free(reg);
}

/* ---- epochs ------------------------------------------------------------------ */

/*
 * At the boundary the warm answer stops being warm: the fast path misses,
 * and the next Mount provisions the pinned client for the new epoch.
 */
static void test_epoch_rollover(void **state)
{
	struct registry *reg = new_registry(16);
	struct registry_answer a = { 0 };
	struct err err = { 0 };
	char kid[KEYS_KID_MAX];
	int64_t e0 = epoch_now();

	assert_int_equal(registry_epoch(reg), e0);
	assert_int_equal(ensure(reg, "c:ns:app", scopes_a, 5000, &a, &err), 0);
	assert_false(a.cached);
	registry_answer_release(&a);
	assert_string_equal(fake.pinned, "");
	assert_int_equal(registry_warm_kid(reg, "c:ns:app", "nav:a", kid), 0);
	assert_int_equal(ensure(reg, "c:ns:app", scopes_a, 5000, &a, &err), 0);
	assert_true(a.cached);
	registry_answer_release(&a);
	assert_int_equal(fake.runs, 1);

	advance(LEN);
	assert_int_equal(registry_epoch(reg), e0 + 1);
	assert_int_equal(registry_warm_kid(reg, "c:ns:app", "nav:a", kid), -EAGAIN);
	assert_int_equal(registry_lookup(reg, "c:ns:app", "nav:a", &a), -EAGAIN);
	assert_int_equal(ensure(reg, "c:ns:app", scopes_a, 5000, &a, &err), 0);
	assert_false(a.cached);
	expect_kid(&a, "id-c:ns:app", e0 + 1);
	registry_answer_release(&a);
	assert_int_equal(fake.runs, 2);
	assert_int_equal(fake.last_epoch, e0 + 1);
	assert_string_equal(fake.pinned, "id-c:ns:app"); /* no second lookup of the app */
	registry_free(reg);
}

/*
 * DigDir's description says whose a client is: when another app's flight
 * finds the client this app was served (it was redescribed at DigDir), this
 * app forgets it and looks itself up again instead of sharing a key.
 */
static void test_client_belongs_to_one_app(void **state)
{
	struct registry *reg = new_registry(16);
	struct registry_answer a = { 0 };
	struct err err = { 0 };
	char kid[KEYS_KID_MAX];

	fake.one_client = true;
	assert_int_equal(ensure(reg, "c:ns:one", scopes_a, 5000, &a, &err), 0);
	registry_answer_release(&a);
	assert_int_equal(ensure(reg, "c:ns:two", scopes_a, 5000, &a, &err), 0);
	assert_string_equal(a.client_id, "id-shared");
	registry_answer_release(&a);
	assert_int_equal(registry_warm_kid(reg, "c:ns:two", "nav:a", kid), 0);
	assert_int_equal(registry_warm_kid(reg, "c:ns:one", "nav:a", kid), -EAGAIN);
	fake.one_client = false;
	assert_int_equal(ensure(reg, "c:ns:one", scopes_a, 5000, &a, &err), 0);
	assert_string_equal(fake.pinned, ""); /* looked up again, not pinned to the lost client */
	assert_string_equal(a.client_id, "id-c:ns:one");
	registry_answer_release(&a);
	registry_free(reg);
}

/* The least recently used idle client goes first; one being provisioned never does. */
static void test_capacity(void **state)
{
	struct registry *reg = new_registry(2);
	struct registry_answer a = { 0 };
	struct err err = { 0 };
	char kid[KEYS_KID_MAX];

	assert_int_equal(ensure(reg, "c:ns:one", scopes_a, 5000, &a, &err), 0);
	registry_answer_release(&a);
	assert_int_equal(ensure(reg, "c:ns:two", scopes_a, 5000, &a, &err), 0);
	registry_answer_release(&a);
	assert_int_equal(registry_warm_kid(reg, "c:ns:one", "nav:a", kid), 0); /* one is newer */
	assert_int_equal(ensure(reg, "c:ns:three", scopes_a, 5000, &a, &err), 0);
	registry_answer_release(&a);
	assert_int_equal(registry_warm_kid(reg, "c:ns:two", "nav:a", kid), -EAGAIN);
	assert_int_equal(registry_warm_kid(reg, "c:ns:one", "nav:a", kid), 0);
	assert_int_equal(registry_warm_kid(reg, "c:ns:three", "nav:a", kid), 0);

	/* Both entries busy: a third app is refused rather than evicting a flight. */
	fake.gated = true;
	advance(LEN);
	assert_true(ensure(reg, "c:ns:one", scopes_a, 50, &a, &err) < 0);
	assert_true(ensure(reg, "c:ns:three", scopes_a, 50, &a, &err) < 0);
	assert_int_equal(ensure(reg, "c:ns:four", scopes_a, 50, &a, &err), -ENOMEM);
	assert_non_null(strstr(err.msg, "full of clients being provisioned"));
	open_gate();
	registry_free(reg);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_flight_shared),
		cmocka_unit_test(test_flight_outlives_mount),
		cmocka_unit_test(test_mounts_own_error_not_covered),
		cmocka_unit_test(test_fallback_across_epoch_while_digdir_down),
		cmocka_unit_test(test_epoch_rollover),
		cmocka_unit_test(test_client_belongs_to_one_app),
		cmocka_unit_test(test_capacity),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
