/* tsdb_index.c - the series index: (tenant, device, metric, tags) -> id, in
 * memory as a hash map plus per-tenant postings (device, metric, tag k=v ->
 * ascending id arrays), persisted in DIR/index, an append-only file of
 * records [u32 CRC-32C][u32 len][series definition] loaded on open (a torn
 * or corrupt tail is truncated with a warning). The file may lag behind the
 * WAL, which carries every new series' definition before its first point;
 * checkpoints append the missing definitions before deleting WAL segments.
 *
 * Series definition: u64 id, i64 tenant, u8 type, u16 dlen, device,
 * u16 mlen, metric, u16 tlen, tags. Series are never deleted while open,
 * so a tsdb_ser pointer stays valid until tsdb_close. */
#include <errno.h>
#include <fcntl.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/crc32c.h"
#include "core/log.h"
#include "tsdb/tsdb_int.h"

static thz_err ids_push(tsdb_ids *l, uint64_t id)
{
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 4;
        uint64_t *nv = realloc(l->v, nc * sizeof *nv);
        if (!nv) return THZ_ENOMEM;
        l->v = nv;
        l->cap = nc;
    }
    l->v[l->n++] = id; /* ids only grow, so the array stays sorted */
    return THZ_OK;
}

tsdb_tenant *tsdb_tenant_get(tsdb *db, int64_t tenant, bool create)
{
    tsdb_tenant *t = hmap_get(&db->tenants, &tenant, sizeof tenant);
    if (t || !create) return t;
    t = calloc(1, sizeof *t);
    if (!t) return NULL;
    t->id = tenant;
    t->retention_s = -1;
    if (hmap_put(&db->tenants, &t->id, sizeof t->id, t, NULL)) {
        free(t);
        return NULL;
    }
    return t;
}

static thz_err posting_add(tsdb_tenant *t, char kind, const char *a, size_t alen, uint64_t id)
{
    char stack[600];
    size_t klen = 2 + alen;
    char *k = klen <= sizeof stack ? stack : malloc(klen);
    if (!k) return THZ_ENOMEM;
    k[0] = kind;
    k[1] = 0;
    memcpy(k + 2, a, alen);
    tsdb_ids *l = hmap_get(&t->postings, k, klen);
    if (!l) {
        /* The map keeps the key pointer: store it after the list. */
        l = calloc(1, sizeof *l + klen);
        if (!l) goto nomem;
        memcpy(l + 1, k, klen);
        if (hmap_put(&t->postings, l + 1, klen, l, NULL)) {
            free(l);
            goto nomem;
        }
    }
    if (k != stack) free(k);
    return ids_push(l, id);
nomem:
    if (k != stack) free(k);
    return THZ_ENOMEM;
}

static size_t build_key(uint8_t *k, int64_t tenant, const char *dev, size_t dlen, const char *met,
                        size_t mlen, const char *tags, size_t tlen)
{
    tsdb_put64(k, (uint64_t)tenant);
    size_t o = 8;
    memcpy(k + o, dev, dlen);
    o += dlen;
    k[o++] = 0;
    memcpy(k + o, met, mlen);
    o += mlen;
    k[o++] = 0;
    if (tlen) memcpy(k + o, tags, tlen);
    return o + tlen;
}

tsdb_ser *tsdb_idx_find(tsdb *db, int64_t tenant, const tsdb_point *p)
{
    uint8_t k[8 + 128 + 256 + 2 + 4096];
    if (p->device_len > 128 || p->metric_len > 256 || p->tags_len > 4096) return NULL;
    size_t kl = build_key(k, tenant, p->device, p->device_len, p->metric, p->metric_len, p->tags,
                          p->tags_len);
    return hmap_get(&db->series, k, kl);
}

/* Splits the canonical tag set into (k=v) items, calling fn for each. */
static thz_err tags_each(const char *tags, size_t tlen, thz_err (*fn)(void *, const char *, size_t),
                         void *ctx)
{
    size_t i = 0;
    while (i < tlen) {
        size_t j = i;
        while (j < tlen && tags[j] != ',') j += tags[j] == '\\' ? 2 : 1;
        if (j > tlen) j = tlen;
        thz_err rc = fn(ctx, tags + i, j - i);
        if (rc) return rc;
        i = j + 1;
    }
    return THZ_OK;
}

