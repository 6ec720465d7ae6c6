/*
 * jsonarray: a streamed JSON array of objects, one element at a time.
 *
 * A small state machine finds where each element ends (tracking strings,
 * escapes and nesting depth); the element's bytes are then parsed by jansson
 * with JSON_REJECT_DUPLICATES and handed to the caller. Only the element
 * being read is kept, never the whole answer. Must never accept what jansson
 * would not: the splitter only decides where an element ends, and jansson
 * judges every byte of it.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "jsonarray.h"

enum {
	BEFORE,	    /* before '[' */
	FIRST,	    /* after '[': an element or ']' */
	NEXT,	    /* after ',': an element */
	AFTER,	    /* after an element: ',' or ']' */
	IN_ELEMENT, /* inside an element */
	DONE,	    /* after ']': only whitespace */
	FAILED,	    /* an error was reported; nothing more is read */
};

static bool is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

void jsonarray_init(struct jsonarray *ja, const char *what, size_t max_element, jsonarray_fn fn,
		    void *ctx)
{
	*ja = (struct jsonarray){
		.what = what, .max_element = max_element, .fn = fn, .ctx = ctx, .state = BEFORE
	};
}

void jsonarray_reset(struct jsonarray *ja)
{
	ja->state = BEFORE;
	ja->len = 0;
	ja->depth = 0;
	ja->in_string = ja->escape = false;
	ja->index = 0;
}

void jsonarray_release(struct jsonarray *ja)
{
	free(ja->buf);
	ja->buf = NULL;
	ja->len = ja->cap = 0;
}

static int fail(struct jsonarray *ja, struct err *err, const char *why)
{
	ja->state = FAILED;
	return err_set(err, ERR_BAD_RESPONSE, EPROTO, "%s: %s", ja->what, why);
}

/* Appends n bytes of the element being read, within max_element. */
static int append(struct jsonarray *ja, const char *data, size_t n, struct err *err)
{
	if (n > ja->max_element - ja->len) {
		ja->state = FAILED;
		return err_set(err, ERR_BAD_RESPONSE, EMSGSIZE,
			       "%s: entry %zu is larger than %zu bytes", ja->what, ja->index,
			       ja->max_element);
	}
	if (ja->len + n > ja->cap) {
		size_t cap = ja->cap ? ja->cap : 1024;
		char *p;

		while (cap < ja->len + n)
			cap *= 2;
		p = realloc(ja->buf, cap);
		if (!p) {
			ja->state = FAILED;
			return err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
		}
		ja->buf = p;
		ja->cap = cap;
	}
	memcpy(ja->buf + ja->len, data, n);
	ja->len += n;
	return 0;
}

/* The element in buf is complete: jansson parses it, the caller gets it. */
static int element_done(struct jsonarray *ja, struct err *err)
{
	json_error_t jerr;
	json_t *v;
	int r;

	v = json_loadb(ja->buf, ja->len, JSON_REJECT_DUPLICATES, &jerr);
	if (!v) {
		ja->state = FAILED;
		return err_set(err, ERR_BAD_RESPONSE, EPROTO, "%s: entry %zu is malformed (%s)",
			       ja->what, ja->index, jerr.text);
	}
	r = ja->fn(ja->ctx, v, ja->index, err);
	json_decref(v);
	if (r < 0) {
		ja->state = FAILED;
		return r;
	}
	ja->index++;
	ja->len = 0;
	ja->state = AFTER;
	return 0;
}

/*
 * Scans an element from data; returns how many bytes belong to it (all of
 * them when it goes on past this chunk) and sets *ret_done when it ended.
 */
static size_t scan(struct jsonarray *ja, const char *data, size_t len, bool *ret_done)
{
	size_t i;

	*ret_done = false;
	for (i = 0; i < len; i++) {
		char c = data[i];

		if (ja->in_string) {
			if (ja->escape)
				ja->escape = false;
			else if (c == '\\')
				ja->escape = true;
			else if (c == '"')
				ja->in_string = false;
		} else if (c == '"') {
			ja->in_string = true;
		} else if (c == '{' || c == '[') {
			ja->depth++;
		} else if (c == '}' || c == ']') {
			if (--ja->depth == 0) {
				*ret_done = true;
				return i + 1;
			}
		}
		if (ja->depth > JSONARRAY_MAX_DEPTH)
			return i + 1;
	}
	return len;
}

int jsonarray_feed(struct jsonarray *ja, const char *data, size_t len, struct err *err)
{
	size_t i = 0;
	int r;

	while (i < len) {
		char c = data[i];
		size_t n;
		bool done;

		switch (ja->state) {
		case FAILED:
			return err_set(err, ERR_BAD_RESPONSE, EPROTO, "%s: unusable answer",
				       ja->what);
		case IN_ELEMENT:
			n = scan(ja, data + i, len - i, &done);
			r = append(ja, data + i, n, err);
			if (r < 0)
				return r;
			i += n;
			if (ja->depth > JSONARRAY_MAX_DEPTH)
				return fail(ja, err, "nested too deeply");
			if (done && (r = element_done(ja, err)) < 0)
				return r;
			continue;
		default:
			break;
		}
		i++;
		if (is_space(c))
			continue;
		switch (ja->state) {
		case BEFORE:
			if (c != '[')
				return fail(ja, err, "answer is not a list");
			ja->state = FIRST;
			break;
		case FIRST:
		case NEXT:
			if (c == ']' && ja->state == FIRST) {
				ja->state = DONE;
				break;
			}
			if (c != '{') {
				ja->state = FAILED;
				return err_set(err, ERR_BAD_RESPONSE, EPROTO,
					       "%s: entry %zu is not an object", ja->what,
					       ja->index);
			}
			ja->state = IN_ELEMENT;
			ja->depth = 1;
			ja->in_string = ja->escape = false;
			r = append(ja, "{", 1, err);
			if (r < 0)
				return r;
			break;
		case AFTER:
			if (c == ',')
				ja->state = NEXT;
			else if (c == ']')
				ja->state = DONE;
			else
				return fail(ja, err, "malformed list (expected ',' or ']')");
			break;
		case DONE:
			return fail(ja, err, "data after the end of the list");
		}
	}
	return 0;
}

int jsonarray_finish(struct jsonarray *ja, struct err *err)
{
	if (ja->state == DONE)
		return 0;
	if (ja->state == FAILED)
		return err_set(err, ERR_BAD_RESPONSE, EPROTO, "%s: unusable answer", ja->what);
	return fail(ja, err, ja->state == BEFORE ? "empty answer, not a list" : "list cut short");
}
