/*
 * cli_client: `client list|show|ensure|delete|adopt`, an administrator's
 * view of the organisation's clients at DigDir and of the scopes they
 * expose. Each verb is one function in the table below.
 *
 * Must never print private key material: only kids, key types and expiry.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "app.h"
#include "cli.h"
#include "config.h"
#include "http.h"
#include "keyset.h"
#include "provider.h"
#include "scopes.h"
#include "state.h"

static const char usage[] =
    "Usage: maskinporten-csi-provider client VERB [ARGS] [FLAGS]\n"
    "\n"
    "  list                              the organisation's clients (--json for JSON)\n"
    "  show CLUSTER:NAMESPACE:APP|ID     a client, its keys (ours: which epoch) and the\n"
    "                                    scopes it exposes, with their consumers\n"
    "  ensure CLUSTER:NAMESPACE:APP --scopes \"a b\"\n"
    "                                    provision or adopt the client and register\n"
    "                                    this epoch's keys; prints the client_id\n"
    "  delete CLUSTER:NAMESPACE:APP|ID [--permanent]\n"
    "                                    deactivate the client and the scopes it exposes\n"
    "                                    at DigDir (only with --permanent; without it,\n"
    "                                    says what would happen)\n"
    "  adopt CLUSTER:NAMESPACE:APP [--drop-foreign-keys]\n"
    "                                    take over a client another tool registered:\n"
    "                                    registers this provider's keys, keeps the other\n"
    "                                    tool's keys (lists them); with the flag, drops them\n"
    "\n"
    "Needs --digdir-url, --well-known-url, --admin-client-id, --admin-key-file and\n"
    "--admin-cert-file or --admin-kid; ensure and adopt also need --seed-file.\n";

struct verb {
	const char *name;
	int nargs;	/* positional arguments after the verb */
	unsigned flags; /* APP_NEED_* */
	int (*run)(struct app *app, char **args, int64_t deadline_ms, struct err *err);
};

/*
 * config_parse stops at the first word that is not a flag; people put flags
 * after the words too ("ensure a:b:c --scopes x"). Walk the segments with a
 * scratch config to learn which tokens are flags, then parse the flags once,
 * in order, and hand back the words. *ret_flat and *ret_words are malloc'd.
 */
static int parse_args(struct config *cfg, int argc, char **argv, char ***ret_flat,
		      char ***ret_words, int *ret_nwords, struct err *err)
{
	char **flat = calloc((size_t)argc + 1, sizeof(*flat));
	char **words = calloc((size_t)argc + 1, sizeof(*words));
	struct config tmp;
	char **seg = argv;
	int nseg = argc, nflat = 1, nwords = 0, r;

	if (!flat || !words) {
		r = err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
		goto fail;
	}
	flat[0] = argv[0];
	for (int i = 1; i < argc; i++)
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			r = config_parse(cfg, argc, argv, usage, err);
			goto fail;
		}
	for (;;) {
		bool dashdash = false;
		int consumed;

		config_defaults(&tmp);
		r = config_parse(&tmp, nseg, seg, NULL, err);
		if (r != 0)
			goto fail;
		consumed = nseg - tmp.argc;
		for (int i = 1; i < consumed; i++) {
			if (!strcmp(seg[i], "--"))
				dashdash = true;
			else
				flat[nflat++] = seg[i];
		}
		if (tmp.argc == 0)
			break;
		if (dashdash) {
			for (int i = 0; i < tmp.argc; i++)
				words[nwords++] = tmp.argv[i];
			break;
		}
		words[nwords++] = tmp.argv[0];
		seg = tmp.argv;
		nseg = tmp.argc;
	}
	r = config_parse(cfg, nflat, flat, usage, err);
	if (r != 0)
		goto fail;
	*ret_flat = flat;
	*ret_words = words;
	*ret_nwords = nwords;
	return 0;
fail:
	free(flat);
	free(words);
	return r;
}

static const char *str(const json_t *obj, const char *key)
{
	const char *s = json_string_value(json_object_get(obj, key));
	return s ? s : "";
}

static void print_scopes(FILE *f, const json_t *scopes)
{
	json_t *s;
	size_t i;

	for (i = 0; i < json_array_size(scopes) && (s = json_array_get(scopes, i)); i++)
		fprintf(f, "%s%s", i ? " " : "", json_string_value(s) ? json_string_value(s) : "?");
}

/* Collects the listing's clients (a jsonarray_fn, with its reset below). */
static int collect(void *ctx, json_t *client, size_t index, struct err *err)
{
	return json_array_append(ctx, client) < 0
		   ? err_set(err, ERR_INTERNAL, ENOMEM, "out of memory")
		   : 0;
}

