/*
 * scopes: exposed scopes. Parses the `exposes` declaration, builds the
 * registration bodies exactly as digdirator does, and reconciles DigDir
 * with the declaration: create, update, reactivate (PUT active:true),
 * deactivate (DELETE), and consumer grants and revocations. It writes only
 * what differs, so a second sync of the same declaration makes no writes.
 *
 * Must never change a scope whose description names another app, and never
 * logs (the Mount handler reports the error once).
 */
#include <errno.h>
#include <pthread.h>
#include <regex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http.h"
#include "keys.h"
#include "scopes.h"
#include "timespec.h"

#define CACHE_MAX 4096

/*
 * The CRD's name pattern, ^([a-zæøå0-9]+\/?)+(\:[a-zæøå0-9]+)*[a-zæøå0-9]+(\.[a-zæøå0-9]+)*$,
 * with the letter class spelled as byte alternatives: the process never
 * sets a locale, so regcomp works on bytes and æøå are two-byte UTF-8.
 */
#define L	     "([a-z0-9]|\xc3\xa6|\xc3\xb8|\xc3\xa5)"
#define NAME_PATTERN "^(" L "+/?)+(:" L "+)*" L "+(\\." L "+)*$"

static regex_t name_re;
static int name_re_rc = -1;
static pthread_once_t name_re_once = PTHREAD_ONCE_INIT;

static void name_re_init(void)
{
	name_re_rc = regcomp(&name_re, NAME_PATTERN, REG_EXTENDED | REG_NOSUB);
}

static bool name_valid(const char *s)
{
	pthread_once(&name_re_once, name_re_init);
	return name_re_rc == 0 && strlen(s) <= SCOPES_MAX_NAME &&
	       regexec(&name_re, s, 0, NULL, 0) == 0;
}

static bool product_valid(const char *s)
{
	if (!*s || strlen(s) > SCOPES_MAX_NAME)
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9')))
			return false;
	return true;
}

static bool integration_valid(const char *s)
{
	if (!*s || strlen(s) > 32)
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || *s == '_'))
			return false;
	return true;
}

bool scopes_orgno_valid(const char *orgno)
{
	static const int weights[8] = { 3, 2, 7, 6, 5, 4, 3, 2 };
	int sum = 0, check;

	if (strlen(orgno) != 9)
		return false;
	for (int i = 0; i < 9; i++)
		if (orgno[i] < '0' || orgno[i] > '9')
			return false;
	for (int i = 0; i < 8; i++)
		sum += (orgno[i] - '0') * weights[i];
	check = 11 - sum % 11;
	if (check == 11)
		check = 0;
	return check != 10 && check == orgno[8] - '0';
}

/* ---- parsing ------------------------------------------------------------ */

/* An ERR_INVALID naming the entry (index and, when known, name) and the field. */
__attribute__((format(printf, 5, 6))) static int bad(struct err *err, size_t i, const char *name,
						     const char *field, const char *fmt, ...)
{
	char what[320];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	if (name)
		return err_set(
		    err, ERR_INVALID, EINVAL,
		    "parameter \"exposes\": exposes[%zu] (name \"%.64s\"): field \"%s\" %s", i,
		    name, field, what);
	return err_set(err, ERR_INVALID, EINVAL,
		       "parameter \"exposes\": exposes[%zu]: field \"%s\" %s", i, field, what);
}

static int cmp_orgno(const void *a, const void *b)
{
	return strcmp(a, b);
}

static void entry_free(struct scopes_entry *e)
{
	free(e->name);
	free(e->product);
	free(e->subscope);
	json_decref(e->integrations);
	free(e->consumers);
}

void scopes_decl_free(struct scopes_decl *decl)
{
	if (!decl)
		return;
	for (size_t i = 0; i < decl->n; i++)
		entry_free(&decl->entries[i]);
	free(decl->entries);
	free(decl);
}

static int parse_consumers(const json_t *v, size_t i, const char *name, struct scopes_entry *e,
			   struct err *err)
{
	const char *key, *orgno;
	json_t *c, *val;
	size_t j, n = 0;

