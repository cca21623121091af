/* test_metrics.c - the Prometheus text writer (escaping, number formatting,
 * histogram series, name checks) and the sharded primitives (counters summed
 * across threads, keyed counters bounded with "other"). */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "metrics/metrics.h"

static char *text(thz_buf *b)
{
    thz_buf_append(b, "", 1);
    b->len--;
    return (char *)b->p;
}

static void family_and_help_escaping(void **state)
{
    thz_buf b = {0};
    assert_int_equal(metrics_write_family(&b, "thz_x_total", "a \\ b\nc \"q\"", METRICS_COUNTER),
                     THZ_OK);
    assert_string_equal(text(&b), "# HELP thz_x_total a \\\\ b\\nc \"q\"\n"
                                  "# TYPE thz_x_total counter\n");
    b.len = 0;
    assert_int_equal(metrics_write_family(&b, "h", "", METRICS_HISTOGRAM), THZ_OK);
    assert_string_equal(text(&b), "# HELP h \n# TYPE h histogram\n");
    thz_buf_free(&b);
}

static void label_values_are_escaped(void **state)
{
    thz_buf b = {0};
    metrics_label l[] = {{"tenant", "a\"b\\c\nd"}, {"reason", ""}};
    assert_int_equal(metrics_write_sample_u64(&b, "m_total", NULL, l, 2, 42), THZ_OK);
    assert_string_equal(text(&b), "m_total{tenant=\"a\\\"b\\\\c\\nd\",reason=\"\"} 42\n");
    b.len = 0;
    assert_int_equal(metrics_write_sample_u64(&b, "m", NULL, NULL, 0, UINT64_MAX), THZ_OK);
    assert_string_equal(text(&b), "m 18446744073709551615\n");
    thz_buf_free(&b);
}

static void values_format_as_prometheus_reads_them(void **state)
{
    char s[40];
    metrics_format_value(INFINITY, s, sizeof s);
    assert_string_equal(s, "+Inf");
    metrics_format_value(-INFINITY, s, sizeof s);
    assert_string_equal(s, "-Inf");
    metrics_format_value(NAN, s, sizeof s);
    assert_string_equal(s, "NaN");
    metrics_format_value(0.1, s, sizeof s);
    assert_string_equal(s, "0.1");
    metrics_format_value(0.00025, s, sizeof s);
    assert_string_equal(s, "0.00025");
    metrics_format_value(1e6, s, sizeof s);
    assert_string_equal(s, "1000000");
    metrics_format_value(-3, s, sizeof s);
    assert_string_equal(s, "-3");
    metrics_format_value(1.0 / 3, s, sizeof s);
    assert_true(strtod(s, NULL) == 1.0 / 3); /* round-trips */
    metrics_format_value(1e300, s, sizeof s);
    assert_true(strtod(s, NULL) == 1e300);
}

static void bad_names_are_refused(void **state)
{
    thz_buf b = {0};
    assert_int_equal(metrics_write_family(&b, "9lives", "", METRICS_GAUGE), THZ_EINVAL);
    assert_int_equal(metrics_write_family(&b, "a-b", "", METRICS_GAUGE), THZ_EINVAL);
    assert_int_equal(metrics_write_family(&b, "", "", METRICS_GAUGE), THZ_EINVAL);
    assert_int_equal(metrics_write_family(&b, "ns:name_1", "", METRICS_GAUGE), THZ_OK);
    b.len = 0;
    metrics_label colon = {"a:b", "x"}, reserved = {"__name__", "x"}, ok = {"_a1", "x"};
    assert_int_equal(metrics_write_sample(&b, "m", NULL, &colon, 1, 1), THZ_EINVAL);
    assert_int_equal(metrics_write_sample(&b, "m", NULL, &reserved, 1, 1), THZ_EINVAL);
    assert_int_equal(metrics_write_sample(&b, "m", NULL, &ok, 1, 1.5), THZ_OK);
    assert_string_equal(text(&b), "m{_a1=\"x\"} 1.5\n");
    thz_buf_free(&b);
}

