/*
 * Unit tests of the key schedule (keyset.c): the table of what a node in
 * epoch E registers given what DigDir holds, normalisation of keys registered
 * by older tools, errors, and two nodes whose clocks straddle an epoch
 * boundary converging instead of undoing each other. keyset_sync's round
 * trips are driven against the emulator in tests/integration.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "keys.h"
#include "keyset.h"

#define E   1000
#define LEN 3600

static struct keys_seed seed;	    /* bytes 0x00..0x1f */
static struct keys_seed other_seed; /* bytes 0x00..0x3f */

static int setup(void **state)
{
	unsigned char b[64];

	for (int i = 0; i < 64; i++)
		b[i] = (unsigned char)i;
	if (keys_seed_from_bytes(b, 32, &seed) < 0 || keys_seed_from_bytes(b, 64, &other_seed) < 0)
		return -1;
	return 0;
}

static int teardown(void **state)
{
	keys_seed_wipe(&seed);
	keys_seed_wipe(&other_seed);
	return 0;
}

static int jwk_calls;

/* Stands in for derivation: the schedule only needs the kid right. */
static json_t *fake_public_jwk(void *ctx, int64_t epoch)
{
	char kid[KEYS_KID_MAX];

	jwk_calls++;
	keys_kid(&seed, "client-1", epoch, kid);
	return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "use", "sig", "kty", "RSA", "kid", kid,
			 "alg", "RS256", "n", "xx", "e", "AQAB");
}

/*
 * A set in a small language, one token per key:
 *   o<k>   our key of epoch E+k with the right exp (o-1, o0, o+2)
 *   O<k>   our key of epoch E+k with a wrong exp
 *   s<k>   the key of epoch E+k of another seed (foreign)
 *   f<X>   a foreign key "X" without exp; f<X>! expired; f<X>~ expiring later;
 *          f<X>? registered before DigDir's 2025 API: no use, no alg, an x5t
 * Keys carry use and alg, as DigDir's 2025 API returns them, unless said otherwise.
 */
