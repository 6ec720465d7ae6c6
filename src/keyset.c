/*
 * keyset: a client's registered keys on the key schedule. The schedule is
 * pure (keyset_schedule); keyset_sync is its one round trip with DigDir:
 * read, schedule, upload when changed, confirm.
 *
 * Must never hold a private key longer than the sync that derived it needs,
 * and never send one: only public JWKs leave this module.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "keyset.h"

/* The entry of current whose kid is kid, or NULL. */
static json_t *find_kid(const json_t *current, const char *kid)
{
	size_t i;
	json_t *v;

	json_array_foreach(current, i, v)
	{
		const char *k = json_string_value(json_object_get(v, "kid"));

		if (k && !strcmp(k, kid))
			return v;
	}
	return NULL;
}

bool keyset_has_kid(const json_t *set, const char *kid)
{
	return kid && find_kid(set, kid) != NULL;
}

json_t *keyset_normalise(const json_t *key)
{
	static const char *const members[] = { "kty", "use", "kid", "alg", "n", "e", "exp", "x5c" };
	json_t *out;

	if (!json_is_object(key) || !json_is_string(json_object_get(key, "kid")))
		return NULL;
	out = json_object();
	for (size_t i = 0; out && i < sizeof(members) / sizeof(members[0]); i++) {
		json_t *v = json_object_get(key, members[i]);

		if (v && json_object_set(out, members[i], v) < 0) {
			json_decref(out);
			return NULL;
		}
	}
	/* Keys registered before DigDir's 2025-05-22 API may lack use; RS256 was then the only alg.
	 */
	if (out && !json_object_get(out, "use") &&
	    json_object_set_new(out, "use", json_string("sig")) < 0) {
		json_decref(out);
		return NULL;
	}
	if (out && !json_object_get(out, "alg") &&
	    json_object_set_new(out, "alg", json_string("RS256")) < 0) {
		json_decref(out);
		return NULL;
	}
	return out;
}

