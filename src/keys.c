/*
 * keys: deterministic key derivation, JWKs, RFC 7638 thumbprints and RS256
 * JWTs, on OpenSSL 3 EVP/OSSL_PARAM APIs only. All crypto of the project lives
 * here. It never logs, and every secret intermediate (seed, PRK, candidates,
 * primes, private exponents, serialised private keys, JWTs) is wiped with
 * OPENSSL_cleanse or BN_clear_free before it is released.
 *
 * Key derivation, version 1. Pinned by the test vectors in
 * tests/unit/test_keys.c: changing any step below rotates every client's key
 * on every node. docs/key-derivation.md says the same for operators.
 *
 *  1. PRK = HKDF-Extract(SHA-256, salt = "maskinporten-csi-provider/v1"
 *     (28 ASCII bytes, no NUL), IKM = the seed file's bytes verbatim).
 *     Seed id = lowercase hex of HKDF-Expand(PRK, info = "seed-id" (7 bytes),
 *     L = 4): 8 characters, public, part of every kid.
 *  2. Candidate k (k = 0, 1, 2, ...) of prime X (X = 'p' or 'q') for
 *     (client_id, epoch) = HKDF-Expand(PRK, info, L = 128), where info is the
 *     ASCII string "rsa2048|" client_id "|" epoch "|" X "|" k, epoch and k in
 *     decimal without leading zeros (epoch may carry a leading '-'), no NUL.
 *     client_id is 1..255 bytes. Read the 128 bytes as a big-endian integer
 *     c, then set its two top bits (c |= 0xC0 in the first byte) and its low
 *     bit (c |= 1 in the last byte).
 *  3. Search upward from c: the odd numbers c + 2j, j = 0 .. 4095. A sieve
 *     strikes every j where c + 2j is divisible by an odd prime below 65536,
 *     or where c + 2j = 1 (mod 65537), i.e. gcd(c + 2j - 1, e) != 1. The
 *     survivors are tried in increasing j: the first with exactly 1024 bits
 *     for which BN_check_prime() says "prime" (OpenSSL 3: trial division,
 *     then 64 Miller-Rabin rounds, error probability below 2^-128) is the
 *     prime of candidate k. If the window holds none, candidate k + 1 is used.
 *     (The top two bits stay set, so every prime lies in
 *     [1.5 * 2^1023, 2^1024) and n = p * q has exactly 2048 bits.)
 *  4. p = the prime of the first 'p' candidate that has one. q = the prime of
 *     the first 'q' candidate that has one and for which all the checks
 *     below pass; a failure moves on to the next 'q' candidate:
 *     |p - q| > 2^924 (so p != q), n has 2048 bits, gcd(p - 1, e) =
 *     gcd(q - 1, e) = 1, and d = e^-1 mod lcm(p - 1, q - 1) exists with
 *     d > 2^1024.
 *  5. e = 65537. When p < q the two are swapped, so that p > q. Then
 *     dp = d mod (p - 1), dq = d mod (q - 1), qi = q^-1 mod p, and the key is
 *     built with EVP_PKEY_fromdata from OSSL_PKEY_PARAM_RSA_* parameters.
 *
 * Miller-Rabin uses random bases, but a prime always passes, so the outcome
 * is the same on every machine unless a composite passes (probability below
 * 2^-128 per test).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/kdf.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include "keys.h"
#include "keys_evp.h"

#define HKDF_SALT      "maskinporten-csi-provider/v1"
#define SEED_ID_INFO   "seed-id"
#define PRIME_BITS     1024
#define CAND_BYTES     (PRIME_BITS / 8)
#define SIEVE_LIMIT    65536 /* odd primes below this are sieved out */
#define SIEVE_WINDOW   4096  /* odd numbers searched upward from each candidate */
#define MAX_CANDIDATES 64    /* per prime; a window holds no prime with probability ~1e-5 */
#define RSA_E	       65537
#define CLIENT_ID_MAX  255
#define JWK_BITS_MIN   2048
#define JWK_BITS_MAX   16384

/* Odd primes below SIEVE_LIMIT, computed once. */
static uint16_t small_primes[6600];
static size_t n_small_primes;
static pthread_once_t small_primes_once = PTHREAD_ONCE_INIT;

/* Drains OpenSSL's whole error queue into err after a prefix; returns -code. */
static int ssl_err(struct err *err, enum err_kind kind, int code, const char *what)
{
	char reason[256] = "no detail from OpenSSL";
	unsigned long e;

	/* Keep the first error: it is the root cause; the rest are context. */
	e = ERR_get_error();
	if (e)
		ERR_error_string_n(e, reason, sizeof(reason));
	ERR_clear_error();
	return err_set(err, kind, code, "%s (%s)", what, reason);
}

void keys_global_init(void)
{
	OPENSSL_init_crypto(OPENSSL_INIT_NO_ATEXIT, NULL);
}

/* ---- encodings ---------------------------------------------------------- */

static const char b64url_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

char *keys_b64url(const unsigned char *data, size_t len)
{
	size_t olen = len / 3 * 4 + (len % 3 ? len % 3 + 1 : 0);
	char *out, *o;
	size_t i;

	if (len > SIZE_MAX / 2)
		return NULL;
	out = malloc(olen + 1);
	if (!out)
		return NULL;
	o = out;
	for (i = 0; i + 2 < len; i += 3) {
		uint32_t v = (uint32_t)data[i] << 16 | (uint32_t)data[i + 1] << 8 | data[i + 2];
		*o++ = b64url_alphabet[v >> 18 & 63];
		*o++ = b64url_alphabet[v >> 12 & 63];
		*o++ = b64url_alphabet[v >> 6 & 63];
		*o++ = b64url_alphabet[v & 63];
	}
	if (len - i == 1) {
		uint32_t v = (uint32_t)data[i] << 16;
		*o++ = b64url_alphabet[v >> 18 & 63];
		*o++ = b64url_alphabet[v >> 12 & 63];
	} else if (len - i == 2) {
		uint32_t v = (uint32_t)data[i] << 16 | (uint32_t)data[i + 1] << 8;
		*o++ = b64url_alphabet[v >> 18 & 63];
		*o++ = b64url_alphabet[v >> 12 & 63];
		*o++ = b64url_alphabet[v >> 6 & 63];
	}
	*o = '\0';
	return out;
}

