/*
 * utf8: the few UTF-8 rules that every text we emit must keep. Log records,
 * error messages and gRPC status details are cut to fit buffers; a cut must
 * fall between characters, never inside one, and bytes that are not UTF-8
 * (an upstream's body, a path) must not reach a reader that expects it.
 */
#ifndef MCP_UTF8_H
#define MCP_UTF8_H

#include <stddef.h>

/*
 * Length of the well-formed UTF-8 sequence at s (1 to 4), reading at most
 * left bytes; 0 when the bytes there are not one (overlong forms, surrogates,
 * code points past U+10FFFF, a sequence cut short). left must be at least 1.
 */
size_t utf8_seq_len(const char *s, size_t left);

/*
 * The longest prefix of the NUL-terminated s that is at most max bytes and
 * does not end inside a character: use it as a precision ("%.*s") instead of
 * a fixed "%.100s", which can split a character in two.
 */
size_t utf8_fit(const char *s, size_t max);

/*
 * Makes the NUL-terminated s valid UTF-8 in place: a character cut short at
 * the very end (what a truncating snprintf leaves) is dropped, and every
 * other byte that starts no well-formed sequence becomes '?'. Returns the
 * new length.
 */
size_t utf8_clean(char *s);

#endif
