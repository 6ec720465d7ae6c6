/*
 * Unit tests of the keys module: fixed derivation vectors (any change to the
 * derivation must fail here), seed loading rules, epochs, kids, base64url,
 * JWKs and their thumbprints, JWTs and PEM loading. The key schedule is
 * tested in test_keyset.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>

#include "keys.h"
#include "keys_evp.h" /* the tests check the keys with OpenSSL itself */

/* ---- fixtures ------------------------------------------------------------- */

static struct keys_seed seed;	    /* bytes 0x00..0x1f */
static struct keys_seed other_seed; /* bytes 0x00..0x3f */
static struct keys_key *vec_key;    /* the first vector's key */
static EVP_PKEY *vec_evp;	    /* its OpenSSL key */
static char tmpdir[] = "/tmp/test_keys.XXXXXX";

static int setup(void **state)
{
	unsigned char b[64];

	for (int i = 0; i < 64; i++)
		b[i] = (unsigned char)i;
	if (keys_seed_from_bytes(b, 32, &seed) < 0 || keys_seed_from_bytes(b, 64, &other_seed) < 0)
		return -1;
	vec_key = keys_derive(&seed, "test-client", 20000);
	if (!vec_key || !mkdtemp(tmpdir))
		return -1;
	vec_evp = keys_key_evp(vec_key);
	return 0;
}

static int teardown(void **state)
{
	keys_key_free(vec_key);
	keys_seed_wipe(&seed);
	keys_seed_wipe(&other_seed);
	/* Only the files this test made, in its own mkdtemp directory. */
	for (const char *f = "abcdefghij"; *f; f++) {
		char path[300];

		snprintf(path, sizeof(path), "%s/%c", tmpdir, *f);
		unlink(path);
		rmdir(path);
	}
	rmdir(tmpdir);
	return 0;
}

static void sha256_n(EVP_PKEY *pkey, char hex[65])
{
	unsigned char buf[512];
	BIGNUM *n = NULL;
	int len;

	assert_int_equal(EVP_PKEY_get_bn_param(pkey, OSSL_PKEY_PARAM_RSA_N, &n), 1);
	len = BN_bn2bin(n, buf);
	keys_sha256_hex(buf, (size_t)len, 32, hex);
	BN_free(n);
}

/* ---- derivation vectors --------------------------------------------------- */

static const struct {
	bool seed64;
	const char *client;
	int64_t epoch;
	const char *n_sha256;
	const char *kid;
} vectors[] = {
	{ false, "test-client", 20000,
	  "9747100d220211ff17509671649448d6cb4ba10214899ee59ffce3e52cb662cf",
	  "mcp.3502207f.20000.test-client" },
	{ false, "test-client", 20001,
	  "4d7e80f7fc430da2b89b27cc25cbda2dbbfc12661aef8940ab8a025031ac1bcf",
	  "mcp.3502207f.20001.test-client" },
	{ false, "0e85a5ec-5f0c-4d0e-9b1a-2f1c1c7a3e11", 0,
	  "a5cfd99e12676df6efd95b9b1121ebc823104684e309c38f435322132bd4918c",
	  "mcp.3502207f.0.0e85a5ec-5f0c-4d0e-9b1a-2f1c1c7a3e11" },
	{ false, "weird id/with:chars", -3,
	  "ccb1c28592071598e1c335405311819f725d02c63ba51fff142556f05491d6e4",
	  "mcp.3502207f.-3.weird_id_with_chars" },
	{ true, "test-client", 20000,
	  "b55da629c843a2e818ece60eaa7cab312e8cbd2bbdcc70f87e12f3f9fea162b3",
	  "mcp.02ac5d9a.20000.test-client" },
};

static void test_seed_ids(void **state)
{
	unsigned char b[32] = { 0 };
	struct keys_seed s;

	assert_string_equal(seed.id, "3502207f");
	assert_string_equal(other_seed.id, "02ac5d9a");
	assert_int_equal(keys_seed_from_bytes(b, 31, &s), -EINVAL);
	assert_int_equal(keys_seed_from_bytes(NULL, 32, &s), -EINVAL);
	assert_int_equal(keys_seed_from_bytes(b, KEYS_SEED_MAX + 1, &s), -EINVAL);
}

