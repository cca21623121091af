/* metrics.h - the daemon's own metrics: cheap counters and histograms that
 * any thread may bump, the Prometheus text exposition format (0.0.4) writer,
 * and GET /metrics, which gathers them with the stats the modules already
 * keep (mqtt_get_stats, tsdb_get_stats, http_get_stats, reg_get_stats).
 *
 * Hot paths. A counter or histogram is split into METRICS_SHARDS cache-line
 * aligned shards; a thread always writes the shard it was given on first use
 * (round robin), with a relaxed atomic add, and a scrape sums the shards. No
 * lock, no allocation, no contended cache line per event (while there are no
 * more busy threads than shards). Every object here is static storage that
 * works zero-initialized: nothing needs to be set up before the first event,
 * so unit tests and fuzz targets of the instrumented modules need no init.
 *
 * Label sets are bounded: reasons are fixed enums, and a keyed counter
 * (per tenant) holds at most METRICS_KEYS distinct keys; later keys are
 * counted under the key "other". */
#ifndef THZ_METRICS_H
#define THZ_METRICS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "core/config.h"
#include "core/err.h"

#define METRICS_SHARDS      16
#define METRICS_MAX_BUCKETS 20  /* finite bucket bounds of one histogram */
#define METRICS_KEYS        256 /* distinct keys of a keyed counter, "other" included */
#define METRICS_KEY_LEN     48  /* bytes of a key, NUL included; longer keys are cut */

/* ---- the exposition writer (pure: appends text to a buffer) ---- */

typedef enum metrics_type { METRICS_COUNTER, METRICS_GAUGE, METRICS_HISTOGRAM } metrics_type;

typedef struct metrics_label {
    const char *name;  /* [a-zA-Z_][a-zA-Z0-9_]*, not starting with "__" */
    const char *value; /* any UTF-8; escaped by the writer */
} metrics_label;

/* Appends "# HELP name help" and "# TYPE name type" (help escaped: backslash
 * and newline). THZ_EINVAL for a name that is not [a-zA-Z_:][a-zA-Z0-9_:]*. */
thz_err metrics_write_family(thz_buf *out, const char *name, const char *help, metrics_type t);
/* Appends one sample line: name, suffix (may be NULL: "_total" is part of a
 * counter's name, "_bucket"/"_sum"/"_count" are histogram suffixes), the nl
 * labels ({} omitted when nl is 0; values escaped: backslash, double quote,
 * newline) and the value (integers exactly, NaN, +Inf, -Inf as Prometheus
 * spells them). THZ_EINVAL for a bad metric or label name. */
thz_err metrics_write_sample(thz_buf *out, const char *name, const char *suffix,
                             const metrics_label *l, size_t nl, double v);
/* The same with an exact 64-bit integer value. */
thz_err metrics_write_sample_u64(thz_buf *out, const char *name, const char *suffix,
                                 const metrics_label *l, size_t nl, uint64_t v);
/* Appends a histogram's series: name_bucket{...,le="b"} (cumulative) for each
 * of the nb finite bounds (ascending) and le="+Inf", then name_sum and
 * name_count. counts has nb + 1 entries, not cumulative: counts[i] observed
 * values <= bounds[i] (and > bounds[i-1]); counts[nb] the rest. The labels l
 * come before le. */
thz_err metrics_write_histogram(thz_buf *out, const char *name, const metrics_label *l, size_t nl,
                                const double *bounds, size_t nb, const uint64_t *counts,
                                double sum);
/* Formats v as Prometheus does ("+Inf", "NaN", shortest round-trip text of a
 * double, integers without exponent below 2^53) into out (>= 32 bytes). */
void metrics_format_value(double v, char *out, size_t outlen);

/* ---- primitives (static storage, zero-initialized = ready) ---- */

typedef struct metrics_cell {
    _Alignas(64) _Atomic uint64_t v;
} metrics_cell;

/* A monotonically increasing count. */
typedef struct metrics_counter {
    metrics_cell s[METRICS_SHARDS];
} metrics_counter;

void metrics_counter_add(metrics_counter *c, uint64_t n);
uint64_t metrics_counter_value(const metrics_counter *c);

/* A histogram of durations in seconds (or any non-negative quantity; the sum
 * is kept in units of 1e-9). bounds: ascending finite upper bounds, at most
 * METRICS_MAX_BUCKETS; a static const array that outlives the histogram. */
typedef struct metrics_hshard {
    _Alignas(64) _Atomic uint64_t count[METRICS_MAX_BUCKETS + 1];
    _Atomic uint64_t sum_nano;
} metrics_hshard;

typedef struct metrics_histogram {
    const double *bounds;
    size_t nb;
    metrics_hshard s[METRICS_SHARDS];
} metrics_histogram;

