/*
 * Unit tests of log: every record is one whole line, JSON lines parse (with
 * jansson, which also refuses invalid UTF-8), cuts fall between characters,
 * and text lines escape control characters.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "log.h"

static char out_path[64];
static int saved_stderr = -1;

/* Sends stderr to a fresh file. */
static int capture(void **state)
{
	int fd;

	snprintf(out_path, sizeof(out_path), "/tmp/mcp-log-XXXXXX");
	fd = mkstemp(out_path);
	assert_true(fd >= 0);
	fflush(stderr);
	saved_stderr = dup(STDERR_FILENO);
	assert_true(dup2(fd, STDERR_FILENO) >= 0);
	close(fd);
	return 0;
}

static int restore(void **state)
{
	fflush(stderr);
	dup2(saved_stderr, STDERR_FILENO);
	close(saved_stderr);
	unlink(out_path);
	log_init(LOG_LEVEL_INFO, LOG_FORMAT_JSON);
	return 0;
}

/* What was logged; caller frees. */
static char *captured(size_t *ret_len)
{
	FILE *f;
	char *buf;
	long n;

	fflush(stderr);
	f = fopen(out_path, "rb");
	assert_non_null(f);
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	buf = calloc(1, (size_t)n + 1);
	assert_non_null(buf);
	assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
	fclose(f);
	*ret_len = (size_t)n;
	return buf;
}

/* A string of n bytes: 3-byte characters, newlines, quotes and a control byte. */
static char *hostile(size_t n)
{
	static const char *const parts[] = { "\xe2\x82\xac", "\n", "\"", "\x01", "\\", "x" };
	char *s = malloc(n + 8);
	size_t at = 0;

	assert_non_null(s);
	for (int i = 0; at < n; i++) {
		const char *p = parts[i % 6];

		memcpy(s + at, p, strlen(p));
		at += strlen(p);
	}
	s[at] = '\0';
	return s;
}

static void test_json_records_stay_whole(void **state)
{
	char *big = hostile(20000), *text, *line, *save = NULL;
	struct log_field f[] = { { "namespace", "team-a" }, { "pod", big }, { "app", "payments" } };
	size_t len;
	int lines = 0;

	log_init(LOG_LEVEL_DEBUG, LOG_FORMAT_JSON);
	log_fields(LOG_LEVEL_WARN, f, 3, "mount failed: %s", big);
	log_fields(LOG_LEVEL_INFO, f, 3, "short");
	log_info("\xe2\x82\xac at the end, cut by invalid bytes: \xff\xc0");
	text = captured(&len);
	assert_int_equal(text[len - 1], '\n');
	for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		json_error_t jerr;
		json_t *j = json_loads(line, 0, &jerr);

		if (!j)
			fail_msg("line %d is not JSON (%s): %.200s", lines, jerr.text, line);
		assert_true(strlen(line) < 8192);
		assert_non_null(json_object_get(j, "msg"));
		if (lines < 2) {
			/* The fields after a long message are still there. */
			assert_string_equal(json_string_value(json_object_get(j, "namespace")),
					    "team-a");
			assert_string_equal(json_string_value(json_object_get(j, "app")),
					    "payments");
		}
		if (lines == 0) {
			const char *m = json_string_value(json_object_get(j, "msg"));
			const char *pod = json_string_value(json_object_get(j, "pod"));

			/* Cut and marked, and what is kept is a prefix of the original. */
			assert_true(strlen(m) > 1000 && strlen(m) < 4000);
			assert_string_equal(m + strlen(m) - 3, "...");
			assert_memory_equal(m, "mount failed: ", 14);
			assert_memory_equal(m + 14, big, strlen(m) - 17);
			assert_memory_equal(pod, big, strlen(pod) - 3);
		}
		if (lines == 2)
			assert_non_null(
			    strstr(json_string_value(json_object_get(j, "msg")), "\xef\xbf\xbd"));
		json_decref(j);
		lines++;
	}
	assert_int_equal(lines, 3);
	free(text);
	free(big);
}

static void test_text_lines_escape_controls(void **state)
{
	struct log_field f[] = { { "pod", "a\n2024-01-01T00:00:00.000Z error forged" },
				 { "app", "has space" },
				 { "c1", "\xc2\x9b"
					 "31m" } };
	char *text;
	size_t len;

	log_init(LOG_LEVEL_DEBUG, LOG_FORMAT_TEXT);
	log_fields(LOG_LEVEL_WARN, f, 3, "unknown parameter \"x\ny\r\x1b[31m\"");
	text = captured(&len);
	/* One line: every newline, carriage return and escape shown as text. */
	assert_non_null(strchr(text, '\n'));
	assert_ptr_equal(strchr(text, '\n'), text + len - 1);
	assert_null(strchr(text, '\r'));
	assert_null(strchr(text, '\x1b'));
	assert_non_null(strstr(text, "unknown parameter \"x\\ny\\r\\x1b[31m\""));
	assert_non_null(strstr(text, " pod=\"a\\n2024-01-01T00:00:00.000Z error forged\""));
	assert_non_null(strstr(text, " app=\"has space\""));
	assert_non_null(strstr(text, " c1=\\u009b31m"));
	assert_memory_equal(text + 25, "warn  unknown", 13);
	free(text);
}

#define T(f) cmocka_unit_test_setup_teardown(f, capture, restore)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_json_records_stay_whole),
		T(test_text_lines_escape_controls),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
