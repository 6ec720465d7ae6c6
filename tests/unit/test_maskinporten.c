/*
 * Unit tests of the maskinporten module: the metadata document's checks
 * (the issuer serves this very well-known URL, a trailing '/' on it and
 * nothing else absorbed; both endpoints on the issuer's origin unless
 * trusted), the token endpoint's answers (Maskinporten's error code in
 * err->code, no token ever in a message), the organisation number (from
 * consumer.ID only), and the scopes each admin token asks for, read from the
 * grants a small plain-HTTP server on 127.0.0.1 receives.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include "clock.h"
#include "http.h"
#include "keys.h"
#include "maskinporten.h"

#define WK   "https://mp.example/.well-known/oauth-authorization-server"
#define ORG  "889640782"
#define JSON "application/json"

/* ---- answers as http_do hands them over ------------------------------------ */

static struct http_response answer(long status, const char *content_type, const char *body)
{
	struct http_response r = { .status = status, .body = (char *)body };

	r.body_len = strlen(body);
	snprintf(r.content_type, sizeof(r.content_type), "%s", content_type);
	return r;
}

/* The metadata document with these three members. */
static struct http_response metadata(const char *issuer, const char *token, const char *jwks)
{
	static char body[1024];

	snprintf(body, sizeof(body),
		 "{\"issuer\":\"%s\",\"token_endpoint\":\"%s\",\"jwks_uri\":\"%s\"}", issuer, token,
		 jwks);
	return answer(200, JSON, body);
}

/* mp_parse_metadata's verdict on resp for WK; frees what it returned. */
static int parse_meta(const struct http_response *resp, bool trust, struct err *err)
{
	struct mp_metadata m = { 0 };
	int r;

	memset(err, 0, sizeof(*err));
	r = mp_parse_metadata(WK, resp, trust, &m, err);
	if (r == 0) {
		assert_string_equal(m.well_known_url, WK);
		assert_non_null(m.issuer);
		free((char *)m.issuer);
		free((char *)m.token_endpoint);
		free((char *)m.jwks_uri);
	}
	return r;
}

/* ---- metadata ------------------------------------------------------------- */

static void test_metadata_accepted(void **state)
{
	struct http_response resp =
	    metadata("https://mp.example", "https://mp.example/token", "https://mp.example/jwk");
	struct mp_metadata m = { 0 };
	struct err err = { 0 };

	assert_int_equal(mp_parse_metadata(WK, &resp, false, &m, &err), 0);
	assert_string_equal(m.issuer, "https://mp.example");
	assert_string_equal(m.token_endpoint, "https://mp.example/token");
	assert_string_equal(m.jwks_uri, "https://mp.example/jwk");
	free((char *)m.issuer);
	free((char *)m.token_endpoint);
	free((char *)m.jwks_uri);

	/* A parameter on the media type is still JSON. */
	resp = metadata("https://mp.example", "https://mp.example/token", "https://mp.example/jwk");
	snprintf(resp.content_type, sizeof(resp.content_type), "application/json; charset=utf-8");
	assert_int_equal(parse_meta(&resp, false, &err), 0);
}

static void test_metadata_issuer_trailing_slash(void **state)
{
	struct http_response resp;
	struct err err;

	/* One '/' at the end of the issuer is absorbed: Maskinporten's own issuer has one. */
	resp =
	    metadata("https://mp.example/", "https://mp.example/token", "https://mp.example/jwk");
	assert_int_equal(parse_meta(&resp, false, &err), 0);

	/* Two are not, nor a path the well-known URL does not have. */
	resp =
	    metadata("https://mp.example//", "https://mp.example/token", "https://mp.example/jwk");
	assert_int_equal(parse_meta(&resp, false, &err), -EPROTO);
	assert_int_equal(err.kind, ERR_BAD_RESPONSE);
	resp =
	    metadata("https://mp.example/t/", "https://mp.example/token", "https://mp.example/jwk");
	assert_int_equal(parse_meta(&resp, false, &err), -EPROTO);
}