static int b64url_value(char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '-')
		return 62;
	if (c == '_')
		return 63;
	return -1;
}

unsigned char *keys_b64url_decode(const char *s, size_t *ret_len)
{
	size_t len, olen, i, n = 0;
	unsigned char *out;
	uint32_t acc = 0;
	int bits = 0;

	if (!s)
		return NULL;
	len = strlen(s);
	/* A lone trailing character carries fewer than 8 bits: never valid. */
	if (len % 4 == 1)
		return NULL;
	olen = len / 4 * 3 + (len % 4 ? len % 4 - 1 : 0);
	out = malloc(olen ? olen : 1);
	if (!out)
		return NULL;
	for (i = 0; i < len; i++) {
		int v = b64url_value(s[i]);

		if (v < 0)
			goto bad;
		acc = acc << 6 | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[n++] = (unsigned char)(acc >> bits);
			acc &= (1u << bits) - 1;
		}
	}
	/* Canonical encodings leave the unused low bits zero. */
	if (acc != 0)
		goto bad;
	*ret_len = n;
	return out;
bad:
	OPENSSL_cleanse(out, olen ? olen : 1);
	free(out);
	return NULL;
}

void keys_sha256_hex(const void *data, size_t len, size_t n, char *ret)
{
	static const char hex[] = "0123456789abcdef";
	unsigned char md[32];
	unsigned int mdlen = 0;

	if (n > 32)
		n = 32;
	if (EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL) != 1) {
		ERR_clear_error();
		memset(md, 0, sizeof(md));
	}
	for (size_t i = 0; i < n; i++) {
		ret[2 * i] = hex[md[i] >> 4];
		ret[2 * i + 1] = hex[md[i] & 15];
	}
	ret[2 * n] = '\0';
}

/* ---- seed ----------------------------------------------------------------- */

/* One HKDF-SHA256 call; mode is EVP_KDF_HKDF_MODE_EXTRACT_ONLY or _EXPAND_ONLY. */
static int hkdf(int mode, const unsigned char *key, size_t keylen, const char *salt,
		const void *info, size_t infolen, unsigned char *out, size_t outlen)
{
	OSSL_PARAM params[6], *p = params;
	EVP_KDF_CTX *kctx = NULL;
	EVP_KDF *kdf = NULL;
	int r = -EIO;

	kdf = EVP_KDF_fetch(NULL, OSSL_KDF_NAME_HKDF, NULL);
	if (!kdf)
		goto out;
	kctx = EVP_KDF_CTX_new(kdf);
	if (!kctx)
		goto out;
	*p++ = OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode);
	*p++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)"SHA256", 0);
	*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)key, keylen);
	if (salt)
		*p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt,
							 strlen(salt));
	if (info)
		*p++ =
		    OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)info, infolen);
	*p = OSSL_PARAM_construct_end();
	if (EVP_KDF_derive(kctx, out, outlen, params) != 1)
		goto out;
	r = 0;
out:
	if (r < 0)
		ERR_clear_error();
	EVP_KDF_CTX_free(kctx);
	EVP_KDF_free(kdf);
	return r;
}

int keys_seed_from_bytes(const unsigned char *bytes, size_t len, struct keys_seed *ret_seed)
{
	static const char hex[] = "0123456789abcdef";
	unsigned char id[KEYS_SEED_ID_LEN / 2];
	struct keys_seed s;
	int r = -EIO;

	if (!bytes || len < KEYS_SEED_MIN || len > KEYS_SEED_MAX)
		return -EINVAL;
	if (hkdf(EVP_KDF_HKDF_MODE_EXTRACT_ONLY, bytes, len, HKDF_SALT, NULL, 0, s.prk,
		 sizeof(s.prk)) < 0)
		goto out;
	if (hkdf(EVP_KDF_HKDF_MODE_EXPAND_ONLY, s.prk, sizeof(s.prk), NULL, SEED_ID_INFO,
		 strlen(SEED_ID_INFO), id, sizeof(id)) < 0)
		goto out;
	for (size_t i = 0; i < sizeof(id); i++) {
		s.id[2 * i] = hex[id[i] >> 4];
		s.id[2 * i + 1] = hex[id[i] & 15];
	}
	s.id[KEYS_SEED_ID_LEN] = '\0';
	*ret_seed = s;
	r = 0;
out:
	OPENSSL_cleanse(&s, sizeof(s));
	return r;
}

int keys_seed_load(const char *path, struct keys_seed *ret_seed, struct err *err)
{
	unsigned char buf[KEYS_SEED_MAX + 1];
	struct stat st;
	size_t len = 0;
	int fd = -1, r, e;

	/* Symlinks are followed: Kubernetes projects Secret keys as ..data/ links. */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0) {
		e = errno;
		r = err_set(err, ERR_INVALID, e, "seed file %s: cannot open: %s", path,
			    strerror(e));
		goto out;
	}
	if (fstat(fd, &st) < 0) {
		e = errno;
		r = err_set(err, ERR_INVALID, e, "seed file %s: cannot stat: %s", path,
			    strerror(e));
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		r = err_set(err, ERR_INVALID, EINVAL, "seed file %s is not a regular file", path);
		goto out;
	}
	if (st.st_mode & (S_IRWXG | S_IRWXO)) {
		r = err_set(err, ERR_PERMISSION, EPERM,
			    "seed file %s has mode %04o: it must not be readable or writable by "
			    "group or others (chmod 0400 or 0600, or defaultMode: 0400 on the "
			    "Secret volume)",
			    path, (unsigned)(st.st_mode & 07777));
		goto out;
	}
	for (;;) {
		ssize_t n = read(fd, buf + len, sizeof(buf) - len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			e = errno;
			r = err_set(err, ERR_INVALID, e, "seed file %s: cannot read: %s", path,
				    strerror(e));
			goto out;
		}
		if (n == 0)
			break;
		len += (size_t)n;
		if (len == sizeof(buf))
			break;
	}
	if (len < KEYS_SEED_MIN) {
		r = err_set(err, ERR_INVALID, EINVAL,
			    "seed file %s is too short: %zu bytes, the seed must be at least %d "
			    "random bytes (e.g. head -c 64 /dev/urandom)",
			    path, len, KEYS_SEED_MIN);
		goto out;
	}
	if (len > KEYS_SEED_MAX) {
		r = err_set(err, ERR_INVALID, EINVAL,
			    "seed file %s is too long: more than %d bytes", path, KEYS_SEED_MAX);
		goto out;
	}
	r = keys_seed_from_bytes(buf, len, ret_seed);
	if (r < 0)
		r = err_set(err, ERR_INTERNAL, EIO, "seed file %s: HKDF failed", path);
