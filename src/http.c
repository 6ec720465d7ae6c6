/*
 * http: the only module that touches libcurl. One share handle (connections
 * and DNS) serves every thread, so connections to DigDir and Maskinporten are
 * kept alive and reused; easy handles come from a small pool.
 * Requests are HTTPS only, never follow redirects, stop reading at the body
 * limit, and are retried with full-jitter backoff that never sleeps past the
 * caller's deadline.
 *
 * Must never log or copy a bearer token or a body: both may be secrets.
 */
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include <curl/curl.h>

#include "clock.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "wipe.h"

#define POOL_MAX	      8
#define RETRY_AFTER_MAX_MS    (120 * 1000)
#define MIN_USEFUL_ATTEMPT_MS 50

struct http {
	CURLSH *share;
	pthread_mutex_t share_locks[CURL_LOCK_DATA_LAST];
	pthread_mutex_t pool_lock;
	CURL *pool[POOL_MAX];
	int npool;

	char *ca_file;
	char *https_proxy;
	char *user_agent;
	bool allow_http;
	long connect_timeout_ms;
	long attempt_timeout_ms;
	size_t max_body;
	int max_attempts;
	long backoff_base_ms;
	long backoff_max_ms;

	/* http_cancel: every transfer and backoff sleep ends, and none starts again. */
	atomic_bool cancelled;
	pthread_mutex_t cancel_lock;
	pthread_cond_t cancel_cond; /* CLOCK_MONOTONIC; broadcast by http_cancel */
};

/* What one attempt gathered; reset before each attempt. */
struct attempt {
	CURL *curl;
	const struct http_request *req;
	char *body;
	size_t len;
	size_t cap;
	size_t max;
	bool too_big;
	long retry_after_ms;
	int streaming; /* 0: not decided yet, 1: a 2xx answer goes to req->sink, -1: kept */
	size_t streamed;
	int sink_rc; /* the sink's error, which aborted the transfer */
	struct err sink_err;
};

/* One request across its attempts: what http_do carries from one to the next. */
struct transfer {
	struct http *http;
	const struct http_request *req; /* as the caller gave it */
	struct http_request sreq;	/* the same, with sink_max filled in */
	struct curl_slist *headers;
	CURL *curl;
	char *body; /* req->make_body's for this attempt; freed with req->free_body */
	size_t body_len;
	int attempt; /* 1 for the first */
	struct attempt a;
	char errbuf[CURL_ERROR_SIZE];
	CURLcode c;  /* how the last attempt went: its transport result, */
	long status; /* and its HTTP status when c is CURLE_OK */
};

int http_global_init(void)
{
	return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -EIO;
}

void http_global_cleanup(void)
{
	curl_global_cleanup();
}

