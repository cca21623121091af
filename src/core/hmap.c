/* hmap.c - chained hash map with byte-string keys (FNV-1a mixed to 64 bits). */
#include "core/hmap.h"

#include <stdlib.h>
#include <string.h>

uint64_t hmap_hash(const void *key, size_t len)
{
    const uint8_t *p = key;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++) h = (h ^ p[i]) * 0x100000001b3ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

static hmap_entry **slot(const hmap *m, const void *key, size_t klen, uint64_t h)
{
    hmap_entry **pp = &m->b[h & (m->nb - 1)];
    for (; *pp; pp = &(*pp)->next)
        if ((*pp)->hash == h && (*pp)->klen == klen && memcmp((*pp)->key, key, klen) == 0)
            return pp;
    return pp;
}

void *hmap_get(const hmap *m, const void *key, size_t klen)
{
    if (!m->nb) return NULL;
    hmap_entry *e = *slot(m, key, klen, hmap_hash(key, klen));
    return e ? e->val : NULL;
}

static thz_err grow(hmap *m)
{
    size_t nb = m->nb ? m->nb * 2 : 16;
    hmap_entry **b = calloc(nb, sizeof *b);
    if (!b) return THZ_ENOMEM;
    for (size_t i = 0; i < m->nb; i++) {
        hmap_entry *e = m->b[i];
        while (e) {
            hmap_entry *next = e->next;
            e->next = b[e->hash & (nb - 1)];
            b[e->hash & (nb - 1)] = e;
            e = next;
        }
    }
    free(m->b);
    m->b = b;
    m->nb = nb;
    return THZ_OK;
}

thz_err hmap_put(hmap *m, const void *key, size_t klen, void *val, void **old)
{
    if (old) *old = NULL;
    if (m->n >= m->nb && grow(m) != THZ_OK) return THZ_ENOMEM;
    uint64_t h = hmap_hash(key, klen);
    hmap_entry **pp = slot(m, key, klen, h);
    if (*pp) {
        if (old) *old = (*pp)->val;
        (*pp)->val = val;
        (*pp)->key = key;
        return THZ_OK;
    }
    hmap_entry *e = malloc(sizeof *e);
    if (!e) return THZ_ENOMEM;
    *e = (hmap_entry){NULL, key, klen, h, val};
    *pp = e;
    m->n++;
    return THZ_OK;
}

void *hmap_del(hmap *m, const void *key, size_t klen)
{
    if (!m->nb) return NULL;
    hmap_entry **pp = slot(m, key, klen, hmap_hash(key, klen));
    hmap_entry *e = *pp;
    if (!e) return NULL;
    void *v = e->val;
    *pp = e->next;
    free(e);
    m->n--;
    return v;
}

int hmap_del_if(hmap *m, const void *key, size_t klen, const void *val)
{
    if (hmap_get(m, key, klen) != val) return 0;
    hmap_del(m, key, klen);
    return 1;
}

hmap_entry *hmap_next(const hmap *m, size_t *pos, hmap_entry *e)
{
    if (e && e->next) return e->next;
    while (*pos < m->nb) {
        hmap_entry *f = m->b[(*pos)++];
        if (f) return f;
    }
    return NULL;
}

void hmap_free(hmap *m)
{
    for (size_t i = 0; i < m->nb; i++) {
        hmap_entry *e = m->b[i];
        while (e) {
            hmap_entry *next = e->next;
            free(e);
            e = next;
        }
    }
    free(m->b);
    m->b = NULL;
    m->nb = m->n = 0;
}