static void collect_reset(void *ctx)
{
	json_array_clear(ctx);
}

static int do_list(struct app *app, char **args, int64_t deadline_ms, struct err *err)
{
	json_t *list = json_array(), *c;
	size_t i;
	int r;

	if (!list)
		return err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
	r = digdir_each_client(app->dd, collect, collect_reset, list, deadline_ms, err);
	if (r < 0) {
		json_decref(list);
		return r;
	}
	if (app->cfg->json) {
		json_dumpf(list, stdout, JSON_INDENT(2));
		putchar('\n');
	} else {
		printf("%-36s  %-40s  %s\n", "CLIENT_ID", "DESCRIPTION", "SCOPES");
		for (i = 0; i < json_array_size(list) && (c = json_array_get(list, i)); i++) {
			printf("%-36s  %-40s  ", str(c, "client_id"), str(c, "description"));
			print_scopes(stdout, json_object_get(c, "scopes"));
			putchar('\n');
		}
	}
	json_decref(list);
	return 0;
}

/* "cluster:namespace:app" names a client by description; anything else is a client_id. */
static int find(struct app *app, const char *which, int64_t deadline_ms, json_t **ret,
		struct err *err)
{
	bool by_desc = strchr(which, ':') != NULL;
	json_t *ids = NULL, *c = NULL;
	const char *id = which;
	int r;

	if (by_desc) {
		r = digdir_lookup(app->dd, which, deadline_ms, &ids, err);
		if (r < 0)
			return r;
		id = json_string_value(json_array_get(ids, 0));
	}
	r = id ? digdir_get_client(app->dd, id, deadline_ms, &c, err) : -ENOENT;
	if ((r == -ENOENT || (r == 0 && json_is_false(json_object_get(c, "active"))))) {
		json_decref(c);
		c = NULL;
		r = err_set(err, ERR_NOT_FOUND, ENOENT, "no active client %s %s at DigDir",
			    by_desc ? "with description" : "with client_id", which);
	}
	json_decref(ids);
	if (r == 0)
		*ret = c;
	return r;
}

static void iso_time(json_int_t t, char *buf, size_t len)
{
	time_t tt = (time_t)t;
	struct tm tm;

	if (!gmtime_r(&tt, &tm) || !strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm))
		snprintf(buf, len, "?");
}

/* Public facts of each key only: never anything but kid, type, algorithm, use and expiry. */
static json_t *key_facts(struct app *app, const char *client_id, const json_t *keys)
{
	json_t *out = json_array(), *k, *o;
	char when[32];
	int64_t epoch;
	size_t i;
	bool own;

	for (i = 0; i < json_array_size(keys) && (k = json_array_get(keys, i)); i++) {
		json_t *exp = json_object_get(k, "exp");

		own =
		    app->have_seed && keys_kid_is_own(&app->seed, client_id, str(k, "kid"), &epoch);
		o = json_pack("{s:s, s:s, s:s, s:s, s:b}", "kid", str(k, "kid"), "kty",
			      str(k, "kty"), "alg", str(k, "alg"), "use", str(k, "use"), "own",
			      own);
		if (!o)
			continue;
		if (own)
			json_object_set_new(o, "epoch", json_integer(epoch));
		else if (!app->have_seed)
			json_object_set_new(o, "own", json_null());
		if (json_is_integer(exp)) {
			iso_time(json_integer_value(exp), when, sizeof(when));
			json_object_set_new(o, "exp", json_string(when));
		}
		json_array_append_new(out, o);
	}
	return out;
}

/* DigDir's full name of a scope object. */
static const char *scope_name(const json_t *s)
{
	return str(s, "name");
}

/*
 * The scopes whose description names the client's description, each with
 * its consumers: [{name, active, description, consumers: [{orgno, state}]}].
 */
static int exposed_facts(struct app *app, const char *description, int64_t deadline_ms,
			 json_t **ret, struct err *err)
{
	json_t *owned = NULL, *out = NULL, *s, *acl, *a, *cons, *o;
	size_t i, j;
	int r;

	r = scopes_list_owned(app->dd, description, deadline_ms, &owned, err);
	if (r < 0)
		return r;
	out = json_array();
	json_array_foreach(owned, i, s)
	{
		acl = NULL;
		r = scopes_get_access(app->dd, scope_name(s), deadline_ms, &acl, err);
		if (r < 0) {
			err_prefix(err, "scope %s: ", scope_name(s));
			goto out;
		}
		cons = json_array();
		json_array_foreach(acl, j, a)
		{
			json_array_append_new(cons, json_pack("{s:s, s:s}", "orgno",
							      str(a, "consumer_orgno"), "state",
							      str(a, "state")));
		}
		json_decref(acl);
		o = json_pack("{s:s, s:b, s:s, s:o}", "name", scope_name(s), "active",
			      !json_is_false(json_object_get(s, "active")), "description",
			      str(s, "description"), "consumers", cons);
		json_array_append_new(out, o);
	}
	*ret = out;
	out = NULL;
	r = 0;
out:
	json_decref(out);
	json_decref(owned);
	return r;
}

