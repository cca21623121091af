/* tsdb_weak.c - TEMPORARY: weak stand-ins for the engine's functions that
 * ingest calls, so that this branch builds and its parser tests run before
 * branch `engine` is merged. The engine's real (strong) definitions replace
 * them at link time. Delete this file when `engine` is merged. */
#include <stdio.h>
#include <string.h>

#include "tsdb/tsdb.h"

__attribute__((weak)) thz_err tsdb_open(const tsdb_options *o, tsdb **out, char err[TSDB_ERR_LEN])
{
    (void)o;
    *out = NULL;
    snprintf(err, TSDB_ERR_LEN, "the time-series engine is not built in");
    return THZ_EUNSUPPORTED;
}

__attribute__((weak)) void tsdb_close(tsdb *db)
{
    (void)db;
}

__attribute__((weak)) thz_err tsdb_write(tsdb *db, int64_t tenant, const tsdb_point *pts, size_t n,
                                         tsdb_done_fn done, void *ctx, char err[TSDB_ERR_LEN])
{
    snprintf(err, TSDB_ERR_LEN, "the time-series engine is not built in");
    return THZ_EUNSUPPORTED;
}

/* Sorted "k=v,k=v" with ',', '=' and '\' escaped by a backslash. */
__attribute__((weak)) long tsdb_tags_canon(const char *const *keys, const size_t *klen,
                                           const char *const *vals, const size_t *vlen, size_t n,
                                           char *out, size_t outlen)
{
    size_t idx[256];
    if (n > 256) return -1;
    for (size_t i = 0; i < n; i++) {
        if (klen[i] < 1 || klen[i] > 128 || vlen[i] > 256) return -1;
        size_t j = i;
        while (j > 0) {
            size_t a = idx[j - 1], m = klen[a] < klen[i] ? klen[a] : klen[i];
            int c = memcmp(keys[a], keys[i], m);
            if (c < 0 || (c == 0 && klen[a] < klen[i])) break;
            if (c == 0 && klen[a] == klen[i]) return -1;
            idx[j] = idx[j - 1];
            j--;
        }
        idx[j] = i;
    }
    size_t o = 0;
    for (size_t k = 0; k < n; k++) {
        size_t i = idx[k];
        const char *s[2] = {keys[i], vals[i]};
        size_t l[2] = {klen[i], vlen[i]};
        if (k) {
            if (o >= outlen) return -1;
            out[o++] = ',';
        }
        for (int e = 0; e < 2; e++) {
            if (e) {
                if (o >= outlen) return -1;
                out[o++] = '=';
            }
            for (size_t c = 0; c < l[e]; c++) {
                char ch = s[e][c];
                if (ch == ',' || ch == '=' || ch == '\\') {
                    if (o >= outlen) return -1;
                    out[o++] = '\\';
                }
                if (o >= outlen) return -1;
                out[o++] = ch;
            }
        }
    }
    return (long)o;
}
