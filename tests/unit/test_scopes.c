/* Unit tests of scopes' pure parts: validation, naming, the registration body, ownership. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "scopes.h"

static struct scopes_decl *parse_ok(const char *text)
{
	struct scopes_decl *d = NULL;
	struct err err = { 0 };

	if (scopes_parse(text, &d, &err) < 0)
		fail_msg("%s: %s", text, err.msg);
	return d;
}

static void parse_bad(const char *text, const char *needle)
{
	struct scopes_decl *d = NULL;
	struct err err = { 0 };

	assert_int_equal(scopes_parse(text, &d, &err), -EINVAL);
	assert_null(d);
	assert_int_equal(err.kind, ERR_INVALID);
	if (!strstr(err.msg, needle))
		fail_msg("'%s' not in '%s'", needle, err.msg);
}

static char *one(const char *name)
{
	static char buf[512];

	snprintf(buf, sizeof(buf), "[{\"name\": \"%s\", \"product\": \"p\", \"enabled\": true}]",
		 name);
	return buf;
}

/* The same cases as Python's re on the CRD's pattern. */
static void test_name_pattern(void **state)
{
	static const char *const good[] = {
		"zz.w", "ab",  "ab:cd",	     "x/y", "payments.read", "digdirator.test.read",
		"a/b",	"æøå", "a/b/cc:dd.e"
	};
	static const char *const bad[] = { "z.w", "v", "a:b", "a//b", "a/", "Ab", "a-b", "" };
	struct scopes_decl *d;

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		d = parse_ok(one(good[i]));
		scopes_decl_free(d);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		parse_bad(one(bad[i]), "field \"name\"");
}

static void test_defaults_and_subscope(void **state)
{
	struct scopes_decl *d = parse_ok(
	    "[{\"name\": \"a/b\", \"product\": \"prod\", \"enabled\": false},"
	    " {\"name\": \"rr\", \"product\": \"prod\", \"enabled\": true, \"separator\": \".\","
	    "  \"consumers\": [{\"orgno\": \"983887457\"}, {\"orgno\": \"974761076\", \"name\": "
	    "\"x\"}, {\"orgno\": \"983887457\"}]}]");
	const struct scopes_entry *e = &d->entries[0];

	assert_int_equal(d->n, 2);
	assert_string_equal(e->subscope, "prod/a/b");
	assert_false(e->enabled);
	assert_int_equal(e->at_max_age, -1); /* not sent: DigDir's default stands */
	assert_false(e->accessible_for_all);
	assert_false(e->private_visibility);
	assert_int_equal(json_array_size(e->integrations), 1);
	assert_string_equal(json_string_value(json_array_get(e->integrations, 0)), "maskinporten");
	e = &d->entries[1];
	assert_string_equal(e->subscope, "prod.rr");
	assert_int_equal(e->nconsumers, 2); /* deduplicated and sorted */
	assert_string_equal(e->consumers[0], "974761076");
	assert_string_equal(e->consumers[1], "983887457");
	scopes_decl_free(d);
}

static void test_hash_is_of_meaning(void **state)
{
	struct scopes_decl *a =
	    parse_ok("[{\"name\": \"rr\", \"product\": \"p\", \"enabled\": true}]");
	struct scopes_decl *b =
	    parse_ok("[ {\"enabled\": true, \"product\": \"p\", \"name\": \"rr\","
		     " \"visibility\": \"public\", \"separator\": \":\", \"consumers\": []} ]");
	struct scopes_decl *c = parse_ok(
	    "[{\"name\": \"rr\", \"product\": \"p\", \"enabled\": true, \"atMaxAge\": 31}]");

	assert_string_equal(a->hash, b->hash);
	assert_string_not_equal(a->hash, c->hash);
	scopes_decl_free(a);
	scopes_decl_free(b);
	scopes_decl_free(c);
}

static void test_field_errors(void **state)
{
	/* DigDir's rule: whole seconds from 0 (no cap) up; NAIS's 30-680 does not apply. */
	parse_bad("[{\"name\": \"rr\", \"product\": \"p\", \"enabled\": true, \"atMaxAge\": -1}]",
		  "exposes[0] (name \"rr\"): field \"atMaxAge\"");
	parse_bad("[{\"name\": \"rr\", \"product\": \"p\", \"enabled\": true, \"atMaxAge\": 1.5}]",
		  "field \"atMaxAge\"");
	parse_bad("[{\"name\": \"rr\", \"product\": \"p\", \"enabled\": true, \"atMaxAge\": "
		  "2147483648}]",
		  "field \"atMaxAge\"");
	parse_bad("[{\"name\": \"rr\", \"product\": \"p\", \"enabled\": true, \"delegationSource\":"
		  " \"altinn\", \"separator\": \":\"}]",
		  "field \"separator\"");
	parse_bad("[{\"name\": \"rr\", \"product\": \"p\", \"enabled\": true, \"consumers\": "
		  "[{\"orgno\": \"974761077\"}]}]",
		  "check digit");
	parse_bad("[{\"name\": \"rr\", \"product\": \"p\", \"enabled\": true, \"name\": \"ss\"}]",
		  "not valid JSON");
	parse_bad("[{\"name\": \"rr\", \"product\": \"p\", \"enabled\": true},"
		  " {\"name\": \"rr\", \"product\": \"p\", \"enabled\": false}]",
		  "exposes[1]");
	parse_bad("{}", "JSON list");
	/* The list of known fields comes from the parser's table of fields. */
	parse_bad(
	    "[{\"name\": \"rr\", \"product\": \"p\", \"enabled\": true, \"colour\": 1}]",
	    "parameter \"exposes\": exposes[0] (name \"rr\"): field \"colour\" is unknown "
	    "(known: name, product, enabled, atMaxAge, allowedIntegrations, accessibleForAll, "
	    "delegationSource, separator, visibility, consumers)");
}