static void test_derive_vectors(void **state)
{
	for (size_t i = 0; i < sizeof(vectors) / sizeof(vectors[0]); i++) {
		const struct keys_seed *s = vectors[i].seed64 ? &other_seed : &seed;
		char hex[65], kid[KEYS_KID_MAX];
		struct keys_key *k = keys_derive(s, vectors[i].client, vectors[i].epoch);

		assert_non_null(k);
		assert_int_equal(EVP_PKEY_get_bits(keys_key_evp(k)), 2048);
		sha256_n(keys_key_evp(k), hex);
		assert_string_equal(hex, vectors[i].n_sha256);
		assert_int_equal(keys_kid(s, vectors[i].client, vectors[i].epoch, kid), 0);
		assert_string_equal(kid, vectors[i].kid);
		keys_key_free(k);
	}
}

/* Everything the derivation promises about the numbers themselves. */
static void test_derive_properties(void **state)
{
	BIGNUM *n = NULL, *e = NULL, *d = NULL, *p = NULL, *q = NULL, *dp = NULL, *dq = NULL,
	       *qi = NULL, *t = BN_new(), *p1 = BN_new(), *q1 = BN_new(), *g = BN_new(),
	       *lcm = BN_new(), *bound = BN_new();
	BN_CTX *ctx = BN_CTX_new();
	EVP_PKEY_CTX *pctx;

	assert_int_equal(EVP_PKEY_get_bn_param(vec_evp, OSSL_PKEY_PARAM_RSA_N, &n), 1);
	assert_int_equal(EVP_PKEY_get_bn_param(vec_evp, OSSL_PKEY_PARAM_RSA_E, &e), 1);
	assert_int_equal(EVP_PKEY_get_bn_param(vec_evp, OSSL_PKEY_PARAM_RSA_D, &d), 1);
	assert_int_equal(EVP_PKEY_get_bn_param(vec_evp, OSSL_PKEY_PARAM_RSA_FACTOR1, &p), 1);
	assert_int_equal(EVP_PKEY_get_bn_param(vec_evp, OSSL_PKEY_PARAM_RSA_FACTOR2, &q), 1);
	assert_int_equal(EVP_PKEY_get_bn_param(vec_evp, OSSL_PKEY_PARAM_RSA_EXPONENT1, &dp), 1);
	assert_int_equal(EVP_PKEY_get_bn_param(vec_evp, OSSL_PKEY_PARAM_RSA_EXPONENT2, &dq), 1);
	assert_int_equal(EVP_PKEY_get_bn_param(vec_evp, OSSL_PKEY_PARAM_RSA_COEFFICIENT1, &qi), 1);
	assert_true(BN_is_word(e, 65537));
	assert_int_equal(BN_num_bits(n), 2048);
	assert_int_equal(BN_num_bits(p), 1024);
	assert_int_equal(BN_num_bits(q), 1024);
	assert_true(BN_is_bit_set(p, 1022) && BN_is_bit_set(q, 1022));
	assert_true(BN_cmp(p, q) > 0);
	assert_int_equal(BN_check_prime(p, ctx, NULL), 1);
	assert_int_equal(BN_check_prime(q, ctx, NULL), 1);
	BN_mul(t, p, q, ctx);
	assert_int_equal(BN_cmp(t, n), 0);
	BN_sub(t, p, q);
	assert_true(BN_num_bits(t) > 924);
	BN_sub(p1, p, BN_value_one());
	BN_sub(q1, q, BN_value_one());
	BN_gcd(g, p1, e, ctx);
	assert_true(BN_is_one(g));
	BN_gcd(g, q1, e, ctx);
	assert_true(BN_is_one(g));
	BN_gcd(g, p1, q1, ctx);
	BN_mul(t, p1, q1, ctx);
	BN_div(lcm, NULL, t, g, ctx);
	assert_true(BN_cmp(d, lcm) < 0);
	BN_mod_mul(t, d, e, lcm, ctx);
	assert_true(BN_is_one(t));
	BN_set_bit(bound, 1024);
	assert_true(BN_cmp(d, bound) > 0);
	BN_mod(t, d, p1, ctx);
	assert_int_equal(BN_cmp(t, dp), 0);
	BN_mod(t, d, q1, ctx);
	assert_int_equal(BN_cmp(t, dq), 0);
	BN_mod_mul(t, qi, q, p, ctx);
	assert_true(BN_is_one(t));
	/* OpenSSL's own full check agrees. */
	pctx = EVP_PKEY_CTX_new_from_pkey(NULL, vec_evp, NULL);
	assert_int_equal(EVP_PKEY_check(pctx), 1);
	EVP_PKEY_CTX_free(pctx);

	BN_free(n), BN_free(e), BN_free(d), BN_free(p), BN_free(q), BN_free(dp), BN_free(dq);
	BN_free(qi), BN_free(t), BN_free(p1), BN_free(q1), BN_free(g), BN_free(lcm);
	BN_free(bound);
	BN_CTX_free(ctx);
}

