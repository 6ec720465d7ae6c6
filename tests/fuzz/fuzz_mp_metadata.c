/* fuzz_mp_metadata: Maskinporten's metadata document through mp_parse_metadata. */
#include "fuzz.h"
#include "maskinporten.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char url[] =
	    "https://test.maskinporten.no/.well-known/oauth-authorization-server";
	struct mp_metadata meta = { 0 };
	struct http_response resp;
	struct err err = { 0 };
	int r;

	resp = fuzz_response(200, "application/json; charset=utf-8", data, size);
	r = mp_parse_metadata(url, &resp, false, &meta, &err);
	fuzz_check_err(r, &err);
	if (r == 0) {
		if (!meta.issuer[0] || !meta.token_endpoint[0] || !meta.jwks_uri[0])
			abort();
		free((char *)meta.issuer);
		free((char *)meta.token_endpoint);
		free((char *)meta.jwks_uri);
	}
	free(resp.body);
	return 0;
}
