/* ingest_int.h - private to src/ingest/: the batch's inline allocators. */
#ifndef THZ_INGEST_INT_H
#define THZ_INGEST_INT_H

#include "ingest/ingest.h"

tsdb_point *ingest_batch_grow(ingest_batch *b);
char *ingest_batch_alloc_slow(ingest_batch *b, size_t len);

/* A new point at the end of b, or NULL (out of memory). */
static inline tsdb_point *ingest_batch_push(ingest_batch *b)
{
    if (b->n < b->cap) return &b->pts[b->n++];
    return ingest_batch_grow(b);
}

/* len bytes that live as long as the batch, or NULL. */
static inline char *ingest_batch_alloc(ingest_batch *b, size_t len)
{
    if (b->size - b->used >= len) {
        char *p = b->buf + b->used;
        b->used += len;
        return p;
    }
    return ingest_batch_alloc_slow(b, len);
}

#endif
