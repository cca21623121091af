/* fuzz_telemetry_json.c - differential libFuzzer target: the telemetry JSON
 * scanner (src/ingest/json.c) against cJSON on the same input.
 *
 * From cJSON's tree the target builds what the payload must become: records
 * (the object, or each element of a top-level array), each a map from the
 * flattened field name to its value, last duplicate winning, nulls removing,
 * with the semantic rules of telemetry (no arrays, depth 16, 1,000 fields per
 * object, 10,000 points, names 1..256 bytes, ts a number or an RFC 3339
 * string). Then:
 *  - scanner accepts  => cJSON accepts, the model is valid, and every record
 *    has exactly the model's fields with bit-identical values and its ts;
 *  - cJSON accepts, scanner refuses => the refusal is one of the documented
 *    strictness classes, each checked on the input itself: INGEST_E_SEMANTIC
 *    (the model is invalid too), INGEST_E_NUMBER (the number at the error
 *    offset is outside RFC 8259's grammar, longer than 63 bytes or overflows),
 *    INGEST_E_STRICT (the input has a raw control byte or invalid UTF-8),
 *    INGEST_E_NULNAME (the input has \u0000), INGEST_E_UHEX (the error
 *    offset holds a \u without four hex digits). Anything else aborts. */
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cjson/cJSON.h>

#include "ingest/ingest.h"

#define NOW 42

typedef struct mfield {
    char name[INGEST_MAX_NAME + 2];
    size_t nlen;
    const cJSON *v; /* NULL: removed by a later null */
} mfield;

typedef struct mrec {
    mfield *f;
    size_t n, cap;
    int ts_kind; /* 0 none, 1 exact (ts), 2 approximate (tsd, ms) */
    int64_t ts;
    double tsd;
} mrec;

typedef struct model {
    mrec *r;
    size_t n, cap;
    size_t points; /* leaves counted as the scanner counts them (nulls too) */
    bool invalid;
    bool uncertain; /* near a limit the model cannot judge exactly: skip */
} model;

static void add_field(model *m, mrec *r, const char *name, size_t nl, const cJSON *v)
{
    if (++m->points > INGEST_MAX_POINTS) m->invalid = true;
    for (size_t i = 0; i < r->n; i++)
        if (r->f[i].nlen == nl && memcmp(r->f[i].name, name, nl) == 0) {
            /* last wins: move it to the end, as the scanner keeps the last */
            mfield t = r->f[i];
            memmove(&r->f[i], &r->f[i + 1], (r->n - i - 1) * sizeof *r->f);
            t.v = cJSON_IsNull(v) ? NULL : v;
            r->f[r->n - 1] = t;
            return;
        }
    if (r->n == r->cap) {
        r->cap = r->cap ? 2 * r->cap : 16;
        r->f = realloc(r->f, r->cap * sizeof *r->f);
        if (!r->f) abort();
    }
    mfield *f = &r->f[r->n++];
    memcpy(f->name, name, nl);
    f->nlen = nl;
    f->v = cJSON_IsNull(v) ? NULL : v;
}

static void flatten(model *m, mrec *r, const cJSON *o, const char *prefix, size_t pl, int depth)
{
    int k = 0;
    for (const cJSON *c = o->child; c && !m->invalid; c = c->next) {
        if (++k > INGEST_MAX_FIELDS) {
            m->invalid = true;
            return;
        }
        size_t kl = strlen(c->string);
        if (kl == 0 || pl + kl > INGEST_MAX_NAME) {
            m->invalid = true;
            return;
        }
        char name[INGEST_MAX_NAME + 2];
        memcpy(name, prefix, pl);
        memcpy(name + pl, c->string, kl);
        size_t nl = pl + kl;
        if (depth == 0 && nl == 2 && memcmp(name, "ts", 2) == 0) {
            if (cJSON_IsNull(c)) {
                r->ts_kind = 0;
            } else if (cJSON_IsString(c)) {
                if (ingest_rfc3339((const uint8_t *)c->valuestring, strlen(c->valuestring), &r->ts))
                    m->invalid = true;
                r->ts_kind = 1;
            } else if (cJSON_IsNumber(c)) {
                double a = fabs(c->valuedouble);
                if (a > 9.23e12)
                    m->invalid = true;
                else if (a > 9.22e12)
                    m->uncertain = true;
                r->ts_kind = 2;
                r->tsd = c->valuedouble;
            } else {
                m->invalid = true;
            }
            continue;
        }
        if (cJSON_IsObject(c)) {
            if (depth + 1 >= INGEST_MAX_DEPTH) {
                m->invalid = true;
                return;
            }
            name[nl] = '.';
            flatten(m, r, c, name, nl + 1, depth + 1);
            continue;
        }
        if (cJSON_IsArray(c)) {
            m->invalid = true;
            return;
        }
        add_field(m, r, name, nl, c);
    }
}

