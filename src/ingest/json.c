/* json.c - the telemetry JSON scanner: a strict RFC 8259 parser that makes
 * tsdb points directly (no tree, no allocation for ordinary payloads).
 *
 * Strictness against cJSON (1.7.15), which the differential fuzz target
 * checks: every input both accept gives the same field set and values; the
 * inputs only cJSON accepts are exactly these, each with its own error class:
 *  - INGEST_E_NUMBER: numbers outside the RFC grammar that strtod reads
 *    ("01", "1.", "1.e5", "-01", "-.5"), numbers that overflow to +-inf, and
 *    numbers longer than 63 bytes (we parse with strtod on a bounded copy;
 *    Debian's patched cJSON reads any length);
 *  - INGEST_E_STRICT: raw control characters (in strings or as "whitespace":
 *    cJSON skips every byte <= 0x20) and invalid UTF-8 in strings;
 *  - INGEST_E_NULNAME: a field name with \u0000 (cJSON cuts it there);
 *  - INGEST_E_UHEX: "\u" without four hex digits (cJSON's parse_hex4 reads
 *    a bad digit as the code point 0 and goes on).
 * A UTF-8 BOM at the start is skipped by both. Duplicate names: the last one
 * wins (the fuzz target's cJSON model does the same; cJSON itself keeps
 * both, and cJSON_GetObjectItem would return the first). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ingest/ingest.h"
#include "ingest/ingest_int.h"

typedef struct jscan {
    const uint8_t *p;
    size_t n, i;
    ingest_batch *b;
    const char *device;
    size_t dlen;
    char *err;
    char path[INGEST_MAX_NAME + 8]; /* the flattened name being built */
    size_t npoints;                 /* points of the payload so far */
} jscan;

