/*
 * jsonarray: reads a JSON array of objects as it streams in, one element at
 * a time, so that a DigDir listing of any length is parsed in the memory of
 * its largest element plus what the caller keeps of each.
 *
 *	struct jsonarray ja;
 *	jsonarray_init(&ja, "GET /clients", 1 << 20, on_client, ctx);
 *	jsonarray_feed(&ja, chunk, len, err);   (as often as chunks arrive)
 *	jsonarray_finish(&ja, err);
 *	jsonarray_release(&ja);
 */
#ifndef MCP_JSONARRAY_H
#define MCP_JSONARRAY_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "err.h"

#define JSONARRAY_MAX_DEPTH 64

/*
 * Called once per element, in order; element is borrowed for the call. A
 * negative return stops the parse with that code (fill err to say why).
 */
typedef int (*jsonarray_fn)(void *ctx, json_t *element, size_t index, struct err *err);

/* The parser's state. Fields are private; the struct is public so it can live on the stack. */
struct jsonarray {
	const char *what; /* names the answer in errors: "DigDir GET /clients" */
	size_t max_element;
	jsonarray_fn fn;
	void *ctx;
	int state;
	char *buf; /* the element being read */
	size_t len, cap;
	int depth;
	bool in_string, escape;
	size_t index; /* elements handed out so far */
};

/* max_element bounds one element's bytes. Nothing is allocated until data arrives. */
void jsonarray_init(struct jsonarray *ja, const char *what, size_t max_element, jsonarray_fn fn,
		    void *ctx);

/* Starts over (an HTTP retry); keeps the configuration. */
void jsonarray_reset(struct jsonarray *ja);

/*
 * Parses the next len bytes. Returns 0, or a negative errno with err naming
 * the problem: not an array, an element that is not an object, malformed
 * JSON, an element over max_element bytes, trailing data, or fn's error.
 */
int jsonarray_feed(struct jsonarray *ja, const char *data, size_t len, struct err *err);

/* Checks that the array was complete. Returns 0 or -EPROTO with err filled. */
int jsonarray_finish(struct jsonarray *ja, struct err *err);

/* Frees the element buffer. */
void jsonarray_release(struct jsonarray *ja);

#endif