static int do_show(struct app *app, char **args, int64_t deadline_ms, struct err *err)
{
	json_t *client = NULL, *keys = NULL, *facts = NULL, *exposed = NULL, *k, *out;
	json_t *refused = NULL;
	struct state *st;
	const char *id;
	size_t i;
	int r;

	r = find(app, args[0], deadline_ms, &client, err);
	if (r < 0)
		goto out;
	id = str(client, "client_id");
	r = digdir_get_jwks(app->dd, id, deadline_ms, &keys, err);
	if (r < 0)
		goto out;
	facts = key_facts(app, id, keys);
	r = exposed_facts(app, str(client, "description"), deadline_ms, &exposed, err);
	if (r < 0)
		goto out;
	/* What DigDir refused at this node's last sync lives only in the node's state file. */
	st = provider_state_open(app->cfg);
	refused = state_get_refused(st, str(client, "description"));
	state_close(st);
	if (app->cfg->json) {
		out = json_pack("{s:O, s:O, s:O, s:o}", "client", client, "keys", facts,
				"exposed_scopes", exposed, "refused_consumer_grants",
				refused ? json_incref(refused) : json_array());
		json_dumpf(out, stdout, JSON_INDENT(2));
		putchar('\n');
		json_decref(out);
		goto out;
	}
	printf("client_id:         %s\n", id);
	printf("description:       %s\n", str(client, "description"));
	printf("client_name:       %s\n", str(client, "client_name"));
	printf("integration_type:  %s\n", str(client, "integration_type"));
	printf("scopes:            ");
	print_scopes(stdout, json_object_get(client, "scopes"));
	printf("\ncreated:           %s\n", str(client, "created"));
	printf("last_updated:      %s\n", str(client, "last_updated"));
	printf("keys:              %zu\n", json_array_size(facts));
	for (i = 0; i < json_array_size(facts) && (k = json_array_get(facts, i)); i++) {
		json_t *own = json_object_get(k, "own");
		char whose[48];

		if (json_is_true(own))
			snprintf(whose, sizeof(whose), "ours, epoch %lld",
				 (long long)json_integer_value(json_object_get(k, "epoch")));
		else
			snprintf(whose, sizeof(whose), "%s",
				 json_is_null(own) ? "unknown (no --seed-file)" : "foreign");
		printf("  %s  %s  exp %s\n", str(k, "kid"), whose, str(k, "exp"));
	}
	printf("exposed scopes:    %zu\n", json_array_size(exposed));
	for (i = 0; i < json_array_size(exposed) && (k = json_array_get(exposed, i)); i++) {
		json_t *cons = json_object_get(k, "consumers"), *c;
		size_t j;

		printf("  %s  %s  consumers:", str(k, "name"),
		       json_is_true(json_object_get(k, "active")) ? "active" : "inactive");
		if (!json_array_size(cons))
			printf(" none");
		json_array_foreach(cons, j, c)
		{
			printf(" %s (%s)", str(c, "orgno"), str(c, "state"));
		}
		putchar('\n');
	}
	printf("refused grants:    %zu%s\n", json_array_size(refused),
	       json_array_size(refused) ? " (DigDir refused them at this node's last sync)" : "");
	for (i = 0; i < json_array_size(refused) && (k = json_array_get(refused, i)); i++)
		printf("  %s  organisation %s: %s\n", str(k, "scope"), str(k, "orgno"),
		       str(k, "reason"));
out:
	json_decref(refused);
	json_decref(exposed);
	json_decref(facts);
	json_decref(keys);
	json_decref(client);
	return r;
}

/* Splits a space-separated list in place; returns how many words. */
static size_t split_words(char *s, const char **out, size_t max)
{
	size_t n = 0;

	while (s && *s && n < max) {
		while (*s == ' ' || *s == '\t' || *s == '\n')
			*s++ = '\0';
		if (!*s)
			break;
		out[n++] = s;
		while (*s && *s != ' ' && *s != '\t' && *s != '\n')
			s++;
	}
	return n;
}

