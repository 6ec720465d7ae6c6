/*
 * mount: the MountRequest in, the MountResponse out, no I/O in between.
 *
 * Identity comes only from the attributes the kubelet sets after the pod's
 * own volumeAttributes (pod.namespace, serviceAccount.name), so a pod can
 * never pick another app's client. Parameters are a closed set: an unknown
 * key is an error, never silently ignored. Must never copy `secrets` or
 * serviceAccount.tokens into a message, a log line or memory it keeps.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "hash.h"
#include "attrs.h"
#include "keys.h"
#include "mount.h"
#include "utf8.h"
#include "wipe.h"
#include "provider.pb-c.h"

#define ATTR_NAMESPACE "csi.storage.k8s.io/pod.namespace"
#define ATTR_SA	       "csi.storage.k8s.io/serviceAccount.name"
#define ATTR_POD_NAME  "csi.storage.k8s.io/pod.name"
#define ATTR_POD_UID   "csi.storage.k8s.io/pod.uid"

/*
 * Every attribute key we accept: the driver's and the kubelet's (ignored but
 * for identity), then our SecretProviderClass parameters. Anything else is
 * refused, so a misspelt parameter cannot pass unnoticed.
 */
enum known_key {
	K_SPC,
	K_NAMESPACE,
	K_SA,
	K_POD_NAME,
	K_POD_UID,
	K_EPHEMERAL,
	K_TOKENS,
	K_SCOPES,
	K_PERMISSION,
	K_EXPOSES,
	K_COUNT
};

static const struct {
	const char *name;
	size_t len;
} known_keys[K_COUNT] = {
#define KEY(s)                                                                                     \
	{                                                                                          \
		s, sizeof(s) - 1                                                                   \
	}
	[K_SPC] = KEY("secretProviderClass"),
	[K_NAMESPACE] = KEY(ATTR_NAMESPACE),
	[K_SA] = KEY(ATTR_SA),
	[K_POD_NAME] = KEY(ATTR_POD_NAME),
	[K_POD_UID] = KEY(ATTR_POD_UID),
	[K_EPHEMERAL] = KEY("csi.storage.k8s.io/ephemeral"),
	[K_TOKENS] = KEY("csi.storage.k8s.io/serviceAccount.tokens"),
	[K_SCOPES] = KEY("scopes"),
	[K_PERMISSION] = KEY("filePermission"),
	[K_EXPOSES] = KEY("exposes"),
#undef KEY
};

/* Which known key this is, or K_COUNT. */
static enum known_key known_key(const char *key)
{
	size_t len = strlen(key);

	for (int i = 0; i < K_COUNT; i++)
		if (len == known_keys[i].len && !memcmp(key, known_keys[i].name, len))
			return (enum known_key)i;
	return K_COUNT;
}

/*
 * Kubernetes' IsDNS1123Label on n bytes: [a-z0-9]([-a-z0-9]*[a-z0-9])?, at
 * most 63 bytes. Namespace names are labels.
 */
static bool dns_label_valid(const char *s, size_t n)
{
	if (n == 0 || n > 63)
		return false;
	for (size_t i = 0; i < n; i++) {
		bool alnum = (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9');

		if (!alnum && (s[i] != '-' || i == 0 || i == n - 1))
			return false;
	}
	return true;
}

/*
 * Kubernetes' IsDNS1123Subdomain, which ServiceAccount names must pass: at
 * most 253 bytes, labels as above joined by single dots. Kubernetes holds
 * the labels of a subdomain to the pattern only, not to 63 bytes each.
 */
static bool dns_subdomain_valid(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > 253)
		return false;
	for (const char *label = s;;) {
		size_t len = strcspn(label, ".");

		/* An empty label: a leading, trailing or doubled dot. */
		if (len == 0)
			return false;
		for (size_t i = 0; i < len; i++) {
			bool alnum = (label[i] >= 'a' && label[i] <= 'z') ||
				     (label[i] >= '0' && label[i] <= '9');

			if (!alnum && (label[i] != '-' || i == 0 || i == len - 1))
				return false;
		}
		if (label[len] == '\0')
			return true;
		label += len + 1;
	}
}