/* Notes a metric name ('m') or tag key ('k') of the tenant (tsdb_labels). */
static thz_err label_add(tsdb_tenant *t, char kind, const char *a, size_t alen)
{
    char stack[300];
    size_t klen = 2 + alen;
    char *k = klen <= sizeof stack ? stack : malloc(klen);
    if (!k) return THZ_ENOMEM;
    k[0] = kind;
    k[1] = 0;
    memcpy(k + 2, a, alen);
    thz_err rc = THZ_OK;
    if (!hmap_get(&t->labels, k, klen)) {
        char *c = malloc(klen);
        if (!c)
            rc = THZ_ENOMEM;
        else {
            memcpy(c, k, klen);
            if ((rc = hmap_put(&t->labels, c, klen, c, NULL))) free(c);
        }
    }
    if (k != stack) free(k);
    return rc;
}

typedef struct post_ctx {
    tsdb_tenant *t;
    uint64_t id;
} post_ctx;

static thz_err post_tag(void *ctx, const char *kv, size_t n)
{
    post_ctx *c = ctx;
    size_t kl = 0;
    while (kl < n && kv[kl] != '=') kl += kv[kl] == '\\' ? 2 : 1;
    if (kl > n) kl = n;
    thz_err rc = label_add(c->t, 'k', kv, kl);
    return rc ? rc : posting_add(c->t, 't', kv, n, c->id);
}

thz_err tsdb_idx_add(tsdb *db, int64_t tenant, const char *dev, size_t dlen, const char *met,
                     size_t mlen, const char *tags, size_t tlen, tsdb_type type, uint64_t id,
                     tsdb_ser **out)
{
    if (id == 0) id = db->next_id;
    /* Ids are dense (given out in order): a stored id far past the next one
     * is corruption, and would size by_id from a number read from disk. */
    if (id > db->next_id + 65536) return THZ_ECORRUPT;
    if (id >= db->cap_id) {
        size_t nc = db->cap_id ? db->cap_id : 1024;
        while (nc <= id) nc *= 2;
        tsdb_ser **nb = realloc(db->by_id, nc * sizeof *nb);
        if (!nb) return THZ_ENOMEM;
        memset(nb + db->cap_id, 0, (nc - db->cap_id) * sizeof *nb);
        db->by_id = nb;
        db->cap_id = nc;
    }
    if (db->by_id[id]) return THZ_EEXIST;
    tsdb_tenant *t = tsdb_tenant_get(db, tenant, true);
    if (!t) return THZ_ENOMEM;
    size_t klen = 8 + dlen + 1 + mlen + 1 + tlen;
    tsdb_ser *s = calloc(1, sizeof *s + klen + dlen + mlen + tlen + 3);
    if (!s) return THZ_ENOMEM;
    s->id = id;
    s->tenant = tenant;
    s->type = type;
    s->key = (uint8_t *)(s + 1);
    s->klen = build_key(s->key, tenant, dev, dlen, met, mlen, tags, tlen);
    s->device = (char *)s->key + klen;
    memcpy(s->device, dev, dlen);
    s->device[dlen] = 0;
    s->metric = s->device + dlen + 1;
    memcpy(s->metric, met, mlen);
    s->metric[mlen] = 0;
    s->tags = s->metric + mlen + 1;
    if (tlen) memcpy(s->tags, tags, tlen);
    s->tags[tlen] = 0;
    s->dlen = (uint32_t)dlen;
    s->mlen = (uint32_t)mlen;
    s->tlen = (uint32_t)tlen;
    s->blk_last_ts = INT64_MIN;
    s->stripe = (uint32_t)(hmap_hash(s->key, 8 + dlen) % TSDB_NSTRIPE); /* tenant, device */
    s->cells_ok = true;
    s->head_sorted = true;
    if (hmap_put(&db->series, s->key, s->klen, s, NULL)) {
        free(s);
        return THZ_ENOMEM;
    }
    post_ctx pc = {t, id};
    if (ids_push(&t->all, id) || posting_add(t, 'd', dev, dlen, id) ||
        posting_add(t, 'm', met, mlen, id) || label_add(t, 'm', met, mlen) ||
        tags_each(tags, tlen, post_tag, &pc)) {
        /* Postings may be partial after ENOMEM; the series stays findable. */
        log_error(TSDB_MOD, "out of memory indexing series %llu", (unsigned long long)id);
    }
    db->by_id[id] = s;
    t->nseries++;
    if (id >= db->next_id) db->next_id = id + 1;
    *out = s;
    return THZ_OK;
}