static void test_derive_bad_input(void **state)
{
	char long_id[300];

	memset(long_id, 'a', sizeof(long_id) - 1);
	long_id[sizeof(long_id) - 1] = '\0';
	assert_null(keys_derive(&seed, "", 1));
	assert_null(keys_derive(&seed, NULL, 1));
	assert_null(keys_derive(NULL, "c", 1));
	assert_null(keys_derive(&seed, long_id, 1));
}

/* ---- seed files ----------------------------------------------------------- */

static const char *write_file(char name, const void *data, size_t len, mode_t mode)
{
	static char path[300];
	int fd;

	snprintf(path, sizeof(path), "%s/%c", tmpdir, name);
	unlink(path);
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, data, len), (ssize_t)len);
	assert_int_equal(fchmod(fd, mode), 0);
	close(fd);
	return path;
}

static void test_seed_load(void **state)
{
	unsigned char b[KEYS_SEED_MAX + 1];
	struct keys_seed s;
	struct err err;
	const char *path;
	char dir[300];

	for (size_t i = 0; i < sizeof(b); i++)
		b[i] = (unsigned char)i;
	path = write_file('a', b, 32, 0600);
	assert_int_equal(keys_seed_load(path, &s, &err), 0);
	assert_string_equal(s.id, seed.id);
	assert_memory_equal(s.prk, seed.prk, sizeof(s.prk));
	path = write_file('a', b, 32, 0400);
	assert_int_equal(keys_seed_load(path, &s, &err), 0);

	path = write_file('b', b, 31, 0600);
	assert_int_equal(keys_seed_load(path, &s, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "too short"));

	path = write_file('c', b, 32, 0604);
	assert_true(keys_seed_load(path, &s, &err) < 0);
	assert_non_null(strstr(err.msg, "must not be readable"));
	path = write_file('c', b, 32, 0640);
	assert_true(keys_seed_load(path, &s, &err) < 0);
	assert_non_null(strstr(err.msg, "group or others"));

	path = write_file('d', b, sizeof(b), 0600);
	assert_true(keys_seed_load(path, &s, &err) < 0);
	assert_non_null(strstr(err.msg, "too long"));

	snprintf(dir, sizeof(dir), "%s/e", tmpdir);
	assert_int_equal(mkdir(dir, 0700), 0);
	assert_true(keys_seed_load(dir, &s, &err) < 0);
	assert_non_null(strstr(err.msg, "not a regular file"));

	snprintf(dir, sizeof(dir), "%s/missing", tmpdir);
	assert_int_equal(keys_seed_load(dir, &s, &err), -ENOENT);
	assert_non_null(strstr(err.msg, "cannot open"));
}

/* ---- epochs and kids ------------------------------------------------------ */

static void test_epochs(void **state)
{
	assert_int_equal(keys_epoch_at(0, 100), 0);
	assert_int_equal(keys_epoch_at(99, 100), 0);
	assert_int_equal(keys_epoch_at(100, 100), 1);
	assert_int_equal(keys_epoch_at(-1, 100), -1);
	assert_int_equal(keys_epoch_at(-100, 100), -1);
	assert_int_equal(keys_epoch_at(-101, 100), -2);
	assert_int_equal(keys_epoch_at(INT64_MIN, 100), INT64_MIN / 100 - 1);
	assert_int_equal(keys_epoch_start(-2, 100), -200);
	assert_int_equal(keys_epoch_end(-2, 100), -100);
	assert_int_equal(keys_epoch_start(5, 100), 500);
	assert_int_equal(keys_epoch_end(5, 100), 600);
	assert_int_equal(keys_epoch_start(INT64_MAX, 100), INT64_MAX);
	/* 2024-01-01T00:00:00Z with 30-day epochs. */
	assert_int_equal(keys_epoch_at(1704067200, KEYS_EPOCH_DEFAULT), 657);
	for (int64_t t = -1000; t <= 1000; t += 7) {
		int64_t e = keys_epoch_at(t, 60);

		assert_true(keys_epoch_start(e, 60) <= t && t < keys_epoch_end(e, 60));
	}
}

