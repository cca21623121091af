/* query_int.h - private to src/query/: the arena every AST node and result
 * string lives in, and the error helper. */
#ifndef THZ_QUERY_INT_H
#define THZ_QUERY_INT_H

#include <stddef.h>

#include "query/query.h"

/* Zeroed memory from the arena *a (a new block is pushed when needed);
 * NULL when out of memory. Freed all at once by q_arena_free. */
void *q_alloc(q_arena **a, size_t n);
char *q_strndup(q_arena **a, const char *s, size_t n);
void q_arena_free(q_arena *a);

/* Fills err: the message, then " at position N" when pos >= 0. */
void q_seterr(q_error *err, int pos, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
