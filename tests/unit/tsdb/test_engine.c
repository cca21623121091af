/* test_engine.c - unit tests of the tsdb engine (src/tsdb): round trips of
 * every type through head and blocks, out-of-order and duplicate points,
 * series selection, aggregates against brute force, last values, tenants,
 * limits, WAL replay (clean, crash copy, torn and corrupt tails), retention,
 * compaction, backup, group commit and concurrency. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "tsdb/tsdb.h"
#include "tsdb/tsdb_int.h"

#define S(x) x, sizeof(x) - 1
#define SEC  1000000000ll
#define T0   (1700000000ll * SEC) /* 2023-11-14, a window boundary is every hour */

static char base[256];
static int dir_seq;

static void rm_rf(const char *p)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", p);
    if (system(cmd) != 0) fail_msg("rm failed");
}

static void new_dir(char *out, size_t n)
{
    snprintf(out, n, "%s/db%d", base, ++dir_seq);
}

static tsdb *open_db(const char *dir, tsdb_fsync f, uint64_t limit)
{
    tsdb_options o = {.dir = dir, .fsync = f, .max_series_per_tenant = limit};
    tsdb *db = NULL;
    char err[TSDB_ERR_LEN];
    thz_err rc = tsdb_open(&o, &db, err);
    if (rc) fail_msg("tsdb_open: %s: %s", thz_strerror(rc), err);
    return db;
}

static tsdb_point fpt(const char *dev, const char *met, int64_t ts, double v)
{
    return (tsdb_point){.device = dev,
                        .device_len = strlen(dev),
                        .metric = met,
                        .metric_len = strlen(met),
                        .ts = ts,
                        .v = {.type = TSDB_FLOAT, .u.f = v}};
}

static void wr(tsdb *db, int64_t tenant, const tsdb_point *p, size_t n)
{
    char err[TSDB_ERR_LEN];
    thz_err rc = tsdb_write(db, tenant, p, n, NULL, NULL, err);
    if (rc) fail_msg("tsdb_write: %s: %s", thz_strerror(rc), err);
}

/* Finds the id of (device, metric). */
typedef struct find_ctx {
    uint64_t id;
    int n;
} find_ctx;

static bool find_cb(void *ctx, const tsdb_series *s)
{
    find_ctx *c = ctx;
    c->id = s->id;
    c->n++;
    return true;
}

static uint64_t series_id(tsdb *db, int64_t tenant, const char *dev, const char *met)
{
    tsdb_matcher m[2] = {{"device", TSDB_EQ, dev}, {"metric", TSDB_EQ, met}};
    find_ctx c = {0, 0};
    assert_int_equal(tsdb_series_select(db, tenant, m, 2, find_cb, &c), THZ_OK);
    assert_int_equal(c.n, 1);
    return c.id;
}

/* Collects points read. */
typedef struct coll {
    int64_t *ts;
    tsdb_value *v;
    char **str;
    size_t n, cap;
    size_t batches;
} coll;

static bool coll_cb(void *ctx, const int64_t *ts, const tsdb_value *v, size_t n)
{
    coll *c = ctx;
    c->batches++;
    assert_true(n <= 4096);
    for (size_t i = 0; i < n; i++) {
        if (c->n == c->cap) {
            c->cap = c->cap ? c->cap * 2 : 64;
            c->ts = realloc(c->ts, c->cap * sizeof *c->ts);
            c->v = realloc(c->v, c->cap * sizeof *c->v);
            c->str = realloc(c->str, c->cap * sizeof *c->str);
        }
        if (c->n) assert_true(ts[i] > c->ts[c->n - 1]);
        c->ts[c->n] = ts[i];
        c->v[c->n] = v[i];
        c->str[c->n] = NULL;
        if (v[i].type == TSDB_STRING) {
            c->str[c->n] = strndup(v[i].u.s.p, v[i].u.s.n);
            c->v[c->n].u.s.p = c->str[c->n];
        }
        c->n++;
    }
    return true;
}

static void coll_free(coll *c)
{
    for (size_t i = 0; i < c->n; i++) free(c->str[i]);
    free(c->ts);
    free(c->v);
    free(c->str);
    memset(c, 0, sizeof *c);
}

static coll read_all(tsdb *db, int64_t tenant, uint64_t id, int64_t t0, int64_t t1)
{
    coll c = {0};
    assert_int_equal(tsdb_read(db, tenant, id, t0, t1, coll_cb, &c), THZ_OK);
    return c;
}

/* ---- tests ---- */

static void test_roundtrip_types(void **state)
{
    char dir[300];
    new_dir(dir, sizeof dir);
    tsdb *db = open_db(dir, TSDB_FSYNC_EVERYSEC, 0);
    for (int round = 0; round < 3; round++) {
        /* 0: head; 1: after flush (blocks); 2: after reopen */
        if (round == 0) {
            for (int i = 0; i < 5000; i++) {
                tsdb_point p[4];
                p[0] = fpt("dev1", "temp", T0 + i * SEC, i * 0.25);
                p[1] = fpt("dev1", "count", T0 + i * SEC, 0);
                p[1].v = (tsdb_value){.type = TSDB_INT, .u.i = (int64_t)i * 1000003 - 7};
                p[2] = fpt("dev1", "on", T0 + i * SEC, 0);
                p[2].v = (tsdb_value){.type = TSDB_BOOL, .u.b = i % 3 == 0};
                char s[32];
                int sl = snprintf(s, sizeof s, "state-%d", i % 7);
                p[3] = fpt("dev1", "state", T0 + i * 2 * SEC, 0);
                p[3].v = (tsdb_value){.type = TSDB_STRING, .u.s = {s, (uint32_t)sl}};
                wr(db, 1, p, 4);
            }
        } else if (round == 1) {
            assert_int_equal(tsdb_flush(db), THZ_OK);
            tsdb_stats st;
            tsdb_get_stats(db, &st);
            assert_int_equal(st.head_points, 0);
            assert_true(st.blocks >= 2);
        } else {
            tsdb_close(db);
            db = open_db(dir, TSDB_FSYNC_EVERYSEC, 0);
        }
        coll c = read_all(db, 1, series_id(db, 1, "dev1", "temp"), INT64_MIN, INT64_MAX);
        assert_int_equal(c.n, 5000);
        for (int i = 0; i < 5000; i++) {
            assert_true(c.ts[i] == T0 + i * SEC);
            assert_true(c.v[i].type == TSDB_FLOAT && c.v[i].u.f == i * 0.25);
        }
        assert_true(c.batches >= 2);
        coll_free(&c);
        c = read_all(db, 1, series_id(db, 1, "dev1", "count"), T0 + 10 * SEC, T0 + 20 * SEC);
        assert_int_equal(c.n, 10);
        for (int i = 0; i < 10; i++) assert_true(c.v[i].u.i == (int64_t)(i + 10) * 1000003 - 7);
        coll_free(&c);
        c = read_all(db, 1, series_id(db, 1, "dev1", "on"), INT64_MIN, INT64_MAX);
        assert_int_equal(c.n, 5000);
        for (int i = 0; i < 5000; i++) assert_true(c.v[i].u.b == (i % 3 == 0));
        coll_free(&c);
        c = read_all(db, 1, series_id(db, 1, "dev1", "state"), INT64_MIN, INT64_MAX);
        assert_int_equal(c.n, 5000);
        for (int i = 0; i < 5000; i++) {
            char s[32];
            snprintf(s, sizeof s, "state-%d", i % 7);
            assert_true(c.ts[i] == T0 + i * 2 * SEC);
            assert_int_equal(c.v[i].u.s.n, strlen(s));
            assert_memory_equal(c.v[i].u.s.p, s, strlen(s));
        }
        coll_free(&c);
    }
    tsdb_close(db);
}

static void test_out_of_order_and_duplicates(void **state)
{
    char dir[300];
    new_dir(dir, sizeof dir);
    tsdb *db = open_db(dir, TSDB_FSYNC_EVERYSEC, 0);
    /* reverse order, then duplicates overwriting even points */
    for (int i = 999; i >= 0; i--) {
        tsdb_point p = fpt("d", "m", T0 + i * SEC, i);
        wr(db, 1, &p, 1);
    }
    for (int i = 0; i < 1000; i += 2) {
        tsdb_point p = fpt("d", "m", T0 + i * SEC, -i);
        wr(db, 1, &p, 1);
    }
    uint64_t id = series_id(db, 1, "d", "m");
    for (int round = 0; round < 3; round++) {
        coll c = read_all(db, 1, id, INT64_MIN, INT64_MAX);
        assert_int_equal(c.n, 1000);
        for (int i = 0; i < 1000; i++) assert_true(c.v[i].u.f == (i % 2 ? i : -i));
        coll_free(&c);
        if (round == 0) {
            assert_int_equal(tsdb_flush(db), THZ_OK);
            /* duplicates again, now over block data: the newer write wins */
            tsdb_point p = fpt("d", "m", T0 + 1 * SEC, 42);
            wr(db, 1, &p, 1);
            coll c2 = read_all(db, 1, id, T0, T0 + 2 * SEC);
            assert_int_equal(c2.n, 2);
            assert_true(c2.v[1].u.f == 42);
            coll_free(&c2);
            p = fpt("d", "m", T0 + 1 * SEC, 1);
            wr(db, 1, &p, 1);
        } else if (round == 1) {
            assert_int_equal(tsdb_flush(db), THZ_OK);
        }
    }
    tsdb_close(db);
}

