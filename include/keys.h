/*
 * keys: deterministic key derivation, kids, JWKs, thumbprints and RS256
 * JWTs. All crypto of the project lives here, on OpenSSL 3 EVP APIs only;
 * keys are an opaque type, so no other module sees OpenSSL. (Which keys a
 * client has registered is keyset's business.)
 *
 * Every node of a cluster derives the same RSA-2048 key for (seed, client_id,
 * epoch), so nodes never need to coordinate which keys are registered at
 * DigDir. The exact derivation is documented in keys.c and README.md and is
 * pinned by test vectors: changing it rotates every client's key everywhere.
 */
#ifndef MCP_KEYS_H
#define MCP_KEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "err.h"
#include "wipe.h" /* secret_free() for the SECRET strings returned here */

#define KEYS_SEED_MIN	    32	 /* bytes */
#define KEYS_SEED_MAX	    4096 /* bytes */
#define KEYS_SEED_ID_LEN    8	 /* hex characters */
#define KEYS_KID_MAX	    128	 /* including the NUL */
#define KEYS_MAX_REGISTERED 5	 /* DigDir's limit of keys per client */
#define KEYS_EPOCH_DEFAULT  (30 * 24 * 3600)
#define KEYS_EPOCH_MIN	    60
#define KEYS_EPOCH_MAX	    (90 * 24 * 3600) /* key e+2 expires 4 epochs ahead: within a year */
#define KEYS_GRANT_LIFETIME 120		     /* Maskinporten's limit on exp - iat, seconds */
#define KEYS_THUMBPRINT_LEN 43		     /* base64url of SHA-256, unpadded */

/*
 * Once in main, before any thread: initialises OpenSSL without an exit
 * handler (gRPC's threads can outlive grpc_shutdown and race it).
 */
void keys_global_init(void);

/*
 * The cluster seed, reduced at load time to its HKDF pseudo-random key.
 * SECRET: holds key material; never log it, wipe it with keys_seed_wipe().
 */
struct keys_seed {
	unsigned char prk[32];
	char id[KEYS_SEED_ID_LEN + 1]; /* public: short hex id derived from the seed */
};

/*
 * Loads the seed from a file: at least KEYS_SEED_MIN bytes, at most
 * KEYS_SEED_MAX, a regular file that is not readable by group or others.
 * Returns 0 and fills ret_seed, or a negative errno with err filled.
 */
int keys_seed_load(const char *path, struct keys_seed *ret_seed, struct err *err);

/* Same from memory (tests, benchmarks). -EINVAL when len is out of bounds. */
int keys_seed_from_bytes(const unsigned char *bytes, size_t len, struct keys_seed *ret_seed);

/* Wipes the seed's key material. */
void keys_seed_wipe(struct keys_seed *seed);

/* Epoch arithmetic. len is the epoch length in seconds; epochs start at the Unix epoch. */
int64_t keys_epoch_at(int64_t unix_time, int64_t len);
int64_t keys_epoch_start(int64_t epoch, int64_t len);
int64_t keys_epoch_end(int64_t epoch, int64_t len); /* == start of epoch + 1 */

/*
 * The kid of our key for (client_id, epoch): "mcp.<seed id>.<epoch>.<client id>"
 * with the client id reduced to [A-Za-z0-9._-]. Tells whose key and which epoch
 * it is without deriving it. Returns 0 or -ENAMETOOLONG.
 */
int keys_kid(const struct keys_seed *seed, const char *client_id, int64_t epoch,
	     char ret_kid[KEYS_KID_MAX]);

/* True when kid is one of ours for this seed and client; then *ret_epoch is its epoch. */
bool keys_kid_is_own(const struct keys_seed *seed, const char *client_id, const char *kid,
		     int64_t *ret_epoch);

/* An RSA key, private or public only. Opaque: OpenSSL stays in keys.c. */
struct keys_key;

/* Frees a key (wiping it, as OpenSSL frees keys). Accepts NULL. */
void keys_key_free(struct keys_key *key);

/*
 * Derives the RSA-2048 key for (seed, client_id, epoch). Deterministic across
 * processes, machines and restarts. Returns a new key (caller frees with
 * keys_key_free) or NULL on failure.
 */
struct keys_key *keys_derive(const struct keys_seed *seed, const char *client_id, int64_t epoch);

/* Public JWK {"use","kty","kid","alg","n","e"}: a new reference, or NULL. */
json_t *keys_jwk_public(const struct keys_key *key, const char *kid);

/*
 * Private JWK as one line of JSON, fields in the order use, kty, kid, alg, n,
 * e, d, p, q, dp, dq, qi. SECRET: caller frees with secret_free().
 */
char *keys_jwk_private(const struct keys_key *key, const char *kid);

/* Loads a private RSA key from a JWK object (the `token` subcommand). New key or NULL. */
struct keys_key *keys_key_from_jwk(const json_t *jwk, struct err *err);

/* Loads a private key from a PEM file (the admin client's key). New key or NULL. */
struct keys_key *keys_key_from_pem_file(const char *path, struct err *err);

/* The x5c array (standard base64 DER, leaf first) of a PEM chain file: a new reference or NULL. */
json_t *keys_x5c_from_pem_file(const char *path, struct err *err);

/* RFC 7638 thumbprint of the public key, base64url without padding. Returns 0 or -errno. */
int keys_thumbprint(const struct keys_key *key, char ret[KEYS_THUMBPRINT_LEN + 1]);

/*
 * Signs an RS256 compact JWS. The header has "alg":"RS256","typ":"JWT" and
 * either "kid" (when kid is non-NULL) or "x5c" (when x5c is non-NULL).
 * SECRET: returns a new string the caller frees with secret_free(), or NULL.
 */
char *keys_jwt_sign(const struct keys_key *key, const char *kid, const json_t *x5c,
		    const json_t *claims);

/*
 * A JWT-bearer grant for Maskinporten: claims aud, iss, scope, iat = now,
 * exp = now + lifetime (<= KEYS_GRANT_LIFETIME), jti random UUIDv4.
 * SECRET: caller frees with secret_free().
 */
char *keys_grant(const struct keys_key *key, const char *kid, const json_t *x5c, const char *iss,
		 const char *aud, const char *scope, int64_t now, int lifetime);

/* Writes a random UUIDv4. Returns 0 or -EIO. */
int keys_uuid(char ret[37]);

/* base64url without padding of len bytes; returns a malloc'd string or NULL. */
char *keys_b64url(const unsigned char *data, size_t len);

/* Decodes unpadded base64url. Returns a malloc'd buffer and *ret_len, or NULL. */
unsigned char *keys_b64url_decode(const char *s, size_t *ret_len);

/* Hex SHA-256 of data, first 2*n characters (n <= 32) into ret (2n+1 bytes). */
void keys_sha256_hex(const void *data, size_t len, size_t n, char *ret);

#endif