out:
	OPENSSL_cleanse(buf, sizeof(buf));
	if (fd >= 0)
		close(fd);
	return r;
}

void keys_seed_wipe(struct keys_seed *seed)
{
	if (seed)
		OPENSSL_cleanse(seed, sizeof(*seed));
}

/* ---- epochs and kids ------------------------------------------------------ */

int64_t keys_epoch_at(int64_t unix_time, int64_t len)
{
	int64_t q;

	if (len <= 0)
		return 0;
	/* Floor division: times before 1970 fall in negative epochs. */
	q = unix_time / len;
	if (unix_time % len < 0)
		q--;
	return q;
}

int64_t keys_epoch_start(int64_t epoch, int64_t len)
{
	int64_t t;

	if (len <= 0)
		return 0;
	/* Saturate rather than overflow for absurd epochs. */
	if (__builtin_mul_overflow(epoch, len, &t))
		return epoch < 0 ? INT64_MIN : INT64_MAX;
	return t;
}

int64_t keys_epoch_end(int64_t epoch, int64_t len)
{
	if (epoch == INT64_MAX)
		return INT64_MAX;
	return keys_epoch_start(epoch + 1, len);
}

static bool kid_char_ok(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	       c == '.' || c == '_' || c == '-';
}

int keys_kid(const struct keys_seed *seed, const char *client_id, int64_t epoch,
	     char ret_kid[KEYS_KID_MAX])
{
	char kid[KEYS_KID_MAX];
	size_t n;
	int len;

	len = snprintf(kid, sizeof(kid), "mcp.%s.%" PRId64 ".", seed->id, epoch);
	if (len < 0 || (size_t)len >= sizeof(kid))
		return -ENAMETOOLONG;
	n = (size_t)len;
	/* Characters DigDir would refuse become '_'. */
	for (const char *c = client_id; *c; c++) {
		if (n + 1 >= sizeof(kid))
			return -ENAMETOOLONG;
		kid[n++] = kid_char_ok(*c) ? *c : '_';
	}
	kid[n] = '\0';
	memcpy(ret_kid, kid, n + 1);
	return 0;
}

bool keys_kid_is_own(const struct keys_seed *seed, const char *client_id, const char *kid,
		     int64_t *ret_epoch)
{
	char prefix[KEYS_SEED_ID_LEN + 8], again[KEYS_KID_MAX];
	const char *s;
	char *end = NULL;
	long long v;
	int n;

	if (!kid)
		return false;
	n = snprintf(prefix, sizeof(prefix), "mcp.%s.", seed->id);
	if (n < 0 || strncmp(kid, prefix, (size_t)n) != 0)
		return false;
	s = kid + n;
	if (!(*s == '-' || (*s >= '0' && *s <= '9')))
		return false;
	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno || *end != '.')
		return false;
	/* Exactly the kid we would write: rejects "+1", "007", other clients. */
	if (keys_kid(seed, client_id, (int64_t)v, again) < 0 || strcmp(again, kid) != 0)
		return false;
	if (ret_epoch)
		*ret_epoch = (int64_t)v;
	return true;
}

/* ---- RSA parts ------------------------------------------------------------ */

/* The eight RSA numbers; secret ones are BN_secure_new and cleared on free. */
struct rsa_parts {
	BIGNUM *n, *e, *d, *p, *q, *dp, *dq, *qi;
};

static void parts_free(struct rsa_parts *k)
{
	BN_free(k->n);
	BN_free(k->e);
	BN_clear_free(k->d);
	BN_clear_free(k->p);
	BN_clear_free(k->q);
	BN_clear_free(k->dp);
	BN_clear_free(k->dq);
	BN_clear_free(k->qi);
	memset(k, 0, sizeof(*k));
}

static int parts_alloc(struct rsa_parts *k)
{
	memset(k, 0, sizeof(*k));
	k->n = BN_new();
	k->e = BN_new();
	k->d = BN_secure_new();
	k->p = BN_secure_new();
	k->q = BN_secure_new();
	k->dp = BN_secure_new();
	k->dq = BN_secure_new();
	k->qi = BN_secure_new();
	if (!k->n || !k->e || !k->d || !k->p || !k->q || !k->dp || !k->dq || !k->qi) {
		parts_free(k);
		return -ENOMEM;
	}
	return 0;
}

/* Builds a key pair from all eight numbers. New key or NULL. */
static EVP_PKEY *pkey_from_parts(const struct rsa_parts *k)
{
	OSSL_PARAM_BLD *bld = NULL;
	OSSL_PARAM *params = NULL;
	EVP_PKEY_CTX *ctx = NULL;
	EVP_PKEY *pkey = NULL;

	bld = OSSL_PARAM_BLD_new();
	if (!bld)
		goto out;
	/* Secure BIGNUMs land in a block OSSL_PARAM_free clears. */
	if (!OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, k->n) ||
	    !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, k->e) ||
	    !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_D, k->d) ||
	    !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_FACTOR1, k->p) ||
	    !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_FACTOR2, k->q) ||
	    !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_EXPONENT1, k->dp) ||
	    !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_EXPONENT2, k->dq) ||
	    !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_COEFFICIENT1, k->qi))
		goto out;
	params = OSSL_PARAM_BLD_to_param(bld);
	if (!params)
		goto out;
	ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
	if (!ctx || EVP_PKEY_fromdata_init(ctx) != 1 ||
	    EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_KEYPAIR, params) != 1) {
		EVP_PKEY_free(pkey);
		pkey = NULL;
	}