static void test_kids(void **state)
{
	char kid[KEYS_KID_MAX], long_id[200];
	int64_t e = 0;

	assert_int_equal(keys_kid(&seed, "abc", 7, kid), 0);
	assert_string_equal(kid, "mcp.3502207f.7.abc");
	assert_true(keys_kid_is_own(&seed, "abc", kid, &e));
	assert_int_equal(e, 7);
	assert_int_equal(keys_kid(&seed, "abc", -7, kid), 0);
	assert_true(keys_kid_is_own(&seed, "abc", kid, &e));
	assert_int_equal(e, -7);

	assert_false(keys_kid_is_own(&other_seed, "abc", "mcp.3502207f.7.abc", NULL));
	assert_false(keys_kid_is_own(&seed, "abd", "mcp.3502207f.7.abc", NULL));
	assert_false(keys_kid_is_own(&seed, "abc", "mcp.3502207f.07.abc", NULL));
	assert_false(keys_kid_is_own(&seed, "abc", "mcp.3502207f.+7.abc", NULL));
	assert_false(keys_kid_is_own(&seed, "abc", "mcp.3502207f.-0.abc", NULL));
	assert_false(keys_kid_is_own(&seed, "abc", "mcp.3502207f..abc", NULL));
	assert_false(keys_kid_is_own(&seed, "abc", "mcp.3502207f.7.abcd", NULL));
	assert_false(keys_kid_is_own(&seed, "abc", "some-other-tool-key", NULL));
	assert_false(keys_kid_is_own(&seed, "abc", NULL, NULL));

	/* Reduced to [A-Za-z0-9._-]. */
	assert_int_equal(keys_kid(&seed, "a b/c:d\xc3\xa6", 1, kid), 0);
	assert_string_equal(kid, "mcp.3502207f.1.a_b_c_d__");

	/* At most 127 characters. */
	memset(long_id, 'x', sizeof(long_id) - 1);
	long_id[sizeof(long_id) - 1] = '\0';
	assert_int_equal(keys_kid(&seed, long_id, 1, kid), -ENAMETOOLONG);
	long_id[127 - strlen("mcp.3502207f.1.")] = '\0';
	assert_int_equal(keys_kid(&seed, long_id, 1, kid), 0);
	assert_int_equal(strlen(kid), 127);
	long_id[127 - strlen("mcp.3502207f.1.")] = 'x';
	long_id[128 - strlen("mcp.3502207f.1.")] = '\0';
	assert_int_equal(keys_kid(&seed, long_id, 1, kid), -ENAMETOOLONG);
}

/* ---- encodings ------------------------------------------------------------ */

static void test_b64url(void **state)
{
	/* RFC 4648 section 10 vectors, unpadded. */
	static const char *const plain[] = { "", "f", "fo", "foo", "foob", "fooba", "foobar" };
	static const char *const enc[] = {
		"", "Zg", "Zm8", "Zm9v", "Zm9vYg", "Zm9vYmE", "Zm9vYmFy"
	};
	static const unsigned char bin[] = { 0xfb, 0xff, 0xbf };
	unsigned char *d;
	size_t len;
	char *s;

	for (size_t i = 0; i < 7; i++) {
		s = keys_b64url((const unsigned char *)plain[i], strlen(plain[i]));
		assert_string_equal(s, enc[i]);
		free(s);
		d = keys_b64url_decode(enc[i], &len);
		assert_non_null(d);
		assert_int_equal(len, strlen(plain[i]));
		assert_memory_equal(d, plain[i], len);
		free(d);
	}
	s = keys_b64url(bin, sizeof(bin));
	assert_string_equal(s, "-_-_");
	free(s);
	assert_null(keys_b64url_decode("Zg==", &len));	 /* padding */
	assert_null(keys_b64url_decode("Zm9v+/", &len)); /* standard alphabet */
	assert_null(keys_b64url_decode("Zm9vY", &len));	 /* length 1 mod 4 */
	assert_null(keys_b64url_decode("Zh", &len));	 /* non-zero unused bits */
	assert_null(keys_b64url_decode("Zm 9v", &len));
	assert_null(keys_b64url_decode(NULL, &len));
	/* Debian 12's cjose 0.6.2.1 aborts the process on these (README, Development). */
	assert_null(keys_b64url_decode("A=", &len));
	assert_null(keys_b64url_decode("6=", &len));
}

/* ---- JWKs ----------------------------------------------------------------- */