	if (!json_is_array(v))
		return bad(err, i, name, "consumers", "must be a list of {\"orgno\", \"name\"}");
	if (json_array_size(v) > SCOPES_MAX_CONSUMERS)
		return bad(err, i, name, "consumers", "has more than %d entries",
			   SCOPES_MAX_CONSUMERS);
	e->consumers = calloc(json_array_size(v) + 1, sizeof(*e->consumers));
	if (!e->consumers)
		return err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
	json_array_foreach(v, j, c)
	{
		if (!json_is_object(c))
			return bad(err, i, name, "consumers", "entry %zu is not an object", j);
		json_object_foreach(c, key, val)
		{
			if (strcmp(key, "orgno") && strcmp(key, "name"))
				return bad(
				    err, i, name, "consumers",
				    "entry %zu: unknown field \"%.40s\" (known: orgno, name)", j,
				    key);
			if (!strcmp(key, "name") && !json_is_string(val))
				return bad(err, i, name, "consumers",
					   "entry %zu: \"name\" must be a string", j);
		}
		orgno = json_string_value(json_object_get(c, "orgno"));
		if (!orgno)
			return bad(err, i, name, "consumers",
				   "entry %zu: \"orgno\" is required (a string of nine digits)", j);
		if (strlen(orgno) != 9 || strspn(orgno, "0123456789") != 9)
			return bad(err, i, name, "consumers",
				   "entry %zu: orgno \"%.20s\" is not nine digits", j, orgno);
		if (!scopes_orgno_valid(orgno))
			return bad(err, i, name, "consumers",
				   "entry %zu: orgno %s has a wrong check digit (not an "
				   "organisation number)",
				   j, orgno);
		memcpy(e->consumers[n++], orgno, 10);
	}
	qsort(e->consumers, n, sizeof(*e->consumers), cmp_orgno);
	/* Duplicates collapse: a consumer is granted once. */
	e->nconsumers = 0;
	for (j = 0; j < n; j++)
		if (!e->nconsumers || strcmp(e->consumers[e->nconsumers - 1], e->consumers[j]))
			memmove(e->consumers[e->nconsumers++], e->consumers[j], 10);
	return 0;
}

static bool known_key(const char *key)
{
	static const char *const keys[] = { "name",
					    "product",
					    "enabled",
					    "atMaxAge",
					    "allowedIntegrations",
					    "accessibleForAll",
					    "delegationSource",
					    "separator",
					    "visibility",
					    "consumers" };

	for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++)
		if (!strcmp(key, keys[k]))
			return true;
	return false;
}

