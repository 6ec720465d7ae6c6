/*
 * fuzz_digdir_error: DigDir's error answers. The first byte picks the HTTP
 * status, the rest is the body digdir_status_error turns into a message.
 */
#include "digdir.h"
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const long statuses[] = { 400, 401, 403, 404, 409, 422, 429, 500, 502, 503 };
	struct http_response resp;
	struct err err = { 0 };
	int r;

	if (size < 1)
		return 0;
	resp = fuzz_response(statuses[data[0] % (sizeof(statuses) / sizeof(statuses[0]))],
			     "application/json", data + 1, size - 1);
	r = digdir_status_error("POST /clients", &resp, &err);
	if (r >= 0)
		abort();
	fuzz_check_err(r, &err);
	free(resp.body);
	return 0;
}