out:
	EVP_PKEY_CTX_free(ctx);
	OSSL_PARAM_free(params);
	OSSL_PARAM_BLD_free(bld);
	return pkey;
}

/* Reads n and e (and, when priv, the private numbers) out of pkey. */
static int parts_from_pkey(EVP_PKEY *pkey, bool priv, struct rsa_parts *k)
{
	memset(k, 0, sizeof(*k));
	if (!pkey || !EVP_PKEY_is_a(pkey, "RSA"))
		return -EINVAL;
	if (!EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_N, &k->n) ||
	    !EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_E, &k->e))
		goto fail;
	if (!priv)
		return 0;
	if (!EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_D, &k->d) ||
	    !EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_FACTOR1, &k->p) ||
	    !EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_FACTOR2, &k->q) ||
	    !EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_EXPONENT1, &k->dp) ||
	    !EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_EXPONENT2, &k->dq) ||
	    !EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_COEFFICIENT1, &k->qi))
		goto fail;
	return 0;
fail:
	ERR_clear_error();
	parts_free(k);
	return -EINVAL;
}

/* base64url of a BIGNUM's minimal big-endian bytes; the temporary is wiped. */
static char *bn_b64url(const BIGNUM *bn)
{
	unsigned char *buf;
	char *s;
	int len = BN_num_bytes(bn);

	if (len <= 0) /* zero is one 0x00 byte, which JWK has no use for */
		return NULL;
	buf = malloc((size_t)len);
	if (!buf)
		return NULL;
	BN_bn2bin(bn, buf);
	s = keys_b64url(buf, (size_t)len);
	OPENSSL_cleanse(buf, (size_t)len);
	free(buf);
	return s;
}

/* ---- derivation ----------------------------------------------------------- */

static void small_primes_init(void)
{
	static unsigned char composite[SIEVE_LIMIT];

	for (uint32_t i = 3; i < SIEVE_LIMIT; i += 2) {
		if (composite[i])
			continue;
		small_primes[n_small_primes++] = (uint16_t)i;
		for (uint32_t j = i * i; j < SIEVE_LIMIT; j += 2 * i)
			composite[j] = 1;
	}
}

/* Candidate k of prime `which` (step 2 of the header comment) into x. */
static int candidate(const struct keys_seed *seed, const char *client_id, int64_t epoch, char which,
		     unsigned k, BIGNUM *x)
{
	unsigned char buf[CAND_BYTES];
	char info[CLIENT_ID_MAX + 64];
	int n, r = -EIO;

	n = snprintf(info, sizeof(info), "rsa2048|%s|%" PRId64 "|%c|%u", client_id, epoch, which,
		     k);
	if (n < 0 || (size_t)n >= sizeof(info))
		return -ENAMETOOLONG;
	if (hkdf(EVP_KDF_HKDF_MODE_EXPAND_ONLY, seed->prk, sizeof(seed->prk), NULL, info, (size_t)n,
		 buf, sizeof(buf)) < 0)
		goto out;
	buf[0] |= 0xC0;
	buf[CAND_BYTES - 1] |= 1;
	if (!BN_bin2bn(buf, sizeof(buf), x))
		goto out;
	r = 0;
out:
	OPENSSL_cleanse(buf, sizeof(buf));
	return r;
}

/* Marks j in [0, SIEVE_WINDOW) where x + 2j is struck (step 3). x is odd. */
static int sieve(const BIGNUM *x, unsigned char struck[SIEVE_WINDOW])
{
	size_t i = 0;

	memset(struck, 0, SIEVE_WINDOW);
	/* One BN_mod_word per group of primes whose product fits a word. */
	while (i < n_small_primes) {
		BN_ULONG prod = 1, rem;
		size_t first = i;

		while (i < n_small_primes && prod <= (BN_ULONG)-1 / small_primes[i])
			prod *= small_primes[i++];
		rem = BN_mod_word(x, prod);
		if (rem == (BN_ULONG)-1)
			return -EIO;
		for (size_t g = first; g < i; g++) {
			uint64_t p = small_primes[g], r = rem % p;
			/* x + 2j = 0 (mod p)  <=>  j = (p - r) * (p + 1) / 2 (mod p). */
			uint64_t j = (p - r) % p * ((p + 1) / 2) % p;

			for (; j < SIEVE_WINDOW; j += p)
				struck[j] = 1;
		}
	}
	{
		uint64_t p = RSA_E, r = BN_mod_word(x, RSA_E);
		/* x + 2j = 1 (mod e)  <=>  j = (1 - r) * (e + 1) / 2 (mod e). */
		uint64_t j = (1 + p - r) % p * ((p + 1) / 2) % p;

		if (r == (uint64_t)(BN_ULONG)-1)
			return -EIO;
		if (j < SIEVE_WINDOW)
			struck[j] = 1;
	}
	return 0;
}

/*
 * Finds the prime of the first candidate >= *k of stream `which` (step 3).
 * On success ret holds the prime and *k the candidate it came from.
 */
static int find_prime(const struct keys_seed *seed, const char *client_id, int64_t epoch,
		      char which, unsigned *k, BIGNUM *ret, BN_CTX *ctx)
{
	unsigned char struck[SIEVE_WINDOW];
	BIGNUM *x, *y;
	int r = -EIO;

	BN_CTX_start(ctx);
	x = BN_CTX_get(ctx);
	y = BN_CTX_get(ctx);
	if (!y)
		goto out;
	for (; *k < MAX_CANDIDATES; (*k)++) {
		r = candidate(seed, client_id, epoch, which, *k, x);
		if (r < 0)
			goto out;
		r = sieve(x, struck);
		if (r < 0)
			goto out;
		for (unsigned j = 0; j < SIEVE_WINDOW; j++) {
			int pr;

			if (struck[j])
				continue;
			if (!BN_copy(y, x) || !BN_add_word(y, 2 * (BN_ULONG)j)) {
				r = -EIO;
				goto out;
			}
			/* Past 2^1024 the rest of the window is too long as well. */
			if (BN_num_bits(y) != PRIME_BITS)
				break;
			pr = BN_check_prime(y, ctx, NULL);
			if (pr < 0) {
				r = -EIO;
				goto out;
			}
			if (pr == 1) {
				r = BN_copy(ret, y) ? 0 : -EIO;
				goto out;
			}
		}
	}
	r = -ERANGE;
out:
	BN_CTX_end(ctx);
	return r;
}