static int parse_entry(const json_t *o, size_t i, struct scopes_entry *e, struct err *err)
{
	const char *name = NULL, *product, *key, *s;
	char sep;
	json_t *v, *t;
	size_t j;

	if (!json_is_object(o))
		return err_set(err, ERR_INVALID, EINVAL,
			       "parameter \"exposes\": exposes[%zu] is not an object", i);
	v = json_object_get(o, "name");
	if (json_is_string(v))
		name = json_string_value(v);
	json_object_foreach((json_t *)o, key, v)
	{
		if (!known_key(key))
			return bad(err, i, name, key,
				   "is unknown (known: name, product, enabled, atMaxAge, "
				   "allowedIntegrations, accessibleForAll, delegationSource, "
				   "separator, visibility, consumers)");
	}
	if (!name)
		return bad(err, i, NULL, "name", "is required (a string)");
	if (!name_valid(name))
		return bad(err, i, name, "name",
			   "must match ^([a-zæøå0-9]+\\/?)+(\\:[a-zæøå0-9]+)*[a-zæøå0-9]+"
			   "(\\.[a-zæøå0-9]+)*$ (at most %d bytes)",
			   SCOPES_MAX_NAME);
	product = json_string_value(json_object_get(o, "product"));
	if (!product)
		return bad(err, i, name, "product", "is required (a string)");
	if (!product_valid(product))
		return bad(err, i, name, "product", "must match ^[a-z0-9]+$");

	v = json_object_get(o, "enabled");
	if (!json_is_boolean(v))
		return bad(err, i, name, "enabled", "is required (true or false)");
	e->enabled = json_is_true(v);

	e->at_max_age = SCOPES_AT_MAX_AGE_MIN;
	v = json_object_get(o, "atMaxAge");
	if (v) {
		if (!json_is_integer(v) || json_integer_value(v) < SCOPES_AT_MAX_AGE_MIN ||
		    json_integer_value(v) > SCOPES_AT_MAX_AGE_MAX)
			return bad(err, i, name, "atMaxAge", "must be an integer from %d to %d",
				   SCOPES_AT_MAX_AGE_MIN, SCOPES_AT_MAX_AGE_MAX);
		e->at_max_age = (long)json_integer_value(v);
	}

	v = json_object_get(o, "allowedIntegrations");
	if (v) {
		if (!json_is_array(v) || json_array_size(v) == 0 || json_array_size(v) > 16)
			return bad(err, i, name, "allowedIntegrations",
				   "must be a list of 1 to 16 integration types");
		json_array_foreach(v, j, t)
		{
			if (!json_is_string(t) || !integration_valid(json_string_value(t)))
				return bad(err, i, name, "allowedIntegrations",
					   "entry %zu must be an integration type such as "
					   "\"maskinporten\"",
					   j);
		}
		e->integrations = json_deep_copy(v);
	} else {
		e->integrations = json_pack("[s]", "maskinporten");
	}
	if (!e->integrations)
		return err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");

	v = json_object_get(o, "accessibleForAll");
	if (v && !json_is_boolean(v))
		return bad(err, i, name, "accessibleForAll", "must be true or false");
	e->accessible_for_all = json_is_true(v);

	v = json_object_get(o, "delegationSource");
	if (v) {
		s = json_string_value(v);
		if (!s || strcmp(s, "altinn"))
			return bad(err, i, name, "delegationSource", "must be \"altinn\"");
		e->altinn = true;
	}

	sep = 0;
	v = json_object_get(o, "separator");
	if (v) {
		s = json_string_value(v);
		if (!s || strlen(s) != 1 || !strchr("/:.", s[0]))
			return bad(err, i, name, "separator", "must be \"/\", \":\" or \".\"");
		sep = s[0];
	}
	if (e->altinn && sep != '/')
		return bad(err, i, name, "separator",
			   "must be \"/\" when delegationSource is set (DigDir's rule for "
			   "delegable scopes)");
	if (!sep)
		sep = strchr(name, '/') ? '/' : ':';

	v = json_object_get(o, "visibility");
	if (v) {
		s = json_string_value(v);
		if (!s || (strcmp(s, "public") && strcmp(s, "private")))
			return bad(err, i, name, "visibility", "must be \"public\" or \"private\"");
		e->private_visibility = !strcmp(s, "private");
	}

	v = json_object_get(o, "consumers");
	if (v && parse_consumers(v, i, name, e, err) < 0)
		return -EINVAL;

	e->name = strdup(name);
	e->product = strdup(product);
	if (!e->name || !e->product || asprintf(&e->subscope, "%s%c%s", product, sep, name) < 0) {
		e->subscope = NULL;
		return err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
	}
	return 0;
}

/* The entry with defaults filled in, for the hash: equal meaning, equal text. */
static json_t *normalised(const struct scopes_entry *e)
{
	json_t *o, *cons = json_array();

	for (size_t j = 0; cons && j < e->nconsumers; j++)
		json_array_append_new(cons, json_string(e->consumers[j]));
	o = json_pack("{s:s, s:b, s:b, s:b, s:b, s:I, s:O, s:o?}", "subscope", e->subscope,
		      "enabled", e->enabled, "accessibleForAll", e->accessible_for_all, "private",
		      e->private_visibility, "altinn", e->altinn, "atMaxAge",
		      (json_int_t)e->at_max_age, "allowedIntegrations", e->integrations,
		      "consumers", cons);
	return o;
}