bool http_is_json(const char *ct)
{
	static const char want[] = "application/json";
	size_t n = sizeof(want) - 1;

	return ct && !strncasecmp(ct, want, n) && (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ');
}

long http_backoff_ms(int retry, long base_ms, long max_ms, uint64_t random)
{
	long cap = base_ms;

	if (retry < 1 || base_ms <= 0 || max_ms <= 0)
		return 0;
	/* Double per retry, stopping at the cap before it can overflow. */
	for (int i = 1; i < retry && cap < max_ms; i++)
		cap *= 2;
	if (cap > max_ms)
		cap = max_ms;
	return (long)(random % ((uint64_t)cap + 1));
}

long http_parse_retry_after(const char *value, int64_t now_unix)
{
	char *end = NULL;
	long long secs;
	time_t when;

	if (!value)
		return -1;
	while (*value == ' ' || *value == '\t')
		value++;
	if (*value >= '0' && *value <= '9') {
		errno = 0;
		secs = strtoll(value, &end, 10);
		while (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n')
			end++;
		if (errno || *end)
			return -1;
		if (secs > RETRY_AFTER_MAX_MS / 1000)
			secs = RETRY_AFTER_MAX_MS / 1000;
		return (long)secs * 1000;
	}
	/* An HTTP-date: how far ahead of now it lies. */
	when = curl_getdate(value, NULL);
	if (when == (time_t)-1)
		return -1;
	if ((int64_t)when <= now_unix)
		return 0;
	if ((int64_t)when - now_unix > RETRY_AFTER_MAX_MS / 1000)
		return RETRY_AFTER_MAX_MS;
	return (long)((int64_t)when - now_unix) * 1000;
}

long http_clamp_timeout_ms(long attempt_ms, int64_t deadline_ms, int64_t now_ms)
{
	if (deadline_ms <= 0)
		return attempt_ms;
	if (deadline_ms <= now_ms)
		return 0;
	if (deadline_ms - now_ms < attempt_ms)
		return (long)(deadline_ms - now_ms);
	return attempt_ms;
}

/* The origin of url as "scheme://host:port", lowercased, into ret. False when it does not parse. */
static bool origin_of(const char *url, char *ret, size_t len)
{
	char *scheme = NULL, *host = NULL, *port = NULL;
	CURLU *u = curl_url();
	bool ok = false;

	if (u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
	    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
	    curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
	    curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK) {
		int n = snprintf(ret, len, "%s://%s:%s", scheme, host, port);

		ok = n > 0 && (size_t)n < len;
		for (char *p = ret; ok && *p; p++)
			*p = (char)tolower((unsigned char)*p);
	}
	curl_free(scheme);
	curl_free(host);
	curl_free(port);
	curl_url_cleanup(u);
	return ok;
}

bool http_same_origin(const char *a, const char *b)
{
	char oa[512], ob[512];

	return a && b && origin_of(a, oa, sizeof(oa)) && origin_of(b, ob, sizeof(ob)) &&
	       !strcmp(oa, ob);
}

char *http_escape(const char *s)
{
	char *c, *r;

	if (!s)
		return NULL;
	c = curl_easy_escape(NULL, s, 0);
	if (!c)
		return NULL;
	/* Hand back memory that plain free() releases. */
	r = strdup(c);
	curl_free(c);
	return r;
}

static void share_lock(CURL *handle, curl_lock_data data, curl_lock_access access, void *userp)
{
	struct http *http = userp;

	if ((int)data >= 0 && data < CURL_LOCK_DATA_LAST)
		pthread_mutex_lock(&http->share_locks[data]);
}

static void share_unlock(CURL *handle, curl_lock_data data, void *userp)
{
	struct http *http = userp;

	if ((int)data >= 0 && data < CURL_LOCK_DATA_LAST)
		pthread_mutex_unlock(&http->share_locks[data]);
}

static int dup_opt(const char *s, char **ret)
{
	*ret = NULL;
	if (!s || !*s)
		return 0;
	*ret = strdup(s);
	return *ret ? 0 : -ENOMEM;
}

struct http *http_new(const struct http_config *config, struct err *err)
{
	struct http *http = NULL;
	bool ok = true;

	http = calloc(1, sizeof(*http));
	if (!http) {
		err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
		return NULL;
	}
	for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
		pthread_mutex_init(&http->share_locks[i], NULL);
	pthread_mutex_init(&http->pool_lock, NULL);
	pthread_mutex_init(&http->cancel_lock, NULL);
	clock_cond_init(&http->cancel_cond);

	http->allow_http = config->allow_http;
	http->connect_timeout_ms =
	    config->connect_timeout_ms > 0 ? config->connect_timeout_ms : 5000;
	http->attempt_timeout_ms =
	    config->attempt_timeout_ms > 0 ? config->attempt_timeout_ms : 30000;
	http->max_body = config->max_body > 0 ? config->max_body : HTTP_MAX_BODY_DEFAULT;
	http->max_attempts = config->max_attempts > 0 ? config->max_attempts : 4;
	http->backoff_base_ms = config->backoff_base_ms > 0 ? config->backoff_base_ms : 200;
	http->backoff_max_ms = config->backoff_max_ms > 0 ? config->backoff_max_ms : 5000;
	if (dup_opt(config->ca_file, &http->ca_file) < 0 ||
	    dup_opt(config->https_proxy, &http->https_proxy) < 0 ||
	    dup_opt(config->user_agent ? config->user_agent
				       : "maskinporten-csi-provider/" PROVIDER_VERSION,
		    &http->user_agent) < 0) {
		err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
		goto fail;
	}

	/*
	 * Connections and DNS answers are shared by every thread; TLS sessions
	 * are not: Debian 12's libcurl (7.88) hands one cached SSL_SESSION to
	 * handshakes on several threads at once, each with its own SSL_CTX, and
	 * OpenSSL changes the session while another thread reads it (a data race
	 * `make tsan` caught in concurrent cold Mounts). Connections are kept
	 * alive, so few handshakes would resume anyway.
	 */
	http->share = curl_share_init();
	if (!http->share) {
		err_set(err, ERR_INTERNAL, ENOMEM, "libcurl: cannot create a share handle");
		goto fail;
	}
	ok =
	    curl_share_setopt(http->share, CURLSHOPT_LOCKFUNC, share_lock) == CURLSHE_OK &&
	    curl_share_setopt(http->share, CURLSHOPT_UNLOCKFUNC, share_unlock) == CURLSHE_OK &&
	    curl_share_setopt(http->share, CURLSHOPT_USERDATA, http) == CURLSHE_OK &&
	    curl_share_setopt(http->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_CONNECT) == CURLSHE_OK &&
	    curl_share_setopt(http->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS) == CURLSHE_OK;
	if (!ok) {
		err_set(err, ERR_INTERNAL, EIO, "libcurl: cannot configure the share handle");
		goto fail;
	}
	return http;
fail:
	http_free(http);
	return NULL;
}

void http_free(struct http *http)
{
	if (!http)
		return;
	/* Easy handles first: the share handle refuses to go while they use it. */
	for (int i = 0; i < http->npool; i++)
		curl_easy_cleanup(http->pool[i]);
	if (http->share)
		curl_share_cleanup(http->share);
	for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
		pthread_mutex_destroy(&http->share_locks[i]);
	pthread_mutex_destroy(&http->pool_lock);
	pthread_mutex_destroy(&http->cancel_lock);
	pthread_cond_destroy(&http->cancel_cond);
	free(http->ca_file);
	free(http->https_proxy);
	free(http->user_agent);
	free(http);
}

static CURL *pool_get(struct http *http)
{
	CURL *curl = NULL;

	pthread_mutex_lock(&http->pool_lock);
	if (http->npool > 0)
		curl = http->pool[--http->npool];
	pthread_mutex_unlock(&http->pool_lock);
	return curl ? curl : curl_easy_init();
}

static void pool_put(struct http *http, CURL *curl)
{
	if (!curl)
		return;
	/* Forget this request's options; the connection stays in the share. */
	curl_easy_reset(curl);
	pthread_mutex_lock(&http->pool_lock);
	if (http->npool < POOL_MAX) {
		http->pool[http->npool++] = curl;
		curl = NULL;
	}
	pthread_mutex_unlock(&http->pool_lock);
	if (curl)
		curl_easy_cleanup(curl);
}

/* A 2xx answer of a request with a sink: handed on, never kept. */
static size_t to_sink(struct attempt *a, char *data, size_t n)
{
	size_t max = a->req->sink_max;

	if (n > max - a->streamed) {
		a->too_big = true;
		return 0;
	}
	a->streamed += n;
	a->sink_rc = a->req->sink(a->req->sink_ctx, data, n, &a->sink_err);
	return a->sink_rc < 0 ? 0 : n;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *userp)
{
	struct attempt *a = userp;
	size_t n = size * nmemb;
	long status = 0;
	char *p;

	/* The status is known once the body starts: only a 2xx answer is streamed. */
	if (a->streaming == 0 && a->req->sink) {
		curl_easy_getinfo(a->curl, CURLINFO_RESPONSE_CODE, &status);
		a->streaming = status >= 200 && status < 300 ? 1 : -1;
		if (a->streaming < 0)
			a->max = HTTP_MAX_ERROR_BODY;
	}
	if (a->streaming > 0)
		return to_sink(a, data, n);

	/* Returning less than n aborts the transfer with CURLE_WRITE_ERROR. */
	if (n > a->max - a->len) {
		a->too_big = true;
		return 0;
	}
	if (a->len + n + 1 > a->cap) {
		size_t cap = a->cap ? a->cap : 4096;

		while (cap < a->len + n + 1)
			cap *= 2;
		p = realloc(a->body, cap);
		if (!p)
			return 0;
		a->body = p;
		a->cap = cap;
	}
	memcpy(a->body + a->len, data, n);
	a->len += n;
	a->body[a->len] = '\0';
	return n;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *userp)
{
	struct attempt *a = userp;
	size_t n = size * nmemb;
	static const char name[] = "retry-after:";
	char value[64];
	size_t vlen;

	if (n > sizeof(name) - 1 && n - (sizeof(name) - 1) < sizeof(value) &&
	    strncasecmp(data, name, sizeof(name) - 1) == 0) {
		vlen = n - (sizeof(name) - 1);
		memcpy(value, data + sizeof(name) - 1, vlen);
		value[vlen] = '\0';
		a->retry_after_ms = http_parse_retry_after(value, (int64_t)time(NULL));
	}
	return n;
}

/* libcurl calls this about once a second, and often while data moves: non-zero aborts. */
static int on_progress(void *userp, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
		       curl_off_t ulnow)
{
	const struct http *http = userp;

	return atomic_load(&http->cancelled) ? 1 : 0;
}

/* Sets every option of the transfer's next attempt; each setopt is checked. */
static CURLcode setup(struct transfer *t, long timeout_ms)
{
	struct http *http = t->http;
	const struct http_request *req = &t->sreq;
	const char *body = req->make_body ? t->body : req->body;
	size_t body_len = req->make_body ? t->body_len : req->body_len;
	CURL *curl = t->curl;
	long connect_ms =
	    http->connect_timeout_ms < timeout_ms ? http->connect_timeout_ms : timeout_ms;
	CURLcode c = CURLE_OK;

#define SET(opt, val)                                                                              \
	do {                                                                                       \
		if ((c = curl_easy_setopt(curl, opt, val)) != CURLE_OK)                            \
			return c;                                                                  \
	} while (0)

	SET(CURLOPT_SHARE, http->share);
	SET(CURLOPT_URL, req->url);
	SET(CURLOPT_PROTOCOLS_STR, http->allow_http ? "http,https" : "https");
	SET(CURLOPT_FOLLOWLOCATION, 0L);
	SET(CURLOPT_NOSIGNAL, 1L);
	SET(CURLOPT_ERRORBUFFER, t->errbuf);
	SET(CURLOPT_CONNECTTIMEOUT_MS, connect_ms);
	SET(CURLOPT_TIMEOUT_MS, timeout_ms);
	SET(CURLOPT_USERAGENT, http->user_agent);
	SET(CURLOPT_HTTPHEADER, t->headers);
	SET(CURLOPT_WRITEFUNCTION, on_body);
	SET(CURLOPT_WRITEDATA, &t->a);
	SET(CURLOPT_HEADERFUNCTION, on_header);
	SET(CURLOPT_HEADERDATA, &t->a);
	SET(CURLOPT_TCP_KEEPALIVE, 1L);
	SET(CURLOPT_NOPROGRESS, 0L);
	SET(CURLOPT_XFERINFOFUNCTION, on_progress);
	SET(CURLOPT_XFERINFODATA, http);
	SET(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)(req->sink ? req->sink_max : http->max_body));
	if (http->ca_file)
		SET(CURLOPT_CAINFO, http->ca_file);
	if (http->https_proxy)
		SET(CURLOPT_PROXY, http->https_proxy);
	if (req->bearer) {
		SET(CURLOPT_HTTPAUTH, (long)CURLAUTH_BEARER);
		SET(CURLOPT_XOAUTH2_BEARER, req->bearer);
	}
	if (!strcmp(req->method, "POST")) {
		SET(CURLOPT_POST, 1L);
	} else if (strcmp(req->method, "GET") != 0) {
		SET(CURLOPT_CUSTOMREQUEST, req->method);
	}
	/* POST and PUT always carry a body, if only an empty one (Content-Length: 0). */
	if (body || !strcmp(req->method, "POST") || !strcmp(req->method, "PUT")) {
		SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(body ? body_len : 0));
		SET(CURLOPT_POSTFIELDS, body ? body : "");
	}
#undef SET
	return c;
}

