/* Unit tests of http's pure parts: backoff, Retry-After, deadline clamping. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "http.h"

static void test_backoff_grows_and_caps(void **state)
{
	/* The largest random value shows the ceiling of each retry. */
	assert_int_equal(http_backoff_ms(1, 200, 5000, 200), 200);
	assert_int_equal(http_backoff_ms(2, 200, 5000, 400), 400);
	assert_int_equal(http_backoff_ms(3, 200, 5000, 800), 800);
	assert_int_equal(http_backoff_ms(10, 200, 5000, 5000), 5000);
	assert_int_equal(http_backoff_ms(60, 200, 5000, 5000), 5000);
	/* Full jitter: anything from 0 to the ceiling. */
	assert_int_equal(http_backoff_ms(3, 200, 5000, 0), 0);
	assert_int_equal(http_backoff_ms(3, 200, 5000, 801), 0);
	for (uint64_t r = 0; r < 5000; r += 37)
		assert_true(http_backoff_ms(4, 200, 5000, r) <= 1600);
	assert_int_equal(http_backoff_ms(0, 200, 5000, 5), 0);
}

static void test_retry_after(void **state)
{
	assert_int_equal(http_parse_retry_after(" 1\r\n", 0), 1000);
	assert_int_equal(http_parse_retry_after("0", 0), 0);
	assert_int_equal(http_parse_retry_after("120", 0), 120000);
	/* Capped: a server asking for an hour gets two minutes at most. */
	assert_int_equal(http_parse_retry_after("3600", 0), 120000);
	assert_int_equal(http_parse_retry_after("1x", 0), -1);
	assert_int_equal(http_parse_retry_after("", 0), -1);
	assert_int_equal(http_parse_retry_after(NULL, 0), -1);
	/* HTTP-date: Sun, 06 Nov 1994 08:49:37 GMT is 784111777. */
	assert_int_equal(http_parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784111770), 7000);
	assert_int_equal(http_parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", 784111800), 0);
	assert_int_equal(http_parse_retry_after("not a date", 0), -1);
}

static void test_clamp(void **state)
{
	assert_int_equal(http_clamp_timeout_ms(30000, 0, 1000), 30000);
	assert_int_equal(http_clamp_timeout_ms(30000, 6000, 1000), 5000);
	assert_int_equal(http_clamp_timeout_ms(3000, 60000, 1000), 3000);
	assert_int_equal(http_clamp_timeout_ms(3000, 1000, 1000), 0);
	assert_int_equal(http_clamp_timeout_ms(3000, 500, 1000), 0);
}

static void test_escape(void **state)
{
	char *s = http_escape("nav:test/api x");

	assert_non_null(s);
	assert_string_equal(s, "nav%3Atest%2Fapi%20x");
	free(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_backoff_grows_and_caps),
		cmocka_unit_test(test_retry_after),
		cmocka_unit_test(test_clamp),
		cmocka_unit_test(test_escape),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
