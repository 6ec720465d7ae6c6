/*
 * hash: FNV-1a, for the in-memory tables keyed by strings (registry entries,
 * answer slots, recent creates, metric series) and for Mount object
 * versions. Fast and stable across processes; not a cryptographic hash, and
 * never used on key material.
 */
#ifndef MCP_HASH_H
#define MCP_HASH_H

#include <stddef.h>
#include <stdint.h>

#define HASH_INIT 14695981039346656037ULL /* the FNV-1a offset basis */

static inline uint64_t hash_bytes(uint64_t h, const void *data, size_t len)
{
	const unsigned char *p = data;

	for (size_t i = 0; i < len; i++)
		h = (h ^ p[i]) * 1099511628211ULL;
	return h;
}

static inline uint64_t hash_str(uint64_t h, const char *s)
{
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ULL;
	return h;
}

#endif
