/* tsdb.h - the time-series engine of thinghz (replaces Timestream): a
 * write-ahead log with group commit, an in-memory head per device, then
 * immutable compressed blocks on disk, a persisted series index with tag
 * postings, rollups, retention and compaction. Everything under
 * DATA_DIR/tsdb/.
 *
 * Data model. A series is (tenant, device, metric, tags); a point is an int64
 * nanosecond timestamp and a value (float64, int64, bool or string). A
 * series' type is fixed by its first point; a point of another type for it is
 * refused (THZ_EINVAL) rather than mixed in.
 *
 * Threads. Every function is thread-safe. tsdb_write never waits for disk
 * (it may run on an I/O thread): durability is reported through its done
 * callback. Reads (tsdb_series_select, tsdb_read, tsdb_aggregate, tsdb_last)
 * may read block files: run them on worker threads, not on I/O threads.
 * Flushing, compaction and retention run on the engine's own threads. */
#ifndef THZ_TSDB_H
#define THZ_TSDB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/err.h"

#define TSDB_ERR_LEN 200

typedef struct tsdb tsdb;

typedef enum tsdb_fsync {
    TSDB_FSYNC_ALWAYS,  /* done runs after the fsync that covers the points (group commit) */
    TSDB_FSYNC_EVERYSEC /* done runs at once; the WAL is fsynced every second */
} tsdb_fsync;

typedef struct tsdb_options {
    const char *dir; /* created if missing, e.g. DATA_DIR/tsdb */
    tsdb_fsync fsync;
    uint64_t max_series_per_tenant; /* 0: unlimited; past it: THZ_EQUOTA */
    int64_t retention_s;            /* default retention; 0: keep forever */
} tsdb_options;

typedef enum tsdb_type { TSDB_FLOAT = 1, TSDB_INT = 2, TSDB_BOOL = 3, TSDB_STRING = 4 } tsdb_type;

typedef struct tsdb_value {
    tsdb_type type;
    union {
        double f;
        int64_t i;
        bool b;
        struct {
            const char *p; /* not NUL-terminated; read side: valid during the callback */
            uint32_t n;
        } s;
    } u;
} tsdb_value;

/* One point as a writer gives it. Strings need not be NUL-terminated.
 * device: 1..128 bytes; metric: 1..256 bytes; tags: NULL/0 or a canonical
 * tag set "k1=v1,k2=v2" with keys sorted and unique (tsdb_tags_canon). */
typedef struct tsdb_point {
    const char *device;
    size_t device_len;
    const char *metric;
    size_t metric_len;
    const char *tags;
    size_t tags_len;
    int64_t ts; /* nanoseconds since the Unix epoch */
    tsdb_value v;
} tsdb_point;

/* Opens (creating) the engine: loads the index, replays the WAL after the
 * last checkpoint (a torn or corrupt tail is truncated at the last good
 * record with a log line, never a refusal to start), starts its threads. */
thz_err tsdb_open(const tsdb_options *o, tsdb **out, char err[TSDB_ERR_LEN]);
/* Stops the threads, makes everything written durable, closes. */
void tsdb_close(tsdb *db);

/* ---- writing ---- */

/* Called once when the points of a tsdb_write are durable under the fsync
 * policy (rc THZ_OK) or cannot be (THZ_EIO: the WAL write or fsync failed).
 * Runs on the engine's WAL thread (ALWAYS) or inside tsdb_write (EVERYSEC):
 * it must be quick and must not call tsdb_write. */
typedef void (*tsdb_done_fn)(void *ctx, thz_err rc);

/* Writes n points of tenant. All or nothing: every point is validated first
 * (THZ_EINVAL with err naming the point and the problem; THZ_EQUOTA when a
 * new series would pass the tenant's limit), and then all are appended to
 * the WAL buffer and the head, so a read that starts after tsdb_write
 * returns sees them. done (may be NULL) is not called when it returns an
 * error. Out-of-order and late points are accepted. */
thz_err tsdb_write(tsdb *db, int64_t tenant, const tsdb_point *pts, size_t n, tsdb_done_fn done,
                   void *ctx, char err[TSDB_ERR_LEN]);

/* A write observer: called by tsdb_write after every successful write with
 * its tenant and points (valid during the call only), on the writer's thread
 * (an I/O thread for MQTT telemetry). It must be quick, must not block and
 * must not call tsdb_write. One observer per database; fn NULL removes it.
 * While none is set a write pays one atomic load for this. The observer may
 * set and clear itself at any time (ctx must stay valid as long as it could
 * still be called: set it once and keep it). */
typedef void (*tsdb_write_fn)(void *ctx, int64_t tenant, const tsdb_point *pts, size_t n);
void tsdb_on_write(tsdb *db, tsdb_write_fn fn, void *ctx);

/* Builds the canonical tag set of n key/value pairs (any order; keys unique,
 * 1..128 bytes, values 0..256, no ',' or '=' in keys or values... escaped as
 * in the line protocol) into out. Returns the length, or -1 (bad or too
 * long). */
long tsdb_tags_canon(const char *const *keys, const size_t *klen, const char *const *vals,
                     const size_t *vlen, size_t n, char *out, size_t outlen);

/* ---- reading ---- */

typedef struct tsdb_series {
    uint64_t id;
    const char *device; /* NUL-terminated, valid while the database is open */
    const char *metric;
    const char *tags; /* canonical tag set, "" when none */
    tsdb_type type;
} tsdb_series;

