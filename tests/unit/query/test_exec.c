/* test_exec.c - the query layer against a real tsdb in a temporary
 * directory: exact answers computed by brute force over the points the test
 * wrote (avg per bin, max across and per device, last per device, gap
 * filling, IN/BETWEEN filters, ORDER BY/LIMIT, stddev, percentile), the same
 * answers after the head is flushed into blocks (the aggregate fast path
 * then reads block headers and rollups), errors with positions, budgets and
 * tenant isolation. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "query/query.h"
#include "tsdb/tsdb.h"

#define SEC 1000000000LL
#define T0  (1795687200LL * SEC) /* 2026-11-26 10:00:00 */
#define NPT 720                  /* every 10 s for 2 hours */

static tsdb *db;
static char dir[64];

typedef struct pt {
    const char *dev, *site;
    int64_t ts;
    double v;
} pt;
static pt pts[4 * NPT];
static int npts;

static const char *devs[] = {"d1", "d2", "d3"};
static const char *sites[] = {"a", "a", "b"};

static double val(int d, int i)
{
    /* deterministic, distinct per device, fractional */
    return 20 + d * 1.5 + sin(i * 0.05 + d) * 5 + (i % 7) * 0.125;
}

static void put(int64_t tenant, const char *dev, const char *tags, const char *metric, int64_t ts,
                double v)
{
    tsdb_point p = {dev,    strlen(dev),
                    metric, strlen(metric),
                    tags,   tags ? strlen(tags) : 0,
                    ts,     {.type = TSDB_FLOAT, .u.f = v}};
    char err[TSDB_ERR_LEN];
    assert_int_equal(tsdb_write(db, tenant, &p, 1, NULL, NULL, err), THZ_OK);
}

static int setup(void **st)
{
    snprintf(dir, sizeof dir, "/tmp/thz-query-XXXXXX");
    assert_non_null(mkdtemp(dir));
    tsdb_options o = {.dir = dir, .fsync = TSDB_FSYNC_EVERYSEC};
    char err[TSDB_ERR_LEN];
    assert_int_equal(tsdb_open(&o, &db, err), THZ_OK);
    for (int d = 0; d < 3; d++) {
        char tags[32];
        snprintf(tags, sizeof tags, "site=%s", sites[d]);
        for (int i = 0; i < NPT; i++) {
            int64_t ts = T0 + i * 10 * SEC;
            put(1, devs[d], tags, "temperature", ts, val(d, i));
            pts[npts++] = (pt){devs[d], sites[d], ts, val(d, i)};
            if (d == 0 && i % 2 == 0) put(1, devs[d], tags, "humidity", ts, 40 + i % 10);
        }
    }
    /* d4: a gappy series for gap filling (bins 0 and 3 of a minute, 5 and 6) */
    put(1, "d4", NULL, "x", T0 + 5 * SEC, 10);
    put(1, "d4", NULL, "x", T0 + 15 * SEC, 20);  /* bin 0: avg 15 */
    put(1, "d4", NULL, "x", T0 + 185 * SEC, 45); /* bin 3: 45 */
    put(1, "d4", NULL, "x", T0 + 300 * SEC, 50); /* bin 5 */
    /* tenant 2 has its own data */
    put(2, "other", NULL, "pressure", T0, 1013);
    return 0;
}

static int teardown(void **st)
{
    tsdb_close(db);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) return -1;
    return 0;
}

static q_result *run(int64_t tenant, const char *sql)
{
    q_result *r = NULL;
    q_error e;
    thz_err rc = query_run(db, tenant, sql, strlen(sql), T0 + 3 * 3600 * SEC, &r, &e);
    if (rc) fprintf(stderr, "query failed: %s\n  %s\n", sql, e.msg);
    assert_int_equal(rc, THZ_OK);
    return r;
}

static void run_err(int64_t tenant, const char *sql, int pos, const char *frag)
{
    q_result *r = NULL;
    q_error e;
    thz_err rc = query_run(db, tenant, sql, strlen(sql), T0 + 3 * 3600 * SEC, &r, &e);
    if (rc == THZ_OK || e.pos != pos || !strstr(e.msg, frag))
        fprintf(stderr, "sql: %s\n  rc=%d pos=%d msg=%s\n", sql, rc, e.pos, e.msg);
    assert_int_not_equal(rc, THZ_OK);
    assert_int_equal(e.pos, pos);
    assert_non_null(strstr(e.msg, frag));
}

