/* hmap.h - a byte-string keyed hash map (chained, power-of-two buckets).
 *
 * The map stores the key pointer it is given, not a copy: the key's memory
 * must stay valid and unchanged while the entry exists (it usually lives in
 * the value, e.g. a session's client id). Not thread-safe; callers lock. */
#ifndef THZ_HMAP_H
#define THZ_HMAP_H

#include <stddef.h>
#include <stdint.h>

#include "core/err.h"

typedef struct hmap_entry {
    struct hmap_entry *next;
    const void *key;
    size_t klen;
    uint64_t hash;
    void *val;
} hmap_entry;

typedef struct hmap {
    hmap_entry **b;
    size_t nb; /* bucket count, a power of two */
    size_t n;  /* entries */
} hmap;

uint64_t hmap_hash(const void *key, size_t len);
/* Returns the value, or NULL when absent. */
void *hmap_get(const hmap *m, const void *key, size_t klen);
/* Inserts or replaces; *old (if not NULL) receives the replaced value or NULL. */
thz_err hmap_put(hmap *m, const void *key, size_t klen, void *val, void **old);
/* Removes; returns the removed value or NULL. */
void *hmap_del(hmap *m, const void *key, size_t klen);
/* Removes the entry only if it maps to val; returns 1 if it did. */
int hmap_del_if(hmap *m, const void *key, size_t klen, const void *val);
/* Iterates: start with *pos = 0 and e = NULL; returns the next entry or NULL.
 * The map must not change during iteration. */
hmap_entry *hmap_next(const hmap *m, size_t *pos, hmap_entry *e);
void hmap_free(hmap *m);

#endif
