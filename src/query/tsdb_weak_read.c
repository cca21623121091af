/* tsdb_weak_read.c - TEMPORARY: weak stand-ins for the engine's read
 * functions, so the daemon links before the engine (branch engine) is
 * merged; like src/ingest/tsdb_weak.c, delete this file at that merge. */
#include "tsdb/tsdb.h"

__attribute__((weak)) thz_err tsdb_series_select(tsdb *db, int64_t tenant, const tsdb_matcher *m,
                                                 size_t nm, tsdb_series_fn fn, void *ctx)
{
    return THZ_EUNSUPPORTED;
}

__attribute__((weak)) thz_err tsdb_read(tsdb *db, int64_t tenant, uint64_t series, int64_t t0,
                                        int64_t t1, tsdb_points_fn fn, void *ctx)
{
    return THZ_EUNSUPPORTED;
}

__attribute__((weak)) thz_err tsdb_aggregate(tsdb *db, int64_t tenant, uint64_t series, int64_t t0,
                                             int64_t t1, int64_t step, tsdb_agg *out, size_t nbins)
{
    return THZ_EUNSUPPORTED;
}

__attribute__((weak)) thz_err tsdb_last(tsdb *db, int64_t tenant, uint64_t series,
                                        tsdb_points_fn fn, void *ctx)
{
    return THZ_EUNSUPPORTED;
}