typedef enum tsdb_match_op {
    TSDB_EQ, /* label == value */
    TSDB_NE, /* label != value (a missing tag is "") */
    TSDB_RE, /* POSIX extended regex, anchored at both ends, matches */
    TSDB_NRE /* ... does not match */
} tsdb_match_op;

/* label is "device", "metric" or a tag key. */
typedef struct tsdb_matcher {
    const char *label;
    tsdb_match_op op;
    const char *value;
} tsdb_matcher;

/* Calls fn for every series of tenant that matches all matchers (none: every
 * series), using the postings for EQ matchers. fn returns false to stop.
 * THZ_EINVAL for a bad regex. */
typedef bool (*tsdb_series_fn)(void *ctx, const tsdb_series *s);
thz_err tsdb_series_select(tsdb *db, int64_t tenant, const tsdb_matcher *m, size_t nm,
                           tsdb_series_fn fn, void *ctx);

/* Calls fn once for every metric name (metric true) and every tag key
 * (escaped as in the canonical tag set) of the tenant's series, in no
 * order; fn returns false to stop. */
typedef bool (*tsdb_label_fn)(void *ctx, bool metric, const char *name, size_t len);
thz_err tsdb_labels(tsdb *db, int64_t tenant, tsdb_label_fn fn, void *ctx);

/* The points of one series with t0 <= ts < t1 in time order (duplicates of a
 * timestamp resolved to the last written), delivered in batches. fn returns
 * false to stop. ENOTFOUND for an unknown series or another tenant's. */
typedef bool (*tsdb_points_fn)(void *ctx, const int64_t *ts, const tsdb_value *v, size_t n);
thz_err tsdb_read(tsdb *db, int64_t tenant, uint64_t series, int64_t t0, int64_t t1,
                  tsdb_points_fn fn, void *ctx);

/* Aggregates of a numeric series (float, int, bool as 0/1) per bin. */
typedef struct tsdb_agg {
    uint64_t count;
    double sum, min, max;
    double first, last; /* values at first_ts and last_ts */
    int64_t first_ts, last_ts;
} tsdb_agg;

/* Aggregates the series over [t0, t1) in nbins bins of step ns: bin i covers
 * [t0 + i*step, t0 + (i+1)*step) (step 0: one bin [t0, t1)). out[i].count is
 * 0 for an empty bin. Uses block headers (count/sum/min/max/first/last) and
 * the 1-minute and 1-hour rollups wherever a whole block or rollup cell lies
 * inside one bin, so long ranges do not decode every point. THZ_EINVAL for
 * a string series. */
thz_err tsdb_aggregate(tsdb *db, int64_t tenant, uint64_t series, int64_t t0, int64_t t1,
                       int64_t step, tsdb_agg *out, size_t nbins);

/* tsdb_aggregate with bins aligned elsewhere: bin i covers
 * [origin + i*step, origin + (i+1)*step) intersected with [t0, t1)
 * (origin <= t0; step 0: one bin [t0, t1), origin unused). */
thz_err tsdb_aggregate_from(tsdb *db, int64_t tenant, uint64_t series, int64_t t0, int64_t t1,
                            int64_t origin, int64_t step, tsdb_agg *out, size_t nbins);

/* The last point of a series (from the last-value cache): fn is called once
 * with n = 1, or not at all when the series has no point. */
thz_err tsdb_last(tsdb *db, int64_t tenant, uint64_t series, tsdb_points_fn fn, void *ctx);

/* The newest timestamp the engine holds or was written (INT64_MIN: none),
 * for bounding open time ranges; later writes may pass it. */
int64_t tsdb_max_ts(tsdb *db);

/* ---- administration ---- */

/* Retention of a tenant (metric NULL) or of one metric of a tenant:
 * seconds, 0 = forever; whole blocks older than it are dropped. Persisted. */
thz_err tsdb_set_retention(tsdb *db, int64_t tenant, const char *metric, int64_t seconds);

/* Reports a tenant's retention: fn is called first with metric NULL and the
 * tenant's retention in seconds (0 = forever), own set by
 * tsdb_set_retention or false when it is the engine's default
 * (tsdb_options.retention_s); then once per metric retention of the tenant,
 * in no particular order, with own true. metric (not NUL-terminated,
 * metric_len bytes) is valid during the call only. fn runs under the
 * index's read lock: it must be quick and must not call the engine. */
typedef void (*tsdb_retention_fn)(void *ctx, const char *metric, size_t metric_len, int64_t seconds,
                                  bool own);
thz_err tsdb_get_retention(tsdb *db, int64_t tenant, tsdb_retention_fn fn, void *ctx);

/* Cuts the whole head into blocks now and checkpoints the WAL (tests,
 * benchmarks, shutdown). Blocks the caller until done. */
thz_err tsdb_flush(tsdb *db);

/* A consistent online copy of the data into dir (created; must be empty). */
thz_err tsdb_backup(tsdb *db, const char *dir, char err[TSDB_ERR_LEN]);

typedef struct tsdb_stats {
    uint64_t series;
    uint64_t points_written;  /* since open */
    uint64_t points_rejected; /* since open */
    uint64_t head_points;     /* not yet in blocks */
    uint64_t blocks;
    uint64_t disk_bytes; /* blocks + index + WAL */
    uint64_t wal_bytes;
    uint64_t fsyncs;
    uint64_t wal_written_bytes; /* bytes the WAL thread wrote since open */
    uint64_t wal_pending_bytes; /* appended, not yet written (and synced under always) */
    uint64_t head_bytes;        /* memory of the head (estimate: points, cells, series) */
} tsdb_stats;
void tsdb_get_stats(tsdb *db, tsdb_stats *st);

#endif