typedef struct names {
    char got[64][400];
    int n;
} names;

static bool names_cb(void *ctx, const tsdb_series *s)
{
    names *c = ctx;
    snprintf(c->got[c->n++], sizeof c->got[0], "%s/%s{%s}", s->device, s->metric, s->tags);
    return true;
}

static int sel(tsdb *db, int64_t tenant, const tsdb_matcher *m, size_t n)
{
    names c = {.n = 0};
    assert_int_equal(tsdb_series_select(db, tenant, m, n, names_cb, &c), THZ_OK);
    return c.n;
}

/* tsdb_labels, sorted into "k:key,m:metric," */
typedef struct labels {
    char names[16][64];
    int n;
    char s[1024];
} labels;

static int str_cmp(const void *a, const void *b)
{
    return strcmp(a, b);
}

static bool labels_cb(void *ctx, bool metric, const char *name, size_t len)
{
    labels *l = ctx;
    assert_true(l->n < 16);
    snprintf(l->names[l->n++], 64, "%c:%.*s", metric ? 'm' : 'k', (int)len, name);
    qsort(l->names, (size_t)l->n, 64, str_cmp);
    l->s[0] = 0;
    for (int i = 0; i < l->n; i++) {
        strcat(l->s, l->names[i]);
        strcat(l->s, ",");
    }
    return true;
}

static void test_series_select(void **state)
{
    char dir[300];
    new_dir(dir, sizeof dir);
    tsdb *db = open_db(dir, TSDB_FSYNC_EVERYSEC, 0);
    const char *keys[] = {"site", "floor"};
    size_t kl[] = {4, 5};
    char tags[3][64];
    const char *sites[] = {"paris", "berlin", "rome"};
    for (int i = 0; i < 3; i++) {
        const char *vals[] = {sites[i], i == 2 ? "2" : "1"};
        size_t vl[] = {strlen(sites[i]), 1};
        assert_true(tsdb_tags_canon(keys, kl, vals, vl, 2, tags[i], sizeof tags[i]) > 0);
    }
    assert_string_equal(tags[0], "floor=1,site=paris");
    const char *devs[] = {"sensor-1", "sensor-2", "gw"};
    const char *mets[] = {"temp", "hum"};
    for (int d = 0; d < 3; d++)
        for (int m = 0; m < 2; m++) {
            tsdb_point p = fpt(devs[d], mets[m], T0, 1);
            p.tags = tags[d];
            p.tags_len = strlen(tags[d]);
            wr(db, 1, &p, 1);
        }
    tsdb_point other = fpt("sensor-1", "temp", T0, 1);
    wr(db, 2, &other, 1);
    assert_int_equal(sel(db, 1, NULL, 0), 6);
    assert_int_equal(sel(db, 2, NULL, 0), 1);
    assert_int_equal(sel(db, 3, NULL, 0), 0);
    labels lb = {0};
    assert_int_equal(tsdb_labels(db, 1, labels_cb, &lb), THZ_OK);
    assert_string_equal(lb.s, "k:floor,k:site,m:hum,m:temp,");
    memset(&lb, 0, sizeof lb);
    assert_int_equal(tsdb_labels(db, 2, labels_cb, &lb), THZ_OK);
    assert_string_equal(lb.s, "m:temp,");
    memset(&lb, 0, sizeof lb);
    assert_int_equal(tsdb_labels(db, 3, labels_cb, &lb), THZ_OK);
    assert_int_equal(lb.n, 0);
    tsdb_matcher m1[] = {{"device", TSDB_EQ, "sensor-1"}};
    assert_int_equal(sel(db, 1, m1, 1), 2);
    tsdb_matcher m2[] = {{"device", TSDB_NE, "sensor-1"}};
    assert_int_equal(sel(db, 1, m2, 1), 4);
    tsdb_matcher m3[] = {{"device", TSDB_RE, "sensor-.*"}, {"metric", TSDB_EQ, "hum"}};
    assert_int_equal(sel(db, 1, m3, 2), 2);
    tsdb_matcher m4[] = {{"device", TSDB_NRE, "sensor"}}; /* anchored: matches no full name */
    assert_int_equal(sel(db, 1, m4, 1), 6);
    tsdb_matcher m5[] = {{"site", TSDB_EQ, "rome"}};
    assert_int_equal(sel(db, 1, m5, 1), 2);
    tsdb_matcher m6[] = {{"floor", TSDB_NE, "1"}};
    assert_int_equal(sel(db, 1, m6, 1), 2);
    tsdb_matcher m7[] = {{"site", TSDB_RE, "par.*|ber.*"}, {"metric", TSDB_NE, "temp"}};
    assert_int_equal(sel(db, 1, m7, 2), 2);
    tsdb_matcher m8[] = {{"missing", TSDB_EQ, ""}};
    assert_int_equal(sel(db, 1, m8, 1), 6);
    tsdb_matcher m9[] = {{"missing", TSDB_NE, ""}};
    assert_int_equal(sel(db, 1, m9, 1), 0);
    tsdb_matcher m10[] = {{"site", TSDB_EQ, "nowhere"}};
    assert_int_equal(sel(db, 1, m10, 1), 0);
    tsdb_matcher bad[] = {{"device", TSDB_RE, "(unclosed"}};
    names c = {.n = 0};
    assert_int_equal(tsdb_series_select(db, 1, bad, 1, names_cb, &c), THZ_EINVAL);
    /* escaping in tags */
    const char *k2[] = {"a,b"};
    size_t kl2[] = {3};
    const char *v2[] = {"x=y"};
    size_t vl2[] = {3};
    char t2[64];
    assert_int_equal(tsdb_tags_canon(k2, kl2, v2, vl2, 1, t2, sizeof t2), 9);
    assert_string_equal(t2, "a\\,b=x\\=y");
    tsdb_point p = fpt("esc", "m", T0, 1);
    p.tags = t2;
    p.tags_len = strlen(t2);
    wr(db, 1, &p, 1);
    tsdb_matcher m11[] = {{"a,b", TSDB_EQ, "x=y"}};
    assert_int_equal(sel(db, 1, m11, 1), 1);
    tsdb_matcher m12[] = {{"a,b", TSDB_RE, "x=.*"}};
    assert_int_equal(sel(db, 1, m12, 1), 1);
    const char *dk[] = {"k", "k"};
    size_t dkl[] = {1, 1};
    assert_int_equal(tsdb_tags_canon(dk, dkl, dk, dkl, 2, t2, sizeof t2), -1);
    /* survives reopen (index file + WAL) */
    tsdb_close(db);
    db = open_db(dir, TSDB_FSYNC_EVERYSEC, 0);
    assert_int_equal(sel(db, 1, m5, 1), 2);
    assert_int_equal(sel(db, 1, m11, 1), 1);
    assert_int_equal(tsdb_flush(db), THZ_OK);
    tsdb_close(db);
    db = open_db(dir, TSDB_FSYNC_EVERYSEC, 0);
    assert_int_equal(sel(db, 1, NULL, 0), 7);
    tsdb_close(db);
}

/* Brute-force aggregate reference. */
static void brute_from(const int64_t *ts, const double *v, size_t n, int64_t t0, int64_t t1,
                       int64_t origin, int64_t step, tsdb_agg *out, size_t nb)
{
    memset(out, 0, nb * sizeof *out);
    for (size_t i = 0; i < n; i++) {
        if (ts[i] < t0 || ts[i] >= t1) continue;
        size_t b = step ? (size_t)((ts[i] - origin) / step) : 0;
        if (b >= nb) continue;
        tsdb_agg *a = &out[b];
        if (!a->count) {
            *a = (tsdb_agg){1, v[i], v[i], v[i], v[i], v[i], ts[i], ts[i]};
            continue;
        }
        a->count++;
        a->sum += v[i];
        if (v[i] < a->min) a->min = v[i];
        if (v[i] > a->max) a->max = v[i];
        if (ts[i] < a->first_ts) {
            a->first_ts = ts[i];
            a->first = v[i];
        }
        if (ts[i] >= a->last_ts) {
            a->last_ts = ts[i];
            a->last = v[i];
        }
    }
}

static void brute(const int64_t *ts, const double *v, size_t n, int64_t t0, int64_t t1,
                  int64_t step, tsdb_agg *out, size_t nb)
{
    brute_from(ts, v, n, t0, t1, t0, step, out, nb);
}

