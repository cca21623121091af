/* test_codec.c - unit tests of the tsdb column codecs (src/tsdb/codec.c):
 * bit-exact round trips with edge values, the encoding each kind of data
 * gets, the sizes that matter (sensor floats under 1 byte a value), and
 * truncated or corrupt columns refused with THZ_ECORRUPT. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tsdb/codec.h"

/* ---- helpers ------------------------------------------------------------ */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

/* Every strict prefix of a column, and the column with a byte more, must be
 * refused. Long columns are checked at a sample of cut points. */
typedef thz_err (*decode_fn)(const uint8_t *p, size_t len, size_t n, void *out);

static void check_truncations(const thz_buf *b, size_t n, decode_fn dec, void *out)
{
    size_t step = b->len > 2048 ? b->len / 512 : 1;
    for (size_t cut = 0; cut < b->len; cut += step) {
        uint8_t *p = malloc(cut ? cut : 1);
        memcpy(p, b->p, cut);
        assert_int_equal(dec(p, cut, n, out), THZ_ECORRUPT);
        free(p);
    }
    uint8_t *p = malloc(b->len + 1);
    memcpy(p, b->p, b->len);
    p[b->len] = 0;
    assert_int_not_equal(dec(p, b->len + 1, n, out), THZ_OK);
    free(p);
}

static thz_err dec_ts(const uint8_t *p, size_t len, size_t n, void *out)
{
    return codec_ts_decode(p, len, n, out);
}
static thz_err dec_i64(const uint8_t *p, size_t len, size_t n, void *out)
{
    return codec_i64_decode(p, len, n, out);
}
static thz_err dec_f64(const uint8_t *p, size_t len, size_t n, void *out)
{
    return codec_f64_decode(p, len, n, out);
}
static thz_err dec_bool(const uint8_t *p, size_t len, size_t n, void *out)
{
    return codec_bool_decode(p, len, n, out);
}

/* Encodes, checks the first byte (enc, with or without zstd unless enc
 * has the zstd flag; -1: any), decodes bit-exactly,
 * checks truncations; returns the encoded size. */
static size_t rt_ts(const int64_t *v, size_t n, int enc)
{
    thz_buf b = {0};
    assert_int_equal(codec_ts_encode(v, n, &b), THZ_OK);
    if (enc >= 0) assert_int_equal(enc & CODEC_ZSTD ? b.p[0] : b.p[0] & 0x7f, enc);
    int64_t *o = calloc(n + 1, sizeof *o);
    o[n] = 0x5a5a;
    assert_int_equal(codec_ts_decode(b.p, b.len, n, o), THZ_OK);
    if (n) assert_memory_equal(o, v, n * sizeof *v);
    assert_int_equal(o[n], 0x5a5a); /* nothing written past n */
    check_truncations(&b, n, dec_ts, o);
    size_t len = b.len;
    free(o);
    thz_buf_free(&b);
    return len;
}

static size_t rt_i64(const int64_t *v, size_t n, int enc)
{
    thz_buf b = {0};
    assert_int_equal(codec_i64_encode(v, n, &b), THZ_OK);
    if (enc >= 0) assert_int_equal(enc & CODEC_ZSTD ? b.p[0] : b.p[0] & 0x7f, enc);
    int64_t *o = calloc(n + 1, sizeof *o);
    o[n] = 0x5a5a;
    assert_int_equal(codec_i64_decode(b.p, b.len, n, o), THZ_OK);
    if (n) assert_memory_equal(o, v, n * sizeof *v);
    assert_int_equal(o[n], 0x5a5a);
    check_truncations(&b, n, dec_i64, o);
    size_t len = b.len;
    free(o);
    thz_buf_free(&b);
    return len;
}

