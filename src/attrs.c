/*
 * attrs: a strict one-pass parser for the Mount request's attributes, a
 * flat JSON object of strings (RFC 8259). It is on the warm path of every
 * Mount, where building a jansson tree was half the cost. It must accept
 * nothing jansson would refuse: tests/fuzz/fuzz_attrs.c compares the two on
 * every input. Reasons for rejection never quote the input.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "attrs.h"
#include "wipe.h"

struct parser {
	const unsigned char *p, *end, *start;
	char *out; /* next free byte of the decoded strings */
	const char *why;
};

static void skip_ws(struct parser *ps)
{
	while (ps->p < ps->end &&
	       (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
		ps->p++;
}

static int hexval(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Four hex digits after "\u". Returns the code unit, or -1. */
static long read_u16(struct parser *ps)
{
	long v = 0;

	if (ps->end - ps->p < 4)
		return -1;
	for (int i = 0; i < 4; i++) {
		int h = hexval(ps->p[i]);

		if (h < 0)
			return -1;
		v = v * 16 + h;
	}
	ps->p += 4;
	return v;
}

static void put_utf8(struct parser *ps, uint32_t cp)
{
	unsigned char *o = (unsigned char *)ps->out;

	if (cp < 0x80) {
		*o++ = (unsigned char)cp;
	} else if (cp < 0x800) {
		*o++ = (unsigned char)(0xC0 | (cp >> 6));
		*o++ = (unsigned char)(0x80 | (cp & 0x3F));
	} else if (cp < 0x10000) {
		*o++ = (unsigned char)(0xE0 | (cp >> 12));
		*o++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
		*o++ = (unsigned char)(0x80 | (cp & 0x3F));
	} else {
		*o++ = (unsigned char)(0xF0 | (cp >> 18));
		*o++ = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
		*o++ = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
		*o++ = (unsigned char)(0x80 | (cp & 0x3F));
	}
	ps->out = (char *)o;
}

/* One escape after the backslash. Returns 0 or -1. */
static int escape(struct parser *ps)
{
	long hi, lo;

	if (ps->p >= ps->end)
		return -1;
	switch (*ps->p++) {
	case '"':
		*ps->out++ = '"';
		return 0;
	case '\\':
		*ps->out++ = '\\';
		return 0;
	case '/':
		*ps->out++ = '/';
		return 0;
	case 'b':
		*ps->out++ = '\b';
		return 0;
	case 'f':
		*ps->out++ = '\f';
		return 0;
	case 'n':
		*ps->out++ = '\n';
		return 0;
	case 'r':
		*ps->out++ = '\r';
		return 0;
	case 't':
		*ps->out++ = '\t';
		return 0;
	case 'u':
		hi = read_u16(ps);
		if (hi <= 0 || (hi >= 0xDC00 && hi <= 0xDFFF))
			return -1; /* \u0000 (NUL is refused, as jansson does) or a lone low half */
		if (hi >= 0xD800 && hi <= 0xDBFF) {
			if (ps->end - ps->p < 2 || ps->p[0] != '\\' || ps->p[1] != 'u')
				return -1;
			ps->p += 2;
			lo = read_u16(ps);
			if (lo < 0xDC00 || lo > 0xDFFF)
				return -1;
			put_utf8(ps, (uint32_t)(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)));
			return 0;
		}
		put_utf8(ps, (uint32_t)hi);
		return 0;
	default:
		return -1;
	}
}

/* One UTF-8 sequence starting at p: its length, or 0 when it is invalid. */
static size_t utf8_len(const unsigned char *p, const unsigned char *end)
{
	uint32_t cp;
	size_t n;

	if (p[0] < 0x80)
		return 1;
	if (p[0] >= 0xC2 && p[0] <= 0xDF)
		n = 2, cp = p[0] & 0x1F;
	else if (p[0] >= 0xE0 && p[0] <= 0xEF)
		n = 3, cp = p[0] & 0x0F;
	else if (p[0] >= 0xF0 && p[0] <= 0xF4)
		n = 4, cp = p[0] & 0x07;
	else
		return 0;
	if ((size_t)(end - p) < n)
		return 0;
	for (size_t i = 1; i < n; i++) {
		if ((p[i] & 0xC0) != 0x80)
			return 0;
		cp = (cp << 6) | (p[i] & 0x3F);
	}
	/* Overlong forms, UTF-16 surrogates and code points past U+10FFFF. */
	if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10FFFF ||
	    (cp >= 0xD800 && cp <= 0xDFFF))
		return 0;
	return n;
}

/* A string at ps->p (which is '"'); decoded, NUL-terminated, into ps->out. */
static const char *string(struct parser *ps)
{
	const char *s = ps->out;

	if (ps->p >= ps->end || *ps->p != '"') {
		ps->why = "expected a string";
		return NULL;
	}
	ps->p++;
	while (ps->p < ps->end && *ps->p != '"') {
		const unsigned char *run = ps->p;
		size_t n;

		/* Printable ASCII other than '"' and '\\' is copied as it stands, a run at once. */
		while (run < ps->end && *run >= 0x20 && *run < 0x80 && *run != '"' && *run != '\\')
			run++;
		if (run > ps->p) {
			memcpy(ps->out, ps->p, (size_t)(run - ps->p));
			ps->out += run - ps->p;
			ps->p = run;
			continue;
		}
		if (*ps->p == '\\') {
			ps->p++;
			if (escape(ps) < 0) {
				ps->why = "invalid escape";
				return NULL;
			}
			continue;
		}
		if (*ps->p < 0x20) {
			ps->why = "control character in a string";
			return NULL;
		}
		n = utf8_len(ps->p, ps->end);
		if (n == 0) {
			ps->why = "invalid UTF-8";
			return NULL;
		}
		memcpy(ps->out, ps->p, n);
		ps->out += n;
		ps->p += n;
	}
	if (ps->p >= ps->end) {
		ps->why = "unterminated string";
		return NULL;
	}
	ps->p++;
	*ps->out++ = '\0';
	return s;
}

int attrs_parse(const char *text, size_t len, struct attrs *ret, const char **ret_why,
		size_t *ret_offset)
{
	struct attrs a = { 0 };
	struct parser ps;

	/* Every decoded string plus its NUL fits in the bytes of its quoted form. */
	a.buf = malloc(len + 1);
	if (!a.buf) {
		if (ret_why)
			*ret_why = "out of memory";
		return -ENOMEM;
	}
	ps = (struct parser){ .p = (const unsigned char *)text,
			      .end = (const unsigned char *)text + len,
			      .start = (const unsigned char *)text,
			      .out = a.buf };

	skip_ws(&ps);
	if (ps.p >= ps.end || *ps.p != '{') {
		ps.why = "not a JSON object";
		goto fail;
	}
	ps.p++;
	skip_ws(&ps);
	if (ps.p < ps.end && *ps.p == '}') {
		ps.p++;
		goto done;
	}
	for (;;) {
		const char *key, *value;

		skip_ws(&ps);
		key = string(&ps);
		if (!key)
			goto fail;
		skip_ws(&ps);
		if (ps.p >= ps.end || *ps.p != ':') {
			ps.why = "expected ':'";
			goto fail;
		}
		ps.p++;
		skip_ws(&ps);
		if (ps.p < ps.end && *ps.p != '"') {
			ps.why = "a value is not a string";
			goto fail;
		}
		value = string(&ps);
		if (!value)
			goto fail;
		for (size_t i = 0; i < a.n; i++)
			if (!strcmp(a.members[i].key, key)) {
				ps.why = "duplicate key";
				goto fail;
			}
		if (a.n == ATTRS_MAX) {
			ps.why = "too many members";
			goto fail;
		}
		a.members[a.n].key = key;
		a.members[a.n].value = value;
		a.n++;
		skip_ws(&ps);
		if (ps.p < ps.end && *ps.p == ',') {
			ps.p++;
			continue;
		}
		if (ps.p < ps.end && *ps.p == '}') {
			ps.p++;
			break;
		}
		ps.why = "expected ',' or '}'";
		goto fail;
	}
done:
	skip_ws(&ps);
	if (ps.p != ps.end) {
		ps.why = "bytes after the object";
		goto fail;
	}
	a.buf_len = (size_t)(ps.out - a.buf);
	*ret = a;
	return 0;
fail:
	if (ret_why)
		*ret_why = ps.why;
	if (ret_offset)
		*ret_offset = (size_t)(ps.p - ps.start);
	a.buf_len = (size_t)(ps.out - a.buf);
	attrs_release(&a);
	return -EINVAL;
}

void attrs_release(struct attrs *a)
{
	if (!a)
		return;
	if (a->buf) {
		/* Attributes can carry service account tokens. */
		wipe(a->buf, a->buf_len);
		free(a->buf);
	}
	memset(a, 0, sizeof(*a));
}