/* Sleeps ms, or less when http_cancel() comes first. */
static void sleep_ms(struct http *http, long ms)
{
	int64_t until = clock_now_ms() + ms;

	pthread_mutex_lock(&http->cancel_lock);
	while (!atomic_load(&http->cancelled) && until > clock_now_ms() &&
	       clock_wait_until(&http->cancel_cond, &http->cancel_lock, until))
		;
	pthread_mutex_unlock(&http->cancel_lock);
}

void http_cancel(struct http *http)
{
	if (!http)
		return;
	pthread_mutex_lock(&http->cancel_lock);
	atomic_store(&http->cancelled, true);
	pthread_cond_broadcast(&http->cancel_cond);
	pthread_mutex_unlock(&http->cancel_lock);
}

bool http_cancelled(const struct http *http)
{
	return http && atomic_load(&http->cancelled);
}

/* The error of a request that http_cancel() stopped. */
static int cancelled_error(const struct http_request *req, struct err *err)
{
	return err_set(err, ERR_UNAVAILABLE, ECANCELED,
		       "%s %s: cancelled, the provider is shutting down", req->service,
		       req->endpoint);
}

static uint64_t random_u64(void)
{
	uint64_t v = 0;

	/* Jitter only needs to differ between nodes; a short read leaves a fixed value. */
	if (getrandom(&v, sizeof(v), GRND_NONBLOCK) != (ssize_t)sizeof(v))
		v = (uint64_t)clock_now_ms() * 6364136223846793005ULL;
	return v;
}

