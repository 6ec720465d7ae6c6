/*
 * fuzz: what the libFuzzer targets of tests/fuzz share. Each fuzz_NAME.c
 * defines LLVMFuzzerTestOneInput and is built by `make fuzz` against the
 * src objects (all but main.o) with -fsanitize=fuzzer,address,undefined.
 * A target must never keep state between inputs or leak: LeakSanitizer runs.
 */
#ifndef MCP_FUZZ_H
#define MCP_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "http.h"
#include "utf8.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The input as a NUL-terminated string (cut at its first NUL). Caller frees. */
static inline char *fuzz_str(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1);

	if (!s)
		abort();
	memcpy(s, data, size);
	s[size] = '\0';
	return s;
}

/* An HTTP answer with the input as its body, exactly as http_do hands it over. */
static inline struct http_response fuzz_response(long status, const char *content_type,
						 const uint8_t *data, size_t size)
{
	struct http_response resp = { .status = status, .attempts = 1 };

	resp.body = fuzz_str(data, size);
	resp.body_len = size;
	snprintf(resp.content_type, sizeof(resp.content_type), "%s",
		 content_type ? content_type : "");
	return resp;
}

/* A failure must say what failed. */
static inline void fuzz_check_err(int r, const struct err *err)
{
	char copy[sizeof(err->msg)];

	if (r < 0 && (!err->msg[0] || strnlen(err->msg, sizeof(err->msg)) == sizeof(err->msg)))
		abort();
	/* Messages become gRPC status details: always valid UTF-8, whatever the input. */
	memcpy(copy, err->msg, sizeof(copy));
	if (r < 0 && (utf8_clean(copy) != strlen(err->msg) || memcmp(copy, err->msg, strlen(copy))))
		abort();
}

#endif