static size_t rt_f64(const double *v, size_t n, int enc)
{
    thz_buf b = {0};
    assert_int_equal(codec_f64_encode(v, n, &b), THZ_OK);
    if (enc >= 0) assert_int_equal(enc & CODEC_ZSTD ? b.p[0] : b.p[0] & 0x7f, enc);
    double *o = calloc(n + 1, sizeof *o);
    o[n] = 42.0;
    assert_int_equal(codec_f64_decode(b.p, b.len, n, o), THZ_OK);
    if (n) assert_memory_equal(o, v, n * sizeof *v); /* bits, not ==: NaN, -0.0 */
    assert_true(o[n] == 42.0);
    check_truncations(&b, n, dec_f64, o);
    size_t len = b.len;
    free(o);
    thz_buf_free(&b);
    return len;
}

static size_t rt_bool(const bool *v, size_t n, int enc)
{
    thz_buf b = {0};
    assert_int_equal(codec_bool_encode(v, n, &b), THZ_OK);
    if (enc >= 0) assert_int_equal(enc & CODEC_ZSTD ? b.p[0] : b.p[0] & 0x7f, enc);
    bool *o = calloc(n + 1, sizeof *o);
    assert_int_equal(codec_bool_decode(b.p, b.len, n, o), THZ_OK);
    for (size_t i = 0; i < n; i++) assert_int_equal(o[i], v[i]);
    assert_false(o[n]);
    check_truncations(&b, n, dec_bool, o);
    size_t len = b.len;
    free(o);
    thz_buf_free(&b);
    return len;
}

static size_t rt_str(const char *const *s, const uint32_t *lens, size_t n, int enc)
{
    thz_buf b = {0}, arena = {0};
    assert_int_equal(codec_str_encode(s, lens, n, &b), THZ_OK);
    if (enc >= 0) assert_int_equal(enc & CODEC_ZSTD ? b.p[0] : b.p[0] & 0x7f, enc);
    const char **os = calloc(n + 1, sizeof *os);
    uint32_t *ol = calloc(n + 1, sizeof *ol);
    assert_int_equal(thz_buf_append(&arena, "pre", 3), THZ_OK); /* decoding appends */
    assert_int_equal(codec_str_decode(b.p, b.len, n, os, ol, &arena), THZ_OK);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(ol[i], lens[i]);
        assert_non_null(os[i]);
        if (lens[i]) assert_memory_equal(os[i], s[i], lens[i]);
    }
    assert_null(os[n]);
    assert_memory_equal(arena.p, "pre", 3);
    /* Truncations: refused, and the arena left as it was. */
    size_t step = b.len > 2048 ? b.len / 512 : 1, alen = arena.len;
    for (size_t cut = 0; cut < b.len; cut += step) {
        assert_int_equal(codec_str_decode(b.p, cut, n, os, ol, &arena), THZ_ECORRUPT);
        assert_int_equal(arena.len, alen);
    }
    size_t len = b.len;
    free(os);
    free(ol);
    thz_buf_free(&arena);
    thz_buf_free(&b);
    return len;
}

static double from_bits(uint64_t u)
{
    double d;
    memcpy(&d, &u, 8);
    return d;
}

/* ---- timestamps --------------------------------------------------------- */

static void test_ts_regular(void **state)
{
    enum { N = 3600 };
    int64_t *v = malloc(N * sizeof *v);
    for (size_t i = 0; i < N; i++) v[i] = 1764000000000000000ll + (int64_t)i * 1000000000ll;
    size_t len = rt_ts(v, N, CODEC_TS_REGULAR);
    assert_true(len < 20);
    /* Descending is regular too. */
    for (size_t i = 0; i < N; i++) v[i] = 1000 - (int64_t)i * 7;
    rt_ts(v, N, CODEC_TS_REGULAR);
    /* Empty, one and two values. */
    rt_ts(v, 0, CODEC_TS_REGULAR);
    rt_ts(v, 1, CODEC_TS_REGULAR);
    rt_ts(v, 2, CODEC_TS_REGULAR);
    free(v);
}