static void near(double got, double want)
{
    if (fabs(got - want) > 1e-9 * fmax(1, fabs(want)))
        fprintf(stderr, "got %.17g want %.17g\n", got, want);
    assert_true(fabs(got - want) <= 1e-9 * fmax(1, fabs(want)));
}

static double num(const q_val *v)
{
    assert_int_equal(v->t, QV_NUM);
    return v->u.f;
}

/* ---- the checks, run before and after a flush ---- */

static void check_avg_per_bin(void)
{
    q_result *r = run(1, "SELECT bin(time, 30m) AS b, avg(temperature) FROM telemetry "
                         "WHERE device = 'd1' AND time >= '2026-11-26 10:00:00' AND "
                         "time < TIMESTAMP '2026-11-26 12:00:00' GROUP BY 1 ORDER BY 1");
    assert_int_equal(q_result_ncols(r), 2);
    assert_string_equal(q_result_colname(r, 0), "b");
    assert_string_equal(q_result_colname(r, 1), "avg(temperature)");
    assert_int_equal(q_result_nrows(r), 4);
    assert_string_equal(q_result_path(r), "agg-fast");
    for (int b = 0; b < 4; b++) {
        double s = 0;
        int n = 0;
        for (int i = 0; i < npts; i++)
            if (!strcmp(pts[i].dev, "d1") && pts[i].ts >= T0 + b * 1800 * SEC &&
                pts[i].ts < T0 + (b + 1) * 1800 * SEC)
                s += pts[i].v, n++;
        const q_val *row = q_result_row(r, b);
        assert_int_equal(row[0].t, QV_TIME);
        assert_int_equal(row[0].u.ns, T0 + b * 1800 * SEC);
        near(num(&row[1]), s / n);
    }
    q_result_free(r);
    /* an unaligned range: partial first and last bins hold only points in range */
    r = run(1, "SELECT bin(time, 1h), count(temperature), sum(temperature) FROM telemetry "
               "WHERE device = 'd2' AND time BETWEEN '2026-11-26 10:30:05' AND "
               "'2026-11-26 11:15:00' GROUP BY 1 ORDER BY 1");
    assert_int_equal(q_result_nrows(r), 2);
    for (int b = 0; b < 2; b++) {
        int64_t lo = b == 0 ? T0 + 1805 * SEC : T0 + 3600 * SEC;
        int64_t hi = b == 0 ? T0 + 3600 * SEC : T0 + 4500 * SEC + 1;
        double s = 0;
        int n = 0;
        for (int i = 0; i < npts; i++)
            if (!strcmp(pts[i].dev, "d2") && pts[i].ts >= lo && pts[i].ts < hi) s += pts[i].v, n++;
        near(num(&q_result_row(r, b)[1]), n);
        near(num(&q_result_row(r, b)[2]), s);
    }
    q_result_free(r);
}

static void check_max(void)
{
    q_result *r = run(1, "SELECT max(temperature) AS m, min(temperature) FROM telemetry");
    double mx = -1e9, mn = 1e9;
    for (int i = 0; i < npts; i++) mx = fmax(mx, pts[i].v), mn = fmin(mn, pts[i].v);
    assert_int_equal(q_result_nrows(r), 1);
    near(num(&q_result_row(r, 0)[0]), mx);
    near(num(&q_result_row(r, 0)[1]), mn);
    q_result_free(r);

    r = run(1, "SELECT device, max(temperature), last(temperature), first(temperature) "
               "FROM telemetry GROUP BY device ORDER BY device DESC");
    assert_int_equal(q_result_nrows(r), 3);
    assert_string_equal(q_result_path(r), "agg-fast");
    for (int d = 0; d < 3; d++) {
        const q_val *row = q_result_row(r, 2 - d);
        assert_string_equal(row[0].u.s.p, devs[d]);
        double m = -1e9;
        for (int i = 0; i < NPT; i++) m = fmax(m, val(d, i));
        near(num(&row[1]), m);
        near(num(&row[2]), val(d, NPT - 1));
        near(num(&row[3]), val(d, 0));
    }
    q_result_free(r);

    /* per tag */
    r = run(1, "SELECT site, count(temperature) FROM telemetry GROUP BY site ORDER BY 2 DESC");
    assert_int_equal(q_result_nrows(r), 2);
    assert_string_equal(q_result_row(r, 0)[0].u.s.p, "a");
    near(num(&q_result_row(r, 0)[1]), 2 * NPT);
    near(num(&q_result_row(r, 1)[1]), NPT);
    q_result_free(r);
}

