/* test_promql.c - the PromQL parser: the subset parses into the right tree
 * (precedence, associativity, selectors, by/without in both places, offsets,
 * durations), prints back and reparses to the same text, and everything
 * outside the subset is refused with a Prometheus-style message that names
 * the line and column. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "promql/promql.h"

static promql_expr *parse_ok(const char *q)
{
    promql_expr *e = NULL;
    promql_error err;
    thz_err rc = promql_parse(q, strlen(q), &e, &err);
    if (rc) fail_msg("'%s' should parse: %s", q, err.msg);
    return e;
}

static promql_error parse_err(const char *q)
{
    promql_expr *e = NULL;
    promql_error err;
    thz_err rc = promql_parse(q, strlen(q), &e, &err);
    if (rc == THZ_OK) {
        promql_free(e);
        fail_msg("'%s' should not parse", q);
    }
    assert_int_equal(rc, THZ_EINVAL);
    assert_int_equal(err.kind, PROMQL_ERR_PARSE);
    return err;
}

/* The canonical text of q (parse, print). */
static char *canon(const char *q)
{
    promql_expr *e = parse_ok(q);
    thz_buf b = {0};
    assert_int_equal(promql_format(e, &b), THZ_OK);
    thz_buf_append(&b, "", 1);
    promql_free(e);
    return (char *)b.p;
}

static void expect_canon(const char *q, const char *want)
{
    char *got = canon(q);
    assert_string_equal(got, want);
    /* and the printed form parses back to itself */
    char *again = canon(got);
    assert_string_equal(again, got);
    free(got);
    free(again);
}

static void test_selectors(void **st)
{
    promql_expr *e = parse_ok("temp{device=\"d1\", site!='a', x=~\"a|b\", y!~`c.*`}");
    assert_int_equal(e->kind, PROMQL_SEL);
    assert_int_equal(e->type, PROMQL_VECTOR);
    assert_int_equal(e->nm, 5);
    assert_string_equal(e->m[0].label, "__name__");
    assert_string_equal(e->m[0].value, "temp");
    assert_int_equal(e->m[2].op, TSDB_NE);
    assert_int_equal(e->m[3].op, TSDB_RE);
    assert_string_equal(e->m[4].value, "c.*");
    assert_int_equal(e->m[4].op, TSDB_NRE);
    assert_int_equal(e->m[1].pos, 5);
    promql_free(e);

    e = parse_ok("env.temp[5m] offset 1h");
    assert_int_equal(e->type, PROMQL_MATRIX);
    assert_string_equal(e->m[0].value, "env.temp");
    assert_true(e->range_ns == 300LL * 1000000000);
    assert_true(e->offset_ns == 3600LL * 1000000000);
    promql_free(e);

    e = parse_ok("{\"env.temp\", device=\"a\\\"b\\n\"}");
    assert_string_equal(e->m[0].label, "__name__");
    assert_string_equal(e->m[0].value, "env.temp");
    assert_string_equal(e->m[1].value, "a\"b\n");
    promql_free(e);

    e = parse_ok("x[1h30m]");
    assert_true(e->range_ns == 5400LL * 1000000000);
    promql_free(e);
}

static void test_precedence(void **st)
{
    expect_canon("1 + 2 * 3", "(1 + (2 * 3))");
    expect_canon("1 - 2 - 3", "((1 - 2) - 3)");
    expect_canon("2 ^ 3 ^ 2", "(2 ^ (3 ^ 2))");
    expect_canon("-2 ^ 2", "-((2 ^ 2))");
    expect_canon("(1 + 2) % 3 / 4", "(((1 + 2) % 3) / 4)");
    expect_canon("+x", "{\"__name__\"=\"x\"}");
    expect_canon("0x1F + 1e3 + .5 + Inf - NaN", "((((31 + 1000) + 0.5) + Inf) - NaN)");
    expect_canon("a * 2 # a comment\n + 1", "(({\"__name__\"=\"a\"} * 2) + 1)");
}

static void test_functions_and_aggregations(void **st)
{
    expect_canon("rate(c[5m])", "rate({\"__name__\"=\"c\"}[5m])");
    expect_canon("sum by (a, b) (rate(c[1m]))",
                 "sum by (\"a\", \"b\") (rate({\"__name__\"=\"c\"}[1m]))");
    expect_canon("sum(x) without (device)", "sum without (\"device\") ({\"__name__\"=\"x\"})");
    expect_canon("count(x) by ()", "count by () ({\"__name__\"=\"x\"})");
    expect_canon("max_over_time(x{a=\"1\"}[90s] offset -5m)",
                 "max_over_time({\"__name__\"=\"x\", \"a\"=\"1\"}[1m30s] offset -5m)");
    const char *fns[] = {"increase",      "avg_over_time",   "min_over_time",
                         "sum_over_time", "count_over_time", "last_over_time"};
    for (int i = 0; i < 6; i++) {
        char q[80];
        snprintf(q, sizeof q, "%s(x[1m])", fns[i]);
        promql_expr *e = parse_ok(q);
        assert_int_equal(e->kind, PROMQL_CALL);
        assert_int_equal(e->type, PROMQL_VECTOR);
        promql_free(e);
    }
    promql_expr *e = parse_ok("avg(x) / count(x)");
    assert_int_equal(e->kind, PROMQL_BIN);
    assert_int_equal(e->lhs->agg, PROMQL_AVG);
    assert_int_equal(e->rhs->agg, PROMQL_COUNT);
    promql_free(e);
    /* an aggregation name without parentheses is a metric */
    e = parse_ok("sum + 1");
    assert_int_equal(e->lhs->kind, PROMQL_SEL);
    promql_free(e);
}

