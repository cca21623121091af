/* crc32c.h - CRC-32C (Castagnoli), the checksum of every record thinghz stores. */
#ifndef THZ_CRC32C_H
#define THZ_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* CRC-32C of p[0..n), continuing from crc (0 to start). Thread-safe. */
uint32_t thz_crc32c(uint32_t crc, const void *p, size_t n);

#endif