/* A transport failure that cannot have delivered the request to the server. */
static bool never_sent(CURLcode c, CURL *curl)
{
	long sent = 0;

	if (c == CURLE_COULDNT_RESOLVE_HOST || c == CURLE_COULDNT_RESOLVE_PROXY ||
	    c == CURLE_COULDNT_CONNECT)
		return true;
	return curl_easy_getinfo(curl, CURLINFO_REQUEST_SIZE, &sent) == CURLE_OK && sent == 0;
}

static struct curl_slist *make_headers(const struct http_request *req)
{
	struct curl_slist *h = NULL, *t;
	char ct[160];

	h = curl_slist_append(NULL, "Accept: application/json");
	/* No 100-continue round trip for our small bodies. */
	if (h && (t = curl_slist_append(h, "Expect:")))
		h = t;
	else if (h) {
		curl_slist_free_all(h);
		return NULL;
	}
	if (h && req->content_type) {
		snprintf(ct, sizeof(ct), "Content-Type: %s", req->content_type);
		t = curl_slist_append(h, ct);
		if (!t) {
			curl_slist_free_all(h);
			return NULL;
		}
		h = t;
	}
	return h;
}

/* Takes a handle and the headers for req. Returns 0, or -ENOMEM with err filled. */
static int transfer_start(struct transfer *t, struct http *http, const struct http_request *req,
			  struct err *err)
{
	*t = (struct transfer){ .http = http, .req = req, .sreq = *req };
	if (err) {
		snprintf(err->endpoint, sizeof(err->endpoint), "%s %s", req->service,
			 req->endpoint);
		err->http_status = 0;
	}
	if (t->sreq.sink && t->sreq.sink_max == 0)
		t->sreq.sink_max = http->max_body;
	t->headers = make_headers(req);
	t->curl = pool_get(http);
	if (!t->headers || !t->curl)
		return err_set(err, ERR_INTERNAL, ENOMEM, "%s %s: out of memory", req->service,
			       req->endpoint);
	return 0;
}

