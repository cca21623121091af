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

/* Strings: n (pointer, length) pairs. Decoding fills ptrs/lens pointing into
 * arena (a buffer the decoder appends the string bytes to; the pointers are
 * fixed up after the last append, so they stay valid while arena lives). */
thz_err codec_str_encode(const char *const *s, const uint32_t *lens, size_t n, thz_buf *out);
thz_err codec_str_decode(const uint8_t *p, size_t len, size_t n, const char **s, uint32_t *lens,
                         thz_buf *arena);

#endif
