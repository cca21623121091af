/* buf.h - a growable byte buffer, the output side of every encoder. */
#ifndef THZ_BUF_H
#define THZ_BUF_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "core/err.h"

/* The buffer owns p (malloc'd); len bytes are used out of cap. A zeroed
 * thz_buf is a valid empty buffer. */
typedef struct thz_buf {
    uint8_t *p;
    size_t len;
    size_t cap;
} thz_buf;

/* Makes room for at least `extra` more bytes after len. p may move. */
thz_err thz_buf_reserve(thz_buf *b, size_t extra);
/* Appends n bytes. */
thz_err thz_buf_append(thz_buf *b, const void *data, size_t n);
/* Releases the memory and leaves an empty buffer. */
void thz_buf_free(thz_buf *b);
/* Drops the first n bytes, keeping the rest at the start. */
void thz_buf_consume(thz_buf *b, size_t n);

#endif
