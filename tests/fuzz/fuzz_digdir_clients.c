/*
 * fuzz_digdir_clients: a GET /clients answer. The list is validated as
 * digdir_list_clients does, then the client-picking rule (created times,
 * pinned ids) and the scope comparison run over it.
 */
#include <jansson.h>

#include "digdir.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const want[] = { "nav:test/api", "skatteetaten:testapi" };
	struct err err = { 0 };
	json_t *list, *c;
	size_t matches = 0;
	int r;

	list = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, NULL);
	if (!list)
		return 0;
	r = digdir_check_client_list(list, &err);
	fuzz_check_err(r, &err);
	if (r == 0) {
		c = digdir_pick_client(list, "dev:team-a:payments", NULL, &matches);
		if (c) {
			digdir_scopes_equal(json_object_get(c, "scopes"), want, 2);
			digdir_pick_client(list, "dev:team-a:payments",
					   json_string_value(json_object_get(c, "client_id")),
					   NULL);
		}
		digdir_pick_client(list, "", "16f3f614-1ed5-4c3c-9b1d-5a4d8b2f0c11", NULL);
	}
	json_decref(list);
	return 0;
}
