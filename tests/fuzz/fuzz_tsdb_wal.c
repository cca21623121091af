/* fuzz_tsdb_wal.c - libFuzzer target for the tsdb WAL replay: the input
 * becomes a WAL segment of an empty database, which tsdb_open must always
 * open (a bad tail is truncated, never a refusal or a crash). A probe point
 * written after the open must then survive a close and a second open.
 *
 * The first input byte is a mode: with bit 0 set, the CRCs of the records
 * in the rest are recomputed before the file is written, so that the fuzzer
 * reaches the payload parser (series definitions, points of every type)
 * instead of stopping at checksums. */
#include <dirent.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/crc32c.h"
#include "core/log.h"
#include "tsdb/tsdb.h"

static char dir[96];

static void rm_tree(const char *p)
{
    DIR *d = opendir(p);
    if (!d) {
        unlink(p);
        return;
    }
    struct dirent *e;
    char q[512];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(q, sizeof q, "%s/%s", p, e->d_name);
        rm_tree(q);
    }
    closedir(d);
    rmdir(p);
}

static void cleanup(void)
{
    rm_tree(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    thz_log_level = -1; /* corrupt input is the point: keep the warnings quiet */
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(dir, sizeof dir, "%s/thz-fuzz-tsdb-XXXXXX", base);
    if (!mkdtemp(dir)) abort();
    atexit(cleanup);
    return 0;
}

static void le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static bool probe_cb(void *ctx, const int64_t *ts, const tsdb_value *v, size_t n)
{
    int *found = ctx;
    for (size_t i = 0; i < n; i++)
        if (ts[i] == 123456789 && v[i].type == TSDB_FLOAT && v[i].u.f == 42.5) (*found)++;
    return true;
}

static bool find_cb(void *ctx, const tsdb_series *s)
{
    *(uint64_t *)ctx = s->id;
    return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    uint8_t mode = data[0];
    size--;
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) abort();
    if (size) memcpy(buf, data + 1, size);
    if (mode & 1) {
        size_t off = 0;
        while (size - off >= 8) {
            uint32_t len = get32(buf + off + 4);
            if (len > size - off - 8) break;
            le32(buf + off, thz_crc32c(0, buf + off + 4, 4 + (size_t)len));
            off += 8 + (size_t)len;
        }
    }
    rm_tree(dir);
    char p[256];
    if (mkdir(dir, 0755) < 0) abort();
    snprintf(p, sizeof p, "%s/wal", dir);
    if (mkdir(p, 0755) < 0) abort();
    snprintf(p, sizeof p, "%s/wal/0000000000000001.wal", dir);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) abort();
    if (size && write(fd, buf, size) != (ssize_t)size) abort();
    close(fd);
    free(buf);

    tsdb_options o = {.dir = dir, .fsync = TSDB_FSYNC_EVERYSEC};
    tsdb *db = NULL;
    char err[TSDB_ERR_LEN];
    if (tsdb_open(&o, &db, err) != THZ_OK || !db) abort();
    tsdb_point pt = {.device = "fuzz-probe",
                     .device_len = 10,
                     .metric = "m",
                     .metric_len = 1,
                     .ts = 123456789,
                     .v = {.type = TSDB_FLOAT, .u.f = 42.5}};
    /* The input may have defined the probe's series with another type, or
     * filled the tenant: a refusal is fine, a crash is not. */
    thz_err wrc = tsdb_write(db, -77, &pt, 1, NULL, NULL, err);
    tsdb_close(db);

    db = NULL;
    if (tsdb_open(&o, &db, err) != THZ_OK || !db) abort();
    if (wrc == THZ_OK) {
        tsdb_matcher m[2] = {{"device", TSDB_EQ, "fuzz-probe"}, {"metric", TSDB_EQ, "m"}};
        uint64_t id = 0;
        if (tsdb_series_select(db, -77, m, 2, find_cb, &id) != THZ_OK || !id) abort();
        int found = 0;
        if (tsdb_read(db, -77, id, 0, INT64_MAX, probe_cb, &found) != THZ_OK || found != 1) abort();
    }
    tsdb_close(db);
    return 0;
}
