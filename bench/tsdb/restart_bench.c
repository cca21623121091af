/* restart_bench.c - measures what a restart of the tsdb costs with a large
 * head (issue 5, the "Scale" surge): WAL replay after a crash and the
 * write-out of the head at a clean shutdown.
 *
 *   restart_bench gen DIR [-d DEVICES] [-s SECONDS]
 *       writes DEVICES x 4 float metrics at 1 Hz for SECONDS (one tsdb_write
 *       of 4 points per device and second, as the telemetry path does; the
 *       default 19,000 x 300 s is 22.8 M points over 76,000 series, the
 *       scale benchmark's 5 minutes), waits until the WAL thread has written
 *       everything and exits without tsdb_close: the state kill -9 leaves.
 *   restart_bench open DIR
 *       times tsdb_open (the replay) and exits without closing (kill -9
 *       again), so it can be repeated on the same WAL.
 *   restart_bench close DIR
 *       opens (replay), then times tsdb_close (the clean shutdown: the head
 *       is written to blocks) and a second tsdb_open (the clean restart).
 *
 * Prints one JSON line. Build (after make):
 * cc -O2 -Isrc bench/tsdb/restart_bench.c build/libthinghz.a -lzstd -lpthread -lm */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "tsdb/tsdb.h"
#include "../common/bench_common.h"

static const char *const mets[4] = {"temperature", "humidity", "pressure", "battery"};
static const int64_t T0 = 1699999200ll * 1000000000ll; /* an hour boundary */

static uint64_t rnd(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static tsdb *open_db(const char *dir, double *wall, double *cpu)
{
    tsdb_options o = {.dir = dir, .fsync = TSDB_FSYNC_EVERYSEC};
    tsdb *db = NULL;
    char err[TSDB_ERR_LEN] = "";
    double t = bench_now_s(), c = bench_cpu_s();
    if (tsdb_open(&o, &db, err)) {
        fprintf(stderr, "tsdb_open %s: %s\n", dir, err);
        exit(1);
    }
    *wall = bench_now_s() - t;
    *cpu = bench_cpu_s() - c;
    return db;
}

static int gen(const char *dir, int ndev, int nsec)
{
    double ow, oc;
    tsdb *db = open_db(dir, &ow, &oc);
    int64_t *walk = malloc((size_t)ndev * 4 * sizeof *walk);
    char(*names)[16] = malloc((size_t)ndev * sizeof *names);
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < ndev; i++) {
        snprintf(names[i], sizeof names[i], "dev-%05d", i);
        for (int f = 0; f < 4; f++) walk[i * 4 + f] = 2000 + (int64_t)(rnd(&rng) % 1000);
    }
    tsdb_point p[4];
    memset(p, 0, sizeof p);
    for (int f = 0; f < 4; f++) {
        p[f].metric = mets[f];
        p[f].metric_len = strlen(mets[f]);
        p[f].v.type = TSDB_FLOAT;
    }
    char err[TSDB_ERR_LEN];
    double t = bench_now_s();
    for (int s = 0; s < nsec; s++) {
        int64_t ts = T0 + (int64_t)s * 1000000000ll;
        for (int i = 0; i < ndev; i++) {
            for (int f = 0; f < 4; f++) {
                uint64_t r = rnd(&rng);
                int64_t step = 1 + (int64_t)(r % 5);
                walk[i * 4 + f] += (r >> 32) & 1 ? step : -step;
                p[f].device = names[i];
                p[f].device_len = strlen(names[i]);
                p[f].ts = ts;
                p[f].v.u.f = (double)walk[i * 4 + f] / 100.0;
            }
            thz_err rc;
            while ((rc = tsdb_write(db, 1, p, 4, NULL, NULL, err)) == THZ_EQUOTA)
                usleep(1000); /* WAL backlog: let the WAL thread catch up */
            if (rc) {
                fprintf(stderr, "tsdb_write: %s\n", err);
                return 1;
            }
        }
    }
    double wt = bench_now_s() - t;
    tsdb_stats st;
    for (int i = 0; i < 6000; i++) { /* until the WAL thread wrote it all (page cache) */
        tsdb_get_stats(db, &st);
        if (!st.wal_pending_bytes) break;
        usleep(10000);
    }
    printf("{\"mode\":\"gen\",\"devices\":%d,\"seconds\":%d,\"series\":%" PRIu64
           ",\"points\":%" PRIu64 ",\"wal_bytes\":%" PRIu64 ",\"write_s\":%.2f}\n",
           ndev, nsec, st.series, st.head_points, st.wal_bytes, wt);
    fflush(stdout);
    _exit(0); /* no tsdb_close: what kill -9 leaves (the WAL is in the page cache) */
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: restart_bench gen|open|close DIR [-d DEVICES] [-s SECONDS]\n");
        return 2;
    }
    thz_log_level = 1; /* errors and warnings only */
    const char *mode = argv[1], *dir = argv[2];
    int ndev = 19000, nsec = 300, c;
    optind = 3;
    while ((c = getopt(argc, argv, "d:s:")) != -1) {
        if (c == 'd')
            ndev = atoi(optarg);
        else if (c == 's')
            nsec = atoi(optarg);
        else
            return 2;
    }
    if (!strcmp(mode, "gen")) return gen(dir, ndev, nsec);
    double ow, oc;
    tsdb *db = open_db(dir, &ow, &oc);
    tsdb_stats st;
    tsdb_get_stats(db, &st);
    if (!strcmp(mode, "open")) {
        printf("{\"mode\":\"open\",\"series\":%" PRIu64 ",\"head_points\":%" PRIu64
               ",\"open_s\":%.3f,\"open_cpu_s\":%.3f,\"mpoints_per_s\":%.2f}\n",
               st.series, st.head_points, ow, oc, ow > 0 ? st.head_points / ow / 1e6 : 0);
        fflush(stdout);
        _exit(0); /* a crash again: the WAL stays for the next run */
    }
    double t = bench_now_s(), cc = bench_cpu_s();
    tsdb_close(db);
    double cw = bench_now_s() - t, ccpu = bench_cpu_s() - cc;
    double rw, rc;
    db = open_db(dir, &rw, &rc);
    tsdb_stats st2;
    tsdb_get_stats(db, &st2);
    printf("{\"mode\":\"close\",\"series\":%" PRIu64 ",\"head_points\":%" PRIu64
           ",\"open_s\":%.3f,\"close_s\":%.3f,\"close_cpu_s\":%.3f,\"reopen_s\":%.3f"
           ",\"reopen_head_points\":%" PRIu64 ",\"blocks\":%" PRIu64 "}\n",
           st.series, st.head_points, ow, cw, ccpu, rw, st2.head_points, st2.blocks);
    tsdb_close(db);
    return 0;
}