static void test_orgno(void **state)
{
	assert_true(scopes_orgno_valid("974761076"));
	assert_true(scopes_orgno_valid("983887457"));
	assert_false(scopes_orgno_valid("974761077"));
	assert_false(scopes_orgno_valid("97476107"));
	assert_false(scopes_orgno_valid("97476107a"));
}

static void test_registration_body(void **state)
{
	struct scopes_decl *d = parse_ok(
	    "[{\"name\": \"a/b\", \"product\": \"p\", \"enabled\": true, \"atMaxAge\": 99,"
	    " \"visibility\": \"private\", \"accessibleForAll\": true, \"separator\": \"/\","
	    " \"delegationSource\": \"altinn\", \"allowedIntegrations\": [\"maskinporten\","
	    " \"krr\"]}]");
	json_t *body = scopes_registration(&d->entries[0], "c:ns:app", "nav", "https://tt02/");
	char *text = json_dumps(body, JSON_COMPACT);

	assert_string_equal(
	    text, "{\"accessible_for_all\":true,\"active\":true,\"allowed_integration_types\":"
		  "[\"maskinporten\",\"krr\"],\"at_max_age\":99,\"description\":\"p - c:ns:app\","
		  "\"name\":\"\",\"prefix\":\"nav\",\"requires_pseudonymous_tokens\":false,"
		  "\"requires_user_authentication\":false,\"requires_user_consent\":false,"
		  "\"subscope\":\"p/a/b\",\"token_type\":\"SELF_CONTAINED\",\"visibility\":"
		  "\"PRIVATE\",\"delegation_source\":\"https://tt02/\"}");
	free(text);
	json_decref(body);

	/* No delegation source: none sent. */
	body = scopes_registration(&d->entries[0], "c:ns:app", "nav", NULL);
	assert_string_equal(json_string_value(json_object_get(body, "prefix")), "nav");
	assert_null(json_object_get(body, "delegation_source"));
	json_decref(body);
	scopes_decl_free(d);

	/* No atMaxAge declared: none sent, DigDir's own default stands. */
	d = parse_ok("[{\"name\": \"xy\", \"product\": \"p\", \"enabled\": true}]");
	body = scopes_registration(&d->entries[0], "c:ns:app", "nav", NULL);
	assert_null(json_object_get(body, "at_max_age"));
	json_decref(body);
	scopes_decl_free(d);
}

static void test_differs(void **state)
{
	json_t *want = json_pack("{s:b, s:i, s:s, s:s, s:s}", "active", 1, "at_max_age", 30, "name",
				 "", "prefix", "nav", "subscope", "p:x");
	json_t *have =
	    json_pack("{s:b, s:i, s:s, s:s, s:s, s:s}", "active", 1, "at_max_age", 30, "name",
		      "nav:p:x", "prefix", "nav", "subscope", "p:x", "extra", "ignored");

	assert_false(scopes_differs(have, want));
	json_object_set_new(have, "active", json_false());
	assert_true(scopes_differs(have, want));
	json_object_set_new(have, "active", json_true());
	json_object_del(have, "at_max_age");
	assert_true(scopes_differs(have, want));
	json_decref(want);
	json_decref(have);
}

static void test_owned_by(void **state)
{
	json_t *s = json_pack("{s:s}", "description", "bank - dev:ns:app");

	assert_true(scopes_owned_by(s, "dev:ns:app"));
	assert_false(scopes_owned_by(s, "v:ns:app"));
	assert_false(scopes_owned_by(s, "dev:ns:ap"));
	json_object_set_new(s, "description", json_string(" - dev:ns:app"));
	assert_false(scopes_owned_by(s, "dev:ns:app"));
	json_object_set_new(s, "description", json_string("dev:ns:app"));
	assert_false(scopes_owned_by(s, "dev:ns:app"));
	json_object_del(s, "description");
	assert_false(scopes_owned_by(s, "dev:ns:app"));
	json_decref(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_name_pattern),
		cmocka_unit_test(test_defaults_and_subscope),
		cmocka_unit_test(test_hash_is_of_meaning),
		cmocka_unit_test(test_field_errors),
		cmocka_unit_test(test_orgno),
		cmocka_unit_test(test_registration_body),
		cmocka_unit_test(test_differs),
		cmocka_unit_test(test_owned_by),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