/* Drops what an attempt gathered. Bodies may hold tokens: wiped before freeing. */
static void attempt_clear(struct attempt *a)
{
	if (a->body) {
		wipe(a->body, a->cap);
		free(a->body);
	}
	a->body = NULL;
}

/* Releases what a transfer holds; the handle goes back to the pool. */
static void transfer_end(struct transfer *t)
{
	attempt_clear(&t->a);
	if (t->body)
		t->req->free_body(t->body);
	curl_slist_free_all(t->headers);
	pool_put(t->http, t->curl);
}

/*
 * Readies attempt number t->attempt: a fresh record and sink, a timeout
 * within the deadline, a fresh body, every option. Returns 0, or a negative
 * errno with err filled: cancelled, no time left, or no body or options.
 */
static int attempt_start(struct transfer *t, struct err *err)
{
	const struct http_request *req = t->req;
	long timeout;
	CURLcode c;
	int r;

	attempt_clear(&t->a);
	t->a = (struct attempt){
		.curl = t->curl, .req = &t->sreq, .max = t->http->max_body, .retry_after_ms = -1
	};
	if (t->sreq.sink && t->sreq.restart)
		t->sreq.restart(t->sreq.sink_ctx);
	t->errbuf[0] = '\0';
	t->c = CURLE_OK;
	t->status = 0;

	if (atomic_load(&t->http->cancelled))
		return cancelled_error(req, err);
	timeout =
	    http_clamp_timeout_ms(t->http->attempt_timeout_ms, req->deadline_ms, clock_now_ms());
	if (timeout < MIN_USEFUL_ATTEMPT_MS) {
		if (t->attempt == 1)
			return err_set(err, ERR_TIMEOUT, ETIMEDOUT,
				       "%s %s: not sent, no time was left for it", req->service,
				       req->endpoint);
		return err_set(err, ERR_TIMEOUT, ETIMEDOUT,
			       "%s %s: no time left for another try after %d attempt(s)",
			       req->service, req->endpoint, t->attempt - 1);
	}
	/* A grant with a new jti, say: each attempt sends a body of its own. */
	if (req->make_body) {
		if (t->body)
			req->free_body(t->body);
		t->body = NULL;
		r = req->make_body(req->body_ctx, &t->body, &t->body_len);
		if (r < 0)
			return err_set(err, ERR_INTERNAL, -r, "%s %s: cannot build the request",
				       req->service, req->endpoint);
	}
	curl_easy_reset(t->curl);
	c = setup(t, timeout);
	if (c != CURLE_OK)
		return err_set(err, ERR_INTERNAL, EINVAL, "%s %s: libcurl option refused: %s",
			       req->service, req->endpoint, curl_easy_strerror(c));
	return 0;
}

