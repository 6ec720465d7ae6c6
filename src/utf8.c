/*
 * utf8: character boundaries for the text we cut and emit. Pure functions,
 * no allocation; never looks past the NUL or the length it is given.
 */
#include <string.h>

#include "utf8.h"

size_t utf8_seq_len(const char *s, size_t left)
{
	const unsigned char *p = (const unsigned char *)s;
	unsigned long cp;
	size_t n;

	if (p[0] < 0x80)
		return 1;
	if (p[0] >= 0xC2 && p[0] <= 0xDF)
		n = 2, cp = p[0] & 0x1Fu;
	else if (p[0] >= 0xE0 && p[0] <= 0xEF)
		n = 3, cp = p[0] & 0x0Fu;
	else if (p[0] >= 0xF0 && p[0] <= 0xF4)
		n = 4, cp = p[0] & 0x07u;
	else
		return 0;
	if (left < n)
		return 0;
	for (size_t i = 1; i < n; i++) {
		if ((p[i] & 0xC0) != 0x80)
			return 0;
		cp = (cp << 6) | (p[i] & 0x3Fu);
	}
	/* Overlong forms, UTF-16 surrogates, and past U+10FFFF. */
	if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10FFFF ||
	    (cp >= 0xD800 && cp <= 0xDFFF))
		return 0;
	return n;
}

size_t utf8_fit(const char *s, size_t max)
{
	size_t len = strnlen(s, max + 1), n;

	if (len <= max)
		return len;
	/* s[max] exists: back off while it continues the character before it (at most 3). */
	n = max;
	while (n > 0 && max - n < 3 && ((unsigned char)s[n] & 0xC0) == 0x80)
		n--;
	return ((unsigned char)s[n] & 0xC0) == 0x80 ? max : n;
}

size_t utf8_clean(char *s)
{
	size_t len = strlen(s), i = 0;

	while (i < len) {
		size_t k = utf8_seq_len(s + i, len - i);

		if (k > 0) {
			i += k;
			continue;
		}
		/* A lead byte whose sequence the end cut short: the cut's leftover. */
		if (len - i < 4 && (unsigned char)s[i] >= 0xC2 && (unsigned char)s[i] <= 0xF4) {
			size_t j = i + 1;

			while (j < len && ((unsigned char)s[j] & 0xC0) == 0x80)
				j++;
			if (j == len) {
				s[i] = '\0';
				return i;
			}
		}
		s[i++] = '?';
	}
	return len;
}
