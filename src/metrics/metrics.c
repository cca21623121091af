/* metrics.c - sharded counters and histograms, the Prometheus text format
 * writer, and the families the modules report into (ingest, WAL fsync,
 * queries, the worker pool). GET /metrics and the collectors that read the
 * modules' own stats are in expose.c. */
#include "metrics/metrics.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- the writer ---- */

static bool name_ok(const char *s, bool colon)
{
    if (!s || !*s) return false;
    for (const char *p = s; *p; p++) {
        char c = *p;
        bool alpha =
            (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon && c == ':');
        if (!alpha && !(p > s && c >= '0' && c <= '9')) return false;
    }
    return true;
}

static thz_err put(thz_buf *out, const char *s)
{
    return thz_buf_append(out, s, strlen(s));
}

/* Appends s escaped: backslash and newline always, double quote in label
 * values (quote true). */
static thz_err put_escaped(thz_buf *out, const char *s, bool quote)
{
    thz_err rc = THZ_OK;
    const char *run = s;
    for (const char *p = s; *p && !rc; p++) {
        const char *e = *p == '\\'           ? "\\\\"
                        : *p == '\n'         ? "\\n"
                        : quote && *p == '"' ? "\\\""
                                             : NULL;
        if (!e) continue;
        rc = thz_buf_append(out, run, (size_t)(p - run));
        if (!rc) rc = put(out, e);
        run = p + 1;
    }
    return rc ? rc : put(out, run);
}

void metrics_format_value(double v, char *out, size_t outlen)
{
    if (isnan(v)) {
        snprintf(out, outlen, "NaN");
    } else if (isinf(v)) {
        snprintf(out, outlen, v > 0 ? "+Inf" : "-Inf");
    } else if (v == floor(v) && fabs(v) < 9007199254740992.0) {
        snprintf(out, outlen, "%.0f", v);
    } else {
        /* the shortest text that reads back as the same double */
        for (int prec = 1; prec <= 17; prec++) {
            snprintf(out, outlen, "%.*g", prec, v);
            if (strtod(out, NULL) == v) break;
        }
    }
}

thz_err metrics_write_family(thz_buf *out, const char *name, const char *help, metrics_type t)
{
    if (!name_ok(name, true)) return THZ_EINVAL;
    static const char *const tn[] = {"counter", "gauge", "histogram"};
    thz_err rc = put(out, "# HELP ");
    if (!rc) rc = put(out, name);
    if (!rc) rc = put(out, " ");
    if (!rc) rc = put_escaped(out, help ? help : "", false);
    if (!rc) rc = put(out, "\n# TYPE ");
    if (!rc) rc = put(out, name);
    if (!rc) rc = put(out, " ");
    if (!rc) rc = put(out, tn[t]);
    if (!rc) rc = put(out, "\n");
    return rc;
}

static thz_err write_head(thz_buf *out, const char *name, const char *suffix,
                          const metrics_label *l, size_t nl, const char *le)
{
    if (!name_ok(name, true) || (suffix && *suffix && !name_ok(suffix, true))) return THZ_EINVAL;
    for (size_t i = 0; i < nl; i++)
        if (!name_ok(l[i].name, false) || strncmp(l[i].name, "__", 2) == 0) return THZ_EINVAL;
    thz_err rc = put(out, name);
    if (!rc && suffix) rc = put(out, suffix);
    if (nl || le) {
        if (!rc) rc = put(out, "{");
        for (size_t i = 0; i < nl && !rc; i++) {
            if (i) rc = put(out, ",");
            if (!rc) rc = put(out, l[i].name);
            if (!rc) rc = put(out, "=\"");
            if (!rc) rc = put_escaped(out, l[i].value ? l[i].value : "", true);
            if (!rc) rc = put(out, "\"");
        }
        if (le && !rc) {
            if (nl) rc = put(out, ",");
            if (!rc) rc = put(out, "le=\"");
            if (!rc) rc = put(out, le);
            if (!rc) rc = put(out, "\"");
        }
        if (!rc) rc = put(out, "}");
    }
    return rc;
}

static thz_err write_value(thz_buf *out, const char *v)
{
    thz_err rc = put(out, " ");
    if (!rc) rc = put(out, v);
    if (!rc) rc = put(out, "\n");
    return rc;
}

thz_err metrics_write_sample(thz_buf *out, const char *name, const char *suffix,
                             const metrics_label *l, size_t nl, double v)
{
    char num[40];
    metrics_format_value(v, num, sizeof num);
    thz_err rc = write_head(out, name, suffix, l, nl, NULL);
    return rc ? rc : write_value(out, num);
}

