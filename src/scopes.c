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

#include "clock.h"
#include "http.h"
#include "keys.h"
#include "scopes.h"

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

/* What parsing one entry carries from field to field. */
struct entry_parse {
	size_t i;	  /* the entry's index in the list, for messages */
	const char *name; /* its name when that is a string, for messages */
	char sep;	  /* between product and name; 0 until the separator row */
	struct scopes_entry *e;
	struct err *err;
};

/*
 * Reads one field of an entry into x->e: v is the field's value, NULL when
 * the entry leaves it out (the parser then fills in the default or refuses).
 * Returns 0, or a negative errno with x->err filled (bad() names the field).
 */
typedef int (*field_parser)(const json_t *v, struct entry_parse *x);

static int field_name(const json_t *v, struct entry_parse *x)
{
	if (!x->name)
		return bad(x->err, x->i, NULL, "name", "is required (a string)");
	if (!name_valid(x->name))
		return bad(x->err, x->i, x->name, "name",
			   "must match ^([a-zæøå0-9]+\\/?)+(\\:[a-zæøå0-9]+)*[a-zæøå0-9]+"
			   "(\\.[a-zæøå0-9]+)*$ (at most %d bytes)",
			   SCOPES_MAX_NAME);
	x->e->name = strdup(x->name);
	return x->e->name ? 0 : err_set(x->err, ERR_INTERNAL, ENOMEM, "out of memory");
}

static int field_product(const json_t *v, struct entry_parse *x)
{
	const char *s = json_string_value(v);

	if (!s)
		return bad(x->err, x->i, x->name, "product", "is required (a string)");
	if (!product_valid(s))
		return bad(x->err, x->i, x->name, "product", "must match ^[a-z0-9]+$");
	x->e->product = strdup(s);
	return x->e->product ? 0 : err_set(x->err, ERR_INTERNAL, ENOMEM, "out of memory");
}

static int field_enabled(const json_t *v, struct entry_parse *x)
{
	if (!json_is_boolean(v))
		return bad(x->err, x->i, x->name, "enabled", "is required (true or false)");
	x->e->enabled = json_is_true(v);
	return 0;
}

/*
 * DigDir's rule, not NAIS's 30-680: seconds, 0 for no cap of its own
 * (felleslosninger/docs oidc_protocol_scope.md); left out, it is not sent
 * and DigDir's default stands.
 */
static int field_at_max_age(const json_t *v, struct entry_parse *x)
{
	x->e->at_max_age = -1;
	if (!v)
		return 0;
	if (!json_is_integer(v) || json_integer_value(v) < 0 ||
	    json_integer_value(v) > SCOPES_AT_MAX_AGE_MAX)
		return bad(x->err, x->i, x->name, "atMaxAge",
			   "must be a whole number of seconds from 0 (no limit of the "
			   "scope's own) to %ld",
			   (long)SCOPES_AT_MAX_AGE_MAX);
	x->e->at_max_age = (long)json_integer_value(v);
	return 0;
}

/* Left out: maskinporten alone. */
static int field_integrations(const json_t *v, struct entry_parse *x)
{
	size_t j;
	json_t *t;

	if (v) {
		if (!json_is_array(v) || json_array_size(v) == 0 || json_array_size(v) > 16)
			return bad(x->err, x->i, x->name, "allowedIntegrations",
				   "must be a list of 1 to 16 integration types");
		json_array_foreach(v, j, t)
		{
			if (!json_is_string(t) || !integration_valid(json_string_value(t)))
				return bad(x->err, x->i, x->name, "allowedIntegrations",
					   "entry %zu must be an integration type such as "
					   "\"maskinporten\"",
					   j);
		}
		x->e->integrations = json_deep_copy(v);
	} else {
		x->e->integrations = json_pack("[s]", "maskinporten");
	}
	return x->e->integrations ? 0 : err_set(x->err, ERR_INTERNAL, ENOMEM, "out of memory");
}

static int field_accessible_for_all(const json_t *v, struct entry_parse *x)
{
	if (v && !json_is_boolean(v))
		return bad(x->err, x->i, x->name, "accessibleForAll", "must be true or false");
	x->e->accessible_for_all = json_is_true(v);
	return 0;
}

