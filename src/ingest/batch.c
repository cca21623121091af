/* batch.c - the growable point array and byte arena of an ingest_batch:
 * caller (stack) storage first, heap chunks only past it. Chunks never move,
 * so pointers into them stay valid while the batch grows. */
#include <stdlib.h>
#include <string.h>

#include "ingest/ingest.h"
#include "ingest/ingest_int.h"

struct ingest_chunk {
    ingest_chunk *next;
    size_t size;
    char data[];
};

void ingest_batch_init(ingest_batch *b, tsdb_point *pts, size_t cap, char *buf, size_t buflen)
{
    memset(b, 0, sizeof *b);
    b->pts = b->stack_pts = pts;
    b->cap = cap;
    b->buf = buf;
    b->size = buflen;
}

void ingest_batch_reset(ingest_batch *b)
{
    b->n = 0;
    b->used = 0;
    b->err_class = 0;
    b->err_off = 0;
}

void ingest_batch_free(ingest_batch *b)
{
    if (b->pts != b->stack_pts) free(b->pts);
    for (ingest_chunk *c = b->chunks, *nx; c; c = nx) {
        nx = c->next;
        free(c);
    }
    b->pts = b->stack_pts;
    b->chunks = NULL;
    b->n = b->cap = 0;
}

tsdb_point *ingest_batch_grow(ingest_batch *b)
{
    size_t cap = b->cap ? b->cap * 2 : 64;
    tsdb_point *np;
    if (b->pts == b->stack_pts) {
        np = malloc(cap * sizeof *np);
        if (np && b->n) memcpy(np, b->pts, b->n * sizeof *np);
    } else {
        np = realloc(b->pts, cap * sizeof *np);
    }
    if (!np) return NULL;
    b->pts = np;
    b->cap = cap;
    return &b->pts[b->n++];
}

char *ingest_batch_alloc_slow(ingest_batch *b, size_t len)
{
    size_t sz = len > 65536 ? len : 65536;
    ingest_chunk *c = malloc(sizeof *c + sz);
    if (!c) return NULL;
    c->size = sz;
    c->next = b->chunks;
    b->chunks = c;
    b->buf = c->data;
    b->size = sz;
    b->used = len;
    return c->data;
}
