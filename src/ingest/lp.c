/* lp.c - InfluxDB line protocol (1.x and 2.x) into tsdb points.
 *
 *   measurement[,tag=value...] field=value[,field=value...] [timestamp]
 *
 * Syntax, as InfluxDB documents it:
 *  - lines end with \n (a \r before it is dropped); blank lines and lines
 *    whose first non-blank character is '#' are skipped; leading blanks are
 *    skipped;
 *  - measurement: "\," "\ " and "\\" are escapes; '=' is literal;
 *  - tag keys, tag values and field keys: "\," "\=" "\ " and "\\" are
 *    escapes; a backslash before anything else is kept as it is;
 *  - field values: floats (1, -1.5, 1e10, 1.5E-3, .5), integers "12i",
 *    unsigned "12u", booleans t T true True TRUE f F false False FALSE,
 *    strings "..." with \" and \\ (other backslashes kept; newlines allowed);
 *  - timestamp: an integer (may be negative) in the request's precision;
 *    absent: now (the same for the whole request).
 *
 * Mapping to series (docs/INGEST.md):
 *  - device = the value of the tag "device", else of the tag "host", else the
 *    measurement name; the tag used for it is not a series tag;
 *  - metric = the field key when the measurement is "telemetry" (so line
 *    protocol and MQTT telemetry JSON write the same series), else
 *    "<measurement>.<field key>";
 *  - every other tag is a tag of the series, in the canonical form of
 *    tsdb_tags_canon;
 *  - types: float -> TSDB_FLOAT, i -> TSDB_INT, u -> TSDB_INT (values above
 *    2^63-1 are refused), booleans -> TSDB_BOOL, strings -> TSDB_STRING. A
 *    series' type is fixed by its first point (the engine refuses another),
 *    so 1 and 1i for the same field are different types, as in InfluxDB.
 *
 * All or nothing: the first bad line refuses the whole request, with its line
 * number and column (InfluxDB writes the good lines and reports the bad;
 * thinghz refuses the batch, answering 400 with the line, so a client never
 * has to work out which half of a batch landed). */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ingest/ingest.h"
#include "ingest/ingest_int.h"

#define LP_MAX_TAGS 256

typedef struct lpscan {
    const uint8_t *p;
    size_t n, i;
    size_t line;       /* 1-based */
    size_t line_start; /* offset of the line's first byte */
    ingest_batch *b;
    char *err;
} lpscan;