static void histogram_is_cumulative_with_inf_sum_and_count(void **state)
{
    thz_buf b = {0};
    const double bounds[] = {0.001, 0.01, 1};
    const uint64_t counts[] = {2, 0, 3, 1};
    metrics_label l = {"kind", "sql"};
    assert_int_equal(metrics_write_histogram(&b, "q_seconds", &l, 1, bounds, 3, counts, 2.5),
                     THZ_OK);
    assert_string_equal(text(&b), "q_seconds_bucket{kind=\"sql\",le=\"0.001\"} 2\n"
                                  "q_seconds_bucket{kind=\"sql\",le=\"0.01\"} 2\n"
                                  "q_seconds_bucket{kind=\"sql\",le=\"1\"} 5\n"
                                  "q_seconds_bucket{kind=\"sql\",le=\"+Inf\"} 6\n"
                                  "q_seconds_sum{kind=\"sql\"} 2.5\n"
                                  "q_seconds_count{kind=\"sql\"} 6\n");
    b.len = 0;
    assert_int_equal(metrics_write_histogram(&b, "h", NULL, 0, bounds, 0, counts, 0), THZ_OK);
    assert_string_equal(text(&b), "h_bucket{le=\"+Inf\"} 2\nh_sum 0\nh_count 2\n");
    const double unsorted[] = {1, 0.5};
    assert_int_equal(metrics_write_histogram(&b, "h", NULL, 0, unsorted, 2, counts, 0), THZ_EINVAL);
    thz_buf_free(&b);
}

static const double hb[] = {0.01, 0.1, 1};
static metrics_histogram H = METRICS_HISTOGRAM_INIT(hb);
static metrics_counter C;

static void *bump(void *arg)
{
    for (int i = 0; i < 10000; i++) {
        metrics_counter_add(&C, 1);
        metrics_histogram_observe(&H, 0.05);
    }
    return NULL;
}

static void counters_and_histograms_sum_their_shards(void **state)
{
    pthread_t t[20];
    for (int i = 0; i < 20; i++) pthread_create(&t[i], NULL, bump, NULL);
    for (int i = 0; i < 20; i++) pthread_join(t[i], NULL);
    assert_int_equal(metrics_counter_value(&C), 200000);
    metrics_histogram_observe(&H, 0.001);
    metrics_histogram_observe(&H, 5);
    metrics_histogram_observe(&H, -1); /* a clock step: counted as 0 */
    uint64_t counts[4];
    double sum;
    metrics_histogram_read(&H, counts, &sum);
    assert_int_equal(counts[0], 2);
    assert_int_equal(counts[1], 200000);
    assert_int_equal(counts[2], 0);
    assert_int_equal(counts[3], 1);
    assert_true(fabs(sum - (200000 * 0.05 + 5.001)) < 1e-3);
}

static metrics_keyed K = METRICS_KEYED_INIT;

typedef struct seen {
    int n;
    uint64_t total, other, k7;
} seen;

static void each(void *ctx, const char *key, uint64_t v)
{
    seen *s = ctx;
    s->n++;
    s->total += v;
    if (strcmp(key, "other") == 0) s->other = v;
    if (strcmp(key, "7") == 0) s->k7 = v;
}

static void keyed_counter_is_bounded(void **state)
{
    char k[16];
    for (int i = 0; i < METRICS_KEYS + 100; i++) {
        snprintf(k, sizeof k, "%d", i);
        metrics_keyed_add(&K, k, 2);
    }
    metrics_keyed_add(&K, "7", 5);
    seen s = {0};
    metrics_keyed_each(&K, each, &s);
    assert_int_equal(s.n, METRICS_KEYS); /* METRICS_KEYS - 1 keys and "other" */
    assert_int_equal(s.total, 2 * (METRICS_KEYS + 100) + 5);
    assert_int_equal(s.other, 2 * (100 + 1));
    assert_int_equal(s.k7, 7);
}

static void render_passes_its_own_writer(void **state)
{
    metrics_tsdb_written(3, 10);
    metrics_tsdb_written(3, 5);
    metrics_observe_query("sql", 0.002);
    metrics_observe_query("promql", 0.5);
    metrics_telemetry_rejected(METRICS_REJECT_PARSE);
    thz_buf b = {0};
    assert_int_equal(metrics_render(&b), THZ_OK);
    const char *t = text(&b);
    assert_non_null(strstr(t, "thinghz_tsdb_points_written_total{tenant=\"3\"} 15\n"));
    assert_non_null(strstr(t, "thinghz_query_duration_seconds_count{kind=\"sql\"} 1\n"));
    assert_non_null(strstr(t, "thinghz_query_duration_seconds_count{kind=\"promql\"} 1\n"));
    assert_non_null(
        strstr(t, "thinghz_query_duration_seconds_bucket{kind=\"sql\",le=\"0.0025\"} 1\n"));
    assert_non_null(strstr(t, "thinghz_telemetry_rejected_total{reason=\"parse\"} 1\n"));
    thz_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(family_and_help_escaping),
        cmocka_unit_test(label_values_are_escaped),
        cmocka_unit_test(values_format_as_prometheus_reads_them),
        cmocka_unit_test(bad_names_are_refused),
        cmocka_unit_test(histogram_is_cumulative_with_inf_sum_and_count),
        cmocka_unit_test(counters_and_histograms_sum_their_shards),
        cmocka_unit_test(keyed_counter_is_bounded),
        cmocka_unit_test(render_passes_its_own_writer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