tsdb_ser *tsdb_ser_get(tsdb *db, int64_t tenant, uint64_t id)
{
    tsdb_ser *s = NULL;
    pthread_rwlock_rdlock(&db->idx);
    if (id < db->cap_id) s = db->by_id[id];
    pthread_rwlock_unlock(&db->idx);
    return s && s->tenant == tenant ? s : NULL;
}

thz_err tsdb_ser_def_encode(const tsdb_ser *s, thz_buf *out)
{
    size_t n = 8 + 8 + 1 + 6 + s->dlen + s->mlen + s->tlen;
    if (thz_buf_reserve(out, n)) return THZ_ENOMEM;
    uint8_t *p = out->p + out->len;
    tsdb_put64(p, s->id);
    tsdb_put64(p + 8, (uint64_t)s->tenant);
    p[16] = (uint8_t)s->type;
    p += 17;
    const char *f[3] = {s->device, s->metric, s->tags};
    uint32_t l[3] = {s->dlen, s->mlen, s->tlen};
    for (int i = 0; i < 3; i++) {
        p[0] = (uint8_t)l[i];
        p[1] = (uint8_t)(l[i] >> 8);
        if (l[i]) memcpy(p + 2, f[i], l[i]);
        p += 2 + l[i];
    }
    out->len += n;
    return THZ_OK;
}

size_t tsdb_ser_def_decode(const uint8_t *p, size_t n, uint64_t *id, int64_t *tenant, uint8_t *type,
                           const char **dev, uint32_t *dlen, const char **met, uint32_t *mlen,
                           const char **tags, uint32_t *tlen)
{
    if (n < 17) return 0;
    *id = tsdb_get64(p);
    *tenant = (int64_t)tsdb_get64(p + 8);
    *type = p[16];
    size_t o = 17;
    const char **f[3] = {dev, met, tags};
    uint32_t *l[3] = {dlen, mlen, tlen};
    for (int i = 0; i < 3; i++) {
        if (n - o < 2) return 0;
        uint32_t len = p[o] | (uint32_t)p[o + 1] << 8;
        o += 2;
        if (n - o < len) return 0;
        *f[i] = (const char *)p + o;
        *l[i] = len;
        o += len;
    }
    if (*type < TSDB_FLOAT || *type > TSDB_STRING || *id == 0 || *id > (1ull << 40) || *dlen == 0 ||
        *dlen > 128 || *mlen == 0 || *mlen > 256 || *tlen > 4096)
        return 0;
    return o;
}

thz_err tsdb_idx_load(tsdb *db)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/index", db->dir);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        log_error(TSDB_MOD, "open %s: %s", path, strerror(errno));
        return THZ_EIO;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        close(fd);
        return THZ_EIO;
    }
    size_t sz = (size_t)st.st_size, off = 0;
    uint8_t *data = sz ? malloc(sz) : NULL;
    if (sz && !data) {
        close(fd);
        return THZ_ENOMEM;
    }
    if (sz && pread(fd, data, sz, 0) != (ssize_t)sz) {
        free(data);
        close(fd);
        return THZ_EIO;
    }
    while (off + 8 <= sz) {
        uint32_t crc = tsdb_get32(data + off), len = tsdb_get32(data + off + 4);
        if (len > sz - off - 8 || thz_crc32c(0, data + off + 4, 4 + (size_t)len) != crc) break;
        uint64_t id;
        int64_t tenant;
        uint8_t type;
        const char *d, *m, *t;
        uint32_t dl, ml, tl;
        if (tsdb_ser_def_decode(data + off + 8, len, &id, &tenant, &type, &d, &dl, &m, &ml, &t,
                                &tl) != len)
            break;
        tsdb_ser *s;
        thz_err rc = tsdb_idx_add(db, tenant, d, dl, m, ml, t, tl, type, id, &s);
        if (rc == THZ_OK)
            s->persisted = true;
        else if (rc == THZ_ECORRUPT)
            break;
        else if (rc != THZ_EEXIST) {
            free(data);
            close(fd);
            return rc;
        }
        if (id > db->idx_persisted) db->idx_persisted = id;
        off += 8 + (size_t)len;
    }
    if (off != sz) {
        log_warn(TSDB_MOD, "%s: bad record at byte %zu, truncating %zu bytes", path, off, sz - off);
        if (ftruncate(fd, (off_t)off) < 0) log_warn(TSDB_MOD, "ftruncate: %s", strerror(errno));
    }
    free(data);
    lseek(fd, 0, SEEK_END);
    db->idx_fd = fd;
    return THZ_OK;
}