static int field_delegation_source(const json_t *v, struct entry_parse *x)
{
	const char *s = json_string_value(v);

	if (!v)
		return 0;
	if (!s || strcmp(s, "altinn"))
		return bad(x->err, x->i, x->name, "delegationSource", "must be \"altinn\"");
	x->e->altinn = true;
	return 0;
}

/* Left out: '/' when the name has one, else ':'. Delegable scopes need '/'. */
static int field_separator(const json_t *v, struct entry_parse *x)
{
	const char *s = json_string_value(v);

	if (v) {
		if (!s || strlen(s) != 1 || !strchr("/:.", s[0]))
			return bad(x->err, x->i, x->name, "separator",
				   "must be \"/\", \":\" or \".\"");
		x->sep = s[0];
	}
	if (x->e->altinn && x->sep != '/')
		return bad(x->err, x->i, x->name, "separator",
			   "must be \"/\" when delegationSource is set (DigDir's rule for "
			   "delegable scopes)");
	if (!x->sep)
		x->sep = strchr(x->name, '/') ? '/' : ':';
	return 0;
}

static int field_visibility(const json_t *v, struct entry_parse *x)
{
	const char *s = json_string_value(v);

	if (!v)
		return 0;
	if (!s || (strcmp(s, "public") && strcmp(s, "private")))
		return bad(x->err, x->i, x->name, "visibility",
			   "must be \"public\" or \"private\"");
	x->e->private_visibility = !strcmp(s, "private");
	return 0;
}