int keyset_schedule(const struct keyset_input *in, keyset_public_jwk_fn public_jwk, void *ctx,
		    json_t **ret_set, bool *ret_changed, struct err *err)
{
	int64_t e, foreign_after;
	size_t i, ncur, carried = 0;
	bool changed = false;
	json_t *set = NULL, *v;
	int r;

	if (!in || !in->seed || !in->client_id || in->epoch_len <= 0 || !public_jwk)
		return err_set(err, ERR_INTERNAL, EINVAL, "keyset_schedule: bad arguments");
	if (in->current && !json_is_array(in->current) && !json_is_null(in->current))
		return err_set(err, ERR_BAD_RESPONSE, EINVAL,
			       "the registered keys are not a JSON array");
	e = in->epoch;
	if (e <= INT64_MIN + 1 || e >= INT64_MAX - 3)
		return err_set(err, ERR_INVALID, ERANGE, "epoch %" PRId64 " is out of range", e);
	ncur = in->current ? json_array_size(in->current) : 0;
	json_array_foreach(in->current, i, v) if (!json_is_object(v)) return err_set(
	    err, ERR_BAD_RESPONSE, EINVAL, "registered key %zu is not a JSON object", i);
	set = json_array();
	if (!set)
		return err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");

	/* Our keys e-1 .. e+2, in epoch order: e and e+1 always, the others if present. */
	for (int64_t k = e - 1; k <= e + 2; k++) {
		int64_t exp = keys_epoch_end(k + 1, in->epoch_len);
		char kid[KEYS_KID_MAX];
		json_t *found, *jwk;
		const char *got;

		r = keys_kid(in->seed, in->client_id, k, kid);
		if (r < 0) {
			r = err_set(err, ERR_INVALID, -r, "client id %s is too long for a kid",
				    in->client_id);
			goto out;
		}
		found = in->current ? find_kid(in->current, kid) : NULL;
		if (found) {
			json_t *old = json_object_get(found, "exp");

			if (!json_is_integer(old) || json_integer_value(old) != exp)
				changed = true;
			jwk = keyset_normalise(found);
			if (jwk && !json_equal(jwk, found))
				changed = true;
			carried++;
		} else if (k == e || k == e + 1) {
			jwk = public_jwk(ctx, k);
			changed = true;
			got = json_string_value(json_object_get(jwk, "kid"));
			if (!jwk || !got || strcmp(got, kid) != 0) {
				json_decref(jwk);
				r = err_set(err, ERR_INTERNAL, EIO,
					    "deriving the public key of epoch %" PRId64
					    " for client %s failed",
					    k, in->client_id);
				goto out;
			}
		} else {
			continue;
		}
		if (!jwk || json_object_set_new(jwk, "exp", json_integer(exp)) < 0 ||
		    json_array_append_new(set, jwk) < 0) {
			r = err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
			goto out;
		}
	}

	/*
	 * Foreign keys, in registration order, while unexpired and there is
	 * room, each normalised: DigDir refuses an upload in which any key lacks
	 * use or carries a member it does not know.
	 */
	foreign_after = keys_epoch_start(e, in->epoch_len);
	if (in->now > foreign_after)
		foreign_after = in->now;
	json_array_foreach(in->current, i, v)
	{
		const char *kid = json_string_value(json_object_get(v, "kid"));
		json_t *exp = json_object_get(v, "exp"), *norm;

		if (kid && keys_kid_is_own(in->seed, in->client_id, kid, NULL))
			continue; /* ours: carried above or dropped */
		if (in->drop_foreign || json_array_size(set) >= KEYS_MAX_REGISTERED)
			continue;
		if (json_is_number(exp) && json_number_value(exp) <= (double)foreign_after)
			continue;
		if (keyset_has_kid(set, kid))
			continue; /* a duplicate kid cannot be registered twice */
		norm = keyset_normalise(v);
		if (!norm)
			continue; /* not a key DigDir could take back */
		if (!json_equal(norm, v))
			changed = true;
		if (json_array_append_new(set, norm) < 0) {
			r = err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
			goto out;
		}
		carried++;
	}

	/* Unchanged when every registered key was carried over as it was. */
	if (carried != ncur)
		changed = true;
	*ret_set = set;
	*ret_changed = changed;
	set = NULL;
	r = 0;
out:
	json_decref(set);
	return r;
}

int64_t keyset_newest_own(const struct keys_seed *seed, const char *client_id, const json_t *keys)
{
	int64_t best = -1, ep;
	size_t i;
	json_t *k;

	json_array_foreach(keys, i, k)
	{
		const char *kid = json_string_value(json_object_get(k, "kid"));

		if (kid && keys_kid_is_own(seed, client_id, kid, &ep) && ep > best)
			best = ep;
	}
	return best;
}

/* What keyset_schedule's callback derives with: our public JWKs, keeping the epoch's key. */
struct derive {
	const struct keys_seed *seed;
	const char *client_id;
	int64_t keep_epoch;
	struct keys_key *kept; /* SECRET */
	unsigned derived;
};

static json_t *derive_public_jwk(void *ctx, int64_t epoch)
{
	struct derive *d = ctx;
	char kid[KEYS_KID_MAX];
	struct keys_key *key;
	json_t *jwk;

	if (keys_kid(d->seed, d->client_id, epoch, kid) < 0)
		return NULL;
	key = keys_derive(d->seed, d->client_id, epoch);
	if (!key)
		return NULL;
	d->derived++;
	jwk = keys_jwk_public(key, kid);
	if (epoch == d->keep_epoch && !d->kept)
		d->kept = key; /* the key handed out: derived once */
	else
		keys_key_free(key);
	return jwk;
}

