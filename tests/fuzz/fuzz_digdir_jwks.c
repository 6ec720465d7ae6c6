/* fuzz_digdir_jwks: a GET or POST /clients/{id}/jwks answer through digdir_parse_jwks. */
#include <jansson.h>

#include "digdir.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct err err = { 0 };
	json_t *doc, *keys = NULL;
	int r;

	doc = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, NULL);
	if (!doc)
		return 0;
	r = digdir_parse_jwks(doc, "GET /clients/{id}/jwks", &keys, &err);
	fuzz_check_err(r, &err);
	if (r == 0 && !json_is_array(keys))
		abort();
	json_decref(keys);
	json_decref(doc);
	return 0;
}
