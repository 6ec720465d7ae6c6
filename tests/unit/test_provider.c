/*
 * Unit tests of provider_status, the project's one mapping from error kinds
 * to gRPC codes: every kind answers the code the README's table documents
 * for it, no kind answers UNAVAILABLE (the driver would retry at once, three
 * times; the README keeps it for a provider that is shutting down, which the
 * Mount handler decides, not this mapping), and a kind added to err.h
 * without a code here fails until the table and the README say which.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "err.h"
#include "provider.h"

/* The README's "Errors a pod's events can show", by err_kind_name(). */
static const struct {
	const char *kind;
	enum server_code code;
} documented[] = {
	{ "none", SERVER_OK },
	{ "invalid", SERVER_INVALID_ARGUMENT },
	{ "permission", SERVER_PERMISSION_DENIED },
	{ "scope_access", SERVER_FAILED_PRECONDITION },
	{ "not_found", SERVER_NOT_FOUND }, /* DigDir's 404; the README's table lacks a row */
	{ "conflict", SERVER_FAILED_PRECONDITION },
	{ "throttled", SERVER_RESOURCE_EXHAUSTED },
	{ "unavailable", SERVER_INTERNAL },
	{ "timeout", SERVER_DEADLINE_EXCEEDED },
	{ "bad_response", SERVER_INTERNAL },
	{ "upstream", SERVER_FAILED_PRECONDITION },
	{ "internal", SERVER_INTERNAL },
	{ "propagating", SERVER_DEADLINE_EXCEEDED },
	{ "unconfigured", SERVER_FAILED_PRECONDITION },
};

#define NDOCUMENTED (sizeof(documented) / sizeof(documented[0]))

/* Far past any kind err.h will grow to; err_kind_name answers "internal" there. */
#define KINDS_PROBED 64

static int documented_code(const char *kind)
{
	for (size_t i = 0; i < NDOCUMENTED; i++)
		if (!strcmp(documented[i].kind, kind))
			return (int)documented[i].code;
	return -1;
}

/* Whether kind is one err.h defines: err_kind_name knows a name for it. */
static bool is_kind(int kind)
{
	return kind == ERR_INTERNAL || strcmp(err_kind_name((enum err_kind)kind), "internal") != 0;
}

static void test_every_kind_has_its_documented_code(void **state)
{
	size_t seen = 0;

	for (int k = 0; k < KINDS_PROBED; k++) {
		const char *name = err_kind_name((enum err_kind)k);
		int want;

		if (!is_kind(k))
			continue;
		want = documented_code(name);
		if (want < 0)
			fail_msg("error kind %s has no documented gRPC code: say which in the "
				 "README's table and in this test",
				 name);
		if ((int)provider_status((enum err_kind)k) != want)
			fail_msg("error kind %s answers gRPC code %d, the README says %d", name,
				 (int)provider_status((enum err_kind)k), want);
		seen++;
	}
	/* Every row of the table is a kind err.h still has. */
	assert_int_equal(seen, NDOCUMENTED);
}

static void test_no_kind_answers_unavailable(void **state)
{
	for (int k = 0; k < KINDS_PROBED; k++)
		if (is_kind(k) && provider_status((enum err_kind)k) == SERVER_UNAVAILABLE)
			fail_msg("error kind %s answers UNAVAILABLE: the driver retries that at "
				 "once, three times",
				 err_kind_name((enum err_kind)k));
}

static void test_unknown_kind_is_internal(void **state)
{
	/* A value no kind has (an err never filled in right) is a bug of ours: INTERNAL. */
	for (int k = 0; k < KINDS_PROBED; k++)
		if (!is_kind(k))
			assert_int_equal(provider_status((enum err_kind)k), SERVER_INTERNAL);
	assert_int_equal(provider_status((enum err_kind) - 1), SERVER_INTERNAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_every_kind_has_its_documented_code),
		cmocka_unit_test(test_no_kind_answers_unavailable),
		cmocka_unit_test(test_unknown_kind_is_internal),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