int scopes_parse(const char *text, struct scopes_decl **ret, struct err *err)
{
	struct scopes_decl *d = NULL;
	json_t *doc = NULL, *norm = NULL, *o;
	json_error_t jerr;
	char *canon = NULL;
	size_t i, j;
	int r;

	doc = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
	if (!doc) {
		r = err_set(err, ERR_INVALID, EINVAL,
			    "parameter \"exposes\" is not valid JSON (%s at line %d column %d); "
			    "write it as a JSON list of objects",
			    jerr.text, jerr.line, jerr.column);
		goto out;
	}
	if (!json_is_array(doc) || json_array_size(doc) > SCOPES_MAX_ENTRIES) {
		r = err_set(err, ERR_INVALID, EINVAL,
			    "parameter \"exposes\" must be a JSON list of at most %d objects",
			    SCOPES_MAX_ENTRIES);
		goto out;
	}
	d = calloc(1, sizeof(*d));
	norm = json_array();
	if (!d || !norm || !(d->entries = calloc(json_array_size(doc) + 1, sizeof(*d->entries)))) {
		r = err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
		goto out;
	}
	json_array_foreach(doc, i, o)
	{
		d->n++;
		r = parse_entry(o, i, &d->entries[i], err);
		if (r < 0)
			goto out;
		for (j = 0; j < i; j++)
			if (!strcmp(d->entries[j].subscope, d->entries[i].subscope)) {
				r = bad(err, i, d->entries[i].name, "name",
					"gives scope \"%s\", the same as exposes[%zu]: declare "
					"each scope once",
					d->entries[i].subscope, j);
				goto out;
			}
		if (json_array_append_new(norm, normalised(&d->entries[i])) < 0) {
			r = err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
			goto out;
		}
	}
	canon = json_dumps(norm, JSON_COMPACT | JSON_SORT_KEYS);
	if (!canon) {
		r = err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
		goto out;
	}
	keys_sha256_hex(canon, strlen(canon), 32, d->hash);
	*ret = d;
	d = NULL;
	r = 0;
out:
	free(canon);
	json_decref(norm);
	json_decref(doc);
	scopes_decl_free(d);
	return r;
}

/* ---- registration bodies ------------------------------------------------ */

bool scopes_owned_by(const json_t *scope, const char *app_description)
{
	const char *d = json_string_value(json_object_get(scope, "description"));
	size_t dl, al = strlen(app_description);

	if (!d)
		return false;
	dl = strlen(d);
	/* "<product> - <app>" with a non-empty product. */
	return dl > al + 3 && !strcmp(d + dl - al, app_description) &&
	       !strncmp(d + dl - al - 3, " - ", 3);
}

json_t *scopes_registration(const struct scopes_entry *e, const char *app_description,
			    const char *prefix, const char *delegation_issuer)
{
	char *desc = NULL;
	json_t *o = NULL;

	if (asprintf(&desc, "%s - %s", e->product, app_description) < 0)
		return NULL;
	/* Field order as digdirator serialises it. */
	o = json_pack("{s:b, s:b, s:O, s:I, s:s, s:s}", "accessible_for_all", e->accessible_for_all,
		      "active", e->enabled, "allowed_integration_types", e->integrations,
		      "at_max_age", (json_int_t)e->at_max_age, "description", desc, "name", "");
	free(desc);
	if (!o)
		return NULL;
	if (prefix && json_object_set_new(o, "prefix", json_string(prefix)) < 0)
		goto fail;
	if (json_object_set_new(o, "requires_pseudonymous_tokens", json_false()) < 0 ||
	    json_object_set_new(o, "requires_user_authentication", json_false()) < 0 ||
	    json_object_set_new(o, "requires_user_consent", json_false()) < 0 ||
	    json_object_set_new(o, "subscope", json_string(e->subscope)) < 0 ||
	    json_object_set_new(o, "token_type", json_string("SELF_CONTAINED")) < 0 ||
	    json_object_set_new(o, "visibility",
				json_string(e->private_visibility ? "PRIVATE" : "PUBLIC")) < 0)
		goto fail;
	if (delegation_issuer &&
	    json_object_set_new(o, "delegation_source", json_string(delegation_issuer)) < 0)
		goto fail;
	return o;
fail:
	json_decref(o);
	return NULL;
}

bool scopes_differs(const json_t *have, const json_t *want)
{
	const char *key;
	json_t *v;

	json_object_foreach((json_t *)want, key, v)
	{
		/* DigDir derives name; prefix and subscope identify the scope. */
		if (!strcmp(key, "name") || !strcmp(key, "prefix") || !strcmp(key, "subscope"))
			continue;
		if (!json_equal(v, json_object_get(have, key)))
			return true;
	}
	return false;
}

/* ---- DigDir calls ------------------------------------------------------- */

/* "<base><escaped scope>", e.g. "/scopes?scope=test%3Aa%3Ab". */
static char *scope_path(const char *base, const char *full_name)
{
	return digdir_path(base, full_name, "");
}