/* 0 when the registered set holds our keys of epoch and epoch + 1. */
static int confirm(const struct keys_seed *seed, const char *client_id, int64_t epoch,
		   const json_t *registered, struct err *err)
{
	char kid[KEYS_KID_MAX];
	int r;

	for (int64_t e = epoch; e <= epoch + 1; e++) {
		r = keys_kid(seed, client_id, e, kid);
		if (r < 0)
			return err_set(err, ERR_INVALID, -r, "client id %s too long for a kid",
				       client_id);
		if (!keyset_has_kid(registered, kid))
			return err_set(err, ERR_BAD_RESPONSE, EPROTO,
				       "DigDir does not list key %s of client %s after the upload",
				       kid, client_id);
	}
	return 0;
}

int keyset_sync(struct digdir *dd, const struct keys_seed *seed, const char *client_id,
		int64_t epoch, int64_t epoch_len, unsigned flags, int64_t deadline_ms,
		struct keyset_sync_result *ret, struct err *err)
{
	struct derive d = { .seed = seed, .client_id = client_id, .keep_epoch = epoch };
	struct keyset_input in = { 0 };
	json_t *current = NULL, *set = NULL, *registered = NULL;
	char kid[KEYS_KID_MAX];
	bool changed = false;
	int r = 0;

	*ret = (struct keyset_sync_result){ 0 };
	/*
	 * 1. Read what is registered. A client this process just created has
	 * none: reading would cost a request and tell nothing. Another node
	 * uploading at the same time is the read-modify-write race every sync
	 * has; both upload the same derived keys, and the confirmation below
	 * checks that ours are there.
	 */
	if (flags & KEYSET_NEW_CLIENT)
		current = json_array();
	else
		r = digdir_get_jwks(dd, client_id, deadline_ms, &current, err);
	if (!current) {
		if (r == 0)
			r = err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
		goto out;
	}
	r = keys_kid(seed, client_id, epoch, kid);
	if (r < 0) {
		r = err_set(err, ERR_INVALID, -r, "client id %s too long for a kid", client_id);
		goto out;
	}
	ret->current_new = !keyset_has_kid(current, kid);

	/* 2. The set the schedule wants. */
	in = (struct keyset_input){ .seed = seed,
				    .client_id = client_id,
				    .epoch = epoch,
				    .epoch_len = epoch_len,
				    .current = current,
				    .drop_foreign = flags & KEYSET_DROP_FOREIGN,
				    .now = (int64_t)time(NULL) };
	r = keyset_schedule(&in, derive_public_jwk, &d, &set, &changed, err);
	if (r < 0)
		goto out;

	/*
	 * 3. Upload it when it changed. The upload's answer is the registered
	 * set (as digdirator reads it), so confirming takes no second request.
	 */
	registered = json_incref(current);
	if (changed) {
		json_decref(registered);
		registered = NULL;
		r = digdir_put_jwks(dd, client_id, set, deadline_ms, &registered, err);
		if (r < 0)
			goto out;
	}
	r = confirm(seed, client_id, epoch, registered, err);
	if (r < 0)
		goto out;

	/* 4. The epoch's key, when the schedule did not derive it already. */
	if (!d.kept) {
		d.kept = keys_derive(seed, client_id, epoch);
		if (!d.kept) {
			r = err_set(err, ERR_INTERNAL, EIO,
				    "deriving the key of epoch %" PRId64 " failed", epoch);
			goto out;
		}
		d.derived++;
	}
	ret->registered = registered;
	ret->current = d.kept;
	ret->uploaded = changed;
	registered = NULL;
	d.kept = NULL;
	r = 0;
out:
	ret->derived = d.derived;
	keys_key_free(d.kept);
	json_decref(registered);
	json_decref(current);
	json_decref(set);
	return r;
}

void keyset_sync_release(struct keyset_sync_result *r)
{
	if (!r)
		return;
	json_decref(r->registered);
	keys_key_free(r->current);
	r->registered = NULL;
	r->current = NULL;
}