static void test_ts_irregular(void **state)
{
    enum { N = 3600 };
    int64_t *v = malloc(N * sizeof *v);
    /* 1 Hz with a few milliseconds of jitter: delta-of-delta. */
    for (size_t i = 0; i < N; i++)
        v[i] = 1764000000000000000ll + (int64_t)i * 1000000000ll + (int64_t)(rnd() % 5000000);
    size_t len = rt_ts(v, N, -1);
    assert_int_equal(v[0] ? 1 : 0, 1);
    printf("ts jitter 5ms: %.2f bytes/value\n", (double)len / N);
    assert_true(len < N * 4);
    /* One missing second in an otherwise regular column. */
    for (size_t i = 0; i < N; i++)
        v[i] = 1764000000000000000ll + (int64_t)(i + (i > 100)) * 1000000000ll;
    len = rt_ts(v, N, -1);
    printf("ts one gap: %zu bytes\n", len);
    assert_true(len < 100);
    /* Out of order. */
    for (size_t i = 0; i < N; i++)
        v[i] = 1764000000000000000ll + (int64_t)(rnd() % 1000000000000ll);
    rt_ts(v, N, -1);
    /* Extremes: the deltas overflow int64 and must still round-trip. */
    int64_t ext[] = {INT64_MIN, INT64_MAX, 0, INT64_MIN,    -1,
                     INT64_MAX, INT64_MAX, 1, INT64_MIN + 1};
    rt_ts(ext, sizeof ext / sizeof *ext, CODEC_TS_DELTA);
    int64_t ext2[] = {INT64_MIN, INT64_MAX};
    rt_ts(ext2, 2, CODEC_TS_REGULAR);
    /* Large random. */
    for (size_t i = 0; i < N; i++) v[i] = (int64_t)rnd();
    rt_ts(v, N, CODEC_TS_DELTA);
    free(v);
}

/* ---- ints --------------------------------------------------------------- */

static void test_i64(void **state)
{
    enum { N = 5000 };
    int64_t *v = malloc(N * sizeof *v);
    for (size_t i = 0; i < N; i++) v[i] = -123456789;
    assert_true(rt_i64(v, N, CODEC_I64_CONST) < 8);
    rt_i64(v, 1, CODEC_I64_CONST);
    rt_i64(v, 0, CODEC_I64_PACKED);
    /* A counter. */
    for (size_t i = 0; i < N; i++) v[i] = 1000000 + (int64_t)i;
    size_t len = rt_i64(v, N, -1);
    printf("i64 counter: %zu bytes for %d values\n", len, N);
    assert_true(len < 200);
    /* Small random: packed at ~ 7 bits. */
    for (size_t i = 0; i < N; i++) v[i] = (int64_t)(rnd() % 100) - 50;
    len = rt_i64(v, N, -1);
    assert_true(len < N);
    /* Extremes. */
    int64_t ext[] = {INT64_MIN, INT64_MAX, 0, -1, 1, INT64_MIN, INT64_MIN + 1, INT64_MAX - 1};
    rt_i64(ext, sizeof ext / sizeof *ext, CODEC_I64_PACKED);
    int64_t one[] = {INT64_MIN};
    rt_i64(one, 1, CODEC_I64_CONST);
    /* Large random: no worse than raw plus frame headers. */
    for (size_t i = 0; i < N; i++) v[i] = (int64_t)rnd();
    len = rt_i64(v, N, CODEC_I64_PACKED);
    assert_true(len <= N * 8 + (N / 128 + 1) * 11 + 8);
    /* A repeating pattern: zstd wins over the packed bits. */
    for (size_t i = 0; i < N; i++) v[i] = (int64_t)((i % 17) * 0x123456789ull);
    rt_i64(v, N, CODEC_I64_PACKED | CODEC_ZSTD);
    free(v);
}

/* ---- floats ------------------------------------------------------------- */