static int list_all(struct digdir *dd, int64_t deadline_ms, json_t **ret, struct err *err)
{
	json_t *list = NULL;
	int r;

	r = digdir_call(dd, "GET", "/scopes?inactive=true", "GET /scopes", NULL, true, deadline_ms,
			&list, err);
	if (r < 0)
		return r;
	if (!json_is_array(list)) {
		json_decref(list);
		return err_set(err, ERR_BAD_RESPONSE, EPROTO,
			       "DigDir GET /scopes: answer is not a list of scopes");
	}
	*ret = list;
	return 0;
}

int scopes_list_owned(struct digdir *dd, const char *app_description, int64_t deadline_ms,
		      json_t **ret, struct err *err)
{
	json_t *list = NULL, *out = NULL, *s;
	size_t i;
	int r;

	r = list_all(dd, deadline_ms, &list, err);
	if (r < 0)
		return r;
	out = json_array();
	if (!out) {
		json_decref(list);
		return err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
	}
	json_array_foreach(list, i, s)
	{
		if (scopes_owned_by(s, app_description))
			json_array_append(out, s);
	}
	json_decref(list);
	*ret = out;
	return 0;
}

int scopes_get_access(struct digdir *dd, const char *full_name, int64_t deadline_ms, json_t **ret,
		      struct err *err)
{
	char *path = scope_path("/scopes/access?scope=", full_name);
	json_t *acl = NULL;
	int r;

	if (!path)
		return err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
	r = digdir_call(dd, "GET", path, "GET /scopes/access", NULL, true, deadline_ms, &acl, err);
	free(path);
	if (r < 0)
		return r;
	if (json_is_null(acl)) {
		json_decref(acl);
		acl = json_array();
	}
	if (!json_is_array(acl)) {
		json_decref(acl);
		return err_set(err, ERR_BAD_RESPONSE, EPROTO,
			       "DigDir GET /scopes/access: answer is not a list");
	}
	*ret = acl;
	return 0;
}

int scopes_deactivate(struct digdir *dd, const char *full_name, int64_t deadline_ms,
		      struct err *err)
{
	char *path = scope_path("/scopes?scope=", full_name);
	int r;

	if (!path)
		return err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
	r = digdir_call(dd, "DELETE", path, "DELETE /scopes", NULL, true, deadline_ms, NULL, err);
	free(path);
	return r;
}

/* The issuer of the altinn delegation source, from GET /delegationsources. */
static int altinn_issuer(struct digdir *dd, int64_t deadline_ms, char **ret, struct err *err)
{
	json_t *list = NULL, *s;
	const char *name, *issuer;
	size_t i;
	int r;

	r = digdir_call(dd, "GET", "/delegationsources", "GET /delegationsources", NULL, true,
			deadline_ms, &list, err);
	if (r < 0)
		return r;
	r = err_set(err, ERR_UPSTREAM, ENOENT,
		    "DigDir lists no delegation source \"altinn\" (GET /delegationsources)");
	json_array_foreach(list, i, s)
	{
		name = json_string_value(json_object_get(s, "name"));
		issuer = json_string_value(json_object_get(s, "issuer"));
		if (name && issuer && !strcmp(name, "altinn")) {
			*ret = strdup(issuer);
			r = *ret ? 0 : err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
			break;
		}
	}
	json_decref(list);
	return r;
}

static const char *state_of(const json_t *acl, const char *orgno)
{
	json_t *a;
	size_t i;

	json_array_foreach(acl, i, a)
	{
		const char *o = json_string_value(json_object_get(a, "consumer_orgno"));
		if (o && !strcmp(o, orgno)) {
			const char *s = json_string_value(json_object_get(a, "state"));
			return s ? s : "";
		}
	}
	return NULL;
}

static bool wanted(const struct scopes_entry *e, const char *orgno)
{
	for (size_t j = 0; j < e->nconsumers; j++)
		if (!strcmp(e->consumers[j], orgno))
			return true;
	return false;
}