static void test_metadata_issuer_must_serve_this_url(void **state)
{
	struct http_response resp = metadata("https://evil.example", "https://evil.example/token",
					     "https://evil.example/jwk");
	struct mp_metadata m = { .issuer = "untouched" };
	struct err err = { 0 };

	assert_int_equal(mp_parse_metadata(WK, &resp, false, &m, &err), -EPROTO);
	assert_int_equal(err.kind, ERR_BAD_RESPONSE);
	assert_non_null(strstr(err.msg, "issuer https://evil.example does not match"));
	assert_non_null(strstr(err.msg, WK));
	/* ret_* is written only on success. */
	assert_string_equal(m.issuer, "untouched");

	/* Trusting the endpoints does not trust the issuer. */
	assert_int_equal(parse_meta(&resp, true, &err), -EPROTO);
	/* Another spelling of the same host is not it either: RFC 8414 wants the same text. */
	resp = metadata("https://MP.example", "https://mp.example/token", "https://mp.example/jwk");
	assert_int_equal(parse_meta(&resp, false, &err), -EPROTO);
}

static void test_metadata_endpoints_on_the_issuers_origin(void **state)
{
	static const struct {
		const char *token, *jwks;
		bool same_origin;
	} cases[] = {
		{ "https://mp.example/token", "https://mp.example/jwk", true },
		{ "https://MP.EXAMPLE/token", "https://mp.example:443/jwk", true },
		{ "https://other.example/token", "https://mp.example/jwk", false },
		{ "https://mp.example/token", "https://other.example/jwk", false },
		{ "http://mp.example/token", "https://mp.example/jwk", false },
		{ "https://mp.example:8443/token", "https://mp.example/jwk", false },
		{ "https://mp.example.evil/token", "https://mp.example/jwk", false },
		{ "https://mp.example@evil.example/token", "https://mp.example/jwk", false },
		{ "/token", "https://mp.example/jwk", false },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct http_response resp =
		    metadata("https://mp.example", cases[i].token, cases[i].jwks);
		struct err err;
		int r = parse_meta(&resp, false, &err);

		if (cases[i].same_origin) {
			assert_int_equal(r, 0);
			continue;
		}
		if (r != -EPROTO)
			fail_msg("token_endpoint %s, jwks_uri %s: accepted", cases[i].token,
				 cases[i].jwks);
		assert_int_equal(err.kind, ERR_BAD_RESPONSE);
		assert_non_null(strstr(err.msg, "--trust-metadata-endpoints"));
		/* The operator may say that this is how their Maskinporten is deployed. */
		resp = metadata("https://mp.example", cases[i].token, cases[i].jwks);
		assert_int_equal(parse_meta(&resp, true, &err), 0);
	}
}

static void test_metadata_refused_answers(void **state)
{
	struct http_response resp;
	struct err err;

	resp = answer(503, JSON, "{}");
	assert_int_equal(parse_meta(&resp, false, &err), -EPROTO);
	assert_int_equal(err.kind, ERR_UNAVAILABLE);
	assert_int_equal(err.http_status, 503);

	resp = answer(404, JSON, "{}");
	assert_int_equal(parse_meta(&resp, false, &err), -EPROTO);
	assert_int_equal(err.kind, ERR_BAD_RESPONSE);
	assert_int_equal(err.http_status, 404);

	resp = metadata("https://mp.example", "https://mp.example/token", "https://mp.example/jwk");
	snprintf(resp.content_type, sizeof(resp.content_type), "text/html");
	assert_int_equal(parse_meta(&resp, false, &err), -EPROTO);
	assert_non_null(strstr(err.msg, "not application/json"));

	/* A second issuer member could smuggle another one past a lenient parser. */
	resp = answer(200, JSON,
		      "{\"issuer\":\"https://evil.example\",\"issuer\":\"https://mp.example\","
		      "\"token_endpoint\":\"https://mp.example/token\","
		      "\"jwks_uri\":\"https://mp.example/jwk\"}");
	assert_int_equal(parse_meta(&resp, false, &err), -EPROTO);
	assert_int_equal(err.kind, ERR_BAD_RESPONSE);

	resp = metadata("https://mp.example", "", "https://mp.example/jwk");
	assert_int_equal(parse_meta(&resp, false, &err), -EPROTO);
	resp = answer(200, JSON, "{\"issuer\":\"https://mp.example\",\"token_endpoint\":7}");
	assert_int_equal(parse_meta(&resp, false, &err), -EPROTO);
	resp = answer(200, JSON, "not json");
	assert_int_equal(parse_meta(&resp, false, &err), -EPROTO);
	assert_non_null(strstr(err.msg, "not a metadata document"));
}

