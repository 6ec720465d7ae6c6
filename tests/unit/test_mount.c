/* Unit tests of mount: request parsing, validation and the response's files. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "mount.h"
#include "provider.pb-c.h"

#define POD_ATTRS                                                                                  \
	"\"csi.storage.k8s.io/pod.namespace\":\"team-a\","                                         \
	"\"csi.storage.k8s.io/serviceAccount.name\":\"payments\","                                 \
	"\"csi.storage.k8s.io/pod.name\":\"payments-7d9\","                                        \
	"\"csi.storage.k8s.io/pod.uid\":\"0b9c\",\"secretProviderClass\":\"mp\","                  \
	"\"csi.storage.k8s.io/ephemeral\":\"false\""

/* Packs a MountRequest; caller frees. */
static uint8_t *pack(const char *attributes, const char *secrets, const char *permission,
		     size_t *ret_len)
{
	V1alpha1__MountRequest m = V1ALPHA1__MOUNT_REQUEST__INIT;
	uint8_t *buf;

	m.attributes = (char *)attributes;
	m.secrets = (char *)secrets;
	m.permission = (char *)permission;
	m.target_path = (char *)"/var/lib/kubelet/pods/x/volumes/kubernetes.io~csi/v/mount";
	*ret_len = v1alpha1__mount_request__get_packed_size(&m);
	buf = malloc(*ret_len + 1);
	assert_non_null(buf);
	v1alpha1__mount_request__pack(&m, buf);
	return buf;
}

static int parse(const char *attributes, const char *secrets, const char *permission,
		 struct mount_request *req, struct err *err)
{
	size_t len;
	uint8_t *buf = pack(attributes, secrets, permission, &len);
	int r = mount_parse(buf, len, "dev-gcp", req, NULL, err);

	free(buf);
	return r;
}

static void test_valid_request(void **state)
{
	struct mount_request req = { 0 };
	struct err err = { 0 };

	assert_int_equal(parse("{" POD_ATTRS ",\"scopes\":\"skatteetaten:testapi, nav:test/api "
			       "skatteetaten:testapi\"}",
			       "null", "420", &req, &err),
			 0);
	assert_string_equal(req.description, "dev-gcp:team-a:payments");
	assert_string_equal(req.namespace_name, "team-a");
	assert_string_equal(req.pod_name, "payments-7d9");
	assert_int_equal(req.nscopes, 2);
	assert_string_equal(req.scopes[0], "skatteetaten:testapi");
	assert_string_equal(req.scopes[1], "nav:test/api");
	assert_string_equal(req.scopes_key, "nav:test/api skatteetaten:testapi");
	assert_int_equal(req.mode, 0644);
	assert_null(req.exposes);
	mount_request_free(&req);
}

static void test_secrets_forms(void **state)
{
	const char *ok[] = { "", "null", "{}",
			     "{\"csi.storage.k8s.io/serviceAccount.tokens\":\"x\"}" };
	struct mount_request req = { 0 };
	struct err err = { 0 };

	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		assert_int_equal(parse("{" POD_ATTRS "}", ok[i], "420", &req, &err), 0);
		mount_request_free(&req);
	}
	assert_true(parse("{" POD_ATTRS "}", "{\"a\":", "420", &req, &err) < 0);
	assert_int_equal(err.kind, ERR_INVALID);
	assert_non_null(strstr(err.msg, "secrets"));
	/* The message never repeats what was in the field. */
	assert_true(parse("{" POD_ATTRS "}", "[\"hunter2\"]", "420", &req, &err) < 0);
	assert_null(strstr(err.msg, "hunter2"));
}

static void expect_invalid(const char *attributes, const char *permission, const char *needle,
			   enum err_kind kind)
{
	struct mount_request req = { 0 };
	struct err err = { 0 };

	assert_true(parse(attributes, "null", permission, &req, &err) < 0);
	assert_int_equal(err.kind, kind);
	if (!strstr(err.msg, needle))
		fail_msg("message \"%s\" lacks \"%s\"", err.msg, needle);
	assert_null(req.description);
}