thz_err metrics_write_sample_u64(thz_buf *out, const char *name, const char *suffix,
                                 const metrics_label *l, size_t nl, uint64_t v)
{
    char num[24];
    snprintf(num, sizeof num, "%" PRIu64, v);
    thz_err rc = write_head(out, name, suffix, l, nl, NULL);
    return rc ? rc : write_value(out, num);
}

thz_err metrics_write_histogram(thz_buf *out, const char *name, const metrics_label *l, size_t nl,
                                const double *bounds, size_t nb, const uint64_t *counts, double sum)
{
    uint64_t cum = 0;
    thz_err rc = THZ_OK;
    char le[40], num[24];
    for (size_t i = 0; i <= nb && !rc; i++) {
        if (i < nb && (!isfinite(bounds[i]) || (i && bounds[i] <= bounds[i - 1])))
            return THZ_EINVAL;
        cum += counts[i];
        if (i < nb)
            metrics_format_value(bounds[i], le, sizeof le);
        else
            snprintf(le, sizeof le, "+Inf");
        snprintf(num, sizeof num, "%" PRIu64, cum);
        rc = write_head(out, name, "_bucket", l, nl, le);
        if (!rc) rc = write_value(out, num);
    }
    if (!rc) rc = metrics_write_sample(out, name, "_sum", l, nl, sum);
    if (!rc) rc = metrics_write_sample_u64(out, name, "_count", l, nl, cum);
    return rc;
}

/* ---- primitives ---- */

/* The shard of the calling thread: given round robin on first use. */
static unsigned my_shard(void)
{
    static _Atomic unsigned next;
    static _Thread_local unsigned shard = UINT32_MAX;
    if (shard == UINT32_MAX)
        shard = atomic_fetch_add_explicit(&next, 1, memory_order_relaxed) % METRICS_SHARDS;
    return shard;
}

void metrics_counter_add(metrics_counter *c, uint64_t n)
{
    atomic_fetch_add_explicit(&c->s[my_shard()].v, n, memory_order_relaxed);
}

uint64_t metrics_counter_value(const metrics_counter *c)
{
    uint64_t v = 0;
    for (int i = 0; i < METRICS_SHARDS; i++)
        v += atomic_load_explicit(&((metrics_counter *)c)->s[i].v, memory_order_relaxed);
    return v;
}

void metrics_histogram_observe(metrics_histogram *h, double v)
{
    if (!(v >= 0)) v = 0; /* NaN and negatives (a clock step) */
    size_t i = 0;
    while (i < h->nb && v > h->bounds[i]) i++;
    metrics_hshard *s = &h->s[my_shard()];
    atomic_fetch_add_explicit(&s->count[i], 1, memory_order_relaxed);
    double nano = v * 1e9;
    atomic_fetch_add_explicit(&s->sum_nano, nano < 1.8e19 ? (uint64_t)nano : UINT64_MAX / 2,
                              memory_order_relaxed);
}

void metrics_histogram_read(const metrics_histogram *h, uint64_t *counts, double *sum)
{
    metrics_histogram *m = (metrics_histogram *)h;
    uint64_t nano = 0;
    memset(counts, 0, (h->nb + 1) * sizeof *counts);
    for (int s = 0; s < METRICS_SHARDS; s++) {
        for (size_t i = 0; i <= h->nb; i++)
            counts[i] += atomic_load_explicit(&m->s[s].count[i], memory_order_relaxed);
        nano += atomic_load_explicit(&m->s[s].sum_nano, memory_order_relaxed);
    }
    *sum = (double)nano / 1e9;
}

static uint32_t key_hash(const char *s)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

/* The slot of key, or -1 when it is not in the table. */
static int keyed_find(metrics_keyed *k, const char *key, uint32_t h)
{
    for (uint32_t j = 0; j < 2 * METRICS_KEYS; j++) {
        uint32_t at = (h + j) % (2 * METRICS_KEYS);
        uint16_t v = atomic_load_explicit(&k->idx[at], memory_order_acquire);
        if (!v) return -1;
        if (strcmp(k->key[v - 1], key) == 0) return v - 1;
    }
    return -1;
}