static void check_gapfill(void)
{
    q_result *r = run(1, "SELECT bin(time, 1m), avg(x), interpolate_linear(avg(x)), locf(avg(x)) "
                         "FROM telemetry WHERE device = 'd4' AND time >= '2026-11-26 10:00:00' "
                         "AND time < '2026-11-26 10:07:00' GROUP BY 1 ORDER BY 1");
    /* bins 0..6: avg 15, -, -, 45, -, 50, - */
    assert_int_equal(q_result_nrows(r), 7);
    double lin[] = {15, 25, 35, 45, 47.5, 50, NAN};
    double locf[] = {15, 15, 15, 45, 45, 50, 50};
    for (int b = 0; b < 7; b++) {
        const q_val *row = q_result_row(r, b);
        assert_int_equal(row[0].u.ns, T0 + b * 60 * SEC);
        if (b == 0 || b == 3 || b == 5)
            assert_int_equal(row[1].t, QV_NUM);
        else
            assert_int_equal(row[1].t, QV_NULL);
        if (isnan(lin[b]))
            assert_int_equal(row[2].t, QV_NULL);
        else
            near(num(&row[2]), lin[b]);
        near(num(&row[3]), locf[b]);
    }
    q_result_free(r);
    /* derivative per minute between non-empty bins */
    r = run(1, "SELECT bin(time, 1m), derivative(avg(x), 1m) FROM telemetry WHERE device = 'd4' "
               "GROUP BY 1 ORDER BY 1");
    assert_int_equal(q_result_nrows(r), 3);
    assert_int_equal(q_result_row(r, 0)[1].t, QV_NULL);
    near(num(&q_result_row(r, 1)[1]), (45 - 15) / 3.0);
    near(num(&q_result_row(r, 2)[1]), (50 - 45) / 2.0);
    q_result_free(r);
}

static void check_filters(void)
{
    q_result *r = run(1, "SELECT device, count(temperature), avg(temperature) FROM telemetry "
                         "WHERE device IN ('d1', 'd3') AND temperature BETWEEN 20 AND 25 "
                         "GROUP BY device ORDER BY device");
    assert_int_equal(q_result_nrows(r), 2);
    assert_string_equal(q_result_path(r), "agg-points"); /* a value filter */
    for (int k = 0; k < 2; k++) {
        const char *dv = k ? "d3" : "d1";
        double s = 0;
        int n = 0;
        for (int i = 0; i < npts; i++)
            if (!strcmp(pts[i].dev, dv) && pts[i].v >= 20 && pts[i].v <= 25) s += pts[i].v, n++;
        assert_string_equal(q_result_row(r, k)[0].u.s.p, dv);
        near(num(&q_result_row(r, k)[1]), n);
        near(num(&q_result_row(r, k)[2]), s / n);
    }
    q_result_free(r);
    /* OR, NOT, tag filters; count(*) counts rows (time points of the device) */
    r = run(1, "SELECT count(*) FROM telemetry WHERE (site = 'b' OR device = 'd1') AND NOT "
               "device = 'd3'");
    near(num(&q_result_row(r, 0)[0]), NPT);
    q_result_free(r);
    r = run(1, "SELECT count(humidity), count(*) FROM telemetry WHERE device = 'd1'");
    near(num(&q_result_row(r, 0)[0]), NPT / 2);
    near(num(&q_result_row(r, 0)[1]), NPT);
    q_result_free(r);
}

static int cmp_desc(const void *a, const void *b)
{
    double x = ((const pt *)a)->v, y = ((const pt *)b)->v;
    return x < y ? 1 : x > y ? -1 : 0;
}

