/* test_parse.c - unit tests of the SQL parser (src/query/parse.c): every
 * construct parses to the expected AST (checked through its printed form
 * and node fields), and every error names the right byte position. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "query/query.h"

static q_query *P(const char *sql)
{
    q_query *q = NULL;
    q_error e;
    thz_err rc = q_parse(sql, strlen(sql), &q, &e);
    if (rc) fprintf(stderr, "parse failed: %s: %s\n", sql, e.msg);
    assert_int_equal(rc, THZ_OK);
    return q;
}

static char *S(const q_expr *e)
{
    static char out[2048];
    thz_buf b = {0};
    q_expr_sql(e, &b);
    snprintf(out, sizeof out, "%.*s", (int)b.len, b.p ? (char *)b.p : "");
    thz_buf_free(&b);
    return out;
}

/* the first SELECT item of sql, printed */
static void item_is(const char *sql, const char *want)
{
    q_query *q = P(sql);
    assert_string_equal(S(q->items[0].e), want);
    q_free(q);
}

static void where_is(const char *where, const char *want)
{
    char sql[1024];
    snprintf(sql, sizeof sql, "SELECT temperature FROM telemetry WHERE %s", where);
    q_query *q = P(sql);
    assert_string_equal(S(q->where), want);
    q_free(q);
}

static void err_at(const char *sql, int pos, const char *frag)
{
    q_query *q = NULL;
    q_error e;
    thz_err rc = q_parse(sql, strlen(sql), &q, &e);
    if (rc == THZ_OK || e.pos != pos || (frag && !strstr(e.msg, frag)))
        fprintf(stderr, "sql: %s\n  got rc=%d pos=%d msg=%s\n", sql, rc, e.pos, e.msg);
    assert_int_equal(rc, THZ_EINVAL);
    assert_null(q);
    assert_int_equal(e.pos, pos);
    if (frag) assert_non_null(strstr(e.msg, frag));
    char tail[32];
    snprintf(tail, sizeof tail, " at position %d", pos);
    if (pos >= 0) assert_non_null(strstr(e.msg, tail));
}

static void test_select_list(void **st)
{
    q_query *q =
        P("SELECT time, device AS d, \"env.temp\" t, temperature * 2 + 1 AS x FROM telemetry");
    assert_int_equal(q->nitems, 4);
    assert_int_equal(q->items[0].e->kind, Q_COL);
    assert_string_equal(q->items[0].e->str, "time");
    assert_int_equal(q->items[0].e->pos, 7);
    assert_string_equal(q->items[1].alias, "d");
    assert_string_equal(q->items[2].e->str, "env.temp");
    assert_string_equal(q->items[2].alias, "t");
    assert_string_equal(S(q->items[3].e), "((temperature * 2) + 1)");
    assert_string_equal(q->items[3].alias, "x");
    assert_string_equal(q->table, "telemetry");
    assert_null(q->where);
    assert_int_equal(q->limit, -1);
    q_free(q);
    q = P("select * from \"iot\".\"telemetry\";");
    assert_int_equal(q->items[0].e->kind, Q_STAR);
    assert_string_equal(q->table, "telemetry");
    q_free(q);
    /* keywords are case-insensitive, unquoted names lower-cased, quoted kept */
    q = P("SeLeCt Temperature, \"Temperature\" FrOm TELEMETRY");
    assert_string_equal(q->items[0].e->str, "temperature");
    assert_string_equal(q->items[1].e->str, "Temperature");
    q_free(q);
}

static void test_aggregates(void **st)
{
    item_is("SELECT avg(temperature) FROM t", "avg(temperature)");
    item_is("SELECT COUNT(*) FROM t", "count(*)");
    item_is("SELECT approx_percentile(x, 0.95) FROM t", "approx_percentile(x, 0.95)");
    item_is("SELECT interpolate_linear(avg(x)) FROM t", "interpolate_linear(avg(x))");
    item_is("SELECT locf(max(x)) FROM t", "locf(max(x))");
    item_is("SELECT derivative(avg(x), 1m) FROM t", "derivative(avg(x), 1m)");
    item_is("SELECT bin(time, 30s) FROM t", "bin(time, 30s)");
    item_is("SELECT now() FROM t", "now()");
    item_is("SELECT ago(1h) FROM t", "ago(1h)");
}

