/* bench_common.h - what the standalone load generators share (bench/mqtt/loadgen.c,
 * bench/scale/fleet.c): MQTT wire encoding (big-endian 16-bit integers, variable byte
 * integers, length-prefixed strings) and the latency histogram. Header-only and free of any
 * dependency on src/, so that each generator still builds with one gcc command (see the run
 * script next to it): `#include "../common/bench_common.h"`. */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

/* Writes v as a big-endian 16-bit integer at p. */
static inline void put16(uint8_t *p, unsigned v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

/* Encodes an MQTT variable byte integer; returns its length (1..4). */
static inline size_t put_varint(uint8_t *p, size_t v)
{
    size_t n = 0;
    do {
        uint8_t b = v & 0x7f;
        v >>= 7;
        p[n++] = b | (v ? 0x80 : 0);
    } while (v && n < 4);
    return n;
}

/* Decodes a variable byte integer from [p, p+avail). Returns its length, 0 if more input is
 * needed, or -1 if it is malformed (more than four bytes). */
static inline int get_varint(const uint8_t *p, size_t avail, size_t *pValue)
{
    size_t v = 0;
    for (int i = 0; i < 4; i++) {
        if ((size_t)i >= avail) return 0;
        v |= (size_t)(p[i] & 0x7f) << (7 * i);
        if (!(p[i] & 0x80)) {
            *pValue = v;
            return i + 1;
        }
    }
    return -1;
}

/* Writes the n bytes of z as an MQTT string (16-bit length, then the bytes); returns n + 2. */
static inline size_t put_str(uint8_t *p, const char *z, size_t n)
{
    put16(p, (unsigned)n);
    memcpy(p + 2, z, n);
    return n + 2;
}

/* ---- latency histogram (HDR-style: 64 linear sub-buckets per power of two, < 1.6% error) -- */

#define H_SUB_BITS 7
#define H_HALF     (1u << (H_SUB_BITS - 1))
#define H_BUCKETS  ((64 - H_SUB_BITS + 1) * H_HALF + H_HALF * 2)

static inline unsigned hist_index(uint64_t v)
{
    if (v < (1u << H_SUB_BITS)) return (unsigned)v;
    unsigned shift = (unsigned)(63 - __builtin_clzll(v)) - (H_SUB_BITS - 1);
    return shift * H_HALF + (unsigned)(v >> shift);
}

/* The highest value that maps to bucket i (what HDR calls the highest equivalent value). */
static inline uint64_t hist_value(unsigned i)
{
    if (i < (1u << H_SUB_BITS)) return i;
    unsigned shift = i / H_HALF - 1;
    uint64_t sub = i - shift * H_HALF;
    return ((sub + 1) << shift) - 1;
}

/* Wall-clock seconds (monotonic). */
static inline double bench_now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* CPU seconds of the whole process (all threads): on a VM with CPU steal
 * the wall clock understates what the code does. */
static inline double bench_cpu_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

#endif