static void check_order_limit(void)
{
    q_result *r = run(1, "SELECT device, time, temperature AS t FROM telemetry "
                         "ORDER BY t DESC LIMIT 5");
    pt *c = malloc(sizeof pts);
    memcpy(c, pts, sizeof pts);
    qsort(c, npts, sizeof *c, cmp_desc);
    assert_int_equal(q_result_nrows(r), 5);
    for (int i = 0; i < 5; i++) near(num(&q_result_row(r, i)[2]), c[i].v);
    free(c);
    q_result_free(r);
    /* raw rows: entity then time order; LIMIT without ORDER BY stops early */
    r = run(1, "SELECT time, humidity, temperature FROM telemetry WHERE device = 'd1' LIMIT 3");
    assert_int_equal(q_result_nrows(r), 3);
    assert_int_equal(q_result_row(r, 0)[0].u.ns, T0);
    near(num(&q_result_row(r, 0)[1]), 40);
    assert_int_equal(q_result_row(r, 1)[1].t, QV_NULL); /* humidity every other point */
    near(num(&q_result_row(r, 1)[2]), val(0, 1));
    q_result_free(r);
    /* expressions and the time functions */
    r = run(1, "SELECT to_milliseconds(time), temperature * 2 + 1 FROM telemetry WHERE "
               "device = 'd2' AND time = from_milliseconds(1795687210000)");
    assert_int_equal(q_result_nrows(r), 1);
    near(num(&q_result_row(r, 0)[0]), 1795687210000.0);
    near(num(&q_result_row(r, 0)[1]), val(1, 1) * 2 + 1);
    q_result_free(r);
    r = run(1, "SELECT count(temperature) FROM telemetry WHERE time < ago(3h) + 10s");
    near(num(&q_result_row(r, 0)[0]), 3); /* now = T0 + 3h: only the first point of each */
    q_result_free(r);
}

static void check_stats(void)
{
    q_result *r =
        run(1, "SELECT stddev(temperature), stddev_pop(temperature), "
               "approx_percentile(temperature, 0.5), approx_percentile(temperature, 0.99) "
               "FROM telemetry WHERE device = 'd3'");
    double s = 0, v[NPT];
    for (int i = 0; i < NPT; i++) s += v[i] = val(2, i);
    double mean = s / NPT, m2 = 0;
    for (int i = 0; i < NPT; i++) m2 += (v[i] - mean) * (v[i] - mean);
    near(num(&q_result_row(r, 0)[0]), sqrt(m2 / (NPT - 1)));
    near(num(&q_result_row(r, 0)[1]), sqrt(m2 / NPT));
    /* nearest rank over ascending order */
    double asc[NPT];
    for (int i = 0; i < NPT; i++) asc[i] = val(2, i);
    for (int i = 0; i < NPT; i++)
        for (int j = i + 1; j < NPT; j++)
            if (asc[j] < asc[i]) {
                double t = asc[i];
                asc[i] = asc[j];
                asc[j] = t;
            }
    near(num(&q_result_row(r, 0)[2]), asc[(int)ceil(0.5 * NPT) - 1]);
    near(num(&q_result_row(r, 0)[3]), asc[(int)ceil(0.99 * NPT) - 1]);
    q_result_free(r);
}

static void check_narrow(void)
{
    q_result *r = run(1, "SELECT measure_name, count(*), count(measure_value::double), "
                         "count(measure_value::bigint) FROM telemetry WHERE device = 'd1' "
                         "GROUP BY measure_name ORDER BY 1");
    assert_int_equal(q_result_nrows(r), 2);
    assert_string_equal(q_result_row(r, 0)[0].u.s.p, "humidity");
    near(num(&q_result_row(r, 0)[1]), NPT / 2);
    near(num(&q_result_row(r, 0)[2]), NPT / 2);
    near(num(&q_result_row(r, 0)[3]), 0);
    assert_string_equal(q_result_row(r, 1)[0].u.s.p, "temperature");
    near(num(&q_result_row(r, 1)[1]), NPT);
    q_result_free(r);
    r = run(1,
            "SELECT device, avg(measure_value::double) FROM telemetry WHERE "
            "measure_name = 'temperature' AND device IN ('d2', 'd3') GROUP BY device ORDER BY 1");
    assert_int_equal(q_result_nrows(r), 2);
    for (int d = 1; d < 3; d++) {
        double s = 0;
        for (int i = 0; i < NPT; i++) s += val(d, i);
        near(num(&q_result_row(r, d - 1)[1]), s / NPT);
    }
    q_result_free(r);
    /* one row per point */
    r = run(1,
            "SELECT time, measure_name, measure_value::double FROM telemetry WHERE device = 'd1' "
            "AND time < '2026-11-26 10:00:10' ORDER BY 2");
    assert_int_equal(q_result_nrows(r), 2);
    assert_string_equal(q_result_row(r, 0)[1].u.s.p, "humidity");
    near(num(&q_result_row(r, 1)[2]), val(0, 0));
    q_result_free(r);
}

