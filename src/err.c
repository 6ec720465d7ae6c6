/*
 * err: fills the error record that travels to the one place that reports it.
 * Must never copy secrets into a message: callers pass only names and ids.
 * Messages are always valid UTF-8: they become gRPC status details, which a
 * client decodes as UTF-8, and a cut to fit the buffer never splits a
 * character.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "err.h"
#include "utf8.h"

int err_set(struct err *e, enum err_kind kind, int errno_code, const char *fmt, ...)
{
	va_list ap;

	if (e) {
		e->kind = kind;
		va_start(ap, fmt);
		vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
		va_end(ap);
		utf8_clean(e->msg);
	}
	return errno_code > 0 ? -errno_code : (errno_code < 0 ? errno_code : -EIO);
}

void err_prefix(struct err *e, const char *fmt, ...)
{
	char prefix[256];
	size_t plen, mlen;
	va_list ap;

	if (!e)
		return;
	va_start(ap, fmt);
	vsnprintf(prefix, sizeof(prefix), fmt, ap);
	va_end(ap);
	plen = utf8_clean(prefix);
	mlen = strnlen(e->msg, sizeof(e->msg) - 1);
	/* Keep the prefix whole; the old message loses its tail if it must. */
	if (plen + mlen > sizeof(e->msg) - 1)
		mlen = sizeof(e->msg) - 1 - plen;
	memmove(e->msg + plen, e->msg, mlen);
	memcpy(e->msg, prefix, plen);
	e->msg[plen + mlen] = '\0';
	utf8_clean(e->msg);
}

bool err_is_transient(enum err_kind kind)
{
	return kind == ERR_UNAVAILABLE || kind == ERR_TIMEOUT || kind == ERR_THROTTLED ||
	       kind == ERR_BAD_RESPONSE;
}

const char *err_kind_name(enum err_kind kind)
{
	static const char *const names[] = {
		[ERR_NONE] = "none",
		[ERR_INVALID] = "invalid",
		[ERR_PERMISSION] = "permission",
		[ERR_SCOPE_ACCESS] = "scope_access",
		[ERR_NOT_FOUND] = "not_found",
		[ERR_CONFLICT] = "conflict",
		[ERR_THROTTLED] = "throttled",
		[ERR_UNAVAILABLE] = "unavailable",
		[ERR_TIMEOUT] = "timeout",
		[ERR_BAD_RESPONSE] = "bad_response",
		[ERR_UPSTREAM] = "upstream",
		[ERR_INTERNAL] = "internal",
		[ERR_PROPAGATING] = "propagating",
		[ERR_UNCONFIGURED] = "unconfigured",
	};

	if ((unsigned)kind < sizeof(names) / sizeof(names[0]) && names[kind])
		return names[kind];
	return "internal";
}