static void add_record(model *m, const cJSON *o)
{
    if (!cJSON_IsObject(o)) {
        m->invalid = true;
        return;
    }
    if (m->n == m->cap) {
        m->cap = m->cap ? 2 * m->cap : 4;
        m->r = realloc(m->r, m->cap * sizeof *m->r);
        if (!m->r) abort();
    }
    mrec *r = &m->r[m->n++];
    memset(r, 0, sizeof *r);
    flatten(m, r, o, "", 0, 0);
}

static void model_free(model *m)
{
    for (size_t i = 0; i < m->n; i++) free(m->r[i].f);
    free(m->r);
}

/* p[0] >= 0x80 does not start a valid UTF-8 sequence within n bytes. */
static bool bad_utf8_at(const uint8_t *p, size_t n)
{
    {
        size_t i = 0;
        uint8_t c = p[0];
        size_t l = c >= 0xC2 && c <= 0xDF   ? 2
                   : c >= 0xE0 && c <= 0xEF ? 3
                   : c >= 0xF0 && c <= 0xF4 ? 4
                                            : 0;
        if (!l || i + l > n) return true;
        uint32_t cp = c & (l == 2 ? 0x1F : l == 3 ? 0x0F : 0x07);
        for (size_t k = 1; k < l; k++) {
            if ((p[i + k] & 0xC0) != 0x80) return true;
            cp = cp << 6 | (p[i + k] & 0x3F);
        }
        if ((l == 3 && cp < 0x800) || (l == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return true;
    }
    return false;
}

/* The number token at off is outside the RFC grammar, too long or overflows. */
static bool number_not_rfc(const uint8_t *p, size_t n, size_t off)
{
    size_t e = off;
    while (e < n && strchr("0123456789+-.eE", p[e]) && p[e]) e++;
    const uint8_t *t = p + off;
    size_t tl = e - off, i = 0;
    if (tl > 63) return true;
    char buf[64];
    memcpy(buf, t, tl);
    buf[tl] = 0;
    if (isinf(strtod(buf, NULL))) return true;
    if (i < tl && t[i] == '-') i++;
    if (i >= tl) return true;
    if (t[i] == '0') {
        i++;
        if (i < tl && t[i] >= '0' && t[i] <= '9') return true;
    } else if (t[i] >= '1' && t[i] <= '9') {
        while (i < tl && t[i] >= '0' && t[i] <= '9') i++;
    } else {
        return true;
    }
    if (i < tl && t[i] == '.') {
        i++;
        if (i >= tl || t[i] < '0' || t[i] > '9') return true;
        while (i < tl && t[i] >= '0' && t[i] <= '9') i++;
    }
    if (i < tl && (t[i] == 'e' || t[i] == 'E')) {
        i++;
        if (i < tl && (t[i] == '+' || t[i] == '-')) i++;
        if (i >= tl || t[i] < '0' || t[i] > '9') return true;
        while (i < tl && t[i] >= '0' && t[i] <= '9') i++;
    }
    /* a grammatical prefix followed by more number characters ("1.5.5"):
     * cJSON refuses those too, so this is not a leniency */
    return false;
}

static bool same_value(const tsdb_point *pt, const cJSON *v)
{
    if (cJSON_IsNumber(v))
        return pt->v.type == TSDB_FLOAT && memcmp(&pt->v.u.f, &v->valuedouble, sizeof(double)) == 0;
    if (cJSON_IsBool(v)) return pt->v.type == TSDB_BOOL && pt->v.u.b == (bool)cJSON_IsTrue(v);
    if (cJSON_IsString(v)) {
        if (pt->v.type != TSDB_STRING) return false;
        const char *nul = memchr(pt->v.u.s.p, 0, pt->v.u.s.n);
        size_t l = nul ? (size_t)(nul - pt->v.u.s.p) : pt->v.u.s.n;
        return strlen(v->valuestring) == l && memcmp(v->valuestring, pt->v.u.s.p, l) == 0;
    }
    return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 1 << 16) return 0;
    char *copy = malloc(size + 1);
    if (!copy) return 0;
    memcpy(copy, data, size);
    copy[size] = 0;

    tsdb_point pts[8];
    char buf[64];
    ingest_batch b;
    ingest_batch_init(&b, pts, 8, buf, sizeof buf);
    char err[INGEST_ERR_LEN];
    thz_err rc = ingest_json_parse(&b, "dev", 3, (const uint8_t *)copy, size, NOW, err);
    if (rc && (!err[0] || b.err_class == INGEST_E_NONE)) {
        fprintf(stderr, "refused without an error message or class\n");
        abort();
    }

    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(copy, size + 1, &end, 1);
    model m = {0};
    if (j) {
        if (cJSON_IsArray(j))
            for (const cJSON *c = j->child; c; c = c->next) add_record(&m, c);
        else
            add_record(&m, j);
    }

    if (rc == THZ_OK) {
        if (!j) {
            fprintf(stderr, "scanner accepts what cJSON refuses\n");
            abort();
        }
        if (m.invalid) {
            fprintf(stderr, "scanner accepts what the model says is invalid telemetry\n");
            abort();
        }
        if (!m.uncertain) {
            size_t at = 0;
            for (size_t r = 0; r < m.n; r++) {
                mrec *rec = &m.r[r];
                size_t live = 0;
                for (size_t i = 0; i < rec->n; i++) live += rec->f[i].v != NULL;
                if (at + live > b.n) {
                    fprintf(stderr, "record %zu: scanner has fewer points than cJSON\n", r);
                    abort();
                }
                for (size_t i = 0; i < rec->n; i++) {
                    if (!rec->f[i].v) continue;
                    bool found = false;
                    for (size_t k = at; k < at + live; k++) {
                        const tsdb_point *pt = &b.pts[k];
                        if (pt->metric_len == rec->f[i].nlen &&
                            memcmp(pt->metric, rec->f[i].name, pt->metric_len) == 0) {
                            if (!same_value(pt, rec->f[i].v)) {
                                fprintf(stderr, "field %.*s: value differs\n", (int)pt->metric_len,
                                        pt->metric);
                                abort();
                            }
                            found = true;
                        }
                    }
                    if (!found) {
                        fprintf(stderr, "field %.*s: missing from the scanner's points\n",
                                (int)rec->f[i].nlen, rec->f[i].name);
                        abort();
                    }
                }
                for (size_t k = at; k < at + live; k++) {
                    const tsdb_point *pt = &b.pts[k];
                    if (pt->device_len != 3 || memcmp(pt->device, "dev", 3) != 0) abort();
                    bool ok = rec->ts_kind == 0   ? pt->ts == NOW
                              : rec->ts_kind == 1 ? pt->ts == rec->ts
                                                  : fabs((double)pt->ts - rec->tsd * 1e6) <=
                                                        2 + fabs(rec->tsd * 1e6) * 1e-15;
                    if (!ok) {
                        fprintf(stderr, "record %zu: timestamp %lld differs\n", r,
                                (long long)pt->ts);
                        abort();
                    }
                }
                at += live;
            }
            if (at != b.n) {
                fprintf(stderr, "scanner has more points (%zu) than cJSON (%zu)\n", b.n, at);
                abort();
            }
        }
    } else if (j && rc == THZ_EINVAL) {
        bool ok;
        switch (b.err_class) {
        case INGEST_E_SEMANTIC: /* (a name cut by \u0000 in cJSON may look fine to the model) */
            ok = m.invalid || m.uncertain || memmem(copy, size, "\\u0000", 6) != NULL;
            break;
        case INGEST_E_NUMBER: ok = number_not_rfc((const uint8_t *)copy, size, b.err_off); break;
        case INGEST_E_STRICT: /* the error offset holds a control byte or bad UTF-8 */
            ok = b.err_off < size &&
                 ((uint8_t)copy[b.err_off] < 0x20 ||
                  ((uint8_t)copy[b.err_off] >= 0x80 &&
                   bad_utf8_at((const uint8_t *)copy + b.err_off, size - b.err_off)));
            break;
        case INGEST_E_NULNAME: ok = memmem(copy, size, "\\u0000", 6) != NULL; break;
        case INGEST_E_UHEX: {
            const char *q = copy + b.err_off;
            ok = b.err_off + 2 <= size && q[0] == '\\' && q[1] == 'u';
            for (int k = 0; ok && k < 4; k++)
                if (b.err_off + 2 + k >= size || !strchr("0123456789abcdefABCDEF", q[2 + k]) ||
                    !q[2 + k])
                    break;
                else if (k == 3)
                    ok = false; /* four hex digits: not this leniency */
            break;
        }
        default: ok = false; break;
        }
        if (!ok) {
            fprintf(stderr, "scanner refuses what cJSON accepts (class %d): %s\n", b.err_class,
                    err);
            abort();
        }
    }
    cJSON_Delete(j);
    model_free(&m);
    ingest_batch_free(&b);
    free(copy);
    return 0;
}
