/*
 * Unit tests of digdir's pure parts: the kept listing (built from a stream in
 * chunks of any size, which client wins), scope sets, DigDir's times.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "digdir.h"

/*
 * Two matches created in the same millisecond (different offsets), one
 * older match of another integration type, one inactive, one other app, one
 * without a description.
 */
static const char listing_text[] =
    "[{\"client_id\":\"bbb\",\"description\":\"c:ns:app\",\"integration_type\":\"maskinporten\","
    "\"created\":\"2024-01-01T12:00:00.000+01:00\",\"scopes\":[\"b:x\",\"a:y\"]},"
    " {\"client_id\":\"aaa\",\"description\":\"c:ns:app\",\"integration_type\":\"maskinporten\","
    "\"created\":\"2024-01-01T11:00:00Z\",\"scopes\":[\"a:y\",\"a:y\"]},\n"
    "{\"client_id\":\"000\",\"description\":\"c:ns:app\",\"integration_type\":\"idporten\","
    "\"created\":\"2020-01-01T00:00:00Z\"},"
    "{\"client_id\":\"001\",\"description\":\"c:ns:app\",\"integration_type\":\"maskinporten\","
    "\"created\":\"2020-01-01T00:00:00Z\",\"active\":false},"
    "{\"client_id\":\"ccc\",\"description\":\"c:ns:other \\\"}{[\",\"integration_type\":"
    "\"maskinporten\",\"created\":\"2019-01-01T00:00:00Z\",\"client_name\":\"a ] b\"},"
    "{\"client_id\":\"ddd\",\"integration_type\":\"maskinporten\"}]";

/* Feeds text through jsonarray in chunks of chunk bytes into a new listing. */
static struct digdir_listing *parse(const char *text, size_t chunk, int *ret_rc)
{
	struct digdir_listing *l = digdir_listing_new();
	struct jsonarray ja;
	struct err err = { 0 };
	size_t len = strlen(text);
	int r = 0;

	jsonarray_init(&ja, "test", 4096, digdir_listing_add, l);
	for (size_t at = 0; r == 0 && at < len; at += chunk)
		r = jsonarray_feed(&ja, text + at, len - at < chunk ? len - at : chunk, &err);
	if (r == 0)
		r = jsonarray_finish(&ja, &err);
	jsonarray_release(&ja);
	*ret_rc = r;
	return l;
}

static const char *first(json_t *ids)
{
	return json_string_value(json_array_get(ids, 0));
}

static void test_listing_in_any_chunks(void **state)
{
	static const size_t chunks[] = { 1, 2, 7, 64, 100000 };

	for (size_t c = 0; c < sizeof(chunks) / sizeof(chunks[0]); c++) {
		int rc;
		struct digdir_listing *l = parse(listing_text, chunks[c], &rc);
		json_t *ids;

		assert_int_equal(rc, 0);
		/* Only active maskinporten clients with a description are kept. */
		assert_int_equal(digdir_listing_count(l), 3);
		ids = digdir_listing_find(l, "c:ns:app");
		assert_int_equal(json_array_size(ids), 2);
		assert_string_equal(first(ids), "aaa");
		assert_string_equal(json_string_value(json_array_get(ids, 1)), "bbb");
		json_decref(ids);
		ids = digdir_listing_find(l, "c:ns:other \"}{[");
		assert_string_equal(first(ids), "ccc");
		json_decref(ids);
		ids = digdir_listing_find(l, "c:ns:none");
		assert_int_equal(json_array_size(ids), 0);
		json_decref(ids);
		/* Scope sets: sorted and deduplicated. */
		assert_string_equal(digdir_listing_scopes(l, "bbb"), "a:y b:x");
		assert_string_equal(digdir_listing_scopes(l, "aaa"), "a:y");
		assert_null(digdir_listing_scopes(l, "000"));
		digdir_listing_free(l);
	}
}

static void test_earlier_wins_over_smaller_id(void **state)
{
	int rc;
	struct digdir_listing *l = parse(
	    "[{\"client_id\":\"a\",\"description\":\"d\",\"integration_type\":\"maskinporten\"},"
	    "{\"client_id\":\"c\",\"description\":\"d\",\"integration_type\":\"maskinporten\","
	    "\"created\":\"2030-01-01T00:00:00Z\"},"
	    "{\"client_id\":\"b\",\"description\":\"d\",\"integration_type\":\"maskinporten\","
	    "\"created\":\"2030-01-01T00:00:00Z\"}]",
	    5, &rc);
	json_t *ids = digdir_listing_find(l, "d");

	assert_int_equal(rc, 0);
	/* Equal times: the smaller id; an unknown time loses to any known one. */
	assert_string_equal(json_string_value(json_array_get(ids, 0)), "b");
	assert_string_equal(json_string_value(json_array_get(ids, 1)), "c");
	assert_string_equal(json_string_value(json_array_get(ids, 2)), "a");
	json_decref(ids);
	digdir_listing_free(l);
}

