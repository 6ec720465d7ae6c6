/*
 * fuzz_mp_token: the token endpoint's answers. The first byte picks the
 * status and admin flag, the rest is the body for mp_parse_token_answer; an
 * accepted access_token goes through mp_token_orgno (the admin token's
 * unverified claims), as the admin token does.
 */
#include <jansson.h>

#include "fuzz.h"
#include "maskinporten.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const long statuses[] = { 200, 200, 200, 400, 401, 403, 500, 503 };
	struct http_response resp;
	struct err err = { 0 };
	json_t *answer = NULL;
	char orgno[32];
	int r;

	if (size < 1)
		return 0;
	resp = fuzz_response(statuses[data[0] % 8], "application/json", data + 1, size - 1);
	r = mp_parse_token_answer(&resp, data[0] & 8, &answer, &err);
	fuzz_check_err(r, &err);
	if (r == 0) {
		mp_token_orgno(json_string_value(json_object_get(answer, "access_token")), orgno,
			       sizeof(orgno));
		json_decref(answer);
	}
	free(resp.body);
	return 0;
}