static void test_literals(void **st)
{
    q_query *q = P("SELECT 1h, 5m, 30s, 100ms, 1d, 10us, 7ns, 2w, 1.5h FROM t");
    int64_t want[] = {3600000000000LL,  300000000000LL, 30000000000LL, 100000000LL,
                      86400000000000LL, 10000LL,        7LL,           1209600000000000LL,
                      5400000000000LL};
    for (int i = 0; i < 9; i++) {
        assert_int_equal(q->items[i].e->kind, Q_INTERVAL);
        assert_int_equal(q->items[i].e->ns, want[i]);
    }
    q_free(q);
    q = P("SELECT INTERVAL '5' MINUTE, INTERVAL '2 hours', INTERVAL '10s' FROM t");
    assert_int_equal(q->items[0].e->ns, 300000000000LL);
    assert_int_equal(q->items[1].e->ns, 7200000000000LL);
    assert_int_equal(q->items[2].e->ns, 10000000000LL);
    q_free(q);
    q = P("SELECT TIMESTAMP '2026-11-26 10:00:00', TIMESTAMP '2026-11-26T10:00:00.25Z', "
          "'it''s', 1.5e3, -3, true, FALSE, NULL FROM t");
    assert_int_equal(q->items[0].e->kind, Q_TIME);
    assert_int_equal(q->items[0].e->ns, 1795687200LL * 1000000000);
    assert_int_equal(q->items[1].e->ns, 1795687200LL * 1000000000 + 250000000);
    assert_int_equal(q->items[2].e->kind, Q_STR);
    assert_string_equal(q->items[2].e->str, "it's");
    assert_true(q->items[3].e->num == 1500);
    assert_true(q->items[4].e->num == -3);
    assert_int_equal(q->items[5].e->kind, Q_BOOL);
    assert_true(q->items[5].e->num == 1);
    assert_true(q->items[6].e->num == 0);
    assert_int_equal(q->items[7].e->kind, Q_NULL);
    q_free(q);
    /* comments */
    q = P("SELECT /* c */ x -- comment\n FROM t");
    assert_string_equal(q->items[0].e->str, "x");
    q_free(q);
}

static void test_where(void **st)
{
    where_is("a = 1 AND b <> 2 OR NOT c >= 3", "(((a = 1) AND (b != 2)) OR NOT (c >= 3))");
    where_is("device IN ('a', 'b')", "(device IN ('a', 'b'))");
    where_is("device NOT IN ('a')", "(device NOT IN ('a'))");
    where_is("x BETWEEN 1 AND 2 AND y > 0", "((x BETWEEN 1 AND 2) AND (y > 0))");
    where_is("x NOT BETWEEN -1 AND 1", "(x NOT BETWEEN -1 AND 1)");
    where_is("time >= ago(1h) AND time < now()", "((time >= ago(1h)) AND (time < now()))");
    where_is("time BETWEEN '2026-11-26 10:00:00' AND TIMESTAMP '2026-11-26 11:00:00'",
             "(time BETWEEN '2026-11-26 10:00:00' AND TIMESTAMP '2026-11-26T11:00:00Z')");
    where_is("x IS NULL OR y IS NOT NULL", "((x IS NULL) OR (y IS NOT NULL))");
    where_is("a = 1 OR b = 2 AND c = 3", "((a = 1) OR ((b = 2) AND (c = 3)))");
    where_is("(a + b) * c / 2 - -d % 3", "((((a + b) * c) / 2) - (-d % 3))");
    where_is("telemetry.temperature > 1", "(\"telemetry.temperature\" > 1)");
    where_is("measure_value::double > 1", "(\"measure_value::double\" > 1)");
    where_is("time > from_milliseconds(1700000000000)",
             "(time > from_milliseconds(1700000000000))");
}

static void test_clauses(void **st)
{
    q_query *q = P("SELECT device, bin(time, 1h) AS h, avg(temperature) FROM telemetry "
                   "WHERE time > ago(1d) GROUP BY device, 2 HAVING count(*) > 1 "
                   "ORDER BY 2 DESC, device ASC, avg(temperature) LIMIT 10");
    assert_int_equal(q->ngroup, 2);
    assert_string_equal(S(q->group[0]), "device");
    assert_int_equal(q->group[1]->kind, Q_NUM);
    assert_string_equal(S(q->having), "(count(*) > 1)");
    assert_int_equal(q->norder, 3);
    assert_true(q->order[0].desc);
    assert_false(q->order[1].desc);
    assert_false(q->order[2].desc);
    assert_string_equal(S(q->order[2].e), "avg(temperature)");
    assert_int_equal(q->limit, 10);
    q_free(q);
}

