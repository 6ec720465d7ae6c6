/*
 * fuzz_jwk: keys_pkey_from_jwk on JSON from the input (a MASKINPORTEN_CLIENT_JWK
 * file as the token subcommand reads it). A key that loads is written back as
 * a public and a private JWK.
 */
#include <jansson.h>

#include "fuzz.h"
#include "keys.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct err err = { 0 };
	EVP_PKEY *pkey;
	json_t *jwk, *pub;
	char *priv;

	/* Numbers past 4096 bits make each input slow, not more interesting. */
	if (size > 8192)
		return 0;
	jwk = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, NULL);
	if (!jwk)
		return 0;
	pkey = keys_pkey_from_jwk(jwk, &err);
	if (!pkey && !err.msg[0])
		abort();
	if (pkey) {
		pub = keys_jwk_public(pkey, "k");
		json_decref(pub);
		priv = keys_jwk_private(pkey, "k");
		keys_free_secret(priv);
		EVP_PKEY_free(pkey);
	}
	json_decref(jwk);
	return 0;
}
