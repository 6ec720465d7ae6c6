/*
 * wipe: the one way secrets leave memory in this project. Key material,
 * grants, tokens and answers that hold them are overwritten before they are
 * freed, with explicit_bzero, which the compiler may not optimise away.
 */
#ifndef MCP_WIPE_H
#define MCP_WIPE_H

#include <stdlib.h>
#include <string.h>

/* Overwrites n bytes at p with zeros. Accepts NULL. */
static inline void wipe(void *p, size_t n)
{
	if (p && n)
		explicit_bzero(p, n);
}

/* Wipes and frees n bytes at p. Accepts NULL. */
static inline void wipe_free(void *p, size_t n)
{
	wipe(p, n);
	free(p);
}

/* Wipes and frees a secret string. Accepts NULL. */
static inline void secret_free(char *s)
{
	if (s)
		wipe_free(s, strlen(s));
}

#endif
