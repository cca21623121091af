/* fuzz_tsdb_block.c - libFuzzer target for the tsdb block file reader
 * (src/tsdb/tsdb_block.c): the input becomes a block file, which
 * tsdb_block_load must load or refuse with THZ_ECORRUPT; every entry of a
 * loaded block is then decoded (points and 1-minute rollup cells), which
 * must succeed or fail cleanly, never read outside what it was given.
 *
 * The first input byte is a mode: with bit 0 set, the sections of the rest
 * (framed [u32 CRC-32C][u32 len][payload] one after the other from offset
 * 8, after the header) get their CRCs recomputed before the file is
 * written, so that the fuzzer reaches the footer and column decoders
 * instead of stopping at checksums. Seeds are real blocks written by the
 * engine. */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/crc32c.h"
#include "core/log.h"
#include "tsdb/tsdb_int.h"

static char path[96];

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

/* Recomputes the CRC of every whole frame from offset 8 up to the trailer. */
static void fix_crcs(uint8_t *f, size_t n)
{
    if (n < 24) return;
    size_t end = n - 16, o = 8;
    while (o + 8 <= end) {
        uint32_t len = get32(f + o + 4);
        if (len > end - o - 8) break;
        put32(f + o, thz_crc32c(0, f + o + 4, (size_t)len + 4));
        o += 8 + (size_t)len;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    if (!path[0]) {
        thz_log_level = -1; /* corrupt input is the point: keep the warnings quiet */
        snprintf(path, sizeof path, "/tmp/fuzz_tsdb_block.%d.blk", (int)getpid());
    }
    size_t n = size - 1;
    uint8_t *f = malloc(n ? n : 1);
    if (!f) return 0;
    memcpy(f, data + 1, n);
    if (data[0] & 1) fix_crcs(f, n);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        free(f);
        return 0;
    }
    ssize_t w = write(fd, f, n);
    close(fd);
    free(f);
    if (w != (ssize_t)n) return 0;

    tsdb_block *b = NULL;
    if (tsdb_block_load(path, &b) == THZ_OK) {
        for (size_t i = 0; i < b->ne; i++) {
            const tsdb_bentry *e = &b->e[i];
            int64_t *ts = NULL;
            uint64_t *v = NULL;
            size_t np = 0;
            thz_buf arena = {0};
            if (tsdb_block_read(b, e, &ts, &v, &np, &arena) == THZ_OK) {
                free(ts);
                free(v);
            }
            thz_buf_free(&arena);
            tsdb_agg *cells = NULL;
            int64_t *starts = NULL;
            size_t nc = 0;
            if (e->roll_len && tsdb_block_rollup(b, e, &cells, &starts, &nc) == THZ_OK) {
                free(cells);
                free(starts);
            }
            /* load refuses ids out of order, so the index finds its own */
            if (tsdb_block_find(b, e->id) != e) abort();
        }
        tsdb_block_unref(b);
    }
    unlink(path);
    return 0;
}
