/* bench_ingest.c - micro benchmark of the ingest parsers (no engine, no I/O):
 * the telemetry JSON scanner (ingest_json_parse, the work ingest_telemetry
 * does before tsdb_write) against cJSON_Parse + walking the tree into the
 * same points, on a ~100-byte payload with 4 fields; and the line-protocol
 * parser on a 5,000-line batch. Build and run: bench/ingest/run. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "ingest/ingest.h"

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static volatile double sink;

int main(int argc, char **argv)
{
    const char *payload = argc > 1 ? argv[1]
                                   : "{\"temp\":21.53,\"humidity\":40.2,\"door_open\":false,"
                                     "\"status\":\"ok\",\"ts\":1700000000123}     ";
    size_t n = strlen(payload);
    long iters = 200000;
    int rounds = 15; /* best of: the machine may be shared */
    char err[INGEST_ERR_LEN];
    tsdb_point pts[64];
    char buf[4096];
    ingest_batch b;

    /* warm up and check */
    ingest_batch_init(&b, pts, 64, buf, sizeof buf);
    if (ingest_json_parse(&b, "dev", 3, (const uint8_t *)payload, n, 0, err)) {
        fprintf(stderr, "parse: %s\n", err);
        return 1;
    }
    size_t fields = b.n;
    double t0;

    /* the three loops interleaved, best of `rounds` each: the machine may be
     * shared, and interleaving lets all three see the same load */
    double ours = 1e9, cj = 1e9, cjp = 1e9;
    for (int r = 0; r < rounds; r++) {
        t0 = now_s();
        for (long i = 0; i < iters; i++) {
            ingest_batch_init(&b, pts, 64, buf, sizeof buf);
            ingest_json_parse(&b, "dev", 3, (const uint8_t *)payload, n, 0, err);
            sink += b.pts[0].v.u.f;
        }
        double e = (now_s() - t0) / (double)iters;
        if (e < ours) ours = e;

        t0 = now_s();
        for (long i = 0; i < iters; i++) {
            cJSON *j = cJSON_ParseWithLength(payload, n);
            size_t k = 0;
            for (cJSON *c = j->child; c; c = c->next) {
                if (k < 64) {
                    pts[k].metric = c->string;
                    pts[k].v.u.f = c->valuedouble;
                }
                k++;
            }
            sink += pts[0].v.u.f;
            cJSON_Delete(j);
        }
        e = (now_s() - t0) / (double)iters;
        if (e < cj) cj = e;

        t0 = now_s();
        for (long i = 0; i < iters; i++) {
            cJSON *j = cJSON_ParseWithLength(payload, n);
            sink += j->child->valuedouble;
            cJSON_Delete(j);
        }
        e = (now_s() - t0) / (double)iters;
        if (e < cjp) cjp = e;
    }

    printf("telemetry JSON, %zu bytes, %zu fields:\n", n, fields);
    printf("  ingest_json_parse     %7.1f ns/payload  %6.1f M payloads/s  %6.1f M points/s\n",
           ours * 1e9, 1e-6 / ours, 1e-6 * (double)fields / ours);
    printf("  cJSON_Parse+Delete    %7.1f ns/payload  (parse only, no points)\n", cjp * 1e9);
    printf("  cJSON + walk to points%7.1f ns/payload  -> scanner is %.1fx faster\n", cj * 1e9,
           cj / ours);

    /* line protocol: 5,000 lines */
    size_t cap = 1 << 20, l = 0;
    char *lp = malloc(cap);
    for (int i = 0; i < 5000; i++)
        l += (size_t)snprintf(lp + l, cap - l,
                              "sensors,device=dev%03d,site=plant-7 temp=%d.25,hum=%di,ok=t %lld\n",
                              i % 100, i, i, 1700000000000000000LL + i);
    tsdb_point *lpts = malloc(sizeof *lpts * 20000);
    char *lbuf = malloc(1 << 20);
    int lit = 300;
    t0 = now_s();
    for (int i = 0; i < lit; i++) {
        ingest_batch_init(&b, lpts, 20000, lbuf, 1 << 20);
        if (ingest_lp_parse(&b, (const uint8_t *)lp, l, 1, 0, err)) {
            fprintf(stderr, "lp: %s\n", err);
            return 1;
        }
    }
    double lpt = (now_s() - t0) / lit;
    printf("line protocol, 5000 lines (%zu KB), %zu points:\n", l / 1024, b.n);
    printf("  ingest_lp_parse       %7.2f ms/request  %6.1f M points/s  %5.0f MB/s\n", lpt * 1e3,
           1e-6 * (double)b.n / lpt, (double)l / lpt / 1e6);
    free(lp);
    free(lpts);
    free(lbuf);
    return 0;
}
