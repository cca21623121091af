/* ingest.c - parse, then one tsdb_write per payload (all or nothing). */
#include <stdio.h>
#include <string.h>

#include "ingest/ingest.h"
#include "metrics/metrics.h"

/* Stack storage: a telemetry payload of up to 64 points with escaped or
 * flattened names of up to 4 KiB in all never touches the heap. */
#define STACK_POINTS 64
#define STACK_BYTES  4096

static thz_err write_batch(tsdb *db, int64_t tenant, ingest_batch *b, tsdb_done_fn done, void *ctx,
                           char err[INGEST_ERR_LEN])
{
    if (b->n == 0) { /* nothing to store: durable at once */
        if (done) done(ctx, THZ_OK);
        return THZ_OK;
    }
    if (!db) {
        snprintf(err, INGEST_ERR_LEN, "the time-series engine is not open");
        return THZ_EUNSUPPORTED;
    }
    char terr[TSDB_ERR_LEN] = "";
    thz_err rc = tsdb_write(db, tenant, b->pts, b->n, done, ctx, terr);
    if (rc) {
        snprintf(err, INGEST_ERR_LEN, "%s", terr[0] ? terr : thz_strerror(rc));
        metrics_telemetry_rejected(rc == THZ_EQUOTA && strncmp(terr, "WAL backlog", 11) == 0
                                       ? METRICS_REJECT_WAL_BACKLOG
                                       : metrics_reject_of(rc, false));
    }
    return rc;
}

thz_err ingest_telemetry(tsdb *db, int64_t tenant, const char *device, size_t dlen,
                         const uint8_t *payload, size_t n, int64_t now_ns, tsdb_done_fn done,
                         void *ctx, char err[INGEST_ERR_LEN])
{
    if (dlen < 1 || dlen > 128) {
        snprintf(err, INGEST_ERR_LEN, "device id must be 1..128 bytes");
        metrics_telemetry_rejected(METRICS_REJECT_INVALID);
        return THZ_EINVAL;
    }
    tsdb_point pts[STACK_POINTS];
    char buf[STACK_BYTES];
    ingest_batch b;
    ingest_batch_init(&b, pts, STACK_POINTS, buf, sizeof buf);
    thz_err rc = ingest_json_parse(&b, device, dlen, payload, n, now_ns, err);
    if (rc) metrics_telemetry_rejected(metrics_reject_of(rc, true));
    if (!rc) rc = write_batch(db, tenant, &b, done, ctx, err);
    ingest_batch_free(&b);
    return rc;
}

thz_err ingest_line_protocol(tsdb *db, int64_t tenant, const uint8_t *body, size_t n,
                             int64_t precision_ns_multiplier, int64_t now_ns, tsdb_done_fn done,
                             void *ctx, char err[INGEST_ERR_LEN])
{
    if (precision_ns_multiplier <= 0) {
        snprintf(err, INGEST_ERR_LEN, "bad precision");
        return THZ_EINVAL;
    }
    tsdb_point pts[STACK_POINTS];
    char buf[STACK_BYTES];
    ingest_batch b;
    ingest_batch_init(&b, pts, STACK_POINTS, buf, sizeof buf);
    thz_err rc = ingest_lp_parse(&b, body, n, precision_ns_multiplier, now_ns, err);
    if (rc) metrics_telemetry_rejected(metrics_reject_of(rc, true));
    if (!rc) rc = write_batch(db, tenant, &b, done, ctx, err);
    ingest_batch_free(&b);
    return rc;
}