void metrics_keyed_add(metrics_keyed *k, const char *key, uint64_t n)
{
    char kb[METRICS_KEY_LEN];
    if (strlen(key) >= sizeof kb) {
        memcpy(kb, key, sizeof kb - 1);
        kb[sizeof kb - 1] = 0;
        key = kb;
    }
    uint32_t h = key_hash(key);
    int slot = keyed_find(k, key, h);
    if (slot < 0) {
        pthread_mutex_lock(&k->mu);
        slot = keyed_find(k, key, h);
        uint32_t used = atomic_load_explicit(&k->n, memory_order_relaxed);
        if (slot < 0 && used >= METRICS_KEYS - 1 && strcmp(key, "other") != 0) {
            /* full: the last slot is "other" */
            pthread_mutex_unlock(&k->mu);
            metrics_keyed_add(k, "other", n);
            return;
        }
        if (slot < 0) {
            slot = (int)used;
            snprintf(k->key[slot], METRICS_KEY_LEN, "%s", key);
            uint32_t at = h % (2 * METRICS_KEYS);
            while (atomic_load_explicit(&k->idx[at], memory_order_relaxed))
                at = (at + 1) % (2 * METRICS_KEYS);
            atomic_store_explicit(&k->n, used + 1, memory_order_release);
            atomic_store_explicit(&k->idx[at], (uint16_t)(slot + 1), memory_order_release);
        }
        pthread_mutex_unlock(&k->mu);
    }
    atomic_fetch_add_explicit(&k->s[my_shard()].v[slot], n, memory_order_relaxed);
}

void metrics_keyed_each(metrics_keyed *k, void (*fn)(void *ctx, const char *key, uint64_t v),
                        void *ctx)
{
    uint32_t n = atomic_load_explicit(&k->n, memory_order_acquire);
    for (uint32_t i = 0; i < n; i++) {
        uint64_t v = 0;
        for (int s = 0; s < METRICS_SHARDS; s++)
            v += atomic_load_explicit(&k->s[s].v[i], memory_order_relaxed);
        fn(ctx, k->key[i], v);
    }
}

/* ---- the families the modules report into ---- */

static const double fsync_bounds[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                      0.025,  0.05,    0.1,    0.25,  0.5,    1,     2.5};
static const double query_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                      0.1,    0.25,  0.5,    1,     2.5,  5,     10};

enum { Q_SQL, Q_PROMQL, Q_OTHER, Q_N };
static const char *const query_kinds[Q_N] = {"sql", "promql", "other"};
static const char *const reject_names[METRICS_REJECT_N] = {"parse",        "invalid",     "too_big",
                                                           "series_limit", "wal_backlog", "error"};

static struct {
    metrics_keyed points;
    metrics_counter points_rejected[METRICS_REJECT_N];
    metrics_counter payloads_rejected[METRICS_REJECT_N];
    metrics_histogram fsync;
    metrics_histogram query[Q_N];
    metrics_counter pool_queued, pool_started, pool_finished;
} M = {
    .points = METRICS_KEYED_INIT,
    .fsync = METRICS_HISTOGRAM_INIT(fsync_bounds),
    .query = {METRICS_HISTOGRAM_INIT(query_bounds), METRICS_HISTOGRAM_INIT(query_bounds),
              METRICS_HISTOGRAM_INIT(query_bounds)},
};

void metrics_tsdb_written(int64_t tenant, uint64_t n)
{
    char k[24];
    snprintf(k, sizeof k, "%" PRId64, tenant);
    metrics_keyed_add(&M.points, k, n);
}

void metrics_tsdb_rejected(metrics_reject reason, uint64_t n)
{
    if ((unsigned)reason >= METRICS_REJECT_N) reason = METRICS_REJECT_ERROR;
    metrics_counter_add(&M.points_rejected[reason], n);
}

void metrics_telemetry_rejected(metrics_reject reason)
{
    if ((unsigned)reason >= METRICS_REJECT_N) reason = METRICS_REJECT_ERROR;
    metrics_counter_add(&M.payloads_rejected[reason], 1);
}

metrics_reject metrics_reject_of(thz_err rc, bool parse)
{
    switch (rc) {
    case THZ_EINVAL: return parse ? METRICS_REJECT_PARSE : METRICS_REJECT_INVALID;
    case THZ_ETOOBIG: return METRICS_REJECT_TOO_BIG;
    case THZ_EQUOTA: return METRICS_REJECT_SERIES_LIMIT;
    default: return METRICS_REJECT_ERROR;
    }
}

void metrics_wal_fsync(double seconds)
{
    metrics_histogram_observe(&M.fsync, seconds);
}

void metrics_observe_query(const char *kind, double seconds)
{
    int k = Q_OTHER;
    if (kind && strcmp(kind, "sql") == 0) k = Q_SQL;
    if (kind && strcmp(kind, "promql") == 0) k = Q_PROMQL;
    metrics_histogram_observe(&M.query[k], seconds);
}

void metrics_pool_queued(void)
{
    metrics_counter_add(&M.pool_queued, 1);
}

void metrics_pool_started(void)
{
    metrics_counter_add(&M.pool_started, 1);
}

void metrics_pool_finished(void)
{
    metrics_counter_add(&M.pool_finished, 1);
}