/*
 * Step 4's checks on a (p, q) pair; on success fills k->n and k->d.
 * Returns 1 when the pair is good, 0 when q must be skipped, -errno on failure.
 */
static int check_pair(struct rsa_parts *k, BN_CTX *ctx)
{
	BIGNUM *p1, *q1, *g, *lcm, *t;
	int r = -EIO;

	BN_CTX_start(ctx);
	p1 = BN_CTX_get(ctx);
	q1 = BN_CTX_get(ctx);
	g = BN_CTX_get(ctx);
	lcm = BN_CTX_get(ctx);
	t = BN_CTX_get(ctx);
	if (!t)
		goto out;
	/* |p - q| > 2^(1024 - 100). */
	if (!BN_sub(t, k->p, k->q))
		goto out;
	BN_set_negative(t, 0);
	if (BN_num_bits(t) <= PRIME_BITS - 100) {
		r = 0;
		goto out;
	}
	if (!BN_mul(k->n, k->p, k->q, ctx))
		goto out;
	if (BN_num_bits(k->n) != 2 * PRIME_BITS) {
		r = 0;
		goto out;
	}
	if (!BN_sub(p1, k->p, BN_value_one()) || !BN_sub(q1, k->q, BN_value_one()))
		goto out;
	/* gcd(p - 1, e) = gcd(q - 1, e) = 1; the sieve should have made sure. */
	if (!BN_gcd(g, p1, k->e, ctx) || !BN_is_one(g) || !BN_gcd(g, q1, k->e, ctx) ||
	    !BN_is_one(g)) {
		r = 0;
		goto out;
	}
	/* d = e^-1 mod lcm(p - 1, q - 1), in constant time on the secret modulus. */
	if (!BN_gcd(g, p1, q1, ctx) || !BN_mul(t, p1, q1, ctx) || !BN_div(lcm, NULL, t, g, ctx))
		goto out;
	BN_set_flags(lcm, BN_FLG_CONSTTIME);
	if (!BN_mod_inverse(k->d, k->e, lcm, ctx)) {
		ERR_clear_error();
		r = 0;
		goto out;
	}
	/* d > 2^1024. */
	BN_zero(t);
	if (!BN_set_bit(t, PRIME_BITS))
		goto out;
	r = BN_cmp(k->d, t) > 0 ? 1 : 0;
out:
	BN_CTX_end(ctx);
	return r;
}

static EVP_PKEY *evp_derive(const struct keys_seed *seed, const char *client_id, int64_t epoch)
{
	static const size_t client_max = CLIENT_ID_MAX;
	struct rsa_parts k = { 0 };
	EVP_PKEY *pkey = NULL;
	BN_CTX *ctx = NULL;
	BIGNUM *p1, *q1;
	unsigned kp = 0, kq = 0;
	int r;

	if (!seed || !client_id || !*client_id || strlen(client_id) > client_max)
		return NULL;
	pthread_once(&small_primes_once, small_primes_init);
	ctx = BN_CTX_secure_new();
	if (!ctx || parts_alloc(&k) < 0 || !BN_set_word(k.e, RSA_E))
		goto out;
	if (find_prime(seed, client_id, epoch, 'p', &kp, k.p, ctx) < 0)
		goto out;
	for (;; kq++) {
		if (find_prime(seed, client_id, epoch, 'q', &kq, k.q, ctx) < 0)
			goto out;
		r = check_pair(&k, ctx);
		if (r < 0)
			goto out;
		if (r == 1)
			break;
	}
	if (BN_cmp(k.p, k.q) < 0)
		BN_swap(k.p, k.q);

	/* CRT parameters (step 5). */
	BN_CTX_start(ctx);
	p1 = BN_CTX_get(ctx);
	q1 = BN_CTX_get(ctx);
	r = p1 && q1 && BN_sub(p1, k.p, BN_value_one()) && BN_sub(q1, k.q, BN_value_one()) &&
	    BN_mod(k.dp, k.d, p1, ctx) && BN_mod(k.dq, k.d, q1, ctx);
	if (r) {
		BN_set_flags(k.p, BN_FLG_CONSTTIME);
		r = BN_mod_inverse(k.qi, k.q, k.p, ctx) != NULL;
	}
	BN_CTX_end(ctx);
	if (!r)
		goto out;
	pkey = pkey_from_parts(&k);
out:
	if (!pkey)
		ERR_clear_error();
	parts_free(&k);
	BN_CTX_free(ctx);
	return pkey;
}

/* ---- JWK ------------------------------------------------------------------ */

static json_t *evp_jwk_public(EVP_PKEY *pkey, const char *kid)
{
	struct rsa_parts k;
	char *n = NULL, *e = NULL;
	json_t *jwk = NULL;

	if (!kid || parts_from_pkey(pkey, false, &k) < 0)
		return NULL;
	n = bn_b64url(k.n);
	e = bn_b64url(k.e);
	if (n && e)
		jwk = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "use", "sig", "kty", "RSA", "kid",
				kid, "alg", "RS256", "n", n, "e", e);
	free(n);
	free(e);
	parts_free(&k);
	return jwk;
}

