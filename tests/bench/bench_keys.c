/*
 * bench_keys: time to derive one key (15 distinct client/epoch pairs) beside
 * OpenSSL's own random RSA-2048 generation, measured in the same run.
 * Target: derive median <= 2 x keygen median. Exits 1 when a run fails.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/rsa.h>

#include "keys.h"

#define N 15

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* Sorts v and returns the nearest-rank percentile pct. */
static double percentile(double *v, size_t n, int pct)
{
	size_t rank = (n * (size_t)pct + 99) / 100;

	qsort(v, n, sizeof(*v), cmp_double);
	return v[rank ? rank - 1 : 0];
}

static EVP_PKEY *openssl_keygen(void)
{
	EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
	EVP_PKEY *pkey = NULL;

	if (!ctx || EVP_PKEY_keygen_init(ctx) != 1 ||
	    EVP_PKEY_CTX_set_rsa_keygen_bits(ctx, 2048) != 1 || EVP_PKEY_keygen(ctx, &pkey) != 1)
		pkey = NULL;
	EVP_PKEY_CTX_free(ctx);
	return pkey;
}

int main(void)
{
	double derive[N], keygen[N], dmed, dp90, kmed, kp90;
	unsigned char bytes[32];
	struct keys_seed seed;

	for (size_t i = 0; i < sizeof(bytes); i++)
		bytes[i] = (unsigned char)(i * 7 + 1);
	if (keys_seed_from_bytes(bytes, sizeof(bytes), &seed) < 0)
		return 1;
	/* Interleaved, so that a noisy neighbour hurts both columns alike. */
	for (int i = 0; i < N; i++) {
		char client[64];
		struct keys_key *key;
		EVP_PKEY *k;
		double t;

		snprintf(client, sizeof(client), "bench-client-%d", i % 5);
		t = now_ms();
		key = keys_derive(&seed, client, 20000 + i);
		derive[i] = now_ms() - t;
		if (!key) {
			fprintf(stderr, "bench_keys: derivation failed\n");
			return 1;
		}
		keys_key_free(key);

		t = now_ms();
		k = openssl_keygen();
		keygen[i] = now_ms() - t;
		if (!k) {
			fprintf(stderr, "bench_keys: EVP_PKEY_keygen failed\n");
			return 1;
		}
		EVP_PKEY_free(k);
	}
	keys_seed_wipe(&seed);
	dmed = percentile(derive, N, 50);
	dp90 = percentile(derive, N, 90);
	kmed = percentile(keygen, N, 50);
	kp90 = percentile(keygen, N, 90);
	printf("%-18s %4s %10s %10s\n", "figure", "n", "median", "p90");
	printf("%-18s %4d %10.1f %10.1f\n", "keys.derive_ms", N, dmed, dp90);
	printf("%-18s %4d %10.1f %10.1f\n", "openssl.keygen_ms", N, kmed, kp90);
	printf("%-18s %4s %10.2f %10s\n", "ratio", "", dmed / kmed, "(target <= 2)");
	return 0;
}