/* Performs the attempt into t->c and t->status, then counts and logs it. */
static void attempt_perform(struct transfer *t)
{
	const struct http_request *req = t->req;
	int64_t sent_ms = clock_now_ms();

	t->c = curl_easy_perform(t->curl);
	if (t->c == CURLE_OK)
		curl_easy_getinfo(t->curl, CURLINFO_RESPONSE_CODE, &t->status);
	metrics_upstream_request(req->service, req->endpoint, t->c == CURLE_OK ? t->status : 0);
	/* Names the endpoint only: no URL, header or body ever reaches the log. */
	log_debug("%s %s: %s %ld after %lld ms (attempt %d)", req->service, req->endpoint,
		  t->c == CURLE_OK ? "HTTP" : curl_easy_strerror(t->c),
		  t->c == CURLE_OK ? t->status : 0L, (long long)(clock_now_ms() - sent_ms),
		  t->attempt);
}

/*
 * The outcomes of an attempt that no retry can change: cancelled, the sink
 * refused the answer, the answer outgrew its limit. Returns 0 for any
 * other, or a negative errno with err filled.
 */
static int attempt_fatal(const struct transfer *t, struct err *err)
{
	const struct http_request *req = t->req;

	if (t->c == CURLE_ABORTED_BY_CALLBACK || atomic_load(&t->http->cancelled))
		return cancelled_error(req, err);
	if (t->a.sink_rc < 0) {
		if (err) {
			*err = t->a.sink_err;
			err->kind = ERR_BAD_RESPONSE;
			snprintf(err->endpoint, sizeof(err->endpoint), "%s %s", req->service,
				 req->endpoint);
		}
		return t->a.sink_rc;
	}
	if (t->a.too_big || t->c == CURLE_FILESIZE_EXCEEDED)
		return err_set(err, ERR_BAD_RESPONSE, EMSGSIZE,
			       "%s %s: answer larger than %zu bytes", req->service, req->endpoint,
			       t->a.streaming < 0 ? (size_t)HTTP_MAX_ERROR_BODY
			       : t->sreq.sink	  ? t->sreq.sink_max
						  : t->http->max_body);
	return 0;
}

/* Whether the attempt got a final answer: anything but 429 and 5xx. */
static bool answered(const struct transfer *t)
{
	return t->c == CURLE_OK && t->status != 429 && t->status < 500;
}