static void test_thumbprint_rfc7638(void **state)
{
	static const char n64[] =
	    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6"
	    "tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ"
	    "5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbIS"
	    "D08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-k"
	    "EgU8awapJzKnqDKgw";
	char tp[KEYS_THUMBPRINT_LEN + 1];
	OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
	EVP_PKEY *pkey = NULL;
	struct keys_key *key;
	OSSL_PARAM *params;
	unsigned char *nb;
	BIGNUM *n, *e = BN_new();
	size_t len;

	nb = keys_b64url_decode(n64, &len);
	assert_non_null(nb);
	n = BN_bin2bn(nb, (int)len, NULL);
	BN_set_word(e, 65537);
	OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n);
	OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e);
	params = OSSL_PARAM_BLD_to_param(bld);
	assert_int_equal(EVP_PKEY_fromdata_init(ctx), 1);
	assert_int_equal(EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params), 1);
	key = keys_key_from_evp(pkey);
	assert_non_null(key);
	assert_int_equal(keys_thumbprint(key, tp), 0);
	assert_string_equal(tp, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");

	keys_key_free(key);
	OSSL_PARAM_free(params);
	OSSL_PARAM_BLD_free(bld);
	EVP_PKEY_CTX_free(ctx);
	BN_free(n);
	BN_free(e);
	free(nb);
}

static void test_jwk_public(void **state)
{
	static const char *const order[] = { "use", "kty", "kid", "alg", "n", "e" };
	json_t *jwk = keys_jwk_public(vec_key, "mcp.3502207f.20000.test-client");
	char tp[KEYS_THUMBPRINT_LEN + 1];
	void *it;
	size_t i = 0;
	char *s;

	assert_non_null(jwk);
	for (it = json_object_iter(jwk); it; it = json_object_iter_next(jwk, it), i++)
		assert_string_equal(json_object_iter_key(it), order[i]);
	assert_int_equal(i, 6);
	assert_string_equal(json_string_value(json_object_get(jwk, "e")), "AQAB");
	assert_int_equal(strlen(json_string_value(json_object_get(jwk, "n"))), 342);
	s = json_dumps(jwk, JSON_COMPACT);
	assert_true(strncmp(s,
			    "{\"use\":\"sig\",\"kty\":\"RSA\",\"kid\":\"mcp.3502207f.20000.test-"
			    "client\",\"alg\":\"RS256\",\"n\":\"",
			    strlen("{\"use\":\"sig\",\"kty\":\"RSA\",\"kid\":\"mcp.3502207f.20000."
				   "test-client\",\"alg\":\"RS256\",\"n\":\"")) == 0);
	free(s);
	/* Pinned with the vectors: the registered key's RFC 7638 thumbprint. */
	assert_int_equal(keys_thumbprint(vec_key, tp), 0);
	assert_string_equal(tp, "Q4dqYNakaCMDdIpde6Ok9H2_ZhhD4WYgoTdiN-fs3Yo");
	json_decref(jwk);
}

static void test_jwk_private_roundtrip(void **state)
{
	static const char *const order[] = { "use", "kty", "kid", "alg", "n",  "e",
					     "d",   "p",   "q",	  "dp",	 "dq", "qi" };
	char *s = keys_jwk_private(vec_key, "k\"1");
	char tp1[KEYS_THUMBPRINT_LEN + 1], tp2[KEYS_THUMBPRINT_LEN + 1];
	json_error_t jerr;
	json_t *jwk;
	struct keys_key *back;
	struct err err;
	void *it;
	size_t i = 0;

	assert_non_null(s);
	assert_null(strchr(s, '\n'));
	assert_null(strchr(s, ' '));
	jwk = json_loads(s, JSON_REJECT_DUPLICATES, &jerr);
	assert_non_null(jwk);
	for (it = json_object_iter(jwk); it; it = json_object_iter_next(jwk, it), i++)
		assert_string_equal(json_object_iter_key(it), order[i]);
	assert_int_equal(i, 12);
	assert_string_equal(json_string_value(json_object_get(jwk, "kid")), "k\"1");
	back = keys_key_from_jwk(jwk, &err);
	assert_non_null(back);
	assert_int_equal(EVP_PKEY_eq(keys_key_evp(back), vec_evp), 1);
	keys_thumbprint(back, tp1);
	keys_thumbprint(vec_key, tp2);
	assert_string_equal(tp1, tp2);
	keys_key_free(back);
	json_decref(jwk);
	secret_free(s);
}

/* Loads the vector key's private JWK, lets edit spoil it, expects refusal naming want. */
static void expect_jwk_refused(void (*edit)(json_t *), const char *want)
{
	char *s = keys_jwk_private(vec_key, "k");
	json_t *jwk = json_loads(s, 0, NULL);
	struct err err = { 0 };

	edit(jwk);
	assert_null(keys_key_from_jwk(jwk, &err));
	if (!strstr(err.msg, want))
		fail_msg("error \"%s\" does not mention \"%s\"", err.msg, want);
	json_decref(jwk);
	secret_free(s);
}

