/*
 * fuzz_digdir_scopes: the two scope access lists. The input's first line is
 * the GET /scopes/access/all answer, the rest the GET /scopes/all one.
 */
#include <jansson.h>

#include "digdir.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *nl = memchr(data, '\n', size);
	json_t *access = NULL, *open = NULL, *set = NULL;
	struct err err = { 0 };
	size_t first;
	int r;

	if (!nl)
		return 0;
	first = (size_t)(nl - data);
	access = json_loadb((const char *)data, first, JSON_REJECT_DUPLICATES, NULL);
	open = json_loadb((const char *)nl + 1, size - first - 1, JSON_REJECT_DUPLICATES, NULL);
	if (access && open) {
		r = digdir_parse_consumable(access, open, "889640782", &set, &err);
		fuzz_check_err(r, &err);
		if (r == 0 && !json_is_object(set))
			abort();
	}
	json_decref(set);
	json_decref(access);
	json_decref(open);
	return 0;
}