thz_err tsdb_idx_persist(tsdb *db)
{
    thz_buf b = {0}, one = {0};
    thz_err rc = THZ_OK;
    pthread_rwlock_rdlock(&db->idx);
    uint64_t upto = db->next_id; /* series created after this are not written now */
    for (uint64_t id = 1; id < upto; id++) {
        tsdb_ser *s = db->by_id[id];
        if (!s || s->persisted) continue;
        one.len = 0;
        if ((rc = tsdb_ser_def_encode(s, &one)) || (rc = tsdb_wal_frame(&b, &one))) break;
    }
    pthread_rwlock_unlock(&db->idx);
    if (!rc && b.len) {
        if (write(db->idx_fd, b.p, b.len) != (ssize_t)b.len || fdatasync(db->idx_fd) < 0) {
            log_error(TSDB_MOD, "index write: %s", strerror(errno));
            rc = THZ_EIO;
        } else {
            pthread_rwlock_wrlock(&db->idx);
            for (uint64_t id = 1; id < upto; id++)
                if (db->by_id[id]) db->by_id[id]->persisted = true;
            pthread_rwlock_unlock(&db->idx);
        }
    }
    thz_buf_free(&b);
    thz_buf_free(&one);
    return rc;
}

void tsdb_idx_free(tsdb *db)
{
    size_t pos = 0;
    hmap_entry *e = NULL;
    while ((e = hmap_next(&db->tenants, &pos, e))) {
        tsdb_tenant *t = e->val;
        size_t p2 = 0;
        hmap_entry *e2 = NULL;
        while ((e2 = hmap_next(&t->postings, &p2, e2))) {
            tsdb_ids *l = e2->val;
            free(l->v);
            free(l);
        }
        hmap_free(&t->postings);
        p2 = 0;
        e2 = NULL;
        while ((e2 = hmap_next(&t->labels, &p2, e2))) free(e2->val);
        hmap_free(&t->labels);
        p2 = 0;
        e2 = NULL;
        while ((e2 = hmap_next(&t->metric_ret, &p2, e2))) free(e2->val);
        hmap_free(&t->metric_ret);
        free(t->all.v);
        free(t);
    }
    hmap_free(&db->tenants);
    for (uint64_t id = 0; id < db->cap_id; id++) {
        tsdb_ser *s = db->by_id[id];
        if (!s) continue;
        free(s->head.ts);
        free(s->head.v);
        thz_buf_free(&s->head.str);
        free(s->frozen.ts);
        free(s->frozen.v);
        thz_buf_free(&s->frozen.str);
        free(s->lvc_s);
        free(s->cells);
        free(s);
    }
    free(db->by_id);
    hmap_free(&db->series);
    if (db->idx_fd > 0) close(db->idx_fd);
}

/* ---- tag sets ---- */

static size_t esc_len(const char *s, size_t n)
{
    size_t r = n;
    for (size_t i = 0; i < n; i++)
        if (s[i] == ',' || s[i] == '=' || s[i] == '\\') r++;
    return r;
}

static size_t esc_put(char *o, const char *s, size_t n)
{
    size_t r = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ',' || s[i] == '=' || s[i] == '\\') o[r++] = '\\';
        o[r++] = s[i];
    }
    return r;
}

typedef struct kv_ref {
    const char *k, *v;
    size_t kl, vl;
} kv_ref;

static int kv_cmp(const void *a, const void *b)
{
    const kv_ref *x = a, *y = b;
    size_t m = x->kl < y->kl ? x->kl : y->kl;
    int c = memcmp(x->k, y->k, m);
    if (c) return c;
    return x->kl < y->kl ? -1 : x->kl > y->kl;
}