/* ---- token answers ---------------------------------------------------------- */

static void test_token_answer_error_code(void **state)
{
	struct http_response resp =
	    answer(400, JSON,
		   "{\"error\":\"invalid_scope\",\"error_description\":\"Scope x not allowed\"}");
	json_t *doc = (json_t *)&resp; /* anything but NULL: must stay as it is */
	struct err err = { 0 };

	assert_int_equal(mp_parse_token_answer(&resp, false, &doc, &err), -EPERM);
	assert_ptr_equal(doc, (json_t *)&resp);
	assert_int_equal(err.kind, ERR_UPSTREAM);
	assert_int_equal(err.http_status, 400);
	assert_string_equal(err.code, "invalid_scope");
	assert_non_null(strstr(err.msg, "invalid_scope: Scope x not allowed"));
	/* The hint differs for the admin client and for an app's client. */
	assert_non_null(strstr(err.msg, "SecretProviderClass"));
	memset(&err, 0, sizeof(err));
	assert_int_equal(mp_parse_token_answer(&resp, true, &doc, &err), -EPERM);
	assert_string_equal(err.code, "invalid_scope");
	assert_non_null(strstr(err.msg, "--admin-scopes"));

	/* An error without its code: no code to act on, and no guess at one. */
	memset(&err, 0, sizeof(err));
	resp = answer(401, "text/plain", "Unauthorized");
	assert_int_equal(mp_parse_token_answer(&resp, false, &doc, &err), -EPROTO);
	assert_int_equal(err.kind, ERR_UPSTREAM);
	assert_int_equal(err.http_status, 401);
	assert_string_equal(err.code, "");

	/* A code longer than err->code is cut, never overflows. */
	memset(&err, 0, sizeof(err));
	resp = answer(400, JSON,
		      "{\"error\":\"a_very_long_error_code_that_goes_on_and_on_and_on_and_on\"}");
	assert_int_equal(mp_parse_token_answer(&resp, false, &doc, &err), -EPERM);
	assert_int_equal(strlen(err.code), sizeof(err.code) - 1);
	assert_memory_equal(err.code, "a_very_long_error_code", 22);
}

static void test_token_answer_success(void **state)
{
	struct http_response resp = answer(
	    200, "application/json;charset=UTF-8",
	    "{\"access_token\":\"SECRET-TOKEN\",\"token_type\":\"Bearer\",\"expires_in\":120}");
	json_t *doc = NULL;
	struct err err = { 0 };

	assert_int_equal(mp_parse_token_answer(&resp, false, &doc, &err), 0);
	assert_string_equal(json_string_value(json_object_get(doc, "access_token")),
			    "SECRET-TOKEN");
	json_decref(doc);
}