static char *evp_jwk_private(EVP_PKEY *pkey, const char *kid)
{
	static const char fmt[] =
	    "{\"use\":\"sig\",\"kty\":\"RSA\",\"kid\":%s,\"alg\":\"RS256\","
	    "\"n\":\"%s\",\"e\":\"%s\",\"d\":\"%s\",\"p\":\"%s\",\"q\":\"%s\","
	    "\"dp\":\"%s\",\"dq\":\"%s\",\"qi\":\"%s\"}";
	char *v[8] = { NULL }, *kid_json = NULL, *out = NULL;
	json_t *kid_str = NULL;
	struct rsa_parts k;
	int len;

	if (!kid || parts_from_pkey(pkey, true, &k) < 0)
		return NULL;
	/* Built by hand, not with jansson, so that every copy of a secret is wiped. */
	v[0] = bn_b64url(k.n);
	v[1] = bn_b64url(k.e);
	v[2] = bn_b64url(k.d);
	v[3] = bn_b64url(k.p);
	v[4] = bn_b64url(k.q);
	v[5] = bn_b64url(k.dp);
	v[6] = bn_b64url(k.dq);
	v[7] = bn_b64url(k.qi);
	for (int i = 0; i < 8; i++)
		if (!v[i])
			goto out;
	kid_str = json_string(kid);
	kid_json = kid_str ? json_dumps(kid_str, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
	if (!kid_json)
		goto out;
	len = snprintf(NULL, 0, fmt, kid_json, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]);
	if (len < 0)
		goto out;
	out = malloc((size_t)len + 1);
	if (out)
		snprintf(out, (size_t)len + 1, fmt, kid_json, v[0], v[1], v[2], v[3], v[4], v[5],
			 v[6], v[7]);
out:
	for (int i = 0; i < 8; i++)
		secret_free(v[i]);
	free(kid_json);
	json_decref(kid_str);
	parts_free(&k);
	return out;
}

/* Reads member name of jwk as a positive BIGNUM into bn. */
static int jwk_bn(const json_t *jwk, const char *name, BIGNUM *bn, struct err *err)
{
	const char *s = json_string_value(json_object_get(jwk, name));
	unsigned char *buf;
	size_t len = 0;
	int r = 0;

	if (!s)
		return err_set(err, ERR_INVALID, EINVAL,
			       "JWK has no string member \"%s\" (a private RSA JWK needs n, e, d, "
			       "p, q, dp, dq and qi)",
			       name);
	buf = keys_b64url_decode(s, &len);
	if (!buf || len == 0 || len > JWK_BITS_MAX / 8) {
		r = err_set(err, ERR_INVALID, EINVAL,
			    "JWK member \"%s\" is not unpadded base64url of a big-endian integer",
			    name);
		goto out;
	}
	if (!BN_bin2bn(buf, (int)len, bn))
		r = err_set(err, ERR_INTERNAL, ENOMEM, "JWK member \"%s\": out of memory", name);
out:
	if (buf) {
		OPENSSL_cleanse(buf, len);
		free(buf);
	}
	return r;
}

/* Checks that the eight numbers form one RSA key; names the first failure. */
static int check_consistent(const struct rsa_parts *k, struct err *err)
{
	BIGNUM *t, *p1, *q1, *g, *lcm;
	const char *bad = NULL;
	BN_CTX *ctx = NULL;
	int bits, r = -EIO;

	bits = BN_num_bits(k->n);
	if (bits < JWK_BITS_MIN || bits > JWK_BITS_MAX)
		return err_set(err, ERR_INVALID, EINVAL,
			       "JWK modulus has %d bits, expected %d to %d", bits, JWK_BITS_MIN,
			       JWK_BITS_MAX);
	if (!BN_is_odd(k->e) || BN_num_bits(k->e) < 2 || BN_num_bits(k->e) > 64)
		return err_set(err, ERR_INVALID, EINVAL,
			       "JWK exponent e is not a usable RSA public exponent");
	if (BN_cmp(k->p, BN_value_one()) <= 0 || BN_cmp(k->q, BN_value_one()) <= 0)
		return err_set(err, ERR_INVALID, EINVAL,
			       "JWK is not a consistent RSA key: p and q must exceed 1");
	ctx = BN_CTX_secure_new();
	if (!ctx)
		goto fail;
	BN_CTX_start(ctx);
	t = BN_CTX_get(ctx);
	p1 = BN_CTX_get(ctx);
	q1 = BN_CTX_get(ctx);
	g = BN_CTX_get(ctx);
	lcm = BN_CTX_get(ctx);
	if (!lcm || !BN_mul(t, k->p, k->q, ctx))
		goto fail;
	if (BN_cmp(t, k->n) != 0) {
		bad = "p * q != n";
		goto out;
	}
	if (!BN_sub(p1, k->p, BN_value_one()) || !BN_sub(q1, k->q, BN_value_one()) ||
	    !BN_gcd(g, p1, q1, ctx) || !BN_mul(t, p1, q1, ctx) || !BN_div(lcm, NULL, t, g, ctx))
		goto fail;
	/* d * e = 1 mod lcm(p-1, q-1) also accepts a d computed mod phi(n). */
	if (!BN_mod_mul(t, k->d, k->e, lcm, ctx))
		goto fail;
	if (!BN_is_one(t)) {
		bad = "d * e != 1 mod lcm(p - 1, q - 1)";
		goto out;
	}
	if (!BN_mod(t, k->d, p1, ctx))
		goto fail;
	if (BN_cmp(t, k->dp) != 0) {
		bad = "dp != d mod (p - 1)";
		goto out;
	}
	if (!BN_mod(t, k->d, q1, ctx))
		goto fail;
	if (BN_cmp(t, k->dq) != 0) {
		bad = "dq != d mod (q - 1)";
		goto out;
	}
	if (!BN_mod_mul(t, k->qi, k->q, k->p, ctx))
		goto fail;
	if (!BN_is_one(t) || BN_cmp(k->qi, k->p) >= 0) {
		bad = "qi != q^-1 mod p";
		goto out;
	}
	r = 0;
	goto out;
fail:
	r = ssl_err(err, ERR_INTERNAL, EIO, "checking the JWK failed");
out:
	if (bad)
		r = err_set(err, ERR_INVALID, EINVAL, "JWK is not a consistent RSA key: %s", bad);
	if (ctx)
		BN_CTX_end(ctx);
	BN_CTX_free(ctx);
	return r;
}

