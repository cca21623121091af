/* buf.c - growable byte buffer. */
#include "core/buf.h"

#include <stdlib.h>

thz_err thz_buf_reserve(thz_buf *b, size_t extra)
{
    if (b->cap - b->len >= extra) return THZ_OK;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < extra) {
        if (cap > SIZE_MAX / 2) return THZ_ENOMEM;
        cap *= 2;
    }
    uint8_t *p = realloc(b->p, cap);
    if (!p) return THZ_ENOMEM;
    b->p = p;
    b->cap = cap;
    return THZ_OK;
}

thz_err thz_buf_append(thz_buf *b, const void *data, size_t n)
{
    thz_err rc = thz_buf_reserve(b, n);
    if (rc) return rc;
    if (n) memcpy(b->p + b->len, data, n);
    b->len += n;
    return THZ_OK;
}

void thz_buf_free(thz_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

void thz_buf_consume(thz_buf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
}
