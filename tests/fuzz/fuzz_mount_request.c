/*
 * fuzz_mount_request: mount_parse on arbitrary bytes, as they arrive in a
 * Mount call; a request that parses is answered with mount_build_response.
 */
#include "fuzz.h"
#include "mount.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const struct mount_content c = {
		.client_id = "16f3f614-1ed5-4c3c-9b1d-5a4d8b2f0c11",
		.jwk_private = "{\"kty\":\"RSA\"}",
		.kid = "dev:team-a:payments:e1",
		.well_known_url =
		    "https://test.maskinporten.no/.well-known/oauth-authorization-server",
		.issuer = "https://test.maskinporten.no/",
		.jwks_uri = "https://test.maskinporten.no/jwk",
		.token_endpoint = "https://test.maskinporten.no/token",
	};
	struct mount_request req = { 0 };
	struct err err = { 0 };
	uint8_t *payload = NULL;
	size_t len = 0;
	int r;

	r = mount_parse(data, size, "dev", &req, &err);
	fuzz_check_err(r, &err);
	if (r == 0) {
		if (mount_build_response(&req, &c, true, &payload, &len) == 0)
			free(payload);
		mount_request_free(&req);
	}
	return 0;
}