static thz_err lfail(lpscan *s, size_t off, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static thz_err lfail(lpscan *s, size_t off, const char *fmt, ...)
{
    int k = snprintf(s->err, INGEST_ERR_LEN, "line %zu, column %zu: ", s->line,
                     off - s->line_start + 1);
    va_list ap;
    va_start(ap, fmt);
    if (k > 0 && k < INGEST_ERR_LEN) vsnprintf(s->err + k, INGEST_ERR_LEN - (size_t)k, fmt, ap);
    va_end(ap);
    s->b->err_class = INGEST_E_SYNTAX;
    s->b->err_off = off;
    return THZ_EINVAL;
}

static thz_err lnomem(lpscan *s)
{
    snprintf(s->err, INGEST_ERR_LEN, "out of memory");
    s->b->err_class = INGEST_E_NOMEM;
    return THZ_ENOMEM;
}

/* A slice of the input, unescaped into the arena when it had escapes. */
typedef struct slice {
    const char *p;
    size_t n;
} slice;

enum { K_MEAS, K_KEY, K_STR };

/* Scans an element (measurement, tag key/value, field key) from s->i up to
 * one of the unescaped stop bytes; leaves s->i at the stop byte (or end).
 * Newlines always stop. */
static thz_err scan_elem(lpscan *s, int kind, const char *stops, slice *out)
{
    const uint8_t *p = s->p;
    size_t st = s->i, i = st;
    bool esc = false;
    uint64_t stop[4] = {0}; /* the stop bytes and '\n' as a bit set */
    stop['\n' >> 6] |= 1ull << ('\n' & 63);
    for (const char *c = stops; *c; c++) stop[(uint8_t)*c >> 6] |= 1ull << ((uint8_t)*c & 63);
    while (i < s->n && !(stop[p[i] >> 6] >> (p[i] & 63) & 1)) {
        if (p[i] == '\\' && i + 1 < s->n &&
            (p[i + 1] == ',' || p[i + 1] == ' ' || p[i + 1] == '\\' ||
             (kind == K_KEY && p[i + 1] == '='))) {
            esc = true;
            i += 2;
            continue;
        }
        i++;
    }
    s->i = i;
    if (!esc) {
        out->p = (const char *)p + st;
        out->n = i - st;
        return THZ_OK;
    }
    char *d = ingest_batch_alloc(s->b, i - st);
    if (!d) return lnomem(s);
    size_t o = 0;
    for (size_t k = st; k < i; k++) {
        if (p[k] == '\\' && k + 1 < i &&
            (p[k + 1] == ',' || p[k + 1] == ' ' || p[k + 1] == '\\' ||
             (kind == K_KEY && p[k + 1] == '=')))
            k++;
        d[o++] = (char)p[k];
    }
    out->p = d;
    out->n = o;
    return THZ_OK;
}

static bool blank(uint8_t c)
{
    return c == ' ' || c == '\t';
}

/* A field value at s->i into *v. */
static thz_err scan_value(lpscan *s, tsdb_value *v)
{
    const uint8_t *p = s->p;
    size_t st = s->i, n = s->n;
    if (st >= n || p[st] == '\n' || p[st] == ',' || blank(p[st]) || p[st] == '\r')
        return lfail(s, st, "missing field value");
    if (p[st] == '"') {
        size_t i = st + 1;
        bool esc = false;
        while (i < n && p[i] != '"') {
            if (p[i] == '\\' && i + 1 < n && (p[i + 1] == '"' || p[i + 1] == '\\')) {
                esc = true;
                i += 2;
            } else {
                i++;
            }
        }
        if (i >= n) return lfail(s, st, "unterminated string field value");
        size_t len = i - st - 1;
        if (len > UINT32_MAX) return lfail(s, st, "string too long");
        v->type = TSDB_STRING;
        if (!esc) {
            v->u.s.p = (const char *)p + st + 1;
            v->u.s.n = (uint32_t)len;
        } else {
            char *d = ingest_batch_alloc(s->b, len);
            if (!d) return lnomem(s);
            size_t o = 0;
            for (size_t k = st + 1; k < i; k++) {
                if (p[k] == '\\' && k + 1 < i && (p[k + 1] == '"' || p[k + 1] == '\\')) k++;
                d[o++] = (char)p[k];
            }
            v->u.s.p = d;
            v->u.s.n = (uint32_t)o;
        }
        /* the newlines a string holds count as lines for later positions */
        for (size_t k = st + 1; k < i; k++)
            if (p[k] == '\n') s->line++, s->line_start = k + 1;
        s->i = i + 1;
        return THZ_OK;
    }
    size_t i = st;
    while (i < n && p[i] != ',' && p[i] != '\n' && !blank(p[i]) && p[i] != '\r') i++;
    const uint8_t *t = p + st;
    size_t tl = i - st;
    s->i = i;
#define IS(lit) (tl == sizeof(lit) - 1 && memcmp(t, lit, tl) == 0)
    if (IS("t") || IS("T") || IS("true") || IS("True") || IS("TRUE")) {
        v->type = TSDB_BOOL;
        v->u.b = true;
        return THZ_OK;
    }
    if (IS("f") || IS("F") || IS("false") || IS("False") || IS("FALSE")) {
        v->type = TSDB_BOOL;
        v->u.b = false;
        return THZ_OK;
    }
#undef IS
    char buf[72];
    if ((t[tl - 1] == 'i' || t[tl - 1] == 'u') && (t[0] == '-' || (t[0] >= '0' && t[0] <= '9'))) {
        bool uns = t[tl - 1] == 'u';
        size_t dl = tl - 1, k = 0;
        bool neg = dl > 0 && t[0] == '-';
        if (neg) {
            if (uns) return lfail(s, st, "an unsigned integer cannot be negative");
            k = 1;
        }
        if (k == dl) return lfail(s, st, "invalid %s field value", uns ? "unsigned" : "integer");
        uint64_t u = 0;
        for (; k < dl; k++) {
            if (t[k] < '0' || t[k] > '9')
                return lfail(s, st, "invalid %s field value", uns ? "unsigned" : "integer");
            if (u > (UINT64_MAX - (uint64_t)(t[k] - '0')) / 10)
                return lfail(s, st, "integer out of range");
            u = u * 10 + (uint64_t)(t[k] - '0');
        }
        if (neg ? u > (uint64_t)INT64_MAX + 1 : u > (uint64_t)INT64_MAX)
            return lfail(s, st,
                         uns ? "unsigned value above 9223372036854775807 (stored as int64)"
                             : "integer out of range");
        v->type = TSDB_INT;
        v->u.i = neg ? (int64_t)(0 - u) : (int64_t)u;
        return THZ_OK;
    }
    /* float: -?(digits[.digits]|.digits)([eE][+-]?digits)? */
    size_t k = 0;
    if (t[k] == '-' || t[k] == '+') k++;
    size_t d0 = k;
    while (k < tl && t[k] >= '0' && t[k] <= '9') k++;
    size_t nd = k - d0;
    if (k < tl && t[k] == '.') {
        k++;
        size_t f0 = k;
        while (k < tl && t[k] >= '0' && t[k] <= '9') k++;
        nd += k - f0;
    }
    if (nd && k < tl && (t[k] == 'e' || t[k] == 'E')) {
        k++;
        if (k < tl && (t[k] == '+' || t[k] == '-')) k++;
        size_t e0 = k;
        while (k < tl && t[k] >= '0' && t[k] <= '9') k++;
        if (k == e0) nd = 0;
    }
    if (!nd || k != tl) {
        if (t[0] == '"' || t[0] == '\'') return lfail(s, st, "invalid field value");
        return lfail(s, st,
                     "invalid field value '%.*s' (a number, 12i, 12u, true/false or \"string\")",
                     (int)(tl > 40 ? 40 : tl), (const char *)t);
    }
    /* Clinger's fast path: at most 15 digits and no exponent make an integer
     * mantissa and a power of ten both exact as doubles, so one division is
     * correctly rounded: the same double strtod gives. */
    if (nd <= 15 && !memchr(t, 'e', tl) && !memchr(t, 'E', tl)) {
        static const double p10[] = {1e0, 1e1, 1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                     1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15};
        uint64_t m = 0;
        int frac = -1;
        for (size_t j = d0; j < tl; j++) {
            if (t[j] == '.')
                frac = 0;
            else {
                m = m * 10 + (uint64_t)(t[j] - '0');
                if (frac >= 0) frac++;
            }
        }
        double d = (double)m;
        if (frac > 0) d /= p10[frac];
        v->type = TSDB_FLOAT;
        v->u.f = t[0] == '-' ? -d : d;
        return THZ_OK;
    }
    if (tl >= sizeof buf) return lfail(s, st, "number too long");
    memcpy(buf, t, tl);
    buf[tl] = 0;
    double d = strtod(buf, NULL);
    if (!isfinite(d)) return lfail(s, st, "float out of range");
    v->type = TSDB_FLOAT;
    v->u.f = d;
    return THZ_OK;
}

typedef struct lpfield {
    slice key;
    tsdb_value v;
} lpfield;

/* The previous line's tag section, device and canonical tags: consecutive
 * lines of one series (the usual batch) canonicalize once. */
typedef struct tagcache {
    const uint8_t *raw;
    size_t rawlen;
    slice meas, device, tags;
} tagcache;

static thz_err scan_line(lpscan *s, int64_t mult, int64_t now_ns, tagcache *tc)
{
    const uint8_t *p = s->p;
    size_t n = s->n;
    size_t mst = s->i;
    slice meas;
    thz_err rc = scan_elem(s, K_MEAS, ", \t\r", &meas);
    if (rc) return rc;
    if (!meas.n) return lfail(s, mst, "missing measurement name");
    /* tags */
    size_t tst = s->i;
    slice device = meas, tags = {NULL, 0};
    if (s->i < n && p[s->i] == ',') {
        /* the tag section's bytes, for the cache */
        size_t e = s->i;
        while (e < n && p[e] != '\n' && !blank(p[e])) e += (p[e] == '\\' && e + 1 < n) ? 2 : 1;
        if (tc->raw && tc->rawlen == e - mst && memcmp(tc->raw, p + mst, e - mst) == 0) {
            meas = tc->meas;
            device = tc->device;
            tags = tc->tags;
            s->i = e;
        } else {
            const char *keys[LP_MAX_TAGS], *vals[LP_MAX_TAGS];
            size_t kl[LP_MAX_TAGS], vl[LP_MAX_TAGS];
            size_t nt = 0, total = 0;
            int dev = -1, host = -1;
            while (s->i < n && p[s->i] == ',') {
                s->i++;
                size_t kst = s->i;
                slice k, v;
                if ((rc = scan_elem(s, K_KEY, ",= \t\r", &k))) return rc;
                if (!k.n) return lfail(s, kst, "missing tag key");
                if (s->i >= n || p[s->i] != '=') return lfail(s, s->i, "missing '=' after tag key");
                s->i++;
                size_t vst = s->i;
                if ((rc = scan_elem(s, K_KEY, ",= \t\r", &v))) return rc;
                if (!v.n) return lfail(s, vst, "missing tag value");
                if (s->i < n && p[s->i] == '=')
                    return lfail(s, s->i, "unescaped '=' in a tag value");
                if (nt == LP_MAX_TAGS) return lfail(s, kst, "more than %d tags", LP_MAX_TAGS);
                for (size_t j = 0; j < nt; j++)
                    if (kl[j] == k.n && memcmp(keys[j], k.p, k.n) == 0)
                        return lfail(s, kst, "duplicate tag key '%.*s'", (int)(k.n > 64 ? 64 : k.n),
                                     k.p);
                if (k.n == 6 && memcmp(k.p, "device", 6) == 0)
                    dev = (int)nt;
                else if (k.n == 4 && memcmp(k.p, "host", 4) == 0)
                    host = (int)nt;
                keys[nt] = k.p, kl[nt] = k.n, vals[nt] = v.p, vl[nt] = v.n;
                total += 2 * (k.n + v.n) + 2;
                nt++;
            }
            int used = dev >= 0 ? dev : host;
            if (used >= 0) {
                device.p = vals[used];
                device.n = vl[used];
                total -= 2 * (kl[used] + vl[used]) + 2;
                nt--;
                for (size_t j = (size_t)used; j < nt; j++)
                    keys[j] = keys[j + 1], kl[j] = kl[j + 1], vals[j] = vals[j + 1],
                    vl[j] = vl[j + 1];
            }
            if (nt) {
                char *out = ingest_batch_alloc(s->b, total);
                if (!out) return lnomem(s);
                long l = tsdb_tags_canon(keys, kl, vals, vl, nt, out, total);
                if (l < 0)
                    return lfail(s, tst, "bad tag set (keys 1..128 bytes, values up to 256)");
                /* give back the unused tail when it is the arena's last allocation */
                if (out + total == s->b->buf + s->b->used) s->b->used -= total - (size_t)l;
                tags.p = out;
                tags.n = (size_t)l;
            }
            tc->raw = p + mst;
            tc->rawlen = s->i - mst;
            tc->meas = meas;
            tc->device = device;
            tc->tags = tags;
        }
    }
    if (device.n > 128) return lfail(s, tst, "device name longer than 128 bytes");
    if (s->i >= n || !blank(p[s->i])) {
        if (s->i < n && p[s->i] == '\r') return lfail(s, s->i, "missing fields");
        return lfail(s, s->i,
                     s->i < n && p[s->i] != '\n' ? "unexpected character" : "missing fields");
    }
    while (s->i < n && blank(p[s->i])) s->i++;
    /* fields */
    size_t first = s->b->n;
    bool telemetry = meas.n == 9 && memcmp(meas.p, "telemetry", 9) == 0;
    for (;;) {
        size_t kst = s->i;
        slice k;
        if ((rc = scan_elem(s, K_KEY, ",= \t\r", &k))) return rc;
        if (!k.n)
            return lfail(s, kst,
                         s->b->n == first && (s->i >= n || p[s->i] == '\n') ? "missing fields"
                                                                            : "missing field key");
        if (s->i >= n || p[s->i] != '=') return lfail(s, s->i, "missing '=' after field key");
        s->i++;
        tsdb_value v;
        if ((rc = scan_value(s, &v))) return rc;
        tsdb_point *pt = ingest_batch_push(s->b);
        if (!pt) return lnomem(s);
        if (s->b->n > INGEST_LP_MAX_POINTS)
            return lfail(s, kst, "more than %d points in one request", INGEST_LP_MAX_POINTS);
        pt->device = device.p;
        pt->device_len = device.n;
        if (telemetry) {
            pt->metric = k.p;
            pt->metric_len = k.n;
        } else {
            size_t ml = meas.n + 1 + k.n;
            char *m = ingest_batch_alloc(s->b, ml);
            if (!m) return lnomem(s);
            memcpy(m, meas.p, meas.n);
            m[meas.n] = '.';
            memcpy(m + meas.n + 1, k.p, k.n);
            pt->metric = m;
            pt->metric_len = ml;
        }
        if (pt->metric_len > INGEST_MAX_NAME)
            return lfail(s, kst, "metric name longer than %d bytes", INGEST_MAX_NAME);
        pt->tags = tags.p;
        pt->tags_len = tags.n;
        pt->v = v;
        if (s->i < n && p[s->i] == ',') {
            s->i++;
            continue;
        }
        break;
    }
    /* timestamp */
    int64_t ts = now_ns;
    while (s->i < n && blank(p[s->i])) s->i++;
    if (s->i < n && p[s->i] != '\n' && p[s->i] != '\r') {
        size_t st = s->i, i = st;
        bool neg = false;
        if (p[i] == '-') neg = true, i++;
        uint64_t u = 0;
        size_t d0 = i;
        while (i < n && p[i] >= '0' && p[i] <= '9') {
            if (u > UINT64_MAX / 10 - 1) return lfail(s, st, "timestamp out of range");
            u = u * 10 + (uint64_t)(p[i] - '0');
            i++;
        }
        if (i == d0 || (i < n && p[i] != '\n' && p[i] != '\r' && !blank(p[i])))
            return lfail(s, st, "invalid timestamp (an integer)");
        if (u > (uint64_t)INT64_MAX) return lfail(s, st, "timestamp out of range");
        int64_t t = neg ? -(int64_t)u : (int64_t)u;
        if (__builtin_mul_overflow(t, mult, &ts)) return lfail(s, st, "timestamp out of range");
        s->i = i;
        while (s->i < n && blank(p[s->i])) s->i++;
    }
    if (s->i < n && p[s->i] == '\r') s->i++;
    if (s->i < n && p[s->i] != '\n') return lfail(s, s->i, "unexpected text after the timestamp");
    for (size_t j = first; j < s->b->n; j++) s->b->pts[j].ts = ts;
    return THZ_OK;
}

thz_err ingest_lp_parse(ingest_batch *b, const uint8_t *p, size_t n, int64_t mult, int64_t now_ns,
                        char err[INGEST_ERR_LEN])
{
    lpscan s = {.p = p, .n = n, .line = 1, .b = b, .err = err};
    tagcache tc = {0};
    b->err_class = 0;
    if (mult <= 0) mult = 1;
    while (s.i < n) {
        while (s.i < n && (blank(p[s.i]) || p[s.i] == '\r')) s.i++;
        if (s.i < n && p[s.i] == '#') {
            while (s.i < n && p[s.i] != '\n') s.i++;
        } else if (s.i < n && p[s.i] != '\n') {
            thz_err rc = scan_line(&s, mult, now_ns, &tc);
            if (rc) return rc;
        }
        if (s.i < n) { /* at '\n' */
            s.i++;
            s.line++;
            s.line_start = s.i;
        }
    }
    return THZ_OK;
}

int64_t ingest_precision(const char *name, bool v2)
{
    if (!name || !*name || !strcmp(name, "ns")) return 1;
    if (!strcmp(name, "us")) return 1000;
    if (!strcmp(name, "ms")) return 1000000;
    if (!strcmp(name, "s")) return 1000000000;
    if (v2) return 0;
    if (!strcmp(name, "n")) return 1;
    if (!strcmp(name, "u")) return 1000;
    if (!strcmp(name, "m")) return 60LL * 1000000000;
    if (!strcmp(name, "h")) return 3600LL * 1000000000;
    return 0;
}