static EVP_PKEY *evp_from_jwk(const json_t *jwk, struct err *err)
{
	static const char *const names[8] = { "n", "e", "d", "p", "q", "dp", "dq", "qi" };
	struct rsa_parts k;
	EVP_PKEY *pkey = NULL;
	const char *kty;
	BIGNUM **bns[8];

	if (!json_is_object(jwk)) {
		err_set(err, ERR_INVALID, EINVAL, "JWK is not a JSON object");
		return NULL;
	}
	kty = json_string_value(json_object_get(jwk, "kty"));
	if (!kty || strcmp(kty, "RSA") != 0) {
		err_set(err, ERR_INVALID, EINVAL, "JWK member \"kty\" must be \"RSA\"");
		return NULL;
	}
	if (parts_alloc(&k) < 0) {
		err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
		return NULL;
	}
	bns[0] = &k.n, bns[1] = &k.e, bns[2] = &k.d, bns[3] = &k.p;
	bns[4] = &k.q, bns[5] = &k.dp, bns[6] = &k.dq, bns[7] = &k.qi;
	for (int i = 0; i < 8; i++)
		if (jwk_bn(jwk, names[i], *bns[i], err) < 0)
			goto out;
	if (check_consistent(&k, err) < 0)
		goto out;
	pkey = pkey_from_parts(&k);
	if (!pkey)
		ssl_err(err, ERR_INVALID, EINVAL, "OpenSSL refused the JWK's key");
out:
	parts_free(&k);
	return pkey;
}

static int evp_thumbprint(EVP_PKEY *pkey, char ret[KEYS_THUMBPRINT_LEN + 1])
{
	unsigned char md[32];
	unsigned int mdlen = 0;
	char *n = NULL, *e = NULL, *json = NULL, *tp = NULL;
	struct rsa_parts k;
	int len, r = -ENOMEM;

	if (parts_from_pkey(pkey, false, &k) < 0)
		return -EINVAL;
	n = bn_b64url(k.n);
	e = bn_b64url(k.e);
	if (!n || !e)
		goto out;
	/* RFC 7638: the required members in lexicographic order, no whitespace. */
	len = snprintf(NULL, 0, "{\"e\":\"%s\",\"kty\":\"RSA\",\"n\":\"%s\"}", e, n);
	if (len < 0)
		goto out;
	json = malloc((size_t)len + 1);
	if (!json)
		goto out;
	snprintf(json, (size_t)len + 1, "{\"e\":\"%s\",\"kty\":\"RSA\",\"n\":\"%s\"}", e, n);
	r = -EIO;
	if (EVP_Digest(json, (size_t)len, md, &mdlen, EVP_sha256(), NULL) != 1) {
		ERR_clear_error();
		goto out;
	}
	tp = keys_b64url(md, mdlen);
	if (!tp || strlen(tp) != KEYS_THUMBPRINT_LEN)
		goto out;
	memcpy(ret, tp, KEYS_THUMBPRINT_LEN + 1);
	r = 0;
out:
	free(tp);
	free(json);
	free(n);
	free(e);
	parts_free(&k);
	return r;
}

/* ---- PEM ------------------------------------------------------------------ */

/* Refuses encrypted PEM instead of prompting on a terminal. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
	return -1;
}

static EVP_PKEY *evp_from_pem_file(const char *path, struct err *err)
{
	EVP_PKEY *pkey = NULL;
	BIO *bio;
	int e;

	bio = BIO_new_file(path, "r");
	if (!bio) {
		e = errno;
		ERR_clear_error();
		err_set(err, ERR_INVALID, e, "cannot open key file %s: %s", path, strerror(e));
		return NULL;
	}
	pkey = PEM_read_bio_PrivateKey_ex(bio, NULL, no_passphrase, NULL, NULL, NULL);
	if (!pkey) {
		ssl_err(err, ERR_INVALID, EINVAL, "no unencrypted PEM private key");
		err_prefix(err, "key file %s: ", path);
	}
	BIO_free(bio);
	return pkey;
}

json_t *keys_x5c_from_pem_file(const char *path, struct err *err)
{
	json_t *x5c = NULL, *out = NULL;
	unsigned char *der = NULL;
	char *b64 = NULL;
	X509 *cert = NULL;
	unsigned long e;
	BIO *bio;
	int len;

	bio = BIO_new_file(path, "r");
	if (!bio) {
		int code = errno;

		ERR_clear_error();
		err_set(err, ERR_INVALID, code, "cannot open certificate file %s: %s", path,
			strerror(code));
		return NULL;
	}
	x5c = json_array();
	if (!x5c)
		goto nomem;
	/* The file's order is the chain's order: leaf first. */
	while ((cert = PEM_read_bio_X509(bio, NULL, no_passphrase, NULL))) {
		len = i2d_X509(cert, &der);
		if (len <= 0)
			goto ssl_fail;
		b64 = malloc(((size_t)len + 2) / 3 * 4 + 1);
		if (!b64)
			goto nomem;
		EVP_EncodeBlock((unsigned char *)b64, der, len);
		if (json_array_append_new(x5c, json_string(b64)) < 0)
			goto nomem;
		free(b64);
		b64 = NULL;
		OPENSSL_free(der);
		der = NULL;
		X509_free(cert);
		cert = NULL;
	}
	/* Running out of PEM blocks is the normal end; anything else is an error. */
	e = ERR_peek_last_error();
	if (e && !(ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE))
		goto ssl_fail;
	ERR_clear_error();
	if (json_array_size(x5c) == 0) {
		err_set(err, ERR_INVALID, EINVAL, "no PEM certificate in %s", path);
		goto out;
	}
	out = x5c;
	x5c = NULL;
	goto out;
nomem:
	err_set(err, ERR_INTERNAL, ENOMEM, "reading %s: out of memory", path);
	goto out;
ssl_fail:
	ssl_err(err, ERR_INVALID, EINVAL, "cannot read the certificate chain");
	err_prefix(err, "%s: ", path);
out:
	free(b64);
	OPENSSL_free(der);
	X509_free(cert);
	json_decref(x5c);
	BIO_free(bio);
	return out;
}

/* ---- JWT ------------------------------------------------------------------ */