/* Grants and revokes so that exactly the declared consumers have access (reference 4.4). */
static int sync_acl(struct digdir *dd, const char *full, const struct scopes_entry *e,
		    int64_t deadline_ms, struct err *err)
{
	json_t *acl = NULL, *a;
	char *esc = http_escape(full), *path = NULL;
	const char *state, *orgno;
	size_t i;
	int r;

	if (!esc)
		return err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
	r = scopes_get_access(dd, full, deadline_ms, &acl, err);
	if (r < 0)
		goto out;
	for (i = 0; i < e->nconsumers; i++) {
		state = state_of(acl, e->consumers[i]);
		if (state && !strcmp(state, "APPROVED"))
			continue;
		if (asprintf(&path, "/scopes/access/%s?scope=%s", e->consumers[i], esc) < 0) {
			path = NULL;
			r = err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
			goto out;
		}
		r = digdir_call(dd, "PUT", path, "PUT /scopes/access/{orgno}", NULL, true,
				deadline_ms, NULL, err);
		free(path);
		path = NULL;
		if (r < 0) {
			err_prefix(err, "granting organisation %s access: ", e->consumers[i]);
			goto out;
		}
	}
	json_array_foreach(acl, i, a)
	{
		orgno = json_string_value(json_object_get(a, "consumer_orgno"));
		state = json_string_value(json_object_get(a, "state"));
		if (!orgno || wanted(e, orgno) || (state && !strcmp(state, "DENIED")))
			continue;
		if (asprintf(&path, "/scopes/access/%s?scope=%s", orgno, esc) < 0) {
			path = NULL;
			r = err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
			goto out;
		}
		r = digdir_call(dd, "DELETE", path, "DELETE /scopes/access/{orgno}", NULL, true,
				deadline_ms, NULL, err);
		free(path);
		path = NULL;
		if (r < 0) {
			err_prefix(err, "revoking organisation %s's access: ", orgno);
			goto out;
		}
	}
	r = 0;
out:
	json_decref(acl);
	free(esc);
	return r;
}

static json_t *find_subscope(const json_t *list, const char *subscope)
{
	json_t *s;
	size_t i;

	json_array_foreach(list, i, s)
	{
		const char *sub = json_string_value(json_object_get(s, "subscope"));
		if (sub && !strcmp(sub, subscope))
			return s;
	}
	return NULL;
}

/* DigDir's full name of a registered scope: "name", else prefix:subscope. */
static char *full_name(const json_t *s)
{
	const char *name = json_string_value(json_object_get(s, "name"));
	const char *prefix = json_string_value(json_object_get(s, "prefix"));
	const char *sub = json_string_value(json_object_get(s, "subscope"));
	char *out = NULL;

	if (name && *name)
		return strdup(name);
	if (prefix && sub && asprintf(&out, "%s:%s", prefix, sub) < 0)
		out = NULL;
	return out;
}

/*
 * One reconciliation (reference 4.3). Checks ownership of every declared
 * scope before the first write. *ret_raced says a create failed in a way
 * another node's create explains (worth one more round).
 */
