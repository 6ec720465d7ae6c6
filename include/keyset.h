/*
 * keyset: the keys a client has registered at DigDir, kept on the key
 * schedule. The schedule is a pure function of (registered keys, epoch), so
 * every node computes the same set and uploads are idempotent; keyset_sync
 * reads the registered keys, computes the set, uploads it when it changed
 * and confirms that ours are there.
 *
 * In epoch e our keys e and e+1 are required, e-1 and e+2 are kept when
 * present (a node whose clock is one epoch behind or ahead must not undo
 * another's upload), older and further keys of ours are dropped. Foreign keys
 * (any kid that is not ours for this seed and client) are kept, oldest
 * registration order first, while the set stays within KEYS_MAX_REGISTERED and
 * their exp has not passed the start of epoch e (nor now); drop_foreign drops
 * them all. Every key carried over is normalised (keyset_normalise). Each of
 * our keys carries "exp" = the end of its grace epoch, keys_epoch_end(k + 1).
 */
#ifndef MCP_KEYSET_H
#define MCP_KEYSET_H

#include <stdbool.h>
#include <stdint.h>

#include <jansson.h>

#include "digdir.h"
#include "err.h"
#include "keys.h"

/* Returns a new reference to our public JWK of epoch, or NULL on failure. */
typedef json_t *(*keyset_public_jwk_fn)(void *ctx, int64_t epoch);

struct keyset_input {
	const struct keys_seed *seed;
	const char *client_id;
	int64_t epoch;
	int64_t epoch_len;
	const json_t *current; /* the "keys" array as DigDir returns it (may be NULL: none) */
	bool drop_foreign;
	int64_t now; /* Unix seconds: foreign keys that expired by then are dropped; 0: unused */
};

/*
 * The set to register. public_jwk is called only for our keys that are
 * missing from current. Returns 0 with *ret_set a new array (own keys first
 * in epoch order, then foreign ones) and *ret_changed false when current
 * already equals it, so nothing needs uploading.
 */
int keyset_schedule(const struct keyset_input *in, keyset_public_jwk_fn public_jwk, void *ctx,
		    json_t **ret_set, bool *ret_changed, struct err *err);

/*
 * A registered key as DigDir takes it back in an upload: only the public
 * members kty, use, kid, alg, n, e, exp and x5c, with "use":"sig" and
 * "alg":"RS256" added where a key registered before DigDir's 2025 API lacks
 * them. A new object, or NULL when key is not an object with a kid.
 */
json_t *keyset_normalise(const json_t *key);

/* True when the JWK array set holds a key with this kid. */
bool keyset_has_kid(const json_t *set, const char *kid);

/* The newest epoch among our keys in a registered "keys" array, or -1. */
int64_t keyset_newest_own(const struct keys_seed *seed, const char *client_id, const json_t *keys);

/* Flags of keyset_sync. */
enum {
	KEYSET_DROP_FOREIGN = 1, /* drop keys that are not ours */
	KEYSET_NEW_CLIENT = 2,	 /* just created here: no keys yet, skip the first read */
};

/* What keyset_sync did. Release with keyset_sync_release(). */
struct keyset_sync_result {
	json_t *registered;	  /* the registered "keys" afterwards */
	struct keys_key *current; /* SECRET: our key of the epoch, derived once */
	bool uploaded;		  /* the set changed and was uploaded */
	bool current_new;	  /* the epoch's key was not registered before: Maskinporten may
				     not accept it yet */
	unsigned derived;	  /* keys derived from the seed */
};

/*
 * Reads the client's keys, computes the set, uploads it when it changed,
 * and confirms from the upload's answer (the registered set) that our keys
 * of epoch and epoch + 1 are there. Returns 0 with *ret filled.
 */
int keyset_sync(struct digdir *dd, const struct keys_seed *seed, const char *client_id,
		int64_t epoch, int64_t epoch_len, unsigned flags, int64_t deadline_ms,
		struct keyset_sync_result *ret, struct err *err);

void keyset_sync_release(struct keyset_sync_result *r);

#endif
