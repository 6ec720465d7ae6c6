/*
 * http: the only module that touches libcurl. HTTPS requests with connection
 * reuse across threads, timeouts, a CA bundle, proxies, a hard body limit and
 * retries with exponential backoff and jitter that never run past the
 * caller's deadline.
 *
 * curl_global_init() must have been called once in main before any thread.
 */
#ifndef MCP_HTTP_H
#define MCP_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "err.h"

#define HTTP_MAX_BODY_DEFAULT (1024 * 1024)
#define HTTP_MAX_ERROR_BODY   (64 * 1024) /* kept of a streamed request's error answer */

struct http_config {
	const char *ca_file; /* CA bundle; NULL: the system's */
	const char
	    *https_proxy; /* NULL: HTTPS_PROXY / https_proxy / NO_PROXY from the environment */
	bool allow_http;  /* plain http:// URLs (tests only) */
	long connect_timeout_ms; /* 0: 5000 */
	long attempt_timeout_ms; /* one attempt; 0: 30000 */
	size_t max_body;	 /* 0: HTTP_MAX_BODY_DEFAULT */
	int max_attempts;	 /* 0: 4 */
	long backoff_base_ms;	 /* 0: 200 */
	long backoff_max_ms;	 /* 0: 5000 */
	const char *user_agent;	 /* NULL: "maskinporten-csi-provider/<version>" */
};

struct http;

/* Once in main, before any thread: curl_global_init. Returns 0 or -EIO. */
int http_global_init(void);
void http_global_cleanup(void);

/* Creates a client. Strings in config are copied. Returns NULL with err filled. */
struct http *http_new(const struct http_config *config, struct err *err);
void http_free(struct http *http);

struct http_request {
	const char *method; /* "GET", "POST", "PUT", "DELETE" */
	const char *url;
	const char *service;	  /* metrics and errors: "digdir" or "maskinporten" */
	const char *endpoint;	  /* template for metrics and errors: "GET /clients/{id}" */
	const char *bearer;	  /* SECRET: Authorization: Bearer value, or NULL */
	const char *content_type; /* of body, or NULL */
	const char *body;	  /* may be NULL */
	size_t body_len;
	bool idempotent;     /* false: never retried once the request may have been sent */
	int64_t deadline_ms; /* clock_now_ms() clock; 0: none beyond the attempt timeout */
	/*
	 * Optional: makes a fresh body before every attempt (a JWT grant with a
	 * new jti), which makes a non-idempotent request safe to retry. Returns
	 * 0 with *ret_body (freed with free_body) or a negative errno.
	 */
	int (*make_body)(void *ctx, char **ret_body, size_t *ret_len);
	void (*free_body)(char *body);
	void *body_ctx;
	/*
	 * Optional: a 2xx answer's body is handed to sink chunk by chunk instead
	 * of being kept, up to sink_max bytes in all (0: the client's max_body),
	 * so an answer of any size is read in the memory the sink keeps. restart
	 * is called before every attempt, so the sink starts afresh after a
	 * retry. sink returns 0, or a negative errno that aborts the transfer
	 * (http_do then fails with ERR_BAD_RESPONSE and the sink's message, which
	 * it writes into the err it gets). Answers with other statuses are kept
	 * in ret->body as usual, up to HTTP_MAX_ERROR_BODY bytes.
	 */
	int (*sink)(void *ctx, const char *data, size_t len, struct err *err);
	void (*restart)(void *ctx);
	void *sink_ctx;
	size_t sink_max;
};

struct http_response {
	long status;
	char *body; /* NUL-terminated, body_len bytes before the NUL */
	size_t body_len;
	char content_type[128];
	int attempts;
};

/*
 * Performs the request. 429, 5xx and transport errors are retried (429 honours
 * Retry-After) while attempts and the deadline allow; other statuses are
 * returned as they are, so the caller reads ret->status. Returns 0 with
 * *ret filled (release with http_response_release), or a negative errno with
 * err filled: ERR_TIMEOUT, ERR_UNAVAILABLE (transport / 5xx after retries),
 * ERR_THROTTLED (429 after retries), ERR_BAD_RESPONSE (body over the limit).
 */
int http_do(struct http *http, const struct http_request *req, struct http_response *ret,
	    struct err *err);

void http_response_release(struct http_response *resp);

/*
 * Cancels upstream work for good (the process is stopping): transfers in
 * progress abort within about a second (libcurl's progress callback), retry
 * backoff sleeps end at once, and every http_do() from now on fails at once
 * with ERR_UNAVAILABLE, "cancelled, the provider is shutting down".
 * Thread-safe; async-signal-safe it is not.
 */
void http_cancel(struct http *http);

/* Whether http_cancel() was called. */
bool http_cancelled(const struct http *http);

/* Whether a Content-Type value's media type is application/json (parameters allowed). */
bool http_is_json(const char *content_type);

/*
 * Whether two absolute URLs share an origin: the same scheme, host (case
 * ignored) and port (the scheme's default when absent). False when either
 * does not parse.
 */
bool http_same_origin(const char *a, const char *b);

/* Percent-encodes s for a query parameter. Returns a malloc'd string or NULL. */
char *http_escape(const char *s);

/* Pure helpers, exported for the unit tests. */

/* Full-jitter backoff before retry number `retry` (1 = first retry): a value in
 * [0, min(max_ms, base_ms * 2^(retry-1))] chosen by random. */
long http_backoff_ms(int retry, long base_ms, long max_ms, uint64_t random);

/* Retry-After header value (delay-seconds or an HTTP-date) in ms from now_unix;
 * -1 when absent or unparseable. */
long http_parse_retry_after(const char *value, int64_t now_unix);

/* The timeout of one attempt: attempt_ms, but never past the deadline (0: none).
 * Returns 0 when the deadline has passed. */
long http_clamp_timeout_ms(long attempt_ms, int64_t deadline_ms, int64_t now_ms);

#endif
