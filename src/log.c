/*
 * log: one line per event on stderr, JSON by default. Messages and field
 * values are escaped; nothing here knows or filters secrets, so callers must
 * never pass them.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "log.h"

enum log_level log_current_level = LOG_LEVEL_INFO;
static enum log_format log_format = LOG_FORMAT_JSON;

static const char *const level_names[] = { "error", "warn", "info", "debug" };

void log_init(enum log_level level, enum log_format format)
{
	log_current_level = level;
	log_format = format;
}

int log_parse_level(const char *s, enum log_level *ret_level)
{
	for (int i = 0; s && i <= LOG_LEVEL_DEBUG; i++)
		if (!strcmp(s, level_names[i])) {
			*ret_level = (enum log_level)i;
			return 0;
		}
	return -EINVAL;
}

int log_parse_format(const char *s, enum log_format *ret_format)
{
	if (s && !strcmp(s, "json"))
		*ret_format = LOG_FORMAT_JSON;
	else if (s && !strcmp(s, "text"))
		*ret_format = LOG_FORMAT_TEXT;
	else
		return -EINVAL;
	return 0;
}

/* Appends s to buf as JSON string contents. Returns the new length. */
static size_t put_escaped(char *buf, size_t len, size_t cap, const char *s)
{
	for (; *s && len + 7 < cap; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\') {
			buf[len++] = '\\';
			buf[len++] = (char)c;
		} else if (c < 0x20) {
			len += (size_t)snprintf(buf + len, cap - len, "\\u%04x", c);
		} else {
			buf[len++] = (char)c;
		}
	}
	return len;
}

static size_t put_raw(char *buf, size_t len, size_t cap, const char *s)
{
	size_t n = strlen(s);

	if (len + 1 >= cap)
		return len;
	if (len + n >= cap)
		n = cap - len - 1;
	memcpy(buf + len, s, n);
	return len + n;
}

void log_emit(enum log_level level, const struct log_field *fields, size_t nfields, const char *fmt,
	      ...)
{
	static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
	char msg[2048], line[4096], ts[64];
	struct timespec now;
	struct tm tm;
	size_t len = 0;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);

	clock_gettime(CLOCK_REALTIME, &now);
	gmtime_r(&now.tv_sec, &tm);
	snprintf(ts, sizeof(ts), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
		 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
		 (int)(now.tv_nsec / 1000000));

	if (log_format == LOG_FORMAT_JSON) {
		len = put_raw(line, len, sizeof(line), "{\"time\":\"");
		len = put_raw(line, len, sizeof(line), ts);
		len = put_raw(line, len, sizeof(line), "\",\"level\":\"");
		len = put_raw(line, len, sizeof(line), level_names[level]);
		len = put_raw(line, len, sizeof(line), "\",\"msg\":\"");
		len = put_escaped(line, len, sizeof(line), msg);
		len = put_raw(line, len, sizeof(line), "\"");
		for (size_t i = 0; i < nfields; i++) {
			if (!fields[i].value)
				continue;
			len = put_raw(line, len, sizeof(line), ",\"");
			len = put_escaped(line, len, sizeof(line), fields[i].key);
			len = put_raw(line, len, sizeof(line), "\":\"");
			len = put_escaped(line, len, sizeof(line), fields[i].value);
			len = put_raw(line, len, sizeof(line), "\"");
		}
		len = put_raw(line, len, sizeof(line), "}\n");
	} else {
		len =
		    (size_t)snprintf(line, sizeof(line), "%s %-5s %s", ts, level_names[level], msg);
		if (len >= sizeof(line))
			len = sizeof(line) - 1;
		for (size_t i = 0; i < nfields && len + 4 < sizeof(line); i++) {
			if (!fields[i].value)
				continue;
			len += (size_t)snprintf(line + len, sizeof(line) - len, " %s=%s",
						fields[i].key, fields[i].value);
			if (len >= sizeof(line))
				len = sizeof(line) - 2;
		}
		line[len++] = '\n';
	}

	pthread_mutex_lock(&lock);
	fwrite(line, 1, len, stderr);
	fflush(stderr);
	pthread_mutex_unlock(&lock);
}
