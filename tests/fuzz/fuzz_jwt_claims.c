/*
 * fuzz_jwt_claims: the claims part of an access token. The input is the
 * claims JSON; it is base64url-encoded into header.claims.signature for
 * mp_token_orgno, and the input itself goes through keys_b64url_decode,
 * which must agree with keys_b64url on what it accepts.
 */
#include "fuzz.h"
#include "keys.h"
#include "maskinporten.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char orgno[32], *claims, *token, *s, *again;
	unsigned char *raw;
	size_t n, rawlen = 0;

	claims = keys_b64url(data, size);
	if (!claims)
		return 0;
	n = strlen(claims) + sizeof("eyJhbGciOiJSUzI1NiJ9..c2ln");
	token = malloc(n);
	if (!token)
		abort();
	snprintf(token, n, "eyJhbGciOiJSUzI1NiJ9.%s.c2ln", claims);
	mp_token_orgno(token, orgno, sizeof(orgno));
	if (strnlen(orgno, sizeof(orgno)) == sizeof(orgno))
		abort();

	/* Round trip: what decodes encodes back to the same text. */
	s = fuzz_str(data, size);
	raw = keys_b64url_decode(s, &rawlen);
	if (raw) {
		again = keys_b64url(raw, rawlen);
		if (!again || strcmp(again, s) != 0)
			abort();
		free(again);
		free(raw);
	}
	free(s);
	free(token);
	free(claims);
	return 0;
}