/* The benchmark's queries (bench/tsdb/README.md) with one-sided ranges
 * (time > ago(...)): all on the fast path, answers by brute force. now is
 * T0 + 3 h, the data T0 .. T0 + 2 h. */
static void check_one_sided(void)
{
    struct {
        const char *ago;
        int64_t t0;
        bool incl;
    } rs[] = {{"ago(1d)", T0 + 3 * 3600 * SEC - 86400 * SEC, false},
              {"ago(150m)", T0 + 1800 * SEC, false},
              {"ago(9015s)", T0 + 1785 * SEC, true}};
    for (size_t k = 0; k < sizeof rs / sizeof *rs; k++) {
        int64_t t0 = rs[k].t0;
        const char *op = rs[k].incl ? ">=" : ">";
#define IN_RANGE(i) (rs[k].incl ? pts[i].ts >= t0 : pts[i].ts > t0)
        char sql[512];
        /* mean per minute, one device; then over all devices; 90 s bins cut minutes */
        for (int w = 0; w < 3; w++) {
            int64_t bw = (w == 2 ? 90 : 60) * SEC;
            snprintf(sql, sizeof sql,
                     "SELECT bin(time, %s) AS t, avg(temperature), count(temperature) FROM "
                     "telemetry WHERE %s time %s %s GROUP BY bin(time, %s) ORDER BY t",
                     w == 2 ? "90s" : "1m", w == 0 ? "device = 'd1' AND" : "", op, rs[k].ago,
                     w == 2 ? "90s" : "1m");
            q_result *r = run(1, sql);
            assert_string_equal(q_result_path(r), "agg-fast");
            size_t row = 0;
            for (int64_t b = T0 - 2 * bw; b < T0 + 3 * 3600 * SEC; b += bw) {
                int64_t bb = b - ((b % bw) + bw) % bw;
                double sum = 0;
                int n = 0;
                for (int i = 0; i < npts; i++)
                    if ((w || !strcmp(pts[i].dev, "d1")) && IN_RANGE(i) && pts[i].ts >= bb &&
                        pts[i].ts < bb + bw)
                        sum += pts[i].v, n++;
                if (bb != b || !n) continue;
                assert_true(row < q_result_nrows(r));
                const q_val *rv = q_result_row(r, row++);
                assert_int_equal(rv[0].u.ns, bb);
                near(num(&rv[1]), sum / n);
                near(num(&rv[2]), n);
            }
            assert_int_equal(q_result_nrows(r), row);
            q_result_free(r);
        }
        /* max over all devices, max per device */
        snprintf(sql, sizeof sql, "SELECT max(temperature) FROM telemetry WHERE time %s %s", op,
                 rs[k].ago);
        q_result *r = run(1, sql);
        assert_string_equal(q_result_path(r), "agg-fast");
        double mx = -1e9;
        for (int i = 0; i < npts; i++)
            if (IN_RANGE(i)) mx = fmax(mx, pts[i].v);
        near(num(&q_result_row(r, 0)[0]), mx);
        q_result_free(r);
        snprintf(sql, sizeof sql,
                 "SELECT device, max(temperature) FROM telemetry WHERE time %s %s GROUP BY "
                 "device ORDER BY device",
                 op, rs[k].ago);
        r = run(1, sql);
        assert_string_equal(q_result_path(r), "agg-fast");
        assert_int_equal(q_result_nrows(r), 3);
        for (int d = 0; d < 3; d++) {
            double m = -1e9;
            for (int i = 0; i < npts; i++)
                if (!strcmp(pts[i].dev, devs[d]) && IN_RANGE(i)) m = fmax(m, pts[i].v);
            near(num(&q_result_row(r, d)[1]), m);
        }
        q_result_free(r);
#undef IN_RANGE
    }
    /* last value per device */
    q_result *r = run(1, "SELECT device, last(temperature) FROM telemetry GROUP BY device "
                         "ORDER BY device");
    assert_string_equal(q_result_path(r), "agg-fast");
    for (int d = 0; d < 3; d++) near(num(&q_result_row(r, d)[1]), val(d, NPT - 1));
    q_result_free(r);
    /* nothing in range: no rows */
    r = run(1, "SELECT bin(time, 1m) AS t, avg(temperature) FROM telemetry WHERE time > ago(1m) "
               "GROUP BY 1");
    assert_int_equal(q_result_nrows(r), 0);
    q_result_free(r);
}