static int reconcile(struct digdir *dd, const char *app, const struct scopes_decl *decl,
		     int64_t deadline_ms, json_t *names, bool *ret_raced, struct err *err)
{
	json_t *list = NULL, *have, *want = NULL, *created = NULL, *s;
	const char *prefix = NULL, *owner;
	char *issuer = NULL, *full = NULL, *path = NULL;
	size_t i;
	int r;

	*ret_raced = false;
	r = list_all(dd, deadline_ms, &list, err);
	if (r < 0)
		goto out;
	/* New scopes get the organisation's prefix as DigDir shows it on its scopes. */
	json_array_foreach(list, i, s)
	{
		prefix = json_string_value(json_object_get(s, "prefix"));
		if (prefix && *prefix)
			break;
		prefix = NULL;
	}
	for (i = 0; i < decl->n; i++) {
		const struct scopes_entry *e = &decl->entries[i];

		if (e->altinn && !issuer) {
			r = altinn_issuer(dd, deadline_ms, &issuer, err);
			if (r < 0)
				goto out;
		}
		have = find_subscope(list, e->subscope);
		if (have && !scopes_owned_by(have, app)) {
			owner = json_string_value(json_object_get(have, "description"));
			r = err_set(err, ERR_CONFLICT, EPERM,
				    "exposed scope \"%s\" (exposes[%zu]) already exists at DigDir "
				    "and belongs to \"%s\", not to \"%s - %s\": it is not taken "
				    "over; choose another name or product, or have its owner "
				    "remove it",
				    e->subscope, i, owner && *owner ? owner : "(no description)",
				    e->product, app);
			goto out;
		}
	}

	for (i = 0; i < decl->n; i++) {
		const struct scopes_entry *e = &decl->entries[i];
		const char *own_prefix;

		have = find_subscope(list, e->subscope);
		own_prefix = have ? json_string_value(json_object_get(have, "prefix")) : prefix;
		json_decref(want);
		want = scopes_registration(e, app, own_prefix, e->altinn ? issuer : NULL);
		if (!want) {
			r = err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
			goto out;
		}
		free(full);
		full = NULL;
		if (!have) {
			/* A disabled scope that does not exist needs nothing. */
			if (!e->enabled)
				continue;
			json_decref(created);
			created = NULL;
			r = digdir_call(dd, "POST", "/scopes", "POST /scopes", want, false,
					deadline_ms, &created, err);
			if (r < 0) {
				*ret_raced =
				    err && (err->http_status == 400 || err->http_status == 409);
				err_prefix(err, "creating exposed scope %s: ", e->subscope);
				goto out;
			}
			full = full_name(created);
		} else {
			full = full_name(have);
			if (!full) {
				r = err_set(err, ERR_BAD_RESPONSE, EPROTO,
					    "DigDir GET /scopes: scope %s has no name",
					    e->subscope);
				goto out;
			}
			if (!e->enabled) {
				/* Deactivate once; an inactive scope stays as it is. */
				if (!json_is_false(json_object_get(have, "active"))) {
					r = scopes_deactivate(dd, full, deadline_ms, err);
					if (r < 0) {
						err_prefix(err,
							   "deactivating exposed scope %s: ", full);
						goto out;
					}
				}
				continue;
			}
			if (scopes_differs(have, want)) {
				free(path);
				path = scope_path("/scopes?scope=", full);
				if (!path) {
					r = err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
					goto out;
				}
				r = digdir_call(dd, "PUT", path, "PUT /scopes", want, true,
						deadline_ms, NULL, err);
				if (r < 0) {
					err_prefix(err, "%s exposed scope %s: ",
						   json_is_false(json_object_get(have, "active"))
						       ? "reactivating"
						       : "updating",
						   full);
					goto out;
				}
			}
		}
		if (!full) {
			r = err_set(err, ERR_BAD_RESPONSE, EPROTO,
				    "DigDir POST /scopes: the answer names no scope");
			goto out;
		}
		r = sync_acl(dd, full, e, deadline_ms, err);
		if (r < 0) {
			err_prefix(err, "exposed scope %s: ", full);
			goto out;
		}
		if (json_array_append_new(names, json_string(full)) < 0) {
			r = err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
			goto out;
		}
	}
	r = 0;
out:
	free(path);
	free(full);
	free(issuer);
	json_decref(created);
	json_decref(want);
	json_decref(list);
	return r;
}

static char *join(const json_t *names)
{
	size_t len = 1, at = 0, i;
	json_t *s;
	char *out;

	json_array_foreach(names, i, s) len += strlen(json_string_value(s)) + 1;
	out = malloc(len);
	if (!out)
		return NULL;
	json_array_foreach(names, i, s)
	{
		size_t n = strlen(json_string_value(s));

		if (at)
			out[at++] = ' ';
		memcpy(out + at, json_string_value(s), n);
		at += n;
	}
	out[at] = '\0';
	return out;
}

/* ---- the per-app cache -------------------------------------------------- */

struct cached {
	char *description;
	char hash[65];
	char *names;	   /* NULL until a sync succeeded */
	int64_t synced_ms; /* http_now_ms() of the last successful sync */
	int64_t used_ms;
	bool busy; /* a sync runs: others wait for it */
	unsigned waiters;
};

static struct {
	pthread_mutex_t lock;
	pthread_cond_t done;
	struct cached **v;
	size_t n, cap;
} cache = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, 0, 0 };

static void cached_free(struct cached *c)
{
	if (!c)
		return;
	free(c->description);
	free(c->names);
	free(c);
}

/* With cache.lock held: the app's entry, made (evicting the least recently used) when missing. */
static struct cached *cache_get(const char *description, int64_t now)
{
	struct cached *c;
	size_t i, victim = SIZE_MAX;