static void check_aggs(tsdb *db, uint64_t id, const int64_t *ts, const double *v, size_t n)
{
    /* bins aligned before the range start (tsdb_aggregate_from) */
    for (int k = 0; k < 3; k++) {
        int64_t step = (k == 2 ? 90 : 60) * SEC, origin = T0 - 20 * SEC; /* a whole minute */
        int64_t t0 = origin + (k == 0 ? 0 : 30 * SEC + 7), t1 = T0 + 3 * 3600 * SEC + 5 * SEC;
        size_t nb = (size_t)((t1 - origin + step - 1) / step);
        tsdb_agg got[200], want[200];
        assert_true(nb <= 200);
        assert_int_equal(tsdb_aggregate_from(db, 1, id, t0, t1, origin, step, got, nb), THZ_OK);
        brute_from(ts, v, n, t0, t1, origin, step, want, nb);
        for (size_t b = 0; b < nb; b++) {
            if (got[b].count != want[b].count)
                fail_msg("from %d bin %zu: count %" PRIu64 " want %" PRIu64, k, b, got[b].count,
                         want[b].count);
            if (!want[b].count) continue;
            assert_true(fabs(got[b].sum - want[b].sum) < 1e-6 * (1 + fabs(want[b].sum)));
            assert_true(got[b].min == want[b].min && got[b].max == want[b].max);
            assert_true(got[b].first == want[b].first && got[b].last == want[b].last);
            assert_true(got[b].first_ts == want[b].first_ts && got[b].last_ts == want[b].last_ts);
        }
    }
    struct {
        int64_t t0, t1, step;
        size_t nb;
    } cases[] = {
        {INT64_MIN / 2, INT64_MAX / 2, 0, 1},
        {T0, T0 + 4 * 3600 * SEC, 3600 * SEC, 4},               /* bins = windows */
        {T0 + 1800 * SEC, T0 + 3 * 3600 * SEC, 3600 * SEC, 3},  /* bins cut blocks */
        {T0, T0 + 3 * 3600 * SEC, 60 * SEC, 180},               /* minute bins: rollups */
        {T0 + 7 * SEC, T0 + 3 * 3600 * SEC, 300 * SEC + 3, 40}, /* unaligned */
        {T0 + 3599 * SEC, T0 + 3601 * SEC, SEC, 2},
        {T0 - 100 * SEC, T0 + 100 * SEC, 7 * SEC, 10},
        {T0 + 30 * SEC + 1, T0 + 3 * 3600 * SEC, 60 * SEC, 180},        /* edge cuts a minute */
        {T0 + 17 * SEC, T0 + 2 * 3600 * SEC + 3, 90 * SEC, 80},         /* bins cut minutes */
        {T0 + 600 * SEC, T0 + 1200 * SEC, 30 * SEC, 20},                /* bins inside minutes */
        {T0 + 59 * SEC, T0 + 3 * 3600 * SEC + 61 * SEC, 120 * SEC, 92}, /* 2-minute bins */
        {T0 + 3600 * SEC + 1, INT64_MAX, 0, 1},                         /* open end */
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        tsdb_agg got[200], want[200];
        size_t nb = cases[c].nb;
        assert_int_equal(
            tsdb_aggregate(db, 1, id, cases[c].t0, cases[c].t1, cases[c].step, got, nb), THZ_OK);
        brute(ts, v, n, cases[c].t0, cases[c].t1, cases[c].step, want, nb);
        for (size_t b = 0; b < nb; b++) {
            if (got[b].count != want[b].count)
                fail_msg("case %zu bin %zu: count %" PRIu64 " want %" PRIu64, c, b, got[b].count,
                         want[b].count);
            if (!want[b].count) continue;
            assert_true(fabs(got[b].sum - want[b].sum) < 1e-6 * (1 + fabs(want[b].sum)));
            assert_true(got[b].min == want[b].min && got[b].max == want[b].max);
            assert_true(got[b].first == want[b].first && got[b].last == want[b].last);
            assert_true(got[b].first_ts == want[b].first_ts && got[b].last_ts == want[b].last_ts);
        }
    }
}

static void test_aggregate(void **state)
{
    char dir[300];
    new_dir(dir, sizeof dir);
    tsdb *db = open_db(dir, TSDB_FSYNC_EVERYSEC, 0);
    size_t n = 3 * 3600;
    int64_t *ts = malloc(n * sizeof *ts);
    double *v = malloc(n * sizeof *v);
    double x = 20;
    srand(7);
    for (size_t i = 0; i < n; i++) {
        ts[i] = T0 + (int64_t)i * SEC + (i % 5 == 0 ? 0 : 0);
        x += ((rand() % 201) - 100) / 100.0;
        v[i] = round(x * 100) / 100;
        tsdb_point p = fpt("agg", "temp", ts[i], v[i]);
        wr(db, 1, &p, 1);
    }
    uint64_t id = series_id(db, 1, "agg", "temp");
    check_aggs(db, id, ts, v, n);
    assert_int_equal(tsdb_flush(db), THZ_OK);
    check_aggs(db, id, ts, v, n);
    /* whole windows in minute bins and in one bin come from rollups and
     * block headers: nothing decoded */
    int64_t w0 = tsdb_window_of(T0) + TSDB_WINDOW_NS;
    tsdb_agg bins[120];
    uint64_t dec = tsdb__agg_decoded(db);
    assert_int_equal(tsdb_aggregate(db, 1, id, w0, w0 + 2 * 3600 * SEC, 60 * SEC, bins, 120),
                     THZ_OK);
    assert_int_equal(tsdb_aggregate(db, 1, id, w0, w0 + 3600 * SEC, 0, bins, 1), THZ_OK);
    assert_int_equal(tsdb__agg_decoded(db), dec);
    assert_int_equal(bins[0].count, 3600);
    /* a late side block in the first window, then compaction */
    tsdb_point late = fpt("agg", "temp", T0 + 10 * SEC + 1, 999);
    wr(db, 1, &late, 1);
    int64_t *ts2 = malloc((n + 1) * sizeof *ts2);
    double *v2 = malloc((n + 1) * sizeof *v2);
    memcpy(ts2, ts, 11 * sizeof *ts);
    memcpy(v2, v, 11 * sizeof *v);
    ts2[11] = late.ts;
    v2[11] = 999;
    memcpy(ts2 + 12, ts + 11, (n - 11) * sizeof *ts);
    memcpy(v2 + 12, v + 11, (n - 11) * sizeof *v);
    check_aggs(db, id, ts2, v2, n + 1);
    assert_int_equal(tsdb_flush(db), THZ_OK);
    tsdb_stats st;
    tsdb_get_stats(db, &st);
    uint64_t before = st.blocks;
    check_aggs(db, id, ts2, v2, n + 1);
    tsdb__maintain(db);
    tsdb_get_stats(db, &st);
    assert_true(st.blocks < before);
    check_aggs(db, id, ts2, v2, n + 1);
    tsdb_close(db);
    db = open_db(dir, TSDB_FSYNC_EVERYSEC, 0);
    check_aggs(db, id, ts2, v2, n + 1);
    tsdb_close(db);
    free(ts);
    free(v);
    free(ts2);
    free(v2);
}

/* A reference of written points: sorted, the last write of a timestamp wins. */
typedef struct ref {
    int64_t *ts;
    double *v;
    size_t n, cap;
} ref;

static void ref_put(ref *r, tsdb *db, int64_t ts, double v)
{
    tsdb_point p = fpt("cells", "temp", ts, v);
    wr(db, 1, &p, 1);
    for (size_t i = 0; i < r->n; i++)
        if (r->ts[i] == ts) {
            r->v[i] = v;
            return;
        }
    if (r->n == r->cap) {
        r->cap = r->cap ? r->cap * 2 : 1024;
        r->ts = realloc(r->ts, r->cap * sizeof *r->ts);
        r->v = realloc(r->v, r->cap * sizeof *r->v);
    }
    size_t i = r->n++;
    while (i && r->ts[i - 1] > ts) {
        r->ts[i] = r->ts[i - 1];
        r->v[i] = r->v[i - 1];
        i--;
    }
    r->ts[i] = ts;
    r->v[i] = v;
}

/* The head's 1-minute cells: in order, out of order, duplicates (first,
 * last and middle of a minute), empty minutes, late points; before and
 * after a restart (replay rebuilds them), with blocks in other windows and
 * in the same window, and whole minutes answered without reading points. */
