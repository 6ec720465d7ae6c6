/*
 * provision: the steps of one app's provisioning, read top to bottom in
 * provision_run():
 *
 *	1. find or create the client, with the Mount's scopes   (digdir)
 *	2. clean up what a create race left                     (digdir, keys)
 *	3. register the key schedule                            (keyset)
 *	4. take the epoch's key and its kid                     (keyset, keys)
 *	5. wait until Maskinporten accepts anything new         (maskinporten)
 *
 * Must never log key material; the access token step 5 obtains is wiped and
 * dropped. Every step reports itself through the hooks, so a Mount that stops
 * waiting can say what is still under way.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "keyset.h"
#include "log.h"
#include "metrics.h"
#include "provision.h"
#include "wipe.h"

#define VERIFY_FIRST_WAIT_MS 500  /* between token requests while a key propagates ... */
#define VERIFY_MAX_WAIT_MS   5000 /* ... doubling up to this */

static void step(const struct provision_request *req, const char *what, bool verifying)
{
	if (req->hooks.step)
		req->hooks.step(req->hooks.ctx, what, verifying);
}

/* Sleeps ms between token requests. False when the process stops meanwhile. */
static bool pause_ms(const struct provision_request *req, long ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };

	if (req->hooks.pause)
		return req->hooks.pause(req->hooks.ctx, ms);
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
	return true;
}

/* Whether a refused token request may be DigDir's change not having reached Maskinporten. */
static bool propagating(const struct err *err)
{
	static const char *const codes[] = { "invalid_grant", "invalid_client", "invalid_scope",
					     "forbidden" };

	if (err_is_transient(err->kind))
		return true;
	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
		if (!strcmp(err->code, codes[i]))
			return true;
	return false;
}

/*
 * Step 5. A new client, key or scope set reaches Maskinporten 0-2 minutes
 * after DigDir took it: asks Maskinporten for a token with the key until it
 * gives one, so that no pod gets a key Maskinporten refuses.
 */
static int verify(const struct provision *pv, const struct provision_request *req,
		  const char *client_id, const struct keys_key *key, const char *kid,
		  const char *scope, struct err *err)
{
	const struct mp_metadata *meta = NULL;
	int64_t t0 = clock_now_ms();
	long wait = VERIFY_FIRST_WAIT_MS;
	int tries = 0, r;

	r = mp_metadata(pv->mp, req->deadline_ms, &meta, err);
	if (r < 0)
		return r;
	step(req, "waiting for Maskinporten to accept the new key", true);
	for (;;) {
		struct err terr = { 0 };
		json_t *resp = NULL;
		const char *token;

		tries++;
		r = mp_token_request(pv->http, meta->token_endpoint, meta->issuer, key, kid,
				     client_id, scope, req->deadline_ms, &resp, &terr);
		/* The app's access token is of no use here: wipe it before it is freed. */
		token = json_string_value(json_object_get(resp, "access_token"));
		if (token)
			wipe((char *)token, strlen(token));
		json_decref(resp);
		if (r == 0)
			break;
		if (!propagating(&terr)) {
			if (err)
				*err = terr;
			err_prefix(err, "checking the new key of client %s with Maskinporten: ",
				   client_id);
			return r;
		}
		if (clock_now_ms() + wait >= req->deadline_ms || !pause_ms(req, wait))
			return err_set(
			    err, ERR_PROPAGATING, EAGAIN,
			    "Maskinporten does not accept the new key of client %s yet "
			    "(%d tries in %.0f s; DigDir takes up to 2 minutes to pass a "
			    "new client or key on): %.300s",
			    client_id, tries, (double)(clock_now_ms() - t0) / 1000.0, terr.msg);
		wait = wait * 2 > VERIFY_MAX_WAIT_MS ? VERIFY_MAX_WAIT_MS : wait * 2;
	}
	metrics_key_propagation((double)(clock_now_ms() - t0) / 1000.0);
	log_info("Maskinporten accepts the key of client %s after %.1f s (%d token request(s))",
		 client_id, (double)(clock_now_ms() - t0) / 1000.0, tries);
	return 0;
}

/*
 * Step 2. Duplicates of the app's client (other active clients with its
 * description) that hold no key, or only keys of ours, are what a create
 * race left behind (a node stopped before it deactivated its loser):
 * deactivate them. Others are left alone and logged. Best effort.
 */
static void clean_duplicates(const struct provision *pv, const char *description,
			     const json_t *dups, int64_t deadline_ms)
{
	size_t i, j;
	json_t *id, *k;

	json_array_foreach(dups, i, id)
	{
		const char *dup = json_string_value(id);
		struct err err = { 0 };
		json_t *keys = NULL;
		bool ours = true;

		if (digdir_get_jwks(pv->dd, dup, deadline_ms, &keys, &err) < 0) {
			log_warn("duplicate client %s of %s: reading its keys failed: %s", dup,
				 description, err.msg);
			continue;
		}
		json_array_foreach(keys, j, k)
		{
			const char *kid = json_string_value(json_object_get(k, "kid"));

			ours &= kid && keys_kid_is_own(pv->seed, dup, kid, NULL);
		}
		json_decref(keys);
		if (!ours) {
			log_warn("client %s has the description %s too, and keys that are not this "
				 "provider's: left as it is, deactivate it by hand if it is unused",
				 dup, description);
			continue;
		}
		if (digdir_delete_client(pv->dd, dup, deadline_ms, &err) < 0 &&
		    err.kind != ERR_NOT_FOUND) {
			log_warn("deactivating duplicate client %s of %s failed: %s", dup,
				 description, err.msg);
			continue;
		}
		metrics_client_deactivated("duplicate");
		log_warn("deactivated client %s: a duplicate of %s left by a create race, with no "
			 "key in use",
			 dup, description);
	}
}

