/*
 * log: one line per event on stderr, JSON by default. Messages and field
 * values are escaped; nothing here knows or filters secrets, so callers must
 * never pass them.
 *
 * Every record is whole, whatever it is given: a message or value too long
 * for its share of the line is cut between two characters and marked "...",
 * and the record is always closed, so that no reader sees two records on one
 * line or one record on two. JSON lines are valid JSON (bytes that are not
 * UTF-8 become U+FFFD); text lines escape control characters, so a newline
 * in a parameter key never starts a line of its own.
 */
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "utf8.h"

/*
 * One record is at most LINE_CAP bytes, well under the 16 KiB at which
 * container runtimes split a line. The message gets at most MSG_CAP of it
 * and each field value FIELD_CAP, so the fields after a long message are
 * still there.
 */
#define LINE_CAP  8192
#define MSG_CAP	  3072
#define FIELD_CAP 512
#define KEY_CAP	  64
#define CUT_MARK  "..."

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

/* The record being built: buf[0..len), never more than cap bytes. */
struct line {
	char buf[LINE_CAP];
	size_t len;
};

/* Appends s whole when it fits; reports whether it did (the caller reserved room). */
static bool put_raw(struct line *l, const char *s)
{
	size_t n = strlen(s);

	if (l->len + n > sizeof(l->buf))
		return false;
	memcpy(l->buf + l->len, s, n);
	l->len += n;
	return true;
}

/*
 * How one character of s looks escaped, into rep (at most 8 bytes). quote:
 * the text format is inside a quoted value, so '"' is escaped there too.
 * Returns the bytes of s it consumed.
 */
static size_t escape_one(const char *s, size_t left, bool json, bool quote, char rep[8],
			 size_t *ret_n)
{
	unsigned char c = (unsigned char)s[0];
	size_t k;

	if (c == '\\' || (c == '"' && (json || quote))) {
		rep[0] = '\\';
		rep[1] = (char)c;
		*ret_n = 2;
		return 1;
	}
	if (c == '\n' || c == '\r' || c == '\t') {
		rep[0] = '\\';
		rep[1] = c == '\n' ? 'n' : c == '\r' ? 'r' : 't';
		*ret_n = 2;
		return 1;
	}
	if (c < 0x20 || c == 0x7f) {
		*ret_n = (size_t)snprintf(rep, 8, json ? "\\u%04x" : "\\x%02x", c);
		return 1;
	}
	if (c < 0x80) {
		rep[0] = (char)c;
		*ret_n = 1;
		return 1;
	}
	k = utf8_seq_len(s, left);
	if (k == 0) {
		/* Not UTF-8: JSON gets the replacement character, text the byte's value. */
		*ret_n = (size_t)snprintf(rep, 8, json ? "\\ufffd" : "\\x%02x", c);
		return 1;
	}
	/* C1 controls (U+0080..U+009F) drive some terminals: text shows them escaped. */
	if (!json && k == 2 && c == 0xC2 && (unsigned char)s[1] < 0xA0) {
		*ret_n = (size_t)snprintf(rep, 8, "\\u%04x", (unsigned char)s[1]);
		return 2;
	}
	memcpy(rep, s, k);
	*ret_n = k;
	return k;
}

/*
 * Appends s escaped, in at most budget bytes of the line (the caller has
 * made sure they are free): whole when it fits, else cut after the last
 * character that leaves room for CUT_MARK, and marked.
 */
static void put_escaped(struct line *l, const char *s, size_t budget, bool json, bool quote)
{
	const size_t mark = sizeof(CUT_MARK) - 1;
	size_t left = strlen(s), end = l->len + budget;
	size_t mark_limit = budget >= mark ? end - mark : l->len, cut = l->len;

	while (left > 0) {
		char rep[8];
		size_t n, used = escape_one(s, left, json, quote, rep, &n);

		if (l->len + n > end) {
			l->len = cut;
			if (l->len + mark <= end)
				put_raw(l, CUT_MARK);
			return;
		}
		memcpy(l->buf + l->len, rep, n);
		l->len += n;
		if (l->len <= mark_limit)
			cut = l->len;
		s += used;
		left -= used;
	}
}

/* Free bytes of the line for one piece: at most cap, keeping reserve for what must follow. */
static size_t room_for(const struct line *l, size_t cap, size_t reserve)
{
	size_t room = sizeof(l->buf) - l->len;

	room = room > reserve ? room - reserve : 0;
	return cap < room ? cap : room;
}

/* Whether a text-format value must be quoted to read as one key=value pair. */
static bool text_needs_quotes(const char *v)
{
	return !*v || strpbrk(v, " \"=") != NULL;
}

void log_emit(enum log_level level, const struct log_field *fields, size_t nfields, const char *fmt,
	      ...)
{
	static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
	/* Bytes every piece leaves free behind it: a closing quote and "}\n". */
	const size_t tail = 4;
	bool json = log_format == LOG_FORMAT_JSON;
	/*
	 * One byte more than the message may take: a longer message is cut by
	 * put_escaped, which never reaches the character vsnprintf may have split.
	 */
	char msg[MSG_CAP + 2], ts[64];
	struct line l = { .len = 0 };
	struct timespec now;
	struct tm tm;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);

	clock_gettime(CLOCK_REALTIME, &now);
	gmtime_r(&now.tv_sec, &tm);
	snprintf(ts, sizeof(ts), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
		 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
		 (int)(now.tv_nsec / 1000000));

	if (json) {
		put_raw(&l, "{\"time\":\"");
		put_raw(&l, ts);
		put_raw(&l, "\",\"level\":\"");
		put_raw(&l, level_names[level]);
		put_raw(&l, "\",\"msg\":\"");
	} else {
		put_raw(&l, ts);
		put_raw(&l, " ");
		put_raw(&l, level_names[level]);
		put_raw(&l, level == LOG_LEVEL_WARN || level == LOG_LEVEL_INFO ? "  " : " ");
	}
	put_escaped(&l, msg, room_for(&l, MSG_CAP, tail), json, false);
	if (json)
		put_raw(&l, "\"");

	for (size_t i = 0; i < nfields; i++) {
		const char *v = fields[i].value;
		bool quote;

		if (!v)
			continue;
		/* A field goes in only with room for its key, a little of its value and the tail.
		 */
		if (sizeof(l.buf) - l.len < KEY_CAP + 32 + tail)
			break;
		put_raw(&l, json ? ",\"" : " ");
		put_escaped(&l, fields[i].key, KEY_CAP, json, false);
		put_raw(&l, json ? "\":\"" : "=");
		quote = !json && text_needs_quotes(v);
		if (quote)
			put_raw(&l, "\"");
		put_escaped(&l, v, room_for(&l, FIELD_CAP, tail), json, quote);
		if (json || quote)
			put_raw(&l, "\"");
	}
	put_raw(&l, json ? "}\n" : "\n");

	pthread_mutex_lock(&lock);
	fwrite(l.buf, 1, l.len, stderr);
	fflush(stderr);
	pthread_mutex_unlock(&lock);
}