static void test_rejections(void **state)
{
	expect_invalid("", "420", "attributes", ERR_INVALID);
	expect_invalid("{not json", "420", "not a JSON object", ERR_INVALID);
	expect_invalid("[1]", "420", "not a JSON object", ERR_INVALID);
	expect_invalid("{" POD_ATTRS ",\"scope\":\"a:b\"}", "420", "unknown parameter \"scope\"",
		       ERR_INVALID);
	expect_invalid("{" POD_ATTRS ",\"scopes\":5}", "420", "not a string", ERR_INVALID);
	expect_invalid("{\"csi.storage.k8s.io/serviceAccount.name\":\"x\"}", "420", "pod.namespace",
		       ERR_INVALID);
	expect_invalid("{\"csi.storage.k8s.io/pod.namespace\":\"x\"}", "420", "serviceAccount.name",
		       ERR_INVALID);
	expect_invalid("{\"csi.storage.k8s.io/pod.namespace\":\"team-a\","
		       "\"csi.storage.k8s.io/serviceAccount.name\":\"default\"}",
		       "420", "dedicated", ERR_PERMISSION);
	expect_invalid("{\"csi.storage.k8s.io/pod.namespace\":\"Team_A\","
		       "\"csi.storage.k8s.io/serviceAccount.name\":\"x\"}",
		       "420", "Kubernetes name", ERR_INVALID);
	expect_invalid("{" POD_ATTRS ",\"scopes\":\"noprefix\"}", "420", "not a scope",
		       ERR_INVALID);
	expect_invalid("{" POD_ATTRS ",\"scopes\":\"a:b\\\"c\"}", "420", "not a scope",
		       ERR_INVALID);
	expect_invalid("{" POD_ATTRS ",\"scopes\":\"A:B\"}", "420", "not a scope", ERR_INVALID);
	expect_invalid("{" POD_ATTRS ",\"scopes\":\"a:b:\"}", "420", "not a scope", ERR_INVALID);
	expect_invalid("{" POD_ATTRS ",\"scopes\":\"nav:test//api\"}", "420", "not a scope",
		       ERR_INVALID);
	expect_invalid("{" POD_ATTRS ",\"scopes\":\"/a:b\"}", "420", "not a scope", ERR_INVALID);
	expect_invalid("{" POD_ATTRS ",\"scopes\":\"a:b\\u202e\"}", "420", "one of the scopes",
		       ERR_INVALID);
	expect_invalid("{" POD_ATTRS ",\"filePermission\":\"0999\"}", "420", "filePermission",
		       ERR_INVALID);
	expect_invalid("{" POD_ATTRS ",\"filePermission\":\"rw\"}", "420", "filePermission",
		       ERR_INVALID);
	expect_invalid("{" POD_ATTRS "}", "0644x", "permission", ERR_INVALID);
	expect_invalid("{" POD_ATTRS "}", "1000", "permission", ERR_INVALID);
	expect_invalid("{\"a\":\"1\",\"a\":\"2\"}", "420", "not a JSON object", ERR_INVALID);
}

static void test_too_many_scopes(void **state)
{
	char attrs[8192];
	size_t n = (size_t)snprintf(attrs, sizeof(attrs), "{" POD_ATTRS ",\"scopes\":\"");

	for (int i = 0; i <= MOUNT_MAX_SCOPES; i++)
		n += (size_t)snprintf(attrs + n, sizeof(attrs) - n, "p:s%d ", i);
	snprintf(attrs + n, sizeof(attrs) - n, "\"}");
	expect_invalid(attrs, "420", "more than", ERR_INVALID);
}

static void test_modes(void **state)
{
	struct mount_request req = { 0 };
	struct err err = { 0 };

	assert_int_equal(
	    parse("{" POD_ATTRS ",\"filePermission\":\"0640\"}", "null", "420", &req, &err), 0);
	assert_int_equal(req.mode, 0640);
	mount_request_free(&req);
	assert_int_equal(parse("{" POD_ATTRS "}", "null", "256", &req, &err), 0);
	assert_int_equal(req.mode, 0400);
	mount_request_free(&req);
	assert_int_equal(parse("{" POD_ATTRS "}", "null", "", &req, &err), 0);
	assert_int_equal(req.mode, 0644);
	mount_request_free(&req);
}