static void test_f64_sensor(void **state)
{
    enum { N = 3600 };
    double *v = malloc(N * sizeof *v);
    double x = 21.50;
    for (size_t i = 0; i < N; i++) {
        double step = (double)(1 + rnd() % 5) / 100.0;
        x += rnd() & 1 ? step : -step;
        v[i] = round(x * 100.0) / 100.0;
    }
    size_t len = rt_f64(v, N, -1);
    printf("f64 sensor random walk (0.01, steps 0.01..0.05): %zu bytes, %.3f bytes/value (%s)\n",
           len, (double)len / N, "decimal");
    assert_int_equal(v[0] == v[0], 1);
    thz_buf b = {0};
    assert_int_equal(codec_f64_encode(v, N, &b), THZ_OK);
    assert_int_equal(b.p[0] & 0x7f, CODEC_F64_DECIMAL);
    thz_buf_free(&b);
    assert_true(len < N);
    /* Integers as floats: k = 0. Constant: a few bytes. */
    for (size_t i = 0; i < N; i++) v[i] = (double)(int64_t)(rnd() % 1000);
    rt_f64(v, N, -1);
    for (size_t i = 0; i < N; i++) v[i] = 3.3;
    len = rt_f64(v, N, -1);
    printf("f64 constant: %zu bytes for %d values\n", len, N);
    assert_true(len < 40);
    /* Percentages with 3 decimals (k = 3). */
    for (size_t i = 0; i < N; i++) v[i] = (double)(rnd() % 100000) / 1000.0;
    rt_f64(v, N, -1);
    /* The smallest k is chosen: 2 for hundredths, even when some look like tenths. */
    double h[] = {21.5, 21.52, 21.6, 21.57, 22.0};
    assert_int_equal(codec_f64_encode(h, 5, &b), THZ_OK);
    assert_int_equal(b.p[0], CODEC_F64_DECIMAL);
    assert_int_equal(b.p[1], 2);
    assert_string_equal(codec_name(b.p[0]), "f64-decimal");
    assert_string_equal(codec_name(CODEC_F64_DECIMAL | CODEC_ZSTD), "f64-decimal+zstd");
    assert_string_equal(codec_name(0x7f), "?");
    thz_buf_free(&b);
    rt_f64(h, 5, CODEC_F64_DECIMAL);
    /* One value, no values. */
    rt_f64(v, 1, CODEC_F64_DECIMAL);
    rt_f64(v, 0, CODEC_F64_GORILLA); /* 1 byte: Gorilla needs no k */
    free(v);
}

static void test_f64_special(void **state)
{
    double sp[] = {NAN,
                   -NAN,
                   from_bits(0x7ff0000000000001ull), /* signalling NaN */
                   from_bits(0x7ff8dead0000beefull), /* a NaN payload */
                   from_bits(0xfff0000000000abcull),
                   INFINITY,
                   -INFINITY,
                   -0.0,
                   0.0,
                   DBL_MAX,
                   -DBL_MAX,
                   DBL_MIN,
                   from_bits(1),                     /* smallest denormal */
                   from_bits(0x000fffffffffffffull), /* largest denormal */
                   DBL_EPSILON,
                   0.1 + 0.2,
                   1e300,
                   -1.5};
    size_t n = sizeof sp / sizeof *sp;
    rt_f64(sp, n, CODEC_F64_GORILLA);
    for (size_t i = 0; i < n; i++) rt_f64(&sp[i], 1, -1);
    /* Any one of them makes a decimal column Gorilla. */
    double mix[] = {1.5, 2.25, -0.0, 3.0};
    rt_f64(mix, 4, CODEC_F64_GORILLA);
    double mix2[] = {1.5, 2.25, NAN, 3.0};
    rt_f64(mix2, 4, CODEC_F64_GORILLA);
    double mix3[] = {1.5, 1e19, 3.0}; /* beyond int64 */
    rt_f64(mix3, 3, CODEC_F64_GORILLA);
    double nans[300];
    for (size_t i = 0; i < 300; i++) nans[i] = NAN;
    rt_f64(nans, 300, -1);
    /* Large random bit patterns. */
    enum { N = 4000 };
    double *v = malloc(N * sizeof *v);
    for (size_t i = 0; i < N; i++) v[i] = from_bits(rnd());
    rt_f64(v, N, CODEC_F64_GORILLA);
    /* Full-precision measurements: Gorilla. */
    for (size_t i = 0; i < N; i++) v[i] = 20.0 + sin((double)i / 100.0);
    size_t len = rt_f64(v, N, -1);
    printf("f64 full-precision sine: %.2f bytes/value\n", (double)len / N);
    free(v);
}