/* Organisation numbers with a valid check digit, sorted, each once. */
static int field_consumers(const json_t *v, struct entry_parse *x)
{
	struct scopes_entry *e = x->e;
	const char *key, *orgno;
	json_t *c, *val;
	size_t j, n = 0;

	if (!v)
		return 0;
	if (!json_is_array(v))
		return bad(x->err, x->i, x->name, "consumers",
			   "must be a list of {\"orgno\", \"name\"}");
	if (json_array_size(v) > SCOPES_MAX_CONSUMERS)
		return bad(x->err, x->i, x->name, "consumers", "has more than %d entries",
			   SCOPES_MAX_CONSUMERS);
	e->consumers = calloc(json_array_size(v) + 1, sizeof(*e->consumers));
	if (!e->consumers)
		return err_set(x->err, ERR_INTERNAL, ENOMEM, "out of memory");
	json_array_foreach(v, j, c)
	{
		if (!json_is_object(c))
			return bad(x->err, x->i, x->name, "consumers", "entry %zu is not an object",
				   j);
		json_object_foreach(c, key, val)
		{
			if (strcmp(key, "orgno") && strcmp(key, "name"))
				return bad(
				    x->err, x->i, x->name, "consumers",
				    "entry %zu: unknown field \"%.40s\" (known: orgno, name)", j,
				    key);
			if (!strcmp(key, "name") && !json_is_string(val))
				return bad(x->err, x->i, x->name, "consumers",
					   "entry %zu: \"name\" must be a string", j);
		}
		orgno = json_string_value(json_object_get(c, "orgno"));
		if (!orgno)
			return bad(x->err, x->i, x->name, "consumers",
				   "entry %zu: \"orgno\" is required (a string of nine digits)", j);
		if (strlen(orgno) != 9 || strspn(orgno, "0123456789") != 9)
			return bad(x->err, x->i, x->name, "consumers",
				   "entry %zu: orgno \"%.20s\" is not nine digits", j, orgno);
		if (!scopes_orgno_valid(orgno))
			return bad(x->err, x->i, x->name, "consumers",
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

/*
 * The fields of an entry, in the order they are checked (so a message names
 * the first problem in this order). A new field is a row here and its parser.
 */
static const struct {
	const char *key;
	field_parser parse;
} fields[] = {
	{ "name", field_name }, /* first: the other rows use the name */
	{ "product", field_product },
	{ "enabled", field_enabled },
	{ "atMaxAge", field_at_max_age },
	{ "allowedIntegrations", field_integrations },
	{ "accessibleForAll", field_accessible_for_all },
	{ "delegationSource", field_delegation_source },
	{ "separator", field_separator }, /* after delegationSource, which restricts it */
	{ "visibility", field_visibility },
	{ "consumers", field_consumers },
};

#define NFIELDS (sizeof(fields) / sizeof(fields[0]))

static bool known_field(const char *key)
{
	for (size_t k = 0; k < NFIELDS; k++)
		if (!strcmp(key, fields[k].key))
			return true;
	return false;
}

/* An ERR_INVALID for a field no row knows, listing those the rows do. */
static int unknown_field(struct entry_parse *x, const char *key)
{
	char known[256];
	size_t at = 0;

	known[0] = '\0';
	for (size_t k = 0; k < NFIELDS && at < sizeof(known); k++) {
		int n =
		    snprintf(known + at, sizeof(known) - at, "%s%s", k ? ", " : "", fields[k].key);

		if (n < 0)
			break;
		at += (size_t)n;
	}
	return bad(x->err, x->i, x->name, key, "is unknown (known: %s)", known);
}

/* Entry i of the list into e: every field a row of `fields` reads, nothing else. */
static int parse_entry(const json_t *o, size_t i, struct scopes_entry *e, struct err *err)
{
	struct entry_parse x = { .i = i, .e = e, .err = err };
	const char *key;
	json_t *v;
	int r;

	if (!json_is_object(o))
		return err_set(err, ERR_INVALID, EINVAL,
			       "parameter \"exposes\": exposes[%zu] is not an object", i);
	x.name = json_string_value(json_object_get(o, "name"));
	json_object_foreach((json_t *)o, key, v)
	{
		if (!known_field(key))
			return unknown_field(&x, key);
	}
	for (size_t k = 0; k < NFIELDS; k++) {
		r = fields[k].parse(json_object_get(o, fields[k].key), &x);
		if (r < 0)
			return r;
	}
	if (asprintf(&e->subscope, "%s%c%s", e->product, x.sep, e->name) < 0) {
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
	{
		size_t total = 0;

		for (j = 0; j < d->n; j++)
			total += d->entries[j].nconsumers;
		if (total > SCOPES_MAX_CONSUMERS) {
			r = err_set(
			    err, ERR_INVALID, EINVAL,
			    "parameter \"exposes\" names %zu consumers in all, more than %d: "
			    "each is a call to DigDir",
			    total, SCOPES_MAX_CONSUMERS);
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
	o = json_pack("{s:b, s:b, s:O}", "accessible_for_all", e->accessible_for_all, "active",
		      e->enabled, "allowed_integration_types", e->integrations);
	if (o && e->at_max_age >= 0 &&
	    json_object_set_new(o, "at_max_age", json_integer((json_int_t)e->at_max_age)) < 0) {
		json_decref(o);
		o = NULL;
	}
	if (o && (json_object_set_new(o, "description", json_string(desc)) < 0 ||
		  json_object_set_new(o, "name", json_string("")) < 0)) {
		json_decref(o);
		o = NULL;
	}
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

/* Every call about exposed scopes needs the admin token with idporten:scopes.write. */
#define EXPOSE (DIGDIR_EXPOSE | DIGDIR_IDEMPOTENT)

/* "<base><escaped scope>", e.g. "/scopes?scope=test%3Aa%3Ab". */
static char *scope_path(const char *base, const char *full_name)
{
	return digdir_path(base, full_name, "");
}

static int collect(void *ctx, json_t *scope, size_t index, struct err *err)
{
	return json_array_append(ctx, scope) < 0
		   ? err_set(err, ERR_INTERNAL, ENOMEM, "out of memory")
		   : 0;
}

static void collect_reset(void *ctx)
{
	json_array_clear(ctx);
}

/* GET /scopes?inactive=true: the organisation's own scopes, inactive ones too. */
static int list_all(struct digdir *dd, int64_t deadline_ms, json_t **ret, struct err *err)
{
	json_t *list = json_array();
	int r;

	if (!list)
		return err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
	r = digdir_call_list(dd, "/scopes?inactive=true", "GET /scopes", DIGDIR_EXPOSE, collect,
			     collect_reset, list, deadline_ms, err);
	if (r < 0) {
		json_decref(list);
		return r;
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
	r = digdir_call(dd, "GET", path, "GET /scopes/access", NULL, EXPOSE, deadline_ms, &acl,
			err);
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
	r = digdir_call(dd, "DELETE", path, "DELETE /scopes", NULL, EXPOSE, deadline_ms, NULL, err);
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

	r = digdir_call(dd, "GET", "/delegationsources", "GET /delegationsources", NULL, EXPOSE,
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

/* ---- one reconciliation ---------------------------------------------------- */

/* What one sync of a declaration works with and gathers. */
struct sync {
	struct digdir *dd;
	const char *app;
	const char *prefix;
	int64_t deadline_ms;
	json_t *list;	 /* the organisation's scopes */
	char *issuer;	 /* of the altinn delegation source, once needed */
	int writes;	 /* DigDir writes so far, at most SCOPES_MAX_WRITES */
	json_t *names;	 /* full names of the enabled scopes */
	json_t *refused; /* consumer grants DigDir refused: [{scope, orgno, reason}] */
	bool raced;	 /* a create failed in a way another node's create explains */
};

/* One more write to DigDir, within the bound of one Mount. */
static int write_call(struct sync *x, const char *method, const char *path, const char *endpoint,
		      const json_t *body, unsigned flags, json_t **ret, struct err *err)
{
	if (x->writes >= SCOPES_MAX_WRITES)
		return err_set(err, ERR_THROTTLED, EAGAIN,
			       "parameter \"exposes\" needs more than %d changes at DigDir; %d "
			       "were made by this Mount, the rest follow at the kubelet's next "
			       "try",
			       SCOPES_MAX_WRITES, x->writes);
	x->writes++;
	return digdir_call(x->dd, method, path, endpoint, body, flags, x->deadline_ms, ret, err);
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

/*
 * PUT or DELETE /scopes/access/{orgno}. A grant DigDir answers with 400 (an
 * organisation number it does not know, as digdirator reads it) is skipped
 * and remembered, so one bad consumer never fails the app.
 */
static int access_call(struct sync *x, const char *method, const char *full, const char *esc,
		       const char *orgno, struct err *err)
{
	char *path = NULL;
	int r;

	if (asprintf(&path, "/scopes/access/%s?scope=%s", orgno, esc) < 0)
		return err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
	r = write_call(x, method, path,
		       !strcmp(method, "PUT") ? "PUT /scopes/access/{orgno}"
					      : "DELETE /scopes/access/{orgno}",
		       NULL, EXPOSE, NULL, err);
	free(path);
	if (r < 0 && !strcmp(method, "PUT") && err && err->http_status == 400) {
		json_t *o =
		    json_pack("{s:s, s:s, s:s}", "scope", full, "orgno", orgno, "reason", err->msg);

		if (!o || json_array_append_new(x->refused, o) < 0)
			return err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
		return 0;
	}
	if (r < 0)
		err_prefix(err, "%s organisation %s's access: ",
			   !strcmp(method, "PUT") ? "granting" : "revoking", orgno);
	return r;
}

/* Grants and revokes so that exactly the declared consumers have access. */
static int sync_acl(struct sync *x, const char *full, const struct scopes_entry *e, struct err *err)
{
	json_t *acl = NULL, *a;
	char *esc = http_escape(full);
	const char *state, *orgno;
	size_t i;
	int r;

	if (!esc)
		return err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
	r = scopes_get_access(x->dd, full, x->deadline_ms, &acl, err);
	if (r < 0)
		goto out;
	for (i = 0; i < e->nconsumers; i++) {
		state = state_of(acl, e->consumers[i]);
		if (state && !strcmp(state, "APPROVED"))
			continue;
		r = access_call(x, "PUT", full, esc, e->consumers[i], err);
		if (r < 0)
			goto out;
	}
	json_array_foreach(acl, i, a)
	{
		orgno = json_string_value(json_object_get(a, "consumer_orgno"));
		state = json_string_value(json_object_get(a, "state"));
		if (!orgno || wanted(e, orgno) || (state && !strcmp(state, "DENIED")))
			continue;
		r = access_call(x, "DELETE", full, esc, orgno, err);
		if (r < 0)
			goto out;
	}
	r = 0;
out:
	json_decref(acl);
	free(esc);
	return r;
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

/* The organisation's scope <prefix>:<subscope>, or NULL. */
static json_t *find_scope(const json_t *list, const char *prefix, const char *subscope)
{
	size_t plen = strlen(prefix);
	json_t *s;
	size_t i;

	json_array_foreach(list, i, s)
	{
		char *full = full_name(s);
		bool match = full && !strncmp(full, prefix, plen) && full[plen] == ':' &&
			     !strcmp(full + plen + 1, subscope);

		free(full);
		if (match)
			return s;
	}
	return NULL;
}

/* Checks every declared scope before the first write: none may be another app's. */
static int check_owners(struct sync *x, const struct scopes_decl *decl, struct err *err)
{
	for (size_t i = 0; i < decl->n; i++) {
		const struct scopes_entry *e = &decl->entries[i];
		const json_t *have = find_scope(x->list, x->prefix, e->subscope);
		const char *owner;

		if (!have || scopes_owned_by(have, x->app))
			continue;
		owner = json_string_value(json_object_get(have, "description"));
		return err_set(err, ERR_CONFLICT, EPERM,
			       "exposed scope \"%s:%s\" (exposes[%zu]) already exists at DigDir "
			       "and belongs to \"%s\", not to \"%s - %s\": it is not taken over; "
			       "choose another name or product, or have its owner remove it",
			       x->prefix, e->subscope, i,
			       owner && *owner ? owner : "(no description)", e->product, x->app);
	}
	return 0;
}

/* A scope that does not exist yet: POST /scopes. *ret_full is its name. */
static int create_scope(struct sync *x, const struct scopes_entry *e, const json_t *want,
			char **ret_full, struct err *err)
{
	json_t *created = NULL;
	int r;

	r = write_call(x, "POST", "/scopes", "POST /scopes", want, DIGDIR_EXPOSE, &created, err);
	if (r < 0) {
		x->raced = err && (err->http_status == 400 || err->http_status == 409);
		err_prefix(err, "creating exposed scope %s:%s: ", x->prefix, e->subscope);
		return r;
	}
	*ret_full = full_name(created);
	if (!*ret_full && asprintf(ret_full, "%s:%s", x->prefix, e->subscope) < 0)
		*ret_full = NULL;
	json_decref(created);
	return *ret_full ? 0 : err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
}

/* A declared scope that exists: PUT what differs (reactivating it when needed). */
static int update_scope(struct sync *x, const json_t *have, const json_t *want, const char *full,
			struct err *err)
{
	char *path;
	int r;

	if (!scopes_differs(have, want))
		return 0;
	path = scope_path("/scopes?scope=", full);
	if (!path)
		return err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
	r = write_call(x, "PUT", path, "PUT /scopes", want, EXPOSE, NULL, err);
	free(path);
	if (r < 0)
		err_prefix(err, "%s exposed scope %s: ",
			   json_is_false(json_object_get(have, "active")) ? "reactivating"
									  : "updating",
			   full);
	return r;
}

/* A scope declared disabled: deactivate it once; an inactive one stays as it is. */
static int disable_scope(struct sync *x, const json_t *have, const char *full, struct err *err)
{
	char *path;
	int r;

	if (json_is_false(json_object_get(have, "active")))
		return 0;
	path = scope_path("/scopes?scope=", full);
	if (!path)
		return err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
	r = write_call(x, "DELETE", path, "DELETE /scopes", NULL, EXPOSE, NULL, err);
	free(path);
	if (r < 0)
		err_prefix(err, "deactivating exposed scope %s: ", full);
	return r;
}

/* One declared scope: created, updated or deactivated, then its consumers. */
static int sync_entry(struct sync *x, size_t i, const struct scopes_entry *e, struct err *err)
{
	const json_t *have = find_scope(x->list, x->prefix, e->subscope);
	json_t *want = NULL;
	char *full = NULL;
	int r;

	if (!have && !e->enabled)
		return 0; /* a disabled scope that does not exist needs nothing */
	if (e->altinn && !x->issuer) {
		r = altinn_issuer(x->dd, x->deadline_ms, &x->issuer, err);
		if (r < 0)
			return r;
	}
	want = scopes_registration(e, x->app, x->prefix, e->altinn ? x->issuer : NULL);
	if (!want)
		return err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
	if (!have) {
		r = create_scope(x, e, want, &full, err);
	} else {
		full = full_name(have);
		if (!full)
			r = err_set(err, ERR_BAD_RESPONSE, EPROTO,
				    "DigDir GET /scopes: scope %s has no name", e->subscope);
		else if (!e->enabled)
			r = disable_scope(x, have, full, err);
		else
			r = update_scope(x, have, want, full, err);
	}
	if (r < 0 || !e->enabled)
		goto out;
	r = sync_acl(x, full, e, err);
	if (r < 0) {
		err_prefix(err, "exposed scope %s: ", full);
		goto out;
	}
	if (json_array_append_new(x->names, json_string(full)) < 0)
		r = err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
out:
	free(full);
	json_decref(want);
	return r;
}

/* Lists the organisation's scopes, checks ownership, then syncs each declared scope. */
static int reconcile(struct sync *x, const struct scopes_decl *decl, struct err *err)
{
	int r;

	x->raced = false;
	json_decref(x->list);
	x->list = NULL;
	json_array_clear(x->names);
	json_array_clear(x->refused);
	r = list_all(x->dd, x->deadline_ms, &x->list, err);
	if (r < 0)
		return r;
	r = check_owners(x, decl, err);
	for (size_t i = 0; r == 0 && i < decl->n; i++)
		r = sync_entry(x, i, &decl->entries[i], err);
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
	json_t *refused;   /* grants DigDir refused at that sync */
	int64_t synced_ms; /* clock_now_ms() of the last successful sync */
	int64_t used_ms;
	bool busy; /* a sync runs: others wait for it */
	unsigned waiters;
};

struct scopes {
	struct digdir *dd;
	char *prefix; /* NULL: exposing scopes is not configured */
	long revalidate_s;
	pthread_mutex_t lock;
	pthread_cond_t done; /* CLOCK_MONOTONIC */
	struct cached **v;
	size_t n, cap;
};

static void cached_free(struct cached *c)
{
	if (!c)
		return;
	free(c->description);
	free(c->names);
	json_decref(c->refused);
	free(c);
}

struct scopes *scopes_new(struct digdir *dd, const char *prefix, long revalidate_s)
{
	struct scopes *sc = calloc(1, sizeof(*sc));

	if (!sc)
		return NULL;
	sc->dd = dd;
	sc->revalidate_s = revalidate_s;
	if (prefix && *prefix && !(sc->prefix = strdup(prefix))) {
		free(sc);
		return NULL;
	}
	pthread_mutex_init(&sc->lock, NULL);
	clock_cond_init(&sc->done);
	return sc;
}

void scopes_free(struct scopes *sc)
{
	if (!sc)
		return;
	for (size_t i = 0; i < sc->n; i++)
		cached_free(sc->v[i]);
	free(sc->v);
	free(sc->prefix);
	pthread_cond_destroy(&sc->done);
	pthread_mutex_destroy(&sc->lock);
	free(sc);
}

/* With sc->lock held: the app's entry, made (evicting the least recently used) when missing. */
static struct cached *cache_get(struct scopes *sc, const char *description, int64_t now)
{
	struct cached *c;
	size_t i, victim = SIZE_MAX;

	for (i = 0; i < sc->n; i++)
		if (!strcmp(sc->v[i]->description, description))
			return sc->v[i];
	if (sc->n == CACHE_MAX) {
		for (i = 0; i < sc->n; i++)
			if (!sc->v[i]->busy && !sc->v[i]->waiters &&
			    (victim == SIZE_MAX || sc->v[i]->used_ms < sc->v[victim]->used_ms))
				victim = i;
		if (victim == SIZE_MAX)
			return NULL;
		cached_free(sc->v[victim]);
		sc->v[victim] = sc->v[--sc->n];
	}
	if (sc->n == sc->cap) {
		size_t cap = sc->cap ? sc->cap * 2 : 16;
		struct cached **v = realloc(sc->v, cap * sizeof(*v));

		if (!v)
			return NULL;
		sc->v = v;
		sc->cap = cap;
	}
	c = calloc(1, sizeof(*c));
	if (!c || !(c->description = strdup(description))) {
		free(c);
		return NULL;
	}
	c->used_ms = now;
	sc->v[sc->n++] = c;
	return c;
}

/* Waits on sc->done until deadline_ms. 0 or -ETIMEDOUT. */
static int wait_done(struct scopes *sc, int64_t deadline_ms)
{
	if (deadline_ms <= clock_now_ms())
		return -ETIMEDOUT;
	return clock_wait_until(&sc->done, &sc->lock, deadline_ms) ? 0 : -ETIMEDOUT;
}

/* The cached result into the caller's hands (lock held). */
static int cached_result(const struct cached *c, char **ret_names, json_t **ret_refused,
			 struct err *err)
{
	char *out = strdup(c->names);

	if (!out)
		return err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
	*ret_names = out;
	if (ret_refused)
		*ret_refused = json_array_size(c->refused) ? json_incref(c->refused) : NULL;
	return 0;
}

int scopes_check(const struct scopes *sc, struct err *err)
{
	if (!sc->prefix)
		return err_set(err, ERR_UNCONFIGURED, EINVAL,
			       "parameter \"exposes\" needs the organisation's scope prefix at "
			       "DigDir, which this provider was not given: set --scope-prefix "
			       "(MPCSI_SCOPE_PREFIX)");
	return 0;
}

int scopes_sync(struct scopes *sc, const char *app_description, const struct scopes_decl *decl,
		int64_t deadline_ms, char **ret_names, json_t **ret_refused, struct err *err)
{
	struct sync x = { .dd = sc->dd,
			  .app = app_description,
			  .prefix = sc->prefix,
			  .deadline_ms = deadline_ms };
	struct err serr = { 0 };
	struct cached *c;
	int64_t now = clock_now_ms();
	int r;

	r = scopes_check(sc, err);
	if (r < 0)
		return r;

	pthread_mutex_lock(&sc->lock);
	c = cache_get(sc, app_description, now);
	if (!c) {
		pthread_mutex_unlock(&sc->lock);
		return err_set(err, ERR_INTERNAL, ENOMEM,
			       "out of memory (or every cached app is being synced)");
	}
	c->used_ms = now;
	/* One sync per app at a time: concurrent Mounts take its result. */
	c->waiters++;
	while (c->busy) {
		if (wait_done(sc, deadline_ms) < 0) {
			c->waiters--;
			pthread_mutex_unlock(&sc->lock);
			return err_set(err, ERR_TIMEOUT, ETIMEDOUT,
				       "timed out waiting for another Mount's sync of the "
				       "exposed scopes");
		}
	}
	c->waiters--;
	if (c->names && !strcmp(c->hash, decl->hash) &&
	    clock_now_ms() - c->synced_ms < (int64_t)sc->revalidate_s * 1000) {
		r = cached_result(c, ret_names, ret_refused, err);
		pthread_mutex_unlock(&sc->lock);
		return r;
	}
	c->busy = true;
	pthread_mutex_unlock(&sc->lock);

	x.names = json_array();
	x.refused = json_array();
	if (!x.names || !x.refused) {
		r = err_set(&serr, ERR_INTERNAL, ENOMEM, "out of memory");
	} else {
		/* Two rounds at most: a create another node won is seen on the second listing. */
		for (int round = 0; round < 2; round++) {
			r = reconcile(&x, decl, &serr);
			if (r == 0 || !x.raced)
				break;
		}
	}

	pthread_mutex_lock(&sc->lock);
	if (r == 0) {
		char *keep = join(x.names);

		if (keep) {
			free(c->names);
			c->names = keep;
			json_decref(c->refused);
			c->refused = json_incref(x.refused);
			memcpy(c->hash, decl->hash, sizeof(c->hash));
			c->synced_ms = clock_now_ms();
			r = cached_result(c, ret_names, ret_refused, &serr);
		} else {
			r = err_set(&serr, ERR_INTERNAL, ENOMEM, "out of memory");
		}
	} else if (err_is_transient(serr.kind) && c->names && !strcmp(c->hash, decl->hash)) {
		/* DigDir is down: what was synced last for this declaration still holds. */
		r = cached_result(c, ret_names, ret_refused, &serr);
	}
	c->busy = false;
	pthread_cond_broadcast(&sc->done);
	pthread_mutex_unlock(&sc->lock);

	json_decref(x.list);
	json_decref(x.names);
	json_decref(x.refused);
	free(x.issuer);
	if (r < 0 && err)
		*err = serr;
	return r;
}