long tsdb_tags_canon(const char *const *keys, const size_t *klen, const char *const *vals,
                     const size_t *vlen, size_t n, char *out, size_t outlen)
{
    if (n == 0) {
        if (outlen) out[0] = 0;
        return 0;
    }
    if (n > 256 || !keys || !klen || !vals || !vlen) return -1;
    kv_ref *r = malloc(n * sizeof *r);
    if (!r) return -1;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (!keys[i] || klen[i] < 1 || klen[i] > 128 || vlen[i] > 256 || (vlen[i] && !vals[i])) {
            free(r);
            return -1;
        }
        r[i] = (kv_ref){keys[i], vals[i] ? vals[i] : "", klen[i], vlen[i]};
        total += esc_len(keys[i], klen[i]) + 1 + esc_len(r[i].v, vlen[i]) + (i ? 1 : 0);
    }
    if (n > 1) qsort(r, n, sizeof *r, kv_cmp);
    for (size_t i = 1; i < n; i++)
        if (kv_cmp(&r[i - 1], &r[i]) == 0) {
            free(r);
            return -1;
        }
    if (total > 4096 || total >= outlen) {
        free(r);
        return -1;
    }
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (i) out[o++] = ',';
        o += esc_put(out + o, r[i].k, r[i].kl);
        out[o++] = '=';
        o += esc_put(out + o, r[i].v, r[i].vl);
    }
    out[o] = 0;
    free(r);
    return (long)o;
}

/* Finds tag key's value in a canonical tag set; writes the unescaped value
 * to val (cap 260). Returns false when absent. */
static bool tag_value(const char *tags, const char *key, char *val, size_t cap)
{
    size_t kl = strlen(key);
    const char *p = tags;
    while (*p) {
        /* unescape the key */
        char kbuf[300];
        size_t k = 0;
        while (*p && *p != '=') {
            if (*p == '\\' && p[1]) p++;
            if (k < sizeof kbuf) kbuf[k++] = *p;
            p++;
        }
        if (*p == '=') p++;
        size_t v = 0;
        while (*p && *p != ',') {
            if (*p == '\\' && p[1]) p++;
            if (v + 1 < cap) val[v++] = *p;
            p++;
        }
        val[v] = 0;
        if (*p == ',') p++;
        if (k == kl && memcmp(kbuf, key, kl) == 0) return true;
    }
    val[0] = 0;
    return false;
}

/* ---- selection ---- */

typedef struct cmatch {
    const tsdb_matcher *m;
    regex_t re;
    bool has_re;
} cmatch;

static const char *label_of(const tsdb_ser *s, const char *label, char *buf, size_t cap)
{
    if (strcmp(label, "device") == 0) return s->device;
    if (strcmp(label, "metric") == 0) return s->metric;
    tag_value(s->tags, label, buf, cap);
    return buf;
}

static bool matches(const tsdb_ser *s, const cmatch *cm, size_t n)
{
    char buf[300];
    for (size_t i = 0; i < n; i++) {
        const char *v = label_of(s, cm[i].m->label, buf, sizeof buf);
        bool ok;
        switch (cm[i].m->op) {
        case TSDB_EQ: ok = strcmp(v, cm[i].m->value) == 0; break;
        case TSDB_NE: ok = strcmp(v, cm[i].m->value) != 0; break;
        case TSDB_RE: ok = regexec(&cm[i].re, v, 0, NULL, 0) == 0; break;
        default: ok = regexec(&cm[i].re, v, 0, NULL, 0) != 0; break;
        }
        if (!ok) return false;
    }
    return true;
}

/* The postings list for an EQ matcher, or NULL (no list: the empty set). */
static const tsdb_ids *eq_postings(tsdb_tenant *t, const tsdb_matcher *m)
{
    char k[2 + 2 * 128 + 1 + 2 * 256 + 8];
    size_t vl = strlen(m->value), kl;
    if (strcmp(m->label, "device") == 0 || strcmp(m->label, "metric") == 0) {
        if (vl > 256) return NULL;
        k[0] = m->label[0] == 'd' ? 'd' : 'm';
        k[1] = 0;
        memcpy(k + 2, m->value, vl);
        kl = 2 + vl;
    } else {
        size_t ll = strlen(m->label);
        if (ll > 128 || vl > 256) return NULL;
        k[0] = 't';
        k[1] = 0;
        kl = 2 + esc_put(k + 2, m->label, ll);
        k[kl++] = '=';
        kl += esc_put(k + kl, m->value, vl);
    }
    return hmap_get(&t->postings, k, kl);
}