static void test_token_answer_unusable(void **state)
{
	static const struct {
		const char *content_type, *body;
	} cases[] = {
		{ "text/html", "{\"access_token\":\"SECRET-TOKEN\"}" },
		{ "", "{\"access_token\":\"SECRET-TOKEN\"}" },
		{ JSON, "{\"token\":\"SECRET-TOKEN\"}" },
		{ JSON, "{\"access_token\":\"\"}" },
		{ JSON, "{\"access_token\":7}" },
		{ JSON, "{\"access_token\":\"SECRET-TOKEN\",\"access_token\":\"SECRET-TOKEN\"}" },
		{ JSON, "SECRET-TOKEN" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct http_response resp = answer(200, cases[i].content_type, cases[i].body);
		json_t *doc = NULL;
		struct err err = { 0 };

		assert_int_equal(mp_parse_token_answer(&resp, false, &doc, &err), -EPROTO);
		assert_null(doc);
		assert_int_equal(err.kind, ERR_BAD_RESPONSE);
		/* The answer's body never reaches a message: it may hold a token. */
		if (strstr(err.msg, "SECRET"))
			fail_msg("case %zu: the token is in the message: %s", i, err.msg);
	}
}

/* ---- organisation number ------------------------------------------------------ */

/* A token whose claims are json (header and signature are not read), or NULL. */
static char *token_with(const char *json)
{
	char *claims = keys_b64url((const unsigned char *)json, strlen(json));
	char *token = NULL;

	if (claims && asprintf(&token, "eyJhbGciOiJSUzI1NiJ9.%s.c2ln", claims) < 0)
		token = NULL;
	free(claims);
	return token;
}

static void orgno_of(const char *claims, const char *want)
{
	char *token = token_with(claims);
	char got[32] = "untouched";

	assert_non_null(token);

	mp_token_orgno(token, got, sizeof(got));
	if (strcmp(got, want) != 0)
		fail_msg("claims %s: organisation \"%s\", want \"%s\"", claims, got, want);
	free(token);
}

static void test_orgno_from_consumer_id_only(void **state)
{
	char got[32] = "untouched";

	orgno_of("{\"consumer\":{\"authority\":\"iso6523-actorid-upis\",\"ID\":\"0192:" ORG "\"}}",
		 ORG);
	/* client_orgno is an old claim Maskinporten is removing: ignored, alone or not. */
	orgno_of("{\"client_orgno\":\"" ORG "\"}", "");
	orgno_of("{\"client_orgno\":\"999999999\",\"consumer\":{\"ID\":\"0192:" ORG "\"}}", ORG);
	/* Only the Norwegian organisation number scheme 0192. */
	orgno_of("{\"consumer\":{\"ID\":\"0088:" ORG "\"}}", "");
	orgno_of("{\"consumer\":{\"ID\":\"" ORG "\"}}", "");
	orgno_of("{\"consumer\":\"0192:" ORG "\"}", "");
	orgno_of("{\"consumer\":{\"ID\":192}}", "");
	orgno_of("{\"consumer\":{\"ID\":\"0192:" ORG "\"},\"consumer\":{\"ID\":\"0192:1\"}}", "");
	orgno_of("not json", "");

	/* Not a JWT at all. */
	mp_token_orgno("opaque-token", got, sizeof(got));
	assert_string_equal(got, "");
	snprintf(got, sizeof(got), "untouched");
	mp_token_orgno("a.!!!.c", got, sizeof(got));
	assert_string_equal(got, "");
}

/* ---- admin tokens, against a small HTTP server ---------------------------------- */

#define MAX_GRANTS 16

/* A plain-HTTP Maskinporten on 127.0.0.1: the metadata and a token endpoint. */
struct fake {
	int lfd;
	int port;
	pthread_t thread;
	atomic_bool stop;
	pthread_mutex_t lock;
	int metadata_requests;
	int grants;
	char scope[MAX_GRANTS][256]; /* the scope claim of each grant received */
	char iss[MAX_GRANTS][64];
};

static char key_file[] = "/tmp/test_maskinporten.XXXXXX";

/* Reads one request into buf: headers and a Content-Length body. Returns its length. */
static size_t read_request(int fd, char *buf, size_t cap)
{
	size_t len = 0, want = 0;
	const char *end = NULL;

	while (len < cap - 1) {
		ssize_t n = read(fd, buf + len, cap - 1 - len);

		if (n <= 0)
			break;
		len += (size_t)n;
		buf[len] = '\0';
		if (!end && (end = strstr(buf, "\r\n\r\n"))) {
			const char *cl = strcasestr(buf, "\r\nContent-Length:");

			want = (size_t)(end + 4 - buf) + (cl ? strtoul(cl + 17, NULL, 10) : 0);
		}
		if (end && len >= want)
			break;
	}
	buf[len] = '\0';
	return len;
}

/* The grant in a token request body: its iss and scope claims. */
static void record_grant(struct fake *f, const char *body)
{
	const char *jwt = strstr(body, "assertion=");
	const char *p1 = jwt ? strchr(jwt, '.') : NULL;
	const char *p2 = p1 ? strchr(p1 + 1, '.') : NULL;
	char *part = p2 ? strndup(p1 + 1, (size_t)(p2 - p1 - 1)) : NULL;
	size_t len = 0;
	unsigned char *raw = part ? keys_b64url_decode(part, &len) : NULL;
	json_t *claims = raw ? json_loadb((const char *)raw, len, 0, NULL) : NULL;
	const char *scope = json_string_value(json_object_get(claims, "scope"));
	const char *iss = json_string_value(json_object_get(claims, "iss"));

	pthread_mutex_lock(&f->lock);
	if (f->grants < MAX_GRANTS) {
		snprintf(f->scope[f->grants], sizeof(f->scope[0]), "%s", scope ? scope : "(none)");
		snprintf(f->iss[f->grants], sizeof(f->iss[0]), "%s", iss ? iss : "(none)");
	}
	f->grants++;
	pthread_mutex_unlock(&f->lock);
	json_decref(claims);
	free(raw);
	free(part);
}

/*
 * Answers and closes. Runs on the server's thread, where a cmocka assert
 * cannot jump: a write that fails shows as the client's error instead.
 */
static void respond(int fd, int status, const char *body)
{
	char head[256];
	int n = snprintf(head, sizeof(head),
			 "HTTP/1.1 %d X\r\nContent-Type: application/json\r\n"
			 "Content-Length: %zu\r\nConnection: close\r\n\r\n",
			 status, strlen(body));

	if (write(fd, head, (size_t)n) == n)
		(void)!write(fd, body, strlen(body));
}

static void serve_one(struct fake *f, int fd)
{
	char req[65536], body[2048];
	const char *payload;
	char *token;
	int grant;

	read_request(fd, req, sizeof(req));
	payload = strstr(req, "\r\n\r\n");
	if (!strncmp(req, "GET /.well-known/oauth-authorization-server ", 44)) {
		pthread_mutex_lock(&f->lock);
		f->metadata_requests++;
		pthread_mutex_unlock(&f->lock);
		snprintf(body, sizeof(body),
			 "{\"issuer\":\"http://127.0.0.1:%d/\",\"token_endpoint\":"
			 "\"http://127.0.0.1:%d/token\",\"jwks_uri\":\"http://127.0.0.1:%d/jwk\"}",
			 f->port, f->port, f->port);
		respond(fd, 200, body);
	} else if (!strncmp(req, "POST /token ", 12) && payload) {
		record_grant(f, payload + 4);
		pthread_mutex_lock(&f->lock);
		grant = f->grants;
		pthread_mutex_unlock(&f->lock);
		/* client_orgno differs from consumer.ID: only the latter may be read. */
		snprintf(body, sizeof(body),
			 "{\"consumer\":{\"ID\":\"0192:" ORG "\"},\"client_orgno\":\"999999999\","
			 "\"jti\":\"%d\"}",
			 grant);
		token = token_with(body);
		snprintf(body, sizeof(body),
			 "{\"access_token\":\"%s\",\"token_type\":\"Bearer\",\"expires_in\":120}",
			 token ? token : "");
		free(token);
		respond(fd, 200, body);
	} else {
		respond(fd, 404, "{}");
	}
}

static void *fake_main(void *arg)
{
	struct fake *f = arg;

	while (!atomic_load(&f->stop)) {
		struct pollfd pfd = { .fd = f->lfd, .events = POLLIN };
		int fd;

		if (poll(&pfd, 1, 50) <= 0)
			continue;
		fd = accept4(f->lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0)
			continue;
		serve_one(f, fd);
		close(fd);
	}
	return NULL;
}

static void fake_start(struct fake *f)
{
	struct sockaddr_in sa = { .sin_family = AF_INET,
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t salen = sizeof(sa);

	memset(f, 0, sizeof(*f));
	pthread_mutex_init(&f->lock, NULL);
	f->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(f->lfd >= 0);
	assert_int_equal(bind(f->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(f->lfd, 16), 0);
	assert_int_equal(getsockname(f->lfd, (struct sockaddr *)&sa, &salen), 0);
	f->port = ntohs(sa.sin_port);
	assert_int_equal(pthread_create(&f->thread, NULL, fake_main, f), 0);
}

static void fake_stop(struct fake *f)
{
	atomic_store(&f->stop, true);
	pthread_join(f->thread, NULL);
	close(f->lfd);
	pthread_mutex_destroy(&f->lock);
}

static int grants(struct fake *f)
{
	int n;

	pthread_mutex_lock(&f->lock);
	n = f->grants;
	pthread_mutex_unlock(&f->lock);
	return n;
}

/* An mp against the fake, with these admin scopes and organisation number (NULL: none). */
static struct mp *mp_for(struct fake *f, struct http **ret_http, const char *scopes,
			 const char *orgno)
{
	struct http_config hc = { .allow_http = true, .max_attempts = 1 };
	char url[128];
	struct mp_config mc = {
		.well_known_url = url,
		.admin_client_id = "admin-client",
		.admin_key_file = key_file,
		.admin_kid = "admin-kid",
		.admin_scopes = scopes,
		.org_number = orgno,
	};
	struct err err = { 0 };
	struct mp *mp;

	snprintf(url, sizeof(url), "http://127.0.0.1:%d/.well-known/oauth-authorization-server",
		 f->port);
	*ret_http = http_new(&hc, &err);
	assert_non_null(*ret_http);
	mp = mp_new(*ret_http, &mc, &err);
	if (!mp)
		fail_msg("mp_new: %s", err.msg);
	return mp;
}

/* An admin token of which kind; returns it (caller frees: the fake's tokens are no secret). */
static char *admin_token(struct mp *mp, enum mp_admin which)
{
	struct err err = { 0 };
	char *token = NULL;

	if (mp_admin_token(mp, which, clock_now_ms() + 20000, &token, &err) < 0)
		fail_msg("mp_admin_token: %s", err.msg);
	return token;
}

/* The scopes the two admin tokens ask for, with `configured` as --admin-scopes. */
static void check_admin_scopes(const char *configured, const char *clients, const char *expose)
{
	struct http *http;
	struct fake f;
	struct mp *mp;
	char *t1, *t2, *t3;

	fake_start(&f);
	mp = mp_for(&f, &http, configured, NULL);
	t1 = admin_token(mp, MP_ADMIN_CLIENTS);
	t2 = admin_token(mp, MP_ADMIN_EXPOSE);
	assert_int_equal(grants(&f), 2);
	assert_string_equal(f.iss[0], "admin-client");
	if (strcmp(f.scope[0], clients) != 0 || strcmp(f.scope[1], expose) != 0)
		fail_msg("--admin-scopes \"%s\": asked \"%s\" and \"%s\", want \"%s\" and \"%s\"",
			 configured ? configured : "(default)", f.scope[0], f.scope[1], clients,
			 expose);
	/* Two tokens, each cached: a second call of either asks for nothing. */
	assert_string_not_equal(t1, t2);
	t3 = admin_token(mp, MP_ADMIN_CLIENTS);
	assert_string_equal(t3, t1);
	free(t3);
	t3 = admin_token(mp, MP_ADMIN_EXPOSE);
	assert_string_equal(t3, t2);
	free(t3);
	assert_int_equal(grants(&f), 2);
	free(t1);
	free(t2);
	mp_free(mp);
	http_free(http);
	fake_stop(&f);
}

static void test_admin_token_scopes(void **state)
{
	/* By default plain calls never carry scopes.write, which many admin clients lack. */
	check_admin_scopes(NULL, MP_ADMIN_SCOPES_DEFAULT,
			   MP_ADMIN_SCOPES_DEFAULT " " MP_SCOPES_WRITE);
	check_admin_scopes("idporten:dcr.read idporten:dcr.write idporten:dcr.modify",
			   "idporten:dcr.read idporten:dcr.write idporten:dcr.modify",
			   "idporten:dcr.read idporten:dcr.write idporten:dcr.modify "
			   "idporten:scopes.write");
	/* Configured already: asked for as configured by both, never twice in one. */
	check_admin_scopes("idporten:scopes.write idporten:dcr.read",
			   "idporten:scopes.write idporten:dcr.read",
			   "idporten:scopes.write idporten:dcr.read");
	check_admin_scopes("idporten:dcr.read idporten:scopes.write",
			   "idporten:dcr.read idporten:scopes.write",
			   "idporten:dcr.read idporten:scopes.write");
	/* A longer scope that starts with the same words is not it. */
	check_admin_scopes("idporten:dcr.read idporten:scopes.writer",
			   "idporten:dcr.read idporten:scopes.writer",
			   "idporten:dcr.read idporten:scopes.writer idporten:scopes.write");
	check_admin_scopes("xidporten:scopes.write", "xidporten:scopes.write",
			   "xidporten:scopes.write idporten:scopes.write");
}

static void test_admin_token_invalidate(void **state)
{
	struct http *http;
	struct fake f;
	struct mp *mp;
	char *t1, *t2;

	fake_start(&f);
	mp = mp_for(&f, &http, NULL, NULL);
	t1 = admin_token(mp, MP_ADMIN_CLIENTS);
	/* Another token's 401 forgets nothing. */
	mp_admin_token_invalidate(mp, "some-other-token");
	t2 = admin_token(mp, MP_ADMIN_CLIENTS);
	assert_string_equal(t1, t2);
	assert_int_equal(grants(&f), 1);
	free(t2);
	/* This token's does: the next call asks again, and gets a new one. */
	mp_admin_token_invalidate(mp, t1);
	t2 = admin_token(mp, MP_ADMIN_CLIENTS);
	assert_int_equal(grants(&f), 2);
	assert_string_not_equal(t1, t2);
	free(t1);
	free(t2);
	mp_free(mp);
	http_free(http);
	fake_stop(&f);
}

static void test_org_number(void **state)
{
	struct http *http;
	struct fake f;
	struct mp *mp;
	char *t;

	fake_start(&f);
	/* Unconfigured: unknown until an admin token came, then its consumer.ID. */
	mp = mp_for(&f, &http, NULL, NULL);
	assert_null(mp_org_number(mp));
	t = admin_token(mp, MP_ADMIN_CLIENTS);
	free(t);
	assert_non_null(mp_org_number(mp));
	assert_string_equal(mp_org_number(mp), ORG);
	mp_free(mp);
	http_free(http);

	/* Configured: that one, before and after a token says otherwise. */
	mp = mp_for(&f, &http, NULL, "123456785");
	assert_string_equal(mp_org_number(mp), "123456785");
	t = admin_token(mp, MP_ADMIN_CLIENTS);
	free(t);
	assert_string_equal(mp_org_number(mp), "123456785");
	mp_free(mp);
	http_free(http);
	fake_stop(&f);
}

static void test_org_number_is_nine_digits(void **state)
{
	static const char *const bad[] = { "12345678", "1234567890", "12345678x", "0192:12345678",
					   " 12345678" };
	struct http_config hc = { .allow_http = true };
	struct err err = { 0 };
	struct http *http = http_new(&hc, &err);

	assert_non_null(http);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct mp_config mc = { .well_known_url = WK, .org_number = bad[i] };

		memset(&err, 0, sizeof(err));
		assert_null(mp_new(http, &mc, &err));
		assert_int_equal(err.kind, ERR_INVALID);
		assert_non_null(strstr(err.msg, "--org-number"));
	}
	http_free(http);
}

/* ---- main ----------------------------------------------------------------- */

/* An admin key for the grants: any RSA key signs them, the fake checks no signature. */
static int setup(void **state)
{
	EVP_PKEY *pkey = EVP_RSA_gen(2048);
	FILE *f;
	int fd, ok;

	if (!pkey || http_global_init() < 0)
		return -1;
	fd = mkstemp(key_file);
	f = fd >= 0 ? fdopen(fd, "w") : NULL;
	ok = f && PEM_write_PrivateKey(f, pkey, NULL, NULL, 0, NULL, NULL) == 1;
	if (f)
		fclose(f);
	EVP_PKEY_free(pkey);
	return ok ? 0 : -1;
}

static int teardown(void **state)
{
	unlink(key_file);
	http_global_cleanup();
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_metadata_accepted),
		cmocka_unit_test(test_metadata_issuer_trailing_slash),
		cmocka_unit_test(test_metadata_issuer_must_serve_this_url),
		cmocka_unit_test(test_metadata_endpoints_on_the_issuers_origin),
		cmocka_unit_test(test_metadata_refused_answers),
		cmocka_unit_test(test_token_answer_error_code),
		cmocka_unit_test(test_token_answer_success),
		cmocka_unit_test(test_token_answer_unusable),
		cmocka_unit_test(test_orgno_from_consumer_id_only),
		cmocka_unit_test(test_admin_token_scopes),
		cmocka_unit_test(test_admin_token_invalidate),
		cmocka_unit_test(test_org_number),
		cmocka_unit_test(test_org_number_is_nine_digits),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