static void test_head_cells(void **state)
{
    char dir[300];
    new_dir(dir, sizeof dir);
    tsdb *db = open_db(dir, TSDB_FSYNC_EVERYSEC, 0);
    ref r = {0};
    /* 3 hours at 1 Hz in order, minutes 5..7 and 100 empty */
    for (int i = 0; i < 3 * 3600; i++) {
        int m = i / 60;
        if ((m >= 5 && m <= 7) || m == 100) continue;
        ref_put(&r, db, T0 + (int64_t)i * SEC, round(sin(i * 0.01) * 1000) / 100);
    }
    uint64_t id = series_id(db, 1, "cells", "temp");
    check_aggs(db, id, r.ts, r.v, r.n);
    /* in order: minute bins over the head read no point (T0 is 20 s past a
     * minute) */
    int64_t ta = T0 + 40 * SEC;
    tsdb_agg bins[180];
    uint64_t dec = tsdb__agg_decoded(db);
    assert_int_equal(tsdb_aggregate(db, 1, id, ta, ta + 170 * 60 * SEC, 60 * SEC, bins, 170),
                     THZ_OK);
    assert_int_equal(bins[0].count, 60);
    assert_int_equal(bins[6].count, 0);
    assert_int_equal(tsdb_aggregate(db, 1, id, ta, ta + 3600 * SEC, 0, bins, 1), THZ_OK);
    assert_int_equal(tsdb__agg_decoded(db), dec);
    /* an edge inside a minute reads only that minute's points */
    assert_int_equal(tsdb_aggregate(db, 1, id, ta + 30 * SEC, ta + 3600 * SEC, 0, bins, 1), THZ_OK);
    assert_int_equal(tsdb__agg_decoded(db), dec + 30);
    /* a little out of order (put in place): half seconds backwards over the
     * newest 100 s, then duplicates of every other of the newest 100 points */
    for (int i = 0; i < 100; i++)
        ref_put(&r, db, T0 + (int64_t)(3 * 3600 - 1 - i) * SEC + SEC / 2, i * 0.1);
    for (int i = 0; i < 50; i++)
        ref_put(&r, db, T0 + (int64_t)(3 * 3600 - 1 - 2 * i) * SEC, -i * 0.1);
    assert_true(db->by_id[id]->head_sorted); /* put in place, not appended */
    check_aggs(db, id, r.ts, r.v, r.n);
    dec = tsdb__agg_decoded(db);
    assert_int_equal(tsdb_aggregate(db, 1, id, ta, ta + 180 * 60 * SEC, 60 * SEC, bins, 180),
                     THZ_OK);
    assert_int_equal(tsdb__agg_decoded(db), dec); /* the cells stayed exact */
    {
        coll c = read_all(db, 1, id, INT64_MIN, INT64_MAX);
        assert_int_equal(c.n, r.n);
        for (size_t i = 0; i < c.n; i++) assert_true(c.ts[i] == r.ts[i] && c.v[i].u.f == r.v[i]);
        coll_free(&c);
    }
    /* 300 points back: too far to move, appended (the head is sorted again
     * on the next aggregate) */
    ref_put(&r, db, T0 + (int64_t)(3 * 3600 - 300) * SEC + SEC / 4, 4.5);
    assert_false(db->by_id[id]->head_sorted);
    check_aggs(db, id, r.ts, r.v, r.n);
    assert_true(db->by_id[id]->head_sorted);
    /* duplicates: the first, a middle and the last point of minute 10 */
    ref_put(&r, db, T0 + 600 * SEC, 1000);
    ref_put(&r, db, T0 + 630 * SEC, -1000);
    ref_put(&r, db, T0 + 659 * SEC, 500);
    /* out of order: minute 6 (empty) filled backwards, a point before the
     * first of minute 20, points between existing ones of minute 30 */
    for (int i = 59; i >= 0; i -= 3) ref_put(&r, db, T0 + (360 + i) * SEC, i * 0.25);
    ref_put(&r, db, T0 + 1200 * SEC - 1, 7.5);
    ref_put(&r, db, T0 + 1800 * SEC + SEC / 2, 3.25);
    /* late points far in the past (their own cells) and a duplicate of one */
    ref_put(&r, db, T0 - 86400 * SEC, 1);
    ref_put(&r, db, T0 - 86400 * SEC + 5 * SEC, 2);
    ref_put(&r, db, T0 - 86400 * SEC, 3);
    check_aggs(db, id, r.ts, r.v, r.n);
    /* same-minute rewrite of every point of minute 40 */
    for (int i = 0; i < 60; i++) ref_put(&r, db, T0 + (2400 + i) * SEC, -i * 0.5);
    check_aggs(db, id, r.ts, r.v, r.n);
    /* replay rebuilds the cells */
    tsdb_close(db);
    db = open_db(dir, TSDB_FSYNC_EVERYSEC, 0);
    check_aggs(db, id, r.ts, r.v, r.n);
    /* blocks for everything, then a new window in the head: its minutes
     * come from cells, the blocks from rollups */
    assert_int_equal(tsdb_flush(db), THZ_OK);
    check_aggs(db, id, r.ts, r.v, r.n);
    int64_t w4 = tsdb_window_of(T0) + 4 * TSDB_WINDOW_NS; /* no block holds it */
    for (int i = 0; i < 1800; i++) ref_put(&r, db, w4 + (int64_t)i * SEC, i * 0.01);
    check_aggs(db, id, r.ts, r.v, r.n);
    dec = tsdb__agg_decoded(db);
    assert_int_equal(tsdb_aggregate(db, 1, id, w4, w4 + 1800 * SEC, 60 * SEC, bins, 30), THZ_OK);
    assert_int_equal(tsdb__agg_decoded(db), dec);
    assert_int_equal(bins[29].count, 60);
    /* head points in a window that has a block: merged point by point */
    ref_put(&r, db, T0 + 700 * SEC, 99);
    ref_put(&r, db, T0 + 700 * SEC + 1, 98);
    check_aggs(db, id, r.ts, r.v, r.n);
    tsdb_close(db);
    db = open_db(dir, TSDB_FSYNC_EVERYSEC, 0);
    check_aggs(db, id, r.ts, r.v, r.n);
    assert_int_equal(tsdb_flush(db), THZ_OK);
    check_aggs(db, id, r.ts, r.v, r.n);
    tsdb_close(db);
    free(r.ts);
    free(r.v);
}

typedef struct last_ctx {
    int64_t ts;
    tsdb_value v;
    char s[64];
    int calls;
} last_ctx;

static bool last_cb(void *ctx, const int64_t *ts, const tsdb_value *v, size_t n)
{
    last_ctx *c = ctx;
    assert_int_equal(n, 1);
    c->calls++;
    c->ts = ts[0];
    c->v = v[0];
    if (v[0].type == TSDB_STRING) snprintf(c->s, sizeof c->s, "%.*s", (int)v[0].u.s.n, v[0].u.s.p);
    return true;
}

static void test_last(void **state)
{
    char dir[300];
    new_dir(dir, sizeof dir);
    tsdb *db = open_db(dir, TSDB_FSYNC_EVERYSEC, 0);
    tsdb_point p[3] = {fpt("d", "m", T0 + 5 * SEC, 5), fpt("d", "m", T0 + 9 * SEC, 9),
                       fpt("d", "m", T0 + 7 * SEC, 7)};
    wr(db, 1, p, 3);
    tsdb_point s = fpt("d", "s", T0, 0);
    s.v = (tsdb_value){.type = TSDB_STRING, .u.s = {"hello", 5}};
    wr(db, 1, &s, 1);
    uint64_t id = series_id(db, 1, "d", "m"), sid = series_id(db, 1, "d", "s");
    for (int round = 0; round < 3; round++) {
        last_ctx c = {0};
        assert_int_equal(tsdb_last(db, 1, id, last_cb, &c), THZ_OK);
        assert_int_equal(c.calls, 1);
        assert_true(c.ts == T0 + 9 * SEC && c.v.u.f == 9);
        memset(&c, 0, sizeof c);
        assert_int_equal(tsdb_last(db, 1, sid, last_cb, &c), THZ_OK);
        assert_string_equal(c.s, "hello");
        if (round == 0) assert_int_equal(tsdb_flush(db), THZ_OK);
        tsdb_close(db);
        db = open_db(dir, TSDB_FSYNC_EVERYSEC, 0);
    }
    /* a series with no point yet cannot exist; another tenant's id is unknown */
    last_ctx c = {0};
    assert_int_equal(tsdb_last(db, 2, id, last_cb, &c), THZ_ENOTFOUND);
    tsdb_close(db);
}