static void drop_d(json_t *j)
{
	json_object_del(j, "d");
}
static void drop_qi(json_t *j)
{
	json_object_del(j, "qi");
}
static void pad_n(json_t *j)
{
	char buf[400];

	snprintf(buf, sizeof(buf), "%s=", json_string_value(json_object_get(j, "n")));
	json_object_set_new(j, "n", json_string(buf));
}
static void std_b64_p(json_t *j)
{
	json_object_set_new(j, "p", json_string("ab+/"));
}
static void swap_dp_dq(json_t *j)
{
	json_t *dp = json_incref(json_object_get(j, "dp"));

	json_object_set(j, "dp", json_object_get(j, "dq"));
	json_object_set_new(j, "dq", dp);
}
static void other_d(json_t *j)
{
	json_object_set_new(j, "d", json_string("AQAB"));
}
static void other_n(json_t *j)
{
	char *s = keys_jwk_private(vec_key, "x");
	struct keys_key *k2 = keys_derive(&seed, "test-client", 20001);
	json_t *o = keys_jwk_public(k2, "x");

	json_object_set(j, "n", json_object_get(o, "n"));
	json_decref(o);
	keys_key_free(k2);
	secret_free(s);
}
static void wrong_kty(json_t *j)
{
	json_object_set_new(j, "kty", json_string("EC"));
}
static void n_number(json_t *j)
{
	json_object_set_new(j, "n", json_integer(5));
}

static void test_jwk_refused(void **state)
{
	struct err err = { 0 };
	json_t *arr = json_array();

	expect_jwk_refused(drop_d, "\"d\"");
	expect_jwk_refused(drop_qi, "\"qi\"");
	expect_jwk_refused(pad_n, "base64url");
	expect_jwk_refused(std_b64_p, "base64url");
	expect_jwk_refused(swap_dp_dq, "dp != d mod (p - 1)");
	expect_jwk_refused(other_d, "d * e");
	expect_jwk_refused(other_n, "p * q != n");
	expect_jwk_refused(wrong_kty, "kty");
	expect_jwk_refused(n_number, "\"n\"");
	assert_null(keys_key_from_jwk(arr, &err));
	assert_non_null(strstr(err.msg, "not a JSON object"));
	json_decref(arr);
}

/* ---- JWT ------------------------------------------------------------------ */

/* Splits a compact JWS, verifies it with pkey, returns header and claims. */
static void verify_jwt(const char *jwt, EVP_PKEY *pkey, json_t **ret_header, json_t **ret_claims)
{
	const char *dot1 = strchr(jwt, '.'), *dot2;
	char part[4096];
	unsigned char *sig, *raw;
	size_t siglen, len;
	EVP_MD_CTX *md = EVP_MD_CTX_new();

	assert_non_null(dot1);
	dot2 = strchr(dot1 + 1, '.');
	assert_non_null(dot2);
	assert_null(strchr(dot2 + 1, '.'));
	sig = keys_b64url_decode(dot2 + 1, &siglen);
	assert_non_null(sig);
	assert_int_equal(siglen, 256);
	assert_int_equal(EVP_DigestVerifyInit_ex(md, NULL, "SHA256", NULL, NULL, pkey, NULL), 1);
	assert_int_equal(
	    EVP_DigestVerify(md, sig, siglen, (const unsigned char *)jwt, (size_t)(dot2 - jwt)), 1);
	snprintf(part, sizeof(part), "%.*s", (int)(dot1 - jwt), jwt);
	raw = keys_b64url_decode(part, &len);
	*ret_header = json_loadb((const char *)raw, len, 0, NULL);
	free(raw);
	snprintf(part, sizeof(part), "%.*s", (int)(dot2 - dot1 - 1), dot1 + 1);
	raw = keys_b64url_decode(part, &len);
	*ret_claims = json_loadb((const char *)raw, len, 0, NULL);
	free(raw);
	assert_non_null(*ret_header);
	assert_non_null(*ret_claims);
	free(sig);
	EVP_MD_CTX_free(md);
}