static void test_listing_refuses_garbage(void **state)
{
	static const char *const bad[] = {
		"{\"client_id\":\"a\"}",		       /* not a list */
		"[{\"client_id\":\"a\"},]",		       /* trailing comma */
		"[{\"client_id\":\"a\"}] x",		       /* data after the end */
		"[{\"client_id\":\"a\"}",		       /* cut short */
		"[{\"client_id\":1}]",			       /* no string client_id */
		"[{\"description\":\"d\"}]",		       /* no client_id */
		"[\"a\"]",				       /* an entry that is not an object */
		"[{\"client_id\":\"a\",\"client_id\":\"b\"}]", /* a duplicate key */
		"[{\"client_id\":\"a\" \"x\":1}]",	       /* malformed inside */
		/* a kept entry whose scopes are not names */
		"[{\"client_id\":\"a\",\"description\":\"d\",\"integration_type\":"
		"\"maskinporten\",\"scopes\":[1]}]",
		"",
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int rc;
		struct digdir_listing *l = parse(bad[i], 3, &rc);

		if (rc == 0)
			fail_msg("accepted %s", bad[i]);
		digdir_listing_free(l);
	}
}

static void test_entry_bound(void **state)
{
	char big[6000];
	int rc;
	struct digdir_listing *l;

	memset(big, 'x', sizeof(big));
	memcpy(big, "[{\"client_id\":\"", 15);
	memcpy(big + sizeof(big) - 4, "\"}]", 4);
	l = parse(big, 512, &rc);
	assert_int_equal(rc, -EMSGSIZE);
	digdir_listing_free(l);
}

static void test_clear_keeps_nothing(void **state)
{
	int rc;
	struct digdir_listing *l = parse(listing_text, 64, &rc);
	struct err err = { 0 };
	json_t *c = json_pack("{s:s, s:s, s:s}", "client_id", "zzz", "description", "c:ns:app",
			      "integration_type", "maskinporten");
	json_t *ids;

	digdir_listing_clear(l);
	assert_int_equal(digdir_listing_count(l), 0);
	assert_int_equal(digdir_listing_add(l, c, 0, &err), 0);
	ids = digdir_listing_find(l, "c:ns:app");
	assert_int_equal(json_array_size(ids), 1);
	assert_string_equal(first(ids), "zzz");
	assert_string_equal(digdir_listing_scopes(l, "zzz"), "");
	json_decref(ids);
	json_decref(c);
	digdir_listing_free(l);
}

static void test_many_clients(void **state)
{
	struct digdir_listing *l = digdir_listing_new();
	struct err err = { 0 };
	char desc[64], id[64];

	for (int i = 0; i < 5000; i++) {
		json_t *c;

		snprintf(desc, sizeof(desc), "c:ns:app-%d", i);
		snprintf(id, sizeof(id), "id-%d", i);
		c = json_pack("{s:s, s:s, s:s, s:[s]}", "client_id", id, "description", desc,
			      "integration_type", "maskinporten", "scopes", "a:b");
		assert_int_equal(digdir_listing_add(l, c, (size_t)i, &err), 0);
		json_decref(c);
	}
	assert_int_equal(digdir_listing_count(l), 5000);
	for (int i = 0; i < 5000; i += 499) {
		json_t *ids;

		snprintf(desc, sizeof(desc), "c:ns:app-%d", i);
		snprintf(id, sizeof(id), "id-%d", i);
		ids = digdir_listing_find(l, desc);
		assert_int_equal(json_array_size(ids), 1);
		assert_string_equal(first(ids), id);
		json_decref(ids);
	}
	digdir_listing_free(l);
}

static void test_scopes_key(void **state)
{
	json_t *a = json_pack("[s, s, s]", "b:x", "a:y", "b:x");
	char *k = digdir_scopes_key(a);

	assert_string_equal(k, "a:y b:x");
	free(k);
	json_decref(a);
	a = json_pack("[s, i]", "a:b", 1);
	assert_null(digdir_scopes_key(a));
	json_decref(a);
	assert_null(digdir_scopes_key(NULL));
	a = json_array();
	k = digdir_scopes_key(a);
	assert_string_equal(k, "");
	free(k);
	json_decref(a);
}

static void test_parse_time(void **state)
{
	int64_t t = 0;

	assert_int_equal(digdir_parse_time("1970-01-01T00:00:01Z", &t), 0);
	assert_int_equal(t, 1000);
	assert_int_equal(digdir_parse_time("2021-09-15T10:20:43.354+02:00", &t), 0);
	assert_int_equal(t, 1631694043354LL);
	assert_int_equal(digdir_parse_time("2021-09-15T08:20:43.354123456Z", &t), 0);
	assert_int_equal(t, 1631694043354LL);
	assert_int_equal(digdir_parse_time("2021-09-15T03:20:43.354-05:00", &t), 0);
	assert_int_equal(t, 1631694043354LL);
	assert_int_equal(digdir_parse_time("2021-09-15 08:20:43Z", &t), -EINVAL);
	assert_int_equal(digdir_parse_time("2021-09-15T08:20:43", &t), -EINVAL);
	assert_int_equal(digdir_parse_time("2021-09-15T08:20:43Zjunk", &t), -EINVAL);
	assert_int_equal(digdir_parse_time(NULL, &t), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_listing_in_any_chunks),
		cmocka_unit_test(test_earlier_wins_over_smaller_id),
		cmocka_unit_test(test_listing_refuses_garbage),
		cmocka_unit_test(test_entry_bound),
		cmocka_unit_test(test_clear_keeps_nothing),
		cmocka_unit_test(test_many_clients),
		cmocka_unit_test(test_scopes_key),
		cmocka_unit_test(test_parse_time),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