/* Attributes with this namespace and service account; a static buffer. */
static const char *with_identity(const char *ns, const char *sa)
{
	static char buf[1024];

	snprintf(buf, sizeof(buf),
		 "{\"csi.storage.k8s.io/pod.namespace\":\"%s\","
		 "\"csi.storage.k8s.io/serviceAccount.name\":\"%s\"}",
		 ns, sa);
	return buf;
}

static bool identity_ok(const char *ns, const char *sa)
{
	struct mount_request req = { 0 };
	struct err err = { 0 };
	int r = parse(with_identity(ns, sa), "null", "420", &req, &err);

	mount_request_free(&req);
	if (r < 0 && !strstr(err.msg, "is not a Kubernetes name"))
		fail_msg("%s/%s: %s", ns, sa, err.msg);
	return r == 0;
}

/* Kubernetes' own rules: namespaces are DNS-1123 labels, ServiceAccounts subdomains. */
static void test_kubernetes_names(void **state)
{
	static const char *const good_sa[] = { "a",	  "0",	   "a-b",  "a.b",
					       "a.b-c.d", "1a.2b", "a--b", "x.0" };
	static const char *const bad_sa[] = { "a..b", ".a",	 "a.", "-a",  "a-",
					      "a.-b", "a-.b",	 "A",  "a_b", "a b",
					      "a/b",  "\\u00e5", "a.B" };
	static const char *const good_ns[] = { "a", "0a", "a-b", "a--b", "team-a1" };
	static const char *const bad_ns[] = { "a.b", "-a", "a-", "A", "a_b", "Team" };
	char long_name[300];

	for (size_t i = 0; i < sizeof(good_sa) / sizeof(good_sa[0]); i++)
		if (!identity_ok("team-a", good_sa[i]))
			fail_msg("service account \"%s\" refused", good_sa[i]);
	for (size_t i = 0; i < sizeof(bad_sa) / sizeof(bad_sa[0]); i++)
		if (identity_ok("team-a", bad_sa[i]))
			fail_msg("service account \"%s\" accepted", bad_sa[i]);
	for (size_t i = 0; i < sizeof(good_ns) / sizeof(good_ns[0]); i++)
		if (!identity_ok(good_ns[i], "app"))
			fail_msg("namespace \"%s\" refused", good_ns[i]);
	for (size_t i = 0; i < sizeof(bad_ns) / sizeof(bad_ns[0]); i++)
		if (identity_ok(bad_ns[i], "app"))
			fail_msg("namespace \"%s\" accepted", bad_ns[i]);

	/* Lengths: 63 and 253 pass, one more does not; a subdomain's labels may pass 63. */
	memset(long_name, 'a', sizeof(long_name));
	long_name[63] = '\0';
	assert_true(identity_ok(long_name, "app"));
	long_name[63] = 'a';
	long_name[64] = '\0';
	assert_false(identity_ok(long_name, "app"));
	long_name[64] = 'a';
	long_name[100] = '\0';
	assert_true(identity_ok("team-a", long_name));
	long_name[100] = 'a';
	long_name[150] = '.';
	long_name[253] = '\0';
	assert_true(identity_ok("team-a", long_name));
	long_name[253] = 'a';
	long_name[254] = '\0';
	assert_false(identity_ok("team-a", long_name));
}

