/*
 * keys_evp: the OpenSSL key behind a struct keys_key, for keys.c itself and
 * for the tests that check its keys with OpenSSL. No other module includes
 * this: OpenSSL stays behind the keys module.
 */
#ifndef MCP_KEYS_EVP_H
#define MCP_KEYS_EVP_H

#include <openssl/evp.h>

struct keys_key; /* keys.h */

/* Wraps pkey (owned by the new key from now on, freed on failure). NULL on failure. */
struct keys_key *keys_key_from_evp(EVP_PKEY *pkey);

/* The key's EVP_PKEY, borrowed for as long as the key lives. */
EVP_PKEY *keys_key_evp(const struct keys_key *key);

#endif
