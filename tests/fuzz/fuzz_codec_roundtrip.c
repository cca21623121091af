/* fuzz_codec_roundtrip.c - libFuzzer target for the tsdb column encoders
 * (src/tsdb/codec.c): the input is read as a column of values, encoded,
 * decoded, and must come back bit-exact (abort on any mismatch). The first
 * byte picks the type (mod 5) and a shape: raw 8-byte values, or running
 * sums of small steps (what sensors send: regular timestamps, decimals), so
 * that every encoding is reached. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tsdb/codec.h"

static const double p10[10] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9};

/* Values from the input: shape 0 raw 8-byte words; shape 1 running sums of
 * signed bytes (with a raw 8-byte start); shape 2 every value the same. */
static size_t read_ints(const uint8_t *p, size_t len, unsigned shape, uint64_t *out)
{
    size_t n = 0;
    if (shape == 0) {
        for (; (n + 1) * 8 <= len; n++) memcpy(&out[n], p + n * 8, 8);
    } else if (shape == 1) {
        if (len < 8) return 0;
        uint64_t x;
        memcpy(&x, p, 8);
        for (size_t i = 8; i < len; i++) out[n++] = x += (uint64_t)(int64_t)(int8_t)p[i];
    } else {
        uint64_t x = 0;
        memcpy(&x, p, len < 8 ? len : 8);
        n = len;
        for (size_t i = 0; i < n; i++) out[i] = x;
    }
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    unsigned type = data[0] % 5, shape = (data[0] / 5) % 3, k = (data[0] / 15) % 10;
    const uint8_t *p = data + 1;
    size_t len = size - 1;
    uint64_t *u = malloc((len + 1) * sizeof *u);
    size_t n = read_ints(p, len, shape, u);
    thz_buf b = {0};
    switch (type) {
    case 0:
    case 1: {
        int64_t *v = (int64_t *)u, *o = malloc((n + 1) * sizeof *o);
        thz_err rc = type ? codec_i64_encode(v, n, &b) : codec_ts_encode(v, n, &b);
        if (rc) abort();
        rc = type ? codec_i64_decode(b.p, b.len, n, o) : codec_ts_decode(b.p, b.len, n, o);
        if (rc || (n && memcmp(o, v, n * sizeof *v))) abort();
        free(o);
        break;
    }
    case 2: {
        double *v = malloc((n + 1) * sizeof *v), *o = malloc((n + 1) * sizeof *o);
        /* Shape 0: raw bit patterns (NaNs, denormals...); else decimals. */
        for (size_t i = 0; i < n; i++) {
            if (shape == 0)
                memcpy(&v[i], &u[i], 8);
            else
                v[i] = (double)(int64_t)u[i] / p10[k];
        }
        if (codec_f64_encode(v, n, &b)) abort();
        if (codec_f64_decode(b.p, b.len, n, o) || (n && memcmp(o, v, n * sizeof *v))) abort();
        free(v);
        free(o);
        break;
    }
    case 3: {
        bool *v = malloc(len * 8 + 1), *o = malloc(len * 8 + 1);
        size_t m = shape == 2 ? len : len * 8;
        for (size_t i = 0; i < m; i++) v[i] = shape == 2 ? p[0] & 1 : (p[i / 8] >> (i % 8)) & 1;
        if (codec_bool_encode(v, m, &b)) abort();
        if (codec_bool_decode(b.p, b.len, m, o)) abort();
        for (size_t i = 0; i < m; i++)
            if (o[i] != v[i]) abort();
        free(v);
        free(o);
        break;
    }
    default: {
        /* Strings: the input split at each byte equal to the second one
         * (shape 1: few distinct values come out; else lengths from bytes). */
        const char **s = malloc((len + 1) * sizeof *s), **os = malloc((len + 1) * sizeof *os);
        uint32_t *l = malloc((len + 1) * sizeof *l), *ol = malloc((len + 1) * sizeof *ol);
        size_t m = 0;
        if (shape == 1 && len) {
            size_t start = 1;
            for (size_t i = 1; i <= len; i++)
                if (i == len || p[i] == p[0]) {
                    s[m] = (const char *)p + start;
                    l[m++] = (uint32_t)(i - start);
                    start = i + 1;
                }
        } else {
            for (size_t i = 0; i < len;) {
                size_t sl = p[i] % 8;
                if (sl > len - i - 1) sl = len - i - 1;
                s[m] = sl ? (const char *)p + i + 1 : NULL;
                l[m++] = (uint32_t)sl;
                i += 1 + sl;
            }
        }
        thz_buf arena = {0};
        if (codec_str_encode(s, l, m, &b)) abort();
        if (codec_str_decode(b.p, b.len, m, os, ol, &arena)) abort();
        for (size_t i = 0; i < m; i++)
            if (ol[i] != l[i] || (l[i] && memcmp(os[i], s[i], l[i]))) abort();
        thz_buf_free(&arena);
        free(s);
        free(os);
        free(l);
        free(ol);
        break;
    }
    }
    thz_buf_free(&b);
    free(u);
    return 0;
}
