/* codec.h - the column encodings of tsdb blocks (private to src/tsdb/).
 *
 * Every encoder appends a self-describing column to out: its first byte names
 * the encoding chosen (so decoders need only the bytes and the count), and
 * the encoder picks the smallest of the encodings it knows for the data:
 *   timestamps  regular (start, step, count) | delta-of-delta, zigzag, bit-packed
 *   floats      decimal: scaled to integers by 10^k (k = 0..9, when every value
 *               round-trips exactly), then delta + zigzag + bit-packed |
 *               Gorilla XOR (any other data: NaN, ±Inf, -0.0, full precision)
 *   ints        delta + zigzag + bit-packed (frame of reference)
 *   bools       bitmap
 *   strings     dictionary (ids bit-packed) | plain length-prefixed
 * and, on top of any column, zstd when it makes the column smaller.
 *
 * Decoders are total: any byte string either decodes to exactly n values or
 * returns THZ_ECORRUPT; they never read past len or write past n values
 * (fuzzed). All functions are pure and thread-safe. */
#ifndef THZ_TSDB_CODEC_H
#define THZ_TSDB_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "core/err.h"

/* The first byte of every column: the encoding (low 7 bits) and whether the
 * rest is a zstd frame of what would otherwise follow that byte (CODEC_ZSTD).
 * Written to disk: never renumber. */
enum codec_enc {
    CODEC_TS_REGULAR = 1,  /* start, step, count (varints) */
    CODEC_TS_DELTA = 2,    /* integer stream (below) of the timestamps */
    CODEC_I64_CONST = 3,   /* one zigzag varint: every value equal */
    CODEC_I64_PACKED = 4,  /* integer stream */
    CODEC_F64_DECIMAL = 5, /* k (1 byte, 0..9), integer stream of v*10^k */
    CODEC_F64_GORILLA = 6, /* Gorilla XOR bit stream */
    CODEC_BOOL_CONST = 7,  /* one byte 0/1: every value equal */
    CODEC_BOOL_BITMAP = 8, /* ceil(n/8) bytes, value i at bit i%8 of byte i/8 */
    CODEC_STR_PLAIN = 9,   /* integer stream of lengths, then the bytes */
    CODEC_STR_DICT = 10,   /* varint d, lengths and bytes of d strings, stream of ids */
    CODEC_ZSTD = 0x80      /* flag: varint raw size, then a zstd frame of the rest */
};
/* An integer stream: order o (1 byte, 0..2: raw, delta, delta-of-delta, all
 * in uint64 wraparound), the first min(o, n) transformed values as zigzag
 * varints, then frames of up to 128 zigzagged values: varint minimum (frame
 * of reference), 1 byte bit width (0..64), the values minus the minimum
 * bit-packed LSB first, padded to a byte. */

/* Above this size a string column is never zstd-compressed, so that a
 * decoder can refuse to inflate more than this (strings have no size bound
 * that n implies). */
#define CODEC_ZSTD_STR_MAX (64u << 20)

/* A static name for the encoding byte of a column ("ts-regular",
 * "f64-decimal+zstd"...), for tests, stats and logs. */
const char *codec_name(uint8_t first_byte);

/* Timestamps, any order (sorted is what compresses). */
thz_err codec_ts_encode(const int64_t *ts, size_t n, thz_buf *out);
thz_err codec_ts_decode(const uint8_t *p, size_t len, size_t n, int64_t *out);

/* float64; bit-exact round trip (NaN payloads, -0.0 included). */
thz_err codec_f64_encode(const double *v, size_t n, thz_buf *out);
thz_err codec_f64_decode(const uint8_t *p, size_t len, size_t n, double *out);

thz_err codec_i64_encode(const int64_t *v, size_t n, thz_buf *out);
thz_err codec_i64_decode(const uint8_t *p, size_t len, size_t n, int64_t *out);

thz_err codec_bool_encode(const bool *v, size_t n, thz_buf *out);
thz_err codec_bool_decode(const uint8_t *p, size_t len, size_t n, bool *out);

/* Strings: n (pointer, length) pairs; s[i] may be NULL when lens[i] is 0.
 * Decoding fills s/lens pointing into arena (a buffer the decoder appends
 * the string bytes to; the pointers are fixed up after the last append, so
 * they stay valid while arena lives and is not appended to again). Values
 * equal in a dictionary column share their bytes. On failure arena is left
 * as it was. Never NUL-terminated. */
thz_err codec_str_encode(const char *const *s, const uint32_t *lens, size_t n, thz_buf *out);
thz_err codec_str_decode(const uint8_t *p, size_t len, size_t n, const char **s, uint32_t *lens,
                         thz_buf *arena);

#endif