static void test_tenants_limits_types(void **state)
{
    char dir[300];
    new_dir(dir, sizeof dir);
    tsdb *db = open_db(dir, TSDB_FSYNC_EVERYSEC, 3);
    tsdb_point p[3] = {fpt("d", "a", T0, 1), fpt("d", "b", T0, 1), fpt("d", "c", T0, 1)};
    wr(db, 1, p, 3);
    uint64_t id = series_id(db, 1, "d", "a");
    coll c = {0};
    assert_int_equal(tsdb_read(db, 2, id, INT64_MIN, INT64_MAX, coll_cb, &c), THZ_ENOTFOUND);
    assert_int_equal(tsdb_read(db, 1, 999999, INT64_MIN, INT64_MAX, coll_cb, &c), THZ_ENOTFOUND);
    tsdb_agg a;
    assert_int_equal(tsdb_aggregate(db, 2, id, 0, INT64_MAX, 0, &a, 1), THZ_ENOTFOUND);
    char err[TSDB_ERR_LEN];
    /* the limit: all or nothing */
    tsdb_point q[2] = {fpt("d", "a", T0 + SEC, 2), fpt("d", "new", T0, 1)};
    assert_int_equal(tsdb_write(db, 1, q, 2, NULL, NULL, err), THZ_EQUOTA);
    c = read_all(db, 1, id, INT64_MIN, INT64_MAX);
    assert_int_equal(c.n, 1);
    coll_free(&c);
    /* another tenant has its own count */
    wr(db, 2, q, 2);
    /* a type conflict is refused, naming the point */
    tsdb_point t = fpt("d", "a", T0 + 2 * SEC, 0);
    t.v = (tsdb_value){.type = TSDB_INT, .u.i = 3};
    assert_int_equal(tsdb_write(db, 1, &t, 1, NULL, NULL, err), THZ_EINVAL);
    assert_non_null(strstr(err, "point 0"));
    tsdb_point t2[2] = {fpt("x", "y", T0, 1), fpt("x", "y", T0 + 1, 0)};
    t2[1].v = (tsdb_value){.type = TSDB_BOOL, .u.b = true};
    assert_int_equal(tsdb_write(db, 2, t2, 2, NULL, NULL, err), THZ_EINVAL);
    tsdb_point bad = fpt("", "y", T0, 1);
    assert_int_equal(tsdb_write(db, 1, &bad, 1, NULL, NULL, err), THZ_EINVAL);
    tsdb_stats st;
    tsdb_get_stats(db, &st);
    assert_int_equal(st.series, 5);
    assert_true(st.points_rejected >= 4);
    tsdb_close(db);
}

/* Copies a directory tree (the state a crash would leave, page cache included). */
static void cp_r(const char *from, const char *to)
{
    char cmd[700];
    snprintf(cmd, sizeof cmd, "cp -r '%s' '%s'", from, to);
    assert_int_equal(system(cmd), 0);
}

/* The state kill -9 would leave: waits until the WAL thread has written
 * everything appended (to the page cache), then copies the directory. */
static void crash_copy(tsdb *db, const char *from, const char *to)
{
    tsdb_stats st;
    for (int i = 0; i < 5000; i++) {
        tsdb_get_stats(db, &st);
        if (!st.wal_pending_bytes) break;
        usleep(1000);
    }
    assert_int_equal(st.wal_pending_bytes, 0);
    cp_r(from, to);
}

typedef struct done_ctx {
    pthread_mutex_t mu;
    int done, bad;
    tsdb *db;
    uint64_t fsyncs_at_write;
    int early; /* done before an fsync happened after the write */
} done_ctx;

static void done_cb(void *ctx, thz_err rc)
{
    done_ctx *d = ctx;
    tsdb_stats st;
    tsdb_get_stats(d->db, &st);
    pthread_mutex_lock(&d->mu);
    if (rc) d->bad++;
    if (st.fsyncs <= d->fsyncs_at_write) d->early++;
    d->done++;
    pthread_mutex_unlock(&d->mu);
}

static void wait_done(done_ctx *d, int n)
{
    for (int i = 0; i < 5000; i++) {
        pthread_mutex_lock(&d->mu);
        int k = d->done;
        pthread_mutex_unlock(&d->mu);
        if (k >= n) return;
        usleep(1000);
    }
    fail_msg("done callbacks did not come");
}

static void test_fsync_always_and_crash_copy(void **state)
{
    char dir[300], copy[300];
    new_dir(dir, sizeof dir);
    new_dir(copy, sizeof copy);
    tsdb *db = open_db(dir, TSDB_FSYNC_ALWAYS, 0);
    done_ctx d = {PTHREAD_MUTEX_INITIALIZER, 0, 0, db, 0, 0};
    tsdb_stats st;
    tsdb_get_stats(db, &st);
    d.fsyncs_at_write = st.fsyncs;
    for (int i = 0; i < 200; i++) {
        tsdb_point p = fpt("crash", "m", T0 + i * SEC, i);
        char err[TSDB_ERR_LEN];
        assert_int_equal(tsdb_write(db, 1, &p, 1, done_cb, &d, err), THZ_OK);
    }
    wait_done(&d, 200);
    assert_int_equal(d.bad, 0);
    assert_int_equal(d.early, 0);
    tsdb_get_stats(db, &st);
    assert_true(st.fsyncs >= 1 && st.fsyncs <= 200); /* group commit */
    /* everything acknowledged is in the WAL files now: copy them as a crash would leave them */
    cp_r(dir, copy);
    tsdb *db2 = open_db(copy, TSDB_FSYNC_ALWAYS, 0);
    uint64_t id = series_id(db2, 1, "crash", "m");
    coll c = read_all(db2, 1, id, INT64_MIN, INT64_MAX);
    assert_int_equal(c.n, 200);
    coll_free(&c);
    tsdb_close(db2);
    /* the same after a flush and more writes (checkpoint + newer segment) */
    assert_int_equal(tsdb_flush(db), THZ_OK);
    for (int i = 200; i < 300; i++) {
        tsdb_point p = fpt("crash", "m", T0 + i * SEC, i);
        assert_int_equal(tsdb_write(db, 1, &p, 1, done_cb, &d, NULL), THZ_OK);
    }
    wait_done(&d, 300);
    rm_rf(copy);
    cp_r(dir, copy);
    db2 = open_db(copy, TSDB_FSYNC_ALWAYS, 0);
    c = read_all(db2, 1, id, INT64_MIN, INT64_MAX);
    assert_int_equal(c.n, 300);
    for (int i = 0; i < 300; i++) assert_true(c.v[i].u.f == i);
    coll_free(&c);
    tsdb_close(db2);
    tsdb_close(db);
}

static void test_everysec_done_inline(void **state)
{
    char dir[300];
    new_dir(dir, sizeof dir);
    tsdb *db = open_db(dir, TSDB_FSYNC_EVERYSEC, 0);
    done_ctx d = {PTHREAD_MUTEX_INITIALIZER, 0, 0, db, UINT64_MAX, 0};
    tsdb_point p = fpt("e", "m", T0, 1);
    assert_int_equal(tsdb_write(db, 1, &p, 1, done_cb, &d, NULL), THZ_OK);
    assert_int_equal(d.done, 1); /* called inside tsdb_write */
    tsdb_close(db);
    db = open_db(dir, TSDB_FSYNC_EVERYSEC, 0);
    coll c = read_all(db, 1, series_id(db, 1, "e", "m"), INT64_MIN, INT64_MAX);
    assert_int_equal(c.n, 1);
    coll_free(&c);
    tsdb_close(db);
}

static char *newest_segment(const char *dir)
{
    char w[400];
    snprintf(w, sizeof w, "%s/wal", dir);
    DIR *d = opendir(w);
    assert_non_null(d);
    struct dirent *e;
    char best[256] = "";
    while ((e = readdir(d)))
        if (strstr(e->d_name, ".wal") && strcmp(e->d_name, best) > 0) {
            struct stat st;
            char p[700];
            snprintf(p, sizeof p, "%s/%s", w, e->d_name);
            if (stat(p, &st) == 0 && st.st_size > 0) snprintf(best, sizeof best, "%s", e->d_name);
        }
    closedir(d);
    assert_true(best[0]);
    char *out = malloc(800);
    snprintf(out, 800, "%s/%s", w, best);
    return out;
}

static void test_wal_torn_and_corrupt(void **state)
{
    for (int mode = 0; mode < 2; mode++) {
        /* a crash copy: a clean close would have written the points to blocks */
        char live[300], dir[300];
        new_dir(live, sizeof live);
        new_dir(dir, sizeof dir);
        tsdb *db = open_db(live, TSDB_FSYNC_EVERYSEC, 0);
        for (int i = 0; i < 100; i++) {
            tsdb_point p = fpt("w", "m", T0 + i * SEC, i);
            wr(db, 1, &p, 1);
        }
        crash_copy(db, live, dir);
        tsdb_close(db);
        char *seg = newest_segment(dir);
        struct stat st;
        assert_int_equal(stat(seg, &st), 0);
        /* each point record: 8 frame + 25 payload = 33 bytes, at the end */
        if (mode == 0) {
            assert_int_equal(truncate(seg, st.st_size - 10), 0); /* torn last record */
        } else {
            int fd = open(seg, O_RDWR);
            uint8_t b;
            off_t at = st.st_size - 33 * 10 + 20; /* inside the 91st point's record */
            assert_int_equal(pread(fd, &b, 1, at), 1);
            b ^= 0x55;
            assert_int_equal(pwrite(fd, &b, 1, at), 1);
            close(fd);
        }
        db = open_db(dir, TSDB_FSYNC_EVERYSEC, 0);
        coll c = read_all(db, 1, series_id(db, 1, "w", "m"), INT64_MIN, INT64_MAX);
        assert_int_equal(c.n, mode == 0 ? 99 : 90);
        for (size_t i = 0; i < c.n; i++) assert_true(c.v[i].u.f == (double)i);
        coll_free(&c);
        /* writes after the truncation survive the next open */
        tsdb_point p = fpt("w", "m", T0 + 500 * SEC, 500);
        wr(db, 1, &p, 1);
        tsdb_close(db);
        db = open_db(dir, TSDB_FSYNC_EVERYSEC, 0);
        c = read_all(db, 1, series_id(db, 1, "w", "m"), INT64_MIN, INT64_MAX);
        assert_int_equal(c.n, mode == 0 ? 100 : 91);
        coll_free(&c);
        tsdb_close(db);
        free(seg);
    }
}