static bool valid_description(const char *d)
{
	const char *a = strchr(d, ':'), *b = a ? strchr(a + 1, ':') : NULL;

	return a && b && a > d && b > a + 1 && b[1] && !strchr(b + 1, ':');
}

static int do_ensure(struct app *app, char **args, int64_t deadline_ms, struct err *err)
{
	const char *scopes[64];
	struct digdir_ensure ens = { 0 };
	struct keyset_sync_result ks = { 0 };
	char *buf = NULL;
	const char *client_id = NULL;
	size_t nscopes;
	int64_t epoch;
	int r;

	if (!valid_description(args[0]))
		return err_set(err, ERR_INVALID, EINVAL,
			       "'%s' is not CLUSTER:NAMESPACE:APP (three non-empty parts)",
			       args[0]);
	buf = app->cfg->scopes ? strdup(app->cfg->scopes) : NULL;
	if (app->cfg->scopes && !buf)
		return err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
	nscopes = split_words(buf, scopes, sizeof(scopes) / sizeof(scopes[0]));

	ens =
	    (struct digdir_ensure){ .description = args[0], .scopes = scopes, .nscopes = nscopes };
	r = digdir_ensure_client(app->dd, &ens, deadline_ms, err);
	if (r < 0)
		goto out;
	client_id = ens.client_id;
	epoch = keys_epoch_at((int64_t)time(NULL), app->cfg->epoch_length);
	r = keyset_sync(app->dd, &app->seed, client_id, epoch, app->cfg->epoch_length,
			ens.created ? KEYSET_NEW_CLIENT : 0, deadline_ms, &ks, err);
	if (r < 0) {
		err_prefix(err, "client %s: ", client_id);
		goto out;
	}
	fprintf(stderr, "client %s for %s: %s (epoch %lld)\n", client_id, args[0],
		ks.uploaded ? "keys registered" : "keys already registered", (long long)epoch);
	printf("%s\n", client_id);
out:
	keyset_sync_release(&ks);
	digdir_ensure_release(&ens);
	free(buf);
	return r;
}

static int do_delete(struct app *app, char **args, int64_t deadline_ms, struct err *err)
{
	json_t *client = NULL, *owned = NULL, *s;
	const char *id, *desc;
	size_t i, nactive = 0;
	int r;

	r = find(app, args[0], deadline_ms, &client, err);
	if (r < 0)
		return r;
	id = str(client, "client_id");
	desc = str(client, "description");
	r = scopes_list_owned(app->dd, desc, deadline_ms, &owned, err);
	if (r < 0)
		goto out;
	json_array_foreach(owned, i, s)
	{
		if (!json_is_false(json_object_get(s, "active")))
			nactive++;
	}
	if (!app->cfg->permanent) {
		fprintf(
		    stderr,
		    "client delete: would deactivate client %s (%s) at DigDir.\n"
		    "  Pods using it lose access once their tokens expire, its keys stop working,\n"
		    "  and DigDir keeps it inactive: it cannot be reactivated, a later mount\n"
		    "  provisions a new client_id.\n",
		    id, desc);
		if (nactive)
			fprintf(stderr,
				"  It would also deactivate the %zu scope(s) it exposes; their "
				"consumers lose access:\n",
				nactive);
		json_array_foreach(owned, i, s)
		{
			if (!json_is_false(json_object_get(s, "active")))
				fprintf(stderr, "    %s\n", scope_name(s));
		}
		fprintf(stderr, "Nothing was changed. Run again with --permanent to do it.\n");
		r = err_set(err, ERR_INVALID, EPERM, "refused without --permanent");
		goto out;
	}
	/* Scopes first: a scope whose owner is gone would be nobody's to switch off. */
	json_array_foreach(owned, i, s)
	{
		if (json_is_false(json_object_get(s, "active")))
			continue;
		r = scopes_deactivate(app->dd, scope_name(s), deadline_ms, err);
		if (r < 0) {
			err_prefix(err, "deactivating exposed scope %s: ", scope_name(s));
			goto out;
		}
		printf("deactivated exposed scope %s (its consumers lose access)\n", scope_name(s));
	}
	r = digdir_delete_client(app->dd, id, deadline_ms, err);
	if (r == 0)
		printf("deleted client %s (%s)\n", id, desc);
out:
	json_decref(owned);
	json_decref(client);
	return r;
}

/*
 * Takes over a client registered by another tool: registers this provider's
 * keys as a Mount would, keeping the other tool's keys while there is room;
 * with --drop-foreign-keys only our keys remain. Prints which keys are foreign
 * and, with the flag, which were dropped.
 */