static thz_err fail(jscan *s, size_t off, int cls, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static thz_err fail(jscan *s, size_t off, int cls, const char *fmt, ...)
{
    int k = snprintf(s->err, INGEST_ERR_LEN, "byte %zu: ", off);
    va_list ap;
    va_start(ap, fmt);
    if (k > 0 && k < INGEST_ERR_LEN) vsnprintf(s->err + k, INGEST_ERR_LEN - (size_t)k, fmt, ap);
    va_end(ap);
    s->b->err_class = cls;
    s->b->err_off = off;
    return cls == INGEST_E_NOMEM ? THZ_ENOMEM : THZ_EINVAL;
}

static inline void skip_ws(jscan *s)
{
    while (s->i < s->n) {
        uint8_t c = s->p[s->i];
        if (c == ' ' || c == '\n' || c == '\r' || c == '\t')
            s->i++;
        else
            break;
    }
}

/* An unexpected byte at s->i: a raw control byte is INGEST_E_STRICT (cJSON
 * takes it as whitespace), anything else a syntax error. */
static thz_err unexpected(jscan *s, const char *what)
{
    if (s->i >= s->n)
        return fail(s, s->i, INGEST_E_SYNTAX, "unexpected end of input, expected %s", what);
    uint8_t c = s->p[s->i];
    if (c < 0x20)
        return fail(s, s->i, INGEST_E_STRICT, "control character 0x%02x, expected %s", c, what);
    if (c >= 0x20 && c < 0x7f)
        return fail(s, s->i, INGEST_E_SYNTAX, "unexpected '%c', expected %s", c, what);
    return fail(s, s->i, INGEST_E_SYNTAX, "unexpected byte 0x%02x, expected %s", c, what);
}

static int hexval(uint8_t c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int hex4(const uint8_t *p)
{
    int v = 0;
    for (int k = 0; k < 4; k++) {
        int h = hexval(p[k]);
        if (h < 0) return -1;
        v = v << 4 | h;
    }
    return v;
}

/* Length of the valid UTF-8 sequence at p[0..n) (p[0] >= 0x80), or 0. */
static size_t utf8_seq(const uint8_t *p, size_t n)
{
    uint8_t c = p[0];
    size_t len;
    uint32_t min, cp;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2, min = 0x80, cp = c & 0x1F;
    else if (c >= 0xE0 && c <= 0xEF)
        len = 3, min = 0x800, cp = c & 0x0F;
    else if (c >= 0xF0 && c <= 0xF4)
        len = 4, min = 0x10000, cp = c & 0x07;
    else
        return 0;
    if (n < len) return 0;
    for (size_t k = 1; k < len; k++) {
        if ((p[k] & 0xC0) != 0x80) return 0;
        cp = cp << 6 | (p[k] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return len;
}

/* Scans the string whose opening quote is at s->i: validates it (escapes,
 * UTF-8, no control bytes) and leaves s->i after the closing quote. *raw and
 * *rawlen are the bytes between the quotes; *plain says there is no escape
 * (the raw bytes are the value). */
static thz_err scan_string(jscan *s, const uint8_t **raw, size_t *rawlen, bool *plain)
{
    size_t start = ++s->i;
    const uint8_t *p = s->p;
    size_t n = s->n, i = start;
    bool esc = false;
    for (;;) {
        /* the fast loop: ordinary ASCII */
        while (i < n && p[i] >= 0x20 && p[i] != '"' && p[i] != '\\' && p[i] < 0x80) i++;
        if (i >= n) return fail(s, start - 1, INGEST_E_SYNTAX, "unterminated string");
        uint8_t c = p[i];
        if (c == '"') break;
        if (c < 0x20)
            return fail(s, i, INGEST_E_STRICT,
                        "raw control character 0x%02x in a string (escape it)", c);
        if (c >= 0x80) {
            size_t l = utf8_seq(p + i, n - i);
            if (!l) return fail(s, i, INGEST_E_STRICT, "invalid UTF-8 in a string");
            i += l;
            continue;
        }
        /* backslash */
        esc = true;
        if (i + 1 >= n) return fail(s, start - 1, INGEST_E_SYNTAX, "unterminated string");
        uint8_t e = p[i + 1];
        switch (e) {
        case '"':
        case '\\':
        case '/':
        case 'b':
        case 'f':
        case 'n':
        case 'r':
        case 't': i += 2; break;
        case 'u': {
            int u = i + 6 <= n ? hex4(p + i + 2) : -1;
            if (u < 0) return fail(s, i, INGEST_E_UHEX, "bad \\u escape (four hex digits)");
            if (u >= 0xDC00 && u <= 0xDFFF)
                return fail(s, i, INGEST_E_SYNTAX, "lone low surrogate \\u%04x", u);
            if (u >= 0xD800 && u <= 0xDBFF) {
                int lo = i + 12 <= n && p[i + 6] == '\\' && p[i + 7] == 'u' ? hex4(p + i + 8) : -1;
                if (lo < 0xDC00 || lo > 0xDFFF)
                    return fail(s, i, INGEST_E_SYNTAX,
                                "high surrogate \\u%04x not followed by a low surrogate", u);
                i += 12;
            } else {
                i += 6;
            }
            break;
        }
        default: return fail(s, i, INGEST_E_SYNTAX, "bad escape sequence in a string");
        }
    }
    *raw = p + start;
    *rawlen = i - start;
    *plain = !esc;
    s->i = i + 1;
    return THZ_OK;
}

/* Decodes a validated raw string into dst (at most cap bytes). Returns the
 * decoded length, or cap + 1 when it does not fit. Decoding never grows. */
static size_t decode_string(const uint8_t *r, size_t n, char *dst, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        uint8_t c = r[i];
        if (c != '\\') {
            if (o >= cap) return cap + 1;
            dst[o++] = (char)c;
            i++;
            continue;
        }
        uint8_t e = r[i + 1];
        char ch;
        switch (e) {
        case 'b': ch = '\b'; break;
        case 'f': ch = '\f'; break;
        case 'n': ch = '\n'; break;
        case 'r': ch = '\r'; break;
        case 't': ch = '\t'; break;
        case 'u': ch = 0; break;
        default: ch = (char)e; break;
        }
        if (e != 'u') {
            if (o >= cap) return cap + 1;
            dst[o++] = ch;
            i += 2;
            continue;
        }
        uint32_t cp = (uint32_t)hex4(r + i + 2);
        i += 6;
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            uint32_t lo = (uint32_t)hex4(r + i + 2);
            i += 6;
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        }
        uint8_t u[4];
        size_t l;
        if (cp < 0x80)
            u[0] = (uint8_t)cp, l = 1;
        else if (cp < 0x800)
            u[0] = 0xC0 | (cp >> 6), u[1] = 0x80 | (cp & 0x3F), l = 2;
        else if (cp < 0x10000)
            u[0] = 0xE0 | (cp >> 12), u[1] = 0x80 | ((cp >> 6) & 0x3F), u[2] = 0x80 | (cp & 0x3F),
            l = 3;
        else
            u[0] = 0xF0 | (cp >> 18), u[1] = 0x80 | ((cp >> 12) & 0x3F),
            u[2] = 0x80 | ((cp >> 6) & 0x3F), u[3] = 0x80 | (cp & 0x3F), l = 4;
        if (o + l > cap) return cap + 1;
        memcpy(dst + o, u, l);
        o += l;
    }
    return o;
}

static const double pow10_tab[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                     1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                     1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* A number at s->i (RFC 8259 grammar). *v gets strtod's value exactly (a
 * fast path takes the cases where one IEEE operation is exact: at most 15
 * significant digits: Clinger). tok and toklen get its text. */
static thz_err scan_number(jscan *s, double *v, const uint8_t **tok, size_t *toklen)
{
    const uint8_t *p = s->p;
    size_t n = s->n, i = s->i, st = i;
    bool neg = false;
    uint64_t m = 0;
    int nd = 0, fracd = 0;
    bool simple = true;
    if (p[i] == '-') neg = true, i++;
    if (i >= n || p[i] < '0' || p[i] > '9')
        return fail(s, st, INGEST_E_NUMBER, "a number needs a digit after '-'");
    if (p[i] == '0') {
        i++;
        if (i < n && p[i] >= '0' && p[i] <= '9')
            return fail(s, st, INGEST_E_NUMBER, "leading zero in a number");
    } else {
        while (i < n && p[i] >= '0' && p[i] <= '9') {
            if (nd < 19) m = m * 10 + (p[i] - '0');
            nd++, i++;
        }
    }
    if (i < n && p[i] == '.') {
        i++;
        if (i >= n || p[i] < '0' || p[i] > '9')
            return fail(s, st, INGEST_E_NUMBER, "a digit must follow the decimal point");
        while (i < n && p[i] >= '0' && p[i] <= '9') {
            if (nd < 19) m = m * 10 + (p[i] - '0');
            if (m || nd) nd++; /* leading zeros of 0.000x are not significant */
            fracd++, i++;
        }
    }
    if (i < n && (p[i] == 'e' || p[i] == 'E')) {
        simple = false;
        i++;
        if (i < n && (p[i] == '+' || p[i] == '-')) i++;
        if (i >= n || p[i] < '0' || p[i] > '9')
            return fail(s, st, INGEST_E_NUMBER, "a digit must follow the exponent");
        while (i < n && p[i] >= '0' && p[i] <= '9') i++;
    }
    size_t len = i - st;
    if (len > 63) return fail(s, st, INGEST_E_NUMBER, "number longer than 63 characters");
    /* "1.e5" and "1." are caught above; a following '.', 'e' after an
     * exponent and the like are syntax errors of the caller. */
    *tok = p + st;
    *toklen = len;
    s->i = i;
    if (simple && nd <= 15 && fracd <= 22) {
        double d = (double)m;
        if (fracd) d /= pow10_tab[fracd];
        *v = neg ? -d : d;
        return THZ_OK;
    }
    char buf[64];
    memcpy(buf, p + st, len);
    buf[len] = 0;
    double d = strtod(buf, NULL);
    if (isinf(d)) return fail(s, st, INGEST_E_NUMBER, "number out of range");
    *v = d;
    return THZ_OK;
}

/* ---- timestamps ---- */

/* Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm). */
static int64_t days_from_civil(int64_t y, unsigned mo, unsigned d)
{
    y -= mo <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (mo + (mo > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static int dig(const uint8_t *p, int k)
{
    int v = 0;
    for (int i = 0; i < k; i++) {
        if (p[i] < '0' || p[i] > '9') return -1;
        v = v * 10 + (p[i] - '0');
    }
    return v;
}

/* RFC 3339 date-time: YYYY-MM-DDTHH:MM:SS[.frac](Z|+hh:mm|-hh:mm); 't', 'z'
 * and a space for 'T' are allowed (RFC 3339 section 5.6 note); up to nine
 * fractional digits; second 60 (a leap second) counts as the next second. */
const char *ingest_rfc3339(const uint8_t *p, size_t n, int64_t *out)
{
    if (n < 19) return "too short for an RFC 3339 time";
    int y = dig(p, 4), mo = dig(p + 5, 2), d = dig(p + 8, 2), h = dig(p + 11, 2),
        mi = dig(p + 14, 2), se = dig(p + 17, 2);
    if (y < 0 || p[4] != '-' || mo < 0 || p[7] != '-' || d < 0 ||
        (p[10] != 'T' && p[10] != 't' && p[10] != ' ') || h < 0 || p[13] != ':' || mi < 0 ||
        p[16] != ':' || se < 0)
        return "not an RFC 3339 time (YYYY-MM-DDTHH:MM:SS[.frac]Z or +hh:mm)";
    static const int mdays[12] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] || (mo == 2 && d == 29 && !leap))
        return "no such date";
    if (h > 23 || mi > 59 || se > 60) return "time of day out of range";
    size_t i = 19;
    int64_t frac = 0;
    if (i < n && p[i] == '.') {
        i++;
        int k = 0;
        while (i < n && p[i] >= '0' && p[i] <= '9') {
            if (++k > 9) return "more than 9 fractional digits (nanoseconds)";
            frac = frac * 10 + (p[i] - '0');
            i++;
        }
        if (!k) return "a digit must follow the '.' of the seconds";
        for (; k < 9; k++) frac *= 10;
    }
    int off = 0;
    if (i < n && (p[i] == 'Z' || p[i] == 'z')) {
        i++;
    } else if (i + 6 == n && (p[i] == '+' || p[i] == '-')) {
        int oh = dig(p + i + 1, 2), om = dig(p + i + 4, 2);
        if (oh < 0 || p[i + 3] != ':' || om < 0 || oh > 23 || om > 59)
            return "bad UTC offset (+hh:mm)";
        off = (oh * 60 + om) * 60 * (p[i] == '-' ? -1 : 1);
        i += 6;
    } else {
        return "an RFC 3339 time needs Z or an offset +hh:mm";
    }
    if (i != n) return "trailing characters after the RFC 3339 time";
    int64_t secs =
        days_from_civil(y, (unsigned)mo, (unsigned)d) * 86400 + h * 3600 + mi * 60 + se - off;
    /* int64 nanoseconds reach 1677-09-21..2262-04-11 */
    if (secs < -9223372036LL || secs > 9223372035LL) return "time out of range (1678..2262)";
    *out = secs * 1000000000 + frac;
    return NULL;
}

/* Epoch milliseconds as JSON number text -> ns, exactly from the decimal
 * text (digits past the nanosecond are dropped). */
static const char *ms_to_ns(const uint8_t *t, size_t n, int64_t *out)
{
    size_t i = 0;
    bool neg = false;
    if (t[i] == '-') neg = true, i++;
    char digs[80];
    int nd = 0, exp10 = 6; /* ms -> ns */
    for (; i < n && t[i] >= '0' && t[i] <= '9'; i++) digs[nd++] = (char)t[i];
    if (i < n && t[i] == '.')
        for (i++; i < n && t[i] >= '0' && t[i] <= '9'; i++) digs[nd++] = (char)t[i], exp10--;
    if (i < n && (t[i] == 'e' || t[i] == 'E')) {
        i++;
        bool en = false;
        if (t[i] == '+' || t[i] == '-') en = t[i] == '-', i++;
        long e = 0;
        for (; i < n; i++) {
            if (e < 100000) e = e * 10 + (t[i] - '0');
        }
        exp10 += en ? -(int)e : (int)e;
    }
    int keep = exp10 < 0 ? nd + exp10 : nd;
    uint64_t v = 0;
    for (int k = 0; k < keep && k < nd; k++) {
        if (v > (UINT64_MAX - 9) / 10) return "timestamp out of range";
        v = v * 10 + (uint64_t)(digs[k] - '0');
    }
    for (int k = 0; k < exp10 && v; k++) {
        if (v > UINT64_MAX / 10) return "timestamp out of range";
        v *= 10;
    }
    if (v > (uint64_t)INT64_MAX) return "timestamp out of range";
    *out = neg ? -(int64_t)v : (int64_t)v;
    return NULL;
}

/* ---- objects ---- */

/* Marks dead every point of [s, e) whose metric occurs again later (last
 * wins) and drops the dead and the nulls (type 0). */
static void dedup(ingest_batch *b, size_t s, size_t e)
{
    tsdb_point *pt = b->pts;
    size_t k = e - s;
    if (k > 1 && k <= 16) {
        for (size_t i = s; i < e; i++)
            for (size_t j = i + 1; j < e; j++)
                if (pt[i].metric_len == pt[j].metric_len &&
                    memcmp(pt[i].metric, pt[j].metric, pt[i].metric_len) == 0) {
                    pt[i].v.type = 0;
                    break;
                }
    } else if (k > 16) {
        size_t sz = 32;
        while (sz < 2 * k) sz *= 2;
        uint32_t stackt[2048], *t = sz <= 2048 ? stackt : malloc(sz * sizeof *t);
        if (t) {
            memset(t, 0xff, sz * sizeof *t);
            for (size_t i = e; i-- > s;) {
                uint64_t h = 1469598103934665603ULL;
                for (size_t c = 0; c < pt[i].metric_len; c++)
                    h = (h ^ (uint8_t)pt[i].metric[c]) * 1099511628211ULL;
                size_t slot = h & (sz - 1);
                for (;;) {
                    if (t[slot] == UINT32_MAX) {
                        t[slot] = (uint32_t)i;
                        break;
                    }
                    const tsdb_point *o = &pt[t[slot]];
                    if (o->metric_len == pt[i].metric_len &&
                        memcmp(o->metric, pt[i].metric, o->metric_len) == 0) {
                        pt[i].v.type = 0;
                        break;
                    }
                    slot = (slot + 1) & (sz - 1);
                }
            }
            if (t != stackt) free(t);
        } else { /* no memory for the table: the quadratic way */
            for (size_t i = s; i < e; i++)
                for (size_t j = i + 1; j < e; j++)
                    if (pt[i].metric_len == pt[j].metric_len &&
                        memcmp(pt[i].metric, pt[j].metric, pt[i].metric_len) == 0) {
                        pt[i].v.type = 0;
                        break;
                    }
        }
    }
    size_t o = s;
    for (size_t i = s; i < e; i++)
        if (pt[i].v.type) pt[o++] = pt[i];
    b->n = o;
}

typedef struct record {
    bool has_ts;
    int64_t ts;
} record;

static thz_err scan_object(jscan *s, int depth, size_t plen, record *rec);

/* A member's value at s->i, the member's flattened name in s->path[0..len). */
static thz_err scan_member_value(jscan *s, int depth, size_t len, const uint8_t *key, size_t klen,
                                 bool keyplain, size_t keyoff, record *rec)
{
    uint8_t c = s->p[s->i];
    size_t voff = s->i;
    /* a plain top-level key is not copied into path unless it prefixes */
    const char *name = depth == 0 && keyplain ? (const char *)key : s->path;
    if (depth == 0 && rec && len == 2 && name[0] == 't' && name[1] == 's') {
        /* the timestamp */
        if (c == '"') {
            const uint8_t *raw;
            size_t rl;
            bool plain;
            thz_err rc = scan_string(s, &raw, &rl, &plain);
            if (rc) return rc;
            const char *e;
            if (plain) {
                e = ingest_rfc3339(raw, rl, &rec->ts);
            } else { /* escapes: decoded first (cJSON-equal semantics) */
                char tb[64];
                size_t tl = decode_string(raw, rl, tb, sizeof tb);
                e = tl > sizeof tb ? "not an RFC 3339 time"
                                   : ingest_rfc3339((const uint8_t *)tb, tl, &rec->ts);
            }
            if (e) return fail(s, voff, INGEST_E_SEMANTIC, "ts: %s", e);
            rec->has_ts = true;
            return THZ_OK;
        }
        if (c == '-' || (c >= '0' && c <= '9')) {
            double v;
            const uint8_t *tok;
            size_t tl;
            thz_err rc = scan_number(s, &v, &tok, &tl);
            if (rc) return rc;
            const char *e = ms_to_ns(tok, tl, &rec->ts);
            if (e) return fail(s, voff, INGEST_E_SEMANTIC, "ts: %s", e);
            rec->has_ts = true;
            return THZ_OK;
        }
        if (c == 'n' && s->i + 4 <= s->n && memcmp(s->p + s->i, "null", 4) == 0) {
            s->i += 4;
            rec->has_ts = false;
            return THZ_OK;
        }
        if (c == '{' || c == '[' || c == 't' || c == 'f')
            return fail(s, voff, INGEST_E_SEMANTIC,
                        "ts must be epoch milliseconds (a number) or an RFC 3339 string");
        return unexpected(s, "a value");
    }
    if (c == '{') {
        if (depth + 1 >= INGEST_MAX_DEPTH)
            return fail(s, voff, INGEST_E_SEMANTIC, "objects nested deeper than %d levels",
                        INGEST_MAX_DEPTH);
        if (name != s->path) memcpy(s->path, name, len);
        s->path[len] = '.';
        return scan_object(s, depth + 1, len + 1, NULL);
    }
    if (c == '[')
        return fail(s, voff, INGEST_E_SEMANTIC, "field \"%.*s\": arrays are not supported",
                    (int)len, name);
    tsdb_value v;
    if (c == '"') {
        const uint8_t *raw;
        size_t rl;
        bool plain;
        thz_err rc = scan_string(s, &raw, &rl, &plain);
        if (rc) return rc;
        v.type = TSDB_STRING;
        if (plain) {
            v.u.s.p = (const char *)raw;
            v.u.s.n = (uint32_t)rl;
        } else {
            char *d = ingest_batch_alloc(s->b, rl);
            if (!d) return fail(s, voff, INGEST_E_NOMEM, "out of memory");
            v.u.s.p = d;
            v.u.s.n = (uint32_t)decode_string(raw, rl, d, rl);
        }
    } else if (c == '-' || (c >= '0' && c <= '9')) {
        const uint8_t *tok;
        size_t tl;
        v.type = TSDB_FLOAT;
        thz_err rc = scan_number(s, &v.u.f, &tok, &tl);
        if (rc) return rc;
    } else if (c == 't' && s->i + 4 <= s->n && memcmp(s->p + s->i, "true", 4) == 0) {
        s->i += 4;
        v.type = TSDB_BOOL;
        v.u.b = true;
    } else if (c == 'f' && s->i + 5 <= s->n && memcmp(s->p + s->i, "false", 5) == 0) {
        s->i += 5;
        v.type = TSDB_BOOL;
        v.u.b = false;
    } else if (c == 'n' && s->i + 4 <= s->n && memcmp(s->p + s->i, "null", 4) == 0) {
        s->i += 4;
        v.type = 0; /* a tombstone for last-wins; dropped by dedup */
    } else {
        return unexpected(s, "a value");
    }
    if (++s->npoints > INGEST_MAX_POINTS)
        return fail(s, voff, INGEST_E_SEMANTIC, "more than %d points in one payload",
                    INGEST_MAX_POINTS);
    tsdb_point *pt = ingest_batch_push(s->b);
    if (!pt) return fail(s, voff, INGEST_E_NOMEM, "out of memory");
    pt->device = s->device;
    pt->device_len = s->dlen;
    if (depth == 0 && keyplain) {
        pt->metric = (const char *)key; /* straight from the payload */
    } else {
        char *m = ingest_batch_alloc(s->b, len);
        if (!m) return fail(s, voff, INGEST_E_NOMEM, "out of memory");
        memcpy(m, s->path, len);
        pt->metric = m;
    }
    (void)klen;
    (void)keyoff;
    pt->metric_len = len;
    pt->tags = NULL;
    pt->tags_len = 0;
    pt->v = v;
    return THZ_OK;
}

/* An object at s->i ('{'); its members' names are prefixed by s->path[0..plen). */
static thz_err scan_object(jscan *s, int depth, size_t plen, record *rec)
{
    s->i++; /* '{' */
    skip_ws(s);
    if (s->i < s->n && s->p[s->i] == '}') {
        s->i++;
        return THZ_OK;
    }
    int fields = 0;
    for (;;) {
        if (s->i >= s->n || s->p[s->i] != '"') return unexpected(s, "a field name (a string)");
        size_t keyoff = s->i;
        if (++fields > INGEST_MAX_FIELDS)
            return fail(s, keyoff, INGEST_E_SEMANTIC, "more than %d fields in one object",
                        INGEST_MAX_FIELDS);
        const uint8_t *raw;
        size_t rl;
        bool plain;
        thz_err rc = scan_string(s, &raw, &rl, &plain);
        if (rc) return rc;
        size_t kl;
        if (plain) {
            kl = rl;
            if (plen + kl > INGEST_MAX_NAME)
                kl = INGEST_MAX_NAME + 1;
            else if (plen)
                memcpy(s->path + plen, raw, kl); /* top level: used in place */
        } else {
            size_t cap = plen < INGEST_MAX_NAME ? INGEST_MAX_NAME - plen : 0;
            kl = decode_string(raw, rl, s->path + plen, cap);
            if (kl <= cap && memchr(s->path + plen, 0, kl))
                return fail(s, keyoff, INGEST_E_NULNAME, "a field name contains \\u0000");
        }
        if (kl == 0) return fail(s, keyoff, INGEST_E_SEMANTIC, "empty field name");
        if (plen + kl > INGEST_MAX_NAME)
            return fail(s, keyoff, INGEST_E_SEMANTIC, "field name longer than %d bytes",
                        INGEST_MAX_NAME);
        skip_ws(s);
        if (s->i >= s->n || s->p[s->i] != ':') return unexpected(s, "':'");
        s->i++;
        skip_ws(s);
        if (s->i >= s->n) return unexpected(s, "a value");
        rc = scan_member_value(s, depth, plen + kl, raw, rl, plain, keyoff, rec);
        if (rc) return rc;
        skip_ws(s);
        if (s->i < s->n && s->p[s->i] == ',') {
            s->i++;
            skip_ws(s);
            continue;
        }
        if (s->i < s->n && s->p[s->i] == '}') {
            s->i++;
            return THZ_OK;
        }
        return unexpected(s, "',' or '}'");
    }
}

/* One telemetry object (a record) at s->i. */
static thz_err scan_record(jscan *s, int64_t now_ns)
{
    if (s->i >= s->n || s->p[s->i] != '{') {
        if (s->i < s->n && (s->p[s->i] == '[' || s->p[s->i] == '"' || s->p[s->i] == '-' ||
                            (s->p[s->i] >= '0' && s->p[s->i] <= '9') || s->p[s->i] == 't' ||
                            s->p[s->i] == 'f' || s->p[s->i] == 'n'))
            return fail(s, s->i, INGEST_E_SEMANTIC,
                        "telemetry must be a JSON object or an array of objects");
        return unexpected(s, "'{'");
    }
    size_t start = s->b->n;
    record rec = {0};
    thz_err rc = scan_object(s, 0, 0, &rec);
    if (rc) return rc;
    dedup(s->b, start, s->b->n);
    int64_t ts = rec.has_ts ? rec.ts : now_ns;
    for (size_t i = start; i < s->b->n; i++) s->b->pts[i].ts = ts;
    return THZ_OK;
}

thz_err ingest_json_parse(ingest_batch *b, const char *device, size_t dlen, const uint8_t *p,
                          size_t n, int64_t now_ns, char err[INGEST_ERR_LEN])
{
    jscan s = {.p = p, .n = n, .b = b, .device = device, .dlen = dlen, .err = err};
    b->err_class = 0;
    b->err_off = 0;
    if (n >= 3 && p[0] == 0xEF && p[1] == 0xBB && p[2] == 0xBF) s.i = 3; /* BOM */
    skip_ws(&s);
    thz_err rc;
    if (s.i < n && p[s.i] == '[') {
        s.i++;
        skip_ws(&s);
        if (s.i < n && p[s.i] == ']') {
            s.i++;
        } else {
            for (;;) {
                rc = scan_record(&s, now_ns);
                if (rc) return rc;
                skip_ws(&s);
                if (s.i < n && p[s.i] == ',') {
                    s.i++;
                    skip_ws(&s);
                    continue;
                }
                if (s.i < n && p[s.i] == ']') {
                    s.i++;
                    break;
                }
                return unexpected(&s, "',' or ']'");
            }
        }
    } else {
        rc = scan_record(&s, now_ns);
        if (rc) return rc;
    }
    skip_ws(&s);
    if (s.i < n) return unexpected(&s, "the end of the payload");
    return THZ_OK;
}
