/*
 * fuzz_attrs: differential. attrs_parse must accept exactly the inputs that
 * jansson (JSON_REJECT_DUPLICATES) loads as an object whose values are all
 * strings (at most ATTRS_MAX of them), with the same keys and values.
 */
#include <jansson.h>

#include "attrs.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct attrs a = { 0 };
	json_error_t jerr;
	json_t *j = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, &jerr);
	bool want = j && json_is_object(j) && json_object_size(j) <= ATTRS_MAX;
	const char *key;
	json_t *v;
	int r;

	json_object_foreach(j, key, v) if (!json_is_string(v)) want = false;
	r = attrs_parse((const char *)data, size, &a, NULL, NULL);
	if ((r == 0) != want) {
		fprintf(stderr, "attrs_parse %s what jansson %s\n", r == 0 ? "accepted" : "refused",
			want ? "accepts" : "refuses");
		abort();
	}
	if (r == 0) {
		if (a.n != json_object_size(j))
			abort();
		for (size_t i = 0; i < a.n; i++) {
			const char *jv = json_string_value(json_object_get(j, a.members[i].key));

			if (!jv || strcmp(jv, a.members[i].value) != 0)
				abort();
		}
	}
	attrs_release(&a);
	json_decref(j);
	return 0;
}
