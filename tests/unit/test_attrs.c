/* Unit tests of attrs: the strict parser of the driver's attributes. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "attrs.h"

static int parse(const char *text, struct attrs *a, const char **why)
{
	return attrs_parse(text, strlen(text), a, why, NULL);
}

/* The value of key among the parsed members, or NULL. */
static const char *value_of(const struct attrs *a, const char *key)
{
	for (size_t i = 0; i < a->n; i++)
		if (!strcmp(a->members[i].key, key))
			return a->members[i].value;
	return NULL;
}

static void test_members_and_escapes(void **state)
{
	struct attrs a = { 0 };

	assert_int_equal(
	    parse(" {\"a\" : \"1\",\"b\":\"x\\\"y\\\\z\\/\\n\\t\",\"\":\"\"} \n", &a, NULL), 0);
	assert_int_equal(a.n, 3);
	assert_string_equal(value_of(&a, "a"), "1");
	assert_string_equal(value_of(&a, "b"), "x\"y\\z/\n\t");
	assert_string_equal(value_of(&a, ""), "");
	assert_null(value_of(&a, "c"));
	attrs_release(&a);

	/* \u escapes to UTF-8, surrogate pairs included; raw UTF-8 passes through. */
	assert_int_equal(parse("{\"k\":\"\\u00e6\\u20AC\\ud83d\\ude00\xc3\xb8\"}", &a, NULL), 0);
	assert_string_equal(value_of(&a, "k"), "\xc3\xa6\xe2\x82\xac\xf0\x9f\x98\x80\xc3\xb8");
	attrs_release(&a);

	assert_int_equal(parse("{}", &a, NULL), 0);
	assert_int_equal(a.n, 0);
	attrs_release(&a);
}

static void expect_refused(const char *text, const char *why_part)
{
	struct attrs a = { 0 };
	const char *why = NULL;

	assert_int_equal(parse(text, &a, &why), -EINVAL);
	assert_non_null(why);
	if (!strstr(why, why_part))
		fail_msg("\"%s\": reason \"%s\" lacks \"%s\"", text, why, why_part);
	assert_null(a.buf);
}

static void test_refusals(void **state)
{
	expect_refused("", "not a JSON object");
	expect_refused("[]", "not a JSON object");
	expect_refused("{\"a\":1}", "not a string");
	expect_refused("{\"a\":null}", "not a string");
	expect_refused("{\"a\":{\"b\":\"c\"}}", "not a string");
	expect_refused("{\"a\":\"1\",\"a\":\"2\"}", "duplicate");
	expect_refused("{\"a\":\"1\",}", "expected a string");
	expect_refused("{\"a\" \"1\"}", "expected ':'");
	expect_refused("{\"a\":\"1\"", "expected ',' or '}'");
	expect_refused("{\"a\":\"1\"} x", "after the object");
	expect_refused("{\"a\":\"1", "unterminated");
	expect_refused("{\"a\":\"\x01\"}", "control character");
	expect_refused("{\"a\":\"\\x\"}", "invalid escape");
	expect_refused("{\"a\":\"\\u0000\"}", "invalid escape");
	expect_refused("{\"a\":\"\\ud800\"}", "invalid escape");
	expect_refused("{\"a\":\"\\udc00\"}", "invalid escape");
	expect_refused("{\"a\":\"\\ud800\\u0041\"}", "invalid escape");
	expect_refused("{\"a\":\"\\u12\"}", "invalid escape");
	expect_refused("{\"a\":\"\xc0\xaf\"}", "invalid UTF-8");
	expect_refused("{\"a\":\"\xe0\x80\xaf\"}", "invalid UTF-8");
	expect_refused("{\"a\":\"\xed\xa0\x80\"}", "invalid UTF-8");
	expect_refused("{\"a\":\"\xf4\x90\x80\x80\"}", "invalid UTF-8");
	expect_refused("{\"a\":\"\xc3\"}", "invalid UTF-8");
}

/* A JSON object of n members "k0":"v", "k1":"v", ... */
static void members(char *text, size_t len, int n)
{
	size_t used = (size_t)snprintf(text, len, "{");

	for (int i = 0; i < n; i++)
		used +=
		    (size_t)snprintf(text + used, len - used, "%s\"k%d\":\"v\"", i ? "," : "", i);
	snprintf(text + used, len - used, "}");
}

static void test_member_limit(void **state)
{
	char text[ATTRS_MAX * 16 + 16];
	struct attrs a = { 0 };

	members(text, sizeof(text), ATTRS_MAX + 1);
	expect_refused(text, "too many");
	members(text, sizeof(text), ATTRS_MAX);
	assert_int_equal(parse(text, &a, NULL), 0);
	assert_int_equal(a.n, ATTRS_MAX);
	attrs_release(&a);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_members_and_escapes),
		cmocka_unit_test(test_refusals),
		cmocka_unit_test(test_member_limit),
	};

	return cmocka_run_group_tests_name("attrs", tests, NULL, NULL);
}
