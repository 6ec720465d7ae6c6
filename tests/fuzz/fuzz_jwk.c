/*
 * fuzz_jwk: keys_key_from_jwk on JSON from the input (a MASKINPORTEN_CLIENT_JWK
 * file as the token subcommand reads it). A key that loads is written back as
 * a public and a private JWK.
 */
#include <jansson.h>

#include "fuzz.h"
#include "keys.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct err err = { 0 };
	struct keys_key *key;
	json_t *jwk, *pub;
	char *priv;

	/* Numbers past 4096 bits make each input slow, not more interesting. */
	if (size > 8192)
		return 0;
	jwk = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, NULL);
	if (!jwk)
		return 0;
	key = keys_key_from_jwk(jwk, &err);
	if (!key && !err.msg[0])
		abort();
	if (key) {
		pub = keys_jwk_public(key, "k");
		json_decref(pub);
		priv = keys_jwk_private(key, "k");
		secret_free(priv);
		keys_key_free(key);
	}
	json_decref(jwk);
	return 0;
}