thz_err tsdb_series_select(tsdb *db, int64_t tenant, const tsdb_matcher *m, size_t nm,
                           tsdb_series_fn fn, void *ctx)
{
    if (nm && !m) return THZ_EINVAL;
    cmatch *cm = calloc(nm ? nm : 1, sizeof *cm);
    if (!cm) return THZ_ENOMEM;
    thz_err rc = THZ_OK;
    for (size_t i = 0; i < nm; i++) {
        cm[i].m = &m[i];
        if (!m[i].label || !m[i].value || m[i].op < TSDB_EQ || m[i].op > TSDB_NRE) {
            rc = THZ_EINVAL;
            goto out;
        }
        if (m[i].op == TSDB_RE || m[i].op == TSDB_NRE) {
            size_t vl = strlen(m[i].value);
            char *pat = malloc(vl + 5);
            if (!pat) {
                rc = THZ_ENOMEM;
                goto out;
            }
            snprintf(pat, vl + 5, "^(%s)$", m[i].value);
            int r = regcomp(&cm[i].re, pat, REG_EXTENDED | REG_NOSUB);
            free(pat);
            if (r) {
                rc = THZ_EINVAL;
                goto out;
            }
            cm[i].has_re = true;
        }
    }
    /* Candidates under the lock, callbacks outside it (they may read);
     * series live as long as the database, so pointers are kept. */
    struct {
        tsdb_ser **v;
        size_t n, cap;
    } cand = {0};
    pthread_rwlock_rdlock(&db->idx);
    tsdb_tenant *t = tsdb_tenant_get(db, tenant, false);
    if (t) {
        const tsdb_ids *best = &t->all;
        for (size_t i = 0; i < nm; i++) {
            if (m[i].op != TSDB_EQ || !m[i].value[0]) continue;
            const tsdb_ids *l = eq_postings(t, &m[i]);
            static const tsdb_ids empty = {0};
            if (!l) l = &empty;
            if (l->n < best->n) best = l;
        }
        for (size_t i = 0; i < best->n && rc == THZ_OK; i++) {
            tsdb_ser *s = db->by_id[best->v[i]];
            if (!s || !matches(s, cm, nm)) continue;
            if (cand.n == cand.cap) {
                size_t nc = cand.cap ? cand.cap * 2 : 64;
                tsdb_ser **nv = realloc(cand.v, nc * sizeof *nv);
                if (!nv) {
                    rc = THZ_ENOMEM;
                    break;
                }
                cand.v = nv;
                cand.cap = nc;
            }
            cand.v[cand.n++] = s;
        }
    }
    pthread_rwlock_unlock(&db->idx);
    for (size_t i = 0; i < cand.n && rc == THZ_OK; i++) {
        const tsdb_ser *s = cand.v[i];
        tsdb_series view = {s->id, s->device, s->metric, s->tags, s->type};
        if (!fn(ctx, &view)) break;
    }
    free(cand.v);
out:
    for (size_t i = 0; i < nm; i++)
        if (cm[i].has_re) regfree(&cm[i].re);
    free(cm);
    return rc;
}

thz_err tsdb_labels(tsdb *db, int64_t tenant, tsdb_label_fn fn, void *ctx)
{
    if (!db || !fn) return THZ_EINVAL;
    thz_buf b = {0}; /* [kind][u32 len][name] ..., copied under the lock */
    thz_err rc = THZ_OK;
    pthread_rwlock_rdlock(&db->idx);
    tsdb_tenant *t = tsdb_tenant_get(db, tenant, false);
    size_t pos = 0;
    hmap_entry *e = NULL;
    while (t && !rc && (e = hmap_next(&t->labels, &pos, e))) {
        uint8_t h[5];
        uint32_t n = (uint32_t)(e->klen - 2);
        h[0] = ((const uint8_t *)e->key)[0];
        tsdb_put32(h + 1, n);
        if (!(rc = thz_buf_append(&b, h, 5))) rc = thz_buf_append(&b, (const char *)e->key + 2, n);
    }
    pthread_rwlock_unlock(&db->idx);
    for (size_t o = 0; !rc && o < b.len;) {
        uint32_t n = tsdb_get32(b.p + o + 1);
        if (!fn(ctx, b.p[o] == 'm', (const char *)b.p + o + 5, n)) break;
        o += 5 + n;
    }
    thz_buf_free(&b);
    return rc;
}