static void test_retention(void **state)
{
    char dir[300];
    new_dir(dir, sizeof dir);
    tsdb *db = open_db(dir, TSDB_FSYNC_EVERYSEC, 0);
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    int64_t n = (int64_t)now.tv_sec * SEC;
    tsdb_point p[4] = {fpt("r", "m", n - 10 * 86400 * SEC, 1), fpt("r", "m", n - 60 * SEC, 2),
                       fpt("r", "keep", n - 10 * 86400 * SEC, 3),
                       fpt("r", "short", n - 2 * 86400 * SEC, 3)};
    wr(db, 1, p, 4);
    wr(db, 2, p, 1);
    assert_int_equal(tsdb_flush(db), THZ_OK);
    assert_int_equal(tsdb_set_retention(db, 1, NULL, 86400), THZ_OK);
    tsdb_close(db); /* persisted */
    db = open_db(dir, TSDB_FSYNC_EVERYSEC, 0);
    tsdb__maintain(db);
    uint64_t id = series_id(db, 1, "r", "m");
    coll c = read_all(db, 1, id, INT64_MIN, INT64_MAX);
    assert_int_equal(c.n, 1);
    assert_true(c.v[0].u.f == 2);
    coll_free(&c);
    /* tenant 2 keeps everything */
    c = read_all(db, 2, series_id(db, 2, "r", "m"), INT64_MIN, INT64_MAX);
    assert_int_equal(c.n, 1);
    coll_free(&c);
    assert_int_equal(tsdb_set_retention(db, 1, "m", 0), THZ_OK);
    assert_int_equal(tsdb_set_retention(db, 2, NULL, 86400), THZ_OK);
    tsdb__maintain(db);
    c = read_all(db, 2, series_id(db, 2, "r", "m"), INT64_MIN, INT64_MAX);
    assert_int_equal(c.n, 0);
    coll_free(&c);
    assert_int_equal(tsdb_set_retention(db, 1, NULL, -1), THZ_EINVAL);
    tsdb_close(db);
}

typedef struct ret_seen {
    int calls;
    int64_t tenant_s;
    bool tenant_own;
    int64_t m_s; /* retention of metric "m", -2 if not reported */
} ret_seen;

static void ret_cb(void *ctx, const char *metric, size_t mlen, int64_t seconds, bool own)
{
    ret_seen *r = ctx;
    if (r->calls++ == 0) {
        assert_null(metric);
        r->tenant_s = seconds;
        r->tenant_own = own;
    } else {
        assert_non_null(metric);
        assert_true(own);
        if (mlen == 1 && metric[0] == 'm') r->m_s = seconds;
    }
}

/* tsdb_get_retention: the default until set, then the tenant's own and its
 * metric retentions, persisted across a reopen. */
static void test_get_retention(void **state)
{
    char dir[300];
    new_dir(dir, sizeof dir);
    tsdb_options o = {.dir = dir, .fsync = TSDB_FSYNC_EVERYSEC, .retention_s = 3600};
    tsdb *db;
    char err[TSDB_ERR_LEN];
    assert_int_equal(tsdb_open(&o, &db, err), THZ_OK);
    ret_seen r = {.m_s = -2};
    assert_int_equal(tsdb_get_retention(db, 5, ret_cb, &r), THZ_OK);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.tenant_s, 3600);
    assert_false(r.tenant_own);
    assert_int_equal(tsdb_set_retention(db, 5, NULL, 0), THZ_OK);
    assert_int_equal(tsdb_set_retention(db, 5, "m", 7 * 86400), THZ_OK);
    tsdb_close(db);
    assert_int_equal(tsdb_open(&o, &db, err), THZ_OK);
    r = (ret_seen){.m_s = -2};
    assert_int_equal(tsdb_get_retention(db, 5, ret_cb, &r), THZ_OK);
    assert_int_equal(r.calls, 2);
    assert_int_equal(r.tenant_s, 0);
    assert_true(r.tenant_own);
    assert_int_equal(r.m_s, 7 * 86400);
    /* another tenant still has the default */
    r = (ret_seen){.m_s = -2};
    assert_int_equal(tsdb_get_retention(db, 6, ret_cb, &r), THZ_OK);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.tenant_s, 3600);
    assert_int_equal(tsdb_get_retention(db, 6, NULL, NULL), THZ_EINVAL);
    tsdb_close(db);
}

typedef struct cmp_ctx {
    tsdb *a, *b;
    int64_t tenant;
    int n;
} cmp_ctx;

static bool cmp_cb(void *ctx, const tsdb_series *s)
{
    cmp_ctx *c = ctx;
    coll x = read_all(c->a, c->tenant, s->id, INT64_MIN, INT64_MAX);
    coll y = read_all(c->b, c->tenant, s->id, INT64_MIN, INT64_MAX);
    assert_int_equal(x.n, y.n);
    assert_memory_equal(x.ts, y.ts, x.n * sizeof *x.ts);
    for (size_t i = 0; i < x.n; i++) assert_true(x.v[i].u.f == y.v[i].u.f);
    coll_free(&x);
    coll_free(&y);
    c->n++;
    return true;
}

static void test_backup(void **state)
{
    char dir[300], bak[300];
    new_dir(dir, sizeof dir);
    new_dir(bak, sizeof bak);
    tsdb *db = open_db(dir, TSDB_FSYNC_EVERYSEC, 0);
    for (int i = 0; i < 7200; i += 3) {
        tsdb_point p[2] = {fpt("b1", "m", T0 + i * SEC, i), fpt("b2", "m", T0 + i * SEC, -i)};
        wr(db, 1, p, 2);
    }
    assert_int_equal(tsdb_flush(db), THZ_OK);
    tsdb_point late = fpt("b1", "m", T0 + 1, 5);
    wr(db, 1, &late, 1);
    char err[TSDB_ERR_LEN];
    assert_int_equal(tsdb_backup(db, bak, err), THZ_OK);
    assert_int_equal(tsdb_backup(db, bak, err), THZ_EEXIST);
    tsdb *copy = open_db(bak, TSDB_FSYNC_EVERYSEC, 0);
    coll x = read_all(copy, 1, series_id(copy, 1, "b1", "m"), INT64_MIN, INT64_MAX);
    assert_int_equal(x.n, 2401);
    coll_free(&x);
    /* every series reads the same in the original and the copy */
    cmp_ctx c = {db, copy, 1, 0};
    assert_int_equal(tsdb_series_select(db, 1, NULL, 0, cmp_cb, &c), THZ_OK);
    assert_int_equal(c.n, 2);
    tsdb_agg a1, a2;
    uint64_t id = series_id(db, 1, "b2", "m");
    assert_int_equal(tsdb_aggregate(db, 1, id, INT64_MIN, INT64_MAX, 0, &a1, 1), THZ_OK);
    assert_int_equal(tsdb_aggregate(copy, 1, id, INT64_MIN, INT64_MAX, 0, &a2, 1), THZ_OK);
    assert_memory_equal(&a1, &a2, sizeof a1);
    /* a write after the backup is not in it */
    tsdb_point after = fpt("b1", "m", T0 + 2, 5);
    wr(db, 1, &after, 1);
    x = read_all(copy, 1, series_id(copy, 1, "b1", "m"), INT64_MIN, INT64_MAX);
    assert_int_equal(x.n, 2401);
    coll_free(&x);
    tsdb_close(db);
    tsdb_close(copy);
}

/* The WAL carries series definitions: losing the index file (it lags until
 * a cut) loses nothing that the WAL still holds. */
static void test_index_rebuilt_from_wal(void **state)
{
    char live[300], dir[300], path[400];
    new_dir(live, sizeof live);
    new_dir(dir, sizeof dir);
    tsdb *db = open_db(live, TSDB_FSYNC_EVERYSEC, 0);
    tsdb_point p[2] = {fpt("ix", "a", T0, 1), fpt("ix", "b", T0, 2)};
    wr(db, 5, p, 2);
    crash_copy(db, live, dir); /* the index file lags: the WAL has the series */
    tsdb_close(db);
    snprintf(path, sizeof path, "%s/index", dir);
    assert_int_equal(unlink(path), 0);
    db = open_db(dir, TSDB_FSYNC_EVERYSEC, 0);
    assert_int_equal(sel(db, 5, NULL, 0), 2);
    coll c = read_all(db, 5, series_id(db, 5, "ix", "b"), INT64_MIN, INT64_MAX);
    assert_int_equal(c.n, 1);
    assert_true(c.v[0].u.f == 2);
    coll_free(&c);
    /* and a flush writes the index again before retiring the WAL */
    assert_int_equal(tsdb_flush(db), THZ_OK);
    tsdb_close(db);
    db = open_db(dir, TSDB_FSYNC_EVERYSEC, 0);
    assert_int_equal(sel(db, 5, NULL, 0), 2);
    tsdb_close(db);
}

