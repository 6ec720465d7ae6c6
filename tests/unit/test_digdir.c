/* Unit tests of digdir's pure parts: which client wins, scope sets, DigDir's times. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "digdir.h"

static json_t *clients(void)
{
	/* Two matches created in the same millisecond (different offsets), one older
	 * match of another integration type, one inactive, one other app. */
	return json_pack("[{s:s, s:s, s:s, s:s}, {s:s, s:s, s:s, s:s}, {s:s, s:s, s:s, s:s},"
			 " {s:s, s:s, s:s, s:s, s:b}, {s:s, s:s, s:s, s:s}]",
			 "client_id", "bbb", "description", "c:ns:app", "integration_type",
			 "maskinporten", "created", "2024-01-01T12:00:00.000+01:00", "client_id",
			 "aaa", "description", "c:ns:app", "integration_type", "maskinporten",
			 "created", "2024-01-01T11:00:00Z", "client_id", "000", "description",
			 "c:ns:app", "integration_type", "idporten", "created",
			 "2020-01-01T00:00:00Z", "client_id", "001", "description", "c:ns:app",
			 "integration_type", "maskinporten", "created", "2020-01-01T00:00:00Z",
			 "active", 0, "client_id", "ccc", "description", "c:ns:other",
			 "integration_type", "maskinporten", "created", "2019-01-01T00:00:00Z");
}

static void test_pick_earliest_then_smallest_id(void **state)
{
	json_t *list = clients(), *c;
	size_t n = 0;

	c = digdir_pick_client(list, "c:ns:app", NULL, &n);
	assert_non_null(c);
	assert_string_equal(json_string_value(json_object_get(c, "client_id")), "aaa");
	assert_int_equal(n, 2);

	/* An earlier one by a real margin wins over the smaller id. */
	json_object_set_new(json_array_get(list, 0), "created",
			    json_string("2024-01-01T10:59:59.999Z"));
	c = digdir_pick_client(list, "c:ns:app", NULL, NULL);
	assert_string_equal(json_string_value(json_object_get(c, "client_id")), "bbb");

	c = digdir_pick_client(list, "c:ns:app", "ccc", &n);
	assert_string_equal(json_string_value(json_object_get(c, "client_id")), "ccc");
	assert_null(digdir_pick_client(list, "c:ns:app", "001", NULL));
	assert_null(digdir_pick_client(list, "c:ns:none", NULL, &n));
	assert_int_equal(n, 0);
	json_decref(list);
}

static void test_pick_unknown_created_loses(void **state)
{
	json_t *list =
	    json_pack("[{s:s, s:s, s:s}, {s:s, s:s, s:s, s:s}]", "client_id", "a", "description",
		      "d", "integration_type", "maskinporten", "client_id", "b", "description", "d",
		      "integration_type", "maskinporten", "created", "2030-01-01T00:00:00Z");

	assert_string_equal(json_string_value(json_object_get(
				digdir_pick_client(list, "d", NULL, NULL), "client_id")),
			    "b");
	json_decref(list);
}

static void test_scopes_as_sets(void **state)
{
	const char *ab[] = { "a", "b" }, *ba[] = { "b", "a" }, *a[] = { "a" };
	json_t *have = json_pack("[s, s]", "a", "b");

	assert_true(digdir_scopes_equal(have, ab, 2));
	assert_true(digdir_scopes_equal(have, ba, 2));
	assert_false(digdir_scopes_equal(have, a, 1));
	json_array_append_new(have, json_string("c"));
	assert_false(digdir_scopes_equal(have, ab, 2));
	assert_false(digdir_scopes_equal(NULL, a, 1));
	assert_true(digdir_scopes_equal(NULL, a, 0));
	json_decref(have);
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
		cmocka_unit_test(test_pick_earliest_then_smallest_id),
		cmocka_unit_test(test_pick_unknown_created_loses),
		cmocka_unit_test(test_scopes_as_sets),
		cmocka_unit_test(test_parse_time),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