static void test_errors(void **st)
{
    promql_error e = parse_err("sum(x");
    assert_int_equal(e.pos, 5);
    assert_string_equal(e.msg, "1:6: parse error: unexpected end of input, expected \")\"");
    e = parse_err("x +\n  @");
    assert_int_equal(e.pos, 6);
    assert_non_null(strstr(e.msg, "2:3: parse error"));
    assert_non_null(strstr(parse_err("").msg, "no expression"));
    assert_non_null(strstr(parse_err("rate(x)").msg, "expected type range vector"));
    assert_non_null(strstr(parse_err("sum(x[5m])").msg, "expected type instant vector"));
    assert_non_null(strstr(parse_err("x[5m] + 1").msg, "binary expression"));
    assert_non_null(strstr(parse_err("{}").msg, "non-empty matcher"));
    assert_non_null(strstr(parse_err("{a=~\".*\"}").msg, "non-empty matcher"));
    assert_non_null(strstr(parse_err("x{a=~\"(\"}").msg, "regular expression"));
    assert_non_null(strstr(parse_err("x{a=~\"a{5000}\"}").msg, "repetition"));
    assert_non_null(strstr(parse_err("x{__name__=\"y\"}").msg, "twice"));
    assert_non_null(strstr(parse_err("foo(x)").msg, "unknown function"));
    assert_non_null(strstr(parse_err("irate(x[1m])").msg, "not supported"));
    assert_non_null(strstr(parse_err("topk(3, x)").msg, "not supported"));
    assert_non_null(strstr(parse_err("x > 1").msg, "comparison"));
    assert_non_null(strstr(parse_err("x and y").msg, "not supported"));
    assert_non_null(strstr(parse_err("x + on(a) y").msg, "on modifier"));
    assert_non_null(strstr(parse_err("x[5m:1m]").msg, "subqueries"));
    assert_non_null(strstr(parse_err("rate(x[5m])[1h]").msg, "ranges only"));
    assert_non_null(strstr(parse_err("x @ 100").msg, "@"));
    assert_non_null(strstr(parse_err("sum(x) offset 5m").msg, "offset"));
    assert_non_null(strstr(parse_err("x[5]").msg, "duration"));
    assert_non_null(strstr(parse_err("x{a=\"b\"").msg, "expected"));
    assert_non_null(strstr(parse_err("\"abc").msg, "unterminated"));
    assert_non_null(strstr(parse_err("x{a=\"\\q\"}").msg, "escape"));
    assert_non_null(strstr(parse_err("1 2").msg, "unexpected"));
    assert_non_null(strstr(parse_err("5m").msg, "unexpected duration"));
    assert_non_null(strstr(parse_err("x $").msg, "unexpected character"));
    assert_non_null(strstr(parse_err("sum by (a) (x) by (b)").msg, "only one"));
    assert_non_null(strstr(parse_err("x[999999y]").msg, "bad number or duration"));
}

static void test_limits(void **st)
{
    /* nesting past the bound: parentheses, unary minus, a long chain */
    char q[PROMQL_MAX_QUERY + 2];
    int n = 0;
    for (int i = 0; i < 100; i++) q[n++] = '(';
    q[n++] = '1';
    for (int i = 0; i < 100; i++) q[n++] = ')';
    q[n] = 0;
    assert_non_null(strstr(parse_err(q).msg, "nested deeper"));
    n = 0;
    for (int i = 0; i < 100; i++) q[n++] = '-';
    q[n++] = '1';
    q[n] = 0;
    assert_non_null(strstr(parse_err(q).msg, "nested deeper"));
    n = 0;
    for (int i = 0; i < 100; i++) n += snprintf(q + n, sizeof q - (size_t)n, "1+");
    q[n++] = '1';
    q[n] = 0;
    assert_non_null(strstr(parse_err(q).msg, "nested deeper"));
    n = 0;
    for (int i = 0; i < 100; i++) n += snprintf(q + n, sizeof q - (size_t)n, "2^");
    q[n++] = '1';
    q[n] = 0;
    assert_non_null(strstr(parse_err(q).msg, "nested deeper"));
    memset(q, ' ', PROMQL_MAX_QUERY + 1);
    q[0] = '1';
    q[PROMQL_MAX_QUERY + 1] = 0;
    assert_non_null(strstr(parse_err(q).msg, "longer than"));
}

static void test_duration(void **st)
{
    int64_t ns;
    assert_true(promql_duration("15s", 3, &ns) && ns == 15000000000LL);
    assert_true(promql_duration("1m30s", 5, &ns) && ns == 90000000000LL);
    assert_true(promql_duration("250ms", 5, &ns) && ns == 250000000LL);
    assert_true(promql_duration("0.5", 3, &ns) && ns == 500000000LL);
    assert_true(promql_duration("60", 2, &ns) && ns == 60000000000LL);
    assert_false(promql_duration("abc", 3, &ns));
    assert_false(promql_duration("-1", 2, &ns));
    assert_false(promql_duration("", 0, &ns));
    assert_false(promql_duration("5x", 2, &ns));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_selectors),
        cmocka_unit_test(test_precedence),
        cmocka_unit_test(test_functions_and_aggregations),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_duration),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
