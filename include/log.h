/*
 * log: OpenBSD-style log_error/warn/info/debug. One JSON object per line on
 * stderr by default (Kubernetes collects it), or plain text for people.
 *
 * The level is checked before the arguments are evaluated. Never pass
 * secrets: private keys, JWTs, access tokens, the Mount `secrets` field,
 * service account tokens, token endpoint response bodies.
 */
#ifndef MCP_LOG_H
#define MCP_LOG_H

#include <stddef.h>

enum log_level { LOG_LEVEL_ERROR = 0, LOG_LEVEL_WARN, LOG_LEVEL_INFO, LOG_LEVEL_DEBUG };
enum log_format { LOG_FORMAT_JSON = 0, LOG_FORMAT_TEXT };

/* One structured field; value NULL is left out. Both strings are borrowed. */
struct log_field {
	const char *key;
	const char *value;
};

extern enum log_level log_current_level;

void log_init(enum log_level level, enum log_format format);
int log_parse_level(const char *s, enum log_level *ret_level);
int log_parse_format(const char *s, enum log_format *ret_format);

/* Writes one line at level, with fields (may be NULL/0) and a printf message. */
void log_emit(enum log_level level, const struct log_field *fields, size_t nfields, const char *fmt,
	      ...) __attribute__((format(printf, 4, 5)));

#define LOG_AT(lvl, ...)                                                                           \
	do {                                                                                       \
		if (log_current_level >= (lvl))                                                    \
			log_emit((lvl), NULL, 0, __VA_ARGS__);                                     \
	} while (0)
#define log_error(...) LOG_AT(LOG_LEVEL_ERROR, __VA_ARGS__)
#define log_warn(...)  LOG_AT(LOG_LEVEL_WARN, __VA_ARGS__)
#define log_info(...)  LOG_AT(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_debug(...) LOG_AT(LOG_LEVEL_DEBUG, __VA_ARGS__)

/* With structured fields: log_fields(LOG_LEVEL_INFO, f, n, "mount done"). */
#define log_fields(lvl, fields, n, ...)                                                            \
	do {                                                                                       \
		if (log_current_level >= (lvl))                                                    \
			log_emit((lvl), (fields), (n), __VA_ARGS__);                               \
	} while (0)

#endif