static void test_answers_head(void **st)
{
    check_one_sided();
    check_narrow();
    check_avg_per_bin();
    check_max();
    check_gapfill();
    check_filters();
    check_order_limit();
    check_stats();
}

static void test_answers_blocks(void **st)
{
    assert_int_equal(tsdb_flush(db), THZ_OK);
    test_answers_head(st);
}

static void test_output(void **st)
{
    q_result *r = run(1, "SELECT device, time, temperature FROM telemetry WHERE device = 'd1' "
                         "AND time < '2026-11-26 10:00:20' ORDER BY time");
    thz_buf b = {0};
    assert_int_equal(q_result_json(r, &b), THZ_OK);
    char want[512], v0[32], v1[32];
    snprintf(v0, sizeof v0, "%.15g", val(0, 0));
    if (strtod(v0, NULL) != val(0, 0)) snprintf(v0, sizeof v0, "%.17g", val(0, 0));
    snprintf(v1, sizeof v1, "%.15g", val(0, 1));
    if (strtod(v1, NULL) != val(0, 1)) snprintf(v1, sizeof v1, "%.17g", val(0, 1));
    snprintf(want, sizeof want,
             "{\"columns\":[\"device\",\"time\",\"temperature\"],\"rows\":[[\"d1\",\"2026-11-26T10:"
             "00:00Z\",%s],"
             "[\"d1\",\"2026-11-26T10:00:10Z\",%s]]}",
             v0, v1);
    assert_int_equal(b.len, strlen(want));
    assert_memory_equal(b.p, want, b.len);
    thz_buf_free(&b);
    assert_int_equal(q_result_csv(r, &b), THZ_OK);
    assert_true(b.len > 30 &&
                memcmp(b.p, "device,time,temperature\r\nd1,2026-11-26T10:00:00Z,", 49) == 0);
    thz_buf_free(&b);
    q_result_free(r);
    r = run(1, "SELECT 'a,\"b', 1 / 0 FROM telemetry LIMIT 1");
    assert_int_equal(q_result_csv(r, &b), THZ_OK);
    assert_non_null(strstr((char *)b.p, "\"a,\"\"b\","));
    thz_buf_free(&b);
    assert_int_equal(q_result_json(r, &b), THZ_OK);
    assert_non_null(memmem(b.p, b.len, "[\"a,\\\"b\",null]", strlen("[\"a,\\\"b\",null]")));
    thz_buf_free(&b);
    q_result_free(r);
}