typedef struct wthread {
    tsdb *db;
    int idx;
    int n;
} wthread;

static void *writer_main(void *arg)
{
    wthread *w = arg;
    char dev[32];
    snprintf(dev, sizeof dev, "dev-%d", w->idx);
    for (int i = 0; i < w->n; i++) {
        tsdb_point p[2] = {fpt(dev, "a", T0 + i * SEC, i), fpt(dev, "b", T0 + i * SEC, -i)};
        char err[TSDB_ERR_LEN];
        if (tsdb_write(w->db, 1, p, 2, NULL, NULL, err)) abort();
        if (i % 5000 == 2500 && w->idx == 0) tsdb_flush(w->db);
    }
    return NULL;
}

static bool conc_read_cb(void *ctx, const int64_t *ts, const tsdb_value *v, size_t n)
{
    size_t *cnt = ctx;
    for (size_t i = 0; i < n; i++)
        if (v[i].u.f != (double)((ts[i] - T0) / SEC)) abort();
    *cnt += n;
    return true;
}

static bool conc_sel_cb(void *ctx, const tsdb_series *s)
{
    tsdb *db = ctx;
    size_t cnt = 0;
    if (strcmp(s->metric, "a") == 0 &&
        tsdb_read(db, 1, s->id, INT64_MIN, INT64_MAX, conc_read_cb, &cnt))
        abort();
    return true;
}

static void test_concurrency(void **state)
{
    char dir[300];
    new_dir(dir, sizeof dir);
    tsdb *db = open_db(dir, TSDB_FSYNC_ALWAYS, 0);
    enum { NW = 4, N = 20000 };
    pthread_t th[NW];
    wthread w[NW];
    for (int i = 0; i < NW; i++) {
        w[i] = (wthread){db, i, N};
        pthread_create(&th[i], NULL, writer_main, &w[i]);
    }
    for (int r = 0; r < 20; r++) {
        assert_int_equal(tsdb_series_select(db, 1, NULL, 0, conc_sel_cb, db), THZ_OK);
        if (r % 4 == 3) tsdb__maintain(db); /* compaction under writers and readers */
        usleep(2000);
    }
    for (int i = 0; i < NW; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < NW; i++) {
        char dev[32];
        snprintf(dev, sizeof dev, "dev-%d", i);
        coll c = read_all(db, 1, series_id(db, 1, dev, "b"), INT64_MIN, INT64_MAX);
        assert_int_equal(c.n, N);
        coll_free(&c);
    }
    tsdb_stats st;
    tsdb_get_stats(db, &st);
    assert_int_equal(st.points_written, NW * N * 2);
    tsdb_close(db);
    db = open_db(dir, TSDB_FSYNC_ALWAYS, 0);
    for (int i = 0; i < NW; i++) {
        char dev[32];
        snprintf(dev, sizeof dev, "dev-%d", i);
        coll c = read_all(db, 1, series_id(db, 1, dev, "a"), INT64_MIN, INT64_MAX);
        assert_int_equal(c.n, N);
        coll_free(&c);
    }
    tsdb_close(db);
}

/* ---- restart: replay and the clean close ---- */

/* A workload with what replay must get right: four types, series that
 * appear halfway (their definitions mid-log), two tenants with the same
 * names, duplicate timestamps (the last write wins), points a little out of
 * order (inserted in place) and far out of order (the head turns unsorted),
 * many series interleaved as devices send them. */
static void restart_workload(tsdb *db)
{
    char sbuf[64];
    for (int t = 0; t < 400; t++) {
        for (int d = 0; d < 12; d++) {
            if (d >= 9 && t < 150) continue; /* devices 9..11 appear later */
            char dev[16];
            snprintf(dev, sizeof dev, "dev-%02d", d);
            int64_t ts = T0 + (int64_t)t * SEC;
            snprintf(sbuf, sizeof sbuf, "s%d-%d%s", d, t, t % 7 ? "" : "-longer-string");
            tsdb_point p[4] = {fpt(dev, "f", ts, d * 1000 + t * 0.25), fpt(dev, "i", ts, 0),
                               fpt(dev, "b", ts, 0), fpt(dev, "s", ts, 0)};
            p[1].v = (tsdb_value){.type = TSDB_INT, .u.i = (int64_t)t * 3 - d};
            p[2].v = (tsdb_value){.type = TSDB_BOOL, .u.b = (t + d) % 3 == 0};
            p[3].v.type = TSDB_STRING;
            p[3].v.u.s.p = sbuf;
            p[3].v.u.s.n = t % 11 ? (uint32_t)strlen(sbuf) : 0; /* some empty */
            wr(db, 1 + d % 2, p, 4);
            if (t % 13 == 5) { /* a duplicate of the previous second */
                tsdb_point q = fpt(dev, "f", ts - SEC, -1.0 * t);
                wr(db, 1 + d % 2, &q, 1);
            }
            if (t % 29 == 7 && t > 20) { /* a little out of order: in place */
                tsdb_point q = fpt(dev, "f", ts - 10 * SEC + SEC / 2, 0.5 * t);
                wr(db, 1 + d % 2, &q, 1);
            }
        }
        if (t == 350) { /* far out of order (> 256 back): the head goes unsorted */
            tsdb_point q = fpt("dev-00", "f", T0 + 3 * SEC + 1, 77.0);
            wr(db, 1, &q, 1);
            tsdb_point q2 = fpt("dev-00", "f", T0 + 4 * SEC, 88.0); /* and a duplicate */
            wr(db, 1, &q2, 1);
        }
    }
}

typedef struct ids_ctx {
    uint64_t v[128];
    int n;
} ids_ctx;

static bool ids_cb(void *ctx, const tsdb_series *s)
{
    ids_ctx *c = ctx;
    if (c->n < 128) c->v[c->n++] = s->id;
    return true;
}

static bool agg_eq(const tsdb_agg *a, const tsdb_agg *b)
{
    return a->count == b->count && a->sum == b->sum && a->min == b->min && a->max == b->max &&
           a->first == b->first && a->last == b->last && a->first_ts == b->first_ts &&
           a->last_ts == b->last_ts;
}

/* Every series of tenants 1 and 2 reads the same from a and b: points,
 * per-minute aggregates (head cells or block rollups) and last values.
 * Returns the number of points compared. */
static size_t same_data(tsdb *a, tsdb *b)
{
    size_t total = 0;
    for (int64_t tenant = 1; tenant <= 2; tenant++) {
        ids_ctx ia = {.n = 0}, ib = {.n = 0};
        assert_int_equal(tsdb_series_select(a, tenant, NULL, 0, ids_cb, &ia), THZ_OK);
        assert_int_equal(tsdb_series_select(b, tenant, NULL, 0, ids_cb, &ib), THZ_OK);
        assert_int_equal(ia.n, ib.n);
        assert_true(ia.n > 0);
        for (int k = 0; k < ia.n; k++) {
            assert_int_equal(ia.v[k], ib.v[k]);
            coll ca = read_all(a, tenant, ia.v[k], INT64_MIN, INT64_MAX);
            coll cb = read_all(b, tenant, ib.v[k], INT64_MIN, INT64_MAX);
            assert_int_equal(ca.n, cb.n);
            for (size_t i = 0; i < ca.n; i++) {
                assert_true(ca.ts[i] == cb.ts[i]);
                assert_int_equal(ca.v[i].type, cb.v[i].type);
                if (ca.v[i].type == TSDB_STRING) {
                    assert_int_equal(ca.v[i].u.s.n, cb.v[i].u.s.n);
                    assert_memory_equal(ca.v[i].u.s.p, cb.v[i].u.s.p, ca.v[i].u.s.n);
                } else if (ca.v[i].type == TSDB_BOOL) {
                    assert_int_equal(ca.v[i].u.b, cb.v[i].u.b);
                } else if (ca.v[i].type == TSDB_INT) {
                    assert_int_equal(ca.v[i].u.i, cb.v[i].u.i);
                } else {
                    assert_memory_equal(&ca.v[i].u.f, &cb.v[i].u.f, 8);
                }
            }
            total += ca.n;
            if (ca.n && ca.v[0].type != TSDB_STRING) {
                tsdb_agg ga[10], gb[10];
                int64_t t0 = T0 - 60 * SEC;
                assert_int_equal(
                    tsdb_aggregate(a, tenant, ia.v[k], t0, t0 + 600 * SEC, 60 * SEC, ga, 10),
                    THZ_OK);
                assert_int_equal(
                    tsdb_aggregate(b, tenant, ib.v[k], t0, t0 + 600 * SEC, 60 * SEC, gb, 10),
                    THZ_OK);
                for (int i = 0; i < 10; i++) assert_true(agg_eq(&ga[i], &gb[i]));
            }
            coll la = {0}, lb = {0};
            assert_int_equal(tsdb_last(a, tenant, ia.v[k], coll_cb, &la), THZ_OK);
            assert_int_equal(tsdb_last(b, tenant, ib.v[k], coll_cb, &lb), THZ_OK);
            assert_int_equal(la.n, lb.n);
            if (la.n) assert_true(la.ts[0] == lb.ts[0]);
            coll_free(&ca);
            coll_free(&cb);
            coll_free(&la);
            coll_free(&lb);
        }
    }
    return total;
}

