/* flush.c - cuts a stopped thinghz's tsdb head into blocks, for the
 * time-series benchmark (bench/tsdb/run): opens DIR (replaying its WAL),
 * calls tsdb_flush (every point into blocks, WAL checkpointed), closes, and
 * prints one JSON line with the engine's stats before and after. What the
 * running daemon does on its own once a 1-hour window has ended, done now so
 * that the bytes on disk are those of blocks, not of the WAL.
 *
 *   flush DIR      (DIR: the daemon's DATA_DIR/tsdb; the daemon must be stopped)
 *
 * Build: cc -O2 -Isrc bench/tsdb/flush.c build/libthinghz.a -lzstd -lpthread -lm */
#include <inttypes.h>
#include <stdio.h>
#include <time.h>

#include "core/log.h"
#include "tsdb/tsdb.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: flush DATA_DIR/tsdb\n");
        return 2;
    }
    thz_log_level = 1; /* errors and warnings only */
    tsdb_options o = {.dir = argv[1], .fsync = TSDB_FSYNC_EVERYSEC};
    tsdb *db = NULL;
    char err[TSDB_ERR_LEN] = "";
    double t0 = now_s();
    thz_err rc = tsdb_open(&o, &db, err);
    if (rc) {
        fprintf(stderr, "flush: %s: %s\n", argv[1], err[0] ? err : thz_strerror(rc));
        return 1;
    }
    double t1 = now_s();
    tsdb_stats a, b;
    tsdb_get_stats(db, &a);
    rc = tsdb_flush(db);
    double t2 = now_s();
    tsdb_get_stats(db, &b);
    tsdb_close(db);
    if (rc) {
        fprintf(stderr, "flush: %s\n", thz_strerror(rc));
        return 1;
    }
    printf("{\"open_s\": %.3f, \"flush_s\": %.3f, \"series\": %" PRIu64
           ", \"head_points_before\": %" PRIu64 ", \"head_points_after\": %" PRIu64
           ", \"blocks\": %" PRIu64 ", \"disk_bytes_before\": %" PRIu64
           ", \"disk_bytes_after\": %" PRIu64 ", \"wal_bytes_after\": %" PRIu64 "}\n",
           t1 - t0, t2 - t1, b.series, a.head_points, b.head_points, b.blocks, a.disk_bytes,
           b.disk_bytes, b.wal_bytes);
    return 0;
}