static void test_errors(void **st)
{
    run_err(1, "SELECT temprature FROM telemetry", 7, "column 'temprature' does not exist");
    run_err(1, "SELECT x FROM telemetry WHERE device = 'd4' AND", 47, "expected an expression");
    run_err(1, "SELECT device, avg(temperature) FROM telemetry", 7, "GROUP BY");
    run_err(1, "SELECT nosuch(temperature) FROM telemetry", 7, "unknown function");
    run_err(1, "SELECT avg(temperature, 1) FROM telemetry", 7, "takes 1 argument");
    run_err(1, "SELECT x FROM other", 14, "unknown table");
    run_err(1, "SELECT measure_name, temperature FROM telemetry", 21, "cannot be mixed");
    run_err(1, "SELECT measure_value::int FROM telemetry", 7, "unknown column");
    run_err(1, "SELECT x FROM telemetry WHERE time > 'yesterday'", 37, "not a timestamp");
    run_err(1, "SELECT x FROM telemetry WHERE device > 3", 30, "cannot compare");
    run_err(1, "SELECT locf(avg(x)) FROM telemetry", 7, "GROUP BY bin");
    run_err(1, "SELECT avg(max(x)) FROM telemetry", 11, "nested");
    run_err(1, "SELECT x FROM telemetry GROUP BY 3", 33, "no column 3");
    run_err(1, "SELECT approx_percentile(x, 2) FROM telemetry", 28, "between 0 and 1");
    /* a bin too fine for its range is refused before reading */
    q_result *r = NULL;
    q_error e;
    const char *sql = "SELECT bin(time, 1ns), avg(x) FROM telemetry WHERE time >= "
                      "'2026-11-26 10:00:00' AND time < '2026-11-26 11:00:00' GROUP BY 1";
    assert_int_equal(query_run(db, 1, sql, strlen(sql), 0, &r, &e), THZ_ETOOBIG);
    assert_true(e.limit);
}

static void limit_err(const char *sql, const char *frag)
{
    q_result *r = NULL;
    q_error e;
    assert_int_equal(query_run(db, 1, sql, strlen(sql), 0, &r, &e), THZ_ETOOBIG);
    assert_true(e.limit);
    assert_int_equal(e.pos, -1);
    if (!strstr(e.msg, frag)) fprintf(stderr, "%s\n", e.msg);
    assert_non_null(strstr(e.msg, frag));
    assert_null(r);
}

static void test_budgets(void **st)
{
    query_set_limits(0, 10, 0);
    limit_err("SELECT time, temperature FROM telemetry", "more than 10 rows");
    limit_err("SELECT time, count(temperature) FROM telemetry GROUP BY time",
              "more than 10 groups");
    q_result *r = run(1, "SELECT time, temperature FROM telemetry LIMIT 10"); /* stops early */
    assert_int_equal(q_result_nrows(r), 10);
    q_result_free(r);
    query_set_limits(0, 0, 100);
    limit_err("SELECT avg(temperature + 0) FROM telemetry", "more than 100 points");
    /* 200,000 points in tenant 9 take far more than 1 ms to aggregate */
    tsdb_point *p = malloc(sizeof *p * 200000);
    for (int i = 0; i < 200000; i++)
        p[i] =
            (tsdb_point){"big", 3, "v", 1, NULL, 0, T0 + i * SEC, {.type = TSDB_FLOAT, .u.f = i}};
    char err[TSDB_ERR_LEN];
    assert_int_equal(tsdb_write(db, 9, p, 200000, NULL, NULL, err), THZ_OK);
    free(p);
    query_set_limits(1, 0, 0);
    const char *sql = "SELECT stddev(v), approx_percentile(v, 0.5) FROM telemetry GROUP BY time";
    q_error e;
    assert_int_equal(query_run(db, 9, sql, strlen(sql), 0, &r, &e), THZ_ETOOBIG);
    assert_true(e.limit);
    assert_non_null(strstr(e.msg, "limit of 1 ms"));
    query_set_limits(0, 0, 0);
}

static void test_tenants(void **st)
{
    /* tenant 2 sees only its own series */
    q_result *r = run(2, "SELECT device, pressure FROM telemetry");
    assert_int_equal(q_result_nrows(r), 1);
    assert_string_equal(q_result_row(r, 0)[0].u.s.p, "other");
    q_result_free(r);
    run_err(2, "SELECT temperature FROM telemetry", 7, "does not exist");
    r = run(3, "SELECT count(*) FROM telemetry");
    near(num(&q_result_row(r, 0)[0]), 0);
    q_result_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_answers_head), cmocka_unit_test(test_output),
        cmocka_unit_test(test_errors),       cmocka_unit_test(test_tenants),
        cmocka_unit_test(test_budgets),      cmocka_unit_test(test_answers_blocks),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