/* filePermission and the driver's permission: owner reads, no one else writes, none executes. */
static void test_mode_rule(void **state)
{
	static const char *const good[] = { "0400", "0440", "0444", "0600",
					    "0640", "0644", "0604", "404" };
	static const char *const bad[] = { "0000", "0",	   "0200", "0700", "0500", "0660",
					   "0666", "0606", "0755", "0777", "0044", "0644x" };
	char attrs[512];

	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		struct mount_request req = { 0 };
		struct err err = { 0 };

		snprintf(attrs, sizeof(attrs), "{" POD_ATTRS ",\"filePermission\":\"%s\"}",
			 good[i]);
		if (parse(attrs, "null", "420", &req, &err) < 0)
			fail_msg("filePermission %s refused: %s", good[i], err.msg);
		mount_request_free(&req);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(attrs, sizeof(attrs), "{" POD_ATTRS ",\"filePermission\":\"%s\"}", bad[i]);
		expect_invalid(attrs, "420", "filePermission", ERR_INVALID);
	}
	/* The driver's field, decimal: 0777 and 0000 refused. */
	expect_invalid("{" POD_ATTRS "}", "511", "field \"permission\": mode 0777", ERR_INVALID);
	expect_invalid("{" POD_ATTRS "}", "0", "field \"permission\": mode 0000", ERR_INVALID);
	expect_invalid("{" POD_ATTRS ",\"filePermission\":\"0777\"}", "420",
		       "parameter \"filePermission\": mode 0777 is refused", ERR_INVALID);
}

/* The env file: each ' of a value written '\'' so that sh reads the value back. */
static void test_env_file_quotes(void **state)
{
	struct mount_content c = {
		.client_id = "c0ffee",
		.jwk_private = "{}",
		.kid = "k1",
		.well_known_url = "https://mp.example/.well-known/oauth-authorization-server",
		.issuer = "https://mp.example/",
		.jwks_uri = "https://mp.example/jwk?a='$(touch /tmp/x)'",
		.token_endpoint = "https://mp.example/token'\n'`id`",
	};
	struct mount_request req = { 0 };
	struct mount_file files[MOUNT_MAX_FILES];
	struct err err = { 0 };
	const char *env = NULL;
	size_t n = 0;

	assert_int_equal(parse("{" POD_ATTRS "}", "null", "420", &req, &err), 0);
	assert_int_equal(mount_build_files(&req, &c, files, &n), 0);
	for (size_t i = 0; i < n; i++)
		if (!strcmp(files[i].name, "maskinporten.env"))
			env = files[i].contents;
	assert_non_null(env);
	assert_non_null(strstr(
	    env, "MASKINPORTEN_JWKS_URI='https://mp.example/jwk?a='\\''$(touch /tmp/x)'\\'''\n"));
	assert_non_null(strstr(
	    env, "MASKINPORTEN_TOKEN_ENDPOINT='https://mp.example/token'\\''\n'\\''`id`'\n"));
	assert_non_null(strstr(env, "MASKINPORTEN_CLIENT_ID='c0ffee'\n"));
	mount_files_free(files, n);
	mount_request_free(&req);
}

static const struct mount_content content = {
	.client_id = "c0ffee00-0000-4000-8000-000000000001",
	.jwk_private = "{\"use\":\"sig\",\"kty\":\"RSA\",\"kid\":\"k1\",\"d\":\"secret\"}",
	.kid = "mcp.abcd1234.700.c0ffee00-0000-4000-8000-000000000001",
	.well_known_url = "https://test.maskinporten.no/.well-known/oauth-authorization-server",
	.issuer = "https://test.maskinporten.no/",
	.jwks_uri = "https://test.maskinporten.no/jwk",
	.token_endpoint = "https://test.maskinporten.no/token",
};

static V1alpha1__MountResponse *respond(const struct mount_content *c, bool with_files)
{
	struct mount_request req = { 0 };
	struct err err = { 0 };
	V1alpha1__MountResponse *resp;
	uint8_t *buf = NULL;
	size_t len = 0;

	assert_int_equal(parse("{" POD_ATTRS ",\"scopes\":\"a:b c:d\",\"filePermission\":\"440\"}",
			       "null", "420", &req, &err),
			 0);
	assert_int_equal(mount_build_response(&req, c, with_files, &buf, &len), 0);
	resp = v1alpha1__mount_response__unpack(NULL, len, buf);
	assert_non_null(resp);
	free(buf);
	mount_request_free(&req);
	return resp;
}