/*
 * Whether an attempt without a final answer is tried again, and after how
 * many ms (*ret_wait): only when repeating is safe or the request cannot
 * have reached the server, while attempts are left and the deadline leaves
 * time for one after the wait. A 429's Retry-After replaces the backoff.
 */
static bool retry_wait(const struct transfer *t, long *ret_wait)
{
	const struct http_request *req = t->req;
	const struct http *http = t->http;
	bool safe = req->idempotent || req->make_body ||
		    (t->c != CURLE_OK ? never_sent(t->c, t->curl) : t->status == 429);
	long wait =
	    http_backoff_ms(t->attempt, http->backoff_base_ms, http->backoff_max_ms, random_u64());

	if (t->c == CURLE_OK && t->status == 429 && t->a.retry_after_ms >= 0)
		wait = t->a.retry_after_ms;
	if (!safe || t->attempt >= http->max_attempts ||
	    (req->deadline_ms > 0 &&
	     clock_now_ms() + wait + MIN_USEFUL_ATTEMPT_MS > req->deadline_ms))
		return false;
	*ret_wait = wait;
	return true;
}

/* The error of a request whose last attempt got no final answer. */
static int give_up(const struct transfer *t, struct err *err)
{
	const struct http_request *req = t->req;

	if (err)
		err->http_status = t->c == CURLE_OK ? t->status : 0;
	if (t->c == CURLE_OPERATION_TIMEDOUT)
		return err_set(err, ERR_TIMEOUT, ETIMEDOUT,
			       "%s %s: timed out (%ld ms per attempt, %d attempt(s))", req->service,
			       req->endpoint, t->http->attempt_timeout_ms, t->attempt);
	if (t->c != CURLE_OK)
		return err_set(err, ERR_UNAVAILABLE, ECONNRESET, "%s %s: %s (%d attempt(s))",
			       req->service, req->endpoint,
			       t->errbuf[0] ? t->errbuf : curl_easy_strerror(t->c), t->attempt);
	if (t->status == 429)
		return err_set(err, ERR_THROTTLED, EAGAIN,
			       "%s %s: throttled (HTTP 429, %d attempt(s)); try again later",
			       req->service, req->endpoint, t->attempt);
	return err_set(err, ERR_UNAVAILABLE, EIO, "%s %s: answered HTTP %ld (%d attempt(s))",
		       req->service, req->endpoint, t->status, t->attempt);
}

/* Moves the final answer into *ret: status, content type and the body. */
static int take_response(struct transfer *t, struct http_response *ret, struct err *err)
{
	const char *ctype = NULL;

	if (!t->a.body) {
		t->a.body = strdup("");
		if (!t->a.body)
			return err_set(err, ERR_INTERNAL, ENOMEM, "out of memory");
	}
	ret->status = t->status;
	ret->attempts = t->attempt;
	ret->content_type[0] = '\0';
	if (curl_easy_getinfo(t->curl, CURLINFO_CONTENT_TYPE, &ctype) == CURLE_OK && ctype)
		snprintf(ret->content_type, sizeof(ret->content_type), "%s", ctype);
	ret->body = t->a.body;
	ret->body_len = t->a.len;
	t->a.body = NULL;
	return 0;
}

int http_do(struct http *http, const struct http_request *req, struct http_response *ret,
	    struct err *err)
{
	struct transfer t;
	long wait = 0;
	int r;

	r = transfer_start(&t, http, req, err);
	if (r < 0)
		goto out;
	for (t.attempt = 1;; t.attempt++) {
		r = attempt_start(&t, err);
		if (r < 0)
			goto out;
		attempt_perform(&t);
		r = attempt_fatal(&t, err);
		if (r < 0)
			goto out;
		if (answered(&t))
			break;
		if (!retry_wait(&t, &wait)) {
			r = give_up(&t, err);
			goto out;
		}
		metrics_upstream_retry(req->service, req->endpoint);
		if (wait > 0)
			sleep_ms(http, wait);
	}
	r = take_response(&t, ret, err);
out:
	transfer_end(&t);
	return r;
}

void http_response_release(struct http_response *resp)
{
	if (!resp || !resp->body)
		return;
	/* The body may be a token endpoint answer. */
	wipe(resp->body, resp->body_len);
	free(resp->body);
	resp->body = NULL;
	resp->body_len = 0;
}