/* ---- bools -------------------------------------------------------------- */

static void test_bool(void **state)
{
    enum { N = 1001 };
    bool v[N];
    for (size_t i = 0; i < N; i++) v[i] = true;
    assert_true(rt_bool(v, N, CODEC_BOOL_CONST) <= 2);
    rt_bool(v, 1, CODEC_BOOL_CONST);
    rt_bool(v, 0, CODEC_BOOL_BITMAP);
    v[500] = false;
    rt_bool(v, N, -1);
    for (size_t i = 0; i < N; i++) v[i] = rnd() & 1;
    assert_true(rt_bool(v, N, CODEC_BOOL_BITMAP) == 1 + (N + 7) / 8);
    for (size_t i = 0; i < 9; i++) v[i] = i & 1;
    rt_bool(v, 9, CODEC_BOOL_BITMAP);
    /* A bitmap whose length does not match n. */
    uint8_t bad[] = {CODEC_BOOL_BITMAP, 0xff, 0xff};
    assert_int_equal(codec_bool_decode(bad, 3, 8, v), THZ_ECORRUPT);
    uint8_t bad2[] = {CODEC_BOOL_CONST, 2};
    assert_int_equal(codec_bool_decode(bad2, 2, 8, v), THZ_ECORRUPT);
}

/* ---- strings ------------------------------------------------------------ */

static void test_str(void **state)
{
    enum { N = 2000 };
    const char **s = malloc(N * sizeof *s);
    uint32_t *l = malloc(N * sizeof *l);
    static const char *const states[] = {"idle", "running", "", "error: \x01\x00\xff", "off"};
    static const uint32_t slens[] = {4, 7, 0, 10, 3};
    for (size_t i = 0; i < N; i++) {
        size_t k = rnd() % 5;
        s[i] = states[k];
        l[i] = slens[k];
    }
    size_t len = rt_str(s, l, N, -1);
    printf("str 5 states: %zu bytes for %d values\n", len, N);
    assert_true(len < N / 2);
    thz_buf b = {0};
    assert_int_equal(codec_str_encode(s, l, 100, &b), THZ_OK);
    assert_int_equal(b.p[0] & 0x7f, CODEC_STR_DICT);
    thz_buf_free(&b);
    /* All distinct, with binary bytes: plain. */
    char *pool = malloc((size_t)N * 16);
    for (size_t i = 0; i < N; i++) {
        l[i] = (uint32_t)(rnd() % 16);
        for (size_t j = 0; j < l[i]; j++) pool[i * 16 + j] = (char)rnd();
        if (l[i]) pool[i * 16] = (char)i; /* distinct enough */
        s[i] = pool + i * 16;
    }
    rt_str(s, l, N, -1);
    for (size_t i = 0; i < 50; i++) {
        l[i] = 8;
        memcpy(pool + i * 16, &(uint64_t){rnd()}, 8);
    }
    rt_str(s, l, 50, CODEC_STR_PLAIN);
    /* Empty strings, NULL pointers for them, n = 0 and 1. */
    for (size_t i = 0; i < N; i++) {
        s[i] = NULL;
        l[i] = 0;
    }
    rt_str(s, l, N, -1);
    rt_str(s, l, 1, CODEC_STR_PLAIN);
    rt_str(s, l, 0, CODEC_STR_PLAIN);
    /* A dictionary id out of range. */
    thz_buf arena = {0};
    uint8_t bad[] = {CODEC_STR_DICT,
                     1,
                     0,
                     0,
                     0, /* one string, lengths frame: min 0 width 0 */
                     0,
                     0,
                     1,
                     0x02}; /* ids: min 0, width 1, bits 0,1 */
    const char *os[2];
    uint32_t ol[2];
    assert_int_equal(codec_str_decode(bad, sizeof bad, 2, os, ol, &arena), THZ_ECORRUPT);
    assert_int_equal(arena.len, 0);
    bad[8] = 0x00; /* ids 0,0: valid */
    assert_int_equal(codec_str_decode(bad, sizeof bad, 2, os, ol, &arena), THZ_OK);
    assert_int_equal(ol[0], 0);
    thz_buf_free(&arena);
    free(pool);
    free(s);
    free(l);
}