double metrics_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- rendering ---- */

static struct {
    metrics_collect_fn fn;
    void *ctx;
} collectors[16];
static int ncollectors;

thz_err metrics_add_collector(metrics_collect_fn fn, void *ctx)
{
    if (ncollectors == (int)(sizeof collectors / sizeof *collectors)) return THZ_EQUOTA;
    collectors[ncollectors].fn = fn;
    collectors[ncollectors].ctx = ctx;
    ncollectors++;
    return THZ_OK;
}

typedef struct keyed_ctx {
    thz_buf *out;
    const char *name, *label;
    thz_err rc;
} keyed_ctx;

static void keyed_line(void *ctx, const char *key, uint64_t v)
{
    keyed_ctx *c = ctx;
    metrics_label l = {c->label, key};
    if (!c->rc) c->rc = metrics_write_sample_u64(c->out, c->name, NULL, &l, 1, v);
}

static thz_err render_counters(thz_buf *out, const char *name, const char *help, const char *label,
                               const char *const *values, const metrics_counter *c, size_t n)
{
    thz_err rc = metrics_write_family(out, name, help, METRICS_COUNTER);
    for (size_t i = 0; i < n && !rc; i++) {
        metrics_label l = {label, values[i]};
        rc = metrics_write_sample_u64(out, name, NULL, &l, 1, metrics_counter_value(&c[i]));
    }
    return rc;
}

static thz_err render_histogram(thz_buf *out, const metrics_histogram *h, const char *name,
                                const metrics_label *l, size_t nl)
{
    uint64_t counts[METRICS_MAX_BUCKETS + 1];
    double sum;
    metrics_histogram_read(h, counts, &sum);
    return metrics_write_histogram(out, name, l, nl, h->bounds, h->nb, counts, sum);
}

thz_err metrics_render(thz_buf *out)
{
    /* the collectors first: process and build information lead */
    for (int i = 0; i < ncollectors; i++) collectors[i].fn(out, collectors[i].ctx);
    thz_err rc = metrics_write_family(out, "thinghz_tsdb_points_written_total",
                                      "Telemetry points written to the time-series engine, by "
                                      "tenant id (rate() gives the ingest rate).",
                                      METRICS_COUNTER);
    if (!rc) {
        keyed_ctx kc = {out, "thinghz_tsdb_points_written_total", "tenant", THZ_OK};
        metrics_keyed_each(&M.points, keyed_line, &kc);
        rc = kc.rc;
    }
    if (!rc)
        rc =
            render_counters(out, "thinghz_tsdb_points_rejected_total",
                            "Telemetry points the time-series engine refused, by reason.", "reason",
                            reject_names + 1, M.points_rejected + 1, METRICS_REJECT_N - 1);
    if (!rc)
        rc = render_counters(out, "thinghz_telemetry_rejected_total",
                             "Telemetry payloads (MQTT messages, HTTP writes) refused, by reason.",
                             "reason", reject_names, M.payloads_rejected, METRICS_REJECT_N);
    if (!rc)
        rc = metrics_write_family(out, "thinghz_tsdb_wal_fsync_duration_seconds",
                                  "Time one fdatasync of the time-series WAL took.",
                                  METRICS_HISTOGRAM);
    if (!rc)
        rc = render_histogram(out, &M.fsync, "thinghz_tsdb_wal_fsync_duration_seconds", NULL, 0);
    if (!rc)
        rc = metrics_write_family(out, "thinghz_query_duration_seconds",
                                  "Time to parse, plan and execute a query, by query language.",
                                  METRICS_HISTOGRAM);
    for (int k = 0; k < Q_N && !rc; k++) {
        metrics_label l = {"kind", query_kinds[k]};
        rc = render_histogram(out, &M.query[k], "thinghz_query_duration_seconds", &l, 1);
    }
    uint64_t q = metrics_counter_value(&M.pool_queued), s = metrics_counter_value(&M.pool_started),
             f = metrics_counter_value(&M.pool_finished);
    if (!rc)
        rc = metrics_write_family(out, "thinghz_worker_pool_requests",
                                  "Requests on libuv's worker pool (API calls, SQL queries, "
                                  "password checks), by state.",
                                  METRICS_GAUGE);
    if (!rc) {
        metrics_label l = {"state", "queued"};
        rc = metrics_write_sample_u64(out, "thinghz_worker_pool_requests", NULL, &l, 1,
                                      q > s ? q - s : 0);
    }
    if (!rc) {
        metrics_label l = {"state", "running"};
        rc = metrics_write_sample_u64(out, "thinghz_worker_pool_requests", NULL, &l, 1,
                                      s > f ? s - f : 0);
    }
    return rc;
}