/* kill -9: the replayed head reads exactly as the live head did, with the
 * default batch and with batches of a few points (a series' points split
 * across many apply passes). */
static void test_replay_matches_live_head(void **state)
{
    char live[300];
    new_dir(live, sizeof live);
    tsdb *db = open_db(live, TSDB_FSYNC_EVERYSEC, 0);
    restart_workload(db);
    tsdb_stats st;
    tsdb_get_stats(db, &st);
    assert_int_equal(st.blocks, 0); /* all of it in the head (and the WAL) */
    size_t batches[] = {0, 7, 1};
    for (size_t k = 0; k < 3; k++) {
        char copy[300];
        new_dir(copy, sizeof copy);
        crash_copy(db, live, copy);
        tsdb__replay_batch = batches[k];
        tsdb *r = open_db(copy, TSDB_FSYNC_EVERYSEC, 0);
        tsdb__replay_batch = 0;
        tsdb_stats rs;
        tsdb_get_stats(r, &rs);
        assert_int_equal(rs.head_points, st.head_points);
        assert_int_equal(rs.series, st.series);
        assert_true(same_data(db, r) > 10000);
        /* the replayed engine takes new points of old and new series */
        tsdb_point p[2] = {fpt("dev-00", "f", T0 + 1000 * SEC, 5), fpt("new", "f", T0, 6)};
        wr(r, 1, p, 2);
        coll c = read_all(r, 1, series_id(r, 1, "new", "f"), INT64_MIN, INT64_MAX);
        assert_int_equal(c.n, 1);
        coll_free(&c);
        tsdb_close(r);
    }
    tsdb_close(db);
}

/* A replayed point of a series whose type the index does not know cannot
 * be parsed; a record of one series then others after it: the points before
 * it stay, the rest of that record is skipped, the next record is read. */
static void test_replay_unknown_series(void **state)
{
    char dir[300], path[600];
    new_dir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/wal", dir);
    assert_int_equal(mkdir(dir, 0755), 0);
    assert_int_equal(mkdir(path, 0755), 0);
    /* series 1 and its first point, written by a live engine */
    tsdb *db = open_db(dir, TSDB_FSYNC_EVERYSEC, 0);
    tsdb_point p = fpt("u", "m", T0, 1);
    wr(db, 1, &p, 1);
    char copy[300];
    new_dir(copy, sizeof copy);
    crash_copy(db, dir, copy);
    tsdb_close(db);
    /* append a record: a point of series 1, one of unknown series 999, one of 1 */
    thz_buf pay = {0}, rec = {0};
    tsdb_ser fake = {.id = 1, .type = TSDB_FLOAT};
    tsdb_wal_put_point(&pay, &fake, T0 + SEC, 0x4000000000000000ull /* 2.0 */, NULL);
    fake.id = 999;
    tsdb_wal_put_point(&pay, &fake, T0 + 2 * SEC, 0, NULL);
    fake.id = 1;
    tsdb_wal_put_point(&pay, &fake, T0 + 3 * SEC, 0, NULL);
    assert_int_equal(tsdb_wal_frame(&rec, &pay), THZ_OK);
    pay.len = 0;
    tsdb_wal_put_point(&pay, &fake, T0 + 4 * SEC, 0x4010000000000000ull /* 4.0 */, NULL);
    assert_int_equal(tsdb_wal_frame(&rec, &pay), THZ_OK);
    char *seg = newest_segment(copy);
    FILE *f = fopen(seg, "ab");
    assert_non_null(f);
    assert_int_equal(fwrite(rec.p, 1, rec.len, f), rec.len);
    fclose(f);
    free(seg);
    thz_buf_free(&pay);
    thz_buf_free(&rec);
    db = open_db(copy, TSDB_FSYNC_EVERYSEC, 0);
    coll c = read_all(db, 1, series_id(db, 1, "u", "m"), INT64_MIN, INT64_MAX);
    assert_int_equal(c.n, 3);
    assert_true(c.ts[0] == T0 && c.v[0].u.f == 1);
    assert_true(c.ts[1] == T0 + SEC && c.v[1].u.f == 2);
    assert_true(c.ts[2] == T0 + 4 * SEC && c.v[2].u.f == 4);
    coll_free(&c);
    tsdb_close(db);
}

/* WAL bytes of segments and checkpoints in DIR/wal. */
static long wal_bytes(const char *dir)
{
    char w[400], p[800];
    snprintf(w, sizeof w, "%s/wal", dir);
    DIR *d = opendir(w);
    assert_non_null(d);
    struct dirent *e;
    long n = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        struct stat st;
        snprintf(p, sizeof p, "%s/%s", w, e->d_name);
        if (stat(p, &st) == 0) n += st.st_size;
    }
    closedir(d);
    return n;
}

/* A clean close writes the head to blocks and leaves nothing to replay:
 * the next open has an empty head and reads the same data from blocks as
 * a crash copy taken just before the close replays from its WAL. */
static void test_clean_close_leaves_no_wal(void **state)
{
    char dir[300], copy[300];
    new_dir(dir, sizeof dir);
    new_dir(copy, sizeof copy);
    tsdb *db = open_db(dir, TSDB_FSYNC_EVERYSEC, 0);
    restart_workload(db);
    tsdb_stats st;
    tsdb_get_stats(db, &st);
    assert_true(st.head_points > 10000);
    assert_int_equal(st.blocks, 0);
    crash_copy(db, dir, copy);
    assert_true(wal_bytes(dir) > 100000);
    tsdb_close(db);
    assert_int_equal(wal_bytes(dir), 0); /* empty checkpoint and segment */
    db = open_db(dir, TSDB_FSYNC_EVERYSEC, 0);
    tsdb_get_stats(db, &st);
    assert_int_equal(st.head_points, 0);
    assert_true(st.blocks >= 2); /* two tenants */
    tsdb *r = open_db(copy, TSDB_FSYNC_EVERYSEC, 0);
    assert_true(same_data(db, r) > 10000);
    tsdb_close(r);
    /* new points after the restart, and a second clean close */
    tsdb_point p = fpt("dev-00", "f", T0 + 2000 * SEC, 9);
    wr(db, 1, &p, 1);
    tsdb_close(db);
    db = open_db(dir, TSDB_FSYNC_EVERYSEC, 0);
    tsdb_get_stats(db, &st);
    assert_int_equal(st.head_points, 0);
    coll c = read_all(db, 1, series_id(db, 1, "dev-00", "f"), T0 + 1500 * SEC, INT64_MAX);
    assert_int_equal(c.n, 1);
    assert_true(c.v[0].u.f == 9);
    coll_free(&c);
    /* a close with nothing in the head writes nothing */
    tsdb_get_stats(db, &st);
    uint64_t blocks = st.blocks;
    tsdb_close(db);
    db = open_db(dir, TSDB_FSYNC_EVERYSEC, 0);
    tsdb_get_stats(db, &st);
    assert_int_equal(st.blocks, blocks);
    tsdb_close(db);
}

static int setup(void **state)
{
    thz_log_level = THZ_LOG_ERROR;
    const char *b = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(base, sizeof base, "%s/thz-tsdb-test-XXXXXX", b);
    if (!mkdtemp(base)) return -1;
    return 0;
}

static int teardown(void **state)
{
    rm_rf(base);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_roundtrip_types),
        cmocka_unit_test(test_out_of_order_and_duplicates),
        cmocka_unit_test(test_series_select),
        cmocka_unit_test(test_aggregate),
        cmocka_unit_test(test_head_cells),
        cmocka_unit_test(test_last),
        cmocka_unit_test(test_tenants_limits_types),
        cmocka_unit_test(test_fsync_always_and_crash_copy),
        cmocka_unit_test(test_everysec_done_inline),
        cmocka_unit_test(test_wal_torn_and_corrupt),
        cmocka_unit_test(test_retention),
        cmocka_unit_test(test_get_retention),
        cmocka_unit_test(test_backup),
        cmocka_unit_test(test_index_rebuilt_from_wal),
        cmocka_unit_test(test_concurrency),
        cmocka_unit_test(test_replay_matches_live_head),
        cmocka_unit_test(test_replay_unknown_series),
        cmocka_unit_test(test_clean_close_leaves_no_wal),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
