/*
 * err: one small error record that travels from the module that saw a failure
 * up to the one place (the Mount handler or a subcommand) that reports it.
 *
 * Functions that can fail return 0 or a negative errno-style code and, when
 * given a non-NULL struct err, fill it in. Messages never contain secrets.
 */
#ifndef MCP_ERR_H
#define MCP_ERR_H

#include <stdarg.h>
#include <stdbool.h>

enum err_kind {
	ERR_NONE = 0,
	ERR_INVALID,	  /* the caller's input is wrong: fix the request or the configuration */
	ERR_PERMISSION,	  /* refused by policy (default service account, ownership) */
	ERR_SCOPE_ACCESS, /* the organisation may not consume a scope */
	ERR_NOT_FOUND,	  /* a client or scope does not exist */
	ERR_CONFLICT,	  /* DigDir refused a change that clashes with its state */
	ERR_THROTTLED,	  /* 429 after every retry */
	ERR_UNAVAILABLE,  /* DigDir or Maskinporten down: 5xx, refused, reset */
	ERR_TIMEOUT,	  /* the deadline passed */
	ERR_BAD_RESPONSE, /* an upstream answer we cannot use: garbage, wrong type */
	ERR_UPSTREAM,	  /* DigDir or Maskinporten refused our request (4xx) */
	ERR_INTERNAL,	  /* a bug or a local resource failure */
	ERR_PROPAGATING,  /* a new client or key is not accepted by Maskinporten yet */
	ERR_UNCONFIGURED, /* the Mount needs something this provider was not configured with */
};

struct err {
	enum err_kind kind;
	long http_status;	 /* upstream status, 0 when none */
	char endpoint[96];	 /* e.g. "digdir POST /clients" */
	char correlation_id[80]; /* DigDir's correlation_id when it gave one */
	char code[40];		 /* Maskinporten's error code ("invalid_grant") when it gave one */
	char msg[640];
};

/*
 * Fills e (when non-NULL) with kind and a formatted message, made valid UTF-8
 * (utf8_clean) after it is cut to fit. Returns -errno_code.
 */
int err_set(struct err *e, enum err_kind kind, int errno_code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Prefixes e->msg with a formatted context ("fetching metadata: "). */
void err_prefix(struct err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * Whether a kind is upstream trouble that may pass by itself: DigDir or
 * Maskinporten down, slow, throttling or answering garbage. Not the caller's
 * fault, and worth trying again later (or serving what was known before).
 */
bool err_is_transient(enum err_kind kind);

/* Short stable name of a kind, used as a metrics label ("scope_access"). */
const char *err_kind_name(enum err_kind kind);

#endif
