/*
 * attrs: the driver's `attributes`, a flat JSON object whose values are all
 * strings, parsed strictly in one pass without building a tree. It accepts
 * exactly what jansson (with JSON_REJECT_DUPLICATES) accepts as such an
 * object - a differential fuzz target holds it to that - and rejects
 * everything else: other value types, duplicate keys, NUL characters,
 * invalid UTF-8 or escapes, trailing bytes.
 */
#ifndef MCP_ATTRS_H
#define MCP_ATTRS_H

#include <stddef.h>

#define ATTRS_MAX 128 /* members; the driver sends about ten */

struct attrs_member {
	const char *key;   /* NUL-terminated, owned by the struct attrs */
	const char *value; /* likewise */
};

struct attrs {
	struct attrs_member members[ATTRS_MAX];
	size_t n;
	char *buf;	/* the decoded strings (SECRET: may hold service account tokens) */
	size_t buf_len; /* bytes of buf in use */
};

/*
 * Parses len bytes of text. Returns 0 with *ret filled (release with
 * attrs_release), or -EINVAL with a short reason and the byte offset in
 * ret_why/ret_offset (either may be NULL). The reason never quotes the input.
 */
int attrs_parse(const char *text, size_t len, struct attrs *ret, const char **ret_why,
		size_t *ret_offset);

void attrs_release(struct attrs *a);

#endif
