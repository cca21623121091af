/* engine_bench.c - measures the tsdb engine alone (no HTTP, no parsing):
 * tsdb_write points/s from 1 and 2 threads, tsdb_flush time, and bytes per
 * point on disk after the flush, for the benchmark's data shape: DEVICES
 * devices x 4 float metrics at 1 Hz, each a random walk in steps of
 * 0.01..0.05 rounded to 0.01 (as bench/tsdb/gen.c), one tsdb_write per
 * device and second (4 points, as the telemetry path does).
 *
 *   build/bench/engine_bench [-d DEVICES] [-s SECONDS] [-f always|everysec] [-D DIR]
 *
 * Build: cc -O2 -Isrc bench/tsdb/engine_bench.c build/libthinghz.a -lzstd -lpthread -lm
 * (make builds the library). Prints one JSON line per run. */
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "tsdb/tsdb.h"
#include "../common/bench_common.h"

static int ndev = 1000, nsec = 3600;
static tsdb_fsync mode = TSDB_FSYNC_EVERYSEC;
static const char *basedir = "/tmp";
static const char *const mets[4] = {"temperature", "humidity", "pressure", "battery"};
static const int64_t T0 = 1699999200ll * 1000000000ll; /* an hour boundary */

/* CPU time of the whole process (all threads): on a VM with CPU steal the
 * wall clock understates what the code does. */
typedef struct job {
    tsdb *db;
    int d0, d1; /* devices [d0, d1) */
    uint64_t rng;
} job;

static uint64_t rnd(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void *writer(void *arg)
{
    job *j = arg;
    int n = j->d1 - j->d0;
    int64_t *walk = malloc((size_t)n * 4 * sizeof *walk); /* hundredths */
    char(*names)[16] = malloc((size_t)n * sizeof *names);
    for (int i = 0; i < n; i++) {
        snprintf(names[i], sizeof names[i], "dev-%05d", j->d0 + i);
        for (int f = 0; f < 4; f++) walk[i * 4 + f] = 2000 + (int64_t)(rnd(&j->rng) % 1000);
    }
    tsdb_point p[4];
    for (int f = 0; f < 4; f++) {
        p[f].metric = mets[f];
        p[f].metric_len = strlen(mets[f]);
        p[f].tags = NULL;
        p[f].tags_len = 0;
        p[f].v.type = TSDB_FLOAT;
    }
    char err[TSDB_ERR_LEN];
    for (int s = 0; s < nsec; s++) {
        int64_t ts = T0 + (int64_t)s * 1000000000ll;
        for (int i = 0; i < n; i++) {
            for (int f = 0; f < 4; f++) {
                uint64_t r = rnd(&j->rng);
                int64_t step = 1 + (int64_t)(r % 5);
                walk[i * 4 + f] += (r >> 32) & 1 ? step : -step;
                p[f].device = names[i];
                p[f].device_len = 9;
                p[f].ts = ts;
                p[f].v.u.f = (double)walk[i * 4 + f] / 100.0;
            }
            if (tsdb_write(j->db, 1, p, 4, NULL, NULL, err)) {
                fprintf(stderr, "tsdb_write: %s\n", err);
                exit(1);
            }
        }
    }
    free(walk);
    free(names);
    return NULL;
}

static void run(int threads)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s/thz-engine-bench-%d-%d", basedir, (int)getpid(), threads);
    tsdb_options o = {.dir = dir, .fsync = mode};
    tsdb *db;
    char err[TSDB_ERR_LEN];
    if (tsdb_open(&o, &db, err)) {
        fprintf(stderr, "tsdb_open: %s\n", err);
        exit(1);
    }
    pthread_t th[8];
    job jobs[8];
    double t = bench_now_s(), c = bench_cpu_s();
    for (int i = 0; i < threads; i++) {
        jobs[i] =
            (job){db, ndev * i / threads, ndev * (i + 1) / threads, 0x9e3779b97f4a7c15ull + i};
        pthread_create(&th[i], NULL, writer, &jobs[i]);
    }
    for (int i = 0; i < threads; i++) pthread_join(th[i], NULL);
    double wt = bench_now_s() - t, wc = bench_cpu_s() - c;
    uint64_t pts = (uint64_t)ndev * 4 * nsec;
    tsdb_stats st;
    tsdb_get_stats(db, &st);
    uint64_t wal = st.wal_bytes;
    t = bench_now_s();
    if (tsdb_flush(db)) {
        fprintf(stderr, "flush failed\n");
        exit(1);
    }
    double ft = bench_now_s() - t;
    tsdb_get_stats(db, &st);
    uint64_t blocks_bytes = st.disk_bytes - st.wal_bytes;
    /* one aggregate over the hour in 1-minute bins, for a feel of the read side */
    tsdb_agg agg[60];
    t = bench_now_s();
    for (uint64_t id = 1; id <= 100; id++)
        tsdb_aggregate(db, 1, id, T0, T0 + 3600ll * 1000000000ll, 60ll * 1000000000ll, agg, 60);
    double at = (bench_now_s() - t) / 100;
    printf("{\"threads\":%d,\"fsync\":\"%s\",\"points\":%" PRIu64 ",\"write_s\":%.3f,"
           "\"points_per_s\":%.0f,\"cpu_s\":%.3f,\"points_per_cpu_s\":%.0f,\"wal_bytes_before_"
           "flush\":%" PRIu64 ",\"flush_s\":%.3f,"
           "\"blocks\":%" PRIu64 ",\"bytes_on_disk_after_flush\":%" PRIu64
           ",\"bytes_per_point\":%.4f,\"agg_1h_by_1m_us\":%.1f}\n",
           threads, mode == TSDB_FSYNC_ALWAYS ? "always" : "everysec", pts, wt, (double)pts / wt,
           wc, (double)pts / wc, wal, ft, st.blocks, blocks_bytes,
           (double)blocks_bytes / (double)pts, at * 1e6);
    fflush(stdout);
    tsdb_close(db);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "cleanup failed\n");
}

int main(int argc, char **argv)
{
    thz_log_level = getenv("BENCH_VERBOSE") ? THZ_LOG_INFO : THZ_LOG_WARN;
    int opt;
    while ((opt = getopt(argc, argv, "d:s:f:D:")) != -1) {
        switch (opt) {
        case 'd': ndev = atoi(optarg); break;
        case 's': nsec = atoi(optarg); break;
        case 'f':
            mode = strcmp(optarg, "always") == 0 ? TSDB_FSYNC_ALWAYS : TSDB_FSYNC_EVERYSEC;
            break;
        case 'D': basedir = optarg; break;
        default:
            fprintf(stderr, "usage: %s [-d DEVICES] [-s SECONDS] [-f always|everysec] [-D DIR]\n",
                    argv[0]);
            return 2;
        }
    }
    run(1);
    run(2);
    return 0;
}