static json_t *make_set(const char *spec)
{
	char buf[256], *tok, *save = NULL;
	json_t *set = json_array();

	snprintf(buf, sizeof(buf), "%s", spec);
	for (tok = strtok_r(buf, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
		char kid[KEYS_KID_MAX];
		json_t *k;

		if (tok[0] == 'o' || tok[0] == 'O' || tok[0] == 's') {
			int64_t ep = E + strtol(tok + 1, NULL, 10);

			keys_kid(tok[0] == 's' ? &other_seed : &seed, "client-1", ep, kid);
			k = json_pack(
			    "{s:s, s:s, s:s, s:s, s:I}", "kid", kid, "kty", "RSA", "use", "sig",
			    "alg", "RS256", "exp",
			    (json_int_t)(keys_epoch_end(ep + 1, LEN) + (tok[0] == 'O' ? 5 : 0)));
		} else {
			size_t l = strlen(tok);
			char last = tok[l - 1];

			if (last == '!' || last == '~' || last == '?')
				tok[l - 1] = '\0';
			if (last == '?')
				k = json_pack("{s:s, s:s, s:s}", "kid", tok + 1, "kty", "RSA",
					      "x5t", "abc");
			else
				k = json_pack("{s:s, s:s, s:s, s:s}", "kid", tok + 1, "kty", "RSA",
					      "use", "sig", "alg", "RS256");
			if (last == '!')
				json_object_set_new(k, "exp",
						    json_integer(keys_epoch_start(E, LEN) - 10));
			if (last == '~')
				json_object_set_new(k, "exp",
						    json_integer(keys_epoch_start(E, LEN) + 10));
		}
		json_array_append_new(set, k);
	}
	return set;
}

/* The set's kids back in the same language (own and foreign keys only). */
static void describe(const json_t *set, char *out, size_t len)
{
	size_t i, n = 0;
	json_t *v;

	out[0] = '\0';
	json_array_foreach(set, i, v)
	{
		const char *kid = json_string_value(json_object_get(v, "kid"));
		int64_t ep;

		if (keys_kid_is_own(&seed, "client-1", kid, &ep))
			n += (size_t)snprintf(out + n, len - n, "%so%+d", n ? " " : "",
					      (int)(ep - E));
		else if (keys_kid_is_own(&other_seed, "client-1", kid, &ep))
			n += (size_t)snprintf(out + n, len - n, "%ss%+d", n ? " " : "",
					      (int)(ep - E));
		else
			n += (size_t)snprintf(out + n, len - n, "%sf%s", n ? " " : "", kid);
	}
}

static int schedule(const json_t *current, int64_t epoch, bool drop_foreign, json_t **ret_set,
		    bool *ret_changed)
{
	struct keyset_input in = { .seed = &seed,
				   .client_id = "client-1",
				   .epoch = epoch,
				   .epoch_len = LEN,
				   .current = current,
				   .drop_foreign = drop_foreign };
	struct err err = { 0 };

	return keyset_schedule(&in, fake_public_jwk, NULL, ret_set, ret_changed, &err);
}

static void test_schedule_table(void **state)
{
	static const struct {
		const char *name, *current, *want;
		bool drop_foreign, changed;
		int derived;
	} cases[] = {
		{ "empty set", "", "o+0 o+1", false, true, 2 },
		{ "only e present", "o0", "o+0 o+1", false, true, 1 },
		{ "e-1, e, e+1: no change", "o-1 o0 o+1", "o-1 o+0 o+1", false, false, 0 },
		{ "order does not matter", "o+1 o0 o-1", "o-1 o+0 o+1", false, false, 0 },
		{ "old own keys dropped", "o-3 o-2 o-1 o0 o+1", "o-1 o+0 o+1", false, true, 0 },
		{ "e+2 kept", "o0 o+1 o+2", "o+0 o+1 o+2", false, false, 0 },
		{ "far-future own keys dropped", "o0 o+1 o+3 o+9", "o+0 o+1", false, true, 0 },
		{ "foreign kept while room", "fA fB o0 o+1", "o+0 o+1 fA fB", false, false, 0 },
		{ "foreign kept, oldest first, up to 5", "fA fB fC fD o0", "o+0 o+1 fA fB fC",
		  false, true, 1 },
		{ "foreign beyond 5 dropped", "o-1 o0 o+1 fA fB fC", "o-1 o+0 o+1 fA fB", false,
		  true, 0 },
		{ "expired foreign dropped", "fA! fB~ fC o0 o+1", "o+0 o+1 fB fC", false, true, 0 },
		{ "drop_foreign", "fA o0 o+1", "o+0 o+1", true, true, 0 },
		{ "drop_foreign, none there", "o0 o+1", "o+0 o+1", true, false, 0 },
		{ "wrong exp on an own key", "O0 o+1", "o+0 o+1", false, true, 0 },
		{ "wrong exp on a kept e+2", "o0 o+1 O+2", "o+0 o+1 o+2", false, true, 0 },
		{ "another seed's keys are foreign", "s0 s+1 o0 o+1", "o+0 o+1 s+0 s+1", false,
		  false, 0 },
		{ "duplicate own kid", "o0 o0 o+1", "o+0 o+1", false, true, 0 },
		{ "duplicate foreign kid", "fA fA o0 o+1", "o+0 o+1 fA", false, true, 0 },
		{ "legacy foreign key normalised", "fL? o0 o+1", "o+0 o+1 fL", false, true, 0 },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		json_t *cur = make_set(cases[i].current), *set = NULL;
		bool changed = !cases[i].changed;
		char got[512];
		size_t j;
		json_t *v;

		jwk_calls = 0;
		assert_int_equal(schedule(cur, E, cases[i].drop_foreign, &set, &changed), 0);
		describe(set, got, sizeof(got));
		if (strcmp(got, cases[i].want) != 0 || changed != cases[i].changed ||
		    jwk_calls != cases[i].derived)
			fail_msg("case \"%s\": got [%s] changed=%d derived=%d, want [%s] "
				 "changed=%d derived=%d",
				 cases[i].name, got, changed, jwk_calls, cases[i].want,
				 cases[i].changed, cases[i].derived);
		/* Our keys carry exp = end of their grace epoch; never more than 5 keys. */
		assert_true(json_array_size(set) <= KEYS_MAX_REGISTERED);
		json_array_foreach(set, j, v)
		{
			int64_t ep;

			/* Every key as DigDir takes it: use and alg, no member it does not know. */
			assert_string_equal(json_string_value(json_object_get(v, "use")), "sig");
			assert_string_equal(json_string_value(json_object_get(v, "alg")), "RS256");
			assert_null(json_object_get(v, "x5t"));
			if (keys_kid_is_own(&seed, "client-1",
					    json_string_value(json_object_get(v, "kid")), &ep))
				assert_int_equal(json_integer_value(json_object_get(v, "exp")),
						 keys_epoch_end(ep + 1, LEN));
		}
		json_decref(set);
		json_decref(cur);
	}
}

/* A foreign key that expired before now is dropped even when the epoch began earlier. */
static void test_schedule_drops_keys_expired_by_now(void **state)
{
	json_t *cur = make_set("fA~ fB o0 o+1"), *set = NULL;
	struct keyset_input in = { .seed = &seed,
				   .client_id = "client-1",
				   .epoch = E,
				   .epoch_len = LEN,
				   .current = cur,
				   .now = keys_epoch_start(E, LEN) + 20 };
	struct err err = { 0 };
	bool changed = false;
	char got[256];

	assert_int_equal(keyset_schedule(&in, fake_public_jwk, NULL, &set, &changed, &err), 0);
	describe(set, got, sizeof(got));
	assert_string_equal(got, "o+0 o+1 fB");
	assert_true(changed);
	json_decref(set);
	json_decref(cur);
}

static void test_jwk_normalise(void **state)
{
	json_t *legacy =
	    json_pack("{s:s, s:s, s:s, s:s, s:s, s:I, s:[s]}", "kid", "k1", "kty", "RSA", "n", "nn",
		      "e", "AQAB", "d", "secret", "exp", 99, "x5c", "MIIB");
	json_t *n = keyset_normalise(legacy);
	json_t *want =
	    json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:I, s:[s]}", "kid", "k1", "kty", "RSA", "n",
		      "nn", "e", "AQAB", "use", "sig", "alg", "RS256", "exp", 99, "x5c", "MIIB");

	/* No private member ever goes back; use and alg are added, x5c and exp kept. */
	assert_true(json_equal(n, want));
	json_decref(n);
	json_object_set_new(legacy, "alg", json_string("RS512"));
	n = keyset_normalise(legacy);
	assert_string_equal(json_string_value(json_object_get(n, "alg")), "RS512");
	json_decref(n);
	json_object_del(legacy, "kid");
	assert_null(keyset_normalise(legacy));
	json_decref(legacy);
	json_decref(want);
}