/* base64url of a JSON value's compact serialisation. */
static char *json_b64url(const json_t *v)
{
	char *s = json_dumps(v, JSON_COMPACT);
	char *b;

	if (!s)
		return NULL;
	b = keys_b64url((const unsigned char *)s, strlen(s));
	free(s);
	return b;
}

static char *evp_jwt_sign(EVP_PKEY *pkey, const char *kid, const json_t *x5c, const json_t *claims)
{
	char *h64 = NULL, *c64 = NULL, *s64 = NULL, *tbs = NULL, *jwt = NULL;
	unsigned char *sig = NULL;
	EVP_MD_CTX *md = NULL;
	json_t *header = NULL;
	size_t siglen = 0, tbslen;

	if (!pkey || !EVP_PKEY_is_a(pkey, "RSA") || !json_is_object(claims))
		return NULL;
	header = json_pack("{s:s, s:s}", "alg", "RS256", "typ", "JWT");
	if (!header)
		goto out;
	if (kid && json_object_set_new(header, "kid", json_string(kid)) < 0)
		goto out;
	if (x5c && json_object_set_new(header, "x5c", json_deep_copy(x5c)) < 0)
		goto out;
	h64 = json_b64url(header);
	c64 = json_b64url(claims);
	if (!h64 || !c64)
		goto out;
	tbslen = strlen(h64) + 1 + strlen(c64);
	tbs = malloc(tbslen + 1);
	if (!tbs)
		goto out;
	snprintf(tbs, tbslen + 1, "%s.%s", h64, c64);
	md = EVP_MD_CTX_new();
	if (!md || EVP_DigestSignInit_ex(md, NULL, "SHA256", NULL, NULL, pkey, NULL) != 1 ||
	    EVP_DigestSign(md, NULL, &siglen, (unsigned char *)tbs, tbslen) != 1)
		goto out;
	sig = malloc(siglen);
	if (!sig || EVP_DigestSign(md, sig, &siglen, (unsigned char *)tbs, tbslen) != 1)
		goto out;
	s64 = keys_b64url(sig, siglen);
	if (!s64)
		goto out;
	jwt = malloc(tbslen + 1 + strlen(s64) + 1);
	if (jwt)
		snprintf(jwt, tbslen + 1 + strlen(s64) + 1, "%s.%s", tbs, s64);
out:
	if (!jwt)
		ERR_clear_error();
	if (sig) {
		OPENSSL_cleanse(sig, siglen);
		free(sig);
	}
	secret_free(s64);
	free(tbs);
	free(h64);
	free(c64);
	json_decref(header);
	EVP_MD_CTX_free(md);
	return jwt;
}

int keys_uuid(char ret[37])
{
	unsigned char b[16];

	if (RAND_bytes(b, sizeof(b)) != 1) {
		ERR_clear_error();
		return -EIO;
	}
	b[6] = (unsigned char)((b[6] & 0x0F) | 0x40); /* version 4 */
	b[8] = (unsigned char)((b[8] & 0x3F) | 0x80); /* RFC 4122 variant */
	snprintf(ret, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
		 b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12],
		 b[13], b[14], b[15]);
	return 0;
}

char *keys_grant(const struct keys_key *key, const char *kid, const json_t *x5c, const char *iss,
		 const char *aud, const char *scope, int64_t now, int lifetime)
{
	json_t *claims = NULL;
	char jti[37];
	char *jwt = NULL;

	if (!iss || !aud || lifetime <= 0 || lifetime > KEYS_GRANT_LIFETIME)
		return NULL;
	if (keys_uuid(jti) < 0)
		return NULL;
	claims = json_pack("{s:s, s:s, s:I, s:I, s:s}", "aud", aud, "iss", iss, "iat",
			   (json_int_t)now, "exp", (json_int_t)(now + lifetime), "jti", jti);
	if (!claims)
		return NULL;
	if (scope && json_object_set_new(claims, "scope", json_string(scope)) < 0)
		goto out;
	jwt = keys_jwt_sign(key, kid, x5c, claims);
out:
	json_decref(claims);
	return jwt;
}

/* ---- the opaque key ---------------------------------------------------------- */

/* An RSA key. OpenSSL's EVP_PKEY stays behind this type, in this file. */
struct keys_key {
	EVP_PKEY *pkey;
};

struct keys_key *keys_key_from_evp(EVP_PKEY *pkey)
{
	struct keys_key *key;

	if (!pkey)
		return NULL;
	key = malloc(sizeof(*key));
	if (!key) {
		EVP_PKEY_free(pkey);
		return NULL;
	}
	key->pkey = pkey;
	return key;
}

EVP_PKEY *keys_key_evp(const struct keys_key *key)
{
	return key ? key->pkey : NULL;
}

void keys_key_free(struct keys_key *key)
{
	if (!key)
		return;
	EVP_PKEY_free(key->pkey);
	free(key);
}

struct keys_key *keys_derive(const struct keys_seed *seed, const char *client_id, int64_t epoch)
{
	return keys_key_from_evp(evp_derive(seed, client_id, epoch));
}

json_t *keys_jwk_public(const struct keys_key *key, const char *kid)
{
	return key ? evp_jwk_public(key->pkey, kid) : NULL;
}

char *keys_jwk_private(const struct keys_key *key, const char *kid)
{
	return key ? evp_jwk_private(key->pkey, kid) : NULL;
}

struct keys_key *keys_key_from_jwk(const json_t *jwk, struct err *err)
{
	EVP_PKEY *pkey = evp_from_jwk(jwk, err);

	return pkey ? keys_key_from_evp(pkey) : NULL;
}

struct keys_key *keys_key_from_pem_file(const char *path, struct err *err)
{
	EVP_PKEY *pkey = evp_from_pem_file(path, err);

	return pkey ? keys_key_from_evp(pkey) : NULL;
}

int keys_thumbprint(const struct keys_key *key, char ret[KEYS_THUMBPRINT_LEN + 1])
{
	return key ? evp_thumbprint(key->pkey, ret) : -EINVAL;
}

char *keys_jwt_sign(const struct keys_key *key, const char *kid, const json_t *x5c,
		    const json_t *claims)
{
	return key ? evp_jwt_sign(key->pkey, kid, x5c, claims) : NULL;
}