/* Bytes of one scope character at s: ASCII [a-z0-9._-], or æ ø å in UTF-8; 0 otherwise. */
static size_t scope_char(const unsigned char *s, size_t left)
{
	if (islower(*s) || isdigit(*s) || *s == '.' || *s == '_' || *s == '-')
		return 1;
	/* æ U+00E6, ø U+00F8, å U+00E5 */
	if (left >= 2 && s[0] == 0xC3 && (s[1] == 0xA6 || s[1] == 0xB8 || s[1] == 0xA5))
		return 2;
	return 0;
}

/*
 * DigDir's scope syntax, prefix ':' subscope: lowercase letters (æøå too),
 * digits and ._- in segments separated by ':' or '/', none of them empty.
 */
static bool scope_valid(const char *text, size_t n)
{
	const unsigned char *s = (const unsigned char *)text;
	bool colon = false, in_segment = false;

	if (n == 0 || n > MOUNT_MAX_SCOPE_LEN)
		return false;
	for (size_t i = 0; i < n;) {
		size_t k;

		if (s[i] == ':' || s[i] == '/') {
			if (!in_segment)
				return false;
			colon |= s[i] == ':';
			in_segment = false;
			i++;
			continue;
		}
		k = scope_char(s + i, n - i);
		if (k == 0)
			return false;
		in_segment = true;
		i += k;
	}
	return colon && in_segment;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/*
 * The scopes parameter (NULL: none) into req->scopes and req->scopes_key:
 * split on spaces, tabs, newlines and commas, validated and deduplicated.
 */
static int parse_scopes(const char *text, struct mount_request *req, struct err *err)
{
	const char *p = text ? text : "";
	char *sorted[MOUNT_MAX_SCOPES];
	size_t total = 0;

	while (*p) {
		size_t n;
		bool dup = false;

		p += strspn(p, " \t\r\n,");
		n = strcspn(p, " \t\r\n,");
		if (n == 0)
			break;
		if (!scope_valid(p, n)) {
			/* Quoted back only when it is plain printable ASCII. */
			bool plain = true;

			for (size_t i = 0; i < n; i++)
				plain &= p[i] > ' ' && p[i] < 0x7f && p[i] != '"' && p[i] != '\\';
			return err_set(err, ERR_INVALID, EINVAL,
				       "parameter \"scopes\": %s%.*s%s is not a scope (expected "
				       "prefix:subscope of lowercase letters, digits and ._- in "
				       "non-empty parts separated by : or /)",
				       plain ? "\"" : "one of the scopes",
				       plain ? (int)(n > 80 ? 80 : n) : 0, p, plain ? "\"" : "");
		}
		for (size_t i = 0; i < req->nscopes; i++)
			if (strlen(req->scopes[i]) == n && !memcmp(req->scopes[i], p, n))
				dup = true;
		if (!dup) {
			if (req->nscopes == MOUNT_MAX_SCOPES)
				return err_set(err, ERR_INVALID, EINVAL,
					       "parameter \"scopes\": more than %d scopes",
					       MOUNT_MAX_SCOPES);
			req->scopes[req->nscopes] = strndup(p, n);
			if (!req->scopes[req->nscopes])
				return err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
			req->nscopes++;
		}
		p += n;
	}

	memcpy(sorted, req->scopes, req->nscopes * sizeof(char *));
	qsort(sorted, req->nscopes, sizeof(char *), cmp_str);
	for (size_t i = 0; i < req->nscopes; i++)
		total += strlen(sorted[i]) + 1;
	req->scopes_key = calloc(1, total + 1);
	if (!req->scopes_key)
		return err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
	for (size_t i = 0; i < req->nscopes; i++) {
		if (i)
			strncat(req->scopes_key, " ", total - strlen(req->scopes_key));
		strncat(req->scopes_key, sorted[i], total - strlen(req->scopes_key));
	}
	return 0;
}

/* An octal mode such as "0640" or "640", at most 0777. */
static int parse_octal_mode(const char *s, unsigned *ret)
{
	char *end = NULL;
	unsigned long v;

	if (!*s || strlen(s) > 4 || strspn(s, "01234567") != strlen(s))
		return -EINVAL;
	v = strtoul(s, &end, 8);
	if (*end || v > 0777)
		return -EINVAL;
	*ret = (unsigned)v;
	return 0;
}

/*
 * The modes the files may have, all of them alike, one holding a private key:
 * the owner can read (0400), no one but the owner can write (no 0022), and
 * nothing executes (no 0111). So 0400, 0440, 0444, 0600, 0640 and 0644
 * pass; 0000, 0200, 0660, 0666, 0755 and 0777 do not.
 */
static bool mode_allowed(unsigned mode)
{
	return (mode & 0400) && !(mode & 0133);
}

/* The driver's `permission`: JSON of a Go os.FileMode, the decimal text "420". */
static int parse_permission(const char *s, unsigned *ret)
{
	char *end = NULL;
	unsigned long v;

	if (!s || !*s) {
		*ret = MOUNT_DEFAULT_MODE;
		return 0;
	}
	if (strlen(s) > 3 || strspn(s, "0123456789") != strlen(s))
		return -EINVAL;
	v = strtoul(s, &end, 10);
	if (*end || v > 0777)
		return -EINVAL;
	*ret = (unsigned)v;
	return 0;
}

/* `secrets` may be "", "null", "{}" or an object of strings; its content is never read. */
static int check_secrets(const char *s, struct err *err)
{
	json_error_t jerr;
	json_t *j;
	int r = 0;

	/* What the driver sends without a nodePublishSecretRef, without a parse. */
	if (!s || !*s || !strcmp(s, "null") || !strcmp(s, "{}"))
		return 0;
	j = json_loads(s, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
	if (!j || !(json_is_null(j) || json_is_object(j)))
		r = err_set(err, ERR_INVALID, EINVAL,
			    "field \"secrets\" is not null or a JSON object (its content is not "
			    "shown)");
	json_decref(j);
	return r;
}

/* A copy of v into *ret, NULL when v is NULL or "". Returns 0, or -ENOMEM. */
static int dup_nonempty(const char *v, char **ret)
{
	*ret = v && *v ? strdup(v) : NULL;
	return v && *v && !*ret ? -ENOMEM : 0;
}

/* Copies at most size - 1 bytes of v, ending on a character, into dst; "" when v is NULL. */
static void copy_who(char *dst, size_t size, const char *v)
{
	size_t n = v ? utf8_fit(v, size - 1) : 0;

	memcpy(dst, v ? v : "", n);
	dst[n] = '\0';
}

/* The `attributes` field into attrs: a JSON object of strings, within MOUNT_MAX_ATTRIBUTES. */
static int parse_attributes(const char *text, struct attrs *attrs, struct err *err)
{
	const char *why = NULL;
	size_t len, at = 0;

	if (!text || !*text)
		return err_set(err, ERR_INVALID, EINVAL,
			       "field \"attributes\" is empty: the driver always sends the pod's "
			       "attributes");
	len = strlen(text);
	if (len > MOUNT_MAX_ATTRIBUTES)
		return err_set(err, ERR_INVALID, E2BIG,
			       "field \"attributes\" is larger than %d bytes",
			       MOUNT_MAX_ATTRIBUTES);
	if (attrs_parse(text, len, attrs, &why, &at) < 0)
		return err_set(
		    err, ERR_INVALID, EINVAL,
		    "field \"attributes\" is not a JSON object of strings: %s at byte %zu", why,
		    at);
	return 0;
}

/*
 * Sorts the members into value[] by known key (borrowed from attrs), in
 * one pass: attrs_parse has refused duplicate keys. value[] is filled even
 * when a key is unknown, so a refusal can still name the pod.
 */
static int sort_attributes(const struct attrs *attrs, const char *value[K_COUNT], struct err *err)
{
	const char *unknown = NULL;

	for (size_t i = 0; i < attrs->n; i++) {
		enum known_key k = known_key(attrs->members[i].key);

		if (k != K_COUNT)
			value[k] = attrs->members[i].value;
		else if (!unknown)
			unknown = attrs->members[i].key;
	}
	if (unknown)
		return err_set(err, ERR_INVALID, EINVAL,
			       "unknown parameter \"%.*s\": the maskinporten provider takes "
			       "scopes, filePermission and exposes (a misspelt parameter would "
			       "give a client without its scopes)",
			       (int)utf8_fit(unknown, 100), unknown);
	return 0;
}

/*
 * The pod's identity from the kubelet's attributes: namespace and service
 * account, both present and Kubernetes names, and not the namespace's
 * shared `default` account; pod name and uid as given.
 */
static int parse_identity(const char *const value[K_COUNT], struct mount_request *req,
			  struct err *err)
{
	if (dup_nonempty(value[K_NAMESPACE], &req->namespace_name) < 0 ||
	    dup_nonempty(value[K_SA], &req->service_account) < 0 ||
	    dup_nonempty(value[K_POD_NAME], &req->pod_name) < 0 ||
	    dup_nonempty(value[K_POD_UID], &req->pod_uid) < 0)
		return err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
	if (!req->namespace_name || !req->service_account)
		return err_set(err, ERR_INVALID, EINVAL,
			       "attribute \"%s\" is missing: the CSIDriver object must set "
			       "podInfoOnMount: true so the kubelet passes the pod's identity",
			       req->namespace_name ? ATTR_SA : ATTR_NAMESPACE);
	if (!dns_label_valid(req->namespace_name, strlen(req->namespace_name)))
		return err_set(err, ERR_INVALID, EINVAL,
			       "the pod's namespace is not a Kubernetes name: a namespace is a "
			       "DNS-1123 label (lowercase letters, digits and '-', at most 63)");
	if (!dns_subdomain_valid(req->service_account))
		return err_set(err, ERR_INVALID, EINVAL,
			       "the pod's service account is not a Kubernetes name: a "
			       "ServiceAccount name is a DNS-1123 subdomain (labels of lowercase "
			       "letters, digits and '-' joined by single dots, at most 253)");
	if (!strcmp(req->service_account, "default"))
		return err_set(err, ERR_PERMISSION, EPERM,
			       "pod %s/%s runs as the namespace's \"default\" service account, "
			       "which every pod of the namespace shares: give the app a dedicated "
			       "serviceAccountName (its name names the Maskinporten client)",
			       req->namespace_name, req->pod_name ? req->pod_name : "?");
	return 0;
}

/*
 * The files' mode: the filePermission parameter when given (octal), else
 * the driver's `permission` field (decimal); either way one that
 * mode_allowed() lets hold a private key.
 */
static int parse_mode(const char *param, const char *field, unsigned *ret_mode, struct err *err)
{
	unsigned mode = 0;

	if (param) {
		if (parse_octal_mode(param, &mode) < 0)
			return err_set(err, ERR_INVALID, EINVAL,
				       "parameter \"filePermission\": \"%.*s\" is not an octal "
				       "mode such as \"0640\"",
				       (int)utf8_fit(param, 16), param);
	} else if (parse_permission(field, &mode) < 0) {
		return err_set(err, ERR_INVALID, EINVAL,
			       "field \"permission\" is not a decimal file mode such as \"420\"");
	}
	if (!mode_allowed(mode))
		return err_set(err, ERR_INVALID, EINVAL,
			       "%s: mode %04o is refused for files that hold a private key: the "
			       "owner must be able to read them, no one else may write them and "
			       "none is executable (0644, 0640, 0600, 0444, 0440 and 0400 are "
			       "allowed)",
			       param ? "parameter \"filePermission\"" : "field \"permission\"",
			       mode);
	*ret_mode = mode;
	return 0;
}

/* The `exposes` parameter, kept as text (scopes_parse reads it on a worker). */
static int parse_exposes(const char *text, struct mount_request *req, struct err *err)
{
	if (!text)
		return 0;
	if (strlen(text) > MOUNT_MAX_EXPOSES)
		return err_set(err, ERR_INVALID, E2BIG,
			       "parameter \"exposes\" is larger than %d bytes", MOUNT_MAX_EXPOSES);
	req->exposes = strdup(text);
	return req->exposes ? 0 : err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
}

/* The target path (provider write mode) and the client's description, <cluster>:<ns>:<app>. */
static int name_client(const char *cluster, const char *target_path, struct mount_request *req,
		       struct err *err)
{
	if (dup_nonempty(target_path, &req->target_path) < 0 ||
	    asprintf(&req->description, "%s:%s:%s", cluster, req->namespace_name,
		     req->service_account) < 0) {
		req->description = NULL;
		return err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
	}
	return 0;
}

int mount_parse(const uint8_t *data, size_t len, const char *cluster, struct mount_request *ret,
		struct mount_who *who, struct err *err)
{
	struct mount_request req = { 0 };
	V1alpha1__MountRequest *msg = NULL;
	struct attrs attrs = { 0 };
	const char *value[K_COUNT] = { 0 };
	int r;

	msg = v1alpha1__mount_request__unpack(NULL, len, data);
	if (!msg) {
		r = err_set(err, ERR_INVALID, EINVAL,
			    "the MountRequest is not a valid protobuf message");
		goto out;
	}
	/* Each step fills its part of req or names what is wrong, in the order a person fixes them.
	 */
	r = parse_attributes(msg->attributes, &attrs, err);
	if (r < 0)
		goto out;
	r = sort_attributes(&attrs, value, err);
	if (r < 0)
		goto out;
	r = check_secrets(msg->secrets, err);
	if (r < 0)
		goto out;
	r = parse_identity(value, &req, err);
	if (r < 0)
		goto out;
	r = parse_scopes(value[K_SCOPES], &req, err);
	if (r < 0)
		goto out;
	r = parse_mode(value[K_PERMISSION], msg->permission, &req.mode, err);
	if (r < 0)
		goto out;
	r = parse_exposes(value[K_EXPOSES], &req, err);
	if (r < 0)
		goto out;
	r = name_client(cluster, msg->target_path, &req, err);
	if (r < 0)
		goto out;

	*ret = req;
	memset(&req, 0, sizeof(req));
out:
	/* A refused request is still logged with whatever identity it carries. */
	if (r < 0 && who) {
		copy_who(who->namespace_name, sizeof(who->namespace_name), value[K_NAMESPACE]);
		copy_who(who->pod_name, sizeof(who->pod_name), value[K_POD_NAME]);
		copy_who(who->service_account, sizeof(who->service_account), value[K_SA]);
	}
	mount_request_free(&req);
	attrs_release(&attrs);
	if (msg)
		v1alpha1__mount_request__free_unpacked(msg, NULL);
	return r;
}

void mount_request_free(struct mount_request *req)
{
	if (!req)
		return;
	free(req->namespace_name);
	free(req->service_account);
	free(req->pod_name);
	free(req->pod_uid);
	free(req->target_path);
	free(req->description);
	for (size_t i = 0; i < req->nscopes; i++)
		free(req->scopes[i]);
	free(req->scopes_key);
	free(req->exposes);
	memset(req, 0, sizeof(*req));
}

/* Joins the scopes as given, with single spaces. */
static char *scopes_text(const struct mount_request *req)
{
	size_t total = 1;
	char *s;

	for (size_t i = 0; i < req->nscopes; i++)
		total += strlen(req->scopes[i]) + 1;
	s = calloc(1, total);
	if (!s)
		return NULL;
	for (size_t i = 0; i < req->nscopes; i++) {
		if (i)
			strncat(s, " ", total - strlen(s) - 1);
		strncat(s, req->scopes[i], total - strlen(s) - 1);
	}
	return s;
}

static int add_file(struct mount_file *files, size_t *n, const char *name, const char *value)
{
	struct mount_file *f = &files[*n];
	size_t nlen = strlen(name), vlen = value ? strlen(value) : 0;

	if (nlen >= sizeof(f->name))
		return -ENAMETOOLONG;
	memcpy(f->name, name, nlen + 1);
	f->contents = malloc(vlen + 1);
	if (!f->contents)
		return -ENOMEM;
	if (vlen)
		memcpy(f->contents, value, vlen);
	f->contents[vlen] = '\0';
	f->len = vlen;
	(*n)++;
	return 0;
}

/*
 * The dotenv file: KEY='value' lines that sh sources to exactly the values.
 * Inside single quotes sh takes every byte as it stands except the quote
 * itself, so each ' in a value is written '\'' (close, an escaped quote,
 * reopen). Values come from Maskinporten's metadata and DigDir, and a quote
 * in them must never run a command in the pods that source the file. Values
 * without a quote (every real one) read the same to other dotenv parsers.
 * Built with memcpy: this runs on every warm Mount, and stdio's
 * open_memstream and fprintf cost more than the rest of the answer.
 */
static char *env_file(const struct mount_file *files, size_t n)
{
	static const char quote_escaped[] = "'\\''";
	const size_t qlen = sizeof(quote_escaped) - 1;
	size_t total = 1, at = 0;
	char *buf;

	for (size_t i = 0; i < n; i++) {
		total += strlen(files[i].name) + files[i].len + sizeof("=''\n") - 1;
		for (size_t j = 0; j < files[i].len; j++)
			if (files[i].contents[j] == '\'')
				total += qlen - 1;
	}
	buf = malloc(total);
	if (!buf)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		size_t nlen = strlen(files[i].name);
		const char *v = files[i].contents, *end = v + files[i].len, *q;

		memcpy(buf + at, files[i].name, nlen);
		at += nlen;
		memcpy(buf + at, "='", 2);
		at += 2;
		while ((q = memchr(v, '\'', (size_t)(end - v)))) {
			memcpy(buf + at, v, (size_t)(q - v));
			at += (size_t)(q - v);
			memcpy(buf + at, quote_escaped, qlen);
			at += qlen;
			v = q + 1;
		}
		memcpy(buf + at, v, (size_t)(end - v));
		at += (size_t)(end - v);
		memcpy(buf + at, "'\n", 2);
		at += 2;
	}
	buf[at] = '\0';
	return buf;
}

void mount_files_free(struct mount_file *files, size_t nfiles)
{
	for (size_t i = 0; i < nfiles; i++) {
		if (files[i].contents) {
			wipe(files[i].contents, files[i].len);
			free(files[i].contents);
		}
		files[i].contents = NULL;
	}
}

int mount_build_files(const struct mount_request *req, const struct mount_content *c,
		      struct mount_file files[MOUNT_MAX_FILES], size_t *ret_nfiles)
{
	char *scopes = scopes_text(req), *env = NULL;
	size_t n = 0;
	int r = -ENOMEM;

	memset(files, 0, sizeof(files[0]) * MOUNT_MAX_FILES);
	if (!scopes)
		goto out;
	if (add_file(files, &n, "MASKINPORTEN_CLIENT_ID", c->client_id) < 0 ||
	    add_file(files, &n, "MASKINPORTEN_CLIENT_JWK", c->jwk_private) < 0 ||
	    add_file(files, &n, "MASKINPORTEN_SCOPES", scopes) < 0 ||
	    add_file(files, &n, "MASKINPORTEN_WELL_KNOWN_URL", c->well_known_url) < 0 ||
	    add_file(files, &n, "MASKINPORTEN_ISSUER", c->issuer) < 0 ||
	    add_file(files, &n, "MASKINPORTEN_JWKS_URI", c->jwks_uri) < 0 ||
	    add_file(files, &n, "MASKINPORTEN_TOKEN_ENDPOINT", c->token_endpoint) < 0)
		goto out;
	if (c->exposed_scopes &&
	    add_file(files, &n, "MASKINPORTEN_EXPOSED_SCOPES", c->exposed_scopes) < 0)
		goto out;
	env = env_file(files, n);
	if (!env || add_file(files, &n, "maskinporten.env", env) < 0)
		goto out;
	*ret_nfiles = n;
	r = 0;
out:
	if (env) {
		wipe(env, strlen(env));
		free(env);
	}
	free(scopes);
	if (r < 0)
		mount_files_free(files, n);
	return r;
}

/*
 * A version string for non-secret content: 64-bit FNV-1a as 16 hex digits.
 * Versions only tell the driver that a file changed; no adversary picks the
 * content, so a cryptographic hash (and its per-call EVP fetch, which cost
 * a third of a warm Mount) buys nothing here. Never used on key material.
 */
static void version_hash(const void *data, size_t len, char ret[17])
{
	static const char hex[] = "0123456789abcdef";
	uint64_t h = hash_bytes(HASH_INIT, data, len);

	for (int i = 15; i >= 0; i--, h >>= 4)
		ret[i] = hex[h & 15];
	ret[16] = '\0';
}

int mount_pack_response(const struct mount_file *files, size_t nfiles, unsigned mode,
			const char *kid, bool with_files, uint8_t **ret_payload, size_t *ret_len)
{
	V1alpha1__MountResponse resp = V1ALPHA1__MOUNT_RESPONSE__INIT;
	V1alpha1__File pb_files[MOUNT_MAX_FILES], *file_ptrs[MOUNT_MAX_FILES];
	V1alpha1__ObjectVersion versions[MOUNT_MAX_FILES], *version_ptrs[MOUNT_MAX_FILES];
	char hashes[MOUNT_MAX_FILES][17];
	char mix[KEYS_KID_MAX + MOUNT_MAX_FILES * 20];
	size_t len, mixlen = 0, vlen;
	uint8_t *buf;

	if (nfiles > MOUNT_MAX_FILES)
		return -EINVAL;
	for (size_t i = 0; i < nfiles; i++) {
		v1alpha1__file__init(&pb_files[i]);
		pb_files[i].path = (char *)files[i].name;
		pb_files[i].mode = (int32_t)mode;
		pb_files[i].contents.data = (uint8_t *)files[i].contents;
		pb_files[i].contents.len = files[i].len;
		file_ptrs[i] = &pb_files[i];

		/*
		 * Versions follow content. The key's is its kid, the env file's a hash of
		 * the kid and the other versions: never a hash of key material.
		 */
		v1alpha1__object_version__init(&versions[i]);
		versions[i].id = (char *)files[i].name;
		if (!strcmp(files[i].name, "MASKINPORTEN_CLIENT_JWK")) {
			versions[i].version = (char *)kid;
		} else if (!strcmp(files[i].name, "maskinporten.env")) {
			version_hash(mix, mixlen, hashes[i]);
			versions[i].version = hashes[i];
		} else {
			version_hash(files[i].contents, files[i].len, hashes[i]);
			versions[i].version = hashes[i];
		}
		vlen = strlen(versions[i].version);
		if (mixlen + vlen + 1 < sizeof(mix)) {
			memcpy(mix + mixlen, versions[i].version, vlen);
			mix[mixlen + vlen] = '|';
			mixlen += vlen + 1;
		}
		version_ptrs[i] = &versions[i];
	}
	resp.n_object_version = nfiles;
	resp.object_version = version_ptrs;
	if (with_files) {
		resp.n_files = nfiles;
		resp.files = file_ptrs;
	}

	len = v1alpha1__mount_response__get_packed_size(&resp);
	buf = malloc(len ? len : 1);
	if (!buf)
		return -ENOMEM;
	v1alpha1__mount_response__pack(&resp, buf);
	*ret_payload = buf;
	*ret_len = len;
	return 0;
}

int mount_build_response(const struct mount_request *req, const struct mount_content *c,
			 bool with_files, uint8_t **ret_payload, size_t *ret_len)
{
	struct mount_file files[MOUNT_MAX_FILES];
	size_t nfiles = 0;
	int r;

	r = mount_build_files(req, c, files, &nfiles);
	if (r < 0)
		return r;
	r = mount_pack_response(files, nfiles, req->mode, c->kid, with_files, ret_payload, ret_len);
	mount_files_free(files, nfiles);
	return r;
}

int mount_version_response(uint8_t **ret_payload, size_t *ret_len)
{
	V1alpha1__VersionResponse resp = V1ALPHA1__VERSION_RESPONSE__INIT;
	size_t len;
	uint8_t *buf;

	resp.version = (char *)"v1alpha1";
	resp.runtime_name = (char *)"maskinporten-csi-provider";
	resp.runtime_version = (char *)PROVIDER_VERSION;
	len = v1alpha1__version_response__get_packed_size(&resp);
	buf = malloc(len ? len : 1);
	if (!buf)
		return -ENOMEM;
	v1alpha1__version_response__pack(&resp, buf);
	*ret_payload = buf;
	*ret_len = len;
	return 0;
}