static void test_schedule_errors(void **state)
{
	json_t *bad = json_pack("[s]", "not-an-object"), *obj = json_object(), *set = NULL;
	bool changed = false;

	assert_int_equal(schedule(bad, E, false, &set, &changed), -EINVAL);
	assert_int_equal(schedule(obj, E, false, &set, &changed), -EINVAL);
	assert_null(set);
	/* JSON null, as DigDir may send for "keys", means none. */
	assert_int_equal(schedule(json_null(), E, false, &set, &changed), 0);
	assert_int_equal(json_array_size(set), 2);
	assert_true(changed);
	json_decref(set);
	json_decref(bad);
	json_decref(obj);
}

/* Uploads as a node in epoch ep would: returns whether it changed the state. */
static bool node_upload(json_t **state_set, int64_t ep)
{
	json_t *set = NULL;
	bool changed = false;

	assert_int_equal(schedule(*state_set, ep, false, &set, &changed), 0);
	if (changed) {
		json_decref(*state_set);
		*state_set = set;
	} else {
		json_decref(set);
	}
	return changed;
}

/*
 * Node A in epoch E and node B in E+1 (clocks either side of a boundary)
 * upload alternately. After each has uploaded once, neither wants a change,
 * and each node's handed-out key is registered.
 */
static void test_schedule_two_clocks(void **state)
{
	static const char *const starts[] = {
		"",
		"o-1",
		"o-1 o0",
		"o-2 o-1 o0 o+1",
		"o0 o+1 o+3",
		"o+1 o+2 o+3",
		"fA fB fC fD",
		"fA! fB~ o-1 o0 fC",
		"s0 s+1 fA o0 o+1 o+2",
		"O-1 O0 O+1 O+2 fZ",
	};
	char kid_a[KEYS_KID_MAX], kid_b[KEYS_KID_MAX];

	keys_kid(&seed, "client-1", E, kid_a);
	keys_kid(&seed, "client-1", E + 1, kid_b);
	for (size_t i = 0; i < sizeof(starts) / sizeof(starts[0]); i++) {
		for (int a_first = 0; a_first < 2; a_first++) {
			json_t *st = make_set(starts[i]);
			char got[512];

			node_upload(&st, a_first ? E : E + 1);
			node_upload(&st, a_first ? E + 1 : E);
			describe(st, got, sizeof(got));
			for (int round = 0; round < 3; round++)
				if (node_upload(&st, E) || node_upload(&st, E + 1))
					fail_msg("start [%s], %s first: no convergence at [%s]",
						 starts[i], a_first ? "A" : "B", got);
			assert_true(keyset_has_kid(st, kid_a));
			assert_true(keyset_has_kid(st, kid_b));
			json_decref(st);
		}
	}
}

/* keyset_has_kid and keyset_newest_own read what DigDir returns, odd members included. */
static void test_lookups(void **state)
{
	json_t *set = make_set("fA o-1 o+2 s+5 fB?"),
	       *odd = json_pack("[i, {s:i}, {}]", 1, "kid", 2);
	char kid[KEYS_KID_MAX];

	keys_kid(&seed, "client-1", E - 1, kid);
	assert_true(keyset_has_kid(set, kid));
	assert_true(keyset_has_kid(set, "A"));
	keys_kid(&seed, "client-1", E, kid);
	assert_false(keyset_has_kid(set, kid));
	assert_false(keyset_has_kid(odd, "2"));
	assert_false(keyset_has_kid(NULL, "A"));
	/* The other seed's E+5 is not ours: the newest of ours is E+2. */
	assert_int_equal(keyset_newest_own(&seed, "client-1", set), E + 2);
	assert_int_equal(keyset_newest_own(&other_seed, "client-1", set), E + 5);
	assert_int_equal(keyset_newest_own(&seed, "client-2", set), -1);
	assert_int_equal(keyset_newest_own(&seed, "client-1", odd), -1);
	json_decref(odd);
	json_decref(set);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_schedule_table),
		cmocka_unit_test(test_schedule_drops_keys_expired_by_now),
		cmocka_unit_test(test_jwk_normalise),
		cmocka_unit_test(test_schedule_errors),
		cmocka_unit_test(test_schedule_two_clocks),
		cmocka_unit_test(test_lookups),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