/* ---- corruption --------------------------------------------------------- */

static void test_corrupt(void **state)
{
    int64_t iv[64];
    double fv[64];
    bool bv[64];
    /* Wrong encodings for the type, unknown encodings, empty input. */
    uint8_t p[] = {CODEC_F64_GORILLA, 0, 0, 0, 0, 0, 0, 0, 0};
    assert_int_equal(codec_ts_decode(p, sizeof p, 1, iv), THZ_ECORRUPT);
    assert_int_equal(codec_i64_decode(p, sizeof p, 1, iv), THZ_ECORRUPT);
    assert_int_equal(codec_f64_decode(p, sizeof p, 1, fv), THZ_OK);
    p[0] = 0x7f;
    assert_int_equal(codec_f64_decode(p, sizeof p, 1, fv), THZ_ECORRUPT);
    assert_int_equal(codec_ts_decode(p, 0, 0, iv), THZ_ECORRUPT);
    /* A regular column whose count is not n. */
    uint8_t r[] = {CODEC_TS_REGULAR, 2, 2, 3};
    assert_int_equal(codec_ts_decode(r, sizeof r, 3, iv), THZ_OK);
    assert_int_equal(iv[2], 3);
    assert_int_equal(codec_ts_decode(r, sizeof r, 4, iv), THZ_ECORRUPT);
    /* A bit width over 64. */
    uint8_t w[] = {CODEC_I64_PACKED, 0, 0, 65};
    assert_int_equal(codec_i64_decode(w, sizeof w, 1, iv), THZ_ECORRUPT);
    /* zstd claiming more than n values can need, or garbage. */
    uint8_t z[] = {CODEC_I64_PACKED | CODEC_ZSTD, 0xff, 0xff, 0xff, 0x7f, 0x28, 0xb5, 0x2f, 0xfd};
    assert_int_equal(codec_i64_decode(z, sizeof z, 1, iv), THZ_ECORRUPT);
    /* Random garbage of every type: refused or decoded, never a crash (ASan). */
    for (int t = 0; t < 20000; t++) {
        uint8_t g[40];
        size_t len = rnd() % sizeof g, n = rnd() % 64;
        for (size_t i = 0; i < len; i++) g[i] = (uint8_t)rnd();
        if (len) g[0] = (uint8_t)(rnd() % 12) | (rnd() & 1 ? 0 : 0x80);
        (void)codec_ts_decode(g, len, n, iv);
        (void)codec_i64_decode(g, len, n, iv);
        (void)codec_f64_decode(g, len, n, fv);
        (void)codec_bool_decode(g, len, n, bv);
        thz_buf a = {0};
        const char *ss[64];
        uint32_t sl[64];
        (void)codec_str_decode(g, len, n, ss, sl, &a);
        thz_buf_free(&a);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ts_regular),  cmocka_unit_test(test_ts_irregular),
        cmocka_unit_test(test_i64),         cmocka_unit_test(test_f64_sensor),
        cmocka_unit_test(test_f64_special), cmocka_unit_test(test_bool),
        cmocka_unit_test(test_str),         cmocka_unit_test(test_corrupt),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
