/* codec.c - the column encodings of tsdb blocks: integer streams (delta,
 * zigzag, frame-of-reference bit-packing), decimal and Gorilla floats,
 * bitmaps, dictionaries, and zstd over any of them. See codec.h. */
#include "tsdb/codec.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#define FRAME      128 /* values per bit-packed frame */
#define ZSTD_MIN   24  /* bodies shorter than this are not worth a zstd try */
#define ZSTD_LEVEL 3

/* ---- varints, zigzag ---------------------------------------------------- */

static inline uint64_t zz(uint64_t x)
{
    return (x << 1) ^ (0 - (x >> 63));
}
static inline uint64_t unzz(uint64_t z)
{
    return (z >> 1) ^ (0 - (z & 1));
}

static size_t varint_put(uint8_t *p, uint64_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        p[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (uint8_t)v;
    return n;
}

static thz_err buf_varint(thz_buf *b, uint64_t v)
{
    thz_err rc = thz_buf_reserve(b, 10);
    if (rc) return rc;
    b->len += varint_put(b->p + b->len, v);
    return THZ_OK;
}

/* A bounded reader over the input. */
typedef struct rd {
    const uint8_t *p;
    size_t len, pos;
} rd;

static int rd_varint(rd *r, uint64_t *out)
{
    uint64_t v = 0;
    for (unsigned shift = 0; shift < 64; shift += 7) {
        if (r->pos >= r->len) return -1;
        uint8_t c = r->p[r->pos++];
        if (shift == 63 && c > 1) return -1; /* more than 64 bits */
        v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

static int rd_byte(rd *r, uint8_t *out)
{
    if (r->pos >= r->len) return -1;
    *out = r->p[r->pos++];
    return 0;
}

/* ---- bits --------------------------------------------------------------- */

/* Writes LSB first into memory the caller reserved (cap bytes at p). */
typedef struct bw {
    uint8_t *p;
    size_t n; /* bytes written */
    uint64_t acc;
    unsigned nacc; /* < 8 between calls */
} bw;

static inline void bw_put(bw *w, uint64_t v, unsigned nbits)
{
    if (nbits > 56) {
        bw_put(w, v & 0xffffffffu, 32);
        v >>= 32;
        nbits -= 32;
    }
    if (!nbits) return;
    v &= (nbits == 64 ? ~0ull : (1ull << nbits) - 1);
    w->acc |= v << w->nacc;
    w->nacc += nbits;
    while (w->nacc >= 8) {
        w->p[w->n++] = (uint8_t)w->acc;
        w->acc >>= 8;
        w->nacc -= 8;
    }
}

static inline void bw_flush(bw *w)
{
    if (w->nacc) w->p[w->n++] = (uint8_t)w->acc;
    w->acc = 0;
    w->nacc = 0;
}

typedef struct br {
    const uint8_t *p;
    size_t nbits, pos; /* in bits */
} br;

static inline int br_get(br *r, unsigned nbits, uint64_t *out)
{
    if (r->nbits - r->pos < nbits) return -1;
    uint64_t v = 0;
    unsigned got = 0;
    size_t pos = r->pos;
    while (got < nbits) {
        unsigned off = pos & 7, take = 8 - off;
        if (take > nbits - got) take = nbits - got;
        v |= (uint64_t)((r->p[pos >> 3] >> off) & ((1u << take) - 1)) << got;
        got += take;
        pos += take;
    }
    r->pos = pos;
    *out = v;
    return 0;
}

static inline unsigned bits_of(uint64_t v)
{
    return v ? 64 - (unsigned)__builtin_clzll(v) : 0;
}

/* ---- integer streams ---------------------------------------------------- */

/* Appends the stream of order o for v[0..n) (x is scratch of n values). */
static thz_err istream_put(const uint64_t *v, size_t n, unsigned o, uint64_t *x, thz_buf *out)
{
    memcpy(x, v, n * sizeof *x);
    if (o >= 1)
        for (size_t i = n; i-- > 1;) x[i] -= x[i - 1];
    if (o >= 2)
        for (size_t i = n; i-- > 2;) x[i] -= x[i - 1];
    size_t head = o < n ? o : n;
    thz_err rc = thz_buf_reserve(out, 1 + 10 * head + (n / FRAME + 1) * 11 + n * 8 + 8);
    if (rc) return rc;
    out->p[out->len++] = (uint8_t)o;
    for (size_t i = 0; i < head; i++) out->len += varint_put(out->p + out->len, zz(x[i]));
    for (size_t f = head; f < n; f += FRAME) {
        size_t m = n - f < FRAME ? n - f : FRAME;
        uint64_t lo = ~0ull, hi = 0;
        for (size_t i = f; i < f + m; i++) {
            x[i] = zz(x[i]);
            if (x[i] < lo) lo = x[i];
            if (x[i] > hi) hi = x[i];
        }
        unsigned w = bits_of(hi - lo);
        out->len += varint_put(out->p + out->len, lo);
        out->p[out->len++] = (uint8_t)w;
        bw b = {.p = out->p + out->len};
        for (size_t i = f; i < f + m; i++) bw_put(&b, x[i] - lo, w);
        bw_flush(&b);
        out->len += b.n;
    }
    return THZ_OK;
}

/* Appends the smallest stream among orders lo..hi. */
static thz_err istream_best(const uint64_t *v, size_t n, unsigned lo, unsigned hi, thz_buf *out)
{
    uint64_t *x = malloc(n ? n * sizeof *x : 1);
    if (!x) return THZ_ENOMEM;
    thz_buf best = {0}, cur = {0};
    thz_err rc = THZ_OK;
    for (unsigned o = lo; o <= hi && !rc; o++) {
        cur.len = 0;
        rc = istream_put(v, n, o, x, &cur);
        if (!rc && (!best.p || cur.len < best.len)) {
            thz_buf t = best;
            best = cur;
            cur = t;
        }
    }
    if (!rc) rc = thz_buf_append(out, best.p, best.len);
    free(x);
    thz_buf_free(&best);
    thz_buf_free(&cur);
    return rc;
}

/* Reads a stream of n values into out (as uint64). */
static int istream_get(rd *r, size_t n, uint64_t *out)
{
    uint8_t o;
    if (rd_byte(r, &o) || o > 2) return -1;
    size_t head = o < n ? o : n;
    for (size_t i = 0; i < head; i++) {
        uint64_t z;
        if (rd_varint(r, &z)) return -1;
        out[i] = unzz(z);
    }
    for (size_t f = head; f < n; f += FRAME) {
        size_t m = n - f < FRAME ? n - f : FRAME;
        uint64_t lo;
        uint8_t w;
        if (rd_varint(r, &lo) || rd_byte(r, &w) || w > 64) return -1;
        size_t nbytes = (m * w + 7) / 8;
        if (r->len - r->pos < nbytes) return -1;
        br b = {.p = r->p + r->pos, .nbits = nbytes * 8};
        for (size_t i = f; i < f + m; i++) {
            uint64_t u;
            if (br_get(&b, w, &u)) return -1; /* cannot happen: nbytes covers m*w */
            out[i] = unzz(u + lo);
        }
        r->pos += nbytes;
    }
    if (o >= 2)
        for (size_t i = 2; i < n; i++) out[i] += out[i - 1];
    if (o >= 1)
        for (size_t i = 1; i < n; i++) out[i] += out[i - 1];
    return 0;
}

/* The largest stream n values can take, saturating. */
static size_t istream_bound(size_t n)
{
    if (n > SIZE_MAX / 16) return SIZE_MAX;
    return 1 + 30 + (n / FRAME + 1) * 11 + n * 8;
}

/* ---- zstd on top -------------------------------------------------------- */

/* One compression and one decompression context per thread, reused:
 * ZSTD_compress/ZSTD_decompress allocate and set up a fresh one per call,
 * which costs more than inflating a small column. Freed at thread exit. */
static pthread_key_t zkey_c, zkey_d;
static pthread_once_t zonce = PTHREAD_ONCE_INIT;

static void zfree_c(void *p)
{
    ZSTD_freeCCtx(p);
}
static void zfree_d(void *p)
{
    ZSTD_freeDCtx(p);
}
static void zinit(void)
{
    pthread_key_create(&zkey_c, zfree_c);
    pthread_key_create(&zkey_d, zfree_d);
}

static ZSTD_CCtx *zcctx(void)
{
    pthread_once(&zonce, zinit);
    ZSTD_CCtx *c = pthread_getspecific(zkey_c);
    if (!c && (c = ZSTD_createCCtx()) && pthread_setspecific(zkey_c, c)) {
        ZSTD_freeCCtx(c);
        c = NULL;
    }
    return c;
}

static ZSTD_DCtx *zdctx(void)
{
    pthread_once(&zonce, zinit);
    ZSTD_DCtx *d = pthread_getspecific(zkey_d);
    if (!d && (d = ZSTD_createDCtx()) && pthread_setspecific(zkey_d, d)) {
        ZSTD_freeDCtx(d);
        d = NULL;
    }
    return d;
}

/* Appends column col (tag byte + body) to out, or its zstd form if smaller. */
static thz_err col_finish(thz_buf *col, size_t zmax, thz_buf *out)
{
    size_t blen = col->len - 1;
    if (blen >= ZSTD_MIN && blen <= zmax) {
        size_t cap = ZSTD_compressBound(blen);
        thz_buf z = {0};
        thz_err rc = thz_buf_reserve(&z, 11 + cap);
        if (rc) return rc;
        z.p[0] = col->p[0] | CODEC_ZSTD;
        z.len = 1 + varint_put(z.p + 1, blen);
        ZSTD_CCtx *cc = zcctx();
        size_t c = cc ? ZSTD_compressCCtx(cc, z.p + z.len, cap, col->p + 1, blen, ZSTD_LEVEL)
                      : ZSTD_compress(z.p + z.len, cap, col->p + 1, blen, ZSTD_LEVEL);
        if (!ZSTD_isError(c) && z.len + c < col->len) {
            z.len += c;
            rc = thz_buf_append(out, z.p, z.len);
            thz_buf_free(&z);
            return rc;
        }
        thz_buf_free(&z);
    }
    return thz_buf_append(out, col->p, col->len);
}

/* Splits a column into its encoding and body; inflates a zstd body of at
 * most bound bytes into *tmp (malloc'd, the caller frees). */
static thz_err col_open(const uint8_t *p, size_t len, size_t bound, uint8_t *enc, rd *body,
                        uint8_t **tmp)
{
    *tmp = NULL;
    if (len < 1) return THZ_ECORRUPT;
    *enc = p[0] & 0x7f;
    if (!(p[0] & CODEC_ZSTD)) {
        *body = (rd){.p = p + 1, .len = len - 1};
        return THZ_OK;
    }
    rd r = {.p = p + 1, .len = len - 1};
    uint64_t raw;
    if (rd_varint(&r, &raw) || raw > bound || raw < ZSTD_MIN) return THZ_ECORRUPT;
    const uint8_t *z = r.p + r.pos;
    size_t zlen = r.len - r.pos;
    unsigned long long fcs = ZSTD_getFrameContentSize(z, zlen);
    if (fcs != raw) return THZ_ECORRUPT; /* also unknown / error sizes */
    uint8_t *out = malloc(raw);
    if (!out) return THZ_ENOMEM;
    ZSTD_DCtx *dc = zdctx();
    size_t got =
        dc ? ZSTD_decompressDCtx(dc, out, raw, z, zlen) : ZSTD_decompress(out, raw, z, zlen);
    if (ZSTD_isError(got) || got != raw) {
        free(out);
        return THZ_ECORRUPT;
    }
    *tmp = out;
    *body = (rd){.p = out, .len = raw};
    return THZ_OK;
}

static size_t sat_add(size_t a, size_t b)
{
    return a > SIZE_MAX - b ? SIZE_MAX : a + b;
}

const char *codec_name(uint8_t first_byte)
{
    static const char *const names[2][11] = {
        {"?", "ts-regular", "ts-delta", "i64-const", "i64-packed", "f64-decimal", "f64-gorilla",
         "bool-const", "bool-bitmap", "str-plain", "str-dict"},
        {"?+zstd", "ts-regular+zstd", "ts-delta+zstd", "i64-const+zstd", "i64-packed+zstd",
         "f64-decimal+zstd", "f64-gorilla+zstd", "bool-const+zstd", "bool-bitmap+zstd",
         "str-plain+zstd", "str-dict+zstd"}};
    unsigned e = first_byte & 0x7f;
    return names[first_byte >> 7][e <= 10 ? e : 0];
}

/* ---- timestamps --------------------------------------------------------- */

thz_err codec_ts_encode(const int64_t *ts, size_t n, thz_buf *out)
{
    const uint64_t *u = (const uint64_t *)ts;
    bool regular = true;
    for (size_t i = 2; i < n && regular; i++) regular = u[i] - u[i - 1] == u[1] - u[0];
    thz_buf col = {0};
    thz_err rc;
    if (regular) {
        rc = thz_buf_reserve(&col, 31);
        if (rc) return rc;
        col.p[col.len++] = CODEC_TS_REGULAR;
        col.len += varint_put(col.p + col.len, n ? zz(u[0]) : 0);
        col.len += varint_put(col.p + col.len, n > 1 ? zz(u[1] - u[0]) : 0);
        col.len += varint_put(col.p + col.len, n);
    } else {
        rc = thz_buf_append(&col, &(uint8_t){CODEC_TS_DELTA}, 1);
        if (!rc) rc = istream_best(u, n, 1, 2, &col);
    }
    if (!rc) rc = col_finish(&col, SIZE_MAX, out);
    thz_buf_free(&col);
    return rc;
}

thz_err codec_ts_decode(const uint8_t *p, size_t len, size_t n, int64_t *out)
{
    uint8_t enc, *tmp;
    rd r;
    thz_err rc = col_open(p, len, sat_add(istream_bound(n), 31), &enc, &r, &tmp);
    if (rc) return rc;
    uint64_t *u = (uint64_t *)out;
    rc = THZ_ECORRUPT;
    if (enc == CODEC_TS_REGULAR) {
        uint64_t start, step, count;
        if (rd_varint(&r, &start) || rd_varint(&r, &step) || rd_varint(&r, &count) || count != n)
            goto done;
        start = unzz(start);
        step = unzz(step);
        for (size_t i = 0; i < n; i++) u[i] = start + (uint64_t)i * step;
    } else if (enc == CODEC_TS_DELTA) {
        if (istream_get(&r, n, u)) goto done;
    } else {
        goto done;
    }
    if (r.pos == r.len) rc = THZ_OK;
done:
    free(tmp);
    return rc;
}

/* ---- ints --------------------------------------------------------------- */

thz_err codec_i64_encode(const int64_t *v, size_t n, thz_buf *out)
{
    bool same = n > 0;
    for (size_t i = 1; i < n && same; i++) same = v[i] == v[0];
    thz_buf col = {0};
    thz_err rc;
    if (same) {
        rc = thz_buf_append(&col, &(uint8_t){CODEC_I64_CONST}, 1);
        if (!rc) rc = buf_varint(&col, zz((uint64_t)v[0]));
    } else {
        rc = thz_buf_append(&col, &(uint8_t){CODEC_I64_PACKED}, 1);
        if (!rc) rc = istream_best((const uint64_t *)v, n, 0, 2, &col);
    }
    if (!rc) rc = col_finish(&col, SIZE_MAX, out);
    thz_buf_free(&col);
    return rc;
}

thz_err codec_i64_decode(const uint8_t *p, size_t len, size_t n, int64_t *out)
{
    uint8_t enc, *tmp;
    rd r;
    thz_err rc = col_open(p, len, istream_bound(n), &enc, &r, &tmp);
    if (rc) return rc;
    uint64_t *u = (uint64_t *)out;
    rc = THZ_ECORRUPT;
    if (enc == CODEC_I64_CONST) {
        uint64_t z;
        if (n == 0 || rd_varint(&r, &z)) goto done;
        for (size_t i = 0; i < n; i++) u[i] = unzz(z);
    } else if (enc == CODEC_I64_PACKED) {
        if (istream_get(&r, n, u)) goto done;
    } else {
        goto done;
    }
    if (r.pos == r.len) rc = THZ_OK;
done:
    free(tmp);
    return rc;
}

/* ---- floats ------------------------------------------------------------- */

static const double pow10_tab[10] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9};

static inline uint64_t f2u(double d)
{
    uint64_t u;
    memcpy(&u, &d, 8);
    return u;
}

/* The one expression both sides use to turn a scaled integer back. */
static inline double decimal_value(int64_t i, unsigned k)
{
    return (double)i / pow10_tab[k];
}

/* Whether every value is v = I / 10^k exactly; fills I. */
static bool decimal_fits(const double *v, size_t n, unsigned k, int64_t *ints)
{
    double p = pow10_tab[k];
    for (size_t i = 0; i < n; i++) {
        double x = v[i] * p;
        /* NaN and ±Inf fail the range test; -0.0 fails the bit compare. */
        if (!(x > -9.2e18 && x < 9.2e18)) return false;
        int64_t I = (int64_t)llround(x);
        if (f2u(decimal_value(I, k)) != f2u(v[i])) return false;
        ints[i] = I;
    }
    return true;
}

/* Gorilla: first value raw; then per value the XOR with the previous one:
 * '0' if zero; '10' + the meaningful bits if they fit the previous window;
 * '11' + 5 bits leading zeros + 6 bits length (0 means 64) + the bits. */
static thz_err gorilla_put(const double *v, size_t n, thz_buf *col)
{
    thz_err rc = thz_buf_reserve(col, 8 + n * 10 + 8);
    if (rc) return rc;
    bw w = {.p = col->p + col->len};
    uint64_t prev = 0;
    unsigned plead = 65, ptrail = 0; /* no window yet */
    for (size_t i = 0; i < n; i++) {
        uint64_t u = f2u(v[i]);
        if (i == 0) {
            bw_put(&w, u, 64);
            prev = u;
            continue;
        }
        uint64_t x = u ^ prev;
        prev = u;
        if (!x) {
            bw_put(&w, 0, 1);
            continue;
        }
        unsigned lead = (unsigned)__builtin_clzll(x), trail = (unsigned)__builtin_ctzll(x);
        if (lead > 31) lead = 31;
        if (plead <= 64 && lead >= plead && trail >= ptrail) {
            bw_put(&w, 1, 2); /* bits '1','0' LSB first */
            bw_put(&w, x >> ptrail, 64 - plead - ptrail);
        } else {
            unsigned sig = 64 - lead - trail;
            bw_put(&w, 3, 2);
            bw_put(&w, lead, 5);
            bw_put(&w, sig & 63, 6);
            bw_put(&w, x >> trail, sig);
            plead = lead;
            ptrail = trail;
        }
    }
    bw_flush(&w);
    col->len += w.n;
    return THZ_OK;
}

static int gorilla_get(rd *r, size_t n, double *out)
{
    br b = {.p = r->p + r->pos, .nbits = (r->len - r->pos) * 8};
    uint64_t prev = 0, t;
    unsigned plead = 65, ptrail = 0;
    for (size_t i = 0; i < n; i++) {
        if (i == 0) {
            if (br_get(&b, 64, &prev)) return -1;
        } else {
            if (br_get(&b, 1, &t)) return -1;
            if (t) {
                if (br_get(&b, 1, &t)) return -1;
                uint64_t x;
                if (!t) {
                    if (plead > 64) return -1;
                    if (br_get(&b, 64 - plead - ptrail, &x)) return -1;
                    prev ^= x << ptrail;
                } else {
                    uint64_t lead, sig;
                    if (br_get(&b, 5, &lead) || br_get(&b, 6, &sig)) return -1;
                    if (!sig) sig = 64;
                    if (lead + sig > 64) return -1;
                    if (br_get(&b, (unsigned)sig, &x)) return -1;
                    plead = (unsigned)lead;
                    ptrail = 64 - (unsigned)lead - (unsigned)sig;
                    prev ^= x << ptrail;
                }
            }
        }
        memcpy(&out[i], &prev, 8);
    }
    r->pos += (b.pos + 7) / 8;
    return 0;
}

thz_err codec_f64_encode(const double *v, size_t n, thz_buf *out)
{
    thz_buf dec = {0}, gor = {0};
    thz_err rc = THZ_OK;
    int64_t *ints = malloc(n ? n * sizeof *ints : 1);
    if (!ints) return THZ_ENOMEM;
    for (unsigned k = 0; k <= 9; k++) {
        if (!decimal_fits(v, n, k, ints)) continue;
        uint8_t hdr[2] = {CODEC_F64_DECIMAL, (uint8_t)k};
        rc = thz_buf_append(&dec, hdr, 2);
        if (!rc) rc = istream_best((const uint64_t *)ints, n, 0, 2, &dec);
        break;
    }
    free(ints);
    if (!rc) rc = thz_buf_append(&gor, &(uint8_t){CODEC_F64_GORILLA}, 1);
    if (!rc) rc = gorilla_put(v, n, &gor);
    if (!rc) rc = col_finish(dec.len && dec.len <= gor.len ? &dec : &gor, SIZE_MAX, out);
    thz_buf_free(&dec);
    thz_buf_free(&gor);
    return rc;
}

thz_err codec_f64_decode(const uint8_t *p, size_t len, size_t n, double *out)
{
    uint8_t enc, *tmp;
    rd r;
    size_t bound = n > SIZE_MAX / 16 ? SIZE_MAX : sat_add(istream_bound(n), 16 + n * 10);
    thz_err rc = col_open(p, len, bound, &enc, &r, &tmp);
    if (rc) return rc;
    rc = THZ_ECORRUPT;
    if (enc == CODEC_F64_DECIMAL) {
        uint8_t k;
        if (rd_byte(&r, &k) || k > 9) goto done;
        /* The integers go through out itself: same size, converted in place. */
        uint64_t *u = (uint64_t *)(void *)out;
        if (istream_get(&r, n, u)) goto done;
        for (size_t i = 0; i < n; i++) {
            int64_t I;
            memcpy(&I, &out[i], 8);
            out[i] = decimal_value(I, k);
        }
    } else if (enc == CODEC_F64_GORILLA) {
        if (gorilla_get(&r, n, out)) goto done;
    } else {
        goto done;
    }
    if (r.pos == r.len) rc = THZ_OK;
done:
    free(tmp);
    return rc;
}

/* ---- bools -------------------------------------------------------------- */

thz_err codec_bool_encode(const bool *v, size_t n, thz_buf *out)
{
    bool same = n > 0;
    for (size_t i = 1; i < n && same; i++) same = v[i] == v[0];
    thz_buf col = {0};
    thz_err rc;
    if (same) {
        uint8_t b[2] = {CODEC_BOOL_CONST, v[0] ? 1 : 0};
        rc = thz_buf_append(&col, b, 2);
    } else {
        rc = thz_buf_reserve(&col, 1 + (n + 7) / 8);
        if (rc) return rc;
        col.p[0] = CODEC_BOOL_BITMAP;
        memset(col.p + 1, 0, (n + 7) / 8);
        for (size_t i = 0; i < n; i++)
            if (v[i]) col.p[1 + i / 8] |= (uint8_t)(1u << (i % 8));
        col.len = 1 + (n + 7) / 8;
    }
    if (!rc) rc = col_finish(&col, SIZE_MAX, out);
    thz_buf_free(&col);
    return rc;
}

thz_err codec_bool_decode(const uint8_t *p, size_t len, size_t n, bool *out)
{
    uint8_t enc, *tmp;
    rd r;
    thz_err rc = col_open(p, len, n / 8 + 2, &enc, &r, &tmp);
    if (rc) return rc;
    rc = THZ_ECORRUPT;
    if (enc == CODEC_BOOL_CONST) {
        uint8_t b;
        if (n == 0 || rd_byte(&r, &b) || b > 1) goto done;
        for (size_t i = 0; i < n; i++) out[i] = b;
    } else if (enc == CODEC_BOOL_BITMAP) {
        if (r.len != (n + 7) / 8) goto done;
        for (size_t i = 0; i < n; i++) out[i] = (r.p[i / 8] >> (i % 8)) & 1;
        r.pos = r.len;
    } else {
        goto done;
    }
    if (r.pos == r.len) rc = THZ_OK;
done:
    free(tmp);
    return rc;
}

/* ---- strings ------------------------------------------------------------ */

static const char empty_str[1] = "";

/* Lengths as an integer stream, then the bytes. */
static thz_err strs_put(const char *const *s, const uint32_t *lens, const size_t *idx, size_t n,
                        thz_buf *col)
{
    uint64_t *l = calloc(n ? n : 1, sizeof *l);
    if (!l) return THZ_ENOMEM;
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        l[i] = lens[idx ? idx[i] : i];
        total += l[i];
    }
    thz_err rc = istream_best(l, n, 0, 0, col);
    free(l);
    if (!rc) rc = thz_buf_reserve(col, total);
    for (size_t i = 0; i < n && !rc; i++) {
        size_t j = idx ? idx[i] : i;
        if (lens[j]) memcpy(col->p + col->len, s[j], lens[j]);
        col->len += lens[j];
    }
    return rc;
}

/* Reads m strings into arena; s[i] holds the offset (from base) for now. */
static thz_err strs_get(rd *r, size_t m, const char **s, uint32_t *lens, thz_buf *arena,
                        size_t base)
{
    uint64_t *l = (uint64_t *)malloc(m ? m * sizeof *l : 1);
    if (!l) return THZ_ENOMEM;
    thz_err rc = THZ_ECORRUPT;
    if (istream_get(r, m, l)) goto done;
    uint64_t total = 0;
    for (size_t i = 0; i < m; i++) {
        if (l[i] > UINT32_MAX || l[i] > r->len - r->pos - total) goto done;
        total += l[i];
    }
    rc = thz_buf_append(arena, r->p + r->pos, total);
    if (rc) goto done;
    size_t off = arena->len - total - base;
    for (size_t i = 0; i < m; i++) {
        lens[i] = (uint32_t)l[i];
        s[i] = (const char *)(uintptr_t)off;
        off += l[i];
    }
    r->pos += total;
    rc = THZ_OK;
done:
    free(l);
    return rc;
}

/* A string set for the dictionary: open addressing over value indexes. */
static uint64_t str_hash(const char *s, uint32_t n)
{
    uint64_t h = 0xcbf29ce484222325ull ^ n;
    for (uint32_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 0x100000001b3ull;
    return h;
}

thz_err codec_str_encode(const char *const *s, const uint32_t *lens, size_t n, thz_buf *out)
{
    thz_err rc = THZ_OK;
    thz_buf plain = {0}, dict = {0};
    size_t cap = 16;
    while (cap < 2 * n) cap *= 2;
    size_t *slot = malloc(cap * sizeof *slot);           /* value index + 1, 0 empty */
    size_t *first = malloc((n ? n : 1) * sizeof *first); /* dict id -> value index */
    uint64_t *ids = malloc((n ? n : 1) * sizeof *ids);
    if (!slot || !first || !ids) {
        rc = THZ_ENOMEM;
        goto done;
    }
    memset(slot, 0, cap * sizeof *slot);
    size_t d = 0;
    for (size_t i = 0; i < n; i++) {
        size_t h = (size_t)str_hash(s[i] ? s[i] : empty_str, lens[i]) & (cap - 1);
        for (;; h = (h + 1) & (cap - 1)) {
            if (!slot[h]) {
                slot[h] = d + 1;
                first[d] = i;
                ids[i] = d++;
                break;
            }
            size_t j = first[slot[h] - 1];
            if (lens[j] == lens[i] && (!lens[i] || !memcmp(s[j], s[i], lens[i]))) {
                ids[i] = slot[h] - 1;
                break;
            }
        }
    }
    rc = thz_buf_append(&plain, &(uint8_t){CODEC_STR_PLAIN}, 1);
    if (!rc) rc = strs_put(s, lens, NULL, n, &plain);
    if (!rc && d < n) {
        rc = thz_buf_append(&dict, &(uint8_t){CODEC_STR_DICT}, 1);
        if (!rc) rc = buf_varint(&dict, d);
        if (!rc) rc = strs_put(s, lens, first, d, &dict);
        if (!rc) rc = istream_best(ids, n, 0, 0, &dict);
    }
    if (!rc) {
        thz_buf *col = dict.len && dict.len < plain.len ? &dict : &plain;
        rc = col_finish(col, CODEC_ZSTD_STR_MAX, out);
    }
done:
    free(slot);
    free(first);
    free(ids);
    thz_buf_free(&plain);
    thz_buf_free(&dict);
    return rc;
}

thz_err codec_str_decode(const uint8_t *p, size_t len, size_t n, const char **s, uint32_t *lens,
                         thz_buf *arena)
{
    uint8_t enc, *tmp;
    rd r;
    thz_err rc = col_open(p, len, CODEC_ZSTD_STR_MAX, &enc, &r, &tmp);
    if (rc) return rc;
    size_t base = arena->len;
    const char **ds = NULL;
    uint32_t *dl = NULL;
    uint64_t *ids = NULL;
    rc = THZ_ECORRUPT;
    if (enc == CODEC_STR_PLAIN) {
        rc = strs_get(&r, n, s, lens, arena, base);
        if (rc) goto done;
    } else if (enc == CODEC_STR_DICT) {
        uint64_t d;
        if (rd_varint(&r, &d) || d > n || (n && !d)) goto done;
        ds = malloc((d ? d : 1) * sizeof *ds);
        dl = malloc((d ? d : 1) * sizeof *dl);
        ids = malloc((n ? n : 1) * sizeof *ids);
        if (!ds || !dl || !ids) {
            rc = THZ_ENOMEM;
            goto done;
        }
        rc = strs_get(&r, d, ds, dl, arena, base);
        if (rc) goto done;
        rc = THZ_ECORRUPT;
        if (istream_get(&r, n, ids)) goto done;
        for (size_t i = 0; i < n; i++) {
            if (ids[i] >= d) goto done;
            s[i] = ds[ids[i]];
            lens[i] = dl[ids[i]];
        }
    } else {
        goto done;
    }
    rc = r.pos == r.len ? THZ_OK : THZ_ECORRUPT;
    if (!rc)
        for (size_t i = 0; i < n; i++)
            s[i] = arena->p ? (const char *)arena->p + base + (uintptr_t)s[i] : empty_str;
done:
    if (rc) arena->len = base;
    free(ds);
    free(dl);
    free(ids);
    free(tmp);
    return rc;
}