static bool is_uuid4(const char *s)
{
	if (!s || strlen(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-')
		return false;
	if (s[14] != '4' || !strchr("89ab", s[19]))
		return false;
	for (int i = 0; i < 36; i++)
		if (i != 8 && i != 13 && i != 18 && i != 23 && !strchr("0123456789abcdef", s[i]))
			return false;
	return true;
}

static void test_jwt_and_grant(void **state)
{
	json_t *header, *claims, *x5c = json_pack("[s]", "MIIB");
	json_t *in = json_pack("{s:s, s:i}", "sub", "x", "n", 1);
	const char *jti;
	char *jwt;

	jwt = keys_jwt_sign(vec_key, "kid-1", NULL, in);
	assert_non_null(jwt);
	verify_jwt(jwt, vec_evp, &header, &claims);
	assert_string_equal(json_string_value(json_object_get(header, "alg")), "RS256");
	assert_string_equal(json_string_value(json_object_get(header, "typ")), "JWT");
	assert_string_equal(json_string_value(json_object_get(header, "kid")), "kid-1");
	assert_null(json_object_get(header, "x5c"));
	assert_true(json_equal(claims, in));
	json_decref(header);
	json_decref(claims);
	secret_free(jwt);

	jwt = keys_jwt_sign(vec_key, NULL, x5c, in);
	verify_jwt(jwt, vec_evp, &header, &claims);
	assert_null(json_object_get(header, "kid"));
	assert_true(json_equal(json_object_get(header, "x5c"), x5c));
	json_decref(header);
	json_decref(claims);
	secret_free(jwt);

	jwt = keys_grant(vec_key, "kid-2", NULL, "client-1", "https://mp.example/", "a:b c:d",
			 1700000000, 120);
	verify_jwt(jwt, vec_evp, &header, &claims);
	assert_string_equal(json_string_value(json_object_get(header, "kid")), "kid-2");
	assert_string_equal(json_string_value(json_object_get(claims, "aud")),
			    "https://mp.example/");
	assert_string_equal(json_string_value(json_object_get(claims, "iss")), "client-1");
	assert_string_equal(json_string_value(json_object_get(claims, "scope")), "a:b c:d");
	assert_int_equal(json_integer_value(json_object_get(claims, "iat")), 1700000000);
	assert_int_equal(json_integer_value(json_object_get(claims, "exp")), 1700000120);
	jti = json_string_value(json_object_get(claims, "jti"));
	assert_true(is_uuid4(jti));
	json_decref(header);
	json_decref(claims);
	secret_free(jwt);

	assert_null(keys_grant(vec_key, "k", NULL, "c", "a", "s", 0, KEYS_GRANT_LIFETIME + 1));
	assert_null(keys_grant(vec_key, "k", NULL, "c", "a", "s", 0, 0));
	assert_null(keys_grant(vec_key, "k", NULL, NULL, "a", "s", 0, 10));
	json_decref(x5c);
	json_decref(in);
}

static void test_uuid(void **state)
{
	char a[37], b[37];

	assert_int_equal(keys_uuid(a), 0);
	assert_int_equal(keys_uuid(b), 0);
	assert_true(is_uuid4(a));
	assert_true(is_uuid4(b));
	assert_string_not_equal(a, b);
}

/* ---- PEM ------------------------------------------------------------------ */

static const char leaf_pem[] = "-----BEGIN CERTIFICATE-----\n"
			       "MIIBITCByQIUTPh17xsL1oYwArK6mkM0FH59Ig0wCgYIKoZIzj0EAwIwEjEQMA4G\n"
			       "A1UEAwwHdGVzdC1jYTAgFw0yNjExMjUwMjQyNDdaGA8yMTI2MTEwMTAyNDI0N1ow\n"
			       "FDESMBAGA1UEAwwJdGVzdC1sZWFmMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n"
			       "zdRYfGKfzy5InbZKP3eX1YYWSU+kLSi7eUGAj69GfjJchKRjZhRvPxgWrytoTEnL\n"
			       "ghCHoaGplh/vmdK6a8OXeTAKBggqhkjOPQQDAgNHADBEAiAqWLYa+hpx4ZXu3+c1\n"
			       "4m5lh+4OswI3A3KBD/mXM+2UTQIgAiFRlYqcW4RE/rXvb2q4OegXtFbf+u7pxOq+\n"
			       "0MDQDEY=\n"
			       "-----END CERTIFICATE-----\n";
static const char ca_pem[] = "-----BEGIN CERTIFICATE-----\n"
			     "MIIBezCCASGgAwIBAgIULlWGEdvCE9E+P7qkQxyP4976b3IwCgYIKoZIzj0EAwIw\n"
			     "EjEQMA4GA1UEAwwHdGVzdC1jYTAgFw0yNjExMjUwMjQyNDdaGA8yMTI2MTEwMTAy\n"
			     "NDI0N1owEjEQMA4GA1UEAwwHdGVzdC1jYTBZMBMGByqGSM49AgEGCCqGSM49AwEH\n"
			     "A0IABEvTVBh/CEGD35JVGmsTKBjSy9EqnXcrifhRinDNGDCUcNFprAS4irqXAPWl\n"
			     "9FDoXdjcyP3Ulndo1ypyTbfOBYijUzBRMB0GA1UdDgQWBBQuL9f/esmSWIIyQNqw\n"
			     "bgCXB9YaKzAfBgNVHSMEGDAWgBQuL9f/esmSWIIyQNqwbgCXB9YaKzAPBgNVHRMB\n"
			     "Af8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIQCf5qVIhZsEHgpBDGT3lCKP6dXK\n"
			     "GGcblOxr0oqeruP3GwIgFIEp1WGSlH8LyPVOzyyTqx+nh0s6CtPNpZ8QJhImWLc=\n"
			     "-----END CERTIFICATE-----\n";

/* The PEM body without header, footer and newlines: the DER's base64. */
static void pem_body(const char *pem, char *out)
{
	const char *s = strchr(pem, '\n') + 1, *end = strstr(pem, "-----END");

	for (; s < end; s++)
		if (*s != '\n')
			*out++ = *s;
	*out = '\0';
}

static void test_pem(void **state)
{
	char chain[sizeof(leaf_pem) + sizeof(ca_pem)], body[1024];
	const char *path;
	struct err err = { 0 };
	struct keys_key *k;
	json_t *x5c;
	BIO *bio;
	char *pem;
	long len;

	/* The private key, as PKCS#8 PEM. */
	bio = BIO_new(BIO_s_mem());
	assert_int_equal(PEM_write_bio_PrivateKey(bio, vec_evp, NULL, NULL, 0, NULL, NULL), 1);
	len = BIO_get_mem_data(bio, &pem);
	path = write_file('f', pem, (size_t)len, 0600);
	k = keys_key_from_pem_file(path, &err);
	assert_non_null(k);
	assert_int_equal(EVP_PKEY_eq(keys_key_evp(k), vec_evp), 1);
	keys_key_free(k);
	BIO_free(bio);
	path = write_file('g', "not a key\n", 10, 0600);
	assert_null(keys_key_from_pem_file(path, &err));
	assert_non_null(strstr(err.msg, "no unencrypted PEM private key"));
	assert_null(keys_key_from_pem_file("/nonexistent/key.pem", &err));
	assert_non_null(strstr(err.msg, "cannot open"));

	/* The chain: standard base64 DER, leaf first. */
	snprintf(chain, sizeof(chain), "%s%s", leaf_pem, ca_pem);
	path = write_file('h', chain, strlen(chain), 0600);
	x5c = keys_x5c_from_pem_file(path, &err);
	assert_non_null(x5c);
	assert_int_equal(json_array_size(x5c), 2);
	pem_body(leaf_pem, body);
	assert_string_equal(json_string_value(json_array_get(x5c, 0)), body);
	pem_body(ca_pem, body);
	assert_string_equal(json_string_value(json_array_get(x5c, 1)), body);
	json_decref(x5c);
	path = write_file('i', "\n", 1, 0600);
	assert_null(keys_x5c_from_pem_file(path, &err));
	assert_non_null(strstr(err.msg, "no PEM certificate"));
	/* A chain cut in the middle of a certificate is an error, not a shorter chain. */
	snprintf(chain, sizeof(chain), "%s%.200s", leaf_pem, ca_pem);
	path = write_file('j', chain, strlen(chain), 0600);
	assert_null(keys_x5c_from_pem_file(path, &err));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_seed_ids),
		cmocka_unit_test(test_derive_vectors),
		cmocka_unit_test(test_derive_properties),
		cmocka_unit_test(test_derive_bad_input),
		cmocka_unit_test(test_seed_load),
		cmocka_unit_test(test_epochs),
		cmocka_unit_test(test_kids),
		cmocka_unit_test(test_b64url),
		cmocka_unit_test(test_thumbprint_rfc7638),
		cmocka_unit_test(test_jwk_public),
		cmocka_unit_test(test_jwk_private_roundtrip),
		cmocka_unit_test(test_jwk_refused),
		cmocka_unit_test(test_jwt_and_grant),
		cmocka_unit_test(test_uuid),
		cmocka_unit_test(test_pem),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