	for (i = 0; i < cache.n; i++)
		if (!strcmp(cache.v[i]->description, description))
			return cache.v[i];
	if (cache.n == CACHE_MAX) {
		for (i = 0; i < cache.n; i++)
			if (!cache.v[i]->busy && !cache.v[i]->waiters &&
			    (victim == SIZE_MAX || cache.v[i]->used_ms < cache.v[victim]->used_ms))
				victim = i;
		if (victim == SIZE_MAX)
			return NULL;
		cached_free(cache.v[victim]);
		cache.v[victim] = cache.v[--cache.n];
	}
	if (cache.n == cache.cap) {
		size_t cap = cache.cap ? cache.cap * 2 : 16;
		struct cached **v = realloc(cache.v, cap * sizeof(*v));

		if (!v)
			return NULL;
		cache.v = v;
		cache.cap = cap;
	}
	c = calloc(1, sizeof(*c));
	if (!c || !(c->description = strdup(description))) {
		free(c);
		return NULL;
	}
	c->used_ms = now;
	cache.v[cache.n++] = c;
	return c;
}

static bool transient(enum err_kind kind)
{
	return kind == ERR_UNAVAILABLE || kind == ERR_TIMEOUT || kind == ERR_THROTTLED ||
	       kind == ERR_BAD_RESPONSE;
}

/* Waits on cache.done until deadline_ms (http_now_ms() clock). 0 or -ETIMEDOUT. */
static int wait_done(int64_t deadline_ms)
{
	int64_t left = deadline_ms - http_now_ms();
	struct timespec ts;

	if (left <= 0)
		return -ETIMEDOUT;
	ts = timespec_in_ms(CLOCK_REALTIME, left);
	return pthread_cond_timedwait(&cache.done, &cache.lock, &ts) == ETIMEDOUT ? -ETIMEDOUT : 0;
}

int scopes_sync(struct digdir *dd, const char *app_description, const struct scopes_decl *decl,
		long revalidate_s, int64_t deadline_ms, char **ret_names, struct err *err)
{
	struct err serr = { 0 };
	struct cached *c;
	json_t *names = NULL;
	char *out = NULL;
	bool raced = false;
	int64_t now = http_now_ms();
	int r;

	pthread_mutex_lock(&cache.lock);
	c = cache_get(app_description, now);
	if (!c) {
		pthread_mutex_unlock(&cache.lock);
		return err_set(err, ERR_INTERNAL, ENOMEM,
			       "out of memory (or every cached app is being synced)");
	}
	c->used_ms = now;
	/* One sync per app at a time: concurrent Mounts take its result. */
	c->waiters++;
	while (c->busy) {
		if (wait_done(deadline_ms) < 0) {
			c->waiters--;
			pthread_mutex_unlock(&cache.lock);
			return err_set(err, ERR_TIMEOUT, ETIMEDOUT,
				       "timed out waiting for another Mount's sync of the "
				       "exposed scopes");
		}
	}
	c->waiters--;
	if (c->names && !strcmp(c->hash, decl->hash) &&
	    http_now_ms() - c->synced_ms < (int64_t)revalidate_s * 1000) {
		out = strdup(c->names);
		pthread_mutex_unlock(&cache.lock);
		if (!out)
			return err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
		*ret_names = out;
		return 0;
	}
	c->busy = true;
	pthread_mutex_unlock(&cache.lock);

	/* Two rounds at most: a create another node won is seen on the second listing. */
	for (int round = 0; round < 2; round++) {
		json_decref(names);
		names = json_array();
		if (!names) {
			r = err_set(&serr, ERR_INTERNAL, ENOMEM, "out of memory");
			break;
		}
		r = reconcile(dd, app_description, decl, deadline_ms, names, &raced, &serr);
		if (r == 0 || !raced)
			break;
	}
	if (r == 0) {
		out = join(names);
		if (!out)
			r = err_set(&serr, ERR_INTERNAL, ENOMEM, "out of memory");
	}

	pthread_mutex_lock(&cache.lock);
	if (r == 0) {
		char *keep = strdup(out);

		if (keep) {
			free(c->names);
			c->names = keep;
			memcpy(c->hash, decl->hash, sizeof(c->hash));
			c->synced_ms = http_now_ms();
		}
	} else if (transient(serr.kind) && c->names && !strcmp(c->hash, decl->hash)) {
		/* DigDir is down: what was synced last for this declaration still holds. */
		out = strdup(c->names);
		r = out ? 0 : err_set(&serr, ERR_INTERNAL, ENOMEM, "out of memory");
	}
	c->busy = false;
	pthread_cond_broadcast(&cache.done);
	pthread_mutex_unlock(&cache.lock);

	json_decref(names);
	if (r < 0) {
		if (err)
			*err = serr;
		return r;
	}
	*ret_names = out;
	return 0;
}
