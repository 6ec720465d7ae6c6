/*
 * fuzz_digdir_clients: a GET /clients answer as it streams in. The input is
 * fed to the listing parser twice, once whole and once in chunks whose sizes
 * the input's first byte picks; both must agree on the outcome and on what
 * the listing keeps. Then the lookup rule (earliest created, smallest id)
 * runs over it, and every id it returns must be one the listing holds.
 */
#include <jansson.h>

#include "digdir.h"
#include "fuzz.h"
#include "jsonarray.h"

static struct digdir_listing *feed(const uint8_t *data, size_t size, size_t chunk, int *ret_rc)
{
	struct digdir_listing *l = digdir_listing_new();
	struct err err = { 0 };
	struct jsonarray ja;
	int r = 0;

	if (!l)
		abort();
	jsonarray_init(&ja, "fuzz", 4096, digdir_listing_add, l);
	for (size_t at = 0; r == 0 && at < size; at += chunk)
		r = jsonarray_feed(&ja, (const char *)data + at,
				   size - at < chunk ? size - at : chunk, &err);
	if (r == 0)
		r = jsonarray_finish(&ja, &err);
	fuzz_check_err(r, &err);
	jsonarray_release(&ja);
	*ret_rc = r;
	return l;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const descriptions[] = { "dev:team-a:payments", "", "c:ns:app" };
	struct digdir_listing *whole, *chunked;
	int rw, rc;

	if (size < 1)
		return 0;
	whole = feed(data + 1, size - 1, size, &rw);
	chunked = feed(data + 1, size - 1, 1 + data[0] % 13, &rc);
	if ((rw == 0) != (rc == 0) ||
	    (rw == 0 && digdir_listing_count(whole) != digdir_listing_count(chunked)))
		abort();
	for (size_t i = 0; rw == 0 && i < sizeof(descriptions) / sizeof(descriptions[0]); i++) {
		json_t *a = digdir_listing_find(whole, descriptions[i]);
		json_t *b = digdir_listing_find(chunked, descriptions[i]);
		json_t *id;
		size_t j;

		if (!json_equal(a, b))
			abort();
		json_array_foreach(a, j, id)
		{
			if (!digdir_listing_scopes(whole, json_string_value(id)))
				abort();
		}
		json_decref(a);
		json_decref(b);
	}
	digdir_listing_free(whole);
	digdir_listing_free(chunked);
	return 0;
}