/*
 * Finding the client is bounded by the Mount that asked (so its error says
 * what failed); once the client is known, the rest goes on within the
 * flight's own budget even after that Mount gave up, so that no client is
 * left half provisioned and the kubelet's next try is answered at once.
 */
int provision_run(const struct provision *pv, const struct provision_request *req,
		  struct provision_result *ret, struct err *err)
{
	struct digdir_ensure client = {
		.description = req->description,
		.scopes = (const char *const *)req->scopes,
		.nscopes = req->nscopes,
		.pinned_id = req->pinned,
		.written = req->written,
		.readonly_scopes = req->readonly,
	};
	struct keyset_sync_result keys = { 0 };
	struct provision_result res = { .epoch = req->epoch };
	int r;

	/* 1. Find or create the client, with the Mount's scopes. */
	step(req, "looking up the client at DigDir", false);
	r = digdir_ensure_client(pv->dd, &client, req->find_deadline_ms, err);
	if (r < 0)
		goto out;

	/* 2. What a create race left behind. */
	if (client.duplicates) {
		step(req, "cleaning up duplicate clients at DigDir", false);
		clean_duplicates(pv, req->description, client.duplicates, req->deadline_ms);
	}

	/* 3. The key schedule: this epoch's key and the next, registered. */
	step(req, "registering the key schedule at DigDir", false);
	r = keyset_sync(pv->dd, pv->seed, client.client_id, req->epoch, pv->epoch_len,
			client.created ? KEYSET_NEW_CLIENT : 0, req->deadline_ms, &keys, err);
	for (unsigned i = 0; i < keys.derived; i++)
		metrics_key_derived();
	if (r < 0)
		goto out;
	if (keys.uploaded)
		metrics_jwks_upload();

	/* 4. The epoch's key and its kid. */
	r = keys_kid(pv->seed, client.client_id, req->epoch, res.kid);
	if (r < 0) {
		err_set(err, ERR_INTERNAL, -r, "the client id is too long for a kid");
		goto out;
	}

	/* 5. Anything new must work at Maskinporten before a pod gets it. */
	if (client.created || keys.current_new || client.scopes_changed) {
		r = verify(pv, req, client.client_id, keys.current, res.kid, client.registered,
			   err);
		if (r < 0)
			goto out;
	}

	res.jwk_private = keys_jwk_private(keys.current, res.kid);
	if (!res.jwk_private) {
		r = err_set(err, ERR_INTERNAL, ENOMEM, "serialising the key failed");
		goto out;
	}
	res.registered_max = keyset_newest_own(pv->seed, client.client_id, keys.registered);
	res.differs = client.scopes_differ;
	res.client_id = client.client_id;
	res.registered = client.registered;
	client.client_id = client.registered = NULL;
	*ret = res;
	res = (struct provision_result){ 0 };
	r = 0;
out:
	provision_result_release(&res);
	keyset_sync_release(&keys);
	digdir_ensure_release(&client);
	return r;
}

int provision_fallback(const struct provision *pv, const char *client_id, const char *written,
		       int64_t epoch, int64_t registered_max, struct provision_result *ret)
{
	struct provision_result res = { .epoch = epoch, .registered_max = registered_max };
	struct keys_key *key;
	int r = -ENOMEM;

	if (!client_id || registered_max < epoch)
		return -ENOENT;
	key = keys_derive(pv->seed, client_id, epoch);
	if (!key)
		return -EIO;
	metrics_key_derived();
	if (keys_kid(pv->seed, client_id, epoch, res.kid) == 0 &&
	    (res.jwk_private = keys_jwk_private(key, res.kid)) &&
	    (res.client_id = strdup(client_id)) &&
	    (!written || (res.registered = strdup(written)))) {
		*ret = res;
		res = (struct provision_result){ 0 };
		r = 0;
	}
	keys_key_free(key);
	provision_result_release(&res);
	return r;
}

int provision_settle(const struct provision *pv, const char *description, int64_t deadline_ms,
		     char **ret_client_id, struct err *err)
{
	json_t *ids = NULL, *dups = NULL;
	const char *first;
	int r;

	r = digdir_lookup(pv->dd, description, deadline_ms, &ids, err);
	if (r < 0)
		return r;
	dups = json_array();
	for (size_t j = 1; dups && j < json_array_size(ids); j++)
		json_array_append(dups, json_array_get(ids, j));
	if (json_array_size(dups))
		clean_duplicates(pv, description, dups, deadline_ms);
	first = json_string_value(json_array_get(ids, 0));
	*ret_client_id = first ? strdup(first) : NULL;
	r = first && !*ret_client_id ? err_set(err, ERR_INTERNAL, ENOMEM, "out of memory") : 0;
	json_decref(dups);
	json_decref(ids);
	return r;
}

void provision_result_release(struct provision_result *r)
{
	if (!r)
		return;
	free(r->client_id);
	free(r->registered);
	secret_free(r->jwk_private);
	*r = (struct provision_result){ 0 };
}