static const char *file_of(const V1alpha1__MountResponse *r, const char *name, int *ret_mode)
{
	static char buf[4096];

	for (size_t i = 0; i < r->n_files; i++)
		if (!strcmp(r->files[i]->path, name)) {
			assert_true(r->files[i]->contents.len < sizeof(buf));
			memcpy(buf, r->files[i]->contents.data, r->files[i]->contents.len);
			buf[r->files[i]->contents.len] = '\0';
			*ret_mode = r->files[i]->mode;
			return buf;
		}
	return NULL;
}

static const char *version_of(const V1alpha1__MountResponse *r, const char *id)
{
	for (size_t i = 0; i < r->n_object_version; i++)
		if (!strcmp(r->object_version[i]->id, id))
			return r->object_version[i]->version;
	return NULL;
}

static void test_response_files(void **state)
{
	V1alpha1__MountResponse *r = respond(&content, true);
	int mode = 0;

	assert_int_equal(r->n_files, 8);
	assert_string_equal(file_of(r, "MASKINPORTEN_CLIENT_ID", &mode), content.client_id);
	assert_int_equal(mode, 0440);
	assert_string_equal(file_of(r, "MASKINPORTEN_CLIENT_JWK", &mode), content.jwk_private);
	assert_string_equal(file_of(r, "MASKINPORTEN_SCOPES", &mode), "a:b c:d");
	assert_string_equal(file_of(r, "MASKINPORTEN_ISSUER", &mode), content.issuer);
	assert_string_equal(file_of(r, "MASKINPORTEN_TOKEN_ENDPOINT", &mode),
			    content.token_endpoint);
	assert_string_equal(file_of(r, "MASKINPORTEN_JWKS_URI", &mode), content.jwks_uri);
	assert_string_equal(file_of(r, "MASKINPORTEN_WELL_KNOWN_URL", &mode),
			    content.well_known_url);
	assert_non_null(
	    strstr(file_of(r, "maskinporten.env", &mode), "MASKINPORTEN_SCOPES='a:b c:d'\n"));
	assert_null(file_of(r, "MASKINPORTEN_EXPOSED_SCOPES", &mode));
	assert_int_equal(r->n_object_version, 8);
	assert_string_equal(version_of(r, "MASKINPORTEN_CLIENT_JWK"), content.kid);
	v1alpha1__mount_response__free_unpacked(r, NULL);
}

static void test_versions_follow_content(void **state)
{
	struct mount_content other = content;
	V1alpha1__MountResponse *a = respond(&content, true), *b = respond(&content, false);
	V1alpha1__MountResponse *c;
	char env_a[32], id_a[32];

	/* Provider write mode: versions without files, the same versions. */
	assert_int_equal(b->n_files, 0);
	for (size_t i = 0; i < a->n_object_version; i++)
		assert_string_equal(a->object_version[i]->version,
				    version_of(b, a->object_version[i]->id));
	snprintf(env_a, sizeof(env_a), "%s", version_of(a, "maskinporten.env"));
	snprintf(id_a, sizeof(id_a), "%s", version_of(a, "MASKINPORTEN_CLIENT_ID"));

	other.kid = "mcp.abcd1234.701.c0ffee00-0000-4000-8000-000000000001";
	c = respond(&other, true);
	assert_string_equal(version_of(c, "MASKINPORTEN_CLIENT_ID"), id_a);
	assert_string_not_equal(version_of(c, "maskinporten.env"), env_a);
	assert_string_equal(version_of(c, "MASKINPORTEN_CLIENT_JWK"), other.kid);
	v1alpha1__mount_response__free_unpacked(a, NULL);
	v1alpha1__mount_response__free_unpacked(b, NULL);
	v1alpha1__mount_response__free_unpacked(c, NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid_request),
		cmocka_unit_test(test_secrets_forms),
		cmocka_unit_test(test_rejections),
		cmocka_unit_test(test_too_many_scopes),
		cmocka_unit_test(test_modes),
		cmocka_unit_test(test_kubernetes_names),
		cmocka_unit_test(test_mode_rule),
		cmocka_unit_test(test_env_file_quotes),
		cmocka_unit_test(test_response_files),
		cmocka_unit_test(test_versions_follow_content),
	};

	return cmocka_run_group_tests_name("mount", tests, NULL, NULL);
}