static void test_errors(void **st)
{
    err_at("", 0, "expected SELECT");
    err_at("SELEC x FROM t", 0, "expected SELECT");
    err_at("SELECT FROM t", 7, "expected an expression");
    err_at("SELECT x y z FROM t", 11, "FROM");
    err_at("SELECT x FROM", 13, "table name");
    err_at("SELECT x FROM t WHERE", 21, "expected an expression");
    err_at("SELECT x FROM t WHERE a = 'abc", 26, "unterminated string");
    err_at("SELECT \"abc FROM t", 7, "unterminated");
    err_at("SELECT x FROM t WHERE a IN ()", 28, "at least one");
    err_at("SELECT x FROM t WHERE a BETWEEN 1 OR 2", 34, "AND");
    err_at("SELECT avg(x FROM t", 13, "')'");
    err_at("SELECT x FROM t LIMIT -1", 22, "whole number");
    err_at("SELECT x FROM t LIMIT 1.5", 22, "whole number");
    err_at("SELECT 5parsecs FROM t", 8, "unknown interval unit");
    err_at("SELECT x FROM t ORDER x", 22, "BY");
    err_at("SELECT x FROM t garbage", 16, "unexpected");
    err_at("SELECT x FROM t; SELECT", 17, "unexpected");
    err_at("SELECT x # y FROM t", 9, "unexpected character '#'");
    err_at("SELECT TIMESTAMP 'yesterday' FROM t", 17, "not a timestamp");
    err_at("SELECT TIMESTAMP '2026-02-30 00:00:00' FROM t", 17, "not a timestamp");
    err_at("SELECT DISTINCT x FROM t", 7, "DISTINCT");
    err_at("SELECT x FROM a, b", 15, "joins");
    err_at("SELECT x FROM t /* open", 16, "unterminated comment");
    err_at("SELECT x AS FROM t", 12, "a name after AS");
    err_at("SELECT select FROM t", 7, "keyword");
    /* nesting is bounded */
    char deep[600];
    int n = 0;
    n += snprintf(deep + n, sizeof deep - n, "SELECT ");
    for (int i = 0; i < 200; i++) deep[n++] = '(';
    snprintf(deep + n, sizeof deep - n, "1");
    q_query *q;
    q_error e;
    assert_int_equal(q_parse(deep, strlen(deep), &q, &e), THZ_EINVAL);
    assert_non_null(strstr(e.msg, "nested too deeply"));
    /* a NUL byte inside */
    assert_int_equal(q_parse("SELECT x\0 FROM t", 16, &q, &e), THZ_EINVAL);
    assert_int_equal(e.pos, 8);
}

static void test_time_format(void **st)
{
    char t[48];
    q_time_format(1795687200LL * 1000000000, t);
    assert_string_equal(t, "2026-11-26T10:00:00Z");
    q_time_format(1795687200LL * 1000000000 + 500000000, t);
    assert_string_equal(t, "2026-11-26T10:00:00.5Z");
    q_time_format(1795687200LL * 1000000000 + 1, t);
    assert_string_equal(t, "2026-11-26T10:00:00.000000001Z");
    q_time_format(-1, t);
    assert_string_equal(t, "1969-12-31T23:59:59.999999999Z");
    int64_t ns;
    assert_true(q_time_parse("2026-11-26T12:00:00+02:00", 25, &ns));
    assert_int_equal(ns, 1795687200LL * 1000000000);
    assert_true(q_time_parse("2026-11-26", 10, &ns));
    assert_int_equal(ns, 1795651200LL * 1000000000);
    assert_false(q_time_parse("2026-13-01", 10, &ns));
    assert_false(q_time_parse("2026-11-26 25:00:00", 19, &ns));
}

/* The interval literal the telemetry route's step= shares with the SQL. */
static void test_interval(void **st)
{
#define IV(z) q_interval_ns(z, strlen(z))
    assert_int_equal(IV("30s"), 30000000000LL);
    assert_int_equal(IV("5m"), 300000000000LL);
    assert_int_equal(IV("1h"), 3600000000000LL);
    assert_int_equal(IV("2d"), 172800000000000LL);
    assert_int_equal(IV("250ms"), 250000000LL);
    assert_int_equal(IV("7ns"), 7);
    assert_int_equal(IV("1w"), 604800000000000LL);
    assert_int_equal(IV("1H"), 3600000000000LL);
    assert_int_equal(IV("0s"), 0);
    assert_int_equal(IV("00m"), 0);
    assert_int_equal(IV("s"), 0);
    assert_int_equal(IV("5"), 0);
    assert_int_equal(IV("5 m"), 0);
    assert_int_equal(IV("5min"), 0);
    assert_int_equal(IV("1.5h"), 0);
    assert_int_equal(IV("-1s"), 0);
    assert_int_equal(IV("1s;drop"), 0);
    assert_int_equal(IV("1234567890123s"), 0); /* 13 digits */
    assert_int_equal(IV("999999999999s"), 0);  /* past int64 */
    assert_int_equal(IV("999999999999ms"), 999999999999000000LL);
#undef IV
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_select_list), cmocka_unit_test(test_aggregates),
        cmocka_unit_test(test_literals),    cmocka_unit_test(test_where),
        cmocka_unit_test(test_clauses),     cmocka_unit_test(test_errors),
        cmocka_unit_test(test_time_format), cmocka_unit_test(test_interval),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