#define METRICS_HISTOGRAM_INIT(b)                                                                  \
    {                                                                                              \
        .bounds = (b), .nb = sizeof(b) / sizeof((b)[0])                                            \
    }

void metrics_histogram_observe(metrics_histogram *h, double v);
/* Sums the shards: counts gets h->nb + 1 entries (not cumulative), *sum the
 * sum of observed values. */
void metrics_histogram_read(const metrics_histogram *h, uint64_t *counts, double *sum);

/* A counter per key (a tenant id...), at most METRICS_KEYS keys; once full,
 * new keys count under "other". Adding under a known key takes no lock;
 * the first add of a new key takes the table's mutex once. */
typedef struct metrics_keyed {
    pthread_mutex_t mu;                     /* initialize with PTHREAD_MUTEX_INITIALIZER */
    _Atomic uint32_t n;                     /* keys published (slots 0..n-1 are valid) */
    _Atomic uint16_t idx[2 * METRICS_KEYS]; /* open addressing: slot + 1, 0 = empty */
    char key[METRICS_KEYS][METRICS_KEY_LEN];
    struct {
        _Alignas(64) _Atomic uint64_t v[METRICS_KEYS];
    } s[METRICS_SHARDS];
} metrics_keyed;

#define METRICS_KEYED_INIT                                                                         \
    {                                                                                              \
        .mu = PTHREAD_MUTEX_INITIALIZER                                                            \
    }

void metrics_keyed_add(metrics_keyed *k, const char *key, uint64_t n);
/* Calls fn for every key with its summed value, in first-use order. */
void metrics_keyed_each(metrics_keyed *k, void (*fn)(void *ctx, const char *key, uint64_t v),
                        void *ctx);

/* ---- what the modules report (call from any thread) ---- */

/* Why telemetry was refused: by the ingest parsers, or by the engine. */
typedef enum metrics_reject {
    METRICS_REJECT_PARSE,        /* not valid telemetry JSON / line protocol */
    METRICS_REJECT_INVALID,      /* a point the engine refuses (names, type conflict) */
    METRICS_REJECT_TOO_BIG,      /* too many points in one write */
    METRICS_REJECT_SERIES_LIMIT, /* max-series-per-tenant reached */
    METRICS_REJECT_WAL_BACKLOG,  /* the WAL is behind (disk too slow) */
    METRICS_REJECT_ERROR,        /* out of memory, I/O */
    METRICS_REJECT_N
} metrics_reject;

/* The engine wrote n points of tenant / refused n points for reason. */
void metrics_tsdb_written(int64_t tenant, uint64_t n);
void metrics_tsdb_rejected(metrics_reject reason, uint64_t n);
/* A telemetry payload (an MQTT message, an HTTP write) was refused. */
void metrics_telemetry_rejected(metrics_reject reason);
/* The reject reason of an engine/ingest error code. */
metrics_reject metrics_reject_of(thz_err rc, bool parse);
/* One fdatasync of the WAL took seconds. */
void metrics_wal_fsync(double seconds);
/* A query finished (successfully or not) after seconds; kind is "sql" or
 * "promql" (anything else counts as "other"). */
void metrics_observe_query(const char *kind, double seconds);
/* libuv worker-pool requests: call queued after uv_queue_work succeeded,
 * started first thing in the work callback, finished in the after-work
 * callback (whether or not it ran). */
void metrics_pool_queued(void);
void metrics_pool_started(void);
void metrics_pool_finished(void);

/* A monotonic clock in seconds, for timing what is observed above. */
double metrics_now(void);

/* ---- scraping ---- */

/* A collector appends whole families to out at scrape time (on an I/O
 * thread: it must not block for long). */
typedef void (*metrics_collect_fn)(thz_buf *out, void *ctx);
/* Adds a collector (before net_start; not thread-safe); at most 16. */
thz_err metrics_add_collector(metrics_collect_fn fn, void *ctx);

/* Appends the whole exposition: every family this module keeps, then every
 * collector's. */
thz_err metrics_render(thz_buf *out);

/* Opaque handles of the modules whose stats GET /metrics reads. */
struct registry;
struct tsdb;

/* Registers GET /metrics on the HTTP listener (after http_start, before
 * net_start) and the collectors of the broker, the HTTP server, the engine
 * (db may be NULL) and the registry (r may be NULL; without it a token can
 * never be checked, so metrics-auth=token refuses everyone; a token must
 * belong to the default tenant, since the metrics show every tenant). cfg, r and db
 * must outlive the I/O threads. */
thz_err metrics_start(const thz_config *cfg, struct registry *r, struct tsdb *db);

#endif
