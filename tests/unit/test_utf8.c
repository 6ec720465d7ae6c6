/* Unit tests of utf8: sequence lengths, cuts on character boundaries, cleaning. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "err.h"
#include "utf8.h"

static void test_seq_len(void **state)
{
	assert_int_equal(utf8_seq_len("a", 1), 1);
	assert_int_equal(utf8_seq_len("\xc3\xa5", 2), 2);	  /* å */
	assert_int_equal(utf8_seq_len("\xe2\x82\xac", 3), 3);	  /* € */
	assert_int_equal(utf8_seq_len("\xf0\x9f\x98\x80", 4), 4); /* U+1F600 */
	assert_int_equal(utf8_seq_len("\xe2\x82\xac", 2), 0);	  /* cut short */
	assert_int_equal(utf8_seq_len("\xc0\xaf", 2), 0);	  /* overlong '/' */
	assert_int_equal(utf8_seq_len("\xe0\x80\xaf", 3), 0);	  /* overlong */
	assert_int_equal(utf8_seq_len("\xed\xa0\x80", 3), 0);	  /* surrogate U+D800 */
	assert_int_equal(utf8_seq_len("\xf4\x90\x80\x80", 4), 0); /* past U+10FFFF */
	assert_int_equal(utf8_seq_len("\x80", 1), 0);		  /* a lone continuation */
	assert_int_equal(utf8_seq_len("\xff", 1), 0);
}

static void test_fit(void **state)
{
	/* "a€b": a cut at 2 or 3 would split the euro sign; fit backs off to 1. */
	const char *s = "a\xe2\x82\xac"
			"b";

	assert_int_equal(utf8_fit(s, 0), 0);
	assert_int_equal(utf8_fit(s, 1), 1);
	assert_int_equal(utf8_fit(s, 2), 1);
	assert_int_equal(utf8_fit(s, 3), 1);
	assert_int_equal(utf8_fit(s, 4), 4);
	assert_int_equal(utf8_fit(s, 5), 5);
	assert_int_equal(utf8_fit(s, 100), 5);
	assert_int_equal(utf8_fit("", 10), 0);
}

static void test_clean(void **state)
{
	char a[] = "ok \xe2\x82\xac";
	char b[] = "cut \xe2\x82";	     /* a truncating snprintf's leftover: dropped */
	char c[] = "bad \xff here \xc0\xaf"; /* not UTF-8 in the middle: '?' each */
	char d[] = "\xf0\x9f\x98";

	assert_int_equal(utf8_clean(a), strlen("ok \xe2\x82\xac"));
	assert_string_equal(a, "ok \xe2\x82\xac");
	assert_int_equal(utf8_clean(b), 4);
	assert_string_equal(b, "cut ");
	utf8_clean(c);
	assert_string_equal(c, "bad ? here ??");
	assert_int_equal(utf8_clean(d), 0);
}

/* err_set and err_prefix cut long messages between characters. */
static void test_err_messages_stay_utf8(void **state)
{
	char big[2048], copy[sizeof(((struct err *)0)->msg)];
	struct err e = { 0 };

	/* 3-byte characters from offset 1: the buffer's end falls inside one. */
	big[0] = 'x';
	for (size_t i = 1; i + 3 < sizeof(big); i += 3)
		memcpy(big + i, "\xe2\x82\xac", 3), big[i + 3] = '\0';
	err_set(&e, ERR_INVALID, 22, "%s", big);
	memcpy(copy, e.msg, sizeof(copy));
	assert_int_equal(utf8_clean(copy), strlen(e.msg));
	assert_true(strlen(e.msg) > sizeof(e.msg) - 4);
	err_prefix(&e, "context \xc3\xa5: ");
	memcpy(copy, e.msg, sizeof(copy));
	assert_int_equal(utf8_clean(copy), strlen(e.msg));
	assert_memory_equal(e.msg, "context \xc3\xa5: x\xe2\x82\xac", 15);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_seq_len),
		cmocka_unit_test(test_fit),
		cmocka_unit_test(test_clean),
		cmocka_unit_test(test_err_messages_stay_utf8),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
