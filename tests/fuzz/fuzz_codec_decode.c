/* fuzz_codec_decode.c - libFuzzer target for the tsdb column decoders
 * (src/tsdb/codec.c): the first byte picks the column type (low 3 bits, mod
 * 5) and the count n (the rest, times 9, so that several 128-value frames
 * are reached); the other bytes are the column. Decoders must return OK or
 * THZ_ECORRUPT, write no more than n values (the output arrays are exactly n
 * long, so ASan sees any overrun) and point strings inside their arena. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tsdb/codec.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    unsigned type = (data[0] & 7) % 5;
    size_t n = (size_t)(data[0] >> 3) * 9;
    const uint8_t *p = data + 1;
    size_t len = size - 1;
    /* A copy of exactly len bytes, so that a read past len is caught. */
    uint8_t *col = malloc(len ? len : 1);
    if (len) memcpy(col, p, len);
    thz_err rc;
    switch (type) {
    case 0: {
        int64_t *o = malloc((n ? n : 1) * sizeof *o);
        rc = codec_ts_decode(col, len, n, o);
        free(o);
        break;
    }
    case 1: {
        int64_t *o = malloc((n ? n : 1) * sizeof *o);
        rc = codec_i64_decode(col, len, n, o);
        free(o);
        break;
    }
    case 2: {
        double *o = malloc((n ? n : 1) * sizeof *o);
        rc = codec_f64_decode(col, len, n, o);
        free(o);
        break;
    }
    case 3: {
        bool *o = malloc(n ? n : 1);
        rc = codec_bool_decode(col, len, n, o);
        if (rc == THZ_OK)
            for (size_t i = 0; i < n; i++)
                if (*(uint8_t *)&o[i] > 1) abort(); /* a bool is 0 or 1 */
        free(o);
        break;
    }
    default: {
        const char **s = malloc((n ? n : 1) * sizeof *s);
        uint32_t *l = malloc((n ? n : 1) * sizeof *l);
        thz_buf arena = {0};
        rc = codec_str_decode(col, len, n, s, l, &arena);
        if (rc == THZ_OK) {
            volatile uint8_t sink = 0;
            for (size_t i = 0; i < n; i++) {
                if (l[i] && ((const uint8_t *)s[i] < arena.p ||
                             (const uint8_t *)s[i] + l[i] > arena.p + arena.len))
                    abort();
                for (uint32_t j = 0; j < l[i]; j++) sink ^= (uint8_t)s[i][j];
            }
            (void)sink;
        } else if (arena.len != 0) {
            abort(); /* a failed decode leaves the arena as it was */
        }
        thz_buf_free(&arena);
        free(s);
        free(l);
        break;
    }
    }
    if (rc != THZ_OK && rc != THZ_ECORRUPT) abort();
    free(col);
    return 0;
}