static int do_adopt(struct app *app, char **args, int64_t deadline_ms, struct err *err)
{
	json_t *client = NULL, *before = NULL, *after, *k;
	bool drop = app->cfg->drop_foreign_keys;
	struct keyset_sync_result ks = { 0 };
	const char *id;
	size_t i, nforeign = 0, ndropped = 0;
	int64_t epoch, e;
	int r;

	if (!valid_description(args[0]))
		return err_set(err, ERR_INVALID, EINVAL,
			       "'%s' is not CLUSTER:NAMESPACE:APP (three non-empty parts)",
			       args[0]);
	r = find(app, args[0], deadline_ms, &client, err);
	if (r < 0)
		goto out;
	id = str(client, "client_id");
	r = digdir_get_jwks(app->dd, id, deadline_ms, &before, err);
	if (r < 0)
		goto out;
	epoch = keys_epoch_at((int64_t)time(NULL), app->cfg->epoch_length);
	r = keyset_sync(app->dd, &app->seed, id, epoch, app->cfg->epoch_length,
			drop ? KEYSET_DROP_FOREIGN : 0, deadline_ms, &ks, err);
	if (r < 0) {
		err_prefix(err, "client %s: ", id);
		goto out;
	}
	after = ks.registered;
	printf("client %s (%s) adopted: %s (epoch %lld)\n", id, args[0],
	       ks.uploaded ? "keys updated" : "keys already as they should be", (long long)epoch);
	json_array_foreach(before, i, k)
	{
		const char *kid = str(k, "kid");

		if (keys_kid_is_own(&app->seed, id, kid, &e))
			continue;
		nforeign++;
		if (!keyset_has_kid(after, kid)) {
			ndropped++;
			printf("dropped foreign key %s\n", kid);
		} else {
			printf("kept foreign key %s%s\n", kid,
			       drop ? " (DigDir did not remove it)" : "");
		}
	}
	if (!nforeign)
		printf("no foreign keys: only this provider's keys are registered\n");
	else if (!drop && nforeign > ndropped)
		printf(
		    "Pods of the other tool keep working with the kept keys. When every pod uses "
		    "this provider's files,\nrun again with --drop-foreign-keys to remove them so "
		    "only this provider's keys remain.\n");
	json_array_foreach(after, i, k)
	{
		if (keys_kid_is_own(&app->seed, id, str(k, "kid"), &e))
			printf("our key %s (epoch %lld)\n", str(k, "kid"), (long long)e);
	}
out:
	keyset_sync_release(&ks);
	json_decref(before);
	json_decref(client);
	return r;
}

static const struct verb verbs[] = {
	{ "list", 0, APP_NEED_DIGDIR, do_list },
	{ "show", 1, APP_NEED_DIGDIR, do_show },
	{ "ensure", 1, APP_NEED_DIGDIR | APP_NEED_SEED, do_ensure },
	{ "delete", 1, APP_NEED_DIGDIR, do_delete },
	{ "adopt", 1, APP_NEED_DIGDIR | APP_NEED_SEED, do_adopt },
};

int cmd_client(int argc, char **argv)
{
	const struct verb *v = NULL;
	struct err err = { 0 };
	struct config cfg;
	struct app app = { 0 };
	char **flat = NULL, **words = NULL;
	int nwords = 0, r, status = 1;

	config_defaults(&cfg);
	r = parse_args(&cfg, argc, argv, &flat, &words, &nwords, &err);
	if (r == 1)
		return 0;
	if (r < 0) {
		fprintf(stderr, "maskinporten-csi-provider client: %s\n", err.msg);
		return 2;
	}
	log_init(cfg.log_level, LOG_FORMAT_TEXT);
	for (size_t i = 0; nwords > 0 && i < sizeof(verbs) / sizeof(verbs[0]); i++)
		if (!strcmp(words[0], verbs[i].name))
			v = &verbs[i];
	if (!v || nwords - 1 != v->nargs) {
		fprintf(stderr, "%s%s", nwords > 0 && !v ? "client: unknown verb\n\n" : "", usage);
		status = 2;
		goto out;
	}

	r = app_open(&app, &cfg, v->flags, &err);
	if (r == 0)
		r = v->run(&app, words + 1, clock_now_ms() + cfg.mount_timeout_ms, &err);
	if (r < 0) {
		fprintf(stderr, "maskinporten-csi-provider client %s: %s\n", v->name, err.msg);
		goto out;
	}
	status = 0;
out:
	app_close(&app);
	free(flat);
	free(words);
	return status;
}
